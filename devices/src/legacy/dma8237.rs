//! The PC/AT's two 8237A DMA controllers and their page registers.
//!
//! Datasheet: Intel 8237A "High Performance Programmable DMA Controller"
//! (231466): "Register Description" (Current/Base Address and Word Count,
//! Command, Mode, Request, Mask, Status, Temporary), "Software Commands"
//! (Clear First/Last Flip-Flop, Master Clear, Clear Mask Register),
//! "Autoinitialize" and "Address Generation". The wiring is the IBM PC/AT's,
//! as the PIIX/ICH datasheets describe it: the first controller moves bytes
//! on channels 0-3, the second moves 16-bit words on channels 5-7, and its
//! channel 4 is the cascade input of the first.
//!
//! ```text
//! first 8237 (8-bit)   second 8237 (16-bit)   register
//! 0x00 + 2n            0xC0 + 4n              channel n: address (low byte, then high byte)
//! 0x01 + 2n            0xC2 + 4n              channel n: count (low byte, then high byte)
//! 0x08                 0xD0                   status (read) / command (write)
//! 0x09                 0xD2                   request (write): 2 set | 1:0 channel
//! 0x0A                 0xD4                   single mask (write): 2 set | 1:0 channel
//! 0x0B                 0xD6                   mode (write): 7:6 demand/single/block/cascade |
//!                                             5 decrement | 4 auto-init | 3:2 verify/write/read | 1:0 channel
//! 0x0C                 0xD8                   clear the byte flip-flop (write)
//! 0x0D                 0xDA                   temporary (read) / master clear (write)
//! 0x0E                 0xDC                   clear all mask bits (write)
//! 0x0F                 0xDE                   all mask bits (read, write)
//!
//! status: 7:4 request pending, channels 3-0 | 3:0 terminal count reached (cleared by the read)
//! command: 2 controller disable | 0 memory-to-memory (the other bits are timings)
//!
//! page registers (74LS612): 0x87 ch0  0x83 ch1  0x81 ch2  0x82 ch3
//!                           0x8F ch4 (refresh)  0x8B ch5  0x89 ch6  0x8A ch7
//!                           0x80, 0x84-0x86, 0x88, 0x8C-0x8E: scratch bytes
//! ```
//!
//! Addresses. A byte channel reaches `page << 16 | address`; a word channel
//! `(page & 0xFE) << 16 | address << 1` (its address and count registers
//! count words). The page register does not count: the 16-bit address wraps
//! inside its 64 KiB page (128 KiB for word channels), as on the AT, so a
//! buffer crossing that boundary is written from the start of its page
//! again. Every byte goes through [`GuestMemory`]; what falls outside RAM
//! (or on ROM) is dropped on the way in and reads as all-ones on the way
//! out, logged once, and the counters advance as on the bus.
//!
//! A device moves data with [`IsaDma::write_to_memory`] (device to memory,
//! the 8237's "write" transfer) and [`IsaDma::read_from_memory`] (memory to
//! device, a "read" transfer): as many bytes as its buffer and the
//! channel's count allow, from the programmed address in the programmed
//! direction, stopping at terminal count, which it reports. At terminal
//! count the channel sets its status bit and reloads its base registers
//! (auto-initialize) or masks itself.
//!
//! Model choices:
//! - Transfers are made when the device asks, in one call: demand, single
//!   and block mode move the same bytes, and channel priorities do not
//!   arise. A device whose channel cannot move (masked, controller
//!   disabled, cascade mode) moves nothing and sees no terminal count.
//! - The cascade is always connected: channel 4's mask and mode do not gate
//!   channels 0-3. Firmware programs it, and a kernel booted without
//!   firmware expects the first controller to work.
//! - A transfer whose programmed direction is not the device's (a "read"
//!   channel used by a device that writes memory) leaves memory alone; the
//!   device gets all-ones. Verify transfers touch no memory. Both count.
//! - The request register's bits show in the status register; there is no
//!   device that answers a software request. Memory-to-memory transfers
//!   are not implemented (logged once).
//! - Port 0x0F (0xDE) reads the mask bits back, as later chipsets do.
//! - The EISA high page registers (0x480-0x48F) are not there.

use std::sync::Arc;

use mmu::GuestMemory;
use parking_lot::Mutex;
use persist::{Persist, PersistError};

use crate::bus::{BusDevice, SharedDevice};
use crate::log_once::{LogOnce, Misuse};
use crate::mapping::BusMapping;

/// First port of the first (8-bit) controller.
pub const DMA1_PORT: u16 = 0x00;
/// Ports of the first controller.
pub const DMA1_PORT_LEN: u64 = 16;
/// First port of the second (16-bit) controller.
pub const DMA2_PORT: u16 = 0xc0;
/// Ports of the second controller (each register at an even port; the odd
/// ports alias them, as the AT decodes them).
pub const DMA2_PORT_LEN: u64 = 32;
/// First page register port. Port 0x80 itself is a scratch byte here and
/// the POST code port on a PC: [`IsaDma::bus_mappings`] leaves it out.
pub const PAGE_PORT: u16 = 0x80;
/// Page register ports.
pub const PAGE_PORT_LEN: u64 = 16;
/// DMA channels: 0-3 move bytes, 4 is the cascade, 5-7 move words.
pub const DMA_CHANNELS: usize = 8;
/// The channel the first controller cascades into.
pub const CASCADE_CHANNEL: usize = 4;

/// The page register (offset from 0x80) of each channel.
const PAGE_INDEX: [usize; DMA_CHANNELS] = [0x7, 0x3, 0x1, 0x2, 0xf, 0xb, 0x9, 0xa];

// Register numbers of one controller: the port of the first controller,
// (port - 0xC0) / 2 of the second.
const REG_STATUS_COMMAND: u8 = 8;
const REG_REQUEST: u8 = 9;
const REG_SINGLE_MASK: u8 = 10;
const REG_MODE: u8 = 11;
const REG_CLEAR_FLIP_FLOP: u8 = 12;
const REG_TEMP_MASTER_CLEAR: u8 = 13;
const REG_CLEAR_MASK: u8 = 14;
const REG_ALL_MASK: u8 = 15;

// Command register.
const CMD_MEM_TO_MEM: u8 = 0b0000_0001;
const CMD_DISABLE: u8 = 0b0000_0100;
// Mode register.
const MODE_CHANNEL: u8 = 0b0000_0011;
const MODE_TYPE_MASK: u8 = 0b0000_1100;
const MODE_TYPE_VERIFY: u8 = 0b0000_0000;
const MODE_TYPE_WRITE: u8 = 0b0000_0100;
const MODE_TYPE_READ: u8 = 0b0000_1000;
const MODE_AUTO_INIT: u8 = 0b0001_0000;
const MODE_DECREMENT: u8 = 0b0010_0000;
const MODE_SELECT_MASK: u8 = 0b1100_0000;
const MODE_CASCADE: u8 = 0b1100_0000;
// Request and single mask registers.
const REQ_CHANNEL: u8 = 0b0000_0011;
const REQ_SET: u8 = 0b0000_0100;
// Status register and the four-bit channel sets.
const STATUS_TC: u8 = 0x0f;
const CHANNEL_BITS: u8 = 0x0f;
const REQUEST_SHIFT: u8 = 4;

/// Guest pages, the granularity of RAM and ROM regions.
const PAGE_BYTES: u64 = mmu::memory::PAGE_SIZE;

/// One channel's registers, for save and restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DmaChannelState {
    /// Base address: what the guest wrote, reloaded by auto-initialize.
    pub base_address: u16,
    /// Base count (transfers minus one).
    pub base_count: u16,
    /// Current address.
    pub current_address: u16,
    /// Current count; 0xFFFF after terminal count.
    pub current_count: u16,
    /// Mode register bits 7:2 (bits 1:0 select the channel and are 0 here).
    pub mode: u8,
}

/// One 8237's registers, for save and restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Dma8237State {
    /// The four channels.
    pub channels: [DmaChannelState; 4],
    /// Command register.
    pub command: u8,
    /// Terminal count bits 3:0 (the request bits come from `request`).
    pub status: u8,
    /// Request register bits 3:0.
    pub request: u8,
    /// Mask bits 3:0 (set: the channel does not transfer).
    pub mask: u8,
    /// The byte pointer flip-flop: the next address or count byte is the high one.
    pub flip_flop: bool,
    /// Temporary register.
    pub temporary: u8,
}

/// The state of both controllers and the page registers, for save and restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct IsaDmaState {
    /// The first (channels 0-3) and second (channels 4-7) controller.
    pub controllers: [Dma8237State; 2],
    /// The page registers at 0x80-0x8F, scratch bytes included.
    pub pages: [u8; 16],
}

/// What one device transfer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DmaTransfer {
    /// Bytes moved between the device's buffer and the bus.
    pub bytes: usize,
    /// The transfer reached terminal count (EOP): the device stops there.
    pub terminal_count: bool,
}

/// The device side of a transfer.
enum Xfer<'a> {
    /// Device to memory (a "write" transfer).
    ToMemory(&'a [u8]),
    /// Memory to device (a "read" transfer).
    FromMemory(&'a mut [u8]),
}

impl Xfer<'_> {
    fn len(&self) -> usize {
        match self {
            Xfer::ToMemory(d) => d.len(),
            Xfer::FromMemory(b) => b.len(),
        }
    }
}

/// The two 8237A controllers and the page registers of a PC/AT.
pub struct IsaDma {
    s: IsaDmaState,
    mem: Arc<GuestMemory>,
    log: LogOnce,
}

impl std::fmt::Debug for IsaDma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsaDma").field("state", &self.s).finish_non_exhaustive()
    }
}

/// The part name the controllers' errors carry.
const PART: &str = "8237 DMA";

impl IsaDma {
    /// Both controllers in their power-on state (every channel masked,
    /// registers zero), moving data to and from `mem`.
    pub fn new(mem: Arc<GuestMemory>) -> Self {
        let mut s = IsaDmaState::default();
        for c in &mut s.controllers {
            c.mask = CHANNEL_BITS;
        }
        Self { s, mem, log: LogOnce::new() }
    }

    /// The ranges to register on the port bus: the first controller at
    /// 0x00-0x0F, the second at 0xC0-0xDF and the page registers at
    /// 0x81-0x8F (port 0x80 stays the POST code port; see
    /// [`IsaDma::page_register_device`] for a machine that wants it here).
    pub fn bus_mappings(this: &Arc<Mutex<Self>>) -> Vec<BusMapping> {
        let window = |base: u16, label: &'static str| -> SharedDevice {
            Arc::new(Mutex::new(DmaWindow { dma: Arc::clone(this), base, label }))
        };
        vec![
            BusMapping::pio(u64::from(DMA1_PORT), DMA1_PORT_LEN, window(DMA1_PORT, "8237 DMA controller 1")),
            BusMapping::pio(u64::from(DMA2_PORT), DMA2_PORT_LEN, window(DMA2_PORT, "8237 DMA controller 2")),
            BusMapping::pio(u64::from(PAGE_PORT) + 1, PAGE_PORT_LEN - 1, window(PAGE_PORT + 1, "DMA page registers")),
        ]
    }

    /// A device answering all 16 page register ports, port 0x80 at offset
    /// 0, for a machine that maps 0x80-0x8F here instead of the POST code
    /// latch.
    pub fn page_register_device(this: &Arc<Mutex<Self>>) -> SharedDevice {
        Arc::new(Mutex::new(DmaWindow { dma: Arc::clone(this), base: PAGE_PORT, label: "DMA page registers" }))
    }

    /// A system reset: both controllers get a master clear (every channel
    /// masked; addresses, counts and modes kept, as the RESET pin does).
    /// The page registers keep their values.
    pub fn reset(&mut self) {
        for c in &mut self.s.controllers {
            master_clear(c);
        }
    }

    /// Whether `channel` transfers now: it exists, is not the cascade,
    /// its controller is enabled and it is unmasked.
    pub fn channel_ready(&self, channel: usize) -> bool {
        if channel >= DMA_CHANNELS || channel == CASCADE_CHANNEL {
            return false;
        }
        let c = &self.s.controllers[channel / 4];
        let local = channel % 4;
        c.command & CMD_DISABLE == 0
            && c.mask & (1 << local) == 0
            && c.channels[local].mode & MODE_SELECT_MASK != MODE_CASCADE
    }

    /// Moves `data` from a device into guest memory over `channel`: as much
    /// of it as the channel's count allows (a word channel moves whole
    /// words: an odd last byte stays). Stops at terminal count.
    pub fn write_to_memory(&mut self, channel: usize, data: &[u8]) -> DmaTransfer {
        self.transfer(channel, Xfer::ToMemory(data))
    }

    /// Fills `buf` for a device from guest memory over `channel`, as far as
    /// the channel's count allows (whole words on a word channel); the
    /// bytes past what moved are left as they were. Stops at terminal
    /// count.
    pub fn read_from_memory(&mut self, channel: usize, buf: &mut [u8]) -> DmaTransfer {
        self.transfer(channel, Xfer::FromMemory(buf))
    }

    /// Reads the register at ISA port `port`: the controllers (0x00-0x0F,
    /// 0xC0-0xDF) and the page registers (0x80-0x8F). Other ports and the
    /// write-only registers read 0xFF.
    pub fn read_port(&mut self, port: u16) -> u8 {
        match port {
            0x00..=0x0f => self.read_reg(0, port as u8),
            0xc0..=0xdf => self.read_reg(1, ((port - DMA2_PORT) >> 1) as u8),
            0x80..=0x8f => self.s.pages[usize::from(port - PAGE_PORT)],
            _ => 0xff,
        }
    }

    /// Writes the register at ISA port `port` (see [`IsaDma::read_port`]);
    /// writes to other ports are dropped.
    pub fn write_port(&mut self, port: u16, value: u8) {
        match port {
            0x00..=0x0f => self.write_reg(0, port as u8, value),
            0xc0..=0xdf => self.write_reg(1, ((port - DMA2_PORT) >> 1) as u8, value),
            0x80..=0x8f => self.s.pages[usize::from(port - PAGE_PORT)] = value,
            _ => {}
        }
    }

    fn read_reg(&mut self, ctrl: usize, reg: u8) -> u8 {
        let c = &mut self.s.controllers[ctrl];
        match reg {
            0..=7 => {
                let ch = &c.channels[usize::from(reg >> 1)];
                let value = if reg & 1 == 0 { ch.current_address } else { ch.current_count };
                let [lo, hi] = value.to_le_bytes();
                let high = c.flip_flop;
                c.flip_flop = !high;
                if high {
                    hi
                } else {
                    lo
                }
            }
            REG_STATUS_COMMAND => {
                let status = (c.status & STATUS_TC) | (c.request << REQUEST_SHIFT);
                c.status &= !STATUS_TC;
                status
            }
            REG_TEMP_MASTER_CLEAR => c.temporary,
            REG_ALL_MASK => c.mask,
            _ => 0xff,
        }
    }

    fn write_reg(&mut self, ctrl: usize, reg: u8, value: u8) {
        let c = &mut self.s.controllers[ctrl];
        let bit = 1u8 << (value & REQ_CHANNEL);
        match reg {
            0..=7 => {
                let high = c.flip_flop;
                c.flip_flop = !high;
                let ch = &mut c.channels[usize::from(reg >> 1)];
                let (base, current) = if reg & 1 == 0 {
                    (&mut ch.base_address, &mut ch.current_address)
                } else {
                    (&mut ch.base_count, &mut ch.current_count)
                };
                let [lo, hi] = base.to_le_bytes();
                *base = if high { u16::from_le_bytes([lo, value]) } else { u16::from_le_bytes([value, hi]) };
                *current = *base;
            }
            REG_STATUS_COMMAND => {
                c.command = value;
                if value & CMD_MEM_TO_MEM != 0 && self.log.first(Misuse::Unimplemented) {
                    tracing::warn!(target: "devices", "8237 DMA: memory-to-memory transfers are not implemented (logged once)");
                }
            }
            REG_REQUEST => {
                if value & REQ_SET != 0 {
                    c.request |= bit;
                } else {
                    c.request &= !bit;
                }
            }
            REG_SINGLE_MASK => {
                if value & REQ_SET != 0 {
                    c.mask |= bit;
                } else {
                    c.mask &= !bit;
                }
            }
            REG_MODE => c.channels[usize::from(value & MODE_CHANNEL)].mode = value & !MODE_CHANNEL,
            REG_CLEAR_FLIP_FLOP => c.flip_flop = false,
            REG_TEMP_MASTER_CLEAR => master_clear(c),
            REG_CLEAR_MASK => c.mask = 0,
            REG_ALL_MASK => c.mask = value & CHANNEL_BITS,
            _ => {}
        }
    }

    fn transfer(&mut self, channel: usize, mut xfer: Xfer<'_>) -> DmaTransfer {
        if !self.channel_ready(channel) {
            return DmaTransfer::default();
        }
        let (ctrl, local) = (channel / 4, channel % 4);
        let unit: usize = if ctrl == 0 { 1 } else { 2 };
        let ch = self.s.controllers[ctrl].channels[local];
        let available = u64::from(ch.current_count) + 1;
        let units = ((xfer.len() / unit) as u64).min(available);
        if units == 0 {
            return DmaTransfer::default();
        }
        let wanted = match xfer {
            Xfer::ToMemory(_) => MODE_TYPE_WRITE,
            Xfer::FromMemory(_) => MODE_TYPE_READ,
        };
        let kind = ch.mode & MODE_TYPE_MASK;
        let touch = kind == wanted;
        if !touch && kind != MODE_TYPE_VERIFY && self.log.first(Misuse::BadValue) {
            tracing::warn!(
                target: "devices",
                channel,
                mode = format_args!("{:#04x}", ch.mode),
                "8237 DMA: a device transfer on a channel programmed for the other direction or an illegal type; memory is not touched (logged once)"
            );
        }
        let page = u64::from(self.s.pages[PAGE_INDEX[channel]]);
        let page_base = if unit == 1 { page << 16 } else { (page & 0xfe) << 16 };
        let decrement = ch.mode & MODE_DECREMENT != 0;
        let mut addr = ch.current_address;
        let mut done = 0u64;
        while done < units {
            let left = units - done;
            // A run of addresses that does not wrap inside the page.
            let run = if decrement { left.min(u64::from(addr) + 1) } else { left.min(0x1_0000 - u64::from(addr)) };
            let lowest = if decrement { u64::from(addr) + 1 - run } else { u64::from(addr) };
            let phys = page_base + lowest * unit as u64;
            let at = done as usize * unit;
            let len = run as usize * unit;
            match &mut xfer {
                Xfer::ToMemory(data) if touch => {
                    let part = &data[at..at + len];
                    if decrement {
                        self.store(phys, &reverse_units(part, unit));
                    } else {
                        self.store(phys, part);
                    }
                }
                Xfer::ToMemory(_) => {}
                Xfer::FromMemory(buf) => {
                    let part = &mut buf[at..at + len];
                    if !touch {
                        part.fill(0xff);
                    } else if decrement {
                        let mut tmp = vec![0u8; len];
                        self.load(phys, &mut tmp);
                        part.copy_from_slice(&reverse_units(&tmp, unit));
                    } else {
                        self.load(phys, part);
                    }
                }
            }
            // `run` is at most 0x10000; a whole lap leaves the address as it was.
            let step = run as u16;
            addr = if decrement { addr.wrapping_sub(step) } else { addr.wrapping_add(step) };
            done += run;
        }
        let terminal_count = units == available;
        let c = &mut self.s.controllers[ctrl];
        let chs = &mut c.channels[local];
        chs.current_address = addr;
        chs.current_count = chs.current_count.wrapping_sub(units as u16);
        if terminal_count {
            c.status |= 1 << local;
            c.request &= !(1 << local);
            if chs.mode & MODE_AUTO_INIT != 0 {
                chs.current_address = chs.base_address;
                chs.current_count = chs.base_count;
            } else {
                c.mask |= 1 << local;
            }
        }
        DmaTransfer { bytes: units as usize * unit, terminal_count }
    }

    /// Writes `data` at guest address `phys`, dropping what no RAM takes.
    fn store(&self, phys: u64, data: &[u8]) {
        if self.mem.write(phys, data).is_ok() {
            return;
        }
        // Page by page: RAM and ROM regions are whole pages, so this keeps
        // every byte RAM takes.
        let mut at = 0;
        while at < data.len() {
            let a = phys + at as u64;
            let n = (data.len() - at).min((PAGE_BYTES - a % PAGE_BYTES) as usize);
            let _ = self.mem.write(a, &data[at..at + n]);
            at += n;
        }
        self.log_outside(phys, data.len());
    }

    /// Reads guest memory at `phys` into `buf`; what no RAM or ROM backs reads as 0xFF.
    fn load(&self, phys: u64, buf: &mut [u8]) {
        if self.mem.read(phys, buf).is_ok() {
            return;
        }
        let mut at = 0;
        while at < buf.len() {
            let a = phys + at as u64;
            let n = (buf.len() - at).min((PAGE_BYTES - a % PAGE_BYTES) as usize);
            if self.mem.read(a, &mut buf[at..at + n]).is_err() {
                buf[at..at + n].fill(0xff);
            }
            at += n;
        }
        self.log_outside(phys, buf.len());
    }

    fn log_outside(&self, phys: u64, len: usize) {
        if self.log.first(Misuse::OutOfWindow) {
            tracing::warn!(
                target: "devices",
                "8237 DMA: a transfer of {len} bytes at {phys:#x} falls (partly) outside guest RAM; those bytes are dropped (logged once)"
            );
        }
    }
}

/// The units (bytes or words) of `data` in reverse order.
fn reverse_units(data: &[u8], unit: usize) -> Vec<u8> {
    data.chunks(unit).rev().flatten().copied().collect()
}

/// A master clear (or the RESET pin): command, status, request, temporary
/// register and flip-flop cleared, every channel masked.
fn master_clear(c: &mut Dma8237State) {
    c.command = 0;
    c.status = 0;
    c.request = 0;
    c.temporary = 0;
    c.flip_flop = false;
    c.mask = CHANNEL_BITS;
}

impl IsaDma {
    /// The checks of [`Persist::restore`], changing nothing: the four-bit
    /// registers hold four bits, and a mode keeps no channel number.
    pub fn check_state(state: &IsaDmaState) -> Result<(), PersistError> {
        for c in &state.controllers {
            PersistError::check_max(PART, "status", c.status, STATUS_TC)?;
            PersistError::check_max(PART, "request", c.request, CHANNEL_BITS)?;
            PersistError::check_max(PART, "mask", c.mask, CHANNEL_BITS)?;
            for ch in &c.channels {
                PersistError::check(ch.mode & MODE_CHANNEL == 0, PART, "mode", || {
                    format!("is {:#04x}; bits 1:0 select a channel and are not kept", ch.mode)
                })?;
            }
        }
        Ok(())
    }

    /// Loads a state [`IsaDma::check_state`] passed.
    pub fn load_state(&mut self, state: &IsaDmaState) {
        self.s = *state;
    }
}

/// Restore checks that the four-bit registers (status, request, mask) hold
/// four bits and that no mode keeps a channel number; every other value is
/// one the guest can write.
impl Persist for IsaDma {
    type State = IsaDmaState;

    fn save(&self) -> IsaDmaState {
        self.s
    }

    fn restore(&mut self, state: &IsaDmaState) -> Result<(), PersistError> {
        Self::check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

/// One port range of the controllers on the bus. Wider accesses are split
/// into byte accesses at consecutive ports, as the ISA bus splits them for
/// an 8-bit device.
struct DmaWindow {
    dma: Arc<Mutex<IsaDma>>,
    base: u16,
    label: &'static str,
}

impl DmaWindow {
    fn port(&self, offset: u64, i: usize) -> u16 {
        // Offsets stay inside the small range the window is mapped at.
        u64::from(self.base).saturating_add(offset).saturating_add(i as u64).min(u64::from(u16::MAX)) as u16
    }
}

impl BusDevice for DmaWindow {
    fn debug_label(&self) -> String {
        self.label.to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut dma = self.dma.lock();
        for (i, b) in data.iter_mut().enumerate() {
            *b = dma.read_port(self.port(offset, i));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut dma = self.dma.lock();
        for (i, &v) in data.iter().enumerate() {
            dma.write_port(self.port(offset, i), v);
        }
    }
}

#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::fuzz_dma_programming;

#[cfg(test)]
mod tests;
