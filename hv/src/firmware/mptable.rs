//! The Intel MultiProcessor Specification 1.4 table: how a guest without ACPI finds its CPUs,
//! its IOAPIC and the ISA interrupt wiring.
//!
//! Layout (MP spec 1.4, chapter 4): a 16-byte floating pointer structure ("_MP_") pointing at a
//! configuration table ("PCMP") of a 44-byte header followed by entries: one processor entry
//! (20 bytes) per vCPU, the ISA bus (8), the IOAPIC (8), one I/O interrupt entry (8) per ISA
//! IRQ and the two local interrupt entries (8 each) that make LINT0 the PIC's ExtINT input and
//! LINT1 NMI. ISA IRQ *n* goes to IOAPIC pin *n*, except IRQ 0 (the PIT), which goes to pin 2
//! as on every PC chipset since the PIIX; the PIC's output itself is on pin 0 as ExtINT. No
//! crate lays this table out; the sizes below are the specification's.
//!
//! The floating pointer's feature byte 2 has IMCRP clear: the machine starts in virtual-wire
//! mode (PIC through LINT0), so a guest needs no IMCR port (0x22/0x23) to switch to APIC mode.

use super::{
    IOAPIC_BASE, IOAPIC_PINS, IOAPIC_VERSION, LAPIC_BASE, LAPIC_VERSION, MachineShape, checksum,
};

/// Floating pointer structure size (MP spec 4.1).
pub const FLOATING_POINTER_SIZE: usize = 16;
/// Configuration table header size (MP spec 4.2).
pub const HEADER_SIZE: usize = 44;
/// Processor entry size (MP spec 4.3.1).
pub const PROCESSOR_ENTRY_SIZE: usize = 20;
/// Size of every other base-table entry (bus, IOAPIC, I/O and local interrupt).
pub const SMALL_ENTRY_SIZE: usize = 8;
/// The ISA IRQs routed through the IOAPIC (0-15; 2 is the cascade and carries no ISA device).
pub const ISA_IRQS: [u8; 15] = [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

const _: () = assert!(FLOATING_POINTER_SIZE == 16 && HEADER_SIZE == 44);

/// Entry types (MP spec table 4-3).
mod entry {
    pub const PROCESSOR: u8 = 0;
    pub const BUS: u8 = 1;
    pub const IOAPIC: u8 = 2;
    pub const IO_INTERRUPT: u8 = 3;
    pub const LOCAL_INTERRUPT: u8 = 4;
}

/// Interrupt types (MP spec table 4-8).
mod int_type {
    pub const INT: u8 = 0;
    pub const NMI: u8 = 1;
    pub const EXTINT: u8 = 3;
}

/// The ISA bus ID.
const ISA_BUS: u8 = 0;

/// Bytes the whole MP structure takes for `cpus` processors.
pub const fn size(cpus: u8) -> usize {
    FLOATING_POINTER_SIZE
        + HEADER_SIZE
        + cpus as usize * PROCESSOR_ENTRY_SIZE
        + SMALL_ENTRY_SIZE * (2 + 1 + ISA_IRQS.len() + 2)
}

struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
}

/// Write the floating pointer at `out[0]` (guest-physical `base`) and the configuration table
/// right after it. `out` must hold [`size`]`(shape.cpus)` bytes (the caller's area does).
pub fn write(shape: &MachineShape, base: u32, out: &mut [u8]) {
    let table = base + FLOATING_POINTER_SIZE as u32;
    let len = size(shape.cpus);
    let (fp, rest) = out[..len].split_at_mut(FLOATING_POINTER_SIZE);

    // Configuration table entries first (the header needs their count and length).
    let mut c = Cursor {
        buf: rest,
        at: HEADER_SIZE,
    };
    for id in 0..shape.cpus {
        c.u8(entry::PROCESSOR);
        c.u8(id);
        c.u8(LAPIC_VERSION);
        // Bit 0 EN, bit 1 BP.
        c.u8(1 | if id == 0 { 2 } else { 0 });
        c.u32(shape.cpu_signature);
        c.u32(shape.cpu_features);
        c.bytes(&[0; 8]);
    }
    c.u8(entry::BUS);
    c.u8(ISA_BUS);
    c.bytes(b"ISA   ");
    let ioapic = shape.ioapic_id();
    c.u8(entry::IOAPIC);
    c.u8(ioapic);
    c.u8(IOAPIC_VERSION);
    c.u8(1); // EN
    c.u32(IOAPIC_BASE);
    // The PIC's INTR output on pin 0 as ExtINT, then the ISA IRQs (flags 0: conforms to the
    // bus: edge, active high, as ISA is).
    let io_int = |c: &mut Cursor<'_>, kind: u8, irq: u8, pin: u8| {
        c.u8(entry::IO_INTERRUPT);
        c.u8(kind);
        c.u16(0);
        c.u8(ISA_BUS);
        c.u8(irq);
        c.u8(ioapic);
        c.u8(pin);
    };
    io_int(&mut c, int_type::EXTINT, 0, 0);
    for irq in ISA_IRQS {
        let pin = if irq == 0 { 2 } else { irq };
        debug_assert!(pin < IOAPIC_PINS);
        io_int(&mut c, int_type::INT, irq, pin);
    }
    // LINT0 = ExtINT, LINT1 = NMI, on every local APIC (destination 0xFF).
    for (kind, lint) in [(int_type::EXTINT, 0u8), (int_type::NMI, 1)] {
        c.u8(entry::LOCAL_INTERRUPT);
        c.u8(kind);
        c.u16(0);
        c.u8(ISA_BUS);
        c.u8(0);
        c.u8(0xFF);
        c.u8(lint);
    }
    let table_len = c.at;
    let entries = shape.cpus as u16 + 2 + 1 + ISA_IRQS.len() as u16 + 2;

    let mut h = Cursor { buf: rest, at: 0 };
    h.bytes(b"PCMP");
    h.u16(table_len as u16);
    h.u8(4); // spec revision 1.4
    h.u8(0); // checksum, below
    h.bytes(b"HERMITAG");
    h.bytes(b"HERMITAGE VM");
    h.u32(0); // no OEM table
    h.u16(0);
    h.u16(entries);
    h.u32(LAPIC_BASE);
    h.u16(0); // no extended entries
    h.u8(0);
    h.u8(0);
    rest[7] = checksum(&rest[..table_len]);

    let mut f = Cursor { buf: fp, at: 0 };
    f.bytes(b"_MP_");
    f.u32(table);
    f.u8(1); // length in 16-byte units
    f.u8(4); // spec revision 1.4
    f.u8(0); // checksum, below
    f.bytes(&[0; 5]); // feature bytes: a configuration table is present; IMCRP clear
    fp[10] = checksum(fp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::tests::SHAPE;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// Walk the table as Linux's `smp_scan_config` / `smp_read_mpc` do and collect what a
    /// guest learns from it.
    #[test]
    fn parsed_like_a_guest_does() {
        let mut out = vec![0u8; 0x2000];
        write(&SHAPE, 0xF_0000, &mut out);
        let fp = &out[..16];
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(sum(fp), 0, "floating pointer checksum");
        assert_eq!(fp[8], 1);
        assert_eq!(fp[9], 4);
        assert_eq!(fp[12] & 0x80, 0, "IMCRP clear: virtual wire");
        let table_pa = u32_at(fp, 4);
        assert_eq!(table_pa, 0xF_0010);
        let t = &out[(table_pa - 0xF_0000) as usize..];
        assert_eq!(&t[..4], b"PCMP");
        let len = u16_at(t, 4) as usize;
        assert_eq!(len, size(2) - 16);
        assert_eq!(sum(&t[..len]), 0, "configuration table checksum");
        assert_eq!(u32_at(t, 36), 0xFEE0_0000);
        let count = u16_at(t, 34) as usize;

        let (mut cpus, mut bsp, mut ioapics, mut routes, mut lints) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut at = 44;
        for _ in 0..count {
            match t[at] {
                0 => {
                    assert_eq!(t[at + 3] & 1, 1, "enabled");
                    cpus.push(t[at + 1]);
                    if t[at + 3] & 2 != 0 {
                        bsp.push(t[at + 1]);
                    }
                    assert_eq!(u32_at(t, at + 4), SHAPE.cpu_signature);
                    at += 20;
                }
                1 => {
                    assert_eq!(&t[at + 2..at + 8], b"ISA   ");
                    at += 8;
                }
                2 => {
                    ioapics.push((t[at + 1], u32_at(t, at + 4)));
                    at += 8;
                }
                3 => {
                    routes.push((t[at + 1], t[at + 5], t[at + 7]));
                    assert_eq!(t[at + 6], 2, "to the IOAPIC's ID");
                    at += 8;
                }
                4 => {
                    lints.push((t[at + 1], t[at + 6], t[at + 7]));
                    at += 8;
                }
                other => panic!("entry type {other}"),
            }
        }
        assert_eq!(at, len, "entries fill the table exactly");
        assert_eq!(cpus, [0, 1]);
        assert_eq!(bsp, [0]);
        assert_eq!(ioapics, [(2, 0xFEC0_0000)]);
        // (type, ISA IRQ, pin): ExtINT on pin 0, IRQ 0 on pin 2, IRQ 4 (COM1) on 4, 8 (RTC) on 8.
        assert_eq!(routes[0], (3, 0, 0));
        assert!(routes.contains(&(0, 0, 2)));
        assert!(routes.contains(&(0, 4, 4)));
        assert!(routes.contains(&(0, 8, 8)));
        assert!(!routes.iter().any(|&(k, irq, _)| k == 0 && irq == 2));
        assert_eq!(routes.len(), 16);
        assert_eq!(lints, [(3, 0xFF, 0), (1, 0xFF, 1)]);
    }

    #[test]
    fn many_cpus_fit() {
        assert!(size(super::super::MAX_CPUS) <= super::super::MP_SIZE);
        let shape = MachineShape { cpus: 254, ..SHAPE };
        let mut out = vec![0u8; super::super::MP_SIZE];
        write(&shape, 0xF_0000, &mut out);
        let t = &out[16..];
        assert_eq!(sum(&t[..u16_at(t, 4) as usize]), 0);
        assert_eq!(u16_at(t, 34), 254 + 2 + 1 + 15 + 2);
    }
}
