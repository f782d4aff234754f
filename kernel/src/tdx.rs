//! TDX as the second user of the per-CPU virt layer (DESIGN.md; the Linux series in
//! shared/background/): detect it at boot, decide from the command line, bring the TDX module
//! up through the per-CPU mailbox, veto offlining the last CPU of a package while key IDs are
//! in use, and let go before VMX on reboot. Every decision is the `tdx` crate's (host-tested
//! against a simulated module); this file only wires it to the kernel's CPUs and locks.
//!
//! Lock order: the virt layer's lock, then [`STATE`]'s.

#![forbid(unsafe_code)]

use hermit_sync::{OnceCell, SpinMutex};
use hv::virt::{Conflict, CpuId, CpuSet, OfflineVeto, VirtLayer};
use tdx::seamcall::{Leaf, Regs, TdxError};
use tdx::{Decision, Tdx, TdxRequest, TdxSupport, Topology};

use crate::arch::seamcall::PerCpuSeamcall;
use crate::arch::{Job, Reply};
use crate::virt::PerCpuBackend;
use crate::{cpus, percpu};

/// What detection found on the boot CPU.
static SUPPORT: OnceCell<TdxSupport> = OnceCell::new();
/// The module's bring-up state machine, once TDX was requested and found.
static STATE: SpinMutex<Option<Tdx>> = SpinMutex::new(None);

/// How long one SEAMCALL may take on its CPU before it counts as unanswered.
const SEAMCALL_TIMEOUT_US: u64 = 1_000_000;

fn seamcall_on(cpu: CpuId, leaf: Leaf, args: Regs) -> Option<Result<Regs, TdxError>> {
    match percpu::run_on(
        cpu.index(),
        Job::Seamcall { leaf, args },
        SEAMCALL_TIMEOUT_US,
    ) {
        Ok(Reply::Seamcall(r)) => Some(r),
        _ => None,
    }
}

/// The package of every CPU, from its APIC id and the topology leaf 0xB's widest shift.
fn topology() -> Option<Topology> {
    let mut shift = 0;
    for level in 0..8 {
        let [eax, ebx, ecx, _] = crate::hw::cpuid(0xB, level);
        if ebx & 0xFFFF == 0 || (ecx >> 8) & 0xFF == 0 {
            break;
        }
        shift = eax & 0x1F;
    }
    let packages: heapless::Vec<u32, { cpus::MAX_CPUS }> = (0..cpus::count())
        .map(|i| cpus::slot(i).map_or(0, |s| s.apic_id() >> shift))
        .collect();
    Topology::new(&packages).ok()
}

/// At boot, after the virt layer put every CPU into service: detect, decide, and bring the
/// module up if asked and possible. Never fatal.
pub fn init(request: TdxRequest) {
    let support = crate::arch::seamcall::detect_here();
    crate::arch::seamcall::mark_supported(&support);
    let _ = SUPPORT.set(support);
    let decision = tdx::decide(request, support);
    match decision {
        Decision::Off => return,
        Decision::Skip { log: false, .. } => return,
        _ => println!("hermitage: {decision}"),
    }
    let Decision::BringUp { .. } = decision else {
        return;
    };
    let Some(topology) = topology() else {
        println!("hermitage: tdx: CPU topology unreadable; continuing without TDX");
        return;
    };
    let mut guard = crate::virt::layer();
    let Some(layer) = guard.as_mut() else { return };
    let mut module = Tdx::new(decision, topology);
    let mut sc = PerCpuSeamcall(seamcall_on);
    // No TDMR plan yet (the TDMR/PAMT layout is not built from the memory map): the module is
    // initialised globally and on every CPU, and configuration stops with the reason.
    match module.bring_up(layer, &mut sc, None) {
        Ok(state) => println!("hermitage: tdx: {state:?}"),
        Err(e) => println!("hermitage: tdx: bring-up stopped: {e}; continuing without TDX"),
    }
    *STATE.lock() = Some(module);
}

/// What `GET /v1/host` says under `tdx`: `{"supported":false,"reason":"..."}` or the key IDs
/// and the module's state.
pub fn support() -> Option<TdxSupport> {
    SUPPORT.get().copied()
}

/// The module's state in words, once bring-up ran.
pub fn state() -> Option<tdx::ModuleState> {
    STATE.lock().as_ref().map(Tdx::state)
}

/// A CPU came back into service: TDX takes its reference there and runs per-CPU init.
pub fn on_online(cpu: CpuId, layer: &mut VirtLayer<PerCpuBackend>) {
    if let Some(module) = STATE.lock().as_mut() {
        let mut sc = PerCpuSeamcall(seamcall_on);
        if let Err(e) = module.on_online(cpu, layer, &mut sc) {
            println!("hermitage: tdx: cpu {}: {e:?}", cpu.0);
        }
    }
}

/// Reboot: TDX lets go of every CPU before the virt layer turns VMX off. `try_lock`: this runs
/// on the reboot path, which must not wait for anyone.
pub fn shutdown(layer: &mut VirtLayer<PerCpuBackend>) {
    if let Some(mut guard) = STATE.try_lock() {
        if let Some(module) = guard.as_mut() {
            let report = module.shutdown(layer);
            println!("hermitage: tdx: shut down before VMX ({report:?})");
        }
    }
}

/// TDX's offline rule, for `VirtLayer::offline`.
pub struct TdxVeto;

impl OfflineVeto for TdxVeto {
    fn check(&self, cpu: CpuId, remaining: CpuSet) -> Result<(), Conflict> {
        match STATE.lock().as_ref() {
            Some(module) => module.check(cpu, remaining),
            None => Ok(()),
        }
    }
}
