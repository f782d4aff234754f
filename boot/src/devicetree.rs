//! The flattened device tree handed to the kernel.
//!
//! Hermit 0.11.0 on x86_64 learns its RAM only from `memory@...` nodes of a device tree
//! (`physicalmem::detect_from_fdt`) and reads `/chosen/bootargs` when the platform information
//! carries no command line. The root needs a `compatible` string: the kernel compares its first
//! entry with `hermit,uefi`. Format: Devicetree Specification v0.4, chapter 5 (FDT) and 3.4
//! (memory nodes).

use alloc::format;
use alloc::vec::Vec;
use core::ops::Range;

use vm_fdt::FdtWriter;

/// Builds a device tree with one memory node per usable RAM range and the given boot arguments.
pub fn build(
    ram: impl Iterator<Item = Range<u64>>,
    bootargs: &str,
) -> Result<Vec<u8>, vm_fdt::Error> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "hermitage,multiboot")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", bootargs)?;
    fdt.end_node(chosen)?;

    for range in ram {
        let memory = fdt.begin_node(&format!("memory@{:x}", range.start))?;
        fdt.property_string("device_type", "memory")?;
        fdt.property_array_u64("reg", &[range.start, range.end - range.start])?;
        fdt.end_node(memory)?;
    }
    fdt.end_node(root)?;
    fdt.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_reads_memory_and_bootargs() {
        let blob = build([0..0x9fc00, 0x10_0000..0x1ffe_0000].into_iter(), "-- a b").unwrap();
        // The same queries hermit-kernel 0.11.0 makes, with the same parser.
        let fdt = fdt::Fdt::new(&blob).unwrap();
        assert_eq!(fdt.root().compatible().first(), "hermitage,multiboot");
        assert_eq!(fdt.chosen().bootargs(), Some("-- a b"));
        let regions: Vec<_> = fdt
            .find_all_nodes("/memory")
            .map(|m| m.reg().unwrap().next().unwrap())
            .map(|r| (r.starting_address as u64, r.size.unwrap() as u64))
            .collect();
        assert_eq!(regions, [(0, 0x9fc00), (0x10_0000, 0x1fee_0000)]);
    }
}
