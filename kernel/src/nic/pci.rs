//! PCI configuration space through the legacy I/O ports 0xCF8/0xCFC ("configuration
//! mechanism #1", PCI Local Bus spec 3.0 §3.2.2.3.2), the one mechanism QEMU's `pc` and `q35`
//! machines and Bochs all provide. Used to find our NIC; Hermit's own PCI code is not built.

use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

use crate::hw;

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

/// Configuration access over ports 0xCF8/0xCFC.
#[derive(Debug)]
pub struct PortCam;

fn address(df: DeviceFunction, offset: u8) -> u32 {
    1 << 31
        | u32::from(df.bus) << 16
        | u32::from(df.device) << 11
        | u32::from(df.function) << 8
        | u32::from(offset & 0xFC)
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        hw::outl(CONFIG_ADDRESS, address(df, offset));
        hw::inl(CONFIG_DATA)
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        hw::outl(CONFIG_ADDRESS, address(df, offset));
        hw::outl(CONFIG_DATA, data);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}
