//! Tests of the vPMU: per-configuration CPUID and MSR sets checked against tables written from the
//! manuals (independently of the model's code), masks, widths, global registers, RDPMC, reset
//! values, and the reset property over random sequences of configurations, writes, resets and
//! vendor changes.

use std::collections::BTreeSet;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::features::Vendor;

const VENDORS: [Vendor; 3] = [Vendor::Intel, Vendor::Amd, Vendor::Other];

fn intel(version: u8, gp: u8, fixed: u8, width: u8, fw: bool) -> PmuConfig {
    PmuConfig::Intel {
        version,
        gp_counters: gp,
        fixed_counters: fixed,
        width,
        full_width_writes: fw,
    }
}

fn amd(kind: AmdKind, gp: u8) -> PmuConfig {
    PmuConfig::Amd {
        kind,
        gp_counters: gp,
    }
}

/// Every valid configuration; `widths` limits the width axis (it does not change which MSRs
/// exist).
fn valid_configs(widths: &[u8]) -> Vec<PmuConfig> {
    let mut v = vec![PmuConfig::Off];
    for version in 1..=5 {
        for gp in 1..=8 {
            for fixed in 0..=intel_max_fixed(version) {
                for &width in widths {
                    for fw in [false, true] {
                        v.push(intel(version, gp, fixed, width, fw));
                    }
                }
            }
        }
    }
    v.push(amd(AmdKind::Legacy, 4));
    v.push(amd(AmdKind::CoreExt, 6));
    for n in 1..=6 {
        v.push(amd(AmdKind::PerfMonV2, n));
    }
    v
}

/// The MSRs the guest should have, written straight from SDM vol. 4 table 2-2 and APM vol. 2
/// §13.2 — deliberately not sharing code with the model.
fn expected_msrs(config: &PmuConfig, vendor: Vendor) -> BTreeSet<u32> {
    let mut s = BTreeSet::new();
    match *config {
        PmuConfig::Off => {}
        PmuConfig::Intel {
            version,
            gp_counters,
            fixed_counters,
            full_width_writes,
            ..
        } if vendor == Vendor::Intel => {
            for i in 0..u32::from(gp_counters) {
                s.insert(0xC1 + i);
                s.insert(0x186 + i);
                if full_width_writes {
                    s.insert(0x4C1 + i);
                }
            }
            for i in 0..u32::from(fixed_counters) {
                s.insert(0x309 + i);
            }
            s.insert(0x345);
            if version >= 2 {
                s.extend([0x38D, 0x38E, 0x38F, 0x390]);
            }
            if version >= 4 {
                s.extend([0x391, 0x392]);
            }
        }
        PmuConfig::Amd { kind, gp_counters } if vendor == Vendor::Amd => {
            for i in 0..u32::from(gp_counters.min(4)) {
                s.insert(0xC001_0000 + i);
                s.insert(0xC001_0004 + i);
            }
            if kind != AmdKind::Legacy {
                for i in 0..u32::from(gp_counters) {
                    s.insert(0xC001_0200 + 2 * i);
                    s.insert(0xC001_0201 + 2 * i);
                }
            }
            if kind == AmdKind::PerfMonV2 {
                s.extend(0xC000_0300..=0xC000_0303);
            }
        }
        _ => {} // vendor mismatch: nothing
    }
    s
}

/// The MSR ranges the brief asks to enumerate.
fn enumerated_msrs() -> impl Iterator<Item = u32> {
    (0..0x500).chain(0xC000_0000..=0xC001_0300)
}

fn existing(state: &VpmuState) -> BTreeSet<u32> {
    enumerated_msrs()
        .filter(|&m| state.rdmsr(m) != MsrResult::Gp)
        .collect()
}

const HOST_ALL_ONES: [u32; 4] = [u32::MAX; 4];

fn pmu_leaves(state: &VpmuState) -> [[u32; 4]; 4] {
    PMU_CPUID_LEAVES.map(|l| state.cpuid(l, 0, HOST_ALL_ONES))
}

/// What the guest sees of a PMU that is off, given an all-ones host.
fn assert_no_pmu(state: &VpmuState) {
    assert!(state.model().is_off());
    assert_eq!(state.cpuid(0xA, 0, HOST_ALL_ONES), [0; 4]);
    assert_eq!(state.cpuid(0x8000_0022, 0, HOST_ALL_ONES), [0; 4]);
    assert_eq!(state.cpuid(0x1, 0, HOST_ALL_ONES)[2] & CPUID_1_ECX_PDCM, 0);
    assert_eq!(
        state.cpuid(0x8000_0001, 0, HOST_ALL_ONES)[2] & CPUID_8000_0001_ECX_PERFCTR_EXT_CORE,
        0
    );
    for m in all_pmu_msrs() {
        assert_eq!(state.rdmsr(m), MsrResult::Gp, "msr {m:#x}");
        let mut s = *state;
        assert_eq!(s.wrmsr(m, 0), Err(Gp), "msr {m:#x}");
    }
    for ecx in [0, 1, 1 << 30, 1 << 31, 0x4000_0000] {
        assert_eq!(state.rdpmc(ecx), Err(Gp));
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn vpmu_config_defaults() {
    assert_eq!(PmuConfig::intel(1), intel(1, 4, 0, 48, false));
    assert_eq!(PmuConfig::intel(2), intel(2, 4, 3, 48, true));
    assert_eq!(PmuConfig::intel(5), intel(5, 4, 3, 48, true));
    assert_eq!(
        PmuConfig::intel_with(3, Some(8), None, Some(40), None),
        intel(3, 8, 3, 40, true)
    );
    assert_eq!(
        PmuConfig::intel_with(2, None, None, None, None),
        PmuConfig::intel(2)
    );
    assert_eq!(PmuConfig::amd(AmdKind::Legacy), amd(AmdKind::Legacy, 4));
    assert_eq!(PmuConfig::amd(AmdKind::CoreExt), amd(AmdKind::CoreExt, 6));
    assert_eq!(
        PmuConfig::amd(AmdKind::PerfMonV2),
        amd(AmdKind::PerfMonV2, 6)
    );
    assert_eq!(
        PmuConfig::amd_with(AmdKind::PerfMonV2, Some(2)),
        amd(AmdKind::PerfMonV2, 2)
    );
    for v in 1..=5 {
        assert_eq!(PmuConfig::intel(v).validate(), Ok(PmuConfig::intel(v)));
    }
    for k in [AmdKind::Legacy, AmdKind::CoreExt, AmdKind::PerfMonV2] {
        assert!(PmuConfig::amd(k).validate().is_ok());
        assert_eq!(AmdKind::parse(k.as_str()), Ok(k));
    }
    for c in valid_configs(&[32, 40, 48]) {
        assert_eq!(c.validate(), Ok(c));
    }
}

#[test]
fn vpmu_config_errors_name_the_field() {
    let field = |c: PmuConfig| c.validate().unwrap_err().field();
    assert_eq!(field(intel(0, 4, 0, 48, true)), "version");
    assert_eq!(field(intel(6, 4, 3, 48, true)), "version");
    assert_eq!(field(intel(2, 0, 3, 48, true)), "gp_counters");
    assert_eq!(field(intel(2, 9, 3, 48, true)), "gp_counters");
    assert_eq!(field(intel(1, 4, 1, 48, true)), "fixed_counters");
    assert_eq!(field(intel(4, 4, 4, 48, true)), "fixed_counters");
    assert_eq!(field(intel(5, 4, 5, 48, true)), "fixed_counters");
    assert_eq!(field(intel(2, 4, 3, 31, true)), "width");
    assert_eq!(field(intel(2, 4, 3, 49, true)), "width");
    assert_eq!(field(amd(AmdKind::Legacy, 6)), "gp_counters");
    assert_eq!(field(amd(AmdKind::CoreExt, 4)), "gp_counters");
    assert_eq!(field(amd(AmdKind::PerfMonV2, 0)), "gp_counters");
    assert_eq!(field(amd(AmdKind::PerfMonV2, 7)), "gp_counters");
    assert_eq!(AmdKind::parse("zen").unwrap_err().field(), "kind");
    // Version is reported first when several fields are wrong.
    assert_eq!(field(intel(9, 0, 9, 0, true)), "version");
    assert_eq!(
        intel(4, 4, 4, 48, true).validate(),
        Err(ConfigError::FixedCounters { got: 4, max: 3 })
    );
    let msg = std::format!("{}", intel(2, 9, 3, 48, true).validate().unwrap_err());
    assert_eq!(
        msg,
        "gp_counters: counter count not allowed for this PMU (got 9, allowed 1..=8)"
    );
}

// ---------------------------------------------------------------------------------------------
// CPUID

#[test]
fn vpmu_cpuid_intel_leaf_0a_per_version() {
    let s = VpmuState::reset(&intel(2, 4, 3, 48, true), Vendor::Intel);
    // EAX: version 2, 4 counters, 48 bits, EBX vector length 7; EDX: 3 fixed, 48 bits.
    assert_eq!(s.cpuid(0xA, 0, HOST_ALL_ONES), [0x0730_0402, 0, 0, 0x603]);

    let s = VpmuState::reset(&intel(1, 2, 0, 40, false), Vendor::Intel);
    assert_eq!(s.cpuid(0xA, 0, HOST_ALL_ONES), [0x0728_0201, 0, 0, 0]);

    let s = VpmuState::reset(&intel(3, 8, 3, 48, true), Vendor::Intel);
    assert_eq!(s.cpuid(0xA, 0, HOST_ALL_ONES), [0x0730_0803, 0, 0, 0x603]);

    let s = VpmuState::reset(&intel(4, 4, 0, 48, true), Vendor::Intel);
    assert_eq!(s.cpuid(0xA, 0, HOST_ALL_ONES), [0x0730_0404, 0, 0, 0]);

    // Version 5: fixed-counter bitmap in ECX, AnyThread deprecation in EDX[15].
    let s = VpmuState::reset(&intel(5, 8, 4, 48, true), Vendor::Intel);
    assert_eq!(
        s.cpuid(0xA, 0, HOST_ALL_ONES),
        [0x0730_0805, 0, 0xF, 0x8000 | 0x600 | 4]
    );
    let s = VpmuState::reset(&intel(5, 1, 0, 32, false), Vendor::Intel);
    assert_eq!(s.cpuid(0xA, 0, HOST_ALL_ONES), [0x0720_0105, 0, 0, 0x8000]);

    // Leaf 0xA does not depend on the subleaf or on the host's values.
    assert_eq!(s.cpuid(0xA, 7, [0; 4]), s.cpuid(0xA, 0, HOST_ALL_ONES));
}

#[test]
fn vpmu_cpuid_bits_and_leaves_for_every_config() {
    for c in valid_configs(&[32, 48]) {
        for vendor in VENDORS {
            let s = VpmuState::reset(&c, vendor);
            let m = s.model();
            let matches = c.vendor() == Some(vendor);
            let a = s.cpuid(0xA, 0, HOST_ALL_ONES);
            let leaf1 = s.cpuid(0x1, 0, HOST_ALL_ONES);
            let ext1 = s.cpuid(0x8000_0001, 0, HOST_ALL_ONES);
            let x22 = s.cpuid(0x8000_0022, 0, HOST_ALL_ONES);
            // Everything but the PMU bits comes back as given.
            assert_eq!(leaf1[2] | CPUID_1_ECX_PDCM, u32::MAX);
            assert_eq!([leaf1[0], leaf1[1], leaf1[3]], [u32::MAX; 3]);
            assert_eq!(ext1[2] | CPUID_8000_0001_ECX_PERFCTR_EXT_CORE, u32::MAX);
            for leaf in [0x0, 0x7, 0xB, 0x8000_0000, 0x8000_0008] {
                assert_eq!(s.cpuid(leaf, 0, HOST_ALL_ONES), HOST_ALL_ONES);
            }
            match c {
                PmuConfig::Intel {
                    version,
                    gp_counters,
                    fixed_counters,
                    width,
                    ..
                } if matches => {
                    assert_eq!(a[0] & 0xFF, u32::from(version));
                    assert_eq!((a[0] >> 8) & 0xFF, u32::from(gp_counters));
                    assert_eq!((a[0] >> 16) & 0xFF, u32::from(width));
                    assert_eq!(a[0] >> 24, 7);
                    assert_eq!(a[1], 0);
                    if version >= 2 {
                        assert_eq!(a[3] & 0x1F, u32::from(fixed_counters));
                    } else {
                        assert_eq!(a[3], 0);
                    }
                    if fixed_counters > 0 {
                        assert_eq!((a[3] >> 5) & 0xFF, u32::from(width));
                    }
                    assert_eq!(a[3] & (1 << 15) != 0, version >= 5);
                    assert_eq!(leaf1[2] & CPUID_1_ECX_PDCM, CPUID_1_ECX_PDCM);
                    assert_eq!(ext1[2] & CPUID_8000_0001_ECX_PERFCTR_EXT_CORE, 0);
                    assert_eq!(x22, [0; 4]);
                }
                PmuConfig::Amd { kind, gp_counters } if matches => {
                    assert_eq!(a, [0; 4]);
                    assert_eq!(leaf1[2] & CPUID_1_ECX_PDCM, 0);
                    assert_eq!(
                        ext1[2] & CPUID_8000_0001_ECX_PERFCTR_EXT_CORE != 0,
                        kind != AmdKind::Legacy
                    );
                    if kind == AmdKind::PerfMonV2 {
                        assert_eq!(x22, [1, u32::from(gp_counters), 0, 0]);
                    } else {
                        assert_eq!(x22, [0; 4]);
                    }
                }
                _ => {
                    assert_no_pmu(&s);
                    assert_eq!(m.effective_config(), PmuConfig::Off);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Which MSRs exist

#[test]
fn vpmu_msr_set_matches_manual_tables_for_every_config() {
    for c in valid_configs(&[48]) {
        for vendor in VENDORS {
            let s = VpmuState::reset(&c, vendor);
            let want = expected_msrs(&c, vendor);
            assert_eq!(existing(&s), want, "{c:?} on {vendor:?}");
            assert_eq!(s.model().msrs().collect::<BTreeSet<_>>(), want);
            assert!(want.iter().all(|&m| is_pmu_msr(m)));
        }
    }
}

#[test]
fn vpmu_msr_decoding_names_aliases() {
    let m = Model::derive(&amd(AmdKind::CoreExt, 6), Vendor::Amd);
    assert_eq!(m.msr(0xC001_0002), Some(PmuMsr::EventSelect(2)));
    assert_eq!(m.msr(0xC001_0204), Some(PmuMsr::EventSelect(2)));
    assert_eq!(m.msr(0xC001_0006), Some(PmuMsr::Counter(2)));
    assert_eq!(m.msr(0xC001_0205), Some(PmuMsr::Counter(2)));
    assert_eq!(m.msr(0xC001_020B), Some(PmuMsr::Counter(5)));
    assert_eq!(m.msr(0xC001_020C), None);
    // Legacy and core-extension indices are one register.
    let mut s = VpmuState::reset(&amd(AmdKind::CoreExt, 6), Vendor::Amd);
    s.wrmsr(0xC001_0001, 0x43_0076).unwrap();
    assert_eq!(s.rdmsr(0xC001_0202), MsrResult::Value(0x43_0076));
    s.wrmsr(0xC001_0207, 1234).unwrap();
    assert_eq!(s.rdmsr(0xC001_0007), MsrResult::Value(1234));

    let m = Model::derive(&intel(4, 2, 3, 48, true), Vendor::Intel);
    assert_eq!(m.msr(0xC2), Some(PmuMsr::Counter(1)));
    assert_eq!(m.msr(0x4C2), Some(PmuMsr::CounterFullWidth(1)));
    assert_eq!(m.msr(0x30B), Some(PmuMsr::Fixed(2)));
    assert_eq!(
        m.msr(IA32_PERF_GLOBAL_STATUS_RESET),
        Some(PmuMsr::GlobalStatusClear)
    );
    assert_eq!(m.msr(0x392), Some(PmuMsr::GlobalInUse));
}

// ---------------------------------------------------------------------------------------------
// Write masks

#[test]
fn vpmu_event_select_masks() {
    let typical = 0x0053_00C0; // EN | INT | OS | USR, umask 0, event C0 (instructions retired)
    for version in 1..=5 {
        let mut s = VpmuState::reset(
            &intel(version, 4, intel_max_fixed(version), 48, true),
            Vendor::Intel,
        );
        assert_eq!(s.wrmsr(0x186, typical), Ok(()));
        assert_eq!(s.rdmsr(0x186), MsrResult::Value(typical));
        assert_eq!(s.wrmsr(0x189, 0xFF_FFFF_FFFF & !(1 << 21)), Err(Gp)); // bit 32+
        assert_eq!(s.wrmsr(0x189, 0xFFFF_FFFF & !(1 << 21)), Ok(()));
        let any = s.wrmsr(0x187, 1 << 21);
        assert_eq!(
            any.is_ok(),
            (3..=4).contains(&version),
            "AnyThread, v{version}"
        );
        assert_eq!(s.wrmsr(0x186, 1 << 63), Err(Gp));
        // A refused write changes nothing.
        assert_eq!(s.rdmsr(0x186), MsrResult::Value(typical));
    }
    let mut s = VpmuState::reset(&amd(AmdKind::PerfMonV2, 6), Vendor::Amd);
    let ok = 0xFF | 0xFF00 | (1 << 16) | (1 << 17) | (1 << 18) | (1 << 20) | (1 << 22) | (1 << 23);
    let ok = ok | (0xFF << 24) | (0xF << 32) | (0b11 << 40);
    assert_eq!(s.wrmsr(0xC001_0200, ok), Ok(()));
    assert_eq!(s.rdmsr(0xC001_0000), MsrResult::Value(ok));
    for bit in [19, 21, 36, 37, 38, 39, 42, 50, 63] {
        assert_eq!(s.wrmsr(0xC001_020A, 1 << bit), Err(Gp), "bit {bit}");
    }
}

#[test]
fn vpmu_fixed_ctrl_masks() {
    let mut s = VpmuState::reset(&intel(2, 4, 3, 48, true), Vendor::Intel);
    assert_eq!(s.wrmsr(0x38D, 0xBBB), Ok(()));
    assert_eq!(s.rdmsr(0x38D), MsrResult::Value(0xBBB));
    assert_eq!(s.wrmsr(0x38D, 0x4), Err(Gp)); // AnyThread is v3+
    assert_eq!(s.wrmsr(0x38D, 1 << 12), Err(Gp)); // no fourth fixed counter
    let mut s = VpmuState::reset(&intel(3, 4, 2, 48, true), Vendor::Intel);
    assert_eq!(s.wrmsr(0x38D, 0xFF), Ok(()));
    assert_eq!(s.wrmsr(0x38D, 0xFFF), Err(Gp)); // only two fixed counters
    let mut s = VpmuState::reset(&intel(5, 4, 4, 48, true), Vendor::Intel);
    assert_eq!(s.wrmsr(0x38D, 0xBBBB), Ok(()));
    assert_eq!(s.wrmsr(0x38D, 0x4000), Err(Gp)); // AnyThread deprecated in v5
    let mut s = VpmuState::reset(&intel(2, 4, 0, 48, true), Vendor::Intel);
    assert_eq!(s.wrmsr(0x38D, 0), Ok(()));
    assert_eq!(s.wrmsr(0x38D, 1), Err(Gp));
}

// ---------------------------------------------------------------------------------------------
// Widths and sign extension

#[test]
fn vpmu_counter_widths_and_sign_extension() {
    let mut s = VpmuState::reset(&intel(2, 4, 3, 48, true), Vendor::Intel);
    // Legacy writes: EAX sign-extended, EDX ignored, then the width.
    s.wrmsr(0xC1, 0x8000_0000).unwrap();
    assert_eq!(s.rdmsr(0xC1), MsrResult::Value(0xFFFF_8000_0000));
    assert_eq!(s.rdmsr(0x4C1), MsrResult::Value(0xFFFF_8000_0000));
    s.wrmsr(0xC1, 0xFFFF_FFFF_7FFF_FFFF).unwrap();
    assert_eq!(s.rdmsr(0xC1), MsrResult::Value(0x7FFF_FFFF));
    s.wrmsr(0xC2, u64::MAX).unwrap();
    assert_eq!(s.rdmsr(0xC2), MsrResult::Value(0xFFFF_FFFF_FFFF));
    // Full-width alias: all 48 bits, nothing above.
    s.wrmsr(0x4C3, 0x1234_5678_9ABC).unwrap();
    assert_eq!(s.rdmsr(0xC3), MsrResult::Value(0x1234_5678_9ABC));
    assert_eq!(s.wrmsr(0x4C3, 1 << 48), Err(Gp));
    assert_eq!(s.rdmsr(0xC3), MsrResult::Value(0x1234_5678_9ABC));
    // Fixed counters: width bits, above them reserved.
    s.wrmsr(0x309, 0xFFFF_FFFF_FFFF).unwrap();
    assert_eq!(s.rdmsr(0x309), MsrResult::Value(0xFFFF_FFFF_FFFF));
    assert_eq!(s.wrmsr(0x30A, 1 << 48), Err(Gp));

    let mut s = VpmuState::reset(&intel(3, 2, 3, 40, true), Vendor::Intel);
    s.wrmsr(0xC1, 0x8000_0001).unwrap();
    assert_eq!(s.rdmsr(0xC1), MsrResult::Value(0xFF_8000_0001));
    assert_eq!(s.wrmsr(0x4C1, 1 << 40), Err(Gp));
    assert_eq!(s.wrmsr(0x30B, 1 << 40), Err(Gp));
    s.wrmsr(0x30B, (1 << 40) - 1).unwrap();

    let mut s = VpmuState::reset(&intel(1, 2, 0, 32, false), Vendor::Intel);
    s.wrmsr(0xC1, 0x8000_0000).unwrap();
    assert_eq!(s.rdmsr(0xC1), MsrResult::Value(0x8000_0000));
    assert_eq!(s.rdmsr(0x4C1), MsrResult::Gp); // no full-width writes advertised
    assert_eq!(s.rdmsr(0x345), MsrResult::Value(0));

    // AMD: 48 bits, the unimplemented upper bits are dropped, never sign-extended from 31.
    for c in [
        amd(AmdKind::Legacy, 4),
        amd(AmdKind::CoreExt, 6),
        amd(AmdKind::PerfMonV2, 3),
    ] {
        let mut s = VpmuState::reset(&c, Vendor::Amd);
        s.wrmsr(0xC001_0004, u64::MAX).unwrap();
        assert_eq!(s.rdmsr(0xC001_0004), MsrResult::Value(0xFFFF_FFFF_FFFF));
        s.wrmsr(0xC001_0005, 0x8000_0000).unwrap();
        assert_eq!(s.rdmsr(0xC001_0005), MsrResult::Value(0x8000_0000));
    }
}

// ---------------------------------------------------------------------------------------------
// Global control and status

#[test]
fn vpmu_intel_global_registers() {
    let mut s = VpmuState::reset(&intel(4, 4, 3, 48, true), Vendor::Intel);
    let counters = 0xF | (0x7 << 32);
    // GLOBAL_CTRL: enables only.
    assert_eq!(s.wrmsr(0x38F, counters), Ok(()));
    assert_eq!(s.rdmsr(0x38F), MsrResult::Value(counters));
    assert_eq!(s.wrmsr(0x38F, 1 << 4), Err(Gp));
    assert_eq!(s.wrmsr(0x38F, 1 << 35), Err(Gp));
    // STATUS is read-only; STATUS_SET sets, STATUS_RESET clears.
    assert_eq!(s.wrmsr(0x38E, 0), Err(Gp));
    assert_eq!(s.wrmsr(0x391, 0b101 | (1 << 33)), Ok(()));
    assert_eq!(s.rdmsr(0x38E), MsrResult::Value(0b101 | (1 << 33)));
    assert_eq!(s.wrmsr(0x391, 1 << 62), Err(Gp)); // DS buffer overflow is not emulated
    assert_eq!(s.wrmsr(0x391, 1 << 4), Err(Gp));
    assert_eq!(s.wrmsr(0x390, 0b100), Ok(()));
    assert_eq!(s.rdmsr(0x38E), MsrResult::Value(0b001 | (1 << 33)));
    // Clearing status the model never sets is accepted (v4: 58, 59, 61, 62, 63).
    let acks = (1 << 58) | (1 << 59) | (1 << 61) | (1 << 62) | (1 << 63);
    assert_eq!(s.wrmsr(0x390, counters | acks), Ok(()));
    assert_eq!(s.rdmsr(0x38E), MsrResult::Value(0));
    assert_eq!(s.wrmsr(0x390, 1 << 55), Err(Gp));
    assert_eq!(s.wrmsr(0x390, 1 << 4), Err(Gp));
    // The write-only registers read as 0.
    assert_eq!(s.rdmsr(0x390), MsrResult::Value(0));
    assert_eq!(s.rdmsr(0x391), MsrResult::Value(0));
    // INUSE follows the event selects and fixed control; it is read-only.
    assert_eq!(s.rdmsr(0x392), MsrResult::Value(0));
    s.wrmsr(0x187, 0x3C).unwrap();
    s.wrmsr(0x38D, 0x020).unwrap(); // fixed 1: USR
    assert_eq!(s.rdmsr(0x392), MsrResult::Value((1 << 1) | (1 << 33)));
    s.wrmsr(0x189, 1 << 20).unwrap(); // INT without an event: PMI in use, counter not
    assert_eq!(
        s.rdmsr(0x392),
        MsrResult::Value((1 << 1) | (1 << 33) | (1 << 63))
    );
    assert_eq!(s.wrmsr(0x392, 0), Err(Gp));
    // PERF_CAPABILITIES is read-only.
    assert_eq!(s.rdmsr(0x345), MsrResult::Value(PERF_CAPABILITIES_FW_WRITE));
    assert_eq!(s.wrmsr(0x345, PERF_CAPABILITIES_FW_WRITE), Err(Gp));

    // Version 2: OVF_CTRL without the v4 bits, no STATUS_SET / INUSE.
    let mut s = VpmuState::reset(&intel(2, 2, 3, 48, true), Vendor::Intel);
    assert_eq!(s.wrmsr(0x390, 0b11 | (0x7 << 32) | (3 << 62)), Ok(()));
    assert_eq!(s.wrmsr(0x390, 1 << 58), Err(Gp));
    assert_eq!(s.wrmsr(0x390, 1 << 2), Err(Gp));
    assert_eq!(s.rdmsr(0x391), MsrResult::Gp);
    assert_eq!(s.wrmsr(0x391, 1), Err(Gp));
    assert_eq!(s.rdmsr(0x392), MsrResult::Gp);
    // Version 1: no global registers at all.
    let s = VpmuState::reset(&intel(1, 2, 0, 48, false), Vendor::Intel);
    for m in 0x38D..=0x392 {
        assert_eq!(s.rdmsr(m), MsrResult::Gp);
    }
}

#[test]
fn vpmu_amd_global_registers() {
    let mut s = VpmuState::reset(&amd(AmdKind::PerfMonV2, 4), Vendor::Amd);
    assert_eq!(s.rdmsr(0xC000_0301), MsrResult::Value(0xF));
    assert_eq!(s.wrmsr(0xC000_0301, 1 << 4), Err(Gp));
    assert_eq!(s.wrmsr(0xC000_0301, 0b1010), Ok(()));
    assert_eq!(s.rdmsr(0xC000_0301), MsrResult::Value(0b1010));
    assert_eq!(s.wrmsr(0xC000_0300, 0), Err(Gp));
    // Set and clear accept every bit and act on the implemented ones.
    assert_eq!(s.wrmsr(0xC000_0303, u64::MAX), Ok(()));
    assert_eq!(s.rdmsr(0xC000_0300), MsrResult::Value(0xF));
    assert_eq!(s.wrmsr(0xC000_0302, 0b0110), Ok(()));
    assert_eq!(s.rdmsr(0xC000_0300), MsrResult::Value(0b1001));
    assert_eq!(s.wrmsr(0xC000_0302, u64::MAX), Ok(()));
    assert_eq!(s.rdmsr(0xC000_0300), MsrResult::Value(0));
    assert_eq!(s.rdmsr(0xC000_0302), MsrResult::Value(0));
    assert_eq!(s.rdmsr(0xC000_0303), MsrResult::Value(0));
    // Without PerfMonV2 there are no global registers.
    for c in [amd(AmdKind::Legacy, 4), amd(AmdKind::CoreExt, 6)] {
        let s = VpmuState::reset(&c, Vendor::Amd);
        for m in 0xC000_0300..=0xC000_0303 {
            assert_eq!(s.rdmsr(m), MsrResult::Gp);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RDPMC

#[test]
fn vpmu_rdpmc_intel_legacy_encoding() {
    let mut s = VpmuState::reset(&intel(2, 4, 3, 48, true), Vendor::Intel);
    for i in 0..4 {
        s.wrmsr(0x4C1 + i, 0xAB_0000_0000 + u64::from(i)).unwrap();
    }
    for i in 0..3 {
        s.wrmsr(0x309 + i, 0xCD_0000_0000 + u64::from(i)).unwrap();
    }
    for i in 0..4 {
        assert_eq!(s.rdpmc(i), Ok(0xAB_0000_0000 + u64::from(i)));
        assert_eq!(s.rdpmc(i | 1 << 31), Ok(u64::from(i)), "fast read");
    }
    assert_eq!(s.rdpmc(4), Err(Gp));
    for i in 0..3 {
        assert_eq!(s.rdpmc(i | 1 << 30), Ok(0xCD_0000_0000 + u64::from(i)));
        assert_eq!(s.rdpmc(i | 3 << 30), Ok(u64::from(i)));
    }
    assert_eq!(s.rdpmc(3 | 1 << 30), Err(Gp));
    assert_eq!(s.rdpmc(1 << 29), Err(Gp));
    assert_eq!(s.rdpmc(0x1_0000), Err(Gp));
    // Version 1 has no fixed counters.
    let s = VpmuState::reset(&intel(1, 2, 0, 48, false), Vendor::Intel);
    assert_eq!(s.rdpmc(1), Ok(0));
    assert_eq!(s.rdpmc(2), Err(Gp));
    assert_eq!(s.rdpmc(1 << 30), Err(Gp));
}

#[test]
fn vpmu_rdpmc_intel_v5_type_encoding() {
    let mut s = VpmuState::reset(&intel(5, 2, 4, 48, true), Vendor::Intel);
    s.wrmsr(0x4C2, 0x77_0000_0001).unwrap();
    s.wrmsr(0x30C, 0x66_0000_0002).unwrap();
    assert_eq!(s.rdpmc(1), Ok(0x77_0000_0001));
    assert_eq!(s.rdpmc(0x4000_0003), Ok(0x66_0000_0002));
    assert_eq!(s.rdpmc(2), Err(Gp));
    assert_eq!(s.rdpmc(0x4000_0004), Err(Gp));
    assert_eq!(s.rdpmc(0x8000_0001), Err(Gp)); // no fast reads in the type encoding
    assert_eq!(s.rdpmc(0x2000_0000), Err(Gp)); // PERF_METRICS not advertised
    assert_eq!(s.rdpmc(0x0001_0000), Err(Gp));
    assert_eq!(s.rdpmc(0x4001_0000), Err(Gp));
}

#[test]
fn vpmu_rdpmc_amd() {
    let mut s = VpmuState::reset(&amd(AmdKind::PerfMonV2, 5), Vendor::Amd);
    s.wrmsr(0xC001_0209, 0x1234_5678_9ABC).unwrap();
    assert_eq!(s.rdpmc(4), Ok(0x1234_5678_9ABC));
    assert_eq!(s.rdpmc(5), Err(Gp));
    assert_eq!(s.rdpmc(1 << 30), Err(Gp));
    assert_eq!(s.rdpmc(1 << 31), Err(Gp));
    let s = VpmuState::reset(&amd(AmdKind::Legacy, 4), Vendor::Amd);
    assert_eq!(s.rdpmc(3), Ok(0));
    assert_eq!(s.rdpmc(4), Err(Gp));
}

// ---------------------------------------------------------------------------------------------
// Reset values and the model's notes

#[test]
fn vpmu_reset_values_per_version() {
    for c in valid_configs(&[32, 48]) {
        for vendor in VENDORS {
            let s = VpmuState::reset(&c, vendor);
            let m = s.model();
            for msr in expected_msrs(&c, vendor) {
                let want = match m.msr(msr).unwrap() {
                    PmuMsr::GlobalCtrl => (1u64 << m.gp_counters()) - 1,
                    PmuMsr::Capabilities => match c {
                        PmuConfig::Intel {
                            full_width_writes: true,
                            ..
                        } => 1 << 13,
                        _ => 0,
                    },
                    _ => 0,
                };
                assert_eq!(s.rdmsr(msr), MsrResult::Value(want), "{c:?} msr {msr:#x}");
            }
            // The reset state is one exact value: building it twice gives equal states.
            assert_eq!(s, VpmuState::reset(&c, vendor));
        }
    }
    // Fixed counters start globally disabled; the GP enables are set (SDM); AMD likewise.
    let s = VpmuState::reset(&intel(2, 8, 3, 48, true), Vendor::Intel);
    assert_eq!(s.rdmsr(0x38F), MsrResult::Value(0xFF));
    let s = VpmuState::reset(&amd(AmdKind::PerfMonV2, 6), Vendor::Amd);
    assert_eq!(s.rdmsr(0xC000_0301), MsrResult::Value(0x3F));
}

#[test]
fn vpmu_vendor_mismatch_gives_no_pmu_and_says_so() {
    let m = Model::derive(&PmuConfig::intel(2), Vendor::Amd);
    assert!(m.is_off());
    assert_eq!(m.effective_config(), PmuConfig::Off);
    assert_eq!(
        m.note(),
        Some(ModelNote::VendorMismatch {
            configured: Vendor::Intel,
            guest: Vendor::Amd
        })
    );
    let m = Model::derive(&PmuConfig::amd(AmdKind::PerfMonV2), Vendor::Other);
    assert!(matches!(m.note(), Some(ModelNote::VendorMismatch { .. })));
    assert_no_pmu(&VpmuState::reset(&PmuConfig::intel(4), Vendor::Amd));
    assert_no_pmu(&VpmuState::reset(
        &PmuConfig::amd(AmdKind::CoreExt),
        Vendor::Intel,
    ));
    // Off on either vendor: no note, no PMU.
    for v in VENDORS {
        let s = VpmuState::reset(&PmuConfig::Off, v);
        assert_eq!(s.model().note(), None);
        assert_no_pmu(&s);
    }
    // A matching configuration has no note and is what was asked for.
    let m = Model::derive(&PmuConfig::intel(3), Vendor::Intel);
    assert_eq!(m.note(), None);
    assert_eq!(m.effective_config(), PmuConfig::intel(3));
    // An invalid configuration reaching the model gives no PMU too.
    let bad = intel(2, 12, 3, 48, true);
    let m = Model::derive(&bad, Vendor::Intel);
    assert_eq!(
        m.note(),
        Some(ModelNote::Invalid(bad.validate().unwrap_err()))
    );
    assert_no_pmu(&VpmuState::reset(&bad, Vendor::Intel));
}

/// The QEMU bug Hermitage started from ("target/i386/kvm: Reset PMU state in
/// kvm_init_pmu_info"): PMU version and counter counts kept in statics survived a vCPU
/// re-initialisation that returned early (PMU off, vendor mismatch), and the VMM wrote PMU MSRs
/// the guest's CPU did not have on the next reboot.
#[test]
fn vpmu_regression_qemu_kvm_init_pmu_info_stale_pmu_after_reset() {
    let v2_8 = intel(2, 8, 3, 48, true);
    let mut vm = VmPmu::new(v2_8, Vendor::Intel).unwrap();
    vm.reset(Vendor::Intel);
    assert_eq!(vm.state().model().gp_counters(), 8);
    assert_eq!(vm.rdmsr(0xC8), MsrResult::Value(0));
    // The guest programs its PMU.
    vm.wrmsr(0x18D, 0x43_003C).unwrap();
    vm.wrmsr(0x4C8, 0xFFFF).unwrap();
    vm.wrmsr(0x38F, 0xFF | (7 << 32)).unwrap();

    // Reconfigure Off, reset: nothing of the v2 PMU is left.
    vm.set_pending_config(PmuConfig::Off).unwrap();
    vm.reset(Vendor::Intel);
    assert_no_pmu(vm.state());
    assert_eq!(vm.cpuid(0xA, 0, HOST_ALL_ONES), [0; 4]);
    assert!(existing(vm.state()).is_empty());

    // Back to v2 with 8 counters, then a reset on an AMD guest (vendor mismatch).
    vm.set_pending_config(v2_8).unwrap();
    vm.reset(Vendor::Intel);
    vm.wrmsr(0xC1, 5).unwrap();
    vm.reset(Vendor::Amd);
    assert_eq!(
        vm.state().model().note(),
        Some(ModelNote::VendorMismatch {
            configured: Vendor::Intel,
            guest: Vendor::Amd
        })
    );
    assert_no_pmu(vm.state());
    assert_eq!(vm.cpuid(0xA, 0, HOST_ALL_ONES), [0; 4]);
    assert!(existing(vm.state()).is_empty());

    // And once the vendor matches again, the PMU is the configured one, from reset values.
    vm.reset(Vendor::Intel);
    assert_eq!(*vm.state(), VpmuState::reset(&v2_8, Vendor::Intel));
    assert_eq!(vm.rdmsr(0xC1), MsrResult::Value(0));
}

#[test]
fn vpmu_pending_config_waits_for_reset() {
    let mut vm = VmPmu::new(PmuConfig::intel(2), Vendor::Intel).unwrap();
    vm.wrmsr(0xC1, 77).unwrap();
    let before = *vm.state();
    assert_eq!(
        vm.set_pending_config(intel(9, 4, 3, 48, true))
            .unwrap_err()
            .field(),
        "version"
    );
    assert_eq!(vm.pending(), None);
    vm.set_pending_config(PmuConfig::intel(5)).unwrap();
    assert_eq!(*vm.state(), before);
    assert_eq!(vm.pending(), Some(&PmuConfig::intel(5)));
    // An invalid one later does not replace the valid pending one.
    assert!(vm.set_pending_config(amd(AmdKind::Legacy, 2)).is_err());
    assert_eq!(vm.pending(), Some(&PmuConfig::intel(5)));
    assert_eq!(vm.cpuid(0xA, 0, [0; 4])[0] & 0xFF, 2);
    vm.reset(Vendor::Intel);
    assert_eq!(vm.pending(), None);
    assert_eq!(vm.current(), &PmuConfig::intel(5));
    assert_eq!(vm.cpuid(0xA, 0, [0; 4])[0] & 0xFF, 5);
    assert_eq!(vm.rdmsr(0xC1), MsrResult::Value(0));
    vm.set_pending_config(PmuConfig::Off).unwrap();
    vm.clear_pending_config();
    vm.reset(Vendor::Intel);
    assert_eq!(vm.current(), &PmuConfig::intel(5));
    assert!(VmPmu::new(intel(2, 0, 3, 48, true), Vendor::Intel).is_err());
}

// ---------------------------------------------------------------------------------------------
// The reset property

#[derive(Clone, Debug)]
enum Op {
    SetPending(PmuConfig),
    ClearPending,
    Wrmsr(u32, u64),
    Rdpmc(u32),
    Reset(Vendor),
}

fn vendor() -> impl Strategy<Value = Vendor> {
    prop_oneof![Just(Vendor::Intel), Just(Vendor::Amd), Just(Vendor::Other)]
}

fn amd_kind() -> impl Strategy<Value = AmdKind> {
    prop_oneof![
        Just(AmdKind::Legacy),
        Just(AmdKind::CoreExt),
        Just(AmdKind::PerfMonV2)
    ]
}

/// Any configuration, valid or not.
fn any_config() -> impl Strategy<Value = PmuConfig> {
    prop_oneof![
        Just(PmuConfig::Off),
        (0u8..=7, 0u8..=10, 0u8..=5, 28u8..=52, any::<bool>())
            .prop_map(|(v, g, f, w, fw)| intel(v, g, f, w, fw)),
        (amd_kind(), 0u8..=8).prop_map(|(k, g)| amd(k, g)),
    ]
}

/// Valid configurations, so that most sequences have real PMUs to churn.
fn valid_config() -> impl Strategy<Value = PmuConfig> {
    prop_oneof![
        Just(PmuConfig::Off),
        (
            1u8..=5,
            1u8..=8,
            0u8..=4,
            prop::sample::select(vec![32u8, 40, 48]),
            any::<bool>()
        )
            .prop_map(|(v, g, f, w, fw)| intel(v, g, f.min(intel_max_fixed(v)), w, fw)),
        amd_kind().prop_map(PmuConfig::amd),
        (1u8..=6).prop_map(|n| amd(AmdKind::PerfMonV2, n)),
    ]
}

fn msr_index() -> impl Strategy<Value = u32> {
    let all: Vec<u32> = all_pmu_msrs().collect();
    prop_oneof![
        4 => prop::sample::select(all),
        1 => any::<u32>(),
    ]
}

fn msr_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        (0u32..64).prop_map(|b| 1u64 << b),
        0u64..0x1_0000,
        any::<u64>().prop_map(|v| v & 0xFFFF_FFFF),
        any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => valid_config().prop_map(Op::SetPending),
        1 => any_config().prop_map(Op::SetPending),
        1 => Just(Op::ClearPending),
        8 => (msr_index(), msr_value()).prop_map(|(m, v)| Op::Wrmsr(m, v)),
        1 => any::<u32>().prop_map(Op::Rdpmc),
        2 => vendor().prop_map(Op::Reset),
    ]
}

/// Everything the guest can observe of its PMU.
#[derive(Debug, PartialEq, Eq)]
struct GuestView {
    cpuid: [[u32; 4]; 4],
    msrs: Vec<MsrResult>,
    rdpmc: Vec<Result<u64, Gp>>,
}

const RDPMC_PROBES: [u32; 12] = [
    0,
    1,
    3,
    5,
    7,
    8,
    1 << 30,
    (1 << 30) | 2,
    (1 << 30) | 3,
    1 << 31,
    0x4000_0001,
    0x8000_0002,
];

fn view(vm: &VmPmu) -> GuestView {
    GuestView {
        cpuid: pmu_leaves(vm.state()),
        msrs: all_pmu_msrs().map(|m| vm.rdmsr(m)).collect(),
        rdpmc: RDPMC_PROBES.iter().map(|&e| vm.rdpmc(e)).collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// After every reset the state equals a freshly constructed `VpmuState::reset(current,
    /// vendor)`: nothing is left over from before the reset or from an earlier configuration. MSRs
    /// the current model lacks #GP, a vendor mismatch exposes no PMU, and a pending configuration
    /// changes nothing the guest can see until the reset.
    #[test]
    fn vpmu_reset_rebuilds_from_current_config_only(
        start in valid_config(),
        start_vendor in vendor(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut vm = VmPmu::new(start, start_vendor).unwrap();
        let mut current = start;
        let mut pending: Option<PmuConfig> = None;
        prop_assert_eq!(*vm.state(), VpmuState::reset(&start, start_vendor));

        for op in ops {
            match op {
                Op::SetPending(c) => {
                    let before_state = *vm.state();
                    let before_view = view(&vm);
                    let r = vm.set_pending_config(c);
                    prop_assert_eq!(r.is_ok(), c.validate().is_ok());
                    if r.is_ok() {
                        pending = Some(c);
                    }
                    prop_assert_eq!(vm.pending(), pending.as_ref());
                    prop_assert_eq!(vm.current(), &current);
                    prop_assert_eq!(*vm.state(), before_state);
                    prop_assert_eq!(view(&vm), before_view);
                }
                Op::ClearPending => {
                    let before = *vm.state();
                    vm.clear_pending_config();
                    pending = None;
                    prop_assert_eq!(*vm.state(), before);
                }
                Op::Wrmsr(msr, value) => {
                    let before = *vm.state();
                    let r = vm.wrmsr(msr, value);
                    // The model never changes between resets.
                    prop_assert_eq!(vm.state().model(), before.model());
                    if before.model().msr(msr).is_none() {
                        prop_assert_eq!(r, Err(Gp));
                    }
                    if r.is_err() {
                        prop_assert_eq!(*vm.state(), before);
                    }
                }
                Op::Rdpmc(ecx) => {
                    let before = *vm.state();
                    let _ = vm.rdpmc(ecx);
                    prop_assert_eq!(*vm.state(), before);
                }
                Op::Reset(v) => {
                    if let Some(p) = pending.take() {
                        current = p;
                    }
                    vm.reset(v);
                    prop_assert_eq!(vm.current(), &current);
                    prop_assert_eq!(vm.pending(), None);
                    let fresh = VpmuState::reset(&current, v);
                    prop_assert_eq!(*vm.state(), fresh);
                    let model = vm.state().model();
                    prop_assert_eq!(model, Model::derive(&current, v));
                    // MSRs outside the model fault, reading and writing.
                    for m in all_pmu_msrs().filter(|&m| model.msr(m).is_none()) {
                        prop_assert_eq!(vm.rdmsr(m), MsrResult::Gp);
                        let mut probe = *vm.state();
                        prop_assert_eq!(probe.wrmsr(m, 0), Err(Gp));
                    }
                    if current.vendor() == Some(v) {
                        prop_assert_eq!(model.effective_config(), current);
                    } else {
                        // Vendor mismatch (or Off): no PMU at all.
                        prop_assert!(model.is_off());
                        prop_assert_eq!(vm.cpuid(0xA, 0, HOST_ALL_ONES), [0; 4]);
                        prop_assert_eq!(vm.cpuid(0x8000_0022, 0, HOST_ALL_ONES), [0; 4]);
                        prop_assert!(view(&vm).msrs.iter().all(|r| *r == MsrResult::Gp));
                        prop_assert!(view(&vm).rdpmc.iter().all(|r| *r == Err(Gp)));
                    }
                }
            }
        }
    }
}

#[test]
fn exits_route_pmu_msrs_and_rdpmc_to_the_model_and_nothing_else() {
    use crate::exit::{Action, Exit, VECTOR_GP};
    let gp = Action::InjectException {
        vector: VECTOR_GP,
        error_code: Some(0),
    };
    let mut pmu = VmPmu::new(amd(AmdKind::Legacy, 4), Vendor::Amd).unwrap();
    let rd = |index| Exit::Msr {
        index,
        write: None,
        next_rip: 0x10,
    };
    // PERF_CTR0 written, then read back through the exit path; PERF_CTR of core-ext: #GP.
    let wr = Exit::Msr {
        index: 0xC001_0004,
        write: Some(0x55),
        next_rip: 0x10,
    };
    assert_eq!(pmu.handle_exit(&wr), Some(Action::ResumeAt { rip: 0x10 }));
    let Some(Action::ResumeWith { rip, regs }) = pmu.handle_exit(&rd(0xC001_0004)) else {
        panic!("PERF_CTR0 must read");
    };
    assert_eq!((rip, regs.rax, regs.rdx), (0x10, Some(0x55), Some(0)));
    assert_eq!(pmu.handle_exit(&rd(0xC001_0201)), Some(gp));
    // RDPMC 0 reads the same counter; index 4 does not exist with 4 counters.
    let Some(Action::ResumeWith { regs, .. }) = pmu.handle_exit(&Exit::Rdpmc {
        index: 0,
        next_rip: 0x12,
    }) else {
        panic!("RDPMC 0 must read");
    };
    assert_eq!(regs.rax, Some(0x55));
    assert_eq!(
        pmu.handle_exit(&Exit::Rdpmc {
            index: 4,
            next_rip: 0x12
        }),
        Some(gp)
    );
    // Not the vPMU's: EFER, CPUID.
    assert_eq!(pmu.handle_exit(&rd(0xC000_0080)), None);
    let cpuid = Exit::Cpuid {
        leaf: 0,
        subleaf: 0,
        next_rip: 0,
    };
    assert_eq!(pmu.handle_exit(&cpuid), None);
    // After a reset the counter is 0 again.
    pmu.reset(Vendor::Amd);
    let Some(Action::ResumeWith { regs, .. }) = pmu.handle_exit(&rd(0xC001_0004)) else {
        panic!("PERF_CTR0 must read");
    };
    assert_eq!(regs.rax, Some(0));
}

#[test]
fn the_cpuid_view_enumerates_the_leaves_the_pmu_needs() {
    use crate::cpuid::CpuidView;
    // An AMD host whose highest extended leaf is 0x8000_001F (QEMU's EPYC model).
    let host = |leaf: u32, _sub: u32| match leaf {
        0 => [0xD, 0x6874_7541, 0x444D_4163, 0x6974_6E65],
        0x8000_0000 => [0x8000_001F, 0x6874_7541, 0x444D_4163, 0x6974_6E65],
        0x8000_0022 => [0xDEAD, 0xBEEF, 0, 0],
        _ => [0; 4],
    };
    let off = VmPmu::new(PmuConfig::Off, Vendor::Amd).unwrap();
    let view = CpuidView::from_host(host, Some(off.state()));
    assert_eq!(view.max_extended(), 0x8000_001F);
    let v2 = VmPmu::new(amd(AmdKind::PerfMonV2, 5), Vendor::Amd).unwrap();
    let view = CpuidView::from_host(host, Some(v2.state()));
    assert_eq!(view.max_extended(), 0x8000_0022);
    assert_eq!(view.get(0x8000_0000, 0)[0], 0x8000_0022);
    assert_eq!(
        view.get(0x8000_0022, 0)[..2],
        [CPUID_8000_0022_EAX_PERFMON_V2, 5]
    );
    // Leaves the host lacks read as zeros, not as whatever the host answers out of range.
    assert_eq!(view.get(0x8000_0020, 0), [0; 4]);
}

#[test]
fn the_probe_digest_tells_configurations_apart_and_sees_no_leaks() {
    use super::probe::probe_digest;
    let configs = valid_configs(&[32, 40, 48]);
    for vendor in [Vendor::Amd, Vendor::Intel] {
        let off = probe_digest(&PmuConfig::Off, vendor);
        let mut seen = std::collections::BTreeMap::new();
        for c in &configs {
            let d = probe_digest(c, vendor);
            // Deterministic: the probe replays a fresh reset state.
            assert_eq!(d, probe_digest(c, vendor));
            if c.vendor() != Some(vendor) {
                // Another vendor's PMU is no PMU: exactly what the guest sees with none.
                assert_eq!(d, off, "{c:?} on {vendor:?}");
                continue;
            }
            if let Some(other) = seen.insert(d, *c) {
                panic!("{c:?} and {other:?} give the same digest {d:#x} on {vendor:?}");
            }
        }
        assert!(
            !seen.contains_key(&off),
            "a PMU that looks like none on {vendor:?}"
        );
    }
}
