//! String I/O (INS, OUTS, with or without REP), emulated through the guest's paging.
//!
//! Why: guests use `rep outsb` for console output and `rep insw` for ATA PIO; stopping the VM
//! on them, as before, ends any such guest. The exit tells us the port, width, direction, REP
//! and address size (SVM EXITINFO1, APM vol. 2 15.10.2; VMX exit qualification and instruction
//! information, SDM vol. 3C 28.2.1 and 28.2.5); the rest is the instruction's definition (SDM
//! vol. 2B "INS/INSB/INSW/INSD" and "OUTS/OUTSB/OUTSW/OUTSD", vol. 2B "REP"):
//!
//! * OUTS reads its element at `seg:rSI` (DS unless overridden) and INS writes at `ES:rDI`
//!   (never overridden); rSI/rDI then move by the element size, down if RFLAGS.DF = 1.
//! * The address size (16, 32 or 64) selects SI/ESI/RSI (and CX/ECX/RCX as the REP count):
//!   16-bit updates wrap within the low 16 bits and keep bits 63:16, 32-bit ones zero-extend.
//! * In 64-bit mode the DS/ES/SS/CS bases are 0 (SDM vol. 3A 3.4.4); elsewhere linear
//!   addresses are 32 bits.
//! * REP with a zero count does nothing; each completed element decrements the count, so a
//!   fault in the middle leaves rSI/rDI/rCX naming the faulting element, and re-executing the
//!   instruction after the #PF handler resumes exactly there.
//!
//! One call performs at most [`MAX_ITERATIONS`] elements and then asks to be re-entered at the
//! same RIP ([`StringIoOutcome::Continue`]): the guest gets its interrupts between rounds, as
//! the hardware takes them between iterations. For INS the destination is translated before
//! the port is read, so a fault loses no device data (a UART receive byte, an ATA word).
//! Segment limit and canonical-address checks (#GP/#SS) are not made.

use super::{Devices, IoSize, PortRead, PortWrite};
use crate::mem::{
    Access, GuestMemory, GuestPhys, GuestVirt, NotRam, PageFault, Translate, TranslateError,
};
use crate::vcpu::{Gpr, RFLAGS_DF, Registers, SystemRegisters};
use crate::vm::VmRuntime;

/// Most elements one call moves before returning [`StringIoOutcome::Continue`].
pub const MAX_ITERATIONS: u64 = 4096;

/// The address size of the instruction (from its mode and a 0x67 prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrSize {
    /// 16-bit: SI, DI, CX.
    A16,
    /// 32-bit: ESI, EDI, ECX.
    A32,
    /// 64-bit: RSI, RDI, RCX.
    A64,
}

impl AddrSize {
    /// The offset mask.
    pub const fn mask(self) -> u64 {
        match self {
            AddrSize::A16 => 0xFFFF,
            AddrSize::A32 => 0xFFFF_FFFF,
            AddrSize::A64 => u64::MAX,
        }
    }

    /// `old` with its low part replaced by `value` as a register write of this size does:
    /// 16-bit keeps bits 63:16, 32-bit and 64-bit write the whole register (zero-extended).
    pub const fn merge(self, old: u64, value: u64) -> u64 {
        match self {
            AddrSize::A16 => (old & !0xFFFF) | (value & 0xFFFF),
            AddrSize::A32 => value & 0xFFFF_FFFF,
            AddrSize::A64 => value,
        }
    }
}

/// A segment register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SegmentReg {
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
}

/// The decoded facts of a string-I/O exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StringIo {
    /// The port (DX).
    pub port: u16,
    /// The element width.
    pub size: IoSize,
    /// INS (port to memory) rather than OUTS.
    pub input: bool,
    /// A REP prefix: rCX elements.
    pub rep: bool,
    /// The address size.
    pub addr_size: AddrSize,
    /// The source segment of OUTS (DS or the override); ignored for INS, which always uses ES.
    pub segment: SegmentReg,
}

/// What the caller does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StringIoOutcome {
    /// The instruction completed: advance RIP past it.
    Done,
    /// Elements remain: re-enter the guest at the same RIP (it re-executes the instruction).
    Continue,
    /// Inject this #PF (CR2 = its address); RIP stays on the instruction.
    PageFault(PageFault),
    /// An OUTS element asked for a debug exit or a reset (the element counts as done): act on it
    /// as on a plain OUT.
    Port(PortWrite),
    /// The guest's page tables or the element lie outside RAM: stop the VM with the address.
    NotRam(NotRam),
}

/// The port side of string I/O: what IN and OUT do.
pub trait PortIo {
    /// IN of `size` from `port`.
    fn port_in(&mut self, port: u16, size: IoSize) -> PortRead;
    /// OUT of `value` to `port`.
    fn port_out(&mut self, port: u16, size: IoSize, value: u32) -> PortWrite;
}

impl PortIo for Devices {
    fn port_in(&mut self, port: u16, size: IoSize) -> PortRead {
        self.read(port, size)
    }

    fn port_out(&mut self, port: u16, size: IoSize, value: u32) -> PortWrite {
        self.write(port, size, value)
    }
}

/// The VM's devices, counting accesses no device claims as plain IN/OUT exits do.
impl PortIo for VmRuntime {
    fn port_in(&mut self, port: u16, size: IoSize) -> PortRead {
        let r = self.devices.read(port, size);
        if !r.handled {
            self.stats.unhandled_port_reads = self.stats.unhandled_port_reads.saturating_add(1);
        }
        r
    }

    fn port_out(&mut self, port: u16, size: IoSize, value: u32) -> PortWrite {
        let w = self.devices.write(port, size, value);
        if w == PortWrite::Unhandled {
            self.stats.unhandled_port_writes = self.stats.unhandled_port_writes.saturating_add(1);
        }
        w
    }
}

fn segment_base(sys: &SystemRegisters, seg: SegmentReg) -> u64 {
    let s = match seg {
        SegmentReg::Es => &sys.es,
        SegmentReg::Cs => &sys.cs,
        SegmentReg::Ss => &sys.ss,
        SegmentReg::Ds => &sys.ds,
        SegmentReg::Fs => &sys.fs,
        SegmentReg::Gs => &sys.gs,
    };
    if sys.mode64() && !matches!(seg, SegmentReg::Fs | SegmentReg::Gs) {
        0
    } else {
        s.base
    }
}

/// Translate `len` bytes at `la` (they may straddle a page): the guest-physical pieces.
fn translate_span<G: Translate + ?Sized>(
    guest: &G,
    la: u64,
    len: usize,
    access: Access,
    wrap32: bool,
) -> Result<[(GuestPhys, usize); 2], TranslateError> {
    let first = 0x1000 - (la & 0xFFF) as usize;
    let a = guest.translate(GuestVirt(la), access)?;
    if first >= len {
        return Ok([(a, len), (GuestPhys(0), 0)]);
    }
    let mut next = la.wrapping_add(first as u64);
    if wrap32 {
        next &= 0xFFFF_FFFF;
    }
    let b = guest.translate(GuestVirt(next), access)?;
    Ok([(a, first), (b, len - first)])
}

/// Run (part of) one INS or OUTS: up to [`MAX_ITERATIONS`] elements, updating rSI or rDI and,
/// with REP, rCX in `regs`. The caller advances RIP on [`StringIoOutcome::Done`] only.
pub fn string_io<G, P>(
    io: &StringIo,
    regs: &mut Registers,
    sys: &SystemRegisters,
    guest: &mut G,
    ports: &mut P,
) -> StringIoOutcome
where
    G: Translate + GuestMemory + ?Sized,
    P: PortIo + ?Sized,
{
    let asz = io.addr_size;
    let width = io.size.bytes() as usize;
    let (index, seg) = if io.input {
        (Gpr::Rdi, SegmentReg::Es)
    } else {
        (Gpr::Rsi, io.segment)
    };
    let base = segment_base(sys, seg);
    let wrap32 = !sys.mode64();
    let step = if regs.rflags & RFLAGS_DF != 0 {
        (width as u64).wrapping_neg()
    } else {
        width as u64
    };
    let access = Access {
        write: io.input,
        fetch: false,
        user: sys.cpl == 3,
    };
    let mut remaining = if io.rep {
        regs.get(Gpr::Rcx) & asz.mask()
    } else {
        1
    };
    let mut done = 0;
    while remaining > 0 {
        if done == MAX_ITERATIONS {
            return StringIoOutcome::Continue;
        }
        let offset = regs.get(index) & asz.mask();
        let mut la = base.wrapping_add(offset);
        if wrap32 {
            la &= 0xFFFF_FFFF;
        }
        let span = match translate_span(guest, la, width, access, wrap32) {
            Ok(s) => s,
            Err(TranslateError::PageFault(pf)) => return StringIoOutcome::PageFault(pf),
            Err(TranslateError::TableNotRam(e)) => return StringIoOutcome::NotRam(e),
        };
        let mut buf = [0u8; 4];
        let mut event = None;
        if io.input {
            let v = ports.port_in(io.port, io.size).value;
            buf = v.to_le_bytes();
            let mut at = 0;
            for (gpa, n) in span {
                if n > 0 {
                    if let Err(e) = guest.write(gpa, &buf[at..at + n]) {
                        return StringIoOutcome::NotRam(e);
                    }
                }
                at += n;
            }
        } else {
            let mut at = 0;
            for (gpa, n) in span {
                if n > 0 {
                    if let Err(e) = guest.read(gpa, &mut buf[at..at + n]) {
                        return StringIoOutcome::NotRam(e);
                    }
                }
                at += n;
            }
            match ports.port_out(io.port, io.size, u32::from_le_bytes(buf)) {
                PortWrite::Done | PortWrite::Unhandled => {}
                other => event = Some(other),
            }
        }
        regs.set(index, asz.merge(regs.get(index), offset.wrapping_add(step)));
        remaining -= 1;
        if io.rep {
            regs.set(Gpr::Rcx, asz.merge(regs.get(Gpr::Rcx), remaining));
        }
        done += 1;
        if let Some(e) = event {
            return StringIoOutcome::Port(e);
        }
    }
    StringIoOutcome::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::CpuidView;
    use crate::mem::{PageWalker, Paging};
    use crate::vcpu::{CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, Segment};
    use crate::vm::OnCrash;

    /// A scripted port: INs return successive values, OUTs are recorded.
    #[derive(Default)]
    struct FakePort {
        ins: Vec<u32>,
        reads: usize,
        outs: Vec<(u16, u32)>,
    }

    impl PortIo for FakePort {
        fn port_in(&mut self, _port: u16, size: IoSize) -> PortRead {
            let value = self.ins.get(self.reads).copied().unwrap_or(u32::MAX) & size.mask();
            self.reads += 1;
            PortRead {
                value,
                handled: true,
            }
        }
        fn port_out(&mut self, port: u16, _size: IoSize, value: u32) -> PortWrite {
            self.outs.push((port, value));
            PortWrite::Done
        }
    }

    /// Protected mode, paging off, flat 32-bit segments.
    fn flat32() -> SystemRegisters {
        SystemRegisters {
            cr0: CR0_PE,
            ..SystemRegisters::default()
        }
    }

    fn outs(port: u16, size: IoSize, rep: bool, addr_size: AddrSize) -> StringIo {
        StringIo {
            port,
            size,
            input: false,
            rep,
            addr_size,
            segment: SegmentReg::Ds,
        }
    }

    fn ins(port: u16, size: IoSize, rep: bool, addr_size: AddrSize) -> StringIo {
        StringIo {
            input: true,
            segment: SegmentReg::Ds, // ignored: INS uses ES
            ..outs(port, size, rep, addr_size)
        }
    }

    fn regs(rsi: u64, rdi: u64, rcx: u64) -> Registers {
        let mut r = Registers::default();
        r.set(Gpr::Rsi, rsi);
        r.set(Gpr::Rdi, rdi);
        r.set(Gpr::Rcx, rcx);
        r
    }

    fn run<P: PortIo>(
        io: &StringIo,
        r: &mut Registers,
        sys: &SystemRegisters,
        mem: &mut [u8],
        ports: &mut P,
    ) -> StringIoOutcome {
        let mut w = PageWalker::new(Paging::new(sys, 40), mem);
        string_io(io, r, sys, &mut w, ports)
    }

    fn console(d: &Devices) -> Vec<u8> {
        let mut out = vec![0; 256];
        let n = d.console.read(0, &mut out).copied;
        out.truncate(n);
        out
    }

    #[test]
    fn rep_outsb_to_the_uart_reaches_the_console() {
        let mut mem = vec![0u8; 0x10000];
        mem[0x1230..0x1236].copy_from_slice(b"hello\n");
        let mut d = Devices::new();
        let mut r = regs(0x1230, 0, 6);
        let io = outs(0x3F8, IoSize::Byte, true, AddrSize::A32);
        assert_eq!(
            run(&io, &mut r, &flat32(), &mut mem, &mut d),
            StringIoOutcome::Done
        );
        assert_eq!(console(&d), b"hello\n");
        assert_eq!((r.get(Gpr::Rsi), r.get(Gpr::Rcx)), (0x1236, 0));
    }

    #[test]
    fn outs_uses_the_segment_base_and_override() {
        let mut mem = vec![0u8; 0x10000];
        mem[0x2010..0x2014].copy_from_slice(&0xCAFE_F00Du32.to_le_bytes());
        let mut sys = flat32();
        sys.fs = Segment {
            base: 0x2000,
            ..Segment::default()
        };
        sys.ds.base = 0x9000;
        let mut p = FakePort::default();
        let mut r = regs(0x10, 0, 77);
        let mut io = outs(0x80, IoSize::Dword, false, AddrSize::A32);
        io.segment = SegmentReg::Fs;
        assert_eq!(
            run(&io, &mut r, &sys, &mut mem, &mut p),
            StringIoOutcome::Done
        );
        assert_eq!(p.outs, [(0x80, 0xCAFE_F00D)]);
        assert_eq!(r.get(Gpr::Rsi), 0x14);
        assert_eq!(r.get(Gpr::Rcx), 77, "no REP: rCX untouched");
    }

    #[test]
    fn rep_insw_fills_memory_at_es_rdi() {
        let mut mem = vec![0u8; 0x10000];
        let mut sys = flat32();
        sys.es.base = 0x4000;
        sys.ds.base = 0x8000;
        let mut p = FakePort {
            ins: vec![0x1111, 0x2222, 0x3333],
            ..FakePort::default()
        };
        let mut r = regs(0, 0x100, 3);
        let io = ins(0x1F0, IoSize::Word, true, AddrSize::A32);
        assert_eq!(
            run(&io, &mut r, &sys, &mut mem, &mut p),
            StringIoOutcome::Done
        );
        assert_eq!(&mem[0x4100..0x4106], &[0x11, 0x11, 0x22, 0x22, 0x33, 0x33]);
        assert!(mem[0x8000..0x8200].iter().all(|&b| b == 0));
        assert_eq!((r.get(Gpr::Rdi), r.get(Gpr::Rcx)), (0x106, 0));
    }

    #[test]
    fn ins_from_devices_counts_unclaimed_ports() {
        let cpuid = CpuidView::from_host(|_, _| [0; 4], None);
        let mut vm = Box::new(VmRuntime::new(cpuid, OnCrash::Reset));
        let mut mem = vec![0u8; 0x1000];
        let mut r = regs(0, 0x10, 2);
        let io = ins(0x80, IoSize::Byte, true, AddrSize::A32);
        assert_eq!(
            run(&io, &mut r, &flat32(), &mut mem, &mut *vm),
            StringIoOutcome::Done
        );
        assert_eq!(&mem[0x10..0x13], &[0xFF, 0xFF, 0]);
        assert_eq!(vm.stats.unhandled_port_reads, 2);
        // The UART line status register answers.
        let mut r = regs(0, 0x20, 1);
        let io = ins(0x3FD, IoSize::Byte, true, AddrSize::A32);
        run(&io, &mut r, &flat32(), &mut mem, &mut *vm);
        assert_eq!(mem[0x20], 0x60);
        assert_eq!(vm.stats.unhandled_port_reads, 2);
        // OUTS to an unclaimed port counts too.
        let mut r = regs(0, 0, 3);
        let io = outs(0x80, IoSize::Byte, true, AddrSize::A32);
        run(&io, &mut r, &flat32(), &mut mem, &mut *vm);
        assert_eq!(vm.stats.unhandled_port_writes, 3);
    }

    #[test]
    fn rep_with_zero_count_does_nothing() {
        let mut mem = vec![0x41u8; 0x1000];
        let mut p = FakePort::default();
        let mut r = regs(0x10, 0x20, 0xFFFF_0000);
        // 16-bit address size: CX = 0 although RCX is not.
        let io = outs(0x3F8, IoSize::Byte, true, AddrSize::A16);
        assert_eq!(
            run(&io, &mut r, &flat32(), &mut mem, &mut p),
            StringIoOutcome::Done
        );
        let io = ins(0x3F8, IoSize::Byte, true, AddrSize::A16);
        assert_eq!(
            run(&io, &mut r, &flat32(), &mut mem, &mut p),
            StringIoOutcome::Done
        );
        assert!(p.outs.is_empty());
        assert_eq!(p.reads, 0);
        assert_eq!(r, regs(0x10, 0x20, 0xFFFF_0000));
    }

    #[test]
    fn direction_flag_walks_down() {
        let mut mem = vec![0u8; 0x1000];
        mem[0x100..0x103].copy_from_slice(b"abc");
        let mut d = Devices::new();
        let mut r = regs(0x102, 0, 3);
        r.rflags = RFLAGS_DF | 2;
        let io = outs(0x3F8, IoSize::Byte, true, AddrSize::A32);
        assert_eq!(
            run(&io, &mut r, &flat32(), &mut mem, &mut d),
            StringIoOutcome::Done
        );
        assert_eq!(console(&d), b"cba");
        assert_eq!(r.get(Gpr::Rsi), 0xFF);
        // Dwords step by 4.
        let mut p = FakePort {
            ins: vec![1, 2],
            ..FakePort::default()
        };
        let mut r = regs(0, 0x208, 2);
        r.rflags = RFLAGS_DF;
        let io = ins(0x1F0, IoSize::Dword, true, AddrSize::A32);
        run(&io, &mut r, &flat32(), &mut mem, &mut p);
        assert_eq!(&mem[0x204..0x20C], &[2, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(r.get(Gpr::Rdi), 0x200);
    }

    #[test]
    fn sixteen_bit_addresses_wrap() {
        let mut mem = vec![0u8; 0x2_0000];
        let mut sys = SystemRegisters::default(); // real mode
        sys.es.base = 0x1_0000;
        let mut p = FakePort {
            ins: vec![0xA1, 0xA2],
            ..FakePort::default()
        };
        let mut r = regs(0, 0xDEAD_0000_FFFF, 0x1234_0002);
        let io = ins(0x60, IoSize::Byte, true, AddrSize::A16);
        assert_eq!(
            run(&io, &mut r, &sys, &mut mem, &mut p),
            StringIoOutcome::Done
        );
        assert_eq!((mem[0x1_FFFF], mem[0x1_0000]), (0xA1, 0xA2));
        assert_eq!(
            r.get(Gpr::Rdi),
            0xDEAD_0000_0001,
            "DI wraps, bits 63:16 kept"
        );
        assert_eq!(r.get(Gpr::Rcx), 0x1234_0000, "CX counts, bits 63:16 kept");
        // 32-bit address size zero-extends.
        let mut r = regs(0xFFFF_FFFF_FFFF_FFFF, 0, 1);
        let mut p = FakePort::default();
        let io = outs(0x80, IoSize::Byte, true, AddrSize::A32);
        mem[0xFFFF] = 0x77;
        let mut sys = flat32();
        sys.ds.base = 0x1_0000; // linear 0x1_0000 + 0xFFFF_FFFF wraps to 0xFFFF in 32 bits
        assert_eq!(
            run(&io, &mut r, &sys, &mut mem, &mut p),
            StringIoOutcome::Done
        );
        assert_eq!(p.outs, [(0x80, 0x77)]);
        assert_eq!(r.get(Gpr::Rsi), 0);
    }

    /// 4-level paging: VA 0x1000 -> PA 0x8000 and VA 0x3000 -> PA 0x5000 (user, writable);
    /// VA 0x2000 not present.
    fn paged() -> (Vec<u8>, SystemRegisters) {
        let mut mem = vec![0u8; 0x10000];
        let put = |m: &mut [u8], at: usize, v: u64| m[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut mem, 0xA000, 0xB000 | 7);
        put(&mut mem, 0xB000, 0xC000 | 7);
        put(&mut mem, 0xC000, 0xD000 | 7);
        put(&mut mem, 0xD000 + 8, 0x8000 | 7);
        put(&mut mem, 0xD000 + 3 * 8, 0x5000 | 7);
        let mut sys = SystemRegisters {
            cr0: CR0_PE | CR0_PG,
            cr3: 0xA000,
            cr4: CR4_PAE,
            efer: EFER_LMA,
            ..SystemRegisters::default()
        };
        sys.cs.attrs = 1 << 9; // 64-bit code
        sys.ds.base = 0x4000_0000; // ignored in 64-bit mode
        (mem, sys)
    }

    #[test]
    fn fault_in_the_middle_leaves_registers_at_the_faulting_element() {
        let (mut mem, mut sys) = paged();
        mem[0x8FFE..0x9000].copy_from_slice(b"ok");
        sys.cpl = 3;
        let mut p = FakePort::default();
        let mut r = regs(0x1FFE, 0, 4);
        let io = outs(0x3F8, IoSize::Byte, true, AddrSize::A64);
        assert_eq!(
            run(&io, &mut r, &sys, &mut mem, &mut p),
            StringIoOutcome::PageFault(PageFault {
                address: GuestVirt(0x2000),
                error_code: 4, // not present, read, user
            })
        );
        assert_eq!(p.outs, [(0x3F8, u32::from(b'o')), (0x3F8, u32::from(b'k'))]);
        assert_eq!((r.get(Gpr::Rsi), r.get(Gpr::Rcx)), (0x2000, 2));
        // INS into the missing page: the port is not read, nothing moves.
        let mut r = regs(0, 0x2000, 3);
        let io = ins(0x1F0, IoSize::Word, true, AddrSize::A64);
        assert_eq!(
            run(&io, &mut r, &sys, &mut mem, &mut p),
            StringIoOutcome::PageFault(PageFault {
                address: GuestVirt(0x2000),
                error_code: 2 | 4,
            })
        );
        assert_eq!(p.reads, 0);
        assert_eq!(r, regs(0, 0x2000, 3));
    }

    #[test]
    fn an_element_may_straddle_two_pages() {
        let (mut mem, sys) = paged();
        let mut p = FakePort {
            ins: vec![0xBBAA],
            ..FakePort::default()
        };
        // VA 0x3FFF is PA 0x5FFF; VA 0x4000 is not mapped: the whole element faults first.
        let mut r = regs(0, 0x3FFF, 1);
        let io = ins(0x1F0, IoSize::Word, true, AddrSize::A64);
        assert!(matches!(
            run(&io, &mut r, &sys, &mut mem, &mut p),
            StringIoOutcome::PageFault(PageFault {
                address: GuestVirt(0x4000),
                ..
            })
        ));
        assert_eq!((p.reads, mem[0x5FFF]), (0, 0));
        // VA 0x1FFF (PA 0x8FFF) .. with VA 0x2000 mapped to PA 0x5000 now.
        mem[0xD010..0xD018].copy_from_slice(&(0x5000u64 | 7).to_le_bytes());
        let mut r = regs(0, 0x1FFF, 1);
        assert_eq!(
            run(&io, &mut r, &sys, &mut mem, &mut p),
            StringIoOutcome::Done
        );
        assert_eq!((mem[0x8FFF], mem[0x5000]), (0xAA, 0xBB));
    }

    #[test]
    fn long_rep_returns_to_the_guest_between_rounds() {
        let mut mem = vec![0u8; 0x4000];
        let mut p = FakePort::default();
        let mut r = regs(0, 0, 5000);
        let io = outs(0x80, IoSize::Byte, true, AddrSize::A32);
        assert_eq!(
            run(&io, &mut r, &flat32(), &mut mem, &mut p),
            StringIoOutcome::Continue
        );
        assert_eq!(p.outs.len() as u64, MAX_ITERATIONS);
        assert_eq!(r.get(Gpr::Rcx), 5000 - MAX_ITERATIONS);
        assert_eq!(r.get(Gpr::Rsi), MAX_ITERATIONS);
        assert_eq!(
            run(&io, &mut r, &flat32(), &mut mem, &mut p),
            StringIoOutcome::Done
        );
        assert_eq!(p.outs.len(), 5000);
        assert_eq!(r.get(Gpr::Rcx), 0);
    }

    #[test]
    fn debug_exit_and_memory_holes_end_the_instruction() {
        let mut mem = vec![0u8; 0x1000];
        mem[0..4].copy_from_slice(&3u32.to_le_bytes());
        let mut d = Devices::new();
        let mut r = regs(0, 0, 2);
        let io = outs(0xF4, IoSize::Dword, true, AddrSize::A32);
        assert_eq!(
            run(&io, &mut r, &flat32(), &mut mem, &mut d),
            StringIoOutcome::Port(PortWrite::DebugExit(3))
        );
        assert_eq!((r.get(Gpr::Rsi), r.get(Gpr::Rcx)), (4, 1));
        let mut r = regs(0x1000, 0, 1);
        assert_eq!(
            run(&io, &mut r, &flat32(), &mut mem, &mut d),
            StringIoOutcome::NotRam(NotRam {
                gpa: GuestPhys(0x1000)
            })
        );
        assert_eq!(r.get(Gpr::Rsi), 0x1000);
    }
}
