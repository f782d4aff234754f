//! The PC chipset of a VM: the interrupt controllers and timers wired together as on a PC.
//!
//! Why one place: every device model here is pure and knows nothing of its neighbours (the PIT
//! reports edges on OUT0, the UART and RTC report line levels, the IOAPIC returns interrupt
//! messages, the local APIC returns EOI broadcasts). This file is the board: it routes ISA
//! interrupt lines to both the 8259A pair and the IOAPIC (IRQ 0 on IOAPIC pin 2, as every PC
//! chipset since the PIIX and as our MP table and MADT say), IOAPIC messages to the local APIC
//! whose destination they match, level-triggered EOIs back to the IOAPIC, and presents the vCPU
//! with one [`InterruptController`]: the local APIC with the PIC behind LINT0 (ExtINT), or the
//! PIC alone when the VM has no local APIC. It also merges the timers' deadlines.
//!
//! | ports / addresses       | device                                    |
//! |-------------------------|-------------------------------------------|
//! | 0x20-0x21, 0xA0-0xA1, 0x4D0-0x4D1 | 8259A pair and ELCR ([`pic`](super::pic)) |
//! | 0x40-0x43, 0x61         | 8254 PIT and port B ([`pit`](super::pit))  |
//! | 0xFEC00000 (4 KiB)      | IOAPIC ([`ioapic`](super::ioapic))         |
//! | IA32_APIC_BASE page (xAPIC), MSRs 0x800-0x8FF (x2APIC), 0x1B, 0x6E0 | local APIC ([`lapic`](super::lapic)) |
//!
//! Time comes in as `now` on every call; nothing here reads a clock or allocates.

use super::ioapic::{Delivery, IOAPIC_BASE, IOAPIC_MMIO_SIZE, Ioapic};
use super::lapic::{self, ApicAndPic, Effect, Gp, Lapic, LapicConfig};
use super::pic::PicPair;
use super::pit::Pit;
use crate::irq::{InterruptController, IrqLine, LineEvent};
use crate::time::{GuestClock, GuestTime};

/// What the VM's chipset has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChipsetConfig {
    /// A local APIC (and so the IOAPIC and x2APIC); `None`: PIC and PIT only.
    pub lapic: Option<LapicConfig>,
}

impl ChipsetConfig {
    /// The legacy PC: PIC and PIT, no APIC (today's built-in guests and Linux's Path P).
    pub const LEGACY: ChipsetConfig = ChipsetConfig { lapic: None };
}

/// Counters of what the board could not deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChipsetStats {
    /// IOAPIC messages no local APIC accepted (wrong destination, or no APIC).
    pub undelivered: u64,
    /// IPIs to other vCPUs (a one-vCPU VM has none to deliver them to).
    pub ipis_dropped: u64,
}

/// The interrupt controllers and timers of one VM (one vCPU).
#[derive(Clone, Debug)]
pub struct Chipset {
    /// The 8259A pair.
    pub pic: PicPair,
    /// The 8254.
    pub pit: Pit,
    /// The IOAPIC.
    pub ioapic: Ioapic,
    /// The vCPU's local APIC, if the VM has one.
    pub lapic: Option<Lapic>,
    /// Counters.
    pub stats: ChipsetStats,
}

/// The IOAPIC pin an ISA IRQ arrives on (IRQ 0 on pin 2; the PIC's own output is pin 0).
pub const fn ioapic_pin(irq: IrqLine) -> u8 {
    if irq.0 == 0 { 2 } else { irq.0 }
}

impl Chipset {
    /// The chipset `config` describes, in reset state.
    pub fn new(config: ChipsetConfig) -> Chipset {
        Chipset {
            pic: PicPair::new(),
            pit: Pit::new(),
            ioapic: Ioapic::new(),
            lapic: config.lapic.map(Lapic::new),
            stats: ChipsetStats::default(),
        }
    }

    /// Guest reset (the one reset path): every device to its reset state.
    pub fn reset(&mut self) {
        self.pic.reset();
        self.pit.reset();
        self.ioapic.reset();
        if let Some(l) = &mut self.lapic {
            l.reset();
        }
        self.stats = ChipsetStats::default();
    }

    /// Whether `port` is one of the chipset's.
    pub const fn claims_port(port: u16) -> bool {
        PicPair::claims(port) || Pit::claims(port)
    }

    /// IN from a chipset port.
    pub fn port_read(&mut self, port: u16, data: &mut [u8], now: GuestTime) {
        if Pit::claims(port) {
            self.pit.read(port, data, now);
        } else {
            self.pic.read(port, data);
        }
    }

    /// OUT to a chipset port. Reprogramming the PIT can raise OUT0 at once (mode 0 with a
    /// count of 1, say), so the lines are updated before returning.
    pub fn port_write(&mut self, port: u16, data: &[u8], now: GuestTime) {
        if Pit::claims(port) {
            self.pit.write(port, data, now);
        } else {
            self.pic.write(port, data);
        }
        self.poll(now);
    }

    /// Whether guest-physical `gpa` lies in a chipset MMIO page (the IOAPIC's; the local
    /// APIC's in xAPIC mode).
    pub fn claims_mmio(&self, gpa: u64) -> bool {
        self.ioapic_offset(gpa).is_some() || self.lapic_offset(gpa).is_some()
    }

    fn ioapic_offset(&self, gpa: u64) -> Option<u64> {
        self.lapic.as_ref()?;
        gpa.checked_sub(IOAPIC_BASE)
            .filter(|&o| o < IOAPIC_MMIO_SIZE)
    }

    fn lapic_offset(&self, gpa: u64) -> Option<u64> {
        let base = self.lapic.as_ref()?.mmio_base()?;
        gpa.checked_sub(base).filter(|&o| o < lapic::APIC_MMIO_SIZE)
    }

    /// MMIO read inside a chipset page (see [`claims_mmio`](Self::claims_mmio)); other
    /// addresses read all ones.
    pub fn mmio_read(&mut self, gpa: u64, data: &mut [u8], now: GuestTime) {
        if let Some(off) = self.lapic_offset(gpa) {
            if let Some(l) = &mut self.lapic {
                l.mmio_read(off, data, now);
            }
        } else if let Some(off) = self.ioapic_offset(gpa) {
            self.ioapic.mmio_read(off, data);
        } else {
            data.fill(0xFF);
        }
    }

    /// MMIO write inside a chipset page; other addresses drop it.
    pub fn mmio_write(&mut self, gpa: u64, data: &[u8], now: GuestTime) {
        if let Some(off) = self.lapic_offset(gpa) {
            let effect = match &mut self.lapic {
                Some(l) => l.mmio_write(off, data, now),
                None => Effect::None,
            };
            self.apply(effect);
        } else if let Some(off) = self.ioapic_offset(gpa) {
            if let Some(d) = self.ioapic.mmio_write(off, data) {
                self.route(d);
            }
        }
    }

    /// Whether RDMSR/WRMSR of `index` is the local APIC's (IA32_APIC_BASE, IA32_TSC_DEADLINE,
    /// the x2APIC range): only when the VM has one.
    pub fn handles_msr(&self, index: u32) -> bool {
        self.lapic.is_some() && Lapic::handles_msr(index)
    }

    /// RDMSR of a local APIC MSR.
    pub fn msr_read(&mut self, index: u32, now: GuestTime) -> Result<u64, Gp> {
        match &mut self.lapic {
            Some(l) => l.msr_read(index, now),
            None => Err(Gp),
        }
    }

    /// WRMSR of a local APIC MSR.
    pub fn msr_write(
        &mut self,
        index: u32,
        value: u64,
        now: GuestTime,
        clock: &GuestClock,
    ) -> Result<(), Gp> {
        let effect = match &mut self.lapic {
            Some(l) => l.msr_write(index, value, now, clock)?,
            None => return Err(Gp),
        };
        self.apply(effect);
        Ok(())
    }

    /// An ISA interrupt line changed (UART IRQ 4, RTC IRQ 8...): to the PIC and, where the
    /// VM has a local APIC, to the IOAPIC.
    pub fn set_line(&mut self, irq: IrqLine, ev: LineEvent) {
        self.pic.set_irq(irq, ev);
        if self.lapic.is_some() {
            if let Some(d) = self.ioapic.set_irq(ioapic_pin(irq), ev) {
                self.route(d);
            }
        }
    }

    /// Bring the timers up to `now`: PIT OUT0 edges onto IRQ 0, expired local APIC timers
    /// into its IRR. Call before deciding what to inject and after every chipset access.
    pub fn poll(&mut self, now: GuestTime) {
        if let Some(ev) = self.pit.irq0(now) {
            self.set_line(IrqLine::PIT, ev);
        }
        if let Some(l) = &mut self.lapic {
            l.poll(now);
        }
    }

    /// The earliest time a timer here needs [`poll`](Self::poll) (for the CPU's timer queue).
    pub fn next_deadline(&self, now: GuestTime) -> Option<GuestTime> {
        let pit = self.pit.next_deadline(now);
        let apic = self.lapic.as_ref().and_then(|l| l.next_deadline(now));
        match (pit, apic) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What a local APIC register write asks of the board.
    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::EoiBroadcast(vector) => {
                for d in self.ioapic.eoi(vector) {
                    self.route(d);
                }
            }
            Effect::Ipi(_) => self.stats.ipis_dropped = self.stats.ipis_dropped.saturating_add(1),
            Effect::None | Effect::TimerChanged | Effect::BaseChanged { .. } => {}
        }
    }

    /// An IOAPIC message to the local APIC it addresses.
    fn route(&mut self, d: Delivery) {
        let accepted = match &mut self.lapic {
            Some(l) if l.matches_destination(u32::from(d.dest), d.logical, false) => {
                l.deliver(d.mode.into(), d.vector, d.level)
            }
            _ => false,
        };
        if !accepted {
            self.stats.undelivered = self.stats.undelivered.saturating_add(1);
        }
    }

    /// The vCPU's interrupt input, for the run loop's injection decision.
    pub fn controller(&mut self) -> VcpuInterrupts<'_> {
        match &mut self.lapic {
            Some(lapic) => VcpuInterrupts::Apic(ApicAndPic {
                lapic,
                pic: &mut self.pic,
            }),
            None => VcpuInterrupts::Pic(&mut self.pic),
        }
    }
}

/// A vCPU's interrupt input: see [`Chipset::controller`].
#[derive(Debug)]
pub enum VcpuInterrupts<'a> {
    /// No local APIC: the PIC's INTR goes straight to the CPU.
    Pic(&'a mut PicPair),
    /// The local APIC, with the PIC behind LINT0.
    Apic(ApicAndPic<'a, PicPair>),
}

impl InterruptController for VcpuInterrupts<'_> {
    fn pending_vector(&self) -> Option<u8> {
        match self {
            VcpuInterrupts::Pic(p) => p.pending_vector(),
            VcpuInterrupts::Apic(a) => a.pending_vector(),
        }
    }

    fn acknowledge(&mut self) -> Option<u8> {
        match self {
            VcpuInterrupts::Pic(p) => p.acknowledge(),
            VcpuInterrupts::Apic(a) => a.acknowledge(),
        }
    }

    fn take_nmi(&mut self) -> bool {
        match self {
            VcpuInterrupts::Pic(p) => p.take_nmi(),
            VcpuInterrupts::Apic(a) => a.take_nmi(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pit::PIT_HZ;

    fn ms(n: u64) -> GuestTime {
        GuestTime(n * 1_000_000)
    }

    fn out(c: &mut Chipset, port: u16, value: u8, now: GuestTime) {
        c.port_write(port, &[value], now);
    }

    /// Linux's init_8259A with vector bases 0x30/0x38, IRQ 0 unmasked.
    fn linux_pic(c: &mut Chipset, now: GuestTime) {
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x30),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xA0, 0x11),
            (0xA1, 0x38),
            (0xA1, 0x02),
            (0xA1, 0x01),
            (0x21, 0xFE),
            (0xA1, 0xFF),
        ] {
            out(c, port, v, now);
        }
    }

    /// PIT channel 0, mode 2, `reload`.
    fn pit_periodic(c: &mut Chipset, reload: u16, now: GuestTime) {
        out(c, 0x43, 0x34, now);
        out(c, 0x40, reload as u8, now);
        out(c, 0x40, (reload >> 8) as u8, now);
    }

    /// Take every interrupt the way a guest with IF=1 would, with a non-specific EOI to the
    /// master after each, polling every `step` up to `until`; returns the vectors taken.
    fn run_pic_guest(c: &mut Chipset, from: GuestTime, until: GuestTime, step: u64) -> Vec<u8> {
        let mut taken = vec![];
        let mut now = from;
        while now < until {
            c.poll(now);
            while c.controller().pending_vector().is_some() {
                let v = c.controller().acknowledge().unwrap();
                taken.push(v);
                out(c, 0x20, 0x20, now);
            }
            now = now.plus_nanos(step);
        }
        taken
    }

    /// The `ticker` guest's path (and Linux's with `nolapic`): PIT mode 2 at 1 kHz, IRQ 0
    /// through the master PIC: one vector 0x30 per period of guest time.
    #[test]
    fn pit_ticks_through_the_pic() {
        let mut c = Chipset::new(ChipsetConfig::LEGACY);
        linux_pic(&mut c, GuestTime::ZERO);
        let reload = (PIT_HZ / 1000) as u16;
        pit_periodic(&mut c, reload, GuestTime::ZERO);
        let taken = run_pic_guest(&mut c, GuestTime::ZERO, ms(100), 50_000);
        assert!(taken.iter().all(|&v| v == 0x30), "{taken:?}");
        // 100 ms of periods of reload/PIT_HZ seconds.
        let expected = (100 * PIT_HZ / 1000) / u64::from(reload);
        assert!(
            (taken.len() as u64).abs_diff(expected) <= 1,
            "{} ticks",
            taken.len()
        );
        // Once polled, the next deadline is the next rising edge, within one period.
        c.poll(ms(100));
        let next = c.next_deadline(ms(100)).unwrap();
        assert!(next > ms(100) && next <= ms(101), "{next:?}");
    }

    /// Masked at the PIC: the edge stays latched and comes when unmasked.
    #[test]
    fn masked_tick_waits_in_irr() {
        let mut c = Chipset::new(ChipsetConfig::LEGACY);
        linux_pic(&mut c, GuestTime::ZERO);
        out(&mut c, 0x21, 0xFF, GuestTime::ZERO);
        pit_periodic(&mut c, 1193, GuestTime::ZERO);
        c.poll(ms(5));
        assert_eq!(c.controller().pending_vector(), None);
        out(&mut c, 0x21, 0xFE, ms(5));
        assert_eq!(c.controller().acknowledge(), Some(0x30));
    }

    /// Before the guest programs anything, nothing interrupts it.
    #[test]
    fn quiet_at_reset() {
        for cfg in [
            ChipsetConfig::LEGACY,
            ChipsetConfig {
                lapic: Some(LapicConfig::BSP),
            },
        ] {
            let mut c = Chipset::new(cfg);
            c.poll(ms(1000));
            assert_eq!(c.controller().pending_vector(), None);
            assert_eq!(c.next_deadline(ms(1000)), None);
        }
    }

    fn apic_chipset() -> Chipset {
        Chipset::new(ChipsetConfig {
            lapic: Some(LapicConfig::BSP),
        })
    }

    /// Enable the xAPIC at its default base with SVR, as Linux does.
    fn enable_xapic(c: &mut Chipset) {
        let clock = GuestClock::new(1_000_000_000, 0);
        c.msr_write(
            0x1B,
            0xFEE0_0000 | 1 << 11 | 1 << 8,
            GuestTime::ZERO,
            &clock,
        )
        .unwrap();
        c.mmio_write(0xFEE0_00F0, &0x1FFu32.to_le_bytes(), GuestTime::ZERO);
    }

    fn ioapic_route(c: &mut Chipset, pin: u8, vector: u8, level: bool) {
        let low = u32::from(vector) | if level { 1 << 15 } else { 0 };
        for (index, value) in [(0x10 + 2 * pin, low), (0x11 + 2 * pin, 0)] {
            c.mmio_write(0xFEC0_0000, &[index], GuestTime::ZERO);
            c.mmio_write(0xFEC0_0010, &value.to_le_bytes(), GuestTime::ZERO);
        }
    }

    /// With a local APIC: the PIT reaches the CPU through IOAPIC pin 2 (IRQ 0's override) and
    /// the local APIC, the PIC being masked; each tick needs a local APIC EOI.
    #[test]
    fn pit_through_ioapic_pin_2_to_the_local_apic() {
        let mut c = apic_chipset();
        enable_xapic(&mut c);
        linux_pic(&mut c, GuestTime::ZERO);
        out(&mut c, 0x21, 0xFF, GuestTime::ZERO);
        ioapic_route(&mut c, 2, 0x34, false);
        pit_periodic(&mut c, (PIT_HZ / 1000) as u16, GuestTime::ZERO);
        let mut ticks = 0;
        let mut now = GuestTime::ZERO;
        while now < ms(20) {
            c.poll(now);
            if let Some(v) = c.controller().acknowledge() {
                assert_eq!(v, 0x34);
                ticks += 1;
                c.mmio_write(0xFEE0_00B0, &0u32.to_le_bytes(), now);
            }
            now = now.plus_nanos(100_000);
        }
        assert!((19..=21).contains(&ticks), "{ticks}");
        assert_eq!(c.stats.undelivered, 0);
    }

    /// A level-triggered line through the IOAPIC: remote IRR holds it until the local APIC's
    /// EOI is broadcast back; a still-asserted line then comes again.
    #[test]
    fn level_line_eoi_broadcast_redelivers() {
        let mut c = apic_chipset();
        enable_xapic(&mut c);
        ioapic_route(&mut c, 4, 0x44, true);
        c.set_line(IrqLine::COM1, LineEvent::Level(true));
        assert_eq!(c.controller().acknowledge(), Some(0x44));
        assert_eq!(c.controller().pending_vector(), None, "remote IRR blocks");
        c.mmio_write(0xFEE0_00B0, &0u32.to_le_bytes(), GuestTime::ZERO);
        assert_eq!(
            c.controller().acknowledge(),
            Some(0x44),
            "still asserted: again"
        );
        c.set_line(IrqLine::COM1, LineEvent::Level(false));
        c.mmio_write(0xFEE0_00B0, &0u32.to_le_bytes(), GuestTime::ZERO);
        assert_eq!(c.controller().pending_vector(), None);
    }

    /// LINT0 in ExtINT mode passes the PIC through the local APIC (virtual wire); masked, the
    /// PIC is cut off.
    #[test]
    fn pic_behind_lint0() {
        let mut c = apic_chipset();
        enable_xapic(&mut c);
        linux_pic(&mut c, GuestTime::ZERO);
        pit_periodic(&mut c, 1193, GuestTime::ZERO);
        c.poll(ms(2));
        // LINT0 masked at reset: nothing from the PIC.
        assert_eq!(c.controller().pending_vector(), None);
        // LVT LINT0 = ExtINT (delivery mode 7), unmasked.
        c.mmio_write(0xFEE0_0350, &(7u32 << 8).to_le_bytes(), ms(2));
        assert_eq!(c.controller().acknowledge(), Some(0x30));
    }

    /// The local APIC timer through the chipset's MSR path and deadlines (x2APIC, periodic).
    #[test]
    fn x2apic_timer_deadlines() {
        let mut c = apic_chipset();
        let clock = GuestClock::new(1_000_000_000, 0);
        let t0 = GuestTime::ZERO;
        c.msr_write(0x1B, 0xFEE0_0000 | 1 << 11 | 1 << 10 | 1 << 8, t0, &clock)
            .unwrap();
        assert!(c.handles_msr(0x832));
        assert!(!c.claims_mmio(0xFEE0_0000), "no xAPIC page in x2APIC mode");
        c.msr_write(0x80F, 0x1FF, t0, &clock).unwrap(); // SVR
        c.msr_write(0x83E, 0xB, t0, &clock).unwrap(); // divide by 1
        c.msr_write(0x832, 0x50 | 1 << 17, t0, &clock).unwrap(); // periodic, vector 0x50
        c.msr_write(0x838, 1_000_000, t0, &clock).unwrap(); // 1 ms at 1 GHz
        assert_eq!(c.next_deadline(t0), Some(ms(1)));
        c.poll(ms(1));
        assert_eq!(c.controller().acknowledge(), Some(0x50));
        c.msr_write(0x80B, 0, ms(1), &clock).unwrap(); // EOI
        assert_eq!(c.next_deadline(ms(1)), Some(ms(2)));
        // No local APIC: its MSRs are not the chipset's.
        assert!(!Chipset::new(ChipsetConfig::LEGACY).handles_msr(0x832));
    }

    /// The one reset path puts everything back: the guest's programming is gone.
    #[test]
    fn reset_forgets_the_guests_programming() {
        let mut c = apic_chipset();
        enable_xapic(&mut c);
        linux_pic(&mut c, GuestTime::ZERO);
        pit_periodic(&mut c, 1193, GuestTime::ZERO);
        ioapic_route(&mut c, 2, 0x34, false);
        c.poll(ms(3));
        c.reset();
        c.poll(ms(10));
        assert_eq!(c.controller().pending_vector(), None);
        assert_eq!(c.next_deadline(ms(10)), None);
        // Power-on state of the local APIC (SDM 11.4.7.1): xAPIC mode at the default base,
        // software disabled (SVR 0xFF).
        assert!(c.claims_mmio(0xFEE0_0000));
        let mut svr = [0u8; 4];
        c.mmio_read(0xFEE0_00F0, &mut svr, ms(10));
        assert_eq!(u32::from_le_bytes(svr), 0xFF);
    }
}
