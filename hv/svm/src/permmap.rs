//! I/O and MSR permission maps.
//!
//! Why: with the IOIO_PROT and MSR_PROT intercepts on, the CPU consults two bitmaps in host
//! memory to decide which port and MSR accesses exit (APM 15.10.1 "I/O Permissions Map",
//! 15.11 "MSR Intercepts"). Their layout is pure arithmetic, so it lives here, tested; the
//! backend only hands the physical addresses to the VMCB.
#![forbid(unsafe_code)]

/// IOPM size: 12 KiB, one bit per port plus a page so that multi-byte accesses at the top of
/// the port space are covered (APM 15.10.1).
pub const IOPM_SIZE: usize = 3 * 4096;
/// MSRPM size: 8 KiB, two bits (read, write) per MSR in three 8K-MSR ranges (APM 15.11).
pub const MSRPM_SIZE: usize = 2 * 4096;

/// The I/O permission map: a set bit makes accesses to that port exit.
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct Iopm(pub [u8; IOPM_SIZE]);

impl Iopm {
    /// Every port intercepted (the safe default: the guest has no direct port access).
    pub const fn intercept_all() -> Self {
        Self([0xFF; IOPM_SIZE])
    }

    /// Intercept (`true`) or pass through (`false`) accesses to `port`.
    pub fn set(&mut self, port: u16, intercept: bool) {
        let (byte, bit) = (port as usize / 8, port % 8);
        if intercept {
            self.0[byte] |= 1 << bit;
        } else {
            self.0[byte] &= !(1 << bit);
        }
    }

    /// Whether an access of `size` bytes at `port` exits: the CPU checks the bits of every
    /// port the access touches.
    pub fn intercepts(&self, port: u16, size: u8) -> bool {
        (0..size as usize).any(|i| {
            let p = port as usize + i;
            self.0[p / 8] & (1 << (p % 8)) != 0
        })
    }
}

/// Position of an MSR's *read* bit in the MSRPM as (byte offset, bit index); its write bit is
/// the next one up. `None` for MSRs outside the three mapped ranges, which always exit.
pub const fn msrpm_position(msr: u32) -> Option<(usize, u8)> {
    let (base, index) = match msr {
        0x0000_0000..=0x0000_1FFF => (0x0000, msr),
        0xC000_0000..=0xC000_1FFF => (0x0800, msr - 0xC000_0000),
        0xC001_0000..=0xC001_1FFF => (0x1000, msr - 0xC001_0000),
        _ => return None,
    };
    let bit = index as usize * 2;
    Some((base + bit / 8, (bit % 8) as u8))
}

/// An MSR outside the ranges the MSRPM can express.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsrNotMapped(pub u32);

/// The MSR permission map.
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct Msrpm(pub [u8; MSRPM_SIZE]);

/// The MSRs VMLOAD and VMSAVE switch (APM vol. 2 15.5.2: FS and GS base, KernelGsBase, STAR,
/// LSTAR, CSTAR, SFMASK, SYSENTER_CS/ESP/EIP). The VMRUN path VMSAVEs the host's and VMLOADs
/// the guest's around every entry, so the guest may own them without an intercept: a 64-bit
/// kernel writes GS base before it has an IDT (Linux's `startup_64`), and faulting there is a
/// triple fault.
pub const WORLD_SWITCHED_MSRS: [u32; 10] = [
    0xC000_0100, // FS_BASE
    0xC000_0101, // GS_BASE
    0xC000_0102, // KERNEL_GS_BASE
    0xC000_0081, // STAR
    0xC000_0082, // LSTAR
    0xC000_0083, // CSTAR
    0xC000_0084, // SFMASK
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
];

impl Msrpm {
    /// Every MSR access intercepted.
    pub const fn intercept_all() -> Self {
        Self([0xFF; MSRPM_SIZE])
    }

    /// Every MSR access intercepted except those of [`WORLD_SWITCHED_MSRS`].
    pub fn for_guests() -> Self {
        let mut m = Self::intercept_all();
        for msr in WORLD_SWITCHED_MSRS {
            // All of them lie in the mapped ranges (checked by a test).
            let _ = m.set(msr, false, false);
        }
        m
    }

    /// Set whether reads and writes of `msr` exit.
    pub fn set(&mut self, msr: u32, read: bool, write: bool) -> Result<(), MsrNotMapped> {
        let (byte, bit) = msrpm_position(msr).ok_or(MsrNotMapped(msr))?;
        let mut b = self.0[byte] & !(0b11 << bit);
        if read {
            b |= 1 << bit;
        }
        if write {
            b |= 2 << bit;
        }
        self.0[byte] = b;
        Ok(())
    }

    /// Whether a read (`write == false`) or write of `msr` exits.
    pub fn intercepts(&self, msr: u32, write: bool) -> bool {
        match msrpm_position(msr) {
            Some((byte, bit)) => self.0[byte] & (1 << (bit + write as u8)) != 0,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_own_the_world_switched_msrs_only() {
        let m = Msrpm::for_guests();
        for msr in WORLD_SWITCHED_MSRS {
            assert!(
                !m.intercepts(msr, false) && !m.intercepts(msr, true),
                "{msr:#x}"
            );
        }
        for msr in [
            0x10,
            0x1B,
            0x277,
            0xC000_0080,
            0xC000_0103,
            0xC001_0000,
            0x8000_0000,
        ] {
            assert!(
                m.intercepts(msr, false) && m.intercepts(msr, true),
                "{msr:#x}"
            );
        }
    }

    #[test]
    fn msrpm_positions() {
        assert_eq!(msrpm_position(0), Some((0, 0)));
        assert_eq!(msrpm_position(3), Some((0, 6)));
        assert_eq!(msrpm_position(4), Some((1, 0)));
        assert_eq!(msrpm_position(0x1FFF), Some((0x7FF, 6)));
        assert_eq!(msrpm_position(0xC000_0080), Some((0x800 + 0x20, 0)));
        assert_eq!(msrpm_position(0xC001_0117), Some((0x1000 + 0x45, 6)));
        assert_eq!(msrpm_position(0x2000), None);
        assert_eq!(msrpm_position(0x4000_0000), None);
    }

    #[test]
    fn msrpm_set_and_query() {
        let mut m = Box::new(Msrpm::intercept_all());
        m.set(0xC000_0100, false, true).unwrap(); // FS_BASE: reads free, writes exit
        assert!(!m.intercepts(0xC000_0100, false));
        assert!(m.intercepts(0xC000_0100, true));
        assert!(m.intercepts(0xC000_0101, false), "neighbour untouched");
        assert!(
            m.intercepts(0x4000_0000, false),
            "unmapped MSRs always exit"
        );
        assert_eq!(
            m.set(0x4000_0000, false, false),
            Err(MsrNotMapped(0x4000_0000))
        );
    }

    #[test]
    fn iopm_multi_byte() {
        let mut m = Box::new(Iopm([0; IOPM_SIZE]));
        m.set(0x3F9, true);
        assert!(!m.intercepts(0x3F8, 1));
        assert!(m.intercepts(0x3F8, 2), "word access touches 0x3F9");
        m.set(0xFFFF, true);
        assert!(m.intercepts(0xFFFE, 2));
        let all = Box::new(Iopm::intercept_all());
        assert!(all.intercepts(0x80, 1));
        m.set(0xFFFF, false);
        assert!(
            !m.intercepts(0xFFFF, 4),
            "bits past 0xFFFF in the third page are clear here"
        );
    }
}
