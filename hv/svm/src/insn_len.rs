//! Instruction lengths for intercepted instructions on CPUs without NRIPS.
//!
//! Why: to skip an intercepted instruction the hypervisor must know where the next one
//! starts. With the NRIPS feature the CPU writes it to the VMCB (nRIP, offset 0x0C8; APM
//! 15.7.1 "State Saved on Exit"). QEMU TCG's SVM does not offer NRIPS (shared/PLATFORM.md), so
//! we decode the few instructions we skip ourselves, from guest instruction bytes the backend
//! fetched at the guest's RIP, with iced-x86 (the decoder `hv::emulate` uses for MMIO, so one
//! decoder knows the encodings; one decode into a stack `Instruction` per exit, no allocation). Instructions with prefixes (redundant 66/67/F2/F3/segment
//! overrides, REX in 64-bit code) are legal, so the length is not a constant per exit.
//!
//! The rule ([`next_rip`]): use nRIP if the CPU provided it; IOIO exits always carry the next
//! RIP in EXITINFO2 (APM 15.10.2, even without NRIPS) and are handled in [`crate::exit`];
//! otherwise decode the bytes.
#![forbid(unsafe_code)]

use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, Instruction};

/// Architectural maximum instruction length (APM vol. 3, 1.1).
pub const MAX_INSN_LEN: usize = 15;

/// Up to 15 guest instruction bytes, as fetched from guest memory at RIP (or from the VMCB's
/// guest-instruction-bytes field with decode assists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InsnBytes {
    len: u8,
    bytes: [u8; MAX_INSN_LEN],
}

impl InsnBytes {
    /// Take up to 15 bytes from `bytes` (extra bytes are ignored).
    pub fn new(bytes: &[u8]) -> Self {
        let n = bytes.len().min(MAX_INSN_LEN);
        let mut b = [0u8; MAX_INSN_LEN];
        b[..n].copy_from_slice(&bytes[..n]);
        Self {
            len: n as u8,
            bytes: b,
        }
    }

    /// The valid bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Default code size of the guest at the exit (from CS.L, CS.D and EFER.LMA). Decides whether
/// 0x40–0x4F are REX prefixes and how RIP wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodeSize {
    /// Real mode or a 16-bit code segment: IP wraps at 64 KiB.
    Bits16,
    /// 32-bit code segment: EIP wraps at 4 GiB.
    Bits32,
    /// 64-bit code (long mode, CS.L = 1).
    Bits64,
}

impl CodeSize {
    /// 16, 32 or 64 (the decoder's bitness).
    pub const fn bits(self) -> u32 {
        match self {
            Self::Bits16 => 16,
            Self::Bits32 => 32,
            Self::Bits64 => 64,
        }
    }

    /// Add an instruction length to RIP with this code size's wrap-around.
    pub const fn advance(self, rip: u64, len: u8) -> u64 {
        let next = rip.wrapping_add(len as u64);
        match self {
            Self::Bits16 => next & 0xFFFF,
            Self::Bits32 => next & 0xFFFF_FFFF,
            Self::Bits64 => next,
        }
    }
}

/// The instructions whose intercepts we handle by emulating and skipping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipInsn {
    /// CPUID, `0F A2`.
    Cpuid,
    /// HLT, `F4`.
    Hlt,
    /// RDMSR, `0F 32`.
    Rdmsr,
    /// WRMSR, `0F 30`.
    Wrmsr,
    /// RDMSR or WRMSR (the MSR exit before EXITINFO1 is looked at).
    RdmsrOrWrmsr,
    /// VMMCALL, `0F 01 D9`.
    Vmmcall,
    /// RDPMC, `0F 33`.
    Rdpmc,
    /// RDTSC, `0F 31`.
    Rdtsc,
    /// RDTSCP, `0F 01 F9`.
    Rdtscp,
    /// PAUSE, `F3 90`.
    Pause,
    /// INVD, `0F 08`.
    Invd,
    /// WBINVD `0F 09` or WBNOINVD `F3 0F 09`.
    Wbinvd,
    /// XSETBV, `0F 01 D1`.
    Xsetbv,
    /// MONITOR `0F 01 C8` or MONITORX `0F 01 FA`.
    Monitor,
    /// MWAIT `0F 01 C9` or MWAITX `0F 01 FB`.
    Mwait,
}

/// Why a length could not be determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InsnLenError {
    /// No instruction bytes were supplied (fetch them from guest memory at RIP and retry).
    NoBytes,
    /// The bytes ended inside the instruction.
    Truncated,
    /// More than 15 bytes of prefixes/opcode: the CPU would raise #GP.
    TooLong,
    /// The bytes do not encode the expected instruction (e.g. the guest rewrote its code
    /// between the exit and the fetch). `opcode` is the first opcode byte after prefixes.
    Mismatch {
        /// First byte after the prefixes.
        opcode: u8,
    },
}

/// The first byte after the prefixes (legacy prefixes, and REX in 64-bit code), for
/// [`InsnLenError::Mismatch`]; 0 if there is none.
fn first_opcode(bytes: &[u8], code: CodeSize) -> u8 {
    bytes
        .iter()
        .copied()
        .find(|&b| {
            !(matches!(
                b,
                0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3
            ) || (code == CodeSize::Bits64 && (0x40..=0x4F).contains(&b)))
        })
        .unwrap_or(0)
}

/// Whether the instruction in the 15 `bytes` is still incomplete after 14 of them: then an
/// invalid decode of all 15 means it would be longer than 15 (the CPU raises #GP). Only on
/// the error path.
fn needs_more_than(bytes: &[u8], code: CodeSize) -> bool {
    let mut insn = Instruction::default();
    let mut decoder = Decoder::new(
        code.bits(),
        &bytes[..MAX_INSN_LEN - 1],
        DecoderOptions::NONE,
    );
    decoder.decode_out(&mut insn);
    insn.is_invalid() && decoder.last_error() == DecoderError::NoMoreBytes
}

/// The encodings compilers and assemblers emit (no prefixes; PAUSE's F3 is its opcode), which
/// need no decoder: they mean the same in every code size, and no legacy or REX prefix comes
/// first. Anything else (a redundant prefix, a REX, another instruction) goes to iced-x86. The
/// exit path's common case: a decode costs several hundred instructions more.
const fn unprefixed(bytes: &[u8]) -> Option<(SkipInsn, u8)> {
    use SkipInsn::*;
    Some(match bytes {
        [0x0F, 0xA2, ..] => (Cpuid, 2),
        [0xF4, ..] => (Hlt, 1),
        [0x0F, 0x32, ..] => (Rdmsr, 2),
        [0x0F, 0x30, ..] => (Wrmsr, 2),
        [0x0F, 0x33, ..] => (Rdpmc, 2),
        [0x0F, 0x31, ..] => (Rdtsc, 2),
        [0x0F, 0x08, ..] => (Invd, 2),
        [0x0F, 0x09, ..] => (Wbinvd, 2),
        [0xF3, 0x90, ..] => (Pause, 2),
        [0x0F, 0x01, 0xD9, ..] => (Vmmcall, 3),
        [0x0F, 0x01, 0xF9, ..] => (Rdtscp, 3),
        [0x0F, 0x01, 0xD1, ..] => (Xsetbv, 3),
        [0x0F, 0x01, 0xC8 | 0xFA, ..] => (Monitor, 3),
        [0x0F, 0x01, 0xC9 | 0xFB, ..] => (Mwait, 3),
        _ => return None,
    })
}

/// Identify one of the [`SkipInsn`] instructions at the start of `bytes` and return it with
/// its total length (prefixes included): the plain encodings by table, anything else by one
/// iced-x86 decode into a stack `Instruction`.
pub fn identify(bytes: &[u8], code: CodeSize) -> Result<(SkipInsn, u8), InsnLenError> {
    if bytes.is_empty() {
        return Err(InsnLenError::NoBytes);
    }
    if let Some(found) = unprefixed(bytes) {
        return Ok(found);
    }
    decode(bytes, code)
}

/// [`identify`] by iced-x86 alone.
fn decode(bytes: &[u8], code: CodeSize) -> Result<(SkipInsn, u8), InsnLenError> {
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let mut insn = Instruction::default();
    let mut decoder = Decoder::new(code.bits(), bytes, DecoderOptions::NONE);
    decoder.decode_out(&mut insn);
    if insn.is_invalid() {
        return Err(match decoder.last_error() {
            // iced reports running out of bytes only when fewer than 15 were supplied.
            DecoderError::NoMoreBytes => InsnLenError::Truncated,
            _ if bytes.len() == MAX_INSN_LEN && needs_more_than(bytes, code) => {
                InsnLenError::TooLong
            }
            _ => InsnLenError::Mismatch {
                opcode: first_opcode(bytes, code),
            },
        });
    }
    let found = match insn.code() {
        Code::Cpuid => SkipInsn::Cpuid,
        Code::Hlt => SkipInsn::Hlt,
        Code::Rdmsr => SkipInsn::Rdmsr,
        Code::Wrmsr => SkipInsn::Wrmsr,
        Code::Vmmcall => SkipInsn::Vmmcall,
        Code::Rdpmc => SkipInsn::Rdpmc,
        Code::Rdtsc => SkipInsn::Rdtsc,
        Code::Rdtscp => SkipInsn::Rdtscp,
        Code::Pause => SkipInsn::Pause,
        Code::Invd => SkipInsn::Invd,
        Code::Wbinvd | Code::Wbnoinvd => SkipInsn::Wbinvd,
        Code::Xsetbv => SkipInsn::Xsetbv,
        Code::Monitorw
        | Code::Monitord
        | Code::Monitorq
        | Code::Monitorxw
        | Code::Monitorxd
        | Code::Monitorxq => SkipInsn::Monitor,
        Code::Mwait | Code::Mwaitx => SkipInsn::Mwait,
        _ => {
            return Err(InsnLenError::Mismatch {
                opcode: first_opcode(bytes, code),
            });
        }
    };
    Ok((found, insn.len() as u8))
}

/// Length of `expected` at the start of `bytes`, or why it cannot be determined.
pub fn insn_len(bytes: &[u8], code: CodeSize, expected: SkipInsn) -> Result<u8, InsnLenError> {
    let (found, len) = identify(bytes, code)?;
    let ok = found == expected
        || (expected == SkipInsn::RdmsrOrWrmsr
            && matches!(found, SkipInsn::Rdmsr | SkipInsn::Wrmsr));
    if ok {
        Ok(len)
    } else {
        // Report the first opcode byte for diagnostics.
        let opcode = first_opcode(bytes, code);
        Err(InsnLenError::Mismatch { opcode })
    }
}

/// The RIP after the intercepted instruction: nRIP if the CPU saved it (NRIPS), else
/// `rip` + the decoded length of `expected` in `bytes`.
pub fn next_rip(
    nrip: Option<u64>,
    rip: u64,
    code: CodeSize,
    bytes: Option<&InsnBytes>,
    expected: SkipInsn,
) -> Result<u64, InsnLenError> {
    if let Some(n) = nrip {
        return Ok(n);
    }
    let bytes = bytes.ok_or(InsnLenError::NoBytes)?;
    let len = insn_len(bytes.as_slice(), code, expected)?;
    Ok(code.advance(rip, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use CodeSize::*;
    use SkipInsn::*;

    #[test]
    fn the_table_agrees_with_the_decoder() {
        let plain: [&[u8]; 16] = [
            &[0x0F, 0xA2],
            &[0xF4],
            &[0x0F, 0x32],
            &[0x0F, 0x30],
            &[0x0F, 0x33],
            &[0x0F, 0x31],
            &[0x0F, 0x08],
            &[0x0F, 0x09],
            &[0xF3, 0x90],
            &[0x0F, 0x01, 0xD9],
            &[0x0F, 0x01, 0xF9],
            &[0x0F, 0x01, 0xD1],
            &[0x0F, 0x01, 0xC8],
            &[0x0F, 0x01, 0xFA],
            &[0x0F, 0x01, 0xC9],
            &[0x0F, 0x01, 0xFB],
        ];
        for enc in plain {
            let mut bytes = enc.to_vec();
            bytes.extend_from_slice(&[0x90; 8]); // whatever follows
            let fast = unprefixed(&bytes).expect("in the table");
            for code in [Bits16, Bits32, Bits64] {
                assert_eq!(decode(&bytes, code), Ok(fast), "{enc:02x?} {code:?}");
            }
        }
        // Prefixed forms are not in the table: the decoder sees them.
        for enc in [
            &[0x66, 0x0F, 0xA2][..],
            &[0x48, 0x0F, 0x32],
            &[0xF3, 0x0F, 0x09],
            &[0x2E, 0xF4],
        ] {
            assert_eq!(unprefixed(enc), None, "{enc:02x?}");
        }
        assert_eq!(identify(&[0x66, 0x0F, 0xA2], Bits32), Ok((Cpuid, 3)));
    }

    #[test]
    fn plain_encodings() {
        let table: &[(&[u8], SkipInsn, u8)] = &[
            (&[0x0F, 0xA2], Cpuid, 2),
            (&[0xF4], Hlt, 1),
            (&[0x0F, 0x32], Rdmsr, 2),
            (&[0x0F, 0x30], Wrmsr, 2),
            (&[0x0F, 0x01, 0xD9], Vmmcall, 3),
            (&[0x0F, 0x33], Rdpmc, 2),
            (&[0x0F, 0x31], Rdtsc, 2),
            (&[0x0F, 0x01, 0xF9], Rdtscp, 3),
            (&[0xF3, 0x90], Pause, 2),
            (&[0x0F, 0x08], Invd, 2),
            (&[0x0F, 0x09], Wbinvd, 2),
            (&[0xF3, 0x0F, 0x09], Wbinvd, 3),
            (&[0x0F, 0x01, 0xD1], Xsetbv, 3),
            (&[0x0F, 0x01, 0xC8], Monitor, 3),
            (&[0x0F, 0x01, 0xFA], Monitor, 3),
            (&[0x0F, 0x01, 0xC9], Mwait, 3),
            (&[0x0F, 0x01, 0xFB], Mwait, 3),
        ];
        for &(bytes, insn, len) in table {
            for code in [Bits16, Bits32, Bits64] {
                assert_eq!(
                    identify(bytes, code),
                    Ok((insn, len)),
                    "{bytes:02x?} {code:?}"
                );
                assert_eq!(insn_len(bytes, code, insn), Ok(len));
            }
        }
    }

    #[test]
    fn prefixed_encodings() {
        let table: &[(&[u8], CodeSize, SkipInsn, u8)] = &[
            (&[0x66, 0x0F, 0xA2], Bits32, Cpuid, 3),
            (&[0x48, 0x0F, 0xA2], Bits64, Cpuid, 3),
            (&[0x2E, 0x67, 0x48, 0x0F, 0x30], Bits64, Wrmsr, 5),
            (&[0xF2, 0xF3, 0x3E, 0xF4], Bits32, Hlt, 4),
            (&[0x41, 0xF4], Bits64, Hlt, 2),
            (&[0x64, 0x65, 0x0F, 0x01, 0xD9], Bits16, Vmmcall, 5),
            // Extra bytes after the instruction are ignored.
            (&[0x0F, 0xA2, 0x90, 0x90], Bits64, Cpuid, 2),
            // REX before a legacy prefix is still counted.
            (&[0x48, 0x66, 0x0F, 0x32], Bits64, Rdmsr, 4),
            (&[0x66, 0xF3, 0x90], Bits32, Pause, 3),
        ];
        for &(bytes, code, insn, len) in table {
            assert_eq!(
                insn_len(bytes, code, insn),
                Ok(len),
                "{bytes:02x?} {code:?}"
            );
        }
        assert_eq!(insn_len(&[0x0F, 0x32], Bits64, RdmsrOrWrmsr), Ok(2));
        assert_eq!(insn_len(&[0x0F, 0x30], Bits64, RdmsrOrWrmsr), Ok(2));
    }

    #[test]
    fn rex_is_an_opcode_outside_64bit() {
        // 0x48 is DEC EAX in 32-bit code: not a prefix, so not CPUID.
        assert_eq!(
            insn_len(&[0x48, 0x0F, 0xA2], Bits32, Cpuid),
            Err(InsnLenError::Mismatch { opcode: 0x48 })
        );
        // 0x90 without F3 is NOP, not PAUSE.
        assert_eq!(
            identify(&[0x90], Bits64),
            Err(InsnLenError::Mismatch { opcode: 0x90 })
        );
    }

    #[test]
    fn errors() {
        assert_eq!(insn_len(&[], Bits64, Cpuid), Err(InsnLenError::NoBytes));
        assert_eq!(
            insn_len(&[0x0F], Bits64, Cpuid),
            Err(InsnLenError::Truncated)
        );
        assert_eq!(
            insn_len(&[0x66, 0x66], Bits64, Cpuid),
            Err(InsnLenError::Truncated)
        );
        assert_eq!(
            insn_len(&[0x0F, 0x01], Bits64, Vmmcall),
            Err(InsnLenError::Truncated)
        );
        assert_eq!(
            insn_len(&[0x66; 15], Bits64, Cpuid),
            Err(InsnLenError::TooLong)
        );
        let mut long = [0x66u8; 15];
        long[13] = 0x0F;
        long[14] = 0xA2;
        assert_eq!(insn_len(&long, Bits64, Cpuid), Ok(15));
        let mut too_long = [0x66u8; 16];
        too_long[14] = 0x0F;
        too_long[15] = 0xA2;
        assert_eq!(
            insn_len(&too_long, Bits64, Cpuid),
            Err(InsnLenError::TooLong)
        );
        assert_eq!(
            insn_len(&[0x0F, 0xA2], Bits64, Hlt),
            Err(InsnLenError::Mismatch { opcode: 0x0F })
        );
        assert_eq!(
            insn_len(&[0xCC], Bits64, Hlt),
            Err(InsnLenError::Mismatch { opcode: 0xCC })
        );
    }

    #[test]
    fn decoder_rules() {
        // LOCK on CPUID is #UD on hardware, never an intercepted CPUID.
        assert_eq!(
            identify(&[0xF0, 0x0F, 0xA2], Bits64),
            Err(InsnLenError::Mismatch { opcode: 0x0F })
        );
        // An address-size prefix on MONITOR (it uses rAX as an address) is part of it.
        assert_eq!(
            identify(&[0x67, 0x0F, 0x01, 0xC8], Bits64),
            Ok((Monitor, 4))
        );
        assert_eq!(
            identify(&[0x67, 0x0F, 0x01, 0xFA], Bits16),
            Ok((Monitor, 4))
        );
        // A valid instruction that is not one we skip.
        assert_eq!(
            identify(&[0x0F, 0x0B], Bits32),
            Err(InsnLenError::Mismatch { opcode: 0x0F })
        );
        // 15 bytes with a complete but foreign instruction are a mismatch, not too long.
        let mut ud2 = [0x66u8; 15];
        ud2[0] = 0x0F;
        ud2[1] = 0x0B;
        assert_eq!(
            identify(&ud2, Bits64),
            Err(InsnLenError::Mismatch { opcode: 0x0F })
        );
    }

    #[test]
    fn next_rip_rule() {
        let b = InsnBytes::new(&[0x0F, 0xA2]);
        // NRIPS wins, bytes are not even looked at.
        assert_eq!(
            next_rip(Some(0x1234), 0x1000, Bits64, None, Cpuid),
            Ok(0x1234)
        );
        assert_eq!(next_rip(None, 0x1000, Bits64, Some(&b), Cpuid), Ok(0x1002));
        assert_eq!(
            next_rip(None, 0x1000, Bits64, None, Cpuid),
            Err(InsnLenError::NoBytes)
        );
        // Wrap-around per code size.
        assert_eq!(next_rip(None, 0xFFFF, Bits16, Some(&b), Cpuid), Ok(0x1));
        assert_eq!(
            next_rip(None, 0xFFFF_FFFF, Bits32, Some(&b), Cpuid),
            Ok(0x1)
        );
        assert_eq!(
            next_rip(None, 0xFFFF_FFFF, Bits64, Some(&b), Cpuid),
            Ok(0x1_0000_0001)
        );
    }

    #[test]
    fn insn_bytes_truncates_to_15() {
        let b = InsnBytes::new(&[0x90; 20]);
        assert_eq!(b.as_slice().len(), 15);
        assert_eq!(InsnBytes::new(&[]).as_slice(), &[] as &[u8]);
    }
}
