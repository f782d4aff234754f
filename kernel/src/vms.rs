//! Guests in the image: the VM table, the per-CPU vCPU slices and the one reset path.
//!
//! Each VM owns its guest RAM (nested-paged with 2 MiB pages), its vCPU (SVM or VMX), the run
//! loop's state of it (`hv::vcpu::run::VcpuRun`: event to deliver, halted, window) and its
//! runtime (`hv::vm::VmRuntime`: CPUID view, MSRs, vPMU, devices, stats). The CPU a VM is
//! placed on runs it in slices from its worker loop, between mailbox jobs: each slice arms the
//! APIC preemption tick and runs bursts of the run loop (`VcpuRun::burst`, in `hv`), which
//! enters the guest until an exit needs more than a resume (or the slice ends). The lifecycle
//! is `hv::vm::apply`; every reset, whatever its trigger, goes through [`reset`].

#![forbid(unsafe_code)]

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicU32, Ordering};

use hermit_sync::{InterruptSpinMutex, SpinMutex};
use hv::devices::PlatformConfig;
use hv::devices::chipset::ChipsetConfig;
use hv::devices::lapic::LapicConfig;
use hv::exit::{Exit, ResetTrigger, StopReason};
use hv::vcpu::run::{BurstEnd, EntryError, Exited, RunHost, VcpuBackend, VcpuRun};
use hv::vm::{OnCrash, VmConfig, VmEvent, VmRuntime, VmState};
use hv::vpmu::{PmuConfig, VmPmu};

use crate::arch::timer;
use crate::arch::vcpu::{GuestMode, HostCpu, Vcpu};
use crate::hw::{self, GuestRam};

/// Length of one time slice.
const SLICE_US: u64 = 5_000;

/// Why a VM operation was refused. Small and `Copy`; the endpoint maps it to a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmError {
    /// No VM has that id.
    NotFound,
    /// The lifecycle does not allow the operation in the VM's state.
    State(hv::vm::TransitionError),
    /// The configuration names no built-in image.
    NoSuchImage,
    /// An image that cannot be loaded (why, from the multiboot loader).
    BadImage(&'static str),
    /// Guest RAM could not be allocated (or would leave the hypervisor too little heap).
    NoMemory,
    /// The machine has no virtualization this build can run guests on.
    Unsupported,
    /// Another VM has that name.
    NameTaken,
    /// The VM table is full.
    TooMany,
    /// The configuration pins the VM to a CPU that does not exist.
    NoSuchCpu,
    /// The vCPU could not be set up.
    Vcpu,
}

/// The most VMs at once (the run loop looks at up to this many per CPU).
pub const MAX_VMS: usize = 64;
/// Heap left to the hypervisor after a VM's RAM is allocated: the endpoint, the VM table and
/// the vCPUs' own structures live there.
const HEAP_RESERVE: usize = 16 << 20;

/// A built-in image: the multiboot guests of `guests/` (hello, exerciser, resetter, spinner),
/// or one of the flat test images of this file (smoke, spin, wild).
fn image(name: &str) -> Option<&'static [u8]> {
    match name {
        "smoke" => Some(&SMOKE),
        "spin" => Some(&SPIN),
        "wild" => Some(&WILD),
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
/// A guest that writes outside its RAM: `mov dword [0x40000000], 1; hlt`. Nested paging
/// refuses the access and the VM stops with `npt violation at GPA 0x40000000`.
const WILD: [u8; 11] = [
    0xC7, 0x05, 0x00, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, 0x00, 0xF4,
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
    vcpu: Vcpu,
    /// The run loop's state of the vCPU (rebuilt with it at every reset).
    run: VcpuRun,
    /// CPUID, MSRs, devices (with the chipset, the vCPU's interrupt input), vPMU, stats.
    rt: Box<VmRuntime>,
    /// The CPU this VM runs on.
    pub cpu: usize,
    /// Console bytes already echoed to the hypervisor console.
    echoed: u64,
    last_run: u64,
    /// Paused because its CPU went offline and no other allowed CPU was online.
    parked_by_offline: bool,
    /// The image uploaded through the API, when `config.image` is `Uploaded`.
    uploaded: Option<Vec<u8>>,
    /// The initrd uploaded through the API: a Linux kernel's initramfs, or a multiboot
    /// image's one module.
    initrd: Option<Vec<u8>>,
}

impl core::fmt::Debug for Vm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Vm({} {})", self.id, self.config.name)
    }
}

/// A VM in the table, with what can be known of it without its lock.
struct Slot {
    /// Requests (the API, a CPU going offline) waiting for the VM's lock. While there are any,
    /// the CPU running the VM ends its slice at the next exit and does not pick the VM again,
    /// so a request waits for one exit, not for a CPU that keeps re-taking the lock.
    waiters: AtomicU32,
    /// Fixed at creation (names are unique).
    name: hv::vm::Name,
    vm: SpinMutex<Vm>,
}

/// The VM table: ids outside the VM locks, so looking a VM up never waits for a running slice.
/// Its lock is held only for table operations, with interrupts off: core 0 runs both the
/// endpoint and a worker, and a worker preempted while holding it would leave the endpoint
/// spinning.
static VMS: InterruptSpinMutex<Vec<(u32, Arc<Slot>)>> = InterruptSpinMutex::new(Vec::new());
static NEXT_ID: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(1);

/// The bytes of the VM's image: a built-in one, or the upload.
fn image_of<'a>(config: &VmConfig, uploaded: Option<&'a [u8]>) -> Option<&'a [u8]> {
    match config.image {
        hv::vm::ImageRef::Uploaded => uploaded,
        _ => image(config.image.as_str()),
    }
}

/// The command line a multiboot guest gets: the configured one, plus `boot=N` with N the
/// number of resets so far (the resetter guest picks its reset path from it) and
/// `tsc_khz=F`, the guest TSC's rate (what a PC's firmware or CPUID leaf 0x15 would tell; the
/// built-in timer guests compare their interrupts against it), unless the configured line
/// gives one.
fn guest_cmdline(config: &VmConfig, boots: u64) -> heapless::String<320> {
    let mut line = heapless::String::new();
    let _ = line.push_str(config.cmdline.as_str());
    if !line.is_empty() {
        let _ = line.push(' ');
    }
    let _ = write!(line, "boot={boots}");
    if !config
        .cmdline
        .as_str()
        .split(' ')
        .any(|w| w.starts_with("tsc_khz="))
    {
        let _ = write!(line, " tsc_khz={}", guest_tsc_hz() / 1_000);
    }
    line
}

/// The guest TSC's rate: the host's (guests run with no TSC offset or scaling).
fn guest_tsc_hz() -> u64 {
    hw::tsc_per_us() * 1_000_000
}

/// The platform a VM built from `config` gets: the chipset (a local APIC in the state a PC's
/// firmware leaves it, virtual wire, when the configuration asks for one), the guest clock's
/// rate, the RTC set to the host's time, and what fw_cfg reports.
fn platform_of(config: &VmConfig) -> PlatformConfig {
    let lapic = config.local_apic.then_some(LapicConfig {
        virtual_wire: true,
        phys_addr_bits: (hw::cpuid(0x8000_0008, 0)[0] & 0xFF).clamp(32, 52) as u8,
        ..LapicConfig::BSP
    });
    PlatformConfig {
        chipset: ChipsetConfig { lapic },
        tsc_hz: guest_tsc_hz(),
        rtc_start_unix: hw::unix_time_secs(),
        cpus: 1,
        ram_bytes: u64::from(config.memory_mib) << 20,
    }
}

/// Whether `img` is a Linux bzImage (boot flag and "HdrS" in its setup header) rather than a
/// multiboot image.
fn is_linux(img: &[u8]) -> bool {
    guests::linux::SetupHeader::parse(img).is_ok()
}

/// The command line a Linux guest gets: the configured one, or, when that is empty, the one
/// `linux-guests.md` section 5 recommends for the VM's platform (no local APIC: the PIC, PIT
/// and UART only, ACPI off; with one: ACPI's MADT describes the local APIC and IOAPIC); then
/// `tsc_early_khz=` with the guest TSC's rate unless the line gives one (without it the
/// kernel calibrates its TSC against the PIT, which takes long under an emulator).
fn linux_cmdline(config: &VmConfig) -> alloc::string::String {
    let mut line = alloc::string::String::from(config.cmdline.as_str());
    if line.is_empty() {
        line.push_str(
            "console=ttyS0,115200 earlyprintk=serial,ttyS0,115200 tsc=reliable nokaslr idle=halt \
             reboot=k panic=-1 initcall_blacklist=i8042_init 8250.nr_uarts=1 pci=off",
        );
        if !config.local_apic {
            line.push_str(" nolapic noapic acpi=off");
        }
    }
    if !line.split(' ').any(|w| w.starts_with("tsc_early_khz=")) {
        let _ = write!(line, " tsc_early_khz={}", guest_tsc_hz() / 1_000);
    }
    line
}

/// The Linux boot configuration of a VM, with the ACPI RSDP where the firmware tables are.
fn linux_boot<'a>(
    cmdline: &'a str,
    initrd: Option<&'a [u8]>,
    acpi_rsdp: Option<u64>,
) -> guests::linux::BootConfig<'a> {
    guests::linux::BootConfig {
        cmdline,
        initrd: initrd.unwrap_or_default(),
        reserved: &[],
        acpi_rsdp,
    }
}

/// Check that `img` (with `initrd`) can be loaded into a VM of `config` with `ram_len` bytes
/// of RAM, without touching anything.
fn check_image(
    config: &VmConfig,
    img: &[u8],
    initrd: Option<&[u8]>,
    ram_len: usize,
) -> Result<(), VmError> {
    if is_linux(img) {
        let cmdline = linux_cmdline(config);
        guests::linux::check(img, ram_len, &linux_boot(&cmdline, initrd, None))
            .map(|_| ())
            .map_err(|e| VmError::BadImage(e.as_str()))
    } else {
        let cmdline = guest_cmdline(config, 0);
        let modules = initrd.map(|bytes| guests::multiboot::Module {
            bytes,
            string: "initrd",
        });
        guests::multiboot::check_with_modules(img, ram_len, &cmdline, modules.as_slice())
            .map_err(|e| VmError::BadImage(e.as_str()))
    }
}

/// Load the image into zeroed RAM and return how the vCPU starts: a Linux bzImage through the
/// Linux boot protocol (the firmware tables written first when the VM has a local APIC), a
/// multiboot image through Multiboot 1 with the initrd as its one module, or a flat test
/// image at 1 MiB.
fn load(
    vm_ram: &mut GuestRam,
    config: &VmConfig,
    img: &[u8],
    initrd: Option<&[u8]>,
    boots: u64,
) -> Result<GuestMode, VmError> {
    let ram = vm_ram.as_mut_slice();
    if is_linux(img) {
        let cmdline = linux_cmdline(config);
        // Checked before RAM is cleared, so a bad image changes nothing.
        guests::linux::check(img, ram.len(), &linux_boot(&cmdline, initrd, None))
            .map_err(|e| VmError::BadImage(e.as_str()))?;
        ram.fill(0);
        let rsdp = if config.local_apic {
            let [sig, _, _, features] = hw::cpuid(1, 0);
            let shape = hv::firmware::MachineShape {
                cpus: 1,
                cpu_signature: sig,
                cpu_features: features,
            };
            hv::firmware::write(&shape, ram).ok().map(|t| t.rsdp.0)
        } else {
            None
        };
        let e = guests::linux::load(img, ram, &linux_boot(&cmdline, initrd, rsdp))
            .map_err(|e| VmError::BadImage(e.as_str()))?;
        return Ok(GuestMode::Linux64(hv::vcpu::LinuxEntry {
            cr3: e.cr3,
            rip: e.rip,
            rsp: e.rsp,
            rsi: e.rsi,
            gdt_base: e.gdt_base,
            gdt_limit: e.gdt_limit,
            cs: e.cs,
            ds: e.ds,
        }));
    }
    if !matches!(config.image.as_str(), "smoke" | "spin" | "wild") {
        // Multiboot 1 (ELF32 or a.out kludge): entered as the specification says (EAX magic,
        // EBX info). Checked before RAM is cleared, so a bad image changes nothing.
        let cmdline = guest_cmdline(config, boots);
        let modules = initrd.map(|bytes| guests::multiboot::Module {
            bytes,
            string: "initrd",
        });
        guests::multiboot::check_with_modules(img, ram.len(), &cmdline, modules.as_slice())
            .map_err(|e| VmError::BadImage(e.as_str()))?;
        ram.fill(0);
        let entry = guests::multiboot::load_with_modules(img, ram, &cmdline, modules.as_slice())
            .map_err(|e| VmError::BadImage(e.as_str()))?;
        return Ok(GuestMode::Protected32 {
            eip: entry.eip,
            esp: 0,
            multiboot_info: Some(entry.ebx),
        });
    }
    let dest = LOAD_GPA..LOAD_GPA + img.len();
    if dest.end > ram.len() {
        return Err(VmError::NoMemory);
    }
    ram.fill(0);
    ram[dest].copy_from_slice(img);
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

/// The CPUs in service now (all of them before the virt layer exists).
fn online_cpus() -> hv::virt::CpuSet {
    let all = (0..crate::cpus::count() as u32)
        .map(hv::virt::CpuId)
        .fold(hv::virt::CpuSet::EMPTY, hv::virt::CpuSet::with);
    crate::virt::layer()
        .as_ref()
        .map_or(all, |l| l.online_cpus())
}

/// Running VMs per CPU, counting the endpoint's CPU 0 as one more when there are others, so
/// that guests go elsewhere first. Takes each VM's lock in turn: call with none held.
fn cpu_load(except: Option<u32>) -> [u32; crate::cpus::MAX_CPUS] {
    let table: Vec<_> = VMS.lock().iter().map(|(_, v)| v.clone()).collect();
    let mut load = [0u32; crate::cpus::MAX_CPUS];
    if crate::cpus::count() > 1 {
        load[0] = 1;
    }
    for v in &table {
        let g = lock(v);
        if Some(g.id) != except && matches!(g.state, VmState::Running | VmState::Created) {
            load[g.cpu] += 1;
        }
    }
    load
}

/// The least loaded online CPU a VM pinned to `pin` may use (not counting VM `except`), or
/// `None` if none is online. Call with no VM lock held.
fn place_on(pin: Option<u32>, except: Option<u32>) -> Option<usize> {
    let load = cpu_load(except);
    hv::vm::place(
        hv::vm::allowed_cpus(pin),
        online_cpus(),
        &load[..crate::cpus::count()],
    )
    .map(|c| c.index())
}

/// Create a VM from `config` with vPMU configuration `pmu`: RAM allocated, image loaded, vCPU
/// built, placed on `cpu` or else the least loaded CPU it may use. Not started.
pub fn create(config: VmConfig, pmu: PmuConfig, cpu: Option<usize>) -> Result<u32, VmError> {
    if crate::backend::virt_kind() == hv::features::VirtKind::None {
        return Err(VmError::Unsupported);
    }
    if config
        .cpu
        .is_some_and(|c| c as usize >= crate::cpus::count())
    {
        return Err(VmError::NoSuchCpu);
    }
    // An `uploaded` VM starts empty and cannot start until `PUT .../image` gives it one.
    let img = match config.image {
        hv::vm::ImageRef::Uploaded => None,
        _ => Some(image_of(&config, None).ok_or(VmError::NoSuchImage)?),
    };
    {
        let table = VMS.lock();
        if table.len() >= MAX_VMS {
            return Err(VmError::TooMany);
        }
        if table.iter().any(|(_, v)| v.name == config.name) {
            return Err(VmError::NameTaken);
        }
    }
    let pmu = VmPmu::new(pmu, guest_vendor()).map_err(|_| VmError::Vcpu)?;
    let mut ram = GuestRam::new(config.memory_mib as usize).ok_or(VmError::NoMemory)?;
    // What is left must still serve the hypervisor (dropping `ram` gives it back).
    if crate::hw::probe_free_heap(HEAP_RESERVE) < HEAP_RESERVE {
        return Err(VmError::NoMemory);
    }
    let mut vcpu = Vcpu::new(&ram).map_err(|_| VmError::Vcpu)?;
    if let Some(img) = img {
        let mode = load(&mut ram, &config, img, None, 0)?;
        vcpu.reset(mode).map_err(|_| VmError::Vcpu)?;
    }
    // The guest's CPUID: the host's, filtered by `hv::cpuid`, with the vPMU's leaves and what
    // the platform (local APIC or not) shows.
    let mut rt = Box::new(VmRuntime::with_pmu(pmu, hw::cpuid, config.on_crash));
    rt.set_platform(&platform_of(&config), hw::cpuid);
    rt.strict_mmio = config.strict_mmio;
    let cpu = cpu
        .or_else(|| place_on(config.cpu, None))
        .unwrap_or(config.cpu.unwrap_or(0) as usize);
    let id = NEXT_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let vm = Vm {
        id,
        config,
        state: VmState::Created,
        ram,
        vcpu,
        run: VcpuRun::new(),
        rt,
        cpu,
        echoed: 0,
        last_run: 0,
        parked_by_offline: false,
        uploaded: None,
        initrd: None,
    };
    let mut table = VMS.lock();
    // Checked again under the lock: another request may have created one meanwhile.
    if table.len() >= MAX_VMS {
        return Err(VmError::TooMany);
    }
    let name = vm.config.name.clone();
    table.push((
        id,
        Arc::new(Slot {
            waiters: AtomicU32::new(0),
            name,
            vm: SpinMutex::new(vm),
        }),
    ));
    Ok(id)
}

/// Apply a lifecycle event to VM `id` (start, pause, resume, stop, reset).
pub fn event(id: u32, ev: VmEvent) -> Result<(), VmError> {
    let vm = find(id).ok_or(VmError::NotFound)?;
    // A VM about to run stays where it was placed unless that CPU left service; then it goes
    // to the best CPU it may use, decided before its lock is taken (the load count locks
    // every VM). `Some(None)`: no CPU it may use is online.
    let (pin, here) = {
        let g = lock(&vm);
        (g.config.cpu, g.cpu)
    };
    let runnable = matches!(ev, VmEvent::Start | VmEvent::Resume | VmEvent::Reset(_));
    let moved = (runnable && !online_cpus().contains(hv::virt::CpuId(here as u32)))
        .then(|| place_on(pin, Some(id)));
    let mut vm = lock(&vm);
    let runs = matches!(ev, VmEvent::Start | VmEvent::Reset(_));
    if runs && image_of(&vm.config, vm.uploaded.as_deref()).is_none() {
        return Err(VmError::BadImage("no image uploaded yet"));
    }
    let was = vm.state;
    let (state, effect) = hv::vm::apply(vm.state, ev).map_err(VmError::State)?;
    vm.state = state;
    if was == VmState::Created && state == VmState::Running {
        // Guest time 0 is the first entry, not the creation.
        vm.rt.devices.start_clock(hw::rdtsc());
    }
    vm.parked_by_offline = false;
    if let hv::vm::Effect::ReloadAndRun = effect {
        let trigger = if let VmEvent::Reset(t) = ev {
            Some(t)
        } else {
            None
        };
        reset(&mut vm, trigger);
    }
    match moved {
        _ if vm.state != VmState::Running => {}
        Some(Some(to)) => vm.cpu = to,
        // No CPU it may use is online: it waits, paused, until one comes back.
        Some(None) => {
            if let Ok((s, _)) = hv::vm::apply(vm.state, VmEvent::Pause) {
                vm.state = s;
                vm.parked_by_offline = true;
            }
        }
        _ => {}
    }
    // Its CPU may be idle: tell it there is a VM to run (or one less to wait for).
    crate::percpu::wake(vm.cpu);
    Ok(())
}

/// Delete VM `id` (not while it runs: stop it first). Its memory is freed once no CPU holds it.
pub fn delete(id: u32) -> Result<(), VmError> {
    let vm = find(id).ok_or(VmError::NotFound)?;
    {
        let mut g = lock(&vm);
        let (state, _) = hv::vm::apply(g.state, VmEvent::Delete).map_err(VmError::State)?;
        g.state = state;
    }
    VMS.lock().retain(|(i, _)| *i != id);
    Ok(())
}

/// What the API shows of one VM.
#[derive(Clone, Debug)]
pub struct VmView {
    pub id: u32,
    pub summary: hv::vm::VmSummary,
    pub pmu: PmuConfig,
    pub pending_pmu: Option<PmuConfig>,
    /// The CPU it runs on, while it runs.
    pub running_on: Option<u32>,
}

fn view_of(vm: &Vm) -> VmView {
    VmView {
        id: vm.id,
        summary: hv::vm::VmSummary::new(&vm.config, vm.state, &vm.rt),
        pmu: *vm.rt.pmu.current(),
        pending_pmu: vm.rt.pmu.pending().copied(),
        running_on: (vm.state == VmState::Running).then_some(vm.cpu as u32),
    }
}

/// One VM as the API shows it.
pub fn view(id: u32) -> Result<VmView, VmError> {
    find(id)
        .map(|v| view_of(&lock(&v)))
        .ok_or(VmError::NotFound)
}

/// Every VM, in id order.
pub fn each(mut f: impl FnMut(VmView)) {
    let table: Vec<_> = VMS.lock().iter().map(|(_, v)| v.clone()).collect();
    for v in &table {
        // Built under the VM's lock, handed over after it is released.
        let view = view_of(&lock(v));
        f(view);
    }
}

/// How many VMs exist.
pub fn count() -> usize {
    VMS.lock().len()
}

/// Read VM `id`'s console from `offset` into `buf`.
pub fn console(id: u32, offset: u64, buf: &mut [u8]) -> Result<hv::devices::ConsoleRead, VmError> {
    let vm = find(id).ok_or(VmError::NotFound)?;
    let g = lock(&vm);
    Ok(g.rt.devices.console.read(offset, buf))
}

/// VM `id`'s vPMU as the API shows it: configuration in force and pending, the live state,
/// and the digest the probe guest must print after a reset with the configuration in force.
pub fn pmu(id: u32) -> Result<net::api::PmuInfo, VmError> {
    let vm = find(id).ok_or(VmError::NotFound)?;
    let g = lock(&vm);
    Ok(net::api::PmuInfo {
        config: *g.rt.pmu.current(),
        pending: g.rt.pmu.pending().copied(),
        state: *g.rt.pmu.state(),
        // "hardware" only with `vpmu_backing=hardware` on a host PMU that can carry the model.
        backing: crate::arch::host_pmu::backing(g.rt.pmu.state()).as_str(),
        probe_digest: hv::vpmu::probe::probe_digest(g.rt.pmu.current(), guest_vendor()),
    })
}

/// Set VM `id`'s vPMU configuration. It takes effect at the VM's next reset or start from
/// stopped (never in the middle of a run); a VM that never ran gets it at once, rebuilt by the
/// same constructor a reset uses.
///
/// Returns the VM as it was right after, under the same lock, so that its reset count says
/// exactly from which boot on the configuration applies (`scripts/reboot-stress` relies on it).
pub fn set_pmu(id: u32, config: PmuConfig) -> Result<VmView, VmError> {
    let vm = find(id).ok_or(VmError::NotFound)?;
    let mut g = lock(&vm);
    g.rt.pmu
        .set_pending_config(config)
        .map_err(|_| VmError::Vcpu)?;
    if g.state == VmState::Created {
        g.rt.rebuild_pmu(hw::cpuid);
    }
    Ok(view_of(&g))
}

/// Replace VM `id`'s image with an uploaded multiboot image. Only while it does not run
/// (created, stopped or crashed); a bad image is refused with the loader's reason and the VM is
/// left as it was. A created VM is reloaded at once; a stopped one at its next start.
pub fn upload(id: u32, bytes: Vec<u8>) -> Result<(), VmError> {
    let vm = find(id).ok_or(VmError::NotFound)?;
    let mut g = lock(&vm);
    refuse_while_running(&g)?;
    check_image(&g.config, &bytes, g.initrd.as_deref(), g.ram.len())?;
    g.config.image = hv::vm::ImageRef::Uploaded;
    g.uploaded = Some(bytes);
    reload_if_created(&mut g)
}

/// Replace VM `id`'s initrd: a Linux kernel's initramfs, or the one module a multiboot image
/// gets (its string is "initrd"). The same rules as [`upload`]: only while the VM does not
/// run, checked against the image (if one is there) and the VM's RAM, nothing changed on a
/// refusal; a created VM is reloaded at once.
pub fn upload_initrd(id: u32, bytes: Vec<u8>) -> Result<(), VmError> {
    let vm = find(id).ok_or(VmError::NotFound)?;
    let mut g = lock(&vm);
    refuse_while_running(&g)?;
    if let Some(img) = image_of(&g.config, g.uploaded.as_deref()) {
        check_image(&g.config, img, Some(&bytes), g.ram.len())?;
    }
    g.initrd = Some(bytes);
    reload_if_created(&mut g)
}

fn refuse_while_running(g: &Vm) -> Result<(), VmError> {
    if matches!(g.state, VmState::Running | VmState::Paused) {
        return Err(VmError::State(hv::vm::TransitionError::WrongState {
            from: g.state,
            event: VmEvent::Stop,
        }));
    }
    Ok(())
}

/// A created VM is loaded from its (new) image at once; others at their next start.
fn reload_if_created(g: &mut Vm) -> Result<(), VmError> {
    if g.state == VmState::Created {
        if let Some(img) = image_of(&g.config, g.uploaded.as_deref()) {
            let mode = load(&mut g.ram, &g.config, img, g.initrd.as_deref(), 0)?;
            g.vcpu.reset(mode).map_err(|_| VmError::Vcpu)?;
            g.run = VcpuRun::new();
        }
    }
    Ok(())
}

fn find(id: u32) -> Option<Arc<Slot>> {
    VMS.lock()
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, v)| v.clone())
}

/// Lock a VM for a request: announce the wait (the CPU running it yields at its next exit),
/// then yield until the lock is free.
fn lock(slot: &Slot) -> hermit_sync::SpinMutexGuard<'_, Vm> {
    slot.waiters.fetch_add(1, Ordering::AcqRel);
    let guard = loop {
        if let Some(g) = slot.vm.try_lock() {
            break g;
        }
        hermit::syscalls::sys_yield();
    };
    slot.waiters.fetch_sub(1, Ordering::AcqRel);
    guard
}

/// The one reset path, whatever the trigger (API, triple fault, port 0xCF9, keyboard
/// controller): the runtime's reset assembly (`VmRuntime::reboot`: devices and MSRs reset, the
/// trigger counted, the vPMU and the CPUID leaves it decides rebuilt from the current
/// configuration), guest memory reloaded from the image, the vCPU's architectural state and
/// the run loop's state of it rebuilt.
fn reset(vm: &mut Vm, trigger: Option<ResetTrigger>) {
    crate::trace::reset(vm.id, trigger);
    let boots = vm.rt.reboot(trigger, hw::cpuid);
    vm.run = VcpuRun::new();
    let Some(img) = image_of(&vm.config, vm.uploaded.as_deref()) else {
        vm.state = VmState::ended(StopReason::Requested);
        return;
    };
    let mode = match load(&mut vm.ram, &vm.config, img, vm.initrd.as_deref(), boots) {
        Ok(m) => m,
        Err(_) => {
            vm.state = VmState::ended(StopReason::Requested);
            return;
        }
    };
    if vm.vcpu.reset(mode).is_err() {
        vm.state = VmState::ended(StopReason::Requested);
    }
    // The reset guest's time starts now.
    vm.rt.devices.start_clock(hw::rdtsc());
    vm.echoed = vm.echoed.min(vm.rt.devices.console.total_written());
}

/// The run loop's view of this kernel around one burst: requests waiting for the VM and the
/// slice's TSC deadline end it; the vPMU's hardware backing wraps each entry; tracing and the
/// benchmark floor see every exit first; a device timer due before the slice's tick re-arms
/// the tick earlier, so the guest exits when its timer fires.
struct SliceHost<'a> {
    vm: u32,
    cpu: usize,
    waiters: &'a AtomicU32,
    tsc_deadline: u64,
    /// When the armed host timer fires (TSC).
    armed_tsc: u64,
}

impl RunHost for SliceHost<'_> {
    fn should_yield(&mut self) -> bool {
        self.waiters.load(Ordering::Acquire) > 0 || hw::rdtsc() >= self.tsc_deadline
    }

    fn enter<B: VcpuBackend>(
        &mut self,
        vcpu: &mut B,
        pmu: &mut VmPmu,
    ) -> Result<Exited, EntryError> {
        // Guest counters on the host PMU around the entry, when `vpmu_backing=hardware`.
        crate::arch::host_pmu::around(pmu, || vcpu.enter())
    }

    fn intercept<B: VcpuBackend>(&mut self, vcpu: &mut B, exit: &Exit) -> bool {
        if crate::bench::floor_exit(vcpu, exit) {
            return true;
        }
        crate::trace::exit(self.vm, exit.kind());
        false
    }

    fn exit_by(&mut self, tsc: u64) {
        if tsc >= self.armed_tsc {
            return;
        }
        // Guest TSC = host TSC: fire the tick at the device's deadline (at least 1 us away:
        // a deadline already passed makes the next entry exit at once, and the loop delivers).
        let now = hw::rdtsc();
        let us = tsc.saturating_sub(now) / hw::tsc_per_us().max(1);
        timer::arm(self.cpu, us.clamp(1, SLICE_US) as u32);
        self.armed_tsc = now + us.max(1) * hw::tsc_per_us();
    }
}

/// What [`run_some`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// A VM ran a slice.
    Slice,
    /// Nothing could run. `wake_tsc`: the earliest TSC at which a halted VM placed here has a
    /// timer due (the worker must be back by then).
    Nothing { wake_tsc: Option<u64> },
}

/// Run one slice of a runnable VM placed on `cpu`, if any.
pub fn run_some(cpu: usize, host: HostCpu) -> Ran {
    let now = hw::rdtsc();
    let mut wake_tsc: Option<u64> = None;
    let mut runnable = |s: &Slot| {
        s.waiters.load(Ordering::Acquire) == 0
            && s.vm.try_lock().is_some_and(|mut g| {
                let g = &mut *g;
                if g.cpu != cpu || g.state != VmState::Running {
                    return false;
                }
                // Timers that expired while it was halted raise their lines now.
                g.rt.devices.advance(now);
                let ready = g.run.runnable(&mut g.rt.devices.chipset.controller());
                if !ready {
                    if let Some(t) = g.rt.devices.next_deadline_tsc() {
                        wake_tsc = Some(wake_tsc.map_or(t, |w| w.min(t)));
                    }
                }
                ready
            })
    };
    let candidates: heapless::Vec<Arc<Slot>, MAX_VMS> = {
        // Never spin here: whoever holds the table (the endpoint thread of this core, say)
        // may need this CPU to get on. Contended: nothing ran this time (and the worker comes
        // back within its idle backstop).
        let Some(table) = VMS.try_lock() else {
            return Ran::Nothing {
                wake_tsc: Some(now),
            };
        };
        table
            .iter()
            .map(|(_, v)| v)
            .filter(|v| runnable(v))
            .take(MAX_VMS)
            .cloned()
            .collect()
    };
    let Some(next) = candidates
        .iter()
        .min_by_key(|v| v.vm.try_lock().map_or(u64::MAX, |g| g.last_run))
    else {
        return Ran::Nothing { wake_tsc };
    };
    let Some(mut vm) = next.vm.try_lock() else {
        return Ran::Nothing {
            wake_tsc: Some(now),
        };
    };
    run_slice(&mut vm, cpu, host, &next.waiters);
    Ran::Slice
}

fn run_slice(vm: &mut Vm, cpu: usize, host: HostCpu, waiters: &AtomicU32) {
    let start = hw::monotonic_micros();
    vm.last_run = start;
    loop {
        let elapsed = hw::monotonic_micros() - start;
        if elapsed >= SLICE_US {
            break;
        }
        // The tick normally ends the slice (an interrupt exit). The TSC, read after every
        // exit, is the backstop where the tick cannot make the guest exit: no usable APIC
        // timer (TSC-deadline mode), or Bochs, which keeps a guest with IF=0 running despite
        // a pending external interrupt.
        let now = hw::rdtsc();
        let deadline = now + (SLICE_US - elapsed) * hw::tsc_per_us();
        // Arm the tick once and enter with interrupts off for the whole burst: a host timer
        // interrupt in between would let Hermit reprogram (mask) the timer, or switch tasks,
        // and leave the guest without a tick. A tick that arrives meanwhile stays pending and
        // makes the guest exit at once, which ends the burst. A device timer due earlier
        // re-arms it (`SliceHost::exit_by`); that exit ends the burst too, and the next one
        // delivers the interrupt.
        let end = hw::without_interrupts(|| {
            timer::arm(cpu, (SLICE_US - elapsed) as u32);
            let mut host_side = SliceHost {
                vm: vm.id,
                cpu,
                waiters,
                tsc_deadline: deadline,
                armed_tsc: deadline,
            };
            let mut on = vm.vcpu.on(cpu, host, &mut vm.ram);
            vm.run.run(&mut on, &mut *vm.rt, &mut host_side)
        });
        let done = match end {
            BurstEnd::EntryFailed { code } => {
                stop(vm, StopReason::EntryFailed { code });
                true
            }
            // A host interrupt (the slice's tick, or the tick re-armed for a device timer)
            // ends the slice: the host takes it now that interrupts are on, and whatever it
            // woke on this core (the endpoint on CPU 0) gets the CPU at the worker's yield.
            // Halted: the worker sleeps until an interrupt is due (or a wake).
            BurstEnd::Yield | BurstEnd::Halted | BurstEnd::HostInterrupt => true,
            BurstEnd::Stop(reason) => {
                stop(vm, reason);
                true
            }
            BurstEnd::Reset(trigger) => {
                if let Ok((state, _)) = hv::vm::apply(vm.state, VmEvent::Reset(trigger)) {
                    vm.state = state;
                }
                reset(vm, Some(trigger));
                // The reloaded guest goes on in the same slice (unless the reload failed).
                vm.state != VmState::Running
            }
        };
        // A request waits for this VM: let it have the lock now rather than in 5 ms.
        if done || waiters.load(Ordering::Acquire) > 0 {
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
    let mut load = cpu_load(None);
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
                crate::percpu::wake(g.cpu);
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
                crate::percpu::wake(cpu);
            }
        }
    }
}

/// Start the VMs named on the kernel command line, spread over the CPUs (CPU 0 last: it also
/// serves the endpoint).
pub fn start_from_cmdline<'a>(names: impl Iterator<Item = &'a str>, pmu: PmuConfig, cpus: usize) {
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
        match create(config, pmu, Some(cpu)).and_then(|id| event(id, VmEvent::Start).map(|()| id)) {
            Ok(id) => println!("hermitage: vm {id} ({vm_name}) started on cpu {cpu}"),
            Err(e) => println!("hermitage: vm={name}: not started: {e:?}"),
        }
    }
}

/// Whether VM `id` has an image to load: a built-in one, or an upload for an `uploaded` VM.
/// The endpoint asks before a start or reset, so that one without an image is a state error
/// (409) and not a failed load (issue 18).
pub fn has_image(id: u32) -> Result<bool, VmError> {
    let vm = find(id).ok_or(VmError::NotFound)?;
    let g = lock(&vm);
    Ok(image_of(&g.config, g.uploaded.as_deref()).is_some())
}

/// What [`console_input`] did with bytes for a VM's COM1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputOutcome {
    /// All of them queued; `queued` bytes now wait for the guest's receive FIFO.
    Queued { queued: usize },
    /// Nothing queued: only a running or paused VM takes input (a reset would discard it
    /// anyway, and a created VM's start is one).
    NotRunning(VmState),
    /// Nothing queued: the input queue has only `free` bytes of room.
    Full { free: usize },
}

/// Queue `bytes` for VM `id`'s COM1 receiver (`POST /v1/vms/{id}/console`), all of them or
/// none: a user typing into a shell must never lose a silent tail. The UART moves them into
/// its receive FIFO as the guest makes room (`hv::devices::uart`); the VM's CPU is woken so
/// that a vCPU halted until the UART interrupts gets to run.
pub fn console_input(id: u32, bytes: &[u8]) -> Result<InputOutcome, VmError> {
    let vm = find(id).ok_or(VmError::NotFound)?;
    let mut g = lock(&vm);
    if !matches!(g.state, VmState::Running | VmState::Paused) {
        return Ok(InputOutcome::NotRunning(g.state));
    }
    let devices = &mut g.rt.devices;
    let free = devices.uart.input_free();
    if bytes.len() > free {
        return Ok(InputOutcome::Full { free });
    }
    devices.push_input(bytes);
    let queued = devices.uart.input_queued();
    let cpu = g.cpu;
    drop(g);
    crate::percpu::wake(cpu);
    Ok(InputOutcome::Queued { queued })
}
