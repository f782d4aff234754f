//! Numbers fixed by the Multiboot Specification 0.6.96 and by the layout Hermitage gives guests.
//!
//! This file is plain constants with no `crate::` paths so that `build.rs` can include it with
//! `#[path]` too: the image writer (build time) and the loader (run time) then share one copy.

/// Multiboot header magic, found 4-byte aligned in the image's first 8192 bytes (spec 3.1.1).
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// The multiboot header must lie wholly inside this many leading bytes of the image (spec 3.1.1).
pub const HEADER_SEARCH_LEN: usize = 8192;
/// Header flag bit 0: align boot modules on 4 KiB pages (spec 3.1.2). The loader always does.
pub const HEADER_FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag bit 1: the OS wants `mem_*` (and the memory map) in the information structure.
pub const HEADER_FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag bit 2: the OS wants a video mode table. We have no video device.
pub const HEADER_FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Header flag bit 16: the address fields at header offsets 12..32 are valid ("a.out kludge");
/// the loader then uses them instead of the ELF program headers.
pub const HEADER_FLAG_ADDRESS_FIELDS: u32 = 1 << 16;
/// Bits 0..15 are requirements: a loader that does not understand one that is set must refuse
/// the image (spec 3.1.2). These are the ones we honour.
pub const HEADER_FLAGS_SUPPORTED_REQUIRED: u32 = HEADER_FLAG_PAGE_ALIGN | HEADER_FLAG_MEMORY_INFO;
/// Length of the header without (12) and with (32) the address fields.
pub const HEADER_LEN: usize = 12;
pub const HEADER_LEN_WITH_ADDRESS_FIELDS: usize = 32;

/// `eax` at entry (spec 3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// Information structure flag bits (spec 3.3): which fields are valid.
pub const INFO_FLAG_MEMORY: u32 = 1 << 0;
pub const INFO_FLAG_CMDLINE: u32 = 1 << 2;
pub const INFO_FLAG_MODS: u32 = 1 << 3;
pub const INFO_FLAG_MMAP: u32 = 1 << 6;
pub const INFO_FLAG_LOADER_NAME: u32 = 1 << 9;

/// Byte offsets of the information structure's fields (spec 3.3).
pub const INFO_FLAGS: usize = 0;
pub const INFO_MEM_LOWER: usize = 4;
pub const INFO_MEM_UPPER: usize = 8;
pub const INFO_CMDLINE: usize = 16;
pub const INFO_MODS_COUNT: usize = 20;
pub const INFO_MODS_ADDR: usize = 24;
pub const INFO_MMAP_LENGTH: usize = 44;
pub const INFO_MMAP_ADDR: usize = 48;
pub const INFO_LOADER_NAME: usize = 64;
/// Size of the structure up to and including the framebuffer fields.
pub const INFO_LEN: usize = 116;

/// One module list entry: `mod_start`, `mod_end` (exclusive), `string`, reserved (spec 3.3).
pub const MODULE_ENTRY_LEN: usize = 16;
/// One memory map entry: `size` (u32, not counting itself), `base_addr` (u64), `length` (u64),
/// `type` (u32) (spec 3.3, "mmap_*").
pub const MMAP_ENTRY_LEN: usize = 24;
pub const MMAP_TYPE_AVAILABLE: u32 = 1;
pub const MMAP_TYPE_RESERVED: u32 = 2;

/// Where the loader writes the information structure, memory map, loader name and command line
/// in guest RAM: one page below the EBDA, away from the 1 MiB where images load.
pub const BOOT_INFO_ADDR: u32 = 0x9000;
pub const BOOT_INFO_END: u32 = 0xA000;
/// Conventional memory ends where the (absent) EBDA would start: 639 KiB.
pub const LOW_MEMORY_END: u32 = 0x9_FC00;
/// Extended memory starts at 1 MiB.
pub const HIGH_MEMORY_START: u32 = 0x10_0000;

/// Built-in images load their one segment here.
pub const IMAGE_BASE: u32 = HIGH_MEMORY_START;
