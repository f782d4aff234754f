//! Emulated exits on the host: instruction fetch through the guest's paging, MMIO to an
//! unclaimed page and to the IOAPIC, string I/O through 4-level and 32-bit paging, and every
//! fault path, each against a small guest memory with hand-built page tables.

use super::*;
use crate::cpuid::CpuidView;
use crate::devices::PlatformConfig;
use crate::devices::chipset::ChipsetConfig;
use crate::devices::lapic::LapicConfig;
use crate::mem::walk::{PF_FETCH, PF_PRESENT, PF_WRITE};
use crate::vcpu::{CR0_PE, CR0_PG, CR4_PAE, CR4_PSE, EFER_LMA, EFER_NXE, Gpr, Segment};
use crate::vm::OnCrash;

const RAM: usize = 4 << 20;
const P: u64 = 1;
const RW: u64 = 2;
const PS: u64 = 1 << 7;
const EFER_LME: u64 = 1 << 8;

/// Guest RAM with a bump allocator for 4-level page tables (from 0x1000 up).
struct Guest {
    ram: Vec<u8>,
    next: u64,
    cr3: u64,
}

impl Guest {
    fn new() -> Guest {
        Guest {
            ram: vec![0; RAM],
            next: 0x2000,
            cr3: 0x1000,
        }
    }

    fn get64(&self, at: u64) -> u64 {
        u64::from_le_bytes(self.ram[at as usize..at as usize + 8].try_into().unwrap())
    }

    fn put64(&mut self, at: u64, v: u64) {
        self.ram[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn put(&mut self, at: u64, bytes: &[u8]) {
        self.ram[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    }

    /// Map the 4 KiB page at `va` to `pa` (read/write, supervisor) in 4-level paging.
    fn map(&mut self, va: u64, pa: u64) {
        let mut table = self.cr3;
        for level in [39, 30, 21] {
            let e = table + ((va >> level) & 0x1FF) * 8;
            if self.get64(e) & P == 0 {
                let t = self.next;
                self.next += 0x1000;
                self.put64(e, t | P | RW);
            }
            table = self.get64(e) & 0x000F_FFFF_FFFF_F000;
        }
        self.put64(table + ((va >> 12) & 0x1FF) * 8, pa | P | RW);
    }

    /// Remove the 4 KiB mapping of `va`.
    fn unmap(&mut self, va: u64) {
        let mut table = self.cr3;
        for level in [39, 30, 21] {
            table = self.get64(table + ((va >> level) & 0x1FF) * 8) & 0x000F_FFFF_FFFF_F000;
        }
        self.put64(table + ((va >> 12) & 0x1FF) * 8, 0);
    }
}

/// 64-bit mode with 4-level paging at `cr3`, RIP at `rip`.
fn long64(cr3: u64, rip: u64) -> VcpuState {
    let mut s = VcpuState::default();
    s.sys.cr0 = CR0_PE | CR0_PG;
    s.sys.cr3 = cr3;
    s.sys.cr4 = CR4_PAE;
    s.sys.efer = EFER_LME | EFER_LMA | EFER_NXE;
    s.sys.cs = Segment {
        selector: 8,
        base: 0,
        limit: 0xFFFF_FFFF,
        attrs: 0x29B, // L, P, S, code execute/read accessed
    };
    s.regs.rip = rip;
    s.regs.rflags = 2;
    s
}

/// 32-bit protected mode, 32-bit paging (PSE on) with the page directory at `cr3`, flat
/// segments whose base is `base`.
fn prot32(cr3: u64, rip: u64, base: u64) -> VcpuState {
    let mut s = VcpuState::default();
    s.sys.cr0 = CR0_PE | CR0_PG;
    s.sys.cr3 = cr3;
    s.sys.cr4 = CR4_PSE;
    let flat = |attrs| Segment {
        selector: 0x10,
        base,
        limit: 0xFFFF_FFFF,
        attrs,
    };
    s.sys.cs = flat(0xC9B);
    s.sys.ds = flat(0xC93);
    s.sys.es = flat(0xC93);
    s.sys.ss = flat(0xC93);
    s.regs.rip = rip;
    s.regs.rflags = 2;
    s
}

fn runtime() -> Box<VmRuntime> {
    let cpuid = CpuidView::from_host(
        |leaf, _| match leaf {
            0 => [1, 0x6874_7541, 0x444D_4163, 0x6974_6E65],
            _ => [0; 4],
        },
        None,
    );
    Box::new(VmRuntime::new(cpuid, OnCrash::Stop))
}

/// A runtime whose VM has a local APIC (and so the IOAPIC).
fn apic_runtime() -> Box<VmRuntime> {
    let mut rt = runtime();
    let platform = PlatformConfig {
        chipset: ChipsetConfig {
            lapic: Some(LapicConfig::BSP),
        },
        ..PlatformConfig::DEFAULT
    };
    rt.set_platform(&platform, |leaf, _| match leaf {
        0 => [1, 0x6874_7541, 0x444D_4163, 0x6974_6E65],
        _ => [0; 4],
    });
    rt
}

const CODE_VA: u64 = 0x40_0000;
const CODE_PA: u64 = 0x10_0000;
const MMIO_VA: u64 = 0x7FFF_0000_0000;
const UNCLAIMED: u64 = 0xE000_0000;
const IOAPIC: u64 = 0xFEC0_0000;

/// Long mode with code at CODE_VA and `MMIO_VA` mapped to `mmio`.
fn long_guest(code: &[u8], mmio: u64) -> (Guest, VcpuState) {
    let mut g = Guest::new();
    g.map(CODE_VA, CODE_PA);
    g.map(MMIO_VA, mmio);
    g.put(CODE_PA, code);
    let mut s = long64(g.cr3, CODE_VA);
    s.regs.set(Gpr::Rbx, MMIO_VA);
    (g, s)
}

#[test]
fn fetch_follows_paging_across_pages() {
    let mut g = Guest::new();
    g.map(CODE_VA, CODE_PA);
    g.map(CODE_VA + 0x1000, 0x30_0000);
    g.put(CODE_PA + 0xFFD, &[0x8B, 0x43, 0x10]);
    g.put(0x30_0000, &[0x90, 0x91]);
    let s = long64(g.cr3, CODE_VA + 0xFFD);
    let f = fetch_insn(&mut g.ram[..], &s, 36).unwrap();
    assert_eq!(f.len, 15);
    assert_eq!(&f.as_slice()[..5], &[0x8B, 0x43, 0x10, 0x90, 0x91]);
    assert_eq!(f.rest, None);

    // The next page unmapped: three bytes, and its #PF kept for later.
    g.unmap(CODE_VA + 0x1000);
    let f = fetch_insn(&mut g.ram[..], &s, 36).unwrap();
    assert_eq!(f.as_slice(), &[0x8B, 0x43, 0x10]);
    let Some(TranslateError::PageFault(pf)) = f.rest else {
        panic!("{:?}", f.rest);
    };
    assert_eq!(pf.address, GuestVirt(CODE_VA + 0x1000));
    assert_eq!(pf.error_code & (PF_FETCH | PF_PRESENT), PF_FETCH);

    // RIP itself unmapped: the fetch faults.
    let s = long64(g.cr3, CODE_VA + 0x1000);
    assert!(matches!(
        fetch_insn(&mut g.ram[..], &s, 36),
        Err(TranslateError::PageFault(_))
    ));
}

#[test]
fn fetch_without_paging_uses_cs_base_and_stops_at_ram_end() {
    let mut ram = vec![0u8; 0x3000];
    ram[0x2FFE] = 0xAB;
    ram[0x2FFF] = 0xCD;
    let mut s = VcpuState::default();
    s.sys.cr0 = CR0_PE;
    s.sys.cs.base = 0x2000;
    s.sys.cs.attrs = 0xC9B;
    s.regs.rip = 0xFFE;
    let f = fetch_insn(&mut ram[..], &s, 36).unwrap();
    assert_eq!(f.as_slice(), &[0xAB, 0xCD]);
    assert_eq!(
        f.rest,
        Some(TranslateError::TableNotRam(NotRam {
            gpa: GuestPhys(0x3000)
        }))
    );
}

#[test]
fn mov_to_an_unclaimed_page_reads_all_ones_and_counts() {
    // mov eax, [rbx]; then mov [rbx], ecx.
    let (mut g, mut s) = long_guest(&[0x8B, 0x03, 0x89, 0x0B], UNCLAIMED);
    s.regs.set(Gpr::Rax, 0x1234_5678_9ABC_DEF0);
    let mut rt = runtime();
    let e = mmio(GuestPhys(UNCLAIMED), &mut s, &mut g.ram[..], &mut rt);
    assert_eq!(e, Emulation::resume(true));
    assert_eq!(s.regs.get(Gpr::Rax), 0xFFFF_FFFF);
    assert_eq!(s.regs.rip, CODE_VA + 2);
    assert_eq!(rt.stats.unhandled_mmio_reads, 1);

    let e = mmio(GuestPhys(UNCLAIMED), &mut s, &mut g.ram[..], &mut rt);
    assert_eq!(e.action, Action::Resume);
    assert_eq!(s.regs.rip, CODE_VA + 4);
    assert_eq!(rt.stats.unhandled_mmio_writes, 1);
    assert_eq!(rt.stats.unhandled_mmio_reads, 1);
}

#[test]
fn ioapic_index_and_data_registers() {
    // mov dword [rbx], 1 (IOREGSEL = IOAPICVER); mov eax, [rbx+0x10] (IOWIN).
    let code = [0xC7, 0x03, 0x01, 0, 0, 0, 0x8B, 0x43, 0x10];
    let (mut g, mut s) = long_guest(&code, IOAPIC);
    let mut rt = apic_runtime();
    let e = mmio(GuestPhys(IOAPIC), &mut s, &mut g.ram[..], &mut rt);
    assert_eq!(e.action, Action::Resume);
    assert_eq!(s.regs.rip, CODE_VA + 6);
    let e = mmio(GuestPhys(IOAPIC + 0x10), &mut s, &mut g.ram[..], &mut rt);
    assert_eq!(e.action, Action::Resume);
    assert_eq!(s.regs.get(Gpr::Rax), 0x0017_0011);
    assert_eq!(s.regs.rip, CODE_VA + 9);
    assert_eq!(
        rt.stats.unhandled_mmio_reads + rt.stats.unhandled_mmio_writes,
        0
    );

    // Without a local APIC the page is nobody's: all ones.
    let (mut g, mut s) = long_guest(&code, IOAPIC);
    let mut rt = runtime();
    mmio(GuestPhys(IOAPIC), &mut s, &mut g.ram[..], &mut rt);
    mmio(GuestPhys(IOAPIC + 0x10), &mut s, &mut g.ram[..], &mut rt);
    assert_eq!(s.regs.get(Gpr::Rax), 0xFFFF_FFFF);
    assert_eq!(
        (
            rt.stats.unhandled_mmio_writes,
            rt.stats.unhandled_mmio_reads
        ),
        (1, 1)
    );
}

#[test]
fn a_fault_inside_ram_is_a_mapping_bug() {
    let (mut g, mut s) = long_guest(&[0x8B, 0x03], 0x20_0000);
    let before = s;
    let e = mmio(GuestPhys(0x20_0000), &mut s, &mut g.ram[..], &mut runtime());
    assert_eq!(
        e,
        Emulation::stop(StopReason::NptViolation {
            gpa: GuestPhys(0x20_0000)
        })
    );
    assert_eq!(s, before);
}

#[test]
fn fetch_fault_is_injected_only_when_the_instruction_needs_the_page() {
    // mov eax, [rbx] split: 8B at the end of one page, 03 on the next, which is unmapped.
    let mut g = Guest::new();
    g.map(CODE_VA, CODE_PA);
    g.map(MMIO_VA, UNCLAIMED);
    g.put(CODE_PA + 0xFFF, &[0x8B]);
    let mut s = long64(g.cr3, CODE_VA + 0xFFF);
    s.regs.set(Gpr::Rbx, MMIO_VA);
    let mut rt = runtime();
    let e = mmio(GuestPhys(UNCLAIMED), &mut s, &mut g.ram[..], &mut rt);
    assert_eq!(
        e.action,
        Action::InjectException {
            vector: VECTOR_PF,
            error_code: Some(PF_FETCH),
        }
    );
    assert!(e.write_back);
    assert_eq!(s.sys.cr2, CODE_VA + 0x1000);
    assert_eq!(
        s.regs.rip,
        CODE_VA + 0xFFF,
        "a fault leaves RIP on the instruction"
    );
    assert_eq!(rt.stats.unhandled_mmio_reads, 0);

    // The whole instruction on the first page: the unmapped next page does not matter.
    g.put(CODE_PA + 0xFFE, &[0x8B, 0x03]);
    let mut s = long64(g.cr3, CODE_VA + 0xFFE);
    s.regs.set(Gpr::Rbx, MMIO_VA);
    let e = mmio(GuestPhys(UNCLAIMED), &mut s, &mut g.ram[..], &mut rt);
    assert_eq!(e.action, Action::Resume);
    assert_eq!(s.regs.rip, CODE_VA + 0x1000);
}

#[test]
fn operand_page_fault_sets_cr2() {
    // movsd from the device page to an unmapped destination: the write's #PF.
    let (mut g, mut s) = long_guest(&[0xA5], UNCLAIMED);
    s.regs.set(Gpr::Rsi, MMIO_VA);
    s.regs.set(Gpr::Rdi, 0x5000_0000);
    let e = mmio(GuestPhys(UNCLAIMED), &mut s, &mut g.ram[..], &mut runtime());
    assert_eq!(
        e.action,
        Action::InjectException {
            vector: VECTOR_PF,
            error_code: Some(PF_WRITE),
        }
    );
    assert_eq!(s.sys.cr2, 0x5000_0000);
    assert_eq!(s.regs.rip, CODE_VA);
}

#[test]
fn unsupported_stops_with_the_bytes_and_others_map_as_documented() {
    // fxsave [rbx]: not an MMIO form.
    let (mut g, mut s) = long_guest(&[0x0F, 0xAE, 0x03], UNCLAIMED);
    let e = mmio(GuestPhys(UNCLAIMED), &mut s, &mut g.ram[..], &mut runtime());
    let mut bytes = [0u8; 15];
    bytes[..3].copy_from_slice(&[0x0F, 0xAE, 0x03]);
    assert_eq!(
        e,
        Emulation::stop(StopReason::MmioUnsupported {
            gpa: GuestPhys(UNCLAIMED),
            bytes,
            len: 3
        })
    );

    // The operand goes to another page than the fault: resume, nothing written.
    let (mut g, mut s) = long_guest(&[0x8B, 0x03], UNCLAIMED + 0x1000);
    let before = s;
    let e = mmio(GuestPhys(UNCLAIMED), &mut s, &mut g.ram[..], &mut runtime());
    assert_eq!(e, Emulation::resume(false));
    assert_eq!(s.regs, before.regs);

    // A non-canonical operand: #GP(0).
    let (mut g, mut s) = long_guest(&[0x8B, 0x03], UNCLAIMED);
    s.regs.set(Gpr::Rbx, 0x8000_0000_0000_0000);
    let e = mmio(GuestPhys(UNCLAIMED), &mut s, &mut g.ram[..], &mut runtime());
    assert_eq!(
        e.action,
        Action::InjectException {
            vector: VECTOR_GP,
            error_code: Some(0)
        }
    );

    // The page tables point outside RAM: stop with the address.
    let (mut g, mut s) = long_guest(&[0x8B, 0x03], UNCLAIMED);
    s.regs.set(Gpr::Rbx, 0x80_0000_0000);
    let pml4e = g.cr3 + ((s.regs.get(Gpr::Rbx) >> 39) & 0x1FF) * 8;
    g.put64(pml4e, 0x8000_0000 | P | RW);
    let e = mmio(GuestPhys(UNCLAIMED), &mut s, &mut g.ram[..], &mut runtime());
    assert!(
        matches!(e.action, Action::Stop(StopReason::NotRam { gpa }) if gpa.0 >= 0x8000_0000),
        "{e:?}"
    );
}

/// Bytes, code size, then the expected input, size, REP, address size, segment, length.
type StringRow = (
    &'static [u8],
    CodeSize,
    bool,
    IoSize,
    bool,
    AddrSize,
    SegmentReg,
    u8,
);

#[test]
fn decode_string_io_forms() {
    use AddrSize::*;
    use SegmentReg::*;
    let rows: &[StringRow] = &[
        (
            &[0xF3, 0x6E],
            CodeSize::Bits64,
            false,
            IoSize::Byte,
            true,
            A64,
            Ds,
            2,
        ),
        (
            &[0xF3, 0x6C],
            CodeSize::Bits32,
            true,
            IoSize::Byte,
            true,
            A32,
            Es,
            2,
        ),
        (
            &[0x67, 0xF3, 0x6D],
            CodeSize::Bits32,
            true,
            IoSize::Dword,
            true,
            A16,
            Es,
            3,
        ),
        (
            &[0x66, 0x6F],
            CodeSize::Bits64,
            false,
            IoSize::Word,
            false,
            A64,
            Ds,
            2,
        ),
        (
            &[0x2E, 0xF3, 0x6E],
            CodeSize::Bits32,
            false,
            IoSize::Byte,
            true,
            A32,
            Cs,
            3,
        ),
        (
            &[0x65, 0x6F],
            CodeSize::Bits16,
            false,
            IoSize::Word,
            false,
            A16,
            Gs,
            2,
        ),
        (
            &[0x67, 0x6C],
            CodeSize::Bits64,
            true,
            IoSize::Byte,
            false,
            A32,
            Es,
            2,
        ),
    ];
    for (i, &(bytes, code, input, size, rep, addr_size, segment, len)) in rows.iter().enumerate() {
        assert_eq!(
            decode_string_io(bytes, code),
            Ok(StringInsn {
                input,
                size,
                rep,
                addr_size,
                segment,
                len
            }),
            "row {i}"
        );
    }
    assert_eq!(
        decode_string_io(&[0xEE], CodeSize::Bits64),
        Err(DecodeError::NotStringIo)
    );
    assert_eq!(
        decode_string_io(&[0xF3], CodeSize::Bits64),
        Err(DecodeError::Truncated)
    );
}

/// A 32-bit guest with one 4 MiB PSE page: linear 0x0080_0000.. -> physical 0.
fn pse_guest(code: &[u8]) -> (Vec<u8>, VcpuState) {
    let mut ram = vec![0u8; RAM];
    let pd = 0x1000usize;
    ram[pd + 2 * 4..pd + 3 * 4].copy_from_slice(&((P | RW | PS) as u32).to_le_bytes());
    ram[0x3000..0x3000 + code.len()].copy_from_slice(code);
    let s = prot32(pd as u64, 0x80_3000, 0);
    (ram, s)
}

fn console(rt: &VmRuntime) -> Vec<u8> {
    let mut out = vec![0; 256];
    let r = rt.devices.console.read(0, &mut out);
    out.truncate(r.copied);
    out
}

#[test]
fn rep_outsb_through_32_bit_paging_to_com1() {
    let (mut ram, mut s) = pse_guest(&[0xF3, 0x6E]);
    ram[0x5000..0x5005].copy_from_slice(b"PASS\n");
    s.regs.set(Gpr::Rsi, 0x80_5000);
    s.regs.set(Gpr::Rcx, 5);
    s.regs.set(Gpr::Rdx, 0x3F8);
    let mut rt = runtime();
    let e = string_io(
        0x3F8,
        IoSize::Byte,
        0x80_3002,
        &mut s,
        &mut ram[..],
        &mut rt,
    );
    assert_eq!(e, Emulation::resume(true));
    assert_eq!(console(&rt), b"PASS\n");
    assert_eq!(s.regs.rip, 0x80_3002);
    assert_eq!(s.regs.get(Gpr::Rcx), 0);
    assert_eq!(s.regs.get(Gpr::Rsi), 0x80_5005);
}

#[test]
fn rep_insb_from_an_unclaimed_port_through_4_level_paging() {
    let (mut g, mut s) = long_guest(&[0xF3, 0x6C], UNCLAIMED);
    g.map(0x60_0000, 0x30_0000);
    s.regs.set(Gpr::Rdi, 0x60_0FFE);
    s.regs.set(Gpr::Rcx, 4);
    // The buffer straddles into an unmapped page: two bytes go in, then #PF for the third.
    let mut rt = runtime();
    let e = string_io(
        0x2E8,
        IoSize::Byte,
        CODE_VA + 2,
        &mut s,
        &mut g.ram[..],
        &mut rt,
    );
    assert_eq!(
        e.action,
        Action::InjectException {
            vector: VECTOR_PF,
            error_code: Some(PF_WRITE),
        }
    );
    assert_eq!(s.sys.cr2, 0x60_1000);
    assert_eq!(s.regs.get(Gpr::Rcx), 2, "the two elements done stay done");
    assert_eq!(s.regs.get(Gpr::Rdi), 0x60_1000);
    assert_eq!(s.regs.rip, CODE_VA, "RIP stays on the instruction");
    assert_eq!(&g.ram[0x30_0FFE..0x30_1000], &[0xFF, 0xFF]);
    assert_eq!(rt.stats.unhandled_port_reads, 2);
    // Mapped now: the rest completes.
    g.map(0x60_1000, 0x31_0000);
    let e = string_io(
        0x2E8,
        IoSize::Byte,
        CODE_VA + 2,
        &mut s,
        &mut g.ram[..],
        &mut rt,
    );
    assert_eq!(e, Emulation::resume(true));
    assert_eq!(&g.ram[0x31_0000..0x31_0003], &[0xFF, 0xFF, 0]);
    assert_eq!(s.regs.rip, CODE_VA + 2);
    assert_eq!(rt.stats.unhandled_port_reads, 4);
}

#[test]
fn a_long_rep_resumes_the_guest_for_the_next_batch() {
    let (mut ram, mut s) = pse_guest(&[0xF3, 0x6E]);
    let n = sio::MAX_ITERATIONS + 10;
    s.regs.set(Gpr::Rsi, 0x80_8000);
    s.regs.set(Gpr::Rcx, n);
    let mut rt = runtime();
    let e = string_io(0x80, IoSize::Byte, 0x80_3002, &mut s, &mut ram[..], &mut rt);
    assert_eq!(e, Emulation::resume(true));
    assert_eq!(s.regs.rip, 0x80_3000, "same instruction again");
    assert_eq!(s.regs.get(Gpr::Rcx), 10);
    let e = string_io(0x80, IoSize::Byte, 0x80_3002, &mut s, &mut ram[..], &mut rt);
    assert_eq!(e, Emulation::resume(true));
    assert_eq!((s.regs.rip, s.regs.get(Gpr::Rcx)), (0x80_3002, 0));
}

#[test]
fn string_io_ports_and_mismatches() {
    // OUTSB to the debug-exit port stops the VM with the byte.
    let (mut ram, mut s) = pse_guest(&[0x6E]);
    ram[0x5000] = 7;
    s.regs.set(Gpr::Rsi, 0x80_5000);
    let e = string_io(
        0xF4,
        IoSize::Byte,
        0x80_3001,
        &mut s,
        &mut ram[..],
        &mut runtime(),
    );
    assert_eq!(e.action, Action::Stop(StopReason::DebugExit(7)));

    // The exit said words, the bytes say bytes: not the instruction that exited.
    let (mut ram, mut s) = pse_guest(&[0x6E]);
    let e = string_io(
        0x3F8,
        IoSize::Word,
        0x80_3001,
        &mut s,
        &mut ram[..],
        &mut runtime(),
    );
    assert_eq!(
        e.action,
        Action::Stop(StopReason::UnsupportedIo { port: 0x3F8 })
    );

    // OUTS from an address no page maps: #PF for the read.
    let (mut ram, mut s) = pse_guest(&[0x6E]);
    s.regs.set(Gpr::Rsi, 0x10_0000);
    let e = string_io(
        0x3F8,
        IoSize::Byte,
        0x80_3001,
        &mut s,
        &mut ram[..],
        &mut runtime(),
    );
    assert_eq!(
        e.action,
        Action::InjectException {
            vector: VECTOR_PF,
            error_code: Some(0),
        }
    );
    assert_eq!(s.sys.cr2, 0x10_0000);
}
