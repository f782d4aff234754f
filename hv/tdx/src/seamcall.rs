//! The SEAMCALL interface: leaf numbers, the register block, status codes, and the trait the
//! kernel implements with the instruction.
//!
//! SEAMCALL (opcode 66 0F 01 CF) is executed in VMX root operation; RAX holds the leaf number
//! (bits 15:0) and its version (bits 23:16), RCX, RDX, R8, R9, R10, R11 (and more for some
//! leaves) carry the operands, and on return RAX holds the completion status and the same
//! registers the outputs (*Intel TDX Module Base Architecture Specification*, "SEAMCALL
//! Instruction" and "Function Completion Status"; *TDX CPU Architectural Extensions*, SEAMCALL).
//! Outside VMX root operation SEAMCALL raises #UD; without an enabled SEAM range, #GP; if no
//! module is loaded it fails with VMfailInvalid (CF = 1). The kernel wrapper must therefore only
//! run after detection said *supported* and with VMX on, which is exactly what
//! [`crate::bringup`] guarantees for every call it makes.

use core::fmt;

use hv::virt::CpuId;

/// The host-side leaf functions the bring-up uses (TDX module ABI, "Host-Side (SEAMCALL)
/// Interface Functions"; numbers as in the *TDX Module ABI Reference* leaf table, the same ones
/// Linux uses in `arch/x86/virt/vmx/tdx/tdx.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Leaf {
    /// TDH.SYS.KEY.CONFIG: program the module's global KeyID on this CPU's package. Once per
    /// package, one package at a time.
    SysKeyConfig = 31,
    /// TDH.SYS.INFO: legacy enumeration (replaced by TDH.SYS.RD); listed, not used.
    SysInfo = 32,
    /// TDH.SYS.INIT: global module initialisation, once, before anything else.
    SysInit = 33,
    /// TDH.SYS.RD: read one global metadata field.
    SysRd = 34,
    /// TDH.SYS.LP.INIT: per-logical-processor initialisation; required on a CPU before any
    /// other SEAMCALL there.
    SysLpInit = 35,
    /// TDH.SYS.TDMR.INIT: initialise (part of) one TDMR; RDX returns the next address to do.
    SysTdmrInit = 36,
    /// TDH.PHYMEM.CACHE.WB: write back caches of private-keyed lines on this package.
    PhymemCacheWb = 40,
    /// TDH.SYS.CONFIG: hand the module the TDMR list and the global KeyID.
    SysConfig = 45,
}

impl Leaf {
    /// RAX for this leaf, version 0.
    pub const fn rax(self) -> u64 {
        self as u16 as u64
    }

    /// The spec's name, for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Leaf::SysKeyConfig => "TDH.SYS.KEY.CONFIG",
            Leaf::SysInfo => "TDH.SYS.INFO",
            Leaf::SysInit => "TDH.SYS.INIT",
            Leaf::SysRd => "TDH.SYS.RD",
            Leaf::SysLpInit => "TDH.SYS.LP.INIT",
            Leaf::SysTdmrInit => "TDH.SYS.TDMR.INIT",
            Leaf::PhymemCacheWb => "TDH.PHYMEM.CACHE.WB",
            Leaf::SysConfig => "TDH.SYS.CONFIG",
        }
    }
}

impl fmt::Display for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The general registers SEAMCALL reads and writes besides RAX's leaf. As input `rax` is
/// ignored (the leaf goes there); as output `rax` is the completion status, which is a
/// success or warning class (bit 63 clear) whenever the call returns `Ok`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Regs {
    /// Output: completion status.
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
}

/// A failed SEAMCALL: the completion status in RAX (bit 63 set), or one of the
/// Hermitage-defined codes below for the instruction itself failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TdxError {
    /// The status, as data.
    pub code: u64,
}

impl TdxError {
    /// Bit 63 of a completion status: error (TDX Module Base Spec, "Function Completion Status").
    pub const ERROR_BIT: u64 = 1 << 63;
    /// Bit 62: the error is not recoverable (the module is unusable).
    pub const NON_RECOVERABLE_BIT: u64 = 1 << 62;
    /// Status class 0xFF in bits 47:40 is never used by the TDX module; Hermitage (like Linux)
    /// uses it for failures of the instruction itself.
    pub const SOFTWARE_CLASS: u64 = Self::ERROR_BIT | (0xFF << 40);
    /// SEAMCALL failed with VMfailInvalid: no TDX module is loaded.
    pub const VMFAIL_INVALID: TdxError = TdxError {
        code: Self::SOFTWARE_CLASS | 0xFFFF_0000,
    };
    /// The kernel could not run the call on the CPU it names (mailbox timeout).
    pub const CPU_UNRESPONSIVE: TdxError = TdxError {
        code: Self::SOFTWARE_CLASS | 0xFFFF_0001,
    };
    /// TDX_RND_NO_ENTROPY: the CPU's entropy source ran dry (e.g. in TDH.SYS.KEY.CONFIG);
    /// recoverable, worth a bounded retry.
    pub const RND_NO_ENTROPY: u64 = 0x8000_0203_0000_0000;
    /// TDX_OPERAND_INVALID.
    pub const OPERAND_INVALID: u64 = 0xC000_0100_0000_0000;
    /// TDX_KEY_CONFIGURED: a warning (bit 63 clear), the package's key is already configured.
    pub const KEY_CONFIGURED: u64 = 0x0000_0815_0000_0000;

    /// The status class and details (bits 63:32), without the operand id.
    pub const fn status(self) -> u64 {
        self.code & 0xFFFF_FFFF_0000_0000
    }

    /// Whether the entropy source was exhausted (retry).
    pub const fn is_no_entropy(self) -> bool {
        self.status() == Self::RND_NO_ENTROPY
    }

    /// Whether this is one of Hermitage's own codes rather than a module status.
    pub const fn is_software(self) -> bool {
        self.code & Self::SOFTWARE_CLASS == Self::SOFTWARE_CLASS
    }
}

impl fmt::Display for TdxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == TdxError::VMFAIL_INVALID {
            f.write_str("no TDX module loaded (VMfailInvalid)")
        } else {
            write!(f, "status {:#018x}", self.code)
        }
    }
}

/// Classifies a raw completion status from RAX: `Ok` unless bit 63 is set.
pub const fn check_status(rax: u64) -> Result<(), TdxError> {
    if rax & TdxError::ERROR_BIT != 0 {
        Err(TdxError { code: rax })
    } else {
        Ok(())
    }
}

/// Issues one SEAMCALL on a CPU. No policy, no retries: that is [`crate::bringup`]'s job.
///
/// Contract for implementations: the call executes **on `cpu`** (the kernel forwards it through
/// that CPU's mailbox, as it does for VMXON); `Err` carries the status (bit 63 set) or a
/// [`TdxError`] software code; `Ok` returns the output registers with the status in `rax`.
/// The caller guarantees TDX was detected and VMX is on on `cpu`.
pub trait Seamcall {
    /// SEAMCALL `leaf` with `args` on `cpu`.
    fn seamcall(&mut self, cpu: CpuId, leaf: Leaf, args: Regs) -> Result<Regs, TdxError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_numbers_match_the_abi() {
        assert_eq!(Leaf::SysKeyConfig.rax(), 31);
        assert_eq!(Leaf::SysInit.rax(), 33);
        assert_eq!(Leaf::SysRd.rax(), 34);
        assert_eq!(Leaf::SysLpInit.rax(), 35);
        assert_eq!(Leaf::SysTdmrInit.rax(), 36);
        assert_eq!(Leaf::PhymemCacheWb.rax(), 40);
        assert_eq!(Leaf::SysConfig.rax(), 45);
    }

    #[test]
    fn status_classification() {
        assert_eq!(check_status(0), Ok(()));
        assert_eq!(check_status(TdxError::KEY_CONFIGURED), Ok(()));
        let e = check_status(TdxError::RND_NO_ENTROPY | 7).unwrap_err();
        assert!(e.is_no_entropy() && !e.is_software());
        assert!(TdxError::VMFAIL_INVALID.is_software());
        assert!(TdxError::CPU_UNRESPONSIVE.is_software());
        assert!(
            !TdxError {
                code: TdxError::OPERAND_INVALID
            }
            .is_software()
        );
        extern crate std;
        assert!(std::format!("{}", TdxError::VMFAIL_INVALID).contains("VMfailInvalid"));
    }
}
