//! Hermitage core: the arch-neutral, safe half of the hypervisor.
//!
//! Everything here decides something and nothing here touches hardware; the VMX and SVM crates
//! implement the small traits defined here with the actual instructions. It all runs under
//! `cargo test` on Linux.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod cpuid;
pub mod devices;
pub mod emulate;
pub mod exit;
pub mod features;
pub mod firmware;
pub mod irq;
pub mod mem;
pub mod msr;
pub mod time;
pub mod vcpu;
pub mod virt;
pub mod vm;
pub mod vpmu;
