//! The PS/2 mouse on the i8042's auxiliary port.
//!
//! References: IBM "Personal System/2 Hardware Interface Technical
//! Reference", "Pointing Device" (commands E6h-FFh, the status bytes, the
//! 3-byte data packet, stream and remote modes, wrap mode); the Microsoft
//! IntelliMouse extensions (device ID 3 with a wheel byte, ID 4 with a
//! wheel and buttons 4 and 5); Linux's drivers/input/mouse/psmouse-base.c
//! for the probing sequence (reset, get ID, the sample-rate knocks
//! 200,100,80 and 200,200,80, resolution, scaling, enable).
//!
//! ```text
//! packet byte 0   7 Y overflow | 6 X overflow | 5 Y sign | 4 X sign | 3 always 1 |
//!                 2 middle | 1 right | 0 left
//!        byte 1   X movement (low 8 bits of a 9-bit two's complement value)
//!        byte 2   Y movement (likewise; positive is up)
//!        byte 3   ID 3: Z movement (-8..7, positive toward the user)
//!                 ID 4: 5 button 5 | 4 button 4 | 3-0 Z movement
//! status byte 0   6 remote mode | 5 reporting on | 4 scaling 2:1 |
//!                 2 left | 1 middle | 0 right
//! ```
//!
//! Model choices:
//! - Host motion waits in a short queue of pending movements, one per
//!   button state: movement with unchanged buttons adds up in the last one,
//!   and a full queue folds new input into its last entry instead of
//!   growing. Each movement is clamped to ±[`MOTION_MAX`] counts.
//! - In stream mode a movement larger than one packet can carry is split
//!   over several packets (±255 counts, ±127 before 2:1 scaling), so the
//!   overflow bits are never set there; the remote-mode read (EBh) reports
//!   everything pending in one packet, clamped, with the overflow bits.
//! - A packet once started is sent to its end: a command's answer comes
//!   after it, never inside it.
//! - Sample rates other than 10, 20, 40, 60, 80, 100 and 200, and
//!   resolutions above 3, are refused with FEh and the command is dropped.
//! - Resend (FEh) repeats the last byte sent, not the whole last packet.

use persist::PersistError;

// Mouse commands.
const SET_SCALING_1_1: u8 = 0xe6;
const SET_SCALING_2_1: u8 = 0xe7;
const SET_RESOLUTION: u8 = 0xe8;
const STATUS_REQUEST: u8 = 0xe9;
const SET_STREAM: u8 = 0xea;
const READ_DATA: u8 = 0xeb;
const RESET_WRAP: u8 = 0xec;
const SET_WRAP: u8 = 0xee;
const SET_REMOTE: u8 = 0xf0;
const GET_ID: u8 = 0xf2;
const SET_SAMPLE_RATE: u8 = 0xf3;
const ENABLE: u8 = 0xf4;
const DISABLE: u8 = 0xf5;
const SET_DEFAULTS: u8 = 0xf6;
const RESEND: u8 = 0xfe;
const RESET: u8 = 0xff;

// Answers.
/// Acknowledge.
pub(super) const ACK: u8 = 0xfa;
/// Resend: the byte was not understood.
pub(super) const NAK: u8 = 0xfe;
/// Basic assurance test passed.
pub(super) const BAT_OK: u8 = 0xaa;

/// A standard PS/2 mouse.
pub const ID_STANDARD: u8 = 0;
/// An IntelliMouse: a wheel, 4-byte packets.
pub const ID_WHEEL: u8 = 3;
/// An IntelliMouse Explorer: a wheel and buttons 4 and 5.
pub const ID_FIVE_BUTTONS: u8 = 4;

/// The sample rates the mouse takes (reports per second).
const SAMPLE_RATES: [u8; 7] = [10, 20, 40, 60, 80, 100, 200];
const DEFAULT_SAMPLE_RATE: u8 = 100;
/// 4 counts per millimetre.
const DEFAULT_RESOLUTION: u8 = 2;
const MAX_RESOLUTION: u8 = 3;
/// The sample-rate sequence that turns a standard mouse into ID 3.
const KNOCK_WHEEL: [u8; 3] = [200, 100, 80];
/// The sequence that turns an ID 3 mouse into ID 4.
const KNOCK_FIVE_BUTTONS: [u8; 3] = [200, 200, 80];

/// Buttons the host can report: left, right, middle, 4, 5.
pub const BUTTONS_MASK: u8 = 0b1_1111;
/// Answer bytes the mouse holds.
pub const REPLY_LEN: usize = 16;
/// Pending movements the mouse holds.
pub const PENDING_LEN: usize = 8;
/// The largest pending X or Y movement, in counts.
pub const MOTION_MAX: i32 = 4096;
/// The largest pending wheel movement.
pub const WHEEL_MAX: i32 = 256;
/// The longest packet (ID 3 and 4).
const PACKET_MAX: usize = 4;
/// A packet's X and Y range (9-bit two's complement).
const DELTA_MIN: i32 = -256;
const DELTA_MAX: i32 = 255;
/// The range of one stream packet's X and Y before 2:1 scaling doubles it.
const SCALED_MIN: i32 = -128;
const SCALED_MAX: i32 = 127;
/// A packet's wheel range.
const WHEEL_MIN_PACKET: i32 = -8;
const WHEEL_MAX_PACKET: i32 = 7;

// Packet byte 0.
const PACKET_ALWAYS_ONE: u8 = 0b0000_1000;
const PACKET_X_SIGN: u8 = 0b0001_0000;
const PACKET_Y_SIGN: u8 = 0b0010_0000;
const PACKET_X_OVERFLOW: u8 = 0b0100_0000;
const PACKET_Y_OVERFLOW: u8 = 0b1000_0000;
/// Left, right and middle, as byte 0 and the host API number them.
const PACKET_BUTTONS: u8 = 0b0000_0111;

// Status byte 0.
const STATUS_REMOTE: u8 = 0b0100_0000;
const STATUS_REPORTING: u8 = 0b0010_0000;
const STATUS_SCALING: u8 = 0b0001_0000;

/// The mouse's reporting mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum MouseMode {
    /// Packets are sent as the mouse moves (EAh, the default).
    Stream,
    /// Packets are sent when read (F0h, then EBh).
    Remote,
}

/// A mouse command waiting for its parameter byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum MouseParam {
    /// Set sample rate (F3h).
    SampleRate,
    /// Set resolution (E8h).
    Resolution,
}

/// Movement the host reported and the mouse has not sent yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MouseMotion {
    /// X counts, positive to the right.
    pub dx: i32,
    /// Y counts as the packet has them: positive is up.
    pub dy: i32,
    /// Wheel counts, positive toward the user.
    pub dz: i32,
    /// The buttons held during this movement ([`BUTTONS_MASK`]).
    pub buttons: u8,
}

/// The PS/2 mouse, which is also its saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MouseState {
    /// Stream or remote mode.
    pub mode: MouseMode,
    /// Wrap (echo) mode (EEh, left by ECh).
    pub wrap: bool,
    /// Data reporting on (F4h/F5h).
    pub reporting: bool,
    /// Sample rate, one of 10, 20, 40, 60, 80, 100, 200.
    pub sample_rate: u8,
    /// Resolution, 0-3 (1, 2, 4, 8 counts/mm).
    pub resolution: u8,
    /// Scaling 2:1 (E7h) rather than 1:1 (E6h).
    pub scaling_2to1: bool,
    /// The device ID: 0, 3 or 4.
    pub id: u8,
    /// The last three sample rates set, oldest first, 0 for none: the
    /// progress of the IntelliMouse knocks.
    pub recent_rates: [u8; 3],
    /// A command waiting for its parameter.
    pub param: Option<MouseParam>,
    /// The buttons the host holds now.
    pub buttons: u8,
    /// Movements not sent yet, oldest first.
    pub pending: Vec<MouseMotion>,
    /// The rest of the packet being sent.
    pub sending: Vec<u8>,
    /// Answers to commands, oldest first.
    pub reply: Vec<u8>,
    /// The last byte sent (for resend).
    pub last: u8,
}

impl Default for MouseState {
    fn default() -> Self {
        Self::new()
    }
}

impl MouseState {
    /// A mouse as after power-on: stream mode, reporting off, ID 0.
    pub fn new() -> Self {
        Self {
            mode: MouseMode::Stream,
            wrap: false,
            reporting: false,
            sample_rate: DEFAULT_SAMPLE_RATE,
            resolution: DEFAULT_RESOLUTION,
            scaling_2to1: false,
            id: ID_STANDARD,
            recent_rates: [0; 3],
            param: None,
            buttons: 0,
            pending: Vec::new(),
            sending: Vec::new(),
            reply: Vec::new(),
            last: 0,
        }
    }

    /// Queues an answer, all of it or (when it does not fit) none of it.
    /// False when it was dropped.
    fn answer(&mut self, bytes: &[u8]) -> bool {
        if self.reply.len() + bytes.len() > REPLY_LEN {
            return false;
        }
        self.reply.extend_from_slice(bytes);
        true
    }

    /// The settings F6h and FFh restore.
    fn set_defaults(&mut self) {
        self.mode = MouseMode::Stream;
        self.wrap = false;
        self.reporting = false;
        self.sample_rate = DEFAULT_SAMPLE_RATE;
        self.resolution = DEFAULT_RESOLUTION;
        self.scaling_2to1 = false;
        self.param = None;
        self.pending.clear();
    }

    /// Takes a byte from the host (D4h). False when its answer was dropped
    /// because the answer queue was full.
    pub(super) fn write(&mut self, byte: u8) -> bool {
        if let Some(param) = self.param.take() {
            return match param {
                MouseParam::SampleRate if SAMPLE_RATES.contains(&byte) => {
                    self.sample_rate = byte;
                    self.recent_rates = [self.recent_rates[1], self.recent_rates[2], byte];
                    if self.recent_rates == KNOCK_WHEEL && self.id == ID_STANDARD {
                        self.id = ID_WHEEL;
                    } else if self.recent_rates == KNOCK_FIVE_BUTTONS && self.id == ID_WHEEL {
                        self.id = ID_FIVE_BUTTONS;
                    }
                    self.answer(&[ACK])
                }
                MouseParam::Resolution if byte <= MAX_RESOLUTION => {
                    self.resolution = byte;
                    self.answer(&[ACK])
                }
                MouseParam::SampleRate | MouseParam::Resolution => self.answer(&[NAK]),
            };
        }
        if self.wrap {
            return match byte {
                RESET_WRAP => {
                    self.wrap = false;
                    self.answer(&[ACK])
                }
                RESET => self.reset(),
                _ => self.answer(&[byte]),
            };
        }
        match byte {
            SET_SCALING_1_1 | SET_SCALING_2_1 => {
                self.scaling_2to1 = byte == SET_SCALING_2_1;
                self.answer(&[ACK])
            }
            SET_RESOLUTION => {
                self.param = Some(MouseParam::Resolution);
                self.answer(&[ACK])
            }
            STATUS_REQUEST => {
                let status = self.status_byte();
                self.answer(&[ACK, status, self.resolution, self.sample_rate])
            }
            SET_STREAM | SET_REMOTE => {
                self.mode = if byte == SET_STREAM { MouseMode::Stream } else { MouseMode::Remote };
                self.pending.clear();
                self.answer(&[ACK])
            }
            READ_DATA => {
                let mut bytes = [0u8; 1 + PACKET_MAX];
                bytes[0] = ACK;
                let len = self.read_data_packet(&mut bytes[1..]);
                self.answer(&bytes[..=len])
            }
            RESET_WRAP => self.answer(&[ACK]),
            SET_WRAP => {
                self.wrap = true;
                self.answer(&[ACK])
            }
            GET_ID => self.answer(&[ACK, self.id]),
            SET_SAMPLE_RATE => {
                self.param = Some(MouseParam::SampleRate);
                self.answer(&[ACK])
            }
            ENABLE | DISABLE => {
                self.reporting = byte == ENABLE;
                self.pending.clear();
                self.answer(&[ACK])
            }
            SET_DEFAULTS => {
                self.set_defaults();
                self.answer(&[ACK])
            }
            RESEND => self.answer(&[self.last]),
            RESET => self.reset(),
            _ => self.answer(&[NAK]),
        }
    }

    /// FFh: defaults, ID 0, answers dropped, then FAh AAh 00h.
    fn reset(&mut self) -> bool {
        self.set_defaults();
        self.id = ID_STANDARD;
        self.recent_rates = [0; 3];
        self.reply.clear();
        self.answer(&[ACK, BAT_OK, ID_STANDARD])
    }

    fn status_byte(&self) -> u8 {
        let mut s = 0;
        if self.mode == MouseMode::Remote {
            s |= STATUS_REMOTE;
        }
        if self.reporting {
            s |= STATUS_REPORTING;
        }
        if self.scaling_2to1 {
            s |= STATUS_SCALING;
        }
        // Left, middle, right in bits 2, 1, 0.
        let b = self.buttons;
        s | ((b & 1) << 2) | (((b >> 2) & 1) << 1) | ((b >> 1) & 1)
    }

    /// The next byte the mouse sends: the rest of a packet under way, else
    /// an answer, else (reporting in stream mode) a new packet.
    pub(super) fn transmit(&mut self) -> Option<u8> {
        let byte = if !self.sending.is_empty() {
            self.sending.remove(0)
        } else if !self.reply.is_empty() {
            self.reply.remove(0)
        } else if self.streaming() && !self.pending.is_empty() {
            let mut packet = [0u8; PACKET_MAX];
            let len = self.stream_packet(&mut packet);
            self.sending.extend_from_slice(&packet[1..len]);
            packet[0]
        } else {
            return None;
        };
        self.last = byte;
        Some(byte)
    }

    fn streaming(&self) -> bool {
        self.mode == MouseMode::Stream && self.reporting && !self.wrap
    }

    /// Takes host input: movement (`dy` already in the packet's sense, up
    /// positive) and the buttons held now.
    pub(super) fn event(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        let buttons = buttons & BUTTONS_MASK;
        let changed = buttons != self.buttons;
        self.buttons = buttons;
        let recording = match self.mode {
            MouseMode::Stream => self.streaming(),
            MouseMode::Remote => !self.wrap,
        };
        let dz = if self.id == ID_STANDARD { 0 } else { dz };
        if !recording || (dx == 0 && dy == 0 && dz == 0 && !changed) {
            return;
        }
        let fold = match self.pending.last() {
            Some(last) => {
                last.buttons == buttons || self.pending.len() >= PENDING_LEN || self.mode == MouseMode::Remote
            }
            None => false,
        };
        let (dx, dy, dz) = (clamp(dx, MOTION_MAX), clamp(dy, MOTION_MAX), clamp(dz, WHEEL_MAX));
        match self.pending.last_mut() {
            Some(last) if fold => {
                last.dx = clamp(last.dx.saturating_add(dx), MOTION_MAX);
                last.dy = clamp(last.dy.saturating_add(dy), MOTION_MAX);
                last.dz = clamp(last.dz.saturating_add(dz), WHEEL_MAX);
                last.buttons = buttons;
            }
            _ => self.pending.push(MouseMotion { dx, dy, dz, buttons }),
        }
    }

    /// Builds the next stream packet from the oldest pending movement,
    /// leaving what does not fit for the next one. Returns its length.
    fn stream_packet(&mut self, out: &mut [u8; PACKET_MAX]) -> usize {
        let Some(m) = self.pending.first_mut() else {
            return 0;
        };
        let (lo, hi) = if self.scaling_2to1 { (SCALED_MIN, SCALED_MAX) } else { (DELTA_MIN, DELTA_MAX) };
        let x = m.dx.clamp(lo, hi);
        let y = m.dy.clamp(lo, hi);
        let z = m.dz.clamp(WHEEL_MIN_PACKET, WHEEL_MAX_PACKET);
        m.dx -= x;
        m.dy -= y;
        m.dz -= z;
        let buttons = m.buttons;
        if m.dx == 0 && m.dy == 0 && m.dz == 0 {
            self.pending.remove(0);
        }
        let (x, y) = if self.scaling_2to1 { (scale_2to1(x), scale_2to1(y)) } else { (x, y) };
        self.encode(out, x, y, z, buttons)
    }

    /// EBh: everything pending in one packet, with the buttons held now.
    fn read_data_packet(&mut self, out: &mut [u8]) -> usize {
        let (mut x, mut y, mut z) = (0i32, 0i32, 0i32);
        for m in self.pending.drain(..) {
            x = x.saturating_add(m.dx);
            y = y.saturating_add(m.dy);
            z = z.saturating_add(m.dz);
        }
        let mut packet = [0u8; PACKET_MAX];
        let len = self.encode(&mut packet, x, y, z.clamp(WHEEL_MIN_PACKET, WHEEL_MAX_PACKET), self.buttons);
        out[..len].copy_from_slice(&packet[..len]);
        len
    }

    /// Encodes a packet, clamping X and Y with the overflow bits.
    fn encode(&self, out: &mut [u8; PACKET_MAX], x: i32, y: i32, z: i32, buttons: u8) -> usize {
        let mut b0 = PACKET_ALWAYS_ONE | (buttons & PACKET_BUTTONS);
        if !(DELTA_MIN..=DELTA_MAX).contains(&x) {
            b0 |= PACKET_X_OVERFLOW;
        }
        if !(DELTA_MIN..=DELTA_MAX).contains(&y) {
            b0 |= PACKET_Y_OVERFLOW;
        }
        let x = x.clamp(DELTA_MIN, DELTA_MAX);
        let y = y.clamp(DELTA_MIN, DELTA_MAX);
        if x < 0 {
            b0 |= PACKET_X_SIGN;
        }
        if y < 0 {
            b0 |= PACKET_Y_SIGN;
        }
        out[0] = b0;
        out[1] = low_byte(x);
        out[2] = low_byte(y);
        match self.id {
            ID_WHEEL => {
                out[3] = low_byte(z);
                4
            }
            ID_FIVE_BUTTONS => {
                out[3] = (low_byte(z) & 0x0f) | (((buttons >> 3) & 0b11) << 4);
                4
            }
            _ => 3,
        }
    }

    /// The checks of a restore.
    pub(super) fn check(&self, part: &'static str) -> Result<(), PersistError> {
        PersistError::check(SAMPLE_RATES.contains(&self.sample_rate), part, "mouse.sample_rate", || {
            format!("is {}; the mouse samples at {SAMPLE_RATES:?} per second", self.sample_rate)
        })?;
        PersistError::check_max(part, "mouse.resolution", self.resolution, MAX_RESOLUTION)?;
        PersistError::check([ID_STANDARD, ID_WHEEL, ID_FIVE_BUTTONS].contains(&self.id), part, "mouse.id", || {
            format!("is {}; the mouse has IDs 0, 3 and 4", self.id)
        })?;
        PersistError::check(
            self.recent_rates.iter().all(|r| *r == 0 || SAMPLE_RATES.contains(r)),
            part,
            "mouse.recent_rates",
            || format!("are {:?}; each is 0 or a sample rate", self.recent_rates),
        )?;
        PersistError::check_max(part, "mouse.buttons", self.buttons, BUTTONS_MASK)?;
        PersistError::check_max(part, "mouse.pending", self.pending.len(), PENDING_LEN)?;
        for m in &self.pending {
            PersistError::check(
                m.dx.abs() <= MOTION_MAX
                    && m.dy.abs() <= MOTION_MAX
                    && m.dz.abs() <= WHEEL_MAX
                    && m.buttons <= BUTTONS_MASK,
                part,
                "mouse.pending",
                || format!("holds {m:?}; movements are within ±{MOTION_MAX} (wheel ±{WHEEL_MAX})"),
            )?;
        }
        PersistError::check_max(part, "mouse.sending", self.sending.len(), PACKET_MAX - 1)?;
        PersistError::check_max(part, "mouse.reply", self.reply.len(), REPLY_LEN)
    }
}

/// Clamps `v` to ±`max`.
fn clamp(v: i32, max: i32) -> i32 {
    v.clamp(-max, max)
}

/// The low 8 bits of a two's complement value.
fn low_byte(v: i32) -> u8 {
    v.to_le_bytes()[0]
}

/// 2:1 scaling: 1, 2, 3, 4, 5 counts report as 1, 1, 3, 6, 9; more doubles.
fn scale_2to1(v: i32) -> i32 {
    let m = match v.unsigned_abs() {
        0 => 0,
        1 | 2 => 1,
        3 => 3,
        4 => 6,
        5 => 9,
        n => 2 * n as i32,
    };
    if v < 0 {
        -m
    } else {
        m
    }
}
