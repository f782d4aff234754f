//! One guest vCPU under SVM: its VMCB, general registers, FPU state, permission maps and nested
//! page tables over the guest's RAM, and one `run` = one VMRUN / #VMEXIT with the exit decoded
//! (instruction bytes fetched from guest RAM when the CPU has no NRIPS) and mapped to the
//! neutral exit by `svm::neutral`. What to do about the exit, what to inject and when to open
//! the interrupt window is decided by the run loop (`hv::vcpu::run`); this file only enters
//! the guest and writes what it is told into the VMCB.

use alloc::boxed::Box;

use hermit_sync::SpinMutex;
use svm::asid::{AsidAllocator, AsidTag};
use svm::exit::{self, DecodedExit, ExitSnapshot};
use svm::guest::{self, GuestConfig, GuestMode};
use svm::insn_len::InsnBytes;
use svm::npt::{NestedPageTable, Perms};
use svm::permmap::{IOPM_SIZE, Iopm, Msrpm};
use svm::regs::FxArea;
use svm::vmcb::{InterceptMisc1, InterruptState, TlbControl, VIntr, Vmcb};
use svm::{GuestPhys, GuestRegs, HostPhys, hw};

use hv::exit::{GuestView, RegUpdate};
use hv::vcpu::run::{Event, Exited, Interruptibility};

use super::frames::HeapFrames;
use super::vcpu::VcpuError;
use crate::cpus::MAX_CPUS;
use crate::hw::GuestRam;

/// Per-CPU ASID allocators; only the CPU itself touches its own (from its worker), so the lock
/// is never contended.
static ASIDS: [SpinMutex<Option<AsidAllocator>>; MAX_CPUS] =
    [const { SpinMutex::new(None) }; MAX_CPUS];

/// The I/O and MSR permission maps every SVM vCPU shares: every port access exits, and every MSR
/// access but those VMLOAD/VMSAVE switch (`svm::permmap::WORLD_SWITCHED_MSRS`). The CPU only reads them; allocated once, never freed (20 KiB saved per
/// VM). `None` if they are not physically contiguous (never, on Hermit's 2 MiB-backed heap).
static SHARED_MAPS: hermit_sync::OnceCell<Option<(HostPhys, HostPhys)>> =
    hermit_sync::OnceCell::new();

fn shared_maps() -> Option<(HostPhys, HostPhys)> {
    *SHARED_MAPS.get_or_init(|| {
        let iopm: &'static Iopm = Box::leak(Box::new(Iopm([0xFF; IOPM_SIZE])));
        let msrpm: &'static Msrpm = Box::leak(Box::new(Msrpm::for_guests()));
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
    /// The CPU's physical-address width (CPUID Fn8000_0008_EAX[7:0]) for those checks.
    phys_bits: u8,
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
            phys_bits: guest::phys_addr_bits(hw::cpuid(0x8000_0008, 0)[0]),
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

    /// Continue at `rip`: the instruction at the exit completed, so an STI / MOV-SS shadow
    /// ends with it (as KVM's skip of an emulated instruction; an `STI; HLT` would otherwise
    /// keep the shadow past the HLT and hold off the very interrupt it waits for).
    pub fn set_rip(&mut self, rip: u64) {
        self.vmcb.save.rip = rip;
        self.vmcb
            .control
            .interrupt_state
            .remove(InterruptState::INTERRUPT_SHADOW);
    }

    /// Deliver `ev` at the next VMRUN (EVENTINJ, APM 15.20).
    pub fn inject(&mut self, ev: Event) {
        self.vmcb.control.event_inj = svm::neutral::injection(ev).encode();
        self.checked = false;
    }

    /// RFLAGS.IF and the interrupt shadow as the last exit left them. GIF is set whenever the
    /// guest runs (CLGI/STGI are intercepted and raise #UD); NMI blocking is not tracked
    /// (nothing raises guest NMIs yet).
    pub fn interruptibility(&self) -> Interruptibility {
        Interruptibility {
            interrupts_enabled: self.vmcb.save.rflags & hv::vcpu::RFLAGS_IF != 0,
            shadow: self
                .vmcb
                .control
                .interrupt_state
                .contains(InterruptState::INTERRUPT_SHADOW),
            gif: true,
            nmi_blocked: false,
        }
    }

    /// Open or close the interrupt window the way KVM does (APM 15.21.4): a virtual interrupt
    /// pending (V_IRQ) at the highest priority and past the virtual TPR, with the VINTR
    /// intercept, so the guest exits as soon as it could take it.
    pub fn set_interrupt_window(&mut self, open: bool) {
        let c = &mut self.vmcb.control;
        c.vintr = c
            .vintr
            .with(VIntr::V_IRQ, open)
            .with(VIntr::V_IGN_TPR, open)
            .with_prio(if open { 0xF } else { 0 })
            .with_vector(0);
        c.intercept_misc1.set(InterceptMisc1::VINTR, open);
    }

    /// Enter the guest once on CPU `cpu` and decode why it left. `nrips` says whether the CPU
    /// reports next-RIP; without it, the instruction bytes at RIP are read from guest RAM.
    pub fn run(
        &mut self,
        cpu: usize,
        host_area: u64,
        ram: &mut GuestRam,
        nrips: bool,
    ) -> Result<Exited, u64> {
        self.assign_asid(cpu);
        if !self.checked {
            if guest::check_vmrun_consistency_with(&self.vmcb, self.phys_bits).is_err() {
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
            self.fetch_insn(ram)
        };
        let snap = ExitSnapshot::from_vmcb(&self.vmcb, &self.regs, nrips, insn);
        let decoded: DecodedExit = exit::decode(&snap).map_err(|_| code)?;
        let ctx = svm::neutral::ExitContext {
            exit_code: code,
            rax: self.vmcb.save.rax,
            rcx: self.regs.rcx,
            rflags: self.vmcb.save.rflags,
        };
        Ok(svm::neutral::exited(&decoded, ctx))
    }

    /// The instruction bytes at CS:RIP for the exit decoder (no NRIPS): with paging off the
    /// linear address is the physical one; with CR0.PG=1 it goes through the guest's page
    /// tables (`hv::vcpu::emulation::fetch_insn`). `None` if nothing can be fetched (the
    /// decoder then fails the exit).
    #[inline]
    fn fetch_insn(&self, ram: &mut GuestRam) -> Option<InsnBytes> {
        let save = &self.vmcb.save;
        if save.cr0 & hv::vcpu::CR0_PG == 0 {
            let linear = (save.cs.base.wrapping_add(save.rip) & 0xFFFF_FFFF) as usize;
            return ram
                .as_slice()
                .get(linear..(linear + 15).min(ram.len()))
                .map(InsnBytes::new);
        }
        self.fetch_insn_paged(ram)
    }

    /// [`fetch_insn`](Self::fetch_insn) with CR0.PG=1: through the guest's page tables.
    #[cold]
    #[inline(never)]
    fn fetch_insn_paged(&self, ram: &mut GuestRam) -> Option<InsnBytes> {
        let state = self.state();
        hv::vcpu::emulation::fetch_insn(ram.as_mut_slice(), &state, self.phys_bits)
            .ok()
            .map(|f| InsnBytes::new(f.as_slice()))
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
    /// What the exit handler needs to see of the guest.
    pub fn view(&self) -> GuestView {
        GuestView {
            rax: self.vmcb.save.rax,
            efer: (self.vmcb.save.efer - svm::vmcb::Efer::SVME).bits(),
        }
    }

    /// Apply a register update from the exit handler.
    pub fn apply(&mut self, rip: u64, u: &RegUpdate) {
        self.set_rip(rip);
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

fn seg_from(s: &svm::vmcb::Segment) -> hv::vcpu::Segment {
    hv::vcpu::Segment {
        selector: s.selector,
        base: s.base,
        limit: s.limit,
        attrs: s.attrib.0,
    }
}

fn seg_into(s: &hv::vcpu::Segment) -> svm::vmcb::Segment {
    svm::vmcb::Segment {
        selector: s.selector,
        attrib: svm::vmcb::SegAttrib(s.attrs),
        limit: s.limit,
        base: s.base,
    }
}

impl SvmVcpu {
    /// The full state: GPRs from the saved registers (RAX and RSP from the VMCB), the rest
    /// from the VMCB save area (its segment attributes are already the packed format the core
    /// uses, APM 15.5.1). EFER without SVME, as the guest sees it.
    pub fn state(&self) -> hv::vcpu::VcpuState {
        let s = &self.vmcb.save;
        let r = &self.regs;
        hv::vcpu::VcpuState {
            regs: hv::vcpu::Registers {
                gprs: [
                    s.rax, r.rcx, r.rdx, r.rbx, s.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10,
                    r.r11, r.r12, r.r13, r.r14, r.r15,
                ],
                rip: s.rip,
                rflags: s.rflags,
            },
            sys: self.sys(),
        }
    }

    /// Control registers, EFER (without SVME), segments and CPL from the save area.
    fn sys(&self) -> hv::vcpu::SystemRegisters {
        let s = &self.vmcb.save;
        hv::vcpu::SystemRegisters {
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: (s.efer - svm::vmcb::Efer::SVME).bits(),
            cs: seg_from(&s.cs),
            ss: seg_from(&s.ss),
            ds: seg_from(&s.ds),
            es: seg_from(&s.es),
            fs: seg_from(&s.fs),
            gs: seg_from(&s.gs),
            cpl: s.cpl,
        }
    }

    /// Write `st` back. GPRs, RIP, RFLAGS and CR2 are not subject to the VMRUN consistency
    /// checks; a change to CR0/CR3/CR4, EFER, a segment or CPL (the emulator never makes one)
    /// is written with the checks redone before the next VMRUN and its clean bits cleared
    /// (APM 15.15.3: CRx, SEG; CR2 always, when written).
    pub fn set_state(&mut self, st: &hv::vcpu::VcpuState) {
        use svm::vmcb::CleanBits;
        let g = &st.regs.gprs;
        let r = &mut self.regs;
        (r.rcx, r.rdx, r.rbx, r.rbp, r.rsi, r.rdi) = (g[1], g[2], g[3], g[5], g[6], g[7]);
        (r.r8, r.r9, r.r10, r.r11) = (g[8], g[9], g[10], g[11]);
        (r.r12, r.r13, r.r14, r.r15) = (g[12], g[13], g[14], g[15]);
        if self.vmcb.save.rip != st.regs.rip {
            // The emulated instruction completed: its shadow ends (see `set_rip`).
            self.set_rip(st.regs.rip);
        }
        let s = &mut self.vmcb.save;
        (s.rax, s.rsp, s.rflags) = (g[0], g[4], st.regs.rflags);
        let clean = &mut self.vmcb.control.clean_bits;
        if s.cr2 != st.sys.cr2 {
            s.cr2 = st.sys.cr2;
            clean.remove(CleanBits::CR2);
        }
        if self.sys() == st.sys {
            return;
        }
        let sys = &st.sys;
        let s = &mut self.vmcb.save;
        (s.cr0, s.cr3, s.cr4) = (sys.cr0, sys.cr3, sys.cr4);
        s.efer = svm::vmcb::Efer::from_bits_retain(sys.efer) | svm::vmcb::Efer::SVME;
        (s.cs, s.ss, s.ds) = (seg_into(&sys.cs), seg_into(&sys.ss), seg_into(&sys.ds));
        (s.es, s.fs, s.gs) = (seg_into(&sys.es), seg_into(&sys.fs), seg_into(&sys.gs));
        s.cpl = sys.cpl;
        self.vmcb
            .control
            .clean_bits
            .remove(CleanBits::CRX | CleanBits::SEG);
        self.checked = false;
    }
}
