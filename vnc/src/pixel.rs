//! RFB pixel formats and the conversion of XRGB pixels into a client's format.

/// An RFB PIXEL_FORMAT (the 16 bytes of ServerInit and SetPixelFormat).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelFormat {
    /// Bits per pixel on the wire: 8, 16 or 32.
    pub bits_per_pixel: u8,
    /// Useful bits per pixel.
    pub depth: u8,
    /// Multi-byte pixels are big-endian.
    pub big_endian: bool,
    /// True colour (the only kind this server sends).
    pub true_colour: bool,
    /// Maximum red value.
    pub red_max: u16,
    /// Maximum green value.
    pub green_max: u16,
    /// Maximum blue value.
    pub blue_max: u16,
    /// Red shift.
    pub red_shift: u8,
    /// Green shift.
    pub green_shift: u8,
    /// Blue shift.
    pub blue_shift: u8,
}

impl PixelFormat {
    /// The server's native format: 32 bpp, depth 24, little-endian, 0x00RRGGBB.
    pub const XRGB32: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    /// Parses the 16-byte wire form.
    pub fn from_bytes(b: &[u8; 16]) -> PixelFormat {
        PixelFormat {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        }
    }

    /// The 16-byte wire form.
    pub fn to_bytes(&self) -> [u8; 16] {
        let r = self.red_max.to_be_bytes();
        let g = self.green_max.to_be_bytes();
        let bl = self.blue_max.to_be_bytes();
        [
            self.bits_per_pixel,
            self.depth,
            self.big_endian as u8,
            self.true_colour as u8,
            r[0],
            r[1],
            g[0],
            g[1],
            bl[0],
            bl[1],
            self.red_shift,
            self.green_shift,
            self.blue_shift,
            0,
            0,
            0,
        ]
    }

    /// Whether this server can send pixels in this format (true colour, 8/16/32 bpp).
    pub fn is_supported(&self) -> bool {
        self.true_colour && matches!(self.bits_per_pixel, 8 | 16 | 32)
    }

    /// Bytes per pixel on the wire.
    pub fn bytes_per_pixel(&self) -> usize {
        (self.bits_per_pixel / 8) as usize
    }

    fn is_native(&self) -> bool {
        self.bits_per_pixel == 32
            && !self.big_endian
            && self.red_max == 255
            && self.green_max == 255
            && self.blue_max == 255
            && self.red_shift == 16
            && self.green_shift == 8
            && self.blue_shift == 0
    }

    /// The pixel value (before byte ordering) of an XRGB pixel.
    pub fn value(&self, xrgb: u32) -> u32 {
        fn chan(v: u32, max: u16, shift: u8) -> u64 {
            let scaled = (v as u64 * max as u64 + 127) / 255;
            if shift >= 32 {
                0
            } else {
                scaled << shift
            }
        }
        let r = (xrgb >> 16) & 0xff;
        let g = (xrgb >> 8) & 0xff;
        let b = xrgb & 0xff;
        let v = chan(r, self.red_max, self.red_shift)
            | chan(g, self.green_max, self.green_shift)
            | chan(b, self.blue_max, self.blue_shift);
        let bits = self.bits_per_pixel.min(32) as u32;
        (if bits >= 32 { v } else { v & ((1u64 << bits) - 1) }) as u32
    }

    /// Appends one pixel in this format.
    pub fn push_pixel(&self, out: &mut Vec<u8>, xrgb: u32) {
        let v = self.value(xrgb);
        match (self.bits_per_pixel, self.big_endian) {
            (8, _) => out.push(v as u8),
            (16, false) => out.extend_from_slice(&(v as u16).to_le_bytes()),
            (16, true) => out.extend_from_slice(&(v as u16).to_be_bytes()),
            (_, false) => out.extend_from_slice(&v.to_le_bytes()),
            (_, true) => out.extend_from_slice(&v.to_be_bytes()),
        }
    }

    /// Appends a run of pixels in this format.
    pub fn push_pixels(&self, out: &mut Vec<u8>, pixels: &[u32]) {
        out.reserve(pixels.len() * self.bytes_per_pixel());
        if self.is_native() {
            for &p in pixels {
                out.extend_from_slice(&(p & 0x00ff_ffff).to_le_bytes());
            }
        } else {
            for &p in pixels {
                self.push_pixel(out, p);
            }
        }
    }

    /// Whether Tight's TPIXEL is the compact 3-byte R,G,B form for this format.
    pub fn tight_compact(&self) -> bool {
        self.bits_per_pixel == 32
            && self.depth == 24
            && self.red_max == 255
            && self.green_max == 255
            && self.blue_max == 255
    }

    /// Appends a Tight TPIXEL.
    pub fn push_tpixel(&self, out: &mut Vec<u8>, xrgb: u32) {
        if self.tight_compact() {
            out.extend_from_slice(&[(xrgb >> 16) as u8, (xrgb >> 8) as u8, xrgb as u8]);
        } else {
            self.push_pixel(out, xrgb);
        }
    }

    /// For ZRLE's CPIXEL: `Some(offset)` of the 3 significant bytes inside the 4-byte pixel when
    /// the compact form applies, `None` when CPIXEL is a whole PIXEL.
    pub fn zrle_cpixel(&self) -> Option<usize> {
        if self.bits_per_pixel != 32 || self.depth > 24 {
            return None;
        }
        let mask = |max: u16, shift: u8| -> u64 {
            if shift >= 32 {
                u64::MAX
            } else {
                (max as u64) << shift
            }
        };
        let all = mask(self.red_max, self.red_shift)
            | mask(self.green_max, self.green_shift)
            | mask(self.blue_max, self.blue_shift);
        if all < (1 << 24) {
            Some(if self.big_endian { 1 } else { 0 })
        } else if all & 0xff == 0 && all <= u32::MAX as u64 {
            Some(if self.big_endian { 0 } else { 1 })
        } else {
            None
        }
    }

    /// Appends a ZRLE CPIXEL.
    pub fn push_cpixel(&self, out: &mut Vec<u8>, xrgb: u32) {
        match self.zrle_cpixel() {
            Some(off) => {
                let v = self.value(xrgb);
                let b = if self.big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
                out.extend_from_slice(&b[off..off + 3]);
            }
            None => self.push_pixel(out, xrgb),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PixelFormat;

    #[test]
    fn conversions() {
        let p = 0x00_12_34_56;
        let mut out = Vec::new();
        PixelFormat::XRGB32.push_pixels(&mut out, &[p]);
        assert_eq!(out, [0x56, 0x34, 0x12, 0]);
        let be = PixelFormat { big_endian: true, ..PixelFormat::XRGB32 };
        out.clear();
        be.push_pixel(&mut out, p);
        assert_eq!(out, [0, 0x12, 0x34, 0x56]);
        // BGR233 at 8 bpp.
        let bgr233 = PixelFormat {
            bits_per_pixel: 8,
            depth: 8,
            red_max: 7,
            green_max: 7,
            blue_max: 3,
            red_shift: 0,
            green_shift: 3,
            blue_shift: 6,
            ..PixelFormat::XRGB32
        };
        assert_eq!(bgr233.value(0x00ffffff), 0xff);
        assert_eq!(bgr233.value(0x00ff0000), 0x07);
        // Absurd shifts never panic and stay within the pixel size.
        let odd =
            PixelFormat { bits_per_pixel: 16, red_shift: 200, green_shift: 15, blue_max: 65535, ..PixelFormat::XRGB32 };
        assert!(odd.value(0x00ffffff) <= 0xffff);
        // ZRLE CPIXEL: 3 bytes for depth 24 in the low bytes; the whole pixel for depth 32.
        assert_eq!(PixelFormat::XRGB32.zrle_cpixel(), Some(0));
        assert_eq!(be.zrle_cpixel(), Some(1));
        let high = PixelFormat { red_shift: 24, green_shift: 16, blue_shift: 8, ..PixelFormat::XRGB32 };
        assert_eq!(high.zrle_cpixel(), Some(1));
        assert_eq!(PixelFormat { depth: 32, ..PixelFormat::XRGB32 }.zrle_cpixel(), None);
        assert!(PixelFormat::XRGB32.tight_compact());
        assert!(!PixelFormat { true_colour: false, ..PixelFormat::XRGB32 }.is_supported());
        assert!(!PixelFormat { bits_per_pixel: 24, ..PixelFormat::XRGB32 }.is_supported());
        assert_eq!(PixelFormat::from_bytes(&PixelFormat::XRGB32.to_bytes()), PixelFormat::XRGB32);
    }
}
