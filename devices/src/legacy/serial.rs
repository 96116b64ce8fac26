//! 16550A UART (the PC's COM ports).
//!
//! Datasheet: PC16550D "Universal Asynchronous Receiver/Transmitter with
//! FIFOs" (National Semiconductor, June 1995): Table I (UART reset
//! configuration) and section 8.0 "Registers" with Table II (summary of
//! registers), Table III (baud rates and divisors) and Table IV (interrupt
//! control functions).
//!
//! ```text
//! offset  DLAB=0 read   DLAB=0 write   DLAB=1
//!   0     RBR           THR            DLL  divisor latch, low byte
//!   1     IER           IER            DLM  divisor latch, high byte
//!   2     IIR           FCR            (IIR / FCR)
//!   3     LCR           LCR            bit 7 is DLAB
//!   4     MCR           MCR
//!   5     LSR           (ignored)
//!   6     MSR           (ignored)
//!   7     SCR           SCR
//!
//! IIR   7 6   5 4   3 2 1         0
//!       FIFOs  0 0  interrupt id  1 = none pending
//!       on = 11     011 line status > 010 data available = 110 timeout
//!                   > 001 THR empty > 000 modem status
//! ```
//!
//! Model choices (all visible to the guest only as "a fast UART"):
//! - Transmission is instant: a byte written to THR goes to the host output at
//!   once, so THR and the transmit FIFO always read back empty. The FIFO is
//!   there for register semantics (FCR, IIR bits 7:6).
//! - The character timeout is simplified: in FIFO mode, received data below the
//!   trigger level is reported as a timeout at once, without waiting four
//!   character times.
//! - The host side is flow-controlled: [`Serial::enqueue_input`] takes only what
//!   fits. Overruns happen on the wire ([`Serial::receive`]) and in loopback.
//! - On a PC the OUT2 pin gates the IRQ. In loopback the datasheet forces the
//!   modem-control output pins inactive, so no IRQ reaches the PIC then, even
//!   though IIR still reports the interrupt.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use persist::{Persist, PersistError};

use crate::bus::BusDevice;
use crate::irq::IrqLine;
use crate::log_once::{LogOnce, Misuse};

/// I/O port base of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;
/// I/O port base of COM2.
pub const COM2_PORT: u16 = 0x2f8;
/// ISA IRQ of COM2.
pub const COM2_IRQ: u32 = 3;
/// Number of I/O ports a 16550A decodes.
pub const SERIAL_PORT_LEN: u64 = 8;
/// Depth of each of the receive and transmit FIFOs.
pub const FIFO_SIZE: usize = 16;

// Register offsets (Table II, address lines A2..A0).
const RBR_THR_DLL: u8 = 0;
const IER_DLM: u8 = 1;
const IIR_FCR: u8 = 2;
const LCR: u8 = 3;
const MCR: u8 = 4;
const LSR: u8 = 5;
const MSR: u8 = 6;
const SCR: u8 = 7;

// Interrupt Enable Register.
const IER_ERBFI: u8 = 0b0000_0001; // received data available (and timeout)
const IER_ETBEI: u8 = 0b0000_0010; // transmitter holding register empty
const IER_ELSI: u8 = 0b0000_0100; // receiver line status
const IER_EDSSI: u8 = 0b0000_1000; // modem status
const IER_WRITABLE: u8 = 0b0000_1111; // bits 7:4 are always 0

// Interrupt Identification Register.
const IIR_NO_INT_PENDING: u8 = 0b0000_0001;
const IIR_ID_RECEIVER_LINE_STATUS: u8 = 0b0000_0110;
const IIR_ID_RECEIVED_DATA: u8 = 0b0000_0100;
const IIR_ID_CHARACTER_TIMEOUT: u8 = 0b0000_1100;
const IIR_ID_THR_EMPTY: u8 = 0b0000_0010;
const IIR_ID_MODEM_STATUS: u8 = 0b0000_0000;
const IIR_FIFOS_ENABLED: u8 = 0b1100_0000;

// FIFO Control Register (write only).
const FCR_FIFO_ENABLE: u8 = 0b0000_0001;
const FCR_RX_FIFO_RESET: u8 = 0b0000_0010;
const FCR_TX_FIFO_RESET: u8 = 0b0000_0100;
const FCR_DMA_MODE: u8 = 0b0000_1000;
const FCR_RX_TRIGGER_MASK: u8 = 0b1100_0000;
const FCR_RX_TRIGGER_1: u8 = 0b0000_0000;
const FCR_RX_TRIGGER_4: u8 = 0b0100_0000;
const FCR_RX_TRIGGER_8: u8 = 0b1000_0000;
const FCR_RX_TRIGGER_14: u8 = 0b1100_0000;
/// RX trigger level codes (FCR bits 7:6) and the FIFO fill they stand for.
const RX_TRIGGER_LEVELS: [(u8, usize); 4] =
    [(FCR_RX_TRIGGER_1, 1), (FCR_RX_TRIGGER_4, 4), (FCR_RX_TRIGGER_8, 8), (FCR_RX_TRIGGER_14, 14)];
/// The FCR bits that persist; the reset bits clear themselves.
const FCR_KEPT: u8 = FCR_FIFO_ENABLE | FCR_DMA_MODE | FCR_RX_TRIGGER_MASK;

// Line Control Register.
const LCR_DLAB: u8 = 0b1000_0000;

// Modem Control Register.
const MCR_DTR: u8 = 0b0000_0001;
const MCR_RTS: u8 = 0b0000_0010;
const MCR_OUT1: u8 = 0b0000_0100;
const MCR_OUT2: u8 = 0b0000_1000;
const MCR_LOOP: u8 = 0b0001_0000;
const MCR_WRITABLE: u8 = 0b0001_1111; // bits 7:5 are always 0

// Line Status Register.
const LSR_DATA_READY: u8 = 0b0000_0001;
const LSR_OVERRUN_ERROR: u8 = 0b0000_0010;
const LSR_THR_EMPTY: u8 = 0b0010_0000;
const LSR_TRANSMITTER_EMPTY: u8 = 0b0100_0000;

// Modem Status Register.
const MSR_DELTA_CTS: u8 = 0b0000_0001;
const MSR_DELTA_DSR: u8 = 0b0000_0010;
const MSR_TRAILING_EDGE_RI: u8 = 0b0000_0100;
const MSR_DELTA_DCD: u8 = 0b0000_1000;
const MSR_CTS: u8 = 0b0001_0000;
const MSR_DSR: u8 = 0b0010_0000;
const MSR_RI: u8 = 0b0100_0000;
const MSR_DCD: u8 = 0b1000_0000;
const MSR_DELTAS: u8 = MSR_DELTA_CTS | MSR_DELTA_DSR | MSR_TRAILING_EDGE_RI | MSR_DELTA_DCD;

// Reset values (Table I, "UART reset configuration").
/// Every interrupt starts disabled: master reset clears IER.
const IER_RESET: u8 = 0;
/// Master reset clears LCR: 5-bit words, DLAB off.
const LCR_RESET: u8 = 0;
/// Master reset drives every modem output inactive, so OUT2 keeps the IRQ
/// off until a driver opens the port.
const MCR_RESET: u8 = 0;
/// FIFOs off after reset: the part looks like a 16450 until told otherwise.
const FCR_RESET: u8 = 0;
/// With no modem behind the port, the host side asserts carrier, data set
/// ready and clear to send (as QEMU does), so drivers that wait for them transmit.
const MSR_HOST_INPUTS: u8 = MSR_DCD | MSR_DSR | MSR_CTS;
/// Table I leaves the divisor latch out (it is undefined after power-up) and
/// the datasheet warns against a divisor of 0. 12 is 9600 baud from the PC's
/// 1.8432 MHz clock (Table III), what a PC BIOS programs, so a guest that
/// reads the divisor without setting it computes a sane rate.
const DIVISOR_POWER_ON: u16 = 12;
/// Table I leaves the scratch register out: reset keeps it; it powers up as 0.
const SCR_POWER_ON: u8 = 0;

/// The guest-visible state of a 16550A, for save and restore.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SerialState {
    /// Divisor latch, low byte (DLL).
    pub dll: u8,
    /// Divisor latch, high byte (DLM).
    pub dlm: u8,
    /// Interrupt Enable Register.
    pub ier: u8,
    /// Line Control Register.
    pub lcr: u8,
    /// Modem Control Register.
    pub mcr: u8,
    /// Scratch register.
    pub scr: u8,
    /// The persistent FIFO Control Register bits (enable, DMA mode, trigger level).
    pub fcr: u8,
    /// Sticky LSR error bits not yet cleared by an LSR read.
    pub lsr_errors: u8,
    /// MSR delta bits not yet cleared by an MSR read.
    pub msr_deltas: u8,
    /// The THR-empty interrupt is latched and not yet acknowledged.
    pub thr_empty_pending: bool,
    /// Received bytes not yet read, oldest first.
    pub rx_fifo: Vec<u8>,
}

/// Interrupt sources, highest priority first (Table IV).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    ReceiverLineStatus,
    ReceivedData,
    CharacterTimeout,
    ThrEmpty,
    ModemStatus,
}

impl Source {
    fn iir_id(self) -> u8 {
        match self {
            Source::ReceiverLineStatus => IIR_ID_RECEIVER_LINE_STATUS,
            Source::ReceivedData => IIR_ID_RECEIVED_DATA,
            Source::CharacterTimeout => IIR_ID_CHARACTER_TIMEOUT,
            Source::ThrEmpty => IIR_ID_THR_EMPTY,
            Source::ModemStatus => IIR_ID_MODEM_STATUS,
        }
    }
}

/// A 16550A UART: registers, FIFOs and interrupt logic, wired to an IRQ line
/// and a host output.
pub struct Serial {
    label: String,
    irq: Arc<dyn IrqLine>,
    out: Box<dyn Write + Send>,
    log: LogOnce,
    dll: u8,
    dlm: u8,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    fcr: u8,
    lsr_errors: u8,
    msr_deltas: u8,
    thr_empty_pending: bool,
    rx: VecDeque<u8>,
    /// The level last driven on `irq`.
    irq_level: bool,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("label", &self.label)
            .field("state", &self.save())
            .field("irq_level", &self.irq_level)
            .finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART in its power-on state. Transmitted bytes go to `out`; the IRQ
    /// line is left low.
    pub fn new(irq: Arc<dyn IrqLine>, out: Box<dyn Write + Send>) -> Self {
        let [dll, dlm] = DIVISOR_POWER_ON.to_le_bytes();
        Self {
            label: "serial".to_string(),
            irq,
            out,
            log: LogOnce::new(),
            dll,
            dlm,
            ier: IER_RESET,
            lcr: LCR_RESET,
            mcr: MCR_RESET,
            scr: SCR_POWER_ON,
            fcr: FCR_RESET,
            // LSR reads 0x60 after reset: no error seen, nothing received
            // (empty FIFO), THR and transmitter empty (transmission is instant).
            lsr_errors: 0,
            // MSR deltas start clear: the inputs have not changed yet.
            msr_deltas: 0,
            // IIR reads 0x01 after reset: THR-empty latches only when a byte
            // is sent or ETBEI is enabled, and every other source is disabled.
            thr_empty_pending: false,
            rx: VecDeque::with_capacity(FIFO_SIZE),
            // The machine hands the line over low.
            irq_level: false,
        }
    }

    /// Names the UART in logs, such as `"serial (COM1)"`.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Master reset: every register the datasheet resets goes back to its
    /// reset value; the divisor latch and the scratch register are kept.
    pub fn reset(&mut self) {
        self.ier = IER_RESET;
        self.lcr = LCR_RESET;
        self.mcr = MCR_RESET;
        self.fcr = FCR_RESET;
        self.lsr_errors = 0;
        self.msr_deltas = 0;
        self.thr_empty_pending = false;
        self.rx.clear();
        self.update_irq();
    }

    /// Queues bytes from the host for the guest to read. Takes what fits in
    /// the receive FIFO (nothing in loopback, where the serial input is
    /// disconnected) and returns how many bytes it took; the caller keeps the rest.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let taken = bytes.len().min(self.rx_space());
        self.rx.extend(&bytes[..taken]);
        if taken > 0 {
            self.update_irq();
        }
        taken
    }

    /// How many bytes [`Serial::enqueue_input`] would take now.
    pub fn rx_space(&self) -> usize {
        if self.loopback() {
            0
        } else {
            self.rx_capacity().saturating_sub(self.rx.len())
        }
    }

    /// Bytes arriving on the serial line with no flow control, as a real
    /// peer sends them: what does not fit overruns (LSR.OE). Ignored in loopback.
    pub fn receive(&mut self, bytes: &[u8]) {
        if self.loopback() {
            return;
        }
        for &b in bytes {
            self.receive_byte(b);
        }
        self.update_irq();
    }

    /// Reads register `offset` (0..=7) as the guest sees it, with its side effects.
    pub fn read_register(&mut self, offset: u8) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        let value = match offset {
            RBR_THR_DLL if dlab => self.dll,
            RBR_THR_DLL => self.rx.pop_front().unwrap_or(0),
            IER_DLM if dlab => self.dlm,
            IER_DLM => self.ier,
            IIR_FCR => {
                let source = self.pending_source();
                if source == Some(Source::ThrEmpty) {
                    // Reading IIR acknowledges a THR-empty interrupt it reports.
                    self.thr_empty_pending = false;
                }
                let fifos = if self.fifo_enabled() { IIR_FIFOS_ENABLED } else { 0 };
                fifos | source.map_or(IIR_NO_INT_PENDING, Source::iir_id)
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let ready = if self.rx.is_empty() { 0 } else { LSR_DATA_READY };
                let value = ready | self.lsr_errors | LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY;
                self.lsr_errors = 0;
                value
            }
            MSR => {
                let value = self.modem_inputs() | self.msr_deltas;
                self.msr_deltas = 0;
                value
            }
            SCR => self.scr,
            _ => {
                self.log_unimplemented(offset);
                return 0xff;
            }
        };
        self.update_irq();
        value
    }

    /// Writes register `offset` (0..=7) as the guest does, with its side effects.
    pub fn write_register(&mut self, offset: u8, value: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            RBR_THR_DLL if dlab => self.dll = value,
            RBR_THR_DLL => {
                self.thr_empty_pending = false;
                self.transmit(value);
                // Transmission is instant: THR is empty again at once.
                self.thr_empty_pending = true;
            }
            IER_DLM if dlab => self.dlm = value,
            IER_DLM => {
                let old = self.ier;
                self.ier = value & IER_WRITABLE;
                let enabled = self.ier & !old;
                let disabled = old & !self.ier;
                if enabled & IER_ETBEI != 0 {
                    // THR is always empty here, so enabling the interrupt raises it.
                    self.thr_empty_pending = true;
                }
                if disabled & IER_ETBEI != 0 {
                    self.thr_empty_pending = false;
                }
            }
            IIR_FCR => self.write_fcr(value),
            LCR => self.lcr = value,
            MCR => {
                let before = self.modem_inputs();
                self.mcr = value & MCR_WRITABLE;
                self.msr_deltas |= msr_deltas(before, self.modem_inputs());
            }
            LSR | MSR => {
                // Read-only status registers; the datasheet reserves writes for factory test.
            }
            SCR => self.scr = value,
            _ => {
                self.log_unimplemented(offset);
                return;
            }
        }
        self.update_irq();
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_FIFO_ENABLE != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// Receive buffer depth: the FIFO, or the single RBR in 16450 mode.
    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            FIFO_SIZE
        } else {
            1
        }
    }

    /// Bytes in the receive FIFO that raise "received data available".
    fn rx_trigger(&self) -> usize {
        if !self.fifo_enabled() {
            return 1;
        }
        let bits = self.fcr & FCR_RX_TRIGGER_MASK;
        RX_TRIGGER_LEVELS
            .iter()
            .find(|(code, _)| *code == bits)
            // The table covers all four codes of the two-bit field.
            .map_or(FIFO_SIZE, |&(_, level)| level)
    }

    /// The modem-status inputs (MSR bits 7:4): from the host, or in loopback
    /// from the modem-control outputs (DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD).
    fn modem_inputs(&self) -> u8 {
        if !self.loopback() {
            return MSR_HOST_INPUTS;
        }
        let wires = [(MCR_DTR, MSR_DSR), (MCR_RTS, MSR_CTS), (MCR_OUT1, MSR_RI), (MCR_OUT2, MSR_DCD)];
        wires.iter().filter(|(out, _)| self.mcr & out != 0).fold(0, |msr, (_, input)| msr | input)
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_FIFO_ENABLE != 0;
        if enable != self.fifo_enabled() {
            // Switching between 16450 and FIFO mode empties both FIFOs.
            self.rx.clear();
        }
        if !enable {
            // The other bits are programmed only while FCR bit 0 is written as 1.
            self.fcr = 0;
            return;
        }
        if value & FCR_RX_FIFO_RESET != 0 {
            self.rx.clear();
        }
        if value & FCR_TX_FIFO_RESET != 0 {
            // An emptied transmit FIFO means an empty THR, which interrupts.
            self.thr_empty_pending = true;
        }
        self.fcr = value & FCR_KEPT;
    }

    fn transmit(&mut self, byte: u8) {
        if self.loopback() {
            self.receive_byte(byte);
            return;
        }
        if let Err(err) = self.out.write_all(&[byte]) {
            if self.log.first(Misuse::OutputError) {
                tracing::warn!(
                    target: "devices",
                    device = %self.label,
                    %err,
                    "cannot write transmitted bytes to the host; dropping them (logged once)"
                );
            }
        }
    }

    /// One character completes in the receiver shift register.
    fn receive_byte(&mut self, byte: u8) {
        if self.rx.len() < self.rx_capacity() {
            self.rx.push_back(byte);
            return;
        }
        self.lsr_errors |= LSR_OVERRUN_ERROR;
        if !self.fifo_enabled() {
            // 16450 mode: the new character overwrites the unread one in RBR.
            self.rx.pop_back();
            self.rx.push_back(byte);
        }
        // FIFO mode: the character stays in the shift register and is lost.
    }

    fn pending_source(&self) -> Option<Source> {
        if self.ier & IER_ELSI != 0 && self.lsr_errors != 0 {
            return Some(Source::ReceiverLineStatus);
        }
        if self.ier & IER_ERBFI != 0 && !self.rx.is_empty() {
            return Some(if self.rx.len() >= self.rx_trigger() {
                Source::ReceivedData
            } else {
                Source::CharacterTimeout
            });
        }
        if self.ier & IER_ETBEI != 0 && self.thr_empty_pending {
            return Some(Source::ThrEmpty);
        }
        if self.ier & IER_EDSSI != 0 && self.msr_deltas != 0 {
            return Some(Source::ModemStatus);
        }
        None
    }

    /// The level of the PC's IRQ wire: an interrupt is pending and the OUT2
    /// pin is active (it is forced inactive in loopback).
    fn irq_asserted(&self) -> bool {
        let out2_pin = self.mcr & MCR_OUT2 != 0 && !self.loopback();
        out2_pin && self.pending_source().is_some()
    }

    fn update_irq(&mut self) {
        let level = self.irq_asserted();
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    fn log_unimplemented(&self, offset: u8) {
        if self.log.first(Misuse::Unimplemented) {
            tracing::warn!(
                target: "devices",
                device = %self.label,
                offset,
                "access to a register the 16550A does not have; ignored (logged once)"
            );
        }
    }

    fn log_access_size(&self, offset: u64, size: usize) {
        if self.log.first(Misuse::AccessSize) {
            tracing::warn!(
                target: "devices",
                device = %self.label,
                offset,
                size,
                "16550A registers are one byte wide; access ignored (logged once)"
            );
        }
    }
}

/// The part name the UART's errors carry.
const PART: &str = "16550A UART";

/// Fails unless `value` sets only bits of `allowed`.
fn check_bits(field: &'static str, value: u8, allowed: u8) -> Result<(), PersistError> {
    PersistError::check(value & !allowed == 0, PART, field, || {
        format!("is {value:#04x}, with bits outside {allowed:#04x} set")
    })
}

/// Restore checks every register against its writable bits (a value the
/// guest could not have written is corrupt) and the receive FIFO against
/// the capacity of the saved FIFO mode, then drives the IRQ line to match.
impl Persist for Serial {
    type State = SerialState;

    fn save(&self) -> SerialState {
        SerialState {
            dll: self.dll,
            dlm: self.dlm,
            ier: self.ier,
            lcr: self.lcr,
            mcr: self.mcr,
            scr: self.scr,
            fcr: self.fcr,
            lsr_errors: self.lsr_errors,
            msr_deltas: self.msr_deltas,
            thr_empty_pending: self.thr_empty_pending,
            rx_fifo: self.rx.iter().copied().collect(),
        }
    }

    fn restore(&mut self, state: &SerialState) -> Result<(), PersistError> {
        check_bits("ier", state.ier, IER_WRITABLE)?;
        check_bits("mcr", state.mcr, MCR_WRITABLE)?;
        check_bits("fcr", state.fcr, FCR_KEPT)?;
        PersistError::check(state.fcr == 0 || state.fcr & FCR_FIFO_ENABLE != 0, PART, "fcr", || {
            format!("is {:#04x}: the trigger and DMA bits are kept only with the FIFOs on", state.fcr)
        })?;
        check_bits("lsr_errors", state.lsr_errors, LSR_OVERRUN_ERROR)?;
        check_bits("msr_deltas", state.msr_deltas, MSR_DELTAS)?;
        let capacity = if state.fcr & FCR_FIFO_ENABLE != 0 { FIFO_SIZE } else { 1 };
        let len = state.rx_fifo.len();
        PersistError::check(len <= capacity, PART, "rx_fifo", || {
            format!("holds {len} bytes but the saved FIFO mode holds at most {capacity}")
        })?;
        self.dll = state.dll;
        self.dlm = state.dlm;
        self.ier = state.ier;
        self.lcr = state.lcr;
        self.mcr = state.mcr;
        self.scr = state.scr;
        self.fcr = state.fcr;
        self.lsr_errors = state.lsr_errors;
        self.msr_deltas = state.msr_deltas;
        self.thr_empty_pending = state.thr_empty_pending;
        self.rx = state.rx_fifo.iter().copied().collect();
        self.irq_level = self.irq_asserted();
        self.irq.set_level(self.irq_level);
        Ok(())
    }
}

/// MSR delta bits for a change of the modem-status inputs from `before` to `after`.
fn msr_deltas(before: u8, after: u8) -> u8 {
    let changed = before ^ after;
    let mut deltas = 0;
    if changed & MSR_CTS != 0 {
        deltas |= MSR_DELTA_CTS;
    }
    if changed & MSR_DSR != 0 {
        deltas |= MSR_DELTA_DSR;
    }
    // TERI flags only the trailing edge of RI (ringing stopped).
    if before & MSR_RI != 0 && after & MSR_RI == 0 {
        deltas |= MSR_TRAILING_EDGE_RI;
    }
    if changed & MSR_DCD != 0 {
        deltas |= MSR_DELTA_DCD;
    }
    deltas
}

impl BusDevice for Serial {
    fn debug_label(&self) -> String {
        self.label.clone()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match data {
            [byte] => {
                *byte = match u8::try_from(offset) {
                    Ok(reg) => self.read_register(reg),
                    Err(_) => {
                        self.log_unimplemented(u8::MAX);
                        0xff
                    }
                }
            }
            other => {
                self.log_access_size(offset, other.len());
                other.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (data, u8::try_from(offset)) {
            ([value], Ok(reg)) => self.write_register(reg, *value),
            ([_], Err(_)) => self.log_unimplemented(u8::MAX),
            (other, _) => self.log_access_size(offset, other.len()),
        }
    }
}

#[cfg(test)]
mod tests;
