//! VM-execution, VM-exit and VM-entry controls, computed from the capability MSRs.
//!
//! Why: every control field has bits the CPU forces to 1 ("allowed-0 settings", the low 32 bits
//! of its capability MSR), bits it may not set ("allowed-1 settings", the high 32 bits), and
//! the rest is our choice (SDM vol. 3D A.3-A.5). Getting this wrong fails VM entry with
//! "invalid control field(s)" and no hint which, so the computation is a pure function tested
//! against capability MSRs recorded from real CPUs and Bochs, and a missing feature is reported
//! by field and bit name.
//!
//! Which MSR to consult: when IA32_VMX_BASIC bit 55 is set, the IA32_VMX_TRUE_*_CTLS MSRs
//! describe the pin-based, primary processor-based, exit and entry controls completely (some
//! "default-1" bits, such as CR3-load exiting, may then be 0); otherwise the plain MSRs do
//! (SDM vol. 3D A.2 "Reserved Controls and Default Settings").
//!
//! Bit definitions: SDM vol. 3C "VM-Execution Control Fields" (pin-based, primary and secondary
//! processor-based tables), "VM-Exit Control Fields", "VM-Entry Control Fields".
#![forbid(unsafe_code)]

use core::fmt;

use bitflags::bitflags;

use crate::caps::{self, ActivityState, CapMsrs, EptVpidCap, VmxBasic, VmxMisc, VmxUnavailable};

bitflags! {
    /// Pin-based VM-execution controls. Unknown (reserved, default) bits are kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PinControls: u32 {
        /// External interrupts cause VM exits.
        const EXTERNAL_INTERRUPT_EXITING = 1 << 0;
        /// NMIs cause VM exits.
        const NMI_EXITING = 1 << 3;
        /// Virtual NMIs.
        const VIRTUAL_NMIS = 1 << 5;
        /// Activate the VMX-preemption timer.
        const PREEMPTION_TIMER = 1 << 6;
        /// Process posted interrupts.
        const POSTED_INTERRUPTS = 1 << 7;
        const _ = !0;
    }
}

bitflags! {
    /// Primary processor-based VM-execution controls.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PrimaryControls: u32 {
        /// Exit at the start of any instruction when RFLAGS.IF = 1 and nothing blocks.
        const INTERRUPT_WINDOW_EXITING = 1 << 2;
        /// Use TSC offsetting.
        const USE_TSC_OFFSETTING = 1 << 3;
        /// HLT exits.
        const HLT_EXITING = 1 << 7;
        /// INVLPG exits.
        const INVLPG_EXITING = 1 << 9;
        /// MWAIT exits.
        const MWAIT_EXITING = 1 << 10;
        /// RDPMC exits.
        const RDPMC_EXITING = 1 << 11;
        /// RDTSC/RDTSCP exit.
        const RDTSC_EXITING = 1 << 12;
        /// MOV to CR3 exits (default 1 without true controls).
        const CR3_LOAD_EXITING = 1 << 15;
        /// MOV from CR3 exits (default 1 without true controls).
        const CR3_STORE_EXITING = 1 << 16;
        /// Activate tertiary controls.
        const ACTIVATE_TERTIARY_CONTROLS = 1 << 17;
        /// MOV to CR8 exits.
        const CR8_LOAD_EXITING = 1 << 19;
        /// MOV from CR8 exits.
        const CR8_STORE_EXITING = 1 << 20;
        /// Use TPR shadow.
        const USE_TPR_SHADOW = 1 << 21;
        /// NMI-window exiting.
        const NMI_WINDOW_EXITING = 1 << 22;
        /// MOV DR exits.
        const MOV_DR_EXITING = 1 << 23;
        /// Every I/O instruction exits (ignored when I/O bitmaps are used).
        const UNCONDITIONAL_IO_EXITING = 1 << 24;
        /// Use I/O bitmaps.
        const USE_IO_BITMAPS = 1 << 25;
        /// Monitor trap flag.
        const MONITOR_TRAP_FLAG = 1 << 27;
        /// Use MSR bitmaps.
        const USE_MSR_BITMAPS = 1 << 28;
        /// MONITOR exits.
        const MONITOR_EXITING = 1 << 29;
        /// PAUSE exits.
        const PAUSE_EXITING = 1 << 30;
        /// Activate the secondary controls.
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
        const _ = !0;
    }
}

bitflags! {
    /// Secondary processor-based VM-execution controls.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct SecondaryControls: u32 {
        /// Virtualize APIC accesses.
        const VIRTUALIZE_APIC_ACCESSES = 1 << 0;
        /// Enable EPT.
        const ENABLE_EPT = 1 << 1;
        /// Descriptor-table exiting.
        const DESCRIPTOR_TABLE_EXITING = 1 << 2;
        /// Enable RDTSCP (else RDTSCP #UDs in the guest).
        const ENABLE_RDTSCP = 1 << 3;
        /// Virtualize x2APIC mode.
        const VIRTUALIZE_X2APIC = 1 << 4;
        /// Enable VPID.
        const ENABLE_VPID = 1 << 5;
        /// WBINVD exiting.
        const WBINVD_EXITING = 1 << 6;
        /// Unrestricted guest: real mode and unpaged protected mode run natively.
        const UNRESTRICTED_GUEST = 1 << 7;
        /// APIC-register virtualization.
        const APIC_REGISTER_VIRTUALIZATION = 1 << 8;
        /// Virtual-interrupt delivery.
        const VIRTUAL_INTERRUPT_DELIVERY = 1 << 9;
        /// PAUSE-loop exiting.
        const PAUSE_LOOP_EXITING = 1 << 10;
        /// RDRAND exiting.
        const RDRAND_EXITING = 1 << 11;
        /// Enable INVPCID (else INVPCID #UDs in the guest).
        const ENABLE_INVPCID = 1 << 12;
        /// Enable VM functions.
        const ENABLE_VMFUNC = 1 << 13;
        /// VMCS shadowing.
        const VMCS_SHADOWING = 1 << 14;
        /// ENCLS exiting.
        const ENCLS_EXITING = 1 << 15;
        /// RDSEED exiting.
        const RDSEED_EXITING = 1 << 16;
        /// Enable PML.
        const ENABLE_PML = 1 << 17;
        /// EPT-violation #VE.
        const EPT_VIOLATION_VE = 1 << 18;
        /// Conceal VMX from Intel PT.
        const CONCEAL_VMX_FROM_PT = 1 << 19;
        /// Enable XSAVES/XRSTORS.
        const ENABLE_XSAVES = 1 << 20;
        /// Mode-based execute control for EPT.
        const MODE_BASED_EPT_EXECUTE = 1 << 22;
        /// Use TSC scaling.
        const USE_TSC_SCALING = 1 << 25;
        const _ = !0;
    }
}

bitflags! {
    /// VM-exit controls.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct ExitControls: u32 {
        /// Save DR7 and IA32_DEBUGCTL (default 1 without true controls).
        const SAVE_DEBUG_CONTROLS = 1 << 2;
        /// Host address-space size: the host is 64-bit.
        const HOST_ADDRESS_SPACE_SIZE = 1 << 9;
        /// Load IA32_PERF_GLOBAL_CTRL (never used: Bochs advertises it without the MSR).
        const LOAD_PERF_GLOBAL_CTRL = 1 << 12;
        /// Acknowledge the interrupt controller on exit and store the vector.
        const ACK_INTERRUPT_ON_EXIT = 1 << 15;
        /// Save guest IA32_PAT.
        const SAVE_PAT = 1 << 18;
        /// Load host IA32_PAT.
        const LOAD_PAT = 1 << 19;
        /// Save guest IA32_EFER.
        const SAVE_EFER = 1 << 20;
        /// Load host IA32_EFER.
        const LOAD_EFER = 1 << 21;
        /// Save the VMX-preemption timer value.
        const SAVE_PREEMPTION_TIMER = 1 << 22;
        /// Clear IA32_BNDCFGS.
        const CLEAR_BNDCFGS = 1 << 23;
        /// Conceal VM exits from Intel PT.
        const CONCEAL_VMX_FROM_PT = 1 << 24;
        /// Clear IA32_RTIT_CTL.
        const CLEAR_RTIT_CTL = 1 << 25;
        /// Load CET state.
        const LOAD_CET_STATE = 1 << 28;
        /// Load PKRS.
        const LOAD_PKRS = 1 << 29;
        /// Save IA32_PERF_GLOBAL_CTL.
        const SAVE_PERF_GLOBAL_CTRL = 1 << 30;
        const _ = !0;
    }
}

bitflags! {
    /// VM-entry controls.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EntryControls: u32 {
        /// Load DR7 and IA32_DEBUGCTL (default 1 without true controls).
        const LOAD_DEBUG_CONTROLS = 1 << 2;
        /// IA-32e mode guest: must equal the guest's EFER.LMA.
        const IA32E_MODE_GUEST = 1 << 9;
        /// Entry to SMM.
        const ENTRY_TO_SMM = 1 << 10;
        /// Deactivate dual-monitor treatment.
        const DEACTIVATE_DUAL_MONITOR = 1 << 11;
        /// Load IA32_PERF_GLOBAL_CTRL (never used: Bochs advertises it without the MSR).
        const LOAD_PERF_GLOBAL_CTRL = 1 << 13;
        /// Load guest IA32_PAT.
        const LOAD_PAT = 1 << 14;
        /// Load guest IA32_EFER.
        const LOAD_EFER = 1 << 15;
        /// Load IA32_BNDCFGS.
        const LOAD_BNDCFGS = 1 << 16;
        /// Conceal VM entries from Intel PT.
        const CONCEAL_VMX_FROM_PT = 1 << 17;
        /// Load IA32_RTIT_CTL.
        const LOAD_RTIT_CTL = 1 << 18;
        /// Load CET state.
        const LOAD_CET_STATE = 1 << 20;
        /// Load PKRS.
        const LOAD_PKRS = 1 << 22;
        const _ = !0;
    }
}

/// One of the five 32-bit control fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlField {
    /// Pin-based VM-execution controls.
    PinBased,
    /// Primary processor-based VM-execution controls.
    PrimaryProcBased,
    /// Secondary processor-based VM-execution controls.
    SecondaryProcBased,
    /// VM-exit controls.
    Exit,
    /// VM-entry controls.
    Entry,
}

impl ControlField {
    /// Human-readable name, as in the SDM.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PinBased => "pin-based VM-execution controls",
            Self::PrimaryProcBased => "primary processor-based VM-execution controls",
            Self::SecondaryProcBased => "secondary processor-based VM-execution controls",
            Self::Exit => "VM-exit controls",
            Self::Entry => "VM-entry controls",
        }
    }

    /// The SDM name of control `bit` of this field, or "reserved" for bits without one.
    pub const fn bit_name(self, bit: u32) -> &'static str {
        match (self, bit) {
            (Self::PinBased, 0) => "external-interrupt exiting",
            (Self::PinBased, 3) => "NMI exiting",
            (Self::PinBased, 5) => "virtual NMIs",
            (Self::PinBased, 6) => "activate VMX-preemption timer",
            (Self::PinBased, 7) => "process posted interrupts",
            (Self::PrimaryProcBased, 2) => "interrupt-window exiting",
            (Self::PrimaryProcBased, 3) => "use TSC offsetting",
            (Self::PrimaryProcBased, 7) => "HLT exiting",
            (Self::PrimaryProcBased, 9) => "INVLPG exiting",
            (Self::PrimaryProcBased, 10) => "MWAIT exiting",
            (Self::PrimaryProcBased, 11) => "RDPMC exiting",
            (Self::PrimaryProcBased, 12) => "RDTSC exiting",
            (Self::PrimaryProcBased, 15) => "CR3-load exiting",
            (Self::PrimaryProcBased, 16) => "CR3-store exiting",
            (Self::PrimaryProcBased, 17) => "activate tertiary controls",
            (Self::PrimaryProcBased, 19) => "CR8-load exiting",
            (Self::PrimaryProcBased, 20) => "CR8-store exiting",
            (Self::PrimaryProcBased, 21) => "use TPR shadow",
            (Self::PrimaryProcBased, 22) => "NMI-window exiting",
            (Self::PrimaryProcBased, 23) => "MOV-DR exiting",
            (Self::PrimaryProcBased, 24) => "unconditional I/O exiting",
            (Self::PrimaryProcBased, 25) => "use I/O bitmaps",
            (Self::PrimaryProcBased, 27) => "monitor trap flag",
            (Self::PrimaryProcBased, 28) => "use MSR bitmaps",
            (Self::PrimaryProcBased, 29) => "MONITOR exiting",
            (Self::PrimaryProcBased, 30) => "PAUSE exiting",
            (Self::PrimaryProcBased, 31) => "activate secondary controls",
            (Self::SecondaryProcBased, 0) => "virtualize APIC accesses",
            (Self::SecondaryProcBased, 1) => "enable EPT",
            (Self::SecondaryProcBased, 2) => "descriptor-table exiting",
            (Self::SecondaryProcBased, 3) => "enable RDTSCP",
            (Self::SecondaryProcBased, 4) => "virtualize x2APIC mode",
            (Self::SecondaryProcBased, 5) => "enable VPID",
            (Self::SecondaryProcBased, 6) => "WBINVD exiting",
            (Self::SecondaryProcBased, 7) => "unrestricted guest",
            (Self::SecondaryProcBased, 8) => "APIC-register virtualization",
            (Self::SecondaryProcBased, 9) => "virtual-interrupt delivery",
            (Self::SecondaryProcBased, 10) => "PAUSE-loop exiting",
            (Self::SecondaryProcBased, 11) => "RDRAND exiting",
            (Self::SecondaryProcBased, 12) => "enable INVPCID",
            (Self::SecondaryProcBased, 13) => "enable VM functions",
            (Self::SecondaryProcBased, 14) => "VMCS shadowing",
            (Self::SecondaryProcBased, 15) => "enable ENCLS exiting",
            (Self::SecondaryProcBased, 16) => "RDSEED exiting",
            (Self::SecondaryProcBased, 17) => "enable PML",
            (Self::SecondaryProcBased, 18) => "EPT-violation #VE",
            (Self::SecondaryProcBased, 19) => "conceal VMX from PT",
            (Self::SecondaryProcBased, 20) => "enable XSAVES/XRSTORS",
            (Self::SecondaryProcBased, 22) => "mode-based execute control for EPT",
            (Self::SecondaryProcBased, 25) => "use TSC scaling",
            (Self::Exit, 2) => "save debug controls",
            (Self::Exit, 9) => "host address-space size",
            (Self::Exit, 12) => "load IA32_PERF_GLOBAL_CTRL",
            (Self::Exit, 15) => "acknowledge interrupt on exit",
            (Self::Exit, 18) => "save IA32_PAT",
            (Self::Exit, 19) => "load IA32_PAT",
            (Self::Exit, 20) => "save IA32_EFER",
            (Self::Exit, 21) => "load IA32_EFER",
            (Self::Exit, 22) => "save VMX-preemption timer value",
            (Self::Exit, 23) => "clear IA32_BNDCFGS",
            (Self::Exit, 24) => "conceal VMX from PT",
            (Self::Exit, 25) => "clear IA32_RTIT_CTL",
            (Self::Exit, 28) => "load CET state",
            (Self::Exit, 29) => "load PKRS",
            (Self::Exit, 30) => "save IA32_PERF_GLOBAL_CTL",
            (Self::Entry, 2) => "load debug controls",
            (Self::Entry, 9) => "IA-32e mode guest",
            (Self::Entry, 10) => "entry to SMM",
            (Self::Entry, 11) => "deactivate dual-monitor treatment",
            (Self::Entry, 13) => "load IA32_PERF_GLOBAL_CTRL",
            (Self::Entry, 14) => "load IA32_PAT",
            (Self::Entry, 15) => "load IA32_EFER",
            (Self::Entry, 16) => "load IA32_BNDCFGS",
            (Self::Entry, 17) => "conceal VMX from PT",
            (Self::Entry, 18) => "load IA32_RTIT_CTL",
            (Self::Entry, 20) => "load CET state",
            (Self::Entry, 22) => "load PKRS",
            _ => "reserved",
        }
    }
}

/// Controls the hypervisor needs that this CPU cannot set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MissingControls {
    /// The control field.
    pub field: ControlField,
    /// The required bits whose allowed-1 setting is 0.
    pub missing: u32,
}

impl MissingControls {
    /// SDM names of the missing bits, lowest bit first.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        (0..32)
            .filter(|b| self.missing & (1 << b) != 0)
            .map(|b| self.field.bit_name(b))
    }
}

impl fmt::Display for MissingControls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} lack: ", self.field.name())?;
        for (i, name) in self.names().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// Compute a control field: the CPU's must-be-1 bits (low half of `msr`), plus `required`
/// (error if any is not allowed), plus whatever of `optional` is allowed (high half).
pub const fn compute(
    field: ControlField,
    required: u32,
    optional: u32,
    msr: u64,
) -> Result<u32, MissingControls> {
    let must_be_one = msr as u32;
    let may_be_one = (msr >> 32) as u32;
    let missing = required & !may_be_one;
    if missing != 0 {
        return Err(MissingControls { field, missing });
    }
    Ok(must_be_one | required | (optional & may_be_one))
}

/// Why [`VmxConfig::derive`] refused this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlError {
    /// IA32_FEATURE_CONTROL forbids VMXON.
    Unavailable(VmxUnavailable),
    /// A control the hypervisor needs cannot be set.
    Missing(MissingControls),
    /// EPT exists but without features the hypervisor needs (the missing ones).
    EptCapabilities(EptVpidCap),
    /// IA32_VMX_BASIC reports something other than write-back VMCS memory or a size above
    /// one page (the kernel allocates one write-back page per VMCS).
    UnsupportedVmcs,
}

impl From<MissingControls> for ControlError {
    fn from(m: MissingControls) -> Self {
        Self::Missing(m)
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(VmxUnavailable::NotSupported) => f.write_str("no VMX"),
            Self::Unavailable(VmxUnavailable::DisabledByFirmware) => {
                f.write_str("VMX disabled by firmware (IA32_FEATURE_CONTROL locked)")
            }
            Self::Missing(m) => m.fmt(f),
            Self::EptCapabilities(c) => write!(f, "EPT lacks capabilities {:#x}", c.bits()),
            Self::UnsupportedVmcs => f.write_str("VMCS not write-back or larger than 4 KiB"),
        }
    }
}

/// Pin-based controls every Hermitage guest gets: host interrupts and NMIs exit.
pub const PIN_REQUIRED: PinControls =
    PinControls::EXTERNAL_INTERRUPT_EXITING.union(PinControls::NMI_EXITING);
/// Pin-based controls used when available: the VMX-preemption timer, a per-entry time budget
/// that makes the guest exit whatever its RFLAGS.IF. The host's APIC tick ("external-interrupt
/// exiting") should do that alone, but Bochs 2.7 recomputes its interrupt mask at VM entry
/// before it marks the CPU as in a guest, so a guest entered with IF = 0 that never touches IF
/// (a Multiboot guest spinning) would never see the tick; the timer ends its run regardless
/// (SDM vol. 3C "VMX-Preemption Timer").
pub const PIN_OPTIONAL: PinControls = PinControls::PREEMPTION_TIMER;
/// Primary controls every guest gets (plus I/O bitmaps or unconditional I/O exiting).
pub const PRIMARY_REQUIRED: PrimaryControls = PrimaryControls::HLT_EXITING
    .union(PrimaryControls::RDPMC_EXITING)
    .union(PrimaryControls::USE_MSR_BITMAPS)
    .union(PrimaryControls::ACTIVATE_SECONDARY_CONTROLS);
/// Secondary controls every guest needs: EPT (no shadow paging here) and, since EPT is
/// there, unrestricted guest (real-mode and unpaged protected-mode guests run natively).
pub const SECONDARY_REQUIRED: SecondaryControls =
    SecondaryControls::ENABLE_EPT.union(SecondaryControls::UNRESTRICTED_GUEST);
/// Secondary controls used when available: VPID (no TLB flush on every entry/exit), RDTSCP
/// and INVPCID (else they #UD in the guest).
pub const SECONDARY_OPTIONAL: SecondaryControls = SecondaryControls::ENABLE_VPID
    .union(SecondaryControls::ENABLE_RDTSCP)
    .union(SecondaryControls::ENABLE_INVPCID);
/// Exit controls: 64-bit host, interrupt acknowledged on exit (its vector in the exit
/// interruption information), guest DR7/DEBUGCTL saved (the exit then resets DR7 to 0x400 and
/// clears DEBUGCTL for the host), guest EFER saved and host EFER loaded.
pub const EXIT_REQUIRED: ExitControls = ExitControls::HOST_ADDRESS_SPACE_SIZE
    .union(ExitControls::SAVE_DEBUG_CONTROLS)
    .union(ExitControls::ACK_INTERRUPT_ON_EXIT)
    .union(ExitControls::SAVE_EFER)
    .union(ExitControls::LOAD_EFER);
/// Exit controls used when available (together with [`EntryControls::LOAD_PAT`]).
pub const EXIT_PAT: ExitControls = ExitControls::SAVE_PAT.union(ExitControls::LOAD_PAT);
/// Entry controls: guest DR7/DEBUGCTL and EFER loaded (so the guest never runs on the host's
/// debug registers). "IA-32e mode guest" must also be settable but is set per guest
/// ([`VmxConfig::entry_for`]).
pub const ENTRY_REQUIRED: EntryControls =
    EntryControls::LOAD_DEBUG_CONTROLS.union(EntryControls::LOAD_EFER);

/// Controls never requested, whatever the CPU says: Bochs advertises the
/// IA32_PERF_GLOBAL_CTRL load/save controls without implementing the MSR (PLATFORM.md).
pub const EXIT_NEVER: ExitControls =
    ExitControls::LOAD_PERF_GLOBAL_CTRL.union(ExitControls::SAVE_PERF_GLOBAL_CTRL);
/// See [`EXIT_NEVER`].
pub const ENTRY_NEVER: EntryControls = EntryControls::LOAD_PERF_GLOBAL_CTRL;

/// Everything the backend decided about one CPU's VMX: the control values to write (the
/// entry controls without "IA-32e mode guest", see [`VmxConfig::entry_for`]) and the
/// capabilities the rest of the backend consults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmxConfig {
    /// IA32_VMX_BASIC.
    pub basic: VmxBasic,
    /// Pin-based controls.
    pub pin: PinControls,
    /// Primary processor-based controls.
    pub primary: PrimaryControls,
    /// Secondary processor-based controls.
    pub secondary: SecondaryControls,
    /// VM-exit controls.
    pub exit: ExitControls,
    /// VM-entry controls for a guest that is not in IA-32e mode.
    pub entry: EntryControls,
    /// EPT/VPID capabilities.
    pub ept_vpid: EptVpidCap,
    /// IA32_VMX_MISC.
    pub misc: VmxMisc,
    /// IA32_VMX_CR0_FIXED0.
    pub cr0_fixed0: u64,
    /// IA32_VMX_CR0_FIXED1.
    pub cr0_fixed1: u64,
    /// IA32_VMX_CR4_FIXED0.
    pub cr4_fixed0: u64,
    /// IA32_VMX_CR4_FIXED1.
    pub cr4_fixed1: u64,
}

/// CR0.PE and CR0.PG: exempt from CR0_FIXED0 for the guest with unrestricted guest (SDM vol.
/// 3C "Checks on Guest Control Registers, Debug Registers, and MSRs").
pub const CR0_PE_PG: u64 = 1 | (1 << 31);

impl VmxConfig {
    /// Decide the controls for this CPU, or say precisely what it lacks.
    pub fn derive(m: &CapMsrs) -> Result<Self, ControlError> {
        // Unlocked is fine: the enable path writes it (`crate::enable::plan_enable`).
        if let Err(e) = caps::feature_control_action(m.feature_control) {
            return Err(ControlError::Unavailable(e));
        }
        let basic = m.basic();
        if basic.memory_type != caps::MemoryType::WriteBack || basic.vmcs_size > 4096 {
            return Err(ControlError::UnsupportedVmcs);
        }
        let (pin_msr, proc_msr, exit_msr, entry_msr) = if basic.true_controls {
            (m.true_pinbased, m.true_procbased, m.true_exit, m.true_entry)
        } else {
            (m.pinbased, m.procbased, m.exit, m.entry)
        };

        let pin = compute(
            ControlField::PinBased,
            PIN_REQUIRED.bits(),
            PIN_OPTIONAL.bits(),
            pin_msr,
        )?;

        // Prefer I/O bitmaps (only chosen ports exit); fall back to unconditional exiting.
        let proc_allowed = PrimaryControls::from_bits_retain((proc_msr >> 32) as u32);
        let io = if proc_allowed.contains(PrimaryControls::USE_IO_BITMAPS) {
            PrimaryControls::USE_IO_BITMAPS
        } else {
            PrimaryControls::UNCONDITIONAL_IO_EXITING
        };
        let primary = compute(
            ControlField::PrimaryProcBased,
            (PRIMARY_REQUIRED | io).bits(),
            0,
            proc_msr,
        )?;

        // Present only when "activate secondary controls" may be 1, which `primary` now says.
        let secondary = compute(
            ControlField::SecondaryProcBased,
            SECONDARY_REQUIRED.bits(),
            SECONDARY_OPTIONAL.bits(),
            m.procbased2,
        )?;

        let ept_vpid = m.ept_vpid();
        let missing_ept = caps::REQUIRED_EPT.difference(ept_vpid);
        if !missing_ept.is_empty() {
            return Err(ControlError::EptCapabilities(missing_ept));
        }

        let exit_allowed = ExitControls::from_bits_retain((exit_msr >> 32) as u32);
        let entry_allowed = EntryControls::from_bits_retain((entry_msr >> 32) as u32);
        let pat =
            exit_allowed.contains(EXIT_PAT) && entry_allowed.contains(EntryControls::LOAD_PAT);
        let exit = compute(
            ControlField::Exit,
            EXIT_REQUIRED.bits(),
            if pat { EXIT_PAT.bits() } else { 0 },
            exit_msr,
        )?;
        // Validate that "IA-32e mode guest" can be set, then leave it to `entry_for`.
        let entry = compute(
            ControlField::Entry,
            (ENTRY_REQUIRED | EntryControls::IA32E_MODE_GUEST).bits(),
            if pat {
                EntryControls::LOAD_PAT.bits()
            } else {
                0
            },
            entry_msr,
        )? & !EntryControls::IA32E_MODE_GUEST.bits();

        let cfg = Self {
            basic,
            pin: PinControls::from_bits_retain(pin),
            primary: PrimaryControls::from_bits_retain(primary),
            secondary: SecondaryControls::from_bits_retain(secondary),
            exit: ExitControls::from_bits_retain(exit),
            entry: EntryControls::from_bits_retain(entry),
            ept_vpid,
            misc: m.misc(),
            cr0_fixed0: m.cr0_fixed0,
            cr0_fixed1: m.cr0_fixed1,
            cr4_fixed0: m.cr4_fixed0,
            cr4_fixed1: m.cr4_fixed1,
        };
        // A CPU that forces one of these on would break Bochs; none known does.
        debug_assert!(!cfg.exit.intersects(EXIT_NEVER) && !cfg.entry.intersects(ENTRY_NEVER));
        Ok(cfg)
    }

    /// The entry controls for a guest whose EFER.LMA is `ia32e` (the "IA-32e mode guest"
    /// control must equal it, SDM vol. 3C "Checks on Guest Control Registers...").
    pub const fn entry_for(&self, ia32e: bool) -> EntryControls {
        if ia32e {
            self.entry.union(EntryControls::IA32E_MODE_GUEST)
        } else {
            self.entry
        }
    }

    /// Whether VPID is in use (then each vCPU needs a nonzero VPID).
    pub const fn vpid(&self) -> bool {
        self.secondary.contains(SecondaryControls::ENABLE_VPID)
    }

    /// Whether the VMX-preemption timer is on (then each entry writes its budget,
    /// [`VmxConfig::preemption_timer_value`]).
    pub const fn preemption_timer(&self) -> bool {
        self.pin.contains(PinControls::PREEMPTION_TIMER)
    }

    /// The VMX-preemption timer value for a budget of `budget_us` microseconds on a CPU whose
    /// TSC runs at `tsc_per_us` ticks per microsecond: the timer counts down once every
    /// 2^rate TSC ticks (IA32_VMX_MISC bits 4:0). At least 1 (0 would exit before the guest
    /// runs an instruction), at most what the 32-bit field holds.
    pub const fn preemption_timer_value(&self, budget_us: u64, tsc_per_us: u64) -> u32 {
        let ticks = budget_us.saturating_mul(tsc_per_us) >> self.misc.preemption_timer_rate();
        if ticks == 0 {
            1
        } else if ticks > u32::MAX as u64 {
            u32::MAX
        } else {
            ticks as u32
        }
    }

    /// Whether unrestricted guest is on (always, for a derived config).
    pub const fn unrestricted_guest(&self) -> bool {
        self.secondary
            .contains(SecondaryControls::UNRESTRICTED_GUEST)
    }

    /// Whether guest IA32_PAT is switched by the entry/exit controls.
    pub const fn pat_switched(&self) -> bool {
        self.entry.contains(EntryControls::LOAD_PAT)
    }

    /// Whether the controls use I/O bitmaps (else every I/O instruction exits).
    pub const fn io_bitmaps(&self) -> bool {
        self.primary.contains(PrimaryControls::USE_IO_BITMAPS)
    }

    /// CR0 bits the guest must have set: CR0_FIXED0 without PE and PG under unrestricted guest.
    pub const fn guest_cr0_fixed0(&self) -> u64 {
        if self.unrestricted_guest() {
            self.cr0_fixed0 & !CR0_PE_PG
        } else {
            self.cr0_fixed0
        }
    }

    /// Whether the guest may be entered in `state`.
    pub const fn activity_supported(&self, state: ActivityState) -> bool {
        self.misc.activity_supported(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorded::{self, Recorded};

    fn derive(r: &Recorded) -> Result<VmxConfig, ControlError> {
        VmxConfig::derive(&r.msrs)
    }

    #[test]
    fn compute_rules() {
        // must-be-1 = 0x16, may-be-1 = 0x7F.
        let msr = 0x7F_0000_0016;
        assert_eq!(compute(ControlField::PinBased, 0x9, 0, msr), Ok(0x1F));
        assert_eq!(compute(ControlField::PinBased, 0x9, 0xC0, msr), Ok(0x5F));
        assert_eq!(
            compute(ControlField::PinBased, 0x89, 0, msr),
            Err(MissingControls {
                field: ControlField::PinBased,
                missing: 0x80
            })
        );
        let e = MissingControls {
            field: ControlField::SecondaryProcBased,
            missing: (SecondaryControls::ENABLE_EPT | SecondaryControls::UNRESTRICTED_GUEST).bits(),
        };
        assert_eq!(
            e.to_string(),
            "secondary processor-based VM-execution controls lack: enable EPT, unrestricted guest"
        );
        assert_eq!(ControlField::PinBased.bit_name(1), "reserved");
    }

    #[test]
    fn derive_on_every_usable_cpu() {
        for r in recorded::USABLE {
            let c = derive(r).unwrap_or_else(|e| panic!("{}: {e}", r.name));
            assert!(c.pin.contains(PIN_REQUIRED), "{}", r.name);
            assert!(c.primary.contains(PRIMARY_REQUIRED), "{}", r.name);
            assert!(c.io_bitmaps(), "{}: all have I/O bitmaps", r.name);
            assert!(
                !c.primary
                    .contains(PrimaryControls::UNCONDITIONAL_IO_EXITING),
                "{}",
                r.name
            );
            assert!(c.secondary.contains(SECONDARY_REQUIRED), "{}", r.name);
            assert!(c.vpid() && c.unrestricted_guest(), "{}", r.name);
            assert!(c.exit.contains(EXIT_REQUIRED), "{}", r.name);
            assert!(c.entry.contains(ENTRY_REQUIRED), "{}", r.name);
            assert!(!c.entry.contains(EntryControls::IA32E_MODE_GUEST));
            assert!(c.entry_for(true).contains(EntryControls::IA32E_MODE_GUEST));
            assert!(!c.exit.intersects(EXIT_NEVER), "{}", r.name);
            assert!(!c.entry.intersects(ENTRY_NEVER), "{}", r.name);
            assert!(c.pat_switched(), "{}", r.name);
            // With true controls the default-1 CR3 exiting bits are dropped.
            assert!(
                !c.primary.intersects(
                    PrimaryControls::CR3_LOAD_EXITING | PrimaryControls::CR3_STORE_EXITING
                ),
                "{}",
                r.name
            );
            assert_eq!(c.guest_cr0_fixed0(), 0x20, "{}: only NE", r.name);
            // Every value respects its capability MSR.
            let m = r.msrs;
            for (v, msr) in [
                (c.pin.bits(), m.true_pinbased),
                (c.primary.bits(), m.true_procbased),
                (c.secondary.bits(), m.procbased2),
                (c.exit.bits(), m.true_exit),
                (c.entry_for(true).bits(), m.true_entry),
            ] {
                assert_eq!(v & msr as u32, msr as u32, "{}: must-be-1", r.name);
                assert_eq!(v & !((msr >> 32) as u32), 0, "{}: may-be-1", r.name);
            }
        }
    }

    #[test]
    fn preemption_timer_budget() {
        let mut c = derive(&recorded::BOCHS_HASWELL_4770).unwrap();
        let rate = c.misc.preemption_timer_rate();
        // 5 ms at 3 GHz, scaled by the CPU's rate.
        assert_eq!(
            c.preemption_timer_value(5_000, 3_000),
            (15_000_000u64 >> rate) as u32
        );
        // Never 0, never past the field.
        assert_eq!(c.preemption_timer_value(0, 3_000), 1);
        assert_eq!(c.preemption_timer_value(1, 0), 1);
        assert_eq!(c.preemption_timer_value(u64::MAX, u64::MAX), u32::MAX);
        c.misc = crate::caps::VmxMisc(0);
        assert_eq!(c.preemption_timer_value(1_000, 2_000), 2_000_000);
        // Optional: a CPU without it still derives, without it.
        let mut m = recorded::BOCHS_HASWELL_4770.msrs;
        m.true_pinbased &= !((PinControls::PREEMPTION_TIMER.bits() as u64) << 32);
        m.pinbased &= !((PinControls::PREEMPTION_TIMER.bits() as u64) << 32);
        let c = VmxConfig::derive(&m).unwrap();
        assert!(!c.preemption_timer());
    }

    #[test]
    fn exact_values_bochs_haswell() {
        let c = derive(&recorded::BOCHS_HASWELL_4770).unwrap();
        assert_eq!(c.basic.revision_id, 0x2B);
        assert_eq!(c.pin.bits(), 0x16 | 0x1 | 0x8 | 0x40);
        assert!(c.preemption_timer());
        // Must-be-1 (true) 0x0400_6172 + HLT, RDPMC, I/O bitmaps, MSR bitmaps, secondary.
        assert_eq!(
            c.primary.bits(),
            0x0400_6172 | 0x80 | 0x800 | (1 << 25) | (1 << 28) | (1 << 31)
        );
        assert_eq!(c.secondary.bits(), 0x2 | 0x80 | 0x20 | 0x8 | 0x1000);
        // Must-be-1 (true) 0x36DFB + save debug controls, host address-space size, ack, PAT
        // and EFER save/load.
        assert_eq!(c.exit.bits(), 0x0003_6DFB | 0x4 | 0x0000_8200 | 0x003C_0000);
        assert_eq!(c.entry.bits(), 0x11FB | 0x4 | 0x4000 | 0x8000);
        assert_eq!(c.entry_for(true).bits(), 0x11FF | 0x4000 | 0x8000 | 0x200);
        // Bochs offers the PERF_GLOBAL_CTRL controls; they stay off.
        let m = recorded::BOCHS_HASWELL_4770.msrs;
        assert!((m.true_exit >> 32) as u32 & ExitControls::LOAD_PERF_GLOBAL_CTRL.bits() != 0);
        assert!((m.true_entry >> 32) as u32 & EntryControls::LOAD_PERF_GLOBAL_CTRL.bits() != 0);
        assert_eq!(
            derive(&recorded::BOCHS_SKYLAKE_X).unwrap().secondary,
            c.secondary
        );
    }

    #[test]
    fn exact_values_skylake() {
        let c = derive(&recorded::SKYLAKE_I7_6700K).unwrap();
        assert_eq!(c.basic.revision_id, 4);
        assert_eq!(c.pin.bits(), 0x1F | 0x40); // + the preemption timer (optional)
        assert_eq!(c.primary.bits(), 0x9600_69F2);
        assert_eq!(c.secondary.bits(), 0x10AA);
        assert_eq!(c.exit.bits(), 0x003F_EFFF);
        assert_eq!(c.entry.bits(), 0xD1FF);
    }

    #[test]
    fn penryn_lacks_ept_and_unrestricted_guest() {
        // Real Penryn: secondary controls exist, but without EPT and unrestricted guest.
        let e = derive(&recorded::PENRYN_XEON_X5482).unwrap_err();
        assert_eq!(
            e,
            ControlError::Missing(MissingControls {
                field: ControlField::SecondaryProcBased,
                missing: SECONDARY_REQUIRED.bits(),
            })
        );
        assert_eq!(
            e.to_string(),
            "secondary processor-based VM-execution controls lack: enable EPT, unrestricted guest"
        );
    }

    #[test]
    fn no_secondary_controls() {
        // Synthetic: Penryn without the "activate secondary controls" allowed-1 bit (as on
        // the first VMX CPUs).
        let mut m = recorded::PENRYN_XEON_X5482.msrs;
        m.procbased &= !(1 << 63);
        m.procbased2 = 0;
        let e = VmxConfig::derive(&m).unwrap_err();
        assert_eq!(
            e,
            ControlError::Missing(MissingControls {
                field: ControlField::PrimaryProcBased,
                missing: PrimaryControls::ACTIVATE_SECONDARY_CONTROLS.bits(),
            })
        );
        assert!(e.to_string().contains("activate secondary controls"));
    }

    #[test]
    fn no_unrestricted_guest() {
        // Synthetic: Sandy Bridge without unrestricted guest (like Nehalem, which has EPT).
        let mut m = recorded::SANDY_BRIDGE_I7_2635QM.msrs;
        m.procbased2 &= !((SecondaryControls::UNRESTRICTED_GUEST.bits() as u64) << 32);
        let e = VmxConfig::derive(&m).unwrap_err();
        assert_eq!(
            e,
            ControlError::Missing(MissingControls {
                field: ControlField::SecondaryProcBased,
                missing: SecondaryControls::UNRESTRICTED_GUEST.bits(),
            })
        );
        assert_eq!(
            e.to_string(),
            "secondary processor-based VM-execution controls lack: unrestricted guest"
        );
    }

    #[test]
    fn no_ept() {
        // Synthetic: Skylake without EPT (as a nested hypervisor might present it).
        let mut m = recorded::SKYLAKE_I7_6700K.msrs;
        m.procbased2 &= !((SecondaryControls::ENABLE_EPT.bits() as u64) << 32);
        let e = VmxConfig::derive(&m).unwrap_err();
        assert_eq!(
            e,
            ControlError::Missing(MissingControls {
                field: ControlField::SecondaryProcBased,
                missing: SecondaryControls::ENABLE_EPT.bits(),
            })
        );
        // EPT present, but no write-back paging structures.
        let mut m = recorded::SKYLAKE_I7_6700K.msrs;
        m.ept_vpid_cap &= !EptVpidCap::MEMORY_TYPE_WB.bits();
        assert_eq!(
            VmxConfig::derive(&m),
            Err(ControlError::EptCapabilities(EptVpidCap::MEMORY_TYPE_WB))
        );
    }

    #[test]
    fn optional_features_degrade() {
        // No VPID, no PAT controls, no I/O bitmaps: still usable.
        let mut m = recorded::BROADWELL_I7_5600U.msrs;
        m.procbased2 &= !((SecondaryControls::ENABLE_VPID.bits() as u64) << 32);
        m.true_exit &= !((EXIT_PAT.bits() as u64) << 32);
        m.true_procbased &= !((PrimaryControls::USE_IO_BITMAPS.bits() as u64) << 32);
        let c = VmxConfig::derive(&m).unwrap();
        assert!(!c.vpid());
        assert!(!c.pat_switched() && !c.exit.intersects(EXIT_PAT));
        assert!(!c.entry.contains(EntryControls::LOAD_PAT));
        assert!(!c.io_bitmaps());
        assert!(
            c.primary
                .contains(PrimaryControls::UNCONDITIONAL_IO_EXITING)
        );
        // Without true controls the plain MSRs count (CR3 exiting forced on).
        let mut m = recorded::SKYLAKE_I7_6700K.msrs;
        m.basic &= !(1 << 55);
        let c = VmxConfig::derive(&m).unwrap();
        assert!(c.primary.contains(PrimaryControls::CR3_LOAD_EXITING));
        assert!(c.exit.contains(ExitControls::SAVE_DEBUG_CONTROLS));
    }

    #[test]
    fn firmware_and_vmcs_refusals() {
        let mut m = recorded::SKYLAKE_I7_6700K.msrs;
        m.feature_control = 0x1;
        assert_eq!(
            VmxConfig::derive(&m),
            Err(ControlError::Unavailable(
                VmxUnavailable::DisabledByFirmware
            ))
        );
        // Unlocked is fine: the enable path writes it.
        m.feature_control = 0;
        assert!(VmxConfig::derive(&m).is_ok());
        m.basic &= !(0xF << 50); // uncacheable VMCS
        assert_eq!(VmxConfig::derive(&m), Err(ControlError::UnsupportedVmcs));
        // Missing 64-bit host support is named.
        let mut m = recorded::SKYLAKE_I7_6700K.msrs;
        m.true_exit &= !((ExitControls::HOST_ADDRESS_SPACE_SIZE.bits() as u64) << 32);
        let e = VmxConfig::derive(&m).unwrap_err();
        assert_eq!(
            e.to_string(),
            "VM-exit controls lack: host address-space size"
        );
        let mut m = recorded::SKYLAKE_I7_6700K.msrs;
        m.true_entry &= !((EntryControls::IA32E_MODE_GUEST.bits() as u64) << 32);
        let e = VmxConfig::derive(&m).unwrap_err();
        assert_eq!(e.to_string(), "VM-entry controls lack: IA-32e mode guest");
    }
}
