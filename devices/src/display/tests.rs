use std::sync::Arc;

use parking_lot::Mutex;
use persist::Persist;

use super::*;
use crate::bus::Bus;

// ---- helpers: the register programming of a VGA BIOS -------------------

fn outb(v: &mut StdVga, port: u16, val: u8) {
    v.bus_write(Window::Ports, u64::from(port - VGA_PORTS_BASE), &[val]);
}

fn inb(v: &mut StdVga, port: u16) -> u8 {
    let mut b = [0];
    v.bus_read(Window::Ports, u64::from(port - VGA_PORTS_BASE), &mut b);
    b[0]
}

fn vbe_out(v: &mut StdVga, index: u16, val: u16) {
    v.bus_write(Window::VbePorts, 0, &index.to_le_bytes());
    v.bus_write(Window::VbePorts, 1, &val.to_le_bytes());
}

fn vbe_in(v: &mut StdVga, index: u16) -> u16 {
    v.bus_write(Window::VbePorts, 0, &index.to_le_bytes());
    let mut b = [0; 2];
    v.bus_read(Window::VbePorts, 1, &mut b);
    u16::from_le_bytes(b)
}

fn mem_write(v: &mut StdVga, addr: u64, bytes: &[u8]) {
    v.bus_write(Window::Memory, addr - VGA_WINDOW_BASE, bytes);
}

fn mem_read(v: &mut StdVga, addr: u64) -> u8 {
    let mut b = [0];
    v.bus_read(Window::Memory, addr - VGA_WINDOW_BASE, &mut b);
    b[0]
}

/// A mode's register values, as the VGA BIOS's tables hold them.
struct Mode {
    misc: u8,
    seq: [u8; 5],
    crtc: [u8; 25],
    actl: [u8; 21],
    grdc: [u8; 9],
}

const MODE3: Mode = Mode {
    misc: 0x67,
    seq: [0x03, 0x00, 0x03, 0x00, 0x02],
    crtc: [
        0x5f, 0x4f, 0x50, 0x82, 0x55, 0x81, 0xbf, 0x1f, 0x00, 0x4f, 0x0d, 0x0e, 0x00, 0x00, 0x00, 0x00, 0x9c, 0x8e,
        0x8f, 0x28, 0x1f, 0x96, 0xb9, 0xa3, 0xff,
    ],
    actl: [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f, 0x0c, 0x00,
        0x0f, 0x08, 0x00,
    ],
    grdc: [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0e, 0x0f, 0xff],
};

const MODE13: Mode = Mode {
    misc: 0x63,
    seq: [0x03, 0x01, 0x0f, 0x00, 0x0e],
    crtc: [
        0x5f, 0x4f, 0x50, 0x82, 0x54, 0x80, 0xbf, 0x1f, 0x00, 0x41, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x9c, 0x8e,
        0x8f, 0x28, 0x40, 0x96, 0xb9, 0xa3, 0xff,
    ],
    actl: [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x41, 0x00,
        0x0f, 0x00, 0x00,
    ],
    grdc: [0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x05, 0x0f, 0xff],
};

const MODE12: Mode = Mode {
    misc: 0xe3,
    seq: [0x03, 0x01, 0x0f, 0x00, 0x06],
    crtc: [
        0x5f, 0x4f, 0x50, 0x82, 0x54, 0x80, 0x0b, 0x3e, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xea, 0x8c,
        0xdf, 0x28, 0x00, 0xe7, 0x04, 0xe3, 0xff,
    ],
    actl: [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f, 0x01, 0x00,
        0x0f, 0x00, 0x00,
    ],
    grdc: [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x0f, 0xff],
};

/// The 64 colours of the EGA palette (6-bit DAC values).
fn ega(i: u8) -> [u8; 3] {
    let c = |hi: u8, lo: u8| ((i >> hi) & 1) * 0x2a + ((i >> lo) & 1) * 0x15;
    [c(2, 5), c(1, 4), c(0, 3)]
}

fn set_mode(v: &mut StdVga, m: &Mode) {
    outb(v, 0x3c2, m.misc);
    for (i, &s) in m.seq.iter().enumerate() {
        outb(v, 0x3c4, i as u8);
        outb(v, 0x3c5, s);
    }
    // Unprotect CR0-CR7 first.
    outb(v, 0x3d4, 0x11);
    outb(v, 0x3d5, 0);
    for (i, &c) in m.crtc.iter().enumerate() {
        outb(v, 0x3d4, i as u8);
        outb(v, 0x3d5, c);
    }
    inb(v, 0x3da);
    for (i, &a) in m.actl.iter().enumerate() {
        outb(v, 0x3c0, i as u8);
        outb(v, 0x3c0, a);
    }
    for (i, &g) in m.grdc.iter().enumerate() {
        outb(v, 0x3ce, i as u8);
        outb(v, 0x3cf, g);
    }
    outb(v, 0x3c8, 0);
    for i in 0..64 {
        for c in ega(i) {
            outb(v, 0x3c9, c);
        }
    }
    outb(v, 0x3c0, 0x20);
}

/// A 6-bit DAC value as the renderer widens it.
fn c8(v: u8) -> u32 {
    let v = u32::from(v);
    (v << 2) | (v >> 4)
}

fn rgb6(c: [u8; 3]) -> u32 {
    (c8(c[0]) << 16) | (c8(c[1]) << 8) | c8(c[2])
}

const GLYPH_A: [u8; 16] =
    [0x00, 0x00, 0x10, 0x38, 0x6c, 0xc6, 0xc6, 0xfe, 0xc6, 0xc6, 0xc6, 0xc6, 0x00, 0x00, 0x00, 0x00];

/// Loads `glyph` for character `ch` of font map 0 through the plane 2 access
/// sequence of a VGA BIOS, then restores text mode access.
fn load_glyph(v: &mut StdVga, ch: u8, glyph: &[u8; 16]) {
    for (i, val) in [(2, 0x04), (4, 0x07)] {
        outb(v, 0x3c4, i);
        outb(v, 0x3c5, val);
    }
    for (i, val) in [(4, 0x02), (5, 0x00), (6, 0x04)] {
        outb(v, 0x3ce, i);
        outb(v, 0x3cf, val);
    }
    mem_write(v, 0xa0000 + u64::from(ch) * 32, glyph);
    for (i, val) in [(2, 0x03), (4, 0x03)] {
        outb(v, 0x3c4, i);
        outb(v, 0x3c5, val);
    }
    for (i, val) in [(4, 0x00), (5, 0x10), (6, 0x0e)] {
        outb(v, 0x3ce, i);
        outb(v, 0x3cf, val);
    }
}

fn text_mode() -> StdVga {
    let mut v = StdVga::new(MIN_VRAM).unwrap();
    set_mode(&mut v, &MODE3);
    load_glyph(&mut v, b'A', &GLYPH_A);
    v
}

fn put_char(v: &mut StdVga, col: u64, row: u64, c: u8, attr: u8) {
    mem_write(v, 0xb8000 + (row * 80 + col) * 2, &[c, attr]);
}

fn set_cursor(v: &mut StdVga, offset: u16) {
    for (i, b) in [(0x0e, (offset >> 8) as u8), (0x0f, offset as u8)] {
        outb(v, 0x3d4, i);
        outb(v, 0x3d5, b);
    }
}

fn px(pixels: &[u32], width: u32, x: u32, y: u32) -> u32 {
    pixels[(y * width + x) as usize]
}

// ---- the PCI function -------------------------------------------------

#[test]
fn pci_identity_and_bars() {
    let v = StdVga::new(DEFAULT_VRAM).unwrap();
    let c = v.config();
    assert_eq!(c.read_dword(0), 0x1111_1234);
    assert_eq!(c.read_dword(2), 0x0300_0002);
    assert_eq!(c.read_dword(0x2c / 4), 0x1100_1af4);
    let bar0 = c.bar(LFB_BAR).unwrap();
    assert_eq!(bar0.kind, crate::pci::PciBarKind::Memory32 { prefetchable: true });
    assert_eq!(bar0.size, u64::from(DEFAULT_VRAM));
    assert_eq!(c.bar(MMIO_BAR).unwrap().size, MMIO_BAR_SIZE);
    assert_eq!(c.read_dword(4) & 1, 0, "BAR0 is memory");
    assert_eq!(c.read_dword(4) & 8, 8, "BAR0 is prefetchable");
}

#[test]
fn vram_sizes_are_checked() {
    assert!(StdVga::new(0).is_err());
    assert!(StdVga::new(3 << 20).is_err());
    assert!(StdVga::new(512 << 10).is_err());
    assert!(StdVga::new(512 << 20).is_err());
    assert_eq!(StdVga::new(MAX_VRAM).unwrap().vram_size(), MAX_VRAM);
}

#[test]
fn the_ranges_plug_into_buses() {
    let vga = Arc::new(Mutex::new(StdVga::new(MIN_VRAM).unwrap()));
    let (mut pio, mut mmio) = (Bus::new(), Bus::new());
    for m in StdVga::bus_mappings(&vga) {
        m.insert_into(&mut pio, &mut mmio).unwrap();
    }
    let bars = StdVga::bar_devices(&vga);
    assert_eq!(bars.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![LFB_BAR, MMIO_BAR]);
    mmio.insert(Arc::clone(&bars[0].1), 0xfd00_0000, u64::from(MIN_VRAM)).unwrap();
    mmio.insert(Arc::clone(&bars[1].1), 0xfebf_0000, MMIO_BAR_SIZE).unwrap();
    // VBE through the ports, 16 bits at 0x1ce and 0x1cf.
    pio.write(0x1ce, &0u16.to_le_bytes());
    let mut id = [0; 2];
    pio.read(0x1cf, &mut id);
    assert_eq!(u16::from_le_bytes(id), 0xb0c5);
    // The LFB and the chain-4 window share the VRAM.
    pio.write(0x3c4, &[0x04, 0x08]);
    pio.write(0x3ce, &[0x06, 0x05]);
    pio.write(0x3c4, &[0x02, 0x0f]);
    mmio.write(0xa0010, &[0x5a]);
    let mut b = [0];
    mmio.read(0xfd00_0010, &mut b);
    assert_eq!(b[0], 0x5a);
    // EDID through BAR2.
    let mut hdr = [0; 8];
    mmio.read(0xfebf_0000, &mut hdr);
    assert_eq!(hdr, [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
    assert!(!vga.lock().vram().is_empty());
}

// ---- BAR2 -----------------------------------------------------------

#[test]
fn edid_is_valid() {
    let mut v = StdVga::new(MIN_VRAM).unwrap();
    let mut e = [0u8; 256];
    for (i, chunk) in e.chunks_mut(4).enumerate() {
        v.bus_read(Window::Mmio, i as u64 * 4, chunk);
    }
    assert_eq!(&e[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
    assert_eq!(e[..128].iter().fold(0u8, |s, &b| s.wrapping_add(b)), 0, "checksum");
    assert_eq!((e[18], e[19]), (1, 4), "EDID 1.4");
    assert_eq!(e[126], 0, "no extensions");
    // The preferred detailed timing: 1024x768.
    let dtd = &e[54..72];
    assert_eq!(u16::from_le_bytes([dtd[0], dtd[1]]), 6500);
    assert_eq!(u32::from(dtd[2]) | (u32::from(dtd[4] >> 4) << 8), 1024);
    assert_eq!(u32::from(dtd[5]) | (u32::from(dtd[7] >> 4) << 8), 768);
    assert!(e[128..].iter().all(|&b| b == 0));
    let mut b = [0xaa; 4];
    v.bus_read(Window::Mmio, 0x3fc, &mut b);
    assert_eq!(b, [0; 4]);
}

#[test]
fn mmio_mirrors_vga_and_vbe_and_has_qemu_extensions() {
    let mut v = StdVga::new(MIN_VRAM).unwrap();
    // MISC through 0x400 + (0x3c2 - 0x3c0); read back at 0x3cc.
    v.bus_write(Window::Mmio, 0x402, &[0x67]);
    let mut b = [0];
    v.bus_read(Window::Mmio, 0x40c, &mut b);
    assert_eq!(b[0], 0x67);
    assert_eq!(inb(&mut v, 0x3cc), 0x67);
    // VBE XRES at 0x502, 16 bits.
    v.bus_write(Window::Mmio, 0x502, &800u16.to_le_bytes());
    let mut w = [0; 2];
    v.bus_read(Window::Mmio, 0x502, &mut w);
    assert_eq!(u16::from_le_bytes(w), 800);
    assert_eq!(vbe_in(&mut v, 1), 800);
    v.bus_read(Window::Mmio, 0x500 + 2 * 0xa, &mut w);
    assert_eq!(u16::from_le_bytes(w), 16, "1 MiB is 16 banks of 64 KiB");
    // QEMU extended registers.
    let mut d = [0; 4];
    v.bus_read(Window::Mmio, 0x600, &mut d);
    assert_eq!(u32::from_le_bytes(d), 8);
    v.bus_read(Window::Mmio, 0x604, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x1e1e_1e1e);
    v.bus_write(Window::Mmio, 0x604, &0xbebe_bebeu32.to_le_bytes());
    v.bus_write(Window::Mmio, 0x604, &0x1e1e_1e1eu32.to_le_bytes());
    v.bus_read(Window::Mmio, 0x604, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x1e1e_1e1e, "always little endian");
}

// ---- legacy registers ----------------------------------------------

#[test]
fn crtc_follows_the_mono_colour_select() {
    let mut v = StdVga::new(MIN_VRAM).unwrap();
    outb(&mut v, 0x3c2, 0x66); // mono
    outb(&mut v, 0x3b4, 0x0e);
    outb(&mut v, 0x3b5, 0x12);
    assert_eq!(inb(&mut v, 0x3b5), 0x12);
    assert_eq!(inb(&mut v, 0x3d5), 0xff, "the colour ports float in mono");
    outb(&mut v, 0x3d5, 0x34);
    assert_eq!(inb(&mut v, 0x3b5), 0x12, "dropped");
    outb(&mut v, 0x3c2, 0x67); // colour
    assert_eq!(inb(&mut v, 0x3d5), 0x12);
    assert_eq!(inb(&mut v, 0x3b5), 0xff);
}

#[test]
fn crtc_protect_bit_guards_registers_0_to_7() {
    let mut v = StdVga::new(MIN_VRAM).unwrap();
    outb(&mut v, 0x3c2, 0x67);
    outb(&mut v, 0x3d4, 0x01);
    outb(&mut v, 0x3d5, 0x4f);
    outb(&mut v, 0x3d4, 0x11);
    outb(&mut v, 0x3d5, 0x80);
    outb(&mut v, 0x3d4, 0x01);
    outb(&mut v, 0x3d5, 0x27);
    assert_eq!(inb(&mut v, 0x3d5), 0x4f);
    outb(&mut v, 0x3d4, 0x07);
    outb(&mut v, 0x3d5, 0xff);
    assert_eq!(inb(&mut v, 0x3d5), 0x10, "only the line compare bit of CR7");
    // A 16-bit OUT writes index then data.
    v.bus_write(Window::Ports, 0x3d4 - 0x3b0, &[0x0c, 0x12]);
    assert_eq!(inb(&mut v, 0x3d5), 0x12);
}

#[test]
fn input_status_1_toggles_and_resets_the_attribute_flip_flop() {
    let mut v = StdVga::new(MIN_VRAM).unwrap();
    outb(&mut v, 0x3c2, 0x67);
    let a = inb(&mut v, 0x3da);
    let b = inb(&mut v, 0x3da);
    assert_ne!(a & 0x08, b & 0x08, "vertical retrace toggles");
    assert_ne!(a & 0x01, b & 0x01, "display enable toggles");
    // Index, then data; a read of 0x3da goes back to index.
    outb(&mut v, 0x3c0, 0x05);
    inb(&mut v, 0x3da);
    outb(&mut v, 0x3c0, 0x03);
    outb(&mut v, 0x3c0, 0x2a);
    outb(&mut v, 0x3c0, 0x03);
    assert_eq!(inb(&mut v, 0x3c1), 0x2a);
    assert_eq!(inb(&mut v, 0x3c0), 0, "after an index write the flip-flop points at data");
}

#[test]
fn dac_reads_back_what_was_written() {
    let mut v = StdVga::new(MIN_VRAM).unwrap();
    outb(&mut v, 0x3c8, 0x10);
    for c in [1, 2, 3, 4, 5, 6] {
        outb(&mut v, 0x3c9, c);
    }
    assert_eq!(inb(&mut v, 0x3c8), 0x12);
    outb(&mut v, 0x3c7, 0x10);
    assert_eq!(inb(&mut v, 0x3c7), 3);
    let got: Vec<u8> = (0..6).map(|_| inb(&mut v, 0x3c9)).collect();
    assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
    outb(&mut v, 0x3c6, 0x0f);
    assert_eq!(inb(&mut v, 0x3c6), 0x0f);
}

// ---- text mode ------------------------------------------------------

#[test]
fn text_mode_3_draws_a_glyph_in_its_colours() {
    let mut v = text_mode();
    set_cursor(&mut v, 5 * 80 + 10);
    put_char(&mut v, 0, 0, b'A', 0x07);
    put_char(&mut v, 10, 5, b' ', 0x1f);
    let mut pixels = Vec::new();
    let (w, h, rects) = v.render(&mut pixels);
    assert_eq!((w, h), (720, 400));
    assert_eq!(rects, vec![Rect { x: 0, y: 0, w: 720, h: 400 }]);
    let (fg, bg) = (rgb6(ega(7)), 0);
    assert_eq!(fg, 0xaaaaaa);
    for (line, &bits) in GLYPH_A.iter().enumerate() {
        for x in 0..9 {
            let on = x < 8 && bits & (0x80 >> x) != 0;
            let want = if on { fg } else { bg };
            assert_eq!(px(&pixels, w, x, line as u32), want, "pixel ({x}, {line})");
        }
    }
    // The cursor: lines 13-14 of cell (10, 5) in the foreground colour,
    // the rest of the cell in the background colour.
    let (cx, cy) = (10 * 9, 5 * 16);
    assert_eq!(px(&pixels, w, cx, cy + 13), 0xffffff);
    assert_eq!(px(&pixels, w, cx + 8, cy + 14), 0xffffff);
    assert_eq!(px(&pixels, w, cx, cy + 12), 0x0000aa);
    assert_eq!(px(&pixels, w, cx, cy + 15), 0x0000aa);

    let t = v.text_screen().unwrap();
    assert_eq!((t.cols, t.rows), (80, 25));
    assert_eq!(t.cells[0], (b'A', 0x07));
    assert!(t.line(0).starts_with('A'));
    assert_eq!(t.line(0).chars().count(), 80);
    assert_eq!(t.cursor, Some((10, 5)));
    assert_eq!(t.line(25), "");

    // Nothing changed: no rectangles, and cheaply.
    assert!(v.render(&mut pixels).2.is_empty());
    // One character: its cell (and the cursor cell) only.
    put_char(&mut v, 3, 2, b'A', 0x4e);
    let (_, _, rects) = v.render(&mut pixels);
    assert!(rects.contains(&Rect { x: 27, y: 32, w: 9, h: 16 }), "{rects:?}");
    assert!(rects.iter().all(|r| r.w <= 9 && r.h == 16), "{rects:?}");
    assert_eq!(px(&pixels, w, 27 + 3, 32 + 3), rgb6(ega(0x3e)), "yellow foreground");
    assert_eq!(px(&pixels, w, 27, 32), rgb6(ega(0x04)), "red background");
}

#[test]
fn text_start_address_and_line_graphics_column() {
    let mut v = text_mode();
    // Line graphics: 0xc4 with its last column lit repeats it in the 9th.
    load_glyph(&mut v, 0xc4, &[0x01; 16]);
    load_glyph(&mut v, b'B', &[0x01; 16]);
    put_char(&mut v, 0, 1, 0xc4, 0x07);
    put_char(&mut v, 1, 1, b'B', 0x07);
    let mut pixels = Vec::new();
    let (w, _, _) = v.render(&mut pixels);
    assert_eq!(px(&pixels, w, 8, 16), 0xaaaaaa, "9th column repeated");
    assert_eq!(px(&pixels, w, 9 + 8, 16), 0, "not for other characters");
    // Start address one row down: row 1 shows at the top.
    outb(&mut v, 0x3d4, 0x0d);
    outb(&mut v, 0x3d5, 80);
    v.render(&mut pixels);
    assert_eq!(v.text_screen().unwrap().cells[0], (0xc4, 0x07));
    assert_eq!(px(&pixels, w, 7, 0), 0xaaaaaa);
    assert_eq!(v.text_screen().unwrap().line(0).chars().next(), Some('─'));
}

#[test]
fn turning_the_screen_off_blanks_it_at_the_last_size() {
    let mut v = text_mode();
    put_char(&mut v, 0, 0, b'A', 0x07);
    let mut pixels = Vec::new();
    v.render(&mut pixels);
    outb(&mut v, 0x3c4, 1);
    outb(&mut v, 0x3c5, 0x20);
    let (w, h, rects) = v.render(&mut pixels);
    assert_eq!((w, h), (720, 400));
    assert_eq!(rects.len(), 1);
    assert!(pixels.iter().all(|&p| p == 0));
    assert!(v.render(&mut pixels).2.is_empty());
}

// ---- graphics modes ------------------------------------------------

#[test]
fn mode_13h_pixel_through_chain_4() {
    let mut v = StdVga::new(MIN_VRAM).unwrap();
    set_mode(&mut v, &MODE13);
    outb(&mut v, 0x3c8, 0x28);
    for c in [0x3f, 0x10, 0x00] {
        outb(&mut v, 0x3c9, c);
    }
    mem_write(&mut v, 0xa0000 + 20 * 320 + 10, &[0x28]);
    assert_eq!(mem_read(&mut v, 0xa0000 + 20 * 320 + 10), 0x28);
    let mut pixels = Vec::new();
    let (w, h, _) = v.render(&mut pixels);
    assert_eq!((w, h), (320, 200));
    assert_eq!(px(&pixels, w, 10, 20), 0xff4100);
    assert_eq!(px(&pixels, w, 11, 20), 0);
    // A second pixel: only its line changes.
    mem_write(&mut v, 0xa0000 + 150 * 320 + 5, &[0x28]);
    let (_, _, rects) = v.render(&mut pixels);
    assert!(rects.iter().any(|r| r.y <= 150 && 150 < r.y + r.h), "{rects:?}");
    assert!(rects.iter().all(|r| r.h < 200), "{rects:?}");
    // The palette changes: everything is redrawn.
    outb(&mut v, 0x3c8, 0x28);
    for c in [0, 0x3f, 0] {
        outb(&mut v, 0x3c9, c);
    }
    let (_, _, rects) = v.render(&mut pixels);
    assert_eq!(rects, vec![Rect { x: 0, y: 0, w: 320, h: 200 }]);
    assert_eq!(px(&pixels, w, 5, 150), 0x00ff00);
}

#[test]
fn mode_12h_write_mode_0_with_map_and_bit_masks() {
    let mut v = StdVga::new(MIN_VRAM).unwrap();
    set_mode(&mut v, &MODE12);
    let at = 0xa0000 + 3 * 80 + 2; // line 3, pixels 16-23
                                   // Planes 0 and 2, the low four pixels of the byte: colour 5.
    outb(&mut v, 0x3c4, 2);
    outb(&mut v, 0x3c5, 0x05);
    outb(&mut v, 0x3ce, 8);
    outb(&mut v, 0x3cf, 0x0f);
    let _ = mem_read(&mut v, at);
    mem_write(&mut v, at, &[0xff]);
    // Set/reset: colour 14 into pixel 16 through all planes.
    outb(&mut v, 0x3c4, 2);
    outb(&mut v, 0x3c5, 0x0f);
    outb(&mut v, 0x3ce, 0);
    outb(&mut v, 0x3cf, 0x0e);
    outb(&mut v, 0x3ce, 1);
    outb(&mut v, 0x3cf, 0x0f);
    outb(&mut v, 0x3ce, 8);
    outb(&mut v, 0x3cf, 0x80);
    let _ = mem_read(&mut v, at);
    mem_write(&mut v, at, &[0x00]);
    let mut pixels = Vec::new();
    let (w, h, _) = v.render(&mut pixels);
    assert_eq!((w, h), (640, 480));
    assert_eq!(px(&pixels, w, 16, 3), rgb6(ega(0x3e)), "colour 14 through the attribute palette");
    for x in 17..20 {
        assert_eq!(px(&pixels, w, x, 3), 0, "pixel {x} masked off");
    }
    for x in 20..24 {
        assert_eq!(px(&pixels, w, x, 3), rgb6(ega(5)), "pixel {x}");
    }
    assert_eq!(px(&pixels, w, 20, 2), 0);
    // Read mode 0 of plane 2, and read mode 1 (colour compare with 5).
    outb(&mut v, 0x3ce, 4);
    outb(&mut v, 0x3cf, 2);
    outb(&mut v, 0x3ce, 1);
    outb(&mut v, 0x3cf, 0);
    assert_eq!(mem_read(&mut v, at), 0x8f);
    outb(&mut v, 0x3ce, 5);
    outb(&mut v, 0x3cf, 0x08);
    outb(&mut v, 0x3ce, 2);
    outb(&mut v, 0x3cf, 5);
    assert_eq!(mem_read(&mut v, at), 0x0f);
    // Write mode 2: colour 3 into pixel 17.
    outb(&mut v, 0x3ce, 5);
    outb(&mut v, 0x3cf, 0x02);
    outb(&mut v, 0x3ce, 8);
    outb(&mut v, 0x3cf, 0x40);
    let _ = mem_read(&mut v, at);
    mem_write(&mut v, at, &[3]);
    v.render(&mut pixels);
    assert_eq!(px(&pixels, w, 17, 3), rgb6(ega(3)));
    assert_eq!(px(&pixels, w, 16, 3), rgb6(ega(0x3e)), "kept through the latches");
}

const MODE4: Mode = Mode {
    misc: 0x63,
    seq: [0x03, 0x09, 0x03, 0x00, 0x02],
    crtc: [
        0x2d, 0x27, 0x28, 0x90, 0x2b, 0x80, 0xbf, 0x1f, 0x00, 0xc1, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x9c, 0x8e,
        0x8f, 0x14, 0x00, 0x96, 0xb9, 0xa2, 0xff,
    ],
    actl: [
        0x00, 0x13, 0x15, 0x17, 0x02, 0x04, 0x06, 0x07, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x01, 0x00,
        0x03, 0x00, 0x00,
    ],
    grdc: [0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0x0f, 0x0f, 0xff],
};

#[test]
fn cga_mode_4_interleaves_banks() {
    let mut v = StdVga::new(MIN_VRAM).unwrap();
    set_mode(&mut v, &MODE4);
    // Line 0 (even bank), pixels 0-3: colours 1, 2, 3, 0.
    mem_write(&mut v, 0xb8000, &[0b01_10_11_00]);
    // Line 1 (odd bank at 0x2000), pixel 5: colour 3.
    mem_write(&mut v, 0xb8000 + 0x2000 + 1, &[0b00_11_00_00]);
    // Line 2 (second row of the even bank): pixel 0 colour 2.
    mem_write(&mut v, 0xb8000 + 80, &[0b10_00_00_00]);
    let mut pixels = Vec::new();
    let (w, h, _) = v.render(&mut pixels);
    assert_eq!((w, h), (320, 200));
    let (c1, c2, c3) = (rgb6(ega(0x13)), rgb6(ega(0x15)), rgb6(ega(0x17)));
    assert_eq!(&pixels[..4], &[c1, c2, c3, 0]);
    assert_eq!(px(&pixels, w, 5, 1), c3);
    assert_eq!(px(&pixels, w, 4, 1), 0);
    assert_eq!(px(&pixels, w, 0, 2), c2);
    // A write to the odd bank redraws odd lines only.
    mem_write(&mut v, 0xb8000 + 0x2000 + 80 * 50, &[0xff]);
    let (_, _, rects) = v.render(&mut pixels);
    assert!(rects.iter().any(|r| r.y <= 101 && 101 < r.y + r.h), "{rects:?}");
    assert_eq!(px(&pixels, w, 0, 101), c3);
}

#[test]
fn character_map_select_picks_font_a_or_b() {
    let mut v = text_mode();
    // Map 1 (plane 2 offset 16 KiB) for font A, map 0 for font B.
    let mut glyph = [0u8; 16];
    glyph[0] = 0xff;
    for (i, val) in [(2, 0x04), (4, 0x07)] {
        outb(&mut v, 0x3c4, i);
        outb(&mut v, 0x3c5, val);
    }
    for (i, val) in [(4, 0x02), (5, 0x00), (6, 0x04)] {
        outb(&mut v, 0x3ce, i);
        outb(&mut v, 0x3cf, val);
    }
    mem_write(&mut v, 0xa0000 + 0x4000 + u64::from(b'A') * 32, &glyph);
    for (i, val) in [(2, 0x03), (4, 0x03)] {
        outb(&mut v, 0x3c4, i);
        outb(&mut v, 0x3c5, val);
    }
    for (i, val) in [(4, 0x00), (5, 0x10), (6, 0x0e)] {
        outb(&mut v, 0x3ce, i);
        outb(&mut v, 0x3cf, val);
    }
    outb(&mut v, 0x3c4, 3);
    outb(&mut v, 0x3c5, 0x04); // A = map 1, B = map 0
    put_char(&mut v, 0, 0, b'A', 0x07); // bit 3 clear: font B
    put_char(&mut v, 1, 0, b'A', 0x0f); // bit 3 set: font A
    let mut pixels = Vec::new();
    let (w, _, _) = v.render(&mut pixels);
    assert_eq!(px(&pixels, w, 0, 0), 0, "font B's 'A' has an empty first line");
    assert_eq!(px(&pixels, w, 1, 4), 0xaaaaaa);
    assert_eq!(px(&pixels, w, 9, 0), rgb6(ega(0x3f)), "font A's glyph");
}

// ---- VBE -------------------------------------------------------------

#[test]
fn vbe_1024x768x32_through_the_lfb() {
    let mut v = StdVga::new(DEFAULT_VRAM).unwrap();
    assert_eq!(vbe_in(&mut v, 0), 0xb0c5);
    vbe_out(&mut v, 0, 0xb0c4);
    assert_eq!(vbe_in(&mut v, 0), 0xb0c4);
    vbe_out(&mut v, 0, 0x1234);
    assert_eq!(vbe_in(&mut v, 0), 0xb0c4, "not an ID");
    assert_eq!(vbe_in(&mut v, 0xa), 256);
    vbe_out(&mut v, 4, 0x02);
    assert_eq!((vbe_in(&mut v, 1), vbe_in(&mut v, 2), vbe_in(&mut v, 3)), (16000, 12000, 32));
    vbe_out(&mut v, 4, 0);
    vbe_out(&mut v, 1, 1024);
    vbe_out(&mut v, 2, 768);
    vbe_out(&mut v, 3, 32);
    vbe_out(&mut v, 4, 0x41);
    assert_eq!(vbe_in(&mut v, 6), 1024, "virtual width");
    let mut pixels = Vec::new();
    let (w, h, rects) = v.render(&mut pixels);
    assert_eq!((w, h), (1024, 768));
    assert_eq!(rects, vec![Rect { x: 0, y: 0, w: 1024, h: 768 }]);
    assert!(v.render(&mut pixels).2.is_empty());
    let off = (200 * 1024 + 100) * 4;
    v.bus_write(Window::Lfb, off, &0x0012_3456u32.to_le_bytes());
    let (_, _, rects) = v.render(&mut pixels);
    assert_eq!(rects, vec![Rect { x: 0, y: 200, w: 1024, h: 1 }]);
    assert_eq!(px(&pixels, w, 100, 200), 0x123456);
    let mut b = [0; 4];
    v.bus_read(Window::Lfb, off, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x0012_3456);
    // Panning: Y_OFFSET 200 puts that line at the top.
    vbe_out(&mut v, 9, 200);
    v.render(&mut pixels);
    assert_eq!(px(&pixels, w, 100, 0), 0x123456);
}

/// The machine's adapter: its VRAM decoded in guest memory, where the
/// CPU's stores land straight in it and their pages reach the renderer;
/// the pages of a take are copied again once the write sync it asked is
/// answered, and a parked vCPU answers at once.
#[test]
fn stores_through_guest_memory_reach_the_picture() {
    const FB: u64 = 0xe000_0000;
    let mut mem = mmu::GuestMemory::new(1 << 21).unwrap();
    mem.add_vram(u64::from(DEFAULT_VRAM)).unwrap();
    let mem = Arc::new(mem);
    let mut v = StdVga::with_memory(mem.clone()).unwrap();
    assert_eq!(v.vram_size(), DEFAULT_VRAM);
    assert!(StdVga::with_memory(Arc::new(mmu::GuestMemory::new(1 << 21).unwrap())).is_err());
    mem.map_vram(Some(FB)).unwrap();
    vbe_out(&mut v, 1, 1024);
    vbe_out(&mut v, 2, 768);
    vbe_out(&mut v, 3, 32);
    vbe_out(&mut v, 4, 0x41);
    let mut pixels = Vec::new();
    let (w, _, _) = v.render(&mut pixels);
    assert!(v.render(&mut pixels).2.is_empty(), "a still picture renders nothing");
    assert!(!v.vram_settling());
    // A vCPU's watch, as a running vCPU holds one.
    let watch = mem.code_watch();
    let off = (300 * 1024 + 7) * 4;
    mem.write(FB + off, &0x00ab_cdefu32.to_le_bytes()).unwrap();
    let (_, _, rects) = v.render(&mut pixels);
    assert_eq!(rects, vec![Rect { x: 0, y: 300, w: 1024, h: 1 }]);
    assert_eq!(px(&pixels, w, 7, 300), 0xabcdef);
    assert_eq!(v.vram()[off as usize], 0xef);
    // The vCPU had a write entry into the VRAM: the take waits for it.
    watch.note_vram_fast_writes();
    mem.write(FB + off, &0x0011_2233u32.to_le_bytes()).unwrap();
    v.render(&mut pixels);
    assert!(v.vram_settling());
    // A store through its stale entry lands before it answers; the copy
    // after the answer shows it.
    v.shared.write(off + 4, &0x0044_5566u32.to_le_bytes());
    v.render(&mut pixels);
    assert!(v.vram_settling(), "not answered yet");
    assert!(watch.take().drop_fast_writes);
    let (_, _, rects) = v.render(&mut pixels);
    assert!(!v.vram_settling());
    assert_eq!(rects, vec![Rect { x: 0, y: 300, w: 1024, h: 1 }]);
    assert_eq!(px(&pixels, w, 8, 300), 0x445566);
    // A saved state carries what the CPU stored.
    let saved = v.save();
    assert_eq!(&saved.vram[off as usize..off as usize + 4], &0x0011_2233u32.to_le_bytes());
}

#[test]
fn vbe_depths_and_the_banked_window() {
    let mut v = StdVga::new(4 << 20).unwrap();
    vbe_out(&mut v, 1, 640);
    vbe_out(&mut v, 2, 480);
    vbe_out(&mut v, 3, 16);
    vbe_out(&mut v, 4, 0x01);
    // Bank 1 of the window: line 65536 / 1280 = 51, pixel (128, 51).
    vbe_out(&mut v, 5, 1);
    mem_write(&mut v, 0xa0000, &0xf800u16.to_le_bytes());
    assert_eq!(&v.vram()[0x1_0000..0x1_0002], &[0x00, 0xf8]);
    let mut pixels = Vec::new();
    let (w, h, _) = v.render(&mut pixels);
    assert_eq!((w, h), (640, 480));
    assert_eq!(px(&pixels, w, 128, 51), 0xff0000);
    for (bpp, bytes, want) in
        [(15u16, vec![0x1f, 0x00], 0x0000ff), (24, vec![0x11, 0x22, 0x33], 0x332211), (8, vec![0x07], 0xaaaaaa)]
    {
        vbe_out(&mut v, 4, 0);
        vbe_out(&mut v, 3, bpp);
        vbe_out(&mut v, 4, 0x41);
        outb(&mut v, 0x3c8, 7);
        for c in ega(7) {
            outb(&mut v, 0x3c9, c);
        }
        v.bus_write(Window::Lfb, 0, &bytes);
        v.render(&mut pixels);
        assert_eq!(pixels[0], want, "{bpp} bpp");
    }
    // An 8-bit DAC takes the values as they are.
    vbe_out(&mut v, 4, 0x61);
    outb(&mut v, 0x3c8, 7);
    for c in [0x80, 0x40, 0x20] {
        outb(&mut v, 0x3c9, c);
    }
    v.bus_write(Window::Lfb, 0, &[7]);
    v.render(&mut pixels);
    assert_eq!(pixels[0], 0x804020);
}

#[test]
fn vbe_enable_clears_the_vram_unless_told_not_to() {
    let mut v = StdVga::new(MIN_VRAM).unwrap();
    v.bus_write(Window::Lfb, 16, &[0xaa]);
    vbe_out(&mut v, 1, 320);
    vbe_out(&mut v, 2, 200);
    vbe_out(&mut v, 3, 8);
    vbe_out(&mut v, 4, 0xc1);
    assert_eq!(v.vram()[16], 0xaa);
    vbe_out(&mut v, 4, 0);
    vbe_out(&mut v, 4, 0x41);
    assert_eq!(v.vram()[16], 0);
}

#[test]
fn garbage_vbe_values_are_clamped_and_render_in_bounds() {
    let mut v = StdVga::new(MIN_VRAM).unwrap();
    let mut pixels = Vec::new();
    let cases: [&[(u16, u16)]; 6] = [
        &[(1, 0), (2, 0), (3, 32), (4, 0x41)],
        &[(1, 65535), (2, 65535), (3, 32), (4, 0x41)],
        &[(1, 640), (2, 480), (3, 7), (4, 0x41)],
        &[(1, 640), (2, 480), (3, 8), (4, 0x41), (9, 65535), (8, 65535)],
        &[(1, 640), (2, 480), (3, 8), (4, 0x41), (6, 65535), (9, 5000)],
        &[(1, 8), (2, 12000), (3, 4), (4, 0x41), (6, 8), (5, 0xffff)],
    ];
    for regs in cases {
        vbe_out(&mut v, 4, 0);
        for &(i, val) in regs {
            vbe_out(&mut v, i, val);
        }
        let (xres, yres, bpp) = (vbe_in(&mut v, 1), vbe_in(&mut v, 2), vbe_in(&mut v, 3));
        assert!((8..=16000).contains(&xres) && xres.is_multiple_of(8), "{regs:?}: xres {xres}");
        assert!([4, 8, 15, 16, 24, 32].contains(&bpp), "{regs:?}: bpp {bpp}");
        let line = u32::from(vbe_in(&mut v, 6)) * u32::from(bpp).div_ceil(8);
        let end = (u32::from(vbe_in(&mut v, 9)) + u32::from(yres)) * line;
        assert!(end <= MIN_VRAM || bpp == 4, "{regs:?}: the picture ends at {end:#x}");
        assert!(vbe_in(&mut v, 5) < 16, "bank inside the VRAM");
        let (w, h, rects) = v.render(&mut pixels);
        assert_eq!(pixels.len(), (w * h) as usize);
        assert!(rects.iter().all(|r| r.x + r.w <= w && r.y + r.h <= h));
        mem_write(&mut v, 0xaffff, &[1, 2]);
    }
}

// ---- saved state ------------------------------------------------------

#[test]
fn the_state_round_trips_and_renders_alike() {
    let mut v = text_mode();
    put_char(&mut v, 5, 5, b'A', 0x1e);
    set_cursor(&mut v, 5 * 80 + 6);
    vbe_out(&mut v, 5, 3);
    let mut fresh = StdVga::new(MIN_VRAM).unwrap();
    persist::assert_round_trip(&v, &mut fresh);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let sa = v.render(&mut a);
    let sb = fresh.render(&mut b);
    assert_eq!((sa.0, sa.1), (sb.0, sb.1));
    assert!(a == b, "the restored adapter draws another picture");
    assert_eq!(fresh.text_screen(), v.text_screen());
}

#[test]
fn corrupt_states_are_refused() {
    let mut v = text_mode();
    let good = v.save();
    let cases: [fn(&mut StdVgaState); 13] = [
        |s| s.sr[4] = 0xff,
        |s| s.ar[0x13] = 0x10,
        |s| s.vram.truncate(4096),
        |s| s.sr.push(0),
        |s| s.cr.truncate(25),
        |s| s.palette.pop().map(drop).unwrap_or(()),
        |s| s.vbe_regs.truncate(4),
        |s| s.sr_index = 8,
        |s| s.dac_sub_index = 3,
        |s| s.vbe_regs[0] = 0x1234,
        |s| s.vbe_regs[5] = 16,
        |s| s.vbe_start = 2 << 20,
        |s| s.config.bytes[2] ^= 1,
    ];
    for corrupt in cases {
        let mut bad = good.clone();
        corrupt(&mut bad);
        persist::assert_refused(&mut v, &bad);
    }
    let mut bigger = StdVga::new(2 << 20).unwrap();
    let e = persist::assert_refused(&mut bigger, &good);
    assert!(e.field == "bytes" || e.field == "vram", "{e}");
}

#[test]
fn reset_goes_back_to_power_on() {
    let mut v = text_mode();
    put_char(&mut v, 0, 0, b'A', 7);
    vbe_out(&mut v, 0, 0xb0c0);
    v.reset();
    assert_eq!(v.save(), {
        let mut f = StdVga::new(MIN_VRAM).unwrap();
        f.config = v.config.clone();
        f.save()
    });
    assert_eq!(vbe_in(&mut v, 0), 0xb0c5);
}

// ---- hostile guests -------------------------------------------------

#[test]
fn bad_accesses_are_harmless() {
    let mut v = StdVga::new(MIN_VRAM).unwrap();
    let mut b = [0u8; 8];
    v.bus_read(Window::Lfb, u64::from(MIN_VRAM) - 2, &mut b);
    assert_eq!(b, [0xff; 8]);
    v.bus_write(Window::Lfb, u64::MAX, &[1; 8]);
    v.bus_read(Window::VbePorts, 0, &mut b);
    v.bus_write(Window::VbePorts, 1, &[1; 8]);
    v.bus_read(Window::Mmio, u64::MAX - 2, &mut b[..4]);
    v.bus_write(Window::Mmio, 0x7ff, &[1; 8]);
    v.bus_write(Window::Mmio, 0x513, &[0xff; 8]);
    v.bus_read(Window::Memory, 0x1_fffc, &mut b);
    v.bus_write(Window::Ports, 0x2c, &[0xff; 8]);
    v.bus_read(Window::Ports, 0, &mut b);
    let mut pixels = Vec::new();
    v.render(&mut pixels);
}

#[test]
fn the_fuzz_driver_survives_pseudo_random_storms() {
    let mode13: Vec<u8> =
        [2u8, 3, 8, 0, 2, 1, 0x40, 1, 2, 2, 0x30, 1, 2, 4, 0x41, 0, 6, 4, 0, 0, 0, 0, 9, 9, 9, 9, 1, 6].to_vec();
    let seeds: [&[u8]; 1] = [&mode13];
    for input in crate::fuzz::pseudo_random_inputs(0x5ca1ab1e, 300, 2048, &seeds) {
        fuzz_vga(&input);
    }
}

#[test]
fn a_storm_of_text_mode_accesses_keeps_the_picture_whole() {
    let mut v = text_mode();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut pixels = Vec::new();
    let windows = [Window::Ports, Window::VbePorts, Window::Memory, Window::Lfb, Window::Mmio];
    for step in 0..20_000 {
        let window = windows[(rnd() % 5) as usize];
        let len = [1usize, 2, 4, 8][(rnd() % 4) as usize];
        let offset = rnd()
            % match window {
                Window::Ports => 0x30,
                Window::VbePorts => 3,
                Window::Memory => 0x2_0000,
                Window::Lfb => u64::from(MIN_VRAM),
                Window::Mmio => 0x1000,
            };
        let value = rnd().to_le_bytes();
        if rnd() % 2 == 0 {
            v.bus_write(window, offset, &value[..len]);
        } else {
            let mut b = [0u8; 8];
            v.bus_read(window, offset, &mut b[..len]);
        }
        if step % 500 == 0 {
            let (w, h, rects) = v.render(&mut pixels);
            assert_eq!(pixels.len(), (w * h) as usize);
            assert!(rects.iter().all(|r| r.x + r.w <= w && r.y + r.h <= h));
        }
    }
    crate::fuzz::assert_restorable(&mut v);
}
