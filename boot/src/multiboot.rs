//! Decoding of the Multiboot 1 boot information.
//!
//! Layout and flag bits follow the Multiboot Specification 0.6.96, section 3.3 "Boot
//! information format". The binary copies the raw bytes out of physical memory; this module only
//! interprets them, so it works on any byte slice.

use core::ops::Range;

/// `eax` holds this value when a Multiboot 1 loader enters us (spec section 3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;

/// Size of the part of the boot information this loader reads (up to `boot_loader_name`).
pub const INFO_LEN: usize = 68;
/// Size of one entry of the module list (`mod_start`, `mod_end`, `string`, reserved).
pub const MODULE_LEN: usize = 16;

const FLAG_CMDLINE: u32 = 1 << 2;
const FLAG_MODS: u32 = 1 << 3;
const FLAG_MMAP: u32 = 1 << 6;
const FLAG_BOOT_LOADER_NAME: u32 = 1 << 9;

/// Memory map entry type for RAM the operating system may use.
const MEMORY_AVAILABLE: u32 = 1;

/// The fields of the boot information the loader needs; absent ones are `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// Physical address of the NUL-terminated command line.
    pub cmdline: Option<u32>,
    /// Physical address and number of module entries (each [`MODULE_LEN`] bytes).
    pub modules: Option<(u32, u32)>,
    /// Physical address and length in bytes of the memory map.
    pub memory_map: Option<(u32, u32)>,
    /// Physical address of the NUL-terminated boot loader name.
    pub boot_loader_name: Option<u32>,
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

impl Info {
    /// Decodes the first [`INFO_LEN`] bytes of the boot information.
    pub fn parse(bytes: &[u8; INFO_LEN]) -> Self {
        let flags = u32_at(bytes, 0);
        let has = |flag: u32| flags & flag != 0;
        Self {
            cmdline: has(FLAG_CMDLINE).then(|| u32_at(bytes, 16)),
            modules: (has(FLAG_MODS) && u32_at(bytes, 20) != 0)
                .then(|| (u32_at(bytes, 24), u32_at(bytes, 20))),
            memory_map: has(FLAG_MMAP).then(|| (u32_at(bytes, 48), u32_at(bytes, 44))),
            boot_loader_name: has(FLAG_BOOT_LOADER_NAME).then(|| u32_at(bytes, 64)),
        }
    }
}

/// Decodes one module entry into the physical range the module occupies.
pub fn module_range(bytes: &[u8; MODULE_LEN]) -> Range<u64> {
    u64::from(u32_at(bytes, 0))..u64::from(u32_at(bytes, 4))
}

/// The usable-RAM ranges of a memory map, in the order the boot loader listed them.
///
/// Each entry starts with its own size, which does not count the size field itself; a truncated
/// trailing entry ends the iteration.
pub fn usable_ram(memory_map: &[u8]) -> impl Iterator<Item = Range<u64>> + '_ {
    let mut rest = memory_map;
    core::iter::from_fn(move || {
        loop {
            if rest.len() < 24 {
                return None;
            }
            let size = u32_at(rest, 0) as usize;
            let (base, len, kind) = (u64_at(rest, 4), u64_at(rest, 12), u32_at(rest, 20));
            rest = rest.get(size + 4..).unwrap_or_default();
            if kind == MEMORY_AVAILABLE && len != 0 {
                return Some(base..base.saturating_add(len));
            }
        }
    })
}

/// The arguments for the kernel, taken from the multiboot command line.
///
/// QEMU (boot loader name "qemu") and GRUB Legacy start the command line with the path of the
/// loader image, which is dropped; GRUB 2 ("GRUB 2.06...") passes only the words after the path
/// in its `multiboot` command, which are kept whole.
pub fn kernel_args<'a>(cmdline: &'a str, boot_loader_name: Option<&str>) -> &'a str {
    if boot_loader_name.is_some_and(|name| name.starts_with("GRUB 2")) {
        return cmdline.trim();
    }
    match cmdline.trim_start().split_once(char::is_whitespace) {
        Some((_path, args)) => args.trim(),
        None => "",
    }
}

/// `line` as it may be printed: the value of every `api_token=` word replaced by
/// `<redacted>`, the rest (spacing included) unchanged. The serial console ends up in files
/// and CI logs; the token must not.
pub fn redacted(line: &str) -> alloc::string::String {
    const KEY: &str = "api_token=";
    let mut out = alloc::string::String::with_capacity(line.len());
    let mut rest = line;
    while !rest.is_empty() {
        let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(word_end);
        if word.starts_with(KEY) {
            out.push_str(KEY);
            out.push_str("<redacted>");
        } else {
            out.push_str(word);
        }
        let space_end = tail
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(tail.len());
        out.push_str(&tail[..space_end]);
        rest = &tail[space_end..];
    }
    out
}

/// The kernel arguments with `api_token=TOKEN` added among our words (after `--`, Hermit's
/// separator, which is added when missing): how a token read from QEMU's fw_cfg reaches the
/// kernel without ever being on QEMU's command line.
pub fn with_token(args: &str, token: &str) -> alloc::string::String {
    let has_separator = args.split_whitespace().any(|w| w == "--");
    let sep = if has_separator { "" } else { " --" };
    let lead = if args.is_empty() { "" } else { args };
    alloc::format!("{lead}{sep} api_token={token}")
        .trim_start()
        .into()
}

/// Whether `bytes` (a token file, a trailing newline allowed) is a token to pass on: 1 to 128
/// bytes of `A-Z a-z 0-9 - . _ ~ + /`, then `=`s (RFC 6750 §2.1, as `hv::config` checks it
/// again). Returns it without the newline.
pub fn token_from_file(bytes: &[u8]) -> Option<&str> {
    let t = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let t = t.strip_suffix(b"\r").unwrap_or(t);
    let body_len = t.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    let ok = (1..=128).contains(&body_len)
        && t[..body_len]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(b));
    ok.then(|| core::str::from_utf8(t).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_hides_the_token_and_nothing_else() {
        assert_eq!(
            redacted("/boot/loader -- api_token=s3cr3t  vm=hello"),
            "/boot/loader -- api_token=<redacted>  vm=hello"
        );
        assert_eq!(redacted("api_token=x"), "api_token=<redacted>");
        assert_eq!(redacted("-- port=1 "), "-- port=1 ");
        assert_eq!(redacted(""), "");
        assert!(!redacted("a api_token=abc b").contains("abc"));
    }

    #[test]
    fn token_joins_our_words() {
        assert_eq!(
            with_token("-- vm=hello", "t0k"),
            "-- vm=hello api_token=t0k"
        );
        assert_eq!(with_token("", "t0k"), "-- api_token=t0k");
        assert_eq!(with_token("-freq 2000", "t"), "-freq 2000 -- api_token=t");
    }

    #[test]
    fn token_files() {
        assert_eq!(token_from_file(b"abc-._~+/=="), Some("abc-._~+/=="));
        assert_eq!(token_from_file(b"abc\n"), Some("abc"));
        assert_eq!(token_from_file(b"abc\r\n"), Some("abc"));
        for bad in [
            &b""[..],
            b"\n",
            b"===",
            b"a b",
            b"a\nb",
            b"a=b",
            &[b'a'; 129],
            b"\xff",
        ] {
            assert_eq!(token_from_file(bad), None, "{bad:?}");
        }
        assert!(token_from_file(&[b'a'; 128]).is_some());
    }

    #[test]
    fn info_respects_flags() {
        let mut bytes = [0u8; INFO_LEN];
        bytes[0..4].copy_from_slice(&(FLAG_CMDLINE | FLAG_MMAP).to_le_bytes());
        bytes[16..20].copy_from_slice(&0x9000u32.to_le_bytes());
        bytes[20..24].copy_from_slice(&1u32.to_le_bytes());
        bytes[44..48].copy_from_slice(&48u32.to_le_bytes());
        bytes[48..52].copy_from_slice(&0x9100u32.to_le_bytes());
        bytes[64..68].copy_from_slice(&0x9200u32.to_le_bytes());
        let info = Info::parse(&bytes);
        assert_eq!(info.cmdline, Some(0x9000));
        assert_eq!(info.modules, None, "module flag is clear");
        assert_eq!(info.memory_map, Some((0x9100, 48)));
        assert_eq!(info.boot_loader_name, None, "name flag is clear");
    }

    fn entry(base: u64, len: u64, kind: u32) -> [u8; 24] {
        let mut e = [0u8; 24];
        e[0..4].copy_from_slice(&20u32.to_le_bytes());
        e[4..12].copy_from_slice(&base.to_le_bytes());
        e[12..20].copy_from_slice(&len.to_le_bytes());
        e[20..24].copy_from_slice(&kind.to_le_bytes());
        e
    }

    #[test]
    fn memory_map_keeps_usable_ram_only() {
        let mut map = Vec::new();
        map.extend(entry(0, 0x9fc00, 1));
        map.extend(entry(0xf0000, 0x10000, 2));
        map.extend(entry(0x10_0000, 0x1fee_0000, 1));
        map.extend(entry(0x1_0000_0000, 0, 1));
        map.extend(&entry(0x2000_0000, 0x1000, 1)[..10]);
        let ram: Vec<_> = usable_ram(&map).collect();
        assert_eq!(ram, [0..0x9fc00, 0x10_0000..0x1ffe_0000]);
    }

    #[test]
    fn module_entry() {
        let mut bytes = [0u8; MODULE_LEN];
        bytes[0..4].copy_from_slice(&0x12_3000u32.to_le_bytes());
        bytes[4..8].copy_from_slice(&0x52_3456u32.to_le_bytes());
        assert_eq!(module_range(&bytes), 0x12_3000..0x52_3456);
    }

    #[test]
    fn kernel_args_drop_the_image_path_except_from_grub2() {
        let qemu = Some("qemu");
        assert_eq!(kernel_args("/tmp/loader32 foo bar", qemu), "foo bar");
        assert_eq!(
            kernel_args("/boot/loader  -freq 2000 -- x ", None),
            "-freq 2000 -- x"
        );
        assert_eq!(kernel_args("/tmp/loader32 ", qemu), "");
        assert_eq!(kernel_args("", qemu), "");
        let grub = Some("GRUB 2.06-13+deb12u2");
        assert_eq!(kernel_args("-- from grub", grub), "-- from grub");
        assert_eq!(kernel_args("", grub), "");
    }
}
