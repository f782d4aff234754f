//! The arithmetic and logic the emulator applies to a memory operand, with the status flags
//! exactly as the SDM defines them (vol. 1 3.4.3.1 "Status Flags", appendix A "EFLAGS Cross-
//! Reference"; vol. 2 the ADD, SUB, CMP, AND, OR, XOR, TEST pages).
//!
//! Why in its own file: flags are the part of emulation that is easiest to get subtly wrong
//! (AF, OF, PF on the low byte only) and the part a guest notices only much later, so they are
//! computed by one pure function tested against known-answer tables and an independent
//! wide-integer reference.

/// RFLAGS.CF: carry (unsigned overflow) out of the most significant bit.
pub const CF: u64 = 1 << 0;
/// RFLAGS.PF: the low byte of the result has an even number of set bits.
pub const PF: u64 = 1 << 2;
/// RFLAGS.AF: carry or borrow out of bit 3 (BCD adjust).
pub const AF: u64 = 1 << 4;
/// RFLAGS.ZF: the result is zero.
pub const ZF: u64 = 1 << 6;
/// RFLAGS.SF: the most significant bit of the result.
pub const SF: u64 = 1 << 7;
/// RFLAGS.OF: signed overflow.
pub const OF: u64 = 1 << 11;
/// The six status flags the ALU instructions write.
pub const STATUS_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;

/// An ALU operation with a memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AluOp {
    /// ADD: dst + src.
    Add,
    /// OR.
    Or,
    /// AND.
    And,
    /// SUB: dst - src.
    Sub,
    /// XOR.
    Xor,
    /// CMP: SUB without writing the result.
    Cmp,
    /// TEST: AND without writing the result.
    Test,
}

impl AluOp {
    /// Whether the result is written to the destination (CMP and TEST only set flags).
    pub const fn writes(self) -> bool {
        !matches!(self, AluOp::Cmp | AluOp::Test)
    }
}

/// All ones in the low `size` bytes (`size` is 1, 2, 4 or 8).
pub const fn mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size as u32 * 8)) - 1
    }
}

const fn sign_bit(size: u8) -> u64 {
    1u64 << (size as u32 * 8 - 1)
}

/// PF, ZF and SF of a result (already masked to the operand size).
const fn result_flags(r: u64, size: u8) -> u64 {
    let mut f = 0;
    if (r as u8).count_ones() % 2 == 0 {
        f |= PF;
    }
    if r == 0 {
        f |= ZF;
    }
    if r & sign_bit(size) != 0 {
        f |= SF;
    }
    f
}

/// Apply `op` to `dst` and `src` at operand size `size` (1, 2, 4 or 8 bytes; the inputs are
/// truncated to it). Returns the result (truncated) and the six status flags (the other bits
/// are zero: merge with `(rflags & !STATUS_FLAGS) | flags`).
///
/// AF after AND/OR/XOR/TEST is architecturally undefined; we clear it, as current Intel and AMD
/// cores (and QEMU) do. CF and OF are cleared by the logic operations (SDM).
pub const fn alu(op: AluOp, size: u8, dst: u64, src: u64) -> (u64, u64) {
    let m = mask(size);
    let a = dst & m;
    let b = src & m;
    let s = sign_bit(size);
    match op {
        AluOp::Add => {
            let r = a.wrapping_add(b) & m;
            let mut f = result_flags(r, size);
            // Carry out of the top bit: the truncated sum is smaller than an operand.
            if r < a {
                f |= CF;
            }
            if (a ^ b ^ r) & 0x10 != 0 {
                f |= AF;
            }
            // Both operands have the same sign and the result a different one.
            if (a ^ r) & (b ^ r) & s != 0 {
                f |= OF;
            }
            (r, f)
        }
        AluOp::Sub | AluOp::Cmp => {
            let r = a.wrapping_sub(b) & m;
            let mut f = result_flags(r, size);
            if a < b {
                f |= CF;
            }
            if (a ^ b ^ r) & 0x10 != 0 {
                f |= AF;
            }
            // Operands of different signs and the result's sign differs from the minuend's.
            if (a ^ b) & (a ^ r) & s != 0 {
                f |= OF;
            }
            (r, f)
        }
        AluOp::And | AluOp::Test => {
            let r = a & b;
            (r, result_flags(r, size))
        }
        AluOp::Or => {
            let r = a | b;
            (r, result_flags(r, size))
        }
        AluOp::Xor => {
            let r = a ^ b;
            (r, result_flags(r, size))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AluOp::*;
    use proptest::prelude::*;

    /// Known answers worked out by hand from the SDM's flag definitions.
    #[test]
    fn known_answers() {
        #[rustfmt::skip]
        let table: &[(AluOp, u8, u64, u64, u64, u64)] = &[
            // op, size, dst, src, result, flags
            (Add, 1, 0xFF, 0x01, 0x00, CF | PF | AF | ZF),
            (Add, 1, 0x7F, 0x01, 0x80, AF | SF | OF),
            (Add, 1, 0x80, 0x80, 0x00, CF | PF | ZF | OF),
            (Add, 1, 0x0F, 0x01, 0x10, AF),
            (Add, 1, 0x01, 0x02, 0x03, PF),
            (Add, 2, 0xFFFF, 0x0001, 0x0000, CF | PF | AF | ZF),
            (Add, 2, 0x7FFF, 0x0001, 0x8000, PF | AF | SF | OF),
            (Add, 4, 0xFFFF_FFFF, 1, 0, CF | PF | AF | ZF),
            (Add, 4, 0x8000_0000, 0x8000_0000, 0, CF | PF | ZF | OF),
            (Add, 8, 0x7FFF_FFFF_FFFF_FFFF, 1, 0x8000_0000_0000_0000, PF | AF | SF | OF),
            (Add, 8, u64::MAX, u64::MAX, u64::MAX - 1, CF | AF | SF),
            // Inputs wider than the operand are truncated first.
            (Add, 1, 0x1FF, 0x101, 0x00, CF | PF | AF | ZF),
            (Sub, 1, 0x00, 0x01, 0xFF, CF | PF | AF | SF),
            (Sub, 1, 0x80, 0x01, 0x7F, AF | OF),
            (Sub, 1, 0x7F, 0xFF, 0x80, CF | SF | OF),
            (Sub, 1, 0x10, 0x01, 0x0F, PF | AF),
            (Sub, 4, 5, 5, 0, PF | ZF),
            (Sub, 4, 0, 1, 0xFFFF_FFFF, CF | PF | AF | SF),
            (Sub, 8, 0x8000_0000_0000_0000, 1, 0x7FFF_FFFF_FFFF_FFFF, PF | AF | OF),
            (Cmp, 2, 0x1234, 0x1235, 0xFFFF, CF | PF | AF | SF),
            (Cmp, 4, 3, 2, 1, 0),
            (And, 4, 0xF0F0_0000, 0xFF00_0000, 0xF000_0000, PF | SF),
            (And, 1, 0x0F, 0xF0, 0x00, PF | ZF),
            (Test, 1, 0x81, 0x80, 0x80, SF),
            (Test, 8, 0x1_0000_0000, 0x1_0000_0000, 0x1_0000_0000, PF),
            (Or, 1, 0x01, 0x02, 0x03, PF),
            (Or, 2, 0x8000, 0x0001, 0x8001, SF),
            (Xor, 4, 0xDEAD_BEEF, 0xDEAD_BEEF, 0, PF | ZF),
            (Xor, 1, 0xFF, 0x01, 0xFE, SF),
        ];
        for &(op, size, a, b, r, f) in table {
            assert_eq!(alu(op, size, a, b), (r, f), "{op:?} {size} {a:#x} {b:#x}");
        }
    }

    #[test]
    fn only_add_sub_or_and_xor_write() {
        assert!(Add.writes() && Sub.writes() && And.writes() && Or.writes() && Xor.writes());
        assert!(!Cmp.writes() && !Test.writes());
    }

    /// The flags by their definitions in wide arithmetic: CF is unsigned overflow, OF signed
    /// overflow, AF the carry/borrow between the nibbles, computed without the bit tricks
    /// `alu` uses.
    fn reference(op: AluOp, size: u8, a: u64, b: u64) -> (u64, u64) {
        let bits = size as u32 * 8;
        let m = mask(size);
        let (a, b) = (a & m, b & m);
        let signed = |v: u64| -> i128 {
            let v = v as i128;
            if v >= 1i128 << (bits - 1) {
                v - (1i128 << bits)
            } else {
                v
            }
        };
        let (r, cf, of, af) = match op {
            Add => {
                let wide = a as u128 + b as u128;
                let s = signed(a) + signed(b);
                let r = (wide as u64) & m;
                let af = (a & 0xF) + (b & 0xF) > 0xF;
                (r, wide > m as u128, s != signed(r), af)
            }
            Sub | Cmp => {
                let s = signed(a) - signed(b);
                let r = a.wrapping_sub(b) & m;
                let af = (a & 0xF) < (b & 0xF);
                (r, (a as u128) < (b as u128), s != signed(r), af)
            }
            And | Test => (a & b, false, false, false),
            Or => (a | b, false, false, false),
            Xor => (a ^ b, false, false, false),
        };
        let mut f = 0;
        f |= if cf { CF } else { 0 };
        f |= if of { OF } else { 0 };
        f |= if af { AF } else { 0 };
        f |= if r == 0 { ZF } else { 0 };
        f |= if signed(r) < 0 { SF } else { 0 };
        f |= if (0..8).filter(|i| r >> i & 1 == 1).count() % 2 == 0 {
            PF
        } else {
            0
        };
        (r, f)
    }

    fn any_op() -> impl Strategy<Value = AluOp> {
        prop_oneof![
            Just(Add),
            Just(Or),
            Just(And),
            Just(Sub),
            Just(Xor),
            Just(Cmp),
            Just(Test)
        ]
    }

    proptest! {
        #[test]
        fn matches_reference(op in any_op(), size in prop_oneof![Just(1u8), Just(2), Just(4), Just(8)],
                             a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(alu(op, size, a, b), reference(op, size, a, b));
        }

        /// Edge values (0, 1, sign bit, all ones and neighbours) hit the carries far more
        /// often than uniform random inputs.
        #[test]
        fn matches_reference_at_edges(op in any_op(), size in prop_oneof![Just(1u8), Just(2), Just(4), Just(8)],
                                      ai in 0usize..8, bi in 0usize..8, da in 0u64..3, db in 0u64..3) {
            let m = mask(size);
            let edges = [0, 1, 0xF, 0x10, m >> 1, (m >> 1) + 1, m - 1, m];
            let a = edges[ai].wrapping_add(da);
            let b = edges[bi].wrapping_sub(db);
            prop_assert_eq!(alu(op, size, a, b), reference(op, size, a, b));
        }
    }
}
