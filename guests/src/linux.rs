//! Linux boot protocol loading: a bzImage's bytes (and an initrd) in, guest RAM filled and the
//! 64-bit entry state out.
//!
//! A stock distribution kernel (Debian's `linux-image-amd64`) is a bzImage: a real-mode setup
//! part followed by a compressed, relocatable protected-mode kernel whose first 0x200 bytes
//! hold the 32-bit entry and whose offset 0x200 is `startup_64`. Hermitage uses the **64-bit
//! boot protocol** of the kernel's `Documentation/arch/x86/boot.rst` ("64-bit Boot Protocol"):
//! no BIOS, no real-mode code; the loader fills `struct boot_params` (the "zero page",
//! `Documentation/arch/x86/zero-page.rst`) itself and enters the kernel in long mode, the way
//! Firecracker and rust-vmm's linux-loader do. The alternative (running the setup code, which
//! asks a BIOS for the memory map with INT 15h E820) would need a BIOS.
//!
//! This module decides everything and touches nothing but the byte slices it is given, so it
//! is tested on the host:
//!
//! - [`SetupHeader::parse`] reads the setup header at file offset 0x1F1 and refuses what we
//!   cannot boot: no `0xAA55`/`"HdrS"` (not a bzImage), protocol older than 2.12 (the first
//!   with `xloadflags`), no `XLF_KERNEL_64` (no 64-bit entry point).
//! - [`check`] plans the guest's memory for a given RAM size without writing anything: kernel
//!   at `pref_address` with `init_size` bytes free, initrd page-aligned as high as it may go,
//!   command line, e820 map. A VM can refuse a bad kernel while it is still unchanged.
//! - [`load`] runs the same plan, then writes the kernel, the initrd, the zero page, the
//!   command line, the boot GDT and identity-mapping page tables, and returns the [`Entry`]
//!   state for the vCPU.
//! - [`pvh`] does the same for an uncompressed `vmlinux` ELF through its Xen PVH entry (32-bit,
//!   no paging): no decompression in the guest, about twice as fast to boot under QEMU TCG.
//!
//! # Guest-physical layout
//!
//! Everything the loader writes below 1 MiB lives in the boot area
//! `BOOT_AREA_START..BOOT_AREA_END` (0x1000..0xB000), inside conventional memory (page 0, the
//! real-mode IVT and BIOS data area, stays untouched):
//!
//! | address | contents |
//! |---|---|
//! | [`GDT_ADDR`] 0x1000 | boot GDT: null, 0x08 32-bit code (for [`pvh`]), `__BOOT_CS` 0x10 (64-bit code), `__BOOT_DS` 0x18 (data) |
//! | [`ZERO_PAGE_ADDR`] 0x2000 | `struct boot_params` (4 KiB) |
//! | [`CMDLINE_ADDR`] 0x3000 | the NUL-terminated command line (at most 4 KiB and `cmdline_size`) |
//! | [`PML4_ADDR`] 0x4000 | PML4: entry 0 → PDPT |
//! | [`PDPT_ADDR`] 0x5000 | PDPT: entries 0-3 → the four page directories |
//! | [`PD_ADDR`] 0x6000..0xA000 | four page directories of 2 MiB pages: identity map of 0-4 GiB |
//! | 0xA000..[`STACK_TOP`] 0xB000 | a boot stack page (the protocol asks for none; RSP points here anyway) |
//! | `pref_address` (0x1000000) | the protected-mode kernel, then free space up to `init_size` |
//! | high in RAM, below `initrd_addr_max` | the initrd, 4 KiB aligned |
//!
//! # The e820 map
//!
//! RAM `[0, 0x9FC00)`, reserved `[0x9FC00, 0x100000)` (EBDA, VGA and BIOS ROM on a PC, where an
//! MP table or RSDP may go), RAM `[0x100000, RAM size)`, with every caller-given [`Region`]
//! (firmware tables, device windows above RAM) cut out of it or added beyond it, sorted and
//! merged.

use core::fmt;

pub mod pvh;

/// Numbers fixed by the boot protocol (`Documentation/arch/x86/boot.rst`, "The Real-Mode Kernel
/// Header") and the zero page (`Documentation/arch/x86/zero-page.rst`). Offsets are bytes from
/// the start of the bzImage file, which are also offsets into `struct boot_params`.
pub mod abi {
    /// Where the setup header starts (`setup_sects`).
    pub const SETUP_HEADER_START: usize = 0x1F1;
    /// `setup_sects` (u8): size of the setup code in 512-byte sectors; 0 means 4.
    pub const SETUP_SECTS: usize = 0x1F1;
    /// `syssize` (u32): size of the protected-mode code in 16-byte paragraphs (protocol 2.04+).
    pub const SYSSIZE: usize = 0x1F4;
    /// `boot_flag` (u16): [`BOOT_FLAG_MAGIC`].
    pub const BOOT_FLAG: usize = 0x1FE;
    /// `jump` (u16): a short jump whose displacement byte (0x201) gives the header's end:
    /// the header spans `0x1F1..0x202 + byte[0x201]`.
    pub const JUMP: usize = 0x200;
    /// `header` (u32): [`HEADER_MAGIC`].
    pub const HEADER: usize = 0x202;
    /// `version` (u16): boot protocol version, major in the high byte.
    pub const VERSION: usize = 0x206;
    /// `type_of_loader` (u8, written): [`LOADER_TYPE_UNDEFINED`].
    pub const TYPE_OF_LOADER: usize = 0x210;
    /// `loadflags` (u8).
    pub const LOADFLAGS: usize = 0x211;
    /// `ramdisk_image` (u32, written): initrd address, low 32 bits.
    pub const RAMDISK_IMAGE: usize = 0x218;
    /// `ramdisk_size` (u32, written): initrd size, low 32 bits.
    pub const RAMDISK_SIZE: usize = 0x21C;
    /// `cmd_line_ptr` (u32, written): command line address, low 32 bits.
    pub const CMD_LINE_PTR: usize = 0x228;
    /// `initrd_addr_max` (u32): highest address the initrd may occupy.
    pub const INITRD_ADDR_MAX: usize = 0x22C;
    /// `kernel_alignment` (u32): physical alignment of a relocatable kernel.
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    /// `relocatable_kernel` (u8): non-zero if the kernel may be loaded at any aligned address.
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    /// `xloadflags` (u16, protocol 2.12+).
    pub const XLOADFLAGS: usize = 0x236;
    /// `cmdline_size` (u32): longest command line, without the terminating NUL.
    pub const CMDLINE_SIZE: usize = 0x238;
    /// `pref_address` (u64): preferred load address.
    pub const PREF_ADDRESS: usize = 0x258;
    /// `init_size` (u32): contiguous bytes the kernel needs from its load address.
    pub const INIT_SIZE: usize = 0x260;
    /// One past the last header field protocol 2.12 defines (`handover_offset` at 0x264).
    pub const HEADER_END_2_12: usize = 0x268;

    /// `boot_flag` value.
    pub const BOOT_FLAG_MAGIC: u16 = 0xAA55;
    /// `header` value: "HdrS".
    pub const HEADER_MAGIC: u32 = u32::from_le_bytes(*b"HdrS");
    /// The oldest protocol accepted: 2.12 has `xloadflags` (and `pref_address`, `init_size`).
    pub const MIN_VERSION: u16 = 0x020C;
    /// `loadflags` bit 0 LOADED_HIGH: the protected-mode code goes at 1 MiB or above (a
    /// bzImage, not a zImage).
    pub const LOADFLAGS_LOADED_HIGH: u8 = 1 << 0;
    /// `xloadflags` bit 0 XLF_KERNEL_64: the kernel has the 64-bit entry at offset 0x200.
    pub const XLF_KERNEL_64: u16 = 1 << 0;
    /// `xloadflags` bit 1 XLF_CAN_BE_LOADED_ABOVE_4G.
    pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
    /// `type_of_loader` 0xFF: "undefined" boot loader (no assigned ID).
    pub const LOADER_TYPE_UNDEFINED: u8 = 0xFF;
    /// The 64-bit entry `startup_64` is this far into the protected-mode kernel.
    pub const STARTUP_64_OFFSET: u64 = 0x200;

    /// Zero page: `acpi_rsdp_addr` (u64, protocol 2.14+).
    pub const ZP_ACPI_RSDP_ADDR: usize = 0x070;
    /// Zero page: `ext_ramdisk_image` (u32): initrd address, high 32 bits.
    pub const ZP_EXT_RAMDISK_IMAGE: usize = 0x0C0;
    /// Zero page: `ext_ramdisk_size` (u32): initrd size, high 32 bits.
    pub const ZP_EXT_RAMDISK_SIZE: usize = 0x0C4;
    /// Zero page: `ext_cmd_line_ptr` (u32): command line address, high 32 bits.
    pub const ZP_EXT_CMD_LINE_PTR: usize = 0x0C8;
    /// Zero page: `e820_entries` (u8).
    pub const ZP_E820_ENTRIES: usize = 0x1E8;
    /// Zero page: `sentinel` (u8). Must stay 0: if set, the kernel assumes a loader that did
    /// not zero the page and clears fields (`sanitize_boot_params`).
    pub const ZP_SENTINEL: usize = 0x1EF;
    /// Zero page: `e820_table`, [`ZP_E820_MAX`] entries of [`E820_ENTRY_LEN`] bytes.
    pub const ZP_E820_TABLE: usize = 0x2D0;
    /// Zero page: capacity of `e820_table` (`E820_MAX_ENTRIES_ZEROPAGE`).
    pub const ZP_E820_MAX: usize = 128;
    /// One e820 entry: `addr` (u64), `size` (u64), `type` (u32), packed.
    pub const E820_ENTRY_LEN: usize = 20;
    /// The zero page is one page.
    pub const ZERO_PAGE_LEN: usize = 4096;
}

/// The boot GDT (see the module's layout table).
pub const GDT_ADDR: u64 = 0x1000;
/// `struct boot_params`, the zero page; RSI at entry.
pub const ZERO_PAGE_ADDR: u64 = 0x2000;
/// The command line.
pub const CMDLINE_ADDR: u64 = 0x3000;
/// The PML4; CR3 at entry.
pub const PML4_ADDR: u64 = 0x4000;
/// The one PDPT.
pub const PDPT_ADDR: u64 = 0x5000;
/// The first of [`PD_COUNT`] page directories (consecutive pages).
pub const PD_ADDR: u64 = 0x6000;
/// Page directories: one per GiB identity-mapped.
pub const PD_COUNT: usize = 4;
/// RSP at entry: the top of the boot stack page.
pub const STACK_TOP: u64 = 0xB000;
/// First byte the loader writes below 1 MiB.
pub const BOOT_AREA_START: u64 = GDT_ADDR;
/// One past the last byte the loader writes below 1 MiB.
pub const BOOT_AREA_END: u64 = STACK_TOP;
/// Bytes of command line space at [`CMDLINE_ADDR`], NUL included.
pub const CMDLINE_CAPACITY: usize = 4096;
/// The identity map covers guest-physical `0..IDENTITY_MAP_END`.
pub const IDENTITY_MAP_END: u64 = (PD_COUNT as u64) << 30;
/// Most caller-given reserved regions [`check`] accepts.
pub const MAX_RESERVED: usize = 16;
/// Most e820 entries the map can have: the three fixed ones, each region splitting one and
/// adding itself.
pub const MAX_E820: usize = 3 + 2 * MAX_RESERVED;
const _: () = assert!(MAX_E820 <= abi::ZP_E820_MAX);
const _: () = assert!(PD_ADDR + PD_COUNT as u64 * 4096 <= STACK_TOP - 4096);
const _: () = assert!(CMDLINE_ADDR + CMDLINE_CAPACITY as u64 <= PML4_ADDR);

/// Conventional memory ends at 639 KiB, where a PC's EBDA starts.
pub const LOW_MEMORY_END: u64 = 0x9_FC00;
/// Extended memory starts at 1 MiB; `LOW_MEMORY_END..HIGH_MEMORY_START` is reserved.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
const PAGE: u64 = 4096;
const MIB2: u64 = 2 << 20;

/// Selector of the 64-bit code segment (`__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// Selector of the data segment (`__BOOT_DS`), also in SS, ES, FS, GS.
pub const BOOT_DS: u16 = 0x18;
/// GDT entry 2: flat 64-bit code: G=1, L=1, D=0, P=1, DPL 0, S=1, type 0xB (execute/read,
/// accessed) (SDM vol. 3A 3.4.5, APM vol. 2 4.8.1).
pub const GDT_CODE64: u64 = 0x00AF_9B00_0000_FFFF;
/// GDT entry 3: flat 4 GiB data: G=1, D/B=1, P=1, DPL 0, S=1, type 0x3 (read/write, accessed).
pub const GDT_DATA: u64 = 0x00CF_9300_0000_FFFF;
/// GDT entry 1: flat 32-bit code for the PVH entry ([`pvh`]): G=1, D=1, P=1, DPL 0, S=1,
/// type 0xB.
pub const GDT_CODE32: u64 = 0x00CF_9B00_0000_FFFF;
/// Selector of [`GDT_CODE32`].
pub const BOOT_CS32: u16 = 0x08;
/// The GDT: null, 32-bit code (0x08), `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18).
pub const GDT: [u64; 4] = [0, GDT_CODE32, GDT_CODE64, GDT_DATA];

/// CR0 at entry: PG | NE | ET | PE.
pub const ENTRY_CR0: u64 = (1 << 31) | (1 << 5) | (1 << 4) | 1;
/// CR4 at entry: PAE.
pub const ENTRY_CR4: u64 = 1 << 5;
/// EFER at entry: LMA | LME (the SVM backend adds SVME underneath).
pub const ENTRY_EFER: u64 = (1 << 10) | (1 << 8);
/// RFLAGS at entry: only the always-one bit 1 (IF=0, DF=0).
pub const ENTRY_RFLAGS: u64 = 0x2;

/// Page-table entry bits (SDM vol. 3A 4.5): present, writable, page size (2 MiB leaf in a PD).
const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_PS: u64 = 1 << 7;

/// Why a kernel could not be parsed or loaded. Addresses and sizes are guest-physical bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// The file ends before the setup header or the protected-mode kernel it declares.
    Truncated,
    /// No `0xAA55` boot flag or no `"HdrS"` magic: not a Linux bzImage.
    NotBzImage,
    /// `loadflags.LOADED_HIGH` clear: a zImage, whose kernel would go below 1 MiB.
    NotLoadedHigh,
    /// Boot protocol older than 2.12.
    ProtocolTooOld { version: u16 },
    /// `xloadflags.XLF_KERNEL_64` clear: the kernel has no 64-bit entry point.
    Not64Bit { xloadflags: u16 },
    /// A relocatable kernel whose `kernel_alignment` is not a power of two, or a load address
    /// below 1 MiB.
    BadLoadAddress { addr: u64 },
    /// Guest RAM smaller than the 1 MiB the layout needs.
    MemoryTooSmall { bytes: u64 },
    /// The kernel's `init_size` window ends beyond guest RAM (or the identity map).
    KernelTooBig { end: u64, ram: u64 },
    /// The kernel's `init_size` window overlaps a reserved region.
    KernelOverlapsReserved { addr: u64 },
    /// No RAM hole below `initrd_addr_max` and outside the kernel window holds the initrd.
    InitrdTooBig { len: u64 },
    /// Command line longer than the kernel's `cmdline_size` (or [`CMDLINE_CAPACITY`] - 1).
    CmdlineTooLong { len: usize, max: usize },
    /// Command line containing a NUL byte, which would cut it short in the guest.
    CmdlineHasNul,
    /// More than [`MAX_RESERVED`] reserved regions.
    TooManyReserved { count: usize },
    /// A reserved region that is empty, wraps, overlaps another one or the loader's boot area.
    BadReserved { addr: u64 },
    /// [`pvh`]: not a little-endian x86-64 ELF executable.
    NotElf64,
    /// [`pvh`]: no Xen `PHYS32_ENTRY` note, or its address lies in no loaded segment.
    NoPvhEntry,
    /// [`pvh`]: a loadable segment below 1 MiB, beyond 4 GiB, with more file than memory
    /// bytes, or no loadable segment at all (addr 0).
    BadSegment { addr: u64 },
}

impl LoadError {
    /// A short fixed description, without the data.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "kernel image truncated",
            Self::NotBzImage => "not a Linux bzImage (no boot flag or HdrS magic)",
            Self::NotLoadedHigh => "kernel is a zImage, not a bzImage",
            Self::ProtocolTooOld { .. } => "Linux boot protocol older than 2.12",
            Self::Not64Bit { .. } => "kernel has no 64-bit entry point (XLF_KERNEL_64)",
            Self::BadLoadAddress { .. } => "kernel load address or alignment unusable",
            Self::MemoryTooSmall { .. } => "guest memory smaller than 1 MiB",
            Self::KernelTooBig { .. } => "kernel and its init_size do not fit in guest memory",
            Self::KernelOverlapsReserved { .. } => "kernel overlaps a reserved memory region",
            Self::InitrdTooBig { .. } => "initrd does not fit in guest memory",
            Self::CmdlineTooLong { .. } => "command line too long",
            Self::CmdlineHasNul => "command line contains a NUL byte",
            Self::TooManyReserved { .. } => "too many reserved memory regions",
            Self::BadReserved { .. } => "reserved memory region empty or overlapping",
            Self::NotElf64 => "not an x86-64 ELF executable",
            Self::NoPvhEntry => "no Xen PVH entry note (PHYS32_ENTRY)",
            Self::BadSegment { .. } => {
                "ELF segment unusable (below 1 MiB, above 4 GiB or malformed)"
            }
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        match *self {
            Self::ProtocolTooOld { version } => {
                write!(f, " (protocol {}.{:02})", version >> 8, version & 0xFF)
            }
            Self::Not64Bit { xloadflags } => write!(f, " (xloadflags {xloadflags:#x})"),
            Self::BadLoadAddress { addr } => write!(f, " ({addr:#x})"),
            Self::MemoryTooSmall { bytes } => write!(f, " ({bytes} bytes)"),
            Self::KernelTooBig { end, ram } => {
                write!(f, " (needs memory up to {end:#x}, guest has {ram:#x})")
            }
            Self::BadSegment { addr } => write!(f, " (segment at {addr:#x})"),
            Self::KernelOverlapsReserved { addr } | Self::BadReserved { addr } => {
                write!(f, " (region at {addr:#x})")
            }
            Self::InitrdTooBig { len } => write!(f, " ({len} bytes)"),
            Self::CmdlineTooLong { len, max } => write!(f, " ({len} bytes, at most {max})"),
            Self::TooManyReserved { count } => write!(f, " ({count}, at most {MAX_RESERVED})"),
            _ => Ok(()),
        }
    }
}

/// The setup header fields the loader uses, as read from the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// Setup code sectors (a 0 in the file already replaced by 4).
    pub setup_sects: u8,
    /// Protected-mode code size in 16-byte paragraphs.
    pub syssize: u32,
    /// Boot protocol version (0x020F = 2.15).
    pub version: u16,
    /// `loadflags`.
    pub loadflags: u8,
    /// `xloadflags`.
    pub xloadflags: u16,
    /// `kernel_alignment`.
    pub kernel_alignment: u32,
    /// `relocatable_kernel != 0`.
    pub relocatable: bool,
    /// `cmdline_size`.
    pub cmdline_size: u32,
    /// `initrd_addr_max`.
    pub initrd_addr_max: u32,
    /// `pref_address`.
    pub pref_address: u64,
    /// `init_size`.
    pub init_size: u32,
    /// One past the header's last byte in the file: `0x202 + byte[0x201]`.
    pub header_end: usize,
}

impl SetupHeader {
    /// Reads and checks the setup header of a bzImage.
    pub fn parse(image: &[u8]) -> Result<Self, LoadError> {
        if image.len() < abi::HEADER + 4 {
            // Too short to be anything we could boot: say what it is not.
            return Err(LoadError::NotBzImage);
        }
        if read_u16(image, abi::BOOT_FLAG)? != abi::BOOT_FLAG_MAGIC
            || read_u32(image, abi::HEADER)? != abi::HEADER_MAGIC
        {
            return Err(LoadError::NotBzImage);
        }
        let version = read_u16(image, abi::VERSION)?;
        if version < abi::MIN_VERSION {
            return Err(LoadError::ProtocolTooOld { version });
        }
        let header_end = abi::HEADER + usize::from(image[abi::JUMP + 1]);
        if !(abi::HEADER_END_2_12..=abi::ZERO_PAGE_LEN).contains(&header_end) {
            // A 2.12+ header always reaches past handover_offset; a jump elsewhere is not one.
            return Err(LoadError::NotBzImage);
        }
        if image.len() < header_end {
            return Err(LoadError::Truncated);
        }
        let loadflags = image[abi::LOADFLAGS];
        if loadflags & abi::LOADFLAGS_LOADED_HIGH == 0 {
            return Err(LoadError::NotLoadedHigh);
        }
        let xloadflags = read_u16(image, abi::XLOADFLAGS)?;
        if xloadflags & abi::XLF_KERNEL_64 == 0 {
            return Err(LoadError::Not64Bit { xloadflags });
        }
        let setup_sects = match image[abi::SETUP_SECTS] {
            0 => 4,
            n => n,
        };
        Ok(Self {
            setup_sects,
            syssize: read_u32(image, abi::SYSSIZE)?,
            version,
            loadflags,
            xloadflags,
            kernel_alignment: read_u32(image, abi::KERNEL_ALIGNMENT)?,
            relocatable: image[abi::RELOCATABLE_KERNEL] != 0,
            cmdline_size: read_u32(image, abi::CMDLINE_SIZE)?,
            initrd_addr_max: read_u32(image, abi::INITRD_ADDR_MAX)?,
            pref_address: read_u64(image, abi::PREF_ADDRESS)?,
            init_size: read_u32(image, abi::INIT_SIZE)?,
            header_end,
        })
    }

    /// File offset of the protected-mode kernel: after the boot sector and the setup sectors.
    pub fn kernel_offset(&self) -> usize {
        (usize::from(self.setup_sects) + 1) * 512
    }

    /// Length of the protected-mode kernel in the file.
    pub fn kernel_len(&self) -> u64 {
        u64::from(self.syssize) * 16
    }

    /// The longest command line the kernel and the loader's buffer both take, without the NUL.
    pub fn cmdline_max(&self) -> usize {
        (self.cmdline_size as usize).min(CMDLINE_CAPACITY - 1)
    }

    /// Where the kernel goes: `pref_address`, rounded up to `kernel_alignment` if relocatable.
    fn load_address(&self) -> Result<u64, LoadError> {
        let mut addr = self.pref_address;
        if self.relocatable {
            let align = u64::from(self.kernel_alignment);
            if !align.is_power_of_two() {
                return Err(LoadError::BadLoadAddress { addr: align });
            }
            addr = addr
                .checked_next_multiple_of(align)
                .ok_or(LoadError::BadLoadAddress { addr })?;
        }
        if addr < HIGH_MEMORY_START {
            return Err(LoadError::BadLoadAddress { addr });
        }
        Ok(addr)
    }
}

/// What an e820 range holds (ACPI 6.5 table 15.1, "Address Range Types").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved: not for the OS.
    Reserved = 2,
    /// ACPI tables, reclaimable once read.
    Acpi = 3,
    /// ACPI non-volatile storage.
    Nvs = 4,
}

/// A guest-physical range and its kind: a caller-given reservation or one e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it holds.
    pub kind: E820Kind,
}

impl Region {
    /// One past the last byte (saturating).
    pub const fn end(&self) -> u64 {
        self.addr.saturating_add(self.len)
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.addr < end && start < self.end()
    }
}

/// An e820 map: at most [`MAX_E820`] entries, sorted and merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Map {
    entries: [Region; MAX_E820],
    len: usize,
}

impl E820Map {
    /// The entries, by address.
    pub fn entries(&self) -> &[Region] {
        &self.entries[..self.len]
    }

    /// The map of a guest with `ram` bytes of RAM from address 0 and the `reserved` regions
    /// (which may lie inside RAM, in the legacy hole or beyond RAM). Regions must not overlap
    /// each other or the loader's boot area.
    pub fn build(ram: u64, reserved: &[Region]) -> Result<Self, LoadError> {
        if reserved.len() > MAX_RESERVED {
            return Err(LoadError::TooManyReserved {
                count: reserved.len(),
            });
        }
        for (i, r) in reserved.iter().enumerate() {
            let bad = r.len == 0
                || r.addr.checked_add(r.len).is_none()
                || r.kind == E820Kind::Ram
                || r.overlaps(BOOT_AREA_START, BOOT_AREA_END)
                || reserved[..i].iter().any(|o| o.overlaps(r.addr, r.end()));
            if bad {
                return Err(LoadError::BadReserved { addr: r.addr });
            }
        }
        // Cut the address space at every boundary, classify each piece, merge neighbours.
        let mut cuts = [0u64; 4 + 2 * MAX_RESERVED];
        let mut n = 0;
        for c in [0, LOW_MEMORY_END, HIGH_MEMORY_START, ram]
            .into_iter()
            .chain(reserved.iter().flat_map(|r| [r.addr, r.end()]))
        {
            cuts[n] = c;
            n += 1;
        }
        let cuts = &mut cuts[..n];
        cuts.sort_unstable();
        let mut map = Self {
            entries: [Region {
                addr: 0,
                len: 0,
                kind: E820Kind::Ram,
            }; MAX_E820],
            len: 0,
        };
        for i in 0..n.saturating_sub(1) {
            let (start, end) = (cuts[i], cuts[i + 1]);
            if start == end {
                continue;
            }
            let kind = if let Some(r) = reserved.iter().find(|r| r.overlaps(start, end)) {
                r.kind
            } else if start >= LOW_MEMORY_END && end <= HIGH_MEMORY_START {
                E820Kind::Reserved
            } else if end <= ram {
                E820Kind::Ram
            } else {
                continue;
            };
            match map.entries[..map.len].last_mut() {
                Some(last) if last.kind == kind && last.end() == start => last.len += end - start,
                _ => {
                    map.entries[map.len] = Region {
                        addr: start,
                        len: end - start,
                        kind,
                    };
                    map.len += 1;
                }
            }
        }
        Ok(map)
    }
}

/// What to boot besides the kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootConfig<'a> {
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The initrd (initramfs); empty for none.
    pub initrd: &'a [u8],
    /// Ranges of guest-physical memory the guest must not use as RAM (firmware tables) or that
    /// hold devices (above RAM), to appear in the e820 map.
    pub reserved: &'a [Region],
    /// The ACPI RSDP's address, for `acpi_rsdp_addr` (protocol 2.14+); `None`: Linux scans the
    /// BIOS areas for it (or runs with `acpi=off`).
    pub acpi_rsdp: Option<u64>,
}

/// Where [`load`] puts everything: the result of [`check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The parsed setup header.
    pub header: SetupHeader,
    /// Where the protected-mode kernel goes.
    pub kernel_addr: u64,
    /// Its length in bytes.
    pub kernel_len: u64,
    /// One past the end of the kernel's `init_size` window.
    pub kernel_end: u64,
    /// Where the initrd goes (0 if there is none).
    pub initrd_addr: u64,
    /// Its length.
    pub initrd_len: u64,
    /// The e820 map.
    pub e820: E820Map,
}

/// Checks that [`load`] would succeed for `kernel` in `mem_len` bytes of guest RAM with
/// `config`, without touching any memory, and says where everything would go.
pub fn check(kernel: &[u8], mem_len: usize, config: &BootConfig<'_>) -> Result<Plan, LoadError> {
    let header = SetupHeader::parse(kernel)?;
    let ram = mem_len as u64;
    if ram < HIGH_MEMORY_START {
        return Err(LoadError::MemoryTooSmall { bytes: ram });
    }
    let kernel_len = header.kernel_len();
    let available = (kernel.len() as u64).saturating_sub(header.kernel_offset() as u64);
    if kernel_len <= abi::STARTUP_64_OFFSET || kernel_len > available {
        return Err(LoadError::Truncated);
    }
    let cmdline_max = header.cmdline_max();
    if config.cmdline.len() > cmdline_max {
        return Err(LoadError::CmdlineTooLong {
            len: config.cmdline.len(),
            max: cmdline_max,
        });
    }
    if config.cmdline.as_bytes().contains(&0) {
        return Err(LoadError::CmdlineHasNul);
    }
    let e820 = E820Map::build(ram, config.reserved)?;

    let kernel_addr = header.load_address()?;
    let window = kernel_len.max(u64::from(header.init_size));
    let kernel_end = kernel_addr.saturating_add(window);
    if kernel_end > ram.min(IDENTITY_MAP_END) {
        return Err(LoadError::KernelTooBig {
            end: kernel_end,
            ram,
        });
    }
    if let Some(r) = config
        .reserved
        .iter()
        .find(|r| r.overlaps(kernel_addr, kernel_end))
    {
        return Err(LoadError::KernelOverlapsReserved { addr: r.addr });
    }

    let initrd_len = config.initrd.len() as u64;
    let initrd_addr = if initrd_len == 0 {
        0
    } else {
        place_initrd(
            &e820,
            initrd_len,
            u64::from(header.initrd_addr_max),
            (kernel_addr, kernel_end),
        )
        .ok_or(LoadError::InitrdTooBig { len: initrd_len })?
    };
    Ok(Plan {
        header,
        kernel_addr,
        kernel_len,
        kernel_end,
        initrd_addr,
        initrd_len,
        e820,
    })
}

/// The highest page-aligned address at which `len` bytes lie wholly in one RAM entry of `e820`,
/// above 1 MiB, at or below `addr_max` (the last byte the initrd may occupy) and outside
/// `kernel` (start, end).
fn place_initrd(e820: &E820Map, len: u64, addr_max: u64, kernel: (u64, u64)) -> Option<u64> {
    let limit = addr_max.checked_add(1)?.min(IDENTITY_MAP_END);
    e820.entries()
        .iter()
        .rev()
        .filter(|r| r.kind == E820Kind::Ram)
        .find_map(|r| {
            let start = r.addr.max(HIGH_MEMORY_START);
            let end = r.end().min(limit);
            // The top of this entry, or just below the kernel if the top collides with it.
            [end, kernel.0.min(end)].into_iter().find_map(|top| {
                let addr = top.checked_sub(len)? & !(PAGE - 1);
                let fits = addr >= start && (addr + len <= kernel.0 || addr >= kernel.1);
                fits.then_some(addr)
            })
        })
}

/// Where to start the vCPU, in 64-bit mode, as the 64-bit boot protocol requires.
///
/// Registers: RIP = [`Entry::rip`], RSI = [`Entry::rsi`] (the zero page), RSP =
/// [`Entry::rsp`], every other GPR 0, RFLAGS = 0x2. CR0 = [`ENTRY_CR0`], CR3 = [`Entry::cr3`],
/// CR4 = [`ENTRY_CR4`], EFER = [`ENTRY_EFER`] (plus SVME under SVM). GDTR = {[`GDT_ADDR`],
/// limit 31}; IDTR = {0, limit 0} (the kernel loads its own before enabling interrupts). CS =
/// [`BOOT_CS`], base 0, limit 0xFFFF_FFFF, attributes [`Entry::CODE_ATTRS`]; DS, ES, SS, FS, GS =
/// [`BOOT_DS`], base 0, limit 0xFFFF_FFFF, attributes [`Entry::DATA_ATTRS`]; CPL 0. TR and LDTR
/// are not used by the kernel before it loads its own; a VMX entry still needs TR usable (a busy
/// 64-bit TSS, type 0xB) and LDTR may be unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `startup_64`: the kernel's load address + 0x200.
    pub rip: u64,
    /// The zero page (`struct boot_params`).
    pub rsi: u64,
    /// A small boot stack.
    pub rsp: u64,
    /// RFLAGS: [`ENTRY_RFLAGS`].
    pub rflags: u64,
    /// CR0: [`ENTRY_CR0`].
    pub cr0: u64,
    /// CR3: the identity-mapping PML4.
    pub cr3: u64,
    /// CR4: [`ENTRY_CR4`].
    pub cr4: u64,
    /// EFER: [`ENTRY_EFER`].
    pub efer: u64,
    /// GDTR base.
    pub gdt_base: u64,
    /// GDTR limit.
    pub gdt_limit: u16,
    /// CS selector.
    pub cs: u16,
    /// DS, ES, SS, FS and GS selector.
    pub ds: u16,
}

impl Entry {
    /// CS attributes in the VMCB's packed format (APM vol. 2 15.5.1, as `hv::vcpu::Segment`):
    /// type 0xB, S, P, L, G.
    pub const CODE_ATTRS: u16 = 0xA9B;
    /// Data segment attributes in the VMCB's packed format: type 0x3, S, P, D/B, G.
    pub const DATA_ATTRS: u16 = 0xC93;
    /// Segment limit of CS and the data segments (4 GiB, G=1).
    pub const SEGMENT_LIMIT: u32 = 0xFFFF_FFFF;

    /// The same attributes in VMX access-rights format (SDM vol. 3C 24.4.1: AVL bit 12, L 13,
    /// D/B 14, G 15).
    pub const fn vmx_access_rights(vmcb_attrs: u16) -> u32 {
        let low = (vmcb_attrs & 0xFF) as u32;
        let high = ((vmcb_attrs >> 8) & 0xF) as u32;
        low | (high << 12)
    }
}

/// Loads `kernel` (a bzImage) into `mem` (guest RAM, index = guest-physical address) with
/// `config`, and writes the zero page, command line, GDT and page tables. Everything is checked
/// before the first byte of `mem` is written: on error `mem` is unchanged.
///
/// Only those ranges are written; the rest of `mem` (the kernel's `init_size` window beyond
/// the image included) is left as it is: a fresh VM's RAM is zero, and the kernel clears its
/// own BSS.
pub fn load(kernel: &[u8], mem: &mut [u8], config: &BootConfig<'_>) -> Result<Entry, LoadError> {
    let plan = check(kernel, mem.len(), config)?;

    // From here on nothing can fail: every range below was checked against mem.len().
    let offset = plan.header.kernel_offset();
    let at = |addr: u64| addr as usize;
    mem[at(plan.kernel_addr)..at(plan.kernel_addr + plan.kernel_len)]
        .copy_from_slice(&kernel[offset..offset + plan.kernel_len as usize]);
    if plan.initrd_len > 0 {
        mem[at(plan.initrd_addr)..at(plan.initrd_addr + plan.initrd_len)]
            .copy_from_slice(config.initrd);
    }

    let boot = &mut mem[at(BOOT_AREA_START)..at(BOOT_AREA_END)];
    boot.fill(0);
    let put = |mem: &mut [u8], addr: u64, bytes: &[u8]| {
        let start = at(addr - BOOT_AREA_START);
        mem[start..start + bytes.len()].copy_from_slice(bytes);
    };
    for (i, d) in GDT.iter().enumerate() {
        put(boot, GDT_ADDR + 8 * i as u64, &d.to_le_bytes());
    }
    put(boot, CMDLINE_ADDR, config.cmdline.as_bytes());
    // Identity map 0..4 GiB: PML4[0] -> PDPT, PDPT[i] -> PD i, PD entries = 2 MiB pages.
    put(boot, PML4_ADDR, &(PDPT_ADDR | PTE_P | PTE_RW).to_le_bytes());
    for i in 0..PD_COUNT as u64 {
        let pd = PD_ADDR + i * PAGE;
        put(
            boot,
            PDPT_ADDR + 8 * i,
            &(pd | PTE_P | PTE_RW).to_le_bytes(),
        );
        for j in 0..512 {
            let page = ((i << 30) + j * MIB2) | PTE_P | PTE_RW | PTE_PS;
            put(boot, pd + 8 * j, &page.to_le_bytes());
        }
    }

    let zp_start = at(ZERO_PAGE_ADDR - BOOT_AREA_START);
    write_zero_page(
        &mut boot[zp_start..zp_start + abi::ZERO_PAGE_LEN],
        kernel,
        &plan,
        config,
    );

    Ok(Entry {
        rip: plan.kernel_addr + abi::STARTUP_64_OFFSET,
        rsi: ZERO_PAGE_ADDR,
        rsp: STACK_TOP,
        rflags: ENTRY_RFLAGS,
        cr0: ENTRY_CR0,
        cr3: PML4_ADDR,
        cr4: ENTRY_CR4,
        efer: ENTRY_EFER,
        gdt_base: GDT_ADDR,
        gdt_limit: (GDT.len() * 8 - 1) as u16,
        cs: BOOT_CS,
        ds: BOOT_DS,
    })
}

/// `struct boot_params`: zeroed, the image's setup header copied in at 0x1F1, then the loader's
/// fields. `zp` is the zeroed page.
fn write_zero_page(zp: &mut [u8], kernel: &[u8], plan: &Plan, config: &BootConfig<'_>) {
    let range = abi::SETUP_HEADER_START..plan.header.header_end;
    zp[range.clone()].copy_from_slice(&kernel[range]);
    let put = |zp: &mut [u8], offset: usize, bytes: &[u8]| {
        zp[offset..offset + bytes.len()].copy_from_slice(bytes)
    };
    let split = |v: u64| ((v as u32).to_le_bytes(), ((v >> 32) as u32).to_le_bytes());

    zp[abi::TYPE_OF_LOADER] = abi::LOADER_TYPE_UNDEFINED;
    let (lo, hi) = split(CMDLINE_ADDR);
    put(zp, abi::CMD_LINE_PTR, &lo);
    put(zp, abi::ZP_EXT_CMD_LINE_PTR, &hi);
    let (lo, hi) = split(plan.initrd_addr);
    put(zp, abi::RAMDISK_IMAGE, &lo);
    put(zp, abi::ZP_EXT_RAMDISK_IMAGE, &hi);
    let (lo, hi) = split(plan.initrd_len);
    put(zp, abi::RAMDISK_SIZE, &lo);
    put(zp, abi::ZP_EXT_RAMDISK_SIZE, &hi);
    if let Some(rsdp) = config.acpi_rsdp {
        put(zp, abi::ZP_ACPI_RSDP_ADDR, &rsdp.to_le_bytes());
    }
    let entries = plan.e820.entries();
    zp[abi::ZP_E820_ENTRIES] = entries.len() as u8;
    for (i, r) in entries.iter().enumerate() {
        let at = abi::ZP_E820_TABLE + i * abi::E820_ENTRY_LEN;
        put(zp, at, &r.addr.to_le_bytes());
        put(zp, at + 8, &r.len.to_le_bytes());
        put(zp, at + 16, &(r.kind as u32).to_le_bytes());
    }
}

fn read_bytes<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], LoadError> {
    bytes
        .get(at..at.checked_add(N).ok_or(LoadError::Truncated)?)
        .and_then(|b| b.try_into().ok())
        .ok_or(LoadError::Truncated)
}

fn read_u16(bytes: &[u8], at: usize) -> Result<u16, LoadError> {
    read_bytes(bytes, at).map(u16::from_le_bytes)
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, LoadError> {
    read_bytes(bytes, at).map(u32::from_le_bytes)
}

fn read_u64(bytes: &[u8], at: usize) -> Result<u64, LoadError> {
    read_bytes(bytes, at).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests;
