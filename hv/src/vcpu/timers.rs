//! One CPU's queue of vCPU deadlines: when each of its vCPUs next needs to run because a
//! device timer of its VM (PIT, RTC, local APIC timer, HPET) fires.
//!
//! Why: a halted vCPU sleeps until an interrupt is pending for it (`super::run`), and a timer
//! interrupt becomes pending only when the device model is asked at or after its deadline
//! (devices take `now` as a parameter and report their next deadline, `crate::time`). The CPU's
//! worker therefore keeps the earliest deadline of its vCPUs and sleeps until then or until an
//! event, never in fixed polling steps (DESIGN.md "The guest platform"). Deadlines are host TSC
//! values (the guest clock maps guest time to the guest TSC, `GuestClock::tsc_at`, which is the
//! host's plus the VM's TSC offset), so the worker compares them with RDTSC alone.
//!
//! Fixed capacity (one entry per vCPU placed on the CPU), no allocation: setting and taking
//! deadlines happens on the exit path and in the worker's idle decision.

/// A vCPU in the queue: whatever id the kernel gives it (the VM id while VMs have one vCPU).
pub type VcpuKey = u32;

/// The queue is full: more vCPUs with deadlines than the CPU was built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueueFull;

/// Up to `N` vCPUs' next deadlines (host TSC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerQueue<const N: usize> {
    slots: [Option<(VcpuKey, u64)>; N],
}

impl<const N: usize> Default for TimerQueue<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> TimerQueue<N> {
    /// An empty queue.
    pub const fn new() -> Self {
        TimerQueue { slots: [None; N] }
    }

    /// Set (`Some`) or clear (`None`) vCPU `key`'s deadline, replacing any earlier one.
    pub fn set(&mut self, key: VcpuKey, deadline: Option<u64>) -> Result<(), QueueFull> {
        let existing = self
            .slots
            .iter()
            .position(|s| s.is_some_and(|(k, _)| k == key));
        match (existing, deadline) {
            (Some(i), Some(d)) => self.slots[i] = Some((key, d)),
            (Some(i), None) => self.slots[i] = None,
            (None, Some(d)) => {
                let free = self
                    .slots
                    .iter()
                    .position(Option::is_none)
                    .ok_or(QueueFull)?;
                self.slots[free] = Some((key, d));
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// vCPU `key`'s deadline, if it has one.
    pub fn get(&self, key: VcpuKey) -> Option<u64> {
        self.slots
            .iter()
            .flatten()
            .find(|(k, _)| *k == key)
            .map(|&(_, d)| d)
    }

    /// The earliest deadline: how long the worker may sleep.
    pub fn next(&self) -> Option<u64> {
        self.slots.iter().flatten().map(|&(_, d)| d).min()
    }

    /// Remove every deadline at or before `now` and hand its vCPU to `due` (each once),
    /// earliest first. Returns how many were due.
    pub fn take_due(&mut self, now: u64, mut due: impl FnMut(VcpuKey)) -> usize {
        let mut n = 0;
        while let Some(i) = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.filter(|&(_, d)| d <= now).map(|(_, d)| (d, i)))
            .min()
            .map(|(_, i)| i)
        {
            if let Some((key, _)) = self.slots[i].take() {
                due(key);
                n += 1;
            }
        }
        n
    }

    /// How many vCPUs have a deadline.
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Whether no vCPU has a deadline.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    #[test]
    fn earliest_first_and_each_once() {
        let mut q = TimerQueue::<4>::new();
        q.set(1, Some(300)).unwrap();
        q.set(2, Some(100)).unwrap();
        q.set(3, Some(200)).unwrap();
        assert_eq!(q.next(), Some(100));
        // Replacing a deadline moves it.
        q.set(2, Some(400)).unwrap();
        assert_eq!((q.next(), q.get(2), q.len()), (Some(200), Some(400), 3));
        let mut seen = Vec::new();
        assert_eq!(q.take_due(300, |k| seen.push(k)), 2);
        assert_eq!(seen, [3, 1]);
        // Taken: not due again.
        assert_eq!(q.take_due(300, |k| seen.push(k)), 0);
        assert_eq!(q.next(), Some(400));
        q.set(2, None).unwrap();
        assert!(q.is_empty() && q.next().is_none());
    }

    #[test]
    fn full_is_an_error_and_changes_nothing() {
        let mut q = TimerQueue::<2>::new();
        q.set(1, Some(10)).unwrap();
        q.set(2, Some(20)).unwrap();
        let before = q;
        assert_eq!(q.set(3, Some(5)), Err(QueueFull));
        assert_eq!(q, before);
        // Updating or clearing a present key still works.
        q.set(2, Some(1)).unwrap();
        assert_eq!(q.next(), Some(1));
        q.set(3, None).unwrap();
        assert_eq!(q.len(), 2);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Set(u32, Option<u64>),
        Take(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..6, proptest::option::of(0u64..1000)).prop_map(|(k, d)| Op::Set(k, d)),
            (0u64..1000).prop_map(Op::Take),
        ]
    }

    proptest! {
        /// Against a map as the model: same deadlines, same earliest, due keys in deadline
        /// order and never twice.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 0..200)) {
            let mut q = TimerQueue::<8>::new();
            let mut model: BTreeMap<u32, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Set(k, d) => {
                        q.set(k, d).unwrap();
                        match d {
                            Some(d) => { model.insert(k, d); }
                            None => { model.remove(&k); }
                        }
                    }
                    Op::Take(now) => {
                        let mut got = Vec::new();
                        q.take_due(now, |k| got.push(k));
                        let mut want: Vec<(u64, u32)> =
                            model.iter().filter(|(_, d)| **d <= now).map(|(k, d)| (*d, *k)).collect();
                        want.sort();
                        let want_keys: Vec<u32> = want.iter().map(|&(_, k)| k).collect();
                        let got_deadlines: Vec<u64> = got.iter().map(|k| model[k]).collect();
                        prop_assert!(got_deadlines.windows(2).all(|w| w[0] <= w[1]));
                        let mut sorted_got = got.clone();
                        sorted_got.sort();
                        let mut sorted_want = want_keys.clone();
                        sorted_want.sort();
                        prop_assert_eq!(sorted_got, sorted_want);
                        model.retain(|_, d| *d > now);
                    }
                }
                prop_assert_eq!(q.next(), model.values().min().copied());
                prop_assert_eq!(q.len(), model.len());
                for (k, d) in &model {
                    prop_assert_eq!(q.get(*k), Some(*d));
                }
            }
        }
    }
}
