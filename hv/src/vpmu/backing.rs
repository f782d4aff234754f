//! Hardware backing of the guest's counters: where the host CPU has a PMU of the same kind, the
//! guest's counters are programmed into the host's hardware counters around each guest entry,
//! read back after the exit, and hardware overflow is reflected into the guest's global status.
//! Where it has none (QEMU TCG and Bochs count no events), the counters stay in software
//! ([`VpmuState`] alone) and the API says `"backing":"none"`.
//!
//! **The hardware path is only unit-tested here**, against a fake PMU (`backing_tests.rs`) that
//! models counters, event selects, enable bits, global control/status, counter widths and
//! overflow. No machine available to this project counts PMU events under virtualization, so
//! the kernel wiring is off unless the command line says `vpmu_backing=hardware`.
//!
//! # Shape
//!
//! - [`HostPmu`] is the only way to the hardware: read or write one host PMU MSR by index. The
//!   kernel implements it with RDMSR/WRMSR; tests with a fake.
//! - [`Backing::choose`] decides, from the host PMU ([`HostPmuCaps`]) and the guest's
//!   [`Model`], whether the hardware can carry the guest's counters: same vendor, at least the
//!   guest's version (AMD: kind), general-purpose and fixed counters, widths at least the
//!   guest's and, on Intel, full-width counter writes (IA32_PERF_CAPABILITIES\[13\], SDM vol. 3B
//!   §20.2.6: without them a counter can only be loaded with a sign-extended 32-bit value, so a
//!   guest count could not be put back). Otherwise [`Backing::None`] with a [`NoBacking`] reason.
//! - [`Hardware::load`] before guest entry and [`Loaded::save`] after the exit. The backing holds
//!   no guest state: the only thing that lives from load to save is the host's PMU state it
//!   clobbered ([`Loaded`]), and a [`Hardware`] carries the guest [`Model`] it was chosen for,
//!   so a state rebuilt by a reset ([`VpmuState::reset`], still the only constructor) is
//!   refused by a stale choice ([`StaleModel`]) instead of being programmed with old counts.
//!   Choosing is cheap and pure; the kernel chooses again at every entry.
//! - Only MSRs the host PMU has are touched, and of those only the ones for counters the guest
//!   has (plus the global control, status and fixed-counter control registers, which hold every
//!   counter's bits): a host counter beyond the guest's count is never read or written.
//!
//! # What load and save do
//!
//! `load`: stop the host's counting (global control 0 where the host has one; otherwise each
//! event select the guest will use is cleared before its counter is read), save every register
//! it is about to change, clear the host's overflow status bits of the guest's counters, then
//! program counters, event selects, fixed counters and fixed control from the guest registers,
//! and last the global control with the guest's enables (all of its counters when the guest's PMU
//! has no global control: Intel version 1, AMD legacy and core extension).
//!
//! Counter values are written *extended* to the host width: guest value `g` of width `W` goes to
//! the hardware as `g | (host_mask & !guest_mask)`, so a host counter of width `H >= W` wraps to
//! zero exactly when the guest's `W`-bit counter would, and its overflow status bit is the
//! guest's. The low `W` bits are the guest's count throughout.
//!
//! `save`: stop counting (global control 0, or clear the event selects), read the counters back
//! and store them masked to the guest width (the [`Model`] decides the masks), OR the hardware
//! overflow bits of the guest's counters into the guest's global status (only bits the model
//! has: a guest without global status gets none), clear those bits in the hardware, put back
//! the host's counters, event selects, fixed counters, fixed control, the host's overflow bits
//! (through STATUS_SET where the host has it: Intel version 4+, AMD PerfMonV2; without it
//! a host bit for a guest counter cannot be re-set and is lost — Hermitage's kernel does not
//! use its PMU, so there are none) and last the host's global control.
//!
//! Guest-only counting:
//!
//! - AMD: each event select is programmed with GuestOnly (bit 40) set and HostOnly (bit 41)
//!   clear (APM vol. 2 §13.2.1, PerfEvtSeln HG_ONLY bits, which select guest- or host-mode
//!   counting while EFER.SVME=1, as it is while a guest runs), whatever the guest put there, so
//!   hypervisor code between load and VMRUN and between #VMEXIT and save does not count.
//! - Intel: the counters are enabled by the WRMSR of IA32_PERF_GLOBAL_CTRL at the end of `load`
//!   and disabled at the start of `save`, so the few hypervisor instructions in between and the
//!   entry/exit themselves are counted (events the guest's USR/OS bits select at CPL 0). Exact
//!   guest-only counting needs the VM-entry control "load IA32_PERF_GLOBAL_CTRL" (bit 13) and
//!   the VM-exit control "load IA32_PERF_GLOBAL_CTRL" (bit 12) (SDM vol. 3C §25.7.1, §25.8.1;
//!   §27.3.2.1 / §28.5.1 for the loads): [`Loaded::guest_global_ctrl`] is the value for the
//!   guest field, 0 the host's. The VMX backend does not use those controls yet.
//!
//! Not programmed into the hardware: the interrupt-on-overflow bits (event select INT, bit 20;
//! fixed control PMI, bit 3 of each field) — Hermitage has no virtual interrupt controller to
//! deliver a guest PMI to, and a host PMI would go to a host that has no handler — and Intel's
//! AnyThread (bit 21; fixed control bit 2 of each field): a vCPU has no sibling to count for,
//! and version 5 hosts reserve it. The guest's registers keep the bits; only the hardware copy
//! drops them.
//!
//! # References
//!
//! - Intel SDM vol. 3B §20.2.1 (IA32_PMCx, IA32_PERFEVTSELx), §20.2.2 (fixed counters,
//!   IA32_FIXED_CTR_CTRL, IA32_PERF_GLOBAL_CTRL/STATUS/OVF_CTRL), §20.2.4 (STATUS_RESET,
//!   STATUS_SET), §20.2.6 (full-width writes, IA32_A_PMCx); vol. 4 table 2-2 for indices.
//! - AMD APM vol. 2 §13.2 (PerfEvtSeln/PerfCtrn and their Host/Guest-only bits, core
//!   extension, PerfMonV2 PerfCntrGlobalCtl/Status/StatusClr/StatusSet).

use super::model::Model;
use super::msr::*;
use super::state::VpmuState;
use crate::features::{HostFeatures, PmuInfo, Vendor};

/// Read or write one host PMU MSR. The kernel's implementation is RDMSR/WRMSR; the backing only
/// ever names MSRs the host PMU described by [`HostPmuCaps`] has.
pub trait HostPmu {
    fn read(&mut self, msr: u32) -> u64;
    fn write(&mut self, msr: u32, value: u64);
}

/// What the kernel command line asked for (`vpmu_backing=none|hardware`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackingRequest {
    /// Counters in software only (the default).
    #[default]
    None,
    /// Back counters with the host PMU where [`Backing::choose`] allows it.
    Hardware,
}

impl BackingRequest {
    /// Parses the value of `vpmu_backing=`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "none" => Some(BackingRequest::None),
            "hardware" => Some(BackingRequest::Hardware),
            _ => None,
        }
    }
}

/// The host PMU as the backing needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPmuCaps {
    pub vendor: Vendor,
    /// From CPUID ([`HostFeatures::detect`]).
    pub pmu: PmuInfo,
    /// Intel IA32_PERF_CAPABILITIES\[13\] FW_WRITE: the IA32_A_PMCx aliases exist.
    pub full_width_writes: bool,
}

impl HostPmuCaps {
    /// From the detected features and IA32_PERF_CAPABILITIES, which the caller reads only when
    /// CPUID.01H:ECX\[15\] (PDCM) says it exists (`None` otherwise).
    pub fn new(features: &HostFeatures, perf_capabilities: Option<u64>) -> HostPmuCaps {
        HostPmuCaps {
            vendor: features.vendor,
            pmu: features.pmu,
            full_width_writes: features.vendor == Vendor::Intel
                && perf_capabilities.is_some_and(|c| c & super::PERF_CAPABILITIES_FW_WRITE != 0),
        }
    }
}

/// Why the guest's counters are not backed by the hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoBacking {
    /// The command line did not ask for it.
    NotRequested,
    /// The guest has no PMU.
    GuestPmuOff,
    /// The host's PMU is another vendor's than the guest's model.
    VendorMismatch,
    /// Intel: the host's architectural PMU version is below the guest's; AMD: the host lacks
    /// the core extension or PerfMonV2 the guest's kind has.
    HostVersion,
    /// The host has fewer general-purpose counters than the guest.
    GpCounters,
    /// The host has fewer fixed counters than the guest.
    FixedCounters,
    /// A host counter is narrower than the guest's.
    Width,
    /// Intel host without full-width writes: counters cannot be loaded with a guest count.
    NoFullWidthWrites,
}

/// Where the guest's counts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Software only: the registers hold what the guest writes.
    None(NoBacking),
    /// The host's hardware counters.
    Hardware(Hardware),
}

impl Backing {
    /// The API's name: `"hardware"` or `"none"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Backing::None(_) => "none",
            Backing::Hardware(_) => "hardware",
        }
    }

    /// Decide whether the host PMU `host` can carry the counters of a guest with `model`, when
    /// `request` asks for it. Pure: the kernel calls it at each entry.
    pub fn choose(request: BackingRequest, host: &HostPmuCaps, model: &Model) -> Backing {
        match Self::check(request, host, model) {
            Ok(layout) => Backing::Hardware(Hardware {
                host: layout,
                model: *model,
            }),
            Err(why) => Backing::None(why),
        }
    }

    fn check(
        request: BackingRequest,
        host: &HostPmuCaps,
        model: &Model,
    ) -> Result<Layout, NoBacking> {
        if request == BackingRequest::None {
            return Err(NoBacking::NotRequested);
        }
        let Some(vendor) = model.vendor() else {
            return Err(NoBacking::GuestPmuOff);
        };
        if vendor != host.vendor {
            return Err(NoBacking::VendorMismatch);
        }
        let p = &host.pmu;
        let need = |ok: bool, why| if ok { Ok(()) } else { Err(why) };
        need(p.gp_counters >= model.gp_counters(), NoBacking::GpCounters)?;
        need(p.gp_width >= model.counter_width(), NoBacking::Width)?;
        match vendor {
            Vendor::Intel => {
                need(p.version >= model.intel_version(), NoBacking::HostVersion)?;
                need(
                    p.fixed_counters >= model.fixed_counters(),
                    NoBacking::FixedCounters,
                )?;
                need(
                    model.fixed_counters() == 0 || p.fixed_width >= model.counter_width(),
                    NoBacking::Width,
                )?;
                need(host.full_width_writes, NoBacking::NoFullWidthWrites)?;
                Ok(Layout {
                    kind: HostKind::Intel,
                    global: p.version >= 2,
                    status_set: p.version >= 4,
                    gp_width: p.gp_width,
                    fixed_width: p.fixed_width,
                })
            }
            _ => {
                let guest = model.effective_config();
                let (ext, v2) = match guest {
                    super::PmuConfig::Amd { kind, .. } => (
                        kind != super::AmdKind::Legacy,
                        kind == super::AmdKind::PerfMonV2,
                    ),
                    _ => (false, false),
                };
                need(
                    (!ext || p.amd_core_ext) && (!v2 || p.amd_perfmon_v2),
                    NoBacking::HostVersion,
                )?;
                Ok(Layout {
                    kind: if p.amd_core_ext {
                        HostKind::AmdExt
                    } else {
                        HostKind::AmdLegacy
                    },
                    global: p.amd_perfmon_v2,
                    status_set: p.amd_perfmon_v2,
                    gp_width: p.gp_width,
                    fixed_width: 0,
                })
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HostKind {
    Intel,
    /// PerfEvtSel0..3 / PerfCtr0..3 only.
    AmdLegacy,
    /// The core-extension block (which aliases the legacy registers for counters 0..3).
    AmdExt,
}

/// Which MSRs the host has, decided by [`Backing::choose`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    kind: HostKind,
    /// Global control/status/status-clear (Intel v2+, AMD PerfMonV2).
    global: bool,
    /// Status-set (Intel v4+, AMD PerfMonV2).
    status_set: bool,
    gp_width: u8,
    fixed_width: u8,
}

impl Layout {
    fn select(&self, n: usize) -> u32 {
        let n = n as u32;
        match self.kind {
            HostKind::Intel => IA32_PERFEVTSEL0 + n,
            HostKind::AmdLegacy => AMD_PERF_CTL0 + n,
            HostKind::AmdExt => AMD_PERF_CTL_EXT0 + 2 * n,
        }
    }

    /// The counter, for reads (Intel IA32_PMCx reads the full width).
    fn counter(&self, n: usize) -> u32 {
        let n = n as u32;
        match self.kind {
            HostKind::Intel => IA32_PMC0 + n,
            HostKind::AmdLegacy => AMD_PERF_CTR0 + n,
            HostKind::AmdExt => AMD_PERF_CTL_EXT0 + 2 * n + 1,
        }
    }

    /// The counter, for full-width writes (Intel IA32_A_PMCx; `choose` required FW_WRITE).
    fn counter_write(&self, n: usize) -> u32 {
        match self.kind {
            HostKind::Intel => IA32_A_PMC0 + n as u32,
            _ => self.counter(n),
        }
    }

    fn global_ctrl(&self) -> u32 {
        match self.kind {
            HostKind::Intel => IA32_PERF_GLOBAL_CTRL,
            _ => AMD_PERF_CNTR_GLOBAL_CTL,
        }
    }

    fn global_status(&self) -> u32 {
        match self.kind {
            HostKind::Intel => IA32_PERF_GLOBAL_STATUS,
            _ => AMD_PERF_CNTR_GLOBAL_STATUS,
        }
    }

    fn status_clear(&self) -> u32 {
        match self.kind {
            HostKind::Intel => IA32_PERF_GLOBAL_STATUS_RESET,
            _ => AMD_PERF_CNTR_GLOBAL_STATUS_CLR,
        }
    }

    fn status_set(&self) -> u32 {
        match self.kind {
            HostKind::Intel => IA32_PERF_GLOBAL_STATUS_SET,
            _ => AMD_PERF_CNTR_GLOBAL_STATUS_SET,
        }
    }
}

/// Event select INT (bit 20): not programmed (see the module docs).
const EVTSEL_INT: u64 = 1 << 20;
/// Intel event select AnyThread (bit 21): not programmed.
const EVTSEL_ANYTHREAD: u64 = 1 << 21;
/// AMD PerfEvtSel GuestOnly (bit 40) and HostOnly (bit 41), APM vol. 2 §13.2.1.
const AMD_GUEST_ONLY: u64 = 1 << 40;
const AMD_HOST_ONLY: u64 = 1 << 41;
/// Of each 4-bit IA32_FIXED_CTR_CTRL field, the two enable bits (OS, USR).
const FIXED_CTRL_EN_BITS: u64 = 0x3333_3333_3333_3333;

const fn low_bits(n: u8) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// A guest state whose model is not the one the [`Hardware`] choice was made for: the state was
/// rebuilt by a reset since. Nothing was programmed (load) or stored (save); choose again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StaleModel;

/// The hardware can carry the counters of a guest with this model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hardware {
    host: Layout,
    model: Model,
}

/// What the host had in the PMU registers `load` changed, kept until `save` puts it back.
/// Holds no guest state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "save() restores the host's PMU state"]
pub struct Loaded {
    hw: Hardware,
    selects: [u64; MAX_GP],
    counters: [u64; MAX_GP],
    fixed: [u64; MAX_FIXED],
    fixed_ctrl: u64,
    global_ctrl: u64,
    /// The host's overflow bits for the guest's counters, cleared by `load`.
    status: u64,
    /// The enables `load` wrote to the global control register.
    guest_global_ctrl: u64,
}

impl Hardware {
    /// The model this choice was made for.
    pub fn model(&self) -> Model {
        self.model
    }

    /// Every counter's bit in the global-register layout that the guest has (GP at 0..,
    /// Intel fixed at 32..).
    fn guest_bits(&self) -> u64 {
        self.model.counter_bits()
    }

    /// The value for the host's event select n from the guest's.
    fn hw_select(&self, guest: u64) -> u64 {
        match self.host.kind {
            HostKind::Intel => guest & !(EVTSEL_INT | EVTSEL_ANYTHREAD),
            _ => (guest & !(EVTSEL_INT | AMD_HOST_ONLY)) | AMD_GUEST_ONLY,
        }
    }

    /// A guest count extended to `host_width` so that the hardware overflows when the guest's
    /// counter would (see the module docs).
    fn extend(&self, guest: u64, host_width: u8) -> u64 {
        let guest_mask = self.model.counter_mask();
        (guest & guest_mask) | (low_bits(host_width) & !guest_mask)
    }

    /// Program the host PMU with the guest's counters before guest entry; returns what the host
    /// had, for [`Loaded::save`]. `Err(StaleModel)` (nothing touched) when `state` was not built
    /// with the model this choice was made for.
    pub fn load<H: HostPmu>(&self, state: &VpmuState, host: &mut H) -> Result<Loaded, StaleModel> {
        if state.model() != self.model {
            return Err(StaleModel);
        }
        let l = &self.host;
        let m = &self.model;
        let gp = usize::from(m.gp_counters());
        let fixed = usize::from(m.fixed_counters());
        let regs = state.registers();
        let mut saved = Loaded {
            hw: *self,
            selects: [0; MAX_GP],
            counters: [0; MAX_GP],
            fixed: [0; MAX_FIXED],
            fixed_ctrl: 0,
            global_ctrl: 0,
            status: 0,
            guest_global_ctrl: 0,
        };
        // Stop the host's counting first, so what is saved is what is restored.
        if l.global {
            saved.global_ctrl = host.read(l.global_ctrl());
            host.write(l.global_ctrl(), 0);
        }
        for n in 0..gp {
            saved.selects[n] = host.read(l.select(n));
            if !l.global {
                host.write(l.select(n), 0);
            }
            saved.counters[n] = host.read(l.counter(n));
        }
        if fixed > 0 {
            saved.fixed_ctrl = host.read(IA32_FIXED_CTR_CTRL);
            for n in 0..fixed {
                saved.fixed[n] = host.read(IA32_FIXED_CTR0 + n as u32);
            }
        }
        if l.global {
            saved.status = host.read(l.global_status()) & self.guest_bits();
            if saved.status != 0 {
                host.write(l.status_clear(), saved.status);
            }
        }
        // The guest's registers; counters before their selects (a host without global control
        // starts counting at the select's EN).
        for n in 0..gp {
            host.write(
                l.counter_write(n),
                self.extend(regs.counters[n], l.gp_width),
            );
            host.write(l.select(n), self.hw_select(regs.event_selects[n]));
        }
        if fixed > 0 {
            for n in 0..fixed {
                host.write(
                    IA32_FIXED_CTR0 + n as u32,
                    self.extend(regs.fixed[n], l.fixed_width),
                );
            }
            host.write(IA32_FIXED_CTR_CTRL, regs.fixed_ctrl & FIXED_CTRL_EN_BITS);
        }
        if l.global {
            // A guest PMU without global control (Intel v1, AMD legacy / core extension) has
            // every counter enabled as far as global control goes.
            saved.guest_global_ctrl = if m.has_global_regs() {
                regs.global_ctrl & self.guest_bits()
            } else {
                self.guest_bits()
            };
            host.write(l.global_ctrl(), saved.guest_global_ctrl);
        }
        Ok(saved)
    }
}

impl Loaded {
    /// The enables `load` wrote to the host's global control register (0 when the host has
    /// none): the value for the VMCS guest IA32_PERF_GLOBAL_CTRL field, were the VM-entry and
    /// VM-exit "load IA32_PERF_GLOBAL_CTRL" controls used (see the module docs).
    pub fn guest_global_ctrl(&self) -> u64 {
        self.guest_global_ctrl
    }

    /// After the guest exits: read the guest's counts and overflow back into `state` and put
    /// the host's PMU state back exactly as `load` found it (see the module docs for the one
    /// exception). The host is restored even when `state` is stale (`Err(StaleModel)`: a reset
    /// between load and save); the counts are then dropped, not stored into the new state.
    pub fn save<H: HostPmu>(self, state: &mut VpmuState, host: &mut H) -> Result<(), StaleModel> {
        let hw = &self.hw;
        let l = &hw.host;
        let m = &hw.model;
        let gp = usize::from(m.gp_counters());
        let fixed = usize::from(m.fixed_counters());
        // Stop the guest's counting.
        if l.global {
            host.write(l.global_ctrl(), 0);
        } else {
            for n in 0..gp {
                host.write(l.select(n), 0);
            }
        }
        let mut counters = [0u64; MAX_GP];
        let mut fixed_counts = [0u64; MAX_FIXED];
        for (n, c) in counters.iter_mut().enumerate().take(gp) {
            *c = host.read(l.counter(n));
        }
        for (n, c) in fixed_counts.iter_mut().enumerate().take(fixed) {
            *c = host.read(IA32_FIXED_CTR0 + n as u32);
        }
        let mut overflow = 0;
        if l.global {
            overflow = host.read(l.global_status()) & hw.guest_bits();
            if overflow != 0 {
                host.write(l.status_clear(), overflow);
            }
            if self.status != 0 && l.status_set {
                host.write(l.status_set(), self.status);
            }
        }
        // The host's registers, global control last.
        for n in 0..gp {
            host.write(l.counter_write(n), self.counters[n]);
            host.write(l.select(n), self.selects[n]);
        }
        if fixed > 0 {
            for n in 0..fixed {
                host.write(IA32_FIXED_CTR0 + n as u32, self.fixed[n]);
            }
            host.write(IA32_FIXED_CTR_CTRL, self.fixed_ctrl);
        }
        if l.global {
            host.write(l.global_ctrl(), self.global_ctrl);
        }
        if state.model() != hw.model {
            return Err(StaleModel);
        }
        state.store_counts(&counters[..gp], &fixed_counts[..fixed], overflow);
        Ok(())
    }
}
