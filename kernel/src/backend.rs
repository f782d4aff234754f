//! The hypervisor as the control endpoint sees it: `net::api::Backend` over the per-CPU state
//! the CPUs published (`cpus.rs`) and the host features decided at boot.

use hermit_sync::OnceCell;
use hv::features::{HostFeatures, VirtKind};
use net::api::{Backend, CpuError, CpuInfo, CpuVirt, Health, Virt};

use crate::cpus;

static FEATURES: OnceCell<HostFeatures> = OnceCell::new();

/// Record the boot CPU's features for the API.
pub fn init(features: HostFeatures) {
    let _ = FEATURES.set(features);
}

fn virt_kind() -> VirtKind {
    FEATURES.get().map_or(VirtKind::None, |f| f.virt)
}

/// The endpoint's handle on the hypervisor.
#[derive(Debug)]
pub struct Hypervisor;

fn info(id: usize) -> Option<CpuInfo<'static>> {
    let slot = cpus::slot(id)?;
    let mut c = CpuInfo::new(id as u32, slot.apic_id());
    c.online = slot.is_up();
    c.virt = match slot.virt_on() {
        Some(VirtKind::Svm) => CpuVirt::Svm,
        Some(VirtKind::Vmx) => CpuVirt::Vmx,
        _ => CpuVirt::Off,
    };
    Some(c)
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
        for id in 0..cpus::count() {
            if let Some(c) = info(id) {
                each(&c);
            }
        }
    }

    fn cpu(&self, id: u32) -> Result<CpuInfo<'_>, CpuError> {
        info(id as usize).ok_or(CpuError::NotFound)
    }

    fn cpu_online(&mut self, id: u32) -> Result<CpuInfo<'_>, CpuError> {
        let c = info(id as usize).ok_or(CpuError::NotFound)?;
        Err(if c.online {
            CpuError::Conflict(net::api::Conflict::AlreadyOnline)
        } else {
            CpuError::Conflict(net::api::Conflict::Busy)
        })
    }

    fn cpu_offline(&mut self, id: u32) -> Result<CpuInfo<'_>, CpuError> {
        info(id as usize).ok_or(CpuError::NotFound)?;
        // CPU hotplug arrives with the per-CPU virtualization layer; until then every CPU
        // that came up stays in service.
        Err(CpuError::Conflict(net::api::Conflict::Busy))
    }
}
