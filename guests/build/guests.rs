//! The built-in guests' programs. Each is entered at `main` with a stack, its own GDT and IDT,
//! interrupts off and `[VAR_CMDLINE]` set, and ends through `exit` (or never).
//!
//! To add a guest: write a `fn(&mut Asm) -> Result` here, add it to `GUESTS`, and describe its
//! output in `src/builtins.rs`.

use iced_x86::code_asm::*;

use crate::asm::{Asm, Program, Result, layout};
use crate::guest_abi as gabi;

pub struct Guest {
    pub name: &'static str,
    pub description: &'static str,
    pub program: Program,
}

pub const GUESTS: &[Guest] = &[
    Guest {
        name: "hello",
        description: "prints a greeting and its command line, exits with 0",
        program: hello,
    },
    Guest {
        name: "exerciser",
        description: "checks the CPUID, MSR and I/O behaviour the hypervisor presents; PASS/FAIL lines, exit 0 iff all pass",
        program: exerciser,
    },
    Guest {
        name: "resetter",
        description: "prints its boot count (boot=N) and resets through 0xCF9, the keyboard controller or a triple fault by turns",
        program: resetter,
    },
    Guest {
        name: "spinner",
        description: "burns CPU, printing a tick every 2^24 iterations; forever, or until ticks=K",
        program: spinner,
    },
    Guest {
        name: "pmu",
        description: "reports the PMU it sees (CPUID leaves, every PMU MSR that exists and its value, RDPMC), dirties them, then resets through 0xCF9 in cycles of cycle=K boots",
        program: pmu,
    },
    Guest {
        name: "ticker",
        description: "programs the 8259A pair and PIT channel 0 (hz=N, default 1000), counts ticks=K (default 50) timer interrupts while halted and checks their span against the guest TSC (tsc_khz=T); exit 0 iff within tolerance=P percent (default 25)",
        program: ticker,
    },
    Guest {
        name: "apic",
        description: "the local APIC as an OS uses it (x2apic=1: through MSRs, else xAPIC MMIO at 0xFEE00000): timer rate against the TSC, one-shot, periodic and TSC-deadline (tsc_khz=T) modes, a self IPI; exit 0 iff all pass",
        program: apic,
    },
    Guest {
        name: "echo",
        description: "drives the 16550 by interrupts (IRQ 4 through the 8259A, FIFOs, OUT2) as Linux's 8250 driver does: sends a 2 KiB string through THRE interrupts, then echoes every byte received until a 'q'; exit 0 iff all was sent and echoed",
        program: echo,
    },
    Guest {
        name: "rtc",
        description: "reads the MC146818 date (printed YYYY-MM-DD hh:mm:ss), round-trips CMOS byte 0x0F, counts ticks=K (default 64) periodic interrupts at hz=N (default 1024) on IRQ 8 through the cascade against the TSC (tsc_khz=T, tolerance=P); exit 0 iff all pass",
        program: rtc,
    },
    Guest {
        name: "ioapic",
        description: "routes PIT IRQ 0 through I/O APIC pin 2 to the local APIC (x2apic=1: MSRs, else xAPIC MMIO), 8259As masked; counts ticks=K (default 50) at hz=N (default 1000) against the TSC (tsc_khz=T, tolerance=P); level=1 adds a level-triggered case (RTC IRQ 8 on pin 8, redelivered after an EOI while asserted); exit 0 iff all pass",
        program: ioapic,
    },
    Guest {
        name: "smp",
        description: "starts cpus=N (default 1) CPUs with INIT-SIPI-SIPI (x2apic=1: MSRs, else xAPIC MMIO), each announces its APIC ID and adds 100000 to a shared counter with LOCK; then 100 IPI round trips between the BSP and AP 1; exit 0 iff all pass",
        program: smp,
    },
    Guest {
        name: "paging",
        description: "turns on 32-bit paging (4 MiB PSE pages, a 4 KiB page, code run at an alias), then 4-level long mode (code at 0xFFFF800000000000 + physical); in each: CPUID, port I/O, REP OUTSB to COM1 and REP INSB from an unclaimed port through the page tables; exit 0 iff all pass",
        program: paging,
    },
    Guest {
        name: "mmio",
        description: "reads and writes an unclaimed MMIO page at 0xE0000000 (all ones, writes dropped), then reads the IOAPIC version register through IOREGSEL/IOWIN at 0xFEC00000 (all ones without a local APIC); exit 0 iff all pass",
        program: mmio,
    },
    Guest {
        name: "bench",
        description: "measures VM exit round trips (CPUID, CPUID of the floor leaf, port read, RDMSR) with RDTSC and prints median/min/max per operation; idle=1 halts at once, forever=1 runs CPUID exits forever",
        program: bench,
    },
    Guest {
        name: "devreset",
        description: "checks on every boot that the PIC, PIT, RTC, UART and (x2APIC) local APIC read as after reset, dirties them all and resets through 0xCF9; exit 0 after cycles=K resets (default 10), 1 at the first device not in its reset state",
        program: devreset,
    },
    Guest {
        name: "storm",
        description: "misbehaves round after round: EOI storms, every timer at its shortest period, vectors 0-15 from the 8259As and the local APIC, odd-width port accesses; forever, or exit 0 after rounds=K",
        program: storm,
    },
    Guest {
        name: "wake",
        description: "HLT wake latency: arms the PIT (mode 0), the RTC periodic interrupt and the x2APIC timer (TSC-deadline, one-shot), halts, and reports deadline-to-handler TSC ticks (median/min/max over iters=N, default 15) per source",
        program: wake,
    },
];

fn hello(asm: &mut Asm) -> Result {
    asm.print("Hello from a Hermitage guest!\n")?;
    asm.print("cmdline: ")?;
    asm.a.mov(esi, dword_ptr(layout::VAR_CMDLINE))?;
    asm.call("puts")?;
    asm.newline()?;
    asm.exit(gabi::EXIT_OK)
}

fn resetter(asm: &mut Asm) -> Result {
    asm.find_arg("boot=")?;
    asm.a.mov(ebx, eax)?;
    asm.print("resetter: boot ")?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.a.xor(edx, edx)?;
    asm.a.mov(ecx, 3u32)?;
    asm.a.div(ecx)?;
    asm.a.cmp(edx, 1)?;
    asm.jb("reset_cf9")?;
    asm.je("reset_kbd")?;
    asm.jmp("reset_triple_fault")?;

    // Reset control register, "hard reset" (ICH/PCH datasheets; QEMU piix/ich9).
    asm.here("reset_cf9")?;
    asm.print("resetter: reset via cf9\n")?;
    asm.a.mov(dx, 0xCF9u32)?;
    asm.a.mov(al, 0x06)?;
    asm.a.out(dx, al)?;
    asm.jmp("still_alive")?;

    // 8042 "pulse output port bit 0" resets the CPU. Its status port is not polled: the
    // hypervisor need not emulate reads of it.
    asm.here("reset_kbd")?;
    asm.print("resetter: reset via kbd\n")?;
    asm.a.mov(al, 0xFE)?;
    asm.a.out(0x64u32, al)?;
    asm.jmp("still_alive")?;

    // With an empty IDT every exception escalates: #UD -> #GP -> #DF -> shutdown.
    asm.here("reset_triple_fault")?;
    asm.print("resetter: reset via triple-fault\n")?;
    let empty = asm.data("empty_idtr", crate::asm::pseudo_descriptor(0, 0));
    asm.a.lidt(ptr(empty))?;
    asm.a.ud2()?;

    // A reset takes effect at the exit; give a slow one a moment anyway.
    asm.here("still_alive")?;
    asm.a.mov(ecx, 1u32 << 20)?;
    asm.here(".delay")?;
    asm.a.dec(ecx)?;
    asm.jnz(".delay")?;
    asm.print("resetter: still alive\n")?;
    asm.exit(gabi::EXIT_STILL_ALIVE)
}

fn spinner(asm: &mut Asm) -> Result {
    asm.find_arg("ticks=")?;
    // ebp = ticks to run, edi = 0 if limited, all ones if not.
    asm.a.sbb(edi, edi)?;
    asm.a.mov(ebp, eax)?;
    asm.a.xor(ebx, ebx)?;
    asm.a.test(edi, edi)?;
    asm.jnz("spin")?;
    asm.a.test(ebp, ebp)?;
    asm.jz("spinner_done")?;
    asm.here("spin")?;
    asm.a.mov(ecx, 1u32 << gabi::SPINNER_TICK_SHIFT)?;
    asm.here(".iteration")?;
    asm.a.dec(ecx)?;
    asm.jnz(".iteration")?;
    asm.a.inc(ebx)?;
    asm.print("spinner: tick ")?;
    asm.a.mov(eax, ebx)?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.a.test(edi, edi)?;
    asm.jnz("spin")?;
    asm.a.cmp(ebx, ebp)?;
    asm.jb("spin")?;
    asm.here("spinner_done")?;
    asm.exit(gabi::EXIT_OK)
}

/// A general register as CPUID leaves it.
#[derive(Clone, Copy)]
#[allow(dead_code, reason = "checks may name any of the four")]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    fn asm(self) -> AsmRegister32 {
        match self {
            Reg::Eax => eax,
            Reg::Ebx => ebx,
            Reg::Ecx => ecx,
            Reg::Edx => edx,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Reg::Eax => "EAX",
            Reg::Ebx => "EBX",
            Reg::Ecx => "ECX",
            Reg::Edx => "EDX",
        }
    }
}

#[derive(Clone, Copy)]
pub enum Width {
    Byte,
    Word,
    Dword,
}

/// What one exerciser check does and expects.
pub enum Probe {
    /// CPUID `leaf` (subleaf 0): bit `bit` of `reg` is `set`.
    CpuidBit {
        leaf: u32,
        reg: Reg,
        bit: u32,
        set: bool,
    },
    /// CPUID `leaf` (subleaf 0): `reg` == `value`.
    CpuidEq { leaf: u32, reg: Reg, value: u32 },
    /// CPUID 0's vendor string is one of these.
    CpuidVendor { vendors: &'static [&'static str] },
    /// RDMSR `msr` does not fault.
    RdmsrOk { msr: u32 },
    /// WRMSR `msr` with `value`, RDMSR gives it back (the old value is restored after).
    MsrRoundTrip { msr: u32, value: u64 },
    /// RDMSR `msr` raises exception `vector`.
    RdmsrFaults { msr: u32, vector: u32 },
    /// RDMSR `msr` works when CPUID.`leaf`:EDX\[`bit`\] enumerates the feature that owns it and
    /// raises #GP when it does not (an MSR of an absent feature does not exist).
    RdmsrIffCpuidEdx { msr: u32, leaf: u32, bit: u32 },
    /// WRMSR `msr` (with 0) raises exception `vector`.
    WrmsrFaults { msr: u32, vector: u32 },
    /// These instruction bytes raise exception `vector`.
    Faults { bytes: &'static [u8], vector: u32 },
    /// IN of `width` from `port` reads `value`.
    PortIn { port: u16, width: Width, value: u32 },
}

const GP: u32 = 13;
const UD: u32 = 6;
const IA32_PAT: u32 = 0x277;
const IA32_APIC_BASE: u32 = 0x1B;
const IA32_EFER: u32 = 0xC000_0080;
/// SDM Vol. 4, 2.1: 0x40000000-0x400000FF "will never be used" by processors (hypervisors
/// use it for synthetic MSRs; ours emulates none there).
const MSR_RESERVED: u32 = 0x4000_00FF;
/// Decoded by no device, here or in QEMU (fw_cfg is at 0x510-0x511 in both).
const PORT_UNEMULATED: u16 = 0x520;

/// The exerciser's checks, in order. Name them `area-what`; the name is the stable key in the
/// `PASS <name>` / `FAIL <name>: ...` lines and in `guests::builtins::EXERCISER_CHECKS`.
pub const CHECKS: &[(&str, Probe)] = &[
    (
        "cpuid-hypervisor-bit",
        Probe::CpuidBit {
            leaf: 1,
            reg: Reg::Ecx,
            bit: 31,
            set: true,
        },
    ),
    (
        "cpuid-vmx-hidden",
        Probe::CpuidBit {
            leaf: 1,
            reg: Reg::Ecx,
            bit: 5,
            set: false,
        },
    ),
    (
        "cpuid-svm-hidden",
        Probe::CpuidBit {
            leaf: 0x8000_0001,
            reg: Reg::Ecx,
            bit: 2,
            set: false,
        },
    ),
    (
        "cpuid-vendor",
        Probe::CpuidVendor {
            vendors: &["GenuineIntel", "AuthenticAMD"],
        },
    ),
    (
        "cpuid-pmu-leaf-zero",
        Probe::CpuidEq {
            leaf: 0xA,
            reg: Reg::Eax,
            value: 0,
        },
    ),
    ("msr-pat-read", Probe::RdmsrOk { msr: IA32_PAT }),
    // UC- WC UC WB in both halves: valid types, and not the reset value 0x0007040600070406.
    (
        "msr-pat-roundtrip",
        Probe::MsrRoundTrip {
            msr: IA32_PAT,
            value: 0x0007_0106_0007_0106,
        },
    ),
    ("msr-efer-read", Probe::RdmsrOk { msr: IA32_EFER }),
    (
        // Under Hermitage CPUID hides the APIC (no virtual APIC yet), so the MSR must #GP;
        // on bare QEMU the APIC is there and the MSR reads.
        "msr-apic-base-matches-cpuid",
        Probe::RdmsrIffCpuidEdx {
            msr: IA32_APIC_BASE,
            leaf: 1,
            bit: 9,
        },
    ),
    (
        "msr-unknown-rdmsr-gp",
        Probe::RdmsrFaults {
            msr: MSR_RESERVED,
            vector: GP,
        },
    ),
    (
        "msr-unknown-wrmsr-gp",
        Probe::WrmsrFaults {
            msr: MSR_RESERVED,
            vector: GP,
        },
    ),
    (
        "vmmcall-ud",
        Probe::Faults {
            bytes: &[0x0F, 0x01, 0xD9],
            vector: UD,
        },
    ),
    (
        "vmcall-ud",
        Probe::Faults {
            bytes: &[0x0F, 0x01, 0xC1],
            vector: UD,
        },
    ),
    (
        "vmrun-ud",
        Probe::Faults {
            bytes: &[0x0F, 0x01, 0xD8],
            vector: UD,
        },
    ),
    (
        "port-unemulated-byte",
        Probe::PortIn {
            port: PORT_UNEMULATED,
            width: Width::Byte,
            value: 0xFF,
        },
    ),
    (
        "port-unemulated-word",
        Probe::PortIn {
            port: PORT_UNEMULATED,
            width: Width::Word,
            value: 0xFFFF,
        },
    ),
    (
        "port-unemulated-dword",
        Probe::PortIn {
            port: PORT_UNEMULATED,
            width: Width::Dword,
            value: u32::MAX,
        },
    ),
    (
        "uart-lsr-idle",
        Probe::PortIn {
            port: gabi::UART_LSR,
            width: Width::Byte,
            value: gabi::UART_LSR_IDLE as u32,
        },
    ),
];

fn exerciser(asm: &mut Asm) -> Result {
    for (index, (name, probe)) in CHECKS.iter().enumerate() {
        let check = Check {
            name,
            pass: format!(".check{index}.pass"),
            next: format!(".check{index}.next"),
        };
        check.emit(asm, probe)?;
    }
    asm.print("DONE pass=")?;
    asm.a.mov(eax, dword_ptr(layout::VAR_PASS))?;
    asm.print_dec_eax()?;
    asm.print(" fail=")?;
    asm.a.mov(eax, dword_ptr(layout::VAR_FAIL))?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.a.cmp(dword_ptr(layout::VAR_FAIL), 0)?;
    asm.jne(".failed")?;
    asm.exit(gabi::EXIT_OK)?;
    asm.here(".failed")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;

    // report_pass / report_fail: esi = check name; count and print the line's start.
    for (routine, counter, before, after) in [
        ("report_pass", layout::VAR_PASS, "PASS ", "\n"),
        ("report_fail", layout::VAR_FAIL, "FAIL ", ": "),
    ] {
        asm.here(routine)?;
        asm.a.inc(dword_ptr(counter))?;
        asm.print(before)?;
        asm.call("puts")?;
        asm.print(after)?;
        asm.a.ret()?;
    }

    // report_vector: prints `[VAR_FAULT_VECTOR]` in decimal, or "none".
    asm.here("report_vector")?;
    asm.a.push(eax)?;
    asm.a.mov(eax, dword_ptr(layout::VAR_FAULT_VECTOR))?;
    asm.a.cmp(eax, layout::NO_FAULT)?;
    asm.je(".report_none")?;
    asm.print_dec_eax()?;
    asm.a.pop(eax)?;
    asm.a.ret()?;
    asm.here(".report_none")?;
    asm.print("none")?;
    asm.a.pop(eax)?;
    asm.a.ret()?;
    Ok(())
}

/// Code generation for one check: the probe jumps to `pass` when it holds and otherwise falls
/// into (or jumps to) failure reports, each of which prints its detail and jumps to `next`.
struct Check<'a> {
    name: &'a str,
    pass: String,
    next: String,
}

impl Check<'_> {
    fn emit(&self, asm: &mut Asm, probe: &Probe) -> Result {
        match *probe {
            Probe::CpuidBit {
                leaf,
                reg,
                bit,
                set,
            } => {
                cpuid(asm, leaf)?;
                asm.a.bt(reg.asm(), bit)?;
                if set {
                    asm.jc(&self.pass)?
                } else {
                    asm.jnc(&self.pass)?
                }
                self.fail(asm)?;
                let state = if set { "clear" } else { "set" };
                asm.print(&format!(
                    "CPUID.{leaf:#x}:{}[{bit}] is {state}, {}=",
                    reg.name(),
                    reg.name()
                ))?;
                asm.a.mov(eax, reg.asm())?;
                asm.print_hex_eax()?;
            }
            Probe::CpuidEq { leaf, reg, value } => {
                cpuid(asm, leaf)?;
                asm.a.cmp(reg.asm(), value)?;
                asm.je(&self.pass)?;
                self.fail(asm)?;
                asm.print(&format!("CPUID.{leaf:#x}:{}=", reg.name()))?;
                asm.a.mov(eax, reg.asm())?;
                asm.print_hex_eax()?;
                asm.print(&format!(", expected {value:#x}"))?;
            }
            Probe::CpuidVendor { vendors } => {
                cpuid(asm, 0)?;
                let text = layout::VAR_SCRATCH;
                for (i, reg) in [ebx, edx, ecx].into_iter().enumerate() {
                    asm.a.mov(dword_ptr(text + 4 * i as u32), reg)?;
                }
                asm.a.mov(byte_ptr(text + 12), 0u32)?;
                for (i, vendor) in vendors.iter().enumerate() {
                    let other = format!("{}.vendor{i}", self.next);
                    let words: Vec<u32> = vendor
                        .as_bytes()
                        .chunks(4)
                        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    for (reg, word) in [ebx, edx, ecx].into_iter().zip(words) {
                        asm.a.cmp(reg, word)?;
                        asm.jne(&other)?;
                    }
                    asm.jmp(&self.pass)?;
                    asm.here(&other)?;
                }
                self.fail(asm)?;
                asm.print("vendor \"")?;
                asm.a.push(esi)?;
                asm.a.mov(esi, text)?;
                asm.call("puts")?;
                asm.a.pop(esi)?;
                asm.print(&format!("\" is none of {}", vendors.join(", ")))?;
            }
            Probe::RdmsrOk { msr } => {
                asm.a.mov(ecx, msr)?;
                asm.guarded(|asm| Ok(asm.a.rdmsr()?))?;
                self.pass_if_no_fault(asm)?;
                self.fail(asm)?;
                asm.print(&format!("RDMSR {msr:#x} raised exception "))?;
                asm.call("report_vector")?;
            }
            Probe::MsrRoundTrip { msr, value } => {
                let saved = layout::VAR_SCRATCH;
                let (fault, mismatch) = (
                    format!("{}.fault", self.next),
                    format!("{}.mismatch", self.next),
                );
                asm.a.mov(ecx, msr)?;
                asm.guarded(|asm| Ok(asm.a.rdmsr()?))?;
                asm.a
                    .cmp(dword_ptr(layout::VAR_FAULT_VECTOR), layout::NO_FAULT)?;
                asm.jne(&fault)?;
                asm.a.mov(dword_ptr(saved), eax)?;
                asm.a.mov(dword_ptr(saved + 4), edx)?;
                asm.a.mov(eax, value as u32)?;
                asm.a.mov(edx, (value >> 32) as u32)?;
                asm.guarded(|asm| Ok(asm.a.wrmsr()?))?;
                asm.a
                    .cmp(dword_ptr(layout::VAR_FAULT_VECTOR), layout::NO_FAULT)?;
                asm.jne(&fault)?;
                asm.a.xor(eax, eax)?;
                asm.a.xor(edx, edx)?;
                asm.guarded(|asm| Ok(asm.a.rdmsr()?))?;
                asm.a
                    .cmp(dword_ptr(layout::VAR_FAULT_VECTOR), layout::NO_FAULT)?;
                asm.jne(&fault)?;
                asm.a.mov(ebx, eax)?;
                asm.a.mov(edi, edx)?;
                asm.a.mov(eax, dword_ptr(saved))?;
                asm.a.mov(edx, dword_ptr(saved + 4))?;
                asm.guarded(|asm| Ok(asm.a.wrmsr()?))?;
                asm.a.cmp(ebx, value as u32)?;
                asm.jne(&mismatch)?;
                asm.a.cmp(edi, (value >> 32) as u32)?;
                asm.je(&self.pass)?;
                asm.here(&mismatch)?;
                self.fail(asm)?;
                asm.print(&format!(
                    "wrote {:#010x}:{:#010x}, read ",
                    (value >> 32) as u32,
                    value as u32
                ))?;
                asm.a.mov(eax, edi)?;
                asm.print_hex_eax()?;
                asm.print(":")?;
                asm.a.mov(eax, ebx)?;
                asm.print_hex_eax()?;
                asm.jmp(&self.next)?;
                asm.here(&fault)?;
                self.fail(asm)?;
                asm.print(&format!("RDMSR/WRMSR {msr:#x} raised exception "))?;
                asm.call("report_vector")?;
            }
            Probe::RdmsrIffCpuidEdx { msr, leaf, bit } => {
                let absent = format!("{}.absent", self.next);
                cpuid(asm, leaf)?;
                asm.a.bt(edx, bit)?;
                asm.jnc(&absent)?;
                asm.a.mov(ecx, msr)?;
                asm.guarded(|asm| Ok(asm.a.rdmsr()?))?;
                self.pass_if_no_fault(asm)?;
                self.fail(asm)?;
                asm.print(&format!(
                    "CPUID.{leaf:#x}:EDX[{bit}] set but RDMSR {msr:#x} raised exception "
                ))?;
                asm.call("report_vector")?;
                asm.jmp(&self.next)?;
                asm.here(&absent)?;
                asm.a.mov(ecx, msr)?;
                asm.guarded(|asm| Ok(asm.a.rdmsr()?))?;
                self.expect_vector(
                    asm,
                    GP,
                    &format!("CPUID.{leaf:#x}:EDX[{bit}] clear, RDMSR {msr:#x}"),
                )?;
            }
            Probe::RdmsrFaults { msr, vector } => {
                asm.a.mov(ecx, msr)?;
                asm.guarded(|asm| Ok(asm.a.rdmsr()?))?;
                self.expect_vector(asm, vector, &format!("RDMSR {msr:#x}"))?;
            }
            Probe::WrmsrFaults { msr, vector } => {
                asm.a.mov(ecx, msr)?;
                asm.a.xor(eax, eax)?;
                asm.a.xor(edx, edx)?;
                asm.guarded(|asm| Ok(asm.a.wrmsr()?))?;
                self.expect_vector(asm, vector, &format!("WRMSR {msr:#x}"))?;
            }
            Probe::Faults { bytes, vector } => {
                asm.a.xor(eax, eax)?;
                asm.guarded(|asm| Ok(asm.a.db(bytes)?))?;
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                self.expect_vector(asm, vector, &hex.join(" "))?;
            }
            Probe::PortIn { port, width, value } => {
                asm.a.mov(dx, u32::from(port))?;
                let suffix = match width {
                    Width::Byte => {
                        asm.a.in_(al, dx)?;
                        asm.a.movzx(eax, al)?;
                        "b"
                    }
                    Width::Word => {
                        asm.a.in_(ax, dx)?;
                        asm.a.movzx(eax, ax)?;
                        "w"
                    }
                    Width::Dword => {
                        asm.a.in_(eax, dx)?;
                        "l"
                    }
                };
                asm.a.cmp(eax, value)?;
                asm.je(&self.pass)?;
                self.fail(asm)?;
                asm.print(&format!("in{suffix} {port:#x} read "))?;
                asm.print_hex_eax()?;
                asm.print(&format!(", expected {value:#x}"))?;
            }
        }
        asm.call("newline")?;
        asm.jmp(&self.next)?;
        asm.here(&self.pass)?;
        let name = asm.str(self.name);
        asm.a.mov(esi, name)?;
        asm.call("report_pass")?;
        asm.here(&self.next)
    }

    /// Starts a failure report: counts it and prints `FAIL <name>: `; registers survive.
    fn fail(&self, asm: &mut Asm) -> Result {
        let name = asm.str(self.name);
        asm.a.push(esi)?;
        asm.a.mov(esi, name)?;
        asm.call("report_fail")?;
        Ok(asm.a.pop(esi)?)
    }

    fn pass_if_no_fault(&self, asm: &mut Asm) -> Result {
        asm.a
            .cmp(dword_ptr(layout::VAR_FAULT_VECTOR), layout::NO_FAULT)?;
        asm.je(&self.pass)
    }

    fn expect_vector(&self, asm: &mut Asm, vector: u32, what: &str) -> Result {
        asm.a.cmp(dword_ptr(layout::VAR_FAULT_VECTOR), vector)?;
        asm.je(&self.pass)?;
        self.fail(asm)?;
        asm.print(&format!("{what}: expected exception {vector}, got "))?;
        asm.call("report_vector")
    }
}

fn cpuid(asm: &mut Asm, leaf: u32) -> Result {
    asm.a.mov(eax, leaf)?;
    asm.a.xor(ecx, ecx)?;
    Ok(asm.a.cpuid()?)
}

/// The PMU MSRs the `pmu` guest tries, in order: `hv::vpmu::probe::PROBE_MSRS`, the list the
/// host replays to compute the expected digest.
pub fn pmu_msrs() -> Vec<u32> {
    hv::vpmu::probe::PROBE_MSRS.to_vec()
}

/// The value the `pmu` guest writes to every PMU MSR it finds (`hv::vpmu::probe`).
pub const PMU_PATTERN: u32 = hv::vpmu::probe::PROBE_PATTERN;

/// The `pmu` guest: the probe described in `hv::vpmu::probe`, printing what it sees on the way
/// and the digest at the end, then a reset (or stop) as `cycle=` and `path=` say.
fn pmu(asm: &mut Asm) -> Result {
    use hv::vpmu::probe::{ABSENT, FNV_OFFSET, FNV_PRIME, REFUSED};
    const BOOT: u32 = layout::VAR_SCRATCH;
    const CYCLE: u32 = layout::VAR_SCRATCH + 4;
    const LO: u32 = layout::VAR_SCRATCH + 8;
    const HI: u32 = layout::VAR_SCRATCH + 12;
    const PRESENT: u32 = layout::VAR_SCRATCH + 16;
    const NONZERO: u32 = layout::VAR_SCRATCH + 20;
    const REGS: u32 = layout::VAR_SCRATCH + 24;
    const DIGEST: u32 = layout::VAR_SCRATCH + 40;
    const MAX_BASIC: u32 = layout::VAR_SCRATCH + 44;
    const MAX_EXT: u32 = layout::VAR_SCRATCH + 48;
    const ROTATE: u32 = layout::VAR_SCRATCH + 52;
    const QUIET: u32 = layout::VAR_SCRATCH + 56;

    asm.find_arg("boot=")?;
    asm.a.mov(dword_ptr(BOOT), eax)?;
    asm.find_arg("cycle=")?;
    asm.a.mov(dword_ptr(CYCLE), eax)?;
    // path=1: reset through 0xCF9, the keyboard controller and a triple fault by turns
    // (boot % 3); otherwise always 0xCF9.
    asm.find_arg("path=")?;
    asm.a.mov(dword_ptr(ROTATE), eax)?;
    // quiet=1: only the boot, digest and reset lines (the reboot stress wants many boots).
    asm.find_arg("quiet=")?;
    asm.a.mov(dword_ptr(QUIET), eax)?;
    asm.a.mov(dword_ptr(PRESENT), 0u32)?;
    asm.a.mov(dword_ptr(NONZERO), 0u32)?;
    asm.a.mov(dword_ptr(DIGEST), FNV_OFFSET)?;
    asm.print("pmu: boot ")?;
    asm.a.mov(eax, dword_ptr(BOOT))?;
    asm.print_dec_eax()?;
    asm.newline()?;
    cpuid(asm, 0)?;
    asm.a.mov(dword_ptr(MAX_BASIC), eax)?;
    cpuid(asm, 0x8000_0000)?;
    asm.a.mov(dword_ptr(MAX_EXT), eax)?;

    // CPUID: each leaf read only if enumerated (zeros otherwise), printed, folded (leaves 1
    // and 0x8000_0001 only for their PMU bit).
    for (leaf, max, fold_mask) in [
        (1u32, MAX_BASIC, Some((2usize, hv::vpmu::CPUID_1_ECX_PDCM))),
        (0xA, MAX_BASIC, None),
        (
            0x8000_0001,
            MAX_EXT,
            Some((2, hv::vpmu::CPUID_8000_0001_ECX_PERFCTR_EXT_CORE)),
        ),
        (0x8000_0022, MAX_EXT, None),
    ] {
        let (absent, read) = (format!("leaf{leaf:x}.absent"), format!("leaf{leaf:x}.read"));
        for i in 0..4 {
            asm.a.mov(dword_ptr(REGS + 4 * i), 0u32)?;
        }
        asm.a.cmp(dword_ptr(max), leaf)?;
        asm.jb(&absent)?;
        cpuid(asm, leaf)?;
        for (i, reg) in [eax, ebx, ecx, edx].into_iter().enumerate() {
            asm.a.mov(dword_ptr(REGS + 4 * i as u32), reg)?;
        }
        asm.here(&absent)?;
        asm.jmp(&read)?;
        asm.here(&read)?;
        match fold_mask {
            Some((reg, mask)) => {
                asm.a.mov(eax, dword_ptr(REGS + 4 * reg as u32))?;
                asm.a.and(eax, mask)?;
                asm.call("fnv_fold")?;
            }
            None => {
                for i in 0..4 {
                    asm.a.mov(eax, dword_ptr(REGS + 4 * i))?;
                    asm.call("fnv_fold")?;
                }
            }
        }
        if leaf == 1 {
            continue;
        }
        let printed = format!("leaf{leaf:x}.printed");
        asm.a.cmp(dword_ptr(QUIET), 0u32)?;
        asm.jne(&printed)?;
        asm.print(&format!("pmu: cpuid {leaf:#x}"))?;
        for (i, name) in ["eax", "ebx", "ecx", "edx"].into_iter().enumerate() {
            asm.print(&format!(" {name}="))?;
            asm.a.mov(eax, dword_ptr(REGS + 4 * i as u32))?;
            asm.print_hex_eax()?;
        }
        asm.newline()?;
        asm.here(&printed)?;
    }

    // RDPMC of counter 0: a value, or the #GP of a PMU without that counter.
    asm.a.xor(ecx, ecx)?;
    asm.guarded(|asm| Ok(asm.a.rdpmc()?))?;
    asm.a
        .cmp(dword_ptr(layout::VAR_FAULT_VECTOR), layout::NO_FAULT)?;
    asm.jne("rdpmc_fault")?;
    asm.a.xor(eax, eax)?;
    asm.call("fnv_fold")?;
    asm.print("pmu: rdpmc 0 ok\n")?;
    asm.jmp("scan")?;
    asm.here("rdpmc_fault")?;
    asm.a.mov(eax, 1u32)?;
    asm.call("fnv_fold")?;
    asm.print("pmu: rdpmc 0 fault\n")?;

    // Pass 1: every MSR of the table; report and fold the ones that exist.
    asm.here("scan")?;
    let mut table: Vec<u8> = pmu_msrs().iter().flat_map(|m| m.to_le_bytes()).collect();
    table.extend(0u32.to_le_bytes());
    let table = asm.data("pmu_msrs", table);
    asm.a.mov(edi, table)?;
    asm.here("next_msr")?;
    asm.a.mov(ecx, dword_ptr(edi))?;
    asm.a.test(ecx, ecx)?;
    asm.jz("scan_done")?;
    asm.guarded(|asm| Ok(asm.a.rdmsr()?))?;
    asm.call("fold_read")?;
    asm.a
        .cmp(dword_ptr(layout::VAR_FAULT_VECTOR), layout::NO_FAULT)?;
    asm.jne("msr_absent")?;
    asm.a.mov(dword_ptr(LO), eax)?;
    asm.a.mov(dword_ptr(HI), edx)?;
    asm.a.inc(dword_ptr(PRESENT))?;
    asm.a.or(eax, edx)?;
    asm.jz("msr_report")?;
    asm.a.inc(dword_ptr(NONZERO))?;
    asm.here("msr_report")?;
    asm.a.cmp(dword_ptr(QUIET), 0u32)?;
    asm.jne("msr_absent")?;
    asm.print("pmu: msr ")?;
    asm.a.mov(eax, ecx)?;
    asm.print_hex_eax()?;
    asm.print(" = ")?;
    asm.a.mov(eax, dword_ptr(HI))?;
    asm.print_hex_eax()?;
    asm.print(":")?;
    asm.a.mov(eax, dword_ptr(LO))?;
    asm.print_hex_eax()?;
    asm.newline()?;
    asm.here("msr_absent")?;
    asm.a.add(edi, 4)?;
    asm.jmp("next_msr")?;

    // Pass 2: write the pattern to each MSR that exists and read it back, folding both. This
    // leaves state behind that the next reset must clear. (A separate pass: AMD's legacy and
    // core-extension MSRs alias the same counters.)
    asm.here("scan_done")?;
    asm.a.mov(edi, table)?;
    asm.here("next_pattern")?;
    asm.a.mov(ecx, dword_ptr(edi))?;
    asm.a.test(ecx, ecx)?;
    asm.jz("pattern_done")?;
    asm.guarded(|asm| Ok(asm.a.rdmsr()?))?;
    asm.a
        .cmp(dword_ptr(layout::VAR_FAULT_VECTOR), layout::NO_FAULT)?;
    asm.jne("pattern_skip")?;
    asm.a.mov(eax, PMU_PATTERN)?;
    asm.a.xor(edx, edx)?;
    asm.guarded(|asm| Ok(asm.a.wrmsr()?))?;
    asm.a
        .cmp(dword_ptr(layout::VAR_FAULT_VECTOR), layout::NO_FAULT)?;
    asm.je("pattern_read")?;
    asm.a.mov(eax, REFUSED)?;
    asm.call("fnv_fold")?;
    asm.here("pattern_read")?;
    asm.guarded(|asm| Ok(asm.a.rdmsr()?))?;
    asm.call("fold_read")?;
    asm.here("pattern_skip")?;
    asm.a.add(edi, 4)?;
    asm.jmp("next_pattern")?;

    asm.here("pattern_done")?;
    asm.print("pmu: present=")?;
    asm.a.mov(eax, dword_ptr(PRESENT))?;
    asm.print_dec_eax()?;
    asm.print(" nonzero=")?;
    asm.a.mov(eax, dword_ptr(NONZERO))?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.print("pmu: digest ")?;
    asm.a.mov(eax, dword_ptr(DIGEST))?;
    asm.print_hex_eax()?;
    asm.newline()?;

    // With cycle=K, boots run in cycles of K: reset unless this is the last boot of a cycle
    // (boot % K == K - 1); without it, stop at once.
    asm.a.mov(ecx, dword_ptr(CYCLE))?;
    asm.a.test(ecx, ecx)?;
    asm.jz("pmu_done")?;
    asm.a.mov(eax, dword_ptr(BOOT))?;
    asm.a.xor(edx, edx)?;
    asm.a.div(ecx)?;
    asm.a.inc(edx)?;
    asm.a.cmp(edx, ecx)?;
    asm.jne("pmu_reset")?;
    asm.here("pmu_done")?;
    asm.print("pmu: done\n")?;
    asm.exit(gabi::EXIT_OK)?;

    asm.here("pmu_reset")?;
    asm.a.cmp(dword_ptr(ROTATE), 0u32)?;
    asm.je("pmu_reset_cf9")?;
    asm.a.mov(eax, dword_ptr(BOOT))?;
    asm.a.xor(edx, edx)?;
    asm.a.mov(ecx, 3u32)?;
    asm.a.div(ecx)?;
    asm.a.cmp(edx, 1)?;
    asm.jb("pmu_reset_cf9")?;
    asm.je("pmu_reset_kbd")?;
    asm.print("pmu: reset via triple-fault\n")?;
    let empty = asm.data("pmu_empty_idtr", crate::asm::pseudo_descriptor(0, 0));
    asm.a.lidt(ptr(empty))?;
    asm.a.ud2()?;
    asm.here("pmu_reset_kbd")?;
    asm.print("pmu: reset via kbd\n")?;
    asm.a.mov(al, 0xFE)?;
    asm.a.out(0x64u32, al)?;
    asm.jmp("pmu_still_alive")?;
    asm.here("pmu_reset_cf9")?;
    asm.print("pmu: reset via cf9\n")?;
    asm.a.mov(dx, 0xCF9u32)?;
    asm.a.mov(al, 0x06)?;
    asm.a.out(dx, al)?;
    asm.here("pmu_still_alive")?;
    asm.a.mov(ecx, 1u32 << 20)?;
    asm.here(".pmu_delay")?;
    asm.a.dec(ecx)?;
    asm.jnz(".pmu_delay")?;
    asm.print("pmu: still alive\n")?;
    asm.exit(gabi::EXIT_STILL_ALIVE)?;

    // fold_read: after a guarded RDMSR, fold ABSENT if it faulted, else EAX then EDX.
    // Preserves every register.
    asm.here("fold_read")?;
    asm.a.push(eax)?;
    asm.a
        .cmp(dword_ptr(layout::VAR_FAULT_VECTOR), layout::NO_FAULT)?;
    asm.je("fold_read.value")?;
    asm.a.mov(eax, ABSENT)?;
    asm.call("fnv_fold")?;
    asm.a.pop(eax)?;
    asm.a.ret()?;
    asm.here("fold_read.value")?;
    asm.call("fnv_fold")?;
    asm.a.mov(eax, edx)?;
    asm.call("fnv_fold")?;
    asm.a.pop(eax)?;
    asm.a.ret()?;

    // fnv_fold: [DIGEST] = FNV-1a of [DIGEST] and the four bytes of EAX, low byte first.
    // Preserves every register.
    asm.here("fnv_fold")?;
    asm.a.pushad()?;
    asm.a.mov(ebx, dword_ptr(DIGEST))?;
    asm.a.mov(ecx, 4u32)?;
    asm.here("fnv_fold.byte")?;
    asm.a.movzx(edx, al)?;
    asm.a.xor(ebx, edx)?;
    asm.a.imul_3(ebx, ebx, FNV_PRIME as i32)?;
    asm.a.shr(eax, 8)?;
    asm.a.dec(ecx)?;
    asm.jnz("fnv_fold.byte")?;
    asm.a.mov(dword_ptr(DIGEST), ebx)?;
    asm.a.popad()?;
    Ok(asm.a.ret()?)
}

/// The leaf `bench` measures the exit floor with: with `bench_floor` on the kernel command line
/// the hypervisor answers it with zeros before any exit handler (kernel `bench.rs`).
pub const BENCH_FLOOR_LEAF: u32 = 0x4000_00FF;

/// A port no device answers (reads all ones), for the port I/O round trip.
const BENCH_PORT: u32 = 0x520;

fn bench(asm: &mut Asm) -> Result {
    const ITERS: u32 = layout::VAR_SCRATCH;
    const BATCHES: u32 = layout::VAR_SCRATCH + 4;
    const T0: u32 = layout::VAR_SCRATCH + 8;
    /// Ticks per operation of each batch (up to 63 batches), one array per test, sorted
    /// by `report`.
    const SAMPLES: u32 = layout::BSS + 0x100;
    const SAMPLES_STRIDE: u32 = 0x100;
    const MAX_BATCHES: u32 = 63;

    asm.find_arg("idle=")?;
    asm.jc("bench_args")?;
    asm.print("bench: idle\n")?;
    asm.here("bench_idle")?;
    asm.a.cli()?;
    asm.a.hlt()?;
    asm.jmp("bench_idle")?;

    asm.here("bench_args")?;
    asm.find_arg("forever=")?;
    asm.jc("bench_measure")?;
    asm.print("bench: forever\n")?;
    asm.here("bench_forever")?;
    asm.a.xor(eax, eax)?;
    asm.a.xor(ecx, ecx)?;
    asm.a.cpuid()?;
    asm.jmp("bench_forever")?;

    asm.here("bench_measure")?;
    asm.find_arg("iters=")?;
    asm.jnc("bench_have_iters")?;
    asm.a.mov(eax, 1000u32)?;
    asm.here("bench_have_iters")?;
    asm.a.test(eax, eax)?;
    asm.jnz("bench_iters_ok")?;
    asm.a.inc(eax)?;
    asm.here("bench_iters_ok")?;
    asm.a.mov(dword_ptr(ITERS), eax)?;
    asm.find_arg("batches=")?;
    asm.jnc("bench_have_batches")?;
    asm.a.mov(eax, 9u32)?;
    asm.here("bench_have_batches")?;
    asm.a.test(eax, eax)?;
    asm.jnz("bench_batches_nonzero")?;
    asm.a.inc(eax)?;
    asm.here("bench_batches_nonzero")?;
    asm.a.cmp(eax, MAX_BATCHES)?;
    asm.jb("bench_batches_ok")?;
    asm.a.mov(eax, MAX_BATCHES)?;
    asm.here("bench_batches_ok")?;
    asm.a.mov(dword_ptr(BATCHES), eax)?;
    asm.print("bench: start iters=")?;
    asm.a.mov(eax, dword_ptr(ITERS))?;
    asm.print_dec_eax()?;
    asm.print(" batches=")?;
    asm.a.mov(eax, dword_ptr(BATCHES))?;
    asm.print_dec_eax()?;
    asm.newline()?;

    // Batches interleave the tests (batch i of each test, then batch i+1 of each), so that a
    // slow stretch of the host hits every test alike rather than one of them.
    const TESTS: [(&str, &str); 5] = [
        ("loop", "body_loop"),
        ("cpuid", "body_cpuid"),
        ("floor", "body_floor"),
        ("pio", "body_pio"),
        ("msr", "body_msr"),
    ];
    asm.a.xor(ebp, ebp)?;
    asm.here("bench_batch")?;
    for (i, (_, body)) in TESTS.iter().enumerate() {
        let samples = SAMPLES + i as u32 * SAMPLES_STRIDE;
        asm.a.rdtsc()?;
        asm.a.mov(dword_ptr(T0), eax)?;
        asm.call(body)?;
        asm.a.rdtsc()?;
        asm.a.sub(eax, dword_ptr(T0))?;
        asm.a.xor(edx, edx)?;
        asm.a.div(dword_ptr(ITERS))?;
        asm.a.mov(dword_ptr(ebp * 4 + samples), eax)?;
    }
    asm.a.inc(ebp)?;
    asm.a.cmp(ebp, dword_ptr(BATCHES))?;
    asm.jb("bench_batch")?;
    for (i, (name, _)) in TESTS.iter().enumerate() {
        asm.print(&format!("bench: {name} per-op"))?;
        asm.a.mov(ebx, SAMPLES + i as u32 * SAMPLES_STRIDE)?;
        asm.call("report")?;
    }
    asm.print("bench: done\n")?;
    asm.exit(gabi::EXIT_OK)?;

    // report: ebx = a test's [BATCHES] samples (TSC ticks per operation of each batch):
    // sorts them, prints " median=M min=A max=B\n". Under QEMU -icount shift=0 a TSC tick is
    // one instruction, so the same lines count instructions per operation.
    asm.here("report")?;
    asm.a.mov(esi, 1u32)?;
    asm.here("sort_outer")?;
    asm.a.cmp(esi, dword_ptr(BATCHES))?;
    asm.jnc("sort_done")?;
    asm.a.mov(eax, dword_ptr(ebx + esi * 4))?;
    asm.a.mov(edi, esi)?;
    asm.here("sort_inner")?;
    asm.a.test(edi, edi)?;
    asm.jz("sort_place")?;
    asm.a.mov(edx, dword_ptr(ebx + edi * 4 - 4))?;
    asm.a.cmp(eax, edx)?;
    asm.jnc("sort_place")?;
    asm.a.mov(dword_ptr(ebx + edi * 4), edx)?;
    asm.a.dec(edi)?;
    asm.jmp("sort_inner")?;
    asm.here("sort_place")?;
    asm.a.mov(dword_ptr(ebx + edi * 4), eax)?;
    asm.a.inc(esi)?;
    asm.jmp("sort_outer")?;
    asm.here("sort_done")?;
    asm.print(" median=")?;
    asm.a.mov(esi, dword_ptr(BATCHES))?;
    asm.a.shr(esi, 1)?;
    asm.a.mov(eax, dword_ptr(ebx + esi * 4))?;
    asm.print_dec_eax()?;
    asm.print(" min=")?;
    asm.a.mov(eax, dword_ptr(ebx))?;
    asm.print_dec_eax()?;
    asm.print(" max=")?;
    asm.a.mov(esi, dword_ptr(BATCHES))?;
    asm.a.mov(eax, dword_ptr(ebx + esi * 4 - 4))?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.a.ret()?;

    // The bodies: [ITERS] iterations each; they keep ebp. Guest instructions per
    // iteration (for the icount method): loop 4, cpuid 5, floor 5, pio 3, msr 4.
    asm.here("body_loop")?;
    asm.a.mov(edi, dword_ptr(ITERS))?;
    asm.here("body_loop_next")?;
    asm.a.xor(eax, eax)?;
    asm.a.xor(ecx, ecx)?;
    asm.a.dec(edi)?;
    asm.jnz("body_loop_next")?;
    asm.a.ret()?;
    for (body, leaf) in [("body_cpuid", 0u32), ("body_floor", BENCH_FLOOR_LEAF)] {
        asm.here(body)?;
        asm.a.push(ebx)?;
        asm.a.mov(edi, dword_ptr(ITERS))?;
        let next = format!("{body}_next");
        asm.here(&next)?;
        asm.a.mov(eax, leaf)?;
        asm.a.xor(ecx, ecx)?;
        asm.a.cpuid()?;
        asm.a.dec(edi)?;
        asm.jnz(&next)?;
        asm.a.pop(ebx)?;
        asm.a.ret()?;
    }
    asm.here("body_pio")?;
    asm.a.mov(edi, dword_ptr(ITERS))?;
    asm.a.mov(dx, BENCH_PORT)?;
    asm.here("body_pio_next")?;
    asm.a.in_(al, dx)?;
    asm.a.dec(edi)?;
    asm.jnz("body_pio_next")?;
    asm.a.ret()?;
    asm.here("body_msr")?;
    asm.a.mov(edi, dword_ptr(ITERS))?;
    asm.here("body_msr_next")?;
    asm.a.mov(ecx, IA32_PAT)?;
    asm.a.rdmsr()?;
    asm.a.dec(edi)?;
    asm.jnz("body_msr_next")?;
    Ok(asm.a.ret()?)
}

/// `tolerance_of`: eax = an expected span -> eax = the deviation the guest accepts,
/// `span * tolerance / 100` with `tolerance=P` from the command line (default 25). Clobbers
/// nothing else.
fn tolerance_routine(asm: &mut Asm) -> Result {
    asm.here("tolerance_of")?;
    asm.a.push(ebx)?;
    asm.a.push(ecx)?;
    asm.a.push(edx)?;
    asm.a.push(esi)?;
    asm.a.push(edi)?;
    asm.a.mov(ebx, eax)?;
    asm.find_arg("tolerance=")?;
    asm.jnc("tolerance_given")?;
    asm.a.mov(eax, 25u32)?;
    asm.here("tolerance_given")?;
    asm.a.mul(ebx)?;
    asm.a.mov(ecx, 100u32)?;
    asm.a.cmp(edx, ecx)?;
    asm.jb("tolerance_div")?;
    asm.a.mov(eax, u32::MAX)?;
    asm.jmp("tolerance_done")?;
    asm.here("tolerance_div")?;
    asm.a.div(ecx)?;
    asm.here("tolerance_done")?;
    asm.a.pop(edi)?;
    asm.a.pop(esi)?;
    asm.a.pop(edx)?;
    asm.a.pop(ecx)?;
    asm.a.pop(ebx)?;
    Ok(asm.a.ret()?)
}

/// The PIT's input clock (Intel 8254 datasheet; every PC since the 5150).
const PIT_HZ: u32 = 1_193_182;

/// `ticker`: the legacy timer path an OS without a local APIC uses (PIT channel 0 in rate
/// generator mode on IRQ 0 through the master 8259A), with HLT between ticks.
fn ticker(asm: &mut Asm) -> Result {
    const RELOAD: u32 = layout::VAR_SCRATCH;
    const TICKS: u32 = layout::VAR_SCRATCH + 4;
    const TSC_KHZ: u32 = layout::VAR_SCRATCH + 8;
    const T0: u32 = layout::BSS + 0x40;
    const T1: u32 = layout::BSS + 0x48;
    const VECTOR_BASE: u32 = 0x20;
    const COUNT_IRQ0: u32 = layout::VAR_IRQ_COUNTS;
    const COUNT_IRQ7: u32 = layout::VAR_IRQ_COUNTS + 4 * 7;

    asm.interrupts();
    let hook = asm.addr("ticker_hook");
    asm.a.mov(dword_ptr(layout::VAR_IRQ_HOOK), hook)?;
    asm.find_arg("tsc_khz=")?;
    asm.a.mov(dword_ptr(TSC_KHZ), eax)?;
    asm.find_arg("hz=")?;
    asm.jnc("ticker_have_hz")?;
    asm.a.mov(eax, 1000u32)?;
    asm.here("ticker_have_hz")?;
    asm.a.mov(ebx, eax)?;
    asm.a.mov(eax, PIT_HZ)?;
    asm.a.xor(edx, edx)?;
    asm.a.div(ebx)?;
    asm.a.mov(dword_ptr(RELOAD), eax)?;
    asm.find_arg("ticks=")?;
    asm.jnc("ticker_have_ticks")?;
    asm.a.mov(eax, 50u32)?;
    asm.here("ticker_have_ticks")?;
    asm.a.mov(dword_ptr(TICKS), eax)?;

    // ICW1 (edge, cascade, ICW4), ICW2 (vector base), ICW3 (slave on IR2 / slave ID 2), ICW4
    // (8086 mode): Linux's init_8259A with its own bases.
    for (port, value) in [
        (0x20u32, 0x11u32),
        (0x21, VECTOR_BASE),
        (0x21, 0x04),
        (0x21, 0x01),
        (0xA0, 0x11),
        (0xA1, VECTOR_BASE + 8),
        (0xA1, 0x02),
        (0xA1, 0x01),
        (0x21, 0xFE),
        (0xA1, 0xFF),
    ] {
        asm.a.mov(al, value)?;
        asm.a.out(port, al)?;
    }
    // The mask must read back (Linux's probe_8259A), else there is no PIC.
    asm.a.in_(al, 0x21u32)?;
    asm.a.cmp(al, 0xFE)?;
    asm.je("ticker_pic_ok")?;
    asm.print("ticker: FAIL no 8259A (mask did not read back)\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;
    asm.here("ticker_pic_ok")?;

    asm.print("ticker: hz reload=")?;
    asm.a.mov(eax, dword_ptr(RELOAD))?;
    asm.print_dec_eax()?;
    asm.print(" ticks=")?;
    asm.a.mov(eax, dword_ptr(TICKS))?;
    asm.print_dec_eax()?;
    asm.newline()?;
    // Channel 0, lobyte/hibyte, mode 2 (rate generator), binary.
    asm.a.mov(al, 0x34)?;
    asm.a.out(0x43u32, al)?;
    asm.a.mov(eax, dword_ptr(RELOAD))?;
    asm.a.out(0x40u32, al)?;
    asm.a.mov(al, ah)?;
    asm.a.out(0x40u32, al)?;

    // Sleep until tick K+1; the hook time-stamps ticks 1 and K+1.
    // Check with interrupts off, then STI; HLT (atomic through the STI shadow).
    asm.here("ticker_wait")?;
    asm.a.cli()?;
    asm.a.mov(eax, dword_ptr(TICKS))?;
    asm.a.inc(eax)?;
    asm.a.cmp(dword_ptr(COUNT_IRQ0), eax)?;
    asm.jae("ticker_waited")?;
    asm.a.sti()?;
    asm.a.hlt()?;
    asm.jmp("ticker_wait")?;
    asm.here("ticker_waited")?;
    asm.a.mov(al, 0xFF)?;
    asm.a.out(0x21u32, al)?;

    // expected = ticks * reload * tsc_khz * 1000 / PIT_HZ (the span of K periods in TSC ticks).
    asm.a.mov(eax, dword_ptr(TICKS))?;
    asm.a.mul(dword_ptr(RELOAD))?;
    asm.a.mul(dword_ptr(TSC_KHZ))?;
    asm.a.mov(esi, edx)?;
    asm.a.mov(ecx, 1000u32)?;
    asm.a.mul(ecx)?;
    asm.a.imul_3(esi, esi, 1000)?;
    asm.a.add(edx, esi)?;
    asm.a.mov(ecx, PIT_HZ)?;
    asm.a.cmp(edx, ecx)?;
    asm.jb("ticker_div_ok")?;
    asm.print("ticker: FAIL span too long to check\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;
    asm.here("ticker_div_ok")?;
    asm.a.div(ecx)?;
    asm.a.mov(edi, eax)?; // edi = expected
    // ebx = measured span (64-bit, must fit 32 bits).
    asm.a.mov(eax, dword_ptr(T1))?;
    asm.a.mov(edx, dword_ptr(T1 + 4))?;
    asm.a.sub(eax, dword_ptr(T0))?;
    asm.a.sbb(edx, dword_ptr(T0 + 4))?;
    asm.a.mov(ebx, eax)?;
    asm.print("ticker: ticks=")?;
    asm.a.mov(eax, dword_ptr(COUNT_IRQ0))?;
    asm.a.dec(eax)?;
    asm.print_dec_eax()?;
    asm.print(" tsc=")?;
    asm.a.mov(eax, ebx)?;
    asm.print_dec_eax()?;
    asm.print(" expected=")?;
    asm.a.mov(eax, edi)?;
    asm.print_dec_eax()?;
    asm.print(" spurious=")?;
    asm.a.mov(eax, dword_ptr(COUNT_IRQ7))?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.a.test(edx, edx)?;
    asm.jnz("ticker_fail")?;
    asm.a.cmp(dword_ptr(TSC_KHZ), 0)?;
    asm.je("ticker_fail")?;
    // |measured - expected| <= expected * tolerance / 100
    asm.a.mov(eax, edi)?;
    asm.call("tolerance_of")?;
    asm.a.mov(ecx, eax)?;
    asm.a.mov(eax, ebx)?;
    asm.a.sub(eax, edi)?;
    asm.jnc("ticker_abs")?;
    asm.a.neg(eax)?;
    asm.here("ticker_abs")?;
    asm.a.cmp(eax, ecx)?;
    asm.ja("ticker_fail")?;
    asm.print("ticker: PASS\n")?;
    asm.exit(gabi::EXIT_OK)?;
    asm.here("ticker_fail")?;
    asm.print("ticker: FAIL\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;

    // The interrupt hook: eax = vector. Time-stamp ticks 1 and K+1, EOI the master.
    asm.here("ticker_hook")?;
    asm.a.cmp(eax, VECTOR_BASE)?;
    asm.jne("ticker_hook_eoi")?;
    asm.a.mov(ecx, dword_ptr(COUNT_IRQ0))?;
    asm.a.cmp(ecx, 1)?;
    asm.jne("ticker_hook_last")?;
    asm.a.rdtsc()?;
    asm.a.mov(dword_ptr(T0), eax)?;
    asm.a.mov(dword_ptr(T0 + 4), edx)?;
    asm.jmp("ticker_hook_eoi")?;
    asm.here("ticker_hook_last")?;
    asm.a.mov(eax, dword_ptr(TICKS))?;
    asm.a.inc(eax)?;
    asm.a.cmp(ecx, eax)?;
    asm.jne("ticker_hook_eoi")?;
    asm.a.rdtsc()?;
    asm.a.mov(dword_ptr(T1), eax)?;
    asm.a.mov(dword_ptr(T1 + 4), edx)?;
    asm.here("ticker_hook_eoi")?;
    // Non-specific EOI (OCW2 0x20); a spurious IRQ 7 gets none (it was never in service).
    asm.a.cmp(dword_ptr(esp + 32 + 4), VECTOR_BASE + 7)?;
    asm.je("ticker_hook_done")?;
    asm.a.mov(al, 0x20)?;
    asm.a.out(0x20u32, al)?;
    asm.here("ticker_hook_done")?;
    asm.a.ret()?;
    tolerance_routine(asm)
}

/// `apic`: the local APIC timer in its three modes and a self IPI, through x2APIC MSRs
/// (`x2apic=1`) or the xAPIC page (SDM vol. 3A chapter 11).
fn apic(asm: &mut Asm) -> Result {
    const X2: u32 = layout::VAR_SCRATCH;
    const TSC_KHZ: u32 = layout::VAR_SCRATCH + 4;
    const DT: u32 = layout::VAR_SCRATCH + 8;
    const DC: u32 = layout::VAR_SCRATCH + 12;
    const LAST: u32 = layout::BSS + 0x40;
    const T0: u32 = layout::BSS + 0x48;
    const FAILS: u32 = layout::BSS + 0x4C;
    const TIMER: u32 = 0x30;
    const IPI: u32 = 0x31;
    const SPURIOUS: u32 = 0x3F;
    const COUNT_TIMER: u32 = layout::VAR_IRQ_COUNTS + 4 * (TIMER - 32);
    const COUNT_IPI: u32 = layout::VAR_IRQ_COUNTS + 4 * (IPI - 32);
    const INITIAL: u32 = 0x20_0000;
    const PERIODS: u32 = 10;
    const XAPIC_BASE: u32 = 0xFEE0_0000;
    // Register offsets in the xAPIC page; the x2APIC MSR is 0x800 + offset / 16.
    const SVR: u32 = 0xF0;
    const EOI: u32 = 0xB0;
    const VERSION: u32 = 0x30;
    const ICR_LOW: u32 = 0x300;
    const LVT_TIMER: u32 = 0x320;
    const TIMER_INITIAL: u32 = 0x380;
    const TIMER_CURRENT: u32 = 0x390;
    const TIMER_DIVIDE: u32 = 0x3E0;
    const IA32_APIC_BASE: u32 = 0x1B;
    const IA32_TSC_DEADLINE: u32 = 0x6E0;

    asm.interrupts();
    let hook = asm.addr("apic_hook");
    asm.a.mov(dword_ptr(layout::VAR_IRQ_HOOK), hook)?;
    asm.find_arg("tsc_khz=")?;
    asm.a.mov(dword_ptr(TSC_KHZ), eax)?;
    asm.find_arg("x2apic=")?;
    asm.a.mov(dword_ptr(X2), eax)?;
    cpuid(asm, 1)?;
    asm.a.test(edx, 1u32 << 9)?;
    asm.jnz("apic_present")?;
    asm.print("apic: FAIL no local APIC in CPUID\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;
    asm.here("apic_present")?;
    asm.a.cmp(dword_ptr(X2), 0)?;
    asm.je("apic_mode_ok")?;
    asm.a.test(ecx, 1u32 << 21)?;
    asm.jnz("apic_mode_ok")?;
    asm.print("apic: FAIL no x2APIC in CPUID\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;
    asm.here("apic_mode_ok")?;
    // IA32_APIC_BASE: EN (bit 11), and EXTD (bit 10) for x2APIC mode.
    asm.a.mov(ecx, IA32_APIC_BASE)?;
    asm.a.rdmsr()?;
    asm.a.or(eax, 1 << 11)?;
    asm.a.cmp(dword_ptr(X2), 0)?;
    asm.je("apic_base_set")?;
    asm.a.or(eax, 1 << 10)?;
    asm.here("apic_base_set")?;
    asm.a.wrmsr()?;
    asm.a.mov(ecx, SVR)?;
    asm.a.mov(eax, 0x100 | SPURIOUS)?;
    asm.call("apic_wr")?;
    asm.a.mov(ecx, VERSION)?;
    asm.call("apic_rd")?;
    asm.print("apic: mode ")?;
    asm.a.push(eax)?;
    asm.a.mov(eax, dword_ptr(X2))?;
    asm.print_dec_eax()?;
    asm.print(" version ")?;
    asm.a.pop(eax)?;
    asm.print_hex_eax()?;
    asm.newline()?;
    asm.a.mov(ecx, TIMER_DIVIDE)?;
    asm.a.mov(eax, 0xBu32)?; // divide by 1
    asm.call("apic_wr")?;

    // Rate: a masked one-shot count read twice across a busy loop, against the TSC.
    asm.a.mov(ecx, LVT_TIMER)?;
    asm.a.mov(eax, (1u32 << 16) | TIMER)?;
    asm.call("apic_wr")?;
    asm.a.mov(ecx, TIMER_INITIAL)?;
    asm.a.mov(eax, u32::MAX)?;
    asm.call("apic_wr")?;
    asm.a.mov(ecx, TIMER_CURRENT)?;
    asm.call("apic_rd")?;
    asm.a.mov(ebx, eax)?;
    asm.a.rdtsc()?;
    asm.a.mov(esi, eax)?;
    asm.a.mov(edi, 1u32 << 18)?;
    asm.here("apic_spin")?;
    asm.a.dec(edi)?;
    asm.jnz("apic_spin")?;
    asm.a.rdtsc()?;
    asm.a.sub(eax, esi)?;
    asm.a.mov(dword_ptr(DT), eax)?;
    asm.a.mov(ecx, TIMER_CURRENT)?;
    asm.call("apic_rd")?;
    asm.a.sub(ebx, eax)?;
    asm.a.mov(dword_ptr(DC), ebx)?;
    asm.print("apic: rate counts=")?;
    asm.a.mov(eax, dword_ptr(DC))?;
    asm.print_dec_eax()?;
    asm.print(" tsc=")?;
    asm.a.mov(eax, dword_ptr(DT))?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.a.cmp(dword_ptr(DC), 0)?;
    asm.jne("apic_counts")?;
    asm.print("apic: FAIL timer does not count\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;
    asm.here("apic_counts")?;
    // The legacy PIC stays quiet: a BIOS may have left it unmasked on vectors 8-15, which
    // collide with exceptions (kvm-unit-tests' mask_pic_interrupts does the same).
    asm.a.mov(al, 0xFF)?;
    asm.a.out(0x21u32, al)?;
    asm.a.out(0xA1u32, al)?;
    asm.a.sti()?;

    // One-shot: one interrupt, no earlier than INITIAL counts, and no second one.
    asm.a.mov(ecx, LVT_TIMER)?;
    asm.a.mov(eax, TIMER)?;
    asm.call("apic_wr")?;
    asm.a.rdtsc()?;
    asm.a.mov(dword_ptr(T0), eax)?;
    asm.a.mov(ecx, TIMER_INITIAL)?;
    asm.a.mov(eax, INITIAL)?;
    asm.call("apic_wr")?;
    // Check with interrupts off, then STI; HLT (the STI shadow makes the pair atomic), so an
    // interrupt that arrives before the HLT cannot be slept through.
    asm.here("apic_oneshot_wait")?;
    asm.a.cli()?;
    asm.a.cmp(dword_ptr(COUNT_TIMER), 0)?;
    asm.jne("apic_oneshot_wait_done")?;
    asm.a.sti()?;
    asm.a.hlt()?;
    asm.jmp("apic_oneshot_wait")?;
    asm.here("apic_oneshot_wait_done")?;
    asm.a.sti()?;
    // Expected span in TSC ticks: INITIAL * DT / DC; the arrival may not be earlier than 3/4.
    asm.a.mov(eax, INITIAL)?;
    asm.call("apic_counts_to_tsc")?;
    asm.a.mov(ebx, eax)?;
    asm.a.mov(eax, dword_ptr(LAST))?;
    asm.a.sub(eax, dword_ptr(T0))?;
    asm.print("apic: one-shot after tsc=")?;
    asm.print_dec_eax()?;
    asm.print(" expected=")?;
    asm.a.xchg(eax, ebx)?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.a.mov(ecx, eax)?;
    asm.a.shr(ecx, 2)?;
    asm.a.sub(eax, ecx)?;
    asm.a.cmp(ebx, eax)?;
    asm.jae("apic_oneshot_not_early")?;
    asm.call("apic_fail")?;
    asm.here("apic_oneshot_not_early")?;
    asm.a.mov(ecx, TIMER_CURRENT)?;
    asm.call("apic_rd")?;
    asm.a.test(eax, eax)?;
    asm.jz("apic_oneshot_stopped")?;
    asm.call("apic_fail")?;
    asm.here("apic_oneshot_stopped")?;

    // Periodic: PERIODS intervals between the first and the last of PERIODS + 1 interrupts.
    asm.a.mov(dword_ptr(COUNT_TIMER), 0u32)?;
    asm.a.mov(ecx, LVT_TIMER)?;
    asm.a.mov(eax, (1u32 << 17) | TIMER)?;
    asm.call("apic_wr")?;
    asm.a.mov(ecx, TIMER_INITIAL)?;
    asm.a.mov(eax, INITIAL)?;
    asm.call("apic_wr")?;
    // Check with interrupts off, then STI; HLT (the STI shadow makes the pair atomic), so an
    // interrupt that arrives before the HLT cannot be slept through.
    asm.here("apic_periodic_first")?;
    asm.a.cli()?;
    asm.a.cmp(dword_ptr(COUNT_TIMER), 0)?;
    asm.jne("apic_periodic_first_done")?;
    asm.a.sti()?;
    asm.a.hlt()?;
    asm.jmp("apic_periodic_first")?;
    asm.here("apic_periodic_first_done")?;
    asm.a.sti()?;
    asm.a.mov(eax, dword_ptr(LAST))?;
    asm.a.mov(dword_ptr(T0), eax)?;
    asm.here("apic_periodic_wait")?;
    asm.a.cli()?;
    asm.a.cmp(dword_ptr(COUNT_TIMER), PERIODS + 1)?;
    asm.jae("apic_periodic_wait_done")?;
    asm.a.sti()?;
    asm.a.hlt()?;
    asm.jmp("apic_periodic_wait")?;
    asm.here("apic_periodic_wait_done")?;
    asm.a.sti()?;
    asm.a.mov(ecx, TIMER_INITIAL)?;
    asm.a.xor(eax, eax)?;
    asm.call("apic_wr")?;
    asm.a.mov(eax, INITIAL * PERIODS)?;
    asm.call("apic_counts_to_tsc")?;
    asm.a.mov(ebx, eax)?;
    asm.a.mov(eax, dword_ptr(LAST))?;
    asm.a.sub(eax, dword_ptr(T0))?;
    asm.print("apic: periodic span tsc=")?;
    asm.print_dec_eax()?;
    asm.print(" expected=")?;
    asm.a.xchg(eax, ebx)?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.call("apic_within_quarter")?;

    // TSC-deadline, if offered: the interrupt comes at or after the deadline.
    cpuid(asm, 1)?;
    asm.a.test(ecx, 1u32 << 24)?;
    asm.jnz("apic_deadline")?;
    asm.print("apic: tsc-deadline not offered\n")?;
    asm.jmp("apic_self_ipi")?;
    asm.here("apic_deadline")?;
    asm.a.mov(dword_ptr(COUNT_TIMER), 0u32)?;
    asm.a.mov(ecx, LVT_TIMER)?;
    asm.a.mov(eax, (2u32 << 17) | TIMER)?;
    asm.call("apic_wr")?;
    // 5 ms from now.
    asm.a.mov(eax, dword_ptr(TSC_KHZ))?;
    asm.a.imul_3(ebx, eax, 5)?;
    asm.a.rdtsc()?;
    asm.a.add(eax, ebx)?;
    asm.a.adc(edx, 0)?;
    asm.a.mov(dword_ptr(T0), eax)?;
    asm.a.mov(ecx, IA32_TSC_DEADLINE)?;
    asm.a.wrmsr()?;
    // Check with interrupts off, then STI; HLT (the STI shadow makes the pair atomic), so an
    // interrupt that arrives before the HLT cannot be slept through.
    asm.here("apic_deadline_wait")?;
    asm.a.cli()?;
    asm.a.cmp(dword_ptr(COUNT_TIMER), 0)?;
    asm.jne("apic_deadline_wait_done")?;
    asm.a.sti()?;
    asm.a.hlt()?;
    asm.jmp("apic_deadline_wait")?;
    asm.here("apic_deadline_wait_done")?;
    asm.a.sti()?;
    asm.a.mov(eax, dword_ptr(LAST))?;
    asm.a.sub(eax, dword_ptr(T0))?;
    asm.print("apic: tsc-deadline late by tsc=")?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.a.test(eax, eax)?;
    asm.jns("apic_self_ipi")?;
    asm.call("apic_fail")?;

    // A self IPI arrives before a short loop ends.
    asm.here("apic_self_ipi")?;
    asm.a.cmp(dword_ptr(X2), 0)?;
    asm.je("apic_self_ipi_xapic")?;
    asm.a.mov(ecx, 0x83Fu32)?; // x2APIC SELF IPI
    asm.a.mov(eax, IPI)?;
    asm.a.xor(edx, edx)?;
    asm.a.wrmsr()?;
    asm.jmp("apic_self_ipi_sent")?;
    asm.here("apic_self_ipi_xapic")?;
    asm.a.mov(ecx, ICR_LOW)?;
    asm.a.mov(eax, (1u32 << 18) | IPI)?; // shorthand "self", fixed
    asm.call("apic_wr")?;
    asm.here("apic_self_ipi_sent")?;
    asm.a.mov(ecx, 1000u32)?;
    asm.here("apic_self_ipi_loop")?;
    asm.a.dec(ecx)?;
    asm.jnz("apic_self_ipi_loop")?;
    asm.a.cli()?;
    asm.print("apic: self ipi count=")?;
    asm.a.mov(eax, dword_ptr(COUNT_IPI))?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.a.cmp(eax, 1)?;
    asm.je("apic_done")?;
    asm.call("apic_fail")?;
    asm.here("apic_done")?;
    asm.a.cmp(dword_ptr(FAILS), 0)?;
    asm.jne("apic_failed")?;
    asm.print("apic: PASS\n")?;
    asm.exit(gabi::EXIT_OK)?;
    asm.here("apic_failed")?;
    asm.print("apic: FAIL\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;

    // apic_fail: count a failed check.
    asm.here("apic_fail")?;
    asm.a.inc(dword_ptr(FAILS))?;
    asm.a.ret()?;

    // apic_within_quarter: eax = measured, ebx = expected; counts a failure unless
    // |eax - ebx| <= ebx * tolerance / 100.
    asm.here("apic_within_quarter")?;
    asm.a.push(ecx)?;
    asm.a.sub(eax, ebx)?;
    asm.jnc("apic_wq_abs")?;
    asm.a.neg(eax)?;
    asm.here("apic_wq_abs")?;
    asm.a.push(eax)?;
    asm.a.mov(eax, ebx)?;
    asm.call("tolerance_of")?;
    asm.a.mov(ecx, eax)?;
    asm.a.pop(eax)?;
    asm.a.cmp(eax, ecx)?;
    asm.jbe("apic_wq_ok")?;
    asm.call("apic_fail")?;
    asm.here("apic_wq_ok")?;
    asm.a.pop(ecx)?;
    asm.a.ret()?;

    // apic_counts_to_tsc: eax = timer counts -> eax = TSC ticks (counts * DT / DC).
    asm.here("apic_counts_to_tsc")?;
    asm.a.push(edx)?;
    asm.a.mul(dword_ptr(DT))?;
    asm.a.cmp(edx, dword_ptr(DC))?;
    asm.jb("apic_ctt_div")?;
    asm.a.mov(eax, u32::MAX)?;
    asm.jmp("apic_ctt_done")?;
    asm.here("apic_ctt_div")?;
    asm.a.div(dword_ptr(DC))?;
    asm.here("apic_ctt_done")?;
    asm.a.pop(edx)?;
    asm.a.ret()?;

    // apic_wr: ecx = register offset, eax = value. apic_rd: ecx = offset -> eax.
    asm.here("apic_wr")?;
    asm.a.push(ecx)?;
    asm.a.push(edx)?;
    asm.a.cmp(dword_ptr(X2), 0)?;
    asm.je("apic_wr_mmio")?;
    asm.a.shr(ecx, 4)?;
    asm.a.add(ecx, 0x800)?;
    asm.a.xor(edx, edx)?;
    asm.a.wrmsr()?;
    asm.jmp("apic_wr_done")?;
    asm.here("apic_wr_mmio")?;
    asm.a.mov(dword_ptr(ecx + XAPIC_BASE as i32), eax)?;
    asm.here("apic_wr_done")?;
    asm.a.pop(edx)?;
    asm.a.pop(ecx)?;
    asm.a.ret()?;
    asm.here("apic_rd")?;
    asm.a.push(ecx)?;
    asm.a.push(edx)?;
    asm.a.cmp(dword_ptr(X2), 0)?;
    asm.je("apic_rd_mmio")?;
    asm.a.shr(ecx, 4)?;
    asm.a.add(ecx, 0x800)?;
    asm.a.rdmsr()?;
    asm.jmp("apic_rd_done")?;
    asm.here("apic_rd_mmio")?;
    asm.a.mov(eax, dword_ptr(ecx + XAPIC_BASE as i32))?;
    asm.here("apic_rd_done")?;
    asm.a.pop(edx)?;
    asm.a.pop(ecx)?;
    asm.a.ret()?;

    // The interrupt hook: time-stamp the arrival, EOI (not for the spurious vector).
    asm.here("apic_hook")?;
    asm.a.push(eax)?;
    asm.a.rdtsc()?;
    asm.a.mov(dword_ptr(LAST), eax)?;
    asm.a.pop(eax)?;
    asm.a.cmp(eax, SPURIOUS)?;
    asm.je("apic_hook_done")?;
    asm.a.mov(ecx, EOI)?;
    asm.a.xor(eax, eax)?;
    asm.call("apic_wr")?;
    asm.here("apic_hook_done")?;
    asm.a.ret()?;
    tolerance_routine(asm)
}

// ---- Helpers shared by the device guests below (echo, rtc, ioapic, smp). ----

/// Initialises the 8259A pair as `ticker` does (Linux's init_8259A: edge, cascade on IR2,
/// 8086 mode, vector bases 0x20/0x28), leaves the given masks and checks that the master's
/// reads back (else there is no PIC: prints `<tag>: FAIL no 8259A` and exits with 1).
fn pic_init(asm: &mut Asm, tag: &str, master_mask: u32, slave_mask: u32) -> Result {
    for (port, value) in [
        (0x20u32, 0x11u32),
        (0x21, 0x20),
        (0x21, 0x04),
        (0x21, 0x01),
        (0xA0, 0x11),
        (0xA1, 0x28),
        (0xA1, 0x02),
        (0xA1, 0x01),
        (0x21, master_mask),
        (0xA1, slave_mask),
    ] {
        asm.a.mov(al, value)?;
        asm.a.out(port, al)?;
    }
    let ok = asm.fresh("pic_ok");
    asm.a.in_(al, 0x21u32)?;
    asm.a.cmp(al, master_mask as i32)?;
    asm.je(&ok)?;
    asm.print(&format!("{tag}: FAIL no 8259A (mask did not read back)\n"))?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;
    asm.here(&ok)
}

/// Masks every line of both 8259As (a BIOS may have left them on vectors 8-15).
fn pic_mask_all(asm: &mut Asm) -> Result {
    asm.a.mov(al, 0xFF)?;
    asm.a.out(0x21u32, al)?;
    Ok(asm.a.out(0xA1u32, al)?)
}

/// The race-free wait: with interrupts off, `until` sets the flags for a `jae` that ends the
/// wait; otherwise STI; HLT (atomic through the STI shadow) and check again. Leaves
/// interrupts off.
fn halt_until(asm: &mut Asm, until: impl Fn(&mut Asm) -> Result) -> Result {
    let (wait, done) = (asm.fresh("wait"), asm.fresh("waited"));
    asm.here(&wait)?;
    asm.a.cli()?;
    until(asm)?;
    asm.jae(&done)?;
    asm.a.sti()?;
    asm.a.hlt()?;
    asm.jmp(&wait)?;
    asm.here(&done)
}

/// eax = N (periods times the period's numerator), ebx = the divisor (Hz of one numerator
/// unit) -> edi = N * tsc_khz * 1000 / ebx, the span in TSC ticks; jumps to `fail` (after
/// printing why) when it does not fit 32 bits. Clobbers eax, ecx, edx, esi.
fn expected_tsc_span(asm: &mut Asm, tag: &str, tsc_khz: u32, fail: &str) -> Result {
    let ok = asm.fresh("span_ok");
    asm.a.mul(dword_ptr(tsc_khz))?;
    asm.a.mov(esi, edx)?;
    asm.a.mov(ecx, 1000u32)?;
    asm.a.mul(ecx)?;
    asm.a.imul_3(esi, esi, 1000)?;
    asm.a.add(edx, esi)?;
    asm.a.cmp(edx, ebx)?;
    asm.jb(&ok)?;
    asm.print(&format!("{tag}: span too long to check\n"))?;
    asm.jmp(fail)?;
    asm.here(&ok)?;
    asm.a.div(ebx)?;
    Ok(asm.a.mov(edi, eax)?)
}

/// edi = expected span; measures `[t1] - [t0]` (64-bit TSC stamps) into ebx, prints
/// ` tsc=<measured> expected=<expected>` and a line break, and jumps to `fail` unless the
/// measurement fits 32 bits, `[tsc_khz]` was given and it is within `tolerance=P` percent.
fn check_tsc_span(asm: &mut Asm, t0: u32, t1: u32, tsc_khz: u32, fail: &str) -> Result {
    let abs = asm.fresh("abs");
    asm.a.mov(eax, dword_ptr(t1))?;
    asm.a.mov(edx, dword_ptr(t1 + 4))?;
    asm.a.sub(eax, dword_ptr(t0))?;
    asm.a.sbb(edx, dword_ptr(t0 + 4))?;
    asm.a.mov(ebx, eax)?;
    asm.print(" tsc=")?;
    asm.print_dec_eax()?;
    asm.print(" expected=")?;
    asm.a.mov(eax, edi)?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.a.test(edx, edx)?;
    asm.jnz(fail)?;
    asm.a.cmp(dword_ptr(tsc_khz), 0)?;
    asm.je(fail)?;
    asm.a.mov(eax, edi)?;
    asm.call("tolerance_of")?;
    asm.a.mov(ecx, eax)?;
    asm.a.mov(eax, ebx)?;
    asm.a.sub(eax, edi)?;
    asm.jnc(&abs)?;
    asm.a.neg(eax)?;
    asm.here(&abs)?;
    asm.a.cmp(eax, ecx)?;
    asm.ja(fail)
}

/// In the interrupt hook: time-stamps arrival 1 into `t0` and arrival `[ticks] + 1` into
/// `t1`, going by the count at `count`. Clobbers eax, ecx, edx.
fn stamp_first_and_last(asm: &mut Asm, count: u32, ticks: u32, t0: u32, t1: u32) -> Result {
    let (last, done) = (asm.fresh("last"), asm.fresh("stamped"));
    asm.a.mov(ecx, dword_ptr(count))?;
    asm.a.cmp(ecx, 1)?;
    asm.jne(&last)?;
    asm.a.rdtsc()?;
    asm.a.mov(dword_ptr(t0), eax)?;
    asm.a.mov(dword_ptr(t0 + 4), edx)?;
    asm.jmp(&done)?;
    asm.here(&last)?;
    asm.a.mov(eax, dword_ptr(ticks))?;
    asm.a.inc(eax)?;
    asm.a.cmp(ecx, eax)?;
    asm.jne(&done)?;
    asm.a.rdtsc()?;
    asm.a.mov(dword_ptr(t1), eax)?;
    asm.a.mov(dword_ptr(t1 + 4), edx)?;
    asm.here(&done)
}

/// `[dst]` = the value of `key` on the command line, or `default` when it is absent.
fn arg_or(asm: &mut Asm, key: &str, default: u32, dst: u32) -> Result {
    let given = asm.fresh("given");
    asm.find_arg(key)?;
    asm.jnc(&given)?;
    asm.a.mov(eax, default)?;
    asm.here(&given)?;
    Ok(asm.a.mov(dword_ptr(dst), eax)?)
}

/// Prints `text`, then `[var]` in decimal.
fn print_var(asm: &mut Asm, text: &str, var: u32) -> Result {
    asm.print(text)?;
    asm.a.mov(eax, dword_ptr(var))?;
    asm.print_dec_eax()
}

/// Local APIC access through the x2APIC MSRs (`[x2] != 0`) or the xAPIC page, for the
/// `ioapic` and `smp` guests: `<p>_wr` (ecx = xAPIC register offset, eax = value), `<p>_rd`
/// (ecx = offset -> eax), `<p>_enable` (IA32_APIC_BASE EN/EXTD, SVR enable with spurious
/// vector 0x3F) and `<p>_id` (-> eax = this CPU's APIC ID).
fn lapic_routines(asm: &mut Asm, p: &str, x2: u32) -> Result {
    const XAPIC_BASE: u32 = 0xFEE0_0000;
    asm.here(&format!("{p}_wr"))?;
    asm.a.push(ecx)?;
    asm.a.push(edx)?;
    asm.a.cmp(dword_ptr(x2), 0)?;
    asm.je(&format!("{p}_wr_mmio"))?;
    asm.a.shr(ecx, 4)?;
    asm.a.add(ecx, 0x800)?;
    asm.a.xor(edx, edx)?;
    asm.a.wrmsr()?;
    asm.jmp(&format!("{p}_wr_done"))?;
    asm.here(&format!("{p}_wr_mmio"))?;
    asm.a.mov(dword_ptr(ecx + XAPIC_BASE as i32), eax)?;
    asm.here(&format!("{p}_wr_done"))?;
    asm.a.pop(edx)?;
    asm.a.pop(ecx)?;
    asm.a.ret()?;

    asm.here(&format!("{p}_rd"))?;
    asm.a.push(ecx)?;
    asm.a.push(edx)?;
    asm.a.cmp(dword_ptr(x2), 0)?;
    asm.je(&format!("{p}_rd_mmio"))?;
    asm.a.shr(ecx, 4)?;
    asm.a.add(ecx, 0x800)?;
    asm.a.rdmsr()?;
    asm.jmp(&format!("{p}_rd_done"))?;
    asm.here(&format!("{p}_rd_mmio"))?;
    asm.a.mov(eax, dword_ptr(ecx + XAPIC_BASE as i32))?;
    asm.here(&format!("{p}_rd_done"))?;
    asm.a.pop(edx)?;
    asm.a.pop(ecx)?;
    asm.a.ret()?;

    asm.here(&format!("{p}_enable"))?;
    asm.a.pushad()?;
    asm.a.mov(ecx, IA32_APIC_BASE)?;
    asm.a.rdmsr()?;
    asm.a.or(eax, 1 << 11)?;
    asm.a.cmp(dword_ptr(x2), 0)?;
    asm.je(&format!("{p}_enable_base"))?;
    asm.a.or(eax, 1 << 10)?;
    asm.here(&format!("{p}_enable_base"))?;
    asm.a.wrmsr()?;
    asm.a.mov(ecx, 0xF0u32)?; // SVR
    asm.a.mov(eax, 0x13Fu32)?;
    asm.call(&format!("{p}_wr"))?;
    asm.a.popad()?;
    asm.a.ret()?;

    // xAPIC: ID in bits 31:24 of register 0x20; x2APIC: the whole 32-bit MSR 0x802.
    asm.here(&format!("{p}_id"))?;
    asm.a.push(ecx)?;
    asm.a.mov(ecx, 0x20u32)?;
    asm.call(&format!("{p}_rd"))?;
    asm.a.cmp(dword_ptr(x2), 0)?;
    asm.jne(&format!("{p}_id_done"))?;
    asm.a.shr(eax, 24)?;
    asm.here(&format!("{p}_id_done"))?;
    asm.a.pop(ecx)?;
    Ok(asm.a.ret()?)
}

/// `[x2]` = `x2apic=` (0 if absent); exits with 1 after a FAIL line if CPUID offers no local
/// APIC, or no x2APIC when asked for one.
fn lapic_mode(asm: &mut Asm, tag: &str, x2: u32) -> Result {
    let (present, ok) = (asm.fresh("apic_present"), asm.fresh("apic_mode_ok"));
    asm.find_arg("x2apic=")?;
    asm.a.mov(dword_ptr(x2), eax)?;
    cpuid(asm, 1)?;
    asm.a.test(edx, 1u32 << 9)?;
    asm.jnz(&present)?;
    asm.print(&format!("{tag}: FAIL no local APIC in CPUID\n"))?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;
    asm.here(&present)?;
    asm.a.cmp(dword_ptr(x2), 0)?;
    asm.je(&ok)?;
    asm.a.test(ecx, 1u32 << 21)?;
    asm.jnz(&ok)?;
    asm.print(&format!("{tag}: FAIL no x2APIC in CPUID\n"))?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;
    asm.here(&ok)
}

/// Where the `echo` guest keeps its transmit ring (above the image and the boot information).
const ECHO_RING: u32 = 0x20_0000;
const ECHO_RING_MASK: u32 = 0xFFF;
/// The long string `echo` sends through THRE interrupts: 32 lines of 63 characters
/// `'0' + column` and a line feed.
const ECHO_LONG_LEN: u32 = 2048;

/// `echo`: the 16550 driven like Linux's 8250 driver, by interrupts on IRQ 4.
fn echo(asm: &mut Asm) -> Result {
    const UART: u32 = gabi::UART_DATA as u32;
    const IER: u32 = UART + 1;
    const IIR_FCR: u32 = UART + 2;
    const LCR: u32 = UART + 3;
    const MCR: u32 = UART + 4;
    const LSR: u32 = UART + 5;
    const MSR: u32 = UART + 6;
    const VECTOR: u32 = 0x24;
    const HEAD: u32 = layout::VAR_SCRATCH; // next ring byte to send
    const TAIL: u32 = layout::VAR_SCRATCH + 4; // next free ring byte
    const DONE: u32 = layout::VAR_SCRATCH + 8;
    const IER_SHADOW: u32 = layout::VAR_SCRATCH + 12;
    const RDA: u32 = layout::BSS + 0x40;
    const TIMEOUT: u32 = layout::BSS + 0x44;
    const THRE: u32 = layout::BSS + 0x48;
    const OTHER: u32 = layout::BSS + 0x4C;
    const RECEIVED: u32 = layout::BSS + 0x50;
    const SENT: u32 = layout::BSS + 0x54;
    const QUEUED: u32 = layout::BSS + 0x58;
    const READY: &str = "echo: ready\n";

    asm.interrupts();
    let hook = asm.addr("echo_hook");
    asm.a.mov(dword_ptr(layout::VAR_IRQ_HOOK), hook)?;
    // 115200 8N1, FIFOs on and cleared (trigger level 14), DTR | RTS | OUT2, interrupts off.
    for (port, value) in [
        (IER, 0u32),
        (LCR, 0x80),
        (UART, 0x01),
        (IER, 0x00),
        (LCR, 0x03),
        (IIR_FCR, 0xC7),
        (MCR, 0x0B),
    ] {
        asm.a.mov(dx, port)?;
        asm.a.mov(al, value)?;
        asm.a.out(dx, al)?;
    }
    for port in [LSR, UART, IIR_FCR, MSR] {
        asm.a.mov(dx, port)?;
        asm.a.in_(al, dx)?;
    }
    pic_init(asm, "echo", 0xEF, 0xFF)?;
    asm.print("echo: start\n")?;

    // Queue the long string and the ready line, then let THRE interrupts send them.
    asm.a.xor(ebx, ebx)?;
    asm.here("echo_fill")?;
    asm.a.mov(eax, ebx)?;
    asm.a.and(eax, 63)?;
    asm.a.add(eax, i32::from(b'0'))?;
    asm.a.cmp(eax, i32::from(b'0') + 63)?;
    asm.jne("echo_fill_put")?;
    asm.a.mov(eax, u32::from(b'\n'))?;
    asm.here("echo_fill_put")?;
    asm.call("echo_put")?;
    asm.a.inc(ebx)?;
    asm.a.cmp(ebx, ECHO_LONG_LEN)?;
    asm.jb("echo_fill")?;
    let ready = asm.str(READY);
    asm.a.mov(esi, ready)?;
    asm.here("echo_ready")?;
    asm.a.mov(al, byte_ptr(esi))?;
    asm.a.test(al, al)?;
    asm.jz("echo_ready_done")?;
    asm.call("echo_put")?;
    asm.a.inc(esi)?;
    asm.jmp("echo_ready")?;
    asm.here("echo_ready_done")?;
    asm.a.mov(dx, IER)?;
    asm.a.mov(al, 0x01)?;
    asm.a.out(dx, al)?;
    asm.a.mov(dword_ptr(IER_SHADOW), 0x01u32)?;
    asm.call("echo_start_tx")?;

    // Echo until the terminator has come, then until everything queued is sent.
    halt_until(asm, |asm| Ok(asm.a.cmp(dword_ptr(DONE), 1)?))?;
    halt_until(asm, |asm| {
        asm.a.mov(eax, dword_ptr(HEAD))?;
        Ok(asm.a.cmp(eax, dword_ptr(TAIL))?)
    })?;
    asm.a.mov(dx, IER)?;
    asm.a.xor(eax, eax)?;
    asm.a.out(dx, al)?;
    pic_mask_all(asm)?;
    asm.print("\necho: done")?;
    print_var(asm, " rda=", RDA)?;
    print_var(asm, " timeout=", TIMEOUT)?;
    print_var(asm, " thre=", THRE)?;
    print_var(asm, " other=", OTHER)?;
    print_var(asm, " received=", RECEIVED)?;
    print_var(asm, " sent=", SENT)?;
    asm.newline()?;
    // Everything queued went out, at most 16 bytes per THRE interrupt, and every received
    // byte was queued once.
    asm.a.mov(eax, dword_ptr(RECEIVED))?;
    asm.a.add(eax, ECHO_LONG_LEN + READY.len() as u32)?;
    asm.a.cmp(eax, dword_ptr(SENT))?;
    asm.jne("echo_fail")?;
    asm.a.cmp(eax, dword_ptr(QUEUED))?;
    asm.jne("echo_fail")?;
    asm.a.mov(eax, dword_ptr(THRE))?;
    asm.a.shl(eax, 4)?;
    asm.a.cmp(eax, dword_ptr(SENT))?;
    asm.jb("echo_fail")?;
    asm.a.mov(eax, dword_ptr(RDA))?;
    asm.a.add(eax, dword_ptr(TIMEOUT))?;
    asm.jz("echo_fail")?;
    asm.print("echo: PASS\n")?;
    asm.exit(gabi::EXIT_OK)?;
    asm.here("echo_fail")?;
    asm.print("echo: FAIL\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;

    // echo_put: al = byte, queued at the ring's tail (interrupts off or in the hook).
    asm.here("echo_put")?;
    asm.a.push(ecx)?;
    asm.a.mov(ecx, dword_ptr(TAIL))?;
    asm.a.and(ecx, ECHO_RING_MASK)?;
    asm.a.mov(byte_ptr(ecx + ECHO_RING as i32), al)?;
    asm.a.inc(dword_ptr(TAIL))?;
    asm.a.inc(dword_ptr(QUEUED))?;
    asm.a.pop(ecx)?;
    asm.a.ret()?;

    // echo_start_tx: enable the THRE interrupt if it is off (Linux's __start_tx). A 16550
    // whose THR is empty raises it at once.
    asm.here("echo_start_tx")?;
    asm.a.test(dword_ptr(IER_SHADOW), 0x02)?;
    asm.jnz("echo_start_tx_done")?;
    asm.a.mov(dword_ptr(IER_SHADOW), 0x03u32)?;
    asm.a.mov(dx, IER)?;
    asm.a.mov(al, 0x03)?;
    asm.a.out(dx, al)?;
    asm.here("echo_start_tx_done")?;
    asm.a.ret()?;

    // The interrupt hook: serve the UART until IIR says nothing is pending, then EOI.
    asm.here("echo_hook")?;
    asm.a.cmp(eax, VECTOR)?;
    asm.jne("echo_hook_other")?;
    asm.here("echo_iir")?;
    asm.a.mov(dx, IIR_FCR)?;
    asm.a.in_(al, dx)?;
    asm.a.test(al, 1)?;
    asm.jnz("echo_hook_eoi")?;
    asm.a.and(al, 0x0E)?;
    asm.a.cmp(al, 0x04)?;
    asm.je("echo_rda")?;
    asm.a.cmp(al, 0x0C)?;
    asm.je("echo_timeout")?;
    asm.a.cmp(al, 0x02)?;
    asm.je("echo_thre")?;
    // Line status (0x06) or modem status (0x00): reading the register clears it.
    asm.a.inc(dword_ptr(OTHER))?;
    asm.a.mov(dx, LSR)?;
    asm.a.in_(al, dx)?;
    asm.a.mov(dx, MSR)?;
    asm.a.in_(al, dx)?;
    asm.jmp("echo_iir")?;

    asm.here("echo_timeout")?;
    asm.a.inc(dword_ptr(TIMEOUT))?;
    asm.jmp("echo_rx")?;
    asm.here("echo_rda")?;
    asm.a.inc(dword_ptr(RDA))?;
    asm.here("echo_rx")?;
    asm.a.mov(dx, LSR)?;
    asm.a.in_(al, dx)?;
    asm.a.test(al, 0x01)?; // DR
    asm.jz("echo_rx_done")?;
    asm.a.mov(dx, UART)?;
    asm.a.in_(al, dx)?;
    asm.a.inc(dword_ptr(RECEIVED))?;
    asm.call("echo_put")?;
    asm.a.cmp(al, i32::from(b'q'))?;
    asm.jne("echo_rx")?;
    asm.a.mov(dword_ptr(DONE), 1u32)?;
    asm.jmp("echo_rx")?;
    asm.here("echo_rx_done")?;
    asm.call("echo_start_tx")?;
    asm.jmp("echo_iir")?;

    // THR (and the transmit FIFO) empty: up to 16 more bytes; none left: THRE interrupt off.
    asm.here("echo_thre")?;
    asm.a.inc(dword_ptr(THRE))?;
    asm.a.mov(ebx, 16u32)?;
    asm.here("echo_tx")?;
    asm.a.mov(ecx, dword_ptr(HEAD))?;
    asm.a.cmp(ecx, dword_ptr(TAIL))?;
    asm.je("echo_tx_empty")?;
    asm.a.and(ecx, ECHO_RING_MASK)?;
    asm.a.mov(al, byte_ptr(ecx + ECHO_RING as i32))?;
    asm.a.mov(dx, UART)?;
    asm.a.out(dx, al)?;
    asm.a.inc(dword_ptr(HEAD))?;
    asm.a.inc(dword_ptr(SENT))?;
    asm.a.dec(ebx)?;
    asm.jnz("echo_tx")?;
    asm.jmp("echo_iir")?;
    asm.here("echo_tx_empty")?;
    asm.a.mov(dword_ptr(IER_SHADOW), 0x01u32)?;
    asm.a.mov(dx, IER)?;
    asm.a.mov(al, 0x01)?;
    asm.a.out(dx, al)?;
    asm.jmp("echo_iir")?;

    // Other vectors: EOI the master unless it is the spurious IRQ 7.
    asm.here("echo_hook_other")?;
    asm.a.cmp(eax, 0x27)?;
    asm.je("echo_hook_done")?;
    asm.here("echo_hook_eoi")?;
    asm.a.mov(al, 0x20)?;
    asm.a.out(0x20u32, al)?;
    asm.here("echo_hook_done")?;
    Ok(asm.a.ret()?)
}

/// `rtc`: the MC146818 as an OS reads and programs it (date, periodic interrupt on IRQ 8 through
/// the cascade, the shutdown-status byte).
fn rtc(asm: &mut Asm) -> Result {
    const TSC_KHZ: u32 = layout::VAR_SCRATCH;
    const TICKS: u32 = layout::VAR_SCRATCH + 4;
    const HZ: u32 = layout::VAR_SCRATCH + 8;
    const REG_B: u32 = layout::VAR_SCRATCH + 12;
    const T0: u32 = layout::BSS + 0x40;
    const T1: u32 = layout::BSS + 0x48;
    const FAILS: u32 = layout::BSS + 0x50;
    const RATE: u32 = layout::BSS + 0x54;
    /// The raw date registers, in `FIELDS` order.
    const RAW: u32 = layout::BSS + 0x60;
    const VECTOR: u32 = 0x28;
    const COUNT: u32 = layout::VAR_IRQ_COUNTS + 4 * (VECTOR - 32);
    // (register, name) in read order: seconds, minutes, hours, day, month, year, century.
    const FIELDS: [u32; 7] = [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32];

    asm.interrupts();
    let hook = asm.addr("rtc_hook");
    asm.a.mov(dword_ptr(layout::VAR_IRQ_HOOK), hook)?;
    asm.find_arg("tsc_khz=")?;
    asm.a.mov(dword_ptr(TSC_KHZ), eax)?;
    arg_or(asm, "ticks=", 64, TICKS)?;
    arg_or(asm, "hz=", 1024, HZ)?;
    // hz must be 2^n, 2..8192: rate = 16 - n (32768 Hz >> (rate - 1)).
    asm.a.mov(eax, dword_ptr(HZ))?;
    asm.a.cmp(eax, 2)?;
    asm.jb("rtc_bad_hz")?;
    asm.a.cmp(eax, 8192)?;
    asm.ja("rtc_bad_hz")?;
    asm.a.lea(ecx, dword_ptr(eax - 1))?;
    asm.a.test(ecx, eax)?;
    asm.jz("rtc_hz_ok")?;
    asm.here("rtc_bad_hz")?;
    asm.print("rtc: FAIL hz must be a power of two from 2 to 8192\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;
    asm.here("rtc_hz_ok")?;
    asm.a.bsr(ecx, eax)?;
    asm.a.mov(eax, 16u32)?;
    asm.a.sub(eax, ecx)?;
    asm.a.mov(dword_ptr(RATE), eax)?;

    // The date: read when no update is in progress, again until the seconds agree.
    asm.a.mov(al, 0x0B)?;
    asm.call("cmos_read")?;
    asm.a.movzx(eax, al)?;
    asm.a.mov(dword_ptr(REG_B), eax)?;
    asm.here("rtc_read_date")?;
    asm.a.mov(al, 0x0A)?;
    asm.call("cmos_read")?;
    asm.a.test(al, 0x80)?; // UIP
    asm.jnz("rtc_read_date")?;
    for (i, register) in FIELDS.iter().enumerate() {
        asm.a.mov(al, *register as i32)?;
        asm.call("cmos_read")?;
        asm.a.mov(byte_ptr(RAW + i as u32), al)?;
    }
    asm.a.mov(al, 0x00)?;
    asm.call("cmos_read")?;
    asm.a.cmp(al, byte_ptr(RAW))?;
    asm.jne("rtc_read_date")?;
    // To binary: BCD unless register B's DM (bit 2); a 12-hour clock (B bit 1 clear) has PM in
    // the hour's bit 7.
    asm.a.mov(bl, byte_ptr(RAW + 2))?; // raw hour
    asm.a.and(byte_ptr(RAW + 2), 0x7F)?;
    for i in 0..FIELDS.len() as u32 {
        asm.a.mov(al, byte_ptr(RAW + i))?;
        asm.call("rtc_to_binary")?;
        asm.a.mov(byte_ptr(RAW + i), al)?;
    }
    asm.a.test(dword_ptr(REG_B), 0x02)?;
    asm.jnz("rtc_24h")?;
    // 12-hour: 12 AM is 0, 12 PM is 12.
    asm.a.movzx(eax, byte_ptr(RAW + 2))?;
    asm.a.cmp(eax, 12)?;
    asm.jne("rtc_12h_pm")?;
    asm.a.xor(eax, eax)?;
    asm.here("rtc_12h_pm")?;
    asm.a.test(bl, 0x80)?;
    asm.jz("rtc_12h_done")?;
    asm.a.add(eax, 12)?;
    asm.here("rtc_12h_done")?;
    asm.a.mov(byte_ptr(RAW + 2), al)?;
    asm.here("rtc_24h")?;
    // A century register (0x32, ACPI FADT's default) out of 19..=21 is not one: assume 20.
    asm.a.mov(al, byte_ptr(RAW + 6))?;
    asm.a.sub(al, 19)?;
    asm.a.cmp(al, 2)?;
    asm.jbe("rtc_century_ok")?;
    asm.a.mov(byte_ptr(RAW + 6), 20)?;
    asm.here("rtc_century_ok")?;
    asm.print("rtc: register b=")?;
    asm.a.mov(eax, dword_ptr(REG_B))?;
    asm.print_hex_eax()?;
    asm.newline()?;
    asm.print("rtc: date ")?;
    for (i, sep) in [
        (6, ""),
        (5, "-"),
        (4, "-"),
        (3, " "),
        (2, ":"),
        (1, ":"),
        (0, ""),
    ] {
        asm.a.mov(al, byte_ptr(RAW + i))?;
        asm.call("put2")?;
        if !sep.is_empty() {
            asm.print(sep)?;
        }
    }
    asm.newline()?;
    // Plausible: month 1..12, day 1..31, hour < 24, minute and second < 60.
    for (i, low, high) in [
        (4u32, 1i32, 12i32),
        (3, 1, 31),
        (2, 0, 23),
        (1, 0, 59),
        (0, 0, 59),
    ] {
        let ok = asm.fresh("field_ok");
        asm.a.movzx(eax, byte_ptr(RAW + i))?;
        asm.a.sub(eax, low)?;
        asm.a.cmp(eax, high - low)?;
        asm.jbe(&ok)?;
        asm.a.inc(dword_ptr(FAILS))?;
        asm.print("rtc: FAIL implausible date\n")?;
        asm.here(&ok)?;
    }

    // The shutdown status byte (0x0F) keeps what is written; the old value goes back.
    asm.a.mov(al, 0x0F)?;
    asm.call("cmos_read")?;
    asm.a.mov(bh, al)?;
    for pattern in [0x5Au32, 0xA5] {
        asm.a.mov(ax, 0x0F | (pattern << 8))?;
        asm.call("cmos_write")?;
        asm.a.mov(al, 0x0F)?;
        asm.call("cmos_read")?;
        asm.a.cmp(al, pattern as i32)?;
        asm.jne("rtc_cmos_bad")?;
    }
    asm.print("rtc: cmos 0x0f ok\n")?;
    asm.jmp("rtc_cmos_done")?;
    asm.here("rtc_cmos_bad")?;
    asm.a.inc(dword_ptr(FAILS))?;
    asm.print("rtc: cmos 0x0f FAIL\n")?;
    asm.here("rtc_cmos_done")?;
    asm.a.mov(al, 0x0F)?;
    asm.a.mov(ah, bh)?;
    asm.call("cmos_write")?;

    // The periodic interrupt: IRQ 8 on the slave, the cascade (IR2) open on the master.
    pic_init(asm, "rtc", 0xFB, 0xFE)?;
    asm.a.mov(al, 0x0A)?;
    asm.a.mov(ah, byte_ptr(RATE))?;
    asm.a.or(ah, 0x20)?; // DV = 010: the 32.768 kHz time base
    asm.call("cmos_write")?;
    asm.a.mov(al, 0x0B)?;
    asm.call("cmos_read")?;
    asm.a.mov(ah, al)?;
    asm.a.or(ah, 0x40)?; // PIE
    asm.a.mov(al, 0x0B)?;
    asm.call("cmos_write")?;
    asm.a.mov(al, 0x0C)?; // clear anything already flagged
    asm.call("cmos_read")?;
    print_var(asm, "rtc: periodic hz=", HZ)?;
    print_var(asm, " rate=", RATE)?;
    print_var(asm, " ticks=", TICKS)?;
    asm.newline()?;
    halt_until(asm, |asm| {
        asm.a.mov(eax, dword_ptr(TICKS))?;
        asm.a.inc(eax)?;
        Ok(asm.a.cmp(dword_ptr(COUNT), eax)?)
    })?;
    asm.a.mov(al, 0x0B)?;
    asm.call("cmos_read")?;
    asm.a.mov(ah, al)?;
    asm.a.and(ah, 0xBF)?;
    asm.a.mov(al, 0x0B)?;
    asm.call("cmos_write")?;
    asm.a.mov(al, 0x0C)?;
    asm.call("cmos_read")?;
    pic_mask_all(asm)?;
    asm.a.mov(eax, dword_ptr(TICKS))?;
    asm.a.mov(ebx, dword_ptr(HZ))?;
    expected_tsc_span(asm, "rtc", TSC_KHZ, "rtc_fail")?;
    asm.print("rtc: ticks=")?;
    asm.a.mov(eax, dword_ptr(COUNT))?;
    asm.a.dec(eax)?;
    asm.print_dec_eax()?;
    check_tsc_span(asm, T0, T1, TSC_KHZ, "rtc_fail")?;
    asm.a.cmp(dword_ptr(FAILS), 0)?;
    asm.jne("rtc_fail")?;
    asm.print("rtc: PASS\n")?;
    asm.exit(gabi::EXIT_OK)?;
    asm.here("rtc_fail")?;
    asm.print("rtc: FAIL\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;

    // cmos_read: al = register -> al = value. cmos_write: al = register, ah = value. NMIs stay
    // enabled (index bit 7 clear).
    asm.here("cmos_read")?;
    asm.a.out(0x70u32, al)?;
    asm.a.in_(al, 0x71u32)?;
    asm.a.ret()?;
    asm.here("cmos_write")?;
    asm.a.out(0x70u32, al)?;
    asm.a.mov(al, ah)?;
    asm.a.out(0x71u32, al)?;
    asm.a.ret()?;

    // rtc_to_binary: al = a register's value -> binary (from BCD unless register B's DM).
    asm.here("rtc_to_binary")?;
    asm.a.test(dword_ptr(REG_B), 0x04)?;
    asm.jnz("rtc_to_binary_done")?;
    asm.a.push(ecx)?;
    asm.a.mov(cl, al)?;
    asm.a.and(cl, 0x0F)?;
    asm.a.shr(al, 4)?;
    asm.a.mov(ch, 10)?;
    asm.a.mul(ch)?;
    asm.a.add(al, cl)?;
    asm.a.pop(ecx)?;
    asm.here("rtc_to_binary_done")?;
    asm.a.ret()?;

    // put2: al (0..99) as two decimal digits.
    asm.here("put2")?;
    asm.a.push(eax)?;
    asm.a.movzx(eax, al)?;
    asm.a.mov(ah, 0)?;
    asm.a.push(ecx)?;
    asm.a.mov(cl, 10)?;
    asm.a.div(cl)?;
    asm.a.pop(ecx)?;
    asm.a.add(ax, 0x3030)?;
    asm.call("putc")?;
    asm.a.mov(al, ah)?;
    asm.call("putc")?;
    asm.a.pop(eax)?;
    asm.a.ret()?;

    // The interrupt hook: on IRQ 8 read register C (the RTC raises no more until it is read),
    // time-stamp, EOI the slave then the master.
    asm.here("rtc_hook")?;
    asm.a.cmp(eax, VECTOR)?;
    asm.jne("rtc_hook_done")?;
    asm.a.mov(al, 0x0C)?;
    asm.call("cmos_read")?;
    stamp_first_and_last(asm, COUNT, TICKS, T0, T1)?;
    asm.a.mov(al, 0x20)?;
    asm.a.out(0xA0u32, al)?;
    asm.a.out(0x20u32, al)?;
    asm.here("rtc_hook_done")?;
    asm.a.ret()?;
    tolerance_routine(asm)
}

/// `ioapic`: the PIT's IRQ 0 through the I/O APIC (pin 2, as ACPI's interrupt source override
/// on a PC says) to the local APIC, with the 8259As masked.
fn ioapic(asm: &mut Asm) -> Result {
    const X2: u32 = layout::VAR_SCRATCH;
    const TSC_KHZ: u32 = layout::VAR_SCRATCH + 4;
    const TICKS: u32 = layout::VAR_SCRATCH + 8;
    const RELOAD: u32 = layout::VAR_SCRATCH + 12;
    const T0: u32 = layout::BSS + 0x40;
    const T1: u32 = layout::BSS + 0x48;
    const APIC_ID: u32 = layout::BSS + 0x50;
    const IOREGSEL: u32 = 0xFEC0_0000;
    const IOWIN: u32 = 0xFEC0_0010;
    const PIN: u32 = 2;
    const VECTOR: u32 = 0x34;
    const SPURIOUS: u32 = 0x3F;
    const COUNT: u32 = layout::VAR_IRQ_COUNTS + 4 * (VECTOR - 32);
    // The level-triggered case (`level=1`): the RTC's IRQ 8 on pin 8, which stays asserted
    // until register C is read.
    const LEVEL_PIN: u32 = 8;
    const LEVEL_VECTOR: u32 = 0x38;
    const LEVEL_COUNT: u32 = layout::VAR_IRQ_COUNTS + 4 * (LEVEL_VECTOR - 32);
    const LEVEL_IRR: u32 = layout::BSS + 0x54;
    const L0: u32 = layout::BSS + 0x58;
    const L1: u32 = layout::BSS + 0x60;
    const LEVEL_HZ: u32 = 16;

    asm.interrupts();
    let hook = asm.addr("ioapic_hook");
    asm.a.mov(dword_ptr(layout::VAR_IRQ_HOOK), hook)?;
    asm.find_arg("tsc_khz=")?;
    asm.a.mov(dword_ptr(TSC_KHZ), eax)?;
    arg_or(asm, "ticks=", 50, TICKS)?;
    arg_or(asm, "hz=", 1000, RELOAD)?;
    asm.a.mov(ebx, dword_ptr(RELOAD))?;
    asm.a.mov(eax, PIT_HZ)?;
    asm.a.xor(edx, edx)?;
    asm.a.div(ebx)?;
    asm.a.mov(dword_ptr(RELOAD), eax)?;
    lapic_mode(asm, "ioapic", X2)?;
    pic_mask_all(asm)?;
    asm.call("lapic_enable")?;
    asm.call("lapic_id")?;
    asm.a.mov(dword_ptr(APIC_ID), eax)?;

    // Version register (1): version in bits 7:0, the highest redirection entry in 23:16.
    asm.a.mov(ecx, 1u32)?;
    asm.call("ioapic_rd")?;
    asm.a.mov(ebx, eax)?;
    asm.print("ioapic: version ")?;
    asm.print_hex_eax()?;
    asm.a.shr(eax, 16)?;
    asm.a.movzx(eax, al)?;
    asm.a.inc(eax)?;
    asm.print(" entries=")?;
    asm.print_dec_eax()?;
    print_var(asm, " apic id=", APIC_ID)?;
    print_var(asm, " mode=", X2)?;
    asm.newline()?;
    asm.a.cmp(ebx, u32::MAX)?;
    asm.je("ioapic_absent")?;
    asm.a.shr(ebx, 16)?;
    asm.a.cmp(bl, PIN as i32)?;
    asm.jae("ioapic_present")?;
    asm.here("ioapic_absent")?;
    asm.print("ioapic: FAIL no I/O APIC with a pin 2\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;
    asm.here("ioapic_present")?;

    // Redirection entry: destination (high word) first, then vector, fixed, physical, edge,
    // active high, unmasked.
    asm.a.mov(ecx, 0x11 + 2 * PIN)?;
    asm.a.mov(eax, dword_ptr(APIC_ID))?;
    asm.a.shl(eax, 24)?;
    asm.call("ioapic_wr")?;
    asm.a.mov(ecx, 0x10 + 2 * PIN)?;
    asm.a.mov(eax, VECTOR)?;
    asm.call("ioapic_wr")?;
    asm.call("ioapic_rd")?;
    asm.print("ioapic: pin 2 redirection ")?;
    asm.print_hex_eax()?;
    asm.newline()?;
    asm.a.and(eax, !(1u32 << 12))?; // delivery status may be set for a moment
    asm.a.cmp(eax, VECTOR)?;
    asm.jne("ioapic_fail")?;

    // PIT channel 0, mode 2, lobyte/hibyte.
    asm.a.mov(al, 0x34)?;
    asm.a.out(0x43u32, al)?;
    asm.a.mov(eax, dword_ptr(RELOAD))?;
    asm.a.out(0x40u32, al)?;
    asm.a.mov(al, ah)?;
    asm.a.out(0x40u32, al)?;
    print_var(asm, "ioapic: pit reload=", RELOAD)?;
    print_var(asm, " ticks=", TICKS)?;
    asm.newline()?;
    halt_until(asm, |asm| {
        asm.a.mov(eax, dword_ptr(TICKS))?;
        asm.a.inc(eax)?;
        Ok(asm.a.cmp(dword_ptr(COUNT), eax)?)
    })?;
    // Mask the pin again; the mask bit must read back.
    asm.a.mov(ecx, 0x10 + 2 * PIN)?;
    asm.a.mov(eax, VECTOR | 1 << 16)?;
    asm.call("ioapic_wr")?;
    asm.call("ioapic_rd")?;
    asm.a.test(eax, 1u32 << 16)?;
    asm.jz("ioapic_fail")?;
    asm.a.mov(eax, dword_ptr(TICKS))?;
    asm.a.mul(dword_ptr(RELOAD))?;
    asm.a.mov(ebx, PIT_HZ)?;
    expected_tsc_span(asm, "ioapic", TSC_KHZ, "ioapic_fail")?;
    asm.print("ioapic: ticks=")?;
    asm.a.mov(eax, dword_ptr(COUNT))?;
    asm.a.dec(eax)?;
    asm.print_dec_eax()?;
    check_tsc_span(asm, T0, T1, TSC_KHZ, "ioapic_fail")?;

    // Level: the first interrupt is EOId without clearing the source, so the I/O APIC must
    // deliver it again at once (remote IRR set until the EOI); the second reads register C.
    asm.find_arg("level=")?;
    asm.a.test(eax, eax)?;
    asm.jz("ioapic_pass")?;
    asm.a.mov(ecx, 0x11 + 2 * LEVEL_PIN)?;
    asm.a.mov(eax, dword_ptr(APIC_ID))?;
    asm.a.shl(eax, 24)?;
    asm.call("ioapic_wr")?;
    asm.a.mov(ecx, 0x10 + 2 * LEVEL_PIN)?;
    asm.a.mov(eax, LEVEL_VECTOR | 1 << 15)?;
    asm.call("ioapic_wr")?;
    // RTC periodic interrupt at 16 Hz (rate 12), PIE on, flags cleared.
    asm.a.mov(al, 0x0A)?;
    asm.a.out(0x70u32, al)?;
    asm.a.mov(al, 0x2C)?;
    asm.a.out(0x71u32, al)?;
    asm.a.mov(al, 0x0B)?;
    asm.a.out(0x70u32, al)?;
    asm.a.in_(al, 0x71u32)?;
    asm.a.or(al, 0x40)?;
    asm.a.mov(ah, al)?;
    asm.a.mov(al, 0x0B)?;
    asm.a.out(0x70u32, al)?;
    asm.a.mov(al, ah)?;
    asm.a.out(0x71u32, al)?;
    asm.a.mov(al, 0x0C)?;
    asm.a.out(0x70u32, al)?;
    asm.a.in_(al, 0x71u32)?;
    halt_until(asm, |asm| Ok(asm.a.cmp(dword_ptr(LEVEL_COUNT), 2)?))?;
    // PIE off, the pin masked; remote IRR must be clear after the last EOI.
    asm.a.mov(al, 0x0B)?;
    asm.a.out(0x70u32, al)?;
    asm.a.in_(al, 0x71u32)?;
    asm.a.and(al, 0xBF)?;
    asm.a.mov(ah, al)?;
    asm.a.mov(al, 0x0B)?;
    asm.a.out(0x70u32, al)?;
    asm.a.mov(al, ah)?;
    asm.a.out(0x71u32, al)?;
    asm.a.mov(al, 0x0C)?;
    asm.a.out(0x70u32, al)?;
    asm.a.in_(al, 0x71u32)?;
    asm.a.mov(ecx, 0x10 + 2 * LEVEL_PIN)?;
    asm.call("ioapic_rd")?;
    asm.a.mov(esi, eax)?;
    asm.a.or(eax, 1 << 16)?;
    asm.call("ioapic_wr")?;
    asm.print("ioapic: level pin 8 remote-irr in service=")?;
    asm.a.mov(eax, dword_ptr(LEVEL_IRR))?;
    asm.a.shr(eax, 14)?;
    asm.a.and(eax, 1)?;
    asm.print_dec_eax()?;
    asm.print(" after eoi=")?;
    asm.a.mov(eax, esi)?;
    asm.a.shr(eax, 14)?;
    asm.a.and(eax, 1)?;
    asm.print_dec_eax()?;
    asm.print(" again after tsc=")?;
    asm.a.mov(eax, dword_ptr(L1))?;
    asm.a.sub(eax, dword_ptr(L0))?;
    asm.a.mov(ebx, eax)?;
    asm.print_dec_eax()?;
    asm.print(" period=")?;
    asm.a.mov(eax, dword_ptr(TSC_KHZ))?;
    asm.a.imul_3(eax, eax, (1000 / LEVEL_HZ) as i32)?;
    asm.print_dec_eax()?;
    asm.newline()?;
    // Again within half a period: redelivered, not the next period's interrupt.
    asm.a.shr(eax, 1)?;
    asm.a.cmp(ebx, eax)?;
    asm.jae("ioapic_fail")?;
    asm.a.test(dword_ptr(LEVEL_IRR), 1 << 14)?;
    asm.jz("ioapic_fail")?;
    asm.a.test(esi, 1 << 14)?;
    asm.jnz("ioapic_fail")?;
    asm.here("ioapic_pass")?;
    asm.print("ioapic: PASS\n")?;
    asm.exit(gabi::EXIT_OK)?;
    asm.here("ioapic_fail")?;
    asm.print("ioapic: FAIL\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;

    // ioapic_rd: ecx = register -> eax. ioapic_wr: ecx = register, eax = value.
    asm.here("ioapic_rd")?;
    asm.a.mov(dword_ptr(IOREGSEL), ecx)?;
    asm.a.mov(eax, dword_ptr(IOWIN))?;
    asm.a.ret()?;
    asm.here("ioapic_wr")?;
    asm.a.mov(dword_ptr(IOREGSEL), ecx)?;
    asm.a.mov(dword_ptr(IOWIN), eax)?;
    asm.a.ret()?;

    // The interrupt hook: time-stamp the timer's arrivals; EOI the local APIC (not for the
    // spurious vector).
    asm.here("ioapic_hook")?;
    asm.a.cmp(eax, SPURIOUS)?;
    asm.je("ioapic_hook_done")?;
    asm.a.cmp(eax, LEVEL_VECTOR)?;
    asm.jne("ioapic_hook_pit")?;
    asm.a.rdtsc()?;
    asm.a.cmp(dword_ptr(LEVEL_COUNT), 1)?;
    asm.jne("ioapic_hook_level_again")?;
    // First: note remote IRR, EOI with the line still asserted.
    asm.a.mov(dword_ptr(L0), eax)?;
    asm.a.mov(ecx, 0x10 + 2 * LEVEL_PIN)?;
    asm.call("ioapic_rd")?;
    asm.a.mov(dword_ptr(LEVEL_IRR), eax)?;
    asm.jmp("ioapic_hook_eoi")?;
    asm.here("ioapic_hook_level_again")?;
    asm.a.cmp(dword_ptr(LEVEL_COUNT), 2)?;
    asm.jne("ioapic_hook_level_clear")?;
    asm.a.mov(dword_ptr(L1), eax)?;
    asm.here("ioapic_hook_level_clear")?;
    asm.a.mov(al, 0x0C)?;
    asm.a.out(0x70u32, al)?;
    asm.a.in_(al, 0x71u32)?;
    asm.jmp("ioapic_hook_eoi")?;
    asm.here("ioapic_hook_pit")?;
    asm.a.cmp(eax, VECTOR)?;
    asm.jne("ioapic_hook_eoi")?;
    stamp_first_and_last(asm, COUNT, TICKS, T0, T1)?;
    asm.here("ioapic_hook_eoi")?;
    asm.a.mov(ecx, 0xB0u32)?;
    asm.a.xor(eax, eax)?;
    asm.call("lapic_wr")?;
    asm.here("ioapic_hook_done")?;
    asm.a.ret()?;
    lapic_routines(asm, "lapic", X2)?;
    tolerance_routine(asm)
}

/// Where the `smp` guest's APs start (SIPI vector 0x08) and their stacks (4 KiB each, by
/// start order, above the image and the boot information).
const SMP_TRAMPOLINE: u32 = 0x8000;
const SMP_AP_STACKS: u32 = 0x21_0000;
/// Shared-counter increments per CPU and IPI round trips between the BSP and AP 1.
const SMP_ADDS: u32 = 100_000;
const SMP_ROUNDS: u32 = 100;
const SMP_MAX_CPUS: u32 = 16;

/// The real-mode start of an AP, copied to `SMP_TRAMPOLINE`: DS = CS, LGDT of the guest's GDT
/// (32-bit operand size: the base is above 16 MiB's reach otherwise), CR0.PE, a far jump to
/// `entry` with the flat code selector. Hand-encoded (16-bit code).
fn smp_trampoline(gdt: u32, entry: u32) -> Vec<u8> {
    const GDTR_AT: u16 = 0x20;
    let mut code = vec![
        0xFA, // cli
        0x8C, 0xC8, // mov ax, cs
        0x8E, 0xD8, // mov ds, ax
        0x66, 0x0F, 0x01, 0x16, // o32 lgdt [disp16]
    ];
    code.extend_from_slice(&GDTR_AT.to_le_bytes());
    code.extend_from_slice(&[
        0x0F, 0x20, 0xC0, // mov eax, cr0
        0x0C, 0x01, // or al, 1
        0x0F, 0x22, 0xC0, // mov cr0, eax
        0x66, 0xEA, // o32 jmp far ptr16:32
    ]);
    code.extend_from_slice(&entry.to_le_bytes());
    code.extend_from_slice(&layout::CODE_SELECTOR.to_le_bytes());
    code.resize(usize::from(GDTR_AT), 0xF4); // hlt padding
    code.extend_from_slice(&crate::asm::pseudo_descriptor(24, gdt));
    code
}

/// `smp`: the BSP starts `cpus=N` - 1 APs with INIT-SIPI-SIPI; each announces its APIC ID and
/// adds to a shared counter with LOCK; then IPI ping-pong between the BSP and AP 1.
fn smp(asm: &mut Asm) -> Result {
    const X2: u32 = layout::VAR_SCRATCH;
    const CPUS: u32 = layout::VAR_SCRATCH + 4;
    const LOCK: u32 = layout::VAR_SCRATCH + 8;
    const ALIVE: u32 = layout::VAR_SCRATCH + 12;
    const NEXT: u32 = layout::BSS + 0x34;
    const COUNTER: u32 = layout::BSS + 0x38;
    const DONE: u32 = layout::BSS + 0x3C;
    const BSP_ID: u32 = layout::BSS + 0x40;
    const AP1_ID: u32 = layout::BSS + 0x44;
    const FAILS: u32 = layout::BSS + 0x48;
    const PING: u32 = 0x35;
    const PONG: u32 = 0x36;
    const SPURIOUS: u32 = 0x3F;
    const COUNT_PING: u32 = layout::VAR_IRQ_COUNTS + 4 * (PING - 32);
    const COUNT_PONG: u32 = layout::VAR_IRQ_COUNTS + 4 * (PONG - 32);
    // ICR low: fixed delivery, physical, edge, level "assert" (bit 14).
    const ICR_FIXED: u32 = 1 << 14;
    // INIT (101b) and STARTUP (110b) to all but self (shorthand 11b), assert.
    const ICR_INIT_OTHERS: u32 = 0x000C_4500;
    const ICR_SIPI_OTHERS: u32 = 0x000C_4600 | (SMP_TRAMPOLINE >> 12);

    asm.interrupts();
    let hook = asm.addr("smp_hook");
    asm.a.mov(dword_ptr(layout::VAR_IRQ_HOOK), hook)?;
    arg_or(asm, "cpus=", 1, CPUS)?;
    asm.a.mov(eax, dword_ptr(CPUS))?;
    asm.a.dec(eax)?;
    asm.a.cmp(eax, SMP_MAX_CPUS - 1)?;
    asm.jbe("smp_cpus_ok")?;
    asm.print("smp: FAIL cpus must be 1 to 16\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;
    asm.here("smp_cpus_ok")?;
    lapic_mode(asm, "smp", X2)?;
    pic_mask_all(asm)?;
    asm.call("lapic_enable")?;
    asm.call("lapic_id")?;
    asm.a.mov(dword_ptr(BSP_ID), eax)?;
    print_var(asm, "smp: bsp apic id=", BSP_ID)?;
    print_var(asm, " cpus=", CPUS)?;
    print_var(asm, " mode=", X2)?;
    asm.newline()?;

    asm.a.cmp(dword_ptr(CPUS), 1)?;
    asm.je("smp_count")?;
    // The trampoline below 1 MiB, then INIT, SIPI and (if not all are up) SIPI again.
    let entry = asm.addr("smp_ap_entry");
    let gdt = asm.addr("gdt");
    let trampoline = smp_trampoline(gdt, entry);
    let len = trampoline.len() as u32;
    let from = asm.data("smp_trampoline", trampoline);
    asm.a.mov(esi, from)?;
    asm.a.mov(edi, SMP_TRAMPOLINE)?;
    asm.a.mov(ecx, len)?;
    asm.a.rep().movsb()?;
    asm.a.xor(ecx, ecx)?;
    asm.a.mov(eax, ICR_INIT_OTHERS)?;
    asm.call("smp_ipi")?;
    asm.a.mov(ecx, 1u32 << 20)?; // "10 ms"
    asm.call("smp_delay")?;
    asm.a.mov(eax, ICR_SIPI_OTHERS)?;
    asm.call("smp_ipi")?;
    asm.a.mov(ecx, 1u32 << 16)?; // "200 us"
    asm.call("smp_delay")?;
    asm.a.mov(eax, dword_ptr(CPUS))?;
    asm.a.dec(eax)?;
    asm.a.cmp(dword_ptr(ALIVE), eax)?;
    asm.jae("smp_up")?;
    asm.a.mov(eax, ICR_SIPI_OTHERS)?;
    asm.call("smp_ipi")?;
    // Wait for them (bounded).
    asm.a.mov(ecx, 1u32 << 28)?;
    asm.here("smp_wait_up")?;
    asm.a.mov(eax, dword_ptr(CPUS))?;
    asm.a.dec(eax)?;
    asm.a.cmp(dword_ptr(ALIVE), eax)?;
    asm.jae("smp_up")?;
    asm.a.pause()?;
    asm.a.dec(ecx)?;
    asm.jnz("smp_wait_up")?;
    asm.here("smp_up")?;
    asm.spin_lock(LOCK)?;
    print_var(asm, "smp: aps up=", ALIVE)?;
    asm.newline()?;
    asm.spin_unlock(LOCK)?;
    asm.a.mov(eax, dword_ptr(CPUS))?;
    asm.a.dec(eax)?;
    asm.a.cmp(dword_ptr(ALIVE), eax)?;
    asm.jne("smp_fail")?;

    // The shared counter, here as on every AP.
    asm.here("smp_count")?;
    asm.call("smp_adds")?;
    asm.here("smp_wait_done")?;
    asm.a.mov(eax, dword_ptr(CPUS))?;
    asm.a.dec(eax)?;
    asm.a.cmp(dword_ptr(DONE), eax)?;
    asm.jae("smp_counted")?;
    asm.a.pause()?;
    asm.jmp("smp_wait_done")?;
    asm.here("smp_counted")?;
    asm.a.mov(eax, dword_ptr(CPUS))?;
    asm.a.imul_3(ebx, eax, SMP_ADDS as i32)?;
    asm.spin_lock(LOCK)?;
    print_var(asm, "smp: counter=", COUNTER)?;
    asm.print(" expected=")?;
    asm.a.mov(eax, ebx)?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.spin_unlock(LOCK)?;
    asm.a.cmp(dword_ptr(COUNTER), ebx)?;
    asm.je("smp_counter_ok")?;
    asm.a.inc(dword_ptr(FAILS))?;
    asm.here("smp_counter_ok")?;

    // Ping-pong: a fixed IPI to AP 1, whose hook answers with one to the BSP; one at a time.
    asm.a.cmp(dword_ptr(CPUS), 1)?;
    asm.je("smp_verdict")?;
    asm.a.mov(ebx, 1u32)?;
    asm.here("smp_ping")?;
    asm.a.mov(ecx, dword_ptr(AP1_ID))?;
    asm.a.mov(eax, ICR_FIXED | PING)?;
    asm.call("smp_ipi")?;
    halt_until(asm, |asm| Ok(asm.a.cmp(dword_ptr(COUNT_PONG), ebx)?))?;
    asm.a.inc(ebx)?;
    asm.a.cmp(ebx, SMP_ROUNDS)?;
    asm.jbe("smp_ping")?;
    asm.spin_lock(LOCK)?;
    asm.print("smp: pingpong rounds=")?;
    asm.a.mov(eax, SMP_ROUNDS)?;
    asm.print_dec_eax()?;
    print_var(asm, " pings=", COUNT_PING)?;
    print_var(asm, " pongs=", COUNT_PONG)?;
    asm.newline()?;
    asm.spin_unlock(LOCK)?;
    asm.a.cmp(dword_ptr(COUNT_PING), SMP_ROUNDS)?;
    asm.jne("smp_fail")?;
    asm.a.cmp(dword_ptr(COUNT_PONG), SMP_ROUNDS)?;
    asm.jne("smp_fail")?;
    asm.here("smp_verdict")?;
    asm.a.cmp(dword_ptr(FAILS), 0)?;
    asm.jne("smp_fail")?;
    asm.spin_lock(LOCK)?;
    asm.print("smp: PASS\n")?;
    asm.exit(gabi::EXIT_OK)?;
    asm.here("smp_fail")?;
    asm.spin_lock(LOCK)?;
    asm.print("smp: FAIL\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;

    // An AP, in 32-bit protected mode from the trampoline: segments, a stack by start order,
    // the IDT, its local APIC; announce, count, then idle taking IPIs.
    asm.here("smp_ap_entry")?;
    asm.a.mov(eax, u32::from(layout::DATA_SELECTOR))?;
    for segment in [ds, es, fs, gs, ss] {
        asm.a.mov(segment, ax)?;
    }
    asm.a.mov(eax, 1u32)?;
    asm.a.lock().xadd(dword_ptr(NEXT), eax)?;
    asm.a.inc(eax)?; // AP index 1, 2, ...
    asm.a.mov(esp, eax)?;
    asm.a.shl(esp, 12)?;
    asm.a.add(esp, SMP_AP_STACKS as i32)?;
    asm.a.cld()?;
    let idtr = asm.addr("idtr");
    asm.a.lidt(ptr(idtr))?;
    asm.a.mov(ebx, eax)?;
    asm.call("lapic_enable")?;
    asm.call("lapic_id")?;
    asm.a.cmp(ebx, 1)?;
    asm.jne("smp_ap_not_first")?;
    asm.a.mov(dword_ptr(AP1_ID), eax)?;
    asm.here("smp_ap_not_first")?;
    asm.spin_lock(LOCK)?;
    asm.print("smp: ap ")?;
    asm.a.xchg(eax, ebx)?;
    asm.print_dec_eax()?;
    asm.print(" apic id=")?;
    asm.a.xchg(eax, ebx)?;
    asm.print_dec_eax()?;
    asm.newline()?;
    asm.spin_unlock(LOCK)?;
    asm.a.lock().inc(dword_ptr(ALIVE))?;
    asm.call("smp_adds")?;
    asm.a.lock().inc(dword_ptr(DONE))?;
    asm.here("smp_ap_idle")?;
    asm.a.sti()?;
    asm.a.hlt()?;
    asm.jmp("smp_ap_idle")?;

    // smp_adds: SMP_ADDS locked increments of the shared counter.
    asm.here("smp_adds")?;
    asm.a.push(ecx)?;
    asm.a.mov(ecx, SMP_ADDS)?;
    asm.here("smp_adds_loop")?;
    asm.a.lock().add(dword_ptr(COUNTER), 1)?;
    asm.a.dec(ecx)?;
    asm.jnz("smp_adds_loop")?;
    asm.a.pop(ecx)?;
    asm.a.ret()?;

    // smp_delay: ecx iterations of PAUSE.
    asm.here("smp_delay")?;
    asm.a.pause()?;
    asm.a.dec(ecx)?;
    asm.jnz("smp_delay")?;
    asm.a.ret()?;

    // smp_ipi: ecx = destination APIC ID, eax = ICR low. xAPIC: ICR high then low, then wait
    // for the delivery status to clear; x2APIC: one WRMSR of the 64-bit ICR.
    asm.here("smp_ipi")?;
    asm.a.pushad()?;
    asm.a.cmp(dword_ptr(X2), 0)?;
    asm.je("smp_ipi_xapic")?;
    asm.a.mov(edx, ecx)?;
    asm.a.mov(ecx, 0x830u32)?;
    asm.a.wrmsr()?;
    asm.jmp("smp_ipi_done")?;
    asm.here("smp_ipi_xapic")?;
    asm.a.shl(ecx, 24)?;
    asm.a.mov(dword_ptr(0xFEE0_0310u32), ecx)?;
    asm.a.mov(dword_ptr(0xFEE0_0300u32), eax)?;
    asm.here("smp_ipi_wait")?;
    asm.a.test(dword_ptr(0xFEE0_0300u32), 1 << 12)?;
    asm.jnz("smp_ipi_wait")?;
    asm.here("smp_ipi_done")?;
    asm.a.popad()?;
    asm.a.ret()?;

    // The interrupt hook: a ping (on AP 1) is answered with a pong to the BSP; EOI all but
    // the spurious vector.
    asm.here("smp_hook")?;
    asm.a.cmp(eax, SPURIOUS)?;
    asm.je("smp_hook_done")?;
    asm.a.cmp(eax, PING)?;
    asm.jne("smp_hook_eoi")?;
    asm.a.mov(ecx, dword_ptr(BSP_ID))?;
    asm.a.mov(eax, ICR_FIXED | PONG)?;
    asm.call("smp_ipi")?;
    asm.here("smp_hook_eoi")?;
    asm.a.mov(ecx, 0xB0u32)?;
    asm.a.xor(eax, eax)?;
    asm.call("lapic_wr")?;
    asm.here("smp_hook_done")?;
    asm.a.ret()?;
    lapic_routines(asm, "lapic", X2)
}

/// Where the `paging` guest keeps its page tables and data (physical; all below 4 MiB).
mod paging_layout {
    /// 32-bit page directory, and its page table for the 4 KiB page.
    pub const PD32: u32 = 0x30_0000;
    pub const PT32: u32 = 0x30_1000;
    /// The data page: strings at the offsets below, buffers for INSB.
    pub const DATA: u32 = 0x30_2000;
    /// 4-level tables.
    pub const PML4: u32 = 0x30_3000;
    pub const PDPT: u32 = 0x30_4000;
    pub const PD64: u32 = 0x30_5000;
    pub const PT64: u32 = 0x30_6000;
    pub const TABLES_END: u32 = 0x30_7000;
    /// The linear address of the data page in both modes (a 4 KiB mapping).
    pub const DATA_VA: u32 = 0x40_0000;
    /// 32-bit paging maps the low 4 MiB again here (the code runs there).
    pub const ALIAS32: u32 = 0x80_0000;
    /// 4-level paging maps the low 1 GiB again here (PML4 entry 256).
    pub const ALIAS64: u64 = 0xFFFF_8000_0000_0000;
    /// Offsets in the data page.
    pub const MSG32: u32 = 0x000;
    pub const IN32: u32 = 0x100;
    pub const MSG64: u32 = 0x200;
    pub const IN64: u32 = 0x300;
    pub const PASS64: u32 = 0x400;
    pub const FAIL64: u32 = 0x600;
    /// A port no device claims (reads all ones).
    pub const UNCLAIMED_PORT: u32 = 0x7E0;
    /// INSB count.
    pub const IN_LEN: u32 = 16;
}

const PAGING_MSG32: &str = "paging: 32-bit rep outsb through a 4 KiB page\n";
const PAGING_MSG64: &str = "paging: 64-bit rep outsb through a 4 KiB page\n";
const PAGING_PASS64: &str = "paging: 64-bit PASS\n";
const PAGING_FAIL64: &str = "paging: 64-bit FAIL\n";
/// "Herm", the hypervisor leaf's EBX.
const HERM: u32 = u32::from_le_bytes(*b"Herm");

/// The 64-bit half of `paging`, position independent (entered from compatibility mode with a
/// far return to selector 0x18).
fn paging_long_mode() -> Result<Vec<u8>> {
    use paging_layout::*;
    let mut a = CodeAssembler::new(64)?;
    let mut high = a.create_label();
    let mut fail = a.create_label();
    a.mov(eax, 0x10u32)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(esp, layout::STACK_TOP)?;
    // Continue at the high alias: from here on RIP is far from any physical address.
    a.lea(rax, ptr(high))?;
    a.mov(rcx, ALIAS64)?;
    a.add(rax, rcx)?;
    a.jmp(rax)?;
    a.set_label(&mut high)?;
    a.mov(eax, 0x4000_0000u32)?;
    a.xor(ecx, ecx)?;
    a.cpuid()?;
    a.cmp(ebx, HERM as i32)?;
    a.jne(fail)?;
    // Port I/O: the UART's line status says the transmitter is empty.
    a.mov(edx, 0x3FDu32)?;
    a.in_(al, dx)?;
    a.test(al, 0x20)?;
    a.jz(fail)?;
    a.cld()?;
    a.mov(esi, DATA_VA + MSG64)?;
    a.mov(ecx, PAGING_MSG64.len() as u32)?;
    a.mov(edx, 0x3F8u32)?;
    a.rep().outsb()?;
    a.mov(edi, DATA_VA + IN64)?;
    a.mov(ecx, IN_LEN)?;
    a.mov(edx, UNCLAIMED_PORT)?;
    a.rep().insb()?;
    a.test(ecx, ecx)?;
    a.jnz(fail)?;
    // Read back through the identity mapping: the bytes landed on the data page.
    a.mov(edi, DATA + IN64)?;
    a.mov(ecx, IN_LEN)?;
    a.mov(al, 0xFF)?;
    a.repe().scasb()?;
    a.jne(fail)?;
    a.mov(esi, DATA_VA + PASS64)?;
    a.mov(ecx, PAGING_PASS64.len() as u32)?;
    a.mov(edx, 0x3F8u32)?;
    a.rep().outsb()?;
    a.xor(eax, eax)?;
    a.out(u32::from(gabi::DEBUG_EXIT_PORT), eax)?;
    a.hlt()?;
    a.set_label(&mut fail)?;
    a.mov(esi, DATA_VA + FAIL64)?;
    a.mov(ecx, PAGING_FAIL64.len() as u32)?;
    a.mov(edx, 0x3F8u32)?;
    a.rep().outsb()?;
    a.mov(eax, 1u32)?;
    a.out(u32::from(gabi::DEBUG_EXIT_PORT), eax)?;
    a.hlt()?;
    Ok(a.assemble(0)?)
}

fn paging(asm: &mut Asm) -> Result {
    use paging_layout::*;
    asm.print("paging: start\n")?;
    asm.a.cld()?;
    asm.a.mov(edi, PD32)?;
    asm.a.mov(ecx, (TABLES_END - PD32) / 4)?;
    asm.a.xor(eax, eax)?;
    asm.a.rep().stosd()?;
    for (text, off) in [
        (PAGING_MSG32, MSG32),
        (PAGING_MSG64, MSG64),
        (PAGING_PASS64, PASS64),
        (PAGING_FAIL64, FAIL64),
    ] {
        let at = asm.str(text);
        asm.a.mov(esi, at)?;
        asm.a.mov(edi, DATA + off)?;
        asm.a.mov(ecx, text.len() as u32)?;
        asm.a.rep().movsb()?;
    }
    // 32-bit paging: 4 MiB identity page, the 4 KiB data page, the 4 MiB alias.
    asm.a.mov(dword_ptr(PD32), 0x83u32)?;
    asm.a.mov(dword_ptr(PD32 + 4), PT32 | 3)?;
    asm.a.mov(dword_ptr(PD32 + (ALIAS32 >> 22) * 4), 0x83u32)?;
    asm.a.mov(dword_ptr(PT32), DATA | 3)?;
    asm.a.mov(eax, cr4)?;
    asm.a.or(eax, 0x10)?; // PSE
    asm.a.mov(cr4, eax)?;
    asm.a.mov(eax, PD32)?;
    asm.a.mov(cr3, eax)?;
    asm.a.mov(eax, cr0)?;
    asm.a.or(eax, 0x8000_0000u32 as i32)?;
    asm.a.mov(cr0, eax)?;
    // A near return to an absolute address (the .text checks allow no indirect jumps).
    let alias = asm.addr("paging_alias32") + ALIAS32;
    asm.a.push(alias)?;
    asm.a.ret()?;
    asm.here("paging_alias32")?;
    asm.print("paging: 32-bit paging on, running at the alias\n")?;
    asm.a.mov(eax, 0x4000_0000u32)?;
    asm.a.xor(ecx, ecx)?;
    asm.a.cpuid()?;
    asm.a.cmp(ebx, HERM as i32)?;
    asm.jne("paging_fail32")?;
    asm.print("paging: 32-bit cpuid ok\n")?;
    asm.a.mov(esi, DATA_VA + MSG32)?;
    asm.a.mov(ecx, PAGING_MSG32.len() as u32)?;
    asm.a.mov(edx, 0x3F8u32)?;
    asm.a.rep().outsb()?;
    asm.a.mov(edi, DATA_VA + IN32)?;
    asm.a.mov(ecx, IN_LEN)?;
    asm.a.mov(edx, UNCLAIMED_PORT)?;
    asm.a.rep().insb()?;
    asm.a.mov(eax, dword_ptr(DATA + IN32))?;
    asm.print("paging: 32-bit rep insb ")?;
    asm.print_hex_eax()?;
    asm.newline()?;
    asm.a.mov(edi, DATA + IN32)?;
    asm.a.mov(ecx, IN_LEN)?;
    asm.a.mov(al, 0xFF)?;
    asm.a.repe().scasb()?;
    asm.jne("paging_fail32")?;
    asm.print("paging: 32-bit PASS\n")?;
    let back = asm.addr("paging_identity");
    asm.a.push(back)?;
    asm.a.ret()?;
    asm.here("paging_identity")?;
    // Paging off, then 4-level paging and long mode (SDM vol. 3A 10.8.5).
    asm.a.mov(eax, cr0)?;
    asm.a.and(eax, 0x7FFF_FFFF)?;
    asm.a.mov(cr0, eax)?;
    asm.a.mov(dword_ptr(PML4), PDPT | 3)?;
    asm.a.mov(dword_ptr(PML4 + 256 * 8), PDPT | 3)?;
    asm.a.mov(dword_ptr(PDPT), PD64 | 3)?;
    asm.a.mov(dword_ptr(PD64), 0x83u32)?;
    asm.a.mov(dword_ptr(PD64 + 8), 0x20_0083u32)?;
    asm.a.mov(dword_ptr(PD64 + 16), PT64 | 3)?;
    asm.a.mov(dword_ptr(PT64), DATA | 3)?;
    asm.a.mov(eax, cr4)?;
    asm.a.and(eax, !0x10)?;
    asm.a.or(eax, 0x20)?; // PAE
    asm.a.mov(cr4, eax)?;
    asm.a.mov(eax, PML4)?;
    asm.a.mov(cr3, eax)?;
    asm.a.mov(ecx, 0xC000_0080u32)?;
    asm.a.rdmsr()?;
    asm.a.or(eax, 0x100)?; // LME
    asm.a.wrmsr()?;
    let gdt: Vec<u8> = [
        0u64,
        0x00CF_9A00_0000_FFFF,
        0x00CF_9200_0000_FFFF,
        0x00AF_9A00_0000_FFFF,
    ]
    .iter()
    .flat_map(|d| d.to_le_bytes())
    .collect();
    let gdt_addr = asm.data("paging_gdt", gdt);
    let gdtr = asm.data("paging_gdtr", crate::asm::pseudo_descriptor(32, gdt_addr));
    asm.a.lgdt(ptr(gdtr))?;
    asm.a.mov(eax, cr0)?;
    asm.a.or(eax, 0x8000_0000u32 as i32)?;
    asm.a.mov(cr0, eax)?;
    let long = asm.data("paging_long", paging_long_mode()?);
    asm.a.push(0x18)?;
    asm.a.push(long)?;
    asm.a.retf()?;
    asm.here("paging_fail32")?;
    asm.print("paging: 32-bit FAIL\n")?;
    asm.exit(1)
}

/// The unclaimed page the `mmio` guest reads and writes.
const MMIO_UNCLAIMED: u32 = 0xE000_0000;
const IOAPIC_BASE: u32 = 0xFEC0_0000;

fn mmio(asm: &mut Asm) -> Result {
    asm.print("mmio: start\n")?;
    asm.a.mov(eax, dword_ptr(MMIO_UNCLAIMED))?;
    asm.print("mmio: read ")?;
    asm.print_hex_eax()?;
    asm.newline()?;
    asm.a.cmp(eax, -1)?;
    asm.jne("mmio_fail")?;
    asm.a.mov(dword_ptr(MMIO_UNCLAIMED + 4), 0x1234_5678u32)?;
    asm.a.mov(eax, dword_ptr(MMIO_UNCLAIMED + 4))?;
    asm.a.cmp(eax, -1)?;
    asm.jne("mmio_fail")?;
    asm.a.movzx(eax, byte_ptr(MMIO_UNCLAIMED + 0xFFF))?;
    asm.a.cmp(eax, 0xFF)?;
    asm.jne("mmio_fail")?;
    asm.a.or(dword_ptr(MMIO_UNCLAIMED + 0x10), 1)?;
    asm.print("mmio: unclaimed page ok\n")?;
    cpuid(asm, 1)?;
    asm.a.mov(dword_ptr(IOAPIC_BASE), 1u32)?;
    asm.a.mov(eax, dword_ptr(IOAPIC_BASE + 0x10))?;
    asm.a.test(edx, 1 << 9)?;
    asm.jz("mmio_no_apic")?;
    asm.print("mmio: ioapic version ")?;
    asm.print_hex_eax()?;
    asm.newline()?;
    asm.a.cmp(eax, 0x0017_0011)?;
    asm.jne("mmio_fail")?;
    asm.jmp("mmio_pass")?;
    asm.here("mmio_no_apic")?;
    asm.print("mmio: no local APIC, ioapic reads ")?;
    asm.print_hex_eax()?;
    asm.newline()?;
    asm.a.cmp(eax, -1)?;
    asm.jne("mmio_fail")?;
    asm.here("mmio_pass")?;
    asm.print("mmio: PASS\n")?;
    asm.exit(gabi::EXIT_OK)?;
    asm.here("mmio_fail")?;
    asm.print("mmio: FAIL\n")?;
    asm.exit(1)
}

// ---- devreset: device reset state checked from inside the guest, across resets. ----

/// `in al, port` zero-extended into eax.
fn inb(asm: &mut Asm, port: u32) -> Result {
    asm.a.xor(eax, eax)?;
    asm.a.mov(dx, port)?;
    Ok(asm.a.in_(al, dx)?)
}

/// `out port, value` (a byte).
fn outb(asm: &mut Asm, port: u32, value: u32) -> Result {
    asm.a.mov(al, value)?;
    asm.a.mov(dx, port)?;
    Ok(asm.a.out(dx, al)?)
}

/// eax (as read) must be `expected`, else `dr_expect` names `what` and exits with 1.
fn dr_expect(asm: &mut Asm, what: &str, expected: u32) -> Result {
    let name = asm.str(what);
    asm.a.mov(ebx, expected)?;
    asm.a.mov(esi, name)?;
    asm.call("dr_expect")
}

/// RDMSR `msr` -> eax must be `expected`.
fn dr_expect_msr(asm: &mut Asm, msr: u32, what: &str, expected: u32) -> Result {
    asm.a.mov(ecx, msr)?;
    asm.a.rdmsr()?;
    dr_expect(asm, what, expected)
}

/// `devreset`: on every boot, reads what an OS can observe of the PIC, PIT, RTC, UART and (with
/// a local APIC offering x2APIC) the local APIC and checks it is the reset state of our models;
/// then dirties all of them and resets through port 0xCF9, until `cycles=K` resets are done.
fn devreset(asm: &mut Asm) -> Result {
    const BOOT: u32 = layout::VAR_SCRATCH;
    const CYCLES: u32 = layout::VAR_SCRATCH + 4;
    const APIC: u32 = layout::VAR_SCRATCH + 8;
    const RTC_MASK: u32 = layout::VAR_SCRATCH + 12;
    const TRACE: u32 = layout::BSS + 0x40;
    const PIC_RTC: u32 = layout::VAR_IRQ_COUNTS + 4 * 8;
    const PIC_PIT: u32 = layout::VAR_IRQ_COUNTS;
    const APIC_TIMER: u32 = layout::VAR_IRQ_COUNTS + 4 * (0x30 - 32);

    asm.interrupts();
    arg_or(asm, "boot=", 0, BOOT)?;
    arg_or(asm, "cycles=", 10, CYCLES)?;
    arg_or(asm, "trace=", 0, TRACE)?;

    // The UART first (nothing printed yet): PC16550D Table III, divisor 12 (ours).
    for (port, what, expected) in [
        (0x3FB, "uart lcr", 0u32),
        (0x3F9, "uart ier", 0),
        (0x3FA, "uart iir", 0x01),
        (0x3FC, "uart mcr", 0),
        (0x3FD, "uart lsr", 0x60),
        (0x3FE, "uart msr", 0xB0),
        (0x3FF, "uart scr", 0),
    ] {
        inb(asm, port)?;
        dr_expect(asm, what, expected)?;
    }
    outb(asm, 0x3FB, 0x80)?;
    inb(asm, 0x3F8)?;
    dr_expect(asm, "uart dll", 12)?;
    inb(asm, 0x3F9)?;
    dr_expect(asm, "uart dlm", 0)?;
    outb(asm, 0x3FB, 0)?;

    // 8259A pair: all masked, nothing requested or in service, IRR selected for reads, ELCR 0.
    for (port, what, expected) in [
        (0x21, "pic master imr", 0xFFu32),
        (0xA1, "pic slave imr", 0xFF),
        (0x20, "pic master irr", 0),
        (0xA0, "pic slave irr", 0),
        (0x4D0, "pic elcr1", 0),
        (0x4D1, "pic elcr2", 0),
    ] {
        inb(asm, port)?;
        dr_expect(asm, what, expected)?;
    }
    for (port, what) in [(0x20, "pic master isr"), (0xA0, "pic slave isr")] {
        outb(asm, port, 0x0B)?;
        inb(asm, port)?;
        dr_expect(asm, what, 0)?;
    }

    // 8254: each channel's read-back status (OUT high, lobyte/hibyte mode 3 binary, no null
    // count) and count 0; port 0x61 gate 2 and speaker off, OUT2 high.
    for chan in 0..3u32 {
        outb(asm, 0x43, 0xC0 | (2 << chan))?;
        inb(asm, 0x40 + chan)?;
        dr_expect(asm, &format!("pit channel {chan} status"), 0xB6)?;
        inb(asm, 0x40 + chan)?;
        asm.a.mov(ecx, eax)?;
        inb(asm, 0x40 + chan)?;
        asm.a.shl(eax, 8)?;
        asm.a.or(eax, ecx)?;
        dr_expect(asm, &format!("pit channel {chan} count"), 0)?;
    }
    inb(asm, 0x61)?;
    asm.a.and(eax, 0x2F)?;
    dr_expect(asm, "pit port 0x61", 0x20)?;

    // RTC: register B's PIE, AIE, UIE and SQWE clear (the RESET pin), register C clear. IRQF
    // is always checked; PF only when register A selects no periodic rate (PF latches at the
    // rate whatever PIE says), UF and AF only with SET (no updates happen then). From the
    // second boot on the previous boot left rate 0 and SET, with PF latched, before the reset.
    asm.a.mov(dword_ptr(RTC_MASK), 0x80u32)?;
    outb(asm, 0x70, 0x0A)?;
    inb(asm, 0x71)?;
    asm.a.test(al, 0x0F)?;
    asm.jnz("dr_rtc_rate")?;
    asm.a.or(dword_ptr(RTC_MASK), 0x40)?;
    asm.here("dr_rtc_rate")?;
    outb(asm, 0x70, 0x0B)?;
    inb(asm, 0x71)?;
    asm.a.test(al, 0x80)?;
    asm.jz("dr_rtc_set")?;
    asm.a.or(dword_ptr(RTC_MASK), 0x30)?;
    asm.here("dr_rtc_set")?;
    asm.a.and(eax, 0x78)?;
    dr_expect(asm, "rtc register b enables", 0)?;
    outb(asm, 0x70, 0x0C)?;
    inb(asm, 0x71)?;
    asm.a.and(eax, dword_ptr(RTC_MASK))?;
    dr_expect(asm, "rtc register c", 0)?;

    // Local APIC (when CPUID offers one): IA32_APIC_BASE = 0xFEE00000 | EN | BSP; with x2APIC,
    // the registers as our model resets them, the BIOS virtual-wire state: SVR 0x1FF, LINT0
    // ExtINT and LINT1 NMI unmasked, every other LVT masked, TPR/PPR 0, timer stopped, nothing
    // in ISR/TMR/IRR, no error, TSC deadline 0.
    cpuid(asm, 1)?;
    asm.a.mov(edi, ecx)?;
    asm.a.test(edx, 1u32 << 9)?;
    asm.jz("dr_apic_done")?;
    asm.a.mov(ecx, IA32_APIC_BASE)?;
    asm.a.rdmsr()?;
    asm.a.push(edx)?;
    dr_expect(asm, "apic base", 0xFEE0_0900)?;
    asm.a.pop(eax)?;
    dr_expect(asm, "apic base high", 0)?;
    asm.a.test(edi, 1u32 << 21)?;
    asm.jz("dr_apic_done")?;
    asm.a.mov(dword_ptr(APIC), 1u32)?;
    asm.a.mov(ecx, IA32_APIC_BASE)?;
    asm.a.mov(eax, 0xFEE0_0D00u32)?;
    asm.a.xor(edx, edx)?;
    asm.a.wrmsr()?;
    for (msr, what, expected) in [
        (0x80F, "apic svr", 0x1FFu32),
        (0x808, "apic tpr", 0),
        (0x80A, "apic ppr", 0),
        (0x82F, "apic lvt cmci", 0x1_0000),
        (0x832, "apic lvt timer", 0x1_0000),
        (0x833, "apic lvt thermal", 0x1_0000),
        (0x834, "apic lvt perf", 0x1_0000),
        (0x835, "apic lvt lint0", 0x700),
        (0x836, "apic lvt lint1", 0x400),
        (0x837, "apic lvt error", 0x1_0000),
        (0x838, "apic timer initial count", 0),
        (0x839, "apic timer current count", 0),
        (0x83E, "apic timer divide", 0),
        (0x830, "apic icr", 0),
    ] {
        dr_expect_msr(asm, msr, what, expected)?;
    }
    asm.a.mov(ecx, 0x828u32)?;
    asm.a.xor(eax, eax)?;
    asm.a.xor(edx, edx)?;
    asm.a.wrmsr()?;
    dr_expect_msr(asm, 0x828, "apic esr", 0)?;
    // ISR, TMR, IRR: eight words each, OR-ed.
    for (first, what) in [
        (0x810u32, "apic isr"),
        (0x818, "apic tmr"),
        (0x820, "apic irr"),
    ] {
        let next = asm.fresh("words");
        asm.a.xor(ebx, ebx)?;
        asm.a.mov(ecx, first)?;
        asm.here(&next)?;
        asm.a.rdmsr()?;
        asm.a.or(ebx, eax)?;
        asm.a.inc(ecx)?;
        asm.a.cmp(ecx, first + 8)?;
        asm.jb(&next)?;
        asm.a.mov(eax, ebx)?;
        dr_expect(asm, what, 0)?;
    }
    asm.a.test(edi, 1u32 << 24)?;
    asm.jz("dr_apic_done")?;
    asm.a.mov(ecx, 0x6E0u32)?;
    asm.a.rdmsr()?;
    asm.a.or(eax, edx)?;
    dr_expect(asm, "apic tsc deadline", 0)?;
    asm.here("dr_apic_done")?;

    // Checked. The last boot reports and undoes what would outlive the VM (RTC SET and rate).
    asm.a.mov(eax, dword_ptr(BOOT))?;
    asm.a.cmp(eax, dword_ptr(CYCLES))?;
    asm.jb("dr_dirty")?;
    outb(asm, 0x70, 0x0B)?;
    inb(asm, 0x71)?;
    asm.a.and(al, 0x7F)?;
    asm.a.out(0x71u32, al)?;
    outb(asm, 0x70, 0x0A)?;
    outb(asm, 0x71, 0x26)?;
    print_var(asm, "devreset: PASS resets=", BOOT)?;
    print_var(asm, " apic=", APIC)?;
    asm.newline()?;
    asm.exit(gabi::EXIT_OK)?;

    asm.here("dr_dirty")?;
    // Progress every 100 boots.
    asm.a.xor(edx, edx)?;
    asm.a.mov(ecx, 100u32)?;
    asm.a.div(ecx)?;
    asm.a.test(edx, edx)?;
    asm.jnz("dr_quiet")?;
    print_var(asm, "devreset: boot ", BOOT)?;
    asm.print(" clean\n")?;
    asm.here("dr_quiet")?;

    // PIC as Linux sets it up, only the cascade and IRQ 8 open; level mode on every line that
    // can have it; then an RTC periodic interrupt (8192 Hz) left in service (no EOI).
    pic_init(asm, "devreset", 0xFB, 0xFE)?;
    outb(asm, 0x4D0, 0xF8)?;
    outb(asm, 0x4D1, 0xDE)?;
    outb(asm, 0x70, 0x0A)?;
    outb(asm, 0x71, 0x23)?;
    outb(asm, 0x70, 0x0B)?;
    inb(asm, 0x71)?;
    asm.a.or(al, 0x78)?;
    asm.a.out(0x71u32, al)?;
    outb(asm, 0x70, 0x0C)?;
    inb(asm, 0x71)?;
    asm.a.cmp(dword_ptr(TRACE), 0)?;
    asm.je("dr_trace_pic_rtc")?;
    print_var(asm, "devreset: boot ", BOOT)?;
    asm.print(" waits for PIC_RTC\n")?;
    asm.here("dr_trace_pic_rtc")?;
    halt_until(asm, |asm| Ok(asm.a.cmp(dword_ptr(PIC_RTC), 1)?))?;
    // PF stays latched (register C is not read); rate 0 and SET, so nothing new latches
    // after the reset.
    outb(asm, 0x70, 0x0A)?;
    outb(asm, 0x71, 0x20)?;
    outb(asm, 0x70, 0x0B)?;
    inb(asm, 0x71)?;
    asm.a.or(al, 0x80)?;
    asm.a.out(0x71u32, al)?;
    // Every line open; PIT channel 0 periodic (mode 2, 84 us), 1 in mode 3, 2 in mode 0 with
    // its gate open; an IRQ 0 left in service too; ISR selected for command-port reads.
    outb(asm, 0x21, 0)?;
    outb(asm, 0xA1, 0)?;
    for (port, value) in [
        (0x43u32, 0x34u32),
        (0x40, 100),
        (0x40, 0),
        (0x43, 0x76),
        (0x41, 0x12),
        (0x41, 0),
        (0x43, 0xB0),
        (0x42, 0x34),
        (0x42, 0x12),
        (0x61, 0x03),
    ] {
        outb(asm, port, value)?;
    }
    asm.a.cmp(dword_ptr(TRACE), 0)?;
    asm.je("dr_trace_pic_pit")?;
    print_var(asm, "devreset: boot ", BOOT)?;
    asm.print(" waits for PIC_PIT\n")?;
    asm.here("dr_trace_pic_pit")?;
    halt_until(asm, |asm| Ok(asm.a.cmp(dword_ptr(PIC_PIT), 1)?))?;
    outb(asm, 0x20, 0x0B)?;
    outb(asm, 0xA0, 0x0B)?;

    // x2APIC: software enabled, LINT0 masked, the timer periodic (20 us) with one interrupt
    // left in service, TPR raised, an illegal self IPI (vector 5: ESR and the error LVT) and
    // a self IPI left requested.
    asm.a.cmp(dword_ptr(APIC), 0)?;
    asm.je("dr_dirty_uart")?;
    for (msr, value) in [
        (0x80Fu32, 0x13Fu32),
        (0x83E, 0x0B),
        (0x837, 0x31),
        (0x835, 0x1_0700),
        (0x832, 0x2_0030),
        (0x838, 20_000),
    ] {
        asm.a.mov(ecx, msr)?;
        asm.a.mov(eax, value)?;
        asm.a.xor(edx, edx)?;
        asm.a.wrmsr()?;
    }
    asm.a.cmp(dword_ptr(TRACE), 0)?;
    asm.je("dr_trace_apic_timer")?;
    print_var(asm, "devreset: boot ", BOOT)?;
    asm.print(" waits for APIC_TIMER\n")?;
    asm.here("dr_trace_apic_timer")?;
    halt_until(asm, |asm| Ok(asm.a.cmp(dword_ptr(APIC_TIMER), 1)?))?;
    for (msr, value) in [(0x808u32, 0x20u32), (0x83F, 0x05), (0x83F, 0x3E)] {
        asm.a.mov(ecx, msr)?;
        asm.a.mov(eax, value)?;
        asm.a.xor(edx, edx)?;
        asm.a.wrmsr()?;
    }

    // UART last (loopback swallows output): divisor 1, 8E1, FIFOs on, every interrupt
    // enabled, loopback with all modem outputs, scratch written, a byte in the RX FIFO.
    asm.here("dr_dirty_uart")?;
    for (port, value) in [
        (0x3FBu32, 0x80u32),
        (0x3F8, 0x01),
        (0x3F9, 0x00),
        (0x3FB, 0x1B),
        (0x3FA, 0xC7),
        (0x3FF, 0xA5),
        (0x3FC, 0x1F),
        (0x3F9, 0x0F),
        (0x3F8, u32::from(b'x')),
    ] {
        outb(asm, port, value)?;
    }
    outb(asm, 0xCF9, 0x06)?;
    asm.exit(gabi::EXIT_STILL_ALIVE)?;

    // dr_expect: eax = read, ebx = expected, esi = what.
    asm.here("dr_expect")?;
    asm.a.cmp(eax, ebx)?;
    asm.jne("dr_fail")?;
    asm.a.ret()?;
    asm.here("dr_fail")?;
    asm.a.push(eax)?;
    print_var(asm, "devreset: FAIL boot ", BOOT)?;
    asm.print(" ")?;
    asm.call("puts")?;
    asm.print(" read=")?;
    asm.a.pop(eax)?;
    asm.print_hex_eax()?;
    asm.print(" expected=")?;
    asm.a.mov(eax, ebx)?;
    asm.print_hex_eax()?;
    asm.newline()?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)
}

// ---- storm: a misbehaving guest (EOI storms, shortest timer periods, bogus vectors, odd
// widths), round after round. ----

/// Where `storm` builds the IDT it uses while vectors 0-15 arrive as interrupts.
const STORM_IDT: u32 = 0x20_0000;
/// Per vector 0-15, the arrivals as interrupts (in the BSS).
const STORM_BOGUS_COUNTS: u32 = layout::BSS + 0x200;

/// `wrmsr ecx=msr, edx:eax = 0:value`.
fn wrmsr32(asm: &mut Asm, msr: u32, value: u32) -> Result {
    asm.a.mov(ecx, msr)?;
    asm.a.mov(eax, value)?;
    asm.a.xor(edx, edx)?;
    Ok(asm.a.wrmsr()?)
}

fn storm(asm: &mut Asm) -> Result {
    const APIC: u32 = layout::VAR_SCRATCH;
    const ROUND: u32 = layout::VAR_SCRATCH + 4;
    const ROUNDS: u32 = layout::VAR_SCRATCH + 8;
    const MODE: u32 = layout::VAR_SCRATCH + 12;
    const IDTR: u32 = layout::BSS + 0x40;
    const ESR_SEEN: u32 = layout::BSS + 0x48;
    const N_FAST: u32 = 5000;
    const N_RTC: u32 = 300;
    const COUNT_PIT: u32 = layout::VAR_IRQ_COUNTS;
    const COUNT_RTC: u32 = layout::VAR_IRQ_COUNTS + 4 * 8;
    const COUNT_TIMER: u32 = layout::VAR_IRQ_COUNTS + 4 * (0x30 - 32);
    const COUNT_ERROR: u32 = layout::VAR_IRQ_COUNTS + 4 * (0x31 - 32);

    asm.interrupts();
    let hook = asm.addr("storm_hook");
    asm.a.mov(dword_ptr(layout::VAR_IRQ_HOOK), hook)?;
    arg_or(asm, "rounds=", 0, ROUNDS)?;
    arg_or(asm, "mode=", 0, MODE)?;
    // x2APIC if CPUID offers it (then its EOIs, timer and IPIs join the storm).
    cpuid(asm, 1)?;
    asm.a.test(ecx, 1u32 << 21)?;
    asm.jz("storm_no_apic")?;
    asm.a.mov(dword_ptr(APIC), 1u32)?;
    asm.a.mov(ecx, IA32_APIC_BASE)?;
    asm.a.rdmsr()?;
    asm.a.or(eax, 0xC00)?;
    asm.a.wrmsr()?;
    wrmsr32(asm, 0x80F, 0x13F)?;
    wrmsr32(asm, 0x837, 0x31)?; // error LVT: vector 0x31
    wrmsr32(asm, 0x83E, 0x0B)?; // divide by 1
    asm.here("storm_no_apic")?;
    // The IDT for bogus vectors: a copy of ours with vectors 0-15 as interrupt stubs.
    let idt = asm.addr("idt");
    asm.a.mov(esi, idt)?;
    asm.a.mov(edi, STORM_IDT)?;
    asm.a.mov(ecx, 2 * 64u32)?;
    asm.a.rep().movsd()?;
    for v in 0..16u32 {
        let handler = asm.addr(&format!("storm_bogus_{v}"));
        asm.a.mov(
            dword_ptr(STORM_IDT + 8 * v),
            (handler & 0xFFFF) | u32::from(layout::CODE_SELECTOR) << 16,
        )?;
        asm.a.mov(
            dword_ptr(STORM_IDT + 8 * v + 4),
            (handler & 0xFFFF_0000) | 0x8E00,
        )?;
    }
    asm.a.mov(word_ptr(IDTR), 64 * 8 - 1)?;
    asm.a.mov(dword_ptr(IDTR + 2), STORM_IDT)?;
    asm.print("storm: start\n")?;

    asm.here("storm_round")?;
    asm.a.mov(eax, dword_ptr(MODE))?;
    asm.a.test(eax, eax)?;
    asm.jz("storm_phase_1")?;
    asm.a.cmp(eax, 1)?;
    asm.jne("storm_skip_1")?;
    asm.here("storm_phase_1")?;
    // 1. EOI storm: non-specific, rotating and specific EOIs to both 8259As and x2APIC EOIs,
    // with nothing in service.
    asm.a.mov(ebp, 20_000u32)?;
    asm.here("storm_eoi")?;
    for (port, value) in [
        (0x20u32, 0x20u32),
        (0xA0, 0x20),
        (0x20, 0xA0),
        (0x20, 0x67),
        (0xA0, 0x61),
    ] {
        outb(asm, port, value)?;
    }
    asm.a.cmp(dword_ptr(APIC), 0)?;
    asm.je("storm_eoi_next")?;
    wrmsr32(asm, 0x80B, 0)?;
    asm.here("storm_eoi_next")?;
    asm.a.dec(ebp)?;
    asm.jnz("storm_eoi")?;
    asm.print("storm: eoi done\n")?;
    asm.here("storm_skip_1")?;

    asm.a.mov(eax, dword_ptr(MODE))?;
    asm.a.test(eax, eax)?;
    asm.jz("storm_phase_2")?;
    asm.a.cmp(eax, 2)?;
    asm.jne("storm_skip_2")?;
    asm.here("storm_phase_2")?;
    // 2. Every timer at its shortest period with interrupts on, handlers that only EOI (the
    // hook stops each source after its quota): PIT mode 2 with count 2 (1 gives no edges),
    // RTC at 8192 Hz, APIC timer periodic with initial count 1.
    for v in [COUNT_PIT, COUNT_RTC, COUNT_TIMER, COUNT_ERROR] {
        asm.a.mov(dword_ptr(v), 0u32)?;
    }
    pic_init(asm, "storm", 0xFA, 0xFE)?;
    for (port, value) in [
        (0x70u32, 0x0Au32),
        (0x71, 0x23),
        (0x70, 0x0B),
        (0x71, 0x42),
        (0x70, 0x0C),
        (0x43, 0x34),
        (0x40, 2),
        (0x40, 0),
    ] {
        outb(asm, port, value)?;
    }
    inb(asm, 0x71)?;
    asm.a.cmp(dword_ptr(APIC), 0)?;
    asm.je("storm_timers_wait")?;
    wrmsr32(asm, 0x832, 0x2_0030)?;
    wrmsr32(asm, 0x838, 1)?;
    asm.here("storm_timers_wait")?;
    halt_until(asm, |asm| {
        // Done when the PIT and RTC quotas are met and the APIC timer is stopped.
        let not_yet = asm.fresh("not_yet");
        let out = asm.fresh("out");
        asm.a.cmp(dword_ptr(COUNT_PIT), N_FAST)?;
        asm.jb(&not_yet)?;
        asm.a.cmp(dword_ptr(COUNT_RTC), N_RTC)?;
        asm.jb(&not_yet)?;
        asm.a.cmp(dword_ptr(APIC), 0)?;
        asm.je(&out)?;
        asm.a.cmp(dword_ptr(COUNT_TIMER), N_FAST)?;
        asm.jmp(&out)?;
        asm.here(&not_yet)?;
        asm.a.stc()?; // jae not taken
        asm.here(&out)
    })?;
    print_var(asm, "storm: timers pit=", COUNT_PIT)?;
    print_var(asm, " rtc=", COUNT_RTC)?;
    print_var(asm, " apic=", COUNT_TIMER)?;
    asm.newline()?;
    asm.here("storm_skip_2")?;

    asm.a.mov(eax, dword_ptr(MODE))?;
    asm.a.test(eax, eax)?;
    asm.jz("storm_phase_3")?;
    asm.a.cmp(eax, 3)?;
    asm.jne("storm_skip_3")?;
    asm.here("storm_phase_3")?;
    // 3. Bogus vectors: the 8259As on vector bases 0x00 and 0x08 (IRQ 0 arrives on vector 0,
    // the RTC's IRQ 8 on vector 8), the APIC timer and self IPIs with vectors below 16 (the
    // APIC must refuse them, ESR "illegal vector", and raise its error LVT), through our IDT
    // with interrupt stubs on 0-15.
    for v in 0..16u32 {
        asm.a.mov(dword_ptr(STORM_BOGUS_COUNTS + 4 * v), 0u32)?;
    }
    asm.a.mov(dword_ptr(COUNT_ERROR), 0u32)?;
    asm.a.mov(dword_ptr(ESR_SEEN), 0u32)?;
    asm.a.lidt(ptr(IDTR))?;
    for (port, value) in [
        (0x20u32, 0x11u32),
        (0x21, 0x00),
        (0x21, 0x04),
        (0x21, 0x01),
        (0xA0, 0x11),
        (0xA1, 0x08),
        (0xA1, 0x02),
        (0xA1, 0x01),
        (0x21, 0xFA),
        (0xA1, 0xFE),
        (0x70, 0x0B),
        (0x71, 0x42),
        (0x70, 0x0C),
        (0x43, 0x34),
        (0x40, 0),
        (0x40, 0x01),
    ] {
        outb(asm, port, value)?;
    }
    inb(asm, 0x71)?;
    // First the 8259As alone (a stream of APIC interrupts would keep their ExtINT from ever
    // being taken: the local APIC's own vectors go first).
    halt_until(asm, |asm| {
        let out = asm.fresh("out");
        asm.a.cmp(dword_ptr(STORM_BOGUS_COUNTS), 200)?;
        asm.jb(&out)?;
        asm.a.cmp(dword_ptr(STORM_BOGUS_COUNTS + 4 * 8), 50)?;
        asm.here(&out)
    })?;
    pic_mask_all(asm)?;
    // Then the local APIC: illegal vectors from a SELF IPI (3), an ICR self IPI (2) and the
    // timer (6, one-shot, 20 us), each refused with ESR set and the error LVT raised.
    asm.a.cmp(dword_ptr(APIC), 0)?;
    asm.je("storm_bogus_done")?;
    wrmsr32(asm, 0x83F, 3)?;
    wrmsr32(asm, 0x830, 0x4_0002)?;
    wrmsr32(asm, 0x832, 0x0_0006)?;
    wrmsr32(asm, 0x838, 20_000)?;
    // For 2^16 loop iterations with interrupts on (the error interrupts EOI'd by the hook).
    asm.a.sti()?;
    asm.a.mov(ecx, 1u32 << 16)?;
    asm.here("storm_apic_spin")?;
    asm.a.dec(ecx)?;
    asm.jnz("storm_apic_spin")?;
    asm.a.cli()?;
    wrmsr32(asm, 0x838, 0)?;
    wrmsr32(asm, 0x828, 0)?;
    asm.a.mov(ecx, 0x828u32)?;
    asm.a.rdmsr()?;
    asm.a.mov(dword_ptr(ESR_SEEN), eax)?;
    asm.here("storm_bogus_done")?;
    let idtr = asm.addr("idtr");
    asm.a.lidt(ptr(idtr))?;
    print_var(asm, "storm: bogus vector0=", STORM_BOGUS_COUNTS)?;
    print_var(asm, " vector8=", STORM_BOGUS_COUNTS + 4 * 8)?;
    print_var(asm, " apic-errors=", COUNT_ERROR)?;
    asm.print(" esr=")?;
    asm.a.mov(eax, dword_ptr(ESR_SEEN))?;
    asm.print_hex_eax()?;
    asm.newline()?;
    asm.here("storm_skip_3")?;

    asm.a.mov(eax, dword_ptr(MODE))?;
    asm.a.test(eax, eax)?;
    asm.jz("storm_phase_4")?;
    asm.a.cmp(eax, 4)?;
    asm.jne("storm_skip_4")?;
    asm.here("storm_phase_4")?;
    // 4. Odd widths: 8-, 16- and 32-bit IN from every port below 0x1000, 16- and 32-bit OUT
    // of junk to each but the debug-exit port and COM1 (so that the console survives), with
    // interrupts off. A 16-bit write at 0xCF9 or 0x64 is not a reset.
    asm.a.xor(ebx, ebx)?;
    asm.here("storm_port")?;
    asm.a.mov(edx, ebx)?;
    asm.a.in_(al, dx)?;
    asm.a.in_(ax, dx)?;
    asm.a.in_(eax, dx)?;
    asm.a.cmp(ebx, u32::from(gabi::DEBUG_EXIT_PORT))?;
    asm.je("storm_port_next")?;
    asm.a.mov(eax, ebx)?;
    asm.a.and(eax, !7u32)?;
    asm.a.cmp(eax, 0x3F8)?;
    asm.je("storm_port_next")?;
    asm.a.imul_3(eax, ebx, 0x9E37_79B9u32 as i32)?;
    asm.a.out(dx, ax)?;
    asm.a.out(dx, eax)?;
    asm.here("storm_port_next")?;
    asm.a.inc(ebx)?;
    asm.a.cmp(ebx, 0x1000)?;
    asm.jb("storm_port")?;
    pic_mask_all(asm)?;
    asm.here("storm_skip_4")?;

    asm.a.inc(dword_ptr(ROUND))?;
    print_var(asm, "storm: round ", ROUND)?;
    asm.newline()?;
    asm.a.mov(eax, dword_ptr(ROUND))?;
    asm.a.cmp(dword_ptr(ROUNDS), 0)?;
    asm.je("storm_round")?;
    asm.a.cmp(eax, dword_ptr(ROUNDS))?;
    asm.jb("storm_round")?;
    asm.print("storm: PASS\n")?;
    asm.exit(gabi::EXIT_OK)?;

    // The hook (vectors 32-63): EOI and nothing else, each source stopped at its quota.
    asm.here("storm_hook")?;
    asm.a.cmp(eax, 0x28)?;
    asm.jne("storm_hook_not_rtc")?;
    inb(asm, 0x71)?; // register C (still selected): lowers IRQ 8
    asm.a.cmp(dword_ptr(COUNT_RTC), N_RTC)?;
    asm.jb("storm_hook_slave")?;
    outb(asm, 0x70, 0x0B)?;
    outb(asm, 0x71, 0x02)?;
    outb(asm, 0x70, 0x0C)?;
    asm.here("storm_hook_slave")?;
    outb(asm, 0xA0, 0x20)?;
    outb(asm, 0x20, 0x20)?;
    asm.a.ret()?;
    asm.here("storm_hook_not_rtc")?;
    asm.a.cmp(eax, 0x30)?;
    asm.jae("storm_hook_apic")?;
    asm.a.cmp(eax, 0x20)?;
    asm.jne("storm_hook_master")?;
    asm.a.cmp(dword_ptr(COUNT_PIT), N_FAST)?;
    asm.jb("storm_hook_master")?;
    // Quota met: mask IRQ 0 only (the cascade carries the RTC).
    outb(asm, 0x21, 0xFB)?;
    asm.here("storm_hook_master")?;
    outb(asm, 0x20, 0x20)?;
    asm.a.ret()?;
    asm.here("storm_hook_apic")?;
    asm.a.cmp(eax, 0x3F)?;
    asm.je("storm_hook_done")?;
    asm.a.cmp(eax, 0x30)?;
    asm.jne("storm_hook_eoi")?;
    asm.a.cmp(dword_ptr(COUNT_TIMER), N_FAST)?;
    asm.jb("storm_hook_eoi")?;
    wrmsr32(asm, 0x838, 0)?;
    asm.here("storm_hook_eoi")?;
    wrmsr32(asm, 0x80B, 0)?;
    asm.here("storm_hook_done")?;
    asm.a.ret()?;

    // Vectors 0-15 as interrupts: count, EOI the 8259As (vector 8 is the RTC on the slave:
    // register C first), return.
    for v in 0..16u32 {
        asm.here(&format!("storm_bogus_{v}"))?;
        asm.a.push(v)?;
        asm.jmp("storm_bogus")?;
    }
    asm.here("storm_bogus")?;
    asm.a.pushad()?;
    asm.a.mov(ebx, dword_ptr(esp + 32))?;
    asm.a.inc(dword_ptr(ebx * 4 + STORM_BOGUS_COUNTS as i32))?;
    asm.a.cmp(ebx, 8)?;
    asm.jb("storm_bogus_master")?;
    asm.jne("storm_bogus_slave")?;
    inb(asm, 0x71)?;
    asm.here("storm_bogus_slave")?;
    outb(asm, 0xA0, 0x20)?;
    asm.here("storm_bogus_master")?;
    outb(asm, 0x20, 0x20)?;
    asm.a.popad()?;
    asm.a.add(esp, 4)?;
    Ok(asm.a.iretd()?)
}

// ---- wake: HLT wake latency from a timer deadline to the guest's handler. ----

fn wake(asm: &mut Asm) -> Result {
    const ITERS: u32 = layout::VAR_SCRATCH;
    const TSC_KHZ: u32 = layout::VAR_SCRATCH + 4;
    const DEADLINE: u32 = layout::VAR_SCRATCH + 8;
    const HANDLER: u32 = layout::VAR_SCRATCH + 12;
    const EARLY: u32 = layout::BSS + 0x40;
    const E0: u32 = layout::BSS + 0x44;
    const PERIOD: u32 = layout::BSS + 0x48;
    const PREV: u32 = layout::BSS + 0x4C;
    const SOURCE: u32 = layout::BSS + 0x50;
    const DELAY: u32 = layout::BSS + 0x54;
    /// Latencies of the current source (up to 63), sorted by `wake_report`.
    const SAMPLES: u32 = layout::BSS + 0x100;
    const MAX_ITERS: u32 = 63;
    const PIT_COUNT: u32 = 1193; // ~1 ms
    const COUNT_PIT: u32 = layout::VAR_IRQ_COUNTS;
    const COUNT_RTC: u32 = layout::VAR_IRQ_COUNTS + 4 * 8;
    const COUNT_TIMER: u32 = layout::VAR_IRQ_COUNTS + 4 * (0x30 - 32);

    asm.interrupts();
    let hook = asm.addr("wake_hook");
    asm.a.mov(dword_ptr(layout::VAR_IRQ_HOOK), hook)?;
    arg_or(asm, "iters=", 15, ITERS)?;
    asm.a.mov(eax, dword_ptr(ITERS))?;
    asm.a.cmp(eax, MAX_ITERS)?;
    asm.jbe("wake_iters_max")?;
    asm.a.mov(dword_ptr(ITERS), MAX_ITERS)?;
    asm.here("wake_iters_max")?;
    asm.a.cmp(dword_ptr(ITERS), 0)?;
    asm.jne("wake_iters_ok")?;
    asm.a.mov(dword_ptr(ITERS), 1u32)?;
    asm.here("wake_iters_ok")?;
    asm.find_arg("tsc_khz=")?;
    asm.a.mov(dword_ptr(TSC_KHZ), eax)?;
    asm.a.test(eax, eax)?;
    asm.jnz("wake_have_khz")?;
    asm.print("wake: FAIL no tsc_khz\n")?;
    asm.exit(gabi::EXIT_CHECKS_FAILED)?;
    asm.here("wake_have_khz")?;
    print_var(asm, "wake: start iters=", ITERS)?;
    print_var(asm, " tsc_khz=", TSC_KHZ)?;
    asm.newline()?;
    // IRQ 0, the cascade and IRQ 8 open: the PIT on vector 0x20, the RTC on 0x28.
    pic_init(asm, "wake", 0xFA, 0xFE)?;

    // PIT: channel 0 in mode 0 (interrupt on terminal count); the deadline is (count + 1)
    // PIT clocks after the write of the count's MSB (time-stamped just before it).
    asm.a.mov(eax, (PIT_COUNT + 1) * 1000)?;
    asm.a.mul(dword_ptr(TSC_KHZ))?;
    asm.a.mov(ecx, PIT_HZ)?;
    asm.a.div(ecx)?;
    asm.a.mov(dword_ptr(DELAY), eax)?;
    asm.a.mov(dword_ptr(SOURCE), 0u32)?;
    asm.call("wake_start")?;
    asm.here("wake_pit")?;
    asm.a.mov(dword_ptr(COUNT_PIT), 0u32)?;
    outb(asm, 0x43, 0x30)?;
    outb(asm, 0x40, PIT_COUNT & 0xFF)?;
    asm.a.rdtsc()?;
    asm.a.add(eax, dword_ptr(DELAY))?;
    asm.a.mov(dword_ptr(DEADLINE), eax)?;
    outb(asm, 0x40, PIT_COUNT >> 8)?;
    halt_until(asm, |asm| Ok(asm.a.cmp(dword_ptr(COUNT_PIT), 1)?))?;
    asm.call("wake_sample")?;
    asm.jb("wake_pit")?;
    asm.print("wake: pit")?;
    asm.call("wake_report")?;

    // RTC periodic at 64 Hz (a period far above any wake latency): its edges have a fixed
    // phase, found by polling register C's PF with PIE off (the edge lies between two polls: their midpoint, +-half a poll); then each
    // sample enables PIE at an arbitrary moment and halts, and the latency is the time since
    // the latest edge, (handler - edge0) mod period.
    outb(asm, 0x70, 0x0A)?;
    outb(asm, 0x71, 0x2A)?;
    outb(asm, 0x70, 0x0B)?;
    outb(asm, 0x71, 0x02)?;
    outb(asm, 0x70, 0x0C)?;
    inb(asm, 0x71)?;
    asm.a.mov(eax, dword_ptr(TSC_KHZ))?;
    asm.a.mov(ecx, 1000u32)?;
    asm.a.mul(ecx)?;
    asm.a.mov(ecx, 64u32)?;
    asm.a.div(ecx)?;
    asm.a.mov(dword_ptr(PERIOD), eax)?;
    asm.a.mov(dword_ptr(PREV), 0u32)?;
    asm.here("wake_rtc_poll")?;
    asm.a.rdtsc()?;
    asm.a.mov(ebx, eax)?;
    asm.a.in_(al, 0x71u32)?;
    asm.a.mov(cl, al)?;
    asm.a.rdtsc()?;
    asm.a.sub(eax, ebx)?;
    asm.a.shr(eax, 1)?;
    asm.a.add(eax, ebx)?; // this poll's midpoint
    asm.a.mov(edx, dword_ptr(PREV))?;
    asm.a.mov(dword_ptr(PREV), eax)?;
    asm.a.test(cl, 0x40)?;
    asm.jz("wake_rtc_poll")?;
    asm.a.test(edx, edx)?;
    asm.jz("wake_rtc_poll")?; // the first poll may see an old edge
    asm.a.mov(ebx, eax)?;
    asm.a.sub(eax, edx)?;
    // Two polls more than 1/16 ms apart (the vCPU was preempted between them) would place
    // the edge too loosely: wait for the next edge then.
    asm.a.mov(ecx, dword_ptr(TSC_KHZ))?;
    asm.a.shr(ecx, 4)?;
    asm.a.cmp(eax, ecx)?;
    asm.ja("wake_rtc_poll")?;
    asm.a.shr(eax, 1)?;
    asm.a.add(eax, edx)?;
    asm.a.mov(dword_ptr(E0), eax)?;
    asm.a.mov(dword_ptr(SOURCE), 1u32)?;
    asm.call("wake_start")?;
    asm.here("wake_rtc")?;
    asm.a.mov(dword_ptr(COUNT_RTC), 0u32)?;
    outb(asm, 0x70, 0x0C)?;
    inb(asm, 0x71)?;
    outb(asm, 0x70, 0x0B)?;
    outb(asm, 0x71, 0x42)?;
    halt_until(asm, |asm| Ok(asm.a.cmp(dword_ptr(COUNT_RTC), 1)?))?;
    outb(asm, 0x70, 0x0B)?;
    outb(asm, 0x71, 0x02)?;
    asm.a.mov(eax, dword_ptr(HANDLER))?;
    asm.a.sub(eax, dword_ptr(E0))?;
    asm.a.xor(edx, edx)?;
    asm.a.div(dword_ptr(PERIOD))?;
    asm.a.mov(eax, dword_ptr(HANDLER))?;
    asm.a.sub(eax, edx)?;
    asm.a.mov(dword_ptr(DEADLINE), eax)?;
    asm.call("wake_sample")?;
    asm.jb("wake_rtc")?;
    asm.print("wake: rtc")?;
    asm.call("wake_report")?;
    pic_mask_all(asm)?;

    // Local APIC timer through x2APIC (when offered): TSC-deadline 1 ms ahead, then
    // one-shot with an initial count of 1,000,000 (1 ms of the 1 GHz APIC clock, divide 1)
    // written right after a TSC read.
    cpuid(asm, 1)?;
    asm.a.test(ecx, 1u32 << 21)?;
    asm.jnz("wake_apic")?;
    asm.print("wake: apic not offered\n")?;
    asm.jmp("wake_done")?;
    asm.here("wake_apic")?;
    asm.a.push(ecx)?;
    asm.a.mov(ecx, IA32_APIC_BASE)?;
    asm.a.rdmsr()?;
    asm.a.or(eax, 0xC00)?;
    asm.a.wrmsr()?;
    wrmsr32(asm, 0x80F, 0x13F)?;
    wrmsr32(asm, 0x83E, 0x0B)?;
    asm.a.pop(ecx)?;
    asm.a.test(ecx, 1u32 << 24)?;
    asm.jz("wake_oneshot")?;
    wrmsr32(asm, 0x832, 0x4_0030)?;
    asm.a.mov(dword_ptr(SOURCE), 2u32)?;
    asm.call("wake_start")?;
    asm.here("wake_deadline")?;
    asm.a.mov(dword_ptr(COUNT_TIMER), 0u32)?;
    asm.a.rdtsc()?;
    asm.a.add(eax, dword_ptr(TSC_KHZ))?;
    asm.a.adc(edx, 0)?;
    asm.a.mov(dword_ptr(DEADLINE), eax)?;
    asm.a.mov(ecx, 0x6E0u32)?;
    asm.a.wrmsr()?;
    halt_until(asm, |asm| Ok(asm.a.cmp(dword_ptr(COUNT_TIMER), 1)?))?;
    asm.call("wake_sample")?;
    asm.jb("wake_deadline")?;
    asm.print("wake: apic-deadline")?;
    asm.call("wake_report")?;
    asm.here("wake_oneshot")?;
    wrmsr32(asm, 0x832, 0x30)?;
    asm.a.mov(dword_ptr(SOURCE), 3u32)?;
    asm.call("wake_start")?;
    asm.here("wake_oneshot_next")?;
    asm.a.mov(dword_ptr(COUNT_TIMER), 0u32)?;
    asm.a.rdtsc()?;
    asm.a.add(eax, dword_ptr(TSC_KHZ))?;
    asm.a.mov(dword_ptr(DEADLINE), eax)?;
    wrmsr32(asm, 0x838, 1_000_000)?;
    halt_until(asm, |asm| Ok(asm.a.cmp(dword_ptr(COUNT_TIMER), 1)?))?;
    asm.call("wake_sample")?;
    asm.jb("wake_oneshot_next")?;
    asm.print("wake: apic-oneshot")?;
    asm.call("wake_report")?;
    asm.here("wake_done")?;
    asm.print("wake: done\n")?;
    asm.exit(gabi::EXIT_OK)?;

    // wake_start: a source's samples begin (ebp = 0, no early arrivals).
    asm.here("wake_start")?;
    asm.a.xor(ebp, ebp)?;
    asm.a.mov(dword_ptr(EARLY), 0u32)?;
    asm.a.ret()?;
    // wake_sample: sample ebp = [HANDLER] - [DEADLINE] (0 and counted when early); CF set
    // (jb) while more samples are to come.
    asm.here("wake_sample")?;
    asm.a.mov(eax, dword_ptr(HANDLER))?;
    asm.a.sub(eax, dword_ptr(DEADLINE))?;
    asm.jns("wake_sample_late")?;
    asm.a.inc(dword_ptr(EARLY))?;
    asm.a.xor(eax, eax)?;
    asm.here("wake_sample_late")?;
    asm.a.mov(dword_ptr(ebp * 4 + SAMPLES as i32), eax)?;
    asm.a.inc(ebp)?;
    asm.a.cmp(ebp, dword_ptr(ITERS))?;
    asm.a.ret()?;

    // wake_report: sorts the samples, prints " median=M min=A max=Z early=E\n" (TSC ticks).
    asm.here("wake_report")?;
    asm.a.mov(ebx, SAMPLES)?;
    asm.a.mov(esi, 1u32)?;
    asm.here("wake_sort_outer")?;
    asm.a.cmp(esi, dword_ptr(ITERS))?;
    asm.jnc("wake_sort_done")?;
    asm.a.mov(eax, dword_ptr(ebx + esi * 4))?;
    asm.a.mov(edi, esi)?;
    asm.here("wake_sort_inner")?;
    asm.a.test(edi, edi)?;
    asm.jz("wake_sort_place")?;
    asm.a.mov(edx, dword_ptr(ebx + edi * 4 - 4))?;
    asm.a.cmp(eax, edx)?;
    asm.jnc("wake_sort_place")?;
    asm.a.mov(dword_ptr(ebx + edi * 4), edx)?;
    asm.a.dec(edi)?;
    asm.jmp("wake_sort_inner")?;
    asm.here("wake_sort_place")?;
    asm.a.mov(dword_ptr(ebx + edi * 4), eax)?;
    asm.a.inc(esi)?;
    asm.jmp("wake_sort_outer")?;
    asm.here("wake_sort_done")?;
    asm.print(" median=")?;
    asm.a.mov(esi, dword_ptr(ITERS))?;
    asm.a.shr(esi, 1)?;
    asm.a.mov(eax, dword_ptr(ebx + esi * 4))?;
    asm.print_dec_eax()?;
    asm.print(" min=")?;
    asm.a.mov(eax, dword_ptr(ebx))?;
    asm.print_dec_eax()?;
    asm.print(" max=")?;
    asm.a.mov(esi, dword_ptr(ITERS))?;
    asm.a.mov(eax, dword_ptr(ebx + esi * 4 - 4))?;
    asm.print_dec_eax()?;
    print_var(asm, " early=", EARLY)?;
    asm.newline()?;
    asm.a.ret()?;

    // The hook: time-stamp first, then acknowledge the source.
    asm.here("wake_hook")?;
    asm.a.mov(ebx, eax)?;
    asm.a.rdtsc()?;
    asm.a.mov(dword_ptr(HANDLER), eax)?;
    asm.a.cmp(ebx, 0x30)?;
    asm.jne("wake_hook_pic")?;
    wrmsr32(asm, 0x80B, 0)?;
    asm.a.ret()?;
    asm.here("wake_hook_pic")?;
    asm.a.cmp(ebx, 0x28)?;
    asm.jne("wake_hook_master")?;
    outb(asm, 0x70, 0x0C)?;
    inb(asm, 0x71)?;
    outb(asm, 0xA0, 0x20)?;
    asm.here("wake_hook_master")?;
    outb(asm, 0x20, 0x20)?;
    Ok(asm.a.ret()?)
}
