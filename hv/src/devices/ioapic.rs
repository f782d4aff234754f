//! An 82093AA-style I/O APIC: 24 interrupt pins routed to local APICs as messages.
//!
//! Why: an operating system that uses its local APIC (Linux without `noapic`, any SMP guest)
//! takes device interrupts through an IOAPIC, not the 8259A pair. The model follows the Intel
//! 82093AA I/O Advanced Programmable Interrupt Controller datasheet (order 290566): two
//! memory-mapped registers (section 3.1), and behind them the ID, version, arbitration and
//! redirection-table registers (section 3.2).
//!
//! | MMIO offset | register | model                                                        |
//! |-------------|----------|--------------------------------------------------------------|
//! | 0x00        | IOREGSEL | bits 7:0 select the register behind IOWIN, read back         |
//! | 0x10        | IOWIN    | the selected register                                        |
//!
//! | index     | register          | model                                                |
//! |-----------|-------------------|------------------------------------------------------|
//! | 0x00      | IOAPICID          | bits 27:24 read/write                                 |
//! | 0x01      | IOAPICVER         | 0x0017_0011: version 0x11, 24 entries (max index 23)  |
//! | 0x02      | IOAPICARB         | bits 27:24 = the ID (read only)                       |
//! | 0x10-0x3F | IOREDTBL0-23      | low word at `0x10 + 2n`, high word at `0x11 + 2n`     |
//! | others    | -                 | read 0, writes ignored (counted)                     |
//!
//! Redirection entry (datasheet 3.2.4): vector 7:0, delivery mode 10:8 (fixed, lowest
//! priority, SMI, NMI, INIT, ExtINT), destination mode 11, delivery status 12 (read only),
//! polarity 13, remote IRR 14 (read only), trigger mode 15, mask 16, destination 63:56. Reserved
//! bits read 0 and ignore writes. Deliveries are immediate (the model hands each message to the
//! caller at once), so the delivery status bit always reads 0 (idle).
//!
//! Pins and polarity: a device reports its line as asserted or not ([`LineEvent`]); the board
//! decides whether an asserted line is electrically high or low (ISA lines are active high, PCI
//! INTx lines active low: [`Ioapic::with_active_low_pins`]). The IOAPIC sees the electrical level
//! and the guest's polarity bit says which level is active, as on hardware: a guest that
//! programs the wrong polarity sees the inverse.
//!
//! Trigger semantics: an edge-triggered pin delivers on each inactive-to-active transition; if
//! the entry is masked then, the edge is lost. A level-triggered pin delivers while active,
//! unmasked and remote IRR clear, and sets remote IRR; [`Ioapic::eoi`] (the local APIC's EOI
//! broadcast) clears remote IRR for entries with that vector and re-delivers those still
//! active. A masked active level is delivered when unmasked.
//!
//! Width handling (the datasheet allows only 32-bit accesses; we must stay safe and
//! predictable): reads of any width return the bytes of the 32-bit registers they cover
//! (bytes 4-15 of each 16-byte slot read 0) and have no side effects. Writes must be 32 bits at
//! offset 0x00 or 0x10, except a byte write to IOREGSEL (offset 0x00), which older OSes use; any
//! other write is dropped and counted in [`IoapicStats`].
//!
//! Deliveries leave as [`Delivery`] values for the platform to route to local APICs; nothing
//! here allocates.

use crate::irq::LineEvent;

/// The conventional guest-physical base of the IOAPIC's registers.
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Size of the MMIO window the IOAPIC decodes.
pub const IOAPIC_MMIO_SIZE: u64 = 0x20;
/// Number of interrupt pins (redirection entries).
pub const IOAPIC_PINS: usize = 24;
/// IOREGSEL offset.
pub const IOREGSEL: u64 = 0x00;
/// IOWIN offset.
pub const IOWIN: u64 = 0x10;
/// Register index: IOAPICID.
pub const REG_ID: u8 = 0x00;
/// Register index: IOAPICVER.
pub const REG_VER: u8 = 0x01;
/// Register index: IOAPICARB.
pub const REG_ARB: u8 = 0x02;
/// Register index of the first redirection-table word (entry 0, low half).
pub const REG_REDTBL: u8 = 0x10;
/// IOAPICVER value: version 0x11, maximum redirection entry 23.
pub const IOAPIC_VERSION: u32 = 0x0017_0011;

/// Redirection entry bit 16: mask.
pub const RTE_MASK: u64 = 1 << 16;
/// Redirection entry bit 15: level trigger.
pub const RTE_LEVEL: u64 = 1 << 15;
/// Redirection entry bit 14: remote IRR (read only).
pub const RTE_REMOTE_IRR: u64 = 1 << 14;
/// Redirection entry bit 13: active low.
pub const RTE_ACTIVE_LOW: u64 = 1 << 13;
/// Redirection entry bit 12: delivery status (read only; always idle here).
pub const RTE_DELIVERY_STATUS: u64 = 1 << 12;
/// Redirection entry bit 11: logical destination mode.
pub const RTE_LOGICAL: u64 = 1 << 11;
/// The bits of a redirection entry the guest can write.
pub const RTE_WRITABLE: u64 = 0xFF00_0000_0000_0000 | 0x0001_AFFF;
/// The reset value of a redirection entry: masked, everything else 0.
pub const RTE_RESET: u64 = RTE_MASK;

/// How a message is delivered (redirection entry bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoapicDeliveryMode {
    /// 000: the vector to all destinations.
    Fixed,
    /// 001: the vector to the lowest-priority destination.
    LowestPriority,
    /// 010: SMI (the vector is ignored).
    Smi,
    /// 100: NMI.
    Nmi,
    /// 101: INIT.
    Init,
    /// 111: ExtINT: the destination asks an 8259A for the vector.
    ExtInt,
}

impl IoapicDeliveryMode {
    /// Decode bits 10:8 of an entry; `None` for the reserved encodings 011 and 110.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            7 => Self::ExtInt,
            _ => return None,
        })
    }
}

/// An interrupt message for the platform to route to local APICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Delivery {
    /// Destination: an APIC ID (physical) or a logical set (logical), bits 63:56 of the entry.
    pub dest: u8,
    /// Logical destination mode.
    pub logical: bool,
    /// The vector.
    pub vector: u8,
    /// The delivery mode.
    pub mode: IoapicDeliveryMode,
    /// Level triggered (the local APIC sets TMR and broadcasts the EOI back here).
    pub level: bool,
    /// The pin that raised it.
    pub pin: u8,
}

/// Counters for accesses the model refused or could not place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IoapicStats {
    /// Reads that were not one aligned 32-bit register.
    pub odd_reads: u64,
    /// Writes dropped for their width or alignment.
    pub dropped_writes: u64,
    /// Accesses to register indexes that do not exist (or are read only, for writes).
    pub bad_index: u64,
    /// Deliveries dropped because the entry holds a reserved delivery mode.
    pub reserved_mode: u64,
}

/// Deliveries caused by one EOI broadcast: at most one per pin.
pub type Deliveries = heapless::Vec<Delivery, IOAPIC_PINS>;

/// The IOAPIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ioapic {
    ioregsel: u8,
    id: u8,
    redtbl: [u64; IOAPIC_PINS],
    /// Electrical level of each pin (bit n = pin n high).
    electrical: u32,
    /// Board wiring: pins whose asserted level is electrically low.
    active_low_pins: u32,
    stats: IoapicStats,
}

impl Default for Ioapic {
    fn default() -> Self {
        Self::new()
    }
}

impl Ioapic {
    /// An IOAPIC in reset state with every pin wired active high (ISA lines).
    pub const fn new() -> Self {
        Self::with_active_low_pins(0)
    }

    /// An IOAPIC whose pins in `mask` (bit n = pin n) are asserted electrically low (PCI INTx
    /// wiring). Unasserted active-low pins idle high.
    pub const fn with_active_low_pins(mask: u32) -> Self {
        let mask = mask & ((1 << IOAPIC_PINS) - 1);
        Ioapic {
            ioregsel: 0,
            id: 0,
            redtbl: [RTE_RESET; IOAPIC_PINS],
            electrical: mask,
            active_low_pins: mask,
            stats: IoapicStats {
                odd_reads: 0,
                dropped_writes: 0,
                bad_index: 0,
                reserved_mode: 0,
            },
        }
    }

    /// Reset (datasheet: all entries masked, ID 0). Pin inputs are the devices' outputs and
    /// stay as they are; the counters are kept.
    pub fn reset(&mut self) {
        self.ioregsel = 0;
        self.id = 0;
        self.redtbl = [RTE_RESET; IOAPIC_PINS];
    }

    /// The refused-access counters.
    pub const fn stats(&self) -> IoapicStats {
        self.stats
    }

    /// Redirection entry `pin` as the guest reads it (`None` for a pin out of range).
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.redtbl.get(pin).copied()
    }

    /// The IOAPIC ID (4 bits).
    pub const fn id(&self) -> u8 {
        self.id
    }

    fn active(&self, pin: usize) -> bool {
        let high = self.electrical & (1 << pin) != 0;
        let active_low = self.redtbl[pin] & RTE_ACTIVE_LOW != 0;
        high != active_low
    }

    /// Make a delivery for `pin` (mask and remote IRR already checked by the caller), setting
    /// remote IRR for a level-triggered entry.
    fn deliver(&mut self, pin: usize) -> Option<Delivery> {
        let e = self.redtbl[pin];
        let Some(mode) = IoapicDeliveryMode::from_bits((e >> 8) as u8) else {
            self.stats.reserved_mode += 1;
            return None;
        };
        let level = e & RTE_LEVEL != 0;
        if level {
            self.redtbl[pin] |= RTE_REMOTE_IRR;
        }
        Some(Delivery {
            dest: (e >> 56) as u8,
            logical: e & RTE_LOGICAL != 0,
            vector: e as u8,
            mode,
            level,
            pin: pin as u8,
        })
    }

    /// A level-triggered pin that should be delivered now (active, unmasked, no remote IRR).
    fn level_ready(&self, pin: usize) -> bool {
        let e = self.redtbl[pin];
        e & RTE_LEVEL != 0 && e & RTE_MASK == 0 && e & RTE_REMOTE_IRR == 0 && self.active(pin)
    }

    /// A device changed interrupt line `pin` (0-23; others are ignored). Returns the message
    /// to route, if any.
    pub fn set_irq(&mut self, pin: u8, event: LineEvent) -> Option<Delivery> {
        let pin = pin as usize;
        if pin >= IOAPIC_PINS {
            return None;
        }
        let bit = 1u32 << pin;
        let asserted_level = |asserted: bool, active_low: bool| asserted != active_low;
        let active_low_wiring = self.active_low_pins & bit != 0;
        let level_trigger = self.redtbl[pin] & RTE_LEVEL != 0;
        match event {
            LineEvent::Level(asserted) => {
                let was_active = self.active(pin);
                if asserted_level(asserted, active_low_wiring) {
                    self.electrical |= bit;
                } else {
                    self.electrical &= !bit;
                }
                let now_active = self.active(pin);
                if level_trigger {
                    self.level_ready(pin).then(|| self.deliver(pin)).flatten()
                } else if now_active && !was_active && self.redtbl[pin] & RTE_MASK == 0 {
                    self.deliver(pin)
                } else {
                    None
                }
            }
            LineEvent::Pulse => {
                // Asserted and deasserted again: an edge for an edge-triggered entry whose
                // active level is the asserted one; nothing lasting for a level entry.
                let idle = self.electrical;
                let idle_active = self.active(pin);
                if asserted_level(true, active_low_wiring) {
                    self.electrical |= bit;
                } else {
                    self.electrical &= !bit;
                }
                let pulse_active = self.active(pin);
                self.electrical = idle;
                if !level_trigger
                    && pulse_active
                    && !idle_active
                    && self.redtbl[pin] & RTE_MASK == 0
                {
                    self.deliver(pin)
                } else {
                    None
                }
            }
        }
    }

    /// EOI broadcast from a local APIC for `vector`: clear remote IRR of every level entry with
    /// that vector and re-deliver those whose line is still active.
    pub fn eoi(&mut self, vector: u8) -> Deliveries {
        let mut out = Deliveries::new();
        for pin in 0..IOAPIC_PINS {
            let e = self.redtbl[pin];
            if e as u8 == vector && e & RTE_REMOTE_IRR != 0 {
                self.redtbl[pin] &= !RTE_REMOTE_IRR;
                if self.level_ready(pin) {
                    if let Some(d) = self.deliver(pin) {
                        // At most one per pin: cannot overflow.
                        let _ = out.push(d);
                    }
                }
            }
        }
        out
    }

    /// The value of register `index` behind IOWIN.
    pub fn read_register(&self, index: u8) -> Option<u32> {
        Some(match index {
            REG_ID => u32::from(self.id) << 24,
            REG_VER => IOAPIC_VERSION,
            REG_ARB => u32::from(self.id) << 24,
            i if (REG_REDTBL..REG_REDTBL + 2 * IOAPIC_PINS as u8).contains(&i) => {
                let pin = usize::from((i - REG_REDTBL) / 2);
                let e = self.redtbl[pin];
                if i & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => return None,
        })
    }

    /// Write register `index` behind IOWIN. Unmasking an active level entry delivers it.
    pub fn write_register(&mut self, index: u8, value: u32) -> Option<Delivery> {
        match index {
            REG_ID => {
                self.id = ((value >> 24) & 0xF) as u8;
                None
            }
            i if (REG_REDTBL..REG_REDTBL + 2 * IOAPIC_PINS as u8).contains(&i) => {
                let pin = usize::from((i - REG_REDTBL) / 2);
                let old = self.redtbl[pin];
                let (shift, half) = if i & 1 == 0 {
                    (0, 0xFFFF_FFFFu64)
                } else {
                    (32, 0xFFFF_FFFF_0000_0000u64)
                };
                let writable = RTE_WRITABLE & half;
                let mut new = (old & !writable) | ((u64::from(value) << shift) & writable);
                // Switching an entry to edge triggering clears a stale remote IRR.
                if new & RTE_LEVEL == 0 {
                    new &= !RTE_REMOTE_IRR;
                }
                self.redtbl[pin] = new;
                self.level_ready(pin).then(|| self.deliver(pin)).flatten()
            }
            _ => {
                self.stats.bad_index += 1;
                None
            }
        }
    }

    /// A guest read of `buf.len()` bytes at `offset` in the IOAPIC window. No side effects.
    pub fn mmio_read(&mut self, offset: u64, buf: &mut [u8]) {
        if !(offset & 0xF == 0 && buf.len() == 4) {
            self.stats.odd_reads += 1;
        }
        let sel = u32::from(self.ioregsel);
        let win = match self.read_register(self.ioregsel) {
            Some(v) => v,
            None => {
                if offset & !0xF == IOWIN && offset & 0xF < 4 {
                    self.stats.bad_index += 1;
                }
                0
            }
        };
        for (i, b) in buf.iter_mut().enumerate() {
            let off = offset.wrapping_add(i as u64);
            let byte = (off & 0xF) as u32;
            let reg = match off & !0xF {
                IOREGSEL => sel,
                IOWIN => win,
                _ => 0,
            };
            *b = if byte < 4 {
                (reg >> (8 * byte)) as u8
            } else {
                0
            };
        }
    }

    /// A guest write of `data` at `offset` in the IOAPIC window.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) -> Option<Delivery> {
        match (offset, data.len()) {
            (IOREGSEL, 1 | 4) => {
                self.ioregsel = data[0];
                None
            }
            (IOWIN, 4) => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.write_register(self.ioregsel, v)
            }
            _ => {
                self.stats.dropped_writes += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rd(io: &mut Ioapic, index: u8) -> u32 {
        io.mmio_write(IOREGSEL, &[index, 0, 0, 0]);
        let mut b = [0u8; 4];
        io.mmio_read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(io: &mut Ioapic, index: u8, value: u32) -> Option<Delivery> {
        io.mmio_write(IOREGSEL, &[index, 0, 0, 0]);
        io.mmio_write(IOWIN, &value.to_le_bytes())
    }

    /// Program entry `pin` (low word last, as an OS unmasking does).
    fn program(io: &mut Ioapic, pin: u8, low: u32, dest: u8) -> Option<Delivery> {
        wr(io, REG_REDTBL + 2 * pin + 1, u32::from(dest) << 24);
        wr(io, REG_REDTBL + 2 * pin, low)
    }

    #[test]
    fn register_select_and_window() {
        let mut io = Ioapic::new();
        io.mmio_write(IOREGSEL, &[0x12, 0, 0, 0]);
        let mut b = [0u8; 4];
        io.mmio_read(IOREGSEL, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x12);
        // A byte write to IOREGSEL works too.
        io.mmio_write(IOREGSEL, &[0x01]);
        io.mmio_read(IOWIN, &mut b);
        assert_eq!(u32::from_le_bytes(b), IOAPIC_VERSION);
    }

    #[test]
    fn version_id_arbitration() {
        let mut io = Ioapic::new();
        let ver = rd(&mut io, REG_VER);
        assert_eq!(ver & 0xFF, 0x11);
        assert_eq!((ver >> 16) & 0xFF, 23, "max redirection entry");
        assert_eq!(rd(&mut io, REG_ID), 0);
        wr(&mut io, REG_ID, 0xFFFF_FFFF);
        assert_eq!(rd(&mut io, REG_ID), 0x0F00_0000, "only bits 27:24");
        assert_eq!(rd(&mut io, REG_ARB), 0x0F00_0000);
        // VER and ARB are read only.
        wr(&mut io, REG_VER, 0);
        wr(&mut io, REG_ARB, 0);
        assert_eq!(rd(&mut io, REG_VER), IOAPIC_VERSION);
        assert_eq!(rd(&mut io, REG_ARB), 0x0F00_0000);
        assert_eq!(io.stats().bad_index, 2);
        assert_eq!(rd(&mut io, 0x40), 0, "past the table");
    }

    #[test]
    fn reset_state_all_masked() {
        let mut io = Ioapic::new();
        for pin in 0..24u8 {
            assert_eq!(rd(&mut io, REG_REDTBL + 2 * pin), 0x0001_0000);
            assert_eq!(rd(&mut io, REG_REDTBL + 2 * pin + 1), 0);
        }
        program(&mut io, 3, 0x30, 1);
        wr(&mut io, REG_ID, 0x0500_0000);
        io.reset();
        assert_eq!(io, {
            let mut fresh = Ioapic::new();
            fresh.stats = io.stats();
            fresh
        });
        // Reset entries are masked: an edge is lost.
        assert_eq!(io.set_irq(3, LineEvent::Pulse), None);
    }

    #[test]
    fn entry_read_back_and_read_only_bits() {
        let mut io = Ioapic::new();
        wr(&mut io, REG_REDTBL + 1, 0xFFFF_FFFF);
        assert_eq!(
            rd(&mut io, REG_REDTBL + 1),
            0xFF00_0000,
            "bits 55:32 reserved"
        );
        wr(&mut io, REG_REDTBL, 0xFFFF_FFFF);
        // Delivery status (12), remote IRR (14) and bits 31:17 do not take writes (the entry is
        // masked, so nothing is delivered and remote IRR stays clear).
        let low = rd(&mut io, REG_REDTBL);
        assert_eq!(low, 0x0001_AFFF);
        assert_eq!(low as u64 & RTE_DELIVERY_STATUS, 0);
    }

    #[test]
    fn edge_delivery() {
        let mut io = Ioapic::new();
        // Pin 2 (the PIT on a PC), vector 0x30, fixed, physical, edge, active high, to APIC 0.
        assert_eq!(program(&mut io, 2, 0x30, 0), None);
        let d = io.set_irq(2, LineEvent::Level(true)).expect("rising edge");
        assert_eq!(
            d,
            Delivery {
                dest: 0,
                logical: false,
                vector: 0x30,
                mode: IoapicDeliveryMode::Fixed,
                level: false,
                pin: 2
            }
        );
        // Staying high is no new edge; low then high is.
        assert_eq!(io.set_irq(2, LineEvent::Level(true)), None);
        assert_eq!(io.set_irq(2, LineEvent::Level(false)), None);
        assert!(io.set_irq(2, LineEvent::Level(true)).is_some());
        io.set_irq(2, LineEvent::Level(false));
        // A pulse is one edge, and leaves the line low.
        assert!(io.set_irq(2, LineEvent::Pulse).is_some());
        assert!(io.set_irq(2, LineEvent::Pulse).is_some());
        assert!(io.set_irq(2, LineEvent::Level(true)).is_some());
        // No remote IRR for edge entries.
        assert_eq!(io.entry(2).unwrap() & RTE_REMOTE_IRR, 0);
        // Logical destination, lowest priority, destination byte.
        program(&mut io, 5, 0x0000_0941, 0x03);
        let d = io.set_irq(5, LineEvent::Pulse).unwrap();
        assert_eq!(
            (d.dest, d.logical, d.mode, d.vector),
            (3, true, IoapicDeliveryMode::LowestPriority, 0x41)
        );
    }

    #[test]
    fn level_remote_irr_and_eoi() {
        let mut io = Ioapic::new();
        // Pin 9, vector 0x49, level, active high.
        program(&mut io, 9, 0x49 | RTE_LEVEL as u32, 0);
        let d = io.set_irq(9, LineEvent::Level(true)).expect("delivered");
        assert!(d.level);
        assert_ne!(io.entry(9).unwrap() & RTE_REMOTE_IRR, 0, "remote IRR set");
        // Still asserted, remote IRR set: nothing more.
        assert_eq!(io.set_irq(9, LineEvent::Level(true)), None);
        // An EOI for another vector does nothing.
        assert!(io.eoi(0x50).is_empty());
        assert_ne!(io.entry(9).unwrap() & RTE_REMOTE_IRR, 0);
        // EOI while still asserted: re-delivered, remote IRR set again.
        let again = io.eoi(0x49);
        assert_eq!(again.as_slice(), &[d]);
        assert_ne!(io.entry(9).unwrap() & RTE_REMOTE_IRR, 0);
        // The device deasserts, then the EOI: remote IRR clears and nothing is delivered.
        io.set_irq(9, LineEvent::Level(false));
        assert!(io.eoi(0x49).is_empty());
        assert_eq!(io.entry(9).unwrap() & RTE_REMOTE_IRR, 0);
        // A pulse on a level entry leaves nothing behind.
        assert_eq!(io.set_irq(9, LineEvent::Pulse), None);
    }

    #[test]
    fn polarity() {
        // An active-low board line (PCI INTx) programmed active low behaves like an active-high
        // one; programmed active high, it is active while deasserted.
        let mut io = Ioapic::with_active_low_pins(1 << 16);
        program(&mut io, 16, 0x60 | (RTE_LEVEL | RTE_ACTIVE_LOW) as u32, 0);
        assert_eq!(io.entry(16).unwrap() & RTE_REMOTE_IRR, 0, "idle: inactive");
        assert!(io.set_irq(16, LineEvent::Level(true)).is_some());
        io.set_irq(16, LineEvent::Level(false));
        assert!(io.eoi(0x60).is_empty());
        // Wrong polarity: the idle line is active, unmasking delivers at once.
        let mut io = Ioapic::with_active_low_pins(1 << 16);
        assert!(program(&mut io, 16, 0x60 | RTE_LEVEL as u32, 0).is_some());
    }

    #[test]
    fn masking() {
        let mut io = Ioapic::new();
        // Masked edge: lost, also after unmask.
        program(&mut io, 4, 0x34 | RTE_MASK as u32, 0);
        assert_eq!(io.set_irq(4, LineEvent::Pulse), None);
        assert_eq!(program(&mut io, 4, 0x34, 0), None);
        assert!(io.set_irq(4, LineEvent::Pulse).is_some());
        // Masked level: delivered on unmask.
        program(&mut io, 10, 0x4A | (RTE_LEVEL | RTE_MASK) as u32, 1);
        assert_eq!(io.set_irq(10, LineEvent::Level(true)), None);
        assert_eq!(io.entry(10).unwrap() & RTE_REMOTE_IRR, 0);
        let d = program(&mut io, 10, 0x4A | RTE_LEVEL as u32, 1).expect("on unmask");
        assert_eq!((d.vector, d.dest, d.level), (0x4A, 1, true));
        // Masking while remote IRR is set, then EOI: no delivery until unmasked again.
        wr(
            &mut io,
            REG_REDTBL + 20,
            0x4A | (RTE_LEVEL | RTE_MASK) as u32,
        );
        assert!(io.eoi(0x4A).is_empty());
        assert!(wr(&mut io, REG_REDTBL + 20, 0x4A | RTE_LEVEL as u32).is_some());
    }

    #[test]
    fn level_to_edge_clears_remote_irr() {
        let mut io = Ioapic::new();
        program(&mut io, 1, 0x31 | RTE_LEVEL as u32, 0);
        io.set_irq(1, LineEvent::Level(true)).unwrap();
        wr(&mut io, REG_REDTBL + 2, 0x31);
        assert_eq!(io.entry(1).unwrap() & RTE_REMOTE_IRR, 0);
    }

    #[test]
    fn delivery_modes() {
        let mut io = Ioapic::new();
        for (bits, mode) in [
            (0, Some(IoapicDeliveryMode::Fixed)),
            (1, Some(IoapicDeliveryMode::LowestPriority)),
            (2, Some(IoapicDeliveryMode::Smi)),
            (3, None),
            (4, Some(IoapicDeliveryMode::Nmi)),
            (5, Some(IoapicDeliveryMode::Init)),
            (6, None),
            (7, Some(IoapicDeliveryMode::ExtInt)),
        ] {
            program(&mut io, 7, 0x27 | (bits << 8), 0);
            assert_eq!(io.set_irq(7, LineEvent::Pulse).map(|d| d.mode), mode);
        }
        assert_eq!(io.stats().reserved_mode, 2);
    }

    #[test]
    fn odd_widths() {
        let mut io = Ioapic::new();
        program(&mut io, 0, 0x0001_0820, 0);
        io.mmio_write(IOREGSEL, &[0x10, 0, 0, 0]);
        // A byte and a word read return the register's bytes; bytes 4-15 read 0.
        let mut b1 = [0u8; 1];
        io.mmio_read(IOWIN + 1, &mut b1);
        assert_eq!(b1[0], 0x08);
        io.mmio_read(IOWIN, &mut b1);
        assert_eq!(b1[0], 0x20);
        let mut b8 = [0xAAu8; 8];
        io.mmio_read(IOWIN, &mut b8);
        assert_eq!(b8, [0x20, 0x08, 0x01, 0, 0, 0, 0, 0]);
        assert_eq!(io.stats().odd_reads, 3);
        // Writes that are not 32-bit at 0x10 are dropped.
        let before = io.entry(0);
        assert_eq!(io.mmio_write(IOWIN, &[0x55, 0x00]), None);
        assert_eq!(io.mmio_write(IOWIN + 4, &[0, 0, 0, 0]), None);
        assert_eq!(io.mmio_write(IOWIN, &[0; 8]), None);
        assert_eq!(io.mmio_write(0x08, &[0; 4]), None);
        assert_eq!(io.entry(0), before);
        assert_eq!(io.stats().dropped_writes, 4);
        // Out-of-range pins are ignored.
        assert_eq!(io.set_irq(24, LineEvent::Pulse), None);
        assert_eq!(io.set_irq(255, LineEvent::Level(true)), None);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Line(u8, Option<bool>),
        Write(u8, u32),
        Eoi(u8),
        Mmio(u64, Vec<u8>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..26, proptest::option::of(any::<bool>())).prop_map(|(p, l)| Op::Line(p, l)),
            // Vectors from a small set so that EOIs hit.
            (0u8..0x42, 0u32..0x2_0000, 0u32..4)
                .prop_map(|(i, low, v)| Op::Write(i, (low & !0xFF) | (0x30 + v))),
            (0x30u8..0x34).prop_map(Op::Eoi),
            (0u64..0x20, proptest::collection::vec(any::<u8>(), 0..9))
                .prop_map(|(o, d)| Op::Mmio(o, d)),
        ]
    }

    proptest! {
        /// No level interrupt is ever left undelivered: after every operation no level entry
        /// is active, unmasked and without remote IRR (unless its delivery mode is reserved); remote IRR only on level entries; every
        /// delivery comes from an unmasked entry with its vector.
        #[test]
        fn no_lost_level_interrupts(ops in proptest::collection::vec(op(), 1..300)) {
            let mut io = Ioapic::with_active_low_pins(0x00F0_0000);
            for op in ops {
                let out: Deliveries = match op {
                    Op::Line(pin, l) => io
                        .set_irq(pin, l.map_or(LineEvent::Pulse, LineEvent::Level))
                        .into_iter()
                        .collect(),
                    Op::Write(i, v) => io.write_register(i, v).into_iter().collect(),
                    Op::Eoi(v) => io.eoi(v),
                    Op::Mmio(o, d) => {
                        let mut buf = d.clone();
                        io.mmio_read(o, &mut buf);
                        io.mmio_write(o, &d).into_iter().collect()
                    }
                };
                for d in &out {
                    let e = io.entry(usize::from(d.pin)).unwrap();
                    prop_assert_eq!(e & RTE_MASK, 0);
                    prop_assert_eq!(e as u8, d.vector);
                    prop_assert_eq!(d.level, e & RTE_LEVEL != 0);
                }
                for pin in 0..IOAPIC_PINS {
                    let e = io.entry(pin).unwrap();
                    // (An entry with a reserved delivery mode cannot deliver at all.)
                    let deliverable = IoapicDeliveryMode::from_bits((e >> 8) as u8).is_some();
                    prop_assert!(!(deliverable && io.level_ready(pin)), "pin {} left pending", pin);
                    prop_assert!(e & RTE_REMOTE_IRR == 0 || e & RTE_LEVEL != 0);
                    prop_assert_eq!(e & RTE_DELIVERY_STATUS, 0);
                }
            }
        }
    }
}
