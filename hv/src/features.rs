//! What the host CPU offers for virtualization, decided once from CPUID (and, for VMX, the
//! capability MSRs) and then shown to people and used by the backends.
//!
//! Detection takes its inputs as parameters — a `raw-cpuid` reader and the MSR values the
//! kernel read — so every decision here runs under `cargo test` with CPUID dumps recorded
//! from real and emulated CPUs (STYLE.md point 5).

use core::fmt;

use raw_cpuid::{CpuId, CpuIdReader};

/// The CPU vendor, as far as virtualization cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

impl Vendor {
    pub const fn as_str(self) -> &'static str {
        match self {
            Vendor::Intel => "intel",
            Vendor::Amd => "amd",
            Vendor::Other => "other",
        }
    }
}

/// Which hardware virtualization extension the hypervisor will drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtKind {
    /// AMD-V (SVM), AMD APM vol. 2 ch. 15.
    Svm,
    /// Intel VT-x (VMX), SDM vol. 3C ch. 23ff.
    Vmx,
    /// Neither is usable: the hypervisor serves its API but runs no guests.
    None,
}

impl VirtKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            VirtKind::Svm => "svm",
            VirtKind::Vmx => "vmx",
            VirtKind::None => "none",
        }
    }
}

/// VMX capability MSRs the kernel read (only when CPUID says VMX exists).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxCapMsrs {
    /// IA32_FEATURE_CONTROL (0x3A).
    pub feature_control: u64,
    /// IA32_VMX_PROCBASED_CTLS (0x482).
    pub procbased: u64,
    /// IA32_VMX_PROCBASED_CTLS2 (0x48B); meaningful only if `procbased` allows secondary controls.
    pub procbased2: u64,
}

/// IA32_FEATURE_CONTROL bit 0: lock (SDM vol. 3C 24.7).
pub const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
/// IA32_FEATURE_CONTROL bit 2: VMXON allowed outside SMX.
pub const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;

/// Architectural performance monitoring as CPUID describes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PmuInfo {
    /// Intel: CPUID.0AH:EAX[7:0]; AMD: 2 with PerfMonV2, 1 with the core extension, 0 otherwise.
    pub version: u8,
    pub gp_counters: u8,
    pub gp_width: u8,
    pub fixed_counters: u8,
    pub fixed_width: u8,
    /// AMD: CPUID Fn8000_0001 ECX[23] (six core counters).
    pub amd_core_ext: bool,
    /// AMD: CPUID Fn8000_0022 EAX[0].
    pub amd_perfmon_v2: bool,
}

/// Everything the hypervisor decided about the host CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFeatures {
    pub vendor: Vendor,
    pub virt: VirtKind,
    /// Why `virt` is `None` when the vendor's extension exists but cannot be used.
    pub virt_unusable: Option<&'static str>,
    /// EPT (VMX) or NPT (SVM).
    pub nested_paging: bool,
    /// SVM next-RIP save (CPUID Fn8000_000A EDX[3]); false on VMX, which always reports lengths.
    pub nrips: bool,
    /// SVM: number of ASIDs (Fn8000_000A EBX); VMX: 65535 with VPID, 0 without.
    pub asids: u32,
    /// VMX only: VPID available.
    pub vpid: bool,
    /// SVM revision (Fn8000_000A EAX[7:0]).
    pub svm_revision: u8,
    pub x2apic: bool,
    /// We run under another hypervisor (CPUID.1:ECX[31]).
    pub under_hypervisor: bool,
    /// Total Memory Encryption is enumerated (CPUID.7.0:ECX[13]); TDX needs it.
    pub tme: bool,
    pub pmu: PmuInfo,
}

impl HostFeatures {
    /// Decide the host's features from CPUID (and VMX MSRs where CPUID says VMX exists).
    pub fn detect<R: CpuIdReader>(reader: R, vmx_msrs: Option<VmxCapMsrs>) -> Self {
        let cpuid = CpuId::with_cpuid_reader(reader.clone());
        let vendor = match cpuid.get_vendor_info() {
            Some(v) if v.as_str() == "GenuineIntel" => Vendor::Intel,
            Some(v) if v.as_str() == "AuthenticAMD" || v.as_str() == "HygonGenuine" => Vendor::Amd,
            _ => Vendor::Other,
        };
        let fi = cpuid.get_feature_info();
        let has_vmx = fi.as_ref().is_some_and(|f| f.has_vmx());
        let x2apic = fi.as_ref().is_some_and(|f| f.has_x2apic());
        let under_hypervisor = fi.as_ref().is_some_and(|f| f.has_hypervisor());
        let ext = cpuid.get_extended_processor_and_feature_identifiers();
        let has_svm = ext.as_ref().is_some_and(|e| e.has_svm());
        let amd_core_ext =
            vendor == Vendor::Amd && ext.as_ref().is_some_and(|e| e.has_perf_cntr_extensions());
        let tme = cpuid
            .get_extended_feature_info()
            .is_some_and(|e| e.has_tme_en());

        let mut f = HostFeatures {
            vendor,
            virt: VirtKind::None,
            virt_unusable: None,
            nested_paging: false,
            nrips: false,
            asids: 0,
            vpid: false,
            svm_revision: 0,
            x2apic,
            under_hypervisor,
            tme,
            pmu: PmuInfo::default(),
        };

        if has_svm {
            if let Some(svm) = cpuid.get_svm_info() {
                f.virt = VirtKind::Svm;
                f.nested_paging = svm.has_nested_paging();
                f.nrips = svm.has_nrip();
                f.asids = svm.supported_asids();
                f.svm_revision = svm.revision();
            } else {
                f.virt_unusable = Some("SVM set but CPUID Fn8000_000A missing");
            }
        } else if has_vmx {
            match vmx_msrs {
                None => f.virt_unusable = Some("VMX capability MSRs not read"),
                Some(m) => {
                    let locked = m.feature_control & FEATURE_CONTROL_LOCK != 0;
                    let allowed = m.feature_control & FEATURE_CONTROL_VMX_OUTSIDE_SMX != 0;
                    if locked && !allowed {
                        f.virt_unusable =
                            Some("VMX disabled by firmware (IA32_FEATURE_CONTROL locked)");
                    } else {
                        f.virt = VirtKind::Vmx;
                    }
                    // Allowed-1 settings are the high 32 bits (SDM vol. 3D A.3.2, A.3.3).
                    let secondary = (m.procbased >> 32) & (1 << 31) != 0;
                    if secondary {
                        let allowed2 = m.procbased2 >> 32;
                        f.nested_paging = allowed2 & (1 << 1) != 0;
                        f.vpid = allowed2 & (1 << 5) != 0;
                        f.asids = if f.vpid { 0xFFFF } else { 0 };
                    }
                }
            }
        }

        if vendor == Vendor::Intel {
            if let Some(p) = cpuid.get_performance_monitoring_info() {
                f.pmu.version = p.version_id();
                f.pmu.gp_counters = p.number_of_counters();
                f.pmu.gp_width = p.counter_bit_width();
                if p.version_id() > 1 {
                    f.pmu.fixed_counters = p.fixed_function_counters();
                    f.pmu.fixed_width = p.fixed_function_counters_bit_width();
                }
            }
        } else if vendor == Vendor::Amd {
            // Fn8000_0022 (AMD APM vol. 3, E.4.20): EAX[0] PerfMonV2, EBX[3:0] core counters.
            // raw-cpuid has no accessor for this leaf, so read it raw.
            let max_ext = reader.cpuid1(0x8000_0000).eax;
            let leaf = (max_ext >= 0x8000_0022).then(|| reader.cpuid1(0x8000_0022));
            let v2 = leaf.filter(|r| r.eax & 1 != 0).map(|r| (r.ebx & 0xF) as u8);
            f.pmu.amd_core_ext = amd_core_ext;
            f.pmu.amd_perfmon_v2 = v2.is_some();
            f.pmu.gp_width = 48;
            (f.pmu.version, f.pmu.gp_counters) = match v2 {
                Some(n) => (2, n),
                None if amd_core_ext => (1, 6),
                None => (0, 4),
            };
        }
        f
    }

    /// Whether TDX could possibly be present (Intel with TME enumerated). The full detection,
    /// through the key-ID partitioning and SEAMRR MSRs, belongs to the `tdx` crate.
    pub fn tdx_candidate(&self) -> bool {
        self.vendor == Vendor::Intel && self.tme && self.virt == VirtKind::Vmx
    }
}

impl fmt::Display for HostFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vendor={} virt={}",
            self.vendor.as_str(),
            self.virt.as_str()
        )?;
        if let Some(why) = self.virt_unusable {
            write!(f, " ({why})")?;
        }
        let np = match self.virt {
            VirtKind::Vmx => "ept",
            _ => "npt",
        };
        write!(f, " {np}={}", yes(self.nested_paging))?;
        match self.virt {
            VirtKind::Svm => write!(
                f,
                " nrips={} asids={} rev={}",
                yes(self.nrips),
                self.asids,
                self.svm_revision
            )?,
            VirtKind::Vmx => write!(f, " vpid={}", yes(self.vpid))?,
            VirtKind::None => {}
        }
        write!(
            f,
            " pmu=v{}/{}x{}b+{}fixed x2apic={} tdx={} hypervisor={}",
            self.pmu.version,
            self.pmu.gp_counters,
            self.pmu.gp_width,
            self.pmu.fixed_counters,
            yes(self.x2apic),
            if self.tdx_candidate() {
                "candidate"
            } else {
                "absent"
            },
            yes(self.under_hypervisor),
        )
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::BTreeMap;
    use std::format;

    use raw_cpuid::CpuIdResult;

    use super::*;

    /// A recorded CPUID: (leaf, subleaf) -> registers. Unlisted leaves read as zero.
    #[derive(Clone, Default)]
    struct Dump(BTreeMap<(u32, u32), [u32; 4]>);

    impl Dump {
        fn set(mut self, leaf: u32, sub: u32, r: [u32; 4]) -> Self {
            self.0.insert((leaf, sub), r);
            self
        }
        fn cpuid(&self) -> impl CpuIdReader + use<> {
            let map = self.0.clone();
            move |leaf: u32, sub: u32| {
                let r = map
                    .get(&(leaf, sub))
                    .or_else(|| map.get(&(leaf, 0)))
                    .copied()
                    .unwrap_or([0; 4]);
                CpuIdResult {
                    eax: r[0],
                    ebx: r[1],
                    ecx: r[2],
                    edx: r[3],
                }
            }
        }
    }

    fn vendor_regs(s: &[u8; 12], max: u32) -> [u32; 4] {
        let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        [max, w(0), w(8), w(4)]
    }

    /// The bits QEMU 7.2 TCG `-cpu EPYC` reports that matter here (as the image printed them
    /// booting there): SVM rev 1, 16 ASIDs, NPT only (no NRIPS), hypervisor bit, no x2APIC,
    /// no PMU leaves and no core counter extension.
    fn qemu_epyc() -> Dump {
        Dump::default()
            .set(0, 0, vendor_regs(b"AuthenticAMD", 0xD))
            .set(1, 0, [0x00800F12, 0x0000_0800, 1 << 31, 0x178BFBFF])
            .set(0x8000_0000, 0, [0x8000_001E, 0, 0, 0])
            .set(0x8000_0001, 0, [0, 0, 1 << 2, 0])
            .set(0x8000_000A, 0, [1, 16, 0, 1 << 0])
    }

    /// A Skylake-class Intel host with VMX, EPT, VPID, PMU v4 with 4+3 counters, x2APIC.
    fn intel_host() -> Dump {
        Dump::default()
            .set(0, 0, vendor_regs(b"GenuineIntel", 0x16))
            .set(1, 0, [0x000506E3, 0, (1 << 5) | (1 << 21), 0])
            .set(7, 0, [0, 0, 1 << 13, 0])
            .set(0xA, 0, [0x0730_0404, 0, 0, (48 << 5) | 3])
            .set(0x8000_0000, 0, [0x8000_0008, 0, 0, 0])
    }

    fn intel_msrs() -> VmxCapMsrs {
        VmxCapMsrs {
            feature_control: FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMX_OUTSIDE_SMX,
            procbased: (0xFFF9_FFFE_u64 << 32) | 0x0401_E172,
            procbased2: ((1u64 << 1) | (1 << 5)) << 32,
        }
    }

    #[test]
    fn qemu_epyc_is_svm_with_npt_but_no_nrips() {
        let f = HostFeatures::detect(qemu_epyc().cpuid(), None);
        assert_eq!(f.vendor, Vendor::Amd);
        assert_eq!(f.virt, VirtKind::Svm);
        assert!(f.nested_paging);
        assert!(!f.nrips);
        assert_eq!(f.asids, 16);
        assert_eq!(f.svm_revision, 1);
        assert!(!f.x2apic && f.under_hypervisor);
        assert_eq!(
            (f.pmu.version, f.pmu.gp_counters),
            (0, 4),
            "legacy AMD: four counters"
        );
        assert!(!f.tdx_candidate());
    }

    #[test]
    fn amd_core_extension_gives_six_counters() {
        let f = HostFeatures::detect(
            qemu_epyc()
                .set(0x8000_0001, 0, [0, 0, (1 << 2) | (1 << 23), 0])
                .cpuid(),
            None,
        );
        assert_eq!((f.pmu.version, f.pmu.gp_counters), (1, 6));
        assert!(f.pmu.amd_core_ext);
    }

    #[test]
    fn nrips_bit_is_read() {
        let f = HostFeatures::detect(
            qemu_epyc()
                .set(0x8000_000A, 0, [1, 32768, 0, 0b1001])
                .cpuid(),
            None,
        );
        assert!(f.nrips && f.nested_paging);
        assert_eq!(f.asids, 32768);
    }

    #[test]
    fn amd_perfmon_v2_counter_count_comes_from_leaf_0x80000022() {
        let d = qemu_epyc().set(0x8000_0000, 0, [0x8000_0022, 0, 0, 0]).set(
            0x8000_0022,
            0,
            [1, 6, 0, 0],
        );
        let f = HostFeatures::detect(d.cpuid(), None);
        assert!(f.pmu.amd_perfmon_v2);
        assert_eq!((f.pmu.version, f.pmu.gp_counters), (2, 6));
    }

    #[test]
    fn intel_with_vmx_ept_vpid_and_pmu() {
        let f = HostFeatures::detect(intel_host().cpuid(), Some(intel_msrs()));
        assert_eq!(f.vendor, Vendor::Intel);
        assert_eq!(f.virt, VirtKind::Vmx);
        assert!(f.nested_paging && f.vpid);
        assert_eq!(
            f.pmu,
            PmuInfo {
                version: 4,
                gp_counters: 4,
                gp_width: 48,
                fixed_counters: 3,
                fixed_width: 48,
                ..Default::default()
            }
        );
        assert!(f.tdx_candidate());
    }

    #[test]
    fn vmx_locked_off_by_firmware_is_unusable() {
        let msrs = VmxCapMsrs {
            feature_control: FEATURE_CONTROL_LOCK,
            ..intel_msrs()
        };
        let f = HostFeatures::detect(intel_host().cpuid(), Some(msrs));
        assert_eq!(f.virt, VirtKind::None);
        assert!(f.virt_unusable.unwrap().contains("firmware"));
    }

    #[test]
    fn vmx_without_secondary_controls_has_no_ept() {
        let msrs = VmxCapMsrs {
            procbased: 0x0401_E172,
            ..intel_msrs()
        };
        let f = HostFeatures::detect(intel_host().cpuid(), Some(msrs));
        assert_eq!(f.virt, VirtKind::Vmx);
        assert!(!f.nested_paging && !f.vpid);
    }

    #[test]
    fn nothing_means_none() {
        let d = Dump::default().set(0, 0, vendor_regs(b"GenuineIntel", 1));
        let f = HostFeatures::detect(d.cpuid(), None);
        assert_eq!(f.virt, VirtKind::None);
        assert!(format!("{f}").contains("virt=none"));
    }

    #[test]
    fn display_is_one_readable_line() {
        let s = format!("{}", HostFeatures::detect(qemu_epyc().cpuid(), None));
        assert_eq!(
            s,
            "vendor=amd virt=svm npt=yes nrips=no asids=16 rev=1 pmu=v0/4x48b+0fixed x2apic=no tdx=absent hypervisor=yes"
        );
    }
}
