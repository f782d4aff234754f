//! The kernel binary's thin unsafe layer: port I/O, MSRs, identity-mapping device memory and
//! physically contiguous DMA memory for our own NIC drivers.
//!
//! Everything else in the binary is safe code. Hermit 0.11.0 identity-maps all RAM (with
//! 2 MiB pages, from the device tree's memory nodes) and reads its page tables at physical ==
//! virtual addresses; we rely on both facts here and on nothing else of its internals.

use core::alloc::Layout;
use core::ptr::NonNull;

use hermit::mm::{PhysAddr, VirtAddr};

/// Read a 32-bit value from an I/O port.
pub fn inl(port: u16) -> u32 {
    // SAFETY: we run in ring 0; port reads used here (PCI configuration data) have no side
    // effects on memory safety.
    unsafe { x86::io::inl(port) }
}

/// Write a 32-bit value to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: ring 0; callers write only the PCI configuration address/data ports.
    unsafe { x86::io::outl(port, value) }
}

/// Read an MSR the caller knows exists on this CPU (checked against CPUID first).
pub fn rdmsr(msr: u32) -> u64 {
    // SAFETY: ring 0; callers only name MSRs that CPUID enumerates (the vPMU hardware backing:
    // host PMU MSRs of the PMU `hv::vpmu::Backing::choose` checked), so no #GP.
    unsafe { x86::msr::rdmsr(msr) }
}

/// Start a kernel thread running `func(arg)` pinned to Hermit core `core`, with a normal
/// priority and Hermit's default stack size. Returns its task id for `sys_join`.
pub fn spawn_pinned(func: extern "C" fn(usize), arg: usize, core: usize) -> hermit::syscalls::Tid {
    // SAFETY: `func` is a safe extern "C" function, so calling it with any `arg` is sound; the
    // stack size is Hermit's default and `core` is a valid core index or Hermit picks one.
    unsafe {
        hermit::syscalls::sys_spawn2(
            trampoline_for(func),
            arg,
            2,
            hermit::DEFAULT_STACK_SIZE,
            core as isize,
        )
    }
}

/// `sys_spawn2` wants an `unsafe extern "C" fn(usize)`; a safe one coerces.
fn trampoline_for(func: extern "C" fn(usize)) -> unsafe extern "C" fn(usize) {
    func
}

/// Write an MSR the caller knows exists and accepts `value`.
pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: ring 0; callers only write architectural MSRs with values valid for them (the
    // x2APIC ICR; host PMU MSRs from `hv::vpmu::backing`, which keeps reserved bits clear).
    unsafe { x86::msr::wrmsr(msr, value) }
}

/// Write a 32-bit device register at a physical address mapped by [`map_device_memory`].
pub fn mmio_write32(phys: u64, value: u32) {
    // SAFETY: callers map `phys` as uncached device memory first (identity), and it is 4-byte
    // aligned; the write has no effect on Rust-visible memory.
    unsafe { (phys as *mut u32).write_volatile(value) }
}

/// Translate a kernel virtual address to a physical one.
pub fn virt_to_phys(addr: usize) -> Option<u64> {
    hermit::mm::virtual_to_physical(VirtAddr::new(addr as u64)).map(|p: PhysAddr| p.as_u64())
}

const PAGE: u64 = 4096;
const LARGE: u64 = 2 << 20;
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const NO_CACHE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// Errors from mapping device memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// A page-table page could not be allocated.
    NoMemory,
    /// The range is already mapped as ordinary RAM by a large page; refusing to change it.
    ConflictsWithRam,
}

/// Identity-map `[phys, phys + len)` as uncached device memory (PCD|PWT, NX), so that MMIO
/// BARs can be accessed at their physical address. Existing identical mappings are kept.
pub fn map_device_memory(phys: u64, len: u64) -> Result<(), MapError> {
    // One CPU at a time: two CPUs adding the same missing page table would each install their
    // own and one mapping would be lost.
    static MAP_LOCK: hermit_sync::SpinMutex<()> = hermit_sync::SpinMutex::new(());
    let _serialized = MAP_LOCK.lock();
    let start = phys & !(PAGE - 1);
    let end = (phys + len).div_ceil(PAGE) * PAGE;
    let mut addr = start;
    while addr < end {
        map_device_page(addr)?;
        addr += PAGE;
    }
    Ok(())
}

fn map_device_page(addr: u64) -> Result<(), MapError> {
    // SAFETY: reading CR3 has no side effects in ring 0.
    let mut table = unsafe { x86::controlregs::cr3() } & ADDR_MASK;
    for level in [39u32, 30, 21] {
        let index = ((addr >> level) & 0x1FF) as usize;
        let entry_ptr = (table as usize + index * 8) as *mut u64;
        // SAFETY: page tables live in identity-mapped RAM (Hermit relies on the same), `table`
        // is the physical address of a present table page and `index` < 512.
        let entry = unsafe { entry_ptr.read_volatile() };
        if entry & PRESENT == 0 {
            let new_table = alloc_page_table()?;
            // SAFETY: as above; we install a zeroed table page we own forever.
            unsafe { entry_ptr.write_volatile(new_table | PRESENT | WRITABLE) };
            table = new_table;
        } else if entry & HUGE != 0 {
            // A large page already covers this address; if it is the same identity mapping we
            // can use it as is only when it is uncached. Otherwise do not touch RAM mappings.
            let covered =
                level == 21 && (entry & ADDR_MASK & !(LARGE - 1)) == (addr & !(LARGE - 1));
            return if covered && entry & NO_CACHE != 0 {
                Ok(())
            } else {
                Err(MapError::ConflictsWithRam)
            };
        } else {
            table = entry & ADDR_MASK;
        }
    }
    let index = ((addr >> 12) & 0x1FF) as usize;
    let entry_ptr = (table as usize + index * 8) as *mut u64;
    let want = addr | PRESENT | WRITABLE | WRITE_THROUGH | NO_CACHE | NO_EXECUTE;
    // SAFETY: `table` is a present last-level table in identity-mapped RAM; the new entry maps a
    // device page nobody else maps, then we flush this CPU's TLB entry for it. Other CPUs have
    // never cached a translation for it (it was not present).
    unsafe {
        if entry_ptr.read_volatile() != want {
            entry_ptr.write_volatile(want);
            x86::tlb::flush(addr as usize);
        }
    }
    Ok(())
}

/// A zeroed 4 KiB page for a new page table, returned as its physical address. Never freed.
fn alloc_page_table() -> Result<u64, MapError> {
    let layout =
        Layout::from_size_align(PAGE as usize, PAGE as usize).map_err(|_| MapError::NoMemory)?;
    // SAFETY: the layout has non-zero size.
    let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(MapError::NoMemory);
    }
    virt_to_phys(ptr as usize).ok_or(MapError::NoMemory)
}

/// Physically contiguous, page-aligned, zeroed memory for device queues and buffers.
///
/// Hermit's heap is backed by 2 MiB (or 1 GiB) pages, so an allocation aligned to its own
/// power-of-two size up to 2 MiB never straddles a physical discontinuity; we check anyway.
pub fn dma_alloc(pages: usize) -> Option<(u64, NonNull<u8>)> {
    let size = (pages.max(1) * PAGE as usize).next_power_of_two();
    if size > LARGE as usize {
        return None;
    }
    let layout = Layout::from_size_align(size, size).ok()?;
    // SAFETY: non-zero size.
    let ptr = NonNull::new(unsafe { alloc::alloc::alloc_zeroed(layout) })?;
    let base = virt_to_phys(ptr.as_ptr() as usize)?;
    let contiguous = (0..size / PAGE as usize).all(|i| {
        virt_to_phys(ptr.as_ptr() as usize + i * PAGE as usize) == Some(base + (i as u64) * PAGE)
    });
    if contiguous { Some((base, ptr)) } else { None }
}

/// Free memory from [`dma_alloc`].
///
/// # Safety
/// `ptr` must come from `dma_alloc(pages)` with the same `pages`, and the device must no longer
/// use it.
pub unsafe fn dma_free(ptr: NonNull<u8>, pages: usize) {
    let size = (pages.max(1) * PAGE as usize).next_power_of_two();
    // SAFETY: same layout as the allocation, per this function's contract.
    unsafe { alloc::alloc::dealloc(ptr.as_ptr(), Layout::from_size_align_unchecked(size, size)) }
}

/// The virtio-drivers HAL over the helpers above.
#[derive(Debug)]
pub struct VirtioHal;

// SAFETY: dma_alloc returns zeroed, page-aligned, physically contiguous memory that stays valid
// until dma_dealloc; mmio_phys_to_virt identity-maps the BAR uncached; share() returns the
// physical address of buffers that lie within one page (checked) of identity-backed heap memory.
unsafe impl virtio_drivers::Hal for VirtioHal {
    fn dma_alloc(pages: usize, _dir: virtio_drivers::BufferDirection) -> (usize, NonNull<u8>) {
        let (phys, ptr) = dma_alloc(pages).expect("virtio: out of contiguous DMA memory");
        (phys as usize, ptr)
    }

    unsafe fn dma_dealloc(_paddr: usize, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: virtio-drivers frees exactly what it allocated, after the device is done.
        unsafe { dma_free(vaddr, pages) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: usize, size: usize) -> NonNull<u8> {
        map_device_memory(paddr as u64, size as u64).expect("virtio: cannot map BAR");
        NonNull::new(paddr as *mut u8).expect("virtio: BAR at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _dir: virtio_drivers::BufferDirection) -> usize {
        let start = buffer.as_ptr() as *mut u8 as usize;
        let len = buffer.len().max(1);
        let phys = virt_to_phys(start).expect("virtio: buffer not mapped");
        let last = virt_to_phys(start + len - 1).expect("virtio: buffer not mapped");
        assert_eq!(
            last - phys,
            (len - 1) as u64,
            "virtio: buffer not physically contiguous"
        );
        phys as usize
    }

    unsafe fn unshare(
        _paddr: usize,
        _buffer: NonNull<[u8]>,
        _dir: virtio_drivers::BufferDirection,
    ) {
    }
}

/// Copy the C `argv` Hermit hands `runtime_entry` into owned strings, dropping `argv[0]` (the
/// image path).
pub fn args(argc: i32, argv: *const *const u8) -> alloc::vec::Vec<alloc::string::String> {
    let mut out = alloc::vec::Vec::new();
    for i in 1..usize::try_from(argc).unwrap_or(0) {
        // SAFETY: Hermit passes `argc` valid, NUL-terminated strings in `argv`, alive forever.
        let s = unsafe { core::ffi::CStr::from_ptr((*argv.add(i)).cast()) };
        out.push(alloc::string::String::from_utf8_lossy(s.to_bytes()).into_owned());
    }
    out
}

/// IA32_EFER bit 12: SVM enable (AMD APM vol. 2, 15.4).
pub const EFER_SVME: u64 = 1 << 12;
/// CR4 bit 13: VMX enable (SDM vol. 3C 24.7).
pub const CR4_VMXE: u64 = 1 << 13;

/// CPUID of the CPU this runs on, with a subleaf: EAX, EBX, ECX, EDX. Arch-neutral (the
/// guests' CPUID view starts from it on Intel and AMD alike).
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = raw_cpuid::native_cpuid::cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// This CPU's IA32_EFER.
pub fn efer() -> u64 {
    // SAFETY: EFER (0xC000_0080) exists on every x86-64 CPU; reading it has no side effects.
    unsafe { x86::msr::rdmsr(x86::msr::IA32_EFER) }
}

/// This CPU's CR4.
pub fn cr4() -> u64 {
    // SAFETY: reading CR4 in ring 0 has no side effects.
    unsafe { x86::controlregs::cr4() }.bits() as u64
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; CR4.TSD does not matter at CPL 0.
    unsafe { x86::time::rdtsc() }
}

/// TSC ticks per microsecond, measured once against the monotonic clock over 10 ms (1 ms let
/// one host preemption under a software CPU skew the rate every guest clock derives from).
pub fn tsc_per_us() -> u64 {
    static RATE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    let known = RATE.load(core::sync::atomic::Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    let (t0, c0) = (monotonic_micros(), rdtsc());
    while monotonic_micros() < t0 + 10_000 {
        core::hint::spin_loop();
    }
    let (t1, c1) = (monotonic_micros(), rdtsc());
    let rate = (c1.wrapping_sub(c0) / (t1 - t0).max(1)).max(1);
    RATE.store(rate, core::sync::atomic::Ordering::Relaxed);
    rate
}

/// Seconds since 1970 by the host's clock (Hermit reads the RTC at boot).
pub fn unix_time_secs() -> i64 {
    let mut ts = hermit::time::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME is supported.
    unsafe {
        hermit::syscalls::sys_clock_gettime(1 /* CLOCK_REALTIME */, &mut ts)
    };
    ts.tv_sec
}

/// Microseconds since boot (Hermit's monotonic clock).
pub fn monotonic_micros() -> u64 {
    let mut ts = hermit::time::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is supported.
    unsafe {
        hermit::syscalls::sys_clock_gettime(4 /* CLOCK_MONOTONIC */, &mut ts)
    };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// A seed for TCP initial sequence numbers and the like: the time-stamp counter.
pub fn random_seed() -> u64 {
    // SAFETY: RDTSC is available on every x86-64 CPU and CR4.TSD is clear in ring 0.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The physical address of `[addr, addr + len)` if it is physically contiguous.
pub fn phys_contiguous(addr: usize, len: usize) -> Option<u64> {
    let base = virt_to_phys(addr)?;
    let mut off = PAGE as usize - (addr & (PAGE as usize - 1));
    while off < len {
        if virt_to_phys(addr + off)? != base + off as u64 {
            return None;
        }
        off += PAGE as usize;
    }
    Some(base)
}

/// Power the machine off: Bochs' shutdown port first (it ends the simulation on the string
/// "Shutdown" written to port 0x8900; elsewhere the port is unused), then Hermit's exit, which
/// uses QEMU's isa-debug-exit and ACPI S5.
pub fn power_off(code: i32) -> ! {
    // Bochs cannot pass an exit status out (its shutdown port always ends the run the same
    // way), so say it on the console too.
    println!("hermitage: powering off, exit code {code}");
    // Let the console drain first: COM1's line status TEMT (bit 6) says the transmitter is empty.
    for _ in 0..100_000 {
        // SAFETY: ring 0; reading COM1's line status register has no side effects.
        if unsafe { x86::io::inb(0x3FD) } & 0x40 != 0 {
            break;
        }
    }
    for b in b"Shutdown" {
        // SAFETY: ring 0; port 0x8900 is Bochs' shutdown port and unused on other machines.
        unsafe { x86::io::outb(0x8900, *b) };
    }
    hermit::syscalls::sys_exit(code)
}

/// Reset the machine: the reset control register at 0xCF9 (hard reset), then the keyboard
/// controller's reset line. Virtualization must already be off on every CPU.
pub fn reset_machine() -> ! {
    // SAFETY: ring 0; these writes reset the machine, which is what the caller wants.
    unsafe {
        x86::io::outb(0xCF9, 0x02);
        x86::io::outb(0xCF9, 0x06);
        x86::io::outb(0x64, 0xFE);
    }
    loop {
        core::hint::spin_loop();
    }
}

/// Read a 32-bit device register at a physical address mapped by [`map_device_memory`].
pub fn mmio_read32(phys: u64) -> u32 {
    // SAFETY: as for `mmio_write32`: mapped uncached, aligned, no Rust-visible memory involved.
    unsafe { (phys as *const u32).read_volatile() }
}

/// Guest RAM: one zeroed, 2 MiB-aligned heap allocation. Hermit backs its heap with 2 MiB (or
/// larger) pages, so every 2 MiB chunk is physically contiguous and nested paging can map the
/// guest with large pages; [`GuestRam::chunk_phys`] gives each chunk's host-physical address.
pub struct GuestRam {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: GuestRam owns its allocation exclusively (like a Box<[u8]>); moving it between CPUs
// is fine.
unsafe impl Send for GuestRam {}

impl core::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GuestRam({} MiB)", self.len >> 20)
    }
}

impl GuestRam {
    pub const CHUNK: usize = LARGE as usize;

    /// `mib` MiB of zeroed guest RAM (rounded up to 2 MiB), or `None` when the heap cannot
    /// provide it or a chunk is not physically contiguous.
    pub fn new(mib: usize) -> Option<GuestRam> {
        let len = (mib << 20).div_ceil(Self::CHUNK).max(1) * Self::CHUNK;
        let layout = Layout::from_size_align(len, Self::CHUNK).ok()?;
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { alloc::alloc::alloc_zeroed(layout) })?;
        let ram = GuestRam { ptr, len };
        let contiguous = (0..len / Self::CHUNK).all(|i| ram.chunk_phys(i).is_some());
        contiguous.then_some(ram)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Host-physical address of 2 MiB chunk `i`, if it is physically contiguous.
    pub fn chunk_phys(&self, i: usize) -> Option<u64> {
        let addr = self.ptr.as_ptr() as usize + i * Self::CHUNK;
        phys_contiguous(addr, Self::CHUNK)
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed) bytes we own.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the borrow exclusive on the host side. The
        // guest writes this memory only while its vCPU runs, which needs `&mut` of its owner.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe {
            alloc::alloc::dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.len, Self::CHUNK),
            )
        }
    }
}

/// How much heap is free right now, measured the only way Hermit 0.11.0 allows (its allocator's
/// statistics are private): allocate 2 MiB blocks until the heap refuses or `limit` is reached,
/// count them, and free them all again. Precise to 2 MiB; while it runs, other allocations of
/// large blocks may transiently fail, so it is only called for `GET /v1/host`.
pub fn probe_free_heap(limit: usize) -> usize {
    let layout = Layout::from_size_align(LARGE as usize, LARGE as usize).expect("2 MiB layout");
    let max = limit / LARGE as usize;
    let mut blocks: alloc::vec::Vec<NonNull<u8>> = alloc::vec::Vec::with_capacity(max);
    while blocks.len() < max {
        // SAFETY: non-zero size; the block is freed below with the same layout, untouched.
        match NonNull::new(unsafe { alloc::alloc::alloc(layout) }) {
            Some(p) => blocks.push(p),
            None => break,
        }
    }
    let free = blocks.len() * LARGE as usize;
    for p in blocks {
        // SAFETY: allocated just above with `layout`.
        unsafe { alloc::alloc::dealloc(p.as_ptr(), layout) };
    }
    free
}

/// Run `f` with this CPU's interrupts disabled (restored to enabled afterwards).
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: CLI in ring 0 only defers interrupts; they are delivered at the STI below.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
    let r = f();
    // SAFETY: re-enabling interrupts in ring 0 (the worker threads run with them enabled).
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
    r
}

/// Halt this CPU until the next interrupt, unless `woken()` (checked with interrupts off)
/// says there is work already. STI's one-instruction shadow makes "check, then halt" atomic:
/// an interrupt (the wakeup IPI) that arrives after the check ends the HLT instead of being
/// taken before it (SDM vol. 2B STI, vol. 3A 6.8.3). Returns with interrupts enabled.
pub fn halt_unless(woken: impl FnOnce() -> bool) {
    // SAFETY: CLI in ring 0 only defers interrupts; STI below re-enables them.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
    if woken() {
        // SAFETY: re-enabling interrupts in ring 0 (the worker threads run with them enabled).
        unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
        return;
    }
    // SAFETY: ring 0 with interrupts about to be enabled: HLT returns at the next interrupt,
    // whose handler (Hermit's, for every vector it programs) runs as usual.
    unsafe { core::arch::asm!("sti", "hlt", options(nomem, nostack)) };
}

/// COM2, the trace port (`trace` feature): a 16550 at 0x2F8.
#[cfg(feature = "trace")]
const COM2: u16 = 0x2F8;

/// Set COM2 up for output: no interrupts, 115200 8N1, FIFOs on.
#[cfg(feature = "trace")]
pub fn com2_init() {
    for (offset, value) in [
        (1, 0x00),
        (3, 0x80),
        (0, 0x01),
        (1, 0x00),
        (3, 0x03),
        (2, 0xC7),
        (4, 0x03),
    ] {
        // SAFETY: ring 0; COM2's registers belong to nothing else in the image (Hermit uses
        // COM1 only), and programming a UART touches no memory.
        unsafe { x86::io::outb(COM2 + offset, value) };
    }
}

/// Write `bytes` to COM2, waiting for the transmitter before each (LSR.THRE, bit 5).
#[cfg(feature = "trace")]
pub fn com2_write(bytes: &[u8]) {
    for &b in bytes {
        // Bounded: a UART that never drains (none fitted) must not hang the exit path.
        for _ in 0..10_000 {
            // SAFETY: ring 0; reading COM2's line status register has no side effects.
            if unsafe { x86::io::inb(COM2 + 5) } & 0x20 != 0 {
                break;
            }
        }
        // SAFETY: ring 0; only the trace logger writes COM2's transmit register.
        unsafe { x86::io::outb(COM2, b) };
    }
}

/// Disable interrupts on this CPU; returns whether they were enabled (for
/// [`interrupts_restore`]).
#[cfg(feature = "trace")]
pub fn interrupts_save_disable() -> bool {
    let flags: u64;
    // SAFETY: ring 0; reading RFLAGS and clearing IF touch no memory but the stack slot of
    // pushfq/pop, which the asm balances.
    unsafe { core::arch::asm!("pushfq", "pop {}", "cli", out(reg) flags, options(nomem)) };
    flags & (1 << 9) != 0
}

/// Re-enable interrupts if [`interrupts_save_disable`] found them enabled.
#[cfg(feature = "trace")]
pub fn interrupts_restore(enabled: bool) {
    if enabled {
        // SAFETY: ring 0; restores the interrupt flag the caller found set.
        unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
    }
}
