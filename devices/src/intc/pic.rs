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

    /// The state, for a snapshot.
    pub fn save(&self) -> PicState {
        PicState { master: self.master.s, slave: self.slave.s }
    }

    /// Loads a saved state.
    pub fn restore(&mut self, state: &PicState) {
        self.master.s = state.master;
        self.slave.s = state.slave;
        self.master.s.elcr &= ELCR1_WRITABLE;
        self.slave.s.elcr &= ELCR2_WRITABLE;
        self.master.s.highest_priority &= 7;
        self.slave.s.highest_priority &= 7;
        self.update_cascade();
    }

    fn log_unimplemented(&self, offset: u8) {
        if self.log.first(Misuse::Unimplemented) {
            tracing::warn!(target: "devices", offset, "8259A: no such port; access ignored (logged once)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PicChip::{Master, Slave};

    /// Programs the pair as Linux does (vectors 0x30 and 0x38, cascade on IR2).
    fn linux_init(pic: &mut PicPair, master_icw4: u8) {
        pic.write(Master, 1, 0xff);
        pic.write(Slave, 1, 0xff);
        pic.write(Master, 0, 0x11); // ICW1: edge, cascade, ICW4
        pic.write(Master, 1, 0x30); // ICW2
        pic.write(Master, 1, 0x04); // ICW3: slave on IR2
        pic.write(Master, 1, master_icw4);
        pic.write(Slave, 0, 0x11);
        pic.write(Slave, 1, 0x38);
        pic.write(Slave, 1, 0x02); // ICW3: slave ID 2
        pic.write(Slave, 1, 0x01);
        pic.write(Master, 1, 0x00);
        pic.write(Slave, 1, 0x00);
    }

    fn pair() -> PicPair {
        let mut pic = PicPair::new();
        linux_init(&mut pic, 0x01);
        pic
    }

    #[test]
    fn initialisation_sequence_sets_vectors_and_clears_the_mask() {
        let mut pic = PicPair::new();
        pic.write(Master, 1, 0xfb);
        linux_init(&mut pic, 0x01);
        assert_eq!(pic.read(Master, 1), 0);
        let s = pic.save();
        assert_eq!(s.master.vector_base, 0x30);
        assert_eq!(s.slave.vector_base, 0x38);
        assert_eq!(s.master.icw3, 0x04);
        assert_eq!(s.master.init_step, InitStep::Ready);
        assert!(!s.master.auto_eoi);
    }

    #[test]
    fn icw1_without_icw4_and_single_mode_skip_words() {
        let mut pic = PicPair::new();
        pic.write(Master, 0, 0x12); // SNGL, no IC4
        pic.write(Master, 1, 0x08);
        assert_eq!(pic.save().master.init_step, InitStep::Ready);
        pic.write(Master, 1, 0xaa);
        assert_eq!(pic.read(Master, 1), 0xaa, "the next odd write is OCW1");
        pic.set_irq(2, true); // ignored: cascade input
        pic.set_irq(1, true);
        assert_eq!(pic.acknowledge(), 0x08 | 7, "IRQ1 masked: spurious");
    }

    #[test]
    fn edge_interrupt_is_delivered_once_and_eoi_clears_isr() {
        let mut pic = pair();
        assert!(!pic.output());
        pic.set_irq(0, true);
        pic.set_irq(0, false);
        assert!(pic.output(), "an edge stays latched after the line falls");
        assert_eq!(pic.acknowledge(), 0x30);
        assert!(!pic.output());
        pic.write(Master, 0, 0x0b); // OCW3: read ISR
        assert_eq!(pic.read(Master, 0), 0x01);
        pic.write(Master, 0, 0x20); // non-specific EOI
        assert_eq!(pic.read(Master, 0), 0x00);
        assert!(!pic.output(), "no new edge, no new interrupt");
    }

    #[test]
    fn irr_and_isr_reads_follow_ocw3() {
        let mut pic = pair();
        pic.write(Master, 1, 0xff);
        pic.set_irq(3, true);
        pic.write(Master, 0, 0x0a); // read IRR
        assert_eq!(pic.read(Master, 0), 0x08);
        pic.write(Master, 0, 0x0b); // read ISR
        assert_eq!(pic.read(Master, 0), 0x00);
        pic.write(Master, 0, 0x08); // RR = 0: selection unchanged
        assert_eq!(pic.read(Master, 0), 0x00);
    }

    #[test]
    fn mask_holds_requests_back() {
        let mut pic = pair();
        pic.write(Master, 1, 0x02);
        pic.set_irq(1, true);
        assert!(!pic.output());
        pic.write(Master, 1, 0x00);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x31);
    }

    #[test]
    fn priority_and_nesting() {
        let mut pic = pair();
        pic.set_irq(4, true);
        assert_eq!(pic.acknowledge(), 0x34);
        pic.set_irq(5, true);
        assert!(!pic.output(), "IR5 waits while IR4 is in service");
        pic.set_irq(1, true);
        assert!(pic.output(), "IR1 preempts IR4");
        assert_eq!(pic.acknowledge(), 0x31);
        pic.write(Master, 0, 0x20); // EOI ends IR1, the highest in service
        assert!(!pic.output());
        pic.write(Master, 0, 0x20); // EOI ends IR4
        assert_eq!(pic.acknowledge(), 0x35);
    }

    #[test]
    fn specific_eoi_and_rotation() {
        let mut pic = pair();
        pic.set_irq(3, true);
        pic.set_irq(6, true);
        assert_eq!(pic.acknowledge(), 0x33);
        pic.write(Master, 0, 0x60 | 3); // specific EOI for IR3
        pic.write(Master, 0, 0x0b);
        assert_eq!(pic.read(Master, 0), 0);
        // Rotate on specific EOI of IR6 makes IR7 the highest priority.
        assert_eq!(pic.acknowledge(), 0x36);
        pic.write(Master, 0, 0xe0 | 6);
        assert_eq!(pic.save().master.highest_priority, 7);
        pic.set_irq(0, true);
        pic.set_irq(7, true);
        assert_eq!(pic.acknowledge(), 0x37, "IR7 now outranks IR0");
        // Set priority: IR0 lowest, IR1 highest.
        pic.write(Master, 0, 0x20);
        pic.write(Master, 0, 0xc0);
        assert_eq!(pic.save().master.highest_priority, 1);
        // Rotate on non-specific EOI.
        assert_eq!(pic.acknowledge(), 0x30);
        pic.write(Master, 0, 0xa0);
        assert_eq!(pic.save().master.highest_priority, 1);
        pic.write(Master, 0, 0x40); // no operation
        assert_eq!(pic.save().master.isr, 0);
    }

    #[test]
    fn cascade_delivers_slave_vectors() {
        let mut pic = pair();
        pic.set_irq(8, true);
        pic.set_irq(8, false);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x38);
        pic.write(Master, 0, 0x0b);
        pic.write(Slave, 0, 0x0b);
        assert_eq!(pic.read(Master, 0), 0x04, "the cascade level is in service");
        assert_eq!(pic.read(Slave, 0), 0x01);
        pic.set_irq(12, true);
        assert!(!pic.output(), "master IR2 in service holds off the slave");
        pic.write(Slave, 0, 0x20);
        pic.write(Master, 0, 0x20);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x3c);
    }

    #[test]
    fn special_fully_nested_lets_a_higher_slave_request_through() {
        let mut pic = PicPair::new();
        linux_init(&mut pic, 0x11); // SFNM on the master
        pic.set_irq(12, true);
        assert_eq!(pic.acknowledge(), 0x3c);
        pic.set_irq(9, true);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x39);
    }

    #[test]
    fn level_triggered_lines_retrigger_until_released() {
        let mut pic = pair();
        pic.write_elcr(1, 0x02); // IRQ9 level
        assert!(pic.is_level_triggered(9));
        pic.set_irq(9, true);
        assert_eq!(pic.acknowledge(), 0x39);
        pic.write(Slave, 0, 0x20);
        pic.write(Master, 0, 0x20);
        assert!(pic.output(), "still asserted: requests again");
        assert_eq!(pic.acknowledge(), 0x39);
        pic.set_irq(9, false);
        pic.write(Slave, 0, 0x20);
        pic.write(Master, 0, 0x20);
        assert!(!pic.output(), "released before the EOI: nothing more");
        // Released after an EOI re-raised the slave's output: the master has
        // latched the cascade edge, and the INTA cycle finds nothing there.
        pic.set_irq(9, true);
        assert_eq!(pic.acknowledge(), 0x39);
        pic.write(Slave, 0, 0x20);
        pic.write(Master, 0, 0x20);
        pic.set_irq(9, false);
        assert_eq!(pic.acknowledge(), 0x3f, "spurious IRQ15");
    }

    #[test]
    fn a_vanished_level_request_is_spurious() {
        let mut pic = pair();
        pic.write_elcr(0, 0x20); // IRQ5 level
        pic.set_irq(5, true);
        assert!(pic.output());
        pic.set_irq(5, false);
        assert_eq!(pic.acknowledge(), 0x37);
        pic.write(Master, 0, 0x0b);
        assert_eq!(pic.read(Master, 0), 0, "no ISR bit for a spurious IRQ7");
        // The slave's version: IR15 with the master's IR2 in service.
        pic.write_elcr(1, 0x08); // IRQ11 level
        pic.set_irq(11, true);
        pic.set_irq(11, false);
        pic.set_irq(11, true);
        let s = pic.save();
        assert_eq!(s.slave.irr, 0x08);
        pic.set_irq(11, false);
        // The master latched the cascade edge; the slave has nothing.
        assert_eq!(pic.acknowledge(), 0x3f);
        assert_eq!(pic.save().slave.isr, 0);
    }

    #[test]
    fn elcr_keeps_the_fixed_edge_bits() {
        let mut pic = pair();
        pic.write_elcr(0, 0xff);
        pic.write_elcr(1, 0xff);
        assert_eq!(pic.read_elcr(0), 0xf8);
        assert_eq!(pic.read_elcr(1), 0xde);
        assert_eq!(pic.read_elcr(2), 0xff);
        pic.write_elcr(7, 1);
        assert!(!pic.is_level_triggered(0));
        assert!(pic.is_level_triggered(3));
    }

    #[test]
    fn ltim_makes_every_input_level_triggered() {
        let mut pic = PicPair::new();
        pic.write(Master, 0, 0x19); // ICW1 with LTIM
        pic.write(Master, 1, 0x20);
        pic.write(Master, 1, 0x04);
        pic.write(Master, 1, 0x01);
        assert!(pic.is_level_triggered(0));
        pic.set_irq(0, true);
        pic.set_irq(0, false);
        assert!(!pic.output());
    }

    #[test]
    fn auto_eoi_sets_no_isr_bit_and_may_rotate() {
        let mut pic = PicPair::new();
        linux_init(&mut pic, 0x03);
        pic.set_irq(4, true);
        assert_eq!(pic.acknowledge(), 0x34);
        assert_eq!(pic.save().master.isr, 0);
        pic.write(Master, 0, 0x80); // rotate in AEOI mode
        pic.set_irq(4, false);
        pic.set_irq(4, true);
        assert_eq!(pic.acknowledge(), 0x34);
        assert_eq!(pic.save().master.highest_priority, 5);
        pic.write(Master, 0, 0x00);
        assert!(!pic.save().master.rotate_on_auto_eoi);
    }

    #[test]
    fn poll_command_reads_and_acknowledges() {
        let mut pic = pair();
        pic.write(Master, 0, 0x0c);
        assert_eq!(pic.read(Master, 0), 0, "nothing requesting");
        pic.set_irq(6, true);
        pic.write(Master, 0, 0x0c);
        assert_eq!(pic.read(Master, 0), 0x86);
        assert_eq!(pic.save().master.isr, 0x40);
        assert!(!pic.save().master.poll, "the poll word is read once");
    }

    #[test]
    fn special_mask_mode_lets_lower_levels_in() {
        let mut pic = pair();
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x33);
        pic.write(Master, 1, 0x08); // mask IR3 (in service)
        pic.write(Master, 0, 0x68); // set special mask mode
        pic.set_irq(5, true);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x35);
        pic.write(Master, 0, 0x48); // reset special mask mode
        assert!(!pic.save().master.special_mask);
    }

    #[test]
    fn reinitialisation_needs_a_new_edge() {
        let mut pic = pair();
        pic.set_irq(1, true);
        linux_init(&mut pic, 0x01);
        assert!(!pic.output());
        pic.set_irq(1, false);
        pic.set_irq(1, true);
        assert!(pic.output());
    }

    #[test]
    fn bad_ports_and_irqs_are_ignored() {
        let mut pic = pair();
        assert_eq!(pic.read(Master, 5), 0xff);
        pic.write(Slave, 9, 0xff);
        pic.set_irq(200, true);
        assert!(!pic.output());
    }

    #[test]
    fn state_round_trips() {
        let mut pic = pair();
        pic.write_elcr(1, 0x0c);
        pic.set_irq(10, true);
        let state = pic.save();
        let mut other = PicPair::new();
        other.restore(&state);
        assert_eq!(other.save(), state);
        assert!(other.output());
        assert_eq!(other.acknowledge(), 0x3a);
    }
}
