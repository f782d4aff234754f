//! Capability-MSR values recorded from real CPUs and derived for Bochs' CPU models, for tests.
//!
//! Real CPUs: the values of the VirtualBox CPU database (`src/VBox/VMM/VMMR3/cpus/*.h`, dumps
//! taken with VBoxCpuReport on the named processor) and, for Skylake-X, the dump of an
//! i7-7800X quoted in a comment of Bochs' `cpu/cpudb/intel/corei7_skylake-x.cc`. Where a
//! dump does not contain IA32_FEATURE_CONTROL or IA32_VMX_VMFUNC, the value is marked
//! "assumed".
//!
//! Bochs models: Bochs computes its MSRs instead of storing them. The values below are derived
//! by hand from the Bochs source of the 2.7 era (what Debian's `bochs` 2.7 runs):
//!
//! - `cpu/vmx.h`: IA32_VMX_BASIC = revision 0x2B (`BX_VMX_VMCS_REVISION_ID`) | size 4096 << 32
//!   | WB << 50 | bit 54 | bit 55 (built with `--enable-vmx=2`); the must-be-1 (low) halves
//!   pin 0x16, proc 0x0401_E172 (true: 0x0400_6172), exit 0x0003_6DFF (true: 0x0003_6DFB),
//!   entry 0x11FF (true: 0x11FB), secondary 0; each high half = low half | supported bits;
//!   CR0 fixed 0x8000_0021 / 0xFFFF_FFFF; CR4 fixed0 0x2000, fixed1 = `cr4_suppmask`;
//!   IA32_VMX_MISC = LMA store (bit 5) | HLT/shutdown/wait-for-SIPI (bits 8:6) | 4 CR3 targets
//!   | VMWRITE-any (bit 29, with VMCS shadowing) | zero-length injection (bit 30, if the model
//!   has `BX_VMX_SW_INTERRUPT_INJECTION_ILEN_0`).
//! - `cpu/vmx.cc` `init_pin_based_vmexec_ctrls`, `init_primary_proc_based_vmexec_ctrls`,
//!   `init_secondary_proc_based_vmexec_ctrls`, `init_vmexit_ctrls`, `init_vmentry_ctrls` and
//!   `init_ept_vpid_capabilities` (0x0611_4141 | 1 GiB pages | A/D, VPID: 0xF01 << 32),
//!   evaluated for each model's `get_vmx_extensions_bitmask()` and ISA extensions
//!   (`cpu/cpudb/intel/corei7_haswell_4770.cc`, `corei7_skylake-x.cc`).
//! - `cpu/crregs.cc` `get_cr4_allow_mask`: VME..OSXMMEXCPT (0x7FF), VMXE, FSGSBASE, PCIDE,
//!   OSXSAVE, SMEP, plus SMAP on Skylake-X (which gives the real i7-6700K's 0x3727FF).
//!
//! Assumptions: MONITOR/MWAIT support compiled in (primary bits 10 and 29); the
//! "save IA32_PERF_GLOBAL_CTL" exit control (bit 30) is advertised because the models list
//! `BX_VMX_PERF_GLOBAL_CTRL`, like "load IA32_PERF_GLOBAL_CTRL" (exit bit 12, entry bit 13),
//! whose MSR Bochs does not implement (PLATFORM.md): [`crate::controls::VmxConfig::derive`]
//! never asks for any of them. The kernel integration should print the MSRs it reads under
//! Bochs once, to confirm these values.
#![forbid(unsafe_code)]

use crate::caps::CapMsrs;

/// A named set of capability MSRs.
#[derive(Debug)]
pub struct Recorded {
    /// What was measured (CPU model or emulator model).
    pub name: &'static str,
    /// The MSR values.
    pub msrs: CapMsrs,
}

const CR0_FIXED0: u64 = 0x8000_0021;
const CR0_FIXED1: u64 = 0xFFFF_FFFF;
const CR4_FIXED0: u64 = 0x2000;

/// Intel Core i7-6700K (Skylake client), VirtualBox CPU database.
pub static SKYLAKE_I7_6700K: Recorded = Recorded {
    name: "Intel Core i7-6700K (Skylake)",
    msrs: CapMsrs {
        feature_control: 0x5, // assumed: locked with VMX outside SMX (firmware VT-x on)
        basic: 0x00DA_0400_0000_0004,
        pinbased: 0x0000_007F_0000_0016,
        procbased: 0xFFF9_FFFE_0401_E172,
        exit: 0x01FF_FFFF_0003_6DFF,
        entry: 0x0003_FFFF_0000_11FF,
        misc: 0x7004_C1E7,
        cr0_fixed0: CR0_FIXED0,
        cr0_fixed1: CR0_FIXED1,
        cr4_fixed0: CR4_FIXED0,
        cr4_fixed1: 0x0037_27FF,
        procbased2: 0x001F_FCFF_0000_0000,
        ept_vpid_cap: 0x0000_0F01_0633_4141,
        true_pinbased: 0x0000_007F_0000_0016,
        true_procbased: 0xFFF9_FFFE_0400_6172,
        true_exit: 0x01FF_FFFF_0003_6DFB,
        true_entry: 0x0003_FFFF_0000_11FB,
        vmfunc: 0x1,
    },
};

/// Intel Core i7-7800X (Skylake-X, server core), as quoted in Bochs' corei7_skylake-x.cc.
pub static SKYLAKE_X_I7_7800X: Recorded = Recorded {
    name: "Intel Core i7-7800X (Skylake-X)",
    msrs: CapMsrs {
        feature_control: 0x5, // assumed
        basic: 0x00DA_0400_0000_0004,
        pinbased: 0x0000_00FF_0000_0016,
        procbased: 0xFFF9_FFFE_0401_E172,
        exit: 0x01FF_FFFF_0003_6DFF,
        entry: 0x0003_FFFF_0000_11FF,
        misc: 0x7004_C1E7,
        cr0_fixed0: CR0_FIXED0,
        cr0_fixed1: CR0_FIXED1,
        cr4_fixed0: CR4_FIXED0,
        cr4_fixed1: 0x0037_27FF,
        procbased2: 0x025D_3FFF_0000_0000,
        ept_vpid_cap: 0x0000_0F01_0673_4141,
        true_pinbased: 0x0000_00FF_0000_0016,
        true_procbased: 0xFFF9_FFFE_0400_6172,
        true_exit: 0x01FF_FFFF_0003_6DFB,
        true_entry: 0x0003_FFFF_0000_11FB,
        vmfunc: 0x1, // assumed (EPTP switching; the quoted dump stops at 0x490)
    },
};

/// Intel Core i7-5600U (Broadwell client), VirtualBox CPU database.
pub static BROADWELL_I7_5600U: Recorded = Recorded {
    name: "Intel Core i7-5600U (Broadwell)",
    msrs: CapMsrs {
        feature_control: 0x5,
        basic: 0x00DA_0400_0000_0012,
        pinbased: 0x0000_007F_0000_0016,
        procbased: 0xFFF9_FFFE_0401_E172,
        exit: 0x007F_FFFF_0003_6DFF,
        entry: 0x0000_FFFF_0000_11FF,
        misc: 0x3004_81E5,
        cr0_fixed0: CR0_FIXED0,
        cr0_fixed1: CR0_FIXED1,
        cr4_fixed0: CR4_FIXED0,
        cr4_fixed1: 0x0037_67FF,
        procbased2: 0x0005_7CFF_0000_0000,
        ept_vpid_cap: 0x0000_0F01_0633_4141,
        true_pinbased: 0x0000_007F_0000_0016,
        true_procbased: 0xFFF9_FFFE_0400_6172,
        true_exit: 0x007F_FFFF_0003_6DFB,
        true_entry: 0x0000_FFFF_0000_11FB,
        vmfunc: 0x1,
    },
};

/// Intel Core i7-2635QM (Sandy Bridge), VirtualBox CPU database: EPT without 1 GiB pages or
/// A/D bits, no VM functions.
pub static SANDY_BRIDGE_I7_2635QM: Recorded = Recorded {
    name: "Intel Core i7-2635QM (Sandy Bridge)",
    msrs: CapMsrs {
        feature_control: 0x5, // assumed
        basic: 0x00DA_0400_0000_0010,
        pinbased: 0x0000_007F_0000_0016,
        procbased: 0xFFF9_FFFE_0401_E172,
        exit: 0x007F_FFFF_0003_6DFF,
        entry: 0x0000_FFFF_0000_11FF,
        misc: 0x1004_01E5,
        cr0_fixed0: CR0_FIXED0,
        cr0_fixed1: CR0_FIXED1,
        cr4_fixed0: CR4_FIXED0,
        cr4_fixed1: 0x0006_27FF,
        procbased2: 0x0000_00FF_0000_0000,
        ept_vpid_cap: 0x0000_0F01_0611_4141,
        true_pinbased: 0x0000_007F_0000_0016,
        true_procbased: 0xFFF9_FFFE_0400_6172,
        true_exit: 0x007F_FFFF_0003_6DFB,
        true_entry: 0x0000_FFFF_0000_11FB,
        vmfunc: 0,
    },
};

/// Intel Xeon X5482 (Penryn), VirtualBox CPU database: secondary controls exist but offer only
/// "virtualize APIC accesses" and "WBINVD exiting" (no EPT, no VPID, no unrestricted guest),
/// and there are no true-control MSRs yet.
pub static PENRYN_XEON_X5482: Recorded = Recorded {
    name: "Intel Xeon X5482 (Penryn)",
    msrs: CapMsrs {
        feature_control: 0x5, // assumed
        basic: 0x005A_0800_0000_000D,
        pinbased: 0x0000_003F_0000_0016,
        procbased: 0xF7F9_FFFE_0401_E172,
        exit: 0x0003_FFFF_0003_6DFF,
        entry: 0x0000_3FFF_0000_11FF,
        misc: 0x0004_03C0,
        cr0_fixed0: CR0_FIXED0,
        cr0_fixed1: CR0_FIXED1,
        cr4_fixed0: CR4_FIXED0,
        cr4_fixed1: 0x0000_27FF,
        procbased2: 0x0000_0041_0000_0000,
        ept_vpid_cap: 0,
        true_pinbased: 0,
        true_procbased: 0,
        true_exit: 0,
        true_entry: 0,
        vmfunc: 0,
    },
};

/// Bochs `cpu: model=corei7_haswell_4770` (derived, see the module documentation).
pub static BOCHS_HASWELL_4770: Recorded = Recorded {
    name: "Bochs corei7_haswell_4770",
    msrs: CapMsrs {
        feature_control: 0x5,
        basic: 0x00D8_1000_0000_002B,
        pinbased: 0x0000_007F_0000_0016,
        procbased: 0xF7F9_FFFE_0401_E172,
        exit: 0x407F_FFFF_0003_6DFF,
        entry: 0x0000_FFFF_0000_11FF,
        misc: 0x2004_01E0,
        cr0_fixed0: CR0_FIXED0,
        cr0_fixed1: CR0_FIXED1,
        cr4_fixed0: CR4_FIXED0,
        cr4_fixed1: 0x0017_27FF,
        procbased2: 0x0004_7FFF_0000_0000,
        ept_vpid_cap: 0x0000_0F01_0633_4141,
        true_pinbased: 0x0000_007F_0000_0016,
        true_procbased: 0xF7F9_FFFE_0400_6172,
        true_exit: 0x407F_FFFF_0003_6DFB,
        true_entry: 0x0000_FFFF_0000_11FB,
        vmfunc: 0x1,
    },
};

/// Bochs `cpu: model=corei7_skylake_x` (derived, see the module documentation): Haswell's
/// set plus PML, RDSEED exiting, XSAVES, TSC scaling and zero-length injection.
pub static BOCHS_SKYLAKE_X: Recorded = Recorded {
    name: "Bochs corei7_skylake_x",
    msrs: CapMsrs {
        procbased2: 0x0217_7FFF_0000_0000,
        misc: 0x6004_01E0,
        cr4_fixed1: 0x0037_27FF,
        ..BOCHS_HASWELL_4770.msrs
    },
};

/// Every recorded set.
pub static ALL: &[&Recorded] = &[
    &SKYLAKE_I7_6700K,
    &SKYLAKE_X_I7_7800X,
    &BROADWELL_I7_5600U,
    &SANDY_BRIDGE_I7_2635QM,
    &PENRYN_XEON_X5482,
    &BOCHS_HASWELL_4770,
    &BOCHS_SKYLAKE_X,
];

/// The sets a Hermitage guest can run on (EPT + unrestricted guest).
pub static USABLE: &[&Recorded] = &[
    &SKYLAKE_I7_6700K,
    &SKYLAKE_X_I7_7800X,
    &BROADWELL_I7_5600U,
    &SANDY_BRIDGE_I7_2635QM,
    &BOCHS_HASWELL_4770,
    &BOCHS_SKYLAKE_X,
];
