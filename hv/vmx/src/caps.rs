//! VMX capability MSRs: what this CPU's VMX can do, decoded from plain integers.
//!
//! Why: whether VMX can be turned on, what VMXON needs (revision identifier, CR0/CR4 fixed
//! bits) and which controls and EPT features exist is decided from a dozen MSR values. Taking
//! them as integers (STYLE.md point 5) lets tests use values recorded from real CPUs and from
//! Bochs' models (see `recorded.rs`).
//!
//! Sources: SDM vol. 3D appendix A "VMX Capability Reporting Facility" (A.1 basic information,
//! A.3-A.5 controls, A.6 miscellaneous data, A.7/A.8 CR0/CR4 fixed bits, A.10 EPT and VPID);
//! SDM vol. 3C "Enabling and Entering VMX Operation" for IA32_FEATURE_CONTROL.
#![forbid(unsafe_code)]

use bitflags::bitflags;

/// IA32_FEATURE_CONTROL.
pub const MSR_IA32_FEATURE_CONTROL: u32 = 0x3A;
/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// IA32_DEBUGCTL.
pub const MSR_IA32_DEBUGCTL: u32 = 0x1D9;
/// IA32_PAT.
pub const MSR_IA32_PAT: u32 = 0x277;
/// IA32_VMX_BASIC.
pub const MSR_IA32_VMX_BASIC: u32 = 0x480;
/// IA32_VMX_PINBASED_CTLS.
pub const MSR_IA32_VMX_PINBASED_CTLS: u32 = 0x481;
/// IA32_VMX_PROCBASED_CTLS.
pub const MSR_IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
/// IA32_VMX_EXIT_CTLS.
pub const MSR_IA32_VMX_EXIT_CTLS: u32 = 0x483;
/// IA32_VMX_ENTRY_CTLS.
pub const MSR_IA32_VMX_ENTRY_CTLS: u32 = 0x484;
/// IA32_VMX_MISC.
pub const MSR_IA32_VMX_MISC: u32 = 0x485;
/// IA32_VMX_CR0_FIXED0.
pub const MSR_IA32_VMX_CR0_FIXED0: u32 = 0x486;
/// IA32_VMX_CR0_FIXED1.
pub const MSR_IA32_VMX_CR0_FIXED1: u32 = 0x487;
/// IA32_VMX_CR4_FIXED0.
pub const MSR_IA32_VMX_CR4_FIXED0: u32 = 0x488;
/// IA32_VMX_CR4_FIXED1.
pub const MSR_IA32_VMX_CR4_FIXED1: u32 = 0x489;
/// IA32_VMX_VMCS_ENUM.
pub const MSR_IA32_VMX_VMCS_ENUM: u32 = 0x48A;
/// IA32_VMX_PROCBASED_CTLS2.
pub const MSR_IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
/// IA32_VMX_EPT_VPID_CAP.
pub const MSR_IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
/// IA32_VMX_TRUE_PINBASED_CTLS.
pub const MSR_IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
/// IA32_VMX_TRUE_PROCBASED_CTLS.
pub const MSR_IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48E;
/// IA32_VMX_TRUE_EXIT_CTLS.
pub const MSR_IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48F;
/// IA32_VMX_TRUE_ENTRY_CTLS.
pub const MSR_IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
/// IA32_VMX_VMFUNC.
pub const MSR_IA32_VMX_VMFUNC: u32 = 0x491;
/// IA32_EFER.
pub const MSR_IA32_EFER: u32 = 0xC000_0080;
/// IA32_FS_BASE.
pub const MSR_IA32_FS_BASE: u32 = 0xC000_0100;
/// IA32_GS_BASE.
pub const MSR_IA32_GS_BASE: u32 = 0xC000_0101;

/// CPUID.1:ECX bit 5: VMX supported.
pub const CPUID_1_ECX_VMX: u32 = 1 << 5;

/// A memory type as the VMX MSRs and the EPT encode it (SDM vol. 3D A.1, vol. 3C "EPT and
/// Memory Typing").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryType {
    /// 0: uncacheable.
    Uncacheable,
    /// 1: write combining.
    WriteCombining,
    /// 4: write through.
    WriteThrough,
    /// 5: write protected.
    WriteProtected,
    /// 6: write back.
    WriteBack,
    /// Any other (reserved) value.
    Reserved(u8),
}

impl MemoryType {
    /// Decode a 3- or 4-bit memory-type value.
    pub const fn from_raw(raw: u8) -> Self {
        match raw {
            0 => Self::Uncacheable,
            1 => Self::WriteCombining,
            4 => Self::WriteThrough,
            5 => Self::WriteProtected,
            6 => Self::WriteBack,
            other => Self::Reserved(other),
        }
    }

    /// The raw value.
    pub const fn raw(self) -> u8 {
        match self {
            Self::Uncacheable => 0,
            Self::WriteCombining => 1,
            Self::WriteThrough => 4,
            Self::WriteProtected => 5,
            Self::WriteBack => 6,
            Self::Reserved(r) => r,
        }
    }
}

/// IA32_VMX_BASIC decoded (SDM vol. 3D A.1 "Basic VMX Information").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmxBasic {
    /// Bits 30:0: VMCS revision identifier, written to the first dword of the VMXON region and
    /// of every VMCS.
    pub revision_id: u32,
    /// Bits 44:32: bytes to allocate for the VMXON region and a VMCS (at most 4096).
    pub vmcs_size: u16,
    /// Bit 48: VMXON/VMCS/bitmap addresses are limited to 32 bits (never on Intel 64 CPUs).
    pub phys_addr_32bit: bool,
    /// Bit 49: dual-monitor treatment of SMIs and SMM is supported.
    pub dual_monitor: bool,
    /// Bits 53:50: memory type the CPU uses to access the VMCS (write-back on every CPU so far).
    pub memory_type: MemoryType,
    /// Bit 54: VM exits for INS/OUTS fill the VM-exit instruction-information field.
    pub ins_outs_info: bool,
    /// Bit 55: the IA32_VMX_TRUE_*_CTLS MSRs exist and some default-1 controls may be 0.
    pub true_controls: bool,
    /// Bit 56: VM entry may deliver a hardware exception with or without error code,
    /// regardless of vector.
    pub any_exception_error_code: bool,
}

impl VmxBasic {
    /// Decode the raw MSR.
    pub const fn from_raw(raw: u64) -> Self {
        Self {
            revision_id: raw as u32 & 0x7FFF_FFFF,
            vmcs_size: ((raw >> 32) & 0x1FFF) as u16,
            phys_addr_32bit: raw & (1 << 48) != 0,
            dual_monitor: raw & (1 << 49) != 0,
            memory_type: MemoryType::from_raw(((raw >> 50) & 0xF) as u8),
            ins_outs_info: raw & (1 << 54) != 0,
            true_controls: raw & (1 << 55) != 0,
            any_exception_error_code: raw & (1 << 56) != 0,
        }
    }
}

bitflags! {
    /// IA32_FEATURE_CONTROL bits that matter for VMX (SDM vol. 3C "Enabling and Entering VMX
    /// Operation"). Other bits are kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct FeatureControl: u64 {
        /// Bit 0: lock. Once set, the MSR cannot be written until reset; WRMSR #GPs.
        const LOCK = 1 << 0;
        /// Bit 1: VMXON allowed inside SMX operation.
        const VMX_INSIDE_SMX = 1 << 1;
        /// Bit 2: VMXON allowed outside SMX operation (what a hypervisor needs).
        const VMX_OUTSIDE_SMX = 1 << 2;
        const _ = !0;
    }
}

/// What IA32_FEATURE_CONTROL asks of the enable path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeatureControlAction {
    /// Locked with VMXON outside SMX allowed: nothing to do.
    Ready,
    /// Unlocked (firmware left it to us): write this value (VMX outside SMX + lock) first.
    /// The lock is what makes the setting take effect; VMXON #GPs while the MSR is unlocked.
    Write(u64),
}

/// Why VMX cannot be used on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmxUnavailable {
    /// CPUID.1:ECX.VMX is clear (no VMX, or hidden by a hypervisor).
    NotSupported,
    /// IA32_FEATURE_CONTROL is locked with VMXON outside SMX disabled: only a firmware
    /// setting can change that.
    DisabledByFirmware,
}

/// Decide what to do about IA32_FEATURE_CONTROL before VMXON.
pub const fn feature_control_action(value: u64) -> Result<FeatureControlAction, VmxUnavailable> {
    let fc = FeatureControl::from_bits_retain(value);
    if fc.contains(FeatureControl::LOCK) {
        if fc.contains(FeatureControl::VMX_OUTSIDE_SMX) {
            Ok(FeatureControlAction::Ready)
        } else {
            Err(VmxUnavailable::DisabledByFirmware)
        }
    } else {
        Ok(FeatureControlAction::Write(
            value | FeatureControl::VMX_OUTSIDE_SMX.bits() | FeatureControl::LOCK.bits(),
        ))
    }
}

/// Apply fixed bits to a CR0/CR4 value (SDM vol. 3D A.7, A.8): bits set in `fixed0` must be 1,
/// bits clear in `fixed1` must be 0.
pub const fn apply_fixed(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    (value | fixed0) & fixed1
}

/// The bits of `value` that violate the fixed bits (0 when it is acceptable).
pub const fn fixed_violations(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    (fixed0 & !value) | (value & !fixed1)
}

bitflags! {
    /// IA32_VMX_EPT_VPID_CAP (SDM vol. 3D A.10). Unknown bits are kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EptVpidCap: u64 {
        /// Execute-only EPT translations.
        const EXECUTE_ONLY = 1 << 0;
        /// 4-level EPT page walk.
        const WALK_LENGTH_4 = 1 << 6;
        /// 5-level EPT page walk.
        const WALK_LENGTH_5 = 1 << 7;
        /// EPT paging structures may be uncacheable.
        const MEMORY_TYPE_UC = 1 << 8;
        /// EPT paging structures may be write-back.
        const MEMORY_TYPE_WB = 1 << 14;
        /// 2 MiB EPT pages (PDE leaves).
        const PAGE_2M = 1 << 16;
        /// 1 GiB EPT pages (PDPTE leaves).
        const PAGE_1G = 1 << 17;
        /// INVEPT supported.
        const INVEPT = 1 << 20;
        /// Accessed and dirty flags for EPT.
        const ACCESSED_DIRTY = 1 << 21;
        /// Advanced VM-exit information for EPT violations.
        const ADVANCED_EXIT_INFO = 1 << 22;
        /// Supervisor shadow-stack control.
        const SUPERVISOR_SHADOW_STACK = 1 << 23;
        /// Single-context INVEPT.
        const INVEPT_SINGLE_CONTEXT = 1 << 25;
        /// All-context INVEPT.
        const INVEPT_ALL_CONTEXT = 1 << 26;
        /// INVVPID supported.
        const INVVPID = 1 << 32;
        /// Individual-address INVVPID.
        const INVVPID_INDIVIDUAL_ADDRESS = 1 << 40;
        /// Single-context INVVPID.
        const INVVPID_SINGLE_CONTEXT = 1 << 41;
        /// All-context INVVPID.
        const INVVPID_ALL_CONTEXT = 1 << 42;
        /// Single-context-retaining-globals INVVPID.
        const INVVPID_SINGLE_CONTEXT_RETAINING_GLOBALS = 1 << 43;
        const _ = !0;
    }
}

/// INVEPT types (SDM vol. 3C "INVEPT", operand in a register).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum InveptType {
    /// 1: invalidate mappings of one EPTP.
    SingleContext = 1,
    /// 2: invalidate mappings of all EPTPs.
    AllContext = 2,
}

/// INVVPID types (SDM vol. 3C "INVVPID").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum InvvpidType {
    /// 0: one linear address of one VPID.
    IndividualAddress = 0,
    /// 1: everything of one VPID.
    SingleContext = 1,
    /// 2: everything of all VPIDs except 0.
    AllContext = 2,
    /// 3: one VPID, keeping global translations.
    SingleContextRetainingGlobals = 3,
}

/// What Hermitage needs from EPT: 4-level tables in write-back memory (the EPTP we build) and
/// INVEPT to flush after changing them.
pub const REQUIRED_EPT: EptVpidCap = EptVpidCap::WALK_LENGTH_4
    .union(EptVpidCap::MEMORY_TYPE_WB)
    .union(EptVpidCap::INVEPT);

impl EptVpidCap {
    /// The narrowest INVEPT type that flushes one guest: single-context if supported, else
    /// all-context; `None` without INVEPT.
    pub const fn invept_for_guest(self) -> Option<InveptType> {
        if !self.contains(Self::INVEPT) {
            None
        } else if self.contains(Self::INVEPT_SINGLE_CONTEXT) {
            Some(InveptType::SingleContext)
        } else if self.contains(Self::INVEPT_ALL_CONTEXT) {
            Some(InveptType::AllContext)
        } else {
            None
        }
    }

    /// The narrowest INVVPID type that flushes one VPID, if any.
    pub const fn invvpid_for_guest(self) -> Option<InvvpidType> {
        if !self.contains(Self::INVVPID) {
            None
        } else if self.contains(Self::INVVPID_SINGLE_CONTEXT) {
            Some(InvvpidType::SingleContext)
        } else if self.contains(Self::INVVPID_ALL_CONTEXT) {
            Some(InvvpidType::AllContext)
        } else {
            None
        }
    }
}

/// IA32_VMX_MISC decoded (SDM vol. 3D A.6 "Miscellaneous Data").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmxMisc(pub u64);

/// Activity states a guest may be entered in (SDM vol. 3C "Guest Non-Register State").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum ActivityState {
    /// 0: executing instructions.
    #[default]
    Active = 0,
    /// 1: halted after HLT.
    Hlt = 1,
    /// 2: shutdown after a triple fault.
    Shutdown = 2,
    /// 3: waiting for a start-up IPI (an application processor before SIPI).
    WaitForSipi = 3,
}

impl VmxMisc {
    /// Bits 4:0: the VMX-preemption timer counts down once every 2^rate TSC ticks.
    pub const fn preemption_timer_rate(self) -> u8 {
        (self.0 & 0x1F) as u8
    }
    /// Bit 5: VM exits store EFER.LMA into the "IA-32e mode guest" entry control (always 1
    /// on CPUs with unrestricted guest).
    pub const fn stores_lma(self) -> bool {
        self.0 & (1 << 5) != 0
    }
    /// Bits 8:6: whether VM entry may put the guest in `state` (active is always allowed).
    pub const fn activity_supported(self, state: ActivityState) -> bool {
        match state {
            ActivityState::Active => true,
            ActivityState::Hlt => self.0 & (1 << 6) != 0,
            ActivityState::Shutdown => self.0 & (1 << 7) != 0,
            ActivityState::WaitForSipi => self.0 & (1 << 8) != 0,
        }
    }
    /// Bit 14: Intel PT may be used in VMX operation.
    pub const fn pt_in_vmx(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// Bits 24:16: number of CR3-target values.
    pub const fn cr3_targets(self) -> u16 {
        ((self.0 >> 16) & 0x1FF) as u16
    }
    /// Bits 27:25: recommended maximum entries per MSR load/store list, 512 * (N + 1).
    pub const fn max_msr_list(self) -> u32 {
        512 * (((self.0 >> 25) & 7) as u32 + 1)
    }
    /// Bit 29: VMWRITE may write any field, including the VM-exit information fields.
    pub const fn vmwrite_any_field(self) -> bool {
        self.0 & (1 << 29) != 0
    }
    /// Bit 30: software interrupts/exceptions may be injected with instruction length 0.
    pub const fn inject_zero_length(self) -> bool {
        self.0 & (1 << 30) != 0
    }
    /// Bits 63:32: MSEG revision identifier.
    pub const fn mseg_revision(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// The raw VMX capability MSRs of one CPU. MSRs that do not exist on the CPU read as 0 here
/// (see [`CapMsrs::read_with`], which never touches them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapMsrs {
    /// IA32_FEATURE_CONTROL.
    pub feature_control: u64,
    /// IA32_VMX_BASIC.
    pub basic: u64,
    /// IA32_VMX_PINBASED_CTLS.
    pub pinbased: u64,
    /// IA32_VMX_PROCBASED_CTLS.
    pub procbased: u64,
    /// IA32_VMX_EXIT_CTLS.
    pub exit: u64,
    /// IA32_VMX_ENTRY_CTLS.
    pub entry: u64,
    /// IA32_VMX_MISC.
    pub misc: u64,
    /// IA32_VMX_CR0_FIXED0.
    pub cr0_fixed0: u64,
    /// IA32_VMX_CR0_FIXED1.
    pub cr0_fixed1: u64,
    /// IA32_VMX_CR4_FIXED0.
    pub cr4_fixed0: u64,
    /// IA32_VMX_CR4_FIXED1.
    pub cr4_fixed1: u64,
    /// IA32_VMX_PROCBASED_CTLS2 (exists only if `procbased` allows secondary controls).
    pub procbased2: u64,
    /// IA32_VMX_EPT_VPID_CAP (exists only if `procbased2` allows EPT or VPID).
    pub ept_vpid_cap: u64,
    /// IA32_VMX_TRUE_PINBASED_CTLS (exists only if BASIC bit 55).
    pub true_pinbased: u64,
    /// IA32_VMX_TRUE_PROCBASED_CTLS (exists only if BASIC bit 55).
    pub true_procbased: u64,
    /// IA32_VMX_TRUE_EXIT_CTLS (exists only if BASIC bit 55).
    pub true_exit: u64,
    /// IA32_VMX_TRUE_ENTRY_CTLS (exists only if BASIC bit 55).
    pub true_entry: u64,
    /// IA32_VMX_VMFUNC (exists only if `procbased2` allows "enable VM functions").
    pub vmfunc: u64,
}

/// Allowed-1 bit of the primary controls: "activate secondary controls" (bit 31 of the
/// control, bit 63 of the MSR).
const PROCBASED_ALLOWS_SECONDARY: u64 = 1 << 63;
/// Allowed-1 bits of the secondary controls: EPT (1), VPID (5), VM functions (13).
const PROCBASED2_ALLOWS_EPT: u64 = 1 << (32 + 1);
const PROCBASED2_ALLOWS_VPID: u64 = 1 << (32 + 5);
const PROCBASED2_ALLOWS_VMFUNC: u64 = 1 << (32 + 13);

impl CapMsrs {
    /// Read the capability MSRs through `rdmsr`, touching only MSRs that exist according to
    /// the rules of SDM vol. 3D appendix A (reading an absent MSR #GPs). Call only when
    /// CPUID.1:ECX.VMX is set.
    pub fn read_with(mut rdmsr: impl FnMut(u32) -> u64) -> Self {
        let basic = rdmsr(MSR_IA32_VMX_BASIC);
        let procbased = rdmsr(MSR_IA32_VMX_PROCBASED_CTLS);
        let true_controls = VmxBasic::from_raw(basic).true_controls;
        let procbased2 = if procbased & PROCBASED_ALLOWS_SECONDARY != 0 {
            rdmsr(MSR_IA32_VMX_PROCBASED_CTLS2)
        } else {
            0
        };
        let mut true_msr = |msr| if true_controls { rdmsr(msr) } else { 0 };
        let (true_pinbased, true_procbased, true_exit, true_entry) = (
            true_msr(MSR_IA32_VMX_TRUE_PINBASED_CTLS),
            true_msr(MSR_IA32_VMX_TRUE_PROCBASED_CTLS),
            true_msr(MSR_IA32_VMX_TRUE_EXIT_CTLS),
            true_msr(MSR_IA32_VMX_TRUE_ENTRY_CTLS),
        );
        Self {
            feature_control: rdmsr(MSR_IA32_FEATURE_CONTROL),
            basic,
            pinbased: rdmsr(MSR_IA32_VMX_PINBASED_CTLS),
            procbased,
            exit: rdmsr(MSR_IA32_VMX_EXIT_CTLS),
            entry: rdmsr(MSR_IA32_VMX_ENTRY_CTLS),
            misc: rdmsr(MSR_IA32_VMX_MISC),
            cr0_fixed0: rdmsr(MSR_IA32_VMX_CR0_FIXED0),
            cr0_fixed1: rdmsr(MSR_IA32_VMX_CR0_FIXED1),
            cr4_fixed0: rdmsr(MSR_IA32_VMX_CR4_FIXED0),
            cr4_fixed1: rdmsr(MSR_IA32_VMX_CR4_FIXED1),
            procbased2,
            ept_vpid_cap: if procbased2 & (PROCBASED2_ALLOWS_EPT | PROCBASED2_ALLOWS_VPID) != 0 {
                rdmsr(MSR_IA32_VMX_EPT_VPID_CAP)
            } else {
                0
            },
            true_pinbased,
            true_procbased,
            true_exit,
            true_entry,
            vmfunc: if procbased2 & PROCBASED2_ALLOWS_VMFUNC != 0 {
                rdmsr(MSR_IA32_VMX_VMFUNC)
            } else {
                0
            },
        }
    }

    /// IA32_VMX_BASIC decoded.
    pub const fn basic(&self) -> VmxBasic {
        VmxBasic::from_raw(self.basic)
    }

    /// IA32_VMX_MISC decoded.
    pub const fn misc(&self) -> VmxMisc {
        VmxMisc(self.misc)
    }

    /// IA32_VMX_EPT_VPID_CAP decoded.
    pub const fn ept_vpid(&self) -> EptVpidCap {
        EptVpidCap::from_bits_retain(self.ept_vpid_cap)
    }

    /// The host CR0 VMXON needs: `cr0` with the fixed bits applied.
    pub const fn vmxon_cr0(&self, cr0: u64) -> u64 {
        apply_fixed(cr0, self.cr0_fixed0, self.cr0_fixed1)
    }

    /// The host CR4 VMXON needs: `cr4` with the fixed bits applied (this sets CR4.VMXE).
    pub const fn vmxon_cr4(&self, cr4: u64) -> u64 {
        apply_fixed(cr4, self.cr4_fixed0, self.cr4_fixed1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorded::{self, Recorded};

    #[test]
    fn basic_decoding() {
        // Skylake client: revision 4, 1 KiB VMCS, WB, INS/OUTS info, true controls.
        let b = VmxBasic::from_raw(recorded::SKYLAKE_I7_6700K.msrs.basic);
        assert_eq!(
            b,
            VmxBasic {
                revision_id: 4,
                vmcs_size: 1024,
                phys_addr_32bit: false,
                dual_monitor: true,
                memory_type: MemoryType::WriteBack,
                ins_outs_info: true,
                true_controls: true,
                any_exception_error_code: false,
            }
        );
        // Penryn: 2 KiB VMCS and no true controls yet.
        let b = VmxBasic::from_raw(recorded::PENRYN_XEON_X5482.msrs.basic);
        assert_eq!((b.revision_id, b.vmcs_size), (0xD, 2048));
        assert!(!b.true_controls && b.ins_outs_info);
        assert_eq!(b.memory_type, MemoryType::WriteBack);
        // Bochs: its own revision 0x2B, a whole page, no dual-monitor treatment.
        let b = VmxBasic::from_raw(recorded::BOCHS_HASWELL_4770.msrs.basic);
        assert_eq!((b.revision_id, b.vmcs_size), (0x2B, 4096));
        assert!(b.true_controls && b.ins_outs_info && !b.dual_monitor);
        // Bit 31 is not part of the revision identifier.
        assert_eq!(VmxBasic::from_raw(0x8000_0004).revision_id, 4);
        assert_eq!(MemoryType::from_raw(2), MemoryType::Reserved(2));
        assert_eq!(MemoryType::WriteBack.raw(), 6);
    }

    #[test]
    fn feature_control_rules() {
        // Locked and enabled (every recorded CPU and Bochs): nothing to do.
        assert_eq!(feature_control_action(0x5), Ok(FeatureControlAction::Ready));
        // Locked with only VMX-inside-SMX: firmware disabled it for us.
        assert_eq!(
            feature_control_action(0x3),
            Err(VmxUnavailable::DisabledByFirmware)
        );
        assert_eq!(
            feature_control_action(0x1),
            Err(VmxUnavailable::DisabledByFirmware)
        );
        // Unlocked: set VMX outside SMX and lock, keep other bits (e.g. SGX enables).
        assert_eq!(
            feature_control_action(0),
            Ok(FeatureControlAction::Write(0x5))
        );
        assert_eq!(
            feature_control_action(0x4_0000),
            Ok(FeatureControlAction::Write(0x4_0005))
        );
    }

    #[test]
    fn fixed_bits() {
        let (f0, f1) = (0x8000_0021, 0xFFFF_FFFF);
        // Hermit's CR0 (PE|MP|ET|NE|WP|PG) is already fine; one without NE gets it.
        assert_eq!(apply_fixed(0x8001_0033, f0, f1), 0x8001_0033);
        assert_eq!(apply_fixed(0x8001_0013, f0, f1), 0x8001_0033);
        assert_eq!(fixed_violations(0x8001_0013, f0, f1), 0x20);
        assert_eq!(
            fixed_violations(0x1_0000_0000 | 0x8000_0021, f0, f1),
            1 << 32
        );
        // CR4: VMXE forced on, bits beyond FIXED1 (e.g. LA57 on a CPU without it) dropped.
        let (f0, f1) = (0x2000, 0x3727FF);
        assert_eq!(apply_fixed(0x20 | 0x1000, f0, f1), 0x2020);
        assert_eq!(fixed_violations(0x20, f0, f1), 0x2000);
    }

    #[test]
    fn ept_vpid_and_misc() {
        let skl = recorded::SKYLAKE_I7_6700K.msrs;
        let e = EptVpidCap::from_bits_retain(skl.ept_vpid_cap);
        assert!(e.contains(REQUIRED_EPT | EptVpidCap::PAGE_2M | EptVpidCap::PAGE_1G));
        assert!(e.contains(EptVpidCap::ACCESSED_DIRTY | EptVpidCap::EXECUTE_ONLY));
        assert!(!e.contains(EptVpidCap::WALK_LENGTH_5));
        assert_eq!(e.invept_for_guest(), Some(InveptType::SingleContext));
        assert_eq!(e.invvpid_for_guest(), Some(InvvpidType::SingleContext));
        // Sandy Bridge: no 1 GiB pages, no A/D bits.
        let snb = EptVpidCap::from_bits_retain(recorded::SANDY_BRIDGE_I7_2635QM.msrs.ept_vpid_cap);
        assert!(snb.contains(REQUIRED_EPT | EptVpidCap::PAGE_2M));
        assert!(!snb.intersects(EptVpidCap::PAGE_1G | EptVpidCap::ACCESSED_DIRTY));
        assert_eq!(EptVpidCap::INVEPT.invept_for_guest(), None);
        assert_eq!(
            (EptVpidCap::INVEPT | EptVpidCap::INVEPT_ALL_CONTEXT).invept_for_guest(),
            Some(InveptType::AllContext)
        );
        assert_eq!(EptVpidCap::empty().invvpid_for_guest(), None);

        let m = VmxMisc(skl.misc); // 0x7004C1E7
        assert_eq!(m.preemption_timer_rate(), 7);
        assert!(m.stores_lma());
        for s in [
            ActivityState::Active,
            ActivityState::Hlt,
            ActivityState::Shutdown,
            ActivityState::WaitForSipi,
        ] {
            assert!(m.activity_supported(s));
        }
        assert!(m.pt_in_vmx());
        assert_eq!(m.cr3_targets(), 4);
        assert_eq!(m.max_msr_list(), 512);
        assert!(m.vmwrite_any_field() && m.inject_zero_length());
        assert_eq!(m.mseg_revision(), 0);
        // Penryn: no activity states beyond active, no LMA store.
        let m = VmxMisc(recorded::PENRYN_XEON_X5482.msrs.misc); // 0x403C0
        assert!(!m.stores_lma() && m.activity_supported(ActivityState::Hlt));
        assert_eq!(m.preemption_timer_rate(), 0);
        assert!(!VmxMisc(0).activity_supported(ActivityState::Hlt));
    }

    /// A fake RDMSR over a recorded CPU that panics on MSRs the CPU does not have.
    fn reader(r: &'static Recorded) -> impl FnMut(u32) -> u64 {
        let m = r.msrs;
        let true_ok = VmxBasic::from_raw(m.basic).true_controls;
        move |msr| match msr {
            MSR_IA32_FEATURE_CONTROL => m.feature_control,
            MSR_IA32_VMX_BASIC => m.basic,
            MSR_IA32_VMX_PINBASED_CTLS => m.pinbased,
            MSR_IA32_VMX_PROCBASED_CTLS => m.procbased,
            MSR_IA32_VMX_EXIT_CTLS => m.exit,
            MSR_IA32_VMX_ENTRY_CTLS => m.entry,
            MSR_IA32_VMX_MISC => m.misc,
            MSR_IA32_VMX_CR0_FIXED0 => m.cr0_fixed0,
            MSR_IA32_VMX_CR0_FIXED1 => m.cr0_fixed1,
            MSR_IA32_VMX_CR4_FIXED0 => m.cr4_fixed0,
            MSR_IA32_VMX_CR4_FIXED1 => m.cr4_fixed1,
            MSR_IA32_VMX_PROCBASED_CTLS2 if m.procbased >> 63 == 1 => m.procbased2,
            MSR_IA32_VMX_EPT_VPID_CAP if m.procbased2 & (0x22 << 32) != 0 => m.ept_vpid_cap,
            MSR_IA32_VMX_TRUE_PINBASED_CTLS if true_ok => m.true_pinbased,
            MSR_IA32_VMX_TRUE_PROCBASED_CTLS if true_ok => m.true_procbased,
            MSR_IA32_VMX_TRUE_EXIT_CTLS if true_ok => m.true_exit,
            MSR_IA32_VMX_TRUE_ENTRY_CTLS if true_ok => m.true_entry,
            MSR_IA32_VMX_VMFUNC if m.procbased2 & (1 << 45) != 0 => m.vmfunc,
            other => panic!("{}: RDMSR {other:#x} would #GP", r.name),
        }
    }

    #[test]
    fn read_with_touches_only_existing_msrs() {
        for r in recorded::ALL {
            assert_eq!(CapMsrs::read_with(reader(r)), r.msrs, "{}", r.name);
        }
        // A CPU without secondary controls: neither PROCBASED_CTLS2 nor EPT_VPID_CAP is read.
        static NO_SECONDARY: Recorded = Recorded {
            name: "no secondary controls",
            msrs: CapMsrs {
                procbased: recorded::PENRYN_XEON_X5482.msrs.procbased & !(1 << 63),
                procbased2: 0,
                ..recorded::PENRYN_XEON_X5482.msrs
            },
        };
        let m = CapMsrs::read_with(reader(&NO_SECONDARY));
        assert_eq!((m.procbased2, m.ept_vpid_cap), (0, 0));
    }

    #[test]
    fn vmxon_control_registers() {
        let m = recorded::BOCHS_HASWELL_4770.msrs;
        assert_eq!(m.vmxon_cr4(0x0000_06A0), 0x26A0);
        assert_eq!(m.vmxon_cr0(0x8001_0033), 0x8001_0033);
    }
}
