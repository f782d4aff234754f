//! The flattened device tree handed to the kernel.
//!
//! Hermit 0.11.0 on x86_64 learns its RAM only from `memory@...` nodes of a device tree
//! (`physicalmem::detect_from_fdt`) and reads `/chosen/bootargs` when the platform information
//! carries no command line. The root needs a `compatible` string: the kernel compares its first
//! entry with `hermit,uefi`.
//!
//! The blob is written here rather than with `vm-fdt`: that crate needs `hashbrown` 0.14, which
//! stops compiling when the kernel build (in the same `cargo build`) turns on `allocator-api2`'s
//! `nightly` feature. The format is small: Devicetree Specification v0.4, chapter 5 (header,
//! memory reservation block, structure block, strings block) and section 3.4 (memory nodes).

use alloc::format;
use alloc::vec::Vec;
use core::ops::Range;

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;
const HEADER_LEN: usize = 40;
/// The memory reservation block: only its terminating empty entry.
const RESERVATION_LEN: usize = 16;

/// Builds a device tree with one memory node per usable RAM range and the given boot arguments.
pub fn build(ram: impl Iterator<Item = Range<u64>>, bootargs: &str) -> Vec<u8> {
    let mut fdt = Writer::default();
    fdt.begin_node("");
    fdt.property("compatible", b"hermitage,multiboot\0");
    fdt.property("#address-cells", &2u32.to_be_bytes());
    fdt.property("#size-cells", &2u32.to_be_bytes());

    fdt.begin_node("chosen");
    fdt.property("bootargs", format!("{bootargs}\0").as_bytes());
    fdt.end_node();

    for range in ram {
        fdt.begin_node(&format!("memory@{:x}", range.start));
        fdt.property("device_type", b"memory\0");
        let reg = [
            range.start.to_be_bytes(),
            (range.end - range.start).to_be_bytes(),
        ];
        fdt.property("reg", reg.as_flattened());
        fdt.end_node();
    }
    fdt.end_node();
    fdt.finish()
}

/// Structure and strings blocks under construction.
#[derive(Default)]
struct Writer {
    structure: Vec<u8>,
    strings: Vec<u8>,
}

impl Writer {
    fn token(&mut self, token: u32) {
        self.structure.extend(token.to_be_bytes());
    }

    /// Appends `bytes` and pads the structure block to the next 4-byte boundary.
    fn padded(&mut self, bytes: &[u8]) {
        self.structure.extend(bytes);
        self.structure
            .resize(self.structure.len().next_multiple_of(4), 0);
    }

    fn begin_node(&mut self, name: &str) {
        self.token(FDT_BEGIN_NODE);
        self.padded(format!("{name}\0").as_bytes());
    }

    fn end_node(&mut self) {
        self.token(FDT_END_NODE);
    }

    fn property(&mut self, name: &str, value: &[u8]) {
        let name_offset = self.string(name);
        self.token(FDT_PROP);
        self.token(value.len() as u32);
        self.token(name_offset);
        self.padded(value);
    }

    /// Offset of `name` in the strings block, added on first use.
    fn string(&mut self, name: &str) -> u32 {
        let mut offset = 0;
        for existing in self.strings.split(|&b| b == 0) {
            if existing == name.as_bytes() && offset < self.strings.len() {
                return offset as u32;
            }
            offset += existing.len() + 1;
        }
        let offset = self.strings.len();
        self.strings.extend(name.as_bytes());
        self.strings.push(0);
        offset as u32
    }

    fn finish(mut self) -> Vec<u8> {
        self.token(FDT_END);
        let structure_at = HEADER_LEN + RESERVATION_LEN;
        let strings_at = structure_at + self.structure.len();
        let total = strings_at + self.strings.len();
        let header = [
            FDT_MAGIC,
            total as u32,
            structure_at as u32,
            strings_at as u32,
            HEADER_LEN as u32, // memory reservation block
            17,                // version
            16,                // last compatible version
            0,                 // boot CPU
            self.strings.len() as u32,
            self.structure.len() as u32,
        ];
        let mut blob = Vec::with_capacity(total);
        header
            .iter()
            .for_each(|field| blob.extend(field.to_be_bytes()));
        blob.extend([0; RESERVATION_LEN]);
        blob.extend(self.structure);
        blob.extend(self.strings);
        blob
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_reads_memory_and_bootargs() {
        let blob = build(
            [0..0x9fc00, 0x10_0000..0x1ffe_0000].into_iter(),
            "-- a \"b c\"",
        );
        // The same queries hermit-kernel 0.11.0 makes, with the same parser.
        let fdt = fdt::Fdt::new(&blob).unwrap();
        assert_eq!(fdt.total_size(), blob.len());
        assert_eq!(fdt.root().compatible().first(), "hermitage,multiboot");
        assert_eq!(fdt.chosen().bootargs(), Some("-- a \"b c\""));
        let regions: Vec<_> = fdt
            .find_all_nodes("/memory")
            .map(|m| m.reg().unwrap().next().unwrap())
            .map(|r| (r.starting_address as u64, r.size.unwrap() as u64))
            .collect();
        assert_eq!(regions, [(0, 0x9fc00), (0x10_0000, 0x1fee_0000)]);
        let memory = fdt.find_node("/memory@100000").unwrap();
        assert_eq!(
            memory.property("device_type").unwrap().as_str(),
            Some("memory")
        );
    }

    #[test]
    fn property_names_are_stored_once() {
        let blob = build([0..0x1000, 0x2000..0x3000, 0x4000..0x5000].into_iter(), "");
        let strings = b"compatible\0#address-cells\0#size-cells\0bootargs\0device_type\0reg\0";
        assert!(blob.ends_with(strings));
        assert_eq!(fdt::Fdt::new(&blob).unwrap().chosen().bootargs(), Some(""));
    }
}
