//! The MC146818 real-time clock and the PC's CMOS memory.
//!
//! Datasheet: Motorola MC146818A "Real-Time Clock Plus RAM (RTC)": "Address
//! Map" (Figure 3), "Time, Calendar and Alarm Locations" (Table 2),
//! "Register A" to "Register D", "Periodic Interrupt Rate" (Table 4),
//! "Update Cycle" (the UIP bit, 244 us before each update) and "Interrupts".
//! The CMOS byte assignments are those of the IBM PC/AT BIOS as QEMU and
//! SeaBIOS use them (0x15-0x18 and 0x30-0x31 memory sizes, 0x32 century,
//! 0x34-0x35 memory above 16 MiB, 0x5B-0x5D memory above 4 GiB, 0x5F the
//! number of CPUs minus one, which SeaBIOS reads when fw_cfg does not give it).
//!
//! ```text
//! port 0x70  bit 7 NMI disable, bits 6:0 register index (write only)
//! port 0x71  the selected register
//!
//! index  register              index  register
//! 0x00   seconds               0x0A   A: UIP | DV2-0 (010 = 32.768 kHz) | RS3-0 rate
//! 0x01   seconds alarm         0x0B   B: SET PIE AIE UIE SQWE DM 24/12 DSE
//! 0x02   minutes               0x0C   C: IRQF PF AF UF 0 0 0 0 (read clears)
//! 0x03   minutes alarm         0x0D   D: VRT (valid RAM and time)
//! 0x04   hours (bit 7 = PM)    0x0E-  CMOS RAM
//! 0x05   hours alarm           0x7F
//! 0x06   day of week (1 = Sunday)
//! 0x07   day of month, 0x08 month, 0x09 year (00-99)
//! ```
//!
//! The time follows the machine's clock from the host's wall time at
//! creation, with the second boundaries of the host's. Time registers are
//! formatted on each read (BCD or binary, 12 or 24 hours, per register B),
//! so there is no update cycle to race with: UIP is set for the 244 us
//! before each second boundary and the update itself is instant.
//!
//! Interrupt flags are computed lazily from the time when register C is
//! read; [`Rtc::next_deadline_ns`] asks for a tick only while an enabled
//! interrupt could raise IRQ8, so an idle guest costs nothing.
//!
//! Model choices:
//! - A write to a time register while the clock runs sets that field at
//!   once (real parts need SET=1; software that follows the datasheet works).
//! - Changing the data mode converts nothing: the time is kept as a count
//!   of seconds and always read out in the current format.
//! - Daylight saving (DSE) and the square-wave output are not modelled.
//! - The day of week keeps any offset the guest writes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use persist::{Persist, PersistError};

use crate::bus::BusDevice;
use crate::clock::{ns_for_ticks, ticks_in, SharedClock, Timed, NANOS_PER_SEC};
use crate::irq::IrqLine;
use crate::log_once::{LogOnce, Misuse};

/// I/O port of the index register; the data register follows.
pub const RTC_PORT: u16 = 0x70;
/// The index and data ports.
pub const RTC_PORT_LEN: u64 = 2;
/// ISA IRQ of the RTC.
pub const RTC_IRQ: u32 = 8;
/// Bytes of CMOS (registers included).
pub const CMOS_SIZE: usize = 128;
/// The CMOS byte with the century, as the FADT's CENTURY field names it.
pub const CMOS_CENTURY: u8 = 0x32;

// Port 0x70.
const INDEX_NMI_DISABLE: u8 = 0b1000_0000;
const INDEX_MASK: u8 = 0b0111_1111;

// Register indices.
const REG_SECONDS: u8 = 0x00;
const REG_SECONDS_ALARM: u8 = 0x01;
const REG_MINUTES: u8 = 0x02;
const REG_MINUTES_ALARM: u8 = 0x03;
const REG_HOURS: u8 = 0x04;
const REG_HOURS_ALARM: u8 = 0x05;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY_OF_MONTH: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;

// Register A.
const A_UIP: u8 = 0b1000_0000;
const A_DV_MASK: u8 = 0b0111_0000;
const A_DV_32KHZ: u8 = 0b0010_0000;
const A_RS_MASK: u8 = 0b0000_1111;
// Register B.
const B_SET: u8 = 0b1000_0000;
const B_PIE: u8 = 0b0100_0000;
const B_AIE: u8 = 0b0010_0000;
const B_UIE: u8 = 0b0001_0000;
const B_DM_BINARY: u8 = 0b0000_0100;
const B_24H: u8 = 0b0000_0010;
// Register C.
const C_IRQF: u8 = 0b1000_0000;
const C_PF: u8 = 0b0100_0000;
const C_AF: u8 = 0b0010_0000;
const C_UF: u8 = 0b0001_0000;
// Register D.
const D_VRT: u8 = 0b1000_0000;

/// Hours register: PM in 12-hour mode.
const HOURS_PM: u8 = 0b1000_0000;
/// Alarm bytes from 0xC0 up match any value.
const ALARM_DONT_CARE: u8 = 0b1100_0000;

/// Register A as a PC BIOS leaves it: 32.768 kHz time base, 1024 Hz rate.
const A_BIOS: u8 = A_DV_32KHZ | 0b0110;
/// Register B as a PC BIOS leaves it: 24-hour mode, BCD, no interrupts.
const B_BIOS: u8 = B_24H;

/// Frequency of the time base.
const TIME_BASE_HZ: u64 = 32_768;
/// UIP rises this long before each update (datasheet: 244 us at 32.768 kHz).
const UIP_LEAD_NS: u64 = 244_000;
/// Alarm matches are searched over at most this many missed seconds (a day).
const MAX_ALARM_SCAN_SECS: i64 = 86_400;

// CMOS RAM bytes (PC/AT BIOS).
const CMOS_FLOPPY: usize = 0x10;
const CMOS_DISK: usize = 0x12;
const CMOS_EQUIPMENT: usize = 0x14;
const CMOS_BASE_MEM: usize = 0x15;
const CMOS_EXT_MEM: usize = 0x17;
const CMOS_CHECKSUM: usize = 0x2e;
const CMOS_EXT_MEM2: usize = 0x30;
const CMOS_MEM_ABOVE_16M: usize = 0x34;
const CMOS_MEM_ABOVE_4G: usize = 0x5b;
const CMOS_CPU_COUNT: usize = 0x5f;
/// The checksum covers 0x10-0x2D.
const CHECKSUM_RANGE: std::ops::RangeInclusive<usize> = 0x10..=0x2d;
/// Equipment byte: a math coprocessor, VGA.
const EQUIPMENT_FPU: u8 = 0b0000_0010;
/// Base memory in KiB.
const BASE_MEM_KIB: u16 = 640;

const MIB: u64 = 1 << 20;

/// The guest RAM the CMOS memory-size bytes report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RamSize {
    /// Bytes of RAM below 4 GiB (below the PCI hole).
    pub below_4g: u64,
    /// Bytes of RAM from 4 GiB up.
    pub above_4g: u64,
}

impl RamSize {
    /// Splits `total` bytes at `low_limit` (the start of the PCI hole).
    pub fn split(total: u64, low_limit: u64) -> Self {
        Self { below_4g: total.min(low_limit), above_4g: total.saturating_sub(low_limit) }
    }
}

/// A calendar time as the RTC keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday.
    weekday: u32,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: sod / 3600,
            minute: sod / 60 % 60,
            second: sod % 60,
            weekday: (days + 4).rem_euclid(7) as u32,
        }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn to_bcd(v: u32) -> u8 {
    let v = v % 100;
    (((v / 10) << 4) | (v % 10)) as u8
}

fn from_bcd(v: u8) -> u32 {
    u32::from(v >> 4) * 10 + u32::from(v & 0xf)
}

/// The guest-visible state of the RTC, for save and restore.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RtcState {
    /// The [`CMOS_SIZE`] CMOS bytes. The time registers (0x00, 0x02,
    /// 0x04, 0x06-0x09, the century at 0x32) and registers C and D are
    /// computed and hold 0 here; the alarm bytes and registers A and B are
    /// stored.
    pub cmos: Vec<u8>,
    /// The index port (NMI disable bit included).
    pub index: u8,
    /// RTC seconds (Unix time) at the update boundary `base_epoch`.
    pub base_secs: i64,
    /// The update boundary (in seconds of divider time) `base_secs` refers to.
    pub base_epoch: i64,
    /// Divider time minus clock time, 0..1e9 ns.
    pub skew_ns: u64,
    /// Seconds while the clock is halted (SET or divider reset).
    pub halted_secs: Option<i64>,
    /// Offset the guest gave the day of week.
    pub weekday_adjust: u32,
    /// PF, AF and UF as last evaluated.
    pub flags: u8,
    /// Clock time flags were last evaluated at.
    pub checked_ns: u64,
}

/// The MC146818 RTC with its CMOS RAM.
pub struct Rtc {
    s: RtcState,
    clock: SharedClock,
    irq: Arc<dyn IrqLine>,
    irq_level: bool,
    log: LogOnce,
}

impl std::fmt::Debug for Rtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtc").field("index", &self.s.index).field("flags", &self.s.flags).finish_non_exhaustive()
    }
}

/// Nanoseconds since the Unix epoch on the host's wall clock.
fn host_wall_clock_ns() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    }
}

impl Rtc {
    /// An RTC showing the host's wall-clock time (UTC), with the CMOS
    /// memory-size bytes for `ram`. IRQ8 goes to `irq`.
    pub fn new(clock: SharedClock, irq: Arc<dyn IrqLine>, ram: RamSize) -> Self {
        Self::with_wall_clock(clock, irq, ram, host_wall_clock_ns())
    }

    /// Sets the time the RTC shows now to `unix_ns` (nanoseconds since 1970
    /// as its calendar counts them: UTC, or local time for a guest that
    /// keeps its RTC so), as a power-on does; the CMOS memory stays.
    pub fn set_wall_clock(&mut self, unix_ns: i128) {
        let cmos = std::mem::take(&mut self.s.cmos);
        let fresh = Self::with_wall_clock(self.clock.clone(), self.irq.clone(), RamSize::default(), unix_ns);
        self.s = RtcState { cmos, ..fresh.s };
    }

    /// An RTC that shows `unix_ns` (nanoseconds since 1970, UTC) now.
    pub fn with_wall_clock(clock: SharedClock, irq: Arc<dyn IrqLine>, ram: RamSize, unix_ns: i128) -> Self {
        let now = clock.now_ns();
        let nanos = i128::from(NANOS_PER_SEC);
        let wall_frac = unix_ns.rem_euclid(nanos) as u64;
        let skew_ns = (wall_frac + NANOS_PER_SEC - now % NANOS_PER_SEC) % NANOS_PER_SEC;
        let base_secs = i64::try_from(unix_ns.div_euclid(nanos)).unwrap_or(0);
        let mut cmos = vec![0u8; CMOS_SIZE];
        cmos[usize::from(REG_A)] = A_BIOS;
        cmos[usize::from(REG_B)] = B_BIOS;
        let mut rtc = Self {
            s: RtcState {
                cmos,
                index: 0,
                base_secs,
                base_epoch: 0,
                skew_ns,
                halted_secs: None,
                weekday_adjust: 0,
                flags: 0,
                checked_ns: now,
            },
            clock,
            irq,
            irq_level: false,
            log: LogOnce::new(),
        };
        rtc.s.base_epoch = rtc.epoch(now);
        rtc.set_ram_size(ram);
        rtc
    }

    /// Fills the CMOS memory-size bytes for `ram` and the BIOS bytes around them.
    pub fn set_ram_size(&mut self, ram: RamSize) {
        let c = &mut self.s.cmos;
        let put16 = |c: &mut [u8], at: usize, v: u16| {
            c[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        c[CMOS_FLOPPY] = 0;
        c[CMOS_DISK] = 0;
        c[CMOS_EQUIPMENT] = EQUIPMENT_FPU;
        put16(c, CMOS_BASE_MEM, BASE_MEM_KIB);
        let ext_kib = (ram.below_4g.saturating_sub(MIB) / 1024).min(0xffff) as u16;
        put16(c, CMOS_EXT_MEM, ext_kib);
        put16(c, CMOS_EXT_MEM2, ext_kib);
        let above_16m = (ram.below_4g.saturating_sub(16 * MIB) >> 16).min(0xffff) as u16;
        put16(c, CMOS_MEM_ABOVE_16M, above_16m);
        let above_4g = (ram.above_4g >> 16).min(0xff_ffff) as u32;
        c[CMOS_MEM_ABOVE_4G..CMOS_MEM_ABOVE_4G + 3].copy_from_slice(&above_4g.to_le_bytes()[..3]);
        self.update_checksum();
    }

    /// Fills the floppy bytes: the drive types (0x10: drive A in the high
    /// nibble, B in the low one) and the floppy bits of the equipment byte
    /// (0x14), then the checksum over 0x10-0x2D.
    pub fn set_floppies(&mut self, types: u8, equipment: u8) {
        self.s.cmos[CMOS_FLOPPY] = types;
        self.s.cmos[CMOS_EQUIPMENT] = EQUIPMENT_FPU | equipment;
        self.update_checksum();
    }

    fn update_checksum(&mut self) {
        let c = &mut self.s.cmos;
        let sum: u16 = CHECKSUM_RANGE.map(|i| u16::from(c[i])).sum();
        c[CMOS_CHECKSUM..CMOS_CHECKSUM + 2].copy_from_slice(&sum.to_be_bytes());
    }

    /// Fills the CMOS CPU-count byte (0x5F) with `cpus` minus one (one CPU
    /// until this is called; 0 counts as one, more than 256 as 256). The
    /// byte is outside the checksummed range.
    pub fn set_cpu_count(&mut self, cpus: usize) {
        self.s.cmos[CMOS_CPU_COUNT] = u8::try_from(cpus.saturating_sub(1)).unwrap_or(u8::MAX);
    }

    /// Whether port 0x70's NMI-disable bit is set.
    pub fn nmi_masked(&self) -> bool {
        self.s.index & INDEX_NMI_DISABLE != 0
    }

    fn reg(&self, r: u8) -> u8 {
        self.s.cmos[usize::from(r)]
    }

    fn divider_time(&self, now: u64) -> u64 {
        now.saturating_add(self.s.skew_ns)
    }

    /// Whole seconds of divider time at `now`.
    fn epoch(&self, now: u64) -> i64 {
        i64::try_from(self.divider_time(now) / NANOS_PER_SEC).unwrap_or(i64::MAX)
    }

    fn divider_running(&self) -> bool {
        self.reg(REG_A) & A_DV_MASK == A_DV_32KHZ
    }

    fn updating(&self) -> bool {
        self.s.halted_secs.is_none()
    }

    /// RTC seconds (Unix time) at `now`.
    fn seconds(&self, now: u64) -> i64 {
        match self.s.halted_secs {
            Some(s) => s,
            None => self.s.base_secs.saturating_add(self.epoch(now).saturating_sub(self.s.base_epoch)),
        }
    }

    /// Makes the clock read `secs` now without moving its update phase.
    fn set_seconds(&mut self, secs: i64, now: u64) {
        match &mut self.s.halted_secs {
            Some(h) => *h = secs,
            None => {
                self.s.base_secs = secs;
                self.s.base_epoch = self.epoch(now);
            }
        }
    }

    /// Stops the clock (SET, or the divider held in reset).
    fn halt(&mut self, now: u64) {
        if self.s.halted_secs.is_none() {
            self.s.halted_secs = Some(self.seconds(now));
        }
    }

    /// Restarts the clock: the first update comes one second from now.
    fn resume(&mut self, now: u64) {
        if let Some(secs) = self.s.halted_secs.take() {
            self.s.skew_ns = (NANOS_PER_SEC - now % NANOS_PER_SEC) % NANOS_PER_SEC;
            self.s.base_secs = secs;
            self.s.base_epoch = self.epoch(now);
            self.s.checked_ns = now;
        }
    }

    fn binary(&self) -> bool {
        self.reg(REG_B) & B_DM_BINARY != 0
    }

    fn encode(&self, v: u32) -> u8 {
        if self.binary() {
            v as u8
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.binary() {
            u32::from(v)
        } else {
            from_bcd(v)
        }
    }

    fn encode_hours(&self, hour: u32) -> u8 {
        if self.reg(REG_B) & B_24H != 0 {
            self.encode(hour)
        } else {
            let h12 = if hour.is_multiple_of(12) { 12 } else { hour % 12 };
            self.encode(h12) | if hour >= 12 { HOURS_PM } else { 0 }
        }
    }

    fn decode_hours(&self, v: u8) -> u32 {
        if self.reg(REG_B) & B_24H != 0 {
            self.decode(v)
        } else {
            let h = self.decode(v & !HOURS_PM) % 12;
            h + if v & HOURS_PM != 0 { 12 } else { 0 }
        }
    }

    /// The periodic interrupt period in time-base ticks, if any (Table 4).
    fn periodic_ticks(&self) -> Option<u64> {
        match self.reg(REG_A) & A_RS_MASK {
            0 => None,
            rs @ (1 | 2) => Some(1 << (rs + 6)),
            rs => Some(1 << (rs - 1)),
        }
    }

    fn alarm_matches(&self, secs: i64) -> bool {
        let t = DateTime::from_unix(secs);
        let field = |alarm: u8, value: u8| alarm & ALARM_DONT_CARE == ALARM_DONT_CARE || alarm == value;
        field(self.reg(REG_SECONDS_ALARM), self.encode(t.second))
            && field(self.reg(REG_MINUTES_ALARM), self.encode(t.minute))
            && field(self.reg(REG_HOURS_ALARM), self.encode_hours(t.hour))
    }

    /// Sets the flags for the events between the last check and `now`.
    fn advance(&mut self, now: u64) {
        let last = self.s.checked_ns;
        if now <= last {
            return;
        }
        self.s.checked_ns = now;
        if !self.divider_running() {
            return;
        }
        if let Some(p) = self.periodic_ticks() {
            let before = ticks_in(self.divider_time(last), TIME_BASE_HZ) / p;
            let after = ticks_in(self.divider_time(now), TIME_BASE_HZ) / p;
            if after > before {
                self.s.flags |= C_PF;
            }
        }
        if self.updating() {
            let (e0, e1) = (self.epoch(last), self.epoch(now));
            if e1 > e0 {
                self.s.flags |= C_UF;
                let first = e1.saturating_sub(MAX_ALARM_SCAN_SECS).max(e0) + 1;
                let hit = (first..=e1).any(|e| {
                    let secs = self.s.base_secs.saturating_add(e - self.s.base_epoch);
                    self.alarm_matches(secs)
                });
                if hit {
                    self.s.flags |= C_AF;
                }
            }
        }
        self.update_irq();
    }

    fn irqf(&self) -> bool {
        let b = self.reg(REG_B);
        let f = self.s.flags;
        (f & C_PF != 0 && b & B_PIE != 0) || (f & C_AF != 0 && b & B_AIE != 0) || (f & C_UF != 0 && b & B_UIE != 0)
    }

    fn update_irq(&mut self) {
        let level = self.irqf();
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    fn read_time_register(&self, index: u8, now: u64) -> u8 {
        let t = DateTime::from_unix(self.seconds(now));
        match index {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hours(t.hour),
            REG_DAY_OF_WEEK => self.encode((t.weekday + self.s.weekday_adjust) % 7 + 1),
            REG_DAY_OF_MONTH => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(t.year.rem_euclid(100) as u32),
            _ => self.encode(t.year.div_euclid(100).clamp(0, 99) as u32),
        }
    }

    fn write_time_register(&mut self, index: u8, value: u8, now: u64) {
        let mut t = DateTime::from_unix(self.seconds(now));
        let v = self.decode(value);
        match index {
            REG_SECONDS => t.second = v.min(59),
            REG_MINUTES => t.minute = v.min(59),
            REG_HOURS => t.hour = self.decode_hours(value).min(23),
            REG_DAY_OF_WEEK => {
                let want = v.clamp(1, 7) - 1;
                self.s.weekday_adjust = (want + 7 - t.weekday) % 7;
                return;
            }
            REG_DAY_OF_MONTH => t.day = v.clamp(1, 31),
            REG_MONTH => t.month = v.clamp(1, 12),
            REG_YEAR => t.year = t.year.div_euclid(100) * 100 + i64::from(v.min(99)),
            _ => t.year = i64::from(v.min(99)) * 100 + t.year.rem_euclid(100),
        }
        self.set_seconds(t.to_unix(), now);
    }

    /// Reads register `index` (0x00-0x7F) as the data port does.
    pub fn read_register(&mut self, index: u8, now: u64) -> u8 {
        self.advance(now);
        match index {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_WEEK | REG_DAY_OF_MONTH | REG_MONTH | REG_YEAR
            | CMOS_CENTURY => self.read_time_register(index, now),
            REG_A => {
                let phase = self.divider_time(now) % NANOS_PER_SEC;
                let uip = self.updating() && self.divider_running() && phase >= NANOS_PER_SEC - UIP_LEAD_NS;
                self.reg(REG_A) | if uip { A_UIP } else { 0 }
            }
            REG_C => {
                let value = self.s.flags | if self.irqf() { C_IRQF } else { 0 };
                self.s.flags = 0;
                self.update_irq();
                value
            }
            REG_D => D_VRT,
            _ => self.s.cmos[usize::from(index & INDEX_MASK)],
        }
    }

    /// Writes register `index` (0x00-0x7F) as the data port does.
    pub fn write_register(&mut self, index: u8, value: u8, now: u64) {
        self.advance(now);
        match index {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_WEEK | REG_DAY_OF_MONTH | REG_MONTH | REG_YEAR
            | CMOS_CENTURY => self.write_time_register(index, value, now),
            REG_A => {
                self.s.cmos[usize::from(REG_A)] = value & !A_UIP;
                self.sync_running(now);
            }
            REG_B => {
                let mut value = value;
                if value & B_SET != 0 {
                    // Setting SET clears UIE (Register B, bit 4).
                    value &= !B_UIE;
                }
                self.s.cmos[usize::from(REG_B)] = value;
                self.sync_running(now);
                self.update_irq();
            }
            // C and D are read-only.
            REG_C | REG_D => {}
            _ => self.s.cmos[usize::from(index & INDEX_MASK)] = value,
        }
    }

    /// Halts or resumes the clock after a change of SET or the divider.
    fn sync_running(&mut self, now: u64) {
        let run = self.reg(REG_B) & B_SET == 0 && self.divider_running();
        if run {
            self.resume(now);
        } else {
            self.halt(now);
        }
    }

    fn log_access(&self, offset: u64, size: usize) {
        if self.log.first(Misuse::AccessSize) {
            tracing::warn!(target: "devices", offset, size, "MC146818: ports are one byte wide; access ignored (logged once)");
        }
    }
}

/// The part name the RTC's errors carry.
const PART: &str = "MC146818 RTC";

/// The CMOS bytes the RTC computes instead of storing.
const COMPUTED_REGISTERS: [u8; 10] = [
    REG_SECONDS,
    REG_MINUTES,
    REG_HOURS,
    REG_DAY_OF_WEEK,
    REG_DAY_OF_MONTH,
    REG_MONTH,
    REG_YEAR,
    REG_C,
    REG_D,
    CMOS_CENTURY,
];

/// Restore checks the CMOS size, registers A and B as a write leaves them
/// (UIP clear, UIE clear under SET), that the computed registers hold 0,
/// that the clock is halted exactly when SET or the divider says so, and
/// the ranges of the sub-second skew, the weekday offset and the flags.
/// Then it drives IRQ8 from the flags.
impl Persist for Rtc {
    type State = RtcState;

    fn save(&self) -> RtcState {
        self.s.clone()
    }

    fn restore(&mut self, state: &RtcState) -> Result<(), PersistError> {
        Self::check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

impl Rtc {
    /// The checks of [`Persist::restore`], changing nothing.
    pub(crate) fn check_state(state: &RtcState) -> Result<(), PersistError> {
        PersistError::check_len(PART, "cmos", state.cmos.len(), CMOS_SIZE)?;
        let (a, b) = (state.cmos[usize::from(REG_A)], state.cmos[usize::from(REG_B)]);
        PersistError::check(a & A_UIP == 0, PART, "cmos", || format!("register A is {a:#04x}; UIP is computed"))?;
        PersistError::check(b & B_SET == 0 || b & B_UIE == 0, PART, "cmos", || {
            format!("register B is {b:#04x}; setting SET clears UIE")
        })?;
        if let Some(&r) = COMPUTED_REGISTERS.iter().find(|&&r| state.cmos[usize::from(r)] != 0) {
            return Err(PersistError::new(PART, "cmos", format!("byte {r:#04x} is computed and must hold 0")));
        }
        let running = b & B_SET == 0 && a & A_DV_MASK == A_DV_32KHZ;
        PersistError::check(state.halted_secs.is_none() == running, PART, "halted_secs", || {
            format!(
                "is {:?} with register A {a:#04x} and B {b:#04x}; the clock is halted exactly while SET is set or the \
                 divider is not running",
                state.halted_secs
            )
        })?;
        PersistError::check_max(PART, "skew_ns", state.skew_ns, NANOS_PER_SEC - 1)?;
        PersistError::check_max(PART, "weekday_adjust", state.weekday_adjust, 6)?;
        PersistError::check(state.flags & !(C_PF | C_AF | C_UF) == 0, PART, "flags", || {
            format!("is {:#04x}; only PF, AF and UF are kept", state.flags)
        })
    }

    /// Loads a state [`Rtc::check_state`] passed and drives IRQ8.
    pub(crate) fn load_state(&mut self, state: &RtcState) {
        self.s = state.clone();
        self.irq_level = self.irqf();
        self.irq.set_level(self.irq_level);
    }
}

impl Timed for Rtc {
    fn next_deadline_ns(&self) -> Option<u64> {
        if self.irq_level || !self.divider_running() {
            // IRQ8 is already high: nothing new can happen until C is read.
            return None;
        }
        let b = self.reg(REG_B);
        let now = self.s.checked_ns;
        let dt = self.divider_time(now);
        let mut next: Option<u64> = None;
        if b & B_PIE != 0 {
            if let Some(p) = self.periodic_ticks() {
                let k = ticks_in(dt, TIME_BASE_HZ) / p + 1;
                let t = ns_for_ticks(k.saturating_mul(p), TIME_BASE_HZ);
                next = Some(t.saturating_sub(self.s.skew_ns));
            }
        }
        if b & (B_UIE | B_AIE) != 0 && self.updating() {
            let t = (dt / NANOS_PER_SEC + 1).saturating_mul(NANOS_PER_SEC);
            let t = t.saturating_sub(self.s.skew_ns);
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next
    }

    fn tick(&mut self, now_ns: u64) {
        self.advance(now_ns);
    }
}

impl BusDevice for Rtc {
    fn debug_label(&self) -> String {
        "MC146818 RTC".to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [byte] = data else {
            self.log_access(offset, data.len());
            data.fill(0xff);
            return;
        };
        let now = self.clock.now_ns();
        *byte = match offset {
            1 => self.read_register(self.s.index & INDEX_MASK, now),
            // The index register is write-only.
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[value] = data else {
            self.log_access(offset, data.len());
            return;
        };
        let now = self.clock.now_ns();
        match offset {
            0 => self.s.index = value,
            1 => self.write_register(self.s.index & INDEX_MASK, value, now),
            _ => self.log_access(offset, data.len()),
        }
    }
}

#[cfg(test)]
mod tests;
