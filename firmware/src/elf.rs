//! Loading an ELF executable (a vmlinux, a multiboot kernel) into guest memory
//! at the physical addresses of its `PT_LOAD` segments, as Firecracker loads a
//! vmlinux and GRUB a multiboot ELF.
//!
//! Only the ELF header and the program headers are parsed (goblin); section
//! headers and symbols are never read, so stripped and unstripped images load
//! alike. Every segment is checked (inside the file, inside RAM, above the
//! loader's own structures) before the first byte is written.

use goblin::container::Ctx;
use goblin::elf::header::{Header, ET_EXEC};
use goblin::elf::program_header::{ProgramHeader, PT_LOAD};
use goblin::elf::Elf;
use mmu::{GuestMemory, MemError};

pub use goblin::elf::header::{EM_386, EM_X86_64};

/// Errors loading an ELF image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// goblin could not parse the header or the program headers.
    #[error("not a valid ELF image: {0}")]
    Parse(String),
    /// Not an executable (a relocatable object or shared library).
    #[error("ELF e_type is {0}, not ET_EXEC (2): link the kernel as an executable")]
    NotExecutable(u16),
    /// Built for another CPU.
    #[error("ELF e_machine is {found}, expected {want} ({})", machine_name(*want))]
    WrongMachine { found: u16, want: u16 },
    /// Nothing to load.
    #[error("ELF image has no PT_LOAD segment")]
    NoLoadSegments,
    /// A segment's file bytes lie outside the image.
    #[error(
        "ELF segment {index}: file bytes {offset:#x}+{filesz:#x} lie outside the {file_len}-byte image (truncated?)"
    )]
    SegmentOutOfFile { index: usize, offset: u64, filesz: u64, file_len: usize },
    /// p_filesz is larger than p_memsz.
    #[error("ELF segment {index}: p_filesz {filesz:#x} is larger than p_memsz {memsz:#x}")]
    FileSizeAboveMemSize { index: usize, filesz: u64, memsz: u64 },
    /// A segment's physical range wraps or is not backed by RAM.
    #[error("ELF segment {index} at physical {paddr:#x}+{memsz:#x} is outside guest RAM; give the guest more memory or check p_paddr")]
    SegmentOutsideRam { index: usize, paddr: u64, memsz: u64 },
    /// A segment would overwrite the loader's own structures.
    #[error("ELF segment {index} at physical {paddr:#x} is below {min:#x}, where the loader keeps its tables")]
    SegmentTooLow { index: usize, paddr: u64, min: u64 },
    /// The entry point lies in no segment.
    #[error("ELF entry point {entry:#x} lies in no PT_LOAD segment")]
    EntryOutsideSegments { entry: u64 },
    /// Writing guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemError),
}

fn machine_name(m: u16) -> &'static str {
    match m {
        EM_X86_64 => "x86-64",
        EM_386 => "i386",
        _ => "unknown",
    }
}

/// One loaded segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfSegment {
    pub paddr: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    /// `PF_X`: the segment holds code.
    pub executable: bool,
    /// `PF_W`.
    pub writable: bool,
}

/// What [`load_elf`] loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedElf {
    /// The entry point as a physical address.
    pub entry: u64,
    /// `e_entry` as the file states it.
    pub e_entry: u64,
    /// Lowest physical address loaded.
    pub start: u64,
    /// End (exclusive) of the highest segment, bss included.
    pub end: u64,
    pub segments: Vec<ElfSegment>,
    /// True for ELFCLASS64.
    pub is_64: bool,
}

/// Whether `image` starts with the ELF magic.
pub fn is_elf(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

/// The ELF header and its `PT_LOAD` segments, validated against the image.
fn parse(image: &[u8], machine: u16) -> Result<(Header, Vec<ProgramHeader>), ElfError> {
    let header = Elf::parse_header(image).map_err(|e| ElfError::Parse(e.to_string()))?;
    if header.e_type != ET_EXEC {
        return Err(ElfError::NotExecutable(header.e_type));
    }
    if header.e_machine != machine {
        return Err(ElfError::WrongMachine { found: header.e_machine, want: machine });
    }
    let container = header.container().map_err(|e| ElfError::Parse(e.to_string()))?;
    let endian = header.endianness().map_err(|e| ElfError::Parse(e.to_string()))?;
    let phoff = usize::try_from(header.e_phoff).map_err(|_| ElfError::Parse("e_phoff too large".into()))?;
    let phdrs = ProgramHeader::parse(image, phoff, usize::from(header.e_phnum), Ctx::new(container, endian))
        .map_err(|e| ElfError::Parse(format!("program headers: {e}")))?;
    let loads: Vec<ProgramHeader> = phdrs.into_iter().filter(|p| p.p_type == PT_LOAD && p.p_memsz > 0).collect();
    if loads.is_empty() {
        return Err(ElfError::NoLoadSegments);
    }
    Ok((header, loads))
}

/// The address and size of section `name` (as linked, a virtual address
/// for a vmlinux), from the section headers, if the image has them.
pub fn section(image: &[u8], name: &str) -> Option<(u64, u64)> {
    use goblin::elf::section_header::SectionHeader;
    let header = Elf::parse_header(image).ok()?;
    let ctx = Ctx::new(header.container().ok()?, header.endianness().ok()?);
    let shoff = usize::try_from(header.e_shoff).ok()?;
    if shoff == 0 || header.e_shnum == 0 {
        return None;
    }
    let sections = SectionHeader::parse(image, shoff, usize::from(header.e_shnum), ctx).ok()?;
    let strtab = sections.get(usize::from(header.e_shstrndx))?;
    let names = image.get(usize::try_from(strtab.sh_offset).ok()?..)?;
    sections.iter().find_map(|sh| {
        let at = names.get(sh.sh_name..)?;
        let len = at.iter().position(|&b| b == 0)?;
        (&at[..len] == name.as_bytes()).then_some((sh.sh_addr, sh.sh_size))
    })
}

/// What an ELF image loads, checked against the image but not yet against
/// any memory: its segments (bss included in `memsz`), the bytes each takes
/// from the file, and the entry point as a physical address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfImage<'a> {
    /// The entry point as a physical address (see [`load_elf`]).
    pub entry: u64,
    /// `e_entry` as the file states it.
    pub e_entry: u64,
    pub segments: Vec<ElfSegment>,
    /// The file bytes of each segment, in the order of `segments`.
    pub data: Vec<&'a [u8]>,
    /// True for ELFCLASS64.
    pub is_64: bool,
}

/// Parses `image` (for CPU `machine`: [`EM_X86_64`] or [`EM_386`]): its
/// `PT_LOAD` segments, each checked to lie in the file with `p_filesz <=
/// p_memsz` and not to wrap the address space, and the entry point
/// converted to physical: `e_entry` in a segment's virtual range becomes
/// `e_entry - (p_vaddr - p_paddr)`; an `e_entry` already in a segment's
/// physical range (a vmlinux enters at `phys_startup_64`) stays.
pub fn parse_elf(image: &[u8], machine: u16) -> Result<ElfImage<'_>, ElfError> {
    let (header, loads) = parse(image, machine)?;
    let mut segments = Vec::with_capacity(loads.len());
    let mut data = Vec::with_capacity(loads.len());
    for (index, p) in loads.iter().enumerate() {
        let (offset, filesz, memsz, paddr) = (p.p_offset, p.p_filesz, p.p_memsz, p.p_paddr);
        if filesz > memsz {
            return Err(ElfError::FileSizeAboveMemSize { index, filesz, memsz });
        }
        let in_file = offset.checked_add(filesz).is_some_and(|end| end <= image.len() as u64);
        if !in_file {
            return Err(ElfError::SegmentOutOfFile { index, offset, filesz, file_len: image.len() });
        }
        if paddr.checked_add(memsz).is_none() {
            return Err(ElfError::SegmentOutsideRam { index, paddr, memsz });
        }
        // Both fit in usize: they end inside `image`.
        data.push(&image[offset as usize..(offset + filesz) as usize]);
        segments.push(ElfSegment {
            paddr,
            vaddr: p.p_vaddr,
            filesz,
            memsz,
            executable: p.is_executable(),
            writable: p.is_write(),
        });
    }
    let e_entry = header.e_entry;
    let contains = |base: u64, len: u64, addr: u64| addr >= base && addr - base < len;
    let entry = segments
        .iter()
        .find(|s| contains(s.vaddr, s.memsz, e_entry))
        .map(|s| e_entry - s.vaddr + s.paddr)
        .or_else(|| segments.iter().any(|s| contains(s.paddr, s.memsz, e_entry)).then_some(e_entry))
        .ok_or(ElfError::EntryOutsideSegments { entry: e_entry })?;
    Ok(ElfImage { entry, e_entry, segments, data, is_64: header.e_ident[4] == 2 })
}

/// Load the `PT_LOAD` segments of `image` (for CPU `machine`: [`EM_X86_64`] or
/// [`EM_386`]) at their physical addresses, each above `min_addr`, zeroing the
/// bss. The entry point is converted to physical as [`parse_elf`] says.
pub fn load_elf(mem: &GuestMemory, image: &[u8], machine: u16, min_addr: u64) -> Result<LoadedElf, ElfError> {
    let elf = parse_elf(image, machine)?;
    for (index, s) in elf.segments.iter().enumerate() {
        if s.paddr < min_addr {
            return Err(ElfError::SegmentTooLow { index, paddr: s.paddr, min: min_addr });
        }
        if !mem.is_backed(s.paddr, s.memsz) {
            return Err(ElfError::SegmentOutsideRam { index, paddr: s.paddr, memsz: s.memsz });
        }
    }
    for (s, bytes) in elf.segments.iter().zip(&elf.data) {
        // Checked above and in parse_elf: filesz <= memsz, and paddr +
        // memsz is backed by RAM.
        mem.load(s.paddr, bytes)?;
        mem.fill(s.paddr + s.filesz, s.memsz - s.filesz, 0)?;
    }
    let start = elf.segments.iter().map(|s| s.paddr).min().unwrap_or(0);
    let end = elf.segments.iter().map(|s| s.paddr + s.memsz).max().unwrap_or(0);
    Ok(LoadedElf { entry: elf.entry, e_entry: elf.e_entry, start, end, segments: elf.segments, is_64: elf.is_64 })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A segment for [`build_elf`].
    pub(crate) struct TestSeg {
        pub vaddr: u64,
        pub paddr: u64,
        pub data: Vec<u8>,
        pub memsz: u64,
    }

    /// A minimal executable ELF (header, program headers, segment bytes).
    pub(crate) fn build_elf(is_64: bool, machine: u16, entry: u64, segs: &[TestSeg]) -> Vec<u8> {
        let (ehsize, phentsize) = if is_64 { (64usize, 56usize) } else { (52, 32) };
        let mut data_off = ehsize + phentsize * segs.len();
        let mut out = vec![0u8; data_off];
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = if is_64 { 2 } else { 1 }; // class
        out[5] = 1; // little-endian
        out[6] = 1; // version
        let put16 = |b: &mut Vec<u8>, at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        let put32 = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let put64 = |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put16(&mut out, 16, ET_EXEC);
        put16(&mut out, 18, machine);
        put32(&mut out, 20, 1);
        let mut offsets = Vec::new();
        for s in segs {
            offsets.push(data_off);
            data_off += s.data.len();
        }
        if is_64 {
            put64(&mut out, 24, entry);
            put64(&mut out, 32, ehsize as u64);
            put16(&mut out, 52, ehsize as u16);
            put16(&mut out, 54, phentsize as u16);
            put16(&mut out, 56, segs.len() as u16);
            put16(&mut out, 58, 64);
        } else {
            put32(&mut out, 24, entry as u32);
            put32(&mut out, 28, ehsize as u32);
            put16(&mut out, 40, ehsize as u16);
            put16(&mut out, 42, phentsize as u16);
            put16(&mut out, 44, segs.len() as u16);
            put16(&mut out, 46, 40);
        }
        for (i, s) in segs.iter().enumerate() {
            let ph = ehsize + i * phentsize;
            put32(&mut out, ph, PT_LOAD);
            if is_64 {
                put32(&mut out, ph + 4, 7);
                put64(&mut out, ph + 8, offsets[i] as u64);
                put64(&mut out, ph + 16, s.vaddr);
                put64(&mut out, ph + 24, s.paddr);
                put64(&mut out, ph + 32, s.data.len() as u64);
                put64(&mut out, ph + 40, s.memsz);
                put64(&mut out, ph + 48, 0x1000);
            } else {
                put32(&mut out, ph + 4, offsets[i] as u32);
                put32(&mut out, ph + 8, s.vaddr as u32);
                put32(&mut out, ph + 12, s.paddr as u32);
                put32(&mut out, ph + 16, s.data.len() as u32);
                put32(&mut out, ph + 20, s.memsz as u32);
                put32(&mut out, ph + 24, 7);
                put32(&mut out, ph + 28, 0x1000);
            }
        }
        for s in segs {
            out.extend_from_slice(&s.data);
        }
        out
    }

    const MIB: u64 = 1 << 20;

    fn higher_half_kernel() -> Vec<u8> {
        build_elf(
            true,
            EM_X86_64,
            0xffff_ffff_8100_0010,
            &[
                TestSeg { vaddr: 0xffff_ffff_8100_0000, paddr: 0x100_0000, data: vec![0x90; 0x100], memsz: 0x100 },
                TestSeg { vaddr: 0xffff_ffff_8120_0000, paddr: 0x120_0000, data: vec![0xaa; 16], memsz: 0x3000 },
            ],
        )
    }

    #[test]
    fn loads_segments_and_converts_a_virtual_entry() {
        let mem = GuestMemory::new(64 * MIB).unwrap();
        mem.fill(0x120_0000, 0x3000, 0xff).unwrap();
        let l = load_elf(&mem, &higher_half_kernel(), EM_X86_64, MIB).unwrap();
        assert_eq!(l.entry, 0x100_0010);
        assert_eq!((l.start, l.end), (0x100_0000, 0x120_3000));
        assert!(l.is_64);
        assert_eq!(mem.read_u8(0x100_00ff).unwrap(), 0x90);
        assert_eq!(mem.read_u8(0x120_000f).unwrap(), 0xaa);
        // The bss was zeroed.
        assert_eq!(mem.read_u64(0x120_0010).unwrap(), 0);
        assert_eq!(mem.read_u8(0x120_2fff).unwrap(), 0);
    }

    #[test]
    fn a_physical_entry_stays() {
        let mem = GuestMemory::new(64 * MIB).unwrap();
        let image = build_elf(
            true,
            EM_X86_64,
            0x100_0000,
            &[TestSeg { vaddr: 0xffff_ffff_8100_0000, paddr: 0x100_0000, data: vec![0xf4], memsz: 1 }],
        );
        assert_eq!(load_elf(&mem, &image, EM_X86_64, MIB).unwrap().entry, 0x100_0000);
    }

    #[test]
    fn bad_images_are_refused_before_anything_is_written() {
        let mem = GuestMemory::new(17 * MIB).unwrap();
        let good = higher_half_kernel();
        // 17 MiB of RAM holds the first segment (at 16 MiB) but not the second.
        assert!(matches!(
            load_elf(&mem, &good, EM_X86_64, MIB),
            Err(ElfError::SegmentOutsideRam { index: 1, paddr: 0x120_0000, .. })
        ));
        assert_eq!(mem.read_u8(0x100_0000).unwrap(), 0, "nothing written");
        let big = GuestMemory::new(64 * MIB).unwrap();
        assert!(matches!(load_elf(&big, &good, EM_386, MIB), Err(ElfError::WrongMachine { found: 62, want: 3 })));
        assert!(matches!(
            load_elf(&big, &good[..good.len() - 1], EM_X86_64, MIB),
            Err(ElfError::SegmentOutOfFile { .. })
        ));
        assert!(matches!(load_elf(&big, &good[..40], EM_X86_64, MIB), Err(ElfError::Parse(_))));
        assert!(matches!(load_elf(&big, &good, EM_X86_64, 0x110_0000), Err(ElfError::SegmentTooLow { .. })));
        let stray_entry =
            build_elf(true, EM_X86_64, 0x5000, &[TestSeg { vaddr: MIB, paddr: MIB, data: vec![1], memsz: 1 }]);
        assert_eq!(load_elf(&big, &stray_entry, EM_X86_64, MIB), Err(ElfError::EntryOutsideSegments { entry: 0x5000 }));
        let mut lying =
            build_elf(true, EM_X86_64, MIB, &[TestSeg { vaddr: MIB, paddr: MIB, data: vec![1; 8], memsz: 8 }]);
        lying[64 + 40..64 + 48].copy_from_slice(&4u64.to_le_bytes()); // p_memsz < p_filesz
        assert!(matches!(load_elf(&big, &lying, EM_X86_64, MIB), Err(ElfError::FileSizeAboveMemSize { .. })));
        let none = build_elf(true, EM_X86_64, MIB, &[]);
        assert_eq!(load_elf(&big, &none, EM_X86_64, MIB), Err(ElfError::NoLoadSegments));
    }
}
