//! Tests of the hardware backing against a fake host PMU.
//!
//! The fake decodes MSR indices itself (from the manuals, not from the backing's layout code),
//! panics on any access to an MSR the host it models lacks and on any write with a reserved bit
//! set, records every index touched, and "counts": between load and save a test adds N events
//! to each counter that is enabled in hardware (event select EN or fixed-control enable, global
//! control where the host has it, and on AMD the Host/Guest-only bits against the mode), with
//! the host's counter width and overflow into the global status.

use std::collections::BTreeSet;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::features::{PmuInfo, Vendor};

const EN: u64 = 1 << 22;
const GUEST_ONLY: u64 = 1 << 40;
const HOST_ONLY: u64 = 1 << 41;

fn mask(width: u8) -> u64 {
    (1u64 << width) - 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Sel(usize),
    Ctr(usize),
    CtrFullWidth(usize),
    Fixed(usize),
    FixedCtrl,
    GlobalCtrl,
    GlobalStatus,
    StatusClear,
    StatusSet,
}

/// The host PMU's registers (what "restored exactly" compares).
#[derive(Clone, Debug, PartialEq, Eq)]
struct HwRegs {
    sel: Vec<u64>,
    ctr: Vec<u64>,
    fixed: Vec<u64>,
    fixed_ctrl: u64,
    global_ctrl: u64,
    global_status: u64,
}

#[derive(Clone, Debug)]
struct FakePmu {
    caps: HostPmuCaps,
    regs: HwRegs,
    touched: BTreeSet<u32>,
}

impl FakePmu {
    fn new(caps: HostPmuCaps) -> FakePmu {
        let p = caps.pmu;
        FakePmu {
            caps,
            regs: HwRegs {
                sel: vec![0; usize::from(p.gp_counters)],
                ctr: vec![0; usize::from(p.gp_counters)],
                fixed: vec![0; usize::from(p.fixed_counters)],
                fixed_ctrl: 0,
                global_ctrl: 0,
                global_status: 0,
            },
            touched: BTreeSet::new(),
        }
    }

    fn intel(&self) -> bool {
        self.caps.vendor == Vendor::Intel
    }

    fn global(&self) -> bool {
        if self.intel() {
            self.caps.pmu.version >= 2
        } else {
            self.caps.pmu.amd_perfmon_v2
        }
    }

    /// Counter bits in the global layout.
    fn counter_bits(&self) -> u64 {
        let p = self.caps.pmu;
        mask(p.gp_counters) | (mask(p.fixed_counters) << 32)
    }

    fn decode(&self, msr: u32) -> Reg {
        let p = self.caps.pmu;
        let gp = u32::from(p.gp_counters);
        let within = |base: u32, n: u32| msr.checked_sub(base).filter(|&o| o < n);
        let r = if self.intel() {
            let v2 = p.version >= 2;
            if let Some(o) = within(0xC1, gp) {
                Some(Reg::Ctr(o as usize))
            } else if let Some(o) = within(0x4C1, gp).filter(|_| self.caps.full_width_writes) {
                Some(Reg::CtrFullWidth(o as usize))
            } else if let Some(o) = within(0x186, gp) {
                Some(Reg::Sel(o as usize))
            } else if let Some(o) = within(0x309, u32::from(p.fixed_counters)) {
                Some(Reg::Fixed(o as usize))
            } else {
                match msr {
                    0x38D if v2 => Some(Reg::FixedCtrl),
                    0x38E if v2 => Some(Reg::GlobalStatus),
                    0x38F if v2 => Some(Reg::GlobalCtrl),
                    0x390 if v2 => Some(Reg::StatusClear),
                    0x391 if p.version >= 4 => Some(Reg::StatusSet),
                    _ => None,
                }
            }
        } else if let Some(o) = within(0xC001_0000, 4) {
            Some(Reg::Sel(o as usize))
        } else if let Some(o) = within(0xC001_0004, 4) {
            Some(Reg::Ctr(o as usize))
        } else if let Some(o) = within(0xC001_0200, 2 * gp).filter(|_| p.amd_core_ext) {
            let n = (o / 2) as usize;
            Some(if o % 2 == 0 { Reg::Sel(n) } else { Reg::Ctr(n) })
        } else if p.amd_perfmon_v2 {
            match msr {
                0xC000_0300 => Some(Reg::GlobalStatus),
                0xC000_0301 => Some(Reg::GlobalCtrl),
                0xC000_0302 => Some(Reg::StatusClear),
                0xC000_0303 => Some(Reg::StatusSet),
                _ => None,
            }
        } else {
            None
        };
        r.unwrap_or_else(|| panic!("host PMU has no MSR {msr:#x}"))
    }

    /// Counts `gp[n]` / `fixed[n]` events on each counter enabled in hardware, in guest mode or
    /// host mode (AMD Host/Guest-only bits; Intel counts in both).
    fn count(&mut self, guest_mode: bool, gp: &[u64], fixed: &[u64]) {
        let p = self.caps.pmu;
        let global = self.global();
        let r = &mut self.regs;
        let on = |bit: usize| !global || r.global_ctrl & (1 << bit) != 0;
        let mut overflow = 0u64;
        let mut add = |v: &mut u64, n: u64, width: u8, bit: usize| {
            let sum = u128::from(*v) + u128::from(n);
            if sum > u128::from(mask(width)) {
                overflow |= 1 << bit;
            }
            *v = (sum as u64) & mask(width);
        };
        for n in 0..r.ctr.len() {
            let sel = r.sel[n];
            let mut counts = sel & EN != 0 && on(n);
            if self.caps.vendor == Vendor::Amd {
                let (g, h) = (sel & GUEST_ONLY != 0, sel & HOST_ONLY != 0);
                if g != h {
                    counts &= if guest_mode { g } else { h };
                }
            }
            if counts {
                add(
                    &mut r.ctr[n],
                    gp.get(n).copied().unwrap_or(0),
                    p.gp_width,
                    n,
                );
            }
        }
        for n in 0..r.fixed.len() {
            if (r.fixed_ctrl >> (4 * n)) & 0b11 != 0 && on(32 + n) {
                let e = fixed.get(n).copied().unwrap_or(0);
                add(&mut r.fixed[n], e, p.fixed_width, 32 + n);
            }
        }
        if global {
            r.global_status |= overflow;
        }
    }
}

impl HostPmu for FakePmu {
    fn read(&mut self, msr: u32) -> u64 {
        let reg = self.decode(msr);
        self.touched.insert(msr);
        let r = &self.regs;
        match reg {
            Reg::Sel(n) => r.sel[n],
            Reg::Ctr(n) | Reg::CtrFullWidth(n) => r.ctr[n],
            Reg::Fixed(n) => r.fixed[n],
            Reg::FixedCtrl => r.fixed_ctrl,
            Reg::GlobalCtrl => r.global_ctrl,
            Reg::GlobalStatus => r.global_status,
            Reg::StatusClear | Reg::StatusSet => 0,
        }
    }

    fn write(&mut self, msr: u32, v: u64) {
        let reg = self.decode(msr);
        self.touched.insert(msr);
        let p = self.caps.pmu;
        let intel = self.intel();
        let bits = self.counter_bits();
        let r = &mut self.regs;
        let reserved = |bad: u64| assert_eq!(v & bad, 0, "reserved bits in {v:#x} to {msr:#x}");
        match reg {
            Reg::Sel(n) => {
                if intel {
                    let mut bad = !mask(32);
                    if p.version >= 5 {
                        bad |= 1 << 21;
                    }
                    reserved(bad);
                } else {
                    reserved((1 << 19) | (1 << 21) | (0xF << 36) | !mask(42));
                }
                r.sel[n] = v;
            }
            Reg::Ctr(n) => {
                if intel {
                    r.ctr[n] = (v as u32 as i32 as i64 as u64) & mask(p.gp_width);
                } else {
                    reserved(!mask(p.gp_width));
                    r.ctr[n] = v;
                }
            }
            Reg::CtrFullWidth(n) => {
                reserved(!mask(p.gp_width));
                r.ctr[n] = v;
            }
            Reg::Fixed(n) => {
                reserved(!mask(p.fixed_width));
                r.fixed[n] = v;
            }
            Reg::FixedCtrl => {
                let per: u64 = if p.version >= 5 { 0b1011 } else { 0b1111 };
                let ok = (0..p.fixed_counters).fold(0, |a, n| a | per << (4 * n));
                reserved(!ok);
                r.fixed_ctrl = v;
            }
            Reg::GlobalCtrl => {
                reserved(!bits);
                r.global_ctrl = v;
            }
            Reg::GlobalStatus => panic!("global status is read-only"),
            Reg::StatusClear => r.global_status &= !v,
            Reg::StatusSet => r.global_status |= v & bits,
        }
    }
}

fn intel_host(version: u8, gp: u8, fixed: u8, width: u8, fw: bool) -> HostPmuCaps {
    HostPmuCaps {
        vendor: Vendor::Intel,
        pmu: PmuInfo {
            version,
            gp_counters: gp,
            gp_width: width,
            fixed_counters: fixed,
            fixed_width: width,
            amd_core_ext: false,
            amd_perfmon_v2: false,
        },
        full_width_writes: fw,
    }
}

fn amd_host(kind: AmdKind, gp: u8) -> HostPmuCaps {
    let (version, ext, v2) = match kind {
        AmdKind::Legacy => (0, false, false),
        AmdKind::CoreExt => (1, true, false),
        AmdKind::PerfMonV2 => (2, true, true),
    };
    HostPmuCaps {
        vendor: Vendor::Amd,
        pmu: PmuInfo {
            version,
            gp_counters: gp,
            gp_width: 48,
            fixed_counters: 0,
            fixed_width: 0,
            amd_core_ext: ext,
            amd_perfmon_v2: v2,
        },
        full_width_writes: false,
    }
}

fn intel_cfg(version: u8, gp: u8, fixed: u8, width: u8) -> PmuConfig {
    PmuConfig::Intel {
        version,
        gp_counters: gp,
        fixed_counters: fixed,
        width,
        full_width_writes: version >= 2,
    }
}

fn hardware(host: &HostPmuCaps, state: &VpmuState) -> Hardware {
    match Backing::choose(BackingRequest::Hardware, host, &state.model()) {
        Backing::Hardware(h) => h,
        Backing::None(why) => panic!("expected hardware backing, got {why:?}"),
    }
}

fn choose(host: &HostPmuCaps, config: PmuConfig, vendor: Vendor) -> Backing {
    Backing::choose(
        BackingRequest::Hardware,
        host,
        &Model::derive(&config, vendor),
    )
}

fn why(b: Backing) -> Option<NoBacking> {
    match b {
        Backing::None(w) => Some(w),
        Backing::Hardware(_) => None,
    }
}

/// load, fake counts in guest mode, save.
fn round_trip(
    host: &mut FakePmu,
    state: &mut VpmuState,
    gp: &[u64],
    fixed: &[u64],
) -> Result<(), StaleModel> {
    let hw = hardware(&host.caps, state);
    let loaded = hw.load(state, host)?;
    host.count(true, gp, fixed);
    loaded.save(state, host)
}

// ---------------------------------------------------------------------------------------------
// Choice
// ---------------------------------------------------------------------------------------------

#[test]
fn choose_matches_vendor_counts_and_widths() {
    let skylake = intel_host(4, 4, 3, 48, true);
    let cfg = intel_cfg(4, 4, 3, 48);
    assert_eq!(choose(&skylake, cfg, Vendor::Intel).as_str(), "hardware");
    assert_eq!(
        why(choose(&skylake, intel_cfg(2, 2, 1, 40), Vendor::Intel)),
        None
    );
    assert_eq!(
        why(choose(&skylake, intel_cfg(4, 8, 3, 48), Vendor::Intel)),
        Some(NoBacking::GpCounters)
    );
    assert_eq!(
        why(choose(&skylake, intel_cfg(5, 4, 3, 48), Vendor::Intel)),
        Some(NoBacking::HostVersion)
    );
    assert_eq!(
        why(choose(
            &intel_host(4, 4, 2, 48, true),
            intel_cfg(4, 4, 3, 48),
            Vendor::Intel
        )),
        Some(NoBacking::FixedCounters)
    );
    assert_eq!(
        why(choose(&intel_host(4, 4, 3, 40, true), cfg, Vendor::Intel)),
        Some(NoBacking::Width)
    );
    assert_eq!(
        why(choose(&intel_host(4, 4, 3, 48, false), cfg, Vendor::Intel)),
        Some(NoBacking::NoFullWidthWrites)
    );
    // An Intel guest model on an AMD host, and the reverse.
    assert_eq!(
        why(choose(&amd_host(AmdKind::PerfMonV2, 6), cfg, Vendor::Intel)),
        Some(NoBacking::VendorMismatch)
    );
    assert_eq!(
        why(choose(
            &skylake,
            PmuConfig::amd(AmdKind::Legacy),
            Vendor::Amd
        )),
        Some(NoBacking::VendorMismatch)
    );
    // The model is Off for a vendor mismatch between configuration and guest: no PMU.
    assert_eq!(
        why(choose(
            &skylake,
            PmuConfig::amd(AmdKind::Legacy),
            Vendor::Intel
        )),
        Some(NoBacking::GuestPmuOff)
    );
    assert_eq!(
        why(choose(&skylake, PmuConfig::Off, Vendor::Intel)),
        Some(NoBacking::GuestPmuOff)
    );
    assert_eq!(
        why(Backing::choose(
            BackingRequest::None,
            &skylake,
            &Model::derive(&cfg, Vendor::Intel)
        )),
        Some(NoBacking::NotRequested)
    );
}

#[test]
fn choose_amd_kinds() {
    let legacy = amd_host(AmdKind::Legacy, 4);
    let ext = amd_host(AmdKind::CoreExt, 6);
    let v2 = amd_host(AmdKind::PerfMonV2, 6);
    let v2_small = amd_host(AmdKind::PerfMonV2, 3);
    let g = |k| PmuConfig::amd(k);
    assert_eq!(why(choose(&legacy, g(AmdKind::Legacy), Vendor::Amd)), None);
    assert_eq!(
        why(choose(&legacy, g(AmdKind::CoreExt), Vendor::Amd)),
        Some(NoBacking::GpCounters)
    );
    assert_eq!(why(choose(&ext, g(AmdKind::CoreExt), Vendor::Amd)), None);
    assert_eq!(
        why(choose(&ext, g(AmdKind::PerfMonV2), Vendor::Amd)),
        Some(NoBacking::HostVersion)
    );
    assert_eq!(why(choose(&v2, g(AmdKind::PerfMonV2), Vendor::Amd)), None);
    assert_eq!(why(choose(&v2, g(AmdKind::Legacy), Vendor::Amd)), None);
    assert_eq!(
        why(choose(&v2_small, g(AmdKind::PerfMonV2), Vendor::Amd)),
        Some(NoBacking::GpCounters)
    );
    assert_eq!(
        why(choose(
            &v2_small,
            PmuConfig::amd_with(AmdKind::PerfMonV2, Some(3)),
            Vendor::Amd
        )),
        None
    );
}

#[test]
fn caps_from_features_read_fw_write_only_on_intel() {
    let mut f = crate::features::HostFeatures {
        vendor: Vendor::Intel,
        virt: crate::features::VirtKind::None,
        virt_unusable: None,
        nested_paging: false,
        nrips: false,
        asids: 0,
        vpid: false,
        svm_revision: 0,
        x2apic: false,
        under_hypervisor: false,
        tme: false,
        pmu: PmuInfo::default(),
    };
    assert!(HostPmuCaps::new(&f, Some(PERF_CAPABILITIES_FW_WRITE)).full_width_writes);
    assert!(!HostPmuCaps::new(&f, Some(0)).full_width_writes);
    assert!(!HostPmuCaps::new(&f, None).full_width_writes);
    f.vendor = Vendor::Amd;
    assert!(!HostPmuCaps::new(&f, Some(PERF_CAPABILITIES_FW_WRITE)).full_width_writes);
}

#[test]
fn backing_request_parses() {
    assert_eq!(BackingRequest::parse("none"), Some(BackingRequest::None));
    assert_eq!(
        BackingRequest::parse("hardware"),
        Some(BackingRequest::Hardware)
    );
    assert_eq!(BackingRequest::parse("hw"), None);
    assert_eq!(BackingRequest::default(), BackingRequest::None);
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn intel_counts_come_back_masked_and_disabled_counters_do_not_count() {
    let mut host = FakePmu::new(intel_host(4, 4, 3, 48, true));
    let mut s = VpmuState::reset(&intel_cfg(4, 4, 3, 48), Vendor::Intel);
    // Counter 0 counts (EN + USR + OS, event 0x3C), counter 1 is programmed but not enabled,
    // counter 2 enabled but off in global control, fixed 1 on (OS+USR), fixed 0 off.
    s.wrmsr(IA32_PERFEVTSEL0, EN | (3 << 16) | 0x3C).unwrap();
    s.wrmsr(IA32_PERFEVTSEL0 + 1, (3 << 16) | 0x3C).unwrap();
    s.wrmsr(IA32_PERFEVTSEL0 + 2, EN | 0xC0).unwrap();
    s.wrmsr(IA32_A_PMC0, 100).unwrap();
    s.wrmsr(IA32_A_PMC0 + 1, 7).unwrap();
    s.wrmsr(IA32_A_PMC0 + 2, 9).unwrap();
    s.wrmsr(IA32_FIXED_CTR_CTRL, 0b0011 << 4).unwrap();
    s.wrmsr(IA32_FIXED_CTR0 + 1, 5).unwrap();
    s.wrmsr(IA32_PERF_GLOBAL_CTRL, 0b0011 | (0b111 << 32))
        .unwrap();
    round_trip(&mut host, &mut s, &[1000, 1000, 1000, 1000], &[50, 60, 70]).unwrap();
    let r = s.registers();
    assert_eq!(r.counters, &[1100, 7, 9, 0]);
    assert_eq!(r.fixed, &[0, 65, 0]);
    assert_eq!(r.global_status, 0);
    // The guest's control registers are untouched by the round trip.
    assert_eq!(r.event_selects[0], EN | (3 << 16) | 0x3C);
    assert_eq!(r.global_ctrl, 0b0011 | (0b111 << 32));
}

#[test]
fn overflow_sets_the_guest_status_bit_at_the_guest_width() {
    // A 40-bit guest on a 48-bit host: the guest's counter wraps at 2^40, not 2^48.
    let mut host = FakePmu::new(intel_host(4, 4, 3, 48, true));
    let mut s = VpmuState::reset(&intel_cfg(4, 4, 3, 40), Vendor::Intel);
    let top = mask(40);
    s.wrmsr(IA32_PERFEVTSEL0 + 1, EN | 0x3C).unwrap();
    s.wrmsr(IA32_A_PMC0 + 1, top - 9).unwrap();
    s.wrmsr(IA32_PERFEVTSEL0 + 2, EN | 0x3C).unwrap();
    s.wrmsr(IA32_A_PMC0 + 2, top - 100).unwrap();
    s.wrmsr(IA32_FIXED_CTR_CTRL, 0b0010).unwrap();
    s.wrmsr(IA32_FIXED_CTR0, top).unwrap();
    s.wrmsr(IA32_PERF_GLOBAL_CTRL, 0b0110 | (1 << 32)).unwrap();
    round_trip(&mut host, &mut s, &[0, 15, 50, 0], &[1]).unwrap();
    let r = s.registers();
    assert_eq!(r.counters[1], 5, "wrapped at 2^40");
    assert_eq!(r.counters[2], top - 50, "did not wrap");
    assert_eq!(r.fixed[0], 0);
    assert_eq!(r.global_status, (1 << 1) | (1 << 32));
    assert_eq!(
        s.rdmsr(IA32_PERF_GLOBAL_STATUS),
        MsrResult::Value(r.global_status)
    );
    // The guest acknowledges it; the next round trip keeps counting from the wrapped value.
    s.wrmsr(IA32_PERF_GLOBAL_OVF_CTRL, (1 << 1) | (1 << 32))
        .unwrap();
    round_trip(&mut host, &mut s, &[0, 1, 0, 0], &[0]).unwrap();
    assert_eq!(s.registers().counters[1], 6);
    assert_eq!(s.registers().global_status, 0);
    assert_eq!(host.regs.global_status, 0, "host status left clean");
}

#[test]
fn guest_without_global_status_gets_counts_but_no_status() {
    // Intel version 1 guest on a version 4 host: every counter enabled by its select alone.
    let mut host = FakePmu::new(intel_host(4, 4, 3, 48, true));
    let mut s = VpmuState::reset(&intel_cfg(1, 2, 0, 32), Vendor::Intel);
    s.wrmsr(IA32_PERFEVTSEL0, EN | 0x3C).unwrap();
    s.wrmsr(IA32_PMC0, 0xFFFF_FFF0).unwrap();
    round_trip(&mut host, &mut s, &[0x20, 0], &[]).unwrap();
    assert_eq!(s.registers().counters, &[0x10, 0]);
    assert_eq!(s.registers().global_status, 0);
    assert_eq!(s.rdmsr(IA32_PERF_GLOBAL_STATUS), MsrResult::Gp);
    assert_eq!(host.regs.global_status, 0);
}

fn busy_intel_host() -> FakePmu {
    let mut host = FakePmu::new(intel_host(4, 8, 4, 48, true));
    let r = &mut host.regs;
    for n in 0..8 {
        r.sel[n] = EN | (1 << 17) | (0x10 + n as u64);
        r.ctr[n] = 0x0012_3456_789A + n as u64;
    }
    for n in 0..4 {
        r.fixed[n] = 0xABCD_0000 + n as u64;
    }
    r.fixed_ctrl = 0x3333;
    r.global_ctrl = 0xFF | (0xF << 32);
    r.global_status = (1 << 0) | (1 << 5) | (1 << 33);
    host
}

#[test]
fn host_state_is_restored_exactly() {
    let mut host = busy_intel_host();
    let before = host.regs.clone();
    let mut s = VpmuState::reset(&intel_cfg(4, 4, 3, 48), Vendor::Intel);
    s.wrmsr(IA32_PERFEVTSEL0, EN | 0x3C).unwrap();
    s.wrmsr(IA32_FIXED_CTR_CTRL, 0x333).unwrap();
    s.wrmsr(IA32_PERF_GLOBAL_CTRL, 0xF | (0x7 << 32)).unwrap();
    s.wrmsr(IA32_A_PMC0, mask(48) - 1).unwrap();
    round_trip(&mut host, &mut s, &[5; 8], &[5; 4]).unwrap();
    assert_eq!(host.regs, before);
    // The guest saw its own overflow, not the host's bits 0 and 33.
    assert_eq!(s.registers().global_status, 1 << 0);
    assert_eq!(s.registers().counters[0], 3);
    assert_eq!(s.registers().fixed, &[5, 5, 5]);
}

#[test]
fn host_counters_do_not_count_while_the_guest_runs() {
    let mut host = busy_intel_host();
    let s = VpmuState::reset(&intel_cfg(2, 2, 1, 48), Vendor::Intel);
    let hw = hardware(&host.caps, &s);
    let before = host.regs.clone();
    let loaded = hw.load(&s, &mut host).unwrap();
    // Counters 2..8 and fixed 1..4 belong to the host: stopped by global control.
    host.count(true, &[1; 8], &[1; 4]);
    let mut s2 = s;
    loaded.save(&mut s2, &mut host).unwrap();
    assert_eq!(host.regs, before);
    // The reset state of a v2 guest enables its GP counters in global control, but no select
    // has EN: nothing counted.
    assert_eq!(s2, s);
}

#[test]
fn a_guest_with_fewer_counters_never_touches_the_extra_ones() {
    let mut host = busy_intel_host();
    let mut s = VpmuState::reset(&intel_cfg(4, 2, 1, 48), Vendor::Intel);
    s.wrmsr(IA32_PERFEVTSEL0 + 1, EN).unwrap();
    round_trip(&mut host, &mut s, &[3; 8], &[3; 4]).unwrap();
    assert_eq!(s.registers().counters, &[0, 3]);
    let allowed: BTreeSet<u32> = [
        IA32_PMC0,
        IA32_PMC0 + 1,
        IA32_A_PMC0,
        IA32_A_PMC0 + 1,
        IA32_PERFEVTSEL0,
        IA32_PERFEVTSEL0 + 1,
        IA32_FIXED_CTR0,
        IA32_FIXED_CTR_CTRL,
        IA32_PERF_GLOBAL_CTRL,
        IA32_PERF_GLOBAL_STATUS,
        IA32_PERF_GLOBAL_STATUS_RESET,
        IA32_PERF_GLOBAL_STATUS_SET,
    ]
    .into();
    assert!(
        host.touched.is_subset(&allowed),
        "touched {:x?}",
        host.touched.difference(&allowed).collect::<Vec<_>>()
    );
}

#[test]
fn a_guest_without_fixed_counters_leaves_fixed_registers_alone() {
    let mut host = busy_intel_host();
    let mut s = VpmuState::reset(&intel_cfg(2, 4, 0, 48), Vendor::Intel);
    round_trip(&mut host, &mut s, &[1; 8], &[1; 4]).unwrap();
    assert!(
        host.touched
            .iter()
            .all(|&m| m != IA32_FIXED_CTR_CTRL && !(0x309..0x30D).contains(&m))
    );
}

#[test]
fn intel_v2_host_without_status_set_loses_only_what_it_cannot_reset() {
    // Version 2 has no STATUS_SET: the backing must not name it.
    let mut host = FakePmu::new(intel_host(2, 4, 3, 48, true));
    host.regs.global_ctrl = 0xF;
    host.regs.sel[3] = EN;
    host.regs.ctr[3] = 77;
    let mut s = VpmuState::reset(&intel_cfg(2, 2, 1, 48), Vendor::Intel);
    s.wrmsr(IA32_PERFEVTSEL0, EN).unwrap();
    round_trip(&mut host, &mut s, &[4; 4], &[0]).unwrap();
    assert_eq!(s.registers().counters, &[4, 0]);
    assert!(!host.touched.contains(&IA32_PERF_GLOBAL_STATUS_SET));
    assert_eq!(
        (host.regs.global_ctrl, host.regs.sel[3], host.regs.ctr[3]),
        (0xF, EN, 77)
    );
}

#[test]
fn anythread_and_interrupt_bits_stay_in_the_guest_registers_only() {
    // A version 3 guest may set AnyThread; a version 5 host reserves it (the fake panics).
    let mut host = FakePmu::new(intel_host(5, 4, 4, 48, true));
    let mut s = VpmuState::reset(&intel_cfg(3, 4, 3, 48), Vendor::Intel);
    let sel = EN | (1 << 21) | (1 << 20) | 0x3C;
    s.wrmsr(IA32_PERFEVTSEL0, sel).unwrap();
    s.wrmsr(IA32_FIXED_CTR_CTRL, 0b1111).unwrap();
    s.wrmsr(IA32_PERF_GLOBAL_CTRL, 1 | (1 << 32)).unwrap();
    let hw = hardware(&host.caps, &s);
    let loaded = hw.load(&s, &mut host).unwrap();
    assert_eq!(host.regs.sel[0], EN | 0x3C);
    assert_eq!(host.regs.fixed_ctrl, 0b0011);
    assert_eq!(loaded.guest_global_ctrl(), 1 | (1 << 32));
    host.count(true, &[2], &[3]);
    loaded.save(&mut s, &mut host).unwrap();
    assert_eq!(s.registers().event_selects[0], sel);
    assert_eq!(s.registers().fixed_ctrl, 0b1111);
    assert_eq!((s.registers().counters[0], s.registers().fixed[0]), (2, 3));
}

#[test]
fn amd_counts_guest_mode_only() {
    for (kind, gp) in [
        (AmdKind::Legacy, 4),
        (AmdKind::CoreExt, 6),
        (AmdKind::PerfMonV2, 6),
    ] {
        let mut host = FakePmu::new(amd_host(kind, gp));
        let mut s = VpmuState::reset(&PmuConfig::amd(kind), Vendor::Amd);
        let sel_msr = |n: u32| {
            if kind == AmdKind::Legacy {
                AMD_PERF_CTL0 + n
            } else {
                AMD_PERF_CTL_EXT0 + 2 * n
            }
        };
        // Counter 0 counts; counter 1 asked for host-only counting (it is a guest: counts
        // all the same, as guest-only); counter 2 not enabled.
        s.wrmsr(sel_msr(0), EN | 0x76).unwrap();
        s.wrmsr(sel_msr(1), EN | HOST_ONLY | 0x76).unwrap();
        s.wrmsr(sel_msr(2), 0x76).unwrap();
        s.wrmsr(
            sel_msr(0) + 1 + u32::from(kind == AmdKind::Legacy) * 3,
            mask(48) - 1,
        )
        .unwrap();
        let hw = hardware(&host.caps, &s);
        let loaded = hw.load(&s, &mut host).unwrap();
        for n in 0..2 {
            assert_eq!(host.regs.sel[n] & (GUEST_ONLY | HOST_ONLY), GUEST_ONLY);
        }
        host.count(false, &[1000; 6], &[]);
        host.count(true, &[3; 6], &[]);
        loaded.save(&mut s, &mut host).unwrap();
        let r = s.registers();
        assert_eq!(&r.counters[..3], &[1, 3, 0], "{kind:?}");
        let status = if kind == AmdKind::PerfMonV2 { 1 } else { 0 };
        assert_eq!(r.global_status, status, "{kind:?}");
        assert_eq!(host.regs.sel, vec![0; usize::from(gp)]);
        assert_eq!(host.regs.global_status, 0);
    }
}

#[test]
fn amd_legacy_guest_on_core_ext_host_uses_the_extension_block_for_its_four() {
    let mut host = FakePmu::new(amd_host(AmdKind::CoreExt, 6));
    let mut s = VpmuState::reset(&PmuConfig::amd(AmdKind::Legacy), Vendor::Amd);
    s.wrmsr(AMD_PERF_CTL0 + 3, EN).unwrap();
    round_trip(&mut host, &mut s, &[9; 6], &[]).unwrap();
    assert_eq!(s.registers().counters, &[0, 0, 0, 9]);
    assert!(
        host.touched
            .iter()
            .all(|&m| (AMD_PERF_CTL_EXT0..AMD_PERF_CTL_EXT0 + 8).contains(&m))
    );
}

#[test]
fn reset_leaves_nothing_stale_and_a_stale_choice_is_refused() {
    let caps = intel_host(4, 8, 3, 48, true);
    let mut pmu = VmPmu::new(intel_cfg(4, 8, 3, 48), Vendor::Intel).unwrap();
    pmu.wrmsr(IA32_PERFEVTSEL0 + 7, EN).unwrap();
    pmu.wrmsr(IA32_A_PMC0 + 7, 1234).unwrap();
    let old = Backing::choose(BackingRequest::Hardware, &caps, &pmu.state().model());
    let mut host = FakePmu::new(caps);
    pmu.run_backed(&old, &mut host, || ());
    assert!(host.touched.contains(&(IA32_PERFEVTSEL0 + 7)));
    // Reset into a smaller configuration: the state is rebuilt by VpmuState::reset only.
    pmu.set_pending_config(intel_cfg(2, 2, 1, 48)).unwrap();
    pmu.reset(Vendor::Intel);
    assert_eq!(
        *pmu.state(),
        VpmuState::reset(&intel_cfg(2, 2, 1, 48), Vendor::Intel)
    );
    // The old choice no longer applies: load refuses, and run_backed runs unbacked.
    let Backing::Hardware(old_hw) = old else {
        panic!()
    };
    let mut fresh = FakePmu::new(caps);
    assert_eq!(old_hw.load(pmu.state(), &mut fresh), Err(StaleModel));
    assert!(fresh.touched.is_empty());
    pmu.run_backed(&old, &mut fresh, || ());
    assert!(fresh.touched.is_empty());
    // A fresh choice touches only the new model's counters (2 GP, 1 fixed).
    let new = Backing::choose(BackingRequest::Hardware, &caps, &pmu.state().model());
    pmu.run_backed(&new, &mut fresh, || ());
    assert!(
        fresh
            .touched
            .iter()
            .all(|&m| m != IA32_PERFEVTSEL0 + 7 && m != IA32_PMC0 + 7 && m != IA32_A_PMC0 + 7)
    );
    assert!(fresh.touched.contains(&(IA32_PERFEVTSEL0 + 1)));
    assert_eq!(
        *pmu.state(),
        VpmuState::reset(&intel_cfg(2, 2, 1, 48), Vendor::Intel)
    );
}

#[test]
fn save_after_a_reset_restores_the_host_and_drops_the_counts() {
    let mut host = busy_intel_host();
    let before = host.regs.clone();
    let mut s = VpmuState::reset(&intel_cfg(4, 4, 3, 48), Vendor::Intel);
    s.wrmsr(IA32_PERFEVTSEL0, EN).unwrap();
    let loaded = hardware(&host.caps, &s).load(&s, &mut host).unwrap();
    host.count(true, &[10; 8], &[10; 4]);
    let mut rebuilt = VpmuState::reset(&intel_cfg(2, 1, 0, 48), Vendor::Intel);
    assert_eq!(loaded.save(&mut rebuilt, &mut host), Err(StaleModel));
    assert_eq!(host.regs, before);
    assert_eq!(
        rebuilt,
        VpmuState::reset(&intel_cfg(2, 1, 0, 48), Vendor::Intel)
    );
}

#[test]
fn run_backed_with_none_touches_nothing() {
    let caps = intel_host(4, 4, 3, 48, true);
    let mut pmu = VmPmu::new(intel_cfg(4, 4, 3, 48), Vendor::Intel).unwrap();
    let none = Backing::choose(BackingRequest::None, &caps, &pmu.state().model());
    let mut host = FakePmu::new(caps);
    assert_eq!(pmu.run_backed(&none, &mut host, || 42), 42);
    assert!(host.touched.is_empty());
    assert_eq!(none.as_str(), "none");
}

// ---------------------------------------------------------------------------------------------
// Property: save(load(state)) = state + counted events, masked
// ---------------------------------------------------------------------------------------------

/// A guest configuration that fits the host, and that host.
fn guest_and_host() -> impl Strategy<Value = (PmuConfig, Vendor, HostPmuCaps)> {
    let intel = (1u8..=5, 1u8..=8, 0u8..=4, 32u8..=48, any::<bool>()).prop_map(
        |(v, gp, fixed, width, busy_host_v5)| {
            let fixed = fixed.min(intel_max_fixed(v));
            let host_v = if busy_host_v5 { 5 } else { v.max(4) };
            let host_fixed = if host_v >= 5 { 4 } else { 3 };
            (
                intel_cfg(v, gp, fixed, width),
                Vendor::Intel,
                intel_host(host_v, 8, host_fixed, 48, true),
            )
        },
    );
    let amd = (0usize..3, 1u8..=6, 0usize..3).prop_map(|(k, gp, hk)| {
        let kinds = [AmdKind::Legacy, AmdKind::CoreExt, AmdKind::PerfMonV2];
        let kind = kinds[k];
        let host_kind = kinds[hk.max(k)];
        let gp = match kind {
            AmdKind::PerfMonV2 => gp,
            k => k.default_gp_counters(),
        };
        let host_gp = host_kind.default_gp_counters();
        (
            PmuConfig::amd_with(kind, Some(gp)),
            Vendor::Amd,
            amd_host(host_kind, host_gp),
        )
    });
    prop_oneof![intel, amd]
}

/// Is counter `bit` (global layout) enabled as the guest sees it?
fn guest_enabled(s: &VpmuState, bit: usize) -> bool {
    let m = s.model();
    let r = s.registers();
    let global = !m.has_global_regs() || r.global_ctrl & (1 << bit) != 0;
    let local = if bit < 32 {
        r.event_selects[bit] & EN != 0
    } else {
        (r.fixed_ctrl >> (4 * (bit - 32))) & 0b11 != 0
    };
    global && local
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn save_of_load_is_state_plus_counted_events(
        (config, vendor, caps) in guest_and_host(),
        writes in proptest::collection::vec((0usize..64, any::<u64>(), any::<bool>()), 0..40),
        gp_events in proptest::collection::vec(0u64..(1 << 34), 8),
        fixed_events in proptest::collection::vec(0u64..(1 << 34), 4),
        host_seed in any::<u64>(),
    ) {
        let mut s = VpmuState::reset(&config, vendor);
        let model = s.model();
        // Random guest register writes through the guest's own WRMSR path (refused ones are
        // simply refused), sometimes with counters close to the top.
        let msrs: Vec<u32> = model.msrs().collect();
        for (i, v, near_top) in writes {
            let msr = msrs[i % msrs.len()];
            let v = if near_top { model.counter_mask().wrapping_sub(v & 0xFFFF) } else { v };
            let _ = s.wrmsr(msr, v);
            let _ = s.wrmsr(msr, v & 0x0000_00FF_0043_FFFF);
        }
        // A host with its own state in every register.
        let mut host = FakePmu::new(caps);
        let bits = host.counter_bits();
        {
            let r = &mut host.regs;
            let mut x = host_seed;
            let mut next = || { x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); x };
            for n in 0..r.ctr.len() {
                r.ctr[n] = next() & mask(48);
                r.sel[n] = next() & 0xFFFF & !(1 << 19) & !(1 << 21) & !(1 << 20);
            }
            for f in r.fixed.iter_mut() { *f = next() & mask(48); }
            if caps.pmu.version >= 2 || caps.pmu.amd_perfmon_v2 {
                r.global_ctrl = next() & bits;
                // Without STATUS_SET the host's status bits cannot all be put back.
                if caps.pmu.version >= 4 || caps.pmu.amd_perfmon_v2 {
                    r.global_status = next() & bits;
                }
            }
            r.fixed_ctrl = next() & 0x3333 & mask(4 * r.fixed.len() as u8);
        }
        let host_before = host.regs.clone();
        let before = s;
        round_trip(&mut host, &mut s, &gp_events, &fixed_events).unwrap();
        prop_assert_eq!(&host.regs, &host_before);
        // Only the guest's counters' registers (and the shared control/status ones).
        let (gp, nf) = (usize::from(s.model().gp_counters()), usize::from(s.model().fixed_counters()));
        for &msr in &host.touched {
            let ok = match host.decode(msr) {
                Reg::Sel(n) | Reg::Ctr(n) | Reg::CtrFullWidth(n) => n < gp,
                Reg::Fixed(n) => n < nf,
                Reg::FixedCtrl => nf > 0,
                _ => true,
            };
            prop_assert!(ok, "touched {:#x}", msr);
        }

        let m = before.model();
        let r0 = before.registers();
        let r1 = s.registers();
        let mut status = r0.global_status;
        // Parallel arrays (before, after, events) indexed by counter number.
        #[allow(clippy::needless_range_loop)]
        for n in 0..r0.counters.len() {
            let (want, of) = if guest_enabled(&before, n) {
                let sum = r0.counters[n] + gp_events[n];
                (sum & m.counter_mask(), sum > m.counter_mask())
            } else {
                (r0.counters[n], false)
            };
            prop_assert_eq!(r1.counters[n], want, "counter {}", n);
            if of { status |= 1 << n; }
        }
        #[allow(clippy::needless_range_loop)]
        for n in 0..r0.fixed.len() {
            let (want, of) = if guest_enabled(&before, 32 + n) {
                let sum = r0.fixed[n] + fixed_events[n];
                (sum & m.counter_mask(), sum > m.counter_mask())
            } else {
                (r0.fixed[n], false)
            };
            prop_assert_eq!(r1.fixed[n], want, "fixed {}", n);
            if of { status |= 1 << (32 + n); }
        }
        prop_assert_eq!(r1.global_status, status & m.global_status_mask());
        // Nothing but counts and status changed.
        prop_assert_eq!(r1.event_selects, r0.event_selects);
        prop_assert_eq!(r1.fixed_ctrl, r0.fixed_ctrl);
        prop_assert_eq!(r1.global_ctrl, r0.global_ctrl);
        prop_assert_eq!(s.model(), before.model());
    }
}
