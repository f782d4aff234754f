//! The PVH entry of an uncompressed `vmlinux`: load its ELF segments where they belong and
//! enter it in 32-bit protected mode, paging off, with EBX pointing at `hvm_start_info`.
//!
//! Why: a bzImage decompresses (xz for Debian) and relocates itself before it starts, and
//! under an emulator that costs as much as the rest of the boot to the shell. The same kernel,
//! decompressed on the host (`scripts/linux-guest` writes `target/linux/vmlinux`), carries a
//! Xen ELF note `XEN_ELFNOTE_PHYS32_ENTRY` (type 18) that names a physical 32-bit entry
//! (`pvh_start_xen`, `CONFIG_PVH`). Measured under QEMU 7.2 TCG on the 2-core host, loaded:
//! 16 s to the prompt through PVH against 35 s through the bzImage. The price is the upload:
//! the vmlinux is 66 MB against the bzImage's 8 MB.
//!
//! The protocol is Xen's `docs/misc/pvh.pandoc` with the structures of
//! `xen/include/public/arch-x86/hvm/start_info.h` (version 1: with the memory map). Firecracker
//! (`configure_pvh`) and QEMU (`-kernel vmlinux`) boot Linux this way.
//!
//! Layout: the segments at their physical addresses (`p_paddr`, 16 MiB up for Linux); the
//! start info at [`START_INFO_ADDR`], the module list (the initrd) at [`MODLIST_ADDR`], the
//! memory map at [`MEMMAP_ADDR`], the command line at [`CMDLINE_ADDR`] and the GDT at
//! [`GDT_ADDR`] (its 0x08 flat 32-bit code and 0x18 data entries); the initrd as for a bzImage.

use super::{
    BOOT_AREA_END, BOOT_AREA_START, BOOT_CS32, BOOT_DS, BootConfig, CMDLINE_ADDR, E820Map, GDT,
    GDT_ADDR, HIGH_MEMORY_START, LoadError, ZERO_PAGE_ADDR, place_initrd, read_u16, read_u32,
    read_u64,
};

/// Numbers of the ELF64 format (System V gABI) and of Xen's PVH start info.
pub mod abi {
    /// `hvm_start_info.magic`.
    pub const START_INFO_MAGIC: u32 = 0x336E_C578;
    /// Version 1: with `memmap_paddr`/`memmap_entries`.
    pub const START_INFO_VERSION: u32 = 1;
    /// `hvm_start_info` offsets: magic, version, flags, nr_modules (u32 each), modlist_paddr,
    /// cmdline_paddr, rsdp_paddr, memmap_paddr (u64 each), memmap_entries (u32), reserved.
    pub const SI_MAGIC: usize = 0;
    pub const SI_VERSION: usize = 4;
    pub const SI_NR_MODULES: usize = 12;
    pub const SI_MODLIST_PADDR: usize = 16;
    pub const SI_CMDLINE_PADDR: usize = 24;
    pub const SI_RSDP_PADDR: usize = 32;
    pub const SI_MEMMAP_PADDR: usize = 40;
    pub const SI_MEMMAP_ENTRIES: usize = 48;
    /// Size of `hvm_start_info` version 1.
    pub const START_INFO_LEN: usize = 56;
    /// `hvm_modlist_entry`: paddr, size, cmdline_paddr, reserved (u64 each).
    pub const MODLIST_ENTRY_LEN: usize = 32;
    /// `hvm_memmap_table_entry`: addr, size (u64), type, reserved (u32): e820 types.
    pub const MEMMAP_ENTRY_LEN: usize = 24;
    /// The ELF note type of the 32-bit physical entry point, owner "Xen".
    pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

    /// ELF64: identification, type EXEC, machine x86-64, program header types.
    pub const ELF_MAGIC: [u8; 4] = [0x7F, b'E', b'L', b'F'];
    pub const ELFCLASS64: u8 = 2;
    pub const ELFDATA2LSB: u8 = 1;
    pub const ET_EXEC: u16 = 2;
    pub const EM_X86_64: u16 = 62;
    pub const PT_LOAD: u32 = 1;
    pub const PT_NOTE: u32 = 4;
    pub const EHDR_LEN: usize = 64;
    pub const PHDR_LEN: usize = 56;
}

/// `hvm_start_info` (EBX at entry).
pub const START_INFO_ADDR: u64 = ZERO_PAGE_ADDR;
/// The module list: one entry, the initrd.
pub const MODLIST_ADDR: u64 = START_INFO_ADDR + 0x40;
/// The memory map.
pub const MEMMAP_ADDR: u64 = START_INFO_ADDR + 0x80;
/// x86 Linux's `COMMAND_LINE_SIZE` is 2048: the longest command line it keeps.
pub const CMDLINE_MAX: usize = 2047;
const _: () = assert!(START_INFO_ADDR + abi::START_INFO_LEN as u64 <= MODLIST_ADDR);
const _: () = assert!(MODLIST_ADDR + abi::MODLIST_ENTRY_LEN as u64 <= MEMMAP_ADDR);
const _: () =
    assert!(MEMMAP_ADDR + (super::MAX_E820 * abi::MEMMAP_ENTRY_LEN) as u64 <= CMDLINE_ADDR);

/// An x86-64 ELF executable with a PVH entry note.
#[derive(Clone, Copy, Debug)]
pub struct Vmlinux<'a> {
    bytes: &'a [u8],
    phoff: usize,
    phentsize: usize,
    phnum: usize,
    /// The PHYS32_ENTRY address.
    pub entry: u32,
    /// Lowest physical address of a loaded segment.
    pub start: u64,
    /// One past the highest byte of a loaded segment.
    pub end: u64,
}

/// One loadable segment: `data` at `paddr`, zeroes up to `paddr + mem_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Physical load address.
    pub paddr: u64,
    /// File contents.
    pub data: &'a [u8],
    /// Size in memory.
    pub mem_len: u64,
}

impl<'a> Vmlinux<'a> {
    /// Checks the ELF64 header, the program headers and the PVH note.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, LoadError> {
        if bytes.len() < abi::EHDR_LEN
            || bytes[..4] != abi::ELF_MAGIC
            || bytes[4] != abi::ELFCLASS64
            || bytes[5] != abi::ELFDATA2LSB
            || read_u16(bytes, 16)? != abi::ET_EXEC
            || read_u16(bytes, 18)? != abi::EM_X86_64
        {
            return Err(LoadError::NotElf64);
        }
        let phoff = read_u64(bytes, 32)? as usize;
        let phentsize = usize::from(read_u16(bytes, 54)?);
        let phnum = usize::from(read_u16(bytes, 56)?);
        if phentsize < abi::PHDR_LEN
            || phoff
                .checked_add(phnum * phentsize)
                .is_none_or(|end| end > bytes.len())
        {
            return Err(LoadError::Truncated);
        }
        let mut image = Self {
            bytes,
            phoff,
            phentsize,
            phnum,
            entry: 0,
            start: u64::MAX,
            end: 0,
        };
        let mut entry = None;
        for i in 0..phnum {
            let (kind, offset, paddr, filesz, memsz) = image.phdr(i)?;
            match kind {
                abi::PT_LOAD if memsz > 0 => {
                    let end = paddr
                        .checked_add(memsz)
                        .ok_or(LoadError::BadSegment { addr: paddr })?;
                    if filesz > memsz || paddr < HIGH_MEMORY_START || end > 1 << 32 {
                        return Err(LoadError::BadSegment { addr: paddr });
                    }
                    image.file_range(offset, filesz)?;
                    image.start = image.start.min(paddr);
                    image.end = image.end.max(end);
                }
                abi::PT_NOTE => {
                    let notes = image.file_range(offset, filesz)?;
                    entry = entry.or(phys32_entry(notes));
                }
                _ => {}
            }
        }
        if image.end == 0 {
            return Err(LoadError::BadSegment { addr: 0 });
        }
        image.entry = entry.ok_or(LoadError::NoPvhEntry)?;
        let e = u64::from(image.entry);
        if !image
            .segments()
            .any(|s| s.paddr <= e && e < s.paddr + s.mem_len)
        {
            return Err(LoadError::NoPvhEntry);
        }
        Ok(image)
    }

    /// The PT_LOAD segments with a non-zero memory size, in file order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + 'a {
        let image = *self;
        // `parse` has checked every header.
        (0..image.phnum).filter_map(move |i| {
            let (kind, offset, paddr, filesz, memsz) = image.phdr(i).ok()?;
            (kind == abi::PT_LOAD && memsz > 0).then(|| Segment {
                paddr,
                data: image.file_range(offset, filesz).unwrap_or(&[]),
                mem_len: memsz,
            })
        })
    }

    /// Elf64_Phdr `index`: type, offset, paddr, filesz, memsz.
    fn phdr(&self, index: usize) -> Result<(u32, u64, u64, u64, u64), LoadError> {
        let at = self.phoff + index * self.phentsize;
        Ok((
            read_u32(self.bytes, at)?,
            read_u64(self.bytes, at + 8)?,
            read_u64(self.bytes, at + 24)?,
            read_u64(self.bytes, at + 32)?,
            read_u64(self.bytes, at + 40)?,
        ))
    }

    fn file_range(&self, offset: u64, len: u64) -> Result<&'a [u8], LoadError> {
        let start = usize::try_from(offset).map_err(|_| LoadError::Truncated)?;
        let len = usize::try_from(len).map_err(|_| LoadError::Truncated)?;
        start
            .checked_add(len)
            .and_then(|end| self.bytes.get(start..end))
            .ok_or(LoadError::Truncated)
    }
}

/// The PHYS32_ENTRY of a "Xen" note in `notes` (ELF note format: namesz, descsz, type, name,
/// desc, each padded to 4 bytes). Linux gives it as a pointer-sized value; it must fit 32 bits.
fn phys32_entry(notes: &[u8]) -> Option<u32> {
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = read_u32(notes, at).ok()? as usize;
        let descsz = read_u32(notes, at + 4).ok()? as usize;
        let kind = read_u32(notes, at + 8).ok()?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(namesz.next_multiple_of(4))?;
        let next = desc_at.checked_add(descsz.next_multiple_of(4))?;
        let name = notes.get(name_at..name_at + namesz)?;
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if name == b"Xen\0" && kind == abi::XEN_ELFNOTE_PHYS32_ENTRY {
            let value = match descsz {
                4 => u64::from(read_u32(desc, 0).ok()?),
                8 => read_u64(desc, 0).ok()?,
                _ => return None,
            };
            return u32::try_from(value).ok();
        }
        at = next;
    }
    None
}

/// Where [`load`] puts everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Lowest and one-past-highest byte of the kernel's segments.
    pub kernel_start: u64,
    /// See `kernel_start`.
    pub kernel_end: u64,
    /// The 32-bit entry point.
    pub entry: u32,
    /// The initrd's address (0 if none) and length.
    pub initrd_addr: u64,
    /// See `initrd_addr`.
    pub initrd_len: u64,
    /// The memory map handed over in the start info.
    pub e820: E820Map,
}

/// Checks that [`load`] would succeed, without touching memory, and says where things go.
/// The initrd stays below 2 GiB, as for the bzImage (`initrd_addr_max` 0x7FFFFFFF).
pub fn check(image: &[u8], mem_len: usize, config: &BootConfig<'_>) -> Result<Plan, LoadError> {
    let vmlinux = Vmlinux::parse(image)?;
    let ram = mem_len as u64;
    if ram < HIGH_MEMORY_START {
        return Err(LoadError::MemoryTooSmall { bytes: ram });
    }
    if config.cmdline.len() > CMDLINE_MAX {
        return Err(LoadError::CmdlineTooLong {
            len: config.cmdline.len(),
            max: CMDLINE_MAX,
        });
    }
    if config.cmdline.as_bytes().contains(&0) {
        return Err(LoadError::CmdlineHasNul);
    }
    let e820 = E820Map::build(ram, config.reserved)?;
    if vmlinux.end > ram {
        return Err(LoadError::KernelTooBig {
            end: vmlinux.end,
            ram,
        });
    }
    if let Some(r) = config
        .reserved
        .iter()
        .find(|r| r.overlaps(vmlinux.start, vmlinux.end))
    {
        return Err(LoadError::KernelOverlapsReserved { addr: r.addr });
    }
    let initrd_len = config.initrd.len() as u64;
    let initrd_addr = if initrd_len == 0 {
        0
    } else {
        place_initrd(&e820, initrd_len, 0x7FFF_FFFF, (vmlinux.start, vmlinux.end))
            .ok_or(LoadError::InitrdTooBig { len: initrd_len })?
    };
    Ok(Plan {
        kernel_start: vmlinux.start,
        kernel_end: vmlinux.end,
        entry: vmlinux.entry,
        initrd_addr,
        initrd_len,
        e820,
    })
}

/// The PVH entry state (`docs/misc/pvh.pandoc`): 32-bit protected mode, paging off.
///
/// EIP = [`PvhEntry::eip`], EBX = [`PvhEntry::ebx`] (the start info), other GPRs 0, EFLAGS
/// 0x2. CR0 = PE | ET (0x11), CR4 = 0, EFER = 0 (plus SVME under SVM). CS = [`BOOT_CS32`], base
/// 0, limit 0xFFFF_FFFF, attributes [`PvhEntry::CODE_ATTRS`]; DS, ES, SS, FS, GS =
/// [`BOOT_DS`], base 0, limit 0xFFFF_FFFF, attributes [`super::Entry::DATA_ATTRS`]; GDTR =
/// {[`GDT_ADDR`], 31}; TR a 32-bit busy TSS (type 0xB), base 0, limit 0x67.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvhEntry {
    /// The PHYS32_ENTRY address.
    pub eip: u32,
    /// `hvm_start_info`.
    pub ebx: u32,
    /// EFLAGS.
    pub eflags: u32,
    /// CR0.
    pub cr0: u32,
    /// GDTR base.
    pub gdt_base: u32,
    /// GDTR limit.
    pub gdt_limit: u16,
    /// CS selector.
    pub cs: u16,
    /// DS, ES, SS, FS, GS selector.
    pub ds: u16,
}

impl PvhEntry {
    /// CS attributes, VMCB packed format: type 0xB, S, P, D, G (32-bit code).
    pub const CODE_ATTRS: u16 = 0xC9B;
    /// CR0 at entry: ET | PE.
    pub const CR0: u32 = 0x11;
}

/// Loads `image` (a vmlinux with a PVH note) into `mem` with `config`; on error `mem` is
/// unchanged. Writes the segments (zeroing their tails), the initrd, the start info, module
/// list, memory map, command line and GDT.
pub fn load(image: &[u8], mem: &mut [u8], config: &BootConfig<'_>) -> Result<PvhEntry, LoadError> {
    let plan = check(image, mem.len(), config)?;
    let vmlinux = Vmlinux::parse(image)?;

    // From here on nothing can fail.
    for s in vmlinux.segments() {
        let start = s.paddr as usize;
        let (file, bss) = mem[start..start + s.mem_len as usize].split_at_mut(s.data.len());
        file.copy_from_slice(s.data);
        bss.fill(0);
    }
    if plan.initrd_len > 0 {
        let at = plan.initrd_addr as usize;
        mem[at..at + config.initrd.len()].copy_from_slice(config.initrd);
    }
    let boot = &mut mem[BOOT_AREA_START as usize..BOOT_AREA_END as usize];
    boot.fill(0);
    let put = |boot: &mut [u8], addr: u64, bytes: &[u8]| {
        let at = (addr - BOOT_AREA_START) as usize;
        boot[at..at + bytes.len()].copy_from_slice(bytes);
    };
    for (i, d) in GDT.iter().enumerate() {
        put(boot, GDT_ADDR + 8 * i as u64, &d.to_le_bytes());
    }
    put(boot, CMDLINE_ADDR, config.cmdline.as_bytes());
    let si = START_INFO_ADDR;
    put(
        boot,
        si + abi::SI_MAGIC as u64,
        &abi::START_INFO_MAGIC.to_le_bytes(),
    );
    put(
        boot,
        si + abi::SI_VERSION as u64,
        &abi::START_INFO_VERSION.to_le_bytes(),
    );
    put(
        boot,
        si + abi::SI_CMDLINE_PADDR as u64,
        &CMDLINE_ADDR.to_le_bytes(),
    );
    put(
        boot,
        si + abi::SI_RSDP_PADDR as u64,
        &config.acpi_rsdp.unwrap_or(0).to_le_bytes(),
    );
    if plan.initrd_len > 0 {
        put(boot, si + abi::SI_NR_MODULES as u64, &1u32.to_le_bytes());
        put(
            boot,
            si + abi::SI_MODLIST_PADDR as u64,
            &MODLIST_ADDR.to_le_bytes(),
        );
        put(boot, MODLIST_ADDR, &plan.initrd_addr.to_le_bytes());
        put(boot, MODLIST_ADDR + 8, &plan.initrd_len.to_le_bytes());
    }
    let entries = plan.e820.entries();
    put(
        boot,
        si + abi::SI_MEMMAP_PADDR as u64,
        &MEMMAP_ADDR.to_le_bytes(),
    );
    put(
        boot,
        si + abi::SI_MEMMAP_ENTRIES as u64,
        &(entries.len() as u32).to_le_bytes(),
    );
    for (i, r) in entries.iter().enumerate() {
        let at = MEMMAP_ADDR + (i * abi::MEMMAP_ENTRY_LEN) as u64;
        put(boot, at, &r.addr.to_le_bytes());
        put(boot, at + 8, &r.len.to_le_bytes());
        put(boot, at + 16, &(r.kind as u32).to_le_bytes());
    }
    Ok(PvhEntry {
        eip: plan.entry,
        ebx: START_INFO_ADDR as u32,
        eflags: 0x2,
        cr0: PvhEntry::CR0,
        gdt_base: GDT_ADDR as u32,
        gdt_limit: (GDT.len() * 8 - 1) as u16,
        cs: BOOT_CS32,
        ds: BOOT_DS,
    })
}

#[cfg(test)]
mod tests;
