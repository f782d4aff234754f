//! The neutral vCPU vocabulary: registers and segment state as the core sees them.
//!
//! Both backends read their hardware state (VMCB save area plus the saved GPRs; VMCS guest
//! fields) into these plain structures when an exit needs more than the exit information (the
//! instruction emulator, string I/O, injection decisions), and write changes back. Register
//! numbers follow the x86 encoding (SDM vol. 2A 2.1.5, "REG" field), so a decoder's register
//! index maps straight onto [`Gpr`].

/// A general-purpose register, numbered as in ModRM/REX encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Gpr {
    /// RAX.
    Rax = 0,
    /// RCX.
    Rcx = 1,
    /// RDX.
    Rdx = 2,
    /// RBX.
    Rbx = 3,
    /// RSP.
    Rsp = 4,
    /// RBP.
    Rbp = 5,
    /// RSI.
    Rsi = 6,
    /// RDI.
    Rdi = 7,
    /// R8.
    R8 = 8,
    /// R9.
    R9 = 9,
    /// R10.
    R10 = 10,
    /// R11.
    R11 = 11,
    /// R12.
    R12 = 12,
    /// R13.
    R13 = 13,
    /// R14.
    R14 = 14,
    /// R15.
    R15 = 15,
}

impl Gpr {
    /// Every register, in encoding order.
    pub const ALL: [Gpr; 16] = [
        Gpr::Rax,
        Gpr::Rcx,
        Gpr::Rdx,
        Gpr::Rbx,
        Gpr::Rsp,
        Gpr::Rbp,
        Gpr::Rsi,
        Gpr::Rdi,
        Gpr::R8,
        Gpr::R9,
        Gpr::R10,
        Gpr::R11,
        Gpr::R12,
        Gpr::R13,
        Gpr::R14,
        Gpr::R15,
    ];

    /// The register with encoding `n` (0-15).
    pub const fn from_index(n: u8) -> Option<Gpr> {
        if n < 16 {
            Some(Gpr::ALL[n as usize])
        } else {
            None
        }
    }
}

/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS.DF.
pub const RFLAGS_DF: u64 = 1 << 10;
/// RFLAGS.TF.
pub const RFLAGS_TF: u64 = 1 << 8;
/// CR0.PE.
pub const CR0_PE: u64 = 1;
/// CR0.WP.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.PG.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PSE.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57.
pub const CR4_LA57: u64 = 1 << 12;
/// CR4.SMEP.
pub const CR4_SMEP: u64 = 1 << 20;
/// CR4.SMAP.
pub const CR4_SMAP: u64 = 1 << 21;
/// EFER.LMA.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE.
pub const EFER_NXE: u64 = 1 << 11;

/// The general registers, RIP and RFLAGS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Registers {
    /// RAX..R15 in encoding order.
    pub gprs: [u64; 16],
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
}

impl Registers {
    /// One register.
    pub const fn get(&self, r: Gpr) -> u64 {
        self.gprs[r as usize]
    }

    /// Set one register (all 64 bits).
    pub fn set(&mut self, r: Gpr, value: u64) {
        self.gprs[r as usize] = value;
    }
}

/// A segment register as the hardware caches it. `attrs` uses the VMCB's packed 12-bit
/// attribute format (APM vol. 2 15.5.1): bits 0-3 type, 4 S, 5-6 DPL, 7 P, 8 AVL, 9 L, 10 D/B,
/// 11 G. The VMX backend converts its access-rights format to this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit in bytes (already scaled by G).
    pub limit: u32,
    /// Packed attributes.
    pub attrs: u16,
}

impl Segment {
    /// The L bit (64-bit code segment).
    pub const fn long(&self) -> bool {
        self.attrs & (1 << 9) != 0
    }

    /// The D/B bit (32-bit default operand size for code, 32-bit stack for SS).
    pub const fn default_big(&self) -> bool {
        self.attrs & (1 << 10) != 0
    }

    /// DPL.
    pub const fn dpl(&self) -> u8 {
        ((self.attrs >> 5) & 3) as u8
    }
}

/// Control registers, EFER and segments: what address translation and the emulator need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SystemRegisters {
    /// CR0.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER as the guest sees it (without EFER.SVME, which SVM needs set underneath).
    pub efer: u64,
    /// CS.
    pub cs: Segment,
    /// SS.
    pub ss: Segment,
    /// DS.
    pub ds: Segment,
    /// ES.
    pub es: Segment,
    /// FS.
    pub fs: Segment,
    /// GS.
    pub gs: Segment,
    /// Current privilege level (SVM: VMCB CPL; VMX: SS.DPL).
    pub cpl: u8,
}

impl SystemRegisters {
    /// Long mode active (EFER.LMA).
    pub const fn long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }

    /// Paging on (CR0.PG).
    pub const fn paging(&self) -> bool {
        self.cr0 & CR0_PG != 0
    }

    /// 64-bit mode: long mode and a 64-bit code segment.
    pub const fn mode64(&self) -> bool {
        self.long_mode() && self.cs.long()
    }
}

/// The state of a vCPU that the core reads and writes outside the exit information.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VcpuState {
    /// General registers.
    pub regs: Registers,
    /// Control registers and segments.
    pub sys: SystemRegisters,
}

pub mod emulation;
/// The Linux x86-64 boot protocol's entry state (`Documentation/arch/x86/boot.rst`, "64-bit
/// boot protocol"): long mode with the loader's identity map and GDT loaded, CS and the data
/// segments at the selectors it defines (`__BOOT_CS`, `__BOOT_DS`), RSI at the zero page. Both
/// backends' guest builders take it (`GuestMode::Linux64`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinuxEntry {
    /// Guest CR3 (the loader's identity map).
    pub cr3: u64,
    /// Entry point (`startup_64`).
    pub rip: u64,
    /// Initial stack pointer.
    pub rsp: u64,
    /// The zero page (`struct boot_params`).
    pub rsi: u64,
    /// GDTR base.
    pub gdt_base: u64,
    /// GDTR limit.
    pub gdt_limit: u16,
    /// CS selector.
    pub cs: u16,
    /// DS, ES, SS, FS and GS selector.
    pub ds: u16,
}

pub mod run;
pub mod timers;
