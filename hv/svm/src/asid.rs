//! Per-CPU ASID allocation.
//!
//! Why: the TLB tags guest translations with the ASID from the VMCB (APM 15.16 "TLB Control").
//! Each physical CPU hands out ASIDs 1..N-1 (0 is the host's; N from CPUID Fn8000_000A_EBX,
//! 16 under QEMU TCG) to the vCPUs that run on it. When they run out, a new *generation*
//! starts: numbering restarts at 1 and the whole TLB is flushed once, so no translation
//! cached for a previous owner of an ASID survives. Within a generation every ASID has a
//! single owner, so a vCPU that keeps its (ASID, generation) on a CPU needs no flush at all.
//! Without FlushByAsid (QEMU), a full flush is also the only flush there is; a vCPU that
//! needs a flush of its own translations can simply drop its tag and get a fresh ASID.
//!
//! Fixed capacity: two counters per CPU, no allocation, no table of owners.
#![forbid(unsafe_code)]

use crate::vmcb::TlbControl;

/// What a vCPU remembers about the ASID it got on one CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AsidTag {
    /// The ASID (never 0).
    pub asid: u32,
    /// The allocator generation it belongs to.
    pub generation: u64,
}

/// The result of [`AsidAllocator::assign`]: put `tag.asid` in the VMCB's guest ASID and
/// `tlb_control` in TLB_CONTROL for this VMRUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AsidAssignment {
    /// The tag the vCPU should remember.
    pub tag: AsidTag,
    /// TLB_CONTROL for the coming VMRUN.
    pub tlb_control: TlbControl,
}

/// Errors constructing an allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AsidError {
    /// The CPU reports fewer than 2 ASIDs (none for guests).
    NoGuestAsids,
}

/// One physical CPU's ASID allocator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsidAllocator {
    /// Number of ASIDs, including 0.
    num_asids: u32,
    /// Next ASID to hand out in this generation.
    next: u32,
    /// Current generation; starts at 1 so that a zeroed tag is never current.
    generation: u64,
    /// Whether the next VMRUN must flush the whole TLB (start of a generation).
    flush_pending: bool,
}

impl AsidAllocator {
    /// An allocator for a CPU with `num_asids` ASIDs (CPUID Fn8000_000A_EBX). The first
    /// assignment flushes: whatever ran on this CPU before (a previous SVM user, firmware)
    /// may have left tagged translations.
    pub const fn new(num_asids: u32) -> Result<Self, AsidError> {
        if num_asids < 2 {
            return Err(AsidError::NoGuestAsids);
        }
        Ok(Self {
            num_asids,
            next: 1,
            generation: 1,
            flush_pending: true,
        })
    }

    /// Current generation.
    pub const fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `tag` is still valid on this CPU (same generation).
    pub const fn is_current(&self, tag: AsidTag) -> bool {
        tag.generation == self.generation && tag.asid != 0 && tag.asid < self.num_asids
    }

    /// Pick the ASID for a vCPU about to run on this CPU. `last` is the tag the vCPU got the
    /// last time it ran *on this CPU* (`None` if never, or if it ran elsewhere since: its
    /// translations here could be stale then, so it needs a new ASID).
    pub fn assign(&mut self, last: Option<AsidTag>) -> AsidAssignment {
        if let Some(tag) = last {
            if self.is_current(tag) {
                return AsidAssignment {
                    tag,
                    tlb_control: self.take_flush(),
                };
            }
        }
        if self.next >= self.num_asids {
            // Wrap: new generation, every older tag becomes stale, flush everything once.
            self.generation += 1;
            self.next = 1;
            self.flush_pending = true;
        }
        let tag = AsidTag {
            asid: self.next,
            generation: self.generation,
        };
        self.next += 1;
        AsidAssignment {
            tag,
            tlb_control: self.take_flush(),
        }
    }

    /// Force a new generation, e.g. after SVM was off on this CPU (offline/online) or after
    /// host page-table changes that must not survive in guest-tagged entries.
    pub fn flush_all(&mut self) {
        self.generation += 1;
        self.next = 1;
        self.flush_pending = true;
    }

    fn take_flush(&mut self) -> TlbControl {
        if core::mem::take(&mut self.flush_pending) {
            TlbControl::FlushAll
        } else {
            TlbControl::DoNothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_too_few() {
        assert_eq!(AsidAllocator::new(0), Err(AsidError::NoGuestAsids));
        assert_eq!(AsidAllocator::new(1), Err(AsidError::NoGuestAsids));
        assert!(AsidAllocator::new(2).is_ok());
    }

    #[test]
    fn first_assignment_flushes_then_reuse_is_free() {
        let mut a = AsidAllocator::new(16).unwrap();
        let first = a.assign(None);
        assert_eq!(
            first.tag,
            AsidTag {
                asid: 1,
                generation: 1
            }
        );
        assert_eq!(first.tlb_control, TlbControl::FlushAll);
        let again = a.assign(Some(first.tag));
        assert_eq!(again.tag, first.tag);
        assert_eq!(again.tlb_control, TlbControl::DoNothing);
        let second = a.assign(None);
        assert_eq!(second.tag.asid, 2);
        assert_eq!(second.tlb_control, TlbControl::DoNothing);
    }

    #[test]
    fn wrap_starts_new_generation_and_flushes_once() {
        // QEMU TCG: 16 ASIDs, so 15 for guests.
        let mut a = AsidAllocator::new(16).unwrap();
        let tags: Vec<_> = (0..15).map(|_| a.assign(None).tag).collect();
        assert_eq!(
            tags.iter().map(|t| t.asid).collect::<Vec<_>>(),
            (1..16).collect::<Vec<_>>()
        );
        assert!(tags.iter().all(|t| t.generation == 1));
        // The 16th wraps.
        let w = a.assign(None);
        assert_eq!(
            w.tag,
            AsidTag {
                asid: 1,
                generation: 2
            }
        );
        assert_eq!(w.tlb_control, TlbControl::FlushAll);
        // Old tags are stale now: their owner gets a fresh ASID, no second flush.
        let old = a.assign(Some(tags[3]));
        assert_eq!(
            old.tag,
            AsidTag {
                asid: 2,
                generation: 2
            }
        );
        assert_eq!(old.tlb_control, TlbControl::DoNothing);
        assert!(!a.is_current(tags[0]));
        assert!(a.is_current(w.tag));
    }

    #[test]
    fn no_two_current_owners_share_an_asid() {
        // Many vCPUs round-robin on a tiny CPU: the current tags are always distinct, and every
        // generation change is accompanied by exactly one flush.
        let mut a = AsidAllocator::new(4).unwrap();
        let mut tags: [Option<AsidTag>; 7] = [None; 7];
        let mut flushes = 0;
        for step in 0..1000usize {
            let v = (step * 5 + step / 3) % tags.len();
            let gen_before = a.generation();
            let r = a.assign(tags[v]);
            if r.tlb_control == TlbControl::FlushAll {
                flushes += 1;
            }
            tags[v] = Some(r.tag);
            let current: Vec<u32> = tags
                .iter()
                .flatten()
                .filter(|t| a.is_current(**t))
                .map(|t| t.asid)
                .collect();
            let mut dedup = current.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(dedup.len(), current.len(), "duplicate ASID at step {step}");
            assert!(current.iter().all(|&x| (1..4).contains(&x)));
            if a.generation() != gen_before {
                assert_eq!(r.tlb_control, TlbControl::FlushAll);
            }
        }
        assert_eq!(
            flushes as u64,
            a.generation(),
            "one flush per generation, including the first"
        );
    }

    #[test]
    fn explicit_flush_all() {
        let mut a = AsidAllocator::new(16).unwrap();
        let t = a.assign(None).tag;
        a.flush_all();
        let r = a.assign(Some(t));
        assert_ne!(r.tag, t);
        assert_eq!(r.tlb_control, TlbControl::FlushAll);
    }
}
