//! Instruction-by-instruction tests: hand-assembled bytes (encodings from SDM vol. 2 opcode
//! tables), a recording device page, RAM with a hole, and a page-table fake.

use super::*;
use crate::mem::NotRam;
use crate::vcpu::{CR0_PG, CR4_PAE, EFER_LMA, Segment};
use Gpr::*;

const APIC: u64 = 0xFEE0_0000;

/// One bus access as the device saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Io {
    write: bool,
    gpa: u64,
    len: usize,
    value: u64,
}

fn r(gpa: u64, len: usize, value: u64) -> Io {
    Io {
        write: false,
        gpa,
        len,
        value,
    }
}

fn w(gpa: u64, len: usize, value: u64) -> Io {
    Io {
        write: true,
        gpa,
        len,
        value,
    }
}

/// A page of device registers at `base` that stores writes and returns them on reads (and all
/// ones elsewhere), logging every access.
struct Dev {
    base: u64,
    regs: [u8; 4096],
    log: Vec<Io>,
}

impl Dev {
    fn new(base: u64) -> Self {
        Dev {
            base,
            regs: [0; 4096],
            log: Vec::new(),
        }
    }

    fn set(&mut self, gpa: u64, bytes: &[u8]) {
        let o = (gpa - self.base) as usize;
        self.regs[o..o + bytes.len()].copy_from_slice(bytes);
    }

    fn get32(&self, gpa: u64) -> u32 {
        let o = (gpa - self.base) as usize;
        u32::from_le_bytes(self.regs[o..o + 4].try_into().unwrap())
    }
}

fn value(b: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(v)
}

impl MmioBus for Dev {
    fn read(&mut self, gpa: GuestPhys, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let a = gpa.0 + i as u64;
            *b = if (self.base..self.base + 4096).contains(&a) {
                self.regs[(a - self.base) as usize]
            } else {
                0xFF
            };
        }
        self.log.push(r(gpa.0, data.len(), value(data)));
    }

    fn write(&mut self, gpa: GuestPhys, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let a = gpa.0 + i as u64;
            if (self.base..self.base + 4096).contains(&a) {
                self.regs[(a - self.base) as usize] = b;
            }
        }
        self.log.push(w(gpa.0, data.len(), value(data)));
    }
}

/// 1 MiB of RAM at 0 with one page-sized hole (the device page, when it is below 1 MiB).
struct Ram {
    bytes: Vec<u8>,
    hole: Option<u64>,
}

impl Ram {
    fn new(hole: Option<u64>) -> Self {
        Ram {
            bytes: (0..0x10_0000u32).map(|i| (i * 7 + 3) as u8).collect(),
            hole,
        }
    }

    fn backed(&self, gpa: GuestPhys, len: usize) -> Result<usize, NotRam> {
        let in_hole = self
            .hole
            .is_some_and(|h| gpa.0 < h + 4096 && gpa.0 + len as u64 > h);
        if in_hole || gpa.0 + len as u64 > self.bytes.len() as u64 {
            return Err(NotRam { gpa });
        }
        Ok(gpa.0 as usize)
    }
}

impl GuestMemory for Ram {
    fn read(&self, gpa: GuestPhys, buf: &mut [u8]) -> Result<(), NotRam> {
        let s = self.backed(gpa, buf.len())?;
        buf.copy_from_slice(&self.bytes[s..s + buf.len()]);
        Ok(())
    }

    fn write(&mut self, gpa: GuestPhys, data: &[u8]) -> Result<(), NotRam> {
        let s = self.backed(gpa, data.len())?;
        self.bytes[s..s + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// Guest paging: virtual pages remapped by a list, an optional not-present page, identity
/// elsewhere. Records the accesses asked for.
#[derive(Default)]
struct Pages {
    map: Vec<(u64, u64)>,
    absent: Option<u64>,
    asked: std::cell::RefCell<Vec<(u64, Access)>>,
}

impl Translate for Pages {
    fn translate(&self, va: GuestVirt, access: Access) -> Result<GuestPhys, TranslateError> {
        self.asked.borrow_mut().push((va.0, access));
        let page = va.0 & !0xFFF;
        if self.absent == Some(page) {
            return Err(TranslateError::PageFault(PageFault {
                address: va,
                error_code: (access.write as u32) << 1 | (access.user as u32) << 2,
            }));
        }
        let phys = self
            .map
            .iter()
            .find(|&&(v, _)| v == page)
            .map_or(page, |&(_, p)| p);
        Ok(GuestPhys(phys | (va.0 & 0xFFF)))
    }
}

fn flat_segment(attrs: u16) -> Segment {
    Segment {
        selector: 0x10,
        base: 0,
        limit: 0xFFFF_FFFF,
        attrs,
    }
}

/// 64-bit mode, paging on, flat segments.
fn long_mode() -> VcpuState {
    let mut s = VcpuState::default();
    s.sys.cr0 = CR0_PE | CR0_PG;
    s.sys.cr4 = CR4_PAE;
    s.sys.efer = EFER_LMA | (1 << 8);
    s.sys.cs = flat_segment(0xA9B); // L=1, P, S, code
    for seg in [
        &mut s.sys.ds,
        &mut s.sys.es,
        &mut s.sys.ss,
        &mut s.sys.fs,
        &mut s.sys.gs,
    ] {
        *seg = flat_segment(0xC93);
    }
    s.regs.rip = 0xFFFF_FFFF_8100_0000;
    s.regs.rflags = 0x2;
    s
}

/// 32-bit protected mode, paging off, flat segments.
fn protected_mode() -> VcpuState {
    let mut s = long_mode();
    s.sys.cr0 = CR0_PE;
    s.sys.cr4 = 0;
    s.sys.efer = 0;
    s.sys.cs = flat_segment(0xC9B); // D=1
    s.regs.rip = 0x0010_0000;
    s
}

/// Real mode with CS=DS=ES=SS=0.
fn real_mode() -> VcpuState {
    let mut s = VcpuState::default();
    let seg = Segment {
        selector: 0,
        base: 0,
        limit: 0xFFFF,
        attrs: 0x93,
    };
    s.sys.cs = seg;
    s.sys.ds = seg;
    s.sys.es = seg;
    s.sys.ss = seg;
    s.sys.fs = seg;
    s.sys.gs = seg;
    s.regs.rip = 0x7C00;
    s.regs.rflags = 0x2;
    s
}

struct World {
    dev: Dev,
    ram: Ram,
    pages: Pages,
}

impl World {
    fn apic() -> Self {
        World {
            dev: Dev::new(APIC),
            ram: Ram::new(None),
            pages: Pages::default(),
        }
    }

    fn at(base: u64) -> Self {
        World {
            dev: Dev::new(base),
            ram: Ram::new(Some(base)),
            pages: Pages::default(),
        }
    }

    fn run(&mut self, bytes: &[u8], s: &mut VcpuState, gpa: u64) -> Result<Emulated, EmuError> {
        emulate_mmio(
            bytes,
            s,
            GuestPhys(gpa),
            &mut self.dev,
            &mut self.ram,
            &self.pages,
        )
    }
}

fn done(op: Op, len: u8) -> Result<Emulated, EmuError> {
    Ok(Emulated {
        op,
        len,
        iterations: 1,
        complete: true,
    })
}

// ---- Modes ----

#[test]
fn code_size_from_mode() {
    assert_eq!(CodeSize::of(&long_mode()), CodeSize::Bits64);
    assert_eq!(CodeSize::of(&protected_mode()), CodeSize::Bits32);
    assert_eq!(CodeSize::of(&real_mode()), CodeSize::Bits16);
    // Compatibility mode: long mode, CS.L = 0, CS.D = 1.
    let mut s = long_mode();
    s.sys.cs.attrs = 0xC9B;
    assert_eq!(CodeSize::of(&s), CodeSize::Bits32);
    // 16-bit protected-mode code segment.
    s.sys.cs.attrs = 0x9B;
    assert_eq!(CodeSize::of(&s), CodeSize::Bits16);
    // Virtual-8086 mode.
    let mut s = protected_mode();
    s.regs.rflags |= 1 << 17;
    assert_eq!(CodeSize::of(&s), CodeSize::Bits16);
    // Real mode ignores a stale CS.D.
    let mut s = real_mode();
    s.sys.cs.attrs = 0xC9B;
    assert_eq!(CodeSize::of(&s), CodeSize::Bits16);
}

#[test]
fn rip_wraps_per_code_size() {
    assert_eq!(CodeSize::Bits16.advance(0xFFFF, 2), 1);
    assert_eq!(CodeSize::Bits32.advance(0xFFFF_FFFF, 2), 1);
    assert_eq!(CodeSize::Bits64.advance(0xFFFF_FFFF, 2), 0x1_0000_0001);
}

// ---- Linux readl/writel ----

#[test]
fn writel_mov_eax_to_rdx() {
    // mov %eax,(%rdx): APIC EOI write.
    let mut w0 = World::apic();
    let mut s = long_mode();
    s.regs.set(Rax, 0xAAAA_BBBB_0000_0000);
    s.regs.set(Rdx, APIC + 0xB0);
    let rip = s.regs.rip;
    assert_eq!(w0.run(&[0x89, 0x02], &mut s, APIC + 0xB0), done(Op::Mov, 2));
    assert_eq!(w0.dev.log, [w(APIC + 0xB0, 4, 0)]);
    assert_eq!(s.regs.rip, rip + 2);
    // The access was translated as a supervisor write.
    assert_eq!(
        w0.pages.asked.borrow().as_slice(),
        &[(APIC + 0xB0, Access::WRITE)]
    );
}

#[test]
fn readl_mov_rax_to_eax() {
    // mov (%rax),%eax: the pointer register is overwritten, zero-extended.
    let mut w0 = World::apic();
    w0.dev.set(APIC + 0x30, &0x0005_0014u32.to_le_bytes());
    let mut s = long_mode();
    s.regs.set(Rax, APIC + 0x30);
    assert_eq!(w0.run(&[0x8B, 0x00], &mut s, APIC + 0x30), done(Op::Mov, 2));
    assert_eq!(s.regs.get(Rax), 0x0005_0014);
    assert_eq!(w0.dev.log, [r(APIC + 0x30, 4, 0x0005_0014)]);
}

#[test]
fn xchg_on_apic_register() {
    // xchg %eax,(%rdx) (Linux's apic_write via xchg on some configurations).
    let mut w0 = World::apic();
    w0.dev.set(APIC + 0x80, &0x10u32.to_le_bytes());
    let mut s = long_mode();
    s.regs.set(Rax, 0xFFFF_FFFF_0000_00F0);
    s.regs.set(Rdx, APIC + 0x80);
    assert_eq!(
        w0.run(&[0x87, 0x02], &mut s, APIC + 0x80),
        done(Op::Xchg, 2)
    );
    assert_eq!(s.regs.get(Rax), 0x10);
    assert_eq!(w0.dev.get32(APIC + 0x80), 0xF0);
    assert_eq!(
        w0.dev.log,
        [r(APIC + 0x80, 4, 0x10), w(APIC + 0x80, 4, 0xF0)]
    );
    // The reg,mem encoding order (87 /r decodes either way) and a 64-bit operand.
    let mut s = long_mode();
    s.regs.set(Rcx, 0x1122_3344_5566_7788);
    s.regs.set(Rdx, APIC + 0x80);
    assert_eq!(
        w0.run(&[0x48, 0x87, 0x0A], &mut s, APIC + 0x80),
        done(Op::Xchg, 3)
    );
    assert_eq!(s.regs.get(Rcx), 0xF0);
    assert_eq!(w0.dev.get32(APIC + 0x84), 0x1122_3344);
}

// ---- MOV forms and operand sizes ----

#[test]
fn mov_store_widths_and_registers() {
    let gpa = APIC + 0x100;
    #[rustfmt::skip]
    let table: &[(&[u8], usize, u64)] = &[
        (&[0x88, 0x02], 1, 0x88),              // mov %al,(%rdx)
        (&[0x88, 0x22], 1, 0x77),              // mov %ah,(%rdx): AH without REX
        (&[0x40, 0x88, 0x22], 1, 0x44),        // mov %spl,(%rdx): REX makes 4 SPL
        (&[0x66, 0x89, 0x02], 2, 0x7788),      // mov %ax,(%rdx)
        (&[0x89, 0x02], 4, 0x5566_7788),       // mov %eax,(%rdx)
        (&[0x48, 0x89, 0x02], 8, 0x1122_3344_5566_7788), // mov %rax,(%rdx)
        (&[0x44, 0x89, 0x02], 4, 0x8888_8888), // mov %r8d,(%rdx): REX.R
        (&[0x41, 0x89, 0x01], 4, 0x5566_7788), // mov %eax,(%r9): REX.B
        (&[0x43, 0x89, 0x04, 0x0A], 4, 0x5566_7788), // mov %eax,(%r10,%r9,1): REX.X
        (&[0xC6, 0x02, 0xAB], 1, 0xAB),        // movb $0xab,(%rdx)
        (&[0x66, 0xC7, 0x02, 0x34, 0x12], 2, 0x1234), // movw $0x1234,(%rdx)
        (&[0xC7, 0x02, 0x78, 0x56, 0x34, 0x12], 4, 0x1234_5678), // movl
        (&[0x48, 0xC7, 0x02, 0x00, 0x00, 0x00, 0x80], 8, 0xFFFF_FFFF_8000_0000), // movq sign-extends
    ];
    for &(bytes, width, expect) in table {
        let mut w0 = World::apic();
        let mut s = long_mode();
        s.regs.set(Rax, 0x1122_3344_5566_7788);
        s.regs.set(Rsp, 0x44);
        s.regs.set(Rdx, gpa);
        s.regs.set(R8, 0x8888_8888);
        s.regs.set(R9, gpa);
        s.regs.set(R10, 0);
        let before = s.regs;
        let res = w0.run(bytes, &mut s, gpa);
        assert_eq!(res, done(Op::Mov, bytes.len() as u8), "{bytes:02x?}");
        assert_eq!(w0.dev.log, [w(gpa, width, expect)], "{bytes:02x?}");
        assert_eq!(s.regs.gprs, before.gprs, "a store changes no register");
        assert_eq!(s.regs.rip, before.rip + bytes.len() as u64);
    }
}

#[test]
fn mov_load_merges_and_zero_extends() {
    let gpa = APIC + 0x20;
    let old = 0x1122_3344_5566_7788u64;
    #[rustfmt::skip]
    let table: &[(&[u8], Gpr, u64)] = &[
        (&[0x8A, 0x02], Rax, 0x1122_3344_5566_77F1),       // mov (%rdx),%al
        (&[0x8A, 0x22], Rax, 0x1122_3344_5566_F188),       // mov (%rdx),%ah
        (&[0x8A, 0x2A], Rcx, 0x1122_3344_5566_F188),       // mov (%rdx),%ch
        (&[0x40, 0x8A, 0x2A], Rbp, 0x1122_3344_5566_77F1), // REX: bpl
        (&[0x66, 0x8B, 0x02], Rax, 0x1122_3344_5566_F2F1), // mov (%rdx),%ax
        (&[0x8B, 0x02], Rax, 0xF4F3_F2F1),                 // mov (%rdx),%eax
        (&[0x48, 0x8B, 0x02], Rax, 0xF8F7_F6F5_F4F3_F2F1), // mov (%rdx),%rax
        (&[0x4C, 0x8B, 0x3A], R15, 0xF8F7_F6F5_F4F3_F2F1), // mov (%rdx),%r15
        (&[0x44, 0x8A, 0x32], R14, 0x1122_3344_5566_77F1), // mov (%rdx),%r14b
    ];
    for &(bytes, reg, expect) in table {
        let mut w0 = World::apic();
        w0.dev
            .set(gpa, &[0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8]);
        let mut s = long_mode();
        for g in Gpr::ALL {
            s.regs.set(g, old);
        }
        s.regs.set(Rdx, gpa);
        assert_eq!(w0.run(bytes, &mut s, gpa), done(Op::Mov, bytes.len() as u8));
        assert_eq!(s.regs.get(reg), expect, "{bytes:02x?}");
        for g in Gpr::ALL {
            if g != reg && g != Rdx {
                assert_eq!(s.regs.get(g), old, "{bytes:02x?} touched {g:?}");
            }
        }
    }
}

#[test]
fn mov_moffs() {
    // 64-bit: A1 with an 8-byte absolute address; A3 store; 48 A3 64-bit store.
    let mut w0 = World::apic();
    w0.dev.set(APIC + 0x10, &0xCAFEu32.to_le_bytes());
    let mut s = long_mode();
    let mut insn = vec![0xA1];
    insn.extend_from_slice(&(APIC + 0x10).to_le_bytes());
    assert_eq!(w0.run(&insn, &mut s, APIC + 0x10), done(Op::Mov, 9));
    assert_eq!(s.regs.get(Rax), 0xCAFE);
    s.regs.set(Rax, 0x0123_4567_89AB_CDEF);
    let mut insn = vec![0x48, 0xA3];
    insn.extend_from_slice(&(APIC + 0x18).to_le_bytes());
    assert_eq!(w0.run(&insn, &mut s, APIC + 0x18), done(Op::Mov, 10));
    let mut insn = vec![0xA2];
    insn.extend_from_slice(&(APIC + 0x28).to_le_bytes());
    assert_eq!(w0.run(&insn, &mut s, APIC + 0x28), done(Op::Mov, 9));
    assert_eq!(
        w0.dev.log[1..],
        [
            w(APIC + 0x18, 8, 0x0123_4567_89AB_CDEF),
            w(APIC + 0x28, 1, 0xEF)
        ]
    );
    // 32-bit: a 4-byte moffs, relative to DS's base.
    let mut w0 = World::apic();
    let mut s = protected_mode();
    s.sys.ds.base = 0x10;
    s.regs.set(Rax, 0x55);
    let mut insn = vec![0xA3];
    insn.extend_from_slice(&((APIC + 0x20) as u32).to_le_bytes());
    assert_eq!(w0.run(&insn, &mut s, APIC + 0x30), done(Op::Mov, 5));
    assert_eq!(w0.dev.log, [w(APIC + 0x30, 4, 0x55)]);
}

#[test]
fn movzx_movsx_movsxd() {
    let gpa = APIC + 0x40;
    #[rustfmt::skip]
    let table: &[(&[u8], Op, u64)] = &[
        (&[0x0F, 0xB6, 0x02], Op::Movzx, 0x85),                  // movzbl (%rdx),%eax
        (&[0x0F, 0xB7, 0x02], Op::Movzx, 0x8385),                // movzwl
        (&[0x48, 0x0F, 0xB6, 0x02], Op::Movzx, 0x85),            // movzbq
        (&[0x66, 0x0F, 0xB6, 0x02], Op::Movzx, 0xFFFF_FFFF_FFFF_0085), // movzbw: merges 16
        (&[0x0F, 0xBE, 0x02], Op::Movsx, 0xFFFF_FF85),           // movsbl
        (&[0x0F, 0xBF, 0x02], Op::Movsx, 0xFFFF_8385),           // movswl
        (&[0x48, 0x0F, 0xBE, 0x02], Op::Movsx, 0xFFFF_FFFF_FFFF_FF85), // movsbq
        (&[0x48, 0x0F, 0xBF, 0x02], Op::Movsx, 0xFFFF_FFFF_FFFF_8385), // movswq
        (&[0x48, 0x63, 0x02], Op::Movsx, 0xFFFF_FFFF_8183_8385), // movslq (MOVSXD)
    ];
    for &(bytes, op, expect) in table {
        let mut w0 = World::apic();
        w0.dev.set(gpa, &[0x85, 0x83, 0x83, 0x81]);
        let mut s = long_mode();
        s.regs.set(Rax, u64::MAX);
        s.regs.set(Rdx, gpa);
        assert_eq!(w0.run(bytes, &mut s, gpa), done(op, bytes.len() as u8));
        assert_eq!(s.regs.get(Rax), expect, "{bytes:02x?}");
    }
    // A positive value sign-extends with zeros.
    let mut w0 = World::apic();
    w0.dev.set(gpa, &[0x7F]);
    let mut s = long_mode();
    s.regs.set(Rdx, gpa);
    s.regs.set(Rax, u64::MAX);
    w0.run(&[0x48, 0x0F, 0xBE, 0x02], &mut s, gpa).unwrap();
    assert_eq!(s.regs.get(Rax), 0x7F);
}

// ---- ALU ----

/// Bytes, operation, device value before, device value after (None: not written), flags.
type MemAluCase = (&'static [u8], AluOp, u32, Option<u32>, u64);

#[test]
fn alu_with_memory_destination() {
    let gpa = APIC + 0x300;
    #[rustfmt::skip]
    let table: &[MemAluCase] = &[
        (&[0x21, 0x02], AluOp::And, 0xF0F0_0000, Some(0xF000_0000), PF | SF), // and %eax,(%rdx)
        (&[0x09, 0x02], AluOp::Or, 0x0000_0001, Some(0xFF00_0001), SF),       // or %eax,(%rdx)
        (&[0x31, 0x02], AluOp::Xor, 0xFF00_0000, Some(0), PF | ZF),          // xor %eax,(%rdx)
        (&[0x01, 0x02], AluOp::Add, 0x0100_0000, Some(0), CF | PF | ZF),     // add %eax,(%rdx)
        (&[0x29, 0x02], AluOp::Sub, 0xFF00_0000, Some(0), PF | ZF),          // sub %eax,(%rdx)
        (&[0x83, 0x0A, 0x01], AluOp::Or, 0x10, Some(0x11), PF),              // orl $1,(%rdx)
        (&[0x83, 0x22, 0xFE], AluOp::And, 0x13, Some(0x12), PF),             // andl $-2,(%rdx)
        (&[0x83, 0x2A, 0x01], AluOp::Sub, 0, Some(0xFFFF_FFFF), CF | PF | AF | SF), // subl $1
        (&[0x81, 0x02, 0x00, 0x00, 0x00, 0x80], AluOp::Add, 0x8000_0000, Some(0), CF | PF | ZF | OF),
        (&[0xF0, 0x83, 0x0A, 0x04], AluOp::Or, 0x1, Some(0x5), PF),         // lock orl $4
        (&[0x80, 0x32, 0x0F], AluOp::Xor, 0xAA, Some(0xA5), PF | SF),        // xorb $0xf,(%rdx)
        (&[0x83, 0x3A, 0x05], AluOp::Cmp, 0x5, None, PF | ZF),               // cmpl $5,(%rdx)
        (&[0x39, 0x02], AluOp::Cmp, 0x0, None, CF | PF),                // cmp %eax,(%rdx)
        (&[0x85, 0x02], AluOp::Test, 0x0100_0000, Some(0x0100_0000), PF),    // test: no write
        (&[0xF6, 0x02, 0x80], AluOp::Test, 0x80, None, SF),                  // testb $0x80
        (&[0xF7, 0x02, 0x00, 0x00, 0x00, 0x01], AluOp::Test, 0x0, None, PF | ZF), // testl
    ];
    for &(bytes, op, before, after, flags) in table {
        let mut w0 = World::apic();
        w0.dev.set(gpa, &before.to_le_bytes());
        let mut s = long_mode();
        s.regs.set(Rax, 0xFF00_0000);
        s.regs.set(Rdx, gpa);
        // Stale flags to be replaced, and DF/IF to be kept.
        s.regs.rflags = 0x2 | CF | OF | AF | RFLAGS_DF | crate::vcpu::RFLAGS_IF;
        assert_eq!(
            w0.run(bytes, &mut s, gpa),
            done(Op::Alu(op), bytes.len() as u8),
            "{bytes:02x?}"
        );
        assert_eq!(
            s.regs.rflags,
            0x2 | RFLAGS_DF | crate::vcpu::RFLAGS_IF | flags,
            "{bytes:02x?}"
        );
        let width = if matches!(bytes[0], 0x80 | 0xF6) {
            1
        } else {
            4
        };
        let read_value = before as u64 & mask(width as u8);
        match after {
            Some(v) if op.writes() => {
                assert_eq!(
                    w0.dev.log,
                    [
                        r(gpa, width, read_value),
                        w(gpa, width, v as u64 & mask(width as u8))
                    ],
                    "{bytes:02x?}"
                );
            }
            _ => assert_eq!(w0.dev.log, [r(gpa, width, read_value)], "{bytes:02x?}"),
        }
        assert_eq!(s.regs.get(Rax), 0xFF00_0000, "{bytes:02x?}");
    }
}

#[test]
fn alu_with_register_destination() {
    let gpa = APIC + 0x310;
    #[rustfmt::skip]
    let table: &[(&[u8], AluOp, u64, u64)] = &[
        // bytes, op, RAX after, flags; device holds 0x8000_0001, RAX = 0x1_8000_0001
        (&[0x03, 0x02], AluOp::Add, 0x0000_0002, CF | OF),        // add (%rdx),%eax
        (&[0x2B, 0x02], AluOp::Sub, 0x0, PF | ZF),                // sub (%rdx),%eax
        (&[0x23, 0x02], AluOp::And, 0x8000_0001, SF),             // and (%rdx),%eax
        (&[0x0B, 0x02], AluOp::Or, 0x8000_0001, SF),              // or (%rdx),%eax
        (&[0x33, 0x02], AluOp::Xor, 0, PF | ZF),                  // xor (%rdx),%eax
        (&[0x3B, 0x02], AluOp::Cmp, 0x1_8000_0001, PF | ZF),      // cmp: RAX untouched
        (&[0x48, 0x03, 0x02], AluOp::Add, 0x2_0000_0002, 0),      // add (%rdx),%rax
        (&[0x02, 0x02], AluOp::Add, 0x1_8000_0002, 0),            // add (%rdx),%al
    ];
    for &(bytes, op, rax, flags) in table {
        let mut w0 = World::apic();
        w0.dev.set(gpa, &0x8000_0001u64.to_le_bytes());
        let mut s = long_mode();
        s.regs.set(Rax, 0x1_8000_0001);
        s.regs.set(Rdx, gpa);
        assert_eq!(
            w0.run(bytes, &mut s, gpa),
            done(Op::Alu(op), bytes.len() as u8)
        );
        assert_eq!(s.regs.get(Rax), rax, "{bytes:02x?}");
        assert_eq!(s.regs.rflags & STATUS_FLAGS, flags, "{bytes:02x?}");
        assert!(w0.dev.log.iter().all(|io| !io.write), "{bytes:02x?}");
    }
}

#[test]
fn bt_imm_and_register_offset() {
    let gpa = APIC + 0x200;
    let mut w0 = World::apic();
    // Bit 37 of the 256-bit ISR-like array: dword 1, bit 5.
    w0.dev.set(gpa + 4, &(1u32 << 5).to_le_bytes());
    let mut s = long_mode();
    s.regs.set(Rdx, gpa);
    s.regs.rflags = 0x2 | ZF;
    // bt $5,(%rdx): dword 0 bit 5 is clear.
    assert_eq!(
        w0.run(&[0x0F, 0xBA, 0x22, 0x05], &mut s, gpa),
        done(Op::Bt, 4)
    );
    assert_eq!(s.regs.rflags, 0x2 | ZF, "CF clear, ZF untouched");
    // bt %eax,(%rdx) with eax = 37: the bit string reaches the next dword.
    s.regs.set(Rax, 37);
    assert_eq!(w0.run(&[0x0F, 0xA3, 0x02], &mut s, gpa), done(Op::Bt, 3));
    assert_eq!(s.regs.rflags, 0x2 | ZF | CF);
    assert_eq!(w0.dev.log.last(), Some(&r(gpa + 4, 4, 1 << 5)));
    // A negative offset goes below the base: eax = -27 is dword -1, bit 5.
    let mut s2 = long_mode();
    s2.regs.set(Rdx, gpa + 8);
    s2.regs.set(Rax, (-27i32) as u32 as u64);
    assert_eq!(w0.run(&[0x0F, 0xA3, 0x02], &mut s2, gpa), done(Op::Bt, 3));
    assert_eq!(s2.regs.rflags & CF, CF);
    assert_eq!(w0.dev.log.last(), Some(&r(gpa + 4, 4, 1 << 5)));
}

// ---- Addressing, segments and prefixes ----

#[test]
fn addressing_forms_64() {
    let gpa = APIC + 0x3F0;
    // (bytes, setup) pairs whose operand all land on `gpa`.
    let mut w0 = World::apic();
    let mut s = long_mode();
    s.regs.set(Rbx, APIC);
    s.regs.set(Rsi, 0xF8);
    // mov %eax,0x10(%rbx,%rsi,4): 89 44 B3 10
    w0.run(&[0x89, 0x44, 0xB3, 0x10], &mut s, gpa).unwrap();
    // mov %eax,0x3f0(%rbx): 89 83 F0 03 00 00
    w0.run(&[0x89, 0x83, 0xF0, 0x03, 0x00, 0x00], &mut s, gpa)
        .unwrap();
    // mov %eax,-0x10(%rbx) with rbx = gpa + 0x10: 89 43 F0
    s.regs.set(Rbx, gpa + 0x10);
    w0.run(&[0x89, 0x43, 0xF0], &mut s, gpa).unwrap();
    // mov %eax,0x0(%rip): target is the next RIP + disp.
    s.regs.rip = gpa - 6 - 0x100;
    w0.run(&[0x89, 0x05, 0x00, 0x01, 0x00, 0x00], &mut s, gpa)
        .unwrap();
    assert_eq!(s.regs.rip, gpa - 0x100);
    // mov %eax,(%esi) with 67: only the low 32 bits of RSI count.
    s.regs.set(Rsi, 0xFFFF_FFFF_0000_0000 | gpa);
    w0.run(&[0x67, 0x89, 0x06], &mut s, gpa).unwrap();
    assert_eq!(w0.dev.log.len(), 5);
    assert!(w0.dev.log.iter().all(|io| io.gpa == gpa && io.write));
}

#[test]
fn segment_overrides_64() {
    let gpa = APIC + 0x20;
    let mut w0 = World::apic();
    let mut s = long_mode();
    s.sys.gs.base = APIC;
    s.sys.fs.base = APIC + 0x10;
    // DS/ES/SS bases are ignored in 64-bit mode (even when a stale value is cached).
    s.sys.ds.base = 0x1000;
    s.sys.es.base = 0x2000;
    s.regs.set(Rdx, 0x20);
    assert_eq!(w0.run(&[0x65, 0x89, 0x02], &mut s, gpa), done(Op::Mov, 3)); // gs:
    s.regs.set(Rdx, 0x10);
    assert_eq!(w0.run(&[0x64, 0x89, 0x02], &mut s, gpa), done(Op::Mov, 3)); // fs:
    s.regs.set(Rdx, gpa);
    assert_eq!(w0.run(&[0x26, 0x89, 0x02], &mut s, gpa), done(Op::Mov, 3)); // es:
    assert_eq!(w0.run(&[0x89, 0x02], &mut s, gpa), done(Op::Mov, 2));
    assert_eq!(w0.dev.log.len(), 4);
    assert!(w0.dev.log.iter().all(|io| io.gpa == gpa));
}

#[test]
fn protected_mode_32() {
    let gpa = APIC + 0x10;
    let mut w0 = World::apic();
    let mut s = protected_mode();
    s.regs.set(Rax, 0xDEAD_BEEF);
    s.regs.set(Rbx, 0x0EE0_0000);
    s.sys.ds.base = 0xF000_0000;
    // mov %eax,0x10(%ebx) relative to DS.
    assert_eq!(w0.run(&[0x89, 0x43, 0x10], &mut s, gpa), done(Op::Mov, 3));
    // The linear address wraps at 4 GiB: base 0xFFFF_F000 + 0xFEE0_1010.
    s.sys.ds.base = 0xFFFF_F000;
    s.regs.set(Rbx, 0xFEE0_1000);
    assert_eq!(w0.run(&[0x89, 0x43, 0x10], &mut s, gpa), done(Op::Mov, 3));
    // ESP/EBP-based operands use SS; an override picks another segment.
    s.sys.ss.base = 0x10;
    s.sys.ds.base = 0;
    s.regs.set(Rbp, APIC);
    assert_eq!(w0.run(&[0x89, 0x45, 0x00], &mut s, gpa), done(Op::Mov, 3)); // (%ebp)
    s.sys.fs.base = 0x8;
    s.regs.set(Rbp, APIC + 8);
    assert_eq!(
        w0.run(&[0x64, 0x89, 0x45, 0x00], &mut s, gpa),
        done(Op::Mov, 4)
    );
    // 66: 16-bit operand.
    s.regs.set(Rbx, gpa);
    assert_eq!(w0.run(&[0x66, 0x89, 0x03], &mut s, gpa), done(Op::Mov, 3));
    assert_eq!(
        w0.dev.log,
        [
            w(gpa, 4, 0xDEAD_BEEF),
            w(gpa, 4, 0xDEAD_BEEF),
            w(gpa, 4, 0xDEAD_BEEF),
            w(gpa, 4, 0xDEAD_BEEF),
            w(gpa, 2, 0xBEEF)
        ]
    );
    // 48 is DEC EAX here, not REX.W: not an MMIO instruction.
    assert_eq!(
        w0.run(&[0x48, 0x89, 0x03], &mut s, gpa),
        Err(unsupported(&[0x48]))
    );
    // EIP wraps at 4 GiB.
    s.regs.rip = 0xFFFF_FFFE;
    assert_eq!(w0.run(&[0x89, 0x03], &mut s, gpa), done(Op::Mov, 2));
    assert_eq!(s.regs.rip, 0);
}

#[test]
fn real_mode_16() {
    let vga = 0xB8000;
    let mut w0 = World::at(vga);
    let mut s = real_mode();
    s.sys.ds = Segment {
        selector: 0xB800,
        base: 0xB8000,
        limit: 0xFFFF,
        attrs: 0x93,
    };
    s.regs.set(Rax, 0x1234_0741);
    s.regs.set(Rbx, 0x10);
    // mov %ax,(%bx): 16-bit operand and addressing by default.
    assert_eq!(w0.run(&[0x89, 0x07], &mut s, vga + 0x10), done(Op::Mov, 2));
    // [bp+si] uses SS.
    s.sys.ss.base = 0xB8000 - 0x100;
    s.regs.set(Rbp, 0x100);
    s.regs.set(Rsi, 0x20);
    assert_eq!(w0.run(&[0x89, 0x02], &mut s, vga + 0x20), done(Op::Mov, 2));
    // 16-bit address arithmetic wraps: bx + si + disp16 = 0x10 + 0xFFF0 + 0x20 = 0x20.
    s.regs.set(Rsi, 0xFFF0);
    assert_eq!(
        w0.run(&[0x89, 0x80, 0x20, 0x00], &mut s, vga + 0x20),
        done(Op::Mov, 4)
    );
    // 66: 32-bit operand; 67: 32-bit addressing ([ebx]).
    s.regs.set(Rbx, 0x0001_0000);
    s.sys.ds.base = vga - 0x1_0000;
    assert_eq!(
        w0.run(&[0x66, 0x67, 0x89, 0x03], &mut s, vga),
        done(Op::Mov, 4)
    );
    assert_eq!(
        w0.dev.log,
        [
            w(vga + 0x10, 2, 0x0741),
            w(vga + 0x20, 2, 0x0741),
            w(vga + 0x20, 2, 0x0741),
            w(vga, 4, 0x1234_0741)
        ]
    );
    // IP wraps at 64 KiB.
    s.regs.rip = 0xFFFF;
    s.regs.set(Rbx, 0x10);
    s.sys.ds.base = vga;
    assert_eq!(w0.run(&[0x89, 0x07], &mut s, vga + 0x10), done(Op::Mov, 2));
    assert_eq!(s.regs.rip, 1);
}

// ---- String instructions ----

#[test]
fn rep_stos_to_device() {
    let gpa = APIC + 0x100;
    let mut w0 = World::apic();
    let mut s = long_mode();
    s.regs.set(Rax, 0x11);
    s.regs.set(Rcx, 4);
    s.regs.set(Rdi, gpa);
    let rip = s.regs.rip;
    let res = w0.run(&[0xF3, 0xAB], &mut s, gpa).unwrap();
    assert_eq!(
        res,
        Emulated {
            op: Op::Stos,
            len: 2,
            iterations: 4,
            complete: true
        }
    );
    assert_eq!(
        w0.dev.log,
        (0..4).map(|i| w(gpa + 4 * i, 4, 0x11)).collect::<Vec<_>>()
    );
    assert_eq!(s.regs.get(Rdi), gpa + 16);
    assert_eq!(s.regs.get(Rcx), 0);
    assert_eq!(s.regs.rip, rip + 2);
    // DF=1 walks down; stosb without REP is one iteration and leaves RCX alone.
    let mut w0 = World::apic();
    s.regs.rflags |= RFLAGS_DF;
    s.regs.set(Rcx, 7);
    s.regs.set(Rdi, gpa);
    assert_eq!(w0.run(&[0xAA], &mut s, gpa), done(Op::Stos, 1));
    assert_eq!(s.regs.get(Rdi), gpa - 1);
    assert_eq!(s.regs.get(Rcx), 7);
    assert_eq!(w0.dev.log, [w(gpa, 1, 0x11)]);
    // rep stosq, DF=1.
    let mut w0 = World::apic();
    s.regs.set(Rcx, 2);
    s.regs.set(Rdi, gpa);
    let res = w0.run(&[0xF3, 0x48, 0xAB], &mut s, gpa).unwrap();
    assert_eq!((res.iterations, res.complete), (2, true));
    assert_eq!(w0.dev.log, [w(gpa, 8, 0x11), w(gpa - 8, 8, 0x11)]);
    assert_eq!(s.regs.get(Rdi), gpa - 16);
}

#[test]
fn rep_with_zero_count_only_advances_rip() {
    let mut w0 = World::apic();
    let mut s = long_mode();
    s.regs.set(Rdi, APIC);
    s.regs.set(Rcx, 0xFFFF_FFFF_0000_0000); // ECX = 0 with a 32-bit address size
    let rip = s.regs.rip;
    let res = w0.run(&[0x67, 0xF3, 0xAB], &mut s, APIC).unwrap();
    assert_eq!((res.iterations, res.complete), (0, true));
    assert!(w0.dev.log.is_empty());
    assert_eq!(s.regs.rip, rip + 3);
}

#[test]
fn rep_is_bounded_per_call() {
    let gpa = APIC;
    let mut w0 = World::apic();
    let mut s = long_mode();
    s.regs.set(Rcx, 1000);
    s.regs.set(Rdi, gpa);
    let rip = s.regs.rip;
    let res = w0.run(&[0xF3, 0xAA], &mut s, gpa).unwrap();
    assert_eq!((res.iterations, res.complete), (MAX_REP_ITERATIONS, false));
    assert_eq!(s.regs.rip, rip, "RIP stays on the instruction");
    assert_eq!(s.regs.get(Rcx), 1000 - MAX_REP_ITERATIONS as u64);
    assert_eq!(s.regs.get(Rdi), gpa + MAX_REP_ITERATIONS as u64);
    assert_eq!(w0.dev.log.len(), MAX_REP_ITERATIONS as usize);
}

#[test]
fn rep_stops_where_it_leaves_the_device_page() {
    // rep stosl from 8 bytes below the page end: two iterations in it, then RAM-side.
    let mut w0 = World::at(0x8_0000);
    let mut s = protected_mode();
    s.regs.set(Rcx, 5);
    s.regs.set(Rdi, 0x8_0FF8);
    let res = w0.run(&[0xF3, 0xAB], &mut s, 0x8_0FF8).unwrap();
    assert_eq!((res.iterations, res.complete), (2, false));
    assert_eq!(s.regs.get(Rcx), 3);
    assert_eq!(s.regs.get(Rdi), 0x8_1000);
    assert_eq!(w0.dev.log.len(), 2);
}

#[test]
fn address_size_wraps_string_registers() {
    // 16-bit: rep stosw with DI = 0xFFFE, CX = 2 at ES = 0xB800: the second iteration wraps
    // DI to 0, which is another page, so the batch ends there.
    let vga = 0xB8000;
    let mut w0 = World::at(vga + 0xF000);
    let mut s = real_mode();
    s.sys.es.base = vga;
    s.regs.set(Rdi, 0xABCD_0000_0000_FFFE);
    s.regs.set(Rcx, 0x5555_0000_0000_0002);
    s.regs.set(Rax, 0x0720);
    let res = w0.run(&[0xF3, 0xAB], &mut s, vga + 0xFFFE).unwrap();
    assert_eq!((res.iterations, res.complete), (1, false));
    assert_eq!(
        s.regs.get(Rdi),
        0xABCD_0000_0000_0000,
        "DI wraps, upper bits kept"
    );
    assert_eq!(s.regs.get(Rcx), 0x5555_0000_0000_0001);
    assert_eq!(w0.dev.log, [w(vga + 0xFFFE, 2, 0x0720)]);
    // 64-bit code with 67: EDI/ECX, written back zero-extended.
    let mut w0 = World::apic();
    let mut s = long_mode();
    s.regs.set(Rdi, 0x1_0000_0000 | APIC);
    s.regs.set(Rcx, 0x1_0000_0001);
    let res = w0.run(&[0x67, 0xF3, 0xAB], &mut s, APIC).unwrap();
    assert_eq!((res.iterations, res.complete), (1, true));
    assert_eq!(s.regs.get(Rdi), APIC + 4);
    assert_eq!(s.regs.get(Rcx), 0);
    assert_eq!(w0.dev.log, [w(APIC, 4, 0)]);
}

#[test]
fn movs_ram_to_device_and_back() {
    // memcpy_toio: rep movsl from RAM at 0x1000 to the device.
    let gpa = APIC + 0x400;
    let mut w0 = World::apic();
    w0.ram.bytes[0x1000..0x1008].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let mut s = long_mode();
    s.regs.set(Rsi, 0x1000);
    s.regs.set(Rdi, gpa);
    s.regs.set(Rcx, 2);
    let res = w0.run(&[0xF3, 0xA5], &mut s, gpa).unwrap();
    assert_eq!((res.op, res.iterations, res.complete), (Op::Movs, 2, true));
    assert_eq!(
        w0.dev.log,
        [w(gpa, 4, 0x0403_0201), w(gpa + 4, 4, 0x0807_0605)]
    );
    assert_eq!((s.regs.get(Rsi), s.regs.get(Rdi)), (0x1008, gpa + 8));
    // The source was translated as a read, the destination as a write.
    let asked = w0.pages.asked.borrow();
    assert_eq!(asked[0], (gpa, Access::WRITE));
    assert_eq!(asked[1], (0x1000, Access::READ));
    drop(asked);
    // memcpy_fromio: movsb from the device (FS override on the source) into RAM.
    let mut w0 = World::apic();
    w0.dev.set(gpa, &[0x5A]);
    let mut s = long_mode();
    s.sys.fs.base = APIC;
    s.regs.set(Rsi, 0x400);
    s.regs.set(Rdi, 0x2000);
    assert_eq!(w0.run(&[0x64, 0xA4], &mut s, gpa), done(Op::Movs, 2));
    assert_eq!(w0.ram.bytes[0x2000], 0x5A);
    assert_eq!(w0.dev.log, [r(gpa, 1, 0x5A)]);
}

#[test]
fn movs_through_guest_paging() {
    // The RAM side is at a virtual page mapped elsewhere; the device page too.
    let gpa = APIC + 0x10;
    let mut w0 = World::apic();
    w0.pages.map = vec![(0x7000_0000, 0x3000), (0xFFFF_C000_0000_0000, APIC)];
    w0.ram.bytes[0x3020] = 0x99;
    let mut s = long_mode();
    s.regs.set(Rsi, 0x7000_0020);
    s.regs.set(Rdi, 0xFFFF_C000_0000_0010);
    assert_eq!(w0.run(&[0xA4], &mut s, gpa), done(Op::Movs, 1));
    assert_eq!(w0.dev.log, [w(gpa, 1, 0x99)]);
}

#[test]
fn access_split_at_page_boundary() {
    // A 4-byte store at 2 bytes below the end of a RAM page into the device page.
    let dev = 0x8_1000;
    let mut w0 = World::at(dev);
    let mut s = protected_mode();
    s.regs.set(Rax, 0xAABB_CCDD);
    s.regs.set(Rdx, dev - 2);
    assert_eq!(w0.run(&[0x89, 0x02], &mut s, dev), done(Op::Mov, 2));
    assert_eq!(w0.ram.bytes[dev as usize - 2..dev as usize], [0xDD, 0xCC]);
    assert_eq!(w0.dev.log, [w(dev, 2, 0xAABB)]);
}

// ---- Errors ----

#[test]
fn unsupported_instructions_report_their_bytes() {
    let mut s = long_mode();
    s.regs.set(Rdx, APIC);
    #[rustfmt::skip]
    let table: &[&[u8]] = &[
        &[0xFF, 0x02],             // incl (%rdx)
        &[0xFF, 0x32],             // push (%rdx)
        &[0x0F, 0x28, 0x02],       // movaps (%rdx),%xmm0
        &[0x8C, 0x1A],             // mov %ds,(%rdx)
        &[0x8E, 0x1A],             // mov (%rdx),%ds
        &[0x13, 0x02],             // adc (%rdx),%eax
        &[0x0F, 0xA2],             // cpuid: no memory operand
        &[0x69, 0x02, 1, 0, 0, 0], // imul $1,(%rdx),%eax
        &[0xA6],                   // cmpsb
    ];
    for &bytes in table {
        let mut w0 = World::apic();
        let before = s;
        let mut padded = bytes.to_vec();
        padded.extend_from_slice(&[0x90; 4]);
        assert_eq!(
            w0.run(&padded, &mut s, APIC),
            Err(unsupported(bytes)),
            "{bytes:02x?}"
        );
        assert_eq!(s, before, "no state change");
        assert!(w0.dev.log.is_empty());
    }
    // Garbage: all the supplied bytes are reported.
    let mut w0 = World::apic();
    let junk = [0x0F, 0x0B]; // UD2 is valid but unsupported; then an invalid one:
    assert_eq!(w0.run(&junk, &mut s, APIC), Err(unsupported(&junk)));
    let lock_mov = [0xF0, 0x89, 0x02];
    assert_eq!(w0.run(&lock_mov, &mut s, APIC), Err(unsupported(&lock_mov)));
    let too_much = [0x66u8; 20];
    assert_eq!(
        w0.run(&too_much, &mut s, APIC),
        Err(unsupported(&[0x66; 15]))
    );
}

#[test]
fn truncated_bytes() {
    let mut w0 = World::apic();
    let mut s = long_mode();
    assert_eq!(
        w0.run(&[0xC7, 0x02, 0x01], &mut s, APIC),
        Err(EmuError::Truncated { len: 3 })
    );
    assert_eq!(
        w0.run(&[], &mut s, APIC),
        Err(EmuError::Truncated { len: 0 })
    );
}

#[test]
fn operand_elsewhere_is_a_mismatch() {
    let mut w0 = World::apic();
    let mut s = long_mode();
    s.regs.set(Rdx, 0x5000);
    let before = s;
    assert_eq!(
        w0.run(&[0x89, 0x02], &mut s, APIC),
        Err(EmuError::AddressMismatch {
            expected: GuestPhys(APIC),
            found: GuestPhys(0x5000)
        })
    );
    assert_eq!(s, before);
    assert!(w0.dev.log.is_empty());
    // The same for a string instruction's first iteration.
    s.regs.set(Rdi, 0x5000);
    s.regs.set(Rsi, 0x6000);
    assert!(matches!(
        w0.run(&[0xA5], &mut s, APIC),
        Err(EmuError::AddressMismatch { .. })
    ));
}

#[test]
fn page_faults_surface_with_the_access_kind() {
    let mut w0 = World::apic();
    w0.pages.absent = Some(0x4000);
    let mut s = long_mode();
    s.sys.cpl = 3;
    // movsl from an absent user page to the device: #PF for a user read at the source.
    s.regs.set(Rsi, 0x4010);
    s.regs.set(Rdi, APIC);
    let before = s;
    assert_eq!(
        w0.run(&[0xA5], &mut s, APIC),
        Err(EmuError::PageFault(PageFault {
            address: GuestVirt(0x4010),
            error_code: 1 << 2
        }))
    );
    assert_eq!(s, before);
    // Mid-REP: iterations before the fault stay done (REP is restartable).
    let mut w0 = World::apic();
    w0.pages.absent = Some(APIC + 0x1000);
    let mut s = long_mode();
    s.regs.set(Rdi, APIC + 0xFF8);
    s.regs.set(Rcx, 4);
    let rip = s.regs.rip;
    assert_eq!(
        w0.run(&[0xF3, 0xAB], &mut s, APIC + 0xFF8),
        Err(EmuError::PageFault(PageFault {
            address: GuestVirt(APIC + 0x1000),
            error_code: 1 << 1
        }))
    );
    assert_eq!(s.regs.get(Rcx), 2);
    assert_eq!(s.regs.get(Rdi), APIC + 0x1000);
    assert_eq!(s.regs.rip, rip);
    assert_eq!(w0.dev.log.len(), 2);
}

#[test]
fn paging_off_means_linear_is_physical() {
    let mut w0 = World::apic();
    w0.pages.absent = Some(APIC); // would fault if it were consulted
    let mut s = protected_mode();
    s.regs.set(Rdx, APIC);
    assert_eq!(w0.run(&[0x89, 0x02], &mut s, APIC), done(Op::Mov, 2));
    assert!(w0.pages.asked.borrow().is_empty());
}

#[test]
fn non_canonical_is_general_protection() {
    let mut w0 = World::apic();
    let mut s = long_mode();
    s.regs.set(Rdx, 0x0000_8000_0000_0000);
    assert_eq!(
        w0.run(&[0x89, 0x02], &mut s, APIC),
        Err(EmuError::GeneralProtection {
            linear: GuestVirt(0x0000_8000_0000_0000)
        })
    );
    // With LA57 the same address is canonical (it then translates elsewhere).
    s.sys.cr4 |= CR4_LA57;
    assert!(matches!(
        w0.run(&[0x89, 0x02], &mut s, APIC),
        Err(EmuError::AddressMismatch { .. })
    ));
}

// ---- Properties ----

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// REP STOS/MOVS into the device page against a closed form: iterations are the count,
        /// capped by the batch limit and by the accesses that still touch the page.
        #[test]
        fn rep_string_closed_form(movs in any::<bool>(), size_log in 0u32..4, rep in any::<bool>(),
                                  count in 0u64..700, df in any::<bool>(), off in 0u64..4096,
                                  a32 in any::<bool>()) {
            let size = 1u64 << size_log;
            let off = off & !(size - 1);
            let mut bytes = Vec::new();
            if a32 { bytes.push(0x67); }
            if rep { bytes.push(0xF3); }
            if size == 2 { bytes.push(0x66); }
            if size == 8 { bytes.push(0x48); }
            let opcode = match (movs, size) { (false, 1) => 0xAA, (false, _) => 0xAB, (true, 1) => 0xA4, (true, _) => 0xA5 };
            bytes.push(opcode);

            let mut w0 = World::apic();
            let mut s = long_mode();
            if df { s.regs.rflags |= RFLAGS_DF; }
            s.regs.set(Rax, 0x0102_0304_0506_0708);
            s.regs.set(Rcx, count);
            s.regs.set(Rdi, APIC + off);
            s.regs.set(Rsi, 0x1_0000);
            let rip = s.regs.rip;
            let res = w0.run(&bytes, &mut s, APIC + off).unwrap();

            let in_page = if df { off / size + 1 } else { (4096 - off).div_ceil(size) };
            let expect = if rep { count.min(MAX_REP_ITERATIONS as u64).min(in_page) } else { 1 };
            let complete = !rep || expect == count;
            prop_assert_eq!(res.iterations as u64, expect);
            prop_assert_eq!(res.complete, complete);
            prop_assert_eq!(res.len as usize, bytes.len());
            prop_assert_eq!(s.regs.rip, if complete { rip + bytes.len() as u64 } else { rip });
            let moved = expect.wrapping_mul(if df { size.wrapping_neg() } else { size });
            prop_assert_eq!(s.regs.get(Rdi), (APIC + off).wrapping_add(moved));
            prop_assert_eq!(s.regs.get(Rsi), if movs { 0x1_0000u64.wrapping_add(moved) } else { 0x1_0000 });
            prop_assert_eq!(s.regs.get(Rcx), if rep { count - expect } else { count });
            prop_assert_eq!(w0.dev.log.len() as u64, expect);
            for (i, io) in w0.dev.log.iter().enumerate() {
                let step = (i as u64).wrapping_mul(if df { size.wrapping_neg() } else { size });
                prop_assert_eq!(io.gpa, (APIC + off).wrapping_add(step));
                prop_assert!(io.write);
                let want = if movs {
                    let a = 0x1_0000u64.wrapping_add(step) as usize;
                    value(&w0.ram.bytes[a..a + size as usize])
                } else {
                    0x0102_0304_0506_0708 & mask(size as u8)
                };
                prop_assert_eq!(io.value, want);
            }
        }

        /// A load into any register of any width changes exactly the bits the SDM says
        /// (vol. 1 3.4.1.1: 32-bit results zero-extend, 8- and 16-bit results merge).
        #[test]
        fn load_changes_only_the_destination_bits(reg in 0u8..16, width in prop_oneof![Just(1u8), Just(2), Just(4), Just(8)],
                                                  high in any::<bool>(), rex in any::<bool>(),
                                                  regs in proptest::array::uniform16(any::<u64>()),
                                                  data in any::<u64>()) {
            let gpa = APIC + 0x800;
            let mut w0 = World::apic();
            w0.dev.set(gpa, &data.to_le_bytes());
            let mut s = long_mode();
            s.regs.gprs = regs;
            // The address comes from a displacement-only operand so every register is free:
            // mov disp32(,%riz) via SIB with no base and no index: ModRM 00 reg 100, SIB 0x25.
            let mut bytes = Vec::new();
            // AH..BH (encodings 4-7 without REX) only exist for the first four registers.
            let high = high && width == 1 && reg < 4;
            let enc = if high { reg + 4 } else { reg };
            let rex_bits = if width == 8 { 8 } else { 0 } | if reg >= 8 { 4 } else { 0 };
            // SPL..DIL need a REX; with AL..BL one is optional (and changes nothing).
            let need_rex = rex_bits != 0 || (width == 1 && (4..8).contains(&reg)) || (rex && !high);
            if width == 2 { bytes.push(0x66); }
            if need_rex { bytes.push(0x40 | rex_bits); }
            bytes.push(if width == 1 { 0x8A } else { 0x8B });
            bytes.push(((enc & 7) << 3) | 0x04);
            bytes.push(0x25);
            bytes.extend_from_slice(&(gpa as u32).to_le_bytes());
            // gpa is above 2 GiB: disp32 sign-extends, so use the address the guest would see.
            let va = gpa as u32 as i32 as i64 as u64;
            w0.pages.map = vec![(va & !0xFFF, gpa & !0xFFF)];
            prop_assert_eq!(w0.run(&bytes, &mut s, gpa), done(Op::Mov, bytes.len() as u8));
            let target = Gpr::from_index(reg).unwrap();
            let old = regs[reg as usize];
            let want = match (width, high) {
                (1, true) => (old & !0xFF00) | ((data & 0xFF) << 8),
                (1, false) => (old & !0xFF) | (data & 0xFF),
                (2, _) => (old & !0xFFFF) | (data & 0xFFFF),
                (4, _) => data & 0xFFFF_FFFF,
                _ => data,
            };
            for g in Gpr::ALL {
                let expect = if g == target { want } else { regs[g as usize] };
                prop_assert_eq!(s.regs.get(g), expect, "{:?} after {:02x?}", g, bytes);
            }
        }
    }
}
