//! The run loop against a mock backend with synthetic exits: exit in, backend calls and burst
//! end out.

use std::collections::VecDeque;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::cpuid::CpuidView;
use crate::exit::GuestPhys;
use crate::vm::OnCrash;

/// What the loop asked of the backend, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Enter,
    SetRip(u64),
    Apply(u64, RegUpdate),
    Inject(Event),
    Window(bool),
    SetState,
}

/// A backend that replays a script: each entry returns the next exit and leaves the guest in
/// the state given with it. An exhausted script fails the entry with code 0xDEAD.
struct Mock {
    script: VecDeque<(Exited, Interruptibility)>,
    state: Interruptibility,
    calls: Vec<Call>,
    /// The state at each `inject`, to check the loop only injects what the guest accepts.
    injected_in: Vec<(Event, Interruptibility)>,
    /// The guest TSC: 1,000 ticks pass in every entry.
    tsc: u64,
    /// The full state (the emulated exits read and write it).
    st: VcpuState,
    /// Guest RAM.
    ram: Vec<u8>,
}

impl Mock {
    fn new(state: Interruptibility, script: &[(Exited, Interruptibility)]) -> Mock {
        Mock {
            script: script.iter().copied().collect(),
            state,
            calls: Vec::new(),
            injected_in: Vec::new(),
            tsc: 0,
            st: VcpuState::default(),
            ram: Vec::new(),
        }
    }
}

impl VcpuBackend for Mock {
    fn enter(&mut self) -> Result<Exited, EntryError> {
        self.calls.push(Call::Enter);
        let (exit, state) = self.script.pop_front().ok_or(EntryError { code: 0xDEAD })?;
        self.state = state;
        self.tsc += 1_000;
        Ok(exit)
    }

    fn guest_tsc(&self) -> u64 {
        self.tsc
    }

    fn view(&self) -> GuestView {
        GuestView { rax: 0, efer: 0 }
    }

    fn set_rip(&mut self, rip: u64) {
        self.calls.push(Call::SetRip(rip));
        // The contract: the instruction completed, so its shadow ends.
        self.state.shadow = false;
        self.st.regs.rip = rip;
    }

    fn apply(&mut self, rip: u64, regs: &RegUpdate) {
        self.calls.push(Call::Apply(rip, *regs));
    }

    fn inject(&mut self, event: Event) {
        self.calls.push(Call::Inject(event));
        self.injected_in.push((event, self.state));
    }

    fn interruptibility(&self) -> Interruptibility {
        self.state
    }

    fn set_interrupt_window(&mut self, open: bool) {
        self.calls.push(Call::Window(open));
    }

    type Memory = [u8];

    fn state(&self) -> VcpuState {
        self.st
    }

    fn set_state(&mut self, state: &VcpuState) {
        self.calls.push(Call::SetState);
        self.st = *state;
    }

    fn memory(&mut self) -> &mut [u8] {
        &mut self.ram
    }
}

/// An interrupt controller with a queue of requests; records acknowledgements.
#[derive(Default)]
struct Pic {
    requests: VecDeque<u8>,
    acks: Vec<u8>,
    nmi: bool,
}

impl Pic {
    fn with(vectors: &[u8]) -> Pic {
        Pic {
            requests: vectors.iter().copied().collect(),
            ..Pic::default()
        }
    }
}

impl InterruptController for Pic {
    fn pending_vector(&self) -> Option<u8> {
        self.requests.front().copied()
    }

    fn acknowledge(&mut self) -> Option<u8> {
        let v = self.requests.pop_front()?;
        self.acks.push(v);
        Some(v)
    }

    fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi)
    }
}

/// Yields after `after` exits; can swallow CPUID leaf `floor` (the benchmark's hook).
struct Host {
    exits: usize,
    after: usize,
    floor: Option<u32>,
}

impl Host {
    fn yield_after(after: usize) -> Host {
        Host {
            exits: 0,
            after,
            floor: None,
        }
    }
}

impl RunHost for Host {
    fn should_yield(&mut self) -> bool {
        self.exits >= self.after
    }

    fn intercept<B: VcpuBackend>(&mut self, vcpu: &mut B, exit: &Exit) -> bool {
        self.exits += 1;
        match (*exit, self.floor) {
            (Exit::Cpuid { leaf, next_rip, .. }, Some(f)) if leaf == f => {
                vcpu.set_rip(next_rip);
                true
            }
            _ => false,
        }
    }
}

fn runtime() -> Box<VmRuntime> {
    let cpuid = CpuidView::from_host(
        |leaf, _| match leaf {
            0 => [1, 0x756E_6547, 0x6C65_746E, 0x4965_6E69],
            1 => [0x000906EA, 0, 0, 0],
            _ => [0; 4],
        },
        None,
    );
    Box::new(VmRuntime::new(cpuid, OnCrash::Reset))
}

const OPEN: Interruptibility = Interruptibility::OPEN;
const CLI: Interruptibility = Interruptibility {
    interrupts_enabled: false,
    ..OPEN
};
const SHADOW: Interruptibility = Interruptibility {
    shadow: true,
    ..OPEN
};
const NO_GIF: Interruptibility = Interruptibility { gif: false, ..OPEN };

fn cpuid(leaf: u32) -> Exited {
    Exited::plain(Exit::Cpuid {
        leaf,
        subleaf: 0,
        next_rip: 0x1002,
    })
}

fn hlt(interrupts_enabled: bool) -> Exited {
    Exited::plain(Exit::Hlt {
        next_rip: 0x2001,
        interrupts_enabled,
    })
}

fn out(port: u16, value: u32) -> Exited {
    Exited::plain(Exit::Io {
        port,
        size: 1,
        write: Some(value),
        string: false,
        rep: false,
        next_rip: 0x3002,
    })
}

/// Exits, each with the guest state it leaves.
type Script<'a> = &'a [(Exited, Interruptibility)];

const PF: Event = Event::exception(14, Some(2));
const UD: Event = Event::exception(6, None);

/// Run one burst over `script` from `start`, yielding after `after` exits.
fn run_burst(
    start: Interruptibility,
    script: &[(Exited, Interruptibility)],
    pic: &mut Pic,
    after: usize,
) -> (BurstEnd, Vec<Call>, VcpuRun) {
    let mut vcpu = Mock::new(start, script);
    let mut rt = runtime();
    let mut run = VcpuRun::new();
    let end = run.burst(&mut vcpu, &mut rt, pic, &mut Host::yield_after(after));
    (end, vcpu.calls, run)
}

#[test]
fn exits_to_calls_and_burst_ends() {
    use Call::*;
    let leaf0 = RegUpdate {
        rax: Some(1),
        rbx: Some(0x756E_6547),
        rcx: Some(0x6C65_746E),
        rdx: Some(0x4965_6E69),
        ..RegUpdate::default()
    };
    let rows: &[(Script, usize, BurstEnd, &[Call])] = &[
        // CPUID: registers from the view, past the instruction, burst goes on to the yield.
        (
            &[(cpuid(0), OPEN)],
            1,
            BurstEnd::Yield,
            &[Enter, Apply(0x1002, leaf0)],
        ),
        // Two register-only exits in one burst.
        (
            &[(cpuid(0), OPEN), (cpuid(0), OPEN)],
            2,
            BurstEnd::Yield,
            &[Enter, Apply(0x1002, leaf0), Enter, Apply(0x1002, leaf0)],
        ),
        // Debug exit port: the VM stops with the value.
        (
            &[(out(0xF4, 0), OPEN)],
            9,
            BurstEnd::Stop(StopReason::DebugExit(0)),
            &[Enter],
        ),
        // 0xCF9 reset.
        (
            &[(out(0xCF9, 6), OPEN)],
            9,
            BurstEnd::Reset(ResetTrigger::Port0xCf9),
            &[Enter],
        ),
        // HLT with IF=0: done for good.
        (
            &[(hlt(false), CLI)],
            9,
            BurstEnd::Stop(StopReason::Halted),
            &[Enter],
        ),
        // HLT with IF=1 and nothing pending: halted past the HLT.
        (
            &[(hlt(true), OPEN)],
            9,
            BurstEnd::Halted,
            &[Enter, SetRip(0x2001)],
        ),
        // A host interrupt ends the burst at once (the host takes it with interrupts on).
        (
            &[(Exited::plain(Exit::ExternalInterrupt), OPEN)],
            9,
            BurstEnd::HostInterrupt,
            &[Enter],
        ),
        // Triple fault under OnCrash::Reset.
        (
            &[(Exited::plain(Exit::TripleFault), OPEN)],
            9,
            BurstEnd::Reset(ResetTrigger::TripleFault),
            &[Enter],
        ),
        // An MMIO access outside RAM whose instruction is not in RAM either (the mock has
        // none): the VM stops with the address of the fetch.
        (
            &[(
                Exited::plain(Exit::NestedPageFault {
                    gpa: GuestPhys(0x4000_0000),
                    write: true,
                    exec: false,
                }),
                OPEN,
            )],
            9,
            BurstEnd::Stop(StopReason::NotRam { gpa: GuestPhys(0) }),
            &[Enter],
        ),
        // A virtualization instruction: #UD at the next entry.
        (
            &[(Exited::plain(Exit::VirtInstruction), OPEN)],
            9,
            BurstEnd::EntryFailed { code: 0xDEAD },
            &[Enter, Inject(UD), Enter],
        ),
        // The entry itself fails.
        (&[], 9, BurstEnd::EntryFailed { code: 0xDEAD }, &[Enter]),
    ];
    for (i, (script, after, end, calls)) in rows.iter().enumerate() {
        let (got_end, got_calls, _) = run_burst(OPEN, script, &mut Pic::default(), *after);
        assert_eq!(got_end, *end, "row {i}");
        assert_eq!(got_calls, *calls, "row {i}");
    }
}

#[test]
fn exits_are_counted_once() {
    let mut vcpu = Mock::new(
        OPEN,
        &[
            (cpuid(0), OPEN),
            (
                Exited::plain(Exit::Rdpmc {
                    index: 0,
                    next_rip: 0x10,
                }),
                OPEN,
            ),
            (Exited::plain(Exit::ExternalInterrupt), OPEN),
        ],
    );
    let mut rt = runtime();
    let mut run = VcpuRun::new();
    let end = run.burst(
        &mut vcpu,
        &mut rt,
        &mut Pic::default(),
        &mut Host::yield_after(9),
    );
    assert_eq!(end, BurstEnd::HostInterrupt);
    let e = &rt.stats.exits;
    use crate::exit::ExitKind as K;
    assert_eq!((e.get(K::Cpuid), e.get(K::Msr), e.get(K::Intr)), (1, 1, 1));
    // RDPMC went to the vPMU (off: #GP(0), injected at the next entry).
    assert!(
        vcpu.calls
            .contains(&Call::Inject(Event::exception(13, Some(0))))
    );
}

#[test]
fn the_host_hook_sees_every_exit_first() {
    let mut vcpu = Mock::new(OPEN, &[(cpuid(0x4FFF_FFFF), OPEN), (cpuid(0), OPEN)]);
    let mut rt = runtime();
    let mut host = Host {
        floor: Some(0x4FFF_FFFF),
        ..Host::yield_after(2)
    };
    let end = VcpuRun::new().burst(&mut vcpu, &mut rt, &mut Pic::default(), &mut host);
    assert_eq!(end, BurstEnd::Yield);
    assert_eq!(vcpu.calls[..2], [Call::Enter, Call::SetRip(0x1002)]);
    // The swallowed exit is not the handler's: one CPUID counted.
    assert_eq!(rt.stats.exits.total(), 1);
}

#[test]
fn an_interrupted_event_is_delivered_again_first() {
    let pf_cut_short = Exited {
        exit: Exit::NestedPageFault {
            gpa: GuestPhys(0x1000),
            write: false,
            exec: false,
        },
        interrupted: Some(PF),
    };
    let cut = Exited {
        interrupted: Some(PF),
        ..cpuid(0)
    };
    // A register-only exit: the event goes in again before the next entry, once.
    let mut pic = Pic::with(&[0x20]);
    let (end, calls, run) = run_burst(CLI, &[(cut, CLI), (cpuid(0), CLI)], &mut pic, 2);
    assert_eq!(end, BurstEnd::Yield);
    let injects: Vec<_> = calls
        .iter()
        .filter(|c| matches!(c, Call::Inject(_)))
        .collect();
    assert_eq!(injects, [&Call::Inject(PF)]);
    let pos = |c: Call| calls.iter().position(|x| *x == c).unwrap();
    assert!(pos(Call::Inject(PF)) < calls.iter().rposition(|c| *c == Call::Enter).unwrap());
    assert_eq!(run.stats.reinjected, 1);
    // The interrupt waits behind it (IF=0 anyway): window open, nothing acknowledged.
    assert!(calls.contains(&Call::Window(true)));
    assert!(pic.acks.is_empty());
    // An exception from the handler replaces the interrupted event.
    let ud_cut = Exited {
        exit: Exit::VirtInstruction,
        interrupted: Some(PF),
    };
    let (_, calls, _) = run_burst(
        OPEN,
        &[(ud_cut, OPEN), (cpuid(0), OPEN)],
        &mut Pic::default(),
        2,
    );
    assert!(calls.contains(&Call::Inject(UD)) && !calls.contains(&Call::Inject(PF)));
    // A stopping exit: nothing is injected.
    let (end, calls, _) = run_burst(OPEN, &[(pf_cut_short, OPEN)], &mut Pic::default(), 9);
    assert!(matches!(end, BurstEnd::Stop(_)));
    assert_eq!(calls, [Call::Enter]);
}

#[test]
fn interrupts_go_in_when_the_guest_can_take_them() {
    // IF=1, no shadow: acknowledged and injected before the first entry.
    let mut pic = Pic::with(&[0x20]);
    let (_, calls, run) = run_burst(OPEN, &[(cpuid(0), OPEN)], &mut pic, 1);
    assert_eq!(
        calls[..2],
        [Call::Inject(Event::external(0x20)), Call::Enter]
    );
    assert_eq!(pic.acks, [0x20]);
    assert_eq!(run.stats.interrupts, 1);
    // Two requests: the second waits for a window.
    let mut pic = Pic::with(&[0x20, 0x21]);
    let (_, calls, _) = run_burst(OPEN, &[(cpuid(0), OPEN)], &mut pic, 1);
    assert_eq!(
        calls[..3],
        [
            Call::Inject(Event::external(0x20)),
            Call::Window(true),
            Call::Enter
        ]
    );
    assert_eq!(pic.acks, [0x20]);
}

#[test]
fn a_blocked_interrupt_opens_the_window_and_goes_in_on_its_exit() {
    for blocked in [CLI, SHADOW, NO_GIF] {
        let mut pic = Pic::with(&[0x30]);
        let script = [
            (cpuid(0), blocked),
            (Exited::plain(Exit::InterruptWindow), OPEN),
            (cpuid(0), OPEN),
        ];
        let (end, calls, run) = run_burst(blocked, &script, &mut pic, 3);
        assert_eq!(end, BurstEnd::Yield, "{blocked:?}");
        let expected = [
            Call::Window(true),
            Call::Enter,
            Call::Apply(0x1002, calls_apply(&calls)),
            // Still blocked after the CPUID: the window stays open, nothing acknowledged.
            Call::Enter,
            // The window exit: inject, close the window.
            Call::Inject(Event::external(0x30)),
            Call::Window(false),
            Call::Enter,
        ];
        assert_eq!(calls[..expected.len()], expected, "{blocked:?}");
        assert_eq!(pic.acks, [0x30], "{blocked:?}");
        assert_eq!(run.stats.windows, 1, "{blocked:?}");
    }
}

/// The register update of the first CPUID apply in `calls`.
fn calls_apply(calls: &[Call]) -> RegUpdate {
    calls
        .iter()
        .find_map(|c| match c {
            Call::Apply(_, r) => Some(*r),
            _ => None,
        })
        .unwrap()
}

#[test]
fn nmis_go_in_unless_blocked() {
    let mut pic = Pic::with(&[0x20]);
    pic.nmi = true;
    let (_, calls, run) = run_burst(OPEN, &[(cpuid(0), OPEN)], &mut pic, 1);
    // The NMI first; the interrupt behind it waits for the window.
    assert_eq!(
        calls[..3],
        [Call::Inject(Event::NMI), Call::Window(true), Call::Enter]
    );
    assert_eq!(run.stats.nmis, 1);
    assert!(pic.acks.is_empty());
    // Blocked: kept, and delivered at the first entry where it can be.
    let blocked = Interruptibility {
        nmi_blocked: true,
        ..OPEN
    };
    let mut pic = Pic {
        nmi: true,
        ..Pic::default()
    };
    let (_, calls, _) = run_burst(
        blocked,
        &[(cpuid(0), blocked), (cpuid(0), OPEN), (cpuid(0), OPEN)],
        &mut pic,
        3,
    );
    let enters_before = |c: Call| {
        calls[..calls.iter().position(|x| *x == c).unwrap()]
            .iter()
            .filter(|c| **c == Call::Enter)
            .count()
    };
    assert_eq!(enters_before(Call::Inject(Event::NMI)), 2);
}

#[test]
fn a_halted_vcpu_sleeps_until_an_interrupt_is_pending() {
    let mut vcpu = Mock::new(OPEN, &[(hlt(true), OPEN), (cpuid(0), OPEN)]);
    let mut rt = runtime();
    let mut pic = Pic::default();
    let mut run = VcpuRun::new();
    let mut host = Host::yield_after(9);
    assert_eq!(
        run.burst(&mut vcpu, &mut rt, &mut pic, &mut host),
        BurstEnd::Halted
    );
    assert!(run.halted() && !run.runnable(&mut pic));
    assert_eq!(rt.stats.halts, 1);
    // Asked again while nothing is pending: it does not even enter.
    let entries = vcpu.calls.len();
    assert_eq!(
        run.burst(&mut vcpu, &mut rt, &mut pic, &mut host),
        BurstEnd::Halted
    );
    assert_eq!(vcpu.calls.len(), entries);
    // An interrupt arrives: runnable, and it goes in at the next entry.
    pic.requests.push_back(0x41);
    assert!(run.runnable(&mut pic));
    let mut host = Host::yield_after(1);
    assert_eq!(
        run.burst(&mut vcpu, &mut rt, &mut pic, &mut host),
        BurstEnd::Yield
    );
    assert_eq!(
        vcpu.calls[entries..entries + 2],
        [Call::Inject(Event::external(0x41)), Call::Enter]
    );
    assert!(!run.halted());
    // An NMI wakes it too.
    let mut vcpu = Mock::new(OPEN, &[(hlt(true), OPEN)]);
    let mut run = VcpuRun::new();
    let mut pic = Pic::default();
    run.burst(&mut vcpu, &mut rt, &mut pic, &mut Host::yield_after(9));
    pic.nmi = true;
    assert!(run.runnable(&mut pic));
}

#[test]
fn hlt_with_an_interrupt_already_pending_goes_on() {
    // The controller raises its request while the guest executes STI; HLT.
    let mut pic = Pic::default();
    let mut vcpu = Mock::new(CLI, &[(hlt(true), OPEN), (cpuid(0), OPEN)]);
    let mut rt = runtime();
    let mut run = VcpuRun::new();
    pic.requests.push_back(0x50);
    let end = run.burst(&mut vcpu, &mut rt, &mut pic, &mut Host::yield_after(2));
    assert_eq!(end, BurstEnd::Yield);
    assert_eq!(pic.acks, [0x50]);
    assert!(!run.halted());
}

#[test]
fn decide_table() {
    let d = |inject, window| Decision { inject, window };
    use Injection::*;
    let rows = [
        // (state, pending, nmi, interrupt) -> decision
        ((OPEN, None, false, false), d(Nothing, false)),
        ((OPEN, None, false, true), d(Interrupt, false)),
        ((CLI, None, false, true), d(Nothing, true)),
        ((SHADOW, None, false, true), d(Nothing, true)),
        ((NO_GIF, None, false, true), d(Nothing, true)),
        ((OPEN, Some(PF), false, true), d(Event(PF), true)),
        ((CLI, Some(PF), true, false), d(Event(PF), false)),
        ((OPEN, None, true, true), d(Nmi, true)),
        ((SHADOW, None, true, false), d(Nothing, false)),
        ((NO_GIF, None, true, false), d(Nothing, false)),
        ((CLI, None, true, false), d(Nmi, false)),
    ];
    for ((state, pending, nmi, interrupt), expected) in rows {
        assert_eq!(
            decide(state, pending, nmi, interrupt),
            expected,
            "{state:?} {pending:?} {nmi} {interrupt}"
        );
    }
}

fn state() -> impl Strategy<Value = Interruptibility> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(i, s, g, n)| {
        Interruptibility {
            interrupts_enabled: i,
            shadow: s,
            gif: g,
            nmi_blocked: n,
        }
    })
}

fn exited() -> impl Strategy<Value = Exited> {
    (0u8..4, any::<bool>()).prop_map(|(k, cut)| Exited {
        exit: match k {
            0 => cpuid(0).exit,
            1 => Exit::InterruptWindow,
            2 => Exit::VirtInstruction,
            _ => Exit::Msr {
                index: 0x10,
                write: None,
                next_rip: 0x20,
            },
        },
        interrupted: cut.then_some(PF),
    })
}

proptest! {
    /// Over random exits, guest states and controller requests: an external interrupt is only
    /// ever injected when the guest accepts one, each injection is exactly one acknowledgement,
    /// at most one event goes in per entry, and a request that did not go in has the window
    /// open for the next entry.
    #[test]
    fn injection_invariants(
        start in state(),
        script in proptest::collection::vec((exited(), state()), 1..40),
        requests in proptest::collection::vec(32u8..=255, 0..10),
    ) {
        let mut vcpu = Mock::new(start, &script);
        let mut rt = runtime();
        let mut pic = Pic::with(&requests);
        let mut run = VcpuRun::new();
        let end = run.burst(&mut vcpu, &mut rt, &mut pic, &mut Host::yield_after(usize::MAX));
        prop_assert_eq!(end, BurstEnd::EntryFailed { code: 0xDEAD });
        let externals: Vec<u8> = vcpu
            .injected_in
            .iter()
            .filter(|(e, _)| e.kind == EventKind::External)
            .map(|(e, _)| e.vector)
            .collect();
        prop_assert_eq!(&externals, &pic.acks);
        prop_assert_eq!(&pic.acks[..], &requests[..pic.acks.len()]);
        for (e, s) in &vcpu.injected_in {
            if e.kind == EventKind::External {
                prop_assert!(s.accepts_interrupt(), "{:?} injected in {:?}", e, s);
            }
        }
        let mut window = false;
        let mut injected = 0;
        let mut pending = requests.len();
        for c in &vcpu.calls {
            match c {
                Call::Window(w) => window = *w,
                Call::Inject(e) => {
                    injected += 1;
                    if e.kind == EventKind::External {
                        pending -= 1;
                    }
                }
                Call::Enter => {
                    prop_assert!(injected <= 1);
                    // Something waits and did not go in: the window is open.
                    if pending > 0 && injected == 0 {
                        prop_assert!(window);
                    }
                    injected = 0;
                }
                _ => {}
            }
        }
    }
}

/// Protected mode, paging off, flat 32-bit code at 0x1000 holding `code`, in 1 MiB of RAM.
fn flat_mock(code: &[u8], script: &[(Exited, Interruptibility)]) -> Mock {
    let mut m = Mock::new(OPEN, script);
    m.ram = vec![0; 1 << 20];
    m.ram[0x1000..0x1000 + code.len()].copy_from_slice(code);
    m.st.sys.cr0 = crate::vcpu::CR0_PE;
    m.st.sys.cs.attrs = 0xC9B;
    m.st.regs.rip = 0x1000;
    m.st.regs.rflags = 2;
    m
}

fn npf(gpa: u64) -> Exited {
    Exited::plain(Exit::NestedPageFault {
        gpa: GuestPhys(gpa),
        write: false,
        exec: false,
    })
}

#[test]
fn an_mmio_read_of_an_unclaimed_page_is_emulated_and_the_guest_goes_on() {
    // mov eax, [ebx] with EBX = 0xE0000000, then a CPUID.
    let mut vcpu = flat_mock(&[0x8B, 0x03], &[(npf(0xE000_0000), OPEN), (cpuid(0), OPEN)]);
    vcpu.st.regs.set(crate::vcpu::Gpr::Rbx, 0xE000_0000);
    let mut rt = runtime();
    let end = VcpuRun::new().burst(
        &mut vcpu,
        &mut rt,
        &mut Pic::default(),
        &mut Host::yield_after(2),
    );
    assert_eq!(end, BurstEnd::Yield);
    assert_eq!(vcpu.calls[..3], [Call::Enter, Call::SetState, Call::Enter]);
    assert_eq!(vcpu.st.regs.get(crate::vcpu::Gpr::Rax), 0xFFFF_FFFF);
    assert_eq!(vcpu.st.regs.rip, 0x1002);
    assert_eq!(rt.stats.unhandled_mmio_reads, 1);
    assert_eq!(rt.stats.exits.get(crate::exit::ExitKind::Npf), 1);

    // Strict MMIO: the same access stops the VM, nothing written.
    let mut vcpu = flat_mock(&[0x8B, 0x03], &[(npf(0xE000_0000), OPEN)]);
    let mut rt = runtime();
    rt.strict_mmio = true;
    let end = VcpuRun::new().burst(
        &mut vcpu,
        &mut rt,
        &mut Pic::default(),
        &mut Host::yield_after(9),
    );
    assert_eq!(
        end,
        BurstEnd::Stop(StopReason::NptViolation {
            gpa: GuestPhys(0xE000_0000)
        })
    );
    assert_eq!(vcpu.calls, [Call::Enter]);
    assert_eq!(rt.stats.unhandled_mmio_reads, 0);

    // A fault that interrupted an event's delivery is not the instruction's: stop.
    let cut = Exited {
        interrupted: Some(PF),
        ..npf(0xE000_0000)
    };
    let mut vcpu = flat_mock(&[0x8B, 0x03], &[(cut, OPEN)]);
    let end = VcpuRun::new().burst(
        &mut vcpu,
        &mut runtime(),
        &mut Pic::default(),
        &mut Host::yield_after(9),
    );
    assert!(matches!(
        end,
        BurstEnd::Stop(StopReason::NptViolation { .. })
    ));
    assert_eq!(vcpu.calls, [Call::Enter]);
}

#[test]
fn an_emulated_page_fault_is_injected_with_cr2() {
    // 32-bit paging: PDE 0 a 4 MiB identity page, PDE 0x380 the device page at 0xE0000000;
    // movsd from it to 0x400000, which nothing maps.
    let mut vcpu = flat_mock(&[0xA5], &[(npf(0xE000_0000), OPEN)]);
    let pde = |pa: u32| (pa | 0x83).to_le_bytes();
    vcpu.ram[0x8000..0x8004].copy_from_slice(&pde(0));
    vcpu.ram[0x8000 + 0x380 * 4..0x8000 + 0x381 * 4].copy_from_slice(&pde(0xE000_0000));
    vcpu.st.sys.cr0 |= crate::vcpu::CR0_PG;
    vcpu.st.sys.cr3 = 0x8000;
    vcpu.st.sys.cr4 = crate::vcpu::CR4_PSE;
    vcpu.st.regs.set(crate::vcpu::Gpr::Rsi, 0xE000_0000);
    vcpu.st.regs.set(crate::vcpu::Gpr::Rdi, 0x40_0000);
    let mut rt = runtime();
    let end = VcpuRun::new().burst(
        &mut vcpu,
        &mut rt,
        &mut Pic::default(),
        &mut Host::yield_after(9),
    );
    assert_eq!(end, BurstEnd::EntryFailed { code: 0xDEAD });
    let pf = Event::exception(14, Some(crate::mem::walk::PF_WRITE));
    assert_eq!(
        vcpu.calls,
        [Call::Enter, Call::SetState, Call::Inject(pf), Call::Enter]
    );
    assert_eq!(vcpu.st.sys.cr2, 0x40_0000);
    assert_eq!(
        vcpu.st.regs.rip, 0x1000,
        "the fault points at the instruction"
    );
}

#[test]
fn string_io_runs_in_batches_and_then_goes_past_the_instruction() {
    // rep outsb to an unclaimed port, more elements than one batch.
    let n = crate::devices::string_io::MAX_ITERATIONS + 3;
    let outs = Exited::plain(Exit::Io {
        port: 0x2E8,
        size: 1,
        write: None,
        string: true,
        rep: true,
        next_rip: 0x1002,
    });
    let mut vcpu = flat_mock(&[0xF3, 0x6E], &[(outs, OPEN), (outs, OPEN)]);
    vcpu.st.regs.set(crate::vcpu::Gpr::Rsi, 0x2_0000);
    vcpu.st.regs.set(crate::vcpu::Gpr::Rcx, n);
    let mut rt = runtime();
    let end = VcpuRun::new().burst(
        &mut vcpu,
        &mut rt,
        &mut Pic::default(),
        &mut Host::yield_after(1),
    );
    assert_eq!(end, BurstEnd::Yield);
    assert_eq!(vcpu.st.regs.rip, 0x1000, "re-executed for the rest");
    assert_eq!(vcpu.st.regs.get(crate::vcpu::Gpr::Rcx), 3);
    let end = VcpuRun::new().burst(
        &mut vcpu,
        &mut rt,
        &mut Pic::default(),
        &mut Host::yield_after(1),
    );
    assert_eq!(end, BurstEnd::Yield);
    assert_eq!(vcpu.st.regs.rip, 0x1002);
    assert_eq!(vcpu.st.regs.get(crate::vcpu::Gpr::Rcx), 0);
    assert_eq!(rt.stats.unhandled_port_writes, n);
}

#[test]
fn an_event_waiting_at_a_hlt_in_an_sti_shadow_arrives_after_the_hlt() {
    // STI; HLT at 0x1000 (0xFB, 0xF4): the guest left at the HLT with the STI shadow still on
    // (a host interrupt between the two) and an interrupt is pending. The HLT completes first
    // (RIP past it, the vCPU halted and woken at once), then the interrupt goes in: it returns
    // after the HLT, as on hardware, not to it.
    let mut vcpu = flat_mock(&[0xF4, 0x90], &[(cpuid(0), OPEN)]);
    vcpu.state = SHADOW;
    let mut rt = runtime();
    let mut run = VcpuRun::new();
    let mut pic = Pic::with(&[0x20]);
    run.burst(&mut vcpu, &mut rt, &mut pic, &mut Host::yield_after(1));
    assert_eq!(
        vcpu.calls[..3],
        [
            Call::SetRip(0x1001),
            Call::Inject(Event::external(0x20)),
            Call::Enter
        ]
    );
    assert_eq!(vcpu.injected_in[0].1, OPEN);
    assert_eq!(rt.stats.halts, 1);

    // Not a HLT in the shadow (a NOP): the window opens and nothing is skipped.
    let mut vcpu = flat_mock(&[0x90, 0xF4], &[(cpuid(0), OPEN)]);
    vcpu.state = SHADOW;
    let mut rt = runtime();
    let mut pic = Pic::with(&[0x20]);
    VcpuRun::new().burst(&mut vcpu, &mut rt, &mut pic, &mut Host::yield_after(1));
    assert_eq!(vcpu.calls[..2], [Call::Window(true), Call::Enter]);
    assert_eq!(rt.stats.halts, 0);

    // A HLT in the shadow with nothing pending: left to the guest (it exits on the HLT).
    let mut vcpu = flat_mock(&[0xF4], &[(cpuid(0), OPEN)]);
    vcpu.state = SHADOW;
    let mut rt = runtime();
    VcpuRun::new().burst(
        &mut vcpu,
        &mut rt,
        &mut Pic::default(),
        &mut Host::yield_after(1),
    );
    assert_eq!(vcpu.calls[0], Call::Enter);
}
