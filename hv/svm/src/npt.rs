//! Nested page tables: guest-physical to host-physical translation.
//!
//! Why: with NP_ENABLE the CPU translates every guest-physical address through a second set
//! of page tables rooted at N_CR3 (APM 15.25 "Nested Paging"). They use the ordinary AMD64
//! 4-level long-mode format (the host's paging mode; Hermit does not use 5-level paging). The
//! building and walking are the core's ([`hv::mem::nested`], shared with VMX's EPT); this file
//! is the entry format and a wrapper keeping this crate's names. The kernel implements
//! [`Frames`] over its physical memory.
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
use hv::mem::nested::{self, EntryFormat, NestedTable};

pub use hv::mem::nested::{
    ADDR_MASK, ENTRIES, GPA_LIMIT, HPA_LIMIT, LARGE_PAGE_SIZE, MapStats, PAGE_SIZE, PageSize, Perms,
};

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

/// The NPT entry format: long-mode page-table entries, U/S set everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NptFormat {}

impl EntryFormat for NptFormat {
    const TABLE: u64 = PteFlags::PRESENT.bits() | PteFlags::WRITE.bits() | PteFlags::USER.bits();
    const LARGE: u64 = PteFlags::LARGE.bits();

    fn present(e: u64) -> bool {
        e & PteFlags::PRESENT.bits() != 0
    }

    fn leaf_bits(perms: Perms) -> u64 {
        let mut v = PteFlags::PRESENT.bits() | PteFlags::USER.bits();
        if perms.write {
            v |= PteFlags::WRITE.bits();
        }
        if !perms.exec {
            v |= PteFlags::NX.bits();
        }
        v
    }

    fn perms(e: u64) -> Perms {
        Perms {
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

/// This crate's [`Frames`] as the core's frame traits.
struct Core<'a, F: ?Sized>(&'a mut F);
/// This crate's [`Frames`], read-only, as the core's.
struct CoreRef<'a, F: ?Sized>(&'a F);

impl<F: Frames + ?Sized> nested::TableFrames for Core<'_, F> {
    fn table(&self, frame: HostPhys) -> Option<&[u64; ENTRIES]> {
        self.0.table(frame)
    }
}

impl<F: Frames + ?Sized> nested::Frames for Core<'_, F> {
    fn alloc_zeroed(&mut self) -> Option<HostPhys> {
        self.0.alloc_zeroed()
    }
    fn table_mut(&mut self, frame: HostPhys) -> Option<&mut [u64; ENTRIES]> {
        self.0.table_mut(frame)
    }
}

impl<F: Frames + ?Sized> nested::TableFrames for CoreRef<'_, F> {
    fn table(&self, frame: HostPhys) -> Option<&[u64; ENTRIES]> {
        self.0.table(frame)
    }
}

/// Errors from building or walking the tables.
pub type NptError = nested::NestedError;

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

/// A nested page-table hierarchy identified by its root (what goes into N_CR3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NestedPageTable {
    table: NestedTable<NptFormat>,
}

impl NestedPageTable {
    /// Allocate an empty root (PML4).
    pub fn new<F: Frames>(frames: &mut F) -> Result<Self, NptError> {
        Ok(Self {
            table: NestedTable::new(&mut Core(frames))?,
        })
    }

    /// The root's host-physical address, for the VMCB's N_CR3.
    pub const fn root(&self) -> HostPhys {
        self.table.root()
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
        self.table.map(&mut Core(frames), gpa, hpa, len, perms)
    }

    /// Translate one guest-physical address as the CPU would (`Ok(None)` = not present).
    pub fn translate<F: Frames>(
        &self,
        frames: &F,
        gpa: GuestPhys,
    ) -> Result<Option<Translation>, NptError> {
        Ok(self
            .table
            .translate(&CoreRef(frames), gpa)?
            .map(|l| Translation {
                hpa: l.hpa,
                size: l.size,
                perms: NptFormat::perms(l.entry),
            }))
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
