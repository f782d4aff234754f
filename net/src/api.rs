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

    /// `GET /v1/host`. The default reports unknown features and only the CPU count of
    /// [`Backend::health`]; the kernel overrides it.
    fn host(&self) -> HostInfo {
        let mut h = HostInfo::new(UNKNOWN_FEATURES, TdxInfo::unsupported("not reported"));
        h.cpus = self.health().cpus;
        h
    }

    // VMs. Every method has a default that refuses with [`VmError::Unsupported`] (and lists
    // nothing), so that a backend without VMs still builds; the kernel overrides them all.

    /// `GET /v1/vms` (and the VM series of `GET /v1/metrics`): calls `each` once per VM, in
    /// id order.
    fn vms(&self, each: &mut dyn FnMut(&VmInfo)) {
        let _ = each;
    }

    /// `GET /v1/vms/{id}` and `GET /v1/vms/{id}/stats`.
    fn vm(&self, id: u32) -> Result<VmInfo, VmError> {
        let _ = id;
        Err(VmError::NotFound)
    }

    /// `POST /v1/vms`: create a VM from a validated configuration (memory allocated, image
    /// loaded, state created) and, if `start`, start it. `pmu` is validated too
    /// ([`hv::vpmu::PmuConfig::validate`]); the backend still refuses one the host cannot
    /// provide ([`VmError::Unsupported`]). Errors: `NameTaken`, `TooMany`, `NoMemory`,
    /// `UnknownImage`, `Unsupported`, `Failed`.
    fn vm_create(
        &mut self,
        config: hv::vm::VmConfig,
        pmu: hv::vpmu::PmuConfig,
        start: bool,
    ) -> Result<VmInfo, VmError> {
        let _ = (config, pmu, start);
        Err(VmError::Unsupported(NO_VMS))
    }

    /// `POST /v1/vms/{id}/{start,pause,resume,stop,reset}`: feed [`VmAction::event`] to
    /// [`hv::vm::apply`] and carry out the effect; the VM after. A refused transition is
    /// [`VmError::InvalidState`] (`From<TransitionError>` exists).
    fn vm_action(&mut self, id: u32, action: VmAction) -> Result<VmInfo, VmError> {
        let _ = (id, action);
        Err(VmError::Unsupported(NO_VMS))
    }

    /// `DELETE /v1/vms/{id}`: [`hv::vm::VmEvent::Delete`] (refused while running), memory
    /// freed, id forgotten.
    fn vm_delete(&mut self, id: u32) -> Result<(), VmError> {
        let _ = id;
        Err(VmError::Unsupported(NO_VMS))
    }

    /// `GET /v1/vms/{id}/console?offset=N`: copy console bytes from absolute `offset` into
    /// `buf` ([`hv::devices::ConsoleRing::read`] does exactly this).
    fn vm_console(&self, id: u32, offset: u64, buf: &mut [u8]) -> Result<ConsoleRead, VmError> {
        let _ = (id, offset, buf);
        Err(VmError::Unsupported(NO_VMS))
    }

    /// `POST /v1/vms/{id}/console`: queue `bytes` (at most [`CONSOLE_INPUT_MAX`]) for the
    /// guest's COM1 receiver, all or nothing, and wake its vCPU. Refused with `InputWhile`
    /// unless the VM is running or paused, and with `InputFull` when the queue's free room
    /// is less than `bytes.len()` (nothing queued either way).
    fn vm_console_input(&mut self, id: u32, bytes: &[u8]) -> Result<ConsoleInput, VmError> {
        let _ = (id, bytes);
        Err(VmError::Unsupported(NO_VMS))
    }

    /// `PUT /v1/vms/{id}/pmu`: store a validated PMU configuration; it takes effect at the
    /// VM's next start or reset (the vPMU is rebuilt from the configuration then, never
    /// changed under a running guest). Allowed in every state; `Unsupported` if the host
    /// cannot provide it.
    fn vm_set_pmu(&mut self, id: u32, pmu: hv::vpmu::PmuConfig) -> Result<VmInfo, VmError> {
        let _ = (id, pmu);
        Err(VmError::Unsupported(NO_VMS))
    }

    /// `GET /v1/vms/{id}/pmu`: the VM's vPMU: configuration, derived model, live registers.
    fn vm_pmu(&self, id: u32) -> Result<PmuInfo, VmError> {
        let _ = id;
        Err(VmError::NotFound)
    }

    /// `PUT /v1/vms/{id}/image`: check `image` (a Multiboot ELF32; `BadImage(reason)` if
    /// refused, VM unchanged), keep a copy as the VM's image (`image` becomes `"uploaded"`)
    /// and load it at the next start or reset. Refused with `UploadWhile` while the VM runs.
    fn vm_image(&mut self, id: u32, image: &[u8]) -> Result<VmInfo, VmError> {
        let _ = (id, image);
        Err(VmError::Unsupported(NO_VMS))
    }

    /// `PUT /v1/vms/{id}/initrd`: check `initrd` against the VM's image and RAM (a Linux
    /// kernel's initramfs, or a multiboot image's one module; `BadImage(reason)` if refused,
    /// VM unchanged), keep it and load it with the image at the next start or reset. Refused
    /// with `UploadWhile` while the VM runs.
    fn vm_initrd(&mut self, id: u32, initrd: &[u8]) -> Result<VmInfo, VmError> {
        let _ = (id, initrd);
        Err(VmError::Unsupported(NO_VMS))
    }

    /// Whether VM `id` may take an image upload now, asked from the head of `PUT
    /// /v1/vms/{id}/image` before its body is read: `Err(NotFound)`, `Err(UploadWhile)` (it
    /// runs) and the like are answered at once and the connection closed, so that a client
    /// does not send megabytes to be refused. The default allows every upload
    /// ([`Backend::vm_image`] still judges it).
    fn vm_upload_allowed(&self, id: u32) -> Result<(), VmError> {
        let _ = id;
        Ok(())
    }
}

const NO_VMS: &str = "this hypervisor does not run VMs";

/// Features of a host that reported none: what the default [`Backend::host`] shows.
pub const UNKNOWN_FEATURES: hv::features::HostFeatures = hv::features::HostFeatures {
    vendor: hv::features::Vendor::Other,
    virt: hv::features::VirtKind::None,
    virt_unusable: None,
    nested_paging: false,
    nrips: false,
    asids: 0,
    vpid: false,
    svm_revision: 0,
    x2apic: false,
    under_hypervisor: false,
    tme: false,
    pmu: hv::features::PmuInfo {
        version: 0,
        gp_counters: 0,
        gp_width: 0,
        fixed_counters: 0,
        fixed_width: 0,
        amd_core_ext: false,
        amd_perfmon_v2: false,
    },
};

/// `POST /v1/host/reboot` answers `202` with `{"status":"rebooting"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rebooting {
    /// Always `"rebooting"`.
    pub status: &'static str,
}

// ---------------------------------------------------------------------------------------------
// VMs
// ---------------------------------------------------------------------------------------------

/// A VM command without arguments: `POST /v1/vms/{id}/{action}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmAction {
    /// Start a created VM, or restart a stopped or crashed one from a freshly loaded image.
    Start,
    /// Park the running vCPU, keeping its state.
    Pause,
    /// Run a paused VM again.
    Resume,
    /// Stop the vCPU for good (memory and console stay).
    Stop,
    /// Reset vCPU, devices and vPMU, reload the image, run.
    Reset,
}

impl VmAction {
    /// Every action, in path order.
    pub const ALL: [VmAction; 5] = [
        VmAction::Start,
        VmAction::Pause,
        VmAction::Resume,
        VmAction::Stop,
        VmAction::Reset,
    ];

    /// The path segment and word: `"start"`, `"pause"`...
    pub const fn as_str(self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Pause => "pause",
            VmAction::Resume => "resume",
            VmAction::Stop => "stop",
            VmAction::Reset => "reset",
        }
    }

    /// The lifecycle event this action feeds to [`hv::vm::apply`] (a reset by the API is
    /// [`ResetTrigger::Api`](hv::exit::ResetTrigger::Api)).
    pub const fn event(self) -> hv::vm::VmEvent {
        use hv::vm::VmEvent as E;
        match self {
            VmAction::Start => E::Start,
            VmAction::Pause => E::Pause,
            VmAction::Resume => E::Resume,
            VmAction::Stop => E::Stop,
            VmAction::Reset => E::Reset(hv::exit::ResetTrigger::Api),
        }
    }
}

/// One VM as the API shows it: the reply of every VM command but delete and console.
///
/// Owned (about 600 bytes): the kernel builds it under its VM lock and hands it over, so no
/// lock is held while the JSON is written. Serialized by [`crate::json`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VmInfo {
    /// The id the API uses (`/v1/vms/{id}`); assigned by the kernel, never reused while the
    /// hypervisor runs.
    pub id: u32,
    /// Configuration, state, console size and counters ([`hv::vm::VmSummary::new`]).
    pub summary: hv::vm::VmSummary,
    /// The PMU the guest sees from its next start or reset on.
    pub pmu: hv::vpmu::PmuConfig,
    /// The CPU its vCPU is on right now, if it is on one.
    pub running_on: Option<u32>,
}

impl VmInfo {
    /// A VM with no PMU that runs nowhere.
    pub fn new(id: u32, summary: hv::vm::VmSummary) -> Self {
        VmInfo {
            id,
            summary,
            pmu: hv::vpmu::PmuConfig::Off,
            running_on: None,
        }
    }
}

/// Why a VM command failed. `Copy`, no owned strings: the HTTP layer maps it to a status, a
/// code and a message ([`crate::error`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmError {
    /// No VM has that id: 404 `vm_not_found`.
    NotFound,
    /// The lifecycle refuses the command in the VM's state ([`hv::vm::apply`]): 409
    /// `invalid_state`, message "cannot pause a VM that is stopped".
    InvalidState {
        /// The state the VM is in (and stays in).
        from: hv::vm::VmState,
        /// The refused event.
        event: hv::vm::VmEvent,
    },
    /// Another VM has that name: 409 `name_taken`.
    NameTaken,
    /// The hypervisor holds as many VMs as it can: 409 `too_many_vms`.
    TooMany,
    /// Not enough free memory for the guest: 507 `insufficient_storage`.
    NoMemory,
    /// No built-in image has that name: 400 `unknown_image`.
    UnknownImage,
    /// The configuration is valid but this host cannot provide it (a PMU of the other vendor,
    /// a pinned CPU that does not exist): 400 `unsupported`, the words as the message.
    Unsupported(&'static str),
    /// An uploaded image was refused (the Multiboot loader's reason as the message): 400
    /// `bad_image`. The VM is unchanged.
    BadImage(&'static str),
    /// Start or reset of an `uploaded` VM that has no image yet (`event`: the refused one):
    /// 409 `invalid_state`, "cannot start a VM that has no image yet; upload one first".
    NoImage {
        /// The refused event (start, reset).
        event: hv::vm::VmEvent,
    },
    /// An image upload to a VM that runs or is paused: 409 `invalid_state`, "cannot upload an
    /// image to a VM that is running; stop it first". Refused from the request head, before
    /// the body is read ([`Backend::vm_upload_allowed`]).
    UploadWhile {
        /// The state the VM is in.
        from: hv::vm::VmState,
    },
    /// Console input for a VM that is not running or paused (created, stopped, crashed): 409
    /// `invalid_state`, "cannot send console input to a VM that is stopped; start it first".
    /// Nothing was queued.
    InputWhile {
        /// The state the VM is in.
        from: hv::vm::VmState,
    },
    /// Console input that does not fit in the free room of the VM's input queue (the guest
    /// has not read what came before): 409 `console_busy`, with `Retry-After: 1`. Nothing
    /// was queued: input is taken whole or not at all, so a client never has to work out
    /// which tail of its bytes was lost. A conflict with the queue's state (a 4xx), not a
    /// failure of the server: it passes once the guest reads.
    InputFull {
        /// Free bytes in the queue now.
        free: u32,
        /// Bytes in the request.
        needed: u32,
    },
    /// The command was tried and failed on the way: 500 `vm_failed`, the words as the message.
    Failed(&'static str),
}

impl From<hv::vm::TransitionError> for VmError {
    fn from(e: hv::vm::TransitionError) -> Self {
        match e {
            hv::vm::TransitionError::WrongState { from, event } => {
                VmError::InvalidState { from, event }
            }
        }
    }
}

/// `GET /v1/vms/{id}/pmu`: what the VM's virtual PMU is, and what its guest sees now.
///
/// ```json
/// {"config":{"vendor":"amd","kind":"legacy","gp_counters":4},"pending":null,
///  "model":{"vendor":"amd","version":0,"gp_counters":4,"fixed_counters":0,"width":48,
///           "global_regs":false,"global_ctrl_reset":0,"note":null,
///           "msrs":[3221291008,...]},
///  "registers":{"global_ctrl":0,"global_status":0,"fixed_ctrl":0,
///               "counters":[0,0,0,0],"event_selects":[0,0,0,0],"fixed":[]},
///  "backing":"none","probe_digest":"0x122bcf0d"}
/// ```
///
/// `backing` says where counts come from: `"none"` (registers hold what the guest writes; no
/// emulator here counts events) or `"hardware"`. `probe_digest` is what the `pmu` probe guest
/// must print right after a reset with `config` (`hv::vpmu::probe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmuInfo {
    /// The configuration in force.
    pub config: hv::vpmu::PmuConfig,
    /// The configuration waiting for the next reset, if any.
    pub pending: Option<hv::vpmu::PmuConfig>,
    /// The guest-visible state (model and registers).
    pub state: hv::vpmu::VpmuState,
    /// Where counts come from.
    pub backing: &'static str,
    /// [`hv::vpmu::probe::probe_digest`] of `config` for this guest's vendor.
    pub probe_digest: u32,
}

/// What [`Backend::vm_console`] copied: the bytes are in the caller's buffer.
pub use hv::devices::ConsoleRead;

/// Most bytes one `POST /v1/vms/{id}/console` may carry: the VM's whole input queue
/// ([`hv::devices::uart::INPUT_CAPACITY`], 4 KiB), and never more than
/// [`crate::Limits::max_body_bytes`]. More is 413 `body_too_large`, answered from the head.
pub const CONSOLE_INPUT_MAX: usize = hv::devices::uart::INPUT_CAPACITY;

/// `POST /v1/vms/{id}/console`: the input was queued, all of it.
///
/// `{"accepted":5,"queued":5,"capacity":4096}`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub struct ConsoleInput {
    /// Bytes of the request queued (always all of them).
    pub accepted: u32,
    /// Bytes waiting in the queue now, these included, that the guest has not yet taken into
    /// its UART's receive FIFO.
    pub queued: u32,
    /// Size of the queue ([`CONSOLE_INPUT_MAX`]).
    pub capacity: u32,
}

impl ConsoleInput {
    /// `accepted` bytes queued, `queued` waiting, of a [`CONSOLE_INPUT_MAX`] queue.
    pub const fn new(accepted: u32, queued: u32) -> Self {
        ConsoleInput {
            accepted,
            queued,
            capacity: CONSOLE_INPUT_MAX as u32,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Host
// ---------------------------------------------------------------------------------------------

/// TDX as the host sees it: `{"supported":false,"reason":"..."}` or
/// `{"supported":true,"state":"..."}` (`null` fields are left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TdxInfo {
    /// Whether the host can run TDX guests at all.
    pub supported: bool,
    /// The TDX module's bring-up state when supported (`"initialized"`, `"off"`...).
    pub state: Option<&'static str>,
    /// Why it is not supported (`"not an Intel CPU"`, `"TME not enumerated"`...).
    pub reason: Option<&'static str>,
}

impl TdxInfo {
    /// Not supported, for `reason`.
    pub const fn unsupported(reason: &'static str) -> Self {
        TdxInfo {
            supported: false,
            state: None,
            reason: Some(reason),
        }
    }

    /// Supported, in `state`.
    pub const fn supported(state: &'static str) -> Self {
        TdxInfo {
            supported: true,
            state: Some(state),
            reason: None,
        }
    }
}

/// `GET /v1/host`: what the hypervisor runs on. Serialized by [`crate::json`]:
///
/// ```json
/// {"version":"0.1.0","vendor":"amd","virt":"svm",
///  "features":{"npt":true,"ept":false,"nrips":true,"vpid":false,"asids":16,"x2apic":true,
///              "pmu_version":2,"pmu_gp_counters":6,"pmu_fixed_counters":0,
///              "under_hypervisor":true,"tme":false},
///  "tdx":{"supported":false,"reason":"not an Intel CPU"},
///  "memory":{"total_bytes":268435456,"free_bytes":200000000},
///  "uptime_ms":1234,"cpus":4,"vms":2}
/// ```
///
/// `vendor` is `"unknown"` for a CPU that is neither; `npt` and `ept` are the nested paging
/// flag on the respective vendor (one of them is always false).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostInfo {
    /// The hypervisor's version ([`VERSION`]).
    pub version: &'static str,
    /// What the boot CPU's CPUID said.
    pub features: hv::features::HostFeatures,
    /// TDX.
    pub tdx: TdxInfo,
    /// Memory the hypervisor manages, bytes.
    pub memory_total_bytes: u64,
    /// Of which free, bytes.
    pub memory_free_bytes: u64,
    /// Milliseconds since boot.
    pub uptime_ms: u64,
    /// CPUs the hypervisor manages.
    pub cpus: u32,
    /// VMs that exist (any state).
    pub vms: u32,
}

impl HostInfo {
    /// A host reply with [`VERSION`], no memory, no uptime, no CPUs and no VMs counted.
    pub const fn new(features: hv::features::HostFeatures, tdx: TdxInfo) -> Self {
        HostInfo {
            version: VERSION,
            features,
            tdx,
            memory_total_bytes: 0,
            memory_free_bytes: 0,
            uptime_ms: 0,
            cpus: 0,
            vms: 0,
        }
    }
}
