//! SVM exit codes and exit decoding.
//!
//! Why: STYLE.md point 2 — each exit is read from the VMCB once into a plain
//! [`ExitSnapshot`], decoded here into [`SvmExit`], and only then handled. The decoder is a
//! pure function, so exit handling is tested as tables of raw snapshots in, decoded exits
//! out. The arch-neutral `Exit` of the core crate is produced from [`SvmExit`] by the backend
//! glue; this type carries everything that mapping needs (next RIP, I/O value, MSR index,
//! fault address and access kind, pending event).
//!
//! Exit codes: APM vol. 2, appendix C, table C-1 "SVM Intercept Codes". EXITINFO1/EXITINFO2
//! formats: APM 15.10.2 (IOIO), 15.11 (MSR), 15.12 (exceptions), 15.25.6 (#NPF), 15.7.2
//! (EXITINTINFO).
#![forbid(unsafe_code)]

use crate::addr::GuestPhys;
use crate::insn_len::{self, CodeSize, InsnBytes, InsnLenError, SkipInsn};
use crate::regs::GuestRegs;
use crate::vmcb::{Event, SegAttrib, Vmcb};
use bitflags::bitflags;

/// An SVM exit code (VMCB EXITCODE, offset 0x070), APM appendix C.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitCode {
    /// 0x00–0x0F: read of CRn.
    CrRead(u8),
    /// 0x10–0x1F: write of CRn.
    CrWrite(u8),
    /// 0x20–0x2F: read of DRn.
    DrRead(u8),
    /// 0x30–0x3F: write of DRn.
    DrWrite(u8),
    /// 0x40–0x5F: exception vector n.
    Exception(u8),
    /// 0x60: physical INTR.
    Intr,
    /// 0x61: physical NMI.
    Nmi,
    /// 0x62: physical SMI.
    Smi,
    /// 0x63: physical INIT.
    Init,
    /// 0x64: virtual INTR.
    Vintr,
    /// 0x65: selective CR0 write.
    Cr0SelWrite,
    /// 0x66: SIDT.
    IdtrRead,
    /// 0x67: SGDT.
    GdtrRead,
    /// 0x68: SLDT.
    LdtrRead,
    /// 0x69: STR.
    TrRead,
    /// 0x6A: LIDT.
    IdtrWrite,
    /// 0x6B: LGDT.
    GdtrWrite,
    /// 0x6C: LLDT.
    LdtrWrite,
    /// 0x6D: LTR.
    TrWrite,
    /// 0x6E: RDTSC.
    Rdtsc,
    /// 0x6F: RDPMC.
    Rdpmc,
    /// 0x70: PUSHF.
    Pushf,
    /// 0x71: POPF.
    Popf,
    /// 0x72: CPUID.
    Cpuid,
    /// 0x73: RSM.
    Rsm,
    /// 0x74: IRET.
    Iret,
    /// 0x75: INTn.
    Swint,
    /// 0x76: INVD.
    Invd,
    /// 0x77: PAUSE.
    Pause,
    /// 0x78: HLT.
    Hlt,
    /// 0x79: INVLPG.
    Invlpg,
    /// 0x7A: INVLPGA.
    Invlpga,
    /// 0x7B: IN/OUT/INS/OUTS.
    Ioio,
    /// 0x7C: RDMSR/WRMSR.
    Msr,
    /// 0x7D: task switch.
    TaskSwitch,
    /// 0x7E: FERR_FREEZE.
    FerrFreeze,
    /// 0x7F: shutdown (triple fault and friends).
    Shutdown,
    /// 0x80: VMRUN.
    Vmrun,
    /// 0x81: VMMCALL.
    Vmmcall,
    /// 0x82: VMLOAD.
    Vmload,
    /// 0x83: VMSAVE.
    Vmsave,
    /// 0x84: STGI.
    Stgi,
    /// 0x85: CLGI.
    Clgi,
    /// 0x86: SKINIT.
    Skinit,
    /// 0x87: RDTSCP.
    Rdtscp,
    /// 0x88: ICEBP.
    Icebp,
    /// 0x89: WBINVD/WBNOINVD.
    Wbinvd,
    /// 0x8A: MONITOR/MONITORX.
    Monitor,
    /// 0x8B: MWAIT/MWAITX.
    Mwait,
    /// 0x8C: MWAIT/MWAITX with monitor armed.
    MwaitConditional,
    /// 0x8D: XSETBV.
    Xsetbv,
    /// 0x8E: RDPRU.
    Rdpru,
    /// 0x8F: EFER write trap.
    EferWriteTrap,
    /// 0x90–0x9F: CRn write trap.
    CrWriteTrap(u8),
    /// 0xA0: INVLPGB.
    Invlpgb,
    /// 0xA1: illegal INVLPGB.
    InvlpgbIllegal,
    /// 0xA2: INVPCID.
    Invpcid,
    /// 0xA3: MCOMMIT.
    Mcommit,
    /// 0xA4: TLBSYNC.
    Tlbsync,
    /// 0xA5: bus lock.
    BusLock,
    /// 0xA6: HLT while no virtual interrupt pending.
    IdleHlt,
    /// 0x400: nested page fault.
    Npf,
    /// 0x401: AVIC incomplete IPI.
    AvicIncompleteIpi,
    /// 0x402: AVIC access to an unaccelerated register.
    AvicNoAccel,
    /// 0x403: VMGEXIT (SEV-ES).
    Vmgexit,
    /// -1: VMEXIT_INVALID, VMRUN failed its consistency checks (APM 15.5.1).
    Invalid,
    /// -2: VMEXIT_BUSY (SEV-SNP VMSA busy).
    Busy,
    /// -3: VMEXIT_IDLE_REQUIRED (SEV-SNP).
    IdleRequired,
    /// -4: VMEXIT_INVALID_PMC.
    InvalidPmc,
    /// A code this crate does not know; the raw value is kept.
    Unknown(u64),
}

impl ExitCode {
    /// Decode a raw EXITCODE.
    pub const fn from_raw(raw: u64) -> Self {
        use ExitCode::*;
        match raw {
            0x00..=0x0F => CrRead(raw as u8),
            0x10..=0x1F => CrWrite((raw - 0x10) as u8),
            0x20..=0x2F => DrRead((raw - 0x20) as u8),
            0x30..=0x3F => DrWrite((raw - 0x30) as u8),
            0x40..=0x5F => Exception((raw - 0x40) as u8),
            0x60 => Intr,
            0x61 => Nmi,
            0x62 => Smi,
            0x63 => Init,
            0x64 => Vintr,
            0x65 => Cr0SelWrite,
            0x66 => IdtrRead,
            0x67 => GdtrRead,
            0x68 => LdtrRead,
            0x69 => TrRead,
            0x6A => IdtrWrite,
            0x6B => GdtrWrite,
            0x6C => LdtrWrite,
            0x6D => TrWrite,
            0x6E => Rdtsc,
            0x6F => Rdpmc,
            0x70 => Pushf,
            0x71 => Popf,
            0x72 => Cpuid,
            0x73 => Rsm,
            0x74 => Iret,
            0x75 => Swint,
            0x76 => Invd,
            0x77 => Pause,
            0x78 => Hlt,
            0x79 => Invlpg,
            0x7A => Invlpga,
            0x7B => Ioio,
            0x7C => Msr,
            0x7D => TaskSwitch,
            0x7E => FerrFreeze,
            0x7F => Shutdown,
            0x80 => Vmrun,
            0x81 => Vmmcall,
            0x82 => Vmload,
            0x83 => Vmsave,
            0x84 => Stgi,
            0x85 => Clgi,
            0x86 => Skinit,
            0x87 => Rdtscp,
            0x88 => Icebp,
            0x89 => Wbinvd,
            0x8A => Monitor,
            0x8B => Mwait,
            0x8C => MwaitConditional,
            0x8D => Xsetbv,
            0x8E => Rdpru,
            0x8F => EferWriteTrap,
            0x90..=0x9F => CrWriteTrap((raw - 0x90) as u8),
            0xA0 => Invlpgb,
            0xA1 => InvlpgbIllegal,
            0xA2 => Invpcid,
            0xA3 => Mcommit,
            0xA4 => Tlbsync,
            0xA5 => BusLock,
            0xA6 => IdleHlt,
            0x400 => Npf,
            0x401 => AvicIncompleteIpi,
            0x402 => AvicNoAccel,
            0x403 => Vmgexit,
            0xFFFF_FFFF_FFFF_FFFF => Invalid,
            0xFFFF_FFFF_FFFF_FFFE => Busy,
            0xFFFF_FFFF_FFFF_FFFD => IdleRequired,
            0xFFFF_FFFF_FFFF_FFFC => InvalidPmc,
            other => Unknown(other),
        }
    }

    /// The raw EXITCODE value.
    pub const fn raw(self) -> u64 {
        use ExitCode::*;
        match self {
            CrRead(n) => n as u64,
            CrWrite(n) => 0x10 + n as u64,
            DrRead(n) => 0x20 + n as u64,
            DrWrite(n) => 0x30 + n as u64,
            Exception(v) => 0x40 + v as u64,
            Intr => 0x60,
            Nmi => 0x61,
            Smi => 0x62,
            Init => 0x63,
            Vintr => 0x64,
            Cr0SelWrite => 0x65,
            IdtrRead => 0x66,
            GdtrRead => 0x67,
            LdtrRead => 0x68,
            TrRead => 0x69,
            IdtrWrite => 0x6A,
            GdtrWrite => 0x6B,
            LdtrWrite => 0x6C,
            TrWrite => 0x6D,
            Rdtsc => 0x6E,
            Rdpmc => 0x6F,
            Pushf => 0x70,
            Popf => 0x71,
            Cpuid => 0x72,
            Rsm => 0x73,
            Iret => 0x74,
            Swint => 0x75,
            Invd => 0x76,
            Pause => 0x77,
            Hlt => 0x78,
            Invlpg => 0x79,
            Invlpga => 0x7A,
            Ioio => 0x7B,
            Msr => 0x7C,
            TaskSwitch => 0x7D,
            FerrFreeze => 0x7E,
            Shutdown => 0x7F,
            Vmrun => 0x80,
            Vmmcall => 0x81,
            Vmload => 0x82,
            Vmsave => 0x83,
            Stgi => 0x84,
            Clgi => 0x85,
            Skinit => 0x86,
            Rdtscp => 0x87,
            Icebp => 0x88,
            Wbinvd => 0x89,
            Monitor => 0x8A,
            Mwait => 0x8B,
            MwaitConditional => 0x8C,
            Xsetbv => 0x8D,
            Rdpru => 0x8E,
            EferWriteTrap => 0x8F,
            CrWriteTrap(n) => 0x90 + n as u64,
            Invlpgb => 0xA0,
            InvlpgbIllegal => 0xA1,
            Invpcid => 0xA2,
            Mcommit => 0xA3,
            Tlbsync => 0xA4,
            BusLock => 0xA5,
            IdleHlt => 0xA6,
            Npf => 0x400,
            AvicIncompleteIpi => 0x401,
            AvicNoAccel => 0x402,
            Vmgexit => 0x403,
            Invalid => u64::MAX,
            Busy => u64::MAX - 1,
            IdleRequired => u64::MAX - 2,
            InvalidPmc => u64::MAX - 3,
            Unknown(raw) => raw,
        }
    }

    /// The instruction this exit is handled by skipping, if any. Without NRIPS the backend
    /// must fetch the guest's instruction bytes at RIP for these (see [`crate::insn_len`]).
    pub const fn skip_insn(self) -> Option<SkipInsn> {
        use ExitCode::*;
        Some(match self {
            Cpuid => SkipInsn::Cpuid,
            Hlt => SkipInsn::Hlt,
            Msr => SkipInsn::RdmsrOrWrmsr,
            Vmmcall => SkipInsn::Vmmcall,
            Rdpmc => SkipInsn::Rdpmc,
            Rdtsc => SkipInsn::Rdtsc,
            Rdtscp => SkipInsn::Rdtscp,
            Pause => SkipInsn::Pause,
            Invd => SkipInsn::Invd,
            Wbinvd => SkipInsn::Wbinvd,
            Xsetbv => SkipInsn::Xsetbv,
            Monitor => SkipInsn::Monitor,
            Mwait | MwaitConditional => SkipInsn::Mwait,
            _ => return None,
        })
    }

    /// Whether decoding this exit needs guest instruction bytes when nRIP is unavailable.
    pub const fn needs_insn_bytes(self, nrips: bool) -> bool {
        !nrips && self.skip_insn().is_some()
    }
}

/// Everything the decoder needs, read once from the VMCB and the saved guest registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitSnapshot {
    /// EXITCODE (0x070).
    pub exit_code: u64,
    /// EXITINFO1 (0x078).
    pub exit_info1: u64,
    /// EXITINFO2 (0x080).
    pub exit_info2: u64,
    /// EXITINTINFO (0x088).
    pub exit_int_info: u64,
    /// nRIP (0x0C8) if the CPU has NRIPS, else `None`.
    pub next_rip: Option<u64>,
    /// Guest RIP at the exit (points at the intercepted instruction for instruction exits).
    pub rip: u64,
    /// Guest RAX (VMCB 0x5F8): OUT value, WRMSR low half.
    pub rax: u64,
    /// Guest RCX: the MSR index for RDMSR/WRMSR.
    pub rcx: u64,
    /// Guest RDX: WRMSR high half.
    pub rdx: u64,
    /// Code size at the exit (for instruction-length decoding).
    pub code_size: CodeSize,
    /// Guest instruction bytes at RIP, if fetched (or from the VMCB with decode assists).
    pub insn: Option<InsnBytes>,
}

impl ExitSnapshot {
    /// Read a snapshot from a VMCB after #VMEXIT. `nrips` says whether the CPU has NRIPS
    /// (only then is nRIP meaningful); `insn` are bytes the backend fetched at RIP, if any.
    /// If `insn` is `None` and the VMCB holds decode-assist bytes, those are used.
    pub fn from_vmcb(vmcb: &Vmcb, regs: &GuestRegs, nrips: bool, insn: Option<InsnBytes>) -> Self {
        let c = &vmcb.control;
        let s = &vmcb.save;
        let insn = insn.or_else(|| {
            let n = (c.insn_len as usize).min(c.insn_bytes.len());
            (n > 0).then(|| InsnBytes::new(&c.insn_bytes[..n]))
        });
        Self {
            exit_code: c.exit_code,
            exit_info1: c.exit_info1,
            exit_info2: c.exit_info2,
            exit_int_info: c.exit_int_info,
            next_rip: nrips.then_some(c.next_rip),
            rip: s.rip,
            rax: s.rax,
            rcx: regs.rcx,
            rdx: regs.rdx,
            code_size: code_size(vmcb),
            insn,
        }
    }
}

/// The guest's current code size from EFER.LMA, CS.L and CS.D (APM 4.8.1, 4.8.2).
pub fn code_size(vmcb: &Vmcb) -> CodeSize {
    if vmcb.is_64bit_code() {
        CodeSize::Bits64
    } else if vmcb.save.cr0 & 1 != 0 && vmcb.save.cs.attrib.has(SegAttrib::DB) {
        CodeSize::Bits32
    } else {
        CodeSize::Bits16
    }
}

bitflags! {
    /// #NPF error code in EXITINFO1 (APM 15.25.6 "Nested versus Guest Page Faults").
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct NpfError: u64 {
        /// The nested translation was present (protection violation), else not present.
        const PRESENT = 1 << 0;
        /// Write access.
        const WRITE = 1 << 1;
        /// User access (always set: nested walks are user accesses).
        const USER = 1 << 2;
        /// Reserved bit set in a nested page-table entry.
        const RSVD = 1 << 3;
        /// Instruction fetch.
        const EXEC = 1 << 4;
        /// Protection key violation.
        const PK = 1 << 5;
        /// Shadow-stack access.
        const SHADOW_STACK = 1 << 6;
        /// RMP violation (SEV-SNP).
        const RMP = 1 << 31;
        /// Fault while translating the final guest-physical address.
        const FINAL_GPA = 1 << 32;
        /// Fault while translating a guest page-table access.
        const GUEST_PAGE_TABLE = 1 << 33;
    }
}

/// A decoded IOIO exit (EXITINFO1 format: APM 15.10.2, figure 15-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoExit {
    /// Port, bits 31:16.
    pub port: u16,
    /// Operand size in bytes (1, 2 or 4), from SZ8/SZ16/SZ32 (bits 4–6).
    pub size: u8,
    /// OUT/OUTS (TYPE bit 0 clear) rather than IN/INS.
    pub write: bool,
    /// INS/OUTS (STR, bit 2).
    pub string: bool,
    /// REP prefix (bit 3).
    pub rep: bool,
    /// Address size in bits (16, 32, 64) from A16/A32/A64 (bits 7–9); 0 if none is set.
    pub addr_size: u8,
    /// Effective segment (bits 12:10; only with decode assists).
    pub segment: u8,
    /// For a non-string OUT: the value written (RAX masked to `size`).
    pub value: Option<u32>,
    /// RIP after the instruction (EXITINFO2; provided even without NRIPS).
    pub next_rip: u64,
}

/// A decoded RDMSR/WRMSR exit (APM 15.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsrExit {
    /// ECX.
    pub index: u32,
    /// For WRMSR: EDX:EAX. `None` for RDMSR.
    pub write: Option<u64>,
    /// RIP after the instruction.
    pub next_rip: u64,
}

/// A decoded nested page fault (APM 15.25.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NpfExit {
    /// Faulting guest-physical address (EXITINFO2).
    pub gpa: GuestPhys,
    /// Error code (EXITINFO1).
    pub error: NpfError,
}

impl NpfExit {
    /// Write access.
    pub fn write(&self) -> bool {
        self.error.contains(NpfError::WRITE)
    }
    /// Instruction fetch.
    pub fn exec(&self) -> bool {
        self.error.contains(NpfError::EXEC)
    }
    /// The nested entry was present (a permission fault rather than a missing mapping).
    pub fn present(&self) -> bool {
        self.error.contains(NpfError::PRESENT)
    }
}

/// SVM instructions a guest may execute although we do not expose SVM to it; the handler
/// injects #UD (the guest's EFER.SVME is virtualized as 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SvmInsn {
    /// VMRUN.
    Vmrun,
    /// VMLOAD.
    Vmload,
    /// VMSAVE.
    Vmsave,
    /// STGI.
    Stgi,
    /// CLGI.
    Clgi,
    /// SKINIT.
    Skinit,
    /// INVLPGA.
    Invlpga,
}

/// A decoded SVM exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SvmExit {
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
    /// Nested page fault.
    NestedPageFault(NpfExit),
    /// An intercepted exception.
    Exception {
        /// Vector 0–31.
        vector: u8,
        /// Error code (EXITINFO1) for vectors that push one.
        error_code: Option<u32>,
        /// For #PF: the faulting linear address (EXITINFO2).
        fault_address: Option<u64>,
    },
    /// Physical interrupt: let the host take it (STGI), then re-enter.
    Intr,
    /// Physical NMI.
    Nmi,
    /// Physical SMI.
    Smi,
    /// Physical INIT.
    Init,
    /// Virtual interrupt window opened.
    Vintr,
    /// Shutdown (the guest triple-faulted); the VMCB state is undefined afterwards.
    Shutdown,
    /// VMMCALL (hypercall).
    Vmmcall {
        /// RIP after VMMCALL.
        next_rip: u64,
    },
    /// A guest SVM instruction: inject #UD.
    SvmInstruction(SvmInsn),
    /// Another instruction intercept handled by emulate-and-skip (RDTSC, RDPMC, PAUSE,
    /// XSETBV, WBINVD, ...).
    Skip {
        /// Which instruction.
        insn: SkipInsn,
        /// RIP after it.
        next_rip: u64,
    },
    /// MOV to/from CRn (and CR0 selective write, LMSW, CLTS).
    CrAccess {
        /// CR number.
        cr: u8,
        /// Write rather than read.
        write: bool,
        /// GPR operand (decode assists, EXITINFO1 bit 63 set), else `None`.
        gpr: Option<u8>,
    },
    /// MOV to/from DRn.
    DrAccess {
        /// DR number.
        dr: u8,
        /// Write rather than read.
        write: bool,
        /// Raw EXITINFO1 (GPR number in bits 3:0 with decode assists).
        info1: u64,
    },
    /// Task switch (EXITINFO1 = target TSS selector, EXITINFO2 = reason bits).
    TaskSwitch {
        /// Target TSS selector.
        selector: u16,
        /// Raw EXITINFO2.
        info2: u64,
    },
    /// VMEXIT_INVALID: VMRUN found illegal guest state (APM 15.5.1); nothing ran.
    VmrunFailed,
    /// Anything else; the raw information is kept.
    Other {
        /// The exit code.
        code: ExitCode,
        /// EXITINFO1.
        info1: u64,
        /// EXITINFO2.
        info2: u64,
    },
}

/// The decoded exit plus the event whose delivery it interrupted (EXITINTINFO), which the
/// handler must re-inject unless it handles it otherwise (APM 15.7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodedExit {
    /// The exit.
    pub exit: SvmExit,
    /// EXITINTINFO, if valid.
    pub interrupted_event: Option<Event>,
}

/// Why an exit could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// An emulate-and-skip exit without nRIP whose instruction length could not be
    /// determined. With [`InsnLenError::NoBytes`]: fetch the bytes at RIP and decode again.
    InsnLength {
        /// The exit code.
        code: ExitCode,
        /// Why.
        error: InsnLenError,
    },
}

/// Whether exception `vector` pushes an error code (APM 8.2, table 8-1).
pub const fn exception_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Decode a snapshot.
pub fn decode(s: &ExitSnapshot) -> Result<DecodedExit, DecodeError> {
    let code = ExitCode::from_raw(s.exit_code);
    let next = |insn: SkipInsn| {
        insn_len::next_rip(s.next_rip, s.rip, s.code_size, s.insn.as_ref(), insn)
            .map_err(|error| DecodeError::InsnLength { code, error })
    };
    let exit = match code {
        ExitCode::Cpuid => SvmExit::Cpuid {
            next_rip: next(SkipInsn::Cpuid)?,
        },
        ExitCode::Hlt => SvmExit::Hlt {
            next_rip: next(SkipInsn::Hlt)?,
        },
        ExitCode::Vmmcall => SvmExit::Vmmcall {
            next_rip: next(SkipInsn::Vmmcall)?,
        },
        ExitCode::Ioio => SvmExit::Io(decode_io(s)),
        ExitCode::Msr => {
            let write = s.exit_info1 & 1 == 1;
            let expected = if write {
                SkipInsn::Wrmsr
            } else {
                SkipInsn::Rdmsr
            };
            SvmExit::Msr(MsrExit {
                index: s.rcx as u32,
                write: write.then_some((s.rdx << 32) | (s.rax & 0xFFFF_FFFF)),
                next_rip: next(expected)?,
            })
        }
        ExitCode::Npf => SvmExit::NestedPageFault(NpfExit {
            gpa: GuestPhys(s.exit_info2),
            error: NpfError::from_bits_retain(s.exit_info1),
        }),
        ExitCode::Exception(vector) => SvmExit::Exception {
            vector,
            error_code: exception_has_error_code(vector).then_some(s.exit_info1 as u32),
            fault_address: (vector == 14).then_some(s.exit_info2),
        },
        ExitCode::Intr => SvmExit::Intr,
        ExitCode::Nmi => SvmExit::Nmi,
        ExitCode::Smi => SvmExit::Smi,
        ExitCode::Init => SvmExit::Init,
        ExitCode::Vintr => SvmExit::Vintr,
        ExitCode::Shutdown => SvmExit::Shutdown,
        ExitCode::Vmrun => SvmExit::SvmInstruction(SvmInsn::Vmrun),
        ExitCode::Vmload => SvmExit::SvmInstruction(SvmInsn::Vmload),
        ExitCode::Vmsave => SvmExit::SvmInstruction(SvmInsn::Vmsave),
        ExitCode::Stgi => SvmExit::SvmInstruction(SvmInsn::Stgi),
        ExitCode::Clgi => SvmExit::SvmInstruction(SvmInsn::Clgi),
        ExitCode::Skinit => SvmExit::SvmInstruction(SvmInsn::Skinit),
        ExitCode::Invlpga => SvmExit::SvmInstruction(SvmInsn::Invlpga),
        ExitCode::CrRead(cr) | ExitCode::CrWrite(cr) => SvmExit::CrAccess {
            cr,
            write: matches!(code, ExitCode::CrWrite(_)),
            gpr: (s.exit_info1 >> 63 == 1).then_some((s.exit_info1 & 0xF) as u8),
        },
        ExitCode::Cr0SelWrite => SvmExit::CrAccess {
            cr: 0,
            write: true,
            gpr: (s.exit_info1 >> 63 == 1).then_some((s.exit_info1 & 0xF) as u8),
        },
        ExitCode::DrRead(dr) | ExitCode::DrWrite(dr) => SvmExit::DrAccess {
            dr,
            write: matches!(code, ExitCode::DrWrite(_)),
            info1: s.exit_info1,
        },
        ExitCode::TaskSwitch => SvmExit::TaskSwitch {
            selector: s.exit_info1 as u16,
            info2: s.exit_info2,
        },
        ExitCode::Invalid => SvmExit::VmrunFailed,
        other => match other.skip_insn() {
            Some(insn) => SvmExit::Skip {
                insn,
                next_rip: next(insn)?,
            },
            None => SvmExit::Other {
                code: other,
                info1: s.exit_info1,
                info2: s.exit_info2,
            },
        },
    };
    Ok(DecodedExit {
        exit,
        interrupted_event: Event::decode(s.exit_int_info),
    })
}

fn decode_io(s: &ExitSnapshot) -> IoExit {
    let i = s.exit_info1;
    let size = if i & (1 << 6) != 0 {
        4
    } else if i & (1 << 5) != 0 {
        2
    } else {
        1
    };
    let addr_size = if i & (1 << 9) != 0 {
        64
    } else if i & (1 << 8) != 0 {
        32
    } else if i & (1 << 7) != 0 {
        16
    } else {
        0
    };
    let write = i & 1 == 0;
    let string = i & (1 << 2) != 0;
    let mask: u64 = match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    };
    IoExit {
        port: (i >> 16) as u16,
        size,
        write,
        string,
        rep: i & (1 << 3) != 0,
        addr_size,
        segment: ((i >> 10) & 7) as u8,
        value: (write && !string).then_some((s.rax & mask) as u32),
        next_rip: s.exit_info2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(code: u64, info1: u64, info2: u64) -> ExitSnapshot {
        ExitSnapshot {
            exit_code: code,
            exit_info1: info1,
            exit_info2: info2,
            exit_int_info: 0,
            next_rip: None,
            rip: 0x1000,
            rax: 0x1122_3344_5566_7788,
            rcx: 0xC000_0080,
            rdx: 0xAABB_CCDD,
            code_size: CodeSize::Bits64,
            insn: None,
        }
    }

    fn with_insn(mut s: ExitSnapshot, bytes: &[u8]) -> ExitSnapshot {
        s.insn = Some(InsnBytes::new(bytes));
        s
    }

    fn exit(s: &ExitSnapshot) -> SvmExit {
        decode(s).expect("decodes").exit
    }

    #[test]
    fn exit_code_roundtrip() {
        for raw in (0..=0xA6u64).chain(0x400..=0x403).chain([
            u64::MAX,
            u64::MAX - 1,
            u64::MAX - 2,
            u64::MAX - 3,
        ]) {
            let c = ExitCode::from_raw(raw);
            assert!(
                !matches!(c, ExitCode::Unknown(_)),
                "{raw:#x} should be known"
            );
            assert_eq!(c.raw(), raw);
        }
        for raw in [0xA7u64, 0x3FF, 0x404, 0x1234_5678] {
            assert_eq!(ExitCode::from_raw(raw), ExitCode::Unknown(raw));
            assert_eq!(ExitCode::from_raw(raw).raw(), raw);
        }
        let table = [
            (0x00, ExitCode::CrRead(0)),
            (0x13, ExitCode::CrWrite(3)),
            (0x27, ExitCode::DrRead(7)),
            (0x46, ExitCode::Exception(6)),
            (0x4E, ExitCode::Exception(14)),
            (0x60, ExitCode::Intr),
            (0x72, ExitCode::Cpuid),
            (0x78, ExitCode::Hlt),
            (0x7B, ExitCode::Ioio),
            (0x7C, ExitCode::Msr),
            (0x7F, ExitCode::Shutdown),
            (0x80, ExitCode::Vmrun),
            (0x81, ExitCode::Vmmcall),
            (0x400, ExitCode::Npf),
            (u64::MAX, ExitCode::Invalid),
        ];
        for (raw, c) in table {
            assert_eq!(ExitCode::from_raw(raw), c);
        }
    }

    #[test]
    fn io_exits() {
        // OUT DX, AL to 0x3F8, A64: TYPE=0, SZ8, A64, port<<16.
        let s = snap(0x7B, (0x3F8 << 16) | (1 << 4) | (1 << 9), 0x1001);
        assert_eq!(
            exit(&s),
            SvmExit::Io(IoExit {
                port: 0x3F8,
                size: 1,
                write: true,
                string: false,
                rep: false,
                addr_size: 64,
                segment: 0,
                value: Some(0x88),
                next_rip: 0x1001,
            })
        );
        // IN EAX, DX from 0xCFC, A32.
        let s = snap(0x7B, (0xCFC << 16) | (1 << 6) | (1 << 8) | 1, 0x2002);
        let SvmExit::Io(io) = exit(&s) else { panic!() };
        assert_eq!(
            (
                io.port,
                io.size,
                io.write,
                io.value,
                io.addr_size,
                io.next_rip
            ),
            (0xCFC, 4, false, None, 32, 0x2002)
        );
        // REP OUTSW to 0x1F0 (A16): string, rep, no value.
        let s = snap(
            0x7B,
            (0x1F0 << 16) | (1 << 5) | (1 << 7) | (1 << 3) | (1 << 2),
            0x3003,
        );
        let SvmExit::Io(io) = exit(&s) else { panic!() };
        assert_eq!(
            (io.size, io.write, io.string, io.rep, io.value, io.addr_size),
            (2, true, true, true, None, 16)
        );
        // OUT DX, AX: value masked to 16 bits.
        let s = snap(0x7B, (0xF4 << 16) | (1 << 5), 0x1001);
        let SvmExit::Io(io) = exit(&s) else { panic!() };
        assert_eq!(io.value, Some(0x7788));
        // No instruction bytes needed: EXITINFO2 holds the next RIP even without NRIPS.
        assert!(!ExitCode::Ioio.needs_insn_bytes(false));
    }

    #[test]
    fn msr_exits() {
        let s = with_insn(snap(0x7C, 0, 0), &[0x0F, 0x32]);
        assert_eq!(
            exit(&s),
            SvmExit::Msr(MsrExit {
                index: 0xC000_0080,
                write: None,
                next_rip: 0x1002
            })
        );
        let s = with_insn(snap(0x7C, 1, 0), &[0x0F, 0x30]);
        assert_eq!(
            exit(&s),
            SvmExit::Msr(MsrExit {
                index: 0xC000_0080,
                write: Some(0xAABB_CCDD_5566_7788),
                next_rip: 0x1002
            })
        );
        // WRMSR exit but RDMSR bytes: mismatch, refuse to guess.
        let s = with_insn(snap(0x7C, 1, 0), &[0x0F, 0x32]);
        assert_eq!(
            decode(&s),
            Err(DecodeError::InsnLength {
                code: ExitCode::Msr,
                error: InsnLenError::Mismatch { opcode: 0x0F }
            })
        );
    }

    #[test]
    fn skip_exits_without_and_with_nrips() {
        // No NRIPS, no bytes: the backend is told to fetch them.
        let s = snap(0x72, 0, 0);
        assert_eq!(
            decode(&s),
            Err(DecodeError::InsnLength {
                code: ExitCode::Cpuid,
                error: InsnLenError::NoBytes
            })
        );
        assert!(ExitCode::Cpuid.needs_insn_bytes(false));
        assert!(!ExitCode::Cpuid.needs_insn_bytes(true));
        // Bytes with a REX prefix.
        let s = with_insn(snap(0x72, 0, 0), &[0x48, 0x0F, 0xA2]);
        assert_eq!(exit(&s), SvmExit::Cpuid { next_rip: 0x1003 });
        // NRIPS.
        let mut s = snap(0x78, 0, 0);
        s.next_rip = Some(0x1001);
        assert_eq!(exit(&s), SvmExit::Hlt { next_rip: 0x1001 });
        let s = with_insn(snap(0x81, 0, 0), &[0x0F, 0x01, 0xD9]);
        assert_eq!(exit(&s), SvmExit::Vmmcall { next_rip: 0x1003 });
        let s = with_insn(snap(0x6F, 0, 0), &[0x0F, 0x33]);
        assert_eq!(
            exit(&s),
            SvmExit::Skip {
                insn: SkipInsn::Rdpmc,
                next_rip: 0x1002
            }
        );
        let s = with_insn(snap(0x87, 0, 0), &[0x0F, 0x01, 0xF9]);
        assert_eq!(
            exit(&s),
            SvmExit::Skip {
                insn: SkipInsn::Rdtscp,
                next_rip: 0x1003
            }
        );
    }

    #[test]
    fn npf_exits() {
        // Write to a non-present GPA during the final translation.
        let s = snap(0x400, (1 << 32) | 0b110, 0xFEE0_0000);
        let SvmExit::NestedPageFault(npf) = exit(&s) else {
            panic!()
        };
        assert_eq!(npf.gpa, GuestPhys(0xFEE0_0000));
        assert!(npf.write() && !npf.exec() && !npf.present());
        assert!(npf.error.contains(NpfError::FINAL_GPA));
        // Instruction fetch from a present, non-executable page during a guest walk.
        let s = snap(0x400, (1 << 33) | 0b10101, 0x20_0000);
        let SvmExit::NestedPageFault(npf) = exit(&s) else {
            panic!()
        };
        assert!(npf.exec() && npf.present() && !npf.write());
        assert!(npf.error.contains(NpfError::GUEST_PAGE_TABLE));
    }

    #[test]
    fn exception_exits() {
        assert_eq!(
            exit(&snap(0x4E, 0x2, 0xDEAD_B000)),
            SvmExit::Exception {
                vector: 14,
                error_code: Some(2),
                fault_address: Some(0xDEAD_B000)
            }
        );
        assert_eq!(
            exit(&snap(0x4D, 0x18, 0)),
            SvmExit::Exception {
                vector: 13,
                error_code: Some(0x18),
                fault_address: None
            }
        );
        assert_eq!(
            exit(&snap(0x46, 0, 0)),
            SvmExit::Exception {
                vector: 6,
                error_code: None,
                fault_address: None
            }
        );
        assert_eq!(
            exit(&snap(0x41, 0, 0)),
            SvmExit::Exception {
                vector: 1,
                error_code: None,
                fault_address: None
            }
        );
    }

    #[test]
    fn simple_exits() {
        let table = [
            (0x60, SvmExit::Intr),
            (0x61, SvmExit::Nmi),
            (0x62, SvmExit::Smi),
            (0x63, SvmExit::Init),
            (0x64, SvmExit::Vintr),
            (0x7F, SvmExit::Shutdown),
            (0x80, SvmExit::SvmInstruction(SvmInsn::Vmrun)),
            (0x82, SvmExit::SvmInstruction(SvmInsn::Vmload)),
            (0x83, SvmExit::SvmInstruction(SvmInsn::Vmsave)),
            (0x84, SvmExit::SvmInstruction(SvmInsn::Stgi)),
            (0x85, SvmExit::SvmInstruction(SvmInsn::Clgi)),
            (0x86, SvmExit::SvmInstruction(SvmInsn::Skinit)),
            (0x7A, SvmExit::SvmInstruction(SvmInsn::Invlpga)),
            (u64::MAX, SvmExit::VmrunFailed),
            (
                0x1234,
                SvmExit::Other {
                    code: ExitCode::Unknown(0x1234),
                    info1: 7,
                    info2: 9,
                },
            ),
            (
                0x7E,
                SvmExit::Other {
                    code: ExitCode::FerrFreeze,
                    info1: 7,
                    info2: 9,
                },
            ),
        ];
        for (raw, expected) in table {
            assert_eq!(exit(&snap(raw, 7, 9)), expected, "{raw:#x}");
        }
    }

    #[test]
    fn cr_dr_task_switch() {
        // MOV CR3, RBX with decode assists.
        assert_eq!(
            exit(&snap(0x13, (1 << 63) | 3, 0)),
            SvmExit::CrAccess {
                cr: 3,
                write: true,
                gpr: Some(3)
            }
        );
        // Without decode assists.
        assert_eq!(
            exit(&snap(0x04, 0, 0)),
            SvmExit::CrAccess {
                cr: 4,
                write: false,
                gpr: None
            }
        );
        assert_eq!(
            exit(&snap(0x65, 0, 0)),
            SvmExit::CrAccess {
                cr: 0,
                write: true,
                gpr: None
            }
        );
        assert_eq!(
            exit(&snap(0x37, 2, 0)),
            SvmExit::DrAccess {
                dr: 7,
                write: true,
                info1: 2
            }
        );
        assert_eq!(
            exit(&snap(0x7D, 0x28, 1 << 36)),
            SvmExit::TaskSwitch {
                selector: 0x28,
                info2: 1 << 36
            }
        );
    }

    #[test]
    fn interrupted_event_is_reported() {
        let mut s = snap(0x400, 0b100, 0x1000);
        s.exit_int_info = Event::exception(14, Some(2)).encode();
        let d = decode(&s).unwrap();
        assert_eq!(d.interrupted_event, Some(Event::exception(14, Some(2))));
        assert_eq!(decode(&snap(0x60, 0, 0)).unwrap().interrupted_event, None);
    }

    #[test]
    fn snapshot_from_vmcb() {
        let mut v = Box::new(Vmcb::ZERO);
        v.control.exit_code = 0x72;
        v.control.next_rip = 0x5002;
        v.save.rip = 0x5000;
        v.save.efer = crate::vmcb::Efer::LMA | crate::vmcb::Efer::LME;
        v.save.cs.attrib = SegAttrib(0xA9B);
        let regs = GuestRegs {
            rcx: 1,
            ..Default::default()
        };
        let s = ExitSnapshot::from_vmcb(&v, &regs, true, None);
        assert_eq!(
            (s.next_rip, s.rip, s.rcx, s.code_size, s.insn),
            (Some(0x5002), 0x5000, 1, CodeSize::Bits64, None)
        );
        assert_eq!(exit(&s), SvmExit::Cpuid { next_rip: 0x5002 });
        // Without NRIPS, nRIP is ignored; decode-assist bytes are picked up.
        v.control.insn_len = 2;
        v.control.insn_bytes[..2].copy_from_slice(&[0x0F, 0xA2]);
        let s = ExitSnapshot::from_vmcb(&v, &regs, false, None);
        assert_eq!(s.next_rip, None);
        assert_eq!(exit(&s), SvmExit::Cpuid { next_rip: 0x5002 });
        // 32-bit and 16-bit code sizes.
        v.save.efer = crate::vmcb::Efer::empty();
        v.save.cr0 = 1;
        v.save.cs.attrib = SegAttrib(0xC9B);
        assert_eq!(code_size(&v), CodeSize::Bits32);
        v.save.cr0 = 0;
        assert_eq!(code_size(&v), CodeSize::Bits16);
    }
}
