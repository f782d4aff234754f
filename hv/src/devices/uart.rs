//! A transmit-only 16550A UART: enough for a guest's serial console.
//!
//! Why so little: guests use COM1 to print (boot logs, test results). There is no input path
//! and no interrupt controller yet, so the model never raises an interrupt and never has data
//! ready; guests poll LSR.THRE, which is always set because every byte is taken at once.
//! Registers follow the National Semiconductor PC16550D datasheet ("Register Summary" table);
//! software that probes for a 16550A (Linux's 8250 driver: scratch register, loopback through
//! MSR, FIFO bits in IIR) finds one.
//!
//! | offset | DLAB=0 read / write  | DLAB=1      | model                                       |
//! |--------|----------------------|-------------|---------------------------------------------|
//! | 0      | RBR / THR            | DLL         | RBR reads 0; THR bytes go to the console    |
//! | 1      | IER                  | DLM         | IER keeps bits 3:0                          |
//! | 2      | IIR / FCR            |             | IIR: 0x01 (none pending), 0xC1 with FIFOs on |
//! | 3      | LCR                  |             | read back                                   |
//! | 4      | MCR                  |             | bits 4:0 read back; bit 4 = loopback        |
//! | 5      | LSR (read only)      |             | THRE \| TEMT (0x60); DR never set            |
//! | 6      | MSR (read only)      |             | DCD\|DSR\|CTS, or MCR's outputs in loopback   |
//! | 7      | SCR                  |             | read back                                   |

use super::console::ConsoleRing;

/// COM1 base port.
pub const COM1_BASE: u16 = 0x3F8;
/// Number of UART registers (ports `base..base + 8`).
pub const UART_PORTS: u16 = 8;

/// LCR bit 7: divisor latch access.
pub const LCR_DLAB: u8 = 1 << 7;
/// LSR bit 0: data ready.
pub const LSR_DR: u8 = 1 << 0;
/// LSR bit 5: transmitter holding register empty.
pub const LSR_THRE: u8 = 1 << 5;
/// LSR bit 6: transmitter empty.
pub const LSR_TEMT: u8 = 1 << 6;
/// MCR bit 4: loopback.
pub const MCR_LOOP: u8 = 1 << 4;
/// IIR value with no interrupt pending (bit 0 set) and FIFOs off.
pub const IIR_NO_INTERRUPT: u8 = 0x01;
/// IIR bits 7:6 when the FIFOs are enabled (16550A).
pub const IIR_FIFO_ENABLED: u8 = 0xC0;
/// FCR bit 0: FIFO enable.
pub const FCR_FIFO_ENABLE: u8 = 1 << 0;
/// MSR bits reported outside loopback: DCD (7), DSR (5), CTS (4) — a connected line.
pub const MSR_CONNECTED: u8 = 0xB0;

/// UART register offsets from the base port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum UartReg {
    /// RBR/THR, or DLL with DLAB set.
    Data = 0,
    /// IER, or DLM with DLAB set.
    Ier = 1,
    /// IIR (read) / FCR (write).
    IirFcr = 2,
    /// Line control.
    Lcr = 3,
    /// Modem control.
    Mcr = 4,
    /// Line status.
    Lsr = 5,
    /// Modem status.
    Msr = 6,
    /// Scratch.
    Scr = 7,
}

impl UartReg {
    /// The register at `offset` (0..8).
    pub const fn from_offset(offset: u16) -> Option<UartReg> {
        Some(match offset {
            0 => UartReg::Data,
            1 => UartReg::Ier,
            2 => UartReg::IirFcr,
            3 => UartReg::Lcr,
            4 => UartReg::Mcr,
            5 => UartReg::Lsr,
            6 => UartReg::Msr,
            7 => UartReg::Scr,
            _ => return None,
        })
    }
}

/// The register file of one 16550A.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo_enabled: bool,
}

impl Uart16550 {
    /// Reset state: everything zero except the divisor (12 = 9600 baud at 1.8432 MHz; the
    /// datasheet leaves it undefined).
    pub const RESET: Uart16550 = Uart16550 {
        ier: 0,
        lcr: 0,
        mcr: 0,
        scr: 0,
        dll: 12,
        dlm: 0,
        fifo_enabled: false,
    };

    /// Back to [`Uart16550::RESET`].
    pub fn reset(&mut self) {
        *self = Self::RESET;
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    /// The divisor latch (DLM:DLL).
    pub const fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.dll, self.dlm])
    }

    /// Read one register.
    pub fn read(&self, reg: UartReg) -> u8 {
        match reg {
            UartReg::Data if self.dlab() => self.dll,
            // No receive path: RBR is empty.
            UartReg::Data => 0,
            UartReg::Ier if self.dlab() => self.dlm,
            UartReg::Ier => self.ier,
            UartReg::IirFcr => {
                if self.fifo_enabled {
                    IIR_NO_INTERRUPT | IIR_FIFO_ENABLED
                } else {
                    IIR_NO_INTERRUPT
                }
            }
            UartReg::Lcr => self.lcr,
            UartReg::Mcr => self.mcr,
            UartReg::Lsr => LSR_THRE | LSR_TEMT,
            UartReg::Msr => {
                if self.mcr & MCR_LOOP != 0 {
                    // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD (PC16550D, MCR bit 4).
                    let m = self.mcr;
                    ((m & 1) << 5) | ((m & 2) << 3) | ((m & 4) << 4) | ((m & 8) << 4)
                } else {
                    MSR_CONNECTED
                }
            }
            UartReg::Scr => self.scr,
        }
    }

    /// Write one register; a transmitted byte goes to `console` (not in loopback mode, where
    /// the real chip disconnects its output).
    pub fn write<const N: usize>(&mut self, reg: UartReg, value: u8, console: &mut ConsoleRing<N>) {
        match reg {
            UartReg::Data if self.dlab() => self.dll = value,
            UartReg::Data => {
                if self.mcr & MCR_LOOP == 0 {
                    console.push(value);
                }
            }
            UartReg::Ier if self.dlab() => self.dlm = value,
            UartReg::Ier => self.ier = value & 0x0F,
            UartReg::IirFcr => self.fifo_enabled = value & FCR_FIFO_ENABLE != 0,
            UartReg::Lcr => self.lcr = value,
            UartReg::Mcr => self.mcr = value & 0x1F,
            // LSR and MSR are read-only; writes have no effect (factory test use only).
            UartReg::Lsr | UartReg::Msr => {}
            UartReg::Scr => self.scr = value,
        }
    }
}

impl Default for Uart16550 {
    fn default() -> Self {
        Self::RESET
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Uart16550, ConsoleRing<64>) {
        (Uart16550::RESET, ConsoleRing::new())
    }

    fn console_text(c: &ConsoleRing<64>) -> Vec<u8> {
        let mut out = [0; 64];
        let r = c.read(0, &mut out);
        out[..r.copied].to_vec()
    }

    #[test]
    fn thr_goes_to_console_and_lsr_is_always_ready() {
        let (mut u, mut c) = setup();
        for &b in b"hi\n" {
            assert_eq!(u.read(UartReg::Lsr) & LSR_THRE, LSR_THRE);
            u.write(UartReg::Data, b, &mut c);
        }
        assert_eq!(console_text(&c), b"hi\n");
        assert_eq!(u.read(UartReg::Lsr), 0x60);
        assert_eq!(u.read(UartReg::Lsr) & LSR_DR, 0);
        assert_eq!(u.read(UartReg::Data), 0);
    }

    #[test]
    fn dlab_switches_data_and_ier_to_the_divisor() {
        let (mut u, mut c) = setup();
        u.write(UartReg::Ier, 0x05, &mut c);
        u.write(UartReg::Lcr, LCR_DLAB | 0x03, &mut c);
        u.write(UartReg::Data, 0x01, &mut c); // DLL: 115200 baud
        u.write(UartReg::Ier, 0x00, &mut c); // DLM
        assert_eq!(u.read(UartReg::Data), 0x01);
        assert_eq!(u.read(UartReg::Ier), 0x00);
        assert_eq!(u.divisor(), 1);
        u.write(UartReg::Lcr, 0x03, &mut c);
        // IER kept its value, nothing was transmitted while DLAB was set.
        assert_eq!(u.read(UartReg::Ier), 0x05);
        assert_eq!(u.read(UartReg::Lcr), 0x03);
        assert_eq!(c.total_written(), 0);
    }

    #[test]
    fn registers_read_back() {
        let (mut u, mut c) = setup();
        u.write(UartReg::Scr, 0xA5, &mut c);
        u.write(UartReg::Mcr, 0xFF, &mut c);
        u.write(UartReg::Ier, 0xFF, &mut c);
        assert_eq!(u.read(UartReg::Scr), 0xA5);
        assert_eq!(u.read(UartReg::Mcr), 0x1F);
        assert_eq!(u.read(UartReg::Ier), 0x0F);
        // LSR is read-only.
        u.write(UartReg::Lsr, 0, &mut c);
        assert_eq!(u.read(UartReg::Lsr), 0x60);
    }

    #[test]
    fn iir_reports_no_interrupt_and_fifo_state() {
        let (mut u, mut c) = setup();
        assert_eq!(u.read(UartReg::IirFcr), 0x01);
        u.write(UartReg::IirFcr, 0x07, &mut c);
        assert_eq!(u.read(UartReg::IirFcr), 0xC1);
        u.write(UartReg::IirFcr, 0x00, &mut c);
        assert_eq!(u.read(UartReg::IirFcr), 0x01);
    }

    #[test]
    fn loopback_probe_like_linux_8250() {
        let (mut u, mut c) = setup();
        assert_eq!(u.read(UartReg::Msr), MSR_CONNECTED);
        // MCR = LOOP | OUT2 | RTS: MSR high nibble must read DCD | CTS = 0x90.
        u.write(UartReg::Mcr, MCR_LOOP | 0x0A, &mut c);
        assert_eq!(u.read(UartReg::Msr) & 0xF0, 0x90);
        u.write(UartReg::Mcr, MCR_LOOP | 0x0F, &mut c);
        assert_eq!(u.read(UartReg::Msr), 0xF0);
        // Bytes sent in loopback do not reach the console.
        u.write(UartReg::Data, b'x', &mut c);
        assert_eq!(c.total_written(), 0);
    }

    #[test]
    fn reset_restores_defaults() {
        let (mut u, mut c) = setup();
        u.write(UartReg::Lcr, 0x83, &mut c);
        u.write(UartReg::Scr, 1, &mut c);
        u.reset();
        assert_eq!(u, Uart16550::RESET);
        assert_eq!(UartReg::from_offset(7), Some(UartReg::Scr));
        assert_eq!(UartReg::from_offset(8), None);
    }
}
