//! The devices of a VM: what a guest finds behind IN, OUT, MMIO outside RAM and the local
//! APIC's MSRs, on one time base.
//!
//! Why this set: a guest needs a console (COM1 with interrupts and input), the PC's interrupt
//! controllers and timers (8259A pair, 8254 PIT, MC146818 RTC, and with a local APIC the IOAPIC:
//! [`chipset`]), fw_cfg so kernels written for QEMU learn the machine's shape, a way to end a test
//! run with a status (the debug-exit port, as QEMU's `isa-debug-exit` with `iobase=0xf4`) and the
//! two classic ways to reset a PC (the reset control register at 0xCF9 and the keyboard
//! controller's pulse-reset command). Ports without a device read as all ones (an open ISA bus)
//! and swallow writes, and the VM's stats count both so a guest that expects more shows up.
//!
//! | ports       | device                 | reads                         | writes                        |
//! |-------------|------------------------|-------------------------------|-------------------------------|
//! | 0x20-0x21, 0xA0-0xA1, 0x4D0-0x4D1 | 8259A pair, ELCR ([`pic`]) | registers | ICW/OCW, ELCR |
//! | 0x40-0x43, 0x61 | 8254 PIT, port B ([`pit`]) | counters, status, OUT2 | modes, counts, gate |
//! | 0x70-0x71   | RTC and CMOS ([`rtc`]) | time, status, CMOS bytes      | index (bit 7: NMI mask), data |
//! | 0x3F8–0x3FF | 16550A UART ([`uart`]) | registers, RX FIFO            | THR -> console ring           |
//! | 0x510-0x511 | fw_cfg ([`fw_cfg`])    | selected item                 | selector                      |
//! | 0xF4        | debug exit             | unhandled                     | any size: stop, value = code  |
//! | 0x60        | keyboard data          | 0                             | ignored                       |
//! | 0x64        | keyboard status/cmd    | 0x1C (input buffer empty)     | 0xFE: reset; others ignored   |
//! | 0xCF9       | reset control (RCR)    | last value written            | bit 2 set: reset              |
//!
//! MMIO: the IOAPIC page at 0xFEC00000 and the local APIC's page (at its IA32_APIC_BASE, in
//! xAPIC mode) when the VM has a local APIC; every other address outside RAM reads all ones and
//! drops writes, counted by the caller.
//!
//! Devices sit on two buses of address ranges ([`bus`]): the port bus ([`PORT_MAP`]) and the
//! MMIO bus ([`MMIO_MAP`], for guest-physical addresses outside RAM). An access goes to the
//! device owning its first address, which sees the access as bytes, whatever the width. Byte
//! devices on the ISA bus (UART, PIC, PIT, RTC) see a 16- or 32-bit access as byte accesses to
//! consecutive ports, as the ISA bus splits it (bytes past a device's last port read as an open
//! bus). The debug-exit port takes any width (the value is masked to it). The keyboard
//! controller and RCR answer byte accesses only: a wider access at 0xCF8 is the PCI configuration
//! address register, not a reset.
//!
//! # Time and interrupt lines
//!
//! Every timer runs on the VM's guest clock ([`GuestClock`]: guest TSC at a fixed ratio, so a
//! guest calibrating its TSC against the PIT, the RTC or the APIC timer gets exactly the ratio
//! they all derive from). The run loop calls [`Devices::advance`] with the guest TSC after every
//! exit; accesses in between happen at that time. After an access or an advance, the UART's and
//! RTC's line levels go to the chipset (IRQ 4 and 8 on the PIC and the IOAPIC), and the PIT's
//! edges onto IRQ 0. [`Devices::next_deadline_tsc`] says when the vCPU must exit (or a halted one
//! wake) for a timer to fire on time. The guest clock restarts at zero with each reset
//! ([`Devices::start_clock`]); the RTC carries its date across.
//!
//! Devices are decided here and counted by the caller; nothing here blocks, and nothing on an
//! access allocates.

pub mod bus;
pub mod chipset;
pub mod console;
pub mod fw_cfg;
pub mod ioapic;
pub mod lapic;
pub mod pic;
pub mod pit;
#[cfg(test)]
mod reset_state_tests;
pub mod rtc;
pub mod string_io;
pub mod uart;

pub use bus::{Bus, BusError, BusRange};
pub use console::{CONSOLE_RING_SIZE, ConsoleRead, ConsoleRing};
pub use uart::{COM1_BASE, Uart16550, UartReg};

use chipset::{Chipset, ChipsetConfig};
use fw_cfg::FwCfg;
use rtc::{Rtc, RtcPort};

use crate::exit::ResetTrigger;
use crate::irq::{IrqLine, LineEvent};
use crate::mem::GuestPhys;
use crate::time::{GuestClock, GuestTime};

/// Debug-exit port: a write stops the VM with the value as exit code.
pub const DEBUG_EXIT_PORT: u16 = 0xF4;
/// Keyboard controller data port.
pub const KBD_DATA_PORT: u16 = 0x60;
/// Keyboard controller status (read) and command (write) port.
pub const KBD_STATUS_PORT: u16 = 0x64;
/// Keyboard controller command: pulse the reset line (8042 "pulse output port" 0xFE).
pub const KBD_CMD_RESET: u8 = 0xFE;
/// Keyboard controller status as read: system flag (2), last write was a command (3),
/// keyboard not inhibited (4); output (0) and input (1) buffers empty, so polling guests
/// proceed.
pub const KBD_STATUS: u8 = 0x1C;
/// Reset control register (Intel chipsets, also on AMD FCHs).
pub const RESET_CONTROL_PORT: u16 = 0xCF9;
/// RCR bit 2: reset the CPU. Bit 1 selects a hard reset and bit 3 a full reset; to a VM
/// they are all the same reset.
pub const RCR_RESET_CPU: u8 = 1 << 2;

/// An I/O access width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum IoSize {
    /// 8 bits.
    Byte = 1,
    /// 16 bits.
    Word = 2,
    /// 32 bits.
    Dword = 4,
}

impl IoSize {
    /// From a width in bytes (1, 2 or 4).
    pub const fn from_bytes(bytes: u8) -> Option<IoSize> {
        match bytes {
            1 => Some(IoSize::Byte),
            2 => Some(IoSize::Word),
            4 => Some(IoSize::Dword),
            _ => None,
        }
    }

    /// Width in bytes.
    pub const fn bytes(self) -> u8 {
        self as u8
    }

    /// The value mask (all ones of this width), also what an open bus reads.
    pub const fn mask(self) -> u32 {
        match self {
            IoSize::Byte => 0xFF,
            IoSize::Word => 0xFFFF,
            IoSize::Dword => 0xFFFF_FFFF,
        }
    }
}

/// The result of an IN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRead {
    /// The value, masked to the width.
    pub value: u32,
    /// Whether a device answered (else `value` is all ones and the read counts as unhandled).
    pub handled: bool,
}

/// The result of an OUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortWrite {
    /// A device took it.
    Done,
    /// No device: dropped (counted as unhandled).
    Unhandled,
    /// The guest asked to stop with this code (debug-exit port).
    DebugExit(u32),
    /// The guest asked for a reset.
    Reset(ResetTrigger),
}

/// A device on the port bus. Adding one: a variant here, its range in [`PORT_MAP`], and an arm
/// in `Devices::port_read` / `Devices::port_write`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortDevice {
    /// COM1, 8 ports from [`COM1_BASE`].
    Uart,
    /// The debug-exit port [`DEBUG_EXIT_PORT`].
    DebugExit,
    /// The 8042 data port [`KBD_DATA_PORT`].
    KeyboardData,
    /// The 8042 status/command port [`KBD_STATUS_PORT`].
    KeyboardCommand,
    /// The reset control register [`RESET_CONTROL_PORT`].
    ResetControl,
    /// The chipset's ports: the 8259A pair and its ELCR, the PIT and port B.
    Chipset,
    /// The RTC's index and data ports.
    Rtc,
    /// fw_cfg's selector and data ports.
    FwCfg,
}

impl PortDevice {
    /// Whether an access can change when the device next needs guest time to pass (or its
    /// interrupt line): the UART, the chipset's timers and controllers, the RTC. The others
    /// (debug exit, 8042, RCR, fw_cfg) keep no time.
    const fn timed(self) -> bool {
        matches!(
            self,
            PortDevice::Uart | PortDevice::Chipset | PortDevice::Rtc
        )
    }
}

/// A device on the MMIO bus besides the chipset's pages (the IOAPIC and the xAPIC page are the
/// chipset's: `Devices::mmio_read` asks it first). None yet: a memory-mapped device joins as a
/// variant, an entry in [`MMIO_MAP`] and an arm in `Devices::mmio_dispatch_read` /
/// `Devices::mmio_dispatch_write`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmioDevice {}

/// Capacity of the port bus (the PC/AT set of PIC, PIT, 8042, RTC, two UARTs, POST, debug exit,
/// PCI, reset fits with room).
pub const PORT_BUS_CAPACITY: usize = 24;
/// Capacity of the MMIO bus.
pub const MMIO_BUS_CAPACITY: usize = 16;

/// The port bus of a VM: ports (as `u64`) to devices.
pub type PortBus = Bus<PortDevice, PORT_BUS_CAPACITY>;
/// The MMIO bus of a VM: guest-physical addresses to devices.
pub type MmioBus = Bus<MmioDevice, MMIO_BUS_CAPACITY>;

/// Where each port device sits: (first port, number of ports, device).
pub const PORT_MAP: [(u16, u16, PortDevice); 12] = [
    (0x20, 2, PortDevice::Chipset),
    (0x40, 4, PortDevice::Chipset),
    (0x61, 1, PortDevice::Chipset),
    (rtc::RTC_BASE, rtc::RTC_PORTS, PortDevice::Rtc),
    (0xA0, 2, PortDevice::Chipset),
    (0x4D0, 2, PortDevice::Chipset),
    (fw_cfg::FW_CFG_PORT_SEL, 2, PortDevice::FwCfg),
    (COM1_BASE, 8, PortDevice::Uart),
    (DEBUG_EXIT_PORT, 1, PortDevice::DebugExit),
    (KBD_DATA_PORT, 1, PortDevice::KeyboardData),
    (KBD_STATUS_PORT, 1, PortDevice::KeyboardCommand),
    (RESET_CONTROL_PORT, 1, PortDevice::ResetControl),
];

/// Where each MMIO device sits: (base, length, device).
pub const MMIO_MAP: [(u64, u64, MmioDevice); 0] = [];

/// No timer due.
const NEVER: GuestTime = GuestTime(u64::MAX);

/// The shape of a VM's platform, fixed when it is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlatformConfig {
    /// The interrupt controllers (with or without a local APIC).
    pub chipset: ChipsetConfig,
    /// Guest TSC ticks per second (the host's TSC rate).
    pub tsc_hz: u64,
    /// What the RTC reads when the VM is built, in seconds since 1970 (the host's clock).
    pub rtc_start_unix: i64,
    /// vCPUs, for fw_cfg.
    pub cpus: u16,
    /// Guest RAM in bytes, for fw_cfg.
    pub ram_bytes: u64,
}

impl PlatformConfig {
    /// A legacy PC (PIC and PIT, no local APIC) with one vCPU, no RAM reported, a 1 GHz TSC
    /// and the RTC at the epoch: what host tests and a freshly made runtime start from.
    pub const DEFAULT: PlatformConfig = PlatformConfig {
        chipset: ChipsetConfig::LEGACY,
        tsc_hz: 1_000_000_000,
        rtc_start_unix: 0,
        cpus: 1,
        ram_bytes: 0,
    };
}

/// The devices of one VM, plus its console log.
#[derive(Debug)]
pub struct Devices {
    /// COM1.
    pub uart: Uart16550,
    /// Everything the guest transmitted. Kept across guest resets.
    pub console: ConsoleRing,
    /// Interrupt controllers and the PIT.
    pub chipset: Chipset,
    /// The RTC and CMOS memory.
    pub rtc: Rtc,
    /// fw_cfg.
    pub fw_cfg: FwCfg,
    /// Last value written to the reset control register.
    rcr: u8,
    /// The guest clock (restarted at every reset by [`start_clock`](Self::start_clock)).
    clock: GuestClock,
    /// Guest time of the last [`advance`](Self::advance): when accesses happen.
    now: GuestTime,
    /// The earliest time a timer changes a device without an access (`GuestTime(u64::MAX)`:
    /// none), valid while `!stale`: until then [`advance`](Self::advance) has nothing to poll.
    due: GuestTime,
    /// `due` as a guest TSC.
    due_tsc: Option<u64>,
    /// An access (or a reset, or input) since `due` was computed.
    stale: bool,
    /// Which port belongs to which device.
    ports: PortBus,
    /// Which guest-physical range belongs to which device.
    mmio: MmioBus,
}

impl Default for Devices {
    fn default() -> Self {
        Self::new()
    }
}

impl Devices {
    /// Devices of [`PlatformConfig::DEFAULT`] in reset state with an empty console.
    pub fn new() -> Self {
        Self::with(&PlatformConfig::DEFAULT)
    }

    /// Devices for `platform`, in reset state, with an empty console, on their buses. The
    /// guest clock's epoch is guest TSC 0 until [`start_clock`](Self::start_clock).
    pub fn with(platform: &PlatformConfig) -> Self {
        let mut ports = PortBus::new();
        for (base, len, dev) in PORT_MAP {
            // The map is a constant checked by a test: these inserts cannot fail.
            let _ = ports.insert(base.into(), len.into(), dev);
        }
        let mut mmio = MmioBus::new();
        for (base, len, dev) in MMIO_MAP {
            let _ = mmio.insert(base, len, dev);
        }
        Devices {
            uart: Uart16550::RESET,
            console: ConsoleRing::new(),
            chipset: Chipset::new(platform.chipset),
            rtc: Rtc::new(platform.rtc_start_unix),
            fw_cfg: FwCfg::new(platform.cpus, platform.ram_bytes),
            rcr: 0,
            clock: GuestClock::new(platform.tsc_hz, 0),
            now: GuestTime::ZERO,
            due: NEVER,
            due_tsc: None,
            stale: true,
            ports,
            mmio,
        }
    }

    /// Guest reset: device registers back to reset state; the console log is kept, so output
    /// from before the reset stays readable at its offsets, and the RTC keeps its date and
    /// CMOS memory. Guest time goes back to zero; call [`start_clock`](Self::start_clock) with
    /// the guest TSC at which the reset guest starts.
    pub fn reset(&mut self) {
        self.uart.reset();
        self.chipset.reset();
        self.rtc.reset(self.now);
        self.fw_cfg.reset();
        self.rcr = 0;
        self.now = GuestTime::ZERO;
        self.stale = true;
    }

    /// Start the guest clock at guest TSC `tsc` (guest time 0), after a reset or when the VM
    /// is first started.
    pub fn start_clock(&mut self, tsc: u64) {
        self.clock = GuestClock::new(self.clock.tsc_hz(), tsc);
        self.now = GuestTime::ZERO;
        self.stale = true;
    }

    /// Queue host input for the guest's COM1 (see [`Uart16550::push_input`]); returns how
    /// many bytes were taken.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        self.stale = true;
        self.uart.push_input(bytes)
    }

    /// The guest clock.
    pub const fn clock(&self) -> &GuestClock {
        &self.clock
    }

    /// Guest time of the last [`advance`](Self::advance).
    pub const fn now(&self) -> GuestTime {
        self.now
    }

    /// Guest time has reached guest TSC `tsc`: bring every timer up to it and update the
    /// interrupt lines (PIT edges, the UART's and RTC's levels). Time never goes back: an
    /// older TSC changes nothing. The exit path's common case, no access since the last call
    /// and no timer due yet, only reads the clock.
    pub fn advance(&mut self, tsc: u64) {
        let now = self.clock.now(tsc);
        if now > self.now {
            self.now = now;
        }
        if self.stale || self.now >= self.due {
            self.refresh();
        }
    }

    /// Poll every timed device at `now`, update the lines and compute when the next timer is
    /// due.
    fn refresh(&mut self) {
        let now = self.now;
        self.uart.poll(now);
        self.rtc.poll(now);
        self.chipset.poll(now);
        self.update_lines();
        let earliest = [
            self.chipset.next_deadline(now),
            self.uart.next_deadline(),
            self.rtc.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        self.due = earliest.map_or(NEVER, |t| t.max(now));
        self.due_tsc = earliest.map(|t| self.clock.tsc_at(t.max(now)));
        self.stale = false;
    }

    /// The UART's and RTC's interrupt lines to the chipset, as they are now.
    fn update_lines(&mut self) {
        self.chipset
            .set_line(IrqLine::COM1, LineEvent::Level(self.uart.irq_level()));
        self.chipset
            .set_line(IrqLine::RTC, LineEvent::Level(self.rtc.irq_level()));
    }

    /// The guest TSC by which the vCPU must have exited (or a halted one been woken) for the
    /// next timer event to be delivered on time: the earliest deadline of the PIT, the local
    /// APIC timer, the RTC and the UART. `None`: no timer is running.
    pub fn next_deadline_tsc(&mut self) -> Option<u64> {
        if self.stale {
            self.refresh();
        }
        self.due_tsc
    }

    /// The port bus.
    pub fn port_bus(&self) -> &PortBus {
        &self.ports
    }

    /// The MMIO bus.
    pub fn mmio_bus(&self) -> &MmioBus {
        &self.mmio
    }

    /// IN of `size` from `port`.
    pub fn read(&mut self, port: u16, size: IoSize) -> PortRead {
        let mut data = [0u8; 4];
        let data = &mut data[..size.bytes() as usize];
        let handled = match self.ports.lookup(port.into()) {
            Some((dev, offset)) => {
                self.stale |= dev.timed();
                self.port_read(dev, port, offset, data)
            }
            None => false,
        };
        if !handled {
            return PortRead {
                value: size.mask(),
                handled: false,
            };
        }
        let mut value = 0u32;
        for (i, b) in data.iter().enumerate() {
            value |= u32::from(*b) << (8 * i);
        }
        PortRead {
            value,
            handled: true,
        }
    }

    /// OUT of `value` (masked to `size`) to `port`.
    pub fn write(&mut self, port: u16, size: IoSize, value: u32) -> PortWrite {
        let bytes = value.to_le_bytes();
        let data = &bytes[..size.bytes() as usize];
        match self.ports.lookup(port.into()) {
            Some((dev, offset)) => {
                self.stale |= dev.timed();
                self.port_write(dev, port, offset, data)
            }
            None => PortWrite::Unhandled,
        }
    }

    /// A read of `data.len()` bytes at `port` (`offset` into `dev`'s ports): whether the
    /// device answered (else the bus reads all ones).
    fn port_read(&mut self, dev: PortDevice, port: u16, offset: u64, data: &mut [u8]) -> bool {
        let now = self.now;
        match (dev, data) {
            (PortDevice::Uart, data) => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = u16::try_from(offset + i as u64)
                        .ok()
                        .and_then(UartReg::from_offset)
                        .map_or(0xFF, |reg| self.uart.read(reg, now));
                }
                // Reading IIR, RBR or LSR can lower the line.
                self.update_lines();
                true
            }
            (PortDevice::Chipset, data) => {
                self.chipset.port_read(port, data, now);
                true
            }
            (PortDevice::Rtc, data) => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = u16::try_from(offset + i as u64)
                        .ok()
                        .and_then(RtcPort::from_offset)
                        .map_or(0xFF, |p| self.rtc.read(p, now));
                }
                // Reading register C lowers IRQ 8.
                self.update_lines();
                true
            }
            (PortDevice::FwCfg, data) => {
                self.fw_cfg.read(offset as u16, data);
                true
            }
            (PortDevice::DebugExit, _) => false,
            (PortDevice::KeyboardData, [b]) => {
                *b = 0;
                true
            }
            (PortDevice::KeyboardCommand, [b]) => {
                *b = KBD_STATUS;
                true
            }
            (PortDevice::ResetControl, [b]) => {
                *b = self.rcr;
                true
            }
            // The 8042 and the RCR answer byte accesses only.
            (PortDevice::KeyboardData | PortDevice::KeyboardCommand, _) => false,
            (PortDevice::ResetControl, _) => false,
        }
    }

    /// A write of `data` at `port` (`offset` into `dev`'s ports).
    fn port_write(&mut self, dev: PortDevice, port: u16, offset: u64, data: &[u8]) -> PortWrite {
        let now = self.now;
        match (dev, data) {
            (PortDevice::Uart, data) => {
                for (i, b) in data.iter().enumerate() {
                    let reg = u16::try_from(offset + i as u64)
                        .ok()
                        .and_then(UartReg::from_offset);
                    if let Some(reg) = reg {
                        self.uart.write(reg, *b, now, &mut self.console);
                    }
                }
                self.update_lines();
                PortWrite::Done
            }
            (PortDevice::Chipset, data) => {
                self.chipset.port_write(port, data, now);
                PortWrite::Done
            }
            (PortDevice::Rtc, data) => {
                for (i, b) in data.iter().enumerate() {
                    if let Some(p) = u16::try_from(offset + i as u64)
                        .ok()
                        .and_then(RtcPort::from_offset)
                    {
                        self.rtc.write(p, *b, now);
                    }
                }
                self.update_lines();
                PortWrite::Done
            }
            (PortDevice::FwCfg, data) => {
                self.fw_cfg.write(offset as u16, data);
                PortWrite::Done
            }
            (PortDevice::DebugExit, data) => {
                let mut v = [0u8; 4];
                v[..data.len()].copy_from_slice(data);
                PortWrite::DebugExit(u32::from_le_bytes(v))
            }
            (PortDevice::KeyboardCommand, [KBD_CMD_RESET]) => {
                PortWrite::Reset(ResetTrigger::KeyboardController)
            }
            (PortDevice::KeyboardData | PortDevice::KeyboardCommand, [_]) => PortWrite::Done,
            (PortDevice::ResetControl, [b]) => {
                self.rcr = *b;
                if self.rcr & RCR_RESET_CPU != 0 {
                    PortWrite::Reset(ResetTrigger::Port0xCf9)
                } else {
                    PortWrite::Done
                }
            }
            (PortDevice::KeyboardData | PortDevice::KeyboardCommand, _) => PortWrite::Unhandled,
            (PortDevice::ResetControl, _) => PortWrite::Unhandled,
        }
    }

    /// Whether RDMSR/WRMSR of `index` goes to a device (the local APIC's MSRs, when the VM has
    /// one) rather than the MSR allow-list.
    pub fn handles_msr(&self, index: u32) -> bool {
        self.chipset.handles_msr(index)
    }

    /// RDMSR of a device MSR (see [`handles_msr`](Self::handles_msr)); `Err` is #GP.
    pub fn msr_read(&mut self, index: u32) -> Result<u64, lapic::Gp> {
        self.stale = true;
        self.chipset.msr_read(index, self.now)
    }

    /// WRMSR of a device MSR; `Err` is #GP.
    pub fn msr_write(&mut self, index: u32, value: u64) -> Result<(), lapic::Gp> {
        self.stale = true;
        let clock = self.clock;
        self.chipset.msr_write(index, value, self.now, &clock)
    }

    /// A guest read of `data.len()` bytes at `gpa` outside RAM. Returns whether a device
    /// claimed it; if none did, `data` is all ones (an open bus) and the caller counts it in
    /// [`crate::vm::VmStats::unhandled_mmio_reads`].
    pub fn mmio_read(&mut self, gpa: GuestPhys, data: &mut [u8]) -> bool {
        if self.chipset.claims_mmio(gpa.0) {
            self.stale = true;
            self.chipset.mmio_read(gpa.0, data, self.now);
            return true;
        }
        let handled = match self.mmio.lookup(gpa.0) {
            Some((dev, offset)) => self.mmio_dispatch_read(dev, offset, data),
            None => false,
        };
        if !handled {
            data.fill(0xFF);
        }
        handled
    }

    /// A guest write of `data` at `gpa` outside RAM. Returns whether a device claimed it; if
    /// none did, the write is dropped and the caller counts it in
    /// [`crate::vm::VmStats::unhandled_mmio_writes`].
    pub fn mmio_write(&mut self, gpa: GuestPhys, data: &[u8]) -> bool {
        if self.chipset.claims_mmio(gpa.0) {
            self.stale = true;
            self.chipset.mmio_write(gpa.0, data, self.now);
            return true;
        }
        match self.mmio.lookup(gpa.0) {
            Some((dev, offset)) => self.mmio_dispatch_write(dev, offset, data),
            None => false,
        }
    }

    fn mmio_dispatch_read(&mut self, dev: MmioDevice, _offset: u64, _data: &mut [u8]) -> bool {
        match dev {}
    }

    fn mmio_dispatch_write(&mut self, dev: MmioDevice, _offset: u64, _data: &[u8]) -> bool {
        match dev {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(d: &Devices) -> Vec<u8> {
        let mut out = vec![0; 256];
        let r = d.console.read(0, &mut out);
        out.truncate(r.copied);
        out
    }

    #[test]
    fn uart_via_ports() {
        let mut d = Devices::new();
        assert_eq!(d.write(0x3F8, IoSize::Byte, 0x141), PortWrite::Done);
        assert_eq!(console(&d), b"A");
        assert_eq!(
            d.read(0x3FD, IoSize::Byte),
            PortRead {
                value: 0x60,
                handled: true
            }
        );
        assert_eq!(d.read(0x3FA, IoSize::Byte).value, 0x01);
        // A 16-bit write to THR also writes IER (the next port), as on an ISA bus.
        d.write(0x3F8, IoSize::Word, 0x0342);
        assert_eq!(console(&d), b"AB");
        assert_eq!(d.read(0x3F9, IoSize::Byte).value, 0x03);
        // A 32-bit read at 0x3FC: MCR, LSR, MSR, SCR.
        d.write(0x3FF, IoSize::Byte, 0x5A);
        assert_eq!(d.read(0x3FC, IoSize::Dword).value, 0x5AB0_6000);
        // Straddling the end: the byte past 0x3FF reads as an open bus.
        assert_eq!(d.read(0x3FF, IoSize::Word).value, 0xFF5A);
    }

    #[test]
    fn debug_exit_any_width() {
        let mut d = Devices::new();
        assert_eq!(d.write(0xF4, IoSize::Dword, 1), PortWrite::DebugExit(1));
        assert_eq!(
            d.write(0xF4, IoSize::Byte, 0x1234),
            PortWrite::DebugExit(0x34)
        );
        assert!(!d.read(0xF4, IoSize::Dword).handled);
    }

    #[test]
    fn reset_control_register() {
        let mut d = Devices::new();
        assert_eq!(d.write(0xCF9, IoSize::Byte, 0x02), PortWrite::Done);
        assert_eq!(d.read(0xCF9, IoSize::Byte).value, 0x02);
        assert_eq!(
            d.write(0xCF9, IoSize::Byte, 0x06),
            PortWrite::Reset(ResetTrigger::Port0xCf9)
        );
        assert_eq!(
            d.write(0xCF9, IoSize::Byte, 0x04),
            PortWrite::Reset(ResetTrigger::Port0xCf9)
        );
        // A 32-bit write to 0xCF8 is PCI CONFIG_ADDRESS: never a reset.
        assert_eq!(
            d.write(0xCF8, IoSize::Dword, 0x8000_0600),
            PortWrite::Unhandled
        );
        d.reset();
        assert_eq!(d.read(0xCF9, IoSize::Byte).value, 0);
    }

    #[test]
    fn keyboard_controller() {
        let mut d = Devices::new();
        let status = d.read(0x64, IoSize::Byte);
        assert!(status.handled);
        assert_eq!(status.value & 0x02, 0, "input buffer empty");
        assert_eq!(status.value, 0x1C);
        assert_eq!(d.read(0x60, IoSize::Byte).value, 0);
        assert_eq!(d.write(0x64, IoSize::Byte, 0xD1), PortWrite::Done);
        assert_eq!(d.write(0x60, IoSize::Byte, 0xDF), PortWrite::Done);
        assert_eq!(
            d.write(0x64, IoSize::Byte, 0xFE),
            PortWrite::Reset(ResetTrigger::KeyboardController)
        );
        assert_eq!(d.write(0x64, IoSize::Word, 0xFE), PortWrite::Unhandled);
    }

    #[test]
    fn everything_else_is_an_open_bus() {
        let mut d = Devices::new();
        for (port, size, ones) in [
            (0x80, IoSize::Byte, 0xFF),       // POST
            (0x22, IoSize::Byte, 0xFF),       // just past the master PIC
            (0x72, IoSize::Byte, 0xFF),       // extended CMOS (not offered)
            (0xCFC, IoSize::Dword, u32::MAX), // PCI config data
            (0x3F7, IoSize::Word, 0xFFFF),    // just below COM1
            (0x2F8, IoSize::Byte, 0xFF),      // COM2
        ] {
            assert_eq!(
                d.read(port, size),
                PortRead {
                    value: ones,
                    handled: false
                }
            );
            assert_eq!(d.write(port, size, 0), PortWrite::Unhandled);
        }
    }

    #[test]
    fn reset_keeps_the_console() {
        let mut d = Devices::new();
        d.write(0x3F8, IoSize::Byte, b'x'.into());
        d.write(0x3FB, IoSize::Byte, 0x83);
        d.reset();
        assert_eq!(d.uart, Uart16550::RESET);
        assert_eq!(console(&d), b"x");
    }

    #[test]
    fn every_device_is_on_the_port_bus() {
        let d = Devices::new();
        assert_eq!(d.port_bus().ranges().len(), PORT_MAP.len());
        for (base, len, dev) in PORT_MAP {
            assert_eq!(d.port_bus().lookup(base.into()), Some((dev, 0)));
            let last = u64::from(base) + u64::from(len) - 1;
            assert_eq!(d.port_bus().lookup(last), Some((dev, u64::from(len) - 1)));
        }
        assert_eq!(d.mmio_bus().ranges().len(), MMIO_MAP.len());
    }

    #[test]
    fn unclaimed_mmio_is_an_open_bus() {
        let mut d = Devices::new();
        for (gpa, len) in [(0xFEE0_0000u64, 4usize), (0xFEC0_0000, 8), (0xE000_0000, 1)] {
            let mut buf = [0x12u8; 8];
            assert!(!d.mmio_read(GuestPhys(gpa), &mut buf[..len]));
            assert!(buf[..len].iter().all(|&b| b == 0xFF));
            assert!(
                buf[len..].iter().all(|&b| b == 0x12),
                "only the access is filled"
            );
            assert!(!d.mmio_write(GuestPhys(gpa), &buf[..len]));
        }
        // Dropped writes change nothing a port reads.
        assert_eq!(d.read(0xCF9, IoSize::Byte).value, 0);
    }

    /// The 8259A pair as Linux (and the built-in timer guests) set it up: vectors 0x20/0x28,
    /// cascade on IR2, 8086 mode; then `master_mask`/`slave_mask`.
    fn init_pics(d: &mut Devices, master_mask: u8, slave_mask: u8) {
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xA0, 0x11),
            (0xA1, 0x28),
            (0xA1, 0x02),
            (0xA1, 0x01),
            (0x21, master_mask),
            (0xA1, slave_mask),
        ] {
            assert_eq!(d.write(port, IoSize::Byte, v.into()), PortWrite::Done);
        }
    }

    /// Take the pending interrupt as the CPU would (INTA), if any.
    fn take(d: &mut Devices) -> Option<u8> {
        use crate::irq::InterruptController;
        let mut c = d.chipset.controller();
        c.pending_vector()?;
        c.acknowledge()
    }

    const MS: u64 = 1_000_000; // TSC ticks per ms at the default 1 GHz

    #[test]
    fn pit_ticks_reach_the_vcpu_through_the_pic_on_guest_time() {
        let mut d = Devices::new();
        d.start_clock(5_000);
        init_pics(&mut d, 0xFE, 0xFF);
        // Channel 0, lobyte/hibyte, mode 2, reload 1193 (~1 kHz).
        d.write(0x43, IoSize::Byte, 0x34);
        d.write(0x40, IoSize::Byte, 1193 & 0xFF);
        d.write(0x40, IoSize::Byte, 1193 >> 8);
        let mut tsc = 5_000;
        let mut ticks = 0;
        while tsc < 5_000 + 100 * MS {
            // The vCPU exits at the deadline the devices ask for (or earlier, at a random exit).
            let due = d.next_deadline_tsc().expect("the PIT runs");
            assert!(
                due > tsc || take(&mut d).is_some(),
                "a deadline in the past delivers"
            );
            tsc = due.min(tsc + 300_000);
            d.advance(tsc);
            if let Some(v) = take(&mut d) {
                assert_eq!(v, 0x20);
                ticks += 1;
                d.write(0x20, IoSize::Byte, 0x20); // non-specific EOI
            }
        }
        // 100 ms at 1193182/1193 Hz.
        assert!((99..=101).contains(&ticks), "{ticks} ticks");
    }

    #[test]
    fn rtc_periodic_interrupts_through_the_slave_pic_never_stall() {
        let mut d = Devices::new();
        d.start_clock(0);
        init_pics(&mut d, 0xFB, 0xFE);
        // Register A: rate 6 (1024 Hz); B: PIE; C read to clear.
        d.write(0x70, IoSize::Byte, 0x0A);
        d.write(0x71, IoSize::Byte, 0x26);
        d.write(0x70, IoSize::Byte, 0x0B);
        let b = d.read(0x71, IoSize::Byte).value as u8;
        d.write(0x70, IoSize::Byte, 0x0B);
        d.write(0x71, IoSize::Byte, u32::from(b | 0x40));
        d.write(0x70, IoSize::Byte, 0x0C);
        d.read(0x71, IoSize::Byte);
        let mut tsc = 0;
        let mut got = 0u32;
        let mut step = 17u64;
        // Exits at odd times: before, at and long after each deadline.
        while got < 500 {
            step = (step * 7919 + 13) % 2_500_000;
            let due = d.next_deadline_tsc();
            assert!(
                due.is_some() || take(&mut d).is_some(),
                "stalled after {got}: {d:?}"
            );
            tsc += step.max(1);
            d.advance(tsc);
            if let Some(v) = take(&mut d) {
                assert_eq!(v, 0x28);
                got += 1;
                d.write(0x70, IoSize::Byte, 0x0C);
                assert_ne!(d.read(0x71, IoSize::Byte).value & 0xC0, 0, "IRQF and PF");
                d.write(0xA0, IoSize::Byte, 0x20);
                d.write(0x20, IoSize::Byte, 0x20);
            }
            assert!(tsc < 10_000 * MS, "only {got} interrupts in 10 s");
        }
    }

    #[test]
    fn uart_interrupts_follow_ier_and_out2() {
        let mut d = Devices::new();
        init_pics(&mut d, 0xEF, 0xFF);
        // OUT2 gates IRQ 4; THRE interrupt enabled with THR empty raises it at once.
        d.write(0x3FC, IoSize::Byte, 0x0B);
        d.write(0x3F9, IoSize::Byte, 0x02);
        d.advance(0);
        assert_eq!(take(&mut d), Some(0x24));
        // IIR read clears THRE; EOI; nothing pending any more.
        assert_eq!(d.read(0x3FA, IoSize::Byte).value & 0x0F, 0x02);
        d.write(0x20, IoSize::Byte, 0x20);
        assert_eq!(take(&mut d), None);
        // Input with RDA enabled: IRQ 4 again once the byte is in the FIFO.
        d.write(0x3F9, IoSize::Byte, 0x01);
        assert_eq!(d.uart.push_input(b"x"), 1);
        d.advance(1_000);
        assert_eq!(take(&mut d), Some(0x24));
        assert_eq!(d.read(0x3F8, IoSize::Byte).value, u32::from(b'x'));
    }

    #[test]
    fn reset_restarts_guest_time_and_keeps_the_rtc_date() {
        let mut d = Devices::with(&PlatformConfig {
            rtc_start_unix: 1_700_000_000,
            ..PlatformConfig::DEFAULT
        });
        d.start_clock(1_000);
        d.advance(1_000 + 5_000 * MS);
        assert_eq!(d.now(), GuestTime(5_000 * MS));
        let before = d.rtc.unix_time(d.now());
        d.write(0x43, IoSize::Byte, 0x34);
        d.write(0x40, IoSize::Byte, 0x10);
        d.write(0x40, IoSize::Byte, 0x00);
        d.reset();
        d.start_clock(9_000 * MS);
        assert_eq!(d.now(), GuestTime::ZERO);
        assert_eq!(
            d.next_deadline_tsc(),
            None,
            "the PIT is back in its reset state"
        );
        assert_eq!(d.rtc.unix_time(d.now()), before, "the date carries across");
    }

    #[test]
    fn io_sizes() {
        assert_eq!(IoSize::from_bytes(2), Some(IoSize::Word));
        assert_eq!(IoSize::from_bytes(3), None);
        assert_eq!(IoSize::Dword.bytes(), 4);
    }
}
