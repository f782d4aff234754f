//! Intel VMX on this CPU: IA32_FEATURE_CONTROL checked (locked with VMX outside SMX, or set and
//! locked here), CR0/CR4 fixed bits applied, CR4.VMXE and VMXON with the revision id in a
//! per-CPU VMXON region (SDM vol. 3C 24.7); VMXOFF on disable and in the emergency path (VMX
//! operation blocks INIT, 24.8). Decisions come from the `vmx` crate (`vmx::enable`); this file
//! sequences them and makes the `unsafe` calls into `vmx::hw`.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};

use hv::virt::{DisableError, EnableError};
use vmx::caps::{self, CapMsrs};
use vmx::ept::{Ept, Perms as EptPerms};
use vmx::exit::ExitSnapshot;
use vmx::guest::{self, GuestMode};
use vmx::host::HostState;
use vmx::{GuestPhys, HostPhys, VmcsField, VmxConfig, VmxExit, enable, hw};

use super::frames::HeapFrames;
use super::{Job, Reply, SelfTestError, SelfTestReport};
use crate::cpus::MAX_CPUS;

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// Per CPU: the VMXON region, allocated on the first enable and kept.
static VMXON_REGION: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU: CR0/CR4 before VMXON, restored after VMXOFF.
static SAVED_CR: [[AtomicU64; 2]; MAX_CPUS] =
    [const { [AtomicU64::new(0), AtomicU64::new(0)] }; MAX_CPUS];

fn region(cpu: usize, revision: u32) -> Option<u64> {
    let mut pa = VMXON_REGION[cpu].load(Ordering::Relaxed);
    if pa == 0 {
        let page: &'static mut Page = Box::leak(Box::new(Page([0; 4096])));
        page.0[..4].copy_from_slice(&enable::vmxon_region_header(revision).to_le_bytes());
        pa = crate::hw::virt_to_phys(page as *const Page as usize)?;
        VMXON_REGION[cpu].store(pa, Ordering::Relaxed);
    }
    Some(pa)
}

pub(super) fn read_caps() -> CapMsrs {
    // SAFETY: `read_with` only asks for the VMX capability MSRs that exist given the ones it
    // already read, and callers only get here when CPUID enumerates VMX.
    CapMsrs::read_with(|msr| unsafe { hw::rdmsr(msr) })
}

pub fn execute(cpu: usize, job: Job) -> Reply {
    match job {
        Job::Enable => Reply::Enable(enable(cpu)),
        Job::Disable => Reply::Disable(disable(cpu)),
        Job::EmergencyDisable => {
            emergency_disable();
            Reply::Done
        }
        Job::IsEnabled => Reply::IsEnabled(is_enabled()),
        Job::SelfTest => Reply::SelfTest(self_test(cpu)),
        // Answered by `arch::execute` before it gets here.
        Job::Seamcall { leaf, args } => Reply::Seamcall(super::seamcall::execute_here(leaf, args)),
    }
}

pub fn is_enabled() -> bool {
    enable::is_enabled(hw::read_cr4())
}

fn enable(cpu: usize) -> Result<(), EnableError> {
    let ecx = hw::cpuid(1, 0)[2];
    if ecx & caps::CPUID_1_ECX_VMX == 0 {
        return Err(EnableError::Unsupported);
    }
    let msrs = read_caps();
    let plan = enable::plan_enable(ecx, &msrs, hw::read_cr0(), hw::read_cr4())?;
    let pa = region(cpu, plan.revision_id).ok_or(EnableError::Failed { code: 1 })?;
    if let Some(value) = plan.feature_control {
        // SAFETY: the plan only asks to write IA32_FEATURE_CONTROL when it is unlocked, with
        // VMX-outside-SMX and the lock bit set: an allowed value.
        unsafe { hw::wrmsr(caps::MSR_IA32_FEATURE_CONTROL, value) };
    }
    SAVED_CR[cpu][0].store(plan.original_cr0, Ordering::Relaxed);
    SAVED_CR[cpu][1].store(plan.original_cr4, Ordering::Relaxed);
    // SAFETY: CR0/CR4 values are the current ones adjusted to the VMX fixed bits (the plan
    // refused anything the host cannot run with); `pa` is this CPU's 4 KiB-aligned VMXON
    // region with the revision id, not used by any other CPU.
    let result = unsafe {
        hw::write_cr0(plan.cr0);
        hw::write_cr4(plan.cr4);
        hw::vmxon(HostPhys(pa))
    };
    if let Err(fail) = result {
        // Roll back: never leave CR4.VMXE set without VMX operation.
        // SAFETY: restoring the values read before.
        unsafe {
            hw::write_cr4(plan.original_cr4);
            hw::write_cr0(plan.original_cr0);
        }
        return Err(enable::vmxon_error(fail));
    }
    Ok(())
}

fn disable(cpu: usize) -> Result<(), DisableError> {
    if !is_enabled() {
        return Ok(());
    }
    // Every guest VMCS still active here is written back and made clear first: after VMXOFF
    // this CPU could no longer do it, and its VM may launch on another CPU next.
    super::vmx_vcpu::clear_all_here(cpu);
    // SAFETY: CR4.VMXE is set and we turned VMX on, so we are in VMX root operation; no guest
    // VMCS is active here any more (cleared just above).
    unsafe { hw::vmxoff() }.map_err(enable::vmxoff_error)?;
    let cr4 = SAVED_CR[cpu][1].load(Ordering::Relaxed);
    let cr4 = if cr4 == 0 {
        enable::cr4_after_vmxoff(hw::read_cr4())
    } else {
        cr4
    };
    // SAFETY: outside VMX operation CR4.VMXE may be cleared; the rest is the pre-VMXON value.
    unsafe { hw::write_cr4(enable::cr4_after_vmxoff(cr4)) };
    Ok(())
}

/// VMXOFF whatever state we were in, then clear CR4.VMXE, so INIT is no longer blocked.
pub fn emergency_disable() {
    let cr4 = hw::read_cr4();
    if enable::is_enabled(cr4) {
        // SAFETY: CR4.VMXE set means VMXON may have run; VMXOFF outside VMX operation would
        // #UD, but with CR4.VMXE set and our own enable path, VMXON always succeeded or was
        // rolled back (clearing VMXE), so we are in VMX root operation here.
        unsafe {
            let _ = hw::vmxoff();
            hw::write_cr4(enable::cr4_after_vmxoff(cr4));
        }
    }
}

/// The host state of this CPU and task right now, for the VMCS host-state area: control
/// registers, selectors, the FS/GS bases Hermit uses (TLS, per-core data), this CPU's TSS,
/// GDT and IDT, and the SYSENTER/EFER/PAT MSRs.
pub(super) fn host_state() -> HostState {
    let (mut cs, mut ss, mut ds, mut es, mut fs, mut gs, mut tr): (
        u16,
        u16,
        u16,
        u16,
        u16,
        u16,
        u16,
    );
    let mut gdtr = [0u8; 10];
    let mut idtr = [0u8; 10];
    // SAFETY: reading segment selectors and the descriptor-table registers has no side effects;
    // SGDT/SIDT store 10 bytes into the given buffers.
    unsafe {
        core::arch::asm!(
            "mov {0:x}, cs", "mov {1:x}, ss", "mov {2:x}, ds", "mov {3:x}, es",
            "mov {4:x}, fs", "mov {5:x}, gs", "str {6:x}",
            out(reg) cs, out(reg) ss, out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs, out(reg) tr,
            options(nomem, nostack, preserves_flags)
        );
        core::arch::asm!("sgdt [{}]", in(reg) gdtr.as_mut_ptr(), options(nostack, preserves_flags));
        core::arch::asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack, preserves_flags));
    }
    let gdtr_base = u64::from_le_bytes(gdtr[2..10].try_into().unwrap_or([0; 8]));
    let idtr_base = u64::from_le_bytes(idtr[2..10].try_into().unwrap_or([0; 8]));
    // The TSS descriptor is a 16-byte system descriptor in the GDT (SDM vol. 3A 8.2.3).
    let desc = gdtr_base + u64::from(tr & !7);
    // SAFETY: `desc` is this CPU's TSS descriptor inside the GDT that Hermit loaded (identity-
    // mapped kernel memory); we only read its 16 bytes.
    let (lo, hi) = unsafe {
        (
            (desc as *const u64).read_volatile(),
            ((desc + 8) as *const u64).read_volatile(),
        )
    };
    let tr_base =
        ((lo >> 16) & 0xFF_FFFF) | (((lo >> 56) & 0xFF) << 24) | ((hi & 0xFFFF_FFFF) << 32);
    // SAFETY: these MSRs exist on every CPU with VMX (SDM vol. 4); reads have no side effects.
    let msr = |m: u32| unsafe { hw::rdmsr(m) };
    HostState {
        cr0: hw::read_cr0(),
        cr3: hw::read_cr3(),
        cr4: hw::read_cr4(),
        cs,
        ss,
        ds,
        es,
        fs,
        gs,
        tr,
        fs_base: msr(0xC000_0100),
        gs_base: msr(0xC000_0101),
        tr_base,
        gdtr_base,
        idtr_base,
        sysenter_cs: msr(0x174) as u32,
        sysenter_esp: msr(0x175),
        sysenter_eip: msr(0x176),
        efer: msr(0xC000_0080),
        pat: msr(0x277),
    }
}

/// Guest-physical address of the self-test's code page.
const TEST_GPA: u64 = 0x1000;
/// `cpuid; hlt`.
const TEST_CODE: [u8; 3] = [0x0F, 0xA2, 0xF4];
const ANSWER: [u64; 4] = [0x4865_726D, 0x6974_6167, 0x6520_4856, 0x2121_2121];

fn vmwrite(field: VmcsField, value: u64) -> Result<(), SelfTestError> {
    // SAFETY: only called with this CPU's self-test VMCS current (VMPTRLD above).
    unsafe { hw::vmwrite(field, value) }.map_err(|_| SelfTestError::Consistency)
}

fn vmread(field: VmcsField) -> u64 {
    // SAFETY: as for `vmwrite`.
    unsafe { hw::vmread(field) }.unwrap_or(0)
}

/// The VMLAUNCH round trip: a real-mode guest (unrestricted guest) under EPT executes CPUID
/// (exits, answered by us) and HLT (exits). Checks that the guest's registers survive.
fn self_test(cpu: usize) -> Result<SelfTestReport, SelfTestError> {
    if !is_enabled() {
        return Err(SelfTestError::NotEnabled);
    }
    let caps = read_caps();
    let cfg = VmxConfig::derive(&caps).map_err(|_| SelfTestError::Unsupported)?;
    let revision = enable::vmxon_region_header(caps.basic().revision_id);
    let mut vmcs = Box::new(Page([0; 4096]));
    vmcs.0[..4].copy_from_slice(&revision.to_le_bytes());
    let bitmap = Box::new(Page([0xFF; 4096]));
    let io_a = Box::new(Page([0xFF; 4096]));
    let io_b = Box::new(Page([0xFF; 4096]));
    let mut code = Box::new(Page([0xF4; 4096]));
    code.0[..TEST_CODE.len()].copy_from_slice(&TEST_CODE);
    let pa = |p: &Page| {
        crate::hw::virt_to_phys(p as *const Page as usize).ok_or(SelfTestError::NoMemory)
    };
    let (vmcs_pa, bitmap_pa, io_a_pa, io_b_pa, code_pa) =
        (pa(&vmcs)?, pa(&bitmap)?, pa(&io_a)?, pa(&io_b)?, pa(&code)?);

    let mut frames = HeapFrames::default();
    let mut ept = Ept::new(&mut frames).map_err(|_| SelfTestError::NoMemory)?;
    ept.map(
        &mut frames,
        GuestPhys(TEST_GPA),
        HostPhys(code_pa),
        4096,
        EptPerms::RWX,
    )
    .map_err(|_| SelfTestError::NoMemory)?;

    let mode = GuestMode::real_at(TEST_GPA as u32, 0x0FF0).ok_or(SelfTestError::Consistency)?;
    let setup = guest::build(mode, &cfg);
    guest::check_guest_state(&setup.state, &cfg).map_err(|_| SelfTestError::Consistency)?;
    let host = host_state();
    vmx::host::check_host_state(&host, &cfg).map_err(|_| SelfTestError::Consistency)?;

    // SAFETY: VMX is on here; `vmcs_pa` is a fresh, 4 KiB-aligned region with the revision id
    // that only this CPU uses; VMCLEAR initialises it, VMPTRLD makes it current.
    unsafe {
        hw::vmclear(HostPhys(vmcs_pa)).map_err(|_| SelfTestError::Consistency)?;
        hw::vmptrld(HostPhys(vmcs_pa)).map_err(|_| SelfTestError::Consistency)?;
    }
    let result = (|| {
        use VmcsField as F;
        vmwrite(F::PinBasedControls, u64::from(cfg.pin.bits()))?;
        vmwrite(F::PrimaryProcBasedControls, u64::from(cfg.primary.bits()))?;
        vmwrite(
            F::SecondaryProcBasedControls,
            u64::from(cfg.secondary.bits()),
        )?;
        vmwrite(F::VmExitControls, u64::from(cfg.exit.bits()))?;
        vmwrite(F::VmEntryControls, u64::from(setup.entry.bits()))?;
        vmwrite(F::ExceptionBitmap, 0)?;
        vmwrite(F::Cr3TargetCount, 0)?;
        vmwrite(F::VmExitMsrStoreCount, 0)?;
        vmwrite(F::VmExitMsrLoadCount, 0)?;
        vmwrite(F::VmEntryMsrLoadCount, 0)?;
        vmwrite(F::VmEntryInterruptionInfo, 0)?;
        vmwrite(F::MsrBitmap, bitmap_pa)?;
        if cfg.io_bitmaps() {
            vmwrite(F::IoBitmapA, io_a_pa)?;
            vmwrite(F::IoBitmapB, io_b_pa)?;
        }
        vmwrite(F::EptPointer, ept.eptp(false))?;
        if cfg.vpid() {
            vmwrite(F::Vpid, 1)?;
        }
        if cfg.preemption_timer() {
            // The longest budget: the round trip must not be cut short.
            vmwrite(F::VmxPreemptionTimerValue, u64::from(u32::MAX))?;
        }
        for (f, v) in setup.shadows.fields() {
            vmwrite(f, v)?;
        }
        for (f, v) in setup.state.fields(&cfg) {
            vmwrite(f, v)?;
        }
        for (f, v) in host.fields(&cfg) {
            vmwrite(f, v)?;
        }
        let mut regs = setup.regs;
        let canary = |i: u64| 0x5A5A_0000_0000_0000 | (i << 8) | i;
        (regs.rsi, regs.rdi, regs.rbp) = (canary(1), canary(2), canary(3));
        (regs.r8, regs.r12, regs.r15) = (canary(8), canary(12), canary(15));
        let expect = regs;
        let mut launched = false;
        let mut saw_cpuid = false;
        let ins_outs = caps.basic().ins_outs_info;
        for exits in 1..=64u32 {
            // SAFETY: the current VMCS was filled above from `cfg` with guest and host state
            // that passed our checks, EPT maps only the test page, bitmaps are owned pages;
            // the guest runs real-mode code that touches no FPU state.
            unsafe { hw::vmlaunch_or_resume(launched, &mut regs) }
                .map_err(|_| SelfTestError::Consistency)?;
            launched = true;
            let snap = ExitSnapshot::read(vmread, &regs, ins_outs);
            let reason = snap.reason;
            match vmx::exit::decode(&snap).exit {
                VmxExit::ExternalInterrupt { vector: Some(v) } if v >= 32 => {
                    // SAFETY: the exit acknowledged `v` ("acknowledge interrupt on exit") with
                    // interrupts off; Hermit's IDT handler for it sends the EOI.
                    unsafe { hw::dispatch_interrupt(v) };
                    continue;
                }
                VmxExit::ExternalInterrupt { .. } | VmxExit::Nmi | VmxExit::PreemptionTimer => {
                    continue;
                }
                VmxExit::Cpuid { next_rip } if !saw_cpuid => {
                    saw_cpuid = true;
                    (regs.rax, regs.rbx, regs.rcx, regs.rdx) =
                        (ANSWER[0], ANSWER[1], ANSWER[2], ANSWER[3]);
                    vmwrite(F::GuestRip, next_rip)?;
                }
                VmxExit::Hlt { .. } if saw_cpuid => {
                    let ok = (regs.rax, regs.rbx, regs.rcx, regs.rdx)
                        == (ANSWER[0], ANSWER[1], ANSWER[2], ANSWER[3])
                        && (regs.rsi, regs.rdi, regs.rbp) == (expect.rsi, expect.rdi, expect.rbp)
                        && (regs.r8, regs.r12, regs.r15) == (expect.r8, expect.r12, expect.r15)
                        && vmread(F::GuestRip) == TEST_GPA + 2;
                    return if ok {
                        Ok(SelfTestReport { exits })
                    } else {
                        Err(SelfTestError::RegistersCorrupted)
                    };
                }
                _ => {
                    return Err(SelfTestError::UnexpectedExit {
                        code: u64::from(reason),
                    });
                }
            }
        }
        Err(SelfTestError::NoHalt)
    })();
    // SAFETY: the self-test VMCS is ours; VMCLEAR flushes it and makes it not current before
    // its memory is freed.
    let _ = unsafe { hw::vmclear(HostPhys(vmcs_pa)) };
    let _ = cpu;
    result
}
