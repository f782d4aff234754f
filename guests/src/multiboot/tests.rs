//! Loader tests: the built-in images, crafted ELF32 and a.out-kludge images, every error, and
//! "a failed load leaves memory as it was".

extern crate std;

use std::vec;
use std::vec::Vec;

use super::*;
use crate::builtin;

const MIB: usize = 1 << 20;

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}
fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}
fn set32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn set16(bytes: &mut [u8], at: usize, v: u16) {
    bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Guest RAM with a recognisable pattern, so that writes (and zeroing) show.
fn ram(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8) ^ 0xA5).collect()
}

fn c_str(mem: &[u8], addr: u32) -> &str {
    let bytes = &mem[addr as usize..];
    core::str::from_utf8(&bytes[..bytes.iter().position(|&b| b == 0).unwrap()]).unwrap()
}

fn hello() -> &'static [u8] {
    builtin("hello").unwrap()
}

/// A minimal ELF32 image: header, one program header, `code` at file offset 0x60 loaded at
/// `addr`, a multiboot header at its start (flags `flags`) and `bss` more bytes of memory.
fn elf(addr: u32, code: &[u8], bss: u32, flags: u32) -> Vec<u8> {
    let mut image = vec![0u8; 0x60];
    image[..7].copy_from_slice(&[0x7F, b'E', b'L', b'F', 1, 1, 1]);
    set16(&mut image, 16, 2);
    set16(&mut image, 18, 3);
    set32(&mut image, 20, 1);
    set32(&mut image, 24, addr + 12); // entry: just past the multiboot header
    set32(&mut image, 28, 52);
    set16(&mut image, 40, 52);
    set16(&mut image, 42, 32);
    set16(&mut image, 44, 1);
    let mut segment = multiboot_header(flags);
    segment.extend_from_slice(code);
    for (i, v) in [
        1,
        0x60,
        addr,
        addr,
        segment.len() as u32,
        segment.len() as u32 + bss,
        7,
        16,
    ]
    .into_iter()
    .enumerate()
    {
        set32(&mut image, 52 + 4 * i, v);
    }
    image.extend_from_slice(&segment);
    image
}

fn multiboot_header(flags: u32) -> Vec<u8> {
    let mut header = Vec::new();
    for v in [
        abi::HEADER_MAGIC,
        flags,
        0u32.wrapping_sub(abi::HEADER_MAGIC.wrapping_add(flags)),
    ] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    header
}

/// Loads and checks that an error leaves memory unchanged.
fn load_err(image: &[u8], mem_len: usize, cmdline: &str) -> LoadError {
    let mut mem = ram(mem_len);
    let error = load(image, &mut mem, cmdline).unwrap_err();
    assert!(mem == ram(mem_len), "{error:?} changed guest memory");
    error
}

#[test]
fn builtin_hello_parses() {
    let image = Image::parse(hello()).unwrap();
    assert_eq!(image.header().offset, 0x60);
    assert_eq!(image.header().flags, abi::HEADER_FLAG_MEMORY_INFO);
    assert_eq!(image.header().address_fields, None);
    assert_eq!(image.entry(), abi::IMAGE_BASE + 0x10);
    let segments: Vec<_> = image.segments().collect();
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0].addr, abi::IMAGE_BASE);
    assert_eq!(
        segments[0].data,
        &hello()[0x60..0x60 + segments[0].data.len()]
    );
    assert_eq!(
        segments[0].mem_len, 0x3000,
        "code/data, then a 4 KiB BSS at +0x2000"
    );
    assert_eq!(le32(segments[0].data, 0), abi::HEADER_MAGIC);
}

#[test]
fn load_writes_segments_bss_and_boot_info() {
    let mut mem = ram(16 * MIB);
    let entry = load(hello(), &mut mem, "hello boot=7").unwrap();
    assert_eq!(
        entry,
        Entry {
            eip: 0x10_0010,
            ebx: abi::BOOT_INFO_ADDR
        }
    );
    assert_eq!(Entry::EAX, 0x2BAD_B002);

    let segment = Image::parse(hello()).unwrap().segments().next().unwrap();
    let base = abi::IMAGE_BASE as usize;
    assert_eq!(&mem[base..base + segment.data.len()], segment.data);
    assert!(
        mem[base + segment.data.len()..base + segment.mem_len as usize]
            .iter()
            .all(|&b| b == 0)
    );
    assert_eq!(
        mem[base + segment.mem_len as usize..],
        ram(16 * MIB)[base + segment.mem_len as usize..]
    );

    let info = &mem[abi::BOOT_INFO_ADDR as usize..];
    let flags = le32(info, abi::INFO_FLAGS);
    assert_eq!(flags, 1 << 0 | 1 << 2 | 1 << 6 | 1 << 9);
    assert_eq!(le32(info, abi::INFO_MEM_LOWER), 639);
    assert_eq!(le32(info, abi::INFO_MEM_UPPER), 15 * 1024);
    assert_eq!(c_str(&mem, le32(info, abi::INFO_CMDLINE)), "hello boot=7");
    assert_eq!(c_str(&mem, le32(info, abi::INFO_LOADER_NAME)), "Hermitage");
    // Nothing else claimed: no modules, no symbols, no drives, no video.
    for offset in [12, 20, 24, 28, 32, 36, 40, 52, 56, 60, 68, 72, 76] {
        assert_eq!(le32(info, offset), 0, "offset {offset}");
    }

    let (mmap_addr, mmap_len) = (
        le32(info, abi::INFO_MMAP_ADDR) as usize,
        le32(info, abi::INFO_MMAP_LENGTH) as usize,
    );
    let mut entries = Vec::new();
    let mut at = mmap_addr;
    while at < mmap_addr + mmap_len {
        let size = le32(&mem, at) as usize;
        entries.push((le64(&mem, at + 4), le64(&mem, at + 12), le32(&mem, at + 20)));
        at += size + 4;
    }
    assert_eq!(at, mmap_addr + mmap_len);
    assert_eq!(
        entries,
        [
            (0, 0x9FC00, 1),
            (0x9FC00, 0x60400, 2),
            (0x10_0000, 15 * MIB as u64, 1)
        ]
    );

    // The whole boot information lies in its page, below the image.
    for addr in [
        mmap_addr + mmap_len,
        le32(info, abi::INFO_CMDLINE) as usize + "hello boot=7".len(),
    ] {
        assert!(addr < abi::BOOT_INFO_END as usize);
    }
}

#[test]
fn every_builtin_loads() {
    for (name, _) in crate::BUILTINS {
        let mut mem = vec![0; 2 * MIB];
        let entry = load(builtin(name).unwrap(), &mut mem, name).unwrap();
        assert_eq!(entry.eip, 0x10_0010, "{name}");
    }
}

#[test]
fn empty_command_line_is_an_empty_string() {
    let mut mem = ram(2 * MIB);
    load(hello(), &mut mem, "").unwrap();
    let cmdline = le32(&mem, abi::BOOT_INFO_ADDR as usize + abi::INFO_CMDLINE);
    assert_eq!(mem[cmdline as usize], 0);
}

#[test]
fn longest_command_line_fits_and_one_more_does_not() {
    let long = "x".repeat(CMDLINE_MAX);
    let mut mem = vec![0; 2 * MIB];
    load(hello(), &mut mem, &long).unwrap();
    assert_eq!(
        c_str(
            &mem,
            le32(&mem, abi::BOOT_INFO_ADDR as usize + abi::INFO_CMDLINE)
        ),
        long
    );
    let longer = "x".repeat(CMDLINE_MAX + 1);
    assert_eq!(
        load_err(hello(), 2 * MIB, &longer),
        LoadError::CmdlineTooLong {
            len: CMDLINE_MAX + 1
        }
    );
    assert_eq!(load_err(hello(), 2 * MIB, "a\0b"), LoadError::CmdlineHasNul);
}

#[test]
fn memory_must_hold_the_image_and_the_low_megabyte() {
    assert_eq!(
        load_err(hello(), MIB / 2, ""),
        LoadError::MemoryTooSmall { bytes: MIB / 2 }
    );
    assert_eq!(
        load_err(hello(), MIB + 0x2000, ""),
        LoadError::SegmentOutsideMemory {
            addr: 0x10_0000,
            len: 0x3000
        }
    );
    let mut mem = vec![0; MIB + 0x3000];
    load(hello(), &mut mem, "").unwrap();
    assert_eq!(
        le32(&mem, abi::BOOT_INFO_ADDR as usize + abi::INFO_MEM_UPPER),
        12
    );
}

#[test]
fn exactly_one_mebibyte_has_no_high_memory_entry() {
    let image = elf(0x2_0000, &[0xF4], 0, 0);
    let mut mem = vec![0; MIB];
    load(&image, &mut mem, "").unwrap();
    let info = abi::BOOT_INFO_ADDR as usize;
    assert_eq!(le32(&mem, info + abi::INFO_MEM_UPPER), 0);
    assert_eq!(
        le32(&mem, info + abi::INFO_MMAP_LENGTH),
        2 * abi::MMAP_ENTRY_LEN as u32
    );
}

#[test]
fn truncated_images() {
    let image = hello();
    assert_eq!(
        load_err(&image[..0x60 + 100], 2 * MIB, ""),
        LoadError::Truncated
    );
    assert_eq!(
        load_err(&image[..40], 2 * MIB, ""),
        LoadError::NoMultibootHeader
    );
    assert_eq!(load_err(&[], 2 * MIB, ""), LoadError::NoMultibootHeader);
    // Header and magic present but the program header table cut off.
    let mut short = elf(0x20_0000, &[0x90; 8], 0, 0);
    set32(&mut short, 28, 0x1000);
    assert_eq!(load_err(&short, 4 * MIB, ""), LoadError::Truncated);
}

#[test]
fn bad_multiboot_headers() {
    let mut image = hello().to_vec();
    image[0x60] ^= 1;
    assert_eq!(load_err(&image, 2 * MIB, ""), LoadError::NoMultibootHeader);

    let mut image = hello().to_vec();
    image[0x60 + 8] ^= 1;
    assert_eq!(load_err(&image, 2 * MIB, ""), LoadError::BadChecksum);

    let video = elf(
        0x20_0000,
        &[0x90],
        0,
        abi::HEADER_FLAG_VIDEO_MODE | abi::HEADER_FLAG_MEMORY_INFO,
    );
    assert_eq!(
        load_err(&video, 4 * MIB, ""),
        LoadError::UnsupportedFlags { flags: 6 }
    );
    let unknown_required = elf(0x20_0000, &[0x90], 0, 1 << 15);
    assert_eq!(
        load_err(&unknown_required, 4 * MIB, ""),
        LoadError::UnsupportedFlags { flags: 1 << 15 }
    );
    // Optional bits (17..31) are ignored.
    let optional = elf(0x20_0000, &[0x90], 0, 1 << 20 | abi::HEADER_FLAG_PAGE_ALIGN);
    assert!(load(&optional, &mut vec![0; 4 * MIB], "").is_ok());
}

#[test]
fn header_must_be_aligned_and_in_the_first_8_kib() {
    // Misaligned by 2: not found.
    let mut image = elf(0x20_0000, &[0x90; 16], 0, 0);
    let header = image[0x60..0x6C].to_vec();
    image[0x60..0x6C].fill(0);
    image[0x62..0x6E].copy_from_slice(&header);
    assert_eq!(load_err(&image, 4 * MIB, ""), LoadError::NoMultibootHeader);

    // Past 8192 bytes: not found; just inside: found.
    let padding = 8192 - 12 - 0x6C; // the test image's code starts at file offset 0x6C
    let mut code = vec![0x90; padding + 12];
    code[padding..].copy_from_slice(&multiboot_header(0));
    let mut image = elf(0x20_0000, &code, 0, 0);
    image[0x60..0x6C].fill(0);
    assert_eq!(Image::parse(&image).unwrap().header().offset, 8192 - 12);
    let mut code = vec![0x90; padding + 16];
    code[padding + 4..].copy_from_slice(&multiboot_header(0));
    let mut image = elf(0x20_0000, &code, 0, 0);
    image[0x60..0x6C].fill(0);
    assert_eq!(
        Image::parse(&image).unwrap_err(),
        LoadError::NoMultibootHeader
    );
}

#[test]
fn first_valid_header_wins() {
    let mut code = multiboot_header(abi::HEADER_FLAG_PAGE_ALIGN);
    code.extend_from_slice(&[0x90; 4]);
    let mut image = elf(0x20_0000, &code, 0, 0);
    image[0x60 + 8] ^= 0xFF; // the first one's checksum
    assert_eq!(
        Image::parse(&image).unwrap().header(),
        Header {
            offset: 0x6C,
            flags: abi::HEADER_FLAG_PAGE_ALIGN,
            address_fields: None,
        }
    );
}

#[test]
fn bad_elf_headers() {
    let good = elf(0x20_0000, &[0x90; 16], 0x100, 0);
    let broken = |at: usize, bytes: &[u8]| {
        let mut image = good.clone();
        image[at..at + bytes.len()].copy_from_slice(bytes);
        load_err(&image, 4 * MIB, "")
    };
    assert_eq!(broken(0, b"\x7fELG"), LoadError::BadMagic);
    assert_eq!(broken(4, &[2]), LoadError::NotElf32);
    assert_eq!(broken(5, &[2]), LoadError::NotLittleEndian);
    assert_eq!(
        broken(16, &[1, 0]),
        LoadError::NotExecutable { elf_type: 1 }
    );
    assert_eq!(
        broken(18, &[62, 0]),
        LoadError::WrongMachine { machine: 62 }
    );
    assert_eq!(
        broken(42, &[16, 0]),
        LoadError::BadProgramHeaderSize { size: 16 }
    );
    assert_eq!(broken(44, &[0, 0]), LoadError::NoLoadableSegment);
    assert_eq!(broken(52, &[6]), LoadError::NoLoadableSegment); // PT_PHDR, not PT_LOAD
    assert_eq!(broken(52 + 20, &[0; 4]), LoadError::NoLoadableSegment); // p_memsz 0
    assert_eq!(
        broken(52 + 20, &[1, 0, 0, 0]),
        LoadError::BadSegmentSize { addr: 0x20_0000 }
    );
    assert_eq!(
        broken(52 + 16, &[0xFF, 0xFF, 0, 0, 0, 0, 1, 0]),
        LoadError::Truncated
    ); // p_filesz past the end
    assert_eq!(
        broken(24, &[0, 0, 0x30, 0]),
        LoadError::EntryOutsideImage { entry: 0x30_0000 }
    );
    assert!(load(&good, &mut vec![0; 4 * MIB], "").is_ok());
}

#[test]
fn segments_must_fit_and_avoid_the_boot_info() {
    let beyond = elf(0x100_0000, &[0x90; 16], 0, 0);
    let len = 12 + 16;
    assert_eq!(
        load_err(&beyond, 16 * MIB, ""),
        LoadError::SegmentOutsideMemory {
            addr: 0x100_0000,
            len
        }
    );
    let straddling = elf(0x100_0000 - 8, &[0x90; 16], 0, 0);
    assert_eq!(
        load_err(&straddling, 16 * MIB, ""),
        LoadError::SegmentOutsideMemory {
            addr: 0x100_0000 - 8,
            len
        }
    );
    let bss_beyond = elf(0x100_0000 - 0x100, &[0x90; 16], 0x100, 0);
    assert!(matches!(
        load_err(&bss_beyond, 16 * MIB, ""),
        LoadError::SegmentOutsideMemory { .. }
    ));
    let wrapping = elf(0xFFFF_FFF0, &[0x90; 16], 0, 0);
    assert_eq!(
        Image::parse(&wrapping).unwrap_err(),
        LoadError::SegmentOutsideMemory {
            addr: 0xFFFF_FFF0,
            len
        }
    );

    for addr in [0x9000 - len + 1, 0x9000, 0x9FFF] {
        let overlapping = elf(addr, &[0x90; 16], 0, 0);
        assert_eq!(
            load_err(&overlapping, 2 * MIB, ""),
            LoadError::SegmentOverlapsBootInfo { addr, len },
            "{addr:#x}"
        );
    }
    for addr in [0x9000 - len, 0xA000] {
        assert!(
            load(&elf(addr, &[0x90; 16], 0, 0), &mut vec![0; 2 * MIB], "").is_ok(),
            "{addr:#x}"
        );
    }
}

#[test]
fn failed_load_leaves_memory_untouched_even_after_good_segments() {
    // Two segments: the first fits, the second does not. Nothing may be written.
    let mut image = elf(0x20_0000, &[0x90; 16], 0, 0);
    set16(&mut image, 44, 2);
    let second: Vec<u8> = [1u32, 0x60, 0x80_0000, 0x80_0000, 16, 16, 7, 16]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    image.splice(84..84, second);
    // The segment data moved by 32 bytes; point both program headers at it.
    set32(&mut image, 52 + 4, 0x80);
    set32(&mut image, 84 + 4, 0x80);
    assert!(Image::parse(&image).is_ok());
    assert_eq!(
        load_err(&image, 4 * MIB, ""),
        LoadError::SegmentOutsideMemory {
            addr: 0x80_0000,
            len: 16
        }
    );
    let mut mem = vec![0; 16 * MIB];
    load(&image, &mut mem, "").unwrap();
    assert_eq!(le32(&mem, 0x80_0000), abi::HEADER_MAGIC);
}

#[test]
fn entry_is_translated_from_virtual_to_physical() {
    let mut image = elf(0x20_0000, &[0x90; 16], 0, 0);
    set32(&mut image, 52 + 8, 0xC020_0000); // p_vaddr
    set32(&mut image, 24, 0xC020_0004); // e_entry
    assert_eq!(Image::parse(&image).unwrap().entry(), 0x20_0004);
    let mut mem = vec![0; 4 * MIB];
    assert_eq!(load(&image, &mut mem, "").unwrap().eip, 0x20_0004);
    assert_eq!(
        le32(&mem, 0x20_0000),
        abi::HEADER_MAGIC,
        "loaded at the physical address"
    );
}

/// A raw binary with the a.out-kludge fields: header at file offset `offset`.
fn kludge(offset: usize, fields: AddressFields, file_len: usize) -> Vec<u8> {
    let mut image: Vec<u8> = (0..file_len).map(|i| i as u8 | 1).collect();
    let flags = abi::HEADER_FLAG_ADDRESS_FIELDS | abi::HEADER_FLAG_MEMORY_INFO;
    image[offset..offset + 12].copy_from_slice(&multiboot_header(flags));
    let AddressFields {
        header_addr,
        load_addr,
        load_end_addr,
        bss_end_addr,
        entry_addr,
    } = fields;
    for (i, v) in [
        header_addr,
        load_addr,
        load_end_addr,
        bss_end_addr,
        entry_addr,
    ]
    .into_iter()
    .enumerate()
    {
        set32(&mut image, offset + 12 + 4 * i, v);
    }
    image
}

#[test]
fn address_fields_load_a_raw_binary() {
    let fields = AddressFields {
        header_addr: 0x20_0010,
        load_addr: 0x20_0000,
        load_end_addr: 0,
        bss_end_addr: 0x20_0400,
        entry_addr: 0x20_0040,
    };
    let image = kludge(0x10, fields, 0x200);
    let parsed = Image::parse(&image).unwrap();
    assert_eq!(parsed.header().address_fields, Some(fields));
    let mut mem = ram(4 * MIB);
    assert_eq!(load(&image, &mut mem, "").unwrap().eip, 0x20_0040);
    assert_eq!(&mem[0x20_0000..0x20_0200], &image[..]);
    assert!(mem[0x20_0200..0x20_0400].iter().all(|&b| b == 0));
    assert_eq!(mem[0x20_0400], ram(4 * MIB)[0x20_0400]);

    // load_end_addr cuts the file; no BSS.
    let image = kludge(
        0x10,
        AddressFields {
            load_end_addr: 0x20_0100,
            bss_end_addr: 0,
            ..fields
        },
        0x200,
    );
    let segment = Image::parse(&image).unwrap().segments().next().unwrap();
    assert_eq!(
        (segment.addr, segment.data.len(), segment.mem_len),
        (0x20_0000, 0x100, 0x100)
    );
    assert_eq!(Image::parse(&image).unwrap().entry(), 0x20_0040);

    // The header may sit later in the file than in memory only by its offset from load_addr.
    let image = kludge(
        0x40,
        AddressFields {
            header_addr: 0x20_0000,
            ..fields
        },
        0x200,
    );
    assert_eq!(
        Image::parse(&image)
            .unwrap()
            .segments()
            .next()
            .unwrap()
            .data,
        &image[0x40..]
    );
}

#[test]
fn address_fields_take_precedence_over_elf() {
    let mut image = elf(0x20_0000, &[0u8; 64], 0, 0);
    let fields = [0x30_0000u32, 0x30_0000, 0x30_0020, 0x30_0040, 0x30_0000];
    let flags = abi::HEADER_FLAG_ADDRESS_FIELDS;
    image[0x60..0x6C].copy_from_slice(&multiboot_header(flags));
    for (i, v) in fields.into_iter().enumerate() {
        set32(&mut image, 0x6C + 4 * i, v);
    }
    let parsed = Image::parse(&image).unwrap();
    let segment = parsed.segments().next().unwrap();
    assert_eq!(
        (segment.addr, segment.data.len(), segment.mem_len),
        (0x30_0000, 0x20, 0x40)
    );
    assert_eq!(segment.data, &image[0x60..0x80]);
    assert_eq!(parsed.entry(), 0x30_0000);
}

#[test]
fn bad_address_fields() {
    let fields = AddressFields {
        header_addr: 0x20_0010,
        load_addr: 0x20_0000,
        load_end_addr: 0,
        bss_end_addr: 0,
        entry_addr: 0x20_0010,
    };
    let err = |f: AddressFields, offset: usize, len: usize| {
        load_err(&kludge(offset, f, len), 4 * MIB, "")
    };
    assert_eq!(
        err(
            AddressFields {
                load_addr: 0x20_0020,
                ..fields
            },
            0x10,
            0x100
        ),
        LoadError::BadAddressFields
    );
    assert_eq!(err(fields, 0x8, 0x100), LoadError::BadAddressFields); // header too early in the file
    assert_eq!(
        err(
            AddressFields {
                load_end_addr: 0x1F_0000,
                ..fields
            },
            0x10,
            0x100
        ),
        LoadError::BadAddressFields
    );
    assert_eq!(
        err(
            AddressFields {
                bss_end_addr: 0x20_0080,
                ..fields
            },
            0x10,
            0x100
        ),
        LoadError::BadAddressFields
    );
    assert_eq!(
        err(
            AddressFields {
                load_end_addr: 0x20_0200,
                ..fields
            },
            0x10,
            0x100
        ),
        LoadError::Truncated
    );
    assert_eq!(
        err(
            AddressFields {
                entry_addr: 0x20_0100,
                ..fields
            },
            0x10,
            0x100
        ),
        LoadError::EntryOutsideImage { entry: 0x20_0100 }
    );
    assert_eq!(
        err(
            AddressFields {
                bss_end_addr: 0x40_0001,
                ..fields
            },
            0x10,
            0x100
        ),
        LoadError::SegmentOutsideMemory {
            addr: 0x20_0000,
            len: 0x20_0001
        }
    );
    // The a.out fields themselves cut off.
    let mut short = multiboot_header(abi::HEADER_FLAG_ADDRESS_FIELDS);
    short.extend_from_slice(&[0; 8]);
    assert_eq!(load_err(&short, 4 * MIB, ""), LoadError::Truncated);
}

#[test]
fn errors_describe_themselves() {
    let all = [
        LoadError::Truncated,
        LoadError::NoMultibootHeader,
        LoadError::BadChecksum,
        LoadError::UnsupportedFlags { flags: 4 },
        LoadError::BadMagic,
        LoadError::NotElf32,
        LoadError::NotLittleEndian,
        LoadError::WrongMachine { machine: 62 },
        LoadError::NotExecutable { elf_type: 1 },
        LoadError::BadProgramHeaderSize { size: 8 },
        LoadError::NoLoadableSegment,
        LoadError::BadSegmentSize { addr: 0 },
        LoadError::SegmentOutsideMemory {
            addr: 0x100_0000,
            len: 0x10,
        },
        LoadError::SegmentOverlapsBootInfo {
            addr: 0x9000,
            len: 1,
        },
        LoadError::EntryOutsideImage { entry: 1 },
        LoadError::BadAddressFields,
        LoadError::MemoryTooSmall { bytes: 1 },
        LoadError::CmdlineTooLong { len: 5000 },
        LoadError::CmdlineHasNul,
    ];
    let texts: Vec<_> = all.iter().map(|e| e.as_str()).collect();
    for (i, text) in texts.iter().enumerate() {
        assert!(!text.is_empty());
        assert!(!texts[..i].contains(text), "{text} twice");
    }
    assert_eq!(
        std::format!(
            "{}",
            LoadError::SegmentOutsideMemory {
                addr: 0x100_0000,
                len: 0x10
            }
        ),
        "segment outside guest memory (0x10 bytes at 0x1000000)"
    );
}

/// Random corruption of a real image: never a panic, and on error memory stays as it was.
#[test]
fn corrupted_images_never_panic_or_write_on_error() {
    let original = hello();
    let pristine = ram(2 * MIB);
    let mut mem = pristine.clone();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..3000 {
        let mut image = original.to_vec();
        for _ in 0..1 + next() % 4 {
            // Mostly the headers, where decisions are made.
            let at = (next()
                % if round % 2 == 0 {
                    0x80
                } else {
                    image.len() as u64
                }) as usize;
            image[at] = next() as u8;
        }
        if round % 7 == 0 {
            image.truncate((next() % image.len() as u64) as usize);
        }
        match load(&image, &mut mem, "x") {
            Ok(_) => mem.copy_from_slice(&pristine),
            Err(_) => assert!(mem == pristine, "round {round}: failed load wrote memory"),
        }
    }
}

#[test]
fn check_agrees_with_load() {
    let long = "x".repeat(CMDLINE_MAX + 1);
    let cases: [(&[u8], usize, &str); 6] = [
        (hello(), 2 * MIB, ""),
        (hello(), MIB / 2, ""),
        (hello(), MIB + 0x2000, ""),
        (hello(), 2 * MIB, &long),
        (b"\x7fELF not really", 2 * MIB, ""),
        (&[0u8; 64], 2 * MIB, ""),
    ];
    for (image, len, cmdline) in cases {
        let mut mem = vec![0xAA; len];
        let loaded = load(image, &mut mem, cmdline).map(|_| ());
        assert_eq!(check(image, len, cmdline), loaded, "len {len:#x}");
    }
}

/// What a Multiboot kernel (kvm-unit-tests reads its environment this way) finds of its
/// modules: flag bit 3, the count, the list, each module page-aligned with its bytes and string.
#[test]
fn modules_are_loaded_page_aligned_with_their_strings() {
    let mut mem = ram(16 * MIB);
    let env = b"NR_CPUS=1\nMEMSIZE=16\n";
    let blob = vec![0x5Au8; 5000];
    let modules = [
        Module {
            bytes: env,
            string: "env",
        },
        Module {
            bytes: &blob,
            string: "blob arg=1",
        },
    ];
    load_with_modules(hello(), &mut mem, "x", &modules).unwrap();
    let info = abi::BOOT_INFO_ADDR as usize;
    let flags = le32(&mem, info + abi::INFO_FLAGS);
    assert_ne!(flags & abi::INFO_FLAG_MODS, 0);
    assert_ne!(flags & abi::INFO_FLAG_CMDLINE, 0, "other flags kept");
    assert_eq!(le32(&mem, info + abi::INFO_MODS_COUNT), 2);
    let list = le32(&mem, info + abi::INFO_MODS_ADDR) as usize;
    let image_end = Image::parse(hello())
        .unwrap()
        .segments()
        .map(|s| s.end())
        .max()
        .unwrap();
    let mut last_end = image_end;
    for (i, m) in modules.iter().enumerate() {
        let e = list + i * abi::MODULE_ENTRY_LEN;
        let (start, end) = (le32(&mem, e), le32(&mem, e + 4));
        assert_eq!(start % 4096, 0, "page aligned");
        assert!(
            u64::from(start) >= last_end,
            "above the image and the previous module"
        );
        assert_eq!((end - start) as usize, m.bytes.len());
        assert_eq!(&mem[start as usize..end as usize], m.bytes);
        assert_eq!(c_str(&mem, le32(&mem, e + 8)), m.string);
        last_end = u64::from(end);
    }
    assert!(list as u64 >= last_end);
    assert_eq!(list % 4096, 0);
}

#[test]
fn module_errors_leave_memory_untouched() {
    let before = ram(2 * MIB);
    let big = vec![1u8; 2 * MIB];
    // The module starts on the page after the image; the list (one 16-byte entry) and the
    // empty string's NUL follow the module's last page.
    let image_end = Image::parse(hello())
        .unwrap()
        .segments()
        .map(|s| s.end())
        .max()
        .unwrap();
    let needed = image_end.div_ceil(4096) * 4096 + 2 * MIB as u64 + 16 + 1;
    let cases: [(&[Module<'_>], LoadError); 3] = [
        (
            &[Module {
                bytes: &big,
                string: "",
            }],
            LoadError::ModulesOutsideMemory { needed },
        ),
        (
            &[Module {
                bytes: b"",
                string: "a\0b",
            }],
            LoadError::BadModuleString { index: 0 },
        ),
        (
            &[Module {
                bytes: b"",
                string: "",
            }; MAX_MODULES + 1],
            LoadError::TooManyModules {
                count: MAX_MODULES + 1,
            },
        ),
    ];
    for (modules, want) in cases {
        let mut mem = before.clone();
        assert_eq!(
            check_with_modules(hello(), mem.len(), "", modules),
            Err(want)
        );
        assert_eq!(load_with_modules(hello(), &mut mem, "", modules), Err(want));
        assert!(mem == before, "{want:?} wrote to memory");
    }
    let long = "x".repeat(MODULE_STRING_MAX + 1);
    let m = [Module {
        bytes: b"",
        string: &long,
    }];
    assert_eq!(
        check_with_modules(hello(), 2 * MIB, "", &m),
        Err(LoadError::BadModuleString { index: 0 })
    );
    // Without modules nothing about them is written (flag bit 3 clear).
    let mut mem = ram(2 * MIB);
    load(hello(), &mut mem, "").unwrap();
    let flags = le32(&mem, abi::BOOT_INFO_ADDR as usize + abi::INFO_FLAGS);
    assert_eq!(flags & abi::INFO_FLAG_MODS, 0);
}
