//! Guest MSR policy: the small set of MSRs a guest may touch through an intercept, and what it
//! finds there.
//!
//! Why an allow-list: every MSR the backend intercepts and we do not model would otherwise
//! either leak the host's value or let the guest change host state. Anything not listed here
//! raises #GP(0), which is what a CPU does for an MSR it does not implement (SDM Vol. 4 ch. 2;
//! APM Vol. 2 §A). Features whose MSRs are absent here are hidden from the guest's CPUID view
//! ([`crate::cpuid`]) so that well-behaved guests never try them.
//!
//! | MSR                    | index        | read                              | write                         |
//! |------------------------|--------------|-----------------------------------|-------------------------------|
//! | IA32_FEATURE_CONTROL   | 0x3A         | Intel: locked, VMX off (0x1)      | #GP (locked)                  |
//! | IA32_BIOS_SIGN_ID      | 0x8B         | 0 (no microcode revision)         | ignored (update trigger)      |
//! | IA32_MTRRCAP           | 0xFE         | 0: no ranges, no fixed, no WC     | #GP (read-only)               |
//! | IA32_MISC_ENABLE       | 0x1A0        | Intel: fast strings, no BTS/PEBS  | bit 0 kept, others ignored    |
//! | IA32_PAT               | 0x277        | stored                            | validated, backend loads it   |
//! | IA32_MTRR_DEF_TYPE     | 0x2FF        | stored                            | validated (type, FE=0, E)     |
//! | IA32_EFER              | 0xC000_0080  | the guest's current EFER          | validated, backend loads it   |
//!
//! EFER and PAT have a home in the backend's guest state (VMCB save area EFER and G_PAT, APM
//! Vol. 2 §15.25.8; VMCS guest IA32_EFER and IA32_PAT, SDM Vol. 3C §25.4.2), so a write to them
//! returns [`MsrEffect::Load`] for the backend to apply. EFER is read from the guest state
//! because the CPU changes it by itself (EFER.LMA, SDM Vol. 3A §10.8.5).
//!
//! MSRs that the world switch saves and restores on its own (FS/GS base, KERNEL_GS_BASE, STAR,
//! LSTAR, CSTAR, SFMASK, SYSENTER_*) are expected to be passed through by the backend's MSR
//! permission map rather than intercepted; if intercepted they fault like any unlisted MSR.

use crate::features::Vendor;

/// The MSRs the policy knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Msr {
    /// IA32_FEATURE_CONTROL (0x3A), Intel.
    FeatureControl,
    /// IA32_BIOS_SIGN_ID / AMD patch level (0x8B).
    BiosSignId,
    /// IA32_MTRRCAP (0xFE).
    MtrrCap,
    /// IA32_MISC_ENABLE (0x1A0), Intel.
    MiscEnable,
    /// IA32_PAT (0x277).
    Pat,
    /// IA32_MTRR_DEF_TYPE (0x2FF).
    MtrrDefType,
    /// IA32_EFER (0xC000_0080).
    Efer,
}

impl Msr {
    /// Every known MSR.
    pub const ALL: [Msr; 7] = [
        Msr::FeatureControl,
        Msr::BiosSignId,
        Msr::MtrrCap,
        Msr::MiscEnable,
        Msr::Pat,
        Msr::MtrrDefType,
        Msr::Efer,
    ];

    /// The architectural index (ECX).
    pub const fn index(self) -> u32 {
        match self {
            Msr::FeatureControl => 0x3A,
            Msr::BiosSignId => 0x8B,
            Msr::MtrrCap => 0xFE,
            Msr::MiscEnable => 0x1A0,
            Msr::Pat => 0x277,
            Msr::MtrrDefType => 0x2FF,
            Msr::Efer => 0xC000_0080,
        }
    }

    /// The MSR at `index`, if known.
    pub fn from_index(index: u32) -> Option<Msr> {
        Msr::ALL.into_iter().find(|m| m.index() == index)
    }

    /// The SDM name.
    pub const fn name(self) -> &'static str {
        match self {
            Msr::FeatureControl => "IA32_FEATURE_CONTROL",
            Msr::BiosSignId => "IA32_BIOS_SIGN_ID",
            Msr::MtrrCap => "IA32_MTRRCAP",
            Msr::MiscEnable => "IA32_MISC_ENABLE",
            Msr::Pat => "IA32_PAT",
            Msr::MtrrDefType => "IA32_MTRR_DEF_TYPE",
            Msr::Efer => "IA32_EFER",
        }
    }

    /// Whether a CPU of `vendor` implements it (Intel-only MSRs fault on AMD).
    pub const fn exists_on(self, vendor: Vendor) -> bool {
        match self {
            Msr::FeatureControl | Msr::MiscEnable => matches!(vendor, Vendor::Intel),
            _ => true,
        }
    }
}

/// IA32_FEATURE_CONTROL as the guest reads it: lock bit set, VMX disabled inside and outside
/// SMX (SDM Vol. 3C §24.7). VMX is not offered to guests.
pub const FEATURE_CONTROL_LOCKED: u64 = 1;

/// IA32_MISC_ENABLE bit 0: fast-string operations enabled.
pub const MISC_ENABLE_FAST_STRINGS: u64 = 1 << 0;
/// IA32_MISC_ENABLE bit 11: branch trace storage unavailable.
pub const MISC_ENABLE_BTS_UNAVAILABLE: u64 = 1 << 11;
/// IA32_MISC_ENABLE bit 12: processor event-based sampling unavailable.
pub const MISC_ENABLE_PEBS_UNAVAILABLE: u64 = 1 << 12;
/// IA32_MISC_ENABLE at reset.
pub const MISC_ENABLE_RESET: u64 =
    MISC_ENABLE_FAST_STRINGS | MISC_ENABLE_BTS_UNAVAILABLE | MISC_ENABLE_PEBS_UNAVAILABLE;

/// IA32_PAT at reset: WB, WT, UC-, UC, repeated (SDM Vol. 3A §13.12.4). The backend's initial
/// guest PAT must equal this.
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;

/// IA32_MTRR_DEF_TYPE bit 10: fixed-range MTRRs enabled (must stay 0: MTRRCAP.FIX is 0).
pub const MTRR_DEF_TYPE_FE: u64 = 1 << 10;
/// IA32_MTRR_DEF_TYPE bit 11: MTRRs enabled.
pub const MTRR_DEF_TYPE_E: u64 = 1 << 11;

/// EFER.SCE (bit 0): SYSCALL enable.
pub const EFER_SCE: u64 = 1 << 0;
/// EFER.LME (bit 8): long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA (bit 10): long mode active, maintained by the CPU.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE (bit 11): no-execute enable.
pub const EFER_NXE: u64 = 1 << 11;
/// EFER bits a guest may set: every other bit is reserved or belongs to a feature we hide
/// (SVME, LMSLE, FFXSR, TCE, AutoIBRS...), so setting it raises #GP.
pub const EFER_GUEST_BITS: u64 = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;

/// Guest state the backend holds and must load after an accepted write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestMsr {
    /// VMCB save.EFER / VMCS guest IA32_EFER (the backend adds what the hardware needs, such
    /// as EFER.SVME under SVM).
    Efer,
    /// VMCB G_PAT / VMCS guest IA32_PAT.
    Pat,
}

/// What an accepted WRMSR asks of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsrEffect {
    /// Nothing: the value is kept here, or ignored.
    None,
    /// Load `value` into the backend's guest state for `msr`.
    Load {
        /// Which.
        msr: GuestMsr,
        /// The new value.
        value: u64,
    },
}

/// Why an access faults. Every variant means #GP(0) to the guest; the detail is for logs and
/// tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsrFault {
    /// Not on the allow-list (or not on this vendor).
    NotAllowed {
        /// ECX.
        index: u32,
    },
    /// A write to a read-only or locked MSR.
    ReadOnly {
        /// Which.
        msr: Msr,
    },
    /// A write with reserved bits or an invalid field.
    InvalidValue {
        /// Which.
        msr: Msr,
    },
}

/// The stored per-vCPU MSR values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrState {
    vendor: Vendor,
    pat: u64,
    mtrr_def_type: u64,
    misc_enable: u64,
}

impl MsrState {
    /// Reset values for a guest that sees a CPU of `vendor`.
    pub const fn new(vendor: Vendor) -> Self {
        MsrState {
            vendor,
            pat: PAT_RESET,
            mtrr_def_type: 0,
            misc_enable: MISC_ENABLE_RESET,
        }
    }

    /// Back to reset values (guest reset: INIT/RESET state, SDM Vol. 3A §10.1.1 table 10-1).
    pub fn reset(&mut self) {
        *self = Self::new(self.vendor);
    }

    /// The guest's PAT as last accepted.
    pub const fn pat(&self) -> u64 {
        self.pat
    }

    fn known(&self, index: u32) -> Result<Msr, MsrFault> {
        Msr::from_index(index)
            .filter(|m| m.exists_on(self.vendor))
            .ok_or(MsrFault::NotAllowed { index })
    }

    /// RDMSR `index`. `guest_efer` is the guest's current EFER as it sees it (without bits the
    /// backend adds for the hardware).
    pub fn read(&self, index: u32, guest_efer: u64) -> Result<u64, MsrFault> {
        Ok(match self.known(index)? {
            Msr::FeatureControl => FEATURE_CONTROL_LOCKED,
            Msr::BiosSignId | Msr::MtrrCap => 0,
            Msr::MiscEnable => self.misc_enable,
            Msr::Pat => self.pat,
            Msr::MtrrDefType => self.mtrr_def_type,
            Msr::Efer => guest_efer,
        })
    }

    /// WRMSR `value` to `index`; `guest_efer` as for [`read`](Self::read). State changes only
    /// when the write is accepted.
    pub fn write(
        &mut self,
        index: u32,
        value: u64,
        guest_efer: u64,
    ) -> Result<MsrEffect, MsrFault> {
        let msr = self.known(index)?;
        let invalid = MsrFault::InvalidValue { msr };
        match msr {
            Msr::FeatureControl | Msr::MtrrCap => return Err(MsrFault::ReadOnly { msr }),
            // Writing the microcode-update trigger: there is no microcode to load.
            Msr::BiosSignId => {}
            Msr::MiscEnable => {
                self.misc_enable = (self.misc_enable & !MISC_ENABLE_FAST_STRINGS)
                    | (value & MISC_ENABLE_FAST_STRINGS);
            }
            Msr::Pat => {
                if !pat_valid(value) {
                    return Err(invalid);
                }
                self.pat = value;
                return Ok(MsrEffect::Load {
                    msr: GuestMsr::Pat,
                    value,
                });
            }
            Msr::MtrrDefType => {
                let ty = value & 0xFF;
                let reserved = !(0xFF | MTRR_DEF_TYPE_FE | MTRR_DEF_TYPE_E);
                if value & reserved != 0 || value & MTRR_DEF_TYPE_FE != 0 || !mtrr_type_valid(ty) {
                    return Err(invalid);
                }
                self.mtrr_def_type = value;
            }
            Msr::Efer => {
                if value & !EFER_GUEST_BITS != 0 {
                    return Err(invalid);
                }
                // LMA is the CPU's: a written LMA is ignored (as KVM and hardware do). With
                // long mode active, paging is on, and LME may not change (SDM Vol. 3A §10.8.5).
                let active = guest_efer & EFER_LMA;
                if active != 0 && value & EFER_LME == 0 {
                    return Err(invalid);
                }
                return Ok(MsrEffect::Load {
                    msr: GuestMsr::Efer,
                    value: (value & !EFER_LMA) | active,
                });
            }
        }
        Ok(MsrEffect::None)
    }
}

/// Whether a PAT value holds eight valid memory types: UC (0), WC (1), WT (4), WP (5), WB (6),
/// UC- (7); 2, 3 and bits 7:3 of each entry are reserved (SDM Vol. 3A §13.12.2).
pub fn pat_valid(pat: u64) -> bool {
    pat.to_le_bytes()
        .into_iter()
        .all(|t| matches!(t, 0 | 1 | 4..=7))
}

/// Whether `ty` is a valid MTRR memory type: UC, WC, WT, WP, WB (SDM Vol. 3A §13.11.2).
pub fn mtrr_type_valid(ty: u64) -> bool {
    matches!(ty, 0 | 1 | 4..=6)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: MsrState = MsrState::new(Vendor::Intel);
    const AMD: MsrState = MsrState::new(Vendor::Amd);
    const LONG_MODE: u64 = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;

    #[test]
    fn index_roundtrip() {
        for m in Msr::ALL {
            assert_eq!(Msr::from_index(m.index()), Some(m), "{}", m.name());
        }
        assert_eq!(Msr::from_index(0x10), None);
    }

    #[test]
    fn reads() {
        let table = [
            (0x3A, Ok(FEATURE_CONTROL_LOCKED)),
            (0x8B, Ok(0)),
            (0xFE, Ok(0)),
            (0x1A0, Ok(MISC_ENABLE_RESET)),
            (0x277, Ok(PAT_RESET)),
            (0x2FF, Ok(0)),
            (0xC000_0080, Ok(LONG_MODE)),
            // Not listed: TSC, APIC base, SPEC_CTRL, LSTAR, a PMU counter, SVM's VM_CR.
            (0x10, Err(MsrFault::NotAllowed { index: 0x10 })),
            (0x1B, Err(MsrFault::NotAllowed { index: 0x1B })),
            (0x48, Err(MsrFault::NotAllowed { index: 0x48 })),
            (
                0xC000_0082,
                Err(MsrFault::NotAllowed { index: 0xC000_0082 }),
            ),
            (0xC1, Err(MsrFault::NotAllowed { index: 0xC1 })),
            (
                0xC001_0114,
                Err(MsrFault::NotAllowed { index: 0xC001_0114 }),
            ),
        ];
        for (index, expected) in table {
            assert_eq!(INTEL.read(index, LONG_MODE), expected, "{index:#x}");
        }
    }

    #[test]
    fn intel_only_msrs_fault_on_amd() {
        assert_eq!(AMD.read(0x3A, 0), Err(MsrFault::NotAllowed { index: 0x3A }));
        assert_eq!(
            AMD.read(0x1A0, 0),
            Err(MsrFault::NotAllowed { index: 0x1A0 })
        );
        assert_eq!(AMD.read(0x277, 0), Ok(PAT_RESET));
    }

    #[test]
    fn pat_writes_are_validated() {
        let mut s = INTEL;
        // All WB; then Linux's PAT (WB, WC, UC-, UC, WB, WP, UC-, WT).
        for good in [0x0606_0606_0606_0606u64, 0x0407_0506_0007_0106] {
            assert_eq!(
                s.write(0x277, good, 0),
                Ok(MsrEffect::Load {
                    msr: GuestMsr::Pat,
                    value: good
                })
            );
            assert_eq!(s.read(0x277, 0), Ok(good));
        }
        let before = s;
        for bad in [0x02u64, 0x03 << 8, 0x08 << 56, 0x0000_0000_0000_1006] {
            assert_eq!(
                s.write(0x277, bad, 0),
                Err(MsrFault::InvalidValue { msr: Msr::Pat }),
                "{bad:#x}"
            );
        }
        assert_eq!(s, before, "a refused write changes nothing");
        assert!(pat_valid(PAT_RESET));
    }

    #[test]
    fn efer_writes() {
        let mut s = INTEL;
        let load = |value| {
            Ok(MsrEffect::Load {
                msr: GuestMsr::Efer,
                value,
            })
        };
        // Entering long mode: set LME (LMA follows later, from the CPU).
        assert_eq!(s.write(0xC000_0080, EFER_LME, 0), load(EFER_LME));
        // LMA as written is ignored; the current one is kept.
        assert_eq!(s.write(0xC000_0080, EFER_LMA | EFER_SCE, 0), load(EFER_SCE));
        assert_eq!(
            s.write(0xC000_0080, EFER_LME | EFER_SCE | EFER_NXE, LONG_MODE),
            load(LONG_MODE)
        );
        // SVME (12), FFXSR (14), a reserved bit: refused.
        for bad in [1 << 12, 1 << 14, 1 << 1, 1 << 63] {
            assert_eq!(
                s.write(0xC000_0080, EFER_LME | bad, 0),
                Err(MsrFault::InvalidValue { msr: Msr::Efer })
            );
        }
        // Clearing LME while long mode is active.
        assert_eq!(
            s.write(0xC000_0080, EFER_SCE, LONG_MODE),
            Err(MsrFault::InvalidValue { msr: Msr::Efer })
        );
    }

    #[test]
    fn read_only_and_ignored_writes() {
        let mut s = INTEL;
        assert_eq!(
            s.write(0x3A, 0x5, 0),
            Err(MsrFault::ReadOnly {
                msr: Msr::FeatureControl
            })
        );
        assert_eq!(
            s.write(0xFE, 0, 0),
            Err(MsrFault::ReadOnly { msr: Msr::MtrrCap })
        );
        assert_eq!(s.write(0x8B, 0, 0), Ok(MsrEffect::None));
        assert_eq!(s.read(0x8B, 0), Ok(0));
        // MISC_ENABLE: fast strings can be turned off; other bits stay as they are.
        assert_eq!(s.write(0x1A0, 1 << 18, 0), Ok(MsrEffect::None));
        assert_eq!(
            s.read(0x1A0, 0),
            Ok(MISC_ENABLE_BTS_UNAVAILABLE | MISC_ENABLE_PEBS_UNAVAILABLE)
        );
        assert_eq!(
            s.write(0x10, 0, 0),
            Err(MsrFault::NotAllowed { index: 0x10 })
        );
    }

    #[test]
    fn mtrr_def_type() {
        let mut s = AMD;
        assert_eq!(s.write(0x2FF, MTRR_DEF_TYPE_E | 6, 0), Ok(MsrEffect::None));
        assert_eq!(s.read(0x2FF, 0), Ok(MTRR_DEF_TYPE_E | 6));
        for bad in [
            MTRR_DEF_TYPE_E | 2,
            MTRR_DEF_TYPE_FE | MTRR_DEF_TYPE_E,
            1 << 12,
        ] {
            assert_eq!(
                s.write(0x2FF, bad, 0),
                Err(MsrFault::InvalidValue {
                    msr: Msr::MtrrDefType
                })
            );
        }
        s.reset();
        assert_eq!(s, AMD);
    }
}
