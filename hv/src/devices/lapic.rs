//! A local APIC per vCPU: one register model behind both the xAPIC page and the x2APIC MSRs.
//!
//! Why: an operating system schedules on its local APIC's timer, sends IPIs through its ICR and
//! takes IOAPIC and MSI interrupts through it (Intel SDM vol. 3A chapter 11, "Advanced
//! Programmable Interrupt Controller"). Linux 6.1 also runs the local APIC entirely through MSRs
//! when firmware left it in x2APIC mode (linux-guests.md section 3, "Path Q"), which needs no
//! MMIO instruction emulation at all; [`LapicConfig::x2apic_at_reset`] gives that power-on state.
//!
//! The model is pure: time comes in as `now: GuestTime` ([`crate::time`]), interrupts leave as
//! [`Effect`]s (EOI broadcasts for the IOAPIC, IPIs for other vCPUs), and the vCPU run loop
//! takes vectors through [`InterruptController`]. Nothing allocates.
//!
//! # Interfaces (SDM 11.4.1, 11.12)
//!
//! - **IA32_APIC_BASE** (MSR 0x1B, SDM 11.4.4 and 11.12.5): BSP (bit 8, fixed by the
//!   configuration, writes ignored), EXTD (10), EN (11), base (12 up to MAXPHYADDR). Legal
//!   transitions of SDM figure 11-27: disabled <-> xAPIC, xAPIC -> x2APIC, x2APIC -> disabled.
//!   #GP for EN=0/EXTD=1, x2APIC -> xAPIC, disabled -> x2APIC, reserved bits, and EXTD when the
//!   VM has no x2APIC. Disabling resets the register state (SDM 11.4.3). A change of mode or
//!   base is reported as [`Effect::BaseChanged`] so the platform can move the MMIO page.
//! - **xAPIC**: the 4 KiB page at the base ([`Lapic::mmio_read`], [`Lapic::mmio_write`]);
//!   32-bit registers at 16-byte strides. Hardware leaves other accesses undefined; here a read
//!   of any width returns the bytes of the registers it covers (bytes 4-15 of each 16-byte slot
//!   read 0) and has no side effects beyond ESR "illegal register address" for a reserved slot;
//!   a write that is not exactly 32 bits at a 16-byte aligned offset is dropped, and both are
//!   counted in [`LapicStats`].
//! - **x2APIC** (SDM 11.12.1.2, table 11-6): MSR `0x800 + offset / 16`. #GP for reserved
//!   registers (APR, RRD, DFR, 0x831, ...), reads of write-only registers (EOI, SELF IPI),
//!   writes of read-only ones (ID, version, PPR, LDR, ISR/TMR/IRR, current count), non-zero
//!   reserved bits (including bits 63:32 of everything but the ICR), a non-zero EOI or ESR
//!   write. The ICR is one 64-bit register (destination in 63:32), LDR is derived from the
//!   x2APIC ID (SDM 11.12.10.2) and there is no DFR.
//!
//! # Registers
//!
//! | offset | register        | model                                                            |
//! |--------|-----------------|------------------------------------------------------------------|
//! | 0x020  | ID              | xAPIC bits 31:24 (writable); x2APIC the 32-bit initial ID (RO)   |
//! | 0x030  | version         | 0x0106_0014: version 0x14, max LVT 6, EOI-broadcast suppression |
//! | 0x080  | TPR             | bits 7:0                                                         |
//! | 0x090  | APR             | computed (xAPIC only)                                            |
//! | 0x0A0  | PPR             | computed from TPR and the highest ISR vector (SDM 11.8.3.1)      |
//! | 0x0B0  | EOI             | clears the highest ISR bit; level (TMR) -> EOI broadcast         |
//! | 0x0D0  | LDR             | xAPIC bits 31:24; x2APIC derived                                 |
//! | 0x0E0  | DFR             | xAPIC bits 31:28 (model), 27:0 read as ones                      |
//! | 0x0F0  | SVR             | vector, APIC software enable (8), focus (9), EOI suppression (12) |
//! | 0x100+ | ISR, TMR, IRR   | 8 words of 32 bits each                                          |
//! | 0x280  | ESR             | write latches the errors since the last write (SDM 11.5.3)       |
//! | 0x2F0  | LVT CMCI        |                                                                  |
//! | 0x300  | ICR low / high  | a low write sends; delivery status always reads idle             |
//! | 0x320+ | LVT timer, thermal, perf, LINT0, LINT1, error |                                    |
//! | 0x380  | initial count   | ignored in TSC-deadline mode                                     |
//! | 0x390  | current count   | computed from `now`                                              |
//! | 0x3E0  | divide config   | bits 3, 1:0                                                      |
//! | 0x3F0  | SELF IPI        | x2APIC only, write only                                          |
//!
//! Software disable (SVR bit 8 clear, SDM 11.4.7.2) masks every LVT and keeps them masked;
//! fixed interrupts arriving then are dropped (as KVM does), NMI/INIT/SIPI still arrive.
//!
//! # Timer (SDM 11.5.4)
//!
//! The APIC timer's input clock is [`APIC_TIMER_HZ`] = 1 GHz of guest time (one APIC bus cycle
//! per guest nanosecond, as KVM's), divided by the divide configuration register. Counts are
//! therefore exact functions of `now`. One-shot and periodic modes count from the initial
//! count; TSC-deadline mode compares the guest TSC with IA32_TSC_DEADLINE (MSR 0x6E0), which the
//! model turns into a guest time with the VM's [`GuestClock`] at write time. Switching into or
//! out of TSC-deadline mode disarms both timers (SDM 11.5.4.1). A divide change mid-count keeps
//! the current count and continues at the new rate. [`Lapic::next_deadline`] says when to call
//! [`Lapic::poll`]; a periodic timer that was polled late fires once (IRR is one bit) and
//! re-arms at its next period boundary, so its phase never drifts.
//!
//! # Interrupts
//!
//! [`Lapic::accept`] is a fixed interrupt from the IOAPIC or an IPI (vectors 0-15 set ESR
//! "received illegal vector" and are dropped); [`Lapic::deliver`] takes any delivery mode.
//! The [`InterruptController`] impl gives the highest IRR vector whose priority class is above
//! PPR's and moves it to ISR on acknowledge. NMIs (LINT1, NMI IPIs, an NMI-mode perf LVT) set
//! a flag the run loop takes with `take_nmi`; INIT and SIPI are recorded for the run loop
//! ([`Lapic::take_init`], [`Lapic::take_sipi`]). The perf LVT is the vPMU's overflow
//! interrupt ([`Lapic::pmu_overflow`]); as on Intel processors, delivering it sets its mask
//! bit, so a PMI handler re-arms it (Linux's does). LINT0 in ExtINT mode (and a hardware-disabled
//! APIC) lets the 8259A through: [`Lapic::extint_enabled`], combined by [`ApicAndPic`].
//!
//! IPIs (SDM 11.6): an ICR write returns [`Effect::Ipi`] for the platform to route; the self
//! shorthand is delivered here, and "all including self" is delivered here and returned with
//! the "all excluding self" shorthand. A no-shorthand IPI whose destination includes this APIC
//! is routed back by the platform like any other ([`Lapic::matches_destination`]).

use crate::devices::ioapic::IoapicDeliveryMode;
use crate::irq::{InterruptController, LineEvent};
use crate::time::{GuestClock, GuestTime};

/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1B;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;
/// First x2APIC MSR.
pub const MSR_X2APIC_FIRST: u32 = 0x800;
/// Last x2APIC MSR.
pub const MSR_X2APIC_LAST: u32 = 0x8FF;
/// The APIC base after reset.
pub const APIC_DEFAULT_BASE: u64 = 0xFEE0_0000;
/// Size of the xAPIC register page.
pub const APIC_MMIO_SIZE: u64 = 0x1000;
/// The APIC timer's input clock: 1 GHz of guest time.
pub const APIC_TIMER_HZ: u64 = 1_000_000_000;
/// Version register: version 0x14, max LVT entry 6 (7 LVTs incl. CMCI), bit 24: EOI-broadcast
/// suppression supported.
pub const APIC_VERSION: u32 = 0x14 | (6 << 16) | (1 << 24);

/// IA32_APIC_BASE bit 8: bootstrap processor.
pub const BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE bit 10: x2APIC mode.
pub const BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE bit 11: APIC global enable.
pub const BASE_EN: u64 = 1 << 11;

/// Register offsets in the xAPIC page (x2APIC MSR = 0x800 + offset / 16).
pub mod reg {
    /// Local APIC ID.
    pub const ID: u16 = 0x020;
    /// Version.
    pub const VERSION: u16 = 0x030;
    /// Task priority.
    pub const TPR: u16 = 0x080;
    /// Arbitration priority.
    pub const APR: u16 = 0x090;
    /// Processor priority.
    pub const PPR: u16 = 0x0A0;
    /// End of interrupt.
    pub const EOI: u16 = 0x0B0;
    /// Remote read.
    pub const RRD: u16 = 0x0C0;
    /// Logical destination.
    pub const LDR: u16 = 0x0D0;
    /// Destination format.
    pub const DFR: u16 = 0x0E0;
    /// Spurious interrupt vector.
    pub const SVR: u16 = 0x0F0;
    /// In-service, words 0-7.
    pub const ISR: u16 = 0x100;
    /// Trigger mode, words 0-7.
    pub const TMR: u16 = 0x180;
    /// Interrupt request, words 0-7.
    pub const IRR: u16 = 0x200;
    /// Error status.
    pub const ESR: u16 = 0x280;
    /// LVT corrected machine check.
    pub const LVT_CMCI: u16 = 0x2F0;
    /// Interrupt command, low half.
    pub const ICR_LOW: u16 = 0x300;
    /// Interrupt command, high half (xAPIC).
    pub const ICR_HIGH: u16 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u16 = 0x320;
    /// LVT thermal sensor.
    pub const LVT_THERMAL: u16 = 0x330;
    /// LVT performance monitoring counters.
    pub const LVT_PERF: u16 = 0x340;
    /// LVT LINT0.
    pub const LVT_LINT0: u16 = 0x350;
    /// LVT LINT1.
    pub const LVT_LINT1: u16 = 0x360;
    /// LVT error.
    pub const LVT_ERROR: u16 = 0x370;
    /// Timer initial count.
    pub const INITIAL_COUNT: u16 = 0x380;
    /// Timer current count.
    pub const CURRENT_COUNT: u16 = 0x390;
    /// Timer divide configuration.
    pub const DIVIDE_CONFIG: u16 = 0x3E0;
    /// SELF IPI (x2APIC only).
    pub const SELF_IPI: u16 = 0x3F0;
}

/// SVR bit 8: APIC software enable.
pub const SVR_ENABLE: u32 = 1 << 8;
/// SVR bit 9: focus processor checking disabled (stored, no effect).
pub const SVR_FOCUS: u32 = 1 << 9;
/// SVR bit 12: suppress EOI broadcasts.
pub const SVR_SUPPRESS_EOI: u32 = 1 << 12;
/// LVT bit 16: masked.
pub const LVT_MASK: u32 = 1 << 16;
/// LVT bit 15: level trigger (LINT0/LINT1).
pub const LVT_LEVEL: u32 = 1 << 15;
/// LVT timer mode field (bits 18:17): periodic.
pub const TIMER_PERIODIC: u32 = 1 << 17;
/// LVT timer mode field (bits 18:17): TSC deadline.
pub const TIMER_TSC_DEADLINE: u32 = 2 << 17;

/// ESR bit 5: send illegal vector.
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
/// ESR bit 6: received illegal vector.
pub const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
/// ESR bit 7: illegal register address.
pub const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

/// A general-protection fault the guest's RDMSR/WRMSR must take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gp;

/// Which interface the APIC is in (IA32_APIC_BASE EN and EXTD).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApicMode {
    /// EN=0: globally disabled; the 8259A's INTR and LINT1's NMI reach the CPU directly.
    Disabled,
    /// EN=1, EXTD=0: registers in the MMIO page.
    XApic,
    /// EN=1, EXTD=1: registers in MSRs 0x800-0x8FF.
    X2Apic,
}

/// A delivery mode (ICR and LVT bits 10:8, SDM 11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// 000: the vector.
    Fixed,
    /// 001: the vector, to the lowest-priority destination.
    LowestPriority,
    /// 010: SMI.
    Smi,
    /// 100: NMI.
    Nmi,
    /// 101: INIT (or INIT level de-assert).
    Init,
    /// 110: start-up IPI with a vector (the real-mode page).
    StartUp,
    /// 111: ExtINT (the vector comes from an 8259A).
    ExtInt,
}

impl DeliveryMode {
    /// Decode bits 2:0; `None` for the reserved 011.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        Some(match bits & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            6 => Self::StartUp,
            7 => Self::ExtInt,
            _ => return None,
        })
    }
}

impl From<IoapicDeliveryMode> for DeliveryMode {
    fn from(m: IoapicDeliveryMode) -> Self {
        match m {
            IoapicDeliveryMode::Fixed => Self::Fixed,
            IoapicDeliveryMode::LowestPriority => Self::LowestPriority,
            IoapicDeliveryMode::Smi => Self::Smi,
            IoapicDeliveryMode::Nmi => Self::Nmi,
            IoapicDeliveryMode::Init => Self::Init,
            IoapicDeliveryMode::ExtInt => Self::ExtInt,
        }
    }
}

/// ICR destination shorthand (bits 19:18).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shorthand {
    /// 00: the destination field.
    None,
    /// 01: this APIC only.
    SelfOnly,
    /// 10: all APICs including this one.
    AllIncludingSelf,
    /// 11: all other APICs.
    AllExcludingSelf,
}

/// An inter-processor interrupt for the platform to route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipi {
    /// Destination field: 8 bits in xAPIC format, 32 bits in x2APIC format.
    pub dest: u32,
    /// The destination is in x2APIC format (32-bit; broadcast 0xFFFF_FFFF).
    pub x2apic: bool,
    /// Logical destination mode.
    pub logical: bool,
    /// Who else gets it (never [`Shorthand::SelfOnly`]: that is delivered locally).
    pub shorthand: Shorthand,
    /// Delivery mode.
    pub mode: DeliveryMode,
    /// Vector (the start-up page for SIPI).
    pub vector: u8,
    /// Level bit 14 (assert; 0 with INIT = INIT level de-assert).
    pub assert: bool,
    /// Trigger mode bit 15: level.
    pub level_triggered: bool,
}

/// What a register write asks of the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Nothing beyond this APIC.
    None,
    /// A level-triggered vector was EOI'd: tell the IOAPIC(s) ([`crate::devices::ioapic::Ioapic::eoi`]).
    EoiBroadcast(u8),
    /// Send this IPI to the other APICs it addresses.
    Ipi(Ipi),
    /// A timer register changed: ask [`Lapic::next_deadline`] again.
    TimerChanged,
    /// IA32_APIC_BASE changed the mode or the base address (move or unmap the MMIO page).
    BaseChanged {
        /// The new mode.
        mode: ApicMode,
        /// The new base address (meaningful in xAPIC mode).
        base: u64,
    },
}

/// Per-vCPU configuration (from the VM's config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LapicConfig {
    /// The initial APIC ID (x2APIC ID; the xAPIC ID is its low 8 bits).
    pub apic_id: u32,
    /// This vCPU is the bootstrap processor (IA32_APIC_BASE bit 8).
    pub bsp: bool,
    /// The VM offers x2APIC (CPUID.1:ECX[21]); without it EXTD is reserved.
    pub x2apic: bool,
    /// Power on in x2APIC mode (EN=1, EXTD=1), as firmware on large machines leaves it
    /// (linux-guests.md Path Q). Needs `x2apic`.
    pub x2apic_at_reset: bool,
    /// MAXPHYADDR: base-address bits at and above it are reserved.
    pub phys_addr_bits: u8,
    /// Power on in the state a PC BIOS leaves (MP spec "virtual wire"): software enabled,
    /// LINT0 ExtINT and LINT1 NMI unmasked, so a PIC-only guest gets its interrupts. `false`
    /// is the SDM's reset state (everything masked, SVR 0xFF).
    pub virtual_wire: bool,
}

impl LapicConfig {
    /// The BSP with APIC ID 0, x2APIC offered, 48 physical address bits, SDM reset state.
    pub const BSP: LapicConfig = LapicConfig {
        apic_id: 0,
        bsp: true,
        x2apic: true,
        x2apic_at_reset: false,
        phys_addr_bits: 48,
        virtual_wire: false,
    };
}

/// Counters of guest accesses the model refused or could not place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LapicStats {
    /// MMIO reads that were not one aligned 32-bit register.
    pub odd_reads: u64,
    /// MMIO writes dropped for width or alignment, or made outside xAPIC mode.
    pub dropped_writes: u64,
    /// Accesses to reserved registers (MMIO; x2APIC ones are #GP instead).
    pub bad_register: u64,
    /// Interrupts with vectors 0-15 (sent or received).
    pub illegal_vectors: u64,
    /// Fixed interrupts dropped because the APIC was disabled.
    pub dropped_interrupts: u64,
    /// Messages with a mode the model does not act on (SMI, ExtINT, reserved).
    pub ignored_messages: u64,
}

/// The seven LVT entries, in the order of their registers' slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Lvt {
    /// Timer.
    Timer = 0,
    /// Thermal sensor.
    Thermal = 1,
    /// Performance monitoring counters (the vPMU's overflow).
    Perf = 2,
    /// LINT0 (the 8259A on a PC).
    Lint0 = 3,
    /// LINT1 (NMI on a PC).
    Lint1 = 4,
    /// APIC error.
    Error = 5,
    /// Corrected machine check.
    Cmci = 6,
}

impl Lvt {
    const fn from_offset(off: u16) -> Option<Lvt> {
        Some(match off {
            reg::LVT_TIMER => Lvt::Timer,
            reg::LVT_THERMAL => Lvt::Thermal,
            reg::LVT_PERF => Lvt::Perf,
            reg::LVT_LINT0 => Lvt::Lint0,
            reg::LVT_LINT1 => Lvt::Lint1,
            reg::LVT_ERROR => Lvt::Error,
            reg::LVT_CMCI => Lvt::Cmci,
            _ => return None,
        })
    }

    /// The bits a guest can write.
    const fn writable(self) -> u32 {
        match self {
            Lvt::Timer => 0x0007_00FF,
            Lvt::Lint0 | Lvt::Lint1 => 0x0001_A7FF,
            Lvt::Error => 0x0001_00FF,
            Lvt::Thermal | Lvt::Perf | Lvt::Cmci => 0x0001_07FF,
        }
    }

    /// All defined bits, including the read-only delivery status (12) and remote IRR (14).
    const fn defined(self) -> u32 {
        match self {
            Lvt::Lint0 | Lvt::Lint1 => self.writable() | (1 << 12) | (1 << 14),
            _ => self.writable() | (1 << 12),
        }
    }

    /// Whether bits 10:8 are a delivery mode (timer and error are always fixed).
    const fn has_mode(self) -> bool {
        !matches!(self, Lvt::Timer | Lvt::Error)
    }
}

/// ICR low bits that mean something: vector, mode, destination mode, level, trigger, shorthand.
const ICR_LOW_WRITABLE: u32 = 0x000C_CFFF;
/// xAPIC ICR high: destination 31:24.
const ICR_HIGH_WRITABLE: u32 = 0xFF00_0000;

/// The initial-count timer: counting from `anchor_count` at `anchor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CountTimer {
    initial: u32,
    running: bool,
    anchor: GuestTime,
    anchor_count: u32,
    next_fire: Option<GuestTime>,
}

impl CountTimer {
    const STOPPED: CountTimer = CountTimer {
        initial: 0,
        running: false,
        anchor: GuestTime::ZERO,
        anchor_count: 0,
        next_fire: None,
    };
}

/// One vCPU's local APIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lapic {
    config: LapicConfig,
    base_msr: u64,
    xapic_id: u8,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    esr: u32,
    esr_pending: u32,
    icr_low: u32,
    icr_high: u32,
    lvt: [u32; 7],
    dcr: u32,
    timer: CountTimer,
    /// IA32_TSC_DEADLINE as written (0 = disarmed) and the guest time it stands for.
    tsc_deadline: u64,
    deadline_at: GuestTime,
    nmi_pending: bool,
    init_pending: bool,
    sipi: Option<u8>,
    lint_level: [bool; 2],
    stats: LapicStats,
}

fn highest(bits: &[u32; 8]) -> Option<u8> {
    (0..8)
        .rev()
        .find(|&w| bits[w] != 0)
        .map(|w| (w as u32 * 32 + 31 - bits[w].leading_zeros()) as u8)
}

fn test_bit(bits: &[u32; 8], v: u8) -> bool {
    bits[usize::from(v / 32)] & (1 << (v % 32)) != 0
}

fn set_bit(bits: &mut [u32; 8], v: u8, on: bool) {
    let w = &mut bits[usize::from(v / 32)];
    if on {
        *w |= 1 << (v % 32);
    } else {
        *w &= !(1 << (v % 32));
    }
}

impl Lapic {
    /// A local APIC in power-on state.
    pub fn new(config: LapicConfig) -> Lapic {
        let mut l = Lapic {
            config,
            base_msr: 0,
            xapic_id: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [0; 7],
            dcr: 0,
            timer: CountTimer::STOPPED,
            tsc_deadline: 0,
            deadline_at: GuestTime::ZERO,
            nmi_pending: false,
            init_pending: false,
            sipi: None,
            lint_level: [false; 2],
            stats: LapicStats::default(),
        };
        l.reset();
        l
    }

    /// Power-on reset (SDM 11.4.7.1): IA32_APIC_BASE = 0xFEE00000 | EN | BSP (| EXTD with
    /// [`LapicConfig::x2apic_at_reset`]), all LVTs masked, SVR 0xFF, DFR all ones, everything
    /// else 0 (or the BIOS virtual-wire state, see [`LapicConfig::virtual_wire`]). Counters
    /// are kept.
    pub fn reset(&mut self) {
        let mut base = APIC_DEFAULT_BASE | BASE_EN;
        if self.config.bsp {
            base |= BASE_BSP;
        }
        if self.config.x2apic && self.config.x2apic_at_reset {
            base |= BASE_EXTD;
        }
        self.base_msr = base;
        self.reset_registers(false);
        if self.config.virtual_wire {
            self.svr = SVR_ENABLE | 0xFF;
            self.lvt[Lvt::Lint0 as usize] = 7 << 8; // ExtINT, unmasked
            self.lvt[Lvt::Lint1 as usize] = 4 << 8; // NMI, unmasked
        }
    }

    /// INIT (SDM 11.4.7.3): the register state of power-on, except that the APIC ID and
    /// IA32_APIC_BASE are kept. The run loop calls this when it takes an INIT.
    pub fn init_reset(&mut self) {
        self.reset_registers(true);
    }

    fn reset_registers(&mut self, keep_id: bool) {
        if !keep_id {
            self.xapic_id = self.config.apic_id as u8;
        }
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = 0xFFFF_FFFF;
        self.svr = 0xFF;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.icr_low = 0;
        self.icr_high = 0;
        self.lvt = [LVT_MASK; 7];
        self.dcr = 0;
        self.timer = CountTimer::STOPPED;
        self.tsc_deadline = 0;
        self.deadline_at = GuestTime::ZERO;
        self.nmi_pending = false;
        self.init_pending = false;
        self.sipi = None;
    }

    /// The configuration.
    pub const fn config(&self) -> &LapicConfig {
        &self.config
    }

    /// The refused-access counters.
    pub const fn stats(&self) -> LapicStats {
        self.stats
    }

    /// The current mode.
    pub const fn mode(&self) -> ApicMode {
        if self.base_msr & BASE_EN == 0 {
            ApicMode::Disabled
        } else if self.base_msr & BASE_EXTD != 0 {
            ApicMode::X2Apic
        } else {
            ApicMode::XApic
        }
    }

    /// The APIC base address (IA32_APIC_BASE bits 12 and up).
    pub const fn base(&self) -> u64 {
        self.base_msr & !0xFFF
    }

    /// Where the xAPIC page is decoded: `Some(base)` in xAPIC mode only.
    pub const fn mmio_base(&self) -> Option<u64> {
        match self.mode() {
            ApicMode::XApic => Some(self.base()),
            _ => None,
        }
    }

    /// IA32_APIC_BASE as the guest reads it.
    pub const fn apic_base(&self) -> u64 {
        self.base_msr
    }

    /// Software enabled (SVR bit 8).
    pub const fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// The x2APIC ID (the initial APIC ID).
    pub const fn x2apic_id(&self) -> u32 {
        self.config.apic_id
    }

    fn x2apic_ldr(&self) -> u32 {
        let id = self.config.apic_id;
        ((id >> 4) << 16) | (1 << (id & 0xF))
    }

    /// A guest write to IA32_APIC_BASE (SDM 11.12.5).
    pub fn write_apic_base(&mut self, value: u64) -> Result<Effect, Gp> {
        let bits = u32::from(self.config.phys_addr_bits.clamp(36, 52));
        let mut reserved = 0xFFu64 | (1 << 9) | !((1u64 << bits) - 1);
        if !self.config.x2apic {
            reserved |= BASE_EXTD;
        }
        if value & reserved != 0 {
            return Err(Gp);
        }
        let new_mode = match (value & BASE_EN != 0, value & BASE_EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(Gp),
        };
        let old_mode = self.mode();
        match (old_mode, new_mode) {
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => {
                return Err(Gp);
            }
            _ => {}
        }
        let old_base = self.base();
        self.base_msr = (value & !BASE_BSP) | (self.base_msr & BASE_BSP);
        if new_mode == ApicMode::Disabled && old_mode != ApicMode::Disabled {
            self.reset_registers(false);
        }
        if new_mode != old_mode || self.base() != old_base {
            Ok(Effect::BaseChanged {
                mode: new_mode,
                base: self.base(),
            })
        } else {
            Ok(Effect::None)
        }
    }

    // ---- priorities and interrupt state (SDM 11.8) ----

    /// TPR.
    pub const fn tpr(&self) -> u8 {
        self.tpr
    }

    /// CR8 as the guest reads it: TPR bits 7:4 (SDM 11.8.6).
    pub const fn cr8(&self) -> u64 {
        (self.tpr >> 4) as u64
    }

    /// A MOV to CR8: TPR = value[3:0] << 4 (bits above 3 are the caller's #GP to check).
    pub fn write_cr8(&mut self, value: u64) {
        self.tpr = ((value & 0xF) << 4) as u8;
    }

    /// PPR (SDM 11.8.3.1).
    pub fn ppr(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    fn apr(&self) -> u8 {
        let irrv = highest(&self.irr).unwrap_or(0);
        let isrv = highest(&self.isr).unwrap_or(0);
        let top = irrv.max(isrv);
        if self.tpr >> 4 >= top >> 4 {
            self.tpr
        } else {
            top & 0xF0
        }
    }

    /// Whether `vector` is requested (IRR).
    pub fn irr(&self, vector: u8) -> bool {
        test_bit(&self.irr, vector)
    }

    /// Whether `vector` is in service (ISR).
    pub fn isr(&self, vector: u8) -> bool {
        test_bit(&self.isr, vector)
    }

    /// Whether `vector` was accepted level-triggered (TMR).
    pub fn tmr(&self, vector: u8) -> bool {
        test_bit(&self.tmr, vector)
    }

    fn record_error(&mut self, bits: u32, from_error_lvt: bool) {
        self.esr_pending |= bits;
        if !from_error_lvt {
            self.raise_lvt(Lvt::Error);
        }
    }

    fn accept_fixed(&mut self, vector: u8, level: bool, from_error_lvt: bool) -> bool {
        if vector < 16 {
            self.stats.illegal_vectors += 1;
            self.record_error(ESR_RECEIVE_ILLEGAL_VECTOR, from_error_lvt);
            return false;
        }
        if self.mode() == ApicMode::Disabled || !self.software_enabled() {
            self.stats.dropped_interrupts += 1;
            return false;
        }
        set_bit(&mut self.irr, vector, true);
        set_bit(&mut self.tmr, vector, level);
        true
    }

    /// A fixed interrupt arrives (IOAPIC message, IPI, MSI): set IRR (and TMR for level).
    /// Vectors 0-15 set ESR "received illegal vector" and are dropped; a disabled APIC drops
    /// everything. Returns whether it was accepted.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> bool {
        self.accept_fixed(vector, level_triggered, false)
    }

    /// A message in any delivery mode arrives (from the IOAPIC or an IPI).
    pub fn deliver(&mut self, mode: DeliveryMode, vector: u8, level_triggered: bool) -> bool {
        match mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                self.accept(vector, level_triggered)
            }
            _ if self.mode() == ApicMode::Disabled => {
                self.stats.dropped_interrupts += 1;
                false
            }
            DeliveryMode::Nmi => {
                self.nmi_pending = true;
                true
            }
            DeliveryMode::Init => {
                self.init_pending = true;
                true
            }
            DeliveryMode::StartUp => {
                self.sipi = Some(vector);
                true
            }
            DeliveryMode::Smi | DeliveryMode::ExtInt => {
                self.stats.ignored_messages += 1;
                false
            }
        }
    }

    /// An IPI from another APIC (already matched with [`matches_destination`](Self::matches_destination)).
    /// INIT level de-assert is a no-op, as on processors since the Pentium 4.
    pub fn receive_ipi(&mut self, ipi: &Ipi) -> bool {
        if ipi.mode == DeliveryMode::Init && !ipi.assert && ipi.level_triggered {
            return false;
        }
        self.deliver(ipi.mode, ipi.vector, ipi.level_triggered)
    }

    /// Whether a message to `dest` (physical or logical; `wide` = a 32-bit x2APIC-format
    /// destination, else 8-bit as from the IOAPIC or an xAPIC ICR) addresses this APIC (SDM
    /// 11.6.2, 11.12.9-10).
    pub fn matches_destination(&self, dest: u32, logical: bool, wide: bool) -> bool {
        let broadcast = if wide {
            dest == u32::MAX
        } else {
            dest & 0xFF == 0xFF
        };
        match self.mode() {
            ApicMode::Disabled => false,
            ApicMode::XApic => {
                let d = dest as u8;
                if broadcast {
                    return true;
                }
                if !logical {
                    return d == self.xapic_id;
                }
                let ldr = (self.ldr >> 24) as u8;
                if self.dfr >> 28 == 0xF {
                    ldr & d != 0
                } else {
                    (d >> 4 == ldr >> 4 || d >> 4 == 0xF) && d & ldr & 0xF != 0
                }
            }
            ApicMode::X2Apic => {
                if broadcast {
                    return true;
                }
                if !logical {
                    return dest == self.config.apic_id;
                }
                let ldr = self.x2apic_ldr();
                dest >> 16 == ldr >> 16 && dest & ldr & 0xFFFF != 0
            }
        }
    }

    /// Take a pending INIT (the run loop then calls [`init_reset`](Self::init_reset) and waits
    /// for a SIPI, or resets the vCPU for the BSP).
    pub fn take_init(&mut self) -> bool {
        core::mem::take(&mut self.init_pending)
    }

    /// Take a pending start-up IPI's vector.
    pub fn take_sipi(&mut self) -> Option<u8> {
        self.sipi.take()
    }

    /// Whether the 8259A's INTR reaches the CPU: the APIC is globally disabled, or LINT0 is
    /// unmasked in ExtINT mode.
    pub fn extint_enabled(&self) -> bool {
        if self.mode() == ApicMode::Disabled {
            return true;
        }
        let l = self.lvt[Lvt::Lint0 as usize];
        l & LVT_MASK == 0 && (l >> 8) & 7 == 7
    }

    /// LVT entry `lvt` as the guest reads it.
    pub fn lvt(&self, lvt: Lvt) -> u32 {
        self.lvt[lvt as usize]
    }

    /// Deliver LVT `which` if unmasked. Returns whether something was delivered.
    fn raise_lvt(&mut self, which: Lvt) -> bool {
        let v = self.lvt[which as usize];
        if v & LVT_MASK != 0 {
            return false;
        }
        let mode = if which.has_mode() {
            DeliveryMode::from_bits(v >> 8)
        } else {
            Some(DeliveryMode::Fixed)
        };
        let level = matches!(which, Lvt::Lint0 | Lvt::Lint1) && v & LVT_LEVEL != 0;
        let delivered = match mode {
            Some(DeliveryMode::Fixed) => self.accept_fixed(v as u8, level, which == Lvt::Error),
            Some(DeliveryMode::Nmi) => {
                self.nmi_pending = true;
                true
            }
            Some(DeliveryMode::Init) if matches!(which, Lvt::Lint0 | Lvt::Lint1) => {
                self.init_pending = true;
                true
            }
            // ExtINT: the PIC answers the INTA ([`ApicAndPic`]); SMI and the rest: nothing.
            Some(DeliveryMode::ExtInt) => false,
            _ => {
                self.stats.ignored_messages += 1;
                false
            }
        };
        if delivered && which == Lvt::Perf {
            self.lvt[Lvt::Perf as usize] |= LVT_MASK;
        }
        delivered
    }

    /// The vPMU's counter overflowed: raise the perf LVT (which then masks itself, as on
    /// Intel processors). Returns whether an interrupt or NMI was raised.
    pub fn pmu_overflow(&mut self) -> bool {
        self.raise_lvt(Lvt::Perf)
    }

    /// LINT0 (`pin` 0) or LINT1 (`pin` 1) changed. A rising edge (or a pulse) delivers the LVT.
    /// With the APIC globally disabled, LINT1 is the CPU's NMI pin. Level-triggered fixed LINT
    /// entries are accepted with TMR set; their remote-IRR bit is not modelled.
    pub fn lint(&mut self, pin: u8, event: LineEvent) -> bool {
        let Some(idx) = [0usize, 1].get(usize::from(pin)).copied() else {
            return false;
        };
        let was = self.lint_level[idx];
        let rising = match event {
            LineEvent::Level(l) => {
                self.lint_level[idx] = l;
                l && !was
            }
            LineEvent::Pulse => !was,
        };
        if !rising {
            return false;
        }
        if self.mode() == ApicMode::Disabled {
            if idx == 1 {
                self.nmi_pending = true;
                return true;
            }
            return false;
        }
        self.raise_lvt(if idx == 0 { Lvt::Lint0 } else { Lvt::Lint1 })
    }

    /// EOI (SDM 11.8.5): clear the highest ISR bit; a level-triggered vector is broadcast to
    /// the IOAPICs unless SVR bit 12 suppresses it.
    fn eoi(&mut self) -> Effect {
        let Some(v) = highest(&self.isr) else {
            return Effect::None;
        };
        set_bit(&mut self.isr, v, false);
        if test_bit(&self.tmr, v) && self.svr & SVR_SUPPRESS_EOI == 0 {
            Effect::EoiBroadcast(v)
        } else {
            Effect::None
        }
    }

    fn write_svr(&mut self, value: u32) {
        self.svr = value & (0xFF | SVR_ENABLE | SVR_FOCUS | SVR_SUPPRESS_EOI);
        if !self.software_enabled() {
            for l in &mut self.lvt {
                *l |= LVT_MASK;
            }
        }
    }

    fn send_ipi(&mut self) -> Effect {
        let low = self.icr_low;
        let Some(mode) = DeliveryMode::from_bits(low >> 8) else {
            self.stats.ignored_messages += 1;
            return Effect::None;
        };
        let vector = low as u8;
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.stats.illegal_vectors += 1;
            self.record_error(ESR_SEND_ILLEGAL_VECTOR, false);
            return Effect::None;
        }
        let x2apic = self.mode() == ApicMode::X2Apic;
        let ipi = Ipi {
            dest: if x2apic {
                self.icr_high
            } else {
                self.icr_high >> 24
            },
            x2apic,
            logical: low & (1 << 11) != 0,
            shorthand: match (low >> 18) & 3 {
                0 => Shorthand::None,
                1 => Shorthand::SelfOnly,
                2 => Shorthand::AllIncludingSelf,
                _ => Shorthand::AllExcludingSelf,
            },
            mode,
            vector,
            assert: low & (1 << 14) != 0,
            level_triggered: low & (1 << 15) != 0,
        };
        match ipi.shorthand {
            Shorthand::None | Shorthand::AllExcludingSelf => Effect::Ipi(ipi),
            Shorthand::SelfOnly => {
                // SDM 11.6.1: only fixed interrupts may be sent to self.
                if mode == DeliveryMode::Fixed {
                    self.accept(vector, ipi.level_triggered);
                } else {
                    self.stats.ignored_messages += 1;
                }
                Effect::None
            }
            Shorthand::AllIncludingSelf => {
                self.receive_ipi(&ipi);
                Effect::Ipi(Ipi {
                    shorthand: Shorthand::AllExcludingSelf,
                    ..ipi
                })
            }
        }
    }

    // ---- timer (SDM 11.5.4) ----

    /// The timer divisor from the divide configuration register (SDM figure 11-10).
    pub fn divisor(&self) -> u64 {
        let v = (self.dcr & 3) | ((self.dcr >> 1) & 4);
        1 << ((v + 1) & 7)
    }

    fn timer_mode(&self) -> u32 {
        self.lvt[Lvt::Timer as usize] & (3 << 17)
    }

    fn periodic(&self) -> bool {
        self.timer_mode() == TIMER_PERIODIC
    }

    fn deadline_mode(&self) -> bool {
        self.timer_mode() == TIMER_TSC_DEADLINE
    }

    /// The current-count register at `now`.
    pub fn current_count(&self, now: GuestTime) -> u32 {
        let t = &self.timer;
        if !t.running {
            return 0;
        }
        let ticks = now.since(t.anchor) / self.divisor();
        if ticks < u64::from(t.anchor_count) {
            t.anchor_count - ticks as u32
        } else if self.periodic() && t.initial != 0 {
            let r = (ticks - u64::from(t.anchor_count)) % u64::from(t.initial);
            t.initial - r as u32
        } else {
            0
        }
    }

    fn write_initial_count(&mut self, value: u32, now: GuestTime) {
        if self.deadline_mode() {
            return;
        }
        self.timer.initial = value;
        if value == 0 {
            self.timer = CountTimer::STOPPED;
            return;
        }
        self.start_count(value, now);
    }

    fn start_count(&mut self, count: u32, now: GuestTime) {
        self.timer.running = true;
        self.timer.anchor = now;
        self.timer.anchor_count = count;
        self.timer.next_fire = Some(now.plus_nanos(u64::from(count) * self.divisor()));
    }

    fn write_dcr(&mut self, value: u32, now: GuestTime) {
        let count = self.current_count(now);
        self.dcr = value & 0xB;
        // Continue from the current count at the new rate (an expired one-shot that was not
        // polled yet still fires).
        if self.timer.running && count != 0 {
            self.start_count(count, now);
        }
    }

    fn write_lvt(&mut self, which: Lvt, value: u32) -> Effect {
        let mut v = value & which.writable();
        if !self.software_enabled() {
            v |= LVT_MASK;
        }
        let old = self.lvt[which as usize];
        // Keep the read-only bits (delivery status and remote IRR are never set here).
        self.lvt[which as usize] = v | (old & !which.writable() & which.defined());
        if which != Lvt::Timer {
            return Effect::None;
        }
        let was_deadline = old & (3 << 17) == TIMER_TSC_DEADLINE;
        if was_deadline != self.deadline_mode() {
            self.timer = CountTimer::STOPPED;
            self.tsc_deadline = 0;
        }
        Effect::TimerChanged
    }

    /// IA32_TSC_DEADLINE as the guest reads it (0 when disarmed or not in TSC-deadline mode).
    pub const fn tsc_deadline(&self) -> u64 {
        self.tsc_deadline
    }

    /// A guest write of IA32_TSC_DEADLINE (guest TSC `tsc`; 0 disarms). Ignored outside
    /// TSC-deadline mode (SDM 11.5.4.1). The deadline fires at the first guest time at which
    /// every guest TSC value is at or past `tsc`.
    pub fn set_tsc_deadline(&mut self, tsc: u64, clock: &GuestClock) -> Effect {
        if !self.deadline_mode() || self.mode() == ApicMode::Disabled {
            return Effect::None;
        }
        self.tsc_deadline = tsc;
        if tsc != 0 {
            let t = clock.now(tsc);
            self.deadline_at = if clock.tsc_at(t) >= tsc {
                t
            } else {
                t.plus_nanos(1)
            };
        }
        Effect::TimerChanged
    }

    /// When [`poll`](Self::poll) must next be called (`None`: no timer armed); `now` itself
    /// for a timer that is already due.
    pub fn next_deadline(&self, now: GuestTime) -> Option<GuestTime> {
        let count = self.timer.next_fire;
        let tsc = (self.tsc_deadline != 0).then_some(self.deadline_at);
        let d = match (count, tsc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        d.map(|d| d.max(now))
    }

    /// Fire the timers that expired by `now`. Returns whether one fired (delivered or masked).
    pub fn poll(&mut self, now: GuestTime) -> bool {
        let mut fired = false;
        if let Some(at) = self.timer.next_fire {
            if at <= now {
                fired = true;
                if self.periodic() && self.timer.initial != 0 {
                    let period = u64::from(self.timer.initial) * self.divisor();
                    let behind = now.since(at) / period;
                    self.timer.next_fire = Some(at.plus_nanos((behind + 1) * period));
                } else {
                    self.timer.running = false;
                    self.timer.next_fire = None;
                }
            }
        }
        if self.tsc_deadline != 0 && self.deadline_at <= now {
            fired = true;
            self.tsc_deadline = 0;
        }
        if fired {
            self.raise_lvt(Lvt::Timer);
        }
        fired
    }

    // ---- the register model ----

    /// Read the register at xAPIC `offset` (16-byte aligned); `None` for reserved offsets.
    /// Shared by both interfaces (the x2APIC front end filters first).
    fn read_reg(&self, offset: u16, now: GuestTime) -> Option<u32> {
        let x2 = self.mode() == ApicMode::X2Apic;
        Some(match offset {
            reg::ID if x2 => self.config.apic_id,
            reg::ID => u32::from(self.xapic_id) << 24,
            reg::VERSION => APIC_VERSION,
            reg::TPR => u32::from(self.tpr),
            reg::APR => u32::from(self.apr()),
            reg::PPR => u32::from(self.ppr()),
            reg::EOI | reg::RRD => 0,
            reg::LDR if x2 => self.x2apic_ldr(),
            reg::LDR => self.ldr,
            reg::DFR => self.dfr,
            reg::SVR => self.svr,
            0x100..=0x170 => self.isr[usize::from((offset - reg::ISR) >> 4)],
            0x180..=0x1F0 => self.tmr[usize::from((offset - reg::TMR) >> 4)],
            0x200..=0x270 => self.irr[usize::from((offset - reg::IRR) >> 4)],
            reg::ESR => self.esr,
            reg::ICR_LOW => self.icr_low,
            reg::ICR_HIGH => self.icr_high,
            reg::INITIAL_COUNT => self.timer.initial,
            reg::CURRENT_COUNT => self.current_count(now),
            reg::DIVIDE_CONFIG => self.dcr,
            o => self.lvt[Lvt::from_offset(o)? as usize],
        })
    }

    /// Write the register at xAPIC `offset` with xAPIC semantics (reserved bits ignored,
    /// read-only registers ignored). `None` for a reserved offset.
    fn write_reg(&mut self, offset: u16, value: u32, now: GuestTime) -> Option<Effect> {
        Some(match offset {
            reg::ID => {
                self.xapic_id = (value >> 24) as u8;
                Effect::None
            }
            reg::TPR => {
                self.tpr = value as u8;
                Effect::None
            }
            reg::EOI => self.eoi(),
            reg::LDR => {
                self.ldr = value & 0xFF00_0000;
                Effect::None
            }
            reg::DFR => {
                self.dfr = value | 0x0FFF_FFFF;
                Effect::None
            }
            reg::SVR => {
                self.write_svr(value);
                Effect::None
            }
            reg::ESR => {
                self.esr = core::mem::take(&mut self.esr_pending);
                Effect::None
            }
            reg::ICR_LOW => {
                self.icr_low = value & ICR_LOW_WRITABLE;
                self.send_ipi()
            }
            reg::ICR_HIGH => {
                self.icr_high = value & ICR_HIGH_WRITABLE;
                Effect::None
            }
            reg::INITIAL_COUNT => {
                self.write_initial_count(value, now);
                Effect::TimerChanged
            }
            reg::DIVIDE_CONFIG => {
                self.write_dcr(value, now);
                Effect::TimerChanged
            }
            reg::VERSION | reg::APR | reg::PPR | reg::RRD | reg::CURRENT_COUNT | 0x100..=0x270 => {
                Effect::None
            }
            o => self.write_lvt(Lvt::from_offset(o)?, value),
        })
    }

    /// A guest read of `buf.len()` bytes at `offset` in the xAPIC page (see the module docs
    /// for odd widths). Outside xAPIC mode the page reads as all ones.
    pub fn mmio_read(&mut self, offset: u64, buf: &mut [u8], now: GuestTime) {
        if !(offset & 0xF == 0 && buf.len() == 4) {
            self.stats.odd_reads += 1;
        }
        if self.mode() != ApicMode::XApic {
            buf.fill(0xFF);
            return;
        }
        let mut bad = false;
        for (i, b) in buf.iter_mut().enumerate() {
            let off = offset.wrapping_add(i as u64);
            if off >= APIC_MMIO_SIZE {
                *b = 0xFF;
                continue;
            }
            let byte = (off & 0xF) as u32;
            let slot = (off & !0xF) as u16;
            let value = match self.read_reg(slot, now) {
                // SELF IPI is an x2APIC register.
                Some(_) if slot == reg::SELF_IPI => None,
                v => v,
            };
            *b = match value {
                Some(v) if byte < 4 => (v >> (8 * byte)) as u8,
                Some(_) => 0,
                None => {
                    bad |= byte < 4;
                    0
                }
            };
        }
        if bad {
            self.stats.bad_register += 1;
            self.record_error(ESR_ILLEGAL_REGISTER, false);
        }
    }

    /// A guest write of `data` at `offset` in the xAPIC page: only a 32-bit write at a 16-byte
    /// aligned offset takes effect; anything else is dropped and counted.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8], now: GuestTime) -> Effect {
        if self.mode() != ApicMode::XApic
            || data.len() != 4
            || offset & 0xF != 0
            || offset >= APIC_MMIO_SIZE
        {
            self.stats.dropped_writes += 1;
            return Effect::None;
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        match self.write_reg(offset as u16, value, now) {
            Some(e) => e,
            None => {
                self.stats.bad_register += 1;
                self.record_error(ESR_ILLEGAL_REGISTER, false);
                Effect::None
            }
        }
    }

    /// Whether `index` is an MSR this model answers: IA32_APIC_BASE, IA32_TSC_DEADLINE and the
    /// x2APIC range.
    pub const fn handles_msr(index: u32) -> bool {
        matches!(
            index,
            MSR_APIC_BASE | MSR_TSC_DEADLINE | MSR_X2APIC_FIRST..=MSR_X2APIC_LAST
        )
    }

    /// RDMSR of `index` (see [`handles_msr`](Self::handles_msr); others #GP).
    pub fn msr_read(&mut self, index: u32, now: GuestTime) -> Result<u64, Gp> {
        match index {
            MSR_APIC_BASE => return Ok(self.base_msr),
            MSR_TSC_DEADLINE => return Ok(self.tsc_deadline),
            MSR_X2APIC_FIRST..=MSR_X2APIC_LAST => {}
            _ => return Err(Gp),
        }
        if self.mode() != ApicMode::X2Apic {
            return Err(Gp);
        }
        let offset = ((index - MSR_X2APIC_FIRST) << 4) as u16;
        match offset {
            reg::ICR_LOW => Ok(u64::from(self.icr_low) | (u64::from(self.icr_high) << 32)),
            reg::APR | reg::EOI | reg::RRD | reg::DFR | reg::ICR_HIGH | reg::SELF_IPI => Err(Gp),
            o => self.read_reg(o, now).map(u64::from).ok_or(Gp),
        }
    }

    /// WRMSR of `value` to `index`. `clock` converts IA32_TSC_DEADLINE to guest time.
    pub fn msr_write(
        &mut self,
        index: u32,
        value: u64,
        now: GuestTime,
        clock: &GuestClock,
    ) -> Result<Effect, Gp> {
        match index {
            MSR_APIC_BASE => return self.write_apic_base(value),
            MSR_TSC_DEADLINE => return Ok(self.set_tsc_deadline(value, clock)),
            MSR_X2APIC_FIRST..=MSR_X2APIC_LAST => {}
            _ => return Err(Gp),
        }
        if self.mode() != ApicMode::X2Apic {
            return Err(Gp);
        }
        let offset = ((index - MSR_X2APIC_FIRST) << 4) as u16;
        if offset == reg::ICR_LOW {
            // One 64-bit register: destination 63:32, no delivery status bit.
            if value as u32 & !ICR_LOW_WRITABLE != 0 {
                return Err(Gp);
            }
            self.icr_low = value as u32;
            self.icr_high = (value >> 32) as u32;
            return Ok(self.send_ipi());
        }
        if value >> 32 != 0 {
            return Err(Gp);
        }
        let v = value as u32;
        let defined = match offset {
            reg::TPR => 0xFF,
            reg::EOI | reg::ESR => 0,
            reg::SVR => 0xFF | SVR_ENABLE | SVR_FOCUS | SVR_SUPPRESS_EOI,
            reg::INITIAL_COUNT => u32::MAX,
            reg::DIVIDE_CONFIG => 0xB,
            reg::SELF_IPI => 0xFF,
            o => match Lvt::from_offset(o) {
                Some(l) => l.defined(),
                // Read-only and reserved registers.
                None => return Err(Gp),
            },
        };
        if v & !defined != 0 {
            return Err(Gp);
        }
        if offset == reg::SELF_IPI {
            self.accept(v as u8, false);
            return Ok(Effect::None);
        }
        self.write_reg(offset, v, now).ok_or(Gp)
    }
}

impl InterruptController for Lapic {
    /// The highest IRR vector whose priority class is above PPR's (SDM 11.8.3).
    fn pending_vector(&self) -> Option<u8> {
        if self.mode() == ApicMode::Disabled {
            return None;
        }
        let v = highest(&self.irr)?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// Acceptance: IRR -> ISR.
    fn acknowledge(&mut self) -> Option<u8> {
        let v = self.pending_vector()?;
        set_bit(&mut self.irr, v, false);
        set_bit(&mut self.isr, v, true);
        Some(v)
    }

    fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi_pending)
    }
}

/// A vCPU's interrupt input when it has both a local APIC and the 8259A pair: fixed APIC
/// vectors first; PIC vectors come through when the APIC is globally disabled or LINT0 is
/// unmasked in ExtINT mode ([`Lapic::extint_enabled`]), as the PIC's INTR is wired to LINT0.
#[derive(Debug)]
pub struct ApicAndPic<'a, P> {
    /// The local APIC.
    pub lapic: &'a mut Lapic,
    /// The PIC (anything that answers INTA).
    pub pic: &'a mut P,
}

impl<P: InterruptController> InterruptController for ApicAndPic<'_, P> {
    fn pending_vector(&self) -> Option<u8> {
        self.lapic.pending_vector().or_else(|| {
            if self.lapic.extint_enabled() {
                self.pic.pending_vector()
            } else {
                None
            }
        })
    }

    fn acknowledge(&mut self) -> Option<u8> {
        if self.lapic.pending_vector().is_some() {
            self.lapic.acknowledge()
        } else if self.lapic.extint_enabled() {
            self.pic.acknowledge()
        } else {
            None
        }
    }

    fn take_nmi(&mut self) -> bool {
        let a = self.lapic.take_nmi();
        let b = self.pic.take_nmi();
        a || b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: GuestTime = GuestTime::ZERO;
    const CLOCK: GuestClock = GuestClock::new(2_445_000_000, 0);

    fn xapic() -> Lapic {
        Lapic::new(LapicConfig::BSP)
    }

    fn x2apic() -> Lapic {
        Lapic::new(LapicConfig {
            x2apic_at_reset: true,
            apic_id: 0x25,
            ..LapicConfig::BSP
        })
    }

    fn rd(l: &mut Lapic, off: u16) -> u32 {
        let mut b = [0u8; 4];
        l.mmio_read(u64::from(off), &mut b, T0);
        u32::from_le_bytes(b)
    }

    fn rd_at(l: &mut Lapic, off: u16, now: GuestTime) -> u32 {
        let mut b = [0u8; 4];
        l.mmio_read(u64::from(off), &mut b, now);
        u32::from_le_bytes(b)
    }

    fn wr(l: &mut Lapic, off: u16, v: u32) -> Effect {
        l.mmio_write(u64::from(off), &v.to_le_bytes(), T0)
    }

    fn wr_at(l: &mut Lapic, off: u16, v: u32, now: GuestTime) -> Effect {
        l.mmio_write(u64::from(off), &v.to_le_bytes(), now)
    }

    fn msr(reg: u16) -> u32 {
        MSR_X2APIC_FIRST + u32::from(reg >> 4)
    }

    fn wrmsr(l: &mut Lapic, reg: u16, v: u64) -> Result<Effect, Gp> {
        l.msr_write(msr(reg), v, T0, &CLOCK)
    }

    fn rdmsr(l: &mut Lapic, reg: u16) -> Result<u64, Gp> {
        l.msr_read(msr(reg), T0)
    }

    /// Software-enable with spurious vector 0xFF.
    fn enabled_xapic() -> Lapic {
        let mut l = xapic();
        wr(&mut l, reg::SVR, 0x1FF);
        l
    }

    #[test]
    fn power_on_state() {
        let mut l = xapic();
        assert_eq!(l.apic_base(), 0xFEE0_0900, "base | EN | BSP");
        assert_eq!(l.mode(), ApicMode::XApic);
        assert_eq!(l.mmio_base(), Some(0xFEE0_0000));
        assert_eq!(rd(&mut l, reg::ID), 0);
        assert_eq!(rd(&mut l, reg::VERSION), 0x0106_0014);
        assert_eq!(rd(&mut l, reg::SVR), 0xFF);
        assert_eq!(rd(&mut l, reg::DFR), 0xFFFF_FFFF);
        assert_eq!(rd(&mut l, reg::TPR), 0);
        assert_eq!(rd(&mut l, reg::LDR), 0);
        for off in [
            reg::LVT_TIMER,
            reg::LVT_THERMAL,
            reg::LVT_PERF,
            reg::LVT_LINT0,
            reg::LVT_LINT1,
            reg::LVT_ERROR,
            reg::LVT_CMCI,
        ] {
            assert_eq!(rd(&mut l, off), 0x0001_0000, "LVT {off:#x} masked");
        }
        for off in (0x100..0x280).step_by(0x10) {
            assert_eq!(rd(&mut l, off), 0);
        }
        assert!(!l.extint_enabled(), "LINT0 masked: no PIC");
        // An AP: no BSP bit; its ID in bits 31:24.
        let mut ap = Lapic::new(LapicConfig {
            apic_id: 3,
            bsp: false,
            ..LapicConfig::BSP
        });
        assert_eq!(ap.apic_base(), 0xFEE0_0800);
        assert_eq!(rd(&mut ap, reg::ID), 0x0300_0000);
        // The BIOS virtual-wire option.
        let vw = Lapic::new(LapicConfig {
            virtual_wire: true,
            ..LapicConfig::BSP
        });
        assert!(vw.software_enabled() && vw.extint_enabled());
        assert_eq!(vw.lvt(Lvt::Lint1), 0x400);
    }

    #[test]
    fn x2apic_at_reset() {
        let mut l = x2apic();
        assert_eq!(l.apic_base(), 0xFEE0_0D00, "base | EN | EXTD | BSP");
        assert_eq!(l.mode(), ApicMode::X2Apic);
        assert_eq!(l.mmio_base(), None);
        assert_eq!(rdmsr(&mut l, reg::ID), Ok(0x25));
        assert_eq!(rdmsr(&mut l, reg::VERSION), Ok(u64::from(APIC_VERSION)));
        // LDR = cluster (id >> 4) << 16 | 1 << (id & 15).
        assert_eq!(rdmsr(&mut l, reg::LDR), Ok(0x0002_0020));
        assert_eq!(rdmsr(&mut l, reg::SVR), Ok(0xFF));
        // The MMIO page is not decoded.
        assert_eq!(rd(&mut l, reg::VERSION), 0xFFFF_FFFF);
        assert_eq!(wr(&mut l, reg::SVR, 0x1FF), Effect::None);
        assert_eq!(rdmsr(&mut l, reg::SVR), Ok(0xFF));
        // Without x2APIC in the VM, the option does nothing and EXTD is reserved.
        let mut no = Lapic::new(LapicConfig {
            x2apic: false,
            x2apic_at_reset: true,
            ..LapicConfig::BSP
        });
        assert_eq!(no.mode(), ApicMode::XApic);
        assert_eq!(no.write_apic_base(0xFEE0_0D00), Err(Gp));
        assert_eq!(
            no.msr_read(msr(reg::ID), T0),
            Err(Gp),
            "x2APIC MSRs #GP in xAPIC mode"
        );
    }

    #[test]
    fn apic_base_transitions() {
        use ApicMode::*;
        let base = 0xFEE0_0000u64;
        let value = |m: ApicMode| match m {
            Disabled => base,
            XApic => base | BASE_EN,
            X2Apic => base | BASE_EN | BASE_EXTD,
        };
        // SDM figure 11-27.
        for (from, to, ok) in [
            (XApic, XApic, true),
            (XApic, X2Apic, true),
            (XApic, Disabled, true),
            (X2Apic, X2Apic, true),
            (X2Apic, XApic, false),
            (X2Apic, Disabled, true),
            (Disabled, Disabled, true),
            (Disabled, XApic, true),
            (Disabled, X2Apic, false),
        ] {
            let mut l = xapic();
            match from {
                XApic => {}
                X2Apic => assert!(l.write_apic_base(value(X2Apic)).is_ok()),
                Disabled => assert!(l.write_apic_base(value(Disabled)).is_ok()),
            }
            assert_eq!(l.mode(), from);
            let r = l.write_apic_base(value(to));
            assert_eq!(r.is_ok(), ok, "{from:?} -> {to:?}");
            assert_eq!(l.mode(), if ok { to } else { from });
            if ok && from != to {
                assert_eq!(r, Ok(Effect::BaseChanged { mode: to, base }));
            }
        }
        let mut l = xapic();
        // EN=0 with EXTD=1 is invalid; reserved bits 0-7 and 9, and above MAXPHYADDR.
        for bad in [
            base | BASE_EXTD,
            base | BASE_EN | 1,
            base | BASE_EN | (1 << 9),
            base | BASE_EN | (1 << 48),
        ] {
            assert_eq!(l.write_apic_base(bad), Err(Gp), "{bad:#x}");
        }
        assert_eq!(l.apic_base(), 0xFEE0_0900);
        // The BSP bit is not the guest's to change.
        assert_eq!(l.write_apic_base(base | BASE_EN), Ok(Effect::None));
        assert_eq!(l.apic_base() & BASE_BSP, BASE_BSP);
        // Relocation is reported.
        assert_eq!(
            l.msr_write(MSR_APIC_BASE, 0xFED0_0800, T0, &CLOCK),
            Ok(Effect::BaseChanged {
                mode: XApic,
                base: 0xFED0_0000
            })
        );
        assert_eq!(l.mmio_base(), Some(0xFED0_0000));
        assert_eq!(l.msr_read(MSR_APIC_BASE, T0), Ok(0xFED0_0900));
    }

    #[test]
    fn disabling_resets_state() {
        let mut l = enabled_xapic();
        wr(&mut l, reg::TPR, 0x20);
        wr(&mut l, reg::ID, 0x0700_0000);
        wr(&mut l, reg::LVT_TIMER, 0x30);
        wr(&mut l, reg::INITIAL_COUNT, 100);
        l.accept(0x40, true);
        l.acknowledge();
        l.write_apic_base(0xFEE0_0000).unwrap();
        assert_eq!(l.pending_vector(), None);
        assert!(l.extint_enabled(), "a disabled APIC lets the PIC through");
        assert!(
            !l.accept(0x50, false),
            "a disabled APIC takes no interrupts"
        );
        l.write_apic_base(0xFEE0_0800).unwrap();
        let fresh = xapic();
        assert_eq!(rd(&mut l, reg::ID), 0);
        assert_eq!(rd(&mut l, reg::TPR), 0);
        assert_eq!(rd(&mut l, reg::SVR), 0xFF);
        assert_eq!(rd(&mut l, reg::LVT_TIMER), 0x1_0000);
        assert!(!l.isr(0x40) && !l.tmr(0x40));
        assert_eq!(l.next_deadline(T0), None);
        assert_eq!(l.ppr(), fresh.ppr());
    }

    #[test]
    fn xapic_to_x2apic_keeps_state() {
        let mut l = enabled_xapic();
        wr(&mut l, reg::TPR, 0x30);
        l.write_apic_base(0xFEE0_0C00 | BASE_BSP).unwrap();
        assert_eq!(rdmsr(&mut l, reg::TPR), Ok(0x30));
        assert_eq!(rdmsr(&mut l, reg::SVR), Ok(0x1FF));
        assert_eq!(rdmsr(&mut l, reg::LDR), Ok(0x1), "derived from ID 0");
    }

    #[test]
    fn mmio_odd_widths() {
        let mut l = xapic();
        wr(&mut l, reg::ID, 0x5A00_0000);
        wr(&mut l, reg::TPR, 0x12);
        // A byte read of the ID's top byte.
        let mut b = [0u8; 1];
        l.mmio_read(0x23, &mut b, T0);
        assert_eq!(b[0], 0x5A);
        // A 2-byte unaligned read inside the register.
        let mut w = [0u8; 2];
        l.mmio_read(0x22, &mut w, T0);
        assert_eq!(w, [0x00, 0x5A]);
        // 8 bytes at TPR: the register, then 4 reserved bytes of its slot (0).
        let mut q = [0xAAu8; 8];
        l.mmio_read(0x80, &mut q, T0);
        assert_eq!(q, [0x12, 0, 0, 0, 0, 0, 0, 0]);
        // Straddling the end of the page.
        let mut e = [0u8; 4];
        l.mmio_read(0xFFE, &mut e, T0);
        assert_eq!(e, [0, 0, 0xFF, 0xFF]);
        assert_eq!(l.stats().odd_reads, 4);
        // Writes other than 32-bit aligned: dropped.
        for (off, data) in [
            (0x80u64, &[0x55u8][..]),
            (0x80, &[0x55, 0, 0, 0, 0, 0, 0, 0][..]),
            (0x81, &[0x55, 0, 0, 0][..]),
            (0x84, &[0x55, 0, 0, 0][..]),
            (0x1000, &[0x55, 0, 0, 0][..]),
        ] {
            assert_eq!(l.mmio_write(off, data, T0), Effect::None);
        }
        assert_eq!(rd(&mut l, reg::TPR), 0x12);
        assert_eq!(l.stats().dropped_writes, 5);
        // Reserved slots read 0 and set ESR "illegal register address".
        assert_eq!(rd(&mut l, 0x40), 0);
        assert_eq!(rd(&mut l, reg::SELF_IPI), 0, "SELF IPI is x2APIC only");
        wr(&mut l, 0x3A0, 1);
        assert_eq!(l.stats().bad_register, 3);
        wr(&mut l, reg::ESR, 0);
        assert_eq!(rd(&mut l, reg::ESR), ESR_ILLEGAL_REGISTER);
        // Read-only registers ignore writes.
        wr(&mut l, reg::VERSION, 0);
        wr(&mut l, reg::PPR, 0xFF);
        assert_eq!(rd(&mut l, reg::VERSION), APIC_VERSION);
        assert_eq!(rd(&mut l, reg::PPR), 0x12);
    }

    #[test]
    fn x2apic_msr_rules() {
        let mut l = x2apic();
        // Reserved registers #GP both ways.
        for r in [
            0x000,
            0x010,
            0x040,
            reg::APR,
            reg::RRD,
            reg::DFR,
            0x290,
            0x310,
            0x3A0,
            0x3D0,
        ] {
            assert_eq!(rdmsr(&mut l, r), Err(Gp), "read {r:#x}");
            assert_eq!(wrmsr(&mut l, r, 0), Err(Gp), "write {r:#x}");
        }
        // Write-only.
        assert_eq!(rdmsr(&mut l, reg::EOI), Err(Gp));
        assert_eq!(rdmsr(&mut l, reg::SELF_IPI), Err(Gp));
        // Read-only.
        for r in [
            reg::ID,
            reg::VERSION,
            reg::PPR,
            reg::LDR,
            0x100,
            0x1F0,
            0x270,
            reg::CURRENT_COUNT,
        ] {
            assert!(rdmsr(&mut l, r).is_ok(), "read {r:#x}");
            assert_eq!(wrmsr(&mut l, r, 0), Err(Gp), "write {r:#x}");
        }
        // Reserved bits.
        assert_eq!(wrmsr(&mut l, reg::TPR, 0x100), Err(Gp));
        assert_eq!(wrmsr(&mut l, reg::TPR, 1 << 32), Err(Gp));
        assert_eq!(wrmsr(&mut l, reg::EOI, 1), Err(Gp), "EOI must be 0");
        assert_eq!(wrmsr(&mut l, reg::ESR, 1), Err(Gp));
        assert_eq!(wrmsr(&mut l, reg::SVR, 0x2000 | 0xFF), Err(Gp));
        assert_eq!(wrmsr(&mut l, reg::DIVIDE_CONFIG, 4), Err(Gp));
        assert_eq!(wrmsr(&mut l, reg::LVT_ERROR, 0x700), Err(Gp));
        assert_eq!(wrmsr(&mut l, reg::SELF_IPI, 0x100), Err(Gp));
        assert_eq!(
            wrmsr(&mut l, reg::ICR_LOW, 1 << 12),
            Err(Gp),
            "no delivery status"
        );
        assert_eq!(wrmsr(&mut l, reg::ICR_LOW, 1 << 16), Err(Gp));
        // Good writes.
        assert_eq!(wrmsr(&mut l, reg::TPR, 0x20), Ok(Effect::None));
        assert_eq!(rdmsr(&mut l, reg::TPR), Ok(0x20));
        assert_eq!(wrmsr(&mut l, reg::EOI, 0), Ok(Effect::None));
        assert_eq!(wrmsr(&mut l, reg::ESR, 0), Ok(Effect::None));
        assert_eq!(wrmsr(&mut l, reg::SVR, 0x11FF), Ok(Effect::None));
        assert_eq!(rdmsr(&mut l, reg::SVR), Ok(0x11FF));
        // Not ours at all.
        assert_eq!(l.msr_read(0x10, T0), Err(Gp));
        assert!(
            Lapic::handles_msr(0x83F) && Lapic::handles_msr(0x1B) && !Lapic::handles_msr(0x900)
        );
    }

    #[test]
    fn x2apic_icr_is_64_bit() {
        let mut l = x2apic();
        wrmsr(&mut l, reg::SVR, 0x1FF).unwrap();
        // INIT to x2APIC ID 0x1234, then a SIPI with page 0x9A.
        let init = (0x1234u64 << 32) | (5 << 8) | (1 << 14);
        let e = wrmsr(&mut l, reg::ICR_LOW, init).unwrap();
        assert_eq!(
            e,
            Effect::Ipi(Ipi {
                dest: 0x1234,
                x2apic: true,
                logical: false,
                shorthand: Shorthand::None,
                mode: DeliveryMode::Init,
                vector: 0,
                assert: true,
                level_triggered: false,
            })
        );
        assert_eq!(rdmsr(&mut l, reg::ICR_LOW), Ok(init));
        let Ok(Effect::Ipi(sipi)) =
            wrmsr(&mut l, reg::ICR_LOW, (0x1234u64 << 32) | (6 << 8) | 0x9A)
        else {
            panic!("SIPI")
        };
        assert_eq!((sipi.mode, sipi.vector), (DeliveryMode::StartUp, 0x9A));
        // SELF IPI: delivered here, edge-triggered.
        assert_eq!(wrmsr(&mut l, reg::SELF_IPI, 0x41), Ok(Effect::None));
        assert_eq!(l.pending_vector(), Some(0x41));
        assert!(!l.tmr(0x41));
        // A self IPI with an illegal vector.
        wrmsr(&mut l, reg::SELF_IPI, 0x05).unwrap();
        wrmsr(&mut l, reg::ESR, 0).unwrap();
        assert_eq!(
            rdmsr(&mut l, reg::ESR),
            Ok(u64::from(ESR_RECEIVE_ILLEGAL_VECTOR))
        );
    }

    #[test]
    fn xapic_icr_send() {
        let mut l = enabled_xapic();
        // Fixed vector 0x50 to physical APIC 2: the write of ICR low sends.
        assert_eq!(wr(&mut l, reg::ICR_HIGH, 0x0200_0000), Effect::None);
        let e = wr(&mut l, reg::ICR_LOW, 0x4050);
        assert_eq!(
            e,
            Effect::Ipi(Ipi {
                dest: 2,
                x2apic: false,
                logical: false,
                shorthand: Shorthand::None,
                mode: DeliveryMode::Fixed,
                vector: 0x50,
                assert: true,
                level_triggered: false,
            })
        );
        // Delivery status (bit 12) reads idle; the other bits read back.
        assert_eq!(rd(&mut l, reg::ICR_LOW), 0x4050);
        assert_eq!(rd(&mut l, reg::ICR_HIGH), 0x0200_0000);
        assert_eq!(l.pending_vector(), None, "not for us");
        // Self shorthand: local only.
        assert_eq!(wr(&mut l, reg::ICR_LOW, (1 << 18) | 0x61), Effect::None);
        assert_eq!(l.pending_vector(), Some(0x61));
        // All including self: local, and the rest for the platform.
        let Effect::Ipi(ipi) = wr(&mut l, reg::ICR_LOW, (2 << 18) | 0x62) else {
            panic!("broadcast")
        };
        assert_eq!(ipi.shorthand, Shorthand::AllExcludingSelf);
        assert!(l.irr(0x62));
        // All excluding self: nothing local.
        let Effect::Ipi(ipi) = wr(&mut l, reg::ICR_LOW, (3 << 18) | 0x63) else {
            panic!("others")
        };
        assert_eq!(ipi.shorthand, Shorthand::AllExcludingSelf);
        assert!(!l.irr(0x63));
        // NMI to all including self: our NMI flag.
        wr(&mut l, reg::ICR_LOW, (2 << 18) | (4 << 8));
        assert!(l.take_nmi());
        assert!(!l.take_nmi(), "taken once");
        // Illegal vector: ESR "send illegal vector", nothing sent.
        assert_eq!(wr(&mut l, reg::ICR_LOW, 0x0F), Effect::None);
        wr(&mut l, reg::ESR, 0);
        assert_eq!(rd(&mut l, reg::ESR), ESR_SEND_ILLEGAL_VECTOR);
        // Logical, lowest priority, level trigger decoded.
        wr(&mut l, reg::ICR_HIGH, 0x0F00_0000);
        let Effect::Ipi(ipi) = wr(&mut l, reg::ICR_LOW, 0xC971) else {
            panic!("lowest")
        };
        assert_eq!(
            (ipi.dest, ipi.logical, ipi.mode, ipi.level_triggered),
            (0x0F, true, DeliveryMode::LowestPriority, true)
        );
        // Reserved mode 011.
        assert_eq!(wr(&mut l, reg::ICR_LOW, 0x371), Effect::None);
    }

    #[test]
    fn receive_init_sipi() {
        let mut l = enabled_xapic();
        let init = Ipi {
            dest: 0,
            x2apic: false,
            logical: false,
            shorthand: Shorthand::None,
            mode: DeliveryMode::Init,
            vector: 0,
            assert: true,
            level_triggered: false,
        };
        assert!(l.receive_ipi(&init));
        // INIT level de-assert does nothing.
        assert!(!l.receive_ipi(&Ipi {
            assert: false,
            level_triggered: true,
            ..init
        }));
        assert!(l.take_init());
        assert!(!l.take_init());
        wr(&mut l, reg::ID, 0x0400_0000);
        wr(&mut l, reg::TPR, 0x50);
        l.init_reset();
        assert_eq!(rd(&mut l, reg::ID), 0x0400_0000, "INIT keeps the ID");
        assert_eq!(rd(&mut l, reg::TPR), 0);
        assert!(l.receive_ipi(&Ipi {
            mode: DeliveryMode::StartUp,
            vector: 0x10,
            ..init
        }));
        assert_eq!(l.take_sipi(), Some(0x10));
        assert_eq!(l.take_sipi(), None);
    }

    #[test]
    fn priorities_tpr_ppr() {
        let mut l = enabled_xapic();
        assert!(l.accept(0x31, false));
        assert!(l.accept(0x45, false));
        assert!(l.accept(0x4A, false));
        assert_eq!(l.pending_vector(), Some(0x4A));
        // TPR class 4 blocks classes <= 4.
        wr(&mut l, reg::TPR, 0x40);
        assert_eq!(l.pending_vector(), None);
        assert_eq!(rd(&mut l, reg::PPR), 0x40);
        wr(&mut l, reg::TPR, 0x3F);
        assert_eq!(l.pending_vector(), Some(0x4A));
        assert_eq!(l.acknowledge(), Some(0x4A));
        assert!(l.isr(0x4A) && !l.irr(0x4A));
        // PPR = ISR class 0x40 > TPR class 3: 0x45 (same class) waits.
        assert_eq!(rd(&mut l, reg::PPR), 0x40);
        assert_eq!(l.pending_vector(), None);
        // A higher class preempts.
        l.accept(0x80, false);
        assert_eq!(l.acknowledge(), Some(0x80));
        assert_eq!(rd(&mut l, reg::PPR), 0x80);
        // EOI clears the highest ISR bit first.
        wr(&mut l, reg::EOI, 0);
        assert!(!l.isr(0x80) && l.isr(0x4A));
        wr(&mut l, reg::EOI, 0);
        wr(&mut l, reg::TPR, 0);
        assert_eq!(l.acknowledge(), Some(0x45));
        wr(&mut l, reg::EOI, 0);
        assert_eq!(l.acknowledge(), Some(0x31));
        wr(&mut l, reg::EOI, 0);
        assert_eq!(l.acknowledge(), None);
        // An EOI with nothing in service is harmless.
        assert_eq!(wr(&mut l, reg::EOI, 0), Effect::None);
        // CR8 is TPR[7:4].
        l.write_cr8(0x9);
        assert_eq!(l.tpr(), 0x90);
        assert_eq!(l.cr8(), 9);
        // APR follows the highest of TPR, IRR, ISR classes.
        l.write_cr8(0);
        l.accept(0x71, false);
        assert_eq!(rd(&mut l, reg::APR), 0x70);
    }

    #[test]
    fn eoi_broadcast_for_level() {
        let mut l = enabled_xapic();
        l.accept(0x60, true);
        assert!(l.tmr(0x60));
        assert_eq!(l.acknowledge(), Some(0x60));
        assert_eq!(wr(&mut l, reg::EOI, 0), Effect::EoiBroadcast(0x60));
        // Edge: no broadcast, and TMR cleared by the edge acceptance.
        l.accept(0x60, false);
        assert!(!l.tmr(0x60));
        l.acknowledge();
        assert_eq!(wr(&mut l, reg::EOI, 0), Effect::None);
        // SVR bit 12 suppresses the broadcast.
        wr(&mut l, reg::SVR, 0x11FF);
        l.accept(0x61, true);
        l.acknowledge();
        assert_eq!(wr(&mut l, reg::EOI, 0), Effect::None);
        assert!(!l.isr(0x61));
        // x2APIC EOI does the same.
        let mut x = x2apic();
        wrmsr(&mut x, reg::SVR, 0x1FF).unwrap();
        x.accept(0x70, true);
        x.acknowledge();
        assert_eq!(wrmsr(&mut x, reg::EOI, 0), Ok(Effect::EoiBroadcast(0x70)));
    }

    #[test]
    fn illegal_vectors_and_esr() {
        let mut l = enabled_xapic();
        // Error LVT vector 0xEE, unmasked.
        wr(&mut l, reg::LVT_ERROR, 0xEE);
        for v in 0..16 {
            assert!(!l.accept(v, false));
            assert!(!l.irr(v));
        }
        assert_eq!(l.stats().illegal_vectors, 16);
        // The error interrupt fired.
        assert_eq!(l.pending_vector(), Some(0xEE));
        // ESR reads what was latched by the last write: nothing yet.
        assert_eq!(rd(&mut l, reg::ESR), 0);
        wr(&mut l, reg::ESR, 0);
        assert_eq!(rd(&mut l, reg::ESR), ESR_RECEIVE_ILLEGAL_VECTOR);
        // The next write clears it (no new errors since).
        wr(&mut l, reg::ESR, 0);
        assert_eq!(rd(&mut l, reg::ESR), 0);
        // An error LVT with an illegal vector does not recurse.
        wr(&mut l, reg::LVT_ERROR, 0x03);
        l.accept(0x02, false);
        wr(&mut l, reg::ESR, 0);
        assert_eq!(rd(&mut l, reg::ESR), ESR_RECEIVE_ILLEGAL_VECTOR);
    }

    #[test]
    fn software_disable() {
        let mut l = xapic();
        // Disabled (SVR 0xFF at reset): LVTs cannot be unmasked, fixed interrupts dropped.
        wr(&mut l, reg::LVT_TIMER, 0x20);
        assert_eq!(rd(&mut l, reg::LVT_TIMER), 0x1_0020);
        assert!(!l.accept(0x40, false));
        assert_eq!(l.stats().dropped_interrupts, 1);
        // NMIs still arrive.
        assert!(l.deliver(DeliveryMode::Nmi, 0, false));
        assert!(l.take_nmi());
        // Enable, unmask, then disable again: masked.
        wr(&mut l, reg::SVR, 0x1FF);
        wr(&mut l, reg::LVT_TIMER, 0x20);
        wr(&mut l, reg::LVT_LINT0, 0x700);
        assert_eq!(rd(&mut l, reg::LVT_TIMER), 0x20);
        assert!(l.extint_enabled());
        wr(&mut l, reg::SVR, 0xFF);
        assert_eq!(rd(&mut l, reg::LVT_TIMER), 0x1_0020);
        assert_eq!(rd(&mut l, reg::LVT_LINT0), 0x1_0700);
        assert!(!l.extint_enabled());
    }

    #[test]
    fn lvt_read_back_masks() {
        let mut l = enabled_xapic();
        for (off, written, read) in [
            (reg::LVT_TIMER, 0xFFFF_FFFF, 0x0007_00FF),
            (reg::LVT_LINT0, 0xFFFF_FFFF, 0x0001_A7FF),
            (reg::LVT_ERROR, 0xFFFF_FFFF, 0x0001_00FF),
            (reg::LVT_PERF, 0xFFFF_FFFF, 0x0001_07FF),
            (reg::DIVIDE_CONFIG, 0xFFFF_FFFF, 0xB),
            (reg::LDR, 0xFFFF_FFFF, 0xFF00_0000),
            (reg::DFR, 0x0000_0000, 0x0FFF_FFFF),
            (reg::SVR, 0xFFFF_FFFF, 0x13FF),
        ] {
            wr(&mut l, off, written);
            assert_eq!(rd(&mut l, off), read, "{off:#x}");
        }
    }

    #[test]
    fn timer_one_shot() {
        let mut l = enabled_xapic();
        // Vector 0x30, one-shot, divide by 2 (DCR 0): 1000 counts = 2000 ns.
        wr(&mut l, reg::LVT_TIMER, 0x30);
        let t = GuestTime(5_000);
        assert_eq!(
            wr_at(&mut l, reg::INITIAL_COUNT, 1000, t),
            Effect::TimerChanged
        );
        assert_eq!(l.divisor(), 2);
        assert_eq!(rd_at(&mut l, reg::CURRENT_COUNT, t), 1000);
        assert_eq!(rd_at(&mut l, reg::CURRENT_COUNT, t.plus_nanos(1)), 1000);
        assert_eq!(rd_at(&mut l, reg::CURRENT_COUNT, t.plus_nanos(2)), 999);
        assert_eq!(rd_at(&mut l, reg::CURRENT_COUNT, t.plus_nanos(1998)), 1);
        assert_eq!(l.next_deadline(t), Some(GuestTime(7_000)));
        assert!(!l.poll(GuestTime(6_999)));
        assert_eq!(l.pending_vector(), None);
        assert!(l.poll(GuestTime(7_000)));
        assert_eq!(l.pending_vector(), Some(0x30));
        assert_eq!(rd_at(&mut l, reg::CURRENT_COUNT, GuestTime(7_000)), 0);
        assert_eq!(l.next_deadline(GuestTime(7_000)), None);
        assert!(!l.poll(GuestTime(100_000)), "one shot");
        // Initial count reads back; writing 0 stops.
        assert_eq!(rd(&mut l, reg::INITIAL_COUNT), 1000);
        wr(&mut l, reg::INITIAL_COUNT, 5);
        wr(&mut l, reg::INITIAL_COUNT, 0);
        assert_eq!(l.next_deadline(T0), None);
        // Masked: counts and expires without an interrupt.
        let mut m = enabled_xapic();
        wr(&mut m, reg::LVT_TIMER, 0x1_0030);
        wr(&mut m, reg::INITIAL_COUNT, 10);
        assert!(m.poll(GuestTime(20)));
        assert_eq!(m.pending_vector(), None);
    }

    #[test]
    fn timer_divide_values() {
        let mut l = enabled_xapic();
        // SDM figure 11-10: DCR bits 3,1:0.
        for (dcr, div) in [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ] {
            wr(&mut l, reg::DIVIDE_CONFIG, dcr);
            assert_eq!(l.divisor(), div, "dcr {dcr:#b}");
            wr(&mut l, reg::INITIAL_COUNT, 7);
            assert_eq!(l.next_deadline(T0), Some(GuestTime(7 * div)));
        }
    }

    #[test]
    fn timer_periodic() {
        let mut l = enabled_xapic();
        wr(&mut l, reg::DIVIDE_CONFIG, 0b1011); // divide by 1: 1 count = 1 ns
        wr(&mut l, reg::LVT_TIMER, TIMER_PERIODIC | 0xEC);
        wr(&mut l, reg::INITIAL_COUNT, 1_000_000); // 1 ms
        assert_eq!(l.next_deadline(T0), Some(GuestTime(1_000_000)));
        let mut ticks = 0;
        // Poll on time for 10 periods.
        for k in 1..=10u64 {
            assert!(l.poll(GuestTime(k * 1_000_000)));
            assert_eq!(l.acknowledge(), Some(0xEC));
            wr(&mut l, reg::EOI, 0);
            ticks += 1;
            assert_eq!(l.next_deadline(T0), Some(GuestTime((k + 1) * 1_000_000)));
        }
        assert_eq!(ticks, 10);
        // Current count reloads: 250 us into a period, 750,000 counts are left.
        assert_eq!(
            rd_at(&mut l, reg::CURRENT_COUNT, GuestTime(10_250_000)),
            750_000
        );
        assert_eq!(
            rd_at(&mut l, reg::CURRENT_COUNT, GuestTime(11_000_000)),
            1_000_000
        );
        // Polled 3.5 periods late: one interrupt, next on the period grid.
        assert!(l.poll(GuestTime(14_500_000)));
        assert_eq!(l.next_deadline(T0), Some(GuestTime(15_000_000)));
        assert_eq!(l.acknowledge(), Some(0xEC));
        assert_eq!(l.acknowledge(), None);
    }

    #[test]
    fn timer_divide_change_mid_count() {
        let mut l = enabled_xapic();
        wr(&mut l, reg::DIVIDE_CONFIG, 0b1011); // by 1
        wr(&mut l, reg::LVT_TIMER, 0x30);
        wr_at(&mut l, reg::INITIAL_COUNT, 1000, T0);
        // After 400 ns, 600 counts remain; at divide by 4 they take 2400 ns.
        wr_at(&mut l, reg::DIVIDE_CONFIG, 0b0001, GuestTime(400));
        assert_eq!(rd_at(&mut l, reg::CURRENT_COUNT, GuestTime(400)), 600);
        assert_eq!(rd_at(&mut l, reg::CURRENT_COUNT, GuestTime(404)), 599);
        assert_eq!(l.next_deadline(T0), Some(GuestTime(2800)));
        assert!(!l.poll(GuestTime(2799)));
        assert!(l.poll(GuestTime(2800)));
    }

    #[test]
    fn timer_tsc_deadline() {
        let mut l = enabled_xapic();
        // Outside TSC-deadline mode the MSR ignores writes and reads 0.
        assert_eq!(
            l.msr_write(MSR_TSC_DEADLINE, 1000, T0, &CLOCK),
            Ok(Effect::None)
        );
        assert_eq!(l.msr_read(MSR_TSC_DEADLINE, T0), Ok(0));
        wr(&mut l, reg::LVT_TIMER, TIMER_TSC_DEADLINE | 0xEF);
        // Initial count is ignored in this mode.
        wr(&mut l, reg::INITIAL_COUNT, 100);
        assert_eq!(rd(&mut l, reg::INITIAL_COUNT), 0);
        assert_eq!(l.next_deadline(T0), None);
        // 2.445 GHz: TSC 2_445_000 is 1 ms; 2_445_001 is just after it.
        let tsc = 2_445_001;
        assert_eq!(
            l.msr_write(MSR_TSC_DEADLINE, tsc, T0, &CLOCK),
            Ok(Effect::TimerChanged)
        );
        assert_eq!(l.msr_read(MSR_TSC_DEADLINE, T0), Ok(tsc));
        let at = l.next_deadline(T0).unwrap();
        assert!(CLOCK.tsc_at(at) >= tsc, "never early");
        assert!(
            CLOCK.tsc_at(GuestTime(at.0 - 1)) < tsc,
            "the first such time"
        );
        assert!(!l.poll(GuestTime(at.0 - 1)));
        assert!(l.poll(at));
        assert_eq!(l.pending_vector(), Some(0xEF));
        assert_eq!(
            l.msr_read(MSR_TSC_DEADLINE, T0),
            Ok(0),
            "cleared when it fires"
        );
        assert_eq!(l.next_deadline(at), None);
        // Writing 0 disarms; a deadline in the past fires at the next poll.
        l.set_tsc_deadline(5_000_000, &CLOCK);
        l.set_tsc_deadline(0, &CLOCK);
        assert_eq!(l.next_deadline(T0), None);
        l.set_tsc_deadline(1, &CLOCK);
        assert_eq!(l.next_deadline(GuestTime(9_000)), Some(GuestTime(9_000)));
        assert!(l.poll(GuestTime(9_000)));
        // Leaving TSC-deadline mode disarms it.
        l.set_tsc_deadline(5_000_000, &CLOCK);
        wr(&mut l, reg::LVT_TIMER, 0xEF);
        assert_eq!(l.tsc_deadline(), 0);
        assert_eq!(l.next_deadline(T0), None);
        // Entering it stops the count timer.
        wr(&mut l, reg::INITIAL_COUNT, 100);
        wr(&mut l, reg::LVT_TIMER, TIMER_TSC_DEADLINE | 0xEF);
        assert_eq!(l.next_deadline(T0), None);
        assert_eq!(rd(&mut l, reg::CURRENT_COUNT), 0);
    }

    #[test]
    fn pmu_overflow_perf_lvt() {
        let mut l = enabled_xapic();
        assert!(!l.pmu_overflow(), "masked at reset");
        // Fixed vector 0xF0.
        wr(&mut l, reg::LVT_PERF, 0xF0);
        assert!(l.pmu_overflow());
        assert_eq!(l.pending_vector(), Some(0xF0));
        // Delivery masked the entry until the handler re-arms it.
        assert_eq!(rd(&mut l, reg::LVT_PERF), 0x1_00F0);
        assert!(!l.pmu_overflow());
        // NMI mode, as Linux perf uses.
        wr(&mut l, reg::LVT_PERF, 0x400);
        assert!(l.pmu_overflow());
        assert!(l.take_nmi());
    }

    #[test]
    fn lint_pins() {
        let mut l = enabled_xapic();
        wr(&mut l, reg::LVT_LINT1, 0x400); // NMI
        assert!(l.lint(1, LineEvent::Level(true)));
        assert!(!l.lint(1, LineEvent::Level(true)), "no new edge");
        assert!(l.take_nmi());
        l.lint(1, LineEvent::Level(false));
        assert!(l.lint(1, LineEvent::Pulse));
        // A fixed, level-triggered LINT0.
        wr(&mut l, reg::LVT_LINT0, 0x8000 | 0x55);
        assert!(l.lint(0, LineEvent::Pulse));
        assert!(l.irr(0x55) && l.tmr(0x55));
        // Globally disabled: LINT1 is the NMI pin regardless of its LVT.
        l.write_apic_base(0xFEE0_0000).unwrap();
        assert!(l.lint(1, LineEvent::Pulse));
        assert!(l.take_nmi());
        assert!(!l.lint(7, LineEvent::Pulse));
    }

    #[test]
    fn destinations() {
        let mut l = enabled_xapic();
        wr(&mut l, reg::ID, 0x0300_0000);
        assert!(l.matches_destination(3, false, false));
        assert!(l.matches_destination(0xFF, false, false));
        assert!(!l.matches_destination(2, false, false));
        // Flat logical: LDR bit set in the destination mask.
        wr(&mut l, reg::LDR, 0x0400_0000);
        assert!(l.matches_destination(0x0C, true, false));
        assert!(!l.matches_destination(0x03, true, false));
        // Cluster: high nibble is the cluster.
        wr(&mut l, reg::DFR, 0x0FFF_FFFF);
        wr(&mut l, reg::LDR, 0x2100_0000);
        assert!(l.matches_destination(0x21, true, false));
        assert!(l.matches_destination(0x23, true, false));
        assert!(!l.matches_destination(0x11, true, false));
        assert!(!l.matches_destination(0x22, true, false));
        // x2APIC: 32-bit physical, cluster logical.
        let x = x2apic(); // ID 0x25: cluster 2, bit 5
        assert!(x.matches_destination(0x25, false, true));
        assert!(x.matches_destination(u32::MAX, false, true));
        assert!(!x.matches_destination(0x24, false, true));
        assert!(x.matches_destination(0x0002_0020, true, true));
        assert!(!x.matches_destination(0x0001_0020, true, true));
        // From the IOAPIC (8-bit): 0xFF broadcasts.
        assert!(x.matches_destination(0xFF, false, false));
        let mut off = xapic();
        off.write_apic_base(0xFEE0_0000).unwrap();
        assert!(!off.matches_destination(0xFF, false, false));
    }

    #[test]
    fn ioapic_deliveries_arrive() {
        let mut l = enabled_xapic();
        assert!(l.deliver(IoapicDeliveryMode::Fixed.into(), 0x39, true));
        assert!(l.tmr(0x39));
        assert!(l.deliver(IoapicDeliveryMode::Nmi.into(), 0, false));
        assert!(l.take_nmi());
        assert!(!l.deliver(IoapicDeliveryMode::ExtInt.into(), 0, false));
        assert!(!l.deliver(IoapicDeliveryMode::Smi.into(), 0, false));
        assert_eq!(l.stats().ignored_messages, 2);
    }

    /// A PIC stand-in: one pending vector.
    #[derive(Debug, Default)]
    struct FakePic {
        vector: Option<u8>,
        nmi: bool,
    }

    impl InterruptController for FakePic {
        fn pending_vector(&self) -> Option<u8> {
            self.vector
        }
        fn acknowledge(&mut self) -> Option<u8> {
            self.vector.take()
        }
        fn take_nmi(&mut self) -> bool {
            core::mem::take(&mut self.nmi)
        }
    }

    #[test]
    fn apic_and_pic() {
        let mut l = enabled_xapic();
        let mut pic = FakePic {
            vector: Some(0x08),
            nmi: false,
        };
        // LINT0 masked: the PIC is not heard.
        {
            let c = ApicAndPic {
                lapic: &mut l,
                pic: &mut pic,
            };
            assert_eq!(c.pending_vector(), None);
        }
        // Virtual wire: LINT0 ExtINT unmasked.
        wr(&mut l, reg::LVT_LINT0, 0x700);
        l.accept(0x40, false);
        let mut c = ApicAndPic {
            lapic: &mut l,
            pic: &mut pic,
        };
        // Fixed APIC vectors first, then the PIC's.
        assert_eq!(c.pending_vector(), Some(0x40));
        assert_eq!(c.acknowledge(), Some(0x40));
        assert_eq!(c.pending_vector(), Some(0x08));
        assert_eq!(c.acknowledge(), Some(0x08));
        assert_eq!(c.acknowledge(), None);
        c.pic.nmi = true;
        assert!(c.take_nmi());
        // A globally disabled APIC passes the PIC through.
        let mut off = xapic();
        off.write_apic_base(0xFEE0_0000).unwrap();
        let mut pic = FakePic {
            vector: Some(0x20),
            nmi: false,
        };
        let mut c = ApicAndPic {
            lapic: &mut off,
            pic: &mut pic,
        };
        assert_eq!(c.acknowledge(), Some(0x20));
    }

    #[test]
    fn reset_restores_power_on() {
        let mut l = enabled_xapic();
        wr(&mut l, reg::TPR, 0x30);
        wr(&mut l, reg::LVT_TIMER, TIMER_PERIODIC | 0x30);
        wr(&mut l, reg::INITIAL_COUNT, 10);
        l.write_apic_base(0xFED0_0C00).unwrap();
        l.reset();
        let mut fresh = xapic();
        fresh.stats = l.stats();
        assert_eq!(l, fresh);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Accept(u8, bool),
        Ack,
        Eoi,
        Tpr(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<bool>()).prop_map(|(v, l)| Op::Accept(v, l)),
            Just(Op::Ack),
            Just(Op::Eoi),
            any::<u8>().prop_map(Op::Tpr),
        ]
    }

    proptest! {
        /// Whatever the guest does, the delivered vector's class is above PPR's, it becomes
        /// the highest in-service vector, and vectors 0-15 never reach IRR or ISR.
        #[test]
        fn priority_invariants(ops in proptest::collection::vec(op(), 1..200)) {
            let mut l = enabled_xapic();
            for op in ops {
                match op {
                    Op::Accept(v, lvl) => {
                        let ok = l.accept(v, lvl);
                        prop_assert_eq!(ok, v >= 16);
                    }
                    Op::Ack => {
                        let ppr = l.ppr();
                        let p = l.pending_vector();
                        let a = l.acknowledge();
                        prop_assert_eq!(p, a);
                        if let Some(v) = a {
                            prop_assert!(v >> 4 > ppr >> 4);
                            prop_assert_eq!(highest(&l.isr), Some(v));
                            prop_assert!(!l.irr(v));
                        }
                    }
                    Op::Eoi => {
                        let top = highest(&l.isr);
                        let e = wr(&mut l, reg::EOI, 0);
                        if let Effect::EoiBroadcast(v) = e {
                            prop_assert_eq!(Some(v), top);
                            prop_assert!(l.tmr(v));
                        }
                        if let Some(v) = top {
                            prop_assert!(!l.isr(v));
                        }
                    }
                    Op::Tpr(t) => {
                        wr(&mut l, reg::TPR, u32::from(t));
                    }
                }
                prop_assert_eq!(l.irr[0] & 0xFFFF, 0);
                prop_assert_eq!(l.isr[0] & 0xFFFF, 0);
                if let Some(v) = l.pending_vector() {
                    prop_assert!(v >> 4 > l.ppr() >> 4);
                }
            }
        }

        /// The current count is non-increasing within a one-shot run and the timer fires
        /// exactly when it reaches 0.
        #[test]
        fn one_shot_count(initial in 1u32..100_000, dcr in 0u32..16, t in 0u64..20_000_000) {
            let mut l = enabled_xapic();
            wr(&mut l, reg::DIVIDE_CONFIG, dcr);
            wr(&mut l, reg::LVT_TIMER, 0x30);
            wr(&mut l, reg::INITIAL_COUNT, initial);
            let end = u64::from(initial) * l.divisor();
            prop_assert_eq!(l.next_deadline(T0), Some(GuestTime(end)));
            let now = GuestTime(t);
            let c = rd_at(&mut l, reg::CURRENT_COUNT, now);
            prop_assert_eq!(u64::from(c), u64::from(initial).saturating_sub(t / l.divisor()));
            prop_assert_eq!(l.poll(now), t >= end);
            prop_assert_eq!(l.pending_vector().is_some(), t >= end);
        }

        /// Any MSR access in any mode either succeeds or #GPs, never panics, and a #GP
        /// changes nothing.
        #[test]
        fn msr_fuzz(start_x2 in any::<bool>(), accesses in proptest::collection::vec(
            (0x7F0u32..0x910, any::<u64>(), any::<bool>(), 0u64..1 << 40), 1..100)) {
            let mut l = if start_x2 { x2apic() } else { xapic() };
            for (index, value, write, now) in accesses {
                let value = if index & 1 == 0 { value & 0xFFFF_FFFF } else { value };
                let before = l.clone();
                let r = if write {
                    l.msr_write(index, value, GuestTime(now), &CLOCK).map(|_| ())
                } else {
                    l.msr_read(index, GuestTime(now)).map(|_| ())
                };
                if r.is_err() {
                    prop_assert_eq!(&l, &before);
                }
                let _ = l.poll(GuestTime(now));
                let _ = l.acknowledge();
            }
        }

        /// MMIO accesses of any width at any offset never panic.
        #[test]
        fn mmio_fuzz(accesses in proptest::collection::vec(
            (0u64..0x1010, proptest::collection::vec(any::<u8>(), 0..17), 0u64..1 << 30), 1..100)) {
            let mut l = enabled_xapic();
            for (off, data, now) in accesses {
                let mut buf = data.clone();
                l.mmio_read(off, &mut buf, GuestTime(now));
                let _ = l.mmio_write(off, &data, GuestTime(now));
                // Aligned 32-bit writes with random values, too.
                if data.len() >= 4 {
                    let _ = l.mmio_write(off & !0xF, &data[..4], GuestTime(now));
                }
                let _ = l.poll(GuestTime(now));
            }
        }

        /// IA32_APIC_BASE as a state machine over random writes: a write succeeds exactly when
        /// SDM figure 11-27 allows the transition and no reserved bit is set; a refused write
        /// changes nothing; reaching "disabled" leaves the power-on register state.
        #[test]
        fn apic_base_state_machine(writes in proptest::collection::vec(
            (0u8..4, any::<bool>(), any::<bool>()), 1..60)) {
            use ApicMode::*;
            let mut l = enabled_xapic();
            for (mode_bits, moved, reserved) in writes {
                let base = if moved { 0xFED0_0000u64 } else { APIC_DEFAULT_BASE };
                let value = base
                    | if mode_bits & 1 != 0 { BASE_EN } else { 0 }
                    | if mode_bits & 2 != 0 { BASE_EXTD } else { 0 }
                    | if reserved { 1 << 9 } else { 0 };
                let from = l.mode();
                let to = match mode_bits {
                    0 => Some(Disabled),
                    1 => Some(XApic),
                    3 => Some(X2Apic),
                    _ => None,
                };
                let legal = !reserved
                    && !matches!(
                        (from, to),
                        (_, None) | (X2Apic, Some(XApic)) | (Disabled, Some(X2Apic))
                    );
                let before = l.clone();
                let r = l.write_apic_base(value);
                prop_assert_eq!(r.is_ok(), legal, "{:?} -> {:#x}", from, value);
                if legal {
                    prop_assert_eq!(Some(l.mode()), to);
                    prop_assert_eq!(l.base(), base);
                    prop_assert_eq!(l.apic_base() & BASE_BSP, BASE_BSP);
                    if l.mode() == Disabled {
                        prop_assert!(!l.software_enabled());
                        prop_assert_eq!(l.lvt, [LVT_MASK; 7]);
                        prop_assert_eq!(l.pending_vector(), None);
                    }
                } else {
                    prop_assert_eq!(&l, &before);
                }
                // Some activity between writes.
                if l.mode() != Disabled {
                    l.write_svr(0x1FF);
                    l.accept(0x80, true);
                }
            }
        }
    }
}
