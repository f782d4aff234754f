//! ACPI tables for a guest: RSDP, XSDT, a hardware-reduced FADT, the MADT and a minimal DSDT.
//!
//! Why hardware-reduced: a guest that sees the HW_REDUCED_ACPI flag in the FADT (ACPI 6.5
//! section 5.2.9, flag bit 20) expects no PM timer, no fixed-feature registers and no SCI, and
//! Linux then takes its interrupt wiring from the MADT alone (local APICs, the IOAPIC, the ISA
//! override of IRQ 0 onto GSI 2) and its timers from the local APIC with a known TSC rate: the
//! path Firecracker and QEMU's microvm use, which `shared/background/linux-guests.md` (run J)
//! proved with Debian's kernel. The MADT also sets PCAT_COMPAT, since the VM does have an 8259
//! pair; a guest that does not want it masks it.
//!
//! Layout from the RSDP at `base` on: RSDP (36 bytes), XSDT (two entries: FADT, MADT), FADT,
//! MADT, DSDT, each 8-byte aligned. The table formats and checksums come from rust-vmm's
//! `acpi_tables`; the two MADT structures it has no type for (Interrupt Source Override and
//! Local APIC NMI, ACPI 6.5 sections 5.2.12.5 and 5.2.12.7) are defined here with `zerocopy`.

use alloc::vec::Vec;

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use zerocopy::byteorder::{LE, U16, U32};
use zerocopy::{Immutable, IntoBytes};

use super::{IOAPIC_BASE, LAPIC_BASE, MachineShape, checksum};

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"HRMTGE";
/// MADT flag PCAT_COMPAT: the machine also has dual 8259 PICs (ACPI 6.5 table 5.20).
pub const MADT_PCAT_COMPAT: u32 = 1;
/// Offset of the MADT flags field (after the 36-byte header and the local APIC address).
const MADT_FLAGS_OFFSET: usize = 40;
/// Offset of the checksum byte in every system description table header.
const SDT_CHECKSUM_OFFSET: usize = 9;

/// MADT Interrupt Source Override (type 2): ISA IRQ `source` arrives on `gsi`.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: U32<LE>,
    flags: U16<LE>,
}

const _: () = assert!(core::mem::size_of::<InterruptSourceOverride>() == 10);

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// MADT Local APIC NMI (type 4): which LINT of which processor (0xFF: all) is NMI.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct LocalApicNmi {
    kind: u8,
    length: u8,
    processor_uid: u8,
    flags: U16<LE>,
    lint: u8,
}

const _: () = assert!(core::mem::size_of::<LocalApicNmi>() == 6);

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

fn bytes_of(t: &impl Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

const fn align8(x: u64) -> u64 {
    (x + 7) & !7
}

/// The MADT for `shape`.
fn madt(shape: &MachineShape) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        *b"HRMTMADT",
        1,
        LocalInterruptController::Address(LAPIC_BASE),
    );
    for id in 0..shape.cpus {
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(shape.ioapic_id(), IOAPIC_BASE, 0));
    // IRQ 0 (the PIT) on GSI 2, flags 0: conforming to the ISA bus (edge, active high).
    m.add_structure(InterruptSourceOverride {
        kind: 2,
        length: 10,
        bus: 0,
        source: 0,
        gsi: 2.into(),
        flags: 0.into(),
    });
    m.add_structure(LocalApicNmi {
        kind: 4,
        length: 6,
        processor_uid: 0xFF,
        flags: 0.into(),
        lint: 1,
    });
    let mut b = bytes_of(&m);
    b[MADT_FLAGS_OFFSET..MADT_FLAGS_OFFSET + 4].copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    b[SDT_CHECKSUM_OFFSET] = 0;
    b[SDT_CHECKSUM_OFFSET] = checksum(&b);
    b
}

/// All ACPI tables for `shape`, as they go into guest RAM from guest-physical `base` (where
/// the RSDP is) on.
pub fn build(shape: &MachineShape, base: u64) -> Vec<u8> {
    let madt = madt(shape);
    let dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"HRMTDSDT", 1);
    let rsdp_len = Rsdp::len() as u64;
    let xsdt_at = align8(base + rsdp_len);
    let xsdt_len = 36 + 2 * 8;
    let fadt_at = align8(xsdt_at + xsdt_len);
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let madt_at = align8(fadt_at + fadt_len);
    let dsdt_at = align8(madt_at + madt.len() as u64);

    let fadt = FADTBuilder::new(OEM_ID, *b"HRMTFADT", 1)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_at)
        .finalize();
    let mut xsdt = XSDT::new(OEM_ID, *b"HRMTXSDT", 1);
    xsdt.add_entry(fadt_at);
    xsdt.add_entry(madt_at);
    let rsdp = Rsdp::new(OEM_ID, xsdt_at);

    let mut out = Vec::new();
    let mut put = |at: u64, bytes: &[u8]| {
        let off = (at - base) as usize;
        out.resize(off, 0);
        out.extend_from_slice(bytes);
    };
    put(base, &bytes_of(&rsdp));
    let x = bytes_of(&xsdt);
    debug_assert_eq!(x.len() as u64, xsdt_len);
    put(xsdt_at, &x);
    put(fadt_at, &bytes_of(&fadt));
    put(madt_at, &madt);
    put(dsdt_at, dsdt.as_slice());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::tests::SHAPE;

    const BASE: u64 = 0xF_2000;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// One table at guest-physical `pa`: its bytes, after checking signature and checksum.
    fn table<'a>(all: &'a [u8], pa: u64, sig: &[u8; 4]) -> &'a [u8] {
        let off = (pa - BASE) as usize;
        let t = &all[off..];
        assert_eq!(&t[..4], sig);
        let len = u32_at(t, 4) as usize;
        assert_eq!(
            sum(&t[..len]),
            0,
            "{} checksum",
            core::str::from_utf8(sig).unwrap()
        );
        &t[..len]
    }

    /// Follow the tables as an OS does: RSDP -> XSDT -> FADT (-> DSDT) and MADT.
    #[test]
    fn walked_like_an_os() {
        let all = build(&SHAPE, BASE);
        assert!(all.len() < super::super::ACPI_SIZE);
        let rsdp = &all[..36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(rsdp), 0, "extended checksum");
        assert_eq!(rsdp[15], 2, "revision 2: XSDT");
        let xsdt = table(&all, u64_at(rsdp, 24), b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        assert_eq!(entries.len(), 2);
        let fadt = table(&all, entries[0], b"FACP");
        // Flags at offset 112: HW_REDUCED_ACPI (bit 20), power and sleep buttons.
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0);
        // X_DSDT at offset 140.
        let dsdt = table(&all, u64_at(fadt, 140), b"DSDT");
        assert_eq!(dsdt.len(), 36);
        let madt = table(&all, entries[1], b"APIC");
        assert_eq!(u32_at(madt, 36), 0xFEE0_0000);
        assert_eq!(u32_at(madt, 40), 1, "PCAT_COMPAT");
        let mut at = 44;
        let (mut lapics, mut ioapics, mut overrides, mut nmis) = (vec![], vec![], vec![], vec![]);
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            let s = &madt[at..at + len];
            match kind {
                0 => lapics.push((s[2], s[3], u32_at(s, 4))),
                1 => ioapics.push((s[2], u32_at(s, 4), u32_at(s, 8))),
                2 => overrides.push((s[2], s[3], u32_at(s, 4))),
                4 => nmis.push((s[2], s[5])),
                k => panic!("MADT structure {k}"),
            }
            at += len;
        }
        assert_eq!(at, madt.len());
        assert_eq!(lapics, [(0, 0, 1), (1, 1, 1)]);
        assert_eq!(ioapics, [(2, 0xFEC0_0000, 0)]);
        assert_eq!(overrides, [(0, 0, 2)]);
        assert_eq!(nmis, [(0xFF, 1)]);
    }

    #[test]
    fn rebuilt_from_the_shape() {
        let four = build(&MachineShape { cpus: 4, ..SHAPE }, BASE);
        let two = build(&SHAPE, BASE);
        assert_eq!(
            four.len(),
            two.len() + 2 * 8,
            "two more local APIC structures"
        );
    }
}
