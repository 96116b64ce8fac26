//! The display side: the current mode turned into 32-bit XRGB pixels
//! (0x00RRGGBB), redrawing only what changed.
//!
//! Modes, at their native size:
//! - text: columns from CRTC horizontal display end + 1, characters 8 or 9
//!   dots wide (sequencer clocking mode bit 0) and max scan line + 1 tall,
//!   rows from the vertical display end; glyphs from plane 2 (32 bytes per
//!   glyph slot, font maps A and B from the character map select);
//!   attributes through the attribute palette and the DAC, bit 7 as blink
//!   (drawn steady) or background intensity, the 9th column repeating
//!   0xc0-0xdf when line graphics are on, and the cursor always on;
//! - 16-colour planar (modes 0Dh, 10h, 12h): (horizontal display end + 1) * 8
//!   pixels a line; 256-colour (mode 13h and unchained mode X): half that;
//!   lines are (vertical display end + 1) / (scan lines per row, doubled by
//!   CR9 bit 7);
//! - VBE: 4 (planar), 8 (through the DAC), 15, 16, 24 and 32 bits per
//!   pixel, from VBE's start and line length.
//!
//! A screen turned off (sequencer clocking mode bit 5, or the attribute
//! controller's palette address source clear) is black at the last size.
//! A picture larger than [`MAX_DIM`] in either direction is clipped.
//!
//! CGA's 4-colour modes (4 and 5: the graphics controller's interleaved
//! shift mode) take 2 bits a pixel from the odd/even memory, and CR17 bit 0
//! clear interleaves the lines of a row from two 8 KiB banks as on a CGA.

use super::regs::{AR_PAS, SR4_CHAIN4};
use super::{vbe, StdVga, DIRTY_PAGE};

/// The widest and tallest picture drawn; larger ones are clipped.
pub const MAX_DIM: u32 = 4096;
/// Bytes of one glyph slot in plane 2.
const GLYPH_SLOT: usize = 32;
/// The size shown while nothing was ever drawn and the screen is off.
const DEFAULT_SIZE: (u32, u32) = (640, 480);

/// A rectangle of the picture, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

/// The text on the screen in a text mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextScreen {
    /// Characters a row.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
    /// `cols * rows` cells, row by row: (code page 437 character, attribute).
    pub cells: Vec<(u8, u8)>,
    /// The cursor's (column, row), when it is on and on the screen.
    pub cursor: Option<(u32, u32)>,
}

impl TextScreen {
    /// Row `row` as a string: printable ASCII as itself, the code page 437
    /// box drawing, block and a few other characters as their Unicode
    /// equivalents, the rest as spaces. Empty past the last row.
    pub fn line(&self, row: u32) -> String {
        if row >= self.rows {
            return String::new();
        }
        let start = (row * self.cols) as usize;
        self.cells.get(start..start + self.cols as usize).unwrap_or(&[]).iter().map(|&(c, _)| cp437(c)).collect()
    }
}

/// A code page 437 character as Unicode (a space when there is no close one).
fn cp437(c: u8) -> char {
    const HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■ ";
    match c {
        0x20..=0x7e => char::from(c),
        0x80..=0xff => HIGH.chars().nth(usize::from(c - 0x80)).unwrap_or(' '),
        _ => ' ',
    }
}

/// How a text mode is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TextLayout {
    cols: u32,
    rows: u32,
    cw: u32,
    ch: u32,
    /// Plane offset of the first character.
    start: usize,
    /// Characters from one row to the next.
    stride: usize,
    /// Plane 2 offsets of font maps B (attribute bit 3 clear) and A.
    fonts: [usize; 2],
    line_graphics: bool,
    blink: bool,
    /// The cursor's first and last scan lines (`None`: off).
    cursor_lines: Option<(u32, u32)>,
    /// Plane offset of the cursor.
    cursor_addr: usize,
}

/// What kind of pixels a graphics mode has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pixels {
    /// 16 colours in four planes, 8 pixels per plane byte.
    Planar,
    /// CGA's 4 colours: 2 bits a pixel, in odd/even memory.
    Cga,
    /// One byte a pixel through the DAC.
    Indexed,
    /// VBE 15 bpp (5:5:5).
    Rgb555,
    /// VBE 16 bpp (5:6:5).
    Rgb565,
    /// VBE 24 bpp (B, G, R).
    Rgb888,
    /// VBE 32 bpp (B, G, R, X).
    Xrgb8888,
}

/// How a graphics mode is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GfxLayout {
    pixels: Pixels,
    width: u32,
    height: u32,
    /// VRAM byte of the first line (for [`Pixels::Cga`]: the CPU's odd/even address).
    start: usize,
    /// VRAM bytes from one row to the next (CPU bytes for [`Pixels::Cga`]).
    line: usize,
    /// Lines a row (CGA banking: the lines of a row come from alternate banks).
    scan: u32,
    /// Bytes from the even bank to the odd one (0: no banking).
    bank: usize,
    /// The colour plane enable mask (planar modes).
    plane_enable: u8,
    /// Wrap plane addresses at 64 KiB (the VGA's address counter).
    wrap: bool,
}

/// The mode the registers describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    Blank,
    Text(TextLayout),
    Graphics(GfxLayout),
}

/// What the renderer drew last.
#[derive(Debug, Default)]
pub(crate) struct View {
    width: u32,
    height: u32,
    layout: Option<Layout>,
    /// The text cells drawn.
    cells: Vec<(u8, u8)>,
    /// The cursor cell drawn.
    cursor: Option<(u32, u32)>,
    /// The DAC's 256 colours as XRGB.
    palette: Vec<u32>,
}

/// A 6-bit DAC value as 8 bits.
fn c6_to_8(v: u8) -> u32 {
    let v = u32::from(v & 0x3f);
    (v << 2) | (v >> 4)
}

/// Appends `y` to `rects` as a band of full lines `x..x + w`, merging with
/// the band above when they line up.
fn push_band(rects: &mut Vec<Rect>, x: u32, y: u32, w: u32, h: u32) {
    if let Some(last) = rects.last_mut() {
        if last.x == x && last.w == w && last.y + last.h == y {
            last.h += h;
            return;
        }
    }
    rects.push(Rect { x, y, w, h });
}

impl StdVga {
    /// The mode the registers describe now.
    pub(crate) fn layout(&self) -> Layout {
        let r = &self.r;
        if self.vbe_enabled() {
            let v = &r.vbe_regs;
            let bpp = v[vbe::BPP];
            let pixels = match bpp {
                4 => Pixels::Planar,
                15 => Pixels::Rgb555,
                16 => Pixels::Rgb565,
                24 => Pixels::Rgb888,
                32 => Pixels::Xrgb8888,
                _ => Pixels::Indexed,
            };
            let (start, line) = if pixels == Pixels::Planar {
                // Planar: 8 pixels per plane byte, four planes per VRAM dword.
                let line = usize::from(v[vbe::VIRT_WIDTH]) / 2;
                let start = usize::from(v[vbe::Y_OFFSET]) * line + usize::from(v[vbe::X_OFFSET]) / 2;
                (start & !3, line)
            } else {
                (r.vbe_start as usize, r.vbe_line_offset as usize)
            };
            return Layout::Graphics(GfxLayout {
                pixels,
                width: u32::from(v[vbe::XRES]).min(MAX_DIM),
                height: u32::from(v[vbe::YRES]).min(MAX_DIM),
                start,
                line,
                scan: 1,
                bank: 0,
                plane_enable: 0x0f,
                wrap: false,
            });
        }
        if r.ar_index & AR_PAS == 0 || r.sr[1] & 0x20 != 0 {
            return Layout::Blank;
        }
        let cr = &r.cr;
        let vde = u32::from(cr[0x12]) | (u32::from(cr[7] & 0x02) << 7) | (u32::from(cr[7] & 0x40) << 3);
        let lines = vde + 1;
        let start = (usize::from(cr[0x0c]) << 8) | usize::from(cr[0x0d]);
        let max_scan = u32::from(cr[9] & 0x1f) + 1;
        if r.gr[6] & 1 == 0 {
            let cw = if r.sr[1] & 1 != 0 { 8 } else { 9 };
            let ch = max_scan;
            let cols = u32::from(cr[1]) + 1;
            let rows = (lines / ch).min(MAX_DIM / ch);
            let sel = r.sr[3];
            let map = |n: u8| usize::from(n) * 0x2000;
            let font_b = map(((sel >> 4) & 1) | ((sel << 1) & 6));
            let font_a = map(((sel >> 5) & 1) | ((sel >> 1) & 6));
            let (cs, ce) = (u32::from(cr[0x0a] & 0x1f), u32::from(cr[0x0b] & 0x1f).min(ch - 1));
            let cursor_lines = (cr[0x0a] & 0x20 == 0 && cs <= ce && cs < ch).then_some((cs, ce));
            if rows == 0 {
                return Layout::Blank;
            }
            return Layout::Text(TextLayout {
                cols,
                rows,
                cw,
                ch,
                start,
                stride: usize::from(cr[0x13]) * 2,
                fonts: [font_b, font_a],
                line_graphics: r.ar[0x10] & 0x04 != 0,
                blink: r.ar[0x10] & 0x08 != 0,
                cursor_lines,
                cursor_addr: (usize::from(cr[0x0e]) << 8) | usize::from(cr[0x0f]),
            });
        }
        let pixels = match (r.gr[5] >> 5) & 3 {
            0 => Pixels::Planar,
            1 => Pixels::Cga,
            _ => Pixels::Indexed,
        };
        // CR17 bit 0 clear: row scan bit 0 picks the bank (CGA's interleave).
        let banked = cr[0x17] & 1 == 0;
        let double = u32::from(cr[9] >> 7);
        let (height, scan) = if banked { (lines >> double, max_scan) } else { (lines / (max_scan << double), 1) };
        let height = height.min(MAX_DIM);
        let width = ((u32::from(cr[1]) + 1) * if pixels == Pixels::Indexed { 4 } else { 8 }).min(MAX_DIM);
        if height == 0 {
            return Layout::Blank;
        }
        let (start, line, bank) = match pixels {
            Pixels::Cga => (start * 2, usize::from(cr[0x13]) * 4, 0x2000),
            _ => (start * 4, usize::from(cr[0x13]) * 8, 0x8000),
        };
        Layout::Graphics(GfxLayout {
            pixels,
            width,
            height,
            start,
            line,
            scan,
            bank: if banked { bank } else { 0 },
            plane_enable: r.ar[0x12] & 0x0f,
            wrap: pixels != Pixels::Indexed || r.sr[4] & SR4_CHAIN4 == 0,
        })
    }

    /// The text screen when a text mode is on.
    pub fn text_screen(&self) -> Option<TextScreen> {
        let Layout::Text(t) = self.layout() else { return None };
        Some(TextScreen { cols: t.cols, rows: t.rows, cells: self.text_cells(&t), cursor: self.cursor_cell(&t) })
    }

    /// The text cells of layout `t`, row by row, from the VRAM itself (a
    /// text console reads them without a render).
    fn text_cells(&self, t: &TextLayout) -> Vec<(u8, u8)> {
        let mut cells = Vec::with_capacity((t.cols * t.rows) as usize);
        for row in 0..t.rows as usize {
            for col in 0..t.cols as usize {
                let addr = (t.start + row * t.stride + col) & 0xffff;
                let i = addr * 4;
                let mut cell = [0u8; 2];
                self.shared.read(i as u64, &mut cell);
                cells.push((cell[0], cell[1]));
            }
        }
        cells
    }

    /// The (column, row) of the cursor of layout `t`, if on the screen.
    fn cursor_cell(&self, t: &TextLayout) -> Option<(u32, u32)> {
        t.cursor_lines?;
        let off = t.cursor_addr.checked_sub(t.start)?;
        let (row, col) = match off.checked_div(t.stride) {
            Some(row) => (row, off % t.stride),
            None => (0, off),
        };
        (col < t.cols as usize && row < t.rows as usize).then_some((col as u32, row as u32))
    }

    /// The 16 colours of the attribute palette, through the DAC.
    fn palette16(&self) -> [u32; 16] {
        let ar = &self.r.ar;
        let mut p = [0; 16];
        for (i, c) in p.iter_mut().enumerate() {
            let v = ar[i];
            let v = if ar[0x10] & 0x80 != 0 {
                ((ar[0x14] & 0x0f) << 4) | (v & 0x0f)
            } else {
                ((ar[0x14] & 0x0c) << 4) | (v & 0x3f)
            };
            *c = self.view.palette.get(usize::from(v)).copied().unwrap_or(0);
        }
        p
    }

    /// Recomputes the DAC's colours.
    fn update_palette(&mut self) {
        let dac8 = self.r.vbe_regs[vbe::ENABLE] & vbe::DAC_8BIT != 0;
        let mask = self.r.pel_mask;
        let pal = &self.r.palette;
        self.view.palette = (0..256usize)
            .map(|i| {
                let at = (i & usize::from(mask)) * 3;
                let c = |k: usize| {
                    let v = pal[at + k];
                    if dac8 {
                        u32::from(v)
                    } else {
                        c6_to_8(v)
                    }
                };
                (c(0) << 16) | (c(1) << 8) | c(2)
            })
            .collect();
    }

    /// Whether a VRAM page of bytes `start..start + len` was written since
    /// the last render.
    fn range_dirty(&self, start: usize, len: usize) -> bool {
        if len == 0 {
            return false;
        }
        let first = start / DIRTY_PAGE;
        let last = start.saturating_add(len - 1) / DIRTY_PAGE;
        (first..=last).any(|p| self.dirty.get(p / 64).is_some_and(|w| w & (1 << (p % 64)) != 0))
    }

    /// Brings the renderer's copy of the VRAM up to date, marking what
    /// changed: the pages the guest stored to through memory since the
    /// last look (translated code's entries for them are then dropped by a
    /// write sync, and the pages copied once more when it is answered),
    /// and the pages the model wrote itself.
    fn pull_vram(&mut self) {
        if self.settle_sync != 0 && self.mem.as_ref().is_none_or(|m| m.vram_sync_done(self.settle_sync)) {
            self.settle_sync = 0;
            let settled = std::mem::take(&mut self.settling);
            self.merge_dirty(&settled);
        }
        let taken = match &self.mem {
            Some(mem) => mem.take_vram_dirty(),
            None => self.shared.take_dirty(),
        };
        if taken.iter().any(|&w| w != 0) {
            self.merge_dirty(&taken);
            if let Some(mem) = &self.mem {
                self.settle_sync = mem.request_write_sync();
                self.settling.resize(taken.len(), 0);
                for (s, t) in self.settling.iter_mut().zip(&taken) {
                    *s |= t;
                }
            }
        }
        if !self.any_dirty {
            return;
        }
        for (wi, &word) in self.dirty.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let page = wi * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let start = page * DIRTY_PAGE;
                if let Some(dst) = self.vram.get_mut(start..start + DIRTY_PAGE) {
                    self.shared.read(start as u64, dst);
                }
            }
        }
    }

    /// Adds the pages of `pages` (a bit per page) to what changed.
    fn merge_dirty(&mut self, pages: &[u64]) {
        for (d, &p) in self.dirty.iter_mut().zip(pages) {
            *d |= p;
        }
        if pages.iter().any(|&w| w != 0) {
            self.any_dirty = true;
            // The first 256 KiB hold the font in plane 2.
            let font_words = (super::regs::FONT_AREA / DIRTY_PAGE).div_ceil(64);
            if pages.iter().take(font_words).any(|&w| w != 0) {
                self.font_dirty = true;
            }
        }
    }

    /// Whether pages the guest stored to wait for a write sync's answer
    /// before their last copy: the display looks again soon.
    pub fn vram_settling(&self) -> bool {
        self.settle_sync != 0
    }

    /// Brings `pixels` (row-major, `width * height` XRGB values; resized and
    /// fully redrawn when the mode's size changed) up to date; returns the
    /// size and the rectangles that changed since the previous call (empty
    /// when nothing changed).
    pub fn render(&mut self, pixels: &mut Vec<u32>) -> (u32, u32, Vec<Rect>) {
        self.pull_vram();
        let (w, h) = (self.view.width, self.view.height);
        let size_ok = pixels.len() == (w as usize) * (h as usize);
        if size_ok
            && self.view.layout.is_some()
            && !self.regs_dirty
            && !self.palette_dirty
            && !self.any_dirty
            && !self.font_dirty
        {
            return (w, h, Vec::new());
        }
        if self.palette_dirty || self.view.palette.len() != 256 {
            self.update_palette();
        }
        let layout = self.layout();
        let mut full = !size_ok || self.palette_dirty || self.view.layout.as_ref() != Some(&layout);
        let (nw, nh) = match &layout {
            Layout::Blank if w == 0 || h == 0 => DEFAULT_SIZE,
            Layout::Blank => (w, h),
            Layout::Text(t) => ((t.cols * t.cw).min(MAX_DIM), (t.rows * t.ch).min(MAX_DIM)),
            Layout::Graphics(g) => (g.width, g.height),
        };
        if (nw, nh) != (w, h) || !size_ok {
            pixels.clear();
            pixels.resize(nw as usize * nh as usize, 0);
            full = true;
        }
        self.view.width = nw;
        self.view.height = nh;
        let rects = match &layout {
            Layout::Blank => {
                if full {
                    pixels.fill(0);
                }
                Vec::new()
            }
            Layout::Text(t) => {
                let full = full || self.font_dirty;
                self.draw_text(t, pixels, full)
            }
            Layout::Graphics(g) => self.draw_graphics(g, pixels, full),
        };
        let rects = if full && nw > 0 && nh > 0 { vec![Rect { x: 0, y: 0, w: nw, h: nh }] } else { rects };
        if !matches!(layout, Layout::Text(_)) {
            self.view.cells.clear();
            self.view.cursor = None;
        }
        self.view.layout = Some(layout);
        self.dirty.fill(0);
        self.any_dirty = false;
        self.font_dirty = false;
        self.regs_dirty = false;
        self.palette_dirty = false;
        (nw, nh, rects)
    }

    /// Draws the cells of text layout `t` that changed (all if `full`).
    fn draw_text(&mut self, t: &TextLayout, pixels: &mut [u32], full: bool) -> Vec<Rect> {
        let cells = self.text_cells(t);
        let cursor = self.cursor_cell(t);
        let old_cursor = self.view.cursor;
        let full = full || self.view.cells.len() != cells.len();
        let pal = self.palette16();
        let width = (t.cols * t.cw).min(MAX_DIM) as usize;
        let mut rects = Vec::new();
        for row in 0..t.rows {
            let mut span: Option<(u32, u32)> = None;
            for col in 0..t.cols {
                let i = (row * t.cols + col) as usize;
                let here = Some((col, row));
                let changed = full
                    || self.view.cells.get(i) != cells.get(i)
                    || (cursor.is_some() && here == cursor)
                    || (old_cursor.is_some() && here == old_cursor);
                if !changed {
                    continue;
                }
                let (c, a) = cells[i];
                self.draw_glyph(t, pixels, width, col, row, c, a, &pal, here == cursor);
                span = Some(span.map_or((col, col), |(s, _)| (s, col)));
            }
            if let Some((s, e)) = span {
                let x = s * t.cw;
                if x < width as u32 {
                    let w = ((e + 1) * t.cw).min(width as u32) - x;
                    push_band(&mut rects, x, row * t.ch, w, t.ch);
                }
            }
        }
        self.view.cells = cells;
        self.view.cursor = cursor;
        rects
    }

    /// Draws one character cell.
    #[allow(clippy::too_many_arguments)]
    fn draw_glyph(
        &self,
        t: &TextLayout,
        pixels: &mut [u32],
        width: usize,
        col: u32,
        row: u32,
        c: u8,
        a: u8,
        pal: &[u32; 16],
        cursor: bool,
    ) {
        let fg = pal[usize::from(a & 0x0f)];
        let bg_index = if t.blink { (a >> 4) & 7 } else { a >> 4 };
        let bg = pal[usize::from(bg_index)];
        let font = t.fonts[usize::from((a >> 3) & 1)];
        let dup9 = t.line_graphics && (0xc0..=0xdf).contains(&c);
        for line in 0..t.ch {
            let glyph_at = (font + usize::from(c) * GLYPH_SLOT + line as usize) & 0xffff;
            let mut bits = self.vram.get(glyph_at * 4 + 2).copied().unwrap_or(0);
            let mut dup9 = dup9;
            if cursor && t.cursor_lines.is_some_and(|(s, e)| (s..=e).contains(&line)) {
                bits = 0xff;
                dup9 = true;
            }
            let y = (row * t.ch + line) as usize;
            let Some(out) = pixels.get_mut(y * width..(y + 1) * width) else { return };
            for dx in 0..t.cw {
                let x = (col * t.cw + dx) as usize;
                let on = if dx < 8 { bits & (0x80 >> dx) != 0 } else { dup9 && bits & 1 != 0 };
                if let Some(p) = out.get_mut(x) {
                    *p = if on { fg } else { bg };
                }
            }
        }
    }

    /// Draws the lines of graphics layout `g` whose VRAM changed (all if `full`).
    fn draw_graphics(&self, g: &GfxLayout, pixels: &mut [u32], full: bool) -> Vec<Rect> {
        let width = g.width as usize;
        let bytes_per_line = match g.pixels {
            Pixels::Planar => width.div_ceil(8) * 4,
            Pixels::Cga => width.div_ceil(4),
            Pixels::Indexed => width,
            Pixels::Rgb555 | Pixels::Rgb565 => width * 2,
            Pixels::Rgb888 => width * 3,
            Pixels::Xrgb8888 => width * 4,
        };
        let pal16 = self.palette16();
        let mut rects = Vec::new();
        let scan = g.scan.max(1) as usize;
        for y in 0..g.height as usize {
            let (row, odd) = (y / scan, (y % scan) & 1);
            let addr = g.start.saturating_add(row.saturating_mul(g.line)).saturating_add(odd * g.bank);
            let (addr, vram_addr, vram_len) = match (g.pixels, g.wrap) {
                (Pixels::Cga, _) => {
                    let a = addr & 0xffff;
                    (a, (a >> 1) * 4, bytes_per_line * 2 + 4)
                }
                (_, true) => (addr & 0x3_ffff, addr & 0x3_ffff, bytes_per_line),
                (_, false) => (addr, addr, bytes_per_line),
            };
            let dirty = full
                || self.range_dirty(vram_addr, vram_len)
                || (g.wrap && vram_addr + vram_len > 0x4_0000 && self.range_dirty(0, vram_len));
            if !dirty {
                continue;
            }
            let Some(out) = pixels.get_mut(y * width..(y + 1) * width) else { break };
            self.draw_line(g, addr, out, &pal16);
            push_band(&mut rects, 0, y as u32, g.width, 1);
        }
        rects
    }

    /// Draws one line from VRAM byte `addr`.
    fn draw_line(&self, g: &GfxLayout, addr: usize, out: &mut [u32], pal16: &[u32; 16]) {
        let vram = &self.vram;
        let byte = |i: usize| -> u8 {
            let i = if g.wrap { i & 0x3_ffff } else { i };
            vram.get(i).copied().unwrap_or(0)
        };
        match g.pixels {
            Pixels::Planar => {
                for (x, p) in out.iter_mut().enumerate() {
                    let at = addr.wrapping_add((x / 8) * 4);
                    let bit = 7 - (x % 8);
                    let mut v = 0u8;
                    for plane in 0..4 {
                        v |= ((byte(at.wrapping_add(plane)) >> bit) & 1) << plane;
                    }
                    *p = pal16[usize::from(v & g.plane_enable)];
                }
            }
            Pixels::Cga => {
                for (x, p) in out.iter_mut().enumerate() {
                    let a = addr.wrapping_add(x / 4) & 0xffff;
                    let b = vram.get((a >> 1) * 4 + (a & 1)).copied().unwrap_or(0);
                    let v = (b >> (6 - 2 * (x % 4))) & 3;
                    *p = pal16[usize::from(v & g.plane_enable)];
                }
            }
            Pixels::Indexed => {
                for (x, p) in out.iter_mut().enumerate() {
                    *p = self.view.palette.get(usize::from(byte(addr.wrapping_add(x)))).copied().unwrap_or(0);
                }
            }
            Pixels::Rgb555 | Pixels::Rgb565 => {
                let wide = g.pixels == Pixels::Rgb565;
                for (x, p) in out.iter_mut().enumerate() {
                    let v = u32::from(u16::from_le_bytes([
                        byte(addr.wrapping_add(2 * x)),
                        byte(addr.wrapping_add(2 * x + 1)),
                    ]));
                    let (r, g, b) = if wide {
                        let (r, g, b) = ((v >> 11) & 0x1f, (v >> 5) & 0x3f, v & 0x1f);
                        ((r << 3) | (r >> 2), (g << 2) | (g >> 4), (b << 3) | (b >> 2))
                    } else {
                        let (r, g, b) = ((v >> 10) & 0x1f, (v >> 5) & 0x1f, v & 0x1f);
                        ((r << 3) | (r >> 2), (g << 3) | (g >> 2), (b << 3) | (b >> 2))
                    };
                    *p = (r << 16) | (g << 8) | b;
                }
            }
            Pixels::Rgb888 => {
                for (x, p) in out.iter_mut().enumerate() {
                    let i = addr.wrapping_add(3 * x);
                    *p = u32::from_le_bytes([byte(i), byte(i.wrapping_add(1)), byte(i.wrapping_add(2)), 0]);
                }
            }
            Pixels::Xrgb8888 => {
                let line = addr.checked_add(out.len() * 4).and_then(|end| vram.get(addr..end));
                match line {
                    Some(src) => {
                        for (p, s) in out.iter_mut().zip(src.chunks_exact(4)) {
                            *p = u32::from_le_bytes([s[0], s[1], s[2], 0]);
                        }
                    }
                    None => {
                        for (x, p) in out.iter_mut().enumerate() {
                            let i = addr.wrapping_add(4 * x);
                            *p = u32::from_le_bytes([byte(i), byte(i.wrapping_add(1)), byte(i.wrapping_add(2)), 0]);
                        }
                    }
                }
            }
        }
    }
}
