//! Decisions of the Hermitage multiboot loader, kept free of hardware access.
//!
//! The loader binary (`main.rs`) is started by QEMU's `-kernel` or GRUB's `multiboot` command,
//! reads the multiboot information, loads the Hermit kernel ELF it was given as the first module
//! and jumps to it. Everything that can be decided from plain bytes and numbers lives here, in safe
//! code with host tests: decoding the multiboot structures ([`multiboot`]), where the kernel goes
//! and which page tables the kernel is entered with ([`layout`]), and the device tree that tells
//! the kernel about RAM and its command line ([`devicetree`]), and QEMU's fw_cfg file directory,
//! where the API token can come from ([`fwcfg`]).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod devicetree;
pub mod fwcfg;
pub mod layout;
pub mod multiboot;
