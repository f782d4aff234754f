//! Multiboot 1 loading: an image's bytes in, guest RAM filled and the entry registers out.
//!
//! Guests are entered the way a Multiboot 1 boot loader enters an OS (Multiboot Specification
//! 0.6.96): 32-bit protected mode, paging off, flat segments, `eax` = [`abi::BOOTLOADER_MAGIC`],
//! `ebx` = guest-physical address of the information structure. This module decides everything
//! about that and touches nothing but the byte slices it is given, so it is tested on the host:
//!
//! - [`Image::parse`] finds and checks the multiboot header (spec 3.1) and the ELF32 program
//!   headers (or, with header flag bit 16, the "a.out kludge" address fields), and yields the
//!   segments to load and the entry point.
//! - [`load`] checks that every segment fits the guest's RAM and stays clear of the boot
//!   information page, *then* copies the segments (zeroing their BSS tails) and writes the
//!   information structure, memory map, loader name and command line at
//!   [`abi::BOOT_INFO_ADDR`]. A bad image or command line leaves guest memory as it was.
//!
//! - [`load_with_modules`] does the same and also loads boot modules (spec 3.3, `mods_*`):
//!   each page-aligned above the image, then the module list and the modules' strings on the
//!   next page; `check_with_modules` refuses what would not fit before anything is written.
//!
//! The memory map it writes: `0..0x9FC00` available, `0x9FC00..0x100000` reserved (EBDA, VGA,
//! ROM on a PC), `0x100000..mem.len()` available; `mem_lower` = 639, `mem_upper` =
//! `(mem.len() - 1 MiB) / 1 KiB`.

pub mod abi;

use core::fmt;

/// ELF32 constants (System V ABI, Intel386 supplement).
mod elf {
    pub const MAGIC: [u8; 4] = [0x7F, b'E', b'L', b'F'];
    pub const HEADER_LEN: usize = 52;
    pub const CLASS_32: u8 = 1;
    pub const DATA_LITTLE_ENDIAN: u8 = 1;
    pub const TYPE_EXEC: u16 = 2;
    pub const MACHINE_386: u16 = 3;
    pub const PHDR_LEN: usize = 32;
    pub const PT_LOAD: u32 = 1;
}

/// The loader name written into the information structure (`boot_loader_name`, flag bit 9).
pub const LOADER_NAME: &str = "Hermitage";

/// Fixed places inside the boot information page (`BOOT_INFO_ADDR..BOOT_INFO_END`).
const MMAP_ADDR: u32 = abi::BOOT_INFO_ADDR + 0x80;
const MMAP_MAX_ENTRIES: usize = 3;
const LOADER_NAME_ADDR: u32 = abi::BOOT_INFO_ADDR + 0x100;
const CMDLINE_ADDR: u32 = abi::BOOT_INFO_ADDR + 0x120;
const _: () = assert!(abi::INFO_LEN <= (MMAP_ADDR - abi::BOOT_INFO_ADDR) as usize);
const _: () = assert!(
    MMAP_ADDR as usize + MMAP_MAX_ENTRIES * abi::MMAP_ENTRY_LEN <= LOADER_NAME_ADDR as usize
);
const _: () = assert!(LOADER_NAME_ADDR as usize + LOADER_NAME.len() < CMDLINE_ADDR as usize);

/// The longest command line [`load`] accepts, in bytes without the terminating NUL.
pub const CMDLINE_MAX: usize = (abi::BOOT_INFO_END - CMDLINE_ADDR) as usize - 1;

/// Why an image could not be parsed or loaded. Addresses are guest-physical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// The image ends before a structure it declares (ELF header, program header table,
    /// segment contents, a.out load range).
    Truncated,
    /// No `0x1BADB002` magic, 4-byte aligned, within the first 8192 bytes.
    NoMultibootHeader,
    /// A multiboot magic was found but `magic + flags + checksum != 0`.
    BadChecksum,
    /// The header requires something we cannot give (flag bits 0..15 other than 0 and 1, e.g.
    /// bit 2: a video mode).
    UnsupportedFlags { flags: u32 },
    /// Not an ELF file (wrong `\x7fELF` magic) and no a.out-kludge address fields either.
    BadMagic,
    /// ELF, but not ELFCLASS32.
    NotElf32,
    /// ELF32, but big-endian.
    NotLittleEndian,
    /// ELF32 for another machine than EM_386 (3).
    WrongMachine { machine: u16 },
    /// ELF32 but not ET_EXEC (2): relocatable and shared objects cannot be loaded as they are.
    NotExecutable { elf_type: u16 },
    /// Program header entries smaller than an Elf32_Phdr.
    BadProgramHeaderSize { size: u16 },
    /// Nothing to load: no PT_LOAD segment with a non-zero memory size.
    NoLoadableSegment,
    /// A segment's file size exceeds its memory size.
    BadSegmentSize { addr: u32 },
    /// A segment does not fit in guest RAM (or wraps around 4 GiB).
    SegmentOutsideMemory { addr: u32, len: u32 },
    /// A segment overlaps the page where the boot information goes.
    SegmentOverlapsBootInfo { addr: u32, len: u32 },
    /// The entry point lies in no loaded segment.
    EntryOutsideImage { entry: u32 },
    /// The a.out-kludge address fields contradict each other or the header's position.
    BadAddressFields,
    /// Guest RAM smaller than the 1 MiB the memory map describes.
    MemoryTooSmall { bytes: usize },
    /// Command line longer than [`CMDLINE_MAX`].
    CmdlineTooLong { len: usize },
    /// Command line containing a NUL byte, which would cut it short in the guest.
    CmdlineHasNul,
    /// More than [`MAX_MODULES`] modules.
    TooManyModules { count: usize },
    /// A module's string is longer than [`MODULE_STRING_MAX`] or contains a NUL byte.
    BadModuleString { index: usize },
    /// The modules (with their list) do not fit in guest RAM above the image.
    ModulesOutsideMemory { needed: u64 },
}

impl LoadError {
    /// A short fixed description, without the data.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "image truncated",
            Self::NoMultibootHeader => "no multiboot header in the first 8192 bytes",
            Self::BadChecksum => "multiboot header checksum wrong",
            Self::UnsupportedFlags { .. } => "multiboot header requires unsupported features",
            Self::BadMagic => "not an ELF image and no multiboot address fields",
            Self::NotElf32 => "ELF image is not 32-bit",
            Self::NotLittleEndian => "ELF image is not little-endian",
            Self::WrongMachine { .. } => "ELF image is not for i386",
            Self::NotExecutable { .. } => "ELF image is not an executable",
            Self::BadProgramHeaderSize { .. } => "ELF program header size too small",
            Self::NoLoadableSegment => "no loadable segment",
            Self::BadSegmentSize { .. } => "segment file size larger than memory size",
            Self::SegmentOutsideMemory { .. } => "segment outside guest memory",
            Self::SegmentOverlapsBootInfo { .. } => "segment overlaps the boot information",
            Self::EntryOutsideImage { .. } => "entry point outside the loaded image",
            Self::BadAddressFields => "multiboot address fields inconsistent",
            Self::MemoryTooSmall { .. } => "guest memory smaller than 1 MiB",
            Self::CmdlineTooLong { .. } => "command line too long",
            Self::CmdlineHasNul => "command line contains a NUL byte",
            Self::TooManyModules { .. } => "too many boot modules",
            Self::BadModuleString { .. } => "module string too long or contains a NUL byte",
            Self::ModulesOutsideMemory { .. } => "boot modules do not fit in guest memory",
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        match *self {
            Self::UnsupportedFlags { flags } => write!(f, " (flags {flags:#x})"),
            Self::WrongMachine { machine } => write!(f, " (e_machine {machine})"),
            Self::NotExecutable { elf_type } => write!(f, " (e_type {elf_type})"),
            Self::BadProgramHeaderSize { size } => write!(f, " ({size} bytes)"),
            Self::BadSegmentSize { addr } => write!(f, " (segment at {addr:#x})"),
            Self::SegmentOutsideMemory { addr, len }
            | Self::SegmentOverlapsBootInfo { addr, len } => {
                write!(f, " ({len:#x} bytes at {addr:#x})")
            }
            Self::EntryOutsideImage { entry } => write!(f, " ({entry:#x})"),
            Self::MemoryTooSmall { bytes } => write!(f, " ({bytes} bytes)"),
            Self::CmdlineTooLong { len } => write!(f, " ({len} bytes, at most {CMDLINE_MAX})"),
            Self::TooManyModules { count } => write!(f, " ({count}, at most {MAX_MODULES})"),
            Self::BadModuleString { index } => write!(f, " (module {index})"),
            Self::ModulesOutsideMemory { needed } => write!(f, " (needs {needed:#x} bytes)"),
            _ => Ok(()),
        }
    }
}

/// The most boot modules [`load_with_modules`] passes.
pub const MAX_MODULES: usize = 16;
/// The longest module string, in bytes without the terminating NUL.
pub const MODULE_STRING_MAX: usize = 255;
const PAGE: u64 = 4096;

/// A boot module: its contents and its string (by convention its command line or name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module<'a> {
    /// The module's bytes.
    pub bytes: &'a [u8],
    /// Its string.
    pub string: &'a str,
}

/// Where the modules go: each module's start, and where the module list starts (its strings
/// follow it). Computed by [`module_layout`], written by [`load_with_modules`].
struct ModuleLayout {
    starts: [u64; MAX_MODULES],
    list: u64,
    end: u64,
}

const fn page_up(x: u64) -> u64 {
    x.div_ceil(PAGE) * PAGE
}

/// Place `modules` page-aligned above the highest byte of `image`, then the list.
fn module_layout(
    image: &Image<'_>,
    mem_len: usize,
    modules: &[Module<'_>],
) -> Result<ModuleLayout, LoadError> {
    if modules.len() > MAX_MODULES {
        return Err(LoadError::TooManyModules {
            count: modules.len(),
        });
    }
    for (index, m) in modules.iter().enumerate() {
        if m.string.len() > MODULE_STRING_MAX || m.string.as_bytes().contains(&0) {
            return Err(LoadError::BadModuleString { index });
        }
    }
    let image_end = image
        .segments()
        .map(|s| s.end())
        .fold(u64::from(abi::HIGH_MEMORY_START), u64::max);
    let mut at = page_up(image_end);
    let mut starts = [0u64; MAX_MODULES];
    for (i, m) in modules.iter().enumerate() {
        starts[i] = at;
        at = page_up(at + m.bytes.len() as u64);
    }
    let list = at;
    let strings: u64 = modules.iter().map(|m| m.string.len() as u64 + 1).sum();
    let end = list + (modules.len() * abi::MODULE_ENTRY_LEN) as u64 + strings;
    if !modules.is_empty() && (end > mem_len as u64 || end > u64::from(u32::MAX)) {
        return Err(LoadError::ModulesOutsideMemory { needed: end });
    }
    Ok(ModuleLayout { starts, list, end })
}

/// Where to start the guest: `eip` = entry point, `ebx` = information structure; `eax` must be
/// [`Entry::EAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub eip: u32,
    pub ebx: u32,
}

impl Entry {
    /// The value of `eax` at entry.
    pub const EAX: u32 = abi::BOOTLOADER_MAGIC;
}

/// The multiboot header found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Byte offset of the magic in the image file.
    pub offset: usize,
    pub flags: u32,
    /// The a.out-kludge address fields, present iff flag bit 16 is set.
    pub address_fields: Option<AddressFields>,
}

/// Header offsets 12..32, used when flag bit 16 is set (spec 3.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressFields {
    /// Where the header's magic lands in memory.
    pub header_addr: u32,
    /// Start of the loaded range.
    pub load_addr: u32,
    /// End of the loaded file range; 0: to the end of the file.
    pub load_end_addr: u32,
    /// End of the zeroed BSS; 0: no BSS.
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

/// One range to load: `data` copied to `addr`, then zeroes up to `addr + mem_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub addr: u32,
    pub data: &'a [u8],
    pub mem_len: u32,
}

impl Segment<'_> {
    /// One past the last byte, as a `u64` so that it cannot wrap.
    pub fn end(&self) -> u64 {
        u64::from(self.addr) + u64::from(self.mem_len)
    }
}

#[derive(Clone, Copy, Debug)]
enum Layout {
    Elf {
        phoff: usize,
        phentsize: usize,
        phnum: usize,
    },
    AddressFields {
        file_offset: usize,
        file_len: usize,
        addr: u32,
        mem_len: u32,
    },
}

/// A checked image: every segment is well-formed and the entry point lies in one of them.
/// Whether the segments fit a given guest is [`load`]'s question.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    bytes: &'a [u8],
    header: Header,
    layout: Layout,
    entry: u32,
}

impl<'a> Image<'a> {
    /// Checks the multiboot header and the ELF32 (or a.out-kludge) layout.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, LoadError> {
        let header = find_header(bytes)?;
        let (layout, entry) = match header.address_fields {
            Some(fields) => (
                address_fields_layout(bytes, header.offset, fields)?,
                fields.entry_addr,
            ),
            None => elf_layout(bytes)?,
        };
        let mut image = Self {
            bytes,
            header,
            layout,
            entry,
        };
        let mut any = false;
        let mut eip = None;
        for index in 0..image.segment_slots() {
            let Some((segment, vaddr)) = image.segment(index)? else {
                continue;
            };
            any = true;
            // ELF entry points are virtual addresses; we load at physical ones (p_paddr).
            let offset = u64::from(entry).wrapping_sub(u64::from(vaddr));
            if eip.is_none() && offset < u64::from(segment.mem_len) {
                eip = Some(segment.addr.wrapping_add(offset as u32));
            }
        }
        if !any {
            return Err(LoadError::NoLoadableSegment);
        }
        image.entry = eip.ok_or(LoadError::EntryOutsideImage { entry })?;
        Ok(image)
    }

    /// The multiboot header.
    pub fn header(&self) -> Header {
        self.header
    }

    /// Guest-physical entry point.
    pub fn entry(&self) -> u32 {
        self.entry
    }

    /// The segments to load, in image order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + 'a {
        let image = *self;
        // `parse` has already decoded every slot without error.
        (0..image.segment_slots())
            .filter_map(move |index| image.segment(index).ok().flatten().map(|(s, _)| s))
    }

    fn segment_slots(&self) -> usize {
        match self.layout {
            Layout::Elf { phnum, .. } => phnum,
            Layout::AddressFields { .. } => 1,
        }
    }

    /// Slot `index` as a segment and its virtual address, or `None` if it loads nothing.
    fn segment(&self, index: usize) -> Result<Option<(Segment<'a>, u32)>, LoadError> {
        match self.layout {
            Layout::AddressFields {
                file_offset,
                file_len,
                addr,
                mem_len,
            } => {
                let data = self
                    .bytes
                    .get(file_offset..file_offset + file_len)
                    .ok_or(LoadError::Truncated)?;
                Ok(Some((
                    Segment {
                        addr,
                        data,
                        mem_len,
                    },
                    addr,
                )))
            }
            Layout::Elf {
                phoff, phentsize, ..
            } => {
                let at = phoff + index * phentsize;
                let field = |n: usize| read_u32(self.bytes, at + 4 * n);
                // Elf32_Phdr: type, offset, vaddr, paddr, filesz, memsz, flags, align.
                let (kind, offset, vaddr, paddr) = (field(0)?, field(1)?, field(2)?, field(3)?);
                let (filesz, memsz) = (field(4)?, field(5)?);
                if kind != elf::PT_LOAD || memsz == 0 {
                    return Ok(None);
                }
                if filesz > memsz {
                    return Err(LoadError::BadSegmentSize { addr: paddr });
                }
                if u64::from(paddr) + u64::from(memsz) > 1 << 32 {
                    return Err(LoadError::SegmentOutsideMemory {
                        addr: paddr,
                        len: memsz,
                    });
                }
                let start = offset as usize;
                let data = start
                    .checked_add(filesz as usize)
                    .and_then(|end| self.bytes.get(start..end))
                    .ok_or(LoadError::Truncated)?;
                Ok(Some((
                    Segment {
                        addr: paddr,
                        data,
                        mem_len: memsz,
                    },
                    vaddr,
                )))
            }
        }
    }
}

fn read_u16(bytes: &[u8], at: usize) -> Result<u16, LoadError> {
    let b = bytes
        .get(at..at.checked_add(2).ok_or(LoadError::Truncated)?)
        .ok_or(LoadError::Truncated)?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, LoadError> {
    let b = bytes
        .get(at..at.checked_add(4).ok_or(LoadError::Truncated)?)
        .ok_or(LoadError::Truncated)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Spec 3.1.1: the first 4-byte aligned magic with a good checksum wins.
fn find_header(bytes: &[u8]) -> Result<Header, LoadError> {
    let window = &bytes[..bytes.len().min(abi::HEADER_SEARCH_LEN)];
    let mut saw_magic = false;
    for offset in (0..window.len().saturating_sub(abi::HEADER_LEN - 1)).step_by(4) {
        let (magic, flags, checksum) = (
            read_u32(window, offset)?,
            read_u32(window, offset + 4)?,
            read_u32(window, offset + 8)?,
        );
        if magic != abi::HEADER_MAGIC {
            continue;
        }
        saw_magic = true;
        if magic.wrapping_add(flags).wrapping_add(checksum) != 0 {
            continue;
        }
        let required = flags & 0xFFFF;
        if required & !abi::HEADER_FLAGS_SUPPORTED_REQUIRED != 0 {
            return Err(LoadError::UnsupportedFlags { flags });
        }
        let address_fields = if flags & abi::HEADER_FLAG_ADDRESS_FIELDS != 0 {
            let field = |n: usize| read_u32(bytes, offset + 12 + 4 * n);
            Some(AddressFields {
                header_addr: field(0)?,
                load_addr: field(1)?,
                load_end_addr: field(2)?,
                bss_end_addr: field(3)?,
                entry_addr: field(4)?,
            })
        } else {
            None
        };
        return Ok(Header {
            offset,
            flags,
            address_fields,
        });
    }
    Err(if saw_magic {
        LoadError::BadChecksum
    } else {
        LoadError::NoMultibootHeader
    })
}

/// Spec 3.1.3: the file is loaded from the offset that puts the header at `header_addr`.
fn address_fields_layout(
    bytes: &[u8],
    header_offset: usize,
    f: AddressFields,
) -> Result<Layout, LoadError> {
    let before_header = f
        .header_addr
        .checked_sub(f.load_addr)
        .ok_or(LoadError::BadAddressFields)? as usize;
    let file_offset = header_offset
        .checked_sub(before_header)
        .ok_or(LoadError::BadAddressFields)?;
    let file_len = if f.load_end_addr == 0 {
        bytes.len() - file_offset
    } else {
        f.load_end_addr
            .checked_sub(f.load_addr)
            .ok_or(LoadError::BadAddressFields)? as usize
    };
    if file_offset + file_len > bytes.len() {
        return Err(LoadError::Truncated);
    }
    let load_end = u64::from(f.load_addr) + file_len as u64;
    let mem_end = if f.bss_end_addr == 0 {
        load_end
    } else {
        u64::from(f.bss_end_addr)
    };
    if mem_end < load_end {
        return Err(LoadError::BadAddressFields);
    }
    let mem_len = mem_end - u64::from(f.load_addr);
    if mem_end > 1 << 32 {
        return Err(LoadError::SegmentOutsideMemory {
            addr: f.load_addr,
            len: mem_len as u32,
        });
    }
    Ok(Layout::AddressFields {
        file_offset,
        file_len,
        addr: f.load_addr,
        mem_len: mem_len as u32,
    })
}

/// ELF header checks (System V gABI "ELF Header"); returns the layout and `e_entry`.
fn elf_layout(bytes: &[u8]) -> Result<(Layout, u32), LoadError> {
    if bytes.get(..4).ok_or(LoadError::Truncated)? != elf::MAGIC {
        return Err(LoadError::BadMagic);
    }
    if bytes.len() < elf::HEADER_LEN {
        return Err(LoadError::Truncated);
    }
    if bytes[4] != elf::CLASS_32 {
        return Err(LoadError::NotElf32);
    }
    if bytes[5] != elf::DATA_LITTLE_ENDIAN {
        return Err(LoadError::NotLittleEndian);
    }
    let elf_type = read_u16(bytes, 16)?;
    if elf_type != elf::TYPE_EXEC {
        return Err(LoadError::NotExecutable { elf_type });
    }
    let machine = read_u16(bytes, 18)?;
    if machine != elf::MACHINE_386 {
        return Err(LoadError::WrongMachine { machine });
    }
    let entry = read_u32(bytes, 24)?;
    let phoff = read_u32(bytes, 28)? as usize;
    let phentsize = read_u16(bytes, 42)?;
    let phnum = usize::from(read_u16(bytes, 44)?);
    if phnum == 0 {
        return Err(LoadError::NoLoadableSegment);
    }
    if usize::from(phentsize) < elf::PHDR_LEN {
        return Err(LoadError::BadProgramHeaderSize { size: phentsize });
    }
    let table_end = phoff
        .checked_add(phnum * usize::from(phentsize))
        .ok_or(LoadError::Truncated)?;
    if table_end > bytes.len() {
        return Err(LoadError::Truncated);
    }
    Ok((
        Layout::Elf {
            phoff,
            phentsize: usize::from(phentsize),
            phnum,
        },
        entry,
    ))
}

/// Checks that [`load`] would succeed for `image` in `mem_len` bytes of guest RAM with
/// `cmdline`, without touching any memory: for callers that must clear RAM before loading and
/// want to refuse a bad image while the VM is still unchanged.
pub fn check(image: &[u8], mem_len: usize, cmdline: &str) -> Result<(), LoadError> {
    check_with_modules(image, mem_len, cmdline, &[])
}

/// [`check`] for [`load_with_modules`].
pub fn check_with_modules(
    image: &[u8],
    mem_len: usize,
    cmdline: &str,
    modules: &[Module<'_>],
) -> Result<(), LoadError> {
    let image = check_parsed(image, mem_len, cmdline)?;
    module_layout(&image, mem_len, modules).map(|_| ())
}

fn check_parsed<'a>(
    image: &'a [u8],
    mem_len: usize,
    cmdline: &str,
) -> Result<Image<'a>, LoadError> {
    let image = Image::parse(image)?;
    if mem_len < abi::HIGH_MEMORY_START as usize {
        return Err(LoadError::MemoryTooSmall { bytes: mem_len });
    }

    if cmdline.len() > CMDLINE_MAX {
        return Err(LoadError::CmdlineTooLong { len: cmdline.len() });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(LoadError::CmdlineHasNul);
    }
    for segment in image.segments() {
        let error = |e: fn(u32, u32) -> LoadError| e(segment.addr, segment.mem_len);
        if segment.end() > mem_len as u64 {
            return Err(error(|addr, len| LoadError::SegmentOutsideMemory {
                addr,
                len,
            }));
        }
        if segment.end() > u64::from(abi::BOOT_INFO_ADDR) && segment.addr < abi::BOOT_INFO_END {
            return Err(error(|addr, len| LoadError::SegmentOverlapsBootInfo {
                addr,
                len,
            }));
        }
    }
    Ok(image)
}

/// Loads `image` into `mem` (guest RAM, index = guest-physical address) and writes the boot
/// information with `cmdline` at [`abi::BOOT_INFO_ADDR`]. Everything is checked before the first
/// byte of `mem` is written: on error `mem` is unchanged.
///
/// Only the segments and the boot information page are written; the rest of `mem` is left as
/// it is (a fresh VM's RAM is zero; a reset that wants that again must clear it itself).
pub fn load(image: &[u8], mem: &mut [u8], cmdline: &str) -> Result<Entry, LoadError> {
    load_with_modules(image, mem, cmdline, &[])
}

/// [`load`], and the boot modules: each page-aligned above the image (header flag bit 0 is
/// always honoured), the module list (`mods_addr`, `mods_count`, info flag bit 3) and the
/// modules' strings on the page after the last one. On error `mem` is unchanged.
pub fn load_with_modules(
    image: &[u8],
    mem: &mut [u8],
    cmdline: &str,
    modules: &[Module<'_>],
) -> Result<Entry, LoadError> {
    let image = check_parsed(image, mem.len(), cmdline)?;
    let layout = module_layout(&image, mem.len(), modules)?;

    // From here on nothing can fail.
    for segment in image.segments() {
        let start = segment.addr as usize;
        let (file, bss) =
            mem[start..start + segment.mem_len as usize].split_at_mut(segment.data.len());
        file.copy_from_slice(segment.data);
        bss.fill(0);
    }
    write_boot_info(mem, cmdline);
    if !modules.is_empty() {
        write_modules(mem, modules, &layout);
    }
    Ok(Entry {
        eip: image.entry(),
        ebx: abi::BOOT_INFO_ADDR,
    })
}

/// Copy the modules and write their list and strings; then point the information structure at
/// the list. `layout` fits `mem` (checked by [`module_layout`]).
fn write_modules(mem: &mut [u8], modules: &[Module<'_>], layout: &ModuleLayout) {
    let mut string_at = layout.list as usize + modules.len() * abi::MODULE_ENTRY_LEN;
    for (i, m) in modules.iter().enumerate() {
        let start = layout.starts[i] as usize;
        mem[start..start + m.bytes.len()].copy_from_slice(m.bytes);
        let entry = layout.list as usize + i * abi::MODULE_ENTRY_LEN;
        let fields = [
            start as u32,
            (start + m.bytes.len()) as u32,
            string_at as u32,
            0,
        ];
        for (k, v) in fields.into_iter().enumerate() {
            mem[entry + 4 * k..entry + 4 * k + 4].copy_from_slice(&v.to_le_bytes());
        }
        mem[string_at..string_at + m.string.len()].copy_from_slice(m.string.as_bytes());
        mem[string_at + m.string.len()] = 0;
        string_at += m.string.len() + 1;
    }
    debug_assert_eq!(string_at as u64, layout.end);
    let info = abi::BOOT_INFO_ADDR as usize;
    let put = |mem: &mut [u8], offset: usize, v: u32| {
        mem[info + offset..info + offset + 4].copy_from_slice(&v.to_le_bytes())
    };
    let flags = u32::from_le_bytes(
        mem[info + abi::INFO_FLAGS..info + abi::INFO_FLAGS + 4]
            .try_into()
            .unwrap_or_default(),
    );
    put(mem, abi::INFO_FLAGS, flags | abi::INFO_FLAG_MODS);
    put(mem, abi::INFO_MODS_COUNT, modules.len() as u32);
    put(mem, abi::INFO_MODS_ADDR, layout.list as u32);
}

/// The information structure (spec 3.3) with memory sizes, memory map, loader name and command
/// line. `mem` is at least 1 MiB long.
fn write_boot_info(mem: &mut [u8], cmdline: &str) {
    let mem_len = mem.len() as u64;
    let page = &mut mem[abi::BOOT_INFO_ADDR as usize..abi::BOOT_INFO_END as usize];
    page.fill(0);
    let at = |addr: u32| (addr - abi::BOOT_INFO_ADDR) as usize;
    let put = |page: &mut [u8], offset: usize, bytes: &[u8]| {
        page[offset..offset + bytes.len()].copy_from_slice(bytes)
    };

    let high = u64::from(abi::HIGH_MEMORY_START);
    let map: [_; MMAP_MAX_ENTRIES] = [
        (0, u64::from(abi::LOW_MEMORY_END), abi::MMAP_TYPE_AVAILABLE),
        (
            u64::from(abi::LOW_MEMORY_END),
            high - u64::from(abi::LOW_MEMORY_END),
            abi::MMAP_TYPE_RESERVED,
        ),
        (high, mem_len - high, abi::MMAP_TYPE_AVAILABLE),
    ];
    let mut mmap_len = 0;
    for (base, len, kind) in map.into_iter().filter(|&(_, len, _)| len > 0) {
        let entry = at(MMAP_ADDR) + mmap_len;
        put(
            page,
            entry,
            &((abi::MMAP_ENTRY_LEN - 4) as u32).to_le_bytes(),
        );
        put(page, entry + 4, &base.to_le_bytes());
        put(page, entry + 12, &len.to_le_bytes());
        put(page, entry + 20, &kind.to_le_bytes());
        mmap_len += abi::MMAP_ENTRY_LEN;
    }
    put(page, at(LOADER_NAME_ADDR), LOADER_NAME.as_bytes());
    put(page, at(CMDLINE_ADDR), cmdline.as_bytes());

    let mem_upper = u32::try_from((mem_len - high) / 1024).unwrap_or(u32::MAX);
    let flags = abi::INFO_FLAG_MEMORY
        | abi::INFO_FLAG_CMDLINE
        | abi::INFO_FLAG_MMAP
        | abi::INFO_FLAG_LOADER_NAME;
    let fields = [
        (abi::INFO_FLAGS, flags),
        (abi::INFO_MEM_LOWER, abi::LOW_MEMORY_END / 1024),
        (abi::INFO_MEM_UPPER, mem_upper),
        (abi::INFO_CMDLINE, CMDLINE_ADDR),
        (abi::INFO_MMAP_LENGTH, mmap_len as u32),
        (abi::INFO_MMAP_ADDR, MMAP_ADDR),
        (abi::INFO_LOADER_NAME, LOADER_NAME_ADDR),
    ];
    for (offset, value) in fields {
        put(page, offset, &value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests;
