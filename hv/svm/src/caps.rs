//! SVM capability detection from CPUID and MSR values.
//!
//! Why: whether SVM can be turned on, and which optional features (nested paging, NRIPS,
//! flush-by-ASID, clean bits, decode assists) shape the backend's behaviour, is decided from a
//! handful of register values. Taking them as plain integers (STYLE.md point 5) lets tests use
//! values recorded from QEMU and from real CPUs.
//!
//! Sources: APM 15.4 "Enabling SVM", 15.30.1 "VM_CR MSR", 15.30.4 "VM_HSAVE_PA MSR", and the
//! CPUID specification for Fn8000_0001_ECX and Fn8000_000A (also APM vol. 3, appendix E).
#![forbid(unsafe_code)]

use crate::vmcb::TlbControl;
use bitflags::bitflags;

/// EFER (APM 3.1.7). SVME is bit 12, see [`crate::vmcb::Efer::SVME`].
pub const MSR_EFER: u32 = 0xC000_0080;
/// VM_CR: SVM lock and disable controls (APM 15.30.1).
pub const MSR_VM_CR: u32 = 0xC001_0114;
/// VM_HSAVE_PA: physical address of the 4 KiB host save area VMRUN uses (APM 15.30.4).
pub const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;
/// TSC_RATIO (needs [`SvmFeatures::TSC_RATE_MSR`]).
pub const MSR_TSC_RATIO: u32 = 0xC000_0104;
/// CPUID leaf with the SVM feature bit (ECX bit 2).
pub const CPUID_EXT_FEATURES: u32 = 0x8000_0001;
/// CPUID leaf with SVM revision, ASID count and optional features.
pub const CPUID_SVM: u32 = 0x8000_000A;
/// Fn8000_0001_ECX bit 2: SVM supported.
pub const CPUID_EXT_ECX_SVM: u32 = 1 << 2;

bitflags! {
    /// CPUID Fn8000_000A_EDX: optional SVM features. Unknown bits are kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct SvmFeatures: u32 {
        /// Nested paging.
        const NP = 1 << 0;
        /// LBR virtualization.
        const LBR_VIRT = 1 << 1;
        /// SVM lock (VM_CR.SVMDIS can be unlocked with a key).
        const SVML = 1 << 2;
        /// nRIP saved on #VMEXIT.
        const NRIPS = 1 << 3;
        /// TSC ratio MSR.
        const TSC_RATE_MSR = 1 << 4;
        /// VMCB clean bits.
        const VMCB_CLEAN = 1 << 5;
        /// Flush by ASID (TLB_CONTROL values 3 and 7).
        const FLUSH_BY_ASID = 1 << 6;
        /// Decode assists (instruction bytes, CR/DR/INVLPG operands in EXITINFO1).
        const DECODE_ASSISTS = 1 << 7;
        /// PAUSE intercept filter count.
        const PAUSE_FILTER = 1 << 10;
        /// PAUSE filter cycle-count threshold.
        const PAUSE_FILTER_THRESHOLD = 1 << 12;
        /// Advanced virtual interrupt controller.
        const AVIC = 1 << 13;
        /// Virtualized VMSAVE/VMLOAD.
        const VMSAVE_VIRT = 1 << 15;
        /// Virtual GIF.
        const VGIF = 1 << 16;
        /// Guest mode execute trap.
        const GMET = 1 << 17;
        /// x2APIC AVIC.
        const X2AVIC = 1 << 18;
        /// Supervisor shadow-stack restrictions.
        const SSS_CHECK = 1 << 19;
        /// SPEC_CTRL virtualization.
        const SPEC_CTRL = 1 << 20;
        /// Read-only guest page tables.
        const RO_GPT = 1 << 21;
        /// Host MCE override.
        const HOST_MCE_OVERRIDE = 1 << 23;
        /// INVLPGB/TLBSYNC hypervisor enable.
        const TLBI_CTL = 1 << 24;
        /// Virtual NMI.
        const VNMI = 1 << 25;
        /// IBS virtualization.
        const IBS_VIRT = 1 << 26;
        /// Extended LVT AVIC access change.
        const EXT_LVT_AVIC_ACCESS_CHG = 1 << 27;
        /// VMRUN checks the guest VMCB address against the host's physical limit.
        const VMCB_ADDR_CHK = 1 << 28;
        /// Bus-lock threshold.
        const BUS_LOCK_THRESHOLD = 1 << 29;
        /// Idle-HLT intercept.
        const IDLE_HLT = 1 << 30;
        // Keep bits this crate does not name (e.g. 11 on EPYC Milan) instead of dropping them.
        const _ = !0;
    }
}

bitflags! {
    /// VM_CR MSR (0xC001_0114) bits (APM 15.30.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct VmCr: u64 {
        /// Debug port disable.
        const DPD = 1 << 0;
        /// INIT redirected to #SX.
        const R_INIT = 1 << 1;
        /// A20M disabled.
        const DIS_A20M = 1 << 2;
        /// LOCK: SVMDIS is read-only.
        const LOCK = 1 << 3;
        /// SVMDIS: EFER.SVME cannot be set.
        const SVMDIS = 1 << 4;
    }
}

/// Decoded SVM capabilities of one CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SvmCaps {
    /// SVM revision (Fn8000_000A_EAX bits 7:0).
    pub revision: u8,
    /// Number of ASIDs including ASID 0 (the host), Fn8000_000A_EBX.
    pub num_asids: u32,
    /// Optional features, Fn8000_000A_EDX.
    pub features: SvmFeatures,
}

/// Why SVM cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SvmUnavailable {
    /// Fn8000_0001_ECX.SVM is clear (not an AMD CPU with SVM, or hidden by a hypervisor).
    NotSupported,
    /// VM_CR.SVMDIS is set by firmware (APM 15.4): with SVM-Lock a key may unlock it,
    /// otherwise only a firmware setting can.
    DisabledByFirmware {
        /// Whether the CPU supports SVM-Lock (a key could unlock it).
        unlockable: bool,
    },
    /// SVM is present but without a feature this hypervisor requires.
    MissingFeature(SvmFeatures),
    /// Fewer than two ASIDs: no ASID left for a guest.
    NoGuestAsids,
}

impl SvmCaps {
    /// Decode leaf 0x8000_000A's EAX, EBX and EDX (ECX is reserved).
    pub const fn from_cpuid(eax: u32, ebx: u32, edx: u32) -> Self {
        Self {
            revision: eax as u8,
            num_asids: ebx,
            features: SvmFeatures::from_bits_retain(edx),
        }
    }

    /// Whether nRIP is saved on #VMEXIT (else instruction lengths come from
    /// [`crate::insn_len`]).
    pub const fn nrips(&self) -> bool {
        self.features.contains(SvmFeatures::NRIPS)
    }

    /// Whether VMCB clean bits may be used (else [`crate::vmcb::Vmcb`]'s `clean_bits` stays 0).
    pub const fn vmcb_clean(&self) -> bool {
        self.features.contains(SvmFeatures::VMCB_CLEAN)
    }

    /// The TLB_CONTROL value that flushes one guest's translations: per-ASID if supported,
    /// else the whole TLB (APM 15.16.1).
    pub const fn guest_flush(&self) -> TlbControl {
        if self.features.contains(SvmFeatures::FLUSH_BY_ASID) {
            TlbControl::FlushGuest
        } else {
            TlbControl::FlushAll
        }
    }
}

/// What Hermitage needs from SVM: nested paging (guests run on NPT, no shadow paging).
pub const REQUIRED_FEATURES: SvmFeatures = SvmFeatures::NP;

/// Decide whether SVM can be enabled (APM 15.4): CPUID Fn8000_0001_ECX, the three used
/// registers of Fn8000_000A, and VM_CR. Returns the capabilities if usable.
///
/// `vm_cr` under QEMU TCG reads as 0 (QEMU does not model the MSR and returns 0).
pub fn detect(
    ext_ecx: u32,
    svm_eax: u32,
    svm_ebx: u32,
    svm_edx: u32,
    vm_cr: u64,
) -> Result<SvmCaps, SvmUnavailable> {
    if ext_ecx & CPUID_EXT_ECX_SVM == 0 {
        return Err(SvmUnavailable::NotSupported);
    }
    let caps = SvmCaps::from_cpuid(svm_eax, svm_ebx, svm_edx);
    if VmCr::from_bits_retain(vm_cr).contains(VmCr::SVMDIS) {
        return Err(SvmUnavailable::DisabledByFirmware {
            unlockable: caps.features.contains(SvmFeatures::SVML),
        });
    }
    if !caps.features.contains(REQUIRED_FEATURES) {
        return Err(SvmUnavailable::MissingFeature(
            REQUIRED_FEATURES.difference(caps.features),
        ));
    }
    if caps.num_asids < 2 {
        return Err(SvmUnavailable::NoGuestAsids);
    }
    Ok(caps)
}

/// Whether `pa` is acceptable for VM_HSAVE_PA: 4 KiB aligned and below the physical-address
/// limit (`phys_bits` from CPUID Fn8000_0008_EAX bits 7:0); writing anything else #GPs.
pub const fn hsave_pa_valid(pa: u64, phys_bits: u8) -> bool {
    pa & 0xFFF == 0 && (phys_bits >= 64 || pa >> phys_bits == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // QEMU 7.2 TCG, `-cpu EPYC`: target/i386/cpu.c reports EAX = 1 (revision), EBX = 0x10
    // (16 ASIDs) and EDX = the model's SVM features (NPT | NRIPSAVE) filtered by what TCG
    // implements (NPT | VGIF | SVME_ADDR_CHK), i.e. just NPT.
    const QEMU_EPYC: (u32, u32, u32) = (0x1, 0x10, 0x0000_0001);
    // QEMU 7.2 TCG, `-cpu max`: all TCG SVM features.
    const QEMU_MAX: (u32, u32, u32) = (0x1, 0x10, 0x1001_0001);
    // AMD EPYC Milan (Zen 3) host values, as recorded by a hypervisor project's CPUID profile
    // tests (leaf passed through from the host): 32768 ASIDs.
    const MILAN: (u32, u32, u32) = (0x1, 0x8000, 0x119B_BCFF);
    // The same project's Milan guest dump has Fn8000_0001_ECX with SVM masked off.
    const MILAN_GUEST_EXT_ECX: u32 = 0x4440_31FB;

    #[test]
    fn qemu_epyc() {
        let (a, b, d) = QEMU_EPYC;
        let caps = detect(CPUID_EXT_ECX_SVM, a, b, d, 0).expect("usable");
        assert_eq!(caps.revision, 1);
        assert_eq!(caps.num_asids, 16);
        assert_eq!(caps.features, SvmFeatures::NP);
        assert!(!caps.nrips());
        assert!(!caps.vmcb_clean());
        assert_eq!(caps.guest_flush(), TlbControl::FlushAll);
    }

    #[test]
    fn qemu_max() {
        let (a, b, d) = QEMU_MAX;
        let caps = detect(CPUID_EXT_ECX_SVM, a, b, d, 0).unwrap();
        assert_eq!(
            caps.features,
            SvmFeatures::NP | SvmFeatures::VGIF | SvmFeatures::VMCB_ADDR_CHK
        );
        assert!(!caps.nrips());
    }

    #[test]
    fn epyc_milan() {
        let (a, b, d) = MILAN;
        let caps = detect(CPUID_EXT_ECX_SVM, a, b, d, 0).unwrap();
        assert_eq!(caps.num_asids, 32768);
        let f = caps.features;
        for flag in [
            SvmFeatures::NP,
            SvmFeatures::LBR_VIRT,
            SvmFeatures::SVML,
            SvmFeatures::NRIPS,
            SvmFeatures::TSC_RATE_MSR,
            SvmFeatures::VMCB_CLEAN,
            SvmFeatures::FLUSH_BY_ASID,
            SvmFeatures::DECODE_ASSISTS,
            SvmFeatures::PAUSE_FILTER,
            SvmFeatures::PAUSE_FILTER_THRESHOLD,
            SvmFeatures::AVIC,
            SvmFeatures::VMSAVE_VIRT,
            SvmFeatures::VGIF,
            SvmFeatures::GMET,
            SvmFeatures::SSS_CHECK,
            SvmFeatures::SPEC_CTRL,
            SvmFeatures::HOST_MCE_OVERRIDE,
            SvmFeatures::TLBI_CTL,
            SvmFeatures::VMCB_ADDR_CHK,
        ] {
            assert!(f.contains(flag), "{flag:?}");
        }
        assert!(!f.contains(SvmFeatures::VNMI) && !f.contains(SvmFeatures::X2AVIC));
        // Unknown bit 11 is kept, not dropped.
        assert_eq!(f.bits(), 0x119B_BCFF);
        assert!(caps.nrips());
        assert_eq!(caps.guest_flush(), TlbControl::FlushGuest);
        // The guest view (SVM bit masked) is rejected up front.
        assert_eq!(
            detect(MILAN_GUEST_EXT_ECX, a, b, d, 0),
            Err(SvmUnavailable::NotSupported)
        );
    }

    #[test]
    fn firmware_and_feature_refusals() {
        let (a, b, d) = MILAN;
        let svmdis_locked = (VmCr::SVMDIS | VmCr::LOCK).bits();
        assert_eq!(
            detect(CPUID_EXT_ECX_SVM, a, b, d, svmdis_locked),
            Err(SvmUnavailable::DisabledByFirmware { unlockable: true })
        );
        let (a, b, _) = QEMU_EPYC;
        assert_eq!(
            detect(CPUID_EXT_ECX_SVM, a, b, 0, VmCr::SVMDIS.bits()),
            Err(SvmUnavailable::DisabledByFirmware { unlockable: false })
        );
        assert_eq!(
            detect(CPUID_EXT_ECX_SVM, a, b, 0, 0),
            Err(SvmUnavailable::MissingFeature(SvmFeatures::NP))
        );
        assert_eq!(
            detect(CPUID_EXT_ECX_SVM, a, 1, 1, 0),
            Err(SvmUnavailable::NoGuestAsids)
        );
        // LOCK alone (SVM enabled and locked on) is fine.
        assert!(detect(CPUID_EXT_ECX_SVM, 1, 16, 1, VmCr::LOCK.bits()).is_ok());
    }

    #[test]
    fn hsave_pa() {
        assert!(hsave_pa_valid(0x1000, 48));
        assert!(!hsave_pa_valid(0x1008, 48));
        assert!(!hsave_pa_valid(1 << 48, 48));
        assert!(hsave_pa_valid((1 << 48) - 0x1000, 48));
    }
}
