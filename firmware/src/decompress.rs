//! Host-side decompression of a bzImage's payload (the compressed vmlinux).
//!
//! How Linux frames the payload (arch/x86/boot/compressed/Makefile and
//! scripts/Makefile.lib): the compressor's output, then the uncompressed size as
//! a 32-bit little-endian number (`size_append`). For gzip that number is the
//! gzip member's own ISIZE trailer; every other format gets it appended after
//! its stream. So the last four bytes of the payload are always the size of
//! the vmlinux (plus the relocation table appended to it on relocatable
//! kernels), which bounds what we decompress.
//!
//! | format | magic | framing |
//! | --- | --- | --- |
//! | gzip | `1f 8b` | one gzip member, `gzip -n -9` |
//! | xz | `fd 37 7a 58 5a 00` | one .xz stream, x86 BCJ + LZMA2, CRC32 check (`scripts/xz_wrap.sh`), then the size |
//! | lzma | `5d 00 00` | .lzma ("alone") header + stream, then the size |
//! | lz4 | `02 21 4c 18` | the *legacy* frame (`lz4 -l`): magic, then blocks of `u32 compressed size` + LZ4 block, each at most 8 MiB uncompressed, then the size |
//! | zstd | `28 b5 2f fd` | one frame (`zstd -22 --ultra`, windows up to 128 MiB), then the size |
//! | none | `7f 45 4c 46` | the ELF itself |
//!
//! bzip2 and LZO are recognised but not decoded here: such kernels boot on the
//! classic path, where the kernel decompresses itself.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

/// The largest vmlinux the host-side decompressor produces.
pub const MAX_KERNEL_SIZE: u64 = 512 << 20;
/// Magic of the legacy LZ4 frame (`lz4 -l`), little-endian.
pub const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// The most one legacy LZ4 block decompresses to.
const LZ4_LEGACY_BLOCK_SIZE: usize = 8 << 20;
/// Memory limit for the LZMA/XZ dictionary (the kernel uses 32 MiB; xz -9 64 MiB).
const LZMA_MEM_LIMIT_KIB: u32 = 256 * 1024;

/// A compression format Linux can use for its x86 kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// CONFIG_KERNEL_UNCOMPRESSED: the payload is the ELF.
    Uncompressed,
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    /// LZ4 in the legacy frame format.
    Lz4,
    Zstd,
}

impl Compression {
    /// The format of `data`, from its magic number.
    pub fn detect(data: &[u8]) -> Option<Compression> {
        let starts = |m: &[u8]| data.starts_with(m);
        Some(if starts(&[0x7f, b'E', b'L', b'F']) {
            Compression::Uncompressed
        } else if starts(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if starts(b"BZh") {
            Compression::Bzip2
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if starts(&[0x5d, 0, 0]) {
            Compression::Lzma
        } else if starts(&[0x89, b'L', b'Z', b'O']) {
            Compression::Lzo
        } else if starts(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
            Compression::Lz4
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            return None;
        })
    }

    /// The format's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Uncompressed => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Xz => "xz",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors decompressing a kernel payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    /// Too short for any stream plus the 4-byte size trailer.
    #[error("kernel payload is {0} bytes, too short for compressed data and its 4-byte size trailer")]
    TooShort(usize),
    /// The magic matches no format.
    #[error("kernel payload starts with {0:02x?}, the magic of no compression format Linux uses")]
    UnknownFormat(Vec<u8>),
    /// A format this decompressor does not decode.
    #[error("kernel payload is {0}-compressed, which the host-side decompressor does not decode; boot it on the classic path, where the kernel decompresses itself")]
    Unsupported(Compression),
    /// The size trailer asks for more than [`MAX_KERNEL_SIZE`].
    #[error("the payload's size trailer says the kernel is {size} bytes, above the {max}-byte limit")]
    TooLarge { size: u64, max: u64 },
    /// The decoder failed.
    #[error("{format} decompression of the kernel payload failed: {reason}")]
    Corrupt { format: Compression, reason: String },
    /// The output size does not match the trailer.
    #[error("{format} payload decompressed to {got} bytes, but its size trailer says {want}")]
    SizeMismatch { format: Compression, got: u64, want: u64 },
}

fn corrupt(format: Compression, reason: impl fmt::Display) -> DecompressError {
    DecompressError::Corrupt { format, reason: reason.to_string() }
}

/// Decompress a bzImage payload (its bytes at `payload_offset`, `payload_length`
/// long). Returns the format and the vmlinux ELF (with anything the kernel
/// build appended to it, such as the relocation table).
pub fn decompress_payload(payload: &[u8]) -> Result<(Compression, Cow<'_, [u8]>), DecompressError> {
    let format = Compression::detect(payload)
        .ok_or_else(|| DecompressError::UnknownFormat(payload.iter().take(6).copied().collect()))?;
    match format {
        Compression::Uncompressed => return Ok((format, Cow::Borrowed(payload))),
        Compression::Bzip2 | Compression::Lzo => return Err(DecompressError::Unsupported(format)),
        _ => {}
    }
    let body_len = payload.len().checked_sub(4).filter(|&n| n > 0).ok_or(DecompressError::TooShort(payload.len()))?;
    let (body, trailer) = payload.split_at(body_len);
    let want = u64::from(u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]));
    if want > MAX_KERNEL_SIZE {
        return Err(DecompressError::TooLarge { size: want, max: MAX_KERNEL_SIZE });
    }
    let out = match format {
        // The gzip member ends with its own ISIZE: decode the whole payload.
        Compression::Gzip => read_exactly(format, flate2::read::GzDecoder::new(payload), want)?,
        Compression::Xz => {
            let r = lzma_rust2::XzReader::new_mem_limit(body, false, LZMA_MEM_LIMIT_KIB);
            read_exactly(format, r, want)?
        }
        Compression::Lzma => {
            let r = lzma_rust2::LzmaReader::new_mem_limit(body, LZMA_MEM_LIMIT_KIB, None)
                .map_err(|e| corrupt(format, e))?;
            read_exactly(format, r, want)?
        }
        Compression::Zstd => {
            let r = ruzstd::decoding::StreamingDecoder::new_with_max_window_size(body, MAX_KERNEL_SIZE)
                .map_err(|e| corrupt(format, e))?;
            read_exactly(format, r, want)?
        }
        Compression::Lz4 => lz4_legacy(body, want)?,
        Compression::Bzip2 | Compression::Lzo | Compression::Uncompressed => {
            return Err(DecompressError::Unsupported(format));
        }
    };
    Ok((format, Cow::Owned(out)))
}

/// Read `r` to its end, refusing more than `want` bytes and checking that it
/// gave exactly `want`.
fn read_exactly(format: Compression, r: impl Read, want: u64) -> Result<Vec<u8>, DecompressError> {
    // `want` is at most MAX_KERNEL_SIZE, so it fits a usize on 64-bit hosts;
    // on others the capacity is only a hint.
    let mut out = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    // One byte more than wanted, so that too much output is noticed, and so
    // that the decoder reaches (and checks) the end of its stream.
    r.take(want + 1).read_to_end(&mut out).map_err(|e| corrupt(format, e))?;
    let got = out.len() as u64;
    if got != want {
        return Err(DecompressError::SizeMismatch { format, got, want });
    }
    Ok(out)
}

/// Decode the legacy LZ4 frame: magic, then `u32` block sizes each followed by
/// an LZ4 block. A repeated magic starts another concatenated stream.
fn lz4_legacy(body: &[u8], want: u64) -> Result<Vec<u8>, DecompressError> {
    let format = Compression::Lz4;
    let want = usize::try_from(want).map_err(|_| corrupt(format, "size does not fit this host"))?;
    let mut out = vec![0u8; want];
    let mut written = 0usize;
    let mut pos = 4usize; // after the magic
    while pos < body.len() {
        let header = body
            .get(pos..pos + 4)
            .ok_or_else(|| corrupt(format, format!("block header at byte {pos} is truncated")))?;
        let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        pos += 4;
        if size == LZ4_LEGACY_MAGIC {
            continue;
        }
        let end = usize::try_from(size).ok().and_then(|s| pos.checked_add(s)).filter(|&e| e <= body.len()).ok_or_else(
            || corrupt(format, format!("block at byte {pos} claims {size} bytes, past the payload's end")),
        )?;
        let block = &body[pos..end];
        let room_end = written.saturating_add(LZ4_LEGACY_BLOCK_SIZE).min(want);
        let n = match lz4_flex::block::decompress_into(block, &mut out[written..room_end]) {
            Ok(n) => n,
            // Out of room because the trailer is too small: say by how much.
            Err(_) if room_end == want => {
                let mut scratch = vec![0u8; LZ4_LEGACY_BLOCK_SIZE];
                let n = lz4_flex::block::decompress_into(block, &mut scratch)
                    .map_err(|e| corrupt(format, format!("block at byte {pos}: {e}")))?;
                let got = written as u64 + n as u64;
                return Err(DecompressError::SizeMismatch { format, got, want: want as u64 });
            }
            Err(e) => return Err(corrupt(format, format!("block at byte {pos}: {e}"))),
        };
        written += n;
        pos = end;
    }
    if written != want {
        return Err(DecompressError::SizeMismatch { format, got: written as u64, want: want as u64 });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Something that compresses but is not trivial: x86-ish bytes with calls,
    /// so the BCJ filter has work to do.
    pub(crate) fn sample(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut x: u32 = 0x1234_5678;
        while v.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            if x.is_multiple_of(7) {
                v.push(0xe8); // call rel32
                v.extend_from_slice(&(x >> 8).to_le_bytes());
            } else {
                v.extend_from_slice(b"mov rax, rbx; ");
            }
        }
        v.truncate(len);
        v
    }

    fn with_size(mut stream: Vec<u8>, len: usize) -> Vec<u8> {
        stream.extend_from_slice(&(len as u32).to_le_bytes());
        stream
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn xz_bcj(data: &[u8]) -> Vec<u8> {
        let mut opts = lzma_rust2::XzOptions::with_preset(1);
        opts.set_check_sum_type(lzma_rust2::CheckType::Crc32);
        opts.prepend_pre_filter(lzma_rust2::FilterType::BcjX86, 0);
        let mut w = lzma_rust2::XzWriter::new(Vec::new(), opts).unwrap();
        w.write_all(data).unwrap();
        with_size(w.finish().unwrap(), data.len())
    }

    pub(crate) fn lz4_legacy_frame(data: &[u8], block: usize) -> Vec<u8> {
        let mut v = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(block) {
            let c = lz4_flex::block::compress(chunk);
            v.extend_from_slice(&(c.len() as u32).to_le_bytes());
            v.extend_from_slice(&c);
        }
        with_size(v, data.len())
    }

    pub(crate) fn zstd(data: &[u8]) -> Vec<u8> {
        with_size(ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest), data.len())
    }

    fn lzma_alone(data: &[u8]) -> Vec<u8> {
        let opts = lzma_rust2::LzmaOptions::with_preset(1);
        let mut w = lzma_rust2::LzmaWriter::new_use_header(Vec::new(), &opts, None).unwrap();
        w.write_all(data).unwrap();
        with_size(w.finish().unwrap(), data.len())
    }

    #[test]
    fn every_supported_format_round_trips() {
        let data = sample(300_000);
        let cases = [
            (Compression::Gzip, gzip(&data)),
            (Compression::Xz, xz_bcj(&data)),
            (Compression::Lz4, lz4_legacy_frame(&data, 64 * 1024)),
            (Compression::Zstd, zstd(&data)),
            (Compression::Lzma, lzma_alone(&data)),
        ];
        for (format, payload) in cases {
            assert_eq!(Compression::detect(&payload), Some(format));
            let (f, out) = decompress_payload(&payload).unwrap_or_else(|e| panic!("{format}: {e}"));
            assert_eq!(f, format);
            assert!(out[..] == data[..], "{format} output differs");
        }
    }

    #[test]
    fn lz4_concatenated_streams_and_full_size_blocks() {
        let data = sample(LZ4_LEGACY_BLOCK_SIZE + 1000);
        let mut payload = lz4_legacy_frame(&data[..LZ4_LEGACY_BLOCK_SIZE], LZ4_LEGACY_BLOCK_SIZE);
        payload.truncate(payload.len() - 4);
        let second = lz4_legacy_frame(&data[LZ4_LEGACY_BLOCK_SIZE..], LZ4_LEGACY_BLOCK_SIZE);
        payload.extend_from_slice(&second[..second.len() - 4]);
        payload.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let (_, out) = decompress_payload(&payload).unwrap();
        assert!(out[..] == data[..]);
    }

    #[test]
    fn uncompressed_elf_is_borrowed() {
        let elf = b"\x7fELF and the rest";
        let (f, out) = decompress_payload(elf).unwrap();
        assert_eq!(f, Compression::Uncompressed);
        assert!(matches!(out, Cow::Borrowed(_)));
    }

    #[test]
    fn wrong_size_trailer_is_reported() {
        let data = sample(10_000);
        for mut payload in [xz_bcj(&data), lz4_legacy_frame(&data, 4096), zstd(&data)] {
            let n = payload.len();
            payload[n - 4..].copy_from_slice(&9_000u32.to_le_bytes());
            let err = decompress_payload(&payload).unwrap_err();
            assert!(matches!(err, DecompressError::SizeMismatch { want: 9_000, got, .. } if got > 9_000), "{err}");
            payload[n - 4..].copy_from_slice(&11_000u32.to_le_bytes());
            let err = decompress_payload(&payload).unwrap_err();
            assert!(matches!(err, DecompressError::SizeMismatch { want: 11_000, got: 10_000, .. }), "{err}");
        }
    }

    #[test]
    fn corrupt_and_truncated_streams_fail_cleanly() {
        let data = sample(50_000);
        for payload in [gzip(&data), xz_bcj(&data), lz4_legacy_frame(&data, 8192), zstd(&data)] {
            let format = Compression::detect(&payload).unwrap();
            // Cut in the middle, keeping the trailer.
            let mut cut = payload[..payload.len() / 2].to_vec();
            cut.extend_from_slice(&payload[payload.len() - 4..]);
            assert!(decompress_payload(&cut).is_err(), "{format}: truncated stream accepted");
            // Flip bytes in the middle.
            let mut bad = payload.clone();
            let mid = bad.len() / 2;
            for b in &mut bad[mid..mid + 16] {
                *b ^= 0x5a;
            }
            assert!(decompress_payload(&bad).is_err(), "{format}: corrupt stream accepted");
        }
    }

    #[test]
    fn unknown_unsupported_and_oversized() {
        assert!(matches!(decompress_payload(b"MZ\x90\0\x03\0\0\0"), Err(DecompressError::UnknownFormat(_))));
        assert_eq!(
            decompress_payload(b"BZh91AY&SY\0\0\0\0").unwrap_err(),
            DecompressError::Unsupported(Compression::Bzip2)
        );
        assert_eq!(decompress_payload(&[0x1f, 0x8b, 8]).unwrap_err(), DecompressError::TooShort(3));
        let mut huge = zstd(b"x");
        let n = huge.len();
        huge[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decompress_payload(&huge), Err(DecompressError::TooLarge { .. })));
        // An LZ4 block that claims more bytes than the payload holds.
        let mut lz = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        lz.extend_from_slice(&1000u32.to_le_bytes());
        lz.extend_from_slice(&[0; 10]);
        lz.extend_from_slice(&5u32.to_le_bytes());
        let err = decompress_payload(&lz).unwrap_err();
        assert!(err.to_string().contains("past the payload's end"), "{err}");
    }
}
