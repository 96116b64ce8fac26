//! The EDID the adapter shows at the start of BAR2: one EDID 1.4 base block
//! (VESA E-EDID Release A, Revision 2) describing a monitor whose preferred
//! mode is 1024x768 at 60 Hz (the VESA DMT timing, 65 MHz), with the
//! established 640x480, 800x600 and 1024x768 modes, a name and range limits.

/// Bytes of the EDID block.
pub const EDID_LEN: usize = 128;

/// The EDID block, its checksum byte included.
pub const EDID: [u8; EDID_LEN] = build();

const fn build() -> [u8; EDID_LEN] {
    let mut e = [0u8; EDID_LEN];
    // Header.
    let header = [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00];
    let mut i = 0;
    while i < 8 {
        e[i] = header[i];
        i += 1;
    }
    // Manufacturer "RHT" (three 5-bit letters, big endian), product 0x1234.
    let id: u16 = ((b'R' - b'@') as u16) << 10 | ((b'H' - b'@') as u16) << 5 | (b'T' - b'@') as u16;
    e[8] = (id >> 8) as u8;
    e[9] = id as u8;
    e[10] = 0x34;
    e[11] = 0x12;
    // Serial 0; week 42 of 2014.
    e[16] = 42;
    e[17] = (2014 - 1990) as u8;
    // EDID 1.4.
    e[18] = 1;
    e[19] = 4;
    // Digital input, 8 bits per colour, DisplayPort.
    e[20] = 0xa5;
    // 26 x 20 cm, gamma 2.2.
    e[21] = 26;
    e[22] = 20;
    e[23] = 120;
    // sRGB default colour space, the preferred timing is native, RGB 4:4:4.
    e[24] = 0x06;
    // Chromaticity of sRGB.
    let chroma = [0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54];
    i = 0;
    while i < 10 {
        e[25 + i] = chroma[i];
        i += 1;
    }
    // Established timings: 640x480@60, 800x600@60; 1024x768@60.
    e[35] = 0x21;
    e[36] = 0x08;
    // Standard timings unused.
    i = 38;
    while i < 54 {
        e[i] = 0x01;
        i += 1;
    }
    // Detailed timing: 1024x768@60, 65 MHz, 1344x806 total, syncs 24/136
    // and 3/6, 260 x 195 mm, separate negative syncs.
    let dtd =
        [0x64, 0x19, 0x00, 0x40, 0x41, 0x00, 0x26, 0x30, 0x18, 0x88, 0x36, 0x00, 0x04, 0xc3, 0x10, 0x00, 0x00, 0x18];
    i = 0;
    while i < 18 {
        e[54 + i] = dtd[i];
        i += 1;
    }
    // Display product name.
    let name = *b"QEMU Monitor\n";
    e[72 + 3] = 0xfc;
    i = 0;
    while i < 13 {
        e[77 + i] = name[i];
        i += 1;
    }
    // Range limits: 50-125 Hz, 30-160 kHz, 230 MHz, no timing formula.
    let range = [0x00, 0x00, 0x00, 0xfd, 0x00, 50, 125, 30, 160, 23, 0x00, 0x0a, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20];
    i = 0;
    while i < 18 {
        e[90 + i] = range[i];
        i += 1;
    }
    // A dummy descriptor.
    e[108 + 3] = 0x10;
    // No extensions; the checksum makes the bytes sum to 0.
    let mut sum: u8 = 0;
    i = 0;
    while i < EDID_LEN - 1 {
        sum = sum.wrapping_add(e[i]);
        i += 1;
    }
    e[EDID_LEN - 1] = 0u8.wrapping_sub(sum);
    e
}
