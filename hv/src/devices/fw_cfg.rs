//! QEMU's firmware configuration interface (fw_cfg), traditional I/O-port form: how test
//! kernels written for QEMU/KVM (kvm-unit-tests, for one) learn the machine's shape.
//!
//! Interface (QEMU `docs/specs/fw_cfg.rst`, x86): a 16-bit selector register at port 0x510 and
//! an 8-bit data register at 0x511. Writing a key to the selector picks an item and rewinds to
//! its first byte; each data read returns the next byte, and 0 past the item's end or for a key
//! that names nothing. Data writes are ignored (as in QEMU since 2.4). The DMA interface at 0x514
//! is not offered: the ID item says "traditional interface only".
//!
//! Items: the signature "QEMU" (key 0x0000), the ID (0x0001), the RAM size (0x0003, 64-bit
//! little-endian), the number of vCPUs (0x0005) and their maximum (0x000F, 16-bit), and the
//! file directory (0x0019: a big-endian count, then 64-byte entries of big-endian size, key,
//! reserved and a 56-byte name) listing named files from key 0x0020 on.
//!
//! Items are set when the VM is built (never from an exit), so they live in `Vec`s; an access
//! from an exit only indexes them.

use alloc::vec::Vec;

/// I/O port of the selector register.
pub const FW_CFG_PORT_SEL: u16 = 0x510;
/// I/O port of the data register.
pub const FW_CFG_PORT_DATA: u16 = 0x511;
/// Key: the signature "QEMU".
pub const KEY_SIGNATURE: u16 = 0x0000;
/// Key: interface feature bits (bit 0 traditional, bit 1 DMA).
pub const KEY_ID: u16 = 0x0001;
/// Key: guest RAM in bytes.
pub const KEY_RAM_SIZE: u16 = 0x0003;
/// Key: vCPUs at boot.
pub const KEY_NB_CPUS: u16 = 0x0005;
/// Key: most vCPUs.
pub const KEY_MAX_CPUS: u16 = 0x000F;
/// Key: the file directory.
pub const KEY_FILE_DIR: u16 = 0x0019;
/// Key of the first named file.
pub const KEY_FIRST_FILE: u16 = 0x0020;
/// Longest file name (with its terminating NUL: 56 bytes).
pub const MAX_NAME: usize = 55;
/// Most named files.
pub const MAX_FILES: usize = 32;

/// Why a file could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FwCfgError {
    /// Empty, longer than [`MAX_NAME`] bytes, or containing NUL.
    BadName,
    /// A file of that name exists.
    Duplicate,
    /// [`MAX_FILES`] files exist.
    Full,
    /// Larger than 4 GiB - 1 (the directory's size field).
    TooLarge,
}

/// The fw_cfg device of one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FwCfg {
    /// (key, content) of every item but the directory.
    items: Vec<(u16, Vec<u8>)>,
    /// (name, key) of each named file, in key order.
    files: Vec<(Vec<u8>, u16)>,
    /// The file directory as the guest reads it.
    dir: Vec<u8>,
    selector: u16,
    offset: usize,
}

impl FwCfg {
    /// A device describing a VM of `cpus` vCPUs and `ram_bytes` of RAM, without files.
    pub fn new(cpus: u16, ram_bytes: u64) -> FwCfg {
        let mut d = FwCfg {
            items: Vec::new(),
            files: Vec::new(),
            dir: Vec::new(),
            selector: KEY_SIGNATURE,
            offset: 0,
        };
        d.items.push((KEY_SIGNATURE, b"QEMU".to_vec()));
        d.items.push((KEY_ID, 1u32.to_le_bytes().to_vec()));
        d.items
            .push((KEY_RAM_SIZE, ram_bytes.to_le_bytes().to_vec()));
        d.items.push((KEY_NB_CPUS, cpus.to_le_bytes().to_vec()));
        d.items.push((KEY_MAX_CPUS, cpus.to_le_bytes().to_vec()));
        d.rebuild_dir();
        d
    }

    /// Add a named file (e.g. `opt/hermitage/token`); returns its key.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        let name = name.as_bytes();
        if name.is_empty() || name.len() > MAX_NAME || name.contains(&0) {
            return Err(FwCfgError::BadName);
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(FwCfgError::Duplicate);
        }
        if self.files.len() >= MAX_FILES {
            return Err(FwCfgError::Full);
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge);
        }
        let key = KEY_FIRST_FILE + self.files.len() as u16;
        self.items.push((key, data));
        self.files.push((name.to_vec(), key));
        self.rebuild_dir();
        Ok(key)
    }

    fn rebuild_dir(&mut self) {
        let mut dir = Vec::with_capacity(4 + 64 * self.files.len());
        dir.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for (name, key) in &self.files {
            let size = self.item(*key).map_or(0, <[u8]>::len) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut n = [0u8; 56];
            n[..name.len()].copy_from_slice(name);
            dir.extend_from_slice(&n);
        }
        self.dir = dir;
    }

    fn item(&self, key: u16) -> Option<&[u8]> {
        if key == KEY_FILE_DIR {
            return Some(&self.dir);
        }
        self.items
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// Guest reset: selector back to the signature, at its start. The items stay (they
    /// describe the machine, which a reset does not change).
    pub fn reset(&mut self) {
        self.selector = KEY_SIGNATURE;
        self.offset = 0;
    }

    /// The selected key.
    pub const fn selector(&self) -> u16 {
        self.selector
    }

    /// IN at `offset` from 0x510 (0: selector, reads 0; 1: data).
    pub fn read(&mut self, offset: u16, data: &mut [u8]) {
        match offset {
            1 => {
                for b in data.iter_mut() {
                    *b = self
                        .item(self.selector)
                        .and_then(|v| v.get(self.offset))
                        .copied()
                        .unwrap_or(0);
                    self.offset = self.offset.saturating_add(1);
                }
            }
            _ => data.fill(0),
        }
    }

    /// OUT at `offset` from 0x510: a 16-bit (or 8-bit, zero-extended) write to the selector
    /// picks an item; data writes are ignored.
    pub fn write(&mut self, offset: u16, data: &[u8]) {
        if offset == 0 && !data.is_empty() {
            let lo = data[0];
            let hi = data.get(1).copied().unwrap_or(0);
            self.selector = u16::from_le_bytes([lo, hi]);
            self.offset = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(d: &mut FwCfg, key: u16) {
        d.write(0, &key.to_le_bytes());
    }

    fn read_n(d: &mut FwCfg, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        for b in out.iter_mut() {
            let mut one = [0u8];
            d.read(1, &mut one);
            *b = one[0];
        }
        out
    }

    /// What kvm-unit-tests' `fwcfg_get_u64` and SeaBIOS's probe do.
    #[test]
    fn machine_shape() {
        let mut d = FwCfg::new(4, 256 << 20);
        select(&mut d, KEY_SIGNATURE);
        assert_eq!(read_n(&mut d, 4), b"QEMU");
        select(&mut d, KEY_ID);
        assert_eq!(
            read_n(&mut d, 4),
            [1, 0, 0, 0],
            "traditional interface, no DMA"
        );
        select(&mut d, KEY_NB_CPUS);
        assert_eq!(read_n(&mut d, 2), [4, 0]);
        select(&mut d, KEY_MAX_CPUS);
        assert_eq!(read_n(&mut d, 2), [4, 0]);
        select(&mut d, KEY_RAM_SIZE);
        let ram = read_n(&mut d, 8);
        assert_eq!(u64::from_le_bytes(ram.try_into().unwrap()), 256 << 20);
    }

    #[test]
    fn past_the_end_and_unknown_keys_read_zero() {
        let mut d = FwCfg::new(1, 1 << 20);
        select(&mut d, KEY_SIGNATURE);
        assert_eq!(read_n(&mut d, 6), [b'Q', b'E', b'M', b'U', 0, 0]);
        select(&mut d, 0x1234);
        assert_eq!(read_n(&mut d, 3), [0, 0, 0]);
        // Reselecting rewinds.
        select(&mut d, KEY_SIGNATURE);
        assert_eq!(read_n(&mut d, 1), b"Q");
        // Data writes change nothing; the selector register reads 0.
        d.write(1, &[0xAA]);
        assert_eq!(read_n(&mut d, 1), b"E");
        let mut sel = [0xFFu8; 2];
        d.read(0, &mut sel);
        assert_eq!(sel, [0, 0]);
    }

    #[test]
    fn file_directory() {
        let mut d = FwCfg::new(1, 1 << 20);
        assert_eq!(
            d.add_file("opt/hermitage/token", b"secret".to_vec()),
            Ok(0x20)
        );
        assert_eq!(d.add_file("etc/other", vec![1; 300]), Ok(0x21));
        assert_eq!(d.add_file("etc/other", vec![]), Err(FwCfgError::Duplicate));
        assert_eq!(d.add_file("", vec![]), Err(FwCfgError::BadName));
        assert_eq!(
            d.add_file(&"x".repeat(56), vec![]),
            Err(FwCfgError::BadName)
        );
        select(&mut d, KEY_FILE_DIR);
        let count = u32::from_be_bytes(read_n(&mut d, 4).try_into().unwrap());
        assert_eq!(count, 2);
        let mut found = vec![];
        for _ in 0..count {
            let e = read_n(&mut d, 64);
            let size = u32::from_be_bytes(e[0..4].try_into().unwrap());
            let key = u16::from_be_bytes([e[4], e[5]]);
            let end = e[8..].iter().position(|&b| b == 0).unwrap();
            found.push((
                String::from_utf8(e[8..8 + end].to_vec()).unwrap(),
                key,
                size,
            ));
        }
        assert_eq!(
            found,
            [
                ("opt/hermitage/token".to_string(), 0x20, 6),
                ("etc/other".to_string(), 0x21, 300)
            ]
        );
        select(&mut d, 0x20);
        assert_eq!(read_n(&mut d, 6), b"secret");
    }

    #[test]
    fn file_limit() {
        let mut d = FwCfg::new(1, 1 << 20);
        for i in 0..MAX_FILES {
            d.add_file(&format!("f{i}"), vec![]).unwrap();
        }
        assert_eq!(d.add_file("one-more", vec![]), Err(FwCfgError::Full));
    }

    #[test]
    fn reset_rewinds_and_keeps_items() {
        let mut d = FwCfg::new(2, 1 << 20);
        d.add_file("a", b"xyz".to_vec()).unwrap();
        select(&mut d, 0x20);
        read_n(&mut d, 2);
        d.reset();
        assert_eq!(d.selector(), KEY_SIGNATURE);
        assert_eq!(read_n(&mut d, 4), b"QEMU");
        select(&mut d, 0x20);
        assert_eq!(read_n(&mut d, 3), b"xyz");
    }
}
