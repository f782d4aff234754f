//! Guest time: one clock per VM, derived from the guest's TSC at a fixed ratio.
//!
//! Why one clock: a guest operating system cross-calibrates its timers (Linux measures the TSC
//! against PIT channel 2, then checks the local APIC timer against the PIT). If each virtual
//! timer ran on the host's wall clock, emulation jitter would make those measurements disagree
//! and the guest would mark its TSC unstable or disable its APIC timer. So every device timer
//! (PIT, RTC, local APIC timer, TSC deadline) computes its state from [`GuestTime`], which is a
//! pure function of the guest TSC: `ns = (tsc - epoch) * 1e9 / tsc_hz`. Two timers read at the
//! same guest TSC always agree exactly.
//!
//! Devices never read a clock themselves (STYLE.md point 5): the caller passes `now` into every
//! access and asks each device for its next deadline, which the CPU's timer queue turns back
//! into a guest TSC value with [`GuestClock::tsc_at`].

/// A point in a VM's guest time: nanoseconds since the clock's epoch (the VM's power-on or
/// its last reset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestTime(pub u64);

impl GuestTime {
    /// The epoch.
    pub const ZERO: GuestTime = GuestTime(0);

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + ns`, saturating.
    pub const fn plus_nanos(self, ns: u64) -> GuestTime {
        GuestTime(self.0.saturating_add(ns))
    }

    /// Nanoseconds from `earlier` to `self` (0 if `earlier` is later).
    pub const fn since(self, earlier: GuestTime) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Whole periods of a clock of `hz` that have elapsed from the epoch to `self`
    /// (`floor(ns * hz / 1e9)`), exact for any `ns` and `hz` (128-bit intermediate).
    pub const fn ticks(self, hz: u64) -> u64 {
        let t = (self.0 as u128 * hz as u128) / NANOS_PER_SEC as u128;
        if t > u64::MAX as u128 {
            u64::MAX
        } else {
            t as u64
        }
    }

    /// The first guest time at which a clock of `hz` (started at the epoch) has counted
    /// `ticks` periods: the inverse of [`ticks`](Self::ticks), rounded up, so that
    /// `GuestTime::at_tick(n, hz).ticks(hz) >= n` (exactly `n` for clocks up to 1 GHz, which
    /// every device clock is) and one nanosecond earlier is still short of `n`.
    pub const fn at_tick(ticks: u64, hz: u64) -> GuestTime {
        let num = ticks as u128 * NANOS_PER_SEC as u128;
        let ns = num.div_ceil(hz as u128);
        GuestTime(if ns > u64::MAX as u128 {
            u64::MAX
        } else {
            ns as u64
        })
    }
}

/// Nanoseconds per second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A VM's guest clock: maps guest TSC values to [`GuestTime`] and back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuestClock {
    /// Guest TSC ticks per second (the host's TSC rate: the guest TSC runs at host speed).
    tsc_hz: u64,
    /// The guest TSC value at the epoch.
    epoch_tsc: u64,
}

impl GuestClock {
    /// A clock whose epoch is guest TSC `epoch_tsc`, ticking `tsc_hz` times a second
    /// (`tsc_hz` of 0 is taken as 1 so the clock never divides by zero).
    pub const fn new(tsc_hz: u64, epoch_tsc: u64) -> GuestClock {
        GuestClock {
            tsc_hz: if tsc_hz == 0 { 1 } else { tsc_hz },
            epoch_tsc,
        }
    }

    /// Guest TSC ticks per second.
    pub const fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// The guest TSC at the epoch.
    pub const fn epoch_tsc(&self) -> u64 {
        self.epoch_tsc
    }

    /// Guest time at guest TSC `tsc` (the epoch for a TSC before it).
    pub const fn now(&self, tsc: u64) -> GuestTime {
        // floor(ticks * 1e9 / hz) in u64 arithmetic, as whole seconds plus the remainder (the
        // exit path calls this on every exit; a u128 division is a library call of its own).
        // Exact: ticks = s * hz + r gives floor(s * 1e9 + r * 1e9 / hz), and r * 1e9 < hz * 1e9
        // fits u64 for any TSC below 18 GHz (larger rates take the u128 path).
        let ticks = tsc.saturating_sub(self.epoch_tsc);
        if self.tsc_hz < u64::MAX / NANOS_PER_SEC {
            let secs = ticks / self.tsc_hz;
            let rem = ticks % self.tsc_hz;
            let ns = match secs.checked_mul(NANOS_PER_SEC) {
                Some(n) => n.saturating_add(rem * NANOS_PER_SEC / self.tsc_hz),
                None => u64::MAX,
            };
            return GuestTime(ns);
        }
        let ns = ticks as u128 * NANOS_PER_SEC as u128 / self.tsc_hz as u128;
        GuestTime(if ns > u64::MAX as u128 {
            u64::MAX
        } else {
            ns as u64
        })
    }

    /// The first guest TSC value at which [`now`](Self::now) reaches `t`.
    pub const fn tsc_at(&self, t: GuestTime) -> u64 {
        let ticks = (t.0 as u128 * self.tsc_hz as u128).div_ceil(NANOS_PER_SEC as u128);
        let tsc = self.epoch_tsc as u128 + ticks;
        if tsc > u64::MAX as u128 {
            u64::MAX
        } else {
            tsc as u64
        }
    }
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn u64_split_matches_the_exact_u128_formula() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for hz in [
            1,
            3,
            1_000_000_000,
            2_445_000_000,
            3_999_999_937,
            17_000_000_000,
        ] {
            let c = GuestClock::new(hz, 1_000);
            for _ in 0..2_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let tsc = x >> (x % 40);
                let exact = (tsc.saturating_sub(1_000) as u128 * 1_000_000_000 / hz as u128)
                    .min(u64::MAX as u128) as u64;
                assert_eq!(c.now(tsc), GuestTime(exact), "hz={hz} tsc={tsc}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_second() {
        let c = GuestClock::new(2_445_000_000, 1000);
        assert_eq!(c.now(1000), GuestTime::ZERO);
        assert_eq!(c.now(999), GuestTime::ZERO);
        assert_eq!(c.now(1000 + 2_445_000_000), GuestTime(NANOS_PER_SEC));
        assert_eq!(c.tsc_at(GuestTime(NANOS_PER_SEC)), 1000 + 2_445_000_000);
    }

    #[test]
    fn pit_ticks() {
        // 1,193,182 Hz: one second of guest time is exactly that many PIT input clocks.
        assert_eq!(GuestTime(NANOS_PER_SEC).ticks(1_193_182), 1_193_182);
        assert_eq!(GuestTime(837).ticks(1_193_182), 0);
        assert_eq!(GuestTime(839).ticks(1_193_182), 1);
        assert_eq!(GuestTime::at_tick(1, 1_193_182), GuestTime(839));
    }

    proptest! {
        #[test]
        fn tsc_round_trip(hz in 1_000_000u64..10_000_000_000, epoch in 0u64..1 << 50, ns in 0u64..1 << 50) {
            let c = GuestClock::new(hz, epoch);
            let t = GuestTime(ns);
            let tsc = c.tsc_at(t);
            prop_assert!(c.now(tsc) >= t);
            prop_assert!(tsc == epoch || c.now(tsc - 1) < t);
        }

        #[test]
        fn tick_round_trip(hz in 1u64..10_000_000_000, n in 0u64..1 << 40) {
            let t = GuestTime::at_tick(n, hz);
            prop_assert!(t.ticks(hz) >= n);
            if hz <= NANOS_PER_SEC {
                prop_assert_eq!(t.ticks(hz), n);
            }
            prop_assert!(t.0 == 0 || GuestTime(t.0 - 1).ticks(hz) < n);
        }

        #[test]
        fn monotonic(hz in 1u64..10_000_000_000, a in 0u64..1 << 60, b in 0u64..1 << 60) {
            let c = GuestClock::new(hz, 0);
            if a <= b {
                prop_assert!(c.now(a) <= c.now(b));
            }
        }
    }
}
