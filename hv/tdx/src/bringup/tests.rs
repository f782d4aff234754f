//! Bring-up against the simulated TDX module ([`crate::sim`]) over a real [`VirtLayer`]:
//! per-step tests, every single SEAMCALL failing in turn, and random interleavings of CPU
//! online/offline, KeyID allocation, injected failures and reboot.

extern crate std;
use std::cell::RefCell;
use std::rc::Rc;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::detect::{TdxAbsence, decide};
use crate::sim::{SimModule, SimVmx, Vmx};

const GLOBAL: u32 = 32;
const KEYIDS: KeyIdRange = KeyIdRange {
    first: GLOBAL,
    count: 4,
};
const HV: User = User::Hypervisor;
const TM: User = User::TrustedModule;

struct World {
    virt: VirtLayer<SimVmx>,
    sim: SimModule,
    tdx: Tdx,
    plan: ModulePlan,
    topo: Topology,
    vmx: Vmx,
}

/// CPUs with the given packages, all online with the hypervisor holding VMX, `tdmrs` TDMRs of
/// 2 GiB each initialised 1 GiB per call.
fn world(packages: &[u32], tdmrs: usize) -> World {
    let vmx: Vmx = Rc::new(RefCell::new([false; MAX_CPUS]));
    let topo = Topology::new(packages).unwrap();
    let list: Vec<Tdmr> = (0..tdmrs as u64)
        .map(|i| Tdmr {
            base: (4 * i + 1) << 30,
            size: 2 << 30,
        })
        .collect();
    let plan = ModulePlan::new(0x10_0000, &list).unwrap();
    let mut virt = VirtLayer::new(SimVmx::new(vmx.clone()), packages.len() as u32).unwrap();
    for c in 0..packages.len() as u32 {
        virt.online(CpuId(c)).unwrap();
        virt.get(CpuId(c), HV).unwrap();
    }
    let sim = SimModule::new(vmx.clone(), topo, plan, GLOBAL);
    let tdx = Tdx::new(Decision::BringUp { keyids: KEYIDS }, topo);
    World {
        virt,
        sim,
        tdx,
        plan,
        topo,
        vmx,
    }
}

impl World {
    fn bring_up(&mut self) -> Result<ModuleState, BringupError> {
        self.tdx
            .bring_up(&mut self.virt, &mut self.sim, Some(&self.plan))
    }

    fn tm_refs(&self) -> CpuSet {
        self.virt
            .snapshots()
            .filter(|s| s.users.contains(TM))
            .fold(CpuSet::EMPTY, |set, s| set.with(s.cpu))
    }

    /// Everything that must hold after any operation.
    fn check(&self) {
        assert_eq!(
            self.tdx.check_invariant(&self.virt),
            Ok(()),
            "{:?}",
            self.tdx
        );
        assert_eq!(self.virt.check_invariant(), Ok(()));
        assert!(self.sim.breaches.is_empty(), "{:?}", self.sim.breaches);
        // TDX never takes the hypervisor's hold away.
        for s in self.virt.snapshots() {
            assert!(s.users.contains(HV), "{:?}", s);
        }
        // Bookkeeping matches the shared hardware state.
        for s in self.virt.snapshots() {
            assert_eq!(s.enabled, self.vmx.borrow()[s.cpu.index()], "{s:?}");
        }
        match self.tdx.state() {
            ModuleState::Failed(_) | ModuleState::Off | ModuleState::ShutDown => {
                assert!(self.tm_refs().is_empty());
                assert!(self.tdx.initialized_cpus().is_empty());
            }
            _ => {}
        }
    }
}

#[test]
fn full_bring_up_in_order() {
    let mut w = world(&[0, 0, 1, 1], 2);
    assert_eq!(w.bring_up(), Ok(ModuleState::Ready));
    w.check();
    assert_eq!(w.tdx.initialized_cpus().len(), 4);
    assert_eq!(w.tm_refs().len(), 4);
    let leaves: Vec<Leaf> = w.sim.log.iter().map(|&(_, l)| l).collect();
    use Leaf::*;
    assert_eq!(
        leaves,
        [
            SysInit,
            SysLpInit,
            SysLpInit,
            SysLpInit,
            SysLpInit,
            SysConfig,
            SysKeyConfig,
            SysKeyConfig,
            SysTdmrInit,
            SysTdmrInit,
            SysTdmrInit,
            SysTdmrInit
        ]
    );
    // One KEY.CONFIG per package, on a CPU of that package.
    let keyed: Vec<u32> = w
        .sim
        .log
        .iter()
        .filter(|&&(_, l)| l == SysKeyConfig)
        .map(|&(c, _)| w.topo.package_of(c).unwrap())
        .collect();
    assert_eq!(keyed, [0, 1]);
    // Ready is a fixed point: no more calls.
    let calls = w.sim.calls;
    assert_eq!(w.bring_up(), Ok(ModuleState::Ready));
    assert_eq!(w.sim.calls, calls);
}

#[test]
fn steps_are_explicit() {
    let mut w = world(&[0, 1], 1);
    let mut seen = Vec::new();
    loop {
        let s = w.tdx.step(&mut w.virt, &mut w.sim, Some(&w.plan)).unwrap();
        w.check();
        seen.push(s.as_str());
        if s == ModuleState::Ready {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            "global_init_done",
            "cpus_initialized",
            "configured",
            "keys_configured",
            "ready"
        ]
    );
}

#[test]
fn off_and_unsupported_make_no_calls() {
    for decision in [
        Decision::Off,
        decide(
            crate::TdxRequest::On,
            crate::TdxSupport::Unsupported {
                reason: TdxAbsence::NoSeamrr,
            },
        ),
    ] {
        let mut w = world(&[0, 0], 1);
        w.tdx = Tdx::new(decision, w.topo);
        assert_eq!(w.bring_up(), Ok(ModuleState::Off));
        assert_eq!(w.sim.calls, 0);
        assert!(w.tm_refs().is_empty());
        assert_eq!(w.tdx.on_online(CpuId(1), &mut w.virt, &mut w.sim), Ok(()));
        w.check();
    }
}

#[test]
fn no_module_loaded_disables_tdx_not_the_hypervisor() {
    let mut w = world(&[0, 0, 1], 1);
    w.sim.loaded = false;
    let e = w.bring_up().unwrap_err();
    assert_eq!(e.step, BringupStep::GlobalInit);
    assert_eq!(
        e.cause,
        Cause::Seamcall {
            cpu: CpuId(0),
            leaf: Leaf::SysInit,
            error: TdxError::VMFAIL_INVALID
        }
    );
    assert_eq!(w.sim.calls, 1);
    w.check();
    assert_eq!(w.virt.enabled_cpus().len(), 3, "VMX stays on for guests");
    // Terminal: asking again returns the stored error without calling.
    assert_eq!(w.bring_up(), Err(e));
    assert_eq!(w.sim.calls, 1);
    let line = std::format!("{e}");
    assert!(
        line.contains("global_init") && line.contains("VMfailInvalid"),
        "{line}"
    );
}

#[test]
fn no_plan_fails_at_config() {
    let mut w = world(&[0], 1);
    let e = w.tdx.bring_up(&mut w.virt, &mut w.sim, None).unwrap_err();
    assert_eq!((e.step, e.cause), (BringupStep::Config, Cause::NoPlan));
    w.check();
}

fn clean_calls(packages: &[u32], tdmrs: usize) -> u64 {
    let mut w = world(packages, tdmrs);
    w.bring_up().unwrap();
    w.sim.calls
}

/// The k-th SEAMCALL fails, for every k: invariants hold, the error is reported as data, a
/// failed LP.INIT only leaves its CPU out, anything else disables TDX (and only TDX).
#[test]
fn every_single_call_failing_in_turn() {
    const CODE: u64 = TdxError::OPERAND_INVALID | 0x42;
    for packages in [&[0u32][..], &[0, 0, 1, 1], &[0, 1, 1], &[0, 0, 0, 1, 2, 2]] {
        let n = clean_calls(packages, 2);
        for k in 1..=n {
            let mut w = world(packages, 2);
            w.sim.fail_at = Some((k, CODE));
            let failed_leaf = {
                let mut probe = world(packages, 2);
                probe.bring_up().unwrap();
                probe.sim.log[k as usize - 1]
            };
            let r = w.bring_up();
            w.check();
            assert_eq!(w.sim.calls, w.sim.log.len() as u64);
            let (cpu, leaf) = failed_leaf;
            if leaf == Leaf::SysLpInit {
                // Left out: reported, no reference, not initialised.
                let c = w.tdx.cpu(cpu).unwrap();
                assert_eq!(
                    c.last_error,
                    Some(CpuTdxError::Seamcall {
                        leaf,
                        error: TdxError { code: CODE }
                    }),
                    "k={k}"
                );
                let package = w.topo.package_of(cpu).unwrap();
                let alone = w.topo.cpus_in(package).len() == 1;
                if packages.len() == 1 {
                    let e = r.unwrap_err();
                    assert_eq!(
                        (e.step, e.cause),
                        (BringupStep::CpuInit, Cause::NoUsableCpu)
                    );
                } else if alone {
                    let e = r.unwrap_err();
                    assert_eq!(e.cause, Cause::NoTdxCpuInPackage { package }, "k={k}");
                } else {
                    assert_eq!(r, Ok(ModuleState::Ready), "k={k}");
                    assert!(!c.initialized && !c.holds_ref);
                    assert!(!w.tm_refs().contains(cpu));
                    assert_eq!(w.tdx.initialized_cpus().len() as usize, packages.len() - 1);
                    // The CPU can rejoin: out and back in retries LP.INIT.
                    w.virt.offline(cpu, &w.tdx).unwrap();
                    w.virt.online(cpu).unwrap();
                    assert_eq!(w.tdx.on_online(cpu, &mut w.virt, &mut w.sim), Ok(()));
                    assert!(w.tdx.cpu(cpu).unwrap().initialized);
                    w.check();
                }
            } else {
                let e = r.unwrap_err();
                assert_eq!(
                    e.cause,
                    Cause::Seamcall {
                        cpu,
                        leaf,
                        error: TdxError { code: CODE }
                    },
                    "k={k}"
                );
                assert_eq!(w.tdx.state(), ModuleState::Failed(e));
                assert_eq!(w.sim.calls, k, "no call after a global failure");
                assert_eq!(w.virt.enabled_cpus().len() as usize, packages.len());
            }
        }
    }
}

/// TDX_RND_NO_ENTROPY at any call is retried and bring-up still completes.
#[test]
fn entropy_shortage_at_any_call_is_retried() {
    let packages = [0, 0, 1];
    let n = clean_calls(&packages, 2);
    for k in 1..=n {
        let mut w = world(&packages, 2);
        w.sim.fail_at = Some((k, TdxError::RND_NO_ENTROPY));
        assert_eq!(w.bring_up(), Ok(ModuleState::Ready), "k={k}");
        assert_eq!(w.sim.calls, n + 1);
        w.check();
    }
}

#[test]
fn entropy_retry_is_bounded() {
    let mut w = world(&[0], 1);
    w.sim
        .fail_next
        .extend(core::iter::repeat_n(TdxError::RND_NO_ENTROPY, 64));
    let e = w.bring_up().unwrap_err();
    assert_eq!(e.step, BringupStep::GlobalInit);
    assert_eq!(w.sim.calls, u64::from(SEAMCALL_RETRIES) + 1);
    w.check();
}

#[test]
fn vmx_enable_failure_leaves_the_cpu_out() {
    // CPU 1 has no hypervisor user yet, so TDX's get is its 0->1 enable, which fails.
    let vmx: Vmx = Rc::new(RefCell::new([false; MAX_CPUS]));
    let topo = Topology::new(&[0, 0]).unwrap();
    let plan = ModulePlan::new(
        0x1000,
        &[Tdmr {
            base: 1 << 30,
            size: 1 << 30,
        }],
    )
    .unwrap();
    let mut virt = VirtLayer::new(SimVmx::new(vmx.clone()), 2).unwrap();
    virt.online(CpuId(0)).unwrap();
    virt.online(CpuId(1)).unwrap();
    virt.get(CpuId(0), HV).unwrap();
    virt.backend_mut().fail_enable[1] = true;
    let mut sim = SimModule::new(vmx, topo, plan, GLOBAL);
    let mut tdx = Tdx::new(Decision::BringUp { keyids: KEYIDS }, topo);
    assert_eq!(
        tdx.bring_up(&mut virt, &mut sim, Some(&plan)),
        Ok(ModuleState::Ready)
    );
    let c1 = tdx.cpu(CpuId(1)).unwrap();
    assert!(matches!(
        c1.last_error,
        Some(CpuTdxError::Virt(GetError::Enable(_)))
    ));
    assert!(!c1.holds_ref && !c1.initialized);
    assert!(sim.log.iter().all(|&(c, _)| c == CpuId(0)));
    assert!(sim.breaches.is_empty());
    assert_eq!(tdx.check_invariant(&virt), Ok(()));
}

#[test]
fn tdmr_without_progress_is_an_error_not_a_hang() {
    let mut w = world(&[0], 1);
    w.sim.tdmr_chunk = 0;
    let e = w.bring_up().unwrap_err();
    assert_eq!(
        (e.step, e.cause),
        (
            BringupStep::TdmrInit,
            Cause::TdmrNoProgress {
                base: w.plan.tdmrs()[0].base
            }
        )
    );
    w.check();
}

#[test]
fn offline_veto_keeps_the_last_tdx_cpu_of_a_package_while_keys_are_in_use() {
    let mut w = world(&[0, 0, 1, 1], 1);
    w.bring_up().unwrap();
    // No keys: anything goes (the virt layer still keeps one CPU online).
    w.virt.offline(CpuId(3), &w.tdx).unwrap();
    w.virt.online(CpuId(3)).unwrap();
    w.tdx.on_online(CpuId(3), &mut w.virt, &mut w.sim).unwrap();
    let key = w.tdx.alloc_key(&w.virt).unwrap();
    assert_eq!(key, KeyId(GLOBAL + 1));
    w.virt.offline(CpuId(2), &w.tdx).unwrap();
    assert_eq!(
        w.virt.offline(CpuId(3), &w.tdx),
        Err(hv::virt::OfflineError::Conflict(Conflict::LastInPackage {
            package: 1
        }))
    );
    w.check();
    // Stacks with another veto.
    let pinned = |cpu: CpuId, _: CpuSet| {
        if cpu == CpuId(0) {
            Err(Conflict::Pinned)
        } else {
            Ok(())
        }
    };
    let both: [&dyn OfflineVeto; 2] = [&pinned, &w.tdx];
    assert_eq!(
        w.virt.offline(CpuId(0), &both),
        Err(hv::virt::OfflineError::Conflict(Conflict::Pinned))
    );
    w.virt.offline(CpuId(1), &both).unwrap();
    w.tdx.free_key(key).unwrap();
    // Keys gone: the last TDX CPU of package 1 may go.
    w.virt.offline(CpuId(3), &w.tdx).unwrap();
    w.check();
}

#[test]
fn keys_need_a_tdx_cpu_in_every_package() {
    let mut w = world(&[0, 1, 1], 1);
    w.bring_up().unwrap();
    w.virt.offline(CpuId(0), &w.tdx).unwrap();
    assert_eq!(
        w.tdx.alloc_key(&w.virt),
        Err(KeyError::PackageWithoutTdxCpu { package: 0 })
    );
    w.virt.online(CpuId(0)).unwrap();
    w.tdx.on_online(CpuId(0), &mut w.virt, &mut w.sim).unwrap();
    // KEYIDS.count = 4: one global, three for guests.
    let keys: Vec<KeyId> = (0..3).map(|_| w.tdx.alloc_key(&w.virt).unwrap()).collect();
    assert_eq!(keys, [KeyId(33), KeyId(34), KeyId(35)]);
    assert_eq!(w.tdx.alloc_key(&w.virt), Err(KeyError::Exhausted));
    assert_eq!(w.tdx.free_key(KeyId(GLOBAL)), Err(KeyError::NotAllocated));
    assert_eq!(w.tdx.free_key(KeyId(99)), Err(KeyError::NotAllocated));
    w.tdx.free_key(KeyId(34)).unwrap();
    assert_eq!(w.tdx.free_key(KeyId(34)), Err(KeyError::NotAllocated));
    assert_eq!(w.tdx.alloc_key(&w.virt), Ok(KeyId(34)));
    assert_eq!(w.tdx.keys_in_use(), 3);
    w.check();
}

#[test]
fn shutdown_drops_tdx_refs_before_the_hypervisor_and_ends_tdx() {
    let mut w = world(&[0, 0, 1], 1);
    w.bring_up().unwrap();
    w.tdx.alloc_key(&w.virt).unwrap();
    let report = w.tdx.shutdown(&mut w.virt);
    assert_eq!(report.released.len(), 3);
    assert!(report.release_failed.is_empty());
    // TDX gone, hypervisor still holding VMX everywhere, not yet rebooting.
    assert!(w.tm_refs().is_empty());
    assert_eq!(w.virt.enabled_cpus().len(), 3);
    assert!(!w.virt.is_rebooting());
    assert_eq!(w.tdx.keys_in_use(), 0);
    w.check();
    w.virt.begin_reboot();
    assert!(w.virt.enabled_cpus().is_empty());
    // Nothing calls the module again.
    let calls = w.sim.calls;
    assert_eq!(w.bring_up(), Ok(ModuleState::ShutDown));
    assert_eq!(w.tdx.on_online(CpuId(1), &mut w.virt, &mut w.sim), Ok(()));
    assert_eq!(w.tdx.alloc_key(&w.virt), Err(KeyError::NotReady));
    assert_eq!(w.sim.calls, calls);
    w.check();
}

#[test]
fn plan_and_topology_validation() {
    let g = 1u64 << 30;
    let t = |base, size| Tdmr { base, size };
    assert_eq!(ModulePlan::new(0, &[t(g, g)]), Err(PlanError::BadInfoArray));
    assert_eq!(
        ModulePlan::new(0x1001, &[t(g, g)]),
        Err(PlanError::BadInfoArray)
    );
    assert_eq!(ModulePlan::new(0x1000, &[]), Err(PlanError::NoTdmrs));
    assert_eq!(
        ModulePlan::new(0x1000, &[t(g + 4096, g)]),
        Err(PlanError::BadTdmr { index: 0 })
    );
    assert_eq!(
        ModulePlan::new(0x1000, &[t(g, 0)]),
        Err(PlanError::BadTdmr { index: 0 })
    );
    assert_eq!(
        ModulePlan::new(0x1000, &[t(g, 2 * g), t(2 * g, g)]),
        Err(PlanError::Unordered { index: 1 })
    );
    assert_eq!(
        ModulePlan::new(0x1000, &[t(0, g); MAX_TDMRS + 1]),
        Err(PlanError::TooManyTdmrs)
    );
    assert_eq!(
        ModulePlan::new(0x1000, &[t(0, g), t(g, g)])
            .unwrap()
            .tdmrs()
            .len(),
        2
    );
    assert_eq!(Topology::new(&[]), Err(TopologyError::CpuCount));
    assert_eq!(
        Topology::new(&[0, 64]),
        Err(TopologyError::PackageNumber { cpu: CpuId(1) })
    );
    let topo = Topology::new(&[3, 0, 3]).unwrap();
    assert_eq!(topo.packages().collect::<Vec<_>>(), [0, 3]);
    assert_eq!(topo.cpus_in(3).len(), 2);
    assert_eq!(topo.package_of(CpuId(5)), None);
}

// ---- random interleavings ----

#[derive(Clone, Debug)]
enum Op {
    Online(u32),
    Offline(u32),
    AllocKey,
    FreeKey(u32),
    /// The next SEAMCALL fails with this status.
    FailNext(u64),
    /// The next VMX enable on this CPU fails.
    FailEnable(u32),
    Reboot,
}

fn op(cpus: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..cpus).prop_map(Op::Online),
        4 => (0..cpus).prop_map(Op::Offline),
        3 => Just(Op::AllocKey),
        2 => (0..4u32).prop_map(Op::FreeKey),
        1 => prop_oneof![
            Just(TdxError::OPERAND_INVALID),
            Just(TdxError::RND_NO_ENTROPY),
            Just(TdxError::VMFAIL_INVALID.code)
        ]
        .prop_map(Op::FailNext),
        1 => (0..cpus).prop_map(Op::FailEnable),
        1 => Just(Op::Reboot),
    ]
}

fn scenario() -> impl Strategy<Value = (Vec<u32>, usize, Option<u64>, Vec<Op>)> {
    (1usize..=6)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec(0u32..3, n),
                1usize..=3,
                proptest::option::weighted(0.3, 1u64..20),
            )
        })
        .prop_flat_map(|(packages, tdmrs, fail_at)| {
            let n = packages.len() as u32;
            (
                Just(packages),
                Just(tdmrs),
                Just(fail_at),
                proptest::collection::vec(op(n), 1..60),
            )
        })
}

fn run(packages: &[u32], tdmrs: usize, fail_at: Option<u64>, ops: &[Op]) {
    let mut w = world(packages, tdmrs);
    w.sim.fail_at = fail_at.map(|k| (k, TdxError::OPERAND_INVALID));
    let _ = w.bring_up();
    w.check();
    let mut keys: Vec<KeyId> = Vec::new();
    let mut rebooted = false;
    for op in ops {
        match *op {
            Op::Online(c) => {
                let cpu = CpuId(c);
                if w.virt.online(cpu).is_ok() {
                    let r = w.tdx.on_online(cpu, &mut w.virt, &mut w.sim);
                    if r.is_ok() && w.tdx.state() == ModuleState::Ready {
                        assert!(w.tdx.cpu(cpu).unwrap().initialized);
                    }
                }
            }
            Op::Offline(c) => {
                let cpu = CpuId(c);
                let before = w.virt.online_cpus();
                if let Err(hv::virt::OfflineError::Conflict(Conflict::LastInPackage { package })) =
                    w.virt.offline(cpu, &w.tdx)
                {
                    // Only refused for a real reason.
                    assert!(w.tdx.keys_in_use() > 0);
                    assert_eq!(w.topo.package_of(cpu), Some(package));
                    let others = w
                        .topo
                        .cpus_in(package)
                        .iter()
                        .filter(|&o| {
                            o != cpu && before.contains(o) && w.tdx.cpu(o).unwrap().initialized
                        })
                        .count();
                    assert_eq!(others, 0);
                }
            }
            Op::AllocKey => {
                if let Ok(k) = w.tdx.alloc_key(&w.virt) {
                    assert!(!keys.contains(&k));
                    keys.push(k);
                }
            }
            Op::FreeKey(i) => {
                if (i as usize) < keys.len() {
                    let k = keys.remove(i as usize);
                    w.tdx.free_key(k).unwrap();
                }
            }
            Op::FailNext(code) => w.sim.fail_next.push_back(code),
            Op::FailEnable(c) => w.virt.backend_mut().fail_enable[c as usize] = true,
            Op::Reboot => {
                if !rebooted {
                    w.tdx.shutdown(&mut w.virt);
                    // TDX's references are gone before the hypervisor's go.
                    assert!(w.tm_refs().is_empty());
                    assert!(!w.virt.is_rebooting());
                    w.check();
                    w.virt.begin_reboot();
                    keys.clear();
                    rebooted = true;
                }
                assert_eq!(w.tdx.state(), ModuleState::ShutDown);
                assert!(w.tdx.initialized_cpus().is_empty());
                assert!(w.virt.enabled_cpus().is_empty());
            }
        }
        w.check();
        assert_eq!(w.tdx.keys_in_use() as usize, keys.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_the_invariants((packages, tdmrs, fail_at, ops) in scenario()) {
        run(&packages, tdmrs, fail_at, &ops);
    }
}
