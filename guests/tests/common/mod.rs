//! Reading the ELF section headers and symbols the image writer produced.
#![allow(dead_code, reason = "each test crate uses part of it")]

use std::collections::BTreeMap;

fn le16(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]).into()
}
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub struct Section {
    pub addr: u32,
    pub offset: usize,
    pub len: usize,
    pub kind: u32,
}

/// Section headers by name, and symbols by address.
pub fn sections(image: &[u8]) -> (BTreeMap<String, Section>, BTreeMap<u32, String>) {
    let (shoff, shentsize, shnum, shstrndx) = (
        le32(image, 32) as usize,
        le16(image, 46),
        le16(image, 48),
        le16(image, 50),
    );
    let header = |i: usize| {
        let at = shoff + i * shentsize;
        let field = |n: usize| le32(image, at + 4 * n);
        (
            field(0) as usize,
            Section {
                kind: field(1),
                addr: field(3),
                offset: field(4) as usize,
                len: field(5) as usize,
            },
        )
    };
    let strings = header(shstrndx).1;
    let name = |table: &Section, at: usize| {
        let bytes = &image[table.offset + at..];
        String::from_utf8(bytes[..bytes.iter().position(|&b| b == 0).unwrap()].to_vec()).unwrap()
    };
    let mut by_name = BTreeMap::new();
    for i in 1..shnum {
        let (at, section) = header(i);
        by_name.insert(name(&strings, at), section);
    }
    let mut symbols = BTreeMap::new();
    let (symtab, strtab) = (&by_name[".symtab"], &by_name[".strtab"]);
    for at in (symtab.offset + 16..symtab.offset + symtab.len).step_by(16) {
        symbols.insert(le32(image, at + 4), name(strtab, le32(image, at) as usize));
    }
    (by_name, symbols)
}

pub fn bytes<'a>(image: &'a [u8], section: &Section) -> &'a [u8] {
    &image[section.offset..section.offset + section.len]
}
