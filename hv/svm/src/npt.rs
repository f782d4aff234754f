//! Nested page tables: guest-physical to host-physical translation.
//!
//! Why: with NP_ENABLE the CPU translates every guest-physical address through a second set
//! of page tables rooted at N_CR3 (APM 15.25 "Nested Paging"). They use the ordinary AMD64
//! 4-level long-mode format (the host's paging mode; Hermit does not use 5-level paging), so
//! building them is pure data-structure work: here over an abstract [`Frames`] provider,
//! tested with a `Vec`-backed fake; the kernel implements [`Frames`] over its physical memory.
//!
//! Rules that matter (APM 15.25.5 "Nested Table Walk"): nested walks are treated as *user*
//! accesses, so every level must have U/S = 1 or the guest takes #NPF on everything; NX in a
//! nested entry is honoured only if the host's EFER.NXE was set at VMRUN (otherwise bit 63 is
//! reserved and faults), so [`Perms::exec`] = `false` requires host NXE. Memory type comes
//! from the host PAT bits of the leaf combined with the guest PAT (G_PAT); leaves here use
//! PAT index 0 (write-back with the reset PAT).
#![forbid(unsafe_code)]

use crate::addr::{GuestPhys, HostPhys};
use bitflags::bitflags;

/// 4 KiB.
pub const PAGE_SIZE: u64 = 4096;
/// 2 MiB, a PDE leaf.
pub const LARGE_PAGE_SIZE: u64 = 2 * 1024 * 1024;
/// Entries per table.
pub const ENTRIES: usize = 512;
/// Guest-physical addresses a 4-level table can map: 48 bits.
pub const GPA_LIMIT: u64 = 1 << 48;
/// Host-physical addresses an entry can hold: 52 bits.
pub const HPA_LIMIT: u64 = 1 << 52;
/// Address bits 51:12 of an entry.
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

bitflags! {
    /// Page-table entry bits (APM 5.4 "Page-Translation-Table Entry Fields").
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PteFlags: u64 {
        /// Present.
        const PRESENT = 1 << 0;
        /// Writable.
        const WRITE = 1 << 1;
        /// User (required on every nested level).
        const USER = 1 << 2;
        /// Write-through.
        const PWT = 1 << 3;
        /// Cache disable.
        const PCD = 1 << 4;
        /// Accessed.
        const ACCESSED = 1 << 5;
        /// Dirty.
        const DIRTY = 1 << 6;
        /// Page size: this PDE/PDPE is a leaf.
        const LARGE = 1 << 7;
        /// Global.
        const GLOBAL = 1 << 8;
        /// No-execute (needs host EFER.NXE).
        const NX = 1 << 63;
        // Address bits and software bits are not flags.
        const _ = !0;
    }
}

/// Flags of non-leaf entries: the most permissive; leaves restrict.
const TABLE_FLAGS: u64 = PteFlags::PRESENT.bits() | PteFlags::WRITE.bits() | PteFlags::USER.bits();

/// Access rights of a mapping (reads are always allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perms {
    /// Writable.
    pub write: bool,
    /// Executable (`false` sets NX, which needs host EFER.NXE).
    pub exec: bool,
}

impl Perms {
    /// Read, write, execute: ordinary guest RAM.
    pub const RWX: Self = Self {
        write: true,
        exec: true,
    };
    /// Read and execute: e.g. a guest ROM image.
    pub const RX: Self = Self {
        write: false,
        exec: true,
    };
    /// Read and write, no execute.
    pub const RW: Self = Self {
        write: true,
        exec: false,
    };

    const fn leaf_bits(self) -> u64 {
        let mut v = PteFlags::PRESENT.bits() | PteFlags::USER.bits();
        if self.write {
            v |= PteFlags::WRITE.bits();
        }
        if !self.exec {
            v |= PteFlags::NX.bits();
        }
        v
    }

    const fn from_entry(e: u64) -> Self {
        Self {
            write: e & PteFlags::WRITE.bits() != 0,
            exec: e & PteFlags::NX.bits() == 0,
        }
    }
}

/// Where page-table frames come from. The kernel implements this over its physical memory
/// (allocation plus a physical-to-virtual mapping); tests use a `Vec`.
pub trait Frames {
    /// A new zeroed 4 KiB frame, or `None` when out of memory.
    fn alloc_zeroed(&mut self) -> Option<HostPhys>;
    /// The table stored in `frame`, if it is one of ours.
    fn table(&self, frame: HostPhys) -> Option<&[u64; ENTRIES]>;
    /// The table stored in `frame`, mutably.
    fn table_mut(&mut self, frame: HostPhys) -> Option<&mut [u64; ENTRIES]>;
}

/// Errors from building or walking the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NptError {
    /// An address or the length is not 4 KiB aligned.
    Unaligned,
    /// The range ends above 2^48 (guest) or 2^52 (host), or wraps.
    AddressTooLarge,
    /// The frame provider is out of memory.
    OutOfFrames,
    /// Part of the range is already mapped; nothing past `gpa` was mapped.
    AlreadyMapped {
        /// First conflicting guest-physical address.
        gpa: GuestPhys,
    },
    /// An entry points at a frame the provider does not know (corrupt tables).
    BadFrame(HostPhys),
}

/// Size of a translation's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// 4 KiB PTE.
    Size4K,
    /// 2 MiB PDE.
    Size2M,
}

/// Result of [`NestedPageTable::translate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The host-physical address of the byte.
    pub hpa: HostPhys,
    /// The page size that mapped it.
    pub size: PageSize,
    /// Rights of the leaf.
    pub perms: Perms,
}

/// How many leaves [`NestedPageTable::map`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MapStats {
    /// 4 KiB leaves.
    pub small: u64,
    /// 2 MiB leaves.
    pub large: u64,
}

/// A nested page-table hierarchy identified by its root (what goes into N_CR3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NestedPageTable {
    root: HostPhys,
}

const fn index(gpa: u64, level: u32) -> usize {
    ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) as usize
}

impl NestedPageTable {
    /// Allocate an empty root (PML4).
    pub fn new<F: Frames>(frames: &mut F) -> Result<Self, NptError> {
        Ok(Self {
            root: frames.alloc_zeroed().ok_or(NptError::OutOfFrames)?,
        })
    }

    /// The root's host-physical address, for the VMCB's N_CR3.
    pub const fn root(&self) -> HostPhys {
        self.root
    }

    /// Map `len` bytes at `gpa` to `hpa`, using 2 MiB leaves wherever both addresses are
    /// 2 MiB aligned, at least 2 MiB remain, and no 4 KiB table already covers the slot; 4 KiB
    /// leaves elsewhere. On error, the part before the failing page stays mapped.
    pub fn map<F: Frames>(
        &mut self,
        frames: &mut F,
        gpa: GuestPhys,
        hpa: HostPhys,
        len: u64,
        perms: Perms,
    ) -> Result<MapStats, NptError> {
        let (g0, h0) = (gpa.as_u64(), hpa.as_u64());
        if (g0 | h0 | len) & (PAGE_SIZE - 1) != 0 {
            return Err(NptError::Unaligned);
        }
        let fits = |start: u64, limit: u64| start.checked_add(len).is_some_and(|end| end <= limit);
        if !fits(g0, GPA_LIMIT) || !fits(h0, HPA_LIMIT) {
            return Err(NptError::AddressTooLarge);
        }
        let mut stats = MapStats::default();
        let mut off = 0;
        while off < len {
            let (g, h) = (g0 + off, h0 + off);
            if (g | h) % LARGE_PAGE_SIZE == 0 && len - off >= LARGE_PAGE_SIZE {
                let pd = self.walk_create(frames, g, 2)?;
                let t = frames.table_mut(pd).ok_or(NptError::BadFrame(pd))?;
                let e = &mut t[index(g, 2)];
                if *e == 0 {
                    *e = h | perms.leaf_bits() | PteFlags::LARGE.bits();
                    stats.large += 1;
                    off += LARGE_PAGE_SIZE;
                    continue;
                }
                if *e & PteFlags::LARGE.bits() != 0 {
                    return Err(NptError::AlreadyMapped { gpa: GuestPhys(g) });
                }
                // A 4 KiB table already covers this 2 MiB slot: fill it page by page.
            }
            let pt = self.walk_create(frames, g, 1)?;
            let t = frames.table_mut(pt).ok_or(NptError::BadFrame(pt))?;
            let e = &mut t[index(g, 1)];
            if *e & PteFlags::PRESENT.bits() != 0 {
                return Err(NptError::AlreadyMapped { gpa: GuestPhys(g) });
            }
            *e = h | perms.leaf_bits();
            stats.small += 1;
            off += PAGE_SIZE;
        }
        Ok(stats)
    }

    /// Walk from the root down to the table at `level` (2 = PD, 1 = PT) for `gpa`, creating
    /// missing intermediate tables.
    fn walk_create<F: Frames>(
        &self,
        frames: &mut F,
        gpa: u64,
        level: u32,
    ) -> Result<HostPhys, NptError> {
        let mut table = self.root;
        let mut l = 4;
        while l > level {
            let i = index(gpa, l);
            let e = frames.table(table).ok_or(NptError::BadFrame(table))?[i];
            table = if e & PteFlags::PRESENT.bits() == 0 {
                let new = frames.alloc_zeroed().ok_or(NptError::OutOfFrames)?;
                frames.table_mut(table).ok_or(NptError::BadFrame(table))?[i] =
                    new.as_u64() | TABLE_FLAGS;
                new
            } else if e & PteFlags::LARGE.bits() != 0 {
                // A larger leaf already covers this address.
                return Err(NptError::AlreadyMapped {
                    gpa: GuestPhys(gpa & !(PAGE_SIZE - 1)),
                });
            } else {
                HostPhys(e & ADDR_MASK)
            };
            l -= 1;
        }
        Ok(table)
    }

    /// Translate one guest-physical address as the CPU would (`Ok(None)` = not present).
    pub fn translate<F: Frames>(
        &self,
        frames: &F,
        gpa: GuestPhys,
    ) -> Result<Option<Translation>, NptError> {
        let g = gpa.as_u64();
        if g >= GPA_LIMIT {
            return Ok(None);
        }
        let mut table = self.root;
        let mut level = 4;
        loop {
            let e = frames.table(table).ok_or(NptError::BadFrame(table))?[index(g, level)];
            if e & PteFlags::PRESENT.bits() == 0 {
                return Ok(None);
            }
            let large = e & PteFlags::LARGE.bits() != 0;
            if level == 1 || (level == 2 && large) {
                let (size, mask) = if level == 1 {
                    (PageSize::Size4K, PAGE_SIZE - 1)
                } else {
                    (PageSize::Size2M, LARGE_PAGE_SIZE - 1)
                };
                let hpa = HostPhys((e & ADDR_MASK & !mask) | (g & mask));
                return Ok(Some(Translation {
                    hpa,
                    size,
                    perms: Perms::from_entry(e),
                }));
            }
            if large {
                // 1 GiB leaves are never created here.
                return Err(NptError::BadFrame(HostPhys(e & ADDR_MASK)));
            }
            table = HostPhys(e & ADDR_MASK);
            level -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames at host-physical `BASE + i * 4096`, with an optional budget.
    struct VecFrames {
        tables: Vec<Box<[u64; ENTRIES]>>,
        budget: usize,
    }

    const BASE: u64 = 0x7000_0000;

    impl VecFrames {
        fn new(budget: usize) -> Self {
            Self {
                tables: Vec::new(),
                budget,
            }
        }
        fn idx(&self, f: HostPhys) -> Option<usize> {
            let off = f.as_u64().checked_sub(BASE)?;
            (off % PAGE_SIZE == 0 && ((off / PAGE_SIZE) as usize) < self.tables.len())
                .then_some((off / PAGE_SIZE) as usize)
        }
    }

    impl Frames for VecFrames {
        fn alloc_zeroed(&mut self) -> Option<HostPhys> {
            if self.tables.len() >= self.budget {
                return None;
            }
            self.tables.push(Box::new([0; ENTRIES]));
            Some(HostPhys(BASE + (self.tables.len() as u64 - 1) * PAGE_SIZE))
        }
        fn table(&self, f: HostPhys) -> Option<&[u64; ENTRIES]> {
            self.idx(f).map(|i| &*self.tables[i])
        }
        fn table_mut(&mut self, f: HostPhys) -> Option<&mut [u64; ENTRIES]> {
            self.idx(f).map(|i| &mut *self.tables[i])
        }
    }

    const MIB: u64 = 1024 * 1024;

    fn tr(npt: &NestedPageTable, f: &VecFrames, gpa: u64) -> Option<Translation> {
        npt.translate(f, GuestPhys(gpa)).unwrap()
    }

    #[test]
    fn large_pages_where_aligned() {
        let mut f = VecFrames::new(64);
        let mut npt = NestedPageTable::new(&mut f).unwrap();
        let s = npt
            .map(
                &mut f,
                GuestPhys(0),
                HostPhys(0x4000_0000),
                6 * MIB,
                Perms::RWX,
            )
            .unwrap();
        assert_eq!(s, MapStats { small: 0, large: 3 });
        assert_eq!(f.tables.len(), 3, "PML4 + PDPT + PD");
        let t = tr(&npt, &f, 0x0012_3456).unwrap();
        assert_eq!(
            t,
            Translation {
                hpa: HostPhys(0x4012_3456),
                size: PageSize::Size2M,
                perms: Perms::RWX
            }
        );
        assert_eq!(
            tr(&npt, &f, 6 * MIB - 1).unwrap().hpa,
            HostPhys(0x4000_0000 + 6 * MIB - 1)
        );
        assert_eq!(tr(&npt, &f, 6 * MIB), None);
        assert_eq!(npt.root(), HostPhys(BASE));
    }

    #[test]
    fn mixed_small_and_large() {
        // 1 MiB .. 5 MiB with matching alignment: 256 small, one large, 256 small.
        let mut f = VecFrames::new(64);
        let mut npt = NestedPageTable::new(&mut f).unwrap();
        let s = npt
            .map(
                &mut f,
                GuestPhys(MIB),
                HostPhys(0x1_0010_0000),
                4 * MIB,
                Perms::RWX,
            )
            .unwrap();
        assert_eq!(
            s,
            MapStats {
                small: 512,
                large: 1
            }
        );
        assert_eq!(tr(&npt, &f, MIB).unwrap().size, PageSize::Size4K);
        assert_eq!(tr(&npt, &f, 2 * MIB).unwrap().size, PageSize::Size2M);
        assert_eq!(tr(&npt, &f, 4 * MIB + 0x10).unwrap().size, PageSize::Size4K);
        for gpa in (MIB..5 * MIB).step_by(0x1_1000) {
            assert_eq!(
                tr(&npt, &f, gpa).unwrap().hpa,
                HostPhys(0x1_0000_0000 + gpa)
            );
        }
        assert_eq!(tr(&npt, &f, MIB - 1), None);
    }

    #[test]
    fn misaligned_host_forces_small_pages() {
        let mut f = VecFrames::new(64);
        let mut npt = NestedPageTable::new(&mut f).unwrap();
        let s = npt
            .map(
                &mut f,
                GuestPhys(0),
                HostPhys(0x3000),
                2 * MIB + 0x2000,
                Perms::RX,
            )
            .unwrap();
        assert_eq!(
            s,
            MapStats {
                small: 514,
                large: 0
            }
        );
        let t = tr(&npt, &f, 0x20_1FFF).unwrap();
        assert_eq!(t.hpa, HostPhys(0x3000 + 0x20_1FFF));
        assert_eq!(t.perms, Perms::RX);
    }

    #[test]
    fn entry_bits() {
        let mut f = VecFrames::new(64);
        let mut npt = NestedPageTable::new(&mut f).unwrap();
        npt.map(
            &mut f,
            GuestPhys(0x1000),
            HostPhys(0x9000),
            PAGE_SIZE,
            Perms::RW,
        )
        .unwrap();
        npt.map(
            &mut f,
            GuestPhys(0x40_0000),
            HostPhys(0x80_0000),
            LARGE_PAGE_SIZE,
            Perms::RX,
        )
        .unwrap();
        // Every non-leaf entry is P|W|U; leaves are P|U plus rights.
        let pml4 = f.table(npt.root()).unwrap();
        assert_eq!(pml4[0] & 0xFFF, 0x7);
        let pdpt = f.table(HostPhys(pml4[0] & ADDR_MASK)).unwrap();
        assert_eq!(pdpt[0] & 0xFFF, 0x7);
        let pd = f.table(HostPhys(pdpt[0] & ADDR_MASK)).unwrap();
        assert_eq!(pd[0] & 0xFFF, 0x7);
        assert_eq!(pd[2], 0x80_0000 | 0x85, "2 MiB leaf: P|U|PS, read-only");
        let pt = f.table(HostPhys(pd[0] & ADDR_MASK)).unwrap();
        assert_eq!(pt[1], 0x9000 | 0x7 | (1 << 63), "P|W|U|NX");
    }

    #[test]
    fn overlaps_are_refused() {
        let mut f = VecFrames::new(64);
        let mut npt = NestedPageTable::new(&mut f).unwrap();
        npt.map(&mut f, GuestPhys(0), HostPhys(0), 2 * MIB, Perms::RWX)
            .unwrap();
        assert_eq!(
            npt.map(
                &mut f,
                GuestPhys(0x1000),
                HostPhys(0x1000),
                PAGE_SIZE,
                Perms::RWX
            ),
            Err(NptError::AlreadyMapped {
                gpa: GuestPhys(0x1000)
            })
        );
        assert_eq!(
            npt.map(&mut f, GuestPhys(0), HostPhys(0), 2 * MIB, Perms::RWX),
            Err(NptError::AlreadyMapped { gpa: GuestPhys(0) })
        );
        // A 2 MiB-aligned range over an existing 4 KiB table falls back to 4 KiB pages and
        // stops at the first present one.
        npt.map(
            &mut f,
            GuestPhys(4 * MIB + 0x5000),
            HostPhys(0x5000),
            PAGE_SIZE,
            Perms::RWX,
        )
        .unwrap();
        assert_eq!(
            npt.map(
                &mut f,
                GuestPhys(4 * MIB),
                HostPhys(4 * MIB),
                2 * MIB,
                Perms::RWX
            ),
            Err(NptError::AlreadyMapped {
                gpa: GuestPhys(4 * MIB + 0x5000)
            })
        );
        assert_eq!(
            tr(&npt, &f, 4 * MIB + 0x4000).unwrap().size,
            PageSize::Size4K
        );
    }

    #[test]
    fn argument_errors() {
        let mut f = VecFrames::new(64);
        let mut npt = NestedPageTable::new(&mut f).unwrap();
        assert_eq!(
            npt.map(&mut f, GuestPhys(0x10), HostPhys(0), PAGE_SIZE, Perms::RWX),
            Err(NptError::Unaligned)
        );
        assert_eq!(
            npt.map(&mut f, GuestPhys(0), HostPhys(0x10), PAGE_SIZE, Perms::RWX),
            Err(NptError::Unaligned)
        );
        assert_eq!(
            npt.map(&mut f, GuestPhys(0), HostPhys(0), 10, Perms::RWX),
            Err(NptError::Unaligned)
        );
        assert_eq!(
            npt.map(
                &mut f,
                GuestPhys(GPA_LIMIT - PAGE_SIZE),
                HostPhys(0),
                2 * PAGE_SIZE,
                Perms::RWX
            ),
            Err(NptError::AddressTooLarge)
        );
        assert_eq!(
            npt.map(
                &mut f,
                GuestPhys(0),
                HostPhys(u64::MAX & !0xFFF),
                PAGE_SIZE,
                Perms::RWX
            ),
            Err(NptError::AddressTooLarge)
        );
        assert_eq!(
            npt.map(&mut f, GuestPhys(0), HostPhys(0), 0, Perms::RWX),
            Ok(MapStats::default())
        );
        assert_eq!(npt.translate(&f, GuestPhys(GPA_LIMIT)), Ok(None));
    }

    #[test]
    fn out_of_frames() {
        let mut f = VecFrames::new(2); // root + PDPT, no PD
        let mut npt = NestedPageTable::new(&mut f).unwrap();
        assert_eq!(
            npt.map(&mut f, GuestPhys(0), HostPhys(0), PAGE_SIZE, Perms::RWX),
            Err(NptError::OutOfFrames)
        );
        let mut none = VecFrames::new(0);
        assert_eq!(NestedPageTable::new(&mut none), Err(NptError::OutOfFrames));
    }

    #[test]
    fn high_guest_addresses_use_other_indices() {
        let mut f = VecFrames::new(64);
        let mut npt = NestedPageTable::new(&mut f).unwrap();
        let g = 0x0000_7F80_0000_0000; // PML4 index 255
        npt.map(
            &mut f,
            GuestPhys(g),
            HostPhys(0x20_0000),
            LARGE_PAGE_SIZE,
            Perms::RWX,
        )
        .unwrap();
        assert_eq!(f.table(npt.root()).unwrap()[255] & 1, 1);
        assert_eq!(tr(&npt, &f, g + 0x1234).unwrap().hpa, HostPhys(0x20_1234));
        assert_eq!(tr(&npt, &f, 0x1234), None);
    }
}
