//! Direct Linux boot through the x86 boot protocol
//! (Documentation/arch/x86/boot.rst): the 64-bit boot protocol, and the 32-bit
//! boot protocol for a kernel without a 64-bit entry.
//!
//! The ways in:
//!
//! - **fast** for a bzImage: the payload (the compressed vmlinux, found
//!   through `payload_offset`/`payload_length`) is decompressed on the host,
//!   its ELF segments are loaded at their physical addresses, and the CPU
//!   starts at the vmlinux entry (`phys_startup_64`) — the in-guest
//!   decompressor never runs, as when Firecracker boots a vmlinux. 64-bit
//!   kernels only.
//! - **classic** for a bzImage: the protected-mode kernel is loaded at 1 MiB,
//!   so the kernel decompresses itself. A kernel with the 64-bit entry
//!   (XLF_KERNEL_64) is entered there (`startup_64`, load address + 0x200) in
//!   long mode; any other through the 32-bit boot protocol: at `code32_start`
//!   (the load address) in protected mode, paging off, flat 4 GiB segments
//!   `__BOOT_CS`/`__BOOT_DS`, interrupts off, ESI = zero page, EBP = EDI =
//!   EBX = 0.
//! - **auto** (the default) for a bzImage: fast where the fast path can, and
//!   classic, with one line logged, for a kernel it cannot handle: a 32-bit
//!   kernel, boot protocol before 2.08 or no payload (memtest86+), a
//!   compression the host does not decode, a payload that is not an x86-64
//!   ELF.
//! - a plain **vmlinux** ELF (x86-64): loaded like the fast path's ELF, with a
//!   setup header made up by the loader.
//!
//! Either way the loader writes the zero page (`struct boot_params`, the setup
//! header copied in), the command line, the e820 map and the initrd, a GDT with
//! `__BOOT_CS = 0x10` and `__BOOT_DS = 0x18`, for a 64-bit entry identity page
//! tables over the first 4 GiB, and returns the entry state with `rsi` = zero
//! page.

use mmu::{GuestMemory, MemError, PAGE_SIZE, PCI_HOLE_START};

use crate::boot::{
    write_boot_gdt, write_identity_page_tables, BootCpuState, BootMode, BOOT_STACK_POINTER, CMDLINE_ADDR,
    CMDLINE_AREA_SIZE,
};
use crate::decompress::{decompress_payload, Compression, DecompressError};
use crate::e820::{e820_for_memory, lower_upper_kib, E820Entry, E820Error, E820_MAX_ENTRIES_ZEROPAGE, HIMEM_START};
use crate::elf::{is_elf, load_elf, ElfError, EM_X86_64};

/// Where the zero page (`struct boot_params`) goes.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Size of the zero page.
pub const ZERO_PAGE_SIZE: u64 = 4096;
/// Where the classic path loads the protected-mode kernel.
pub const BZIMAGE_LOAD_ADDR: u64 = HIMEM_START;
/// The 64-bit entry of a bzImage, from the start of its protected-mode code.
pub const STARTUP_64_OFFSET: u64 = 0x200;

// Setup header fields: offsets in the kernel image, which are also their
// offsets in the zero page (boot.rst, "THE REAL-MODE KERNEL HEADER").
const HDR_START: usize = 0x1f1;
const SETUP_SECTS: usize = 0x1f1;
const SYSSIZE: usize = 0x1f4;
const BOOT_FLAG: usize = 0x1fe;
const JUMP: usize = 0x200;
const HEADER: usize = 0x202;
const VERSION: usize = 0x206;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const CODE32_START: usize = 0x214;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22c;
const KERNEL_ALIGNMENT: usize = 0x230;
const RELOCATABLE_KERNEL: usize = 0x234;
const MIN_ALIGNMENT: usize = 0x235;
const XLOADFLAGS: usize = 0x236;
const CMDLINE_SIZE: usize = 0x238;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
const PREF_ADDRESS: usize = 0x258;
const INIT_SIZE: usize = 0x260;
/// End of the fields of protocol 2.06 (`cmdline_size`).
const HDR_END_2_06: usize = 0x23c;
/// End of the fields of protocol 2.08 (`payload_length`).
const HDR_END_2_08: usize = 0x250;
/// End of the fields of protocol 2.10 (`init_size`).
const HDR_END_2_10: usize = 0x264;
/// End of the header of protocol 2.15 (`kernel_info_offset`), the newest layout.
const HDR_END_2_15: usize = 0x26c;

// Zero page fields outside the setup header (zero-page.rst).
const ZP_ACPI_RSDP_ADDR: u64 = 0x070;
const ZP_ALT_MEM_K: u64 = 0x1e0;
const ZP_E820_ENTRIES: u64 = 0x1e8;
const ZP_E820_TABLE: u64 = 0x2d0;

/// "HdrS", little-endian.
const HDRS_MAGIC: [u8; 4] = *b"HdrS";
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// The short jump at 0x200 that says where the header ends.
const JMP_SHORT: u8 = 0xeb;
/// The oldest boot protocol accepted: 2.06 (Linux 2.6.22) has `cmdline_size`.
pub const MIN_PROTOCOL: u16 = 0x0206;
/// The protocol this loader writes into a made-up header (vmlinux).
const OWN_PROTOCOL: u16 = 0x020f;
/// `setup_sects` of 0 means 4 (boot.rst).
const DEFAULT_SETUP_SECTS: u8 = 4;
const SECTOR: u64 = 512;
/// `type_of_loader` for a loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// loadflags bit 0: the protected-mode code loads at 0x100000 (a bzImage).
const LOADED_HIGH: u8 = 1 << 0;
/// loadflags bit 1: set by the decompressor when it randomised the kernel base.
const KASLR_FLAG: u8 = 1 << 1;
/// xloadflags bit 0: the kernel has the 64-bit entry at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// xloadflags bit 1: kernel, initrd and cmdline may sit above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// Highest initrd address for a made-up header: below 2 GiB, as x86-64 kernels say.
const VMLINUX_INITRD_ADDR_MAX: u32 = 0x7fff_ffff;
/// x86 COMMAND_LINE_SIZE (2048) less the terminating zero.
const VMLINUX_CMDLINE_SIZE: u32 = 2047;
/// The kernel's default physical alignment (CONFIG_PHYSICAL_ALIGN).
const VMLINUX_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// Errors loading a Linux kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinuxError {
    /// The image ends before something its header describes.
    #[error("kernel image is truncated or corrupt: {field} needs {need} bytes, the image has {have}")]
    Truncated { field: &'static str, need: u64, have: u64 },
    /// boot_flag is not 0xaa55.
    #[error("boot_flag at 0x1fe is {0:#06x}, not 0xaa55: not a Linux kernel (bzImage or vmlinux ELF)")]
    BadBootFlag(u16),
    /// The "HdrS" magic is missing.
    #[error("setup header magic at 0x202 is {0:02x?}, not \"HdrS\": not a bzImage, or older than boot protocol 2.00")]
    BadMagic([u8; 4]),
    /// The boot protocol is older than 2.06.
    #[error("boot protocol {}.{:02} is older than 2.06 (Linux 2.6.22), the oldest this loader supports", .0 >> 8, .0 & 0xff)]
    OldProtocol(u16),
    /// The jump at 0x200 is not a short jump, or lands before the fields the version promises.
    #[error("the setup header ends at {end:#x} (jump at 0x200), before the fields of protocol {version:#06x} end at {need:#x}")]
    HeaderTooShort { end: usize, version: u16, need: usize },
    /// LOADED_HIGH is clear.
    #[error("loadflags LOADED_HIGH is clear: a zImage, which loads below 1 MiB; only bzImages are supported")]
    NotBzImage,
    /// A size computed from the header overflows.
    #[error("{field} overflows the address space when computing the kernel layout")]
    Overflow { field: &'static str },
    /// The fast path enters a 64-bit vmlinux; this kernel is 32-bit.
    #[error("--kernel-boot fast needs a 64-bit kernel, and this one has no 64-bit entry (boot protocol {version:#06x}, xloadflags {xloadflags:#x}, XLF_KERNEL_64 clear): boot it with --kernel-boot classic or auto")]
    FastNeeds64Bit { version: u16, xloadflags: u16 },
    /// The fast path needs payload_offset/payload_length.
    #[error("--kernel-boot fast needs the compressed kernel's payload_offset/payload_length, and this bzImage (boot protocol {0:#06x}) has none: boot it with --kernel-boot classic or auto")]
    NoPayload(u16),
    /// The fast path decompressed something other than an x86-64 vmlinux.
    #[error("--kernel-boot fast: the decompressed payload is not an x86-64 ELF vmlinux: boot it with --kernel-boot classic or auto")]
    PayloadNotVmlinux,
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes, longer than the kernel's cmdline_size of {max}")]
    CmdlineTooLong { len: usize, max: u64 },
    /// The command line holds a NUL byte.
    #[error("kernel command line contains a NUL byte at {0}")]
    CmdlineNul(usize),
    /// No room for the initrd.
    #[error("initrd of {size} bytes does not fit between the kernel's end at {lowest:#x} and {highest:#x} (initrd_addr_max or the end of low RAM); give the guest more memory")]
    InitrdDoesNotFit { size: u64, lowest: u64, highest: u64 },
    /// The kernel does not fit in low RAM.
    #[error("the kernel needs guest memory {start:#x}..{end:#x}, but RAM below the PCI hole ends at {ram_end:#x}; give the guest more memory")]
    KernelDoesNotFit { start: u64, end: u64, ram_end: u64 },
    /// More e820 entries than the zero page holds.
    #[error("the e820 map has {0} entries, more than the zero page's 128")]
    TooManyE820Entries(usize),
    /// Host-side decompression failed.
    #[error("cannot decompress the kernel on the host: {0}")]
    Decompress(#[from] DecompressError),
    /// The vmlinux ELF is bad.
    #[error("cannot load the vmlinux ELF: {0}")]
    Elf(#[from] ElfError),
    #[error(transparent)]
    E820(#[from] E820Error),
    #[error(transparent)]
    Memory(#[from] MemError),
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// The setup header of a bzImage (the fields this loader uses), validated.
///
/// Fields that the kernel's protocol version does not have read as zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupHeader {
    /// Boot protocol version, e.g. 0x020f for 2.15.
    pub version: u16,
    /// Sectors of real-mode setup code after the boot sector (0 already turned into 4).
    pub setup_sects: u8,
    /// Size of the protected-mode code in 16-byte paragraphs.
    pub syssize: u32,
    pub loadflags: u8,
    /// Where the 32-bit entry expects to be loaded (0x100000 for a bzImage).
    pub code32_start: u32,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable_kernel: bool,
    pub min_alignment: u8,
    pub xloadflags: u16,
    /// Longest command line, terminating zero excluded.
    pub cmdline_size: u32,
    /// Offset of the compressed payload from the start of the protected-mode code.
    pub payload_offset: u32,
    pub payload_length: u32,
    /// Preferred load address of a relocatable kernel.
    pub pref_address: u64,
    /// Bytes the kernel needs from its load address to finish booting.
    pub init_size: u32,
    /// The header bytes from 0x1f1 to its end, as copied into the zero page.
    raw: Vec<u8>,
}

impl SetupHeader {
    /// Parse and validate the setup header at the start of `image`.
    pub fn parse(image: &[u8]) -> Result<Self, LinuxError> {
        let have = image.len() as u64;
        if image.len() < VERSION + 2 {
            return Err(LinuxError::Truncated { field: "setup header", need: (VERSION + 2) as u64, have });
        }
        let boot_flag = le16(image, BOOT_FLAG);
        if boot_flag != BOOT_FLAG_MAGIC {
            return Err(LinuxError::BadBootFlag(boot_flag));
        }
        let magic = [image[HEADER], image[HEADER + 1], image[HEADER + 2], image[HEADER + 3]];
        if magic != HDRS_MAGIC {
            return Err(LinuxError::BadMagic(magic));
        }
        let version = le16(image, VERSION);
        if version < MIN_PROTOCOL {
            return Err(LinuxError::OldProtocol(version));
        }
        // The jump at 0x200 skips the header: its target is where the header ends.
        let end = if image[JUMP] == JMP_SHORT { HEADER + usize::from(image[JUMP + 1]) } else { 0 };
        let need = match version {
            ..0x0208 => HDR_END_2_06,
            0x0208..0x020a => HDR_END_2_08,
            _ => HDR_END_2_10,
        };
        if end < need {
            return Err(LinuxError::HeaderTooShort { end, version, need });
        }
        if image.len() < end {
            return Err(LinuxError::Truncated { field: "setup header", need: end as u64, have });
        }
        let at_least = |v: u16, field: usize, read: fn(&[u8], usize) -> u64| {
            if version >= v {
                read(image, field)
            } else {
                0
            }
        };
        let loadflags = image[LOADFLAGS];
        if loadflags & LOADED_HIGH == 0 {
            return Err(LinuxError::NotBzImage);
        }
        let raw_sects = image[SETUP_SECTS];
        let hdr = SetupHeader {
            version,
            setup_sects: if raw_sects == 0 { DEFAULT_SETUP_SECTS } else { raw_sects },
            syssize: le32(image, SYSSIZE),
            loadflags,
            code32_start: le32(image, CODE32_START),
            initrd_addr_max: le32(image, INITRD_ADDR_MAX),
            kernel_alignment: le32(image, KERNEL_ALIGNMENT),
            relocatable_kernel: image[RELOCATABLE_KERNEL] != 0,
            min_alignment: at_least(0x020a, MIN_ALIGNMENT, |b, at| u64::from(b[at])) as u8,
            xloadflags: at_least(0x020c, XLOADFLAGS, |b, at| u64::from(le16(b, at))) as u16,
            cmdline_size: le32(image, CMDLINE_SIZE),
            payload_offset: at_least(0x0208, PAYLOAD_OFFSET, |b, at| u64::from(le32(b, at))) as u32,
            payload_length: at_least(0x0208, PAYLOAD_LENGTH, |b, at| u64::from(le32(b, at))) as u32,
            pref_address: at_least(0x020a, PREF_ADDRESS, le64),
            init_size: at_least(0x020a, INIT_SIZE, |b, at| u64::from(le32(b, at))) as u32,
            raw: image[HDR_START..end].to_vec(),
        };
        Ok(hdr)
    }

    /// Bytes before the protected-mode code: the boot sector and the setup sectors.
    pub fn setup_size(&self) -> u64 {
        (u64::from(self.setup_sects) + 1) * SECTOR
    }

    /// Whether the kernel has the 64-bit entry at `startup_64` (+0x200).
    pub fn has_64bit_entry(&self) -> bool {
        self.version >= 0x020c && self.xloadflags & XLF_KERNEL_64 != 0
    }

    /// The header bytes as the zero page takes them (from 0x1f1).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Say the protected-mode kernel was loaded at `addr` (a loader that
    /// loads it elsewhere than the header says sets `code32_start`).
    fn set_code32_start(&mut self, addr: u32) {
        self.code32_start = addr;
        let at = CODE32_START - HDR_START;
        self.raw[at..at + 4].copy_from_slice(&addr.to_le_bytes());
    }

    /// A header for a kernel given as a vmlinux ELF, which has none.
    fn for_vmlinux(load_start: u64, load_end: u64) -> Self {
        let mut raw = vec![0u8; HDR_END_2_15 - HDR_START];
        let mut put =
            |at: usize, bytes: &[u8]| raw[at - HDR_START..at - HDR_START + bytes.len()].copy_from_slice(bytes);
        put(BOOT_FLAG, &BOOT_FLAG_MAGIC.to_le_bytes());
        put(JUMP, &[JMP_SHORT, (HDR_END_2_15 - HEADER) as u8]);
        put(HEADER, &HDRS_MAGIC);
        put(VERSION, &OWN_PROTOCOL.to_le_bytes());
        put(LOADFLAGS, &[LOADED_HIGH]);
        put(CODE32_START, &(HIMEM_START as u32).to_le_bytes());
        put(INITRD_ADDR_MAX, &VMLINUX_INITRD_ADDR_MAX.to_le_bytes());
        put(KERNEL_ALIGNMENT, &VMLINUX_KERNEL_ALIGNMENT.to_le_bytes());
        put(XLOADFLAGS, &XLF_KERNEL_64.to_le_bytes());
        put(CMDLINE_SIZE, &VMLINUX_CMDLINE_SIZE.to_le_bytes());
        put(PREF_ADDRESS, &load_start.to_le_bytes());
        let init_size = u32::try_from(load_end - load_start).unwrap_or(u32::MAX);
        put(INIT_SIZE, &init_size.to_le_bytes());
        SetupHeader {
            version: OWN_PROTOCOL,
            setup_sects: DEFAULT_SETUP_SECTS,
            syssize: 0,
            loadflags: LOADED_HIGH,
            code32_start: HIMEM_START as u32,
            initrd_addr_max: VMLINUX_INITRD_ADDR_MAX,
            kernel_alignment: VMLINUX_KERNEL_ALIGNMENT,
            relocatable_kernel: false,
            min_alignment: 0,
            xloadflags: XLF_KERNEL_64,
            cmdline_size: VMLINUX_CMDLINE_SIZE,
            payload_offset: 0,
            payload_length: 0,
            pref_address: load_start,
            init_size,
            raw,
        }
    }
}

/// A parsed bzImage: its header, protected-mode code and payload.
#[derive(Debug, Clone)]
pub struct BzImage<'a> {
    pub header: SetupHeader,
    /// The protected-mode kernel: everything after the setup sectors.
    pub kernel: &'a [u8],
    /// The compressed vmlinux inside `kernel` (protocol 2.08+).
    pub payload: Option<&'a [u8]>,
}

impl<'a> BzImage<'a> {
    /// Parse and validate a bzImage.
    pub fn parse(image: &'a [u8]) -> Result<Self, LinuxError> {
        let header = SetupHeader::parse(image)?;
        let have = image.len() as u64;
        let setup = header.setup_size();
        if setup >= have {
            return Err(LinuxError::Truncated { field: "setup_sects", need: setup + 1, have });
        }
        // Checked above: setup < image.len().
        let kernel = &image[setup as usize..];
        let sys_bytes = u64::from(header.syssize).checked_mul(16).ok_or(LinuxError::Overflow { field: "syssize" })?;
        // syssize is rounded up to 16 bytes: up to 15 of them may be missing.
        if (kernel.len() as u64).saturating_add(15) < sys_bytes {
            let need = setup.checked_add(sys_bytes).ok_or(LinuxError::Overflow { field: "syssize" })?;
            return Err(LinuxError::Truncated { field: "syssize", need: need - 15, have });
        }
        let payload = if header.version >= 0x0208 && header.payload_length > 0 {
            let start = u64::from(header.payload_offset);
            let end = start
                .checked_add(u64::from(header.payload_length))
                .ok_or(LinuxError::Overflow { field: "payload_offset + payload_length" })?;
            if end > kernel.len() as u64 {
                return Err(LinuxError::Truncated {
                    field: "payload_offset + payload_length",
                    need: setup + end,
                    have,
                });
            }
            // Both fit in usize: they are within `kernel`.
            Some(&kernel[start as usize..end as usize])
        } else {
            None
        };
        Ok(BzImage { header, kernel, payload })
    }
}

/// How a bzImage is booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootPath {
    /// [`BootPath::Fast`] where it can, otherwise [`BootPath::Classic`].
    #[default]
    Auto,
    /// Decompress on the host and enter the vmlinux; refuse a kernel the
    /// fast path cannot handle.
    Fast,
    /// Enter the bzImage's own entry (64-bit, or the 32-bit boot protocol);
    /// the kernel decompresses itself.
    Classic,
}

/// What to boot.
#[derive(Debug, Clone, Default)]
pub struct LinuxBootConfig<'a> {
    /// A bzImage or a vmlinux ELF.
    pub kernel: &'a [u8],
    pub initrd: Option<&'a [u8]>,
    pub cmdline: &'a str,
    /// Only used for a bzImage.
    pub path: BootPath,
    /// Physical address of the ACPI RSDP, handed over in `acpi_rsdp_addr`.
    pub acpi_rsdp: Option<u64>,
    /// The memory map; `None` for [`e820_for_memory`] of the guest memory.
    pub e820: Option<Vec<E820Entry>>,
}

/// The kind of image that was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// A bzImage on the fast path: decompressed on the host.
    BzImageFast(Compression),
    /// A bzImage on the classic path, entered at its 64-bit entry.
    BzImageClassic,
    /// A bzImage without a 64-bit entry, entered through the 32-bit boot
    /// protocol (the classic path: the kernel decompresses itself).
    BzImage32,
    /// A vmlinux ELF given directly.
    Vmlinux,
}

/// What [`load_linux`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxBoot {
    /// The state to start the CPU in.
    pub cpu: BootCpuState,
    pub kind: KernelKind,
    /// Physical entry point (also `cpu.rip`).
    pub entry: u64,
    /// Physical range the kernel occupies or reserves while booting.
    pub kernel_start: u64,
    pub kernel_end: u64,
    /// Physical range (start, end) of the kernel's `.text` section, which
    /// stays code for the kernel's lifetime (unlike `.init.text` and the
    /// padding after `.text`), when the host loaded its ELF image and it has
    /// section headers (fast path, vmlinux); empty on the
    /// classic path, where the kernel places itself.
    pub code: Vec<(u64, u64)>,
    /// Where the initrd was placed and its size.
    pub initrd: Option<(u64, u64)>,
    pub zero_page: u64,
    pub cmdline_addr: u64,
    /// The boot protocol version in the zero page.
    pub protocol: u16,
}

/// Where the initrd goes: page-aligned, as high as allowed. `initrd_addr_max`
/// is the highest byte address the kernel accepts, `ram_end` the end of low
/// RAM, `kernel_end` the end of everything the kernel occupies.
pub fn place_initrd(size: u64, initrd_addr_max: u32, ram_end: u64, kernel_end: u64) -> Result<u64, LinuxError> {
    let highest = (u64::from(initrd_addr_max) + 1).min(ram_end);
    let lowest = kernel_end.checked_next_multiple_of(PAGE_SIZE).ok_or(LinuxError::Overflow { field: "kernel end" })?;
    let start = highest.checked_sub(size).map(|s| s / PAGE_SIZE * PAGE_SIZE);
    match start {
        Some(start) if start >= lowest => Ok(start),
        _ => Err(LinuxError::InitrdDoesNotFit { size, lowest, highest }),
    }
}

/// Load a Linux kernel (bzImage or vmlinux ELF) with its command line and
/// initrd, and build the 64-bit entry state.
pub fn load_linux(mem: &GuestMemory, cfg: &LinuxBootConfig<'_>) -> Result<LinuxBoot, LinuxError> {
    let ram_end = mem.ram_size().min(PCI_HOLE_START);
    // The kernel's `.text` (as the section headers give it, translated to
    // a physical address through its segment): the padding after it, up to
    // the read-only data, is freed after boot and becomes ordinary memory.
    let code_of = |elf: &crate::elf::LoadedElf, image: &[u8]| -> Vec<(u64, u64)> {
        let Some((addr, size)) = crate::elf::section(image, ".text") else { return Vec::new() };
        elf.segments
            .iter()
            .filter(|s| s.executable && addr >= s.vaddr && addr - s.vaddr < s.memsz)
            .map(|s| {
                let start = addr - s.vaddr + s.paddr;
                (start, start + size.min(s.memsz - (addr - s.vaddr)))
            })
            .collect()
    };
    let mut code = Vec::new();
    let (header, kind, entry, kernel_start, kernel_end) = if is_elf(cfg.kernel) {
        let elf = load_elf(mem, cfg.kernel, EM_X86_64, HIMEM_START)?;
        code = code_of(&elf, cfg.kernel);
        (SetupHeader::for_vmlinux(elf.start, elf.end), KernelKind::Vmlinux, elf.entry, elf.start, elf.end)
    } else {
        let bz = BzImage::parse(cfg.kernel)?;
        let fast = match cfg.path {
            BootPath::Classic => None,
            BootPath::Fast => Some(fast_path_vmlinux(&bz)?),
            BootPath::Auto => match fast_path_vmlinux(&bz) {
                Ok(v) => Some(v),
                Err(e) => match fast_path_falls_back(&e) {
                    Some(why) => {
                        tracing::info!("the fast path cannot boot this kernel, {why}: booting it on the classic path");
                        None
                    }
                    None => return Err(e),
                },
            },
        };
        match fast {
            Some((compression, vmlinux)) => {
                let elf = load_elf(mem, &vmlinux, EM_X86_64, HIMEM_START)?;
                code = code_of(&elf, &vmlinux);
                tracing::debug!(%compression, size = vmlinux.len(), entry = elf.entry, "vmlinux decompressed on the host");
                (bz.header, KernelKind::BzImageFast(compression), elf.entry, elf.start, elf.end)
            }
            None => load_classic(mem, &bz, ram_end)?,
        }
    };

    let (initrd, cmdline_addr) = write_zero_page(mem, cfg, &header, kernel_end, ram_end)?;
    let mut cpu = if kind == KernelKind::BzImage32 {
        // boot.rst, "32-bit BOOT PROTOCOL": flat __BOOT_CS/__BOOT_DS, paging
        // and interrupts off, ESI = boot_params, EBP = EDI = EBX = 0.
        write_boot_gdt(mem, BootMode::Protected32)?;
        BootCpuState::protected32(entry)
    } else {
        write_boot_gdt(mem, BootMode::Long64)?;
        let cr3 = write_identity_page_tables(mem)?;
        BootCpuState::long64(entry, cr3)
    };
    cpu.rsi = ZERO_PAGE_ADDR;
    cpu.rsp = BOOT_STACK_POINTER;
    Ok(LinuxBoot {
        cpu,
        kind,
        entry,
        kernel_start,
        kernel_end,
        code,
        initrd,
        zero_page: ZERO_PAGE_ADDR,
        cmdline_addr,
        protocol: header.version,
    })
}

/// The fast path's vmlinux: the decompressed payload of a 64-bit bzImage,
/// or why the fast path cannot boot this kernel.
fn fast_path_vmlinux<'a>(bz: &BzImage<'a>) -> Result<(Compression, std::borrow::Cow<'a, [u8]>), LinuxError> {
    let h = &bz.header;
    if !h.has_64bit_entry() {
        return Err(LinuxError::FastNeeds64Bit { version: h.version, xloadflags: h.xloadflags });
    }
    let payload = bz.payload.ok_or(LinuxError::NoPayload(h.version))?;
    let (compression, vmlinux) = decompress_payload(payload)?;
    // e_machine at offset 18 of the ELF header.
    if !is_elf(&vmlinux) || vmlinux.get(18..20) != Some(&EM_X86_64.to_le_bytes()[..]) {
        return Err(LinuxError::PayloadNotVmlinux);
    }
    Ok((compression, vmlinux))
}

/// Why the default path boots a kernel classic when the fast path gives
/// `e`: a reason when the fast path cannot handle the kernel, `None` when the
/// image is corrupt (the classic path would fail inside the guest).
fn fast_path_falls_back(e: &LinuxError) -> Option<String> {
    match e {
        LinuxError::FastNeeds64Bit { .. } => Some("a 32-bit kernel (XLF_KERNEL_64 clear)".into()),
        LinuxError::NoPayload(v) => Some(format!("no compressed payload fields (boot protocol {v:#06x})")),
        LinuxError::PayloadNotVmlinux => Some("the payload is not an x86-64 ELF vmlinux".into()),
        LinuxError::Decompress(DecompressError::Unsupported(c)) => Some(format!("a {c}-compressed payload")),
        LinuxError::Decompress(DecompressError::UnknownFormat(_)) => Some("an unknown payload compression".into()),
        _ => None,
    }
}

/// The classic path: the protected-mode kernel at 1 MiB, entered at +0x200
/// in long mode, or at its start (`code32_start`) through the 32-bit boot
/// protocol when it has no 64-bit entry.
fn load_classic(
    mem: &GuestMemory,
    bz: &BzImage<'_>,
    ram_end: u64,
) -> Result<(SetupHeader, KernelKind, u64, u64, u64), LinuxError> {
    let h = &bz.header;
    let load = BZIMAGE_LOAD_ADDR;
    let image_end = load.checked_add(bz.kernel.len() as u64).ok_or(LinuxError::Overflow { field: "kernel size" })?;
    // The kernel decompresses itself to max(load, pref_address) (aligned) and
    // needs init_size bytes from there.
    let run_base = h.pref_address.max(load);
    let run_end = run_base.checked_add(u64::from(h.init_size)).ok_or(LinuxError::Overflow { field: "init_size" })?;
    let end = image_end.max(run_end);
    if end > ram_end {
        return Err(LinuxError::KernelDoesNotFit { start: load, end, ram_end });
    }
    mem.load(load, bz.kernel)?;
    if h.has_64bit_entry() {
        Ok((h.clone(), KernelKind::BzImageClassic, load + STARTUP_64_OFFSET, load, end))
    } else {
        // code32_start names the load address; the kernel is where it says
        // (a bzImage's is 1 MiB), or the header is rewritten to say so.
        let mut h = h.clone();
        h.set_code32_start(load as u32);
        Ok((h, KernelKind::BzImage32, load, load, end))
    }
}

/// Write the zero page, the command line and the initrd. Returns the initrd
/// placement and the command line address.
fn write_zero_page(
    mem: &GuestMemory,
    cfg: &LinuxBootConfig<'_>,
    header: &SetupHeader,
    kernel_end: u64,
    ram_end: u64,
) -> Result<(Option<(u64, u64)>, u64), LinuxError> {
    let zp = ZERO_PAGE_ADDR;
    let cmdline = cfg.cmdline.as_bytes();
    if let Some(i) = cmdline.iter().position(|&b| b == 0) {
        return Err(LinuxError::CmdlineNul(i));
    }
    let max = u64::from(header.cmdline_size).min(CMDLINE_AREA_SIZE - 1);
    if cmdline.len() as u64 > max {
        return Err(LinuxError::CmdlineTooLong { len: cmdline.len(), max });
    }
    let e820 = match &cfg.e820 {
        Some(map) => map.clone(),
        None => e820_for_memory(mem)?,
    };
    if e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(LinuxError::TooManyE820Entries(e820.len()));
    }
    let initrd = match cfg.initrd {
        Some(data) if !data.is_empty() => {
            let size = data.len() as u64;
            let addr = place_initrd(size, header.initrd_addr_max, ram_end, kernel_end)?;
            Some((addr, size))
        }
        _ => None,
    };

    mem.fill(zp, ZERO_PAGE_SIZE, 0)?;
    mem.write(zp + HDR_START as u64, header.raw())?;
    let field = |off: usize| zp + off as u64;
    mem.write_u8(field(TYPE_OF_LOADER), LOADER_TYPE_UNDEFINED)?;
    // KASLR_FLAG is the decompressor's to set, never the loader's.
    mem.write_u8(field(LOADFLAGS), header.loadflags & !KASLR_FLAG)?;
    mem.write(CMDLINE_ADDR, cmdline)?;
    mem.write_u8(CMDLINE_ADDR + cmdline.len() as u64, 0)?;
    // Below 4 GiB: the ext_cmd_line_ptr high half stays zero.
    mem.write_u32(field(CMD_LINE_PTR), CMDLINE_ADDR as u32)?;
    if let Some((addr, size)) = initrd {
        if let Some(data) = cfg.initrd {
            mem.write(addr, data)?;
        }
        // place_initrd keeps it below 4 GiB (initrd_addr_max is 32-bit).
        mem.write_u32(field(RAMDISK_IMAGE), addr as u32)?;
        mem.write_u32(
            field(RAMDISK_SIZE),
            u32::try_from(size).map_err(|_| LinuxError::Overflow { field: "initrd size" })?,
        )?;
    }
    if let Some(rsdp) = cfg.acpi_rsdp {
        mem.write_u64(zp + ZP_ACPI_RSDP_ADDR, rsdp)?;
    }
    mem.write_u32(zp + ZP_ALT_MEM_K, lower_upper_kib(&e820).1)?;
    // Checked above: at most 128 entries.
    mem.write_u8(zp + ZP_E820_ENTRIES, e820.len() as u8)?;
    let mut table = Vec::with_capacity(e820.len() * E820Entry::SIZE);
    for e in &e820 {
        table.extend_from_slice(&e.to_bytes());
    }
    mem.write(zp + ZP_E820_TABLE, &table)?;
    Ok((initrd, CMDLINE_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{BOOT_CS, BOOT_DS, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA};
    use crate::decompress::tests::{gzip, lz4_legacy_frame, sample, xz_bcj, zstd};
    use crate::elf::tests::{build_elf, TestSeg};

    const MIB: u64 = 1 << 20;

    /// A vmlinux-like ELF: a text segment at 16 MiB (entered physically, as
    /// `phys_startup_64`) and a data + bss segment after it.
    fn vmlinux() -> Vec<u8> {
        let mut text = sample(64 * 1024);
        text[0] = 0xf4; // hlt at the entry
        build_elf(
            true,
            EM_X86_64,
            0x100_0000,
            &[
                TestSeg { vaddr: 0xffff_ffff_8100_0000, paddr: 0x100_0000, data: text, memsz: 64 * 1024 },
                TestSeg { vaddr: 0xffff_ffff_8120_0000, paddr: 0x120_0000, data: vec![0x11; 4096], memsz: 0x10_0000 },
            ],
        )
    }

    struct Fake {
        version: u16,
        setup_sects: u8,
        xloadflags: u16,
        payload: Vec<u8>,
    }

    impl Default for Fake {
        fn default() -> Self {
            Fake { version: 0x020f, setup_sects: 2, xloadflags: XLF_KERNEL_64 | 2, payload: gzip(&vmlinux()) }
        }
    }

    /// A bzImage around `payload`: boot sector + setup sectors with the
    /// header, then protected-mode code = 0x300 bytes of stub + payload + 4.
    fn bzimage(f: &Fake) -> Vec<u8> {
        let sects = if f.setup_sects == 0 { 4 } else { f.setup_sects } as usize;
        let setup = (sects + 1) * 512;
        let stub = 0x300usize;
        let mut img = vec![0u8; setup];
        img[SETUP_SECTS] = f.setup_sects;
        img[BOOT_FLAG..BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[JUMP] = JMP_SHORT;
        img[JUMP + 1] = (HDR_END_2_15 - HEADER) as u8;
        img[HEADER..HEADER + 4].copy_from_slice(b"HdrS");
        img[VERSION..VERSION + 2].copy_from_slice(&f.version.to_le_bytes());
        img[LOADFLAGS] = LOADED_HIGH | 0x80;
        img[CODE32_START..CODE32_START + 4].copy_from_slice(&0x10_0000u32.to_le_bytes());
        img[INITRD_ADDR_MAX..INITRD_ADDR_MAX + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[KERNEL_ALIGNMENT..KERNEL_ALIGNMENT + 4].copy_from_slice(&0x20_0000u32.to_le_bytes());
        img[RELOCATABLE_KERNEL] = 1;
        img[XLOADFLAGS..XLOADFLAGS + 2].copy_from_slice(&f.xloadflags.to_le_bytes());
        img[CMDLINE_SIZE..CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&(stub as u32).to_le_bytes());
        img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&(f.payload.len() as u32).to_le_bytes());
        img[PREF_ADDRESS..PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
        img[INIT_SIZE..INIT_SIZE + 4].copy_from_slice(&0x40_0000u32.to_le_bytes());
        let mut pm = vec![0x90u8; stub];
        pm.extend_from_slice(&f.payload);
        pm.extend_from_slice(&[0xcc; 4]); // the CRC the kernel build appends
        let syssize = (pm.len() as u32).div_ceil(16);
        img[SYSSIZE..SYSSIZE + 4].copy_from_slice(&syssize.to_le_bytes());
        img.extend_from_slice(&pm);
        img
    }

    fn cfg<'a>(kernel: &'a [u8], path: BootPath) -> LinuxBootConfig<'a> {
        LinuxBootConfig { kernel, cmdline: "console=ttyS0 quiet", path, ..Default::default() }
    }

    #[test]
    fn header_is_parsed() {
        let img = bzimage(&Fake::default());
        let bz = BzImage::parse(&img).unwrap();
        let h = &bz.header;
        assert_eq!(h.version, 0x020f);
        assert_eq!(h.setup_sects, 2);
        assert_eq!(h.setup_size(), 3 * 512);
        assert!(h.has_64bit_entry());
        assert!(h.relocatable_kernel);
        assert_eq!((h.pref_address, h.init_size, h.cmdline_size), (0x100_0000, 0x40_0000, 2047));
        assert_eq!(h.raw().len(), HDR_END_2_15 - HDR_START);
        assert_eq!(bz.payload.unwrap(), &Fake::default().payload[..]);
        assert_eq!(bz.kernel.len(), img.len() - 3 * 512);
    }

    #[test]
    fn setup_sects_zero_means_four() {
        let img = bzimage(&Fake { setup_sects: 0, ..Default::default() });
        let bz = BzImage::parse(&img).unwrap();
        assert_eq!(bz.header.setup_sects, 4);
        assert_eq!(bz.kernel.len(), img.len() - 5 * 512);
        assert!(bz.payload.is_some());
    }

    #[test]
    fn header_errors_name_the_problem() {
        let good = bzimage(&Fake::default());
        let err = |img: &[u8]| BzImage::parse(img).unwrap_err();

        assert!(matches!(err(&good[..0x100]), LinuxError::Truncated { field: "setup header", .. }));
        assert!(matches!(err(&good[..0x220]), LinuxError::Truncated { field: "setup header", need: 0x26c, .. }));

        let mut bad = good.clone();
        bad[HEADER] = b'X';
        assert_eq!(err(&bad), LinuxError::BadMagic(*b"XdrS"));

        let mut bad = good.clone();
        bad[BOOT_FLAG] = 0;
        assert_eq!(err(&bad), LinuxError::BadBootFlag(0xaa00));

        let old = bzimage(&Fake { version: 0x0204, ..Default::default() });
        assert_eq!(err(&old), LinuxError::OldProtocol(0x0204));
        assert!(err(&old).to_string().contains("2.04"));

        let mut bad = good.clone();
        bad[JUMP + 1] = 0x20; // header "ends" at 0x222, before cmdline_size
        assert!(matches!(err(&bad), LinuxError::HeaderTooShort { end: 0x222, .. }));

        let mut bad = good.clone();
        bad[LOADFLAGS] = 0;
        assert_eq!(err(&bad), LinuxError::NotBzImage);

        // setup_sects larger than the image.
        let mut bad = good[..0x600].to_vec();
        bad[SETUP_SECTS] = 255;
        let e = err(&bad);
        assert!(matches!(e, LinuxError::Truncated { field: "setup_sects", need: 0x20001, .. }), "{e}");
        assert!(e.to_string().contains("setup_sects"));

        // The protected-mode code is cut short of syssize.
        let e = err(&good[..good.len() - 100]);
        assert!(matches!(e, LinuxError::Truncated { field: "syssize", .. }), "{e}");

        // The payload reaches past the image.
        let mut bad = good.clone();
        let len = le32(&bad, PAYLOAD_LENGTH) + 8;
        bad[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(err(&bad), LinuxError::Truncated { field: "payload_offset + payload_length", .. }));
        let mut bad = good.clone();
        bad[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        bad[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(err(&bad), LinuxError::Truncated { .. }));
    }

    #[test]
    fn fast_path_loads_the_vmlinux_and_fills_the_zero_page() {
        let mem = GuestMemory::new(128 * MIB).unwrap();
        let img = bzimage(&Fake::default());
        let initrd = vec![0x5a; 3 * 4096 + 17];
        let boot = load_linux(
            &mem,
            &LinuxBootConfig { initrd: Some(&initrd), acpi_rsdp: Some(0xe0000), ..cfg(&img, BootPath::Fast) },
        )
        .unwrap();
        assert_eq!(boot.kind, KernelKind::BzImageFast(Compression::Gzip));
        assert_eq!(boot.entry, 0x100_0000);
        assert_eq!((boot.kernel_start, boot.kernel_end), (0x100_0000, 0x130_0000));
        assert_eq!(mem.read_u8(0x100_0000).unwrap(), 0xf4);
        assert_eq!(mem.read_u8(0x120_0fff).unwrap(), 0x11);
        assert_eq!(mem.read_u8(0x120_1000).unwrap(), 0);

        let cpu = &boot.cpu;
        assert_eq!(cpu.mode, BootMode::Long64);
        assert_eq!((cpu.rip, cpu.rsi, cpu.rsp), (0x100_0000, ZERO_PAGE_ADDR, BOOT_STACK_POINTER));
        assert_eq!((cpu.cs.selector, cpu.ds.selector, cpu.ss.selector), (BOOT_CS, BOOT_DS, BOOT_DS));
        assert!(cpu.cr0 & CR0_PG != 0 && cpu.cr4 & CR4_PAE != 0 && cpu.efer & EFER_LMA != 0);
        assert_eq!(cpu.cr3, crate::boot::BOOT_PML4_ADDR);

        let zp = ZERO_PAGE_ADDR;
        let at = |off: usize| zp + off as u64;
        assert_eq!(mem.read_u16(at(BOOT_FLAG)).unwrap(), 0xaa55);
        assert_eq!(mem.read_u32(at(HEADER)).unwrap(), u32::from_le_bytes(*b"HdrS"));
        assert_eq!(mem.read_u16(at(VERSION)).unwrap(), 0x020f);
        assert_eq!(mem.read_u8(at(TYPE_OF_LOADER)).unwrap(), 0xff);
        assert_eq!(mem.read_u32(at(CMD_LINE_PTR)).unwrap(), CMDLINE_ADDR as u32);
        let mut line = vec![0u8; 20];
        mem.read(CMDLINE_ADDR, &mut line).unwrap();
        assert_eq!(&line, b"console=ttyS0 quiet\0");
        let (addr, size) = boot.initrd.unwrap();
        assert_eq!(size, initrd.len() as u64);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 128 * MIB && addr + size > 128 * MIB - 4096);
        assert_eq!(mem.read_u32(at(RAMDISK_IMAGE)).unwrap(), addr as u32);
        assert_eq!(mem.read_u32(at(RAMDISK_SIZE)).unwrap(), size as u32);
        assert_eq!(mem.read_u8(addr + size - 1).unwrap(), 0x5a);
        assert_eq!(mem.read_u64(zp + ZP_ACPI_RSDP_ADDR).unwrap(), 0xe0000);
        assert_eq!(mem.read_u8(zp + ZP_E820_ENTRIES).unwrap(), 4);
        let e = |i: u64, f: u64| mem.read_u64(zp + ZP_E820_TABLE + i * 20 + f).unwrap();
        assert_eq!((e(3, 0), e(3, 8)), (HIMEM_START, 127 * MIB));
        assert_eq!(mem.read_u32(zp + ZP_E820_TABLE + 3 * 20 + 16).unwrap(), 1);
        assert_eq!(mem.read_u32(zp + ZP_ALT_MEM_K).unwrap(), 127 * 1024);
        // The GDT the state points at holds the code segment.
        let cs = mem.read_u64(cpu.gdt_base + u64::from(BOOT_CS)).unwrap();
        assert_eq!(crate::boot::SegmentDesc::from_descriptor(BOOT_CS, cs), cpu.cs);
    }

    #[test]
    fn fast_path_handles_every_compression() {
        let elf = vmlinux();
        for (payload, c) in [
            (xz_bcj(&elf), Compression::Xz),
            (lz4_legacy_frame(&elf, 8 << 20), Compression::Lz4),
            (zstd(&elf), Compression::Zstd),
            (elf.clone(), Compression::Uncompressed),
        ] {
            let mem = GuestMemory::new(64 * MIB).unwrap();
            let img = bzimage(&Fake { payload, ..Default::default() });
            let boot = load_linux(&mem, &cfg(&img, BootPath::Fast)).unwrap();
            assert_eq!(boot.kind, KernelKind::BzImageFast(c));
            assert_eq!(boot.entry, 0x100_0000);
            assert_eq!(mem.read_u8(0x100_0000).unwrap(), 0xf4);
        }
    }

    #[test]
    fn classic_path_enters_startup_64() {
        let mem = GuestMemory::new(64 * MIB).unwrap();
        let img = bzimage(&Fake::default());
        let boot = load_linux(&mem, &cfg(&img, BootPath::Classic)).unwrap();
        assert_eq!(boot.kind, KernelKind::BzImageClassic);
        assert_eq!(boot.cpu.rip, 0x10_0200);
        assert_eq!(boot.kernel_start, 0x10_0000);
        // pref_address 16 MiB + init_size 4 MiB.
        assert_eq!(boot.kernel_end, 0x140_0000);
        let setup = 3 * 512;
        let mut got = vec![0u8; 64];
        mem.read(0x10_0000, &mut got).unwrap();
        assert_eq!(&got[..], &img[setup..setup + 64]);

        // Too little RAM for init_size.
        let small = GuestMemory::new(16 * MIB).unwrap();
        assert!(matches!(
            load_linux(&small, &cfg(&img, BootPath::Classic)),
            Err(LinuxError::KernelDoesNotFit { end: 0x140_0000, .. })
        ));
    }

    #[test]
    fn a_32bit_kernel_enters_through_the_32bit_protocol() {
        let mem = GuestMemory::new(64 * MIB).unwrap();
        // No XLF_KERNEL_64: a 32-bit kernel (Debian's 686 has xloadflags 0x4).
        let img = bzimage(&Fake { xloadflags: 0x4, ..Default::default() });
        for path in [BootPath::Classic, BootPath::Auto] {
            let boot = load_linux(&mem, &cfg(&img, path)).unwrap();
            assert_eq!(boot.kind, KernelKind::BzImage32, "{path:?}");
            let cpu = &boot.cpu;
            assert_eq!(cpu.mode, BootMode::Protected32);
            // Entered at code32_start, the protected-mode kernel at 1 MiB.
            assert_eq!((boot.entry, cpu.rip, boot.kernel_start), (0x10_0000, 0x10_0000, 0x10_0000));
            assert_eq!(mem.read_u32(ZERO_PAGE_ADDR + CODE32_START as u64).unwrap(), 0x10_0000);
            let setup = 3 * 512;
            assert_eq!(mem.read_u8(0x10_0000).unwrap(), img[setup]);
            // ESI = boot_params; EBP = EDI = EBX = 0; interrupts and paging off.
            assert_eq!((cpu.rsi, cpu.rbp, cpu.rdi, cpu.rbx), (ZERO_PAGE_ADDR, 0, 0, 0));
            assert_eq!(cpu.rflags & (1 << 9), 0);
            assert_eq!(cpu.cr0 & (CR0_PE | CR0_PG), CR0_PE);
            assert_eq!((cpu.cr4, cpu.efer), (0, 0));
            // Flat 4 GiB __BOOT_CS (execute/read, 32-bit) and __BOOT_DS (read/write).
            assert_eq!((cpu.cs.selector, cpu.ds.selector, cpu.es.selector, cpu.ss.selector), (0x10, 0x18, 0x18, 0x18));
            assert!(cpu.cs.db && !cpu.cs.l && cpu.cs.base == 0 && cpu.cs.limit == 0xffff_ffff);
            assert_eq!(cpu.cs.type_ & 0xa, 0xa);
            assert_eq!(cpu.ds.type_ & 0xa, 0x2);
            // ... and the GDT in memory says the same.
            for seg in [cpu.cs, cpu.ds] {
                let d = mem.read_u64(cpu.gdt_base + u64::from(seg.selector)).unwrap();
                assert_eq!(crate::boot::SegmentDesc::from_descriptor(seg.selector, d), seg);
            }
            assert_eq!(mem.read_u16(ZERO_PAGE_ADDR + BOOT_FLAG as u64).unwrap(), 0xaa55);
            assert_eq!(mem.read_u32(ZERO_PAGE_ADDR + CMD_LINE_PTR as u64).unwrap(), CMDLINE_ADDR as u32);
        }
        // An explicit fast path refuses it, naming the way out.
        let e = load_linux(&mem, &cfg(&img, BootPath::Fast)).unwrap_err();
        assert_eq!(e, LinuxError::FastNeeds64Bit { version: 0x020f, xloadflags: 0x4 });
        assert!(e.to_string().contains("--kernel-boot classic or auto"), "{e}");
    }

    #[test]
    fn the_default_path_falls_back_to_classic_by_itself() {
        let mem = GuestMemory::new(64 * MIB).unwrap();
        let kind = |img: &[u8], path| load_linux(&mem, &cfg(img, path)).map(|b| b.kind);
        // A 64-bit kernel the fast path handles: fast.
        let good = bzimage(&Fake::default());
        assert_eq!(kind(&good, BootPath::Auto), Ok(KernelKind::BzImageFast(Compression::Gzip)));
        // A compression the host does not decode (bzip2).
        let bz2 = bzimage(&Fake { payload: b"BZh91AY&SY-not-really".to_vec(), ..Default::default() });
        assert_eq!(kind(&bz2, BootPath::Auto), Ok(KernelKind::BzImageClassic));
        assert!(matches!(kind(&bz2, BootPath::Fast), Err(LinuxError::Decompress(DecompressError::Unsupported(_)))));
        // A compression nobody knows.
        let odd = bzimage(&Fake { payload: b"\x12\x34unknown-format".to_vec(), ..Default::default() });
        assert_eq!(kind(&odd, BootPath::Auto), Ok(KernelKind::BzImageClassic));
        assert!(matches!(kind(&odd, BootPath::Fast), Err(LinuxError::Decompress(DecompressError::UnknownFormat(_)))));
        // A payload of length 0 (memtest86+x64.bin: protocol 2.12, XLF_KERNEL_64).
        let f = Fake { version: 0x020c, payload: Vec::new(), ..Default::default() };
        let img = bzimage(&f);
        assert_eq!(kind(&img, BootPath::Auto), Ok(KernelKind::BzImageClassic));
        assert_eq!(kind(&img, BootPath::Fast), Err(LinuxError::NoPayload(0x020c)));
        // Protocol 2.06: no payload fields, and no xloadflags (before 2.12), so
        // no 64-bit entry either: the 32-bit protocol.
        let img = bzimage(&Fake { version: 0x0206, ..Default::default() });
        assert_eq!(kind(&img, BootPath::Auto), Ok(KernelKind::BzImage32));
        assert_eq!(kind(&img, BootPath::Fast), Err(LinuxError::FastNeeds64Bit { version: 0x0206, xloadflags: 0 }));
        // A payload that decompresses to something other than an x86-64 ELF.
        let not_elf = bzimage(&Fake { payload: gzip(&sample(4096)), ..Default::default() });
        assert_eq!(kind(&not_elf, BootPath::Auto), Ok(KernelKind::BzImageClassic));
        assert_eq!(kind(&not_elf, BootPath::Fast), Err(LinuxError::PayloadNotVmlinux));
        // A corrupt payload is an error on every path but classic.
        let mut bad = gzip(&vmlinux());
        let n = bad.len();
        bad[n / 2..n - 8].fill(0);
        let corrupt = bzimage(&Fake { payload: bad, ..Default::default() });
        assert!(matches!(kind(&corrupt, BootPath::Auto), Err(LinuxError::Decompress(_))));
        assert_eq!(kind(&corrupt, BootPath::Classic), Ok(KernelKind::BzImageClassic));
        // The decision itself.
        let why = |e: LinuxError| fast_path_falls_back(&e);
        assert_eq!(
            why(LinuxError::FastNeeds64Bit { version: 0x20f, xloadflags: 4 }).unwrap(),
            "a 32-bit kernel (XLF_KERNEL_64 clear)"
        );
        assert_eq!(why(LinuxError::NoPayload(0x20c)).unwrap(), "no compressed payload fields (boot protocol 0x020c)");
        assert_eq!(
            why(LinuxError::Decompress(DecompressError::Unsupported(Compression::Bzip2))).unwrap(),
            "a bzip2-compressed payload"
        );
        assert_eq!(why(LinuxError::CmdlineNul(0)), None);
        assert_eq!(why(LinuxError::Decompress(DecompressError::TooShort(3))), None);
    }

    /// The 32-bit Debian kernel and memtest86+ from scripts/guest-images.sh go
    /// classic on the default path: 32-bit entry for the one, 64-bit for the
    /// other (memtest86+x64.bin has XLF_KERNEL_64 and no payload).
    #[test]
    fn real_kernels_the_fast_path_cannot_take_go_classic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images");
        for (name, kind, entry) in [
            ("vmlinuz-686", KernelKind::BzImage32, 0x10_0000),
            ("memtest86+x64.bin", KernelKind::BzImageClassic, 0x10_0200),
        ] {
            let Ok(kernel) = std::fs::read(dir.join(name)) else {
                println!("skipping: guest-images/{name} missing (run scripts/guest-images.sh)");
                continue;
            };
            let mem = GuestMemory::new(512 * MIB).unwrap();
            let boot = load_linux(
                &mem,
                &LinuxBootConfig { kernel: &kernel, cmdline: "console=ttyS0,115200", ..Default::default() },
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((boot.kind, boot.entry), (kind, entry), "{name}");
            assert!(load_linux(&mem, &LinuxBootConfig { kernel: &kernel, path: BootPath::Fast, ..Default::default() })
                .is_err());
            println!(
                "{name}: {:?}, protocol {:#x}, entry {:#x}, kernel ..{:#x}",
                boot.kind, boot.protocol, boot.entry, boot.kernel_end
            );
        }
    }

    #[test]
    fn a_vmlinux_boots_directly() {
        let mem = GuestMemory::new(64 * MIB).unwrap();
        let elf = vmlinux();
        let boot = load_linux(&mem, &cfg(&elf, BootPath::Classic)).unwrap();
        assert_eq!(boot.kind, KernelKind::Vmlinux);
        assert_eq!(boot.entry, 0x100_0000);
        assert_eq!(boot.protocol, OWN_PROTOCOL);
        assert_eq!(mem.read_u32(ZERO_PAGE_ADDR + HEADER as u64).unwrap(), u32::from_le_bytes(*b"HdrS"));
        assert_eq!(mem.read_u16(ZERO_PAGE_ADDR + BOOT_FLAG as u64).unwrap(), 0xaa55);
        assert_eq!(mem.read_u32(ZERO_PAGE_ADDR + CMDLINE_SIZE as u64).unwrap(), 2047);
        assert_eq!(mem.read_u8(ZERO_PAGE_ADDR + TYPE_OF_LOADER as u64).unwrap(), 0xff);
    }

    #[test]
    fn command_line_limits() {
        let mem = GuestMemory::new(64 * MIB).unwrap();
        let img = bzimage(&Fake::default());
        let long = "x".repeat(2048);
        let e = load_linux(&mem, &LinuxBootConfig { cmdline: &long, ..cfg(&img, BootPath::Fast) }).unwrap_err();
        assert_eq!(e, LinuxError::CmdlineTooLong { len: 2048, max: 2047 });
        assert!(load_linux(&mem, &LinuxBootConfig { cmdline: &long[..2047], ..cfg(&img, BootPath::Fast) }).is_ok());
        let e = load_linux(&mem, &LinuxBootConfig { cmdline: "a\0b", ..cfg(&img, BootPath::Fast) }).unwrap_err();
        assert_eq!(e, LinuxError::CmdlineNul(1));
    }

    #[test]
    fn initrd_placement_limits() {
        // Bounded by the end of RAM.
        assert_eq!(place_initrd(0x1000, 0x7fff_ffff, 128 * MIB, 0x200_0000).unwrap(), 128 * MIB - 0x1000);
        // Page-aligned down.
        assert_eq!(place_initrd(0x1001, 0x7fff_ffff, 128 * MIB, 0x200_0000).unwrap(), 128 * MIB - 0x2000);
        // Bounded by initrd_addr_max (the highest byte), not by 3 GiB of RAM.
        assert_eq!(place_initrd(MIB, 0x37ff_ffff, 3 << 30, 0x200_0000).unwrap(), 0x3800_0000 - MIB);
        // An initrd that would overlap the kernel.
        assert_eq!(
            place_initrd(100 * MIB, 0x7fff_ffff, 128 * MIB, 0x200_0001),
            Err(LinuxError::InitrdDoesNotFit { size: 100 * MIB, lowest: 0x200_1000, highest: 128 * MIB })
        );
        assert_eq!(place_initrd(96 * MIB, 0x7fff_ffff, 128 * MIB, 0x200_0000).unwrap(), 0x200_0000);
        assert!(place_initrd(u64::MAX, 0x7fff_ffff, 128 * MIB, 0).is_err());
        // Through load_linux: too big for 32 MiB of RAM above an 19 MiB kernel.
        let mem = GuestMemory::new(32 * MIB).unwrap();
        let img = bzimage(&Fake::default());
        let big = vec![1u8; (14 * MIB) as usize];
        let e = load_linux(&mem, &LinuxBootConfig { initrd: Some(&big), ..cfg(&img, BootPath::Fast) }).unwrap_err();
        assert!(matches!(e, LinuxError::InitrdDoesNotFit { .. }), "{e}");
    }

    /// Both Debian kernels that scripts/guest-images.sh fetches, on both paths.
    #[test]
    fn real_debian_kernels_load_on_both_paths() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images");
        for (name, compression) in [("vmlinuz-cloud", Compression::Lz4), ("vmlinuz-generic", Compression::Xz)] {
            let path = dir.join(name);
            let Ok(kernel) = std::fs::read(&path) else {
                println!("skipping: guest-images/{name} missing (run scripts/guest-images.sh)");
                continue;
            };
            let initrd = std::fs::read(dir.join("initramfs.cpio.gz")).ok();
            let bz = BzImage::parse(&kernel).unwrap();
            assert!(bz.header.has_64bit_entry() && bz.header.relocatable_kernel, "{name}");
            for path in [BootPath::Fast, BootPath::Classic] {
                let mem = GuestMemory::new(512 * MIB).unwrap();
                let boot = load_linux(
                    &mem,
                    &LinuxBootConfig {
                        kernel: &kernel,
                        initrd: initrd.as_deref(),
                        cmdline: "console=ttyS0 panic=-1",
                        path,
                        ..Default::default()
                    },
                )
                .unwrap_or_else(|e| panic!("{name} {path:?}: {e}"));
                match path {
                    BootPath::Fast => {
                        assert_eq!(boot.kind, KernelKind::BzImageFast(compression), "{name}");
                        // phys_startup_64 at CONFIG_PHYSICAL_START.
                        assert_eq!(boot.entry, bz.header.pref_address, "{name}");
                        assert_eq!(boot.kernel_start, 0x100_0000, "{name}");
                    }
                    BootPath::Classic | BootPath::Auto => {
                        assert_eq!(boot.kind, KernelKind::BzImageClassic);
                        assert_eq!(boot.entry, 0x10_0200);
                    }
                }
                assert_eq!(boot.cpu.rip, boot.entry);
                let zp = ZERO_PAGE_ADDR;
                assert_eq!(mem.read_u16(zp + VERSION as u64).unwrap(), bz.header.version);
                assert_eq!(mem.read_u32(zp + HEADER as u64).unwrap(), u32::from_le_bytes(*b"HdrS"));
                assert_eq!(mem.read_u8(zp + TYPE_OF_LOADER as u64).unwrap(), 0xff);
                assert_eq!(mem.read_u32(zp + CMD_LINE_PTR as u64).unwrap(), CMDLINE_ADDR as u32);
                assert_eq!(mem.read_u8(zp + ZP_E820_ENTRIES).unwrap(), 4);
                assert_eq!(mem.read_u32(zp + INIT_SIZE as u64).unwrap(), bz.header.init_size);
                if let (Some(rd), Some((addr, size))) = (&initrd, boot.initrd) {
                    assert_eq!(size, rd.len() as u64);
                    assert!(addr >= boot.kernel_end && addr + size <= 512 * MIB);
                    assert_eq!(mem.read_u32(zp + RAMDISK_IMAGE as u64).unwrap(), addr as u32);
                }
                println!(
                    "{name} {path:?}: entry {:#x}, kernel {:#x}..{:#x}",
                    boot.entry, boot.kernel_start, boot.kernel_end
                );
            }
        }
    }
}
