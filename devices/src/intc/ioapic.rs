//! The I/O APIC: 24 interrupt inputs turned into messages to local APICs.
//!
//! Datasheet: Intel 82093AA "I/O Advanced Programmable Interrupt Controller
//! (IOAPIC)", order number 290566: section 3.0 "Register Description"
//! (IOREGSEL, IOWIN, IOAPICID, IOAPICVER, IOAPICARB, IOREDTBL\[23:0\]).
//!
//! ```text
//! MMIO (base 0xFEC0_0000)      indirect registers (index in IOREGSEL)
//! 0x00  IOREGSEL  index, R/W   0x00        IOAPICID   bits 27:24 ID
//! 0x10  IOWIN     data, R/W    0x01        IOAPICVER  bits 23:16 max entry (23), 7:0 version (0x11)
//!                              0x02        IOAPICARB  bits 27:24 arbitration ID, read-only
//!                              0x10+2n     IOREDTBLn, low dword
//!                              0x11+2n     IOREDTBLn, high dword
//!
//! Redirection table entry (64 bits)
//!  63      56 55        17  16   15   14   13   12   11   10   8 7      0
//! +----------+------------+----+----+----+----+----+----+-------+--------+
//! | dest     | reserved   |mask|trig|rIRR|pol |dlvs|dstm| dlvm  | vector |
//! +----------+------------+----+----+----+----+----+----+-------+--------+
//!  dest  APIC ID (physical) or logical destination set
//!  mask  1 = masked (the reset value)      trig  1 = level, 0 = edge
//!  rIRR  remote IRR, read-only: a level interrupt was accepted and awaits EOI
//!  pol   1 = active low                    dlvs  delivery status, read-only
//!  dstm  1 = logical destination           dlvm  000 fixed, 001 lowest priority,
//!        010 SMI, 100 NMI, 101 INIT, 111 ExtINT
//! ```
//!
//! Model choices:
//! - An input's level is its asserted state, as the [`crate::IrqLine`] that
//!   drives it says. The polarity bit is stored for the guest and not applied
//!   (QEMU does the same); the firmware's tables and the wiring agree on
//!   which lines are active low.
//! - Delivery is instant, so the delivery status bit always reads idle.
//! - An edge on a masked pin is lost, as the datasheet says. A level input
//!   still asserted when its pin is unmasked is delivered then.
//! - The remote IRR of a level interrupt is set only when a local APIC took
//!   the message, so a message to nowhere cannot wedge the pin.
//! - A redirection entry written with a delivery mode the datasheet
//!   reserves (011b, 110b) keeps its previous mode (logged once): the table
//!   only ever holds the six defined modes.

use persist::{Persist, PersistError};

use crate::log_once::{LogOnce, Misuse};

/// Base of the I/O APIC's MMIO window, as the MADT and MP table announce it.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The I/O APIC decodes one 4 KiB page.
pub const IOAPIC_MMIO_LEN: u64 = 0x1000;
/// Number of interrupt inputs (redirection table entries).
pub const IOAPIC_NUM_PINS: usize = 24;
/// Version of the 82093AA.
pub const IOAPIC_VERSION: u8 = 0x11;

// MMIO offsets.
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;

// Indirect register indices.
const IOAPICID: u8 = 0x00;
const IOAPICVER: u8 = 0x01;
const IOAPICARB: u8 = 0x02;
const IOREDTBL_FIRST: u8 = 0x10;
const IOREDTBL_LAST: u8 = IOREDTBL_FIRST + 2 * IOAPIC_NUM_PINS as u8 - 1;

const ID_SHIFT: u32 = 24;
const ID_MASK: u32 = 0x0f00_0000;
const VERSION_MAX_ENTRY_SHIFT: u32 = 16;

// Redirection entry fields.
const RTE_VECTOR: u64 = 0xff;
const RTE_DELIVERY_MODE_SHIFT: u32 = 8;
const RTE_DELIVERY_MODE: u64 = 0b111 << RTE_DELIVERY_MODE_SHIFT;
const RTE_DEST_LOGICAL: u64 = 1 << 11;
const RTE_DELIVERY_STATUS: u64 = 1 << 12;
const RTE_POLARITY_LOW: u64 = 1 << 13;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
const RTE_DEST_SHIFT: u32 = 56;
/// Bits the guest writes; delivery status and remote IRR are read-only and
/// bits 55:17 are reserved.
const RTE_WRITABLE: u64 = (0xff << RTE_DEST_SHIFT)
    | RTE_MASKED
    | RTE_LEVEL
    | RTE_POLARITY_LOW
    | RTE_DEST_LOGICAL
    | RTE_DELIVERY_MODE
    | RTE_VECTOR;
/// Every entry starts masked.
const RTE_RESET: u64 = RTE_MASKED;
/// The delivery modes the 82093AA reserves.
const RESERVED_DELIVERY_MODES: [u64; 2] = [0b011, 0b110];

/// Whether `entry`'s delivery mode is one the datasheet defines.
fn delivery_mode_defined(entry: u64) -> bool {
    !RESERVED_DELIVERY_MODES.contains(&((entry & RTE_DELIVERY_MODE) >> RTE_DELIVERY_MODE_SHIFT))
}

/// How a destination handles an interrupt message (APIC delivery modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// To every destination's INTR with the vector.
    Fixed,
    /// To the destination running at the lowest priority.
    LowestPriority,
    /// System management interrupt.
    Smi,
    /// Non-maskable interrupt; the vector is ignored.
    Nmi,
    /// INIT: reset the destination CPU.
    Init,
    /// Startup IPI; the vector is the start page.
    StartUp,
    /// The vector comes from an 8259A's INTA cycle.
    ExtInt,
    /// A reserved encoding.
    Reserved(u8),
}

impl DeliveryMode {
    /// Decodes the 3-bit delivery mode field.
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0b111 {
            0b000 => DeliveryMode::Fixed,
            0b001 => DeliveryMode::LowestPriority,
            0b010 => DeliveryMode::Smi,
            0b100 => DeliveryMode::Nmi,
            0b101 => DeliveryMode::Init,
            0b110 => DeliveryMode::StartUp,
            0b111 => DeliveryMode::ExtInt,
            other => DeliveryMode::Reserved(other),
        }
    }
}

/// An interrupt message to local APICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptMessage {
    /// The vector.
    pub vector: u8,
    /// What the destination does with it.
    pub delivery_mode: DeliveryMode,
    /// The destination is a logical set (else an APIC ID).
    pub logical: bool,
    /// APIC ID or logical destination; 0xFF is everyone.
    pub destination: u32,
    /// Level-triggered: the destination sets its TMR bit and EOIs back.
    pub level_triggered: bool,
}

/// The guest-visible state of the I/O APIC, for save and restore.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct IoApicState {
    /// IOAPICID.
    pub id: u32,
    /// IOREGSEL.
    pub regsel: u8,
    /// The redirection table, remote IRR bits included.
    pub redirection: [u64; IOAPIC_NUM_PINS],
    /// The asserted inputs, bit n for pin n.
    pub lines: u32,
}

impl IoApicState {
    /// The state of an I/O APIC whose registers a hypervisor gives: APIC ID
    /// `id` (0..=15), IOREGSEL `regsel` and the redirection entries, with
    /// the read-only delivery-status bit and reserved bits dropped and an
    /// edge entry's remote IRR cleared. The input lines are left low; the
    /// controller that takes the state sets them from its sources.
    pub fn from_registers(id: u32, regsel: u8, redirection: &[u64; IOAPIC_NUM_PINS]) -> Self {
        let redirection = redirection.map(|e| {
            let e = e & (RTE_WRITABLE | RTE_REMOTE_IRR);
            if e & RTE_LEVEL == 0 {
                e & !RTE_REMOTE_IRR
            } else {
                e
            }
        });
        Self { id: (id << ID_SHIFT) & ID_MASK, regsel, redirection, lines: 0 }
    }

    /// The APIC ID (0..=15), unshifted.
    pub fn apic_id(&self) -> u32 {
        (self.id & ID_MASK) >> ID_SHIFT
    }

    /// Whether pin `pin`'s entry is level-triggered.
    pub fn level_triggered(&self, pin: usize) -> bool {
        self.redirection.get(pin).is_some_and(|e| e & RTE_LEVEL != 0)
    }
}

/// The I/O APIC core. Delivery goes through a callback that returns whether
/// a local APIC accepted the message.
#[derive(Debug)]
pub struct IoApic {
    id: u32,
    regsel: u8,
    redirection: [u64; IOAPIC_NUM_PINS],
    lines: u32,
    log: LogOnce,
}

impl Default for IoApic {
    fn default() -> Self {
        Self::new(0)
    }
}

/// The delivery callback: sends a message, true if a local APIC accepted it.
pub type Deliver<'a> = dyn FnMut(InterruptMessage) -> bool + 'a;

impl IoApic {
    /// An I/O APIC with APIC ID `id` (0..=15), every entry masked.
    pub fn new(id: u8) -> Self {
        Self {
            id: (u32::from(id) << ID_SHIFT) & ID_MASK,
            regsel: 0,
            redirection: [RTE_RESET; IOAPIC_NUM_PINS],
            lines: 0,
            log: LogOnce::new(),
        }
    }

    /// The redirection entry of `pin`, for inspection.
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.redirection.get(pin).copied()
    }

    fn message(entry: u64) -> InterruptMessage {
        InterruptMessage {
            vector: (entry & RTE_VECTOR) as u8,
            delivery_mode: DeliveryMode::from_bits(((entry & RTE_DELIVERY_MODE) >> RTE_DELIVERY_MODE_SHIFT) as u8),
            logical: entry & RTE_DEST_LOGICAL != 0,
            destination: (entry >> RTE_DEST_SHIFT) as u32,
            level_triggered: entry & RTE_LEVEL != 0,
        }
    }

    /// Delivers a level-triggered pin if it is asserted, unmasked and not
    /// waiting for an EOI.
    fn service_level(&mut self, pin: usize, deliver: &mut Deliver<'_>) {
        let entry = self.redirection[pin];
        let asserted = self.lines & (1 << pin) != 0;
        if entry & RTE_LEVEL == 0 || entry & (RTE_MASKED | RTE_REMOTE_IRR) != 0 || !asserted {
            return;
        }
        let msg = Self::message(entry);
        let accepted = deliver(msg);
        // Only fixed and lowest-priority interrupts are EOIed back.
        if accepted && matches!(msg.delivery_mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) {
            self.redirection[pin] |= RTE_REMOTE_IRR;
        }
    }

    /// Drives input `pin` to `level` (asserted or not).
    pub fn set_irq(&mut self, pin: usize, level: bool, deliver: &mut Deliver<'_>) {
        if pin >= IOAPIC_NUM_PINS {
            if self.log.first(Misuse::Unimplemented) {
                tracing::warn!(target: "devices", pin, "IOAPIC: no such input pin; ignored (logged once)");
            }
            return;
        }
        let bit = 1u32 << pin;
        let was = self.lines & bit != 0;
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        let entry = self.redirection[pin];
        if entry & RTE_LEVEL != 0 {
            self.service_level(pin, deliver);
        } else if level && !was && entry & RTE_MASKED == 0 {
            deliver(Self::message(entry));
        }
    }

    /// An EOI broadcast by a local APIC for `vector`: clears the remote IRR of
    /// the level entries with that vector and re-delivers those still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8, deliver: &mut Deliver<'_>) {
        for pin in 0..IOAPIC_NUM_PINS {
            let entry = self.redirection[pin];
            if entry & RTE_REMOTE_IRR != 0 && (entry & RTE_VECTOR) as u8 == vector {
                self.redirection[pin] &= !RTE_REMOTE_IRR;
                self.service_level(pin, deliver);
            }
        }
    }

    fn read_register(&self, index: u8) -> u32 {
        match index {
            IOAPICID => self.id,
            IOAPICVER => ((IOAPIC_NUM_PINS as u32 - 1) << VERSION_MAX_ENTRY_SHIFT) | u32::from(IOAPIC_VERSION),
            // The arbitration ID is loaded from the APIC ID.
            IOAPICARB => self.id,
            IOREDTBL_FIRST..=IOREDTBL_LAST => {
                let pin = usize::from((index - IOREDTBL_FIRST) / 2);
                let entry = self.redirection[pin] & !RTE_DELIVERY_STATUS;
                if index & 1 == 0 {
                    entry as u32
                } else {
                    (entry >> 32) as u32
                }
            }
            _ => {
                self.log_register(index);
                0
            }
        }
    }

    fn write_register(&mut self, index: u8, value: u32, deliver: &mut Deliver<'_>) {
        match index {
            IOAPICID => self.id = value & ID_MASK,
            IOAPICVER | IOAPICARB => {}
            IOREDTBL_FIRST..=IOREDTBL_LAST => {
                let pin = usize::from((index - IOREDTBL_FIRST) / 2);
                let old = self.redirection[pin];
                let (keep, new) = if index & 1 == 0 {
                    (0xffff_ffff_0000_0000, u64::from(value))
                } else {
                    (0x0000_0000_ffff_ffff, u64::from(value) << 32)
                };
                let mut entry = (old & keep) | (new & !keep);
                entry = (entry & RTE_WRITABLE) | (old & RTE_REMOTE_IRR);
                if !delivery_mode_defined(entry) {
                    if self.log.first(Misuse::BadValue) {
                        tracing::warn!(
                            target: "devices",
                            pin,
                            entry = format_args!("{entry:#x}"),
                            "IOAPIC: reserved delivery mode; the entry keeps its previous mode (logged once)"
                        );
                    }
                    entry = (entry & !RTE_DELIVERY_MODE) | (old & RTE_DELIVERY_MODE);
                }
                if entry & RTE_LEVEL == 0 {
                    // Remote IRR means nothing for an edge entry.
                    entry &= !RTE_REMOTE_IRR;
                }
                self.redirection[pin] = entry;
                self.service_level(pin, deliver);
            }
            _ => self.log_register(index),
        }
    }

    /// An MMIO read at `offset` from the base.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (IOREGSEL, 1 | 2 | 4) => u32::from(self.regsel),
            (IOWIN, 4) => self.read_register(self.regsel),
            _ => {
                self.log_access(offset, data.len());
                data.fill(0xff);
                return;
            }
        };
        crate::access::fill_le(data, u64::from(value));
    }

    /// An MMIO write at `offset` from the base.
    pub fn write(&mut self, offset: u64, data: &[u8], deliver: &mut Deliver<'_>) {
        match (offset, data) {
            (IOREGSEL, [index, ..]) if matches!(data.len(), 1 | 2 | 4) => self.regsel = *index,
            (IOWIN, &[b0, b1, b2, b3]) => {
                let value = u32::from_le_bytes([b0, b1, b2, b3]);
                self.write_register(self.regsel, value, deliver);
            }
            _ => self.log_access(offset, data.len()),
        }
    }

    fn log_register(&self, index: u8) {
        if self.log.first(Misuse::Unimplemented) {
            tracing::warn!(target: "devices", index, "IOAPIC: no such register; access ignored (logged once)");
        }
    }

    fn log_access(&self, offset: u64, size: usize) {
        if self.log.first(Misuse::AccessSize) {
            tracing::warn!(
                target: "devices",
                offset,
                size,
                "IOAPIC: only IOREGSEL and 32-bit IOWIN accesses are decoded; access ignored (logged once)"
            );
        }
    }
}

/// The part name the I/O APIC's errors carry.
const PART: &str = "I/O APIC";

/// Restore checks the ID's bits, each redirection entry (no reserved or
/// read-only bits but the remote IRR, and that only on a level entry; a
/// defined delivery mode) and the input lines (24 pins). Nothing is
/// delivered: pending work resumes with the next input change or EOI.
impl Persist for IoApic {
    type State = IoApicState;

    fn save(&self) -> IoApicState {
        IoApicState { id: self.id, regsel: self.regsel, redirection: self.redirection, lines: self.lines }
    }

    fn restore(&mut self, state: &IoApicState) -> Result<(), PersistError> {
        Self::check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

impl IoApic {
    /// The checks of [`Persist::restore`], changing nothing.
    pub(crate) fn check_state(state: &IoApicState) -> Result<(), PersistError> {
        PersistError::check(state.id & !ID_MASK == 0, PART, "id", || {
            format!("is {:#010x}; the APIC ID is bits 27:24", state.id)
        })?;
        for (pin, &entry) in state.redirection.iter().enumerate() {
            PersistError::check(entry & !(RTE_WRITABLE | RTE_REMOTE_IRR) == 0, PART, "redirection", || {
                format!("entry {pin} is {entry:#018x}, with reserved or read-only bits set")
            })?;
            PersistError::check(entry & RTE_REMOTE_IRR == 0 || entry & RTE_LEVEL != 0, PART, "redirection", || {
                format!("entry {pin} is {entry:#018x}: an edge entry with its remote IRR set")
            })?;
            PersistError::check(delivery_mode_defined(entry), PART, "redirection", || {
                format!("entry {pin} is {entry:#018x}, with a reserved delivery mode")
            })?;
        }
        PersistError::check_max(PART, "lines", state.lines, (1 << IOAPIC_NUM_PINS) - 1)
    }

    /// Loads a state [`IoApic::check_state`] passed.
    pub(crate) fn load_state(&mut self, state: &IoApicState) {
        self.id = state.id;
        self.regsel = state.regsel;
        self.redirection = state.redirection;
        self.lines = state.lines;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects the messages; accepts them when `accept` is set.
    struct Sink {
        msgs: Vec<InterruptMessage>,
        accept: bool,
    }

    impl Sink {
        fn new() -> Self {
            Self { msgs: Vec::new(), accept: true }
        }
        fn f(&mut self) -> impl FnMut(InterruptMessage) -> bool + '_ {
            |m| {
                self.msgs.push(m);
                self.accept
            }
        }
    }

    fn write_reg(io: &mut IoApic, index: u8, value: u32, sink: &mut Sink) {
        io.write(IOREGSEL, &[index], &mut sink.f());
        io.write(IOWIN, &value.to_le_bytes(), &mut sink.f());
    }

    fn read_reg(io: &mut IoApic, index: u8) -> u32 {
        let mut sink = Sink::new();
        io.write(IOREGSEL, &[index], &mut sink.f());
        let mut d = [0u8; 4];
        io.read(IOWIN, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn identification_registers() {
        let mut io = IoApic::new(2);
        assert_eq!(read_reg(&mut io, IOAPICID), 0x0200_0000);
        assert_eq!(read_reg(&mut io, IOAPICVER), 0x0017_0011);
        assert_eq!(read_reg(&mut io, IOAPICARB), 0x0200_0000);
        let mut sink = Sink::new();
        write_reg(&mut io, IOAPICID, 0xffff_ffff, &mut sink);
        assert_eq!(read_reg(&mut io, IOAPICID), 0x0f00_0000);
        write_reg(&mut io, IOAPICVER, 0, &mut sink);
        assert_eq!(read_reg(&mut io, IOAPICVER), 0x0017_0011, "read-only");
        let mut d = [0u8; 1];
        io.read(IOREGSEL, &mut d);
        assert_eq!(d, [IOAPICVER]);
        assert_eq!(read_reg(&mut io, 0x05), 0, "unknown register reads 0");
    }

    #[test]
    fn entries_reset_masked_and_keep_reserved_bits_clear() {
        let mut io = IoApic::new(0);
        for pin in 0..IOAPIC_NUM_PINS as u8 {
            assert_eq!(read_reg(&mut io, 0x10 + 2 * pin), 0x0001_0000);
            assert_eq!(read_reg(&mut io, 0x11 + 2 * pin), 0);
        }
        let mut sink = Sink::new();
        write_reg(&mut io, 0x10, 0xffff_ffff, &mut sink);
        write_reg(&mut io, 0x11, 0xffff_ffff, &mut sink);
        assert_eq!(read_reg(&mut io, 0x10), 0x0001_afff);
        assert_eq!(read_reg(&mut io, 0x11), 0xff00_0000);
        assert!(sink.msgs.is_empty());
    }

    #[test]
    fn edge_pin_delivers_on_rising_edges_only() {
        let mut io = IoApic::new(0);
        let mut sink = Sink::new();
        write_reg(&mut io, 0x14, 0x30, &mut sink); // pin 2, vector 0x30, edge, unmasked
        write_reg(&mut io, 0x15, 0x0100_0000, &mut sink);
        io.set_irq(2, true, &mut sink.f());
        io.set_irq(2, true, &mut sink.f());
        io.set_irq(2, false, &mut sink.f());
        assert_eq!(
            sink.msgs,
            vec![InterruptMessage {
                vector: 0x30,
                delivery_mode: DeliveryMode::Fixed,
                logical: false,
                destination: 1,
                level_triggered: false,
            }]
        );
        assert_eq!(read_reg(&mut io, 0x14) & (1 << 14), 0, "no remote IRR for edges");
    }

    #[test]
    fn masked_edges_are_lost() {
        let mut io = IoApic::new(0);
        let mut sink = Sink::new();
        write_reg(&mut io, 0x12, 0x0001_0031, &mut sink); // pin 1 masked
        io.set_irq(1, true, &mut sink.f());
        io.set_irq(1, false, &mut sink.f());
        write_reg(&mut io, 0x12, 0x31, &mut sink);
        assert!(sink.msgs.is_empty());
    }

    #[test]
    fn level_pin_waits_for_eoi_then_redelivers() {
        let mut io = IoApic::new(0);
        let mut sink = Sink::new();
        write_reg(&mut io, 0x10 + 2 * 10, 0x0000_a041, &mut sink); // pin 10: level, low active, vector 0x41
        io.set_irq(10, true, &mut sink.f());
        assert_eq!(sink.msgs.len(), 1);
        assert!(sink.msgs[0].level_triggered);
        assert_ne!(read_reg(&mut io, 0x24) & (1 << 14), 0, "remote IRR set");
        io.set_irq(10, true, &mut sink.f());
        assert_eq!(sink.msgs.len(), 1, "nothing more until the EOI");
        io.end_of_interrupt(0x42, &mut sink.f());
        assert_eq!(sink.msgs.len(), 1, "an EOI for another vector does nothing");
        io.end_of_interrupt(0x41, &mut sink.f());
        assert_eq!(sink.msgs.len(), 2, "still asserted: delivered again");
        io.set_irq(10, false, &mut sink.f());
        io.end_of_interrupt(0x41, &mut sink.f());
        assert_eq!(sink.msgs.len(), 2);
        assert_eq!(read_reg(&mut io, 0x24) & (1 << 14), 0);
        assert_ne!(read_reg(&mut io, 0x24) & (1 << 13), 0, "polarity is kept");
    }

    #[test]
    fn unmasking_an_asserted_level_pin_delivers() {
        let mut io = IoApic::new(0);
        let mut sink = Sink::new();
        write_reg(&mut io, 0x22, 0x0001_8039, &mut sink); // pin 9 level, masked
        io.set_irq(9, true, &mut sink.f());
        assert!(sink.msgs.is_empty());
        write_reg(&mut io, 0x22, 0x0000_8039, &mut sink);
        assert_eq!(sink.msgs.len(), 1);
    }

    #[test]
    fn refused_level_messages_leave_remote_irr_clear() {
        let mut io = IoApic::new(0);
        let mut sink = Sink::new();
        sink.accept = false;
        write_reg(&mut io, 0x16, 0x0000_8050, &mut sink);
        io.set_irq(3, true, &mut sink.f());
        assert_eq!(sink.msgs.len(), 1);
        assert_eq!(read_reg(&mut io, 0x16) & (1 << 14), 0);
        // Switching to edge mode clears a stale remote IRR.
        sink.accept = true;
        io.set_irq(3, false, &mut sink.f());
        io.set_irq(3, true, &mut sink.f());
        assert_ne!(read_reg(&mut io, 0x16) & (1 << 14), 0);
        write_reg(&mut io, 0x16, 0x50, &mut sink);
        assert_eq!(read_reg(&mut io, 0x16) & (1 << 14), 0);
    }

    #[test]
    fn delivery_modes_and_logical_destinations_are_decoded() {
        let mut io = IoApic::new(0);
        let mut sink = Sink::new();
        write_reg(&mut io, 0x11, 0x0300_0000, &mut sink);
        write_reg(&mut io, 0x10, 0x0000_0f00, &mut sink); // logical, ExtINT
        io.set_irq(0, true, &mut sink.f());
        assert_eq!(sink.msgs[0].delivery_mode, DeliveryMode::ExtInt);
        assert!(sink.msgs[0].logical);
        assert_eq!(sink.msgs[0].destination, 3);
        assert_eq!(DeliveryMode::from_bits(0b011), DeliveryMode::Reserved(3));
        assert_eq!(DeliveryMode::from_bits(0b100), DeliveryMode::Nmi);
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let mut io = IoApic::new(0);
        let mut sink = Sink::new();
        let mut d = [0u8; 2];
        io.read(IOWIN, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        io.write(IOWIN, &[1, 2], &mut sink.f());
        io.write(0x20, &[1, 2, 3, 4], &mut sink.f());
        io.write(IOREGSEL, &[1, 2, 3], &mut sink.f());
        io.set_irq(24, true, &mut sink.f());
        assert!(sink.msgs.is_empty());
        assert_eq!(io.entry(24), None);
        assert_eq!(io.entry(0), Some(RTE_RESET));
    }

    #[test]
    fn state_round_trips() {
        let mut io = IoApic::new(1);
        let mut sink = Sink::new();
        write_reg(&mut io, 0x20, 0x0000_8033, &mut sink);
        io.set_irq(8, true, &mut sink.f());
        let state = io.save();
        let mut other = IoApic::new(0);
        other.restore(&state).unwrap();
        assert_eq!(other.save(), state);
        other.end_of_interrupt(0x33, &mut sink.f());
        assert_eq!(sink.msgs.len(), 2);
    }

    #[test]
    fn reserved_delivery_modes_are_not_stored() {
        let mut io = IoApic::new(0);
        let mut sink = Sink::new();
        write_reg(&mut io, 0x10 + 2 * 4, 0x0001_0431, &mut sink); // NMI, masked
        for reserved in [0b011, 0b110] {
            write_reg(&mut io, 0x10 + 2 * 4, 0x0001_0031 | (reserved << 8), &mut sink);
            assert_eq!(read_reg(&mut io, 0x10 + 2 * 4), 0x0001_0431, "mode {reserved:03b}: the NMI mode stays");
        }
        write_reg(&mut io, 0x10 + 2 * 4, 0x0001_0532, &mut sink);
        assert_eq!(read_reg(&mut io, 0x10 + 2 * 4), 0x0001_0532, "INIT is a defined mode");
    }

    /// Pins with every kind of entry: a level pin waiting for its EOI, an
    /// edge pin, a masked asserted level pin, a logical lowest-priority
    /// entry, an ExtINT entry; IOREGSEL left pointing at an entry.
    fn configured() -> (IoApic, Sink) {
        let mut io = IoApic::new(3);
        let mut sink = Sink::new();
        write_reg(&mut io, 0x10 + 2 * 10, 0x0000_a041, &mut sink);
        write_reg(&mut io, 0x11 + 2 * 10, 0x0100_0000, &mut sink);
        write_reg(&mut io, 0x10 + 2 * 2, 0x30, &mut sink);
        write_reg(&mut io, 0x10 + 2 * 9, 0x0001_8039, &mut sink);
        write_reg(&mut io, 0x10 + 2 * 17, 0x0000_0961, &mut sink);
        write_reg(&mut io, 0x11 + 2 * 17, 0x0300_0000, &mut sink);
        write_reg(&mut io, 0x10, 0x0000_0700, &mut sink);
        io.set_irq(10, true, &mut sink.f());
        io.set_irq(9, true, &mut sink.f());
        io.set_irq(2, true, &mut sink.f());
        io.write(IOREGSEL, &[0x10 + 2 * 17], &mut sink.f());
        (io, sink)
    }

    #[test]
    fn the_persisted_state_round_trips_and_the_copy_behaves_alike() {
        let (mut io, mut sink) = configured();
        let mut fresh = IoApic::new(0);
        let state = persist::assert_round_trip(&io, &mut fresh);
        assert_ne!(state.redirection[10] & RTE_REMOTE_IRR, 0);
        assert_eq!(state.lines, (1 << 10) | (1 << 9) | (1 << 2));
        let mut d = [0u8; 4];
        fresh.read(IOWIN, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0000_0961, "IOREGSEL still selects entry 17");
        for index in [0x00, 0x01, 0x02, 0x24, 0x25, 0x14, 0x22, 0x32, 0x33, 0x10] {
            assert_eq!(read_reg(&mut fresh, index), read_reg(&mut io, index), "register {index:#04x}");
        }
        // The same EOIs and unmasking deliver the same messages.
        let mut fresh_sink = Sink::new();
        sink.msgs.clear();
        io.end_of_interrupt(0x41, &mut sink.f());
        fresh.end_of_interrupt(0x41, &mut fresh_sink.f());
        write_reg(&mut io, 0x10 + 2 * 9, 0x0000_8039, &mut sink);
        write_reg(&mut fresh, 0x10 + 2 * 9, 0x0000_8039, &mut fresh_sink);
        assert_eq!(fresh_sink.msgs.len(), 2, "pin 10 again, then pin 9 unmasked");
        assert_eq!(fresh_sink.msgs, sink.msgs);
        assert_eq!(fresh.save(), io.save());
    }

    /// A corruption of a state, and the field whose check must refuse it.
    type Corruption<S> = (&'static str, fn(&mut S));

    #[test]
    fn corrupt_states_are_refused_field_by_field() {
        let (mut io, _) = configured();
        let good = io.save();
        let cases: [Corruption<IoApicState>; 7] = [
            ("id", |s| s.id |= 1),
            ("redirection", |s| s.redirection[3] |= 1 << 17),
            ("redirection", |s| s.redirection[5] |= RTE_DELIVERY_STATUS),
            ("redirection", |s| s.redirection[2] |= RTE_REMOTE_IRR),
            ("redirection", |s| s.redirection[17] |= 0b011 << RTE_DELIVERY_MODE_SHIFT),
            ("redirection", |s| s.redirection[23] = (s.redirection[23] & !RTE_DELIVERY_MODE) | (0b110 << 8)),
            ("lines", |s| s.lines |= 1 << 24),
        ];
        for (field, corrupt) in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            let e = persist::assert_refused(&mut io, &bad);
            assert_eq!(e.field, field, "{e}");
        }
    }
}
