//! TDX module bring-up as an explicit state machine over the virt layer, and what follows it:
//! CPUs coming and going, guest KeyIDs, reboot.
//!
//! # The sequence (TDX Module Base Spec, "Intel TDX Module Lifecycle"; Linux
//! `arch/x86/virt/vmx/tdx/tdx.c`, `tdx_cpu_enable` and `init_tdx_module`)
//!
//! | state → next            | step                                                                  |
//! |-------------------------|-----------------------------------------------------------------------|
//! | `Uninitialized → GlobalInitDone` | take [`User::TrustedModule`] on every online CPU (VMX on there), then TDH.SYS.INIT once on one of them |
//! | `GlobalInitDone → CpusInitialized` | TDH.SYS.LP.INIT on every CPU holding the reference           |
//! | `CpusInitialized → Configured` | TDH.SYS.CONFIG: the TDMR list and the global KeyID                |
//! | `Configured → KeysConfigured` | TDH.SYS.KEY.CONFIG once per package, one package at a time, on a TDX CPU of that package |
//! | `KeysConfigured → Ready` | TDH.SYS.TDMR.INIT for each TDMR, repeated until the module reports it done |
//!
//! Each transition is one [`Tdx::step`]; [`Tdx::bring_up`] runs them all. They are the honest
//! level of detail for a hypervisor without TD guests: the TDMR list and its PAMTs are built by
//! the caller ([`ModulePlan`] validates what it is given), and module metadata (TDH.SYS.RD) is
//! not read yet.
//!
//! # Failure handling
//!
//! - **A per-CPU failure leaves that CPU out.** If taking the virt reference or TDH.SYS.LP.INIT
//!   fails on a CPU, its reference is released, it never gets another SEAMCALL, and the error is
//!   kept as data ([`Tdx::cpu`]). Bring-up continues with the other CPUs; if the module itself
//!   insists on that CPU, a later step fails and says so.
//! - **A global failure disables TDX for this boot, never the hypervisor.** A failed TDH.SYS.INIT,
//!   TDH.SYS.CONFIG, KEY.CONFIG or TDMR.INIT (or a package without a TDX CPU) rolls back: every
//!   TrustedModule reference is dropped (VMX stays on wherever the hypervisor holds it), no
//!   SEAMCALL is made again, and the state is the terminal [`ModuleState::Failed`] with the step
//!   and cause. The module cannot be initialised twice in one boot (Linux keeps the same rule).
//! - **TDX_RND_NO_ENTROPY is retried** a bounded number of times ([`SEAMCALL_RETRIES`]), as the
//!   module spec asks for leaves that draw random numbers.
//!
//! # Invariants ([`Tdx::check_invariant`], checked against a simulated module in the tests)
//!
//! - TDX initialised on a CPU ⇒ TrustedModule holds that CPU, and VMX is on there whenever it is
//!   online (the virt layer's own invariant then gives *VMX on ⇔ online ∧ users > 0*).
//! - The bookkeeping's TrustedModule holds equal the virt layer's.
//! - Guest KeyIDs in use ⇒ the module is ready and every package has an online TDX CPU (needed
//!   to write back and reclaim those keys: TDH.PHYMEM.CACHE.WB runs per package). The offline
//!   veto ([`OfflineVeto`] for [`Tdx`]) refuses taking away the last one with
//!   [`Conflict::LastInPackage`]; [`Tdx::alloc_key`] refuses while a package has none.
//! - Not bringing up / ready ⇒ no CPU counts as TDX-initialised.
//!
//! # Reboot
//!
//! [`Tdx::shutdown`] runs **before** the virt layer's `begin_reboot`: it ends TDX (terminal
//! [`ModuleState::ShutDown`], no more SEAMCALLs) and drops every TrustedModule reference, so
//! VMX is only ever turned off under a module that will not be called again, and the
//! hypervisor's references are the last ones standing.

use core::fmt;

use hv::virt::{
    Backend, Conflict, CpuId, CpuSet, GetError, MAX_CPUS, OfflineVeto, PutError, User, VirtLayer,
};

use crate::detect::{Decision, KeyId, KeyIdRange};
use crate::seamcall::{Leaf, Regs, Seamcall, TdxError};

/// Retries of a SEAMCALL that failed with TDX_RND_NO_ENTROPY.
pub const SEAMCALL_RETRIES: u32 = 16;
/// Most TDMRs a plan may hold (the module reports at least 64 as its maximum, per Linux).
pub const MAX_TDMRS: usize = 64;
/// Most packages (a [`Topology`] numbers them `0..MAX_PACKAGES`).
pub const MAX_PACKAGES: usize = 64;
/// Most guest KeyIDs tracked; firmware usually reserves far fewer.
pub const MAX_GUEST_KEYS: usize = 1024;
/// Bound on TDH.SYS.TDMR.INIT calls for one TDMR, so a module that stops making progress is an
/// error instead of a hang.
pub const MAX_TDMR_INIT_CALLS: u32 = 1 << 20;
/// TDMRs are 1 GiB aligned in base and size (TDX Module Base Spec, "TDMR").
pub const TDMR_ALIGN: u64 = 1 << 30;
/// The physical array of TDMR_INFO addresses passed to TDH.SYS.CONFIG is 512-byte aligned.
pub const TDMR_INFO_ARRAY_ALIGN: u64 = 512;

/// Which package (socket) each CPU is in, in the kernel's numbering, from its topology
/// enumeration (STYLE.md point 5: passed in).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    cpu_count: u32,
    package: [u8; MAX_CPUS],
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("packages", &&self.package[..self.cpu_count as usize])
            .finish()
    }
}

/// Error from [`Topology::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopologyError {
    /// No CPU, or more than [`MAX_CPUS`].
    CpuCount,
    /// A package number ≥ [`MAX_PACKAGES`].
    PackageNumber {
        /// The CPU that named it.
        cpu: CpuId,
    },
}

impl Topology {
    /// `packages[i]` is CPU *i*'s package.
    pub fn new(packages: &[u32]) -> Result<Self, TopologyError> {
        if packages.is_empty() || packages.len() > MAX_CPUS {
            return Err(TopologyError::CpuCount);
        }
        let mut package = [0u8; MAX_CPUS];
        for (i, &p) in packages.iter().enumerate() {
            if p as usize >= MAX_PACKAGES {
                return Err(TopologyError::PackageNumber {
                    cpu: CpuId(i as u32),
                });
            }
            package[i] = p as u8;
        }
        Ok(Topology {
            cpu_count: packages.len() as u32,
            package,
        })
    }

    /// Number of CPUs described.
    pub fn cpu_count(&self) -> u32 {
        self.cpu_count
    }

    /// `cpu`'s package.
    pub fn package_of(&self, cpu: CpuId) -> Option<u32> {
        (cpu.0 < self.cpu_count).then(|| u32::from(self.package[cpu.index()]))
    }

    /// The CPUs of `package`.
    pub fn cpus_in(&self, package: u32) -> CpuSet {
        (0..self.cpu_count)
            .map(CpuId)
            .filter(|&c| self.package_of(c) == Some(package))
            .fold(CpuSet::EMPTY, CpuSet::with)
    }

    /// The packages that have CPUs, lowest first.
    pub fn packages(&self) -> impl Iterator<Item = u32> + '_ {
        let mask = (0..self.cpu_count as usize).fold(0u64, |m, i| m | 1 << self.package[i]);
        (0..MAX_PACKAGES as u32).filter(move |p| mask & (1 << p) != 0)
    }
}

/// One TD Memory Range: memory the module may hand to TDs, with its PAMT already described in
/// the caller's TDMR_INFO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tdmr {
    /// Physical base, 1 GiB aligned.
    pub base: u64,
    /// Size, a non-zero multiple of 1 GiB.
    pub size: u64,
}

impl Tdmr {
    /// One past the last byte.
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// Why a [`ModulePlan`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlanError {
    /// No TDMR.
    NoTdmrs,
    /// More than [`MAX_TDMRS`].
    TooManyTdmrs,
    /// TDMR `index` is not 1 GiB aligned, or empty.
    BadTdmr {
        /// Which.
        index: usize,
    },
    /// TDMR `index` overlaps or precedes the one before (they must be ascending, disjoint).
    Unordered {
        /// Which.
        index: usize,
    },
    /// The TDMR_INFO address array is null or not 512-byte aligned.
    BadInfoArray,
}

/// What TDH.SYS.CONFIG and TDH.SYS.TDMR.INIT need: validated, ascending, disjoint TDMRs and the
/// physical address of the array of their TDMR_INFO addresses (built by the kernel).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ModulePlan {
    info_array_pa: u64,
    tdmrs: [Tdmr; MAX_TDMRS],
    len: usize,
}

impl fmt::Debug for ModulePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModulePlan")
            .field("info_array_pa", &self.info_array_pa)
            .field("tdmrs", &self.tdmrs())
            .finish()
    }
}

impl ModulePlan {
    /// Checks the TDMRs (aligned, non-empty, ascending, disjoint, at most [`MAX_TDMRS`]) and
    /// the array address.
    pub fn new(info_array_pa: u64, tdmrs: &[Tdmr]) -> Result<Self, PlanError> {
        if info_array_pa == 0 || info_array_pa % TDMR_INFO_ARRAY_ALIGN != 0 {
            return Err(PlanError::BadInfoArray);
        }
        if tdmrs.is_empty() {
            return Err(PlanError::NoTdmrs);
        }
        if tdmrs.len() > MAX_TDMRS {
            return Err(PlanError::TooManyTdmrs);
        }
        let mut out = [Tdmr::default(); MAX_TDMRS];
        for (index, t) in tdmrs.iter().enumerate() {
            let aligned = t.base % TDMR_ALIGN == 0 && t.size % TDMR_ALIGN == 0;
            if !aligned || t.size == 0 || t.base.checked_add(t.size).is_none() {
                return Err(PlanError::BadTdmr { index });
            }
            if index > 0 && t.base < tdmrs[index - 1].end() {
                return Err(PlanError::Unordered { index });
            }
            out[index] = *t;
        }
        Ok(ModulePlan {
            info_array_pa,
            tdmrs: out,
            len: tdmrs.len(),
        })
    }

    /// The TDMRs, ascending.
    pub fn tdmrs(&self) -> &[Tdmr] {
        &self.tdmrs[..self.len]
    }

    /// Physical address of the TDMR_INFO address array.
    pub fn info_array_pa(&self) -> u64 {
        self.info_array_pa
    }
}

/// A bring-up step, for errors and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BringupStep {
    /// TDH.SYS.INIT (and taking the virt references it needs).
    GlobalInit,
    /// TDH.SYS.LP.INIT on every CPU.
    CpuInit,
    /// TDH.SYS.CONFIG.
    Config,
    /// TDH.SYS.KEY.CONFIG per package.
    KeyConfig,
    /// TDH.SYS.TDMR.INIT.
    TdmrInit,
}

impl BringupStep {
    /// Stable identifier.
    pub const fn as_str(self) -> &'static str {
        match self {
            BringupStep::GlobalInit => "global_init",
            BringupStep::CpuInit => "cpu_init",
            BringupStep::Config => "config",
            BringupStep::KeyConfig => "key_config",
            BringupStep::TdmrInit => "tdmr_init",
        }
    }
}

/// Why a bring-up step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// A SEAMCALL failed; the status is data.
    Seamcall {
        /// Where it ran.
        cpu: CpuId,
        /// Which leaf.
        leaf: Leaf,
        /// The status.
        error: TdxError,
    },
    /// No CPU could take part (no online CPU got VMX on, or none passed TDH.SYS.LP.INIT).
    NoUsableCpu,
    /// A package has no online CPU that passed TDH.SYS.LP.INIT, so its key cannot be configured.
    NoTdxCpuInPackage {
        /// Which.
        package: u32,
    },
    /// TDH.SYS.TDMR.INIT stopped advancing (or exceeded [`MAX_TDMR_INIT_CALLS`]).
    TdmrNoProgress {
        /// The TDMR's base.
        base: u64,
    },
    /// [`Tdx::step`] was called without a plan while the next step needs one.
    NoPlan,
}

/// A failed bring-up: TDX is off for this boot; the hypervisor is not affected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BringupError {
    /// Which step.
    pub step: BringupStep,
    /// Why.
    pub cause: Cause,
}

impl fmt::Display for BringupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tdx: {} failed: ", self.step.as_str())?;
        match self.cause {
            Cause::Seamcall { cpu, leaf, error } => write!(f, "{leaf} on {cpu}: {error}"),
            Cause::NoUsableCpu => f.write_str("no CPU could take part"),
            Cause::NoTdxCpuInPackage { package } => {
                write!(f, "package {package} has no TDX-initialised CPU")
            }
            Cause::TdmrNoProgress { base } => write!(f, "TDMR at {base:#x} made no progress"),
            Cause::NoPlan => f.write_str("no TDMR plan"),
        }
    }
}

/// Where the TDX module is. Moves forward only; `Failed` and `ShutDown` are terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModuleState {
    /// TDX not requested or not supported: nothing is ever called.
    Off,
    /// Supported and requested; nothing done yet.
    Uninitialized,
    /// TDH.SYS.INIT succeeded.
    GlobalInitDone,
    /// TDH.SYS.LP.INIT ran on every CPU that could take part.
    CpusInitialized,
    /// TDH.SYS.CONFIG succeeded.
    Configured,
    /// Every package's global key is configured.
    KeysConfigured,
    /// TDMRs initialised: the module is ready (for TDs, once Hermitage has them).
    Ready,
    /// Bring-up failed; TDX is off for this boot.
    Failed(BringupError),
    /// Reboot: TDX ended.
    ShutDown,
}

impl ModuleState {
    /// Stable identifier for the API.
    pub const fn as_str(&self) -> &'static str {
        match self {
            ModuleState::Off => "off",
            ModuleState::Uninitialized => "uninitialized",
            ModuleState::GlobalInitDone => "global_init_done",
            ModuleState::CpusInitialized => "cpus_initialized",
            ModuleState::Configured => "configured",
            ModuleState::KeysConfigured => "keys_configured",
            ModuleState::Ready => "ready",
            ModuleState::Failed(_) => "failed",
            ModuleState::ShutDown => "shut_down",
        }
    }

    const fn in_progress(&self) -> bool {
        matches!(
            self,
            ModuleState::GlobalInitDone
                | ModuleState::CpusInitialized
                | ModuleState::Configured
                | ModuleState::KeysConfigured
        )
    }
}

/// Why a CPU is left out of TDX (or could not be released), kept per CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuTdxError {
    /// Taking the virt reference (turning VMX on) failed.
    Virt(GetError),
    /// A SEAMCALL on this CPU failed.
    Seamcall {
        /// Which leaf.
        leaf: Leaf,
        /// The status.
        error: TdxError,
    },
    /// Dropping the virt reference failed; it is still held (retry with
    /// [`Tdx::release_all`]).
    Release(PutError),
    /// The module is not ready, so the CPU was not initialised.
    NotReady,
}

/// One CPU's TDX bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CpuTdx {
    /// Which CPU.
    pub cpu: CpuId,
    /// TDH.SYS.LP.INIT succeeded here (kept across offline/online: the CPU keeps running).
    pub initialized: bool,
    /// TDX holds [`User::TrustedModule`] here.
    pub holds_ref: bool,
    /// The last failure here, `None` after a success.
    pub last_error: Option<CpuTdxError>,
}

/// Error from [`Tdx::alloc_key`] / [`Tdx::free_key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyError {
    /// The module is not ready.
    NotReady,
    /// Every guest KeyID is in use.
    Exhausted,
    /// A package has no online TDX CPU: a key allocated now could not be reclaimed there.
    PackageWithoutTdxCpu {
        /// Which.
        package: u32,
    },
    /// Not a guest KeyID of this range, or not allocated.
    NotAllocated,
}

/// What [`Tdx::shutdown`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ShutdownReport {
    /// CPUs whose TrustedModule reference was dropped.
    pub released: CpuSet,
    /// CPUs where dropping it failed (the reboot's forced disable handles them).
    pub release_failed: CpuSet,
}

/// A bookkeeping inconsistency (a bug here), for [`Tdx::check_invariant`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TdxInvariantViolation {
    /// `holds_ref` differs from the virt layer's users.
    RefMismatch(CpuId),
    /// Initialised without the reference.
    InitWithoutRef(CpuId),
    /// Initialised and online but VMX is off.
    InitWithoutVmx(CpuId),
    /// Initialised while the module is neither coming up nor ready.
    InitWhileDown(CpuId),
    /// Keys in use but the module is not ready.
    KeysWhileNotReady,
    /// Keys in use and this package has no online TDX CPU.
    KeysWithoutPackageCpu(u32),
}

#[derive(Clone, Copy, Debug, Default)]
struct PerCpu {
    initialized: bool,
    holds_ref: bool,
    last_error: Option<CpuTdxError>,
}

const KEY_WORDS: usize = MAX_GUEST_KEYS / 64;

/// The TDX module's state on this machine, over the kernel's [`VirtLayer`] and a [`Seamcall`]
/// implementation. Like the virt layer it is a plain `&mut self` state machine; the kernel
/// keeps it behind the same lock.
pub struct Tdx {
    keyids: Option<KeyIdRange>,
    topology: Topology,
    state: ModuleState,
    cpus: [PerCpu; MAX_CPUS],
    packages_keyed: u64,
    keys: [u64; KEY_WORDS],
    keys_in_use: u32,
}

impl fmt::Debug for Tdx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tdx")
            .field("state", &self.state)
            .field("keyids", &self.keyids)
            .field("cpus", &&self.cpus[..self.topology.cpu_count as usize])
            .field("keys_in_use", &self.keys_in_use)
            .finish_non_exhaustive()
    }
}

impl Tdx {
    /// TDX for this boot as [`crate::decide`] decided: `Uninitialized` for
    /// [`Decision::BringUp`], `Off` otherwise.
    pub fn new(decision: Decision, topology: Topology) -> Self {
        let (keyids, state) = match decision {
            Decision::BringUp { keyids } => (Some(keyids), ModuleState::Uninitialized),
            _ => (None, ModuleState::Off),
        };
        Tdx {
            keyids,
            topology,
            state,
            cpus: [PerCpu::default(); MAX_CPUS],
            packages_keyed: 0,
            keys: [0; KEY_WORDS],
            keys_in_use: 0,
        }
    }

    /// Where the module is.
    pub fn state(&self) -> ModuleState {
        self.state
    }

    /// The KeyIDs, if TDX was requested and supported.
    pub fn keyids(&self) -> Option<KeyIdRange> {
        self.keyids
    }

    /// One CPU's TDX bookkeeping.
    pub fn cpu(&self, cpu: CpuId) -> Option<CpuTdx> {
        let s = self.per(cpu)?;
        Some(CpuTdx {
            cpu,
            initialized: s.initialized,
            holds_ref: s.holds_ref,
            last_error: s.last_error,
        })
    }

    /// CPUs where TDH.SYS.LP.INIT succeeded.
    pub fn initialized_cpus(&self) -> CpuSet {
        self.cpu_ids()
            .filter(|c| self.cpus[c.index()].initialized)
            .fold(CpuSet::EMPTY, CpuSet::with)
    }

    /// Guest KeyIDs allocated.
    pub fn keys_in_use(&self) -> u32 {
        self.keys_in_use
    }

    /// Runs bring-up steps until the module is ready, failed, or off. The kernel calls this
    /// once at boot, after the virt layer put every CPU online with the hypervisor as a user.
    pub fn bring_up<B: Backend, S: Seamcall>(
        &mut self,
        virt: &mut VirtLayer<B>,
        sc: &mut S,
        plan: Option<&ModulePlan>,
    ) -> Result<ModuleState, BringupError> {
        loop {
            if let s @ (ModuleState::Ready | ModuleState::Off | ModuleState::ShutDown) =
                self.step(virt, sc, plan)?
            {
                return Ok(s);
            }
        }
    }

    /// Makes one transition (see the module docs) and returns the new state. In a terminal or
    /// ready state it does nothing: `Ok` with the state, or the stored error if failed.
    pub fn step<B: Backend, S: Seamcall>(
        &mut self,
        virt: &mut VirtLayer<B>,
        sc: &mut S,
        plan: Option<&ModulePlan>,
    ) -> Result<ModuleState, BringupError> {
        let result = match self.state {
            ModuleState::Failed(e) => return Err(e),
            s @ (ModuleState::Off | ModuleState::Ready | ModuleState::ShutDown) => return Ok(s),
            _ if virt.is_rebooting() => return Ok(self.state),
            ModuleState::Uninitialized => self.global_init(virt, sc),
            ModuleState::GlobalInitDone => self.cpu_init(virt, sc),
            ModuleState::CpusInitialized => self.config(sc, plan),
            ModuleState::Configured => self.key_config(virt, sc),
            ModuleState::KeysConfigured => self.tdmr_init(virt, sc, plan),
        };
        match result {
            Ok(next) => {
                self.state = next;
                Ok(next)
            }
            Err(e) => {
                self.fail(virt, e);
                Err(e)
            }
        }
    }

    /// A CPU came (back) into service: after [`VirtLayer::online`] succeeded for it. If the
    /// module is ready and the CPU is not yet TDX-initialised, takes the reference and runs
    /// TDH.SYS.LP.INIT there; on failure the CPU stays out of TDX (and in service for guests).
    /// A CPU initialised before needs nothing: the virt layer turned VMX back on because
    /// TrustedModule still holds it.
    pub fn on_online<B: Backend, S: Seamcall>(
        &mut self,
        cpu: CpuId,
        virt: &mut VirtLayer<B>,
        sc: &mut S,
    ) -> Result<(), CpuTdxError> {
        let Some(s) = self.per(cpu) else {
            return Ok(());
        };
        if self.state != ModuleState::Ready {
            return match self.state {
                ModuleState::Off | ModuleState::Failed(_) | ModuleState::ShutDown => Ok(()),
                _ => Err(CpuTdxError::NotReady),
            };
        }
        if s.initialized {
            return Ok(());
        }
        self.init_cpu(cpu, virt, sc)
    }

    /// Allocates a guest KeyID (for a future TD). Refused unless the module is ready and every
    /// package has an online TDX CPU.
    pub fn alloc_key<B: Backend>(&mut self, virt: &VirtLayer<B>) -> Result<KeyId, KeyError> {
        let (ModuleState::Ready, Some(range)) = (self.state, self.keyids) else {
            return Err(KeyError::NotReady);
        };
        if let Some(package) = self.package_without_tdx_cpu(virt.online_cpus()) {
            return Err(KeyError::PackageWithoutTdxCpu { package });
        }
        let n = (range.guest_count() as usize).min(MAX_GUEST_KEYS);
        let i = (0..n)
            .find(|&i| self.keys[i / 64] & (1 << (i % 64)) == 0)
            .ok_or(KeyError::Exhausted)?;
        self.keys[i / 64] |= 1 << (i % 64);
        self.keys_in_use += 1;
        Ok(range.guest(i as u32))
    }

    /// Returns a guest KeyID. Bookkeeping only: reclaiming a KeyID a TD used needs
    /// TDH.PHYMEM.CACHE.WB on every package and TDH.MNG.KEY.FREEID, which come with TDs.
    pub fn free_key(&mut self, key: KeyId) -> Result<(), KeyError> {
        let range = self.keyids.ok_or(KeyError::NotAllocated)?;
        let i = key
            .0
            .checked_sub(range.first + 1)
            .map(|i| i as usize)
            .filter(|&i| i < MAX_GUEST_KEYS && i < range.guest_count() as usize)
            .ok_or(KeyError::NotAllocated)?;
        if self.keys[i / 64] & (1 << (i % 64)) == 0 {
            return Err(KeyError::NotAllocated);
        }
        self.keys[i / 64] &= !(1 << (i % 64));
        self.keys_in_use -= 1;
        Ok(())
    }

    /// Reboot, step one (before the virt layer's `begin_reboot`): TDX ends for good and every
    /// TrustedModule reference is dropped, so the hypervisor's are the last ones. Idempotent.
    pub fn shutdown<B: Backend>(&mut self, virt: &mut VirtLayer<B>) -> ShutdownReport {
        self.state = ModuleState::ShutDown;
        self.keys = [0; KEY_WORDS];
        self.keys_in_use = 0;
        self.packages_keyed = 0;
        self.release_all(virt)
    }

    /// Drops every TrustedModule reference TDX holds and forgets all per-CPU initialisation
    /// (no SEAMCALL follows). Used by rollback and shutdown; callable again to retry
    /// references whose release failed.
    pub fn release_all<B: Backend>(&mut self, virt: &mut VirtLayer<B>) -> ShutdownReport {
        let mut report = ShutdownReport::default();
        for cpu in self.cpu_ids() {
            let s = &mut self.cpus[cpu.index()];
            s.initialized = false;
            if !s.holds_ref {
                continue;
            }
            match virt.put(cpu, User::TrustedModule) {
                Ok(()) | Err(PutError::NotHeld) | Err(PutError::NoSuchCpu) => {
                    s.holds_ref = false;
                    report.released = report.released.with(cpu);
                }
                Err(e) => {
                    s.last_error = Some(CpuTdxError::Release(e));
                    report.release_failed = report.release_failed.with(cpu);
                }
            }
        }
        report
    }

    /// Checks the invariants in the module docs against the virt layer.
    pub fn check_invariant<B: Backend>(
        &self,
        virt: &VirtLayer<B>,
    ) -> Result<(), TdxInvariantViolation> {
        use TdxInvariantViolation::*;
        let up = self.state.in_progress() || self.state == ModuleState::Ready;
        for cpu in self.cpu_ids() {
            let s = &self.cpus[cpu.index()];
            let Some(v) = virt.snapshot(cpu) else {
                if s.holds_ref || s.initialized {
                    return Err(RefMismatch(cpu));
                }
                continue;
            };
            if s.holds_ref != v.users.contains(User::TrustedModule) {
                return Err(RefMismatch(cpu));
            }
            if s.initialized {
                if !s.holds_ref {
                    return Err(InitWithoutRef(cpu));
                }
                if v.online && !virt.is_rebooting() && !v.enabled {
                    return Err(InitWithoutVmx(cpu));
                }
                if !up {
                    return Err(InitWhileDown(cpu));
                }
            }
        }
        if self.keys_in_use > 0 {
            if self.state != ModuleState::Ready {
                return Err(KeysWhileNotReady);
            }
            if let Some(p) = self.package_without_tdx_cpu(virt.online_cpus()) {
                return Err(KeysWithoutPackageCpu(p));
            }
        }
        Ok(())
    }

    // ---- steps ----

    fn global_init<B: Backend, S: Seamcall>(
        &mut self,
        virt: &mut VirtLayer<B>,
        sc: &mut S,
    ) -> Result<ModuleState, BringupError> {
        let fail = |cause| BringupError {
            step: BringupStep::GlobalInit,
            cause,
        };
        for cpu in virt.online_cpus().iter() {
            if self.per(cpu).is_none() || self.cpus[cpu.index()].holds_ref {
                continue;
            }
            match virt.get(cpu, User::TrustedModule) {
                Ok(()) => self.cpus[cpu.index()].holds_ref = true,
                Err(e) => self.cpus[cpu.index()].last_error = Some(CpuTdxError::Virt(e)),
            }
        }
        let cpu = self
            .held_cpus()
            .iter()
            .next()
            .ok_or(fail(Cause::NoUsableCpu))?;
        call(sc, cpu, Leaf::SysInit, Regs::default())
            .map_err(|error| fail(seamcall_cause(cpu, Leaf::SysInit, error)))?;
        Ok(ModuleState::GlobalInitDone)
    }

    fn cpu_init<B: Backend, S: Seamcall>(
        &mut self,
        virt: &mut VirtLayer<B>,
        sc: &mut S,
    ) -> Result<ModuleState, BringupError> {
        for cpu in self.held_cpus().iter() {
            if !self.cpus[cpu.index()].initialized {
                let _ = self.init_cpu(cpu, virt, sc);
            }
        }
        if self.initialized_cpus().is_empty() {
            return Err(BringupError {
                step: BringupStep::CpuInit,
                cause: Cause::NoUsableCpu,
            });
        }
        Ok(ModuleState::CpusInitialized)
    }

    fn config<S: Seamcall>(
        &mut self,
        sc: &mut S,
        plan: Option<&ModulePlan>,
    ) -> Result<ModuleState, BringupError> {
        let fail = |cause| BringupError {
            step: BringupStep::Config,
            cause,
        };
        let plan = plan.ok_or(fail(Cause::NoPlan))?;
        let cpu = self
            .initialized_cpus()
            .iter()
            .next()
            .ok_or(fail(Cause::NoUsableCpu))?;
        let global = self.keyids.map_or(0, |k| k.global().0);
        let args = Regs {
            rcx: plan.info_array_pa(),
            rdx: plan.tdmrs().len() as u64,
            r8: u64::from(global),
            ..Regs::default()
        };
        call(sc, cpu, Leaf::SysConfig, args)
            .map_err(|error| fail(seamcall_cause(cpu, Leaf::SysConfig, error)))?;
        Ok(ModuleState::Configured)
    }

    fn key_config<B: Backend, S: Seamcall>(
        &mut self,
        virt: &VirtLayer<B>,
        sc: &mut S,
    ) -> Result<ModuleState, BringupError> {
        let fail = |cause| BringupError {
            step: BringupStep::KeyConfig,
            cause,
        };
        let online = virt.online_cpus();
        // One package at a time: the leaf may not run concurrently on different CPUs.
        for package in self.topology.packages() {
            if self.packages_keyed & (1 << package) != 0 {
                continue;
            }
            let cpu = self
                .tdx_cpus_in(package, online)
                .iter()
                .next()
                .ok_or(fail(Cause::NoTdxCpuInPackage { package }))?;
            call(sc, cpu, Leaf::SysKeyConfig, Regs::default())
                .map_err(|error| fail(seamcall_cause(cpu, Leaf::SysKeyConfig, error)))?;
            self.packages_keyed |= 1 << package;
        }
        Ok(ModuleState::KeysConfigured)
    }

    fn tdmr_init<B: Backend, S: Seamcall>(
        &mut self,
        virt: &VirtLayer<B>,
        sc: &mut S,
        plan: Option<&ModulePlan>,
    ) -> Result<ModuleState, BringupError> {
        let fail = |cause| BringupError {
            step: BringupStep::TdmrInit,
            cause,
        };
        let plan = plan.ok_or(fail(Cause::NoPlan))?;
        let online = virt.online_cpus();
        let cpu = self
            .initialized_cpus()
            .iter()
            .find(|&c| online.contains(c))
            .ok_or(fail(Cause::NoUsableCpu))?;
        for t in plan.tdmrs() {
            let mut done = t.base;
            let mut calls = 0;
            // The module may initialise a TDMR piecewise; RDX says where it got to.
            while done < t.end() {
                let args = Regs {
                    rcx: t.base,
                    ..Regs::default()
                };
                let out = call(sc, cpu, Leaf::SysTdmrInit, args)
                    .map_err(|error| fail(seamcall_cause(cpu, Leaf::SysTdmrInit, error)))?;
                calls += 1;
                if out.rdx <= done || calls > MAX_TDMR_INIT_CALLS {
                    return Err(fail(Cause::TdmrNoProgress { base: t.base }));
                }
                done = out.rdx;
            }
        }
        Ok(ModuleState::Ready)
    }

    // ---- helpers ----

    /// Takes the reference (if needed) and runs TDH.SYS.LP.INIT on `cpu`; on failure releases
    /// what it took and records the error.
    fn init_cpu<B: Backend, S: Seamcall>(
        &mut self,
        cpu: CpuId,
        virt: &mut VirtLayer<B>,
        sc: &mut S,
    ) -> Result<(), CpuTdxError> {
        let i = cpu.index();
        if !self.cpus[i].holds_ref {
            if let Err(e) = virt.get(cpu, User::TrustedModule) {
                let e = CpuTdxError::Virt(e);
                self.cpus[i].last_error = Some(e);
                return Err(e);
            }
            self.cpus[i].holds_ref = true;
        }
        match call(sc, cpu, Leaf::SysLpInit, Regs::default()) {
            Ok(_) => {
                self.cpus[i].initialized = true;
                self.cpus[i].last_error = None;
                Ok(())
            }
            Err(error) => {
                let e = CpuTdxError::Seamcall {
                    leaf: Leaf::SysLpInit,
                    error,
                };
                self.cpus[i].last_error = Some(e);
                // If the release fails the reference stays held (and recorded as held);
                // rollback or shutdown retries it.
                if virt.put(cpu, User::TrustedModule).is_ok() {
                    self.cpus[i].holds_ref = false;
                }
                Err(e)
            }
        }
    }

    fn fail<B: Backend>(&mut self, virt: &mut VirtLayer<B>, e: BringupError) {
        self.state = ModuleState::Failed(e);
        self.packages_keyed = 0;
        self.release_all(virt);
    }

    fn per(&self, cpu: CpuId) -> Option<&PerCpu> {
        (cpu.0 < self.topology.cpu_count).then(|| &self.cpus[cpu.index()])
    }

    fn cpu_ids(&self) -> impl Iterator<Item = CpuId> + use<> {
        (0..self.topology.cpu_count).map(CpuId)
    }

    fn held_cpus(&self) -> CpuSet {
        self.cpu_ids()
            .filter(|c| self.cpus[c.index()].holds_ref)
            .fold(CpuSet::EMPTY, CpuSet::with)
    }

    /// TDX-initialised CPUs of `package` within `among`.
    fn tdx_cpus_in(&self, package: u32, among: CpuSet) -> CpuSet {
        self.topology
            .cpus_in(package)
            .iter()
            .filter(|&c| self.cpus[c.index()].initialized && among.contains(c))
            .fold(CpuSet::EMPTY, CpuSet::with)
    }

    fn package_without_tdx_cpu(&self, online: CpuSet) -> Option<u32> {
        self.topology
            .packages()
            .find(|&p| self.tdx_cpus_in(p, online).is_empty())
    }
}

/// The TDX offline rule: while guest KeyIDs are in use, the last online TDX CPU of a package
/// stays (reclaiming those keys needs TDH.PHYMEM.CACHE.WB on every package). Stack it with the
/// kernel's own veto: `[&EndpointCpu as &dyn OfflineVeto, &tdx]`.
impl OfflineVeto for Tdx {
    fn check(&self, cpu: CpuId, remaining: CpuSet) -> Result<(), Conflict> {
        if self.keys_in_use == 0 {
            return Ok(());
        }
        let (Some(s), Some(package)) = (self.per(cpu), self.topology.package_of(cpu)) else {
            return Ok(());
        };
        if s.initialized && self.tdx_cpus_in(package, remaining).is_empty() {
            return Err(Conflict::LastInPackage { package });
        }
        Ok(())
    }
}

fn seamcall_cause(cpu: CpuId, leaf: Leaf, error: TdxError) -> Cause {
    Cause::Seamcall { cpu, leaf, error }
}

/// One SEAMCALL with the bounded TDX_RND_NO_ENTROPY retry.
fn call<S: Seamcall>(sc: &mut S, cpu: CpuId, leaf: Leaf, args: Regs) -> Result<Regs, TdxError> {
    let mut retries = 0;
    loop {
        match sc.seamcall(cpu, leaf, args) {
            Err(e) if e.is_no_entropy() && retries < SEAMCALL_RETRIES => retries += 1,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests;
