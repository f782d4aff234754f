//! Our own NIC drivers. Hermit 0.11.0's TCP path has a close defect (see PLATFORM.md), so the
//! kernel is built without Hermit's network stack and Hermitage drives the NIC and smoltcp
//! itself: the endpoint then never blocks inside kernel code we do not own.
//!
//! Two drivers: virtio-net (QEMU) and the Intel 8254x "e1000" (Bochs, or QEMU `-device e1000`).

mod e1000;
mod pci;
mod virtio;

use smoltcp::phy::{self, Device, DeviceCapabilities};
use smoltcp::time::Instant;
use virtio_drivers::transport::pci::bus::PciRoot;

pub use e1000::E1000;
pub use virtio::VirtioNic;

/// Largest received frame either driver hands up (a 2 KiB DMA buffer).
const FRAME: usize = 2048;

/// The NIC the endpoint uses. An enum rather than a trait object so smoltcp's `Device`
/// (with generic associated token types) stays static.
#[derive(Debug)]
pub enum Nic {
    Virtio(VirtioNic),
    E1000(E1000),
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
                if let Some(nic) = E1000::probe(&mut root, df, &info)? {
                    return Ok(Nic::E1000(nic));
                }
            }
        }
        Err("no supported NIC found (need virtio-net-pci with disable-legacy=on, or an e1000)")
    }

    pub fn name(&self) -> &'static str {
        match self {
            Nic::Virtio(_) => "virtio-net",
            Nic::E1000(_) => "e1000",
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        match self {
            Nic::Virtio(n) => n.mac(),
            Nic::E1000(n) => n.mac(),
        }
    }
}

/// What both drivers tell smoltcp: Ethernet frames up to `mtu` bytes, and bursts of at most
/// `rx_buffers` frames (the receive buffers a driver keeps posted).
///
/// smoltcp caps every TCP window it advertises at `max_burst_size` segments, so that a peer
/// never sends more back-to-back frames than the NIC can hold. With a burst of one frame the
/// window was a single segment (1460 bytes): every segment waited for its ACK and a round of
/// the endpoint loop, and uploads crawled at ~80 KB/s under TCG. A NIC that runs out of posted
/// buffers holds further frames in the device model (QEMU queues them for virtio-net; an e1000
/// counts them missed and TCP retransmits), so the cap only has to match what is posted.
fn ethernet_caps(mtu: usize, rx_buffers: usize) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = smoltcp::phy::Medium::Ethernet;
    caps.max_transmission_unit = mtu;
    caps.max_burst_size = Some(rx_buffers.max(1));
    caps
}

/// A received frame: in the driver's DMA buffer (virtio-net, which reposts the buffer at its
/// next receive or transmit), or copied out of it (e1000, whose descriptor ring is handed back
/// at once).
pub enum RxToken<'a> {
    /// The frame where the device put it.
    Lent(&'a [u8]),
    /// A copy of the frame.
    Copied(heapless::Vec<u8, FRAME>),
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        match self {
            RxToken::Lent(frame) => f(frame),
            RxToken::Copied(frame) => f(&frame),
        }
    }
}

/// Room to send one frame on either NIC.
pub enum TxToken<'a> {
    Virtio(virtio::TxToken<'a>),
    E1000(e1000::TxToken<'a>),
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self {
            TxToken::Virtio(t) => t.consume(len, f),
            TxToken::E1000(t) => t.consume(len, f),
        }
    }
}

impl Device for Nic {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, ts: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        match self {
            Nic::Virtio(n) => n.receive(ts).map(|(r, t)| (r, TxToken::Virtio(t))),
            Nic::E1000(n) => n.receive(ts).map(|(r, t)| (r, TxToken::E1000(t))),
        }
    }

    fn transmit(&mut self, ts: Instant) -> Option<Self::TxToken<'_>> {
        match self {
            Nic::Virtio(n) => n.transmit(ts).map(TxToken::Virtio),
            Nic::E1000(n) => n.transmit(ts).map(TxToken::E1000),
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        match self {
            Nic::Virtio(n) => n.capabilities(),
            Nic::E1000(n) => n.capabilities(),
        }
    }
}
