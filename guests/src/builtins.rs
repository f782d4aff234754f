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
//! 32-bit IN from port 0x520 (no device; fw_cfg is at 0x510) read all ones; UART LSR (0x3FD) reads 0x60. An expected fault
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
//! # `echo`
//! The 16550 as Linux's 8250 driver runs it, interrupt-driven: 115200 8N1, FCR 0xC7 (FIFOs on
//! and cleared, receive trigger 14), MCR 0x0B (DTR, RTS, OUT2, which gates the IRQ line), the
//! 8259A pair initialised as `ticker` does with only IRQ 4 (vector 0x24) unmasked, IER RDA
//! and, while bytes wait to go out, THRE. All output between `start` and `done` goes through
//! a 4 KiB transmit ring (at 0x200000) that the THRE interrupt drains, at most 16 bytes (one
//! FIFO) per interrupt, switching THRE off in IER when the ring is empty and on again (which
//! raises it at once while THR is empty) when bytes are queued. The handler serves IIR until
//! it reads "none pending": RDA and character timeout read RBR while LSR.DR and queue each byte
//! as its echo; line and modem status are read away. First the guest queues
//! [`ECHO_LONG_LEN`] bytes (32 lines of the 63 characters `'0' + column`, each ending in a
//! line feed) and a ready line, then echoes what it receives until a `q` has come and
//! everything queued is sent:
//! ```text
//! echo: start
//! 0123456789:;<=>?@ABC...lmn          (32 lines)
//! echo: ready
//! <the input, echoed, up to and including the q>
//! echo: done rda=<n> timeout=<n> thre=<n> other=<n> received=<bytes> sent=<bytes>
//! echo: PASS|FAIL
//! ```
//! (`done` starts on a line of its own.) Exit 0 iff sent = received + the long string and the
//! ready line, every received byte was queued, 16 * thre >= sent, and at least one RDA or
//! timeout interrupt came. Needs RAM up to 0x201000.
//!
//! # `rtc`
//! The MC146818 RTC through ports 0x70/0x71 (NMIs left enabled): reads register B, waits for
//! register A's UIP to clear, reads seconds, minutes, hours, day, month, year and the century
//! (register 0x32; a value outside 19..21 counts as 20) until the seconds read the same
//! twice, converts from BCD unless register B's DM bit is set (and from a 12-hour clock
//! unless its 24/12 bit is set), and checks the fields are plausible. Then it writes 0x5A and
//! 0xA5 to the shutdown status byte 0x0F, reads each back, and restores the old value. Then the
//! periodic interrupt: 8259As as `ticker` sets them up with IRQ 2 (cascade) and IRQ 8 (vector
//! 0x28) unmasked, register A = 0x20 | rate with `hz=N` (a power of two from 2 to 8192,
//! default 1024; rate = 16 - log2 N), register B PIE set, register C read; halts until
//! `ticks=K` (default 64) more interrupts than the first have come, each handled by reading
//! register C and EOIs to the slave then the master, and compares the span between the first
//! and the last with K / N seconds of a `tsc_khz=T` TSC:
//! ```text
//! rtc: register b=0x<register B>
//! rtc: date YYYY-MM-DD hh:mm:ss
//! rtc: cmos 0x0f ok|FAIL
//! rtc: periodic hz=<N> rate=<rate> ticks=<K>
//! rtc: ticks=<K> tsc=<measured> expected=<expected>
//! rtc: PASS|FAIL
//! ```
//! Exit 0 iff the date is plausible, the CMOS byte round-trips and the span is within
//! `tolerance=P` percent (default 25); 1 otherwise (also without `tsc_khz`, and at once after
//! `rtc: FAIL hz must be a power of two from 2 to 8192`).
//!
//! # `ioapic`
//! PIT IRQ 0 through the I/O APIC at 0xFEC00000 (IOREGSEL/IOWIN) to the local APIC
//! (`x2apic=1`: x2APIC MSRs, CPUID must offer it; else the xAPIC page at 0xFEE00000; enabled
//! as `apic` does, spurious vector 0x3F), both 8259As masked. Reads the version register
//! (the highest redirection entry must be at least 2, and the register not all ones), writes
//! pin 2's redirection entry (ISA IRQ 0 on a PC): destination = this CPU's APIC ID in the high
//! word, then vector 0x34, fixed, physical, edge, active high, unmasked, and checks it reads
//! back. Programs PIT channel 0 in mode 2 with `reload = 1193182 / hz` (`hz=N`, default 1000),
//! halts until `ticks=K` (default 50) more interrupts than the first have come (a local APIC
//! EOI for each), masks the pin again (the mask must read back) and compares the span as
//! `ticker` does:
//! ```text
//! ioapic: version 0x<register 1> entries=<n> apic id=<id> mode=<0|1>
//! ioapic: pin 2 redirection 0x<low word>
//! ioapic: pit reload=<reload> ticks=<K>
//! ioapic: ticks=<K> tsc=<measured> expected=<expected>
//! ioapic: level pin 8 remote-irr in service=<0|1> after eoi=<0|1> again after tsc=<n> period=<p>
//! ioapic: PASS|FAIL
//! ```
//! The `level` line only with `level=1`: a level-triggered case with the RTC's periodic
//! interrupt (IRQ 8, which a real MC146818 holds asserted until register C is read) on pin 8,
//! vector 0x38, level, active high, at 16 Hz. The first interrupt notes the entry's remote
//! IRR (must be 1 while in service) and is EOId *without* reading register C, so the I/O APIC
//! must deliver it again at once (within half a period, `p` = TSC ticks of one period); the
//! second reads register C; after it, with PIE off, remote IRR must read 0. Exit 0 iff the
//! entry read back, the span is within `tolerance=P` percent (default 25) of `tsc_khz=T` and
//! (with `level=1`) the level checks hold; 1 otherwise.
//!
//! # `smp`
//! `cpus=N` CPUs (1 to 16, default 1) on the local APIC (`x2apic=1`: x2APIC MSRs, else the
//! xAPIC page): the BSP masks the 8259As, enables its local APIC, copies a real-mode
//! trampoline to 0x8000 (DS = CS, a 32-bit LGDT of the guest's GDT, CR0.PE, a far jump to
//! 32-bit code) and sends INIT, then STARTUP with vector 0x08, to all but itself (ICR
//! shorthand), with PAUSE loops between, and a second STARTUP unless all N - 1 APs are
//! already up. Each AP loads the data segments, takes a 4 KiB stack at 0x210000 + 4 KiB *
//! its start order, loads the IDT, enables its local APIC (and x2APIC mode), prints its start
//! order and APIC ID, and adds 1 to a shared counter [`SMP_ADDS`] times with `lock add`, as
//! the BSP does too; then it idles with STI; HLT. When all are done the BSP checks the counter
//! (N * [`SMP_ADDS`]) and, with N > 1, plays [`SMP_ROUNDS`] rounds of IPI ping-pong with AP
//! 1: a fixed IPI with vector 0x35 to AP 1's APIC ID, whose handler answers with vector 0x36 to
//! the BSP's, which waits for it halted before the next round. Output is serialised by a
//! spinlock (XCHG), so lines never mix:
//! ```text
//! smp: bsp apic id=<id> cpus=<N> mode=<0|1>
//! smp: ap <1..N-1> apic id=<id>                (one per AP, in any order)
//! smp: aps up=<N-1>
//! smp: counter=<count> expected=<N * 100000>
//! smp: pingpong rounds=100 pings=<n> pongs=<n>
//! smp: PASS|FAIL
//! ```
//! (with one CPU only the first, the counter and the verdict lines). Exit 0 iff all APs came
//! up, the counter is exact and every ping and pong arrived once per round; 1 otherwise. The
//! APs wait for an IPI forever after; the BSP never times out on a lost pong (a hang is the
//! failure). Needs RAM up to 0x210000 + 4 KiB * N and the page at 0x8000.
//!
//! # `paging`
//! The guest-side paths that need the hypervisor to walk the guest's page tables (string I/O,
//! and the instruction fetch for exit decoding without NRIPS). First 32-bit paging (CR4.PSE):
//! a 4 MiB identity page, a 4 KiB page mapping linear 0x400000 to the data page at physical
//! 0x302000 (tables at 0x300000..0x307000), and the low 4 MiB again at linear 0x800000, where
//! the code then runs (so RIP is never the physical address): CPUID leaf 0x40000000 (EBX must
//! be "Herm"), output through the polled UART (port I/O), `rep outsb` of a line to COM1 from
//! linear 0x400000 and `rep insb` of 16 bytes from port 0x7E0, which no device claims, to
//! linear 0x400100; the bytes must read back as 0xFF through the identity mapping. Then paging
//! off, 4-level paging (CR4.PAE, EFER.LME, 2 MiB identity pages for the low 4 MiB, the same 4
//! KiB data page, the low 1 GiB again at 0xFFFF800000000000) and a far return into 64-bit code
//! that jumps to its own high alias and does the same CPUID, LSR read, `rep outsb` and `rep
//! insb` (64-bit addressing):
//! ```text
//! paging: start
//! paging: 32-bit paging on, running at the alias
//! paging: 32-bit cpuid ok
//! paging: 32-bit rep outsb through a 4 KiB page
//! paging: 32-bit rep insb 0xffffffff
//! paging: 32-bit PASS
//! paging: 64-bit rep outsb through a 4 KiB page
//! paging: 64-bit PASS
//! ```
//! Exit 0 iff both halves pass; 1 after `paging: 32-bit FAIL` or `paging: 64-bit FAIL`. Needs
//! 4 MiB of RAM.
//!
//! # `mmio`
//! Guest-physical addresses outside RAM, paging off: reads a dword at 0xE0000000 (no device
//! there: must be all ones), writes a dword and reads it back (still all ones: the write is
//! dropped), reads a byte with MOVZX (0xFF) and does a read-modify-write OR; then writes 1 to
//! the IOAPIC's IOREGSEL at 0xFEC00000 and reads IOWIN at 0xFEC00010: with a local APIC
//! (CPUID.1:EDX[9]) the version register must read 0x00170011, without one all ones:
//! ```text
//! mmio: start
//! mmio: read 0xffffffff
//! mmio: unclaimed page ok
//! mmio: ioapic version 0x00170011           (or: mmio: no local APIC, ioapic reads 0xffffffff)
//! mmio: PASS|FAIL
//! ```
//! Exit 0 iff all pass. The unclaimed page is read four times and written twice (the
//! hypervisor's `unhandled_mmio_reads`/`_writes` counters).
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
//! from port 0x520, which no device claims (3), `msr` RDMSR of IA32_PAT (4). Under QEMU
//! `-icount shift=0` the TSC advances one tick per instruction, so the same lines count
//! instructions per operation. With `idle=1` it prints `bench: idle` and halts with interrupts
//! off (for reset timing); with `forever=1` it prints `bench: forever` and executes CPUID
//! forever (exit-heavy load for scaling).
//!
//! # `devreset`
//! Device reset state, checked from inside the guest on every boot, then everything dirtied
//! and the VM reset through port 0xCF9, `cycles=K` times (default 10; the boot count is
//! `boot=N`). Each boot first reads, before printing anything: the 16550's LCR, IER, IIR,
//! MCR, LSR, MSR, SCR and (DLAB) divisor (0, 0, 0x01, 0, 0x60, 0xB0, 0, 12); both 8259As' IMR
//! (0xFF), IRR and ISR (0) and the ELCRs (0); each 8254 channel's read-back status and count
//! (0xB6, 0) and port 0x61 (gate 2 and speaker off, OUT2 high); RTC register B's PIE, AIE, UIE
//! and SQWE (clear) and register C (IRQF clear; PF too when register A selects no rate, UF and
//! AF too while SET stops updates); with a local APIC, IA32_APIC_BASE (0xFEE00900) and, with
//! x2APIC, in x2APIC mode: SVR 0x1FF, LINT0 0x700 (ExtINT) and LINT1 0x400 (NMI), the other
//! LVTs masked, TPR, PPR, timer counts, divide, ICR, ESR (after a write), ISR, TMR and IRR 0,
//! IA32_TSC_DEADLINE 0 — the virtual-wire state our platform resets to. Then, unless N = K,
//! it dirties: the 8259As initialised (bases 0x20/0x28), ELCR level bits set, an RTC periodic
//! interrupt (8192 Hz, PIE AIE UIE SQWE) and a PIT IRQ 0 (channel 0 mode 2, channels 1 and 2
//! programmed, gate 2 open) taken and left in service without EOI, ISR selected for reads,
//! RTC rate 0 and SET with PF latched; the x2APIC software enabled, LINT0 masked, its timer
//! periodic with one interrupt in service, TPR 0x20, an illegal self IPI (ESR, error LVT) and a
//! self IPI left in IRR; the UART at divisor 1, 8E1, FIFOs on, IER 0x0F, loopback with all
//! modem outputs, scratch 0xA5 and a byte received. Output:
//! ```text
//! devreset: boot <N> clean                      (every 100th boot)
//! devreset: boot <N> waits for PIC_RTC|PIC_PIT|APIC_TIMER   (with trace=1, before each wait)
//! devreset: PASS resets=<K> apic=<0|1>
//! ```
//! and exit 0 at boot K (after clearing SET and restoring RTC register A to 0x26); or, at the
//! first register that is not in its reset state,
//! `devreset: FAIL boot <N> <register> read=0x<value> expected=0x<value>` and exit 1.
//!
//! # `storm`
//! A misbehaving guest for robustness tests, in rounds (`rounds=K`: exit 0 after K rounds
//! with `storm: PASS`; else forever; `mode=M` runs only part M, 1-4, of each round):
//! 1. 20,000 times: non-specific, rotating and specific EOIs to both 8259As and an x2APIC
//!    EOI, with nothing in service;
//! 2. every timer at its shortest period with interrupts on and handlers that only EOI: PIT
//!    channel 0 mode 2 with count 2 (count 1 yields no edges), RTC periodic at 8192 Hz, APIC
//!    timer periodic with initial count 1 (divide 1), until 5,000 PIT, 300 RTC and 5,000 APIC
//!    interrupts came (the handler stops each source at its quota);
//! 3. bogus vectors: first the 8259As on vector bases 0x00 and 0x08 (IRQ 0 arrives on
//!    vector 0, the RTC's IRQ 8 on vector 8) through an IDT at 0x200000 with interrupt stubs
//!    on vectors 0-15, until 200 vector-0 and 50 vector-8 interrupts came; then (the 8259As
//!    masked: a stream of APIC interrupts keeps ExtINT from being taken) an x2APIC SELF IPI
//!    with vector 3, an ICR self IPI with vector 2 and the APIC timer one-shot on vector 6
//!    (20 us), all refused by the APIC (ESR, and its error LVT on vector 0x31), then 2^16
//!    loop iterations with interrupts on;
//! 4. 8-, 16- and 32-bit IN from every port below 0x1000, 16- and 32-bit OUT of junk to each
//!    but the debug-exit port and COM1, interrupts off.
//!
//! The x2APIC parts run when CPUID offers x2APIC. Output:
//! ```text
//! storm: start
//! storm: eoi done
//! storm: timers pit=<n> rtc=<n> apic=<n>
//! storm: bogus vector0=<n> vector8=<n> apic-errors=<n> esr=0x<ESR after the storm>
//! storm: round <R>
//! ```
//! Needs RAM up to 0x201000.
//!
//! # `wake`
//! HLT wake latency, for `scripts/bench`: for each timer, `iters=N` times (default 15, at
//! most 63) it arms the timer, halts with interrupts on, and its handler's first act is
//! RDTSC; a sample is handler TSC minus the deadline's TSC (negative ones count as `early`
//! and are recorded as 0). PIT: channel 0 mode 0 with count 1193 (about 1 ms), the deadline
//! count + 1 PIT clocks after a TSC read just before the write of the count's MSB (so the
//! exit of that write is in the sample). RTC: periodic at 64 Hz; the phase of its edges is
//! found first by polling register C with PIE off (the midpoint of the two polls around an
//! edge, taken only when they are at most 1/16 ms apart), then each sample sets PIE at an arbitrary moment and the deadline is the latest
//! edge before the handler (so samples are below one period, 15.6 ms, by construction). APIC
//! (x2APIC, when CPUID offers it): TSC-deadline mode 1 ms ahead (when offered), then one-shot
//! with an initial count of 1,000,000 (1 ms of the 1 GHz APIC clock) written right after a
//! TSC read. Needs `tsc_khz=T`:
//! ```text
//! wake: start iters=<N> tsc_khz=<T>
//! wake: pit median=<M> min=<A> max=<Z> early=<E>          (TSC ticks)
//! wake: rtc median=... min=... max=... early=...
//! wake: apic-deadline median=... min=... max=... early=... (or: wake: apic not offered)
//! wake: apic-oneshot median=... min=... max=... early=...
//! wake: done
//! ```
//! then exits with 0.
//!
//! # Adding a guest
//! Write its program as a `fn(&mut Asm) -> Result` in `build/guests.rs` (the runtime gives
//! `print`, `print_dec_eax`, `print_hex_eax`, `find_arg`, `guarded`, `exit`, named labels),
//! add it to `GUESTS` there with a one-line description, and document its output here.
//! `builtin("name")` then returns it; the tests in `tests/builtins.rs` load and decode every
//! entry of [`BUILTINS`]. An exerciser check is one more `(name, Probe)` line in `CHECKS`.

pub mod abi;

/// Length of the string the `echo` guest sends through THRE interrupts (`build/guests.rs`
/// has the same number).
pub const ECHO_LONG_LEN: u32 = 2048;
/// Locked increments of the shared counter per CPU in the `smp` guest.
pub const SMP_ADDS: u32 = 100_000;
/// IPI round trips between the BSP and AP 1 in the `smp` guest.
pub const SMP_ROUNDS: u32 = 100;

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
