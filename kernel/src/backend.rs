//! The hypervisor as the control endpoint sees it: `net::api::Backend` over the virt layer
//! (online/offline, users), what each CPU published about its hardware (`cpus.rs`), and the
//! host features decided at boot.

#![forbid(unsafe_code)]

use hermit_sync::OnceCell;
use hv::features::{HostFeatures, VirtKind};
use hv::virt::{self, CpuId, OfflineError, OnlineError, VirtLayer};
use net::api::{
    Backend, Conflict, ConsoleRead, CpuError, CpuInfo, CpuVirt, Failure, Health, HostInfo,
    SelfTest, TdxInfo, Virt, VmAction, VmError, VmInfo,
};

use crate::cpus;
use crate::virt::{EndpointCpu, PerCpuBackend, layer};

static FEATURES: OnceCell<HostFeatures> = OnceCell::new();
/// Heap free for guests right after boot: `memory.total_bytes` of `GET /v1/host`.
static HEAP_AT_BOOT: OnceCell<u64> = OnceCell::new();
/// The monotonic clock at our entry point, in µs: `uptime_ms` counts from this boot. Hermit's
/// clock keeps counting across a machine reset (the TSC is not reset under QEMU), so a
/// reboot through `POST /v1/host/reboot` would otherwise report the time since power-on.
static BOOTED_AT_US: OnceCell<u64> = OnceCell::new();
/// The most heap `GET /v1/host` probes for (the probe allocates and frees in 2 MiB steps).
const HEAP_PROBE_LIMIT: usize = 64 << 30;

/// Record the boot CPU's features for the API.
pub fn features() -> Option<HostFeatures> {
    FEATURES.get().copied()
}

/// Mark the start of this boot (call first thing at the entry point).
pub fn mark_boot() {
    let _ = BOOTED_AT_US.set(crate::hw::monotonic_micros());
}

/// Milliseconds since [`mark_boot`].
fn uptime_ms() -> u64 {
    let since = BOOTED_AT_US.get().copied().unwrap_or(0);
    crate::hw::monotonic_micros().saturating_sub(since) / 1000
}

pub fn init(features: HostFeatures) {
    let _ = FEATURES.set(features);
    let _ = HEAP_AT_BOOT.set(crate::hw::probe_free_heap(HEAP_PROBE_LIMIT) as u64);
}

fn vm_info(v: crate::vms::VmView) -> VmInfo {
    let mut info = VmInfo::new(v.id, v.summary);
    // What the guest sees from its next start or reset on.
    info.pmu = v.pending_pmu.unwrap_or(v.pmu);
    info.running_on = v.running_on;
    info
}

fn vm_error(e: crate::vms::VmError) -> VmError {
    use crate::vms::VmError as E;
    match e {
        E::NotFound => VmError::NotFound,
        E::State(t) => t.into(),
        E::NoSuchImage => VmError::UnknownImage,
        E::BadImage(why) => VmError::BadImage(why),
        E::NoMemory => VmError::NoMemory,
        E::Unsupported => {
            VmError::Unsupported("guests need SVM or VMX, and this machine has neither in use")
        }
        E::NameTaken => VmError::NameTaken,
        E::TooMany => VmError::TooMany,
        E::NoSuchCpu => VmError::Unsupported("cpu: no such CPU to pin the VM to"),
        E::Vcpu => VmError::Failed("the vCPU could not be set up"),
    }
}

fn tdx_info() -> TdxInfo {
    match crate::tdx::support() {
        None => TdxInfo::unsupported("not detected yet"),
        Some(tdx::TdxSupport::Unsupported { reason }) => TdxInfo::unsupported(reason.as_str()),
        Some(tdx::TdxSupport::Supported { .. }) => {
            TdxInfo::supported(crate::tdx::state().map_or("off", |s| s.as_str()))
        }
    }
}

pub fn virt_kind() -> VirtKind {
    FEATURES.get().map_or(VirtKind::None, |f| f.virt)
}

/// The endpoint's handle on the hypervisor.
#[derive(Debug)]
pub struct Hypervisor;

fn info(layer: Option<&VirtLayer<PerCpuBackend>>, id: usize) -> Option<CpuInfo<'static>> {
    let slot = cpus::slot(id)?;
    let mut c = CpuInfo::new(id as u32, slot.apic_id());
    // What the CPU's own EFER/CR4 said, not our bookkeeping.
    c.virt = match slot.virt_on() {
        Some(VirtKind::Svm) => CpuVirt::Svm,
        Some(VirtKind::Vmx) => CpuVirt::Vmx,
        _ => CpuVirt::Off,
    };
    if let Some(snap) = layer.and_then(|l| l.snapshot(CpuId(id as u32))) {
        c.online = snap.online;
        c.users = snap.users.len();
        c.last_error = snap.last_error.map(cpu_error_str);
    }
    match slot.self_test() {
        Some(Ok(())) => c.selftest = Some(SelfTest::Passed),
        Some(Err(e)) => {
            c.selftest = Some(SelfTest::Failed);
            c.last_error = c.last_error.or(Some(e.as_str()));
        }
        None => {}
    }
    Some(c)
}

fn cpu_error_str(e: virt::CpuError) -> &'static str {
    use virt::{CpuError as E, DisableError as D, EnableError as En};
    match e {
        E::Enable(En::Busy) => "enable refused: virtualization already on (another owner)",
        E::Enable(En::Unsupported) => "enable failed: not supported by this CPU",
        E::Enable(En::Disabled) => "enable failed: disabled by firmware",
        E::Enable(En::Failed {
            code: crate::virt::CODE_TIMEOUT,
        }) => "enable failed: CPU did not answer",
        E::Enable(En::Failed { .. }) => "enable failed",
        E::Disable(D::Fault) => "disable faulted",
        E::Disable(D::Failed {
            code: crate::virt::CODE_TIMEOUT,
        }) => "disable failed: CPU did not answer",
        E::Disable(D::Failed { .. }) => "disable failed",
    }
}

impl Backend for Hypervisor {
    fn health(&self) -> Health<'_> {
        let virt = match virt_kind() {
            VirtKind::Svm => Virt::Svm,
            VirtKind::Vmx => Virt::Vmx,
            VirtKind::None => Virt::None,
        };
        Health::new(net::api::VERSION, cpus::count() as u32, virt)
    }

    fn cpus(&self, each: &mut dyn FnMut(&CpuInfo<'_>)) {
        let guard = layer();
        for id in 0..cpus::count() {
            if let Some(c) = info(guard.as_ref(), id) {
                each(&c);
            }
        }
    }

    fn cpu(&self, id: u32) -> Result<CpuInfo<'_>, CpuError> {
        info(layer().as_ref(), id as usize).ok_or(CpuError::NotFound)
    }

    fn cpu_online(&mut self, id: u32) -> Result<CpuInfo<'_>, CpuError> {
        let mut guard = layer();
        let l = guard.as_mut().ok_or(CpuError::NotFound)?;
        let result = l.online(CpuId(id)).map_err(|e| match e {
            OnlineError::NoSuchCpu => CpuError::NotFound,
            OnlineError::AlreadyOnline => CpuError::Conflict(Conflict::AlreadyOnline),
            OnlineError::Rebooting => CpuError::Conflict(Conflict::Rebooting),
            OnlineError::Enable(_) => CpuError::Failed(Failure::VirtEnable),
        });
        if result.is_ok() {
            crate::tdx::on_online(CpuId(id), l);
        }
        drop(guard);
        crate::trace::cpu(id, true, result.is_ok());
        result?;
        crate::vms::restore(id as usize);
        // Back in service: prove VMRUN works there again.
        if virt_kind() != VirtKind::None {
            crate::virt::self_test(id as usize);
        }
        info(layer().as_ref(), id as usize).ok_or(CpuError::NotFound)
    }

    fn cpu_offline(&mut self, id: u32) -> Result<CpuInfo<'_>, CpuError> {
        let mut guard = layer();
        let l = guard.as_mut().ok_or(CpuError::NotFound)?;
        let vetoes: [&dyn virt::OfflineVeto; 2] = [&EndpointCpu, &crate::tdx::TdxVeto];
        let result = l.offline(CpuId(id), &vetoes).map_err(|e| match e {
            OfflineError::NoSuchCpu => CpuError::NotFound,
            OfflineError::AlreadyOffline => CpuError::Conflict(Conflict::AlreadyOffline),
            OfflineError::LastOnlineCpu => CpuError::Conflict(Conflict::LastOnline),
            OfflineError::Conflict(virt::Conflict::Pinned) => {
                CpuError::Conflict(Conflict::ServesEndpoint)
            }
            OfflineError::Conflict(virt::Conflict::LastInPackage { .. }) => {
                CpuError::Conflict(Conflict::TdxKeysInUse)
            }
            OfflineError::Disable(_) => CpuError::Failed(Failure::VirtDisable),
        });
        crate::trace::cpu(id, false, result.is_ok());
        result?;
        let (moved, paused) = crate::vms::evacuate(id as usize, l.online_cpus());
        if moved + paused > 0 {
            println!("hermitage: cpu {id} offline: {moved} vms moved, {paused} paused");
        }
        info(Some(l), id as usize).ok_or(CpuError::NotFound)
    }

    fn host(&self) -> HostInfo {
        let features = FEATURES
            .get()
            .copied()
            .unwrap_or_else(crate::cpus::detect_here);
        let mut h = HostInfo::new(features, tdx_info());
        h.memory_total_bytes = HEAP_AT_BOOT.get().copied().unwrap_or(0);
        h.memory_free_bytes = crate::hw::probe_free_heap(HEAP_PROBE_LIMIT) as u64;
        h.uptime_ms = uptime_ms();
        h.cpus = cpus::count() as u32;
        h.vms = crate::vms::count() as u32;
        h
    }

    fn vms(&self, each: &mut dyn FnMut(&VmInfo)) {
        crate::vms::each(|v| each(&vm_info(v)));
    }

    fn vm(&self, id: u32) -> Result<VmInfo, VmError> {
        crate::vms::view(id).map(vm_info).map_err(vm_error)
    }

    fn vm_create(
        &mut self,
        config: hv::vm::VmConfig,
        pmu: hv::vpmu::PmuConfig,
        start: bool,
    ) -> Result<VmInfo, VmError> {
        // Create and start are one operation: what cannot start is refused before anything
        // exists (an `uploaded` VM has no image yet), and a start that fails anyway undoes
        // the create, so a failed request leaves nothing behind.
        if start && config.image == hv::vm::ImageRef::Uploaded {
            return Err(VmError::NoImage {
                event: hv::vm::VmEvent::Start,
            });
        }
        let id = crate::vms::create(config, pmu, None).map_err(vm_error)?;
        if start {
            if let Err(e) = crate::vms::event(id, hv::vm::VmEvent::Start) {
                // A created VM can always be deleted; should that fail, say so.
                if crate::vms::delete(id).is_err() {
                    println!("hermitage: vm {id}: start failed and the create could not be undone");
                }
                return Err(vm_error(e));
            }
        }
        self.vm(id)
    }

    fn vm_action(&mut self, id: u32, action: VmAction) -> Result<VmInfo, VmError> {
        let event = action.event();
        // Start and reset load the image: without one that is the VM's state, not the request.
        if matches!(event, hv::vm::VmEvent::Start | hv::vm::VmEvent::Reset(_))
            && !crate::vms::has_image(id).map_err(vm_error)?
        {
            return Err(VmError::NoImage { event });
        }
        crate::vms::event(id, event).map_err(vm_error)?;
        self.vm(id)
    }

    fn vm_delete(&mut self, id: u32) -> Result<(), VmError> {
        crate::vms::delete(id).map_err(vm_error)
    }

    fn vm_console(&self, id: u32, offset: u64, buf: &mut [u8]) -> Result<ConsoleRead, VmError> {
        crate::vms::console(id, offset, buf).map_err(vm_error)
    }

    fn vm_console_input(
        &mut self,
        id: u32,
        bytes: &[u8],
    ) -> Result<net::api::ConsoleInput, VmError> {
        use crate::vms::InputOutcome;
        // The body limit keeps `bytes` within the queue's size (4 KiB): the casts are exact.
        let needed = bytes.len() as u32;
        match crate::vms::console_input(id, bytes).map_err(vm_error)? {
            InputOutcome::Queued { queued } => {
                Ok(net::api::ConsoleInput::new(needed, queued as u32))
            }
            InputOutcome::NotRunning(from) => Err(VmError::InputWhile { from }),
            InputOutcome::Full { free } => Err(VmError::InputFull {
                free: free as u32,
                needed,
            }),
        }
    }

    fn vm_set_pmu(&mut self, id: u32, pmu: hv::vpmu::PmuConfig) -> Result<VmInfo, VmError> {
        crate::vms::set_pmu(id, pmu).map(vm_info).map_err(vm_error)
    }

    fn vm_pmu(&self, id: u32) -> Result<net::api::PmuInfo, VmError> {
        crate::vms::pmu(id).map_err(vm_error)
    }

    fn vm_upload_allowed(&self, id: u32) -> Result<(), VmError> {
        use hv::vm::VmState;
        match crate::vms::view(id).map_err(vm_error)?.summary.state {
            from @ (VmState::Running | VmState::Paused) => Err(VmError::UploadWhile { from }),
            _ => Ok(()),
        }
    }

    fn vm_image(&mut self, id: u32, image: &[u8]) -> Result<VmInfo, VmError> {
        self.vm_upload_allowed(id)?;
        crate::vms::upload(id, image.to_vec()).map_err(|e| match e {
            // Started meanwhile: the same answer as from the head.
            crate::vms::VmError::State(hv::vm::TransitionError::WrongState { from, .. }) => {
                VmError::UploadWhile { from }
            }
            e => vm_error(e),
        })?;
        self.vm(id)
    }

    fn vm_initrd(&mut self, id: u32, initrd: &[u8]) -> Result<VmInfo, VmError> {
        self.vm_upload_allowed(id)?;
        crate::vms::upload_initrd(id, initrd.to_vec()).map_err(|e| match e {
            crate::vms::VmError::State(hv::vm::TransitionError::WrongState { from, .. }) => {
                VmError::UploadWhile { from }
            }
            e => vm_error(e),
        })?;
        self.vm(id)
    }

    fn reboot(&mut self) -> Result<(), CpuError> {
        if crate::virt::request_reboot() {
            Ok(())
        } else {
            Err(CpuError::Conflict(Conflict::Rebooting))
        }
    }
}
