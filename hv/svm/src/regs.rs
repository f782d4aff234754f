//! Guest general-purpose registers that the VMCB does not hold.
//!
//! Why: VMRUN/#VMEXIT switch only RAX, RSP and RIP (they live in the VMCB state-save area);
//! every other general register keeps whatever value it had, in both directions (APM 15.5.1
//! "Basic Operation", 15.6 "#VMEXIT"). So the world switch in `crate::hw` loads these from
//! memory before VMRUN and stores them back after #VMEXIT. The layout is fixed (`repr(C)`) and
//! its offsets are exported as constants for the assembly.
#![forbid(unsafe_code)]

use core::mem::offset_of;

/// The guest GPRs other than RAX and RSP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct GuestRegs {
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
}

/// Byte offsets of each field, for the world-switch assembly.
pub mod offsets {
    use super::*;
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
}

const _: () = assert!(core::mem::size_of::<GuestRegs>() == 14 * 8);
const _: () = assert!(offsets::RBX == 0 && offsets::R15 == 13 * 8);

/// The 512-byte FXSAVE64 image (legacy x87/SSE state). The guest runs on the host's FPU/SSE
/// registers (VMRUN does not switch them), so the vCPU loop must save the host's and load the
/// guest's around VMRUN; `crate::hw::fxsave`/`crate::hw::fxrstor` take this type.
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
