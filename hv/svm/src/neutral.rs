//! Decoded SVM exits and events in the core's neutral vocabulary (`hv::exit::Exit`,
//! `hv::vcpu::run::Event`), the counterpart of `hv/vmx/src/neutral.rs`.
//!
//! Why here: the mapping is a decision (which exits are "a host interrupt", where an exit's
//! operands come from, which interrupted events are delivered again), so it is a pure function
//! tested as a table (STYLE.md points 1, 2 and 12); the kernel's SVM vCPU only calls it with
//! what it read at the exit.
//!
//! Re-injection (APM vol. 2 15.7.2 "Intercepts During IDT Interrupt Delivery"): an exit taken
//! while an event was being delivered reports it in EXITINTINFO, and the event must be
//! delivered again. External interrupts, NMIs and hardware exceptions are re-injected as they
//! are; software interrupts (INT n) and the software exceptions INT3/INTO are not, because the
//! guest's RIP still points at the instruction, which raises them again when it re-executes
//! (the choice KVM makes without NRIPS-based soft-interrupt injection).
#![forbid(unsafe_code)]

use hv::exit::{Exit, GuestPhys};
use hv::vcpu::run::{self, EventKind, Exited};

use crate::exit::{DecodedExit, SvmExit};
use crate::insn_len::SkipInsn;
use crate::vmcb::{Event, EventType};

/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;

/// What the mapping needs besides the decoded exit: read once at the exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExitContext {
    /// EXITCODE (for `EntryFailed` and `Unknown`).
    pub exit_code: u64,
    /// Guest RAX (VMCB save area).
    pub rax: u64,
    /// Guest RCX.
    pub rcx: u64,
    /// Guest RFLAGS.
    pub rflags: u64,
}

/// Map a decoded exit onto the neutral exit.
pub fn to_neutral(d: &DecodedExit, ctx: ExitContext) -> Exit {
    match d.exit {
        SvmExit::Cpuid { next_rip } => Exit::Cpuid {
            leaf: ctx.rax as u32,
            subleaf: ctx.rcx as u32,
            next_rip,
        },
        SvmExit::Hlt { next_rip } => Exit::Hlt {
            next_rip,
            interrupts_enabled: ctx.rflags & RFLAGS_IF != 0,
        },
        SvmExit::Io(io) => Exit::Io {
            port: io.port,
            size: io.size,
            // OUTS takes its data from memory, not RAX: no value, as under VMX.
            write: if io.write && !io.string {
                io.value.or(Some(ctx.rax as u32))
            } else {
                None
            },
            string: io.string,
            rep: io.rep,
            next_rip: io.next_rip,
        },
        SvmExit::Msr(m) => Exit::Msr {
            index: m.index,
            write: m.write,
            next_rip: m.next_rip,
        },
        SvmExit::NestedPageFault(npf) => Exit::NestedPageFault {
            gpa: GuestPhys(npf.gpa.as_u64()),
            write: npf.write(),
            exec: npf.exec(),
        },
        SvmExit::Skip {
            insn: SkipInsn::Rdpmc,
            next_rip,
        } => Exit::Rdpmc {
            index: ctx.rcx as u32,
            next_rip,
        },
        SvmExit::Shutdown => Exit::TripleFault,
        // No nested virtualization and no hypercalls: the handler injects #UD.
        SvmExit::Vmmcall { .. } | SvmExit::SvmInstruction(_) => Exit::VirtInstruction,
        // The host's business: it takes them once GIF is set again after #VMEXIT.
        SvmExit::Intr | SvmExit::Nmi | SvmExit::Smi | SvmExit::Init => Exit::ExternalInterrupt,
        // V_IRQ was taken: the window the run loop asked for.
        SvmExit::Vintr => Exit::InterruptWindow,
        SvmExit::Exception {
            vector, error_code, ..
        } => Exit::Exception { vector, error_code },
        SvmExit::VmrunFailed => Exit::EntryFailed {
            code: ctx.exit_code,
        },
        _ => Exit::Unknown {
            code: ctx.exit_code,
        },
    }
}

/// The EXITINTINFO event to deliver again, if any (see the module docs).
pub fn reinjected(e: Event) -> Option<run::Event> {
    let kind = match e.kind {
        EventType::Intr => EventKind::External,
        EventType::Nmi => EventKind::Nmi,
        // INT3 and INTO are reported as exceptions: re-executed, not re-injected.
        EventType::Exception if matches!(e.vector, 3 | 4) => return None,
        EventType::Exception => EventKind::Exception,
        EventType::SoftwareInt => return None,
    };
    Some(run::Event {
        kind,
        vector: e.vector,
        error_code: e.error_code,
        insn_len: 0,
    })
}

/// The decoded exit and its interrupted event, neutral.
pub fn exited(d: &DecodedExit, ctx: ExitContext) -> Exited {
    Exited {
        exit: to_neutral(d, ctx),
        interrupted: d.interrupted_event.and_then(reinjected),
    }
}

/// EVENTINJ for a neutral event (APM 15.20). Software exceptions and INT1 are injected as
/// exceptions (type 3), INT n as a software interrupt (type 4).
pub const fn injection(e: run::Event) -> Event {
    let kind = match e.kind {
        EventKind::External => EventType::Intr,
        EventKind::Nmi => EventType::Nmi,
        EventKind::Exception
        | EventKind::SoftwareException
        | EventKind::PrivilegedSoftwareException => EventType::Exception,
        EventKind::SoftwareInterrupt => EventType::SoftwareInt,
    };
    Event {
        vector: e.vector,
        kind,
        error_code: e.error_code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{ExitSnapshot, decode};
    use crate::insn_len::CodeSize;
    use crate::insn_len::InsnBytes;

    fn snap(code: u64, info1: u64, info2: u64) -> ExitSnapshot {
        ExitSnapshot {
            exit_code: code,
            exit_info1: info1,
            exit_info2: info2,
            exit_int_info: 0,
            next_rip: Some(0x1002),
            rip: 0x1000,
            rax: 0x1_0000_0041,
            rcx: 0x1_0000_0007,
            rdx: 0x1_2345_6789,
            code_size: CodeSize::Bits32,
            insn: None,
        }
    }

    fn map(s: ExitSnapshot, rflags: u64) -> Exit {
        to_neutral(
            &decode(&s).unwrap(),
            ExitContext {
                exit_code: s.exit_code,
                rax: s.rax,
                rcx: s.rcx,
                rflags,
            },
        )
    }

    /// EXITINFO1 of an IOIO exit (APM 15.10.2, figure 15-2): port 31:16, SZ32 6, SZ16 5, SZ8
    /// 4, A32 8, REP 3, STR 2, TYPE 0 (1 = IN).
    fn ioio(port: u16, sz: u64, string: bool, rep: bool, input: bool) -> u64 {
        (u64::from(port) << 16)
            | (1 << sz)
            | (1 << 8)
            | (u64::from(rep) << 3)
            | (u64::from(string) << 2)
            | u64::from(input)
    }

    #[test]
    fn table() {
        let rows: &[(ExitSnapshot, u64, Exit)] = &[
            // CPUID (0x72): leaf and subleaf from EAX and ECX, nRIP.
            (
                snap(0x72, 0, 0),
                0x2,
                Exit::Cpuid {
                    leaf: 0x41,
                    subleaf: 7,
                    next_rip: 0x1002,
                },
            ),
            // HLT (0x78), IF from RFLAGS.
            (
                snap(0x78, 0, 0),
                0x202,
                Exit::Hlt {
                    next_rip: 0x1002,
                    interrupts_enabled: true,
                },
            ),
            (
                snap(0x78, 0, 0),
                0x2,
                Exit::Hlt {
                    next_rip: 0x1002,
                    interrupts_enabled: false,
                },
            ),
            // OUT DX, AL to 0x3F8 (0x7B): the value is AL.
            (
                snap(0x7B, ioio(0x3F8, 4, false, false, false), 0x1001),
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
            // IN EAX, DX.
            (
                snap(0x7B, ioio(0x510, 6, false, false, true), 0x1001),
                0x2,
                Exit::Io {
                    port: 0x510,
                    size: 4,
                    write: None,
                    string: false,
                    rep: false,
                    next_rip: 0x1001,
                },
            ),
            // REP OUTSB: no value (it comes from memory), exactly as VMX maps it.
            (
                snap(0x7B, ioio(0x3F8, 4, true, true, false), 0x1002),
                0x2,
                Exit::Io {
                    port: 0x3F8,
                    size: 1,
                    write: None,
                    string: true,
                    rep: true,
                    next_rip: 0x1002,
                },
            ),
            // RDMSR / WRMSR (0x7C, EXITINFO1 bit 0 = write).
            (
                snap(0x7C, 0, 0),
                0x2,
                Exit::Msr {
                    index: 7,
                    write: None,
                    next_rip: 0x1002,
                },
            ),
            (
                snap(0x7C, 1, 0),
                0x2,
                Exit::Msr {
                    index: 7,
                    write: Some(0x2345_6789_0000_0041),
                    next_rip: 0x1002,
                },
            ),
            // RDPMC (0x6F): index from ECX.
            (
                snap(0x6F, 0, 0),
                0x2,
                Exit::Rdpmc {
                    index: 7,
                    next_rip: 0x1002,
                },
            ),
            // #NPF (0x400): write to a page outside RAM.
            (
                snap(0x400, 0b110, 0xFEE0_0000),
                0x2,
                Exit::NestedPageFault {
                    gpa: GuestPhys(0xFEE0_0000),
                    write: true,
                    exec: false,
                },
            ),
            (snap(0x7F, 0, 0), 0x2, Exit::TripleFault),
            // VMMCALL (0x81), VMRUN (0x80), CLGI (0x85): #UD by the handler.
            (snap(0x81, 0, 0), 0x2, Exit::VirtInstruction),
            (snap(0x80, 0, 0), 0x2, Exit::VirtInstruction),
            (snap(0x85, 0, 0), 0x2, Exit::VirtInstruction),
            // INTR (0x60), NMI (0x61): the host's. VINTR (0x64): the interrupt window.
            (snap(0x60, 0, 0), 0x2, Exit::ExternalInterrupt),
            (snap(0x61, 0, 0), 0x2, Exit::ExternalInterrupt),
            (snap(0x64, 0, 0), 0x2, Exit::InterruptWindow),
            // #GP intercept (0x4D): error code from EXITINFO1.
            (
                snap(0x4D, 0, 0),
                0x2,
                Exit::Exception {
                    vector: 13,
                    error_code: Some(0),
                },
            ),
            // VMEXIT_INVALID (-1).
            (
                snap(u64::MAX, 0, 0),
                0x2,
                Exit::EntryFailed { code: u64::MAX },
            ),
            // Task switch (0x7D): not handled, reported raw.
            (snap(0x7D, 0, 0), 0x2, Exit::Unknown { code: 0x7D }),
        ];
        for (s, rflags, want) in rows {
            assert_eq!(map(*s, *rflags), *want, "exit code {:#x}", s.exit_code);
        }
    }

    #[test]
    fn rdpmc_without_nrips_decodes_its_length() {
        let s = ExitSnapshot {
            next_rip: None,
            insn: Some(InsnBytes::new(&[0x0F, 0x33])),
            ..snap(0x6F, 0, 0)
        };
        assert_eq!(
            map(s, 0x2),
            Exit::Rdpmc {
                index: 7,
                next_rip: 0x1002
            }
        );
    }

    #[test]
    fn interrupted_events() {
        let ctx = ExitContext::default();
        let cut = |ev: Event| {
            let s = ExitSnapshot {
                exit_int_info: ev.encode(),
                ..snap(0x400, 0b100, 0x1000)
            };
            exited(&decode(&s).unwrap(), ctx).interrupted
        };
        // #PF with its error code, an external interrupt, an NMI: delivered again.
        assert_eq!(
            cut(Event::exception(14, Some(2))),
            Some(run::Event::exception(14, Some(2)))
        );
        let intr = Event {
            vector: 0x20,
            kind: EventType::Intr,
            error_code: None,
        };
        assert_eq!(cut(intr), Some(run::Event::external(0x20)));
        let nmi = Event {
            vector: 2,
            kind: EventType::Nmi,
            error_code: None,
        };
        assert_eq!(cut(nmi), Some(run::Event::NMI));
        // INT 0x80, INT3, INTO: re-executed by the guest, not re-injected.
        let int80 = Event {
            vector: 0x80,
            kind: EventType::SoftwareInt,
            error_code: None,
        };
        assert_eq!(cut(int80), None);
        assert_eq!(cut(Event::exception(3, None)), None);
        assert_eq!(cut(Event::exception(4, None)), None);
        // Nothing in flight.
        let s = snap(0x72, 0, 0);
        assert_eq!(exited(&decode(&s).unwrap(), ctx).interrupted, None);
    }

    #[test]
    fn injection_encodings() {
        // External 0x20: V | type 0 | vector (APM figure 15-4).
        assert_eq!(injection(run::Event::external(0x20)).encode(), 0x8000_0020);
        // NMI: type 2.
        assert_eq!(injection(run::Event::NMI).encode(), 0x8000_0202);
        // #GP(0): type 3, EV, error code in 63:32.
        assert_eq!(
            injection(run::Event::exception(13, Some(0))).encode(),
            0x8000_0B0D
        );
        assert_eq!(
            injection(run::Event::exception(14, Some(6))).encode(),
            0x0000_0006_8000_0B0E
        );
        // What EXITINTINFO reports, injected again, is the same bits.
        let pf = Event::exception(14, Some(2));
        assert_eq!(injection(reinjected(pf).unwrap()), pf);
    }
}
