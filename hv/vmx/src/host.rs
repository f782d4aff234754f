//! The host-state area: what every VM exit loads.
//!
//! Why: VM exit does not return to the instruction after VMLAUNCH the way VMRUN returns after
//! #VMEXIT on SVM; it loads the *whole* host context from the VMCS (SDM vol. 3C "Loading Host
//! State"): CR0/CR3/CR4, RSP, RIP, the CS/SS/DS/ES/FS/GS/TR selectors, the FS/GS/TR/GDTR/IDTR
//! bases, the SYSENTER MSRs, and (with the matching exit controls) EFER and PAT. Anything wrong
//! there fails VM entry with "invalid host-state field(s)" (VM-instruction error 8), or worse,
//! "succeeds" and returns to a broken kernel. The kernel fills a [`HostState`] from its
//! registers; [`check_host_state`] applies the checks of SDM vol. 3C "Checks on Host Control
//! Registers, Debug Registers, and MSRs", "Checks on Host Segment and Descriptor-Table
//! Registers" and "Checks Related to Address-Space Size" (26.2.2-26.2.4 in the 2016-2022
//! editions). HOST_RSP and HOST_RIP are written by the world switch itself (`crate::hw`).
//!
//! Per-CPU and per-task values (Hermit): GS base points at the per-core data and FS base at
//! the running task's TLS, and both are *loaded from here* on every exit, so the kernel must
//! write the current values (IA32_GS_BASE, IA32_FS_BASE) before the first entry on a CPU and
//! again whenever they may have changed (a vCPU moved to another CPU, another task's TLS).
//! The same goes for TR base, GDTR base and IDTR base, which are per CPU. After an exit the CPU
//! also sets GDTR and IDTR limits to 0xFFFF, TR limit to 0x67 and LDTR to null; Hermit does
//! not rely on any of these. x87/SSE state and the other MSRs are untouched by VM exits.
#![forbid(unsafe_code)]

use crate::caps::fixed_violations;
use crate::controls::{ExitControls, VmxConfig};
use crate::guest::{CR4_PAE, EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE};
use crate::vmcs::VmcsField;

/// The host-state area without HOST_RSP and HOST_RIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HostState {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 (with VMXE).
    pub cr4: u64,
    /// CS selector.
    pub cs: u16,
    /// SS selector (may be 0 in a 64-bit host).
    pub ss: u16,
    /// DS selector.
    pub ds: u16,
    /// ES selector.
    pub es: u16,
    /// FS selector.
    pub fs: u16,
    /// GS selector.
    pub gs: u16,
    /// TR selector.
    pub tr: u16,
    /// FS base (Hermit: the task's TLS).
    pub fs_base: u64,
    /// GS base (Hermit: the per-core data).
    pub gs_base: u64,
    /// TR base (this CPU's TSS).
    pub tr_base: u64,
    /// GDTR base.
    pub gdtr_base: u64,
    /// IDTR base.
    pub idtr_base: u64,
    /// IA32_SYSENTER_CS.
    pub sysenter_cs: u32,
    /// IA32_SYSENTER_ESP.
    pub sysenter_esp: u64,
    /// IA32_SYSENTER_EIP.
    pub sysenter_eip: u64,
    /// IA32_EFER (loaded with "load IA32_EFER").
    pub efer: u64,
    /// IA32_PAT (loaded with "load IA32_PAT").
    pub pat: u64,
}

/// A host selector field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostSelector {
    /// CS.
    Cs,
    /// SS.
    Ss,
    /// DS.
    Ds,
    /// ES.
    Es,
    /// FS.
    Fs,
    /// GS.
    Gs,
    /// TR.
    Tr,
}

/// The first host-state check that fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostStateError {
    /// CR0 violates the fixed bits (the offending bits).
    Cr0Fixed {
        /// Offending bits.
        bits: u64,
    },
    /// CR4 violates the fixed bits (the offending bits; VMXE must be 1).
    Cr4Fixed {
        /// Offending bits.
        bits: u64,
    },
    /// CR3 has bits set beyond any physical-address width.
    Cr3Reserved,
    /// IA32_SYSENTER_ESP or _EIP not canonical.
    SysenterNotCanonical,
    /// IA32_PAT holds an invalid memory type.
    Pat {
        /// Index of the bad entry.
        entry: u8,
    },
    /// EFER has reserved bits set.
    EferReserved,
    /// EFER.LMA/LME do not match "host address-space size".
    EferMismatch,
    /// A selector has RPL or TI set.
    SelectorRplTi(HostSelector),
    /// CS or TR is null.
    NullSelector(HostSelector),
    /// A base address is not canonical.
    BaseNotCanonical(VmcsField),
    /// The host is not a 64-bit host ("host address-space size" clear or CR4.PAE clear).
    Not64Bit,
}

const fn canonical(v: u64) -> bool {
    (((v << 16) as i64) >> 16) as u64 == v
}

impl HostState {
    /// The VMWRITEs that load this state into the current VMCS (EFER and PAT only with their
    /// exit controls: the fields do not exist without them).
    pub fn fields(&self, cfg: &VmxConfig) -> impl Iterator<Item = (VmcsField, u64)> + use<> {
        use VmcsField as F;
        let efer = cfg.exit.contains(ExitControls::LOAD_EFER);
        let pat = cfg.exit.contains(ExitControls::LOAD_PAT);
        [
            (F::HostCr0, self.cr0),
            (F::HostCr3, self.cr3),
            (F::HostCr4, self.cr4),
            (F::HostCsSelector, self.cs as u64),
            (F::HostSsSelector, self.ss as u64),
            (F::HostDsSelector, self.ds as u64),
            (F::HostEsSelector, self.es as u64),
            (F::HostFsSelector, self.fs as u64),
            (F::HostGsSelector, self.gs as u64),
            (F::HostTrSelector, self.tr as u64),
            (F::HostFsBase, self.fs_base),
            (F::HostGsBase, self.gs_base),
            (F::HostTrBase, self.tr_base),
            (F::HostGdtrBase, self.gdtr_base),
            (F::HostIdtrBase, self.idtr_base),
            (F::HostIa32SysenterCs, self.sysenter_cs as u64),
            (F::HostIa32SysenterEsp, self.sysenter_esp),
            (F::HostIa32SysenterEip, self.sysenter_eip),
            (F::HostIa32Efer, self.efer),
            (F::HostIa32Pat, self.pat),
        ]
        .into_iter()
        .filter(move |(f, _)| match f {
            F::HostIa32Efer => efer,
            F::HostIa32Pat => pat,
            _ => true,
        })
    }
}

/// Check `h` as VM entry would for a CPU configured by `cfg`.
pub fn check_host_state(h: &HostState, cfg: &VmxConfig) -> Result<(), HostStateError> {
    use HostStateError as E;
    let bits = fixed_violations(h.cr0, cfg.cr0_fixed0, cfg.cr0_fixed1);
    if bits != 0 {
        return Err(E::Cr0Fixed { bits });
    }
    let bits = fixed_violations(h.cr4, cfg.cr4_fixed0, cfg.cr4_fixed1);
    if bits != 0 {
        return Err(E::Cr4Fixed { bits });
    }
    if h.cr3 >> 52 != 0 {
        return Err(E::Cr3Reserved);
    }
    if !canonical(h.sysenter_esp) || !canonical(h.sysenter_eip) {
        return Err(E::SysenterNotCanonical);
    }
    let long = cfg.exit.contains(ExitControls::HOST_ADDRESS_SPACE_SIZE);
    if cfg.exit.contains(ExitControls::LOAD_PAT) {
        for i in 0..8 {
            if !matches!((h.pat >> (8 * i)) & 0xFF, 0 | 1 | 4 | 5 | 6 | 7) {
                return Err(E::Pat { entry: i as u8 });
            }
        }
    }
    if cfg.exit.contains(ExitControls::LOAD_EFER) {
        if h.efer & !(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE) != 0 {
            return Err(E::EferReserved);
        }
        if (h.efer & EFER_LMA != 0) != long || (h.efer & EFER_LME != 0) != long {
            return Err(E::EferMismatch);
        }
    }
    for (sel, v) in [
        (HostSelector::Cs, h.cs),
        (HostSelector::Ss, h.ss),
        (HostSelector::Ds, h.ds),
        (HostSelector::Es, h.es),
        (HostSelector::Fs, h.fs),
        (HostSelector::Gs, h.gs),
        (HostSelector::Tr, h.tr),
    ] {
        if v & 7 != 0 {
            return Err(E::SelectorRplTi(sel));
        }
    }
    if h.cs == 0 {
        return Err(E::NullSelector(HostSelector::Cs));
    }
    if h.tr == 0 {
        return Err(E::NullSelector(HostSelector::Tr));
    }
    for (f, v) in [
        (VmcsField::HostFsBase, h.fs_base),
        (VmcsField::HostGsBase, h.gs_base),
        (VmcsField::HostTrBase, h.tr_base),
        (VmcsField::HostGdtrBase, h.gdtr_base),
        (VmcsField::HostIdtrBase, h.idtr_base),
    ] {
        if !canonical(v) {
            return Err(E::BaseNotCanonical(f));
        }
    }
    // Hermit runs in IA-32e mode: the exit must return to a 64-bit host with PAE paging.
    if !long || h.cr4 & CR4_PAE == 0 {
        return Err(E::Not64Bit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorded;

    fn cfg() -> VmxConfig {
        VmxConfig::derive(&recorded::BOCHS_HASWELL_4770.msrs).unwrap()
    }

    /// A Hermit-like host: kernel CS 0x08, data 0x10, TSS 0x28, per-core GS, TLS FS.
    fn hermit() -> HostState {
        HostState {
            cr0: 0x8001_0033,
            cr3: 0x20_1000,
            cr4: 0x0003_26A0,
            cs: 0x08,
            ss: 0x10,
            ds: 0x10,
            es: 0x10,
            fs: 0,
            gs: 0,
            tr: 0x28,
            fs_base: 0x7F00_1234_0000,
            gs_base: 0xFFFF_8000_0010_0000,
            tr_base: 0x40_2000,
            gdtr_base: 0x40_1000,
            idtr_base: 0x40_3000,
            sysenter_cs: 0,
            sysenter_esp: 0,
            sysenter_eip: 0,
            efer: 0xD01,
            pat: 0x0007_0406_0007_0406,
        }
    }

    #[test]
    fn hermit_host_passes() {
        assert_eq!(check_host_state(&hermit(), &cfg()), Ok(()));
        let fields: Vec<_> = hermit().fields(&cfg()).collect();
        assert_eq!(fields.len(), 20);
        assert!(fields.contains(&(VmcsField::HostGsBase, 0xFFFF_8000_0010_0000)));
        for (f, v) in &fields {
            assert_eq!(f.kind(), crate::vmcs::FieldKind::Host);
            assert_eq!(v & !f.value_mask(), 0, "{f:?}");
        }
        let mut c = cfg();
        c.exit.remove(ExitControls::LOAD_PAT);
        assert_eq!(hermit().fields(&c).count(), 19);
    }

    #[test]
    fn broken_hosts() {
        use HostStateError as E;
        type Break = fn(&mut HostState);
        let cases: &[(&str, Break, HostStateError)] = &[
            ("CR0.NE", |h| h.cr0 &= !0x20, E::Cr0Fixed { bits: 0x20 }),
            (
                "CR4.VMXE",
                |h| h.cr4 &= !0x2000,
                E::Cr4Fixed { bits: 0x2000 },
            ),
            ("CR3", |h| h.cr3 |= 1 << 63, E::Cr3Reserved),
            (
                "SYSENTER_ESP",
                |h| h.sysenter_esp = 1 << 47,
                E::SysenterNotCanonical,
            ),
            ("PAT", |h| h.pat |= 0x3 << 56, E::Pat { entry: 7 }),
            ("EFER reserved", |h| h.efer |= 1 << 12, E::EferReserved),
            ("EFER.LMA", |h| h.efer &= !EFER_LMA, E::EferMismatch),
            ("CS RPL", |h| h.cs |= 3, E::SelectorRplTi(HostSelector::Cs)),
            ("GS TI", |h| h.gs = 4, E::SelectorRplTi(HostSelector::Gs)),
            ("CS null", |h| h.cs = 0, E::NullSelector(HostSelector::Cs)),
            ("TR null", |h| h.tr = 0, E::NullSelector(HostSelector::Tr)),
            (
                "GS base",
                |h| h.gs_base = 0x8000_0000_0000_0000,
                E::BaseNotCanonical(VmcsField::HostGsBase),
            ),
            (
                "IDTR base",
                |h| h.idtr_base = 1 << 48,
                E::BaseNotCanonical(VmcsField::HostIdtrBase),
            ),
            ("PAE", |h| h.cr4 &= !CR4_PAE, E::Not64Bit),
        ];
        for (name, breakit, expected) in cases {
            let mut h = hermit();
            breakit(&mut h);
            assert_eq!(check_host_state(&h, &cfg()), Err(*expected), "{name}");
        }
        // A config without the 64-bit host exit control cannot return to Hermit.
        let mut c = cfg();
        c.exit
            .remove(ExitControls::HOST_ADDRESS_SPACE_SIZE | ExitControls::LOAD_EFER);
        assert_eq!(check_host_state(&hermit(), &c), Err(E::Not64Bit));
    }
}
