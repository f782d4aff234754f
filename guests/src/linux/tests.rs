//! Linux loader tests: a synthetic bzImage whose header is written by hand field by field, the
//! zero page read back against `Documentation/arch/x86/zero-page.rst`, the e820 map, initrd
//! placement, a walk of the identity map, the GDT descriptors, every error leaving memory as
//! it was; and, with `HERMITAGE_LINUX_BZIMAGE` set, Debian's real kernel.

extern crate std;

use std::vec;
use std::vec::Vec;

use super::*;

const MIB: usize = 1 << 20;
const RAM: usize = 32 * MIB;
/// The synthetic kernel's sizes: 3 setup sectors, a 64 KiB protected-mode part, 4 MiB init_size.
const SETUP_SECTS: u8 = 3;
const PAYLOAD: usize = 0x10000;
const INIT_SIZE: u32 = 0x40_0000;
/// 2.15's header ends after kernel_info_offset (0x268..0x26C): jump displacement 0x6A.
const HEADER_END: usize = 0x26C;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn set16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn set32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn set64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A bzImage as `arch/x86/boot/tools/build.c` lays it out: boot sector + setup sectors, then
/// the protected-mode part, `syssize` paragraphs long. Header fields not used by the loader get
/// recognisable values so that the copy into the zero page shows.
fn bzimage() -> Vec<u8> {
    let setup_len = (usize::from(SETUP_SECTS) + 1) * 512;
    let mut image = vec![0u8; setup_len + PAYLOAD];
    // Real-mode bytes before the header: a loader must not copy them.
    for (i, b) in image[..0x1F1].iter_mut().enumerate() {
        *b = i as u8 | 0x80;
    }
    image[abi::SETUP_SECTS] = SETUP_SECTS;
    set16(&mut image, 0x1F2, 1); // root_flags
    set32(&mut image, abi::SYSSIZE, (PAYLOAD / 16) as u32);
    set16(&mut image, 0x1FA, 0xFFFF); // vid_mode "normal"
    set16(&mut image, 0x1FC, 0x0301); // root_dev
    set16(&mut image, abi::BOOT_FLAG, 0xAA55);
    image[abi::JUMP] = 0xEB;
    image[abi::JUMP + 1] = (HEADER_END - 0x202) as u8;
    image[abi::HEADER..abi::HEADER + 4].copy_from_slice(b"HdrS");
    set16(&mut image, abi::VERSION, 0x020F);
    set16(&mut image, 0x20E, 0x3A0); // kernel_version string offset
    image[abi::LOADFLAGS] = 0x01;
    set32(&mut image, 0x214, 0x10_0000); // code32_start
    set32(&mut image, abi::RAMDISK_IMAGE, 0xDEAD_0000); // stale values the loader overwrites
    set32(&mut image, abi::RAMDISK_SIZE, 0xBEEF);
    set32(&mut image, abi::CMD_LINE_PTR, 0x1234_5678);
    set32(&mut image, abi::INITRD_ADDR_MAX, 0x7FFF_FFFF);
    set32(&mut image, abi::KERNEL_ALIGNMENT, 0x20_0000);
    image[abi::RELOCATABLE_KERNEL] = 1;
    image[0x235] = 21; // min_alignment
    set16(&mut image, abi::XLOADFLAGS, 0x7F);
    set32(&mut image, abi::CMDLINE_SIZE, 0x7FF);
    set32(&mut image, 0x248, 0x3B4); // payload_offset
    set32(&mut image, 0x24C, 0xF000); // payload_length
    set64(&mut image, abi::PREF_ADDRESS, 0x100_0000);
    set32(&mut image, abi::INIT_SIZE, INIT_SIZE);
    set32(&mut image, 0x264, 0x190); // handover_offset
    set32(&mut image, 0x268, 0x6_0000); // kernel_info_offset
    // Setup code after the header: must not reach the zero page.
    for b in &mut image[HEADER_END..setup_len] {
        *b = 0x5A;
    }
    // The protected-mode part: startup_32 at 0, `cld; cli` of startup_64 at 0x200.
    for (i, b) in image[setup_len..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ 0x3C;
    }
    image[setup_len + 0x200] = 0xFC;
    image[setup_len + 0x201] = 0xFA;
    image
}

/// Guest RAM with a recognisable pattern, so that writes (and zeroing) show.
fn ram(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8) ^ 0xA5 ^ (i >> 12) as u8)
        .collect()
}

fn initrd(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn config<'a>(cmdline: &'a str, initrd: &'a [u8]) -> BootConfig<'a> {
    BootConfig {
        cmdline,
        initrd,
        ..BootConfig::default()
    }
}

fn region(addr: u64, len: u64, kind: E820Kind) -> Region {
    Region { addr, len, kind }
}

fn zero_page(mem: &[u8]) -> &[u8] {
    &mem[ZERO_PAGE_ADDR as usize..ZERO_PAGE_ADDR as usize + 4096]
}

/// The e820 table as the kernel reads it from the zero page.
fn zp_e820(zp: &[u8]) -> Vec<(u64, u64, u32)> {
    (0..usize::from(zp[abi::ZP_E820_ENTRIES]))
        .map(|i| {
            let at = abi::ZP_E820_TABLE + 20 * i;
            (le64(zp, at), le64(zp, at + 8), le32(zp, at + 16))
        })
        .collect()
}

#[test]
fn setup_header_fields_are_read_from_their_offsets() {
    let h = SetupHeader::parse(&bzimage()).unwrap();
    assert_eq!(
        h,
        SetupHeader {
            setup_sects: SETUP_SECTS,
            syssize: (PAYLOAD / 16) as u32,
            version: 0x020F,
            loadflags: 0x01,
            xloadflags: 0x7F,
            kernel_alignment: 0x20_0000,
            relocatable: true,
            cmdline_size: 0x7FF,
            initrd_addr_max: 0x7FFF_FFFF,
            pref_address: 0x100_0000,
            init_size: INIT_SIZE,
            header_end: HEADER_END,
        }
    );
    assert_eq!(h.kernel_offset(), 4 * 512);
    assert_eq!(h.kernel_len(), PAYLOAD as u64);
    assert_eq!(h.cmdline_max(), 0x7FF);
}

#[test]
fn setup_sects_zero_means_four() {
    let mut image = bzimage();
    image[abi::SETUP_SECTS] = 0;
    // 0 means 4 setup sectors: the kernel starts at 5 * 512. Make the file match.
    image.splice(4 * 512..4 * 512, [0u8; 512]);
    let h = SetupHeader::parse(&image).unwrap();
    assert_eq!(h.setup_sects, 4);
    assert_eq!(h.kernel_offset(), 5 * 512);
    let mut mem = vec![0; RAM];
    let entry = load(&image, &mut mem, &config("", &[])).unwrap();
    assert_eq!(
        &mem[entry.rip as usize..entry.rip as usize + 2],
        [0xFC, 0xFA]
    );
}

#[test]
fn kernel_goes_to_pref_address_and_entry_is_startup_64() {
    let image = bzimage();
    let mut mem = ram(RAM);
    let before = mem.clone();
    let entry = load(&image, &mut mem, &config("console=ttyS0", &[])).unwrap();
    let k = 0x100_0000;
    assert_eq!(&mem[k..k + PAYLOAD], &image[4 * 512..]);
    assert_eq!(entry.rip, 0x100_0200);
    assert_eq!(
        &mem[entry.rip as usize..entry.rip as usize + 2],
        [0xFC, 0xFA]
    );
    // The rest of the init_size window, and everything else outside the boot area, untouched.
    assert_eq!(mem[k + PAYLOAD..], before[k + PAYLOAD..]);
    assert_eq!(
        mem[BOOT_AREA_END as usize..k],
        before[BOOT_AREA_END as usize..k]
    );
    assert_eq!(
        mem[..BOOT_AREA_START as usize],
        before[..BOOT_AREA_START as usize]
    );
}

#[test]
fn relocatable_kernel_is_rounded_up_to_its_alignment_fixed_one_is_not() {
    let mut image = bzimage();
    set64(&mut image, abi::PREF_ADDRESS, 0x110_0000);
    let plan = check(&image, RAM, &config("", &[])).unwrap();
    assert_eq!(plan.kernel_addr, 0x120_0000);
    assert_eq!(plan.kernel_end, 0x120_0000 + u64::from(INIT_SIZE));
    image[abi::RELOCATABLE_KERNEL] = 0;
    let plan = check(&image, RAM, &config("", &[])).unwrap();
    assert_eq!(plan.kernel_addr, 0x110_0000);
    // init_size smaller than the image: the window is the image.
    set32(&mut image, abi::INIT_SIZE, 0x100);
    let plan = check(&image, RAM, &config("", &[])).unwrap();
    assert_eq!(plan.kernel_end, 0x110_0000 + PAYLOAD as u64);
}

#[test]
fn zero_page_holds_the_copied_header_and_the_loader_fields() {
    let image = bzimage();
    let mut mem = ram(RAM);
    let rd = initrd(100_000);
    let cfg = BootConfig {
        acpi_rsdp: Some(0xF_0000),
        ..config("console=ttyS0 nokaslr", &rd)
    };
    let entry = load(&image, &mut mem, &cfg).unwrap();
    assert_eq!(entry.rsi, ZERO_PAGE_ADDR);
    let zp = zero_page(&mem);
    let plan = check(&image, RAM, &cfg).unwrap();

    // Header: 0x1F1..0x202 + byte[0x201] copied, except the fields the loader owns.
    let owned = [
        abi::TYPE_OF_LOADER..abi::TYPE_OF_LOADER + 1,
        abi::RAMDISK_IMAGE..abi::RAMDISK_SIZE + 4,
        abi::CMD_LINE_PTR..abi::CMD_LINE_PTR + 4,
    ];
    for at in abi::SETUP_HEADER_START..HEADER_END {
        if !owned.iter().any(|r| r.contains(&at)) {
            assert_eq!(zp[at], image[at], "header byte {at:#x}");
        }
    }
    assert_eq!(le16(zp, abi::BOOT_FLAG), 0xAA55);
    assert_eq!(&zp[abi::HEADER..abi::HEADER + 4], b"HdrS");
    assert_eq!(le16(zp, abi::VERSION), 0x020F);
    // Loader fields.
    assert_eq!(zp[abi::TYPE_OF_LOADER], 0xFF);
    assert_eq!(le32(zp, abi::CMD_LINE_PTR), CMDLINE_ADDR as u32);
    assert_eq!(le32(zp, abi::ZP_EXT_CMD_LINE_PTR), 0);
    assert_eq!(u64::from(le32(zp, abi::RAMDISK_IMAGE)), plan.initrd_addr);
    assert_eq!(le32(zp, abi::RAMDISK_SIZE), 100_000);
    assert_eq!(le32(zp, abi::ZP_EXT_RAMDISK_IMAGE), 0);
    assert_eq!(le32(zp, abi::ZP_EXT_RAMDISK_SIZE), 0);
    assert_eq!(le64(zp, abi::ZP_ACPI_RSDP_ADDR), 0xF_0000);
    assert_eq!(zp[abi::ZP_SENTINEL], 0);
    // Nothing else: everything outside the header and the fields set is zero (no real-mode
    // bytes before 0x1F1, no setup code after the header).
    let set = [
        abi::ZP_ACPI_RSDP_ADDR..abi::ZP_ACPI_RSDP_ADDR + 8,
        abi::ZP_E820_ENTRIES..abi::ZP_E820_ENTRIES + 1,
        abi::SETUP_HEADER_START..HEADER_END,
        abi::ZP_E820_TABLE..abi::ZP_E820_TABLE + 20 * plan.e820.entries().len(),
    ];
    for (at, &b) in zp.iter().enumerate() {
        if !set.iter().any(|r| r.contains(&at)) {
            assert_eq!(b, 0, "zero page byte {at:#x}");
        }
    }
    // Command line, NUL-terminated.
    let c = CMDLINE_ADDR as usize;
    assert_eq!(&mem[c..c + 22], b"console=ttyS0 nokaslr\0");
}

#[test]
fn without_initrd_or_rsdp_their_fields_stay_zero() {
    let mut mem = ram(RAM);
    load(&bzimage(), &mut mem, &config("", &[])).unwrap();
    let zp = zero_page(&mem);
    for at in [
        abi::RAMDISK_IMAGE,
        abi::RAMDISK_SIZE,
        abi::ZP_EXT_RAMDISK_IMAGE,
    ] {
        assert_eq!(le32(zp, at), 0, "{at:#x}");
    }
    assert_eq!(le64(zp, abi::ZP_ACPI_RSDP_ADDR), 0);
    assert_eq!(mem[CMDLINE_ADDR as usize], 0, "empty command line");
}

#[test]
fn e820_of_plain_ram_is_low_memory_legacy_hole_high_memory() {
    let mut mem = ram(RAM);
    load(&bzimage(), &mut mem, &config("", &[])).unwrap();
    assert_eq!(
        zp_e820(zero_page(&mem)),
        [
            (0, 0x9_FC00, 1),
            (0x9_FC00, 0x100000 - 0x9_FC00, 2),
            (0x10_0000, RAM as u64 - 0x10_0000, 1),
        ]
    );
}

#[test]
fn e820_cuts_reserved_regions_out_of_ram_and_adds_those_beyond_it() {
    let reserved = [
        // Device windows above RAM (IOAPIC, local APIC), given out of order.
        region(0xFEE0_0000, 0x1000, E820Kind::Reserved),
        region(0xFEC0_0000, 0x1000, E820Kind::Reserved),
        // ACPI tables in the BIOS area, inside the legacy hole.
        region(0xE_0000, 0x1_0000, E820Kind::Acpi),
        // A firmware page at the top of RAM.
        region(RAM as u64 - 0x1000, 0x1000, E820Kind::Nvs),
        // Just below the hole: merges with it.
        region(0x9_F000, 0xC00, E820Kind::Reserved),
    ];
    let map = E820Map::build(RAM as u64, &reserved).unwrap();
    let expect = [
        region(0, 0x9_F000, E820Kind::Ram),
        region(0x9_F000, 0xE_0000 - 0x9_F000, E820Kind::Reserved),
        region(0xE_0000, 0x1_0000, E820Kind::Acpi),
        region(0xF_0000, 0x1_0000, E820Kind::Reserved),
        region(0x10_0000, RAM as u64 - 0x10_0000 - 0x1000, E820Kind::Ram),
        region(RAM as u64 - 0x1000, 0x1000, E820Kind::Nvs),
        region(0xFEC0_0000, 0x1000, E820Kind::Reserved),
        region(0xFEE0_0000, 0x1000, E820Kind::Reserved),
    ];
    assert_eq!(map.entries(), expect);

    // The same map lands in the zero page.
    let mut mem = ram(RAM);
    let cfg = BootConfig {
        reserved: &reserved,
        ..config("", &[])
    };
    load(&bzimage(), &mut mem, &cfg).unwrap();
    let want: Vec<_> = expect
        .iter()
        .map(|r| (r.addr, r.len, r.kind as u32))
        .collect();
    assert_eq!(zp_e820(zero_page(&mem)), want);
}

#[test]
fn e820_supports_sixteen_regions_and_ram_above_4_gib() {
    let reserved: Vec<_> = (0..MAX_RESERVED as u64)
        .map(|i| region(0x200_0000 + i * 0x2000, 0x1000, E820Kind::Reserved))
        .collect();
    let ram = 5u64 << 30;
    let map = E820Map::build(ram, &reserved).unwrap();
    assert_eq!(map.entries().len(), 3 + 2 * MAX_RESERVED);
    assert_eq!(map.entries().last().unwrap().end(), ram);
    let total: u64 = map.entries().iter().map(|r| r.len).sum();
    assert_eq!(total, ram, "the entries tile 0..RAM");
    assert!(map.entries().windows(2).all(|w| w[0].end() <= w[1].addr));
}

#[test]
fn initrd_goes_page_aligned_to_the_top_of_ram() {
    let rd = initrd(100_000);
    let mut mem = ram(RAM);
    load(&bzimage(), &mut mem, &config("", &rd)).unwrap();
    let plan = check(&bzimage(), RAM, &config("", &rd)).unwrap();
    let addr = plan.initrd_addr as usize;
    assert_eq!(addr % 4096, 0);
    assert!(
        addr + rd.len() <= RAM && RAM - (addr + rd.len()) < 4096,
        "{addr:#x}"
    );
    assert_eq!(&mem[addr..addr + rd.len()], &rd[..]);
}

#[test]
fn initrd_stays_below_initrd_addr_max() {
    let mut image = bzimage();
    // The initrd's last byte may be at 24 MiB - 1 at most.
    set32(&mut image, abi::INITRD_ADDR_MAX, 0x17F_FFFF);
    let rd = initrd(8192);
    let plan = check(&image, RAM, &config("", &rd)).unwrap();
    assert_eq!(plan.initrd_addr, 0x180_0000 - 8192);
    // An initrd that does not fit below the limit (1 MiB..16 MiB under the kernel, 20..24
    // MiB above it) is refused.
    let big = initrd(5 * MIB);
    let plan = check(&image, RAM, &config("", &big)).unwrap();
    assert!(
        plan.initrd_addr + 5 * MIB as u64 <= 0x100_0000,
        "below the kernel"
    );
    let huge = initrd(16 * MIB);
    assert_eq!(
        check(&image, RAM, &config("", &huge)),
        Err(LoadError::InitrdTooBig {
            len: 16 * MIB as u64
        })
    );
}

#[test]
fn initrd_never_overlaps_the_kernel_init_size_window_or_reserved_regions() {
    let mut image = bzimage();
    // init_size reaching the end of RAM: the initrd must go below the kernel.
    set32(&mut image, abi::INIT_SIZE, (RAM - 0x100_0000) as u32);
    let rd = initrd(3 * MIB + 5);
    let plan = check(&image, RAM, &config("", &rd)).unwrap();
    assert_eq!(plan.kernel_end, RAM as u64);
    assert!(plan.initrd_addr + rd.len() as u64 <= plan.kernel_addr);
    assert_eq!(plan.initrd_addr % 4096, 0);
    assert!(plan.initrd_addr >= HIGH_MEMORY_START);
    // A reserved page at the top of RAM: the initrd ends below it.
    let reserved = [region(RAM as u64 - 0x1000, 0x1000, E820Kind::Reserved)];
    let cfg = BootConfig {
        reserved: &reserved,
        ..config("", &rd)
    };
    let plan = check(&bzimage(), RAM, &cfg).unwrap();
    assert!(plan.initrd_addr + rd.len() as u64 <= RAM as u64 - 0x1000);
    assert!(plan.initrd_addr >= plan.kernel_end);
    // Exactly filling the space between 1 MiB and the kernel still fits.
    let exact = initrd(0x100_0000 - MIB);
    let plan = check(&image, RAM, &config("", &exact)).unwrap();
    assert_eq!(plan.initrd_addr, HIGH_MEMORY_START);
}

/// The 4-level walk of SDM vol. 3A 4.5, over guest RAM, for 4 KiB / 2 MiB / 1 GiB leaves.
fn translate(mem: &[u8], cr3: u64, va: u64) -> Option<u64> {
    let mut table = cr3 & !0xFFF;
    for level in (0..4).rev() {
        let index = (va >> (12 + 9 * level)) & 0x1FF;
        let e = le64(mem, (table + 8 * index) as usize);
        if e & PTE_P == 0 {
            return None;
        }
        let frame = e & 0x000F_FFFF_FFFF_F000;
        if level == 0 || (level < 3 && e & PTE_PS != 0) {
            let mask = (1u64 << (12 + 9 * level)) - 1;
            return Some((frame & !mask) | (va & mask));
        }
        table = frame;
    }
    None
}

#[test]
fn page_tables_identity_map_the_first_4_gib_with_2_mib_pages() {
    let rd = initrd(4096);
    let mut mem = ram(RAM);
    let entry = load(&bzimage(), &mut mem, &config("x", &rd)).unwrap();
    assert_eq!(entry.cr3, PML4_ADDR);
    let plan = check(&bzimage(), RAM, &config("x", &rd)).unwrap();
    for va in [
        0,
        entry.rip,
        plan.kernel_end - 1,
        ZERO_PAGE_ADDR,
        CMDLINE_ADDR,
        entry.rsp - 8,
        GDT_ADDR,
        plan.initrd_addr,
        plan.initrd_addr + 4095,
        0xFEE0_0000,
        0xFFFF_FFFF,
    ] {
        assert_eq!(translate(&mem, entry.cr3, va), Some(va), "{va:#x}");
    }
    assert_eq!(translate(&mem, entry.cr3, 1 << 32), None);
    assert_eq!(translate(&mem, entry.cr3, 0xFFFF_8000_0000_0000), None);
    // Every leaf: present, writable, 2 MiB, supervisor, no other bits.
    for i in 0..PD_COUNT * 512 {
        let e = le64(&mem, PD_ADDR as usize + 8 * i);
        assert_eq!(e, ((i as u64) << 21) | 0x83, "PD entry {i}");
    }
    for i in PD_COUNT..512 {
        assert_eq!(le64(&mem, PDPT_ADDR as usize + 8 * i), 0);
    }
    for i in 1..512 {
        assert_eq!(le64(&mem, PML4_ADDR as usize + 8 * i), 0);
    }
}

/// Base, limit (in bytes), type, S, DPL, P, L, D/B, G of a segment descriptor (SDM vol. 3A
/// 3.4.5, figure 3-8).
fn decode(d: u64) -> (u64, u64, u8, bool, u8, bool, bool, bool, bool) {
    let base = ((d >> 16) & 0xFF_FFFF) | (((d >> 56) & 0xFF) << 24);
    let raw_limit = (d & 0xFFFF) | (((d >> 48) & 0xF) << 16);
    let g = d & (1 << 55) != 0;
    let limit = if g {
        (raw_limit << 12) | 0xFFF
    } else {
        raw_limit
    };
    (
        base,
        limit,
        ((d >> 40) & 0xF) as u8,
        d & (1 << 44) != 0,
        ((d >> 45) & 3) as u8,
        d & (1 << 47) != 0,
        d & (1 << 53) != 0,
        d & (1 << 54) != 0,
        g,
    )
}

#[test]
fn gdt_has_flat_boot_cs_and_boot_ds_where_entry_says() {
    let mut mem = ram(RAM);
    let entry = load(&bzimage(), &mut mem, &config("", &[])).unwrap();
    assert_eq!((entry.gdt_base, entry.gdt_limit), (GDT_ADDR, 31));
    assert_eq!((entry.cs, entry.ds), (0x10, 0x18));
    let desc = |sel: u16| le64(&mem, (entry.gdt_base + u64::from(sel)) as usize);
    assert_eq!(desc(0), 0);
    // 0x08: the PVH entry's 32-bit code.
    assert_eq!(
        decode(desc(BOOT_CS32)),
        (0, 0xFFFF_FFFF, 0xB, true, 0, true, false, true, true)
    );
    // __BOOT_CS: 64-bit code, execute/read, ring 0, flat.
    assert_eq!(
        decode(desc(entry.cs)),
        (0, 0xFFFF_FFFF, 0xB, true, 0, true, true, false, true)
    );
    // __BOOT_DS: read/write data, ring 0, flat 4 GiB, 32-bit.
    assert_eq!(
        decode(desc(entry.ds)),
        (0, 0xFFFF_FFFF, 0x3, true, 0, true, false, true, true)
    );
    // The hidden-state attributes handed to the vCPU are the descriptors' own bits.
    let attrs = |d: u64| (((d >> 40) & 0xFF) | (((d >> 52) & 0xF) << 8)) as u16;
    assert_eq!(Entry::CODE_ATTRS, attrs(desc(entry.cs)));
    assert_eq!(Entry::DATA_ATTRS, attrs(desc(entry.ds)));
    assert_eq!(Entry::vmx_access_rights(Entry::CODE_ATTRS), 0xA09B);
    assert_eq!(Entry::vmx_access_rights(Entry::DATA_ATTRS), 0xC093);
}

#[test]
fn entry_state_is_64_bit_mode_with_interrupts_off() {
    let mut mem = ram(RAM);
    let entry = load(&bzimage(), &mut mem, &config("", &[])).unwrap();
    assert_eq!(
        entry,
        Entry {
            rip: 0x100_0200,
            rsi: 0x2000,
            rsp: 0xB000,
            rflags: 0x2,
            cr0: 0x8000_0031,
            cr3: 0x4000,
            cr4: 0x20,
            efer: 0x500,
            gdt_base: 0x1000,
            gdt_limit: 31,
            cs: 0x10,
            ds: 0x18,
        }
    );
    // Long mode needs PG+PE with PAE and LME; LMA reflects it.
    assert_eq!(entry.cr0 & 0x8000_0001, 0x8000_0001);
    assert_ne!(entry.cr4 & (1 << 5), 0);
    assert_eq!(entry.rflags & (1 << 9), 0, "IF clear");
}

/// Loads and expects `err`, with `mem` as it was.
fn refused(image: &[u8], mem_len: usize, cfg: &BootConfig<'_>, err: LoadError) {
    assert_eq!(check(image, mem_len, cfg).err(), Some(err));
    let mut mem = ram(mem_len);
    let before = mem.clone();
    assert_eq!(load(image, &mut mem, cfg), Err(err));
    assert!(mem == before, "{err:?} changed guest memory");
}

#[test]
fn every_error_leaves_memory_unchanged() {
    let good = bzimage();
    let none = config("", &[]);
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut image = good.clone();
        f(&mut image);
        image
    };

    refused(&good[..0x100], RAM, &none, LoadError::NotBzImage);
    refused(
        &edit(&|i| set16(i, abi::BOOT_FLAG, 0)),
        RAM,
        &none,
        LoadError::NotBzImage,
    );
    refused(
        &edit(&|i| i[abi::HEADER] = b'X'),
        RAM,
        &none,
        LoadError::NotBzImage,
    );
    refused(
        &edit(&|i| i[abi::JUMP + 1] = 0x10),
        RAM,
        &none,
        LoadError::NotBzImage,
    );
    refused(&good[..0x230], RAM, &none, LoadError::Truncated);
    refused(&good[..good.len() - 1], RAM, &none, LoadError::Truncated);
    refused(
        &edit(&|i| set32(i, abi::SYSSIZE, 0x20)),
        RAM,
        &none,
        LoadError::Truncated,
    );
    refused(
        &edit(&|i| set16(i, abi::VERSION, 0x020B)),
        RAM,
        &none,
        LoadError::ProtocolTooOld { version: 0x020B },
    );
    refused(
        &edit(&|i| i[abi::LOADFLAGS] = 0x80),
        RAM,
        &none,
        LoadError::NotLoadedHigh,
    );
    refused(
        &edit(&|i| set16(i, abi::XLOADFLAGS, 0x7E)),
        RAM,
        &none,
        LoadError::Not64Bit { xloadflags: 0x7E },
    );
    refused(
        &edit(&|i| set32(i, abi::KERNEL_ALIGNMENT, 0x30_0000)),
        RAM,
        &none,
        LoadError::BadLoadAddress { addr: 0x30_0000 },
    );
    refused(
        &edit(&|i| {
            i[abi::RELOCATABLE_KERNEL] = 0;
            set64(i, abi::PREF_ADDRESS, 0x8_0000);
        }),
        RAM,
        &none,
        LoadError::BadLoadAddress { addr: 0x8_0000 },
    );
    refused(
        &good,
        0xF_F000,
        &none,
        LoadError::MemoryTooSmall { bytes: 0xF_F000 },
    );
    // 16 MiB + 4 MiB of init_size does not fit 20 MiB - 1 page.
    refused(
        &good,
        20 * MIB - 4096,
        &none,
        LoadError::KernelTooBig {
            end: 20 * MIB as u64,
            ram: 20 * MIB as u64 - 4096,
        },
    );
    let reserved = [region(0x130_0000, 0x1000, E820Kind::Acpi)];
    refused(
        &good,
        RAM,
        &BootConfig {
            reserved: &reserved,
            ..none
        },
        LoadError::KernelOverlapsReserved { addr: 0x130_0000 },
    );
    // 32 MiB - 20 MiB above the kernel, 15 MiB below it: 15 MiB + 1 page fits nowhere.
    let rd = initrd(15 * MIB + 4096);
    refused(
        &good,
        RAM,
        &config("", &rd),
        LoadError::InitrdTooBig {
            len: rd.len() as u64,
        },
    );
    let long = "x".repeat(0x800);
    refused(
        &good,
        RAM,
        &config(&long, &[]),
        LoadError::CmdlineTooLong {
            len: 0x800,
            max: 0x7FF,
        },
    );
    refused(&good, RAM, &config("a\0b", &[]), LoadError::CmdlineHasNul);
    let many: Vec<_> = (0..17u64)
        .map(|i| region(0x200_0000 + i * 0x2000, 0x1000, E820Kind::Reserved))
        .collect();
    refused(
        &good,
        RAM,
        &BootConfig {
            reserved: &many,
            ..none
        },
        LoadError::TooManyReserved { count: 17 },
    );
    for bad in [
        [region(0x180_0000, 0, E820Kind::Reserved)],
        [region(u64::MAX - 10, 0x100, E820Kind::Reserved)],
        [region(0x8000, 0x1000, E820Kind::Reserved)], // the page tables
        [region(0x180_0000, 0x1000, E820Kind::Ram)],
    ] {
        refused(
            &good,
            RAM,
            &BootConfig {
                reserved: &bad,
                ..none
            },
            LoadError::BadReserved { addr: bad[0].addr },
        );
    }
    let overlapping = [
        region(0x180_0000, 0x2000, E820Kind::Reserved),
        region(0x180_1000, 0x2000, E820Kind::Acpi),
    ];
    refused(
        &good,
        RAM,
        &BootConfig {
            reserved: &overlapping,
            ..none
        },
        LoadError::BadReserved { addr: 0x180_1000 },
    );
}

#[test]
fn command_line_limit_is_cmdline_size_and_the_loader_buffer() {
    let good = bzimage();
    let max = "y".repeat(0x7FF);
    let mut mem = ram(RAM);
    load(&good, &mut mem, &config(&max, &[])).unwrap();
    let c = CMDLINE_ADDR as usize;
    assert_eq!(&mem[c..c + 0x7FF], max.as_bytes());
    assert_eq!(mem[c + 0x7FF], 0);
    // A kernel that accepts more than the loader's page: the page wins.
    let mut image = good.clone();
    set32(&mut image, abi::CMDLINE_SIZE, 0x10_0000);
    let long = "z".repeat(CMDLINE_CAPACITY);
    assert_eq!(
        check(&image, RAM, &config(&long, &[])).err(),
        Some(LoadError::CmdlineTooLong {
            len: CMDLINE_CAPACITY,
            max: CMDLINE_CAPACITY - 1
        })
    );
    check(&image, RAM, &config(&long[1..], &[])).unwrap();
}

#[test]
fn errors_have_distinct_descriptions() {
    let all = [
        LoadError::Truncated,
        LoadError::NotBzImage,
        LoadError::NotLoadedHigh,
        LoadError::ProtocolTooOld { version: 0x20B },
        LoadError::Not64Bit { xloadflags: 0 },
        LoadError::BadLoadAddress { addr: 0 },
        LoadError::MemoryTooSmall { bytes: 0 },
        LoadError::KernelTooBig { end: 0, ram: 0 },
        LoadError::KernelOverlapsReserved { addr: 0 },
        LoadError::InitrdTooBig { len: 0 },
        LoadError::CmdlineTooLong { len: 0, max: 0 },
        LoadError::CmdlineHasNul,
        LoadError::TooManyReserved { count: 0 },
        LoadError::BadReserved { addr: 0 },
        LoadError::NotElf64,
        LoadError::NoPvhEntry,
        LoadError::BadSegment { addr: 0 },
    ];
    for (i, a) in all.iter().enumerate() {
        assert!(!a.as_str().is_empty());
        for b in &all[i + 1..] {
            assert_ne!(a.as_str(), b.as_str());
        }
    }
    assert_eq!(
        std::format!("{}", LoadError::ProtocolTooOld { version: 0x020B }),
        "Linux boot protocol older than 2.12 (protocol 2.11)"
    );
}

/// Debian's stock kernel, when `HERMITAGE_LINUX_BZIMAGE` names it (`scripts/linux-guest --print`
/// gives the cached one; `scripts/test unit` sets the variable when it can fetch it).
#[test]
fn debian_bzimage_parses_and_loads() {
    let Some(path) = std::env::var_os("HERMITAGE_LINUX_BZIMAGE") else {
        std::eprintln!("SKIPPED debian_bzimage_parses_and_loads: HERMITAGE_LINUX_BZIMAGE not set");
        return;
    };
    let image = std::fs::read(&path).expect("HERMITAGE_LINUX_BZIMAGE unreadable");
    let h = SetupHeader::parse(&image).unwrap();
    std::eprintln!("{}: {h:x?}", path.to_string_lossy());
    // Debian 12's 6.1 kernels (linux-guests.md section 6).
    assert_eq!(h.version, 0x020F, "boot protocol 2.15");
    assert_eq!(h.xloadflags, 0x7F);
    assert_eq!(h.loadflags & abi::LOADFLAGS_LOADED_HIGH, 1);
    assert!(h.relocatable);
    assert_eq!(h.kernel_alignment, 0x20_0000);
    assert_eq!(h.pref_address, 0x100_0000);
    assert_eq!(h.cmdline_size, 0x7FF);
    assert_eq!(h.initrd_addr_max, 0x7FFF_FFFF);
    // init_size covers the decompressed kernel: tens of MiB (0x3F98000 for 6.1.0-57).
    assert!(
        (32 << 20..128 << 20).contains(&h.init_size),
        "{:#x}",
        h.init_size
    );
    // syssize covers the protected-mode part; Debian's signed image carries its Authenticode
    // signature after it (1472 bytes for 6.1.0-57), which is not loaded.
    let end = h.kernel_offset() as u64 + h.kernel_len();
    assert!(end <= image.len() as u64 && image.len() as u64 - end < 64 * 1024);

    let initrd = match std::env::var_os("HERMITAGE_LINUX_INITRD") {
        Some(p) => std::fs::read(p).expect("HERMITAGE_LINUX_INITRD unreadable"),
        None => initrd(MIB),
    };
    let cmdline = "console=ttyS0,115200 nolapic noapic acpi=off pci=off tsc_early_khz=2445406";
    let mut mem = vec![0u8; 256 * MIB];
    let entry = load(&image, &mut mem, &config(cmdline, &initrd)).unwrap();
    assert_eq!(entry.rip, 0x100_0200);
    // startup_64 of arch/x86/boot/compressed/head_64.S opens with `cld; cli`.
    assert_eq!(&mem[0x100_0200..0x100_0202], [0xFC, 0xFA]);
    let plan = check(&image, mem.len(), &config(cmdline, &initrd)).unwrap();
    assert!(plan.initrd_addr >= plan.kernel_end);
    assert_eq!(plan.initrd_addr + initrd.len() as u64, {
        let end = 256 * MIB as u64;
        end - (end - initrd.len() as u64) % 4096
    });
    let zp = zero_page(&mem);
    assert_eq!(le16(zp, abi::VERSION), 0x020F);
    assert_eq!(le32(zp, abi::INIT_SIZE), h.init_size);
    // 128 MiB is enough; 64 MiB is not (16 MiB + init_size).
    let small = 64 * MIB;
    assert!(matches!(
        check(&image, small, &config(cmdline, &initrd)),
        Err(LoadError::KernelTooBig { .. })
    ));
    check(&image, 128 * MIB, &config(cmdline, &initrd)).unwrap();
}

/// The start of a Multiboot 1 image (a.out kludge, loaded at `base`) that stands in for
/// Hermitage's vCPU reset: QEMU's own Multiboot loader enters it in 32-bit protected mode
/// (paging off, flat segments) with three modules somewhere above it: the boot area, the
/// kernel, the initrd. This code copies them to `dests` (the boot area last, since QEMU's
/// information structure may lie there) and loads GDTR = {`gdt_base`, `gdt_limit`}; the
/// caller appends the mode switch and the jump. Hand-assembled 32-bit code.
pub(super) fn copier(base: u32, dests: [u64; 3], gdt_base: u64, gdt_limit: u16) -> Vec<u8> {
    const CODE: u32 = 0x40; // code offset in the file; the GDTR pseudo-descriptor at 0x30
    let mut t = vec![0u8; CODE as usize];
    let flags: u32 = 0x0001_0003; // page-aligned modules, memory info, address fields
    for (i, v) in [
        0x1BAD_B002u32,
        flags,
        0u32.wrapping_sub(0x1BAD_B002u32.wrapping_add(flags)),
        base, // header_addr
        base, // load_addr
        0,    // load_end_addr: whole file
        0,    // bss_end_addr
        base + CODE,
    ]
    .into_iter()
    .enumerate()
    {
        set32(&mut t, 4 * i, v);
    }
    set16(&mut t, 0x30, gdt_limit);
    set32(&mut t, 0x32, gdt_base as u32);
    t.extend([0x8B, 0x6B, 0x18]); // mov ebp, [ebx+24]: mods_addr
    for (slot, dest) in [(1u8, dests[1]), (2, dests[2]), (0, dests[0])] {
        let at = slot * 16;
        t.extend([0x8B, 0x75, at]); // mov esi, [ebp+at]: mod_start
        t.extend([0x8B, 0x4D, at + 4]); // mov ecx, [ebp+at+4]: mod_end
        t.extend([0x29, 0xF1]); // sub ecx, esi
        t.push(0xBF); // mov edi, dest
        t.extend((dest as u32).to_le_bytes());
        t.extend([0xFC, 0xF3, 0xA4]); // cld; rep movsb
    }
    t.extend([0x0F, 0x01, 0x15]); // lgdt [base + 0x30]
    t.extend((base + 0x30).to_le_bytes());
    t
}

/// [`copier`] at 1 MiB, then exactly the [`Entry`] state: CR4, CR3, EFER.LME, CR0, a far jump
/// to CS, the data selectors, RSI, RSP, RFLAGS, and a jump to RIP.
fn trampoline(entry: &Entry, kernel_dest: u64, initrd_dest: u64) -> Vec<u8> {
    const BASE: u32 = 0x10_0000;
    let dests = [BOOT_AREA_START, kernel_dest, initrd_dest];
    let mut c = copier(BASE, dests, entry.gdt_base, entry.gdt_limit);
    let imm = |v: u64| (v as u32).to_le_bytes();
    c.extend([0x0F, 0x20, 0xE0, 0x0D]); // mov eax, cr4; or eax, cr4
    c.extend(imm(entry.cr4));
    c.extend([0x0F, 0x22, 0xE0, 0xB8]); // mov cr4, eax; mov eax, cr3
    c.extend(imm(entry.cr3));
    c.extend([0x0F, 0x22, 0xD8]); // mov cr3, eax
    c.extend([0xB9, 0x80, 0x00, 0x00, 0xC0, 0x0F, 0x32, 0x0D]); // ecx = EFER; rdmsr; or eax, efer.LME
    c.extend(imm(entry.efer & !(1 << 10)));
    c.extend([0x0F, 0x30, 0x0F, 0x20, 0xC0, 0x0D]); // wrmsr; mov eax, cr0; or eax, cr0
    c.extend(imm(entry.cr0));
    c.extend([0x0F, 0x22, 0xC0, 0xEA]); // mov cr0, eax; jmp far cs:long64
    let long64 = BASE + c.len() as u32 + 6;
    c.extend(long64.to_le_bytes());
    c.extend(entry.cs.to_le_bytes());
    // 64-bit code from here.
    c.push(0xB8); // mov eax, ds selector
    c.extend(u32::from(entry.ds).to_le_bytes());
    c.extend([0x8E, 0xD8, 0x8E, 0xC0, 0x8E, 0xD0]); // mov ds, ax; mov es, ax; mov ss, ax
    c.push(0xBE); // mov esi, zero page (zero-extended into rsi)
    c.extend(imm(entry.rsi));
    c.push(0xBC); // mov esp, stack
    c.extend(imm(entry.rsp));
    c.extend([0x6A, entry.rflags as u8, 0x9D]); // push rflags; popfq
    c.push(0xB8); // mov eax, rip
    c.extend(imm(entry.rip));
    c.extend([0xFF, 0xE0]); // jmp rax
    c
}

/// The host's TSC rate in kHz from /proc/cpuinfo (QEMU TCG's guest TSC runs at it).
fn host_tsc_khz() -> u64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(2_000_000, |mhz| (mhz * 1000.0).round() as u64)
}

/// Milestone 1's kernel command line (linux-guests.md section 5), the TSC rate from the host.
pub(super) fn test_cmdline() -> std::string::String {
    std::format!(
        "console=ttyS0,115200 nolapic noapic acpi=off pci=off tsc_early_khz={} tsc=reliable \
         nokaslr idle=halt reboot=k panic=-1 initcall_blacklist=i8042_init 8250.nr_uarts=1",
        host_tsc_khz()
    )
}

/// Boots `trampoline` with the `modules` (boot area, kernel, initrd) under plain QEMU TCG
/// (`-M pc -cpu EPYC,-apic,-x2apic`, `ram_mib`), waits for the busybox prompt, has the shell
/// print /proc/cmdline, checks it is `cmdline` and returns the console output. `None` (with a
/// note) when QEMU is missing.
pub(super) fn boot_under_qemu(
    name: &str,
    trampoline: &[u8],
    modules: [&[u8]; 3],
    ram_mib: usize,
    cmdline: &str,
) -> Option<std::string::String> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    use std::string::String;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        std::eprintln!("SKIPPED {name}: no qemu-system-x86_64");
        return None;
    }
    let dir = std::env::temp_dir().join(std::format!("hermitage-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |file: &str| dir.join(file).to_string_lossy().into_owned();
    std::fs::write(path("trampoline.bin"), trampoline).unwrap();
    for (file, bytes) in ["boot.bin", "kernel.bin", "initrd.bin"].iter().zip(modules) {
        std::fs::write(path(file), bytes).unwrap();
    }
    let list = std::format!(
        "{},{},{}",
        path("boot.bin"),
        path("kernel.bin"),
        path("initrd.bin")
    );
    let memory = std::format!("{ram_mib}M");
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-M", "pc", "-accel", "tcg", "-cpu", "EPYC,-apic,-x2apic"])
        .args(["-m", &memory, "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .args(["-kernel", &path("trampoline.bin"), "-initrd", &list])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let output = Arc::new(Mutex::new(String::new()));
    let start = Instant::now();
    // Everything that can fail runs in here, so that QEMU is always stopped and reaped.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        {
            let (output, mut stdout) = (output.clone(), child.stdout.take().unwrap());
            std::thread::spawn(move || {
                let mut buffer = [0; 4096];
                while let Ok(n @ 1..) = stdout.read(&mut buffer) {
                    output
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            });
        }
        // Where `what` ends in the console output after byte `from`.
        let wait_for = |what: &str, from: usize| -> usize {
            let mut found = None;
            while found.is_none() {
                found = output.lock().unwrap()[from..].find(what);
                let text = output.lock().unwrap().clone();
                assert!(
                    start.elapsed() < Duration::from_secs(240),
                    "{name}: no {what:?} after {:?}:\n{}",
                    start.elapsed(),
                    text.get(text.len().saturating_sub(4000)..).unwrap_or(&text)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            from + found.unwrap_or(0) + what.len()
        };
        let prompt = wait_for("hermitage-linux# ", 0);
        std::eprintln!("{name}: shell prompt after {:?}", start.elapsed());
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"cat /proc/cmdline\n").unwrap();
        stdin.flush().unwrap();
        let end = wait_for(&std::format!("\n{cmdline}"), prompt);
        wait_for("hermitage-linux# ", end);
        let log = output.lock().unwrap().clone();
        assert!(log.contains("hermitage-linux: init"), "{log}");
        log
    }));
    child.kill().ok();
    child.wait().ok();
    std::fs::remove_dir_all(&dir).ok();
    Some(result.unwrap_or_else(|e| std::panic::resume_unwind(e)))
}

/// Debian's kernel and the busybox initramfs of `scripts/linux-guest`, put into RAM by [`load`]
/// and entered with exactly the [`Entry`] state (through [`trampoline`] under plain QEMU):
/// it must reach the shell with our command line, our e820 map and our initrd address. Needs
/// `HERMITAGE_LINUX_BZIMAGE` and `HERMITAGE_LINUX_INITRD`.
#[test]
fn debian_kernel_boots_from_the_entry_state_under_qemu() {
    let name = "debian_kernel_boots_from_the_entry_state_under_qemu";
    let (Some(kernel), Some(initramfs)) = (
        std::env::var_os("HERMITAGE_LINUX_BZIMAGE"),
        std::env::var_os("HERMITAGE_LINUX_INITRD"),
    ) else {
        std::eprintln!("SKIPPED {name}: HERMITAGE_LINUX_BZIMAGE/INITRD not set");
        return;
    };
    let image = std::fs::read(kernel).unwrap();
    let initrd = std::fs::read(initramfs).unwrap();
    let cmdline = test_cmdline();
    let ram = 256 * MIB;
    let cfg = config(&cmdline, &initrd);
    let mut mem = vec![0u8; ram];
    let entry = load(&image, &mut mem, &cfg).unwrap();
    let plan = check(&image, ram, &cfg).unwrap();
    let at = |a: u64, len: u64| &mem[a as usize..(a + len) as usize];
    let Some(log) = boot_under_qemu(
        name,
        &trampoline(&entry, plan.kernel_addr, plan.initrd_addr),
        [
            at(BOOT_AREA_START, BOOT_AREA_END - BOOT_AREA_START),
            at(plan.kernel_addr, plan.kernel_len),
            at(plan.initrd_addr, plan.initrd_len),
        ],
        256,
        &cmdline,
    ) else {
        return;
    };
    // Our e820 map, not SeaBIOS's (which splits the legacy hole and reserves RAM's top).
    for line in [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved",
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
    ] {
        assert!(log.contains(line), "{line} missing:\n{log}");
    }
    // Linux prints the initrd's range rounded out to whole pages.
    let ramdisk = std::format!(
        "RAMDISK: [mem {:#010x}-{:#010x}]",
        plan.initrd_addr,
        (plan.initrd_addr + plan.initrd_len).next_multiple_of(4096) - 1
    );
    assert!(log.contains(&ramdisk), "{ramdisk} missing:\n{log}");
}
