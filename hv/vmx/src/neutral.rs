//! Decoded VMX exits in the core's neutral vocabulary (`hv::exit::Exit`).
//!
//! Why here: the mapping is a decision (which VMX exits are "a host interrupt", what an entry
//! failure reports, which guest registers an exit's operands come from), so it is a pure
//! function tested as a table (STYLE.md points 1 and 2); the kernel's VMX vCPU only calls it
//! with what it read at the exit.
#![forbid(unsafe_code)]

use hv::exit::{Exit, GuestPhys};
use hv::vcpu::run::{self, EventKind, Exited};

use crate::exit::{DecodedExit, Event, EventType, VmxExit};
use crate::regs::GuestRegs;

/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;

/// What the mapping needs besides the decoded exit: read once at the exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExitContext {
    /// The full exit-reason field (bit 31: VM-entry failure).
    pub reason: u32,
    /// Guest RFLAGS at the exit.
    pub rflags: u64,
}

/// The `EntryFailed` code of a VM-entry failure after guest state was loaded: the exit-reason
/// field (with bit 31) in bits 63:32, the exit qualification's low 32 bits below (for reason 33
/// "invalid guest state": 0 unspecified, 2 PDPTE load, 3 NMI injection, 4 VMCS link pointer;
/// for 34 "MSR loading": the failing entry). VMLAUNCH/VMRESUME failures that never load guest
/// state are reported by the kernel with the VM-instruction error number instead (1-28).
pub const fn entry_failure_code(reason: u32, qualification: u64) -> u64 {
    ((reason as u64) << 32) | (qualification & 0xFFFF_FFFF)
}

/// Map a decoded exit onto the neutral exit. `regs` are the guest GPRs saved at the exit.
pub fn to_neutral(d: &DecodedExit, regs: &GuestRegs, ctx: ExitContext) -> Exit {
    match d.exit {
        VmxExit::Cpuid { next_rip } => Exit::Cpuid {
            leaf: regs.rax as u32,
            subleaf: regs.rcx as u32,
            next_rip,
        },
        VmxExit::Hlt { next_rip } => Exit::Hlt {
            next_rip,
            interrupts_enabled: ctx.rflags & RFLAGS_IF != 0,
        },
        VmxExit::Io(io) => Exit::Io {
            port: io.port,
            size: io.size,
            write: if io.write && !io.string {
                io.value.or(Some(regs.rax as u32))
            } else {
                None
            },
            string: io.string,
            rep: io.rep,
            next_rip: io.next_rip,
        },
        VmxExit::Msr(m) => Exit::Msr {
            index: m.index,
            write: m.write,
            next_rip: m.next_rip,
        },
        VmxExit::EptViolation(v) => Exit::NestedPageFault {
            gpa: GuestPhys(v.gpa.as_u64()),
            write: v.write(),
            exec: v.exec(),
        },
        VmxExit::Rdpmc { next_rip } => Exit::Rdpmc {
            index: regs.rcx as u32,
            next_rip,
        },
        VmxExit::TripleFault => Exit::TripleFault,
        // No nested virtualization and no hypercalls: the handler injects #UD.
        VmxExit::Vmcall { .. } | VmxExit::VmxInstruction(_) => Exit::VirtInstruction,
        // The host's business (the kernel dispatched an acknowledged vector or NMI already);
        // the VMX-preemption timer is the slice's budget running out.
        VmxExit::ExternalInterrupt { .. }
        | VmxExit::Nmi
        | VmxExit::InitSignal
        | VmxExit::NmiWindow
        | VmxExit::PreemptionTimer => Exit::ExternalInterrupt,
        // Interrupt-window exiting, which the run loop turns on while an interrupt waits.
        VmxExit::InterruptWindow => Exit::InterruptWindow,
        VmxExit::Exception {
            vector, error_code, ..
        } => Exit::Exception { vector, error_code },
        VmxExit::EntryFailure { qualification, .. } => Exit::EntryFailed {
            code: entry_failure_code(ctx.reason, qualification),
        },
        // EPT misconfiguration (our bug), RDPMC, other instruction intercepts we do not
        // enable, SIPI, task switches: the raw reason, and the handler stops the VM.
        _ => Exit::Unknown {
            code: u64::from(ctx.reason),
        },
    }
}

/// The IDT-vectoring event to deliver again (SDM vol. 3C 28.2.4 "Information for VM Exits
/// That Occur During Event Delivery"): every kind, software ones with the exit's instruction
/// length `insn_len` (VM entry needs it to push the right return address).
pub fn reinjected(e: Event, insn_len: u32) -> Option<run::Event> {
    let kind = match e.kind {
        EventType::ExternalInterrupt => EventKind::External,
        EventType::Nmi => EventKind::Nmi,
        EventType::HardwareException => EventKind::Exception,
        EventType::SoftwareInterrupt => EventKind::SoftwareInterrupt,
        EventType::SoftwareException => EventKind::SoftwareException,
        EventType::PrivilegedSoftwareException => EventKind::PrivilegedSoftwareException,
        EventType::Other | EventType::Reserved => return None,
    };
    Some(run::Event {
        kind,
        vector: e.vector,
        error_code: e.error_code,
        insn_len: insn_len.min(15) as u8,
    })
}

/// The decoded exit and its interrupted event, neutral.
pub fn exited(d: &DecodedExit, regs: &GuestRegs, ctx: ExitContext, insn_len: u32) -> Exited {
    Exited {
        exit: to_neutral(d, regs, ctx),
        interrupted: d.interrupted_event.and_then(|e| reinjected(e, insn_len)),
    }
}

/// The VM-entry interruption information for a neutral event, with the instruction length
/// for software events. Hardware exceptions carry an error code exactly when their vector
/// pushes one (VM entry checks it, SDM vol. 3C 27.2.1.3).
pub fn injection(e: run::Event) -> (Event, u32) {
    let kind = match e.kind {
        EventKind::External => EventType::ExternalInterrupt,
        EventKind::Nmi => EventType::Nmi,
        EventKind::Exception => EventType::HardwareException,
        EventKind::SoftwareInterrupt => EventType::SoftwareInterrupt,
        EventKind::SoftwareException => EventType::SoftwareException,
        EventKind::PrivilegedSoftwareException => EventType::PrivilegedSoftwareException,
    };
    let error_code = match kind {
        EventType::HardwareException => {
            crate::exit::exception_has_error_code(e.vector).then(|| e.error_code.unwrap_or(0))
        }
        _ => None,
    };
    let software = matches!(
        kind,
        EventType::SoftwareInterrupt
            | EventType::SoftwareException
            | EventType::PrivilegedSoftwareException
    );
    (
        Event {
            kind,
            vector: e.vector,
            error_code,
            nmi_unblocking: false,
        },
        if software { u32::from(e.insn_len) } else { 0 },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{ExitSnapshot, decode};

    fn snap(reason: u32, qualification: u64, len: u32) -> ExitSnapshot {
        ExitSnapshot {
            reason,
            qualification,
            instruction_length: len,
            rip: 0x1000,
            ..ExitSnapshot::default()
        }
    }

    fn map(s: ExitSnapshot, regs: GuestRegs, rflags: u64) -> Exit {
        let s = ExitSnapshot {
            rax: regs.rax,
            rcx: regs.rcx,
            rdx: regs.rdx,
            ..s
        };
        to_neutral(
            &decode(&s),
            &regs,
            ExitContext {
                reason: s.reason,
                rflags,
            },
        )
    }

    #[test]
    fn table() {
        let regs = GuestRegs {
            rax: 0x1_0000_0041,
            rcx: 0x1_0000_0007,
            rdx: 0x1_2345_6789,
            ..GuestRegs::default()
        };
        let rows: &[(ExitSnapshot, u64, Exit)] = &[
            // CPUID (10): leaf/subleaf from EAX/ECX, next RIP from the instruction length.
            (
                snap(10, 0, 2),
                0,
                Exit::Cpuid {
                    leaf: 0x41,
                    subleaf: 7,
                    next_rip: 0x1002,
                },
            ),
            // HLT (12) with IF = 1 and IF = 0.
            (
                snap(12, 0, 1),
                0x202,
                Exit::Hlt {
                    next_rip: 0x1001,
                    interrupts_enabled: true,
                },
            ),
            (
                snap(12, 0, 1),
                0x2,
                Exit::Hlt {
                    next_rip: 0x1001,
                    interrupts_enabled: false,
                },
            ),
            // OUT DX, AL to 0x3F8 (30): size 1, port in 31:16; value = AL.
            (
                snap(30, 0x03F8_0000, 1),
                0x2,
                Exit::Io {
                    port: 0x3F8,
                    size: 1,
                    write: Some(0x41),
                    string: false,
                    rep: false,
                    next_rip: 0x1001,
                },
            ),
            // IN EAX, 0x510 (size 4 = code 3, direction in).
            (
                snap(30, 0x0510_0000 | 0x8 | 0x3 | 0x40, 2),
                0x2,
                Exit::Io {
                    port: 0x510,
                    size: 4,
                    write: None,
                    string: false,
                    rep: false,
                    next_rip: 0x1002,
                },
            ),
            // RDMSR (31) / WRMSR (32): index from ECX, value EDX:EAX.
            (
                snap(31, 0, 2),
                0x2,
                Exit::Msr {
                    index: 7,
                    write: None,
                    next_rip: 0x1002,
                },
            ),
            (
                snap(32, 0, 2),
                0x2,
                Exit::Msr {
                    index: 7,
                    write: Some(0x2345_6789_0000_0041),
                    next_rip: 0x1002,
                },
            ),
            (snap(2, 0, 0), 0x2, Exit::TripleFault),
            (
                snap(15, 0, 2),
                0x2,
                Exit::Rdpmc {
                    index: 7,
                    next_rip: 0x1002,
                },
            ),
            // VMCALL (18), VMLAUNCH (20): #UD by the handler.
            (snap(18, 0, 3), 0x2, Exit::VirtInstruction),
            (snap(20, 0, 3), 0x2, Exit::VirtInstruction),
            // External interrupt (1) and the preemption timer (52): the host's.
            (snap(1, 0, 0), 0x2, Exit::ExternalInterrupt),
            (snap(52, 0, 0), 0x2, Exit::ExternalInterrupt),
            // Interrupt window (7): the run loop's.
            (snap(7, 0, 0), 0x2, Exit::InterruptWindow),
            // Entry failure: invalid guest state (33 | bit 31), qualification 4.
            (
                snap(33 | (1 << 31), 4, 0),
                0x2,
                Exit::EntryFailed {
                    code: 0x8000_0021_0000_0004,
                },
            ),
            // EPT misconfiguration (49): our bug, reported raw.
            (snap(49, 0, 0), 0x2, Exit::Unknown { code: 49 }),
        ];
        for (s, rflags, want) in rows {
            assert_eq!(map(*s, regs, *rflags), *want, "reason {}", s.reason);
        }
    }

    #[test]
    fn ept_violation_and_exception() {
        let s = ExitSnapshot {
            reason: 48,
            qualification: 0x2, // write
            guest_physical_address: 0xFEE0_0000,
            ..ExitSnapshot::default()
        };
        assert_eq!(
            map(s, GuestRegs::default(), 0x2),
            Exit::NestedPageFault {
                gpa: GuestPhys(0xFEE0_0000),
                write: true,
                exec: false,
            }
        );
        // #GP(0) from the exception bitmap: interruption info valid | hardware exception |
        // error code valid | vector 13.
        let s = ExitSnapshot {
            reason: 0,
            interruption_info: (1 << 31) | (3 << 8) | (1 << 11) | 13,
            interruption_error_code: 0,
            ..ExitSnapshot::default()
        };
        assert_eq!(
            map(s, GuestRegs::default(), 0x2),
            Exit::Exception {
                vector: 13,
                error_code: Some(0),
            }
        );
    }

    #[test]
    fn interrupted_events_and_injection() {
        // #PF(2) cut short by an EPT violation: delivered again with its error code.
        let s = ExitSnapshot {
            reason: 48,
            idt_vectoring_info: (1 << 31) | (3 << 8) | (1 << 11) | 14,
            idt_vectoring_error_code: 2,
            ..ExitSnapshot::default()
        };
        let e = exited(
            &decode(&s),
            &GuestRegs::default(),
            ExitContext::default(),
            0,
        );
        assert_eq!(e.interrupted, Some(run::Event::exception(14, Some(2))));
        // INT 0x80 (type 4) cut short: delivered again with the instruction length.
        let s = ExitSnapshot {
            reason: 48,
            idt_vectoring_info: (1 << 31) | (4 << 8) | 0x80,
            ..ExitSnapshot::default()
        };
        let e = exited(
            &decode(&s),
            &GuestRegs::default(),
            ExitContext::default(),
            2,
        );
        let int80 = e.interrupted.unwrap();
        assert_eq!(
            (int80.kind, int80.vector, int80.insn_len),
            (EventKind::SoftwareInterrupt, 0x80, 2)
        );
        assert_eq!(injection(int80).0.injection(), (0x8000_0480, 0));
        assert_eq!(injection(int80).1, 2);
        // Nothing in flight.
        let e = exited(
            &decode(&snap(10, 0, 2)),
            &GuestRegs::default(),
            ExitContext::default(),
            2,
        );
        assert_eq!(e.interrupted, None);
        // External 0x20, NMI, #GP(0), #UD (an error code given for it is dropped).
        assert_eq!(
            injection(run::Event::external(0x20)),
            (
                Event {
                    kind: EventType::ExternalInterrupt,
                    vector: 0x20,
                    error_code: None,
                    nmi_unblocking: false
                },
                0
            )
        );
        assert_eq!(
            injection(run::Event::external(0x20)).0.injection(),
            (0x8000_0020, 0)
        );
        assert_eq!(injection(run::Event::NMI).0.injection(), (0x8000_0202, 0));
        assert_eq!(
            injection(run::Event::exception(13, Some(0))).0.injection(),
            (0x8000_0B0D, 0)
        );
        assert_eq!(
            injection(run::Event::exception(6, Some(5))).0.injection(),
            (0x8000_0306, 0)
        );
        // #DF without a code given still pushes one (0).
        assert_eq!(
            injection(run::Event::exception(8, None)).0.injection(),
            (0x8000_0B08, 0)
        );
    }
}
