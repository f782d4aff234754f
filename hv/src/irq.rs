//! The interrupt vocabulary shared by devices, interrupt controllers and the vCPU run loop.
//!
//! Why a trait: the run loop decides *when* an interrupt can be injected (RFLAGS.IF, the
//! STI/MOV-SS shadow, an event already in flight) and *how* (SVM EVENTINJ or V_IRQ, VMX
//! VM-entry interruption information or an interrupt window). Which vector is pending is the
//! interrupt controllers' business (8259A PIC pair, local APIC fed by the IOAPIC). They meet in
//! [`InterruptController`]: the run loop asks for the highest pending vector before each entry
//! and acknowledges it at the moment of injection, which is the PIC's INTA cycle or the local
//! APIC's acceptance (IRR -> ISR). Host tests drive the run loop with a fake controller.
//!
//! Devices do not know who listens to their interrupt line: each reports its output as an
//! [`IrqLine`] level (or, for a pulse such as the PIT's OUT0 in rate-generator mode, as an
//! edge), and the VM's platform routes lines to the PIC and IOAPIC as on a PC.

/// An ISA interrupt line number (0-15 on the PIC pair; 0-23 on the IOAPIC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IrqLine(pub u8);

impl IrqLine {
    /// PIT channel 0.
    pub const PIT: IrqLine = IrqLine(0);
    /// The keyboard controller.
    pub const KEYBOARD: IrqLine = IrqLine(1);
    /// The slave PIC's cascade input on the master.
    pub const CASCADE: IrqLine = IrqLine(2);
    /// COM2/COM4.
    pub const COM2: IrqLine = IrqLine(3);
    /// COM1/COM3.
    pub const COM1: IrqLine = IrqLine(4);
    /// The CMOS real-time clock.
    pub const RTC: IrqLine = IrqLine(8);
}

/// What happened on an interrupt line, as a device reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LineEvent {
    /// The line is now at this level (true = asserted).
    Level(bool),
    /// The line went high and low again: one edge for edge-triggered inputs, nothing for
    /// level-triggered ones once it is low again.
    Pulse,
}

/// A source of external interrupts for one vCPU: the PIC pair's INTR output, or the local
/// APIC (which also takes the PIC as ExtINT through LINT0).
pub trait InterruptController {
    /// The vector the vCPU would take now if it could (highest priority, after masks, ISR
    /// priority and TPR), without accepting it.
    fn pending_vector(&self) -> Option<u8>;

    /// The vCPU is taking an interrupt now (the PIC's INTA cycle, the local APIC's
    /// acceptance): move it from IRR to ISR and return the vector to deliver. This can differ
    /// from what [`pending_vector`](Self::pending_vector) said if the request went away in
    /// between (the PIC then answers with its spurious vector, IRQ 7 or 15), and is `None`
    /// when nothing is to be delivered after all.
    fn acknowledge(&mut self) -> Option<u8>;

    /// A pending NMI (LINT1, an NMI IPI), cleared by taking it.
    fn take_nmi(&mut self) -> bool {
        false
    }
}

impl<T: InterruptController + ?Sized> InterruptController for &mut T {
    fn pending_vector(&self) -> Option<u8> {
        (**self).pending_vector()
    }

    fn acknowledge(&mut self) -> Option<u8> {
        (**self).acknowledge()
    }

    fn take_nmi(&mut self) -> bool {
        (**self).take_nmi()
    }
}

/// A controller with nothing to deliver, for VMs without interrupt controllers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoInterrupts;

impl InterruptController for NoInterrupts {
    fn pending_vector(&self) -> Option<u8> {
        None
    }

    fn acknowledge(&mut self) -> Option<u8> {
        None
    }
}
