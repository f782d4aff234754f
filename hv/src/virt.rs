//! Per-CPU virtualization enable layer: who turned VMX/SVM on, on which CPU, and when it must go
//! off again.
//!
//! # Why this layer exists
//!
//! Turning hardware virtualization on is a per-CPU act (VMX: set CR4.VMXE, then VMXON, Intel SDM
//! Vol. 3C §24.7 "Enabling and Entering VMX Operation"; SVM: set EFER.SVME, AMD APM Vol. 2 §15.4
//! "Enabling SVM"), and several things care about it:
//!
//! - **More than one in-kernel user.** The hypervisor core runs guests; on Intel, the TDX module
//!   needs VMX operation on every CPU that issues SEAMCALLs. Neither may turn virtualization off
//!   under the other, so each CPU keeps the *set of users* holding it on: the first
//!   [`VirtLayer::get`] enables, the last [`VirtLayer::put`] disables. This is the shape of the
//!   Linux series that moved VMXON/EFER.SVME out of KVM into a refcounted core layer shared by KVM
//!   and TDX (see `shared/background/`).
//! - **Hotplug-style CPU service changes.** A CPU can be taken out of service for guests
//!   ([`VirtLayer::offline`]) and put back ([`VirtLayer::online`]) while it keeps running the host
//!   kernel. Virtualization follows: off while out of service, back on when it returns and still
//!   has users. The users themselves are kept across offline/online.
//! - **Reboot and crash.** VMX operation blocks INIT (SDM Vol. 3C §24.8 "Restrictions on VMX
//!   Operation") and SVM blocks INIT while GIF=0 (APM Vol. 2 §15.17 "Global Interrupt Flag").
//!   A reset that skips turning virtualization off on *every* CPU hangs the machine. Once the
//!   global *rebooting* state is set no new enable happens, and faults from the disable
//!   instructions are tolerated (the CPU may already be off, e.g. after an NMI shootdown).
//!
//! # The invariant
//!
//! For every CPU, after every operation (checked by [`VirtLayer::check_invariant`], asserted in
//! debug builds, and tested against a recording fake over thousands of random event sequences):
//!
//! > virtualization on ⇔ users > 0 ∧ CPU online ∧ not rebooting
//!
//! "On" is our bookkeeping ([`CpuSnapshot::enabled`]); the backend contract below makes it match
//! the hardware. There is no "enable failure pending" state because a failed transition is rolled
//! back completely: the bookkeeping is what it was before the call, the hardware is as the
//! bookkeeping says, and the error is returned and kept in [`CpuSnapshot::last_error`].
//!
//! # Transitions
//!
//! | operation           | bookkeeping change         | hardware                         | refused with |
//! |---------------------|----------------------------|----------------------------------|--------------|
//! | `get(cpu, u)`       | add `u` to users           | enable on 0→1 if online          | `AlreadyHeld`, `Rebooting` |
//! | `put(cpu, u)`       | remove `u`                 | disable on 1→0 if enabled        | `NotHeld` |
//! | `online(cpu)`       | mark online                | enable if users > 0              | `AlreadyOnline`, `Rebooting` |
//! | `offline(cpu, veto)`| mark offline               | disable if enabled               | `AlreadyOffline`, `LastOnlineCpu`, `Conflict` |
//! | `begin_reboot()`    | set rebooting              | disable every enabled CPU        | never |
//! | `emergency_disable_all()` | set rebooting        | emergency disable *every* CPU    | never |
//!
//! Decisions worth stating:
//!
//! - **Rebooting is terminal and refuses additions.** `get` and `online` fail with `Rebooting`
//!   and change nothing; `put` and `offline` are accepted (they only remove). Nothing is enabled
//!   while rebooting, so neither of those touches hardware.
//! - **Someone else's enable is never adopted.** Before enabling, the layer reads the hardware
//!   back ([`Backend::is_enabled_hw`]). If virtualization is already on (firmware, another
//!   hypervisor, a bug), the enable is refused with [`EnableError::Busy`]: turning it off later
//!   would pull it from under its owner, and we cannot know its VMXON region or host-save area.
//! - **A failed disable outside reboot rolls back too.** The user stays held (or the CPU stays
//!   online) and the hardware stays on, so the caller can retry. During a reboot a failed disable
//!   is tolerated: the error is recorded and [`Backend::emergency_disable`] forces the CPU off.
//! - **Offline policy.** The last online CPU cannot be taken out of service
//!   ([`OfflineError::LastOnlineCpu`]), and the caller passes an [`OfflineVeto`] for its own rules
//!   (the CPU serving the control endpoint; for TDX, the last online CPU of a package whose key
//!   IDs are in use). Vetoes compose: arrays of `&dyn OfflineVeto` and closures implement it.
//!
//! # Concurrency and where calls run
//!
//! [`VirtLayer`] is a plain state machine behind `&mut self`. The kernel serializes calls (one
//! lock, held for the length of one operation, never taken on the vCPU run loop) and makes every
//! [`Backend`] call for CPU *n* execute **on CPU *n***: VMXON, VMXOFF, CR4 and EFER are per-CPU
//! state. How it gets there (running the operation on that CPU's thread, an IPI, a per-CPU
//! queue) is the kernel's business; the layer only names the CPU.
//!
//! The crash path is the exception: a panicking CPU may hold the lock, so the kernel's NMI
//! shootdown calls [`Backend::emergency_disable`] directly on each CPU, and the rebooting flag the
//! backend's fault handling consults must be readable without the lock (an atomic mirrored from
//! [`VirtLayer::is_rebooting`]). [`VirtLayer::emergency_disable_all`] is the same sweep for when
//! the lock can be taken, and the model the tests check.

use core::fmt;

/// Most CPUs the layer tracks. Bounded so that no path allocates, and so that [`CpuSet`] is one
/// `u64`.
pub const MAX_CPUS: usize = 64;

/// A CPU, by its index in `0..cpu_count` (the kernel's numbering, not the APIC ID).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuId(pub u32);

impl CpuId {
    /// The index as `usize`, for tables.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu{}", self.0)
    }
}

/// A set of CPUs (bit *n* = CPU *n*).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuSet(u64);

impl CpuSet {
    /// No CPU.
    pub const EMPTY: CpuSet = CpuSet(0);

    /// The raw mask, bit *n* = CPU *n*.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether `cpu` is in the set (CPUs beyond [`MAX_CPUS`] never are).
    pub const fn contains(self, cpu: CpuId) -> bool {
        cpu.index() < MAX_CPUS && self.0 & (1 << cpu.0) != 0
    }

    /// The set with `cpu` added. CPUs beyond [`MAX_CPUS`] are ignored.
    #[must_use]
    pub const fn with(self, cpu: CpuId) -> CpuSet {
        if cpu.index() < MAX_CPUS {
            CpuSet(self.0 | 1 << cpu.0)
        } else {
            self
        }
    }

    /// The set with `cpu` removed.
    #[must_use]
    pub const fn without(self, cpu: CpuId) -> CpuSet {
        if cpu.index() < MAX_CPUS {
            CpuSet(self.0 & !(1 << cpu.0))
        } else {
            self
        }
    }

    /// Number of CPUs in the set.
    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The CPUs in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = CpuId> {
        (0..MAX_CPUS as u32)
            .map(CpuId)
            .filter(move |&c| self.contains(c))
    }
}

/// An in-kernel user of hardware virtualization. Each holds a CPU at most once.
///
/// Listed here, in one place, so two users can never pick the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum User {
    /// The hypervisor core: runs guests on the CPU.
    Hypervisor = 0,
    /// A trusted firmware module that needs virtualization on to be called (on Intel: the TDX
    /// module, reached by SEAMCALL from VMX operation).
    TrustedModule = 1,
}

impl User {
    /// Every user, in id order.
    pub const ALL: [User; 2] = [User::Hypervisor, User::TrustedModule];

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The users holding one CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UserSet(u8);

impl UserSet {
    /// No user.
    pub const EMPTY: UserSet = UserSet(0);

    /// Whether `user` is in the set.
    pub const fn contains(self, user: User) -> bool {
        self.0 & user.bit() != 0
    }

    /// The set with `user` added.
    #[must_use]
    pub const fn with(self, user: User) -> UserSet {
        UserSet(self.0 | user.bit())
    }

    /// The set with `user` removed.
    #[must_use]
    pub const fn without(self, user: User) -> UserSet {
        UserSet(self.0 & !user.bit())
    }

    /// Number of users: the per-CPU reference count.
    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// Whether no user holds the CPU.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The users in the set, in id order.
    pub fn iter(self) -> impl Iterator<Item = User> {
        User::ALL.into_iter().filter(move |&u| self.contains(u))
    }
}

/// Why turning virtualization on for a CPU failed. The hardware is off afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EnableError {
    /// Virtualization was already on and not by us (hardware read back enabled before we
    /// enabled it; on VMX, VMXON also reports this as VMfailInvalid/"VMXON in VMX root").
    Busy,
    /// The CPU has no VMX/SVM.
    Unsupported,
    /// Firmware locked it off (VMX: IA32_FEATURE_CONTROL locked without VMXON enabled, SDM Vol. 3C
    /// §24.7; SVM: VM_CR.SVMDIS set, APM Vol. 2 §15.30.1).
    Disabled,
    /// The instruction failed; `code` is backend-defined (e.g. the VMX instruction error number).
    Failed {
        /// Backend-defined detail.
        code: u32,
    },
}

/// Why turning virtualization off for a CPU failed. The hardware is still on afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DisableError {
    /// The disable instruction faulted (#UD/#GP), e.g. because virtualization was already off.
    Fault,
    /// The instruction failed; `code` is backend-defined (e.g. VMXOFF with dual-monitor
    /// treatment active, SDM Vol. 3C §32.15.7).
    Failed {
        /// Backend-defined detail.
        code: u32,
    },
}

/// The last failed hardware transition on a CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuError {
    /// Turning virtualization on failed (the CPU was left off).
    Enable(EnableError),
    /// Turning virtualization off failed (outside reboot the CPU was left on; during reboot the
    /// fault was tolerated and the CPU forced off).
    Disable(DisableError),
}

/// What the arch code (SVM, VMX) implements: the per-CPU instructions, no policy.
///
/// Every call for `cpu` must execute on that CPU; the kernel's implementation gets there (see
/// the module docs). The contract that keeps bookkeeping and hardware equal:
///
/// - [`enable`](Self::enable) returning `Err` leaves virtualization **off** (a backend that set
///   CR4.VMXE and then failed VMXON clears CR4.VMXE again).
/// - [`disable`](Self::disable) returning `Err` leaves it **on**.
/// - [`emergency_disable`](Self::emergency_disable) leaves it off, always.
pub trait Backend {
    /// Turns virtualization on for `cpu` (VMX: CR4.VMXE + VMXON; SVM: EFER.SVME and the host
    /// save area). Only called when the layer has read it back as off.
    fn enable(&mut self, cpu: CpuId) -> Result<(), EnableError>;

    /// Turns virtualization off for `cpu` (VMX: VMXOFF + clear CR4.VMXE; SVM: clear EFER.SVME).
    /// Only called on a CPU the layer enabled.
    fn disable(&mut self, cpu: CpuId) -> Result<(), DisableError>;

    /// Reads back from hardware whether virtualization is on for `cpu` (CR4.VMXE / EFER.SVME).
    fn is_enabled_hw(&self, cpu: CpuId) -> bool;

    /// Turns virtualization off for `cpu` whatever its state, tolerating faults; never fails and
    /// may be called on a CPU that is already off. SVM must also set GIF=1 (STGI) so INIT is
    /// delivered; VMX must leave VMX operation so INIT is not blocked.
    fn emergency_disable(&mut self, cpu: CpuId);
}

/// Why a CPU may not be taken out of service, as said by an [`OfflineVeto`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Conflict {
    /// Something that cannot move runs on this CPU (e.g. the control endpoint's network loop).
    Pinned,
    /// This is the last online CPU of `package`, and the package holds state that needs one
    /// (TDX: private key IDs in use need a CPU of that package for TDH.PHYMEM.CACHE.WB).
    LastInPackage {
        /// The package (socket) number, in the kernel's topology numbering.
        package: u32,
    },
}

/// A caller-supplied rule consulted before a CPU goes offline.
///
/// `remaining` is the set of CPUs that would still be online afterwards. Implemented by
/// closures `Fn(CpuId, CpuSet) -> Result<(), Conflict>`, by [`NoVeto`], and by arrays of
/// `&dyn OfflineVeto` (first conflict wins), so the kernel can stack its own rule and the TDX
/// rule.
pub trait OfflineVeto {
    /// `Err` refuses taking `cpu` offline.
    fn check(&self, cpu: CpuId, remaining: CpuSet) -> Result<(), Conflict>;
}

/// The veto that allows everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoVeto;

impl OfflineVeto for NoVeto {
    fn check(&self, _cpu: CpuId, _remaining: CpuSet) -> Result<(), Conflict> {
        Ok(())
    }
}

impl<F: Fn(CpuId, CpuSet) -> Result<(), Conflict>> OfflineVeto for F {
    fn check(&self, cpu: CpuId, remaining: CpuSet) -> Result<(), Conflict> {
        self(cpu, remaining)
    }
}

impl<const N: usize> OfflineVeto for [&dyn OfflineVeto; N] {
    fn check(&self, cpu: CpuId, remaining: CpuSet) -> Result<(), Conflict> {
        self.iter().try_for_each(|v| v.check(cpu, remaining))
    }
}

/// Error from [`VirtLayer::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NewError {
    /// `cpu_count` was 0.
    NoCpus,
    /// `cpu_count` exceeded [`MAX_CPUS`].
    TooManyCpus {
        /// The limit.
        max: u32,
    },
}

/// Error from [`VirtLayer::get`]. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GetError {
    /// `cpu >= cpu_count`.
    NoSuchCpu,
    /// This user already holds the CPU.
    AlreadyHeld,
    /// The machine is rebooting; nothing new is enabled.
    Rebooting,
    /// The 0→1 transition on an online CPU failed.
    Enable(EnableError),
}

/// Error from [`VirtLayer::put`]. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PutError {
    /// `cpu >= cpu_count`.
    NoSuchCpu,
    /// This user does not hold the CPU.
    NotHeld,
    /// The 1→0 transition failed; the user still holds the CPU and it is still on.
    Disable(DisableError),
}

/// Error from [`VirtLayer::online`]. Nothing changed; the CPU stays offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OnlineError {
    /// `cpu >= cpu_count`.
    NoSuchCpu,
    /// The CPU is already online.
    AlreadyOnline,
    /// The machine is rebooting; nothing is put into service.
    Rebooting,
    /// The CPU has users and enabling failed.
    Enable(EnableError),
}

/// Error from [`VirtLayer::offline`]. Nothing changed; the CPU stays online.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OfflineError {
    /// `cpu >= cpu_count`.
    NoSuchCpu,
    /// The CPU is already offline.
    AlreadyOffline,
    /// It is the last online CPU.
    LastOnlineCpu,
    /// The caller's veto refused it.
    Conflict(Conflict),
    /// Disabling failed; the CPU is still online and on.
    Disable(DisableError),
}

/// A CPU where the bookkeeping breaks the invariant (a bug in this layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InvariantViolation {
    /// The CPU.
    pub cpu: CpuId,
}

/// Read-only view of one CPU's bookkeeping, for the API. The kernel reports the hardware
/// read-back ([`Backend::is_enabled_hw`]) separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CpuSnapshot {
    /// Which CPU.
    pub cpu: CpuId,
    /// In service for guests.
    pub online: bool,
    /// Who holds virtualization on this CPU; `users.len()` is the reference count.
    pub users: UserSet,
    /// Whether the layer turned virtualization on here (and has not turned it off).
    pub enabled: bool,
    /// The error of the most recent hardware transition on this CPU, `None` if it succeeded.
    pub last_error: Option<CpuError>,
}

#[derive(Clone, Copy, Debug, Default)]
struct PerCpu {
    online: bool,
    users: UserSet,
    enabled: bool,
    last_error: Option<CpuError>,
}

/// The per-CPU enable state machine for up to [`MAX_CPUS`] CPUs, over a [`Backend`].
///
/// All CPUs start offline with no users. See the module docs for transitions and invariant.
pub struct VirtLayer<B> {
    backend: B,
    cpu_count: u32,
    rebooting: bool,
    cpus: [PerCpu; MAX_CPUS],
}

impl<B> fmt::Debug for VirtLayer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtLayer")
            .field("cpu_count", &self.cpu_count)
            .field("rebooting", &self.rebooting)
            .field("cpus", &&self.cpus[..self.cpu_count as usize])
            .finish_non_exhaustive()
    }
}

impl<B: Backend> VirtLayer<B> {
    /// A layer for CPUs `0..cpu_count`, all offline, no users, not rebooting.
    pub fn new(backend: B, cpu_count: u32) -> Result<Self, NewError> {
        if cpu_count == 0 {
            return Err(NewError::NoCpus);
        }
        if cpu_count as usize > MAX_CPUS {
            return Err(NewError::TooManyCpus {
                max: MAX_CPUS as u32,
            });
        }
        Ok(VirtLayer {
            backend,
            cpu_count,
            rebooting: false,
            cpus: [PerCpu::default(); MAX_CPUS],
        })
    }

    /// Adds `user` to `cpu`'s users; on the 0→1 transition of an online CPU, turns
    /// virtualization on. If that fails nothing changes except `last_error`.
    pub fn get(&mut self, cpu: CpuId, user: User) -> Result<(), GetError> {
        let i = self.index(cpu).ok_or(GetError::NoSuchCpu)?;
        if self.cpus[i].users.contains(user) {
            return Err(GetError::AlreadyHeld);
        }
        if self.rebooting {
            return Err(GetError::Rebooting);
        }
        if self.cpus[i].online && self.cpus[i].users.is_empty() {
            self.enable(cpu).map_err(GetError::Enable)?;
        }
        self.cpus[i].users = self.cpus[i].users.with(user);
        self.debug_check();
        Ok(())
    }

    /// Removes `user` from `cpu`'s users; on the 1→0 transition of an enabled CPU, turns
    /// virtualization off. If that fails (outside reboot) nothing changes except `last_error`.
    pub fn put(&mut self, cpu: CpuId, user: User) -> Result<(), PutError> {
        let i = self.index(cpu).ok_or(PutError::NoSuchCpu)?;
        let users = self.cpus[i].users;
        if !users.contains(user) {
            return Err(PutError::NotHeld);
        }
        let remaining = users.without(user);
        if remaining.is_empty() && self.cpus[i].enabled {
            self.disable(cpu).map_err(PutError::Disable)?;
        }
        self.cpus[i].users = remaining;
        self.debug_check();
        Ok(())
    }

    /// Puts `cpu` into service for guests; turns virtualization on if it has users. If that
    /// fails the CPU stays offline and the error is recorded.
    pub fn online(&mut self, cpu: CpuId) -> Result<(), OnlineError> {
        let i = self.index(cpu).ok_or(OnlineError::NoSuchCpu)?;
        if self.cpus[i].online {
            return Err(OnlineError::AlreadyOnline);
        }
        if self.rebooting {
            return Err(OnlineError::Rebooting);
        }
        if !self.cpus[i].users.is_empty() {
            self.enable(cpu).map_err(OnlineError::Enable)?;
        }
        self.cpus[i].online = true;
        self.debug_check();
        Ok(())
    }

    /// Takes `cpu` out of service for guests; turns virtualization off if it was on. Users keep
    /// their hold and get it back on [`online`](Self::online). The kernel parks or moves the
    /// CPU's vCPUs first.
    ///
    /// Refused for the last online CPU and when `veto` objects.
    pub fn offline(&mut self, cpu: CpuId, veto: &dyn OfflineVeto) -> Result<(), OfflineError> {
        let i = self.index(cpu).ok_or(OfflineError::NoSuchCpu)?;
        if !self.cpus[i].online {
            return Err(OfflineError::AlreadyOffline);
        }
        let remaining = self.online_cpus().without(cpu);
        if remaining.is_empty() {
            return Err(OfflineError::LastOnlineCpu);
        }
        veto.check(cpu, remaining).map_err(OfflineError::Conflict)?;
        if self.cpus[i].enabled {
            self.disable(cpu).map_err(OfflineError::Disable)?;
        }
        self.cpus[i].online = false;
        self.debug_check();
        Ok(())
    }

    /// Orderly reboot: sets the rebooting state and turns virtualization off on every CPU the
    /// layer enabled. A failing disable is tolerated (recorded, then the CPU is forced off with
    /// [`Backend::emergency_disable`]); those CPUs are returned. Idempotent.
    pub fn begin_reboot(&mut self) -> CpuSet {
        self.rebooting = true;
        let mut faulted = CpuSet::EMPTY;
        for cpu in self.cpu_ids() {
            if !self.cpus[cpu.index()].enabled {
                continue;
            }
            if self.disable(cpu).is_err() {
                faulted = faulted.with(cpu);
                self.backend.emergency_disable(cpu);
                self.cpus[cpu.index()].enabled = false;
            }
        }
        self.debug_check();
        faulted
    }

    /// Crash/emergency path: sets the rebooting state and calls [`Backend::emergency_disable`]
    /// on **every** CPU, whatever the bookkeeping says (after a crash it is not trusted, and
    /// something else may have turned virtualization on). Users and online flags are kept for
    /// the record. Idempotent.
    pub fn emergency_disable_all(&mut self) {
        self.rebooting = true;
        for cpu in self.cpu_ids() {
            self.backend.emergency_disable(cpu);
            self.cpus[cpu.index()].enabled = false;
        }
        self.debug_check();
    }

    /// Whether the rebooting state is set (it is never cleared).
    pub fn is_rebooting(&self) -> bool {
        self.rebooting
    }

    /// Number of CPUs tracked.
    pub fn cpu_count(&self) -> u32 {
        self.cpu_count
    }

    /// CPUs `0..cpu_count`.
    pub fn cpu_ids(&self) -> impl Iterator<Item = CpuId> + use<B> {
        (0..self.cpu_count).map(CpuId)
    }

    /// CPUs in service for guests.
    pub fn online_cpus(&self) -> CpuSet {
        self.cpu_ids()
            .filter(|c| self.cpus[c.index()].online)
            .fold(CpuSet::EMPTY, CpuSet::with)
    }

    /// CPUs where the layer has virtualization on.
    pub fn enabled_cpus(&self) -> CpuSet {
        self.cpu_ids()
            .filter(|c| self.cpus[c.index()].enabled)
            .fold(CpuSet::EMPTY, CpuSet::with)
    }

    /// One CPU's bookkeeping, `None` if `cpu >= cpu_count`.
    pub fn snapshot(&self, cpu: CpuId) -> Option<CpuSnapshot> {
        let s = &self.cpus[self.index(cpu)?];
        Some(CpuSnapshot {
            cpu,
            online: s.online,
            users: s.users,
            enabled: s.enabled,
            last_error: s.last_error,
        })
    }

    /// Every CPU's bookkeeping, in order.
    pub fn snapshots(&self) -> impl Iterator<Item = CpuSnapshot> + '_ {
        self.cpu_ids().filter_map(|c| self.snapshot(c))
    }

    /// Checks *enabled ⇔ users > 0 ∧ online ∧ ¬rebooting* on every CPU.
    pub fn check_invariant(&self) -> Result<(), InvariantViolation> {
        for cpu in self.cpu_ids() {
            let s = &self.cpus[cpu.index()];
            let should = !s.users.is_empty() && s.online && !self.rebooting;
            if s.enabled != should {
                return Err(InvariantViolation { cpu });
            }
        }
        Ok(())
    }

    /// The backend, e.g. for the kernel's hardware read-back.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably. Calling its enable/disable directly bypasses the bookkeeping;
    /// meant for tests and for the kernel's crash path.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    fn index(&self, cpu: CpuId) -> Option<usize> {
        (cpu.0 < self.cpu_count).then_some(cpu.index())
    }

    /// Hardware on, with the read-back refusal of someone else's enable. Records the outcome.
    fn enable(&mut self, cpu: CpuId) -> Result<(), EnableError> {
        debug_assert!(!self.rebooting && !self.cpus[cpu.index()].enabled);
        let result = if self.backend.is_enabled_hw(cpu) {
            Err(EnableError::Busy)
        } else {
            self.backend.enable(cpu)
        };
        let s = &mut self.cpus[cpu.index()];
        s.last_error = result.err().map(CpuError::Enable);
        s.enabled = result.is_ok();
        result
    }

    /// Hardware off. Records the outcome; on failure the CPU is still on.
    fn disable(&mut self, cpu: CpuId) -> Result<(), DisableError> {
        debug_assert!(self.cpus[cpu.index()].enabled);
        let result = self.backend.disable(cpu);
        let s = &mut self.cpus[cpu.index()];
        s.last_error = result.err().map(CpuError::Disable);
        s.enabled = result.is_err();
        result
    }

    fn debug_check(&self) {
        debug_assert_eq!(self.check_invariant(), Ok(()));
    }
}

#[cfg(test)]
mod tests;
