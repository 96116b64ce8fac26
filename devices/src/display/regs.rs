//! The register and memory accesses of the standard VGA: the VGA ports,
//! the Bochs VBE registers, the 0xa0000 window, BAR0 and BAR2.
//!
//! The planar memory logic (write modes 0-3 with set/reset, rotation,
//! the logical function and the bit mask over the four latches; read modes
//! 0 and 1) follows the IBM VGA Technical Reference's description of the
//! graphics controller.

use super::edid::EDID;
use super::{vbe, StdVga, DIRTY_PAGE};
use crate::log_once::Misuse;

/// The bits of each sequencer register that exist.
pub(crate) const SR_MASK: [u8; 8] = [0x03, 0x3d, 0x0f, 0x3f, 0x0e, 0x00, 0x00, 0xff];
/// The bits of each graphics controller register that exist.
pub(crate) const GR_MASK: [u8; 16] = [0x0f, 0x0f, 0x0f, 0x1f, 0x03, 0x7b, 0x0f, 0x0f, 0xff, 0, 0, 0, 0, 0, 0, 0];

/// The bits of each attribute controller register that exist.
pub(crate) const AR_MASK: [u8; 21] = [
    0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0xef, 0xff, 0x3f,
    0x0f, 0x0f,
];
/// Sequencer memory mode: chain 4.
pub(crate) const SR4_CHAIN4: u8 = 0x08;
/// Graphics mode: host odd/even.
const GR5_ODD_EVEN: u8 = 0x10;
/// Graphics mode: read mode 1 (color compare).
const GR5_READ_COMPARE: u8 = 0x08;
/// MISC output: the CRTC answers at 0x3dx (colour) instead of 0x3bx.
pub(crate) const MISC_COLOR: u8 = 0x01;
/// Input status 1: display disabled (in a blanking interval).
const ST01_DISP_ENABLE: u8 = 0x01;
/// Input status 1: vertical retrace.
const ST01_V_RETRACE: u8 = 0x08;
/// The attribute index register's palette address source bit.
pub(crate) const AR_PAS: u8 = 0x20;
/// The first 256 KiB of VRAM hold plane 2's eight font maps.
pub(crate) const FONT_AREA: usize = 0x4_0000;

/// Size of QEMU's extended register block, as its 0x600 register reads.
const QEXT_SIZE: u32 = 8;
/// Framebuffer endianness register value: little endian.
const QEXT_LITTLE_ENDIAN: u32 = 0x1e1e_1e1e;
/// MMIO offsets of the blocks of BAR2.
const MMIO_EDID_END: u64 = 0x400;
const MMIO_VGA: u64 = 0x400;
const MMIO_VGA_END: u64 = 0x420;
const MMIO_VBE: u64 = 0x500;
const MMIO_VBE_END: u64 = 0x500 + 2 * (vbe::VIDEO_MEMORY_64K as u64 + 1);
const MMIO_QEXT: u64 = 0x600;
const MMIO_QEXT_END: u64 = 0x608;

/// Expands the low 4 bits of `v` to one 0xff byte per set bit (bit p to
/// byte p, the byte of plane p).
pub(crate) fn mask16(v: u8) -> u32 {
    (0..4).fold(0, |m, p| if v & (1 << p) != 0 { m | (0xff << (8 * p)) } else { m })
}

impl StdVga {
    // ---- VRAM with dirty tracking -----------------------------------

    /// Marks the page holding VRAM byte `idx` dirty.
    fn mark_dirty(&mut self, idx: usize) {
        let page = idx / DIRTY_PAGE;
        if let Some(w) = self.dirty.get_mut(page / 64) {
            *w |= 1 << (page % 64);
            self.any_dirty = true;
        }
        if idx < FONT_AREA && idx % 4 == 2 {
            self.font_dirty = true;
        }
    }

    /// Writes VRAM byte `idx` (dropped past the end).
    pub(crate) fn vram_write8(&mut self, idx: usize, v: u8) {
        if self.shared.byte(idx as u64).is_some_and(|b| b != v) {
            self.shared.write(idx as u64, &[v]);
            self.mark_dirty(idx);
        }
    }

    /// The four planes' bytes at plane offset `addr` (VRAM bytes `4 * addr..`).
    fn vram_read32(&self, addr: usize) -> Option<u32> {
        let i = addr.checked_mul(4)?;
        let mut b = [0u8; 4];
        self.shared.read(i as u64, &mut b).then(|| u32::from_le_bytes(b))
    }

    /// Writes the planes of `mask` (0xff per plane byte) at plane offset `addr`.
    fn vram_write32(&mut self, addr: usize, val: u32, mask: u32) {
        let Some(old) = self.vram_read32(addr) else { return };
        let new = (old & !mask) | (val & mask);
        if new != old {
            let i = addr * 4;
            self.shared.write(i as u64, &new.to_le_bytes());
            self.mark_dirty(i);
            if mask & 0x00ff_0000 != 0 {
                self.mark_dirty(i + 2);
            }
        }
    }

    // ---- the 0xa0000 window -----------------------------------------

    /// The address in the memory the window's offset `offset` reaches, as
    /// GR6's memory map selects; `None` outside the selected range.
    fn window_addr(&self, offset: u64) -> Option<usize> {
        let offset = (offset & 0x1_ffff) as usize;
        match (self.r.gr[6] >> 2) & 3 {
            0 => Some(offset),
            1 => (offset < 0x1_0000).then(|| offset + self.r.bank_offset as usize),
            2 => offset.checked_sub(0x1_0000).filter(|&a| a < 0x8000),
            _ => offset.checked_sub(0x1_8000).filter(|&a| a < 0x8000),
        }
    }

    /// A byte read at `offset` of the window.
    pub(crate) fn mem_read(&mut self, offset: u64) -> u8 {
        let Some(addr) = self.window_addr(offset) else { return 0xff };
        let sr4 = self.r.sr[4];
        let gr5 = self.r.gr[5];
        if sr4 & SR4_CHAIN4 != 0 {
            return self.shared.byte(addr as u64).unwrap_or(0xff);
        }
        if gr5 & GR5_ODD_EVEN != 0 {
            let plane = usize::from(self.r.gr[4] & 2) | (addr & 1);
            return self.shared.byte(((addr >> 1) * 4 + plane) as u64).unwrap_or(0xff);
        }
        let Some(latch) = self.vram_read32(addr) else { return 0xff };
        self.r.latch = latch;
        if gr5 & GR5_READ_COMPARE == 0 {
            (latch >> (8 * u32::from(self.r.gr[4] & 3))) as u8
        } else {
            let mut ret = (latch ^ mask16(self.r.gr[2])) & mask16(self.r.gr[7]);
            ret |= ret >> 16;
            ret |= ret >> 8;
            !(ret as u8)
        }
    }

    /// A byte write at `offset` of the window.
    pub(crate) fn mem_write(&mut self, offset: u64, val: u8) {
        let Some(addr) = self.window_addr(offset) else { return };
        let sr4 = self.r.sr[4];
        let map_mask = self.r.sr[2];
        if sr4 & SR4_CHAIN4 != 0 {
            if map_mask & (1 << (addr & 3)) != 0 {
                self.vram_write8(addr, val);
            }
            return;
        }
        let gr = self.r.gr;
        if gr[5] & GR5_ODD_EVEN != 0 {
            let plane = usize::from(gr[4] & 2) | (addr & 1);
            if map_mask & (1 << plane) != 0 {
                self.vram_write8((addr >> 1) * 4 + plane, val);
            }
            return;
        }
        let latch = self.r.latch;
        let rotate = |v: u8| v.rotate_right(u32::from(gr[3] & 7));
        let spread = |v: u8| u32::from(v) * 0x0101_0101;
        let value = match gr[5] & 3 {
            1 => latch,
            mode => {
                let (v, bit_mask) = match mode {
                    0 => {
                        let v = spread(rotate(val));
                        let set_mask = mask16(gr[1]);
                        ((v & !set_mask) | (mask16(gr[0]) & set_mask), gr[8])
                    }
                    2 => (mask16(val), gr[8]),
                    _ => (mask16(gr[0]), gr[8] & rotate(val)),
                };
                let v = match gr[3] >> 3 & 3 {
                    0 => v,
                    1 => v & latch,
                    2 => v | latch,
                    _ => v ^ latch,
                };
                let bit_mask = spread(bit_mask);
                (v & bit_mask) | (latch & !bit_mask)
            }
        };
        self.vram_write32(addr, value, mask16(map_mask));
    }

    // ---- BAR0 -------------------------------------------------------

    /// A read of the linear framebuffer.
    pub(crate) fn lfb_read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.shared.read(offset, data) {
            data.fill(0xff);
        }
    }

    /// A write of the linear framebuffer.
    pub(crate) fn lfb_write(&mut self, offset: u64, data: &[u8]) {
        let Ok(o) = usize::try_from(offset) else { return };
        for (i, &b) in data.iter().enumerate() {
            if let Some(idx) = o.checked_add(i) {
                self.vram_write8(idx, b);
            }
        }
    }

    // ---- BAR2 -------------------------------------------------------

    /// A read of the MMIO BAR.
    pub(crate) fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < MMIO_EDID_END => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = EDID.get(o as usize + i).copied().unwrap_or(0);
                }
            }
            o if (MMIO_VGA..MMIO_VGA_END).contains(&o) => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = self.port_read(0x3c0 + (o - MMIO_VGA) as u16 + i as u16);
                }
            }
            o if (MMIO_VBE..MMIO_VBE_END).contains(&o) => {
                for (i, b) in data.iter_mut().enumerate() {
                    let at = o - MMIO_VBE + i as u64;
                    let v = self.vbe_read((at / 2) as u16);
                    *b = (v >> (8 * (at % 2))) as u8;
                }
            }
            o if (MMIO_QEXT..MMIO_QEXT_END).contains(&o) => {
                for (i, b) in data.iter_mut().enumerate() {
                    let at = o - MMIO_QEXT + i as u64;
                    let reg = if at < 4 { QEXT_SIZE } else { QEXT_LITTLE_ENDIAN };
                    *b = (reg >> (8 * (at % 4))) as u8;
                }
            }
            _ => data.fill(0),
        }
    }

    /// A write of the MMIO BAR.
    pub(crate) fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if (MMIO_VGA..MMIO_VGA_END).contains(&o) => {
                for (i, &b) in data.iter().enumerate() {
                    self.port_write(0x3c0 + (o - MMIO_VGA) as u16 + i as u16, b);
                }
            }
            o if (MMIO_VBE..MMIO_VBE_END).contains(&o) => {
                let at = o - MMIO_VBE;
                if at.is_multiple_of(2) && data.len() >= 2 {
                    for (i, pair) in data.chunks(2).enumerate() {
                        let reg = (at / 2) as u16 + i as u16;
                        let v = match *pair {
                            [lo, hi] => u16::from_le_bytes([lo, hi]),
                            [lo] => (self.vbe_raw(reg) & 0xff00) | u16::from(lo),
                            _ => continue,
                        };
                        self.vbe_write(reg, v);
                    }
                } else {
                    // Byte writes merge into the register's current value.
                    for (i, &b) in data.iter().enumerate() {
                        let at = at + i as u64;
                        let reg = (at / 2) as u16;
                        let old = self.vbe_raw(reg);
                        let v = if at.is_multiple_of(2) {
                            (old & 0xff00) | u16::from(b)
                        } else {
                            (old & 0xff) | u16::from(b) << 8
                        };
                        self.vbe_write(reg, v);
                    }
                }
            }
            o if (MMIO_QEXT..MMIO_QEXT_END).contains(&o) => {
                if o == MMIO_QEXT + 4 && data.len() == 4 {
                    let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                    if v != QEXT_LITTLE_ENDIAN {
                        self.misuse(Misuse::BadValue, || {
                            format!("framebuffer endianness {v:#010x} is not little endian (0x1e1e1e1e); ignored")
                        });
                    }
                } else if o != MMIO_QEXT || data.len() != 4 {
                    self.misuse(Misuse::AccessSize, || {
                        format!("a {}-byte write at {o:#x} of the extended registers; ignored", data.len())
                    });
                }
            }
            o => self
                .misuse(Misuse::Unimplemented, || format!("a write at {o:#x} of BAR2 (read-only or nothing); ignored")),
        }
    }

    // ---- the Bochs VBE ports ----------------------------------------

    /// A read of the VBE ports (offset 0: index, 1 and 2: data).
    pub(crate) fn vbe_port_read(&mut self, offset: u64, data: &mut [u8]) {
        let v = if offset == 0 { self.r.vbe_index } else { self.vbe_read(self.r.vbe_index) };
        match data.len() {
            1 | 2 => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = (v >> (8 * i)) as u8;
                }
            }
            n => {
                self.misuse(Misuse::AccessSize, || format!("a {n}-byte read of the VBE ports"));
                data.fill(0xff);
            }
        }
    }

    /// A write of the VBE ports (offset 0: index, 1 and 2: data). A byte
    /// write sets the whole 16-bit value from the byte.
    pub(crate) fn vbe_port_write(&mut self, offset: u64, data: &[u8]) {
        let v = match *data {
            [b] => u16::from(b),
            [lo, hi] => u16::from_le_bytes([lo, hi]),
            _ => {
                self.misuse(Misuse::AccessSize, || format!("a {}-byte write of the VBE ports", data.len()));
                return;
            }
        };
        if offset == 0 {
            self.r.vbe_index = v;
        } else {
            self.vbe_write(self.r.vbe_index, v);
        }
    }

    /// The stored value of VBE register `index` (0 for the others).
    fn vbe_raw(&self, index: u16) -> u16 {
        self.r.vbe_regs.get(usize::from(index)).copied().unwrap_or(0)
    }

    /// A read of VBE register `index`.
    pub(crate) fn vbe_read(&mut self, index: u16) -> u16 {
        let i = usize::from(index);
        if i < vbe::NB {
            if self.r.vbe_regs[vbe::ENABLE] & vbe::GETCAPS != 0 {
                match i {
                    vbe::XRES => return vbe::MAX_XRES,
                    vbe::YRES => return vbe::MAX_YRES,
                    vbe::BPP => return vbe::MAX_BPP,
                    _ => {}
                }
            }
            self.r.vbe_regs[i]
        } else if i == vbe::VIDEO_MEMORY_64K {
            (self.shared.len() >> 16) as u16
        } else {
            self.misuse(Misuse::Unimplemented, || format!("a read of VBE register {index:#x}"));
            0
        }
    }

    /// A write of VBE register `index`.
    pub(crate) fn vbe_write(&mut self, index: u16, val: u16) {
        let i = usize::from(index);
        self.regs_dirty = true;
        match i {
            vbe::ID => {
                if (vbe::ID0..=vbe::ID5).contains(&val) {
                    self.r.vbe_regs[vbe::ID] = val;
                }
            }
            vbe::XRES | vbe::YRES | vbe::BPP | vbe::VIRT_WIDTH | vbe::X_OFFSET | vbe::Y_OFFSET => {
                if i == vbe::BPP && !matches!(val, 0 | 4 | 8 | 15 | 16 | 24 | 32) {
                    self.misuse(Misuse::BadValue, || format!("VBE depth {val} does not exist; 8 is used"));
                }
                self.r.vbe_regs[i] = val;
                self.vbe_fixup();
            }
            vbe::BANK => {
                let bank_mask = ((self.shared.len() >> 16).saturating_sub(1)) as u16;
                let v = val & bank_mask;
                self.r.vbe_regs[vbe::BANK] = v;
                self.r.bank_offset = u32::from(v) << 16;
            }
            vbe::ENABLE => {
                let old = self.r.vbe_regs[vbe::ENABLE];
                if val & vbe::ENABLED != 0 && old & vbe::ENABLED == 0 {
                    let r = &mut self.r.vbe_regs;
                    r[vbe::VIRT_WIDTH] = r[vbe::XRES];
                    r[vbe::VIRT_HEIGHT] = r[vbe::YRES];
                    r[vbe::X_OFFSET] = 0;
                    r[vbe::Y_OFFSET] = 0;
                    r[vbe::ENABLE] |= vbe::ENABLED;
                    self.vbe_fixup();
                    self.vbe_set_vga_regs();
                    if val & vbe::NOCLEARMEM == 0 {
                        let lines = usize::from(self.r.vbe_regs[vbe::YRES]);
                        let end = lines.saturating_mul(self.r.vbe_line_offset as usize).min(self.shared.len() as usize);
                        self.shared.fill(0, end as u64, 0);
                        self.mark_range_dirty(0, end);
                    }
                } else if val & vbe::ENABLED == 0 {
                    self.r.bank_offset = 0;
                    self.r.vbe_regs[vbe::BANK] = 0;
                }
                self.r.vbe_regs[vbe::ENABLE] = val;
                self.palette_dirty = true;
                if val & vbe::ENABLED != 0 {
                    self.vbe_fixup();
                }
            }
            vbe::VIRT_HEIGHT => {
                // Computed from the VRAM size and the line length.
            }
            _ => self.misuse(Misuse::Unimplemented, || format!("a write of {val:#x} to VBE register {index:#x}")),
        }
    }

    /// Marks VRAM bytes `start..end` dirty.
    fn mark_range_dirty(&mut self, start: usize, end: usize) {
        let mut page = start / DIRTY_PAGE;
        while page * DIRTY_PAGE < end {
            if let Some(w) = self.dirty.get_mut(page / 64) {
                *w |= 1 << (page % 64);
            }
            page += 1;
        }
        self.any_dirty = true;
        self.font_dirty = true;
    }

    /// The legacy registers a VBE mode switch sets as QEMU's does: the
    /// window at 0xa0000 for 64 KiB in graphics mode, chain 4 with every
    /// plane written above 4 bpp.
    fn vbe_set_vga_regs(&mut self) {
        self.r.gr[6] = (self.r.gr[6] & !0x0c) | 0x05;
        self.r.cr[0x17] |= 3;
        if self.r.vbe_regs[vbe::BPP] != 4 {
            self.r.sr[2] = 0x0f;
            self.r.sr[4] |= SR4_CHAIN4;
        } else {
            self.r.sr[4] &= !SR4_CHAIN4;
        }
    }

    /// Clamps the VBE geometry into what the VRAM holds (QEMU's
    /// `vbe_fixup_regs`), and computes the scanline length and start.
    pub(crate) fn vbe_fixup(&mut self) {
        let vram = self.shared.len();
        let r = &mut self.r.vbe_regs;
        if r[vbe::ENABLE] & vbe::ENABLED == 0 {
            return;
        }
        if !matches!(r[vbe::BPP], 4 | 8 | 15 | 16 | 24 | 32) {
            r[vbe::BPP] = 8;
        }
        r[vbe::XRES] = r[vbe::XRES].min(vbe::MAX_XRES) & !7;
        if r[vbe::XRES] == 0 {
            r[vbe::XRES] = 8;
        }
        r[vbe::VIRT_WIDTH] = r[vbe::VIRT_WIDTH].min(vbe::MAX_XRES) & !7;
        r[vbe::VIRT_WIDTH] = r[vbe::VIRT_WIDTH].max(r[vbe::XRES]);
        let bits = (u64::from(r[vbe::BPP]) + 7) & !7;
        let line = u64::from(r[vbe::VIRT_WIDTH]) * bits / 8;
        let maxy = (vram / line.max(1)).min(u64::from(u16::MAX)) as u16;
        r[vbe::YRES] = r[vbe::YRES].clamp(1, vbe::MAX_YRES).min(maxy.max(1));
        r[vbe::X_OFFSET] = r[vbe::X_OFFSET].min(vbe::MAX_XRES);
        r[vbe::Y_OFFSET] = r[vbe::Y_OFFSET].min(vbe::MAX_YRES);
        if u32::from(r[vbe::X_OFFSET]) + u32::from(r[vbe::XRES]) > u32::from(r[vbe::VIRT_WIDTH]) {
            r[vbe::X_OFFSET] = r[vbe::VIRT_WIDTH] - r[vbe::XRES];
        }
        if u32::from(r[vbe::Y_OFFSET]) + u32::from(r[vbe::YRES]) > u32::from(maxy) {
            r[vbe::Y_OFFSET] = maxy.saturating_sub(r[vbe::YRES]);
        }
        r[vbe::VIRT_HEIGHT] = maxy;
        let start = u64::from(r[vbe::X_OFFSET]) * bits / 8 + u64::from(r[vbe::Y_OFFSET]) * line;
        self.r.vbe_line_offset = line as u32;
        self.r.vbe_start = (start & !3).min(vram) as u32;
    }

    /// Whether a VBE mode is on.
    pub(crate) fn vbe_enabled(&self) -> bool {
        self.r.vbe_regs[vbe::ENABLE] & vbe::ENABLED != 0
    }

    // ---- the VGA ports ----------------------------------------------

    /// Whether `port` does not decode under MISC's mono/colour selection.
    fn port_invalid(&self, port: u16) -> bool {
        let color = self.r.misc & MISC_COLOR != 0;
        ((0x3b0..=0x3bf).contains(&port) && color) || ((0x3d0..=0x3df).contains(&port) && !color)
    }

    /// A byte read of VGA port `port` (0x3b0-0x3df).
    pub(crate) fn port_read(&mut self, port: u16) -> u8 {
        if self.port_invalid(port) {
            return 0xff;
        }
        let r = &mut self.r;
        match port {
            0x3c0 => {
                if r.ar_flip {
                    0
                } else {
                    r.ar_index
                }
            }
            0x3c1 => r.ar.get(usize::from(r.ar_index & 0x1f)).copied().unwrap_or(0),
            0x3c2 => r.st00,
            0x3c4 => r.sr_index,
            0x3c5 => r.sr[usize::from(r.sr_index & 7)],
            0x3c6 => r.pel_mask,
            0x3c7 => r.dac_state,
            0x3c8 => r.dac_write_index,
            0x3c9 => {
                let v = r.palette[usize::from(r.dac_read_index) * 3 + usize::from(r.dac_sub_index % 3)];
                r.dac_sub_index += 1;
                if r.dac_sub_index >= 3 {
                    r.dac_sub_index = 0;
                    r.dac_read_index = r.dac_read_index.wrapping_add(1);
                }
                v
            }
            0x3ca => r.feature,
            0x3cc => r.misc,
            0x3ce => r.gr_index,
            0x3cf => r.gr[usize::from(r.gr_index & 0x0f)],
            0x3b4 | 0x3d4 => r.cr_index,
            0x3b5 | 0x3d5 => r.cr[usize::from(r.cr_index)],
            0x3ba | 0x3da => {
                r.st01 ^= ST01_V_RETRACE | ST01_DISP_ENABLE;
                r.ar_flip = false;
                r.st01
            }
            _ => {
                self.misuse(Misuse::Unimplemented, || format!("a read of VGA port {port:#x}"));
                0xff
            }
        }
    }

    /// A byte write of VGA port `port` (0x3b0-0x3df).
    pub(crate) fn port_write(&mut self, port: u16, val: u8) {
        if self.port_invalid(port) {
            return;
        }
        let r = &mut self.r;
        match port {
            0x3c0 => {
                if !r.ar_flip {
                    let old = r.ar_index & AR_PAS;
                    r.ar_index = val & 0x3f;
                    if old != r.ar_index & AR_PAS {
                        self.regs_dirty = true;
                    }
                } else {
                    let i = usize::from(r.ar_index & 0x1f);
                    if let Some(mask) = AR_MASK.get(i) {
                        r.ar[i] = val & mask;
                        self.regs_dirty = true;
                        self.palette_dirty = true;
                    }
                }
                self.r.ar_flip = !self.r.ar_flip;
            }
            0x3c2 => {
                r.misc = val & !0x10;
                self.regs_dirty = true;
            }
            0x3c4 => r.sr_index = val & 7,
            0x3c5 => {
                let i = usize::from(r.sr_index & 7);
                r.sr[i] = val & SR_MASK[i];
                self.regs_dirty = true;
                if i == 3 {
                    self.font_dirty = true;
                }
            }
            0x3c6 => {
                r.pel_mask = val;
                self.palette_dirty = true;
            }
            0x3c7 => {
                r.dac_read_index = val;
                r.dac_sub_index = 0;
                r.dac_state = 3;
            }
            0x3c8 => {
                r.dac_write_index = val;
                r.dac_sub_index = 0;
                r.dac_state = 0;
            }
            0x3c9 => {
                let sub = usize::from(r.dac_sub_index % 3);
                r.dac_cache[sub] = val;
                r.dac_sub_index += 1;
                if r.dac_sub_index >= 3 {
                    let at = usize::from(r.dac_write_index) * 3;
                    r.palette[at..at + 3].copy_from_slice(&r.dac_cache);
                    r.dac_sub_index = 0;
                    r.dac_write_index = r.dac_write_index.wrapping_add(1);
                    self.palette_dirty = true;
                }
            }
            0x3ce => r.gr_index = val & 0x0f,
            0x3cf => {
                let i = usize::from(r.gr_index & 0x0f);
                r.gr[i] = val & GR_MASK[i];
                self.regs_dirty = true;
            }
            0x3b4 | 0x3d4 => r.cr_index = val,
            0x3b5 | 0x3d5 => {
                let i = r.cr_index;
                // CR11 bit 7 protects CR0-CR7, but for CR7's line compare bit 4.
                if r.cr[0x11] & 0x80 != 0 && i <= 7 {
                    if i == 7 {
                        r.cr[7] = (r.cr[7] & !0x10) | (val & 0x10);
                        self.regs_dirty = true;
                    }
                    return;
                }
                r.cr[usize::from(i)] = val;
                self.regs_dirty = true;
            }
            0x3ba | 0x3da => r.feature = val & 0x10,
            _ => self.misuse(Misuse::Unimplemented, || format!("a write of {val:#x} to VGA port {port:#x}")),
        }
    }
}
