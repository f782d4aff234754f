//! Turning VMX on and off for one CPU: the decisions, mapped onto the core's errors.
//!
//! Why: the core's per-CPU virt layer (`hv::virt`) calls `Backend::enable`/`disable` and
//! expects [`EnableError`]/[`DisableError`] with a strict contract: a failed enable leaves
//! VMX off (CR4.VMXE cleared again), a failed disable leaves it on. The sequence (SDM vol. 3C
//! "Enabling and Entering VMX Operation", "VMXON Region"; VMXON/VMXOFF in vol. 3C chapter
//! "VMX Instruction Reference") has several decisions — is VMX there, may we use it, which
//! IA32_FEATURE_CONTROL write, which CR0/CR4 values, how to read a VMXON failure — that are
//! made here, so the kernel's `enable` is a straight line of `hw` calls:
//!
//! 1. [`plan_enable`] (CPUID, capability MSRs, current CR0/CR4) → [`EnablePlan`] or error;
//! 2. write IA32_FEATURE_CONTROL if the plan says so; write CR0 and CR4 (sets CR4.VMXE);
//! 3. write [`vmxon_region_header`] into the first dword of a zeroed, 4 KiB-aligned,
//!    write-back page and VMXON it; on failure restore the plan's original CR0/CR4 and return
//!    [`vmxon_error`].
//!
//! Disable: VMXOFF, then [`cr4_after_vmxoff`]; a VMXOFF failure maps through
//! [`vmxoff_error`]. Emergency disable (reboot, panic): VMXOFF may #UD if the CPU is not in
//! VMX operation, so the kernel runs it with a fault fixup, then clears CR4.VMXE; leaving VMX
//! operation is what unblocks INIT (DESIGN.md).
//!
//! `EnableError::Failed`/`DisableError::Failed` codes: 1-28 are VM-instruction error numbers
//! (VMfailValid), [`crate::vmcs::VMFAIL_INVALID_CODE`] is VMfailInvalid, and the `CODE_*`
//! constants below are refusals before any instruction ran.
#![forbid(unsafe_code)]

use hv::virt::{DisableError, EnableError};

use crate::caps::{
    CPUID_1_ECX_VMX, CapMsrs, FeatureControlAction, MemoryType, VmxUnavailable,
    feature_control_action,
};
use crate::guest::CR4_VMXE;
use crate::vmcs::{VmFail, VmInstructionError};

/// Failed code: the host CR0 has a bit set that VMX operation forbids (IA32_VMX_CR0_FIXED1).
pub const CODE_HOST_CR0: u32 = 0x101;
/// Failed code: the host CR4 has a bit set that VMX operation forbids (IA32_VMX_CR4_FIXED1).
pub const CODE_HOST_CR4: u32 = 0x102;
/// Failed code: the VMXON region/VMCS is not write-back or larger than a page.
pub const CODE_VMCS_LAYOUT: u32 = 0x103;

/// What the kernel does to enter VMX operation on one CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnablePlan {
    /// Value to write to IA32_FEATURE_CONTROL first (it was unlocked), if any.
    pub feature_control: Option<u64>,
    /// CR0 to load (fixed bits applied).
    pub cr0: u64,
    /// CR4 to load (fixed bits applied; VMXE set).
    pub cr4: u64,
    /// CR0 before, to restore if VMXON fails.
    pub original_cr0: u64,
    /// CR4 before, to restore if VMXON fails.
    pub original_cr4: u64,
    /// VMCS revision identifier for the VMXON region and every VMCS.
    pub revision_id: u32,
}

/// Decide how to enable VMX. `cpuid_1_ecx` is CPUID.1:ECX; `msrs` the capability MSRs (read
/// only when VMX exists, see [`CapMsrs::read_with`]); `cr0`/`cr4` the current values.
pub fn plan_enable(
    cpuid_1_ecx: u32,
    msrs: &CapMsrs,
    cr0: u64,
    cr4: u64,
) -> Result<EnablePlan, EnableError> {
    if cpuid_1_ecx & CPUID_1_ECX_VMX == 0 {
        return Err(EnableError::Unsupported);
    }
    if cr4 & CR4_VMXE != 0 {
        // Someone else turned VMX on (or left it on): not ours to take over.
        return Err(EnableError::Busy);
    }
    let feature_control = match feature_control_action(msrs.feature_control) {
        Ok(FeatureControlAction::Ready) => None,
        Ok(FeatureControlAction::Write(v)) => Some(v),
        Err(VmxUnavailable::DisabledByFirmware) => return Err(EnableError::Disabled),
        Err(VmxUnavailable::NotSupported) => return Err(EnableError::Unsupported),
    };
    let basic = msrs.basic();
    if basic.memory_type != MemoryType::WriteBack || basic.vmcs_size > 4096 {
        return Err(EnableError::Failed {
            code: CODE_VMCS_LAYOUT,
        });
    }
    // Setting must-be-1 bits (e.g. CR0.NE) is fine for the host; clearing bits it runs with
    // is not something to do behind the kernel's back.
    if cr0 & !msrs.cr0_fixed1 != 0 {
        return Err(EnableError::Failed {
            code: CODE_HOST_CR0,
        });
    }
    if cr4 & !msrs.cr4_fixed1 != 0 {
        return Err(EnableError::Failed {
            code: CODE_HOST_CR4,
        });
    }
    Ok(EnablePlan {
        feature_control,
        cr0: msrs.vmxon_cr0(cr0),
        cr4: msrs.vmxon_cr4(cr4),
        original_cr0: cr0,
        original_cr4: cr4,
        revision_id: basic.revision_id,
    })
}

/// The first dword of a VMXON region or an ordinary VMCS: the revision identifier with bit 31
/// (shadow-VMCS indicator) clear.
pub const fn vmxon_region_header(revision_id: u32) -> u32 {
    revision_id & 0x7FFF_FFFF
}

/// Map a failed VMXON onto the core's error. VMfailValid(15) "VMXON executed in VMX root
/// operation" means someone else is already in VMX operation; everything else (VMfailInvalid:
/// bad region address, wrong revision) is a failure with that code.
pub const fn vmxon_error(fail: VmFail) -> EnableError {
    match fail {
        VmFail::Valid(VmInstructionError::VmxonInRoot) => EnableError::Busy,
        other => EnableError::Failed { code: other.code() },
    }
}

/// Map a failed VMXOFF onto the core's error (VMfailValid(23): dual-monitor treatment active).
pub const fn vmxoff_error(fail: VmFail) -> DisableError {
    DisableError::Failed { code: fail.code() }
}

/// CR4 after VMXOFF: VMXE cleared.
pub const fn cr4_after_vmxoff(cr4: u64) -> u64 {
    cr4 & !CR4_VMXE
}

/// Whether VMX is on according to CR4 (what `Backend::is_enabled_hw` reads).
pub const fn is_enabled(cr4: u64) -> bool {
    cr4 & CR4_VMXE != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorded;

    const VMX: u32 = CPUID_1_ECX_VMX;
    const HERMIT_CR0: u64 = 0x8001_0033;
    const HERMIT_CR4: u64 = 0x0003_06A0;

    #[test]
    fn plan_on_bochs() {
        let m = recorded::BOCHS_HASWELL_4770.msrs;
        let p = plan_enable(VMX, &m, HERMIT_CR0, HERMIT_CR4).unwrap();
        assert_eq!(
            p,
            EnablePlan {
                feature_control: None,
                cr0: HERMIT_CR0,
                cr4: HERMIT_CR4 | CR4_VMXE,
                original_cr0: HERMIT_CR0,
                original_cr4: HERMIT_CR4,
                revision_id: 0x2B,
            }
        );
        assert!(is_enabled(p.cr4) && !is_enabled(p.original_cr4));
        assert_eq!(cr4_after_vmxoff(p.cr4), HERMIT_CR4);
        assert_eq!(vmxon_region_header(p.revision_id), 0x2B);
        assert_eq!(vmxon_region_header(0x8000_0004), 4);
    }

    #[test]
    fn refusals_map_onto_core_errors() {
        let m = recorded::SKYLAKE_I7_6700K.msrs;
        assert_eq!(
            plan_enable(0, &m, HERMIT_CR0, HERMIT_CR4),
            Err(EnableError::Unsupported)
        );
        assert_eq!(
            plan_enable(VMX, &m, HERMIT_CR0, HERMIT_CR4 | CR4_VMXE),
            Err(EnableError::Busy)
        );
        let locked_off = CapMsrs {
            feature_control: 0x1,
            ..m
        };
        assert_eq!(
            plan_enable(VMX, &locked_off, HERMIT_CR0, HERMIT_CR4),
            Err(EnableError::Disabled)
        );
        let unlocked = CapMsrs {
            feature_control: 0,
            ..m
        };
        assert_eq!(
            plan_enable(VMX, &unlocked, HERMIT_CR0, HERMIT_CR4)
                .unwrap()
                .feature_control,
            Some(0x5)
        );
        // CR0 without NE gets it; a CR4 bit beyond FIXED1 (LA57 on Skylake) is refused.
        assert_eq!(
            plan_enable(VMX, &m, HERMIT_CR0 & !0x20, HERMIT_CR4)
                .unwrap()
                .cr0,
            HERMIT_CR0
        );
        assert_eq!(
            plan_enable(VMX, &m, HERMIT_CR0, HERMIT_CR4 | (1 << 12)),
            Err(EnableError::Failed {
                code: CODE_HOST_CR4
            })
        );
        assert_eq!(
            plan_enable(VMX, &m, HERMIT_CR0 | (1 << 40), HERMIT_CR4),
            Err(EnableError::Failed {
                code: CODE_HOST_CR0
            })
        );
        let uc = CapMsrs {
            basic: m.basic & !(0xF << 50),
            ..m
        };
        assert_eq!(
            plan_enable(VMX, &uc, HERMIT_CR0, HERMIT_CR4),
            Err(EnableError::Failed {
                code: CODE_VMCS_LAYOUT
            })
        );
    }

    #[test]
    fn instruction_failures() {
        assert_eq!(
            vmxon_error(VmFail::Valid(VmInstructionError::VmxonInRoot)),
            EnableError::Busy
        );
        assert_eq!(
            vmxon_error(VmFail::Invalid),
            EnableError::Failed {
                code: crate::vmcs::VMFAIL_INVALID_CODE
            }
        );
        assert_eq!(
            vmxoff_error(VmFail::Valid(VmInstructionError::VmxoffDualMonitor)),
            DisableError::Failed { code: 23 }
        );
    }
}
