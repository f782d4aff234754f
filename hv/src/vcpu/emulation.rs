//! Exits that need the guest's own state and memory: MMIO instruction emulation and string
//! I/O, and the instruction fetch both start with.
//!
//! Why apart from [`crate::exit::handle`]: that handler decides from the exit information and
//! a few registers. A nested page fault outside RAM (SVM NPF, VMX EPT violation) and INS/OUTS
//! need the instruction at CS:RIP, the full register and segment state ([`VcpuState`]) and
//! guest RAM seen through the guest's paging. The handler answers
//! [`Action::EmulateMmio`](crate::exit::Action::EmulateMmio) or
//! [`Action::StringIo`](crate::exit::Action::StringIo); the run loop reads the state from the
//! backend, calls [`mmio`] or [`string_io`] here and writes the state back. Everything here is
//! pure and host-tested.
//!
//! # Instruction fetch ([`fetch_insn`])
//!
//! Up to 15 bytes (SDM vol. 2A 2.3.11) at the linear address CS.base + RIP (CS.base is 0 in
//! 64-bit mode, SDM vol. 3A 3.4.4; outside 64-bit mode the address wraps at 4 GiB), each page
//! translated by the guest's paging as an instruction fetch at the CPL (SDM vol. 3A 4.6):
//! paging off is the identity. The bytes are split at page boundaries; a page after the first
//! that does not translate ends the fetch there and its #PF is kept: it is raised only if the
//! instruction turns out to extend into that page, as the CPU does.
//!
//! # MMIO ([`mmio`])
//!
//! [`emulate_mmio`](crate::emulate::emulate_mmio) with the VM's devices as the bus
//! ([`Devices::mmio_read`](crate::devices::Devices::mmio_read): the IOAPIC and xAPIC pages
//! when the VM has a local APIC; anything else reads all ones and drops writes, counted in
//! [`VmStats`](crate::vm::VmStats)`::unhandled_mmio_*`). Its errors:
//!
//! | emulator / fetch result               | what the guest or VM sees                            |
//! |---------------------------------------|------------------------------------------------------|
//! | done (or a REP batch)                 | state written back, resume                           |
//! | `PageFault`, or a fetch #PF needed    | #PF with its error code, CR2 = the address           |
//! | `GeneralProtection` (non-canonical)   | #GP(0)                                               |
//! | `Unsupported` (or undecodable bytes)  | stop, [`StopReason::MmioUnsupported`] with the bytes |
//! | `AddressMismatch`                     | resume unchanged (the guest changed its tables or code; it faults again if the access is MMIO) |
//! | `TableNotRam`, bytes outside RAM      | stop, [`StopReason::NotRam`]                         |
//! | the faulting GPA is RAM               | stop, [`StopReason::NptViolation`] (a mapping bug of ours) |
//!
//! Unsupported instructions stop the VM rather than raise #UD: a guest that takes #UD on a
//! valid instruction goes down a confusing path far from the cause, while a stop names the
//! address and the bytes, which is what one needs to add the form.
//!
//! # String I/O ([`string_io`])
//!
//! The neutral [`Exit::Io`](crate::exit::Exit::Io) has the port, the width and REP, not the
//! direction of a string instruction, its address size or its segment override (SVM EXITINFO1
//! has the address size and, only with decode assists, the segment; VMX has both only with the
//! INS/OUTS instruction-information capability). One way for both backends: decode the
//! fetched bytes with iced-x86, whose operand kinds give all three. Then
//! [`devices::string_io`](crate::devices::string_io::string_io) moves up to its batch of
//! elements through the guest's paging; with elements left the guest is resumed at the same
//! RIP and re-executes the instruction for the next batch (no unbounded loop in one exit).
//!
//! Left out (rare, documented): the single-step #DB after an emulated instruction with
//! RFLAGS.TF = 1 and clearing an STI/MOV-SS shadow the emulated instruction sat in.

use core::cell::RefCell;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, OpKind, Register};

use crate::devices::string_io::{self as sio, AddrSize, SegmentReg, StringIo, StringIoOutcome};
use crate::devices::{IoSize, PortWrite};
use crate::emulate::{self, CodeSize, EmuError, MAX_INSN_LEN, MmioBus};
use crate::exit::{Action, StopReason, VECTOR_GP};
use crate::mem::walk::walk;
use crate::mem::{
    Access, GuestMemory, GuestPhys, GuestVirt, NotRam, PageFault, PageWalker, Paging, Translate,
    TranslateError,
};
use crate::vcpu::VcpuState;
use crate::vm::VmRuntime;

/// Exception vector #PF.
pub const VECTOR_PF: u8 = 14;

/// The physical-address width assumed when the VM's CPUID has no leaf 0x8000_0008.
const DEFAULT_PHYS_BITS: u8 = 36;

/// Instruction bytes fetched at CS:RIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fetched {
    /// The bytes (`bytes[..len]` are valid).
    pub bytes: [u8; MAX_INSN_LEN],
    /// How many were fetched (1..=15).
    pub len: u8,
    /// Why the fetch stopped short of 15 bytes, if it did: a later page that does not
    /// translate (its #PF) or lies outside RAM.
    pub rest: Option<TranslateError>,
}

impl Fetched {
    /// The valid bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Fetch up to 15 instruction bytes at CS:RIP through the guest's paging (see the module
/// docs). `Err` if not even the first byte can be fetched.
pub fn fetch_insn<M: GuestMemory + ?Sized>(
    mem: &mut M,
    state: &VcpuState,
    phys_bits: u8,
) -> Result<Fetched, TranslateError> {
    let sys = &state.sys;
    let paging = Paging::new(sys, phys_bits).with_rflags(state.regs.rflags);
    let code = CodeSize::of(state);
    let (base, wrap) = match code {
        CodeSize::Bits64 => (0, u64::MAX),
        _ => (sys.cs.base, 0xFFFF_FFFF),
    };
    let access = Access {
        write: false,
        fetch: true,
        user: sys.cpl == 3,
    };
    let mut la = base.wrapping_add(state.regs.rip) & wrap;
    let mut out = Fetched {
        bytes: [0; MAX_INSN_LEN],
        len: 0,
        rest: None,
    };
    while usize::from(out.len) < MAX_INSN_LEN {
        let at = usize::from(out.len);
        let gpa = match walk(&paging, mem, GuestVirt(la), access) {
            Ok(t) => t.gpa,
            Err(e) if at == 0 => return Err(e),
            Err(e) => {
                out.rest = Some(e);
                break;
            }
        };
        let in_page = (0x1000 - (la & 0xFFF)) as usize;
        let n = in_page.min(MAX_INSN_LEN - at);
        let got = read_prefix(mem, gpa, &mut out.bytes[at..at + n]);
        out.len += got as u8;
        if got < n {
            let e = TranslateError::TableNotRam(NotRam {
                gpa: GuestPhys(gpa.0 + got as u64),
            });
            if out.len == 0 {
                return Err(e);
            }
            out.rest = Some(e);
            break;
        }
        la = la.wrapping_add(n as u64) & wrap;
    }
    Ok(out)
}

/// Read as much of `buf` at `gpa` as RAM backs: the count read.
fn read_prefix<M: GuestMemory + ?Sized>(mem: &M, gpa: GuestPhys, buf: &mut [u8]) -> usize {
    if mem.read(gpa, buf).is_ok() {
        return buf.len();
    }
    for (i, b) in buf.iter_mut().enumerate() {
        let mut one = [0u8];
        if mem.read(GuestPhys(gpa.0 + i as u64), &mut one).is_err() {
            return i;
        }
        *b = one[0];
    }
    buf.len()
}

/// The guest's physical-address width, from the CPUID it sees (Fn8000_0008 EAX[7:0]).
pub fn guest_phys_bits(rt: &VmRuntime) -> u8 {
    match rt.cpuid.get(0x8000_0008, 0)[0] & 0xFF {
        0 => DEFAULT_PHYS_BITS,
        b => b.clamp(32, 52) as u8,
    }
}

/// What the run loop does after [`mmio`] or [`string_io`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Emulation {
    /// The action (resume, inject, stop, reset).
    pub action: Action,
    /// Whether the state changed and must be written to the vCPU before it runs again.
    pub write_back: bool,
}

impl Emulation {
    const fn resume(write_back: bool) -> Emulation {
        Emulation {
            action: Action::Resume,
            write_back,
        }
    }

    const fn stop(reason: StopReason) -> Emulation {
        Emulation {
            action: Action::Stop(reason),
            write_back: false,
        }
    }

    /// Inject `pf` with CR2 set to its address (SDM vol. 3A 4.7).
    fn page_fault(state: &mut VcpuState, pf: PageFault) -> Emulation {
        state.sys.cr2 = pf.address.0;
        Emulation {
            action: Action::InjectException {
                vector: VECTOR_PF,
                error_code: Some(pf.error_code),
            },
            write_back: true,
        }
    }

    fn translate_error(state: &mut VcpuState, e: TranslateError) -> Emulation {
        match e {
            TranslateError::PageFault(pf) => Emulation::page_fault(state, pf),
            TranslateError::TableNotRam(n) => Emulation::stop(StopReason::NotRam { gpa: n.gpa }),
        }
    }
}

/// The VM's devices as the emulator's bus, counting accesses no device claims.
struct DeviceBus<'a>(&'a mut VmRuntime);

impl MmioBus for DeviceBus<'_> {
    fn read(&mut self, gpa: GuestPhys, data: &mut [u8]) {
        if !self.0.devices.mmio_read(gpa, data) {
            let s = &mut self.0.stats;
            s.unhandled_mmio_reads = s.unhandled_mmio_reads.saturating_add(1);
        }
    }

    fn write(&mut self, gpa: GuestPhys, data: &[u8]) {
        if !self.0.devices.mmio_write(gpa, data) {
            let s = &mut self.0.stats;
            s.unhandled_mmio_writes = s.unhandled_mmio_writes.saturating_add(1);
        }
    }
}

/// Guest RAM shared between the emulator's memory and its translator (both need it; the
/// translator sets accessed/dirty flags, so both write).
struct Shared<'m, M: ?Sized>(RefCell<&'m mut M>);

/// The memory half of [`Shared`].
struct SharedMem<'s, 'm, M: ?Sized>(&'s Shared<'m, M>);

impl<M: GuestMemory + ?Sized> GuestMemory for SharedMem<'_, '_, M> {
    fn read(&self, gpa: GuestPhys, buf: &mut [u8]) -> Result<(), NotRam> {
        self.0.0.borrow().read(gpa, buf)
    }

    fn write(&mut self, gpa: GuestPhys, data: &[u8]) -> Result<(), NotRam> {
        self.0.0.borrow_mut().write(gpa, data)
    }
}

/// The translation half of [`Shared`]: the guest's paging over it.
struct SharedPaging<'s, 'm, M: ?Sized> {
    paging: Paging,
    mem: &'s Shared<'m, M>,
}

impl<M: GuestMemory + ?Sized> Translate for SharedPaging<'_, '_, M> {
    fn translate(&self, va: GuestVirt, access: Access) -> Result<GuestPhys, TranslateError> {
        walk(&self.paging, &mut **self.mem.0.borrow_mut(), va, access).map(|t| t.gpa)
    }
}

fn in_ram<M: GuestMemory + ?Sized>(mem: &M, gpa: GuestPhys) -> bool {
    mem.read(gpa, &mut [0u8]).is_ok()
}

/// Emulate the instruction at CS:RIP whose access faulted in nested paging at `gpa` (see the
/// module docs for every outcome). `state` is the vCPU's state at the exit; on return it holds
/// what the vCPU must get if [`Emulation::write_back`] says so.
pub fn mmio<M: GuestMemory + ?Sized>(
    gpa: GuestPhys,
    state: &mut VcpuState,
    mem: &mut M,
    rt: &mut VmRuntime,
) -> Emulation {
    if in_ram(mem, gpa) {
        return Emulation::stop(StopReason::NptViolation { gpa });
    }
    let phys_bits = guest_phys_bits(rt);
    let fetched = match fetch_insn(mem, state, phys_bits) {
        Ok(f) => f,
        Err(e) => return Emulation::translate_error(state, e),
    };
    let paging = Paging::new(&state.sys, phys_bits).with_rflags(state.regs.rflags);
    let shared = Shared(RefCell::new(mem));
    let tr = SharedPaging {
        paging,
        mem: &shared,
    };
    let mut ram = SharedMem(&shared);
    let mut bus = DeviceBus(rt);
    let result = emulate::emulate_mmio(fetched.as_slice(), state, gpa, &mut bus, &mut ram, &tr);
    match result {
        Ok(_) => Emulation::resume(true),
        Err(EmuError::Truncated { .. }) => match fetched.rest {
            Some(e) => Emulation::translate_error(state, e),
            // 15 bytes were there: `emulate_mmio` does not report Truncated then.
            None => unsupported(gpa, &fetched),
        },
        Err(EmuError::Unsupported { bytes, len }) => {
            Emulation::stop(StopReason::MmioUnsupported { gpa, bytes, len })
        }
        Err(EmuError::PageFault(pf)) => Emulation::page_fault(state, pf),
        Err(EmuError::TableNotRam(n)) => Emulation::stop(StopReason::NotRam { gpa: n.gpa }),
        Err(EmuError::GeneralProtection { .. }) => Emulation {
            action: Action::InjectException {
                vector: VECTOR_GP,
                error_code: Some(0),
            },
            write_back: false,
        },
        Err(EmuError::AddressMismatch { .. }) => Emulation::resume(false),
    }
}

fn unsupported(gpa: GuestPhys, f: &Fetched) -> Emulation {
    Emulation::stop(StopReason::MmioUnsupported {
        gpa,
        bytes: f.bytes,
        len: f.len,
    })
}

/// What [`decode_string_io`] finds in the instruction bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StringInsn {
    /// INS rather than OUTS.
    pub input: bool,
    /// The element width.
    pub size: IoSize,
    /// A REP prefix.
    pub rep: bool,
    /// SI/ESI/RSI (or DI/EDI/RDI): the address size.
    pub addr_size: AddrSize,
    /// The segment of the memory operand (ES for INS; DS or the override for OUTS).
    pub segment: SegmentReg,
    /// The instruction's length.
    pub len: u8,
}

/// Why [`decode_string_io`] found no string I/O instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// The bytes end inside the instruction.
    Truncated,
    /// Something else than INS or OUTS.
    NotStringIo,
}

/// Decode INS/OUTS in `bytes` for a vCPU executing with `code` size.
pub fn decode_string_io(bytes: &[u8], code: CodeSize) -> Result<StringInsn, DecodeError> {
    let mut insn = Instruction::default();
    let mut d = Decoder::new(code.bits(), bytes, DecoderOptions::NONE);
    d.decode_out(&mut insn);
    if insn.is_invalid() {
        return Err(match d.last_error() {
            iced_x86::DecoderError::NoMoreBytes if bytes.len() < MAX_INSN_LEN => {
                DecodeError::Truncated
            }
            _ => DecodeError::NotStringIo,
        });
    }
    let (input, size, mem_op) = match insn.code() {
        Code::Insb_m8_DX => (true, IoSize::Byte, 0),
        Code::Insw_m16_DX => (true, IoSize::Word, 0),
        Code::Insd_m32_DX => (true, IoSize::Dword, 0),
        Code::Outsb_DX_m8 => (false, IoSize::Byte, 1),
        Code::Outsw_DX_m16 => (false, IoSize::Word, 1),
        Code::Outsd_DX_m32 => (false, IoSize::Dword, 1),
        _ => return Err(DecodeError::NotStringIo),
    };
    let addr_size = match insn.op_kind(mem_op) {
        OpKind::MemorySegSI | OpKind::MemoryESDI => AddrSize::A16,
        OpKind::MemorySegESI | OpKind::MemoryESEDI => AddrSize::A32,
        OpKind::MemorySegRSI | OpKind::MemoryESRDI => AddrSize::A64,
        _ => return Err(DecodeError::NotStringIo),
    };
    // INS always writes through ES (SDM vol. 2B "INS"); OUTS reads through DS or the override.
    let segment = match insn.memory_segment() {
        _ if input => SegmentReg::Es,
        Register::ES => SegmentReg::Es,
        Register::CS => SegmentReg::Cs,
        Register::SS => SegmentReg::Ss,
        Register::FS => SegmentReg::Fs,
        Register::GS => SegmentReg::Gs,
        _ => SegmentReg::Ds,
    };
    Ok(StringInsn {
        input,
        size,
        rep: insn.has_rep_prefix() || insn.has_repne_prefix(),
        addr_size,
        segment,
        len: insn.len() as u8,
    })
}

/// Run (a batch of) the INS/OUTS at CS:RIP that exited for `port` with elements of `size`;
/// `next_rip` is where the guest goes on when it completes (see the module docs).
pub fn string_io<M: GuestMemory + ?Sized>(
    port: u16,
    size: IoSize,
    next_rip: u64,
    state: &mut VcpuState,
    mem: &mut M,
    rt: &mut VmRuntime,
) -> Emulation {
    let phys_bits = guest_phys_bits(rt);
    let fetched = match fetch_insn(mem, state, phys_bits) {
        Ok(f) => f,
        Err(e) => return Emulation::translate_error(state, e),
    };
    let insn = match decode_string_io(fetched.as_slice(), CodeSize::of(state)) {
        Ok(i) if i.size == size => i,
        Err(DecodeError::Truncated) if fetched.rest.is_some() => {
            return match fetched.rest {
                Some(e) => Emulation::translate_error(state, e),
                None => Emulation::stop(StopReason::UnsupportedIo { port }),
            };
        }
        // Not the instruction that exited (the guest changed its code): it faults again.
        _ => return Emulation::stop(StopReason::UnsupportedIo { port }),
    };
    let io = StringIo {
        port,
        size,
        input: insn.input,
        rep: insn.rep,
        addr_size: insn.addr_size,
        segment: insn.segment,
    };
    let sys = state.sys;
    let paging = Paging::new(&sys, phys_bits).with_rflags(state.regs.rflags);
    let mut walker = PageWalker::new(paging, mem);
    match sio::string_io(&io, &mut state.regs, &sys, &mut walker, rt) {
        StringIoOutcome::Done => {
            state.regs.rip = next_rip;
            Emulation::resume(true)
        }
        StringIoOutcome::Continue => Emulation::resume(true),
        StringIoOutcome::PageFault(pf) => Emulation::page_fault(state, pf),
        StringIoOutcome::Port(PortWrite::DebugExit(code)) => Emulation {
            action: Action::Stop(StopReason::DebugExit(code)),
            write_back: true,
        },
        StringIoOutcome::Port(PortWrite::Reset(t)) => Emulation {
            action: Action::Reset(t),
            write_back: false,
        },
        StringIoOutcome::Port(PortWrite::Done | PortWrite::Unhandled) => Emulation::resume(true),
        StringIoOutcome::NotRam(n) => Emulation::stop(StopReason::NotRam { gpa: n.gpa }),
    }
}

#[cfg(test)]
mod tests;
