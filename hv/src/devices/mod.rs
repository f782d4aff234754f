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
//! An access is dispatched by its first port. Widths: the UART is a byte device on an 8-bit
//! bus, so a 16- or 32-bit access to it is split into byte accesses to consecutive ports, as
//! the ISA bus does (bytes past 0x3FF go to "no device"). The debug-exit port takes any width
//! (the value is masked to it). The keyboard controller and RCR answer byte accesses only: a
//! wider access at 0xCF8 is the PCI configuration address register, not a reset.
//!
//! Devices are decided here and counted by the caller; nothing here blocks or allocates.

pub mod chipset;
pub mod console;
pub mod fw_cfg;
pub mod ioapic;
pub mod lapic;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod uart;

pub use console::{CONSOLE_RING_SIZE, ConsoleRead, ConsoleRing};
pub use uart::{COM1_BASE, Uart16550, UartReg};

use crate::exit::ResetTrigger;
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

/// The devices of one VM, plus its console log.
#[derive(Debug, Default)]
pub struct Devices {
    /// COM1.
    pub uart: Uart16550,
    /// Everything the guest transmitted. Kept across guest resets.
    pub console: ConsoleRing,
    /// Last value written to the reset control register.
    rcr: u8,
}

impl Devices {
    /// Devices in reset state with an empty console.
    pub const fn new() -> Self {
        Devices {
            uart: Uart16550::RESET,
            console: ConsoleRing::new(),
            rcr: 0,
        }
    }

    /// Guest reset: device registers back to reset state; the console log is kept, so output
    /// from before the reset stays readable at its offsets.
    pub fn reset(&mut self) {
        self.uart.reset();
        self.rcr = 0;
    }

    /// IN of `size` from `port`.
    pub fn read(&mut self, port: u16, size: IoSize) -> PortRead {
        if is_uart(port) {
            let mut value = 0u32;
            for i in 0..size.bytes() as u16 {
                let byte = match uart_reg(port.wrapping_add(i)) {
                    // No guest clock here yet: the UART sees time 0 (no character timeout).
                    Some(reg) => self.uart.read(reg, GuestTime::ZERO),
                    None => 0xFF,
                };
                value |= u32::from(byte) << (8 * i);
            }
            return PortRead {
                value,
                handled: true,
            };
        }
        let byte = match (port, size) {
            (KBD_DATA_PORT, IoSize::Byte) => Some(0),
            (KBD_STATUS_PORT, IoSize::Byte) => Some(KBD_STATUS),
            (RESET_CONTROL_PORT, IoSize::Byte) => Some(self.rcr),
            _ => None,
        };
        match byte {
            Some(b) => PortRead {
                value: u32::from(b),
                handled: true,
            },
            None => PortRead {
                value: size.mask(),
                handled: false,
            },
        }
    }

    /// OUT of `value` (masked to `size`) to `port`.
    pub fn write(&mut self, port: u16, size: IoSize, value: u32) -> PortWrite {
        let value = value & size.mask();
        if is_uart(port) {
            for i in 0..size.bytes() as u16 {
                if let Some(reg) = uart_reg(port.wrapping_add(i)) {
                    let byte = (value >> (8 * i)) as u8;
                    self.uart
                        .write(reg, byte, GuestTime::ZERO, &mut self.console);
                }
            }
            return PortWrite::Done;
        }
        match (port, size) {
            (DEBUG_EXIT_PORT, _) => PortWrite::DebugExit(value),
            (KBD_STATUS_PORT, IoSize::Byte) if value as u8 == KBD_CMD_RESET => {
                PortWrite::Reset(ResetTrigger::KeyboardController)
            }
            (KBD_DATA_PORT | KBD_STATUS_PORT, IoSize::Byte) => PortWrite::Done,
            (RESET_CONTROL_PORT, IoSize::Byte) => {
                self.rcr = value as u8;
                if self.rcr & RCR_RESET_CPU != 0 {
                    PortWrite::Reset(ResetTrigger::Port0xCf9)
                } else {
                    PortWrite::Done
                }
            }
            _ => PortWrite::Unhandled,
        }
    }
}

fn is_uart(port: u16) -> bool {
    uart_reg(port).is_some()
}

fn uart_reg(port: u16) -> Option<UartReg> {
    port.checked_sub(COM1_BASE).and_then(UartReg::from_offset)
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
    fn io_sizes() {
        assert_eq!(IoSize::from_bytes(2), Some(IoSize::Word));
        assert_eq!(IoSize::from_bytes(3), None);
        assert_eq!(IoSize::Dword.bytes(), 4);
    }
}
