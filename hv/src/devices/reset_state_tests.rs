//! The reset state of the whole platform as a guest reads it through ports and MSRs, after a
//! guest dirtied every device: the host-side twin of the `devreset` built-in guest (which
//! checks the same registers from inside a VM, across 1,000 resets). Each value is the
//! datasheet's reset value, or our documented choice where the datasheet leaves it open: the
//! 8259As masked (pic.rs), the 8254 channels as control word 0x36 leaves them with no count
//! (pit.rs), PC16550D Table III with divisor 12 (uart.rs), the MC146818's RESET pin (rtc.rs),
//! and a local APIC in the BIOS virtual-wire state (lapic.rs, SDM 11.4.7.1).

use super::chipset::ChipsetConfig;
use super::lapic::LapicConfig;
use super::*;
use crate::irq::InterruptController;

const MS: u64 = 1_000_000; // TSC ticks per ms at the default 1 GHz

fn platform() -> PlatformConfig {
    PlatformConfig {
        chipset: ChipsetConfig {
            lapic: Some(LapicConfig {
                virtual_wire: true,
                ..LapicConfig::BSP
            }),
        },
        ..PlatformConfig::DEFAULT
    }
}

fn outb(d: &mut Devices, port: u16, v: u8) {
    assert_eq!(
        d.write(port, IoSize::Byte, v.into()),
        PortWrite::Done,
        "port {port:#x}"
    );
}

fn inb(d: &mut Devices, port: u16) -> u8 {
    let r = d.read(port, IoSize::Byte);
    assert!(r.handled, "port {port:#x}");
    r.value as u8
}

fn wrmsr(d: &mut Devices, msr: u32, v: u64) {
    assert_eq!(d.msr_write(msr, v), Ok(()), "msr {msr:#x}");
}

fn rdmsr(d: &mut Devices, msr: u32) -> u64 {
    d.msr_read(msr)
        .unwrap_or_else(|_| panic!("msr {msr:#x} #GP"))
}

/// The interrupt the vCPU would take now, acknowledged (INTA / APIC acceptance).
fn take(d: &mut Devices) -> Option<u8> {
    let mut c = d.chipset.controller();
    c.pending_vector()?;
    c.acknowledge()
}

/// Run guest time forward until `vector` is taken (others taken on the way are left in
/// service too), as a halted guest with interrupts on would.
fn take_until(d: &mut Devices, tsc: &mut u64, vector: u8) {
    for _ in 0..10_000 {
        *tsc += 10_000;
        d.advance(*tsc);
        while let Some(v) = take(d) {
            if v == vector {
                return;
            }
        }
    }
    panic!("vector {vector:#x} never came");
}

/// What `devreset` does between its checks and the reset.
fn dirty_everything(d: &mut Devices, tsc: &mut u64) {
    for (port, v) in [
        (0x20, 0x11),
        (0x21, 0x20),
        (0x21, 0x04),
        (0x21, 0x01),
        (0xA0, 0x11),
        (0xA1, 0x28),
        (0xA1, 0x02),
        (0xA1, 0x01),
        (0x21, 0xFB),
        (0xA1, 0xFE),
        (0x4D0, 0xF8),
        (0x4D1, 0xDE),
        (0x70, 0x0A),
        (0x71, 0x23),
        (0x70, 0x0B),
        (0x71, 0x7A),
        (0x70, 0x0C),
    ] {
        outb(d, port, v);
    }
    inb(d, 0x71);
    take_until(d, tsc, 0x28);
    // Rate 0 and SET, PF left latched (register C not read).
    for (port, v) in [(0x70, 0x0A), (0x71, 0x20), (0x70, 0x0B), (0x71, 0xFA)] {
        outb(d, port, v);
    }
    for (port, v) in [
        (0x21, 0),
        (0xA1, 0),
        (0x43, 0x34),
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
        outb(d, port, v);
    }
    take_until(d, tsc, 0x20);
    outb(d, 0x20, 0x0B);
    outb(d, 0xA0, 0x0B);
    // x2APIC: enabled, LINT0 masked, periodic timer with one interrupt in service, TPR,
    // an illegal self IPI and one left in IRR.
    wrmsr(d, 0x1B, 0xFEE0_0D00);
    for (msr, v) in [
        (0x80F, 0x13F),
        (0x83E, 0x0B),
        (0x837, 0x31),
        (0x835, 0x1_0700),
        (0x832, 0x2_0030),
        (0x838, 20_000),
    ] {
        wrmsr(d, msr, v);
    }
    take_until(d, tsc, 0x30);
    for (msr, v) in [(0x808, 0x20), (0x83F, 0x05), (0x83F, 0x3E)] {
        wrmsr(d, msr, v);
    }
    for (port, v) in [
        (0x3FB, 0x80),
        (0x3F8, 0x01),
        (0x3F9, 0x00),
        (0x3FB, 0x1B),
        (0x3FA, 0xC7),
        (0x3FF, 0xA5),
        (0x3FC, 0x1F),
        (0x3F9, 0x0F),
        (0x3F8, b'x'),
    ] {
        outb(d, port, v);
    }
    d.advance(*tsc + MS);
    assert_eq!(inb(d, 0x3FD) & 1, 1, "the loopback byte arrived");
}

/// Everything `devreset` checks, as (what, read, expected).
fn reset_state_as_read(d: &mut Devices) -> Vec<(&'static str, u64, u64)> {
    let mut got = Vec::new();
    let mut port =
        |d: &mut Devices, what, p, expected| got.push((what, u64::from(inb(d, p)), expected));
    port(d, "uart lcr", 0x3FB, 0);
    port(d, "uart ier", 0x3F9, 0);
    port(d, "uart iir", 0x3FA, 0x01);
    port(d, "uart mcr", 0x3FC, 0);
    port(d, "uart lsr", 0x3FD, 0x60);
    port(d, "uart msr", 0x3FE, 0xB0);
    port(d, "uart scr", 0x3FF, 0);
    outb(d, 0x3FB, 0x80);
    port(d, "uart dll", 0x3F8, 12);
    port(d, "uart dlm", 0x3F9, 0);
    outb(d, 0x3FB, 0);
    port(d, "pic master imr", 0x21, 0xFF);
    port(d, "pic slave imr", 0xA1, 0xFF);
    port(d, "pic master irr", 0x20, 0);
    port(d, "pic slave irr", 0xA0, 0);
    port(d, "pic elcr1", 0x4D0, 0);
    port(d, "pic elcr2", 0x4D1, 0);
    outb(d, 0x20, 0x0B);
    port(d, "pic master isr", 0x20, 0);
    outb(d, 0xA0, 0x0B);
    port(d, "pic slave isr", 0xA0, 0);
    for ch in 0..3u16 {
        outb(d, 0x43, 0xC0 | (2 << ch));
        port(d, "pit status", 0x40 + ch, 0xB6);
        port(d, "pit count lsb", 0x40 + ch, 0);
        port(d, "pit count msb", 0x40 + ch, 0);
    }
    let port_b = inb(d, 0x61) & 0x2F;
    got.push(("pit port 0x61", port_b.into(), 0x20));
    outb(d, 0x70, 0x0B);
    let b = inb(d, 0x71);
    got.push(("rtc register b enables", u64::from(b & 0x78), 0));
    outb(d, 0x70, 0x0C);
    got.push(("rtc register c", inb(d, 0x71).into(), 0));
    got.push(("apic base", rdmsr(d, 0x1B), 0xFEE0_0900));
    wrmsr(d, 0x1B, 0xFEE0_0D00);
    for (what, msr, expected) in [
        ("apic svr", 0x80F, 0x1FF),
        ("apic tpr", 0x808, 0),
        ("apic ppr", 0x80A, 0),
        ("apic lvt cmci", 0x82F, 0x1_0000),
        ("apic lvt timer", 0x832, 0x1_0000),
        ("apic lvt thermal", 0x833, 0x1_0000),
        ("apic lvt perf", 0x834, 0x1_0000),
        ("apic lvt lint0", 0x835, 0x700),
        ("apic lvt lint1", 0x836, 0x400),
        ("apic lvt error", 0x837, 0x1_0000),
        ("apic timer initial count", 0x838, 0),
        ("apic timer current count", 0x839, 0),
        ("apic timer divide", 0x83E, 0),
        ("apic icr", 0x830, 0),
    ] {
        got.push((what, rdmsr(d, msr), expected));
    }
    wrmsr(d, 0x828, 0);
    got.push(("apic esr", rdmsr(d, 0x828), 0));
    for (what, first) in [
        ("apic isr", 0x810),
        ("apic tmr", 0x818),
        ("apic irr", 0x820),
    ] {
        let all = (first..first + 8).fold(0, |acc, m| acc | rdmsr(d, m));
        got.push((what, all, 0));
    }
    got.push(("apic tsc deadline", rdmsr(d, 0x6E0), 0));
    got
}

#[test]
fn a_reset_undoes_everything_a_guest_can_dirty() {
    let mut d = Devices::with(&platform());
    d.start_clock(0);
    let mut tsc = 0;
    for boot in 0..3 {
        // The state as the guest finds it: power-on at boot 0, after the reset path later.
        let wrong: Vec<_> = reset_state_as_read(&mut d)
            .into_iter()
            .filter(|&(_, read, expected)| read != expected)
            .collect();
        assert!(wrong.is_empty(), "boot {boot}: {wrong:x?}");
        dirty_everything(&mut d, &mut tsc);
        // Before the reset the same reads find the dirt (so the check above can fail):
        // nearly every register differs.
        let dirty: Vec<_> = reset_state_as_read(&mut d)
            .into_iter()
            .filter(|&(_, read, expected)| read != expected)
            .map(|(what, ..)| what)
            .collect();
        for what in [
            "uart ier",
            "pic master imr",
            "pic master isr",
            "pit status",
            "rtc register b enables",
            "rtc register c",
            "apic svr",
            "apic isr",
            "apic irr",
            "apic esr",
        ] {
            assert!(
                dirty.contains(&what),
                "boot {boot}: {what} not dirty: {dirty:?}"
            );
        }
        d.reset();
        tsc += MS;
        d.start_clock(tsc);
        d.advance(tsc + 100_000);
        assert_eq!(
            take(&mut d),
            None,
            "boot {boot}: nothing pending after the reset"
        );
    }
}

#[test]
fn the_rtc_keeps_rate_and_set_across_a_reset_but_no_flag() {
    // What `devreset` relies on for its register C check: register A and SET are
    // battery-backed, so after the reset no periodic flag or update can latch.
    let mut d = Devices::with(&platform());
    d.start_clock(0);
    let mut tsc = 0;
    dirty_everything(&mut d, &mut tsc);
    d.reset();
    d.start_clock(tsc);
    d.advance(tsc + 3_000 * MS);
    outb(&mut d, 0x70, 0x0A);
    assert_eq!(inb(&mut d, 0x71) & 0x0F, 0, "rate kept");
    outb(&mut d, 0x70, 0x0B);
    assert_eq!(
        inb(&mut d, 0x71),
        0x82,
        "SET and 24 h kept, enables cleared"
    );
    outb(&mut d, 0x70, 0x0C);
    assert_eq!(inb(&mut d, 0x71), 0, "3 s later, still no flag");
}

#[test]
fn many_resets_at_a_real_tsc_rate_keep_every_timer_firing() {
    let mut d = Devices::with(&PlatformConfig {
        tsc_hz: 2_900_000_000,
        ..platform()
    });
    let mut tsc = 123_456_789_000u64;
    d.start_clock(tsc);
    let mut step = 977u64;
    for boot in 0..1500 {
        let wrong: Vec<_> = reset_state_as_read(&mut d)
            .into_iter()
            .filter(|&(_, read, expected)| read != expected)
            .collect();
        assert!(wrong.is_empty(), "boot {boot}: {wrong:x?}");
        dirty_everything(&mut d, &mut tsc);
        d.reset();
        step = (step * 7919 + 13) % 50_000_000;
        tsc += step;
        d.start_clock(tsc);
    }
}
