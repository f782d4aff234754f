//! The Virtual Machine Control Block as typed Rust structs.
//!
//! Why: the VMCB is the whole interface between the hypervisor and the CPU's SVM
//! implementation. It is plain memory (no VMREAD/VMWRITE as on Intel), so the safest way to
//! use it is a `#[repr(C)]` struct whose every offset is checked at compile time against the
//! APM (vol. 2, appendix B, tables B-1 "VMCB Layout, Control Area" and B-2 "VMCB Layout, State
//! Save Area"). Reading and writing fields is then ordinary safe Rust; only the physical
//! address of the page ever reaches the hardware (`crate::hw`).
//!
//! Fields this project never uses (AVIC, SEV, SEV-ES, SNP) are kept as reserved bytes: they
//! must stay zero for a plain guest, and naming them would invite using them untested.
#![forbid(unsafe_code)]

use bitflags::bitflags;
use core::mem::{offset_of, size_of};

bitflags! {
    /// Intercept vector 3 at control-area offset 0x00C (APM table B-1; exit codes 0x60–0x7F).
    #[repr(transparent)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct InterceptMisc1: u32 {
        /// Physical maskable interrupt (exit 0x60).
        const INTR = 1 << 0;
        /// Physical NMI.
        const NMI = 1 << 1;
        /// Physical SMI.
        const SMI = 1 << 2;
        /// Physical INIT.
        const INIT = 1 << 3;
        /// Virtual interrupt window (V_IRQ taken).
        const VINTR = 1 << 4;
        /// CR0 writes that change bits other than CR0.TS or CR0.MP.
        const CR0_SEL_WRITE = 1 << 5;
        /// SIDT.
        const IDTR_READ = 1 << 6;
        /// SGDT.
        const GDTR_READ = 1 << 7;
        /// SLDT.
        const LDTR_READ = 1 << 8;
        /// STR.
        const TR_READ = 1 << 9;
        /// LIDT.
        const IDTR_WRITE = 1 << 10;
        /// LGDT.
        const GDTR_WRITE = 1 << 11;
        /// LLDT.
        const LDTR_WRITE = 1 << 12;
        /// LTR.
        const TR_WRITE = 1 << 13;
        /// RDTSC.
        const RDTSC = 1 << 14;
        /// RDPMC.
        const RDPMC = 1 << 15;
        /// PUSHF.
        const PUSHF = 1 << 16;
        /// POPF.
        const POPF = 1 << 17;
        /// CPUID.
        const CPUID = 1 << 18;
        /// RSM.
        const RSM = 1 << 19;
        /// IRET.
        const IRET = 1 << 20;
        /// Software interrupt (INTn).
        const INTN = 1 << 21;
        /// INVD.
        const INVD = 1 << 22;
        /// PAUSE (subject to the pause filter).
        const PAUSE = 1 << 23;
        /// HLT.
        const HLT = 1 << 24;
        /// INVLPG.
        const INVLPG = 1 << 25;
        /// INVLPGA.
        const INVLPGA = 1 << 26;
        /// IN/OUT/INS/OUTS, filtered by the I/O permission map (APM 15.10.1).
        const IOIO_PROT = 1 << 27;
        /// RDMSR/WRMSR, filtered by the MSR permission map (APM 15.11).
        const MSR_PROT = 1 << 28;
        /// Task switches.
        const TASK_SWITCH = 1 << 29;
        /// FERR_FREEZE (processor "frozen" waiting for an FERR).
        const FERR_FREEZE = 1 << 30;
        /// Shutdown (e.g. triple fault) — without it the host CPU itself shuts down.
        const SHUTDOWN = 1 << 31;
    }
}

bitflags! {
    /// Intercept vector 4 at control-area offset 0x010 (APM table B-1; exits 0x80–0x9F).
    #[repr(transparent)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct InterceptMisc2: u32 {
        /// VMRUN. Must be set, or VMRUN fails its consistency check (APM 15.5.1).
        const VMRUN = 1 << 0;
        /// VMMCALL.
        const VMMCALL = 1 << 1;
        /// VMLOAD.
        const VMLOAD = 1 << 2;
        /// VMSAVE.
        const VMSAVE = 1 << 3;
        /// STGI.
        const STGI = 1 << 4;
        /// CLGI.
        const CLGI = 1 << 5;
        /// SKINIT.
        const SKINIT = 1 << 6;
        /// RDTSCP.
        const RDTSCP = 1 << 7;
        /// ICEBP (INT1, opcode F1).
        const ICEBP = 1 << 8;
        /// WBINVD and WBNOINVD.
        const WBINVD = 1 << 9;
        /// MONITOR / MONITORX.
        const MONITOR = 1 << 10;
        /// MWAIT / MWAITX, unconditionally.
        const MWAIT = 1 << 11;
        /// MWAIT / MWAITX, only if the monitor hardware is armed.
        const MWAIT_CONDITIONAL = 1 << 12;
        /// XSETBV.
        const XSETBV = 1 << 13;
        /// RDPRU.
        const RDPRU = 1 << 14;
        /// Writes to EFER, trapped after the write completed.
        const EFER_WRITE_TRAP = 1 << 15;
        /// Writes to CR0..CR15, trapped after completion (bits 16–31, one per CR).
        const CR_WRITE_TRAP = 0xFFFF << 16;
    }
}

bitflags! {
    /// Intercept vector 5 at control-area offset 0x014 (APM table B-1; exits 0xA0–0xA6).
    #[repr(transparent)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct InterceptMisc3: u32 {
        /// All INVLPGB executions.
        const INVLPGB = 1 << 0;
        /// Only illegally specified INVLPGB.
        const INVLPGB_ILLEGAL = 1 << 1;
        /// INVPCID.
        const INVPCID = 1 << 2;
        /// MCOMMIT.
        const MCOMMIT = 1 << 3;
        /// TLBSYNC.
        const TLBSYNC = 1 << 4;
        /// Bus lock (needs the bus-lock threshold feature).
        const BUS_LOCK = 1 << 5;
        /// HLT when no virtual interrupt is pending (idle-HLT feature).
        const IDLE_HLT = 1 << 6;
    }
}

bitflags! {
    /// Exception intercept bitmap at offset 0x008: bit *n* intercepts vector *n*
    /// (exit code 0x40 + *n*, APM 15.12).
    #[repr(transparent)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ExceptionIntercepts: u32 {
        /// #DE divide error.
        const DE = 1 << 0;
        /// #DB debug.
        const DB = 1 << 1;
        /// NMI vector (as an exception; physical NMIs use [`InterceptMisc1::NMI`]).
        const NMI = 1 << 2;
        /// #BP breakpoint.
        const BP = 1 << 3;
        /// #OF overflow.
        const OF = 1 << 4;
        /// #BR bound range.
        const BR = 1 << 5;
        /// #UD invalid opcode.
        const UD = 1 << 6;
        /// #NM device not available.
        const NM = 1 << 7;
        /// #DF double fault.
        const DF = 1 << 8;
        /// #TS invalid TSS.
        const TS = 1 << 10;
        /// #NP segment not present.
        const NP = 1 << 11;
        /// #SS stack fault.
        const SS = 1 << 12;
        /// #GP general protection.
        const GP = 1 << 13;
        /// #PF page fault.
        const PF = 1 << 14;
        /// #MF x87 floating point.
        const MF = 1 << 16;
        /// #AC alignment check.
        const AC = 1 << 17;
        /// #MC machine check.
        const MC = 1 << 18;
        /// #XF SIMD floating point.
        const XF = 1 << 19;
        /// #CP control protection.
        const CP = 1 << 21;
        /// #HV hypervisor injection.
        const HV = 1 << 28;
        /// #VC VMM communication.
        const VC = 1 << 29;
        /// #SX security exception.
        const SX = 1 << 30;
    }
}

bitflags! {
    /// Interrupt state at offset 0x068 (APM table B-1).
    #[repr(transparent)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct InterruptState: u64 {
        /// The guest is in an interrupt shadow (after STI or MOV SS; APM 15.21.5).
        const INTERRUPT_SHADOW = 1 << 0;
        /// Value of the guest's RFLAGS.IF (written on #VMEXIT for SEV-ES guests).
        const GUEST_INTERRUPT_MASK = 1 << 1;
    }
}

bitflags! {
    /// Nested-paging and memory-encryption controls at offset 0x090 (APM table B-1).
    #[repr(transparent)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct NpControl: u64 {
        /// NP_ENABLE: nested paging on; N_CR3 holds the nested page-table root (APM 15.25.3).
        const NP_ENABLE = 1 << 0;
        /// Secure Encrypted Virtualization (unused here).
        const SEV = 1 << 1;
        /// SEV encrypted state (unused here).
        const SEV_ES = 1 << 2;
        /// Guest Mode Execute Trap.
        const GMET = 1 << 3;
        /// Supervisor shadow-stack check.
        const SSS_CHECK = 1 << 4;
        /// Virtual transparent encryption.
        const VTE = 1 << 5;
        /// Read-only guest page tables.
        const RO_GPT = 1 << 6;
        /// Enable INVLPGB/TLBSYNC in the guest.
        const INVLPGB_TLBSYNC = 1 << 7;
    }
}

bitflags! {
    /// Virtualization extensions at offset 0x0B8 (APM table B-1).
    #[repr(transparent)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct VirtExt: u64 {
        /// LBR virtualization: guest DBGCTL/LBR state in the save area (APM 15.23).
        const LBR_VIRT = 1 << 0;
        /// Virtualized VMSAVE/VMLOAD (APM 15.33.1).
        const VIRTUAL_VMSAVE_VMLOAD = 1 << 1;
        /// IBS virtualization.
        const IBS_VIRT = 1 << 2;
    }
}

bitflags! {
    /// VMCB clean bits at offset 0x0C0 (APM 15.15.3, table 15-9). A set bit tells the CPU
    /// that the corresponding fields did not change since the last VMRUN with this VMCB.
    /// QEMU TCG does not implement the feature: keep this 0 unless
    /// [`crate::caps::SvmFeatures::VMCB_CLEAN`] is reported.
    #[repr(transparent)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct CleanBits: u32 {
        /// Intercept vectors, TSC offset, pause filter count.
        const INTERCEPTS = 1 << 0;
        /// IOPM_BASE_PA, MSRPM_BASE_PA.
        const IOPM = 1 << 1;
        /// ASID.
        const ASID = 1 << 2;
        /// V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING, V_INTR_VECTOR.
        const TPR = 1 << 3;
        /// NP_ENABLE, N_CR3, G_PAT.
        const NP = 1 << 4;
        /// CR0, CR3, CR4, EFER.
        const CRX = 1 << 5;
        /// DR6, DR7.
        const DRX = 1 << 6;
        /// GDTR, IDTR.
        const DT = 1 << 7;
        /// CS, DS, SS, ES, CPL.
        const SEG = 1 << 8;
        /// CR2.
        const CR2 = 1 << 9;
        /// DBGCTL, BR_FROM/TO, LASTINT_FROM/TO.
        const LBR = 1 << 10;
        /// AVIC fields.
        const AVIC = 1 << 11;
        /// S_CET, SSP, ISST_ADDR.
        const CET = 1 << 12;
    }
}

/// TLB_CONTROL (control-area byte 0x05C, APM 15.16.1, table 15-10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TlbControl {
    /// 0: do nothing.
    DoNothing = 0,
    /// 1: flush the entire TLB on VMRUN (all ASIDs). The only flush without FlushByAsid.
    FlushAll = 1,
    /// 3: flush this guest's TLB entries (needs FlushByAsid).
    FlushGuest = 3,
    /// 7: flush this guest's non-global TLB entries (needs FlushByAsid).
    FlushGuestNonGlobal = 7,
}

/// V_TPR / V_IRQ / V_INTR_* fields, the quadword at control-area offset 0x060
/// (APM table B-1 and 15.21.4 "Interrupt Masking in EFLAGS").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct VIntr(pub u64);

impl VIntr {
    /// V_IRQ (bit 8): a virtual interrupt is pending.
    pub const V_IRQ: u64 = 1 << 8;
    /// V_GIF (bit 9): virtual GIF value (needs VGIF).
    pub const V_GIF: u64 = 1 << 9;
    /// V_NMI (bit 11): a virtual NMI is pending (needs vNMI).
    pub const V_NMI: u64 = 1 << 11;
    /// V_NMI_MASK (bit 12): virtual NMIs are masked.
    pub const V_NMI_MASK: u64 = 1 << 12;
    /// V_IGN_TPR (bit 20): the virtual interrupt ignores the virtual TPR.
    pub const V_IGN_TPR: u64 = 1 << 20;
    /// V_INTR_MASKING (bit 24): virtualize RFLAGS.IF and TPR; host IF masks physical
    /// interrupts while the guest runs (APM 15.21.1).
    pub const V_INTR_MASKING: u64 = 1 << 24;
    /// V_GIF_ENABLE (bit 25): virtual GIF enabled.
    pub const V_GIF_ENABLE: u64 = 1 << 25;
    /// V_NMI_ENABLE (bit 26).
    pub const V_NMI_ENABLE: u64 = 1 << 26;
    /// AVIC_ENABLE (bit 31). Never set here.
    pub const AVIC_ENABLE: u64 = 1 << 31;

    /// V_TPR, bits 7:0 (only 3:0 are architectural: the virtual CR8).
    pub const fn tpr(self) -> u8 {
        self.0 as u8
    }
    /// Set V_TPR.
    pub const fn with_tpr(self, tpr: u8) -> Self {
        Self((self.0 & !0xFF) | tpr as u64)
    }
    /// V_INTR_PRIO, bits 19:16.
    pub const fn prio(self) -> u8 {
        ((self.0 >> 16) & 0xF) as u8
    }
    /// Set V_INTR_PRIO (low 4 bits of `prio`).
    pub const fn with_prio(self, prio: u8) -> Self {
        Self((self.0 & !(0xF << 16)) | (((prio & 0xF) as u64) << 16))
    }
    /// V_INTR_VECTOR, bits 39:32.
    pub const fn vector(self) -> u8 {
        (self.0 >> 32) as u8
    }
    /// Set V_INTR_VECTOR.
    pub const fn with_vector(self, vector: u8) -> Self {
        Self((self.0 & !(0xFF << 32)) | ((vector as u64) << 32))
    }
    /// Whether `bit` (one of the associated constants) is set.
    pub const fn has(self, bit: u64) -> bool {
        self.0 & bit == bit
    }
    /// With `bit` set or cleared.
    pub const fn with(self, bit: u64, on: bool) -> Self {
        if on {
            Self(self.0 | bit)
        } else {
            Self(self.0 & !bit)
        }
    }
}

/// Event type in EVENTINJ / EXITINTINFO bits 10:8 (APM 15.20, figure 15-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventType {
    /// 0: external or virtual interrupt (INTR).
    Intr = 0,
    /// 2: NMI.
    Nmi = 2,
    /// 3: exception (fault or trap).
    Exception = 3,
    /// 4: software interrupt (INTn).
    SoftwareInt = 4,
}

impl EventType {
    /// Decode bits 10:8; types 1, 5, 6, 7 are reserved and make VMRUN fail if injected.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::Intr),
            2 => Some(Self::Nmi),
            3 => Some(Self::Exception),
            4 => Some(Self::SoftwareInt),
            _ => None,
        }
    }
}

/// An event as EVENTINJ (offset 0x0A8) takes it and EXITINTINFO (offset 0x088) reports it
/// (APM 15.20 "Event Injection", 15.7.2 "Intercepts During IDT Interrupt Delivery").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event {
    /// Vector, bits 7:0.
    pub vector: u8,
    /// Type, bits 10:8.
    pub kind: EventType,
    /// Error code (bits 63:32) if EV (bit 11) is set.
    pub error_code: Option<u32>,
}

impl Event {
    /// V (bit 31): the field is valid.
    pub const VALID: u64 = 1 << 31;
    /// EV (bit 11): an error code is pushed.
    pub const ERROR_VALID: u64 = 1 << 11;

    /// An exception with optional error code.
    pub const fn exception(vector: u8, error_code: Option<u32>) -> Self {
        Self {
            vector,
            kind: EventType::Exception,
            error_code,
        }
    }

    /// #UD, what a guest gets for executing an SVM instruction we do not virtualize.
    pub const UD: Self = Self::exception(6, None);

    /// Encode for EVENTINJ (valid bit set).
    pub const fn encode(self) -> u64 {
        let mut v = Self::VALID | self.vector as u64 | ((self.kind as u64) << 8);
        if let Some(ec) = self.error_code {
            v |= Self::ERROR_VALID | ((ec as u64) << 32);
        }
        v
    }

    /// Decode an EXITINTINFO/EVENTINJ value: `None` if V is clear or the type is reserved.
    pub const fn decode(raw: u64) -> Option<Self> {
        if raw & Self::VALID == 0 {
            return None;
        }
        let kind = match EventType::from_bits(((raw >> 8) & 7) as u8) {
            Some(k) => k,
            None => return None,
        };
        let error_code = if raw & Self::ERROR_VALID != 0 {
            Some((raw >> 32) as u32)
        } else {
            None
        };
        Some(Self {
            vector: raw as u8,
            kind,
            error_code,
        })
    }
}

/// Segment attributes in the VMCB's packed 12-bit form (APM 15.5.1 / table B-2 note): bits 7:0
/// are descriptor bits 47:40 (type, S, DPL, P) and bits 11:8 are descriptor bits 55:52
/// (AVL, L, D/B, G).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct SegAttrib(pub u16);

impl SegAttrib {
    /// S: code/data (1) or system (0) segment.
    pub const S: u16 = 1 << 4;
    /// P: present.
    pub const P: u16 = 1 << 7;
    /// AVL.
    pub const AVL: u16 = 1 << 8;
    /// L: 64-bit code segment.
    pub const L: u16 = 1 << 9;
    /// D/B: 32-bit default operand size / big stack.
    pub const DB: u16 = 1 << 10;
    /// G: limit in 4 KiB units.
    pub const G: u16 = 1 << 11;

    /// Data segment type 3: read/write, accessed.
    pub const TYPE_DATA_RW_ACCESSED: u8 = 0x3;
    /// Code segment type 0xB: execute/read, accessed.
    pub const TYPE_CODE_XR_ACCESSED: u8 = 0xB;
    /// System type 2: LDT.
    pub const TYPE_LDT: u8 = 0x2;
    /// System type 3: busy 16-bit TSS.
    pub const TYPE_TSS16_BUSY: u8 = 0x3;
    /// System type 0xB: busy 32-bit TSS (busy 64-bit TSS in long mode).
    pub const TYPE_TSS_BUSY: u8 = 0xB;

    /// Pack the individual descriptor fields.
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        ty: u8,
        s: bool,
        dpl: u8,
        p: bool,
        avl: bool,
        l: bool,
        db: bool,
        g: bool,
    ) -> Self {
        let mut v = (ty & 0xF) as u16 | (((dpl & 3) as u16) << 5);
        if s {
            v |= Self::S;
        }
        if p {
            v |= Self::P;
        }
        if avl {
            v |= Self::AVL;
        }
        if l {
            v |= Self::L;
        }
        if db {
            v |= Self::DB;
        }
        if g {
            v |= Self::G;
        }
        Self(v)
    }

    /// Pack from a raw 8-byte GDT descriptor (bits 47:40 and 55:52).
    pub const fn from_descriptor(desc: u64) -> Self {
        Self((((desc >> 40) & 0xFF) | (((desc >> 52) & 0xF) << 8)) as u16)
    }

    /// Type field, bits 3:0.
    pub const fn ty(self) -> u8 {
        (self.0 & 0xF) as u8
    }
    /// DPL, bits 6:5.
    pub const fn dpl(self) -> u8 {
        ((self.0 >> 5) & 3) as u8
    }
    /// Whether `bit` (one of the associated bit constants) is set.
    pub const fn has(self, bit: u16) -> bool {
        self.0 & bit == bit
    }
}

/// One segment register in the state-save area: selector, attributes, limit, base (16 bytes;
/// APM table B-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Packed attributes.
    pub attrib: SegAttrib,
    /// Limit, expanded to bytes (G already applied).
    pub limit: u32,
    /// Base (only the low 32 bits are used for ES/CS/SS/DS).
    pub base: u64,
}

impl Segment {
    /// A zeroed segment (also: "unusable" for data segments, since P = 0).
    pub const ZERO: Self = Self {
        selector: 0,
        attrib: SegAttrib(0),
        limit: 0,
        base: 0,
    };
}

bitflags! {
    /// EFER (MSR 0xC000_0080) bits (APM 3.1.7).
    #[repr(transparent)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Efer: u64 {
        /// System-call extensions.
        const SCE = 1 << 0;
        /// Long mode enable.
        const LME = 1 << 8;
        /// Long mode active.
        const LMA = 1 << 10;
        /// No-execute enable.
        const NXE = 1 << 11;
        /// Secure virtual machine enable (APM 15.4). Must be 1 in a guest VMCB too.
        const SVME = 1 << 12;
        /// Long mode segment limit enable.
        const LMSLE = 1 << 13;
        /// Fast FXSAVE/FXRSTOR.
        const FFXSR = 1 << 14;
        /// Translation cache extension.
        const TCE = 1 << 15;
        /// MCOMMIT enable.
        const MCOMMIT = 1 << 17;
        /// Interruptible WBINVD/WBNOINVD.
        const INTWB = 1 << 18;
        /// Upper address ignore enable.
        const UAIE = 1 << 20;
        /// Automatic IBRS enable.
        const AIBRSE = 1 << 21;
    }
}

bitflags! {
    /// CR0 bits (APM 3.1.1).
    #[repr(transparent)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Cr0: u64 {
        /// Protection enable.
        const PE = 1 << 0;
        /// Monitor coprocessor.
        const MP = 1 << 1;
        /// Emulate coprocessor.
        const EM = 1 << 2;
        /// Task switched.
        const TS = 1 << 3;
        /// Extension type (reads as 1).
        const ET = 1 << 4;
        /// Numeric error.
        const NE = 1 << 5;
        /// Write protect.
        const WP = 1 << 16;
        /// Alignment mask.
        const AM = 1 << 18;
        /// Not write-through.
        const NW = 1 << 29;
        /// Cache disable.
        const CD = 1 << 30;
        /// Paging.
        const PG = 1 << 31;
    }
}

bitflags! {
    /// CR4 bits defined on AMD processors (APM 3.1.3).
    #[repr(transparent)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Cr4: u64 {
        /// Virtual-8086 mode extensions.
        const VME = 1 << 0;
        /// Protected-mode virtual interrupts.
        const PVI = 1 << 1;
        /// Time-stamp disable.
        const TSD = 1 << 2;
        /// Debugging extensions.
        const DE = 1 << 3;
        /// Page size extensions.
        const PSE = 1 << 4;
        /// Physical address extension.
        const PAE = 1 << 5;
        /// Machine check enable.
        const MCE = 1 << 6;
        /// Page global enable.
        const PGE = 1 << 7;
        /// Performance counter enable.
        const PCE = 1 << 8;
        /// FXSAVE/FXRSTOR support.
        const OSFXSR = 1 << 9;
        /// Unmasked SIMD exceptions.
        const OSXMMEXCPT = 1 << 10;
        /// User-mode instruction prevention.
        const UMIP = 1 << 11;
        /// 5-level paging.
        const LA57 = 1 << 12;
        /// FSGSBASE instructions.
        const FSGSBASE = 1 << 16;
        /// Process-context identifiers.
        const PCIDE = 1 << 17;
        /// XSAVE and extended states.
        const OSXSAVE = 1 << 18;
        /// Supervisor-mode execution prevention.
        const SMEP = 1 << 20;
        /// Supervisor-mode access prevention.
        const SMAP = 1 << 21;
        /// Protection keys.
        const PKE = 1 << 22;
        /// Control-flow enforcement.
        const CET = 1 << 23;
    }
}

/// RFLAGS bit 1 is reserved and always reads as 1.
pub const RFLAGS_FIXED: u64 = 1 << 1;
/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;
/// DR6 architectural reset value.
pub const DR6_RESET: u64 = 0xFFFF_0FF0;
/// DR7 architectural reset value.
pub const DR7_RESET: u64 = 0x400;
/// PAT MSR reset value (WB, WT, UC-, UC, repeated); used for G_PAT with nested paging.
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;

/// VMCB control area, bytes 0x000–0x3FF (APM table B-1).
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C)]
pub struct ControlArea {
    /// 0x000: intercept reads of CR0–CR15 (bit n = CRn).
    pub intercept_cr_read: u16,
    /// 0x002: intercept writes of CR0–CR15.
    pub intercept_cr_write: u16,
    /// 0x004: intercept reads of DR0–DR15.
    pub intercept_dr_read: u16,
    /// 0x006: intercept writes of DR0–DR15.
    pub intercept_dr_write: u16,
    /// 0x008: exception intercepts.
    pub intercept_exceptions: ExceptionIntercepts,
    /// 0x00C: intercept vector 3.
    pub intercept_misc1: InterceptMisc1,
    /// 0x010: intercept vector 4.
    pub intercept_misc2: InterceptMisc2,
    /// 0x014: intercept vector 5.
    pub intercept_misc3: InterceptMisc3,
    /// 0x018–0x03B: reserved.
    pub reserved_0x018: [u8; 0x24],
    /// 0x03C: PAUSE filter threshold (cycles).
    pub pause_filter_threshold: u16,
    /// 0x03E: PAUSE filter count.
    pub pause_filter_count: u16,
    /// 0x040: physical base of the 12 KiB I/O permission map (4 KiB aligned; APM 15.10.1).
    pub iopm_base_pa: u64,
    /// 0x048: physical base of the 8 KiB MSR permission map (4 KiB aligned; APM 15.11).
    pub msrpm_base_pa: u64,
    /// 0x050: TSC offset added to the guest's view of the TSC.
    pub tsc_offset: u64,
    /// 0x058: guest ASID (must not be 0).
    pub guest_asid: u32,
    /// 0x05C: TLB_CONTROL, see [`TlbControl`].
    pub tlb_control: u8,
    /// 0x05D–0x05F: reserved.
    pub reserved_0x05d: [u8; 3],
    /// 0x060: V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING, V_INTR_VECTOR.
    pub vintr: VIntr,
    /// 0x068: interrupt shadow and guest interrupt mask.
    pub interrupt_state: InterruptState,
    /// 0x070: EXITCODE.
    pub exit_code: u64,
    /// 0x078: EXITINFO1.
    pub exit_info1: u64,
    /// 0x080: EXITINFO2.
    pub exit_info2: u64,
    /// 0x088: EXITINTINFO (event being delivered when the exit happened).
    pub exit_int_info: u64,
    /// 0x090: NP_ENABLE and SEV controls.
    pub np_control: NpControl,
    /// 0x098: AVIC APIC_BAR (AVIC unused: reserved, keep 0).
    pub reserved_avic_apic_bar: u64,
    /// 0x0A0: guest physical address of the GHCB (SEV-ES; reserved, keep 0).
    pub reserved_ghcb_gpa: u64,
    /// 0x0A8: EVENTINJ, see [`Event`].
    pub event_inj: u64,
    /// 0x0B0: N_CR3, nested page-table root (host physical).
    pub n_cr3: u64,
    /// 0x0B8: LBR virtualization and virtual VMSAVE/VMLOAD enables.
    pub virt_ext: VirtExt,
    /// 0x0C0: VMCB clean bits.
    pub clean_bits: CleanBits,
    /// 0x0C4: reserved.
    pub reserved_0x0c4: u32,
    /// 0x0C8: nRIP, the next sequential RIP (written on #VMEXIT only with NRIPS).
    pub next_rip: u64,
    /// 0x0D0: number of guest instruction bytes fetched (decode assists, #NPF/#PF only).
    pub insn_len: u8,
    /// 0x0D1–0x0DF: the fetched guest instruction bytes.
    pub insn_bytes: [u8; 15],
    /// 0x0E0–0x0FF: AVIC backing page, logical and physical table pointers (reserved here).
    pub reserved_avic_0x0e0: [u8; 0x20],
    /// 0x100–0x3DF: reserved (SEV-ES VMSA pointer, VMGEXIT fields, bus-lock counter, ...).
    pub reserved_0x100: [u8; 0x2E0],
    /// 0x3E0–0x3FF: reserved for host use (software may keep its own data here).
    pub host_reserved: [u8; 0x20],
}

/// VMCB state-save area, bytes 0x400–0xFFF (APM table B-2; offsets below are absolute).
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C)]
pub struct StateSaveArea {
    /// 0x400: ES.
    pub es: Segment,
    /// 0x410: CS.
    pub cs: Segment,
    /// 0x420: SS.
    pub ss: Segment,
    /// 0x430: DS.
    pub ds: Segment,
    /// 0x440: FS (loaded by VMLOAD, not VMRUN).
    pub fs: Segment,
    /// 0x450: GS (loaded by VMLOAD, not VMRUN).
    pub gs: Segment,
    /// 0x460: GDTR (limit and base only).
    pub gdtr: Segment,
    /// 0x470: LDTR (VMLOAD).
    pub ldtr: Segment,
    /// 0x480: IDTR (limit and base only).
    pub idtr: Segment,
    /// 0x490: TR (VMLOAD).
    pub tr: Segment,
    /// 0x4A0–0x4CA: reserved (0x4CA is VMPL for SEV-SNP).
    pub reserved_0x4a0: [u8; 0x2B],
    /// 0x4CB: CPL (must equal SS.DPL in protected mode; 0 in real mode).
    pub cpl: u8,
    /// 0x4CC: reserved.
    pub reserved_0x4cc: u32,
    /// 0x4D0: EFER.
    pub efer: Efer,
    /// 0x4D8–0x547: reserved.
    pub reserved_0x4d8: [u8; 0x70],
    /// 0x548: CR4.
    pub cr4: u64,
    /// 0x550: CR3.
    pub cr3: u64,
    /// 0x558: CR0.
    pub cr0: u64,
    /// 0x560: DR7.
    pub dr7: u64,
    /// 0x568: DR6.
    pub dr6: u64,
    /// 0x570: RFLAGS.
    pub rflags: u64,
    /// 0x578: RIP.
    pub rip: u64,
    /// 0x580–0x5D7: reserved.
    pub reserved_0x580: [u8; 0x58],
    /// 0x5D8: RSP.
    pub rsp: u64,
    /// 0x5E0: S_CET.
    pub s_cet: u64,
    /// 0x5E8: SSP.
    pub ssp: u64,
    /// 0x5F0: ISST_ADDR.
    pub isst_addr: u64,
    /// 0x5F8: RAX.
    pub rax: u64,
    /// 0x600: STAR (VMLOAD).
    pub star: u64,
    /// 0x608: LSTAR (VMLOAD).
    pub lstar: u64,
    /// 0x610: CSTAR (VMLOAD).
    pub cstar: u64,
    /// 0x618: SFMASK (VMLOAD).
    pub sfmask: u64,
    /// 0x620: KernelGsBase (VMLOAD).
    pub kernel_gs_base: u64,
    /// 0x628: SYSENTER_CS (VMLOAD).
    pub sysenter_cs: u64,
    /// 0x630: SYSENTER_ESP (VMLOAD).
    pub sysenter_esp: u64,
    /// 0x638: SYSENTER_EIP (VMLOAD).
    pub sysenter_eip: u64,
    /// 0x640: CR2.
    pub cr2: u64,
    /// 0x648–0x667: reserved.
    pub reserved_0x648: [u8; 0x20],
    /// 0x668: G_PAT, the guest PAT used with nested paging.
    pub g_pat: u64,
    /// 0x670: DBGCTL (LBR virtualization).
    pub dbgctl: u64,
    /// 0x678: BR_FROM.
    pub br_from: u64,
    /// 0x680: BR_TO.
    pub br_to: u64,
    /// 0x688: LASTEXCPFROM.
    pub last_excp_from: u64,
    /// 0x690: LASTEXCPTO.
    pub last_excp_to: u64,
    /// 0x698–0x6DF: reserved.
    pub reserved_0x698: [u8; 0x48],
    /// 0x6E0: SPEC_CTRL (guest value, with the SpecCtrl virtualization feature).
    pub spec_ctrl: u64,
    /// 0x6E8–0xFFF: reserved (SEV-ES register state lives here in a VMSA).
    pub reserved_0x6e8: [u8; 0x918],
}

/// A whole VMCB: one 4 KiB-aligned page (APM 15.5.1 "VMRUN": the VMCB address must be page
/// aligned).
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct Vmcb {
    /// Control area, 0x000–0x3FF.
    pub control: ControlArea,
    /// State-save area, 0x400–0xFFF.
    pub save: StateSaveArea,
}

impl ControlArea {
    /// All zero.
    pub const ZERO: Self = Self {
        intercept_cr_read: 0,
        intercept_cr_write: 0,
        intercept_dr_read: 0,
        intercept_dr_write: 0,
        intercept_exceptions: ExceptionIntercepts::empty(),
        intercept_misc1: InterceptMisc1::empty(),
        intercept_misc2: InterceptMisc2::empty(),
        intercept_misc3: InterceptMisc3::empty(),
        reserved_0x018: [0; 0x24],
        pause_filter_threshold: 0,
        pause_filter_count: 0,
        iopm_base_pa: 0,
        msrpm_base_pa: 0,
        tsc_offset: 0,
        guest_asid: 0,
        tlb_control: 0,
        reserved_0x05d: [0; 3],
        vintr: VIntr(0),
        interrupt_state: InterruptState::empty(),
        exit_code: 0,
        exit_info1: 0,
        exit_info2: 0,
        exit_int_info: 0,
        np_control: NpControl::empty(),
        reserved_avic_apic_bar: 0,
        reserved_ghcb_gpa: 0,
        event_inj: 0,
        n_cr3: 0,
        virt_ext: VirtExt::empty(),
        clean_bits: CleanBits::empty(),
        reserved_0x0c4: 0,
        next_rip: 0,
        insn_len: 0,
        insn_bytes: [0; 15],
        reserved_avic_0x0e0: [0; 0x20],
        reserved_0x100: [0; 0x2E0],
        host_reserved: [0; 0x20],
    };
}

impl StateSaveArea {
    /// All zero.
    pub const ZERO: Self = Self {
        es: Segment::ZERO,
        cs: Segment::ZERO,
        ss: Segment::ZERO,
        ds: Segment::ZERO,
        fs: Segment::ZERO,
        gs: Segment::ZERO,
        gdtr: Segment::ZERO,
        ldtr: Segment::ZERO,
        idtr: Segment::ZERO,
        tr: Segment::ZERO,
        reserved_0x4a0: [0; 0x2B],
        cpl: 0,
        reserved_0x4cc: 0,
        efer: Efer::empty(),
        reserved_0x4d8: [0; 0x70],
        cr4: 0,
        cr3: 0,
        cr0: 0,
        dr7: 0,
        dr6: 0,
        rflags: 0,
        rip: 0,
        reserved_0x580: [0; 0x58],
        rsp: 0,
        s_cet: 0,
        ssp: 0,
        isst_addr: 0,
        rax: 0,
        star: 0,
        lstar: 0,
        cstar: 0,
        sfmask: 0,
        kernel_gs_base: 0,
        sysenter_cs: 0,
        sysenter_esp: 0,
        sysenter_eip: 0,
        cr2: 0,
        reserved_0x648: [0; 0x20],
        g_pat: 0,
        dbgctl: 0,
        br_from: 0,
        br_to: 0,
        last_excp_from: 0,
        last_excp_to: 0,
        reserved_0x698: [0; 0x48],
        spec_ctrl: 0,
        reserved_0x6e8: [0; 0x918],
    };
}

impl Vmcb {
    /// An all-zero VMCB (what a freshly allocated VMCB page must start as).
    pub const ZERO: Self = Self {
        control: ControlArea::ZERO,
        save: StateSaveArea::ZERO,
    };

    /// Reset every byte to zero in place (no 4 KiB temporary on the stack beyond the const).
    pub fn clear(&mut self) {
        self.control = ControlArea::ZERO;
        self.save = StateSaveArea::ZERO;
    }

    /// Whether the guest currently executes 64-bit code (EFER.LMA and CS.L), which decides
    /// whether bytes 0x40–0x4F are REX prefixes ([`crate::insn_len`]).
    pub fn is_64bit_code(&self) -> bool {
        self.save.efer.contains(Efer::LMA) && self.save.cs.attrib.has(SegAttrib::L)
    }
}

// ---- Compile-time layout checks against APM tables B-1 and B-2. ----
macro_rules! at {
    ($($f:tt).+ == $off:expr) => {
        const _: () = assert!(offset_of!(Vmcb, $($f).+) == $off);
    };
}

const _: () = assert!(size_of::<Segment>() == 16);
const _: () = assert!(size_of::<ControlArea>() == 0x400);
const _: () = assert!(size_of::<StateSaveArea>() == 0xC00);
const _: () = assert!(size_of::<Vmcb>() == 4096);
const _: () = assert!(core::mem::align_of::<Vmcb>() == 4096);

at!(control.intercept_cr_read == 0x000);
at!(control.intercept_cr_write == 0x002);
at!(control.intercept_dr_read == 0x004);
at!(control.intercept_dr_write == 0x006);
at!(control.intercept_exceptions == 0x008);
at!(control.intercept_misc1 == 0x00C);
at!(control.intercept_misc2 == 0x010);
at!(control.intercept_misc3 == 0x014);
at!(control.pause_filter_threshold == 0x03C);
at!(control.pause_filter_count == 0x03E);
at!(control.iopm_base_pa == 0x040);
at!(control.msrpm_base_pa == 0x048);
at!(control.tsc_offset == 0x050);
at!(control.guest_asid == 0x058);
at!(control.tlb_control == 0x05C);
at!(control.vintr == 0x060);
at!(control.interrupt_state == 0x068);
at!(control.exit_code == 0x070);
at!(control.exit_info1 == 0x078);
at!(control.exit_info2 == 0x080);
at!(control.exit_int_info == 0x088);
at!(control.np_control == 0x090);
at!(control.reserved_avic_apic_bar == 0x098);
at!(control.reserved_ghcb_gpa == 0x0A0);
at!(control.event_inj == 0x0A8);
at!(control.n_cr3 == 0x0B0);
at!(control.virt_ext == 0x0B8);
at!(control.clean_bits == 0x0C0);
at!(control.next_rip == 0x0C8);
at!(control.insn_len == 0x0D0);
at!(control.insn_bytes == 0x0D1);
at!(control.reserved_avic_0x0e0 == 0x0E0);
at!(control.reserved_0x100 == 0x100);
at!(control.host_reserved == 0x3E0);
at!(save == 0x400);
at!(save.es == 0x400);
at!(save.cs == 0x410);
at!(save.ss == 0x420);
at!(save.ds == 0x430);
at!(save.fs == 0x440);
at!(save.gs == 0x450);
at!(save.gdtr == 0x460);
at!(save.ldtr == 0x470);
at!(save.idtr == 0x480);
at!(save.tr == 0x490);
at!(save.cpl == 0x4CB);
at!(save.efer == 0x4D0);
at!(save.cr4 == 0x548);
at!(save.cr3 == 0x550);
at!(save.cr0 == 0x558);
at!(save.dr7 == 0x560);
at!(save.dr6 == 0x568);
at!(save.rflags == 0x570);
at!(save.rip == 0x578);
at!(save.rsp == 0x5D8);
at!(save.s_cet == 0x5E0);
at!(save.ssp == 0x5E8);
at!(save.isst_addr == 0x5F0);
at!(save.rax == 0x5F8);
at!(save.star == 0x600);
at!(save.lstar == 0x608);
at!(save.cstar == 0x610);
at!(save.sfmask == 0x618);
at!(save.kernel_gs_base == 0x620);
at!(save.sysenter_cs == 0x628);
at!(save.sysenter_esp == 0x630);
at!(save.sysenter_eip == 0x638);
at!(save.cr2 == 0x640);
at!(save.g_pat == 0x668);
at!(save.dbgctl == 0x670);
at!(save.br_from == 0x678);
at!(save.br_to == 0x680);
at!(save.last_excp_from == 0x688);
at!(save.last_excp_to == 0x690);
at!(save.spec_ctrl == 0x6E0);
at!(save.reserved_0x6e8 == 0x6E8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_vmcb_is_all_zero_bytes() {
        let v = Box::new(Vmcb::ZERO);
        assert_eq!(&*v as *const Vmcb as usize % 4096, 0);
        assert_eq!(v.control.exit_code, 0);
        assert_eq!(v.save.rip, 0);
        assert_eq!(*v, Vmcb::ZERO);
    }

    #[test]
    fn offsets_match_apm_via_runtime_too() {
        // Redundant with the const asserts, but documents the key ones in test output.
        assert_eq!(offset_of!(Vmcb, control.exit_code), 0x70);
        assert_eq!(offset_of!(Vmcb, control.exit_info1), 0x78);
        assert_eq!(offset_of!(Vmcb, control.exit_info2), 0x80);
        assert_eq!(offset_of!(Vmcb, control.event_inj), 0xA8);
        assert_eq!(offset_of!(Vmcb, save.cpl), 0x4CB);
        assert_eq!(offset_of!(Vmcb, save.rax), 0x5F8);
    }

    #[test]
    fn seg_attrib_packing() {
        // 64-bit code: type B, S, DPL0, P, L, G => 0xA9B.
        assert_eq!(
            SegAttrib::new(0xB, true, 0, true, false, true, false, true).0,
            0xA9B
        );
        // 32-bit flat data: type 3, S, P, DB, G => 0xC93.
        assert_eq!(
            SegAttrib::new(0x3, true, 0, true, false, false, true, true).0,
            0xC93
        );
        // From a GDT descriptor: 0x00AF9B000000FFFF is the classic 64-bit kernel code.
        assert_eq!(SegAttrib::from_descriptor(0x00AF_9B00_0000_FFFF).0, 0xA9B);
        // 0x00CF93000000FFFF is the classic flat data descriptor.
        assert_eq!(SegAttrib::from_descriptor(0x00CF_9300_0000_FFFF).0, 0xC93);
        let a = SegAttrib::new(0x3, true, 3, true, false, false, true, true);
        assert_eq!(a.dpl(), 3);
        assert_eq!(a.ty(), 3);
    }

    #[test]
    fn event_roundtrip() {
        assert_eq!(Event::UD.encode(), 0x8000_0306);
        let gp = Event::exception(13, Some(0x18));
        assert_eq!(gp.encode(), 0x0000_0018_8000_0B0D);
        assert_eq!(Event::decode(gp.encode()), Some(gp));
        assert_eq!(Event::decode(0x0000_0306), None, "V clear");
        assert_eq!(Event::decode(0x8000_0106), None, "reserved type 1");
        let intr = Event {
            vector: 0x20,
            kind: EventType::Intr,
            error_code: None,
        };
        assert_eq!(Event::decode(0x8000_0020), Some(intr));
    }

    #[test]
    fn vintr_fields() {
        let v = VIntr(0)
            .with_tpr(0xF)
            .with_prio(0xA)
            .with_vector(0x30)
            .with(VIntr::V_IRQ, true);
        assert_eq!(v.tpr(), 0xF);
        assert_eq!(v.prio(), 0xA);
        assert_eq!(v.vector(), 0x30);
        assert!(v.has(VIntr::V_IRQ));
        assert_eq!(v.0, 0x30_000A_010F);
        assert!(!v.with(VIntr::V_IRQ, false).has(VIntr::V_IRQ));
    }
}
