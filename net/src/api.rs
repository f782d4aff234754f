//! What the API says and who answers: reply types and the [`Backend`] trait.
//!
//! The reply types are the JSON documents of the API, as plain serde structs, so that the wire
//! format is written down in one place and checked by the tests. The [`Backend`] trait is the
//! seam to the hypervisor: the kernel implements it over the real per-CPU state, the tests over
//! a fake. Backend errors are small `Copy` enums ([`CpuError`]); this crate maps them to status
//! codes and JSON bodies (see [`crate::error`]).
//!
//! The structs are `#[non_exhaustive]` so that fields can be added without breaking the
//! kernel: build them with `new` and set the public fields.

use serde::Serialize;

/// The crate's version, a ready value for [`Health::version`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Which hardware virtualization the machine uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Virt {
    /// AMD SVM.
    Svm,
    /// Intel VMX.
    Vmx,
    /// Neither is available.
    None,
}

/// What virtualization is enabled on one CPU right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuVirt {
    /// EFER.SVME is set.
    Svm,
    /// The CPU is in VMX operation.
    Vmx,
    /// Virtualization is off on this CPU.
    Off,
}

/// The outcome of a CPU's virtualization self-test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SelfTest {
    /// The self-test ran and passed.
    Passed,
    /// The self-test ran and failed.
    Failed,
}

/// `GET /v1/health`.
///
/// `{"status":"ok","version":"0.1.0","cpus":4,"virt":"svm"}`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Health<'a> {
    /// Always `"ok"` when the endpoint answers at all.
    pub status: &'static str,
    /// The hypervisor's version.
    pub version: &'a str,
    /// How many CPUs the hypervisor manages.
    pub cpus: u32,
    /// Which virtualization the machine uses.
    pub virt: Virt,
}

impl<'a> Health<'a> {
    /// A health reply with `status: "ok"`.
    pub fn new(version: &'a str, cpus: u32, virt: Virt) -> Self {
        Health {
            status: "ok",
            version,
            cpus,
            virt,
        }
    }
}

/// One CPU: an element of `GET /v1/cpus`, the reply of `GET /v1/cpus/{id}` and of the online and
/// offline commands.
///
/// `{"id":1,"apic_id":2,"online":true,"virt":"vmx","users":1,"selftest":"passed","last_error":null}`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CpuInfo<'a> {
    /// The CPU index the API uses (`/v1/cpus/{id}`).
    pub id: u32,
    /// Its local APIC id.
    pub apic_id: u32,
    /// Whether the CPU is online.
    pub online: bool,
    /// What virtualization is enabled on it now.
    pub virt: CpuVirt,
    /// How many users hold a reference on virtualization on this CPU.
    pub users: u32,
    /// The last self-test outcome; `null` if none ran.
    pub selftest: Option<SelfTest>,
    /// The last error on this CPU in words, if any; `null` otherwise.
    pub last_error: Option<&'a str>,
}

impl CpuInfo<'_> {
    /// An offline CPU with virtualization off, no users, no self-test and no error.
    pub fn new(id: u32, apic_id: u32) -> Self {
        CpuInfo {
            id,
            apic_id,
            online: false,
            virt: CpuVirt::Off,
            users: 0,
            selftest: None,
            last_error: None,
        }
    }
}

/// Why a CPU command failed. `Copy`, no strings: the HTTP layer maps it to a status and a
/// JSON `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuError {
    /// No CPU has that id: 404 `cpu_not_found`.
    NotFound,
    /// The CPU's state does not allow the command now: 409 `conflict`.
    Conflict(Conflict),
    /// The command was tried and failed on the way; the CPU was rolled back: 500 `cpu_failed`.
    Failed(Failure),
}

/// Why a CPU command conflicts with the CPU's state (409). Serialized as `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Conflict {
    /// Online requested, the CPU is already online: `already_online`.
    AlreadyOnline,
    /// Offline requested, the CPU is already offline: `already_offline`.
    AlreadyOffline,
    /// Offline requested for the last online CPU (or one that must stay up): `last_online`.
    LastOnline,
    /// A transition on this CPU is in progress: `busy`.
    Busy,
    /// The hypervisor is rebooting: `rebooting`.
    Rebooting,
    /// The CPU serves the control endpoint and must stay in service: `serves_endpoint`.
    ServesEndpoint,
    /// TDX: the last online CPU of a package whose key IDs are in use: `tdx_keys_in_use`.
    TdxKeysInUse,
}

/// How a CPU command failed (500). Serialized as `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// Turning virtualization on failed (VMXON / EFER.SVME): `virt_enable`.
    VirtEnable,
    /// Turning virtualization off failed: `virt_disable`.
    VirtDisable,
    /// The CPU did not answer in time: `timeout`.
    Timeout,
}

impl Conflict {
    /// The stable snake_case reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            Conflict::AlreadyOnline => "already_online",
            Conflict::AlreadyOffline => "already_offline",
            Conflict::LastOnline => "last_online",
            Conflict::Busy => "busy",
            Conflict::Rebooting => "rebooting",
            Conflict::ServesEndpoint => "serves_endpoint",
            Conflict::TdxKeysInUse => "tdx_keys_in_use",
        }
    }
}

impl Failure {
    /// The stable snake_case reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            Failure::VirtEnable => "virt_enable",
            Failure::VirtDisable => "virt_disable",
            Failure::Timeout => "timeout",
        }
    }
}

/// The hypervisor as the control endpoint sees it: one method per [`crate::router::Command`].
///
/// Called from the endpoint's thread; an implementation that has to run the command on the CPU
/// that owns it (DESIGN.md: per-CPU queues) waits for that CPU's reply inside the method.
pub trait Backend {
    /// `GET /v1/health`.
    fn health(&self) -> Health<'_>;

    /// `GET /v1/cpus`: calls `each` once per CPU, in id order.
    fn cpus(&self, each: &mut dyn FnMut(&CpuInfo<'_>));

    /// `GET /v1/cpus/{id}`.
    fn cpu(&self, id: u32) -> Result<CpuInfo<'_>, CpuError>;

    /// `POST /v1/cpus/{id}/online`: bring the CPU online (virtualization on); its state after.
    fn cpu_online(&mut self, id: u32) -> Result<CpuInfo<'_>, CpuError>;

    /// `POST /v1/cpus/{id}/offline`: take the CPU offline (virtualization off); its state after.
    fn cpu_offline(&mut self, id: u32) -> Result<CpuInfo<'_>, CpuError>;

    /// `POST /v1/host/reboot`: schedule a reboot of the hypervisor once this reply is sent
    /// (virtualization off on every CPU, then a machine reset). `Conflict(Rebooting)` if one
    /// is already under way.
    fn reboot(&mut self) -> Result<(), CpuError>;
}

/// `POST /v1/host/reboot` answers `202` with `{"status":"rebooting"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rebooting {
    /// Always `"rebooting"`.
    pub status: &'static str,
}
