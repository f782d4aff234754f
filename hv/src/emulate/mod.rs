//! MMIO instruction emulation: finish, in software, the guest instruction whose memory access
//! hit a guest-physical page that no RAM backs (an NPF on SVM, an EPT violation on VMX).
//!
//! Why: the nested page tables map only RAM, so a guest driver's `readl`/`writel` to a device
//! page exits with the faulting guest-physical address but not with the value or the register
//! involved (SVM decode assists give the bytes, not the semantics; VMX gives neither). We decode
//! the instruction at CS:RIP with iced-x86, recompute its memory operand the way the CPU did
//! (SDM vol. 1 3.7.5 "Specifying an Offset", vol. 3A 3.4 "Logical and Linear Addresses"),
//! check that it lands in the faulting page, and apply the one access through an [`MmioBus`],
//! updating registers, RFLAGS and RIP as the instruction would.
//!
//! The supported forms are the ones compilers and drivers emit for device registers:
//! MOV (88/89/8A/8B/C6/C7, A0–A3 moffs), MOVZX/MOVSX/MOVSXD, ADD/OR/AND/SUB/XOR/CMP/TEST with a
//! memory operand (LOCK allowed), XCHG with memory (atomic by construction: the vCPU is stopped),
//! BT, and STOS/MOVS with and without REP. Everything else is [`EmuError::Unsupported`] with the
//! bytes, so the caller can inject #UD or stop the VM with a readable reason.
//!
//! What the hardware already checked: an NPF/EPT violation is raised after the guest's own
//! segmentation and paging checks of the faulting access succeeded (APM vol. 2 15.25.6, SDM vol.
//! 3C 29.3.3), so segment limits and rights are not checked again. The guest's paging is walked
//! again (through [`Translate`]) to find out where the access goes and to raise the #PF the
//! hardware would for the *other* operand of MOVS and for later REP iterations.
//!
//! Routing: a piece of an access that falls in the faulting page goes to the bus; any other
//! piece goes to guest RAM ([`GuestMemory`]), and to the bus if RAM does not back it (another
//! device, or nothing: the bus answers all ones). An access that crosses a page boundary is
//! split at it.
//!
//! Cost: one decode into a stack [`Instruction`], no allocation (iced builds its decoder tables,
//! on the heap, at the first decode in the process: call [`warm_up`] once at boot so that no
//! exit pays for it), at most one guest page walk per operand and iteration. REP string instructions run at most [`MAX_REP_ITERATIONS`]
//! iterations per call and stop early when an iteration no longer touches the faulting page;
//! RIP then stays on the instruction and the guest re-executes it (the CPU continues in RAM
//! natively and faults again on the next device access), as the architecture allows for REP
//! (SDM vol. 2B "REP/REPE/REPZ/REPNE/REPNZ": interruptible between iterations).
//!
//! Left to the caller: the single-step trap after the instruction when RFLAGS.TF = 1, and
//! clearing the interrupt shadow (none of the emulated forms sets one).

mod alu;
#[cfg(test)]
mod tests;

pub use alu::{AF, AluOp, CF, OF, PF, SF, STATUS_FLAGS, ZF, alu, mask};

use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, Instruction, MemorySize, Mnemonic};
use iced_x86::{OpKind, Register};

use crate::mem::{Access, GuestMemory, GuestPhys, GuestVirt, PageFault, Translate, TranslateError};
use crate::vcpu::{CR0_PE, CR4_LA57, Gpr, RFLAGS_DF, VcpuState};

/// Architectural maximum instruction length (SDM vol. 2A 2.3.11).
pub const MAX_INSN_LEN: usize = 15;

/// REP string iterations per [`emulate_mmio`] call; the rest run after the guest re-executes
/// the instruction (bounds the time one exit spends, so interrupts are not held off).
pub const MAX_REP_ITERATIONS: u32 = 256;

/// RFLAGS.VM (virtual-8086 mode: 16-bit code whatever CS says).
const RFLAGS_VM: u64 = 1 << 17;
const PAGE_SIZE: u64 = 4096;

/// Build iced-x86's decoder tables now. They are built (and allocated) once per image at the
/// first decode; calling this at boot or VM creation keeps that out of the exit path, here
/// and in the SVM backend's instruction-length decoder, which shares them.
pub fn warm_up() {
    let mut insn = Instruction::default();
    Decoder::new(64, &[0x90], DecoderOptions::NONE).decode_out(&mut insn);
}

/// Device registers at guest-physical addresses, as the emulator sees them: whatever the
/// access width, a device sees the bytes (little-endian, `data.len()` is 1, 2, 4 or 8, or less
/// for the two halves of an access split at a page boundary). The devices layer implements
/// it; an address no device claims should read all ones and drop writes.
pub trait MmioBus {
    /// Read `data.len()` bytes at `gpa`.
    fn read(&mut self, gpa: GuestPhys, data: &mut [u8]);
    /// Write `data` at `gpa`.
    fn write(&mut self, gpa: GuestPhys, data: &[u8]);
}

/// The default code size, from CR0.PE, RFLAGS.VM, EFER.LMA, CS.L and CS.D (SDM vol. 1 3.6.1,
/// vol. 3A 5.2.1): it decides whether 0x40–0x4F are REX prefixes, the default operand and
/// address sizes, and how RIP wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeSize {
    /// Real mode, virtual-8086 mode or a 16-bit code segment.
    Bits16,
    /// A 32-bit code segment (protected mode or compatibility mode).
    Bits32,
    /// 64-bit mode (EFER.LMA = 1, CS.L = 1).
    Bits64,
}

impl CodeSize {
    /// The code size the vCPU executes in.
    pub const fn of(state: &VcpuState) -> CodeSize {
        let sys = &state.sys;
        if sys.cr0 & CR0_PE == 0 || state.regs.rflags & RFLAGS_VM != 0 {
            CodeSize::Bits16
        } else if sys.mode64() {
            CodeSize::Bits64
        } else if sys.cs.default_big() {
            CodeSize::Bits32
        } else {
            CodeSize::Bits16
        }
    }

    /// 16, 32 or 64.
    pub const fn bits(self) -> u32 {
        match self {
            CodeSize::Bits16 => 16,
            CodeSize::Bits32 => 32,
            CodeSize::Bits64 => 64,
        }
    }

    /// `rip + len` with this code size's wrap-around (IP at 64 KiB, EIP at 4 GiB).
    pub const fn advance(self, rip: u64, len: u8) -> u64 {
        let next = rip.wrapping_add(len as u64);
        match self {
            CodeSize::Bits16 => next & 0xFFFF,
            CodeSize::Bits32 => next & 0xFFFF_FFFF,
            CodeSize::Bits64 => next,
        }
    }
}

/// Which instruction was emulated (for statistics and traces).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// MOV (including moffs).
    Mov,
    /// MOVZX.
    Movzx,
    /// MOVSX or MOVSXD.
    Movsx,
    /// ADD, OR, AND, SUB, XOR, CMP or TEST.
    Alu(AluOp),
    /// XCHG.
    Xchg,
    /// BT.
    Bt,
    /// STOS (REP or not).
    Stos,
    /// MOVS (REP or not).
    Movs,
}

/// What [`emulate_mmio`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Emulated {
    /// The instruction.
    pub op: Op,
    /// Its length in bytes.
    pub len: u8,
    /// Iterations performed (1 for non-string instructions; 0 for REP with a zero count).
    pub iterations: u32,
    /// The instruction finished and RIP now points after it. `false` only for a REP string
    /// instruction stopped after a batch: RIP is unchanged, the count and pointer registers
    /// are updated, and the guest should simply be resumed to continue it.
    pub complete: bool,
}

/// Why an instruction was not emulated. Registers, RIP and memory are unchanged except for
/// the REP iterations already performed (REP is restartable, so a fault in iteration *n*
/// leaves iterations 0..*n* done, as on hardware).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EmuError {
    /// Not one of the supported forms (or not a valid instruction): inject #UD or stop the
    /// VM. `bytes[..len]` are the instruction's bytes (all supplied bytes, up to 15, if it
    /// did not decode).
    Unsupported {
        /// The bytes.
        bytes: [u8; MAX_INSN_LEN],
        /// How many of them are meaningful.
        len: u8,
    },
    /// The supplied bytes (fewer than 15) end inside the instruction (fetch more, e.g.
    /// across a page, and retry). `len` is how many were supplied.
    Truncated {
        /// Bytes supplied.
        len: u8,
    },
    /// The guest's paging refused an access: inject this #PF.
    PageFault(PageFault),
    /// A guest paging-structure entry lies outside RAM: stop the VM.
    TableNotRam(crate::mem::NotRam),
    /// A non-canonical linear address in 64-bit mode: inject #GP(0) (#SS(0) for the stack
    /// segment; the emulated forms never use SS implicitly in 64-bit mode).
    GeneralProtection {
        /// The linear address.
        linear: GuestVirt,
    },
    /// The memory operand does not translate into the faulting page: the guest changed its
    /// page tables or code since the exit, or the bytes are not the faulting instruction.
    /// Resume the guest (it faults again if the access really is MMIO).
    AddressMismatch {
        /// The faulting guest-physical address.
        expected: GuestPhys,
        /// Where the decoded operand actually goes.
        found: GuestPhys,
    },
}

/// Emulate the instruction in `bytes` (up to 15 bytes fetched at CS:RIP; more are ignored),
/// whose memory access faulted at guest-physical `gpa`, against `state`.
///
/// On success the registers, RFLAGS and (if [`Emulated::complete`]) RIP are updated and the
/// accesses have been made: device accesses through `bus`, RAM accesses (MOVS's other operand)
/// through `mem`, guest-linear to guest-physical through `tr` when CR0.PG = 1 (with CR0.PG = 0
/// linear addresses are physical).
pub fn emulate_mmio<B, M, T>(
    bytes: &[u8],
    state: &mut VcpuState,
    gpa: GuestPhys,
    bus: &mut B,
    mem: &mut M,
    tr: &T,
) -> Result<Emulated, EmuError>
where
    B: MmioBus + ?Sized,
    M: GuestMemory + ?Sized,
    T: Translate + ?Sized,
{
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let code = CodeSize::of(state);
    let mut insn = Instruction::default();
    let mut decoder = Decoder::with_ip(code.bits(), bytes, state.regs.rip, DecoderOptions::NONE);
    decoder.decode_out(&mut insn);
    if insn.is_invalid() {
        return Err(match decoder.last_error() {
            // With all 15 bytes there is nothing more to fetch: the CPU would raise #GP.
            DecoderError::NoMoreBytes if bytes.len() < MAX_INSN_LEN => EmuError::Truncated {
                len: bytes.len() as u8,
            },
            _ => unsupported(bytes),
        });
    }
    let len = insn.len() as u8;
    let unsup = || unsupported(&bytes[..len as usize]);
    let mut cx = Cx {
        state,
        code,
        gpa,
        bus,
        mem,
        tr,
    };
    let string = match insn.code() {
        Code::Stosb_m8_AL => Some((Op::Stos, 1)),
        Code::Stosw_m16_AX => Some((Op::Stos, 2)),
        Code::Stosd_m32_EAX => Some((Op::Stos, 4)),
        Code::Stosq_m64_RAX => Some((Op::Stos, 8)),
        Code::Movsb_m8_m8 => Some((Op::Movs, 1)),
        Code::Movsw_m16_m16 => Some((Op::Movs, 2)),
        Code::Movsd_m32_m32 => Some((Op::Movs, 4)),
        Code::Movsq_m64_m64 => Some((Op::Movs, 8)),
        _ => None,
    };
    if let Some((op, size)) = string {
        return cx.string(&insn, op, size, len).ok_or_else(unsup)?;
    }
    let op = cx
        .single(&insn, address_size(bytes, code))
        .ok_or_else(unsup)??;
    cx.state.regs.rip = code.advance(cx.state.regs.rip, len);
    Ok(Emulated {
        op,
        len,
        iterations: 1,
        complete: true,
    })
}

fn unsupported(b: &[u8]) -> EmuError {
    let mut bytes = [0u8; MAX_INSN_LEN];
    let n = b.len().min(MAX_INSN_LEN);
    bytes[..n].copy_from_slice(&b[..n]);
    EmuError::Unsupported {
        bytes,
        len: n as u8,
    }
}

/// The address size in bytes: the code size, toggled by a 0x67 prefix (16 <-> 32; 64 -> 32).
/// iced does not expose the prefix, so scan the prefix bytes ahead of the opcode.
fn address_size(bytes: &[u8], code: CodeSize) -> u8 {
    let mut a67 = false;
    for &b in bytes {
        match b {
            0x67 => a67 = true,
            0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0xF0 | 0xF2 | 0xF3 => {}
            0x40..=0x4F if code == CodeSize::Bits64 => {}
            _ => break,
        }
    }
    match (code, a67) {
        (CodeSize::Bits16, false) | (CodeSize::Bits32, true) => 2,
        (CodeSize::Bits16, true) | (CodeSize::Bits32, false) | (CodeSize::Bits64, true) => 4,
        (CodeSize::Bits64, false) => 8,
    }
}

/// A general register operand: which register, how wide, and whether it is AH/CH/DH/BH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RegRef {
    gpr: Gpr,
    size: u8,
    high: bool,
}

/// Map an iced register to a GPR slice. iced numbers them AL..R15L (with AH..BH at 4–7 and
/// SPL..DIL after), then AX.., EAX.., RAX.. in blocks of 16.
fn gpr_ref(r: Register) -> Option<RegRef> {
    let n = r as u32;
    let (al, ax, eax, rax) = (
        Register::AL as u32,
        Register::AX as u32,
        Register::EAX as u32,
        Register::RAX as u32,
    );
    let (idx, size, high) = if (al..al + 20).contains(&n) {
        match n - al {
            k @ 0..=3 => (k, 1, false),
            k @ 4..=7 => (k - 4, 1, true),
            k => (k - 4, 1, false),
        }
    } else if (ax..ax + 16).contains(&n) {
        (n - ax, 2, false)
    } else if (eax..eax + 16).contains(&n) {
        (n - eax, 4, false)
    } else if (rax..rax + 16).contains(&n) {
        (n - rax, 8, false)
    } else {
        return None;
    };
    Some(RegRef {
        gpr: Gpr::from_index(idx as u8)?,
        size,
        high,
    })
}

/// Bytes of a plain integer memory operand.
fn memory_bytes(m: MemorySize) -> Option<u8> {
    match m {
        MemorySize::UInt8 | MemorySize::Int8 => Some(1),
        MemorySize::UInt16 | MemorySize::Int16 => Some(2),
        MemorySize::UInt32 | MemorySize::Int32 => Some(4),
        MemorySize::UInt64 | MemorySize::Int64 => Some(8),
        _ => None,
    }
}

fn sign_extend(v: u64, size: u8) -> u64 {
    let shift = 64 - size as u32 * 8;
    (((v << shift) as i64) >> shift) as u64
}

/// One piece of an access, within one page.
#[derive(Clone, Copy, Debug)]
struct Piece {
    gpa: GuestPhys,
    len: u8,
    /// In the faulting page: a device access.
    mmio: bool,
}

/// Where an access of up to 8 bytes goes: one piece, or two if it crosses a page.
#[derive(Clone, Copy, Debug)]
struct Plan {
    pieces: [Piece; 2],
    n: usize,
}

const NO_PIECE: Piece = Piece {
    gpa: GuestPhys(0),
    len: 0,
    mmio: false,
};

impl Plan {
    fn touches_fault_page(&self) -> bool {
        self.pieces[..self.n].iter().any(|p| p.mmio)
    }
}

struct Cx<'a, B: ?Sized, M: ?Sized, T: ?Sized> {
    state: &'a mut VcpuState,
    code: CodeSize,
    gpa: GuestPhys,
    bus: &'a mut B,
    mem: &'a mut M,
    tr: &'a T,
}

impl<B, M, T> Cx<'_, B, M, T>
where
    B: MmioBus + ?Sized,
    M: GuestMemory + ?Sized,
    T: Translate + ?Sized,
{
    fn reg(&self, r: RegRef) -> u64 {
        let v = self.state.regs.get(r.gpr);
        if r.high {
            (v >> 8) & 0xFF
        } else {
            v & mask(r.size)
        }
    }

    /// Write a register as the CPU does: 32-bit writes zero-extend, 8/16-bit writes merge.
    fn set_reg(&mut self, r: RegRef, value: u64) {
        let old = self.state.regs.get(r.gpr);
        let new = match (r.size, r.high) {
            (1, true) => (old & !0xFF00) | ((value & 0xFF) << 8),
            (1, false) => (old & !0xFF) | (value & 0xFF),
            (2, _) => (old & !0xFFFF) | (value & 0xFFFF),
            (4, _) => value & 0xFFFF_FFFF,
            _ => value,
        };
        self.state.regs.set(r.gpr, new);
    }

    /// Write a pointer or count register at address size `asz` (16-bit merges, 32-bit
    /// zero-extends).
    fn set_addr_reg(&mut self, gpr: Gpr, value: u64, asz: u8) {
        self.set_reg(
            RegRef {
                gpr,
                size: asz,
                high: false,
            },
            value,
        );
    }

    fn operand_reg(&self, insn: &Instruction, i: u32) -> Option<RegRef> {
        if insn.op_kind(i) != OpKind::Register {
            return None;
        }
        gpr_ref(insn.op_register(i))
    }

    /// A register or immediate source operand.
    fn source(&self, insn: &Instruction, i: u32) -> Option<u64> {
        match insn.op_kind(i) {
            OpKind::Register => Some(self.reg(self.operand_reg(insn, i)?)),
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Some(insn.immediate(i)),
            _ => None,
        }
    }

    /// The offset of an `OpKind::Memory` operand (SDM vol. 1 3.7.5), at address size `asz`.
    fn effective_address(&self, insn: &Instruction, asz: u8) -> Option<u64> {
        let base = insn.memory_base();
        let index = insn.memory_index();
        let mut ea = insn.memory_displacement64();
        // RIP/EIP-relative: iced has already added the next RIP into the displacement.
        if base != Register::RIP && base != Register::EIP {
            if base != Register::None {
                ea = ea.wrapping_add(self.reg(gpr_ref(base)?));
            }
            if index != Register::None {
                let scale = insn.memory_index_scale() as u64;
                ea = ea.wrapping_add(self.reg(gpr_ref(index)?).wrapping_mul(scale));
            }
        }
        Some(ea & mask(asz))
    }

    /// Segment base plus offset (SDM vol. 3A 3.4): in 64-bit mode only FS and GS have a base
    /// and the result must be canonical; otherwise it wraps at 4 GiB.
    fn linear(&self, seg: Register, offset: u64) -> Result<u64, EmuError> {
        let sys = &self.state.sys;
        let s = match seg {
            Register::ES => &sys.es,
            Register::CS => &sys.cs,
            Register::SS => &sys.ss,
            Register::FS => &sys.fs,
            Register::GS => &sys.gs,
            _ => &sys.ds,
        };
        if self.code == CodeSize::Bits64 {
            let base = if matches!(seg, Register::FS | Register::GS) {
                s.base
            } else {
                0
            };
            let la = base.wrapping_add(offset);
            let bits = if sys.cr4 & CR4_LA57 != 0 { 57 } else { 48 };
            let shift = 64 - bits;
            if ((la << shift) as i64 >> shift) as u64 != la {
                return Err(EmuError::GeneralProtection {
                    linear: GuestVirt(la),
                });
            }
            Ok(la)
        } else {
            Ok(s.base.wrapping_add(offset) & 0xFFFF_FFFF)
        }
    }

    fn translate(&self, la: u64, write: bool) -> Result<GuestPhys, EmuError> {
        if !self.state.sys.paging() {
            return Ok(GuestPhys(la));
        }
        let access = Access {
            write,
            fetch: false,
            user: self.state.sys.cpl == 3,
        };
        self.tr
            .translate(GuestVirt(la), access)
            .map_err(|e| match e {
                TranslateError::PageFault(pf) => EmuError::PageFault(pf),
                TranslateError::TableNotRam(n) => EmuError::TableNotRam(n),
            })
    }

    /// Translate an access of `len` bytes at linear `la`, split at a page boundary.
    fn plan(&self, la: u64, len: u8, write: bool) -> Result<Plan, EmuError> {
        let first = (PAGE_SIZE - (la & (PAGE_SIZE - 1))).min(len as u64) as u8;
        let mut plan = Plan {
            pieces: [NO_PIECE; 2],
            n: 0,
        };
        let mut at = la;
        for (i, n) in [first, len - first].into_iter().enumerate() {
            if n == 0 {
                break;
            }
            let gpa = self.translate(at, write)?;
            plan.pieces[i] = Piece {
                gpa,
                len: n,
                mmio: gpa.0 >> 12 == self.gpa.0 >> 12,
            };
            plan.n = i + 1;
            at = la.wrapping_add(first as u64);
            if self.code != CodeSize::Bits64 {
                at &= 0xFFFF_FFFF;
            }
        }
        Ok(plan)
    }

    /// A plan for the instruction's one memory operand, which must hit the faulting page.
    fn plan_fault(&self, la: u64, len: u8, write: bool) -> Result<Plan, EmuError> {
        let plan = self.plan(la, len, write)?;
        if plan.touches_fault_page() {
            Ok(plan)
        } else {
            Err(EmuError::AddressMismatch {
                expected: self.gpa,
                found: plan.pieces[0].gpa,
            })
        }
    }

    fn read(&mut self, plan: &Plan) -> u64 {
        let mut buf = [0u8; 8];
        let mut off = 0usize;
        for p in &plan.pieces[..plan.n] {
            let dst = &mut buf[off..off + p.len as usize];
            if p.mmio || self.mem.read(p.gpa, dst).is_err() {
                self.bus.read(p.gpa, dst);
            }
            off += p.len as usize;
        }
        u64::from_le_bytes(buf)
    }

    fn write(&mut self, plan: &Plan, value: u64) {
        let buf = value.to_le_bytes();
        let mut off = 0usize;
        for p in &plan.pieces[..plan.n] {
            let src = &buf[off..off + p.len as usize];
            if p.mmio || self.mem.write(p.gpa, src).is_err() {
                self.bus.write(p.gpa, src);
            }
            off += p.len as usize;
        }
    }

    /// Instructions with one `OpKind::Memory` operand. `None`: not a supported form.
    fn single(&mut self, insn: &Instruction, asz: u8) -> Option<Result<Op, EmuError>> {
        let count = insn.op_count();
        let mi = (0..count).find(|&i| insn.op_kind(i) == OpKind::Memory)?;
        if count != 2 {
            return None;
        }
        let size = memory_bytes(insn.memory_size())?;
        let other = 1 - mi;
        let ea = self.effective_address(insn, asz)?;
        let seg = insn.memory_segment();
        let alu_op = match insn.mnemonic() {
            Mnemonic::Add => Some(AluOp::Add),
            Mnemonic::Or => Some(AluOp::Or),
            Mnemonic::And => Some(AluOp::And),
            Mnemonic::Sub => Some(AluOp::Sub),
            Mnemonic::Xor => Some(AluOp::Xor),
            Mnemonic::Cmp => Some(AluOp::Cmp),
            Mnemonic::Test => Some(AluOp::Test),
            _ => None,
        };
        // Check the operands before touching anything, so `None` has no side effects.
        let op = match insn.mnemonic() {
            Mnemonic::Mov => {
                if mi == 1 {
                    self.operand_reg(insn, 0)?;
                } else {
                    self.source(insn, 1)?;
                }
                Op::Mov
            }
            Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd if mi == 1 => {
                self.operand_reg(insn, 0)?;
                if insn.mnemonic() == Mnemonic::Movzx {
                    Op::Movzx
                } else {
                    Op::Movsx
                }
            }
            Mnemonic::Xchg => {
                self.operand_reg(insn, other)?;
                Op::Xchg
            }
            Mnemonic::Bt if mi == 0 => {
                self.source(insn, 1)?;
                Op::Bt
            }
            _ => {
                let a = alu_op?;
                if mi == 1 {
                    self.operand_reg(insn, 0)?;
                } else {
                    self.source(insn, 1)?;
                }
                Op::Alu(a)
            }
        };
        Some(self.apply(insn, op, mi, size, seg, ea, asz).map(|()| op))
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        insn: &Instruction,
        op: Op,
        mi: u32,
        size: u8,
        seg: Register,
        ea: u64,
        asz: u8,
    ) -> Result<(), EmuError> {
        let la = self.linear(seg, ea)?;
        // Operands were validated by `single`.
        let reg0 = self.operand_reg(insn, 0);
        match op {
            Op::Mov if mi == 0 => {
                let v = self.source(insn, 1).unwrap_or(0);
                let plan = self.plan_fault(la, size, true)?;
                self.write(&plan, v & mask(size));
            }
            Op::Mov | Op::Movzx | Op::Movsx => {
                let plan = self.plan_fault(la, size, false)?;
                let mut v = self.read(&plan) & mask(size);
                if op == Op::Movsx {
                    v = sign_extend(v, size);
                }
                if let Some(r) = reg0 {
                    self.set_reg(r, v);
                }
            }
            Op::Xchg => {
                let plan = self.plan_fault(la, size, true)?;
                let old = self.read(&plan) & mask(size);
                if let Some(r) = self.operand_reg(insn, 1 - mi) {
                    let v = self.reg(r);
                    self.write(&plan, v);
                    self.set_reg(r, old);
                }
            }
            Op::Bt => {
                let bits = size as u64 * 8;
                let src = self.source(insn, 1).unwrap_or(0);
                let (la, bit) = if insn.op_kind(1) == OpKind::Register {
                    // Bit string: the signed offset selects an operand-sized unit relative
                    // to the address (SDM vol. 2A BT, "bit base" addressing).
                    let off = sign_extend(src, size) as i64;
                    let unit = off.div_euclid(bits as i64);
                    let ea = ea.wrapping_add((unit as u64).wrapping_mul(size as u64)) & mask(asz);
                    (self.linear(seg, ea)?, off.rem_euclid(bits as i64) as u64)
                } else {
                    (la, src % bits)
                };
                let plan = self.plan_fault(la, size, false)?;
                let v = self.read(&plan);
                let rf = &mut self.state.regs.rflags;
                *rf = (*rf & !CF) | ((v >> bit) & 1);
            }
            Op::Alu(a) => {
                let write = mi == 0 && a.writes();
                let plan = self.plan_fault(la, size, write)?;
                let m = self.read(&plan) & mask(size);
                let (dst, src) = if mi == 0 {
                    (m, self.source(insn, 1).unwrap_or(0))
                } else {
                    (reg0.map_or(0, |r| self.reg(r)), m)
                };
                let (r, flags) = alu(a, size, dst, src);
                if a.writes() {
                    if mi == 0 {
                        self.write(&plan, r);
                    } else if let Some(reg) = reg0 {
                        self.set_reg(reg, r);
                    }
                }
                let rf = &mut self.state.regs.rflags;
                *rf = (*rf & !STATUS_FLAGS) | flags;
            }
            // String forms go through `string`; `single` never returns them.
            Op::Stos | Op::Movs => {}
        }
        Ok(())
    }

    /// STOS and MOVS, REP or not (SDM vol. 2B MOVS, STOS, REP).
    fn string(
        &mut self,
        insn: &Instruction,
        op: Op,
        size: u8,
        len: u8,
    ) -> Option<Result<Emulated, EmuError>> {
        let asz = match insn.op0_kind() {
            OpKind::MemoryESDI => 2,
            OpKind::MemoryESEDI => 4,
            OpKind::MemoryESRDI => 8,
            _ => return None,
        };
        let rep = insn.has_rep_prefix() || insn.has_repne_prefix();
        Some(self.string_loop(insn, op, size, len, asz, rep))
    }

    fn string_loop(
        &mut self,
        insn: &Instruction,
        op: Op,
        size: u8,
        len: u8,
        asz: u8,
        rep: bool,
    ) -> Result<Emulated, EmuError> {
        let am = mask(asz);
        let step = if self.state.regs.rflags & RFLAGS_DF != 0 {
            (size as u64).wrapping_neg()
        } else {
            size as u64
        };
        let src_seg = insn.memory_segment();
        let mut done = 0u32;
        let complete = loop {
            let regs = &self.state.regs;
            if rep && regs.get(Gpr::Rcx) & am == 0 {
                break true;
            }
            if done == MAX_REP_ITERATIONS {
                break false;
            }
            let di = regs.get(Gpr::Rdi) & am;
            let si = regs.get(Gpr::Rsi) & am;
            let dst = self.plan(self.linear(Register::ES, di)?, size, true)?;
            let src = if op == Op::Movs {
                Some(self.plan(self.linear(src_seg, si)?, size, false)?)
            } else {
                None
            };
            let touches = dst.touches_fault_page() || src.is_some_and(|s| s.touches_fault_page());
            if !touches {
                if done == 0 {
                    return Err(EmuError::AddressMismatch {
                        expected: self.gpa,
                        found: src.map_or(dst.pieces[0].gpa, |s| s.pieces[0].gpa),
                    });
                }
                // The rest is RAM (or another page): let the CPU run it.
                break false;
            }
            let value = match src {
                Some(s) => self.read(&s),
                None => self.state.regs.get(Gpr::Rax),
            };
            self.write(&dst, value & mask(size));
            self.set_addr_reg(Gpr::Rdi, di.wrapping_add(step), asz);
            if op == Op::Movs {
                self.set_addr_reg(Gpr::Rsi, si.wrapping_add(step), asz);
            }
            done += 1;
            if !rep {
                break true;
            }
            let c = self.state.regs.get(Gpr::Rcx);
            self.set_addr_reg(Gpr::Rcx, c.wrapping_sub(1), asz);
        };
        if complete {
            self.state.regs.rip = self.code.advance(self.state.regs.rip, len);
        }
        Ok(Emulated {
            op,
            len,
            iterations: done,
            complete,
        })
    }
}
