//! The VMX instructions: one small function each, no decisions.
//!
//! Why: STYLE.md point 1 — everything that decides lives in the safe modules and is tested on
//! Linux; this file only executes privileged instructions. It is compiled for the kernel
//! target only (`x86_64-unknown-none`, ring 0).
//!
//! Results: VMX instructions report VMsucceed, VMfailInvalid (CF = 1: no current VMCS) or
//! VMfailValid (ZF = 1: error number in the current VMCS's VM-instruction error field), SDM
//! vol. 3C "Conventions" in the VMX instruction reference. Each wrapper turns the flags into
//! `Result<_, VmFail>`, reading the error number for VMfailValid.
//!
//! # Host state policy around VM entry
//!
//! VM exit loads the host-state area of the current VMCS (see `crate::host`): CR0/CR3/CR4,
//! RSP, RIP, segment selectors, FS/GS/TR/GDTR/IDTR bases, SYSENTER MSRs, EFER and PAT. So:
//!
//! - HOST_RSP and HOST_RIP are written by [`vmlaunch_or_resume`] itself on every entry (the
//!   stack pointer after it pushed the host GPRs, and the label after VMLAUNCH/VMRESUME);
//! - everything else in the host-state area is the kernel's to write from its registers
//!   before the first entry on a CPU, and again when a value may have changed. Hermit keeps
//!   TLS in FS base and per-core data in GS base: HOST_FS_BASE and HOST_GS_BASE must hold the
//!   current values (IA32_FS_BASE/IA32_GS_BASE) or the first interrupt after an exit runs on
//!   another core's data;
//! - the general registers are not part of either area: [`vmlaunch_or_resume`] pushes every
//!   host GPR and RFLAGS and loads/stores the guest's from a [`GuestRegs`] (including RAX and
//!   CR2, which VMX does not switch either);
//! - x87/SSE/AVX state is not switched: the vCPU loop [`fxsave`]s the host's and
//!   [`fxrstor`]s the guest's around the world switch.
//!
//! Interrupts: [`vmlaunch_or_resume`] runs with RFLAGS.IF = 0 from before HOST_RSP is written
//! until its end, so no host interrupt handler runs between VMWRITE and VMLAUNCH or on guest
//! registers; interrupts arriving while the guest runs cause exits ("external-interrupt
//! exiting") and, with "acknowledge interrupt on exit", their vector is in the exit
//! interruption information for the kernel to dispatch. NMIs are not blocked in that window.

use core::arch::asm;

use crate::addr::HostPhys;
use crate::caps::{InveptType, InvvpidType};
use crate::regs::{FxArea, GuestRegs, offsets};
use crate::vmcs::{VmFail, VmInstructionError, VmcsField};

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
/// CPU executes everything after it (paging, system calls, VMX), so the caller must know that
/// the new value keeps the host's invariants.
#[inline]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: preconditions forwarded to the caller (see `# Safety`).
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// CPUID with a subleaf, returning EAX, EBX, ECX, EDX.
#[inline]
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    // SAFETY: CPUID exists on every x86_64 CPU and has no memory effects.
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Read CR0.
#[inline]
pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: this module runs in ring 0 (the only configuration it is compiled for), where
    // reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Read CR3.
#[inline]
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: ring 0, no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Read CR4.
#[inline]
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: ring 0, no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Write CR0 (e.g. the value from `crate::enable::EnablePlan`).
///
/// # Safety
///
/// Must run at CPL 0. The value must keep the host running: PE, PG, WP as the kernel needs
/// them; a value outside the VMX fixed bits #GPs in VMX operation.
#[inline]
pub unsafe fn write_cr0(value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("mov cr0, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Write CR4 (e.g. to set or clear VMXE).
///
/// # Safety
///
/// Must run at CPL 0. The value must keep PAE/PGE/OSFXSR/... as the host needs them; clearing
/// VMXE while in VMX operation #GPs, and setting bits the CPU lacks #GPs.
#[inline]
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Turn the flags after a VMX instruction into a result, reading the VM-instruction error for
/// VMfailValid.
#[inline]
fn result(cf: u8, zf: u8) -> Result<(), VmFail> {
    if cf != 0 {
        Err(VmFail::Invalid)
    } else if zf != 0 {
        Err(VmFail::Valid(VmInstructionError::from_raw(
            instruction_error(),
        )))
    } else {
        Ok(())
    }
}

/// The VM-instruction error field of the current VMCS (after VMfailValid there is one).
#[inline]
fn instruction_error() -> u32 {
    let v: u64;
    let field = VmcsField::VmInstructionError.encoding() as u64;
    // SAFETY: only called after a VMX instruction reported VMfailValid, i.e. in VMX operation
    // with a current VMCS; VMREAD of a read-only field has no side effects.
    unsafe { asm!("vmread {}, {}", out(reg) v, in(reg) field, options(nostack)) };
    v as u32
}

/// VMXON: enter VMX root operation with the VMXON region at `pa` (SDM vol. 3C "VMXON").
///
/// # Safety
///
/// CPL 0, CR4.VMXE set, CR0/CR4 within the fixed bits, IA32_FEATURE_CONTROL locked with VMX
/// outside SMX (else #GP); `pa` is the 4 KiB-aligned physical address of a write-back page
/// owned by this CPU for as long as it stays in VMX operation, starting with the revision
/// identifier (`crate::enable::vmxon_region_header`). In VMX operation INIT is blocked until
/// [`vmxoff`].
#[inline]
pub unsafe fn vmxon(pa: HostPhys) -> Result<(), VmFail> {
    let addr = pa.as_u64();
    let (cf, zf): (u8, u8);
    // SAFETY: forwarded to the caller; the operand is a valid 8-byte stack slot.
    unsafe {
        asm!("vmxon qword ptr [{}]", "setc {}", "setz {}", in(reg) &addr, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    // VMXON in VMX root operation with a current VMCS is the only VMfailValid (error 15).
    result(cf, zf)
}

/// VMXOFF: leave VMX operation.
///
/// # Safety
///
/// CPL 0 and in VMX root operation (else #UD, which the emergency path must tolerate). No
/// VMCS of this CPU may be needed afterwards without VMCLEAR first (its data may be cached).
#[inline]
pub unsafe fn vmxoff() -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("vmxoff", "setc {}", "setz {}", out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    result(cf, zf)
}

/// VMCLEAR: flush the VMCS at `pa` to memory and make it clear (launch state "clear"); if it
/// was current, there is no current VMCS afterwards.
///
/// # Safety
///
/// VMX root operation; `pa` is the 4 KiB-aligned physical address of a VMCS region (not the
/// VMXON region) that the caller owns.
#[inline]
pub unsafe fn vmclear(pa: HostPhys) -> Result<(), VmFail> {
    let addr = pa.as_u64();
    let (cf, zf): (u8, u8);
    // SAFETY: forwarded to the caller; the operand is a valid 8-byte stack slot.
    unsafe {
        asm!("vmclear qword ptr [{}]", "setc {}", "setz {}", in(reg) &addr, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    result(cf, zf)
}

/// VMPTRLD: make the VMCS at `pa` current on this CPU.
///
/// # Safety
///
/// VMX root operation; `pa` is the 4 KiB-aligned physical address of a VMCS region the caller
/// owns, initialised with the revision identifier, and not current or active on another CPU
/// (VMCLEAR it there first).
#[inline]
pub unsafe fn vmptrld(pa: HostPhys) -> Result<(), VmFail> {
    let addr = pa.as_u64();
    let (cf, zf): (u8, u8);
    // SAFETY: forwarded to the caller; the operand is a valid 8-byte stack slot.
    unsafe {
        asm!("vmptrld qword ptr [{}]", "setc {}", "setz {}", in(reg) &addr, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    result(cf, zf)
}

/// VMPTRST: the current VMCS pointer (all ones if there is none).
///
/// # Safety
///
/// VMX root operation (else #UD).
#[inline]
pub unsafe fn vmptrst() -> u64 {
    let mut addr: u64 = 0;
    // SAFETY: forwarded to the caller; VMPTRST writes the 8-byte stack slot.
    unsafe { asm!("vmptrst qword ptr [{}]", in(reg) &mut addr, options(nostack, preserves_flags)) };
    addr
}

/// VMREAD a field of the current VMCS.
///
/// # Safety
///
/// VMX root operation (else #UD). Reading has no side effects; the caller must have made the
/// intended VMCS current.
#[inline]
pub unsafe fn vmread(field: VmcsField) -> Result<u64, VmFail> {
    let v: u64;
    let (cf, zf): (u8, u8);
    // SAFETY: forwarded to the caller; register operands only.
    unsafe {
        asm!("vmread {}, {}", "setc {}", "setz {}", out(reg) v, in(reg) field.encoding() as u64, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    result(cf, zf).map(|()| v)
}

/// VMWRITE a field of the current VMCS.
///
/// # Safety
///
/// VMX root operation (else #UD). The value becomes guest, host or control state of the next
/// VM entry: host-state and control fields (bitmap addresses, EPTP, ...) must describe memory
/// the guest may use and a host the exit can return to (`crate::host::check_host_state`).
#[inline]
pub unsafe fn vmwrite(field: VmcsField, value: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: forwarded to the caller; register operands only.
    unsafe {
        asm!("vmwrite {}, {}", "setc {}", "setz {}", in(reg) field.encoding() as u64, in(reg) value, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    result(cf, zf)
}

/// INVEPT: invalidate EPT-derived translations for `eptp` (single-context) or all.
///
/// # Safety
///
/// VMX root operation, INVEPT supported with this type (`crate::caps::EptVpidCap`).
/// Invalidation itself cannot break memory safety, but the instruction #UDs or fails
/// otherwise.
#[inline]
pub unsafe fn invept(kind: InveptType, eptp: u64) -> Result<(), VmFail> {
    let desc: [u64; 2] = [eptp, 0];
    let (cf, zf): (u8, u8);
    // SAFETY: forwarded to the caller; the descriptor is a valid 16-byte stack object.
    unsafe {
        asm!("invept {}, [{}]", "setc {}", "setz {}", in(reg) kind as u64, in(reg) &desc, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    result(cf, zf)
}

/// INVVPID: invalidate translations tagged with `vpid` (and `addr` for individual-address).
///
/// # Safety
///
/// VMX root operation, INVVPID supported with this type; `vpid` nonzero except for
/// all-context.
#[inline]
pub unsafe fn invvpid(kind: InvvpidType, vpid: u16, addr: u64) -> Result<(), VmFail> {
    let desc: [u64; 2] = [vpid as u64, addr];
    let (cf, zf): (u8, u8);
    // SAFETY: forwarded to the caller; the descriptor is a valid 16-byte stack object.
    unsafe {
        asm!("invvpid {}, [{}]", "setc {}", "setz {}", in(reg) kind as u64, in(reg) &desc, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    result(cf, zf)
}

/// FXSAVE64 into `area`.
///
/// # Safety
///
/// CR4.OSFXSR must be set (else the SSE part is not saved) and CR0.EM clear (else #UD).
#[inline]
pub unsafe fn fxsave(area: &mut FxArea) {
    // SAFETY: `area` is a valid, 16-byte aligned, exclusively borrowed 512-byte buffer;
    // remaining preconditions are the caller's.
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

/// Enter the guest of the current VMCS (VMLAUNCH if `launched` is false, else VMRESUME) and
/// return at its next VM exit, with the guest GPRs and CR2 stored in `regs`.
///
/// Sequence: push every host GPR and RFLAGS; CLI; VMWRITE HOST_RSP (the stack pointer now,
/// with `regs` on top) and HOST_RIP (the exit label); load guest CR2 and GPRs from `regs`;
/// VMLAUNCH/VMRESUME. On VM exit the CPU resumes at the label with the host RSP: store the
/// guest GPRs and CR2 to `regs`, then restore RFLAGS and the host GPRs. If the entry fails
/// (VMfailInvalid/VMfailValid: the guest never ran and `regs` is unchanged), the failure is
/// returned; a VM entry that fails *after* loading guest state instead exits with reason bit 31
/// set, which is an `Ok` here and decoded by `crate::exit` as `EntryFailure`.
///
/// After `Ok`, the caller marks the VMCS launched (VMRESUME next time).
///
/// # Safety
///
/// - VMX root operation on this CPU with the guest's VMCS current (VMPTRLD), and `launched`
///   matching its launch state;
/// - the VMCS's control and guest-state fields are valid for entry
///   (`crate::guest::check_guest_state`), the EPT behind its EPTP maps only memory the guest
///   may use, and the MSR/I/O bitmaps are owned pages;
/// - its host-state area describes this CPU and task now (`crate::host::check_host_state`;
///   in particular HOST_FS_BASE and HOST_GS_BASE hold the current FS/GS bases, HOST_CR3 the
///   current address space, HOST_TR/GDTR/IDTR this CPU's tables);
/// - the caller saves/restores x87/SSE state as described in the module documentation.
// One out-of-line copy: the world switch is easier to audit in a disassembly.
#[inline(never)]
pub unsafe fn vmlaunch_or_resume(launched: bool, regs: &mut GuestRegs) -> Result<(), VmFail> {
    let code: u64;
    // SAFETY: the caller's guarantees above make VMWRITE/VMLAUNCH/VMRESUME valid; every host
    // GPR except RAX (the result) and RFLAGS are pushed before anything is changed and popped
    // at the end on both paths; RSP on VM exit is the HOST_RSP written here, which points at the
    // saved `regs` pointer; `regs` is an exclusive borrow read and written through it.
    unsafe {
        asm!(
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
            "pushfq",
            "cli",
            // [rsp] = regs: what HOST_RSP points at.
            "push rdi",
            "mov rax, {host_rsp}",
            "vmwrite rax, rsp",
            "jna 5f",
            "lea rbx, [rip + 2f]",
            "mov rax, {host_rip}",
            "vmwrite rax, rbx",
            "jna 5f",
            "mov rax, [rdi + {cr2}]",
            "mov cr2, rax",
            // Decide VMLAUNCH vs VMRESUME now: the MOVs below keep the flags.
            "test esi, esi",
            "mov rax, [rdi + {rax}]",
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
            "jnz 3f",
            "vmlaunch",
            "jmp 5f",
            "3:",
            "vmresume",
            // Entry failed: CF = VMfailInvalid, ZF = VMfailValid. [rsp] = regs still.
            "5:",
            "mov eax, 1",
            "jc 7f",
            "mov eax, 2",
            "jmp 7f",
            // VM exit: RSP = HOST_RSP, RFLAGS = 0x2, guest GPRs live.
            "2:",
            "push rdi",
            "mov rdi, [rsp + 8]",
            "mov [rdi + {rax}], rax",
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
            "mov rax, cr2",
            "mov [rdi + {cr2}], rax",
            "xor eax, eax",
            "7:",
            "add rsp, 8",
            "popfq",
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
            host_rsp = const VmcsField::HostRsp as u32,
            host_rip = const VmcsField::HostRip as u32,
            rax = const offsets::RAX,
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
            cr2 = const offsets::CR2,
            in("rdi") regs as *mut GuestRegs,
            in("esi") launched as u32,
            lateout("rax") code,
        );
    }
    match code {
        0 => Ok(()),
        1 => Err(VmFail::Invalid),
        _ => Err(VmFail::Valid(VmInstructionError::from_raw(
            instruction_error(),
        ))),
    }
}

/// Hand an external interrupt that VM exit acknowledged ("acknowledge interrupt on exit": the
/// local APIC already moved `vector` from IRR to ISR) to the host's handler for it, as if the
/// CPU had delivered it: `INT vector` through the host IDT. The handler sends the EOI.
///
/// The `INT n` encoding takes its vector as an immediate, so this jumps into a table of 256
/// eight-byte stubs `INT n; RET` (SDM vol. 2A "INT n"; vol. 3C "External-Interrupt Exiting"
/// for why the host must do this itself).
///
/// # Safety
///
/// CPL 0, RFLAGS.IF = 0, in the host context right after the VM exit that reported `vector`
/// (32-255) as valid; the host IDT has a present gate for it that ends in IRET.
#[inline(never)]
pub unsafe fn dispatch_interrupt(vector: u8) {
    // SAFETY: forwarded to the caller; the stub runs the IDT gate for `vector` (an interrupt
    // gate: pushes a frame on the current stack, or its IST, and returns with IRET) and RETs
    // to the CALL here. The red zone is not used in kernel code (target x86_64-unknown-none).
    unsafe {
        asm!(
            "lea {table}, [rip + 2f]",
            "lea {table}, [{table} + {index} * 8]",
            "call {table}",
            "jmp 3f",
            ".balign 8",
            "2:",
            ".set hermitage_int_vector, 0",
            ".rept 256",
            ".balign 8",
            ".byte 0xCD, hermitage_int_vector",
            "ret",
            ".set hermitage_int_vector, hermitage_int_vector + 1",
            ".endr",
            "3:",
            table = out(reg) _,
            index = in(reg) vector as u64,
        );
    }
}

/// Hand an NMI that caused a VM exit ("NMI exiting") to the host's NMI handler: `INT 2`.
///
/// # Safety
///
/// CPL 0, in the host context right after the VM exit that reported the NMI; the host IDT's
/// gate 2 handles a software-invoked NMI (Hermitage's shootdown handler does).
#[inline]
pub unsafe fn dispatch_nmi() {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("int 2") };
}
