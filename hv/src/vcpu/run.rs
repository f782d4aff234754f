//! The vCPU contract and the run loop: what a backend (SVM, VMX) must do, and everything it
//! must not decide.
//!
//! Why here (STYLE.md points 2 and 12): a backend enters the guest, reads the exit once and
//! decodes it into the neutral [`Exit`], writes registers and injects events. Everything else
//! is a decision and lives in this file, in plain Rust driven by host tests against a mock
//! backend: which exit handler sees the exit (the vPMU first, then [`exit::handle`]), how the
//! action is applied, which event goes in before the next entry (an interrupted event first,
//! then an NMI, then the interrupt controller's vector), when an interrupt window is opened
//! instead, when a halted vCPU may run again, and when a burst of entries ends.
//!
//! The shape follows Cloud Hypervisor's `hypervisor::Vcpu` (a small trait per backend) and
//! Firecracker's `handle_kvm_exit` (a loop over decoded exits, tested with synthetic ones).
//!
//! # Injection (SDM vol. 3A 6.8.1, 6.8.3, 27.6; APM vol. 2 15.20, 15.21)
//!
//! Before each entry, [`decide`] picks at most one event:
//!
//! 1. an event whose delivery the last exit interrupted (SVM EXITINTINFO, VMX IDT-vectoring
//!    information), or the exception the exit handler asked for, which replaces it;
//! 2. else a pending NMI, if neither GIF=0, an STI/MOV-SS shadow nor NMI blocking hold it back;
//! 3. else the controller's pending external interrupt, if RFLAGS.IF=1, no shadow and GIF=1:
//!    the controller is acknowledged at that moment (the INTA cycle / local APIC acceptance),
//!    so a vector is never taken from the controller and then dropped.
//!
//! An external interrupt that cannot go in now (IF=0, a shadow, or another event going in
//! first) opens the interrupt window (SVM: V_IRQ + VINTR intercept; VMX: interrupt-window
//! exiting); the [`Exit::InterruptWindow`] it causes brings the loop back here, and the window
//! is closed again when nothing waits. A pending NMI that is blocked is retried at every entry
//! (no NMI window: nothing raises NMIs yet).
//!
//! # Halt
//!
//! HLT always exits (both backends intercept it; VMX never enters in the HLT activity state,
//! which Bochs 2.7 never leaves). With IF=1 the handler says [`Action::Halt`]: the vCPU is
//! halted until an NMI or an external interrupt is pending for it ([`VcpuRun::runnable`]); if
//! one is pending already, the loop goes on at once. With IF=0 the VM stops (nothing can
//! wake it).
//!
//! # Emulated exits
//!
//! A nested page fault outside RAM and string I/O need the guest's state and memory
//! ([`Action::EmulateMmio`], [`Action::StringIo`]): the loop reads [`VcpuBackend::state`],
//! lets [`emulation`](super::emulation) finish the instruction against
//! [`VcpuBackend::memory`] and the VM's devices, and writes the state back with
//! [`VcpuBackend::set_state`] before acting on the outcome. A nested page fault that
//! interrupted the delivery of an event (the fault is the delivery's, not the instruction's)
//! stops the VM with [`StopReason::NptViolation`].

use super::VcpuState;
use super::emulation;
use crate::exit::{self, Action, Exit, GuestView, RegUpdate, ResetTrigger, StopReason};
use crate::irq::InterruptController;
use crate::mem::GuestMemory;
use crate::vm::VmRuntime;
use crate::vpmu::VmPmu;

/// What kind of event an injection delivers (the same classes on SVM and VMX).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An external (maskable) interrupt.
    External,
    /// A non-maskable interrupt (vector 2).
    Nmi,
    /// A hardware exception (fault, trap, abort).
    Exception,
    /// INT n.
    SoftwareInterrupt,
    /// INT3, INTO.
    SoftwareException,
    /// INT1 (ICEBP).
    PrivilegedSoftwareException,
}

/// An event to inject, or one whose delivery an exit interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// Its class.
    pub kind: EventKind,
    /// The vector.
    pub vector: u8,
    /// The error code, for exceptions that push one.
    pub error_code: Option<u32>,
    /// For software events: the length of the instruction that raised it (VMX needs it to
    /// re-inject; SVM re-executes the instruction and ignores it).
    pub insn_len: u8,
}

impl Event {
    /// A hardware exception.
    pub const fn exception(vector: u8, error_code: Option<u32>) -> Event {
        Event {
            kind: EventKind::Exception,
            vector,
            error_code,
            insn_len: 0,
        }
    }

    /// An external interrupt with `vector`.
    pub const fn external(vector: u8) -> Event {
        Event {
            kind: EventKind::External,
            vector,
            error_code: None,
            insn_len: 0,
        }
    }

    /// An NMI.
    pub const NMI: Event = Event {
        kind: EventKind::Nmi,
        vector: 2,
        error_code: None,
        insn_len: 0,
    };
}

/// What holds events back in the guest right now, as the backend reads it before an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Interruptibility {
    /// RFLAGS.IF.
    pub interrupts_enabled: bool,
    /// An STI or MOV SS/POP SS shadow (SVM INTERRUPT_SHADOW; VMX interruptibility bits 0-1).
    pub shadow: bool,
    /// The global interrupt flag (SVM: the guest's GIF; always set under VMX).
    pub gif: bool,
    /// NMIs blocked (VMX interruptibility bit 3; under SVM, while an NMI handler runs).
    pub nmi_blocked: bool,
}

impl Interruptibility {
    /// Nothing holds interrupts back: IF=1, no shadow, GIF=1, NMIs unblocked.
    pub const OPEN: Interruptibility = Interruptibility {
        interrupts_enabled: true,
        shadow: false,
        gif: true,
        nmi_blocked: false,
    };

    /// Whether an external interrupt can be delivered at the next entry.
    pub const fn accepts_interrupt(self) -> bool {
        self.gif && self.interrupts_enabled && !self.shadow
    }

    /// Whether an NMI can be delivered at the next entry.
    pub const fn accepts_nmi(self) -> bool {
        self.gif && !self.shadow && !self.nmi_blocked
    }
}

/// One exit as the backend read it: the neutral exit, and the event whose delivery it
/// interrupted, which must be delivered again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Exited {
    /// What the guest did.
    pub exit: Exit,
    /// SVM EXITINTINFO / VMX IDT-vectoring information, if valid.
    pub interrupted: Option<Event>,
}

impl Exited {
    /// An exit that interrupted no event delivery.
    pub const fn plain(exit: Exit) -> Exited {
        Exited {
            exit,
            interrupted: None,
        }
    }
}

/// The entry itself failed: the guest did not run. `code` is the backend's (VMX: the
/// VM-instruction error number or a kernel code; SVM: the exit code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryError {
    /// Backend-defined detail.
    pub code: u64,
}

/// The hardware side of one vCPU: the only operations the run loop needs.
///
/// Calls between two entries are recorded by the backend and written at the next
/// [`enter`](Self::enter) (VMX: VMWRITE on the CPU where the VMCS is current; SVM: the VMCB).
pub trait VcpuBackend {
    /// Enter the guest once and decode why it left.
    fn enter(&mut self) -> Result<Exited, EntryError>;

    /// The guest registers the exit handler reads.
    fn view(&self) -> GuestView;

    /// Continue at `rip`: the instruction at the exit completed, so an STI / MOV-SS shadow it
    /// sat in ends (as KVM's skip of an emulated instruction).
    fn set_rip(&mut self, rip: u64);

    /// Write `regs` and continue at `rip` (the shadow ends as with [`set_rip`](Self::set_rip)).
    fn apply(&mut self, rip: u64, regs: &RegUpdate);

    /// Deliver `event` at the next entry (at most one per entry).
    fn inject(&mut self, event: Event);

    /// What holds events back now (read after the last exit, with what was applied since).
    fn interruptibility(&self) -> Interruptibility;

    /// Open (`true`) or close the interrupt window: with it open, the guest exits with
    /// [`Exit::InterruptWindow`] as soon as it can take an external interrupt.
    fn set_interrupt_window(&mut self, open: bool);

    /// The guest's TSC now (the host's TSC plus the VM's offset): the time base of the VM's
    /// devices.
    fn guest_tsc(&self) -> u64;

    /// The guest's RAM, at guest-physical 0.
    type Memory: GuestMemory + ?Sized;

    /// The full register and segment state as the last exit left it (with what was applied
    /// since). Only the emulated exits read it (SVM: the VMCB save area and the saved GPRs;
    /// VMX: VMREADs of the current VMCS), so the common exits stay cheap.
    fn state(&self) -> VcpuState;

    /// Write `state` back (all of it; the backend may skip what did not change). SVM: into
    /// the VMCB, which must then pass the VMRUN checks again if a checked field changed;
    /// VMX: VMWRITEs of the current VMCS, access rights converted back.
    fn set_state(&mut self, state: &VcpuState);

    /// The guest's RAM, for the emulator and the guest page walker.
    fn memory(&mut self) -> &mut Self::Memory;
}

/// The VM side of the run loop: its runtime model (CPUID, MSRs, devices, vPMU, stats) and the
/// vCPU's interrupt input. [`VmRuntime`] is one, with its chipset as the interrupt input; host
/// tests pair a runtime with a fake controller ([`VcpuRun::burst`]).
pub trait Machine {
    /// The runtime the exit handler works on.
    fn runtime(&mut self) -> &mut VmRuntime;

    /// The vCPU's interrupt controller, as it is now.
    fn interrupts(&mut self) -> impl InterruptController + '_;

    /// Guest time reached guest TSC `tsc`: timers fire, lines move.
    fn advance(&mut self, tsc: u64) {
        self.runtime().devices.advance(tsc);
    }

    /// The guest TSC by which the vCPU must exit for a timer to be delivered on time.
    fn next_deadline(&mut self) -> Option<u64> {
        self.runtime().devices.next_deadline_tsc()
    }
}

impl Machine for VmRuntime {
    fn runtime(&mut self) -> &mut VmRuntime {
        self
    }

    fn interrupts(&mut self) -> impl InterruptController + '_ {
        self.devices.chipset.controller()
    }
}

/// A runtime with a separate interrupt controller (host tests' fakes).
struct WithController<'a, I> {
    rt: &'a mut VmRuntime,
    irq: &'a mut I,
}

impl<I: InterruptController> Machine for WithController<'_, I> {
    fn runtime(&mut self) -> &mut VmRuntime {
        self.rt
    }

    fn interrupts(&mut self) -> impl InterruptController + '_ {
        &mut *self.irq
    }
}

/// What the run loop needs from the host around the guest: the preemption checks, the vPMU's
/// hardware backing and hooks that see every exit.
pub trait RunHost {
    /// Whether the burst must end after this exit (a request waits, the slice is over).
    fn should_yield(&mut self) -> bool;

    /// One entry of `vcpu`; the host may wrap it (load the guest's counters into the host PMU
    /// when the vPMU is hardware-backed).
    fn enter<B: VcpuBackend>(
        &mut self,
        vcpu: &mut B,
        pmu: &mut VmPmu,
    ) -> Result<Exited, EntryError> {
        let _ = pmu;
        vcpu.enter()
    }

    /// A first look at each exit (tracing, the benchmark's floor exit). `true`: the host
    /// dealt with it and the loop only re-enters.
    fn intercept<B: VcpuBackend>(&mut self, vcpu: &mut B, exit: &Exit) -> bool {
        let _ = (vcpu, exit);
        false
    }

    /// The VM's devices need the guest to exit by guest TSC `tsc` (a timer fires then): the
    /// host arranges an exit no later than that (a host timer interrupt), if it has none
    /// earlier. Called after every exit while a timer runs.
    fn exit_by(&mut self, tsc: u64) {
        let _ = tsc;
    }
}

/// Why a burst of entries ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BurstEnd {
    /// The entry failed; the VM should stop with [`StopReason::EntryFailed`].
    EntryFailed {
        /// The backend's code.
        code: u64,
    },
    /// A host interrupt made the guest exit: let the host take it (interrupts on), then go on.
    HostInterrupt,
    /// The vCPU halted with interrupts enabled and nothing is pending for it.
    Halted,
    /// The VM stops.
    Stop(StopReason),
    /// The VM resets.
    Reset(ResetTrigger),
    /// [`RunHost::should_yield`] said so.
    Yield,
}

/// Which event [`decide`] puts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Injection {
    /// None.
    Nothing,
    /// This one (re-injected or asked for by the exit handler).
    Event(Event),
    /// The pending NMI.
    Nmi,
    /// The controller's pending interrupt: acknowledge it and inject what it answers.
    Interrupt,
}

/// The injection decision before one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// What goes in.
    pub inject: Injection,
    /// Whether the interrupt window must be open during this entry.
    pub window: bool,
}

/// Decide what to inject before an entry (see the module docs): `pending` is an event that
/// must go in (interrupted or asked for), `nmi` a pending NMI, `interrupt` whether the
/// controller has a vector pending.
pub const fn decide(
    state: Interruptibility,
    pending: Option<Event>,
    nmi: bool,
    interrupt: bool,
) -> Decision {
    if let Some(ev) = pending {
        return Decision {
            inject: Injection::Event(ev),
            window: interrupt,
        };
    }
    if nmi && state.accepts_nmi() {
        return Decision {
            inject: Injection::Nmi,
            window: interrupt,
        };
    }
    if interrupt && state.accepts_interrupt() {
        return Decision {
            inject: Injection::Interrupt,
            window: false,
        };
    }
    Decision {
        inject: Injection::Nothing,
        window: interrupt,
    }
}

/// Counters of the injection path (per vCPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InjectStats {
    /// External interrupts injected.
    pub interrupts: u64,
    /// NMIs injected.
    pub nmis: u64,
    /// Events re-injected after an exit interrupted their delivery.
    pub reinjected: u64,
    /// Times the interrupt window was opened.
    pub windows: u64,
}

/// The run loop's own state of one vCPU, beside the backend's hardware state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VcpuRun {
    /// The event to deliver at the next entry.
    pending: Option<Event>,
    /// Whether `pending` came from an interrupted delivery (counted as re-injected).
    reinjecting: bool,
    /// An NMI taken from the controller and not delivered yet.
    nmi: bool,
    /// Halted (HLT with IF=1) and waiting for an interrupt.
    halted: bool,
    /// Whether the backend's interrupt window is open.
    window: bool,
    /// Counters.
    pub stats: InjectStats,
}

impl VcpuRun {
    /// A vCPU at reset: nothing pending, not halted, window closed (the backend's reset closes
    /// it too). Call whenever the backend is reset.
    pub const fn new() -> VcpuRun {
        VcpuRun {
            pending: None,
            reinjecting: false,
            nmi: false,
            halted: false,
            window: false,
            stats: InjectStats {
                interrupts: 0,
                nmis: 0,
                reinjected: 0,
                windows: 0,
            },
        }
    }

    /// Whether the vCPU is halted (waiting for an interrupt).
    pub const fn halted(&self) -> bool {
        self.halted
    }

    /// The event that goes in at the next entry, if any.
    pub const fn pending_event(&self) -> Option<Event> {
        self.pending
    }

    /// Whether the vCPU has something to do: it is not halted, or an event, an NMI or an
    /// external interrupt is pending for it. A halted vCPU with IF=1 waits for this (its CPU's
    /// worker sleeps until it changes).
    pub fn runnable<I: InterruptController>(&mut self, irq: &mut I) -> bool {
        self.nmi |= irq.take_nmi();
        !self.halted || self.has_work(irq)
    }

    fn has_work<I: InterruptController>(&self, irq: &I) -> bool {
        self.pending.is_some() || self.nmi || irq.pending_vector().is_some()
    }

    /// Put the chosen event in and set the window, before an entry.
    fn prepare<B: VcpuBackend, I: InterruptController>(&mut self, vcpu: &mut B, irq: &mut I) {
        self.nmi |= irq.take_nmi();
        let interrupt = irq.pending_vector().is_some();
        // The common case on the exit path: nothing to deliver and no window to close.
        if self.pending.is_none() && !self.nmi && !interrupt && !self.window {
            return;
        }
        let d = decide(vcpu.interruptibility(), self.pending, self.nmi, interrupt);
        let mut window = d.window;
        match d.inject {
            Injection::Nothing => {}
            Injection::Event(ev) => {
                self.pending = None;
                if core::mem::take(&mut self.reinjecting) {
                    self.stats.reinjected += 1;
                }
                vcpu.inject(ev);
            }
            Injection::Nmi => {
                self.nmi = false;
                self.stats.nmis += 1;
                vcpu.inject(Event::NMI);
            }
            Injection::Interrupt => match irq.acknowledge() {
                Some(v) => {
                    self.stats.interrupts += 1;
                    vcpu.inject(Event::external(v));
                    // Another request behind this one waits for the next window.
                    window = irq.pending_vector().is_some();
                }
                None => window = false,
            },
        }
        if window != self.window {
            self.window = window;
            if window {
                self.stats.windows += 1;
            }
            vcpu.set_interrupt_window(window);
        }
    }

    /// Whether the guest sits in an STI / MOV-SS shadow right before a HLT while an event
    /// waits for it; if so, the HLT is completed here (RIP past it, its shadow ended) and the
    /// caller halts the vCPU, so the event arrives after the HLT as on hardware.
    ///
    /// On a CPU that keeps the shadow across an exit this changes nothing: the HLT would run
    /// before any event and exit to us (HLT is always intercepted), which ends the same way.
    /// It matters where the shadow is lost at the next entry: QEMU 7.2 TCG reports it at
    /// #VMEXIT but does not load it at VMRUN, so an exit between `STI` and `HLT` (a host
    /// interrupt) let the event in with RIP at the HLT; the handler returned to the HLT, and a
    /// guest that had waited for exactly that interrupt halted for good (issue 14's stall).
    fn hlt_in_shadow<B: VcpuBackend, M: Machine>(&self, vcpu: &mut B, m: &mut M) -> bool {
        // Cheapest first: the interrupt state is a VMREAD under VMX, so it is read only when an
        // event waits.
        if self.pending.is_some() || !(self.nmi || m.interrupts().pending_vector().is_some()) {
            return false;
        }
        if !vcpu.interruptibility().shadow {
            return false;
        }
        let state = vcpu.state();
        let phys_bits = emulation::guest_phys_bits(m.runtime());
        let is_hlt = emulation::fetch_insn(vcpu.memory(), &state, phys_bits)
            .is_ok_and(|f| f.as_slice().first() == Some(&0xF4));
        if !is_hlt {
            return false;
        }
        vcpu.set_rip(state.regs.rip.wrapping_add(1));
        let stats = &mut m.runtime().stats;
        stats.halts = stats.halts.saturating_add(1);
        true
    }

    /// [`run`](Self::run) with `rt` and a separate interrupt controller `irq` (host tests'
    /// fakes; the kernel runs a [`VmRuntime`], whose chipset is its controller).
    pub fn burst<B, I, H>(
        &mut self,
        vcpu: &mut B,
        rt: &mut VmRuntime,
        irq: &mut I,
        host: &mut H,
    ) -> BurstEnd
    where
        B: VcpuBackend,
        I: InterruptController,
        H: RunHost,
    {
        self.run(vcpu, &mut WithController { rt, irq }, host)
    }

    /// Enter the guest again and again while its exits need only register updates or
    /// injections: the hot path of a VM exit. Allocates nothing. After each exit the VM's
    /// devices advance to the guest's TSC; the exit goes to the host's hook, then the vPMU,
    /// then [`exit::handle`]; the action is applied here, and the host is told when the next
    /// timer needs the guest out.
    pub fn run<B, M, H>(&mut self, vcpu: &mut B, m: &mut M, host: &mut H) -> BurstEnd
    where
        B: VcpuBackend,
        M: Machine,
        H: RunHost,
    {
        m.advance(vcpu.guest_tsc());
        loop {
            if !self.halted && self.hlt_in_shadow(vcpu, m) {
                self.halted = true;
            }
            if self.halted {
                self.nmi |= m.interrupts().take_nmi();
                if !self.has_work(&m.interrupts()) {
                    return BurstEnd::Halted;
                }
                self.halted = false;
            }
            self.prepare(vcpu, &mut m.interrupts());
            let exited = match host.enter(vcpu, &mut m.runtime().pmu) {
                Ok(e) => e,
                Err(e) => return BurstEnd::EntryFailed { code: e.code },
            };
            m.advance(vcpu.guest_tsc());
            // Delivered again at the next entry, unless the handler injects another event.
            self.pending = exited.interrupted;
            self.reinjecting = exited.interrupted.is_some();
            let exit = exited.exit;
            if !host.intercept(vcpu, &exit) {
                let rt = m.runtime();
                let action = match rt.pmu.handle_exit(&exit) {
                    Some(a) => {
                        rt.stats.exits.record(exit.kind());
                        a
                    }
                    None => exit::handle(&exit, &vcpu.view(), rt),
                };
                let action = match action {
                    a @ (Action::EmulateMmio { .. } | Action::StringIo { .. }) => {
                        emulate(vcpu, rt, a, exited.interrupted.is_some())
                    }
                    a => a,
                };
                match action {
                    Action::Resume => {}
                    Action::ResumeAt { rip } => vcpu.set_rip(rip),
                    Action::ResumeWith { rip, regs } => vcpu.apply(rip, &regs),
                    Action::InjectException { vector, error_code } => {
                        self.pending = Some(Event::exception(vector, error_code));
                        self.reinjecting = false;
                    }
                    Action::Halt { rip } => {
                        vcpu.set_rip(rip);
                        self.halted = true;
                    }
                    Action::Stop(reason) => return BurstEnd::Stop(reason),
                    Action::Reset(trigger) => return BurstEnd::Reset(trigger),
                    // `emulate` answered them; it never returns one.
                    Action::EmulateMmio { gpa } => {
                        return BurstEnd::Stop(StopReason::NptViolation { gpa });
                    }
                    Action::StringIo { port, .. } => {
                        return BurstEnd::Stop(StopReason::UnsupportedIo { port });
                    }
                }
                if matches!(exit, Exit::ExternalInterrupt) {
                    return BurstEnd::HostInterrupt;
                }
                if self.halted {
                    self.nmi |= m.interrupts().take_nmi();
                    if !self.has_work(&m.interrupts()) {
                        return BurstEnd::Halted;
                    }
                }
            }
            if let Some(tsc) = m.next_deadline() {
                host.exit_by(tsc);
            }
            if host.should_yield() {
                return BurstEnd::Yield;
            }
        }
    }
}

/// Finish an exit that needs the guest's state and memory: read the state, emulate, write it
/// back if it changed, and return what to do next (never an emulation action again).
/// `interrupted`: the exit interrupted an event's delivery (a nested page fault is then the
/// delivery's, not the instruction's: stop).
#[inline(never)]
fn emulate<B: VcpuBackend>(
    vcpu: &mut B,
    rt: &mut VmRuntime,
    action: Action,
    interrupted: bool,
) -> Action {
    if let (Action::EmulateMmio { gpa }, true) = (action, interrupted) {
        return Action::Stop(StopReason::NptViolation { gpa });
    }
    let mut state = vcpu.state();
    let done = match action {
        Action::EmulateMmio { gpa } => emulation::mmio(gpa, &mut state, vcpu.memory(), rt),
        Action::StringIo {
            port,
            size,
            next_rip,
        } => emulation::string_io(port, size, next_rip, &mut state, vcpu.memory(), rt),
        other => return other,
    };
    if done.write_back {
        vcpu.set_state(&state);
    }
    done.action
}

#[cfg(test)]
mod tests;
