//! VMCS field encodings, basic exit reasons and VM-instruction error numbers.
//!
//! Why: the VMCS is opaque memory; software reaches each field only through VMREAD/VMWRITE with
//! a 32-bit *encoding* (SDM vol. 3D appendix B "Field Encoding in VMCS"). The encoding itself
//! says the field's width and kind (SDM vol. 3C "Organization of VMCS Data", table "Structure
//! of VMCS Component Encoding"), so a typed [`VmcsField`] with [`VmcsField::width`] and
//! [`VmcsField::kind`] lets the backend check at compile time that, say, `GUEST_RIP` is a
//! natural-width guest-state field, and lets tests check every encoding for reserved bits.
//!
//! Exit reasons: SDM vol. 3D appendix C "VMX Basic Exit Reasons". VM-instruction errors: SDM
//! vol. 3C "VM Instruction Error Numbers" (section 31.4 in the 2016-2022 editions).
#![forbid(unsafe_code)]

/// Width of a VMCS field, encoding bits 14:13.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Width {
    /// 16-bit.
    Bits16,
    /// 64-bit (accessible as a whole, or as two 32-bit halves on 32-bit hosts).
    Bits64,
    /// 32-bit.
    Bits32,
    /// Natural width: 64 bits on processors that support Intel 64.
    Natural,
}

/// Kind of a VMCS field, encoding bits 11:10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldKind {
    /// VM-execution, VM-exit and VM-entry control fields.
    Control,
    /// Read-only data fields (VM-exit information, the VM-instruction error).
    ReadOnly,
    /// Guest-state area.
    Guest,
    /// Host-state area.
    Host,
}

macro_rules! vmcs_fields {
    ($( $(#[$m:meta])* $name:ident = $enc:literal, )*) => {
        /// A VMCS field, by its encoding (SDM vol. 3D appendix B). 64-bit fields are listed by
        /// their "full" encoding (access type 0); the high half is `encoding | 1`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        #[allow(missing_docs)]
        pub enum VmcsField {
            $( $(#[$m])* $name = $enc, )*
        }

        impl VmcsField {
            /// Every field this crate names, in encoding order of the table above.
            pub const ALL: &'static [VmcsField] = &[ $( VmcsField::$name, )* ];

            /// The field with this (full) encoding, if this crate names it.
            pub const fn from_encoding(encoding: u32) -> Option<Self> {
                match encoding {
                    $( $enc => Some(VmcsField::$name), )*
                    _ => None,
                }
            }
        }
    };
}

vmcs_fields! {
    // 16-bit control fields.
    /// Virtual-processor identifier (VPID).
    Vpid = 0x0000,
    /// Posted-interrupt notification vector.
    PostedInterruptNotificationVector = 0x0002,
    /// EPTP index.
    EptpIndex = 0x0004,
    // 16-bit guest-state fields.
    GuestEsSelector = 0x0800,
    GuestCsSelector = 0x0802,
    GuestSsSelector = 0x0804,
    GuestDsSelector = 0x0806,
    GuestFsSelector = 0x0808,
    GuestGsSelector = 0x080A,
    GuestLdtrSelector = 0x080C,
    GuestTrSelector = 0x080E,
    /// Guest interrupt status (virtual-interrupt delivery).
    GuestInterruptStatus = 0x0810,
    /// PML index.
    PmlIndex = 0x0812,
    // 16-bit host-state fields.
    HostEsSelector = 0x0C00,
    HostCsSelector = 0x0C02,
    HostSsSelector = 0x0C04,
    HostDsSelector = 0x0C06,
    HostFsSelector = 0x0C08,
    HostGsSelector = 0x0C0A,
    HostTrSelector = 0x0C0C,
    // 64-bit control fields.
    IoBitmapA = 0x2000,
    IoBitmapB = 0x2002,
    MsrBitmap = 0x2004,
    VmExitMsrStoreAddr = 0x2006,
    VmExitMsrLoadAddr = 0x2008,
    VmEntryMsrLoadAddr = 0x200A,
    ExecutiveVmcsPointer = 0x200C,
    PmlAddress = 0x200E,
    TscOffset = 0x2010,
    VirtualApicAddress = 0x2012,
    ApicAccessAddress = 0x2014,
    PostedInterruptDescriptor = 0x2016,
    VmFunctionControls = 0x2018,
    /// EPT pointer (see [`crate::ept::eptp`]).
    EptPointer = 0x201A,
    EoiExitBitmap0 = 0x201C,
    EoiExitBitmap1 = 0x201E,
    EoiExitBitmap2 = 0x2020,
    EoiExitBitmap3 = 0x2022,
    EptpListAddress = 0x2024,
    VmreadBitmap = 0x2026,
    VmwriteBitmap = 0x2028,
    VeInformationAddress = 0x202A,
    XssExitingBitmap = 0x202C,
    EnclsExitingBitmap = 0x202E,
    TscMultiplier = 0x2032,
    TertiaryProcBasedControls = 0x2034,
    // 64-bit read-only data field.
    /// Guest-physical address of an EPT violation or misconfiguration.
    GuestPhysicalAddress = 0x2400,
    // 64-bit guest-state fields.
    /// VMCS link pointer (all ones unless VMCS shadowing is used).
    VmcsLinkPointer = 0x2800,
    GuestIa32Debugctl = 0x2802,
    GuestIa32Pat = 0x2804,
    GuestIa32Efer = 0x2806,
    GuestIa32PerfGlobalCtrl = 0x2808,
    GuestPdpte0 = 0x280A,
    GuestPdpte1 = 0x280C,
    GuestPdpte2 = 0x280E,
    GuestPdpte3 = 0x2810,
    GuestIa32Bndcfgs = 0x2812,
    GuestIa32RtitCtl = 0x2814,
    // 64-bit host-state fields.
    HostIa32Pat = 0x2C00,
    HostIa32Efer = 0x2C02,
    HostIa32PerfGlobalCtrl = 0x2C04,
    // 32-bit control fields.
    PinBasedControls = 0x4000,
    PrimaryProcBasedControls = 0x4002,
    ExceptionBitmap = 0x4004,
    PageFaultErrorCodeMask = 0x4006,
    PageFaultErrorCodeMatch = 0x4008,
    Cr3TargetCount = 0x400A,
    VmExitControls = 0x400C,
    VmExitMsrStoreCount = 0x400E,
    VmExitMsrLoadCount = 0x4010,
    VmEntryControls = 0x4012,
    VmEntryMsrLoadCount = 0x4014,
    /// VM-entry interruption-information (event injection).
    VmEntryInterruptionInfo = 0x4016,
    VmEntryExceptionErrorCode = 0x4018,
    VmEntryInstructionLength = 0x401A,
    TprThreshold = 0x401C,
    SecondaryProcBasedControls = 0x401E,
    PleGap = 0x4020,
    PleWindow = 0x4022,
    // 32-bit read-only data fields.
    /// VM-instruction error (valid after VMfailValid).
    VmInstructionError = 0x4400,
    ExitReason = 0x4402,
    VmExitInterruptionInfo = 0x4404,
    VmExitInterruptionErrorCode = 0x4406,
    IdtVectoringInfo = 0x4408,
    IdtVectoringErrorCode = 0x440A,
    VmExitInstructionLength = 0x440C,
    VmExitInstructionInfo = 0x440E,
    // 32-bit guest-state fields.
    GuestEsLimit = 0x4800,
    GuestCsLimit = 0x4802,
    GuestSsLimit = 0x4804,
    GuestDsLimit = 0x4806,
    GuestFsLimit = 0x4808,
    GuestGsLimit = 0x480A,
    GuestLdtrLimit = 0x480C,
    GuestTrLimit = 0x480E,
    GuestGdtrLimit = 0x4810,
    GuestIdtrLimit = 0x4812,
    GuestEsAccessRights = 0x4814,
    GuestCsAccessRights = 0x4816,
    GuestSsAccessRights = 0x4818,
    GuestDsAccessRights = 0x481A,
    GuestFsAccessRights = 0x481C,
    GuestGsAccessRights = 0x481E,
    GuestLdtrAccessRights = 0x4820,
    GuestTrAccessRights = 0x4822,
    GuestInterruptibilityState = 0x4824,
    GuestActivityState = 0x4826,
    GuestSmbase = 0x4828,
    GuestIa32SysenterCs = 0x482A,
    VmxPreemptionTimerValue = 0x482E,
    // 32-bit host-state field.
    HostIa32SysenterCs = 0x4C00,
    // Natural-width control fields.
    Cr0GuestHostMask = 0x6000,
    Cr4GuestHostMask = 0x6002,
    Cr0ReadShadow = 0x6004,
    Cr4ReadShadow = 0x6006,
    Cr3TargetValue0 = 0x6008,
    Cr3TargetValue1 = 0x600A,
    Cr3TargetValue2 = 0x600C,
    Cr3TargetValue3 = 0x600E,
    // Natural-width read-only data fields.
    ExitQualification = 0x6400,
    IoRcx = 0x6402,
    IoRsi = 0x6404,
    IoRdi = 0x6406,
    IoRip = 0x6408,
    GuestLinearAddress = 0x640A,
    // Natural-width guest-state fields.
    GuestCr0 = 0x6800,
    GuestCr3 = 0x6802,
    GuestCr4 = 0x6804,
    GuestEsBase = 0x6806,
    GuestCsBase = 0x6808,
    GuestSsBase = 0x680A,
    GuestDsBase = 0x680C,
    GuestFsBase = 0x680E,
    GuestGsBase = 0x6810,
    GuestLdtrBase = 0x6812,
    GuestTrBase = 0x6814,
    GuestGdtrBase = 0x6816,
    GuestIdtrBase = 0x6818,
    GuestDr7 = 0x681A,
    GuestRsp = 0x681C,
    GuestRip = 0x681E,
    GuestRflags = 0x6820,
    GuestPendingDebugExceptions = 0x6822,
    GuestIa32SysenterEsp = 0x6824,
    GuestIa32SysenterEip = 0x6826,
    // Natural-width host-state fields.
    HostCr0 = 0x6C00,
    HostCr3 = 0x6C02,
    HostCr4 = 0x6C04,
    HostFsBase = 0x6C06,
    HostGsBase = 0x6C08,
    HostTrBase = 0x6C0A,
    HostGdtrBase = 0x6C0C,
    HostIdtrBase = 0x6C0E,
    HostIa32SysenterEsp = 0x6C10,
    HostIa32SysenterEip = 0x6C12,
    HostRsp = 0x6C14,
    HostRip = 0x6C16,
}

/// Bits of an encoding that must be 0: bit 12 and bits 31:15.
pub const ENCODING_RESERVED: u32 = 0xFFFF_9000;

impl VmcsField {
    /// The encoding VMREAD/VMWRITE take.
    #[inline]
    pub const fn encoding(self) -> u32 {
        self as u32
    }

    /// The encoding of the high 32 bits of a 64-bit field (access type 1), `None` otherwise.
    pub const fn high(self) -> Option<u32> {
        match self.width() {
            Width::Bits64 => Some(self.encoding() | 1),
            _ => None,
        }
    }

    /// The field's width, from encoding bits 14:13.
    pub const fn width(self) -> Width {
        match (self.encoding() >> 13) & 3 {
            0 => Width::Bits16,
            1 => Width::Bits64,
            2 => Width::Bits32,
            _ => Width::Natural,
        }
    }

    /// The field's kind, from encoding bits 11:10.
    pub const fn kind(self) -> FieldKind {
        match (self.encoding() >> 10) & 3 {
            0 => FieldKind::Control,
            1 => FieldKind::ReadOnly,
            2 => FieldKind::Guest,
            _ => FieldKind::Host,
        }
    }

    /// The field's index, encoding bits 9:1.
    pub const fn index(self) -> u32 {
        (self.encoding() >> 1) & 0x1FF
    }

    /// Bits of the value that the field can hold (VMWRITE ignores the rest of a 16- or 32-bit
    /// field's source operand; writing them anyway usually means a bug).
    pub const fn value_mask(self) -> u64 {
        match self.width() {
            Width::Bits16 => 0xFFFF,
            Width::Bits32 => 0xFFFF_FFFF,
            Width::Bits64 | Width::Natural => u64::MAX,
        }
    }
}

// Compile-time checks of the encoding rules on a few fields the backend relies on.
const _: () = assert!(matches!(VmcsField::GuestRip.width(), Width::Natural));
const _: () = assert!(matches!(VmcsField::GuestRip.kind(), FieldKind::Guest));
const _: () = assert!(matches!(VmcsField::HostRsp.kind(), FieldKind::Host));
const _: () = assert!(matches!(VmcsField::EptPointer.width(), Width::Bits64));
const _: () = assert!(matches!(VmcsField::EptPointer.kind(), FieldKind::Control));
const _: () = assert!(matches!(VmcsField::ExitReason.kind(), FieldKind::ReadOnly));
const _: () = assert!(matches!(VmcsField::ExitReason.width(), Width::Bits32));
const _: () = assert!(matches!(VmcsField::GuestCsSelector.width(), Width::Bits16));
const _: () = assert!(matches!(VmcsField::VmcsLinkPointer.high(), Some(0x2801)));
const _: () = assert!(matches!(
    VmcsField::GuestCsAccessRights.width(),
    Width::Bits32
));

/// The basic exit reason, bits 15:0 of the exit-reason field (SDM vol. 3D appendix C).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// 0: exception or NMI (interruption information says which).
    ExceptionOrNmi,
    /// 1: external interrupt.
    ExternalInterrupt,
    /// 2: triple fault.
    TripleFault,
    /// 3: INIT signal.
    InitSignal,
    /// 4: start-up IPI (SIPI).
    StartupIpi,
    /// 5: I/O system-management interrupt.
    IoSmi,
    /// 6: other SMI.
    OtherSmi,
    /// 7: interrupt window.
    InterruptWindow,
    /// 8: NMI window.
    NmiWindow,
    /// 9: task switch.
    TaskSwitch,
    /// 10: CPUID.
    Cpuid,
    /// 11: GETSEC.
    Getsec,
    /// 12: HLT.
    Hlt,
    /// 13: INVD.
    Invd,
    /// 14: INVLPG.
    Invlpg,
    /// 15: RDPMC.
    Rdpmc,
    /// 16: RDTSC.
    Rdtsc,
    /// 17: RSM.
    Rsm,
    /// 18: VMCALL.
    Vmcall,
    /// 19: VMCLEAR.
    Vmclear,
    /// 20: VMLAUNCH.
    Vmlaunch,
    /// 21: VMPTRLD.
    Vmptrld,
    /// 22: VMPTRST.
    Vmptrst,
    /// 23: VMREAD.
    Vmread,
    /// 24: VMRESUME.
    Vmresume,
    /// 25: VMWRITE.
    Vmwrite,
    /// 26: VMXOFF.
    Vmxoff,
    /// 27: VMXON.
    Vmxon,
    /// 28: control-register access.
    CrAccess,
    /// 29: MOV DR.
    DrAccess,
    /// 30: I/O instruction.
    IoInstruction,
    /// 31: RDMSR.
    Rdmsr,
    /// 32: WRMSR.
    Wrmsr,
    /// 33: VM-entry failure due to invalid guest state.
    EntryFailureGuestState,
    /// 34: VM-entry failure due to MSR loading.
    EntryFailureMsrLoading,
    /// 36: MWAIT.
    Mwait,
    /// 37: monitor trap flag.
    MonitorTrapFlag,
    /// 39: MONITOR.
    Monitor,
    /// 40: PAUSE.
    Pause,
    /// 41: VM-entry failure due to a machine-check event.
    EntryFailureMachineCheck,
    /// 43: TPR below threshold.
    TprBelowThreshold,
    /// 44: APIC access.
    ApicAccess,
    /// 45: virtualized EOI.
    VirtualizedEoi,
    /// 46: access to GDTR or IDTR.
    GdtrIdtrAccess,
    /// 47: access to LDTR or TR.
    LdtrTrAccess,
    /// 48: EPT violation.
    EptViolation,
    /// 49: EPT misconfiguration.
    EptMisconfig,
    /// 50: INVEPT.
    Invept,
    /// 51: RDTSCP.
    Rdtscp,
    /// 52: VMX-preemption timer expired.
    PreemptionTimer,
    /// 53: INVVPID.
    Invvpid,
    /// 54: WBINVD or WBNOINVD.
    Wbinvd,
    /// 55: XSETBV.
    Xsetbv,
    /// 56: APIC write.
    ApicWrite,
    /// 57: RDRAND.
    Rdrand,
    /// 58: INVPCID.
    Invpcid,
    /// 59: VMFUNC.
    Vmfunc,
    /// 60: ENCLS.
    Encls,
    /// 61: RDSEED.
    Rdseed,
    /// 62: page-modification log full.
    PmlFull,
    /// 63: XSAVES.
    Xsaves,
    /// 64: XRSTORS.
    Xrstors,
    /// 65: PCONFIG.
    Pconfig,
    /// 66: SPP-related event.
    SppEvent,
    /// 67: UMWAIT.
    Umwait,
    /// 68: TPAUSE.
    Tpause,
    /// 69: LOADIWKEY.
    Loadiwkey,
    /// 70: ENCLV.
    Enclv,
    /// 72: ENQCMD PASID translation failure.
    EnqcmdPasidFailure,
    /// 73: ENQCMDS PASID translation failure.
    EnqcmdsPasidFailure,
    /// 74: bus lock.
    BusLock,
    /// 75: instruction timeout.
    InstructionTimeout,
    /// 76: SEAMCALL.
    Seamcall,
    /// 77: TDCALL.
    Tdcall,
    /// A basic exit reason this crate does not know; the raw value is kept.
    Unknown(u16),
}

macro_rules! exit_reason_table {
    ($($raw:literal => $name:ident,)*) => {
        impl ExitReason {
            /// Decode a basic exit reason (bits 15:0 of the exit-reason field).
            pub const fn from_basic(raw: u16) -> Self {
                match raw {
                    $( $raw => ExitReason::$name, )*
                    other => ExitReason::Unknown(other),
                }
            }

            /// The raw basic exit reason.
            pub const fn basic(self) -> u16 {
                match self {
                    $( ExitReason::$name => $raw, )*
                    ExitReason::Unknown(raw) => raw,
                }
            }
        }
    };
}

exit_reason_table! {
    0 => ExceptionOrNmi,
    1 => ExternalInterrupt,
    2 => TripleFault,
    3 => InitSignal,
    4 => StartupIpi,
    5 => IoSmi,
    6 => OtherSmi,
    7 => InterruptWindow,
    8 => NmiWindow,
    9 => TaskSwitch,
    10 => Cpuid,
    11 => Getsec,
    12 => Hlt,
    13 => Invd,
    14 => Invlpg,
    15 => Rdpmc,
    16 => Rdtsc,
    17 => Rsm,
    18 => Vmcall,
    19 => Vmclear,
    20 => Vmlaunch,
    21 => Vmptrld,
    22 => Vmptrst,
    23 => Vmread,
    24 => Vmresume,
    25 => Vmwrite,
    26 => Vmxoff,
    27 => Vmxon,
    28 => CrAccess,
    29 => DrAccess,
    30 => IoInstruction,
    31 => Rdmsr,
    32 => Wrmsr,
    33 => EntryFailureGuestState,
    34 => EntryFailureMsrLoading,
    36 => Mwait,
    37 => MonitorTrapFlag,
    39 => Monitor,
    40 => Pause,
    41 => EntryFailureMachineCheck,
    43 => TprBelowThreshold,
    44 => ApicAccess,
    45 => VirtualizedEoi,
    46 => GdtrIdtrAccess,
    47 => LdtrTrAccess,
    48 => EptViolation,
    49 => EptMisconfig,
    50 => Invept,
    51 => Rdtscp,
    52 => PreemptionTimer,
    53 => Invvpid,
    54 => Wbinvd,
    55 => Xsetbv,
    56 => ApicWrite,
    57 => Rdrand,
    58 => Invpcid,
    59 => Vmfunc,
    60 => Encls,
    61 => Rdseed,
    62 => PmlFull,
    63 => Xsaves,
    64 => Xrstors,
    65 => Pconfig,
    66 => SppEvent,
    67 => Umwait,
    68 => Tpause,
    69 => Loadiwkey,
    70 => Enclv,
    72 => EnqcmdPasidFailure,
    73 => EnqcmdsPasidFailure,
    74 => BusLock,
    75 => InstructionTimeout,
    76 => Seamcall,
    77 => Tdcall,
}

/// The full 32-bit exit-reason field (SDM vol. 3C "Basic VM-Exit Information", table "Format
/// of Exit Reason").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExitReasonField(pub u32);

impl ExitReasonField {
    /// Bit 27: the exit was incident to enclave mode.
    pub const ENCLAVE_MODE: u32 = 1 << 27;
    /// Bit 28: a monitor-trap-flag VM exit is pending.
    pub const PENDING_MTF: u32 = 1 << 28;
    /// Bit 29: VM exit from VMX root operation (SMM dual-monitor treatment only).
    pub const FROM_VMX_ROOT: u32 = 1 << 29;
    /// Bit 31: VM-entry failure (the guest never ran).
    pub const ENTRY_FAILURE: u32 = 1 << 31;

    /// The basic exit reason.
    pub const fn basic(self) -> ExitReason {
        ExitReason::from_basic(self.0 as u16)
    }

    /// Whether this reports a failed VM entry rather than a VM exit.
    pub const fn entry_failure(self) -> bool {
        self.0 & Self::ENTRY_FAILURE != 0
    }
}

/// VM-instruction error numbers, read from [`VmcsField::VmInstructionError`] after an
/// instruction reports VMfailValid (SDM vol. 3C "VM Instruction Error Numbers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmInstructionError {
    /// 1: VMCALL executed in VMX root operation.
    VmcallInRoot,
    /// 2: VMCLEAR with invalid physical address.
    VmclearInvalidAddress,
    /// 3: VMCLEAR with VMXON pointer.
    VmclearVmxonPointer,
    /// 4: VMLAUNCH with non-clear VMCS.
    VmlaunchNonClear,
    /// 5: VMRESUME with non-launched VMCS.
    VmresumeNonLaunched,
    /// 6: VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME).
    VmresumeAfterVmxoff,
    /// 7: VM entry with invalid control field(s).
    EntryInvalidControls,
    /// 8: VM entry with invalid host-state field(s).
    EntryInvalidHostState,
    /// 9: VMPTRLD with invalid physical address.
    VmptrldInvalidAddress,
    /// 10: VMPTRLD with VMXON pointer.
    VmptrldVmxonPointer,
    /// 11: VMPTRLD with incorrect VMCS revision identifier.
    VmptrldBadRevision,
    /// 12: VMREAD/VMWRITE from/to unsupported VMCS component.
    UnsupportedComponent,
    /// 13: VMWRITE to read-only VMCS component.
    VmwriteReadOnly,
    /// 15: VMXON executed in VMX root operation.
    VmxonInRoot,
    /// 16: VM entry with invalid executive-VMCS pointer.
    EntryInvalidExecutiveVmcs,
    /// 17: VM entry with non-launched executive VMCS.
    EntryNonLaunchedExecutiveVmcs,
    /// 18: VM entry with executive-VMCS pointer not VMXON pointer.
    EntryExecutiveVmcsNotVmxon,
    /// 19: VMCALL with non-clear VMCS.
    VmcallNonClear,
    /// 20: VMCALL with invalid VM-exit control fields.
    VmcallInvalidExitControls,
    /// 22: VMCALL with incorrect MSEG revision identifier.
    VmcallBadMsegRevision,
    /// 23: VMXOFF under dual-monitor treatment of SMIs and SMM.
    VmxoffDualMonitor,
    /// 24: VMCALL with invalid SMM-monitor features.
    VmcallInvalidSmmFeatures,
    /// 25: VM entry with invalid VM-execution control fields in executive VMCS.
    EntryInvalidExecutiveControls,
    /// 26: VM entry with events blocked by MOV SS.
    EntryBlockedByMovSs,
    /// 28: invalid operand to INVEPT/INVVPID.
    InvalidInveptInvvpidOperand,
    /// A number this crate does not know; the raw value is kept.
    Unknown(u32),
}

macro_rules! insn_error_table {
    ($($raw:literal => $name:ident,)*) => {
        impl VmInstructionError {
            /// Decode the VM-instruction error field.
            pub const fn from_raw(raw: u32) -> Self {
                match raw {
                    $( $raw => VmInstructionError::$name, )*
                    other => VmInstructionError::Unknown(other),
                }
            }

            /// The raw error number.
            pub const fn raw(self) -> u32 {
                match self {
                    $( VmInstructionError::$name => $raw, )*
                    VmInstructionError::Unknown(raw) => raw,
                }
            }
        }
    };
}

insn_error_table! {
    1 => VmcallInRoot,
    2 => VmclearInvalidAddress,
    3 => VmclearVmxonPointer,
    4 => VmlaunchNonClear,
    5 => VmresumeNonLaunched,
    6 => VmresumeAfterVmxoff,
    7 => EntryInvalidControls,
    8 => EntryInvalidHostState,
    9 => VmptrldInvalidAddress,
    10 => VmptrldVmxonPointer,
    11 => VmptrldBadRevision,
    12 => UnsupportedComponent,
    13 => VmwriteReadOnly,
    15 => VmxonInRoot,
    16 => EntryInvalidExecutiveVmcs,
    17 => EntryNonLaunchedExecutiveVmcs,
    18 => EntryExecutiveVmcsNotVmxon,
    19 => VmcallNonClear,
    20 => VmcallInvalidExitControls,
    22 => VmcallBadMsegRevision,
    23 => VmxoffDualMonitor,
    24 => VmcallInvalidSmmFeatures,
    25 => EntryInvalidExecutiveControls,
    26 => EntryBlockedByMovSs,
    28 => InvalidInveptInvvpidOperand,
}

/// How a VMX instruction failed (SDM vol. 3C "Conventions" of the VMX instruction reference:
/// VMfailInvalid sets CF, VMfailValid sets ZF and stores an error number in the current VMCS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmFail {
    /// VMfailInvalid: there is no current VMCS to hold an error number.
    Invalid,
    /// VMfailValid with the VM-instruction error read from the current VMCS.
    Valid(VmInstructionError),
}

impl VmFail {
    /// Classify the flags after a VMX instruction: `None` for VMsucceed.
    pub const fn from_flags(cf: bool, zf: bool, error: u32) -> Option<Self> {
        if cf {
            Some(VmFail::Invalid)
        } else if zf {
            Some(VmFail::Valid(VmInstructionError::from_raw(error)))
        } else {
            None
        }
    }

    /// A number for [`hv::virt::EnableError::Failed`] and friends: the VM-instruction error
    /// for VMfailValid, [`VMFAIL_INVALID_CODE`] for VMfailInvalid.
    pub const fn code(self) -> u32 {
        match self {
            VmFail::Invalid => VMFAIL_INVALID_CODE,
            VmFail::Valid(e) => e.raw(),
        }
    }
}

/// [`VmFail::code`] of VMfailInvalid (outside the range of VM-instruction error numbers).
pub const VMFAIL_INVALID_CODE: u32 = 0x100;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn encodings_are_well_formed_and_unique() {
        let mut seen = HashSet::new();
        for &f in VmcsField::ALL {
            let e = f.encoding();
            assert_eq!(e & ENCODING_RESERVED, 0, "{f:?} has reserved bits");
            assert_eq!(e & 1, 0, "{f:?} is listed by its full encoding");
            assert!(seen.insert(e), "{f:?} duplicated");
            assert_eq!(VmcsField::from_encoding(e), Some(f));
        }
        assert_eq!(VmcsField::from_encoding(0x6C18), None);
        assert_eq!(
            VmcsField::from_encoding(0x2801),
            None,
            "high halves are not fields"
        );
    }

    #[test]
    fn widths_and_kinds_from_encoding() {
        let table = [
            (VmcsField::Vpid, Width::Bits16, FieldKind::Control),
            (VmcsField::GuestTrSelector, Width::Bits16, FieldKind::Guest),
            (VmcsField::HostTrSelector, Width::Bits16, FieldKind::Host),
            (VmcsField::MsrBitmap, Width::Bits64, FieldKind::Control),
            (
                VmcsField::GuestPhysicalAddress,
                Width::Bits64,
                FieldKind::ReadOnly,
            ),
            (VmcsField::GuestIa32Efer, Width::Bits64, FieldKind::Guest),
            (VmcsField::HostIa32Efer, Width::Bits64, FieldKind::Host),
            (
                VmcsField::SecondaryProcBasedControls,
                Width::Bits32,
                FieldKind::Control,
            ),
            (
                VmcsField::VmInstructionError,
                Width::Bits32,
                FieldKind::ReadOnly,
            ),
            (
                VmcsField::GuestActivityState,
                Width::Bits32,
                FieldKind::Guest,
            ),
            (
                VmcsField::HostIa32SysenterCs,
                Width::Bits32,
                FieldKind::Host,
            ),
            (VmcsField::Cr4ReadShadow, Width::Natural, FieldKind::Control),
            (
                VmcsField::ExitQualification,
                Width::Natural,
                FieldKind::ReadOnly,
            ),
            (VmcsField::GuestCr3, Width::Natural, FieldKind::Guest),
            (VmcsField::HostRip, Width::Natural, FieldKind::Host),
        ];
        for (f, w, k) in table {
            assert_eq!((f.width(), f.kind()), (w, k), "{f:?}");
        }
        assert_eq!(VmcsField::GuestIa32Efer.high(), Some(0x2807));
        assert_eq!(VmcsField::GuestRip.high(), None);
        assert_eq!(VmcsField::GuestCsSelector.value_mask(), 0xFFFF);
        assert_eq!(VmcsField::GuestCsLimit.value_mask(), 0xFFFF_FFFF);
        assert_eq!(VmcsField::GuestRip.index(), 0xF);
        // The 64-bit fields named here: 28 control, 1 read-only, 9 guest, 3 host.
        let n64 = VmcsField::ALL
            .iter()
            .filter(|f| f.width() == Width::Bits64)
            .count();
        assert_eq!(n64, 41);
    }

    #[test]
    fn exit_reasons_roundtrip() {
        let mut known = 0;
        for raw in 0..=80u16 {
            let r = ExitReason::from_basic(raw);
            assert_eq!(r.basic(), raw);
            if !matches!(r, ExitReason::Unknown(_)) {
                known += 1;
            }
        }
        // 35, 38, 42, 71 and 78+ are not assigned here.
        assert_eq!(known, 74);
        assert_eq!(ExitReason::from_basic(35), ExitReason::Unknown(35));
        let table = [
            (0, ExitReason::ExceptionOrNmi),
            (2, ExitReason::TripleFault),
            (10, ExitReason::Cpuid),
            (12, ExitReason::Hlt),
            (18, ExitReason::Vmcall),
            (30, ExitReason::IoInstruction),
            (31, ExitReason::Rdmsr),
            (32, ExitReason::Wrmsr),
            (33, ExitReason::EntryFailureGuestState),
            (48, ExitReason::EptViolation),
            (49, ExitReason::EptMisconfig),
            (52, ExitReason::PreemptionTimer),
        ];
        for (raw, r) in table {
            assert_eq!(ExitReason::from_basic(raw), r);
        }
        let f = ExitReasonField(0x8000_0021);
        assert!(f.entry_failure());
        assert_eq!(f.basic(), ExitReason::EntryFailureGuestState);
        assert!(!ExitReasonField(48).entry_failure());
    }

    #[test]
    fn instruction_errors() {
        for raw in 0..=30u32 {
            assert_eq!(VmInstructionError::from_raw(raw).raw(), raw);
        }
        assert_eq!(
            VmInstructionError::from_raw(7),
            VmInstructionError::EntryInvalidControls
        );
        assert_eq!(
            VmInstructionError::from_raw(8),
            VmInstructionError::EntryInvalidHostState
        );
        assert_eq!(
            VmInstructionError::from_raw(14),
            VmInstructionError::Unknown(14)
        );
        assert_eq!(VmFail::from_flags(false, false, 7), None);
        assert_eq!(VmFail::from_flags(true, false, 7), Some(VmFail::Invalid));
        assert_eq!(
            VmFail::from_flags(false, true, 5),
            Some(VmFail::Valid(VmInstructionError::VmresumeNonLaunched))
        );
        assert_eq!(VmFail::Invalid.code(), VMFAIL_INVALID_CODE);
        assert_eq!(VmFail::Valid(VmInstructionError::VmxonInRoot).code(), 15);
    }
}
