//! The CPUID a guest sees: the host's CPUID, filtered down to what Hermitage virtualizes.
//!
//! Why a filtered view rather than the host's answers: CPUID is how a guest decides which
//! instructions, MSRs and devices to use. Any feature it sees but we do not virtualize becomes a
//! #GP from the MSR allow-list ([`crate::msr`]), a nested page fault on an unbacked address, or
//! state the world switch does not save. So the view is built once per VM from the host's CPUID
//! (passed in as a function, STYLE.md point 5) with **allow-lists**: a feature bit reaches the
//! guest only if it is listed here, so bits that future CPUs add stay hidden until someone
//! decides to expose them.
//!
//! # What the guest sees
//!
//! | leaf            | content                                                                 |
//! |-----------------|-------------------------------------------------------------------------|
//! | 0               | max basic leaf `min(host, 0x23)`, the host's vendor                     |
//! | 1               | host signature; one logical CPU, initial APIC ID 0; allow-listed features; hypervisor bit (`ECX[31]`) set |
//! | 2, 0x15, 0x16   | host (cache descriptors, TSC/crystal ratio, frequencies)                |
//! | 4               | host caches, with the core/thread-sharing fields (`EAX[31:14]`) zeroed    |
//! | 7               | subleaves 0 and 1, allow-listed                                         |
//! | 0xA, 0x23       | zero: no PMU (the vPMU hook may fill them)                              |
//! | 0x4000_0000     | EAX = 0x4000_0000 (max hypervisor leaf), EBX/ECX/EDX = `"HermitageHV\0"` |
//! | 0x8000_0000     | max extended leaf `min(host, 0x8000_0022)`, host EBX..EDX               |
//! | 0x8000_0001     | host signature, allow-listed features                                   |
//! | 0x8000_0002..6  | host (brand string, L1/L2/L3 cache info)                                |
//! | 0x8000_0007     | invariant TSC (`EDX[8]`) only                                             |
//! | 0x8000_0008     | address sizes (`EAX[15:0]`), allow-listed EBX; one core (ECX = 0)         |
//! | 0x8000_0019/1A  | host (1 GiB TLB, performance optimisation hints)                        |
//! | 0x8000_0021     | allow-listed EAX                                                        |
//! | 0x8000_0022     | zero: no PerfMonV2 (the vPMU hook may fill it)                          |
//! | anything else   | zero (leaves within range not listed: thermal/power, topology 0xB/0x1F, XSAVE 0xD, RDT, SGX, PT, SVM 0x8000_000A, SEV, AMD topology 0x8000_001D/1E...) |
//!
//! Leaves above the maximum (basic, hypervisor or extended) answer as the host's vendor does:
//! Intel returns the data of the highest basic leaf (SDM Vol. 2A, CPUID, "If a value entered
//! for CPUID.EAX is higher than the maximum input value ... the data for the highest basic
//! information leaf is returned"), AMD returns zeros (APM Vol. 3, CPUID). Subleaves of indexed
//! leaves (4, 7, 0x23) past the last one the host reported read as zero.
//!
//! # Hidden, and why
//!
//! - **Virtualization**: VMX (`1:ECX[5]`), SMX (`1:ECX[6]`), SVM (`0x8000_0001:ECX[2]`) and
//!   leaf 0x8000_000A. No nested virtualization.
//! - **PMU**: leaf 0xA and 0x23 zero, PDCM (`1:ECX[15]`) and DS (`1:EDX[21]`) clear,
//!   PerfCtrExtCore/NB/LLC (`0x8000_0001:ECX[23,24,28]`) clear, leaf 0x8000_0022 zero, until
//!   the vPMU supplies them through [`PmuCpuid`].
//! - **Interrupt controller and topology**: APIC (`1:EDX[9]`), x2APIC (`1:ECX[21]`),
//!   TSC-deadline (`1:ECX[24]`), ExtApicSpace and TopologyExtensions
//!   (`0x8000_0001:ECX[3,22]`), HTT (`1:EDX[28]`); one vCPU with APIC ID 0 in a single-core
//!   package. A VM with a virtual local APIC ([`GuestPlatform::local_apic`]) sees APIC,
//!   x2APIC, TSC-deadline and ARAT (`6:EAX[2]`, the APIC timer keeps running in deep C-states:
//!   ours always does) and its vCPU's initial APIC ID; others see none of them.
//! - **MONITOR/MWAIT** (`1:ECX[3]`, leaf 5 zero) and MONITORX (`0x8000_0001:ECX[29]`).
//! - **XSAVE and everything built on it** (XSAVE/OSXSAVE/AVX/FMA/F16C, AVX2, AVX-512, AMX, PKU,
//!   CET, leaf 0xD zero): the world switch saves only the FXSAVE area, and the neutral exit
//!   vocabulary has no XSETBV.
//! - **Features whose MSRs the allow-list does not have**: machine check (MCE/MCA), thermal
//!   and power management (leaf 6 zero, EIST, TM, TM2, ACPI), speculation controls
//!   (IA32_SPEC_CTRL and friends: `7:EDX[26..31]`, `0x8000_0008:EBX[12..25]`), TSC_ADJUST,
//!   TSX (HLE/RTM), RDTSCP and RDPID (IA32_TSC_AUX), WAITPKG, FFXSR and AutoIBRS (EFER bits).
//!
//! A guest running under us that checks the hypervisor bit and leaf 0x4000_0000 finds
//! Hermitage; the host's own hypervisor leaves (when we are nested) are never passed on.

use crate::features::Vendor;

/// The first hypervisor leaf; also the maximum hypervisor leaf we report.
pub const HYPERVISOR_LEAF: u32 = 0x4000_0000;
/// The hypervisor signature in EBX, ECX, EDX of leaf 0x4000_0000.
pub const HYPERVISOR_SIGNATURE: [u8; 12] = *b"HermitageHV\0";
/// Highest basic leaf the view reports (if the host has it).
pub const MAX_BASIC_LEAF: u32 = 0x23;
/// Highest extended leaf the view reports (if the host has it).
pub const MAX_EXTENDED_LEAF: u32 = 0x8000_0022;
/// Cache-parameter subleaves of leaf 4 (and so of the table) at most.
const MAX_CACHE_SUBLEAVES: u32 = 8;
/// PMU subleaves of leaf 0x23 kept for the vPMU hook.
const LEAF_0X23_SUBLEAVES: u32 = 4;
/// Entries the table can need: every basic and extended leaf once, plus the extra subleaves
/// of leaves 4, 7 and 0x23.
const MAX_ENTRIES: usize = (MAX_BASIC_LEAF as usize + 1)
    + (MAX_EXTENDED_LEAF - 0x8000_0000) as usize
    + 1
    + (MAX_CACHE_SUBLEAVES as usize - 1)
    + 1
    + (LEAF_0X23_SUBLEAVES as usize - 1);

const fn bits(list: &[u8]) -> u32 {
    let mut m = 0;
    let mut i = 0;
    while i < list.len() {
        m |= 1 << list[i];
        i += 1;
    }
    m
}

/// `CPUID.1:ECX[31]`: running under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX passed through: SSE3 (0), PCLMULQDQ (1), SSSE3 (9), CX16 (13), PCID (17),
/// SSE4.1 (19), SSE4.2 (20), MOVBE (22), POPCNT (23), AES (25), RDRAND (30).
pub const LEAF1_ECX_ALLOW: u32 = bits(&[0, 1, 9, 13, 17, 19, 20, 22, 23, 25, 30]);
/// CPUID.1:EDX passed through: FPU (0), VME (1), DE (2), PSE (3), TSC (4), MSR (5), PAE (6),
/// CX8 (8), SEP (11), MTRR (12), PGE (13), CMOV (15), PAT (16), PSE-36 (17), CLFSH (19),
/// MMX (23), FXSR (24), SSE (25), SSE2 (26), SS (27).
pub const LEAF1_EDX_ALLOW: u32 = bits(&[
    0, 1, 2, 3, 4, 5, 6, 8, 11, 12, 13, 15, 16, 17, 19, 23, 24, 25, 26, 27,
]);
/// CPUID.(7,0):EBX passed through: FSGSBASE (0), BMI1 (3), FDP_EXCPTN_ONLY (6), SMEP (7),
/// BMI2 (8), ERMS (9), INVPCID (10), ZERO_FCS_FDS (13), RDSEED (18), ADX (19), SMAP (20),
/// CLFLUSHOPT (23), CLWB (24), SHA (29).
pub const LEAF7_EBX_ALLOW: u32 = bits(&[0, 3, 6, 7, 8, 9, 10, 13, 18, 19, 20, 23, 24, 29]);
/// CPUID.(7,0):ECX passed through: PREFETCHWT1 (0), UMIP (2), GFNI (8), CLDEMOTE (25),
/// MOVDIRI (27), MOVDIR64B (28).
pub const LEAF7_ECX_ALLOW: u32 = bits(&[0, 2, 8, 25, 27, 28]);
/// CPUID.(7,0):EDX passed through: FSRM (4), MD_CLEAR (10), SERIALIZE (14).
pub const LEAF7_EDX_ALLOW: u32 = bits(&[4, 10, 14]);
/// CPUID.(7,1):EAX passed through: fast zero-length MOVSB (10), fast short STOSB (11), fast
/// short CMPSB/SCASB (12).
pub const LEAF7_1_EAX_ALLOW: u32 = bits(&[10, 11, 12]);
/// CPUID.8000_0001:ECX passed through: LAHF/SAHF (0), ABM/LZCNT (5), SSE4A (6),
/// MisAlignSse (7), 3DNowPrefetch (8).
pub const EXT1_ECX_ALLOW: u32 = bits(&[0, 5, 6, 7, 8]);
/// CPUID.8000_0001:EDX passed through: the AMD copies of allowed leaf-1 bits (0–17, 23, 24),
/// SYSCALL (11), NX (20), MmxExt (22), Page1GB (26), LM (29), 3DNowExt (30), 3DNow (31).
pub const EXT1_EDX_ALLOW: u32 =
    (LEAF1_EDX_ALLOW & (0x3_FFFF | bits(&[23, 24]))) | bits(&[11, 20, 22, 26, 29, 30, 31]);
/// CPUID.8000_0007:EDX passed through: invariant TSC (8).
pub const EXT7_EDX_ALLOW: u32 = 1 << 8;
/// CPUID.8000_0008:EBX passed through: CLZERO (0), RstrFpErrPtrs (2), WBNOINVD (9).
pub const EXT8_EBX_ALLOW: u32 = bits(&[0, 2, 9]);
/// CPUID.8000_0021:EAX passed through: NoNestedDataBp (0), LFENCE always serializing (2),
/// null selector clears base (6).
pub const EXT21_EAX_ALLOW: u32 = bits(&[0, 2, 6]);

/// `CPUID.1:EDX[9]`: on-chip local APIC.
pub const LEAF1_EDX_APIC: u32 = 1 << 9;
/// `CPUID.1:ECX[21]`: x2APIC.
pub const LEAF1_ECX_X2APIC: u32 = 1 << 21;
/// `CPUID.1:ECX[24]`: TSC-deadline mode of the local APIC timer.
pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// `CPUID.6:EAX[2]`: always-running APIC timer (ARAT).
pub const LEAF6_EAX_ARAT: u32 = 1 << 2;

/// What the VM's platform adds to the view: the interrupt controllers a vCPU finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GuestPlatform {
    /// The vCPU has a virtual local APIC (xAPIC and x2APIC, timer with TSC-deadline mode).
    pub local_apic: bool,
    /// The vCPU's initial APIC ID (`1:EBX[31:24]`).
    pub apic_id: u8,
}

impl GuestPlatform {
    /// The platform's changes to one filtered leaf.
    fn apply(&self, leaf: u32, subleaf: u32, regs: CpuidRegs) -> CpuidRegs {
        let [a, b, c, d] = regs;
        match (leaf, subleaf, self.local_apic) {
            (1, _, true) => [
                a,
                (b & 0x00FF_FFFF) | (u32::from(self.apic_id) << 24),
                c | LEAF1_ECX_X2APIC | LEAF1_ECX_TSC_DEADLINE,
                d | LEAF1_EDX_APIC,
            ],
            (6, _, true) => [a | LEAF6_EAX_ARAT, b, c, d],
            _ => regs,
        }
    }
}

/// Leaves whose answer depends on the subleaf (ECX) in the table.
const fn indexed(leaf: u32) -> bool {
    matches!(leaf, 4 | 7 | 0x23)
}

/// Registers as `[eax, ebx, ecx, edx]`.
pub type CpuidRegs = [u32; 4];

/// The vPMU's say in the view: called once per table entry after filtering (PMU hidden), it
/// returns what the guest sees for that leaf. Implementations change only PMU leaves and bits
/// (0xA, 0x23, PDCM in leaf 1, PerfCtrExt* in 0x8000_0001, 0x8000_0022) and return every other
/// entry unchanged. Closures `Fn(leaf, subleaf, regs) -> regs` implement it.
pub trait PmuCpuid {
    /// The guest's registers for `(leaf, subleaf)`, given the PMU-less `filtered` ones.
    fn pmu_cpuid(&self, leaf: u32, subleaf: u32, filtered: CpuidRegs) -> CpuidRegs;

    /// The highest (basic, extended) leaves the PMU needs enumerated, e.g. 0xA for an Intel
    /// PMU, 0x8000_0022 for AMD PerfMonV2; the view raises its maxima to them (within
    /// [`MAX_BASIC_LEAF`] and [`MAX_EXTENDED_LEAF`]) and fills the leaves the host lacks with
    /// zeros before the PMU sees them. Default: none.
    fn min_leaves(&self) -> (u32, u32) {
        (0, 0x8000_0000)
    }
}

impl<F: Fn(u32, u32, CpuidRegs) -> CpuidRegs> PmuCpuid for F {
    fn pmu_cpuid(&self, leaf: u32, subleaf: u32, filtered: CpuidRegs) -> CpuidRegs {
        self(leaf, subleaf, filtered)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Entry {
    leaf: u32,
    /// 0 for leaves that ignore the subleaf.
    subleaf: u32,
    regs: CpuidRegs,
}

/// One VM's CPUID, decided once at creation. Answering is a table lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuidView {
    vendor: Vendor,
    max_basic: u32,
    max_extended: u32,
    /// Sorted by (leaf, subleaf).
    entries: heapless::Vec<Entry, MAX_ENTRIES>,
}

impl CpuidView {
    /// Build the view from the host's CPUID (`host(leaf, subleaf)`), with the vPMU's hook if
    /// there is one.
    pub fn from_host(host: impl Fn(u32, u32) -> CpuidRegs, pmu: Option<&dyn PmuCpuid>) -> Self {
        Self::for_platform(host, pmu, &GuestPlatform::default())
    }

    /// [`from_host`](Self::from_host) for a VM whose platform is `platform` (interrupt
    /// controllers).
    pub fn for_platform(
        host: impl Fn(u32, u32) -> CpuidRegs,
        pmu: Option<&dyn PmuCpuid>,
        platform: &GuestPlatform,
    ) -> Self {
        let leaf0 = host(0, 0);
        let vendor = vendor_of(leaf0);
        let host_basic = leaf0[0].min(MAX_BASIC_LEAF);
        let host_ext = host(0x8000_0000, 0)[0];
        let host_extended = if (0x8000_0001..=0x8000_FFFF).contains(&host_ext) {
            host_ext.min(MAX_EXTENDED_LEAF)
        } else {
            0x8000_0000
        };
        let (pmu_basic, pmu_extended) = pmu.map_or((0, 0x8000_0000), |p| p.min_leaves());
        let max_basic = host_basic.max(pmu_basic.min(MAX_BASIC_LEAF));
        let max_extended = host_extended.max(pmu_extended.min(MAX_EXTENDED_LEAF));
        // A leaf above the host's own maximum reads as zeros (the host would answer it with
        // its highest basic leaf, SDM vol. 2A CPUID), for the PMU to fill in.
        let host = |leaf: u32, subleaf: u32| {
            let beyond = if leaf >= 0x8000_0000 {
                leaf > host_extended
            } else {
                leaf > host_basic
            };
            if beyond { [0; 4] } else { host(leaf, subleaf) }
        };
        let mut view = CpuidView {
            vendor,
            max_basic,
            max_extended,
            entries: heapless::Vec::new(),
        };
        let add = |leaf: u32, subleaf: u32, view: &mut CpuidView| {
            let mut regs = filter(leaf, subleaf, host(leaf, subleaf), max_basic, max_extended);
            regs = platform.apply(leaf, subleaf, regs);
            if let Some(pmu) = pmu {
                regs = pmu.pmu_cpuid(leaf, subleaf, regs);
            }
            // Cannot fail: MAX_ENTRIES counts every entry added below.
            let pushed = view.entries.push(Entry {
                leaf,
                subleaf,
                regs,
            });
            debug_assert!(pushed.is_ok(), "CPUID table full");
        };
        for leaf in 0..=max_basic {
            match leaf {
                4 => {
                    for sub in 0..MAX_CACHE_SUBLEAVES {
                        // Cache type 0 (`EAX[4:0]`) ends the list.
                        if host(4, sub)[0] & 0x1F == 0 {
                            break;
                        }
                        add(4, sub, &mut view);
                    }
                }
                7 => {
                    add(7, 0, &mut view);
                    add(7, 1, &mut view);
                }
                0x23 => {
                    for sub in 0..LEAF_0X23_SUBLEAVES {
                        add(0x23, sub, &mut view);
                    }
                }
                _ => add(leaf, 0, &mut view),
            }
        }
        for leaf in 0x8000_0000..=max_extended {
            add(leaf, 0, &mut view);
        }
        view
    }

    /// The vendor the guest sees (the host's).
    pub const fn vendor(&self) -> Vendor {
        self.vendor
    }

    /// The highest basic leaf reported in leaf 0.
    pub const fn max_basic(&self) -> u32 {
        self.max_basic
    }

    /// The highest extended leaf reported in leaf 0x8000_0000.
    pub const fn max_extended(&self) -> u32 {
        self.max_extended
    }

    /// What CPUID returns to the guest for EAX = `leaf`, ECX = `subleaf`.
    pub fn get(&self, leaf: u32, subleaf: u32) -> CpuidRegs {
        if leaf == HYPERVISOR_LEAF {
            let s = &HYPERVISOR_SIGNATURE;
            let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
            return [HYPERVISOR_LEAF, w(0), w(4), w(8)];
        }
        let in_range = leaf <= self.max_basic || (0x8000_0000..=self.max_extended).contains(&leaf);
        if in_range {
            self.lookup(leaf, subleaf)
        } else if self.vendor == Vendor::Intel {
            self.lookup(self.max_basic, subleaf)
        } else {
            [0; 4]
        }
    }

    fn lookup(&self, leaf: u32, subleaf: u32) -> CpuidRegs {
        let key = (leaf, if indexed(leaf) { subleaf } else { 0 });
        self.entries
            .binary_search_by_key(&key, |e| (e.leaf, e.subleaf))
            .map_or([0; 4], |i| self.entries[i].regs)
    }
}

fn vendor_of(leaf0: CpuidRegs) -> Vendor {
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&leaf0[1].to_le_bytes());
    id[4..8].copy_from_slice(&leaf0[3].to_le_bytes());
    id[8..].copy_from_slice(&leaf0[2].to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// The guest's registers for one leaf, from the host's (PMU hidden; the hook comes after).
fn filter(leaf: u32, subleaf: u32, h: CpuidRegs, max_basic: u32, max_extended: u32) -> CpuidRegs {
    let [a, b, c, d] = h;
    match (leaf, subleaf) {
        (0, _) => [max_basic, b, c, d],
        // EBX: brand index and CLFLUSH size kept; one logical processor (23:16), initial
        // APIC ID 0 (31:24).
        (1, _) => [
            a,
            (b & 0xFFFF) | (1 << 16),
            (c & LEAF1_ECX_ALLOW) | LEAF1_ECX_HYPERVISOR,
            d & LEAF1_EDX_ALLOW,
        ],
        (2 | 0x15 | 0x16, _) => h,
        // `EAX[31:26]` cores per package - 1, `EAX[25:14]` threads sharing the cache - 1: zero for
        // one vCPU.
        (4, _) => [a & 0x3FFF, b, c, d],
        (7, 0) => [
            a.min(1),
            b & LEAF7_EBX_ALLOW,
            c & LEAF7_ECX_ALLOW,
            d & LEAF7_EDX_ALLOW,
        ],
        (7, 1) => [a & LEAF7_1_EAX_ALLOW, 0, 0, 0],
        (0x8000_0000, _) => [max_extended, b, c, d],
        (0x8000_0001, _) => [a, b, c & EXT1_ECX_ALLOW, d & EXT1_EDX_ALLOW],
        (0x8000_0002..=0x8000_0006 | 0x8000_0019 | 0x8000_001A, _) => h,
        (0x8000_0007, _) => [0, 0, 0, d & EXT7_EDX_ALLOW],
        (0x8000_0008, _) => [a & 0xFFFF, b & EXT8_EBX_ALLOW, 0, 0],
        (0x8000_0021, _) => [a & EXT21_EAX_ALLOW, 0, 0, 0],
        _ => [0; 4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Table = &'static [(u32, u32, CpuidRegs)];

    /// Recorded on the build host: an Intel Xeon (family 6 model 0x8F, Sapphire Rapids class)
    /// as a KVM guest, so it already shows the hypervisor bit and KVM's 0x4000_0000 leaf.
    /// Leaves and subleaves that read as all zero are left out.
    static INTEL_SPR_KVM: Table = &[
        (
            0x00000000,
            0,
            [0x00000024, 0x756e6547, 0x6c65746e, 0x49656e69],
        ),
        (
            0x00000001,
            0,
            [0x000a0671, 0x00020800, 0xfffa3203, 0x1f8bfbff],
        ),
        (
            0x00000002,
            0,
            [0x00feff01, 0x000000f0, 0x00000000, 0x00000000],
        ),
        (
            0x00000004,
            0,
            [0x04000121, 0x02c0003f, 0x0000003f, 0x00000000],
        ),
        (
            0x00000004,
            1,
            [0x04000122, 0x03c0003f, 0x0000003f, 0x00000000],
        ),
        (
            0x00000004,
            2,
            [0x04000143, 0x03c0003f, 0x000007ff, 0x00000000],
        ),
        (
            0x00000004,
            3,
            [0x04004163, 0x03c0003f, 0x00077fff, 0x00000000],
        ),
        (
            0x00000006,
            0,
            [0x00000004, 0x00000000, 0x00000000, 0x00000000],
        ),
        (
            0x00000007,
            0,
            [0x00000002, 0xf1bf2ffb, 0x1a415f46, 0x23c14010],
        ),
        (
            0x00000007,
            1,
            [0x00001c30, 0x00000000, 0x00000000, 0x00084000],
        ),
        (
            0x00000007,
            2,
            [0x00000000, 0x00000000, 0x00000000, 0x00000001],
        ),
        (
            0x0000000b,
            0,
            [0x00000000, 0x00000001, 0x00000100, 0x00000000],
        ),
        (
            0x0000000b,
            1,
            [0x00000005, 0x00000002, 0x00000201, 0x00000000],
        ),
        (
            0x0000000b,
            2,
            [0x00000000, 0x00000000, 0x00000002, 0x00000000],
        ),
        (
            0x0000000b,
            3,
            [0x00000000, 0x00000000, 0x00000003, 0x00000000],
        ),
        (
            0x0000000b,
            4,
            [0x00000000, 0x00000000, 0x00000004, 0x00000000],
        ),
        (
            0x0000000b,
            5,
            [0x00000000, 0x00000000, 0x00000005, 0x00000000],
        ),
        (
            0x0000000b,
            6,
            [0x00000000, 0x00000000, 0x00000006, 0x00000000],
        ),
        (
            0x0000000b,
            7,
            [0x00000000, 0x00000000, 0x00000007, 0x00000000],
        ),
        (
            0x0000000d,
            0,
            [0x000600e7, 0x00002b00, 0x00002b00, 0x00000000],
        ),
        (
            0x0000000d,
            1,
            [0x0000001f, 0x000029c0, 0x00000000, 0x00000000],
        ),
        (
            0x0000000d,
            2,
            [0x00000100, 0x00000240, 0x00000000, 0x00000000],
        ),
        (
            0x0000000d,
            5,
            [0x00000040, 0x00000440, 0x00000000, 0x00000000],
        ),
        (
            0x0000000d,
            6,
            [0x00000200, 0x00000480, 0x00000000, 0x00000000],
        ),
        (
            0x0000000d,
            7,
            [0x00000400, 0x00000680, 0x00000000, 0x00000000],
        ),
        (
            0x0000000d,
            17,
            [0x00000040, 0x00000ac0, 0x00000002, 0x00000000],
        ),
        (
            0x0000000d,
            18,
            [0x00002000, 0x00000b00, 0x00000006, 0x00000000],
        ),
        (
            0x0000001d,
            0,
            [0x00000001, 0x00000000, 0x00000000, 0x00000000],
        ),
        (
            0x0000001d,
            1,
            [0x04002000, 0x00080040, 0x00000010, 0x00000000],
        ),
        (
            0x0000001e,
            0,
            [0x00000000, 0x00004010, 0x00000000, 0x00000000],
        ),
        (
            0x0000001f,
            0,
            [0x00000000, 0x00000001, 0x00000100, 0x00000000],
        ),
        (
            0x0000001f,
            1,
            [0x00000005, 0x00000002, 0x00000201, 0x00000000],
        ),
        (
            0x0000001f,
            2,
            [0x00000000, 0x00000000, 0x00000002, 0x00000000],
        ),
        (
            0x0000001f,
            3,
            [0x00000000, 0x00000000, 0x00000003, 0x00000000],
        ),
        (
            0x0000001f,
            4,
            [0x00000000, 0x00000000, 0x00000004, 0x00000000],
        ),
        (
            0x0000001f,
            5,
            [0x00000000, 0x00000000, 0x00000005, 0x00000000],
        ),
        (
            0x0000001f,
            6,
            [0x00000000, 0x00000000, 0x00000006, 0x00000000],
        ),
        (
            0x0000001f,
            7,
            [0x00000000, 0x00000000, 0x00000007, 0x00000000],
        ),
        (
            0x00000024,
            0,
            [0x00000000, 0x00070001, 0x00000000, 0x00000000],
        ),
        (
            0x80000000,
            0,
            [0x80000008, 0x00000000, 0x00000000, 0x00000000],
        ),
        (
            0x80000001,
            0,
            [0x00000000, 0x00000000, 0x00000121, 0x2c100800],
        ),
        (
            0x80000002,
            0,
            [0x65746e49, 0x2952286c, 0x6f655820, 0x2952286e],
        ),
        (
            0x80000003,
            0,
            [0x6f725020, 0x73736563, 0x0000726f, 0x00000000],
        ),
        (
            0x80000006,
            0,
            [0x00000000, 0x00000000, 0x08007040, 0x00000000],
        ),
        (
            0x80000007,
            0,
            [0x00000000, 0x00000000, 0x00000000, 0x00000100],
        ),
        (
            0x80000008,
            0,
            [0x00303930, 0x00000000, 0x00000000, 0x00000000],
        ),
        (
            0x40000000,
            0,
            [0x40000001, 0x4b4d564b, 0x564b4d56, 0x0000004d],
        ),
    ];

    /// An AMD EPYC (Zen 3, family 0x19) as the host: written from the AMD documentation for
    /// the features these tests need, with SVM, PMU extensions (PerfCtrExtCore, PerfMonV2),
    /// TopologyExtensions, x2APIC, MONITOR, XSAVE/AVX2 and the speculation-control bits set.
    static AMD_EPYC: Table = &[
        (0, 0, [0x10, 0x6874_7541, 0x444D_4163, 0x6974_6E65]),
        (1, 0, [0x00A0_0F11, 0x0A10_0800, 0xFEFA_320B, 0x178B_FBFF]),
        (5, 0, [0x40, 0x40, 0x3, 0x11]),
        (6, 0, [0x4, 0, 0x1, 0]),
        (7, 0, [0, 0x219C_97A9, 0x0040_069C, 0x0000_0010]),
        (0xD, 0, [0x207, 0x340, 0x988, 0]),
        (0xD, 1, [0xF, 0x340, 0, 0]),
        (
            0x8000_0000,
            0,
            [0x8000_0022, 0x6874_7541, 0x444D_4163, 0x6974_6E65],
        ),
        (
            0x8000_0001,
            0,
            [0x00A0_0F11, 0x4000_0000, 0x75C2_37FF, 0x2FD3_FBFF],
        ),
        (
            0x8000_0002,
            0,
            [0x2044_4D41, 0x43595045, 0x3337_2020, 0x2033_3331],
        ),
        (0x8000_0007, 0, [0, 0x3B, 0, 0x6799]),
        (
            0x8000_0008,
            0,
            [0x0000_3030, 0x111E_F657, 0x0000_507F, 0x0001_0007],
        ),
        (0x8000_000A, 0, [1, 0x8000, 0, 0x119B_BCFF]),
        (0x8000_001D, 0, [0x121, 0x1C0_003F, 0x3F, 0]),
        (0x8000_001E, 0, [0x2, 0x101, 0x0, 0]),
        (0x8000_001F, 0, [0x1_BFFF, 0x4177, 0x1FD, 1]),
        (0x8000_0021, 0, [0x0000_0145, 0, 0, 0]),
        (0x8000_0022, 0, [0x7, 0x0004_3106, 0, 0]),
    ];

    fn host(table: Table) -> impl Fn(u32, u32) -> CpuidRegs {
        move |leaf, sub| {
            table
                .iter()
                .find(|e| e.0 == leaf && e.1 == sub)
                .map_or([0; 4], |e| e.2)
        }
    }

    fn raw(table: Table, leaf: u32, sub: u32) -> CpuidRegs {
        host(table)(leaf, sub)
    }

    fn view(table: Table) -> CpuidView {
        CpuidView::from_host(host(table), None)
    }

    const fn bit(r: u32, n: u32) -> bool {
        r & (1 << n) != 0
    }

    /// A VM with a local APIC sees APIC, x2APIC, TSC-deadline, ARAT and its APIC ID, on a host
    /// that lacks some of them too (QEMU TCG has no TSC-deadline: the virtual APIC does).
    #[test]
    fn local_apic_platform() {
        for table in [INTEL_SPR_KVM, AMD_EPYC] {
            let plain = view(table);
            let p = GuestPlatform {
                local_apic: true,
                apic_id: 3,
            };
            let apic = CpuidView::for_platform(host(table), None, &p);
            let (l1, a1) = (plain.get(1, 0), apic.get(1, 0));
            assert!(!bit(l1[3], 9) && bit(a1[3], 9), "APIC");
            assert!(!bit(l1[2], 21) && bit(a1[2], 21), "x2APIC");
            assert!(!bit(l1[2], 24) && bit(a1[2], 24), "TSC-deadline");
            assert_eq!(l1[1] >> 24, 0);
            assert_eq!(a1[1] >> 24, 3, "initial APIC ID");
            assert_eq!(a1[1] & 0x00FF_FFFF, l1[1] & 0x00FF_FFFF);
            assert!(bit(a1[2], 31), "still the hypervisor bit");
            assert_eq!(plain.get(6, 0)[0] & LEAF6_EAX_ARAT, 0);
            assert_ne!(apic.get(6, 0)[0] & LEAF6_EAX_ARAT, 0, "ARAT");
            // Nothing else changes.
            for leaf in [0, 7, 0x8000_0001, 0x8000_0008] {
                assert_eq!(plain.get(leaf, 0), apic.get(leaf, 0), "leaf {leaf:#x}");
            }
        }
    }

    #[test]
    fn recorded_hosts_have_what_we_hide() {
        // Make sure the tests below hide something real.
        let i = raw(INTEL_SPR_KVM, 1, 0);
        assert!(bit(i[2], 21) && bit(i[2], 26) && bit(i[2], 28) && bit(i[3], 9));
        let a = raw(AMD_EPYC, 0x8000_0001, 0);
        assert!(bit(a[2], 2) && bit(a[2], 23) && bit(a[2], 22));
        assert!(bit(raw(AMD_EPYC, 1, 0)[2], 3));
    }

    #[test]
    fn vendor_and_limits() {
        let v = view(INTEL_SPR_KVM);
        assert_eq!(v.vendor(), Vendor::Intel);
        // The host reports 0x24: capped.
        assert_eq!(v.get(0, 0), [0x23, 0x756E_6547, 0x6C65_746E, 0x4965_6E69]);
        assert_eq!(v.max_basic(), 0x23);
        assert_eq!(v.get(0x8000_0000, 0)[0], 0x8000_0008);
        let a = view(AMD_EPYC);
        assert_eq!(a.vendor(), Vendor::Amd);
        assert_eq!(a.get(0, 0), raw(AMD_EPYC, 0, 0));
        assert_eq!(a.max_extended(), 0x8000_0022);
        assert_eq!(a.get(0x8000_0000, 0), raw(AMD_EPYC, 0x8000_0000, 0));
    }

    #[test]
    fn leaf1_one_cpu_hypervisor_and_hidden_features() {
        for table in [INTEL_SPR_KVM, AMD_EPYC] {
            let h = raw(table, 1, 0);
            let g = view(table).get(1, 0);
            assert_eq!(g[0], h[0], "signature kept");
            assert_eq!(g[1] >> 24, 0, "initial APIC ID 0");
            assert_eq!((g[1] >> 16) & 0xFF, 1, "one logical processor");
            assert_eq!(
                g[1] & 0xFFFF,
                h[1] & 0xFFFF,
                "brand index, CLFLUSH size kept"
            );
            assert!(bit(g[2], 31), "hypervisor bit");
            for (n, what) in [
                (3, "MONITOR"),
                (5, "VMX"),
                (6, "SMX"),
                (15, "PDCM"),
                (21, "x2APIC"),
                (24, "TSC-deadline"),
                (26, "XSAVE"),
                (27, "OSXSAVE"),
                (28, "AVX"),
            ] {
                assert!(!bit(g[2], n), "1:ECX {what}");
            }
            for (n, what) in [
                (7, "MCE"),
                (9, "APIC"),
                (14, "MCA"),
                (21, "DS"),
                (28, "HTT"),
            ] {
                assert!(!bit(g[3], n), "1:EDX {what}");
            }
            // What is allowed and present stays.
            assert_eq!(g[2] & LEAF1_ECX_ALLOW, h[2] & LEAF1_ECX_ALLOW);
            assert_eq!(g[3], h[3] & LEAF1_EDX_ALLOW);
            assert!(bit(g[3], 25) && bit(g[3], 26), "SSE, SSE2");
        }
        // The Intel KVM host has VMX hidden from us already; check with it set.
        let with_vmx = CpuidView::from_host(
            |l, s| {
                let mut r = host(INTEL_SPR_KVM)(l, s);
                if l == 1 {
                    r[2] |= 1 << 5;
                }
                r
            },
            None,
        );
        assert!(!bit(with_vmx.get(1, 0)[2], 5));
    }

    #[test]
    fn svm_pmu_and_topology_hidden_on_amd() {
        let v = view(AMD_EPYC);
        let e = v.get(0x8000_0001, 0);
        for (n, what) in [
            (2, "SVM"),
            (3, "ExtApicSpace"),
            (22, "TopologyExtensions"),
            (23, "PerfCtrExtCore"),
            (24, "PerfCtrExtNB"),
            (28, "PerfCtrExtLLC"),
            (29, "MONITORX"),
        ] {
            assert!(!bit(e[2], n), "0x8000_0001:ECX {what}");
        }
        assert!(!bit(e[3], 27), "RDTSCP");
        assert!(
            bit(e[3], 29) && bit(e[3], 20) && bit(e[3], 11),
            "LM, NX, SYSCALL"
        );
        for leaf in [
            0x8000_000A,
            0x8000_001D,
            0x8000_001E,
            0x8000_001F,
            0x8000_0022,
        ] {
            assert_eq!(v.get(leaf, 0), [0; 4], "{leaf:#x}");
        }
        assert_eq!(
            v.get(0x8000_0008, 0),
            [0x3030, 0x205, 0, 0],
            "CLZERO, RstrFpErrPtrs, WBNOINVD; no IBPB/IBRS/STIBP/SSBD"
        );
        assert_eq!(v.get(0x8000_0007, 0), [0, 0, 0, 0x100]);
        assert_eq!(v.get(0x8000_0021, 0), [0x45, 0, 0, 0]);
        assert_eq!(v.get(0x8000_0002, 0), raw(AMD_EPYC, 0x8000_0002, 0));
        assert_eq!(v.get(5, 0), [0; 4], "MONITOR leaf");
        assert_eq!(v.get(6, 0), [0; 4], "power management leaf");
    }

    #[test]
    fn pmu_xsave_and_topology_leaves_are_zero_on_intel() {
        let v = view(INTEL_SPR_KVM);
        for (leaf, sub) in [
            (0xA, 0),
            (0xB, 0),
            (0xB, 1),
            (0xD, 0),
            (0xD, 1),
            (0x1D, 1),
            (0x1E, 0),
            (0x1F, 0),
            (0x23, 0),
            (6, 0),
        ] {
            assert_eq!(v.get(leaf, sub), [0; 4], "({leaf:#x}, {sub})");
        }
    }

    #[test]
    fn leaf7_allow_list() {
        let v = view(INTEL_SPR_KVM);
        let h = raw(INTEL_SPR_KVM, 7, 0);
        let g = v.get(7, 0);
        assert_eq!(
            g[0], 1,
            "subleaf 1 exists, subleaf 2 (spec-ctrl bits) does not"
        );
        assert_eq!(g[1], h[1] & LEAF7_EBX_ALLOW);
        for (n, what) in [
            (5, "AVX2"),
            (16, "AVX512F"),
            (11, "RTM"),
            (4, "HLE"),
            (1, "TSC_ADJUST"),
        ] {
            assert!(!bit(g[1], n), "7:EBX {what}");
        }
        assert!(
            bit(g[1], 0) && bit(g[1], 7) && bit(g[1], 20),
            "FSGSBASE, SMEP, SMAP"
        );
        for (n, what) in [
            (3, "PKU"),
            (4, "OSPKE"),
            (5, "WAITPKG"),
            (22, "RDPID"),
            (7, "CET_SS"),
        ] {
            assert!(!bit(g[2], n), "7:ECX {what}");
        }
        for n in [22, 24, 25, 26, 27, 29, 31] {
            assert!(!bit(g[3], n), "7:EDX bit {n} (AMX, spec ctrl)");
        }
        assert_eq!(
            v.get(7, 1),
            [raw(INTEL_SPR_KVM, 7, 1)[0] & LEAF7_1_EAX_ALLOW, 0, 0, 0]
        );
        assert_eq!(v.get(7, 2), [0; 4]);
    }

    #[test]
    fn cache_leaf_keeps_geometry_drops_sharing() {
        let v = view(INTEL_SPR_KVM);
        for sub in 0..4 {
            let h = raw(INTEL_SPR_KVM, 4, sub);
            let g = v.get(4, sub);
            assert_eq!(g[0] & 0x3FFF, h[0] & 0x3FFF);
            assert_eq!(g[0] >> 14, 0);
            assert_eq!(g[1..], h[1..]);
        }
        assert_eq!(v.get(4, 4), [0; 4], "terminator");
    }

    #[test]
    fn hypervisor_leaf_names_us() {
        for table in [INTEL_SPR_KVM, AMD_EPYC] {
            let r = view(table).get(0x4000_0000, 0);
            assert_eq!(r[0], 0x4000_0000);
            let mut sig = [0u8; 12];
            sig[..4].copy_from_slice(&r[1].to_le_bytes());
            sig[4..8].copy_from_slice(&r[2].to_le_bytes());
            sig[8..].copy_from_slice(&r[3].to_le_bytes());
            assert_eq!(&sig, b"HermitageHV\0");
        }
    }

    #[test]
    fn out_of_range_leaves_follow_the_vendor() {
        let i = view(INTEL_SPR_KVM);
        let top = i.get(0x23, 0);
        for leaf in [
            0x24,
            0x4000_0001,
            0x4000_0100,
            0x8000_0009,
            0x8FFF_FFFF,
            0xC000_0000,
        ] {
            assert_eq!(i.get(leaf, 0), top, "{leaf:#x}");
        }
        let a = view(AMD_EPYC);
        for leaf in [0x11, 0x4000_0001, 0x8000_0023, 0xFFFF_FFFF] {
            assert_eq!(a.get(leaf, 0), [0; 4], "{leaf:#x}");
        }
    }

    #[test]
    fn nothing_appears_that_the_host_lacks() {
        for table in [INTEL_SPR_KVM, AMD_EPYC] {
            let v = view(table);
            for (leaf, sub) in [(1, 0), (7, 0), (7, 1), (0x8000_0001, 0), (0x8000_0007, 0)] {
                let h = raw(table, leaf, sub);
                let g = v.get(leaf, sub);
                let extra = if leaf == 1 { LEAF1_ECX_HYPERVISOR } else { 0 };
                assert_eq!(g[2] & !h[2] & !extra, 0, "({leaf:#x},{sub}) ECX");
                assert_eq!(g[3] & !h[3], 0, "({leaf:#x},{sub}) EDX");
                if leaf != 1 {
                    assert_eq!(g[1] & !h[1], 0, "({leaf:#x},{sub}) EBX");
                }
            }
        }
    }

    #[test]
    fn subleaf_is_ignored_where_it_does_not_matter() {
        let v = view(AMD_EPYC);
        assert_eq!(v.get(1, 5), v.get(1, 0));
        assert_eq!(v.get(0x8000_0001, 9), v.get(0x8000_0001, 0));
    }

    #[test]
    fn pmu_hook_supplies_its_leaves() {
        // A vPMU exposing architectural PMU v2 on Intel, PerfMonV2 on AMD, and PDCM.
        let hook = |leaf: u32, sub: u32, mut r: CpuidRegs| -> CpuidRegs {
            match (leaf, sub) {
                (0xA, 0) => [0x0830_0402, 0, 0, 0x0603],
                (1, 0) => {
                    r[2] |= 1 << 15;
                    r
                }
                (0x8000_0001, 0) => {
                    r[2] |= 1 << 23;
                    r
                }
                (0x8000_0022, 0) => [1, 6, 0, 0],
                (0x23, 1) => [0xFF, 0, 0, 0],
                _ => r,
            }
        };
        let i = CpuidView::from_host(host(INTEL_SPR_KVM), Some(&hook));
        assert_eq!(i.get(0xA, 0), [0x0830_0402, 0, 0, 0x0603]);
        assert!(bit(i.get(1, 0)[2], 15));
        assert_eq!(i.get(0x23, 1), [0xFF, 0, 0, 0]);
        assert_eq!(i.get(0x23, 0), [0; 4]);
        // Everything else is as without the hook.
        let plain = view(INTEL_SPR_KVM);
        assert_eq!(i.get(7, 0), plain.get(7, 0));
        let a = CpuidView::from_host(host(AMD_EPYC), Some(&hook));
        assert_eq!(a.get(0x8000_0022, 0), [1, 6, 0, 0]);
        assert!(bit(a.get(0x8000_0001, 0)[2], 23));
    }

    #[test]
    fn largest_host_fits_the_table() {
        // Every leaf present, eight cache levels: the table must hold it all (a push that
        // did not fit would trip the debug assertion).
        let v = CpuidView::from_host(
            |leaf, sub| match leaf {
                0 => [0xFFFF, 0x756E_6547, 0x6C65_746E, 0x4965_6E69],
                0x8000_0000 => [0x8000_FFFF, 0, 0, 0],
                4 => [1 + sub, 0, 0, 0],
                _ => [leaf, sub, 0x15, 0x16],
            },
            None,
        );
        assert_eq!((v.max_basic(), v.max_extended()), (0x23, 0x8000_0022));
        assert_eq!(v.get(4, 7), [8, 0, 0, 0]);
        assert_eq!(v.get(0x8000_0022, 0), [0; 4]);
        assert_eq!(v.get(0x8000_0019, 0), [0x8000_0019, 0, 0x15, 0x16]);
    }

    #[test]
    fn tiny_and_odd_hosts() {
        // A CPU with max basic leaf 1 and no extended leaves.
        let v = CpuidView::from_host(
            |leaf, _| match leaf {
                0 => [1, 0x756E_6547, 0x6C65_746E, 0x4965_6E69],
                1 => [0x633, 0, 0, 0x0781_ABFF],
                _ => [0; 4],
            },
            None,
        );
        assert_eq!((v.max_basic(), v.max_extended()), (1, 0x8000_0000));
        assert_eq!(v.get(0x8000_0000, 0)[0], 0x8000_0000);
        assert_eq!(
            v.get(7, 0),
            v.get(1, 0),
            "above max: Intel repeats the top leaf"
        );
        // An unknown vendor behaves like AMD for out-of-range leaves.
        let o = CpuidView::from_host(|_, _| [2, 1, 2, 3], None);
        assert_eq!(o.vendor(), Vendor::Other);
        assert_eq!(o.get(5, 0), [0; 4]);
    }
}
