//! Guest registers that the VMCS does not hold.
//!
//! Why: VM entry and VM exit switch RSP, RIP and RFLAGS through the VMCS, but no other general
//! register, not even RAX (unlike SVM), and not CR2 (SDM vol. 3C "Loading Guest State" and
//! "Saving Guest State": only the guest-state area fields are loaded/saved). So the world switch
//! in `crate::hw` loads these from memory right before VMLAUNCH/VMRESUME and stores them right
//! after the VM exit. The layout is fixed (`repr(C)`) and its offsets are exported as constants
//! for the assembly.
#![forbid(unsafe_code)]

use core::mem::offset_of;

/// The guest GPRs other than RSP (which lives in the VMCS), plus CR2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct GuestRegs {
    /// RAX.
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RBP.
    pub rbp: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
    /// CR2: the guest's last page-fault address. VMX does not switch it, and a host page
    /// fault between exit and entry would overwrite it.
    pub cr2: u64,
}

/// Byte offsets of each field, for the world-switch assembly.
pub mod offsets {
    use super::*;
    /// `GuestRegs::rax`.
    pub const RAX: usize = offset_of!(GuestRegs, rax);
    /// `GuestRegs::rbx`.
    pub const RBX: usize = offset_of!(GuestRegs, rbx);
    /// `GuestRegs::rcx`.
    pub const RCX: usize = offset_of!(GuestRegs, rcx);
    /// `GuestRegs::rdx`.
    pub const RDX: usize = offset_of!(GuestRegs, rdx);
    /// `GuestRegs::rsi`.
    pub const RSI: usize = offset_of!(GuestRegs, rsi);
    /// `GuestRegs::rdi`.
    pub const RDI: usize = offset_of!(GuestRegs, rdi);
    /// `GuestRegs::rbp`.
    pub const RBP: usize = offset_of!(GuestRegs, rbp);
    /// `GuestRegs::r8`.
    pub const R8: usize = offset_of!(GuestRegs, r8);
    /// `GuestRegs::r9`.
    pub const R9: usize = offset_of!(GuestRegs, r9);
    /// `GuestRegs::r10`.
    pub const R10: usize = offset_of!(GuestRegs, r10);
    /// `GuestRegs::r11`.
    pub const R11: usize = offset_of!(GuestRegs, r11);
    /// `GuestRegs::r12`.
    pub const R12: usize = offset_of!(GuestRegs, r12);
    /// `GuestRegs::r13`.
    pub const R13: usize = offset_of!(GuestRegs, r13);
    /// `GuestRegs::r14`.
    pub const R14: usize = offset_of!(GuestRegs, r14);
    /// `GuestRegs::r15`.
    pub const R15: usize = offset_of!(GuestRegs, r15);
    /// `GuestRegs::cr2`.
    pub const CR2: usize = offset_of!(GuestRegs, cr2);
}

const _: () = assert!(core::mem::size_of::<GuestRegs>() == 16 * 8);
const _: () = assert!(offsets::RAX == 0 && offsets::R15 == 14 * 8 && offsets::CR2 == 15 * 8);

/// The 512-byte FXSAVE64 image (legacy x87/SSE state). VM entry and exit do not switch
/// x87/SSE/AVX registers, so the vCPU loop saves the host's and loads the guest's around the
/// world switch (`crate::hw::fxsave`/`crate::hw::fxrstor`). XCR0 stays the host's because
/// XSETBV always exits in VMX non-root operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct FxArea(pub [u8; 512]);

impl FxArea {
    /// The architectural FINIT/reset image: FCW = 0x037F, MXCSR = 0x1F80, everything else 0.
    pub const fn reset() -> Self {
        let mut a = [0u8; 512];
        a[0] = 0x7F;
        a[1] = 0x03;
        a[24] = 0x80;
        a[25] = 0x1F;
        Self(a)
    }
}

impl Default for FxArea {
    fn default() -> Self {
        Self::reset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(offsets::RBX, 8);
        assert_eq!(offsets::RDI, 40);
        assert_eq!(offsets::R8, 56);
        assert_eq!(core::mem::align_of::<FxArea>(), 16);
        let fx = FxArea::default();
        assert_eq!(u16::from_le_bytes([fx.0[0], fx.0[1]]), 0x037F);
        assert_eq!(
            u32::from_le_bytes([fx.0[24], fx.0[25], fx.0[26], fx.0[27]]),
            0x1F80
        );
    }
}
