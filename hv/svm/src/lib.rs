//! Hermitage's AMD SVM backend.
//!
//! Why this crate exists: everything SVM-specific that *decides* something lives here as plain,
//! host-tested Rust (the VMCB layout, exit decoding, instruction lengths for CPUs without
//! NRIPS, capability decoding, ASID management, guest VMCB construction and the VMRUN
//! consistency check, nested page tables). The few instructions that touch hardware (VMRUN,
//! VMLOAD/VMSAVE, CLGI/STGI, RDMSR/WRMSR, ...) are in `hw`, one small function each, compiled
//! only for the kernel target. See `shared/STYLE.md` points 1, 2, 6 and 7.
//!
//! All hardware facts cite the *AMD64 Architecture Programmer's Manual, Volume 2: System
//! Programming* (publication 24593), abbreviated "APM" below: chapter 15 ("Secure Virtual
//! Machine"), appendix B ("Layout of VMCB") and appendix C ("SVM Intercept Exit Codes").
//!
//! Only `hw` (kernel target only) may contain `unsafe`; every other module starts with `#![forbid(unsafe_code)]`.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod addr;
pub mod asid;
pub mod caps;
pub mod exit;
pub mod guest;
pub mod insn_len;
pub mod neutral;
pub mod npt;
pub mod permmap;
pub mod regs;
pub mod vmcb;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
#[allow(unsafe_code)]
pub mod hw;

pub use addr::{GuestPhys, HostPhys};
pub use exit::{ExitCode, ExitSnapshot, SvmExit};
pub use regs::GuestRegs;
pub use vmcb::Vmcb;
