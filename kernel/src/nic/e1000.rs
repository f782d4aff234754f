//! Intel 8254x ("e1000": 82540EM and relatives), the NIC Bochs emulates (and QEMU's `-device
//! e1000`). Legacy descriptors, polled, no interrupts; registers and layouts from the Intel
//! PCI/PCI-X Family of Gigabit Ethernet Controllers Software Developer's Manual (8254x SDM),
//! chapters 3 (descriptors) and 13 (registers).
//!
//! No `unsafe` here: registers go through `hw::mmio_*`, and everything the device reads or
//! writes by DMA (descriptor rings and packet buffers) is made of atomics, so every access is a
//! real load or store the compiler cannot elide or reorder past the fences we place.

#![forbid(unsafe_code)]

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering, fence};

use smoltcp::phy::{self, DeviceCapabilities};

use super::RxToken;
use smoltcp::time::Instant;
use virtio_drivers::transport::pci::bus::{
    Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, PciRoot,
};

use crate::hw;

/// Devices this driver runs: 82540EM (Bochs, QEMU `e1000`), 82545EM (copper), 82543GC.
const DEVICE_IDS: [u16; 3] = [0x100E, 0x100F, 0x1004];
const INTEL: u16 = 0x8086;

// Registers (8254x SDM 13.4).
const CTRL: u64 = 0x0000;
const EERD: u64 = 0x0014;
const ICR: u64 = 0x00C0;
const IMC: u64 = 0x00D8;
const RCTL: u64 = 0x0100;
const TCTL: u64 = 0x0400;
const TIPG: u64 = 0x0410;
const RDBAL: u64 = 0x2800;
const RDBAH: u64 = 0x2804;
const RDLEN: u64 = 0x2808;
const RDH: u64 = 0x2810;
const RDT: u64 = 0x2818;
const TDBAL: u64 = 0x3800;
const TDBAH: u64 = 0x3804;
const TDLEN: u64 = 0x3808;
const TDH: u64 = 0x3810;
const TDT: u64 = 0x3818;
const MTA: u64 = 0x5200;
const RAL0: u64 = 0x5400;
const RAH0: u64 = 0x5404;

const CTRL_ASDE: u32 = 1 << 5;
const CTRL_SLU: u32 = 1 << 6;
const CTRL_RST: u32 = 1 << 26;
const CTRL_PHY_RST: u32 = 1 << 31;
const EERD_START: u32 = 1 << 0;
const EERD_DONE: u32 = 1 << 4;
/// Receive: enable, accept broadcast, 2048-byte buffers (BSIZE 00, BSEX 0), strip the CRC.
const RCTL_VALUE: u32 = (1 << 1) | (1 << 15) | (1 << 26);
/// Transmit: enable, pad short packets, collision threshold 0x0F, collision distance 0x40
/// (full duplex), the values the SDM recommends (14.5).
const TCTL_VALUE: u32 = (1 << 1) | (1 << 3) | (0x0F << 4) | (0x40 << 12);
/// Inter-packet gap for copper (IPGT 10, IPGR1 8, IPGR2 6; SDM 13.4.34).
const TIPG_VALUE: u32 = 10 | (8 << 10) | (6 << 20);
const RAH_AV: u32 = 1 << 31;

/// Transmit descriptor command: end of packet, insert FCS, report status.
const TX_CMD_EOP_IFCS_RS: u64 = 0x01 | 0x02 | 0x08;
/// Descriptor status "descriptor done" (both directions), "end of packet" (receive).
const DD: u64 = 1 << 0;
const EOP: u64 = 1 << 1;

const RX_DESCS: usize = 32;
const TX_DESCS: usize = 8;
const BUF: usize = 2048;
const WORDS: usize = BUF / 8;
/// Largest Ethernet frame we send or accept (no VLAN tags, no jumbo frames), without CRC.
const MTU: usize = 1514;

/// A legacy descriptor (16 bytes): the buffer address, then length/status words. The receive
/// and transmit layouts differ only in the second quadword (SDM 3.2.3 and 3.3.3).
#[repr(C, align(16))]
struct Desc {
    addr: AtomicU64,
    word: AtomicU64,
}

/// A ring of `N` descriptors. 4 KiB alignment keeps it in one page (physically contiguous).
#[repr(C, align(4096))]
struct Ring<const N: usize>([Desc; N]);

impl<const N: usize> Ring<N> {
    fn new() -> Box<Self> {
        Box::new(Ring(core::array::from_fn(|_| Desc {
            addr: AtomicU64::new(0),
            word: AtomicU64::new(0),
        })))
    }
}

/// A packet buffer; its alignment keeps it inside one page.
#[repr(C, align(2048))]
struct Buf([AtomicU64; WORDS]);

impl Buf {
    fn new() -> Box<Buf> {
        Box::new(Buf(core::array::from_fn(|_| AtomicU64::new(0))))
    }

    fn read(&self, out: &mut [u8]) {
        for (chunk, word) in out.chunks_mut(8).zip(self.0.iter()) {
            let bytes = word.load(Ordering::Relaxed).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn write(&self, data: &[u8]) {
        for (chunk, word) in data.chunks(8).zip(self.0.iter()) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
    }
}

/// The physical address of `value`, which must lie within one page (checked).
fn phys_of<T>(value: &T) -> Result<u64, &'static str> {
    hw::phys_contiguous(core::ptr::from_ref(value) as usize, size_of::<T>())
        .ok_or("e1000: DMA memory not physically contiguous")
}

pub struct E1000 {
    regs: u64,
    mac: [u8; 6],
    rx: Box<Ring<RX_DESCS>>,
    rx_bufs: [Box<Buf>; RX_DESCS],
    /// The next receive descriptor the device will complete.
    rx_next: usize,
    tx: Box<Ring<TX_DESCS>>,
    tx_bufs: [Box<Buf>; TX_DESCS],
    /// The next transmit descriptor we fill.
    tx_next: usize,
}

impl core::fmt::Debug for E1000 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("E1000")
            .field("regs", &self.regs)
            .field("mac", &self.mac)
            .finish_non_exhaustive()
    }
}

impl E1000 {
    /// Bring up `df` if it is an e1000 we drive; `Ok(None)` if it is something else.
    pub fn probe<C: ConfigurationAccess>(
        root: &mut PciRoot<C>,
        df: DeviceFunction,
        info: &DeviceFunctionInfo,
    ) -> Result<Option<E1000>, &'static str> {
        if info.vendor_id != INTEL || !DEVICE_IDS.contains(&info.device_id) {
            return Ok(None);
        }
        let bar = root
            .bar_info(df, 0)
            .ok()
            .flatten()
            .and_then(|b| b.memory_address_size())
            .filter(|&(addr, size)| addr != 0 && size >= 0x6000)
            .ok_or("e1000: BAR 0 is not an assigned memory BAR")?;
        let (addr, size) = bar;
        hw::map_device_memory(addr, size).map_err(|_| "e1000: cannot map BAR 0")?;
        let (_, command) = root.get_status_command(df);
        root.set_command(df, command | Command::MEMORY_SPACE | Command::BUS_MASTER);

        let mut nic = E1000 {
            regs: addr,
            mac: [0; 6],
            rx: Ring::new(),
            rx_bufs: core::array::from_fn(|_| Buf::new()),
            rx_next: 0,
            tx: Ring::new(),
            tx_bufs: core::array::from_fn(|_| Buf::new()),
            tx_next: 0,
        };
        nic.reset()?;
        nic.mac = nic.read_mac()?;
        nic.start()?;
        Ok(Some(nic))
    }

    fn read(&self, reg: u64) -> u32 {
        hw::mmio_read32(self.regs + reg)
    }

    fn write(&self, reg: u64, value: u32) {
        hw::mmio_write32(self.regs + reg, value);
    }

    /// Global reset, interrupts masked, link up (SDM 14.3-14.5).
    fn reset(&self) -> Result<(), &'static str> {
        self.write(IMC, u32::MAX);
        self.write(CTRL, self.read(CTRL) | CTRL_RST);
        // The reset completes within 1 us on hardware; emulators do it at once.
        let deadline = hw::monotonic_micros() + 100_000;
        while self.read(CTRL) & CTRL_RST != 0 {
            if hw::monotonic_micros() > deadline {
                return Err("e1000: reset did not complete");
            }
            core::hint::spin_loop();
        }
        self.write(IMC, u32::MAX);
        let _ = self.read(ICR);
        let ctrl = self.read(CTRL) & !CTRL_PHY_RST;
        self.write(CTRL, ctrl | CTRL_SLU | CTRL_ASDE);
        Ok(())
    }

    /// The MAC address: receive address 0 as loaded from the EEPROM at reset, or the EEPROM's
    /// first three words read directly when that is empty.
    fn read_mac(&self) -> Result<[u8; 6], &'static str> {
        let (low, high) = (self.read(RAL0), self.read(RAH0));
        let mut mac = [0u8; 6];
        if high & RAH_AV != 0 && (low != 0 || high & 0xFFFF != 0) {
            mac[..4].copy_from_slice(&low.to_le_bytes());
            mac[4..].copy_from_slice(&(high as u16).to_le_bytes());
            return Ok(mac);
        }
        for word in 0..3u32 {
            self.write(EERD, EERD_START | (word << 8));
            let deadline = hw::monotonic_micros() + 100_000;
            let value = loop {
                let v = self.read(EERD);
                if v & EERD_DONE != 0 {
                    break v >> 16;
                }
                if hw::monotonic_micros() > deadline {
                    return Err("e1000: EEPROM read timed out");
                }
            };
            mac[word as usize * 2..][..2].copy_from_slice(&(value as u16).to_le_bytes());
        }
        self.write(RAL0, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
        self.write(
            RAH0,
            u32::from(u16::from_le_bytes([mac[4], mac[5]])) | RAH_AV,
        );
        Ok(mac)
    }

    /// Program the rings and enable receive and transmit.
    fn start(&mut self) -> Result<(), &'static str> {
        for i in 0..128 {
            self.write(MTA + i * 4, 0);
        }
        for (desc, buf) in self.rx.0.iter().zip(self.rx_bufs.iter()) {
            desc.addr.store(phys_of(&**buf)?, Ordering::Relaxed);
            desc.word.store(0, Ordering::Relaxed);
        }
        for desc in &self.tx.0 {
            // Start with every transmit descriptor "done", so each is free to fill.
            desc.word.store(DD << 32, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        let rx = phys_of(&*self.rx)?;
        self.write(RDBAL, rx as u32);
        self.write(RDBAH, (rx >> 32) as u32);
        self.write(RDLEN, (RX_DESCS * 16) as u32);
        self.write(RDH, 0);
        self.write(RDT, (RX_DESCS - 1) as u32);
        let tx = phys_of(&*self.tx)?;
        self.write(TDBAL, tx as u32);
        self.write(TDBAH, (tx >> 32) as u32);
        self.write(TDLEN, (TX_DESCS * 16) as u32);
        self.write(TDH, 0);
        self.write(TDT, 0);
        self.write(TIPG, TIPG_VALUE);
        self.write(TCTL, TCTL_VALUE);
        self.write(RCTL, RCTL_VALUE);
        Ok(())
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn receive(&mut self, _ts: Instant) -> Option<(RxToken<'static>, TxToken<'_>)> {
        loop {
            let i = self.rx_next;
            let word = self.rx.0[i].word.load(Ordering::Acquire);
            if word & (DD << 32) == 0 {
                return None;
            }
            let len = (word & 0xFFFF) as usize;
            let status = word >> 32 & 0xFF;
            let errors = word >> 40 & 0xFF;
            let mut frame = heapless::Vec::<u8, { super::FRAME }>::new();
            // Frames spanning descriptors (longer than our MTU) or with errors are dropped.
            let whole = status & EOP != 0 && errors == 0 && len <= MTU;
            if whole && frame.resize(len, 0).is_ok() {
                self.rx_bufs[i].read(&mut frame);
            }
            // Hand the descriptor back: clear its status, then move the tail onto it.
            self.rx.0[i].word.store(0, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            self.write(RDT, i as u32);
            self.rx_next = (i + 1) % RX_DESCS;
            if !frame.is_empty() {
                return Some((RxToken::Copied(frame), TxToken(self)));
            }
        }
    }

    fn tx_free(&self) -> bool {
        self.tx.0[self.tx_next].word.load(Ordering::Acquire) & (DD << 32) != 0
    }

    pub fn transmit(&mut self, _ts: Instant) -> Option<TxToken<'_>> {
        self.tx_free().then_some(TxToken(self))
    }

    fn send(&mut self, frame: &[u8]) {
        let i = self.tx_next;
        let desc = &self.tx.0[i];
        self.tx_bufs[i].write(frame);
        let Ok(addr) = phys_of(&*self.tx_bufs[i]) else {
            return;
        };
        desc.addr.store(addr, Ordering::Relaxed);
        desc.word.store(
            frame.len() as u64 | TX_CMD_EOP_IFCS_RS << 24,
            Ordering::Relaxed,
        );
        fence(Ordering::SeqCst);
        self.tx_next = (i + 1) % TX_DESCS;
        self.write(TDT, self.tx_next as u32);
    }

    pub fn capabilities(&self) -> DeviceCapabilities {
        // One descriptor always stays unused (RDT never catches up with RDH).
        super::ethernet_caps(MTU, RX_DESCS - 1)
    }
}

pub struct TxToken<'a>(&'a mut E1000);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = [0u8; MTU];
        let len = len.min(MTU);
        let r = f(&mut frame[..len]);
        // The descriptor was free when the token was made (transmit/receive checked DD). If it
        // is not (a second token from one receive), wait: the device finishes it shortly.
        let deadline = hw::monotonic_micros() + 10_000;
        while !self.0.tx_free() && hw::monotonic_micros() < deadline {
            core::hint::spin_loop();
        }
        if self.0.tx_free() {
            self.0.send(&frame[..len]);
        }
        r
    }
}
