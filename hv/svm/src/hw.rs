//! The SVM instructions: one small function each, no decisions.
//!
//! Why: STYLE.md point 1 — everything that decides lives in the safe modules and is tested on
//! Linux; this file only executes privileged instructions. It is compiled for the kernel
//! target only (`x86_64-unknown-none`, ring 0).
//!
//! # Host state policy around VMRUN
//!
//! VMRUN saves and #VMEXIT restores only part of the host state (APM 15.5.1, 15.6): RAX, RSP,
//! RIP, RFLAGS, CR0/CR3/CR4, EFER, GDTR/IDTR and ES/CS/SS/DS. Not saved:
//!
//! - the general registers other than RAX/RSP — [`vmrun`] pushes every host GPR itself and
//!   loads/stores the guest's from a [`GuestRegs`];
//! - FS, GS, TR, LDTR (with their hidden bases), KernelGsBase, STAR/LSTAR/CSTAR/SFMASK and
//!   SYSENTER_*: these are switched only by VMLOAD/VMSAVE. Hermit keeps its per-core data in
//!   GS base and TLS in FS base, so [`vmrun`] does `VMSAVE host area; VMLOAD guest VMCB;
//!   VMRUN; VMSAVE guest VMCB; VMLOAD host area`, all with GIF = 0 so that no interrupt
//!   handler ever runs on the guest's GS base;
//! - x87/SSE/AVX state: the guest runs on the host's FPU registers. The kernel target is
//!   soft-float, so our code does not use them, but Hermit tasks and other guests do: the vCPU
//!   loop must [`fxsave`] the host's and [`fxrstor`] the guest's around [`vmrun`] (and XCR0
//!   stays the host's because XSETBV is intercepted).
//!
//! Interrupts: [`vmrun`] runs the guest with the host's RFLAGS.IF = 1 and the INTR intercept on
//! (V_INTR_MASKING = 1), so a host interrupt arriving while the guest runs causes an INTR exit
//! and stays pending while GIF = 0; after STGI it is delivered as soon as the caller's original
//! RFLAGS (restored at the end) allow. CLGI also holds NMIs and SMIs (APM 15.17 "Global
//! Interrupt Flag"). GIF is 1 again on return, which matters for INIT on reboot (DESIGN.md).

use crate::addr::HostPhys;
use crate::regs::{FxArea, GuestRegs, offsets};
use crate::vmcb::Efer;
use core::arch::asm;

/// Read an MSR.
///
/// # Safety
///
/// Must run at CPL 0 and `msr` must exist on this CPU (else #GP). Some MSRs have read side
/// effects; the caller is responsible for those.
#[inline]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees CPL 0 and that the MSR exists; RDMSR touches no memory.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    ((hi as u64) << 32) | lo as u64
}

/// Write an MSR.
///
/// # Safety
///
/// Must run at CPL 0; `msr` must exist and accept `value`. Writing an MSR can change how the
/// CPU executes everything after it (paging, system calls, SVM), so the caller must know that
/// the new value keeps the host's invariants.
#[inline]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: preconditions forwarded to the caller (see `# Safety`).
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// Read EFER.
#[inline]
pub fn read_efer() -> Efer {
    // This crate runs in ring 0 on x86_64 (the only configuration this module is compiled
    // for), where EFER always exists.
    // SAFETY: ring 0 and the MSR exists, as said just above; reading it has no side effects.
    Efer::from_bits_retain(unsafe { rdmsr(crate::caps::MSR_EFER) })
}

/// Write EFER (e.g. to set or clear SVME, APM 15.4).
///
/// # Safety
///
/// Must run at CPL 0. The new value must keep LME/LMA/NXE/SCE as the running host needs them;
/// clearing SVME while a guest is loaded on this CPU, or setting it while VM_CR.SVMDIS is set,
/// is the caller's responsibility (the latter #GPs).
#[inline]
pub unsafe fn write_efer(efer: Efer) {
    // SAFETY: forwarded to the caller.
    unsafe { wrmsr(crate::caps::MSR_EFER, efer.bits()) };
}

/// CPUID with a subleaf, returning EAX, EBX, ECX, EDX.
#[inline]
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    // SAFETY: CPUID exists on every x86_64 CPU and has no memory effects.
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// CLGI: clear the global interrupt flag (APM 15.17).
///
/// # Safety
///
/// EFER.SVME must be set (else #UD). With GIF = 0 interrupts, NMIs, SMIs and INIT are held:
/// the caller must set GIF again ([`stgi`]) soon, or the CPU stops responding (and a reboot
/// path's INIT is lost).
#[inline]
pub unsafe fn clgi() {
    // SAFETY: forwarded to the caller; CLGI touches no memory.
    unsafe { asm!("clgi", options(nomem, nostack)) };
}

/// STGI: set the global interrupt flag.
///
/// # Safety
///
/// EFER.SVME must be set (else #UD). Held interrupts are delivered right after, so the host
/// state they run on (GS base!) must be the host's.
#[inline]
pub unsafe fn stgi() {
    // SAFETY: forwarded to the caller; STGI touches no memory.
    unsafe { asm!("stgi", options(nomem, nostack)) };
}

/// VMSAVE: store FS, GS, TR, LDTR, KernelGsBase, STAR/LSTAR/CSTAR/SFMASK and SYSENTER_* into
/// the VMCB-format page at `pa` (APM 15.5.2).
///
/// # Safety
///
/// EFER.SVME must be set; `pa` must be the 4 KiB-aligned physical address of a page the caller
/// owns exclusively (the CPU writes to it behind Rust's back).
#[inline]
pub unsafe fn vmsave(pa: HostPhys) {
    // SAFETY: forwarded to the caller; the memory clobber covers the write.
    unsafe { asm!("vmsave rax", in("rax") pa.as_u64(), options(nostack, preserves_flags)) };
}

/// VMLOAD: load the state VMSAVE stores from the VMCB-format page at `pa`.
///
/// # Safety
///
/// EFER.SVME must be set; `pa` must be the 4 KiB-aligned physical address of a valid VMCB-format
/// page. Loading a foreign GS/FS base breaks the host until the host's state is loaded back,
/// so in practice only with GIF = 0 (see [`vmrun`]).
#[inline]
pub unsafe fn vmload(pa: HostPhys) {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("vmload rax", in("rax") pa.as_u64(), options(nostack, preserves_flags)) };
}

/// INVLPGA: invalidate the TLB entry for guest-virtual `addr` in `asid` (APM 15.16.2).
///
/// # Safety
///
/// EFER.SVME must be set. Invalidating translations has no memory-safety effect on the host,
/// but this is an SVM instruction like the others and #UDs without SVME.
#[inline]
pub unsafe fn invlpga(addr: u64, asid: u32) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("invlpga rax, ecx", in("rax") addr, in("ecx") asid, options(nostack, preserves_flags))
    };
}

/// FXSAVE64 into `area`.
///
/// # Safety
///
/// CR4.OSFXSR must be set (else the SSE part is not saved) and CR0.EM clear (else #UD).
#[inline]
pub unsafe fn fxsave(area: &mut FxArea) {
    // `area` is a valid, 16-byte aligned, exclusively borrowed 512-byte buffer.
    // SAFETY: the buffer is as said just above; the remaining preconditions are the caller's.
    unsafe {
        asm!("fxsave64 [{}]", in(reg) area as *mut FxArea, options(nostack, preserves_flags))
    };
}

/// FXRSTOR64 from `area`.
///
/// # Safety
///
/// As for [`fxsave`]; additionally `area` must hold a valid image (reserved MXCSR bits set
/// #GP), e.g. one written by [`fxsave`] or [`FxArea::reset`].
#[inline]
pub unsafe fn fxrstor(area: &FxArea) {
    // SAFETY: `area` is a valid 16-byte aligned 512-byte buffer; the rest is the caller's.
    unsafe {
        asm!("fxrstor64 [{}]", in(reg) area as *const FxArea, options(nostack, preserves_flags))
    };
}

/// Run the guest described by the VMCB at `vmcb` until the next #VMEXIT.
///
/// Sequence (GIF = 0 throughout, every host GPR and RFLAGS pushed first and restored last):
/// CLGI; VMSAVE `host_area`; VMLOAD `vmcb`; STI; load guest GPRs from `regs`; VMRUN `vmcb`;
/// store guest GPRs to `regs`; VMSAVE `vmcb`; VMLOAD `host_area`; CLI; STGI; restore RFLAGS.
///
/// # Safety
///
/// - EFER.SVME is set and VM_HSAVE_PA holds a valid host save page on this CPU;
/// - `vmcb` is the 4 KiB-aligned physical address of a VMCB that passed
///   [`crate::guest::check_vmrun_consistency`] and that no one else accesses during the call
///   (the CPU reads and writes it; hold the `&mut Vmcb` across the call);
/// - `host_area` is the physical address of a 4 KiB page owned by this CPU for host VMSAVE
///   state, not the VMCB and not the VM_HSAVE_PA page;
/// - the nested page tables behind the VMCB's N_CR3 map only memory the guest may use;
/// - the caller saves/restores FPU state as described in the module documentation.
// One out-of-line copy: the world switch is easier to audit in a disassembly.
#[inline(never)]
pub unsafe fn vmrun(vmcb: HostPhys, host_area: HostPhys, regs: &mut GuestRegs) {
    // SAFETY: the caller's guarantees above make every SVM instruction valid; all host GPRs
    // and RFLAGS are pushed before anything is changed and popped at the end, RAX is declared
    // clobbered (it ends up holding `host_area`), RSP is restored by #VMEXIT to its value at
    // VMRUN, and `regs` is an exclusive borrow the asm reads and writes through RDI.
    unsafe {
        asm!(
            "pushfq",
            "push rbp",
            "push rbx",
            "push rcx",
            "push rdx",
            "push rsi",
            "push rdi",
            "push r8",
            "push r9",
            "push r10",
            "push r11",
            "push r12",
            "push r13",
            "push r14",
            "push r15",
            // Working slots: [rsp+16] = regs, [rsp+8] = host area, [rsp] = VMCB.
            "push rdi",
            "push rsi",
            "push rax",
            "clgi",
            "mov rax, rsi",
            "vmsave rax",
            "mov rax, [rsp]",
            "vmload rax",
            // Host IF = 1 while the guest runs: physical interrupts exit (INTR intercept).
            "sti",
            "mov rbx, [rdi + {rbx}]",
            "mov rcx, [rdi + {rcx}]",
            "mov rdx, [rdi + {rdx}]",
            "mov rsi, [rdi + {rsi}]",
            "mov rbp, [rdi + {rbp}]",
            "mov r8, [rdi + {r8}]",
            "mov r9, [rdi + {r9}]",
            "mov r10, [rdi + {r10}]",
            "mov r11, [rdi + {r11}]",
            "mov r12, [rdi + {r12}]",
            "mov r13, [rdi + {r13}]",
            "mov r14, [rdi + {r14}]",
            "mov r15, [rdi + {r15}]",
            "mov rdi, [rdi + {rdi}]",
            "vmrun rax",
            // #VMEXIT: GIF = 0, RAX = VMCB address, RSP as at VMRUN.
            "push rdi",
            "mov rdi, [rsp + 24]",
            "mov [rdi + {rbx}], rbx",
            "mov [rdi + {rcx}], rcx",
            "mov [rdi + {rdx}], rdx",
            "mov [rdi + {rsi}], rsi",
            "mov [rdi + {rbp}], rbp",
            "mov [rdi + {r8}], r8",
            "mov [rdi + {r9}], r9",
            "mov [rdi + {r10}], r10",
            "mov [rdi + {r11}], r11",
            "mov [rdi + {r12}], r12",
            "mov [rdi + {r13}], r13",
            "mov [rdi + {r14}], r14",
            "mov [rdi + {r15}], r15",
            "pop qword ptr [rdi + {rdi}]",
            "pop rax",
            "vmsave rax",
            "pop rax",
            "vmload rax",
            "cli",
            "stgi",
            "add rsp, 8",
            "pop r15",
            "pop r14",
            "pop r13",
            "pop r12",
            "pop r11",
            "pop r10",
            "pop r9",
            "pop r8",
            "pop rdi",
            "pop rsi",
            "pop rdx",
            "pop rcx",
            "pop rbx",
            "pop rbp",
            "popfq",
            rbx = const offsets::RBX,
            rcx = const offsets::RCX,
            rdx = const offsets::RDX,
            rsi = const offsets::RSI,
            rdi = const offsets::RDI,
            rbp = const offsets::RBP,
            r8 = const offsets::R8,
            r9 = const offsets::R9,
            r10 = const offsets::R10,
            r11 = const offsets::R11,
            r12 = const offsets::R12,
            r13 = const offsets::R13,
            r14 = const offsets::R14,
            r15 = const offsets::R15,
            inout("rax") vmcb.as_u64() => _,
            in("rsi") host_area.as_u64(),
            in("rdi") regs as *mut GuestRegs,
        );
    }
}
