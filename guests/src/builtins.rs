//! Guest images built into Hermitage, generated at build time (`build.rs`, `build/guests.rs`).
//!
//! Each is a Multiboot 1 ELF32 executable with one PT_LOAD segment at 1 MiB, for
//! [`crate::multiboot::load`]: multiboot header (16 bytes), code (under 4 KiB, checked at build
//! time), read-only data (strings, GDT, IDT), and a 4 KiB BSS at 0x102000..0x103000 with the
//! variables and the stack, so a guest needs RAM up to 0x103000. The ELF also has section
//! headers (`.multiboot .text .rodata .bss`) and a symbol table, for `objdump -d`. Each guest sets up its
//! own GDT, IDT (vectors 0..31) and stack, writes to the 16550 at 0x3F8 polling LSR.THRE, and
//! stops the VM with a 32-bit `out` to port 0xF4 ([`abi::DEBUG_EXIT_PORT`]). Output lines end
//! with `\n` alone. The command line is read as space-separated words; `key=N` takes decimal
//! digits (a missing key means "not given"; `key=` alone means 0).
//!
//! Any guest that takes an exception it did not expect prints
//! `guest: unexpected exception <vector> error=0x<8 hex> eip=0x<8 hex>` and exits with
//! [`abi::EXIT_UNEXPECTED_EXCEPTION`] (2).
//!
//! # `hello`
//! ```text
//! Hello from a Hermitage guest!
//! cmdline: <the multiboot command line, as given>
//! ```
//! then exits with 0.
//!
//! # `exerciser`
//! Runs the checks named in [`EXERCISER_CHECKS`], in that order, printing one line each,
//! `PASS <name>` or `FAIL <name>: <detail>`, then `DONE pass=<N> fail=<M>`, and exits with 0 if
//! every check passed, 1 ([`abi::EXIT_CHECKS_FAILED`]) otherwise. The checks: `CPUID.1:ECX[31]`
//! (hypervisor) set; `CPUID.1:ECX[5]` (VMX) clear; `CPUID.80000001h:ECX[2]` (SVM) clear; vendor
//! GenuineIntel or AuthenticAMD; CPUID.0Ah:EAX = 0 (no PMU); RDMSR of IA32_PAT works; IA32_PAT
//! write/read-back of 0x0007010600070106 (the old value is restored); RDMSR of IA32_EFER and
//! IA32_APIC_BASE work; RDMSR and WRMSR of MSR 0x400000FF (a range the SDM reserves, never
//! implemented by processors) raise #GP; VMMCALL, VMCALL and VMRUN raise #UD; 8-, 16- and
//! 32-bit IN from port 0x510 read all ones; UART LSR (0x3FD) reads 0x60. An expected fault
//! resumes after the instruction (the handler jumps to a recorded address).
//!
//! # `resetter`
//! ```text
//! resetter: boot <N>
//! resetter: reset via cf9|kbd|triple-fault
//! ```
//! with N from `boot=N` (0 if absent) and the path chosen by N % 3: 0 writes 0x06 to port
//! 0xCF9, 1 writes 0xFE to port 0x64, 2 loads an empty IDT (limit 0) and executes UD2. If it is
//! still running after a short delay it prints `resetter: still alive` and exits with 3
//! ([`abi::EXIT_STILL_ALIVE`]).
//!
//! # `spinner`
//! Counts down 2^24 ([`abi::SPINNER_TICK_SHIFT`]) iterations of a `dec`/`jnz` loop, then prints
//! `spinner: tick <N>` (N = 1, 2, ...), forever. With `ticks=K` it exits with 0 after tick K
//! (at once for K = 0). It never halts or does I/O between ticks, so it shows whether the
//! hypervisor preempts and shares CPUs fairly.
//!
//! # `pmu`
//! The PMU probe of `hv::vpmu::probe`: reports the performance-monitoring unit it sees, folds
//! everything into one digest the host can compute from the same model, and leaves state behind
//! for a reset to clear:
//! ```text
//! pmu: boot <N>
//! pmu: cpuid 0xa eax=0x... ebx=0x... ecx=0x... edx=0x...   (zeros for a leaf not enumerated)
//! pmu: cpuid 0x80000001 eax=... ebx=... ecx=... edx=...
//! pmu: cpuid 0x80000022 eax=... ebx=... ecx=... edx=...
//! pmu: rdpmc 0 ok|fault
//! pmu: msr 0x<index> = 0x<high>:0x<low>      (one line per PMU MSR that exists)
//! pmu: present=<count> nonzero=<count>
//! pmu: digest 0x<fnv-1a>
//! pmu: reset via cf9|kbd|triple-fault | pmu: done
//! ```
//! The MSRs tried are both vendors' PMU registers ([`PMU_MSRS`]); one that raises #GP on RDMSR
//! does not exist and is not listed. After reporting them all it writes [`PMU_PATTERN`] to each
//! that exists and reads it back. Then, with `cycle=K`, it resets unless `boot=N` is the last
//! boot of a cycle of K (N % K == K - 1), where it prints `pmu: done` and exits with 0; without
//! `cycle=`, it is done at once. With `quiet=1` it prints only the boot, `rdpmc`, summary,
//! digest and reset lines. It resets through port 0xCF9, or with `path=1` through 0xCF9,
//! the keyboard controller and a triple fault by turns (N % 3). A hypervisor that rebuilds the
//! vPMU on reset shows the reset values (and the same digest) again on the next boot, never
//! the pattern.
//!
//! # `ticker`
//! The timer path of an OS without a local APIC: initialises the 8259A pair the way Linux does
//! (ICW1 0x11, vector bases 0x20/0x28, cascade on IR2, 8086 mode), checks that the master's
//! mask reads back, programs PIT channel 0 in mode 2 with `reload = 1193182 / hz` (`hz=N`,
//! default 1000), enables interrupts and halts until `ticks=K` (default 50) more IRQ 0s have
//! arrived after the first, sending a non-specific EOI for each. It time-stamps the first and
//! the last tick with RDTSC and compares the span with `K * reload / 1193182` seconds of a
//! `tsc_khz=T` TSC:
//! ```text
//! ticker: hz reload=<reload> ticks=<K>
//! ticker: ticks=<K> tsc=<measured> expected=<expected> spurious=<IRQ 7 count>
//! ticker: PASS|FAIL
//! ```
//! Exit 0 if the span is within `tolerance=P` percent (default 25) of the expectation, 1 otherwise (or when `tsc_khz` is
//! missing or the span does not fit 32 bits). Interrupt vectors 32..63 have stubs that count
//! arrivals (the runtime's `interrupts()` support).
//!
//! # `apic`
//! The local APIC as an OS drives it, through the x2APIC MSRs (`x2apic=1`; CPUID must offer
//! x2APIC) or the xAPIC page at 0xFEE00000: enables it (IA32_APIC_BASE EN, EXTD; SVR with
//! spurious vector 0x3F), measures the timer's rate against the TSC with a masked count read
//! twice, then checks a one-shot interrupt (not early, the count stops at 0), ten periodic
//! intervals (within `tolerance=P` percent, default 25, of ten times the initial count at that rate), a TSC-deadline interrupt
//! 5 ms after now (`tsc_khz=T`; at or after the deadline; only if CPUID offers the mode) and a
//! self IPI (x2APIC SELF IPI MSR, or ICR shorthand "self") arriving at once:
//! ```text
//! apic: mode <0|1> version 0x<version register>
//! apic: rate counts=<n> tsc=<m>
//! apic: one-shot after tsc=<measured> expected=<expected>
//! apic: periodic span tsc=<measured> expected=<expected>
//! apic: tsc-deadline late by tsc=<n>            (or: apic: tsc-deadline not offered)
//! apic: self ipi count=1
//! apic: PASS|FAIL
//! ```
//! Exit 0 iff every check passed.
//!
//! # `bench`
//! Times VM exit round trips with RDTSC (`scripts/bench`):
//! ```text
//! bench: start iters=<I> batches=<B>
//! bench: loop per-op median=<M> min=<A> max=<Z>
//! bench: cpuid per-op median=... min=... max=...
//! bench: floor per-op ...
//! bench: pio per-op ...
//! bench: msr per-op ...
//! bench: done
//! ```
//! then exits with 0. Each test runs a body of `iters=I` (default 1000) operations `batches=B`
//! times (default 9, at most 63) between two RDTSCs, the tests' batches interleaved (batch 1
//! of every test, then batch 2, ...) so that a slow stretch of the host affects all alike; each
//! line gives the median, minimum and maximum over the batches of TSC ticks per operation
//! (integer). The bodies: `loop` the bare loop (4
//! instructions per iteration), `cpuid` CPUID leaf 0 (5), `floor` CPUID leaf 0x400000FF, which
//! a hypervisor booted with `bench_floor` answers before its exit handler (5), `pio` an 8-bit IN
//! from port 0x510, which no device claims (3), `msr` RDMSR of IA32_PAT (4). Under QEMU
//! `-icount shift=0` the TSC advances one tick per instruction, so the same lines count
//! instructions per operation. With `idle=1` it prints `bench: idle` and halts with interrupts
//! off (for reset timing); with `forever=1` it prints `bench: forever` and executes CPUID
//! forever (exit-heavy load for scaling).
//!
//! # Adding a guest
//! Write its program as a `fn(&mut Asm) -> Result` in `build/guests.rs` (the runtime gives
//! `print`, `print_dec_eax`, `print_hex_eax`, `find_arg`, `guarded`, `exit`, named labels),
//! add it to `GUESTS` there with a one-line description, and document its output here.
//! `builtin("name")` then returns it; the tests in `tests/builtins.rs` load and decode every
//! entry of [`BUILTINS`]. An exerciser check is one more `(name, Probe)` line in `CHECKS`.

pub mod abi;

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));

/// `(name, description)` of every built-in guest.
pub const BUILTINS: &[(&str, &str)] = &{
    let mut table = [("", ""); IMAGES.len()];
    let mut i = 0;
    while i < IMAGES.len() {
        table[i] = (IMAGES[i].0, IMAGES[i].1);
        i += 1;
    }
    table
};

/// The image of built-in guest `name`, a Multiboot 1 ELF32 file.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    IMAGES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(_, _, image)| image)
}
