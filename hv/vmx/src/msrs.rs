//! The MSRs a VMX guest owns: which ones pass through the MSR bitmap, and the VM-entry/VM-exit
//! MSR areas that switch those the VMCS has no field for.
//!
//! Why: a 64-bit guest kernel writes GS base before it has an IDT (Linux's `startup_64`), and
//! sets up SYSCALL (STAR, LSTAR, CSTAR, SFMASK) and SWAPGS (KERNEL_GS_BASE) as it boots; an
//! intercept that answers #GP there is a triple fault. FS and GS base and SYSENTER_CS/ESP/EIP
//! have guest-state fields that VM entry loads and VM exit saves (SDM vol. 3C 25.4.1-25.4.2,
//! 28.3.2, 29.3), so they only need to pass through the bitmap. The other five have none: they
//! pass through too, and the VM-entry MSR-load list loads the guest's values, the VM-exit
//! MSR-store list saves them back into the same list, and the VM-exit MSR-load list restores the
//! host's (SDM vol. 3C 25.7.2, 25.8.2, 28.4, 29.6). One list serves as entry-load and exit-store,
//! as KVM does.
//!
//! Bitmap layout (SDM vol. 3C 25.6.9): one 4 KiB page, read bitmap for MSRs 0-0x1FFF at byte 0,
//! for 0xC0000000-0xC0001FFF at 1024, write bitmaps at 2048 and 3072; a set bit exits.

/// MSRs with guest-state fields, passed through the bitmap.
pub const GUEST_STATE_MSRS: [u32; 5] = [
    0xC000_0100, // IA32_FS_BASE
    0xC000_0101, // IA32_GS_BASE
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
];

/// MSRs switched through the MSR areas, passed through the bitmap.
pub const SWITCHED_MSRS: [u32; 5] = [
    0xC000_0102, // IA32_KERNEL_GS_BASE
    0xC000_0081, // IA32_STAR
    0xC000_0082, // IA32_LSTAR
    0xC000_0083, // IA32_CSTAR
    0xC000_0084, // IA32_FMASK
];

/// Number of entries in each MSR area.
pub const SWITCHED: usize = SWITCHED_MSRS.len();

/// The position of `msr`'s read bit in the MSR bitmap as (byte, bit); its write bit is 2048
/// bytes further. `None`: outside both ranges (always exits).
pub const fn bitmap_position(msr: u32) -> Option<(usize, u8)> {
    let (base, index) = match msr {
        0..=0x1FFF => (0, msr),
        0xC000_0000..=0xC000_1FFF => (1024, msr - 0xC000_0000),
        _ => return None,
    };
    Some((base + index as usize / 8, (index % 8) as u8))
}

/// The MSR bitmap every guest shares: everything exits but [`GUEST_STATE_MSRS`] and
/// [`SWITCHED_MSRS`].
pub fn guest_bitmap() -> [u8; 4096] {
    let mut page = [0xFF; 4096];
    for msr in GUEST_STATE_MSRS.iter().chain(SWITCHED_MSRS.iter()) {
        if let Some((byte, bit)) = bitmap_position(*msr) {
            page[byte] &= !(1 << bit);
            page[byte + 2048] &= !(1 << bit);
        }
    }
    page
}

/// Whether the bitmap `page` makes an access to `msr` exit.
pub fn bitmap_intercepts(page: &[u8; 4096], msr: u32, write: bool) -> bool {
    match bitmap_position(msr) {
        Some((byte, bit)) => page[byte + if write { 2048 } else { 0 }] & (1 << bit) != 0,
        None => true,
    }
}

/// One entry of an MSR area (SDM vol. 3C table 25-15): index, reserved, value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MsrEntry {
    /// The MSR.
    pub index: u32,
    /// Must be zero.
    pub reserved: u32,
    /// Its value.
    pub value: u64,
}

/// The two MSR areas of one vCPU, 16-byte aligned as the lists must be: `guest` is the VM-entry
/// load and VM-exit store list, `host` the VM-exit load list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct MsrAreas {
    /// The guest's values of [`SWITCHED_MSRS`], in that order.
    pub guest: [MsrEntry; SWITCHED],
    /// The host's values, in the same order.
    pub host: [MsrEntry; SWITCHED],
}

impl MsrAreas {
    /// Guest values at reset (all zero, SDM vol. 3A table 10-1) and host values not read yet.
    pub const fn reset() -> MsrAreas {
        let mut guest = [MsrEntry {
            index: 0,
            reserved: 0,
            value: 0,
        }; SWITCHED];
        let mut i = 0;
        while i < SWITCHED {
            guest[i].index = SWITCHED_MSRS[i];
            i += 1;
        }
        MsrAreas { guest, host: guest }
    }

    /// Record the host's current values (`read(msr)`), on the CPU whose host state the VMCS
    /// gets.
    pub fn capture_host(&mut self, read: impl Fn(u32) -> u64) {
        for e in &mut self.host {
            e.value = read(e.index);
        }
    }

    /// Byte offset of the host list from the start of the areas.
    pub const HOST_OFFSET: u64 = (SWITCHED * core::mem::size_of::<MsrEntry>()) as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_passes_exactly_the_guest_owned_msrs() {
        let page = guest_bitmap();
        for msr in GUEST_STATE_MSRS.iter().chain(SWITCHED_MSRS.iter()) {
            assert!(!bitmap_intercepts(&page, *msr, false), "{msr:#x} read");
            assert!(!bitmap_intercepts(&page, *msr, true), "{msr:#x} write");
        }
        for msr in [
            0x10,
            0x1B,
            0x277,
            0x3A,
            0x6E0,
            0x800,
            0xC000_0080,
            0xC000_0103,
            0xC001_0000,
        ] {
            assert!(bitmap_intercepts(&page, msr, false), "{msr:#x}");
            assert!(bitmap_intercepts(&page, msr, true), "{msr:#x}");
        }
        // SDM layout: FS_BASE (0xC0000100) read bit at byte 1024 + 0x20, bit 0.
        assert_eq!(bitmap_position(0xC000_0100), Some((1024 + 0x20, 0)));
        assert_eq!(bitmap_position(0x175), Some((0x2E, 5)));
    }

    #[test]
    fn areas_are_sdm_shaped() {
        assert_eq!(core::mem::size_of::<MsrEntry>(), 16);
        assert_eq!(core::mem::align_of::<MsrAreas>(), 16);
        let mut a = MsrAreas::reset();
        assert!(
            a.guest
                .iter()
                .zip(SWITCHED_MSRS)
                .all(|(e, m)| e.index == m && e.value == 0)
        );
        a.capture_host(|m| u64::from(m) * 2);
        assert_eq!(
            a.host[2],
            MsrEntry {
                index: 0xC000_0082,
                reserved: 0,
                value: 0x1_8000_0104
            }
        );
        assert_eq!(MsrAreas::HOST_OFFSET, 80);
        assert_eq!(a.guest[0].value, 0, "the guest list is untouched");
    }
}
