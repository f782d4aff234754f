//! Per-CPU hardware virtualization acts, executed on the CPU they concern (see `percpu.rs`):
//! enable, disable, emergency disable, read back, and the VMRUN/VMLAUNCH self-test. The vendor
//! files hold the only `unsafe` calls into the backends' thin `hw` layers.

mod frames;
pub mod host_pmu;
pub mod nmi;
pub mod seamcall;
pub mod svm;
pub mod svm_vcpu;
pub mod timer;
pub mod vcpu;
pub mod vmx;
pub mod vmx_vcpu;

use hv::features::VirtKind;
use hv::virt::{DisableError, EnableError};

/// What a CPU is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Enable,
    Disable,
    EmergencyDisable,
    IsEnabled,
    SelfTest,
    /// SEAMCALL into the TDX module on this CPU (refused unless TDX was detected and VMX is on).
    Seamcall {
        leaf: tdx::seamcall::Leaf,
        args: tdx::seamcall::Regs,
    },
}

/// Why the self-test failed. Hardware detail is data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfTestError {
    /// Virtualization is not on on this CPU.
    NotEnabled,
    /// Could not allocate the test's pages.
    NoMemory,
    /// Our own VMRUN consistency check refused the VMCB.
    Consistency,
    /// The guest exited with something other than CPUID then HLT.
    UnexpectedExit { code: u64 },
    /// The guest's registers did not survive the world switch.
    RegistersCorrupted,
    /// No HLT within the exit budget.
    NoHalt,
    /// This vendor's self-test is not built.
    Unsupported,
}

impl SelfTestError {
    pub fn as_str(&self) -> &'static str {
        match self {
            SelfTestError::NotEnabled => "self-test: virtualization is off",
            SelfTestError::NoMemory => "self-test: out of memory",
            SelfTestError::Consistency => "self-test: VMCB failed the consistency check",
            SelfTestError::UnexpectedExit { .. } => "self-test: unexpected exit",
            SelfTestError::RegistersCorrupted => "self-test: guest registers corrupted",
            SelfTestError::NoHalt => "self-test: guest never halted",
            SelfTestError::Unsupported => "self-test: not available for this vendor",
        }
    }
}

/// A passed self-test: how many exits the round trip took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelfTestReport {
    pub exits: u32,
}

/// A CPU's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Enable(Result<(), EnableError>),
    Disable(Result<(), DisableError>),
    Done,
    IsEnabled(bool),
    SelfTest(Result<SelfTestReport, SelfTestError>),
    Seamcall(Result<tdx::seamcall::Regs, tdx::seamcall::TdxError>),
}

/// Turn off whatever virtualization is on on this CPU, for the reboot and crash paths.
pub fn emergency_off_here() {
    svm::emergency_disable();
    vmx::emergency_disable();
}

/// Run `job` here, on CPU `cpu`, for the host's virtualization kind.
pub fn execute(kind: VirtKind, cpu: usize, job: Job) -> Reply {
    if let Job::Seamcall { leaf, args } = job {
        return Reply::Seamcall(seamcall::execute_here(leaf, args));
    }
    match kind {
        VirtKind::Svm => svm::execute(cpu, job),
        VirtKind::Vmx => vmx::execute(cpu, job),
        VirtKind::None => match job {
            Job::Enable => Reply::Enable(Err(EnableError::Unsupported)),
            Job::Disable => Reply::Disable(Ok(())),
            Job::EmergencyDisable => Reply::Done,
            Job::IsEnabled => Reply::IsEnabled(false),
            Job::SelfTest => Reply::SelfTest(Err(SelfTestError::Unsupported)),
            Job::Seamcall { .. } => Reply::Seamcall(Err(tdx::seamcall::TdxError::VMFAIL_INVALID)),
        },
    }
}
