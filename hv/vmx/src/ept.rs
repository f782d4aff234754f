//! Extended page tables: guest-physical to host-physical translation.
//!
//! Why: with "enable EPT" the CPU translates every guest-physical address through a 4-level
//! hierarchy rooted at the EPT pointer (SDM vol. 3C "EPT Translation Mechanism"). Building it
//! is pure data-structure work: here over an abstract [`Frames`] provider (the same shape as
//! the SVM crate's `npt::Frames`, so the kernel's frame allocator serves both), tested with a
//! `Vec`-backed fake.
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

/// 4 KiB.
pub const PAGE_SIZE: u64 = 4096;
/// 2 MiB, a PDE leaf.
pub const LARGE_PAGE_SIZE: u64 = 2 * 1024 * 1024;
/// Entries per table.
pub const ENTRIES: usize = 512;
/// Guest-physical addresses a 4-level EPT can map: 48 bits.
pub const GPA_LIMIT: u64 = 1 << 48;
/// Host-physical addresses an entry can hold: 52 bits.
pub const HPA_LIMIT: u64 = 1 << 52;
/// Address bits 51:12 of an entry.
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

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
/// Flags of non-leaf entries: the most permissive; leaves restrict.
const TABLE_FLAGS: u64 = RWX;

/// Access rights of a mapping (reads are always allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perms {
    /// Writable.
    pub write: bool,
    /// Executable.
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
        let mut v = EptFlags::READ.bits() | EptFlags::MEMTYPE_WB.bits();
        if self.write {
            v |= EptFlags::WRITE.bits();
        }
        if self.exec {
            v |= EptFlags::EXEC.bits();
        }
        v
    }

    const fn from_entry(e: u64) -> Self {
        Self {
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

/// Errors from building or walking the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EptError {
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

/// How many leaves [`Ept::map`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MapStats {
    /// 4 KiB leaves.
    pub small: u64,
    /// 2 MiB leaves.
    pub large: u64,
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
    root: HostPhys,
}

const fn index(gpa: u64, level: u32) -> usize {
    ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) as usize
}

const fn present(e: u64) -> bool {
    e & RWX != 0
}

impl Ept {
    /// Allocate an empty root (PML4).
    pub fn new<F: Frames>(frames: &mut F) -> Result<Self, EptError> {
        Ok(Self {
            root: frames.alloc_zeroed().ok_or(EptError::OutOfFrames)?,
        })
    }

    /// The root's host-physical address.
    pub const fn root(&self) -> HostPhys {
        self.root
    }

    /// The EPTP value for the VMCS ([`eptp`] of the root).
    pub const fn eptp(&self, accessed_dirty: bool) -> u64 {
        eptp(self.root, accessed_dirty)
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
        let (g0, h0) = (gpa.as_u64(), hpa.as_u64());
        if (g0 | h0 | len) & (PAGE_SIZE - 1) != 0 {
            return Err(EptError::Unaligned);
        }
        let fits = |start: u64, limit: u64| start.checked_add(len).is_some_and(|end| end <= limit);
        if !fits(g0, GPA_LIMIT) || !fits(h0, HPA_LIMIT) {
            return Err(EptError::AddressTooLarge);
        }
        let mut stats = MapStats::default();
        let mut off = 0;
        while off < len {
            let (g, h) = (g0 + off, h0 + off);
            if (g | h) % LARGE_PAGE_SIZE == 0 && len - off >= LARGE_PAGE_SIZE {
                let pd = self.walk_create(frames, g, 2)?;
                let t = frames.table_mut(pd).ok_or(EptError::BadFrame(pd))?;
                let e = &mut t[index(g, 2)];
                if *e == 0 {
                    *e = h | perms.leaf_bits() | EptFlags::LARGE.bits();
                    stats.large += 1;
                    off += LARGE_PAGE_SIZE;
                    continue;
                }
                if *e & EptFlags::LARGE.bits() != 0 {
                    return Err(EptError::AlreadyMapped { gpa: GuestPhys(g) });
                }
                // A 4 KiB table already covers this 2 MiB slot: fill it page by page.
            }
            let pt = self.walk_create(frames, g, 1)?;
            let t = frames.table_mut(pt).ok_or(EptError::BadFrame(pt))?;
            let e = &mut t[index(g, 1)];
            if present(*e) {
                return Err(EptError::AlreadyMapped { gpa: GuestPhys(g) });
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
    ) -> Result<HostPhys, EptError> {
        let mut table = self.root;
        let mut l = 4;
        while l > level {
            let i = index(gpa, l);
            let e = frames.table(table).ok_or(EptError::BadFrame(table))?[i];
            table = if !present(e) {
                let new = frames.alloc_zeroed().ok_or(EptError::OutOfFrames)?;
                frames.table_mut(table).ok_or(EptError::BadFrame(table))?[i] =
                    new.as_u64() | TABLE_FLAGS;
                new
            } else if e & EptFlags::LARGE.bits() != 0 {
                // A larger leaf already covers this address.
                return Err(EptError::AlreadyMapped {
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
    ) -> Result<Option<Translation>, EptError> {
        let g = gpa.as_u64();
        if g >= GPA_LIMIT {
            return Ok(None);
        }
        let mut table = self.root;
        let mut level = 4;
        loop {
            let e = frames.table(table).ok_or(EptError::BadFrame(table))?[index(g, level)];
            if !present(e) {
                return Ok(None);
            }
            let large = e & EptFlags::LARGE.bits() != 0;
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
                    memory_type: MemoryType::from_raw(((e >> 3) & 7) as u8),
                }));
            }
            if large {
                // 1 GiB leaves are never created here.
                return Err(EptError::BadFrame(HostPhys(e & ADDR_MASK)));
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
