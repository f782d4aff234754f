//! The way in (32-bit multiboot entry to long mode) and the way out (jump to the kernel).
//!
//! A Multiboot 1 loader enters `start32` in 32-bit protected mode with paging off, `eax` = magic
//! and `ebx` = boot information (Multiboot Specification 0.6.96, section 3.2). Long mode needs
//! PAE, EFER.LME and paging on, then a far jump to a 64-bit code segment (Intel SDM Vol. 3A,
//! section 10.8.5 "Initializing IA-32e Mode"). These boot tables identity-map the first 4 GiB with
//! 2 MiB pages, so the Rust code can read whatever the boot loader placed below 4 GiB; the kernel
//! is entered with different, minimal tables (`hermitage_boot::layout`).

use core::arch::{asm, global_asm};

use hermit_entry::boot_info::RawBootInfo;

global_asm!(
    r#"
    .section .multiboot, "a"
    .balign 4
    # Multiboot 1 header: flags = page-align modules (bit 0) | memory information (bit 1).
    .long 0x1BADB002
    .long 0x00000003
    .long -(0x1BADB002 + 0x00000003)

    .section .text.start32, "ax"
    .code32
    .global start32
start32:
    cli
    cld
    movl %eax, %ebp                 # multiboot magic, checked in Rust
    movl %ebx, %esi                 # multiboot information

    # Zero .bss (boot tables, stack, heap) whatever the boot loader did.
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    # PML4[0] -> PDPT; PDPT[0..4] -> four PDs; 2048 PD entries of 2 MiB (present|write|huge).
    movl $boot_pdpt + 3, boot_pml4
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $12, %eax
    addl $boot_pd + 3, %eax
    movl %eax, boot_pdpt(,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jne 1b
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne 2b

    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $(1 << 5), %eax             # CR4.PAE
    movl %eax, %cr4
    movl $0xC0000080, %ecx          # IA32_EFER
    rdmsr
    orl $(1 << 8), %eax             # EFER.LME
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax           # CR0.PG | CR0.PE
    movl %eax, %cr0
    lgdt boot_gdt_pointer
    ljmp $0x08, $start64

    .code64
start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $boot_stack_top, %esp
    movl %ebp, %edi
    call loader_main                # (magic, multiboot info), never returns
    ud2

    .section .rodata.boot_gdt, "a"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF        # 0x08: 64-bit code, DPL 0
    .quad 0x00CF92000000FFFF        # 0x10: data, DPL 0
boot_gdt_pointer:
    .word boot_gdt_pointer - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
boot_stack:
    .skip 64 * 1024
boot_stack_top:
    "#,
    options(att_syntax)
);

/// Switches to the kernel's page tables and jumps to its entry point as `hermit_entry::Entry`
/// defines it: `rdi` = boot information, `rsi` = CPU 0, and `rsp` = the base of the boot stack
/// (hermit-kernel 0.11.0 adds the stack size itself in `arch/x86_64/kernel/start.rs`).
///
/// # Safety
///
/// `cr3` must point to page tables that identity-map this function, `stack_base` and the
/// `KERNEL_STACK_SIZE` bytes above it, `boot_info` with everything it points to, and the loaded
/// and relocated kernel image that contains `entry`.
pub unsafe fn enter_kernel(
    cr3: u64,
    entry: u64,
    boot_info: &'static RawBootInfo,
    stack_base: u64,
) -> ! {
    // SAFETY: the caller guarantees that code, stack and data stay mapped across the CR3 switch.
    unsafe {
        asm!(
            "mov cr3, {cr3}",
            "mov rsp, {stack}",
            "jmp {entry}",
            cr3 = in(reg) cr3,
            stack = in(reg) stack_base,
            entry = in(reg) entry,
            in("rdi") boot_info,
            in("rsi") 0u64,
            options(noreturn),
        )
    }
}
