//! A minimal ELF32 executable writer (System V gABI, Intel386 psABI): one PT_LOAD segment,
//! plus section headers and a symbol table so that `objdump -d` / `readelf -s` make sense of
//! a guest (only the program header matters for loading).

/// What a section holds; all lie inside the one segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Code,
    ReadOnly,
    Bss,
}

pub struct Section {
    pub name: &'static str,
    pub addr: u32,
    pub len: u32,
    pub kind: Kind,
}

pub struct Image<'a> {
    /// The file part of the segment.
    pub segment: &'a [u8],
    pub base: u32,
    /// Memory size of the segment (file part + BSS).
    pub mem_len: u32,
    pub entry: u32,
    pub sections: &'a [Section],
    pub symbols: &'a [(String, u32)],
}

const EHDR_LEN: usize = 52;
const PHDR_LEN: usize = 32;
const SHDR_LEN: u16 = 40;
const SYM_LEN: u32 = 16;
const SEGMENT_OFFSET: usize = 0x60;
const SEGMENT_ALIGN: u32 = 16;
const _: () = assert!(EHDR_LEN + PHDR_LEN <= SEGMENT_OFFSET);

const SHT_PROGBITS: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_NOBITS: u32 = 8;
const SHF_WRITE: u32 = 1;
const SHF_ALLOC: u32 = 2;
const SHF_EXECINSTR: u32 = 4;
const STB_GLOBAL: u8 = 1;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn align(out: &mut Vec<u8>, to: usize) {
    out.resize(out.len().next_multiple_of(to), 0);
}

/// A string table: NUL first, then NUL-terminated names.
struct Strings(Vec<u8>);
impl Strings {
    fn add(&mut self, name: &str) -> u32 {
        let at = self.0.len() as u32;
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(0);
        at
    }
}

pub fn write(image: &Image) -> Vec<u8> {
    let mut out = vec![0; SEGMENT_OFFSET];
    out.extend_from_slice(image.segment);

    // Section indices: 0 null, 1..=n the image's sections, then symtab, strtab, shstrtab.
    let section_index = |addr: u32| {
        image
            .sections
            .iter()
            .position(|s| s.kind != Kind::Bss && (s.addr..s.addr + s.len).contains(&addr))
            .map_or(0, |i| i as u16 + 1)
    };
    let mut strtab = Strings(vec![0]);
    let mut symtab = vec![0; SYM_LEN as usize];
    for (name, addr) in image.symbols {
        let index = section_index(*addr);
        let kind = image
            .sections
            .get(usize::from(index).wrapping_sub(1))
            .map(|s| s.kind);
        let stt = if kind == Some(Kind::Code) {
            STT_FUNC
        } else {
            STT_OBJECT
        };
        put32(&mut symtab, strtab.add(name));
        put32(&mut symtab, *addr);
        put32(&mut symtab, 0);
        symtab.extend_from_slice(&[(STB_GLOBAL << 4) | stt, 0]);
        put16(&mut symtab, index);
    }
    align(&mut out, 4);
    let symtab_offset = out.len();
    out.extend_from_slice(&symtab);
    let strtab_offset = out.len();
    out.extend_from_slice(&strtab.0);

    let mut shstrtab = Strings(vec![0]);
    let mut headers = vec![0; usize::from(SHDR_LEN)];
    let mut header = |name: u32,
                      kind: u32,
                      flags: u32,
                      addr: u32,
                      offset: usize,
                      len: usize,
                      link: u32,
                      info: u32,
                      align: u32,
                      entsize: u32| {
        for v in [
            name,
            kind,
            flags,
            addr,
            offset as u32,
            len as u32,
            link,
            info,
            align,
            entsize,
        ] {
            put32(&mut headers, v);
        }
    };
    for s in image.sections {
        let (kind, flags) = match s.kind {
            Kind::Code => (SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR),
            Kind::ReadOnly => (SHT_PROGBITS, SHF_ALLOC),
            Kind::Bss => (SHT_NOBITS, SHF_ALLOC | SHF_WRITE),
        };
        let offset = SEGMENT_OFFSET + (s.addr - image.base) as usize;
        let offset = if s.kind == Kind::Bss {
            SEGMENT_OFFSET + image.segment.len()
        } else {
            offset
        };
        header(
            shstrtab.add(s.name),
            kind,
            flags,
            s.addr,
            offset,
            s.len as usize,
            0,
            0,
            1,
            0,
        );
    }
    let symtab_index = image.sections.len() as u32 + 1;
    let symtab_name = shstrtab.add(".symtab");
    let strtab_name = shstrtab.add(".strtab");
    let shstrtab_name = shstrtab.add(".shstrtab");
    // sh_info of a symbol table: index of the first non-local symbol (all are global).
    header(
        symtab_name,
        SHT_SYMTAB,
        0,
        0,
        symtab_offset,
        symtab.len(),
        symtab_index + 1,
        1,
        4,
        SYM_LEN,
    );
    header(
        strtab_name,
        SHT_STRTAB,
        0,
        0,
        strtab_offset,
        strtab.0.len(),
        0,
        0,
        1,
        0,
    );
    let shstrtab_offset = out.len();
    header(
        shstrtab_name,
        SHT_STRTAB,
        0,
        0,
        shstrtab_offset,
        shstrtab.0.len(),
        0,
        0,
        1,
        0,
    );
    out.extend_from_slice(&shstrtab.0);
    align(&mut out, 4);
    let shoff = out.len();
    let shnum = (headers.len() / usize::from(SHDR_LEN)) as u16;
    out.extend_from_slice(&headers);

    // ELF header.
    let mut ehdr = vec![
        0x7F, b'E', b'L', b'F', 1, /* 32-bit */
        1, /* LE */
        1, /* version */
    ];
    ehdr.resize(16, 0);
    put16(&mut ehdr, 2); // ET_EXEC
    put16(&mut ehdr, 3); // EM_386
    put32(&mut ehdr, 1); // EV_CURRENT
    put32(&mut ehdr, image.entry);
    put32(&mut ehdr, EHDR_LEN as u32); // e_phoff
    put32(&mut ehdr, shoff as u32);
    put32(&mut ehdr, 0); // e_flags
    put16(&mut ehdr, EHDR_LEN as u16);
    put16(&mut ehdr, PHDR_LEN as u16);
    put16(&mut ehdr, 1); // e_phnum
    put16(&mut ehdr, SHDR_LEN);
    put16(&mut ehdr, shnum);
    put16(&mut ehdr, shnum - 1); // e_shstrndx: the last one
    // The one PT_LOAD, read/write/execute: the guest's BSS holds its stack and variables.
    for v in [
        1,
        SEGMENT_OFFSET as u32,
        image.base,
        image.base,
        image.segment.len() as u32,
        image.mem_len,
        7,
        SEGMENT_ALIGN,
    ] {
        put32(&mut ehdr, v);
    }
    assert_eq!(ehdr.len(), EHDR_LEN + PHDR_LEN);
    out[..ehdr.len()].copy_from_slice(&ehdr);
    out
}
