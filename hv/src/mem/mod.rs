//! Guest memory: address types, guest-physical access and guest-virtual translation.
//!
//! Why here: the instruction emulator, string I/O, instruction fetch without NRIPS, firmware
//! tables and boot loaders all read or write guest memory, and the first three also walk the
//! guest's own page tables. They share one vocabulary: [`GuestPhys`], [`GuestVirt`],
//! [`GuestMemory`] (bytes at guest-physical addresses, implemented by the kernel over a VM's
//! RAM and by a `Vec` in tests), and [`Translate`] (guest-virtual to guest-physical, with the
//! #PF the hardware would raise when the walk fails).

use core::fmt;

pub mod addr;
pub mod nested;
pub mod walk;

pub use addr::{GuestPhys, HostPhys};
pub use walk::{PageWalker, Paging};

/// A guest-virtual (linear) address: segment base plus offset, before the guest's paging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestVirt(pub u64);

impl fmt::Display for GuestVirt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A guest-physical access outside what [`GuestMemory`] backs (no RAM there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NotRam {
    /// The first address that is not RAM.
    pub gpa: GuestPhys,
}

/// Bytes at guest-physical addresses (guest RAM; MMIO is the devices' business).
pub trait GuestMemory {
    /// Read `buf.len()` bytes at `gpa`.
    fn read(&self, gpa: GuestPhys, buf: &mut [u8]) -> Result<(), NotRam>;
    /// Write `data` at `gpa`.
    fn write(&mut self, gpa: GuestPhys, data: &[u8]) -> Result<(), NotRam>;
}

impl GuestMemory for [u8] {
    fn read(&self, gpa: GuestPhys, buf: &mut [u8]) -> Result<(), NotRam> {
        let src = usize::try_from(gpa.0)
            .ok()
            .and_then(|s| self.get(s..s.checked_add(buf.len())?))
            .ok_or(NotRam { gpa })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, gpa: GuestPhys, data: &[u8]) -> Result<(), NotRam> {
        let dst = usize::try_from(gpa.0)
            .ok()
            .and_then(|s| self.get_mut(s..s.checked_add(data.len())?))
            .ok_or(NotRam { gpa })?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

/// What kind of access a translation is for (it decides the permission checks and the #PF
/// error code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    /// A write (else a read or fetch).
    pub write: bool,
    /// An instruction fetch.
    pub fetch: bool,
    /// A user-mode access (CPL 3) rather than supervisor.
    pub user: bool,
}

impl Access {
    /// A supervisor data read.
    pub const READ: Access = Access {
        write: false,
        fetch: false,
        user: false,
    };
    /// A supervisor data write.
    pub const WRITE: Access = Access {
        write: true,
        fetch: false,
        user: false,
    };
    /// A supervisor instruction fetch.
    pub const FETCH: Access = Access {
        write: false,
        fetch: true,
        user: false,
    };
}

/// A page fault the guest must see: the faulting linear address (CR2) and the error code
/// (SDM vol. 3A 4.7: P, W/R, U/S, RSVD, I/D bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageFault {
    /// The linear address, for CR2.
    pub address: GuestVirt,
    /// The #PF error code.
    pub error_code: u32,
}

/// Why a translation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TranslateError {
    /// The guest's paging refused the access: inject this #PF.
    PageFault(PageFault),
    /// A paging-structure entry lies outside guest RAM (the guest pointed CR3 or an entry at
    /// nothing): real hardware would read open bus; we stop the VM with the address.
    TableNotRam(NotRam),
}

/// Guest-virtual to guest-physical translation as the guest's paging does it.
pub trait Translate {
    /// Translate `va` for `access`.
    fn translate(&self, va: GuestVirt, access: Access) -> Result<GuestPhys, TranslateError>;
}
