//! A preemption tick for guests. A guest that never exits (a spin loop with interrupts off)
//! must not keep its CPU from other guests, the endpoint or its mailbox: before each entry the
//! vCPU loop arms the local APIC timer for one time slice. The interrupt makes the guest exit
//! (INTR intercept), and after the world switch it is delivered to Hermit's own timer handler
//! (same vector Hermit programs), which just checks its sleepers and may reschedule, so Hermit's
//! timekeeping is undisturbed apart from an extra tick. SDM vol. 3A 11.5.4.
//!
//! The APIC timer rate is unknown to us (Hermit calibrates it privately), so each CPU measures
//! it once against the monotonic clock at bring-up.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::cpus::MAX_CPUS;
use crate::hw;

const IA32_APIC_BASE: u32 = 0x1B;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const LVT_TIMER: u32 = 0x320;
const INITIAL_COUNT: u32 = 0x380;
const CURRENT_COUNT: u32 = 0x390;
const LVT_MASKED: u32 = 1 << 16;
/// Hermit 0.11.0's timer interrupt vector (`apic::TIMER_INTERRUPT_NUMBER`). Hermit leaves the
/// LVT masked with vector 0 while no sleeper needs a wakeup, so we cannot read it back then.
const HERMIT_TIMER_VECTOR: u32 = 123;
const LVT_MODE_MASK: u32 = 0b11 << 17;

/// APIC timer ticks per microsecond, per CPU (0 = not calibrated: no preemption tick).
static TICKS_PER_US: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

enum Apic {
    X2,
    X1 { base: u64 },
}

fn apic() -> Option<Apic> {
    let base = hw::rdmsr(IA32_APIC_BASE);
    if base & APIC_BASE_X2APIC != 0 {
        return Some(Apic::X2);
    }
    let base = base & 0x000F_FFFF_FFFF_F000;
    hw::map_device_memory(base, 4096).ok()?;
    Some(Apic::X1 { base })
}

fn read(apic: &Apic, reg: u32) -> u32 {
    match apic {
        Apic::X2 => hw::rdmsr(0x800 + (reg >> 4)) as u32,
        Apic::X1 { base } => hw::mmio_read32(base + u64::from(reg)),
    }
}

fn write(apic: &Apic, reg: u32, value: u32) {
    match apic {
        Apic::X2 => hw::wrmsr(0x800 + (reg >> 4), u64::from(value)),
        Apic::X1 { base } => hw::mmio_write32(base + u64::from(reg), value),
    }
}

/// Identity-map the local APIC page once, from the boot CPU, before the workers start.
pub fn map_apic() {
    let _ = apic();
}

/// Measure this CPU's APIC timer rate (call once on each CPU, from its worker, at bring-up).
pub fn calibrate(cpu: usize) {
    let Some(apic) = apic() else { return };
    let lvt = read(&apic, LVT_TIMER);
    // TSC-deadline mode (Hermit's choice when the CPU has it) has no count registers to use.
    if lvt & LVT_MODE_MASK != 0 {
        println!("hermitage: cpu {cpu}: APIC timer in TSC-deadline mode: no preemption tick");
        return;
    }
    write(&apic, LVT_TIMER, lvt | LVT_MASKED);
    write(&apic, INITIAL_COUNT, u32::MAX);
    let start = hw::monotonic_micros();
    while hw::monotonic_micros() < start + 2_000 {
        core::hint::spin_loop();
    }
    let elapsed_us = hw::monotonic_micros() - start;
    let ticks = u32::MAX - read(&apic, CURRENT_COUNT);
    // Give Hermit its timer back; a one-tick count fires at once and its handler re-checks
    // the sleepers, so no wakeup is lost.
    write(&apic, LVT_TIMER, lvt);
    write(&apic, INITIAL_COUNT, 1);
    let rate = (u64::from(ticks) / elapsed_us.max(1)) as u32;

    TICKS_PER_US[cpu].store(rate.max(1), Ordering::Relaxed);
}

/// Arm the one-shot timer to fire after `us` microseconds, with Hermit's vector.
pub fn arm(cpu: usize, us: u32) {
    let rate = TICKS_PER_US[cpu].load(Ordering::Relaxed);
    if rate == 0 {
        return;
    }
    let Some(apic) = apic() else { return };
    // One-shot, unmasked, Hermit's vector (so its handler takes the tick).
    write(&apic, LVT_TIMER, HERMIT_TIMER_VECTOR);
    write(&apic, INITIAL_COUNT, rate.saturating_mul(us).max(1));
}
