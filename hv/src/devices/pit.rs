//! The 8254 programmable interval timer (ports 0x40-0x43) with the PC's port 0x61 (gate of
//! channel 2, speaker data, refresh toggle, OUT2).
//!
//! Why: a stock Linux without a local APIC timer ticks on channel 0 through IRQ 0 (its i8253
//! clockevent: mode 2 periodic with `PIT_LATCH` = 4773 at HZ = 250, mode 4 one-shot), and it
//! calibrates the TSC against channel 2 (`pit_calibrate_tsc`: mode 0 with the gate opened through
//! port 0x61, polling OUT2 in bit 5; `quick_pit_calibrate`: mode 0 from 0xFFFF, reading the MSB
//! until it changes). Both only work if the counter is an exact function of the same guest time
//! the TSC follows, so the input clock (1,193,182 Hz) is derived from the `now: GuestTime` the
//! caller passes to every access ([`GuestTime::ticks`] / [`GuestTime::at_tick`]); the model never
//! reads a clock and its whole state is a function of the times it was given.
//!
//! Behaviour follows the Intel 82C54 datasheet (order no. 231244): "Control word format",
//! "Write operations", "Read operations" (simple read, counter latch command, read-back command
//! and status byte), "Mode definitions" (modes 0-5, with the GATE table "Gate pin operations
//! summary"), and "Minimum and maximum initial counts" (0 is 65536 in binary, 10000 in BCD).
//!
//! | port | read                                   | write                                    |
//! |------|----------------------------------------|------------------------------------------|
//! | 0x40 | channel 0 count / status (latched)     | channel 0 count                          |
//! | 0x41 | channel 1 (refresh; gate tied high)    | channel 1 count                          |
//! | 0x42 | channel 2 (speaker; gate via 0x61)     | channel 2 count                          |
//! | 0x43 | 0xFF (no read on an 8254)              | control word, counter latch, read-back   |
//! | 0x61 | bits 3-0 as written, 4 refresh toggle, 5 OUT2 | bit 0 GATE2, bit 1 speaker data, 2-3 kept |
//!
//! How time maps to clock pulses: CLK pulse `k` happens at `GuestTime::at_tick(k, PIT_HZ)`, and
//! at guest time `now` the pulses `1..=now.ticks(PIT_HZ)` have happened. A count written at `now`
//! is loaded into the counting element on the next pulse (`now.ticks + 1`) and decremented from
//! the pulse after that, so in mode 0 OUT rises N + 1 pulses after the write, as the datasheet
//! says. Between the write and the loading pulse the counter already reads the new count (the
//! datasheet leaves it undefined; the status byte's NULL COUNT bit shows it), and in mode 1 the
//! trigger pulls OUT low at once instead of at the next pulse.
//!
//! IRQ 0: [`Pit::irq0`] returns [`LineEvent::Pulse`] when OUT0 has had at least one rising edge
//! since the previous call, else `None`; the platform feeds that into the PIC's edge-triggered
//! line 0 (and IOAPIC pin 2). A caller that polls late never loses the tick: edges are counted
//! from the guest times, not from the polls. Several periods missed between two polls are
//! coalesced into one pulse, which is what the PIC's single IRR bit would make of them anyway
//! (guests keep time from the TSC, not from counting ticks). [`Pit::next_deadline`] is when OUT0
//! next rises (or `now` if a rising edge is waiting to be reported), for the vCPU's timer queue.
//!
//! Guest time only moves forward, and the model relies on it: the `now` of each call must not
//! be earlier than that of the previous call (an earlier one is not an error and cannot panic,
//! but may read stale values).
//!
//! Other choices:
//! - **Reset state.** The datasheet leaves the state before the first control word undefined;
//!   we reset every channel as a BIOS's control word 0x36 leaves it (lobyte/hibyte, mode 3,
//!   binary) but with no count written: counters stopped at 0, OUT high, so no IRQ 0 comes
//!   before the guest programs channel 0. Gates 0 and 1 are tied high, gate 2 starts low
//!   (port 0x61 = 0).
//! - **Reprogramming modes 2 and 3 while counting** takes effect at the end of the current
//!   period (the next rising edge of OUT); the datasheet loads mode 3's new count at the end of
//!   the current half cycle. Counts of 1 (illegal in modes 2 and 3) give a constant OUT (low in
//!   mode 2, high in mode 3) and no IRQ edges.
//! - **BCD counts** whose nibbles are not decimal digits are read as the number the nibbles
//!   spell, modulo 10000.
//! - **Port 0x61** bit 4 (refresh request) toggles every 18 PIT clocks (15.09 µs), bits 6 and 7
//!   (IOCHK/SERR NMI sources) read 0; the speaker makes no sound.
//!
//! Nothing here allocates; each access is a little integer arithmetic.

use crate::irq::LineEvent;
use crate::time::GuestTime;

/// Input clock of every channel (Hz).
pub const PIT_HZ: u64 = 1_193_182;
/// Channel 0's count port; channels 1 and 2 follow.
pub const PIT_CH0: u16 = 0x40;
/// The control word register.
pub const PIT_CONTROL: u16 = 0x43;
/// The PC's "NMI status and control" port (port B): gate 2, speaker, refresh, OUT2.
pub const PORT_B: u16 = 0x61;
/// Port B bit 0: channel 2's GATE.
pub const PORT_B_GATE2: u8 = 1 << 0;
/// Port B bit 1: speaker data enable.
pub const PORT_B_SPEAKER: u8 = 1 << 1;
/// Port B bit 4: refresh request toggle.
pub const PORT_B_REFRESH: u8 = 1 << 4;
/// Port B bit 5: channel 2's OUT.
pub const PORT_B_OUT2: u8 = 1 << 5;
/// Port B bits that a write sets (gate 2, speaker, parity and IOCHK check enables).
pub const PORT_B_WRITABLE: u8 = 0x0F;
/// PIT clocks per half period of the refresh toggle.
pub const REFRESH_CLOCKS: u64 = 18;
/// The control word a PC BIOS uses for channel 0 (lobyte/hibyte, mode 3, binary), which is the
/// reset state of every channel here.
pub const RESET_CONTROL: u8 = 0x36;

/// Read-back command: bits 7-6 of the control word.
const READ_BACK: u8 = 0b11;

/// How the count is read and written (control word bits 5-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Access {
    /// Least significant byte only.
    Lsb,
    /// Most significant byte only.
    Msb,
    /// Least significant byte, then most significant byte.
    Word,
}

/// What the counting element is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum State {
    /// Counting since pulse `anchor`.
    Running,
    /// Stopped, waiting for a count (after a control word, or mid-way through a two-byte count
    /// in mode 0) or for a gate trigger (modes 1 and 5).
    Waiting,
    /// Counting suspended by GATE low (modes 0, 2, 3, 4).
    Gated,
}

/// One counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Channel {
    /// Control word bits 5-0 as written (for the status byte).
    ctrl: u8,
    /// Mode 0-5.
    mode: u8,
    access: Access,
    bcd: bool,
    /// The count register (CR) as written.
    cr: u16,
    /// A complete count has been written since the control word.
    cr_valid: bool,
    /// First byte of a two-byte count.
    write_lsb: Option<u8>,
    /// Read flip-flop: the next two-byte read gives the MSB.
    read_msb: bool,
    /// Output latch after a counter latch command.
    latched: Option<u16>,
    /// Status latch after a read-back command.
    status: Option<u8>,
    gate: bool,
    state: State,
    /// The pulse at which the running count was loaded (j = 0).
    anchor: u64,
    /// The count at `anchor`: the initial count (1..=modulus) in modes 1, 2, 3, 5 and on a
    /// fresh load; in modes 0 and 4 after a pause, the remaining count to the terminal count
    /// (`armed`) or the register value (not armed).
    s: u32,
    /// Modes 0, 1, 4, 5: the terminal count of this run is still ahead.
    armed: bool,
    /// Count and OUT while not running.
    frozen_count: u32,
    frozen_out: bool,
    /// Modes 2 and 3: a new count loaded at this pulse (end of the current period).
    pending: Option<(u64, u32)>,
    /// NULL COUNT is set while the pulse count is below this.
    null_until: u64,
    /// Rising edges of OUT before the current run.
    rise_base: u64,
}

impl Channel {
    const fn reset_state(gate: bool) -> Channel {
        Channel {
            ctrl: RESET_CONTROL & 0x3F,
            mode: 3,
            access: Access::Word,
            bcd: false,
            cr: 0,
            cr_valid: false,
            write_lsb: None,
            read_msb: false,
            latched: None,
            status: None,
            gate,
            state: State::Waiting,
            anchor: 0,
            s: 0,
            armed: false,
            frozen_count: 0,
            frozen_out: true,
            pending: None,
            null_until: 0,
            rise_base: 0,
        }
    }

    fn modulus(&self) -> u32 {
        if self.bcd { 10_000 } else { 65_536 }
    }

    /// The initial count the CR stands for (0 is the maximum).
    fn initial(&self) -> u32 {
        let cr = u32::from(self.cr);
        let n = if self.bcd {
            ((cr >> 12) & 0xF) * 1000
                + ((cr >> 8) & 0xF) * 100
                + ((cr >> 4) & 0xF) * 10
                + (cr & 0xF)
        } else {
            cr
        } % self.modulus();
        if n == 0 { self.modulus() } else { n }
    }

    /// A count value as the register shows it (binary or BCD).
    fn encode(&self, v: u32) -> u16 {
        let v = v % self.modulus();
        if self.bcd {
            ((v / 1000) << 12 | (v / 100 % 10) << 8 | (v / 10 % 10) << 4 | (v % 10)) as u16
        } else {
            v as u16
        }
    }

    /// Pulses since the load (0 before the loading pulse).
    fn j(&self, t: u64) -> u64 {
        t.saturating_sub(self.anchor)
    }

    /// The counting element at pulse count `t`, not yet encoded.
    fn count_at(&self, t: u64) -> u32 {
        if self.state != State::Running {
            return self.frozen_count;
        }
        let j = self.j(t);
        let m = u64::from(self.modulus());
        let s = u64::from(self.s);
        let v = match self.mode {
            2 => s - j % s,
            3 => {
                let p = j % s;
                let high = s.div_ceil(2);
                let q = if p < high { p } else { p - high };
                (s & !1) - 2 * q
            }
            // One-shot modes count down and wrap.
            _ => (s + m - j % m) % m,
        };
        (v % m) as u32
    }

    /// OUT at pulse count `t`.
    fn out_at(&self, t: u64) -> bool {
        if self.state != State::Running {
            return self.frozen_out;
        }
        let j = self.j(t);
        let s = u64::from(self.s);
        match self.mode {
            0 | 1 => !self.armed || j >= s,
            2 => j % s != s - 1,
            3 => j % s < s.div_ceil(2),
            _ => !(self.armed && j == s),
        }
    }

    /// Rising edges of OUT in the current run up to pulse count `t`.
    fn run_rises(&self, t: u64) -> u64 {
        if self.state != State::Running {
            return 0;
        }
        let j = self.j(t);
        let s = u64::from(self.s);
        match self.mode {
            0 | 1 => u64::from(self.armed && j >= s),
            2 | 3 => {
                if s >= 2 {
                    j / s
                } else {
                    0
                }
            }
            _ => u64::from(self.armed && j > s),
        }
    }

    /// The first pulse after `t` at which the current run's OUT rises.
    fn run_next_rise(&self, t: u64) -> Option<u64> {
        if self.state != State::Running {
            return None;
        }
        let j = self.j(t);
        let s = u64::from(self.s);
        let jr = match self.mode {
            0 | 1 => (self.armed && j < s).then_some(s),
            2 | 3 => (s >= 2).then(|| (j / s + 1) * s),
            _ => (self.armed && j <= s).then_some(s + 1),
        }?;
        Some(self.anchor + jr)
    }

    /// Fold a pending mode 2/3 reload that has happened by pulse count `t`.
    fn settle(&mut self, t: u64) {
        if let Some((at, n)) = self.pending {
            if t >= at {
                self.pending = None;
                self.transition(at, |c| {
                    c.anchor = at;
                    c.s = n;
                });
            }
        }
    }

    /// This channel as it is at pulse count `t`.
    fn settled(&self, t: u64) -> Channel {
        let mut c = *self;
        c.settle(t);
        c
    }

    /// All rising edges of OUT up to pulse count `t` (on a settled channel).
    fn total_rises(&self, t: u64) -> u64 {
        self.rise_base + self.run_rises(t)
    }

    /// Change the run at pulse count `t`, keeping the edge count: edges of the old run up to
    /// `t`, plus one if the change itself raises OUT.
    fn transition(&mut self, t: u64, f: impl FnOnce(&mut Channel)) {
        let total = self.total_rises(t);
        let before = self.out_at(t);
        f(self);
        let raised = u64::from(!before && self.out_at(t));
        self.rise_base = (total + raised).saturating_sub(self.run_rises(t));
    }

    /// Stop with the count and OUT of pulse count `t` (or OUT forced to `out`).
    fn freeze(&mut self, t: u64, state: State, out: Option<bool>) {
        let count = self.count_at(t);
        let o = out.unwrap_or_else(|| self.out_at(t));
        self.transition(t, |c| {
            c.frozen_count = count;
            c.frozen_out = o;
            c.state = state;
            c.pending = None;
        });
    }

    /// Start counting from `s` at pulse `anchor`.
    fn start(&mut self, t: u64, anchor: u64, s: u32, armed: bool) {
        self.transition(t, |c| {
            c.state = State::Running;
            c.anchor = anchor;
            c.s = s;
            c.armed = armed;
            c.pending = None;
        });
    }

    fn null(&self, t: u64) -> bool {
        t < self.null_until
    }

    fn status_byte(&self, t: u64) -> u8 {
        u8::from(self.out_at(t)) << 7 | u8::from(self.null(t)) << 6 | self.ctrl
    }

    fn latch_count(&mut self, t: u64) {
        if self.latched.is_none() {
            self.latched = Some(self.encode(self.count_at(t)));
        }
    }

    fn latch_status(&mut self, t: u64) {
        if self.status.is_none() {
            self.status = Some(self.status_byte(t));
        }
    }

    /// A control word for this channel with RW != 0: new mode, all control logic reset.
    fn set_mode(&mut self, v: u8, t: u64) {
        let mode = match (v >> 1) & 7 {
            m @ 0..=5 => m,
            m => m - 4,
        };
        let count = self.count_at(t);
        self.transition(t, |c| {
            c.ctrl = v & 0x3F;
            c.mode = mode;
            c.access = match (v >> 4) & 3 {
                1 => Access::Lsb,
                2 => Access::Msb,
                _ => Access::Word,
            };
            c.bcd = v & 1 != 0;
            c.state = State::Waiting;
            c.frozen_count = count % c.modulus();
            c.frozen_out = mode != 0;
            c.armed = false;
            c.pending = None;
            c.cr_valid = false;
            c.write_lsb = None;
            c.read_msb = false;
            c.latched = None;
            c.status = None;
            c.null_until = u64::MAX;
        });
    }

    /// A byte written to the count port.
    fn write_count(&mut self, v: u8, t: u64) {
        let cr = match self.access {
            Access::Lsb => u16::from(v),
            Access::Msb => u16::from(v) << 8,
            Access::Word => match self.write_lsb.take() {
                Some(lo) => u16::from(lo) | u16::from(v) << 8,
                None => {
                    self.write_lsb = Some(v);
                    if self.mode == 0 {
                        // Mode 0: the first byte stops counting and drops OUT at once.
                        self.freeze(t, State::Waiting, Some(false));
                    }
                    return;
                }
            },
        };
        self.cr = cr;
        self.cr_valid = true;
        self.null_until = u64::MAX;
        let n = self.initial();
        match self.mode {
            0 | 4 => {
                self.null_until = t + 1;
                if self.gate {
                    self.start(t, t + 1, n, true);
                } else {
                    let out = self.mode != 0 && self.out_at(t);
                    self.transition(t, |c| {
                        c.state = State::Gated;
                        c.frozen_count = n % c.modulus();
                        c.frozen_out = out;
                        c.s = n;
                        c.armed = true;
                        c.pending = None;
                    });
                }
            }
            2 | 3 => match self.state {
                State::Running if t < self.anchor => {
                    self.null_until = self.anchor;
                    self.s = n;
                }
                State::Running => {
                    let s = u64::from(self.s);
                    let at = self.anchor + (self.j(t) / s + 1) * s;
                    self.null_until = at;
                    self.pending = Some((at, n));
                }
                State::Waiting if self.gate => {
                    self.null_until = t + 1;
                    self.start(t, t + 1, n, false);
                }
                // Loaded when the gate rises.
                _ => {}
            },
            // Modes 1 and 5: loaded by the next trigger.
            _ => {}
        }
    }

    /// A byte read from the count port.
    fn read_count(&mut self, t: u64) -> u8 {
        if let Some(status) = self.status.take() {
            return status;
        }
        let value = self
            .latched
            .unwrap_or_else(|| self.encode(self.count_at(t)));
        let [lo, hi] = value.to_le_bytes();
        match self.access {
            Access::Lsb => {
                self.latched = None;
                lo
            }
            Access::Msb => {
                self.latched = None;
                hi
            }
            Access::Word if !self.read_msb => {
                self.read_msb = true;
                lo
            }
            Access::Word => {
                self.read_msb = false;
                self.latched = None;
                hi
            }
        }
    }

    /// GATE changed to `level` ("Gate pin operations summary").
    fn set_gate(&mut self, level: bool, t: u64) {
        if level == self.gate {
            return;
        }
        self.gate = level;
        let load = |c: &mut Channel| {
            if c.null(t) {
                c.null_until = t + 1;
            }
        };
        match (self.mode, level) {
            (0 | 4, true) if self.state == State::Gated => {
                let (s, armed) = (self.s, self.armed);
                self.start(t, t, s, armed);
            }
            (0 | 4, false) if self.state == State::Running => {
                let j = self.j(t);
                let threshold = u64::from(self.s) + u64::from(self.mode == 4);
                let (s, armed) = if self.armed && j < threshold {
                    ((u64::from(self.s) - j) as u32, true)
                } else {
                    (self.count_at(t), false)
                };
                self.freeze(t, State::Gated, None);
                self.s = s;
                self.armed = armed;
            }
            (2 | 3, true) | (1 | 5, true) if self.cr_valid => {
                load(self);
                let n = self.initial();
                self.start(t, t + 1, n, true);
            }
            (2 | 3, false) if self.state == State::Running => {
                self.freeze(t, State::Gated, Some(true));
            }
            _ => {}
        }
    }
}

/// The 8254 with port 0x61.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pit {
    channels: [Channel; 3],
    /// Port B bits 3-0 as written.
    port_b: u8,
    /// Rising edges of OUT0 already reported by [`irq0`](Self::irq0).
    irq0_reported: u64,
}

impl Default for Pit {
    fn default() -> Self {
        Self::RESET
    }
}

fn ticks(now: GuestTime) -> u64 {
    now.ticks(PIT_HZ)
}

impl Pit {
    /// The reset state (see the module docs).
    pub const RESET: Pit = Pit {
        channels: [
            Channel::reset_state(true),
            Channel::reset_state(true),
            Channel::reset_state(false),
        ],
        port_b: 0,
        irq0_reported: 0,
    };

    /// A PIT in reset state.
    pub const fn new() -> Pit {
        Self::RESET
    }

    /// Back to the reset state.
    pub fn reset(&mut self) {
        *self = Self::RESET;
    }

    /// Whether `port` belongs to the PIT (0x40-0x43, 0x61).
    pub const fn claims(port: u16) -> bool {
        matches!(port, 0x40..=0x43 | PORT_B)
    }

    /// IN from `port` at guest time `now`: byte registers, so a wider access reads consecutive
    /// ports as the ISA bus splits it; ports that are not the PIT's read as an open bus (0xFF).
    pub fn read(&mut self, port: u16, data: &mut [u8], now: GuestTime) {
        let t = ticks(now);
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.read_byte(port.wrapping_add(i as u16), t);
        }
    }

    /// OUT to `port` at guest time `now`, split into bytes like [`read`](Self::read); bytes
    /// for other ports are dropped.
    pub fn write(&mut self, port: u16, data: &[u8], now: GuestTime) {
        let t = ticks(now);
        for (i, &byte) in data.iter().enumerate() {
            self.write_byte(port.wrapping_add(i as u16), byte, t);
        }
    }

    fn read_byte(&mut self, port: u16, t: u64) -> u8 {
        match port {
            0x40..=0x42 => {
                let c = &mut self.channels[usize::from(port - PIT_CH0)];
                c.settle(t);
                c.read_count(t)
            }
            PORT_B => {
                let refresh = if (t / REFRESH_CLOCKS) & 1 != 0 {
                    PORT_B_REFRESH
                } else {
                    0
                };
                let out2 = if self.channels[2].settled(t).out_at(t) {
                    PORT_B_OUT2
                } else {
                    0
                };
                self.port_b | refresh | out2
            }
            _ => 0xFF,
        }
    }

    fn write_byte(&mut self, port: u16, v: u8, t: u64) {
        match port {
            0x40..=0x42 => {
                let c = &mut self.channels[usize::from(port - PIT_CH0)];
                c.settle(t);
                c.write_count(v, t);
            }
            PIT_CONTROL => self.write_control(v, t),
            PORT_B => {
                self.port_b = v & PORT_B_WRITABLE;
                let c = &mut self.channels[2];
                c.settle(t);
                c.set_gate(v & PORT_B_GATE2 != 0, t);
            }
            _ => {}
        }
    }

    fn write_control(&mut self, v: u8, t: u64) {
        let sc = v >> 6;
        if sc == READ_BACK {
            // Bit 5 low: latch count; bit 4 low: latch status; bits 3-1 select channels 2-0.
            for (i, c) in self.channels.iter_mut().enumerate() {
                if v & (2 << i) == 0 {
                    continue;
                }
                c.settle(t);
                if v & 0x20 == 0 {
                    c.latch_count(t);
                }
                if v & 0x10 == 0 {
                    c.latch_status(t);
                }
            }
            return;
        }
        let c = &mut self.channels[usize::from(sc)];
        c.settle(t);
        if (v >> 4) & 3 == 0 {
            c.latch_count(t);
        } else {
            c.set_mode(v, t);
        }
    }

    /// Channel 0's output for IRQ 0: [`LineEvent::Pulse`] if OUT0 rose at least once since the
    /// last call (missed periods are coalesced into this one pulse), else `None`.
    pub fn irq0(&mut self, now: GuestTime) -> Option<LineEvent> {
        let t = ticks(now);
        let c = &mut self.channels[0];
        c.settle(t);
        let total = c.total_rises(t);
        if total > self.irq0_reported {
            self.irq0_reported = total;
            Some(LineEvent::Pulse)
        } else {
            None
        }
    }

    /// When OUT0 next rises after `now` (`now` itself if a rising edge has not been reported
    /// by [`irq0`](Self::irq0) yet), or `None` if it never will without a guest access.
    pub fn next_deadline(&self, now: GuestTime) -> Option<GuestTime> {
        let t = ticks(now);
        let c = self.channels[0].settled(t);
        let total = c.total_rises(t);
        if total > self.irq0_reported {
            return Some(now);
        }
        let own = c.run_next_rise(t);
        let next = match c.pending {
            Some((at, _)) if own.is_none_or(|r| r > at) => {
                let after = c.settled(at);
                if after.total_rises(at) > total {
                    Some(at)
                } else {
                    after.run_next_rise(at)
                }
            }
            _ => own,
        }?;
        Some(GuestTime::at_tick(next, PIT_HZ))
    }

    /// OUT of `channel` (0-2; others read low) at `now`.
    pub fn out(&self, channel: u8, now: GuestTime) -> bool {
        let t = ticks(now);
        self.channels
            .get(usize::from(channel))
            .is_some_and(|c| c.settled(t).out_at(t))
    }

    /// Channel 2's GATE (port 0x61 bit 0).
    pub fn gate2(&self) -> bool {
        self.channels[2].gate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The guest time of CLK pulse `k`.
    fn at(k: u64) -> GuestTime {
        GuestTime::at_tick(k, PIT_HZ)
    }

    fn outb(p: &mut Pit, port: u16, v: u8, k: u64) {
        p.write(port, &[v], at(k));
    }

    fn inb(p: &mut Pit, port: u16, k: u64) -> u8 {
        let mut b = [0u8];
        p.read(port, &mut b, at(k));
        b[0]
    }

    /// A two-byte read (LSB then MSB) of a channel at pulse `k`.
    fn read16(p: &mut Pit, ch: u16, k: u64) -> u16 {
        let lo = inb(p, PIT_CH0 + ch, k);
        let hi = inb(p, PIT_CH0 + ch, k);
        u16::from_le_bytes([lo, hi])
    }

    /// Control word then a two-byte count, all at pulse `k`.
    fn program(p: &mut Pit, ch: u16, mode: u8, count: u16, k: u64) {
        outb(p, PIT_CONTROL, (ch as u8) << 6 | 0x30 | mode << 1, k);
        outb(p, PIT_CH0 + ch, count as u8, k);
        outb(p, PIT_CH0 + ch, (count >> 8) as u8, k);
    }

    /// OUT of `ch` at pulses `from..to`, as a string of 0/1.
    fn wave(p: &Pit, ch: u8, from: u64, to: u64) -> String {
        (from..to)
            .map(|k| if p.out(ch, at(k)) { '1' } else { '0' })
            .collect()
    }

    fn counts(p: &mut Pit, ch: u16, from: u64, to: u64) -> Vec<u16> {
        (from..to).map(|k| read16(p, ch, k)).collect()
    }

    #[test]
    fn reset_state_is_quiet() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 100, 5);
        outb(&mut p, PORT_B, 0x03, 5);
        p.reset();
        assert_eq!(p, Pit::RESET);
        for ch in 0..3 {
            assert!(p.out(ch, at(1_000_000)), "OUT high");
            assert_eq!(read16(&mut p, u16::from(ch), 1_000_000), 0);
        }
        assert_eq!(p.next_deadline(at(1_000_000)), None);
        assert_eq!(p.irq0(at(10_000_000)), None);
        assert!(!p.gate2());
        assert_eq!(inb(&mut p, PORT_B, 0) & 0x2F, 0x20, "gate off, OUT2 high");
        assert_eq!(inb(&mut p, PIT_CONTROL, 0), 0xFF);
        // Status: OUT high, lobyte/hibyte mode 3 binary, no null count.
        outb(&mut p, PIT_CONTROL, 0xE2, 0);
        assert_eq!(inb(&mut p, PIT_CH0, 0), 0x80 | 0x36);
    }

    #[test]
    fn mode0_interrupt_on_terminal_count() {
        let mut p = Pit::new();
        outb(&mut p, PIT_CONTROL, 0x30, 100);
        assert!(!p.out(0, at(100)), "OUT low after the control word");
        outb(&mut p, PIT_CH0, 5, 100);
        outb(&mut p, PIT_CH0, 0, 100);
        // Loaded on pulse 101, OUT rises N + 1 = 6 pulses after the write; counting goes on.
        assert_eq!(
            counts(&mut p, 0, 101, 109),
            [5, 4, 3, 2, 1, 0, 0xFFFF, 0xFFFE]
        );
        assert_eq!(wave(&p, 0, 100, 109), "000000111");
        assert_eq!(p.next_deadline(at(100)), Some(at(106)));
        assert_eq!(p.irq0(at(105)), None);
        assert_eq!(p.irq0(at(200_000)), Some(LineEvent::Pulse));
        assert_eq!(p.irq0(at(400_000)), None, "one edge only");
        assert_eq!(p.next_deadline(at(400_000)), None);
        // A new count: the first byte drops OUT at once and stops counting.
        outb(&mut p, PIT_CH0, 3, 1000);
        assert!(!p.out(0, at(1000)));
        assert_eq!(read16(&mut p, 0, 1010), read16(&mut p, 0, 1020));
        outb(&mut p, PIT_CH0, 0, 1030);
        assert_eq!(wave(&p, 0, 1030, 1036), "000011");
        assert_eq!(p.next_deadline(at(1030)), Some(at(1034)));
    }

    #[test]
    fn mode0_gate_suspends_counting() {
        let mut p = Pit::new();
        // Channel 2, gate low while the count is written: loaded, but not counting.
        program(&mut p, 2, 0, 10, 50);
        assert_eq!(read16(&mut p, 2, 60), 10);
        outb(&mut p, PORT_B, PORT_B_GATE2, 60);
        assert_eq!(read16(&mut p, 2, 64), 6);
        outb(&mut p, PORT_B, 0, 64);
        assert_eq!(read16(&mut p, 2, 500), 6, "suspended");
        assert_eq!(inb(&mut p, PORT_B, 500) & PORT_B_OUT2, 0);
        outb(&mut p, PORT_B, PORT_B_GATE2, 500);
        assert_eq!(wave(&p, 2, 500, 508), "00000011");
        assert_eq!(inb(&mut p, PORT_B, 506) & PORT_B_OUT2, PORT_B_OUT2);
    }

    #[test]
    fn mode1_retriggerable_one_shot() {
        let mut p = Pit::new();
        program(&mut p, 2, 1, 3, 10);
        assert_eq!(
            wave(&p, 2, 10, 30),
            "11111111111111111111",
            "waits for a trigger"
        );
        outb(&mut p, PORT_B, PORT_B_GATE2, 20);
        // OUT low from the trigger (the datasheet: from the next pulse) for the N pulses
        // 21-23 of the count, high at the terminal count.
        assert_eq!(wave(&p, 2, 20, 26), "000011");
        assert_eq!(counts(&mut p, 2, 21, 25), [3, 2, 1, 0]);
        // Gate low does nothing; a retrigger during the pulse restarts it.
        outb(&mut p, PORT_B, 0, 40);
        outb(&mut p, PORT_B, PORT_B_GATE2, 41);
        outb(&mut p, PORT_B, 0, 42);
        outb(&mut p, PORT_B, PORT_B_GATE2, 43);
        assert_eq!(wave(&p, 2, 41, 49), "00000011");
        // A new count does not change the running pulse; the next trigger uses it.
        outb(&mut p, PORT_B, 0, 60);
        outb(&mut p, PORT_B, PORT_B_GATE2, 60);
        outb(&mut p, PIT_CH0 + 2, 6, 61);
        outb(&mut p, PIT_CH0 + 2, 0, 61);
        assert_eq!(wave(&p, 2, 60, 65), "00001");
        outb(&mut p, PORT_B, 0, 70);
        outb(&mut p, PORT_B, PORT_B_GATE2, 70);
        assert_eq!(wave(&p, 2, 70, 79), "000000011");
    }

    #[test]
    fn mode2_rate_generator() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 4, 0);
        assert_eq!(counts(&mut p, 0, 1, 10), [4, 3, 2, 1, 4, 3, 2, 1, 4]);
        assert_eq!(wave(&p, 0, 0, 14), "11110111011101");
        assert_eq!(p.next_deadline(at(0)), Some(at(5)));
        assert_eq!(p.irq0(at(5)), Some(LineEvent::Pulse));
        assert_eq!(p.next_deadline(at(5)), Some(at(9)));
        // A new count takes effect at the end of the current period.
        outb(&mut p, PIT_CH0, 6, 6);
        outb(&mut p, PIT_CH0, 0, 6);
        assert_eq!(counts(&mut p, 0, 7, 9), [2, 1]);
        assert_eq!(p.next_deadline(at(8)), Some(at(9)));
        assert_eq!(p.irq0(at(9)), Some(LineEvent::Pulse));
        assert_eq!(p.next_deadline(at(9)), Some(at(15)));
        assert_eq!(counts(&mut p, 0, 9, 16), [6, 5, 4, 3, 2, 1, 6]);
        // On channel 2, gate low forces OUT high and stops; gate high reloads.
        program(&mut p, 2, 2, 3, 100);
        outb(&mut p, PORT_B, PORT_B_GATE2, 100);
        assert_eq!(wave(&p, 2, 101, 104), "110");
        outb(&mut p, PORT_B, 0, 103);
        assert!(p.out(2, at(103)), "forced high");
        assert_eq!(read16(&mut p, 2, 200), 1);
        outb(&mut p, PORT_B, PORT_B_GATE2, 200);
        assert_eq!(counts(&mut p, 2, 201, 205), [3, 2, 1, 3]);
    }

    #[test]
    fn mode3_square_wave() {
        let mut p = Pit::new();
        // Even count: high N/2, low N/2, the count going down by two.
        program(&mut p, 0, 3, 4, 0);
        assert_eq!(counts(&mut p, 0, 1, 9), [4, 2, 4, 2, 4, 2, 4, 2]);
        assert_eq!(wave(&p, 0, 1, 13), "110011001100");
        assert_eq!(p.next_deadline(at(1)), Some(at(5)));
        // Odd count: high (N + 1) / 2, low (N - 1) / 2, counting N - 1, N - 3, ...
        program(&mut p, 1, 3, 5, 0);
        assert_eq!(counts(&mut p, 1, 1, 11), [4, 2, 0, 4, 2, 4, 2, 0, 4, 2]);
        assert_eq!(wave(&p, 1, 1, 11), "1110011100");
        // 18.2 Hz of the BIOS: count 0 is 65536 pulses a period.
        program(&mut p, 0, 3, 0, 0);
        assert_eq!(p.next_deadline(at(1)), Some(at(1 + 65536)));
        assert!(!p.out(0, at(1 + 32768)));
        assert!(p.out(0, at(32768)));
    }

    #[test]
    fn mode4_software_triggered_strobe() {
        let mut p = Pit::new();
        program(&mut p, 0, 4, 3, 10);
        // Low for one pulse N + 1 pulses after the write.
        assert_eq!(wave(&p, 0, 10, 18), "11110111");
        assert_eq!(counts(&mut p, 0, 11, 17), [3, 2, 1, 0, 0xFFFF, 0xFFFE]);
        assert_eq!(p.next_deadline(at(10)), Some(at(15)));
        assert_eq!(p.irq0(at(15)), Some(LineEvent::Pulse));
        assert_eq!(p.next_deadline(at(15)), None);
        // Writing a count again restarts (Linux's pit_next_event).
        outb(&mut p, PIT_CH0, 2, 100);
        outb(&mut p, PIT_CH0, 0, 100);
        assert_eq!(p.next_deadline(at(100)), Some(at(104)));
    }

    #[test]
    fn mode5_hardware_triggered_strobe() {
        let mut p = Pit::new();
        program(&mut p, 2, 5, 2, 0);
        assert_eq!(wave(&p, 2, 0, 10), "1111111111");
        outb(&mut p, PORT_B, PORT_B_GATE2, 10);
        assert_eq!(wave(&p, 2, 10, 16), "111011");
        // Retrigger.
        outb(&mut p, PORT_B, 0, 20);
        outb(&mut p, PORT_B, PORT_B_GATE2, 20);
        outb(&mut p, PORT_B, 0, 22);
        outb(&mut p, PORT_B, PORT_B_GATE2, 22);
        assert_eq!(wave(&p, 2, 20, 28), "11111011");
    }

    #[test]
    fn counter_latch_command() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 1000, 0);
        outb(&mut p, PIT_CONTROL, 0x00, 100);
        // The latched value stays until read, whatever the counter does.
        assert_eq!(inb(&mut p, PIT_CH0, 300), (901u16 & 0xFF) as u8);
        // A second latch before the read is complete is ignored.
        outb(&mut p, PIT_CONTROL, 0x00, 400);
        assert_eq!(inb(&mut p, PIT_CH0, 500), (901u16 >> 8) as u8);
        // Now the counter is followed again.
        assert_eq!(read16(&mut p, 0, 600), 1000 - 599);
        // Unlatched two-byte reads see the count at each byte's time.
        outb(&mut p, PORT_B, PORT_B_GATE2, 0);
        program(&mut p, 2, 0, 0xFFFF, 0);
        assert_eq!(inb(&mut p, 0x42, 1), 0xFF);
        assert_eq!(inb(&mut p, 0x42, 300), 0xFE);
    }

    #[test]
    fn read_back_command() {
        let mut p = Pit::new();
        outb(&mut p, PORT_B, PORT_B_GATE2, 0);
        program(&mut p, 0, 2, 500, 0);
        program(&mut p, 2, 0, 500, 0);
        // Status of channel 0 before the load: NULL COUNT set.
        outb(&mut p, PIT_CONTROL, 0b1110_0010, 0);
        assert_eq!(inb(&mut p, PIT_CH0, 0), 0x80 | 0x40 | 0x34);
        outb(&mut p, PIT_CONTROL, 0b1110_0010, 1);
        assert_eq!(inb(&mut p, PIT_CH0, 1), 0x80 | 0x34, "loaded");
        // Count and status of channels 0 and 2: status first, then the count.
        outb(&mut p, PIT_CONTROL, 0b1100_1010, 101);
        assert_eq!(inb(&mut p, PIT_CH0, 200), 0x80 | 0x34);
        assert_eq!(read16(&mut p, 0, 200), 400);
        assert_eq!(inb(&mut p, PIT_CH0 + 2, 300), 0x30, "mode 0, OUT low");
        assert_eq!(read16(&mut p, 2, 300), 400);
        assert_eq!(
            read16(&mut p, 2, 600),
            (500 + 65536 - 599) as u16,
            "live again"
        );
        // Latched status of channel 2 after terminal count, then count only.
        outb(&mut p, PIT_CONTROL, 0b1110_1000, 501);
        outb(&mut p, PIT_CONTROL, 0b1101_1000, 502);
        assert_eq!(inb(&mut p, PIT_CH0 + 2, 700), 0xB0);
        assert_eq!(read16(&mut p, 2, 700), 0xFFFF);
        // A control word sets NULL COUNT and clears latches.
        outb(&mut p, PIT_CONTROL, 0b1101_0010, 800);
        outb(&mut p, PIT_CONTROL, 0x34, 800);
        outb(&mut p, PIT_CONTROL, 0b1110_0010, 900);
        assert_eq!(inb(&mut p, PIT_CH0, 900), 0x80 | 0x40 | 0x34);
    }

    #[test]
    fn access_modes_and_flip_flops() {
        let mut p = Pit::new();
        // Lobyte only: the MSB is 0.
        outb(&mut p, PIT_CONTROL, 0x14, 0);
        outb(&mut p, PIT_CH0, 0x20, 0);
        assert_eq!(inb(&mut p, PIT_CH0, 1), 0x20);
        assert_eq!(inb(&mut p, PIT_CH0, 2), 0x1F);
        // Hibyte only: the LSB is 0, reads give the MSB.
        outb(&mut p, PIT_CONTROL, 0x24, 0);
        outb(&mut p, PIT_CH0, 0x02, 0);
        assert_eq!(p.next_deadline(at(0)), Some(at(0x201)));
        assert_eq!(inb(&mut p, PIT_CH0, 1), 0x02);
        assert_eq!(inb(&mut p, PIT_CH0, 2), 0x01);
        // Lobyte/hibyte: reads and writes have their own flip-flops and may interleave.
        outb(&mut p, PIT_CONTROL, 0x34, 0);
        outb(&mut p, PIT_CH0, 0x00, 0);
        outb(&mut p, PIT_CH0, 0x10, 0);
        assert_eq!(inb(&mut p, PIT_CH0, 1), 0x00);
        outb(&mut p, PIT_CH0, 0x00, 1);
        assert_eq!(inb(&mut p, PIT_CH0, 1), 0x10);
        outb(&mut p, PIT_CH0, 0x20, 1);
        // A control word resets both flip-flops.
        assert_eq!(inb(&mut p, PIT_CH0, 2), 0xFF);
        outb(&mut p, PIT_CONTROL, 0x34, 3);
        outb(&mut p, PIT_CH0, 0x34, 3);
        outb(&mut p, PIT_CH0, 0x12, 3);
        assert_eq!(read16(&mut p, 0, 4), 0x1234);
        // 16-bit port access is two byte accesses: 0x42 then 0x43.
        let mut w = [0u8; 2];
        p.read(0x42, &mut w, at(5));
        assert_eq!(w[1], 0xFF);
        assert!(Pit::claims(0x61) && !Pit::claims(0x44));
    }

    #[test]
    fn bcd_counting_and_maximum_counts() {
        let mut p = Pit::new();
        outb(&mut p, PIT_CONTROL, 0x31, 0); // mode 0, BCD
        outb(&mut p, PIT_CH0, 0x00, 0);
        outb(&mut p, PIT_CH0, 0x01, 0); // 0100 BCD = 100
        assert_eq!(counts(&mut p, 0, 1, 4), [0x0100, 0x0099, 0x0098]);
        assert_eq!(p.next_deadline(at(0)), Some(at(101)));
        // Count 0 in BCD is 10000; it wraps to 9999.
        assert_eq!(p.irq0(at(200)), Some(LineEvent::Pulse));
        outb(&mut p, PIT_CH0, 0, 200);
        outb(&mut p, PIT_CH0, 0, 200);
        assert_eq!(counts(&mut p, 0, 201, 203), [0x0000, 0x9999]);
        assert_eq!(p.next_deadline(at(200)), Some(at(201 + 10_000)));
        // Count 0 in binary is 65536.
        let mut p = Pit::new();
        program(&mut p, 0, 2, 0, 0);
        assert_eq!(counts(&mut p, 0, 1, 3), [0, 0xFFFF]);
        assert_eq!(p.next_deadline(at(0)), Some(at(1 + 65536)));
        // Modes 6 and 7 are modes 2 and 3.
        let mut p = Pit::new();
        outb(&mut p, PIT_CONTROL, 0x3C, 0);
        outb(&mut p, PIT_CONTROL, 0xE2, 0);
        assert_eq!(inb(&mut p, PIT_CH0, 0) & 0x0E, 0x0C);
        outb(&mut p, PIT_CH0, 4, 0);
        outb(&mut p, PIT_CH0, 0, 0);
        assert_eq!(wave(&p, 0, 1, 5), "1110", "mode 2: low on the last pulse");
        assert_eq!(counts(&mut p, 0, 1, 3), [4, 3]);
    }

    /// Linux's i8253 clockevent, periodic: `outb_p(0x34, PIT_MODE)` and `PIT_LATCH` =
    /// (1193182 + HZ / 2) / HZ = 4773 at HZ = 250.
    #[test]
    fn linux_periodic_tick() {
        const LATCH: u16 = ((PIT_HZ + 125) / 250) as u16;
        assert_eq!(LATCH, 4773);
        let mut p = Pit::new();
        p.write(PIT_CONTROL, &[0x34], GuestTime::ZERO);
        p.write(PIT_CH0, &[LATCH as u8], GuestTime::ZERO);
        p.write(PIT_CH0, &[(LATCH >> 8) as u8], GuestTime::ZERO);
        // The timer queue sleeps to each deadline and polls: one pulse per period.
        let mut now = GuestTime::ZERO;
        let mut pulses = 0u64;
        let one_second = GuestTime(1_000_000_000);
        while let Some(d) = p.next_deadline(now) {
            if d > one_second {
                break;
            }
            assert!(d > now, "always progress");
            assert_eq!(p.irq0(d), Some(LineEvent::Pulse));
            pulses += 1;
            assert_eq!(d, at(1 + pulses * 4773));
            now = d;
        }
        // Edges at pulses 1 + k * 4773 that are within 1,193,182 pulses: k = 1..=249.
        assert_eq!(pulses, 249);
        // Polled late, three periods give one pulse, and the next deadline is the next period.
        let late = at(1 + 253 * 4773 + 10);
        assert_eq!(p.irq0(late), Some(LineEvent::Pulse));
        assert_eq!(p.irq0(late), None);
        assert_eq!(p.next_deadline(late), Some(at(1 + 254 * 4773)));
        // Shutdown (pit_shutdown): mode 0 without a count stops the tick.
        p.write(PIT_CONTROL, &[0x30], late);
        assert_eq!(p.next_deadline(late), None);
        assert_eq!(p.irq0(at(10 * PIT_HZ)), None);
    }

    /// Linux's one-shot clockevent (`pit_set_oneshot` writes 0x38: mode 4; `pit_next_event`
    /// writes the delta), and mode 0 used the same way.
    #[test]
    fn linux_oneshot_tick() {
        let mut p = Pit::new();
        let t0 = GuestTime(5_000_000);
        p.write(PIT_CONTROL, &[0x38], t0);
        assert_eq!(p.next_deadline(t0), None);
        let delta: u16 = 11_932; // 10 ms
        p.write(PIT_CH0, &delta.to_le_bytes()[..1], t0);
        p.write(PIT_CH0, &delta.to_le_bytes()[1..], t0);
        let k0 = t0.ticks(PIT_HZ);
        assert_eq!(k0, 5965);
        let d = p.next_deadline(t0).unwrap();
        assert_eq!(d, at(k0 + 1 + u64::from(delta) + 1));
        assert_eq!(p.irq0(GuestTime(d.0 - 1)), None);
        assert_eq!(p.irq0(d), Some(LineEvent::Pulse));
        assert_eq!(p.next_deadline(d), None, "one shot");
        // Mode 0: OUT rises delta + 1 pulses after the write and stays high.
        p.write(PIT_CONTROL, &[0x30], d);
        p.write(PIT_CH0, &[0x10], d);
        p.write(PIT_CH0, &[0x00], d);
        let k = d.ticks(PIT_HZ);
        assert_eq!(p.next_deadline(d), Some(at(k + 17)));
        assert_eq!(p.irq0(at(k + 17)), Some(LineEvent::Pulse));
        assert_eq!(p.next_deadline(at(k + 17)), None);
    }

    /// `pit_calibrate_tsc(CAL_LATCH, CAL_MS, ...)`: gate 2 on and speaker off through 0x61,
    /// 0xB0 (channel 2, lobyte/hibyte, mode 0), the latch, then poll 0x61 bit 5.
    #[test]
    fn linux_pit_calibrate_tsc() {
        const CAL_LATCH: u16 = (PIT_HZ / 100) as u16;
        assert_eq!(CAL_LATCH, 11931);
        let mut p = Pit::new();
        let start = GuestTime(123_456_789);
        let mut b = [0u8];
        p.read(PORT_B, &mut b, start);
        p.write(PORT_B, &[(b[0] & !PORT_B_SPEAKER) | PORT_B_GATE2], start);
        assert!(p.gate2());
        p.write(PIT_CONTROL, &[0xB0], start);
        p.write(0x42, &[CAL_LATCH as u8], start);
        p.write(0x42, &[(CAL_LATCH >> 8) as u8], start);
        let k = start.ticks(PIT_HZ);
        let rise = at(k + 1 + u64::from(CAL_LATCH));
        let out2 = |p: &mut Pit, t: GuestTime| {
            let mut b = [0u8];
            p.read(PORT_B, &mut b, t);
            b[0] & PORT_B_OUT2 != 0
        };
        assert!(!out2(&mut p, start));
        assert!(!out2(&mut p, GuestTime(rise.0 - 1)));
        assert!(out2(&mut p, rise));
        // 11,932 PIT clocks of guest time: the TSC over this interval gives the TSC rate.
        let ns = |clocks: u64| clocks * 1_000_000_000 / PIT_HZ;
        assert!(rise.since(start) > ns(11_931) && rise.since(start) <= ns(11_932) + 1);
        assert!(out2(&mut p, rise.plus_nanos(1_000_000_000)), "stays high");
        // Channel 0 is untouched.
        assert_eq!(p.next_deadline(rise), None);
    }

    /// `quick_pit_calibrate`: mode 0 on channel 2 from 0xFFFF, then `pit_expect_msb` reads
    /// LSB and MSB (unlatched) until the MSB is 0xFF - i; each MSB lasts exactly 256 clocks.
    #[test]
    fn linux_quick_pit_calibrate() {
        let mut p = Pit::new();
        let t0 = GuestTime(2_000_000);
        p.write(PORT_B, &[PORT_B_GATE2], t0);
        p.write(PIT_CONTROL, &[0xB0], t0);
        p.write(0x42, &[0xFF], t0);
        p.write(0x42, &[0xFF], t0);
        let k0 = t0.ticks(PIT_HZ);
        let msb = |p: &mut Pit, t: GuestTime| {
            let mut b = [0u8];
            p.read(0x42, &mut b, t); // LSB, ignored
            p.read(0x42, &mut b, t);
            b[0]
        };
        // pit_verify_msb(0) right after the write reads the loaded 0xFFFF's MSB.
        assert_eq!(msb(&mut p, t0), 0xFF);
        for i in 1..=0xC0u64 {
            let first = at(k0 + 1 + 256 * i);
            assert_eq!(msb(&mut p, GuestTime(first.0 - 1)), (0xFF - i + 1) as u8);
            assert_eq!(msb(&mut p, first), (0xFF - i) as u8);
        }
        // The MSB changes every 256 / 1193182 s = 214.55 µs of guest time.
        assert_eq!(at(k0 + 1 + 512).since(at(k0 + 1 + 256)), 214_552);
    }

    #[test]
    fn port_b() {
        let mut p = Pit::new();
        outb(&mut p, PORT_B, 0xFF, 0);
        assert!(p.gate2());
        assert_eq!(
            inb(&mut p, PORT_B, 0),
            0x0F | PORT_B_OUT2,
            "bits 6 and 7 read 0"
        );
        // The refresh bit toggles every 18 clocks.
        let bits: String = [0u64, 17, 18, 35, 36, 54]
            .iter()
            .map(|&k| {
                if inb(&mut p, PORT_B, k) & PORT_B_REFRESH != 0 {
                    '1'
                } else {
                    '0'
                }
            })
            .collect();
        assert_eq!(bits, "001101");
        // OUT2 follows channel 2; speaker bit as written.
        outb(&mut p, PIT_CONTROL, 0xB0, 100);
        assert_eq!(inb(&mut p, PORT_B, 100) & PORT_B_OUT2, 0);
        outb(&mut p, PORT_B, PORT_B_SPEAKER, 100);
        assert!(!p.gate2());
        assert_eq!(inb(&mut p, PORT_B, 100) & 0x0F, PORT_B_SPEAKER);
    }

    proptest! {
        /// Any byte to any PIT port at increasing times: nothing panics, a deadline is never in
        /// the past, and a reported deadline is where a pulse comes.
        #[test]
        fn random_accesses(ops in prop::collection::vec(
            (prop::sample::select(vec![0x40u16, 0x41, 0x42, 0x43, 0x61]), any::<u8>(), any::<bool>(), 0u64..3000),
            0..200,
        )) {
            let mut p = Pit::new();
            let mut k = 0u64;
            for (port, v, is_write, dt) in ops {
                k += dt;
                if is_write {
                    outb(&mut p, port, v, k);
                } else {
                    inb(&mut p, port, k);
                }
                if let Some(d) = p.next_deadline(at(k)) {
                    prop_assert!(d >= at(k));
                    let mut q = p;
                    prop_assert_eq!(q.irq0(d), Some(LineEvent::Pulse));
                }
            }
        }

        /// Channel 0 programmed at random: polling at each deadline reports a pulse, just
        /// before it nothing, and OUT0 really rose at the deadline.
        #[test]
        fn deadlines_match_the_waveform(
            mode in 0u8..6,
            bcd in any::<bool>(),
            count in 0u16..600,
            start in 0u64..10_000,
            steps in 1usize..6,
            reprogram in prop::option::of((0u64..2000, 1u16..600)),
        ) {
            let mut p = Pit::new();
            outb(&mut p, PIT_CONTROL, 0x30 | mode << 1 | u8::from(bcd), start);
            outb(&mut p, PIT_CH0, count as u8, start);
            outb(&mut p, PIT_CH0, (count >> 8) as u8, start);
            if let Some((dt, c)) = reprogram {
                outb(&mut p, PIT_CH0, c as u8, start + dt);
                outb(&mut p, PIT_CH0, (c >> 8) as u8, start + dt);
            }
            let mut now = at(start + 2000);
            p.irq0(now);
            for _ in 0..steps {
                let Some(d) = p.next_deadline(now) else { break };
                prop_assert!(d > now);
                let k = d.ticks(PIT_HZ);
                prop_assert_eq!(d, at(k));
                prop_assert_eq!(p.irq0(GuestTime(d.0 - 1)), None);
                prop_assert!(!p.out(0, GuestTime(d.0 - 1)) && p.out(0, d));
                prop_assert_eq!(p.irq0(d), Some(LineEvent::Pulse));
                now = d;
            }
        }
    }
}
