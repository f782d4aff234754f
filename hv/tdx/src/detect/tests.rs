//! Detection against simulated CPUs whose MSR tables contain only what their CPUID enumerates:
//! any other read is recorded as the #GP it would raise on hardware.

extern crate std;
use std::collections::BTreeMap;
use std::string::String;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

/// A simulated CPU: CPUID facts plus the MSRs that exist.
#[derive(Clone, Debug, Default)]
struct Cpu {
    cpuid: CpuidFacts,
    msrs: BTreeMap<u32, u64>,
    faults: Vec<u32>,
    reads: Vec<u32>,
}

impl Cpu {
    fn msr(mut self, index: u32, value: u64) -> Self {
        self.msrs.insert(index, value);
        self
    }

    fn detect(&mut self) -> TdxSupport {
        let cpuid = self.cpuid;
        let mut reader = |m: u32| {
            self.reads.push(m);
            match self.msrs.get(&m) {
                Some(v) => *v,
                None => {
                    self.faults.push(m);
                    0
                }
            }
        };
        detect(&cpuid, &mut reader)
    }
}

const INTEL: CpuidFacts = CpuidFacts {
    intel: true,
    max_basic_leaf: 0x20,
    leaf1_ecx: CPUID_1_ECX_VMX,
    leaf1_edx: CPUID_1_EDX_MTRR,
    leaf7_ecx: CPUID_7_ECX_TME,
};

/// A Sapphire Rapids-like TDX host: 6 KeyID bits, 31 MK-TME KeyIDs, 32 TDX KeyIDs.
fn tdx_host() -> Cpu {
    Cpu {
        cpuid: INTEL,
        ..Cpu::default()
    }
    .msr(
        msr::IA32_FEATURE_CONTROL,
        FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMX_OUTSIDE_SMX,
    )
    .msr(
        msr::IA32_TME_ACTIVATE,
        TME_ACTIVATE_LOCK | TME_ACTIVATE_ENABLE | (6 << 32),
    )
    .msr(msr::IA32_MTRRCAP, MTRRCAP_SEAMRR | 0x50A)
    .msr(
        msr::IA32_SEAMRR_PHYS_BASE,
        0x7000_0000 | SEAMRR_BASE_CONFIGURED,
    )
    .msr(
        msr::IA32_SEAMRR_PHYS_MASK,
        0xFE00_0000 | SEAMRR_MASK_LOCKED | SEAMRR_MASK_ENABLED,
    )
    .msr(msr::IA32_MKTME_KEYID_PARTITIONING, (32 << 32) | 31)
}

#[test]
fn tdx_host_is_supported_with_keyids_after_mktme() {
    let mut cpu = tdx_host();
    let s = cpu.detect();
    assert_eq!(
        s,
        TdxSupport::Supported {
            keyids: KeyIdRange {
                first: 32,
                count: 32
            }
        }
    );
    assert!(cpu.faults.is_empty());
    let k = s.keyids().unwrap();
    assert_eq!(k.global(), KeyId(32));
    assert_eq!(k.guest_count(), 31);
    assert_eq!(k.guest(0), KeyId(33));
    assert_eq!(k.guest(30), KeyId(63));
}

fn absent(cpu: &mut Cpu) -> TdxAbsence {
    match cpu.detect() {
        TdxSupport::Unsupported { reason } => {
            assert!(cpu.faults.is_empty(), "faulted on {:x?}", cpu.faults);
            reason
        }
        s => panic!("expected unsupported, got {s:?}"),
    }
}

#[test]
fn amd_reads_nothing() {
    let mut cpu = Cpu {
        cpuid: CpuidFacts {
            intel: false,
            ..INTEL
        },
        ..Cpu::default()
    };
    assert_eq!(absent(&mut cpu), TdxAbsence::NotIntel);
    assert!(cpu.reads.is_empty());
}

/// QEMU TCG / KVM guest with an Intel model: hypervisor bit, no MSR beyond the basics.
#[test]
fn guest_reads_nothing_even_if_cpuid_claims_everything() {
    let mut cpu = Cpu {
        cpuid: CpuidFacts {
            leaf1_ecx: INTEL.leaf1_ecx | CPUID_1_ECX_HYPERVISOR,
            ..INTEL
        },
        ..Cpu::default()
    };
    assert_eq!(absent(&mut cpu), TdxAbsence::RunningAsGuest);
    assert!(cpu.reads.is_empty());
}

#[test]
fn each_gate_has_its_reason() {
    let cases: [(Cpu, TdxAbsence); 12] = [
        (
            Cpu {
                cpuid: CpuidFacts {
                    leaf1_ecx: 0,
                    ..INTEL
                },
                ..Cpu::default()
            },
            TdxAbsence::NoVmx,
        ),
        (
            tdx_host().msr(msr::IA32_FEATURE_CONTROL, FEATURE_CONTROL_LOCK),
            TdxAbsence::VmxDisabledByFirmware,
        ),
        (
            Cpu {
                cpuid: CpuidFacts {
                    leaf7_ecx: 0,
                    ..INTEL
                },
                ..Cpu::default()
            }
            .msr(msr::IA32_FEATURE_CONTROL, 0),
            TdxAbsence::NoTme,
        ),
        (
            Cpu {
                cpuid: CpuidFacts {
                    max_basic_leaf: 6,
                    ..INTEL
                },
                ..Cpu::default()
            }
            .msr(msr::IA32_FEATURE_CONTROL, 0),
            TdxAbsence::NoTme,
        ),
        (
            tdx_host().msr(msr::IA32_TME_ACTIVATE, TME_ACTIVATE_ENABLE | (6 << 32)),
            TdxAbsence::TmeNotActivated,
        ),
        (
            tdx_host().msr(msr::IA32_TME_ACTIVATE, TME_ACTIVATE_LOCK),
            TdxAbsence::TmeNotActivated,
        ),
        (
            tdx_host().msr(msr::IA32_MTRRCAP, 0x50A),
            TdxAbsence::NoSeamrr,
        ),
        (
            tdx_host().msr(msr::IA32_SEAMRR_PHYS_BASE, 0x7000_0000),
            TdxAbsence::SeamrrNotConfigured,
        ),
        (
            tdx_host().msr(msr::IA32_SEAMRR_PHYS_MASK, SEAMRR_MASK_ENABLED),
            TdxAbsence::SeamrrNotEnabled,
        ),
        (
            tdx_host().msr(msr::IA32_MKTME_KEYID_PARTITIONING, 63),
            TdxAbsence::NoTdxKeyIds,
        ),
        (
            tdx_host().msr(msr::IA32_MKTME_KEYID_PARTITIONING, (1 << 32) | 62),
            TdxAbsence::TooFewTdxKeyIds,
        ),
        (
            tdx_host().msr(msr::IA32_MKTME_KEYID_PARTITIONING, (33 << 32) | 31),
            TdxAbsence::InconsistentKeyIds,
        ),
    ];
    for (mut cpu, want) in cases {
        assert_eq!(absent(&mut cpu), want, "{cpu:?}");
    }
}

#[test]
fn no_mtrr_means_mtrrcap_is_not_read() {
    let mut cpu = tdx_host();
    cpu.cpuid.leaf1_edx = 0;
    cpu.msrs.remove(&msr::IA32_MTRRCAP);
    assert_eq!(absent(&mut cpu), TdxAbsence::NoSeamrr);
}

#[test]
fn partitioning_msr_is_not_read_without_keyid_bits() {
    let mut cpu = tdx_host().msr(
        msr::IA32_TME_ACTIVATE,
        TME_ACTIVATE_LOCK | TME_ACTIVATE_ENABLE,
    );
    cpu.msrs.remove(&msr::IA32_MKTME_KEYID_PARTITIONING);
    assert_eq!(absent(&mut cpu), TdxAbsence::NoTdxKeyIds);
    assert!(!cpu.reads.contains(&msr::IA32_MKTME_KEYID_PARTITIONING));
}

#[test]
fn reasons_are_stable_snake_case_and_unique() {
    let mut seen = std::collections::BTreeSet::new();
    for r in TdxAbsence::ALL {
        let s = r.as_str();
        assert!(
            s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{s}"
        );
        assert!(seen.insert(s), "duplicate {s}");
        assert!(!r.describe().is_empty());
    }
}

#[test]
fn json_shapes() {
    let mut s = String::new();
    TdxSupport::Unsupported {
        reason: TdxAbsence::NoSeamrr,
    }
    .write_json(&mut s)
    .unwrap();
    assert_eq!(s, r#"{"supported":false,"reason":"no_seamrr"}"#);
    s.clear();
    tdx_host().detect().write_json(&mut s).unwrap();
    assert_eq!(s, r#"{"supported":true,"keyids":{"first":32,"count":32}}"#);
}

#[test]
fn cpuid_facts_from_leaves() {
    let f = CpuidFacts::read(|leaf, _| match leaf {
        0 => [
            0x1B,
            u32::from_le_bytes(*b"Genu"),
            u32::from_le_bytes(*b"ntel"),
            u32::from_le_bytes(*b"ineI"),
        ],
        1 => [0, 0, CPUID_1_ECX_VMX, CPUID_1_EDX_MTRR],
        7 => [0, 0, CPUID_7_ECX_TME, 0],
        _ => [0; 4],
    });
    assert_eq!(f, INTEL_WITH_MAX_1B);
    let amd = CpuidFacts::read(|leaf, _| match leaf {
        0 => [
            0xD,
            u32::from_le_bytes(*b"Auth"),
            u32::from_le_bytes(*b"cAMD"),
            u32::from_le_bytes(*b"enti"),
        ],
        _ => [u32::MAX; 4],
    });
    assert!(!amd.intel);
    // Leaf 7 beyond the max leaf is not asked.
    let old = CpuidFacts::read(|leaf, _| match leaf {
        0 => [
            1,
            u32::from_le_bytes(*b"Genu"),
            u32::from_le_bytes(*b"ntel"),
            u32::from_le_bytes(*b"ineI"),
        ],
        7 => panic!("leaf 7 read"),
        _ => [0; 4],
    });
    assert_eq!(old.leaf7_ecx, 0);
}

const INTEL_WITH_MAX_1B: CpuidFacts = CpuidFacts {
    max_basic_leaf: 0x1B,
    ..INTEL
};

#[test]
fn decide_is_total_and_never_fatal() {
    let yes = tdx_host().detect();
    let no = TdxSupport::Unsupported {
        reason: TdxAbsence::NoSeamrr,
    };
    assert_eq!(decide(TdxRequest::Off, yes), Decision::Off);
    assert_eq!(decide(TdxRequest::Off, no), Decision::Off);
    assert!(matches!(
        decide(TdxRequest::On, yes),
        Decision::BringUp { .. }
    ));
    assert!(matches!(
        decide(TdxRequest::Auto, yes),
        Decision::BringUp { .. }
    ));
    assert_eq!(
        decide(TdxRequest::On, no),
        Decision::Skip {
            reason: TdxAbsence::NoSeamrr,
            log: true
        }
    );
    assert_eq!(
        decide(TdxRequest::Auto, no),
        Decision::Skip {
            reason: TdxAbsence::NoSeamrr,
            log: false
        }
    );
    let line = std::format!("{}", decide(TdxRequest::On, no));
    assert!(
        line.contains("no_seamrr") && line.contains("continuing"),
        "{line}"
    );
}

#[test]
fn request_parsing() {
    assert_eq!(TdxRequest::parse("on"), Some(TdxRequest::On));
    assert_eq!(TdxRequest::parse("off"), Some(TdxRequest::Off));
    assert_eq!(TdxRequest::parse("auto"), Some(TdxRequest::Auto));
    assert_eq!(TdxRequest::parse("maybe"), None);
    assert_eq!(TdxRequest::default(), TdxRequest::Off);
}

/// A random machine whose MSR table follows the architectural enumeration: an MSR exists only
/// where its enumeration says so (and sometimes not even then, e.g. 0x87 on a pre-TDX part).
fn machine() -> impl Strategy<Value = Cpu> {
    (
        any::<bool>(),
        prop_oneof![Just(1u32), Just(6), Just(7), Just(0x20)],
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<[u64; 6]>(),
        any::<bool>(),
    )
        .prop_map(|(intel, max, ecx1, edx1, ecx7, v, has_87)| {
            let cpuid = CpuidFacts {
                intel,
                max_basic_leaf: max,
                leaf1_ecx: ecx1,
                leaf1_edx: edx1,
                leaf7_ecx: if max >= 7 { ecx7 } else { 0 },
            };
            let mut cpu = Cpu {
                cpuid,
                ..Cpu::default()
            };
            if ecx1 & CPUID_1_ECX_VMX != 0 {
                cpu = cpu.msr(msr::IA32_FEATURE_CONTROL, v[0]);
            }
            let tme = cpuid.leaf7_ecx & CPUID_7_ECX_TME != 0;
            if tme {
                cpu = cpu.msr(msr::IA32_TME_ACTIVATE, v[1]);
            }
            if edx1 & CPUID_1_EDX_MTRR != 0 {
                cpu = cpu.msr(msr::IA32_MTRRCAP, v[2]);
                if v[2] & MTRRCAP_SEAMRR != 0 {
                    cpu = cpu
                        .msr(msr::IA32_SEAMRR_PHYS_BASE, v[3])
                        .msr(msr::IA32_SEAMRR_PHYS_MASK, v[4]);
                }
            }
            let activated = v[1] & TME_ACTIVATE_LOCK != 0 && (v[1] >> 32) & 0xF != 0;
            // Pre-TDX MK-TME parts (no SEAM range) may lack 0x87; every part with an enabled
            // SEAM range has it.
            let seam = edx1 & CPUID_1_EDX_MTRR != 0
                && v[2] & MTRRCAP_SEAMRR != 0
                && v[3] & SEAMRR_BASE_CONFIGURED != 0
                && v[4] & (SEAMRR_MASK_LOCKED | SEAMRR_MASK_ENABLED)
                    == SEAMRR_MASK_LOCKED | SEAMRR_MASK_ENABLED;
            if tme && activated && (has_87 || seam) {
                cpu = cpu.msr(msr::IA32_MKTME_KEYID_PARTITIONING, v[5]);
            }
            cpu
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// Whatever the machine, detection reads no MSR it lacks.
    #[test]
    fn detection_never_reads_a_missing_msr(mut cpu in machine()) {
        let s = cpu.detect();
        prop_assert!(cpu.faults.is_empty(), "faulted on {:x?}", cpu.faults);
        if let TdxSupport::Supported { keyids } = s {
            prop_assert!(cpu.cpuid.intel);
            prop_assert!(keyids.count >= 2);
        }
        if cpu.cpuid.leaf1_ecx & CPUID_1_ECX_HYPERVISOR != 0 || !cpu.cpuid.intel {
            prop_assert!(cpu.reads.is_empty());
        }
    }
}
