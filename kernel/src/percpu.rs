//! Running an operation on a chosen CPU.
//!
//! Turning virtualization on or off, reading EFER/CR4 back and the VMRUN self-test are per-CPU
//! acts, so the hypervisor's control path (the endpoint thread, holding the virt-layer lock)
//! posts them to the target CPU's mailbox and waits for the reply. Each CPU's worker thread,
//! pinned to it since bring-up, takes jobs between its other work (later: guest runs). One job
//! per CPU is outstanding at a time; the mailbox is a fixed slot, nothing is allocated.
//!
//! An idle worker does not poll: it halts its CPU ([`idle`]) until [`wake`] sets its flag and
//! sends it Hermit's wakeup IPI (vector 121), for a job posted here, a VM that became runnable
//! on it (start, resume, reset, a move from another CPU) or, later, an interrupt for one of its
//! vCPUs. Hermit 0.11.0's futex wait with a timeout races with a wake from another core, so
//! the primitive is this flag and IPI; the local APIC timer armed for the longest idle stretch
//! is only a backstop.

#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use hermit_sync::SpinMutex;

use crate::arch::{Job, Reply};
use crate::cpus::MAX_CPUS;
use crate::hw;

const EMPTY: u8 = 0;
const POSTED: u8 = 1;
const DONE: u8 = 2;

struct Mailbox {
    state: AtomicU8,
    job: SpinMutex<Option<Job>>,
    reply: SpinMutex<Option<Reply>>,
    /// Serializes posters so one job is outstanding at a time.
    poster: SpinMutex<()>,
}

impl Mailbox {
    const fn new() -> Self {
        Mailbox {
            state: AtomicU8::new(EMPTY),
            job: SpinMutex::new(None),
            reply: SpinMutex::new(None),
            poster: SpinMutex::new(()),
        }
    }
}

static MAILBOXES: [Mailbox; MAX_CPUS] = [const { Mailbox::new() }; MAX_CPUS];

/// Per CPU: something is waiting for its worker (set by [`wake`], cleared by [`idle`]).
static WAKE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Tell CPU `cpu`'s worker there is work: set its flag, then interrupt it (the IPI ends its
/// HLT; sent only once the flag is visible, so the worker either sees the flag before halting
/// or is woken from the halt).
pub fn wake(cpu: usize) {
    let Some(flag) = WAKE.get(cpu) else { return };
    if flag.swap(true, Ordering::AcqRel) {
        // Already flagged: an IPI is on its way or the worker has not halted since.
        return;
    }
    if let Some(slot) = crate::cpus::slot(cpu).filter(|s| s.is_up()) {
        crate::arch::timer::wake_one(slot.apic_id());
    }
}

/// Called by CPU `cpu`'s worker with nothing to do: halt until [`wake`] or any interrupt, for
/// at most about `max_us` (the APIC timer is armed as a backstop). Returns at once if woken
/// since the last call. Without a usable APIC timer (TSC-deadline mode) there is no backstop:
/// the worker then sleeps `max_us` in Hermit, as before.
pub fn idle(cpu: usize, max_us: u32) {
    let flag = &WAKE[cpu];
    if flag.swap(false, Ordering::AcqRel) {
        return;
    }
    if !crate::arch::timer::can_arm(cpu) {
        hermit::syscalls::sys_usleep(u64::from(max_us));
        return;
    }
    // Armed with interrupts off, just before the HLT: a short backstop (a vCPU timer due in a
    // few microseconds) that fired before the HLT would otherwise be taken first and leave
    // the CPU halted with no timer at all.
    hw::halt_unless(|| {
        crate::arch::timer::arm(cpu, max_us);
        flag.swap(false, Ordering::AcqRel)
    });
}

/// The target CPU did not take the job in time. The job may still run later; the caller
/// reports the CPU as unresponsive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout;

/// Run `job` on CPU `cpu` and wait up to `timeout_us` for its reply.
pub fn run_on(cpu: usize, job: Job, timeout_us: u64) -> Result<Reply, Timeout> {
    let mb = MAILBOXES.get(cpu).ok_or(Timeout)?;
    let _one_at_a_time = mb.poster.lock();
    // A reply to an earlier timed-out job may still be lying there: drop it.
    if mb.state.load(Ordering::Acquire) == DONE {
        mb.reply.lock().take();
        mb.state.store(EMPTY, Ordering::Release);
    }
    if mb.state.load(Ordering::Acquire) != EMPTY {
        return Err(Timeout);
    }
    *mb.job.lock() = Some(job);
    mb.state.store(POSTED, Ordering::Release);
    wake(cpu);
    let deadline = hw::monotonic_micros() + timeout_us;
    loop {
        if mb.state.load(Ordering::Acquire) == DONE {
            let reply = mb.reply.lock().take();
            mb.state.store(EMPTY, Ordering::Release);
            return reply.ok_or(Timeout);
        }
        if hw::monotonic_micros() > deadline {
            return Err(Timeout);
        }
        hermit::syscalls::sys_yield();
    }
}

/// Called by CPU `cpu`'s worker: run the pending job, if any. Returns whether one ran.
pub fn serve(cpu: usize, exec: impl FnOnce(Job) -> Reply) -> bool {
    let mb = &MAILBOXES[cpu];
    if mb.state.load(Ordering::Acquire) != POSTED {
        return false;
    }
    let Some(job) = mb.job.lock().take() else {
        return false;
    };
    let reply = exec(job);
    *mb.reply.lock() = Some(reply);
    mb.state.store(DONE, Ordering::Release);
    true
}
