//! The model: one `Copy` value, derived from (configuration, guest vendor) and nothing else, that
//! decides everything the guest sees of its PMU — CPUID bits and leaves, which MSRs exist, their
//! write masks and widths, the reset value of the global control register, and how RDPMC's ECX
//! is decoded.

use super::config::{AmdKind, ConfigError, PmuConfig};
use super::msr::*;
use super::state::Gp;
use crate::features::Vendor;

/// The validated PMU the model describes. Private so that a `Model` can only come from
/// [`Model::derive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pmu {
    Off,
    Intel {
        version: u8,
        gp: u8,
        fixed: u8,
        width: u8,
        full_width: bool,
    },
    Amd {
        kind: AmdKind,
        gp: u8,
    },
}

/// Why the model is not the configuration that was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelNote {
    /// The configuration describes another vendor's PMU than the guest's CPU: the guest gets no
    /// PMU at all (an Intel PMU on an AMD guest, or the reverse, would enumerate MSRs the guest's
    /// CPU cannot have — the QEMU reboot crash).
    VendorMismatch { configured: Vendor, guest: Vendor },
    /// The configuration did not validate. The API refuses these before they get here; the model
    /// is total all the same and gives the guest no PMU.
    Invalid(ConfigError),
}

/// Which counter an RDPMC index selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RdpmcTarget {
    /// General-purpose counter n.
    Counter(u8),
    /// Intel fixed-function counter n.
    Fixed(u8),
}

/// A decoded RDPMC index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rdpmc {
    pub target: RdpmcTarget,
    /// Intel "fast" read (ECX\[31\], versions 1-4): only bits 31:0 are returned.
    pub low32: bool,
}

/// Everything the guest sees of its PMU, decided from (configuration, guest vendor).
///
/// There is no way to change a `Model`: a different configuration is a different model, built by
/// [`Model::derive`]. No field survives from one derivation to the next because there is nothing
/// to survive in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Model {
    pmu: Pmu,
    note: Option<ModelNote>,
}

/// CPUID.01H:ECX\[15\] PDCM: IA32_PERF_CAPABILITIES exists.
pub const CPUID_1_ECX_PDCM: u32 = 1 << 15;
/// CPUID Fn8000_0001 ECX\[23\] PerfCtrExtCore.
pub const CPUID_8000_0001_ECX_PERFCTR_EXT_CORE: u32 = 1 << 23;
/// CPUID Fn8000_0022 EAX\[0\] PerfMonV2.
pub const CPUID_8000_0022_EAX_PERFMON_V2: u32 = 1 << 0;
/// CPUID.0AH:EDX\[15\] AnyThread deprecation (version 5).
pub const CPUID_0A_EDX_ANYTHREAD_DEPRECATED: u32 = 1 << 15;
/// IA32_PERF_CAPABILITIES\[13\] FW_WRITE: full-width writes through IA32_A_PMCx.
pub const PERF_CAPABILITIES_FW_WRITE: u64 = 1 << 13;
/// Length of the CPUID.0AH:EBX architectural-event vector the model reports: the seven events of
/// SDM vol. 3B §20.2.1.2 (core cycles ... branch mispredicts retired), all available.
pub const ARCH_EVENTS: u32 = 7;

/// The PMU-related CPUID leaves [`Model::cpuid`] rewrites.
pub const PMU_CPUID_LEAVES: [u32; 4] = [0x1, 0xA, 0x8000_0001, 0x8000_0022];

/// AMD counters are 48 bits wide (APM vol. 2 §13.2).
const AMD_WIDTH: u8 = 48;

const fn low_bits(n: u32) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// Bits `lo..=hi` set.
const fn bit_range(lo: u32, hi: u32) -> u64 {
    low_bits(hi + 1) & !low_bits(lo)
}

/// `msr` is within `count` consecutive indices from `base`; returns the offset.
fn offset_in(msr: u32, base: u32, count: u8) -> Option<u8> {
    msr.checked_sub(base)
        .filter(|&o| o < u32::from(count))
        .map(|o| o as u8)
}

impl Model {
    /// The model for `config` on a guest whose CPU vendor is `guest_vendor`. A configuration for
    /// another vendor, or an invalid one, gives the Off model with a [`ModelNote`] saying why.
    pub fn derive(config: &PmuConfig, guest_vendor: Vendor) -> Model {
        let off = |note| Model {
            pmu: Pmu::Off,
            note: Some(note),
        };
        let config = match config.validate() {
            Ok(c) => c,
            Err(e) => return off(ModelNote::Invalid(e)),
        };
        if let Some(configured) = config.vendor() {
            if configured != guest_vendor {
                return off(ModelNote::VendorMismatch {
                    configured,
                    guest: guest_vendor,
                });
            }
        }
        let pmu = match config {
            PmuConfig::Off => Pmu::Off,
            PmuConfig::Intel {
                version,
                gp_counters,
                fixed_counters,
                width,
                full_width_writes,
            } => Pmu::Intel {
                version,
                gp: gp_counters,
                fixed: fixed_counters,
                width,
                full_width: full_width_writes,
            },
            PmuConfig::Amd { kind, gp_counters } => Pmu::Amd {
                kind,
                gp: gp_counters,
            },
        };
        Model { pmu, note: None }
    }

    /// The configuration the guest actually gets: the one asked for, or `Off` when the model
    /// noted a vendor mismatch or an invalid configuration.
    pub fn effective_config(&self) -> PmuConfig {
        match self.pmu {
            Pmu::Off => PmuConfig::Off,
            Pmu::Intel {
                version,
                gp,
                fixed,
                width,
                full_width,
            } => PmuConfig::Intel {
                version,
                gp_counters: gp,
                fixed_counters: fixed,
                width,
                full_width_writes: full_width,
            },
            Pmu::Amd { kind, gp } => PmuConfig::Amd {
                kind,
                gp_counters: gp,
            },
        }
    }

    /// Why the guest does not get the configuration that was asked for, if it does not.
    pub fn note(&self) -> Option<ModelNote> {
        self.note
    }

    /// The guest has no PMU.
    pub fn is_off(&self) -> bool {
        self.pmu == Pmu::Off
    }

    /// Intel architectural PMU version (CPUID.0AH:EAX\[7:0\]); 0 when the model is not Intel.
    pub fn intel_version(&self) -> u8 {
        match self.pmu {
            Pmu::Intel { version, .. } => version,
            _ => 0,
        }
    }

    /// Number of general-purpose counters.
    pub fn gp_counters(&self) -> u8 {
        match self.pmu {
            Pmu::Off => 0,
            Pmu::Intel { gp, .. } | Pmu::Amd { gp, .. } => gp,
        }
    }

    /// Number of fixed-function counters (Intel only).
    pub fn fixed_counters(&self) -> u8 {
        match self.pmu {
            Pmu::Intel { fixed, .. } => fixed,
            _ => 0,
        }
    }

    /// Counter width in bits (0 when off).
    pub fn counter_width(&self) -> u8 {
        match self.pmu {
            Pmu::Off => 0,
            Pmu::Intel { width, .. } => width,
            Pmu::Amd { .. } => AMD_WIDTH,
        }
    }

    /// The model has global control/status registers (Intel version 2+, AMD PerfMonV2).
    pub fn has_global_regs(&self) -> bool {
        match self.pmu {
            Pmu::Off => false,
            Pmu::Intel { version, .. } => version >= 2,
            Pmu::Amd { kind, .. } => kind == AmdKind::PerfMonV2,
        }
    }

    /// The vendor of the PMU the guest sees.
    pub fn vendor(&self) -> Option<Vendor> {
        match self.pmu {
            Pmu::Off => None,
            Pmu::Intel { .. } => Some(Vendor::Intel),
            Pmu::Amd { .. } => Some(Vendor::Amd),
        }
    }

    /// IA32_PERF_CAPABILITIES as the guest reads it, `None` when the MSR does not exist. The model
    /// advertises only FW_WRITE (bit 13); no LBR format, PEBS or PERF_METRICS.
    pub fn perf_capabilities(&self) -> Option<u64> {
        match self.pmu {
            Pmu::Intel { full_width, .. } => Some(if full_width {
                PERF_CAPABILITIES_FW_WRITE
            } else {
                0
            }),
            _ => None,
        }
    }

    /// Adjust the CPUID values `host` (what the guest would see otherwise: host values filtered by
    /// the rest of the CPUID policy) for the PMU. Leaves outside [`PMU_CPUID_LEAVES`] come back
    /// unchanged; PMU bits and leaves are set from the model alone and cleared when it has none of
    /// them, so nothing of the host's PMU shows through.
    ///
    /// - 01H ECX\[15\] PDCM is set iff IA32_PERF_CAPABILITIES exists (Intel PMU on);
    /// - 0AH is the architectural PMU leaf (SDM vol. 2A CPUID, vol. 3B §20.2), zero unless Intel;
    /// - 8000_0001H ECX\[23\] PerfCtrExtCore is set for core-extension and PerfMonV2 PMUs;
    /// - 8000_0022H is the AMD PerfMonV2 leaf, zero unless PerfMonV2.
    ///
    /// The maximum basic and extended leaves (0H, 8000_0000H EAX) are the CPUID view's business
    /// and are not touched: any CPU with these PMUs reports leaves that high. The shape matches
    /// `crate::cpuid::PmuCpuid`, so `|l, s, r| model.cpuid(l, s, r)` can serve as that hook.
    pub fn cpuid(&self, leaf: u32, _subleaf: u32, host: [u32; 4]) -> [u32; 4] {
        let [mut eax, mut ebx, mut ecx, mut edx] = host;
        match leaf {
            0x1 => {
                ecx &= !CPUID_1_ECX_PDCM;
                if self.perf_capabilities().is_some() {
                    ecx |= CPUID_1_ECX_PDCM;
                }
            }
            0xA => return self.leaf_0a(),
            0x8000_0001 => {
                ecx &= !CPUID_8000_0001_ECX_PERFCTR_EXT_CORE;
                if matches!(self.pmu, Pmu::Amd { kind, .. } if kind != AmdKind::Legacy) {
                    ecx |= CPUID_8000_0001_ECX_PERFCTR_EXT_CORE;
                }
            }
            0x8000_0022 => {
                (eax, ebx, ecx, edx) = (0, 0, 0, 0);
                if let Pmu::Amd {
                    kind: AmdKind::PerfMonV2,
                    gp,
                } = self.pmu
                {
                    // EAX[0] PerfMonV2; no LBR stack (EAX[1]) nor freeze (EAX[2]).
                    // EBX[3:0] NumPerfCtrCore; no LBR stack size, no northbridge counters.
                    eax = CPUID_8000_0022_EAX_PERFMON_V2;
                    ebx = u32::from(gp);
                }
            }
            _ => {}
        }
        [eax, ebx, ecx, edx]
    }

    /// The highest (basic, extended) CPUID leaves the guest must see for this PMU to be
    /// enumerable: leaf 0AH for an Intel PMU, 8000_0022H for AMD PerfMonV2 (8000_0001H holds
    /// PerfCtrExtCore and is always there).
    pub fn min_leaves(&self) -> (u32, u32) {
        match self.pmu {
            Pmu::Intel { .. } => (0xA, 0x8000_0000),
            Pmu::Amd {
                kind: AmdKind::PerfMonV2,
                ..
            } => (0, 0x8000_0022),
            Pmu::Amd { .. } => (0, 0x8000_0001),
            Pmu::Off => (0, 0x8000_0000),
        }
    }

    /// CPUID.0AH (SDM vol. 2A table 3-8 "Architectural Performance Monitoring Leaf").
    fn leaf_0a(&self) -> [u32; 4] {
        let Pmu::Intel {
            version,
            gp,
            fixed,
            width,
            ..
        } = self.pmu
        else {
            return [0; 4];
        };
        let eax =
            u32::from(version) | u32::from(gp) << 8 | u32::from(width) << 16 | ARCH_EVENTS << 24;
        // EBX: bit i set = architectural event i unavailable; all seven are available.
        let ebx = 0;
        // ECX (version 5): bitmap of supported fixed counters; ours are contiguous from 0, and
        // EDX[4:0] says the same, as the SDM allows (counter i exists if ECX[i] || EDX[4:0] > i).
        let ecx = if version >= 5 {
            low_bits(u32::from(fixed)) as u32
        } else {
            0
        };
        let mut edx = 0;
        if version >= 2 && fixed > 0 {
            edx = u32::from(fixed) | u32::from(width) << 5;
        }
        if version >= 5 {
            edx |= CPUID_0A_EDX_ANYTHREAD_DEPRECATED;
        }
        [eax, ebx, ecx, edx]
    }

    /// What the MSR `msr` is in this model, `None` when it does not exist (the guest gets #GP).
    pub fn msr(&self, msr: u32) -> Option<PmuMsr> {
        match self.pmu {
            Pmu::Off => None,
            Pmu::Intel {
                version,
                gp,
                fixed,
                full_width,
                ..
            } => {
                if let Some(n) = offset_in(msr, IA32_PMC0, gp) {
                    return Some(PmuMsr::Counter(n));
                }
                if let Some(n) = offset_in(msr, IA32_A_PMC0, gp).filter(|_| full_width) {
                    return Some(PmuMsr::CounterFullWidth(n));
                }
                if let Some(n) = offset_in(msr, IA32_PERFEVTSEL0, gp) {
                    return Some(PmuMsr::EventSelect(n));
                }
                if let Some(n) = offset_in(msr, IA32_FIXED_CTR0, fixed) {
                    return Some(PmuMsr::Fixed(n));
                }
                let v2 = version >= 2;
                let v4 = version >= 4;
                match msr {
                    IA32_PERF_CAPABILITIES => Some(PmuMsr::Capabilities),
                    IA32_FIXED_CTR_CTRL if v2 => Some(PmuMsr::FixedCtrl),
                    IA32_PERF_GLOBAL_STATUS if v2 => Some(PmuMsr::GlobalStatus),
                    IA32_PERF_GLOBAL_CTRL if v2 => Some(PmuMsr::GlobalCtrl),
                    IA32_PERF_GLOBAL_OVF_CTRL if v2 => Some(PmuMsr::GlobalStatusClear),
                    IA32_PERF_GLOBAL_STATUS_SET if v4 => Some(PmuMsr::GlobalStatusSet),
                    IA32_PERF_GLOBAL_INUSE if v4 => Some(PmuMsr::GlobalInUse),
                    _ => None,
                }
            }
            Pmu::Amd { kind, gp } => {
                let legacy = gp.min(4);
                if let Some(n) = offset_in(msr, AMD_PERF_CTL0, legacy) {
                    return Some(PmuMsr::EventSelect(n));
                }
                if let Some(n) = offset_in(msr, AMD_PERF_CTR0, legacy) {
                    return Some(PmuMsr::Counter(n));
                }
                if kind != AmdKind::Legacy {
                    if let Some(o) = msr
                        .checked_sub(AMD_PERF_CTL_EXT0)
                        .filter(|&o| o < 2 * u32::from(gp))
                    {
                        let n = (o / 2) as u8;
                        return Some(if o % 2 == 0 {
                            PmuMsr::EventSelect(n)
                        } else {
                            PmuMsr::Counter(n)
                        });
                    }
                }
                if kind != AmdKind::PerfMonV2 {
                    return None;
                }
                match msr {
                    AMD_PERF_CNTR_GLOBAL_STATUS => Some(PmuMsr::GlobalStatus),
                    AMD_PERF_CNTR_GLOBAL_CTL => Some(PmuMsr::GlobalCtrl),
                    AMD_PERF_CNTR_GLOBAL_STATUS_CLR => Some(PmuMsr::GlobalStatusClear),
                    AMD_PERF_CNTR_GLOBAL_STATUS_SET => Some(PmuMsr::GlobalStatusSet),
                    _ => None,
                }
            }
        }
    }

    /// The indices of every MSR this model has, in increasing order (for intercept bitmaps and
    /// save/restore lists).
    pub fn msrs(&self) -> impl Iterator<Item = u32> + '_ {
        all_pmu_msrs().filter(move |&m| self.msr(m).is_some())
    }

    /// Mask of the implemented counter bits (general-purpose and fixed share the width).
    pub fn counter_mask(&self) -> u64 {
        low_bits(u32::from(self.counter_width()))
    }

    /// One bit per counter the guest has, in the global registers' layout (general purpose at
    /// 0.., Intel fixed at 32..), whether or not the model has global registers: which hardware
    /// counters a backing may use and which overflow bits it may reflect.
    pub fn counter_bits(&self) -> u64 {
        self.gp_bits() | self.fixed_bits()
    }

    /// One bit per general-purpose counter, bits 0..n.
    fn gp_bits(&self) -> u64 {
        low_bits(u32::from(self.gp_counters()))
    }

    /// One bit per fixed counter at bits 32.. (Intel's GLOBAL_* layout).
    fn fixed_bits(&self) -> u64 {
        low_bits(u32::from(self.fixed_counters())) << 32
    }

    /// Reserved bits of an event select: writing any of them raises #GP.
    ///
    /// Intel (SDM vol. 3B §20.2.1.1, §20.2.3): bits 63:32 reserved; bit 21 (AnyThread) exists in
    /// versions 3 and 4 only — version 5 enumerates its deprecation (CPUID.0AH:EDX\[15\]) and the
    /// model, whose vCPUs have no SMT sibling to count for, treats it as reserved there.
    /// AMD (APM vol. 2 §13.2, PerfEvtSel layout): bits 19, 21, 39:36 and 63:42 reserved;
    /// EventSelect\[11:8\] (35:32) and Host/Guest-only (41:40) are accepted.
    pub fn event_select_reserved(&self) -> u64 {
        match self.pmu {
            Pmu::Off => u64::MAX,
            Pmu::Intel { version, .. } => {
                let mut r = bit_range(32, 63);
                if !(3..=4).contains(&version) {
                    r |= 1 << 21;
                }
                r
            }
            Pmu::Amd { .. } => (1 << 19) | (1 << 21) | bit_range(36, 39) | bit_range(42, 63),
        }
    }

    /// Reserved bits of IA32_FIXED_CTR_CTRL: each fixed counter n owns bits 4n+3:4n — EN (OS,
    /// USR), AnyThread (versions 3-4 only, as for event selects) and PMI (SDM vol. 3B §20.2.2,
    /// §20.2.3); everything else is reserved.
    pub fn fixed_ctrl_reserved(&self) -> u64 {
        let Pmu::Intel { version, fixed, .. } = self.pmu else {
            return u64::MAX;
        };
        let per_counter: u64 = if (3..=4).contains(&version) {
            0b1111
        } else {
            0b1011
        };
        let mut ok = 0;
        for n in 0..u32::from(fixed) {
            ok |= per_counter << (4 * n);
        }
        !ok
    }

    /// Writable bits of the global control register: one enable per counter (Intel: general
    /// purpose at 0.., fixed at 32..; AMD PerfMonV2: core counters at 0..).
    pub fn global_ctrl_mask(&self) -> u64 {
        if self.has_global_regs() {
            self.gp_bits() | self.fixed_bits()
        } else {
            0
        }
    }

    /// Bits that can be set in the global status register: the counter overflow bits. The model
    /// emulates no other overflow source (DS buffer, uncore, LBR/counter freeze, ToPA).
    pub fn global_status_mask(&self) -> u64 {
        self.global_ctrl_mask()
    }

    /// Bits a write to the status-clear register may have set without #GP. Intel
    /// (GLOBAL_OVF_CTRL / STATUS_RESET, SDM vol. 4 table 2-2 at 390H): the counter bits,
    /// ClrOvfBuf (62) and ClrCondChgd (63) from version 2, and from version 4 LBR_Frz (58),
    /// CTR_Frz (59) and Ovf_Uncore (61) — clearing status the model never sets is harmless, and
    /// a guest acknowledges what it believes may be there. AMD PerfCntrGlobalStatusClr: hardware
    /// ignores bits it does not implement rather than faulting, so every bit is accepted.
    pub fn global_status_clear_allowed(&self) -> u64 {
        match self.pmu {
            Pmu::Off => 0,
            Pmu::Intel { version, .. } => {
                let mut ok = self.global_status_mask() | (1 << 62) | (1 << 63);
                if version >= 4 {
                    ok |= (1 << 58) | (1 << 59) | (1 << 61);
                }
                ok
            }
            Pmu::Amd { .. } => u64::MAX,
        }
    }

    /// Bits a write to the status-set register may have set without #GP. Intel
    /// IA32_PERF_GLOBAL_STATUS_SET (version 4): the counter overflow bits only — the model does
    /// not let a guest fake status it does not emulate. AMD PerfCntrGlobalStatusSet: every bit is
    /// accepted and the unimplemented ones are ignored, as on hardware.
    pub fn global_status_set_allowed(&self) -> u64 {
        match self.pmu {
            Pmu::Off => 0,
            Pmu::Intel { .. } => self.global_status_mask(),
            Pmu::Amd { .. } => u64::MAX,
        }
    }

    /// The architectural post-RESET value of the global control register: the enable bit of
    /// every general-purpose counter set, everything else clear. Intel: "IA32_PERF_GLOBAL_CTRL:
    /// sets bits n-1:0 and clears the upper bits" (SDM vol. 3B §20.2.2 / reset-value table),
    /// so fixed counters start disabled; AMD documents the same for PerfCntrGlobalCtl on
    /// PerfMonV2 parts, so that v1-only software finds its counters enabled. Zero when the
    /// register does not exist. (Linux KVM once left this 0: guests that predate global control
    /// then never counted.)
    pub fn global_ctrl_reset(&self) -> u64 {
        if self.has_global_regs() {
            self.gp_bits()
        } else {
            0
        }
    }

    /// Decode RDPMC's ECX, or #GP for an index the guest's PMU does not have.
    ///
    /// Intel versions 1-4 (the SDM's RDPMC text before the type field): ECX\[30\] selects the
    /// fixed counters, ECX\[31\] a "fast" read of bits 31:0, ECX\[29:0\] the index. Version 5 (the
    /// current RDPMC text): ECX\[31:16\] is the type — 0 general purpose, 4000H fixed (2000H,
    /// PERF_METRICS, is not advertised) — and ECX\[15:0\] the index; any other type faults.
    /// AMD (APM vol. 3 RDPMC): ECX is the counter number, below the core-counter count (no
    /// northbridge or L2 counters are modelled).
    ///
    /// Whether RDPMC is allowed at all at the guest's CPL (CR4.PCE) is the caller's check.
    pub fn rdpmc(&self, ecx: u32) -> Result<Rdpmc, Gp> {
        match self.pmu {
            Pmu::Off => Err(Gp),
            Pmu::Intel {
                version, gp, fixed, ..
            } => {
                let (is_fixed, low32, index) = if version >= 5 {
                    match ecx >> 16 {
                        0 => (false, false, ecx & 0xFFFF),
                        0x4000 => (true, false, ecx & 0xFFFF),
                        _ => return Err(Gp),
                    }
                } else {
                    (
                        ecx & (1 << 30) != 0,
                        ecx & (1 << 31) != 0,
                        ecx & 0x3FFF_FFFF,
                    )
                };
                let (count, target): (u8, fn(u8) -> RdpmcTarget) = if is_fixed {
                    (fixed, RdpmcTarget::Fixed)
                } else {
                    (gp, RdpmcTarget::Counter)
                };
                if index >= u32::from(count) {
                    return Err(Gp);
                }
                Ok(Rdpmc {
                    target: target(index as u8),
                    low32,
                })
            }
            Pmu::Amd { gp, .. } => {
                if ecx >= u32::from(gp) {
                    return Err(Gp);
                }
                Ok(Rdpmc {
                    target: RdpmcTarget::Counter(ecx as u8),
                    low32: false,
                })
            }
        }
    }
}
