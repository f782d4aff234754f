//! virtio-net (modern PCI transport, virtio 1.x §5.1) through the `virtio-drivers` crate's raw
//! driver, with receive buffers we own and keep posted, polled from the endpoint thread.
//!
//! Transmission does not wait for the device: a frame is handed over in one of [`TX_SLOTS`]
//! buffers and the buffer is taken back once the device has used it (virtio 1.x §2.7.14, the
//! used ring), at the next transmit. Under TCG, QEMU's virtio-net transmits from its main
//! loop, so waiting for each completion (every ACK of an upload) stalled the endpoint for as
//! long as that thread took to get scheduled.

use alloc::boxed::Box;

use smoltcp::phy::{self, DeviceCapabilities};
use smoltcp::time::Instant;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{
    ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, PciRoot,
};
use virtio_drivers::transport::{DeviceType, Transport};

use super::RxToken;
use crate::hw::VirtioHal;

/// Receive buffers kept posted (and the virtqueue size): the TCP window is at most this many
/// segments (see `ethernet_caps`). 64 x 2 KiB.
const QUEUE: usize = 64;
const BUF: usize = 2048;
/// Transmit buffers in flight at most.
const TX_SLOTS: usize = 16;
/// Largest Ethernet frame we accept (no VLAN tags, no jumbo frames).
const MTU: usize = 1514;

/// A DMA buffer. Its alignment keeps it inside one 4 KiB page, so it is physically contiguous.
#[repr(C, align(2048))]
struct Buf([u8; BUF]);

impl Buf {
    fn new() -> Box<Buf> {
        Box::new(Buf([0; BUF]))
    }
}

pub struct VirtioNic {
    dev: VirtIONetRaw<VirtioHal, PciTransport, QUEUE>,
    rx: [Box<Buf>; QUEUE],
    /// The virtqueue token of the request each receive buffer is posted under.
    posted: [Option<u16>; QUEUE],
    tx: [Box<Buf>; TX_SLOTS],
    /// The virtqueue token and frame length of each transmit buffer the device holds.
    in_flight: [Option<(u16, usize)>; TX_SLOTS],
    /// The receive buffer whose frame was last handed to smoltcp in place: posted again at the
    /// next receive or transmit, once the token that borrowed it is gone.
    lent: Option<usize>,
}

impl core::fmt::Debug for VirtioNic {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioNic")
            .field("mac", &self.mac())
            .finish_non_exhaustive()
    }
}

impl VirtioNic {
    /// Bring up `df` if it is a virtio network device; `Ok(None)` if it is something else.
    pub fn probe<C: ConfigurationAccess>(
        root: &mut PciRoot<C>,
        df: DeviceFunction,
        info: &DeviceFunctionInfo,
    ) -> Result<Option<VirtioNic>, &'static str> {
        if virtio_drivers::transport::pci::virtio_device_type(info) != Some(DeviceType::Network) {
            return Ok(None);
        }
        let transport = match PciTransport::new::<VirtioHal, C>(root, df) {
            Ok(t) => t,
            // A transitional device without `disable-legacy=on` has no modern capabilities.
            Err(_) => {
                return Err("virtio-net without modern PCI capabilities (use disable-legacy=on)");
            }
        };
        debug_assert_eq!(transport.device_type(), DeviceType::Network);
        let dev = VirtIONetRaw::new(transport).map_err(|_| "virtio-net initialisation failed")?;
        let mut nic = VirtioNic {
            dev,
            rx: core::array::from_fn(|_| Buf::new()),
            posted: [None; QUEUE],
            tx: core::array::from_fn(|_| Buf::new()),
            in_flight: [None; TX_SLOTS],
            lent: None,
        };
        for i in 0..QUEUE {
            nic.post(i);
        }
        Ok(Some(nic))
    }

    pub fn mac(&self) -> [u8; 6] {
        self.dev.mac_address()
    }

    fn post(&mut self, i: usize) {
        // SAFETY: `rx[i]` is heap memory owned by `self` for as long as the device may write it;
        // we do not touch it again until poll_receive hands back this token (see receive()).
        self.posted[i] = unsafe { self.dev.receive_begin(&mut self.rx[i].0) }.ok();
    }

    /// Post the buffer of the frame last handed out again.
    fn give_back(&mut self) {
        if let Some(i) = self.lent.take() {
            self.post(i);
        }
    }

    /// The next received frame, in place in its DMA buffer (no copy: under TCG every copy of
    /// an upload's bytes counts); the buffer is posted again at the next call.
    pub fn receive(&mut self, _ts: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        self.give_back();
        let token = self.dev.poll_receive()?;
        let i = self.posted.iter().position(|t| *t == Some(token))?;
        self.posted[i] = None;
        // SAFETY: `rx[i]` is the buffer that was posted under `token`.
        let done = unsafe { self.dev.receive_complete(token, &mut self.rx[i].0) };
        let Some((hdr, len)) = done.ok().filter(|&(hdr, len)| hdr + len <= BUF) else {
            self.post(i);
            return None;
        };
        let slot = self.free_slot();
        self.lent = Some(i);
        let VirtioNic {
            dev,
            rx,
            tx,
            in_flight,
            ..
        } = self;
        let frame = RxToken::Lent(&rx[i].0[hdr..hdr + len]);
        Some((
            frame,
            TxToken {
                tx: TxSide { dev, tx, in_flight },
                slot,
            },
        ))
    }

    pub fn transmit(&mut self, _ts: Instant) -> Option<TxToken<'_>> {
        self.give_back();
        let slot = self.free_slot()?;
        let can_send = self.dev.can_send();
        let VirtioNic {
            dev, tx, in_flight, ..
        } = self;
        can_send.then_some(TxToken {
            tx: TxSide { dev, tx, in_flight },
            slot: Some(slot),
        })
    }

    /// A transmit buffer the device does not hold (after taking back what it has used).
    fn free_slot(&mut self) -> Option<usize> {
        TxSide {
            dev: &mut self.dev,
            tx: &mut self.tx,
            in_flight: &mut self.in_flight,
        }
        .free_slot()
    }

    pub fn capabilities(&self) -> DeviceCapabilities {
        super::ethernet_caps(MTU, QUEUE)
    }
}

/// The transmit half of the NIC: what a [`TxToken`] needs while a received frame is lent out.
struct TxSide<'a> {
    dev: &'a mut VirtIONetRaw<VirtioHal, PciTransport, QUEUE>,
    tx: &'a mut [Box<Buf>; TX_SLOTS],
    in_flight: &'a mut [Option<(u16, usize)>; TX_SLOTS],
}

impl TxSide<'_> {
    /// A transmit buffer the device does not hold (after taking back what it has used).
    fn free_slot(&mut self) -> Option<usize> {
        self.reclaim();
        self.in_flight.iter().position(Option::is_none)
    }

    /// Take back the transmit buffers the device has used.
    fn reclaim(&mut self) {
        while let Some(token) = self.dev.poll_transmit() {
            let Some(slot) = self
                .in_flight
                .iter()
                .position(|f| f.is_some_and(|(t, _)| t == token))
            else {
                // Not ours (cannot happen): leave the used ring alone rather than spin.
                return;
            };
            let (_, len) = self.in_flight[slot].take().unwrap_or_default();
            // SAFETY: the buffer and length that were passed to transmit_begin for `token`.
            // A failure only means the device reported an error for a frame TCP retransmits.
            let _ = unsafe { self.dev.transmit_complete(token, &self.tx[slot].0[..len]) };
        }
    }
}

/// Room to send one frame: the NIC's transmit half and a free transmit buffer. The token
/// handed out with a received frame (for an immediate reply) may have none yet: then it waits
/// for one.
pub struct TxToken<'a> {
    tx: TxSide<'a>,
    slot: Option<usize>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut nic = self.tx;
        let slot = match self.slot {
            Some(slot) => slot,
            None => loop {
                if let Some(slot) = nic.free_slot() {
                    break slot;
                }
                core::hint::spin_loop();
            },
        };
        let buf = &mut nic.tx[slot].0;
        let hdr = nic.dev.fill_buffer_header(buf).unwrap_or(0);
        let len = len.min(BUF - hdr);
        let r = f(&mut buf[hdr..hdr + len]);
        let frame = &nic.tx[slot].0[..hdr + len];
        // SAFETY: `tx[slot]` is owned by the NIC (boxed: it does not move) and is not touched
        // again until the device has used it: `in_flight[slot]` keeps the slot taken until
        // `reclaim` sees its token in the used ring. A refusal drops the frame (TCP
        // retransmits).
        if let Ok(token) = unsafe { nic.dev.transmit_begin(frame) } {
            nic.in_flight[slot] = Some((token, hdr + len));
        }
        r
    }
}
