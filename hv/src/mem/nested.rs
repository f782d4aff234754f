//! Nested page tables (SVM NPT, VMX EPT): guest-physical to host-physical, one 4-level walker.
//!
//! Why one: both backends translate every guest-physical address through a 4-level, 512-entry
//! hierarchy with 4 KiB pages and 2 MiB leaves (APM vol. 2 15.25 "Nested Paging"; SDM vol. 3C
//! 29.3 "EPT Translation Mechanism"). Only the entry format differs: NPT entries are ordinary
//! long-mode entries (P, R/W, U/S, PS, NX), EPT entries have read/write/execute bits, a memory
//! type and no separate present bit. So the building and walking live here once, generic over
//! an [`EntryFormat`], and `svm::npt` / `vmx::ept` are their formats plus thin wrappers.
//!
//! The tables are built over an abstract frame provider ([`Frames`]): the kernel implements it
//! over its physical memory, tests with a `Vec`. Mapping uses 2 MiB leaves wherever both
//! addresses are 2 MiB aligned, at least 2 MiB remain and no 4 KiB table already covers the
//! slot; 4 KiB leaves elsewhere. 1 GiB leaves are never created.

use core::marker::PhantomData;

use super::{GuestPhys, HostPhys};

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
}

/// What differs between NPT and EPT entries.
pub trait EntryFormat {
    /// The value of a non-leaf entry pointing at a table (without the address): the most
    /// permissive rights; leaves restrict.
    const TABLE: u64;
    /// The bit that makes a PDE a 2 MiB leaf.
    const LARGE: u64;
    /// Whether the entry maps anything.
    fn present(e: u64) -> bool;
    /// The bits of a leaf with `perms` (without the address or the large bit).
    fn leaf_bits(perms: Perms) -> u64;
    /// The rights of a leaf.
    fn perms(e: u64) -> Perms;
}

/// Read access to page-table frames.
pub trait TableFrames {
    /// The table stored in `frame`, if it is one of ours.
    fn table(&self, frame: HostPhys) -> Option<&[u64; ENTRIES]>;
}

/// Where page-table frames come from. The kernel implements this over its physical memory
/// (allocation plus a physical-to-virtual mapping); tests use a `Vec`.
pub trait Frames: TableFrames {
    /// A new zeroed 4 KiB frame, or `None` when out of memory.
    fn alloc_zeroed(&mut self) -> Option<HostPhys>;
    /// The table stored in `frame`, mutably.
    fn table_mut(&mut self, frame: HostPhys) -> Option<&mut [u64; ENTRIES]>;
}

/// Errors from building or walking the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NestedError {
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

/// The leaf that maps an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Leaf {
    /// The host-physical address of the byte.
    pub hpa: HostPhys,
    /// The page size that mapped it.
    pub size: PageSize,
    /// The raw leaf entry (for format-specific fields such as the EPT memory type).
    pub entry: u64,
}

/// How many leaves [`NestedTable::map`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MapStats {
    /// 4 KiB leaves.
    pub small: u64,
    /// 2 MiB leaves.
    pub large: u64,
}

/// A nested hierarchy in format `E`, identified by its root (N_CR3 or the EPTP's PML4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NestedTable<E> {
    root: HostPhys,
    format: PhantomData<E>,
}

const fn index(gpa: u64, level: u32) -> usize {
    ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) as usize
}

impl<E: EntryFormat> NestedTable<E> {
    /// Allocate an empty root (PML4).
    pub fn new<F: Frames + ?Sized>(frames: &mut F) -> Result<Self, NestedError> {
        Ok(Self {
            root: frames.alloc_zeroed().ok_or(NestedError::OutOfFrames)?,
            format: PhantomData,
        })
    }

    /// The root's host-physical address.
    pub const fn root(&self) -> HostPhys {
        self.root
    }

    /// Map `len` bytes at `gpa` to `hpa` (2 MiB leaves where possible, see the module docs).
    /// On error, the part before the failing page stays mapped.
    pub fn map<F: Frames + ?Sized>(
        &mut self,
        frames: &mut F,
        gpa: GuestPhys,
        hpa: HostPhys,
        len: u64,
        perms: Perms,
    ) -> Result<MapStats, NestedError> {
        let (g0, h0) = (gpa.as_u64(), hpa.as_u64());
        if (g0 | h0 | len) & (PAGE_SIZE - 1) != 0 {
            return Err(NestedError::Unaligned);
        }
        let fits = |start: u64, limit: u64| start.checked_add(len).is_some_and(|end| end <= limit);
        if !fits(g0, GPA_LIMIT) || !fits(h0, HPA_LIMIT) {
            return Err(NestedError::AddressTooLarge);
        }
        let leaf = E::leaf_bits(perms);
        let mut stats = MapStats::default();
        let mut off = 0;
        while off < len {
            let (g, h) = (g0 + off, h0 + off);
            if (g | h) % LARGE_PAGE_SIZE == 0 && len - off >= LARGE_PAGE_SIZE {
                let pd = self.walk_create(frames, g, 2)?;
                let t = frames.table_mut(pd).ok_or(NestedError::BadFrame(pd))?;
                let e = &mut t[index(g, 2)];
                if *e == 0 {
                    *e = h | leaf | E::LARGE;
                    stats.large += 1;
                    off += LARGE_PAGE_SIZE;
                    continue;
                }
                if *e & E::LARGE != 0 {
                    return Err(NestedError::AlreadyMapped { gpa: GuestPhys(g) });
                }
                // A 4 KiB table already covers this 2 MiB slot: fill it page by page.
            }
            let pt = self.walk_create(frames, g, 1)?;
            let t = frames.table_mut(pt).ok_or(NestedError::BadFrame(pt))?;
            let e = &mut t[index(g, 1)];
            if E::present(*e) {
                return Err(NestedError::AlreadyMapped { gpa: GuestPhys(g) });
            }
            *e = h | leaf;
            stats.small += 1;
            off += PAGE_SIZE;
        }
        Ok(stats)
    }

    /// Walk from the root down to the table at `level` (2 = PD, 1 = PT) for `gpa`, creating
    /// missing intermediate tables.
    fn walk_create<F: Frames + ?Sized>(
        &self,
        frames: &mut F,
        gpa: u64,
        level: u32,
    ) -> Result<HostPhys, NestedError> {
        let mut table = self.root;
        let mut l = 4;
        while l > level {
            let i = index(gpa, l);
            let e = frames.table(table).ok_or(NestedError::BadFrame(table))?[i];
            table = if !E::present(e) {
                let new = frames.alloc_zeroed().ok_or(NestedError::OutOfFrames)?;
                frames
                    .table_mut(table)
                    .ok_or(NestedError::BadFrame(table))?[i] = new.as_u64() | E::TABLE;
                new
            } else if e & E::LARGE != 0 {
                // A larger leaf already covers this address.
                return Err(NestedError::AlreadyMapped {
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
    pub fn translate<F: TableFrames + ?Sized>(
        &self,
        frames: &F,
        gpa: GuestPhys,
    ) -> Result<Option<Leaf>, NestedError> {
        let g = gpa.as_u64();
        if g >= GPA_LIMIT {
            return Ok(None);
        }
        let mut table = self.root;
        let mut level = 4;
        loop {
            let e = frames.table(table).ok_or(NestedError::BadFrame(table))?[index(g, level)];
            if !E::present(e) {
                return Ok(None);
            }
            let large = e & E::LARGE != 0;
            if level == 1 || (level == 2 && large) {
                let (size, mask) = if level == 1 {
                    (PageSize::Size4K, PAGE_SIZE - 1)
                } else {
                    (PageSize::Size2M, LARGE_PAGE_SIZE - 1)
                };
                let hpa = HostPhys((e & ADDR_MASK & !mask) | (g & mask));
                return Ok(Some(Leaf {
                    hpa,
                    size,
                    entry: e,
                }));
            }
            if large {
                // 1 GiB leaves are never created here.
                return Err(NestedError::BadFrame(HostPhys(e & ADDR_MASK)));
            }
            table = HostPhys(e & ADDR_MASK);
            level -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy format: present = bit 0, large = bit 7, write = bit 1, no-exec = bit 2, tables 0x3.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Toy {}

    impl EntryFormat for Toy {
        const TABLE: u64 = 0x3;
        const LARGE: u64 = 1 << 7;
        fn present(e: u64) -> bool {
            e & 1 != 0
        }
        fn leaf_bits(p: Perms) -> u64 {
            1 | if p.write { 2 } else { 0 } | if p.exec { 0 } else { 4 }
        }
        fn perms(e: u64) -> Perms {
            Perms {
                write: e & 2 != 0,
                exec: e & 4 == 0,
            }
        }
    }

    #[derive(Default)]
    struct VecFrames(Vec<[u64; ENTRIES]>);

    impl TableFrames for VecFrames {
        fn table(&self, f: HostPhys) -> Option<&[u64; ENTRIES]> {
            self.0.get((f.0 / PAGE_SIZE).checked_sub(1)? as usize)
        }
    }

    impl Frames for VecFrames {
        fn alloc_zeroed(&mut self) -> Option<HostPhys> {
            self.0.push([0; ENTRIES]);
            Some(HostPhys(self.0.len() as u64 * PAGE_SIZE))
        }
        fn table_mut(&mut self, f: HostPhys) -> Option<&mut [u64; ENTRIES]> {
            self.0.get_mut((f.0 / PAGE_SIZE).checked_sub(1)? as usize)
        }
    }

    #[test]
    fn the_format_decides_the_bits() {
        let mut f = VecFrames::default();
        let mut t = NestedTable::<Toy>::new(&mut f).unwrap();
        let s = t
            .map(
                &mut f,
                GuestPhys(0x20_0000),
                HostPhys(0x4000_0000),
                LARGE_PAGE_SIZE + PAGE_SIZE,
                Perms::RX,
            )
            .unwrap();
        assert_eq!(s, MapStats { small: 1, large: 1 });
        let pdpt = HostPhys(f.table(t.root()).unwrap()[0] & ADDR_MASK);
        assert_eq!(f.table(t.root()).unwrap()[0] & 0xFFF, Toy::TABLE);
        let pd = f.table(pdpt).unwrap()[0] & ADDR_MASK;
        assert_eq!(
            f.table(HostPhys(pd)).unwrap()[1],
            0x4000_0000 | 1 | (1 << 7)
        );
        let leaf = t.translate(&f, GuestPhys(0x20_1234)).unwrap().unwrap();
        assert_eq!(leaf.hpa, HostPhys(0x4000_1234));
        assert_eq!(leaf.size, PageSize::Size2M);
        assert_eq!(Toy::perms(leaf.entry), Perms::RX);
        let small = t.translate(&f, GuestPhys(0x40_0010)).unwrap().unwrap();
        assert_eq!(
            (small.hpa, small.size),
            (HostPhys(0x4020_0010), PageSize::Size4K)
        );
        assert_eq!(t.translate(&f, GuestPhys(0x40_1000)), Ok(None));
        assert_eq!(
            t.map(
                &mut f,
                GuestPhys(0x40_0000),
                HostPhys(0),
                PAGE_SIZE,
                Perms::RWX
            ),
            Err(NestedError::AlreadyMapped {
                gpa: GuestPhys(0x40_0000)
            })
        );
    }
}
