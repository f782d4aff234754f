//! QEMU's firmware configuration device (fw_cfg), as far as the loader reads it: the file
//! directory, to find a named file such as `opt/hermitage/token`.
//!
//! Why: a token on QEMU's `-append` is visible to every user of the host in `ps`; a file given
//! with `-fw_cfg name=opt/hermitage/token,file=F` is not. The loader reads it and passes it to
//! the kernel with the other arguments (`multiboot::with_token`).
//!
//! The interface (QEMU `docs/specs/fw_cfg.rst`): write a 16-bit selector to I/O port 0x510,
//! then read the item's bytes one at a time from port 0x511. Item 0x0000 is the signature
//! `"QEMU"` (absent device: all ones); item 0x0019 the file directory, a big-endian `u32`
//! count followed by that many 64-byte entries `{ u32 size, u16 select, u16 reserved,
//! char name[56] }`, all big-endian. This module decides from those bytes; the port accesses
//! are the loader's (`bare/fwcfg.rs`).

/// Selector port (16-bit writes).
pub const SELECTOR_PORT: u16 = 0x510;
/// Data port (8-bit reads).
pub const DATA_PORT: u16 = 0x511;
/// Item: the signature.
pub const SIGNATURE: u16 = 0x0000;
/// Item: the file directory.
pub const FILE_DIR: u16 = 0x0019;
/// The signature's bytes.
pub const SIGNATURE_BYTES: [u8; 4] = *b"QEMU";
/// Bytes of one directory entry.
pub const ENTRY_LEN: usize = 64;
/// Bytes of a file name, NUL padded.
const NAME_LEN: usize = 56;

/// The file the run script hands the API token over in.
pub const TOKEN_FILE: &str = "opt/hermitage/token";

/// Where a directory entry says a file is: its selector and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct File {
    /// The item's selector.
    pub select: u16,
    /// Its size in bytes.
    pub size: u32,
}

/// The directory's entry count, from its first four bytes.
pub fn dir_count(head: [u8; 4]) -> u32 {
    u32::from_be_bytes(head)
}

/// The file an entry describes if it is named `name`.
pub fn entry_named(entry: &[u8; ENTRY_LEN], name: &str) -> Option<File> {
    let raw = &entry[8..8 + NAME_LEN];
    let len = raw.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    (&raw[..len] == name.as_bytes()).then(|| File {
        size: u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]),
        select: u16::from_be_bytes([entry[4], entry[5]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size: u32, select: u16, name: &str) -> [u8; ENTRY_LEN] {
        let mut e = [0u8; ENTRY_LEN];
        e[0..4].copy_from_slice(&size.to_be_bytes());
        e[4..6].copy_from_slice(&select.to_be_bytes());
        e[8..8 + name.len()].copy_from_slice(name.as_bytes());
        e
    }

    #[test]
    fn entries_are_big_endian_and_names_exact() {
        let e = entry(17, 0x0021, TOKEN_FILE);
        assert_eq!(
            entry_named(&e, TOKEN_FILE),
            Some(File {
                select: 0x21,
                size: 17
            })
        );
        assert_eq!(entry_named(&e, "opt/hermitage/tok"), None);
        assert_eq!(entry_named(&e, "opt/hermitage/token2"), None);
        assert_eq!(
            entry_named(&entry(4, 0x22, "etc/boot-fail-wait"), TOKEN_FILE),
            None
        );
        // A name that fills all 56 bytes has no NUL.
        let long = "x".repeat(56);
        assert!(entry_named(&entry(1, 0x23, &long), &long).is_some());
        assert_eq!(dir_count([0, 0, 1, 2]), 258);
    }
}
