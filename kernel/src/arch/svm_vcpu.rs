//! One guest vCPU under SVM: its VMCB, general registers, FPU state, permission maps and nested
//! page tables over the guest's RAM, and one `run` = one VMRUN / #VMEXIT with the exit decoded
//! (instruction bytes fetched from guest RAM when the CPU has no NRIPS). What to do about the
//! exit is decided elsewhere (`hv::exit`); this file only enters the guest and applies results.

use alloc::boxed::Box;

use hermit_sync::SpinMutex;
use svm::asid::{AsidAllocator, AsidTag};
use svm::exit::{self, DecodedExit, ExitSnapshot};
use svm::guest::{self, GuestConfig, GuestMode};
use svm::insn_len::InsnBytes;
use svm::npt::{NestedPageTable, Perms};
use svm::permmap::{IOPM_SIZE, Iopm, MSRPM_SIZE, Msrpm};
use svm::regs::FxArea;
use svm::vmcb::{Event, TlbControl, Vmcb};
use svm::{GuestPhys, GuestRegs, HostPhys, hw};

use hv::exit::{Exit, GuestView, RegUpdate};

use super::frames::HeapFrames;
use super::vcpu::VcpuError;
use crate::cpus::MAX_CPUS;
use crate::hw::GuestRam;

/// Per-CPU ASID allocators; only the CPU itself touches its own (from its worker), so the lock
/// is never contended.
static ASIDS: [SpinMutex<Option<AsidAllocator>>; MAX_CPUS] =
    [const { SpinMutex::new(None) }; MAX_CPUS];

/// The I/O and MSR permission maps every SVM vCPU shares: all ones, so every port and MSR access
/// of every guest exits. The CPU only reads them; allocated once, never freed (20 KiB saved per
/// VM). `None` if they are not physically contiguous (never, on Hermit's 2 MiB-backed heap).
static SHARED_MAPS: hermit_sync::OnceCell<Option<(HostPhys, HostPhys)>> =
    hermit_sync::OnceCell::new();

fn shared_maps() -> Option<(HostPhys, HostPhys)> {
    *SHARED_MAPS.get_or_init(|| {
        let iopm: &'static Iopm = Box::leak(Box::new(Iopm([0xFF; IOPM_SIZE])));
        let msrpm: &'static Msrpm = Box::leak(Box::new(Msrpm([0xFF; MSRPM_SIZE])));
        Some((HostPhys(phys_of(iopm)?), HostPhys(phys_of(msrpm)?)))
    })
}

pub struct SvmVcpu {
    vmcb: Box<Vmcb>,
    /// The VMCB's physical address (its box never moves), for every VMRUN.
    vmcb_pa: HostPhys,
    pub regs: GuestRegs,
    guest_fx: Box<FxArea>,
    host_fx: Box<FxArea>,
    _frames: HeapFrames,
    npt_root: HostPhys,
    /// The ASID this vCPU last had, and on which CPU.
    asid: Option<(usize, AsidTag)>,
    /// The VMCB passed the VMRUN consistency checks and nothing but GPRs and RIP changed
    /// since (the guest itself cannot make it inconsistent: the CPU checks what it writes).
    checked: bool,
}

impl core::fmt::Debug for SvmVcpu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SvmVcpu")
            .field("rip", &self.vmcb.save.rip)
            .finish_non_exhaustive()
    }
}

fn phys_of<T>(r: &T) -> Option<u64> {
    crate::hw::phys_contiguous(r as *const T as usize, core::mem::size_of::<T>())
}

impl SvmVcpu {
    /// A vCPU whose nested page tables map all of `ram` at guest-physical 0 (2 MiB pages).
    /// Every port and MSR access is intercepted.
    pub fn new(ram: &GuestRam) -> Result<SvmVcpu, VcpuError> {
        let mut frames = HeapFrames::default();
        let mut npt = NestedPageTable::new(&mut frames).map_err(|_| VcpuError::NoMemory)?;
        super::vcpu::map_guest_ram(ram, |gpa, hpa, len| {
            npt.map(&mut frames, GuestPhys(gpa), HostPhys(hpa), len, Perms::RWX)
        })?;
        let npt_root = npt.root();
        let vmcb = Box::new(Vmcb::ZERO);
        let vmcb_pa = HostPhys(phys_of(&*vmcb).ok_or(VcpuError::NotContiguous)?);
        Ok(SvmVcpu {
            vmcb,
            vmcb_pa,
            regs: GuestRegs::default(),
            guest_fx: Box::new(FxArea::default()),
            host_fx: Box::new(FxArea::default()),
            _frames: frames,
            npt_root,
            asid: None,
            checked: false,
        })
    }

    /// Architectural reset into `mode`: a fresh VMCB, registers and FPU state.
    pub fn reset(&mut self, mode: GuestMode) -> Result<(), VcpuError> {
        let Some((iopm, msrpm)) = shared_maps() else {
            return Err(VcpuError::NotContiguous);
        };
        // The ASID is (re)assigned per run; 1 here only satisfies the builder's contract.
        let cfg = GuestConfig {
            mode,
            asid: 1,
            iopm,
            msrpm,
            nested_cr3: self.npt_root,
        };
        guest::build_vmcb(&cfg, &mut self.vmcb, &mut self.regs);
        *self.guest_fx = FxArea::reset();
        self.asid = None;
        self.checked = false;
        Ok(())
    }

    pub fn set_rip(&mut self, rip: u64) {
        self.vmcb.save.rip = rip;
    }

    /// RFLAGS.IF of the guest.
    pub fn interrupts_enabled(&self) -> bool {
        self.vmcb.save.rflags & (1 << 9) != 0
    }

    /// Inject an exception at the next entry.
    pub fn inject(&mut self, vector: u8, error_code: Option<u32>) {
        self.vmcb.control.event_inj = Event::exception(vector, error_code).encode();
        self.checked = false;
    }

    /// Enter the guest once on CPU `cpu` and decode why it left. `nrips` says whether the CPU
    /// reports next-RIP; without it, the instruction bytes at RIP are read from guest RAM.
    pub fn run(
        &mut self,
        cpu: usize,
        host_area: u64,
        ram: &GuestRam,
        nrips: bool,
    ) -> Result<DecodedExit, u64> {
        self.assign_asid(cpu);
        if !self.checked {
            if guest::check_vmrun_consistency(&self.vmcb).is_err() {
                return Err(self.vmcb.control.exit_code);
            }
            self.checked = true;
        }
        // SAFETY: SVM is on on this CPU (the worker runs guests only while its CPU is online
        // and enabled) with its VM_HSAVE_PA page; `host_area` is this CPU's VMSAVE page; the
        // VMCB is ours (exclusively borrowed), passed the consistency check, and its nested
        // tables map only this guest's RAM; FPU state is switched around the entry.
        unsafe {
            hw::fxsave(&mut self.host_fx);
            hw::fxrstor(&self.guest_fx);
            hw::vmrun(self.vmcb_pa, HostPhys(host_area), &mut self.regs);
            hw::fxsave(&mut self.guest_fx);
            hw::fxrstor(&self.host_fx);
        }
        self.vmcb.control.event_inj = 0;
        self.vmcb.control.tlb_control = TlbControl::DoNothing as u8;
        let code = self.vmcb.control.exit_code;
        let insn = if nrips || !exit::ExitCode::from_raw(code).needs_insn_bytes(false) {
            None
        } else {
            let linear = self.vmcb.save.cs.base.wrapping_add(self.vmcb.save.rip) as usize;
            ram.as_slice()
                .get(linear..(linear + 15).min(ram.len()))
                .map(InsnBytes::new)
        };
        let snap = ExitSnapshot::from_vmcb(&self.vmcb, &self.regs, nrips, insn);
        exit::decode(&snap).map_err(|_| code)
    }

    fn assign_asid(&mut self, cpu: usize) {
        let mut slot = ASIDS[cpu].lock();
        let alloc = slot.get_or_insert_with(|| {
            let n = hw::cpuid(svm::caps::CPUID_SVM, 0)[1];
            AsidAllocator::new(n.max(2)).unwrap_or_else(|_| unreachable!())
        });
        let last = self.asid.filter(|(c, _)| *c == cpu).map(|(_, t)| t);
        let a = alloc.assign(last);
        self.asid = Some((cpu, a.tag));
        self.vmcb.control.guest_asid = a.tag.asid;
        self.vmcb.control.tlb_control = a.tlb_control as u8;
    }
}

impl SvmVcpu {
    /// The decoded SVM exit in the core's neutral vocabulary.
    pub fn neutral(&self, d: &DecodedExit) -> Exit {
        use svm::exit::SvmExit as S;
        match d.exit {
            S::Cpuid { next_rip } => Exit::Cpuid {
                leaf: self.vmcb.save.rax as u32,
                subleaf: self.regs.rcx as u32,
                next_rip,
            },
            S::Hlt { next_rip } => Exit::Hlt {
                next_rip,
                interrupts_enabled: self.interrupts_enabled(),
            },
            S::Io(io) => Exit::Io {
                port: io.port,
                size: io.size,
                write: if io.write {
                    io.value.or(Some(self.vmcb.save.rax as u32))
                } else {
                    None
                },
                string: io.string,
                rep: io.rep,
                next_rip: io.next_rip,
            },
            S::Msr(m) => Exit::Msr {
                index: m.index,
                write: m.write,
                next_rip: m.next_rip,
            },
            S::NestedPageFault(npf) => Exit::NestedPageFault {
                gpa: hv::exit::GuestPhys(npf.gpa.as_u64()),
                write: npf.write(),
                exec: npf.exec(),
            },
            S::Skip {
                insn: svm::insn_len::SkipInsn::Rdpmc,
                next_rip,
            } => Exit::Rdpmc {
                index: self.regs.rcx as u32,
                next_rip,
            },
            S::Shutdown => Exit::TripleFault,
            S::Vmmcall { .. } | S::SvmInstruction(_) => Exit::VirtInstruction,
            S::Intr | S::Nmi | S::Smi | S::Init | S::Vintr => Exit::ExternalInterrupt,
            S::Exception {
                vector, error_code, ..
            } => Exit::Exception { vector, error_code },
            S::VmrunFailed => Exit::EntryFailed {
                code: self.vmcb.control.exit_code,
            },
            _ => Exit::Unknown {
                code: self.vmcb.control.exit_code,
            },
        }
    }

    /// What the exit handler needs to see of the guest.
    pub fn view(&self) -> GuestView {
        GuestView {
            rax: self.vmcb.save.rax,
            efer: (self.vmcb.save.efer - svm::vmcb::Efer::SVME).bits(),
        }
    }

    /// Apply a register update from the exit handler.
    pub fn apply(&mut self, rip: u64, u: &RegUpdate) {
        self.vmcb.save.rip = rip;
        if let Some(v) = u.rax {
            self.vmcb.save.rax = v;
        }
        if let Some(v) = u.rbx {
            self.regs.rbx = v;
        }
        if let Some(v) = u.rcx {
            self.regs.rcx = v;
        }
        if let Some(v) = u.rdx {
            self.regs.rdx = v;
        }
        if let Some(v) = u.efer {
            // The guest's EFER always keeps SVME in the VMCB (VMRUN requires it).
            self.vmcb.save.efer = svm::vmcb::Efer::from_bits_retain(v) | svm::vmcb::Efer::SVME;
            self.checked = false;
        }
        if let Some(v) = u.pat {
            self.vmcb.save.g_pat = v;
            self.checked = false;
        }
    }
}
