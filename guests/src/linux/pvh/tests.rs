//! PVH loader tests: a synthetic ELF64 with two segments (one with BSS) and a note segment, the
//! start info, module list and memory map read back against Xen's `start_info.h`, every error
//! leaving memory unchanged; with `HERMITAGE_LINUX_VMLINUX`, Debian's decompressed kernel.

extern crate std;

use std::vec;
use std::vec::Vec;

use super::super::{E820Kind, Region};
use super::*;

const MIB: usize = 1 << 20;
const RAM: usize = 32 * MIB;
const ENTRY: u64 = 0x100_0850;

fn set16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn set32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn set64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend((name.len() as u32).to_le_bytes());
    n.extend((desc.len() as u32).to_le_bytes());
    n.extend(kind.to_le_bytes());
    n.extend(name);
    n.resize(n.len().next_multiple_of(4), 0);
    n.extend(desc);
    n.resize(n.len().next_multiple_of(4), 0);
    n
}

/// A vmlinux-shaped ELF64: text (0x2000 bytes at 16 MiB, holding the entry), data (0x1000
/// file bytes + 0x3000 BSS at 17 MiB), a note segment with a Linux note, then the Xen one.
fn vmlinux() -> Vec<u8> {
    let mut notes = note(b"Linux\0", 15, b"6.1.0\0");
    notes.extend(note(b"Xen\0", 6, b"linux\0"));
    notes.extend(note(
        b"Xen\0",
        abi::XEN_ELFNOTE_PHYS32_ENTRY,
        &ENTRY.to_le_bytes(),
    ));
    let segs: [(u32, u64, u64, u64, u64); 3] = [
        // type, file offset, paddr, filesz, memsz
        (abi::PT_LOAD, 0x1000, 0x100_0000, 0x2000, 0x2000),
        (abi::PT_LOAD, 0x3000, 0x110_0000, 0x1000, 0x4000),
        (
            abi::PT_NOTE,
            0x4000,
            0x100_1F00,
            notes.len() as u64,
            notes.len() as u64,
        ),
    ];
    let mut e = vec![0u8; 0x4000 + notes.len()];
    e[..6].copy_from_slice(&[0x7F, b'E', b'L', b'F', 2, 1]);
    set16(&mut e, 16, 2);
    set16(&mut e, 18, 62);
    set64(&mut e, 24, 0x100_0000);
    set64(&mut e, 32, 64);
    set16(&mut e, 54, 56);
    set16(&mut e, 56, segs.len() as u16);
    for (i, (kind, off, paddr, filesz, memsz)) in segs.into_iter().enumerate() {
        let at = 64 + 56 * i;
        set32(&mut e, at, kind);
        set64(&mut e, at + 8, off);
        set64(&mut e, at + 16, 0xFFFF_FFFF_8000_0000 | paddr);
        set64(&mut e, at + 24, paddr);
        set64(&mut e, at + 32, filesz);
        set64(&mut e, at + 40, memsz);
    }
    for (i, b) in e[0x1000..0x4000].iter_mut().enumerate() {
        *b = (i % 253) as u8 | 1;
    }
    e[0x4000..].copy_from_slice(&notes);
    e
}

fn ram(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8) ^ 0x5A).collect()
}

fn config<'a>(cmdline: &'a str, initrd: &'a [u8]) -> BootConfig<'a> {
    BootConfig {
        cmdline,
        initrd,
        ..BootConfig::default()
    }
}

#[test]
fn vmlinux_segments_and_pvh_entry_are_found() {
    let image = vmlinux();
    let v = Vmlinux::parse(&image).unwrap();
    assert_eq!(v.entry, ENTRY as u32);
    assert_eq!((v.start, v.end), (0x100_0000, 0x110_4000));
    let segs: Vec<_> = v
        .segments()
        .map(|s| (s.paddr, s.data.len(), s.mem_len))
        .collect();
    assert_eq!(
        segs,
        [(0x100_0000, 0x2000, 0x2000), (0x110_0000, 0x1000, 0x4000)]
    );
    // A 4-byte PHYS32_ENTRY works too.
    let short = note(
        b"Xen\0",
        abi::XEN_ELFNOTE_PHYS32_ENTRY,
        &0x100_0010u32.to_le_bytes(),
    );
    assert_eq!(phys32_entry(&short), Some(0x100_0010));
    assert_eq!(phys32_entry(&note(b"Xen\0", 17, &[1, 0, 0, 0])), None);
    assert_eq!(phys32_entry(&note(b"Xem\0", 18, &[1, 0, 0, 0])), None);
}

#[test]
fn load_writes_segments_start_info_modules_memmap_and_cmdline() {
    let image = vmlinux();
    let initrd: Vec<u8> = (0..10_000).map(|i| (i % 7) as u8).collect();
    let reserved = [Region {
        addr: 0xFEC0_0000,
        len: 0x1000,
        kind: E820Kind::Reserved,
    }];
    let cfg = BootConfig {
        reserved: &reserved,
        acpi_rsdp: Some(0xE_0000),
        ..config("console=ttyS0 pvh", &initrd)
    };
    let mut mem = ram(RAM);
    let entry = load(&image, &mut mem, &cfg).unwrap();
    assert_eq!(
        entry,
        PvhEntry {
            eip: ENTRY as u32,
            ebx: 0x2000,
            eflags: 0x2,
            cr0: 0x11,
            gdt_base: 0x1000,
            gdt_limit: 31,
            cs: 0x08,
            ds: 0x18,
        }
    );
    // Segments: file bytes, then zeroed BSS.
    assert_eq!(&mem[0x100_0000..0x100_2000], &image[0x1000..0x3000]);
    assert_eq!(&mem[0x110_0000..0x110_1000], &image[0x3000..0x4000]);
    assert!(mem[0x110_1000..0x110_4000].iter().all(|&b| b == 0));
    assert_eq!(
        mem[0x110_4000],
        (0x110_4000usize as u8) ^ 0x5A,
        "untouched after"
    );

    let plan = check(&image, RAM, &cfg).unwrap();
    let si = START_INFO_ADDR as usize;
    assert_eq!(le32(&mem, si), 0x336E_C578);
    assert_eq!(le32(&mem, si + 4), 1);
    assert_eq!(le32(&mem, si + 8), 0, "flags");
    assert_eq!(le32(&mem, si + 12), 1, "nr_modules");
    assert_eq!(le64(&mem, si + 16), MODLIST_ADDR);
    assert_eq!(le64(&mem, si + 24), CMDLINE_ADDR);
    assert_eq!(le64(&mem, si + 32), 0xE_0000);
    assert_eq!(le64(&mem, si + 40), MEMMAP_ADDR);
    assert_eq!(le32(&mem, si + 48) as usize, plan.e820.entries().len());
    let m = MODLIST_ADDR as usize;
    assert_eq!(
        (le64(&mem, m), le64(&mem, m + 8)),
        (plan.initrd_addr, 10_000)
    );
    assert_eq!((le64(&mem, m + 16), le64(&mem, m + 24)), (0, 0));
    let a = plan.initrd_addr as usize;
    assert_eq!(&mem[a..a + initrd.len()], &initrd[..]);
    assert_eq!(a % 4096, 0);
    assert!(plan.initrd_addr >= plan.kernel_end);
    let memmap: Vec<_> = (0..plan.e820.entries().len())
        .map(|i| {
            let at = MEMMAP_ADDR as usize + 24 * i;
            (
                le64(&mem, at),
                le64(&mem, at + 8),
                le32(&mem, at + 16),
                le32(&mem, at + 20),
            )
        })
        .collect();
    assert_eq!(
        memmap,
        [
            (0, 0x9_FC00, 1, 0),
            (0x9_FC00, 0x6_0400, 2, 0),
            (0x10_0000, RAM as u64 - 0x10_0000, 1, 0),
            (0xFEC0_0000, 0x1000, 2, 0),
        ]
    );
    let c = CMDLINE_ADDR as usize;
    assert_eq!(&mem[c..c + 18], b"console=ttyS0 pvh\0");
    assert_eq!(le64(&mem, GDT_ADDR as usize + 8), super::super::GDT_CODE32);
}

#[test]
fn without_initrd_there_are_no_modules() {
    let mut mem = ram(RAM);
    load(&vmlinux(), &mut mem, &config("", &[])).unwrap();
    let si = START_INFO_ADDR as usize;
    assert_eq!(le32(&mem, si + 12), 0);
    assert_eq!(le64(&mem, si + 16), 0);
    assert_eq!(le64(&mem, si + 32), 0, "no RSDP");
}

fn refused(image: &[u8], mem_len: usize, cfg: &BootConfig<'_>, err: LoadError) {
    assert_eq!(check(image, mem_len, cfg).err(), Some(err));
    let mut mem = ram(mem_len);
    let before = mem.clone();
    assert_eq!(load(image, &mut mem, cfg), Err(err));
    assert!(mem == before, "{err:?} changed memory");
}

#[test]
fn every_error_leaves_memory_unchanged() {
    let good = vmlinux();
    let none = config("", &[]);
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut e = good.clone();
        f(&mut e);
        e
    };
    refused(&good[..40], RAM, &none, LoadError::NotElf64);
    refused(&edit(&|e| e[0] = 0), RAM, &none, LoadError::NotElf64);
    refused(&edit(&|e| e[4] = 1), RAM, &none, LoadError::NotElf64);
    refused(&edit(&|e| set16(e, 18, 3)), RAM, &none, LoadError::NotElf64);
    refused(&edit(&|e| set16(e, 16, 3)), RAM, &none, LoadError::NotElf64);
    refused(
        &edit(&|e| set16(e, 56, 400)),
        RAM,
        &none,
        LoadError::Truncated,
    );
    refused(&good[..0x3800], RAM, &none, LoadError::Truncated);
    // The note's type changed: no entry.
    let xen = good.len() - 24; // the Xen PHYS32_ENTRY note: 12 header + 4 name + 8 desc
    refused(
        &edit(&|e| set32(e, xen + 8, 17)),
        RAM,
        &none,
        LoadError::NoPvhEntry,
    );
    // The entry outside every segment.
    refused(
        &edit(&|e| set64(e, xen + 16, 0x200_0000)),
        RAM,
        &none,
        LoadError::NoPvhEntry,
    );
    refused(
        &edit(&|e| set64(e, 64 + 24, 0x8_0000)),
        RAM,
        &none,
        LoadError::BadSegment { addr: 0x8_0000 },
    );
    refused(
        &edit(&|e| set64(e, 64 + 56 + 32, 0x5000)),
        RAM,
        &none,
        LoadError::BadSegment { addr: 0x110_0000 },
    );
    refused(
        &good,
        17 * MIB,
        &none,
        LoadError::KernelTooBig {
            end: 0x110_4000,
            ram: 17 * MIB as u64,
        },
    );
    refused(
        &good,
        0x8_0000,
        &none,
        LoadError::MemoryTooSmall { bytes: 0x8_0000 },
    );
    let long = "x".repeat(2048);
    refused(
        &good,
        RAM,
        &config(&long, &[]),
        LoadError::CmdlineTooLong {
            len: 2048,
            max: 2047,
        },
    );
    let huge = vec![1u8; RAM];
    refused(
        &good,
        RAM,
        &config("", &huge),
        LoadError::InitrdTooBig { len: RAM as u64 },
    );
    let reserved = [Region {
        addr: 0x100_1000,
        len: 0x1000,
        kind: E820Kind::Reserved,
    }];
    refused(
        &good,
        RAM,
        &BootConfig {
            reserved: &reserved,
            ..none
        },
        LoadError::KernelOverlapsReserved { addr: 0x100_1000 },
    );
}

/// Debian's kernel decompressed by `scripts/linux-guest` (`target/linux/vmlinux`).
#[test]
fn debian_vmlinux_has_a_pvh_entry() {
    let Some(path) = std::env::var_os("HERMITAGE_LINUX_VMLINUX") else {
        std::eprintln!("SKIPPED debian_vmlinux_has_a_pvh_entry: HERMITAGE_LINUX_VMLINUX not set");
        return;
    };
    let image = std::fs::read(path).unwrap();
    let v = Vmlinux::parse(&image).unwrap();
    // pvh_start_xen, in the first text page after startup_64 (0x1000850 for 6.1.0-57).
    assert!(
        (0x100_0000..0x100_1000).contains(&v.entry),
        "{:#x}",
        v.entry
    );
    assert_eq!(v.start, 0x100_0000);
    let mut mem = vec![0u8; 256 * MIB];
    let entry = load(&image, &mut mem, &config("console=ttyS0", &[1; 4096])).unwrap();
    assert_eq!(entry.eip, v.entry);
    // pvh_start_xen opens with `cld` (arch/x86/platform/pvh/head.S).
    assert_eq!(mem[v.entry as usize], 0xFC);
}

/// Debian's vmlinux and the initramfs, put into RAM by [`load`] and entered with exactly the
/// [`PvhEntry`] state under plain QEMU (a Multiboot copier at 256 MiB, so that QEMU's modules
/// land above where they are copied to): it must reach the shell with our command line, memory
/// map and initrd.
#[test]
fn debian_vmlinux_boots_from_the_pvh_entry_state_under_qemu() {
    use super::super::tests::{boot_under_qemu, copier, test_cmdline};
    let name = "debian_vmlinux_boots_from_the_pvh_entry_state_under_qemu";
    let (Some(kernel), Some(initramfs)) = (
        std::env::var_os("HERMITAGE_LINUX_VMLINUX"),
        std::env::var_os("HERMITAGE_LINUX_INITRD"),
    ) else {
        std::eprintln!("SKIPPED {name}: HERMITAGE_LINUX_VMLINUX/INITRD not set");
        return;
    };
    let image = std::fs::read(kernel).unwrap();
    let initrd = std::fs::read(initramfs).unwrap();
    let cmdline = test_cmdline();
    let ram = 512 * MIB;
    let cfg = config(&cmdline, &initrd);
    let mut mem = vec![0u8; ram];
    let entry = load(&image, &mut mem, &cfg).unwrap();
    let plan = check(&image, ram, &cfg).unwrap();
    const BASE: u32 = 0x1000_0000;
    let dests = [BOOT_AREA_START, plan.kernel_start, plan.initrd_addr];
    let mut t = copier(BASE, dests, entry.gdt_base.into(), entry.gdt_limit);
    t.push(0xEA); // jmp far cs:next
    let next = BASE + t.len() as u32 + 6;
    t.extend(next.to_le_bytes());
    t.extend(entry.cs.to_le_bytes());
    t.push(0xB8); // mov eax, ds selector
    t.extend(u32::from(entry.ds).to_le_bytes());
    // mov ds, ax; mov es, ax; mov ss, ax; mov fs, ax; mov gs, ax
    t.extend([0x8E, 0xD8, 0x8E, 0xC0, 0x8E, 0xD0, 0x8E, 0xE0, 0x8E, 0xE8]);
    t.push(0xBB); // mov ebx, start info
    t.extend(entry.ebx.to_le_bytes());
    t.extend([0x6A, entry.eflags as u8, 0x9D]); // push eflags; popfd
    t.push(0xB8); // mov eax, eip
    t.extend(entry.eip.to_le_bytes());
    t.extend([0xFF, 0xE0]); // jmp eax
    let at = |a: u64, len: u64| &mem[a as usize..(a + len) as usize];
    let Some(log) = boot_under_qemu(
        name,
        &t,
        [
            at(BOOT_AREA_START, BOOT_AREA_END - BOOT_AREA_START),
            at(plan.kernel_start, plan.kernel_end - plan.kernel_start),
            at(plan.initrd_addr, plan.initrd_len),
        ],
        512,
        &cmdline,
    ) else {
        return;
    };
    assert!(
        log.contains("BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable"),
        "{log}"
    );
    let ramdisk = std::format!(
        "RAMDISK: [mem {:#010x}-{:#010x}]",
        plan.initrd_addr,
        (plan.initrd_addr + plan.initrd_len).next_multiple_of(4096) - 1
    );
    assert!(log.contains(&ramdisk), "{ramdisk} missing:\n{log}");
}
