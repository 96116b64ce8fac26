//! One IDE channel: two device positions on one cable, their shared
//! command and control blocks, the channel's interrupt line and its bus
//! master.
//!
//! Both devices latch every write to the command block registers; only the
//! selected one (Device register bit 4) answers reads and runs commands,
//! except EXECUTE DEVICE DIAGNOSTIC and a soft reset (SRST), which reach
//! both. A position with no device reads as absent the way drivers probe
//! it: every register reads 00h but the Device register, so the
//! write-and-read-back test of Linux's `ata_devchk` and SeaBIOS's
//! `ata_detect` fails and the status is 00h, never busy.
//!
//! The interrupt: the selected device's INTRQ drives the channel's line
//! (IRQ 14 or 15) unless nIEN is set; reading Status (not the alternate
//! status) or writing a command releases it. Each assertion also sets the
//! bus master's interrupt bit, as the PIIX samples the line.

use std::sync::Arc;

use super::ata::cmd;
use super::bmdma::{BusMasterState, BM_ST_ACTIVE, BM_ST_INTERRUPT};
use super::drive::{
    Drive, Media, DEV_DEV1, REG_COUNT, REG_DATA, REG_DEVICE, REG_ERROR_FEATURES, REG_LBA_HIGH, REG_LBA_LOW,
    REG_LBA_MID, REG_STATUS_COMMAND, ST_BSY,
};
use super::Ctx;
use crate::irq::IrqLine;

/// Device control: the high-order bytes of the 48-bit registers read back.
pub(crate) const DC_HOB: u8 = 0x80;
/// Device control: software reset.
pub(crate) const DC_SRST: u8 = 0x04;
/// Device control: interrupts disabled.
pub(crate) const DC_NIEN: u8 = 0x02;
/// The device control bits that exist.
pub(crate) const DC_MASK: u8 = DC_HOB | DC_SRST | DC_NIEN;

/// One channel.
pub(crate) struct Channel {
    pub(crate) drives: [Drive; 2],
    /// The device control register.
    pub(crate) control: u8,
    /// The device the host selected (0 or 1).
    pub(crate) selected: usize,
    pub(crate) bm: BusMasterState,
    irq: Arc<dyn IrqLine>,
    /// The level the line is driven to.
    level: bool,
}

impl Channel {
    pub(crate) fn new(drives: [Drive; 2], irq: Arc<dyn IrqLine>) -> Self {
        Self { drives, control: 0, selected: 0, bm: BusMasterState::default(), irq, level: false }
    }

    /// Power-on or hardware reset of the channel and its devices.
    pub(crate) fn reset(&mut self) {
        for d in &mut self.drives {
            d.hard_reset();
        }
        self.control = 0;
        self.selected = 0;
        self.bm = BusMasterState::default();
        self.level = false;
        self.irq.set_level(false);
    }

    /// A read in the command block (offset 0-7). The data port moves
    /// `data.len()` bytes; a wider access elsewhere reads consecutive
    /// registers.
    pub(crate) fn read_command_block(&mut self, offset: u64, data: &mut [u8], ctx: &mut Ctx<'_>) {
        if offset == REG_DATA {
            self.drives[self.selected].data_read(data, ctx);
        } else {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.read_register(offset + i as u64);
            }
        }
        self.sync_irq();
    }

    /// A write in the command block.
    pub(crate) fn write_command_block(&mut self, offset: u64, data: &[u8], ctx: &mut Ctx<'_>) {
        if offset == REG_DATA {
            self.drives[self.selected].data_write(data, ctx);
            // A command packet may have asked for DMA from a started engine.
            self.try_dma(ctx);
        } else {
            for (i, &b) in data.iter().enumerate() {
                self.write_register(offset + i as u64, b, ctx);
            }
        }
        self.sync_irq();
    }

    /// A read of the alternate status register: the selected device's
    /// status, without releasing its interrupt.
    pub(crate) fn read_alt_status(&self) -> u8 {
        let d = &self.drives[self.selected];
        if d.present() {
            d.regs.status
        } else {
            0
        }
    }

    fn read_register(&mut self, reg: u64) -> u8 {
        let hob = self.control & DC_HOB != 0;
        let d = &mut self.drives[self.selected];
        if !d.present() {
            return if reg == REG_DEVICE { d.regs.device } else { 0 };
        }
        let r = &d.regs;
        match (reg, hob) {
            (REG_ERROR_FEATURES, false) => r.error,
            (REG_ERROR_FEATURES, true) => r.hob_features,
            (REG_COUNT, false) => r.count,
            (REG_COUNT, true) => r.hob_count,
            (REG_LBA_LOW, false) => r.lba_low,
            (REG_LBA_LOW, true) => r.hob_lba_low,
            (REG_LBA_MID, false) => r.lba_mid,
            (REG_LBA_MID, true) => r.hob_lba_mid,
            (REG_LBA_HIGH, false) => r.lba_high,
            (REG_LBA_HIGH, true) => r.hob_lba_high,
            (REG_DEVICE, _) => r.device,
            (REG_STATUS_COMMAND, _) => {
                let status = r.status;
                d.irq_pending = false;
                status
            }
            _ => 0xff,
        }
    }

    fn write_register(&mut self, reg: u64, v: u8, ctx: &mut Ctx<'_>) {
        // ATA8-ACS, Device Control: a write to any command block register
        // clears HOB.
        self.control &= !DC_HOB;
        if reg == REG_STATUS_COMMAND {
            return self.command(v, ctx);
        }
        // Writes are ignored while the device is busy (during SRST).
        if self.drives[self.selected].regs.status & ST_BSY != 0 {
            return;
        }
        for d in &mut self.drives {
            d.regs.write(reg, v);
        }
        if reg == REG_DEVICE {
            self.selected = usize::from(v & DEV_DEV1 != 0);
        }
    }

    /// A write of the Command register.
    fn command(&mut self, code: u8, ctx: &mut Ctx<'_>) {
        let d = &mut self.drives[self.selected];
        let busy = d.present() && d.regs.status & ST_BSY != 0;
        if code == cmd::EXECUTE_DEVICE_DIAGNOSTIC {
            if !busy {
                self.diagnose();
            }
            return;
        }
        if !d.present() {
            return;
        }
        if busy && !(code == cmd::DEVICE_RESET && d.is_atapi()) {
            return;
        }
        d.irq_pending = false;
        match d.media {
            Media::Disk(_) => d.ata_command(code, ctx),
            Media::Cdrom(_) => d.atapi_ata_command(code, ctx),
            Media::Empty => {}
        }
        self.try_dma(ctx);
    }

    /// EXECUTE DEVICE DIAGNOSTIC: both devices run it; each shows its
    /// signature and passed (01h); device 0 is selected and interrupts
    /// (device 1 if it is alone).
    fn diagnose(&mut self) {
        if !self.drives.iter().any(Drive::present) {
            return;
        }
        for d in self.drives.iter_mut().filter(|d| d.present()) {
            d.soft_reset_end();
        }
        self.selected = 0;
        let signaller = if self.drives[0].present() { 0 } else { 1 };
        self.drives[signaller].raise();
    }

    /// A write of the device control register: nIEN, SRST and HOB.
    pub(crate) fn write_control(&mut self, v: u8) {
        let old = self.control;
        self.control = v & DC_MASK;
        if v & DC_SRST != 0 && old & DC_SRST == 0 {
            for d in self.drives.iter_mut().filter(|d| d.present()) {
                d.soft_reset_begin();
            }
            // A reset abandons any DMA the devices had under way.
            self.bm.status &= !BM_ST_ACTIVE;
        } else if v & DC_SRST == 0 && old & DC_SRST != 0 {
            for d in self.drives.iter_mut().filter(|d| d.present()) {
                d.soft_reset_end();
            }
            self.selected = 0;
        }
        self.sync_irq();
    }

    /// Drives the line from the selected device's interrupt and nIEN, and
    /// sets the bus master's interrupt bit for each assertion that reaches
    /// the line.
    pub(crate) fn sync_irq(&mut self) {
        let enabled = self.control & DC_NIEN == 0;
        for (i, d) in self.drives.iter_mut().enumerate() {
            if std::mem::take(&mut d.irq_event) && enabled && i == self.selected {
                self.bm.status |= BM_ST_INTERRUPT;
            }
        }
        let level = enabled && self.drives[self.selected].irq_pending;
        if level != self.level {
            self.level = level;
            self.irq.set_level(level);
        }
    }

    /// Drives the line to the level the state says, whatever it was (after
    /// a restore).
    pub(crate) fn resync_line(&mut self) {
        for d in &mut self.drives {
            d.irq_event = false;
        }
        self.level = self.control & DC_NIEN == 0 && self.drives[self.selected].irq_pending;
        self.irq.set_level(self.level);
    }
}
