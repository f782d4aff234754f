//! SEAMCALL on this CPU, and TDX detection from this CPU's CPUID and MSRs: the only code that
//! touches hardware for TDX. Every decision (which MSRs may be read, which leaf to call where,
//! what a status means, rollback) is in the `tdx` crate and host-tested there.
//!
//! SEAMCALL (66 0F 01 CF) enters the TDX module from VMX root operation: RAX = leaf (version in
//! bits 23:16), operands in RCX, RDX, R8-R11; on return RAX = completion status and the same
//! registers hold the outputs (Intel TDX Module Base Architecture Specification, "SEAMCALL";
//! TDX CPU Architectural Extensions). It raises #UD outside VMX root operation and #GP when the
//! SEAM range is not enabled; with no module loaded it fails with VMfailInvalid (CF = 1).
//! Hermit has no exception fixup for us, so the wrapper is only reachable once detection said
//! *supported* ([`mark_supported`]) and only runs on a CPU whose CR4.VMXE reads set.
//!
//! Wiring (not done here): a `Job::Seamcall { leaf, args }` in `arch::Job` whose handler calls
//! [`execute_here`] and replies with its result, and a [`PerCpuSeamcall`] built over
//! `percpu::run_on` for `tdx::Tdx` to use.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use hv::virt::CpuId;
use tdx::seamcall::{Leaf, Regs, Seamcall, TdxError, check_status};
use tdx::{CpuidFacts, TdxSupport};

/// Set once detection found a TDX host; SEAMCALL is never executed before.
static SUPPORTED: AtomicBool = AtomicBool::new(false);

/// Detects TDX from this CPU (call on the boot CPU, before [`mark_supported`]).
pub fn detect_here() -> TdxSupport {
    let cpuid = CpuidFacts::read(crate::hw::cpuid);
    let mut rdmsr = |msr: u32| {
        // SAFETY: CPL 0, and `tdx::detect` only asks for MSRs that CPUID (or an MSR it read
        // before) enumerates on this CPU, so RDMSR cannot #GP; these MSRs have no read side
        // effects.
        unsafe { vmx::hw::rdmsr(msr) }
    };
    tdx::detect(&cpuid, &mut rdmsr)
}

/// Allows SEAMCALL from now on if `support` says this is a TDX host.
pub fn mark_supported(support: &TdxSupport) {
    if support.is_supported() {
        SUPPORTED.store(true, Ordering::Release);
    }
}

/// SEAMCALL `leaf` on this CPU, after checking that TDX was detected and VMX is on here;
/// otherwise refuses with [`TdxError::VMFAIL_INVALID`] without executing anything. For the
/// per-CPU mailbox job handler.
pub fn execute_here(leaf: Leaf, args: Regs) -> Result<Regs, TdxError> {
    if !SUPPORTED.load(Ordering::Acquire) || !super::vmx::is_enabled() {
        return Err(TdxError::VMFAIL_INVALID);
    }
    // SAFETY: TDX was detected (SEAMRR enabled and locked, so no #GP) and CR4.VMXE is set on
    // this CPU, which our VMX enable path only leaves set in VMX root operation (no #UD). The
    // bring-up state machine passes only the operands the module ABI defines for `leaf`
    // (physical addresses it passes point at memory handed to the module).
    unsafe { seamcall(leaf, args) }
}

/// The SEAMCALL instruction.
///
/// # Safety
///
/// CPL 0, this CPU in VMX root operation, TDX detected as supported (the SEAM range enabled),
/// and `args` valid operands for `leaf` per the TDX module ABI: memory they name may be read or
/// written by the module.
#[inline]
pub unsafe fn seamcall(leaf: Leaf, args: Regs) -> Result<Regs, TdxError> {
    let mut rax = leaf.rax();
    let (mut rcx, mut rdx, mut r8, mut r9, mut r10, mut r11) =
        (args.rcx, args.rdx, args.r8, args.r9, args.r10, args.r11);
    let vmfail: u8;
    // SAFETY: preconditions forwarded to the caller. RBP is saved around the call because
    // older TDX modules may clobber it and it cannot be declared as an operand; the module
    // preserves RSP and every register not listed. Memory may change (no `nomem`), RFLAGS does.
    unsafe {
        asm!(
            "push rbp",
            ".byte 0x66, 0x0f, 0x01, 0xcf", // SEAMCALL
            "pop rbp",
            "setc {vmfail}",
            vmfail = out(reg_byte) vmfail,
            inout("rax") rax,
            inout("rcx") rcx,
            inout("rdx") rdx,
            inout("r8") r8,
            inout("r9") r9,
            inout("r10") r10,
            inout("r11") r11,
        );
    }
    if vmfail != 0 {
        return Err(TdxError::VMFAIL_INVALID);
    }
    check_status(rax)?;
    Ok(Regs {
        rax,
        rcx,
        rdx,
        r8,
        r9,
        r10,
        r11,
    })
}

/// [`Seamcall`] for `tdx::Tdx`: runs each call on the CPU it names through `run_on` (the
/// kernel's mailbox: it must execute [`execute_here`] on that CPU and return its result, or
/// `None` if the CPU did not answer).
pub struct PerCpuSeamcall<F>(pub F);

impl<F> core::fmt::Debug for PerCpuSeamcall<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PerCpuSeamcall")
    }
}

impl<F> Seamcall for PerCpuSeamcall<F>
where
    F: FnMut(CpuId, Leaf, Regs) -> Option<Result<Regs, TdxError>>,
{
    fn seamcall(&mut self, cpu: CpuId, leaf: Leaf, args: Regs) -> Result<Regs, TdxError> {
        (self.0)(cpu, leaf, args).unwrap_or(Err(TdxError::CPU_UNRESPONSIVE))
    }
}
