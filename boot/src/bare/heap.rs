//! A bump allocator over a static arena in the loader's `.bss`.
//!
//! The device tree is built in a `Vec`, and the command line, memory map, boot information
//! and the kernel's boot stack must outlive the loader. The arena lies inside the loader image,
//! which the kernel's page tables map and which lies below the kernel, so the kernel never hands
//! it out as free memory. Nothing is ever freed: the loader runs once and allocates little.
//! Like `malloc`, every block is at least 16-byte aligned; the device tree, built in a `Vec<u8>`,
//! relies on that for the 8-byte alignment the Devicetree Specification (section 5.1) requires.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

const ARENA_SIZE: usize = 256 * 1024;
const MIN_ALIGN: usize = 16;

#[repr(C, align(4096))]
struct Arena {
    bytes: UnsafeCell<[u8; ARENA_SIZE]>,
    /// Offset of the first free byte.
    next: AtomicUsize,
}

// SAFETY: the arena is only reached through `GlobalAlloc`, which hands out disjoint ranges; the
// loader runs on one CPU with interrupts off.
unsafe impl Sync for Arena {}

#[global_allocator]
static ARENA: Arena = Arena {
    bytes: UnsafeCell::new([0; ARENA_SIZE]),
    next: AtomicUsize::new(0),
};

// SAFETY: `alloc` returns ranges inside the arena that are aligned as requested, never overlap and
// are never reused (`dealloc` does nothing); out of space it returns null.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.bytes.get().cast::<u8>();
        let next = self.next.load(Ordering::Relaxed);
        let start =
            (base as usize + next).next_multiple_of(layout.align().max(MIN_ALIGN)) - base as usize;
        match start.checked_add(layout.size()) {
            Some(end) if end <= ARENA_SIZE => {
                self.next.store(end, Ordering::Relaxed);
                base.wrapping_add(start)
            }
            _ => ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}
