//! One guest vCPU under Intel VMX: its VMCS, general registers, FPU state, MSR/I/O bitmaps
//! (every port access exits, and every MSR access but those the guest owns: `vmx::msrs`, with
//! the VM-entry/exit MSR lists that switch the ones without a VMCS field) and EPT over the guest's RAM (2 MiB pages), and one `run`
//! = one VMLAUNCH/VMRESUME to the next VM exit, with the exit read once and decoded by the
//! `vmx` crate. What to do about the exit is decided elsewhere (`hv::exit`).
//!
//! VMCS residency (SDM vol. 3C "VMCS Life Cycle"): a VMCS stays active on the CPU that last ran
//! it, across slices, and that CPU's list ([`ACTIVE`]) holds it. Before VMXOFF the disable path
//! VMCLEARs every VMCS on the list ([`clear_all_here`]), so a VM that then moves launches
//! afresh with VMLAUNCH on its next CPU; the launch/resume/reload decision is the pure
//! `vmx::residency::plan_entry`. A vCPU dropped while its VMCS is active somewhere leaves the
//! VMCS on that CPU's list; the list's reference keeps the page alive until that CPU VMCLEARs
//! it (at its next entry of any guest, or before VMXOFF), never freed while the CPU may still
//! write it back.
//!
//! Everything the run loop (`hv::vcpu::run`) asks to change (RIP, EFER, PAT, an injected event,
//! the interrupt window) and a reset are recorded here and written to the VMCS at the next
//! entry, on the CPU where it is current: `reset` may run on another thread and CPU than the
//! VM's. What the guest's interruptibility is, is read once at each exit, with the exit.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU16, Ordering};

use hermit_sync::SpinMutex;
use hv::exit::{GuestView, RegUpdate};
use hv::vcpu::run::{self as runloop, Exited, Interruptibility};
use vmx::controls::PrimaryControls;
use vmx::ept::{Ept, Perms};
use vmx::exit::{self, Event, EventType, ExitSnapshot, VmxExit};
use vmx::guest::{self, GuestMode, GuestSetup};
use vmx::regs::FxArea;
use vmx::residency::{self, Residency};
use vmx::{GuestPhys, GuestRegs, HostPhys, VmcsField as F, VmxConfig, enable, hw};

use super::frames::HeapFrames;
use super::vcpu::VcpuError;
use crate::cpus::MAX_CPUS;
use crate::hw::GuestRam;

/// `run` error codes that are not a VM-instruction error number (those are 1-28).
pub const CODE_VMFAIL_INVALID: u64 = 0x1_0000;
/// The VMCS is active on another CPU (a bug guard, see `vmx::residency`).
pub const CODE_ACTIVE_ELSEWHERE: u64 = 0x1_0001;
/// Host state failed our own check.
pub const CODE_HOST_STATE: u64 = 0x1_0002;
/// No physical address for a structure.
pub const CODE_NO_PHYS: u64 = 0x1_0003;

/// Budget of one entry on the VMX-preemption timer: twice the vCPU loop's time slice
/// (`vms.rs`, 5 ms). The APIC tick armed for the slice is the preemption tick proper and fires
/// first; the timer is the backstop that bounds each entry where the tick cannot make the guest
/// exit (see `vmx::controls::PIN_OPTIONAL`).
const ENTRY_BUDGET_US: u64 = 10_000;

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// A VMCS region and where it is active.
struct Vmcs {
    _page: Box<Page>,
    pa: u64,
    residency: SpinMutex<Residency>,
}

/// Per CPU: the VMCSs active on it (VMPTRLD there, no VMCLEAR since). Touched by that CPU's
/// worker (entries, VMCLEAR before VMXOFF) only, so the locks are not contended.
static ACTIVE: [SpinMutex<Vec<Arc<Vmcs>>>; MAX_CPUS] =
    [const { SpinMutex::new(Vec::new()) }; MAX_CPUS];

/// VPIDs handed out (0 is the host's). Translations are flushed at each VMLAUNCH, so a VPID
/// reused after wrapping cannot see another vCPU's translations.
static NEXT_VPID: AtomicU16 = AtomicU16::new(1);

fn next_vpid() -> u16 {
    loop {
        let v = NEXT_VPID.fetch_add(1, Ordering::Relaxed);
        if v != 0 {
            return v;
        }
    }
}

fn vmclear(vmcs: &Vmcs) {
    // SAFETY: called in VMX root operation on the CPU the VMCS is active on (its list), for a
    // VMCS region we own; VMCLEAR writes its data back and leaves it inactive and clear.
    let _ = unsafe { hw::vmclear(HostPhys(vmcs.pa)) };
    let mut r = vmcs.residency.lock();
    *r = r.cleared();
}

/// VMCLEAR every VMCS active on this CPU (`cpu`), before VMXOFF: afterwards none of them is
/// cached here, and their vCPUs launch afresh wherever they run next. Returns how many.
pub fn clear_all_here(cpu: usize) -> usize {
    let list = core::mem::take(&mut *ACTIVE[cpu].lock());
    for vmcs in &list {
        vmclear(vmcs);
    }
    list.len()
}

/// VMCLEAR and let go of the VMCSs on this CPU's list whose vCPU is gone.
pub fn reap(cpu: usize) {
    let mut list = ACTIVE[cpu].lock();
    list.retain(|v| {
        // Only the list holds it: its vCPU was dropped, nobody can run it again.
        if Arc::strong_count(v) == 1 {
            vmclear(v);
            false
        } else {
            true
        }
    });
}

/// What the exit handler asked for, written at the next entry.
#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    rip: Option<u64>,
    efer: Option<u64>,
    pat: Option<u64>,
    /// An event to inject, with the instruction length for software events.
    event: Option<(Event, u32)>,
    /// Interrupt-window exiting to turn on or off.
    window: Option<bool>,
    /// The guest interruptibility state to write (the shadow ended with a skipped instruction).
    interruptibility: Option<u32>,
}

/// Guest state read at the last exit (what `neutral` and `view` need besides the GPRs).
#[derive(Clone, Copy, Debug, Default)]
struct LastExit {
    reason: u32,
    rflags: u64,
    efer: u64,
    /// Guest interruptibility state (STI, MOV SS, NMI blocking).
    interruptibility: u32,
}

/// The MSR bitmap and I/O bitmaps A and B every VMX vCPU shares: every port access of every
/// guest exits, and every MSR access but those `vmx::msrs` lets the guest own. The CPU only reads them; allocated once, never freed
/// (12 KiB saved per VM). `None` if one has no physical address.
static SHARED_BITMAPS: hermit_sync::OnceCell<Option<(u64, u64, u64)>> =
    hermit_sync::OnceCell::new();

fn shared_bitmaps() -> Option<(u64, u64, u64)> {
    *SHARED_BITMAPS.get_or_init(|| {
        let page = || -> &'static Page { Box::leak(Box::new(Page([0xFF; 4096]))) };
        // Every MSR access exits but those the guest owns (`vmx::msrs`).
        let msrs: &'static Page = Box::leak(Box::new(Page(vmx::msrs::guest_bitmap())));
        Some((phys_of(msrs)?, phys_of(page())?, phys_of(page())?))
    })
}

pub struct VmxVcpu {
    vmcs: Arc<Vmcs>,
    cfg: VmxConfig,
    ins_outs_info: bool,
    pub regs: GuestRegs,
    guest_fx: Box<FxArea>,
    host_fx: Box<FxArea>,
    _frames: HeapFrames,
    eptp: u64,
    vpid: u16,
    /// Set by `reset`: the whole VMCS is written from it at the next entry.
    setup: Option<GuestSetup>,
    pending: Pending,
    last: LastExit,
    /// Interrupt-window exiting is on in the VMCS (off after a reset).
    window: bool,
    /// The VM-entry/VM-exit MSR lists of the MSRs the guest owns without a VMCS field.
    msr_areas: Box<vmx::msrs::MsrAreas>,
    /// Their physical address.
    msr_areas_pa: u64,
}

impl core::fmt::Debug for VmxVcpu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmxVcpu")
            .field("vpid", &self.vpid)
            .field("residency", &*self.vmcs.residency.lock())
            .finish_non_exhaustive()
    }
}

fn phys_of<T>(r: &T) -> Option<u64> {
    crate::hw::phys_contiguous(r as *const T as usize, core::mem::size_of::<T>())
}

/// VMWRITE to the current VMCS.
fn write(field: F, value: u64) -> Result<(), u64> {
    // SAFETY: only called from `VmxVcpu::run` after this vCPU's VMCS was made current on this
    // CPU (VMPTRLD or found current by VMPTRST), in VMX root operation; the values are the
    // ones `run` argues for at each call site.
    unsafe { hw::vmwrite(field, value) }.map_err(fail_code)
}

fn read(field: F) -> u64 {
    // SAFETY: as for `write`; VMREAD has no side effects.
    unsafe { hw::vmread(field) }.unwrap_or(0)
}

fn fail_code(f: vmx::vmcs::VmFail) -> u64 {
    match f {
        vmx::vmcs::VmFail::Invalid => CODE_VMFAIL_INVALID,
        vmx::vmcs::VmFail::Valid(e) => u64::from(e.raw()),
    }
}

impl VmxVcpu {
    /// A vCPU whose EPT maps all of `ram` at guest-physical 0 (2 MiB pages). Every port and
    /// MSR access exits.
    pub fn new(ram: &GuestRam) -> Result<VmxVcpu, VcpuError> {
        let caps = super::vmx::read_caps();
        let cfg = VmxConfig::derive(&caps).map_err(|_| VcpuError::Unsupported)?;
        let mut frames = HeapFrames::default();
        let mut ept = Ept::new(&mut frames).map_err(|_| VcpuError::NoMemory)?;
        super::vcpu::map_guest_ram(ram, |gpa, hpa, len| {
            ept.map(&mut frames, GuestPhys(gpa), HostPhys(hpa), len, Perms::RWX)
        })?;
        crate::hw::tsc_per_us();
        let mut page = Box::new(Page([0; 4096]));
        let revision = enable::vmxon_region_header(caps.basic().revision_id);
        page.0[..4].copy_from_slice(&revision.to_le_bytes());
        let pa = phys_of(&*page).ok_or(VcpuError::NotContiguous)?;
        let msr_areas = Box::new(vmx::msrs::MsrAreas::reset());
        let msr_areas_pa = phys_of(&*msr_areas).ok_or(VcpuError::NotContiguous)?;
        Ok(VmxVcpu {
            vmcs: Arc::new(Vmcs {
                _page: page,
                pa,
                residency: SpinMutex::new(Residency::Clear),
            }),
            cfg,
            ins_outs_info: caps.basic().ins_outs_info,
            regs: GuestRegs::default(),
            guest_fx: Box::new(FxArea::reset()),
            host_fx: Box::new(FxArea::reset()),
            _frames: frames,
            eptp: ept.eptp(false),
            vpid: if cfg.vpid() { next_vpid() } else { 0 },
            setup: None,
            pending: Pending::default(),
            last: LastExit::default(),
            window: false,
            msr_areas,
            msr_areas_pa,
        })
    }

    /// Architectural reset into `mode`: registers and FPU state now, the VMCS (controls and
    /// guest state, checked here the way VM entry will) at the next entry.
    pub fn reset(&mut self, mode: GuestMode) -> Result<(), VcpuError> {
        let setup = guest::build(mode, &self.cfg);
        guest::check_guest_state(&setup.state, &self.cfg).map_err(|_| VcpuError::Consistency)?;
        self.regs = setup.regs;
        *self.guest_fx = FxArea::reset();
        // The switched MSRs' reset values (the host's stay as captured).
        self.msr_areas.guest = vmx::msrs::MsrAreas::reset().guest;
        self.pending = Pending::default();
        self.last = LastExit {
            reason: 0,
            rflags: setup.state.rflags,
            efer: setup.state.efer,
            interruptibility: setup.state.interruptibility.bits(),
        };
        self.window = false;
        self.setup = Some(setup);
        Ok(())
    }

    /// Continue at `rip`: the instruction at the exit completed, so its STI / MOV-SS blocking
    /// ends with it (as KVM's skip of an emulated instruction; an `STI; HLT` would otherwise
    /// keep the shadow past the HLT and hold off the very interrupt it waits for).
    pub fn set_rip(&mut self, rip: u64) {
        self.pending.rip = Some(rip);
        self.end_shadow();
    }

    fn end_shadow(&mut self) {
        let shadow = guest::Interruptibility::STI | guest::Interruptibility::MOV_SS;
        let now = guest::Interruptibility::from_bits_retain(self.last.interruptibility);
        if now.intersects(shadow) {
            self.last.interruptibility = (now - shadow).bits();
            self.pending.interruptibility = Some(self.last.interruptibility);
        }
    }

    /// Deliver `ev` at the next entry (VM-entry interruption information; the error code only
    /// for vectors that push one, as VM entry checks: `vmx::neutral::injection`).
    pub fn inject(&mut self, ev: runloop::Event) {
        self.pending.event = Some(vmx::neutral::injection(ev));
    }

    /// RFLAGS.IF and the interruptibility state as the last exit left them (SDM vol. 3C
    /// "Guest Non-Register State"); there is no GIF under VMX.
    pub fn interruptibility(&self) -> Interruptibility {
        let blocking = guest::Interruptibility::from_bits_retain(self.last.interruptibility);
        Interruptibility {
            interrupts_enabled: self.last.rflags & hv::vcpu::RFLAGS_IF != 0,
            shadow: blocking
                .intersects(guest::Interruptibility::STI | guest::Interruptibility::MOV_SS),
            gif: true,
            nmi_blocked: blocking.contains(guest::Interruptibility::NMI),
        }
    }

    /// Turn interrupt-window exiting on or off at the next entry (SDM vol. 3C 26.7.5: the
    /// guest exits before its first instruction with RFLAGS.IF=1 and no STI/MOV-SS blocking).
    pub fn set_interrupt_window(&mut self, open: bool) {
        self.pending.window = Some(open);
    }

    /// The primary controls with interrupt-window exiting as `self.window` says. The control
    /// is allowed on every VMX implementation (it predates the capability MSRs' optional bits).
    fn primary(&self) -> PrimaryControls {
        let mut p = self.cfg.primary;
        p.set(PrimaryControls::INTERRUPT_WINDOW_EXITING, self.window);
        p
    }

    /// Write every control and guest-state field from a fresh reset.
    fn write_setup(&self, setup: &GuestSetup) -> Result<(), u64> {
        let cfg = &self.cfg;
        let Some((msr, io_a, io_b)) = shared_bitmaps() else {
            return Err(CODE_NO_PHYS);
        };
        write(F::PinBasedControls, u64::from(cfg.pin.bits()))?;
        write(
            F::PrimaryProcBasedControls,
            u64::from(self.primary().bits()),
        )?;
        write(
            F::SecondaryProcBasedControls,
            u64::from(cfg.secondary.bits()),
        )?;
        write(F::VmExitControls, u64::from(cfg.exit.bits()))?;
        write(F::VmEntryControls, u64::from(setup.entry.bits()))?;
        // Exceptions go to the guest's own IDT; a triple fault exits by itself.
        write(F::ExceptionBitmap, 0)?;
        write(F::Cr3TargetCount, 0)?;
        // The guest list is loaded at entry and stored at exit; the host list loaded at exit.
        let n = vmx::msrs::SWITCHED as u64;
        let guest_list = self.msr_areas_pa;
        let host_list = self.msr_areas_pa + vmx::msrs::MsrAreas::HOST_OFFSET;
        write(F::VmEntryMsrLoadAddr, guest_list)?;
        write(F::VmExitMsrStoreAddr, guest_list)?;
        write(F::VmExitMsrLoadAddr, host_list)?;
        write(F::VmExitMsrStoreCount, n)?;
        write(F::VmExitMsrLoadCount, n)?;
        write(F::VmEntryMsrLoadCount, n)?;
        write(F::VmEntryInterruptionInfo, 0)?;
        write(F::MsrBitmap, msr)?;
        if cfg.io_bitmaps() {
            write(F::IoBitmapA, io_a)?;
            write(F::IoBitmapB, io_b)?;
        }
        write(F::EptPointer, self.eptp)?;
        if cfg.vpid() {
            write(F::Vpid, u64::from(self.vpid))?;
        }
        for (f, v) in setup.shadows.fields() {
            write(f, v)?;
        }
        for (f, v) in setup.state.fields(cfg) {
            write(f, v)?;
        }
        Ok(())
    }

    /// Write what the handler asked for since the last exit.
    fn write_pending(&mut self) -> Result<(), u64> {
        let p = core::mem::take(&mut self.pending);
        if let Some(open) = p.window {
            self.window = open;
            write(
                F::PrimaryProcBasedControls,
                u64::from(self.primary().bits()),
            )?;
        }
        if let Some(rip) = p.rip {
            write(F::GuestRip, rip)?;
        }
        if let Some(v) = p.interruptibility {
            write(F::GuestInterruptibilityState, u64::from(v))?;
        }
        if let Some(efer) = p.efer {
            write(F::GuestIa32Efer, efer)?;
            let ia32e = efer & guest::EFER_LMA != 0;
            write(
                F::VmEntryControls,
                u64::from(self.cfg.entry_for(ia32e).bits()),
            )?;
        }
        if let (Some(pat), true) = (p.pat, self.cfg.pat_switched()) {
            write(F::GuestIa32Pat, pat)?;
        }
        if let Some((ev, len)) = p.event {
            let (info, code) = ev.injection();
            write(F::VmEntryInterruptionInfo, u64::from(info))?;
            if ev.error_code.is_some() {
                write(F::VmEntryExceptionErrorCode, u64::from(code))?;
            }
            if matches!(
                ev.kind,
                EventType::SoftwareInterrupt
                    | EventType::SoftwareException
                    | EventType::PrivilegedSoftwareException
            ) {
                write(F::VmEntryInstructionLength, u64::from(len))?;
            }
        }
        Ok(())
    }

    /// Make the VMCS current on `cpu` and ready: VMPTRLD if needed, the reset's fields, this
    /// CPU's host state, translations flushed on a first launch here, pending changes.
    /// Returns whether to VMLAUNCH.
    fn prepare(&mut self, cpu: usize) -> Result<bool, u64> {
        // SAFETY: VMX root operation (the worker runs guests only while VMX is on here).
        let current = unsafe { hw::vmptrst() } == self.vmcs.pa;
        let before = *self.vmcs.residency.lock();
        let plan =
            residency::plan_entry(before, cpu, current).map_err(|_| CODE_ACTIVE_ELSEWHERE)?;
        if plan.load {
            // SAFETY: the VMCS region is ours, carries the revision id, and is not active on
            // another CPU (the plan refused that); a clear one is VMCLEARed first to
            // initialise its launch state, then made current here.
            unsafe {
                if before == Residency::Clear {
                    hw::vmclear(HostPhys(self.vmcs.pa)).map_err(fail_code)?;
                }
                hw::vmptrld(HostPhys(self.vmcs.pa)).map_err(fail_code)?;
            }
            if before == Residency::Clear {
                ACTIVE[cpu].lock().push(self.vmcs.clone());
            }
            *self.vmcs.residency.lock() = before.entered(cpu, false);
        }
        if let Some(setup) = self.setup.take() {
            if let Err(e) = self.write_setup(&setup) {
                self.setup = Some(setup);
                return Err(e);
            }
        }
        if plan.write_host {
            // This CPU's values of the switched MSRs, restored at every exit here.
            self.msr_areas.capture_host(crate::hw::rdmsr);
            let host = super::vmx::host_state();
            vmx::host::check_host_state(&host, &self.cfg).map_err(|_| CODE_HOST_STATE)?;
            for (f, v) in host.fields(&self.cfg) {
                write(f, v)?;
            }
        }
        if plan.flush {
            // SAFETY: VMX root operation; the types come from the CPU's EPT/VPID capabilities
            // (INVEPT is required by `VmxConfig::derive`); invalidation only drops cached
            // translations.
            unsafe {
                if let Some(t) = self.cfg.ept_vpid.invept_for_guest() {
                    let _ = hw::invept(t, self.eptp);
                }
                if let (true, Some(t)) = (self.cfg.vpid(), self.cfg.ept_vpid.invvpid_for_guest()) {
                    let _ = hw::invvpid(t, self.vpid, 0);
                }
            }
        }
        self.write_pending()?;
        if self.cfg.preemption_timer() {
            let budget = self
                .cfg
                .preemption_timer_value(ENTRY_BUDGET_US, crate::hw::tsc_per_us());
            write(F::VmxPreemptionTimerValue, u64::from(budget))?;
        }
        Ok(plan.launch)
    }

    /// Enter the guest once on CPU `cpu` and decode why it left. A failed entry is `Err`
    /// with the VM-instruction error number (or a `CODE_*`); a VM-entry failure after guest
    /// state was loaded is an `Ok` exit that `neutral` maps to `EntryFailed`.
    pub fn run(&mut self, cpu: usize) -> Result<Exited, u64> {
        let launch = self.prepare(cpu)?;
        // SAFETY: the VMCS is current on this CPU with controls from `VmxConfig::derive`,
        // guest state that passed `check_guest_state` at reset, this CPU's host state (checked
        // by `check_host_state` when written), EPT mapping only this guest's RAM and bitmaps
        // that are owned pages; `launch` matches its launch state (`vmx::residency`). FPU
        // state is switched around the entry.
        let entered = unsafe {
            hw::fxsave(&mut self.host_fx);
            hw::fxrstor(&self.guest_fx);
            let r = hw::vmlaunch_or_resume(!launch, &mut self.regs);
            hw::fxsave(&mut self.guest_fx);
            hw::fxrstor(&self.host_fx);
            r
        };
        {
            let mut r = self.vmcs.residency.lock();
            *r = r.entered(cpu, entered.is_ok());
        }
        entered.map_err(fail_code)?;
        let snap = ExitSnapshot::read(read, &self.regs, self.ins_outs_info);
        self.last = LastExit {
            reason: snap.reason,
            rflags: read(F::GuestRflags),
            efer: read(F::GuestIa32Efer),
            interruptibility: read(F::GuestInterruptibilityState) as u32,
        };
        let decoded = exit::decode(&snap);
        // An event the exit interrupted: the run loop delivers it again at the next entry
        // (software events need the exit's instruction length for that).
        let len = if decoded.interrupted_event.is_some() {
            read(F::VmExitInstructionLength) as u32
        } else {
            0
        };
        match decoded.exit {
            VmxExit::ExternalInterrupt { vector: Some(v) } if v >= 32 => {
                // SAFETY: the exit acknowledged `v` from the local APIC ("acknowledge
                // interrupt on exit"); interrupts are off here (the world switch ran with
                // IF = 0 and the caller holds them off); Hermit's IDT handles every vector it
                // programs the APIC with, ending in EOI and IRET.
                unsafe { hw::dispatch_interrupt(v) };
            }
            VmxExit::Nmi => {
                // SAFETY: host context right after the NMI exit; gate 2 is Hermitage's NMI
                // handler (shootdown, else Hermit's).
                unsafe { hw::dispatch_nmi() };
            }
            VmxExit::EntryFailure { .. } => {
                // Launch state in doubt after a late entry failure: clear it (see
                // `Residency::entered`); the VMCS is current and active here.
                vmclear(&self.vmcs);
                ACTIVE[cpu].lock().retain(|v| !Arc::ptr_eq(v, &self.vmcs));
            }
            _ => {}
        }
        let ctx = vmx::neutral::ExitContext {
            reason: self.last.reason,
            rflags: self.last.rflags,
        };
        Ok(vmx::neutral::exited(&decoded, &self.regs, ctx, len))
    }

    /// What the exit handler needs to see of the guest.
    pub fn view(&self) -> GuestView {
        GuestView {
            rax: self.regs.rax,
            efer: self.last.efer,
        }
    }

    /// Apply a register update from the exit handler.
    pub fn apply(&mut self, rip: u64, u: &RegUpdate) {
        self.set_rip(rip);
        if let Some(v) = u.rax {
            self.regs.rax = v;
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
            self.pending.efer = Some(v);
            self.last.efer = v;
        }
        if let Some(v) = u.pat {
            self.pending.pat = Some(v);
        }
    }
}

/// The VMCS fields of one segment register: selector, base, limit, access rights.
const SEGMENTS: [(F, F, F, F); 6] = [
    (
        F::GuestEsSelector,
        F::GuestEsBase,
        F::GuestEsLimit,
        F::GuestEsAccessRights,
    ),
    (
        F::GuestCsSelector,
        F::GuestCsBase,
        F::GuestCsLimit,
        F::GuestCsAccessRights,
    ),
    (
        F::GuestSsSelector,
        F::GuestSsBase,
        F::GuestSsLimit,
        F::GuestSsAccessRights,
    ),
    (
        F::GuestDsSelector,
        F::GuestDsBase,
        F::GuestDsLimit,
        F::GuestDsAccessRights,
    ),
    (
        F::GuestFsSelector,
        F::GuestFsBase,
        F::GuestFsLimit,
        F::GuestFsAccessRights,
    ),
    (
        F::GuestGsSelector,
        F::GuestGsBase,
        F::GuestGsLimit,
        F::GuestGsAccessRights,
    ),
];

fn read_segment(i: usize) -> hv::vcpu::Segment {
    let (sel, base, limit, ar) = SEGMENTS[i];
    hv::vcpu::Segment {
        selector: read(sel) as u16,
        base: read(base),
        limit: read(limit) as u32,
        attrs: guest::AccessRights(read(ar) as u32).to_packed(),
    }
}

fn write_segment(i: usize, s: &hv::vcpu::Segment) {
    let (sel, base, limit, ar) = SEGMENTS[i];
    let _ = write(sel, u64::from(s.selector));
    let _ = write(base, s.base);
    let _ = write(limit, u64::from(s.limit));
    let _ = write(ar, u64::from(guest::AccessRights::from_packed(s.attrs).0));
}

impl VmxVcpu {
    /// The full state, by VMREAD of the current VMCS (valid in the exit path of a burst: the
    /// VMCS stays current on this CPU from the entry until the burst ends) plus the saved
    /// GPRs and CR2. CR0 and CR4 are the values the CPU runs with (the fixed bits applied;
    /// the guest's paging is what they select), CPL is SS.DPL (SDM vol. 3C 27.3.1).
    pub fn state(&self) -> hv::vcpu::VcpuState {
        let r = &self.regs;
        let [es, cs, ss, ds, fs, gs] = core::array::from_fn(read_segment);
        hv::vcpu::VcpuState {
            regs: hv::vcpu::Registers {
                gprs: [
                    r.rax,
                    r.rcx,
                    r.rdx,
                    r.rbx,
                    read(F::GuestRsp),
                    r.rbp,
                    r.rsi,
                    r.rdi,
                    r.r8,
                    r.r9,
                    r.r10,
                    r.r11,
                    r.r12,
                    r.r13,
                    r.r14,
                    r.r15,
                ],
                rip: self.pending.rip.unwrap_or_else(|| read(F::GuestRip)),
                rflags: read(F::GuestRflags),
            },
            sys: hv::vcpu::SystemRegisters {
                cr0: read(F::GuestCr0),
                cr2: r.cr2,
                cr3: read(F::GuestCr3),
                cr4: read(F::GuestCr4),
                efer: self.pending.efer.unwrap_or(self.last.efer),
                cs,
                ss,
                ds,
                es,
                fs,
                gs,
                cpl: ss.dpl(),
            },
        }
    }

    /// Write `st` back: GPRs and CR2 into the saved registers (loaded at entry), RSP, RIP and
    /// RFLAGS by VMWRITE; control registers, EFER and segments only if they changed (the
    /// emulator never changes them), EFER with the IA-32e entry control kept in step.
    pub fn set_state(&mut self, st: &hv::vcpu::VcpuState) {
        let before = self.state();
        let g = &st.regs.gprs;
        let r = &mut self.regs;
        (r.rax, r.rcx, r.rdx, r.rbx) = (g[0], g[1], g[2], g[3]);
        (r.rbp, r.rsi, r.rdi) = (g[5], g[6], g[7]);
        (r.r8, r.r9, r.r10, r.r11) = (g[8], g[9], g[10], g[11]);
        (r.r12, r.r13, r.r14, r.r15) = (g[12], g[13], g[14], g[15]);
        r.cr2 = st.sys.cr2;
        let _ = write(F::GuestRsp, g[4]);
        let _ = write(F::GuestRflags, st.regs.rflags);
        if before.regs.rip != st.regs.rip {
            // The emulated instruction completed: its shadow ends (see `set_rip`).
            self.end_shadow();
        }
        self.pending.rip = None;
        let _ = write(F::GuestRip, st.regs.rip);
        self.last.rflags = st.regs.rflags;
        let (old, new) = (&before.sys, &st.sys);
        if (old.cr0, old.cr3, old.cr4) != (new.cr0, new.cr3, new.cr4) {
            let _ = write(F::GuestCr0, new.cr0);
            let _ = write(F::GuestCr3, new.cr3);
            let _ = write(F::GuestCr4, new.cr4);
        }
        if old.efer != new.efer {
            self.apply(
                st.regs.rip,
                &RegUpdate {
                    efer: Some(new.efer),
                    ..RegUpdate::default()
                },
            );
        }
        let segs = [new.es, new.cs, new.ss, new.ds, new.fs, new.gs];
        let olds = [old.es, old.cs, old.ss, old.ds, old.fs, old.gs];
        for (i, (n, o)) in segs.iter().zip(olds.iter()).enumerate() {
            if n != o {
                write_segment(i, n);
            }
        }
    }
}
