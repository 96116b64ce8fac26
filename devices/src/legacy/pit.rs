//! The 8254 programmable interval timer, and port 0x61 (system control port B).
//!
//! Datasheet: Intel 8254 "Programmable Interval Timer", order number 231164:
//! "Control Word Format" (Figure 7), "Read-Back Command" (Figures 10-12),
//! "Counter Latch Command", "Modes" 0-5 (Figures 13-19) and Table 2 "Gate
//! Pin Operations". Port 0x61 is the PC/AT's "NMI status and control"
//! register (PIIX3 datasheet 290550, section 2.3.x "NMISC").
//!
//! ```text
//! port  register                       control word (port 0x43)
//! 0x40  counter 0 -> IRQ0              7:6 SC   counter, 11 = read-back command
//! 0x41  counter 1 (DRAM refresh)       5:4 RW   00 latch, 01 LSB, 10 MSB, 11 LSB then MSB
//! 0x42  counter 2 -> speaker, 0x61     3:1 M    mode 0-5 (x10 = 2, x11 = 3)
//! 0x43  control word (write only)      0   BCD  1 = four BCD decades
//!
//! read-back: 1 1 !COUNT !STATUS CNT2 CNT1 CNT0 0
//! status:    OUT NULL_COUNT RW1 RW0 M2 M1 M0 BCD
//!
//! port 0x61  0 timer 2 gate  1 speaker data  2 parity check enable
//!            3 channel check enable  4 refresh toggle (RO)  5 timer 2 OUT (RO)
//!            6 IOCHK (RO, 0)  7 parity error (RO, 0)
//! ```
//!
//! The counters run at [`PIT_HZ`] from the machine's clock; a count read
//! computes the value from the time, so polling loops (Linux's TSC
//! calibration reads counter 2 and port 0x61 bit 5) see real time pass.
//! Counter 0 raises IRQ0 as an edge at each rising edge of its OUT pin;
//! [`Pit::next_deadline_ns`] says when the next one is due.
//!
//! Model choices:
//! - A new count in modes 2 and 3 takes effect at once instead of at the
//!   end of the current period (as QEMU does); drivers write the control
//!   word first, which stops the counter anyway.
//! - Mode 3 with an odd count counts down by two like an even one.
//! - Late IRQ0 edges of a periodic counter are raised one per poll, up to a
//!   second's worth (KVM's PIT reinjects lost ticks likewise): Linux counts
//!   jiffies by them, and its clocksource watchdog marks the TSC unstable
//!   when jiffies fall behind.
//! - The speaker is not heard; its enable bits are kept for the guest.

use std::sync::Arc;

use persist::{Persist, PersistError};

use crate::bus::{BusDevice, SharedDevice};
use crate::clock::{ns_for_ticks, ticks_in, SharedClock, Timed};
use crate::irq::IrqLine;
use crate::log_once::{LogOnce, Misuse};
use crate::mapping::{BusAlias, BusMapping};

/// First I/O port of the PIT.
pub const PIT_PORT: u16 = 0x40;
/// Counters 0-2 and the control word.
pub const PIT_PORT_LEN: u64 = 4;
/// I/O port of system control port B.
pub const PORT_B: u16 = 0x61;
/// The PIT's input clock: 1.193182 MHz (the PC's 14.31818 MHz crystal / 12).
pub const PIT_HZ: u64 = 1_193_182;
/// ISA IRQ of counter 0.
pub const PIT_IRQ: u32 = 0;

/// Offset of port 0x61 in the device's register numbering (0x61 - 0x40).
const PORT_B_OFFSET: u64 = (PORT_B - PIT_PORT) as u64;
const CONTROL_OFFSET: u64 = 3;

// Control word.
const CW_SC_SHIFT: u8 = 6;
const CW_SC_READ_BACK: u8 = 0b11;
const CW_RW_SHIFT: u8 = 4;
const CW_RW_MASK: u8 = 0b11;
const CW_MODE_SHIFT: u8 = 1;
const CW_MODE_MASK: u8 = 0b111;
const CW_BCD: u8 = 0b0000_0001;
// RW field values.
const RW_LATCH: u8 = 0b00;
const RW_LSB: u8 = 0b01;
const RW_MSB: u8 = 0b10;
const RW_WORD: u8 = 0b11;
// Read-back command.
const RB_NO_COUNT: u8 = 0b0010_0000;
const RB_NO_STATUS: u8 = 0b0001_0000;
const RB_COUNTER_SHIFT: u8 = 1;
// Status byte.
const STATUS_OUT: u8 = 0b1000_0000;
const STATUS_NULL_COUNT: u8 = 0b0100_0000;

// Port B.
/// Port 0x61 bit 0: counter 2's GATE.
pub const PORT_B_GATE2: u8 = 0b0000_0001;
/// Port 0x61 bit 1: the speaker's data.
pub const PORT_B_SPEAKER_DATA: u8 = 0b0000_0010;
const PORT_B_WRITABLE: u8 = 0b0000_1111;
const PORT_B_REFRESH: u8 = 0b0001_0000;
const PORT_B_OUT2: u8 = 0b0010_0000;

/// A binary count's modulus: a count of 0 counts 65536.
pub const BINARY_MODULUS: u64 = 0x1_0000;
const BCD_MODULUS: u64 = 10_000;

/// The state of one counter, for save and restore. Times are clock nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PitChannelState {
    /// Counter mode, 0-5.
    pub mode: u8,
    /// RW field of the control word: 1 LSB, 2 MSB, 3 LSB then MSB.
    pub rw: u8,
    /// BCD counting.
    pub bcd: bool,
    /// The count register: the reload value, 1..=65536 (or 10000 in BCD).
    pub reload: u64,
    /// When counting (re)started, or `None` while it waits for a count or a trigger.
    pub start_ns: Option<u64>,
    /// Elapsed ticks frozen while the gate is low (modes 0 and 4).
    pub paused_ticks: Option<u64>,
    /// The GATE input.
    pub gate: bool,
    /// Latched count not yet read.
    pub latched_count: Option<u16>,
    /// Latched status byte not yet read.
    pub latched_status: Option<u8>,
    /// The next byte read in LSB-then-MSB mode is the MSB.
    pub read_msb_next: bool,
    /// The next byte written in LSB-then-MSB mode is the MSB.
    pub write_msb_next: bool,
    /// The LSB written, waiting for its MSB.
    pub write_lsb: u8,
    /// A count was written and not yet loaded into the counter.
    pub null_count: bool,
    /// Elapsed tick up to which IRQ edges have been raised.
    pub irq_done_ticks: u64,
}

/// The state of the PIT and port 0x61, for save and restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PitState {
    /// Counters 0-2.
    pub channels: [PitChannelState; 3],
    /// Port 0x61's writable bits.
    pub port_b: u8,
    /// The refresh bit's last value.
    pub refresh: bool,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    s: PitChannelState,
}

/// A 16-bit value as four BCD digits.
fn to_bcd(value: u64) -> u16 {
    let v = value % BCD_MODULUS;
    (((v / 1000) << 12) | ((v / 100 % 10) << 8) | ((v / 10 % 10) << 4) | (v % 10)) as u16
}

/// Four BCD digits as a value (nibbles above 9 count as their binary value).
fn from_bcd(bcd: u16) -> u64 {
    let d = |shift: u16| u64::from((bcd >> shift) & 0xf);
    d(12) * 1000 + d(8) * 100 + d(4) * 10 + d(0)
}

impl Channel {
    fn new(gate: bool) -> Self {
        Self {
            s: PitChannelState {
                mode: 0,
                rw: RW_WORD,
                bcd: false,
                reload: BINARY_MODULUS,
                start_ns: None,
                paused_ticks: None,
                gate,
                latched_count: None,
                latched_status: None,
                read_msb_next: false,
                write_msb_next: false,
                write_lsb: 0,
                null_count: true,
                irq_done_ticks: 0,
            },
        }
    }

    fn modulus(&self) -> u64 {
        if self.s.bcd {
            BCD_MODULUS
        } else {
            BINARY_MODULUS
        }
    }

    /// Ticks since counting started, `None` while not counting.
    fn elapsed(&self, now: u64) -> Option<u64> {
        if let Some(p) = self.s.paused_ticks {
            return Some(p);
        }
        self.s.start_ns.map(|start| ticks_in(now.saturating_sub(start), PIT_HZ))
    }

    /// The counting element's value now.
    fn count(&self, now: u64) -> u64 {
        let n = self.s.reload;
        let Some(d) = self.elapsed(now) else {
            return n % self.modulus();
        };
        match self.s.mode {
            2 => n - d % n,
            3 => n - (2 * (d % n)) % n,
            _ => {
                let m = self.modulus();
                (n % m + m - d % m) % m
            }
        }
    }

    /// The OUT pin now.
    fn out(&self, now: u64) -> bool {
        let n = self.s.reload;
        let d = self.elapsed(now);
        match (self.s.mode, d) {
            // Mode 0: low from the control word until terminal count.
            (0, None) => false,
            (0, Some(d)) => d >= n,
            // Modes 1 and 5 wait high for a trigger.
            (1, Some(d)) => d >= n,
            (5, Some(d)) => d != n,
            (2, Some(d)) if self.s.gate => d % n != n - 1,
            (3, Some(d)) if self.s.gate => d % n < n.div_ceil(2),
            (4, Some(d)) => d != n,
            _ => true,
        }
    }

    /// The elapsed tick of the next rising edge of OUT after the ones raised.
    fn next_rising_edge(&self) -> Option<u64> {
        self.s.start_ns?;
        if self.s.paused_ticks.is_some() {
            return None;
        }
        let n = self.s.reload;
        let done = self.s.irq_done_ticks;
        match self.s.mode {
            0 | 1 => (done < n).then_some(n),
            4 | 5 => (done < n + 1).then_some(n + 1),
            2 | 3 if self.s.gate => Some((done / n + 1) * n),
            _ => None,
        }
    }

    fn status(&self, now: u64) -> u8 {
        let out = if self.out(now) { STATUS_OUT } else { 0 };
        let null = if self.s.null_count { STATUS_NULL_COUNT } else { 0 };
        out | null | (self.s.rw << CW_RW_SHIFT) | (self.s.mode << CW_MODE_SHIFT) | u8::from(self.s.bcd)
    }

    fn latch_count(&mut self, now: u64) {
        if self.s.latched_count.is_none() {
            let count = self.count(now);
            self.s.latched_count = Some(if self.s.bcd { to_bcd(count) } else { (count % BINARY_MODULUS) as u16 });
            self.s.read_msb_next = false;
        }
    }

    fn latch_status(&mut self, now: u64) {
        if self.s.latched_status.is_none() {
            self.s.latched_status = Some(self.status(now));
        }
    }

    fn write_control(&mut self, rw: u8, mode: u8, bcd: bool) {
        self.s.rw = rw;
        // Modes 6 and 7 are modes 2 and 3.
        self.s.mode = if mode >= 6 { mode - 4 } else { mode };
        self.s.bcd = bcd;
        self.s.start_ns = None;
        self.s.paused_ticks = None;
        self.s.latched_count = None;
        self.s.latched_status = None;
        self.s.read_msb_next = false;
        self.s.write_msb_next = false;
        self.s.null_count = true;
        self.s.irq_done_ticks = 0;
    }

    fn load(&mut self, raw: u16, now: u64) {
        let value = if self.s.bcd { from_bcd(raw) } else { u64::from(raw) };
        self.s.reload = if value == 0 { self.modulus() } else { value.min(self.modulus()) };
        self.s.null_count = false;
        self.s.irq_done_ticks = 0;
        self.s.paused_ticks = None;
        match self.s.mode {
            // Hardware-triggered modes wait for a rising edge of GATE.
            1 | 5 => {}
            0 | 4 if !self.s.gate => {
                self.s.start_ns = Some(now);
                self.s.paused_ticks = Some(0);
            }
            _ => self.s.start_ns = Some(now),
        }
    }

    fn write_count(&mut self, value: u8, now: u64) {
        match self.s.rw {
            RW_LSB => self.load(u16::from(value), now),
            RW_MSB => self.load(u16::from(value) << 8, now),
            _ => {
                if self.s.write_msb_next {
                    self.s.write_msb_next = false;
                    self.load(u16::from_le_bytes([self.s.write_lsb, value]), now);
                } else {
                    self.s.write_lsb = value;
                    self.s.write_msb_next = true;
                }
            }
        }
    }

    fn read_count(&mut self, now: u64) -> u8 {
        if let Some(status) = self.s.latched_status.take() {
            return status;
        }
        let (value, latched) = match self.s.latched_count {
            Some(v) => (v, true),
            None => {
                let c = self.count(now);
                let v = if self.s.bcd { to_bcd(c) } else { (c % BINARY_MODULUS) as u16 };
                (v, false)
            }
        };
        let [lsb, msb] = value.to_le_bytes();
        let (byte, done) = match self.s.rw {
            RW_LSB => (lsb, true),
            RW_MSB => (msb, true),
            _ => {
                let msb_now = self.s.read_msb_next;
                self.s.read_msb_next = !msb_now;
                (if msb_now { msb } else { lsb }, msb_now)
            }
        };
        if latched && done {
            self.s.latched_count = None;
        }
        byte
    }

    /// GATE changes (Table 2 of the datasheet).
    fn set_gate(&mut self, gate: bool, now: u64) {
        let was = self.s.gate;
        if gate == was {
            return;
        }
        match self.s.mode {
            0 | 4 => {
                if gate {
                    // Resume where the count stopped.
                    if let (Some(p), Some(_)) = (self.s.paused_ticks.take(), self.s.start_ns) {
                        self.s.start_ns = Some(now.saturating_sub(ns_for_ticks(p, PIT_HZ)));
                    }
                } else if self.s.start_ns.is_some() {
                    self.s.paused_ticks = self.elapsed(now);
                }
            }
            _ => {
                if gate && !self.s.null_count {
                    // A rising edge (re)starts modes 1, 2, 3 and 5 from the reload value.
                    self.s.start_ns = Some(now);
                    self.s.irq_done_ticks = 0;
                }
            }
        }
        self.s.gate = gate;
    }
}

/// The 8254 PIT and port 0x61.
pub struct Pit {
    channels: [Channel; 3],
    port_b: u8,
    refresh: bool,
    clock: SharedClock,
    irq: Arc<dyn IrqLine>,
    log: LogOnce,
}

impl std::fmt::Debug for Pit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pit").field("state", &self.save()).finish_non_exhaustive()
    }
}

impl Pit {
    /// A PIT in its power-on state: no counter programmed, counter 2's gate
    /// low. Counter 0's edges go to `irq` (ISA IRQ0).
    pub fn new(clock: SharedClock, irq: Arc<dyn IrqLine>) -> Self {
        let on = Self::power_on_state();
        Self {
            channels: on.channels.map(|s| Channel { s }),
            port_b: on.port_b,
            refresh: on.refresh,
            clock,
            irq,
            log: LogOnce::new(),
        }
    }

    /// The state of [`Pit::new`]'s PIT: no counter programmed, counter 2's
    /// gate low.
    pub fn power_on_state() -> PitState {
        // Counters 0 and 1 have GATE tied high on a PC; counter 2's gate is
        // port 0x61 bit 0, which resets to 0.
        PitState {
            channels: [Channel::new(true).s, Channel::new(true).s, Channel::new(false).s],
            port_b: 0,
            refresh: false,
        }
    }

    /// The ranges the PIT answers on: 0x40-0x43 and port 0x61.
    pub fn bus_mappings(pit: &SharedDevice) -> Vec<BusMapping> {
        vec![
            BusMapping::pio(u64::from(PIT_PORT), PIT_PORT_LEN, Arc::clone(pit)),
            BusMapping::pio(u64::from(PORT_B), 1, BusAlias::shared(Arc::clone(pit), PORT_B_OFFSET)),
        ]
    }

    /// Reads counter `index`'s port.
    pub fn read_counter(&mut self, index: usize) -> u8 {
        let now = self.clock.now_ns();
        self.channels[index].read_count(now)
    }

    /// Writes counter `index`'s port.
    pub fn write_counter(&mut self, index: usize, value: u8) {
        let now = self.clock.now_ns();
        self.tick(now);
        self.channels[index].write_count(value, now);
    }

    /// Writes the control word register.
    pub fn write_control(&mut self, value: u8) {
        let now = self.clock.now_ns();
        self.tick(now);
        let sc = value >> CW_SC_SHIFT;
        if sc == CW_SC_READ_BACK {
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if value & (1 << (RB_COUNTER_SHIFT + i as u8)) == 0 {
                    continue;
                }
                if value & RB_NO_COUNT == 0 {
                    ch.latch_count(now);
                }
                if value & RB_NO_STATUS == 0 {
                    ch.latch_status(now);
                }
            }
            return;
        }
        let ch = &mut self.channels[usize::from(sc)];
        let rw = (value >> CW_RW_SHIFT) & CW_RW_MASK;
        if rw == RW_LATCH {
            ch.latch_count(now);
        } else {
            ch.write_control(rw, (value >> CW_MODE_SHIFT) & CW_MODE_MASK, value & CW_BCD != 0);
        }
    }

    /// Reads port 0x61. Bit 4 toggles on every read, as the refresh
    /// request line seen by software that waits for it does.
    pub fn read_port_b(&mut self) -> u8 {
        let now = self.clock.now_ns();
        self.refresh = !self.refresh;
        let refresh = if self.refresh { PORT_B_REFRESH } else { 0 };
        let out2 = if self.channels[2].out(now) { PORT_B_OUT2 } else { 0 };
        self.port_b | refresh | out2
    }

    /// Writes port 0x61: counter 2's gate, the speaker and the check enables.
    pub fn write_port_b(&mut self, value: u8) {
        let now = self.clock.now_ns();
        let old = self.port_b;
        self.port_b = value & PORT_B_WRITABLE;
        self.channels[2].set_gate(value & PORT_B_GATE2 != 0, now);
        if (old ^ self.port_b) & PORT_B_SPEAKER_DATA != 0 {
            tracing::trace!(target: "devices", on = self.port_b & PORT_B_SPEAKER_DATA != 0, "PC speaker");
        }
    }

    fn log_unimplemented(&self, offset: u64) {
        if self.log.first(Misuse::Unimplemented) {
            tracing::warn!(target: "devices", offset, "8254: no register there; access ignored (logged once)");
        }
    }

    fn log_access_size(&self, offset: u64, size: usize) {
        if self.log.first(Misuse::AccessSize) {
            tracing::warn!(target: "devices", offset, size, "8254: registers are one byte wide; access ignored (logged once)");
        }
    }
}

/// The part name the PIT's errors carry.
const PART: &str = "8254 PIT";

impl PitChannelState {
    /// Checks one counter's state: a mode of 0-5, an RW field of 1-3, a
    /// reload value of 1-65536, a frozen count only on a
    /// counter that was started, and byte flip-flops only in LSB-then-MSB
    /// access.
    fn check(&self) -> Result<(), PersistError> {
        PersistError::check_max(PART, "mode", self.mode, 5)?;
        PersistError::check((RW_LSB..=RW_WORD).contains(&self.rw), PART, "rw", || {
            format!("is {}; the access mode is 1 (LSB), 2 (MSB) or 3 (LSB then MSB)", self.rw)
        })?;
        // A control word may switch to BCD with a binary count loaded, so
        // the bound is the binary modulus in either mode.
        PersistError::check((1..=BINARY_MODULUS).contains(&self.reload), PART, "reload", || {
            format!("is {}, outside 1..={BINARY_MODULUS}", self.reload)
        })?;
        PersistError::check(self.paused_ticks.is_none() || self.start_ns.is_some(), PART, "paused_ticks", || {
            "is set on a counter that never started".to_string()
        })?;
        PersistError::check(self.rw == RW_WORD || !(self.read_msb_next || self.write_msb_next), PART, "rw", || {
            format!("is {} while a byte of a two-byte access is pending", self.rw)
        })
    }
}

/// Restore checks each counter (see [`PitChannelState`]'s fields), the
/// gates (counters 0 and 1 have theirs tied high, counter 2's is port
/// 0x61 bit 0) and port 0x61's writable bits. Deadlines and counts are
/// computed from the restored times; IRQ0 is edge-only, so no line level
/// is left to drive.
impl Persist for Pit {
    type State = PitState;

    fn save(&self) -> PitState {
        PitState {
            channels: [self.channels[0].s, self.channels[1].s, self.channels[2].s],
            port_b: self.port_b,
            refresh: self.refresh,
        }
    }

    fn restore(&mut self, state: &PitState) -> Result<(), PersistError> {
        Self::check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

impl Pit {
    /// The checks of [`Persist::restore`], changing nothing.
    pub(crate) fn check_state(state: &PitState) -> Result<(), PersistError> {
        for ch in &state.channels {
            ch.check()?;
        }
        PersistError::check(state.port_b & !PORT_B_WRITABLE == 0, PART, "port_b", || {
            format!("is {:#04x}; only bits 3:0 of port 0x61 are kept", state.port_b)
        })?;
        let [c0, c1, c2] = &state.channels;
        PersistError::check(c0.gate && c1.gate, PART, "gate", || {
            "of counter 0 or 1 is low; both are tied high".into()
        })?;
        PersistError::check(c2.gate == (state.port_b & PORT_B_GATE2 != 0), PART, "gate", || {
            "of counter 2 differs from port 0x61 bit 0".into()
        })
    }

    /// Loads a state [`Pit::check_state`] passed.
    pub(crate) fn load_state(&mut self, state: &PitState) {
        for (ch, s) in self.channels.iter_mut().zip(state.channels) {
            ch.s = s;
        }
        self.port_b = state.port_b;
        self.refresh = state.refresh;
    }
}

impl Timed for Pit {
    fn next_deadline_ns(&self) -> Option<u64> {
        let ch = &self.channels[0];
        let tick = ch.next_rising_edge()?;
        let start = ch.s.start_ns?;
        Some(start.saturating_add(ns_for_ticks(tick, PIT_HZ)))
    }

    fn tick(&mut self, now_ns: u64) {
        let ch = &mut self.channels[0];
        let (Some(edge), Some(elapsed)) = (ch.next_rising_edge(), ch.elapsed(now_ns)) else {
            return;
        };
        if edge <= elapsed {
            let behind = elapsed - edge;
            // A periodic counter's late edges are raised one per poll, in
            // order, so that a guest counting ticks (jiffies) does not fall
            // behind real time when the host was slow to run it; past a
            // second's worth of ticks the backlog is dropped.
            ch.s.irq_done_ticks = if matches!(ch.s.mode, 2 | 3) && behind < PIT_HZ { edge } else { elapsed };
            self.irq.pulse();
        }
    }
}

impl BusDevice for Pit {
    fn debug_label(&self) -> String {
        "8254 PIT".to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [byte] = data else {
            self.log_access_size(offset, data.len());
            data.fill(0xff);
            return;
        };
        *byte = match offset {
            0..=2 => self.read_counter(offset as usize),
            PORT_B_OFFSET => self.read_port_b(),
            // The control word register cannot be read.
            CONTROL_OFFSET => 0xff,
            _ => {
                self.log_unimplemented(offset);
                0xff
            }
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[value] = data else {
            self.log_access_size(offset, data.len());
            return;
        };
        match offset {
            0..=2 => self.write_counter(offset as usize, value),
            CONTROL_OFFSET => self.write_control(value),
            PORT_B_OFFSET => self.write_port_b(value),
            _ => self.log_unimplemented(offset),
        }
    }
}

#[cfg(test)]
mod tests;
