//! The neutral exit vocabulary and the exit handler: what the guest did, and what to do next.
//!
//! Why here and pure (STYLE.md points 2 and 4): each backend reads its hardware state once,
//! decodes it into its own exit type (`svm::exit::SvmExit`, `vmx::exit::VmxExit`) and maps that
//! onto [`Exit`]. [`handle`] decides an [`Action`] from the exit, the few guest registers it
//! needs ([`GuestView`]) and the VM's runtime model ([`VmRuntime`]: CPUID view, MSR state,
//! devices, crash policy, stats). The backend applies the action and re-enters. Nothing here
//! touches hardware, so exit handling is a table of host tests: exit in, action out.
//!
//! # Decisions
//!
//! | exit                         | action                                                        |
//! |------------------------------|---------------------------------------------------------------|
//! | CPUID                        | the VM's [`CpuidView`](crate::cpuid::CpuidView) into RAX..RDX |
//! | HLT, IF=1                    | [`Action::Halt`]: sleep until an event                        |
//! | HLT, IF=0                    | stop, [`StopReason::Halted`] (nothing can wake it)            |
//! | IN / OUT                     | [`Devices`](crate::devices::Devices) at the time of the last advance; debug exit stops, 0xCF9 and 0x64 reset |
//! | INS / OUTS (string I/O)      | [`Action::StringIo`]: the run loop emulates it through the guest's paging (`crate::vcpu::emulation`) |
//! | RDMSR / WRMSR, local APIC    | the VM's local APIC (IA32_APIC_BASE, TSC deadline, x2APIC 0x800-0x8FF) |
//! | RDMSR / WRMSR                | [`MsrState`](crate::msr::MsrState) allow-list; anything else #GP(0) |
//! | nested page fault            | [`Action::EmulateMmio`]; strict MMIO or a fetch: stop, [`StopReason::NptViolation`] |
//! | triple fault                 | reset or stop ([`StopReason::Shutdown`]) per [`OnCrash`]      |
//! | VMRUN, VMCALL, VMLAUNCH...   | #UD: no nested virtualization, no hypercalls yet              |
//! | host interrupt               | resume (the backend let the host take it)                     |
//! | interrupt window open        | resume (the run loop injects before the next entry)           |
//! | intercepted exception        | re-inject the same vector and error code                      |
//! | VM entry failed              | stop, [`StopReason::EntryFailed`]                             |
//! | anything else                | stop, [`StopReason::UnhandledExit`]                           |
//!
//! Nested page faults: all of guest RAM is mapped read/write/execute when the VM is built, so
//! a fault is either an access outside RAM (a device register: the IOAPIC, the xAPIC page, or
//! an address no device claims, which reads all ones) or a mapping bug of ours. Finishing the
//! access needs the instruction and the guest's state and memory, which this handler does not
//! see: it answers [`Action::EmulateMmio`] and the run loop emulates the instruction
//! (`crate::vcpu::emulation`), which also stops the VM on a fault inside RAM. A VM in strict
//! MMIO mode ([`VmRuntime::strict_mmio`]) stops at any nested page fault instead, as every VM
//! did before MMIO was emulated (the kernel's `wild` test image relies on it).
//!
//! Events whose delivery an exit interrupted (SVM EXITINTINFO, VMX IDT-vectoring information)
//! are not part of [`Exit`]: the backend reports them next to it and the run loop
//! (`crate::vcpu::run`) re-injects them before the next entry.

use core::fmt;

use crate::devices::{IoSize, PortWrite};
use crate::msr::{GuestMsr, MsrEffect};
use crate::vm::{OnCrash, VmRuntime};

pub use crate::mem::GuestPhys;

/// Exception vector #UD (invalid opcode).
pub const VECTOR_UD: u8 = 6;
/// Exception vector #GP (general protection).
pub const VECTOR_GP: u8 = 13;

/// A VM exit, decoded by a backend into neutral terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exit {
    /// CPUID with EAX = `leaf`, ECX = `subleaf`.
    Cpuid {
        /// EAX.
        leaf: u32,
        /// ECX.
        subleaf: u32,
        /// RIP after the instruction.
        next_rip: u64,
    },
    /// HLT.
    Hlt {
        /// RIP after the instruction.
        next_rip: u64,
        /// RFLAGS.IF at the exit: whether an interrupt could ever wake the vCPU.
        interrupts_enabled: bool,
    },
    /// IN, OUT, INS, OUTS.
    Io {
        /// Port.
        port: u16,
        /// Width in bytes: 1, 2 or 4.
        size: u8,
        /// For OUT: the value (masked to `size`). `None` for IN and for string I/O.
        write: Option<u32>,
        /// INS/OUTS.
        string: bool,
        /// REP prefix.
        rep: bool,
        /// RIP after the instruction.
        next_rip: u64,
    },
    /// RDMSR (`write` is `None`) or WRMSR (`write` is EDX:EAX).
    Msr {
        /// ECX.
        index: u32,
        /// The value written.
        write: Option<u64>,
        /// RIP after the instruction.
        next_rip: u64,
    },
    /// RDPMC with ECX = `index`.
    Rdpmc {
        /// ECX.
        index: u32,
        /// RIP after the instruction.
        next_rip: u64,
    },
    /// Nested paging (NPT/EPT) refused an access.
    NestedPageFault {
        /// The guest-physical address.
        gpa: GuestPhys,
        /// A write access.
        write: bool,
        /// An instruction fetch.
        exec: bool,
    },
    /// The guest triple-faulted (SVM shutdown, VMX triple fault).
    TripleFault,
    /// The guest ran a virtualization instruction (VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI,
    /// CLGI, SKINIT, INVLPGA; VMCALL, VMLAUNCH, VMRESUME, VMPTRLD, VMREAD, VMXON, INVEPT...).
    VirtInstruction,
    /// A host interrupt (or NMI) made the guest exit; the host has handled it.
    ExternalInterrupt,
    /// The interrupt window the run loop asked for is open: the guest can take an external
    /// interrupt now (SVM VINTR with V_IRQ, VMX interrupt-window exiting).
    InterruptWindow,
    /// An intercepted exception.
    Exception {
        /// Vector 0–31.
        vector: u8,
        /// Its error code, for vectors that push one.
        error_code: Option<u32>,
    },
    /// VM entry failed (SVM VMEXIT_INVALID; VMX entry failure). The guest never ran.
    EntryFailed {
        /// Backend-defined detail (VMX: exit reason and qualification; SVM: the exit code).
        code: u64,
    },
    /// Anything the backend could not map; `code` is its raw exit code.
    Unknown {
        /// The backend's exit code.
        code: u64,
    },
}

impl Exit {
    /// The stats bucket this exit counts in.
    pub const fn kind(&self) -> ExitKind {
        match self {
            Exit::Cpuid { .. } => ExitKind::Cpuid,
            Exit::Hlt { .. } => ExitKind::Hlt,
            Exit::Io { .. } => ExitKind::Io,
            Exit::Msr { .. } | Exit::Rdpmc { .. } => ExitKind::Msr,
            Exit::NestedPageFault { .. } => ExitKind::Npf,
            Exit::TripleFault => ExitKind::TripleFault,
            Exit::VirtInstruction => ExitKind::VirtInsn,
            Exit::ExternalInterrupt | Exit::InterruptWindow => ExitKind::Intr,
            Exit::Exception { .. } => ExitKind::Exception,
            Exit::EntryFailed { .. } | Exit::Unknown { .. } => ExitKind::Other,
        }
    }
}

/// The guest registers [`handle`] reads (everything else it needs is in the [`Exit`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GuestView {
    /// RAX: IN merges into its low bytes.
    pub rax: u64,
    /// EFER as the guest sees it (without bits the backend adds for the hardware, such as
    /// EFER.SVME under SVM).
    pub efer: u64,
}

/// Guest state the backend writes before resuming. `None` leaves a register as it is.
///
/// Values are complete 64-bit register contents: results of 32-bit operations (CPUID, RDMSR,
/// IN EAX) are already zero-extended, results of 8- and 16-bit IN are already merged into RAX.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegUpdate {
    /// RAX.
    pub rax: Option<u64>,
    /// RBX.
    pub rbx: Option<u64>,
    /// RCX.
    pub rcx: Option<u64>,
    /// RDX.
    pub rdx: Option<u64>,
    /// Guest EFER (VMCB save.EFER, with SVME added by the backend; VMCS guest IA32_EFER and
    /// the "IA-32e mode guest" entry control kept in step).
    pub efer: Option<u64>,
    /// Guest PAT (VMCB G_PAT; VMCS guest IA32_PAT).
    pub pat: Option<u64>,
}

/// What the backend does after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Re-enter at the current RIP (the exit was not caused by an instruction).
    Resume,
    /// Re-enter at `rip` (past the emulated instruction).
    ResumeAt {
        /// Where.
        rip: u64,
    },
    /// Write `regs`, then re-enter at `rip`.
    ResumeWith {
        /// Where.
        rip: u64,
        /// What to write.
        regs: RegUpdate,
    },
    /// Inject an exception and re-enter at the current RIP (faults point at the faulting
    /// instruction).
    InjectException {
        /// Vector.
        vector: u8,
        /// Error code, if the vector pushes one.
        error_code: Option<u32>,
    },
    /// Set RIP to `rip` and put the vCPU to sleep until an event for it arrives (an interrupt
    /// to inject, or a command: stop, pause, reset). The VM stays running.
    Halt {
        /// RIP after the HLT.
        rip: u64,
    },
    /// The access faulted in nested paging at `gpa` (outside RAM, or a mapping bug): the run
    /// loop fetches and emulates the instruction at CS:RIP against the VM's devices.
    EmulateMmio {
        /// The faulting guest-physical address.
        gpa: GuestPhys,
    },
    /// INS or OUTS (with or without REP) at `port` of `size`: the run loop decodes the
    /// instruction for its direction, address size and segment and moves the elements
    /// through the guest's paging; `next_rip` is where the guest goes on when it completes.
    StringIo {
        /// The port (DX).
        port: u16,
        /// The element width.
        size: IoSize,
        /// RIP after the instruction.
        next_rip: u64,
    },
    /// Stop the VM.
    Stop(StopReason),
    /// Reset the VM (the kernel applies [`VmEvent::Reset`](crate::vm::VmEvent::Reset)).
    Reset(ResetTrigger),
}

/// Why a VM stopped. Some reasons are faults: the VM is then *crashed* rather than *stopped*
/// ([`is_fault`](Self::is_fault), [`VmState`](crate::vm::VmState)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// HLT with interrupts disabled: the guest is done.
    Halted,
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u32),
    /// Stopped through the API.
    Requested,
    /// A guest access nested paging refused (outside guest RAM, no device there).
    NptViolation {
        /// The address.
        gpa: GuestPhys,
    },
    /// VM entry failed.
    EntryFailed {
        /// Backend-defined detail.
        code: u64,
    },
    /// An exit the handler does not know.
    UnhandledExit {
        /// The backend's exit code.
        code: u64,
    },
    /// String I/O (INS/OUTS), or an I/O width other than 1, 2, 4.
    UnsupportedIo {
        /// The port.
        port: u16,
    },
    /// The guest triple-faulted and the VM's policy is [`OnCrash::Stop`].
    Shutdown,
    /// An access outside RAM by an instruction the MMIO emulator does not support (or bytes
    /// that do not decode).
    MmioUnsupported {
        /// The faulting guest-physical address.
        gpa: GuestPhys,
        /// The instruction's bytes (`bytes[..len]`).
        bytes: [u8; 15],
        /// How many of `bytes` are meaningful.
        len: u8,
    },
    /// The guest's page tables, its instruction bytes or a string-I/O element lie outside
    /// RAM (real hardware would read an open bus).
    NotRam {
        /// The first address outside RAM.
        gpa: GuestPhys,
    },
}

impl StopReason {
    /// Whether this reason means the guest crashed (or we failed it), as opposed to an orderly
    /// stop. Decides between [`VmState::Stopped`](crate::vm::VmState::Stopped) and
    /// [`VmState::Crashed`](crate::vm::VmState::Crashed).
    pub const fn is_fault(self) -> bool {
        !matches!(
            self,
            StopReason::Halted | StopReason::DebugExit(_) | StopReason::Requested
        )
    }

    /// A short machine-readable name (for JSON).
    pub const fn as_str(self) -> &'static str {
        match self {
            StopReason::Halted => "halted",
            StopReason::DebugExit(_) => "debug_exit",
            StopReason::Requested => "requested",
            StopReason::NptViolation { .. } => "npt_violation",
            StopReason::EntryFailed { .. } => "entry_failed",
            StopReason::UnhandledExit { .. } => "unhandled_exit",
            StopReason::UnsupportedIo { .. } => "unsupported_io",
            StopReason::Shutdown => "shutdown",
            StopReason::MmioUnsupported { .. } => "mmio_unsupported",
            StopReason::NotRam { .. } => "not_ram",
        }
    }

    /// Write the human-readable reason (same as `Display`).
    pub fn write_reason(&self, w: &mut impl fmt::Write) -> fmt::Result {
        match *self {
            StopReason::Halted => w.write_str("halted"),
            StopReason::DebugExit(code) => write!(w, "debug exit code {code}"),
            StopReason::Requested => w.write_str("stopped by request"),
            StopReason::NptViolation { gpa } => write!(w, "npt violation at GPA {gpa}"),
            StopReason::EntryFailed { code } => write!(w, "vm entry failed (code {code:#x})"),
            StopReason::UnhandledExit { code } => write!(w, "unhandled exit (code {code:#x})"),
            StopReason::UnsupportedIo { port } => write!(w, "unsupported I/O at port {port:#x}"),
            StopReason::Shutdown => w.write_str("shutdown (triple fault)"),
            StopReason::MmioUnsupported { gpa, bytes, len } => {
                write!(w, "unsupported MMIO instruction at GPA {gpa}:")?;
                for b in &bytes[..usize::from(len).min(bytes.len())] {
                    write!(w, " {b:02x}")?;
                }
                Ok(())
            }
            StopReason::NotRam { gpa } => write!(w, "guest access outside RAM at GPA {gpa}"),
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_reason(f)
    }
}

/// What asked for a VM reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResetTrigger {
    /// The control API.
    Api,
    /// A guest triple fault under [`OnCrash::Reset`].
    TripleFault,
    /// A write to the reset control register 0xCF9.
    Port0xCf9,
    /// The keyboard controller's reset command (0xFE to port 0x64).
    KeyboardController,
}

impl ResetTrigger {
    /// Number of triggers.
    pub const COUNT: usize = 4;
    /// Every trigger, in [`index`](Self::index) order.
    pub const ALL: [ResetTrigger; Self::COUNT] = [
        ResetTrigger::Api,
        ResetTrigger::TripleFault,
        ResetTrigger::Port0xCf9,
        ResetTrigger::KeyboardController,
    ];

    /// Position in per-trigger tables.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A short machine-readable name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ResetTrigger::Api => "api",
            ResetTrigger::TripleFault => "triple_fault",
            ResetTrigger::Port0xCf9 => "port_cf9",
            ResetTrigger::KeyboardController => "keyboard_controller",
        }
    }
}

/// Exit buckets for stats and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitKind {
    /// CPUID.
    Cpuid,
    /// Port I/O.
    Io,
    /// RDMSR/WRMSR.
    Msr,
    /// HLT.
    Hlt,
    /// Nested page fault.
    Npf,
    /// Triple fault.
    TripleFault,
    /// Virtualization instruction.
    VirtInsn,
    /// Host interrupt.
    Intr,
    /// Intercepted exception.
    Exception,
    /// Entry failures and unknown exits.
    Other,
}

impl ExitKind {
    /// Number of buckets.
    pub const COUNT: usize = 10;
    /// Every bucket, in [`index`](Self::index) order.
    pub const ALL: [ExitKind; Self::COUNT] = [
        ExitKind::Cpuid,
        ExitKind::Io,
        ExitKind::Msr,
        ExitKind::Hlt,
        ExitKind::Npf,
        ExitKind::TripleFault,
        ExitKind::VirtInsn,
        ExitKind::Intr,
        ExitKind::Exception,
        ExitKind::Other,
    ];

    /// Position in [`ExitStats`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ExitKind::Cpuid => "cpuid",
            ExitKind::Io => "io",
            ExitKind::Msr => "msr",
            ExitKind::Hlt => "hlt",
            ExitKind::Npf => "npf",
            ExitKind::TripleFault => "triple_fault",
            ExitKind::VirtInsn => "virt_insn",
            ExitKind::Intr => "intr",
            ExitKind::Exception => "exception",
            ExitKind::Other => "other",
        }
    }
}

/// Exits counted by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExitStats {
    counts: [u64; ExitKind::COUNT],
}

impl ExitStats {
    /// Count one exit.
    pub fn record(&mut self, kind: ExitKind) {
        let c = &mut self.counts[kind.index()];
        *c = c.saturating_add(1);
    }

    /// Exits of one kind.
    pub const fn get(&self, kind: ExitKind) -> u64 {
        self.counts[kind.index()]
    }

    /// All exits.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0, |a, &c| a.saturating_add(c))
    }

    /// `(kind, count)` for every kind, in [`ExitKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (ExitKind, u64)> + '_ {
        ExitKind::ALL.into_iter().map(|k| (k, self.get(k)))
    }
}

/// Decide what to do about `exit`. Counts the exit (and halts, unhandled port accesses) in
/// `vm.stats`; changes device and MSR state as the guest's access does.
pub fn handle(exit: &Exit, regs: &GuestView, vm: &mut VmRuntime) -> Action {
    vm.stats.exits.record(exit.kind());
    match *exit {
        Exit::Cpuid {
            leaf,
            subleaf,
            next_rip,
        } => {
            let [a, b, c, d] = vm.cpuid.get(leaf, subleaf);
            Action::ResumeWith {
                rip: next_rip,
                regs: RegUpdate {
                    rax: Some(a.into()),
                    rbx: Some(b.into()),
                    rcx: Some(c.into()),
                    rdx: Some(d.into()),
                    ..RegUpdate::default()
                },
            }
        }
        Exit::Hlt {
            next_rip,
            interrupts_enabled,
        } => {
            if interrupts_enabled {
                vm.stats.halts = vm.stats.halts.saturating_add(1);
                Action::Halt { rip: next_rip }
            } else {
                Action::Stop(StopReason::Halted)
            }
        }
        Exit::Io {
            port,
            size,
            write,
            string,
            rep: _,
            next_rip,
        } => io(port, size, write, string, next_rip, regs, vm),
        Exit::Msr {
            index,
            write: None,
            next_rip,
        } if vm.devices.handles_msr(index) => match vm.devices.msr_read(index) {
            Ok(value) => Action::ResumeWith {
                rip: next_rip,
                regs: RegUpdate {
                    rax: Some(value & 0xFFFF_FFFF),
                    rdx: Some(value >> 32),
                    ..RegUpdate::default()
                },
            },
            Err(_) => gp0(),
        },
        Exit::Msr {
            index,
            write: Some(value),
            next_rip,
        } if vm.devices.handles_msr(index) => match vm.devices.msr_write(index, value) {
            Ok(()) => Action::ResumeAt { rip: next_rip },
            Err(_) => gp0(),
        },
        Exit::Msr {
            index,
            write: None,
            next_rip,
        } => match vm.msrs.read(index, regs.efer) {
            Ok(value) => Action::ResumeWith {
                rip: next_rip,
                regs: RegUpdate {
                    rax: Some(value & 0xFFFF_FFFF),
                    rdx: Some(value >> 32),
                    ..RegUpdate::default()
                },
            },
            Err(_) => gp0(),
        },
        Exit::Msr {
            index,
            write: Some(value),
            next_rip,
        } => match vm.msrs.write(index, value, regs.efer) {
            Ok(MsrEffect::None) => Action::ResumeAt { rip: next_rip },
            Ok(MsrEffect::Load { msr, value }) => {
                let mut regs = RegUpdate::default();
                match msr {
                    GuestMsr::Efer => regs.efer = Some(value),
                    GuestMsr::Pat => regs.pat = Some(value),
                }
                Action::ResumeWith {
                    rip: next_rip,
                    regs,
                }
            }
            Err(_) => gp0(),
        },
        // Without a vPMU in the loop (see `VmPmu::handle_exit`) there are no counters: #GP, as
        // RDPMC of a counter that does not exist raises (SDM vol. 2B RDPMC; APM vol. 3 RDPMC).
        Exit::Rdpmc { .. } => gp0(),
        // Code does not run from device memory: an instruction fetch outside RAM cannot be
        // emulated.
        Exit::NestedPageFault { gpa, exec, .. } if vm.strict_mmio || exec => {
            Action::Stop(StopReason::NptViolation { gpa })
        }
        Exit::NestedPageFault { gpa, .. } => Action::EmulateMmio { gpa },
        Exit::TripleFault => match vm.on_crash {
            OnCrash::Reset => Action::Reset(ResetTrigger::TripleFault),
            OnCrash::Stop => Action::Stop(StopReason::Shutdown),
        },
        Exit::VirtInstruction => Action::InjectException {
            vector: VECTOR_UD,
            error_code: None,
        },
        // The run loop closes the window and injects before the next entry.
        Exit::ExternalInterrupt | Exit::InterruptWindow => Action::Resume,
        Exit::Exception { vector, error_code } => Action::InjectException { vector, error_code },
        Exit::EntryFailed { code } => Action::Stop(StopReason::EntryFailed { code }),
        Exit::Unknown { code } => Action::Stop(StopReason::UnhandledExit { code }),
    }
}

fn gp0() -> Action {
    Action::InjectException {
        vector: VECTOR_GP,
        error_code: Some(0),
    }
}

fn io(
    port: u16,
    size: u8,
    write: Option<u32>,
    string: bool,
    next_rip: u64,
    regs: &GuestView,
    vm: &mut VmRuntime,
) -> Action {
    let Some(size) = IoSize::from_bytes(size) else {
        return Action::Stop(StopReason::UnsupportedIo { port });
    };
    if string {
        return Action::StringIo {
            port,
            size,
            next_rip,
        };
    }
    let stats = &mut vm.stats;
    match write {
        Some(value) => match vm.devices.write(port, size, value) {
            PortWrite::Done => Action::ResumeAt { rip: next_rip },
            PortWrite::Unhandled => {
                stats.unhandled_port_writes = stats.unhandled_port_writes.saturating_add(1);
                Action::ResumeAt { rip: next_rip }
            }
            PortWrite::DebugExit(code) => Action::Stop(StopReason::DebugExit(code)),
            PortWrite::Reset(trigger) => Action::Reset(trigger),
        },
        None => {
            let read = vm.devices.read(port, size);
            if !read.handled {
                stats.unhandled_port_reads = stats.unhandled_port_reads.saturating_add(1);
            }
            // IN AL/AX keeps the rest of RAX; IN EAX zero-extends (a 32-bit register write).
            let rax = match size {
                IoSize::Dword => u64::from(read.value),
                _ => (regs.rax & !u64::from(size.mask())) | u64::from(read.value),
            };
            Action::ResumeWith {
                rip: next_rip,
                regs: RegUpdate {
                    rax: Some(rax),
                    ..RegUpdate::default()
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::CpuidView;
    use crate::msr::{EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE, PAT_RESET};

    const RIP: u64 = 0x1002;
    const LONG_MODE: u64 = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;

    fn runtime(on_crash: OnCrash) -> Box<VmRuntime> {
        // A small AMD host: leaf 1 with SSE2, APIC and x2APIC; SVM in 0x8000_0001.
        let cpuid = CpuidView::from_host(
            |leaf, _| match leaf {
                0 => [1, 0x6874_7541, 0x444D_4163, 0x6974_6E65],
                1 => [0x00A0_0F11, 0x0102_0800, 1 << 21, (1 << 26) | (1 << 9)],
                0x8000_0000 => [0x8000_0001, 0, 0, 0],
                0x8000_0001 => [0, 0, 1 << 2, 1 << 29],
                _ => [0; 4],
            },
            None,
        );
        Box::new(VmRuntime::new(cpuid, on_crash))
    }

    fn view() -> GuestView {
        GuestView {
            rax: 0xAAAA_BBBB_CCCC_DDDD,
            efer: LONG_MODE,
        }
    }

    fn rax(rip: u64, rax: u64) -> Action {
        Action::ResumeWith {
            rip,
            regs: RegUpdate {
                rax: Some(rax),
                ..RegUpdate::default()
            },
        }
    }

    fn gp() -> Action {
        Action::InjectException {
            vector: 13,
            error_code: Some(0),
        }
    }

    fn io_in(port: u16, size: u8) -> Exit {
        Exit::Io {
            port,
            size,
            write: None,
            string: false,
            rep: false,
            next_rip: RIP,
        }
    }

    fn io_out(port: u16, size: u8, value: u32) -> Exit {
        Exit::Io {
            port,
            size,
            write: Some(value),
            string: false,
            rep: false,
            next_rip: RIP,
        }
    }

    fn msr(index: u32, write: Option<u64>) -> Exit {
        Exit::Msr {
            index,
            write,
            next_rip: RIP,
        }
    }

    /// Every exit variant and policy: decoded exit in, action out, on a fresh VM each.
    #[test]
    fn exit_table() {
        use OnCrash::{Reset, Stop};
        let table: Vec<(OnCrash, Exit, Action)> = vec![
            (
                Stop,
                Exit::Cpuid {
                    leaf: 0x4000_0000,
                    subleaf: 0,
                    next_rip: RIP,
                },
                Action::ResumeWith {
                    rip: RIP,
                    regs: RegUpdate {
                        rax: Some(0x4000_0000),
                        rbx: Some(u32::from_le_bytes(*b"Herm").into()),
                        rcx: Some(u32::from_le_bytes(*b"itag").into()),
                        rdx: Some(u32::from_le_bytes(*b"eHV\0").into()),
                        ..RegUpdate::default()
                    },
                },
            ),
            (
                Stop,
                Exit::Hlt {
                    next_rip: RIP,
                    interrupts_enabled: true,
                },
                Action::Halt { rip: RIP },
            ),
            (
                Stop,
                Exit::Hlt {
                    next_rip: RIP,
                    interrupts_enabled: false,
                },
                Action::Stop(StopReason::Halted),
            ),
            // Port I/O.
            (Stop, io_out(0x3F8, 1, 0x41), Action::ResumeAt { rip: RIP }),
            (Stop, io_in(0x3FD, 1), rax(RIP, 0xAAAA_BBBB_CCCC_DD60)),
            (Stop, io_in(0x3FA, 1), rax(RIP, 0xAAAA_BBBB_CCCC_DD01)),
            (Stop, io_in(0x70, 1), rax(RIP, 0xAAAA_BBBB_CCCC_DDFF)),
            (Stop, io_in(0x2F8, 2), rax(RIP, 0xAAAA_BBBB_CCCC_FFFF)),
            // The PIT in its reset state: counter 0 reads 0.
            (Stop, io_in(0x40, 1), rax(RIP, 0xAAAA_BBBB_CCCC_DD00)),
            (Stop, io_in(0xCFC, 4), rax(RIP, 0xFFFF_FFFF)),
            (Stop, io_out(0x80, 1, 0x12), Action::ResumeAt { rip: RIP }),
            (
                Stop,
                io_out(0xF4, 4, 1),
                Action::Stop(StopReason::DebugExit(1)),
            ),
            (
                Stop,
                io_out(0xF4, 1, 0),
                Action::Stop(StopReason::DebugExit(0)),
            ),
            (
                Stop,
                io_out(0xCF9, 1, 0x06),
                Action::Reset(ResetTrigger::Port0xCf9),
            ),
            (Stop, io_out(0xCF9, 1, 0x02), Action::ResumeAt { rip: RIP }),
            (
                Stop,
                io_out(0x64, 1, 0xFE),
                Action::Reset(ResetTrigger::KeyboardController),
            ),
            (Stop, io_in(0x64, 1), rax(RIP, 0xAAAA_BBBB_CCCC_DD1C)),
            (
                Stop,
                Exit::Io {
                    port: 0x3F8,
                    size: 1,
                    write: None,
                    string: true,
                    rep: true,
                    next_rip: RIP,
                },
                Action::StringIo {
                    port: 0x3F8,
                    size: IoSize::Byte,
                    next_rip: RIP,
                },
            ),
            (
                Stop,
                io_out(0x3F8, 3, 0),
                Action::Stop(StopReason::UnsupportedIo { port: 0x3F8 }),
            ),
            // MSRs.
            (
                Stop,
                msr(0x277, None),
                Action::ResumeWith {
                    rip: RIP,
                    regs: RegUpdate {
                        rax: Some(PAT_RESET & 0xFFFF_FFFF),
                        rdx: Some(PAT_RESET >> 32),
                        ..RegUpdate::default()
                    },
                },
            ),
            (
                Stop,
                msr(0xC000_0080, None),
                Action::ResumeWith {
                    rip: RIP,
                    regs: RegUpdate {
                        rax: Some(LONG_MODE),
                        rdx: Some(0),
                        ..RegUpdate::default()
                    },
                },
            ),
            (
                Stop,
                msr(0x277, Some(0x0606_0606_0606_0606)),
                Action::ResumeWith {
                    rip: RIP,
                    regs: RegUpdate {
                        pat: Some(0x0606_0606_0606_0606),
                        ..RegUpdate::default()
                    },
                },
            ),
            (
                Stop,
                msr(0xC000_0080, Some(LONG_MODE)),
                Action::ResumeWith {
                    rip: RIP,
                    regs: RegUpdate {
                        efer: Some(LONG_MODE),
                        ..RegUpdate::default()
                    },
                },
            ),
            (Stop, msr(0x2FF, Some(0x806)), Action::ResumeAt { rip: RIP }),
            (Stop, msr(0x277, Some(0x02)), gp()),
            (Stop, msr(0xC000_0080, Some(LONG_MODE | 1 << 12)), gp()),
            (Stop, msr(0x1B, None), gp()),
            (Stop, msr(0xC001_0114, Some(0)), gp()),
            (Stop, msr(0x3A, None), gp()), // Intel-only, and this VM sees AMD
            // Faults and the rest.
            (
                Stop,
                Exit::NestedPageFault {
                    gpa: GuestPhys(0xFEE0_0000),
                    write: true,
                    exec: false,
                },
                Action::EmulateMmio {
                    gpa: GuestPhys(0xFEE0_0000),
                },
            ),
            (
                Reset,
                Exit::TripleFault,
                Action::Reset(ResetTrigger::TripleFault),
            ),
            (Stop, Exit::TripleFault, Action::Stop(StopReason::Shutdown)),
            (
                Stop,
                Exit::VirtInstruction,
                Action::InjectException {
                    vector: 6,
                    error_code: None,
                },
            ),
            (Stop, Exit::ExternalInterrupt, Action::Resume),
            (Stop, Exit::InterruptWindow, Action::Resume),
            (
                Stop,
                Exit::Exception {
                    vector: 13,
                    error_code: Some(0x18),
                },
                Action::InjectException {
                    vector: 13,
                    error_code: Some(0x18),
                },
            ),
            (
                Reset,
                Exit::Exception {
                    vector: 3,
                    error_code: None,
                },
                Action::InjectException {
                    vector: 3,
                    error_code: None,
                },
            ),
            (
                Stop,
                Exit::EntryFailed { code: 33 },
                Action::Stop(StopReason::EntryFailed { code: 33 }),
            ),
            (
                Reset,
                Exit::Unknown { code: 0x7E },
                Action::Stop(StopReason::UnhandledExit { code: 0x7E }),
            ),
        ];
        for (policy, exit, expected) in table {
            let mut vm = runtime(policy);
            assert_eq!(
                handle(&exit, &view(), &mut vm),
                expected,
                "{exit:?} ({policy:?})"
            );
            assert_eq!(vm.stats.exits.get(exit.kind()), 1);
            assert_eq!(vm.stats.exits.total(), 1);
        }
    }

    /// Strict MMIO: a nested page fault stops the VM with the address, as before emulation.
    #[test]
    fn strict_mmio_stops_at_a_nested_page_fault() {
        let npf = Exit::NestedPageFault {
            gpa: GuestPhys(0xE000_0000),
            write: false,
            exec: false,
        };
        let mut vm = runtime(OnCrash::Stop);
        assert_eq!(
            handle(&npf, &view(), &mut vm),
            Action::EmulateMmio {
                gpa: GuestPhys(0xE000_0000)
            }
        );
        vm.strict_mmio = true;
        assert_eq!(
            handle(&npf, &view(), &mut vm),
            Action::Stop(StopReason::NptViolation {
                gpa: GuestPhys(0xE000_0000)
            })
        );
        assert_eq!(vm.stats.exits.get(ExitKind::Npf), 2);
    }

    #[test]
    fn cpuid_exit_uses_the_view() {
        let mut vm = runtime(OnCrash::Stop);
        let leaf1 = Exit::Cpuid {
            leaf: 1,
            subleaf: 0,
            next_rip: RIP,
        };
        let Action::ResumeWith { rip, regs } = handle(&leaf1, &view(), &mut vm) else {
            panic!("cpuid resumes with registers");
        };
        assert_eq!(rip, RIP);
        let (ebx, ecx, edx) = (regs.rbx.unwrap(), regs.rcx.unwrap(), regs.rdx.unwrap());
        assert_eq!(ebx >> 24, 0, "APIC ID 0");
        assert_eq!(ecx, 1 << 31, "hypervisor bit, x2APIC gone");
        assert_eq!(edx, 1 << 26, "SSE2 kept, APIC gone");
        let ext = Exit::Cpuid {
            leaf: 0x8000_0001,
            subleaf: 0,
            next_rip: RIP,
        };
        let Action::ResumeWith { regs, .. } = handle(&ext, &view(), &mut vm) else {
            panic!();
        };
        assert_eq!(regs.rcx, Some(0), "SVM hidden");
        assert_eq!(regs.rdx, Some(1 << 29), "LM kept");
    }

    #[test]
    fn console_output_and_stats() {
        let mut vm = runtime(OnCrash::Stop);
        for &b in b"ok\n" {
            assert_eq!(
                handle(&io_in(0x3FD, 1), &view(), &mut vm),
                rax(RIP, 0xAAAA_BBBB_CCCC_DD60)
            );
            handle(&io_out(0x3F8, 1, b.into()), &view(), &mut vm);
        }
        let mut out = [0; 8];
        let r = vm.devices.console.read(0, &mut out);
        assert_eq!(&out[..r.copied], b"ok\n");
        handle(&io_in(0x2F9, 1), &view(), &mut vm);
        handle(&io_out(0x2F8, 1, 0x8F), &view(), &mut vm);
        handle(&io_out(0x2FA, 1, 0xFF), &view(), &mut vm);
        // Chipset ports are handled: not counted.
        handle(&io_out(0x21, 1, 0xFF), &view(), &mut vm);
        handle(&io_in(0x71, 1), &view(), &mut vm);
        handle(
            &Exit::Hlt {
                next_rip: RIP,
                interrupts_enabled: true,
            },
            &view(),
            &mut vm,
        );
        let s = &vm.stats;
        assert_eq!((s.unhandled_port_reads, s.unhandled_port_writes), (1, 2));
        assert_eq!(s.halts, 1);
        assert_eq!(s.exits.get(ExitKind::Io), 11);
        assert_eq!(s.exits.get(ExitKind::Hlt), 1);
        let listed: Vec<_> = s.exits.iter().filter(|e| e.1 > 0).collect();
        assert_eq!(listed, [(ExitKind::Io, 11), (ExitKind::Hlt, 1)]);
    }

    #[test]
    fn in_merges_into_rax_by_width() {
        let mut vm = runtime(OnCrash::Stop);
        vm.devices.write(0x3FF, IoSize::Byte, 0x5A);
        let v = view();
        assert_eq!(
            handle(&io_in(0x3FF, 1), &v, &mut vm),
            rax(RIP, 0xAAAA_BBBB_CCCC_DD5A)
        );
        assert_eq!(
            handle(&io_in(0x3FE, 2), &v, &mut vm),
            rax(RIP, 0xAAAA_BBBB_CCCC_5AB0)
        );
        assert_eq!(handle(&io_in(0x3FC, 4), &v, &mut vm), rax(RIP, 0x5AB0_6000));
    }

    #[test]
    fn refused_msr_write_changes_nothing() {
        let mut vm = runtime(OnCrash::Stop);
        assert_eq!(handle(&msr(0x277, Some(0x08)), &view(), &mut vm), gp());
        assert_eq!(vm.msrs.pat(), PAT_RESET);
        assert_eq!(vm.stats.exits.get(ExitKind::Msr), 1);
    }

    #[test]
    fn names_and_reasons() {
        let kinds: Vec<_> = ExitKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "cpuid",
                "io",
                "msr",
                "hlt",
                "npf",
                "triple_fault",
                "virt_insn",
                "intr",
                "exception",
                "other"
            ]
        );
        for (i, k) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        for (i, t) in ResetTrigger::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
        }
        let table = [
            (StopReason::Halted, "halted", false),
            (StopReason::DebugExit(1), "debug exit code 1", false),
            (StopReason::Requested, "stopped by request", false),
            (
                StopReason::NptViolation {
                    gpa: GuestPhys(0x1234_5000),
                },
                "npt violation at GPA 0x12345000",
                true,
            ),
            (
                StopReason::EntryFailed { code: 0x21 },
                "vm entry failed (code 0x21)",
                true,
            ),
            (
                StopReason::UnhandledExit { code: 0x7E },
                "unhandled exit (code 0x7e)",
                true,
            ),
            (
                StopReason::UnsupportedIo { port: 0x1F0 },
                "unsupported I/O at port 0x1f0",
                true,
            ),
            (StopReason::Shutdown, "shutdown (triple fault)", true),
            (
                StopReason::MmioUnsupported {
                    gpa: GuestPhys(0xFEC0_0010),
                    bytes: [0x0F, 0x01, 0xF8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    len: 3,
                },
                "unsupported MMIO instruction at GPA 0xfec00010: 0f 01 f8",
                true,
            ),
            (
                StopReason::NotRam {
                    gpa: GuestPhys(0x8000_0000),
                },
                "guest access outside RAM at GPA 0x80000000",
                true,
            ),
        ];
        for (reason, text, fault) in table {
            assert_eq!(reason.to_string(), text);
            assert_eq!(reason.is_fault(), fault, "{text}");
            let mut s = String::new();
            reason.write_reason(&mut s).unwrap();
            assert_eq!(s, text);
        }
        assert_eq!(ResetTrigger::Port0xCf9.as_str(), "port_cf9");
    }
}
