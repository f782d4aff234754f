//! The kernel's instance of the per-CPU virtualization layer (`hv::virt`): its backend runs
//! each enable/disable on the CPU it concerns through that CPU's mailbox, and this module owns
//! the one lock around the layer, the boot sequence and the emergency path.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hermit_sync::{SpinMutex, SpinMutexGuard};
use hv::features::VirtKind;
use hv::virt::{
    self, Conflict, CpuId, CpuSet, DisableError, EnableError, OfflineVeto, User, VirtLayer,
};

use crate::arch::{Job, Reply};
use crate::{cpus, hw, percpu};

/// How long a CPU may take to answer a mailbox job before it is reported unresponsive.
const JOB_TIMEOUT_US: u64 = 2_000_000;
/// `EnableError::Failed` / `DisableError::Failed` code for a CPU that did not answer.
pub const CODE_TIMEOUT: u32 = 0xFFFF_0001;

/// Runs every backend call on the target CPU.
#[derive(Debug)]
pub struct PerCpuBackend;

impl virt::Backend for PerCpuBackend {
    fn enable(&mut self, cpu: CpuId) -> Result<(), EnableError> {
        match percpu::run_on(cpu.index(), Job::Enable, JOB_TIMEOUT_US) {
            Ok(Reply::Enable(r)) => r,
            _ => Err(EnableError::Failed { code: CODE_TIMEOUT }),
        }
    }

    fn disable(&mut self, cpu: CpuId) -> Result<(), DisableError> {
        match percpu::run_on(cpu.index(), Job::Disable, JOB_TIMEOUT_US) {
            Ok(Reply::Disable(r)) => r,
            _ => Err(DisableError::Failed { code: CODE_TIMEOUT }),
        }
    }

    fn is_enabled_hw(&self, cpu: CpuId) -> bool {
        matches!(
            percpu::run_on(cpu.index(), Job::IsEnabled, JOB_TIMEOUT_US),
            Ok(Reply::IsEnabled(true))
        )
    }

    fn emergency_disable(&mut self, cpu: CpuId) {
        let _ = percpu::run_on(cpu.index(), Job::EmergencyDisable, JOB_TIMEOUT_US);
    }
}

static LAYER: SpinMutex<Option<VirtLayer<PerCpuBackend>>> = SpinMutex::new(None);
/// Mirrors the layer's rebooting state for readers that must not take the lock.
static REBOOTING: AtomicBool = AtomicBool::new(false);

/// The layer, locked. Waits by yielding (a holder may be waiting for a CPU's reply), so it is
/// never called from a vCPU loop or a mailbox worker.
pub fn layer() -> SpinMutexGuard<'static, Option<VirtLayer<PerCpuBackend>>> {
    loop {
        if let Some(guard) = LAYER.try_lock() {
            return guard;
        }
        hermit::syscalls::sys_yield();
    }
}

pub fn is_rebooting() -> bool {
    REBOOTING.load(Ordering::Acquire)
}

/// When a reboot was requested through the API (microseconds since boot), 0 if none.
static REBOOT_REQUESTED_AT: AtomicU64 = AtomicU64::new(0);

/// Ask for a reboot once pending replies are sent. False if one is already under way.
pub fn request_reboot() -> bool {
    let now = hw::monotonic_micros().max(1);
    !is_rebooting()
        && REBOOT_REQUESTED_AT
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
}

/// The time of a pending reboot request, if any.
pub fn reboot_requested_at() -> Option<u64> {
    match REBOOT_REQUESTED_AT.load(Ordering::Acquire) {
        0 => None,
        t => Some(t),
    }
}

/// The CPU that serves the endpoint (core 0, where the endpoint thread runs) stays in service.
pub struct EndpointCpu;

impl OfflineVeto for EndpointCpu {
    fn check(&self, cpu: CpuId, _remaining: CpuSet) -> Result<(), Conflict> {
        if cpu.index() == 0 {
            Err(Conflict::Pinned)
        } else {
            Ok(())
        }
    }
}

/// Bring every CPU into service with the hypervisor as a user, and self-test each.
pub fn init(kind: VirtKind) {
    let n = cpus::count() as u32;
    let Ok(layer_value) = VirtLayer::new(PerCpuBackend, n) else {
        println!("hermitage: virt layer: no CPUs");
        return;
    };
    crate::arch::nmi::install();
    let mut guard = layer();
    let layer = guard.insert(layer_value);
    for id in 0..n {
        let cpu = CpuId(id);
        if let Err(e) = layer.online(cpu) {
            println!("hermitage: cpu {id}: online failed: {e:?}");
        }
        if kind == VirtKind::None {
            continue;
        }
        match layer.get(cpu, User::Hypervisor) {
            Ok(()) => {
                // Read back by the CPU itself (CR4.VMXE / EFER.SVME), not our bookkeeping.
                let on = cpus::slot(id as usize).and_then(|s| s.virt_on());
                let state = on.map_or("off", |k| k.as_str());
                println!(
                    "hermitage: cpu {id}: {} enabled, hardware reads {state}",
                    kind.as_str()
                );
            }
            Err(e) => println!(
                "hermitage: cpu {id}: enabling {} failed: {e:?}",
                kind.as_str()
            ),
        }
    }
    drop(guard);
    for id in 0..n as usize {
        if kind != VirtKind::None {
            self_test(id);
        }
    }
}

/// Run the VMRUN self-test on `cpu` and record the outcome for the API.
pub fn self_test(cpu: usize) {
    let outcome = match percpu::run_on(cpu, Job::SelfTest, JOB_TIMEOUT_US) {
        Ok(Reply::SelfTest(r)) => r,
        _ => Err(crate::arch::SelfTestError::NoHalt),
    };
    match outcome {
        Ok(report) => println!(
            "hermitage: cpu {cpu} self-test passed: {} round trip, {} exits",
            if crate::arch::vmx::is_enabled() {
                "VMLAUNCH"
            } else {
                "VMRUN"
            },
            report.exits
        ),
        Err(e) => println!("hermitage: cpu {cpu} self-test FAILED: {}", e.as_str()),
    }
    if let Some(slot) = cpus::slot(cpu) {
        slot.set_self_test(outcome);
    }
}

/// Reboot of the hypervisor: no new enables from now on, and virtualization off on every CPU,
/// tolerating faults. VMX blocks INIT while on and SVM while GIF=0: skipping this is how
/// machines hang on reset. The orderly path asks each CPU through its mailbox (the layer's
/// `begin_reboot`); a CPU that does not answer is reached by NMI. Returns how many CPUs report
/// virtualization off afterwards.
pub fn emergency_disable_all() -> usize {
    REBOOTING.store(true, Ordering::Release);
    match LAYER.try_lock() {
        Some(mut guard) => {
            if let Some(layer) = guard.as_mut() {
                // TDX lets go first: it runs on top of VMX.
                crate::tdx::shutdown(layer);
                let faulted = layer.begin_reboot();
                if !faulted.is_empty() {
                    println!(
                        "hermitage: reboot: disable faulted on {} cpus (forced off)",
                        faulted.len()
                    );
                }
                layer.emergency_disable_all();
            }
        }
        // Someone holds the layer: reach each CPU directly.
        None => {
            for id in 0..cpus::count() {
                let _ = percpu::run_on(id, Job::EmergencyDisable, 200_000);
            }
        }
    }
    crate::arch::emergency_off_here();
    cpus::publish_here();
    let n = cpus::count();
    if cpus_off() < n {
        let parked = crate::arch::nmi::shootdown_others(n - 1, 1_000_000);
        println!("hermitage: reboot: {parked} unresponsive cpus parked by NMI");
    }
    cpus_off()
}

fn cpus_off() -> usize {
    (0..cpus::count())
        .filter(|&id| cpus::slot(id).is_some_and(|s| s.virt_on().is_none()))
        .count()
}

/// Reset the machine the way a PC does (port 0xCF9, then the keyboard controller), after
/// turning virtualization off everywhere.
pub fn reboot() -> ! {
    let off = emergency_disable_all();
    println!(
        "hermitage: reboot: virtualization off on {off}/{} cpus, resetting",
        cpus::count()
    );
    hw::reset_machine()
}

/// The hypervisor's panic path: nothing can be trusted to cooperate, so every other CPU is
/// NMIed into turning virtualization off and parking, this one turns it off itself, and the
/// machine resets.
pub fn crash(reason: &str) -> ! {
    REBOOTING.store(true, Ordering::Release);
    println!("hermitage: PANIC: {reason}");
    let n = cpus::count();
    let parked = crate::arch::nmi::shootdown_others(n.saturating_sub(1), 2_000_000);
    crate::arch::emergency_off_here();
    cpus::publish_here();
    println!(
        "hermitage: panic: virtualization off on {}/{n} cpus ({parked} parked by NMI), resetting",
        cpus_off()
    );
    hw::reset_machine()
}
