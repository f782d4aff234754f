//! The built-in images' structure: the ELF sections and symbols the writer produced, and the
//! code decoded back with iced-x86 (every byte of `.text` decodes, branches stay inside it, calls
//! land on routines, the UART and exit ports are used as the guest docs say).
//! Running them is `tests/qemu.rs`'s job.

use std::collections::BTreeSet;

use guests::builtins::{EXERCISER_CHECKS, abi};
use guests::{BUILTINS, builtin, multiboot};
mod common;

use common::{bytes, sections};
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register,
};

/// What a guest's code does, as far as a linear decode tells.
#[derive(Default)]
struct Decoded {
    mnemonics: BTreeSet<Mnemonic>,
    /// (port, "in"/"out", operand size) for `in`/`out` through DX after `mov dx, imm16`, or
    /// with an immediate port.
    port_io: BTreeSet<(u16, &'static str, usize)>,
}

fn decode(name: &str) -> Decoded {
    let image = builtin(name).unwrap();
    let (sections, symbols) = sections(image);
    let text = &sections[".text"];
    let range = text.addr..text.addr + text.len as u32;
    let mut decoder = Decoder::with_ip(
        32,
        bytes(image, text),
        text.addr.into(),
        DecoderOptions::NONE,
    );
    let mut decoded = Decoded::default();
    let mut dx = None;
    let mut instruction = Instruction::default();
    let mut routine = String::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        let ip = instruction.ip32();
        if let Some(name) = symbols.get(&ip) {
            routine = name.clone();
        }
        assert_ne!(
            instruction.code(),
            Code::INVALID,
            "{name}: undecodable bytes at {ip:#x}"
        );
        decoded.mnemonics.insert(instruction.mnemonic());
        match instruction.flow_control() {
            FlowControl::UnconditionalBranch
            | FlowControl::ConditionalBranch
            | FlowControl::Call
                if instruction.op0_kind() == OpKind::NearBranch32 =>
            {
                let target = instruction.near_branch32();
                assert!(
                    range.contains(&target),
                    "{name}: branch at {ip:#x} leaves .text"
                );
                if instruction.flow_control() == FlowControl::Call {
                    assert!(
                        symbols.contains_key(&target),
                        "{name}: call at {ip:#x} to no routine"
                    );
                }
            }
            // The one indirect call: the interrupt stubs' call of the guest's hook.
            FlowControl::IndirectCall if routine == "irq_common" => {}
            FlowControl::IndirectBranch | FlowControl::IndirectCall => {
                panic!("{name}: indirect branch at {ip:#x}")
            }
            _ => {}
        }
        if instruction.code() == Code::Mov_r16_imm16 && instruction.op0_register() == Register::DX {
            dx = Some(instruction.immediate16());
        }
        let size = |register: Register| register.size();
        match instruction.mnemonic() {
            Mnemonic::In | Mnemonic::Out => {
                let (data, port_op) = if instruction.mnemonic() == Mnemonic::In {
                    (0, 1)
                } else {
                    (1, 0)
                };
                let port = match instruction.op_kind(port_op) {
                    OpKind::Immediate8 => instruction.immediate8().into(),
                    _ => dx.unwrap_or_else(|| panic!("{name}: port I/O at {ip:#x} without mov dx")),
                };
                let direction = if data == 0 { "in" } else { "out" };
                decoded
                    .port_io
                    .insert((port, direction, size(instruction.op_register(data))));
            }
            _ => {}
        }
    }
    // The file part must end before the BSS, and the code be small.
    assert!(text.len <= 4096, "{name}: {} bytes of code", text.len);
    let bss = &sections[".bss"];
    let rodata = &sections[".rodata"];
    assert_eq!(rodata.addr, range.end);
    assert!(rodata.addr + rodata.len as u32 <= bss.addr);
    assert_eq!(bss.kind, 8, "SHT_NOBITS");
    decoded
}

fn rodata_has(name: &str, text: &str) -> bool {
    let image = builtin(name).unwrap();
    let rodata = bytes(image, &sections(image).0[".rodata"]);
    let mut needle = text.as_bytes().to_vec();
    needle.push(0);
    rodata.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_builtins() {
    let names: Vec<_> = BUILTINS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "hello",
            "exerciser",
            "resetter",
            "spinner",
            "pmu",
            "ticker",
            "apic",
            "echo",
            "rtc",
            "ioapic",
            "smp",
            "paging",
            "mmio",
            "bench",
            "devreset",
            "storm",
            "wake"
        ]
    );
    assert!(
        BUILTINS
            .iter()
            .all(|(_, description)| !description.is_empty())
    );
    assert_eq!(builtin("nonesuch"), None);
}

#[test]
fn every_builtin_is_a_multiboot_elf_entered_at_start() {
    for (name, _) in BUILTINS {
        let image = builtin(name).unwrap();
        let parsed = multiboot::Image::parse(image).unwrap();
        let (sections, symbols) = sections(image);
        assert_eq!(symbols[&parsed.entry()], "_start", "{name}");
        assert_eq!(sections[".text"].addr, parsed.entry(), "{name}");
        assert_eq!(
            sections[".multiboot"].addr,
            multiboot::abi::IMAGE_BASE,
            "{name}"
        );
        println!(
            "{name}: image {} bytes, code {} bytes, data {} bytes",
            image.len(),
            sections[".text"].len,
            sections[".rodata"].len
        );
    }
}

#[test]
fn every_builtin_uses_the_uart_and_the_exit_port_only_as_documented() {
    for (name, _) in BUILTINS {
        let decoded = decode(name);
        let io = &decoded.port_io;
        assert!(io.contains(&(abi::UART_LSR, "in", 1)), "{name} polls LSR");
        assert!(
            io.contains(&(abi::UART_DATA, "out", 1)),
            "{name} writes THR"
        );
        assert!(
            io.contains(&(abi::DEBUG_EXIT_PORT, "out", 4)),
            "{name} exits with a 32-bit out"
        );
        for m in [
            Mnemonic::Lgdt,
            Mnemonic::Lidt,
            Mnemonic::Retf,
            Mnemonic::Iretd,
            Mnemonic::Hlt,
        ] {
            assert!(decoded.mnemonics.contains(&m), "{name}: no {m:?}");
        }
    }
}

#[test]
fn hello_prints_its_greeting_and_command_line() {
    let decoded = decode("hello");
    assert_eq!(decoded.port_io.len(), 3, "{:?}", decoded.port_io);
    assert!(rodata_has("hello", "Hello from a Hermitage guest!\n"));
    assert!(rodata_has("hello", "cmdline: "));
}

#[test]
fn exerciser_probes_cpuid_msrs_virtualization_instructions_and_ports() {
    let decoded = decode("exerciser");
    for m in [
        Mnemonic::Cpuid,
        Mnemonic::Rdmsr,
        Mnemonic::Wrmsr,
        Mnemonic::Vmmcall,
        Mnemonic::Vmcall,
        Mnemonic::Vmrun,
    ] {
        assert!(decoded.mnemonics.contains(&m), "no {m:?}");
    }
    for size in [1, 2, 4] {
        assert!(decoded.port_io.contains(&(0x520, "in", size)));
    }
    assert!(EXERCISER_CHECKS.len() >= 15);
    for check in EXERCISER_CHECKS {
        assert!(rodata_has("exerciser", check), "{check}");
    }
    for text in ["PASS ", "FAIL ", ": ", "DONE pass=", " fail="] {
        assert!(rodata_has("exerciser", text), "{text}");
    }
}

#[test]
fn resetter_knows_three_ways_to_reset() {
    let decoded = decode("resetter");
    assert!(decoded.port_io.contains(&(0xCF9, "out", 1)));
    assert!(decoded.port_io.contains(&(0x64, "out", 1)));
    assert!(decoded.mnemonics.contains(&Mnemonic::Ud2));
    for text in ["boot=", "resetter: boot ", "resetter: still alive\n"] {
        assert!(rodata_has("resetter", text), "{text}");
    }
    for path in ["cf9", "kbd", "triple-fault"] {
        assert!(
            rodata_has("resetter", &format!("resetter: reset via {path}\n")),
            "{path}"
        );
    }
}

#[test]
fn spinner_ticks() {
    let decoded = decode("spinner");
    assert_eq!(decoded.port_io.len(), 3, "{:?}", decoded.port_io);
    assert!(rodata_has("spinner", "ticks="));
    assert!(rodata_has("spinner", "spinner: tick "));
}

#[test]
fn bench_measures_cpuid_port_reads_and_rdmsr_between_rdtscs() {
    let decoded = decode("bench");
    for m in [
        Mnemonic::Cpuid,
        Mnemonic::Rdmsr,
        Mnemonic::Rdtsc,
        Mnemonic::Div,
    ] {
        assert!(decoded.mnemonics.contains(&m), "bench: no {m:?}");
    }
    assert!(decoded.port_io.contains(&(0x520, "in", 1)));
    for line in [
        "bench: done\n",
        "bench: idle\n",
        " median=",
        " min=",
        " max=",
    ] {
        assert!(rodata_has("bench", line), "{line:?}");
    }
}

#[test]
fn ticker_programs_the_pic_and_pit_and_halts_between_ticks() {
    let decoded = decode("ticker");
    for (port, direction) in [
        (0x20, "out"),
        (0x21, "out"),
        (0x21, "in"),
        (0xA0, "out"),
        (0xA1, "out"),
        (0x43, "out"),
        (0x40, "out"),
    ] {
        assert!(
            decoded.port_io.contains(&(port, direction, 1)),
            "ticker: {direction} {port:#x}"
        );
    }
    for m in [
        Mnemonic::Sti,
        Mnemonic::Hlt,
        Mnemonic::Rdtsc,
        Mnemonic::Iretd,
    ] {
        assert!(decoded.mnemonics.contains(&m), "ticker: no {m:?}");
    }
    for text in [
        "tsc_khz=",
        "hz=",
        "ticks=",
        "ticker: PASS\n",
        "ticker: FAIL\n",
    ] {
        assert!(rodata_has("ticker", text), "{text:?}");
    }
}

#[test]
fn apic_uses_msrs_and_the_xapic_page() {
    let decoded = decode("apic");
    for m in [
        Mnemonic::Rdmsr,
        Mnemonic::Wrmsr,
        Mnemonic::Sti,
        Mnemonic::Hlt,
        Mnemonic::Rdtsc,
        Mnemonic::Div,
    ] {
        assert!(decoded.mnemonics.contains(&m), "apic: no {m:?}");
    }
    for text in [
        "tsc_khz=",
        "x2apic=",
        "apic: one-shot after tsc=",
        "apic: periodic span tsc=",
        "apic: tsc-deadline late by tsc=",
        "apic: self ipi count=",
        "apic: PASS\n",
    ] {
        assert!(rodata_has("apic", text), "{text:?}");
    }
}

#[test]
fn echo_drives_the_uart_by_interrupts() {
    let decoded = decode("echo");
    // IER, FCR/IIR, LCR, MCR, LSR, MSR, RBR; the PIC.
    for (port, direction) in [
        (0x3F9, "out"),
        (0x3FA, "out"),
        (0x3FA, "in"),
        (0x3FB, "out"),
        (0x3FC, "out"),
        (0x3FE, "in"),
        (0x3F8, "in"),
        (0x20, "out"),
        (0x21, "out"),
        (0xA1, "out"),
    ] {
        assert!(
            decoded.port_io.contains(&(port, direction, 1)),
            "echo: {direction} {port:#x}"
        );
    }
    for m in [Mnemonic::Sti, Mnemonic::Hlt, Mnemonic::Iretd] {
        assert!(decoded.mnemonics.contains(&m), "echo: no {m:?}");
    }
    for text in [
        "echo: ready\n",
        "\necho: done",
        " rda=",
        " timeout=",
        " thre=",
        " received=",
        " sent=",
        "echo: PASS\n",
        "echo: FAIL\n",
    ] {
        assert!(rodata_has("echo", text), "{text:?}");
    }
}

#[test]
fn rtc_reads_the_cmos_and_takes_irq_8_through_the_cascade() {
    let decoded = decode("rtc");
    for (port, direction) in [
        (0x70, "out"),
        (0x71, "in"),
        (0x71, "out"),
        (0x20, "out"),
        (0xA0, "out"),
        (0xA1, "out"),
    ] {
        assert!(
            decoded.port_io.contains(&(port, direction, 1)),
            "rtc: {direction} {port:#x}"
        );
    }
    for m in [Mnemonic::Sti, Mnemonic::Hlt, Mnemonic::Rdtsc, Mnemonic::Bsr] {
        assert!(decoded.mnemonics.contains(&m), "rtc: no {m:?}");
    }
    for text in [
        "tsc_khz=",
        "hz=",
        "ticks=",
        "rtc: date ",
        "rtc: cmos 0x0f ok\n",
        "rtc: periodic hz=",
        "rtc: PASS\n",
        "rtc: FAIL\n",
    ] {
        assert!(rodata_has("rtc", text), "{text:?}");
    }
}

#[test]
fn ioapic_programs_a_redirection_entry_and_the_pit() {
    let decoded = decode("ioapic");
    for (port, direction) in [
        (0x43, "out"),
        (0x40, "out"),
        (0x21, "out"),
        (0xA1, "out"),
        (0x70, "out"),
        (0x71, "in"),
        (0x71, "out"),
    ] {
        assert!(
            decoded.port_io.contains(&(port, direction, 1)),
            "ioapic: {direction} {port:#x}"
        );
    }
    // No 8259A initialisation: the PIC only gets its masks.
    assert!(!decoded.port_io.contains(&(0x20, "out", 1)));
    for m in [
        Mnemonic::Rdmsr,
        Mnemonic::Wrmsr,
        Mnemonic::Sti,
        Mnemonic::Hlt,
        Mnemonic::Rdtsc,
    ] {
        assert!(decoded.mnemonics.contains(&m), "ioapic: no {m:?}");
    }
    for text in [
        "x2apic=",
        "tsc_khz=",
        "ioapic: version ",
        "level=",
        "ioapic: level pin 8 remote-irr in service=",
        "ioapic: pin 2 redirection ",
        "ioapic: PASS\n",
    ] {
        assert!(rodata_has("ioapic", text), "{text:?}");
    }
}

#[test]
fn smp_carries_a_real_mode_trampoline_and_uses_locked_adds() {
    let image = builtin("smp").unwrap();
    let (sections, symbols) = sections(image);
    let decoded = decode("smp");
    for m in [
        Mnemonic::Xadd,
        Mnemonic::Xchg,
        Mnemonic::Pause,
        Mnemonic::Wrmsr,
        Mnemonic::Hlt,
        Mnemonic::Movsb,
    ] {
        assert!(decoded.mnemonics.contains(&m), "smp: no {m:?}");
    }
    // The trampoline decodes as 16-bit code: LGDT, CR0 write, then a far jump to the
    // 32-bit AP entry with the code selector.
    let (&at, _) = symbols
        .iter()
        .find(|(_, name)| *name == "smp_trampoline")
        .unwrap();
    let (&entry, _) = symbols
        .iter()
        .find(|(_, name)| *name == "smp_ap_entry")
        .unwrap();
    let rodata = &sections[".rodata"];
    let offset = rodata.offset + (at - rodata.addr) as usize;
    let mut decoder = Decoder::with_ip(
        16,
        &image[offset..offset + 0x20],
        0x8000,
        DecoderOptions::NONE,
    );
    let mut seen = Vec::new();
    let mut jump = None;
    for instruction in &mut decoder {
        seen.push(instruction.mnemonic());
        if instruction.mnemonic() == Mnemonic::Jmp && instruction.op0_kind() == OpKind::FarBranch32
        {
            jump = Some((
                instruction.far_branch_selector(),
                instruction.far_branch32(),
            ));
            break;
        }
    }
    for m in [Mnemonic::Cli, Mnemonic::Lgdt, Mnemonic::Mov, Mnemonic::Or] {
        assert!(seen.contains(&m), "trampoline: no {m:?}: {seen:?}");
    }
    assert_eq!(jump, Some((0x08, entry)));
    for text in [
        "cpus=",
        "x2apic=",
        "smp: ap ",
        " apic id=",
        "smp: counter=",
        "smp: pingpong rounds=",
        "smp: PASS\n",
    ] {
        assert!(rodata_has("smp", text), "{text:?}");
    }
}

#[test]
fn paging_and_mmio_guests_do_what_their_docs_say() {
    let decoded = decode("paging");
    for m in [
        Mnemonic::Cpuid,
        Mnemonic::Outsb,
        Mnemonic::Insb,
        Mnemonic::Rdmsr,
        Mnemonic::Wrmsr,
        Mnemonic::Retf,
    ] {
        assert!(decoded.mnemonics.contains(&m), "paging: no {m:?}");
    }
    assert!(rodata_has("paging", "paging: 32-bit PASS\n"));
    let decoded = decode("mmio");
    assert!(decoded.mnemonics.contains(&Mnemonic::Movzx));
    assert!(rodata_has("mmio", "mmio: PASS\n"));
}
