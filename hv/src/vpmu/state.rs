//! The guest-visible PMU registers of one vCPU, and the only way to make them.
//!
//! [`VpmuState::reset`] is the one constructor: first boot and every reset go through it, it
//! takes the VM's *current* configuration, derives a fresh [`Model`] and fills the registers with
//! their architectural reset values. There is no "refresh" that edits an existing state, so no
//! register, count or version can outlive the configuration it belonged to.

use super::config::PmuConfig;
use super::model::{Model, RdpmcTarget};
use super::msr::{MAX_FIXED, MAX_GP, PmuMsr};
use crate::features::Vendor;

/// The guest's access faults with #GP(0), as it would on a CPU without the register or with a
/// reserved bit set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gp;

/// The outcome of a guest RDMSR of a PMU MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsrResult {
    /// The value EDX:EAX receives.
    Value(u64),
    /// The MSR does not exist in the guest's PMU: inject #GP(0).
    Gp,
}

impl MsrResult {
    /// The value, if the read succeeds.
    pub fn ok(self) -> Option<u64> {
        match self {
            MsrResult::Value(v) => Some(v),
            MsrResult::Gp => None,
        }
    }
}

/// Register file, sized for the largest configuration. Entries beyond the model's counts stay 0:
/// their MSRs do not exist, so nothing can write them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Registers {
    counters: [u64; MAX_GP],
    event_selects: [u64; MAX_GP],
    fixed: [u64; MAX_FIXED],
    fixed_ctrl: u64,
    global_ctrl: u64,
    global_status: u64,
}

/// A read-only view of the live registers ([`VpmuState::registers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmuRegisters<'a> {
    /// General-purpose counters (IA32_PMCx / PerfCtrx), as many as the model has.
    pub counters: &'a [u64],
    /// Their event selects (IA32_PERFEVTSELx / PerfEvtSelx).
    pub event_selects: &'a [u64],
    /// Intel fixed counters.
    pub fixed: &'a [u64],
    /// IA32_FIXED_CTR_CTRL.
    pub fixed_ctrl: u64,
    /// IA32_PERF_GLOBAL_CTRL or AMD PerfCntrGlobalCtl.
    pub global_ctrl: u64,
    /// IA32_PERF_GLOBAL_STATUS or AMD PerfCntrGlobalStatus.
    pub global_status: u64,
}

/// One vCPU's PMU as the guest sees it: the model plus the register values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VpmuState {
    model: Model,
    regs: Registers,
}

/// IA32_PERFEVTSELx / PerfEvtSel INT (bit 20): interrupt on overflow.
const EVTSEL_INT: u64 = 1 << 20;
/// IA32_PERF_GLOBAL_INUSE PMI_InUse.
const INUSE_PMI: u64 = 1 << 63;

impl VpmuState {
    /// The state of a vCPU after RESET, for the VM's current configuration `config` on a guest
    /// whose CPU vendor is `guest_vendor`: a model derived afresh, every counter, event select,
    /// fixed counter, fixed control and status at 0, and the global control register at its
    /// architectural reset value ([`Model::global_ctrl_reset`]). The SDM leaves counter contents
    /// undefined after RESET; the model chooses 0 so that a reset state is one exact value.
    pub fn reset(config: &PmuConfig, guest_vendor: Vendor) -> VpmuState {
        let model = Model::derive(config, guest_vendor);
        VpmuState {
            model,
            regs: Registers {
                counters: [0; MAX_GP],
                event_selects: [0; MAX_GP],
                fixed: [0; MAX_FIXED],
                fixed_ctrl: 0,
                global_ctrl: model.global_ctrl_reset(),
                global_status: 0,
            },
        }
    }

    /// The live registers, for the API (`GET /v1/vms/{id}/pmu`): only those the model has.
    pub fn registers(&self) -> PmuRegisters<'_> {
        let gp = usize::from(self.model.gp_counters());
        let fixed = usize::from(self.model.fixed_counters());
        PmuRegisters {
            counters: &self.regs.counters[..gp],
            event_selects: &self.regs.event_selects[..gp],
            fixed: &self.regs.fixed[..fixed],
            fixed_ctrl: self.regs.fixed_ctrl,
            global_ctrl: self.regs.global_ctrl,
            global_status: self.regs.global_status,
        }
    }

    /// The model this state was built with (a copy: the model cannot be changed in place).
    pub fn model(&self) -> Model {
        self.model
    }

    /// CPUID as the guest sees it, see [`Model::cpuid`].
    pub fn cpuid(&self, leaf: u32, subleaf: u32, host: [u32; 4]) -> [u32; 4] {
        self.model.cpuid(leaf, subleaf, host)
    }

    /// The leaves this PMU needs enumerated, see [`Model::min_leaves`].
    pub fn min_leaves(&self) -> (u32, u32) {
        self.model.min_leaves()
    }

    /// Guest RDMSR.
    pub fn rdmsr(&self, msr: u32) -> MsrResult {
        let Some(reg) = self.model.msr(msr) else {
            return MsrResult::Gp;
        };
        let r = &self.regs;
        MsrResult::Value(match reg {
            PmuMsr::Counter(n) | PmuMsr::CounterFullWidth(n) => r.counters[usize::from(n)],
            PmuMsr::EventSelect(n) => r.event_selects[usize::from(n)],
            PmuMsr::Fixed(n) => r.fixed[usize::from(n)],
            PmuMsr::FixedCtrl => r.fixed_ctrl,
            PmuMsr::Capabilities => self.model.perf_capabilities().unwrap_or(0),
            PmuMsr::GlobalStatus => r.global_status,
            PmuMsr::GlobalCtrl => r.global_ctrl,
            // Write-1-to-act registers read as 0.
            PmuMsr::GlobalStatusClear | PmuMsr::GlobalStatusSet => 0,
            PmuMsr::GlobalInUse => self.in_use(),
        })
    }

    /// Guest WRMSR: `Err(Gp)` when the MSR does not exist, is read-only, or `value` sets a
    /// reserved bit; the state is unchanged then.
    pub fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), Gp> {
        let reg = self.model.msr(msr).ok_or(Gp)?;
        let m = self.model;
        let intel = m.intel_version() > 0;
        let r = &mut self.regs;
        match reg {
            PmuMsr::Counter(n) => {
                r.counters[usize::from(n)] = if intel {
                    // IA32_PMCx: EAX sign-extended to 64 bits, EDX ignored (SDM vol. 3B §20.2.6).
                    (value as u32 as i32 as i64 as u64) & m.counter_mask()
                } else {
                    // AMD PerfCtrn: bits 63:48 are not implemented and are dropped. Linux writes
                    // `-left & ((1 << 48) - 1)` there, i.e. bit 47 set and 63:48 clear, so the
                    // hardware cannot be requiring sign extension.
                    value & m.counter_mask()
                };
            }
            PmuMsr::CounterFullWidth(n) => {
                // IA32_A_PMCx: all implemented bits are written; bits above the width are reserved.
                if value & !m.counter_mask() != 0 {
                    return Err(Gp);
                }
                r.counters[usize::from(n)] = value;
            }
            PmuMsr::EventSelect(n) => {
                if value & m.event_select_reserved() != 0 {
                    return Err(Gp);
                }
                r.event_selects[usize::from(n)] = value;
            }
            PmuMsr::Fixed(n) => {
                // "Bits beyond the width of the fixed counter are reserved and must be written as
                // zeros" (SDM vol. 3B §20.2.2).
                if value & !m.counter_mask() != 0 {
                    return Err(Gp);
                }
                r.fixed[usize::from(n)] = value;
            }
            PmuMsr::FixedCtrl => {
                if value & m.fixed_ctrl_reserved() != 0 {
                    return Err(Gp);
                }
                r.fixed_ctrl = value;
            }
            PmuMsr::GlobalCtrl => {
                if value & !m.global_ctrl_mask() != 0 {
                    return Err(Gp);
                }
                r.global_ctrl = value;
            }
            PmuMsr::GlobalStatusClear => {
                if value & !m.global_status_clear_allowed() != 0 {
                    return Err(Gp);
                }
                r.global_status &= !value;
            }
            PmuMsr::GlobalStatusSet => {
                if value & !m.global_status_set_allowed() != 0 {
                    return Err(Gp);
                }
                r.global_status |= value & m.global_status_mask();
            }
            PmuMsr::Capabilities | PmuMsr::GlobalStatus | PmuMsr::GlobalInUse => return Err(Gp),
        }
        Ok(())
    }

    /// Guest RDPMC with `ecx`: the counter's value (bits 31:0 only for an Intel fast read), or
    /// #GP for an index the PMU does not have (see [`Model::rdpmc`]).
    pub fn rdpmc(&self, ecx: u32) -> Result<u64, Gp> {
        let d = self.model.rdpmc(ecx)?;
        let v = match d.target {
            RdpmcTarget::Counter(n) => self.regs.counters[usize::from(n)],
            RdpmcTarget::Fixed(n) => self.regs.fixed[usize::from(n)],
        };
        Ok(if d.low32 { v & 0xFFFF_FFFF } else { v })
    }

    /// For the hardware backing ([`super::backing`]) only: the counts read back from the
    /// hardware counters (`counters[n]`, `fixed[n]` for the counters the model has; extra
    /// entries are ignored) and the overflow the hardware saw. The model decides what sticks:
    /// counts are masked to the counter width, overflow to the status bits the model has (none
    /// without global status), ORed in as hardware sets them.
    pub(super) fn store_counts(&mut self, counters: &[u64], fixed: &[u64], overflow: u64) {
        let m = self.model;
        let r = &mut self.regs;
        let gp = usize::from(m.gp_counters());
        let nf = usize::from(m.fixed_counters());
        for (dst, src) in r.counters.iter_mut().zip(counters).take(gp) {
            *dst = src & m.counter_mask();
        }
        for (dst, src) in r.fixed.iter_mut().zip(fixed).take(nf) {
            *dst = src & m.counter_mask();
        }
        r.global_status |= overflow & m.global_status_mask();
    }

    /// IA32_PERF_GLOBAL_INUSE (SDM vol. 3B §20.2.4): PERFEVTSELn_InUse = EVTSELn\[7:0\] != 0,
    /// FCn_InUse = FIXED_CTR_CTRL field n EN != 0, PMI_InUse = any INT / PMI bit set.
    fn in_use(&self) -> u64 {
        let r = &self.regs;
        let mut v = 0;
        let mut pmi = false;
        for n in 0..usize::from(self.model.gp_counters()) {
            if r.event_selects[n] & 0xFF != 0 {
                v |= 1 << n;
            }
            pmi |= r.event_selects[n] & EVTSEL_INT != 0;
        }
        for n in 0..usize::from(self.model.fixed_counters()) {
            let field = (r.fixed_ctrl >> (4 * n)) & 0xF;
            if field & 0b11 != 0 {
                v |= 1 << (32 + n);
            }
            pmi |= field & 0b1000 != 0;
        }
        if pmi {
            v |= INUSE_PMI;
        }
        v
    }
}

impl crate::cpuid::PmuCpuid for VpmuState {
    fn pmu_cpuid(&self, leaf: u32, subleaf: u32, filtered: [u32; 4]) -> [u32; 4] {
        self.cpuid(leaf, subleaf, filtered)
    }

    fn min_leaves(&self) -> (u32, u32) {
        VpmuState::min_leaves(self)
    }
}
