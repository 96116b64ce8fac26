//! The i8042 keyboard controller with a PS/2 keyboard behind it and a
//! PS/2 mouse on its auxiliary port.
//!
//! References: IBM "Personal System/2 Hardware Interface Technical
//! Reference", "Keyboard/Auxiliary Device Controller" (status register,
//! command byte, controller commands 20h-FFh, output port), "Keyboard"
//! (keyboard commands EDh-FFh, responses FAh/AAh/EEh/FEh, scan-code sets)
//! and "Pointing Device" (the mouse: see [`mouse`]); Intel 8042 "Universal
//! Peripheral Interface" for the part itself.
//!
//! ```text
//! port 0x60  read: output buffer        write: data (a command's parameter, else to the keyboard)
//! port 0x64  read: status               write: controller command
//!
//! status        7 parity error | 6 timeout | 5 AUXB (aux data) | 4 not inhibited |
//!               3 last write was a command | 2 system flag | 1 input full | 0 output full
//! command byte  6 translate to set 1 | 5 aux disabled | 4 keyboard disabled |
//!               2 system flag | 1 aux IRQ12 | 0 keyboard IRQ1
//! output port   7 kbd data | 6 kbd clock | 5 OBF aux | 4 OBF kbd | 1 A20 | 0 reset (active low)
//! ```
//!
//! Model choices:
//! - The output buffer is a queue: the controller's own answers (and the
//!   D2h/D3h bytes) join it at once, up to [`QUEUE_LEN`] bytes. The
//!   keyboard and the mouse hold their bytes themselves and hand the
//!   controller one only when the queue is empty, the keyboard first,
//!   then the mouse; a device whose interface is disabled (command byte
//!   bits 4 and 5, commands ADh/AEh and A7h/A8h) keeps its bytes until
//!   it is enabled. A write to the keyboard (port 0x60) enables its
//!   interface, as on real parts; D4h does the same for the aux
//!   interface. A mouse packet's bytes come in order, with no other mouse
//!   byte among them; a keyboard byte may come between them, as on
//!   hardware (the status register's AUXB tells them apart).
//! - The input buffer is never busy: every write is taken at once.
//! - Host keys come in as set-1 codes ([`I8042::key_event`],
//!   [`I8042::pause_key`]); the keyboard sends them in its scan-code set:
//!   2 by default, or 1 (F0h 01h). Set 3 is refused with FEh and the set
//!   stays as it was. With the command byte's bit 6 on, the controller
//!   translates everything the keyboard sends to set 1 (as the part does,
//!   answers included: the ID reads ABh 41h and set 2 reads 41h), so a
//!   guest sees set 1; with it off, set 2. A keyboard in set 1 behind the
//!   translation gets translated twice, as on hardware.
//! - The keyboard holds [`KBD_BUFFER`] bytes of keys; a key that does not
//!   fit is dropped and the overrun code (00h in set 2, FFh in set 1) takes
//!   the 17th place. Answers to commands go before queued keys, but never
//!   inside a key's sequence. A keyboard disabled by F5h ignores keys;
//!   F4h, F5h, F6h, F0h (a set change) and FFh empty its key buffer. Key
//!   repeat is the host's: the keyboard generates no typematic repeats.
//! - The mouse ([`mouse`]) answers the PS/2 and IntelliMouse commands and
//!   takes host motion ([`I8042::mouse_event`]). The aux interface test
//!   (A9h) answers 00h.
//! - The pulse-output command with bit 0 low (FEh) and an output-port
//!   write with bit 0 low reset the machine.

use std::collections::VecDeque;
use std::sync::Arc;

use persist::{Persist, PersistError};

use crate::bus::{BusDevice, SharedDevice};
use crate::irq::IrqLine;
use crate::legacy::port92::A20Gate;
use crate::log_once::{LogOnce, Misuse};
use crate::mapping::{BusAlias, BusMapping};
use crate::power::{VmEvent, VmEvents};

pub mod mouse;

mod keyboard;

pub use mouse::{MouseMode, MouseMotion, MouseParam, MouseState};

/// I/O port of the data register.
pub const I8042_DATA_PORT: u16 = 0x60;
/// I/O port of the status and command register.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// ISA IRQ of the keyboard.
pub const KEYBOARD_IRQ: u32 = 1;
/// ISA IRQ of the auxiliary (mouse) port.
pub const AUX_IRQ: u32 = 12;

/// Offset of the command port in the device's numbering (0x64 - 0x60).
const COMMAND_OFFSET: u64 = (I8042_COMMAND_PORT - I8042_DATA_PORT) as u64;
/// Bytes the output buffer queue holds.
pub const QUEUE_LEN: usize = 16;
/// Key bytes the keyboard buffers (one more for the overrun code).
pub const KBD_BUFFER: usize = 16;
/// Answer bytes to commands the keyboard holds.
pub const KBD_REPLY_LEN: usize = 16;

// Status register.
const STATUS_OBF: u8 = 0b0000_0001;
const STATUS_SYS: u8 = 0b0000_0100;
const STATUS_CMD: u8 = 0b0000_1000;
const STATUS_NOT_INHIBITED: u8 = 0b0001_0000;
const STATUS_AUXB: u8 = 0b0010_0000;

// Command byte (controller configuration byte).
const CTR_KBD_INT: u8 = 0b0000_0001;
const CTR_AUX_INT: u8 = 0b0000_0010;
const CTR_SYS: u8 = 0b0000_0100;
const CTR_KBD_DISABLE: u8 = 0b0001_0000;
const CTR_AUX_DISABLE: u8 = 0b0010_0000;
const CTR_XLATE: u8 = 0b0100_0000;
const CTR_WRITABLE: u8 = 0b0111_1111;
/// As a PC BIOS leaves it: translation on, system flag set, keyboard IRQ
/// on, the aux port disabled.
const CTR_BIOS: u8 = CTR_XLATE | CTR_AUX_DISABLE | CTR_SYS | CTR_KBD_INT;

// Output port.
const OUT_RESET_HIGH: u8 = 0b0000_0001;
const OUT_A20: u8 = 0b0000_0010;
const OUT_OBF_KBD: u8 = 0b0001_0000;
const OUT_OBF_AUX: u8 = 0b0010_0000;
/// Keyboard clock and data lines idle high, and the unused bits.
const OUT_IDLE_ONES: u8 = 0b1100_1100;

// Controller commands (port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_READ_RAM_LAST: u8 = 0x3f;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_WRITE_RAM_LAST: u8 = 0x7f;
const CMD_PASSWORD_INSTALLED: u8 = 0xa4;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_AUX_DEVICE: u8 = 0xd4;
const CMD_A20_DISABLE: u8 = 0xdd;
const CMD_A20_ENABLE: u8 = 0xdf;
const CMD_READ_TEST_INPUTS: u8 = 0xe0;
const CMD_PULSE_FIRST: u8 = 0xf0;
/// Pulse-output commands pulse the lines whose bit is 0; bit 0 is reset.
const PULSE_RESET_LINE: u8 = 0b0000_0001;

// Controller answers.
const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
const NO_PASSWORD: u8 = 0xf1;
/// The input port: keyboard not inhibited.
const INPUT_PORT: u8 = 0b1000_0000;

// Keyboard commands (port 0x60) and answers.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCAN_CODE_SET: u8 = 0xf0;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_SET_TYPEMATIC: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DISABLE: u8 = 0xf5;
const KBD_SET_DEFAULT: u8 = 0xf6;
const KBD_SET3_FIRST: u8 = 0xf7;
const KBD_SET3_LAST: u8 = 0xfd;
const KBD_RESEND: u8 = 0xfe;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;
const KBD_ID_FIRST: u8 = 0xab;
const KBD_ID_SECOND: u8 = 0x83;
const DEFAULT_SCAN_SET: u8 = 2;
/// The scan-code sets the keyboard takes.
const SCAN_SETS: std::ops::RangeInclusive<u8> = 1..=2;
/// Typematic default: 10.9 characters/s, 500 ms delay.
const TYPEMATIC_DEFAULT: u8 = 0x2b;

/// Who put a byte in the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Source {
    /// The controller or the keyboard (IRQ1).
    Keyboard,
    /// The auxiliary port (IRQ12).
    Aux,
}

/// What the next byte written to port 0x60 is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum DataTarget {
    /// The keyboard.
    Keyboard,
    /// The command byte (60h).
    CommandByte,
    /// Internal RAM byte n (61h-7Fh).
    Ram(u8),
    /// The output port (D1h).
    OutputPort,
    /// The output buffer, as keyboard data (D2h).
    KeyboardOutput,
    /// The output buffer, as aux data (D3h).
    AuxOutput,
    /// The aux device (D4h).
    AuxDevice,
}

/// A keyboard command waiting for its parameter byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum KeyboardParam {
    /// Set LEDs (EDh).
    Leds,
    /// Get or set the scan-code set (F0h).
    ScanCodeSet,
    /// Typematic rate and delay (F3h).
    Typematic,
}

/// The state of the controller and keyboard, for save and restore.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct I8042State {
    /// The command byte.
    pub ctr: u8,
    /// The output port's stored bits, bit 1 being the A20 gate's keyboard
    /// controller input (which commands DDh and DFh change too).
    pub output_port: u8,
    /// The last write went to the command port.
    pub last_was_command: bool,
    /// Where the next data byte goes.
    pub data_target: DataTarget,
    /// The output buffer queue, oldest first.
    pub queue: Vec<(u8, Source)>,
    /// The controller's internal RAM (bytes 1-31).
    pub ram: [u8; 32],
    /// The keyboard scans (F4h/F5h).
    pub kbd_scanning: bool,
    /// The keyboard's scan-code set, 1 or 2.
    pub kbd_scan_set: u8,
    /// The keyboard's LEDs.
    pub kbd_leds: u8,
    /// The keyboard's typematic byte.
    pub kbd_typematic: u8,
    /// A keyboard command waiting for its parameter.
    pub kbd_param: Option<KeyboardParam>,
    /// The last byte the keyboard sent (for resend).
    pub kbd_last: u8,
    /// The keyboard's answers to commands, oldest first.
    pub kbd_reply: Vec<u8>,
    /// The keyboard's key buffer, oldest first, in its scan-code set.
    pub kbd_keys: Vec<u8>,
    /// The translation took an F0h: the next keyboard byte is a release.
    pub xlate_break: bool,
    /// The mouse.
    pub mouse: MouseState,
}

/// The i8042 and its keyboard.
pub struct I8042 {
    s: I8042State,
    queue: VecDeque<(u8, Source)>,
    kbd_irq: Arc<dyn IrqLine>,
    aux_irq: Arc<dyn IrqLine>,
    kbd_level: bool,
    aux_level: bool,
    a20: Arc<A20Gate>,
    events: Arc<VmEvents>,
    log: LogOnce,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").field("ctr", &self.s.ctr).field("queue", &self.queue).finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller as a BIOS leaves it, raising IRQ1 on `kbd_irq` and IRQ12
    /// on `aux_irq`, driving `a20` and filing resets with `events`.
    pub fn new(kbd_irq: Arc<dyn IrqLine>, aux_irq: Arc<dyn IrqLine>, a20: Arc<A20Gate>, events: Arc<VmEvents>) -> Self {
        let output_port = OUT_IDLE_ONES | OUT_RESET_HIGH | if a20.kbc() { OUT_A20 } else { 0 };
        Self {
            s: I8042State {
                ctr: CTR_BIOS,
                output_port,
                last_was_command: false,
                data_target: DataTarget::Keyboard,
                queue: Vec::new(),
                ram: [0; 32],
                kbd_scanning: true,
                kbd_scan_set: DEFAULT_SCAN_SET,
                kbd_leds: 0,
                kbd_typematic: TYPEMATIC_DEFAULT,
                kbd_param: None,
                kbd_last: 0,
                kbd_reply: Vec::new(),
                kbd_keys: Vec::new(),
                xlate_break: false,
                mouse: MouseState::new(),
            },
            queue: VecDeque::with_capacity(QUEUE_LEN),
            kbd_irq,
            aux_irq,
            kbd_level: false,
            aux_level: false,
            a20,
            events,
            log: LogOnce::new(),
        }
    }

    /// The ranges the controller answers on: 0x60 and 0x64.
    pub fn bus_mappings(dev: &SharedDevice) -> Vec<BusMapping> {
        vec![
            BusMapping::pio(u64::from(I8042_DATA_PORT), 1, Arc::clone(dev)),
            BusMapping::pio(u64::from(I8042_COMMAND_PORT), 1, BusAlias::shared(Arc::clone(dev), COMMAND_OFFSET)),
        ]
    }

    fn push(&mut self, byte: u8, source: Source) {
        if self.queue.len() >= QUEUE_LEN {
            if self.log.first(Misuse::OutputError) {
                tracing::warn!(target: "devices", "i8042: output buffer full; byte dropped (logged once)");
            }
            return;
        }
        self.queue.push_back((byte, source));
    }

    /// Queues a keyboard answer.
    fn push_kbd(&mut self, byte: u8) {
        if self.s.kbd_reply.len() >= KBD_REPLY_LEN {
            if self.log.first(Misuse::OutputError) {
                tracing::warn!(target: "devices", "i8042: keyboard answers not read; byte dropped (logged once)");
            }
            return;
        }
        self.s.kbd_reply.push(byte);
    }

    /// Empties the keyboard's key buffer.
    fn clear_keys(&mut self) {
        self.s.kbd_keys.clear();
        self.s.xlate_break = false;
    }

    /// The next byte the keyboard sends: the rest of a key's sequence under
    /// way, else an answer, else a key.
    fn kbd_transmit(&mut self) -> Option<u8> {
        let keys = &mut self.s.kbd_keys;
        let mid_key = keyboard::is_prefix(self.s.kbd_last) && !keys.is_empty();
        let byte = if !mid_key && !self.s.kbd_reply.is_empty() {
            self.s.kbd_reply.remove(0)
        } else if !keys.is_empty() {
            keys.remove(0)
        } else {
            return None;
        };
        self.s.kbd_last = byte;
        Some(byte)
    }

    /// Moves a device's byte into the empty output buffer: the keyboard's
    /// (translated when the command byte says so) first, else the mouse's.
    fn refill(&mut self) {
        if !self.queue.is_empty() {
            return;
        }
        if self.s.ctr & CTR_KBD_DISABLE == 0 {
            while let Some(byte) = self.kbd_transmit() {
                if !self.translating() {
                    self.queue.push_back((byte, Source::Keyboard));
                    return;
                }
                if byte == keyboard::PREFIX_BREAK {
                    self.s.xlate_break = true;
                    continue;
                }
                let mut out = keyboard::translate(byte);
                if std::mem::take(&mut self.s.xlate_break) {
                    out |= 0x80;
                }
                self.queue.push_back((out, Source::Keyboard));
                return;
            }
        }
        if self.s.ctr & CTR_AUX_DISABLE == 0 {
            if let Some(byte) = self.s.mouse.transmit() {
                self.queue.push_back((byte, Source::Aux));
            }
        }
    }

    /// Refills the output buffer and drives the IRQ lines from it.
    fn settle(&mut self) {
        self.refill();
        self.update_irqs();
    }

    /// A host key pressed (`down`) or released. `set1` is its scan-code set
    /// 1 make code: 01h-7Fh, or E001h-E07Fh for an extended key (E01Dh is
    /// the right Ctrl key). Pause has its own call, [`I8042::pause_key`].
    /// Other codes are ignored. The keyboard sends the key in its scan-code
    /// set unless F5h disabled it; a key that does not fit in its buffer
    /// is lost and leaves the overrun code.
    pub fn key_event(&mut self, set1: u16, down: bool) {
        match keyboard::key(self.s.kbd_scan_set, set1, down) {
            Some(seq) => self.queue_key(seq.as_slice()),
            None => {
                if self.log.first(Misuse::BadValue) {
                    tracing::warn!(target: "devices", set1, "i8042: not a set-1 key code; key ignored (logged once)");
                }
            }
        }
    }

    /// The host's Pause key: set 1 E1h 1Dh 45h E1h 9Dh C5h, or its set-2
    /// form. It has no release.
    pub fn pause_key(&mut self) {
        let seq = keyboard::pause(self.s.kbd_scan_set);
        self.queue_key(seq.as_slice());
    }

    fn queue_key(&mut self, bytes: &[u8]) {
        if !self.s.kbd_scanning {
            return;
        }
        let keys = &mut self.s.kbd_keys;
        if keys.len() + bytes.len() <= KBD_BUFFER {
            keys.extend_from_slice(bytes);
        } else {
            let overrun = keyboard::overrun(self.s.kbd_scan_set);
            if keys.len() <= KBD_BUFFER && keys.last() != Some(&overrun) {
                keys.push(overrun);
            }
        }
        self.settle();
    }

    /// Host mouse input: movement since the last call and the buttons held
    /// now. `dx` is positive to the right, `dy` positive down and `dz`
    /// (wheel) positive toward the user (scrolling down), as on a screen;
    /// the packets carry Y the other way up, as PS/2 does. `buttons`: bit 0
    /// left, bit 1 right, bit 2 middle, bit 3 button 4 (side), bit 4 button
    /// 5 (extra); the wheel and buttons 4 and 5 reach the guest only once it
    /// has switched the mouse to ID 3 or 4. Nothing is recorded in stream
    /// mode while reporting is off.
    pub fn mouse_event(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        let dy = dy.clamp(-mouse::MOTION_MAX, mouse::MOTION_MAX);
        self.s.mouse.event(dx, -dy, dz, buttons);
        self.settle();
    }

    fn translating(&self) -> bool {
        self.s.ctr & CTR_XLATE != 0
    }

    /// Drives IRQ1/IRQ12 from the byte at the head of the output buffer.
    fn update_irqs(&mut self) {
        let head = self.queue.front().map(|&(_, src)| src);
        let kbd = head == Some(Source::Keyboard) && self.s.ctr & CTR_KBD_INT != 0;
        let aux = head == Some(Source::Aux) && self.s.ctr & CTR_AUX_INT != 0;
        if kbd != self.kbd_level {
            self.kbd_level = kbd;
            self.kbd_irq.set_level(kbd);
        }
        if aux != self.aux_level {
            self.aux_level = aux;
            self.aux_irq.set_level(aux);
        }
    }

    /// The status register.
    pub fn status(&self) -> u8 {
        let mut s = STATUS_NOT_INHIBITED;
        if let Some(&(_, src)) = self.queue.front() {
            s |= STATUS_OBF;
            if src == Source::Aux {
                s |= STATUS_AUXB;
            }
        }
        if self.s.ctr & CTR_SYS != 0 {
            s |= STATUS_SYS;
        }
        if self.s.last_was_command {
            s |= STATUS_CMD;
        }
        s
    }

    /// Reads the output buffer (port 0x60).
    pub fn read_data(&mut self) -> u8 {
        match self.queue.pop_front() {
            Some((byte, _)) => {
                // The next byte, if any, loads as a new interrupt: drop the
                // lines first so edge-triggered inputs see it.
                if self.kbd_level {
                    self.kbd_level = false;
                    self.kbd_irq.set_level(false);
                }
                if self.aux_level {
                    self.aux_level = false;
                    self.aux_irq.set_level(false);
                }
                self.settle();
                byte
            }
            // An empty buffer repeats the last byte on real parts; 0 is as good.
            None => 0,
        }
    }

    fn output_port(&self) -> u8 {
        let mut v = self.s.output_port & !(OUT_A20 | OUT_OBF_KBD | OUT_OBF_AUX);
        if self.a20.kbc() {
            v |= OUT_A20;
        }
        match self.queue.front() {
            Some((_, Source::Keyboard)) => v |= OUT_OBF_KBD,
            Some((_, Source::Aux)) => v |= OUT_OBF_AUX,
            None => {}
        }
        v
    }

    fn write_output_port(&mut self, value: u8) {
        self.s.output_port = value;
        self.a20.set_kbc(value & OUT_A20 != 0);
        if value & OUT_RESET_HIGH == 0 {
            self.request_reset("output port bit 0 cleared");
        }
    }

    fn request_reset(&self, why: &str) {
        tracing::info!(target: "devices", why, "guest reset the machine through the i8042");
        self.events.request(VmEvent::Reset);
    }

    /// Writes a controller command (port 0x64).
    pub fn write_command(&mut self, cmd: u8) {
        self.s.last_was_command = true;
        self.s.data_target = DataTarget::Keyboard;
        match cmd {
            CMD_READ_CTR => self.push(self.s.ctr, Source::Keyboard),
            0x21..=CMD_READ_RAM_LAST => {
                let byte = self.s.ram[usize::from(cmd & 0x1f)];
                self.push(byte, Source::Keyboard);
            }
            CMD_WRITE_CTR => self.s.data_target = DataTarget::CommandByte,
            0x61..=CMD_WRITE_RAM_LAST => self.s.data_target = DataTarget::Ram(cmd & 0x1f),
            CMD_PASSWORD_INSTALLED => self.push(NO_PASSWORD, Source::Keyboard),
            CMD_AUX_DISABLE => self.s.ctr |= CTR_AUX_DISABLE,
            CMD_AUX_ENABLE => self.s.ctr &= !CTR_AUX_DISABLE,
            CMD_AUX_TEST => self.push(INTERFACE_OK, Source::Keyboard),
            CMD_SELF_TEST => {
                self.s.ctr |= CTR_SYS;
                self.push(SELF_TEST_OK, Source::Keyboard);
            }
            CMD_KBD_TEST => self.push(INTERFACE_OK, Source::Keyboard),
            CMD_KBD_DISABLE => self.s.ctr |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.s.ctr &= !CTR_KBD_DISABLE,
            CMD_READ_INPUT_PORT => self.push(INPUT_PORT, Source::Keyboard),
            CMD_READ_OUTPUT_PORT => {
                let v = self.output_port();
                self.push(v, Source::Keyboard);
            }
            CMD_WRITE_OUTPUT_PORT => self.s.data_target = DataTarget::OutputPort,
            CMD_WRITE_KBD_OUTPUT => self.s.data_target = DataTarget::KeyboardOutput,
            CMD_WRITE_AUX_OUTPUT => self.s.data_target = DataTarget::AuxOutput,
            CMD_WRITE_AUX_DEVICE => self.s.data_target = DataTarget::AuxDevice,
            CMD_A20_DISABLE => self.a20.set_kbc(false),
            CMD_A20_ENABLE => self.a20.set_kbc(true),
            CMD_READ_TEST_INPUTS => self.push(0, Source::Keyboard),
            CMD_PULSE_FIRST..=0xff => {
                if cmd & PULSE_RESET_LINE == 0 {
                    self.request_reset("pulse output command");
                }
            }
            _ => {
                if self.log.first(Misuse::Unimplemented) {
                    tracing::warn!(target: "devices", cmd, "i8042: controller command not supported; ignored (logged once)");
                }
            }
        }
        self.settle();
    }

    /// Writes the data register (port 0x60).
    pub fn write_data(&mut self, value: u8) {
        self.s.last_was_command = false;
        let target = std::mem::replace(&mut self.s.data_target, DataTarget::Keyboard);
        match target {
            DataTarget::Keyboard => {
                // Sending to the keyboard enables its interface (as on real parts).
                self.s.ctr &= !CTR_KBD_DISABLE;
                self.keyboard_write(value);
            }
            DataTarget::CommandByte => self.s.ctr = value & CTR_WRITABLE,
            DataTarget::Ram(n) => self.s.ram[usize::from(n)] = value,
            DataTarget::OutputPort => self.write_output_port(value),
            DataTarget::KeyboardOutput => self.push(value, Source::Keyboard),
            DataTarget::AuxOutput => self.push(value, Source::Aux),
            DataTarget::AuxDevice => {
                // Sending to the mouse enables its interface, as for the keyboard.
                self.s.ctr &= !CTR_AUX_DISABLE;
                if !self.s.mouse.write(value) && self.log.first(Misuse::OutputError) {
                    tracing::warn!(target: "devices", "i8042: mouse answers not read; answer dropped (logged once)");
                }
            }
        }
        self.settle();
    }

    fn keyboard_write(&mut self, value: u8) {
        if let Some(param) = self.s.kbd_param.take() {
            match param {
                KeyboardParam::Leds => {
                    self.s.kbd_leds = value & 0b111;
                    self.push_kbd(KBD_ACK);
                }
                KeyboardParam::Typematic => {
                    self.s.kbd_typematic = value & 0x7f;
                    self.push_kbd(KBD_ACK);
                }
                // The controller's translation turns the set number into 43h,
                // 41h (sets 1, 2) when it is on.
                KeyboardParam::ScanCodeSet => match value {
                    0 => {
                        self.push_kbd(KBD_ACK);
                        self.push_kbd(self.s.kbd_scan_set);
                    }
                    _ if SCAN_SETS.contains(&value) => {
                        self.s.kbd_scan_set = value;
                        self.clear_keys();
                        self.push_kbd(KBD_ACK);
                    }
                    _ => self.push_kbd(KBD_RESEND),
                },
            }
            return;
        }
        match value {
            KBD_SET_LEDS => {
                self.s.kbd_param = Some(KeyboardParam::Leds);
                self.push_kbd(KBD_ACK);
            }
            KBD_ECHO => self.push_kbd(KBD_ECHO),
            KBD_SCAN_CODE_SET => {
                self.s.kbd_param = Some(KeyboardParam::ScanCodeSet);
                self.push_kbd(KBD_ACK);
            }
            KBD_IDENTIFY => {
                self.push_kbd(KBD_ACK);
                self.push_kbd(KBD_ID_FIRST);
                self.push_kbd(KBD_ID_SECOND);
            }
            KBD_SET_TYPEMATIC => {
                self.s.kbd_param = Some(KeyboardParam::Typematic);
                self.push_kbd(KBD_ACK);
            }
            KBD_ENABLE => {
                self.s.kbd_scanning = true;
                self.clear_keys();
                self.push_kbd(KBD_ACK);
            }
            KBD_DISABLE | KBD_SET_DEFAULT => {
                self.s.kbd_scanning = value == KBD_SET_DEFAULT;
                self.s.kbd_typematic = TYPEMATIC_DEFAULT;
                self.clear_keys();
                self.push_kbd(KBD_ACK);
            }
            KBD_SET3_FIRST..=KBD_SET3_LAST => self.push_kbd(KBD_ACK),
            KBD_RESEND => {
                let last = self.s.kbd_last;
                self.push_kbd(last);
            }
            KBD_RESET => {
                self.s.kbd_scanning = true;
                self.s.kbd_scan_set = DEFAULT_SCAN_SET;
                self.s.kbd_leds = 0;
                self.s.kbd_typematic = TYPEMATIC_DEFAULT;
                self.s.kbd_param = None;
                self.clear_keys();
                self.s.kbd_reply.clear();
                self.push_kbd(KBD_ACK);
                self.push_kbd(KBD_BAT_OK);
            }
            _ => self.push_kbd(KBD_RESEND),
        }
    }

    fn log_access(&self, offset: u64, size: usize) {
        if self.log.first(Misuse::AccessSize) {
            tracing::warn!(target: "devices", offset, size, "i8042: ports are one byte wide; access ignored (logged once)");
        }
    }
}

/// The part name the controller's errors carry.
const PART: &str = "i8042";

/// Restore checks the command byte's writable bits, the queue's length
/// against the output buffer's, the RAM index of a pending write, the
/// keyboard's scan-code set (1 or 2), LEDs (3 bits), typematic byte (7
/// bits) and its answer and key buffers' lengths, and the mouse's settings,
/// ID, knock progress, buttons, pending movements and buffers; then it sets
/// the A20 gate's keyboard input from the output port and drives IRQ1 and
/// IRQ12 from the queue's head.
impl Persist for I8042 {
    type State = I8042State;

    fn save(&self) -> I8042State {
        let mut s = self.s.clone();
        s.queue = self.queue.iter().copied().collect();
        s.output_port = (s.output_port & !OUT_A20) | if self.a20.kbc() { OUT_A20 } else { 0 };
        s
    }

    fn restore(&mut self, state: &I8042State) -> Result<(), PersistError> {
        Self::check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

impl I8042 {
    /// The checks of [`Persist::restore`], changing nothing.
    pub(crate) fn check_state(state: &I8042State) -> Result<(), PersistError> {
        PersistError::check(state.ctr & !CTR_WRITABLE == 0, PART, "ctr", || {
            format!("is {:#04x}; bit 7 of the command byte is always 0", state.ctr)
        })?;
        PersistError::check_max(PART, "queue", state.queue.len(), QUEUE_LEN)?;
        if let DataTarget::Ram(n) = state.data_target {
            PersistError::check((1..32).contains(&n), PART, "data_target", || {
                format!("names RAM byte {n}; commands 61h-7Fh write bytes 1-31")
            })?;
        }
        PersistError::check(SCAN_SETS.contains(&state.kbd_scan_set), PART, "kbd_scan_set", || {
            format!("is {}; the keyboard has scan-code sets 1 and 2", state.kbd_scan_set)
        })?;
        PersistError::check_max(PART, "kbd_leds", state.kbd_leds, 0b111)?;
        PersistError::check_max(PART, "kbd_typematic", state.kbd_typematic, 0x7f)?;
        PersistError::check_max(PART, "kbd_reply", state.kbd_reply.len(), KBD_REPLY_LEN)?;
        PersistError::check_max(PART, "kbd_keys", state.kbd_keys.len(), KBD_BUFFER + 1)?;
        state.mouse.check(PART)
    }

    /// Loads a state [`I8042::check_state`] passed.
    pub(crate) fn load_state(&mut self, state: &I8042State) {
        self.s = state.clone();
        self.s.queue.clear();
        self.queue = state.queue.iter().copied().collect();
        self.a20.set_kbc(self.s.output_port & OUT_A20 != 0);
        self.kbd_level = false;
        self.aux_level = false;
        self.kbd_irq.set_level(false);
        self.aux_irq.set_level(false);
        self.update_irqs();
    }
}

impl BusDevice for I8042 {
    fn debug_label(&self) -> String {
        "i8042".to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [byte] = data else {
            self.log_access(offset, data.len());
            data.fill(0xff);
            return;
        };
        *byte = match offset {
            0 => self.read_data(),
            COMMAND_OFFSET => self.status(),
            _ => {
                self.log_access(offset, 1);
                0xff
            }
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[value] = data else {
            self.log_access(offset, data.len());
            return;
        };
        match offset {
            0 => self.write_data(value),
            COMMAND_OFFSET => self.write_command(value),
            _ => self.log_access(offset, 1),
        }
    }
}

#[cfg(test)]
mod tests;
