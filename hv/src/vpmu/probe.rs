//! What the `pmu` probe guest (`guests/`) must see, computed from the same model the
//! hypervisor runs: the guest folds everything it observes of its PMU into one FNV-1a digest,
//! and [`probe_digest`] replays the probe against a freshly reset [`VpmuState`] for a
//! configuration. Equal digests mean the guest saw exactly the reset state of that
//! configuration, through the whole hypervisor (CPUID view, exit decoding, MSR routing, reset
//! path); `scripts/reboot-stress` compares them across thousands of resets.
//!
//! The probe, in order (the guest's assembly in `guests/build/guests.rs` follows this text):
//! 1. CPUID: leaf 1 ECX & PDCM, leaf 0xA EAX..EDX, leaf 0x8000_0001 ECX & PerfCtrExtCore, leaf
//!    0x8000_0022 EAX..EDX; a leaf above the guest's maximum counts as zeros.
//! 2. RDPMC ECX=0: 0 if it reads, 1 if it faults.
//! 3. For each MSR of [`PROBE_MSRS`]: RDMSR; a fault folds [`ABSENT`], a value its low then high
//!    dword.
//! 4. For each MSR that read in step 3: WRMSR [`PROBE_PATTERN`] (a fault folds [`REFUSED`]), then
//!    RDMSR again (low, high; or [`ABSENT`]). The pattern has bit 31 set: legacy 32-bit counter
//!    writes sign-extend it, event selects accept it, global registers refuse its reserved bits.

use super::config::PmuConfig;
use super::model::{CPUID_1_ECX_PDCM, CPUID_8000_0001_ECX_PERFCTR_EXT_CORE};
use super::state::{MsrResult, VpmuState};
use crate::features::Vendor;

/// The PMU MSRs of both vendors the probe tries, in order: AMD legacy PERF_CTL0-3 /
/// PERF_CTR0-3 (APM vol. 2 §13.2.1), core extension PERF_CTL/CTR0-5 (§13.2.2), PerfMonV2
/// global registers (§13.2.3); Intel IA32_PMC0-7, IA32_PERFEVTSEL0-7, IA32_FIXED_CTR0-3,
/// FIXED_CTR_CTRL, PERF_GLOBAL_STATUS / CTRL / OVF_CTRL / STATUS_SET, PERF_CAPABILITIES and
/// the full-width IA32_A_PMC0-7 (SDM vol. 3B §20.2, vol. 4 table 2-2).
pub const PROBE_MSRS: [u32; 58] = {
    let mut m = [0u32; 58];
    let mut n = 0;
    let ranges: [(u32, u32); 7] = [
        (0xC001_0000, 8),
        (0xC001_0200, 12),
        (0xC000_0300, 4),
        (0xC1, 8),
        (0x186, 8),
        (0x309, 4),
        (0x4C1, 8),
    ];
    let mut r = 0;
    while r < ranges.len() {
        let mut i = 0;
        while i < ranges[r].1 {
            m[n] = ranges[r].0 + i;
            n += 1;
            i += 1;
        }
        r += 1;
        // The single Intel control and status registers go after the fixed counters.
        if r == 6 {
            let singles = [0x38D, 0x38E, 0x38F, 0x390, 0x391, 0x345];
            let mut j = 0;
            while j < singles.len() {
                m[n] = singles[j];
                n += 1;
                j += 1;
            }
        }
    }
    assert!(n == 58);
    m
};

/// What the probe writes to every PMU MSR that exists (EDX = 0, EAX = this).
pub const PROBE_PATTERN: u32 = 0x8000_1234;
/// Folded for an access that raised #GP.
pub const ABSENT: u32 = 0xFFFF_FFFF;
/// Folded for a WRMSR that raised #GP.
pub const REFUSED: u32 = 0xFFFF_FFFE;

/// FNV-1a (32-bit) offset basis.
pub const FNV_OFFSET: u32 = 0x811C_9DC5;
/// FNV-1a (32-bit) prime.
pub const FNV_PRIME: u32 = 0x0100_0193;

/// Folds one dword into an FNV-1a digest, low byte first (what the guest does).
pub const fn fold(digest: u32, word: u32) -> u32 {
    let mut d = digest;
    let mut i = 0;
    while i < 4 {
        d ^= (word >> (8 * i)) & 0xFF;
        d = d.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    d
}

/// The digest the probe prints right after a reset with `config` current on a guest of
/// `vendor`.
pub fn probe_digest(config: &PmuConfig, vendor: Vendor) -> u32 {
    let mut state = VpmuState::reset(config, vendor);
    let mut d = FNV_OFFSET;
    let model = state.model();
    // The model decides these leaves and bits entirely (leaves the view does not enumerate
    // are zeros in the model too, see `Model::min_leaves`).
    d = fold(d, model.cpuid(0x1, 0, [0; 4])[2] & CPUID_1_ECX_PDCM);
    for r in model.cpuid(0xA, 0, [0; 4]) {
        d = fold(d, r);
    }
    d = fold(
        d,
        model.cpuid(0x8000_0001, 0, [0; 4])[2] & CPUID_8000_0001_ECX_PERFCTR_EXT_CORE,
    );
    for r in model.cpuid(0x8000_0022, 0, [0; 4]) {
        d = fold(d, r);
    }
    d = fold(d, u32::from(state.rdpmc(0).is_err()));
    let read = |state: &VpmuState, d: u32, msr: u32| match state.rdmsr(msr) {
        MsrResult::Value(v) => fold(fold(d, v as u32), (v >> 32) as u32),
        MsrResult::Gp => fold(d, ABSENT),
    };
    for msr in PROBE_MSRS {
        d = read(&state, d, msr);
    }
    for msr in PROBE_MSRS {
        if state.rdmsr(msr) == MsrResult::Gp {
            continue;
        }
        if state.wrmsr(msr, u64::from(PROBE_PATTERN)).is_err() {
            d = fold(d, REFUSED);
        }
        d = read(&state, d, msr);
    }
    d
}
