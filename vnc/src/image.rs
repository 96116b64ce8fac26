//! Screendump writers: PNG and binary PPM (P6).

use std::io::{self, Write};
use std::path::Path;

use crate::Frame;

fn rgb_bytes(frame: &Frame) -> Vec<u8> {
    let n = frame.width as usize * frame.height as usize;
    let mut out = Vec::with_capacity(n * 3);
    for &p in frame.pixels.iter().take(n) {
        out.extend_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, p as u8]);
    }
    out.resize(n * 3, 0);
    out
}

/// Encodes the frame as an 8-bit RGB PNG.
pub fn encode_png(frame: &Frame) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, frame.width, frame.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(io::Error::other)?;
        w.write_image_data(&rgb_bytes(frame)).map_err(io::Error::other)?;
        w.finish().map_err(io::Error::other)?;
    }
    Ok(out)
}

/// Writes the frame as a PNG file.
pub fn write_png(frame: &Frame, path: &Path) -> io::Result<()> {
    std::fs::write(path, encode_png(frame)?)
}

/// Encodes the frame as a binary PPM (P6, maxval 255), QEMU's default screendump format.
pub fn encode_ppm(frame: &Frame) -> Vec<u8> {
    let mut out = format!("P6\n{} {}\n255\n", frame.width, frame.height).into_bytes();
    out.extend_from_slice(&rgb_bytes(frame));
    out
}

/// Writes the frame as a binary PPM file.
pub fn write_ppm(frame: &Frame, path: &Path) -> io::Result<()> {
    let mut f = io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&encode_ppm(frame))?;
    f.flush()
}
