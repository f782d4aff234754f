//! The Hermitage boot loader: a Multiboot 1 image that starts the Hermit kernel.
//!
//! Hermit 0.11.0 has no loader on crates.io, and QEMU (`-kernel`) and GRUB (`multiboot`) can only
//! start 32-bit multiboot images. This binary is that image: `start.rs` switches the CPU from
//! 32-bit protected mode to long mode, then [`loader_main`] copies the command line and memory map
//! out of the multiboot information, loads and relocates the kernel ELF (the first module) with
//! `hermit-entry`, builds a device tree and the kernel's page tables, and enters the kernel the way
//! `hermit-entry` defines it. The decisions live in the library (`hermitage_boot`); this file and
//! its modules are the part that reads physical memory and touches the CPU.
//!
//! On the host this builds to an empty program, so that workspace-wide host builds succeed.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod bare;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("hermitage-boot is a multiboot image: build it for x86_64-unknown-none");
}
