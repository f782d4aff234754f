//! Building a VMCB for a flat guest, and checking it the way VMRUN should.
//!
//! Why: the initial architectural state of a guest (segment attributes in the VMCB's packed
//! format, control registers, EFER with SVME, intercepts) is where most "VMRUN fails" and
//! "guest triple-faults on its first instruction" bugs come from. Filling it is a pure
//! function here, tested for the three entry modes Hermitage guests use:
//!
//! - 64-bit long mode with paging (CR3 and entry RIP/RSP given),
//! - 32-bit protected mode, flat, paging off, in the Multiboot 1 handoff state
//!   (EAX = 0x2BADB002, EBX = information structure),
//! - 16-bit real mode at a CS:IP.
//!
//! [`check_vmrun_consistency`] implements the checks APM 15.5.1 ("Canonicalization and
//! Consistency Checks") says VMRUN performs. QEMU TCG does not check faithfully
//! (shared/PLATFORM.md), so we check ourselves before every first VMRUN and after changes;
//! a real CPU would answer VMEXIT_INVALID with no hint of which rule broke.
#![forbid(unsafe_code)]

use crate::addr::HostPhys;
use crate::permmap::{IOPM_SIZE, MSRPM_SIZE};
use crate::regs::GuestRegs;
use crate::vmcb::{
    Cr0, Cr4, DR6_RESET, DR7_RESET, Efer, Event, EventType, InterceptMisc1, InterceptMisc2,
    NpControl, PAT_RESET, RFLAGS_FIXED, SegAttrib, Segment, TlbControl, VIntr, Vmcb,
};

/// Multiboot 1 magic in EAX at handoff (Multiboot specification 0.6.96, 3.2).
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// Flat 64-bit code: type 0xB, S, P, L, G (= 0xA9B).
pub const ATTR_CODE64: SegAttrib = SegAttrib::new(
    SegAttrib::TYPE_CODE_XR_ACCESSED,
    true,
    0,
    true,
    false,
    true,
    false,
    true,
);
/// Flat 32-bit code: type 0xB, S, P, D, G (= 0xC9B).
pub const ATTR_CODE32: SegAttrib = SegAttrib::new(
    SegAttrib::TYPE_CODE_XR_ACCESSED,
    true,
    0,
    true,
    false,
    false,
    true,
    true,
);
/// Flat 32-bit data (also used in long mode): type 3, S, P, B, G (= 0xC93).
pub const ATTR_DATA32: SegAttrib = SegAttrib::new(
    SegAttrib::TYPE_DATA_RW_ACCESSED,
    true,
    0,
    true,
    false,
    false,
    true,
    true,
);
/// Real-mode code: type 0xB, S, P, 16-bit (= 0x9B).
pub const ATTR_CODE16: SegAttrib = SegAttrib::new(
    SegAttrib::TYPE_CODE_XR_ACCESSED,
    true,
    0,
    true,
    false,
    false,
    false,
    false,
);
/// Real-mode data: type 3, S, P, 16-bit (= 0x93).
pub const ATTR_DATA16: SegAttrib = SegAttrib::new(
    SegAttrib::TYPE_DATA_RW_ACCESSED,
    true,
    0,
    true,
    false,
    false,
    false,
    false,
);
/// LDTR placeholder: present LDT (= 0x82).
pub const ATTR_LDT: SegAttrib = SegAttrib::new(
    SegAttrib::TYPE_LDT,
    false,
    0,
    true,
    false,
    false,
    false,
    false,
);
/// TR placeholder: present busy 32/64-bit TSS (= 0x8B).
pub const ATTR_TSS_BUSY: SegAttrib = SegAttrib::new(
    SegAttrib::TYPE_TSS_BUSY,
    false,
    0,
    true,
    false,
    false,
    false,
    false,
);
/// TR placeholder in real mode: present busy 16-bit TSS (= 0x83).
pub const ATTR_TSS16_BUSY: SegAttrib = SegAttrib::new(
    SegAttrib::TYPE_TSS16_BUSY,
    false,
    0,
    true,
    false,
    false,
    false,
    false,
);

/// Selector of the flat code segment we report for protected and long mode.
pub const FLAT_CS: u16 = 0x08;
/// Selector of the flat data segments.
pub const FLAT_DS: u16 = 0x10;

/// Intercepts every Hermitage guest gets (vector 3).
pub const DEFAULT_MISC1: InterceptMisc1 = InterceptMisc1::INTR
    .union(InterceptMisc1::NMI)
    .union(InterceptMisc1::CPUID)
    .union(InterceptMisc1::HLT)
    .union(InterceptMisc1::IOIO_PROT)
    .union(InterceptMisc1::MSR_PROT)
    .union(InterceptMisc1::SHUTDOWN)
    .union(InterceptMisc1::INVLPGA)
    .union(InterceptMisc1::RDPMC);

/// Intercepts every Hermitage guest gets (vector 4). VMRUN is mandatory (APM 15.5.1); the
/// other SVM instructions would otherwise run natively on host-physical addresses. XSETBV is
/// intercepted so a guest cannot change XCR0 behind the host's back.
pub const DEFAULT_MISC2: InterceptMisc2 = InterceptMisc2::VMRUN
    .union(InterceptMisc2::VMMCALL)
    .union(InterceptMisc2::VMLOAD)
    .union(InterceptMisc2::VMSAVE)
    .union(InterceptMisc2::STGI)
    .union(InterceptMisc2::CLGI)
    .union(InterceptMisc2::SKINIT)
    .union(InterceptMisc2::XSETBV);

/// How the guest starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestMode {
    /// 64-bit long mode, paging on with the guest's own 4-level tables at `cr3`
    /// (a guest-physical address, translated by the nested page tables).
    Long64 {
        /// Guest CR3.
        cr3: u64,
        /// Entry point.
        rip: u64,
        /// Initial stack pointer.
        rsp: u64,
    },
    /// The Linux x86-64 boot protocol's entry ([`hv::vcpu::LinuxEntry`]): long mode as
    /// [`GuestMode::Long64`], with the loader's GDT, boot selectors and RSI at the zero page.
    Linux64(hv::vcpu::LinuxEntry),
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

/// Everything [`build_vmcb`] needs besides the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestConfig {
    /// Entry state.
    pub mode: GuestMode,
    /// Guest ASID (from [`crate::asid::AsidAllocator`]; never 0).
    pub asid: u32,
    /// Physical address of the 12 KiB I/O permission map.
    pub iopm: HostPhys,
    /// Physical address of the 8 KiB MSR permission map.
    pub msrpm: HostPhys,
    /// Root of the nested page tables ([`crate::npt`]).
    pub nested_cr3: HostPhys,
}

/// Fill `vmcb` (cleared first) and `regs` for a fresh guest.
pub fn build_vmcb(cfg: &GuestConfig, vmcb: &mut Vmcb, regs: &mut GuestRegs) {
    vmcb.clear();
    *regs = GuestRegs::default();

    let c = &mut vmcb.control;
    c.intercept_misc1 = DEFAULT_MISC1;
    c.intercept_misc2 = DEFAULT_MISC2;
    c.iopm_base_pa = cfg.iopm.as_u64();
    c.msrpm_base_pa = cfg.msrpm.as_u64();
    c.guest_asid = cfg.asid;
    c.tlb_control = TlbControl::DoNothing as u8;
    // Virtualize RFLAGS.IF/TPR: host interrupts are governed by the host's IF while the guest
    // runs and exit through the INTR intercept (APM 15.21.1).
    c.vintr = VIntr(0).with(VIntr::V_INTR_MASKING, true);
    c.np_control = NpControl::NP_ENABLE;
    c.n_cr3 = cfg.nested_cr3.as_u64();

    let s = &mut vmcb.save;
    s.rflags = RFLAGS_FIXED;
    s.dr6 = DR6_RESET;
    s.dr7 = DR7_RESET;
    s.g_pat = PAT_RESET;
    s.cpl = 0;
    s.ldtr = Segment {
        selector: 0,
        attrib: ATTR_LDT,
        limit: 0xFFFF,
        base: 0,
    };

    match cfg.mode {
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
            let code = Segment {
                selector: cs,
                attrib: ATTR_CODE64,
                limit: 0xFFFF_FFFF,
                base: 0,
            };
            let data = Segment {
                selector: ds,
                attrib: ATTR_DATA32,
                limit: 0xFFFF_FFFF,
                base: 0,
            };
            set_segments(s, code, data);
            s.tr = Segment {
                selector: 0,
                attrib: ATTR_TSS_BUSY,
                limit: 0x67,
                base: 0,
            };
            s.gdtr = Segment {
                selector: 0,
                attrib: crate::vmcb::SegAttrib(0),
                limit: u32::from(gdt_limit),
                base: gdt_base,
            };
            s.cr0 = (Cr0::PE | Cr0::ET | Cr0::NE | Cr0::PG).bits();
            s.cr3 = cr3;
            s.cr4 = Cr4::PAE.bits();
            s.efer = Efer::SVME | Efer::LME | Efer::LMA;
            s.rip = rip;
            s.rsp = rsp;
            regs.rsi = rsi;
        }
        GuestMode::Long64 { cr3, rip, rsp } => {
            let code = Segment {
                selector: FLAT_CS,
                attrib: ATTR_CODE64,
                limit: 0xFFFF_FFFF,
                base: 0,
            };
            let data = Segment {
                selector: FLAT_DS,
                attrib: ATTR_DATA32,
                limit: 0xFFFF_FFFF,
                base: 0,
            };
            set_segments(s, code, data);
            s.tr = Segment {
                selector: 0,
                attrib: ATTR_TSS_BUSY,
                limit: 0x67,
                base: 0,
            };
            s.cr0 = (Cr0::PE | Cr0::MP | Cr0::ET | Cr0::NE | Cr0::WP | Cr0::PG).bits();
            s.cr3 = cr3;
            s.cr4 = (Cr4::PAE | Cr4::OSFXSR | Cr4::OSXMMEXCPT).bits();
            s.efer = Efer::SVME | Efer::LME | Efer::LMA | Efer::NXE;
            s.rip = rip;
            s.rsp = rsp;
        }
        GuestMode::Protected32 {
            eip,
            esp,
            multiboot_info,
        } => {
            let code = Segment {
                selector: FLAT_CS,
                attrib: ATTR_CODE32,
                limit: 0xFFFF_FFFF,
                base: 0,
            };
            let data = Segment {
                selector: FLAT_DS,
                attrib: ATTR_DATA32,
                limit: 0xFFFF_FFFF,
                base: 0,
            };
            set_segments(s, code, data);
            s.tr = Segment {
                selector: 0,
                attrib: ATTR_TSS_BUSY,
                limit: 0x67,
                base: 0,
            };
            s.cr0 = (Cr0::PE | Cr0::ET).bits();
            s.efer = Efer::SVME;
            s.rip = eip as u64;
            s.rsp = esp as u64;
            if let Some(info) = multiboot_info {
                s.rax = MULTIBOOT_BOOTLOADER_MAGIC as u64;
                regs.rbx = info as u64;
            }
        }
        GuestMode::Real16 { cs, ip, sp } => {
            let code = Segment {
                selector: cs,
                attrib: ATTR_CODE16,
                limit: 0xFFFF,
                base: (cs as u64) << 4,
            };
            let data = Segment {
                selector: 0,
                attrib: ATTR_DATA16,
                limit: 0xFFFF,
                base: 0,
            };
            set_segments(s, code, data);
            s.tr = Segment {
                selector: 0,
                attrib: ATTR_TSS16_BUSY,
                limit: 0xFFFF,
                base: 0,
            };
            // Real-mode interrupt vector table at 0.
            s.idtr = Segment {
                selector: 0,
                attrib: SegAttrib(0),
                limit: 0x3FF,
                base: 0,
            };
            s.cr0 = Cr0::ET.bits();
            s.efer = Efer::SVME;
            s.rip = ip as u64;
            s.rsp = sp as u64;
        }
    }
}

fn set_segments(s: &mut crate::vmcb::StateSaveArea, code: Segment, data: Segment) {
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.ss = data;
    s.fs = data;
    s.gs = data;
}

/// A VMRUN consistency-check failure (APM 15.5.1), one variant per rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsistencyError {
    /// EFER.SVME is zero.
    EferSvmeClear,
    /// CR0.CD is zero and CR0.NW is set.
    Cr0NwWithoutCd,
    /// CR0 bits 63:32 are not zero.
    Cr0HighBits,
    /// A must-be-zero bit of CR3 is set.
    Cr3Mbz,
    /// A must-be-zero (reserved) bit of CR4 is set.
    Cr4Mbz,
    /// DR6 bits 63:32 are not zero.
    Dr6HighBits,
    /// DR7 bits 63:32 are not zero.
    Dr7HighBits,
    /// A must-be-zero bit of EFER is set.
    EferMbz,
    /// EFER.LME and CR0.PG are set but CR4.PAE is clear.
    LongModeWithoutPae,
    /// EFER.LME and CR0.PG are set but CR0.PE is clear.
    LongModeWithoutPe,
    /// EFER.LME, CR0.PG, CR4.PAE, CS.L and CS.D are all set.
    LongModeCsLAndD,
    /// The VMRUN intercept is clear.
    VmrunInterceptClear,
    /// The IOPM extends beyond the physical-address limit (or, stricter than hardware, its
    /// base is not page aligned, so the CPU would use a different address than intended).
    IopmBase,
    /// The MSRPM extends beyond the physical-address limit (or is not page aligned).
    MsrpmBase,
    /// EVENTINJ is valid but illegal: reserved type, exception vector 2 or > 31, or reserved
    /// bits 30:12 set.
    IllegalEventInjection,
    /// The guest ASID is zero.
    AsidZero,
}

/// The CPU's physical-address width from CPUID Fn8000_0008_EAX (bits 7:0, APM vol. 3
/// appendix E.4.7), what [`check_vmrun_consistency_with`] needs. A width outside the
/// architectural 32..=52 (0 from a CPU that does not report it) is taken as 52, the most
/// permissive; the hardware still checks.
pub const fn phys_addr_bits(cpuid_8000_0008_eax: u32) -> u8 {
    let bits = cpuid_8000_0008_eax as u8;
    if bits >= 32 && bits <= 52 { bits } else { 52 }
}

/// Check `vmcb` against the VMRUN consistency rules, assuming the architectural maximum of
/// 52 physical-address bits. The kernel uses [`check_vmrun_consistency_with`] and the CPU's
/// width ([`phys_addr_bits`]).
pub fn check_vmrun_consistency(vmcb: &Vmcb) -> Result<(), ConsistencyError> {
    check_vmrun_consistency_with(vmcb, 52)
}

/// Check `vmcb` against the VMRUN consistency rules for a CPU with `phys_bits` physical
/// address bits (CPUID Fn8000_0008_EAX bits 7:0). Rules are checked in APM order; the first
/// failure is returned.
pub fn check_vmrun_consistency_with(vmcb: &Vmcb, phys_bits: u8) -> Result<(), ConsistencyError> {
    use ConsistencyError::*;
    let s = &vmcb.save;
    let c = &vmcb.control;
    let efer = s.efer;
    let cr0 = Cr0::from_bits_retain(s.cr0);
    let cr4 = Cr4::from_bits_retain(s.cr4);
    let above = |v: u64, bits: u8| bits < 64 && v >> bits != 0;

    if !efer.contains(Efer::SVME) {
        return Err(EferSvmeClear);
    }
    if !cr0.contains(Cr0::CD) && cr0.contains(Cr0::NW) {
        return Err(Cr0NwWithoutCd);
    }
    if s.cr0 >> 32 != 0 {
        return Err(Cr0HighBits);
    }
    let long = efer.contains(Efer::LME) && cr0.contains(Cr0::PG);
    // Long mode: bits 63:MAXPHYADDR of CR3 are reserved; legacy modes: bits 63:32.
    if above(s.cr3, if long { phys_bits.min(52) } else { 32 }) {
        return Err(Cr3Mbz);
    }
    if s.cr4 & !Cr4::all().bits() != 0 {
        return Err(Cr4Mbz);
    }
    if s.dr6 >> 32 != 0 {
        return Err(Dr6HighBits);
    }
    if s.dr7 >> 32 != 0 {
        return Err(Dr7HighBits);
    }
    if efer.bits() & !Efer::all().bits() != 0 {
        return Err(EferMbz);
    }
    if long && !cr4.contains(Cr4::PAE) {
        return Err(LongModeWithoutPae);
    }
    if long && !cr0.contains(Cr0::PE) {
        return Err(LongModeWithoutPe);
    }
    if long && s.cs.attrib.has(SegAttrib::L) && s.cs.attrib.has(SegAttrib::DB) {
        return Err(LongModeCsLAndD);
    }
    if !c.intercept_misc2.contains(InterceptMisc2::VMRUN) {
        return Err(VmrunInterceptClear);
    }
    let table_ok = |base: u64, size: usize| {
        base & 0xFFF == 0
            && base
                .checked_add(size as u64 - 1)
                .is_some_and(|end| !above(end, phys_bits))
    };
    if !table_ok(c.iopm_base_pa, IOPM_SIZE) {
        return Err(IopmBase);
    }
    if !table_ok(c.msrpm_base_pa, MSRPM_SIZE) {
        return Err(MsrpmBase);
    }
    if c.event_inj & Event::VALID != 0 {
        let reserved_bits = c.event_inj & 0x7FFF_F000 != 0;
        let legal = match Event::decode(c.event_inj) {
            None => false,
            Some(e) => !(e.kind == EventType::Exception && (e.vector == 2 || e.vector > 31)),
        };
        if reserved_bits || !legal {
            return Err(IllegalEventInjection);
        }
    }
    if c.guest_asid == 0 {
        return Err(AsidZero);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmcb::Vmcb;

    fn cfg(mode: GuestMode) -> GuestConfig {
        GuestConfig {
            mode,
            asid: 1,
            iopm: HostPhys(0x10_0000),
            msrpm: HostPhys(0x10_3000),
            nested_cr3: HostPhys(0x20_0000),
        }
    }

    fn build(mode: GuestMode) -> (Box<Vmcb>, GuestRegs) {
        let mut v = Box::new(Vmcb::ZERO);
        // Garbage first: the builder must clear everything.
        v.control.event_inj = 0xFFFF_FFFF;
        v.save.dr7 = u64::MAX;
        let mut r = GuestRegs {
            r15: 7,
            ..Default::default()
        };
        build_vmcb(&cfg(mode), &mut v, &mut r);
        (v, r)
    }

    #[test]
    fn linux_entry_is_the_boot_protocol_state_and_passes_vmrun_checks() {
        let (v, r) = build(GuestMode::Linux64(hv::vcpu::LinuxEntry {
            cr3: 0x4000,
            rip: 0x100_0200,
            rsp: 0xB000,
            rsi: 0x2000,
            gdt_base: 0x1000,
            gdt_limit: 0x1F,
            cs: 0x10,
            ds: 0x18,
        }));
        assert_eq!(check_vmrun_consistency(&v), Ok(()));
        let s = &v.save;
        assert_eq!(
            (s.cs.selector, s.ds.selector, s.ss.selector),
            (0x10, 0x18, 0x18)
        );
        assert_eq!((s.gdtr.base, s.gdtr.limit), (0x1000, 0x1F));
        assert_eq!(
            (s.rip, s.rsp, r.rsi, s.cr3),
            (0x100_0200, 0xB000, 0x2000, 0x4000)
        );
        assert_eq!(s.rflags & (1 << 9), 0, "IF=0 at entry");
        assert_eq!(s.efer, Efer::SVME | Efer::LME | Efer::LMA);
        assert_eq!(r.r15, 0, "registers cleared");
    }

    #[test]
    fn phys_addr_bits_from_cpuid() {
        // QEMU's default 40 bits, a 48-bit part, 52; 0 and nonsense fall back to 52.
        assert_eq!(phys_addr_bits(0x3028), 40);
        assert_eq!(phys_addr_bits(0x3030), 48);
        assert_eq!(phys_addr_bits(0x34), 52);
        assert_eq!(phys_addr_bits(0), 52);
        assert_eq!(phys_addr_bits(0x40), 52);
        // With 40 bits, a permission map at 2^40 - 4 KiB is out of range; with 52 it is not.
        let (mut vmcb, _) = build(GuestMode::Protected32 {
            eip: 0x10_0000,
            esp: 0,
            multiboot_info: None,
        });
        vmcb.control.iopm_base_pa = (1 << 40) - 0x1000;
        assert!(check_vmrun_consistency_with(&vmcb, 52).is_ok());
        assert!(check_vmrun_consistency_with(&vmcb, phys_addr_bits(0x3028)).is_err());
    }

    #[test]
    fn attribute_constants() {
        assert_eq!(ATTR_CODE64.0, 0xA9B);
        assert_eq!(ATTR_CODE32.0, 0xC9B);
        assert_eq!(ATTR_DATA32.0, 0xC93);
        assert_eq!(ATTR_CODE16.0, 0x9B);
        assert_eq!(ATTR_DATA16.0, 0x93);
        assert_eq!(ATTR_LDT.0, 0x82);
        assert_eq!(ATTR_TSS_BUSY.0, 0x8B);
        assert_eq!(ATTR_TSS16_BUSY.0, 0x83);
    }

    #[test]
    fn long_mode_guest() {
        let (v, r) = build(GuestMode::Long64 {
            cr3: 0x1000,
            rip: 0x40_0000,
            rsp: 0x80_0000,
        });
        check_vmrun_consistency(&v).unwrap();
        assert_eq!(r, GuestRegs::default());
        let s = &v.save;
        assert_eq!((s.rip, s.rsp, s.cr3), (0x40_0000, 0x80_0000, 0x1000));
        assert_eq!(s.cs.attrib.0, 0xA9B);
        assert_eq!(s.ss.attrib.0, 0xC93);
        assert_eq!(s.cr0, 0x8001_0033);
        assert_eq!(s.cr4, 0x620);
        assert_eq!(s.efer.bits(), 0x1D00);
        assert_eq!(
            (s.rflags, s.dr6, s.dr7, s.g_pat),
            (2, 0xFFFF_0FF0, 0x400, PAT_RESET)
        );
        assert!(v.is_64bit_code());
        let c = &v.control;
        assert!(c.intercept_misc2.contains(InterceptMisc2::VMRUN));
        assert!(
            c.intercept_misc1
                .contains(InterceptMisc1::CPUID | InterceptMisc1::HLT | InterceptMisc1::SHUTDOWN)
        );
        assert!(
            c.intercept_misc1.contains(
                InterceptMisc1::IOIO_PROT | InterceptMisc1::MSR_PROT | InterceptMisc1::INTR
            )
        );
        assert_eq!(
            (c.iopm_base_pa, c.msrpm_base_pa, c.n_cr3, c.guest_asid),
            (0x10_0000, 0x10_3000, 0x20_0000, 1)
        );
        assert_eq!(c.np_control, NpControl::NP_ENABLE);
        assert_eq!(c.event_inj, 0);
        assert!(c.vintr.has(VIntr::V_INTR_MASKING));
        assert_eq!(
            crate::exit::code_size(&v),
            crate::insn_len::CodeSize::Bits64
        );
    }

    #[test]
    fn multiboot_guest() {
        let (v, r) = build(GuestMode::Protected32 {
            eip: 0x10_0000,
            esp: 0x9_0000,
            multiboot_info: Some(0x9500),
        });
        check_vmrun_consistency(&v).unwrap();
        let s = &v.save;
        assert_eq!(s.rax, 0x2BAD_B002);
        assert_eq!(r.rbx, 0x9500);
        assert_eq!((s.rip, s.rsp), (0x10_0000, 0x9_0000));
        assert_eq!(s.cs.attrib.0, 0xC9B);
        assert_eq!((s.cs.base, s.cs.limit), (0, 0xFFFF_FFFF));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!((seg.attrib.0, seg.base, seg.limit), (0xC93, 0, 0xFFFF_FFFF));
        }
        assert_eq!(s.cr0, 0x11, "PE|ET, paging off");
        assert_eq!(s.efer, Efer::SVME);
        assert_eq!(s.rflags & (1 << 9), 0, "IF clear");
        assert_eq!(
            crate::exit::code_size(&v),
            crate::insn_len::CodeSize::Bits32
        );
        // Without info: no magic.
        let (v, r) = build(GuestMode::Protected32 {
            eip: 0x10_0000,
            esp: 0,
            multiboot_info: None,
        });
        assert_eq!((v.save.rax, r.rbx), (0, 0));
    }

    #[test]
    fn real_mode_guest() {
        let mode = GuestMode::real_at(0x7C00, 0x7000).unwrap();
        assert_eq!(
            mode,
            GuestMode::Real16 {
                cs: 0,
                ip: 0x7C00,
                sp: 0x7000
            }
        );
        assert_eq!(
            GuestMode::real_at(0x9_1234, 0),
            Some(GuestMode::Real16 {
                cs: 0x9000,
                ip: 0x1234,
                sp: 0
            })
        );
        assert_eq!(GuestMode::real_at(0x10_0000, 0), None);
        let (v, _) = build(GuestMode::Real16 {
            cs: 0x9000,
            ip: 0x1234,
            sp: 0xFFFE,
        });
        check_vmrun_consistency(&v).unwrap();
        let s = &v.save;
        assert_eq!(
            (s.cs.selector, s.cs.base, s.cs.limit, s.cs.attrib.0),
            (0x9000, 0x9_0000, 0xFFFF, 0x9B)
        );
        assert_eq!((s.ss.attrib.0, s.ss.limit), (0x93, 0xFFFF));
        assert_eq!((s.rip, s.rsp), (0x1234, 0xFFFE));
        assert_eq!(s.cr0 & 1, 0, "PE clear");
        assert_eq!((s.idtr.base, s.idtr.limit), (0, 0x3FF));
        assert_eq!(s.efer, Efer::SVME);
        assert_eq!(
            crate::exit::code_size(&v),
            crate::insn_len::CodeSize::Bits16
        );
    }

    #[test]
    fn consistency_negative_cases() {
        use ConsistencyError::*;
        let (good, _) = build(GuestMode::Long64 {
            cr3: 0x1000,
            rip: 0,
            rsp: 0,
        });
        type Mutation = Box<dyn Fn(&mut Vmcb)>;
        let cases: Vec<(ConsistencyError, Mutation)> = vec![
            (EferSvmeClear, Box::new(|v| v.save.efer.remove(Efer::SVME))),
            (Cr0NwWithoutCd, Box::new(|v| v.save.cr0 |= Cr0::NW.bits())),
            (Cr0HighBits, Box::new(|v| v.save.cr0 |= 1 << 32)),
            (Cr3Mbz, Box::new(|v| v.save.cr3 |= 1 << 60)),
            (Cr4Mbz, Box::new(|v| v.save.cr4 |= 1 << 13)), // VMXE is reserved on AMD
            (Dr6HighBits, Box::new(|v| v.save.dr6 |= 1 << 40)),
            (Dr7HighBits, Box::new(|v| v.save.dr7 |= 1 << 40)),
            (
                EferMbz,
                Box::new(|v| v.save.efer |= Efer::from_bits_retain(1 << 1)),
            ),
            (
                LongModeWithoutPae,
                Box::new(|v| v.save.cr4 &= !Cr4::PAE.bits()),
            ),
            (
                LongModeWithoutPe,
                Box::new(|v| v.save.cr0 &= !Cr0::PE.bits()),
            ),
            (
                LongModeCsLAndD,
                Box::new(|v| v.save.cs.attrib.0 |= SegAttrib::DB),
            ),
            (
                VmrunInterceptClear,
                Box::new(|v| v.control.intercept_misc2.remove(InterceptMisc2::VMRUN)),
            ),
            (
                IopmBase,
                Box::new(|v| v.control.iopm_base_pa = (1 << 52) - 0x1000),
            ),
            (IopmBase, Box::new(|v| v.control.iopm_base_pa = 0x10_0010)),
            (
                MsrpmBase,
                Box::new(|v| v.control.msrpm_base_pa = (1 << 52) - 0x1000),
            ),
            (
                MsrpmBase,
                Box::new(|v| v.control.msrpm_base_pa = u64::MAX & !0xFFF),
            ),
            (
                IllegalEventInjection,
                Box::new(|v| v.control.event_inj = Event::VALID | (1 << 8) | 32),
            ),
            (
                IllegalEventInjection,
                Box::new(|v| v.control.event_inj = Event::exception(2, None).encode()),
            ),
            (
                IllegalEventInjection,
                Box::new(|v| v.control.event_inj = Event::exception(32, None).encode()),
            ),
            (
                IllegalEventInjection,
                Box::new(|v| v.control.event_inj = Event::UD.encode() | (1 << 20)),
            ),
            (AsidZero, Box::new(|v| v.control.guest_asid = 0)),
        ];
        for (expected, mutate) in cases {
            let mut v = good.clone();
            mutate(&mut v);
            assert_eq!(check_vmrun_consistency(&v), Err(expected));
        }
    }

    #[test]
    fn consistency_positive_edge_cases() {
        let (good, _) = build(GuestMode::Long64 {
            cr3: 0x1000,
            rip: 0,
            rsp: 0,
        });
        let mut v = good.clone();
        // CD and NW both set is legal (the reset value of CR0 has both).
        v.save.cr0 |= (Cr0::CD | Cr0::NW).bits();
        assert_eq!(check_vmrun_consistency(&v), Ok(()));
        // Legal injections: #UD, #GP with error code, external interrupt 0x20, NMI.
        for e in [
            Event::UD,
            Event::exception(13, Some(0)),
            Event {
                vector: 0x20,
                kind: EventType::Intr,
                error_code: None,
            },
            Event {
                vector: 2,
                kind: EventType::Nmi,
                error_code: None,
            },
        ] {
            let mut v = good.clone();
            v.control.event_inj = e.encode();
            assert_eq!(check_vmrun_consistency(&v), Ok(()), "{e:?}");
        }
        // A CR3 within 48 bits passes a 48-bit CPU; one above fails only there.
        let mut v = good.clone();
        v.save.cr3 = 1 << 49;
        assert_eq!(check_vmrun_consistency(&v), Ok(()));
        assert_eq!(
            check_vmrun_consistency_with(&v, 48),
            Err(ConsistencyError::Cr3Mbz)
        );
        // Legacy mode: CR3 above 4 GiB is MBZ.
        let (mut p, _) = build(GuestMode::Protected32 {
            eip: 0,
            esp: 0,
            multiboot_info: None,
        });
        p.save.cr3 = 1 << 32;
        assert_eq!(check_vmrun_consistency(&p), Err(ConsistencyError::Cr3Mbz));
        // Tables right under the 48-bit limit pass.
        let mut v = good.clone();
        v.control.iopm_base_pa = (1 << 48) - IOPM_SIZE as u64;
        v.control.msrpm_base_pa = (1 << 48) - MSRPM_SIZE as u64;
        assert_eq!(check_vmrun_consistency_with(&v, 48), Ok(()));
        v.control.iopm_base_pa += 0x1000;
        assert_eq!(
            check_vmrun_consistency_with(&v, 48),
            Err(ConsistencyError::IopmBase)
        );
    }
}
