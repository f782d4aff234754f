//! The hypervisor as the control endpoint sees it: `net::api::Backend` over the virt layer
//! (online/offline, users), what each CPU published about its hardware (`cpus.rs`), and the
//! host features decided at boot.

use hermit_sync::OnceCell;
use hv::features::{HostFeatures, VirtKind};
use hv::virt::{self, CpuId, OfflineError, OnlineError, VirtLayer};
use net::api::{Backend, Conflict, CpuError, CpuInfo, CpuVirt, Failure, Health, SelfTest, Virt};

use crate::cpus;
use crate::virt::{EndpointCpu, PerCpuBackend, layer};

static FEATURES: OnceCell<HostFeatures> = OnceCell::new();

/// Record the boot CPU's features for the API.
pub fn features() -> Option<HostFeatures> {
    FEATURES.get().copied()
}

pub fn init(features: HostFeatures) {
    let _ = FEATURES.set(features);
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
        l.offline(CpuId(id), &vetoes).map_err(|e| match e {
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
        })?;
        let (moved, paused) = crate::vms::evacuate(id as usize, l.online_cpus());
        if moved + paused > 0 {
            println!("hermitage: cpu {id} offline: {moved} vms moved, {paused} paused");
        }
        info(Some(l), id as usize).ok_or(CpuError::NotFound)
    }

    fn reboot(&mut self) -> Result<(), CpuError> {
        if crate::virt::request_reboot() {
            Ok(())
        } else {
            Err(CpuError::Conflict(Conflict::Rebooting))
        }
    }
}
