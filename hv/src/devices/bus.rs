//! A bus of address ranges: which device answers an access, and at which offset.
//!
//! Why: the port space and the guest-physical MMIO space are both sparse maps from address
//! ranges to devices (PC/AT ports 0x20, 0x40, 0x60, 0x70, 0x3F8...; the local APIC at
//! 0xFEE0_0000, the I/O APIC at 0xFEC0_0000). One generic, fixed-capacity map serves both, so
//! adding a device is an enum variant, one insert and one dispatch arm, and the rules live in one
//! place: ranges never overlap (an insert that would is refused), an address belongs to at most
//! one device, and the device sees the offset from its own base, never the absolute address
//! (STYLE.md point 13; the shape of Firecracker's `devices/bus.rs`, without `dyn` or locks).
//!
//! Lookups are a binary search over ranges kept sorted by base: no allocation, bounded time,
//! fit for an exit handler.

/// One mapping: `len` bytes (ports) from `base` belong to `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BusRange<Id> {
    /// First address.
    pub base: u64,
    /// Length in address units, at least 1.
    pub len: u64,
    /// The device.
    pub id: Id,
}

impl<Id> BusRange<Id> {
    /// The last address of the range.
    pub const fn last(&self) -> u64 {
        self.base + (self.len - 1)
    }

    const fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.len
    }
}

/// Why an insert was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BusError {
    /// The range is empty.
    Empty,
    /// The range runs past the end of the address space.
    Wraps,
    /// The range overlaps an existing one (whose base and length these are).
    Overlap {
        /// Base of the existing range.
        base: u64,
        /// Length of the existing range.
        len: u64,
    },
    /// The bus already holds its capacity of ranges.
    Full,
}

/// A fixed-capacity bus of at most `N` non-overlapping ranges, each naming a device `Id`.
#[derive(Clone, Debug)]
pub struct Bus<Id: Copy, const N: usize> {
    /// Sorted by base, pairwise disjoint.
    ranges: heapless::Vec<BusRange<Id>, N>,
}

impl<Id: Copy, const N: usize> Default for Bus<Id, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Id: Copy, const N: usize> Bus<Id, N> {
    /// An empty bus.
    pub const fn new() -> Self {
        Self {
            ranges: heapless::Vec::new(),
        }
    }

    /// Map `len` addresses from `base` to `id`, unless that overlaps a mapping already there.
    pub fn insert(&mut self, base: u64, len: u64, id: Id) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty);
        }
        let last = base.checked_add(len - 1).ok_or(BusError::Wraps)?;
        let at = self.ranges.partition_point(|r| r.base <= base);
        // Only the neighbours can overlap: the range starting at or before `base`, and the one
        // after it.
        let before = at.checked_sub(1).map(|i| self.ranges[i]);
        let after = self.ranges.get(at).copied();
        for r in [before, after].into_iter().flatten() {
            if r.base <= last && base <= r.last() {
                return Err(BusError::Overlap {
                    base: r.base,
                    len: r.len,
                });
            }
        }
        self.ranges
            .insert(at, BusRange { base, len, id })
            .map_err(|_| BusError::Full)
    }

    /// Remove the mapping that starts at `base`, returning its device.
    pub fn remove(&mut self, base: u64) -> Option<Id> {
        let i = self.ranges.iter().position(|r| r.base == base)?;
        Some(self.ranges.remove(i).id)
    }

    /// The device that owns `addr` and the offset of `addr` from that device's base.
    pub fn lookup(&self, addr: u64) -> Option<(Id, u64)> {
        let at = self.ranges.partition_point(|r| r.base <= addr);
        let r = self.ranges.get(at.checked_sub(1)?)?;
        r.contains(addr).then_some((r.id, addr - r.base))
    }

    /// The mappings, by ascending base.
    pub fn ranges(&self) -> &[BusRange<Id>] {
        &self.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lookup_gives_device_and_offset() {
        let mut b: Bus<char, 4> = Bus::new();
        b.insert(0x3F8, 8, 'u').unwrap();
        b.insert(0x60, 1, 'k').unwrap();
        b.insert(0x64, 1, 'c').unwrap();
        assert_eq!(b.lookup(0x3F8), Some(('u', 0)));
        assert_eq!(b.lookup(0x3FF), Some(('u', 7)));
        assert_eq!(b.lookup(0x400), None);
        assert_eq!(b.lookup(0x3F7), None);
        assert_eq!(b.lookup(0x64), Some(('c', 0)));
        assert_eq!(b.lookup(0x61), None);
        assert_eq!(b.lookup(0), None);
        let bases: Vec<u64> = b.ranges().iter().map(|r| r.base).collect();
        assert_eq!(bases, [0x60, 0x64, 0x3F8], "kept sorted");
    }

    #[test]
    fn overlaps_are_refused_and_neighbours_allowed() {
        let mut b: Bus<u8, 8> = Bus::new();
        b.insert(0x1000, 0x100, 1).unwrap();
        let overlap = Err(BusError::Overlap {
            base: 0x1000,
            len: 0x100,
        });
        assert_eq!(b.insert(0x1000, 1, 2), overlap);
        assert_eq!(b.insert(0x10FF, 0x10, 2), overlap);
        assert_eq!(b.insert(0x0F00, 0x101, 2), overlap);
        assert_eq!(b.insert(0x0F00, 0x1000, 2), overlap, "covering it entirely");
        assert_eq!(b.insert(0x1080, 1, 2), overlap, "inside it");
        b.insert(0x0F00, 0x100, 3).unwrap();
        b.insert(0x1100, 0x100, 4).unwrap();
        assert_eq!(b.lookup(0x0FFF), Some((3, 0xFF)));
        assert_eq!(b.lookup(0x1100), Some((4, 0)));
        assert_eq!(b.ranges().len(), 3);
    }

    #[test]
    fn argument_errors_and_capacity() {
        let mut b: Bus<u8, 2> = Bus::new();
        assert_eq!(b.insert(5, 0, 1), Err(BusError::Empty));
        assert_eq!(b.insert(u64::MAX, 2, 1), Err(BusError::Wraps));
        b.insert(u64::MAX, 1, 1).unwrap();
        assert_eq!(b.lookup(u64::MAX), Some((1, 0)));
        b.insert(0, 1, 2).unwrap();
        assert_eq!(b.insert(10, 1, 3), Err(BusError::Full));
        assert_eq!(b.remove(0), Some(2));
        assert_eq!(b.remove(0), None);
        b.insert(10, 1, 3).unwrap();
        assert_eq!(b.lookup(10), Some((3, 0)));
    }

    proptest! {
        /// Against a linear model: every accepted insert is disjoint from the others, every
        /// refused one overlaps one of them, and lookups agree.
        #[test]
        fn agrees_with_a_linear_model(
            inserts in proptest::collection::vec((0u64..0x200, 1u64..0x40), 0..24),
            probes in proptest::collection::vec(0u64..0x280, 32),
        ) {
            let mut b: Bus<usize, 16> = Bus::new();
            let mut model: Vec<(u64, u64, usize)> = Vec::new();
            for (i, &(base, len)) in inserts.iter().enumerate() {
                let clash = model.iter().find(|&&(b0, l0, _)| base < b0 + l0 && b0 < base + len);
                let r = b.insert(base, len, i);
                match clash {
                    Some(&(b0, l0, _)) if model.len() <= 16 => {
                        let refused = matches!(r, Err(BusError::Overlap { .. }));
                        prop_assert!(refused, "{:?} vs {:?}", r, (b0, l0));
                    }
                    None if model.len() < 16 => {
                        prop_assert_eq!(r, Ok(()));
                        model.push((base, len, i));
                    }
                    _ => prop_assert!(r.is_err()),
                }
            }
            for p in probes {
                let want = model
                    .iter()
                    .find(|&&(b0, l0, _)| p >= b0 && p < b0 + l0)
                    .map(|&(b0, _, id)| (id, p - b0));
                prop_assert_eq!(b.lookup(p), want);
            }
        }
    }
}
