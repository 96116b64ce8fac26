//! Multiboot v1 (the Multiboot Specification 0.6.96): boot a kernel that
//! carries a multiboot header, as GRUB would, in one of two ways:
//!
//! - directly ([`load_multiboot`]): the host loads the kernel and modules
//!   into guest RAM, writes the information structure and its own GDT, IDT
//!   and stack, and starts the CPU at the entry point;
//! - through the BIOS, as QEMU's `-kernel` does ([`bios_multiboot`]): the
//!   host lays the kernel, the module list, the strings and the modules out
//!   in one image for QEMU's multiboot option ROM, which SeaBIOS runs; the
//!   ROM fills the memory map in from the BIOS's E820 calls and enters the
//!   kernel, which finds the BIOS's state (its interrupt vector table, the
//!   PIC and PIT as it left them).
//!
//! Both read the header and lay the kernel out the same way
//! ([`KernelLayout`]).
//!
//! The header (32-bit aligned, in the first 8192 bytes of the image):
//!
//! ```text
//!   0  magic     0x1badb002
//!   4  flags     bit 0 page-align modules, bit 1 memory info, bit 2 video mode,
//!                bit 16 the a.out kludge fields below are valid
//!   8  checksum  magic + flags + checksum == 0 (mod 2^32)
//!  12  header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr   (bit 16)
//! ```
//!
//! The kernel is loaded from its ELF32 program headers, or from the a.out
//! kludge addresses when flag 16 is set (they take precedence, as the spec
//! says), anywhere in guest RAM, as QEMU's multiboot loader does: below 1 MiB
//! too (a kernel linked at 0x8000, or one whose first segment holds the ELF
//! headers in the page below 1 MiB). The loader then places what it writes
//! itself where no segment is: the information structure, the memory map, the
//! module list, the strings, its GDT and IDT and a stack go in one block, the
//! lowest free one from [`MULTIBOOT_INFO_ADDR`] (from 0x1000 when nothing is
//! free above), and the modules page-aligned after the kernel's end. A segment
//! over a range the caller reserved (the ACPI and MP tables) is an error that
//! names both ranges. The CPU starts in 32-bit protected mode, paging off, flat
//! segments, EAX = 0x2badb002 and EBX = the physical address of the multiboot
//! information:
//!
//! ```text
//!   0  flags        4 mem_lower   8 mem_upper   12 boot_device   16 cmdline
//!  20  mods_count  24 mods_addr  28..44 syms    44 mmap_length   48 mmap_addr
//!  52  drives_length 56 drives_addr 60 config_table 64 boot_loader_name
//!  68  apm_table   72..88 vbe    88..116 framebuffer
//! ```

use mmu::{GuestMemory, MemError, PAGE_SIZE};

use crate::boot::{write_boot_gdt_at, BootCpuState, BootMode, BOOT_GDT_SIZE, BOOT_IDT_SIZE};
use crate::e820::{e820_for_memory, lower_upper_kib, E820Entry, E820Error, E820Type, EBDA_START, HIMEM_START};
use crate::elf::{is_elf, parse_elf, ElfError, EM_386};

/// Magic in the kernel's multiboot header.
pub const MULTIBOOT_HEADER_MAGIC: u32 = 0x1bad_b002;
/// Magic the loader leaves in EAX.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie within this many bytes from the image start.
pub const MULTIBOOT_SEARCH: usize = 8192;
/// Where the loader's block (information structure first) goes when no
/// segment is in the way: the lowest address it tries.
pub const MULTIBOOT_INFO_ADDR: u64 = 0x6000;
/// The lowest address of the block when nothing is free from
/// [`MULTIBOOT_INFO_ADDR`] on: page 0 (the real-mode IVT and BDA) stays clear.
const BLOCK_LOWEST: u64 = 0x1000;
/// Bytes reserved for the information structure at the start of the block.
const INFO_AREA: u64 = 0x80;
/// Size of the information structure (up to the framebuffer fields).
const INFO_SIZE: usize = 116;
/// Bytes of one memory map entry including its `size` field.
const MMAP_ENTRY_SIZE: u64 = 24;
/// Bytes of one module descriptor.
const MOD_ENTRY_SIZE: u64 = 16;
/// The most bytes the command line and the module strings may take together.
pub const STRINGS_MAX: u64 = 0x1_0000;
/// Bytes of stack at the end of the block (ESP points past them).
const STACK_SIZE: u64 = 0x1000;
/// The loader name handed to the kernel.
const LOADER_NAME: &str = "ferrovm";

/// Header flag: align modules on 4 KiB boundaries.
pub const MB_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: pass memory information.
pub const MB_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: pass video mode information.
pub const MB_VIDEO_MODE: u32 = 1 << 2;
/// Header flag: the a.out kludge address fields are valid.
pub const MB_AOUT_KLUDGE: u32 = 1 << 16;
/// Requirement bits (0..15) this loader understands.
const MB_KNOWN_REQUIREMENTS: u32 = MB_PAGE_ALIGN | MB_MEMORY_INFO | MB_VIDEO_MODE;

/// Information flags: which fields are valid.
pub const INFO_MEMORY: u32 = 1 << 0;
pub const INFO_CMDLINE: u32 = 1 << 2;
pub const INFO_MODS: u32 = 1 << 3;
pub const INFO_MEM_MAP: u32 = 1 << 6;
pub const INFO_BOOT_LOADER_NAME: u32 = 1 << 9;

/// Errors loading a multiboot kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultibootError {
    /// No header found.
    #[error("no multiboot header (magic 0x1badb002 with a valid checksum) in the first 8192 bytes of the kernel")]
    NoHeader,
    /// The magic was found but its checksum is wrong.
    #[error("multiboot header at offset {offset:#x} has a bad checksum (magic + flags + checksum must be 0)")]
    BadChecksum { offset: usize },
    /// A requirement bit this loader does not know.
    #[error("multiboot header flags {flags:#x} require features this loader lacks (bits {unknown:#x} of 0..15)")]
    UnsupportedFlags { flags: u32, unknown: u32 },
    /// The a.out kludge fields are inconsistent.
    #[error("multiboot a.out kludge: {0}")]
    BadAoutKludge(String),
    /// Neither an ELF nor the a.out kludge.
    #[error(
        "kernel is not an ELF and its multiboot header lacks the a.out kludge (flag 16): cannot tell where to load it"
    )]
    NotElf,
    /// Loading the ELF failed.
    #[error("cannot load the multiboot ELF: {0}")]
    Elf(#[from] ElfError),
    /// The command line (or a module string) is too long.
    #[error("multiboot command line and module strings need {need} bytes, more than the {max} bytes reserved")]
    StringsTooLong { need: u64, max: u64 },
    /// A string holds a NUL byte.
    #[error("multiboot string {0:?} contains a NUL byte")]
    Nul(String),
    /// A module does not fit in RAM.
    #[error("module {index} ({size} bytes) does not fit in guest RAM below 4 GiB after {after:#x}; give the guest more memory")]
    ModuleDoesNotFit { index: usize, size: u64, after: u64 },
    /// The loader's own block finds no free RAM below 4 GiB.
    #[error("no {size:#x} bytes of free guest RAM below 4 GiB for the multiboot information, memory map, strings and GDT, clear of the kernel and modules; give the guest more memory")]
    NoRoomForInfo { size: u64 },
    /// A kernel segment lies over a range the caller reserved.
    #[error(
        "kernel {segment} at {start:#x}..{end:#x} overlaps {what} at {rstart:#x}..{rend:#x}; link the kernel elsewhere"
    )]
    Overlap { segment: String, start: u64, end: u64, what: &'static str, rstart: u64, rend: u64 },
    /// What follows the kernel in the BIOS boot's image runs into memory
    /// the firmware keeps.
    #[error("the multiboot module list, strings and modules after the kernel ({start:#x}..{end:#x}) run into {what} at {rstart:#x}..{rend:#x}; give the guest more memory, or link the kernel elsewhere")]
    TailOverlap { start: u64, end: u64, what: &'static str, rstart: u64, rend: u64 },
    /// A kernel segment is not in guest RAM.
    #[error("kernel {segment} at {start:#x}..{end:#x} is not in guest RAM; give the guest more memory or link the kernel lower")]
    OutsideRam { segment: String, start: u64, end: u64 },
    #[error(transparent)]
    E820(#[from] E820Error),
    #[error(transparent)]
    Memory(#[from] MemError),
}

/// The a.out kludge addresses (header flag 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AoutKludge {
    pub header_addr: u32,
    pub load_addr: u32,
    /// 0: load to the end of the file.
    pub load_end_addr: u32,
    /// 0: no bss.
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

/// A multiboot header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultibootHeader {
    /// Offset of the magic in the image.
    pub offset: usize,
    pub flags: u32,
    pub aout: Option<AoutKludge>,
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl MultibootHeader {
    /// Find and validate the header in the first 8192 bytes of `image`.
    pub fn find(image: &[u8]) -> Result<Self, MultibootError> {
        let mut bad_checksum = None;
        let limit = image.len().min(MULTIBOOT_SEARCH);
        for offset in (0..limit.saturating_sub(11)).step_by(4) {
            if le32(image, offset) != Some(MULTIBOOT_HEADER_MAGIC) {
                continue;
            }
            let (Some(flags), Some(checksum)) = (le32(image, offset + 4), le32(image, offset + 8)) else { break };
            if MULTIBOOT_HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
                bad_checksum.get_or_insert(offset);
                continue;
            }
            let unknown = flags & 0xffff & !MB_KNOWN_REQUIREMENTS;
            if unknown != 0 {
                return Err(MultibootError::UnsupportedFlags { flags, unknown });
            }
            let aout = if flags & MB_AOUT_KLUDGE != 0 {
                let field = |i: usize| {
                    le32(image, offset + 12 + 4 * i).ok_or_else(|| {
                        MultibootError::BadAoutKludge("the header is cut off by the end of the image".into())
                    })
                };
                Some(AoutKludge {
                    header_addr: field(0)?,
                    load_addr: field(1)?,
                    load_end_addr: field(2)?,
                    bss_end_addr: field(3)?,
                    entry_addr: field(4)?,
                })
            } else {
                None
            };
            return Ok(MultibootHeader { offset, flags, aout });
        }
        Err(bad_checksum.map_or(MultibootError::NoHeader, |offset| MultibootError::BadChecksum { offset }))
    }
}

/// A module handed to the kernel.
#[derive(Debug, Clone, Copy)]
pub struct MultibootModule<'a> {
    pub data: &'a [u8],
    pub cmdline: &'a str,
}

/// What to boot.
#[derive(Debug, Clone, Default)]
pub struct MultibootConfig<'a> {
    pub kernel: &'a [u8],
    pub cmdline: &'a str,
    pub modules: &'a [MultibootModule<'a>],
    /// The memory map; `None` for [`e820_for_memory`] of the guest memory.
    pub e820: Option<Vec<E820Entry>>,
    /// Ranges already in use that no kernel segment may overlap (the ACPI
    /// and MP tables): what they hold, start, end (exclusive). The loader's
    /// block and the modules avoid them too.
    pub reserved: Vec<Reserved>,
}

/// A range of guest memory the caller already uses: what, start, end (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    pub what: &'static str,
    pub start: u64,
    pub end: u64,
}

/// What [`load_multiboot`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultibootBoot {
    pub cpu: BootCpuState,
    pub header: MultibootHeader,
    pub entry: u64,
    pub kernel_start: u64,
    pub kernel_end: u64,
    pub info_addr: u64,
    /// The loader's block (information, memory map, module list, strings,
    /// GDT, IDT, stack): start, end exclusive.
    pub block: (u64, u64),
    /// Where each module went: (start, end exclusive).
    pub modules: Vec<(u64, u64)>,
}

/// The lowest `align`-aligned address `a >= from`, below 4 GiB, where
/// `a..a + size` lies in one e820 RAM range and overlaps none of `taken`.
fn first_fit(e820: &[E820Entry], taken: &[(u64, u64)], size: u64, align: u64, from: u64) -> Option<u64> {
    let mut ram: Vec<(u64, u64)> =
        e820.iter().filter(|e| e.kind == E820Type::Ram).filter_map(|e| Some((e.addr, e.end()?))).collect();
    ram.sort_unstable();
    for (ram_start, ram_end) in ram {
        let ram_end = ram_end.min(FOUR_GIB);
        let mut at = ram_start.max(from).checked_next_multiple_of(align)?;
        loop {
            let end = at.checked_add(size)?;
            if end > ram_end {
                break;
            }
            match taken.iter().filter(|&&(s, e)| s < end && at < e).map(|&(_, e)| e).max() {
                Some(past) => at = past.checked_next_multiple_of(align)?,
                None => return Some(at),
            }
        }
    }
    None
}

/// Everything below 4 GiB: the information structure holds 32-bit addresses.
const FOUR_GIB: u64 = 1 << 32;

/// One piece of a multiboot kernel's image as its header or ELF program
/// headers lay it out: where it goes, its bytes from the file, and its
/// size in memory (the rest is zeroes: the bss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece<'a> {
    /// For errors: "a.out image" or "ELF segment N".
    pub what: String,
    /// The ELF segment's index, for an ELF piece.
    elf_index: Option<usize>,
    pub start: u64,
    pub data: &'a [u8],
    /// At least `data.len()`; `start + memsz` does not wrap.
    pub memsz: u64,
}

impl Piece<'_> {
    /// The address after the piece.
    pub fn end(&self) -> u64 {
        self.start + self.memsz
    }
}

/// Where a multiboot kernel's image goes and where it is entered: the
/// header's a.out kludge when flag 16 is set (it takes precedence, as the
/// specification says), else the ELF32 program headers. Nothing is
/// written: the direct boot loads the pieces into guest RAM
/// ([`load_multiboot`]), the BIOS boot hands them to the firmware in one
/// image ([`bios_multiboot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLayout<'a> {
    pub header: MultibootHeader,
    /// The physical entry point.
    pub entry: u64,
    pub pieces: Vec<Piece<'a>>,
}

impl KernelLayout<'_> {
    /// Lays out `image`, whose header is `header`.
    pub fn of<'a>(image: &'a [u8], header: &MultibootHeader) -> Result<KernelLayout<'a>, MultibootError> {
        let (entry, pieces) = match (&header.aout, is_elf(image)) {
            (Some(k), _) => {
                let (entry, piece) = layout_aout(image, header, k)?;
                (entry, vec![piece])
            }
            (None, true) => {
                let elf = parse_elf(image, EM_386)?;
                let pieces = elf
                    .segments
                    .iter()
                    .zip(&elf.data)
                    .enumerate()
                    .map(|(i, (s, data))| Piece {
                        what: format!("ELF segment {i}"),
                        elf_index: Some(i),
                        start: s.paddr,
                        data,
                        memsz: s.memsz,
                    })
                    .collect();
                (elf.entry, pieces)
            }
            (None, false) => return Err(MultibootError::NotElf),
        };
        Ok(KernelLayout { header: *header, entry, pieces })
    }

    /// The lowest address the kernel takes.
    pub fn start(&self) -> u64 {
        self.pieces.iter().map(|p| p.start).min().unwrap_or(0)
    }

    /// The address after the kernel's highest byte, bss included.
    pub fn end(&self) -> u64 {
        self.pieces.iter().map(Piece::end).max().unwrap_or(0)
    }

    /// Each piece ends at or below `top` and misses every range of
    /// `reserved`; the first that does not is refused, naming both ranges.
    fn check_place(&self, top: u64, reserved: &[Reserved]) -> Result<(), MultibootError> {
        for p in &self.pieces {
            if p.end() > top {
                return Err(MultibootError::OutsideRam { segment: p.what.clone(), start: p.start, end: p.end() });
            }
            if let Some(r) = reserved.iter().find(|r| r.start < p.end() && p.start < r.end) {
                return Err(MultibootError::Overlap {
                    segment: p.what.clone(),
                    start: p.start,
                    end: p.end(),
                    what: r.what,
                    rstart: r.start,
                    rend: r.end,
                });
            }
        }
        Ok(())
    }
}

/// The a.out-kludge image: its entry and its one piece.
fn layout_aout<'a>(image: &'a [u8], hdr: &MultibootHeader, k: &AoutKludge) -> Result<(u64, Piece<'a>), MultibootError> {
    let bad = |s: String| MultibootError::BadAoutKludge(s);
    let (header_addr, load_addr) = (u64::from(k.header_addr), u64::from(k.load_addr));
    let text_before_header = header_addr
        .checked_sub(load_addr)
        .ok_or_else(|| bad(format!("header_addr {header_addr:#x} is below load_addr {load_addr:#x}")))?;
    let file_start = (hdr.offset as u64)
        .checked_sub(text_before_header)
        .ok_or_else(|| bad(format!("load_addr {load_addr:#x} lies before the start of the file")))?;
    let file_len = image.len() as u64;
    let load_end = if k.load_end_addr == 0 { load_addr + (file_len - file_start) } else { u64::from(k.load_end_addr) };
    let load_size = load_end
        .checked_sub(load_addr)
        .ok_or_else(|| bad(format!("load_end_addr {load_end:#x} is below load_addr {load_addr:#x}")))?;
    if file_start + load_size > file_len {
        return Err(bad(format!(
            "load_addr..load_end_addr needs file bytes {file_start:#x}..{:#x}, the image has {file_len:#x}",
            file_start + load_size
        )));
    }
    let end = match k.bss_end_addr {
        0 => load_end,
        b if u64::from(b) >= load_end => u64::from(b),
        b => return Err(bad(format!("bss_end_addr {b:#x} is below load_end_addr {load_end:#x}"))),
    };
    let entry = u64::from(k.entry_addr);
    if !(load_addr..end).contains(&entry) {
        return Err(bad(format!("entry_addr {entry:#x} lies outside {load_addr:#x}..{end:#x}")));
    }
    // Checked above: file_start + load_size <= file_len. Every address is
    // below 2^33 (32-bit fields, a file shorter than 4 GiB past them), so
    // nothing wraps.
    let data = &image[file_start as usize..(file_start + load_size) as usize];
    let piece = Piece { what: "a.out image".into(), elf_index: None, start: load_addr, data, memsz: end - load_addr };
    Ok((entry, piece))
}

/// Whether `image` is a multiboot kernel, as QEMU's `-kernel` tells: not a
/// bzImage (whose "HdrS" at 0x202 comes first, so a Linux kernel that also
/// carries a multiboot header boots as Linux), and a multiboot header in
/// its first 8192 bytes. A header that is there but bad (its checksum, an
/// unknown requirement) is an error, so that a corrupt multiboot kernel is
/// named as such rather than read as something else.
pub fn probe(image: &[u8]) -> Result<Option<MultibootHeader>, MultibootError> {
    if image.get(0x202..0x206) == Some(b"HdrS") {
        return Ok(None);
    }
    match MultibootHeader::find(image) {
        Ok(h) => Ok(Some(h)),
        Err(MultibootError::NoHeader) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The strings the information structure points at, NUL-terminated one
/// after the other: the command line, the loader's name, then each
/// module's command line; and the offset of each. A string with a NUL, or
/// more than [`STRINGS_MAX`] bytes in all, is refused.
fn strings_block(cmdline: &str, modules: &[MultibootModule<'_>]) -> Result<(Vec<u8>, Vec<u64>), MultibootError> {
    let strings_of = || std::iter::once(cmdline).chain([LOADER_NAME]).chain(modules.iter().map(|m| m.cmdline));
    if let Some(s) = strings_of().find(|s| s.as_bytes().contains(&0)) {
        return Err(MultibootError::Nul(s.to_string()));
    }
    let need: u64 = strings_of().map(|s| s.len() as u64 + 1).sum();
    if need > STRINGS_MAX {
        return Err(MultibootError::StringsTooLong { need, max: STRINGS_MAX });
    }
    let mut strings: Vec<u8> = Vec::with_capacity(need as usize);
    let mut offsets = Vec::with_capacity(modules.len() + 2);
    for s in strings_of() {
        offsets.push(strings.len() as u64);
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
    }
    Ok((strings, offsets))
}

/// Load a multiboot kernel and its modules, write the multiboot information and
/// return the 32-bit entry state.
pub fn load_multiboot(mem: &GuestMemory, cfg: &MultibootConfig<'_>) -> Result<MultibootBoot, MultibootError> {
    let header = MultibootHeader::find(cfg.kernel)?;
    if header.flags & MB_VIDEO_MODE != 0 {
        tracing::warn!("multiboot kernel asks for a video mode; it gets text mode and no video information");
    }
    // Strings first: their errors come before anything is written.
    let (strings, string_offsets) = strings_block(cfg.cmdline, cfg.modules)?;
    let e820 = match &cfg.e820 {
        Some(map) => map.clone(),
        None => e820_for_memory(mem)?,
    };

    // The kernel, anywhere in RAM; its pieces are what the rest avoids.
    let layout = KernelLayout::of(cfg.kernel, &header)?;
    for p in &layout.pieces {
        if !mem.is_backed(p.start, p.memsz) {
            return Err(match p.elf_index {
                Some(index) => {
                    MultibootError::Elf(ElfError::SegmentOutsideRam { index, paddr: p.start, memsz: p.memsz })
                }
                None => MultibootError::BadAoutKludge(format!(
                    "{:#x}..{:#x} is not in guest RAM; give the guest more memory",
                    p.start,
                    p.end()
                )),
            });
        }
    }
    layout.check_place(FOUR_GIB, &cfg.reserved)?;
    let (entry, kernel_start, kernel_end) = (layout.entry, layout.start(), layout.end());
    let mut taken: Vec<(u64, u64)> = layout.pieces.iter().map(|p| (p.start, p.end())).collect();
    taken.extend(cfg.reserved.iter().map(|r| (r.start, r.end)));

    // Modules: page-aligned, in order, each the lowest free place after the
    // kernel's end.
    let mut modules = Vec::with_capacity(cfg.modules.len());
    let mut next = kernel_end;
    for (index, m) in cfg.modules.iter().enumerate() {
        let size = m.data.len() as u64;
        let start = first_fit(&e820, &taken, size.max(1), PAGE_SIZE, next)
            .filter(|&s| mem.is_backed(s, size.max(1)))
            .ok_or(MultibootError::ModuleDoesNotFit { index, size, after: next })?;
        modules.push((start, start + size));
        taken.push((start, start + size));
        next = start + size;
    }

    // The block: info, memory map, module list, strings, GDT, IDT, stack.
    let mmap_off = INFO_AREA;
    let mmap_len = e820.len() as u64 * MMAP_ENTRY_SIZE;
    let mods_off = mmap_off + mmap_len;
    let strings_off = mods_off + modules.len() as u64 * MOD_ENTRY_SIZE;
    let gdt_off = (strings_off + strings.len() as u64).next_multiple_of(16);
    let idt_off = gdt_off + BOOT_GDT_SIZE;
    let block_size = (idt_off + BOOT_IDT_SIZE).next_multiple_of(16) + STACK_SIZE;
    let block = first_fit(&e820, &taken, block_size, 16, MULTIBOOT_INFO_ADDR)
        .or_else(|| first_fit(&e820, &taken, block_size, 16, BLOCK_LOWEST))
        .filter(|&b| mem.is_backed(b, block_size))
        .ok_or(MultibootError::NoRoomForInfo { size: block_size })?;
    // Everything in the block is below 4 GiB (first_fit), so are the modules:
    // the u32 casts below are exact.
    let string_addr = |i: usize| (block + strings_off + string_offsets[i]) as u32;

    for p in &layout.pieces {
        // Checked above: in RAM, memsz >= data.len().
        mem.load(p.start, p.data)?;
        mem.fill(p.start + p.data.len() as u64, p.memsz - p.data.len() as u64, 0)?;
    }
    for (m, &(start, _)) in cfg.modules.iter().zip(&modules) {
        mem.load(start, m.data)?;
    }
    let mut bytes = vec![0u8; (gdt_off) as usize];
    let mut put = |at: u64, v: &[u8]| bytes[at as usize..at as usize + v.len()].copy_from_slice(v);
    for (i, e) in e820.iter().enumerate() {
        let at = mmap_off + i as u64 * MMAP_ENTRY_SIZE;
        put(at, &((MMAP_ENTRY_SIZE - 4) as u32).to_le_bytes());
        put(at + 4, &e.to_bytes());
    }
    for (i, &(start, end)) in modules.iter().enumerate() {
        let at = mods_off + i as u64 * MOD_ENTRY_SIZE;
        for (j, v) in [start as u32, end as u32, string_addr(i + 2), 0].into_iter().enumerate() {
            put(at + 4 * j as u64, &v.to_le_bytes());
        }
    }
    put(strings_off, &strings);
    let (mem_lower, mem_upper) = lower_upper_kib(&e820);
    let mut info = [0u8; INFO_SIZE];
    let mut field = |at: usize, v: u32| info[at..at + 4].copy_from_slice(&v.to_le_bytes());
    field(0, INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME);
    field(4, mem_lower);
    field(8, mem_upper);
    field(16, string_addr(0));
    field(20, modules.len() as u32);
    field(24, (block + mods_off) as u32);
    field(44, mmap_len as u32);
    field(48, (block + mmap_off) as u32);
    field(64, string_addr(1));
    put(0, &info);
    mem.write(block, &bytes)?;
    let (gdt, idt) = (block + gdt_off, block + idt_off);
    write_boot_gdt_at(mem, BootMode::Protected32, gdt, idt)?;
    mem.fill(idt + BOOT_IDT_SIZE, block_size - (idt_off + BOOT_IDT_SIZE), 0)?;

    let mut cpu = BootCpuState::protected32(entry);
    cpu.gdt_base = gdt;
    cpu.idt_base = idt;
    cpu.rax = u64::from(MULTIBOOT_BOOTLOADER_MAGIC);
    cpu.rbx = block;
    cpu.rsp = block + block_size;
    tracing::debug!(
        kernel_start,
        kernel_end,
        block,
        block_size,
        "multiboot kernel loaded; the information block placed clear of it"
    );
    Ok(MultibootBoot {
        cpu,
        header,
        entry,
        kernel_start,
        kernel_end,
        info_addr: block,
        block: (block, block + block_size),
        modules,
    })
}

/// Where QEMU's multiboot option ROM writes the memory map it reads from
/// the BIOS (INT 15h, E820h): 0x500 bytes, room for 53 entries.
pub const BIOS_MMAP_ADDR: u32 = 0x9000;
/// Where the ROM reads the information structure to (fw_cfg's initrd
/// item), after the map's room; it fills in `mem_lower` (INT 12h),
/// `mem_upper` and `mmap_length` there.
pub const BIOS_INFO_ADDR: u32 = 0x9500;
/// Information flag: `boot_device` is valid.
pub const INFO_BOOTDEV: u32 = 1 << 1;
/// The boot device QEMU reports: the first hard disk (BIOS drive 0x80),
/// no partition.
pub const BIOS_BOOT_DEVICE: u32 = 0x8000_ffff;
/// Low memory the BIOS and the option ROM use while the kernel is loaded:
/// the interrupt vector table and BIOS data area, SeaBIOS's stack below
/// 0x7000, the memory map and the information structure from 0x9000.
pub const BIOS_LOW_END: u64 = 0xa000;

/// What a multiboot kernel booted through the BIOS hands the firmware, as
/// QEMU's `-kernel` does (hw/i386/multiboot.c): one image the multiboot
/// option ROM copies to the kernel's lowest address and the information
/// structure it copies to [`BIOS_INFO_ADDR`] and completes from the BIOS
/// (the memory map from INT 15h E820h, `mem_lower` from INT 12h,
/// `mem_upper` from the map) before it enters the kernel in protected
/// mode with EAX = 0x2badb002 and EBX = the structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BiosMultiboot {
    pub header: MultibootHeader,
    /// The physical entry point.
    pub entry: u32,
    /// Where the image goes: the kernel's lowest address.
    pub load_addr: u32,
    /// The kernel as it lies in memory (its bss zeroes); from the next
    /// page, the module list and the strings (the command line, the
    /// loader's name, the modules' command lines); from the next page, the
    /// modules, each on a page of its own; a whole number of pages.
    pub image: Vec<u8>,
    /// The information structure.
    pub info: Vec<u8>,
    /// The address after the kernel's highest byte, bss included.
    pub kernel_end: u64,
    /// Where each module goes: start, end exclusive.
    pub modules: Vec<(u64, u64)>,
}

impl BiosMultiboot {
    /// The fw_cfg items, key and contents, that hand it over (QEMU's
    /// numbering): the image as the kernel item, the information structure
    /// as the initrd item, and the entry point.
    pub fn into_fw_cfg_items(self) -> Vec<(u16, Vec<u8>)> {
        use crate::linuxboot::{
            FW_CFG_INITRD_ADDR, FW_CFG_INITRD_DATA, FW_CFG_INITRD_SIZE, FW_CFG_KERNEL_ADDR, FW_CFG_KERNEL_DATA,
            FW_CFG_KERNEL_ENTRY, FW_CFG_KERNEL_SIZE,
        };
        let u32le = |v: u32| v.to_le_bytes().to_vec();
        // Both lengths are below 4 GiB: the image ends below it, the
        // structure is INFO_SIZE bytes.
        vec![
            (FW_CFG_KERNEL_ENTRY, u32le(self.entry)),
            (FW_CFG_KERNEL_ADDR, u32le(self.load_addr)),
            (FW_CFG_KERNEL_SIZE, u32le(self.image.len() as u32)),
            (FW_CFG_KERNEL_DATA, self.image),
            (FW_CFG_INITRD_ADDR, u32le(BIOS_INFO_ADDR)),
            (FW_CFG_INITRD_SIZE, u32le(self.info.len() as u32)),
            (FW_CFG_INITRD_DATA, self.info),
        ]
    }
}

/// What to boot through the BIOS.
#[derive(Debug, Clone, Copy)]
pub struct BiosMultibootConfig<'a> {
    pub kernel: &'a [u8],
    /// The kernel's file name as given: the command line the kernel gets
    /// is this, a space and `cmdline`, as QEMU and GRUB give it.
    pub name: &'a str,
    pub cmdline: &'a str,
    pub modules: &'a [MultibootModule<'a>],
    /// Where RAM below 4 GiB ends.
    pub ram_below_4g: u64,
}

/// Lays out a multiboot kernel, its modules and its information structure
/// for QEMU's multiboot option ROM. Everything the ROM writes must land in
/// RAM the BIOS leaves free: not below [`BIOS_LOW_END`], not over the EBDA,
/// the VGA window and the ROMs (0x9fc00 to 1 MiB), and not over the top
/// [`FIRMWARE_DATA`](crate::linuxboot::FIRMWARE_DATA) bytes of low RAM,
/// where SeaBIOS keeps the ACPI tables; a kernel piece there is refused
/// naming both ranges, as are modules that run into them.
pub fn bios_multiboot(cfg: &BiosMultibootConfig<'_>) -> Result<BiosMultiboot, MultibootError> {
    let header = MultibootHeader::find(cfg.kernel)?;
    if header.flags & MB_VIDEO_MODE != 0 {
        tracing::warn!("multiboot kernel asks for a video mode; it gets text mode and no video information");
    }
    let cmdline = format!("{} {}", cfg.name, cfg.cmdline);
    let (strings, string_offsets) = strings_block(&cmdline, cfg.modules)?;
    let layout = KernelLayout::of(cfg.kernel, &header)?;
    let top = cfg.ram_below_4g.min(FOUR_GIB);
    let limit = top.saturating_sub(crate::linuxboot::FIRMWARE_DATA);
    let reserved = [
        Reserved {
            what: "the BIOS's data and stack and the multiboot information its option ROM writes",
            start: 0,
            end: BIOS_LOW_END,
        },
        Reserved { what: "the EBDA, the VGA window and the BIOS's ROMs", start: EBDA_START, end: HIMEM_START },
        Reserved { what: "the firmware's tables at the top of RAM", start: limit, end: top },
    ];
    let overlap = |start: u64, end: u64| reserved.iter().find(|r| r.start < end && start < r.end).copied();
    layout.check_place(top, &reserved)?;
    let (start, kernel_end) = (layout.start(), layout.end());
    // Offsets in the image. The kernel ends below 4 GiB and the strings and
    // modules are in host memory: nothing here nears 2^64.
    let list_off = (kernel_end - start).next_multiple_of(PAGE_SIZE);
    let strings_off = list_off + cfg.modules.len() as u64 * MOD_ENTRY_SIZE;
    let mut off = (strings_off + strings.len() as u64).next_multiple_of(PAGE_SIZE);
    let mut module_offs = Vec::with_capacity(cfg.modules.len());
    for m in cfg.modules {
        module_offs.push(off);
        off = (off + m.data.len() as u64).next_multiple_of(PAGE_SIZE);
    }
    let end = start + off;
    if let Some(r) = overlap(kernel_end, end) {
        return Err(MultibootError::TailOverlap { start: kernel_end, end, what: r.what, rstart: r.start, rend: r.end });
    }
    // Below `limit`, so below 4 GiB: the casts to u32 and usize are exact.
    let mut image = vec![0u8; off as usize];
    for p in &layout.pieces {
        let at = (p.start - start) as usize;
        image[at..at + p.data.len()].copy_from_slice(p.data);
    }
    let addr = |o: u64| (start + o) as u32;
    let string_addr = |i: usize| addr(strings_off + string_offsets[i]);
    let mut modules = Vec::with_capacity(cfg.modules.len());
    for (i, (m, &o)) in cfg.modules.iter().zip(&module_offs).enumerate() {
        let at = o as usize;
        image[at..at + m.data.len()].copy_from_slice(m.data);
        let (mod_start, mod_end) = (addr(o), addr(o + m.data.len() as u64));
        let entry = (list_off + i as u64 * MOD_ENTRY_SIZE) as usize;
        for (j, v) in [mod_start, mod_end, string_addr(i + 2), 0].into_iter().enumerate() {
            image[entry + 4 * j..entry + 4 * j + 4].copy_from_slice(&v.to_le_bytes());
        }
        modules.push((u64::from(mod_start), u64::from(mod_end)));
    }
    image[strings_off as usize..strings_off as usize + strings.len()].copy_from_slice(&strings);
    let mut info = vec![0u8; INFO_SIZE];
    let mut field = |at: usize, v: u32| info[at..at + 4].copy_from_slice(&v.to_le_bytes());
    field(0, INFO_MEMORY | INFO_BOOTDEV | INFO_CMDLINE | INFO_MODS | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME);
    field(12, BIOS_BOOT_DEVICE);
    field(16, string_addr(0));
    field(20, cfg.modules.len() as u32);
    field(24, addr(list_off));
    field(48, BIOS_MMAP_ADDR);
    field(64, string_addr(1));
    Ok(BiosMultiboot { header, entry: layout.entry as u32, load_addr: start as u32, image, info, kernel_end, modules })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{BOOT_CS, CR0_PE, CR0_PG};
    use crate::elf::tests::{build_elf, TestSeg};

    const MIB: u64 = 1 << 20;

    fn header(flags: u32, aout: Option<[u32; 5]>) -> Vec<u8> {
        let mut h = Vec::new();
        for v in [MULTIBOOT_HEADER_MAGIC, flags, 0u32.wrapping_sub(MULTIBOOT_HEADER_MAGIC).wrapping_sub(flags)] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        for v in aout.into_iter().flatten() {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h
    }

    /// An ELF32 kernel linked at 0xc010_0000, loaded at 1 MiB, whose first
    /// segment starts with the multiboot header.
    fn elf_kernel() -> Vec<u8> {
        let mut text = header(MB_PAGE_ALIGN | MB_MEMORY_INFO, None);
        text.resize(0x40, 0x90);
        text.push(0xf4); // hlt at the entry, 0x40 into the segment
        build_elf(
            false,
            EM_386,
            0xc010_0040,
            &[
                TestSeg { vaddr: 0xc010_0000, paddr: 0x10_0000, data: text, memsz: 0x1000 },
                TestSeg { vaddr: 0xc010_1000, paddr: 0x10_1000, data: vec![7; 8], memsz: 0x2000 },
            ],
        )
    }

    fn read_str(mem: &GuestMemory, addr: u64) -> String {
        let mut s = Vec::new();
        for a in addr.. {
            match mem.read_u8(a).unwrap() {
                0 => break,
                b => s.push(b),
            }
        }
        String::from_utf8(s).unwrap()
    }

    #[test]
    fn elf_kernel_gets_info_modules_and_state() {
        let mem = GuestMemory::new(64 * MIB).unwrap();
        let kernel = elf_kernel();
        let m1 = vec![0xab; 5000];
        let m2 = b"second".to_vec();
        let mods = [MultibootModule { data: &m1, cmdline: "mod1 arg" }, MultibootModule { data: &m2, cmdline: "" }];
        let boot = load_multiboot(
            &mem,
            &MultibootConfig { kernel: &kernel, cmdline: "kernel -v", modules: &mods, ..Default::default() },
        )
        .unwrap();
        assert_eq!(boot.header.offset, 52 + 2 * 32);
        assert_eq!(boot.entry, 0x10_0040);
        assert_eq!((boot.kernel_start, boot.kernel_end), (0x10_0000, 0x10_3000));
        assert_eq!(mem.read_u8(0x10_0040).unwrap(), 0xf4);

        let cpu = &boot.cpu;
        assert_eq!(cpu.mode, BootMode::Protected32);
        assert_eq!((cpu.rax, cpu.rbx, cpu.rip), (0x2bad_b002, MULTIBOOT_INFO_ADDR, 0x10_0040));
        assert_eq!(cpu.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!(cpu.efer, 0);
        assert!(cpu.cs.db && cpu.cs.g && cpu.cs.base == 0 && cpu.cs.limit == 0xffff_ffff);
        assert_eq!(cpu.cs.selector, BOOT_CS);
        let gdt_cs = mem.read_u64(cpu.gdt_base + u64::from(BOOT_CS)).unwrap();
        assert_eq!(crate::boot::SegmentDesc::from_descriptor(BOOT_CS, gdt_cs), cpu.cs);

        let info = |off: u64| mem.read_u32(MULTIBOOT_INFO_ADDR + off).unwrap();
        let flags = info(0);
        assert_eq!(flags & (INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MEM_MAP), 0x4d);
        assert_eq!((info(4), info(8)), (639, 63 * 1024));
        assert_eq!(read_str(&mem, u64::from(info(16))), "kernel -v");
        assert_eq!(read_str(&mem, u64::from(info(64))), "ferrovm");
        assert_eq!(info(20), 2);
        let mods_addr = u64::from(info(24));
        let module = |i: u64, f: u64| mem.read_u32(mods_addr + i * 16 + f).unwrap();
        assert_eq!((module(0, 0), module(0, 4)), (0x10_3000, 0x10_3000 + 5000));
        assert_eq!(read_str(&mem, u64::from(module(0, 8))), "mod1 arg");
        assert_eq!(module(1, 0) % 4096, 0);
        assert_eq!(module(1, 4) - module(1, 0), 6);
        assert_eq!(read_str(&mem, u64::from(module(1, 8))), "");
        assert_eq!(mem.read_u8(u64::from(module(0, 0)) + 4999).unwrap(), 0xab);
        assert_eq!(boot.modules, vec![(0x10_3000, 0x10_3000 + 5000), (0x10_5000, 0x10_5006)]);

        // The memory map: 4 entries of 24 bytes, size field 20.
        assert_eq!(info(44), 4 * 24);
        let mmap = u64::from(info(48));
        let entry = |i: u64| {
            let size = mem.read_u32(mmap + i * 24).unwrap();
            let base = mem.read_u64(mmap + i * 24 + 4).unwrap();
            let len = mem.read_u64(mmap + i * 24 + 12).unwrap();
            let kind = mem.read_u32(mmap + i * 24 + 20).unwrap();
            (size, base, len, kind)
        };
        assert_eq!(entry(0), (20, 0, 0x9fc00, 1));
        assert_eq!(entry(3), (20, MIB, 63 * MIB, 1));
    }

    #[test]
    fn aout_kludge_kernel() {
        let mem = GuestMemory::new(16 * MIB).unwrap();
        // A flat binary: 0x40 bytes of code, the header at 0x40, more code.
        let mut image = vec![0x90u8; 0x40];
        image.extend(header(MB_AOUT_KLUDGE, Some([0x20_0040, 0x20_0000, 0, 0x20_4000, 0x20_0080])));
        image.resize(0x100, 0xf4);
        let boot = load_multiboot(&mem, &MultibootConfig { kernel: &image, ..Default::default() }).unwrap();
        assert_eq!(boot.header.offset, 0x40);
        assert_eq!(boot.entry, 0x20_0080);
        assert_eq!((boot.kernel_start, boot.kernel_end), (0x20_0000, 0x20_4000));
        assert_eq!(mem.read_u32(0x20_0040).unwrap(), MULTIBOOT_HEADER_MAGIC);
        assert_eq!(mem.read_u8(0x20_00ff).unwrap(), 0xf4);
        assert_eq!(mem.read_u8(0x20_0100).unwrap(), 0);

        // Inconsistent kludges.
        let kludge = |f: [u32; 5]| {
            let mut img = vec![0u8; 0x40];
            img.extend(header(MB_AOUT_KLUDGE, Some(f)));
            img.resize(0x100, 0);
            load_multiboot(&mem, &MultibootConfig { kernel: &img, ..Default::default() }).unwrap_err()
        };
        assert!(matches!(kludge([0x20_0040, 0x20_0080, 0, 0, 0x20_0080]), MultibootError::BadAoutKludge(_)));
        assert!(matches!(kludge([0x20_0080, 0x20_0000, 0, 0, 0x20_0080]), MultibootError::BadAoutKludge(_)));
        assert!(matches!(kludge([0x20_0040, 0x20_0000, 0x20_1000, 0, 0x20_0080]), MultibootError::BadAoutKludge(_)));
        assert!(matches!(kludge([0x20_0040, 0x20_0000, 0, 0, 0x30_0000]), MultibootError::BadAoutKludge(_)));
        let e = kludge([0x2000_0040, 0x2000_0000, 0, 0, 0x2000_0080]);
        assert!(e.to_string().contains("not in guest RAM"), "{e}");
    }

    #[test]
    fn header_search_and_errors() {
        let mem = GuestMemory::new(16 * MIB).unwrap();
        let load = |k: &[u8]| load_multiboot(&mem, &MultibootConfig { kernel: k, ..Default::default() }).unwrap_err();
        assert_eq!(load(&[0u8; 10000]), MultibootError::NoHeader);
        // Beyond the first 8192 bytes it does not count.
        let mut late = vec![0u8; 8192];
        late.extend(header(0, None));
        assert_eq!(load(&late), MultibootError::NoHeader);
        // Unaligned does not count either.
        let mut unaligned = vec![0u8; 2];
        unaligned.extend(header(0, None));
        assert_eq!(load(&unaligned), MultibootError::NoHeader);
        let mut bad = header(0, None);
        bad[8] ^= 1;
        assert_eq!(load(&bad), MultibootError::BadChecksum { offset: 0 });
        assert_eq!(load(&header(1 << 3, None)), MultibootError::UnsupportedFlags { flags: 8, unknown: 8 });
        assert_eq!(load(&header(MB_MEMORY_INFO, None)), MultibootError::NotElf);
        // An ELF64 is not a multiboot v1 kernel.
        let mut text = header(0, None);
        text.push(0xf4);
        let elf64 =
            build_elf(true, crate::elf::EM_X86_64, MIB, &[TestSeg { vaddr: MIB, paddr: MIB, data: text, memsz: 64 }]);
        assert!(matches!(load(&elf64), MultibootError::Elf(ElfError::WrongMachine { .. })));
        // A header cut short before its a.out fields.
        let cut = header(MB_AOUT_KLUDGE, None);
        assert!(matches!(load(&cut), MultibootError::BadAoutKludge(_)));
    }

    #[test]
    fn strings_and_modules_are_bounded() {
        let mem = GuestMemory::new(2 * MIB).unwrap();
        let kernel = elf_kernel();
        let e = load_multiboot(&mem, &MultibootConfig { kernel: &kernel, cmdline: "a\0b", ..Default::default() })
            .unwrap_err();
        assert!(matches!(e, MultibootError::Nul(_)));
        let long = "x".repeat(STRINGS_MAX as usize);
        let e = load_multiboot(&mem, &MultibootConfig { kernel: &kernel, cmdline: &long, ..Default::default() })
            .unwrap_err();
        assert!(matches!(e, MultibootError::StringsTooLong { .. }));
        let big = vec![0u8; MIB as usize];
        let mods = [MultibootModule { data: &big, cmdline: "big" }];
        let e = load_multiboot(&mem, &MultibootConfig { kernel: &kernel, modules: &mods, ..Default::default() })
            .unwrap_err();
        assert_eq!(e, MultibootError::ModuleDoesNotFit { index: 0, size: MIB, after: 0x10_3000 });
    }

    /// An ELF32 kernel with the given (paddr, bytes, memsz) segments, entered
    /// at the start of the first.
    fn kernel_at(segs: &[(u64, usize, u64)]) -> Vec<u8> {
        let mut first = header(MB_MEMORY_INFO, None);
        first.push(0xf4);
        let segs: Vec<TestSeg> = segs
            .iter()
            .enumerate()
            .map(|(i, &(paddr, len, memsz))| {
                let mut data = if i == 0 { first.clone() } else { Vec::new() };
                data.resize(len, 0x5a);
                TestSeg { vaddr: paddr, paddr, data, memsz }
            })
            .collect();
        build_elf(false, EM_386, segs[0].paddr + 12, &segs)
    }

    fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 < b.1 && b.0 < a.1
    }

    #[test]
    fn segments_load_below_1mib_and_the_block_avoids_them() {
        let mem = GuestMemory::new(16 * MIB).unwrap();
        // Headers in the page below 1 MiB, text above: the block stays at 0x6000.
        let k = kernel_at(&[(0xf_f000, 0x2000, 0x3000)]);
        let boot = load_multiboot(&mem, &MultibootConfig { kernel: &k, ..Default::default() }).unwrap();
        assert_eq!((boot.kernel_start, boot.kernel_end), (0xf_f000, 0x10_2000));
        assert_eq!(boot.info_addr, MULTIBOOT_INFO_ADDR);
        assert_eq!(mem.read_u32(0xf_f000).unwrap(), MULTIBOOT_HEADER_MAGIC);

        // A kernel at 0x4000..0x20000 covers 0x6000: the block goes after it,
        // and the module after the kernel's end, clear of both.
        let k = kernel_at(&[(0x4000, 0x1000, 0x1c000)]);
        let m = vec![0x77u8; 3000];
        let mods = [MultibootModule { data: &m, cmdline: "m" }];
        let boot =
            load_multiboot(&mem, &MultibootConfig { kernel: &k, cmdline: "hi", modules: &mods, ..Default::default() })
                .unwrap();
        assert_eq!((boot.kernel_start, boot.kernel_end), (0x4000, 0x2_0000));
        assert_eq!(boot.modules, vec![(0x2_0000, 0x2_0000 + 3000)]);
        assert!(boot.block.0 >= 0x2_0000 + 3000, "{:x?}", boot.block);
        assert!(!overlaps(boot.block, (0x4000, 0x2_0000)) && !overlaps(boot.block, boot.modules[0]));
        assert_eq!((boot.cpu.rbx, boot.cpu.rsp), (boot.block.0, boot.block.1));
        assert!(overlaps((boot.cpu.gdt_base, boot.cpu.gdt_base + 48), boot.block));
        // The GDT the state points at holds its code segment.
        let cs = mem.read_u64(boot.cpu.gdt_base + u64::from(BOOT_CS)).unwrap();
        assert_eq!(crate::boot::SegmentDesc::from_descriptor(BOOT_CS, cs), boot.cpu.cs);
        assert_eq!(read_str(&mem, u64::from(mem.read_u32(boot.info_addr + 16).unwrap())), "hi");
        let mods_addr = u64::from(mem.read_u32(boot.info_addr + 24).unwrap());
        assert_eq!(mem.read_u32(mods_addr).unwrap(), 0x2_0000);
        assert_eq!(read_str(&mem, u64::from(mem.read_u32(mods_addr + 8).unwrap())), "m");
        assert_eq!(mem.read_u8(0x4000 + 0x1000).unwrap(), 0, "bss zeroed");

        // A kernel filling all low memory from 0x1000: the block goes above 1 MiB.
        let k = kernel_at(&[(0x1000, 0x1000, 0x9_e000)]);
        let boot = load_multiboot(&mem, &MultibootConfig { kernel: &k, ..Default::default() }).unwrap();
        assert!(boot.block.0 >= 0x10_0000, "{:x?}", boot.block);
    }

    #[test]
    fn a_segment_over_reserved_tables_is_named_with_both_ranges() {
        let mem = GuestMemory::new(16 * MIB).unwrap();
        let k = kernel_at(&[(0xe_0000, 0x1000, 0x2000)]);
        let reserved = vec![Reserved { what: "the ACPI tables", start: 0xe_0000, end: 0xe_0400 }];
        let e = load_multiboot(&mem, &MultibootConfig { kernel: &k, reserved, ..Default::default() }).unwrap_err();
        assert_eq!(
            e,
            MultibootError::Overlap {
                segment: "ELF segment 0".into(),
                start: 0xe_0000,
                end: 0xe_2000,
                what: "the ACPI tables",
                rstart: 0xe_0000,
                rend: 0xe_0400
            }
        );
        let text = e.to_string();
        assert!(text.contains("0xe0000..0xe2000") && text.contains("the ACPI tables at 0xe0000..0xe0400"), "{text}");
        // Outside RAM.
        let k = kernel_at(&[(0x200_0000, 0x1000, 0x1000)]);
        let e = load_multiboot(&mem, &MultibootConfig { kernel: &k, ..Default::default() }).unwrap_err();
        assert!(matches!(e, MultibootError::Elf(ElfError::SegmentOutsideRam { .. })), "{e}");
    }

    fn le32(b: &[u8], at: u64) -> u32 {
        u32::from_le_bytes(b[at as usize..at as usize + 4].try_into().unwrap())
    }

    fn cstr(b: &[u8], at: u64) -> String {
        let s = &b[at as usize..];
        String::from_utf8(s[..s.iter().position(|&c| c == 0).unwrap()].to_vec()).unwrap()
    }

    fn bios_cfg<'a>(kernel: &'a [u8], modules: &'a [MultibootModule<'a>], ram: u64) -> BiosMultibootConfig<'a> {
        BiosMultibootConfig { kernel, name: "/boot/k.elf", cmdline: "a b", modules, ram_below_4g: ram }
    }

    #[test]
    fn the_bios_image_follows_qemus_layout() {
        let kernel = elf_kernel();
        let m1 = vec![0xab; 5000];
        let m2 = b"second".to_vec();
        let mods = [MultibootModule { data: &m1, cmdline: "m1.bin x=1" }, MultibootModule { data: &m2, cmdline: "m2" }];
        let b = bios_multiboot(&bios_cfg(&kernel, &mods, 64 * MIB)).unwrap();
        assert_eq!((b.entry, b.load_addr, b.kernel_end), (0x10_0040, 0x10_0000, 0x10_3000));
        // The kernel as loaded: its first segment's bytes, its bss zeroed, the second segment.
        assert_eq!(le32(&b.image, 0), MULTIBOOT_HEADER_MAGIC);
        assert_eq!(b.image[0x40], 0xf4);
        assert_eq!(&b.image[0x1000..0x1009], &[7, 7, 7, 7, 7, 7, 7, 7, 0]);
        // The module list on the next page, the strings after it.
        let at = |addr: u32| u64::from(addr) - 0x10_0000;
        let list = 0x3000;
        assert_eq!((le32(&b.image, list), le32(&b.image, list + 4)), (0x10_4000, 0x10_4000 + 5000));
        assert_eq!(cstr(&b.image, at(le32(&b.image, list + 8))), "m1.bin x=1");
        assert_eq!((le32(&b.image, list + 16), le32(&b.image, list + 20)), (0x10_6000, 0x10_6006));
        assert_eq!(cstr(&b.image, at(le32(&b.image, list + 24))), "m2");
        assert_eq!(b.modules, vec![(0x10_4000, 0x10_4000 + 5000), (0x10_6000, 0x10_6006)]);
        assert_eq!(&b.image[0x4000..0x4000 + 5000], &m1[..]);
        assert_eq!(&b.image[0x6000..0x6006], b"second");
        assert_eq!(b.image.len(), 0x7000, "whole pages");
        // The information structure: what the BIOS fills in is left zero.
        let info = |off: u64| le32(&b.info, off);
        assert_eq!(b.info.len(), INFO_SIZE);
        assert_eq!(info(0), 0x24f, "memory, boot device, command line, modules, memory map, loader name");
        assert_eq!((info(4), info(8), info(44)), (0, 0, 0));
        assert_eq!(info(12), 0x8000_ffff);
        assert_eq!(cstr(&b.image, at(info(16))), "/boot/k.elf a b", "the file's name first, as QEMU and GRUB give it");
        assert_eq!(cstr(&b.image, at(info(64))), "ferrovm");
        assert_eq!((info(20), info(24)), (2, 0x10_3000));
        assert_eq!(info(48), BIOS_MMAP_ADDR);
        let items = b.clone().into_fw_cfg_items();
        let item = |k: u16| items.iter().find(|(key, _)| *key == k).map(|(_, v)| v.clone()).unwrap();
        use crate::linuxboot::*;
        assert_eq!(item(FW_CFG_KERNEL_ENTRY), 0x10_0040u32.to_le_bytes());
        assert_eq!(item(FW_CFG_KERNEL_ADDR), 0x10_0000u32.to_le_bytes());
        assert_eq!(item(FW_CFG_KERNEL_SIZE), 0x7000u32.to_le_bytes());
        assert_eq!(item(FW_CFG_KERNEL_DATA), b.image);
        assert_eq!(item(FW_CFG_INITRD_ADDR), 0x9500u32.to_le_bytes());
        assert_eq!(item(FW_CFG_INITRD_SIZE), (INFO_SIZE as u32).to_le_bytes());
        assert_eq!(item(FW_CFG_INITRD_DATA), b.info);

        // No modules: the list is empty, the strings still follow the kernel.
        let b = bios_multiboot(&bios_cfg(&kernel, &[], 64 * MIB)).unwrap();
        assert_eq!((le32(&b.info, 20), le32(&b.info, 24)), (0, 0x10_3000));
        assert_eq!(b.image.len(), 0x4000);

        // An a.out kernel: the file from load_addr, the bss after it.
        let mut image = vec![0x90u8; 0x40];
        image.extend(header(MB_AOUT_KLUDGE, Some([0x20_0040, 0x20_0000, 0, 0x20_4000, 0x20_0080])));
        image.resize(0x100, 0xf4);
        let b = bios_multiboot(&bios_cfg(&image, &[], 64 * MIB)).unwrap();
        assert_eq!((b.entry, b.load_addr, b.kernel_end), (0x20_0080, 0x20_0000, 0x20_4000));
        assert_eq!(b.image[..0x100], image[..]);
        assert!(b.image[0x100..0x4000].iter().all(|&x| x == 0));
    }

    #[test]
    fn the_bios_boot_refuses_what_the_firmware_keeps() {
        let ram = 64 * MIB;
        let refused = |k: &[u8], mods: &[MultibootModule<'_>]| bios_multiboot(&bios_cfg(k, mods, ram)).unwrap_err();
        // Over the option ROM's information structure at 0x9000.
        let e = refused(&kernel_at(&[(0x8000, 0x100, 0x1_0000)]), &[]);
        assert!(matches!(e, MultibootError::Overlap { start: 0x8000, rstart: 0, rend: 0xa000, .. }), "{e}");
        assert!(e.to_string().contains("multiboot information its option ROM writes"), "{e}");
        // Headers in the BIOS area below 1 MiB.
        let e = refused(&kernel_at(&[(0xf_f000, 0x2000, 0x3000)]), &[]);
        assert!(matches!(e, MultibootError::Overlap { rstart: 0x9_fc00, rend: 0x10_0000, .. }), "{e}");
        // Over the top of RAM, where the ACPI tables go.
        let top = ram - crate::linuxboot::FIRMWARE_DATA;
        let e = refused(&kernel_at(&[(top - 0x1000, 0x100, 0x2000)]), &[]);
        assert!(matches!(e, MultibootError::Overlap { rstart, rend, .. } if rstart == top && rend == ram), "{e}");
        // Past the end of RAM.
        let e = refused(&kernel_at(&[(ram, 0x100, 0x1000)]), &[]);
        assert!(matches!(e, MultibootError::OutsideRam { .. }), "{e}");
        assert!(e.to_string().contains("not in guest RAM"), "{e}");
        // Modules that do not fit below the firmware's tables.
        let big = vec![0u8; 63 * MIB as usize];
        let e = refused(&elf_kernel(), &[MultibootModule { data: &big, cmdline: "big" }]);
        assert!(matches!(e, MultibootError::TailOverlap { start: 0x10_3000, rstart, .. } if rstart == top), "{e}");
        // A low kernel whose modules run into the EBDA.
        let m = vec![0u8; 0x9_0000];
        let e = refused(&kernel_at(&[(0x1_0000, 0x100, 0x1000)]), &[MultibootModule { data: &m, cmdline: "m" }]);
        assert!(matches!(e, MultibootError::TailOverlap { rstart: 0x9_fc00, .. }), "{e}");
        // A low kernel that fits, and strings the direct boot also refuses.
        bios_multiboot(&bios_cfg(&kernel_at(&[(0x1_0000, 0x100, 0x1000)]), &[], ram)).unwrap();
        let k = kernel_at(&[(MIB, 0x100, 0x1000)]);
        let mut cfg = bios_cfg(&k, &[], ram);
        cfg.cmdline = "a\0b";
        assert!(matches!(bios_multiboot(&cfg), Err(MultibootError::Nul(_))));
        // Corrupt headers.
        let mut bad = header(0, None);
        bad[8] ^= 1;
        assert_eq!(refused(&bad, &[]), MultibootError::BadChecksum { offset: 0 });
        assert_eq!(refused(&[0u8; 100], &[]), MultibootError::NoHeader);
        let cut = header(MB_AOUT_KLUDGE, None);
        assert!(matches!(refused(&cut, &[]), MultibootError::BadAoutKludge(_)));
    }

    #[test]
    fn probe_tells_multiboot_kernels_from_the_rest() {
        assert_eq!(probe(&elf_kernel()).unwrap().map(|h| h.offset), Some(52 + 2 * 32));
        assert_eq!(probe(&[0u8; 10000]), Ok(None));
        // A bzImage that also carries a multiboot header boots as Linux.
        let mut bz = vec![0u8; 0x1000];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x400..0x40c].copy_from_slice(&header(0, None));
        assert_eq!(probe(&bz), Ok(None));
        let mut bad = header(0, None);
        bad[4] ^= 0x10;
        assert!(matches!(probe(&bad), Err(MultibootError::BadChecksum { .. })));
        assert!(matches!(probe(&header(1 << 4, None)), Err(MultibootError::UnsupportedFlags { .. })));
    }

    #[test]
    fn first_fit_skips_taken_ranges_and_holes() {
        let mem = GuestMemory::new(4 * MIB).unwrap();
        let e820 = e820_for_memory(&mem).unwrap();
        assert_eq!(first_fit(&e820, &[], 0x100, 16, 0x6000), Some(0x6000));
        assert_eq!(first_fit(&e820, &[(0x5000, 0x6010)], 0x100, 16, 0x6000), Some(0x6010));
        assert_eq!(first_fit(&e820, &[(0x6000, 0x7000), (0x7000, 0x8001)], 0x100, 16, 0x6000), Some(0x8010));
        // Too big for low memory: the next RAM range, above 1 MiB.
        assert_eq!(first_fit(&e820, &[], 0xa_0000, 0x1000, 0x1000), Some(0x10_0000));
        assert_eq!(first_fit(&e820, &[], 4 * MIB, 0x1000, 0x1000), None);
    }
}
