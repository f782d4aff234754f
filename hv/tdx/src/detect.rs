//! Is this a TDX host? Decided from CPUID values and the few MSRs that CPUID says exist, so the
//! answer can be computed on any x86-64 machine without a fault.
//!
//! # Why this is careful about MSRs
//!
//! The kernel has no `rdmsr_safe`: a RDMSR of an MSR the CPU does not implement raises #GP(0)
//! (SDM Vol. 4 ch. 2, "Model-Specific Registers") and takes the hypervisor down on a machine
//! that merely lacks TDX. Linux can probe IA32_MKTME_KEYID_PARTITIONING with an exception
//! fixup; we cannot, so every MSR read here is gated by what enumerates it, and each gate is a
//! reason of its own in [`TdxAbsence`]:
//!
//! | step | reads                                    | only when                                   |
//! |------|------------------------------------------|---------------------------------------------|
//! | 1    | CPUID 0, 1, 7.0                          | always (7.0 only if the max basic leaf ≥ 7) |
//! | 2    | IA32_FEATURE_CONTROL (0x3A)              | CPUID.1:ECX\[5\] (VMX), SDM Vol. 3C §24.7     |
//! | 3    | IA32_TME_ACTIVATE (0x982)                | CPUID.7.0:ECX\[13\] (TME), Intel *Architecture Memory Encryption Technologies Specification* ch. 4 |
//! | 4    | IA32_MTRRCAP (0xFE)                      | CPUID.1:EDX\[12\] (MTRR), SDM Vol. 3A §12.11.1 |
//! | 5    | IA32_SEAMRR_PHYS_BASE/MASK (0x1400/0x1401) | IA32_MTRRCAP\[15\] (SEAMRR)                 |
//! | 6    | IA32_MKTME_KEYID_PARTITIONING (0x87)     | TME enumerated *and* IA32_TME_ACTIVATE locked with MK-TME KeyID bits > 0 |
//!
//! Step 6 is deliberately stricter than any single enumeration bit: the partitioning MSR reports
//! how the activated MK-TME KeyID space is split between MK-TME and TDX (*Intel TDX CPU
//! Architectural Extensions* spec, "IA32_MKTME_KEYID_PARTITIONING"), which only means something
//! once firmware activated and locked TME-MK with KeyID bits. We could not confirm the exact SDM
//! enumeration condition of MSR 0x87 here, so we only read it when all of those hold, which
//! every TDX-enabled platform satisfies.
//!
//! Running under a hypervisor (CPUID.1:ECX\[31\]) is refused before any MSR is read: a host of
//! TD guests must own SEAM, and a nested hypervisor may fault on MSRs its CPUID advertises.
//!
//! Key ID arithmetic (same spec): bits 31:0 of MSR 0x87 are the number of MK-TME KeyIDs, bits
//! 63:32 the number of TDX private KeyIDs; MK-TME KeyIDs are 1..=NUM_MKTME_KIDS and TDX KeyIDs
//! follow them. The first TDX KeyID becomes the module's global KeyID (TDH.SYS.CONFIG), so at
//! least two are needed for TDX to be of any use.

use core::fmt;

/// MSR indices read by [`detect`].
pub mod msr {
    /// IA32_FEATURE_CONTROL (SDM Vol. 4 Table 2-2).
    pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
    /// IA32_MKTME_KEYID_PARTITIONING (TDX CPU Architectural Extensions spec).
    pub const IA32_MKTME_KEYID_PARTITIONING: u32 = 0x87;
    /// IA32_MTRRCAP (SDM Vol. 3A §12.11.1).
    pub const IA32_MTRRCAP: u32 = 0xFE;
    /// IA32_TME_CAPABILITY (memory encryption spec §4.1); listed for completeness, not read.
    pub const IA32_TME_CAPABILITY: u32 = 0x981;
    /// IA32_TME_ACTIVATE (memory encryption spec §4.2).
    pub const IA32_TME_ACTIVATE: u32 = 0x982;
    /// IA32_SEAMRR_PHYS_BASE: base of the SEAM range the TDX module lives in.
    pub const IA32_SEAMRR_PHYS_BASE: u32 = 0x1400;
    /// IA32_SEAMRR_PHYS_MASK.
    pub const IA32_SEAMRR_PHYS_MASK: u32 = 0x1401;
}

/// CPUID.1:ECX\[5\] VMX.
pub const CPUID_1_ECX_VMX: u32 = 1 << 5;
/// CPUID.1:ECX\[31\] hypervisor present.
pub const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX\[12\] MTRR.
pub const CPUID_1_EDX_MTRR: u32 = 1 << 12;
/// CPUID.(EAX=7,ECX=0):ECX\[13\] TME_EN: IA32_TME_CAPABILITY/ACTIVATE exist.
pub const CPUID_7_ECX_TME: u32 = 1 << 13;

/// IA32_FEATURE_CONTROL\[0\] lock.
pub const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
/// IA32_FEATURE_CONTROL\[2\] VMX outside SMX.
pub const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;
/// IA32_TME_ACTIVATE\[0\] lock (read-only once set by firmware).
pub const TME_ACTIVATE_LOCK: u64 = 1 << 0;
/// IA32_TME_ACTIVATE\[1\] TME enable.
pub const TME_ACTIVATE_ENABLE: u64 = 1 << 1;
/// IA32_TME_ACTIVATE\[35:32\] MK_TME_KEYID_BITS: physical-address bits used for KeyIDs.
pub const TME_ACTIVATE_KEYID_BITS_SHIFT: u32 = 32;
/// IA32_MTRRCAP\[15\] SEAMRR supported.
pub const MTRRCAP_SEAMRR: u64 = 1 << 15;
/// IA32_SEAMRR_PHYS_BASE\[3\] configured by firmware.
pub const SEAMRR_BASE_CONFIGURED: u64 = 1 << 3;
/// IA32_SEAMRR_PHYS_MASK\[10\] locked.
pub const SEAMRR_MASK_LOCKED: u64 = 1 << 10;
/// IA32_SEAMRR_PHYS_MASK\[11\] enabled.
pub const SEAMRR_MASK_ENABLED: u64 = 1 << 11;

/// The CPUID values detection needs, read by the caller (STYLE.md point 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidFacts {
    /// Leaf 0 vendor string is "GenuineIntel".
    pub intel: bool,
    /// Leaf 0 EAX: highest basic leaf.
    pub max_basic_leaf: u32,
    /// Leaf 1 ECX.
    pub leaf1_ecx: u32,
    /// Leaf 1 EDX.
    pub leaf1_edx: u32,
    /// Leaf 7 subleaf 0 ECX; 0 if leaf 7 is beyond `max_basic_leaf`.
    pub leaf7_ecx: u32,
}

impl CpuidFacts {
    /// Collects the facts from a CPUID function `(leaf, subleaf) -> [eax, ebx, ecx, edx]`.
    pub fn read(mut cpuid: impl FnMut(u32, u32) -> [u32; 4]) -> Self {
        let l0 = cpuid(0, 0);
        let intel = l0[1] == u32::from_le_bytes(*b"Genu")
            && l0[3] == u32::from_le_bytes(*b"ineI")
            && l0[2] == u32::from_le_bytes(*b"ntel");
        let max_basic_leaf = l0[0];
        let l1 = if max_basic_leaf >= 1 {
            cpuid(1, 0)
        } else {
            [0; 4]
        };
        let l7 = if max_basic_leaf >= 7 {
            cpuid(7, 0)
        } else {
            [0; 4]
        };
        CpuidFacts {
            intel,
            max_basic_leaf,
            leaf1_ecx: l1[2],
            leaf1_edx: l1[3],
            leaf7_ecx: l7[2],
        }
    }
}

/// Reads an MSR that exists. [`detect`] only asks for MSRs that CPUID (or an MSR read before)
/// enumerates; the kernel implements this with RDMSR, tests with a table that flags any read of
/// an MSR the simulated CPU lacks.
pub trait MsrReader {
    /// The value of `msr`.
    fn read(&mut self, msr: u32) -> u64;
}

impl<F: FnMut(u32) -> u64> MsrReader for F {
    fn read(&mut self, msr: u32) -> u64 {
        self(msr)
    }
}

/// A TDX KeyID (host key ID, "HKID"): the upper physical-address bits that select a memory
/// encryption key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub u32);

/// The TDX private KeyIDs firmware reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyIdRange {
    /// First TDX private KeyID (NUM_MKTME_KIDS + 1).
    pub first: u32,
    /// Number of TDX private KeyIDs (NUM_TDX_PRIV_KIDS), at least 2.
    pub count: u32,
}

impl KeyIdRange {
    /// The KeyID the TDX module encrypts its own metadata with (passed to TDH.SYS.CONFIG); the
    /// first of the range, as Linux does.
    pub const fn global(self) -> KeyId {
        KeyId(self.first)
    }

    /// KeyIDs left for TD guests: all but the global one.
    pub const fn guest_count(self) -> u32 {
        self.count.saturating_sub(1)
    }

    /// The `i`-th guest KeyID (`i < guest_count()`).
    pub const fn guest(self, i: u32) -> KeyId {
        KeyId(self.first + 1 + i)
    }
}

/// Why this machine is not a TDX host. Stable: [`as_str`](Self::as_str) goes into JSON and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TdxAbsence {
    /// The CPU is not Intel.
    NotIntel,
    /// CPUID.1:ECX\[31\]: we run under another hypervisor; TDX hosting needs the bare machine.
    RunningAsGuest,
    /// CPUID.1:ECX\[5\] clear.
    NoVmx,
    /// IA32_FEATURE_CONTROL locked without VMX outside SMX.
    VmxDisabledByFirmware,
    /// CPUID.7.0:ECX\[13\] clear: no Total Memory Encryption, on which TDX is built.
    NoTme,
    /// IA32_TME_ACTIVATE not locked, or TME not enabled, by firmware.
    TmeNotActivated,
    /// No MTRRs, or IA32_MTRRCAP\[15\] clear: no SEAM range register.
    NoSeamrr,
    /// IA32_SEAMRR_PHYS_BASE\[3\] clear: firmware did not configure the SEAM range.
    SeamrrNotConfigured,
    /// IA32_SEAMRR_PHYS_MASK lock/enable clear: SEAM range not enabled.
    SeamrrNotEnabled,
    /// No TDX private KeyIDs (MK-TME KeyID bits are 0, or NUM_TDX_PRIV_KIDS is 0): TDX off in
    /// firmware.
    NoTdxKeyIds,
    /// Exactly one TDX KeyID: the module needs it as its global KeyID, none is left for guests.
    TooFewTdxKeyIds,
    /// MSR 0x87 describes more KeyIDs than the activated KeyID bits can address.
    InconsistentKeyIds,
}

impl TdxAbsence {
    /// Every reason, for tests and documentation.
    pub const ALL: [TdxAbsence; 12] = [
        TdxAbsence::NotIntel,
        TdxAbsence::RunningAsGuest,
        TdxAbsence::NoVmx,
        TdxAbsence::VmxDisabledByFirmware,
        TdxAbsence::NoTme,
        TdxAbsence::TmeNotActivated,
        TdxAbsence::NoSeamrr,
        TdxAbsence::SeamrrNotConfigured,
        TdxAbsence::SeamrrNotEnabled,
        TdxAbsence::NoTdxKeyIds,
        TdxAbsence::TooFewTdxKeyIds,
        TdxAbsence::InconsistentKeyIds,
    ];

    /// Stable snake_case identifier, e.g. for `{"supported":false,"reason":"no_seamrr"}`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TdxAbsence::NotIntel => "not_intel",
            TdxAbsence::RunningAsGuest => "running_as_guest",
            TdxAbsence::NoVmx => "no_vmx",
            TdxAbsence::VmxDisabledByFirmware => "vmx_disabled_by_firmware",
            TdxAbsence::NoTme => "no_tme",
            TdxAbsence::TmeNotActivated => "tme_not_activated",
            TdxAbsence::NoSeamrr => "no_seamrr",
            TdxAbsence::SeamrrNotConfigured => "seamrr_not_configured",
            TdxAbsence::SeamrrNotEnabled => "seamrr_not_enabled",
            TdxAbsence::NoTdxKeyIds => "no_tdx_keyids",
            TdxAbsence::TooFewTdxKeyIds => "too_few_tdx_keyids",
            TdxAbsence::InconsistentKeyIds => "inconsistent_keyids",
        }
    }

    /// One line for people.
    pub const fn describe(self) -> &'static str {
        match self {
            TdxAbsence::NotIntel => "the CPU is not an Intel CPU",
            TdxAbsence::RunningAsGuest => "running under another hypervisor",
            TdxAbsence::NoVmx => "the CPU has no VMX",
            TdxAbsence::VmxDisabledByFirmware => "VMX is disabled by firmware",
            TdxAbsence::NoTme => "the CPU has no Total Memory Encryption",
            TdxAbsence::TmeNotActivated => "firmware did not activate memory encryption",
            TdxAbsence::NoSeamrr => "the CPU has no SEAM range register",
            TdxAbsence::SeamrrNotConfigured => "firmware did not configure the SEAM range",
            TdxAbsence::SeamrrNotEnabled => "firmware did not enable the SEAM range",
            TdxAbsence::NoTdxKeyIds => "firmware reserved no TDX private key IDs",
            TdxAbsence::TooFewTdxKeyIds => "only one TDX key ID: none left for guests",
            TdxAbsence::InconsistentKeyIds => "key ID partitioning exceeds the key ID bits",
        }
    }
}

impl fmt::Display for TdxAbsence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The outcome of [`detect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TdxSupport {
    /// Firmware enabled TDX: SEAM range set up and private KeyIDs reserved. Whether a TDX
    /// module is actually loaded is only known from the first SEAMCALL (TDH.SYS.INIT).
    Supported {
        /// The TDX private KeyIDs.
        keyids: KeyIdRange,
    },
    /// Not a TDX host, and why.
    Unsupported {
        /// Why.
        reason: TdxAbsence,
    },
}

impl TdxSupport {
    /// Whether TDX may be brought up.
    pub const fn is_supported(&self) -> bool {
        matches!(self, TdxSupport::Supported { .. })
    }

    /// The KeyIDs, if supported.
    pub const fn keyids(&self) -> Option<KeyIdRange> {
        match self {
            TdxSupport::Supported { keyids } => Some(*keyids),
            TdxSupport::Unsupported { .. } => None,
        }
    }

    /// Writes the API's JSON object: `{"supported":false,"reason":"no_seamrr"}` or
    /// `{"supported":true,"keyids":{"first":N,"count":M}}`.
    pub fn write_json(&self, w: &mut impl fmt::Write) -> fmt::Result {
        match self {
            TdxSupport::Supported { keyids } => write!(
                w,
                "{{\"supported\":true,\"keyids\":{{\"first\":{},\"count\":{}}}}}",
                keyids.first, keyids.count
            ),
            TdxSupport::Unsupported { reason } => write!(
                w,
                "{{\"supported\":false,\"reason\":\"{}\"}}",
                reason.as_str()
            ),
        }
    }
}

impl fmt::Display for TdxSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TdxSupport::Supported { keyids } => write!(
                f,
                "TDX enabled by firmware: private key IDs [{}, {})",
                keyids.first,
                u64::from(keyids.first) + u64::from(keyids.count)
            ),
            TdxSupport::Unsupported { reason } => {
                write!(f, "no TDX: {} ({})", reason.describe(), reason.as_str())
            }
        }
    }
}

/// Decides whether this is a TDX host, reading only MSRs that exist (see the module docs for
/// the order). Never fails: the worst outcome is `Unsupported`.
pub fn detect(cpuid: &CpuidFacts, msrs: &mut impl MsrReader) -> TdxSupport {
    match detect_keyids(cpuid, msrs) {
        Ok(keyids) => TdxSupport::Supported { keyids },
        Err(reason) => TdxSupport::Unsupported { reason },
    }
}

fn detect_keyids(c: &CpuidFacts, msrs: &mut impl MsrReader) -> Result<KeyIdRange, TdxAbsence> {
    use TdxAbsence::*;
    if !c.intel {
        return Err(NotIntel);
    }
    if c.leaf1_ecx & CPUID_1_ECX_HYPERVISOR != 0 {
        return Err(RunningAsGuest);
    }
    if c.leaf1_ecx & CPUID_1_ECX_VMX == 0 {
        return Err(NoVmx);
    }
    let fc = msrs.read(msr::IA32_FEATURE_CONTROL);
    if fc & FEATURE_CONTROL_LOCK != 0 && fc & FEATURE_CONTROL_VMX_OUTSIDE_SMX == 0 {
        return Err(VmxDisabledByFirmware);
    }
    if c.max_basic_leaf < 7 || c.leaf7_ecx & CPUID_7_ECX_TME == 0 {
        return Err(NoTme);
    }
    let tme = msrs.read(msr::IA32_TME_ACTIVATE);
    if tme & TME_ACTIVATE_LOCK == 0 || tme & TME_ACTIVATE_ENABLE == 0 {
        return Err(TmeNotActivated);
    }
    let keyid_bits = ((tme >> TME_ACTIVATE_KEYID_BITS_SHIFT) & 0xF) as u32;
    if c.leaf1_edx & CPUID_1_EDX_MTRR == 0 || msrs.read(msr::IA32_MTRRCAP) & MTRRCAP_SEAMRR == 0 {
        return Err(NoSeamrr);
    }
    if msrs.read(msr::IA32_SEAMRR_PHYS_BASE) & SEAMRR_BASE_CONFIGURED == 0 {
        return Err(SeamrrNotConfigured);
    }
    let mask = msrs.read(msr::IA32_SEAMRR_PHYS_MASK);
    let on = SEAMRR_MASK_LOCKED | SEAMRR_MASK_ENABLED;
    if mask & on != on {
        return Err(SeamrrNotEnabled);
    }
    if keyid_bits == 0 {
        return Err(NoTdxKeyIds);
    }
    let part = msrs.read(msr::IA32_MKTME_KEYID_PARTITIONING);
    let mktme = part as u32;
    let tdx = (part >> 32) as u32;
    match tdx {
        0 => return Err(NoTdxKeyIds),
        1 => return Err(TooFewTdxKeyIds),
        _ => {}
    }
    // KeyIDs are 0..2^bits; KeyID 0 is TME's own.
    let last = u64::from(mktme) + u64::from(tdx);
    if last >= 1u64 << keyid_bits {
        return Err(InconsistentKeyIds);
    }
    Ok(KeyIdRange {
        first: mktme + 1,
        count: tdx,
    })
}

/// What the command line asked for (`tdx=on|off|auto`): parsed with the rest of the command
/// line in [`hv::config`].
pub use hv::config::TdxRequest;

/// What to do about TDX at boot. Never fatal: the hypervisor runs either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Not requested.
    Off,
    /// Bring the TDX module up with these KeyIDs.
    BringUp {
        /// From detection.
        keyids: KeyIdRange,
    },
    /// Requested (or auto) but the machine cannot; carry on without TDX. `log` says whether
    /// the user asked explicitly (then the reason deserves a log line).
    Skip {
        /// Why.
        reason: TdxAbsence,
        /// `tdx=on` was given: tell the user why it is not happening.
        log: bool,
    },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Off => f.write_str("tdx: off"),
            Decision::BringUp { keyids } => write!(
                f,
                "tdx: bringing up the TDX module (key IDs {}+{})",
                keyids.first, keyids.count
            ),
            Decision::Skip { reason, .. } => write!(
                f,
                "tdx: requested but unavailable: {} ({}); continuing without TDX",
                reason.describe(),
                reason.as_str()
            ),
        }
    }
}

/// Combines the request and the detected support. Total: every input has an answer, none of
/// which stops the boot.
pub const fn decide(requested: TdxRequest, support: TdxSupport) -> Decision {
    match (requested, support) {
        (TdxRequest::Off, _) => Decision::Off,
        (_, TdxSupport::Supported { keyids }) => Decision::BringUp { keyids },
        (r, TdxSupport::Unsupported { reason }) => Decision::Skip {
            reason,
            log: matches!(r, TdxRequest::On),
        },
    }
}

#[cfg(test)]
mod tests;
