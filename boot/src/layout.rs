//! Where the kernel goes and which page tables it is entered with.
//!
//! Hermit 0.11.0 expects long mode with identity-mapped page tables whose root lies below 4 GiB.
//! It maps the first MiB itself (BIOS and ACPI tables, the AP start-up trampoline at 0x8000) and
//! the RAM above its own image (from the device tree, with 2 MiB pages), and it panics when such a
//! mapping already exists with a different frame. So the tables it gets map exactly: the loader
//! (whose memory holds the boot information, device tree and boot stack) with 4 KiB pages, and from
//! the next 2 MiB boundary up to the end of the kernel image with 2 MiB pages. Page-table formats
//! follow the Intel SDM Vol. 3A, section 4.5 "4-level paging".

use core::mem::offset_of;
use core::ops::Range;

/// Size of a small page.
pub const PAGE_4K: u64 = 0x1000;
/// Size of a large page; the kernel image is placed at such a boundary.
pub const PAGE_2M: u64 = 0x20_0000;
/// The first MiB stays unmapped: the kernel maps it itself.
pub const LOW_MEMORY_END: u64 = 0x10_0000;
/// The tables below can map the first 4 GiB, which is all a 32-bit boot loader hands us.
pub const MAPPABLE_END: u64 = 0x1_0000_0000;
/// Number of 4 KiB-page tables for the loader image, so the loader must end below 4 MiB.
const LOADER_PTS: usize = 2;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;

/// Why no page tables could be laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The loader image overlaps the first MiB or does not fit its page tables.
    LoaderOutOfRange,
    /// The area to map ends above [`MAPPABLE_END`].
    KernelAbove4GiB,
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

/// Lowest 2 MiB-aligned address at or above `floor` where `size` bytes fit into one usable RAM
/// range below [`MAPPABLE_END`] without overlapping `avoid` (the kernel ELF file, which may lie
/// anywhere the boot loader chose).
pub fn place_kernel(
    ram: impl Iterator<Item = Range<u64>>,
    floor: u64,
    avoid: Range<u64>,
    size: u64,
) -> Option<u64> {
    ram.filter_map(|range| {
        let mut start = align_up(range.start.max(floor), PAGE_2M);
        if start < avoid.end && avoid.start < start.checked_add(size)? {
            start = align_up(avoid.end, PAGE_2M);
        }
        let end = start.checked_add(size)?;
        (end <= range.end && end <= MAPPABLE_END).then_some(start)
    })
    .min()
}

type Table = [u64; 512];

/// The page tables the kernel is entered with: one of each level, enough for 4 GiB.
#[derive(Debug)]
#[repr(C, align(4096))]
pub struct PageTables {
    pml4: Table,
    pdpt: Table,
    pd: [Table; 4],
    pt: [Table; LOADER_PTS],
}

impl Default for PageTables {
    fn default() -> Self {
        Self::new()
    }
}

impl PageTables {
    /// Empty tables (nothing mapped), usable in a `static`.
    pub const fn new() -> Self {
        Self {
            pml4: [0; 512],
            pdpt: [0; 512],
            pd: [[0; 512]; 4],
            pt: [[0; 512]; LOADER_PTS],
        }
    }

    /// Fills the tables, which live at physical address `base`, to identity-map `loader` with
    /// 4 KiB pages and everything from the next 2 MiB boundary up to `map_end` with 2 MiB pages.
    /// The value for CR3 is `base`.
    pub fn build(
        &mut self,
        base: u64,
        loader: Range<u64>,
        map_end: u64,
    ) -> Result<(), LayoutError> {
        let loader = loader.start / PAGE_4K * PAGE_4K..align_up(loader.end, PAGE_4K);
        if loader.start < LOW_MEMORY_END || loader.end > LOADER_PTS as u64 * PAGE_2M {
            return Err(LayoutError::LoaderOutOfRange);
        }
        let huge = align_up(loader.end, PAGE_2M)..align_up(map_end, PAGE_2M);
        if huge.end > MAPPABLE_END {
            return Err(LayoutError::KernelAbove4GiB);
        }
        *self = Self::new();
        let table = |offset: usize| (base + offset as u64) | PRESENT | WRITABLE;

        self.pml4[0] = table(offset_of!(Self, pdpt));
        for (i, entry) in self.pdpt.iter_mut().take(4).enumerate() {
            *entry = table(offset_of!(Self, pd) + i * size_of::<Table>());
        }
        for addr in loader.step_by(PAGE_4K as usize) {
            let chunk = (addr / PAGE_2M) as usize;
            self.pd[0][chunk] = table(offset_of!(Self, pt) + chunk * size_of::<Table>());
            self.pt[chunk][(addr / PAGE_4K % 512) as usize] = addr | PRESENT | WRITABLE;
        }
        for addr in huge.step_by(PAGE_2M as usize) {
            let (pd, index) = ((addr >> 30) as usize, (addr >> 21) as usize % 512);
            self.pd[pd][index] = addr | PRESENT | WRITABLE | HUGE;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_goes_above_loader_and_beside_module() {
        let ram = [0..0x9fc00, 0x10_0000..0x1ffe_0000];
        let place = |floor, module, size| place_kernel(ram.iter().cloned(), floor, module, size);
        // QEMU: the module follows the loader.
        assert_eq!(
            place(0x16_0000, 0x16_0000..0x5a_1234, 0x40_0000),
            Some(0x60_0000)
        );
        // GRUB may put the module high: the kernel still goes low.
        assert_eq!(
            place(0x16_0000, 0x1f00_0000..0x1f40_0000, 0x40_0000),
            Some(0x20_0000)
        );
        assert_eq!(
            place(0x16_0000, 0x30_0000..0x40_0000, 0x40_0000),
            Some(0x40_0000)
        );
        assert_eq!(place(0x1fe0_0000, 0..0, 0x40_0000), None);
        let split = [0x10_0000..0x40_0000, 0x80_0000..0x100_0000];
        assert_eq!(
            place_kernel(split.iter().cloned(), 0x30_0000, 0..0, 0x40_0000),
            Some(0x80_0000)
        );
        let high = core::iter::once(0x10_0000..0x1_4000_0000);
        assert_eq!(place_kernel(high, 0xffe0_0000, 0..0, 0x40_0000), None);
    }

    fn mapped(tables: &PageTables, base: u64) -> Vec<(u64, u64)> {
        // Walk the tables like the MMU does (PML4 entry 0 only: we never map above 512 GiB).
        let mut out = Vec::new();
        let at = |entry: u64| ((entry & !0xfff) - base) as usize / size_of::<Table>();
        assert_eq!(at(tables.pml4[0]), 1);
        for (i, &pdpte) in tables.pdpt.iter().enumerate().filter(|(_, e)| **e != 0) {
            let pd = &tables.pd[at(pdpte) - 2];
            for (j, &pde) in pd.iter().enumerate().filter(|(_, e)| **e != 0) {
                let addr = ((i as u64) << 30) | ((j as u64) << 21);
                if pde & HUGE != 0 {
                    assert_eq!(pde & !0xfff, addr);
                    out.push((addr, PAGE_2M));
                } else {
                    let pt = &tables.pt[at(pde) - 6];
                    for (k, &pte) in pt.iter().enumerate().filter(|(_, e)| **e != 0) {
                        assert_eq!(pte & !0xfff, addr | (k as u64) << 12);
                        out.push((pte & !0xfff, PAGE_4K));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn loader_small_pages_then_large_pages_to_kernel_end() {
        let mut tables = Box::new(PageTables::new());
        let base = 0x12_3000;
        tables.build(base, 0x10_0000..0x15_0800, 0xa1_0000).unwrap();
        let map = mapped(&tables, base);
        let small: Vec<_> = map.iter().filter(|m| m.1 == PAGE_4K).map(|m| m.0).collect();
        let large: Vec<_> = map.iter().filter(|m| m.1 == PAGE_2M).map(|m| m.0).collect();
        assert_eq!(small, (0x100..=0x150).map(|p| p << 12).collect::<Vec<_>>());
        assert_eq!(
            large,
            [0x20_0000, 0x40_0000, 0x60_0000, 0x80_0000, 0xa0_0000]
        );
        assert!(map.iter().all(|m| m.0 >= LOW_MEMORY_END));
    }

    #[test]
    fn loader_across_2mib_and_kernel_up_to_4gib() {
        let mut tables = Box::new(PageTables::new());
        tables
            .build(0x10_0000, 0x1f_f000..0x20_2000, MAPPABLE_END)
            .unwrap();
        let map = mapped(&tables, 0x10_0000);
        assert_eq!(map.iter().filter(|m| m.1 == PAGE_4K).count(), 3);
        assert_eq!(map.iter().filter(|m| m.1 == PAGE_2M).count(), 2048 - 2);
    }

    #[test]
    fn rejects_what_the_tables_cannot_hold() {
        let mut tables = Box::new(PageTables::new());
        assert_eq!(
            tables.build(0, 0xf_f000..0x10_1000, 0),
            Err(LayoutError::LoaderOutOfRange)
        );
        assert_eq!(
            tables.build(0, 0x10_0000..0x40_1000, 0),
            Err(LayoutError::LoaderOutOfRange)
        );
        assert_eq!(
            tables.build(0, 0x10_0000..0x20_0000, MAPPABLE_END + 1),
            Err(LayoutError::KernelAbove4GiB)
        );
    }
}
