//! The host PMU for the vPMU's hardware backing (`hv::vpmu::backing`): RDMSR/WRMSR behind
//! `hv::vpmu::HostPmu`, and the boot-time decision whether the backing may be used at all.
//!
//! Off unless the command line says `vpmu_backing=hardware`: the hardware path is only
//! unit-tested (against a fake PMU in `hv`), because no emulator this project runs on (QEMU
//! TCG, Bochs) counts PMU events. With it on, each guest entry chooses afresh
//! (`hv::vpmu::Backing::choose`, pure and cheap) from the host PMU and the guest's current model,
//! so a reset that rebuilds the guest's vPMU can never meet a stale choice.

#![forbid(unsafe_code)]

use hermit_sync::OnceCell;
use hv::features::{HostFeatures, Vendor};
use hv::vpmu::{
    Backing, BackingRequest, CPUID_1_ECX_PDCM, HostPmu, HostPmuCaps, IA32_PERF_CAPABILITIES,
    NoBacking, VmPmu, VpmuState,
};

use crate::hw;

/// The request and the host PMU, fixed at boot.
static HOST: OnceCell<(BackingRequest, HostPmuCaps)> = OnceCell::new();

/// Record the command line's request and the boot CPU's PMU. IA32_PERF_CAPABILITIES is read
/// only when asked for hardware backing on an Intel host that enumerates it (CPUID.01H:ECX.PDCM,
/// SDM vol. 3B §20.2.4 / vol. 4 table 2-2).
pub fn init(request: BackingRequest, features: &HostFeatures) {
    let perf_capabilities = (request == BackingRequest::Hardware
        && features.vendor == Vendor::Intel
        && hw::cpuid(1, 0)[2] & CPUID_1_ECX_PDCM != 0)
        .then(|| hw::rdmsr(IA32_PERF_CAPABILITIES));
    let _ = HOST.set((request, HostPmuCaps::new(features, perf_capabilities)));
}

/// Where the counts of a guest with `state` come from, for the API and for each entry.
pub fn backing(state: &VpmuState) -> Backing {
    match HOST.get() {
        Some((request, caps)) => Backing::choose(*request, caps, &state.model()),
        None => Backing::None(NoBacking::NotRequested),
    }
}

/// One guest entry `guest` with the counters of `pmu` backed as [`backing`] decides: with
/// hardware backing, the guest's counters are loaded into the host PMU before and saved back
/// after; otherwise `guest` just runs. Call with interrupts off, around the entry only.
pub fn around<R>(pmu: &mut VmPmu, guest: impl FnOnce() -> R) -> R {
    // Not asked for (the default): nothing to choose on this hot path.
    if !matches!(HOST.get(), Some((BackingRequest::Hardware, _))) {
        return guest();
    }
    let backing = backing(pmu.state());
    pmu.run_backed(&backing, &mut Msrs, guest)
}

/// The host PMU MSRs, on the CPU this runs on.
struct Msrs;

impl HostPmu for Msrs {
    fn read(&mut self, msr: u32) -> u64 {
        // `hv::vpmu::backing` names only MSRs the host PMU it was chosen for has (CPUID).
        hw::rdmsr(msr)
    }

    fn write(&mut self, msr: u32, value: u64) {
        // Values with no reserved bit set for the host PMU: see `hv::vpmu::backing`.
        hw::wrmsr(msr, value)
    }
}
