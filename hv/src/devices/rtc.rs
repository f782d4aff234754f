//! The MC146818 CMOS real-time clock at ports 0x70/0x71: the date at boot, IRQ 8 and the
//! battery-backed bytes firmware and operating systems keep in it.
//!
//! Why: Linux reads the wall-clock time from it at boot (`mach_get_cmos_time`, waiting for UIP
//! to fall first), may calibrate against its periodic interrupt, and the BIOS convention keeps
//! the reason for a reset in the shutdown status byte 0x0F. Register behaviour follows the
//! Motorola MC146818A datasheet ("Address Map", "Registers A-D", "Update Cycle", "Interrupts")
//! as the PC/AT wires it:
//!
//! | port | access | model                                                                  |
//! |------|--------|------------------------------------------------------------------------|
//! | 0x70 | write  | bits 6:0 select the register, bit 7 masks NMIs (a PC chipset bit, kept) |
//! | 0x70 | read   | 0xFF (write-only on the AT)                                             |
//! | 0x71 | r/w    | the selected register                                                   |
//!
//! | index     | register                 | model                                           |
//! |-----------|--------------------------|-------------------------------------------------|
//! | 0x00-0x09 | sec, alarm, min, alarm, hour, alarm, weekday, day, month, year | from the clock, BCD or binary, 12/24 h |
//! | 0x0A      | A: UIP, DV2-0, RS3-0     | UIP 244 us before each update; DV 11x holds the divider |
//! | 0x0B      | B: SET PIE AIE UIE SQWE DM 24/12 DSE | read back; SET freezes the time registers |
//! | 0x0C      | C: IRQF PF AF UF         | read-only, cleared by reading                   |
//! | 0x0D      | D: VRT                   | 0x80: the battery is fine                       |
//! | 0x0E-0x7F | CMOS memory              | plain bytes; 0x32 is the century (part of the clock) |
//!
//! **Time** is a pure function of the guest clock: the clock value (seconds since 1970, on the
//! proleptic Gregorian calendar) advances by one at each update instant, once per guest
//! second, phase-locked to the divider chain. The start value comes from the host's clock or a
//! configured epoch at construction. Writing a time register sets the clock at once (or, with
//! SET, when SET is cleared; meanwhile the registers hold what was written); out-of-range
//! values are normalised like `mktime`. The weekday register keeps whatever offset the guest
//! wrote relative to the computed weekday. The update is instantaneous at its instant: UIP is
//! 1 during the 244 us before it (datasheet tBUC), and the registers change at the instant.
//!
//! **Interrupts**: PF at the periodic rate chosen by RS (32.768 kHz time base: 256 Hz, 128 Hz,
//! then 8192 Hz down to 2 Hz), AF at an update whose time matches the alarm bytes (0xC0-0xFF
//! is "don't care"), UF at every update; each latches in register C, IRQF = any flag whose
//! enable (PIE, AIE, UIE) is set, and [`irq_level`](Rtc::irq_level) is IRQF (IRQ 8). The
//! device never reads a clock: every access takes `now`, and
//! [`next_deadline`](Rtc::next_deadline) says when to [`poll`](Rtc::poll) for the next
//! enabled interrupt.
//!
//! Not modelled: daylight-saving switching (DSE reads back only), the square-wave pin,
//! time bases other than 32.768 kHz (DV 000/001 run like 010), re-interpretation of stored
//! values when DM or 24/12 change outside SET (the model converts; the datasheet requires the
//! time to be rewritten after a mode change anyway), the 1984 us update duration.

use crate::time::{GuestTime, NANOS_PER_SEC};

/// Base port: index at 0x70, data at 0x71.
pub const RTC_BASE: u16 = 0x70;
/// Number of RTC ports.
pub const RTC_PORTS: u16 = 2;
/// The PC's IRQ line of the RTC.
pub const RTC_IRQ: u8 = 8;
/// Bytes of CMOS address space (registers and memory).
pub const CMOS_SIZE: usize = 128;

/// Register 0x00: seconds.
pub const REG_SECONDS: u8 = 0x00;
/// Register 0x01: seconds alarm.
pub const REG_SECONDS_ALARM: u8 = 0x01;
/// Register 0x02: minutes.
pub const REG_MINUTES: u8 = 0x02;
/// Register 0x03: minutes alarm.
pub const REG_MINUTES_ALARM: u8 = 0x03;
/// Register 0x04: hours (bit 7 = PM in 12 h mode).
pub const REG_HOURS: u8 = 0x04;
/// Register 0x05: hours alarm.
pub const REG_HOURS_ALARM: u8 = 0x05;
/// Register 0x06: day of the week (1 = Sunday).
pub const REG_DAY_OF_WEEK: u8 = 0x06;
/// Register 0x07: day of the month.
pub const REG_DAY_OF_MONTH: u8 = 0x07;
/// Register 0x08: month.
pub const REG_MONTH: u8 = 0x08;
/// Register 0x09: year of the century.
pub const REG_YEAR: u8 = 0x09;
/// Register A.
pub const REG_A: u8 = 0x0A;
/// Register B.
pub const REG_B: u8 = 0x0B;
/// Register C.
pub const REG_C: u8 = 0x0C;
/// Register D.
pub const REG_D: u8 = 0x0D;
/// CMOS byte 0x0F: shutdown status (why the last reset happened, by BIOS convention).
pub const CMOS_SHUTDOWN_STATUS: u8 = 0x0F;
/// CMOS byte 0x32: century (IBM convention; ACPI FADT "CENTURY" points here).
pub const CMOS_CENTURY: u8 = 0x32;

/// Register A bit 7: update in progress (read-only).
pub const A_UIP: u8 = 0x80;
/// Register A bits 6:4: divider control.
pub const A_DV_MASK: u8 = 0x70;
/// Register A bits 3:0: rate select.
pub const A_RS_MASK: u8 = 0x0F;
/// Register B bit 7: SET (stop updates, let software set the time).
pub const B_SET: u8 = 0x80;
/// Register B bit 6: periodic interrupt enable.
pub const B_PIE: u8 = 0x40;
/// Register B bit 5: alarm interrupt enable.
pub const B_AIE: u8 = 0x20;
/// Register B bit 4: update-ended interrupt enable.
pub const B_UIE: u8 = 0x10;
/// Register B bit 3: square-wave enable.
pub const B_SQWE: u8 = 0x08;
/// Register B bit 2: data mode, 1 = binary, 0 = BCD.
pub const B_DM_BINARY: u8 = 0x04;
/// Register B bit 1: 1 = 24-hour mode, 0 = 12-hour mode.
pub const B_24H: u8 = 0x02;
/// Register B bit 0: daylight-saving enable.
pub const B_DSE: u8 = 0x01;
/// Register C bit 7: interrupt request flag.
pub const C_IRQF: u8 = 0x80;
/// Register C bit 6: periodic interrupt flag.
pub const C_PF: u8 = 0x40;
/// Register C bit 5: alarm interrupt flag.
pub const C_AF: u8 = 0x20;
/// Register C bit 4: update-ended interrupt flag.
pub const C_UF: u8 = 0x10;
/// Register D bit 7: valid RAM and time.
pub const D_VRT: u8 = 0x80;
/// Hour bit 7 in 12-hour mode: PM.
pub const HOUR_PM: u8 = 0x80;

/// How long UIP is set before each update: 244 us (datasheet tBUC).
pub const UIP_WINDOW_NS: u64 = 244_000;
/// Register A as firmware leaves it: DV = 010 (32.768 kHz), RS = 0110 (1024 Hz).
pub const A_DEFAULT: u8 = 0x26;
/// Register B as firmware leaves it: 24-hour mode, BCD.
pub const B_DEFAULT: u8 = B_24H;

const SECS_PER_DAY: i64 = 86_400;
const NS: u64 = NANOS_PER_SEC;

/// Whether `year` is a Gregorian leap year.
pub const fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Days in `month` (1-12) of `year`.
pub const fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to `year`-`month`-01 (month 1-12).
fn days_to_month_start(year: i64, month: u8) -> i64 {
    // Count whole 400-year cycles (146097 days each) from year 0, then years, then months.
    let cycles = year.div_euclid(400);
    let y = year.rem_euclid(400); // 0..400 within the cycle
    // Days in cycle years 0..y: 365 each plus a leap day for every year divisible by 4,
    // except centuries not divisible by 400 (year 0 of a cycle is divisible by 400).
    let leap_days = if y == 0 {
        0
    } else {
        (y - 1) / 4 - (y - 1) / 100 + 1
    };
    let mut days = cycles * 146_097 + y * 365 + leap_days;
    let mut m = 1;
    while m < month {
        days += i64::from(days_in_month(year, m));
        m += 1;
    }
    // 1970-01-01 is day 719528 counted from 0000-01-01.
    days - 719_528
}

/// A calendar date and time of day (UTC, proleptic Gregorian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DateTime {
    /// Year (e.g. 2026).
    pub year: i64,
    /// Month, 1-12.
    pub month: u8,
    /// Day of the month, 1-31.
    pub day: u8,
    /// Hour, 0-23.
    pub hour: u8,
    /// Minute, 0-59.
    pub minute: u8,
    /// Second, 0-59.
    pub second: u8,
    /// Day of the week, 0 = Sunday.
    pub weekday: u8,
}

impl DateTime {
    /// The date and time `secs` seconds after 1970-01-01 00:00:00.
    pub fn from_unix(secs: i64) -> DateTime {
        let days = secs.div_euclid(SECS_PER_DAY);
        let tod = secs.rem_euclid(SECS_PER_DAY);
        // Year: estimate from the mean Gregorian year, then correct by at most one either way.
        let mut year = 1970 + (days * 400).div_euclid(146_097);
        while days_to_month_start(year, 1) > days {
            year -= 1;
        }
        while days_to_month_start(year + 1, 1) <= days {
            year += 1;
        }
        let mut rest = days - days_to_month_start(year, 1);
        let mut month = 1;
        while rest >= i64::from(days_in_month(year, month)) {
            rest -= i64::from(days_in_month(year, month));
            month += 1;
        }
        DateTime {
            year,
            month,
            day: rest as u8 + 1,
            hour: (tod / 3600) as u8,
            minute: (tod / 60 % 60) as u8,
            second: (tod % 60) as u8,
            weekday: weekday_of_day(days),
        }
    }

    /// Seconds since 1970-01-01 00:00:00 (the inverse of [`from_unix`](Self::from_unix);
    /// `weekday` is ignored).
    pub fn to_unix(&self) -> i64 {
        unix_from_fields(
            self.year,
            i64::from(self.month),
            i64::from(self.day),
            i64::from(self.hour),
            i64::from(self.minute),
            i64::from(self.second),
        )
    }
}

/// Weekday (0 = Sunday) of day number `days` since 1970-01-01 (a Thursday).
fn weekday_of_day(days: i64) -> u8 {
    (days + 4).rem_euclid(7) as u8
}

/// Seconds since 1970 for fields that may be out of range, normalised like `mktime`
/// (month 13 is January of the next year, day 0 the last day of the previous month...).
fn unix_from_fields(year: i64, month: i64, day: i64, hour: i64, minute: i64, second: i64) -> i64 {
    let m0 = month - 1;
    let year = year + m0.div_euclid(12);
    let month = (m0.rem_euclid(12) + 1) as u8;
    let days = days_to_month_start(year, month) + day - 1;
    days * SECS_PER_DAY + hour * 3600 + minute * 60 + second
}

/// The two ports of the RTC, by offset from [`RTC_BASE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RtcPort {
    /// 0x70: index (write-only) with the NMI mask in bit 7.
    Index = 0,
    /// 0x71: the selected register.
    Data = 1,
}

impl RtcPort {
    /// The port at `offset` (0 or 1) from [`RTC_BASE`].
    pub const fn from_offset(offset: u16) -> Option<RtcPort> {
        match offset {
            0 => Some(RtcPort::Index),
            1 => Some(RtcPort::Data),
            _ => None,
        }
    }
}

/// What one alarm byte matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AlarmField {
    Any,
    At(i64),
    Never,
}

/// The MC146818 and its CMOS memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rtc {
    /// CMOS bytes. The time registers (0x00, 0x02, 0x04, 0x06-0x09, 0x32) are meaningful here
    /// only while SET is on; otherwise they are computed from the clock.
    cmos: [u8; CMOS_SIZE],
    index: u8,
    nmi_masked: bool,
    /// Register A bits 6:0.
    reg_a: u8,
    reg_b: u8,
    /// Latched PF, AF, UF.
    flags: u8,
    /// Update instants are at `phase + k * 1 s` (0 <= phase < 1 s).
    phase: u64,
    /// The divider chain runs (DV not 11x).
    chain_running: bool,
    /// The clock value at update count `base_u` (or the frozen value while the chain stops).
    base_secs: i64,
    base_u: u64,
    /// Weekday register minus the computed weekday, mod 7.
    dow_offset: u8,
    /// Flags are latched up to this time.
    checked_at: GuestTime,
    /// The latest guest time seen.
    now: GuestTime,
    /// The next clock value that matches the alarm (while updating).
    next_alarm: Option<i64>,
}

impl Rtc {
    /// A powered-on RTC whose clock reads `start_unix_secs` at guest time 0 (the first update
    /// at 1 s), registers A and B as firmware leaves them, register C clear, CMOS memory zero.
    pub fn new(start_unix_secs: i64) -> Rtc {
        let mut rtc = Rtc {
            cmos: [0; CMOS_SIZE],
            index: 0,
            nmi_masked: false,
            reg_a: A_DEFAULT,
            reg_b: B_DEFAULT,
            flags: 0,
            phase: 0,
            chain_running: true,
            base_secs: start_unix_secs,
            base_u: 0,
            dow_offset: 0,
            checked_at: GuestTime::ZERO,
            now: GuestTime::ZERO,
            next_alarm: None,
        };
        rtc.base_u = rtc.updates(GuestTime::ZERO);
        rtc.refresh_alarm();
        rtc
    }

    /// Guest reset at guest time `at` (on the clock being left). The RESET pin clears PIE,
    /// AIE, UIE, SQWE and the flags of register C; the time, the other bits of A and B and the
    /// CMOS memory (the shutdown byte included) are battery-backed and kept. The guest clock
    /// restarts at zero with a reset (`time.rs`), so the RTC continues from guest time 0 with
    /// its time and sub-second phase unbroken.
    pub fn reset(&mut self, at: GuestTime) {
        self.advance(at);
        let at = self.now;
        if !self.set() {
            self.base_secs = self.clock_secs(at);
        }
        self.phase = (self.phase + NS - at.0 % NS) % NS;
        self.now = GuestTime::ZERO;
        self.checked_at = GuestTime::ZERO;
        self.base_u = self.updates(GuestTime::ZERO);
        self.reg_b &= !(B_PIE | B_AIE | B_UIE | B_SQWE);
        self.flags = 0;
        self.index = 0;
        self.nmi_masked = false;
        self.refresh_alarm();
    }

    /// Whether the last index write set bit 7 (NMIs masked, PC chipset convention).
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// The selected register (index bits 6:0).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Host-side access to CMOS memory (0x0E-0x7F), e.g. for firmware configuration bytes.
    /// Registers 0x00-0x0D and the century byte are not reachable here: they belong to the
    /// clock. Returns whether the byte was written.
    pub fn set_cmos(&mut self, index: u8, value: u8) -> bool {
        let i = usize::from(index);
        if i < usize::from(REG_D) + 1 || i >= CMOS_SIZE || index == CMOS_CENTURY {
            return false;
        }
        self.cmos[i] = value;
        true
    }

    /// Host-side read of a CMOS memory byte (0x0E-0x7F), without side effects.
    pub fn cmos(&self, index: u8) -> Option<u8> {
        let i = usize::from(index);
        (i > usize::from(REG_D) && i < CMOS_SIZE).then(|| self.cmos[i])
    }

    /// The clock at `now` in seconds since 1970 (the written values while SET is on).
    pub fn unix_time(&self, now: GuestTime) -> i64 {
        if self.set() {
            self.decode_time_regs().0
        } else {
            self.clock_secs(now.max(self.now))
        }
    }

    fn set(&self) -> bool {
        self.reg_b & B_SET != 0
    }

    fn binary(&self) -> bool {
        self.reg_b & B_DM_BINARY != 0
    }

    fn updating(&self) -> bool {
        self.chain_running && !self.set()
    }

    /// Update count at `t`: increments exactly at each update instant.
    fn updates(&self, t: GuestTime) -> u64 {
        (t.0.saturating_add(NS) - self.phase) / NS
    }

    /// The guest time at which the update count becomes `k` (k >= 1).
    fn update_instant(&self, k: u64) -> GuestTime {
        GuestTime(
            k.saturating_sub(1)
                .saturating_mul(NS)
                .saturating_add(self.phase),
        )
    }

    fn clock_secs(&self, t: GuestTime) -> i64 {
        if self.chain_running {
            self.base_secs + self.updates(t).saturating_sub(self.base_u) as i64
        } else {
            self.base_secs
        }
    }

    /// The periodic rate selected by RS, if any.
    pub fn periodic_hz(&self) -> Option<u64> {
        match self.reg_a & A_RS_MASK {
            0 => None,
            1 => Some(256),
            2 => Some(128),
            rs => Some(65_536 >> rs),
        }
    }

    fn periodic_count(&self, t: GuestTime, hz: u64) -> u64 {
        GuestTime(t.0.saturating_add(NS) - self.phase).ticks(hz)
    }

    fn periodic_edge(&self, n: u64, hz: u64) -> GuestTime {
        GuestTime((GuestTime::at_tick(n, hz).0 + self.phase).saturating_sub(NS))
    }

    fn irqf(&self) -> bool {
        // PIE, AIE and UIE sit at the bit positions of PF, AF and UF.
        let enabled = self.reg_b & (B_PIE | B_AIE | B_UIE);
        self.flags & enabled != 0
    }

    /// The IRQ 8 line: register C's IRQF.
    pub fn irq_level(&self) -> bool {
        self.irqf()
    }

    /// Latch the flags of everything that happened up to `now`.
    fn advance(&mut self, now: GuestTime) {
        if now > self.now {
            self.now = now;
        }
        let (from, to) = (self.checked_at, self.now);
        if to <= from {
            return;
        }
        if self.chain_running {
            if let Some(hz) = self.periodic_hz() {
                if self.periodic_count(to, hz) > self.periodic_count(from, hz) {
                    self.flags |= C_PF;
                }
            }
            if !self.set() && self.updates(to) > self.updates(from) {
                self.flags |= C_UF;
                let secs = self.clock_secs(to);
                if let Some(a) = self.next_alarm {
                    if a <= secs {
                        self.flags |= C_AF;
                        self.next_alarm = self.find_alarm(secs + 1);
                    }
                }
            }
        }
        self.checked_at = to;
    }

    /// Let guest time pass to `now` without an access (at a [`next_deadline`](Self::next_deadline)).
    pub fn poll(&mut self, now: GuestTime) {
        self.advance(now);
    }

    /// When the next enabled interrupt flag will be set (a periodic edge, an update, an
    /// alarm), counted from the latest guest time seen (the last access or poll), if none is
    /// pending yet; `None` if no interrupt can come without an access. Exact: polling 1 ns
    /// earlier leaves IRQF low, polling at it raises IRQF.
    pub fn next_deadline(&self) -> Option<GuestTime> {
        let now = self.now;
        let mut best: Option<GuestTime> = None;
        let mut consider = |t: GuestTime| best = Some(best.map_or(t, |b| b.min(t)));
        if !self.chain_running {
            return None;
        }
        if self.reg_b & B_PIE != 0 && self.flags & C_PF == 0 {
            if let Some(hz) = self.periodic_hz() {
                consider(self.periodic_edge(self.periodic_count(now, hz) + 1, hz));
            }
        }
        if !self.set() {
            let next_update = self.updates(now) + 1;
            if self.reg_b & B_UIE != 0 && self.flags & C_UF == 0 {
                consider(self.update_instant(next_update));
            }
            if self.reg_b & B_AIE != 0 && self.flags & C_AF == 0 {
                if let Some(a) = self.next_alarm {
                    let k = self.base_u as i64 + (a - self.base_secs);
                    if k >= next_update as i64 {
                        consider(self.update_instant(k as u64));
                    }
                }
            }
        }
        best
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, b: u8) -> i64 {
        if self.binary() {
            i64::from(b)
        } else {
            i64::from(b >> 4) * 10 + i64::from(b & 0x0F)
        }
    }

    fn encode_hour(&self, h: u8) -> u8 {
        if self.reg_b & B_24H != 0 {
            self.encode(h)
        } else {
            let h12 = match h % 12 {
                0 => 12,
                x => x,
            };
            self.encode(h12) | if h >= 12 { HOUR_PM } else { 0 }
        }
    }

    fn decode_hour(&self, b: u8) -> i64 {
        if self.reg_b & B_24H != 0 {
            self.decode(b)
        } else {
            self.decode(b & !HOUR_PM) % 12 + if b & HOUR_PM != 0 { 12 } else { 0 }
        }
    }

    /// The time registers (0x00-0x09 without the alarms) and the century for clock `secs`.
    fn encode_time(&self, secs: i64) -> [(u8, u8); 8] {
        let dt = DateTime::from_unix(secs);
        let weekday = (dt.weekday + self.dow_offset) % 7 + 1;
        [
            (REG_SECONDS, self.encode(dt.second)),
            (REG_MINUTES, self.encode(dt.minute)),
            (REG_HOURS, self.encode_hour(dt.hour)),
            (REG_DAY_OF_WEEK, self.encode(weekday)),
            (REG_DAY_OF_MONTH, self.encode(dt.day)),
            (REG_MONTH, self.encode(dt.month)),
            (REG_YEAR, self.encode(dt.year.rem_euclid(100) as u8)),
            (
                CMOS_CENTURY,
                self.encode(dt.year.div_euclid(100).rem_euclid(100) as u8),
            ),
        ]
    }

    /// The clock value and weekday offset the raw time registers in `cmos` stand for.
    fn decode_time_regs(&self) -> (i64, u8) {
        let r = |i: u8| self.cmos[usize::from(i)];
        let year = self.decode(r(CMOS_CENTURY)) * 100 + self.decode(r(REG_YEAR));
        let secs = unix_from_fields(
            year,
            self.decode(r(REG_MONTH)),
            self.decode(r(REG_DAY_OF_MONTH)),
            self.decode_hour(r(REG_HOURS)),
            self.decode(r(REG_MINUTES)),
            self.decode(r(REG_SECONDS)),
        );
        let computed = i64::from(weekday_of_day(secs.div_euclid(SECS_PER_DAY)));
        let offset = (self.decode(r(REG_DAY_OF_WEEK)) - 1 - computed).rem_euclid(7) as u8;
        (secs, offset)
    }

    /// Copy the clock at `now` into the raw time registers.
    fn materialize(&mut self, now: GuestTime) {
        for (i, v) in self.encode_time(self.clock_secs(now)) {
            self.cmos[usize::from(i)] = v;
        }
    }

    /// Take the raw time registers as the clock value from `now` on.
    fn load_time_regs(&mut self, now: GuestTime) {
        let (secs, offset) = self.decode_time_regs();
        self.base_secs = secs;
        self.dow_offset = offset;
        self.base_u = self.updates(now);
    }

    fn alarm_field(&self, byte: u8, range: u8, hour: bool) -> AlarmField {
        if byte & 0xC0 == 0xC0 {
            return AlarmField::Any;
        }
        for v in 0..range {
            let enc = if hour {
                self.encode_hour(v)
            } else {
                self.encode(v)
            };
            if enc == byte {
                return AlarmField::At(i64::from(v));
            }
        }
        AlarmField::Never
    }

    /// The first clock value >= `from` whose time of day matches the alarm bytes.
    fn find_alarm(&self, from: i64) -> Option<i64> {
        let fields = [
            self.alarm_field(self.cmos[usize::from(REG_HOURS_ALARM)], 24, true),
            self.alarm_field(self.cmos[usize::from(REG_MINUTES_ALARM)], 60, false),
            self.alarm_field(self.cmos[usize::from(REG_SECONDS_ALARM)], 60, false),
        ];
        if fields.contains(&AlarmField::Never) {
            return None;
        }
        let matches = |f: AlarmField, v: i64| f == AlarmField::Any || f == AlarmField::At(v);
        let day0 = from.div_euclid(SECS_PER_DAY);
        let tod = from.rem_euclid(SECS_PER_DAY);
        let (h0, m0, s0) = (tod / 3600, tod / 60 % 60, tod % 60);
        for d in 0..2 {
            let first_day = d == 0;
            for h in (if first_day { h0 } else { 0 })..24 {
                if !matches(fields[0], h) {
                    continue;
                }
                let first_hour = first_day && h == h0;
                for m in (if first_hour { m0 } else { 0 })..60 {
                    if !matches(fields[1], m) {
                        continue;
                    }
                    let s_min = if first_hour && m == m0 { s0 } else { 0 };
                    let s = match fields[2] {
                        AlarmField::At(s) if s >= s_min => s,
                        AlarmField::At(_) | AlarmField::Never => continue,
                        AlarmField::Any => s_min,
                    };
                    return Some((day0 + d) * SECS_PER_DAY + h * 3600 + m * 60 + s);
                }
            }
        }
        None
    }

    fn refresh_alarm(&mut self) {
        self.next_alarm = if self.updating() {
            self.find_alarm(self.clock_secs(self.now) + 1)
        } else {
            None
        };
    }

    /// Whether UIP reads 1 at `now`.
    fn uip(&self, now: GuestTime) -> bool {
        if !self.updating() {
            return false;
        }
        let next = self.update_instant(self.updates(now) + 1);
        next.since(now) <= UIP_WINDOW_NS
    }

    /// Read `port` at guest time `now`. Reading register C clears it.
    pub fn read(&mut self, port: RtcPort, now: GuestTime) -> u8 {
        if port == RtcPort::Index {
            return 0xFF;
        }
        self.advance(now);
        let now = self.now;
        let i = self.index;
        match i {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_WEEK | REG_DAY_OF_MONTH
            | REG_MONTH | REG_YEAR | CMOS_CENTURY
                if !self.set() =>
            {
                let secs = self.clock_secs(now);
                self.encode_time(secs)
                    .iter()
                    .find(|(r, _)| *r == i)
                    .map_or(0, |&(_, v)| v)
            }
            REG_A => self.reg_a | if self.uip(now) { A_UIP } else { 0 },
            REG_B => self.reg_b,
            REG_C => {
                let v = self.flags | if self.irqf() { C_IRQF } else { 0 };
                self.flags = 0;
                v
            }
            REG_D => D_VRT,
            _ => self.cmos[usize::from(i)],
        }
    }

    /// Write `value` to `port` (index and NMI mask, or the selected register) at guest time
    /// `now`.
    pub fn write(&mut self, port: RtcPort, value: u8, now: GuestTime) {
        match port {
            RtcPort::Index => {
                self.index = value & 0x7F;
                self.nmi_masked = value & 0x80 != 0;
            }
            RtcPort::Data => self.write_data(value, now),
        }
    }

    fn write_data(&mut self, value: u8, now: GuestTime) {
        self.advance(now);
        let now = self.now;
        let i = self.index;
        match i {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_WEEK | REG_DAY_OF_MONTH
            | REG_MONTH | REG_YEAR | CMOS_CENTURY => {
                if self.set() {
                    self.cmos[usize::from(i)] = value;
                } else {
                    self.materialize(now);
                    self.cmos[usize::from(i)] = value;
                    self.load_time_regs(now);
                    // Divider not running: the value stays frozen until it runs.
                }
            }
            REG_A => {
                let was_reset = self.reg_a & 0x60 == 0x60;
                let new = value & !A_UIP;
                let is_reset = new & 0x60 == 0x60;
                if !was_reset && is_reset {
                    if !self.set() {
                        self.base_secs = self.clock_secs(now);
                    }
                    self.chain_running = false;
                } else if was_reset && !is_reset {
                    // The first update comes 500 ms after the divider leaves reset.
                    self.phase = (now.0 + NS / 2) % NS;
                    self.chain_running = true;
                    self.base_u = self.updates(now);
                }
                self.reg_a = new;
            }
            REG_B => {
                let old = self.reg_b;
                let mut new = value;
                if new & B_SET != 0 {
                    // SET going high clears UIE.
                    new &= !B_UIE;
                    if old & B_SET == 0 {
                        self.materialize(now);
                    }
                }
                self.reg_b = new;
                if old & B_SET != 0 && new & B_SET == 0 {
                    self.load_time_regs(now);
                }
            }
            REG_C | REG_D => {}
            _ => self.cmos[usize::from(i)] = value,
        }
        self.refresh_alarm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2023-11-14 22:13:20 UTC, a Tuesday.
    const T_2023: i64 = 1_700_000_000;

    fn ms(n: u64) -> GuestTime {
        GuestTime(n * 1_000_000)
    }

    fn secs(n: u64) -> GuestTime {
        GuestTime(n * NS)
    }

    fn rd(r: &mut Rtc, reg: u8, now: GuestTime) -> u8 {
        r.write(RtcPort::Index, reg, now);
        r.read(RtcPort::Data, now)
    }

    fn wr(r: &mut Rtc, reg: u8, v: u8, now: GuestTime) {
        r.write(RtcPort::Index, reg, now);
        r.write(RtcPort::Data, v, now);
    }

    /// sec, min, hour, weekday, day, month, year, century.
    fn date(r: &mut Rtc, now: GuestTime) -> [u8; 8] {
        [
            REG_SECONDS,
            REG_MINUTES,
            REG_HOURS,
            REG_DAY_OF_WEEK,
            REG_DAY_OF_MONTH,
            REG_MONTH,
            REG_YEAR,
            CMOS_CENTURY,
        ]
        .map(|i| rd(r, i, now))
    }

    #[test]
    fn calendar_known_dates() {
        for (t, y, mo, d, h, mi, s, wd) in [
            (T_2023, 2023, 11, 14, 22, 13, 20, 2),
            (951_782_400, 2000, 2, 29, 0, 0, 0, 2),
            (4_102_444_800, 2100, 1, 1, 0, 0, 0, 5),
            (-1, 1969, 12, 31, 23, 59, 59, 3),
            (946_684_799, 1999, 12, 31, 23, 59, 59, 5),
            (0, 1970, 1, 1, 0, 0, 0, 4),
        ] {
            let dt = DateTime::from_unix(t);
            let want = DateTime {
                year: y,
                month: mo,
                day: d,
                hour: h,
                minute: mi,
                second: s,
                weekday: wd,
            };
            assert_eq!(dt, want, "t = {t}");
            assert_eq!(dt.to_unix(), t);
        }
    }

    #[test]
    fn calendar_walks_day_by_day_through_leap_rules() {
        // 1896-01-01 .. 2404-12-31: every day follows the previous one.
        let start = DateTime {
            year: 1896,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            weekday: 0,
        }
        .to_unix();
        let mut prev = DateTime::from_unix(start);
        let mut feb29 = Vec::new();
        let mut t = start;
        while prev.year < 2405 {
            t += SECS_PER_DAY;
            let dt = DateTime::from_unix(t);
            assert_eq!(dt.weekday, (prev.weekday + 1) % 7);
            if prev.day == days_in_month(prev.year, prev.month) {
                assert_eq!(dt.day, 1);
                if prev.month == 12 {
                    assert_eq!((dt.year, dt.month), (prev.year + 1, 1));
                } else {
                    assert_eq!((dt.year, dt.month), (prev.year, prev.month + 1));
                }
            } else {
                assert_eq!(
                    (dt.year, dt.month, dt.day),
                    (prev.year, prev.month, prev.day + 1)
                );
            }
            if dt.month == 2 && dt.day == 29 {
                feb29.push(dt.year);
            }
            assert_eq!(dt.to_unix(), t);
            prev = dt;
        }
        for y in [1896, 1904, 2000, 2024, 2400] {
            assert!(feb29.contains(&y), "{y} is a leap year");
        }
        for y in [1900, 2100, 2200, 2300, 2023] {
            assert!(!feb29.contains(&y), "{y} is not a leap year");
        }
        assert_eq!(feb29.len(), 124);
    }

    #[test]
    fn out_of_range_fields_normalise_like_mktime() {
        // Month 13 of 2023 = January 2024; day 0 of March = the last day of February.
        assert_eq!(
            unix_from_fields(2023, 13, 1, 0, 0, 0),
            DateTime::from_unix(1_704_067_200).to_unix()
        );
        let feb_end = DateTime::from_unix(unix_from_fields(2024, 3, 0, 0, 0, 0));
        assert_eq!((feb_end.month, feb_end.day), (2, 29));
    }

    #[test]
    fn date_read_in_bcd() {
        let mut r = Rtc::new(T_2023);
        let t = ms(10);
        // 22:13:20, Tuesday (3), 14.11.23, century 20.
        assert_eq!(
            date(&mut r, t),
            [0x20, 0x13, 0x22, 0x03, 0x14, 0x11, 0x23, 0x20]
        );
        assert_eq!(rd(&mut r, REG_B, t), B_24H);
        assert_eq!(r.unix_time(t), T_2023);
    }

    #[test]
    fn date_read_in_binary() {
        let mut r = Rtc::new(T_2023);
        wr(&mut r, REG_B, B_24H | B_DM_BINARY, GuestTime::ZERO);
        assert_eq!(date(&mut r, ms(1)), [20, 13, 22, 3, 14, 11, 23, 20]);
        // Leap day 2000, binary.
        let mut r = Rtc::new(951_782_400 + 86_399);
        wr(&mut r, REG_B, B_24H | B_DM_BINARY, GuestTime::ZERO);
        assert_eq!(date(&mut r, ms(1)), [59, 59, 23, 3, 29, 2, 0, 20]);
        // One second later: 1 March.
        assert_eq!(date(&mut r, secs(1)), [0, 0, 0, 4, 1, 3, 0, 20]);
    }

    #[test]
    fn twelve_hour_mode() {
        for (hour, bcd, bin) in [
            (0, 0x12, 12),
            (1, 0x01, 1),
            (11, 0x11, 11),
            (12, 0x92, 0x80 | 12),
            (13, 0x81, 0x81),
            (22, 0x90, 0x80 | 10),
            (23, 0x91, 0x80 | 11),
        ] {
            let mut r = Rtc::new(i64::from(hour) * 3600);
            wr(&mut r, REG_B, 0, GuestTime::ZERO);
            assert_eq!(rd(&mut r, REG_HOURS, ms(1)), bcd, "hour {hour} BCD");
            wr(&mut r, REG_B, B_DM_BINARY, ms(1));
            assert_eq!(rd(&mut r, REG_HOURS, ms(1)), bin, "hour {hour} binary");
        }
        // Writing 12 h values sets the clock: 0x81 = 1 PM.
        let mut r = Rtc::new(0);
        wr(&mut r, REG_B, 0, GuestTime::ZERO);
        wr(&mut r, REG_HOURS, 0x81, ms(1));
        assert_eq!(DateTime::from_unix(r.unix_time(ms(1))).hour, 13);
        wr(&mut r, REG_HOURS, 0x12, ms(1));
        assert_eq!(DateTime::from_unix(r.unix_time(ms(1))).hour, 0);
    }

    #[test]
    fn uip_is_set_244_us_before_each_update() {
        let mut r = Rtc::new(T_2023);
        let update = secs(5);
        let before = GuestTime(update.0 - UIP_WINDOW_NS - 1);
        assert_eq!(rd(&mut r, REG_A, before), A_DEFAULT);
        let inside = GuestTime(update.0 - UIP_WINDOW_NS);
        assert_eq!(rd(&mut r, REG_A, inside), A_DEFAULT | A_UIP);
        assert_eq!(rd(&mut r, REG_SECONDS, inside), 0x24, "not updated yet");
        assert_eq!(rd(&mut r, REG_A, GuestTime(update.0 - 1)) & A_UIP, A_UIP);
        assert_eq!(rd(&mut r, REG_A, update) & A_UIP, 0);
        assert_eq!(rd(&mut r, REG_SECONDS, update), 0x25);
        // UIP is read-only.
        wr(&mut r, REG_A, 0xA6, update);
        assert_eq!(rd(&mut r, REG_A, update), A_DEFAULT);
        // No UIP while SET holds the updates.
        wr(&mut r, REG_B, B_SET | B_24H, update);
        assert_eq!(rd(&mut r, REG_A, inside.plus_nanos(NS)) & A_UIP, 0);
    }

    /// Linux `mach_get_cmos_time`: wait for UIP to drop, then read the fields; the read comes
    /// after the update that UIP announced.
    #[test]
    fn linux_reads_the_time_after_uip() {
        let mut r = Rtc::new(T_2023);
        let mut t = GuestTime(2 * NS - 100_000);
        let mut spins = 0;
        while rd(&mut r, REG_A, t) & A_UIP != 0 {
            t = t.plus_nanos(10_000);
            spins += 1;
        }
        assert_eq!(spins, 10);
        assert_eq!(rd(&mut r, REG_SECONDS, t), 0x22);
    }

    fn count_periodic(r: &mut Rtc, until: GuestTime) -> u64 {
        let mut n = 0;
        while let Some(t) = r.next_deadline() {
            if t > until {
                break;
            }
            r.poll(t);
            assert!(r.irq_level());
            let c = rd(r, REG_C, t);
            assert_eq!(c & (C_IRQF | C_PF), C_IRQF | C_PF);
            assert!(!r.irq_level());
            n += 1;
        }
        n
    }

    #[test]
    fn periodic_interrupt_counts() {
        for (rs, hz) in [
            (6u8, 1024u64),
            (15, 2),
            (3, 8192),
            (1, 256),
            (2, 128),
            (0x0A, 64),
        ] {
            let mut r = Rtc::new(T_2023);
            wr(&mut r, REG_A, 0x20 | rs, GuestTime::ZERO);
            assert_eq!(r.periodic_hz(), Some(hz));
            wr(&mut r, REG_B, B_24H | B_PIE, GuestTime::ZERO);
            assert_eq!(count_periodic(&mut r, secs(2)), 2 * hz, "rs {rs}");
        }
        // RS = 0: no periodic interrupt.
        let mut r = Rtc::new(T_2023);
        wr(&mut r, REG_A, 0x20, GuestTime::ZERO);
        wr(&mut r, REG_B, B_24H | B_PIE, GuestTime::ZERO);
        assert_eq!(r.next_deadline(), None);
        r.poll(secs(3));
        assert_eq!(rd(&mut r, REG_C, secs(3)) & C_PF, 0);
    }

    #[test]
    fn periodic_flag_without_pie_and_missed_ticks() {
        let mut r = Rtc::new(T_2023);
        // PF latches without PIE, but IRQF stays low and there is no deadline.
        r.poll(ms(10));
        assert_eq!(r.next_deadline(), None);
        assert!(!r.irq_level());
        // Enabling PIE with PF already set raises IRQF at once.
        wr(&mut r, REG_B, B_24H | B_PIE, ms(10));
        assert!(r.irq_level());
        assert_eq!(r.next_deadline(), None, "nothing new until C is read");
        // Many missed periods still make one flag.
        assert_eq!(rd(&mut r, REG_C, ms(500)), C_IRQF | C_PF);
        assert_eq!(rd(&mut r, REG_C, ms(500)), 0);
        // Next edge of 1024 Hz after 500 ms.
        assert_eq!(r.next_deadline(), Some(GuestTime::at_tick(513, 1024)));
    }

    #[test]
    fn update_ended_interrupt_every_second() {
        let mut r = Rtc::new(T_2023);
        wr(&mut r, REG_A, 0x20, GuestTime::ZERO); // no periodic
        wr(&mut r, REG_B, B_24H | B_UIE, ms(300));
        let mut seen = Vec::new();
        for _ in 0..3 {
            let t = r.next_deadline().unwrap();
            r.poll(GuestTime(t.0 - 1));
            assert!(!r.irq_level());
            r.poll(t);
            assert!(r.irq_level());
            assert_eq!(rd(&mut r, REG_C, t), C_IRQF | C_UF);
            seen.push((t, rd(&mut r, REG_SECONDS, t)));
        }
        assert_eq!(seen, [(secs(1), 0x21), (secs(2), 0x22), (secs(3), 0x23)]);
    }

    #[test]
    fn alarm_interrupt() {
        let mut r = Rtc::new(T_2023); // 22:13:20
        wr(&mut r, REG_A, 0x20, GuestTime::ZERO);
        wr(&mut r, REG_SECONDS_ALARM, 0x25, GuestTime::ZERO);
        wr(&mut r, REG_MINUTES_ALARM, 0x13, GuestTime::ZERO);
        wr(&mut r, REG_HOURS_ALARM, 0x22, GuestTime::ZERO);
        wr(&mut r, REG_B, B_24H | B_AIE, GuestTime::ZERO);
        assert_eq!(r.next_deadline(), Some(secs(5)));
        r.poll(ms(4999));
        assert!(!r.irq_level());
        assert_eq!(rd(&mut r, REG_C, ms(4999)) & C_AF, 0);
        r.poll(secs(5));
        assert!(r.irq_level());
        assert_eq!(rd(&mut r, REG_C, secs(5)), C_IRQF | C_AF | C_UF);
        // The same time again tomorrow.
        assert_eq!(r.next_deadline(), Some(secs(5 + 86_400)));
        // Don't care (0xC0-0xFF) in hours and minutes: every minute at :30.
        wr(&mut r, REG_HOURS_ALARM, 0xFF, secs(5));
        wr(&mut r, REG_MINUTES_ALARM, 0xC0, secs(5));
        wr(&mut r, REG_SECONDS_ALARM, 0x30, secs(5));
        assert_eq!(r.next_deadline(), Some(secs(10)));
        r.poll(secs(10));
        assert_eq!(rd(&mut r, REG_C, secs(10)) & C_AF, C_AF);
        assert_eq!(r.next_deadline(), Some(secs(70)));
        // All three don't care: once a second.
        wr(&mut r, REG_SECONDS_ALARM, 0xC3, secs(10));
        assert_eq!(r.next_deadline(), Some(secs(11)));
        // An alarm that can never match (hour 0x25 in BCD 24 h).
        wr(&mut r, REG_SECONDS_ALARM, 0x00, secs(10));
        wr(&mut r, REG_HOURS_ALARM, 0x25, secs(10));
        assert_eq!(r.next_deadline(), None);
        // AF latches without AIE when a long gap passes the alarm time.
        let mut r = Rtc::new(T_2023);
        wr(&mut r, REG_HOURS_ALARM, 0x23, GuestTime::ZERO);
        wr(&mut r, REG_MINUTES_ALARM, 0x00, GuestTime::ZERO);
        wr(&mut r, REG_SECONDS_ALARM, 0x00, GuestTime::ZERO);
        assert_eq!(rd(&mut r, REG_C, secs(2799)) & C_AF, 0);
        assert_eq!(rd(&mut r, REG_C, secs(2800)) & C_AF, C_AF);
        assert_eq!(rd(&mut r, REG_C, secs(2800)), 0, "C was cleared");
    }

    #[test]
    fn alarm_in_12_hour_mode_compares_the_pm_bit() {
        let mut r = Rtc::new(T_2023); // 22:13:20 = 10 PM
        wr(&mut r, REG_B, B_AIE, GuestTime::ZERO); // 12 h, BCD
        wr(&mut r, REG_HOURS_ALARM, 0x10, GuestTime::ZERO); // 10 AM
        wr(&mut r, REG_MINUTES_ALARM, 0x13, GuestTime::ZERO);
        wr(&mut r, REG_SECONDS_ALARM, 0x21, GuestTime::ZERO);
        assert_eq!(r.next_deadline(), Some(secs(1 + 12 * 3600)));
        wr(&mut r, REG_HOURS_ALARM, 0x90, GuestTime::ZERO); // 10 PM
        assert_eq!(r.next_deadline(), Some(secs(1)));
    }

    #[test]
    fn set_freezes_and_writes_set_the_clock() {
        let mut r = Rtc::new(T_2023);
        wr(&mut r, REG_B, B_24H | B_UIE, ms(200));
        // SET clears UIE and freezes the registers.
        wr(&mut r, REG_B, B_SET | B_24H | B_UIE, ms(200));
        assert_eq!(rd(&mut r, REG_B, ms(200)), B_SET | B_24H);
        assert_eq!(rd(&mut r, REG_SECONDS, secs(3)), 0x20);
        // Write 2024-02-29 23:59:58, a Thursday (5), field by field (an invalid date on the
        // way is fine while SET is on).
        for (reg, v) in [
            (REG_DAY_OF_MONTH, 0x29),
            (REG_MONTH, 0x02),
            (REG_YEAR, 0x24),
            (CMOS_CENTURY, 0x20),
            (REG_HOURS, 0x23),
            (REG_MINUTES, 0x59),
            (REG_SECONDS, 0x58),
            (REG_DAY_OF_WEEK, 0x05),
        ] {
            wr(&mut r, reg, v, secs(3));
        }
        assert_eq!(
            date(&mut r, ms(3900)),
            [0x58, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
        assert_eq!(
            rd(&mut r, REG_C, ms(3900)) & C_UF,
            0,
            "no updates while SET"
        );
        // Clear SET at 3.9 s: the divider kept running, so the next update is at 4 s.
        wr(&mut r, REG_B, B_24H, ms(3900));
        assert_eq!(rd(&mut r, REG_SECONDS, ms(3999)), 0x58);
        assert_eq!(rd(&mut r, REG_SECONDS, secs(4)), 0x59);
        assert_eq!(
            date(&mut r, secs(5)),
            [0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x24, 0x20]
        );
    }

    #[test]
    fn writes_without_set_take_effect_at_once() {
        let mut r = Rtc::new(T_2023);
        wr(&mut r, REG_YEAR, 0x30, ms(1500));
        assert_eq!(rd(&mut r, REG_YEAR, ms(1500)), 0x30);
        assert_eq!(rd(&mut r, REG_SECONDS, ms(1500)), 0x21);
        assert_eq!(rd(&mut r, REG_SECONDS, secs(2)), 0x22);
        let dt = DateTime::from_unix(r.unix_time(secs(2)));
        assert_eq!((dt.year, dt.month, dt.day), (2030, 11, 14));
        // The chip does not compute weekdays: changing the year left Tuesday (3) although
        // 2030-11-14 is a Thursday, and the register counts on from what it holds.
        assert_eq!(dt.weekday, 4);
        assert_eq!(rd(&mut r, REG_DAY_OF_WEEK, secs(2)), 0x03);
        assert_eq!(rd(&mut r, REG_DAY_OF_WEEK, secs(2 + 86_400)), 0x04);
        // A written weekday is kept and wraps from 7 (Saturday) to 1.
        wr(&mut r, REG_DAY_OF_WEEK, 0x07, secs(2 + 86_400));
        assert_eq!(rd(&mut r, REG_DAY_OF_WEEK, secs(2 + 86_400)), 0x07);
        assert_eq!(rd(&mut r, REG_DAY_OF_WEEK, secs(2 + 2 * 86_400)), 0x01);
    }

    #[test]
    fn divider_reset_holds_the_clock_and_restarts_half_a_second_later() {
        let mut r = Rtc::new(T_2023);
        wr(&mut r, REG_A, 0x66, ms(1200)); // DV = 110: divider in reset
        assert_eq!(rd(&mut r, REG_SECONDS, secs(9)), 0x21);
        assert_eq!(rd(&mut r, REG_A, ms(8999)) & A_UIP, 0);
        wr(&mut r, REG_A, 0x26, ms(9100));
        assert_eq!(rd(&mut r, REG_SECONDS, ms(9599)), 0x21);
        assert_eq!(rd(&mut r, REG_SECONDS, ms(9600)), 0x22);
        assert_eq!(rd(&mut r, REG_SECONDS, ms(10600)), 0x23);
    }

    #[test]
    fn register_c_and_d() {
        let mut r = Rtc::new(T_2023);
        assert_eq!(rd(&mut r, REG_D, GuestTime::ZERO), D_VRT);
        assert_eq!(rd(&mut r, REG_C, GuestTime::ZERO), 0);
        // PF and UF latch; reading C returns and clears them.
        assert_eq!(rd(&mut r, REG_C, secs(1)), C_PF | C_UF);
        assert_eq!(rd(&mut r, REG_C, secs(1)), 0);
        // C and D are read-only.
        wr(&mut r, REG_C, 0xFF, secs(1));
        wr(&mut r, REG_D, 0x00, secs(1));
        assert_eq!(rd(&mut r, REG_C, secs(1)), 0);
        assert_eq!(rd(&mut r, REG_D, secs(1)), D_VRT);
    }

    #[test]
    fn cmos_memory_and_shutdown_byte() {
        let mut r = Rtc::new(T_2023);
        for i in 0x0E..0x80u8 {
            if i != CMOS_CENTURY {
                wr(&mut r, i, i ^ 0x5A, GuestTime::ZERO);
            }
        }
        for i in 0x0E..0x80u8 {
            if i != CMOS_CENTURY {
                assert_eq!(rd(&mut r, i, ms(1)), i ^ 0x5A, "byte {i:#x}");
                assert_eq!(r.cmos(i), Some(i ^ 0x5A));
            }
        }
        assert!(r.set_cmos(0x10, 0x40));
        assert!(!r.set_cmos(REG_B, 0));
        assert!(!r.set_cmos(CMOS_CENTURY, 0));
        assert_eq!(r.cmos(REG_A), None);
        // The shutdown status survives a guest reset (battery-backed), as BIOSes expect.
        wr(&mut r, CMOS_SHUTDOWN_STATUS, 0x0A, ms(1));
        r.reset(ms(2));
        assert_eq!(rd(&mut r, CMOS_SHUTDOWN_STATUS, GuestTime::ZERO), 0x0A);
        assert_eq!(rd(&mut r, 0x10, GuestTime::ZERO), 0x40);
        // The index is 7 bits: 0x8F selects 0x0F with NMIs masked.
        r.write(RtcPort::Index, 0x80 | CMOS_SHUTDOWN_STATUS, GuestTime::ZERO);
        assert_eq!(r.read(RtcPort::Data, GuestTime::ZERO), 0x0A);
    }

    #[test]
    fn nmi_mask_bit() {
        let mut r = Rtc::new(T_2023);
        assert!(!r.nmi_masked());
        r.write(RtcPort::Index, 0x80 | REG_SECONDS, GuestTime::ZERO);
        assert!(r.nmi_masked());
        assert_eq!(r.index(), REG_SECONDS);
        assert_eq!(r.read(RtcPort::Data, GuestTime::ZERO), 0x20);
        assert_eq!(
            r.read(RtcPort::Index, GuestTime::ZERO),
            0xFF,
            "0x70 is write-only"
        );
        r.write(RtcPort::Index, REG_SECONDS, GuestTime::ZERO);
        assert!(!r.nmi_masked());
    }

    #[test]
    fn reset_state_and_time_across_a_reset() {
        let mut r = Rtc::new(T_2023);
        wr(
            &mut r,
            REG_B,
            B_24H | B_PIE | B_AIE | B_UIE | B_SQWE | B_DSE,
            ms(1),
        );
        wr(&mut r, REG_A, 0x2F, ms(1));
        r.write(RtcPort::Index, 0x80 | REG_B, ms(1));
        r.poll(ms(600));
        assert!(r.irq_level());
        // Reset at 10.25 s of the old guest clock; the new one starts at 0.
        r.reset(ms(10_250));
        assert!(!r.irq_level());
        assert!(!r.nmi_masked());
        assert_eq!(r.index(), 0);
        assert_eq!(rd(&mut r, REG_B, GuestTime::ZERO), B_24H | B_DSE);
        assert_eq!(rd(&mut r, REG_A, GuestTime::ZERO), 0x2F);
        assert_eq!(rd(&mut r, REG_C, GuestTime::ZERO), 0);
        assert_eq!(r.next_deadline(), None);
        // The time went on: 22:13:30 at the reset, the next update 750 ms later.
        assert_eq!(rd(&mut r, REG_SECONDS, GuestTime::ZERO), 0x30);
        assert_eq!(rd(&mut r, REG_SECONDS, ms(749)), 0x30);
        assert_eq!(rd(&mut r, REG_SECONDS, ms(750)), 0x31);
        // A fresh RTC: firmware defaults.
        let mut f = Rtc::new(0);
        assert_eq!(rd(&mut f, REG_A, GuestTime::ZERO), A_DEFAULT);
        assert_eq!(rd(&mut f, REG_B, GuestTime::ZERO), B_DEFAULT);
        assert_eq!(rd(&mut f, REG_D, GuestTime::ZERO), D_VRT);
        assert_eq!(
            date(&mut f, GuestTime::ZERO),
            [0, 0, 0, 5, 1, 1, 0x70, 0x19]
        );
    }

    #[test]
    fn changing_the_mode_under_set_then_rewriting() {
        // The datasheet way to switch to binary: SET, change DM, rewrite, clear SET.
        let mut r = Rtc::new(T_2023);
        wr(&mut r, REG_B, B_SET | B_24H, ms(100));
        wr(&mut r, REG_B, B_SET | B_24H | B_DM_BINARY, ms(100));
        for (reg, v) in [
            (REG_SECONDS, 0),
            (REG_MINUTES, 30),
            (REG_HOURS, 12),
            (REG_DAY_OF_WEEK, 2),
            (REG_DAY_OF_MONTH, 1),
            (REG_MONTH, 1),
            (REG_YEAR, 24),
            (CMOS_CENTURY, 20),
        ] {
            wr(&mut r, reg, v, ms(100));
        }
        wr(&mut r, REG_B, B_24H | B_DM_BINARY, ms(100));
        assert_eq!(date(&mut r, ms(100)), [0, 30, 12, 2, 1, 1, 24, 20]);
        assert_eq!(r.unix_time(ms(100)), 1_704_112_200);
    }

    fn alarm_byte() -> impl proptest::strategy::Strategy<Value = (bool, u8)> {
        use proptest::prelude::*;
        // (is "any", value): don't care, a small value (encoded later), or raw garbage.
        prop_oneof![
            (0xC0u8..=0xFF).prop_map(|b| (true, b)),
            (0u8..60).prop_map(|v| (false, v)),
            any::<u8>().prop_map(|b| (true, b)),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        #[test]
        fn calendar_round_trip(t in -400_000_000_000i64..400_000_000_000) {
            let dt = DateTime::from_unix(t);
            proptest::prop_assert_eq!(dt.to_unix(), t);
            proptest::prop_assert!(dt.month >= 1 && dt.month <= 12);
            proptest::prop_assert!(dt.day >= 1 && dt.day <= days_in_month(dt.year, dt.month));
            proptest::prop_assert_eq!(i64::from(dt.weekday), (t.div_euclid(86_400) + 4).rem_euclid(7));
        }

        /// The deadline contract a run loop relies on: with IRQF low, polling at any time
        /// before `next_deadline()` leaves it low, polling at the deadline raises it; with no
        /// deadline nothing is raised. Random rates, enables, modes and alarms; the clock
        /// keeps reading start + whole seconds throughout.
        #[test]
        fn deadlines_are_exact(
            start in 0i64..4_000_000_000,
            rs in 0u8..16,
            enables in 0u8..8,
            mode in 0u8..4,
            alarms in proptest::collection::vec(alarm_byte(), 3),
            steps in proptest::collection::vec(0u32..u32::MAX, 1..40),
        ) {
            let mut r = Rtc::new(start);
            let z = GuestTime::ZERO;
            wr(&mut r, REG_A, 0x20 | rs, z);
            let b = (enables << 4) | (mode << 1);
            wr(&mut r, REG_B, b, z);
            for (reg, (raw, v)) in [REG_HOURS_ALARM, REG_MINUTES_ALARM, REG_SECONDS_ALARM]
                .into_iter()
                .zip(alarms)
            {
                let byte = if raw {
                    v
                } else if reg == REG_HOURS_ALARM {
                    r.encode_hour(v % 24)
                } else {
                    r.encode(v)
                };
                wr(&mut r, reg, byte, z);
            }
            rd(&mut r, REG_C, z);
            for f in steps {
                proptest::prop_assert!(!r.irq_level());
                let now = r.now;
                match r.next_deadline() {
                    Some(d) => {
                        proptest::prop_assert!(d > now);
                        let before = now.plus_nanos(
                            ((d.0 - now.0 - 1) as u128 * u128::from(f) / u128::from(u32::MAX)) as u64,
                        );
                        r.poll(before);
                        proptest::prop_assert!(!r.irq_level(), "raised at {:?} before {:?}", before, d);
                        r.poll(GuestTime(d.0 - 1));
                        proptest::prop_assert!(!r.irq_level(), "raised 1 ns before {:?}", d);
                        r.poll(d);
                        proptest::prop_assert!(r.irq_level(), "not raised at {:?}", d);
                        let c = rd(&mut r, REG_C, d);
                        proptest::prop_assert!(c & C_IRQF != 0);
                        proptest::prop_assert_eq!(r.unix_time(d), start + (d.0 / NS) as i64);
                    }
                    None => {
                        let later = now.plus_nanos(u64::from(f) * 1000);
                        r.poll(later);
                        proptest::prop_assert!(!r.irq_level());
                        rd(&mut r, REG_C, later);
                    }
                }
            }
        }
    }
}
