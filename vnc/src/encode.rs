//! Rectangle encoders: Raw, Zlib, Tight (fill and basic/copy) and ZRLE (solid and raw tiles).

use std::io::Write;

use flate2::write::ZlibEncoder;
use flate2::Compression;

use crate::pixel::PixelFormat;
use crate::Rect;

/// Encoding numbers used by this server.
pub(crate) mod enc {
    pub const RAW: i32 = 0;
    pub const ZLIB: i32 = 6;
    pub const TIGHT: i32 = 7;
    pub const ZRLE: i32 = 16;
    pub const DESKTOP_SIZE: i32 = -223;
    pub const COMPRESS_LEVEL_0: i32 = -256;
    pub const COMPRESS_LEVEL_9: i32 = -247;
}

/// The picture encoding chosen for a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Raw pixels (0).
    Raw,
    /// Zlib (6).
    Zlib,
    /// Tight (7) without JPEG.
    Tight,
    /// ZRLE (16).
    Zrle,
}

impl Encoding {
    /// The RFB encoding number.
    pub fn number(self) -> i32 {
        match self {
            Encoding::Raw => enc::RAW,
            Encoding::Zlib => enc::ZLIB,
            Encoding::Tight => enc::TIGHT,
            Encoding::Zrle => enc::ZRLE,
        }
    }

    /// The encoding for a number, when this server can send it.
    pub fn from_number(n: i32) -> Option<Encoding> {
        match n {
            enc::RAW => Some(Encoding::Raw),
            enc::ZLIB => Some(Encoding::Zlib),
            enc::TIGHT => Some(Encoding::Tight),
            enc::ZRLE => Some(Encoding::Zrle),
            _ => None,
        }
    }
}

/// Largest sub-rectangle width sent in one rectangle (Tight's limit).
pub(crate) const MAX_RECT_WIDTH: u32 = 2048;
/// Largest number of pixels sent in one rectangle (Tight's limit).
pub(crate) const MAX_RECT_PIXELS: u32 = 65536;

/// Splits a rectangle into pieces no wider than [`MAX_RECT_WIDTH`] and no larger than
/// [`MAX_RECT_PIXELS`].
pub(crate) fn split_rect(r: Rect, out: &mut Vec<Rect>) {
    if r.w == 0 || r.h == 0 {
        return;
    }
    let mut x = 0;
    while x < r.w {
        let w = (r.w - x).min(MAX_RECT_WIDTH);
        let band = (MAX_RECT_PIXELS / w).max(1);
        let mut y = 0;
        while y < r.h {
            let h = (r.h - y).min(band);
            out.push(Rect { x: r.x + x, y: r.y + y, w, h });
            y += h;
        }
        x += w;
    }
}

fn new_stream(level: u32) -> ZlibEncoder<Vec<u8>> {
    ZlibEncoder::new(Vec::new(), Compression::new(level.min(9)))
}

/// Compresses `data` through a persistent stream and returns the bytes up to a sync flush.
fn deflate(stream: &mut ZlibEncoder<Vec<u8>>, data: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(data)?;
    stream.flush()?;
    Ok(std::mem::take(stream.get_mut()))
}

/// Per-connection encoder state (the zlib streams live as long as the connection).
pub(crate) struct Encoder {
    level: u32,
    zlib: Option<ZlibEncoder<Vec<u8>>>,
    tight: [Option<ZlibEncoder<Vec<u8>>>; 4],
    zrle: Option<ZlibEncoder<Vec<u8>>>,
    scratch: Vec<u8>,
}

impl Encoder {
    pub(crate) fn new() -> Encoder {
        Encoder { level: 6, zlib: None, tight: [None, None, None, None], zrle: None, scratch: Vec::new() }
    }

    /// Sets the compression level for streams created from now on.
    pub(crate) fn set_level(&mut self, level: u32) {
        self.level = level.min(9);
    }

    /// Appends one rectangle (header and data). `pixels` holds the rectangle's XRGB pixels, row-major.
    pub(crate) fn encode(
        &mut self,
        encoding: Encoding,
        pf: &PixelFormat,
        r: Rect,
        pixels: &[u32],
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        debug_assert_eq!(pixels.len(), (r.w * r.h) as usize);
        push_header(out, r, encoding.number());
        match encoding {
            Encoding::Raw => pf.push_pixels(out, pixels),
            Encoding::Zlib => {
                self.scratch.clear();
                pf.push_pixels(&mut self.scratch, pixels);
                let level = self.level;
                let z = deflate(self.zlib.get_or_insert_with(|| new_stream(level)), &self.scratch)?;
                out.extend_from_slice(&(z.len() as u32).to_be_bytes());
                out.extend_from_slice(&z);
            }
            Encoding::Tight => self.tight(pf, pixels, out)?,
            Encoding::Zrle => self.zrle(pf, r, pixels, out)?,
        }
        Ok(())
    }

    fn tight(&mut self, pf: &PixelFormat, pixels: &[u32], out: &mut Vec<u8>) -> std::io::Result<()> {
        let first = pixels.first().copied().unwrap_or(0) & 0x00ff_ffff;
        if pixels.iter().all(|&p| p & 0x00ff_ffff == first) {
            out.push(0x80); // fill
            pf.push_tpixel(out, first);
            return Ok(());
        }
        // Basic compression, stream 0, copy filter.
        out.push(0x00);
        self.scratch.clear();
        for &p in pixels {
            pf.push_tpixel(&mut self.scratch, p);
        }
        if self.scratch.len() < 12 {
            out.extend_from_slice(&self.scratch);
            return Ok(());
        }
        let level = self.level;
        let z = deflate(self.tight[0].get_or_insert_with(|| new_stream(level)), &self.scratch)?;
        push_compact_len(out, z.len());
        out.extend_from_slice(&z);
        Ok(())
    }

    fn zrle(&mut self, pf: &PixelFormat, r: Rect, pixels: &[u32], out: &mut Vec<u8>) -> std::io::Result<()> {
        self.scratch.clear();
        let stride = r.w as usize;
        let mut ty = 0;
        while ty < r.h as usize {
            let th = (r.h as usize - ty).min(64);
            let mut tx = 0;
            while tx < r.w as usize {
                let tw = (r.w as usize - tx).min(64);
                let first = pixels[ty * stride + tx] & 0x00ff_ffff;
                let solid = (0..th).all(|y| {
                    pixels[(ty + y) * stride + tx..(ty + y) * stride + tx + tw]
                        .iter()
                        .all(|&p| p & 0x00ff_ffff == first)
                });
                if solid {
                    self.scratch.push(1);
                    pf.push_cpixel(&mut self.scratch, first);
                } else {
                    self.scratch.push(0);
                    for y in 0..th {
                        for &p in &pixels[(ty + y) * stride + tx..(ty + y) * stride + tx + tw] {
                            pf.push_cpixel(&mut self.scratch, p);
                        }
                    }
                }
                tx += tw;
            }
            ty += th;
        }
        let level = self.level;
        let z = deflate(self.zrle.get_or_insert_with(|| new_stream(level)), &self.scratch)?;
        out.extend_from_slice(&(z.len() as u32).to_be_bytes());
        out.extend_from_slice(&z);
        Ok(())
    }
}

/// Appends a rectangle header.
pub(crate) fn push_header(out: &mut Vec<u8>, r: Rect, encoding: i32) {
    out.extend_from_slice(&(r.x as u16).to_be_bytes());
    out.extend_from_slice(&(r.y as u16).to_be_bytes());
    out.extend_from_slice(&(r.w as u16).to_be_bytes());
    out.extend_from_slice(&(r.h as u16).to_be_bytes());
    out.extend_from_slice(&encoding.to_be_bytes());
}

/// Tight's compact length: 7 bits per byte, up to 3 bytes.
fn push_compact_len(out: &mut Vec<u8>, len: usize) {
    let mut b = (len & 0x7f) as u8;
    if len > 0x7f {
        out.push(b | 0x80);
        b = ((len >> 7) & 0x7f) as u8;
        if len > 0x3fff {
            out.push(b | 0x80);
            out.push(((len >> 14) & 0xff) as u8);
        } else {
            out.push(b);
        }
    } else {
        out.push(b);
    }
}
