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

/// Errors of the UART model.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum SerialError {
    /// A saved state holds more received bytes than its FIFO mode allows.
    #[error(
        "cannot restore the UART: the saved receive FIFO holds {len} bytes but the saved FIFO \
         mode holds at most {capacity}; the state is corrupt"
    )]
    RxFifoTooLong { len: usize, capacity: usize },
}

/// The guest-visible state of a 16550A, for save and restore.
#[derive(Clone, Debug, PartialEq, Eq)]
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

    /// The current state, for a snapshot.
    pub fn save(&self) -> SerialState {
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

    /// Loads a saved state and drives the IRQ line to match it.
    pub fn restore(&mut self, state: &SerialState) -> Result<(), SerialError> {
        let fcr = state.fcr & FCR_KEPT;
        let capacity = if fcr & FCR_FIFO_ENABLE != 0 { FIFO_SIZE } else { 1 };
        if state.rx_fifo.len() > capacity {
            return Err(SerialError::RxFifoTooLong { len: state.rx_fifo.len(), capacity });
        }
        self.dll = state.dll;
        self.dlm = state.dlm;
        self.ier = state.ier & IER_WRITABLE;
        self.lcr = state.lcr;
        self.mcr = state.mcr & MCR_WRITABLE;
        self.scr = state.scr;
        self.fcr = fcr;
        self.lsr_errors = state.lsr_errors & LSR_OVERRUN_ERROR;
        self.msr_deltas = state.msr_deltas & MSR_DELTAS;
        self.thr_empty_pending = state.thr_empty_pending;
        self.rx = state.rx_fifo.iter().copied().collect();
        self.irq_level = self.irq_asserted();
        self.irq.set_level(self.irq_level);
        Ok(())
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
mod tests {
    use super::*;
    use crate::irq::RecordingIrq;
    use parking_lot::Mutex;

    /// A host output the test can inspect.
    #[derive(Clone, Default)]
    struct Output(Arc<Mutex<Vec<u8>>>);

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn uart() -> (Serial, Arc<RecordingIrq>, Output) {
        let irq = Arc::new(RecordingIrq::new());
        let out = Output::default();
        let serial = Serial::new(irq.clone(), Box::new(out.clone()));
        (serial, irq, out)
    }

    fn iir(s: &mut Serial) -> u8 {
        s.read_register(IIR_FCR)
    }

    #[test]
    fn reset_values() {
        let (mut s, irq, _) = uart();
        assert_eq!(s.read_register(IER_DLM), 0x00, "IER");
        assert_eq!(s.read_register(IIR_FCR), 0x01, "IIR");
        assert_eq!(s.read_register(LCR), 0x00, "LCR");
        assert_eq!(s.read_register(MCR), 0x00, "MCR");
        assert_eq!(s.read_register(LSR), 0x60, "LSR");
        assert_eq!(s.read_register(MSR), 0xb0, "MSR: DCD, DSR and CTS from the host");
        assert_eq!(s.read_register(SCR), 0x00, "SCR");
        assert_eq!(s.read_register(RBR_THR_DLL), 0x00, "RBR with nothing received");
        s.write_register(LCR, LCR_DLAB);
        assert_eq!(s.read_register(RBR_THR_DLL), 12, "DLL: 9600 baud");
        assert_eq!(s.read_register(IER_DLM), 0, "DLM");
        assert!(!irq.level());
        assert_eq!(irq.raises(), 0);
    }

    #[test]
    fn reset_keeps_divisor_and_scratch() {
        let (mut s, _, _) = uart();
        s.write_register(LCR, LCR_DLAB);
        s.write_register(RBR_THR_DLL, 1);
        s.write_register(LCR, 0x03);
        s.write_register(SCR, 0x5a);
        s.write_register(IER_DLM, IER_ETBEI);
        s.write_register(MCR, MCR_OUT2);
        s.reset();
        let state = s.save();
        assert_eq!((state.dll, state.scr), (1, 0x5a));
        assert_eq!((state.lcr, state.ier, state.mcr), (0, 0, 0));
        assert_eq!(iir(&mut s), IIR_NO_INT_PENDING);
    }

    #[test]
    fn thr_empty_interrupt() {
        let (mut s, irq, out) = uart();
        s.write_register(MCR, MCR_OUT2);
        assert_eq!(iir(&mut s), IIR_NO_INT_PENDING, "nothing enabled yet");

        // Enabling ETBEI while THR is empty raises the interrupt at once.
        s.write_register(IER_DLM, IER_ETBEI);
        assert!(irq.level());
        // Reading IIR reports it and acknowledges it.
        assert_eq!(iir(&mut s), IIR_ID_THR_EMPTY);
        assert!(!irq.level());
        assert_eq!(iir(&mut s), IIR_NO_INT_PENDING);
        // Writing ETBEI again (1 -> 1) does not re-raise it.
        s.write_register(IER_DLM, IER_ETBEI);
        assert_eq!(iir(&mut s), IIR_NO_INT_PENDING);

        // A THR write transmits and THR empties again: a new interrupt.
        s.write_register(RBR_THR_DLL, b'A');
        assert_eq!(*out.0.lock(), b"A");
        assert!(irq.level());
        assert_eq!(irq.raises(), 2);
        assert_eq!(s.read_register(LSR) & LSR_THR_EMPTY, LSR_THR_EMPTY);
        assert_eq!(iir(&mut s), IIR_ID_THR_EMPTY);
        assert!(!irq.level());

        // Disabling and re-enabling ETBEI raises it again.
        s.write_register(IER_DLM, 0);
        s.write_register(IER_DLM, IER_ETBEI);
        assert_eq!(iir(&mut s), IIR_ID_THR_EMPTY);

        // With ETBEI off, transmitting raises nothing.
        s.write_register(IER_DLM, 0);
        s.write_register(RBR_THR_DLL, b'B');
        assert_eq!(iir(&mut s), IIR_NO_INT_PENDING);
        assert!(!irq.level());
        assert_eq!(*out.0.lock(), b"AB");
    }

    #[test]
    fn divisor_latch() {
        let (mut s, _, out) = uart();
        s.write_register(IER_DLM, IER_ERBFI);
        assert_eq!(s.enqueue_input(b"x"), 1);

        s.write_register(LCR, LCR_DLAB | 0x03);
        s.write_register(RBR_THR_DLL, 0x01);
        s.write_register(IER_DLM, 0x02);
        assert_eq!(s.read_register(RBR_THR_DLL), 0x01);
        assert_eq!(s.read_register(IER_DLM), 0x02);
        assert!(out.0.lock().is_empty(), "a DLL write transmits nothing");
        assert_eq!(s.read_register(LCR), LCR_DLAB | 0x03);

        s.write_register(LCR, 0x03);
        assert_eq!(s.read_register(IER_DLM), IER_ERBFI, "IER is untouched by DLM writes");
        assert_eq!(s.read_register(RBR_THR_DLL), b'x', "RBR is back");
        s.write_register(RBR_THR_DLL, b'y');
        assert_eq!(*out.0.lock(), b"y");
        let state = s.save();
        assert_eq!((state.dll, state.dlm), (0x01, 0x02));
    }

    #[test]
    fn fifo_overflow_from_the_wire() {
        let (mut s, _, _) = uart();
        s.write_register(IIR_FCR, FCR_FIFO_ENABLE);
        let bytes: Vec<u8> = (0..17).collect();
        s.receive(&bytes);
        assert_eq!(s.read_register(LSR), LSR_DATA_READY | LSR_OVERRUN_ERROR | 0x60);
        assert_eq!(s.read_register(LSR) & LSR_OVERRUN_ERROR, 0, "reading LSR clears OE");
        let got: Vec<u8> = (0..16).map(|_| s.read_register(RBR_THR_DLL)).collect();
        assert_eq!(got, bytes[..16], "the 17th byte is dropped");
        assert_eq!(s.read_register(LSR) & LSR_DATA_READY, 0);
    }

    #[test]
    fn fifo_overflow_in_loopback() {
        let (mut s, _, out) = uart();
        s.write_register(IIR_FCR, FCR_FIFO_ENABLE);
        s.write_register(MCR, MCR_LOOP);
        for b in 0..17 {
            s.write_register(RBR_THR_DLL, b);
        }
        assert!(out.0.lock().is_empty());
        assert_eq!(s.read_register(LSR) & LSR_OVERRUN_ERROR, LSR_OVERRUN_ERROR);
        assert_eq!(s.save().rx_fifo, (0..16).collect::<Vec<u8>>());
    }

    #[test]
    fn host_input_is_flow_controlled() {
        let (mut s, _, _) = uart();
        assert_eq!(s.rx_space(), 1, "16450 mode holds one byte");
        s.write_register(IIR_FCR, FCR_FIFO_ENABLE);
        assert_eq!(s.rx_space(), FIFO_SIZE);
        assert_eq!(s.enqueue_input(&[7; 17]), 16);
        assert_eq!(s.rx_space(), 0);
        assert_eq!(s.enqueue_input(b"z"), 0);
        assert_eq!(s.read_register(LSR) & LSR_OVERRUN_ERROR, 0, "no overrun from the host");
        s.read_register(RBR_THR_DLL);
        assert_eq!(s.rx_space(), 1);
    }

    #[test]
    fn overrun_without_fifo_overwrites_rbr() {
        let (mut s, _, _) = uart();
        s.receive(b"ab");
        assert_eq!(s.read_register(LSR), LSR_DATA_READY | LSR_OVERRUN_ERROR | 0x60);
        assert_eq!(s.read_register(RBR_THR_DLL), b'b');
        assert_eq!(s.read_register(LSR), 0x60);
    }

    #[test]
    fn rx_trigger_levels() {
        for (bits, level) in
            [(FCR_RX_TRIGGER_1, 1), (FCR_RX_TRIGGER_4, 4), (FCR_RX_TRIGGER_8, 8), (FCR_RX_TRIGGER_14, 14)]
        {
            let (mut s, irq, _) = uart();
            s.write_register(IIR_FCR, FCR_FIFO_ENABLE | bits);
            s.write_register(IER_DLM, IER_ERBFI);
            s.write_register(MCR, MCR_OUT2);
            assert_eq!(s.enqueue_input(&vec![0; level - 1]), level - 1);
            let below = if level == 1 { IIR_NO_INT_PENDING } else { IIR_ID_CHARACTER_TIMEOUT };
            assert_eq!(iir(&mut s), IIR_FIFOS_ENABLED | below, "trigger {level}, one byte short");
            assert_eq!(irq.level(), level > 1);
            s.enqueue_input(&[0]);
            assert_eq!(iir(&mut s), IIR_FIFOS_ENABLED | IIR_ID_RECEIVED_DATA, "trigger {level}");
            assert!(irq.level());
            // Draining the FIFO clears it.
            for _ in 0..level {
                s.read_register(RBR_THR_DLL);
            }
            assert_eq!(iir(&mut s), IIR_FIFOS_ENABLED | IIR_NO_INT_PENDING);
            assert!(!irq.level());
        }
    }

    #[test]
    fn fcr_semantics() {
        let (mut s, _, _) = uart();
        // Bits other than bit 0 are ignored while bit 0 is written as 0.
        s.write_register(IIR_FCR, FCR_RX_TRIGGER_8);
        assert_eq!(s.save().fcr, 0);
        assert_eq!(iir(&mut s), IIR_NO_INT_PENDING);

        s.write_register(IIR_FCR, FCR_FIFO_ENABLE | FCR_RX_TRIGGER_8);
        assert_eq!(iir(&mut s), IIR_FIFOS_ENABLED | IIR_NO_INT_PENDING);
        s.enqueue_input(b"abc");
        s.write_register(IIR_FCR, FCR_FIFO_ENABLE | FCR_RX_TRIGGER_8 | FCR_RX_FIFO_RESET);
        assert_eq!(s.save().rx_fifo, b"");
        assert_eq!(s.save().fcr, FCR_FIFO_ENABLE | FCR_RX_TRIGGER_8, "reset bits clear themselves");

        // Resetting the transmit FIFO raises THR empty.
        s.write_register(IER_DLM, IER_ETBEI);
        assert_eq!(iir(&mut s), IIR_FIFOS_ENABLED | IIR_ID_THR_EMPTY);
        s.write_register(IIR_FCR, FCR_FIFO_ENABLE | FCR_TX_FIFO_RESET);
        assert_eq!(iir(&mut s), IIR_FIFOS_ENABLED | IIR_ID_THR_EMPTY);

        // Leaving FIFO mode empties the FIFO.
        s.enqueue_input(b"abc");
        s.write_register(IIR_FCR, 0);
        assert_eq!(s.save().rx_fifo, b"");
        assert_eq!(s.rx_space(), 1);
    }

    #[test]
    fn writable_bits() {
        let (mut s, _, _) = uart();
        s.write_register(IER_DLM, 0xff);
        assert_eq!(s.read_register(IER_DLM), 0x0f);
        s.write_register(MCR, 0xff);
        assert_eq!(s.read_register(MCR), 0x1f);
        s.write_register(SCR, 0xa5);
        assert_eq!(s.read_register(SCR), 0xa5);
        // LSR and MSR ignore writes.
        s.write_register(MCR, 0);
        s.read_register(MSR);
        s.write_register(LSR, 0);
        s.write_register(MSR, 0);
        assert_eq!(s.read_register(LSR), 0x60);
        assert_eq!(s.read_register(MSR), 0xb0);
    }

    #[test]
    fn loopback() {
        let (mut s, irq, out) = uart();
        s.write_register(IER_DLM, IER_ERBFI);
        s.write_register(MCR, MCR_LOOP);
        // Modem inputs now come from the (inactive) outputs: DSR, CTS and DCD fell.
        assert_eq!(s.read_register(MSR), MSR_DELTA_CTS | MSR_DELTA_DSR | MSR_DELTA_DCD, "inputs low, deltas set");
        assert_eq!(s.read_register(MSR), 0, "reading MSR clears the deltas");

        // Each output loops to its input.
        for (out_bit, in_bit) in [(MCR_DTR, MSR_DSR), (MCR_RTS, MSR_CTS), (MCR_OUT1, MSR_RI), (MCR_OUT2, MSR_DCD)] {
            s.write_register(MCR, MCR_LOOP | out_bit);
            assert_eq!(s.read_register(MSR) & 0xf0, in_bit);
            s.write_register(MCR, MCR_LOOP);
            s.read_register(MSR);
        }
        // RI gives a delta only on its trailing edge.
        s.write_register(MCR, MCR_LOOP | MCR_OUT1);
        assert_eq!(s.read_register(MSR), MSR_RI);
        s.write_register(MCR, MCR_LOOP);
        assert_eq!(s.read_register(MSR), MSR_TRAILING_EDGE_RI);
        // Linux's probe: LOOP | OUT2 | RTS must read DCD | CTS.
        s.write_register(MCR, MCR_LOOP | MCR_OUT2 | MCR_RTS);
        assert_eq!(s.read_register(MSR) & 0xf0, 0x90);

        // THR goes to RBR, not to the host; host input is disconnected.
        s.write_register(RBR_THR_DLL, b'L');
        assert!(out.0.lock().is_empty());
        assert_eq!(s.rx_space(), 0);
        assert_eq!(s.enqueue_input(b"h"), 0);
        s.receive(b"h");
        // The interrupt is identified, but the OUT2 pin is forced inactive.
        assert_eq!(iir(&mut s), IIR_ID_RECEIVED_DATA);
        assert!(!irq.level());
        assert_eq!(s.read_register(RBR_THR_DLL), b'L');
        assert_eq!(s.read_register(LSR) & LSR_DATA_READY, 0);

        // Leaving loopback restores the host inputs and the host output.
        s.write_register(MCR, MCR_OUT2);
        assert_eq!(s.read_register(MSR) & 0xf0, MSR_HOST_INPUTS);
        s.write_register(RBR_THR_DLL, b'T');
        assert_eq!(*out.0.lock(), b"T");
    }

    #[test]
    fn irq_gated_by_out2() {
        let (mut s, irq, _) = uart();
        s.write_register(IER_DLM, IER_ERBFI);
        s.enqueue_input(b"k");
        assert_eq!(iir(&mut s), IIR_ID_RECEIVED_DATA);
        assert!(!irq.level(), "OUT2 clear: the IRQ is not driven");
        s.write_register(MCR, MCR_DTR | MCR_RTS);
        assert!(!irq.level());
        s.write_register(MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
        assert!(irq.level());
        s.write_register(MCR, MCR_DTR | MCR_RTS);
        assert!(!irq.level());
        s.write_register(MCR, MCR_OUT2);
        assert!(irq.level());
        s.read_register(RBR_THR_DLL);
        assert!(!irq.level());
        assert_eq!(irq.raises(), 2);
    }

    #[test]
    fn iir_priority_order() {
        let (mut s, irq, _) = uart();
        // A modem-status delta: into loopback and back out.
        s.write_register(MCR, MCR_LOOP);
        s.write_register(MCR, MCR_OUT2);
        // An overrun with data held (16450 mode).
        s.receive(b"12");
        // Everything enabled; ETBEI 0 -> 1 latches THR empty.
        s.write_register(IER_DLM, IER_WRITABLE);
        assert!(irq.level());

        assert_eq!(iir(&mut s), IIR_ID_RECEIVER_LINE_STATUS);
        assert_eq!(iir(&mut s), IIR_ID_RECEIVER_LINE_STATUS, "IIR reads do not clear it");
        s.read_register(LSR);
        assert_eq!(iir(&mut s), IIR_ID_RECEIVED_DATA);
        s.read_register(RBR_THR_DLL);
        assert_eq!(iir(&mut s), IIR_ID_THR_EMPTY);
        assert_eq!(iir(&mut s), IIR_ID_MODEM_STATUS, "the IIR read acknowledged THR empty");
        assert!(irq.level());
        s.read_register(MSR);
        assert_eq!(iir(&mut s), IIR_NO_INT_PENDING);
        assert!(!irq.level());
    }

    #[test]
    fn iir_reports_thr_empty_only_when_it_is_the_top_source() {
        let (mut s, _, _) = uart();
        s.write_register(IER_DLM, IER_ERBFI | IER_ETBEI);
        s.enqueue_input(b"d");
        assert_eq!(iir(&mut s), IIR_ID_RECEIVED_DATA);
        s.read_register(RBR_THR_DLL);
        assert_eq!(iir(&mut s), IIR_ID_THR_EMPTY, "still latched behind received data");
    }

    #[test]
    fn save_restore_round_trip() {
        let (mut s, _, _) = uart();
        s.write_register(LCR, LCR_DLAB);
        s.write_register(RBR_THR_DLL, 3);
        s.write_register(LCR, 0x1b);
        s.write_register(IIR_FCR, FCR_FIFO_ENABLE | FCR_RX_TRIGGER_4);
        s.write_register(SCR, 0x42);
        s.write_register(MCR, MCR_LOOP);
        s.write_register(MCR, MCR_OUT2 | MCR_DTR);
        s.write_register(IER_DLM, IER_ERBFI | IER_ETBEI);
        s.enqueue_input(b"hello");
        let state = s.save();

        let (mut t, irq, _) = uart();
        t.restore(&state).unwrap();
        assert_eq!(t.save(), state);
        assert!(irq.level(), "restore drives the line to match the state");
        assert_eq!(iir(&mut t), IIR_FIFOS_ENABLED | IIR_ID_RECEIVED_DATA);
        assert_eq!(t.read_register(RBR_THR_DLL), b'h');

        let mut bad = state.clone();
        bad.fcr = 0;
        assert_eq!(t.restore(&bad), Err(SerialError::RxFifoTooLong { len: 5, capacity: 1 }));
    }

    #[test]
    fn bus_accesses_of_the_wrong_size_are_ignored() {
        let (mut s, _, out) = uart();
        let mut word = [0u8; 2];
        BusDevice::read(&mut s, 0, &mut word);
        assert_eq!(word, [0xff, 0xff]);
        BusDevice::write(&mut s, 0, b"ab");
        BusDevice::write(&mut s, 0, &[]);
        assert!(out.0.lock().is_empty());

        let mut byte = [0u8; 1];
        BusDevice::read(&mut s, 5, &mut byte);
        assert_eq!(byte, [0x60]);
        BusDevice::read(&mut s, 8, &mut byte);
        assert_eq!(byte, [0xff], "past the last register");
        BusDevice::read(&mut s, 0x1_0000_0000, &mut byte);
        assert_eq!(byte, [0xff]);
        BusDevice::write(&mut s, 0x1_0000_0000, &[1]);
        BusDevice::write(&mut s, 0, b"Z");
        assert_eq!(*out.0.lock(), b"Z");
        assert_eq!(s.debug_label(), "serial");
        assert_eq!(s.with_label("serial (COM1)").debug_label(), "serial (COM1)");
    }

    #[test]
    fn a_failing_output_does_not_panic() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut s = Serial::new(Arc::new(RecordingIrq::new()), Box::new(Broken));
        s.write_register(RBR_THR_DLL, b'a');
        s.write_register(RBR_THR_DLL, b'b');
        assert_eq!(s.read_register(LSR), 0x60);
    }

    #[test]
    fn works_behind_the_bus() {
        let (s, irq, out) = uart();
        let dev = Arc::new(Mutex::new(s));
        let mut bus = crate::bus::Bus::new();
        bus.insert(dev.clone(), u64::from(COM1_PORT), SERIAL_PORT_LEN).unwrap();
        assert!(bus.write(u64::from(COM1_PORT) + 4, &[MCR_OUT2]));
        assert!(bus.write(u64::from(COM1_PORT) + 1, &[IER_ERBFI]));
        assert_eq!(dev.lock().enqueue_input(b"q"), 1);
        assert!(irq.level());
        let mut b = [0u8];
        assert!(bus.read(u64::from(COM1_PORT), &mut b));
        assert_eq!(b, *b"q");
        assert!(bus.write(u64::from(COM1_PORT), b"w"));
        assert_eq!(*out.0.lock(), b"w");
    }
}
