//! Everything that only makes sense on the bare machine.

mod fwcfg;
mod heap;
mod serial;
mod start;

extern crate alloc;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::mem::MaybeUninit;
use core::num::NonZeroU64;
use core::ops::Range;

use hermit_entry::boot_info::{BootInfo, HardwareInfo, PlatformInfo, RawBootInfo, SerialPortBase};
use hermit_entry::elf::KernelObject;
use hermitage_boot::layout::{self, PageTables};
use hermitage_boot::{devicetree, multiboot};

use self::serial::println;

/// The kernel's console, which is also ours.
const COM1: u16 = 0x3F8;
/// Hermit's boot stack size (`KERNEL_STACK_SIZE` in hermit-kernel 0.11.0): the kernel gets the
/// base of this stack in `rsp` and adds the size itself (`arch/x86_64/kernel/start.rs`).
const KERNEL_STACK_SIZE: usize = 0x8000;
/// Longest command line we copy; GRUB and QEMU lines are far shorter.
const MAX_CMDLINE: usize = 4096;

/// Why the kernel could not be started. Printed on COM1 before QEMU is told to exit.
#[derive(Clone, Copy, Debug)]
#[expect(
    dead_code,
    reason = "the fields are read by the derived `Debug` when printed"
)]
enum BootError {
    /// `eax` did not hold the multiboot magic: something else started us.
    NotMultiboot { magic: u32 },
    /// The boot loader passed no module; QEMU needs `-initrd kernel.elf`.
    NoKernelModule,
    /// The boot loader passed no memory map.
    NoMemoryMap,
    /// The module is not a 64-bit ELF file.
    NotElf64,
    /// `hermit-entry` rejected the kernel ELF (malformed files make it panic instead).
    InvalidKernel,
    /// The kernel is linked at a fixed address; Hermit kernels are position independent.
    KernelNotRelocatable,
    /// No usable RAM above the loader holds the kernel image.
    NoRoomForKernel { size: u64 },
    /// The page tables cannot map the loader or kernel.
    Layout(layout::LayoutError),
}

#[repr(C, align(4096))]
struct KernelStack([u8; KERNEL_STACK_SIZE]);

unsafe extern "C" {
    static __loader_start: u8;
    static __loader_end: u8;
}

/// Called by `start.rs` in long mode, on the loader's own stack, with the first 4 GiB
/// identity-mapped.
#[unsafe(no_mangle)]
extern "C" fn loader_main(magic: u32, multiboot_info: u32) -> ! {
    serial::init(COM1);
    println!("hermitage-boot: multiboot loader");
    log::set_logger(&serial::LOGGER).ok();
    log::set_max_level(log::LevelFilter::Info);
    let error = match boot(magic, multiboot_info) {
        Ok(never) => match never {},
        Err(error) => error,
    };
    println!("hermitage-boot: cannot start the kernel: {error:?}");
    serial::exit_qemu_and_halt()
}

fn boot(magic: u32, multiboot_info: u32) -> Result<core::convert::Infallible, BootError> {
    if magic != multiboot::BOOTLOADER_MAGIC {
        return Err(BootError::NotMultiboot { magic });
    }
    let info = multiboot::Info::parse(&read_phys(u64::from(multiboot_info)));

    // Copy what we keep out of the boot loader's memory before anything is overwritten.
    let cmdline = info
        .cmdline
        .map(|addr| read_cstr(u64::from(addr)))
        .unwrap_or_default();
    let name = info.boot_loader_name.map(|addr| read_cstr(u64::from(addr)));
    let args = multiboot::kernel_args(&cmdline, name.as_deref());
    // A token in a fw_cfg file (`scripts/run --token-file`) joins the kernel's arguments: it
    // never was on QEMU's command line, where `ps` shows it to everyone.
    let token = fwcfg::read_file(hermitage_boot::fwcfg::TOKEN_FILE, 4096);
    let args = match token.as_deref().map(multiboot::token_from_file) {
        Some(Some(t)) => {
            println!(
                "hermitage-boot: api token from fw_cfg {}",
                hermitage_boot::fwcfg::TOKEN_FILE
            );
            multiboot::with_token(args, t)
        }
        Some(None) => {
            println!(
                "hermitage-boot: fw_cfg {} is no valid token; ignored",
                hermitage_boot::fwcfg::TOKEN_FILE
            );
            String::from(args)
        }
        None => String::from(args),
    };
    let args: &'static str = args.leak();
    println!(
        "hermitage-boot: started by {name:?} with {:?}, kernel arguments {:?}",
        multiboot::redacted(&cmdline),
        multiboot::redacted(args)
    );
    let ram: Vec<Range<u64>> = {
        let (addr, len) = info.memory_map.ok_or(BootError::NoMemoryMap)?;
        // SAFETY: the boot loader placed the memory map there; nothing writes it before this copy.
        let bytes = unsafe { phys_slice(u64::from(addr), len as usize) };
        multiboot::usable_ram(bytes).collect()
    };
    for range in &ram {
        println!("hermitage-boot: RAM {:#x}..{:#x}", range.start, range.end);
    }
    let (mods_addr, _count) = info.modules.ok_or(BootError::NoKernelModule)?;
    let module = multiboot::module_range(&read_phys(u64::from(mods_addr)));

    // SAFETY: the module stays untouched until we jump: the kernel is placed beside it.
    let elf = unsafe { phys_slice(module.start, (module.end - module.start) as usize) };
    if !elf.starts_with(b"\x7fELF\x02") {
        return Err(BootError::NotElf64);
    }
    let kernel = KernelObject::parse(elf).map_err(|error| {
        println!("hermitage-boot: {error}");
        BootError::InvalidKernel
    })?;
    if kernel.start_addr().is_some() {
        return Err(BootError::KernelNotRelocatable);
    }
    let loader = (&raw const __loader_start) as u64..(&raw const __loader_end) as u64;
    let size = kernel.mem_size() as u64;
    let start = layout::place_kernel(ram.iter().cloned(), loader.end, module.clone(), size)
        .ok_or(BootError::NoRoomForKernel { size })?;
    println!(
        "hermitage-boot: module {:#x}..{:#x}, kernel to {start:#x}",
        module.start, module.end
    );
    // `place_kernel` chose usable RAM above the loader that overlaps neither the module nor
    // anything else we still read (the rest was copied to the heap above).
    // SAFETY: that range is ours alone to write, as said just above.
    let memory = unsafe { phys_slice_mut(start, size as usize) };
    let loaded = kernel.load_kernel(memory, start);

    let fdt: &'static [u8] = devicetree::build(ram.iter().cloned(), args).leak();
    let stack = Box::leak(Box::new(KernelStack([0; KERNEL_STACK_SIZE])));
    let boot_info = BootInfo {
        hardware_info: HardwareInfo {
            phys_addr_range: ram.iter().map(|r| r.start).min().unwrap_or(0)
                ..ram.iter().map(|r| r.end).max().unwrap_or(0),
            serial_port_base: SerialPortBase::new(COM1),
            device_tree: NonZeroU64::new(fdt.as_ptr() as u64),
        },
        load_info: loaded.load_info,
        platform_info: PlatformInfo::Multiboot {
            command_line: Some(args),
            multiboot_info_addr: NonZeroU64::new(u64::from(multiboot_info))
                .expect("multiboot info at address 0"),
        },
    };
    let raw_boot_info: &'static RawBootInfo = Box::leak(Box::new(RawBootInfo::from(boot_info)));

    // Built last: everything the kernel reads (boot info, device tree, stack, command line) is
    // on the loader's heap, which these tables map.
    let tables = Box::leak(Box::new(PageTables::new()));
    let cr3 = &raw const *tables as u64;
    tables
        .build(cr3, loader, start + size)
        .map_err(BootError::Layout)?;

    println!(
        "hermitage-boot: entering kernel at {:#x}",
        loaded.entry_point
    );
    // `tables` identity-map this code, the heap (boot info, device tree, command line, stack)
    // and the loaded and relocated kernel, whose entry point follows `hermit_entry::Entry`.
    // SAFETY: everything the jump needs is mapped, as said just above.
    unsafe {
        start::enter_kernel(
            cr3,
            loaded.entry_point,
            raw_boot_info,
            stack.0.as_ptr() as u64,
        )
    }
}

/// Reads `N` bytes of physical memory.
fn read_phys<const N: usize>(addr: u64) -> [u8; N] {
    // Only called for boot loader structures below 4 GiB, which `start.rs` identity-maps and
    // which nothing writes while the loader runs.
    // SAFETY: mapped and not written concurrently, as said just above.
    unsafe { phys_slice(addr, N) }.try_into().unwrap()
}

/// Copies a NUL-terminated string of at most [`MAX_CMDLINE`] bytes out of physical memory.
fn read_cstr(addr: u64) -> String {
    let mut bytes = Vec::new();
    for offset in 0..MAX_CMDLINE as u64 {
        match read_phys::<1>(addr + offset) {
            [0] => break,
            [byte] => bytes.push(byte),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A view of physical memory.
///
/// # Safety
///
/// `addr..addr + len` must lie below 4 GiB (identity-mapped by `start.rs`) and must not be
/// written while the slice is alive, in particular not overlap the loader's own memory.
unsafe fn phys_slice(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: the caller guarantees the range is mapped and not mutated.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

/// A writable view of physical memory.
///
/// # Safety
///
/// `addr..addr + len` must lie below 4 GiB and nothing else may use it while the slice is alive.
unsafe fn phys_slice_mut(addr: u64, len: usize) -> &'static mut [MaybeUninit<u8>] {
    // SAFETY: the caller guarantees the range is mapped and exclusively ours.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut MaybeUninit<u8>, len) }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("hermitage-boot: panic: {info}");
    serial::exit_qemu_and_halt()
}
