//! A simulated TDX module and VMX backend for host tests.
//!
//! The module enforces the rules the real one does that matter for sequencing (TDX Module Base
//! Spec, per leaf): SEAMCALL only in VMX root operation (#UD otherwise), TDH.SYS.INIT once and
//! first, TDH.SYS.LP.INIT once per CPU and before any other leaf there, TDH.SYS.CONFIG once
//! with the global KeyID, TDH.SYS.KEY.CONFIG once per package after CONFIG, TDH.SYS.TDMR.INIT
//! only after every package's key, piecewise. A breach is recorded (the test fails on it); an
//! injected failure makes the k-th call (or the next calls) return a chosen status with no
//! effect.

extern crate std;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::format;
use std::rc::Rc;
use std::string::String;
use std::vec::Vec;

use hv::virt::{Backend, CpuId, DisableError, EnableError, MAX_CPUS};

use crate::bringup::{ModulePlan, Topology};
use crate::seamcall::{Leaf, Regs, Seamcall, TdxError};

/// Per-CPU VMX state shared by the backend and the module.
pub type Vmx = Rc<RefCell<[bool; MAX_CPUS]>>;

/// A VMX backend that records the hardware state in the shared [`Vmx`] and can fail the next
/// enable of a CPU.
#[derive(Debug)]
pub struct SimVmx {
    pub vmx: Vmx,
    pub fail_enable: [bool; MAX_CPUS],
}

impl SimVmx {
    pub fn new(vmx: Vmx) -> Self {
        SimVmx {
            vmx,
            fail_enable: [false; MAX_CPUS],
        }
    }
}

impl Backend for SimVmx {
    fn enable(&mut self, cpu: CpuId) -> Result<(), EnableError> {
        if std::mem::take(&mut self.fail_enable[cpu.index()]) {
            return Err(EnableError::Failed { code: 7 });
        }
        self.vmx.borrow_mut()[cpu.index()] = true;
        Ok(())
    }

    fn disable(&mut self, cpu: CpuId) -> Result<(), DisableError> {
        self.vmx.borrow_mut()[cpu.index()] = false;
        Ok(())
    }

    fn is_enabled_hw(&self, cpu: CpuId) -> bool {
        self.vmx.borrow()[cpu.index()]
    }

    fn emergency_disable(&mut self, cpu: CpuId) {
        self.vmx.borrow_mut()[cpu.index()] = false;
    }
}

/// The simulated module.
#[derive(Debug)]
pub struct SimModule {
    vmx: Vmx,
    topology: Topology,
    plan: ModulePlan,
    global_keyid: u64,
    /// No module in the SEAM range: every call is VMfailInvalid.
    pub loaded: bool,
    /// Bytes a TDH.SYS.TDMR.INIT call initialises.
    pub tdmr_chunk: u64,
    sys_init: bool,
    lp_init: [bool; MAX_CPUS],
    configured: bool,
    keyed: u64,
    tdmr_done: Vec<u64>,
    /// Calls made so far (retries included).
    pub calls: u64,
    /// Fail call number `k` (1-based) with `code`.
    pub fail_at: Option<(u64, u64)>,
    /// Statuses the next calls return, in order.
    pub fail_next: VecDeque<u64>,
    /// Protocol breaches by the caller.
    pub breaches: Vec<String>,
    /// Every call, in order.
    pub log: Vec<(CpuId, Leaf)>,
}

impl SimModule {
    pub fn new(vmx: Vmx, topology: Topology, plan: ModulePlan, global_keyid: u32) -> Self {
        SimModule {
            vmx,
            topology,
            plan,
            global_keyid: u64::from(global_keyid),
            loaded: true,
            tdmr_chunk: 1 << 30,
            sys_init: false,
            lp_init: [false; MAX_CPUS],
            configured: false,
            keyed: 0,
            tdmr_done: plan.tdmrs().iter().map(|t| t.base).collect(),
            calls: 0,
            fail_at: None,
            fail_next: VecDeque::new(),
            breaches: Vec::new(),
            log: Vec::new(),
        }
    }

    fn breach(&mut self, what: String) -> Result<Regs, TdxError> {
        self.breaches.push(what);
        Err(TdxError {
            code: TdxError::OPERAND_INVALID,
        })
    }

    fn all_keyed(&self) -> bool {
        self.topology.packages().all(|p| self.keyed & (1 << p) != 0)
    }
}

impl Seamcall for SimModule {
    fn seamcall(&mut self, cpu: CpuId, leaf: Leaf, args: Regs) -> Result<Regs, TdxError> {
        self.calls += 1;
        self.log.push((cpu, leaf));
        if !self.vmx.borrow()[cpu.index()] {
            return self.breach(format!("#UD: {leaf} on {cpu} outside VMX root operation"));
        }
        if let Some((_, code)) = self.fail_at.filter(|&(k, _)| k == self.calls) {
            return Err(TdxError { code });
        }
        if let Some(code) = self.fail_next.pop_front() {
            return Err(TdxError { code });
        }
        if !self.loaded {
            return Err(TdxError::VMFAIL_INVALID);
        }
        let i = cpu.index();
        match leaf {
            Leaf::SysInit => {
                if self.sys_init {
                    return self.breach(format!("second {leaf}"));
                }
                self.sys_init = true;
            }
            Leaf::SysLpInit => {
                if !self.sys_init {
                    return self.breach(format!("{leaf} before TDH.SYS.INIT"));
                }
                if self.lp_init[i] {
                    return self.breach(format!("second {leaf} on {cpu}"));
                }
                self.lp_init[i] = true;
            }
            _ if !self.lp_init[i] => {
                return self.breach(format!("{leaf} on {cpu} before TDH.SYS.LP.INIT"));
            }
            Leaf::SysConfig => {
                if self.configured {
                    return self.breach(format!("second {leaf}"));
                }
                let want = (
                    self.plan.info_array_pa(),
                    self.plan.tdmrs().len() as u64,
                    self.global_keyid,
                );
                if (args.rcx, args.rdx, args.r8) != want {
                    return self.breach(format!("{leaf} with {args:?}, want {want:?}"));
                }
                self.configured = true;
            }
            Leaf::SysKeyConfig => {
                let p = self.topology.package_of(cpu).unwrap();
                if !self.configured {
                    return self.breach(format!("{leaf} before TDH.SYS.CONFIG"));
                }
                if self.keyed & (1 << p) != 0 {
                    return self.breach(format!("second {leaf} on package {p}"));
                }
                self.keyed |= 1 << p;
            }
            Leaf::SysTdmrInit => {
                if !self.all_keyed() {
                    return self.breach(format!("{leaf} before every package's key"));
                }
                let Some(n) = self.plan.tdmrs().iter().position(|t| t.base == args.rcx) else {
                    return self.breach(format!("{leaf} of unknown TDMR {:#x}", args.rcx));
                };
                let end = self.plan.tdmrs()[n].end();
                if self.tdmr_done[n] >= end {
                    return self.breach(format!("{leaf} of finished TDMR {:#x}", args.rcx));
                }
                self.tdmr_done[n] = (self.tdmr_done[n] + self.tdmr_chunk).min(end);
                return Ok(Regs {
                    rdx: self.tdmr_done[n],
                    ..Regs::default()
                });
            }
            other => return self.breach(format!("unexpected {other}")),
        }
        Ok(Regs::default())
    }
}
