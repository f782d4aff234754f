//! What a person asks for: the PMU configuration of one VM, its defaults and its validation.
//!
//! A configuration is plain data. It is checked once, by [`PmuConfig::validate`], against what
//! the architecture allows; the error names the offending field so the HTTP layer can answer 400
//! with it. Nothing here is kept anywhere but in the value itself.

use core::fmt;

/// The three AMD core-PMU generations the model can present (APM vol. 2 §13.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AmdKind {
    /// Four counters at PerfEvtSel0..3 / PerfCtr0..3 (0xC001_0000..7), 48 bits, not enumerated
    /// by CPUID: every AMD64 processor has them.
    Legacy,
    /// Six counters in the core-extension block (0xC001_0200..B), enumerated by CPUID
    /// Fn8000_0001 ECX\[23\] (PerfCtrExtCore). The legacy indices alias counters 0..3.
    CoreExt,
    /// PerfMonV2: the core-extension block plus the global control/status registers
    /// (0xC000_0300..3), enumerated by CPUID Fn8000_0022 EAX\[0\]; the counter count is
    /// enumerated in Fn8000_0022 EBX\[3:0\] (NumPerfCtrCore).
    PerfMonV2,
}

impl AmdKind {
    /// The name used in the API: `"legacy"`, `"core_ext"`, `"perfmon_v2"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AmdKind::Legacy => "legacy",
            AmdKind::CoreExt => "core_ext",
            AmdKind::PerfMonV2 => "perfmon_v2",
        }
    }

    /// The inverse of [`AmdKind::as_str`].
    pub fn parse(s: &str) -> Result<AmdKind, ConfigError> {
        match s {
            "legacy" => Ok(AmdKind::Legacy),
            "core_ext" => Ok(AmdKind::CoreExt),
            "perfmon_v2" => Ok(AmdKind::PerfMonV2),
            _ => Err(ConfigError::UnknownKind),
        }
    }

    /// The counter counts this kind allows: legacy and core-extension counts are fixed by the
    /// architecture (software does not read them from CPUID), PerfMonV2 enumerates 1..=6.
    pub const fn gp_range(self) -> (u8, u8) {
        match self {
            AmdKind::Legacy => (4, 4),
            AmdKind::CoreExt => (6, 6),
            AmdKind::PerfMonV2 => (1, 6),
        }
    }

    /// Default counter count: the largest the kind allows.
    pub const fn default_gp_counters(self) -> u8 {
        self.gp_range().1
    }
}

/// The PMU a VM's guest should see.
///
/// Defaults for omitted fields come from [`PmuConfig::intel`] / [`PmuConfig::amd`] (and the
/// `*_with` forms that take `Option`s, for a JSON body with some fields left out):
///
/// | field               | Intel default                                     | AMD default           |
/// |---------------------|---------------------------------------------------|-----------------------|
/// | `gp_counters`       | 4                                                 | 4 / 6 / 6 by kind     |
/// | `fixed_counters`    | 0 for version 1, 3 for versions 2-5               | —                     |
/// | `width`             | 48                                                | (48, architectural)   |
/// | `full_width_writes` | false for version 1, true from version 2          | —                     |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PmuConfig {
    /// No PMU: CPUID enumerates none and every PMU MSR raises #GP.
    Off,
    /// Intel architectural performance monitoring (SDM vol. 3B §20.2).
    Intel {
        /// CPUID.0AH:EAX\[7:0\], 1..=5.
        version: u8,
        /// CPUID.0AH:EAX\[15:8\], 1..=8.
        gp_counters: u8,
        /// CPUID.0AH:EDX\[4:0\]: 0 for version 1 (fixed counters arrive with version 2), 0..=3
        /// for versions 2-4, 0..=4 for version 5 (FIXED_CTR3, topdown slots).
        fixed_counters: u8,
        /// Counter width in bits, 32..=48: CPUID.0AH:EAX\[23:16\] for the general-purpose
        /// counters and EDX\[12:5\] for the fixed ones (the model gives both the same width).
        width: u8,
        /// IA32_PERF_CAPABILITIES\[13\] (FW_WRITE): the IA32_A_PMCx aliases exist.
        full_width_writes: bool,
    },
    /// AMD core performance counters (APM vol. 2 §13.2).
    Amd {
        kind: AmdKind,
        /// Must equal 4 for `Legacy`, 6 for `CoreExt`; 1..=6 for `PerfMonV2`.
        gp_counters: u8,
    },
}

/// Intel versions the model implements.
pub const INTEL_VERSIONS: (u8, u8) = (1, 5);
/// Intel general-purpose counter counts the model implements.
pub const INTEL_GP_COUNTERS: (u8, u8) = (1, 8);
/// Counter widths the model implements.
pub const INTEL_WIDTHS: (u8, u8) = (32, 48);

/// Default Intel general-purpose counter count.
pub const INTEL_DEFAULT_GP: u8 = 4;
/// Default Intel counter width.
pub const INTEL_DEFAULT_WIDTH: u8 = 48;

/// Default Intel fixed-counter count: none in version 1, the classic three from version 2.
pub const fn intel_default_fixed(version: u8) -> u8 {
    if version <= 1 { 0 } else { 3 }
}

/// Default for full-width writes: advertised from version 2 (the PDCM era) on.
pub const fn intel_default_full_width(version: u8) -> bool {
    version >= 2
}

/// Largest fixed-counter count for an Intel version (SDM vol. 3B §20.2.2, §20.2.5).
pub const fn intel_max_fixed(version: u8) -> u8 {
    match version {
        1 => 0,
        2..=4 => 3,
        _ => 4,
    }
}

impl PmuConfig {
    /// Intel with every field at its default for `version` (see the table on [`PmuConfig`]).
    pub const fn intel(version: u8) -> PmuConfig {
        PmuConfig::Intel {
            version,
            gp_counters: INTEL_DEFAULT_GP,
            fixed_counters: intel_default_fixed(version),
            width: INTEL_DEFAULT_WIDTH,
            full_width_writes: intel_default_full_width(version),
        }
    }

    /// Intel with the given fields, defaults for those that are `None`.
    pub fn intel_with(
        version: u8,
        gp_counters: Option<u8>,
        fixed_counters: Option<u8>,
        width: Option<u8>,
        full_width_writes: Option<bool>,
    ) -> PmuConfig {
        PmuConfig::Intel {
            version,
            gp_counters: gp_counters.unwrap_or(INTEL_DEFAULT_GP),
            fixed_counters: fixed_counters.unwrap_or(intel_default_fixed(version)),
            width: width.unwrap_or(INTEL_DEFAULT_WIDTH),
            full_width_writes: full_width_writes.unwrap_or(intel_default_full_width(version)),
        }
    }

    /// AMD of `kind` with its default counter count.
    pub const fn amd(kind: AmdKind) -> PmuConfig {
        PmuConfig::Amd {
            kind,
            gp_counters: kind.default_gp_counters(),
        }
    }

    /// AMD of `kind`, with the default counter count if `gp_counters` is `None`.
    pub fn amd_with(kind: AmdKind, gp_counters: Option<u8>) -> PmuConfig {
        PmuConfig::Amd {
            kind,
            gp_counters: gp_counters.unwrap_or(kind.default_gp_counters()),
        }
    }

    /// The kernel command line's compact form (`vm_pmu=`), for VMs started at boot:
    /// `none`, `intel:VERSION[:GP[:FIXED[:WIDTH]]]` or `amd:KIND[:GP]`, omitted fields at their
    /// defaults, validated. `None` for anything else.
    pub fn parse_compact(s: &str) -> Option<PmuConfig> {
        let mut parts = s.split(':');
        let vendor = parts.next()?;
        let kind = if vendor == "amd" {
            Some(AmdKind::parse(parts.next()?).ok()?)
        } else {
            None
        };
        // The numbers that follow: at most four, each a u8.
        let mut nums: [Option<u8>; 4] = [None; 4];
        for (i, p) in parts.enumerate() {
            *nums.get_mut(i)? = Some(p.parse().ok()?);
        }
        let config = match (vendor, kind) {
            ("none", _) if nums[0].is_none() => PmuConfig::Off,
            ("intel", _) => PmuConfig::intel_with(nums[0]?, nums[1], nums[2], nums[3], None),
            ("amd", Some(kind)) if nums[1].is_none() => PmuConfig::amd_with(kind, nums[0]),
            _ => return None,
        };
        config.validate().ok()
    }

    /// The vendor whose PMU this configuration describes, `None` for [`PmuConfig::Off`].
    pub const fn vendor(&self) -> Option<crate::features::Vendor> {
        match self {
            PmuConfig::Off => None,
            PmuConfig::Intel { .. } => Some(crate::features::Vendor::Intel),
            PmuConfig::Amd { .. } => Some(crate::features::Vendor::Amd),
        }
    }

    /// Check every field against what the architecture (and the model) allows. Returns the
    /// configuration unchanged when it is valid; the first offending field otherwise, in the
    /// order version, gp_counters, fixed_counters, width.
    pub fn validate(self) -> Result<PmuConfig, ConfigError> {
        match self {
            PmuConfig::Off => {}
            PmuConfig::Intel {
                version,
                gp_counters,
                fixed_counters,
                width,
                full_width_writes: _,
            } => {
                let (vmin, vmax) = INTEL_VERSIONS;
                if !(vmin..=vmax).contains(&version) {
                    return Err(ConfigError::Version {
                        got: version,
                        min: vmin,
                        max: vmax,
                    });
                }
                let (gmin, gmax) = INTEL_GP_COUNTERS;
                if !(gmin..=gmax).contains(&gp_counters) {
                    return Err(ConfigError::GpCounters {
                        got: gp_counters,
                        min: gmin,
                        max: gmax,
                    });
                }
                let fmax = intel_max_fixed(version);
                if fixed_counters > fmax {
                    return Err(ConfigError::FixedCounters {
                        got: fixed_counters,
                        max: fmax,
                    });
                }
                let (wmin, wmax) = INTEL_WIDTHS;
                if !(wmin..=wmax).contains(&width) {
                    return Err(ConfigError::Width {
                        got: width,
                        min: wmin,
                        max: wmax,
                    });
                }
            }
            PmuConfig::Amd { kind, gp_counters } => {
                let (min, max) = kind.gp_range();
                if !(min..=max).contains(&gp_counters) {
                    return Err(ConfigError::GpCounters {
                        got: gp_counters,
                        min,
                        max,
                    });
                }
            }
        }
        Ok(self)
    }
}

/// Why a configuration was refused. Small and `Copy`; [`ConfigError::field`] names the field,
/// the data says what was given and what is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigError {
    /// Intel `version` outside `min..=max`.
    Version { got: u8, min: u8, max: u8 },
    /// `gp_counters` outside `min..=max` (for AMD the range depends on the kind).
    GpCounters { got: u8, min: u8, max: u8 },
    /// `fixed_counters` above what the version allows.
    FixedCounters { got: u8, max: u8 },
    /// `width` outside `min..=max`.
    Width { got: u8, min: u8, max: u8 },
    /// An AMD `kind` name that is not one of [`AmdKind::as_str`].
    UnknownKind,
}

impl ConfigError {
    /// The offending field, as named in the API.
    pub const fn field(&self) -> &'static str {
        match self {
            ConfigError::Version { .. } => "version",
            ConfigError::GpCounters { .. } => "gp_counters",
            ConfigError::FixedCounters { .. } => "fixed_counters",
            ConfigError::Width { .. } => "width",
            ConfigError::UnknownKind => "kind",
        }
    }

    /// Why, in a few words.
    pub const fn reason(&self) -> &'static str {
        match self {
            ConfigError::Version { .. } => "unsupported architectural PMU version",
            ConfigError::GpCounters { .. } => "counter count not allowed for this PMU",
            ConfigError::FixedCounters { .. } => "more fixed counters than the version allows",
            ConfigError::Width { .. } => "counter width out of range",
            ConfigError::UnknownKind => "unknown AMD PMU kind",
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field(), self.reason())?;
        match *self {
            ConfigError::Version { got, min, max }
            | ConfigError::GpCounters { got, min, max }
            | ConfigError::Width { got, min, max } => {
                write!(f, " (got {got}, allowed {min}..={max})")
            }
            ConfigError::FixedCounters { got, max } => write!(f, " (got {got}, allowed 0..={max})"),
            ConfigError::UnknownKind => {
                write!(f, " (allowed: legacy, core_ext, perfmon_v2)")
            }
        }
    }
}
