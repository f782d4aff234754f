//! Unit tests per transition, and property tests over random event sequences, against a fake
//! backend that records the real per-CPU hardware state and every call.

use super::*;
use proptest::prelude::*;

/// What the fake "hardware" of one CPU is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hw {
    Off,
    /// Turned on through the backend, i.e. by the layer.
    Ours,
    /// Turned on behind the layer's back (firmware, another hypervisor).
    Foreign,
}

/// Recording fake: tracks hardware per CPU, counts calls, injects one-shot failures, and notes
/// every contract breach by the layer (enable of a CPU that is on, disable of one it did not
/// enable).
#[derive(Debug)]
struct Fake {
    hw: [Hw; MAX_CPUS],
    fail_enable: [Option<EnableError>; MAX_CPUS],
    fail_disable: [Option<DisableError>; MAX_CPUS],
    enables: [u32; MAX_CPUS],
    disables: [u32; MAX_CPUS],
    emergencies: [u32; MAX_CPUS],
    breaches: Vec<String>,
}

impl Fake {
    fn new() -> Self {
        Fake {
            hw: [Hw::Off; MAX_CPUS],
            fail_enable: [None; MAX_CPUS],
            fail_disable: [None; MAX_CPUS],
            enables: [0; MAX_CPUS],
            disables: [0; MAX_CPUS],
            emergencies: [0; MAX_CPUS],
            breaches: Vec::new(),
        }
    }

    /// Something else turns virtualization on (only possible while it is off).
    fn foreign_on(&mut self, cpu: CpuId) {
        if self.hw[cpu.index()] == Hw::Off {
            self.hw[cpu.index()] = Hw::Foreign;
        }
    }

    /// That something else turns it off again.
    fn foreign_off(&mut self, cpu: CpuId) {
        if self.hw[cpu.index()] == Hw::Foreign {
            self.hw[cpu.index()] = Hw::Off;
        }
    }
}

impl Backend for Fake {
    fn enable(&mut self, cpu: CpuId) -> Result<(), EnableError> {
        let i = cpu.index();
        self.enables[i] += 1;
        if self.hw[i] != Hw::Off {
            self.breaches
                .push(format!("enable of {cpu} while {:?}", self.hw[i]));
            return Err(EnableError::Busy);
        }
        if let Some(e) = self.fail_enable[i].take() {
            return Err(e);
        }
        self.hw[i] = Hw::Ours;
        Ok(())
    }

    fn disable(&mut self, cpu: CpuId) -> Result<(), DisableError> {
        let i = cpu.index();
        self.disables[i] += 1;
        if self.hw[i] != Hw::Ours {
            self.breaches
                .push(format!("disable of {cpu} while {:?}", self.hw[i]));
        }
        if let Some(e) = self.fail_disable[i].take() {
            return Err(e);
        }
        self.hw[i] = Hw::Off;
        Ok(())
    }

    fn is_enabled_hw(&self, cpu: CpuId) -> bool {
        self.hw[cpu.index()] != Hw::Off
    }

    fn emergency_disable(&mut self, cpu: CpuId) {
        self.emergencies[cpu.index()] += 1;
        self.hw[cpu.index()] = Hw::Off;
    }
}

const C0: CpuId = CpuId(0);
const C1: CpuId = CpuId(1);
const C2: CpuId = CpuId(2);
const HV: User = User::Hypervisor;
const TM: User = User::TrustedModule;

fn layer(n: u32) -> VirtLayer<Fake> {
    VirtLayer::new(Fake::new(), n).unwrap()
}

/// A layer with every CPU online.
fn online_layer(n: u32) -> VirtLayer<Fake> {
    let mut l = layer(n);
    for c in 0..n {
        l.online(CpuId(c)).unwrap();
    }
    l
}

fn snap(l: &VirtLayer<Fake>, cpu: CpuId) -> CpuSnapshot {
    l.snapshot(cpu).unwrap()
}

fn hw(l: &VirtLayer<Fake>, cpu: CpuId) -> Hw {
    l.backend().hw[cpu.index()]
}

/// Everything the property test checks after each step, also used by unit tests.
fn check_consistent(l: &VirtLayer<Fake>) {
    let f = l.backend();
    assert_eq!(f.breaches, Vec::<String>::new());
    assert_eq!(l.check_invariant(), Ok(()));
    for s in l.snapshots() {
        let should = !s.users.is_empty() && s.online && !l.is_rebooting();
        assert_eq!(s.enabled, should, "{s:?}");
        // Hardware is ours exactly when the bookkeeping says enabled; foreign only when not.
        match f.hw[s.cpu.index()] {
            Hw::Ours => assert!(s.enabled, "{s:?} hw ours"),
            Hw::Off | Hw::Foreign => assert!(!s.enabled, "{s:?} hw {:?}", f.hw[s.cpu.index()]),
        }
    }
    if l.is_rebooting() {
        assert!(l.enabled_cpus().is_empty());
    }
}

// ---- construction, sets ----------------------------------------------------------------------

#[test]
fn new_bounds() {
    assert_eq!(
        VirtLayer::new(Fake::new(), 0).unwrap_err(),
        NewError::NoCpus
    );
    assert_eq!(
        VirtLayer::new(Fake::new(), 65).unwrap_err(),
        NewError::TooManyCpus { max: 64 }
    );
    let l = layer(64);
    assert_eq!(l.cpu_count(), 64);
    assert!(l.online_cpus().is_empty() && l.enabled_cpus().is_empty() && !l.is_rebooting());
    assert_eq!(l.snapshots().count(), 64);
    assert!(l.snapshot(CpuId(64)).is_none());
    check_consistent(&l);
}

#[test]
fn sets() {
    let s = CpuSet::EMPTY.with(C0).with(CpuId(63)).with(CpuId(64));
    assert_eq!(s.len(), 2);
    assert!(s.contains(CpuId(63)) && !s.contains(CpuId(64)) && !s.contains(C1));
    assert_eq!(s.iter().collect::<Vec<_>>(), vec![C0, CpuId(63)]);
    assert_eq!(s.without(C0).without(CpuId(63)), CpuSet::EMPTY);
    let u = UserSet::EMPTY.with(TM);
    assert_eq!(u.iter().collect::<Vec<_>>(), vec![TM]);
    assert_eq!(u.with(HV).len(), 2);
    assert!(u.without(TM).is_empty());
}

#[test]
fn unknown_cpu_is_refused_everywhere() {
    let mut l = online_layer(2);
    assert_eq!(l.get(C2, HV), Err(GetError::NoSuchCpu));
    assert_eq!(l.put(C2, HV), Err(PutError::NoSuchCpu));
    assert_eq!(l.online(C2), Err(OnlineError::NoSuchCpu));
    assert_eq!(l.offline(C2, &NoVeto), Err(OfflineError::NoSuchCpu));
    assert_eq!(l.get(CpuId(1000), HV), Err(GetError::NoSuchCpu));
    check_consistent(&l);
}

// ---- get / put -------------------------------------------------------------------------------

#[test]
fn first_get_enables_last_put_disables() {
    let mut l = online_layer(2);
    l.get(C0, HV).unwrap();
    assert_eq!(hw(&l, C0), Hw::Ours);
    assert_eq!(hw(&l, C1), Hw::Off);
    l.get(C0, TM).unwrap();
    assert_eq!(
        l.backend().enables[0],
        1,
        "second user does not enable again"
    );
    assert_eq!(snap(&l, C0).users.len(), 2);
    l.put(C0, HV).unwrap();
    assert_eq!(hw(&l, C0), Hw::Ours, "still held by the other user");
    assert_eq!(l.backend().disables[0], 0);
    l.put(C0, TM).unwrap();
    assert_eq!(hw(&l, C0), Hw::Off);
    assert_eq!(l.backend().disables[0], 1);
    let s = snap(&l, C0);
    assert!(s.users.is_empty() && !s.enabled && s.online && s.last_error.is_none());
    check_consistent(&l);
}

#[test]
fn double_get_and_unheld_put_are_refused() {
    let mut l = online_layer(1);
    assert_eq!(l.put(C0, HV), Err(PutError::NotHeld));
    l.get(C0, HV).unwrap();
    assert_eq!(l.get(C0, HV), Err(GetError::AlreadyHeld));
    assert_eq!(l.put(C0, TM), Err(PutError::NotHeld));
    assert_eq!(l.backend().enables[0], 1);
    check_consistent(&l);
}

#[test]
fn get_on_offline_cpu_is_bookkeeping_only() {
    let mut l = layer(2);
    l.get(C0, HV).unwrap();
    assert_eq!(hw(&l, C0), Hw::Off);
    assert_eq!(l.backend().enables[0], 0);
    assert_eq!(snap(&l, C0).users, UserSet::EMPTY.with(HV));
    l.put(C0, HV).unwrap();
    assert_eq!(l.backend().disables[0], 0);
    check_consistent(&l);
}

#[test]
fn failed_get_rolls_back() {
    for err in [
        EnableError::Unsupported,
        EnableError::Disabled,
        EnableError::Failed { code: 7 },
    ] {
        let mut l = online_layer(1);
        l.backend_mut().fail_enable[0] = Some(err);
        assert_eq!(l.get(C0, HV), Err(GetError::Enable(err)));
        let s = snap(&l, C0);
        assert!(s.users.is_empty() && !s.enabled && s.online);
        assert_eq!(s.last_error, Some(CpuError::Enable(err)));
        assert_eq!(hw(&l, C0), Hw::Off);
        check_consistent(&l);
        // A retry succeeds and clears the error.
        l.get(C0, HV).unwrap();
        assert_eq!(snap(&l, C0).last_error, None);
        assert_eq!(hw(&l, C0), Hw::Ours);
        check_consistent(&l);
    }
}

#[test]
fn foreign_enable_is_busy_and_never_touched() {
    let mut l = online_layer(1);
    l.backend_mut().foreign_on(C0);
    assert_eq!(l.get(C0, HV), Err(GetError::Enable(EnableError::Busy)));
    assert_eq!(
        l.backend().enables[0],
        0,
        "refused on read-back, enable not even tried"
    );
    assert_eq!(
        snap(&l, C0).last_error,
        Some(CpuError::Enable(EnableError::Busy))
    );
    assert_eq!(hw(&l, C0), Hw::Foreign);
    check_consistent(&l);
    l.backend_mut().foreign_off(C0);
    l.get(C0, HV).unwrap();
    assert_eq!(hw(&l, C0), Hw::Ours);
    check_consistent(&l);
}

#[test]
fn failed_put_keeps_user_and_can_retry() {
    let mut l = online_layer(1);
    l.get(C0, HV).unwrap();
    l.backend_mut().fail_disable[0] = Some(DisableError::Failed { code: 3 });
    assert_eq!(
        l.put(C0, HV),
        Err(PutError::Disable(DisableError::Failed { code: 3 }))
    );
    let s = snap(&l, C0);
    assert!(s.users.contains(HV) && s.enabled);
    assert_eq!(
        s.last_error,
        Some(CpuError::Disable(DisableError::Failed { code: 3 }))
    );
    assert_eq!(hw(&l, C0), Hw::Ours);
    check_consistent(&l);
    l.put(C0, HV).unwrap();
    assert_eq!(hw(&l, C0), Hw::Off);
    assert_eq!(snap(&l, C0).last_error, None);
    check_consistent(&l);
}

// ---- online / offline ------------------------------------------------------------------------

#[test]
fn online_enables_when_there_are_users() {
    let mut l = layer(2);
    l.online(C1).unwrap();
    assert_eq!(l.backend().enables[0], 0, "no users, nothing to enable");
    l.get(C0, HV).unwrap();
    l.online(C0).unwrap();
    assert_eq!(hw(&l, C0), Hw::Ours);
    assert_eq!(l.online(C0), Err(OnlineError::AlreadyOnline));
    assert_eq!(l.online_cpus(), CpuSet::EMPTY.with(C0).with(C1));
    assert_eq!(l.enabled_cpus(), CpuSet::EMPTY.with(C0));
    check_consistent(&l);
}

#[test]
fn failed_online_stays_offline() {
    let mut l = layer(1);
    l.get(C0, HV).unwrap();
    l.backend_mut().fail_enable[0] = Some(EnableError::Disabled);
    assert_eq!(
        l.online(C0),
        Err(OnlineError::Enable(EnableError::Disabled))
    );
    let s = snap(&l, C0);
    assert!(!s.online && !s.enabled && s.users.contains(HV));
    assert_eq!(s.last_error, Some(CpuError::Enable(EnableError::Disabled)));
    check_consistent(&l);
    l.backend_mut().foreign_on(C0);
    assert_eq!(l.online(C0), Err(OnlineError::Enable(EnableError::Busy)));
    assert_eq!(hw(&l, C0), Hw::Foreign);
    check_consistent(&l);
}

#[test]
fn offline_disables_and_keeps_users() {
    let mut l = online_layer(2);
    l.get(C0, HV).unwrap();
    l.get(C0, TM).unwrap();
    l.offline(C0, &NoVeto).unwrap();
    assert_eq!(hw(&l, C0), Hw::Off);
    assert_eq!(l.backend().disables[0], 1);
    assert_eq!(snap(&l, C0).users.len(), 2);
    assert_eq!(l.offline(C0, &NoVeto), Err(OfflineError::AlreadyOffline));
    check_consistent(&l);
    l.put(C0, TM).unwrap();
    assert_eq!(
        l.backend().disables[0],
        1,
        "offline CPU is not disabled twice"
    );
    l.online(C0).unwrap();
    assert_eq!(hw(&l, C0), Hw::Ours, "the remaining user gets it back");
    assert_eq!(l.backend().enables[0], 2);
    check_consistent(&l);
}

#[test]
fn offline_without_users_touches_nothing() {
    let mut l = online_layer(2);
    l.offline(C1, &NoVeto).unwrap();
    assert_eq!(l.backend().disables[1], 0);
    check_consistent(&l);
}

#[test]
fn last_online_cpu_cannot_go_offline() {
    let mut l = online_layer(2);
    l.offline(C0, &NoVeto).unwrap();
    assert_eq!(l.offline(C1, &NoVeto), Err(OfflineError::LastOnlineCpu));
    assert!(snap(&l, C1).online);
    let mut one = online_layer(1);
    assert_eq!(one.offline(C0, &NoVeto), Err(OfflineError::LastOnlineCpu));
    check_consistent(&l);
}

#[test]
fn veto_refuses_and_sees_remaining_cpus() {
    let mut l = online_layer(3);
    l.get(C0, HV).unwrap();
    let pinned = |cpu: CpuId, _: CpuSet| {
        if cpu == C0 {
            Err(Conflict::Pinned)
        } else {
            Ok(())
        }
    };
    assert_eq!(
        l.offline(C0, &pinned),
        Err(OfflineError::Conflict(Conflict::Pinned))
    );
    assert_eq!(hw(&l, C0), Hw::Ours);
    assert!(snap(&l, C0).online);
    assert_eq!(l.backend().disables[0], 0);

    // TDX-style rule: CPUs 1 and 2 form package 1, whose key IDs are in use.
    let package_of = |c: CpuId| if c == C0 { 0 } else { 1 };
    let last_in_package = |cpu: CpuId, remaining: CpuSet| {
        let p = package_of(cpu);
        if p == 1 && !remaining.iter().any(|c| package_of(c) == p) {
            Err(Conflict::LastInPackage { package: p })
        } else {
            Ok(())
        }
    };
    let both: [&dyn OfflineVeto; 2] = [&pinned, &last_in_package];
    l.offline(C1, &both).unwrap();
    assert_eq!(
        l.offline(C2, &both),
        Err(OfflineError::Conflict(Conflict::LastInPackage {
            package: 1
        }))
    );
    assert_eq!(
        l.offline(C0, &both),
        Err(OfflineError::Conflict(Conflict::Pinned))
    );
    check_consistent(&l);
}

#[test]
fn last_online_check_comes_before_veto() {
    let mut l = online_layer(1);
    let never = |_: CpuId, _: CpuSet| -> Result<(), Conflict> { panic!("veto consulted") };
    assert_eq!(l.offline(C0, &never), Err(OfflineError::LastOnlineCpu));
}

#[test]
fn failed_offline_stays_online() {
    let mut l = online_layer(2);
    l.get(C0, HV).unwrap();
    l.backend_mut().fail_disable[0] = Some(DisableError::Fault);
    assert_eq!(
        l.offline(C0, &NoVeto),
        Err(OfflineError::Disable(DisableError::Fault))
    );
    let s = snap(&l, C0);
    assert!(s.online && s.enabled);
    assert_eq!(hw(&l, C0), Hw::Ours);
    check_consistent(&l);
    l.offline(C0, &NoVeto).unwrap();
    assert_eq!(hw(&l, C0), Hw::Off);
    check_consistent(&l);
}

// ---- reboot / emergency ----------------------------------------------------------------------

#[test]
fn reboot_disables_everything_and_refuses_additions() {
    let mut l = online_layer(3);
    l.get(C0, HV).unwrap();
    l.get(C1, HV).unwrap();
    l.get(C1, TM).unwrap();
    assert_eq!(l.begin_reboot(), CpuSet::EMPTY);
    assert!(l.is_rebooting());
    assert_eq!([hw(&l, C0), hw(&l, C1), hw(&l, C2)], [Hw::Off; 3]);
    assert_eq!(l.backend().disables[..3], [1, 1, 0]);
    check_consistent(&l);

    assert_eq!(l.get(C2, HV), Err(GetError::Rebooting));
    assert_eq!(l.online(C2), Err(OnlineError::AlreadyOnline));
    l.offline(C2, &NoVeto).unwrap();
    assert_eq!(l.online(C2), Err(OnlineError::Rebooting));
    // Removals are accepted and touch no hardware.
    l.put(C1, TM).unwrap();
    l.put(C1, HV).unwrap();
    l.offline(C0, &NoVeto).unwrap();
    assert_eq!(l.backend().disables[..3], [1, 1, 0]);
    assert_eq!(l.backend().enables[..3], [1, 1, 0]);
    // Idempotent.
    assert_eq!(l.begin_reboot(), CpuSet::EMPTY);
    check_consistent(&l);
}

#[test]
fn reboot_tolerates_disable_faults() {
    let mut l = online_layer(2);
    l.get(C0, HV).unwrap();
    l.get(C1, HV).unwrap();
    l.backend_mut().fail_disable[1] = Some(DisableError::Fault);
    assert_eq!(l.begin_reboot(), CpuSet::EMPTY.with(C1));
    assert_eq!(hw(&l, C1), Hw::Off, "forced off by the emergency path");
    assert_eq!(l.backend().emergencies[..2], [0, 1]);
    assert_eq!(
        snap(&l, C1).last_error,
        Some(CpuError::Disable(DisableError::Fault))
    );
    check_consistent(&l);
}

#[test]
fn emergency_disable_all_reaches_every_cpu() {
    let mut l = online_layer(3);
    l.get(C0, HV).unwrap();
    l.offline(C2, &NoVeto).unwrap();
    l.backend_mut().foreign_on(C1);
    l.emergency_disable_all();
    assert!(l.is_rebooting());
    assert_eq!(
        l.backend().emergencies[..4],
        [1, 1, 1, 0],
        "every present CPU, only those"
    );
    assert_eq!([hw(&l, C0), hw(&l, C1), hw(&l, C2)], [Hw::Off; 3]);
    assert_eq!(
        l.backend().disables[0],
        0,
        "no orderly disable in the crash path"
    );
    assert!(
        snap(&l, C0).users.contains(HV),
        "bookkeeping kept for the record"
    );
    check_consistent(&l);
    l.emergency_disable_all();
    assert_eq!(l.get(C1, HV), Err(GetError::Rebooting));
    check_consistent(&l);
}

#[test]
fn debug_output_is_bounded_to_present_cpus() {
    let l = layer(2);
    let s = format!("{l:?}");
    assert!(s.contains("cpu_count: 2"), "{s}");
}

// ---- property tests --------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Op {
    Get(u32, User),
    Put(u32, User),
    Online(u32),
    Offline(u32, bool),
    FailNextEnable(u32, EnableError),
    FailNextDisable(u32, DisableError),
    ForeignOn(u32),
    ForeignOff(u32),
    Reboot,
    Emergency,
}

fn user() -> impl Strategy<Value = User> {
    prop_oneof![Just(User::Hypervisor), Just(User::TrustedModule)]
}

fn enable_error() -> impl Strategy<Value = EnableError> {
    prop_oneof![
        Just(EnableError::Unsupported),
        Just(EnableError::Disabled),
        any::<u32>().prop_map(|code| EnableError::Failed { code }),
    ]
}

fn disable_error() -> impl Strategy<Value = DisableError> {
    prop_oneof![
        Just(DisableError::Fault),
        any::<u32>().prop_map(|code| DisableError::Failed { code })
    ]
}

/// CPU numbers include one past the end, to exercise `NoSuchCpu`.
fn op(cpus: u32) -> impl Strategy<Value = Op> {
    let c = 0..=cpus;
    prop_oneof![
        12 => (c.clone(), user()).prop_map(|(c, u)| Op::Get(c, u)),
        10 => (c.clone(), user()).prop_map(|(c, u)| Op::Put(c, u)),
        8 => c.clone().prop_map(Op::Online),
        8 => (c.clone(), any::<bool>()).prop_map(|(c, v)| Op::Offline(c, v)),
        3 => (c.clone(), enable_error()).prop_map(|(c, e)| Op::FailNextEnable(c, e)),
        3 => (c.clone(), disable_error()).prop_map(|(c, e)| Op::FailNextDisable(c, e)),
        2 => c.clone().prop_map(Op::ForeignOn),
        2 => c.prop_map(Op::ForeignOff),
        1 => Just(Op::Reboot),
        1 => Just(Op::Emergency),
    ]
}

fn scenario() -> impl Strategy<Value = (u32, Vec<Op>)> {
    (1u32..=5).prop_flat_map(|n| (Just(n), proptest::collection::vec(op(n), 1..80)))
}

/// The layer's bookkeeping as an independent model predicts it, from results alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Model {
    online: bool,
    users: UserSet,
}

fn run(cpus: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut l = layer(cpus);
    let mut model = vec![
        Model {
            online: false,
            users: UserSet::EMPTY
        };
        cpus as usize
    ];
    let mut rebooting = false;
    // The veto used for `Offline(_, true)`: CPU 0 serves the endpoint.
    let pinned0 = |cpu: CpuId, _: CpuSet| {
        if cpu == C0 {
            Err(Conflict::Pinned)
        } else {
            Ok(())
        }
    };

    for &op in ops {
        let before: Vec<CpuSnapshot> = l.snapshots().collect();
        let hw_before: Vec<Hw> = (0..cpus).map(|c| hw(&l, CpuId(c))).collect();
        let calls_before = (l.backend().enables, l.backend().disables);
        let valid = |c: u32| c < cpus;

        match op {
            Op::Get(c, u) => {
                let r = l.get(CpuId(c), u);
                if !valid(c) {
                    prop_assert_eq!(r, Err(GetError::NoSuchCpu));
                    continue;
                }
                let m = &mut model[c as usize];
                let transition = m.online && m.users.is_empty();
                match r {
                    Ok(()) => {
                        prop_assert!(!m.users.contains(u) && !rebooting);
                        m.users = m.users.with(u);
                    }
                    Err(GetError::AlreadyHeld) => prop_assert!(m.users.contains(u)),
                    Err(GetError::Rebooting) => prop_assert!(rebooting),
                    Err(GetError::Enable(e)) => {
                        prop_assert!(transition);
                        prop_assert_eq!(
                            e == EnableError::Busy,
                            hw_before[c as usize] == Hw::Foreign
                        );
                    }
                    Err(GetError::NoSuchCpu) => prop_assert!(false, "valid cpu"),
                }
                // A foreign enabler is always refused, never adopted.
                if transition
                    && !rebooting
                    && !before[c as usize].users.contains(u)
                    && hw_before[c as usize] == Hw::Foreign
                {
                    prop_assert_eq!(r, Err(GetError::Enable(EnableError::Busy)));
                }
            }
            Op::Put(c, u) => {
                let r = l.put(CpuId(c), u);
                if !valid(c) {
                    prop_assert_eq!(r, Err(PutError::NoSuchCpu));
                    continue;
                }
                let m = &mut model[c as usize];
                match r {
                    Ok(()) => {
                        prop_assert!(m.users.contains(u));
                        m.users = m.users.without(u);
                    }
                    Err(PutError::NotHeld) => prop_assert!(!m.users.contains(u)),
                    Err(PutError::Disable(_)) => {
                        prop_assert!(!rebooting && m.online && m.users == UserSet::EMPTY.with(u))
                    }
                    Err(PutError::NoSuchCpu) => prop_assert!(false, "valid cpu"),
                }
            }
            Op::Online(c) => {
                let r = l.online(CpuId(c));
                if !valid(c) {
                    prop_assert_eq!(r, Err(OnlineError::NoSuchCpu));
                    continue;
                }
                let m = &mut model[c as usize];
                match r {
                    Ok(()) => {
                        prop_assert!(!m.online && !rebooting);
                        m.online = true;
                    }
                    Err(OnlineError::AlreadyOnline) => prop_assert!(m.online),
                    Err(OnlineError::Rebooting) => prop_assert!(rebooting && !m.online),
                    Err(OnlineError::Enable(e)) => {
                        prop_assert!(!m.users.is_empty());
                        prop_assert_eq!(
                            e == EnableError::Busy,
                            hw_before[c as usize] == Hw::Foreign
                        );
                    }
                    Err(OnlineError::NoSuchCpu) => prop_assert!(false, "valid cpu"),
                }
            }
            Op::Offline(c, veto) => {
                let r = if veto {
                    l.offline(CpuId(c), &pinned0)
                } else {
                    l.offline(CpuId(c), &NoVeto)
                };
                if !valid(c) {
                    prop_assert_eq!(r, Err(OfflineError::NoSuchCpu));
                    continue;
                }
                let others_online = model
                    .iter()
                    .enumerate()
                    .any(|(i, m)| i != c as usize && m.online);
                let m = &mut model[c as usize];
                match r {
                    Ok(()) => {
                        prop_assert!(m.online && others_online && !(veto && c == 0));
                        m.online = false;
                    }
                    Err(OfflineError::AlreadyOffline) => prop_assert!(!m.online),
                    Err(OfflineError::LastOnlineCpu) => prop_assert!(m.online && !others_online),
                    Err(OfflineError::Conflict(k)) => {
                        prop_assert!(veto && c == 0 && others_online);
                        prop_assert_eq!(k, Conflict::Pinned);
                    }
                    Err(OfflineError::Disable(_)) => {
                        prop_assert!(!rebooting && !m.users.is_empty())
                    }
                    Err(OfflineError::NoSuchCpu) => prop_assert!(false, "valid cpu"),
                }
            }
            Op::FailNextEnable(c, e) => {
                if valid(c) {
                    l.backend_mut().fail_enable[c as usize] = Some(e);
                }
            }
            Op::FailNextDisable(c, e) => {
                if valid(c) {
                    l.backend_mut().fail_disable[c as usize] = Some(e);
                }
            }
            Op::ForeignOn(c) => {
                if valid(c) {
                    l.backend_mut().foreign_on(CpuId(c));
                }
            }
            Op::ForeignOff(c) => {
                if valid(c) {
                    l.backend_mut().foreign_off(CpuId(c));
                }
            }
            Op::Reboot => {
                let faulted = l.begin_reboot();
                rebooting = true;
                for cpu in faulted.iter() {
                    prop_assert!(before[cpu.index()].enabled);
                }
            }
            Op::Emergency => {
                l.emergency_disable_all();
                rebooting = true;
                for c in 0..cpus {
                    prop_assert_eq!(hw(&l, CpuId(c)), Hw::Off);
                }
            }
        }

        // Bookkeeping equals the model; failures left it exactly as it was.
        for (s, m) in l.snapshots().zip(&model) {
            prop_assert_eq!(
                (s.online, s.users),
                (m.online, m.users),
                "{:?} after {:?}",
                s,
                op
            );
        }
        prop_assert_eq!(l.is_rebooting(), rebooting);
        // At most one hardware call per CPU per operation, and only on the named CPU.
        let (en, dis) = (l.backend().enables, l.backend().disables);
        for i in 0..MAX_CPUS {
            let d = (en[i] - calls_before.0[i]) + (dis[i] - calls_before.1[i]);
            let named = matches!(op, Op::Get(c, _) | Op::Put(c, _) | Op::Online(c) | Op::Offline(c, _) if c as usize == i);
            prop_assert!(
                d <= 1 && (d == 0 || named || matches!(op, Op::Reboot)),
                "{:?} cpu{}",
                op,
                i
            );
        }
        // Hardware matches the invariant; the fake saw no double enable or stray disable.
        prop_assert!(
            l.backend().breaches.is_empty(),
            "{:?}",
            l.backend().breaches
        );
        prop_assert_eq!(l.check_invariant(), Ok(()));
        for s in l.snapshots() {
            let on = !s.users.is_empty() && s.online && !rebooting;
            prop_assert_eq!(s.enabled, on);
            prop_assert_eq!(hw(&l, s.cpu) == Hw::Ours, on, "{:?} after {:?}", s, op);
            if rebooting {
                prop_assert!(hw(&l, s.cpu) != Hw::Ours);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn random_event_sequences_keep_the_invariant((cpus, ops) in scenario()) {
        run(cpus, &ops)?;
    }

    /// Long runs without reboot, so most time is spent in the get/put/online/offline interplay.
    #[test]
    fn long_runs_without_reboot(
        (cpus, ops) in scenario().prop_map(|(n, ops)| {
            (n, ops.into_iter().filter(|o| !matches!(o, Op::Reboot | Op::Emergency)).collect::<Vec<_>>())
        })
    ) {
        run(cpus, &ops)?;
    }
}
