//! The USB HID devices behind the root hub: QEMU's `usb-tablet`,
//! `usb-mouse` and `usb-kbd`, as a full-speed device each with a control endpoint 0 and an
//! interrupt IN endpoint 1.
//!
//! References: USB 1.1 specification chapter 9 (the standard requests, 9.4;
//! the descriptors, 9.6; control transfer stages, 8.5.2), HID 1.11 (the
//! class requests, 7.2; the boot protocol and the boot keyboard report,
//! appendix B; the HID descriptor, 6.2.1), HID Usage Tables 1.12 chapter 10
//! (keyboard usages). The descriptors and strings are QEMU's
//! (hw/usb/dev-hid.c), so a guest sees the same devices as under QEMU.
//!
//! ```text
//! device        vendor 0627h, product 0001h, USB 1.0, ep0 max packet 8
//! strings       1 "QEMU", 2 "QEMU USB Tablet" / "QEMU USB Mouse" / "QEMU USB Keyboard",
//!               3 "42", 4 "HID Tablet" / "HID Mouse" / "HID Keyboard"
//! configuration 1, bus powered, remote wakeup, 100 mA
//! interface 0   HID; tablet: subclass 0, protocol 2; mouse: boot (1), 2;
//!               keyboard: boot (1), 1
//! endpoint 81h  interrupt IN, 8 bytes (the mouse: 4), interval 10 ms
//! tablet report   buttons (3 bits) | X (16, 0..7FFFh) | Y (16) | wheel (8, signed)
//! mouse report    buttons (5 bits) | dX (8, signed) | dY (8) | wheel (8)
//! keyboard report modifiers | reserved | 6 key usages; output: 5 LED bits
//! ```
//!
//! Model choices:
//! - Reports queue (at most [`MAX_QUEUED`]) so that a press and a release
//!   between two polls both reach the guest; pointer motion with the same
//!   buttons coalesces into the last queued report. An empty queue NAKs
//!   the interrupt endpoint unless an idle rate (SET_IDLE) asks for a
//!   repeat of the current report.
//! - The mouse's motion is relative: a move adds into the last queued
//!   report while its buttons are the same and each count stays within
//!   -127..127 (HID's range for the report), else it goes on in new
//!   reports; motion beyond what [`MAX_QUEUED`] reports hold is dropped.
//!   Its boot and report protocols share the report layout, as QEMU's do.
//! - The keyboard's boot and report protocols share one report layout (the
//!   report descriptor is the boot layout), so GET/SET_PROTOCOL only
//!   record the value.
//! - Data toggles are not checked: a transaction is taken whatever its
//!   toggle, as QEMU's devices take them.

use std::collections::VecDeque;

/// Reports waiting for the interrupt endpoint at most.
pub const MAX_QUEUED: usize = 16;
/// Control data a SETUP may send (SET_REPORT's) at most; more is stalled.
pub const MAX_CONTROL_OUT: usize = 64;
/// Control data an IN request answers with at most (the longest descriptor).
pub const MAX_CONTROL_IN: usize = 256;
/// Non-modifier keys the keyboard tracks as held at most.
pub const MAX_HELD_KEYS: usize = 32;
/// Bytes of endpoint 0's packets.
const EP0_MAX_PACKET: usize = 8;

/// Which device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum UsbDeviceKind {
    /// QEMU's `usb-tablet`: absolute pointer.
    Tablet,
    /// QEMU's `usb-kbd`: boot keyboard.
    Keyboard,
    /// QEMU's `usb-mouse`: boot mouse, relative.
    Mouse,
}

/// A token's packet identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pid {
    Setup,
    In,
    Out,
}

/// A device's answer to a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// The transaction succeeded: IN data (empty for OUT and SETUP).
    Ack(Vec<u8>),
    /// Nothing to send now.
    Nak,
    /// The endpoint refuses the request.
    Stall,
}

/// Where endpoint 0's control transfer stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ControlStage {
    /// Waiting for a SETUP.
    #[default]
    Idle,
    /// Sending the answer of an IN request; `pos` bytes of `data` went.
    DataIn {
        /// The answer, cut to wLength.
        data: Vec<u8>,
        /// Bytes sent.
        pos: u32,
    },
    /// Collecting the data of an OUT request.
    DataOut {
        /// The SETUP packet.
        setup: [u8; 8],
        /// Data received so far.
        data: Vec<u8>,
    },
    /// The status stage of an OUT request: an IN of no data; a SET_ADDRESS
    /// takes its address there (0xFF: none).
    StatusIn {
        /// The address SET_ADDRESS asked for, or 0xFF.
        address: u8,
    },
    /// The request stalled; endpoint 0 stalls until the next SETUP.
    Stalled,
}

/// The saved state of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HidState {
    /// Which device; a restore needs the same at the port.
    pub kind: UsbDeviceKind,
    /// The USB address (0-127).
    pub address: u8,
    /// The configuration value (0 or 1).
    pub configuration: u8,
    /// Remote wakeup enabled (SET_FEATURE DEVICE_REMOTE_WAKEUP).
    pub remote_wakeup: bool,
    /// Endpoint 1 halted (SET_FEATURE ENDPOINT_HALT).
    pub halted: bool,
    /// HID protocol: 0 boot, 1 report.
    pub protocol: u8,
    /// Idle rate in 4 ms units (0: report only on change).
    pub idle: u8,
    /// The frame count at the last report sent.
    pub last_report_frame: u64,
    /// Endpoint 0.
    pub control: ControlStage,
    /// Reports waiting for the interrupt endpoint.
    pub queue: Vec<Vec<u8>>,
    /// The current report (the state as it is now).
    pub current: Vec<u8>,
    /// Keyboard: the held non-modifier keys, in press order.
    pub held: Vec<u8>,
    /// Keyboard: the LEDs the guest set.
    pub leds: u8,
}

/// A HID device: the tablet or the keyboard.
#[derive(Debug, Clone)]
pub(crate) struct HidDevice {
    pub(crate) kind: UsbDeviceKind,
    pub(crate) address: u8,
    configuration: u8,
    pub(crate) remote_wakeup: bool,
    halted: bool,
    protocol: u8,
    idle: u8,
    last_report_frame: u64,
    control: ControlStage,
    queue: VecDeque<Vec<u8>>,
    current: Vec<u8>,
    held: Vec<u8>,
    leds: u8,
    /// Requests logged once (by bmRequestType and bRequest).
    logged: Vec<(u8, u8)>,
}

impl HidDevice {
    pub(crate) fn new(kind: UsbDeviceKind) -> Self {
        let current = vec![0; report_len(kind)];
        Self {
            kind,
            address: 0,
            configuration: 0,
            remote_wakeup: false,
            halted: false,
            protocol: 1,
            idle: 0,
            last_report_frame: 0,
            control: ControlStage::Idle,
            queue: VecDeque::new(),
            current,
            held: Vec::new(),
            leds: 0,
            logged: Vec::new(),
        }
    }

    /// A USB bus reset: the default address, unconfigured, no transfer,
    /// nothing queued. What the host holds (keys, the pointer) stays.
    pub(crate) fn bus_reset(&mut self) {
        self.address = 0;
        self.configuration = 0;
        self.remote_wakeup = false;
        self.halted = false;
        self.protocol = 1;
        self.idle = 0;
        self.control = ControlStage::Idle;
        self.queue.clear();
    }

    /// The LEDs the guest set (keyboard): bit 0 Num Lock, 1 Caps Lock,
    /// 2 Scroll Lock, 3 Compose, 4 Kana.
    pub(crate) fn leds(&self) -> u8 {
        self.leds
    }

    /// Queues `report` as the new current state.
    fn push_report(&mut self, report: Vec<u8>, coalesce: bool) {
        let last = self.queue.back().unwrap_or(&self.current);
        if *last == report && !(self.kind == UsbDeviceKind::Tablet && report[5] != 0) {
            self.current = report;
            return;
        }
        let full = self.queue.len() >= MAX_QUEUED;
        match self.queue.back_mut() {
            Some(back) if coalesce || full => *back = report.clone(),
            _ => self.queue.push_back(report.clone()),
        }
        self.current = report;
        if self.kind == UsbDeviceKind::Tablet {
            // The wheel is relative: it counts in the queued report only.
            self.current[5] = 0;
        }
    }

    /// A pointer event (tablet): `x`, `y` in 0..=0x7FFF, buttons bit 0
    /// left, 1 right, 2 middle; `dz` > 0 turns the wheel away from the user.
    pub(crate) fn pointer(&mut self, x: u16, y: u16, buttons: u8, dz: i32) {
        if self.kind != UsbDeviceKind::Tablet {
            return;
        }
        let buttons = buttons & 7;
        let [xl, xh] = x.to_le_bytes();
        let [yl, yh] = y.to_le_bytes();
        let back_dz = self.queue.back().map_or(0, |b| i32::from(b[5] as i8));
        let same_buttons = self.queue.back().is_some_and(|b| b[0] == buttons);
        // Motion coalesces into a queued report with the same buttons, the
        // wheel movements adding up.
        let coalesce = same_buttons;
        let total_dz = if coalesce { back_dz.saturating_add(dz) } else { dz };
        let wheel = total_dz.clamp(-127, 127) as i8 as u8;
        self.push_report(vec![buttons, xl, xh, yl, yh, wheel], coalesce);
    }

    /// Relative motion (mouse): `dx` right, `dy` down, `dz` > 0 turns the
    /// wheel away from the user; buttons bit 0 left, 1 right, 2 middle,
    /// 3 side, 4 extra.
    pub(crate) fn motion(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        if self.kind != UsbDeviceKind::Mouse {
            return;
        }
        let buttons = buttons & 0x1f;
        if self.queue.back().map_or(self.current[0], |b| b[0]) != buttons {
            let full = self.queue.len() >= MAX_QUEUED;
            match self.queue.back_mut() {
                // A full queue: the change of buttons still reaches the
                // guest, with the motion of the last report.
                Some(back) if full => back[0] = buttons,
                _ => self.queue.push_back(vec![buttons, 0, 0, 0]),
            }
        }
        self.current[0] = buttons;
        let mut want = [dx, dy, dz];
        let room = |have: u8, want: i32| {
            let have = have as i8;
            want == 0 || (want > 0 && have < 127) || (want < 0 && have > -127)
        };
        while want != [0; 3] {
            let mergeable =
                self.queue.back().is_some_and(|b| b[0] == buttons && (0..3).all(|i| room(b[i + 1], want[i])));
            if !mergeable {
                if self.queue.len() >= MAX_QUEUED {
                    // The rest of the motion does not fit: dropped.
                    break;
                }
                self.queue.push_back(vec![buttons, 0, 0, 0]);
            }
            let Some(back) = self.queue.back_mut() else { break };
            for (i, w) in want.iter_mut().enumerate() {
                let have = i32::from(back[i + 1] as i8);
                let total = have.saturating_add(*w).clamp(-127, 127);
                *w -= total - have;
                back[i + 1] = total as i8 as u8;
            }
        }
    }

    /// A key event (keyboard) as a HID usage: a modifier (E0h-E7h) or a key.
    pub(crate) fn key(&mut self, usage: u8, down: bool) {
        if self.kind != UsbDeviceKind::Keyboard || usage == 0 {
            return;
        }
        let mut modifiers = self.current[0];
        if (0xe0..=0xe7).contains(&usage) {
            let bit = 1 << (usage - 0xe0);
            if down {
                modifiers |= bit;
            } else {
                modifiers &= !bit;
            }
        } else if down {
            if !self.held.contains(&usage) && self.held.len() < MAX_HELD_KEYS {
                self.held.push(usage);
            }
        } else {
            self.held.retain(|&k| k != usage);
        }
        let mut report = vec![modifiers, 0, 0, 0, 0, 0, 0, 0];
        if self.held.len() > 6 {
            // Boot keyboard phantom state: ErrorRollOver in every slot.
            report[2..].fill(0x01);
        } else {
            report[2..2 + self.held.len()].copy_from_slice(&self.held);
        }
        self.push_report(report, false);
    }

    /// Whether a device in suspend should signal resume: it has input and
    /// the guest allowed remote wakeup.
    pub(crate) fn wants_wakeup(&self) -> bool {
        self.remote_wakeup && !self.queue.is_empty()
    }

    /// One transaction to endpoint `ep`. `data` is the OUT or SETUP data;
    /// `max_in` is the most an IN may return; `frame` counts frames, for
    /// the idle rate.
    pub(crate) fn token(&mut self, pid: Pid, ep: u8, data: &[u8], max_in: usize, frame: u64) -> Handshake {
        match (ep, pid) {
            (0, Pid::Setup) => self.setup(data),
            (0, Pid::In) => self.control_in(max_in),
            (0, Pid::Out) => self.control_out(data),
            (1, Pid::In) => self.interrupt_in(frame),
            _ => Handshake::Stall,
        }
    }

    fn interrupt_in(&mut self, frame: u64) -> Handshake {
        if self.halted {
            return Handshake::Stall;
        }
        if let Some(report) = self.queue.pop_front() {
            self.last_report_frame = frame;
            return Handshake::Ack(report);
        }
        let period = u64::from(self.idle) * 4;
        if period != 0 && frame.wrapping_sub(self.last_report_frame) >= period {
            self.last_report_frame = frame;
            return Handshake::Ack(self.current.clone());
        }
        Handshake::Nak
    }

    fn setup(&mut self, packet: &[u8]) -> Handshake {
        let Ok(setup) = <[u8; 8]>::try_from(packet) else {
            // A SETUP is 8 bytes; anything else is a protocol error.
            self.control = ControlStage::Stalled;
            return Handshake::Stall;
        };
        let length = usize::from(u16::from_le_bytes([setup[6], setup[7]]));
        self.control = if setup[0] & 0x80 != 0 {
            match self.request_in(&setup) {
                Some(mut data) => {
                    data.truncate(length);
                    ControlStage::DataIn { data, pos: 0 }
                }
                None => ControlStage::Stalled,
            }
        } else if length == 0 {
            self.request_out(&setup, &[])
        } else if length > MAX_CONTROL_OUT {
            self.log_request(&setup);
            ControlStage::Stalled
        } else {
            ControlStage::DataOut { setup, data: Vec::new() }
        };
        // A SETUP is always acknowledged; a refused request stalls the
        // data or status stage.
        Handshake::Ack(Vec::new())
    }

    fn control_in(&mut self, max_in: usize) -> Handshake {
        match std::mem::take(&mut self.control) {
            ControlStage::DataIn { data, pos } => {
                let start = (pos as usize).min(data.len());
                let n = (data.len() - start).min(max_in).min(EP0_MAX_PACKET);
                let chunk = data[start..start + n].to_vec();
                self.control = ControlStage::DataIn { data, pos: (start + n) as u32 };
                Handshake::Ack(chunk)
            }
            ControlStage::StatusIn { address } => {
                if address <= 127 {
                    self.address = address;
                }
                Handshake::Ack(Vec::new())
            }
            ControlStage::DataOut { setup, data } => {
                // The host ended the data stage early: the status stage.
                match self.request_out(&setup, &data) {
                    ControlStage::StatusIn { address } => {
                        if address <= 127 {
                            self.address = address;
                        }
                        Handshake::Ack(Vec::new())
                    }
                    other => {
                        self.control = other;
                        Handshake::Stall
                    }
                }
            }
            ControlStage::Idle | ControlStage::Stalled => {
                self.control = ControlStage::Stalled;
                Handshake::Stall
            }
        }
    }

    fn control_out(&mut self, packet: &[u8]) -> Handshake {
        match std::mem::take(&mut self.control) {
            // The status stage of an IN request.
            ControlStage::DataIn { .. } => Handshake::Ack(Vec::new()),
            ControlStage::DataOut { setup, mut data } => {
                let want = usize::from(u16::from_le_bytes([setup[6], setup[7]]));
                if data.len() + packet.len() > want {
                    self.control = ControlStage::Stalled;
                    return Handshake::Stall;
                }
                data.extend_from_slice(packet);
                self.control = if data.len() == want {
                    self.request_out(&setup, &data)
                } else {
                    ControlStage::DataOut { setup, data }
                };
                match self.control {
                    ControlStage::Stalled => Handshake::Stall,
                    _ => Handshake::Ack(Vec::new()),
                }
            }
            ControlStage::StatusIn { address } => {
                self.control = ControlStage::StatusIn { address };
                Handshake::Stall
            }
            ControlStage::Idle | ControlStage::Stalled => {
                self.control = ControlStage::Stalled;
                Handshake::Stall
            }
        }
    }

    fn log_request(&mut self, setup: &[u8; 8]) {
        let key = (setup[0], setup[1]);
        if !self.logged.contains(&key) && self.logged.len() < 64 {
            self.logged.push(key);
            tracing::warn!(
                target: "devices",
                "USB {}: request type {:#04x} request {:#04x} value {:#06x} is not implemented; stalled (logged once)",
                kind_name(self.kind),
                setup[0],
                setup[1],
                u16::from_le_bytes([setup[2], setup[3]])
            );
        }
    }

    /// The answer to a device-to-host request, or `None` to stall.
    fn request_in(&mut self, setup: &[u8; 8]) -> Option<Vec<u8>> {
        let value = u16::from_le_bytes([setup[2], setup[3]]);
        let index = u16::from_le_bytes([setup[4], setup[5]]);
        let [value_lo, value_hi] = value.to_le_bytes();
        let answer = match (setup[0], setup[1]) {
            // GET_STATUS
            (0x80, 0x00) => Some(vec![u8::from(self.remote_wakeup) << 1, 0]),
            (0x81, 0x00) => (index == 0).then(|| vec![0, 0]),
            (0x82, 0x00) => match index {
                0x00 | 0x80 => Some(vec![0, 0]),
                0x81 => Some(vec![u8::from(self.halted), 0]),
                _ => None,
            },
            // GET_DESCRIPTOR
            (0x80, 0x06) => match value_hi {
                1 => Some(device_descriptor(self.kind).to_vec()),
                2 if value_lo == 0 => Some(config_descriptor(self.kind)),
                3 => string_descriptor(self.kind, value_lo),
                _ => None,
            },
            (0x81, 0x06) => match value_hi {
                0x21 => Some(config_descriptor(self.kind)[18..27].to_vec()),
                0x22 => Some(report_descriptor(self.kind).to_vec()),
                _ => None,
            },
            // GET_CONFIGURATION, GET_INTERFACE
            (0x80, 0x08) => Some(vec![self.configuration]),
            (0x81, 0x0a) => (index == 0).then(|| vec![0]),
            // HID GET_REPORT
            (0xa1, 0x01) => match value_hi {
                1 => Some(self.current.clone()),
                2 if self.kind == UsbDeviceKind::Keyboard => Some(vec![self.leds]),
                _ => None,
            },
            // HID GET_IDLE, GET_PROTOCOL
            (0xa1, 0x02) => Some(vec![self.idle]),
            (0xa1, 0x03) => Some(vec![self.protocol]),
            _ => None,
        };
        if answer.is_none() {
            self.log_request(setup);
        }
        answer
    }

    /// Carries out a host-to-device request with its data; the stage that
    /// follows (status, or a stall).
    fn request_out(&mut self, setup: &[u8; 8], data: &[u8]) -> ControlStage {
        let value = u16::from_le_bytes([setup[2], setup[3]]);
        let index = u16::from_le_bytes([setup[4], setup[5]]);
        let [_, value_hi] = value.to_le_bytes();
        let mut address = 0xff;
        let ok = match (setup[0], setup[1]) {
            // CLEAR_FEATURE / SET_FEATURE: DEVICE_REMOTE_WAKEUP, ENDPOINT_HALT
            (0x00, 0x01 | 0x03) if value == 1 => {
                self.remote_wakeup = setup[1] == 0x03;
                true
            }
            (0x02, 0x01 | 0x03) if value == 0 => match index {
                0x81 => {
                    self.halted = setup[1] == 0x03;
                    true
                }
                0x00 | 0x80 => true,
                _ => false,
            },
            (0x01, 0x01 | 0x03) => false,
            // SET_ADDRESS: taken in the status stage.
            (0x00, 0x05) if value <= 127 => {
                address = value as u8;
                true
            }
            // SET_CONFIGURATION
            (0x00, 0x09) if value <= 1 => {
                self.configuration = value as u8;
                self.halted = false;
                true
            }
            // SET_INTERFACE
            (0x01, 0x0b) => value == 0 && index == 0,
            // HID SET_REPORT (output report: the keyboard's LEDs)
            (0x21, 0x09) if self.kind == UsbDeviceKind::Keyboard && value_hi == 2 => {
                if let Some(&leds) = data.first() {
                    self.leds = leds & 0x1f;
                }
                true
            }
            // HID SET_IDLE, SET_PROTOCOL
            (0x21, 0x0a) => {
                self.idle = value_hi;
                true
            }
            (0x21, 0x0b) if value <= 1 => {
                self.protocol = value as u8;
                true
            }
            _ => false,
        };
        if ok {
            ControlStage::StatusIn { address }
        } else {
            self.log_request(setup);
            ControlStage::Stalled
        }
    }

    pub(crate) fn save(&self) -> HidState {
        HidState {
            kind: self.kind,
            address: self.address,
            configuration: self.configuration,
            remote_wakeup: self.remote_wakeup,
            halted: self.halted,
            protocol: self.protocol,
            idle: self.idle,
            last_report_frame: self.last_report_frame,
            control: self.control.clone(),
            queue: self.queue.iter().cloned().collect(),
            current: self.current.clone(),
            held: self.held.clone(),
            leds: self.leds,
        }
    }

    /// The checks of a restore; `Err` names the field and the problem.
    pub(crate) fn check_state(&self, s: &HidState) -> Result<(), (&'static str, String)> {
        let len = report_len(self.kind);
        let fail = |field: &'static str, problem: String| Err((field, problem));
        if s.kind != self.kind {
            return fail(
                "devices",
                format!("{} is at the port, the state holds a {}", kind_name(self.kind), kind_name(s.kind)),
            );
        }
        if s.address > 127 || s.configuration > 1 || s.protocol > 1 {
            return fail(
                "devices",
                format!("address {}, configuration {}, protocol {}", s.address, s.configuration, s.protocol),
            );
        }
        if s.queue.len() > MAX_QUEUED || s.queue.iter().any(|r| r.len() != len) || s.current.len() != len {
            return fail("queue", format!("{} reports; each must be {len} bytes, at most {MAX_QUEUED}", s.queue.len()));
        }
        if self.kind == UsbDeviceKind::Tablet && (s.current[0] & !7 != 0 || s.current[5] != 0) {
            return fail("current", format!("tablet report {:02x?}", s.current));
        }
        if self.kind == UsbDeviceKind::Mouse
            && (s.current[0] & !0x1f != 0 || s.current[1..] != [0, 0, 0] || s.queue.iter().any(|r| r[0] & !0x1f != 0))
        {
            return fail("current", format!("mouse report {:02x?}", s.current));
        }
        let held_ok = s.held.len() <= MAX_HELD_KEYS
            && s.held.iter().all(|&k| k != 0 && !(0xe0..=0xe7).contains(&k))
            && s.held.iter().enumerate().all(|(i, k)| !s.held[..i].contains(k));
        if !held_ok || (self.kind != UsbDeviceKind::Keyboard && !s.held.is_empty()) || s.leds & !0x1f != 0 {
            return fail("held", format!("held keys {:02x?}, LEDs {:#04x}", s.held, s.leds));
        }
        let control_ok = match &s.control {
            ControlStage::Idle | ControlStage::Stalled => true,
            ControlStage::DataIn { data, pos } => data.len() <= MAX_CONTROL_IN && *pos as usize <= data.len(),
            ControlStage::DataOut { setup, data } => {
                let want = usize::from(u16::from_le_bytes([setup[6], setup[7]]));
                setup[0] & 0x80 == 0 && want <= MAX_CONTROL_OUT && data.len() < want
            }
            ControlStage::StatusIn { address } => *address <= 127 || *address == 0xff,
        };
        if !control_ok {
            return fail("control", format!("{:?}", s.control));
        }
        Ok(())
    }

    /// Loads a state [`HidDevice::check_state`] passed.
    pub(crate) fn load_state(&mut self, s: &HidState) {
        self.address = s.address;
        self.configuration = s.configuration;
        self.remote_wakeup = s.remote_wakeup;
        self.halted = s.halted;
        self.protocol = s.protocol;
        self.idle = s.idle;
        self.last_report_frame = s.last_report_frame;
        self.control = s.control.clone();
        self.queue = s.queue.iter().cloned().collect();
        self.current = s.current.clone();
        self.held = s.held.clone();
        self.leds = s.leds;
    }
}

/// The device's name, as its product string has it.
pub(crate) fn kind_name(kind: UsbDeviceKind) -> &'static str {
    match kind {
        UsbDeviceKind::Tablet => "QEMU USB Tablet",
        UsbDeviceKind::Keyboard => "QEMU USB Keyboard",
        UsbDeviceKind::Mouse => "QEMU USB Mouse",
    }
}

/// Bytes of the device's input report.
pub(crate) fn report_len(kind: UsbDeviceKind) -> usize {
    match kind {
        UsbDeviceKind::Tablet => 6,
        UsbDeviceKind::Keyboard => 8,
        UsbDeviceKind::Mouse => 4,
    }
}

/// The device descriptor (USB 1.1 9.6.1).
pub(crate) fn device_descriptor(_kind: UsbDeviceKind) -> [u8; 18] {
    [
        18,
        0x01, // bLength, DEVICE
        0x00,
        0x01, // bcdUSB 1.00
        0x00,
        0x00,
        0x00, // class, subclass, protocol: per interface
        EP0_MAX_PACKET as u8,
        0x27,
        0x06, // idVendor 0627h
        0x01,
        0x00, // idProduct 0001h
        0x00,
        0x00, // bcdDevice
        1,
        2,
        3, // iManufacturer, iProduct, iSerialNumber
        1, // bNumConfigurations
    ]
}

/// The configuration descriptor with its interface, HID and endpoint
/// descriptors (USB 1.1 9.6.2-9.6.4, HID 1.11 6.2.1): 34 bytes.
pub(crate) fn config_descriptor(kind: UsbDeviceKind) -> Vec<u8> {
    let (subclass, protocol, bcd_hid, max_packet) = match kind {
        UsbDeviceKind::Tablet => (0x00, 0x02, [0x01, 0x00], 8),
        UsbDeviceKind::Keyboard => (0x01, 0x01, [0x11, 0x01], 8),
        UsbDeviceKind::Mouse => (0x01, 0x02, [0x01, 0x00], 4),
    };
    let report = report_descriptor(kind).len() as u16;
    let [rl, rh] = report.to_le_bytes();
    vec![
        // configuration
        9, 0x02, 34, 0, 1, 1, 4, 0xa0, 50, //
        // interface 0: HID
        9, 0x04, 0, 0, 1, 0x03, subclass, protocol, 0, //
        // HID descriptor
        9, 0x21, bcd_hid[0], bcd_hid[1], 0x00, 1, 0x22, rl, rh, //
        // endpoint 81h: interrupt, 8 bytes (the mouse: 4), 10 ms
        7, 0x05, 0x81, 0x03, max_packet, 0, 10,
    ]
}

/// String descriptor `index` (USB 1.1 9.6.5): 0 the languages (US
/// English), 1-4 the strings.
pub(crate) fn string_descriptor(kind: UsbDeviceKind, index: u8) -> Option<Vec<u8>> {
    let text = match index {
        0 => return Some(vec![4, 0x03, 0x09, 0x04]),
        1 => "QEMU",
        2 => kind_name(kind),
        3 => "42",
        4 => match kind {
            UsbDeviceKind::Tablet => "HID Tablet",
            UsbDeviceKind::Keyboard => "HID Keyboard",
            UsbDeviceKind::Mouse => "HID Mouse",
        },
        _ => return None,
    };
    let mut d = vec![0, 0x03];
    d.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    d[0] = d.len() as u8;
    Some(d)
}

/// The report descriptor (HID 1.11 6.2.2).
pub(crate) fn report_descriptor(kind: UsbDeviceKind) -> &'static [u8] {
    match kind {
        UsbDeviceKind::Tablet => &TABLET_REPORT_DESCRIPTOR,
        UsbDeviceKind::Keyboard => &KEYBOARD_REPORT_DESCRIPTOR,
        UsbDeviceKind::Mouse => &MOUSE_REPORT_DESCRIPTOR,
    }
}

/// The mouse: 5 buttons, relative X, Y and wheel (QEMU's, 52 bytes).
const MOUSE_REPORT_DESCRIPTOR: [u8; 52] = [
    0x05, 0x01, // Usage Page (Generic Desktop)
    0x09, 0x02, // Usage (Mouse)
    0xa1, 0x01, // Collection (Application)
    0x09, 0x01, //   Usage (Pointer)
    0xa1, 0x00, //   Collection (Physical)
    0x05, 0x09, //     Usage Page (Button)
    0x19, 0x01, //     Usage Minimum (1)
    0x29, 0x05, //     Usage Maximum (5)
    0x15, 0x00, //     Logical Minimum (0)
    0x25, 0x01, //     Logical Maximum (1)
    0x95, 0x05, //     Report Count (5)
    0x75, 0x01, //     Report Size (1)
    0x81, 0x02, //     Input (Data, Variable, Absolute)
    0x95, 0x01, //     Report Count (1)
    0x75, 0x03, //     Report Size (3)
    0x81, 0x01, //     Input (Constant)
    0x05, 0x01, //     Usage Page (Generic Desktop)
    0x09, 0x30, //     Usage (X)
    0x09, 0x31, //     Usage (Y)
    0x09, 0x38, //     Usage (Wheel)
    0x15, 0x81, //     Logical Minimum (-127)
    0x25, 0x7f, //     Logical Maximum (127)
    0x75, 0x08, //     Report Size (8)
    0x95, 0x03, //     Report Count (3)
    0x81, 0x06, //     Input (Data, Variable, Relative)
    0xc0, //   End Collection
    0xc0, // End Collection
];

/// The tablet: 3 buttons, absolute X and Y (0..7FFFh), a relative wheel.
const TABLET_REPORT_DESCRIPTOR: [u8; 74] = [
    0x05, 0x01, // Usage Page (Generic Desktop)
    0x09, 0x01, // Usage (Pointer)
    0xa1, 0x01, // Collection (Application)
    0x09, 0x01, //   Usage (Pointer)
    0xa1, 0x00, //   Collection (Physical)
    0x05, 0x09, //     Usage Page (Button)
    0x19, 0x01, //     Usage Minimum (1)
    0x29, 0x03, //     Usage Maximum (3)
    0x15, 0x00, //     Logical Minimum (0)
    0x25, 0x01, //     Logical Maximum (1)
    0x95, 0x03, //     Report Count (3)
    0x75, 0x01, //     Report Size (1)
    0x81, 0x02, //     Input (Data, Variable, Absolute)
    0x95, 0x01, //     Report Count (1)
    0x75, 0x05, //     Report Size (5)
    0x81, 0x01, //     Input (Constant)
    0x05, 0x01, //     Usage Page (Generic Desktop)
    0x09, 0x30, //     Usage (X)
    0x09, 0x31, //     Usage (Y)
    0x15, 0x00, //     Logical Minimum (0)
    0x26, 0xff, 0x7f, // Logical Maximum (7FFFh)
    0x35, 0x00, //     Physical Minimum (0)
    0x46, 0xff, 0x7f, // Physical Maximum (7FFFh)
    0x75, 0x10, //     Report Size (16)
    0x95, 0x02, //     Report Count (2)
    0x81, 0x02, //     Input (Data, Variable, Absolute)
    0x05, 0x01, //     Usage Page (Generic Desktop)
    0x09, 0x38, //     Usage (Wheel)
    0x15, 0x81, //     Logical Minimum (-127)
    0x25, 0x7f, //     Logical Maximum (127)
    0x35, 0x00, //     Physical Minimum (same as logical)
    0x45, 0x00, //     Physical Maximum (same as logical)
    0x75, 0x08, //     Report Size (8)
    0x95, 0x01, //     Report Count (1)
    0x81, 0x06, //     Input (Data, Variable, Relative)
    0xc0, //   End Collection
    0xc0, // End Collection
];

/// The boot keyboard: modifiers, a reserved byte, 5 LEDs out, 6 keys.
const KEYBOARD_REPORT_DESCRIPTOR: [u8; 63] = [
    0x05, 0x01, // Usage Page (Generic Desktop)
    0x09, 0x06, // Usage (Keyboard)
    0xa1, 0x01, // Collection (Application)
    0x75, 0x01, //   Report Size (1)
    0x95, 0x08, //   Report Count (8)
    0x05, 0x07, //   Usage Page (Key Codes)
    0x19, 0xe0, //   Usage Minimum (224)
    0x29, 0xe7, //   Usage Maximum (231)
    0x15, 0x00, //   Logical Minimum (0)
    0x25, 0x01, //   Logical Maximum (1)
    0x81, 0x02, //   Input (Data, Variable, Absolute)
    0x95, 0x01, //   Report Count (1)
    0x75, 0x08, //   Report Size (8)
    0x81, 0x01, //   Input (Constant)
    0x95, 0x05, //   Report Count (5)
    0x75, 0x01, //   Report Size (1)
    0x05, 0x08, //   Usage Page (LEDs)
    0x19, 0x01, //   Usage Minimum (1)
    0x29, 0x05, //   Usage Maximum (5)
    0x91, 0x02, //   Output (Data, Variable, Absolute)
    0x95, 0x01, //   Report Count (1)
    0x75, 0x03, //   Report Size (3)
    0x91, 0x01, //   Output (Constant)
    0x95, 0x06, //   Report Count (6)
    0x75, 0x08, //   Report Size (8)
    0x15, 0x00, //   Logical Minimum (0)
    0x25, 0xff, //   Logical Maximum (255)
    0x05, 0x07, //   Usage Page (Key Codes)
    0x19, 0x00, //   Usage Minimum (0)
    0x29, 0xff, //   Usage Maximum (255)
    0x81, 0x00, //   Input (Data, Array)
    0xc0, // End Collection
];

/// The HID keyboard usage (HID Usage Tables 1.12, chapter 10) of a PC
/// scancode set 1 make code: 01h-7Fh, or E0xxh for the extended keys (a
/// break code's bit 7 is ignored). Pause, which set 1 sends as E1 1D 45,
/// is E046h (its Ctrl+Break form) or E11Dh. 0 for a code with no key.
pub fn set1_to_usage(code: u16) -> u8 {
    let low = (code & 0x7f) as usize;
    match code & 0xff00 {
        0x0000 => SET1_PLAIN[low],
        0xe000 => match low {
            0x1c => 0x58, // keypad Enter
            0x1d => 0xe4, // right Ctrl
            0x20 => 0x7f, // mute
            0x2e => 0x81, // volume down
            0x30 => 0x80, // volume up
            0x35 => 0x54, // keypad /
            0x37 => 0x46, // Print Screen
            0x38 => 0xe6, // right Alt
            0x46 => 0x48, // Pause (Ctrl+Break)
            0x47 => 0x4a, // Home
            0x48 => 0x52, // Up
            0x49 => 0x4b, // Page Up
            0x4b => 0x50, // Left
            0x4d => 0x4f, // Right
            0x4f => 0x4d, // End
            0x50 => 0x51, // Down
            0x51 => 0x4e, // Page Down
            0x52 => 0x49, // Insert
            0x53 => 0x4c, // Delete
            0x5b => 0xe3, // left GUI
            0x5c => 0xe7, // right GUI
            0x5d => 0x65, // Application (menu)
            0x5e => 0x66, // Power
            _ => 0,
        },
        0xe100 if low == 0x1d => 0x48, // Pause
        _ => 0,
    }
}

/// Set 1 make codes 00h-7Fh to usages.
#[rustfmt::skip]
const SET1_PLAIN: [u8; 128] = [
    // 00: -, Esc, 1-9, 0, -, =, Backspace, Tab
    0x00, 0x29, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2d, 0x2e, 0x2a, 0x2b,
    // 10: Q W E R T Y U I O P [ ] Enter LCtrl A S
    0x14, 0x1a, 0x08, 0x15, 0x17, 0x1c, 0x18, 0x0c, 0x12, 0x13, 0x2f, 0x30, 0x28, 0xe0, 0x04, 0x16,
    // 20: D F G H J K L ; ' ` LShift \ Z X C V
    0x07, 0x09, 0x0a, 0x0b, 0x0d, 0x0e, 0x0f, 0x33, 0x34, 0x35, 0xe1, 0x31, 0x1d, 0x1b, 0x06, 0x19,
    // 30: B N M , . / RShift KP* LAlt Space Caps F1 F2 F3 F4 F5
    0x05, 0x11, 0x10, 0x36, 0x37, 0x38, 0xe5, 0x55, 0xe2, 0x2c, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e,
    // 40: F6 F7 F8 F9 F10 NumLock ScrollLock KP7 KP8 KP9 KP- KP4 KP5 KP6 KP+ KP1
    0x3f, 0x40, 0x41, 0x42, 0x43, 0x53, 0x47, 0x5f, 0x60, 0x61, 0x56, 0x5c, 0x5d, 0x5e, 0x57, 0x59,
    // 50: KP2 KP3 KP0 KP. SysRq - non-US \ F11 F12 KP= - - - - - -
    0x5a, 0x5b, 0x62, 0x63, 0x46, 0x00, 0x64, 0x44, 0x45, 0x67, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    // 60: - - - - F13 F14 F15 F16 F17 F18 F19 F20 F21 F22 F23 -
    0x00, 0x00, 0x00, 0x00, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0x00,
    // 70: Katakana/Hiragana - - Ro - - F24 - - Henkan - Muhenkan - Yen KP, -
    0x88, 0x00, 0x00, 0x87, 0x00, 0x00, 0x73, 0x00, 0x00, 0x8a, 0x00, 0x8b, 0x00, 0x89, 0x85, 0x00,
];
