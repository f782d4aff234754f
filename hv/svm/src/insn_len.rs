//! Instruction lengths for intercepted instructions on CPUs without NRIPS.
//!
//! Why: to skip an intercepted instruction the hypervisor must know where the next one
//! starts. With the NRIPS feature the CPU writes it to the VMCB (nRIP, offset 0x0C8; APM
//! 15.7.1 "State Saved on Exit"). QEMU TCG's SVM does not offer NRIPS (shared/PLATFORM.md), so
//! we decode the few instructions we skip ourselves, from guest instruction bytes the backend
//! fetched at the guest's RIP. Instructions with prefixes (redundant 66/67/F2/F3/segment
//! overrides, REX in 64-bit code) are legal, so the length is not a constant per exit.
//!
//! The rule ([`next_rip`]): use nRIP if the CPU provided it; IOIO exits always carry the next
//! RIP in EXITINFO2 (APM 15.10.2, even without NRIPS) and are handled in [`crate::exit`];
//! otherwise decode the bytes.
#![forbid(unsafe_code)]

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

fn is_legacy_prefix(b: u8) -> bool {
    matches!(
        b,
        0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3
    )
}

/// Identify one of the [`SkipInsn`] instructions at the start of `bytes` and return it with
/// its total length (prefixes included).
pub fn identify(bytes: &[u8], code: CodeSize) -> Result<(SkipInsn, u8), InsnLenError> {
    if bytes.is_empty() {
        return Err(InsnLenError::NoBytes);
    }
    let mut i = 0usize;
    let mut rep = false;
    loop {
        if i >= MAX_INSN_LEN {
            return Err(InsnLenError::TooLong);
        }
        let Some(&b) = bytes.get(i) else {
            return Err(InsnLenError::Truncated);
        };
        if is_legacy_prefix(b) {
            rep |= b == 0xF3;
            i += 1;
        } else if code == CodeSize::Bits64 && (0x40..=0x4F).contains(&b) {
            // REX: only meaningful right before the opcode, but always part of the length.
            i += 1;
        } else {
            break;
        }
    }
    let byte = |k: usize| -> Result<u8, InsnLenError> {
        if k >= MAX_INSN_LEN {
            return Err(InsnLenError::TooLong);
        }
        bytes.get(k).copied().ok_or(InsnLenError::Truncated)
    };
    let op = byte(i)?;
    let (insn, len) = match op {
        0xF4 => (SkipInsn::Hlt, 1),
        0x90 if rep => (SkipInsn::Pause, 1),
        0x0F => match byte(i + 1)? {
            0xA2 => (SkipInsn::Cpuid, 2),
            0x32 => (SkipInsn::Rdmsr, 2),
            0x30 => (SkipInsn::Wrmsr, 2),
            0x33 => (SkipInsn::Rdpmc, 2),
            0x31 => (SkipInsn::Rdtsc, 2),
            0x08 => (SkipInsn::Invd, 2),
            0x09 => (SkipInsn::Wbinvd, 2),
            0x01 => match byte(i + 2)? {
                0xD9 => (SkipInsn::Vmmcall, 3),
                0xF9 => (SkipInsn::Rdtscp, 3),
                0xD1 => (SkipInsn::Xsetbv, 3),
                0xC8 | 0xFA => (SkipInsn::Monitor, 3),
                0xC9 | 0xFB => (SkipInsn::Mwait, 3),
                _ => return Err(InsnLenError::Mismatch { opcode: op }),
            },
            _ => return Err(InsnLenError::Mismatch { opcode: op }),
        },
        _ => return Err(InsnLenError::Mismatch { opcode: op }),
    };
    let total = i + len;
    if total > MAX_INSN_LEN {
        return Err(InsnLenError::TooLong);
    }
    Ok((insn, total as u8))
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
        let opcode = bytes
            .iter()
            .copied()
            .find(|&b| {
                !(is_legacy_prefix(b) || (code == CodeSize::Bits64 && (0x40..=0x4F).contains(&b)))
            })
            .unwrap_or(0);
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
