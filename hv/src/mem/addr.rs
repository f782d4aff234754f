//! Physical address newtypes, one copy for the core and both backends.
//!
//! Why: a guest-physical address used where a host-physical one is expected is the classic
//! hypervisor bug (it maps the wrong memory and nothing crashes until much later). Keeping
//! the two apart in the type system makes that a compile error (STYLE.md point 6). The SVM
//! and VMX crates re-export these, so an exit's GPA and a nested-table mapping use one type.

use core::fmt;

macro_rules! phys_addr {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw address.
            #[inline]
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// This address plus `offset`, or `None` on overflow.
            #[inline]
            pub const fn checked_add(self, offset: u64) -> Option<Self> {
                match self.0.checked_add(offset) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Whether the address is a multiple of `align` (a power of two).
            #[inline]
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

phys_addr!(
    /// A guest-physical address: what the guest puts in its page tables, translated by the
    /// nested (APM vol. 2 15.25) or extended (SDM vol. 3C 29.3) page tables.
    GuestPhys,
    "GuestPhys"
);
phys_addr!(
    /// A host-physical address: what VMRUN, VMXON, VMPTRLD, N_CR3, the EPTP and the I/O and
    /// MSR permission-map addresses take.
    HostPhys,
    "HostPhys"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newtypes_behave() {
        let g = GuestPhys(0x1000);
        assert!(g.is_aligned(0x1000));
        assert!(!GuestPhys(0x1001).is_aligned(0x1000));
        assert_eq!(g.checked_add(0x10), Some(GuestPhys(0x1010)));
        assert_eq!(HostPhys(u64::MAX).checked_add(1), None);
        assert_eq!(format!("{:?}", HostPhys(0x2000)), "HostPhys(0x2000)");
        assert_eq!(format!("{}", GuestPhys(0xFEE0_0000)), "0xfee00000");
    }
}
