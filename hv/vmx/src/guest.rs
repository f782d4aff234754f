//! The guest-state area: building it for a new guest, and checking it the way VM entry does.
//!
//! Why: the initial architectural state of a guest (segment access rights in the VMCS format,
//! control registers adjusted by the VMX fixed bits, EFER, the VMCS link pointer) is where most
//! "VM entry failed" reports come from, and both real CPUs and Bochs answer with exit reason 33
//! ("invalid guest state") and no hint which rule broke. So filling it is a pure function here,
//! tested for the three entry modes Hermitage guests use:
//!
//! - 64-bit long mode with paging (CR3 and entry RIP/RSP given),
//! - 32-bit protected mode, flat, paging off, in the Multiboot 1 handoff state
//!   (EAX = 0x2BADB002, EBX = information structure),
//! - 16-bit real mode at a CS:IP,
//!
//! and [`check_guest_state`] implements the common checks of SDM vol. 3C "Checks on the Guest
//! State Area" (26.3.1 in the 2016-2022 editions): control registers, debug registers and MSRs;
//! segment registers; descriptor-table registers; RIP and RFLAGS; non-register state. The
//! latter two modes rely on "unrestricted guest" (CR0.PE/PG may then be 0).
//!
//! Access rights (SDM vol. 3C "Guest Register State", 24.4.1): type 3:0, S 4, DPL 6:5, P 7,
//! AVL 12, L 13, D/B 14, G 15, **unusable 16**; bits 11:8 and 31:17 reserved.
#![forbid(unsafe_code)]

use bitflags::bitflags;

use crate::caps::{ActivityState, apply_fixed, fixed_violations};
use crate::controls::{EntryControls, VmxConfig};
use crate::regs::GuestRegs;
use crate::vmcs::VmcsField;

/// Multiboot 1 magic in EAX at handoff (Multiboot specification 0.6.96, 3.2).
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// CR0.PE.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.MP.
pub const CR0_MP: u64 = 1 << 1;
/// CR0.ET.
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NE.
pub const CR0_NE: u64 = 1 << 5;
/// CR0.WP.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.PG.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.VMXE.
pub const CR4_VMXE: u64 = 1 << 13;
/// CR4.PCIDE.
pub const CR4_PCIDE: u64 = 1 << 17;
/// EFER.SCE.
pub const EFER_SCE: u64 = 1 << 0;
/// EFER.LME.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE.
pub const EFER_NXE: u64 = 1 << 11;
/// RFLAGS bit 1, always 1.
pub const RFLAGS_FIXED: u64 = 1 << 1;
/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS.VM.
pub const RFLAGS_VM: u64 = 1 << 17;
/// RFLAGS bits that must be 0: 63:22, 15, 5, 3.
pub const RFLAGS_RESERVED: u64 = !((1 << 22) - 1) | (1 << 15) | (1 << 5) | (1 << 3);
/// DR7 at reset.
pub const DR7_RESET: u64 = 0x400;
/// IA32_PAT at reset: WB, WT, UC-, UC repeated.
pub const PAT_RESET: u64 = 0x0007_0406_0007_0406;
/// The VMCS link pointer when VMCS shadowing is not used.
pub const VMCS_LINK_POINTER_NONE: u64 = u64::MAX;

/// Segment access rights in the VMCS format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccessRights(pub u32);

impl AccessRights {
    /// Bit 16: the segment is unusable (loaded with a null selector); other bits are then
    /// ignored by most checks.
    pub const UNUSABLE: Self = Self(1 << 16);
    /// Bits that must be 0: 11:8 and 31:17.
    pub const RESERVED: u32 = 0xFFFE_0F00;
    /// Type 3: read/write data, accessed.
    pub const TYPE_DATA_RW_ACCESSED: u8 = 0x3;
    /// Type 0xB: execute/read code, accessed.
    pub const TYPE_CODE_XR_ACCESSED: u8 = 0xB;
    /// Type 2: LDT.
    pub const TYPE_LDT: u8 = 0x2;
    /// Type 3 (system): busy 16-bit TSS.
    pub const TYPE_TSS16_BUSY: u8 = 0x3;
    /// Type 0xB (system): busy 32/64-bit TSS.
    pub const TYPE_TSS_BUSY: u8 = 0xB;

    /// Build access rights from their fields.
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        typ: u8,
        s: bool,
        dpl: u8,
        p: bool,
        avl: bool,
        l: bool,
        db: bool,
        g: bool,
    ) -> Self {
        Self(
            (typ as u32 & 0xF)
                | (s as u32) << 4
                | (dpl as u32 & 3) << 5
                | (p as u32) << 7
                | (avl as u32) << 12
                | (l as u32) << 13
                | (db as u32) << 14
                | (g as u32) << 15,
        )
    }

    /// Type, bits 3:0.
    pub const fn typ(self) -> u8 {
        (self.0 & 0xF) as u8
    }
    /// S (code/data rather than system), bit 4.
    pub const fn s(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// DPL, bits 6:5.
    pub const fn dpl(self) -> u8 {
        ((self.0 >> 5) & 3) as u8
    }
    /// Present, bit 7.
    pub const fn present(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// 64-bit code segment, bit 13.
    pub const fn l(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    /// Default operation size / big, bit 14.
    pub const fn db(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// Granularity, bit 15.
    pub const fn g(self) -> bool {
        self.0 & (1 << 15) != 0
    }
    /// Unusable, bit 16.
    pub const fn unusable(self) -> bool {
        self.0 & Self::UNUSABLE.0 != 0
    }

    /// The VMCB's packed 12-bit attribute format the core's segments use (APM vol. 2
    /// 15.5.1: type/S/DPL/P in bits 7:0, AVL/L/D/B/G in bits 11:8). An unusable segment
    /// reads as not present (P = 0), which is how the core sees a null data segment.
    pub const fn to_packed(self) -> u16 {
        let p = if self.unusable() { 0x7F } else { 0xFF };
        ((self.0 & p) | ((self.0 >> 4) & 0xF00)) as u16
    }

    /// Back from the packed format: a segment that is not present is unusable.
    pub const fn from_packed(attrs: u16) -> Self {
        let a = attrs as u32;
        let ar = (a & 0xFF) | ((a & 0xF00) << 4);
        if a & 0x80 == 0 {
            Self(ar | Self::UNUSABLE.0)
        } else {
            Self(ar)
        }
    }
}

/// Flat 64-bit code: type 0xB, S, P, L, G (= 0xA09B).
pub const AR_CODE64: AccessRights = AccessRights::new(
    AccessRights::TYPE_CODE_XR_ACCESSED,
    true,
    0,
    true,
    false,
    true,
    false,
    true,
);
/// Flat 32-bit code: type 0xB, S, P, D, G (= 0xC09B).
pub const AR_CODE32: AccessRights = AccessRights::new(
    AccessRights::TYPE_CODE_XR_ACCESSED,
    true,
    0,
    true,
    false,
    false,
    true,
    true,
);
/// Flat 32-bit data (also used in long mode): type 3, S, P, B, G (= 0xC093).
pub const AR_DATA32: AccessRights = AccessRights::new(
    AccessRights::TYPE_DATA_RW_ACCESSED,
    true,
    0,
    true,
    false,
    false,
    true,
    true,
);
/// Real-mode code: type 0xB, S, P, 16-bit (= 0x9B).
pub const AR_CODE16: AccessRights = AccessRights::new(
    AccessRights::TYPE_CODE_XR_ACCESSED,
    true,
    0,
    true,
    false,
    false,
    false,
    false,
);
/// Real-mode data: type 3, S, P, 16-bit (= 0x93).
pub const AR_DATA16: AccessRights = AccessRights::new(
    AccessRights::TYPE_DATA_RW_ACCESSED,
    true,
    0,
    true,
    false,
    false,
    false,
    false,
);
/// TR placeholder: present busy 32/64-bit TSS (= 0x8B).
pub const AR_TSS_BUSY: AccessRights = AccessRights::new(
    AccessRights::TYPE_TSS_BUSY,
    false,
    0,
    true,
    false,
    false,
    false,
    false,
);

/// Selector of the flat code segment reported for protected and long mode.
pub const FLAT_CS: u16 = 0x08;
/// Selector of the flat data segments.
pub const FLAT_DS: u16 = 0x10;

/// A segment register as the VMCS holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base.
    pub base: u64,
    /// Limit in bytes (already scaled by G).
    pub limit: u32,
    /// Access rights.
    pub access: AccessRights,
}

impl Segment {
    /// An unusable segment (null selector).
    pub const UNUSABLE: Self = Self {
        selector: 0,
        base: 0,
        limit: 0,
        access: AccessRights::UNUSABLE,
    };

    const fn flat(selector: u16, access: AccessRights) -> Self {
        Self {
            selector,
            base: 0,
            limit: 0xFFFF_FFFF,
            access,
        }
    }

    const fn real(selector: u16, access: AccessRights) -> Self {
        Self {
            selector,
            base: (selector as u64) << 4,
            limit: 0xFFFF,
            access,
        }
    }
}

/// GDTR or IDTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DescriptorTable {
    /// Base.
    pub base: u64,
    /// Limit (bits 31:16 must be 0).
    pub limit: u32,
}

bitflags! {
    /// Guest interruptibility state (SDM vol. 3C "Guest Non-Register State").
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Interruptibility: u32 {
        /// Blocking by STI.
        const STI = 1 << 0;
        /// Blocking by MOV SS / POP SS.
        const MOV_SS = 1 << 1;
        /// Blocking by SMI.
        const SMI = 1 << 2;
        /// Blocking by NMI.
        const NMI = 1 << 3;
        /// Enclave interruption.
        const ENCLAVE = 1 << 4;
        const _ = !0;
    }
}

/// The guest-state area (SDM vol. 3C "Guest-State Area"), without SMBASE, PDPTEs and the
/// fields of features Hermitage does not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestState {
    /// CR0 as the CPU runs it (fixed bits applied; the guest sees the read shadow).
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 as the CPU runs it (VMXE set; the guest sees the read shadow).
    pub cr4: u64,
    /// DR7.
    pub dr7: u64,
    /// RSP.
    pub rsp: u64,
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// ES.
    pub es: Segment,
    /// CS.
    pub cs: Segment,
    /// SS.
    pub ss: Segment,
    /// DS.
    pub ds: Segment,
    /// FS.
    pub fs: Segment,
    /// GS.
    pub gs: Segment,
    /// LDTR.
    pub ldtr: Segment,
    /// TR.
    pub tr: Segment,
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// IA32_DEBUGCTL.
    pub debugctl: u64,
    /// IA32_SYSENTER_CS.
    pub sysenter_cs: u32,
    /// IA32_SYSENTER_ESP.
    pub sysenter_esp: u64,
    /// IA32_SYSENTER_EIP.
    pub sysenter_eip: u64,
    /// IA32_EFER (loaded with "load IA32_EFER").
    pub efer: u64,
    /// IA32_PAT (loaded with "load IA32_PAT").
    pub pat: u64,
    /// Activity state.
    pub activity: ActivityState,
    /// Interruptibility state.
    pub interruptibility: Interruptibility,
    /// Pending debug exceptions.
    pub pending_debug_exceptions: u64,
    /// VMCS link pointer ([`VMCS_LINK_POINTER_NONE`]).
    pub vmcs_link_pointer: u64,
}

/// Which segment register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegReg {
    /// ES.
    Es,
    /// CS.
    Cs,
    /// SS.
    Ss,
    /// DS.
    Ds,
    /// FS.
    Fs,
    /// GS.
    Gs,
    /// LDTR.
    Ldtr,
    /// TR.
    Tr,
}

impl GuestState {
    /// Whether the guest is in IA-32e mode (EFER.LMA): the "IA-32e mode guest" entry control
    /// must say the same ([`VmxConfig::entry_for`]).
    pub const fn ia32e(&self) -> bool {
        self.efer & EFER_LMA != 0
    }

    /// A segment register by name.
    pub const fn segment(&self, reg: SegReg) -> &Segment {
        match reg {
            SegReg::Es => &self.es,
            SegReg::Cs => &self.cs,
            SegReg::Ss => &self.ss,
            SegReg::Ds => &self.ds,
            SegReg::Fs => &self.fs,
            SegReg::Gs => &self.gs,
            SegReg::Ldtr => &self.ldtr,
            SegReg::Tr => &self.tr,
        }
    }

    /// The VMWRITEs that load this state into the current VMCS. IA32_PAT is included only if
    /// `cfg` switches it (the field does not exist on CPUs without the PAT controls).
    pub fn fields(&self, cfg: &VmxConfig) -> impl Iterator<Item = (VmcsField, u64)> + use<> {
        use VmcsField as F;
        let seg = |s: &Segment| (s.selector as u64, s.base, s.limit as u64, s.access.0 as u64);
        let (es, cs, ss, ds) = (seg(&self.es), seg(&self.cs), seg(&self.ss), seg(&self.ds));
        let (fs, gs, ldtr, tr) = (seg(&self.fs), seg(&self.gs), seg(&self.ldtr), seg(&self.tr));
        let pat = cfg.pat_switched();
        [
            (F::GuestCr0, self.cr0),
            (F::GuestCr3, self.cr3),
            (F::GuestCr4, self.cr4),
            (F::GuestDr7, self.dr7),
            (F::GuestRsp, self.rsp),
            (F::GuestRip, self.rip),
            (F::GuestRflags, self.rflags),
            (F::GuestEsSelector, es.0),
            (F::GuestEsBase, es.1),
            (F::GuestEsLimit, es.2),
            (F::GuestEsAccessRights, es.3),
            (F::GuestCsSelector, cs.0),
            (F::GuestCsBase, cs.1),
            (F::GuestCsLimit, cs.2),
            (F::GuestCsAccessRights, cs.3),
            (F::GuestSsSelector, ss.0),
            (F::GuestSsBase, ss.1),
            (F::GuestSsLimit, ss.2),
            (F::GuestSsAccessRights, ss.3),
            (F::GuestDsSelector, ds.0),
            (F::GuestDsBase, ds.1),
            (F::GuestDsLimit, ds.2),
            (F::GuestDsAccessRights, ds.3),
            (F::GuestFsSelector, fs.0),
            (F::GuestFsBase, fs.1),
            (F::GuestFsLimit, fs.2),
            (F::GuestFsAccessRights, fs.3),
            (F::GuestGsSelector, gs.0),
            (F::GuestGsBase, gs.1),
            (F::GuestGsLimit, gs.2),
            (F::GuestGsAccessRights, gs.3),
            (F::GuestLdtrSelector, ldtr.0),
            (F::GuestLdtrBase, ldtr.1),
            (F::GuestLdtrLimit, ldtr.2),
            (F::GuestLdtrAccessRights, ldtr.3),
            (F::GuestTrSelector, tr.0),
            (F::GuestTrBase, tr.1),
            (F::GuestTrLimit, tr.2),
            (F::GuestTrAccessRights, tr.3),
            (F::GuestGdtrBase, self.gdtr.base),
            (F::GuestGdtrLimit, self.gdtr.limit as u64),
            (F::GuestIdtrBase, self.idtr.base),
            (F::GuestIdtrLimit, self.idtr.limit as u64),
            (F::GuestIa32Debugctl, self.debugctl),
            (F::GuestIa32SysenterCs, self.sysenter_cs as u64),
            (F::GuestIa32SysenterEsp, self.sysenter_esp),
            (F::GuestIa32SysenterEip, self.sysenter_eip),
            (F::GuestIa32Efer, self.efer),
            (F::GuestIa32Pat, self.pat),
            (F::GuestActivityState, self.activity as u64),
            (
                F::GuestInterruptibilityState,
                self.interruptibility.bits() as u64,
            ),
            (
                F::GuestPendingDebugExceptions,
                self.pending_debug_exceptions,
            ),
            (F::VmcsLinkPointer, self.vmcs_link_pointer),
        ]
        .into_iter()
        .filter(move |(f, _)| pat || *f != F::GuestIa32Pat)
    }
}

/// CR0/CR4 guest/host masks and read shadows: bits the CPU forces for VMX (CR0.NE, CR4.VMXE,
/// anything FIXED1 forbids) are owned by the host, and the guest reads the value it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CrShadows {
    /// CR0 guest/host mask.
    pub cr0_mask: u64,
    /// CR0 read shadow.
    pub cr0_shadow: u64,
    /// CR4 guest/host mask.
    pub cr4_mask: u64,
    /// CR4 read shadow.
    pub cr4_shadow: u64,
}

impl CrShadows {
    /// The VMWRITEs for these control fields.
    pub const fn fields(&self) -> [(VmcsField, u64); 4] {
        [
            (VmcsField::Cr0GuestHostMask, self.cr0_mask),
            (VmcsField::Cr0ReadShadow, self.cr0_shadow),
            (VmcsField::Cr4GuestHostMask, self.cr4_mask),
            (VmcsField::Cr4ReadShadow, self.cr4_shadow),
        ]
    }
}

/// How the guest starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestMode {
    /// 64-bit long mode, paging on with the guest's own 4-level tables at `cr3`
    /// (a guest-physical address, translated by EPT).
    /// The Linux x86-64 boot protocol's entry ([`hv::vcpu::LinuxEntry`]): long mode as
    /// [`GuestMode::Long64`], with the loader's GDT, boot selectors and RSI at the zero page.
    Linux64(hv::vcpu::LinuxEntry),
    Long64 {
        /// Guest CR3.
        cr3: u64,
        /// Entry point.
        rip: u64,
        /// Initial stack pointer.
        rsp: u64,
    },
    /// 32-bit protected mode, flat segments, paging off: the Multiboot 1 handoff.
    Protected32 {
        /// Entry point.
        eip: u32,
        /// Initial stack pointer (undefined in Multiboot; we give one).
        esp: u32,
        /// Multiboot information structure; `Some` also puts the magic in EAX.
        multiboot_info: Option<u32>,
    },
    /// 16-bit real mode, CS base = selector × 16.
    Real16 {
        /// CS selector.
        cs: u16,
        /// IP.
        ip: u16,
        /// SP (SS = 0).
        sp: u16,
    },
}

impl GuestMode {
    /// Real mode entry at a linear address below 1 MiB: CS = bits 19:4 rounded to 64 KiB,
    /// IP = the rest. `None` above 1 MiB.
    pub const fn real_at(linear: u32, sp: u16) -> Option<Self> {
        if linear >= 0x10_0000 {
            return None;
        }
        Some(Self::Real16 {
            cs: ((linear & 0xF_0000) >> 4) as u16,
            ip: linear as u16,
            sp,
        })
    }
}

/// What [`build`] produces: the guest-state area, the initial GPRs, and the CR0/CR4
/// masks and shadows (control fields, but part of presenting the guest its own CR0/CR4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestSetup {
    /// Guest-state area.
    pub state: GuestState,
    /// Initial GPRs.
    pub regs: GuestRegs,
    /// CR0/CR4 masks and read shadows.
    pub shadows: CrShadows,
    /// The VM-entry controls to use for this guest.
    pub entry: EntryControls,
}

/// Build the initial state for `mode` on a CPU described by `cfg`.
pub fn build(mode: GuestMode, cfg: &VmxConfig) -> GuestSetup {
    let base = GuestState {
        cr0: 0,
        cr3: 0,
        cr4: 0,
        dr7: DR7_RESET,
        rsp: 0,
        rip: 0,
        rflags: RFLAGS_FIXED,
        es: Segment::UNUSABLE,
        cs: Segment::UNUSABLE,
        ss: Segment::UNUSABLE,
        ds: Segment::UNUSABLE,
        fs: Segment::UNUSABLE,
        gs: Segment::UNUSABLE,
        ldtr: Segment::UNUSABLE,
        tr: Segment {
            selector: 0,
            base: 0,
            limit: 0xFFFF,
            access: AR_TSS_BUSY,
        },
        gdtr: DescriptorTable {
            base: 0,
            limit: 0xFFFF,
        },
        idtr: DescriptorTable {
            base: 0,
            limit: 0xFFFF,
        },
        debugctl: 0,
        sysenter_cs: 0,
        sysenter_esp: 0,
        sysenter_eip: 0,
        efer: 0,
        pat: PAT_RESET,
        activity: ActivityState::Active,
        interruptibility: Interruptibility::empty(),
        pending_debug_exceptions: 0,
        vmcs_link_pointer: VMCS_LINK_POINTER_NONE,
    };
    let mut regs = GuestRegs::default();
    let (mut s, cr0, cr4) = match mode {
        GuestMode::Linux64(hv::vcpu::LinuxEntry {
            cr3,
            rip,
            rsp,
            rsi,
            gdt_base,
            gdt_limit,
            cs,
            ds,
        }) => {
            regs.rsi = rsi;
            let data = Segment::flat(ds, AR_DATA32);
            let s = GuestState {
                cr3,
                rip,
                rsp,
                cs: Segment::flat(cs, AR_CODE64),
                ss: data,
                ds: data,
                es: data,
                fs: data,
                gs: data,
                gdtr: DescriptorTable {
                    base: gdt_base,
                    limit: u32::from(gdt_limit),
                },
                efer: EFER_LME | EFER_LMA,
                ..base
            };
            (s, CR0_PE | CR0_ET | CR0_NE | CR0_PG, CR4_PAE)
        }
        GuestMode::Long64 { cr3, rip, rsp } => {
            let data = Segment::flat(FLAT_DS, AR_DATA32);
            let s = GuestState {
                cr3,
                rip,
                rsp,
                cs: Segment::flat(FLAT_CS, AR_CODE64),
                ss: data,
                ds: data,
                es: data,
                fs: data,
                gs: data,
                efer: EFER_LME | EFER_LMA | EFER_NXE,
                ..base
            };
            (
                s,
                CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
                CR4_PAE,
            )
        }
        GuestMode::Protected32 {
            eip,
            esp,
            multiboot_info,
        } => {
            if let Some(info) = multiboot_info {
                regs.rax = MULTIBOOT_BOOTLOADER_MAGIC as u64;
                regs.rbx = info as u64;
            }
            let data = Segment::flat(FLAT_DS, AR_DATA32);
            let s = GuestState {
                rip: eip as u64,
                rsp: esp as u64,
                cs: Segment::flat(FLAT_CS, AR_CODE32),
                ss: data,
                ds: data,
                es: data,
                fs: data,
                gs: data,
                ..base
            };
            (s, CR0_PE | CR0_ET, 0)
        }
        GuestMode::Real16 { cs, ip, sp } => {
            let data = Segment::real(0, AR_DATA16);
            let s = GuestState {
                rip: ip as u64,
                rsp: sp as u64,
                cs: Segment::real(cs, AR_CODE16),
                ss: data,
                ds: data,
                es: data,
                fs: data,
                gs: data,
                ..base
            };
            (s, CR0_ET, 0)
        }
    };
    let cr0_fixed0 = cfg.guest_cr0_fixed0();
    s.cr0 = apply_fixed(cr0, cr0_fixed0, cfg.cr0_fixed1);
    s.cr4 = apply_fixed(cr4, cfg.cr4_fixed0, cfg.cr4_fixed1);
    let low = 0xFFFF_FFFF;
    GuestSetup {
        shadows: CrShadows {
            cr0_mask: cr0_fixed0 | (!cfg.cr0_fixed1 & low),
            cr0_shadow: cr0,
            cr4_mask: cfg.cr4_fixed0 | (!cfg.cr4_fixed1 & low),
            cr4_shadow: cr4,
        },
        entry: cfg.entry_for(s.ia32e()),
        state: s,
        regs,
    }
}

/// What is wrong with a segment register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentProblem {
    /// Marked unusable where it must be usable (CS, TR).
    Unusable,
    /// Type not allowed for this register.
    Type,
    /// S (descriptor type) wrong: 1 for code/data, 0 for LDTR/TR.
    DescriptorType,
    /// DPL does not satisfy the rules for this register.
    Dpl,
    /// Not present.
    NotPresent,
    /// Reserved access-rights bits (11:8, 31:17) set.
    ReservedBits,
    /// Limit and granularity inconsistent.
    LimitGranularity,
    /// Base not canonical, or bits 63:32 set where they must be 0.
    Base,
    /// Selector RPL wrong (SS.RPL must equal CS.RPL without unrestricted guest).
    SelectorRpl,
    /// Selector TI set (LDTR, TR).
    SelectorTi,
    /// CS with both L and D/B set in IA-32e mode.
    LongAndDefaultSize,
}

/// Which descriptor-table register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableReg {
    /// GDTR.
    Gdtr,
    /// IDTR.
    Idtr,
}

/// The first VM-entry check a guest-state area fails (SDM vol. 3C "Checks on the Guest State
/// Area"). Checked in the SDM's order, so the first problem is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestStateError {
    /// CR0 violates the fixed bits; the offending bits (PE/PG exempt with unrestricted guest).
    Cr0Fixed {
        /// Bits that must be 1 but are 0, or must be 0 but are 1.
        bits: u64,
    },
    /// CR0.PG set with CR0.PE clear.
    Cr0PagingWithoutProtection,
    /// CR0.PE or CR0.PG clear without "unrestricted guest".
    UnrestrictedGuestRequired,
    /// CR4 violates the fixed bits.
    Cr4Fixed {
        /// The offending bits.
        bits: u64,
    },
    /// CR3 has bits set beyond any physical-address width (63:52).
    Cr3Reserved,
    /// DR7 bits 63:32 set ("load debug controls" is on).
    Dr7Reserved,
    /// IA32_SYSENTER_ESP or _EIP not canonical.
    SysenterNotCanonical,
    /// IA-32e mode guest without CR0.PG or CR4.PAE.
    Ia32eWithoutPaging,
    /// CR4.PCIDE set outside IA-32e mode.
    PcideOutsideIa32e,
    /// EFER has reserved bits set (valid: SCE, LME, LMA, NXE).
    EferReserved {
        /// The reserved bits set.
        bits: u64,
    },
    /// EFER.LMA differs from the "IA-32e mode guest" entry control.
    EferLmaMismatch,
    /// Paging on, and EFER.LME differs from EFER.LMA.
    EferLmeMismatch,
    /// IA32_PAT holds an invalid memory type.
    Pat {
        /// Index (0-7) of the bad entry.
        entry: u8,
    },
    /// A segment register fails a check.
    Segment {
        /// Which register.
        reg: SegReg,
        /// What is wrong.
        problem: SegmentProblem,
    },
    /// GDTR/IDTR base not canonical.
    TableBase(TableReg),
    /// GDTR/IDTR limit above 0xFFFF.
    TableLimit(TableReg),
    /// RIP bits 63:32 set outside 64-bit code, or not canonical in 64-bit code.
    Rip,
    /// RFLAGS reserved bits wrong (63:22, 15, 5, 3 must be 0; bit 1 must be 1).
    RflagsReserved,
    /// RFLAGS.VM set in IA-32e mode or with CR0.PE clear.
    RflagsVm,
    /// The activity state is not supported by this CPU (IA32_VMX_MISC).
    ActivityUnsupported(ActivityState),
    /// HLT activity state with SS.DPL != 0.
    HltWithSsDpl,
    /// Not active while blocking by STI or MOV SS.
    ActivityWithBlocking,
    /// Reserved interruptibility bits set (31:5).
    InterruptibilityReserved,
    /// Blocking by STI and by MOV SS at once.
    StiAndMovSs,
    /// Blocking by STI with RFLAGS.IF clear.
    StiWithInterruptsDisabled,
    /// VMCS link pointer not all ones (Hermitage does not use VMCS shadowing).
    VmcsLinkPointer,
}

const fn canonical(v: u64) -> bool {
    (((v << 16) as i64) >> 16) as u64 == v
}

const fn limit_granularity_ok(limit: u32, g: bool) -> bool {
    !((limit & 0xFFF != 0xFFF && g) || (limit > 0xF_FFFF && !g))
}

/// Check `state` against the VM-entry rules for a CPU configured by `cfg`, with the entry
/// controls [`VmxConfig::entry_for`] gives for the state's EFER.LMA.
pub fn check_guest_state(state: &GuestState, cfg: &VmxConfig) -> Result<(), GuestStateError> {
    check_guest_state_with(state, cfg, cfg.entry_for(state.ia32e()))
}

/// Check `state` with explicit VM-entry controls (what the VMCS actually holds).
pub fn check_guest_state_with(
    s: &GuestState,
    cfg: &VmxConfig,
    entry: EntryControls,
) -> Result<(), GuestStateError> {
    use GuestStateError as E;
    let ug = cfg.unrestricted_guest();
    let ia32e = entry.contains(EntryControls::IA32E_MODE_GUEST);

    // Control registers, debug registers and MSRs. (Without unrestricted guest, PE and PG are
    // among the fixed bits; name that case first since it is the likely mistake.)
    if !ug && s.cr0 & (CR0_PE | CR0_PG) != CR0_PE | CR0_PG {
        return Err(E::UnrestrictedGuestRequired);
    }
    let bits = fixed_violations(s.cr0, cfg.guest_cr0_fixed0(), cfg.cr0_fixed1);
    if bits != 0 {
        return Err(E::Cr0Fixed { bits });
    }
    if s.cr0 & CR0_PG != 0 && s.cr0 & CR0_PE == 0 {
        return Err(E::Cr0PagingWithoutProtection);
    }
    let bits = fixed_violations(s.cr4, cfg.cr4_fixed0, cfg.cr4_fixed1);
    if bits != 0 {
        return Err(E::Cr4Fixed { bits });
    }
    if s.cr3 >> 52 != 0 {
        return Err(E::Cr3Reserved);
    }
    if entry.contains(EntryControls::LOAD_DEBUG_CONTROLS) && s.dr7 >> 32 != 0 {
        return Err(E::Dr7Reserved);
    }
    if !canonical(s.sysenter_esp) || !canonical(s.sysenter_eip) {
        return Err(E::SysenterNotCanonical);
    }
    if ia32e && (s.cr0 & CR0_PG == 0 || s.cr4 & CR4_PAE == 0) {
        return Err(E::Ia32eWithoutPaging);
    }
    if !ia32e && s.cr4 & CR4_PCIDE != 0 {
        return Err(E::PcideOutsideIa32e);
    }
    if entry.contains(EntryControls::LOAD_PAT) {
        for i in 0..8 {
            if !matches!((s.pat >> (8 * i)) & 0xFF, 0 | 1 | 4 | 5 | 6 | 7) {
                return Err(E::Pat { entry: i as u8 });
            }
        }
    }
    if entry.contains(EntryControls::LOAD_EFER) {
        let bits = s.efer & !(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE);
        if bits != 0 {
            return Err(E::EferReserved { bits });
        }
        if (s.efer & EFER_LMA != 0) != ia32e {
            return Err(E::EferLmaMismatch);
        }
        if s.cr0 & CR0_PG != 0 && (s.efer & EFER_LME != 0) != (s.efer & EFER_LMA != 0) {
            return Err(E::EferLmeMismatch);
        }
    }

    check_segments(s, ug, ia32e)?;

    // Descriptor-table registers.
    for (reg, t) in [(TableReg::Gdtr, s.gdtr), (TableReg::Idtr, s.idtr)] {
        if !canonical(t.base) {
            return Err(E::TableBase(reg));
        }
        if t.limit > 0xFFFF {
            return Err(E::TableLimit(reg));
        }
    }

    // RIP and RFLAGS.
    let long_code = ia32e && s.cs.access.l();
    if (!long_code && s.rip >> 32 != 0) || (long_code && !canonical(s.rip)) {
        return Err(E::Rip);
    }
    if s.rflags & RFLAGS_RESERVED != 0 || s.rflags & RFLAGS_FIXED == 0 {
        return Err(E::RflagsReserved);
    }
    if s.rflags & RFLAGS_VM != 0 && (ia32e || s.cr0 & CR0_PE == 0) {
        return Err(E::RflagsVm);
    }

    // Non-register state.
    if !cfg.activity_supported(s.activity) {
        return Err(E::ActivityUnsupported(s.activity));
    }
    if s.activity == ActivityState::Hlt && s.ss.access.dpl() != 0 {
        return Err(E::HltWithSsDpl);
    }
    let blocking = s.interruptibility & (Interruptibility::STI | Interruptibility::MOV_SS);
    if !blocking.is_empty() && s.activity != ActivityState::Active {
        return Err(E::ActivityWithBlocking);
    }
    if s.interruptibility.bits() & !0x1F != 0 {
        return Err(E::InterruptibilityReserved);
    }
    if blocking == Interruptibility::STI | Interruptibility::MOV_SS {
        return Err(E::StiAndMovSs);
    }
    if blocking.contains(Interruptibility::STI) && s.rflags & RFLAGS_IF == 0 {
        return Err(E::StiWithInterruptsDisabled);
    }
    if s.vmcs_link_pointer != VMCS_LINK_POINTER_NONE {
        return Err(E::VmcsLinkPointer);
    }
    Ok(())
}

fn check_segments(s: &GuestState, ug: bool, ia32e: bool) -> Result<(), GuestStateError> {
    use SegmentProblem as P;
    let err = |reg, problem| Err(GuestStateError::Segment { reg, problem });
    let pe = s.cr0 & CR0_PE != 0;

    // Selectors.
    if s.tr.selector & 4 != 0 {
        return err(SegReg::Tr, P::SelectorTi);
    }
    if !s.ldtr.access.unusable() && s.ldtr.selector & 4 != 0 {
        return err(SegReg::Ldtr, P::SelectorTi);
    }
    if !ug && s.ss.selector & 3 != s.cs.selector & 3 {
        return err(SegReg::Ss, P::SelectorRpl);
    }

    // Bases: TR, FS, GS (and a usable LDTR) canonical; CS, and usable SS/DS/ES, below 4 GiB.
    for reg in [SegReg::Tr, SegReg::Fs, SegReg::Gs] {
        if !canonical(s.segment(reg).base) {
            return err(reg, P::Base);
        }
    }
    if !s.ldtr.access.unusable() && !canonical(s.ldtr.base) {
        return err(SegReg::Ldtr, P::Base);
    }
    if s.cs.base >> 32 != 0 {
        return err(SegReg::Cs, P::Base);
    }
    for reg in [SegReg::Ss, SegReg::Ds, SegReg::Es] {
        let seg = s.segment(reg);
        if !seg.access.unusable() && seg.base >> 32 != 0 {
            return err(reg, P::Base);
        }
    }

    // CS.
    let cs = s.cs.access;
    let ss = s.ss.access;
    if cs.unusable() {
        return err(SegReg::Cs, P::Unusable);
    }
    let cs_ok = matches!(cs.typ(), 9 | 11 | 13 | 15) || (ug && cs.typ() == 3);
    if !cs_ok {
        return err(SegReg::Cs, P::Type);
    }
    if !cs.s() {
        return err(SegReg::Cs, P::DescriptorType);
    }
    let dpl_ok = match cs.typ() {
        3 => cs.dpl() == 0,
        9 | 11 => cs.dpl() == ss.dpl(),
        _ => cs.dpl() <= ss.dpl(),
    };
    if !dpl_ok {
        return err(SegReg::Cs, P::Dpl);
    }
    if !cs.present() {
        return err(SegReg::Cs, P::NotPresent);
    }
    if cs.0 & AccessRights::RESERVED != 0 {
        return err(SegReg::Cs, P::ReservedBits);
    }
    if ia32e && cs.l() && cs.db() {
        return err(SegReg::Cs, P::LongAndDefaultSize);
    }
    if !limit_granularity_ok(s.cs.limit, cs.g()) {
        return err(SegReg::Cs, P::LimitGranularity);
    }

    // SS.
    if !ss.unusable() {
        if !matches!(ss.typ(), 3 | 7) {
            return err(SegReg::Ss, P::Type);
        }
        if !ss.s() {
            return err(SegReg::Ss, P::DescriptorType);
        }
        if !ss.present() {
            return err(SegReg::Ss, P::NotPresent);
        }
        if ss.0 & AccessRights::RESERVED != 0 {
            return err(SegReg::Ss, P::ReservedBits);
        }
        if !limit_granularity_ok(s.ss.limit, ss.g()) {
            return err(SegReg::Ss, P::LimitGranularity);
        }
    }
    if (!ug && ss.dpl() as u16 != s.ss.selector & 3) || ((cs.typ() == 3 || !pe) && ss.dpl() != 0) {
        return err(SegReg::Ss, P::Dpl);
    }

    // DS, ES, FS, GS.
    for reg in [SegReg::Ds, SegReg::Es, SegReg::Fs, SegReg::Gs] {
        let seg = s.segment(reg);
        let a = seg.access;
        if a.unusable() {
            continue;
        }
        if a.typ() & 1 == 0 || (a.typ() & 8 != 0 && a.typ() & 2 == 0) {
            return err(reg, P::Type);
        }
        if !a.s() {
            return err(reg, P::DescriptorType);
        }
        if !ug && a.typ() <= 11 && (a.dpl() as u16) < seg.selector & 3 {
            return err(reg, P::Dpl);
        }
        if !a.present() {
            return err(reg, P::NotPresent);
        }
        if a.0 & AccessRights::RESERVED != 0 {
            return err(reg, P::ReservedBits);
        }
        if !limit_granularity_ok(seg.limit, a.g()) {
            return err(reg, P::LimitGranularity);
        }
    }

    // TR: always usable, a busy TSS (16-bit only outside IA-32e mode).
    let tr = s.tr.access;
    if tr.unusable() {
        return err(SegReg::Tr, P::Unusable);
    }
    if !(tr.typ() == 11 || (!ia32e && tr.typ() == 3)) {
        return err(SegReg::Tr, P::Type);
    }
    if tr.s() {
        return err(SegReg::Tr, P::DescriptorType);
    }
    if !tr.present() {
        return err(SegReg::Tr, P::NotPresent);
    }
    if tr.0 & AccessRights::RESERVED != 0 {
        return err(SegReg::Tr, P::ReservedBits);
    }
    if !limit_granularity_ok(s.tr.limit, tr.g()) {
        return err(SegReg::Tr, P::LimitGranularity);
    }

    // LDTR, if usable.
    let ldtr = s.ldtr.access;
    if !ldtr.unusable() {
        if ldtr.typ() != 2 {
            return err(SegReg::Ldtr, P::Type);
        }
        if ldtr.s() {
            return err(SegReg::Ldtr, P::DescriptorType);
        }
        if !ldtr.present() {
            return err(SegReg::Ldtr, P::NotPresent);
        }
        if ldtr.0 & AccessRights::RESERVED != 0 {
            return err(SegReg::Ldtr, P::ReservedBits);
        }
        if !limit_granularity_ok(s.ldtr.limit, ldtr.g()) {
            return err(SegReg::Ldtr, P::LimitGranularity);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorded;

    fn cfg() -> VmxConfig {
        VmxConfig::derive(&recorded::BOCHS_HASWELL_4770.msrs).unwrap()
    }

    fn long() -> GuestSetup {
        build(
            GuestMode::Long64 {
                cr3: 0x1000,
                rip: 0xFFFF_FFFF_8010_0000,
                rsp: 0x8000,
            },
            &cfg(),
        )
    }

    fn protected() -> GuestSetup {
        build(
            GuestMode::Protected32 {
                eip: 0x10_0000,
                esp: 0x9_0000,
                multiboot_info: Some(0x9500),
            },
            &cfg(),
        )
    }

    fn real() -> GuestSetup {
        build(GuestMode::real_at(0x7C00, 0x7000).unwrap(), &cfg())
    }

    #[test]
    fn access_rights_encoding() {
        assert_eq!(AR_CODE64.0, 0xA09B);
        assert_eq!(AR_CODE32.0, 0xC09B);
        assert_eq!(AR_DATA32.0, 0xC093);
        assert_eq!(AR_CODE16.0, 0x9B);
        assert_eq!(AR_DATA16.0, 0x93);
        assert_eq!(AR_TSS_BUSY.0, 0x8B);
        assert_eq!(AccessRights::UNUSABLE.0, 0x1_0000);
        let a = AccessRights::new(0x7, true, 3, true, true, false, true, false);
        assert_eq!(
            (a.typ(), a.s(), a.dpl(), a.present(), a.l(), a.db(), a.g()),
            (7, true, 3, true, false, true, false)
        );
        assert_eq!(a.0 & (1 << 12), 1 << 12, "AVL");
    }

    #[test]
    fn long_mode_state() {
        let g = long();
        let s = g.state;
        assert_eq!(s.cr0, 0x8001_0033);
        assert_eq!(s.cr4, 0x2020, "PAE plus the forced VMXE");
        assert_eq!(g.shadows.cr4_shadow, 0x20, "the guest does not see VMXE");
        assert_eq!(g.shadows.cr4_mask & CR4_VMXE, CR4_VMXE);
        assert_eq!(g.shadows.cr0_mask & 0xFFFF_FFFF, CR0_NE);
        assert_eq!(s.efer, 0xD00);
        assert!(s.ia32e());
        assert!(
            g.entry
                .contains(EntryControls::IA32E_MODE_GUEST | EntryControls::LOAD_EFER)
        );
        assert_eq!((s.cs.selector, s.cs.access), (FLAT_CS, AR_CODE64));
        assert_eq!((s.ss.selector, s.ds.access), (FLAT_DS, AR_DATA32));
        assert!(s.ldtr.access.unusable());
        assert_eq!(
            (s.rip, s.rsp, s.cr3),
            (0xFFFF_FFFF_8010_0000, 0x8000, 0x1000)
        );
        assert_eq!(s.vmcs_link_pointer, u64::MAX);
        assert_eq!(s.rflags, 2);
        assert_eq!(check_guest_state(&s, &cfg()), Ok(()));
    }

    #[test]
    fn protected_mode_multiboot_state() {
        let g = protected();
        let s = g.state;
        assert_eq!(s.cr0, 0x31, "PE|ET plus the forced NE, paging off");
        assert_eq!(g.shadows.cr0_shadow, 0x11);
        assert_eq!(s.efer, 0);
        assert!(!g.entry.contains(EntryControls::IA32E_MODE_GUEST));
        assert_eq!((g.regs.rax, g.regs.rbx), (0x2BAD_B002, 0x9500));
        assert_eq!(
            (s.cs.access, s.cs.limit, s.cs.base),
            (AR_CODE32, 0xFFFF_FFFF, 0)
        );
        assert_eq!((s.rip, s.rsp), (0x10_0000, 0x9_0000));
        assert_eq!(check_guest_state(&s, &cfg()), Ok(()));
        let g = build(
            GuestMode::Protected32 {
                eip: 0x10_0000,
                esp: 0,
                multiboot_info: None,
            },
            &cfg(),
        );
        assert_eq!(g.regs, GuestRegs::default());
    }

    #[test]
    fn real_mode_state() {
        let g = real();
        let s = g.state;
        assert_eq!(s.cr0, 0x30, "ET plus the forced NE: PE and PG clear");
        assert_eq!(g.shadows.cr0_shadow, 0x10);
        assert_eq!((s.cs.selector, s.cs.base, s.rip), (0, 0, 0x7C00));
        assert_eq!((s.cs.access, s.cs.limit), (AR_CODE16, 0xFFFF));
        assert_eq!((s.ss.access, s.rsp), (AR_DATA16, 0x7000));
        assert_eq!(check_guest_state(&s, &cfg()), Ok(()));
        let g = build(GuestMode::real_at(0xF_FFF0, 0).unwrap(), &cfg());
        assert_eq!(
            (g.state.cs.selector, g.state.cs.base, g.state.rip),
            (0xF000, 0xF_0000, 0xFFF0)
        );
        assert_eq!(check_guest_state(&g.state, &cfg()), Ok(()));
        assert_eq!(GuestMode::real_at(0x10_0000, 0), None);
    }

    #[test]
    fn builders_pass_on_every_usable_cpu() {
        for r in recorded::USABLE {
            let c = VmxConfig::derive(&r.msrs).unwrap();
            for mode in [
                GuestMode::Long64 {
                    cr3: 0x1000,
                    rip: 0x20_0000,
                    rsp: 0,
                },
                // The Linux loader's entry (guests::linux: GDT 0x1000, zero page 0x2000).
                GuestMode::Linux64(hv::vcpu::LinuxEntry {
                    cr3: 0x4000,
                    rip: 0x100_0200,
                    rsp: 0xB000,
                    rsi: 0x2000,
                    gdt_base: 0x1000,
                    gdt_limit: 0x1F,
                    cs: 0x10,
                    ds: 0x18,
                }),
                GuestMode::Protected32 {
                    eip: 0x10_0000,
                    esp: 0,
                    multiboot_info: Some(0x500),
                },
                GuestMode::Real16 {
                    cs: 0x1000,
                    ip: 0,
                    sp: 0xFFFE,
                },
            ] {
                let g = build(mode, &c);
                assert_eq!(
                    check_guest_state_with(&g.state, &c, g.entry),
                    Ok(()),
                    "{} {mode:?}",
                    r.name
                );
                // Every field fits its width, and PAT only appears when switched.
                for (f, v) in g.state.fields(&c) {
                    assert_eq!(v & !f.value_mask(), 0, "{f:?}");
                    assert_eq!(f.kind(), crate::vmcs::FieldKind::Guest, "{f:?}");
                }
            }
        }
    }

    #[test]
    fn fields_cover_the_state() {
        let c = cfg();
        let g = long();
        let fields: Vec<_> = g.state.fields(&c).collect();
        assert_eq!(fields.len(), 53);
        assert!(fields.contains(&(VmcsField::GuestCsAccessRights, 0xA09B)));
        assert!(fields.contains(&(VmcsField::GuestLdtrAccessRights, 0x1_0000)));
        assert!(fields.contains(&(VmcsField::VmcsLinkPointer, u64::MAX)));
        assert!(fields.contains(&(VmcsField::GuestIa32Pat, PAT_RESET)));
        let mut no_pat = c;
        no_pat.entry.remove(EntryControls::LOAD_PAT);
        assert_eq!(g.state.fields(&no_pat).count(), 52);
        assert_eq!(
            g.shadows.fields()[1],
            (VmcsField::Cr0ReadShadow, 0x8001_0033)
        );
    }

    /// Breakages, each with the error it must produce.
    #[test]
    fn broken_states_fail_with_the_right_error() {
        use GuestStateError as E;
        use SegmentProblem as P;
        let c = cfg();
        type Break = fn(&mut GuestState);
        let cases: &[(&str, GuestSetup, Break, GuestStateError)] = &[
            (
                "NE clear",
                long(),
                |s| s.cr0 &= !CR0_NE,
                E::Cr0Fixed { bits: CR0_NE },
            ),
            (
                "CR0 high bits",
                long(),
                |s| s.cr0 |= 1 << 40,
                E::Cr0Fixed { bits: 1 << 40 },
            ),
            (
                "PG without PE",
                long(),
                |s| s.cr0 &= !CR0_PE,
                E::Cr0PagingWithoutProtection,
            ),
            (
                "VMXE clear",
                long(),
                |s| s.cr4 &= !CR4_VMXE,
                E::Cr4Fixed { bits: CR4_VMXE },
            ),
            (
                "LA57 on Haswell",
                long(),
                |s| s.cr4 |= 1 << 12,
                E::Cr4Fixed { bits: 1 << 12 },
            ),
            ("CR3 reserved", long(), |s| s.cr3 |= 1 << 60, E::Cr3Reserved),
            ("DR7 high", long(), |s| s.dr7 |= 1 << 32, E::Dr7Reserved),
            (
                "SYSENTER_EIP",
                long(),
                |s| s.sysenter_eip = 1 << 50,
                E::SysenterNotCanonical,
            ),
            (
                "long without PAE",
                long(),
                |s| s.cr4 &= !CR4_PAE,
                E::Ia32eWithoutPaging,
            ),
            (
                "PCIDE in 32-bit",
                protected(),
                |s| s.cr4 |= CR4_PCIDE,
                E::PcideOutsideIa32e,
            ),
            (
                "PAT type 2",
                long(),
                |s| s.pat = (PAT_RESET & !0xFF00) | 0x0200,
                E::Pat { entry: 1 },
            ),
            (
                "EFER.SVME",
                long(),
                |s| s.efer |= 1 << 12,
                E::EferReserved { bits: 1 << 12 },
            ),
            (
                "LMA without control",
                protected(),
                |s| s.efer |= EFER_LMA,
                E::EferLmaMismatch,
            ),
            (
                "LME without LMA",
                long(),
                |s| s.efer &= !EFER_LME,
                E::EferLmeMismatch,
            ),
            (
                "TR TI",
                long(),
                |s| s.tr.selector = 4,
                E::Segment {
                    reg: SegReg::Tr,
                    problem: P::SelectorTi,
                },
            ),
            (
                "FS base",
                long(),
                |s| s.fs.base = 1 << 60,
                E::Segment {
                    reg: SegReg::Fs,
                    problem: P::Base,
                },
            ),
            (
                "DS base high",
                protected(),
                |s| s.ds.base = 1 << 32,
                E::Segment {
                    reg: SegReg::Ds,
                    problem: P::Base,
                },
            ),
            (
                "CS unusable",
                long(),
                |s| s.cs.access = AccessRights::UNUSABLE,
                E::Segment {
                    reg: SegReg::Cs,
                    problem: P::Unusable,
                },
            ),
            (
                "CS data type",
                long(),
                |s| s.cs.access.0 = (s.cs.access.0 & !0xF) | 0x1,
                E::Segment {
                    reg: SegReg::Cs,
                    problem: P::Type,
                },
            ),
            (
                "CS system",
                long(),
                |s| s.cs.access.0 &= !0x10,
                E::Segment {
                    reg: SegReg::Cs,
                    problem: P::DescriptorType,
                },
            ),
            (
                "CS DPL 3",
                long(),
                |s| s.cs.access.0 |= 3 << 5,
                E::Segment {
                    reg: SegReg::Cs,
                    problem: P::Dpl,
                },
            ),
            (
                "CS not present",
                long(),
                |s| s.cs.access.0 &= !0x80,
                E::Segment {
                    reg: SegReg::Cs,
                    problem: P::NotPresent,
                },
            ),
            (
                "CS reserved",
                long(),
                |s| s.cs.access.0 |= 1 << 8,
                E::Segment {
                    reg: SegReg::Cs,
                    problem: P::ReservedBits,
                },
            ),
            (
                "CS L and D",
                long(),
                |s| s.cs.access.0 |= 1 << 14,
                E::Segment {
                    reg: SegReg::Cs,
                    problem: P::LongAndDefaultSize,
                },
            ),
            (
                "CS limit/G",
                protected(),
                |s| s.cs.limit = 0xFFFF_F000,
                E::Segment {
                    reg: SegReg::Cs,
                    problem: P::LimitGranularity,
                },
            ),
            (
                "SS code",
                long(),
                |s| s.ss.access.0 = (s.ss.access.0 & !0xF) | 0xB,
                E::Segment {
                    reg: SegReg::Ss,
                    problem: P::Type,
                },
            ),
            (
                "SS DPL in real mode",
                real(),
                |s| {
                    // CS follows (non-conforming code: CS.DPL = SS.DPL), so the SS rule fires.
                    s.ss.access.0 |= 3 << 5;
                    s.cs.access.0 |= 3 << 5;
                },
                E::Segment {
                    reg: SegReg::Ss,
                    problem: P::Dpl,
                },
            ),
            (
                "DS not accessed",
                long(),
                |s| s.ds.access.0 &= !1,
                E::Segment {
                    reg: SegReg::Ds,
                    problem: P::Type,
                },
            ),
            (
                "GS not present",
                long(),
                |s| s.gs.access.0 &= !0x80,
                E::Segment {
                    reg: SegReg::Gs,
                    problem: P::NotPresent,
                },
            ),
            (
                "ES limit/G",
                real(),
                |s| s.es.limit = 0x10_0000,
                E::Segment {
                    reg: SegReg::Es,
                    problem: P::LimitGranularity,
                },
            ),
            (
                "TR unusable",
                long(),
                |s| s.tr.access = AccessRights::UNUSABLE,
                E::Segment {
                    reg: SegReg::Tr,
                    problem: P::Unusable,
                },
            ),
            (
                "TR 16-bit in long mode",
                long(),
                |s| s.tr.access.0 = 0x83,
                E::Segment {
                    reg: SegReg::Tr,
                    problem: P::Type,
                },
            ),
            (
                "TR code/data",
                long(),
                |s| s.tr.access.0 |= 0x10,
                E::Segment {
                    reg: SegReg::Tr,
                    problem: P::DescriptorType,
                },
            ),
            (
                "LDTR type",
                long(),
                |s| s.ldtr.access = AccessRights(0x83),
                E::Segment {
                    reg: SegReg::Ldtr,
                    problem: P::Type,
                },
            ),
            (
                "GDTR base",
                long(),
                |s| s.gdtr.base = 0x8000_0000_0000_0000,
                E::TableBase(TableReg::Gdtr),
            ),
            (
                "IDTR limit",
                long(),
                |s| s.idtr.limit = 0x1_0000,
                E::TableLimit(TableReg::Idtr),
            ),
            (
                "RIP above 4G in 32-bit",
                protected(),
                |s| s.rip = 1 << 32,
                E::Rip,
            ),
            (
                "RIP not canonical",
                long(),
                |s| s.rip = 0x0000_8000_0000_0000,
                E::Rip,
            ),
            ("RFLAGS bit 1", long(), |s| s.rflags = 0, E::RflagsReserved),
            (
                "RFLAGS bit 3",
                long(),
                |s| s.rflags |= 1 << 3,
                E::RflagsReserved,
            ),
            (
                "VM in long mode",
                long(),
                |s| s.rflags |= RFLAGS_VM,
                E::RflagsVm,
            ),
            (
                "HLT with SS.DPL 3",
                protected(),
                |s| {
                    s.activity = ActivityState::Hlt;
                    s.ss.access.0 |= 3 << 5;
                    s.ss.selector |= 3;
                    s.cs.selector |= 3;
                    s.cs.access.0 |= 3 << 5;
                },
                E::HltWithSsDpl,
            ),
            (
                "HLT with STI blocking",
                long(),
                |s| {
                    s.activity = ActivityState::Hlt;
                    s.interruptibility = Interruptibility::STI;
                },
                E::ActivityWithBlocking,
            ),
            (
                "interruptibility reserved",
                long(),
                |s| s.interruptibility = Interruptibility::from_bits_retain(1 << 5),
                E::InterruptibilityReserved,
            ),
            (
                "STI and MOV SS",
                long(),
                |s| {
                    s.rflags |= RFLAGS_IF;
                    s.interruptibility = Interruptibility::STI | Interruptibility::MOV_SS;
                },
                E::StiAndMovSs,
            ),
            (
                "STI with IF clear",
                long(),
                |s| s.interruptibility = Interruptibility::STI,
                E::StiWithInterruptsDisabled,
            ),
            (
                "link pointer",
                long(),
                |s| s.vmcs_link_pointer = 0,
                E::VmcsLinkPointer,
            ),
        ];
        for (name, setup, breakit, expected) in cases {
            let mut s = setup.state;
            assert_eq!(check_guest_state(&s, &c), Ok(()), "{name}: baseline");
            breakit(&mut s);
            assert_eq!(
                check_guest_state_with(&s, &c, setup.entry),
                Err(*expected),
                "{name}"
            );
        }
    }

    #[test]
    fn checks_that_depend_on_the_cpu() {
        // Without unrestricted guest, real mode and unpaged protected mode are refused.
        let mut c = cfg();
        c.secondary
            .remove(crate::controls::SecondaryControls::UNRESTRICTED_GUEST);
        let s = real().state;
        assert_eq!(
            check_guest_state(&s, &c),
            Err(GuestStateError::UnrestrictedGuestRequired)
        );
        assert_eq!(
            check_guest_state(&protected().state, &c),
            Err(GuestStateError::UnrestrictedGuestRequired)
        );
        // Paged long mode is fine without it.
        assert_eq!(check_guest_state(&long().state, &c), Ok(()));
        // The IA-32e control given explicitly must match EFER.LMA.
        let g = long();
        assert_eq!(
            check_guest_state_with(&g.state, &cfg(), cfg().entry),
            Err(GuestStateError::EferLmaMismatch)
        );
        // Activity states the CPU does not support (Penryn-like MISC without shutdown).
        let mut c = cfg();
        c.misc = crate::caps::VmxMisc(0x40);
        let mut s = long().state;
        s.activity = ActivityState::Shutdown;
        assert_eq!(
            check_guest_state(&s, &c),
            Err(GuestStateError::ActivityUnsupported(
                ActivityState::Shutdown
            ))
        );
        s.activity = ActivityState::Hlt;
        assert_eq!(check_guest_state(&s, &c), Ok(()));
        // Without "load debug controls", DR7 is not checked.
        let mut s = long().state;
        s.dr7 |= 1 << 40;
        let entry = cfg().entry_for(true) - EntryControls::LOAD_DEBUG_CONTROLS;
        assert_eq!(check_guest_state_with(&s, &cfg(), entry), Ok(()));
    }

    /// VMX access rights to the packed format and back, for the segments guests load.
    #[test]
    fn access_rights_packed_round_trip() {
        let rows = [
            (AR_CODE64, 0xA9B),
            (AR_CODE32, 0xC9B),
            (AR_DATA32, 0xC93),
            (AR_CODE16, 0x09B),
            (AccessRights(0xA0FB), 0xA_FB), // 64-bit code, DPL 3
            (AccessRights(AccessRights::UNUSABLE.0 | 0x93), 0x13),
        ];
        for (ar, packed) in rows {
            assert_eq!(ar.to_packed(), packed, "{ar:x?}");
        }
        for (ar, packed) in rows.into_iter().take(5) {
            assert_eq!(AccessRights::from_packed(packed), ar, "{packed:#x}");
        }
        assert!(AccessRights::from_packed(0x13).unusable());
        assert!(AccessRights::from_packed(0).unusable());
    }
}
