//! Reading one file from QEMU's fw_cfg through its I/O ports; the decisions are in
//! `hermitage_boot::fwcfg`.

use super::Vec;
use core::arch::asm;

use hermitage_boot::fwcfg::{self, ENTRY_LEN};

fn select(item: u16) {
    // SAFETY: the fw_cfg selector port only picks which item the data port reads; it has no
    // effect on memory (and no device answers it outside QEMU).
    unsafe {
        asm!("out dx, ax", in("dx") fwcfg::SELECTOR_PORT, in("ax") item, options(nomem, nostack))
    }
}

fn read(buf: &mut [u8]) {
    for b in buf {
        // SAFETY: reading the fw_cfg data port advances within the selected item only.
        unsafe {
            asm!("in al, dx", in("dx") fwcfg::DATA_PORT, out("al") *b, options(nomem, nostack))
        }
    }
}

/// The contents of fw_cfg file `name`, or `None` without fw_cfg (Bochs, real machines) or
/// without that file. Files over `max` bytes are ignored.
pub fn read_file(name: &str, max: u32) -> Option<Vec<u8>> {
    let mut sig = [0u8; 4];
    select(fwcfg::SIGNATURE);
    read(&mut sig);
    if sig != fwcfg::SIGNATURE_BYTES {
        return None;
    }
    select(fwcfg::FILE_DIR);
    let mut head = [0u8; 4];
    read(&mut head);
    let mut found = None;
    for _ in 0..fwcfg::dir_count(head).min(4096) {
        let mut entry = [0u8; ENTRY_LEN];
        read(&mut entry);
        if found.is_none() {
            found = fwcfg::entry_named(&entry, name);
        }
    }
    let file = found.filter(|f| f.size <= max)?;
    let mut bytes = Vec::new();
    bytes.resize(file.size as usize, 0u8);
    select(file.select);
    read(&mut bytes);
    Some(bytes)
}
