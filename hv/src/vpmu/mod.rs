//! The virtual PMU: everything a guest sees of its performance-monitoring unit, decided in safe
//! code from the VM's configuration and the guest's CPU vendor, and rebuilt from scratch on every
//! reset.
//!
//! # Why this module is shaped the way it is
//!
//! Hermitage started from a QEMU fix ("target/i386/kvm: Reset PMU state in kvm_init_pmu_info",
//! see `shared/background/`): the PMU version and the numbers of general-purpose and fixed
//! counters lived in static variables that survived from one vCPU initialisation to the next.
//! When initialisation returned early — PMU disabled, or a vendor mismatch — the old values
//! stayed, and on guest reboot the VMM wrote PMU MSRs the guest's CPU did not have, which crashed
//! the guest. Linux KVM fixed bugs of the same family: counters not stopped before a PMU refresh,
//! AMD PMU metadata not zeroed when the PMU is disabled, and IA32_PERF_GLOBAL_CTRL left at 0
//! instead of its architectural reset value (all GP counters enabled), which silently broke
//! guests that predate global control. Each is a piece of PMU state that outlived the
//! configuration it belonged to, or was patched rather than rebuilt.
//!
//! So here:
//!
//! - [`PmuConfig`] is plain data, validated once ([`PmuConfig::validate`], errors name the field).
//! - [`Model`] is a `Copy` value derived only from (configuration, guest vendor) by
//!   [`Model::derive`]. It decides the CPUID bits and leaves, which MSRs exist, every write mask
//!   and width, the reset value of the global control register and the RDPMC index encoding. A
//!   configuration for the other vendor gives the Off model and says so
//!   ([`ModelNote::VendorMismatch`]). It has no setters: a new configuration is a new model.
//! - [`VpmuState`] has exactly one constructor, [`VpmuState::reset`], used for first boot and for
//!   every reset; it never edits a previous state.
//! - [`VmPmu`] holds the VM's current configuration and an optional pending one; the pending one
//!   takes effect at the next [`VmPmu::reset`] and never mid-run, and the guest-visible state is
//!   only ever replaced by a fresh `VpmuState::reset(current, vendor)`.
//!
//! Nothing here counts events: the registers are what the guest reads and writes. Where the host
//! has a PMU of the same kind, [`backing`] programs the guest's counters into it around each
//! guest entry and reads them back (only unit-tested, and off by default); otherwise they stay
//! in software.
//!
//! # References
//!
//! - Intel SDM vol. 3B ch. 20 ("Performance Monitoring"), §20.2 architectural performance
//!   monitoring versions 1-5 (§20.2.1 v1 and event selects, §20.2.2 v2 fixed counters and global
//!   control, §20.2.3 v3 AnyThread, §20.2.4 v4 STATUS_SET/STATUS_RESET/INUSE, §20.2.5 v5 fixed
//!   counter bitmap and AnyThread deprecation, §20.2.6 full-width writes); vol. 2A CPUID leaf 0AH
//!   and RDPMC; vol. 4 table 2-2 for MSR indices and reset values.
//! - AMD APM vol. 2 §13.2 (performance counters: legacy PerfEvtSel/PerfCtr, the core extension,
//!   PerfMonV2 global control and status); vol. 3 CPUID Fn8000_0001 ECX\[23\] PerfCtrExtCore,
//!   Fn8000_0022 (PerfMonV2, NumPerfCtrCore) and RDPMC.

pub mod backing;
#[cfg(test)]
mod backing_tests;
mod config;
mod model;
mod msr;
pub mod probe;
mod state;
#[cfg(test)]
mod tests;

pub use backing::{
    Backing, BackingRequest, Hardware, HostPmu, HostPmuCaps, Loaded, NoBacking, StaleModel,
};
pub use config::{
    AmdKind, ConfigError, INTEL_DEFAULT_GP, INTEL_DEFAULT_WIDTH, INTEL_GP_COUNTERS, INTEL_VERSIONS,
    INTEL_WIDTHS, PmuConfig, intel_default_fixed, intel_default_full_width, intel_max_fixed,
};
pub use model::{
    ARCH_EVENTS, CPUID_0A_EDX_ANYTHREAD_DEPRECATED, CPUID_1_ECX_PDCM,
    CPUID_8000_0001_ECX_PERFCTR_EXT_CORE, CPUID_8000_0022_EAX_PERFMON_V2, Model, ModelNote,
    PERF_CAPABILITIES_FW_WRITE, PMU_CPUID_LEAVES, Rdpmc, RdpmcTarget,
};
pub use msr::*;
pub use state::{Gp, MsrResult, PmuRegisters, VpmuState};

use crate::exit::{Action, Exit, RegUpdate, VECTOR_GP};
use crate::features::Vendor;

/// A VM's PMU: the configuration in force, a configuration waiting for the next reset, and the
/// guest-visible state built from the one in force.
///
/// Invariant: `state == VpmuState::reset(&current, vendor)` right after every reset (and after
/// [`VmPmu::new`]), with `vendor` the guest vendor of that reset; between resets only guest
/// register writes change `state`, never the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmPmu {
    current: PmuConfig,
    pending: Option<PmuConfig>,
    state: VpmuState,
}

impl VmPmu {
    /// A VM's PMU at creation: `config` is validated and becomes current, the state is the reset
    /// state for it.
    pub fn new(config: PmuConfig, guest_vendor: Vendor) -> Result<VmPmu, ConfigError> {
        let current = config.validate()?;
        Ok(VmPmu {
            current,
            pending: None,
            state: VpmuState::reset(&current, guest_vendor),
        })
    }

    /// Ask for `config` from the next reset on. Validated now (so the API can answer 400); an
    /// invalid configuration leaves any earlier pending one in place. The guest sees no change
    /// until [`VmPmu::reset`].
    pub fn set_pending_config(&mut self, config: PmuConfig) -> Result<(), ConfigError> {
        self.pending = Some(config.validate()?);
        Ok(())
    }

    /// Forget a pending configuration.
    pub fn clear_pending_config(&mut self) {
        self.pending = None;
    }

    /// The configuration in force.
    pub fn current(&self) -> &PmuConfig {
        &self.current
    }

    /// The configuration waiting for the next reset.
    pub fn pending(&self) -> Option<&PmuConfig> {
        self.pending.as_ref()
    }

    /// The guest-visible state.
    pub fn state(&self) -> &VpmuState {
        &self.state
    }

    /// Guest RDMSR, see [`VpmuState::rdmsr`].
    pub fn rdmsr(&self, msr: u32) -> MsrResult {
        self.state.rdmsr(msr)
    }

    /// Guest WRMSR, see [`VpmuState::wrmsr`].
    pub fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), Gp> {
        self.state.wrmsr(msr, value)
    }

    /// Guest RDPMC, see [`VpmuState::rdpmc`].
    pub fn rdpmc(&self, ecx: u32) -> Result<u64, Gp> {
        self.state.rdpmc(ecx)
    }

    /// Guest CPUID adjustment, see [`Model::cpuid`].
    pub fn cpuid(&self, leaf: u32, subleaf: u32, host: [u32; 4]) -> [u32; 4] {
        self.state.cpuid(leaf, subleaf, host)
    }

    /// The vPMU's part of exit handling: PMU MSR accesses and RDPMC are answered from this
    /// model (value, or #GP where the hardware it describes would raise it); any other exit is
    /// `None`, for [`crate::exit::handle`]. Counts nothing: the caller records the exit.
    pub fn handle_exit(&mut self, exit: &Exit) -> Option<Action> {
        let gp = Action::InjectException {
            vector: VECTOR_GP,
            error_code: Some(0),
        };
        let value = |rip: u64, v: u64| Action::ResumeWith {
            rip,
            regs: RegUpdate {
                rax: Some(v & 0xFFFF_FFFF),
                rdx: Some(v >> 32),
                ..RegUpdate::default()
            },
        };
        Some(match *exit {
            Exit::Msr {
                index,
                write,
                next_rip,
            } if is_pmu_msr(index) => match write {
                Some(v) => match self.wrmsr(index, v) {
                    Ok(()) => Action::ResumeAt { rip: next_rip },
                    Err(_) => gp,
                },
                None => match self.rdmsr(index) {
                    MsrResult::Value(v) => value(next_rip, v),
                    MsrResult::Gp => gp,
                },
            },
            Exit::Rdpmc { index, next_rip } => match self.rdpmc(index) {
                Ok(v) => value(next_rip, v),
                Err(_) => gp,
            },
            _ => return None,
        })
    }

    /// One guest entry `guest` with the counters backed as `backing` says: for
    /// [`Backing::Hardware`], the guest's counters are loaded into `host` before and saved back
    /// after ([`Hardware::load`], [`Loaded::save`]); otherwise `guest` just runs. A choice made
    /// for another model than the current state's (stale across a reset) runs unbacked.
    pub fn run_backed<H: HostPmu, R>(
        &mut self,
        backing: &Backing,
        host: &mut H,
        guest: impl FnOnce() -> R,
    ) -> R {
        let Backing::Hardware(hw) = backing else {
            return guest();
        };
        let Ok(loaded) = hw.load(&self.state, host) else {
            return guest();
        };
        let r = guest();
        // The state cannot change between load and save here, so save cannot be stale.
        let _ = loaded.save(&mut self.state, host);
        r
    }

    /// Guest reset (API call, triple fault, 0xCF9, keyboard-controller reset): apply the pending
    /// configuration if there is one, then rebuild the state from the current configuration with
    /// [`VpmuState::reset`]. `guest_vendor` is the guest CPU's vendor at this reset.
    pub fn reset(&mut self, guest_vendor: Vendor) {
        if let Some(next) = self.pending.take() {
            self.current = next;
        }
        self.state = VpmuState::reset(&self.current, guest_vendor);
    }
}
