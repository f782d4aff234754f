//! Intel VMX on this CPU: IA32_FEATURE_CONTROL checked (locked with VMX outside SMX, or set and
//! locked here), CR0/CR4 fixed bits applied, CR4.VMXE and VMXON with the revision id in a
//! per-CPU VMXON region (SDM vol. 3C 24.7); VMXOFF on disable and in the emergency path (VMX
//! operation blocks INIT, 24.8). Decisions come from the `vmx` crate (`vmx::enable`); this file
//! sequences them and makes the `unsafe` calls into `vmx::hw`.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};

use hv::virt::{DisableError, EnableError};
use vmx::caps::{self, CapMsrs};
use vmx::enable;
use vmx::{HostPhys, hw};

use super::{Job, Reply, SelfTestError};
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

fn read_caps() -> CapMsrs {
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
        // The VMLAUNCH round trip needs the VMCS setup of the VMX guest path, not built yet:
        // reported as such, never faked.
        Job::SelfTest => Reply::SelfTest(if is_enabled() {
            Err(SelfTestError::Unsupported)
        } else {
            Err(SelfTestError::NotEnabled)
        }),
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
    // SAFETY: CR4.VMXE is set and we turned VMX on, so we are in VMX root operation; no VMCS is
    // current that anyone still needs (guests are parked before a CPU goes offline).
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
