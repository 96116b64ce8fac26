//! The command engine: command decoding, the reset and polling statuses,
//! seeks, and the data commands over DMA or through the FIFO.

use super::media::{read_image, write_image, FloppyFormat, FLOPPY_SECTOR_SIZE, SIZE_CODE_512};
use super::state::{DataCursor, DataOp, FdcPhase, FORMAT_ID_LEN};
use super::{
    FloppyController, CONFIG_EFIFO, CONFIG_EIS, CONFIG_FIFOTHR, CONFIG_MASK, DOR_DMA_GATE, FDC_DMA_CHANNEL,
    PERPENDICULAR_MASK,
};

// Command byte modifiers.
const CMD_MT: u8 = 0b1000_0000;
const CMD_MFM: u8 = 0b0100_0000;
/// RELATIVE SEEK: step in (towards higher cylinders).
const CMD_DIR_IN: u8 = 0b0100_0000;
/// LOCK: the lock bit.
const CMD_LOCK: u8 = 0b1000_0000;
// Drive and head select byte.
const SEL_DRIVE: u8 = 0b0000_0011;
const SEL_HEAD_SHIFT: u8 = 2;
// ST0.
const ST0_ABNORMAL: u8 = 0b0100_0000;
const ST0_INVALID: u8 = 0b1000_0000;
const ST0_POLLING: u8 = 0b1100_0000;
const ST0_SE: u8 = 0b0010_0000;
const ST0_EC: u8 = 0b0001_0000;
// ST1.
const ST1_EN: u8 = 0b1000_0000;
const ST1_DE: u8 = 0b0010_0000;
const ST1_OR: u8 = 0b0001_0000;
const ST1_ND: u8 = 0b0000_0100;
const ST1_NW: u8 = 0b0000_0010;
const ST1_MA: u8 = 0b0000_0001;
// ST2.
const ST2_DD: u8 = 0b0010_0000;
const ST2_WC: u8 = 0b0001_0000;
// ST3.
const ST3_WP: u8 = 0b0100_0000;
const ST3_RDY: u8 = 0b0010_0000;
const ST3_T0: u8 = 0b0001_0000;
const ST3_TWO_SIDED: u8 = 0b0000_1000;
/// VERSION's answer: an enhanced controller (82077AA).
const VERSION_82077AA: u8 = 0x90;
/// LOCK's result: the lock bit.
const LOCK_RESULT_SHIFT: u8 = 4;
/// SPECIFY byte 2 bit 0: non-DMA mode.
const SPECIFY_ND: u8 = 0b0000_0001;
/// PERPENDICULAR MODE: overwrite D3-D0.
const PERP_OW: u8 = 0b1000_0000;
const PERP_DRIVES: u8 = 0b0011_1100;
const PERP_GAP_WGATE: u8 = 0b0000_0011;
/// PART ID: an 82078 command, which the 82077AA answers invalid.
const PART_ID: u8 = 0x18;

/// The commands the controller runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    ReadData,
    WriteData,
    ReadId,
    FormatTrack,
    Recalibrate,
    SenseInterrupt,
    Specify,
    SenseDriveStatus,
    Seek,
    RelativeSeek,
    Version,
    Configure,
    DumpReg,
    Perpendicular,
    Lock,
}

impl Command {
    /// The command a first byte starts. The data commands take their
    /// modifier bits (MT, MFM, SK) and ignore those they have no use for
    /// (Linux sends READ ID as 0xEA); the others are exact codes, so the
    /// 82078's commands that share their low bits are invalid here.
    pub(crate) fn decode(byte: u8) -> Option<Self> {
        Some(match byte {
            b if b & 0x1f == 0x06 => Command::ReadData,
            b if b & 0x1f == 0x05 => Command::WriteData,
            b if b & 0x1f == 0x0a => Command::ReadId,
            b if b & 0x1f == 0x0d => Command::FormatTrack,
            0x07 => Command::Recalibrate,
            0x08 => Command::SenseInterrupt,
            0x03 => Command::Specify,
            0x04 => Command::SenseDriveStatus,
            0x0f => Command::Seek,
            0x8f | 0xcf => Command::RelativeSeek,
            0x10 => Command::Version,
            0x13 => Command::Configure,
            0x0e => Command::DumpReg,
            0x12 => Command::Perpendicular,
            0x14 | 0x94 => Command::Lock,
            _ => return None,
        })
    }

    /// Bytes after the first.
    pub(crate) fn params(self) -> usize {
        match self {
            Command::ReadData | Command::WriteData => 8,
            Command::FormatTrack => 5,
            Command::Configure => 3,
            Command::Specify | Command::Seek | Command::RelativeSeek => 2,
            Command::ReadId | Command::Recalibrate | Command::SenseDriveStatus | Command::Perpendicular => 1,
            Command::SenseInterrupt | Command::Version | Command::DumpReg | Command::Lock => 0,
        }
    }
}

/// The name of a code the controller answers invalid, for the log.
pub(crate) fn invalid_name(code: u8) -> &'static str {
    match code {
        c if c & 0x1f == 0x02 => "READ TRACK",
        c if c & 0x1f == 0x09 => "WRITE DELETED DATA",
        c if c & 0x1f == 0x0c => "READ DELETED DATA",
        c if c & 0x1f == 0x16 => "VERIFY",
        c if c & 0x1f == 0x11 => "SCAN EQUAL",
        c if c & 0x1f == 0x19 => "SCAN LOW OR EQUAL",
        c if c & 0x1f == 0x1d => "SCAN HIGH OR EQUAL",
        0x17 => "POWERDOWN MODE (82077SL)",
        0x18 => "PART ID (82078)",
        0x2e => "SAVE (82078)",
        0x4e => "RESTORE (82078)",
        0x33 => "OPTION (82078)",
        0x8e => "DRIVE SPECIFICATION (82078)",
        0xef => "FORMAT AND WRITE (82078)",
        _ => "no command of the 82077AA",
    }
}

/// How a data command goes on after a sector.
enum Step {
    /// On to the next sector (the cursor moved there).
    More,
    /// The command ends; `id` is the result's C, H, R, N and `en` whether
    /// it ran past the last sector without terminal count.
    End { id: [u8; 4], en: bool },
}

/// A data command's failure: ST1, ST2.
type Fault = (u8, u8);

impl DataCursor {
    /// The sector after this one, and the result C, H, R, N if the
    /// command ends with it (Table 5-7 of the datasheet: past EOT the
    /// cylinder steps on, or with MT the head does first).
    fn advance(&mut self, terminal_count: bool) -> Step {
        let at_eot = self.r == self.eot;
        let id = if !at_eot {
            [self.c, self.h, self.r.wrapping_add(1), self.n]
        } else if self.multi_track && self.head == 0 {
            [self.c, self.h ^ 1, 1, self.n]
        } else if self.multi_track {
            [self.c.wrapping_add(1), self.h ^ 1, 1, self.n]
        } else {
            [self.c.wrapping_add(1), self.h, 1, self.n]
        };
        if terminal_count {
            return Step::End { id, en: false };
        }
        if at_eot {
            if self.multi_track && self.head == 0 {
                self.head = 1;
                self.h ^= 1;
                self.r = 1;
                return Step::More;
            }
            return Step::End { id, en: true };
        }
        self.r = self.r.wrapping_add(1);
        Step::More
    }

    fn st0(&self) -> u8 {
        (if self.seeked { ST0_SE } else { 0 }) | self.head << SEL_HEAD_SHIFT | self.drive
    }

    fn id(&self) -> [u8; 4] {
        [self.c, self.h, self.r, self.n]
    }
}

impl FloppyController {
    /// A byte written to the FIFO.
    pub(crate) fn write_fifo(&mut self, value: u8) {
        match self.s.phase {
            FdcPhase::Reset | FdcPhase::Result => {}
            FdcPhase::Execution => self.pio_write(value),
            FdcPhase::Command => self.command_byte(value),
        }
    }

    /// A byte read from the FIFO.
    pub(crate) fn read_fifo(&mut self) -> u8 {
        match self.s.phase {
            FdcPhase::Result => {
                let pos = usize::from(self.s.result_pos);
                let value = self.s.result.get(pos).copied().unwrap_or(0);
                if pos == 0 {
                    // Reading the result answers the interrupt.
                    self.s.interrupt = false;
                }
                if pos + 1 >= self.s.result.len() {
                    self.idle();
                } else {
                    self.s.result_pos += 1;
                }
                value
            }
            FdcPhase::Execution => self.pio_read(),
            FdcPhase::Reset | FdcPhase::Command => 0,
        }
    }

    fn command_byte(&mut self, value: u8) {
        if self.s.command.is_empty() {
            // A new command: the interrupt of the last one is answered.
            self.s.interrupt = false;
            self.sync_irq();
            if Command::decode(value).is_none() {
                if value != PART_ID {
                    self.log.invalid(value, invalid_name(value));
                }
                self.finish(vec![ST0_INVALID], false);
                return;
            }
        }
        self.s.command.push(value);
        let Some(cmd) = self.s.command.first().copied().and_then(Command::decode) else {
            self.idle();
            return;
        };
        if self.s.command.len() > cmd.params() {
            let bytes = std::mem::take(&mut self.s.command);
            self.execute(cmd, &bytes);
        }
    }

    /// Back to waiting for a command.
    fn idle(&mut self) {
        self.s.phase = FdcPhase::Command;
        self.s.command.clear();
        self.s.result.clear();
        self.s.result_pos = 0;
        self.s.cursor = None;
        self.s.fifo.clear();
        self.s.fifo_pos = 0;
    }

    /// Enters the result phase with `result` (none: back to idle),
    /// interrupting if `interrupt`.
    fn finish(&mut self, result: Vec<u8>, interrupt: bool) {
        self.idle();
        if !result.is_empty() {
            self.s.phase = FdcPhase::Result;
            self.s.result = result;
        }
        if interrupt {
            self.s.interrupt = true;
        }
    }

    /// A software reset (DOR bit 2 or DSR bit 7): the command is aborted,
    /// CONFIGURE's EIS and POLL return to their defaults (and EFIFO,
    /// FIFOTHR and PRETRK unless LOCKed), PERPENDICULAR MODE's GAP and
    /// WGATE clear, pending statuses and INT go away. SPECIFY, the data
    /// rate and the cylinder numbers stay.
    pub(crate) fn software_reset(&mut self) {
        self.idle();
        if self.s.locked {
            self.s.config &= CONFIG_EFIFO | CONFIG_FIFOTHR;
        } else {
            self.s.config = CONFIG_EFIFO;
            self.s.pretrk = 0;
        }
        self.s.perpendicular &= PERP_DRIVES;
        self.s.pending = [None; 4];
        self.s.interrupt = false;
        self.sync_irq();
    }

    /// The end of a reset: drive polling finds every drive "not ready"
    /// after it, which four SENSE INTERRUPT STATUS commands clear.
    pub(crate) fn leave_reset(&mut self) {
        self.s.phase = FdcPhase::Command;
        for (d, p) in self.s.pending.iter_mut().enumerate() {
            *p = Some(ST0_POLLING | d as u8);
        }
        self.s.interrupt = true;
    }

    fn execute(&mut self, cmd: Command, b: &[u8]) {
        // `b` holds the opcode and `cmd.params()` bytes.
        let byte = |i: usize| b.get(i).copied().unwrap_or(0);
        match cmd {
            Command::Specify => {
                self.s.specify = [byte(1), byte(2)];
                self.idle();
            }
            Command::SenseDriveStatus => {
                let st3 = self.st3(byte(1));
                self.finish(vec![st3], false);
            }
            Command::Recalibrate => self.recalibrate(byte(1) & SEL_DRIVE),
            Command::Seek => {
                let ds = byte(1) & SEL_DRIVE;
                self.step_to(ds, byte(2));
                self.seek_done(ds, 0);
            }
            Command::RelativeSeek => self.relative_seek(byte(1) & SEL_DRIVE, byte(2), byte(0) & CMD_DIR_IN != 0),
            Command::SenseInterrupt => {
                let next = self.s.pending.iter().position(Option::is_some);
                let result = match next.and_then(|d| self.s.pending[d].take().map(|st0| (d, st0))) {
                    Some((d, st0)) => vec![st0, self.s.pcn[d]],
                    None => vec![ST0_INVALID],
                };
                self.finish(result, false);
            }
            Command::Version => self.finish(vec![VERSION_82077AA], false),
            Command::Configure => {
                self.s.config = byte(2) & CONFIG_MASK;
                self.s.pretrk = byte(3);
                self.idle();
            }
            Command::DumpReg => {
                let s = &self.s;
                let result = vec![
                    s.pcn[0],
                    s.pcn[1],
                    s.pcn[2],
                    s.pcn[3],
                    s.specify[0],
                    s.specify[1],
                    s.sc_eot,
                    u8::from(s.locked) << 7 | s.perpendicular,
                    s.config,
                    s.pretrk,
                ];
                self.finish(result, false);
            }
            Command::Perpendicular => {
                let p = byte(1);
                let drives = if p & PERP_OW != 0 { p & PERP_DRIVES } else { self.s.perpendicular & PERP_DRIVES };
                self.s.perpendicular = (drives | (p & PERP_GAP_WGATE)) & PERPENDICULAR_MASK;
                self.idle();
            }
            Command::Lock => {
                self.s.locked = byte(0) & CMD_LOCK != 0;
                self.finish(vec![u8::from(self.s.locked) << LOCK_RESULT_SHIFT], false);
            }
            Command::ReadId => self.read_id(byte(0), byte(1)),
            Command::ReadData | Command::WriteData => {
                let op = if cmd == Command::ReadData { DataOp::Read } else { DataOp::Write };
                let cursor = DataCursor {
                    op,
                    drive: byte(1) & SEL_DRIVE,
                    head: (byte(1) >> SEL_HEAD_SHIFT) & 1,
                    multi_track: byte(0) & CMD_MT != 0,
                    seeked: false,
                    c: byte(2),
                    h: byte(3),
                    r: byte(4),
                    n: byte(5),
                    eot: byte(6),
                    fill: 0,
                    sectors: 0,
                    done: 0,
                };
                self.s.sc_eot = cursor.eot;
                self.start_data(cursor, byte(0) & CMD_MFM != 0);
            }
            Command::FormatTrack => {
                let cursor = DataCursor {
                    op: DataOp::Format,
                    drive: byte(1) & SEL_DRIVE,
                    head: (byte(1) >> SEL_HEAD_SHIFT) & 1,
                    multi_track: false,
                    seeked: false,
                    c: 0,
                    h: 0,
                    r: 0,
                    n: byte(2),
                    eot: 0,
                    fill: byte(5),
                    sectors: byte(3),
                    done: 0,
                };
                self.s.sc_eot = cursor.sectors;
                self.start_data(cursor, byte(0) & CMD_MFM != 0);
            }
        }
    }

    /// SENSE DRIVE STATUS's ST3 for the drive and head `sel` selects.
    fn st3(&self, sel: u8) -> u8 {
        let ds = sel & SEL_DRIVE;
        let head = (sel >> SEL_HEAD_SHIFT) & 1;
        let mut st3 = ST3_RDY | ST3_TWO_SIDED | (head << SEL_HEAD_SHIFT) | ds;
        if let Some(d) = self.s.drives.get(usize::from(ds)).filter(|d| d.drive.is_some()) {
            if d.track == 0 {
                st3 |= ST3_T0;
            }
            // An empty 3.5" drive's sensor sees no write-enable tab.
            if d.media.is_none_or(|m| m.read_only) {
                st3 |= ST3_WP;
            }
        }
        st3
    }

    /// The end of a seek or recalibrate on drive `ds`: its status waits
    /// for SENSE INTERRUPT STATUS, and INT rises.
    fn seek_done(&mut self, ds: u8, extra: u8) {
        self.s.pending[usize::from(ds)] = Some(ST0_SE | extra | ds);
        self.s.interrupt = true;
        self.idle();
    }

    /// Steps drive `ds` from its present cylinder number to `target`.
    fn step_to(&mut self, ds: u8, target: u8) {
        let delta = i32::from(target) - i32::from(self.s.pcn[usize::from(ds)]);
        self.s.pcn[usize::from(ds)] = target;
        self.step(ds, delta);
    }

    /// `delta` step pulses to drive `ds` (out when negative): the head
    /// moves as far as the drive lets it, and a step with a disk in clears
    /// the disk change line.
    fn step(&mut self, ds: u8, delta: i32) {
        if delta == 0 {
            return;
        }
        let Some(d) = self.s.drives.get_mut(usize::from(ds)) else { return };
        let Some(format) = d.drive else { return };
        let last = i32::from(format.cylinders()) - 1;
        d.track = (i32::from(d.track) + delta).clamp(0, last) as u8;
        if d.media.is_some() {
            d.disk_changed = false;
        }
    }

    fn recalibrate(&mut self, ds: u8) {
        self.s.pcn[usize::from(ds)] = 0;
        let present = self.s.drives.get(usize::from(ds)).and_then(|d| d.drive.is_some().then_some(d.track));
        match present {
            // The drive's TRK0 stops the stepping.
            Some(track) => {
                self.step(ds, -i32::from(track));
                self.seek_done(ds, 0);
            }
            // No drive: no TRK0 after the last step pulse.
            None => self.seek_done(ds, ST0_ABNORMAL | ST0_EC),
        }
    }

    fn relative_seek(&mut self, ds: u8, count: u8, inward: bool) {
        let pcn = i32::from(self.s.pcn[usize::from(ds)]);
        let delta = if inward { i32::from(count) } else { -i32::from(count) };
        let target = pcn + delta;
        self.s.pcn[usize::from(ds)] = target.clamp(0, i32::from(u8::MAX)) as u8;
        self.step(ds, delta);
        // Stepping out past cylinder 0 is an equipment check.
        let extra = if target < 0 { ST0_ABNORMAL | ST0_EC } else { 0 };
        self.seek_done(ds, extra);
    }

    /// Whether drive `ds` has a disk the controller reads: in MFM, at the
    /// disk's data rate, on a cylinder the disk has. Otherwise no ID
    /// address mark shows up (MA). Gives the disk's format.
    fn readable(&self, ds: u8, mfm: bool) -> Result<FloppyFormat, Fault> {
        let d = self.s.drives.get(usize::from(ds)).filter(|d| d.drive.is_some()).ok_or((ST1_MA, 0))?;
        let m = d.media.ok_or((ST1_MA, 0))?;
        if !mfm || !m.format.reads_at(self.s.rate) || d.track >= m.format.cylinders() {
            return Err((ST1_MA, 0));
        }
        Ok(m.format)
    }

    /// The image offset of the sector the cursor seeks, or why the
    /// controller does not find it: the IDs on the track under the head
    /// are (that cylinder, the head, 1 to the sectors per track, 2).
    fn locate(&self, cur: &DataCursor) -> Result<u64, Fault> {
        let format = self.readable(cur.drive, true)?;
        let track = self.s.drives[usize::from(cur.drive)].track;
        if cur.c != track {
            return Err((ST1_ND, ST2_WC));
        }
        if cur.h != cur.head || cur.n != SIZE_CODE_512 || cur.r == 0 || cur.r > format.sectors_per_track() {
            return Err((ST1_ND, 0));
        }
        Ok(sector_offset(format, track, cur.head, cur.r))
    }

    fn read_id(&mut self, b0: u8, sel: u8) {
        let ds = sel & SEL_DRIVE;
        let head = (sel >> SEL_HEAD_SHIFT) & 1;
        let st0 = head << SEL_HEAD_SHIFT | ds;
        match self.readable(ds, b0 & CMD_MFM != 0) {
            Ok(format) => {
                let d = &mut self.s.drives[usize::from(ds)];
                let id = [d.track, head, d.next_sector, SIZE_CODE_512];
                d.next_sector = d.next_sector % format.sectors_per_track() + 1;
                self.finish(vec![st0, 0, 0, id[0], id[1], id[2], id[3]], true);
            }
            Err((st1, st2)) => {
                self.s.stats.errors += 1;
                let pcn = self.s.pcn[usize::from(ds)];
                self.finish(vec![st0 | ST0_ABNORMAL, st1, st2, pcn, head, 0, 0], true);
            }
        }
    }

    /// Whether the execution phase runs over DMA (SPECIFY's ND clear).
    fn dma_mode(&self) -> bool {
        self.s.specify[1] & SPECIFY_ND == 0
    }

    fn start_data(&mut self, mut cur: DataCursor, mfm: bool) {
        match cur.op {
            DataOp::Read => self.s.stats.reads += 1,
            DataOp::Write | DataOp::Format => self.s.stats.writes += 1,
        }
        if let Err((st1, st2)) = self.readable(cur.drive, mfm) {
            return self.end(&cur, st1, st2, cur.id());
        }
        // Implied seek (CONFIGURE EIS) for the commands that name a cylinder.
        if cur.op != DataOp::Format && self.s.config & CONFIG_EIS != 0 && cur.c != self.s.pcn[usize::from(cur.drive)] {
            self.step_to(cur.drive, cur.c);
            cur.seeked = true;
            if let Err((st1, st2)) = self.readable(cur.drive, mfm) {
                return self.end(&cur, st1, st2, cur.id());
            }
        }
        let read_only = self.s.drives[usize::from(cur.drive)].media.is_some_and(|m| m.read_only);
        if cur.op != DataOp::Read && read_only {
            return self.end(&cur, ST1_NW, 0, cur.id());
        }
        if self.dma_mode() {
            self.run_dma(cur);
        } else {
            self.start_pio(cur);
        }
    }

    /// Ends a data command: the result phase with its interrupt.
    fn end(&mut self, cur: &DataCursor, st1: u8, st2: u8, id: [u8; 4]) {
        let abnormal = st1 != 0 || st2 != 0;
        if abnormal {
            self.s.stats.errors += 1;
        }
        let st0 = cur.st0() | if abnormal { ST0_ABNORMAL } else { 0 };
        if let Some(d) = self.s.drives.get_mut(usize::from(cur.drive)) {
            if let Some(m) = d.media {
                d.next_sector = cur.r % m.format.sectors_per_track() + 1;
            }
        }
        self.finish(vec![st0, st1, st2, id[0], id[1], id[2], id[3]], true);
    }

    /// Ends a data command after the sector at the cursor: normally, or
    /// with EN when it ran past the track without terminal count.
    fn end_step(&mut self, cur: &DataCursor, id: [u8; 4], en: bool) {
        self.end(cur, if en { ST1_EN } else { 0 }, 0, id);
    }

    fn read_sector(&mut self, cur: &DataCursor, offset: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let drive = usize::from(cur.drive);
        let result = match self.disks.get_mut(drive).and_then(Option::as_mut) {
            Some(image) => read_image(image.as_mut(), offset, buf),
            None => return Err((ST1_MA, 0)),
        };
        match result {
            Ok(()) => {
                self.s.stats.read_bytes += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.log.io_error(|| format!("reading {} bytes at {offset:#x}: {e}", buf.len()));
                Err((ST1_DE, ST2_DD))
            }
        }
    }

    fn write_sector(&mut self, cur: &DataCursor, offset: u64, data: &[u8]) -> Result<(), Fault> {
        let drive = usize::from(cur.drive);
        let result = match self.disks.get_mut(drive).and_then(Option::as_mut) {
            Some(image) => write_image(image.as_mut(), offset, data),
            None => return Err((ST1_MA, 0)),
        };
        match result {
            Ok(()) => {
                self.s.stats.write_bytes += data.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.log.io_error(|| format!("writing {} bytes at {offset:#x}: {e}", data.len()));
                Err((ST1_DE, 0))
            }
        }
    }

    /// FORMAT TRACK takes one sector ID: the fill byte goes into that
    /// sector when a flat image holds it.
    fn format_sector(&mut self, cur: &DataCursor, id: [u8; 4]) -> Result<(), Fault> {
        let format = self.readable(cur.drive, true)?;
        let track = self.s.drives[usize::from(cur.drive)].track;
        let [c, h, r, n] = id;
        let standard = c == track
            && h == cur.head
            && n == SIZE_CODE_512
            && cur.n == SIZE_CODE_512
            && (1..=format.sectors_per_track()).contains(&r);
        if !standard {
            self.log.format_layout(|| {
                format!(
                    "wrote the ID C={c} H={h} R={r} N={n} (size code {}) on cylinder {track}, head {}",
                    cur.n, cur.head
                )
            });
            return Ok(());
        }
        let data = [cur.fill; FLOPPY_SECTOR_SIZE];
        self.write_sector(cur, sector_offset(format, track, cur.head, r), &data)
    }

    /// The execution phase over DMA, all at once.
    fn run_dma(&mut self, mut cur: DataCursor) {
        let gate = self.s.dor & DOR_DMA_GATE != 0;
        let dma = std::sync::Arc::clone(&self.dma);
        if cur.op == DataOp::Format {
            while cur.done < cur.sectors {
                let mut id = [0u8; FORMAT_ID_LEN];
                let t = if gate { dma.lock().read_from_memory(FDC_DMA_CHANNEL, &mut id) } else { Default::default() };
                if t.bytes < FORMAT_ID_LEN && !t.terminal_count {
                    return self.end(&cur, ST1_OR, 0, cur.id());
                }
                if let Err((st1, st2)) = self.format_sector(&cur, id) {
                    return self.end(&cur, st1, st2, cur.id());
                }
                [cur.c, cur.h, cur.r, _] = id;
                cur.done += 1;
                if t.terminal_count {
                    break;
                }
            }
            return self.end(&cur, 0, 0, cur.id());
        }
        loop {
            let offset = match self.locate(&cur) {
                Ok(o) => o,
                Err((st1, st2)) => return self.end(&cur, st1, st2, cur.id()),
            };
            let mut buf = [0u8; FLOPPY_SECTOR_SIZE];
            let t = if cur.op == DataOp::Read {
                if let Err((st1, st2)) = self.read_sector(&cur, offset, &mut buf) {
                    return self.end(&cur, st1, st2, cur.id());
                }
                if gate {
                    dma.lock().write_to_memory(FDC_DMA_CHANNEL, &buf)
                } else {
                    Default::default()
                }
            } else {
                // Past terminal count the sector is written out with zeroes.
                let t = if gate { dma.lock().read_from_memory(FDC_DMA_CHANNEL, &mut buf) } else { Default::default() };
                if t.bytes == FLOPPY_SECTOR_SIZE || t.terminal_count {
                    if let Err((st1, st2)) = self.write_sector(&cur, offset, &buf) {
                        return self.end(&cur, st1, st2, cur.id());
                    }
                }
                t
            };
            if t.bytes < FLOPPY_SECTOR_SIZE && !t.terminal_count {
                return self.end(&cur, ST1_OR, 0, cur.id());
            }
            match cur.advance(t.terminal_count) {
                Step::More => {}
                Step::End { id, en } => return self.end_step(&cur, id, en),
            }
        }
    }

    /// Starts a non-DMA execution phase at the cursor's sector.
    fn start_pio(&mut self, cur: DataCursor) {
        self.idle();
        if !self.prepare_pio(cur) {
            return;
        }
        self.s.phase = FdcPhase::Execution;
        self.s.interrupt = true;
    }

    /// Fills the FIFO for the cursor's sector (a read) or empties it for
    /// the host's bytes; false if the command ended instead.
    fn prepare_pio(&mut self, cur: DataCursor) -> bool {
        self.s.fifo.clear();
        self.s.fifo_pos = 0;
        if cur.op != DataOp::Format {
            let offset = match self.locate(&cur) {
                Ok(o) => o,
                Err((st1, st2)) => {
                    self.end(&cur, st1, st2, cur.id());
                    return false;
                }
            };
            if cur.op == DataOp::Read {
                let mut buf = vec![0u8; FLOPPY_SECTOR_SIZE];
                if let Err((st1, st2)) = self.read_sector(&cur, offset, &mut buf) {
                    self.end(&cur, st1, st2, cur.id());
                    return false;
                }
                self.s.fifo = buf;
            }
        }
        self.s.cursor = Some(cur);
        true
    }

    /// The host reads a byte of a non-DMA read.
    fn pio_read(&mut self) -> u8 {
        let Some(cur) = self.s.cursor.filter(|c| c.op == DataOp::Read) else { return 0 };
        let pos = usize::from(self.s.fifo_pos);
        let Some(&value) = self.s.fifo.get(pos) else { return 0 };
        if pos + 1 < self.s.fifo.len() {
            self.s.fifo_pos += 1;
            return value;
        }
        self.sector_done(cur);
        value
    }

    /// The host writes a byte of a non-DMA write or format.
    fn pio_write(&mut self, value: u8) {
        let Some(cur) = self.s.cursor.filter(|c| c.op != DataOp::Read) else { return };
        self.s.fifo.push(value);
        let want = if cur.op == DataOp::Format { FORMAT_ID_LEN } else { FLOPPY_SECTOR_SIZE };
        if self.s.fifo.len() < want {
            return;
        }
        let fifo = std::mem::take(&mut self.s.fifo);
        if cur.op == DataOp::Format {
            let id = [fifo[0], fifo[1], fifo[2], fifo[3]];
            let mut next = cur;
            [next.c, next.h, next.r, _] = id;
            next.done = next.done.saturating_add(1);
            if let Err((st1, st2)) = self.format_sector(&cur, id) {
                return self.end(&next, st1, st2, next.id());
            }
            if next.done >= next.sectors {
                return self.end(&next, 0, 0, next.id());
            }
            self.s.cursor = Some(next);
            return;
        }
        let result = self.locate(&cur).and_then(|offset| self.write_sector(&cur, offset, &fifo));
        if let Err((st1, st2)) = result {
            return self.end(&cur, st1, st2, cur.id());
        }
        self.sector_done(cur);
    }

    /// A non-DMA sector is through: on to the next one, or the result.
    fn sector_done(&mut self, mut cur: DataCursor) {
        match cur.advance(false) {
            Step::End { id, en } => self.end_step(&cur, id, en),
            Step::More => {
                if self.prepare_pio(cur) {
                    self.s.phase = FdcPhase::Execution;
                }
            }
        }
    }
}

/// Where sector `r` of `track`, `head` sits in an image of `format`.
fn sector_offset(format: FloppyFormat, track: u8, head: u8, r: u8) -> u64 {
    let spt = u64::from(format.sectors_per_track());
    let index = (u64::from(track) * u64::from(format.heads()) + u64::from(head)) * spt + u64::from(r) - 1;
    index * FLOPPY_SECTOR_SIZE as u64
}
