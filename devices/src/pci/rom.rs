//! A PCI expansion ROM: the image a function's ROM BAR decodes, such as a
//! NIC's iPXE boot ROM, which the BIOS copies below 1 MiB and runs.
//!
//! Reference: PCI Firmware Specification 3.0, 5.1 "PCI Expansion ROM
//! Contents": each image starts with 0x55 0xAA, its word at 0x18 points to
//! the "PCIR" data structure (vendor and device ID at +4 and +6, image
//! length in 512-byte units at +0x10, code type at +0x14: 0 x86, 3 EFI,
//! and at +0x15 the indicator, whose bit 7 marks the last image).
//!
//! The ROM is read-only: the guest's writes are ignored (logged once).

use crate::bus::BusDevice;
use crate::log_once::{LogOnce, Misuse};

/// The largest ROM a function here takes.
pub const MAX_ROM_SIZE: u64 = 16 << 20;
/// The smallest ROM BAR (bits 10:1 of the register are reserved).
const MIN_ROM_BAR: u64 = 2048;
const SIGNATURE: [u8; 2] = [0x55, 0xaa];
const PCIR_POINTER: usize = 0x18;
/// The byte iPXE's images keep their checksum in (after the 3-byte jump).
const CHECKSUM_BYTE: usize = 6;

/// Why a ROM file cannot be a PCI expansion ROM.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum RomError {
    /// Empty, or over [`MAX_ROM_SIZE`].
    #[error("a PCI expansion ROM is 1 byte to {MAX_ROM_SIZE} bytes; this one is {0} bytes")]
    Size(u64),
    /// Not a 0x55 0xAA image.
    #[error("this is not a PCI expansion ROM: it does not start with the bytes 55 AA")]
    Signature,
}

/// One function's expansion ROM.
pub struct OptionRom {
    label: String,
    /// The file's bytes, then zeros to the BAR's size.
    bytes: Vec<u8>,
    log: LogOnce,
}

impl std::fmt::Debug for OptionRom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OptionRom").field("label", &self.label).field("size", &self.bytes.len()).finish()
    }
}

impl OptionRom {
    /// The ROM `image` (a file's bytes) for the function `label`.
    pub fn new(label: &str, image: &[u8]) -> Result<Self, RomError> {
        let len = image.len() as u64;
        if image.is_empty() || len > MAX_ROM_SIZE {
            return Err(RomError::Size(len));
        }
        if image[..2.min(image.len())] != SIGNATURE {
            return Err(RomError::Signature);
        }
        let mut bytes = image.to_vec();
        bytes.resize(len.next_power_of_two().max(MIN_ROM_BAR) as usize, 0);
        Ok(Self { label: format!("{label} expansion ROM"), bytes, log: LogOnce::new() })
    }

    /// The ROM BAR's size: the image rounded up to a power of two.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Makes the first image's PCI data structure name `vendor`:`device`,
    /// keeping the image's byte sum (the checksum byte at offset 6, where
    /// iPXE keeps it, takes the difference). The BIOS runs an image only
    /// when these IDs are the function's, and one ROM serves a model's
    /// transitional and modern IDs. Returns whether it changed anything; a
    /// ROM without a valid first PCIR structure is left alone.
    pub fn patch_ids(&mut self, vendor: u16, device: u16) -> bool {
        let Some(pcir) = self.pcir(0) else { return false };
        let (mut delta, mut changed) = (0u8, false);
        for (at, id) in [(pcir + 4, vendor), (pcir + 6, device)] {
            for (i, new) in id.to_le_bytes().into_iter().enumerate() {
                let old = std::mem::replace(&mut self.bytes[at + i], new);
                delta = delta.wrapping_add(new).wrapping_sub(old);
                changed |= old != new;
            }
        }
        self.bytes[CHECKSUM_BYTE] = self.bytes[CHECKSUM_BYTE].wrapping_sub(delta);
        changed
    }

    /// The IDs in the first image's PCI data structure, if it has one.
    pub fn ids(&self) -> Option<(u16, u16)> {
        let p = self.pcir(0)?;
        let word = |at: usize| u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]);
        Some((word(p + 4), word(p + 6)))
    }

    /// The offset of the PCIR structure of the image at `image`, when its
    /// signatures are there and the structure lies inside the ROM.
    fn pcir(&self, image: usize) -> Option<usize> {
        let b = &self.bytes;
        if b.get(image..image + 2)? != SIGNATURE {
            return None;
        }
        let ptr = usize::from(u16::from_le_bytes([*b.get(image + PCIR_POINTER)?, *b.get(image + PCIR_POINTER + 1)?]));
        let p = image + ptr;
        (b.get(p..p + 0x18)?.starts_with(b"PCIR") && p > CHECKSUM_BYTE).then_some(p)
    }
}

impl BusDevice for OptionRom {
    fn debug_label(&self) -> String {
        self.label.clone()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The window maps exactly the BAR's size; past it reads float.
        data.fill(0xff);
        let Ok(start) = usize::try_from(offset) else { return };
        if let Some(src) = self.bytes.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if self.log.first(Misuse::BadValue) {
            tracing::warn!(
                target: "devices",
                "{}: the guest wrote {} bytes at {offset:#x} of a read-only ROM; ignored (logged once)",
                self.label,
                data.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-image ROM as iPXE builds them: x86 then EFI, each with a PCIR.
    fn rom(vendor: u16, device: u16) -> Vec<u8> {
        let mut r = vec![0u8; 3 * 512];
        for (start, blocks, kind, last) in [(0usize, 2u16, 0u8, false), (1024, 1, 3, true)] {
            r[start..start + 2].copy_from_slice(&SIGNATURE);
            r[start + 2] = blocks as u8;
            r[start + PCIR_POINTER..start + PCIR_POINTER + 2].copy_from_slice(&0x40u16.to_le_bytes());
            let p = start + 0x40;
            r[p..p + 4].copy_from_slice(b"PCIR");
            r[p + 4..p + 6].copy_from_slice(&vendor.to_le_bytes());
            r[p + 6..p + 8].copy_from_slice(&device.to_le_bytes());
            r[p + 0x10..p + 0x12].copy_from_slice(&blocks.to_le_bytes());
            r[p + 0x14] = kind;
            r[p + 0x15] = if last { 0x80 } else { 0 };
        }
        // The x86 image sums to zero, as the BIOS checks.
        let sum = r[..1024].iter().fold(0u8, |a, &b| a.wrapping_add(b));
        r[CHECKSUM_BYTE] = r[CHECKSUM_BYTE].wrapping_sub(sum);
        r
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    #[test]
    fn reads_are_the_image_then_zeros_and_writes_change_nothing() {
        let image = rom(0x1af4, 0x1041);
        let mut r = OptionRom::new("virtio-net", &image).unwrap();
        assert_eq!(r.size(), 2048, "1536 bytes round up to a power of two");
        let mut d = [0u8; 4];
        r.read(0, &mut d);
        assert_eq!(d[..2], SIGNATURE);
        r.read(1536, &mut d);
        assert_eq!(d, [0; 4], "zeros after the file");
        r.read(2046, &mut d);
        assert_eq!(d, [0, 0, 0xff, 0xff], "past the BAR floats");
        r.write(0, &[0; 4]);
        r.read(0, &mut d);
        assert_eq!(d[..2], SIGNATURE, "read-only");
        assert_eq!(OptionRom::new("x", &[0x55, 0xaa]).unwrap().size(), MIN_ROM_BAR);
    }

    #[test]
    fn patched_ids_keep_the_checksum() {
        let mut r = OptionRom::new("virtio-net", &rom(0x1af4, 0x1041)).unwrap();
        assert_eq!(r.ids(), Some((0x1af4, 0x1041)));
        assert!(r.patch_ids(0x1af4, 0x1000));
        assert_eq!(r.ids(), Some((0x1af4, 0x1000)));
        assert_eq!(sum(&r.bytes[..1024]), 0, "the x86 image still sums to zero");
        let mut same = OptionRom::new("e1000", &rom(0x8086, 0x100e)).unwrap();
        let before = same.bytes.clone();
        assert!(!same.patch_ids(0x8086, 0x100e));
        assert_eq!(same.bytes, before, "matching IDs change nothing");
    }

    #[test]
    fn bad_roms_are_refused_with_their_reason() {
        assert_eq!(OptionRom::new("x", &[]).unwrap_err(), RomError::Size(0));
        assert_eq!(OptionRom::new("x", b"MZ\x90\x00").unwrap_err(), RomError::Signature);
        assert_eq!(OptionRom::new("x", &[0x55]).unwrap_err(), RomError::Signature);
        let big = vec![0x55; (MAX_ROM_SIZE + 1) as usize];
        assert_eq!(OptionRom::new("x", &big).unwrap_err(), RomError::Size(MAX_ROM_SIZE + 1));
        // A signature without a PCIR structure: taken, but nothing to patch.
        let mut bare = OptionRom::new("x", &[0x55, 0xaa, 1, 0]).unwrap();
        assert_eq!(bare.ids(), None);
        assert!(!bare.patch_ids(1, 2));
        // A PCIR pointer past the end is not followed.
        let mut r = rom(1, 2);
        r[PCIR_POINTER..PCIR_POINTER + 2].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert_eq!(OptionRom::new("x", &r).unwrap().ids(), None);
    }
}
