//! Bus master IDE: the DMA engine of each channel and its physical region
//! descriptor (PRD) table.
//!
//! References: SFF-8038i rev 1.0 "Programming Interface for Bus Master IDE
//! Controller" (the registers, the PRD format, table 1 "Interrupt/Activity
//! Status Combinations"); Intel 82371AB (PIIX4) datasheet 5.2 "IDE
//! Controller IO Space Registers" (byte, word and dword access; the status
//! bits), which the PIIX3 shares.
//!
//! ```text
//! +0 BMICX command  3 RWCON: 1 = the device's data goes to memory | 0 SSBM start/stop
//! +2 BMISX status   6 drive 1 DMA capable | 5 drive 0 DMA capable (R/W)
//!                   2 interrupt (W1C) | 1 error (W1C) | 0 active (RO)
//! +4 BMIDTP         PRD table address, bits 31:2
//! PRD entry (8 bytes, dword aligned; the table may not cross 64 KiB):
//!   dword 0  physical region base (bit 0 = 0)
//!   dword 1  31 EOT | 15:1 byte count (0 = 64 KiB)
//! ```
//!
//! After a transfer (SFF-8038i table 1):
//! - the device moved all its data and the table ended with it: active
//!   clear, interrupt set (by the device's interrupt);
//! - the device moved all its data with table left over: active and
//!   interrupt both set;
//! - the table ended first: active and interrupt clear, error clear; the
//!   device aborts the command without an interrupt;
//! - a table entry or a region lies outside guest RAM, or the table runs
//!   past its 64 KiB page (the PIIX's master abort): active clear, error
//!   set; the device aborts the command and interrupts.
//!
//! Every guest address goes through [`GuestMemory`]'s checked reads and
//! writes; nothing outside guest RAM is ever touched.

use mmu::GuestMemory;

use super::channel::Channel;
use super::drive::{DmaJob, Drive, Transfer};
use super::Ctx;

/// Command: start/stop bus master (SSBM).
pub(crate) const BM_CMD_START: u8 = 0x01;
/// Command: the transfer writes memory (RWCON).
pub(crate) const BM_CMD_TO_MEMORY: u8 = 0x08;
/// The command bits that exist.
pub(crate) const BM_CMD_MASK: u8 = BM_CMD_START | BM_CMD_TO_MEMORY;
/// Status: the engine is active.
pub(crate) const BM_ST_ACTIVE: u8 = 0x01;
/// Status: a PCI master or target abort.
pub(crate) const BM_ST_ERROR: u8 = 0x02;
/// Status: the device asserted its interrupt.
pub(crate) const BM_ST_INTERRUPT: u8 = 0x04;
/// Status: drive 0 and drive 1 are DMA capable (software's bits).
pub(crate) const BM_ST_CAPABLE: u8 = 0x60;
/// The status bits that exist.
pub(crate) const BM_ST_MASK: u8 = BM_ST_ACTIVE | BM_ST_ERROR | BM_ST_INTERRUPT | BM_ST_CAPABLE;

/// PRD: end of table.
const PRD_EOT: u32 = 1 << 31;
/// PRD: the byte count bits.
const PRD_COUNT_MASK: u32 = 0xfffe;
/// A byte count of 0 means 64 KiB.
const PRD_MAX_REGION: u64 = 0x1_0000;
/// The table may not cross a 64 KiB boundary.
const PRD_TABLE_PAGE: u64 = 0x1_0000;
/// Bytes per PRD entry.
const PRD_ENTRY_LEN: u64 = 8;

/// The registers of one channel's bus master.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BusMasterState {
    /// BMICX: start (bit 0) and direction (bit 3).
    pub command: u8,
    /// BMISX: active, error, interrupt, DMA capable bits.
    pub status: u8,
    /// BMIDTP: the PRD table's address (bits 1:0 clear).
    pub prdt: u32,
}

/// How a DMA transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DmaEnd {
    /// The device moved all its data.
    Done,
    /// The PRD table ended before the device's data.
    Short,
    /// A table entry or region lies outside guest RAM.
    Fault,
    /// The image failed.
    Device,
}

/// Why the PRD table could not take or give more data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrdError {
    /// The table ended.
    Short,
    /// Guest address `addr` is not RAM (or the table left its 64 KiB page).
    Fault { addr: u64, table: bool },
}

impl PrdError {
    /// The transfer's end this error makes, logged once.
    pub(crate) fn end(self, ctx: &mut Ctx<'_>) -> DmaEnd {
        match self {
            PrdError::Short => DmaEnd::Short,
            PrdError::Fault { addr, table } => {
                let what = if table { "PRD table entry" } else { "DMA region" };
                ctx.log.dma_fault(|| format!("{what} at {addr:#x} is outside guest RAM or its 64 KiB page"));
                DmaEnd::Fault
            }
        }
    }
}

/// A walk through a PRD table.
#[derive(Debug, Clone)]
pub(crate) struct PrdCursor {
    table: u64,
    /// The next entry.
    next: u64,
    /// The current region's next byte and bytes left.
    addr: u64,
    left: u64,
    /// The current region is the table's last.
    last: bool,
    /// Bytes moved through the walk so far.
    moved: u64,
}

impl PrdCursor {
    /// A walk from the table at `table`.
    pub(crate) fn new(table: u32) -> Self {
        Self { table: u64::from(table & !3), next: 0, addr: 0, left: 0, last: false, moved: 0 }
    }

    /// Loads the next entry.
    fn load(&mut self, mem: &GuestMemory) -> Result<(), PrdError> {
        if self.last {
            return Err(PrdError::Short);
        }
        let offset = self.next * PRD_ENTRY_LEN;
        let at = self.table + offset;
        if (self.table % PRD_TABLE_PAGE) + offset + PRD_ENTRY_LEN > PRD_TABLE_PAGE {
            return Err(PrdError::Fault { addr: at, table: true });
        }
        let entry: [u8; 8] = mem.read_bytes(at).map_err(|_| PrdError::Fault { addr: at, table: true })?;
        let base = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]) & !1;
        let flags = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let count = u64::from(flags & PRD_COUNT_MASK);
        self.addr = u64::from(base);
        self.left = if count == 0 { PRD_MAX_REGION } else { count };
        self.last = flags & PRD_EOT != 0;
        self.next += 1;
        Ok(())
    }

    /// Writes `data` to the regions, in order.
    pub(crate) fn scatter(&mut self, mem: &GuestMemory, mut data: &[u8]) -> Result<(), PrdError> {
        while !data.is_empty() {
            if self.left == 0 {
                self.load(mem)?;
            }
            let n = self.left.min(data.len() as u64) as usize;
            let (head, rest) = data.split_at(n);
            mem.write(self.addr, head).map_err(|_| PrdError::Fault { addr: self.addr, table: false })?;
            self.advance(n);
            data = rest;
        }
        Ok(())
    }

    /// Fills `out` from the regions, in order.
    pub(crate) fn gather(&mut self, mem: &GuestMemory, mut out: &mut [u8]) -> Result<(), PrdError> {
        while !out.is_empty() {
            if self.left == 0 {
                self.load(mem)?;
            }
            let n = self.left.min(out.len() as u64) as usize;
            let (head, rest) = std::mem::take(&mut out).split_at_mut(n);
            mem.read(self.addr, head).map_err(|_| PrdError::Fault { addr: self.addr, table: false })?;
            self.advance(n);
            out = rest;
        }
        Ok(())
    }

    /// `n` bytes of the current region were moved.
    fn advance(&mut self, n: usize) {
        self.addr += n as u64;
        self.left -= n as u64;
        self.moved += n as u64;
    }

    /// Bytes moved through the walk so far; after a failed
    /// [`PrdCursor::scatter`] or [`PrdCursor::gather`], those before the
    /// region that failed.
    pub(crate) fn moved(&self) -> u64 {
        self.moved
    }

    /// Whether the walk used up the table's last region.
    pub(crate) fn exhausted(&self) -> bool {
        self.left == 0 && self.last
    }
}

impl Drive {
    /// Runs the DMA job the device waits with, through `cursor`.
    fn run_dma(&mut self, cursor: &mut PrdCursor, to_memory: bool, ctx: &mut Ctx<'_>) -> DmaEnd {
        let Transfer::Dma(job) = std::mem::take(&mut self.xfer) else { return DmaEnd::Done };
        match job {
            DmaJob::Atapi { .. } => self.dma_atapi(job, cursor, to_memory, ctx),
            _ => self.dma_sectors(job, cursor, to_memory, ctx),
        }
    }
}

impl Channel {
    /// A read of bus master register byte `reg` (0-7).
    pub(crate) fn bm_read(&self, reg: u64) -> u8 {
        match reg {
            0 => self.bm.command,
            2 => self.bm.status,
            4..=7 => self.bm.prdt.to_le_bytes()[(reg - 4) as usize],
            _ => 0,
        }
    }

    /// A write of bus master register byte `reg` (0-7).
    pub(crate) fn bm_write(&mut self, reg: u64, v: u8, ctx: &mut Ctx<'_>) {
        match reg {
            0 => {
                let old = self.bm.command;
                self.bm.command = v & BM_CMD_MASK;
                if v & BM_CMD_START != 0 && old & BM_CMD_START == 0 {
                    self.bm.status |= BM_ST_ACTIVE;
                    self.try_dma(ctx);
                } else if v & BM_CMD_START == 0 && old & BM_CMD_START != 0 {
                    // Stopping the engine abandons what it had not moved.
                    self.bm.status &= !BM_ST_ACTIVE;
                }
            }
            2 => {
                let w1c = BM_ST_ERROR | BM_ST_INTERRUPT;
                self.bm.status = (self.bm.status & BM_ST_ACTIVE) | (v & BM_ST_CAPABLE) | (self.bm.status & w1c & !v);
            }
            4..=7 => {
                let shift = 8 * (reg - 4);
                self.bm.prdt = (self.bm.prdt & !(0xff << shift)) | (u32::from(v) << shift);
                self.bm.prdt &= !3;
            }
            _ => {}
        }
    }

    /// Runs the selected device's DMA job if the engine is started and
    /// active and the function may master the bus.
    pub(crate) fn try_dma(&mut self, ctx: &mut Ctx<'_>) {
        let started = self.bm.command & BM_CMD_START != 0 && self.bm.status & BM_ST_ACTIVE != 0;
        let sel = self.selected;
        if !started || !ctx.bus_master || !matches!(self.drives[sel].xfer, Transfer::Dma(_)) {
            return;
        }
        let to_memory = self.bm.command & BM_CMD_TO_MEMORY != 0;
        let mut cursor = PrdCursor::new(self.bm.prdt);
        match self.drives[sel].run_dma(&mut cursor, to_memory, ctx) {
            DmaEnd::Done => {
                if cursor.exhausted() {
                    self.bm.status &= !BM_ST_ACTIVE;
                }
            }
            DmaEnd::Short | DmaEnd::Device => self.bm.status &= !BM_ST_ACTIVE,
            DmaEnd::Fault => {
                self.bm.status &= !BM_ST_ACTIVE;
                self.bm.status |= BM_ST_ERROR;
            }
        }
    }
}
