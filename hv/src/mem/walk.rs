//! The guest's own page-table walk: guest-virtual (linear) to guest-physical.
//!
//! Why: the instruction emulator, string I/O and instruction fetch without NRIPS get linear
//! addresses from the guest and must see memory exactly as the guest's paging does, faults
//! included: a wrong #PF error code sends a guest kernel down the wrong fault path (e.g. Linux
//! treats RSVD as page-table corruption and oopses). The walk is pure: it reads paging entries
//! through [`GuestMemory`], sets the accessed and dirty flags there as the hardware does
//! (SDM vol. 3A 4.8), and reports the #PF of SDM vol. 3A 4.7 when the access is refused.
//!
//! Modes (SDM vol. 3A 4.1.1, chosen by CR0.PG, CR4.PAE, EFER.LMA, CR4.LA57): paging off
//! (identity, 32-bit linear addresses), 32-bit paging (4 KiB pages, 4 MiB pages with CR4.PSE,
//! PSE-36 address bits 39:32 in PDE bits 20:13, SDM 4.3), PAE paging (4 PDPTEs, 2 MiB pages,
//! SDM 4.4), 4-level and 5-level paging (1 GiB and 2 MiB pages, SDM 4.5).
//!
//! Access rights (SDM 4.6) combine over all levels: writable only if every level has R/W=1,
//! user only if every level has U/S=1, non-executable if any level has XD=1 with EFER.NXE.
//! Supervisor writes honour CR0.WP; CR4.SMEP forbids supervisor fetches from user pages and
//! CR4.SMAP supervisor data accesses to user pages while RFLAGS.AC=0.
//!
//! Simplifications, all on paths a correct guest does not take: PAE PDPTEs are read from memory
//! at each walk (the CPU caches them at MOV CR3; a reserved bit there is a #GP at that time,
//! here a #PF with RSVD); non-canonical addresses are not checked (a #GP the caller raises
//! before translating); 1 GiB pages are always supported; A/D flags are set only when the whole
//! access is allowed (the SDM permits setting them for faulting accesses, not requiring it),
//! by writing the entry's low byte alone so a concurrent update of the rest survives.

use core::cell::RefCell;

use super::{
    Access, GuestMemory, GuestPhys, GuestVirt, NotRam, PageFault, Translate, TranslateError,
};
use crate::vcpu::{
    CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_NXE,
    SystemRegisters,
};

/// #PF error code bit 0: the page was present (a protection or reserved-bit violation).
pub const PF_PRESENT: u32 = 1 << 0;
/// #PF error code bit 1: the access was a write.
pub const PF_WRITE: u32 = 1 << 1;
/// #PF error code bit 2: the access was a user-mode (CPL 3) access.
pub const PF_USER: u32 = 1 << 2;
/// #PF error code bit 3: a reserved bit was set in a paging-structure entry.
pub const PF_RSVD: u32 = 1 << 3;
/// #PF error code bit 4: the access was an instruction fetch (reported only with PAE-style
/// paging and EFER.NXE, or with CR4.SMEP).
pub const PF_FETCH: u32 = 1 << 4;

/// RFLAGS.AC (alignment check; with CR4.SMAP, allows supervisor access to user pages).
pub const RFLAGS_AC: u64 = 1 << 18;

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;

/// The guest's paging mode (SDM vol. 3A table 4-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// CR0.PG = 0: linear = physical (32 bits).
    Off,
    /// 32-bit paging (CR4.PAE = 0).
    Bits32,
    /// PAE paging (CR4.PAE = 1, EFER.LMA = 0).
    Pae,
    /// 4-level paging (EFER.LMA = 1).
    Level4,
    /// 5-level paging (EFER.LMA = 1, CR4.LA57 = 1).
    Level5,
}

/// The page size a translation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// 4 KiB.
    Size4K,
    /// 2 MiB (PAE / 4-level PDE).
    Size2M,
    /// 4 MiB (32-bit PDE with CR4.PSE).
    Size4M,
    /// 1 GiB (4-level PDPTE).
    Size1G,
}

impl PageSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size4M => 1 << 22,
            PageSize::Size1G => 1 << 30,
        }
    }
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The guest-physical address of the byte.
    pub gpa: GuestPhys,
    /// The page it lies in.
    pub size: PageSize,
    /// Combined R/W of all levels.
    pub writable: bool,
    /// Combined U/S of all levels.
    pub user: bool,
    /// Executable (no XD at any level, or NXE off).
    pub executable: bool,
}

impl Translation {
    /// Bytes from the translated address to the end of its page (at least 1).
    pub const fn bytes_to_page_end(&self) -> u64 {
        let mask = self.size.bytes() - 1;
        self.size.bytes() - (self.gpa.0 & mask)
    }
}

/// What the walk needs from the vCPU: the paging controls, the physical-address width and
/// RFLAGS.AC (for SMAP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Paging {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER (the guest's view).
    pub efer: u64,
    /// MAXPHYADDR: CPUID 0x80000008 EAX[7:0] as the guest sees it (32..=52).
    pub phys_bits: u8,
    /// RFLAGS.AC: with CR4.SMAP, supervisor data accesses to user pages are allowed.
    pub ac: bool,
}

impl Paging {
    /// From the vCPU's system registers, with RFLAGS.AC = 0.
    pub const fn new(sys: &SystemRegisters, phys_bits: u8) -> Self {
        Self {
            cr0: sys.cr0,
            cr3: sys.cr3,
            cr4: sys.cr4,
            efer: sys.efer,
            phys_bits,
            ac: false,
        }
    }

    /// The same with RFLAGS.AC taken from `rflags`.
    pub const fn with_rflags(mut self, rflags: u64) -> Self {
        self.ac = rflags & RFLAGS_AC != 0;
        self
    }

    /// Which paging mode the controls select.
    pub const fn mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 {
            PagingMode::Off
        } else if self.cr4 & CR4_PAE == 0 {
            PagingMode::Bits32
        } else if self.efer & EFER_LMA == 0 {
            PagingMode::Pae
        } else if self.cr4 & CR4_LA57 != 0 {
            PagingMode::Level5
        } else {
            PagingMode::Level4
        }
    }

    const fn nxe(&self) -> bool {
        self.efer & EFER_NXE != 0
    }

    /// Bits [phys_bits, top) of an entry: reserved address bits.
    const fn addr_reserved(&self, top: u32) -> u64 {
        let m = clamp_bits(self.phys_bits);
        if m >= top {
            0
        } else {
            ((1u64 << (top - m)) - 1) << m
        }
    }
}

const fn clamp_bits(b: u8) -> u32 {
    if b < 32 {
        32
    } else if b > 52 {
        52
    } else {
        b as u32
    }
}

/// One entry the walk used: where it lives, its size and value.
#[derive(Clone, Copy)]
struct Used {
    at: GuestPhys,
    value: u64,
    leaf: bool,
    /// PAE PDPTEs have no accessed flag.
    has_a: bool,
}

enum Fail {
    NotPresent,
    Reserved,
    Table(NotRam),
}

fn read_entry<M: GuestMemory + ?Sized>(
    mem: &M,
    at: u64,
    wide: bool,
) -> Result<(GuestPhys, u64), Fail> {
    let gpa = GuestPhys(at);
    let mut b = [0u8; 8];
    let n = if wide { 8 } else { 4 };
    mem.read(gpa, &mut b[..n]).map_err(Fail::Table)?;
    Ok((gpa, u64::from_le_bytes(b)))
}

/// Walk the tables (no permission checks, no A/D): the entries used, the page size, and the
/// physical address.
fn lookup<M: GuestMemory + ?Sized>(
    p: &Paging,
    mem: &M,
    va: u64,
    used: &mut [Option<Used>; 5],
) -> Result<(GuestPhys, PageSize), Fail> {
    let mode = p.mode();
    let mut n = 0;
    let mut push = |u: Used| {
        used[n] = Some(u);
        n += 1;
    };
    match mode {
        PagingMode::Off => Ok((GuestPhys(va & 0xFFFF_FFFF), PageSize::Size4K)),
        PagingMode::Bits32 => {
            let va = va & 0xFFFF_FFFF;
            let pd = p.cr3 & 0xFFFF_F000;
            let (at, pde) = read_entry(mem, pd + ((va >> 22) & 0x3FF) * 4, false)?;
            if pde & P == 0 {
                return Err(Fail::NotPresent);
            }
            if pde & PS != 0 && p.cr4 & CR4_PSE != 0 {
                // PSE-36: PDE bits 20:13 are physical bits 39:32; bit 21 is reserved, and so are
                // the bits naming physical bits at or above MAXPHYADDR (at most 40 here).
                let m = clamp_bits(p.phys_bits).min(40);
                let mut rsvd = 1u64 << 21;
                if m < 40 {
                    rsvd |= ((1u64 << (40 - m)) - 1) << (13 + (m - 32));
                }
                if pde & rsvd != 0 {
                    return Err(Fail::Reserved);
                }
                push(Used {
                    at,
                    value: pde,
                    leaf: true,
                    has_a: true,
                });
                let base = (pde & 0xFFC0_0000) | (((pde >> 13) & 0xFF) << 32);
                return Ok((GuestPhys(base | (va & 0x3F_FFFF)), PageSize::Size4M));
            }
            push(Used {
                at,
                value: pde,
                leaf: false,
                has_a: true,
            });
            let (at, pte) = read_entry(mem, (pde & 0xFFFF_F000) + ((va >> 12) & 0x3FF) * 4, false)?;
            if pte & P == 0 {
                return Err(Fail::NotPresent);
            }
            push(Used {
                at,
                value: pte,
                leaf: true,
                has_a: true,
            });
            Ok((
                GuestPhys((pte & 0xFFFF_F000) | (va & 0xFFF)),
                PageSize::Size4K,
            ))
        }
        PagingMode::Pae | PagingMode::Level4 | PagingMode::Level5 => {
            let long = !matches!(mode, PagingMode::Pae);
            // Reserved address bits: 51:M in long mode (62:52 are ignored there), 62:M in PAE.
            let addr_rsvd = p.addr_reserved(if long { 52 } else { 63 });
            let xd_rsvd = if p.nxe() { 0 } else { XD };
            let addr_mask = ((1u64 << clamp_bits(p.phys_bits)) - 1) & !0xFFF;
            let (mut table, mut level) = match mode {
                PagingMode::Pae => {
                    let pdpt = p.cr3 & 0xFFFF_FFE0;
                    let va = va & 0xFFFF_FFFF;
                    let (at, e) = read_entry(mem, pdpt + ((va >> 30) & 3) * 8, true)?;
                    if e & P == 0 {
                        return Err(Fail::NotPresent);
                    }
                    // PDPTE: bits 2:1, 8:5 and 63:M reserved (SDM 4.4.1).
                    if e & (0b110 | 0x1E0 | XD | p.addr_reserved(63)) != 0 {
                        return Err(Fail::Reserved);
                    }
                    push(Used {
                        at,
                        value: e,
                        leaf: false,
                        has_a: false,
                    });
                    (e & addr_mask, 2u32)
                }
                PagingMode::Level5 => (p.cr3 & addr_mask, 5),
                _ => (p.cr3 & addr_mask, 4),
            };
            let va = if long { va } else { va & 0xFFFF_FFFF };
            loop {
                let shift = 12 + 9 * (level - 1);
                let (at, e) = read_entry(mem, table + ((va >> shift) & 0x1FF) * 8, true)?;
                if e & P == 0 {
                    return Err(Fail::NotPresent);
                }
                let mut rsvd = addr_rsvd | xd_rsvd;
                let large = e & PS != 0 && level > 1;
                if large && level >= 4 {
                    // PS in a PML4E/PML5E is reserved.
                    rsvd |= PS;
                } else if large {
                    // Bits from 13 up to the page's alignment (bit 12 is PAT).
                    rsvd |= ((1u64 << shift) - 1) & !0x1FFF;
                }
                if e & rsvd != 0 {
                    return Err(Fail::Reserved);
                }
                let leaf = level == 1 || large;
                push(Used {
                    at,
                    value: e,
                    leaf,
                    has_a: true,
                });
                if leaf {
                    let off = (1u64 << shift) - 1;
                    let size = match level {
                        1 => PageSize::Size4K,
                        2 => PageSize::Size2M,
                        _ => PageSize::Size1G,
                    };
                    return Ok((GuestPhys((e & addr_mask & !off) | (va & off)), size));
                }
                table = e & addr_mask;
                level -= 1;
            }
        }
    }
}

/// Translate `va` for `access` as the guest's paging would, setting accessed and dirty flags in
/// the guest's entries on success.
pub fn walk<M: GuestMemory + ?Sized>(
    p: &Paging,
    mem: &mut M,
    va: GuestVirt,
    access: Access,
) -> Result<Translation, TranslateError> {
    let mode = p.mode();
    let fetch_reported =
        (p.nxe() && !matches!(mode, PagingMode::Bits32 | PagingMode::Off)) || p.cr4 & CR4_SMEP != 0;
    let mut code = 0;
    if access.write {
        code |= PF_WRITE;
    }
    if access.user {
        code |= PF_USER;
    }
    if access.fetch && fetch_reported {
        code |= PF_FETCH;
    }
    let fault = |error_code| {
        TranslateError::PageFault(PageFault {
            address: va,
            error_code,
        })
    };
    let mut used = [None; 5];
    let (gpa, size) = match lookup(p, mem, va.0, &mut used) {
        Ok(v) => v,
        Err(Fail::NotPresent) => return Err(fault(code)),
        Err(Fail::Reserved) => return Err(fault(code | PF_PRESENT | PF_RSVD)),
        Err(Fail::Table(e)) => return Err(TranslateError::TableNotRam(e)),
    };
    if mode == PagingMode::Off {
        return Ok(Translation {
            gpa,
            size,
            writable: true,
            user: true,
            executable: true,
        });
    }
    // Combine the rights of every level (PAE PDPTEs carry none).
    let (mut writable, mut user, mut executable) = (true, true, true);
    for u in used.iter().flatten().filter(|u| u.has_a) {
        writable &= u.value & RW != 0;
        user &= u.value & US != 0;
        if p.nxe() && mode != PagingMode::Bits32 {
            executable &= u.value & XD == 0;
        }
    }
    let allowed = if access.user {
        user && (!access.write || writable) && (!access.fetch || executable)
    } else if access.fetch {
        executable && !(user && p.cr4 & CR4_SMEP != 0)
    } else {
        let smap_blocks = user && p.cr4 & CR4_SMAP != 0 && !p.ac;
        let wp_blocks = access.write && !writable && p.cr0 & CR0_WP != 0;
        !smap_blocks && !wp_blocks
    };
    if !allowed {
        return Err(fault(code | PF_PRESENT));
    }
    for u in used.iter().flatten().filter(|u| u.has_a) {
        let mut low = u.value as u8;
        low |= A as u8;
        if u.leaf && access.write {
            low |= D as u8;
        }
        if low != u.value as u8 {
            mem.write(u.at, &[low])
                .map_err(TranslateError::TableNotRam)?;
        }
    }
    Ok(Translation {
        gpa,
        size,
        writable,
        user,
        executable,
    })
}

/// The guest's paging over its memory: [`Translate`] (setting A/D flags, hence the memory is
/// held mutably behind a `RefCell`) and [`GuestMemory`] (passing through), so one value serves
/// a caller that needs both, such as string I/O or the instruction emulator.
pub struct PageWalker<'a, M: GuestMemory + ?Sized> {
    paging: Paging,
    mem: RefCell<&'a mut M>,
}

impl<M: GuestMemory + ?Sized> core::fmt::Debug for PageWalker<'_, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageWalker")
            .field("paging", &self.paging)
            .finish_non_exhaustive()
    }
}

impl<'a, M: GuestMemory + ?Sized> PageWalker<'a, M> {
    /// The walker for a vCPU's paging controls over `mem`.
    pub fn new(paging: Paging, mem: &'a mut M) -> Self {
        Self {
            paging,
            mem: RefCell::new(mem),
        }
    }

    /// The paging controls in use.
    pub const fn paging(&self) -> &Paging {
        &self.paging
    }

    /// The full translation result (page size and rights) for `va`.
    pub fn walk(&self, va: GuestVirt, access: Access) -> Result<Translation, TranslateError> {
        walk(&self.paging, &mut **self.mem.borrow_mut(), va, access)
    }
}

impl<M: GuestMemory + ?Sized> Translate for PageWalker<'_, M> {
    fn translate(&self, va: GuestVirt, access: Access) -> Result<GuestPhys, TranslateError> {
        self.walk(va, access).map(|t| t.gpa)
    }
}

impl<M: GuestMemory + ?Sized> GuestMemory for PageWalker<'_, M> {
    fn read(&self, gpa: GuestPhys, buf: &mut [u8]) -> Result<(), NotRam> {
        self.mem.borrow().read(gpa, buf)
    }

    fn write(&mut self, gpa: GuestPhys, data: &[u8]) -> Result<(), NotRam> {
        self.mem.get_mut().write(gpa, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::CR0_PE;

    const MEM: usize = 8 << 20;

    fn mem() -> Vec<u8> {
        vec![0; MEM]
    }
    fn put64(m: &mut [u8], at: u64, v: u64) {
        m[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(m: &mut [u8], at: u64, v: u32) {
        m[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn get64(m: &[u8], at: u64) -> u64 {
        u64::from_le_bytes(m[at as usize..at as usize + 8].try_into().unwrap())
    }
    fn get32(m: &[u8], at: u64) -> u32 {
        u32::from_le_bytes(m[at as usize..at as usize + 4].try_into().unwrap())
    }

    const PG: u64 = CR0_PG | CR0_PE;

    fn paging(cr0: u64, cr3: u64, cr4: u64, efer: u64) -> Paging {
        Paging {
            cr0,
            cr3,
            cr4,
            efer,
            phys_bits: 40,
            ac: false,
        }
    }
    fn long(cr3: u64) -> Paging {
        paging(PG | CR0_WP, cr3, CR4_PAE, EFER_LMA | EFER_NXE)
    }

    const USER_READ: Access = Access {
        write: false,
        fetch: false,
        user: true,
    };
    const USER_WRITE: Access = Access {
        write: true,
        fetch: false,
        user: true,
    };
    const USER_FETCH: Access = Access {
        write: false,
        fetch: true,
        user: true,
    };

    fn pf(p: &Paging, m: &mut [u8], va: u64, a: Access) -> u32 {
        match walk(p, m, GuestVirt(va), a) {
            Err(TranslateError::PageFault(f)) => {
                assert_eq!(f.address, GuestVirt(va));
                f.error_code
            }
            other => panic!("expected #PF at {va:#x}, got {other:?}"),
        }
    }
    fn ok(p: &Paging, m: &mut [u8], va: u64, a: Access) -> Translation {
        walk(p, m, GuestVirt(va), a).unwrap_or_else(|e| panic!("{va:#x}: {e:?}"))
    }

    /// 4-level tables: PML4 at 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000, covering
    /// VA 0..2 MiB with 4 KiB pages (PD[0] -> PT), `flags` on every level.
    fn level4(m: &mut [u8], flags: u64) {
        put64(m, 0x1000, 0x2000 | flags);
        put64(m, 0x2000, 0x3000 | flags);
        put64(m, 0x3000, 0x4000 | flags);
    }

    #[test]
    fn paging_off_is_identity_in_32_bits() {
        let mut m = mem();
        let p = paging(CR0_PE, 0, 0, 0);
        assert_eq!(p.mode(), PagingMode::Off);
        let t = ok(&p, &mut m, 0x1_0012_3456, Access::WRITE);
        assert_eq!(t.gpa, GuestPhys(0x0012_3456));
        assert!(m.iter().all(|&b| b == 0), "no memory touched");
    }

    #[test]
    fn level4_small_page_sets_accessed_and_dirty() {
        let mut m = mem();
        level4(&mut m, P | RW | US);
        put64(&mut m, 0x4000 + 5 * 8, 0x7_0000 | P | RW | US);
        let p = long(0x1000);
        assert_eq!(p.mode(), PagingMode::Level4);
        let t = ok(&p, &mut m, 0x5123, Access::READ);
        assert_eq!(t.gpa, GuestPhys(0x7_0123));
        assert_eq!(t.size, PageSize::Size4K);
        assert_eq!(t.bytes_to_page_end(), 0x1000 - 0x123);
        for at in [0x1000, 0x2000, 0x3000] {
            assert_eq!(get64(&m, at) & (A | D), A, "table entry at {at:#x}: A only");
        }
        assert_eq!(get64(&m, 0x4028) & (A | D), A, "read: leaf A, no D");
        ok(&p, &mut m, 0x5000, Access::WRITE);
        assert_eq!(get64(&m, 0x4028) & (A | D), A | D, "write: leaf D");
        assert_eq!(get64(&m, 0x3000) & D, 0, "D only in the leaf");
        // Address bits survive the flag update.
        assert_eq!(get64(&m, 0x4028) & !0xFFF, 0x7_0000);
    }

    #[test]
    fn level4_large_pages() {
        let mut m = mem();
        // PML4[0] -> PDPT; PDPT[1] = 1 GiB page at 0xC000_0000; PDPT[0] -> PD; PD[3] = 2 MiB
        // page at 0x0060_0000.
        put64(&mut m, 0x1000, 0x2000 | P | RW);
        put64(&mut m, 0x2008, 0xC000_0000 | P | RW | PS);
        put64(&mut m, 0x2000, 0x3000 | P | RW);
        put64(&mut m, 0x3018, 0x0060_0000 | P | PS);
        let p = long(0x1000);
        let t = ok(&p, &mut m, 0x4765_4321, Access::READ);
        assert_eq!((t.gpa, t.size), (GuestPhys(0xC765_4321), PageSize::Size1G));
        let t = ok(&p, &mut m, 0x0071_2345, Access::READ);
        assert_eq!((t.gpa, t.size), (GuestPhys(0x0071_2345), PageSize::Size2M));
        assert!(!t.writable);
        assert_eq!(get64(&m, 0x3018) & A, A);
        // Bits 20:13 of a 2 MiB leaf and 29:13 of a 1 GiB leaf are reserved; bit 12 (PAT) is not.
        put64(&mut m, 0x3018, 0x0060_0000 | P | PS | (1 << 12));
        ok(&p, &mut m, 0x0060_0000, Access::READ);
        put64(&mut m, 0x3018, 0x0060_0000 | P | PS | (1 << 13));
        assert_eq!(
            pf(&p, &mut m, 0x0060_0000, Access::READ),
            PF_PRESENT | PF_RSVD
        );
        put64(&mut m, 0x2008, 0xC000_0000 | P | PS | (1 << 29));
        assert_eq!(
            pf(&p, &mut m, 0x4000_0000, Access::WRITE),
            PF_PRESENT | PF_RSVD | PF_WRITE
        );
        // PS in a PML4E is reserved.
        put64(&mut m, 0x1000, 0x2000 | P | RW | PS);
        assert_eq!(pf(&p, &mut m, 0, Access::READ), PF_PRESENT | PF_RSVD);
    }

    #[test]
    fn not_present_error_codes() {
        let mut m = mem();
        level4(&mut m, P | RW | US);
        let p = long(0x1000);
        // PT empty: P=0; W/R, U/S and I/D describe the access.
        assert_eq!(pf(&p, &mut m, 0x5000, Access::READ), 0);
        assert_eq!(pf(&p, &mut m, 0x5000, Access::WRITE), PF_WRITE);
        assert_eq!(pf(&p, &mut m, 0x5000, USER_WRITE), PF_WRITE | PF_USER);
        assert_eq!(pf(&p, &mut m, 0x5000, USER_FETCH), PF_USER | PF_FETCH);
        // A missing upper level faults the same way.
        assert_eq!(pf(&p, &mut m, 0x80_0000_0000, Access::READ), 0);
        // No flags were set by the faulting walks.
        assert_eq!(get64(&m, 0x1000) & A, 0);
    }

    #[test]
    fn user_supervisor_and_write_protect() {
        let mut m = mem();
        level4(&mut m, P | RW | US);
        put64(&mut m, 0x4000, 0x10_0000 | P); // supervisor, read-only
        put64(&mut m, 0x4008, 0x11_0000 | P | US); // user, read-only
        put64(&mut m, 0x4010, 0x12_0000 | P | RW | US); // user, writable
        let mut p = long(0x1000);
        assert_eq!(pf(&p, &mut m, 0x0000, USER_READ), PF_PRESENT | PF_USER);
        assert_eq!(
            pf(&p, &mut m, 0x1000, USER_WRITE),
            PF_PRESENT | PF_USER | PF_WRITE
        );
        ok(&p, &mut m, 0x1000, USER_READ);
        ok(&p, &mut m, 0x2000, USER_WRITE);
        // Supervisor write to a read-only page: refused with CR0.WP, allowed without.
        assert_eq!(pf(&p, &mut m, 0x0000, Access::WRITE), PF_PRESENT | PF_WRITE);
        p.cr0 &= !CR0_WP;
        ok(&p, &mut m, 0x0000, Access::WRITE);
        ok(&p, &mut m, 0x1000, Access::WRITE);
        // A read-only upper level makes the whole range read-only for the user.
        put64(&mut m, 0x2000, 0x3000 | P | US);
        assert_eq!(
            pf(&p, &mut m, 0x2000, USER_WRITE),
            PF_PRESENT | PF_USER | PF_WRITE
        );
        // A supervisor upper level hides the page from the user.
        put64(&mut m, 0x2000, 0x3000 | P | RW);
        assert_eq!(pf(&p, &mut m, 0x2000, USER_READ), PF_PRESENT | PF_USER);
    }

    #[test]
    fn execute_disable() {
        let mut m = mem();
        level4(&mut m, P | RW | US);
        put64(&mut m, 0x4000, 0x10_0000 | P | RW | US | XD);
        let mut p = long(0x1000);
        assert_eq!(pf(&p, &mut m, 0, Access::FETCH), PF_PRESENT | PF_FETCH);
        assert_eq!(
            pf(&p, &mut m, 0, USER_FETCH),
            PF_PRESENT | PF_FETCH | PF_USER
        );
        assert!(!ok(&p, &mut m, 0, Access::READ).executable);
        // XD at an upper level counts too.
        put64(&mut m, 0x4000, 0x10_0000 | P | RW | US);
        put64(&mut m, 0x2000, 0x3000 | P | RW | US | XD);
        assert_eq!(pf(&p, &mut m, 0, Access::FETCH), PF_PRESENT | PF_FETCH);
        // Without EFER.NXE bit 63 is reserved, and I/D is not reported.
        p.efer &= !EFER_NXE;
        assert_eq!(pf(&p, &mut m, 0, Access::FETCH), PF_PRESENT | PF_RSVD);
        put64(&mut m, 0x2000, 0x3000 | P | RW | US);
        assert!(ok(&p, &mut m, 0, Access::FETCH).executable);
    }

    #[test]
    fn smep_and_smap() {
        let mut m = mem();
        level4(&mut m, P | RW | US);
        put64(&mut m, 0x4000, 0x10_0000 | P | RW | US);
        let mut p = long(0x1000);
        ok(&p, &mut m, 0, Access::FETCH);
        ok(&p, &mut m, 0, Access::WRITE);
        p.cr4 |= CR4_SMEP;
        assert_eq!(pf(&p, &mut m, 0, Access::FETCH), PF_PRESENT | PF_FETCH);
        ok(&p, &mut m, 0, Access::READ);
        ok(&p, &mut m, 0, USER_FETCH);
        p.cr4 |= CR4_SMAP;
        assert_eq!(pf(&p, &mut m, 0, Access::READ), PF_PRESENT);
        assert_eq!(pf(&p, &mut m, 0, Access::WRITE), PF_PRESENT | PF_WRITE);
        let p = p.with_rflags(RFLAGS_AC);
        ok(&p, &mut m, 0, Access::WRITE);
        ok(&p, &mut m, 0, USER_WRITE);
        // A supervisor page is unaffected by either.
        put64(&mut m, 0x4008, 0x11_0000 | P | RW);
        let p = p.with_rflags(0);
        ok(&p, &mut m, 0x1000, Access::FETCH);
        ok(&p, &mut m, 0x1000, Access::WRITE);
    }

    #[test]
    fn physical_address_width() {
        let mut m = mem();
        level4(&mut m, P | RW | US);
        put64(&mut m, 0x4000, (1 << 39) | P | RW);
        let mut p = long(0x1000);
        p.phys_bits = 40;
        assert_eq!(
            ok(&p, &mut m, 0x10, Access::READ).gpa,
            GuestPhys((1 << 39) | 0x10)
        );
        p.phys_bits = 39;
        assert_eq!(pf(&p, &mut m, 0x10, Access::READ), PF_PRESENT | PF_RSVD);
        // Bits 62:52 are ignored in 4-level paging.
        p.phys_bits = 52;
        put64(&mut m, 0x4000, (0x7FF << 52) | 0x10_0000 | P | RW);
        assert_eq!(ok(&p, &mut m, 0x10, Access::READ).gpa, GuestPhys(0x10_0010));
    }

    #[test]
    fn five_level() {
        let mut m = mem();
        put64(&mut m, 0x5000, 0x1000 | P | RW); // PML5[0] -> PML4
        level4(&mut m, P | RW);
        put64(&mut m, 0x4000 + 8, 0x9000 | P | RW);
        let mut p = long(0x5000);
        p.cr4 |= CR4_LA57;
        assert_eq!(p.mode(), PagingMode::Level5);
        assert_eq!(ok(&p, &mut m, 0x1FFF, Access::READ).gpa, GuestPhys(0x9FFF));
        assert_eq!(get64(&m, 0x5000) & A, A);
        assert_eq!(pf(&p, &mut m, 1 << 48, Access::READ), 0);
    }

    #[test]
    fn pae_paging() {
        let mut m = mem();
        // CR3 = 0x1020 (32-byte aligned PDPT); PDPTE[1] -> PD at 0x3000.
        put64(&mut m, 0x1028, 0x3000 | P);
        put64(&mut m, 0x3000, 0x4000 | P | RW | US);
        put64(&mut m, 0x4000 + 2 * 8, 0x0012_3000 | P | RW | US);
        put64(&mut m, 0x3008, 0x0060_0000 | P | PS | XD);
        let p = paging(PG | CR0_WP, 0x1020, CR4_PAE, EFER_NXE);
        assert_eq!(p.mode(), PagingMode::Pae);
        let t = ok(&p, &mut m, 0x4000_2ABC, USER_WRITE);
        assert_eq!((t.gpa, t.size), (GuestPhys(0x0012_3ABC), PageSize::Size4K));
        assert_eq!(get64(&m, 0x1028), 0x3000 | P, "PDPTEs have no A flag");
        assert_eq!(get64(&m, 0x4010) & (A | D), A | D);
        let t = ok(&p, &mut m, 0x4030_0001, Access::READ);
        assert_eq!((t.gpa, t.size), (GuestPhys(0x0070_0001), PageSize::Size2M));
        assert_eq!(
            pf(&p, &mut m, 0x4030_0000, Access::FETCH),
            PF_PRESENT | PF_FETCH
        );
        // Not-present and reserved PDPTEs.
        assert_eq!(pf(&p, &mut m, 0x0000_0000, Access::WRITE), PF_WRITE);
        put64(&mut m, 0x1028, 0x3000 | P | RW);
        assert_eq!(
            pf(&p, &mut m, 0x4000_2000, Access::READ),
            PF_PRESENT | PF_RSVD
        );
        // Bits 62:M are reserved in PAE entries (unlike 4-level).
        put64(&mut m, 0x1028, 0x3000 | P);
        put64(&mut m, 0x4010, (1 << 52) | 0x0012_3000 | P | RW | US);
        assert_eq!(
            pf(&p, &mut m, 0x4000_2000, Access::READ),
            PF_PRESENT | PF_RSVD
        );
        // The upper 32 bits of the address do not select anything.
        put64(&mut m, 0x4010, 0x0012_3000 | P | RW | US);
        assert_eq!(
            ok(&p, &mut m, 0xFFFF_0000_4000_2000, Access::READ).gpa,
            GuestPhys(0x12_3000)
        );
    }

    #[test]
    fn bits32_paging() {
        let mut m = mem();
        // PD at 0x1000; PDE[1] -> PT at 0x2000; PTE[3] -> 0x0055_5000.
        put32(&mut m, 0x1004, 0x2000 | (P | RW | US) as u32);
        put32(&mut m, 0x200C, 0x0055_5000 | (P | US) as u32);
        let mut p = paging(PG | CR0_WP, 0x1000, 0, 0);
        assert_eq!(p.mode(), PagingMode::Bits32);
        let t = ok(&p, &mut m, 0x0040_3123, USER_READ);
        assert_eq!(t.gpa, GuestPhys(0x0055_5123));
        assert_eq!(get32(&m, 0x1004) & A as u32, A as u32);
        assert_eq!(get32(&m, 0x200C) & (A | D) as u32, A as u32);
        assert_eq!(
            pf(&p, &mut m, 0x0040_3000, USER_WRITE),
            PF_PRESENT | PF_WRITE | PF_USER
        );
        // No I/D bit in 32-bit paging without SMEP; with SMEP it is reported.
        assert_eq!(pf(&p, &mut m, 0x0080_0000, Access::FETCH), 0);
        p.cr4 |= CR4_SMEP;
        assert_eq!(pf(&p, &mut m, 0x0080_0000, Access::FETCH), PF_FETCH);
        assert_eq!(
            pf(&p, &mut m, 0x0040_3000, Access::FETCH),
            PF_PRESENT | PF_FETCH
        );
        p.cr4 &= !CR4_SMEP;
        // A PS PDE without CR4.PSE is a table pointer; with CR4.PSE it is a 4 MiB page.
        put32(&mut m, 0x1008, 0x0040_0000 | (P | RW | PS) as u32);
        put32(&mut m, 0x0040_0000 + 4, 0x0066_6000 | P as u32);
        assert_eq!(
            ok(&p, &mut m, 0x0080_1010, Access::READ).gpa,
            GuestPhys(0x0066_6010)
        );
        p.cr4 |= CR4_PSE;
        let t = ok(&p, &mut m, 0x0080_1010, Access::WRITE);
        assert_eq!((t.gpa, t.size), (GuestPhys(0x0040_1010), PageSize::Size4M));
        assert_eq!(get32(&m, 0x1008) & (A | D) as u32, (A | D) as u32);
        // PSE-36: PDE bits 20:13 are physical bits 39:32.
        put32(&mut m, 0x1008, 0x0040_0000 | (0x12 << 13) | (P | PS) as u32);
        assert_eq!(
            ok(&p, &mut m, 0x0080_0004, Access::READ).gpa,
            GuestPhys(0x12_0040_0004)
        );
        // ... limited by MAXPHYADDR (36: bits 20:17 reserved), and bit 21 is always reserved.
        p.phys_bits = 36;
        assert_eq!(
            pf(&p, &mut m, 0x0080_0000, Access::READ),
            PF_PRESENT | PF_RSVD
        );
        put32(&mut m, 0x1008, 0x0040_0000 | (0x2 << 13) | (P | PS) as u32);
        assert_eq!(
            ok(&p, &mut m, 0x0080_0000, Access::READ).gpa,
            GuestPhys(0x2_0040_0000)
        );
        put32(&mut m, 0x1008, 0x0040_0000 | (1 << 21) | (P | PS) as u32);
        assert_eq!(
            pf(&p, &mut m, 0x0080_0000, USER_READ),
            PF_PRESENT | PF_RSVD | PF_USER
        );
        // Bit 63 does not exist: no XD, fetches from any present page work.
        assert!(ok(&p, &mut m, 0x0040_3000, USER_FETCH).executable);
    }

    #[test]
    fn tables_outside_ram() {
        let mut m = mem();
        let p = long(MEM as u64);
        assert_eq!(
            walk(&p, &mut m[..], GuestVirt(0), Access::READ),
            Err(TranslateError::TableNotRam(NotRam {
                gpa: GuestPhys(MEM as u64)
            }))
        );
    }

    #[test]
    fn walker_translates_and_passes_memory_through() {
        let mut m = mem();
        level4(&mut m, P | RW | US);
        put64(&mut m, 0x4008, 0x10_0000 | P | RW | US);
        let sys = SystemRegisters {
            cr0: PG | CR0_WP,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LMA | EFER_NXE,
            ..SystemRegisters::default()
        };
        let mut w = PageWalker::new(Paging::new(&sys, 40), &mut m[..]);
        let gpa = w.translate(GuestVirt(0x1004), Access::WRITE).unwrap();
        assert_eq!(gpa, GuestPhys(0x10_0004));
        w.write(gpa, &[0xAB]).unwrap();
        let mut b = [0];
        w.read(GuestPhys(0x10_0004), &mut b).unwrap();
        assert_eq!(b, [0xAB]);
        assert_eq!(get64(&m, 0x4008) & (A | D), A | D);
        assert_eq!(m[0x10_0004], 0xAB);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// Random leaf flags over a fixed 4-level hierarchy: the walk agrees with a direct
        /// reading of SDM 4.6 for every access kind.
        fn model(leaf: u64, upper: u64, a: Access, cr0_wp: bool, smep: bool) -> bool {
            let w = leaf & upper & RW != 0;
            let u = leaf & upper & US != 0;
            let x = (leaf | upper) & XD == 0;
            match (a.user, a.fetch, a.write) {
                (true, true, _) => u && x,
                (true, false, true) => u && w,
                (true, false, false) => u,
                (false, true, _) => x && !(smep && u),
                (false, false, true) => w || !cr0_wp,
                (false, false, false) => true,
            }
        }

        proptest! {
            #[test]
            fn rights_match_the_manual(
                leaf_bits in 0u64..8, upper_bits in 0u64..8, xd_leaf: bool, xd_upper: bool,
                write: bool, fetch: bool, user: bool, wp: bool, smep: bool,
            ) {
                let leaf = P | (leaf_bits & (RW | US)) | if xd_leaf { XD } else { 0 };
                let upper = P | (upper_bits & (RW | US)) | if xd_upper { XD } else { 0 };
                let mut m = mem();
                level4(&mut m, upper);
                put64(&mut m, 0x4000, 0x10_0000 | leaf);
                let mut p = long(0x1000);
                if !wp { p.cr0 &= !CR0_WP; }
                if smep { p.cr4 |= CR4_SMEP; }
                let a = Access { write: write && !fetch, fetch, user };
                let r = walk(&p, &mut m[..], GuestVirt(0x123), a);
                if model(leaf, upper, a, wp, smep) {
                    prop_assert_eq!(r.map(|t| t.gpa), Ok(GuestPhys(0x10_0123)));
                    prop_assert_eq!(get64(&m, 0x4000) & D != 0, a.write);
                } else {
                    let mut code = PF_PRESENT;
                    if a.write { code |= PF_WRITE; }
                    if a.user { code |= PF_USER; }
                    if a.fetch { code |= PF_FETCH; }
                    prop_assert_eq!(
                        r,
                        Err(TranslateError::PageFault(PageFault {
                            address: GuestVirt(0x123),
                            error_code: code
                        }))
                    );
                    prop_assert_eq!(get64(&m, 0x4000) & A, 0);
                }
            }
        }
    }
}
