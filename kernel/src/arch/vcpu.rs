//! One vCPU, whichever virtualization the host has: the rest of the kernel (`vms.rs`) sees
//! only [`Vcpu`], which forwards to the SVM (`svm_vcpu.rs`) or VMX (`vmx_vcpu.rs`) backend
//! chosen by the host's virtualization kind. [`Vcpu::on`] binds it to the CPU it is entered on
//! and is the `hv::vcpu::run::VcpuBackend` the run loop drives: both backends report their
//! exits in the core's neutral vocabulary, so the run loop and the exit handler are shared.

#![forbid(unsafe_code)]

use alloc::boxed::Box;

use hv::exit::{GuestView, RegUpdate};
use hv::features::VirtKind;
use hv::vcpu::VcpuState;
use hv::vcpu::run::{EntryError, Event, Exited, Interruptibility, VcpuBackend};

use super::svm_vcpu::SvmVcpu;
use super::vmx_vcpu::VmxVcpu;
use crate::hw::GuestRam;

/// Why a vCPU could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuError {
    NoMemory,
    NotContiguous,
    /// The initial state failed the backend's own entry checks.
    Consistency,
    /// The host has no virtualization this build can run guests on.
    Unsupported,
}

/// Map all of `ram` at guest-physical 0 in 2 MiB steps through `map(gpa, hpa, len)`, the
/// backend's nested page table (NPT or EPT) insertion.
pub fn map_guest_ram<T, E>(
    ram: &GuestRam,
    mut map: impl FnMut(u64, u64, u64) -> Result<T, E>,
) -> Result<(), VcpuError> {
    for i in 0..ram.len() / GuestRam::CHUNK {
        let hpa = ram.chunk_phys(i).ok_or(VcpuError::NotContiguous)?;
        let gpa = (i * GuestRam::CHUNK) as u64;
        map(gpa, hpa, GuestRam::CHUNK as u64).map_err(|_| VcpuError::NoMemory)?;
    }
    Ok(())
}

/// How the vCPU starts (the backends' guest builders take the same three modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMode {
    /// 32-bit protected mode, flat segments, paging off: the Multiboot 1 handoff.
    Protected32 {
        eip: u32,
        esp: u32,
        /// Multiboot information structure; `Some` also puts the magic in EAX.
        multiboot_info: Option<u32>,
    },
    /// 64-bit long mode with the guest's own page tables at `cr3`.
    Long64 { cr3: u64, rip: u64, rsp: u64 },
    /// The Linux x86-64 boot protocol's entry (`guests::linux::Entry`).
    Linux64(hv::vcpu::LinuxEntry),
    /// 16-bit real mode at CS:IP.
    Real16 { cs: u16, ip: u16, sp: u16 },
}

impl From<GuestMode> for svm::guest::GuestMode {
    fn from(m: GuestMode) -> Self {
        use svm::guest::GuestMode as S;
        match m {
            GuestMode::Protected32 {
                eip,
                esp,
                multiboot_info,
            } => S::Protected32 {
                eip,
                esp,
                multiboot_info,
            },
            GuestMode::Long64 { cr3, rip, rsp } => S::Long64 { cr3, rip, rsp },
            GuestMode::Linux64(e) => S::Linux64(e),
            GuestMode::Real16 { cs, ip, sp } => S::Real16 { cs, ip, sp },
        }
    }
}

impl From<GuestMode> for vmx::guest::GuestMode {
    fn from(m: GuestMode) -> Self {
        use vmx::guest::GuestMode as V;
        match m {
            GuestMode::Protected32 {
                eip,
                esp,
                multiboot_info,
            } => V::Protected32 {
                eip,
                esp,
                multiboot_info,
            },
            GuestMode::Long64 { cr3, rip, rsp } => V::Long64 { cr3, rip, rsp },
            GuestMode::Linux64(e) => V::Linux64(e),
            GuestMode::Real16 { cs, ip, sp } => V::Real16 { cs, ip, sp },
        }
    }
}

/// What a vCPU needs to know about the CPU it is entered on, gathered by that CPU's worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCpu {
    /// SVM: this CPU's VMSAVE host area, and whether it reports next-RIP (NRIPS).
    Svm { host_area: u64, nrips: bool },
    /// VMX: everything else is read on the CPU itself at entry.
    Vmx,
}

impl HostCpu {
    /// CPU `cpu`'s context if it can run guests now (virtualization of `kind` on here).
    /// Call on that CPU, before each slice.
    pub fn here(kind: VirtKind, cpu: usize, nrips: bool) -> Option<HostCpu> {
        match kind {
            VirtKind::Svm if super::svm::is_enabled() => Some(HostCpu::Svm {
                host_area: super::svm::host_area(cpu),
                nrips,
            }),
            VirtKind::Vmx if super::vmx::is_enabled() => {
                // Deleted VMs' VMCSs still active here are cleared and freed between slices,
                // not on every entry.
                super::vmx_vcpu::reap(cpu);
                Some(HostCpu::Vmx)
            }
            _ => None,
        }
    }
}

/// Both kinds are boxed: they differ in size several times over (the VMX one carries a pending
/// guest-state area between a reset and its next entry).
#[derive(Debug)]
pub enum Vcpu {
    Svm(Box<SvmVcpu>),
    Vmx(Box<VmxVcpu>),
}

/// `run` error code when the vCPU and the CPU context are of different kinds.
pub const CODE_WRONG_BACKEND: u64 = 0x2_0000;

impl Vcpu {
    /// A vCPU of the host's kind whose nested page tables map all of `ram` at guest-physical 0.
    pub fn new(ram: &GuestRam) -> Result<Vcpu, VcpuError> {
        match crate::backend::virt_kind() {
            VirtKind::Svm => SvmVcpu::new(ram).map(|v| Vcpu::Svm(Box::new(v))),
            VirtKind::Vmx => VmxVcpu::new(ram).map(|v| Vcpu::Vmx(Box::new(v))),
            VirtKind::None => Err(VcpuError::Unsupported),
        }
    }

    /// Architectural reset into `mode`.
    pub fn reset(&mut self, mode: GuestMode) -> Result<(), VcpuError> {
        match self {
            Vcpu::Svm(v) => v.reset(mode.into()),
            Vcpu::Vmx(v) => v.reset(mode.into()),
        }
    }

    /// This vCPU bound to CPU `cpu` (described by `host`) and its RAM, for the run loop.
    pub fn on<'a>(&'a mut self, cpu: usize, host: HostCpu, ram: &'a mut GuestRam) -> OnCpu<'a> {
        OnCpu {
            vcpu: self,
            cpu,
            host,
            ram,
        }
    }

    pub fn set_rip(&mut self, rip: u64) {
        match self {
            Vcpu::Svm(v) => v.set_rip(rip),
            Vcpu::Vmx(v) => v.set_rip(rip),
        }
    }
}

/// A vCPU on the CPU that enters it: the run loop's backend.
#[derive(Debug)]
pub struct OnCpu<'a> {
    vcpu: &'a mut Vcpu,
    cpu: usize,
    host: HostCpu,
    ram: &'a mut GuestRam,
}

impl VcpuBackend for OnCpu<'_> {
    /// Enter the guest once and decode why it left. `Err` is a failed entry with the
    /// backend's code (VMX: the VM-instruction error number).
    fn enter(&mut self) -> Result<Exited, EntryError> {
        match (&mut *self.vcpu, self.host) {
            (Vcpu::Svm(v), HostCpu::Svm { host_area, nrips }) => {
                v.run(self.cpu, host_area, &mut *self.ram, nrips)
            }
            (Vcpu::Vmx(v), HostCpu::Vmx) => v.run(self.cpu),
            _ => Err(CODE_WRONG_BACKEND),
        }
        .map_err(|code| EntryError { code })
    }

    fn view(&self) -> GuestView {
        match &*self.vcpu {
            Vcpu::Svm(v) => v.view(),
            Vcpu::Vmx(v) => v.view(),
        }
    }

    fn set_rip(&mut self, rip: u64) {
        self.vcpu.set_rip(rip);
    }

    fn apply(&mut self, rip: u64, u: &RegUpdate) {
        match &mut *self.vcpu {
            Vcpu::Svm(v) => v.apply(rip, u),
            Vcpu::Vmx(v) => v.apply(rip, u),
        }
    }

    fn inject(&mut self, event: Event) {
        match &mut *self.vcpu {
            Vcpu::Svm(v) => v.inject(event),
            Vcpu::Vmx(v) => v.inject(event),
        }
    }

    fn interruptibility(&self) -> Interruptibility {
        match &*self.vcpu {
            Vcpu::Svm(v) => v.interruptibility(),
            Vcpu::Vmx(v) => v.interruptibility(),
        }
    }

    fn set_interrupt_window(&mut self, open: bool) {
        match &mut *self.vcpu {
            Vcpu::Svm(v) => v.set_interrupt_window(open),
            Vcpu::Vmx(v) => v.set_interrupt_window(open),
        }
    }

    /// Guests run with no TSC offset or scaling: the guest's TSC is the host's.
    fn guest_tsc(&self) -> u64 {
        crate::hw::rdtsc()
    }

    type Memory = [u8];

    fn state(&self) -> VcpuState {
        match &*self.vcpu {
            Vcpu::Svm(v) => v.state(),
            Vcpu::Vmx(v) => v.state(),
        }
    }

    fn set_state(&mut self, state: &VcpuState) {
        match &mut *self.vcpu {
            Vcpu::Svm(v) => v.set_state(state),
            Vcpu::Vmx(v) => v.set_state(state),
        }
    }

    fn memory(&mut self) -> &mut [u8] {
        self.ram.as_mut_slice()
    }
}
