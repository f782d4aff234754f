//! The CPUs Hermit brought up, as the hypervisor sees them: one worker thread pinned to each
//! core runs that core's bring-up (and, later, its vCPU loop and per-CPU commands), and
//! publishes what it found here for the endpoint to read without locks.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};

use hv::features::{HostFeatures, VirtKind, VmxCapMsrs};
use raw_cpuid::CpuId;

use crate::hw;

/// Most CPUs the hypervisor manages; Hermit's own limit is far above what we test.
pub const MAX_CPUS: usize = 64;

/// What one CPU published about itself.
#[derive(Debug)]
pub struct CpuSlot {
    up: AtomicBool,
    apic_id: AtomicU32,
    /// What the CPU's own control registers said is enabled, last time it looked:
    /// 0 off, 1 SVM (EFER.SVME), 2 VMX (CR4.VMXE).
    virt_on: AtomicU8,
}

impl CpuSlot {
    const fn new() -> Self {
        CpuSlot {
            up: AtomicBool::new(false),
            apic_id: AtomicU32::new(0),
            virt_on: AtomicU8::new(0),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn apic_id(&self) -> u32 {
        self.apic_id.load(Ordering::Relaxed)
    }

    /// Which virtualization the CPU's registers showed enabled, if any.
    pub fn virt_on(&self) -> Option<VirtKind> {
        match self.virt_on.load(Ordering::Relaxed) {
            1 => Some(VirtKind::Svm),
            2 => Some(VirtKind::Vmx),
            _ => None,
        }
    }

    fn publish_hw_state(&self) {
        let v = if hw::efer() & hw::EFER_SVME != 0 {
            1
        } else if hw::cr4() & hw::CR4_VMXE != 0 {
            2
        } else {
            0
        };
        self.virt_on.store(v, Ordering::Relaxed);
    }
}

static SLOTS: [CpuSlot; MAX_CPUS] = [const { CpuSlot::new() }; MAX_CPUS];
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// The number of CPUs Hermit runs on (capped at [`MAX_CPUS`]).
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

pub fn slot(id: usize) -> Option<&'static CpuSlot> {
    SLOTS.get(id).filter(|_| id < count())
}

/// Detect the features of the CPU this runs on. VMX capability MSRs are read only when CPUID
/// enumerates VMX, so this never faults on a CPU without it.
pub fn detect_here() -> HostFeatures {
    let cpuid = CpuId::new();
    let vmx = cpuid.get_feature_info().is_some_and(|f| f.has_vmx());
    let msrs = vmx.then(|| {
        let procbased = hw::rdmsr(0x482);
        VmxCapMsrs {
            feature_control: hw::rdmsr(0x3A),
            procbased,
            // IA32_VMX_PROCBASED_CTLS2 exists only if secondary controls may be enabled.
            procbased2: if procbased >> 63 != 0 {
                hw::rdmsr(0x48B)
            } else {
                0
            },
        }
    });
    HostFeatures::detect(raw_cpuid::CpuIdReaderNative, msrs)
}

/// The initial APIC ID of the CPU this runs on (x2APIC ID when leaf 0xB exists).
fn apic_id_here() -> u32 {
    let cpuid = CpuId::new();
    if let Some(mut topo) = cpuid.get_extended_topology_info() {
        if let Some(level) = topo.next() {
            return level.x2apic_id();
        }
    }
    cpuid
        .get_feature_info()
        .map_or(0, |f| u32::from(f.initial_local_apic_id()))
}

extern "C" fn bring_up(id: usize) {
    let slot = &SLOTS[id];
    slot.apic_id.store(apic_id_here(), Ordering::Relaxed);
    let f = detect_here();
    slot.publish_hw_state();
    println!("hermitage: cpu {id} up: apic_id={} {f}", slot.apic_id());
    slot.up.store(true, Ordering::Release);
}

/// Start one pinned thread per core, wait for each to report, and return how many came up.
pub fn bring_up_all() -> usize {
    let n = hermit::syscalls::sys_get_processor_count().min(MAX_CPUS);
    COUNT.store(n, Ordering::Relaxed);
    let mut threads = heapless::Vec::<_, MAX_CPUS>::new();
    for id in 0..n {
        let _ = threads.push(hw::spawn_pinned(bring_up, id, id));
    }
    for tid in threads {
        hermit::syscalls::sys_join(tid);
    }
    (0..n).filter(|&i| SLOTS[i].is_up()).count()
}
