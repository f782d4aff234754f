//! NMI shootdown: the crash and last-resort reboot path reaches every other CPU with an NMI,
//! whatever it is doing (even spinning with interrupts off or sitting in a guest), and turns
//! virtualization off there before the machine is reset. VMX blocks INIT while on and SVM
//! blocks it while GIF=0 (SDM vol. 3C 24.8, APM vol. 2 15.17): a CPU left enabled can hang
//! the reset.
//!
//! Hermit owns the IDT and its NMI handler aborts the current task. We replace only the NMI
//! gate, keeping its selector and IST, and chain to Hermit's handler when no shootdown is in
//! progress. The IPI goes through the local APIC (x2APIC MSR or xAPIC MMIO, whichever mode
//! Hermit put the APIC in).

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::hw;

/// Set while a shootdown is in progress: NMIs then mean "turn virtualization off and stop".
static SHOOTDOWN: AtomicBool = AtomicBool::new(false);
/// How many CPUs have turned virtualization off and parked in the NMI handler.
static PARKED: AtomicUsize = AtomicUsize::new(0);
/// Hermit's NMI handler, to chain to.
#[unsafe(no_mangle)]
static HERMITAGE_ORIGINAL_NMI: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    ".global hermitage_nmi_entry",
    "hermitage_nmi_entry:",
    // Shootdown in progress? Then never return: switch virtualization off and park.
    "cmp byte ptr [rip + {flag}], 0",
    "jne 2f",
    // Otherwise this NMI is not ours: hand it to Hermit's handler with the frame untouched.
    "jmp qword ptr [rip + HERMITAGE_ORIGINAL_NMI]",
    "2:",
    "and rsp, -16",
    "call {park}",
    "ud2",
    flag = sym SHOOTDOWN,
    park = sym nmi_park,
);

unsafe extern "C" {
    fn hermitage_nmi_entry();
}

extern "C" fn nmi_park() -> ! {
    super::emergency_off_here();
    crate::cpus::publish_here();
    PARKED.fetch_add(1, Ordering::AcqRel);
    loop {
        // SAFETY: parking this CPU for good; interrupts stay off, NMIs are blocked until IRET,
        // which never comes.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

#[repr(C, packed)]
struct Idtr {
    limit: u16,
    base: u64,
}

/// Replace the NMI gate of the (shared) IDT with ours. Idempotent.
pub fn install() {
    if HERMITAGE_ORIGINAL_NMI.load(Ordering::Acquire) != 0 {
        return;
    }
    let mut idtr = Idtr { limit: 0, base: 0 };
    // SAFETY: SIDT stores 10 bytes into `idtr`, which is exactly its size.
    unsafe { core::arch::asm!("sidt [{}]", in(reg) &mut idtr, options(nostack, preserves_flags)) };
    let limit = idtr.limit;
    if usize::from(limit) < 3 * 16 - 1 {
        return;
    }
    let gate = (idtr.base + 2 * 16) as *mut u64;
    // SAFETY: the IDT Hermit loaded lies in its writable kernel data (identity-mapped RAM) and
    // has at least three 16-byte gates (checked above). We change only the offset fields of
    // gate 2, keeping selector, IST and type. Both handlers live in the kernel image, so the
    // offset's upper 32 bits (in the second quadword) agree (checked); the rest is one aligned
    // 64-bit store, so an NMI at any moment sees either the old gate or the new one.
    unsafe {
        let lo = gate.read_volatile();
        let hi = gate.add(1).read_volatile();
        let old = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000) | ((hi & 0xFFFF_FFFF) << 32);
        let new = hermitage_nmi_entry as usize as u64;
        if old >> 32 != new >> 32 {
            return;
        }
        HERMITAGE_ORIGINAL_NMI.store(old, Ordering::Release);
        let new_lo = (lo & 0x0000_FFFF_FFFF_0000) | (new & 0xFFFF) | ((new & 0xFFFF_0000) << 32);
        gate.write_volatile(new_lo);
    }
}

const IA32_APIC_BASE: u32 = 0x1B;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const X2APIC_ICR: u32 = 0x830;
/// ICR: delivery mode NMI (100b << 8), level assert (bit 14), shorthand all-excluding-self
/// (11b << 18). SDM vol. 3A 11.6.1.
const ICR_NMI_ALL_BUT_SELF: u32 = (0b100 << 8) | (1 << 14) | (0b11 << 18);

/// NMI every other CPU into the shootdown handler and wait (bounded) for them to park.
/// Returns how many parked.
pub fn shootdown_others(expected: usize, timeout_us: u64) -> usize {
    install();
    SHOOTDOWN.store(true, Ordering::Release);
    let base = hw::rdmsr(IA32_APIC_BASE);
    if base & APIC_BASE_X2APIC != 0 {
        hw::wrmsr(X2APIC_ICR, u64::from(ICR_NMI_ALL_BUT_SELF));
    } else {
        let mmio = base & 0x000F_FFFF_FFFF_F000;
        if hw::map_device_memory(mmio, 4096).is_ok() {
            hw::mmio_write32(mmio + 0x310, 0);
            hw::mmio_write32(mmio + 0x300, ICR_NMI_ALL_BUT_SELF);
        }
    }
    let deadline = hw::monotonic_micros() + timeout_us;
    while PARKED.load(Ordering::Acquire) < expected && hw::monotonic_micros() < deadline {
        core::hint::spin_loop();
    }
    PARKED.load(Ordering::Acquire)
}
