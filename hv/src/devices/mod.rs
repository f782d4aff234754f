//! The emulated port-I/O devices of a VM: what a guest finds behind IN and OUT.
//!
//! Why this set: our guests need a console (COM1), a way to end a test run with a status (the
//! debug-exit port, as QEMU's `isa-debug-exit` with `iobase=0xf4`), and the two classic ways to
//! reset a PC (the reset control register at 0xCF9 and the keyboard controller's pulse-reset
//! command). Nothing else is emulated: no PIT, PIC, CMOS or PCI configuration space. Ports
//! without a device read as all ones (an open ISA bus) and swallow writes, and the VM's stats
//! count both so a guest that expects more hardware shows up.
//!
//! | ports       | device                 | reads                         | writes                        |
//! |-------------|------------------------|-------------------------------|-------------------------------|
//! | 0x3F8–0x3FF | 16550A UART ([`uart`]) | registers                     | THR -> console ring           |
//! | 0xF4        | debug exit             | unhandled                     | any size: stop, value = code  |
//! | 0x60        | keyboard data          | 0                             | ignored                       |
//! | 0x64        | keyboard status/cmd    | 0x1C (input buffer empty)     | 0xFE: reset; others ignored   |
//! | 0xCF9       | reset control (RCR)    | last value written            | bit 2 set: reset              |
//!
//! Devices sit on two buses of address ranges ([`bus`]): the port bus ([`PORT_MAP`]) and the
//! MMIO bus ([`MMIO_MAP`], for guest-physical addresses outside RAM). An access goes to the
//! device owning its first address, which sees the offset from its base and the access as
//! bytes, whatever the width. An MMIO access no device claims reads all ones and its writes are
//! dropped, like a port without a device; the caller counts both kinds.
//!
//! Widths: the UART is a byte device on an 8-bit
//! bus, so a 16- or 32-bit access to it is split into byte accesses to consecutive ports, as
//! the ISA bus does (bytes past 0x3FF go to "no device"). The debug-exit port takes any width
//! (the value is masked to it). The keyboard controller and RCR answer byte accesses only: a
//! wider access at 0xCF8 is the PCI configuration address register, not a reset.
//!
//! Devices are decided here and counted by the caller; nothing here blocks or allocates.

pub mod bus;
pub mod chipset;
pub mod console;
pub mod fw_cfg;
pub mod ioapic;
pub mod lapic;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod string_io;
pub mod uart;

pub use bus::{Bus, BusError, BusRange};
pub use console::{CONSOLE_RING_SIZE, ConsoleRead, ConsoleRing};
pub use uart::{COM1_BASE, Uart16550, UartReg};

use crate::exit::ResetTrigger;
use crate::mem::GuestPhys;
use crate::time::GuestTime;

/// Debug-exit port: a write stops the VM with the value as exit code.
pub const DEBUG_EXIT_PORT: u16 = 0xF4;
/// Keyboard controller data port.
pub const KBD_DATA_PORT: u16 = 0x60;
/// Keyboard controller status (read) and command (write) port.
pub const KBD_STATUS_PORT: u16 = 0x64;
/// Keyboard controller command: pulse the reset line (8042 "pulse output port" 0xFE).
pub const KBD_CMD_RESET: u8 = 0xFE;
/// Keyboard controller status as read: system flag (2), last write was a command (3),
/// keyboard not inhibited (4); output (0) and input (1) buffers empty, so polling guests
/// proceed.
pub const KBD_STATUS: u8 = 0x1C;
/// Reset control register (Intel chipsets, also on AMD FCHs).
pub const RESET_CONTROL_PORT: u16 = 0xCF9;
/// RCR bit 2: reset the CPU. Bit 1 selects a hard reset and bit 3 a full reset; to a VM
/// they are all the same reset.
pub const RCR_RESET_CPU: u8 = 1 << 2;

/// An I/O access width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum IoSize {
    /// 8 bits.
    Byte = 1,
    /// 16 bits.
    Word = 2,
    /// 32 bits.
    Dword = 4,
}

impl IoSize {
    /// From a width in bytes (1, 2 or 4).
    pub const fn from_bytes(bytes: u8) -> Option<IoSize> {
        match bytes {
            1 => Some(IoSize::Byte),
            2 => Some(IoSize::Word),
            4 => Some(IoSize::Dword),
            _ => None,
        }
    }

    /// Width in bytes.
    pub const fn bytes(self) -> u8 {
        self as u8
    }

    /// The value mask (all ones of this width), also what an open bus reads.
    pub const fn mask(self) -> u32 {
        match self {
            IoSize::Byte => 0xFF,
            IoSize::Word => 0xFFFF,
            IoSize::Dword => 0xFFFF_FFFF,
        }
    }
}

/// The result of an IN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRead {
    /// The value, masked to the width.
    pub value: u32,
    /// Whether a device answered (else `value` is all ones and the read counts as unhandled).
    pub handled: bool,
}

/// The result of an OUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortWrite {
    /// A device took it.
    Done,
    /// No device: dropped (counted as unhandled).
    Unhandled,
    /// The guest asked to stop with this code (debug-exit port).
    DebugExit(u32),
    /// The guest asked for a reset.
    Reset(ResetTrigger),
}

/// A device on the port bus. Adding one: a variant here, its range in [`PORT_MAP`], and an arm
/// in `Devices::port_read` / `Devices::port_write`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortDevice {
    /// COM1, 8 ports from [`COM1_BASE`].
    Uart,
    /// The debug-exit port [`DEBUG_EXIT_PORT`].
    DebugExit,
    /// The 8042 data port [`KBD_DATA_PORT`].
    KeyboardData,
    /// The 8042 status/command port [`KBD_STATUS_PORT`].
    KeyboardCommand,
    /// The reset control register [`RESET_CONTROL_PORT`].
    ResetControl,
}

/// A device on the MMIO bus. None yet: the interrupt controllers (local APIC, I/O APIC) and
/// other memory-mapped devices join as a variant, an entry in [`MMIO_MAP`] and an arm in
/// `Devices::mmio_dispatch_read` / `Devices::mmio_dispatch_write`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmioDevice {}

/// Capacity of the port bus (the PC/AT set of PIC, PIT, 8042, RTC, two UARTs, POST, debug exit,
/// PCI, reset fits with room).
pub const PORT_BUS_CAPACITY: usize = 24;
/// Capacity of the MMIO bus.
pub const MMIO_BUS_CAPACITY: usize = 16;

/// The port bus of a VM: ports (as `u64`) to devices.
pub type PortBus = Bus<PortDevice, PORT_BUS_CAPACITY>;
/// The MMIO bus of a VM: guest-physical addresses to devices.
pub type MmioBus = Bus<MmioDevice, MMIO_BUS_CAPACITY>;

/// Where each port device sits: (first port, number of ports, device).
pub const PORT_MAP: [(u16, u16, PortDevice); 5] = [
    (COM1_BASE, 8, PortDevice::Uart),
    (DEBUG_EXIT_PORT, 1, PortDevice::DebugExit),
    (KBD_DATA_PORT, 1, PortDevice::KeyboardData),
    (KBD_STATUS_PORT, 1, PortDevice::KeyboardCommand),
    (RESET_CONTROL_PORT, 1, PortDevice::ResetControl),
];

/// Where each MMIO device sits: (base, length, device).
pub const MMIO_MAP: [(u64, u64, MmioDevice); 0] = [];

/// The devices of one VM, plus its console log.
#[derive(Debug)]
pub struct Devices {
    /// COM1.
    pub uart: Uart16550,
    /// Everything the guest transmitted. Kept across guest resets.
    pub console: ConsoleRing,
    /// Last value written to the reset control register.
    rcr: u8,
    /// Which port belongs to which device.
    ports: PortBus,
    /// Which guest-physical range belongs to which device.
    mmio: MmioBus,
}

impl Default for Devices {
    fn default() -> Self {
        Self::new()
    }
}

impl Devices {
    /// Devices in reset state with an empty console, on their buses.
    pub fn new() -> Self {
        let mut ports = PortBus::new();
        for (base, len, dev) in PORT_MAP {
            // The map is a constant checked by a test: these inserts cannot fail.
            let _ = ports.insert(base.into(), len.into(), dev);
        }
        let mut mmio = MmioBus::new();
        for (base, len, dev) in MMIO_MAP {
            let _ = mmio.insert(base, len, dev);
        }
        Devices {
            uart: Uart16550::RESET,
            console: ConsoleRing::new(),
            rcr: 0,
            ports,
            mmio,
        }
    }

    /// Guest reset: device registers back to reset state; the console log is kept, so output
    /// from before the reset stays readable at its offsets.
    pub fn reset(&mut self) {
        self.uart.reset();
        self.rcr = 0;
    }

    /// The port bus.
    pub fn port_bus(&self) -> &PortBus {
        &self.ports
    }

    /// The MMIO bus.
    pub fn mmio_bus(&self) -> &MmioBus {
        &self.mmio
    }

    /// IN of `size` from `port`.
    pub fn read(&mut self, port: u16, size: IoSize) -> PortRead {
        let mut data = [0u8; 4];
        let data = &mut data[..size.bytes() as usize];
        let handled = match self.ports.lookup(port.into()) {
            Some((dev, offset)) => self.port_read(dev, offset, data),
            None => false,
        };
        if !handled {
            return PortRead {
                value: size.mask(),
                handled: false,
            };
        }
        let mut value = 0u32;
        for (i, b) in data.iter().enumerate() {
            value |= u32::from(*b) << (8 * i);
        }
        PortRead {
            value,
            handled: true,
        }
    }

    /// OUT of `value` (masked to `size`) to `port`.
    pub fn write(&mut self, port: u16, size: IoSize, value: u32) -> PortWrite {
        let bytes = value.to_le_bytes();
        let data = &bytes[..size.bytes() as usize];
        match self.ports.lookup(port.into()) {
            Some((dev, offset)) => self.port_write(dev, offset, data),
            None => PortWrite::Unhandled,
        }
    }

    /// A read of `data.len()` bytes at `offset` into `dev`'s ports: whether the device
    /// answered (else the bus reads all ones).
    fn port_read(&mut self, dev: PortDevice, offset: u64, data: &mut [u8]) -> bool {
        match (dev, data) {
            (PortDevice::Uart, data) => {
                // A byte device on an 8-bit bus: wider accesses are consecutive byte accesses,
                // bytes past the last register read as an open bus.
                for (i, b) in data.iter_mut().enumerate() {
                    *b = u16::try_from(offset + i as u64)
                        .ok()
                        .and_then(UartReg::from_offset)
                        .map_or(0xFF, |reg| self.uart.read(reg, GuestTime::ZERO));
                }
                true
            }
            (PortDevice::DebugExit, _) => false,
            (PortDevice::KeyboardData, [b]) => {
                *b = 0;
                true
            }
            (PortDevice::KeyboardCommand, [b]) => {
                *b = KBD_STATUS;
                true
            }
            (PortDevice::ResetControl, [b]) => {
                *b = self.rcr;
                true
            }
            // The 8042 and the RCR answer byte accesses only.
            (PortDevice::KeyboardData | PortDevice::KeyboardCommand, _) => false,
            (PortDevice::ResetControl, _) => false,
        }
    }

    /// A write of `data` at `offset` into `dev`'s ports.
    fn port_write(&mut self, dev: PortDevice, offset: u64, data: &[u8]) -> PortWrite {
        match (dev, data) {
            (PortDevice::Uart, data) => {
                for (i, b) in data.iter().enumerate() {
                    let reg = u16::try_from(offset + i as u64)
                        .ok()
                        .and_then(UartReg::from_offset);
                    if let Some(reg) = reg {
                        self.uart.write(reg, *b, GuestTime::ZERO, &mut self.console);
                    }
                }
                PortWrite::Done
            }
            (PortDevice::DebugExit, data) => {
                let mut v = [0u8; 4];
                v[..data.len()].copy_from_slice(data);
                PortWrite::DebugExit(u32::from_le_bytes(v))
            }
            (PortDevice::KeyboardCommand, [KBD_CMD_RESET]) => {
                PortWrite::Reset(ResetTrigger::KeyboardController)
            }
            (PortDevice::KeyboardData | PortDevice::KeyboardCommand, [_]) => PortWrite::Done,
            (PortDevice::ResetControl, [b]) => {
                self.rcr = *b;
                if self.rcr & RCR_RESET_CPU != 0 {
                    PortWrite::Reset(ResetTrigger::Port0xCf9)
                } else {
                    PortWrite::Done
                }
            }
            (PortDevice::KeyboardData | PortDevice::KeyboardCommand, _) => PortWrite::Unhandled,
            (PortDevice::ResetControl, _) => PortWrite::Unhandled,
        }
    }

    /// A guest read of `data.len()` bytes at `gpa` outside RAM. Returns whether a device
    /// claimed it; if none did, `data` is all ones (an open bus) and the caller counts it in
    /// [`crate::vm::VmStats::unhandled_mmio_reads`].
    pub fn mmio_read(&mut self, gpa: GuestPhys, data: &mut [u8]) -> bool {
        let handled = match self.mmio.lookup(gpa.0) {
            Some((dev, offset)) => self.mmio_dispatch_read(dev, offset, data),
            None => false,
        };
        if !handled {
            data.fill(0xFF);
        }
        handled
    }

    /// A guest write of `data` at `gpa` outside RAM. Returns whether a device claimed it; if
    /// none did, the write is dropped and the caller counts it in
    /// [`crate::vm::VmStats::unhandled_mmio_writes`].
    pub fn mmio_write(&mut self, gpa: GuestPhys, data: &[u8]) -> bool {
        match self.mmio.lookup(gpa.0) {
            Some((dev, offset)) => self.mmio_dispatch_write(dev, offset, data),
            None => false,
        }
    }

    fn mmio_dispatch_read(&mut self, dev: MmioDevice, _offset: u64, _data: &mut [u8]) -> bool {
        match dev {}
    }

    fn mmio_dispatch_write(&mut self, dev: MmioDevice, _offset: u64, _data: &[u8]) -> bool {
        match dev {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(d: &Devices) -> Vec<u8> {
        let mut out = vec![0; 256];
        let r = d.console.read(0, &mut out);
        out.truncate(r.copied);
        out
    }

    #[test]
    fn uart_via_ports() {
        let mut d = Devices::new();
        assert_eq!(d.write(0x3F8, IoSize::Byte, 0x141), PortWrite::Done);
        assert_eq!(console(&d), b"A");
        assert_eq!(
            d.read(0x3FD, IoSize::Byte),
            PortRead {
                value: 0x60,
                handled: true
            }
        );
        assert_eq!(d.read(0x3FA, IoSize::Byte).value, 0x01);
        // A 16-bit write to THR also writes IER (the next port), as on an ISA bus.
        d.write(0x3F8, IoSize::Word, 0x0342);
        assert_eq!(console(&d), b"AB");
        assert_eq!(d.read(0x3F9, IoSize::Byte).value, 0x03);
        // A 32-bit read at 0x3FC: MCR, LSR, MSR, SCR.
        d.write(0x3FF, IoSize::Byte, 0x5A);
        assert_eq!(d.read(0x3FC, IoSize::Dword).value, 0x5AB0_6000);
        // Straddling the end: the byte past 0x3FF reads as an open bus.
        assert_eq!(d.read(0x3FF, IoSize::Word).value, 0xFF5A);
    }

    #[test]
    fn debug_exit_any_width() {
        let mut d = Devices::new();
        assert_eq!(d.write(0xF4, IoSize::Dword, 1), PortWrite::DebugExit(1));
        assert_eq!(
            d.write(0xF4, IoSize::Byte, 0x1234),
            PortWrite::DebugExit(0x34)
        );
        assert!(!d.read(0xF4, IoSize::Dword).handled);
    }

    #[test]
    fn reset_control_register() {
        let mut d = Devices::new();
        assert_eq!(d.write(0xCF9, IoSize::Byte, 0x02), PortWrite::Done);
        assert_eq!(d.read(0xCF9, IoSize::Byte).value, 0x02);
        assert_eq!(
            d.write(0xCF9, IoSize::Byte, 0x06),
            PortWrite::Reset(ResetTrigger::Port0xCf9)
        );
        assert_eq!(
            d.write(0xCF9, IoSize::Byte, 0x04),
            PortWrite::Reset(ResetTrigger::Port0xCf9)
        );
        // A 32-bit write to 0xCF8 is PCI CONFIG_ADDRESS: never a reset.
        assert_eq!(
            d.write(0xCF8, IoSize::Dword, 0x8000_0600),
            PortWrite::Unhandled
        );
        d.reset();
        assert_eq!(d.read(0xCF9, IoSize::Byte).value, 0);
    }

    #[test]
    fn keyboard_controller() {
        let mut d = Devices::new();
        let status = d.read(0x64, IoSize::Byte);
        assert!(status.handled);
        assert_eq!(status.value & 0x02, 0, "input buffer empty");
        assert_eq!(status.value, 0x1C);
        assert_eq!(d.read(0x60, IoSize::Byte).value, 0);
        assert_eq!(d.write(0x64, IoSize::Byte, 0xD1), PortWrite::Done);
        assert_eq!(d.write(0x60, IoSize::Byte, 0xDF), PortWrite::Done);
        assert_eq!(
            d.write(0x64, IoSize::Byte, 0xFE),
            PortWrite::Reset(ResetTrigger::KeyboardController)
        );
        assert_eq!(d.write(0x64, IoSize::Word, 0xFE), PortWrite::Unhandled);
    }

    #[test]
    fn everything_else_is_an_open_bus() {
        let mut d = Devices::new();
        for (port, size, ones) in [
            (0x40, IoSize::Byte, 0xFF),       // PIT
            (0x20, IoSize::Byte, 0xFF),       // PIC
            (0x71, IoSize::Byte, 0xFF),       // CMOS
            (0xCFC, IoSize::Dword, u32::MAX), // PCI config data
            (0x3F7, IoSize::Word, 0xFFFF),    // just below COM1
            (0x2F8, IoSize::Byte, 0xFF),      // COM2
        ] {
            assert_eq!(
                d.read(port, size),
                PortRead {
                    value: ones,
                    handled: false
                }
            );
            assert_eq!(d.write(port, size, 0), PortWrite::Unhandled);
        }
    }

    #[test]
    fn reset_keeps_the_console() {
        let mut d = Devices::new();
        d.write(0x3F8, IoSize::Byte, b'x'.into());
        d.write(0x3FB, IoSize::Byte, 0x83);
        d.reset();
        assert_eq!(d.uart, Uart16550::RESET);
        assert_eq!(console(&d), b"x");
    }

    #[test]
    fn every_device_is_on_the_port_bus() {
        let d = Devices::new();
        assert_eq!(d.port_bus().ranges().len(), PORT_MAP.len());
        for (base, len, dev) in PORT_MAP {
            assert_eq!(d.port_bus().lookup(base.into()), Some((dev, 0)));
            let last = u64::from(base) + u64::from(len) - 1;
            assert_eq!(d.port_bus().lookup(last), Some((dev, u64::from(len) - 1)));
        }
        assert_eq!(d.mmio_bus().ranges().len(), MMIO_MAP.len());
    }

    #[test]
    fn unclaimed_mmio_is_an_open_bus() {
        let mut d = Devices::new();
        for (gpa, len) in [(0xFEE0_0000u64, 4usize), (0xFEC0_0000, 8), (0xE000_0000, 1)] {
            let mut buf = [0x12u8; 8];
            assert!(!d.mmio_read(GuestPhys(gpa), &mut buf[..len]));
            assert!(buf[..len].iter().all(|&b| b == 0xFF));
            assert!(
                buf[len..].iter().all(|&b| b == 0x12),
                "only the access is filled"
            );
            assert!(!d.mmio_write(GuestPhys(gpa), &buf[..len]));
        }
        // Dropped writes change nothing a port reads.
        assert_eq!(d.read(0xCF9, IoSize::Byte).value, 0);
    }

    #[test]
    fn io_sizes() {
        assert_eq!(IoSize::from_bytes(2), Some(IoSize::Word));
        assert_eq!(IoSize::from_bytes(3), None);
        assert_eq!(IoSize::Dword.bytes(), 4);
    }
}
