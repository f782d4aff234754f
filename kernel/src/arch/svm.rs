//! AMD SVM on this CPU: EFER.SVME with a host save area (APM vol. 2 §15.4, §15.30.4), the
//! emergency disable (STGI first: GIF=0 blocks INIT, §15.17), and the bring-up self-test: a
//! real VMRUN / #VMEXIT round trip with a tiny real-mode guest that executes CPUID and HLT
//! under nested paging. Decisions come from the `svm` crate; this file only sequences them and
//! makes the `unsafe` calls into `svm::hw`.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};

use hv::virt::{DisableError, EnableError};
use svm::caps::{self, MSR_VM_CR, MSR_VM_HSAVE_PA, SvmUnavailable};
use svm::exit::{self, ExitSnapshot, SvmExit};
use svm::guest::{self, GuestConfig, GuestMode};
use svm::insn_len::InsnBytes;
use svm::npt::{NestedPageTable, Perms};
use svm::permmap::{Iopm, Msrpm};
use svm::vmcb::{Efer, Vmcb};
use svm::{GuestPhys, GuestRegs, HostPhys, hw};

use super::frames::HeapFrames;
use super::{Job, Reply, SelfTestError, SelfTestReport};
use crate::cpus::MAX_CPUS;

/// A 4 KiB page that lies in one physical page.
#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// Per CPU: the VM_HSAVE_PA page and the page our world switch VMSAVEs host state to.
/// Allocated on the first enable, kept for the life of the hypervisor.
static HSAVE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static HOST_AREA: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

fn page_for(slot: &AtomicU64) -> Option<u64> {
    let pa = slot.load(Ordering::Relaxed);
    if pa != 0 {
        return Some(pa);
    }
    let page: &'static mut Page = Box::leak(Box::new(Page([0; 4096])));
    let pa = crate::hw::virt_to_phys(page as *const Page as usize)?;
    slot.store(pa, Ordering::Relaxed);
    Some(pa)
}

pub fn execute(cpu: usize, job: Job) -> Reply {
    match job {
        Job::Enable => Reply::Enable(enable(cpu)),
        Job::Disable => Reply::Disable(disable()),
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

/// This CPU's host VMSAVE page (0 before SVM was first enabled here).
pub fn host_area(cpu: usize) -> u64 {
    HOST_AREA[cpu].load(Ordering::Relaxed)
}

pub fn is_enabled() -> bool {
    hw::read_efer().contains(Efer::SVME)
}

fn enable(cpu: usize) -> Result<(), EnableError> {
    let ext = hw::cpuid(caps::CPUID_EXT_FEATURES, 0);
    if ext[2] & caps::CPUID_EXT_ECX_SVM == 0 {
        return Err(EnableError::Unsupported);
    }
    let leaf = hw::cpuid(caps::CPUID_SVM, 0);
    // SAFETY: VM_CR exists on every CPU that enumerates SVM (APM §15.30.1); we run in ring 0.
    let vm_cr = unsafe { hw::rdmsr(MSR_VM_CR) };
    caps::detect(ext[2], leaf[0], leaf[1], leaf[3], vm_cr).map_err(|e| match e {
        SvmUnavailable::DisabledByFirmware { .. } => EnableError::Disabled,
        _ => EnableError::Unsupported,
    })?;
    let efer = hw::read_efer();
    if efer.contains(Efer::SVME) {
        return Err(EnableError::Busy);
    }
    let hsave = page_for(&HSAVE[cpu]).ok_or(EnableError::Failed { code: 1 })?;
    page_for(&HOST_AREA[cpu]).ok_or(EnableError::Failed { code: 1 })?;
    // SAFETY: `hsave` is a 4 KiB-aligned page we own for good, below the physical-address
    // limit (it is RAM); setting EFER.SVME with SVM enumerated and not disabled is allowed.
    unsafe {
        hw::wrmsr(MSR_VM_HSAVE_PA, hsave);
        hw::write_efer(efer | Efer::SVME);
    }
    if !is_enabled() {
        return Err(EnableError::Failed { code: 2 });
    }
    Ok(())
}

fn disable() -> Result<(), DisableError> {
    let efer = hw::read_efer();
    if efer.contains(Efer::SVME) {
        // SAFETY: clearing EFER.SVME outside guest execution is always allowed; GIF is 1 here
        // (our world switch always ends with STGI).
        unsafe { hw::write_efer(efer - Efer::SVME) };
    }
    if is_enabled() {
        Err(DisableError::Failed { code: 3 })
    } else {
        Ok(())
    }
}

/// Turn SVM off whatever state we were in: set GIF (it may be 0 if we were interrupted inside
/// the world switch) so INIT is not blocked, then clear EFER.SVME.
pub fn emergency_disable() {
    let efer = hw::read_efer();
    if efer.contains(Efer::SVME) {
        // SAFETY: STGI is valid while EFER.SVME is set; clearing SVME afterwards is allowed.
        unsafe {
            hw::stgi();
            hw::write_efer(efer - Efer::SVME);
        }
    }
}

/// Guest-physical address of the self-test's code page.
const TEST_GPA: u64 = 0x1000;
/// `cpuid; hlt`.
const TEST_CODE: [u8; 3] = [0x0F, 0xA2, 0xF4];
/// What our CPUID "answers" the test guest, so we can see it come back.
const ANSWER: [u64; 4] = [0x4865_726D, 0x6974_6167, 0x6520_4856, 0x2121_2121];

fn phys_of<T>(r: &T) -> Option<u64> {
    crate::hw::phys_contiguous(r as *const T as usize, core::mem::size_of::<T>())
}

fn self_test(_cpu: usize) -> Result<SelfTestReport, SelfTestError> {
    if !is_enabled() {
        return Err(SelfTestError::NotEnabled);
    }
    let cpu = _cpu;
    let host_area = HOST_AREA[cpu].load(Ordering::Relaxed);
    if host_area == 0 {
        return Err(SelfTestError::NotEnabled);
    }
    let mut vmcb = Box::new(Vmcb::ZERO);
    let iopm = Box::new(Iopm([0xFF; svm::permmap::IOPM_SIZE]));
    let msrpm = Box::new(Msrpm([0xFF; svm::permmap::MSRPM_SIZE]));
    let mut code = Box::new(Page([0xF4; 4096]));
    code.0[..TEST_CODE.len()].copy_from_slice(&TEST_CODE);

    let mut frames = HeapFrames::default();
    let mut npt = NestedPageTable::new(&mut frames).map_err(|_| SelfTestError::NoMemory)?;
    let code_pa = phys_of(&*code).ok_or(SelfTestError::NoMemory)?;
    npt.map(
        &mut frames,
        GuestPhys(TEST_GPA),
        HostPhys(code_pa),
        4096,
        Perms::RWX,
    )
    .map_err(|_| SelfTestError::NoMemory)?;

    let (Some(vmcb_pa), Some(iopm_pa), Some(msrpm_pa)) =
        (phys_of(&*vmcb), phys_of(&*iopm), phys_of(&*msrpm))
    else {
        return Err(SelfTestError::NoMemory);
    };
    let mode = GuestMode::real_at(TEST_GPA as u32, 0x0FF0).ok_or(SelfTestError::Consistency)?;
    let cfg = GuestConfig {
        mode,
        asid: 1,
        iopm: HostPhys(iopm_pa),
        msrpm: HostPhys(msrpm_pa),
        nested_cr3: npt.root(),
    };
    let mut regs = GuestRegs::default();
    guest::build_vmcb(&cfg, &mut vmcb, &mut regs);
    // A flush of ASID 1 on this CPU: other tests may have used it.
    vmcb.control.tlb_control = svm::vmcb::TlbControl::FlushAll as u8;
    // Registers the guest never touches must come back exactly.
    let canary = |i: u64| 0x5A5A_0000_0000_0000 | (i << 8) | i;
    (regs.rsi, regs.rdi, regs.rbp) = (canary(1), canary(2), canary(3));
    (regs.r8, regs.r9, regs.r10, regs.r11) = (canary(8), canary(9), canary(10), canary(11));
    (regs.r12, regs.r13, regs.r14, regs.r15) = (canary(12), canary(13), canary(14), canary(15));
    let expect = regs;
    guest::check_vmrun_consistency_with(&vmcb, phys_bits())
        .map_err(|_| SelfTestError::Consistency)?;

    let mut exits = 0u32;
    let mut saw_cpuid = false;
    while exits < 64 {
        // SAFETY: SVM is on (checked above) with this CPU's VM_HSAVE_PA page; `vmcb_pa` is our
        // exclusively borrowed VMCB that passed the consistency check; `host_area` is this CPU's
        // host VMSAVE page; the nested tables map only the test's code page; the guest runs
        // real-mode code that touches no FPU state.
        unsafe { hw::vmrun(HostPhys(vmcb_pa), HostPhys(host_area), &mut regs) };
        exits += 1;
        let off = vmcb.save.rip.wrapping_sub(TEST_GPA) as usize;
        let bytes = code.0.get(off..off + 15).map(InsnBytes::new);
        let snap = ExitSnapshot::from_vmcb(&vmcb, &regs, false, bytes);
        let code_raw = snap.exit_code;
        let decoded =
            exit::decode(&snap).map_err(|_| SelfTestError::UnexpectedExit { code: code_raw })?;
        match decoded.exit {
            SvmExit::Intr | SvmExit::Nmi => continue,
            SvmExit::Cpuid { next_rip } if !saw_cpuid => {
                saw_cpuid = true;
                vmcb.save.rax = ANSWER[0];
                (regs.rbx, regs.rcx, regs.rdx) = (ANSWER[1], ANSWER[2], ANSWER[3]);
                vmcb.save.rip = next_rip;
                vmcb.control.tlb_control = svm::vmcb::TlbControl::DoNothing as u8;
            }
            SvmExit::Hlt { .. } if saw_cpuid => {
                let ok = vmcb.save.rax == ANSWER[0]
                    && (regs.rbx, regs.rcx, regs.rdx) == (ANSWER[1], ANSWER[2], ANSWER[3])
                    && (regs.rsi, regs.rdi, regs.rbp) == (expect.rsi, expect.rdi, expect.rbp)
                    && (regs.r8, regs.r9, regs.r10, regs.r11)
                        == (expect.r8, expect.r9, expect.r10, expect.r11)
                    && (regs.r12, regs.r13, regs.r14, regs.r15)
                        == (expect.r12, expect.r13, expect.r14, expect.r15)
                    && vmcb.save.rip == TEST_GPA + 2;
                return if ok {
                    Ok(SelfTestReport { exits })
                } else {
                    Err(SelfTestError::RegistersCorrupted)
                };
            }
            _ => return Err(SelfTestError::UnexpectedExit { code: code_raw }),
        }
    }
    Err(SelfTestError::NoHalt)
}

/// Physical-address width (CPUID Fn8000_0008 EAX[7:0]).
fn phys_bits() -> u8 {
    (hw::cpuid(0x8000_0008, 0)[0] & 0xFF) as u8
}
