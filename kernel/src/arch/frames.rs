//! Page-table frames for nested paging (SVM NPT and VMX EPT alike), owned by the kernel heap. Each table is one 4 KiB,
//! 4 KiB-aligned heap object, so it is physically contiguous; the backends' NPT/EPT builders
//! reach it through the `Frames` trait by its physical address.

#![forbid(unsafe_code)]

use alloc::boxed::Box;
use alloc::vec::Vec;

use svm::HostPhys;
use svm::npt::{ENTRIES, Frames};

use crate::hw;

#[repr(C, align(4096))]
struct Table([u64; ENTRIES]);

/// The frames of one set of nested page tables.
#[derive(Default)]
pub struct HeapFrames {
    tables: Vec<(u64, Box<Table>)>,
}

impl core::fmt::Debug for HeapFrames {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "HeapFrames({} tables)", self.tables.len())
    }
}

impl Frames for HeapFrames {
    fn alloc_zeroed(&mut self) -> Option<HostPhys> {
        let table = Box::new(Table([0; ENTRIES]));
        let pa = hw::virt_to_phys(&*table as *const Table as usize)?;
        self.tables.push((pa, table));
        Some(HostPhys(pa))
    }

    fn table(&self, frame: HostPhys) -> Option<&[u64; ENTRIES]> {
        self.tables
            .iter()
            .find(|(pa, _)| *pa == frame.0)
            .map(|(_, t)| &t.0)
    }

    fn table_mut(&mut self, frame: HostPhys) -> Option<&mut [u64; ENTRIES]> {
        self.tables
            .iter_mut()
            .find(|(pa, _)| *pa == frame.0)
            .map(|(_, t)| &mut t.0)
    }
}

impl vmx::ept::Frames for HeapFrames {
    fn alloc_zeroed(&mut self) -> Option<vmx::HostPhys> {
        svm::npt::Frames::alloc_zeroed(self).map(|p| vmx::HostPhys(p.0))
    }

    fn table(&self, frame: vmx::HostPhys) -> Option<&[u64; ENTRIES]> {
        svm::npt::Frames::table(self, HostPhys(frame.0))
    }

    fn table_mut(&mut self, frame: vmx::HostPhys) -> Option<&mut [u64; ENTRIES]> {
        svm::npt::Frames::table_mut(self, HostPhys(frame.0))
    }
}
