//! Hermitage's Intel VMX backend.
//!
//! Why this crate exists: everything VMX-specific that *decides* something lives here as plain,
//! host-tested Rust: capability-MSR decoding and the VM-execution/exit/entry controls derived
//! from them ([`caps`], [`controls`]), the VMCS field encodings, exit reasons and
//! VM-instruction errors ([`vmcs`]), exit decoding ([`exit`]), EPT construction ([`ept`]), the
//! guest- and host-state areas with the VM-entry checks a CPU would make ([`guest`], [`host`]),
//! and the enable/disable decisions ([`enable`]). The few instructions that touch hardware
//! (VMXON, VMREAD, VMWRITE, VMLAUNCH/VMRESUME, INVEPT, RDMSR, ...) are in `hw`, one small
//! function each, compiled only for the kernel target. See `shared/STYLE.md` points 1, 2, 6, 7.
//!
//! Hardware facts cite the *Intel 64 and IA-32 Architectures Software Developer's Manual*,
//! abbreviated "SDM": volume 3C chapters 24-28 (VMX; "Virtual Machine Control Structures",
//! "VMX Non-Root Operation", "VM Entries", "VM Exits", "VMX Support for Address Translation";
//! section numbers shift by one or two between editions, so titles are given too), volume 3D
//! appendices A ("VMX Capability Reporting Facility"), B ("Field Encoding in VMCS") and C
//! ("VMX Basic Exit Reasons").
//!
//! Only `hw` (kernel target only) may contain `unsafe`; every other module starts with
//! `#![forbid(unsafe_code)]`.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod addr;
pub mod caps;
pub mod controls;
pub mod enable;
pub mod ept;
pub mod exit;
pub mod guest;
pub mod host;
pub mod msrs;
pub mod neutral;
pub mod regs;
pub mod residency;
pub mod vmcs;

#[cfg(test)]
mod recorded;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
#[allow(unsafe_code)]
pub mod hw;

pub use addr::{GuestPhys, HostPhys};
pub use caps::CapMsrs;
pub use controls::VmxConfig;
pub use exit::{ExitSnapshot, VmxExit};
pub use regs::GuestRegs;
pub use vmcs::{ExitReason, VmInstructionError, VmcsField};
