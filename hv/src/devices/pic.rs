//! The 8259A programmable interrupt controller pair of a PC (master at 0x20/0x21, slave at
//! 0xA0/0xA1 cascaded on the master's IR2) with the PIIX edge/level control registers (ELCR at
//! 0x4D0/0x4D1).
//!
//! Why: a stock Linux booted with `nolapic noapic` takes every device interrupt (the PIT's
//! IRQ 0, the UART's IRQ 4, the RTC's IRQ 8) through this pair, and even with a local APIC the
//! PIC feeds LINT0 as ExtINT (virtual wire). Linux's `probe_8259A` writes 0xFB to the master's
//! mask and reads it back, so an open bus (0xFF) makes it fall back to a "NULL legacy PIC".
//!
//! The model follows the Intel 8259A datasheet (order no. 231468): "Interrupt sequence",
//! "Initialization command words" (ICW1-ICW4), "Operation command words" (OCW1-OCW3), "Fully
//! nested mode", "Automatic rotation", "Specific rotation", "Special mask mode", "Poll command",
//! "Edge and level triggered modes" and "The cascade buffer/comparator"; and the Intel PIIX/PIIX3
//! datasheet for ELCR1/ELCR2 (IRQ 0, 1, 2, 8 and 13 are always edge triggered, so those ELCR
//! bits read as 0).
//!
//! | port  | read                                  | write                                     |
//! |-------|---------------------------------------|-------------------------------------------|
//! | 0x20  | master IRR, ISR (OCW3) or poll word   | ICW1 (bit 4), OCW3 (bit 3), else OCW2     |
//! | 0x21  | master IMR                            | ICW2-ICW4 during initialization, else OCW1 |
//! | 0xA0  | slave IRR, ISR or poll word           | as 0x20 for the slave                     |
//! | 0xA1  | slave IMR                             | as 0x21 for the slave                     |
//! | 0x4D0 | ELCR1 (IRQ 7-3; bits 2-0 read 0)      | level (1) / edge (0) for IRQ 3-7          |
//! | 0x4D1 | ELCR2 (bits 0 and 5 read 0)           | level / edge for IRQ 9-12, 14, 15         |
//!
//! Choices where the datasheet leaves room or an emulator must decide:
//! - **Reset state.** The datasheet leaves the state before ICW1 undefined; without a BIOS we
//!   reset to what a PC BIOS leaves behind (master vectors 0x08-0x0F, slave 0x70-0x77, cascade
//!   on IR2, 8086 mode, normal EOI) but with every line masked, so nothing reaches the vCPU
//!   before the guest programs the pair. ELCR is 0 (all edge).
//! - **Edges latch.** An edge-triggered input sets its IRR bit on a low-to-high transition and
//!   the bit stays set until the INTA sequence takes it, even if the line falls first (as KVM
//!   and QEMU do; devices report short pulses as [`LineEvent::Pulse`]). A level-triggered
//!   input's IRR bit follows the line and is not cleared by INTA, so the line is taken again
//!   after EOI while it stays asserted. A request that is gone (a level line fell, or the line
//!   was masked) by the time of INTA gets the spurious vector: IRQ 7 of the master (no ISR bit
//!   set) or IRQ 15 of the slave (the master's ISR bit 2 is set, so the guest EOIs the cascade).
//! - **The cascade input** (master IR2) is set whenever the slave's INT output is high and
//!   cleared by the master's INTA (an edge input, as on the board), but it is set again at once
//!   if the slave still requests afterwards: with a pure edge a slave request that stays asserted
//!   across an INTA, as in auto-EOI mode, would be lost. A slave request that vanishes after the
//!   master latched it gives the slave's spurious IRQ 15. ISA IRQ 2 as a device line does not
//!   exist on an AT (the pin is wired to IRQ 9), so [`PicPair::set_irq`] ignores line 2.
//! - **MCS-80/85 mode** (ICW4 bit 0 clear): the vector is delivered as in 8086 mode; the CALL
//!   opcode sequence of the 8080 makes no sense to an x86 vCPU.
//! - **Special fully nested mode** (ICW4 bit 4) lets a new slave request through while the
//!   master's IR2 is in service; buffered mode bits are stored nowhere (they only steer pins).
//! - The INTA sequence always answers with a vector (a real 8259A always drives one), so
//!   [`InterruptController::acknowledge`] never returns `None`.
//!
//! Nothing here allocates or blocks; a port access is a few byte operations.

use crate::irq::{InterruptController, IrqLine, LineEvent};

/// Master command port (ICW1, OCW2, OCW3; reads IRR/ISR/poll).
pub const MASTER_CMD: u16 = 0x20;
/// Master data port (ICW2-4, OCW1; reads IMR).
pub const MASTER_DATA: u16 = 0x21;
/// Slave command port.
pub const SLAVE_CMD: u16 = 0xA0;
/// Slave data port.
pub const SLAVE_DATA: u16 = 0xA1;
/// ELCR1: edge/level control of IRQ 0-7 (PIIX).
pub const ELCR_MASTER: u16 = 0x4D0;
/// ELCR2: edge/level control of IRQ 8-15 (PIIX).
pub const ELCR_SLAVE: u16 = 0x4D1;
/// ELCR1 bits that can be set: IRQ 0, 1 and 2 are always edge triggered.
pub const ELCR_MASTER_WRITABLE: u8 = 0xF8;
/// ELCR2 bits that can be set: IRQ 8 (RTC) and 13 (FPU error) are always edge triggered.
pub const ELCR_SLAVE_WRITABLE: u8 = 0xDE;
/// The master's input that the slave's INT output drives.
pub const CASCADE_IR: u8 = 2;
/// Master vector base after reset (what a PC BIOS programs).
pub const RESET_MASTER_BASE: u8 = 0x08;
/// Slave vector base after reset.
pub const RESET_SLAVE_BASE: u8 = 0x70;

/// ICW1 bit 4: this command-port write is ICW1.
pub const ICW1_INIT: u8 = 1 << 4;
/// ICW1 bit 3 (LTIM): all inputs level triggered.
pub const ICW1_LTIM: u8 = 1 << 3;
/// ICW1 bit 1 (SNGL): single 8259A, no ICW3.
pub const ICW1_SINGLE: u8 = 1 << 1;
/// ICW1 bit 0 (IC4): ICW4 follows.
pub const ICW1_IC4: u8 = 1 << 0;
/// ICW4 bit 0: 8086/8088 mode.
pub const ICW4_8086: u8 = 1 << 0;
/// ICW4 bit 1: automatic EOI.
pub const ICW4_AEOI: u8 = 1 << 1;
/// ICW4 bit 4: special fully nested mode.
pub const ICW4_SFNM: u8 = 1 << 4;
/// OCW3 bit 3: this command-port write (bit 4 clear) is OCW3, else OCW2.
pub const OCW3_SELECT: u8 = 1 << 3;
/// OCW3 value: read IRR on the next command-port read.
pub const OCW3_READ_IRR: u8 = 0x0A;
/// OCW3 value: read ISR on the next command-port read.
pub const OCW3_READ_ISR: u8 = 0x0B;
/// OCW3 value: poll command.
pub const OCW3_POLL: u8 = 0x0C;
/// OCW3 value: set special mask mode.
pub const OCW3_SET_SMM: u8 = 0x68;
/// OCW3 value: reset special mask mode.
pub const OCW3_RESET_SMM: u8 = 0x48;
/// OCW2: non-specific EOI.
pub const OCW2_EOI: u8 = 0x20;
/// OCW2: specific EOI (OR the level into bits 2-0).
pub const OCW2_SPECIFIC_EOI: u8 = 0x60;
/// OCW2: rotate on non-specific EOI.
pub const OCW2_ROTATE_EOI: u8 = 0xA0;
/// OCW2: rotate on specific EOI (OR the level).
pub const OCW2_ROTATE_SPECIFIC_EOI: u8 = 0xE0;
/// OCW2: set priority (OR the level that becomes the lowest).
pub const OCW2_SET_PRIORITY: u8 = 0xC0;
/// OCW2: set rotate in automatic EOI mode.
pub const OCW2_SET_ROTATE_AEOI: u8 = 0x80;
/// OCW2: clear rotate in automatic EOI mode.
pub const OCW2_CLEAR_ROTATE_AEOI: u8 = 0x00;

/// Where a chip is in its initialization sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum InitStep {
    /// Initialized: data-port writes are OCW1.
    Ready,
    /// ICW1 written; the next data write is ICW2.
    Icw2,
    /// The next data write is ICW3.
    Icw3,
    /// The next data write is ICW4.
    Icw4,
}

/// One 8259A.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Chip {
    /// Interrupt request register.
    irr: u8,
    /// In-service register.
    isr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// The input pins' levels.
    pins: u8,
    /// Edge (0) / level (1) per input, from the ELCR.
    elcr: u8,
    /// ICW1 LTIM: every input level triggered.
    ltim: bool,
    /// ICW1 SNGL.
    single: bool,
    /// ICW1 IC4.
    icw4_needed: bool,
    /// ICW2: vector of IR0 (bits 2-0 are the level).
    base: u8,
    /// ICW3: slave inputs (master) or slave ID (slave).
    icw3: u8,
    /// ICW4 uPM.
    mode_8086: bool,
    /// ICW4 AEOI.
    auto_eoi: bool,
    /// ICW4 SFNM.
    sfnm: bool,
    /// OCW2 rotate in automatic EOI mode.
    rotate_aeoi: bool,
    /// The input with the highest priority (0 after ICW1; the lowest is `top + 7`).
    top: u8,
    /// OCW3 special mask mode.
    special_mask: bool,
    /// OCW3 RR/RIS: command-port reads give ISR (else IRR).
    read_isr: bool,
    /// OCW3 P: the next command-port read is a poll.
    poll: bool,
    /// Initialization progress.
    step: InitStep,
}

impl Chip {
    /// A chip as a BIOS leaves it, with every input masked.
    const fn reset_state(base: u8, icw3: u8) -> Chip {
        Chip {
            irr: 0,
            isr: 0,
            imr: 0xFF,
            pins: 0,
            elcr: 0,
            ltim: false,
            single: false,
            icw4_needed: true,
            base,
            icw3,
            mode_8086: true,
            auto_eoi: false,
            sfnm: false,
            rotate_aeoi: false,
            top: 0,
            special_mask: false,
            read_isr: false,
            poll: false,
            step: InitStep::Ready,
        }
    }

    /// Inputs that are level triggered.
    fn level_mask(&self) -> u8 {
        if self.ltim { 0xFF } else { self.elcr }
    }

    /// Drive input `n` to `level` ("Edge and level triggered modes").
    fn set_pin(&mut self, n: u8, level: bool) {
        let bit = 1u8 << n;
        let rising = level && self.pins & bit == 0;
        if level {
            self.pins |= bit;
        } else {
            self.pins &= !bit;
        }
        if self.level_mask() & bit != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if rising {
            self.irr |= bit;
        }
    }

    /// Priority of input `n`: 0 is the highest.
    fn priority(&self, n: u8) -> u8 {
        n.wrapping_sub(self.top) & 7
    }

    /// The highest-priority input among `bits`.
    fn highest(&self, bits: u8) -> Option<u8> {
        (0..8u8)
            .map(|i| (self.top + i) & 7)
            .find(|&n| bits & (1 << n) != 0)
    }

    /// The input this chip would present on INT now: the highest unmasked request that has a
    /// higher priority than everything in service ("Fully nested mode"), where in special mask
    /// mode masked in-service levels do not inhibit, and in special fully nested mode (master)
    /// the cascade input in service does not inhibit the cascade.
    fn requested(&self, is_master: bool) -> Option<u8> {
        let n = self.highest(self.irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if is_master && self.sfnm {
            in_service &= !(1 << CASCADE_IR);
        }
        match self.highest(in_service) {
            Some(s) if self.priority(s) <= self.priority(n) => None,
            _ => Some(n),
        }
    }

    /// The INTA sequence on this chip: the input taken, or `None` when no request is left
    /// (the caller then supplies the spurious IR7 vector).
    fn inta(&mut self, is_master: bool) -> Option<u8> {
        let n = self.requested(is_master)?;
        let bit = 1u8 << n;
        if self.level_mask() & bit == 0 {
            self.irr &= !bit;
        }
        if self.auto_eoi {
            if self.rotate_aeoi {
                self.top = (n + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
        Some(n)
    }

    /// A command-port (A0 = 0) write.
    fn write_cmd(&mut self, v: u8) {
        if v & ICW1_INIT != 0 {
            self.icw1(v);
        } else if v & OCW3_SELECT != 0 {
            self.ocw3(v);
        } else {
            self.ocw2(v);
        }
    }

    /// ICW1: start initialization. Clears IMR and ISR, resets the edge sense (edge requests
    /// are dropped; a line must go low and high again), gives IR0 the highest priority,
    /// leaves special mask mode, selects IRR for reads and zeroes the ICW4 functions.
    fn icw1(&mut self, v: u8) {
        self.ltim = v & ICW1_LTIM != 0;
        self.single = v & ICW1_SINGLE != 0;
        self.icw4_needed = v & ICW1_IC4 != 0;
        self.imr = 0;
        self.isr = 0;
        self.irr = self.pins & self.level_mask();
        self.top = 0;
        self.special_mask = false;
        self.read_isr = false;
        self.poll = false;
        self.rotate_aeoi = false;
        self.auto_eoi = false;
        self.sfnm = false;
        self.mode_8086 = false;
        self.step = InitStep::Icw2;
    }

    /// A data-port (A0 = 1) write: the next ICW, or OCW1.
    fn write_data(&mut self, v: u8) {
        self.step = match self.step {
            InitStep::Icw2 => {
                self.base = v & 0xF8;
                if !self.single {
                    InitStep::Icw3
                } else if self.icw4_needed {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                }
            }
            InitStep::Icw3 => {
                self.icw3 = v;
                if self.icw4_needed {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                }
            }
            InitStep::Icw4 => {
                self.mode_8086 = v & ICW4_8086 != 0;
                self.auto_eoi = v & ICW4_AEOI != 0;
                self.sfnm = v & ICW4_SFNM != 0;
                InitStep::Ready
            }
            InitStep::Ready => {
                self.imr = v;
                InitStep::Ready
            }
        };
    }

    /// OCW2: EOI, rotation and priority commands (R, SL, EOI in bits 7-5, level in 2-0).
    fn ocw2(&mut self, v: u8) {
        let level = v & 7;
        match v >> 5 {
            0b000 => self.rotate_aeoi = false,
            0b100 => self.rotate_aeoi = true,
            0b001 | 0b101 => {
                if let Some(n) = self.highest(self.isr) {
                    self.isr &= !(1 << n);
                    if v & 0x80 != 0 {
                        self.top = (n + 1) & 7;
                    }
                }
            }
            0b011 | 0b111 => {
                self.isr &= !(1 << level);
                if v & 0x80 != 0 {
                    self.top = (level + 1) & 7;
                }
            }
            0b110 => self.top = (level + 1) & 7,
            // 0b010: no operation.
            _ => {}
        }
    }

    /// OCW3: special mask mode (ESMM/SMM), poll (P), register select (RR/RIS).
    fn ocw3(&mut self, v: u8) {
        if v & 0x40 != 0 {
            self.special_mask = v & 0x20 != 0;
        }
        if v & 0x04 != 0 {
            self.poll = true;
        }
        if v & 0x02 != 0 {
            self.read_isr = v & 0x01 != 0;
        }
    }
}

/// The PC's two cascaded 8259As with their ELCRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PicPair {
    master: Chip,
    slave: Chip,
}

impl Default for PicPair {
    fn default() -> Self {
        Self::RESET
    }
}

impl PicPair {
    /// The reset state (see the module docs).
    pub const RESET: PicPair = PicPair {
        master: Chip::reset_state(RESET_MASTER_BASE, 1 << CASCADE_IR),
        slave: Chip::reset_state(RESET_SLAVE_BASE, CASCADE_IR),
    };

    /// A pair in reset state.
    pub const fn new() -> PicPair {
        Self::RESET
    }

    /// Back to the reset state: registers, ELCR and input levels (the devices driving the
    /// lines are reset with it).
    pub fn reset(&mut self) {
        *self = Self::RESET;
    }

    /// Whether `port` belongs to the pair (0x20-0x21, 0xA0-0xA1, 0x4D0-0x4D1).
    pub const fn claims(port: u16) -> bool {
        matches!(
            port,
            MASTER_CMD | MASTER_DATA | SLAVE_CMD | SLAVE_DATA | ELCR_MASTER | ELCR_SLAVE
        )
    }

    /// IN from `port`: byte registers, so a wider access reads consecutive ports as the ISA
    /// bus splits it; bytes at ports that are not the pair's read as an open bus (0xFF).
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.read_byte(port.wrapping_add(i as u16));
        }
    }

    /// OUT to `port`, split into bytes like [`read`](Self::read); bytes for other ports are
    /// dropped.
    pub fn write(&mut self, port: u16, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            self.write_byte(port.wrapping_add(i as u16), byte);
        }
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        match port {
            MASTER_CMD => self.read_cmd(true),
            MASTER_DATA => self.master.imr,
            SLAVE_CMD => self.read_cmd(false),
            SLAVE_DATA => self.slave.imr,
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => 0xFF,
        }
    }

    fn write_byte(&mut self, port: u16, v: u8) {
        match port {
            MASTER_CMD => self.master.write_cmd(v),
            MASTER_DATA => self.master.write_data(v),
            SLAVE_CMD => self.slave.write_cmd(v),
            SLAVE_DATA => self.slave.write_data(v),
            ELCR_MASTER => Self::write_elcr(&mut self.master, v & ELCR_MASTER_WRITABLE),
            ELCR_SLAVE => Self::write_elcr(&mut self.slave, v & ELCR_SLAVE_WRITABLE),
            _ => return,
        }
        self.sync_cascade();
    }

    fn write_elcr(chip: &mut Chip, v: u8) {
        chip.elcr = v;
        let level = chip.level_mask();
        chip.irr = (chip.irr & !level) | (chip.pins & level);
    }

    /// A command-port read: the poll word after a poll command (which acts as an INTA
    /// sequence: bit 7 set and the level in bits 2-0 if a request was taken, else 0), or IRR
    /// or ISR as OCW3 selected.
    fn read_cmd(&mut self, master: bool) -> u8 {
        let chip = if master {
            &mut self.master
        } else {
            &mut self.slave
        };
        if chip.poll {
            chip.poll = false;
            let word = match chip.inta(master) {
                Some(n) => 0x80 | n,
                None => 0,
            };
            self.sync_cascade();
            word
        } else if chip.read_isr {
            chip.isr
        } else {
            chip.irr
        }
    }

    /// The slave's INT output drives the master's IR2 (module docs): it sets the request
    /// while high (or, with ICW1 LTIM, the request follows it).
    fn sync_cascade(&mut self) {
        let out = self.slave.requested(false).is_some();
        let bit = 1u8 << CASCADE_IR;
        if out {
            self.master.irr |= bit;
            self.master.pins |= bit;
        } else {
            self.master.pins &= !bit;
            if self.master.level_mask() & bit != 0 {
                self.master.irr &= !bit;
            }
        }
    }

    /// Whether master input `n` is answered by the slave in the INTA sequence: the master is
    /// in cascade mode with a slave on `n` (ICW3) and the slave's ID (its ICW3) is `n`.
    fn cascaded(&self, n: u8) -> bool {
        !self.master.single && self.master.icw3 & (1 << n) != 0 && self.slave.icw3 & 7 == n
    }

    /// A device's interrupt line 0-15 changed. Line 2 (the cascade) and lines above 15 are
    /// ignored.
    pub fn set_irq(&mut self, line: IrqLine, ev: LineEvent) {
        let (chip, n) = match line.0 {
            0 | 1 | 3..=7 => (&mut self.master, line.0),
            8..=15 => (&mut self.slave, line.0 - 8),
            _ => return,
        };
        match ev {
            LineEvent::Level(level) => chip.set_pin(n, level),
            LineEvent::Pulse => {
                chip.set_pin(n, true);
                chip.set_pin(n, false);
            }
        }
        self.sync_cascade();
    }

    /// The master's INT output (the vCPU's INTR input, or LINT0 in ExtINT mode).
    pub fn output(&self) -> bool {
        self.master.requested(true).is_some()
    }

    /// IRR of both chips (slave in bits 15-8).
    pub fn irr(&self) -> u16 {
        u16::from(self.slave.irr) << 8 | u16::from(self.master.irr)
    }

    /// ISR of both chips (slave in bits 15-8).
    pub fn isr(&self) -> u16 {
        u16::from(self.slave.isr) << 8 | u16::from(self.master.isr)
    }

    /// IMR of both chips (slave in bits 15-8).
    pub fn imr(&self) -> u16 {
        u16::from(self.slave.imr) << 8 | u16::from(self.master.imr)
    }

    /// Whether both chips have finished their ICW sequence.
    pub fn initialized(&self) -> bool {
        self.master.step == InitStep::Ready && self.slave.step == InitStep::Ready
    }
}

impl InterruptController for PicPair {
    /// The vector the INTA sequence would deliver now, if INT is asserted.
    fn pending_vector(&self) -> Option<u8> {
        let n = self.master.requested(true)?;
        if self.cascaded(n) {
            let s = self.slave.requested(false).unwrap_or(7);
            Some(self.slave.base | s)
        } else {
            Some(self.master.base | n)
        }
    }

    /// The INTA sequence: the master resolves its highest request (IRR -> ISR, or with
    /// auto-EOI no ISR bit), a cascaded request has the slave do the same and supply the
    /// vector. A request that went away answers with the spurious IR7 vector of the chip that
    /// lost it. Always `Some`.
    fn acknowledge(&mut self) -> Option<u8> {
        let vector = match self.master.inta(true) {
            None => self.master.base | 7,
            Some(n) if self.cascaded(n) => {
                let s = self.slave.inta(false).unwrap_or(7);
                self.slave.base | s
            }
            Some(n) => self.master.base | n,
        };
        self.sync_cascade();
        Some(vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn outb(p: &mut PicPair, port: u16, v: u8) {
        p.write(port, &[v]);
    }

    fn inb(p: &mut PicPair, port: u16) -> u8 {
        let mut b = [0u8];
        p.read(port, &mut b);
        b[0]
    }

    /// Linux's `init_8259A(0)`: masks off, ICW1-4 to both chips, then the cached masks.
    fn linux_init(p: &mut PicPair, icw4: u8) {
        outb(p, MASTER_DATA, 0xFF);
        outb(p, SLAVE_DATA, 0xFF);
        for (cmd, data, base, icw3) in [
            (MASTER_CMD, MASTER_DATA, 0x30, 0x04),
            (SLAVE_CMD, SLAVE_DATA, 0x38, 0x02),
        ] {
            outb(p, cmd, 0x11);
            outb(p, data, base);
            outb(p, data, icw3);
            outb(p, data, icw4);
        }
        outb(p, MASTER_DATA, 0x00);
        outb(p, SLAVE_DATA, 0x00);
    }

    fn linux() -> PicPair {
        let mut p = PicPair::new();
        linux_init(&mut p, 0x01);
        p
    }

    fn raise(p: &mut PicPair, line: u8) {
        p.set_irq(IrqLine(line), LineEvent::Pulse);
    }

    #[test]
    fn reset_state() {
        let mut p = PicPair::new();
        outb(&mut p, MASTER_DATA, 0x12);
        outb(&mut p, ELCR_MASTER, 0x08);
        raise(&mut p, 4);
        p.reset();
        assert_eq!(p, PicPair::RESET);
        assert_eq!(inb(&mut p, MASTER_DATA), 0xFF, "all lines masked");
        assert_eq!(inb(&mut p, SLAVE_DATA), 0xFF);
        assert_eq!(inb(&mut p, MASTER_CMD), 0, "IRR");
        assert_eq!(inb(&mut p, ELCR_MASTER), 0);
        assert_eq!(inb(&mut p, ELCR_SLAVE), 0);
        assert!(p.initialized());
        // Masked requests latch but do not interrupt; unmasking one shows the BIOS vector.
        raise(&mut p, 0);
        assert!(!p.output());
        assert_eq!(p.pending_vector(), None);
        outb(&mut p, MASTER_DATA, 0xFE);
        assert_eq!(p.pending_vector(), Some(0x08));
    }

    #[test]
    fn linux_init_sequence_and_mask_probe() {
        let mut p = PicPair::new();
        // probe_8259A: mask the slave, write 0xFB to the master's IMR and read it back.
        outb(&mut p, SLAVE_DATA, 0xFF);
        outb(&mut p, MASTER_DATA, 0xFB);
        assert_eq!(inb(&mut p, MASTER_DATA), 0xFB);
        linux_init(&mut p, 0x01);
        assert!(p.initialized());
        assert_eq!(p.imr(), 0);
        raise(&mut p, 0);
        assert!(p.output());
        assert_eq!(p.pending_vector(), Some(0x30));
        assert_eq!(p.acknowledge(), Some(0x30));
        assert_eq!(p.isr(), 0x0001);
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.isr(), 0);
        raise(&mut p, 8);
        assert_eq!(p.pending_vector(), Some(0x38));
        // During initialization data writes are ICWs, not masks.
        outb(&mut p, MASTER_CMD, 0x11);
        assert!(!p.initialized());
        assert_eq!(inb(&mut p, MASTER_DATA), 0, "ICW1 clears IMR");
        outb(&mut p, MASTER_DATA, 0x50);
        outb(&mut p, MASTER_DATA, 0x04);
        assert!(!p.initialized(), "ICW4 still due");
        outb(&mut p, MASTER_DATA, 0x01);
        assert!(p.initialized());
        assert_eq!(inb(&mut p, MASTER_DATA), 0);
    }

    #[test]
    fn icw_sequences_single_and_without_icw4() {
        let mut p = PicPair::new();
        // Single, no ICW4: ICW1, ICW2 and done. Vector bits 2-0 come from the level.
        outb(&mut p, MASTER_CMD, ICW1_INIT | ICW1_SINGLE);
        outb(&mut p, MASTER_DATA, 0x47);
        assert!(p.initialized());
        outb(&mut p, MASTER_DATA, 0xAA);
        assert_eq!(inb(&mut p, MASTER_DATA), 0xAA, "OCW1 right after ICW2");
        outb(&mut p, MASTER_DATA, 0);
        raise(&mut p, 3);
        assert_eq!(p.acknowledge(), Some(0x43));
        // Single mode: IR2 is a plain input, not the cascade.
        raise(&mut p, 9);
        outb(&mut p, SLAVE_DATA, 0);
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.pending_vector(), Some(0x42));
        // Cascade, no ICW4: ICW1, ICW2, ICW3 and done.
        outb(&mut p, MASTER_CMD, ICW1_INIT);
        outb(&mut p, MASTER_DATA, 0x20);
        outb(&mut p, MASTER_DATA, 0x04);
        assert!(p.initialized());
    }

    #[test]
    fn fully_nested_priorities() {
        let mut p = linux();
        raise(&mut p, 4);
        raise(&mut p, 1);
        raise(&mut p, 6);
        assert_eq!(p.irr(), 0b0101_0010);
        assert_eq!(p.acknowledge(), Some(0x31), "IR1 beats IR4 and IR6");
        // IR1 in service blocks the lower levels.
        assert!(!p.output());
        assert_eq!(p.pending_vector(), None);
        // A higher level interrupts the service routine.
        raise(&mut p, 0);
        assert_eq!(p.acknowledge(), Some(0x30));
        assert_eq!(p.isr(), 0b0000_0011);
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.isr(), 0b0000_0010, "non-specific EOI clears the highest");
        assert!(!p.output());
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(0x34));
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(0x36));
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert!(!p.output());
        // A masked line waits in IRR.
        outb(&mut p, MASTER_DATA, 0x10);
        raise(&mut p, 4);
        assert!(!p.output());
        assert_eq!(p.irr(), 0x0010);
        outb(&mut p, MASTER_DATA, 0);
        assert_eq!(p.pending_vector(), Some(0x34));
    }

    #[test]
    fn cascade_delivers_irq_8_to_15() {
        let mut p = linux();
        for line in 8..16u8 {
            if line == 13 {
                continue;
            }
            raise(&mut p, line);
            assert_eq!(p.acknowledge(), Some(0x38 + line - 8));
            assert_eq!(p.isr(), 1 << line | 1 << 2, "slave level and master IR2");
            // Linux's mask_and_ack: specific EOI to the slave, then IR2 on the master.
            outb(&mut p, SLAVE_CMD, OCW2_SPECIFIC_EOI | (line - 8));
            outb(&mut p, MASTER_CMD, OCW2_SPECIFIC_EOI | 2);
            assert_eq!(p.isr(), 0);
        }
        // The slave ranks where IR2 does: below IR1, above IR3.
        raise(&mut p, 3);
        raise(&mut p, 12);
        raise(&mut p, 1);
        assert_eq!(p.acknowledge(), Some(0x31));
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(0x3C));
        // While the cascade is in service on the master, a higher slave level waits too
        // (fully nested, not special fully nested).
        raise(&mut p, 8);
        assert!(!p.output());
        assert_eq!(p.irr() & 0x0100, 0x0100);
        outb(&mut p, SLAVE_CMD, OCW2_EOI);
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(0x38));
        outb(&mut p, SLAVE_CMD, OCW2_EOI);
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(0x33));
    }

    #[test]
    fn special_fully_nested_lets_higher_slave_levels_through() {
        let mut p = PicPair::new();
        linux_init(&mut p, 0x01);
        outb(&mut p, MASTER_CMD, 0x11);
        outb(&mut p, MASTER_DATA, 0x30);
        outb(&mut p, MASTER_DATA, 0x04);
        outb(&mut p, MASTER_DATA, ICW4_8086 | ICW4_SFNM);
        raise(&mut p, 10);
        assert_eq!(p.acknowledge(), Some(0x3A));
        raise(&mut p, 8);
        assert_eq!(
            p.acknowledge(),
            Some(0x38),
            "higher slave level while IR2 in service"
        );
        raise(&mut p, 11);
        assert!(!p.output(), "the slave still blocks its lower levels");
    }

    #[test]
    fn eoi_variants() {
        let mut p = linux();
        for line in [5, 3, 1] {
            raise(&mut p, line);
            assert_eq!(p.acknowledge(), Some(0x30 + line));
        }
        assert_eq!(p.isr(), 0b0010_1010);
        // Specific EOI clears exactly that level, even a lower one.
        outb(&mut p, MASTER_CMD, OCW2_SPECIFIC_EOI | 3);
        assert_eq!(p.isr(), 0b0010_0010);
        // Non-specific EOI: the highest in service.
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.isr(), 0b0010_0000);
        // No-operation OCW2 and EOI with nothing in service change nothing.
        outb(&mut p, MASTER_CMD, 0x40);
        assert_eq!(p.isr(), 0b0010_0000);
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.isr(), 0);
    }

    #[test]
    fn spurious_irq7_and_irq15() {
        let mut p = linux();
        // A level-triggered line that falls between INT and INTA: the master answers IR7 and
        // sets no ISR bit, which is how Linux tells a spurious IRQ 7 (it reads ISR via OCW3).
        outb(&mut p, ELCR_MASTER, 0x20);
        p.set_irq(IrqLine(5), LineEvent::Level(true));
        assert_eq!(p.pending_vector(), Some(0x35));
        p.set_irq(IrqLine(5), LineEvent::Level(false));
        assert_eq!(p.acknowledge(), Some(0x37));
        outb(&mut p, MASTER_CMD, OCW3_READ_ISR);
        assert_eq!(inb(&mut p, MASTER_CMD), 0);
        outb(&mut p, MASTER_CMD, OCW3_READ_IRR);
        // A request masked before INTA is gone as well.
        raise(&mut p, 4);
        outb(&mut p, MASTER_DATA, 0x10);
        assert_eq!(p.acknowledge(), Some(0x37));
        assert_eq!(p.isr(), 0);
        outb(&mut p, MASTER_DATA, 0);
        assert_eq!(
            p.acknowledge(),
            Some(0x34),
            "the masked request waited in IRR"
        );
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        // On the slave: IR15 comes from the slave, and the master's IR2 is in service.
        outb(&mut p, ELCR_SLAVE, 0x08);
        p.set_irq(IrqLine(11), LineEvent::Level(true));
        assert_eq!(p.pending_vector(), Some(0x3B));
        // The line falls before INTA: the master has latched the cascade, the slave has
        // nothing left and answers with its IR7.
        p.set_irq(IrqLine(11), LineEvent::Level(false));
        assert_eq!(p.pending_vector(), Some(0x3F));
        assert_eq!(p.acknowledge(), Some(0x3F));
        assert_eq!(p.isr(), 0x0004, "master IR2 in service, no slave ISR bit");
        outb(&mut p, MASTER_CMD, OCW2_SPECIFIC_EOI | 2);
        assert_eq!(p.isr(), 0);
    }

    #[test]
    fn level_lines_stay_requested_while_asserted() {
        let mut p = linux();
        outb(&mut p, ELCR_SLAVE, 0x02);
        assert_eq!(inb(&mut p, ELCR_SLAVE), 0x02);
        p.set_irq(IrqLine(9), LineEvent::Level(true));
        assert_eq!(p.acknowledge(), Some(0x39));
        assert_eq!(p.irr() & 0x0200, 0x0200, "still in IRR after INTA");
        outb(&mut p, SLAVE_CMD, OCW2_EOI);
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(0x39), "taken again after EOI");
        p.set_irq(IrqLine(9), LineEvent::Level(false));
        outb(&mut p, SLAVE_CMD, OCW2_EOI);
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.irr(), 0);
        assert!(!p.output());
        // A pulse on a level line leaves nothing behind.
        p.set_irq(IrqLine(9), LineEvent::Pulse);
        assert!(!p.output());
        // ICW1 LTIM makes every line level triggered.
        outb(&mut p, MASTER_CMD, ICW1_INIT | ICW1_LTIM | ICW1_IC4);
        outb(&mut p, MASTER_DATA, 0x30);
        outb(&mut p, MASTER_DATA, 0x04);
        outb(&mut p, MASTER_DATA, 0x01);
        p.set_irq(IrqLine(3), LineEvent::Level(true));
        p.set_irq(IrqLine(3), LineEvent::Level(false));
        assert!(!p.output());
    }

    #[test]
    fn elcr_forces_edge_on_irq_0_1_2_8_13() {
        let mut p = linux();
        outb(&mut p, ELCR_MASTER, 0xFF);
        outb(&mut p, ELCR_SLAVE, 0xFF);
        assert_eq!(inb(&mut p, ELCR_MASTER), 0xF8);
        assert_eq!(inb(&mut p, ELCR_SLAVE), 0xDE);
        let mut w = [0u8; 2];
        p.read(ELCR_MASTER, &mut w);
        assert_eq!(w, [0xF8, 0xDE]);
        // IRQ 0 stays edge: a held line is taken once.
        p.set_irq(IrqLine(0), LineEvent::Level(true));
        assert_eq!(p.acknowledge(), Some(0x30));
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert!(!p.output());
    }

    #[test]
    fn edge_detection() {
        let mut p = linux();
        // A line held high interrupts once; it must go low and high again.
        p.set_irq(IrqLine(4), LineEvent::Level(true));
        p.set_irq(IrqLine(4), LineEvent::Level(true));
        assert_eq!(p.acknowledge(), Some(0x34));
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert!(!p.output());
        p.set_irq(IrqLine(4), LineEvent::Level(false));
        assert!(!p.output());
        p.set_irq(IrqLine(4), LineEvent::Level(true));
        assert_eq!(p.acknowledge(), Some(0x34));
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        // An edge that falls again before INTA stays latched.
        p.set_irq(IrqLine(4), LineEvent::Level(false));
        p.set_irq(IrqLine(4), LineEvent::Level(true));
        p.set_irq(IrqLine(4), LineEvent::Level(false));
        assert_eq!(p.acknowledge(), Some(0x34));
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        // Two pulses before INTA make one request (IRR is one bit).
        raise(&mut p, 1);
        raise(&mut p, 1);
        assert_eq!(p.acknowledge(), Some(0x31));
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert!(!p.output());
        // ICW1 resets the edge sense: a latched edge is dropped.
        raise(&mut p, 5);
        linux_init(&mut p, 0x01);
        assert!(!p.output());
        // Line 2 and lines past 15 are not device lines.
        p.set_irq(IrqLine(2), LineEvent::Pulse);
        p.set_irq(IrqLine(16), LineEvent::Pulse);
        assert_eq!(p.irr(), 0);
    }

    #[test]
    fn auto_eoi_and_rotation_in_auto_eoi() {
        let mut p = PicPair::new();
        linux_init(&mut p, ICW4_8086 | ICW4_AEOI);
        raise(&mut p, 3);
        assert_eq!(p.acknowledge(), Some(0x33));
        assert_eq!(p.isr(), 0, "no ISR bit in auto-EOI mode");
        raise(&mut p, 5);
        assert_eq!(
            p.acknowledge(),
            Some(0x35),
            "a lower level goes straight through"
        );
        // Cascaded with auto-EOI on both: two slave requests in a row are both delivered.
        raise(&mut p, 9);
        raise(&mut p, 10);
        assert_eq!(p.acknowledge(), Some(0x39));
        assert_eq!(p.acknowledge(), Some(0x3A));
        assert!(!p.output());
        // Rotate in auto-EOI mode: each level taken becomes the lowest.
        outb(&mut p, MASTER_CMD, OCW2_SET_ROTATE_AEOI);
        raise(&mut p, 1);
        assert_eq!(p.acknowledge(), Some(0x31));
        raise(&mut p, 0);
        raise(&mut p, 4);
        assert_eq!(
            p.acknowledge(),
            Some(0x34),
            "IR2 now has the highest priority, then 3, 4"
        );
        assert_eq!(p.acknowledge(), Some(0x30));
        outb(&mut p, MASTER_CMD, OCW2_CLEAR_ROTATE_AEOI);
        raise(&mut p, 0);
        raise(&mut p, 7);
        assert_eq!(
            p.acknowledge(),
            Some(0x37),
            "priorities stay where the rotation left them"
        );
        assert_eq!(p.acknowledge(), Some(0x30));
    }

    #[test]
    fn rotation_and_set_priority() {
        let mut p = linux();
        // Rotate on non-specific EOI: equal-priority devices take turns.
        raise(&mut p, 0);
        raise(&mut p, 3);
        assert_eq!(p.acknowledge(), Some(0x30));
        outb(&mut p, MASTER_CMD, OCW2_ROTATE_EOI);
        raise(&mut p, 0);
        assert_eq!(p.acknowledge(), Some(0x33), "IR0 is now the lowest");
        outb(&mut p, MASTER_CMD, OCW2_ROTATE_EOI);
        assert_eq!(p.acknowledge(), Some(0x30));
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        // Set priority: IR4 lowest, so IR5 highest.
        outb(&mut p, MASTER_CMD, OCW2_SET_PRIORITY | 4);
        raise(&mut p, 4);
        raise(&mut p, 7);
        raise(&mut p, 5);
        assert_eq!(p.acknowledge(), Some(0x35));
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(0x37), "then 7; 4 is the lowest");
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        assert_eq!(p.acknowledge(), Some(0x34));
        // Rotate on specific EOI: IR7 becomes the lowest, so IR0 the highest again.
        outb(&mut p, MASTER_CMD, OCW2_ROTATE_SPECIFIC_EOI | 7);
        assert_eq!(p.isr(), 0x0010);
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        raise(&mut p, 7);
        raise(&mut p, 0);
        assert_eq!(p.acknowledge(), Some(0x30));
    }

    #[test]
    fn poll_command() {
        let mut p = linux();
        outb(&mut p, MASTER_DATA, 0xFF);
        outb(&mut p, MASTER_CMD, OCW3_POLL);
        assert_eq!(inb(&mut p, MASTER_CMD), 0, "nothing requested: bit 7 clear");
        // Polling works with INT masked off at the CPU; the poll read is an INTA.
        outb(&mut p, MASTER_DATA, 0x00);
        raise(&mut p, 6);
        raise(&mut p, 3);
        outb(&mut p, MASTER_CMD, OCW3_POLL);
        assert_eq!(inb(&mut p, MASTER_CMD), 0x83);
        assert_eq!(p.isr(), 0x0008);
        // Only the next read polls; then reads give IRR again.
        assert_eq!(inb(&mut p, MASTER_CMD), 0x40);
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        outb(&mut p, MASTER_CMD, OCW3_POLL);
        assert_eq!(inb(&mut p, MASTER_CMD), 0x86);
        outb(&mut p, MASTER_CMD, OCW2_EOI);
        // Polling a cascaded request: the master says 2, then poll the slave.
        raise(&mut p, 13);
        outb(&mut p, MASTER_CMD, OCW3_POLL);
        assert_eq!(inb(&mut p, MASTER_CMD), 0x82);
        outb(&mut p, SLAVE_CMD, OCW3_POLL);
        assert_eq!(inb(&mut p, SLAVE_CMD), 0x85);
        assert_eq!(p.isr(), 0x2004);
    }

    #[test]
    fn register_reads_via_ocw3() {
        let mut p = linux();
        raise(&mut p, 1);
        raise(&mut p, 6);
        assert_eq!(inb(&mut p, MASTER_CMD), 0x42, "IRR after ICW1");
        p.acknowledge();
        outb(&mut p, MASTER_CMD, OCW3_READ_ISR);
        assert_eq!(inb(&mut p, MASTER_CMD), 0x02);
        assert_eq!(inb(&mut p, MASTER_CMD), 0x02, "the selection sticks");
        // An OCW3 without RR leaves the selection alone.
        outb(&mut p, MASTER_CMD, OCW3_SELECT);
        assert_eq!(inb(&mut p, MASTER_CMD), 0x02);
        outb(&mut p, MASTER_CMD, OCW3_READ_IRR);
        assert_eq!(inb(&mut p, MASTER_CMD), 0x40);
        // 16-bit read at 0x20: IRR then IMR; ports past the pair read as an open bus.
        outb(&mut p, MASTER_DATA, 0x21);
        let mut w = [0u8; 2];
        p.read(MASTER_CMD, &mut w);
        assert_eq!(w, [0x40, 0x21]);
        p.read(MASTER_DATA, &mut w);
        assert_eq!(w, [0x21, 0xFF]);
        // 16-bit write at 0x20: OCW2 to 0x20 and OCW1 to 0x21.
        p.write(MASTER_CMD, &[OCW2_EOI, 0x0F]);
        assert_eq!(p.isr(), 0);
        assert_eq!(p.imr() & 0xFF, 0x0F);
        assert!(PicPair::claims(0x4D1) && !PicPair::claims(0x22));
    }

    #[test]
    fn special_mask_mode() {
        let mut p = linux();
        raise(&mut p, 3);
        assert_eq!(p.acknowledge(), Some(0x33));
        raise(&mut p, 5);
        assert!(!p.output(), "IR3 in service blocks IR5");
        // The handler masks its own level and enters special mask mode: lower levels pass.
        outb(&mut p, MASTER_DATA, 0x08);
        outb(&mut p, MASTER_CMD, OCW3_SET_SMM);
        assert_eq!(p.acknowledge(), Some(0x35));
        assert_eq!(p.isr(), 0x0028);
        outb(&mut p, MASTER_CMD, OCW2_SPECIFIC_EOI | 5);
        outb(&mut p, MASTER_CMD, OCW3_RESET_SMM);
        raise(&mut p, 6);
        outb(&mut p, MASTER_DATA, 0x00);
        assert!(
            !p.output(),
            "normal masking again: IR3 in service blocks IR6"
        );
        outb(&mut p, MASTER_CMD, OCW2_SPECIFIC_EOI | 3);
        assert_eq!(p.acknowledge(), Some(0x36));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Line(u8, LineEvent),
        Out(u16, u8),
        In(u16),
        Ack,
    }

    fn op() -> impl Strategy<Value = Op> {
        let port = prop::sample::select(vec![0x20u16, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1]);
        let ev = prop_oneof![
            Just(LineEvent::Pulse),
            any::<bool>().prop_map(LineEvent::Level)
        ];
        prop_oneof![
            (0u8..17, ev).prop_map(|(l, e)| Op::Line(l, e)),
            (port.clone(), any::<u8>()).prop_map(|(p, v)| Op::Out(p, v)),
            port.prop_map(Op::In),
            Just(Op::Ack),
        ]
    }

    proptest! {
        /// Whatever the guest writes: INT is asserted exactly when a vector is pending, and
        /// an INTA right after asking delivers the vector that was announced.
        #[test]
        fn inta_delivers_what_was_pending(ops in prop::collection::vec(op(), 0..200)) {
            let mut p = PicPair::new();
            linux_init(&mut p, 0x01);
            for op in ops {
                match op {
                    Op::Line(l, e) => p.set_irq(IrqLine(l), e),
                    Op::Out(port, v) => outb(&mut p, port, v),
                    Op::In(port) => { inb(&mut p, port); }
                    Op::Ack => {
                        let pending = p.pending_vector();
                        let got = p.acknowledge();
                        prop_assert!(got.is_some());
                        if pending.is_some() {
                            prop_assert_eq!(got, pending);
                        }
                    }
                }
                prop_assert_eq!(p.output(), p.pending_vector().is_some());
                if p.slave.requested(false).is_some() {
                    prop_assert!(p.irr() & 0x0004 != 0, "a slave request reaches IR2");
                }
            }
        }
    }
}
