//! Hermitage's TDX awareness: is this a TDX host, and if so, the TDX module's bring-up as a
//! sequenced, failure-tolerant state machine on top of the per-CPU virt layer.
//!
//! # Why this crate exists
//!
//! Intel TDX runs confidential guests (TDs) under a firmware-loaded *TDX module* that lives in
//! the SEAM range and is called from VMX root operation with SEAMCALL (*Intel TDX Module Base
//! Architecture Specification*, "SEAMCALL Instruction"; *Intel TDX CPU Architectural
//! Extensions*). Before any TD can exist the host kernel must initialise that module: global
//! init, per-logical-processor init on every CPU, configuration of its memory (TDMRs) and of
//! its global private key on every package (*TDX Module Base Spec*, "Intel TDX Module
//! Lifecycle: Initialization and Configuration"). Each of those needs VMX on on the CPU that
//! issues it, which is why TDX is a *user* of [`hv::virt`] ([`hv::virt::User::TrustedModule`]),
//! next to the hypervisor itself, as in the Linux series that moved VMXON into a refcounted
//! layer shared by KVM and TDX (`shared/background/`).
//!
//! The split (STYLE.md point 1): everything here is safe, `no_std`, and decides; it runs under
//! `cargo test` against a simulated TDX module. The one instruction, SEAMCALL, is the kernel's
//! `arch/seamcall.rs`, behind the [`Seamcall`] trait.
//!
//! - [`detect`](mod@detect): CPUID + MSRs (only those enumerated) → [`TdxSupport`]; `tdx=` request →
//!   [`Decision`], never fatal.
//! - [`seamcall`]: leaf numbers, register block, status codes, the [`Seamcall`] trait.
//! - [`bringup`]: the module state machine ([`Tdx`]), per-CPU init through the virt layer,
//!   the offline veto, guest KeyID bookkeeping, the reboot order.
//!
//! Not here yet: TD guests (no TDH.MNG.*/TDH.VP.*), building TDMRs and PAMTs from the memory
//! map, reading module metadata with TDH.SYS.RD. None of this was run on TDX silicon.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod bringup;
pub mod detect;
pub mod seamcall;

#[cfg(test)]
mod sim;

pub use bringup::{
    BringupError, BringupStep, Cause, CpuTdxError, ModulePlan, ModuleState, PlanError, Tdmr, Tdx,
    Topology,
};
pub use detect::{
    CpuidFacts, Decision, KeyId, KeyIdRange, MsrReader, TdxAbsence, TdxRequest, TdxSupport, decide,
    detect,
};
pub use seamcall::{Leaf, Regs, Seamcall, TdxError};
