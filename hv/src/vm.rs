//! The VM model: configuration, lifecycle state machine, runtime state, stats, and the pure
//! scheduling helpers for running more VMs than CPUs.
//!
//! Why a separate, explicit state machine (STYLE.md point 3): VM commands arrive from the
//! network at any time, while the VM's vCPU runs on some CPU. Every command and every vCPU stop
//! goes through [`apply`], which either refuses it ([`TransitionError::WrongState`], HTTP 409)
//! or returns the new state and the one [`Effect`] the kernel must carry out. The kernel never
//! decides lifecycle questions itself.
//!
//! # Lifecycle
//!
//! | from \ event        | Start        | Pause     | Resume  | Stop      | Reset(t)     | Exited(r)          | Delete     |
//! |---------------------|--------------|-----------|---------|-----------|--------------|--------------------|------------|
//! | Created             | Running: run | –         | –       | –         | –            | –                  | Deleted    |
//! | Running             | –            | Paused    | –       | Stopped   | Running: reload | Stopped/Crashed | –          |
//! | Paused              | –            | –         | Running | Stopped   | Running: reload | –               | Deleted    |
//! | Stopped / Crashed   | Running: reload | –      | –       | –         | Running: reload | –               | Deleted    |
//! | Deleted             | –            | –         | –       | –         | –            | –                  | –          |
//!
//! Decisions:
//!
//! - **Crashed is its own state.** A stop whose [`StopReason::is_fault`] (nested page fault
//!   violation, entry failure, unhandled exit, unsupported I/O, triple fault under
//!   [`OnCrash::Stop`]) leaves the VM *crashed*; halting, the debug-exit port and an API stop
//!   leave it *stopped*. Both keep their reason and behave the same otherwise: people and
//!   scripts want to tell "the test finished" from "the guest died" without parsing reasons.
//! - **Start on a stopped or crashed VM restarts it** from a freshly loaded image (the same
//!   effect as reset): what a user means by starting it again.
//! - **Reset** works from running, paused, stopped and crashed, and always leaves the VM
//!   running with reloaded memory and reset vCPU, devices and vPMU. A created VM has nothing to
//!   reset: start it.
//! - **Delete only when no vCPU runs**: from created, paused, stopped, crashed. Deleting a
//!   running VM is refused (stop it first) so that a typo cannot silently kill a guest
//!   mid-run. Deleted is terminal: the kernel frees the memory and forgets the VM.
//! - **Exited** (the vCPU stopped by itself) is only valid while running: commands execute on
//!   the VM's CPU between guest runs, so a paused vCPU cannot exit.
//! - Repeating a command (pause a paused VM, stop a stopped one) is a wrong-state error, not a
//!   no-op, so clients learn about races instead of assuming success.

use core::fmt;

use crate::cpuid::{CpuidRegs, CpuidView, GuestPlatform};
use crate::devices::Devices;
use crate::exit::{ExitStats, ResetTrigger, StopReason};
use crate::msr::MsrState;
use crate::virt::{CpuId, CpuSet, MAX_CPUS};
use crate::vpmu::{PmuConfig, VmPmu};

/// Longest VM name.
pub const NAME_MAX: usize = 32;
/// Longest guest command line.
pub const CMDLINE_MAX: usize = 256;
/// Smallest guest memory, MiB.
pub const MEMORY_MIB_MIN: u32 = 1;
/// Largest guest memory, MiB (the kernel also checks what is free).
pub const MEMORY_MIB_MAX: u32 = 1024;

/// A VM or image name: 1 to 32 of `a-z 0-9 - _`.
pub type Name = heapless::String<NAME_MAX>;
/// A guest command line: up to 256 printable ASCII characters.
pub type Cmdline = heapless::String<CMDLINE_MAX>;

/// What to do when the guest triple-faults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnCrash {
    /// Reset the VM, as a PC does.
    Reset,
    /// Stop it as crashed ([`StopReason::Shutdown`]) and keep its console for inspection.
    #[default]
    Stop,
}

impl OnCrash {
    /// `"reset"` or `"stop"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            OnCrash::Reset => "reset",
            OnCrash::Stop => "stop",
        }
    }

    /// From [`as_str`](Self::as_str)'s names.
    pub fn parse(s: &str) -> Option<OnCrash> {
        match s {
            "reset" => Some(OnCrash::Reset),
            "stop" => Some(OnCrash::Stop),
            _ => None,
        }
    }
}

/// The image a VM boots.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// An image built into the hypervisor, by name.
    Builtin(Name),
    /// The image uploaded for this VM.
    Uploaded,
}

impl ImageRef {
    /// The reserved name for an uploaded image.
    pub const UPLOADED: &'static str = "uploaded";

    /// `"uploaded"`, or a built-in image's name (same rules as VM names; whether it exists is
    /// the kernel's to check).
    pub fn parse(s: &str) -> Result<ImageRef, VmConfigError> {
        if s == Self::UPLOADED {
            return Ok(ImageRef::Uploaded);
        }
        name(s).map(ImageRef::Builtin).ok_or(VmConfigError::Image)
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        match self {
            ImageRef::Builtin(n) => n,
            ImageRef::Uploaded => Self::UPLOADED,
        }
    }
}

/// Whether `s` is a valid VM or image name.
pub fn name_valid(s: &str) -> bool {
    (1..=NAME_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'))
}

fn name(s: &str) -> Option<Name> {
    if name_valid(s) {
        Name::try_from(s).ok()
    } else {
        None
    }
}

/// Whether `s` is a valid guest command line.
pub fn cmdline_valid(s: &str) -> bool {
    s.len() <= CMDLINE_MAX && s.bytes().all(|b| (0x20..=0x7E).contains(&b))
}

/// How a VM is configured. Built by the API from a request, then [`validate`](Self::validate)d.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VmConfig {
    /// Unique name.
    pub name: Name,
    /// What it boots.
    pub image: ImageRef,
    /// Guest RAM in MiB, [`MEMORY_MIB_MIN`]`..=`[`MEMORY_MIB_MAX`].
    pub memory_mib: u32,
    /// Pin to this CPU, or run anywhere.
    pub cpu: Option<u32>,
    /// Command line passed to the guest.
    pub cmdline: Cmdline,
    /// Triple-fault policy.
    pub on_crash: OnCrash,
    /// The vCPU has a local APIC (and the VM an IOAPIC): xAPIC and x2APIC, the APIC timer
    /// with TSC-deadline mode, shown in CPUID. Default: on, except for the built-in guests
    /// written for a PIC-only PC ([`default_local_apic`]).
    pub local_apic: bool,
    /// Strict MMIO: a guest access outside RAM stops the VM (`npt_violation`) instead of
    /// reading all ones / being dropped (or reaching a device). For test images that check
    /// the hypervisor catches wild accesses. Default off.
    pub strict_mmio: bool,
}

/// Whether a VM booting `image` gets a local APIC unless its configuration says otherwise:
/// every image but the built-in guests that predate the APIC (and were validated without
/// one) and the kernel's flat test images.
pub fn default_local_apic(image: &str) -> bool {
    !matches!(
        image,
        "hello"
            | "exerciser"
            | "resetter"
            | "spinner"
            | "pmu"
            | "ticker"
            | "echo"
            | "rtc"
            | "bench"
            | "smoke"
            | "spin"
            | "wild"
    )
}

impl VmConfig {
    /// A validated configuration with defaults for the rest (no pinning, empty command line,
    /// [`OnCrash::Stop`]).
    pub fn new(name_: &str, image: &str, memory_mib: u32) -> Result<VmConfig, VmConfigError> {
        let config = VmConfig {
            name: name(name_).ok_or(VmConfigError::Name)?,
            image: ImageRef::parse(image)?,
            memory_mib,
            cpu: None,
            cmdline: Cmdline::new(),
            on_crash: OnCrash::default(),
            local_apic: default_local_apic(image),
            strict_mmio: false,
        };
        config.validate()?;
        Ok(config)
    }

    /// Set the command line (checked).
    pub fn set_cmdline(&mut self, s: &str) -> Result<(), VmConfigError> {
        if !cmdline_valid(s) {
            return Err(VmConfigError::Cmdline);
        }
        self.cmdline = Cmdline::try_from(s).map_err(|_| VmConfigError::Cmdline)?;
        Ok(())
    }

    /// Check every field; the first bad one is reported.
    pub fn validate(&self) -> Result<(), VmConfigError> {
        if !name_valid(&self.name) {
            return Err(VmConfigError::Name);
        }
        if let ImageRef::Builtin(n) = &self.image {
            if !name_valid(n) || n == ImageRef::UPLOADED {
                return Err(VmConfigError::Image);
            }
        }
        if !(MEMORY_MIB_MIN..=MEMORY_MIB_MAX).contains(&self.memory_mib) {
            return Err(VmConfigError::MemoryMib);
        }
        if self.cpu.is_some_and(|c| c as usize >= MAX_CPUS) {
            return Err(VmConfigError::Cpu);
        }
        if !cmdline_valid(&self.cmdline) {
            return Err(VmConfigError::Cmdline);
        }
        Ok(())
    }

    /// The CPUs this VM may run on.
    pub fn allowed_cpus(&self) -> CpuSet {
        allowed_cpus(self.cpu)
    }
}

/// Which field of a [`VmConfig`] is bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmConfigError {
    /// Not 1 to 32 of `a-z 0-9 - _`.
    Name,
    /// Not `"uploaded"` nor a valid built-in image name.
    Image,
    /// Outside [`MEMORY_MIB_MIN`]`..=`[`MEMORY_MIB_MAX`].
    MemoryMib,
    /// Not a CPU number below [`MAX_CPUS`].
    Cpu,
    /// Longer than 256 or not printable ASCII.
    Cmdline,
}

impl VmConfigError {
    /// The field's name in the API.
    pub const fn field(self) -> &'static str {
        match self {
            VmConfigError::Name => "name",
            VmConfigError::Image => "image",
            VmConfigError::MemoryMib => "memory_mib",
            VmConfigError::Cpu => "cpu",
            VmConfigError::Cmdline => "cmdline",
        }
    }

    /// What a valid value looks like.
    pub const fn expected(self) -> &'static str {
        match self {
            VmConfigError::Name => "1 to 32 characters of a-z, 0-9, - and _",
            VmConfigError::Image => "\"uploaded\" or a built-in image name",
            VmConfigError::MemoryMib => "an integer from 1 to 1024",
            VmConfigError::Cpu => "a CPU number from 0 to 63",
            VmConfigError::Cmdline => "up to 256 printable ASCII characters",
        }
    }
}

impl fmt::Display for VmConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: expected {}", self.field(), self.expected())
    }
}

/// Where a VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmState {
    /// Configured, memory allocated and image loaded; never ran.
    Created,
    /// Its vCPU runs (or halts waiting for an event).
    Running,
    /// Its vCPU is parked with its state kept.
    Paused,
    /// Stopped in an orderly way (`!reason.is_fault()`).
    Stopped {
        /// Why.
        reason: StopReason,
    },
    /// Stopped by a fault (`reason.is_fault()`).
    Crashed {
        /// Why.
        reason: StopReason,
    },
    /// Gone: memory freed. Terminal.
    Deleted,
}

impl VmState {
    /// The state's name for JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped { .. } => "stopped",
            VmState::Crashed { .. } => "crashed",
            VmState::Deleted => "deleted",
        }
    }

    /// Why the VM stopped, if it did.
    pub const fn reason(self) -> Option<StopReason> {
        match self {
            VmState::Stopped { reason } | VmState::Crashed { reason } => Some(reason),
            _ => None,
        }
    }

    /// The stopped or crashed state for `reason`.
    pub const fn ended(reason: StopReason) -> VmState {
        if reason.is_fault() {
            VmState::Crashed { reason }
        } else {
            VmState::Stopped { reason }
        }
    }

    /// Whether the state is consistent (a stopped VM's reason is not a fault, a crashed one's
    /// is). Every state [`apply`] returns is.
    pub const fn is_valid(self) -> bool {
        match self {
            VmState::Stopped { reason } => !reason.is_fault(),
            VmState::Crashed { reason } => reason.is_fault(),
            _ => true,
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        if let Some(reason) = self.reason() {
            write!(f, " ({reason})")?;
        }
        Ok(())
    }
}

/// Something that happens to a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmEvent {
    /// API: start (or restart).
    Start,
    /// API: pause.
    Pause,
    /// API: resume.
    Resume,
    /// API: stop.
    Stop,
    /// API reset, or one the guest asked for.
    Reset(ResetTrigger),
    /// The vCPU stopped by itself (an exit handled as [`Action::Stop`](crate::exit::Action)).
    Exited(StopReason),
    /// API: delete.
    Delete,
}

impl VmEvent {
    /// The event's name (for messages).
    pub const fn as_str(self) -> &'static str {
        match self {
            VmEvent::Start => "start",
            VmEvent::Pause => "pause",
            VmEvent::Resume => "resume",
            VmEvent::Stop => "stop",
            VmEvent::Reset(_) => "reset",
            VmEvent::Exited(_) => "exited",
            VmEvent::Delete => "delete",
        }
    }
}

/// What the kernel must do to carry out a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Run (or continue running) the vCPU as it is.
    RunVcpu,
    /// Take the vCPU off its CPU, keeping its state (VMX: VMCLEAR).
    ParkVcpu,
    /// Stop the vCPU for good; memory and console stay until delete or restart.
    StopVcpu,
    /// Reset vCPU state, devices ([`VmRuntime::reset`]) and the vPMU, reload the image into
    /// memory, run.
    ReloadAndRun,
    /// Free the VM's memory and forget it.
    FreeMemory,
    /// Nothing: the vCPU has already stopped; only the state changes.
    Nothing,
}

/// Why a transition was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransitionError {
    /// `event` is not allowed in state `from` (HTTP 409 Conflict). Nothing changed.
    WrongState {
        /// The state the VM is in (and stays in).
        from: VmState,
        /// The refused event.
        event: VmEvent,
    },
}

impl fmt::Display for TransitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransitionError::WrongState { from, event } => {
                write!(
                    f,
                    "cannot {} a VM that is {}",
                    event.as_str(),
                    from.as_str()
                )
            }
        }
    }
}

/// The lifecycle transition function (table in the module docs).
pub fn apply(state: VmState, event: VmEvent) -> Result<(VmState, Effect), TransitionError> {
    use VmEvent as E;
    use VmState as S;
    let ok = |s, e| Ok((s, e));
    match (state, event) {
        (S::Created, E::Start) => ok(S::Running, Effect::RunVcpu),
        (S::Stopped { .. } | S::Crashed { .. }, E::Start) => ok(S::Running, Effect::ReloadAndRun),
        (S::Running, E::Pause) => ok(S::Paused, Effect::ParkVcpu),
        (S::Paused, E::Resume) => ok(S::Running, Effect::RunVcpu),
        (S::Running | S::Paused, E::Stop) => ok(
            S::Stopped {
                reason: StopReason::Requested,
            },
            Effect::StopVcpu,
        ),
        (S::Running | S::Paused | S::Stopped { .. } | S::Crashed { .. }, E::Reset(_)) => {
            ok(S::Running, Effect::ReloadAndRun)
        }
        (S::Running, E::Exited(reason)) => ok(S::ended(reason), Effect::Nothing),
        (S::Created | S::Paused | S::Stopped { .. } | S::Crashed { .. }, E::Delete) => {
            ok(S::Deleted, Effect::FreeMemory)
        }
        (from, event) => Err(TransitionError::WrongState { from, event }),
    }
}

/// Counters of one VM. Plain data; the net crate renders it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VmStats {
    /// Exits by kind.
    pub exits: ExitStats,
    /// Resets by trigger ([`ResetTrigger::index`]).
    pub resets: [u64; ResetTrigger::COUNT],
    /// Time spent in the guest, microseconds (the kernel adds each run's duration).
    pub run_time_us: u64,
    /// HLTs that put the vCPU to sleep.
    pub halts: u64,
    /// INs from ports without a device.
    pub unhandled_port_reads: u64,
    /// OUTs to ports without a device.
    pub unhandled_port_writes: u64,
    /// Reads of guest-physical addresses outside RAM that no device claims (read all ones).
    pub unhandled_mmio_reads: u64,
    /// Writes to guest-physical addresses outside RAM that no device claims (dropped).
    pub unhandled_mmio_writes: u64,
}

impl VmStats {
    /// Resets by `trigger`.
    pub const fn resets_by(&self, trigger: ResetTrigger) -> u64 {
        self.resets[trigger.index()]
    }

    /// Add one guest run's duration.
    pub fn add_run_time(&mut self, us: u64) {
        self.run_time_us = self.run_time_us.saturating_add(us);
    }
}

/// What the exit handler works on: one VM's emulated CPU-side state, devices and counters.
/// About 70 KiB (mostly the console ring): the kernel keeps it in a `Box`.
///
/// It also owns the reset assembly ([`reboot`](Self::reboot)): whatever triggered a reset,
/// MSRs and devices go back to their reset state, the vPMU is rebuilt from the VM's current
/// configuration (a pending one applied first) and the CPUID view, which carries the vPMU's
/// leaves, is derived again from it (DESIGN.md "Guest reset").
#[derive(Debug)]
pub struct VmRuntime {
    /// The guest's CPUID.
    pub cpuid: CpuidView,
    /// The vCPU's allow-listed MSRs.
    pub msrs: MsrState,
    /// Port-I/O devices and the console.
    pub devices: Devices,
    /// Triple-fault policy.
    pub on_crash: OnCrash,
    /// Counters.
    pub stats: VmStats,
    /// The virtual PMU: rebuilt from the VM's current configuration on every reset.
    pub pmu: VmPmu,
    /// What the platform shows in CPUID (the local APIC and its features).
    pub platform: GuestPlatform,
    /// Strict MMIO ([`VmConfig::strict_mmio`]): a guest access outside RAM stops the VM
    /// ([`StopReason::NptViolation`]) instead of being emulated.
    pub strict_mmio: bool,
}

impl VmRuntime {
    /// Fresh runtime state for a VM seeing `cpuid`, with the vPMU off.
    pub fn new(cpuid: CpuidView, on_crash: OnCrash) -> Self {
        let vendor = cpuid.vendor();
        let pmu = match VmPmu::new(PmuConfig::Off, vendor) {
            Ok(p) => p,
            // `Off` has nothing to validate.
            Err(_) => unreachable!(),
        };
        VmRuntime {
            msrs: MsrState::new(vendor),
            cpuid,
            devices: Devices::new(),
            on_crash,
            stats: VmStats::default(),
            pmu,
            platform: GuestPlatform::default(),
            strict_mmio: false,
        }
    }

    /// Give the VM the platform `config` describes: its devices (in reset state, with an
    /// empty console) and the CPUID view that shows them, derived from the host's CPUID. Call
    /// when the VM is built, before it first runs.
    pub fn set_platform(
        &mut self,
        config: &crate::devices::PlatformConfig,
        host: impl Fn(u32, u32) -> CpuidRegs,
    ) {
        self.devices = Devices::with(config);
        self.platform = GuestPlatform {
            local_apic: config.chipset.lapic.is_some(),
            apic_id: config.chipset.lapic.map_or(0, |l| l.apic_id as u8),
        };
        self.cpuid = CpuidView::for_platform(host, Some(self.pmu.state()), &self.platform);
    }

    /// Fresh runtime state for a VM with vPMU `pmu`: the CPUID view is derived from the host's
    /// CPUID (`host(leaf, subleaf)`) and the vPMU's model, as every reset derives it again.
    pub fn with_pmu(pmu: VmPmu, host: impl Fn(u32, u32) -> CpuidRegs, on_crash: OnCrash) -> Self {
        let mut rt = VmRuntime::new(CpuidView::from_host(&host, Some(pmu.state())), on_crash);
        rt.pmu = pmu;
        rt
    }

    /// The runtime part of [`Effect::ReloadAndRun`]: MSRs and devices to reset state (the
    /// console log and the CPUID view stay), and the reset counted. `trigger` is `None` for a
    /// restart by [`VmEvent::Start`], which is not counted as a reset.
    pub fn reset(&mut self, trigger: Option<ResetTrigger>) {
        self.msrs.reset();
        self.devices.reset();
        if let Some(t) = trigger {
            let c = &mut self.stats.resets[t.index()];
            *c = c.saturating_add(1);
        }
    }

    /// Rebuild the vPMU from its current configuration (a pending one first) and the CPUID
    /// view from it and the host's CPUID. The one place both are derived after creation.
    pub fn rebuild_pmu(&mut self, host: impl Fn(u32, u32) -> CpuidRegs) {
        self.pmu.reset(self.cpuid.vendor());
        self.cpuid = CpuidView::for_platform(host, Some(self.pmu.state()), &self.platform);
    }

    /// The whole reset of the runtime, whatever the trigger: [`reset`](Self::reset), then
    /// [`rebuild_pmu`](Self::rebuild_pmu). Returns the boot count the reloaded image is told
    /// (resets so far, all triggers).
    pub fn reboot(
        &mut self,
        trigger: Option<ResetTrigger>,
        host: impl Fn(u32, u32) -> CpuidRegs,
    ) -> u64 {
        self.reset(trigger);
        self.rebuild_pmu(host);
        self.boots()
    }

    /// Resets so far, all triggers together.
    pub fn boots(&self) -> u64 {
        self.stats
            .resets
            .iter()
            .fold(0, |a, &c| a.saturating_add(c))
    }
}

/// A VM as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSummary {
    /// Name.
    pub name: Name,
    /// Image.
    pub image: ImageRef,
    /// State (`state.as_str()`, `state.reason()`).
    pub state: VmState,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// Pinned CPU.
    pub cpu: Option<u32>,
    /// Triple-fault policy.
    pub on_crash: OnCrash,
    /// Whether the vCPU has a local APIC.
    pub local_apic: bool,
    /// Whether an access outside RAM stops the VM.
    pub strict_mmio: bool,
    /// Command line passed to the guest.
    pub cmdline: Cmdline,
    /// Console bytes written since creation (the offset a reader is at when caught up).
    pub console_bytes: u64,
    /// Counters.
    pub stats: VmStats,
}

impl VmSummary {
    /// Summarise one VM.
    pub fn new(config: &VmConfig, state: VmState, runtime: &VmRuntime) -> Self {
        VmSummary {
            name: config.name.clone(),
            image: config.image.clone(),
            state,
            memory_mib: config.memory_mib,
            cpu: config.cpu,
            on_crash: config.on_crash,
            local_apic: config.local_apic,
            strict_mmio: config.strict_mmio,
            cmdline: config.cmdline.clone(),
            console_bytes: runtime.devices.console.total_written(),
            stats: runtime.stats,
        }
    }
}

/// The CPUs a VM with pin `cpu` may run on: that one, or all.
pub fn allowed_cpus(cpu: Option<u32>) -> CpuSet {
    match cpu {
        Some(c) => CpuSet::EMPTY.with(CpuId(c)),
        None => (0..MAX_CPUS as u32).fold(CpuSet::EMPTY, |s, c| s.with(CpuId(c))),
    }
}

/// What [`pick_next`] needs to know about one runnable VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VmSlotInfo {
    /// CPUs it may run on.
    pub allowed: CpuSet,
    /// When its last slice started, on the caller's monotonic clock or slice counter
    /// (0 = never ran).
    pub last_run: u64,
    /// The CPU it is on right now, if any.
    pub running_on: Option<CpuId>,
}

/// Which runnable VM `cpu` runs next: among those allowed on `cpu` and not running on another
/// CPU, the one whose last slice started longest ago (ties: lowest index). With every CPU
/// stamping `last_run` when a slice starts, this is round robin: each VM waits for at most the
/// others allowed on the same CPUs.
pub fn pick_next(runnable: &[VmSlotInfo], cpu: CpuId) -> Option<usize> {
    runnable
        .iter()
        .enumerate()
        .filter(|(_, s)| s.allowed.contains(cpu) && s.running_on.is_none_or(|c| c == cpu))
        .min_by_key(|&(i, s)| (s.last_run, i))
        .map(|(i, _)| i)
}

/// Where to move a VM whose CPU left service: the least loaded online CPU it is allowed on
/// (ties: lowest number), or `None` if there is none, and the VM must be paused. `load[n]` is
/// the number of VMs on CPU *n* (missing entries count as 0).
pub fn place(allowed: CpuSet, online: CpuSet, load: &[u32]) -> Option<CpuId> {
    online
        .iter()
        .filter(|&c| allowed.contains(c))
        .min_by_key(|c| (load.get(c.index()).copied().unwrap_or(0), c.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::exit::GuestPhys;

    const REASONS: [StopReason; 8] = [
        StopReason::Halted,
        StopReason::DebugExit(3),
        StopReason::Requested,
        StopReason::NptViolation {
            gpa: GuestPhys(0xFEE0_0000),
        },
        StopReason::EntryFailed { code: 33 },
        StopReason::UnhandledExit { code: 0x7E },
        StopReason::UnsupportedIo { port: 0x3F8 },
        StopReason::Shutdown,
    ];

    #[test]
    fn config_validation() {
        let c = VmConfig::new("web-1_a", "hello", 64).unwrap();
        assert_eq!(c.image, ImageRef::Builtin(Name::try_from("hello").unwrap()));
        assert_eq!(c.on_crash, OnCrash::Stop);
        assert_eq!(
            VmConfig::new("x", "uploaded", 1).unwrap().image,
            ImageRef::Uploaded
        );
        let table: [(&str, &str, u32, VmConfigError); 8] = [
            ("", "hello", 64, VmConfigError::Name),
            ("Web", "hello", 64, VmConfigError::Name),
            ("a b", "hello", 64, VmConfigError::Name),
            (&"a".repeat(33), "hello", 64, VmConfigError::Name),
            ("ok", "../etc", 64, VmConfigError::Image),
            ("ok", "", 64, VmConfigError::Image),
            ("ok", "hello", 0, VmConfigError::MemoryMib),
            ("ok", "hello", 1025, VmConfigError::MemoryMib),
        ];
        for (name, image, mem, err) in table {
            assert_eq!(
                VmConfig::new(name, image, mem),
                Err(err),
                "{name} {image} {mem}"
            );
        }
        assert!(VmConfig::new(&"a".repeat(32), "hello", 1024).is_ok());

        let mut c = VmConfig::new("ok", "hello", 64).unwrap();
        c.cpu = Some(63);
        assert_eq!(c.validate(), Ok(()));
        c.cpu = Some(64);
        assert_eq!(c.validate(), Err(VmConfigError::Cpu));
        c.cpu = None;
        assert_eq!(c.set_cmdline("console=ttyS0 quiet"), Ok(()));
        assert_eq!(c.set_cmdline("a\nb"), Err(VmConfigError::Cmdline));
        assert_eq!(c.set_cmdline(&"x".repeat(257)), Err(VmConfigError::Cmdline));
        assert_eq!(c.cmdline.as_str(), "console=ttyS0 quiet");
        c.image = ImageRef::Builtin(Name::try_from("uploaded").unwrap());
        assert_eq!(c.validate(), Err(VmConfigError::Image));
    }

    #[test]
    fn config_error_names_the_field() {
        assert_eq!(VmConfigError::MemoryMib.field(), "memory_mib");
        assert_eq!(
            VmConfigError::Name.to_string(),
            "invalid name: expected 1 to 32 characters of a-z, 0-9, - and _"
        );
        assert_eq!(OnCrash::parse("reset"), Some(OnCrash::Reset));
        assert_eq!(OnCrash::parse(OnCrash::Stop.as_str()), Some(OnCrash::Stop));
        assert_eq!(OnCrash::parse("explode"), None);
    }

    #[test]
    fn lifecycle_examples() {
        let s = VmState::Created;
        let (s, e) = apply(s, VmEvent::Start).unwrap();
        assert_eq!((s, e), (VmState::Running, Effect::RunVcpu));
        let (s, e) = apply(s, VmEvent::Pause).unwrap();
        assert_eq!((s, e), (VmState::Paused, Effect::ParkVcpu));
        assert_eq!(
            apply(s, VmEvent::Pause),
            Err(TransitionError::WrongState {
                from: VmState::Paused,
                event: VmEvent::Pause
            })
        );
        let (s, _) = apply(s, VmEvent::Resume).unwrap();
        let (s, e) = apply(s, VmEvent::Exited(StopReason::DebugExit(1))).unwrap();
        assert_eq!(
            (s, e),
            (
                VmState::Stopped {
                    reason: StopReason::DebugExit(1)
                },
                Effect::Nothing
            )
        );
        let (s, e) = apply(s, VmEvent::Start).unwrap();
        assert_eq!((s, e), (VmState::Running, Effect::ReloadAndRun));
        let (s, _) = apply(s, VmEvent::Exited(StopReason::Shutdown)).unwrap();
        assert_eq!(s.as_str(), "crashed");
        assert_eq!(s.to_string(), "crashed (shutdown (triple fault))");
        let (s, e) = apply(s, VmEvent::Reset(ResetTrigger::Api)).unwrap();
        assert_eq!((s, e), (VmState::Running, Effect::ReloadAndRun));
        let err = apply(s, VmEvent::Delete).unwrap_err();
        assert_eq!(err.to_string(), "cannot delete a VM that is running");
        let (s, e) = apply(s, VmEvent::Stop).unwrap();
        assert_eq!(s.reason(), Some(StopReason::Requested));
        assert_eq!(e, Effect::StopVcpu);
        let (s, e) = apply(s, VmEvent::Delete).unwrap();
        assert_eq!((s, e), (VmState::Deleted, Effect::FreeMemory));
    }

    /// Which events each state accepts, written independently of [`apply`].
    fn accepts(state: VmState, event: VmEvent) -> bool {
        let name = state.as_str();
        match event {
            VmEvent::Start => matches!(name, "created" | "stopped" | "crashed"),
            VmEvent::Pause => name == "running",
            VmEvent::Resume => name == "paused",
            VmEvent::Stop => matches!(name, "running" | "paused"),
            VmEvent::Reset(_) => matches!(name, "running" | "paused" | "stopped" | "crashed"),
            VmEvent::Exited(_) => name == "running",
            VmEvent::Delete => matches!(name, "created" | "paused" | "stopped" | "crashed"),
        }
    }

    fn event() -> impl Strategy<Value = VmEvent> {
        prop_oneof![
            4 => Just(VmEvent::Start),
            4 => Just(VmEvent::Pause),
            4 => Just(VmEvent::Resume),
            4 => Just(VmEvent::Stop),
            4 => (0..ResetTrigger::COUNT).prop_map(|i| VmEvent::Reset(ResetTrigger::ALL[i])),
            4 => (0..REASONS.len()).prop_map(|i| VmEvent::Exited(REASONS[i])),
            // Rarer, so that sequences live long enough to be interesting.
            1 => Just(VmEvent::Delete),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn lifecycle_under_random_events(events in prop::collection::vec(event(), 1..60)) {
            let mut state = VmState::Created;
            for ev in events {
                match apply(state, ev) {
                    Ok((next, effect)) => {
                        prop_assert!(accepts(state, ev), "{state:?} accepted {ev:?}");
                        prop_assert!(next.is_valid(), "{next:?}");
                        // The effect matches the new state.
                        let fits = match effect {
                            Effect::RunVcpu | Effect::ReloadAndRun => next == VmState::Running,
                            Effect::ParkVcpu => next == VmState::Paused,
                            Effect::StopVcpu => {
                                next == VmState::Stopped { reason: StopReason::Requested }
                            }
                            Effect::FreeMemory => next == VmState::Deleted,
                            Effect::Nothing => {
                                matches!(ev, VmEvent::Exited(r) if next.reason() == Some(r))
                            }
                        };
                        prop_assert!(fits, "{state:?} --{ev:?}--> {next:?} with {effect:?}");
                        // A fresh image is loaded exactly when leaving an ended state or
                        // resetting.
                        prop_assert_eq!(
                            effect == Effect::ReloadAndRun,
                            matches!(ev, VmEvent::Reset(_))
                                || (ev == VmEvent::Start && state != VmState::Created)
                        );
                        state = next;
                    }
                    Err(e) => {
                        prop_assert!(!accepts(state, ev), "{state:?} refused {ev:?}");
                        prop_assert_eq!(e, TransitionError::WrongState { from: state, event: ev });
                    }
                }
                if state == VmState::Deleted {
                    // Terminal: everything is refused from here on.
                    for e in [VmEvent::Start, VmEvent::Delete, VmEvent::Reset(ResetTrigger::Api)] {
                        prop_assert!(apply(state, e).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn every_state_is_reachable() {
        let mut seen = std::collections::BTreeSet::new();
        let mut frontier = vec![VmState::Created];
        let events = [
            VmEvent::Start,
            VmEvent::Pause,
            VmEvent::Resume,
            VmEvent::Stop,
            VmEvent::Reset(ResetTrigger::Api),
            VmEvent::Exited(StopReason::Halted),
            VmEvent::Exited(StopReason::Shutdown),
            VmEvent::Delete,
        ];
        while let Some(s) = frontier.pop() {
            if seen.insert(s.as_str()) {
                frontier.extend(events.iter().filter_map(|&e| apply(s, e).ok()).map(|r| r.0));
            }
        }
        assert_eq!(seen.len(), 6, "{seen:?}");
    }

    #[test]
    fn runtime_reset_and_summary() {
        let cpuid = CpuidView::from_host(
            |leaf, _| match leaf {
                0 => [1, 0x756E_6547, 0x6C65_746E, 0x4965_6E69],
                _ => [0; 4],
            },
            None,
        );
        let mut rt = Box::new(VmRuntime::new(cpuid, OnCrash::Reset));
        rt.devices.console.push_slice(b"boot\n");
        rt.msrs.write(0x277, 0x0606_0606_0606_0606, 0).unwrap();
        rt.reset(Some(ResetTrigger::Port0xCf9));
        rt.reset(None);
        assert_eq!(rt.msrs.pat(), crate::msr::PAT_RESET);
        assert_eq!(rt.stats.resets_by(ResetTrigger::Port0xCf9), 1);
        assert_eq!(rt.stats.resets.iter().sum::<u64>(), 1);
        rt.stats.add_run_time(1500);
        let config = VmConfig::new("t", "hello", 16).unwrap();
        let s = VmSummary::new(&config, VmState::Running, &rt);
        assert_eq!(
            (s.name.as_str(), s.image.as_str(), s.state.as_str()),
            ("t", "hello", "running")
        );
        assert_eq!((s.console_bytes, s.stats.run_time_us), (5, 1500));
    }

    /// An Intel host with an architectural PMU at leaf 0xA (what the view would pass through
    /// without a vPMU).
    fn intel_host(leaf: u32, _sub: u32) -> CpuidRegs {
        match leaf {
            0 => [0xA, 0x756E_6547, 0x6C65_746E, 0x4965_6E69],
            0xA => [0x0830_0802, 0, 0, 0x0603],
            _ => [0; 4],
        }
    }

    fn intel(version: u8, gp: u8) -> PmuConfig {
        PmuConfig::Intel {
            version,
            gp_counters: gp,
            fixed_counters: 0,
            width: 48,
            full_width_writes: false,
        }
    }

    #[test]
    fn every_reset_rebuilds_the_vpmu_from_the_current_config() {
        let vendor = crate::features::Vendor::Intel;
        let pmu = VmPmu::new(intel(1, 2), vendor).unwrap();
        let mut rt = Box::new(VmRuntime::with_pmu(pmu, intel_host, OnCrash::Reset));
        let gp_counters = |rt: &VmRuntime| (rt.cpuid.get(0xA, 0)[0] >> 8) & 0xFF;
        assert_eq!(gp_counters(&rt), 2);
        // Guest state in the counters: a reset must not keep it.
        rt.pmu.wrmsr(0xC1, 0x1234).unwrap();
        assert_eq!(rt.pmu.rdmsr(0xC1), crate::vpmu::MsrResult::Value(0x1234));
        // A new configuration waits for the next reset; the CPUID view follows it then.
        rt.pmu.set_pending_config(intel(2, 4)).unwrap();
        assert_eq!(gp_counters(&rt), 2);
        let boots = rt.reboot(Some(ResetTrigger::Api), intel_host);
        assert_eq!(boots, 1);
        assert_eq!(*rt.pmu.current(), intel(2, 4));
        assert_eq!(rt.pmu.pending(), None);
        assert_eq!(gp_counters(&rt), 4);
        assert_eq!(rt.pmu.rdmsr(0xC1), crate::vpmu::MsrResult::Value(0));
        // Every trigger, and a restart, goes the same way: counters rebuilt, nothing kept.
        for (i, t) in ResetTrigger::ALL
            .into_iter()
            .map(Some)
            .chain([None])
            .enumerate()
        {
            rt.pmu.wrmsr(0xC1, 0x55).unwrap();
            let boots = rt.reboot(t, intel_host);
            assert_eq!(
                boots,
                1 + (i as u64 + 1).min(ResetTrigger::COUNT as u64),
                "{t:?}"
            );
            assert_eq!(
                rt.pmu.rdmsr(0xC1),
                crate::vpmu::MsrResult::Value(0),
                "{t:?}"
            );
            assert_eq!(gp_counters(&rt), 4, "{t:?}");
        }
        // Off: CPUID enumerates no PMU after the next reset.
        rt.pmu.set_pending_config(PmuConfig::Off).unwrap();
        rt.reboot(None, intel_host);
        assert_eq!(gp_counters(&rt), 0);
        assert!(rt.pmu.wrmsr(0xC1, 1).is_err());
    }

    fn slot(allowed: CpuSet) -> VmSlotInfo {
        VmSlotInfo {
            allowed,
            last_run: 0,
            running_on: None,
        }
    }

    /// Run `rounds` of: every CPU picks a VM and starts a slice, then all slices end.
    fn simulate(slots: &mut [VmSlotInfo], cpus: &[u32], rounds: usize) -> Vec<u32> {
        let mut slices = vec![0u32; slots.len()];
        let mut clock = slots.iter().map(|s| s.last_run).max().unwrap_or(0);
        for _ in 0..rounds {
            for &c in cpus {
                if let Some(i) = pick_next(slots, CpuId(c)) {
                    clock += 1;
                    slots[i].last_run = clock;
                    slots[i].running_on = Some(CpuId(c));
                    slices[i] += 1;
                }
            }
            for s in slots.iter_mut() {
                s.running_on = None;
            }
        }
        slices
    }

    #[test]
    fn eight_vms_on_two_cpus_share_fairly() {
        let mut slots = vec![slot(allowed_cpus(None)); 8];
        let slices = simulate(&mut slots, &[0, 1], 40);
        assert_eq!(slices, vec![10; 8]);
        // No VM waits more than 4 rounds (8 VMs / 2 CPUs) between slices: check on a longer
        // run with the clock recording each VM's starts.
        let mut slots = vec![slot(allowed_cpus(None)); 8];
        let mut last = [0usize; 8];
        for round in 1..=100 {
            for c in [0, 1] {
                let i = pick_next(&slots, CpuId(c)).unwrap();
                assert!(round - last[i] <= 4 || last[i] == 0, "VM {i} starved");
                last[i] = round;
                slots[i].last_run = (round * 2 + c as usize) as u64;
                slots[i].running_on = Some(CpuId(c));
            }
            for s in &mut slots {
                s.running_on = None;
            }
        }
    }

    #[test]
    fn affinity_is_honoured() {
        // Two VMs pinned to CPU 1, four free ones.
        let pinned = allowed_cpus(Some(1));
        let mut slots = vec![slot(pinned), slot(pinned)];
        slots.extend([slot(allowed_cpus(None)); 4]);
        let mut runs_on_0 = [false; 6];
        let mut clock = 0;
        for _ in 0..30 {
            for c in [0u32, 1] {
                let i = pick_next(&slots, CpuId(c)).unwrap();
                if c == 0 {
                    runs_on_0[i] = true;
                }
                clock += 1;
                slots[i].last_run = clock;
                slots[i].running_on = Some(CpuId(c));
            }
            for s in &mut slots {
                s.running_on = None;
            }
        }
        assert!(!runs_on_0[0] && !runs_on_0[1], "pinned VMs stay on CPU 1");
        let slices = simulate(&mut slots, &[0, 1], 30);
        assert!(slices.iter().all(|&n| n > 0), "{slices:?}");
        // A VM running on CPU 0 is not picked by CPU 1; a VM pinned elsewhere never is.
        let busy = VmSlotInfo {
            running_on: Some(CpuId(0)),
            ..slot(allowed_cpus(None))
        };
        assert_eq!(pick_next(&[busy], CpuId(1)), None);
        assert_eq!(pick_next(&[busy], CpuId(0)), Some(0));
        assert_eq!(pick_next(&[slot(allowed_cpus(Some(3)))], CpuId(0)), None);
        assert_eq!(pick_next(&[], CpuId(0)), None);
    }

    #[test]
    fn placement_after_offline() {
        let online = CpuSet::EMPTY.with(CpuId(0)).with(CpuId(2)).with(CpuId(3));
        // Least loaded allowed CPU; ties go to the lowest number.
        assert_eq!(
            place(allowed_cpus(None), online, &[3, 0, 1, 1]),
            Some(CpuId(2))
        );
        assert_eq!(
            place(allowed_cpus(None), online, &[1, 0, 1, 1]),
            Some(CpuId(0))
        );
        // Loads missing from the table count as idle.
        assert_eq!(place(allowed_cpus(None), online, &[5]), Some(CpuId(2)));
        // Pinned to an online CPU: there, however loaded.
        assert_eq!(
            place(allowed_cpus(Some(3)), online, &[0, 0, 0, 9]),
            Some(CpuId(3))
        );
        // Pinned to the CPU that went away: nowhere to go, pause.
        assert_eq!(place(allowed_cpus(Some(1)), online, &[0; 4]), None);
        assert_eq!(place(allowed_cpus(None), CpuSet::EMPTY, &[]), None);
        assert_eq!(allowed_cpus(None).len(), 64);
    }
}
