//! Our own NIC drivers. Hermit 0.11.0's TCP path has a close defect (see PLATFORM.md), so the
//! kernel is built without Hermit's network stack and Hermitage drives the NIC and smoltcp
//! itself: the endpoint then never blocks inside kernel code we do not own.

mod pci;
mod virtio;

use smoltcp::phy::{Device, DeviceCapabilities};
use smoltcp::time::Instant;
use virtio_drivers::transport::pci::bus::PciRoot;

pub use virtio::VirtioNic;

/// The NIC the endpoint uses. An enum rather than a trait object so smoltcp's `Device`
/// (with generic associated token types) stays static.
#[derive(Debug)]
pub enum Nic {
    Virtio(VirtioNic),
}

impl Nic {
    /// Find and initialise the first supported NIC on PCI bus 0..=255.
    pub fn probe() -> Result<Nic, &'static str> {
        let mut root = PciRoot::new(pci::PortCam);
        for bus in 0..=255u8 {
            for (df, info) in root.enumerate_bus(bus) {
                if let Some(nic) = VirtioNic::probe(&mut root, df, &info)? {
                    return Ok(Nic::Virtio(nic));
                }
            }
        }
        Err("no supported NIC found (need virtio-net-pci with disable-legacy=on)")
    }

    pub fn name(&self) -> &'static str {
        match self {
            Nic::Virtio(_) => "virtio-net",
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        match self {
            Nic::Virtio(n) => n.mac(),
        }
    }
}

impl Device for Nic {
    type RxToken<'a> = virtio::RxToken;
    type TxToken<'a> = virtio::TxToken<'a>;

    fn receive(&mut self, ts: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        match self {
            Nic::Virtio(n) => n.receive(ts),
        }
    }

    fn transmit(&mut self, ts: Instant) -> Option<Self::TxToken<'_>> {
        match self {
            Nic::Virtio(n) => n.transmit(ts),
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        match self {
            Nic::Virtio(n) => n.capabilities(),
        }
    }
}
