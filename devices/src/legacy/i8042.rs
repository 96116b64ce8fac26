//! The i8042 keyboard controller with a PS/2 keyboard behind it.
//!
//! References: IBM "Personal System/2 Hardware Interface Technical
//! Reference", "Keyboard/Auxiliary Device Controller" (status register,
//! command byte, controller commands 20h-FFh, output port) and "Keyboard"
//! (keyboard commands EDh-FFh, responses FAh/AAh/EEh/FEh); Intel 8042
//! "Universal Peripheral Interface" for the part itself.
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
//! - There is no auxiliary (mouse) port. The aux loopback command (D3h)
//!   echoes its byte as keyboard data and the aux interface test (A9h)
//!   answers 02h ("clock line stuck high"), which drivers (Linux's i8042
//!   among them) read as "no AUX port" at once instead of timing out.
//!   Bytes for the aux device (D4h) are dropped.
//! - The input buffer is never busy: every write is taken at once.
//! - Host key input is not wired yet; the keyboard answers commands only.
//! - The pulse-output command with bit 0 low (FEh) and an output-port
//!   write with bit 0 low reset the machine.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::bus::{BusDevice, SharedDevice};
use crate::irq::IrqLine;
use crate::legacy::port92::A20Gate;
use crate::log_once::{LogOnce, Misuse};
use crate::mapping::{BusAlias, BusMapping};
use crate::power::{VmEvent, VmEvents};

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
const QUEUE_LEN: usize = 16;

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
/// on, the (absent) aux port disabled.
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
/// "Clock line stuck high": there is no device on the aux port.
const AUX_INTERFACE_NO_DEVICE: u8 = 0x02;
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
/// The second ID byte as the controller's set-1 translation delivers it.
const KBD_ID_SECOND_TRANSLATED: u8 = 0x41;
/// Scan-code set numbers as the translation delivers them (sets 1, 2, 3).
const SCAN_SET_TRANSLATED: [u8; 3] = [0x43, 0x41, 0x3f];
const DEFAULT_SCAN_SET: u8 = 2;
/// Typematic default: 10.9 characters/s, 500 ms delay.
const TYPEMATIC_DEFAULT: u8 = 0x2b;

/// Who put a byte in the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The controller or the keyboard (IRQ1).
    Keyboard,
    /// The auxiliary port (IRQ12).
    Aux,
}

/// What the next byte written to port 0x60 is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
pub struct I8042State {
    /// The command byte.
    pub ctr: u8,
    /// The output port's stored bits.
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
    /// The keyboard's scan-code set, 1-3.
    pub kbd_scan_set: u8,
    /// The keyboard's LEDs.
    pub kbd_leds: u8,
    /// The keyboard's typematic byte.
    pub kbd_typematic: u8,
    /// A keyboard command waiting for its parameter.
    pub kbd_param: Option<KeyboardParam>,
    /// The last byte the keyboard sent (for resend).
    pub kbd_last: u8,
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

    fn push_kbd(&mut self, byte: u8) {
        self.s.kbd_last = byte;
        self.push(byte, Source::Keyboard);
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
                self.update_irqs();
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
            CMD_AUX_TEST => self.push(AUX_INTERFACE_NO_DEVICE, Source::Keyboard),
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
        self.update_irqs();
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
            // There is no aux port: its loopback comes back as keyboard data.
            DataTarget::KeyboardOutput | DataTarget::AuxOutput => self.push(value, Source::Keyboard),
            DataTarget::AuxDevice => {
                if self.log.first(Misuse::Unimplemented) {
                    tracing::debug!(target: "devices", value, "i8042: no aux device; byte dropped (logged once)");
                }
            }
        }
        self.update_irqs();
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
                KeyboardParam::ScanCodeSet => match value {
                    0 => {
                        self.push_kbd(KBD_ACK);
                        let set = self.s.kbd_scan_set;
                        let byte = if self.translating() {
                            SCAN_SET_TRANSLATED[usize::from(set.clamp(1, 3) - 1)]
                        } else {
                            set
                        };
                        self.push_kbd(byte);
                    }
                    1..=3 => {
                        self.s.kbd_scan_set = value;
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
                let second = if self.translating() { KBD_ID_SECOND_TRANSLATED } else { KBD_ID_SECOND };
                self.push_kbd(second);
            }
            KBD_SET_TYPEMATIC => {
                self.s.kbd_param = Some(KeyboardParam::Typematic);
                self.push_kbd(KBD_ACK);
            }
            KBD_ENABLE => {
                self.s.kbd_scanning = true;
                self.push_kbd(KBD_ACK);
            }
            KBD_DISABLE | KBD_SET_DEFAULT => {
                self.s.kbd_scanning = value == KBD_SET_DEFAULT;
                self.s.kbd_typematic = TYPEMATIC_DEFAULT;
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
                self.push_kbd(KBD_ACK);
                self.push_kbd(KBD_BAT_OK);
            }
            _ => self.push_kbd(KBD_RESEND),
        }
    }

    /// The state, for a snapshot.
    pub fn save(&self) -> I8042State {
        let mut s = self.s.clone();
        s.queue = self.queue.iter().copied().collect();
        s
    }

    /// Loads a saved state and drives the IRQs and A20 to match.
    pub fn restore(&mut self, state: &I8042State) {
        self.s = state.clone();
        self.s.ctr &= CTR_WRITABLE;
        self.queue = state.queue.iter().copied().take(QUEUE_LEN).collect();
        self.s.queue.clear();
        self.a20.set_kbc(self.s.output_port & OUT_A20 != 0);
        self.kbd_level = false;
        self.aux_level = false;
        self.kbd_irq.set_level(false);
        self.aux_irq.set_level(false);
        self.update_irqs();
    }

    fn log_access(&self, offset: u64, size: usize) {
        if self.log.first(Misuse::AccessSize) {
            tracing::warn!(target: "devices", offset, size, "i8042: ports are one byte wide; access ignored (logged once)");
        }
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
mod tests {
    use super::*;
    use crate::irq::RecordingIrq;

    struct Rig {
        kbc: I8042,
        irq1: Arc<RecordingIrq>,
        irq12: Arc<RecordingIrq>,
        a20: Arc<A20Gate>,
        events: Arc<VmEvents>,
    }

    impl Rig {
        fn new() -> Self {
            let irq1 = Arc::new(RecordingIrq::new());
            let irq12 = Arc::new(RecordingIrq::new());
            let a20 = A20Gate::new(true);
            let events = Arc::new(VmEvents::new());
            let kbc = I8042::new(irq1.clone(), irq12.clone(), a20.clone(), events.clone());
            Self { kbc, irq1, irq12, a20, events }
        }
        fn cmd(&mut self, c: u8) {
            self.kbc.write(COMMAND_OFFSET, &[c]);
        }
        fn data(&mut self, d: u8) {
            self.kbc.write(0, &[d]);
        }
        fn status(&mut self) -> u8 {
            let mut b = [0u8];
            self.kbc.read(COMMAND_OFFSET, &mut b);
            b[0]
        }
        /// Reads everything in the output buffer.
        fn drain(&mut self) -> Vec<u8> {
            let mut out = Vec::new();
            while self.status() & STATUS_OBF != 0 {
                let mut b = [0u8];
                self.kbc.read(0, &mut b);
                out.push(b[0]);
            }
            out
        }
        /// Runs a controller command as Linux's i8042_command does.
        fn command(&mut self, c: u8, params: &[u8]) -> Vec<u8> {
            self.cmd(c);
            for &p in params {
                self.data(p);
            }
            self.drain()
        }
    }

    #[test]
    fn linux_probe_sequence() {
        let mut r = Rig::new();
        assert!(r.drain().is_empty(), "flush finds nothing");
        assert_eq!(r.command(CMD_SELF_TEST, &[]), vec![0x55]);
        // Read the command byte twice (Linux wants two equal reads).
        let ctr = r.command(CMD_READ_CTR, &[]);
        assert_eq!(ctr, r.command(CMD_READ_CTR, &[]));
        assert_eq!(ctr, vec![CTR_BIOS]);
        let ctr = (ctr[0] & !CTR_KBD_INT) | CTR_KBD_DISABLE;
        assert!(r.command(CMD_WRITE_CTR, &[ctr]).is_empty());
        assert_eq!(r.command(CMD_READ_CTR, &[]), vec![ctr]);
        // The aux checks say "no AUX port" without a timeout.
        r.cmd(CMD_WRITE_AUX_OUTPUT);
        r.data(0x5a);
        let s = r.status();
        assert_eq!(s & (STATUS_OBF | STATUS_AUXB), STATUS_OBF, "not aux data");
        r.drain();
        assert_eq!(r.command(CMD_AUX_TEST, &[]), vec![AUX_INTERFACE_NO_DEVICE]);
        // The keyboard port.
        assert_eq!(r.command(CMD_KBD_TEST, &[]), vec![0x00]);
        let ctr = (ctr & !CTR_KBD_DISABLE) | CTR_KBD_INT;
        r.command(CMD_WRITE_CTR, &[ctr]);
        assert_eq!(r.irq12.raises(), 0);
    }

    #[test]
    fn keyboard_answers_atkbd_probe() {
        let mut r = Rig::new();
        r.data(KBD_RESET);
        assert_eq!(r.drain(), vec![KBD_ACK, KBD_BAT_OK]);
        r.data(KBD_IDENTIFY);
        assert_eq!(r.drain(), vec![KBD_ACK, 0xab, 0x41], "translated ID");
        r.command(CMD_WRITE_CTR, &[CTR_KBD_INT]);
        r.data(KBD_IDENTIFY);
        assert_eq!(r.drain(), vec![KBD_ACK, 0xab, 0x83], "untranslated ID");
        r.data(KBD_DISABLE);
        r.data(KBD_SET_LEDS);
        r.data(0x07);
        r.data(KBD_SET_TYPEMATIC);
        r.data(0x20);
        r.data(KBD_ENABLE);
        assert_eq!(r.drain(), vec![KBD_ACK; 6]);
        assert_eq!(r.kbc.save().kbd_leds, 7);
        r.data(KBD_SCAN_CODE_SET);
        r.data(3);
        r.data(KBD_SCAN_CODE_SET);
        r.data(0);
        assert_eq!(r.drain(), vec![KBD_ACK, KBD_ACK, KBD_ACK, KBD_ACK, 3]);
        r.data(KBD_SCAN_CODE_SET);
        r.data(9);
        assert_eq!(r.drain(), vec![KBD_ACK, KBD_RESEND]);
        r.data(KBD_ECHO);
        r.data(KBD_RESEND);
        r.data(0x12);
        r.data(0xf8);
        r.data(KBD_SET_DEFAULT);
        assert_eq!(r.drain(), vec![KBD_ECHO, KBD_ECHO, KBD_RESEND, KBD_ACK, KBD_ACK]);
    }

    #[test]
    fn each_byte_raises_irq1_anew() {
        let mut r = Rig::new();
        r.data(KBD_RESET);
        assert!(r.irq1.level());
        assert_eq!(r.irq1.raises(), 1);
        r.drain();
        assert_eq!(r.irq1.raises(), 2, "the second byte is a second edge");
        assert!(!r.irq1.level());
        r.cmd(CMD_WRITE_CTR);
        r.data(0);
        r.data(KBD_ECHO);
        assert!(!r.irq1.level(), "IRQ1 disabled in the command byte");
        assert_eq!(r.status() & STATUS_OBF, STATUS_OBF);
    }

    #[test]
    fn status_bits() {
        let mut r = Rig::new();
        assert_eq!(r.status(), STATUS_NOT_INHIBITED | STATUS_SYS);
        r.cmd(CMD_READ_CTR);
        assert_eq!(r.status(), STATUS_NOT_INHIBITED | STATUS_SYS | STATUS_CMD | STATUS_OBF);
        r.drain();
        r.command(CMD_WRITE_CTR, &[0]);
        assert_eq!(r.status(), STATUS_NOT_INHIBITED);
    }

    #[test]
    fn port_enables_ram_and_misc_commands() {
        let mut r = Rig::new();
        r.cmd(CMD_KBD_DISABLE);
        r.cmd(CMD_AUX_ENABLE);
        let ctr = r.command(CMD_READ_CTR, &[])[0];
        assert_eq!(ctr & (CTR_KBD_DISABLE | CTR_AUX_DISABLE), CTR_KBD_DISABLE);
        r.cmd(CMD_KBD_ENABLE);
        r.cmd(CMD_AUX_DISABLE);
        let ctr = r.command(CMD_READ_CTR, &[])[0];
        assert_eq!(ctr & (CTR_KBD_DISABLE | CTR_AUX_DISABLE), CTR_AUX_DISABLE);
        r.command(0x65, &[0x99]);
        assert_eq!(r.command(0x25, &[]), vec![0x99]);
        assert_eq!(r.command(CMD_PASSWORD_INSTALLED, &[]), vec![NO_PASSWORD]);
        assert_eq!(r.command(CMD_READ_INPUT_PORT, &[]), vec![INPUT_PORT]);
        assert_eq!(r.command(CMD_READ_TEST_INPUTS, &[]), vec![0]);
        assert_eq!(r.command(CMD_WRITE_KBD_OUTPUT, &[0x1c]), vec![0x1c]);
        assert!(r.command(CMD_WRITE_AUX_DEVICE, &[0xff]).is_empty());
        assert!(r.command(0xc8, &[]).is_empty(), "unknown command");
        // A write to the keyboard re-enables its port.
        r.cmd(CMD_KBD_DISABLE);
        r.data(KBD_ECHO);
        let ctr = r.command(CMD_READ_CTR, &[]);
        assert_eq!(ctr[0] & CTR_KBD_DISABLE, 0, "{ctr:?}");
        assert_eq!(r.irq12.raises(), 0);
    }

    #[test]
    fn a20_through_the_output_port() {
        let mut r = Rig::new();
        let out = r.command(CMD_READ_OUTPUT_PORT, &[])[0];
        assert_eq!(out & (OUT_A20 | OUT_RESET_HIGH), OUT_A20 | OUT_RESET_HIGH);
        r.command(CMD_WRITE_OUTPUT_PORT, &[0xdd]);
        assert!(!r.a20.enabled());
        r.command(CMD_WRITE_OUTPUT_PORT, &[0xdf]);
        assert!(r.a20.enabled());
        r.cmd(CMD_A20_DISABLE);
        assert!(!r.a20.enabled());
        r.cmd(CMD_A20_ENABLE);
        assert!(r.a20.enabled());
        assert!(!r.events.pending());
        r.cmd(CMD_READ_OUTPUT_PORT);
        let mut b = [0u8];
        r.kbc.read(0, &mut b);
        assert_eq!(b[0] & OUT_OBF_KBD, 0, "the buffer emptied by this read");
    }

    #[test]
    fn reset_lines() {
        let mut r = Rig::new();
        r.cmd(0xff); // pulse nothing
        assert!(!r.events.pending());
        r.cmd(0xfe);
        assert_eq!(r.events.take(), Some(VmEvent::Reset));
        r.command(CMD_WRITE_OUTPUT_PORT, &[0x02]);
        assert_eq!(r.events.take(), Some(VmEvent::Reset));
    }

    #[test]
    fn output_buffer_overflow_drops_bytes() {
        let mut r = Rig::new();
        for _ in 0..20 {
            r.data(KBD_ECHO);
        }
        assert_eq!(r.drain().len(), QUEUE_LEN);
        let mut b = [0u8];
        r.kbc.read(0, &mut b);
        assert_eq!(b, [0], "empty buffer");
    }

    #[test]
    fn odd_accesses_and_state_round_trip() {
        let mut r = Rig::new();
        let mut w = [0u8; 2];
        r.kbc.read(0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        r.kbc.write(0, &[1, 2]);
        r.kbc.write(2, &[1]);
        let mut b = [0u8];
        r.kbc.read(2, &mut b);
        assert_eq!(b, [0xff]);
        r.data(KBD_IDENTIFY);
        let state = r.kbc.save();
        assert_eq!(state.queue.len(), 3);
        let irq = Arc::new(RecordingIrq::new());
        let mut other = I8042::new(irq.clone(), irq.clone(), A20Gate::new(false), r.events.clone());
        other.restore(&state);
        assert_eq!(other.save(), state);
        assert!(irq.level());
        assert_eq!(other.debug_label(), "i8042");
        assert!(format!("{other:?}").contains("I8042"));
    }

    #[test]
    fn mappings_cover_both_ports() {
        let r = Rig::new();
        let dev: SharedDevice = Arc::new(parking_lot::Mutex::new(r.kbc));
        let maps = I8042::bus_mappings(&dev);
        let mut pio = crate::bus::Bus::new();
        let mut mmio = crate::bus::Bus::new();
        for m in &maps {
            m.insert_into(&mut pio, &mut mmio).unwrap();
        }
        pio.write(0x64, &[CMD_SELF_TEST]);
        let mut b = [0u8];
        pio.read(0x60, &mut b);
        assert_eq!(b, [SELF_TEST_OK]);
    }
}
