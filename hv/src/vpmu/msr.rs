//! PMU MSR indices and the neutral names the model gives them.
//!
//! Numbers are from the Intel SDM vol. 4 table 2-2 ("IA-32 Architectural MSRs") and vol. 3B
//! §20.2 (architectural performance monitoring), and from the AMD APM vol. 2 §13.2
//! ("Performance-Monitoring Counters") and the PerfMonV2 global registers. Every index a
//! configuration could ever expose is listed here; which of them exist for a given guest is the
//! [`Model`](super::Model)'s decision alone.

/// IA32_PMC0: first general-purpose counter; IA32_PMCx = 0xC1 + x (SDM vol. 3B §20.2.1).
pub const IA32_PMC0: u32 = 0xC1;
/// IA32_PERFEVTSEL0: first event select; IA32_PERFEVTSELx = 0x186 + x (SDM vol. 3B §20.2.1).
pub const IA32_PERFEVTSEL0: u32 = 0x186;
/// IA32_FIXED_CTR0: first fixed-function counter; IA32_FIXED_CTRx = 0x309 + x
/// (SDM vol. 3B §20.2.2; FIXED_CTR3, topdown slots, arrives with version 5 parts).
pub const IA32_FIXED_CTR0: u32 = 0x309;
/// IA32_PERF_CAPABILITIES, present when CPUID.1:ECX.PDCM\[15\] = 1 (SDM vol. 3B §20.2.4, vol. 4).
pub const IA32_PERF_CAPABILITIES: u32 = 0x345;
/// IA32_FIXED_CTR_CTRL, version 2 and later (SDM vol. 3B §20.2.2).
pub const IA32_FIXED_CTR_CTRL: u32 = 0x38D;
/// IA32_PERF_GLOBAL_STATUS, read-only, version 2 and later (SDM vol. 3B §20.2.2).
pub const IA32_PERF_GLOBAL_STATUS: u32 = 0x38E;
/// IA32_PERF_GLOBAL_CTRL, version 2 and later (SDM vol. 3B §20.2.2).
pub const IA32_PERF_GLOBAL_CTRL: u32 = 0x38F;
/// IA32_PERF_GLOBAL_OVF_CTRL (versions 2-3), renamed IA32_PERF_GLOBAL_STATUS_RESET from version 4
/// (SDM vol. 3B §20.2.2, §20.2.4.1; vol. 4 table 2-2 lists both names at 390H).
pub const IA32_PERF_GLOBAL_OVF_CTRL: u32 = 0x390;
/// Version-4 name of [`IA32_PERF_GLOBAL_OVF_CTRL`].
pub const IA32_PERF_GLOBAL_STATUS_RESET: u32 = IA32_PERF_GLOBAL_OVF_CTRL;
/// IA32_PERF_GLOBAL_STATUS_SET, version 4 and later (SDM vol. 3B §20.2.4.1).
pub const IA32_PERF_GLOBAL_STATUS_SET: u32 = 0x391;
/// IA32_PERF_GLOBAL_INUSE, read-only, version 4 and later (SDM vol. 3B §20.2.4.3).
pub const IA32_PERF_GLOBAL_INUSE: u32 = 0x392;
/// IA32_A_PMC0: full-width alias of IA32_PMC0, IA32_A_PMCx = 0x4C1 + x, present only when
/// IA32_PERF_CAPABILITIES\[13\] (FW_WRITE) = 1 (SDM vol. 3B §20.2.6).
pub const IA32_A_PMC0: u32 = 0x4C1;

/// AMD legacy PerfEvtSel0..3 = 0xC001_0000..3 (APM vol. 2 §13.2).
pub const AMD_PERF_CTL0: u32 = 0xC001_0000;
/// AMD legacy PerfCtr0..3 = 0xC001_0004..7 (APM vol. 2 §13.2).
pub const AMD_PERF_CTR0: u32 = 0xC001_0004;
/// AMD core-extension PERF_CTLn = 0xC001_0200 + 2n, PERF_CTRn = 0xC001_0201 + 2n, n < 6, present
/// when CPUID Fn8000_0001 ECX\[23\] (PerfCtrExtCore) = 1 (APM vol. 2 §13.2). Counters 0..3 alias
/// the legacy registers.
pub const AMD_PERF_CTL_EXT0: u32 = 0xC001_0200;
/// AMD PerfCntrGlobalStatus, read-only (PerfMonV2; APM vol. 2 §13.2).
pub const AMD_PERF_CNTR_GLOBAL_STATUS: u32 = 0xC000_0300;
/// AMD PerfCntrGlobalCtl (PerfMonV2).
pub const AMD_PERF_CNTR_GLOBAL_CTL: u32 = 0xC000_0301;
/// AMD PerfCntrGlobalStatusClr, write 1 to clear (PerfMonV2).
pub const AMD_PERF_CNTR_GLOBAL_STATUS_CLR: u32 = 0xC000_0302;
/// AMD PerfCntrGlobalStatusSet, write 1 to set (PerfMonV2).
pub const AMD_PERF_CNTR_GLOBAL_STATUS_SET: u32 = 0xC000_0303;

/// Maximum Intel general-purpose counters the model supports (the GLOBAL_CTRL layout has room for
/// 32; 8 is what real parts with SMT off report).
pub const MAX_GP: usize = 8;
/// Maximum fixed-function counters the model supports (FIXED_CTR0..3).
pub const MAX_FIXED: usize = 4;
/// AMD core counters: the core-extension MSR block holds six pairs.
pub const AMD_MAX_GP: usize = 6;

/// A PMU register, named neutrally: the vendor-specific index decodes to one of these through
/// [`Model::msr`](super::Model::msr). AMD's legacy and core-extension indices decode to the same
/// `EventSelect(n)` / `Counter(n)`: they are aliases of one register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PmuMsr {
    /// General-purpose counter n (Intel IA32_PMCn with 32-bit sign-extending writes; AMD PerfCtrn).
    Counter(u8),
    /// Intel IA32_A_PMCn: the same counter, written at full width.
    CounterFullWidth(u8),
    /// Event select n (Intel IA32_PERFEVTSELn; AMD PerfEvtSeln / PERF_CTLn).
    EventSelect(u8),
    /// Intel IA32_FIXED_CTRn.
    Fixed(u8),
    /// Intel IA32_FIXED_CTR_CTRL.
    FixedCtrl,
    /// Intel IA32_PERF_CAPABILITIES.
    Capabilities,
    /// Intel IA32_PERF_GLOBAL_STATUS; AMD PerfCntrGlobalStatus. Read-only.
    GlobalStatus,
    /// Intel IA32_PERF_GLOBAL_CTRL; AMD PerfCntrGlobalCtl.
    GlobalCtrl,
    /// Intel IA32_PERF_GLOBAL_OVF_CTRL / STATUS_RESET; AMD PerfCntrGlobalStatusClr.
    GlobalStatusClear,
    /// Intel IA32_PERF_GLOBAL_STATUS_SET; AMD PerfCntrGlobalStatusSet.
    GlobalStatusSet,
    /// Intel IA32_PERF_GLOBAL_INUSE. Read-only.
    GlobalInUse,
}

/// Every MSR index any configuration could expose, as inclusive ranges. The MSR dispatcher sends
/// exactly these to the vPMU ([`is_pmu_msr`]); the model then answers a value or #GP.
pub const PMU_MSR_RANGES: [(u32, u32); 10] = [
    (IA32_PMC0, IA32_PMC0 + MAX_GP as u32 - 1),
    (IA32_PERFEVTSEL0, IA32_PERFEVTSEL0 + MAX_GP as u32 - 1),
    (IA32_FIXED_CTR0, IA32_FIXED_CTR0 + MAX_FIXED as u32 - 1),
    (IA32_PERF_CAPABILITIES, IA32_PERF_CAPABILITIES),
    (IA32_FIXED_CTR_CTRL, IA32_PERF_GLOBAL_INUSE),
    (IA32_A_PMC0, IA32_A_PMC0 + MAX_GP as u32 - 1),
    (AMD_PERF_CTL0, AMD_PERF_CTL0 + 3),
    (AMD_PERF_CTR0, AMD_PERF_CTR0 + 3),
    (
        AMD_PERF_CTL_EXT0,
        AMD_PERF_CTL_EXT0 + 2 * AMD_MAX_GP as u32 - 1,
    ),
    (AMD_PERF_CNTR_GLOBAL_STATUS, AMD_PERF_CNTR_GLOBAL_STATUS_SET),
];

/// Is `msr` one the vPMU answers for (under some configuration)? Those that the current model
/// does not have still belong here: the vPMU answers them with #GP, as hardware would.
pub fn is_pmu_msr(msr: u32) -> bool {
    PMU_MSR_RANGES
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&msr))
}

/// All indices of [`PMU_MSR_RANGES`], in order.
pub fn all_pmu_msrs() -> impl Iterator<Item = u32> {
    PMU_MSR_RANGES.iter().flat_map(|&(lo, hi)| lo..=hi)
}
