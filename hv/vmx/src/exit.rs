//! VM-exit decoding.
//!
//! Why: STYLE.md point 2 — each exit is read from the VMCS once into a plain [`ExitSnapshot`],
//! decoded here into [`VmxExit`], and only then handled. The decoder is a pure function, so exit
//! handling is tested as tables of raw snapshots in, decoded exits out. [`VmxExit`] uses the
//! same vocabulary as the SVM crate's `SvmExit` (CPUID, HLT, I/O, MSR, nested-paging fault,
//! exception, interrupt, NMI, INIT, shutdown, hypercall, virtualization instruction, skip) so
//! the core maps both onto one neutral exit.
//!
//! Unlike SVM without NRIPS, VMX always reports the instruction length for exits caused by
//! instructions (SDM vol. 3C "VM-Exit Instruction Length"), so `next_rip = rip + length`.
//!
//! Formats: exit reasons SDM vol. 3D appendix C; exit qualifications SDM vol. 3C "Exit
//! Qualification for ..." tables (control-register accesses, MOV DR, I/O instructions — table
//! 28-5 in recent editions —, EPT violations, task switches); interruption information and
//! IDT-vectoring information SDM vol. 3C "Information for VM Exits Due to Vectored Events" and
//! "Information for VM Exits That Occur During Event Delivery"; VM-entry failures SDM vol. 3C
//! "VM-Entry Failures During or After Loading Guest State".
#![forbid(unsafe_code)]

use bitflags::bitflags;

use crate::addr::GuestPhys;
use crate::regs::GuestRegs;
use crate::vmcs::{ExitReason, ExitReasonField, VmcsField};

/// Everything the decoder needs, read once from the VMCS and the saved guest registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExitSnapshot {
    /// Exit reason (full 32-bit field: basic reason plus flags such as bit 31).
    pub reason: u32,
    /// Exit qualification.
    pub qualification: u64,
    /// VM-exit instruction length.
    pub instruction_length: u32,
    /// VM-exit instruction information.
    pub instruction_info: u32,
    /// Guest-physical address (EPT violations and misconfigurations).
    pub guest_physical_address: u64,
    /// Guest-linear address.
    pub guest_linear_address: u64,
    /// VM-exit interruption information.
    pub interruption_info: u32,
    /// VM-exit interruption error code (valid if `interruption_info` says so).
    pub interruption_error_code: u32,
    /// IDT-vectoring information: the event whose delivery the exit interrupted.
    pub idt_vectoring_info: u32,
    /// IDT-vectoring error code.
    pub idt_vectoring_error_code: u32,
    /// Guest RIP at the exit (points at the instruction for instruction exits).
    pub rip: u64,
    /// Guest RAX: OUT value, WRMSR low half.
    pub rax: u64,
    /// Guest RCX: the MSR index.
    pub rcx: u64,
    /// Guest RDX: WRMSR high half.
    pub rdx: u64,
    /// Whether INS/OUTS exits fill `instruction_info` (IA32_VMX_BASIC bit 54).
    pub ins_outs_info: bool,
}

/// Interruption-information bit 31: valid.
const INFO_VALID: u32 = 1 << 31;
/// Interruption-information bit 11: error code valid / deliver error code.
const INFO_ERROR_CODE: u32 = 1 << 11;
/// Interruption-information bit 12: NMI unblocking due to IRET (exit information only).
const INFO_NMI_UNBLOCKING: u32 = 1 << 12;

impl ExitSnapshot {
    /// Read a snapshot through `vmread` (which returns 0 for a field it cannot read), reading
    /// only the fields this exit reason uses. `regs` are the guest GPRs the world switch saved;
    /// `ins_outs_info` comes from [`crate::caps::VmxBasic::ins_outs_info`].
    pub fn read(
        mut vmread: impl FnMut(VmcsField) -> u64,
        regs: &GuestRegs,
        ins_outs_info: bool,
    ) -> Self {
        let reason = vmread(VmcsField::ExitReason) as u32;
        let mut s = Self {
            reason,
            qualification: vmread(VmcsField::ExitQualification),
            instruction_length: vmread(VmcsField::VmExitInstructionLength) as u32,
            interruption_info: vmread(VmcsField::VmExitInterruptionInfo) as u32,
            idt_vectoring_info: vmread(VmcsField::IdtVectoringInfo) as u32,
            rip: vmread(VmcsField::GuestRip),
            rax: regs.rax,
            rcx: regs.rcx,
            rdx: regs.rdx,
            ins_outs_info,
            ..Self::default()
        };
        if s.interruption_info & (INFO_VALID | INFO_ERROR_CODE) == INFO_VALID | INFO_ERROR_CODE {
            s.interruption_error_code = vmread(VmcsField::VmExitInterruptionErrorCode) as u32;
        }
        if s.idt_vectoring_info & (INFO_VALID | INFO_ERROR_CODE) == INFO_VALID | INFO_ERROR_CODE {
            s.idt_vectoring_error_code = vmread(VmcsField::IdtVectoringErrorCode) as u32;
        }
        match ExitReasonField(reason).basic() {
            ExitReason::EptViolation | ExitReason::EptMisconfig => {
                s.guest_physical_address = vmread(VmcsField::GuestPhysicalAddress);
                s.guest_linear_address = vmread(VmcsField::GuestLinearAddress);
            }
            ExitReason::IoInstruction if s.qualification & IO_STRING != 0 => {
                s.guest_linear_address = vmread(VmcsField::GuestLinearAddress);
                if ins_outs_info {
                    s.instruction_info = vmread(VmcsField::VmExitInstructionInfo) as u32;
                }
            }
            _ => {}
        }
        s
    }

    /// RIP after the instruction that caused the exit.
    pub const fn next_rip(&self) -> u64 {
        self.rip.wrapping_add(self.instruction_length as u64)
    }
}

/// The kind of a vectored event (interruption-information bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// 0: external interrupt.
    ExternalInterrupt,
    /// 2: NMI.
    Nmi,
    /// 3: hardware exception (faults, traps, aborts other than from INT1/INT3/INTO).
    HardwareException,
    /// 4: software interrupt (INT n).
    SoftwareInterrupt,
    /// 5: privileged software exception (INT1).
    PrivilegedSoftwareException,
    /// 6: software exception (INT3, INTO).
    SoftwareException,
    /// 7: other event (MTF on injection).
    Other,
    /// 1: reserved.
    Reserved,
}

impl EventType {
    const fn from_raw(raw: u32) -> Self {
        match raw & 7 {
            0 => Self::ExternalInterrupt,
            2 => Self::Nmi,
            3 => Self::HardwareException,
            4 => Self::SoftwareInterrupt,
            5 => Self::PrivilegedSoftwareException,
            6 => Self::SoftwareException,
            7 => Self::Other,
            _ => Self::Reserved,
        }
    }

    const fn raw(self) -> u32 {
        match self {
            Self::ExternalInterrupt => 0,
            Self::Reserved => 1,
            Self::Nmi => 2,
            Self::HardwareException => 3,
            Self::SoftwareInterrupt => 4,
            Self::PrivilegedSoftwareException => 5,
            Self::SoftwareException => 6,
            Self::Other => 7,
        }
    }
}

/// A vectored event: what the VM-exit interruption information and the IDT-vectoring
/// information report, and what the VM-entry interruption-information field injects (same
/// layout: vector 7:0, type 10:8, error code 11, valid 31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event {
    /// Kind.
    pub kind: EventType,
    /// Vector.
    pub vector: u8,
    /// Error code, if the event has one.
    pub error_code: Option<u32>,
    /// "NMI unblocking due to IRET" (exit information only; never injected).
    pub nmi_unblocking: bool,
}

/// #UD, injected for VMX instructions executed by the guest.
pub const VECTOR_UD: u8 = 6;
/// #GP.
pub const VECTOR_GP: u8 = 13;
/// #PF.
pub const VECTOR_PF: u8 = 14;

impl Event {
    /// Decode an interruption-information field and its error-code field; `None` if bit 31
    /// (valid) is clear.
    pub const fn decode(info: u32, error_code: u32) -> Option<Self> {
        if info & INFO_VALID == 0 {
            return None;
        }
        Some(Self {
            kind: EventType::from_raw(info >> 8),
            vector: info as u8,
            error_code: if info & INFO_ERROR_CODE != 0 {
                Some(error_code)
            } else {
                None
            },
            nmi_unblocking: info & INFO_NMI_UNBLOCKING != 0,
        })
    }

    /// A hardware exception, e.g. to inject.
    pub const fn exception(vector: u8, error_code: Option<u32>) -> Self {
        Self {
            kind: EventType::HardwareException,
            vector,
            error_code,
            nmi_unblocking: false,
        }
    }

    /// #UD.
    pub const fn invalid_opcode() -> Self {
        Self::exception(VECTOR_UD, None)
    }

    /// #GP(0), e.g. for WRMSR to an MSR the guest may not write.
    pub const fn general_protection() -> Self {
        Self::exception(VECTOR_GP, Some(0))
    }

    /// The VM-entry interruption-information value and the VM-entry exception error code to
    /// write to inject this event (bit 12 is reserved on entry and never set).
    pub const fn injection(&self) -> (u32, u32) {
        let mut info = INFO_VALID | (self.kind.raw() << 8) | self.vector as u32;
        let mut code = 0;
        if let Some(c) = self.error_code {
            info |= INFO_ERROR_CODE;
            code = c;
        }
        (info, code)
    }
}

/// Whether exception `vector` pushes an error code (SDM vol. 3A "Exception and Interrupt
/// Reference"); VM entry requires "deliver error code" to match for hardware exceptions.
pub const fn exception_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21)
}

const IO_IN: u64 = 1 << 3;
const IO_STRING: u64 = 1 << 4;
const IO_REP: u64 = 1 << 5;

/// A decoded I/O-instruction exit (exit qualification: size 2:0, direction 3, string 4, REP 5,
/// immediate operand 6, port 31:16; SDM vol. 3C table "Exit Qualification for I/O
/// Instructions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoExit {
    /// Port.
    pub port: u16,
    /// Operand size in bytes (1, 2 or 4).
    pub size: u8,
    /// OUT/OUTS rather than IN/INS.
    pub write: bool,
    /// INS/OUTS.
    pub string: bool,
    /// REP prefix.
    pub rep: bool,
    /// For INS/OUTS with instruction information: address size in bits (16, 32, 64); else 0.
    pub addr_size: u8,
    /// For INS/OUTS with instruction information: segment register (0 = ES ... 5 = GS).
    pub segment: u8,
    /// For INS/OUTS: the guest-linear address of the memory operand.
    pub linear_address: Option<u64>,
    /// For a non-string OUT: the value written (RAX masked to `size`).
    pub value: Option<u32>,
    /// RIP after the instruction.
    pub next_rip: u64,
}

/// A decoded RDMSR/WRMSR exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsrExit {
    /// ECX.
    pub index: u32,
    /// For WRMSR: EDX:EAX. `None` for RDMSR.
    pub write: Option<u64>,
    /// RIP after the instruction.
    pub next_rip: u64,
}

bitflags! {
    /// Exit qualification of an EPT violation (SDM vol. 3C "Exit Qualification for EPT
    /// Violations").
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EptViolationQual: u64 {
        /// The access was a data read.
        const READ = 1 << 0;
        /// The access was a data write.
        const WRITE = 1 << 1;
        /// The access was an instruction fetch.
        const FETCH = 1 << 2;
        /// The guest-physical address was readable (bit 0 of each EPT entry ANDed).
        const READABLE = 1 << 3;
        /// ... writable.
        const WRITABLE = 1 << 4;
        /// ... executable (for supervisor-mode linear addresses with mode-based execute).
        const EXECUTABLE = 1 << 5;
        /// ... executable for user-mode linear addresses (mode-based execute only).
        const USER_EXECUTABLE = 1 << 6;
        /// The guest-linear-address field is valid.
        const LINEAR_VALID = 1 << 7;
        /// With LINEAR_VALID: the access was to the translated linear address (else to a guest
        /// paging structure during the walk).
        const LINEAR_TRANSLATION = 1 << 8;
        /// NMI unblocking due to IRET.
        const NMI_UNBLOCKING = 1 << 12;
        /// Shadow-stack access.
        const SHADOW_STACK = 1 << 13;
        /// Asynchronous to instruction execution (e.g. a PT trace write).
        const ASYNC = 1 << 16;
        const _ = !0;
    }
}

/// A decoded EPT violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EptViolation {
    /// Faulting guest-physical address.
    pub gpa: GuestPhys,
    /// The exit qualification.
    pub qualification: EptViolationQual,
    /// The guest-linear address, if the CPU reported one.
    pub guest_linear: Option<u64>,
}

impl EptViolation {
    /// Data read.
    pub fn read(&self) -> bool {
        self.qualification.contains(EptViolationQual::READ)
    }
    /// Data write.
    pub fn write(&self) -> bool {
        self.qualification.contains(EptViolationQual::WRITE)
    }
    /// Instruction fetch.
    pub fn exec(&self) -> bool {
        self.qualification.contains(EptViolationQual::FETCH)
    }
    /// The translation existed (some permission bit set): a permission fault rather than a
    /// missing mapping.
    pub fn present(&self) -> bool {
        self.qualification.intersects(
            EptViolationQual::READABLE
                | EptViolationQual::WRITABLE
                | EptViolationQual::EXECUTABLE
                | EptViolationQual::USER_EXECUTABLE,
        )
    }
}

/// VMX instructions a guest may execute although we do not expose VMX to it: the handler
/// injects #UD (the guest's CR4.VMXE is kept 0 through the CR4 read shadow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmxInsn {
    /// VMCLEAR.
    Vmclear,
    /// VMLAUNCH.
    Vmlaunch,
    /// VMPTRLD.
    Vmptrld,
    /// VMPTRST.
    Vmptrst,
    /// VMREAD.
    Vmread,
    /// VMRESUME.
    Vmresume,
    /// VMWRITE.
    Vmwrite,
    /// VMXOFF.
    Vmxoff,
    /// VMXON.
    Vmxon,
    /// INVEPT.
    Invept,
    /// INVVPID.
    Invvpid,
    /// VMFUNC (exits when the VM function is not enabled).
    Vmfunc,
}

/// Other instructions handled by emulate-and-skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipInsn {
    /// RDTSC.
    Rdtsc,
    /// RDTSCP.
    Rdtscp,
    /// PAUSE.
    Pause,
    /// INVD.
    Invd,
    /// WBINVD/WBNOINVD.
    Wbinvd,
    /// XSETBV.
    Xsetbv,
    /// MONITOR.
    Monitor,
    /// MWAIT.
    Mwait,
    /// INVLPG.
    Invlpg,
}

/// A decoded control-register access (exit qualification: CR 3:0, type 5:4, LMSW operand 6,
/// GPR 11:8, LMSW source 31:16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrAccess {
    /// MOV to CRn from a GPR (0 = RAX ... 15 = R15).
    MovTo {
        /// Control register.
        cr: u8,
        /// Source GPR.
        gpr: u8,
    },
    /// MOV from CRn to a GPR.
    MovFrom {
        /// Control register.
        cr: u8,
        /// Destination GPR.
        gpr: u8,
    },
    /// CLTS.
    Clts,
    /// LMSW.
    Lmsw {
        /// The 16-bit source (machine status word).
        source: u16,
        /// The operand was in memory.
        memory: bool,
    },
}

/// A decoded VM exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmxExit {
    /// CPUID: leaf in EAX, subleaf in ECX.
    Cpuid {
        /// RIP after CPUID.
        next_rip: u64,
    },
    /// HLT.
    Hlt {
        /// RIP after HLT.
        next_rip: u64,
    },
    /// Port I/O.
    Io(IoExit),
    /// RDMSR/WRMSR.
    Msr(MsrExit),
    /// EPT violation (the nested-paging fault of VMX).
    EptViolation(EptViolation),
    /// EPT misconfiguration: an EPT entry is invalid (our bug, not the guest's).
    EptMisconfig {
        /// The guest-physical address being translated.
        gpa: GuestPhys,
    },
    /// A hardware or software exception the exception bitmap intercepted.
    Exception {
        /// Vector 0-31.
        vector: u8,
        /// Error code, if delivered with one.
        error_code: Option<u32>,
        /// For #PF: the faulting linear address (exit qualification).
        fault_address: Option<u64>,
    },
    /// Host NMI ("NMI exiting"): let the host handle it, then re-enter.
    Nmi,
    /// Host external interrupt. With "acknowledge interrupt on exit" the vector was already
    /// taken from the interrupt controller and must be dispatched by the host.
    ExternalInterrupt {
        /// The acknowledged vector, if reported.
        vector: Option<u8>,
    },
    /// INIT signal (an INIT IPI to this vCPU's CPU; VMX blocks INIT while in VMX operation).
    InitSignal,
    /// Start-up IPI (only in wait-for-SIPI activity state).
    Sipi {
        /// SIPI vector.
        vector: u8,
    },
    /// The guest triple-faulted.
    TripleFault,
    /// VMCALL (hypercall).
    Vmcall {
        /// RIP after VMCALL.
        next_rip: u64,
    },
    /// A guest VMX instruction: inject #UD.
    VmxInstruction(VmxInsn),
    /// RDPMC (the vPMU emulates it).
    Rdpmc {
        /// RIP after RDPMC.
        next_rip: u64,
    },
    /// Another instruction intercept handled by emulate-and-skip.
    Skip {
        /// Which instruction.
        insn: SkipInsn,
        /// RIP after it.
        next_rip: u64,
    },
    /// Control-register access.
    CrAccess {
        /// What was accessed.
        access: CrAccess,
        /// RIP after the instruction.
        next_rip: u64,
    },
    /// MOV DR (exit qualification: DR 2:0, direction 4, GPR 11:8).
    DrAccess {
        /// Debug register.
        dr: u8,
        /// MOV to DR rather than from.
        write: bool,
        /// The GPR operand.
        gpr: u8,
        /// RIP after the instruction.
        next_rip: u64,
    },
    /// Task switch (exit qualification: selector 15:0, source 31:30).
    TaskSwitch {
        /// Target TSS selector.
        selector: u16,
        /// 0 CALL, 1 IRET, 2 JMP, 3 task gate in IDT.
        source: u8,
    },
    /// Interrupt window opened.
    InterruptWindow,
    /// NMI window opened.
    NmiWindow,
    /// VMX-preemption timer expired.
    PreemptionTimer,
    /// VM entry failed after the checks on controls and host state passed (exit reason bit
    /// 31 set): invalid guest state (33), MSR loading (34) or a machine check (41). The guest
    /// never ran; qualification 33: 0 = not further specified, 2 = PDPTE load, 3 = NMI
    /// injection blocked, 4 = invalid VMCS link pointer; 34: the failing MSR-list entry (1-based).
    EntryFailure {
        /// Basic exit reason.
        reason: ExitReason,
        /// Exit qualification.
        qualification: u64,
    },
    /// Anything else; the raw information is kept.
    Other {
        /// Basic exit reason.
        reason: ExitReason,
        /// Exit qualification.
        qualification: u64,
    },
}

/// The decoded exit plus the event whose delivery it interrupted (IDT-vectoring information),
/// which the handler must re-inject unless it handles it otherwise (SDM vol. 3C "Handling of
/// IDT-Vectoring Information").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodedExit {
    /// The exit.
    pub exit: VmxExit,
    /// IDT-vectoring information, if valid.
    pub interrupted_event: Option<Event>,
}

/// Decode a snapshot.
pub fn decode(s: &ExitSnapshot) -> DecodedExit {
    let field = ExitReasonField(s.reason);
    let reason = field.basic();
    let next_rip = s.next_rip();
    let q = s.qualification;
    let exit = if field.entry_failure() {
        VmxExit::EntryFailure {
            reason,
            qualification: q,
        }
    } else {
        match reason {
            ExitReason::Cpuid => VmxExit::Cpuid { next_rip },
            ExitReason::Hlt => VmxExit::Hlt { next_rip },
            ExitReason::Vmcall => VmxExit::Vmcall { next_rip },
            ExitReason::Rdpmc => VmxExit::Rdpmc { next_rip },
            ExitReason::IoInstruction => VmxExit::Io(decode_io(s)),
            ExitReason::Rdmsr | ExitReason::Wrmsr => VmxExit::Msr(MsrExit {
                index: s.rcx as u32,
                write: (reason == ExitReason::Wrmsr)
                    .then_some((s.rdx << 32) | (s.rax & 0xFFFF_FFFF)),
                next_rip,
            }),
            ExitReason::EptViolation => {
                let qualification = EptViolationQual::from_bits_retain(q);
                VmxExit::EptViolation(EptViolation {
                    gpa: GuestPhys(s.guest_physical_address),
                    qualification,
                    guest_linear: qualification
                        .contains(EptViolationQual::LINEAR_VALID)
                        .then_some(s.guest_linear_address),
                })
            }
            ExitReason::EptMisconfig => VmxExit::EptMisconfig {
                gpa: GuestPhys(s.guest_physical_address),
            },
            ExitReason::ExceptionOrNmi => {
                match Event::decode(s.interruption_info, s.interruption_error_code) {
                    Some(Event {
                        kind: EventType::Nmi,
                        ..
                    }) => VmxExit::Nmi,
                    Some(Event {
                        kind:
                            EventType::HardwareException
                            | EventType::SoftwareException
                            | EventType::PrivilegedSoftwareException,
                        vector,
                        error_code,
                        ..
                    }) => VmxExit::Exception {
                        vector,
                        error_code,
                        fault_address: (vector == VECTOR_PF).then_some(q),
                    },
                    _ => VmxExit::Other {
                        reason,
                        qualification: q,
                    },
                }
            }
            ExitReason::ExternalInterrupt => VmxExit::ExternalInterrupt {
                vector: Event::decode(s.interruption_info, 0).map(|e| e.vector),
            },
            ExitReason::InitSignal => VmxExit::InitSignal,
            ExitReason::StartupIpi => VmxExit::Sipi { vector: q as u8 },
            ExitReason::TripleFault => VmxExit::TripleFault,
            ExitReason::InterruptWindow => VmxExit::InterruptWindow,
            ExitReason::NmiWindow => VmxExit::NmiWindow,
            ExitReason::PreemptionTimer => VmxExit::PreemptionTimer,
            ExitReason::Vmclear => VmxExit::VmxInstruction(VmxInsn::Vmclear),
            ExitReason::Vmlaunch => VmxExit::VmxInstruction(VmxInsn::Vmlaunch),
            ExitReason::Vmptrld => VmxExit::VmxInstruction(VmxInsn::Vmptrld),
            ExitReason::Vmptrst => VmxExit::VmxInstruction(VmxInsn::Vmptrst),
            ExitReason::Vmread => VmxExit::VmxInstruction(VmxInsn::Vmread),
            ExitReason::Vmresume => VmxExit::VmxInstruction(VmxInsn::Vmresume),
            ExitReason::Vmwrite => VmxExit::VmxInstruction(VmxInsn::Vmwrite),
            ExitReason::Vmxoff => VmxExit::VmxInstruction(VmxInsn::Vmxoff),
            ExitReason::Vmxon => VmxExit::VmxInstruction(VmxInsn::Vmxon),
            ExitReason::Invept => VmxExit::VmxInstruction(VmxInsn::Invept),
            ExitReason::Invvpid => VmxExit::VmxInstruction(VmxInsn::Invvpid),
            ExitReason::Vmfunc => VmxExit::VmxInstruction(VmxInsn::Vmfunc),
            ExitReason::CrAccess => VmxExit::CrAccess {
                access: decode_cr(q),
                next_rip,
            },
            ExitReason::DrAccess => VmxExit::DrAccess {
                dr: (q & 7) as u8,
                write: q & (1 << 4) == 0,
                gpr: ((q >> 8) & 0xF) as u8,
                next_rip,
            },
            ExitReason::TaskSwitch => VmxExit::TaskSwitch {
                selector: q as u16,
                source: ((q >> 30) & 3) as u8,
            },
            other => match skip_insn(other) {
                Some(insn) => VmxExit::Skip { insn, next_rip },
                None => VmxExit::Other {
                    reason: other,
                    qualification: q,
                },
            },
        }
    };
    DecodedExit {
        exit,
        interrupted_event: Event::decode(s.idt_vectoring_info, s.idt_vectoring_error_code),
    }
}

const fn skip_insn(reason: ExitReason) -> Option<SkipInsn> {
    Some(match reason {
        ExitReason::Rdtsc => SkipInsn::Rdtsc,
        ExitReason::Rdtscp => SkipInsn::Rdtscp,
        ExitReason::Pause => SkipInsn::Pause,
        ExitReason::Invd => SkipInsn::Invd,
        ExitReason::Wbinvd => SkipInsn::Wbinvd,
        ExitReason::Xsetbv => SkipInsn::Xsetbv,
        ExitReason::Monitor => SkipInsn::Monitor,
        ExitReason::Mwait => SkipInsn::Mwait,
        ExitReason::Invlpg => SkipInsn::Invlpg,
        _ => return None,
    })
}

fn decode_cr(q: u64) -> CrAccess {
    let cr = (q & 0xF) as u8;
    let gpr = ((q >> 8) & 0xF) as u8;
    match (q >> 4) & 3 {
        0 => CrAccess::MovTo { cr, gpr },
        1 => CrAccess::MovFrom { cr, gpr },
        2 => CrAccess::Clts,
        _ => CrAccess::Lmsw {
            source: (q >> 16) as u16,
            memory: q & (1 << 6) != 0,
        },
    }
}

fn decode_io(s: &ExitSnapshot) -> IoExit {
    let q = s.qualification;
    // Size field: 0 = 1 byte, 1 = 2 bytes, 3 = 4 bytes (2 is not used).
    let size: u8 = match q & 7 {
        0 => 1,
        1 => 2,
        _ => 4,
    };
    let write = q & IO_IN == 0;
    let string = q & IO_STRING != 0;
    let info = string && s.ins_outs_info;
    let mask: u64 = match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    };
    IoExit {
        port: (q >> 16) as u16,
        size,
        write,
        string,
        rep: q & IO_REP != 0,
        // Instruction information for INS/OUTS: address size 9:7, segment 17:15.
        addr_size: if info {
            match (s.instruction_info >> 7) & 7 {
                0 => 16,
                1 => 32,
                _ => 64,
            }
        } else {
            0
        },
        segment: if info {
            ((s.instruction_info >> 15) & 7) as u8
        } else {
            0
        },
        linear_address: string.then_some(s.guest_linear_address),
        value: (write && !string).then_some((s.rax & mask) as u32),
        next_rip: s.next_rip(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(reason: u32, qualification: u64, len: u32) -> ExitSnapshot {
        ExitSnapshot {
            reason,
            qualification,
            instruction_length: len,
            rip: 0x1000,
            rax: 0x1122_3344_5566_7788,
            rcx: 0xC000_0080,
            rdx: 0xAABB_CCDD,
            ins_outs_info: true,
            ..Default::default()
        }
    }

    fn exit(s: &ExitSnapshot) -> VmxExit {
        decode(s).exit
    }

    #[test]
    fn instruction_exits_use_the_reported_length() {
        assert_eq!(exit(&snap(10, 0, 2)), VmxExit::Cpuid { next_rip: 0x1002 });
        assert_eq!(exit(&snap(12, 0, 1)), VmxExit::Hlt { next_rip: 0x1001 });
        assert_eq!(exit(&snap(18, 0, 3)), VmxExit::Vmcall { next_rip: 0x1003 });
        assert_eq!(exit(&snap(15, 0, 2)), VmxExit::Rdpmc { next_rip: 0x1002 });
        // A REX-prefixed CPUID is three bytes: the CPU says so, nothing to decode.
        assert_eq!(exit(&snap(10, 0, 3)), VmxExit::Cpuid { next_rip: 0x1003 });
        let table = [
            (16, SkipInsn::Rdtsc, 2),
            (51, SkipInsn::Rdtscp, 3),
            (40, SkipInsn::Pause, 2),
            (13, SkipInsn::Invd, 2),
            (54, SkipInsn::Wbinvd, 2),
            (55, SkipInsn::Xsetbv, 3),
            (39, SkipInsn::Monitor, 3),
            (36, SkipInsn::Mwait, 3),
            (14, SkipInsn::Invlpg, 3),
        ];
        for (reason, insn, len) in table {
            assert_eq!(
                exit(&snap(reason, 0, len)),
                VmxExit::Skip {
                    insn,
                    next_rip: 0x1000 + len as u64
                },
                "{reason}"
            );
        }
    }

    #[test]
    fn io_exits() {
        // OUT DX, AL to 0x3F8: size 0 (1 byte), direction 0 (out), port << 16.
        assert_eq!(
            exit(&snap(30, 0x3F8 << 16, 1)),
            VmxExit::Io(IoExit {
                port: 0x3F8,
                size: 1,
                write: true,
                string: false,
                rep: false,
                addr_size: 0,
                segment: 0,
                linear_address: None,
                value: Some(0x88),
                next_rip: 0x1001,
            })
        );
        // IN EAX, 0x71 (immediate operand, bit 6): size 3 = 4 bytes, direction in.
        let VmxExit::Io(io) = exit(&snap(30, (0x71 << 16) | (1 << 6) | (1 << 3) | 3, 2)) else {
            panic!()
        };
        assert_eq!(
            (io.port, io.size, io.write, io.value, io.next_rip),
            (0x71, 4, false, None, 0x1002)
        );
        // OUT DX, AX: value masked to 16 bits.
        let VmxExit::Io(io) = exit(&snap(30, (0xF4 << 16) | 1, 2)) else {
            panic!()
        };
        assert_eq!((io.size, io.value), (2, Some(0x7788)));
        // REP OUTSW to 0x1F0, 32-bit addressing, DS: string, rep, no value, linear address.
        let mut s = snap(30, (0x1F0 << 16) | (1 << 5) | (1 << 4) | 1, 3);
        s.instruction_info = (1 << 7) | (3 << 15);
        s.guest_linear_address = 0x8000;
        let VmxExit::Io(io) = exit(&s) else { panic!() };
        assert_eq!(
            (io.size, io.write, io.string, io.rep, io.value),
            (2, true, true, true, None)
        );
        assert_eq!(
            (io.addr_size, io.segment, io.linear_address),
            (32, 3, Some(0x8000))
        );
        // INSB, 64-bit addressing; a CPU without INS/OUTS information reports nothing.
        let mut s = snap(30, (0x60 << 16) | (1 << 4) | (1 << 3), 1);
        s.instruction_info = 2 << 7;
        let VmxExit::Io(io) = exit(&s) else { panic!() };
        assert_eq!((io.write, io.addr_size, io.segment), (false, 64, 0));
        s.ins_outs_info = false;
        let VmxExit::Io(io) = exit(&s) else { panic!() };
        assert_eq!(io.addr_size, 0);
    }

    #[test]
    fn msr_exits() {
        assert_eq!(
            exit(&snap(31, 0, 2)),
            VmxExit::Msr(MsrExit {
                index: 0xC000_0080,
                write: None,
                next_rip: 0x1002
            })
        );
        assert_eq!(
            exit(&snap(32, 0, 2)),
            VmxExit::Msr(MsrExit {
                index: 0xC000_0080,
                write: Some(0xAABB_CCDD_5566_7788),
                next_rip: 0x1002
            })
        );
    }

    #[test]
    fn ept_exits() {
        // Write to an unmapped GPA, linear address valid.
        let mut s = snap(48, 0b10 | (1 << 7) | (1 << 8), 0);
        s.guest_physical_address = 0xFEE0_0000;
        s.guest_linear_address = 0xFFFF_8000_FEE0_0000;
        let VmxExit::EptViolation(v) = exit(&s) else {
            panic!()
        };
        assert_eq!(v.gpa, GuestPhys(0xFEE0_0000));
        assert!(v.write() && !v.read() && !v.exec() && !v.present());
        assert_eq!(v.guest_linear, Some(0xFFFF_8000_FEE0_0000));
        // Fetch from a readable, non-executable page: present, no linear address.
        let mut s = snap(48, 0b100 | 0b1000, 0);
        s.guest_physical_address = 0x20_0000;
        let VmxExit::EptViolation(v) = exit(&s) else {
            panic!()
        };
        assert!(v.exec() && v.present() && !v.write());
        assert_eq!(v.guest_linear, None);
        // Misconfiguration.
        let mut s = snap(49, 0, 0);
        s.guest_physical_address = 0x1234_5000;
        assert_eq!(
            exit(&s),
            VmxExit::EptMisconfig {
                gpa: GuestPhys(0x1234_5000)
            }
        );
    }

    #[test]
    fn exceptions_nmi_and_interrupts() {
        // #PF with error code 2 at 0xDEAD_B000: type 3, error code valid, valid.
        let mut s = snap(0, 0xDEAD_B000, 0);
        s.interruption_info = INFO_VALID | INFO_ERROR_CODE | (3 << 8) | 14;
        s.interruption_error_code = 2;
        assert_eq!(
            exit(&s),
            VmxExit::Exception {
                vector: 14,
                error_code: Some(2),
                fault_address: Some(0xDEAD_B000)
            }
        );
        // #UD: no error code.
        s.interruption_info = INFO_VALID | (3 << 8) | 6;
        assert_eq!(
            exit(&s),
            VmxExit::Exception {
                vector: 6,
                error_code: None,
                fault_address: None
            }
        );
        // INT3: software exception.
        s.interruption_info = INFO_VALID | (6 << 8) | 3;
        assert!(matches!(exit(&s), VmxExit::Exception { vector: 3, .. }));
        // NMI (type 2, vector 2).
        s.interruption_info = INFO_VALID | (2 << 8) | 2;
        assert_eq!(exit(&s), VmxExit::Nmi);
        // Invalid interruption information: kept raw.
        s.interruption_info = 0;
        assert_eq!(
            exit(&s),
            VmxExit::Other {
                reason: ExitReason::ExceptionOrNmi,
                qualification: 0xDEAD_B000
            }
        );
        // External interrupt acknowledged on exit: vector 0x30.
        let mut s = snap(1, 0, 0);
        s.interruption_info = INFO_VALID | 0x30;
        assert_eq!(exit(&s), VmxExit::ExternalInterrupt { vector: Some(0x30) });
        s.interruption_info = 0;
        assert_eq!(exit(&s), VmxExit::ExternalInterrupt { vector: None });
    }

    #[test]
    fn simple_exits() {
        let table = [
            (2, VmxExit::TripleFault),
            (3, VmxExit::InitSignal),
            (4, VmxExit::Sipi { vector: 0x9A }),
            (7, VmxExit::InterruptWindow),
            (8, VmxExit::NmiWindow),
            (52, VmxExit::PreemptionTimer),
            (19, VmxExit::VmxInstruction(VmxInsn::Vmclear)),
            (20, VmxExit::VmxInstruction(VmxInsn::Vmlaunch)),
            (21, VmxExit::VmxInstruction(VmxInsn::Vmptrld)),
            (22, VmxExit::VmxInstruction(VmxInsn::Vmptrst)),
            (23, VmxExit::VmxInstruction(VmxInsn::Vmread)),
            (24, VmxExit::VmxInstruction(VmxInsn::Vmresume)),
            (25, VmxExit::VmxInstruction(VmxInsn::Vmwrite)),
            (26, VmxExit::VmxInstruction(VmxInsn::Vmxoff)),
            (27, VmxExit::VmxInstruction(VmxInsn::Vmxon)),
            (50, VmxExit::VmxInstruction(VmxInsn::Invept)),
            (53, VmxExit::VmxInstruction(VmxInsn::Invvpid)),
            (59, VmxExit::VmxInstruction(VmxInsn::Vmfunc)),
            (
                57,
                VmxExit::Other {
                    reason: ExitReason::Rdrand,
                    qualification: 0x9A,
                },
            ),
            (
                200,
                VmxExit::Other {
                    reason: ExitReason::Unknown(200),
                    qualification: 0x9A,
                },
            ),
        ];
        for (reason, expected) in table {
            assert_eq!(exit(&snap(reason, 0x9A, 0)), expected, "{reason}");
        }
    }

    #[test]
    fn entry_failures() {
        // Invalid guest state: reason 33 with bit 31.
        assert_eq!(
            exit(&snap(0x8000_0021, 0, 0)),
            VmxExit::EntryFailure {
                reason: ExitReason::EntryFailureGuestState,
                qualification: 0
            }
        );
        // MSR loading failed at entry 2.
        assert_eq!(
            exit(&snap(0x8000_0022, 2, 0)),
            VmxExit::EntryFailure {
                reason: ExitReason::EntryFailureMsrLoading,
                qualification: 2
            }
        );
        // Machine check during entry.
        assert_eq!(
            exit(&snap(0x8000_0029, 0, 0)),
            VmxExit::EntryFailure {
                reason: ExitReason::EntryFailureMachineCheck,
                qualification: 0
            }
        );
    }

    #[test]
    fn cr_dr_task_switch() {
        // MOV CR3, RBX: CR 3, type 0, GPR 3.
        assert_eq!(
            exit(&snap(28, 3 | (3 << 8), 3)),
            VmxExit::CrAccess {
                access: CrAccess::MovTo { cr: 3, gpr: 3 },
                next_rip: 0x1003
            }
        );
        assert_eq!(
            exit(&snap(28, 4 | (1 << 4) | (15 << 8), 3)),
            VmxExit::CrAccess {
                access: CrAccess::MovFrom { cr: 4, gpr: 15 },
                next_rip: 0x1003
            }
        );
        assert_eq!(
            exit(&snap(28, 2 << 4, 2)),
            VmxExit::CrAccess {
                access: CrAccess::Clts,
                next_rip: 0x1002
            }
        );
        assert_eq!(
            exit(&snap(28, (3 << 4) | (1 << 6) | (0x0011 << 16), 3)),
            VmxExit::CrAccess {
                access: CrAccess::Lmsw {
                    source: 0x11,
                    memory: true
                },
                next_rip: 0x1003
            }
        );
        // MOV RAX, DR6 (direction 1 = from DR).
        assert_eq!(
            exit(&snap(29, 6 | (1 << 4), 3)),
            VmxExit::DrAccess {
                dr: 6,
                write: false,
                gpr: 0,
                next_rip: 0x1003
            }
        );
        assert_eq!(
            exit(&snap(9, 0x28 | (3 << 30), 0)),
            VmxExit::TaskSwitch {
                selector: 0x28,
                source: 3
            }
        );
    }

    #[test]
    fn idt_vectoring_and_injection() {
        // An EPT violation while delivering #PF(2): reported for re-injection.
        let mut s = snap(48, 0b10, 0);
        s.idt_vectoring_info = INFO_VALID | INFO_ERROR_CODE | (3 << 8) | 14;
        s.idt_vectoring_error_code = 2;
        let d = decode(&s);
        assert_eq!(d.interrupted_event, Some(Event::exception(14, Some(2))));
        assert_eq!(decode(&snap(1, 0, 0)).interrupted_event, None);
        // Injection encodings.
        assert_eq!(Event::invalid_opcode().injection(), (0x8000_0306, 0));
        assert_eq!(Event::general_protection().injection(), (0x8000_0B0D, 0));
        let ext = Event {
            kind: EventType::ExternalInterrupt,
            vector: 0x20,
            error_code: None,
            nmi_unblocking: false,
        };
        assert_eq!(ext.injection(), (0x8000_0020, 0));
        // Round trip through the exit format.
        let (info, code) = Event::exception(13, Some(0x18)).injection();
        assert_eq!(
            Event::decode(info, code),
            Some(Event::exception(13, Some(0x18)))
        );
        let e = Event::decode(INFO_VALID | INFO_NMI_UNBLOCKING | (1 << 8), 0).unwrap();
        assert_eq!(e.kind, EventType::Reserved);
        assert!(e.nmi_unblocking);
        assert!(exception_has_error_code(14) && !exception_has_error_code(6));
    }

    #[test]
    fn snapshot_reads_only_what_the_reason_needs() {
        use std::cell::RefCell;
        let regs = GuestRegs {
            rax: 1,
            rcx: 2,
            rdx: 3,
            ..Default::default()
        };
        let reads = RefCell::new(Vec::new());
        let fake = |values: Vec<(VmcsField, u64)>| {
            let reads = &reads;
            move |f: VmcsField| {
                reads.borrow_mut().push(f);
                values.iter().find(|(k, _)| *k == f).map_or(0, |(_, v)| *v)
            }
        };
        // CPUID: no GPA, no instruction information, no error codes.
        let s = ExitSnapshot::read(
            fake(vec![
                (VmcsField::ExitReason, 10),
                (VmcsField::VmExitInstructionLength, 2),
                (VmcsField::GuestRip, 0x5000),
            ]),
            &regs,
            true,
        );
        assert_eq!(
            (s.reason, s.next_rip(), s.rax, s.rcx, s.rdx),
            (10, 0x5002, 1, 2, 3)
        );
        assert!(!reads.borrow().contains(&VmcsField::GuestPhysicalAddress));
        assert!(!reads.borrow().contains(&VmcsField::VmExitInstructionInfo));
        assert!(
            !reads
                .borrow()
                .contains(&VmcsField::VmExitInterruptionErrorCode)
        );
        assert_eq!(exit(&s), VmxExit::Cpuid { next_rip: 0x5002 });
        // EPT violation during #PF delivery: GPA, linear address, IDT-vectoring error code.
        reads.borrow_mut().clear();
        let s = ExitSnapshot::read(
            fake(vec![
                (VmcsField::ExitReason, 48),
                (VmcsField::ExitQualification, 0x82),
                (VmcsField::GuestPhysicalAddress, 0x9000),
                (VmcsField::GuestLinearAddress, 0x7000),
                (VmcsField::IdtVectoringInfo, 0x8000_0B0E),
                (VmcsField::IdtVectoringErrorCode, 2),
            ]),
            &regs,
            true,
        );
        assert_eq!(
            (s.guest_physical_address, s.guest_linear_address),
            (0x9000, 0x7000)
        );
        assert_eq!(s.idt_vectoring_error_code, 2);
        // OUTS with instruction information.
        reads.borrow_mut().clear();
        let s = ExitSnapshot::read(
            fake(vec![
                (VmcsField::ExitReason, 30),
                (VmcsField::ExitQualification, IO_STRING),
                (VmcsField::VmExitInstructionInfo, 1 << 7),
            ]),
            &regs,
            true,
        );
        assert_eq!(s.instruction_info, 1 << 7);
        assert!(reads.borrow().contains(&VmcsField::GuestLinearAddress));
        // Without the BASIC bit 54 capability the field is not read.
        reads.borrow_mut().clear();
        let s = ExitSnapshot::read(
            fake(vec![
                (VmcsField::ExitReason, 30),
                (VmcsField::ExitQualification, IO_STRING),
                (VmcsField::VmExitInstructionInfo, 1 << 7),
            ]),
            &regs,
            false,
        );
        assert_eq!(s.instruction_info, 0);
        assert!(!reads.borrow().contains(&VmcsField::VmExitInstructionInfo));
    }
}
