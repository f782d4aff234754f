//! The CPUs Hermit brought up, as the hypervisor sees them: one worker thread pinned to each
//! core runs that core's bring-up (and, later, its vCPU loop and per-CPU commands), and
//! publishes what it found here for the endpoint to read without locks.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};

use hv::features::{HostFeatures, VirtKind, VmxCapMsrs};
use raw_cpuid::CpuId;

use hermit_sync::SpinMutex;

use crate::arch::{SelfTestError, SelfTestReport};
use crate::{hw, percpu};

/// Most CPUs the hypervisor manages; Hermit's own limit is far above what we test.
pub const MAX_CPUS: usize = 64;

/// What one CPU published about itself.
#[derive(Debug)]
pub struct CpuSlot {
    up: AtomicBool,
    /// Last self-test: 0 none, 1 passed, 2 failed (reason in `self_test_error`).
    self_test: AtomicU8,
    self_test_error: SpinMutex<Option<SelfTestError>>,
    apic_id: AtomicU32,
    /// What the CPU's own control registers said is enabled, last time it looked:
    /// 0 off, 1 SVM (EFER.SVME), 2 VMX (CR4.VMXE).
    virt_on: AtomicU8,
}

impl CpuSlot {
    const fn new() -> Self {
        CpuSlot {
            up: AtomicBool::new(false),
            self_test: AtomicU8::new(0),
            self_test_error: SpinMutex::new(None),
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

    pub fn set_self_test(&self, outcome: Result<SelfTestReport, SelfTestError>) {
        *self.self_test_error.lock() = outcome.err();
        self.self_test
            .store(if outcome.is_ok() { 1 } else { 2 }, Ordering::Release);
    }

    /// `None` if no self-test ran, else whether it passed and why not.
    pub fn self_test(&self) -> Option<Result<(), SelfTestError>> {
        match self.self_test.load(Ordering::Acquire) {
            1 => Some(Ok(())),
            2 => Some(Err(self
                .self_test_error
                .lock()
                .unwrap_or(SelfTestError::NoHalt))),
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

/// Republish the hardware state of the CPU this runs on, found by its APIC ID. Lock-free: the
/// NMI shootdown calls it.
pub fn publish_here() {
    let id = apic_id_here();
    if let Some(slot) = SLOTS[..count()].iter().find(|s| s.apic_id() == id) {
        slot.publish_hw_state();
    }
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

/// The worker thread of CPU `id`, pinned to it: bring-up, then serve the CPU's mailbox
/// forever, republishing what the hardware says after every job and every idle tick.
extern "C" fn worker(id: usize) {
    let slot = &SLOTS[id];
    slot.apic_id.store(apic_id_here(), Ordering::Relaxed);
    let f = detect_here();
    slot.publish_hw_state();
    println!("hermitage: cpu {id} up: apic_id={} {f}", slot.apic_id());
    slot.up.store(true, Ordering::Release);
    let kind = f.virt;
    crate::arch::timer::calibrate(id);
    let mut last_job = hw::monotonic_micros();
    loop {
        let ran = percpu::serve(id, |job| {
            let reply = crate::arch::execute(kind, id, job);
            slot.publish_hw_state();
            reply
        });
        // Between jobs: guest slices, while this CPU is in service with SVM or VMX on. After
        // each slice the worker yields, so other threads of this core (the endpoint on core 0)
        // run while it holds no VM lock.
        let mut wake_tsc = None;
        if !ran {
            match crate::arch::vcpu::HostCpu::here(kind, id, f.nrips)
                .map(|host| crate::vms::run_some(id, host))
            {
                Some(crate::vms::Ran::Slice) => {
                    hermit::syscalls::sys_yield();
                    continue;
                }
                Some(crate::vms::Ran::Nothing { wake_tsc: w }) => wake_tsc = w,
                None => {}
            }
        }
        // How long the worker may sleep: its 10 ms backstop, or until a halted vCPU's timer
        // is due.
        let idle_us = wake_tsc.map_or(IDLE_US, |t| {
            (t.saturating_sub(hw::rdtsc()) / hw::tsc_per_us().max(1)).min(IDLE_US)
        });
        let now = hw::monotonic_micros();
        if ran {
            last_job = now;
        } else if idle_us == 0 {
            // A timer is due now: go round again (after letting this core's others on).
            hermit::syscalls::sys_yield();
        } else if now - last_job < 50_000 {
            // Jobs come in bursts (online = read back + enable + self-test): stay responsive.
            hermit::syscalls::sys_yield();
        } else if id == 0 {
            slot.publish_hw_state();
            // CPU 0 also runs the endpoint and the network stack: its worker must leave the
            // core to them, so it sleeps in Hermit. A plain sleep, not a futex another CPU
            // could wake early: in Hermit 0.11.0 a futex wait with a timeout races with a
            // wake from another core (the timed-out task is woken twice and the scheduler
            // hits `unreachable!` in `BlockedTaskQueue::custom_wakeup`).
            hermit::syscalls::sys_usleep(idle_us);
        } else {
            slot.publish_hw_state();
            // The other CPUs run nothing but their worker: halt until woken (`percpu::wake`:
            // a job, a VM runnable here, console input) or a timer of a halted vCPU is due.
            percpu::idle(id, idle_us as u32);
        }
    }
}

/// The longest a worker sleeps without being woken.
const IDLE_US: u64 = 10_000;

/// Start one pinned worker thread per core, wait for each to report, and return how many
/// came up.
pub fn bring_up_all() -> usize {
    let n = hermit::syscalls::sys_get_processor_count().min(MAX_CPUS);
    COUNT.store(n, Ordering::Relaxed);
    // Map the local APIC page (shared address, per-CPU registers) before the CPUs use it.
    crate::arch::timer::map_apic();
    for id in 0..n {
        hw::spawn_pinned(worker, id, id);
    }
    crate::arch::timer::wake_others();
    // Generous: under Bochs a CPU can take several seconds of guest time to get scheduled.
    let deadline = hw::monotonic_micros() + 60_000_000;
    while (0..n).any(|i| !SLOTS[i].is_up()) && hw::monotonic_micros() < deadline {
        hermit::syscalls::sys_yield();
    }
    (0..n).filter(|&i| SLOTS[i].is_up()).count()
}
