//! A preemption tick for guests. A guest that never exits (a spin loop with interrupts off)
//! must not keep its CPU from other guests, the endpoint or its mailbox: before each entry the
//! vCPU loop arms the local APIC timer for one time slice. The interrupt makes the guest exit
//! (INTR intercept), and after the world switch it is delivered to Hermit's own timer handler
//! (same vector Hermit programs), which just checks its sleepers and may reschedule, so Hermit's
//! timekeeping is undisturbed apart from an extra tick. SDM vol. 3A 11.5.4.
//!
//! The APIC timer rate is unknown to us (Hermit calibrates it privately), so each CPU measures
//! it once against the monotonic clock at bring-up.

#![forbid(unsafe_code)]

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
const ICR_LOW: u32 = 0x300;
/// Hermit 0.11.0's wakeup vector (`apic::WAKEUP_INTERRUPT_NUMBER`): its handler takes the
/// core's scheduler input (new and woken tasks) and reschedules.
const HERMIT_WAKEUP_VECTOR: u32 = 121;
/// ICR: fixed delivery, level assert (bit 14), shorthand all-excluding-self (11b << 18).
/// SDM vol. 3A 11.6.1.
const ICR_FIXED_ALL_BUT_SELF: u32 = (1 << 14) | (0b11 << 18);

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

/// Send Hermit's wakeup interrupt to every other CPU.
///
/// Hermit 0.11.0 idles a core with MONITOR/MWAIT on its priority bitmap when the CPU has
/// MWAIT, and then sends no wakeup IPI when it hands that core a task: it counts on the task
/// queue write to end the MWAIT, but the queue is not the monitored line. Real CPUs wake on
/// the next timer tick anyway; an idle core with no timer armed (Bochs' Intel models) sleeps
/// until an interrupt comes. After handing cores work from here we send that interrupt.
pub fn wake_others() {
    let Some(apic) = apic() else { return };
    let icr = ICR_FIXED_ALL_BUT_SELF | HERMIT_WAKEUP_VECTOR;
    match apic {
        Apic::X2 => hw::wrmsr(0x830, u64::from(icr)),
        Apic::X1 { base } => {
            hw::mmio_write32(base + 0x310, 0);
            hw::mmio_write32(base + u64::from(ICR_LOW), icr);
        }
    }
}

/// Send Hermit's wakeup interrupt to the CPU with APIC ID `apic_id` (fixed delivery, physical
/// destination; SDM vol. 3A 11.6.1). Its handler only reschedules that core; what matters is
/// that the interrupt ends a `hw::halt_unless` there.
pub fn wake_one(apic_id: u32) {
    let Some(apic) = apic() else { return };
    let icr = (1 << 14) | HERMIT_WAKEUP_VECTOR;
    match apic {
        Apic::X2 => hw::wrmsr(0x830, (u64::from(apic_id) << 32) | u64::from(icr)),
        Apic::X1 { base } => {
            hw::mmio_write32(base + 0x310, (apic_id & 0xFF) << 24);
            hw::mmio_write32(base + u64::from(ICR_LOW), icr);
        }
    }
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

/// Whether [`arm`] works on CPU `cpu` (its APIC timer rate was measured).
pub fn can_arm(cpu: usize) -> bool {
    TICKS_PER_US[cpu].load(Ordering::Relaxed) != 0
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
