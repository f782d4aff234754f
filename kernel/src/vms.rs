//! Guests in the image: the VM table, the per-CPU vCPU slices and the one reset path.
//!
//! Each VM owns its guest RAM (nested-paged with 2 MiB pages), its vCPU (SVM for now) and its
//! runtime (`hv::vm::VmRuntime`: CPUID view, MSRs, devices, stats). The CPU a VM is placed on
//! runs it in slices from its worker loop, between mailbox jobs: each slice arms the APIC
//! preemption tick, enters the guest until an exit needs more than a resume (or the slice
//! ends), and applies what the pure handler `hv::exit::handle` decided. The lifecycle is
//! `hv::vm::apply`; every reset, whatever its trigger, goes through [`reset`].

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write as _;

use hermit_sync::SpinMutex;
use hv::cpuid::CpuidView;
use hv::exit::{Action, ResetTrigger, StopReason};
use hv::vm::{OnCrash, VmConfig, VmEvent, VmRuntime, VmState};
use hv::vpmu::{MsrResult, PmuConfig, VmPmu};
use svm::guest::GuestMode;

use crate::arch::svm_vcpu::SvmVcpu;
use crate::arch::timer;
use crate::hw::{self, GuestRam};

/// Length of one time slice.
const SLICE_US: u64 = 5_000;

/// Why a VM could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateError {
    NoSuchImage,
    NoMemory,
    Unsupported,
    Vcpu,
}

/// A built-in image: the multiboot guests of `guests/` (hello, exerciser, resetter, spinner),
/// or one of the two flat test images of this file.
fn image(name: &str) -> Option<&'static [u8]> {
    match name {
        "smoke" => Some(&SMOKE),
        "spin" => Some(&SPIN),
        _ => guests::builtin(name),
    }
}

/// A 32-bit flat guest written here for the vCPU path's own check: prints "Hi" on the UART,
/// exits through the debug-exit port with code 0, then halts.
/// `mov dx,0x3f8; mov al,'H'; out dx,al; mov al,'i'; out dx,al; mov al,10; out dx,al;
///  mov eax,0; out 0xf4,eax; hlt`
const SMOKE: [u8; 22] = [
    0x66, 0xBA, 0xF8, 0x03, 0xB0, 0x48, 0xEE, 0xB0, 0x69, 0xEE, 0xB0, 0x0A, 0xEE, 0xB8, 0x00, 0x00,
    0x00, 0x00, 0xE7, 0xF4, 0xF4, 0xF4,
];
/// A misbehaving guest: `cli; jmp $`. It never exits by itself; only the preemption tick takes
/// its CPU back.
const SPIN: [u8; 3] = [0xFA, 0xEB, 0xFE];
const LOAD_GPA: usize = 0x10_0000;

pub struct Vm {
    pub id: u32,
    pub config: VmConfig,
    pub state: VmState,
    ram: GuestRam,
    vcpu: SvmVcpu,
    rt: Box<VmRuntime>,
    /// The virtual PMU: rebuilt from the VM's current configuration on every reset.
    pmu: VmPmu,
    /// The CPU this VM runs on.
    pub cpu: usize,
    /// Halted with interrupts enabled: nothing will wake it (no virtual interrupts yet).
    idle: bool,
    /// Console bytes already echoed to the hypervisor console.
    echoed: u64,
    last_run: u64,
    /// Paused because its CPU went offline and no other allowed CPU was online.
    parked_by_offline: bool,
}

impl core::fmt::Debug for Vm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Vm({} {})", self.id, self.config.name)
    }
}

/// The VM table: ids outside the VM locks, so looking a VM up never waits for a running slice.
static VMS: SpinMutex<Vec<(u32, Arc<SpinMutex<Vm>>)>> = SpinMutex::new(Vec::new());
static NEXT_ID: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(1);

/// Load the image into zeroed RAM and return how the vCPU starts.
fn load(vm_ram: &mut GuestRam, config: &VmConfig) -> Result<GuestMode, CreateError> {
    let img = image(config.image.as_str()).ok_or(CreateError::NoSuchImage)?;
    let ram = vm_ram.as_mut_slice();
    ram.fill(0);
    if img.starts_with(b"\x7fELF") {
        // Multiboot 1 ELF32: entered as the specification says (EAX magic, EBX info).
        let entry = guests::multiboot::load(img, ram, config.cmdline.as_str())
            .map_err(|_| CreateError::NoSuchImage)?;
        return Ok(GuestMode::Protected32 {
            eip: entry.eip,
            esp: 0,
            multiboot_info: Some(entry.ebx),
        });
    }
    ram.get_mut(LOAD_GPA..LOAD_GPA + img.len())
        .ok_or(CreateError::NoMemory)?
        .copy_from_slice(img);
    Ok(GuestMode::Protected32 {
        eip: LOAD_GPA as u32,
        esp: 0x9_0000,
        multiboot_info: None,
    })
}

/// The guest's vendor is the host's (the CPUID view passes the vendor through).
fn guest_vendor() -> hv::features::Vendor {
    crate::backend::features().map_or(hv::features::Vendor::Other, |f| f.vendor)
}

/// The guest's CPUID: the host's, filtered by `hv::cpuid`, with the vPMU's leaves.
fn cpuid_view(pmu: &VmPmu) -> CpuidView {
    let state = *pmu.state();
    let hook = move |leaf: u32, sub: u32, regs: [u32; 4]| state.cpuid(leaf, sub, regs);
    CpuidView::from_host(|l, s| svm::hw::cpuid(l, s), Some(&hook))
}

/// PMU MSRs go to the vPMU (which decides existence, masks and #GP); the rest to the handler.
fn pmu_msr(vm: &mut Vm, exit: &hv::exit::Exit) -> Option<Action> {
    let hv::exit::Exit::Msr {
        index,
        write,
        next_rip,
    } = *exit
    else {
        return None;
    };
    if !hv::vpmu::is_pmu_msr(index) {
        return None;
    }
    let gp = Action::InjectException {
        vector: hv::exit::VECTOR_GP,
        error_code: Some(0),
    };
    Some(match write {
        Some(value) => match vm.pmu.wrmsr(index, value) {
            Ok(()) => Action::ResumeAt { rip: next_rip },
            Err(_) => gp,
        },
        None => match vm.pmu.rdmsr(index) {
            MsrResult::Value(v) => Action::ResumeWith {
                rip: next_rip,
                regs: hv::exit::RegUpdate {
                    rax: Some(v & 0xFFFF_FFFF),
                    rdx: Some(v >> 32),
                    ..Default::default()
                },
            },
            MsrResult::Gp => gp,
        },
    })
}

/// Create a VM (not started).
pub fn create(config: VmConfig, cpu: usize) -> Result<u32, CreateError> {
    if crate::backend::virt_kind() != hv::features::VirtKind::Svm {
        return Err(CreateError::Unsupported);
    }
    image(config.image.as_str()).ok_or(CreateError::NoSuchImage)?;
    let mut ram = GuestRam::new(config.memory_mib as usize).ok_or(CreateError::NoMemory)?;
    let mut vcpu = SvmVcpu::new(&ram).map_err(|_| CreateError::Vcpu)?;
    let mode = load(&mut ram, &config)?;
    vcpu.reset(mode).map_err(|_| CreateError::Vcpu)?;
    let pmu = VmPmu::new(PmuConfig::Off, guest_vendor()).map_err(|_| CreateError::Vcpu)?;
    let rt = Box::new(VmRuntime::new(cpuid_view(&pmu), config.on_crash));
    let id = NEXT_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let vm = Vm {
        id,
        config,
        state: VmState::Created,
        ram,
        vcpu,
        rt,
        pmu,
        cpu,
        idle: false,
        echoed: 0,
        last_run: 0,
        parked_by_offline: false,
    };
    VMS.lock().push((id, Arc::new(SpinMutex::new(vm))));
    Ok(id)
}

/// Apply a lifecycle event to VM `id`.
pub fn event(id: u32, ev: VmEvent) -> Result<(), hv::vm::TransitionError> {
    let Some(vm) = find(id) else { return Ok(()) };
    let mut vm = lock(&vm);
    let (state, effect) = hv::vm::apply(vm.state, ev)?;
    vm.state = state;
    if let hv::vm::Effect::ReloadAndRun = effect {
        let trigger = if let VmEvent::Reset(t) = ev {
            Some(t)
        } else {
            None
        };
        reset(&mut vm, trigger);
    }
    vm.idle = false;
    Ok(())
}

fn find(id: u32) -> Option<Arc<SpinMutex<Vm>>> {
    VMS.lock()
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, v)| v.clone())
}

/// Lock a VM, yielding while a CPU runs a slice of it.
fn lock(vm: &SpinMutex<Vm>) -> hermit_sync::SpinMutexGuard<'_, Vm> {
    loop {
        if let Some(g) = vm.try_lock() {
            return g;
        }
        hermit::syscalls::sys_yield();
    }
}

/// The one reset path, whatever the trigger (API, triple fault, port 0xCF9, keyboard
/// controller): devices and MSRs reset (and the trigger counted) by the runtime, guest memory
/// reloaded from the image, the vCPU's architectural state rebuilt. The vPMU is rebuilt here
/// from the VM's current configuration once it exists (the "Virtual PMU" issue).
fn reset(vm: &mut Vm, trigger: Option<ResetTrigger>) {
    vm.rt.reset(trigger);
    // The vPMU and the CPUID leaves it decides are rebuilt from the current configuration by
    // their one constructor: nothing of the previous run or configuration survives.
    vm.pmu.reset(guest_vendor());
    vm.rt.cpuid = cpuid_view(&vm.pmu);
    let mode = match load(&mut vm.ram, &vm.config) {
        Ok(m) => m,
        Err(_) => {
            vm.state = VmState::ended(StopReason::Requested);
            return;
        }
    };
    if vm.vcpu.reset(mode).is_err() {
        vm.state = VmState::ended(StopReason::Requested);
    }
    vm.idle = false;
    vm.echoed = vm.echoed.min(vm.rt.devices.console.total_written());
}

/// Run one slice of a runnable VM placed on `cpu`, if any. Returns whether one ran.
pub fn run_some(cpu: usize, host_area: u64, nrips: bool) -> bool {
    let candidates: heapless::Vec<Arc<SpinMutex<Vm>>, 64> = {
        let table = VMS.lock();
        table
            .iter()
            .map(|(_, v)| v)
            .filter(|v| {
                v.try_lock()
                    .is_some_and(|g| g.cpu == cpu && g.state == VmState::Running && !g.idle)
            })
            .take(64)
            .cloned()
            .collect()
    };
    let Some(next) = candidates
        .iter()
        .min_by_key(|v| v.try_lock().map_or(u64::MAX, |g| g.last_run))
    else {
        return false;
    };
    let Some(mut vm) = next.try_lock() else {
        return false;
    };
    run_slice(&mut vm, cpu, host_area, nrips);
    true
}

fn run_slice(vm: &mut Vm, cpu: usize, host_area: u64, nrips: bool) {
    let start = hw::monotonic_micros();
    vm.last_run = start;
    loop {
        // Arm the tick and enter with interrupts off in between: a host timer interrupt there
        // would let Hermit reprogram (mask) the timer and leave the guest without a tick. A
        // tick that arrives meanwhile stays pending and makes the guest exit at once.
        let run = hw::without_interrupts(|| {
            timer::arm(cpu, SLICE_US as u32);
            vm.vcpu.run(cpu, host_area, &vm.ram, nrips)
        });
        let decoded = match run {
            Ok(d) => d,
            Err(code) => {
                stop(vm, StopReason::EntryFailed { code });
                break;
            }
        };
        let exit = vm.vcpu.neutral(&decoded);
        let action = match pmu_msr(vm, &exit) {
            Some(a) => {
                vm.rt.stats.exits.record(exit.kind());
                a
            }
            None => hv::exit::handle(&exit, &vm.vcpu.view(), &mut vm.rt),
        };
        let mut done = matches!(exit, hv::exit::Exit::ExternalInterrupt);
        match action {
            Action::Resume => {}
            Action::ResumeAt { rip } => vm.vcpu.set_rip(rip),
            Action::ResumeWith { rip, regs } => vm.vcpu.apply(rip, &regs),
            Action::InjectException { vector, error_code } => vm.vcpu.inject(vector, error_code),
            Action::Halt { rip } => {
                vm.vcpu.set_rip(rip);
                vm.idle = true;
                done = true;
            }
            Action::Stop(reason) => {
                stop(vm, reason);
                done = true;
            }
            Action::Reset(trigger) => {
                if let Ok((state, _)) = hv::vm::apply(vm.state, VmEvent::Reset(trigger)) {
                    vm.state = state;
                }
                reset(vm, Some(trigger));
            }
        }
        if done || hw::monotonic_micros() - start > SLICE_US {
            break;
        }
    }
    vm.rt.stats.add_run_time(hw::monotonic_micros() - start);
    echo_console(vm);
}

fn stop(vm: &mut Vm, reason: StopReason) {
    if let Ok((state, _)) = hv::vm::apply(vm.state, VmEvent::Exited(reason)) {
        vm.state = state;
    }
    let mut msg = heapless::String::<96>::new();
    let _ = write!(msg, "{reason}");
    println!(
        "hermitage: vm {} ({}) {}: {msg}",
        vm.id,
        vm.config.name,
        vm.state.as_str()
    );
}

/// Copy new guest console output to the hypervisor console, one prefixed line at a time. A
/// line still being written waits for its newline (or until 256 bytes are pending).
fn echo_console(vm: &mut Vm) {
    let mut buf = [0u8; 512];
    loop {
        let r = vm.rt.devices.console.read(vm.echoed, &mut buf);
        let pending = &buf[..r.copied];
        let complete = match pending.iter().rposition(|&b| b == b'\n') {
            Some(last) => last + 1,
            None if pending.len() >= 256 => pending.len(),
            None => 0,
        };
        if complete == 0 {
            break;
        }
        vm.echoed = r.next_offset - (r.copied - complete) as u64;
        for line in pending[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            println!(
                "[vm {} {}] {}",
                vm.id,
                vm.config.name,
                core::str::from_utf8(line).unwrap_or("<binary>")
            );
        }
    }
}

/// CPU `cpu` left service: move its VMs to the least-loaded other online CPU they may use, or
/// pause them when there is none (they resume on `restore`). Returns (moved, paused).
pub fn evacuate(cpu: usize, online: hv::virt::CpuSet) -> (usize, usize) {
    let table: Vec<_> = VMS.lock().iter().map(|(_, v)| v.clone()).collect();
    let mut load = [0u32; crate::cpus::MAX_CPUS];
    for v in &table {
        let g = lock(v);
        if g.state == VmState::Running {
            load[g.cpu] += 1;
        }
    }
    let (mut moved, mut paused) = (0, 0);
    for v in &table {
        let mut g = lock(v);
        if g.cpu != cpu {
            continue;
        }
        let allowed = hv::vm::allowed_cpus(g.config.cpu);
        match hv::vm::place(
            allowed,
            online.without(hv::virt::CpuId(cpu as u32)),
            &load[..crate::cpus::count()],
        ) {
            Some(to) => {
                g.cpu = to.index();
                load[to.index()] += 1;
                moved += 1;
            }
            None if g.state == VmState::Running => {
                if let Ok((s, _)) = hv::vm::apply(g.state, VmEvent::Pause) {
                    g.state = s;
                    g.parked_by_offline = true;
                    paused += 1;
                }
            }
            None => {}
        }
    }
    (moved, paused)
}

/// CPU `cpu` is back: VMs paused because no CPU they may use was online resume there.
pub fn restore(cpu: usize) {
    let table: Vec<_> = VMS.lock().iter().map(|(_, v)| v.clone()).collect();
    for v in table.iter() {
        let mut g = lock(v);
        if g.parked_by_offline
            && hv::vm::allowed_cpus(g.config.cpu).contains(hv::virt::CpuId(cpu as u32))
        {
            if let Ok((s, _)) = hv::vm::apply(g.state, VmEvent::Resume) {
                g.state = s;
                g.cpu = cpu;
                g.parked_by_offline = false;
            }
        }
    }
}

/// Start the VMs named on the kernel command line, spread over the CPUs (CPU 0 last: it also
/// serves the endpoint).
pub fn start_from_cmdline<'a>(names: impl Iterator<Item = &'a str>, cpus: usize) {
    for (i, name) in names.enumerate() {
        let cpu = if cpus > 1 { 1 + i % (cpus - 1) } else { 0 };
        let mut vm_name = heapless::String::<32>::new();
        let _ = write!(vm_name, "{name}-{}", i + 1);
        let config = match VmConfig::new(&vm_name, name, 16) {
            Ok(mut c) => {
                c.on_crash = OnCrash::Stop;
                c
            }
            Err(e) => {
                println!("hermitage: vm={name}: {e}");
                continue;
            }
        };
        match create(config, cpu).and_then(|id| {
            event(id, VmEvent::Start)
                .map(|()| id)
                .map_err(|_| CreateError::Vcpu)
        }) {
            Ok(id) => println!("hermitage: vm {id} ({vm_name}) started on cpu {cpu}"),
            Err(e) => println!("hermitage: vm={name}: not started: {e:?}"),
        }
    }
}
