//! Extended page tables: guest-physical to host-physical translation.
//!
//! Why: with "enable EPT" the CPU translates every guest-physical address through a 4-level
//! hierarchy rooted at the EPT pointer (SDM vol. 3C "EPT Translation Mechanism"). Building it
//! is the core's generic walker ([`hv::mem::nested`], shared with SVM's NPT) over an abstract
//! [`Frames`] provider (the same shape as the SVM crate's `npt::Frames`, so the kernel's frame
//! allocator serves both); this file is the EPT entry format and a wrapper keeping its names.
//!
//! Format (SDM vol. 3C "Format of EPT Paging-Structure Entries"): bits 2:0 are read, write and
//! execute permission; an entry is present if any of them is set. Non-leaf entries here allow
//! everything (bits 2:0 = 7, bits 7:3 = 0) and leaves restrict. Leaves carry the memory type
//! in bits 5:3 (write-back, 6, here; the guest's PAT is combined with it because "ignore PAT",
//! bit 6, stays 0) and bit 7 marks a 2 MiB PDE leaf. Reads are always allowed: write without
//! read is an EPT misconfiguration, and execute-only needs a capability we do not require.
//! Accessed/dirty flags (bits 8, 9) are written by the CPU only if the EPTP enables them
//! ([`eptp`]).
#![forbid(unsafe_code)]

use crate::addr::{GuestPhys, HostPhys};
use crate::caps::MemoryType;
use bitflags::bitflags;
use hv::mem::nested::{self, EntryFormat, NestedTable};

pub use hv::mem::nested::{
    ADDR_MASK, ENTRIES, GPA_LIMIT, HPA_LIMIT, LARGE_PAGE_SIZE, MapStats, PAGE_SIZE, PageSize, Perms,
};

bitflags! {
    /// EPT entry bits.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EptFlags: u64 {
        /// Read access.
        const READ = 1 << 0;
        /// Write access.
        const WRITE = 1 << 1;
        /// Execute access (supervisor-mode linear addresses with mode-based execute control).
        const EXEC = 1 << 2;
        /// Memory type, bits 5:3 (leaves only): write-back.
        const MEMTYPE_WB = 6 << 3;
        /// Ignore the guest PAT (leaves only).
        const IGNORE_PAT = 1 << 6;
        /// This PDE/PDPTE is a leaf.
        const LARGE = 1 << 7;
        /// Accessed (with A/D enabled in the EPTP).
        const ACCESSED = 1 << 8;
        /// Dirty (leaves, with A/D enabled).
        const DIRTY = 1 << 9;
        /// User-mode execute (mode-based execute control).
        const USER_EXEC = 1 << 10;
        /// Suppress #VE.
        const SUPPRESS_VE = 1 << 63;
        // Address bits and ignored bits are not flags.
        const _ = !0;
    }
}

/// Bits 2:0: the entry is present if any is set.
const RWX: u64 = 0b111;

/// The EPT entry format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EptFormat {}

impl EntryFormat for EptFormat {
    const TABLE: u64 = RWX;
    const LARGE: u64 = EptFlags::LARGE.bits();

    fn present(e: u64) -> bool {
        e & RWX != 0
    }

    fn leaf_bits(perms: Perms) -> u64 {
        let mut v = EptFlags::READ.bits() | EptFlags::MEMTYPE_WB.bits();
        if perms.write {
            v |= EptFlags::WRITE.bits();
        }
        if perms.exec {
            v |= EptFlags::EXEC.bits();
        }
        v
    }

    fn perms(e: u64) -> Perms {
        Perms {
            write: e & EptFlags::WRITE.bits() != 0,
            exec: e & EptFlags::EXEC.bits() != 0,
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
pub type EptError = nested::NestedError;

/// Result of [`Ept::translate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The host-physical address of the byte.
    pub hpa: HostPhys,
    /// The page size that mapped it.
    pub size: PageSize,
    /// Rights of the leaf.
    pub perms: Perms,
    /// Memory type of the leaf.
    pub memory_type: MemoryType,
}

/// The EPT pointer for a 4-level hierarchy at `root` in write-back memory (SDM vol. 3C
/// "Extended-Page-Table Pointer (EPTP)"): memory type 2:0 = 6, page-walk length minus one 5:3
/// = 3, A/D enable bit 6 (only if [`crate::caps::EptVpidCap::ACCESSED_DIRTY`]), root 51:12.
pub const fn eptp(root: HostPhys, accessed_dirty: bool) -> u64 {
    let mut v = (root.as_u64() & ADDR_MASK) | MemoryType::WriteBack.raw() as u64 | (3 << 3);
    if accessed_dirty {
        v |= 1 << 6;
    }
    v
}

/// An EPT hierarchy identified by its root (the PML4 the EPTP points at).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ept {
    table: NestedTable<EptFormat>,
}

impl Ept {
    /// Allocate an empty root (PML4).
    pub fn new<F: Frames>(frames: &mut F) -> Result<Self, EptError> {
        Ok(Self {
            table: NestedTable::new(&mut Core(frames))?,
        })
    }

    /// The root's host-physical address.
    pub const fn root(&self) -> HostPhys {
        self.table.root()
    }

    /// The EPTP value for the VMCS ([`eptp`] of the root).
    pub const fn eptp(&self, accessed_dirty: bool) -> u64 {
        eptp(self.root(), accessed_dirty)
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
    ) -> Result<MapStats, EptError> {
        self.table.map(&mut Core(frames), gpa, hpa, len, perms)
    }

    /// Translate one guest-physical address as the CPU would (`Ok(None)` = not present).
    pub fn translate<F: Frames>(
        &self,
        frames: &F,
        gpa: GuestPhys,
    ) -> Result<Option<Translation>, EptError> {
        Ok(self
            .table
            .translate(&CoreRef(frames), gpa)?
            .map(|l| Translation {
                hpa: l.hpa,
                size: l.size,
                perms: EptFormat::perms(l.entry),
                memory_type: MemoryType::from_raw(((l.entry >> 3) & 7) as u8),
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

    fn tr(ept: &Ept, f: &VecFrames, gpa: u64) -> Option<Translation> {
        ept.translate(f, GuestPhys(gpa)).unwrap()
    }

    #[test]
    fn large_pages_where_aligned() {
        let mut f = VecFrames::new(64);
        let mut ept = Ept::new(&mut f).unwrap();
        let s = ept
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
        let t = tr(&ept, &f, 0x0012_3456).unwrap();
        assert_eq!(
            t,
            Translation {
                hpa: HostPhys(0x4012_3456),
                size: PageSize::Size2M,
                perms: Perms::RWX,
                memory_type: MemoryType::WriteBack,
            }
        );
        assert_eq!(
            tr(&ept, &f, 6 * MIB - 1).unwrap().hpa,
            HostPhys(0x4000_0000 + 6 * MIB - 1)
        );
        assert_eq!(tr(&ept, &f, 6 * MIB), None);
        assert_eq!(ept.root(), HostPhys(BASE));
    }

    #[test]
    fn mixed_small_and_large() {
        // 1 MiB .. 5 MiB with matching alignment: 256 small, one large, 256 small.
        let mut f = VecFrames::new(64);
        let mut ept = Ept::new(&mut f).unwrap();
        let s = ept
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
        assert_eq!(tr(&ept, &f, MIB).unwrap().size, PageSize::Size4K);
        assert_eq!(tr(&ept, &f, 2 * MIB).unwrap().size, PageSize::Size2M);
        assert_eq!(tr(&ept, &f, 4 * MIB + 0x10).unwrap().size, PageSize::Size4K);
        for gpa in (MIB..5 * MIB).step_by(0x1_1000) {
            assert_eq!(
                tr(&ept, &f, gpa).unwrap().hpa,
                HostPhys(0x1_0000_0000 + gpa)
            );
        }
        assert_eq!(tr(&ept, &f, MIB - 1), None);
    }

    #[test]
    fn misaligned_host_forces_small_pages() {
        let mut f = VecFrames::new(64);
        let mut ept = Ept::new(&mut f).unwrap();
        let s = ept
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
        let t = tr(&ept, &f, 0x20_1FFF).unwrap();
        assert_eq!(t.hpa, HostPhys(0x3000 + 0x20_1FFF));
        assert_eq!(t.perms, Perms::RX);
    }

    #[test]
    fn entry_bits() {
        let mut f = VecFrames::new(64);
        let mut ept = Ept::new(&mut f).unwrap();
        ept.map(
            &mut f,
            GuestPhys(0x1000),
            HostPhys(0x9000),
            PAGE_SIZE,
            Perms::RW,
        )
        .unwrap();
        ept.map(
            &mut f,
            GuestPhys(0x40_0000),
            HostPhys(0x80_0000),
            LARGE_PAGE_SIZE,
            Perms::RX,
        )
        .unwrap();
        // Every non-leaf entry is R|W|X with bits 7:3 clear; leaves are R plus rights, WB.
        let pml4 = f.table(ept.root()).unwrap();
        assert_eq!(pml4[0] & 0xFFF, 0x7);
        let pdpt = f.table(HostPhys(pml4[0] & ADDR_MASK)).unwrap();
        assert_eq!(pdpt[0] & 0xFFF, 0x7);
        let pd = f.table(HostPhys(pdpt[0] & ADDR_MASK)).unwrap();
        assert_eq!(pd[0] & 0xFFF, 0x7);
        assert_eq!(
            pd[2],
            0x80_0000 | 0x80 | 0x30 | 0x5,
            "2 MiB leaf: LARGE|WB|R|X"
        );
        let pt = f.table(HostPhys(pd[0] & ADDR_MASK)).unwrap();
        assert_eq!(pt[1], 0x9000 | 0x30 | 0x3, "WB|R|W, no X");
        // The CPU's view of the same entries.
        let t = tr(&ept, &f, 0x1234).unwrap();
        assert_eq!((t.perms, t.memory_type), (Perms::RW, MemoryType::WriteBack));
        assert_eq!(tr(&ept, &f, 0x40_0000).unwrap().perms, Perms::RX);
    }

    #[test]
    fn overlaps_are_refused() {
        let mut f = VecFrames::new(64);
        let mut ept = Ept::new(&mut f).unwrap();
        ept.map(&mut f, GuestPhys(0), HostPhys(0), 2 * MIB, Perms::RWX)
            .unwrap();
        assert_eq!(
            ept.map(
                &mut f,
                GuestPhys(0x1000),
                HostPhys(0x1000),
                PAGE_SIZE,
                Perms::RWX
            ),
            Err(EptError::AlreadyMapped {
                gpa: GuestPhys(0x1000)
            })
        );
        assert_eq!(
            ept.map(&mut f, GuestPhys(0), HostPhys(0), 2 * MIB, Perms::RWX),
            Err(EptError::AlreadyMapped { gpa: GuestPhys(0) })
        );
        // A 2 MiB-aligned range over an existing 4 KiB table falls back to 4 KiB pages and
        // stops at the first present one.
        ept.map(
            &mut f,
            GuestPhys(4 * MIB + 0x5000),
            HostPhys(0x5000),
            PAGE_SIZE,
            Perms::RWX,
        )
        .unwrap();
        assert_eq!(
            ept.map(
                &mut f,
                GuestPhys(4 * MIB),
                HostPhys(4 * MIB),
                2 * MIB,
                Perms::RWX
            ),
            Err(EptError::AlreadyMapped {
                gpa: GuestPhys(4 * MIB + 0x5000)
            })
        );
        assert_eq!(
            tr(&ept, &f, 4 * MIB + 0x4000).unwrap().size,
            PageSize::Size4K
        );
    }

    #[test]
    fn argument_errors() {
        let mut f = VecFrames::new(64);
        let mut ept = Ept::new(&mut f).unwrap();
        assert_eq!(
            ept.map(&mut f, GuestPhys(0x10), HostPhys(0), PAGE_SIZE, Perms::RWX),
            Err(EptError::Unaligned)
        );
        assert_eq!(
            ept.map(&mut f, GuestPhys(0), HostPhys(0x10), PAGE_SIZE, Perms::RWX),
            Err(EptError::Unaligned)
        );
        assert_eq!(
            ept.map(&mut f, GuestPhys(0), HostPhys(0), 10, Perms::RWX),
            Err(EptError::Unaligned)
        );
        assert_eq!(
            ept.map(
                &mut f,
                GuestPhys(GPA_LIMIT - PAGE_SIZE),
                HostPhys(0),
                2 * PAGE_SIZE,
                Perms::RWX
            ),
            Err(EptError::AddressTooLarge)
        );
        assert_eq!(
            ept.map(
                &mut f,
                GuestPhys(0),
                HostPhys(u64::MAX & !0xFFF),
                PAGE_SIZE,
                Perms::RWX
            ),
            Err(EptError::AddressTooLarge)
        );
        assert_eq!(
            ept.map(&mut f, GuestPhys(0), HostPhys(0), 0, Perms::RWX),
            Ok(MapStats::default())
        );
        assert_eq!(ept.translate(&f, GuestPhys(GPA_LIMIT)), Ok(None));
    }

    #[test]
    fn out_of_frames() {
        let mut f = VecFrames::new(2); // root + PDPT, no PD
        let mut ept = Ept::new(&mut f).unwrap();
        assert_eq!(
            ept.map(&mut f, GuestPhys(0), HostPhys(0), PAGE_SIZE, Perms::RWX),
            Err(EptError::OutOfFrames)
        );
        let mut none = VecFrames::new(0);
        assert_eq!(Ept::new(&mut none), Err(EptError::OutOfFrames));
    }

    #[test]
    fn eptp_values() {
        // Root at 0x1234_5000: WB (6), walk length 4 (3 << 3), A/D (bit 6) on request.
        assert_eq!(eptp(HostPhys(0x1234_5000), false), 0x1234_501E);
        assert_eq!(eptp(HostPhys(0x1234_5000), true), 0x1234_505E);
        let mut f = VecFrames::new(1);
        let ept = Ept::new(&mut f).unwrap();
        assert_eq!(ept.eptp(false), BASE | 0x1E);
    }

    #[test]
    fn entries_written_by_the_cpu_do_not_confuse_the_walk() {
        // A/D bits set by the CPU, and execute-only looking entries: still present.
        let mut f = VecFrames::new(64);
        let mut ept = Ept::new(&mut f).unwrap();
        ept.map(
            &mut f,
            GuestPhys(0),
            HostPhys(0x20_0000),
            LARGE_PAGE_SIZE,
            Perms::RWX,
        )
        .unwrap();
        let pml4 = f.table(ept.root()).unwrap();
        let pdpt_pa = HostPhys(pml4[0] & ADDR_MASK);
        let pdpt = f.table(pdpt_pa).unwrap();
        let pd_pa = HostPhys(pdpt[0] & ADDR_MASK);
        f.table_mut(pd_pa).unwrap()[0] |= (EptFlags::ACCESSED | EptFlags::DIRTY).bits();
        assert_eq!(tr(&ept, &f, 0x1000).unwrap().hpa, HostPhys(0x20_1000));
        f.table_mut(pd_pa).unwrap()[1] = 0x40_0000 | EptFlags::LARGE.bits() | 0x4;
        assert!(tr(&ept, &f, LARGE_PAGE_SIZE).unwrap().perms.exec);
    }

    #[test]
    fn high_guest_addresses_use_other_indices() {
        let mut f = VecFrames::new(64);
        let mut ept = Ept::new(&mut f).unwrap();
        let g = 0x0000_7F80_0000_0000; // PML4 index 255
        ept.map(
            &mut f,
            GuestPhys(g),
            HostPhys(0x20_0000),
            LARGE_PAGE_SIZE,
            Perms::RWX,
        )
        .unwrap();
        assert_eq!(f.table(ept.root()).unwrap()[255] & 1, 1);
        assert_eq!(tr(&ept, &f, g + 0x1234).unwrap().hpa, HostPhys(0x20_1234));
        assert_eq!(tr(&ept, &f, 0x1234), None);
    }
}
