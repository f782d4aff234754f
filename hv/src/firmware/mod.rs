//! Firmware tables a guest finds without a BIOS: the Intel MultiProcessor table and ACPI.
//!
//! Why: an operating system learns the machine's shape (how many CPUs and their APIC IDs, where
//! the IOAPIC is, how ISA interrupts are wired to it) from firmware tables. There is no BIOS in a
//! Hermitage VM, so the one reset path writes them into guest RAM itself, at fixed addresses in
//! the BIOS area (0xF0000-0xFFFFF), which the guest's memory map marks reserved. Linux scans that
//! area for both the MP floating pointer (MP spec 1.4 section 4) and the ACPI RSDP (ACPI 6.5
//! section 5.2.5.1), and the Linux boot protocol can also be handed the RSDP's address directly.
//!
//! | table        | where (GPA)          | content                                                        |
//! |--------------|----------------------|----------------------------------------------------------------|
//! | MP           | [`MP_BASE`]          | floating pointer, processors, ISA bus, IOAPIC, ISA IRQ routing |
//! | ACPI         | [`ACPI_BASE`]        | RSDP, XSDT, FADT (hardware-reduced), MADT, minimal DSDT        |
//!
//! The ACPI tables are laid out by rust-vmm's `acpi_tables` crate (the one Cloud Hypervisor
//! uses); the MP table has no well-kept crate, so [`mptable`] lays it out itself, with the
//! structure sizes checked at compile time.

pub mod acpi;
pub mod mptable;

use crate::mem::GuestPhys;

/// Start of the area the tables live in (the BIOS area; reserved in the guest's memory map).
pub const FIRMWARE_BASE: u64 = 0xF_0000;
/// End (exclusive) of the firmware area.
pub const FIRMWARE_END: u64 = 0x10_0000;
/// Where the MP floating pointer structure goes (16-byte aligned, in the scanned BIOS area).
pub const MP_BASE: u64 = FIRMWARE_BASE;
/// Room for the MP table (floating pointer + configuration table).
pub const MP_SIZE: usize = 0x2000;
/// Where the ACPI RSDP goes, followed by the other ACPI tables.
pub const ACPI_BASE: u64 = FIRMWARE_BASE + MP_SIZE as u64;
/// Room for the ACPI tables.
pub const ACPI_SIZE: usize = 0x4000;
/// The local APIC's MMIO base (the architectural reset value of IA32_APIC_BASE).
pub const LAPIC_BASE: u32 = 0xFEE0_0000;
/// The IOAPIC's MMIO base (the PC convention).
pub const IOAPIC_BASE: u32 = 0xFEC0_0000;
/// Local APIC version reported in the tables (integrated APIC, as the model's version register).
pub const LAPIC_VERSION: u8 = 0x14;
/// IOAPIC version (82093AA: 0x11).
pub const IOAPIC_VERSION: u8 = 0x11;
/// Redirection entries of the IOAPIC.
pub const IOAPIC_PINS: u8 = 24;

/// The most vCPUs the tables describe (APIC IDs 0..n, xAPIC IDs fit in 8 bits; the IOAPIC takes
/// the next ID).
pub const MAX_CPUS: u8 = 254;

/// What the tables describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MachineShape {
    /// vCPUs, with APIC IDs 0..cpus; vCPU 0 is the bootstrap processor.
    pub cpus: u8,
    /// CPUID.1:EAX of the vCPUs (the MP processor entries carry it).
    pub cpu_signature: u32,
    /// CPUID.1:EDX of the vCPUs.
    pub cpu_features: u32,
}

impl MachineShape {
    /// The IOAPIC's ID: the first one after the processors'.
    pub const fn ioapic_id(&self) -> u8 {
        self.cpus
    }
}

/// Where the tables were written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tables {
    /// The MP floating pointer structure.
    pub mp_floating_pointer: GuestPhys,
    /// The ACPI RSDP (for the Linux boot protocol's `acpi_rsdp_addr`).
    pub rsdp: GuestPhys,
}

/// Why the tables could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FirmwareError {
    /// No vCPUs, or more than [`MAX_CPUS`].
    BadCpuCount,
    /// Guest RAM does not cover the firmware area (the VM has less than 1 MiB).
    NoRoom,
}

impl FirmwareError {
    /// A short reason (for the API).
    pub const fn as_str(self) -> &'static str {
        match self {
            FirmwareError::BadCpuCount => "firmware tables: 1 to 254 vCPUs",
            FirmwareError::NoRoom => "firmware tables: guest RAM must cover 0xF0000-0xFFFFF",
        }
    }
}

/// Write the MP table and the ACPI tables for `shape` into guest RAM `ram` (indexed by
/// guest-physical address). The area is cleared first, so nothing of a previous configuration
/// survives a reset.
pub fn write(shape: &MachineShape, ram: &mut [u8]) -> Result<Tables, FirmwareError> {
    if shape.cpus == 0 || shape.cpus > MAX_CPUS {
        return Err(FirmwareError::BadCpuCount);
    }
    let area = ram
        .get_mut(FIRMWARE_BASE as usize..FIRMWARE_END as usize)
        .ok_or(FirmwareError::NoRoom)?;
    area.fill(0);
    let mp = &mut area[..MP_SIZE];
    mptable::write(shape, MP_BASE as u32, mp);
    let acpi_off = (ACPI_BASE - FIRMWARE_BASE) as usize;
    let bytes = acpi::build(shape, ACPI_BASE);
    area[acpi_off..acpi_off + bytes.len()].copy_from_slice(&bytes);
    Ok(Tables {
        mp_floating_pointer: GuestPhys(MP_BASE),
        rsdp: GuestPhys(ACPI_BASE),
    })
}

/// The byte that makes `bytes` sum to zero (mod 256): the checksum rule of both the MP and
/// the ACPI specifications.
pub fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SHAPE: MachineShape = MachineShape {
        cpus: 2,
        cpu_signature: 0x00A0_0F11,
        cpu_features: 0x0781_FBFF,
    };

    #[test]
    fn written_where_the_guest_scans() {
        let mut ram = vec![0xAAu8; 2 << 20];
        let t = write(&SHAPE, &mut ram).unwrap();
        assert_eq!(t.mp_floating_pointer, GuestPhys(0xF_0000));
        assert_eq!(&ram[0xF_0000..0xF_0004], b"_MP_");
        assert_eq!(&ram[t.rsdp.0 as usize..t.rsdp.0 as usize + 8], b"RSD PTR ");
        // Both start on 16-byte boundaries inside 0xE0000-0xFFFFF (ACPI) / 0xF0000-0xFFFFF (MP).
        assert_eq!(t.rsdp.0 % 16, 0);
        // The area is cleared: no stale bytes past the tables.
        assert_eq!(ram[0xF_FFFF], 0);
        // RAM outside the area is untouched.
        assert_eq!(ram[0xE_FFFF], 0xAA);
        assert_eq!(ram[0x10_0000], 0xAA);
    }

    #[test]
    fn refusals() {
        let mut small = vec![0u8; 0xF_0000];
        assert_eq!(write(&SHAPE, &mut small), Err(FirmwareError::NoRoom));
        let mut ram = vec![0u8; 1 << 20];
        let none = MachineShape { cpus: 0, ..SHAPE };
        assert_eq!(write(&none, &mut ram), Err(FirmwareError::BadCpuCount));
        let many = MachineShape { cpus: 255, ..SHAPE };
        assert_eq!(write(&many, &mut ram), Err(FirmwareError::BadCpuCount));
        assert!(write(&MachineShape { cpus: 254, ..SHAPE }, &mut ram).is_ok());
    }

    #[test]
    fn checksum_makes_zero() {
        let mut b = [1u8, 2, 3, 250, 0];
        b[4] = checksum(&b[..4]);
        assert_eq!(b.iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0);
    }
}
