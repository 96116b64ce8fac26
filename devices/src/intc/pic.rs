//! The PC's pair of 8259A programmable interrupt controllers, with the ELCR.
//!
//! Datasheet: Intel 8259A "Programmable Interrupt Controller (8259A/8259A-2)",
//! order number 231468: "Initialization Command Words" (ICW1-ICW4, Figure 6),
//! "Operation Command Words" (OCW1-OCW3, Figure 7), "Interrupt Sequence",
//! "Edge and Level Triggered Modes", "Poll Command" and "Cascading". The
//! edge/level control registers (ELCR1/ELCR2 at 0x4D0/0x4D1) are those of the
//! PIIX3 (Intel 82371SB datasheet, 290550, section 2.3 "ISA-compatible registers").
//!
//! ```text
//! port        write                               read
//! 0x20/0xA0   ICW1 (D4=1), OCW2 (D4:D3=00),       IRR, ISR (per OCW3) or the poll word
//!             OCW3 (D4:D3=01)
//! 0x21/0xA1   ICW2-ICW4 during initialisation,    IMR
//!             OCW1 (IMR) afterwards
//! 0x4D0/0x4D1 ELCR1/ELCR2: 1 = level-triggered    ELCR
//!
//! ICW1  0 0 0 1 LTIM ADI SNGL IC4       OCW2  R SL EOI 0 0 L2 L1 L0
//! ICW4  0 0 0 SFNM BUF M/S AEOI uPM     OCW3  0 ESMM SMM 0 1 P RR RIS
//! ```
//!
//! The slave's INT output drives the master's IR2 (the cascade). The model is
//! a core without wiring: the interrupt controller feeds it line levels, asks
//! [`PicPair::output`] and runs the INTA cycle with [`PicPair::acknowledge`].
//!
//! Model choices:
//! - Edge-triggered requests are latched in IRR at the rising edge and stay
//!   there until acknowledged, even if the line falls first (as QEMU and KVM
//!   do): devices signal edges with a raise/lower pulse.
//! - A level-triggered IRR bit follows its line. If the line drops between the
//!   INT output and the INTA cycle, the acknowledge answers with the spurious
//!   vector of IR7 (master) or IR15 (slave) and sets no ISR bit, as the
//!   datasheet's "Interrupt Sequence" says.
//! - ICW4's microprocessor mode and buffered-mode bits are stored and ignored:
//!   a PC runs the 8259A in 8086 mode.

use persist::{Persist, PersistError};

use crate::log_once::{LogOnce, Misuse};

/// I/O port of the master's command register.
pub const PIC_MASTER_PORT: u16 = 0x20;
/// I/O port of the slave's command register.
pub const PIC_SLAVE_PORT: u16 = 0xa0;
/// Each 8259A decodes two ports (A0 = 0 and A0 = 1).
pub const PIC_PORT_LEN: u64 = 2;
/// I/O port of ELCR1 (IRQ0-7); ELCR2 (IRQ8-15) follows it.
pub const ELCR_PORT: u16 = 0x4d0;
/// ELCR1 and ELCR2.
pub const ELCR_PORT_LEN: u64 = 2;
/// The master's input the slave's INT output drives.
pub const CASCADE_IRQ: u8 = 2;

// ICW1 (command port, D4 = 1).
const ICW1_SELECT: u8 = 0b0001_0000;
const ICW1_IC4: u8 = 0b0000_0001; // ICW4 follows
const ICW1_SNGL: u8 = 0b0000_0010; // single chip, no ICW3
const ICW1_LTIM: u8 = 0b0000_1000; // level-triggered mode for all inputs

// ICW4.
const ICW4_AEOI: u8 = 0b0000_0010;
const ICW4_SFNM: u8 = 0b0001_0000;

// OCW2/OCW3 (command port, D4 = 0): D3 tells them apart.
const OCW3_SELECT: u8 = 0b0000_1000;
const OCW2_COMMAND_SHIFT: u8 = 5;
const OCW2_LEVEL_MASK: u8 = 0b0000_0111;
// OCW2 commands, bits R SL EOI.
const OCW2_ROTATE_AEOI_CLEAR: u8 = 0b000;
const OCW2_NON_SPECIFIC_EOI: u8 = 0b001;
const OCW2_NOP: u8 = 0b010;
const OCW2_SPECIFIC_EOI: u8 = 0b011;
const OCW2_ROTATE_AEOI_SET: u8 = 0b100;
const OCW2_ROTATE_NON_SPECIFIC_EOI: u8 = 0b101;
const OCW2_SET_PRIORITY: u8 = 0b110;
const OCW2_ROTATE_SPECIFIC_EOI: u8 = 0b111;
// OCW3.
const OCW3_RIS: u8 = 0b0000_0001; // read ISR (else IRR)
const OCW3_RR: u8 = 0b0000_0010; // act on RIS
const OCW3_POLL: u8 = 0b0000_0100;
const OCW3_SMM: u8 = 0b0010_0000; // special mask mode
const OCW3_ESMM: u8 = 0b0100_0000; // act on SMM

/// The poll word's "an interrupt is requesting" bit.
const POLL_INTERRUPT: u8 = 0b1000_0000;
/// The level answered when a request vanished before the INTA cycle.
const SPURIOUS_LEVEL: u8 = 7;

/// ELCR bits a guest may set: IRQ0, 1 and 2 are always edge-triggered (the
/// timer, the keyboard, the cascade), per the PIIX3 datasheet.
const ELCR1_WRITABLE: u8 = 0b1111_1000;
/// ELCR2: IRQ8 (RTC) and IRQ13 (FPU error) are always edge-triggered.
const ELCR2_WRITABLE: u8 = 0b1101_1110;

/// Which of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PicChip {
    /// IRQ0-7, ports 0x20/0x21.
    Master,
    /// IRQ8-15, ports 0xA0/0xA1, cascaded on the master's IR2.
    Slave,
}

/// Where an initialisation sequence stands: the ICW the odd port expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum InitStep {
    /// Initialised: the odd port writes OCW1.
    #[default]
    Ready,
    /// ICW2 (the vector base) is next.
    Icw2,
    /// ICW3 (the cascade configuration) is next.
    Icw3,
    /// ICW4 (the mode) is next.
    Icw4,
}

/// The guest-visible state of one 8259A, for save and restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PicChipState {
    /// Interrupt request register.
    pub irr: u8,
    /// In-service register.
    pub isr: u8,
    /// Interrupt mask register (OCW1).
    pub imr: u8,
    /// The levels the input lines are driven to now.
    pub lines: u8,
    /// The level with the highest priority (rotation moves it).
    pub highest_priority: u8,
    /// ICW2 with its low three bits cleared.
    pub vector_base: u8,
    /// ICW3 as written.
    pub icw3: u8,
    /// The ICW the odd port expects next.
    pub init_step: InitStep,
    /// ICW1 asked for ICW4.
    pub icw4_needed: bool,
    /// ICW1 SNGL: no cascade.
    pub single: bool,
    /// ICW1 LTIM: every input level-triggered.
    pub level_triggered_mode: bool,
    /// ICW4 AEOI.
    pub auto_eoi: bool,
    /// ICW4 SFNM.
    pub special_fully_nested: bool,
    /// OCW2 "rotate in automatic EOI mode".
    pub rotate_on_auto_eoi: bool,
    /// OCW3 RIS: the command port reads ISR, else IRR.
    pub read_isr: bool,
    /// OCW3 P: the next command-port read is the poll word.
    pub poll: bool,
    /// OCW3 SMM.
    pub special_mask: bool,
    /// The ELCR byte of this chip.
    pub elcr: u8,
}

/// The state of the pair, for save and restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PicState {
    /// The master's state.
    pub master: PicChipState,
    /// The slave's state.
    pub slave: PicChipState,
}

/// One 8259A.
#[derive(Debug, Clone)]
struct Pic {
    s: PicChipState,
    is_master: bool,
    elcr_writable: u8,
}

impl Pic {
    fn new(is_master: bool) -> Self {
        Self {
            // Power-on: the datasheet leaves the registers undefined until
            // ICW1; zero (nothing requested, nothing masked) is what QEMU
            // and the firmware that follows expect.
            s: PicChipState::default(),
            is_master,
            elcr_writable: if is_master { ELCR1_WRITABLE } else { ELCR2_WRITABLE },
        }
    }

    fn level_mask(&self) -> u8 {
        if self.s.level_triggered_mode {
            0xff
        } else {
            self.s.elcr
        }
    }

    /// Drives input `irq` (0..=7) to `level`.
    fn set_line(&mut self, irq: u8, level: bool) {
        let bit = 1u8 << (irq & 7);
        let was = self.s.lines & bit != 0;
        if level {
            self.s.lines |= bit;
        } else {
            self.s.lines &= !bit;
        }
        if self.level_mask() & bit != 0 {
            if level {
                self.s.irr |= bit;
            } else {
                self.s.irr &= !bit;
            }
        } else if level && !was {
            self.s.irr |= bit;
        }
    }

    /// The priority rank (0 = highest) of the highest-priority bit of `mask`, 8 if none.
    fn priority(&self, mask: u8) -> u8 {
        (0..8).find(|p| mask & (1 << ((p + self.s.highest_priority) & 7)) != 0).unwrap_or(8)
    }

    /// The level this chip would present to the CPU now, if any.
    fn pending(&self) -> Option<u8> {
        let requests = self.s.irr & !self.s.imr;
        let p = self.priority(requests);
        if p == 8 {
            return None;
        }
        let mut in_service = self.s.isr;
        if self.s.special_mask {
            // Special mask mode: a masked level in service does not hold off
            // lower-priority requests.
            in_service &= !self.s.imr;
        }
        if self.s.special_fully_nested && self.is_master {
            // SFNM: the slave may interrupt while one of its own is in service.
            in_service &= !(1 << CASCADE_IRQ);
        }
        (p < self.priority(in_service)).then_some((p + self.s.highest_priority) & 7)
    }

    /// The INTA cycle's effect on this chip for level `irq`.
    fn acknowledge(&mut self, irq: u8) {
        let bit = 1u8 << irq;
        if self.s.auto_eoi {
            if self.s.rotate_on_auto_eoi {
                self.s.highest_priority = (irq + 1) & 7;
            }
        } else {
            self.s.isr |= bit;
        }
        if self.level_mask() & bit == 0 {
            self.s.irr &= !bit;
        }
    }

    fn reset_for_icw1(&mut self, icw1: u8) {
        let elcr = self.s.elcr;
        let lines = self.s.lines;
        self.s = PicChipState {
            // The edge-sense latch is reset: an edge request needs a new rising edge.
            lines,
            elcr,
            init_step: InitStep::Icw2,
            icw4_needed: icw1 & ICW1_IC4 != 0,
            single: icw1 & ICW1_SNGL != 0,
            level_triggered_mode: icw1 & ICW1_LTIM != 0,
            ..PicChipState::default()
        };
        // Level-triggered requests still stand.
        self.s.irr = lines & self.level_mask();
    }

    fn write_command(&mut self, value: u8) {
        if value & ICW1_SELECT != 0 {
            self.reset_for_icw1(value);
        } else if value & OCW3_SELECT != 0 {
            if value & OCW3_POLL != 0 {
                self.s.poll = true;
            }
            if value & OCW3_RR != 0 {
                self.s.read_isr = value & OCW3_RIS != 0;
            }
            if value & OCW3_ESMM != 0 {
                self.s.special_mask = value & OCW3_SMM != 0;
            }
        } else {
            self.write_ocw2(value);
        }
    }

    fn write_ocw2(&mut self, value: u8) {
        let level = value & OCW2_LEVEL_MASK;
        match value >> OCW2_COMMAND_SHIFT {
            OCW2_ROTATE_AEOI_CLEAR => self.s.rotate_on_auto_eoi = false,
            OCW2_ROTATE_AEOI_SET => self.s.rotate_on_auto_eoi = true,
            cmd @ (OCW2_NON_SPECIFIC_EOI | OCW2_ROTATE_NON_SPECIFIC_EOI) => {
                let p = self.priority(self.s.isr);
                if p != 8 {
                    let irq = (p + self.s.highest_priority) & 7;
                    self.s.isr &= !(1 << irq);
                    if cmd == OCW2_ROTATE_NON_SPECIFIC_EOI {
                        self.s.highest_priority = (irq + 1) & 7;
                    }
                }
            }
            OCW2_SPECIFIC_EOI => self.s.isr &= !(1 << level),
            OCW2_ROTATE_SPECIFIC_EOI => {
                self.s.isr &= !(1 << level);
                self.s.highest_priority = (level + 1) & 7;
            }
            OCW2_SET_PRIORITY => self.s.highest_priority = (level + 1) & 7,
            OCW2_NOP => {}
            // Nothing else fits in three bits.
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.s.init_step {
            InitStep::Ready => self.s.imr = value,
            InitStep::Icw2 => {
                self.s.vector_base = value & !0b111;
                self.s.init_step = if !self.s.single {
                    InitStep::Icw3
                } else if self.s.icw4_needed {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw3 => {
                self.s.icw3 = value;
                self.s.init_step = if self.s.icw4_needed { InitStep::Icw4 } else { InitStep::Ready };
            }
            InitStep::Icw4 => {
                self.s.auto_eoi = value & ICW4_AEOI != 0;
                self.s.special_fully_nested = value & ICW4_SFNM != 0;
                self.s.init_step = InitStep::Ready;
            }
        }
    }

    /// The poll command: the poll word, acknowledging the level it reports.
    fn poll_read(&mut self) -> u8 {
        self.s.poll = false;
        match self.pending() {
            Some(irq) => {
                self.acknowledge(irq);
                POLL_INTERRUPT | irq
            }
            None => 0,
        }
    }

    fn read_command(&mut self) -> u8 {
        if self.s.poll {
            self.poll_read()
        } else if self.s.read_isr {
            self.s.isr
        } else {
            self.s.irr
        }
    }
}

/// The master and slave 8259A of a PC, cascaded on IR2, with the ELCR.
#[derive(Debug)]
pub struct PicPair {
    master: Pic,
    slave: Pic,
    log: LogOnce,
}

impl Default for PicPair {
    fn default() -> Self {
        Self::new()
    }
}

impl PicPair {
    /// Both chips in their power-on state, every input edge-triggered.
    pub fn new() -> Self {
        Self { master: Pic::new(true), slave: Pic::new(false), log: LogOnce::new() }
    }

    fn chip(&mut self, chip: PicChip) -> &mut Pic {
        match chip {
            PicChip::Master => &mut self.master,
            PicChip::Slave => &mut self.slave,
        }
    }

    /// Drives ISA IRQ `irq` (0..=15) to `level`. IRQ2 is the cascade input
    /// and belongs to the slave; a device driving it is ignored.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            CASCADE_IRQ => {
                if self.log.first(Misuse::Unimplemented) {
                    tracing::warn!(target: "devices", "8259A: IRQ2 is the cascade input; a device on it is ignored (logged once)");
                }
            }
            0..=7 => self.master.set_line(irq, level),
            8..=15 => {
                self.slave.set_line(irq - 8, level);
                self.update_cascade();
            }
            _ => {
                if self.log.first(Misuse::Unimplemented) {
                    tracing::warn!(target: "devices", irq, "8259A: no such IRQ; ignored (logged once)");
                }
            }
        }
    }

    fn update_cascade(&mut self) {
        let slave_int = self.slave.pending().is_some();
        self.master.set_line(CASCADE_IRQ, slave_int);
    }

    /// The master's INT output: an interrupt waits for the CPU.
    pub fn output(&self) -> bool {
        self.master.pending().is_some()
    }

    /// The INTA cycle: the vector the CPU receives. A request that vanished
    /// gives the spurious vector of IR7 (or IR15 when the slave lost it).
    pub fn acknowledge(&mut self) -> u8 {
        let vector = match self.master.pending() {
            Some(irq) => {
                self.master.acknowledge(irq);
                if irq == CASCADE_IRQ && !self.master.s.single {
                    let slave_irq = match self.slave.pending() {
                        Some(slave_irq) => {
                            self.slave.acknowledge(slave_irq);
                            slave_irq
                        }
                        None => SPURIOUS_LEVEL,
                    };
                    self.slave.s.vector_base | slave_irq
                } else {
                    self.master.s.vector_base | irq
                }
            }
            None => self.master.s.vector_base | SPURIOUS_LEVEL,
        };
        self.update_cascade();
        vector
    }

    /// Reads port `offset` (0 = command, 1 = data) of `chip`.
    pub fn read(&mut self, chip: PicChip, offset: u8) -> u8 {
        let value = match offset {
            0 => self.chip(chip).read_command(),
            1 => self.chip(chip).s.imr,
            _ => {
                self.log_unimplemented(offset);
                0xff
            }
        };
        self.update_cascade();
        value
    }

    /// Writes port `offset` (0 = command, 1 = data) of `chip`.
    pub fn write(&mut self, chip: PicChip, offset: u8, value: u8) {
        match offset {
            0 => self.chip(chip).write_command(value),
            1 => self.chip(chip).write_data(value),
            _ => self.log_unimplemented(offset),
        }
        self.update_cascade();
    }

    /// Reads ELCR1 (`index` 0) or ELCR2 (`index` 1).
    pub fn read_elcr(&self, index: u8) -> u8 {
        match index {
            0 => self.master.s.elcr,
            1 => self.slave.s.elcr,
            _ => 0xff,
        }
    }

    /// Writes ELCR1 (`index` 0) or ELCR2 (`index` 1); fixed-edge bits stay 0.
    pub fn write_elcr(&mut self, index: u8, value: u8) {
        let pic = match index {
            0 => &mut self.master,
            1 => &mut self.slave,
            _ => return,
        };
        pic.s.elcr = value & pic.elcr_writable;
        // A line that became level-triggered requests as long as it is high.
        let level = pic.level_mask();
        pic.s.irr = (pic.s.irr & !level) | (pic.s.lines & level);
        self.update_cascade();
    }

    /// Whether IRQ `irq` is level-triggered (ELCR or LTIM).
    pub fn is_level_triggered(&self, irq: u8) -> bool {
        let (pic, bit) = if irq < 8 { (&self.master, irq) } else { (&self.slave, irq & 7) };
        pic.level_mask() & (1 << bit) != 0
    }

    fn log_unimplemented(&self, offset: u8) {
        if self.log.first(Misuse::Unimplemented) {
            tracing::warn!(target: "devices", offset, "8259A: no such port; access ignored (logged once)");
        }
    }
}

/// The part name the 8259A pair's errors carry.
const PART: &str = "8259A pair";

impl Pic {
    /// Checks a chip's saved state against what the chip can hold.
    fn check(&self, s: &PicChipState) -> Result<(), PersistError> {
        PersistError::check_max(PART, "highest_priority", s.highest_priority, 7)?;
        PersistError::check(s.vector_base & 0b111 == 0, PART, "vector_base", || {
            format!("is {:#04x}; ICW2's low three bits are not kept", s.vector_base)
        })?;
        PersistError::check(s.elcr & !self.elcr_writable == 0, PART, "elcr", || {
            format!("is {:#04x}, with fixed edge-triggered inputs set (writable: {:#04x})", s.elcr, self.elcr_writable)
        })?;
        let step_ok = match s.init_step {
            InitStep::Icw3 => !s.single,
            InitStep::Icw4 => s.icw4_needed,
            InitStep::Ready | InitStep::Icw2 => true,
        };
        PersistError::check(step_ok, PART, "init_step", || {
            format!("is {:?}, which ICW1 (single {}, ICW4 {}) does not lead to", s.init_step, s.single, s.icw4_needed)
        })?;
        let level = if s.level_triggered_mode { 0xff } else { s.elcr };
        // The master's cascade input follows the slave's output, which the
        // restore recomputes.
        let cascade = if self.is_master { 1 << CASCADE_IRQ } else { 0 };
        PersistError::check((s.irr ^ s.lines) & level & !cascade == 0, PART, "irr", || {
            format!(
                "is {:#04x}, but level-triggered requests follow their lines ({:#04x}, level mask {level:#04x})",
                s.irr, s.lines
            )
        })
    }
}

/// Restore checks both chips (rotation, vector base, ELCR, where an
/// initialisation sequence stands, level-triggered requests against their
/// lines); then it recomputes the cascade from the slave's output.
impl Persist for PicPair {
    type State = PicState;

    fn save(&self) -> PicState {
        PicState { master: self.master.s, slave: self.slave.s }
    }

    fn restore(&mut self, state: &PicState) -> Result<(), PersistError> {
        self.check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

impl PicPair {
    /// The checks of [`Persist::restore`], changing nothing.
    pub(crate) fn check_state(&self, state: &PicState) -> Result<(), PersistError> {
        self.master.check(&state.master)?;
        self.slave.check(&state.slave)
    }

    /// Loads a state [`PicPair::check_state`] passed.
    pub(crate) fn load_state(&mut self, state: &PicState) {
        self.master.s = state.master;
        self.slave.s = state.slave;
        self.update_cascade();
    }
}

#[cfg(test)]
mod tests;
