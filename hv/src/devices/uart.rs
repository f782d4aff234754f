//! A 16550A UART with interrupts and input: the serial port a stock operating system drives.
//!
//! Why a full model: Linux's tty layer sends only from the UART interrupt handler, so a console
//! that never interrupts shows the kernel's printk output but no userspace output, and an
//! interactive shell needs input. This is the National Semiconductor PC16550D as Linux's 8250
//! driver probes and drives it (datasheet sections "Register Description", "FIFO Interrupt
//! Mode Operation", Table II "Interrupt Control Functions"):
//!
//! | offset | DLAB=0 read / write | DLAB=1 | model                                                   |
//! |--------|---------------------|--------|---------------------------------------------------------|
//! | 0      | RBR / THR           | DLL    | RX FIFO head / byte to the console (RX in loopback)     |
//! | 1      | IER                 | DLM    | bits 3:0 (ERBFI, ETBEI, ELSI, EDSSI)                    |
//! | 2      | IIR / FCR           |        | prioritised source, bits 7:6 = 11 with FIFOs on         |
//! | 3      | LCR                 |        | read back; word length/parity/stop set the char time    |
//! | 4      | MCR                 |        | bits 4:0; OUT2 gates the IRQ line; bit 4 loopback       |
//! | 5      | LSR                 |        | DR, OE, THRE, TEMT; reading clears OE                   |
//! | 6      | MSR                 |        | connected line (DCD, DSR, CTS) or MCR in loopback, deltas |
//! | 7      | SCR                 |        | read back                                               |
//!
//! **Transmit.** The transmitter is infinitely fast: a THR write goes straight to the console
//! ring, so THR and the transmitter are always empty again by the time the guest looks (LSR
//! THRE and TEMT always read 1). The THRE interrupt follows the 16550: it is raised when the
//! transmitter holding register becomes empty (after every THR write, at once here) and when
//! ETBEI goes from 0 to 1 while THR is empty; it is cleared by reading IIR while THRE is the
//! reported source, by writing THR, or by clearing ETBEI. Linux's startup tests (the THRE
//! re-assertion test that sets `UART_BUG_THRE` and the quick test that sets `UART_BUG_TXEN`)
//! therefore see a correct 16550A.
//!
//! **Receive.** Input comes from the host through [`Uart16550::push_input`] into a fixed
//! queue of [`INPUT_CAPACITY`] bytes (what does not fit is refused, so the control API can
//! answer "too large" or "busy"). The "serial line" moves queued bytes into the 16-byte receive
//! FIFO (one holding byte with FIFOs off) whenever there is room, at the guest time of the next
//! access or [`poll`](Uart16550::poll): the host queue backpressures, so the FIFO never overruns
//! from host input. RDA is pending while the FIFO holds at least the trigger level (1, 4, 8 or
//! 14 bytes; any byte with FIFOs off); the character timeout (CTI) is pending when the FIFO
//! holds data and nothing was received into or read from it for 4 character times at the
//! programmed rate (divisor and LCR framing, 1.8432 MHz clock), and is cleared by the next RBR
//! read. In loopback the line is disconnected: THR writes go to the receive FIFO instead, and
//! a write into a full FIFO is an overrun (LSR OE, an RLS interrupt).
//!
//! **Interrupt line.** [`irq_level`](Uart16550::irq_level) is "an enabled interrupt is
//! pending" gated by the OUT2 output, as a PC wires it to IRQ 4. In loopback the outputs are
//! forced inactive (datasheet, MCR bit 4), so the PC's IRQ line is off.
//!
//! **Time.** The device never reads a clock: every access takes `now`, and
//! [`next_deadline`](Uart16550::next_deadline) tells the caller when to [`poll`] again (a
//! character timeout, or queued input that the FIFO can take). The caller samples
//! [`irq_level`](Uart16550::irq_level) after every access and poll.
//!
//! Not modelled: parity, framing and break errors (the host line has no noise; PE, FE, BI and
//! LSR bit 7 read 0), DMA mode and the RXRDY/TXRDY pins, a transmit rate.
//!
//! [`poll`]: Uart16550::poll

use heapless::Deque;

use super::console::ConsoleRing;
use crate::time::{GuestTime, NANOS_PER_SEC};

/// COM1 base port.
pub const COM1_BASE: u16 = 0x3F8;
/// Number of UART registers (ports `base..base + 8`).
pub const UART_PORTS: u16 = 8;
/// The PC's IRQ line of COM1.
pub const COM1_IRQ: u8 = 4;
/// Capacity of the host-side input queue.
pub const INPUT_CAPACITY: usize = 4096;
/// Depth of the receive FIFO.
pub const RX_FIFO_DEPTH: usize = 16;
/// Depth of the transmit FIFO (what a driver may write per THRE interrupt).
pub const TX_FIFO_DEPTH: usize = 16;
/// The UART's input clock: 1.8432 MHz (baud = clock / (16 x divisor)).
pub const UART_CLOCK_HZ: u64 = 1_843_200;

/// IER bit 0: received data available interrupt.
pub const IER_ERBFI: u8 = 1 << 0;
/// IER bit 1: transmitter holding register empty interrupt.
pub const IER_ETBEI: u8 = 1 << 1;
/// IER bit 2: receiver line status interrupt.
pub const IER_ELSI: u8 = 1 << 2;
/// IER bit 3: modem status interrupt.
pub const IER_EDSSI: u8 = 1 << 3;

/// IIR value with no interrupt pending (bit 0 set) and FIFOs off.
pub const IIR_NO_INTERRUPT: u8 = 0x01;
/// IIR source: receiver line status (priority 1, highest).
pub const IIR_RLS: u8 = 0x06;
/// IIR source: received data available (priority 2).
pub const IIR_RDA: u8 = 0x04;
/// IIR source: character timeout (priority 2, FIFO mode only).
pub const IIR_CTI: u8 = 0x0C;
/// IIR source: transmitter holding register empty (priority 3).
pub const IIR_THRE: u8 = 0x02;
/// IIR source: modem status (priority 4, lowest).
pub const IIR_MSR: u8 = 0x00;
/// IIR bits 7:6 when the FIFOs are enabled (16550A).
pub const IIR_FIFO_ENABLED: u8 = 0xC0;

/// FCR bit 0: FIFO enable.
pub const FCR_FIFO_ENABLE: u8 = 1 << 0;
/// FCR bit 1: clear the receive FIFO.
pub const FCR_RX_RESET: u8 = 1 << 1;
/// FCR bit 2: clear the transmit FIFO.
pub const FCR_TX_RESET: u8 = 1 << 2;
/// FCR bits 7:6: receiver trigger level (00 = 1, 01 = 4, 10 = 8, 11 = 14 bytes).
pub const FCR_TRIGGER_MASK: u8 = 0xC0;

/// LCR bit 7: divisor latch access.
pub const LCR_DLAB: u8 = 1 << 7;

/// MCR bit 0: DTR.
pub const MCR_DTR: u8 = 1 << 0;
/// MCR bit 1: RTS.
pub const MCR_RTS: u8 = 1 << 1;
/// MCR bit 2: OUT1.
pub const MCR_OUT1: u8 = 1 << 2;
/// MCR bit 3: OUT2 (on a PC: enables the IRQ driver).
pub const MCR_OUT2: u8 = 1 << 3;
/// MCR bit 4: loopback.
pub const MCR_LOOP: u8 = 1 << 4;

/// LSR bit 0: data ready.
pub const LSR_DR: u8 = 1 << 0;
/// LSR bit 1: overrun error.
pub const LSR_OE: u8 = 1 << 1;
/// LSR bit 2: parity error (never set here).
pub const LSR_PE: u8 = 1 << 2;
/// LSR bit 3: framing error (never set here).
pub const LSR_FE: u8 = 1 << 3;
/// LSR bit 4: break interrupt (never set here).
pub const LSR_BI: u8 = 1 << 4;
/// LSR bit 5: transmitter holding register empty.
pub const LSR_THRE: u8 = 1 << 5;
/// LSR bit 6: transmitter empty.
pub const LSR_TEMT: u8 = 1 << 6;
/// LSR bit 7: error in the receive FIFO (never set here: no PE/FE/BI).
pub const LSR_FIFO_ERROR: u8 = 1 << 7;

/// MSR bit 0: delta CTS.
pub const MSR_DCTS: u8 = 1 << 0;
/// MSR bit 1: delta DSR.
pub const MSR_DDSR: u8 = 1 << 1;
/// MSR bit 2: trailing edge of RI.
pub const MSR_TERI: u8 = 1 << 2;
/// MSR bit 3: delta DCD.
pub const MSR_DDCD: u8 = 1 << 3;
/// MSR bit 4: CTS.
pub const MSR_CTS: u8 = 1 << 4;
/// MSR bit 5: DSR.
pub const MSR_DSR: u8 = 1 << 5;
/// MSR bit 6: RI.
pub const MSR_RI: u8 = 1 << 6;
/// MSR bit 7: DCD.
pub const MSR_DCD: u8 = 1 << 7;
/// MSR inputs outside loopback: DCD, DSR and CTS — a connected line that is always ready.
pub const MSR_CONNECTED: u8 = MSR_DCD | MSR_DSR | MSR_CTS;

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

/// One 16550A: registers, receive FIFO and the host-side input queue.
#[derive(Clone, Debug)]
pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo_enabled: bool,
    /// FCR bits 7:6 as last programmed.
    trigger_bits: u8,
    /// Latched LSR error bits (OE), cleared by an LSR read.
    lsr_errors: u8,
    /// Latched MSR delta bits 3:0, cleared by an MSR read.
    msr_deltas: u8,
    /// The THRE interrupt condition (reported only with ETBEI).
    thre_pending: bool,
    /// The character-timeout condition (reported only with ERBFI and FIFOs on).
    timeout: bool,
    /// When a byte last entered or left the receive FIFO.
    rx_activity: GuestTime,
    /// The latest guest time seen.
    now: GuestTime,
    rx: Deque<u8, RX_FIFO_DEPTH>,
    input: Deque<u8, INPUT_CAPACITY>,
}

impl Uart16550 {
    /// Reset state (PC16550D Table III "UART Reset Configuration"): IER, IIR (no interrupt),
    /// FCR, LCR, MCR, LSR errors and MSR deltas zero, FIFOs off and empty, the host queue
    /// empty. The divisor, which the datasheet leaves undefined, is 12 (9600 baud).
    pub const RESET: Uart16550 = Uart16550 {
        ier: 0,
        lcr: 0,
        mcr: 0,
        scr: 0,
        dll: 12,
        dlm: 0,
        fifo_enabled: false,
        trigger_bits: 0,
        lsr_errors: 0,
        msr_deltas: 0,
        thre_pending: false,
        timeout: false,
        rx_activity: GuestTime::ZERO,
        now: GuestTime::ZERO,
        rx: Deque::new(),
        input: Deque::new(),
    };

    /// Back to [`Uart16550::RESET`]. Input queued by the host and not yet received is
    /// discarded too: after a guest reset nothing from before it is delivered. The time base
    /// goes back to guest time 0, as the guest clock restarts with a reset (`time.rs`).
    pub fn reset(&mut self) {
        *self = Self::RESET;
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// The divisor latch (DLM:DLL).
    pub const fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.dll, self.dlm])
    }

    /// The receiver trigger level in bytes (1 with FIFOs off).
    pub fn trigger_level(&self) -> usize {
        if !self.fifo_enabled {
            return 1;
        }
        match self.trigger_bits >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled { RX_FIFO_DEPTH } else { 1 }
    }

    /// One character time at the programmed rate and framing (start bit, 5-8 data bits,
    /// parity, 1, 1.5 or 2 stop bits), in nanoseconds, rounded up. A divisor of 0 counts as
    /// 65536.
    pub fn char_time_ns(&self) -> u64 {
        let word = 5 + u64::from(self.lcr & 0x03);
        let parity = u64::from((self.lcr >> 3) & 1);
        let stop_half_bits = match (self.lcr & 0x04 != 0, word) {
            (false, _) => 2,
            (true, 5) => 3,
            (true, _) => 4,
        };
        let half_bits = 2 * (1 + word + parity) + stop_half_bits;
        let divisor = match self.divisor() {
            0 => 65536u128,
            d => u128::from(d),
        };
        // One bit lasts 16 * divisor clock periods.
        let ns = (u128::from(half_bits) * 16 * divisor * u128::from(NANOS_PER_SEC))
            .div_ceil(2 * u128::from(UART_CLOCK_HZ));
        ns as u64
    }

    /// The character-timeout interval: 4 character times.
    pub fn timeout_ns(&self) -> u64 {
        4 * self.char_time_ns()
    }

    /// MSR bits 7:4 as the inputs are now: the MCR outputs in loopback (DTR->DSR, RTS->CTS,
    /// OUT1->RI, OUT2->DCD), else a connected line.
    fn modem_inputs(mcr: u8) -> u8 {
        if mcr & MCR_LOOP != 0 {
            ((mcr & MCR_DTR) << 5)
                | ((mcr & MCR_RTS) << 3)
                | ((mcr & MCR_OUT1) << 4)
                | ((mcr & MCR_OUT2) << 4)
        } else {
            MSR_CONNECTED
        }
    }

    /// Bring the model up to `now`: the line delivers queued input while the FIFO has room
    /// (not in loopback), and the character timeout latches once it has elapsed.
    fn advance(&mut self, now: GuestTime) {
        if now > self.now {
            self.now = now;
        }
        let now = self.now;
        if !self.loopback() {
            while self.rx.len() < self.rx_capacity() {
                match self.input.pop_front() {
                    Some(b) => {
                        // Cannot fail: the length was checked against a capacity <= N.
                        let _ = self.rx.push_back(b);
                        self.rx_activity = now;
                    }
                    None => break,
                }
            }
        }
        if self.fifo_enabled
            && !self.rx.is_empty()
            && now.since(self.rx_activity) >= self.timeout_ns()
        {
            self.timeout = true;
        }
    }

    /// Let guest time pass to `now` without an access (at a [`next_deadline`]).
    ///
    /// [`next_deadline`]: Uart16550::next_deadline
    pub fn poll(&mut self, now: GuestTime) {
        self.advance(now);
    }

    /// When the caller must [`poll`](Self::poll) next: at once (the last time seen) when
    /// queued input can enter the FIFO, or when the character timeout of data below the
    /// trigger level would be raised; `None` if nothing will change without an access.
    pub fn next_deadline(&self) -> Option<GuestTime> {
        if !self.loopback() && !self.input.is_empty() && self.rx.len() < self.rx_capacity() {
            return Some(self.now);
        }
        let cti_matters = self.ier & IER_ERBFI != 0
            && self.fifo_enabled
            && !self.timeout
            && !self.rx.is_empty()
            && self.rx.len() < self.trigger_level();
        cti_matters.then(|| self.rx_activity.plus_nanos(self.timeout_ns()))
    }

    /// The highest-priority enabled interrupt source, as IIR bits 3:0 (`IIR_NO_INTERRUPT` if
    /// none), PC16550D Table II.
    fn interrupt_source(&self) -> u8 {
        let rx_len = self.rx.len();
        if self.ier & IER_ELSI != 0 && self.lsr_errors != 0 {
            IIR_RLS
        } else if self.ier & IER_ERBFI != 0 && rx_len > 0 && rx_len >= self.trigger_level() {
            IIR_RDA
        } else if self.ier & IER_ERBFI != 0 && self.fifo_enabled && self.timeout && rx_len > 0 {
            IIR_CTI
        } else if self.ier & IER_ETBEI != 0 && self.thre_pending {
            IIR_THRE
        } else if self.ier & IER_EDSSI != 0 && self.msr_deltas != 0 {
            IIR_MSR
        } else {
            IIR_NO_INTERRUPT
        }
    }

    /// Whether an enabled interrupt is pending (IIR bit 0 clear), whatever OUT2 says.
    pub fn interrupt_pending(&self) -> bool {
        self.interrupt_source() != IIR_NO_INTERRUPT
    }

    /// The level of the PC's IRQ line (IRQ 4 for COM1): an interrupt is pending and OUT2 is
    /// set (and not forced inactive by loopback).
    pub fn irq_level(&self) -> bool {
        self.mcr & MCR_OUT2 != 0 && !self.loopback() && self.interrupt_pending()
    }

    /// Queue host input for the guest; returns how many bytes were accepted (a prefix of
    /// `bytes`; fewer than `bytes.len()` when the queue is full). Delivered into the FIFO at
    /// the next access or [`poll`](Self::poll).
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let mut accepted = 0;
        for &b in bytes {
            if self.input.push_back(b).is_err() {
                break;
            }
            accepted += 1;
        }
        accepted
    }

    /// Bytes waiting in the host queue (not yet in the receive FIFO).
    pub fn input_queued(&self) -> usize {
        self.input.len()
    }

    /// Free room in the host queue.
    pub fn input_free(&self) -> usize {
        INPUT_CAPACITY - self.input.len()
    }

    /// Bytes in the receive FIFO.
    pub fn rx_fifo_len(&self) -> usize {
        self.rx.len()
    }

    /// A byte arrives at the receiver from loopback.
    fn receive_looped(&mut self, byte: u8) {
        if self.rx.len() >= self.rx_capacity() {
            self.lsr_errors |= LSR_OE;
            if !self.fifo_enabled {
                // 16450 mode: the new character overwrites the holding register.
                self.rx.clear();
                let _ = self.rx.push_back(byte);
                self.rx_activity = self.now;
            }
            // FIFO mode: the character in the shift register is lost, the FIFO is kept.
            return;
        }
        let _ = self.rx.push_back(byte);
        self.rx_activity = self.now;
    }

    /// Read one register at guest time `now`. Reads of RBR, IIR, LSR and MSR have the
    /// datasheet's side effects (pop a byte, clear THRE, clear OE, clear the deltas).
    pub fn read(&mut self, reg: UartReg, now: GuestTime) -> u8 {
        self.advance(now);
        let value = match reg {
            UartReg::Data if self.dlab() => self.dll,
            UartReg::Data => match self.rx.pop_front() {
                Some(b) => {
                    self.rx_activity = self.now;
                    self.timeout = false;
                    b
                }
                // An empty RBR reads as the last byte on a real chip; 0 here.
                None => 0,
            },
            UartReg::Ier if self.dlab() => self.dlm,
            UartReg::Ier => self.ier,
            UartReg::IirFcr => {
                let source = self.interrupt_source();
                if source == IIR_THRE {
                    self.thre_pending = false;
                }
                if self.fifo_enabled {
                    source | IIR_FIFO_ENABLED
                } else {
                    source
                }
            }
            UartReg::Lcr => self.lcr,
            UartReg::Mcr => self.mcr,
            UartReg::Lsr => {
                let dr = if self.rx.is_empty() { 0 } else { LSR_DR };
                let v = dr | self.lsr_errors | LSR_THRE | LSR_TEMT;
                self.lsr_errors = 0;
                v
            }
            UartReg::Msr => {
                let v = Self::modem_inputs(self.mcr) | self.msr_deltas;
                self.msr_deltas = 0;
                v
            }
            UartReg::Scr => self.scr,
        };
        // A read may have made room in the FIFO: the line refills it at once.
        self.advance(now);
        value
    }

    /// Write one register at guest time `now`; a transmitted byte goes to `console` (or to
    /// the receive FIFO in loopback, where the real chip disconnects its output).
    pub fn write<const N: usize>(
        &mut self,
        reg: UartReg,
        value: u8,
        now: GuestTime,
        console: &mut ConsoleRing<N>,
    ) {
        self.advance(now);
        match reg {
            UartReg::Data if self.dlab() => self.dll = value,
            UartReg::Data => {
                // Writing THR clears THRE; the transmitter takes the byte at once, so THR is
                // empty again and THRE is raised anew.
                if self.loopback() {
                    self.receive_looped(value);
                } else {
                    console.push(value);
                }
                self.thre_pending = true;
            }
            UartReg::Ier if self.dlab() => self.dlm = value,
            UartReg::Ier => {
                let old = self.ier;
                self.ier = value & 0x0F;
                if self.ier & IER_ETBEI == 0 {
                    self.thre_pending = false;
                } else if old & IER_ETBEI == 0 {
                    // Enabling ETBEI with THR empty (always, here) raises THRE.
                    self.thre_pending = true;
                }
            }
            UartReg::IirFcr => self.write_fcr(value),
            UartReg::Lcr => self.lcr = value,
            UartReg::Mcr => {
                let old_inputs = Self::modem_inputs(self.mcr);
                self.mcr = value & 0x1F;
                let new_inputs = Self::modem_inputs(self.mcr);
                let changed = old_inputs ^ new_inputs;
                let mut deltas = 0;
                if changed & MSR_CTS != 0 {
                    deltas |= MSR_DCTS;
                }
                if changed & MSR_DSR != 0 {
                    deltas |= MSR_DDSR;
                }
                if old_inputs & MSR_RI != 0 && new_inputs & MSR_RI == 0 {
                    deltas |= MSR_TERI;
                }
                if changed & MSR_DCD != 0 {
                    deltas |= MSR_DDCD;
                }
                self.msr_deltas |= deltas;
            }
            // LSR and MSR are read-only; writes have no effect (factory test use only).
            UartReg::Lsr | UartReg::Msr => {}
            UartReg::Scr => self.scr = value,
        }
        self.advance(now);
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_FIFO_ENABLE != 0;
        if enable != self.fifo_enabled {
            // Changing FCR0 clears both FIFOs.
            self.rx.clear();
            self.timeout = false;
            self.fifo_enabled = enable;
        }
        if !enable {
            // The other bits are programmed only together with FCR0 = 1.
            return;
        }
        if value & FCR_RX_RESET != 0 {
            self.rx.clear();
            self.timeout = false;
        }
        // FCR_TX_RESET: the transmit FIFO is always empty.
        self.trigger_bits = value & FCR_TRIGGER_MASK;
    }
}

impl PartialEq for Uart16550 {
    fn eq(&self, other: &Self) -> bool {
        self.ier == other.ier
            && self.lcr == other.lcr
            && self.mcr == other.mcr
            && self.scr == other.scr
            && self.dll == other.dll
            && self.dlm == other.dlm
            && self.fifo_enabled == other.fifo_enabled
            && self.trigger_bits == other.trigger_bits
            && self.lsr_errors == other.lsr_errors
            && self.msr_deltas == other.msr_deltas
            && self.thre_pending == other.thre_pending
            && self.timeout == other.timeout
            && self.rx_activity == other.rx_activity
            && self.now == other.now
            && self.rx.iter().eq(other.rx.iter())
            && self.input.iter().eq(other.input.iter())
    }
}

impl Eq for Uart16550 {}

impl Default for Uart16550 {
    fn default() -> Self {
        Self::RESET
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: GuestTime = GuestTime::ZERO;

    /// A UART with a console and a guest clock, driven like a guest driver would.
    struct Bench {
        u: Uart16550,
        c: ConsoleRing<8192>,
        now: GuestTime,
    }

    impl Bench {
        fn new() -> Bench {
            Bench {
                u: Uart16550::RESET,
                c: ConsoleRing::new(),
                now: T0,
            }
        }
        fn rd(&mut self, reg: UartReg) -> u8 {
            self.u.read(reg, self.now)
        }
        fn wr(&mut self, reg: UartReg, v: u8) {
            self.u.write(reg, v, self.now, &mut self.c)
        }
        fn at(&mut self, t: GuestTime) {
            self.now = t;
            self.u.poll(t);
        }
        fn console(&self) -> Vec<u8> {
            let mut out = vec![0; 8192];
            let r = self.c.read(0, &mut out);
            out.truncate(r.copied);
            out
        }
        /// Linux `set_termios` for 115200 8N1 on a 16550A: divisor 1, FCR 0x81 (trigger 8).
        fn linux_termios(&mut self) {
            self.wr(UartReg::Lcr, LCR_DLAB | 0x03);
            self.wr(UartReg::Data, 1);
            self.wr(UartReg::Ier, 0);
            self.wr(UartReg::Lcr, 0x03);
            self.wr(UartReg::IirFcr, 0x81);
        }
    }

    #[test]
    fn reset_state_matches_table_iii() {
        let mut b = Bench::new();
        assert_eq!(b.rd(UartReg::Ier), 0);
        assert_eq!(b.rd(UartReg::IirFcr), 0x01);
        assert_eq!(b.rd(UartReg::Lcr), 0);
        assert_eq!(b.rd(UartReg::Mcr), 0);
        assert_eq!(b.rd(UartReg::Lsr), 0x60);
        assert_eq!(b.rd(UartReg::Msr), MSR_CONNECTED);
        assert!(!b.u.irq_level());
        assert_eq!(b.u.next_deadline(), None);
        // Dirty everything, then reset.
        b.wr(UartReg::Lcr, 0x83);
        b.wr(UartReg::Scr, 1);
        b.wr(UartReg::IirFcr, 0xC7);
        b.u.push_input(b"abc");
        b.now = GuestTime(5);
        b.wr(UartReg::Mcr, MCR_LOOP);
        b.u.reset();
        assert_eq!(b.u, Uart16550::RESET);
        assert_eq!(b.u.input_queued(), 0);
        assert_eq!(UartReg::from_offset(7), Some(UartReg::Scr));
        assert_eq!(UartReg::from_offset(8), None);
    }

    #[test]
    fn thr_goes_to_console_and_lsr_is_always_ready() {
        let mut b = Bench::new();
        for &c in b"hi\n" {
            assert_eq!(b.rd(UartReg::Lsr) & LSR_THRE, LSR_THRE);
            b.wr(UartReg::Data, c);
        }
        assert_eq!(b.console(), b"hi\n");
        assert_eq!(b.rd(UartReg::Lsr), LSR_THRE | LSR_TEMT);
        assert_eq!(b.rd(UartReg::Data), 0);
    }

    #[test]
    fn dlab_switches_data_and_ier_to_the_divisor() {
        let mut b = Bench::new();
        b.wr(UartReg::Ier, 0x05);
        b.wr(UartReg::Lcr, LCR_DLAB | 0x03);
        b.wr(UartReg::Data, 0x01); // DLL: 115200 baud
        b.wr(UartReg::Ier, 0x00); // DLM
        assert_eq!(b.rd(UartReg::Data), 0x01);
        assert_eq!(b.rd(UartReg::Ier), 0x00);
        assert_eq!(b.u.divisor(), 1);
        b.wr(UartReg::Lcr, 0x03);
        assert_eq!(b.rd(UartReg::Ier), 0x05);
        assert_eq!(b.rd(UartReg::Lcr), 0x03);
        assert_eq!(b.c.total_written(), 0);
        // IIR/FCR is not behind DLAB: FCR is written even with DLAB set.
        b.wr(UartReg::Lcr, 0xBF);
        b.wr(UartReg::IirFcr, FCR_FIFO_ENABLE);
        assert_eq!(b.rd(UartReg::IirFcr) & 0xC0, 0xC0);
    }

    #[test]
    fn char_time_follows_divisor_and_framing() {
        let mut b = Bench::new();
        b.linux_termios(); // 115200 8N1: 10 bits = 86.8 us
        assert_eq!(b.u.char_time_ns(), 86_806);
        b.wr(UartReg::Lcr, 0x80 | 0x07 | 0x08); // 8 data, parity, 2 stop: 12 bits
        b.wr(UartReg::Data, 12); // 9600 baud
        b.wr(UartReg::Lcr, 0x0F);
        assert_eq!(b.u.char_time_ns(), 1_250_000);
        b.wr(UartReg::Lcr, 0x04); // 5 data, 1.5 stop: 7.5 bits at 9600
        assert_eq!(b.u.char_time_ns(), 781_250);
        assert_eq!(b.u.timeout_ns(), 3_125_000);
    }

    #[test]
    fn registers_read_back() {
        let mut b = Bench::new();
        b.wr(UartReg::Scr, 0xA5);
        b.wr(UartReg::Mcr, 0xFF);
        b.wr(UartReg::Ier, 0xFF);
        assert_eq!(b.rd(UartReg::Scr), 0xA5);
        assert_eq!(b.rd(UartReg::Mcr), 0x1F);
        assert_eq!(b.rd(UartReg::Ier), 0x0F);
        b.wr(UartReg::Lsr, 0);
        assert_eq!(b.rd(UartReg::Lsr), 0x60);
    }

    /// Linux `autoconfig()`: scratch via IER, loopback MSR test, FIFO detection (IIR 7:6 = 11
    /// means 16550A), then the variant probes of `autoconfig_16550a` must all say "plain".
    #[test]
    fn linux_autoconfig_finds_a_16550a() {
        let mut b = Bench::new();
        // IER test.
        let scratch = b.rd(UartReg::Ier);
        b.wr(UartReg::Ier, 0);
        let scratch2 = b.rd(UartReg::Ier) & 0x0F;
        b.wr(UartReg::Ier, 0x0F);
        let scratch3 = b.rd(UartReg::Ier) & 0x0F;
        b.wr(UartReg::Ier, scratch);
        assert_eq!((scratch2, scratch3), (0, 0x0F));
        // Scratch register (8250 vs 16450 test).
        b.wr(UartReg::Scr, 0xA5);
        assert_eq!(b.rd(UartReg::Scr), 0xA5);
        b.wr(UartReg::Scr, 0x5A);
        assert_eq!(b.rd(UartReg::Scr), 0x5A);
        // Loopback test.
        let save_mcr = b.rd(UartReg::Mcr);
        let save_lcr = b.rd(UartReg::Lcr);
        b.wr(UartReg::Mcr, MCR_LOOP | 0x0A);
        let status1 = b.rd(UartReg::Msr) & 0xF0;
        b.wr(UartReg::Mcr, save_mcr);
        assert_eq!(status1, 0x90);
        // FIFO detection: EFR write under LCR 0xBF lands in FCR on a 16550A.
        b.wr(UartReg::Lcr, 0xBF);
        b.wr(UartReg::IirFcr, 0);
        b.wr(UartReg::Lcr, 0);
        b.wr(UartReg::IirFcr, FCR_FIFO_ENABLE);
        assert_eq!(b.rd(UartReg::IirFcr) >> 6, 3);
        // Not an ST16C650 (EFR under DLAB reads as IIR, non-zero).
        b.wr(UartReg::Lcr, 0x80);
        assert_ne!(b.rd(UartReg::IirFcr), 0);
        b.wr(UartReg::Lcr, 0xBF);
        assert_ne!(b.rd(UartReg::IirFcr), 0);
        // Not a National SuperIO: IIR bit 4 does not follow MCR loopback.
        b.wr(UartReg::Lcr, 0);
        let s1 = b.rd(UartReg::Mcr);
        b.wr(UartReg::Lcr, 0xE0);
        let s2 = b.rd(UartReg::IirFcr);
        assert_eq!((s1 ^ s2) & MCR_LOOP, 0);
        b.wr(UartReg::Lcr, 0);
        b.wr(UartReg::Mcr, s1 ^ MCR_LOOP);
        b.wr(UartReg::Lcr, 0xE0);
        let s2 = b.rd(UartReg::IirFcr);
        b.wr(UartReg::Lcr, 0);
        b.wr(UartReg::Mcr, s1);
        assert_eq!((s1 ^ s2) & MCR_LOOP, 0);
        // Not an XScale: IER bit 6 (UUE) does not stick.
        let iersave = b.rd(UartReg::Ier);
        b.wr(UartReg::Ier, iersave | 0x40);
        assert_eq!(b.rd(UartReg::Ier) & 0x40, 0);
        b.wr(UartReg::Ier, iersave);
        // Not a 16750: IIR bit 5 does not follow FCR bit 5 (64-byte FIFO).
        b.wr(UartReg::IirFcr, FCR_FIFO_ENABLE | 0x20);
        let st1 = b.rd(UartReg::IirFcr) >> 5;
        b.wr(UartReg::IirFcr, FCR_FIFO_ENABLE);
        b.wr(UartReg::Lcr, 0x80);
        b.wr(UartReg::IirFcr, FCR_FIFO_ENABLE | 0x20);
        let st2 = b.rd(UartReg::IirFcr) >> 5;
        b.wr(UartReg::IirFcr, FCR_FIFO_ENABLE);
        b.wr(UartReg::Lcr, save_lcr);
        assert_eq!((st1, st2), (6, 6));
        // Nothing reached the console during the probe.
        assert_eq!(b.c.total_written(), 0);
    }

    /// `serial8250_do_startup`: clear FIFOs, the THRE re-assertion test (UART_BUG_THRE), MCR
    /// with OUT2, then the quick TX test (UART_BUG_TXEN). A correct 16550A trips neither.
    #[test]
    fn linux_startup_detects_no_thre_bugs() {
        let mut b = Bench::new();
        // serial8250_clear_fifos.
        b.wr(UartReg::IirFcr, FCR_FIFO_ENABLE);
        b.wr(
            UartReg::IirFcr,
            FCR_FIFO_ENABLE | FCR_RX_RESET | FCR_TX_RESET,
        );
        b.wr(UartReg::IirFcr, 0);
        for r in [UartReg::Lsr, UartReg::Data, UartReg::IirFcr, UartReg::Msr] {
            b.rd(r);
        }
        assert_ne!(b.rd(UartReg::Lsr), 0xFF);
        b.wr(UartReg::Lcr, 0x03);
        // THRE test (univ8250_setup_irq path).
        assert_ne!(b.rd(UartReg::Lsr) & LSR_THRE, 0);
        b.wr(UartReg::Ier, IER_ETBEI);
        let iir1 = b.rd(UartReg::IirFcr);
        b.wr(UartReg::Ier, 0);
        b.wr(UartReg::Ier, IER_ETBEI);
        let iir = b.rd(UartReg::IirFcr);
        b.wr(UartReg::Ier, 0);
        assert_eq!(iir1, IIR_THRE);
        assert_eq!(iir, IIR_THRE, "THRE must be re-asserted on enabling ETBEI");
        let bug_thre = iir1 & 1 == 0 && iir & 1 != 0;
        assert!(!bug_thre);
        // serial8250_set_mctrl: DTR | RTS | OUT2.
        b.wr(UartReg::Mcr, MCR_DTR | MCR_RTS | MCR_OUT2);
        // Quick TX test.
        b.wr(UartReg::Ier, IER_ETBEI);
        let lsr = b.rd(UartReg::Lsr);
        assert!(b.u.irq_level(), "THRE raises IRQ 4 with OUT2 set");
        let iir = b.rd(UartReg::IirFcr);
        assert!(!b.u.irq_level(), "the IIR read cleared THRE");
        b.wr(UartReg::Ier, 0);
        let bug_txen = lsr & LSR_TEMT != 0 && iir & IIR_NO_INTERRUPT != 0;
        assert!(!bug_txen, "lsr {lsr:#x} iir {iir:#x}");
        for r in [UartReg::Lsr, UartReg::Data, UartReg::IirFcr, UartReg::Msr] {
            b.rd(r);
        }
        // set_termios, then IER = RLSI | RDI | MSI: nothing pending on an idle line.
        b.linux_termios();
        b.wr(UartReg::Ier, IER_ELSI | IER_ERBFI | IER_EDSSI);
        assert_eq!(b.rd(UartReg::IirFcr), 0xC1);
        assert!(!b.u.irq_level());
    }

    #[test]
    fn thre_interrupt_semantics() {
        let mut b = Bench::new();
        b.wr(UartReg::Mcr, MCR_OUT2);
        // Pending only when enabled.
        assert_eq!(b.rd(UartReg::IirFcr), 0x01);
        b.wr(UartReg::Ier, IER_ETBEI);
        assert!(b.u.irq_level());
        // Rewriting IER with ETBEI still set does not re-raise after a clear.
        assert_eq!(b.rd(UartReg::IirFcr), IIR_THRE);
        b.wr(UartReg::Ier, IER_ETBEI);
        assert_eq!(b.rd(UartReg::IirFcr), 0x01);
        // A THR write re-raises it once the (instant) transmitter empties.
        b.wr(UartReg::Data, b'a');
        assert!(b.u.irq_level());
        // Clearing ETBEI clears the condition; re-enabling raises it again.
        b.wr(UartReg::Ier, 0);
        assert!(!b.u.irq_level());
        b.wr(UartReg::Ier, IER_ETBEI);
        assert_eq!(b.rd(UartReg::IirFcr), IIR_THRE);
        // Reading LSR does not clear THRE (only IIR reads and THR writes do).
        b.wr(UartReg::Data, b'b');
        b.rd(UartReg::Lsr);
        assert!(b.u.irq_level());
        assert_eq!(b.console(), b"ab");
    }

    /// Interrupt-driven TX as `serial8250_tx_chars`: on each THRE interrupt, read IIR and
    /// LSR, write up to 16 bytes (tx_loadsz), stop TX (clear ETBEI) when the buffer is empty.
    #[test]
    fn linux_interrupt_driven_tx_of_a_long_string() {
        let mut b = Bench::new();
        b.linux_termios();
        b.wr(UartReg::Mcr, MCR_DTR | MCR_RTS | MCR_OUT2);
        b.wr(UartReg::Ier, IER_ELSI | IER_ERBFI);
        let text: Vec<u8> = (0..1000u32).map(|i| b'!' + (i % 90) as u8).collect();
        let mut sent = 0;
        let mut interrupts = 0;
        // start_tx: set ETBEI.
        b.wr(UartReg::Ier, IER_ELSI | IER_ERBFI | IER_ETBEI);
        while b.u.irq_level() {
            interrupts += 1;
            assert!(interrupts <= 1000, "interrupt storm");
            let iir = b.rd(UartReg::IirFcr);
            assert_eq!(iir, 0xC0 | IIR_THRE);
            let lsr = b.rd(UartReg::Lsr);
            assert_ne!(lsr & LSR_THRE, 0);
            for _ in 0..TX_FIFO_DEPTH {
                if sent == text.len() {
                    break;
                }
                b.wr(UartReg::Data, text[sent]);
                sent += 1;
            }
            if sent == text.len() {
                b.wr(UartReg::Ier, IER_ELSI | IER_ERBFI);
            }
            b.now = b.now.plus_nanos(10_000);
        }
        assert_eq!(interrupts, 1000usize.div_ceil(16));
        assert_eq!(b.console(), text);
        assert_eq!(b.rd(UartReg::IirFcr), 0xC1);
    }

    #[test]
    fn rx_data_available_at_the_trigger_level() {
        let mut b = Bench::new();
        b.linux_termios(); // trigger 8
        b.wr(UartReg::Mcr, MCR_OUT2);
        b.wr(UartReg::Ier, IER_ERBFI | IER_ELSI);
        assert_eq!(b.u.push_input(b"0123456789"), 10);
        // Delivered at the next access or poll, due at once.
        assert_eq!(b.u.next_deadline(), Some(b.now));
        b.at(b.now);
        assert_eq!(b.u.rx_fifo_len(), 10);
        assert!(b.u.irq_level());
        assert_eq!(b.rd(UartReg::IirFcr), 0xC0 | IIR_RDA);
        // Reading IIR does not clear RDA; draining below the trigger does.
        assert_eq!(b.rd(UartReg::IirFcr), 0xC0 | IIR_RDA);
        assert_eq!(b.rd(UartReg::Data), b'0');
        assert_eq!(b.rd(UartReg::Data), b'1');
        assert!(b.u.irq_level(), "8 bytes left: still at the trigger");
        assert_eq!(b.rd(UartReg::Data), b'2');
        assert!(
            !b.u.irq_level(),
            "7 bytes: below the trigger, no timeout yet"
        );
        let mut got = Vec::new();
        while b.rd(UartReg::Lsr) & LSR_DR != 0 {
            got.push(b.rd(UartReg::Data));
        }
        assert_eq!(got, b"3456789");
        assert_eq!(b.rd(UartReg::IirFcr), 0xC1);
    }

    #[test]
    fn rx_trigger_levels() {
        for (fcr, level) in [(0x01, 1), (0x41, 4), (0x81, 8), (0xC1, 14)] {
            let mut b = Bench::new();
            b.wr(UartReg::IirFcr, fcr);
            b.wr(UartReg::Ier, IER_ERBFI);
            assert_eq!(b.u.trigger_level(), level);
            b.u.push_input(&vec![b'x'; level - 1]);
            b.at(T0);
            assert_eq!(b.rd(UartReg::IirFcr) & 0x0F, 0x01, "fcr {fcr:#x}");
            b.u.push_input(b"y");
            b.at(T0);
            assert_eq!(b.rd(UartReg::IirFcr) & 0x0F, IIR_RDA, "fcr {fcr:#x}");
        }
    }

    #[test]
    fn character_timeout_after_four_char_times() {
        let mut b = Bench::new();
        b.linux_termios();
        b.wr(UartReg::Mcr, MCR_OUT2);
        b.wr(UartReg::Ier, IER_ERBFI);
        b.now = GuestTime(1_000_000);
        b.u.push_input(b"ls\r");
        b.at(b.now);
        assert_eq!(b.u.rx_fifo_len(), 3);
        assert!(!b.u.irq_level());
        let deadline = b.u.next_deadline().expect("a timeout is due");
        assert_eq!(deadline, GuestTime(1_000_000 + 4 * 86_806));
        b.at(GuestTime(deadline.0 - 1));
        assert!(!b.u.irq_level());
        b.at(deadline);
        assert!(b.u.irq_level());
        assert_eq!(b.u.next_deadline(), None);
        assert_eq!(b.rd(UartReg::IirFcr), 0xC0 | IIR_CTI);
        // One RBR read clears the timeout and restarts the timer.
        assert_eq!(b.rd(UartReg::Data), b'l');
        assert!(!b.u.irq_level());
        assert_eq!(
            b.u.next_deadline(),
            Some(deadline.plus_nanos(b.u.timeout_ns()))
        );
        assert_eq!(b.rd(UartReg::Data), b's');
        assert_eq!(b.rd(UartReg::Data), b'\r');
        assert_eq!(b.u.next_deadline(), None);
        b.at(deadline.plus_nanos(10 * NANOS_PER_SEC));
        assert!(!b.u.irq_level(), "no timeout with an empty FIFO");
    }

    #[test]
    fn no_character_timeout_with_fifos_off() {
        let mut b = Bench::new();
        b.wr(UartReg::Ier, IER_ERBFI);
        b.wr(UartReg::Mcr, MCR_OUT2);
        b.u.push_input(b"ab");
        b.at(T0);
        // 16450 mode: one holding byte, RDA at once.
        assert_eq!(b.u.rx_fifo_len(), 1);
        assert_eq!(b.rd(UartReg::IirFcr), IIR_RDA);
        assert_eq!(b.rd(UartReg::Data), b'a');
        assert_eq!(b.rd(UartReg::IirFcr), IIR_RDA);
        assert_eq!(b.rd(UartReg::Data), b'b');
        assert_eq!(b.rd(UartReg::IirFcr), 0x01);
        assert_eq!(b.u.next_deadline(), None);
    }

    #[test]
    fn host_queue_backpressures_and_never_overruns() {
        let mut b = Bench::new();
        b.linux_termios();
        let big = vec![b'z'; INPUT_CAPACITY + 100];
        assert_eq!(b.u.push_input(&big), INPUT_CAPACITY);
        assert_eq!(b.u.push_input(b"more"), 0);
        assert_eq!(b.u.input_free(), 0);
        b.at(T0);
        assert_eq!(b.u.rx_fifo_len(), RX_FIFO_DEPTH);
        assert_eq!(b.u.input_queued(), INPUT_CAPACITY - RX_FIFO_DEPTH);
        assert_eq!(b.u.push_input(b"0123456789abcdefg"), 16);
        let mut n = 0;
        while b.rd(UartReg::Lsr) & LSR_DR != 0 {
            b.rd(UartReg::Data);
            n += 1;
        }
        assert_eq!(n, INPUT_CAPACITY + 16);
        assert_eq!(b.rd(UartReg::Lsr) & LSR_OE, 0);
    }

    #[test]
    fn fcr_clears_the_receive_fifo() {
        let mut b = Bench::new();
        b.wr(UartReg::IirFcr, 0xC1);
        b.u.push_input(b"abc");
        b.at(T0);
        assert_eq!(b.u.rx_fifo_len(), 3);
        b.wr(UartReg::Mcr, MCR_LOOP); // hold the line so nothing refills
        b.u.push_input(b"d");
        b.wr(UartReg::IirFcr, 0xC3);
        assert_eq!(b.u.rx_fifo_len(), 0);
        assert_eq!(b.rd(UartReg::Lsr) & LSR_DR, 0);
        // Trigger bits are kept only when written with FCR0 = 1.
        b.wr(UartReg::IirFcr, 0x40);
        assert_eq!(b.u.trigger_level(), 1, "FIFOs off");
        b.wr(UartReg::IirFcr, 0x41);
        assert_eq!(b.u.trigger_level(), 4);
        // Leaving loopback lets the line deliver the queued byte.
        b.wr(UartReg::Mcr, 0);
        assert_eq!(b.rd(UartReg::Data), b'd');
    }

    #[test]
    fn loopback_echo_and_overrun() {
        let mut b = Bench::new();
        b.wr(UartReg::IirFcr, 0xC1);
        b.wr(UartReg::Ier, IER_ERBFI | IER_ELSI);
        b.wr(UartReg::Mcr, MCR_LOOP | MCR_OUT2);
        // Host input waits while the line is looped.
        b.u.push_input(b"H");
        for i in 0..RX_FIFO_DEPTH as u8 {
            b.wr(UartReg::Data, i);
        }
        assert_eq!(b.c.total_written(), 0, "loopback disconnects the output");
        assert_eq!(b.rd(UartReg::IirFcr), 0xC0 | IIR_RDA);
        assert!(
            !b.u.irq_level(),
            "loopback forces OUT2 inactive: no IRQ on a PC"
        );
        b.wr(UartReg::Data, 0xEE);
        assert_eq!(b.rd(UartReg::IirFcr), 0xC0 | IIR_RLS);
        assert_eq!(b.rd(UartReg::Lsr), LSR_DR | LSR_OE | LSR_THRE | LSR_TEMT);
        assert_eq!(b.rd(UartReg::Lsr) & LSR_OE, 0, "LSR read cleared OE");
        for i in 0..RX_FIFO_DEPTH as u8 {
            assert_eq!(b.rd(UartReg::Data), i, "FIFO kept, overrun byte lost");
        }
        assert_eq!(b.rd(UartReg::Lsr) & LSR_DR, 0);
        b.wr(UartReg::Mcr, MCR_OUT2);
        assert_eq!(b.rd(UartReg::Data), b'H');
    }

    #[test]
    fn loopback_overrun_without_fifos_overwrites_rbr() {
        let mut b = Bench::new();
        b.wr(UartReg::Mcr, MCR_LOOP);
        b.wr(UartReg::Data, 1);
        b.wr(UartReg::Data, 2);
        assert_eq!(b.rd(UartReg::Lsr), LSR_DR | LSR_OE | LSR_THRE | LSR_TEMT);
        assert_eq!(b.rd(UartReg::Data), 2);
    }

    #[test]
    fn modem_status_deltas_and_interrupt() {
        let mut b = Bench::new();
        b.wr(UartReg::Ier, IER_EDSSI);
        assert_eq!(b.rd(UartReg::IirFcr), 0x01);
        // Entering loopback with all outputs off drops DCD, DSR and CTS.
        b.wr(UartReg::Mcr, MCR_LOOP);
        assert_eq!(b.rd(UartReg::IirFcr), IIR_MSR);
        assert_eq!(b.rd(UartReg::Msr), MSR_DDCD | MSR_DDSR | MSR_DCTS);
        assert_eq!(b.rd(UartReg::Msr), 0);
        assert_eq!(b.rd(UartReg::IirFcr), 0x01);
        // OUT1 -> RI: only its trailing edge counts.
        b.wr(UartReg::Mcr, MCR_LOOP | MCR_OUT1);
        assert_eq!(b.rd(UartReg::Msr), MSR_RI);
        b.wr(UartReg::Mcr, MCR_LOOP);
        assert_eq!(b.rd(UartReg::Msr), MSR_TERI);
        b.wr(UartReg::Mcr, MCR_LOOP | 0x0F);
        assert_eq!(b.rd(UartReg::Msr), 0xF0 | MSR_DDCD | MSR_DDSR | MSR_DCTS);
    }

    #[test]
    fn interrupt_priorities() {
        let mut b = Bench::new();
        b.wr(UartReg::IirFcr, 0x01);
        b.wr(UartReg::Ier, 0x0F);
        b.wr(UartReg::Mcr, MCR_LOOP); // MSR delta pending
        // THRE (from enabling ETBEI) outranks MSR.
        assert_eq!(b.rd(UartReg::IirFcr) & 0x0F, IIR_THRE);
        assert_eq!(b.rd(UartReg::IirFcr) & 0x0F, IIR_MSR);
        // RDA outranks THRE.
        b.wr(UartReg::Data, b'x');
        assert_eq!(b.rd(UartReg::IirFcr) & 0x0F, IIR_RDA);
        // RLS outranks RDA.
        for _ in 0..RX_FIFO_DEPTH {
            b.wr(UartReg::Data, b'x');
        }
        assert_eq!(b.rd(UartReg::IirFcr) & 0x0F, IIR_RLS);
        b.rd(UartReg::Lsr);
        assert_eq!(b.rd(UartReg::IirFcr) & 0x0F, IIR_RDA);
        // Drain; the pending THRE from the last THR write shows, then MSR.
        while b.rd(UartReg::Lsr) & LSR_DR != 0 {
            b.rd(UartReg::Data);
        }
        assert_eq!(b.rd(UartReg::IirFcr) & 0x0F, IIR_THRE);
        assert_eq!(b.rd(UartReg::IirFcr) & 0x0F, IIR_MSR);
        b.rd(UartReg::Msr);
        assert_eq!(b.rd(UartReg::IirFcr), 0xC1);
    }

    #[test]
    fn cti_ranks_below_rda_above_thre() {
        let mut b = Bench::new();
        b.linux_termios();
        b.wr(UartReg::Ier, IER_ERBFI | IER_ETBEI);
        b.rd(UartReg::IirFcr); // clear THRE
        b.wr(UartReg::Data, b'.'); // THRE pending again
        b.u.push_input(b"k");
        b.at(T0);
        assert_eq!(b.rd(UartReg::IirFcr), 0xC0 | IIR_THRE);
        b.wr(UartReg::Data, b'.');
        b.at(GuestTime(b.u.timeout_ns()));
        assert_eq!(b.rd(UartReg::IirFcr), 0xC0 | IIR_CTI);
        assert_eq!(
            b.rd(UartReg::IirFcr),
            0xC0 | IIR_CTI,
            "CTI is not cleared by IIR"
        );
        b.rd(UartReg::Data);
        assert_eq!(b.rd(UartReg::IirFcr), 0xC0 | IIR_THRE);
    }

    #[test]
    fn irq_level_is_gated_by_out2() {
        let mut b = Bench::new();
        b.wr(UartReg::Ier, IER_ERBFI);
        b.u.push_input(b"q");
        b.at(T0);
        assert!(b.u.interrupt_pending());
        assert!(!b.u.irq_level(), "OUT2 clear");
        b.wr(UartReg::Mcr, MCR_DTR | MCR_RTS);
        assert!(!b.u.irq_level(), "DTR/RTS do not gate the line");
        b.wr(UartReg::Mcr, MCR_OUT2);
        assert!(b.u.irq_level());
        b.wr(UartReg::Mcr, MCR_OUT2 | MCR_LOOP);
        assert!(!b.u.irq_level(), "loopback forces OUT2 inactive");
        b.wr(UartReg::Mcr, MCR_OUT2);
        assert!(b.u.irq_level());
        assert_eq!(b.rd(UartReg::Data), b'q');
        assert!(!b.u.irq_level());
    }

    /// The Linux RX path end to end: startup, termios, IER = RLSI | RDI, host input of a
    /// long line through RDA interrupts (receive_chars reads while LSR.DR), the tail through
    /// the character timeout.
    #[test]
    fn linux_rx_through_rda_and_cti() {
        let mut b = Bench::new();
        b.wr(UartReg::Mcr, MCR_DTR | MCR_RTS | MCR_OUT2);
        b.linux_termios();
        b.wr(UartReg::Ier, IER_ELSI | IER_ERBFI);
        let line: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
        assert_eq!(b.u.push_input(&line), 100);
        let mut got = Vec::new();
        let (mut rda, mut cti) = (0, 0);
        for _ in 0..100 {
            match b.u.next_deadline() {
                Some(t) => b.at(t),
                None => break,
            }
            while b.u.irq_level() {
                match b.rd(UartReg::IirFcr) & 0x0F {
                    IIR_RDA => rda += 1,
                    IIR_CTI => cti += 1,
                    other => panic!("unexpected source {other:#x}"),
                }
                // serial8250_rx_chars: at most 256 bytes per interrupt.
                for _ in 0..256 {
                    if b.rd(UartReg::Lsr) & LSR_DR == 0 {
                        break;
                    }
                    got.push(b.rd(UartReg::Data));
                }
                b.now = b.now.plus_nanos(1000);
            }
        }
        assert_eq!(got, line);
        // The line refills the FIFO as it is read, so one RDA takes it all.
        assert_eq!((rda, cti), (1, 0));
        // A keystroke below the trigger level comes in by the timeout.
        b.u.push_input(b"x");
        b.at(b.now);
        assert!(!b.u.irq_level());
        let t = b.u.next_deadline().unwrap();
        b.at(t);
        assert_eq!(b.rd(UartReg::IirFcr), 0xC0 | IIR_CTI);
        assert_eq!(b.rd(UartReg::Data), b'x');
        assert!(!b.u.irq_level());
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut b = Bench::new();
        b.linux_termios();
        b.wr(UartReg::Ier, IER_ERBFI);
        b.at(GuestTime(10_000_000));
        b.u.push_input(b"a");
        b.at(GuestTime(5)); // a stale time is taken as the latest seen
        assert_eq!(
            b.u.next_deadline(),
            Some(GuestTime(10_000_000).plus_nanos(b.u.timeout_ns()))
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(Vec<u8>),
        Read(u8),
        Write(u8, u8),
        Wait(u64),
        PollDeadline,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Push),
            (0u8..8).prop_map(Op::Read),
            (0u8..8).prop_map(Op::Read),
            (0u8..8, any::<u8>()).prop_map(|(r, v)| Op::Write(r, v)),
            (0u64..2_000_000).prop_map(Op::Wait),
            Just(Op::PollDeadline),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Random register traffic from a guest and input from the host. Invariants: the IRQ
        /// line is exactly "pending, OUT2, not loopback"; IIR bits 7:6 say whether the FIFOs
        /// are on and bits 5:4 are 0; a deadline is never before the latest time seen; the
        /// FIFO never holds more than 16 bytes. In a "clean" run (no loopback, FIFOs kept on,
        /// no FIFO reset: nothing the guest does throws input away) every accepted input byte
        /// is read out exactly once, in order.
        #[test]
        fn random_traffic_keeps_the_invariants(
            ops in proptest::collection::vec(op(), 1..120),
            clean in proptest::prelude::any::<bool>(),
        ) {
            let mut b = Bench::new();
            let mut accepted: Vec<u8> = Vec::new();
            let mut read: Vec<u8> = Vec::new();
            if clean {
                b.wr(UartReg::IirFcr, FCR_FIFO_ENABLE);
            }
            for op in ops {
                match op {
                    Op::Push(bytes) => {
                        let n = b.u.push_input(&bytes);
                        proptest::prop_assert!(n <= bytes.len());
                        accepted.extend_from_slice(&bytes[..n]);
                    }
                    Op::Read(r) => {
                        let reg = UartReg::from_offset(r.into()).unwrap();
                        let dr = b.u.rx_fifo_len() > 0 || b.u.input_queued() > 0;
                        let dlab = b.u.lcr & LCR_DLAB != 0;
                        let v = b.rd(reg);
                        if reg == UartReg::Data && !dlab && dr {
                            read.push(v);
                        }
                        if reg == UartReg::IirFcr {
                            proptest::prop_assert_eq!(v & 0xC0 == 0xC0, b.u.fifo_enabled);
                            proptest::prop_assert_eq!(v & 0x30, 0);
                        }
                    }
                    Op::Write(r, v) => {
                        let reg = UartReg::from_offset(r.into()).unwrap();
                        let v = match reg {
                            UartReg::Mcr if clean => v & !MCR_LOOP,
                            UartReg::IirFcr if clean => (v | FCR_FIFO_ENABLE) & !FCR_RX_RESET,
                            _ => v,
                        };
                        b.wr(reg, v);
                    }
                    Op::Wait(ns) => {
                        let t = b.now.plus_nanos(ns);
                        b.at(t);
                    }
                    Op::PollDeadline => {
                        if let Some(t) = b.u.next_deadline() {
                            b.at(t);
                        }
                    }
                }
                proptest::prop_assert_eq!(
                    b.u.irq_level(),
                    b.u.interrupt_pending() && b.u.mcr & MCR_OUT2 != 0 && !b.u.loopback()
                );
                if let Some(t) = b.u.next_deadline() {
                    proptest::prop_assert!(t >= b.u.now);
                }
                proptest::prop_assert!(b.u.rx_fifo_len() <= RX_FIFO_DEPTH);
            }
            if clean {
                b.wr(UartReg::Lcr, 0);
                while b.rd(UartReg::Lsr) & LSR_DR != 0 {
                    read.push(b.rd(UartReg::Data));
                }
                proptest::prop_assert_eq!(read, accepted);
            }
        }
    }
}
