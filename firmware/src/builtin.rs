//! The built-in guest: a small program that ferrovm generates itself with
//! iced-x86's `CodeAssembler` and boots when no kernel is given.
//!
//! It walks the CPU through every mode transition a PC makes (real mode ->
//! 32-bit protected mode -> 64-bit long mode -> ring 3 and back through an
//! interrupt gate) and runs a fixed integer workload in ring 3 that can be timed.
//!
//! # What it runs on
//!
//! * RAM from physical 0, at least [`MIN_RAM`] bytes.
//! * This ROM, [`ROM_SIZE`] bytes mapped at [`ROM_BASE`]; the CPU resets to
//!   `0xFFFF_FFF0` (CS selector 0xF000, CS base 0xFFFF_0000, IP 0xFFF0).
//! * A 16550 UART at I/O port [`UART_BASE`] (LSR bit 5 is polled before each
//!   byte; the UART is not programmed, its reset state is used as is).
//! * QEMU's `isa-debug-exit` at I/O port [`DEBUG_EXIT_PORT`]: writing `v`
//!   ends the emulator with status `(v << 1) | 1`. The guest writes one byte
//!   (`out 0xf4, al`): [`EXIT_OK`] (0, status 1) after printing the checksum,
//!   `EXIT_EXCEPTION_BASE + vector` (status `0x21 + 2 * vector`) from an
//!   exception handler. If no debug-exit device is present it halts with
//!   interrupts disabled.
//! * Optionally, a VGA-compatible display controller on PCI bus 0 (class
//!   0300, as QEMU's standard VGA): found by PCI configuration mechanism #1
//!   (ports 0xCF8/0xCFC). The guest has no VGA BIOS; it is the machine's
//!   firmware, so it does what a PC's VGA BIOS does at power-on: it turns on
//!   the function's I/O and memory decoding, sets text mode 3 through the
//!   VGA's registers (80x25, 9x16 cells, the EGA palette in the DAC), loads
//!   the VGA's 8x16 font into plane 2 and clears the screen. Then every character it
//!   prints on COM1 also goes into the text memory at [`VGA_TEXT_BASE`] in
//!   attribute [`VGA_ATTRIBUTE`] (light grey on black), and each newline
//!   moves the hardware cursor. Without one, it prints on COM1 only; the
//!   serial output is the same either way.
//!
//! # Boot path
//!
//! 1. Reset vector (`0xFFFF_FFF0`): a near `jmp` to the 16-bit code lower in
//!    the ROM. A real-mode far jump would reload CS with `selector << 4` and
//!    leave the ROM (nothing is aliased below 1 MiB on this machine), so the
//!    first far jump is the one that enters protected mode.
//! 2. 16-bit: `cli`, `o32 lgdt cs:[..]` (the GDT template in ROM),
//!    CR0.PE, `o32 jmp far 0x08:entry32`.
//! 3. [`BuiltinGuest::entry32`]: reloads the GDT (read through CS: on the
//!    reset path DS still has its real-mode 64 KiB limit) and flat data segments,
//!    builds identity page tables for the first 4 GiB with 2 MiB pages
//!    (every level P|RW|US) at [`PAGE_TABLES`], sets CR4.PAE, CR3, EFER.LME,
//!    CR0.PG (clearing CR0.CD/NW), `jmp far 0x10:entry64`.
//! 4. [`BuiltinGuest::entry64`]: copies the GDT to RAM ([`GDT_RAM`]), loads
//!    it and reloads CS (`jmp far m16:32`) and the data segments, sets up a
//!    TSS in RAM ([`TSS_RAM`], RSP0 = [`KERNEL_STACK_TOP`]) and `ltr`, loads an
//!    IDT (vectors 0..31, in ROM) whose handlers print
//!    `ferrovm guest: exception N at 0x<rip>` and exit, sets up the VGA if
//!    there is one (see above; [`VGA_CURSOR`] keeps where text goes), prints [`BANNER`],
//!    sets EFER.SCE, STAR, LSTAR and SFMASK and enters ring 3 with `sysretq`
//!    (RFLAGS = 0x2, interrupts stay disabled; user stack at
//!    [`USER_STACK_TOP`]).
//! 5. Ring 3: fills [`DATA_QWORDS`] qwords at [`DATA_BASE`] with xorshift64
//!    from [`SEED`] and folds them into a checksum (see
//!    [`expected_checksum`]), then `int3` with the checksum in RAX: vector 3
//!    is a DPL-3 interrupt gate to the report handler. (An interrupt gate
//!    rather than `syscall`, because KVM on hosts with software nested
//!    virtualization intercepts `syscall` from ring 3, while `int3` through
//!    the guest's IDT is delivered natively.)
//! 6. Ring 0 prints `ferrovm guest: checksum 0x%016x` and exits with
//!    [`EXIT_OK`].
//!
//! The workload runs about 7.34 million instructions (9 per qword to fill,
//! 5 per qword to checksum); everything else adds about 22 thousand, most of
//! it the page-table loops. The PCI scan and the cursor checks of `putc`
//! add about 900; with a VGA, setting it up and writing the text add about
//! 11 thousand more (its registers, font and screen).
//!
//! Only common integer instructions are used (see [`used_mnemonics`]): no
//! SSE, no string instructions, no `cpuid`.

use std::collections::BTreeSet;

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, Code, Decoder, DecoderOptions, IcedError, Instruction, MemoryOperand, Register};

/// Linear (and physical) address where the ROM is mapped.
pub const ROM_BASE: u64 = 0xFFFF_0000;
/// Size of the ROM in bytes (64 KiB); [`BuiltinGuest::rom`] has exactly this length.
pub const ROM_SIZE: u64 = 0x1_0000;
/// The line the guest prints once it runs in 64-bit long mode (followed by `\n`).
pub const BANNER: &str = "ferrovm guest: real -> protected -> long mode ok";
/// The least RAM the guest needs (it touches memory up to 0x0140_0000).
pub const MIN_RAM: u64 = 32 << 20;

/// I/O port of the 16550 UART the guest prints to (THR; LSR is at +5).
pub const UART_BASE: u16 = 0x3f8;
/// I/O port of QEMU's `isa-debug-exit` device.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Value written to [`DEBUG_EXIT_PORT`] after a successful run (QEMU exit status 1).
pub const EXIT_OK: u8 = 0;
/// An exception handler writes this plus the vector number to [`DEBUG_EXIT_PORT`].
pub const EXIT_EXCEPTION_BASE: u8 = 0x10;

/// Physical address of the page tables (PML4, PDPT, then four page directories).
pub const PAGE_TABLES: u64 = 0x1_0000;
/// Physical address of the GDT copy that long mode loads (it holds the TSS descriptor).
pub const GDT_RAM: u64 = 0x1_6000;
/// Physical address of the 64-bit TSS.
pub const TSS_RAM: u64 = 0x1_6080;
/// Initial ring-0 stack pointer (also TSS.RSP0 and the `syscall` handler's stack).
pub const KERNEL_STACK_TOP: u64 = 0x1_F000;
/// Ring-3 stack pointer set before `sysretq`.
pub const USER_STACK_TOP: u64 = 0x2_8000;
/// Physical address of the workload buffer.
pub const DATA_BASE: u64 = 0x0100_0000;
/// Number of 64-bit values the workload generates and checksums (4 MiB).
pub const DATA_QWORDS: u64 = 524_288;
/// xorshift64 seed of the workload.
pub const SEED: u64 = 0x243F_6A88_85A3_08D3;
/// Initial value of the checksum accumulator.
pub const CHECKSUM_INIT: u64 = 0xCBF2_9CE4_8422_2325;
/// Multiplier of the checksum mix.
pub const CHECKSUM_MUL: u64 = 0x9E37_79B9_7F4A_7C15;
/// Rotate count of the checksum mix.
pub const CHECKSUM_ROT: u32 = 23;

/// Prefix of the checksum line the guest prints.
const CHECKSUM_PREFIX: &str = "ferrovm guest: checksum 0x";
/// Prefix of the line an exception handler prints.
const EXCEPTION_PREFIX: &str = "ferrovm guest: exception ";

// GDT selectors (same layout in the ROM template and the RAM copy).
const SEL_CODE32: u16 = 0x08;
const SEL_CODE64: u16 = 0x10;
const SEL_DATA: u16 = 0x18;
/// STAR[63:48]: `sysretq` loads SS = this + 8 and CS = this + 16 (RPL 3).
const SEL_USER_BASE: u16 = 0x20;
const SEL_TSS: u16 = 0x38;

// ROM layout (offsets from ROM_BASE). Code and data never share a range.
const CODE64_OFF: u64 = 0x0000;
const CODE64_MAX: u64 = 0x1000;
const CODE32_OFF: u64 = 0x1000;
const CODE32_MAX: u64 = 0x0400;
const GDT_OFF: u64 = 0x2000;
const GDTR32_OFF: u64 = 0x2050;
const GDTR64_OFF: u64 = 0x2060;
const IDTR_OFF: u64 = 0x2070;
const FARPTR_OFF: u64 = 0x2080;
const STR_BANNER_OFF: u64 = 0x2100;
const STR_CHECKSUM_OFF: u64 = 0x2140;
const STR_EXCEPTION_OFF: u64 = 0x2180;
const STR_AT_OFF: u64 = 0x21C0;
const IDT_OFF: u64 = 0x2200;
const VGA_MODE3_OFF: u64 = 0x2400;
const VGA_MODE3_MAX: u64 = 0x0400;
const VGA_FONT_ON_OFF: u64 = 0x2800;
const VGA_FONT_OFF_OFF: u64 = 0x2840;
const VGA_FONT_TOGGLE_MAX: u64 = 0x0040;
const VGA_FONT_OFF: u64 = 0x3000;
const VGA_FONT_MAX: u64 = 0x1000;
const CODE16_OFF: u64 = 0xFF00;
const CODE16_MAX: u64 = 0x00F0;
const RESET_OFF: u64 = 0xFFF0;
/// Fill byte of unused ROM (`ff ff` decodes as an invalid `FF /7`: #UD if run).
const ROM_FILL: u8 = 0xFF;

/// Number of IDT vectors installed (the CPU exceptions).
const IDT_VECTORS: u64 = 32;
/// Exceptions that push an error code.
const ERROR_CODE_VECTORS: [u64; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];

const PML4: u64 = PAGE_TABLES;
const PDPT: u64 = PAGE_TABLES + 0x1000;
const PD: u64 = PAGE_TABLES + 0x2000;
/// Present | writable | user.
const PTE_PRW_US: u64 = 0x7;
/// Present | writable | user | 2 MiB page.
const PDE_LARGE: u64 = 0x87;

const MSR_EFER: u32 = 0xC000_0080;
const MSR_STAR: u32 = 0xC000_0081;
const MSR_LSTAR: u32 = 0xC000_0082;
const MSR_SFMASK: u32 = 0xC000_0084;
/// RFLAGS bits cleared on `syscall`: TF, IF, DF, IOPL, NT, AC.
const SFMASK: u32 = 0x4_7700;

// ---- The VGA (IBM VGA Technical Reference; QEMU's standard VGA).
/// Where the text mode's characters and attributes are (mode 3: 80x25 cells
/// of two bytes, character then attribute).
pub const VGA_TEXT_BASE: u64 = 0xB_8000;
/// The attribute of the guest's text: light grey on black.
pub const VGA_ATTRIBUTE: u8 = 0x07;
/// Columns of text mode 3.
pub const VGA_COLS: u32 = 80;
/// Rows of text mode 3.
pub const VGA_ROWS: u32 = 25;
/// Physical address of the VGA cursor: the byte offset from
/// [`VGA_TEXT_BASE`] where the next character goes (a dword), `u32::MAX`
/// when the machine has no VGA.
pub const VGA_CURSOR: u64 = 0x1_6100;
/// [`VGA_CURSOR`]'s value on a machine without a VGA: past every screen, so
/// `putc` writes to COM1 only.
const NO_VGA: u32 = u32::MAX;
/// Bytes of the text screen.
const VGA_SCREEN_BYTES: u32 = VGA_COLS * VGA_ROWS * 2;
/// Bytes of one text row.
const VGA_ROW_BYTES: u32 = VGA_COLS * 2;
/// The VGA memory window, where plane 2 (the font) is written.
const VGA_WINDOW: u64 = 0xA_0000;
/// Glyphs in the font, and the lines of each (text mode 3's 16).
const FONT_GLYPHS: u32 = 256;
const FONT_LINES: usize = crate::vga_font::LINES;
/// Bytes between glyphs in plane 2.
const FONT_SLOT: i32 = 32;
/// PCI configuration mechanism #1 (PCI Local Bus 3.0, 3.2.2.3.2), bus 0.
const PCI_CONFIG_ADDRESS: u16 = 0xCF8;
const PCI_CONFIG_DATA: u16 = 0xCFC;
/// CONFIG_ADDRESS of bus 0, device 0, function 0, register 8 (class code
/// and revision), and the step to the next device.
const PCI_BUS0_CLASS: u32 = 0x8000_0008;
const PCI_DEVICE_STEP: u32 = 0x800;
/// Class code and subclass (register 8 bits 31:16) of a VGA-compatible
/// display controller.
const PCI_CLASS_VGA: u32 = 0x0300;
/// Command register bits: I/O space and memory space decode.
const PCI_COMMAND_IO_MEM: u32 = 0x3;
/// Register 4 (command) is 4 bytes below register 8 (class).
const PCI_COMMAND_FROM_CLASS: i32 = 4;

/// The VGA ports the guest's register tables name, by their low byte (the
/// high byte is 0x03: colour addressing, as MISC selects).
mod vga_port {
    /// Attribute controller index and data (a flip-flop picks which).
    pub const AR: u8 = 0xC0;
    /// Miscellaneous output (write).
    pub const MISC: u8 = 0xC2;
    /// Sequencer index and data.
    pub const SR_INDEX: u8 = 0xC4;
    pub const SR_DATA: u8 = 0xC5;
    /// DAC write index and data (three 6-bit components an entry).
    pub const DAC_INDEX: u8 = 0xC8;
    pub const DAC_DATA: u8 = 0xC9;
    /// Graphics controller index and data.
    pub const GR_INDEX: u8 = 0xCE;
    pub const GR_DATA: u8 = 0xCF;
    /// CRT controller index and data.
    pub const CR_INDEX: u8 = 0xD4;
    pub const CR_DATA: u8 = 0xD5;
    /// Input status 1: in a table, a read, which resets the attribute
    /// controller's flip-flop to "index".
    pub const ST1: u8 = 0xDA;
}

/// Text mode 3 (IBM VGA Technical Reference, the BIOS's video parameter
/// table for modes 2+ and 3+; SeaVGABIOS's `vgamodes` has the same bytes):
/// 80x25 characters of 9x16 dots, 720x400 pixels, colour.
const MODE3_MISC: u8 = 0x67;
/// SR1-SR4: 9-dot characters, planes 0 and 1 written, font map 0, odd/even.
const MODE3_SR: [u8; 4] = [0x00, 0x03, 0x00, 0x02];
const MODE3_CR: [u8; 25] = [
    0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E, 0x00, 0x00, 0x00, 0x00, 0x9C, 0x8E, 0x8F,
    0x28, 0x1F, 0x96, 0xB9, 0xA3, 0xFF,
];
/// AR0-AR14: the EGA palette, line graphics and blink, all planes, no
/// panning, colour select 0.
const MODE3_AR: [u8; 21] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F, 0x0C, 0x00, 0x0F,
    0x08, 0x00,
];
/// GR0-GR8: odd/even, the window at 0xB8000 for 32 KiB, text.
const MODE3_GR: [u8; 9] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0E, 0x0F, 0xFF];
/// AR index bit 5: the palette address source is the display (the screen on).
const AR_PAS: u8 = 0x20;

/// The port writes (and the [`vga_port::ST1`] reads) that set text mode 3:
/// the sequencer held in reset while MISC changes the clock, the CRTC
/// unlocked (CR11 bit 7) before CR0-CR7, the attribute controller after a
/// flip-flop reset and then on, and the DAC's first 64 entries as the EGA
/// palette (6-bit components: 2/3 for the low bit of a colour, 1/3 for the
/// high one).
fn vga_mode3_table() -> Vec<(u8, u8)> {
    use vga_port::*;
    let mut t = vec![(SR_INDEX, 0), (SR_DATA, 0x01), (MISC, MODE3_MISC)];
    for (i, &v) in (1u8..).zip(&MODE3_SR) {
        t.extend([(SR_INDEX, i), (SR_DATA, v)]);
    }
    t.extend([(SR_INDEX, 0), (SR_DATA, 0x03), (CR_INDEX, 0x11), (CR_DATA, MODE3_CR[0x11] & 0x7F)]);
    for (i, &v) in (0u8..).zip(&MODE3_CR) {
        t.extend([(CR_INDEX, i), (CR_DATA, v)]);
    }
    t.push((ST1, 0));
    for (i, &v) in (0u8..).zip(&MODE3_AR) {
        t.extend([(AR, i), (AR, v)]);
    }
    t.push((AR, AR_PAS));
    for (i, &v) in (0u8..).zip(&MODE3_GR) {
        t.extend([(GR_INDEX, i), (GR_DATA, v)]);
    }
    t.push((DAC_INDEX, 0));
    for i in 0u8..64 {
        let level = |low: u8, high: u8| 42 * ((i >> low) & 1) + 21 * ((i >> high) & 1);
        t.extend([(DAC_DATA, level(2, 5)), (DAC_DATA, level(1, 4)), (DAC_DATA, level(0, 3))]);
    }
    t
}

/// The port writes that open plane 2 (the font) at 0xA0000 for plain
/// byte writes (`on`), or give the text mode its odd/even window back.
fn vga_font_access(on: bool) -> Vec<(u8, u8)> {
    use vga_port::*;
    let (map_mask, memory_mode, read_map, gr_mode, gr_misc) = if on {
        (0x04, 0x06, 0x02, 0x00, 0x04)
    } else {
        (MODE3_SR[1], MODE3_SR[3], MODE3_GR[4], MODE3_GR[5], MODE3_GR[6])
    };
    vec![
        (SR_INDEX, 0),
        (SR_DATA, 0x01),
        (SR_INDEX, 2),
        (SR_DATA, map_mask),
        (SR_INDEX, 4),
        (SR_DATA, memory_mode),
        (SR_INDEX, 0),
        (SR_DATA, 0x03),
        (GR_INDEX, 4),
        (GR_DATA, read_map),
        (GR_INDEX, 5),
        (GR_DATA, gr_mode),
        (GR_INDEX, 6),
        (GR_DATA, gr_misc),
    ]
}

/// A table of port writes as the ROM keeps it: two bytes each.
fn table_bytes(t: &[(u8, u8)]) -> Vec<u8> {
    t.iter().flat_map(|&(port, value)| [port, value]).collect()
}

/// The flat segment descriptors, all with the accessed bit preset so the CPU
/// never writes the ROM copy. Index 7..8 is the 64-bit TSS descriptor.
const GDT: [u64; 9] = [
    0,
    0x00CF_9B00_0000_FFFF, // 0x08 ring-0 code, 32-bit, flat
    0x00AF_9B00_0000_FFFF, // 0x10 ring-0 code, 64-bit
    0x00CF_9300_0000_FFFF, // 0x18 ring-0 data, flat
    0x00CF_FB00_0000_FFFF, // 0x20 ring-3 code, 32-bit (placeholder for STAR)
    0x00CF_F300_0000_FFFF, // 0x28 ring-3 data
    0x00AF_FB00_0000_FFFF, // 0x30 ring-3 code, 64-bit
    tss_descriptor_low(TSS_RAM, 0x67),
    TSS_RAM >> 32,
];

const fn tss_descriptor_low(base: u64, limit: u64) -> u64 {
    (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (0x89 << 40) // present, DPL 0, available 64-bit TSS
        | (((limit >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56)
}

/// The built-in guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinGuest {
    /// The ROM contents, exactly [`ROM_SIZE`] bytes, to map at [`ROM_BASE`].
    pub rom: Vec<u8>,
    /// Linear address of the 32-bit protected-mode entry. Expects CS to be a
    /// flat 32-bit code segment, paging off, interrupts off; it loads its own
    /// GDT and data segments. The reset path flows through it.
    pub entry32: u64,
    /// Linear address of the 64-bit entry. Expects flat 64-bit long mode with
    /// the first 4 GiB identity-mapped (2 MiB pages, P|RW|US at every level)
    /// and interrupts off; it loads its own GDT, TSS and IDT and a stack.
    /// The reset path flows through it.
    pub entry64: u64,
}

/// Errors from building the built-in guest.
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    /// iced-x86 rejected an instruction or could not encode the code.
    #[error("cannot assemble the built-in guest: {0}")]
    Asm(#[from] IcedError),
    /// A code chunk outgrew the ROM range reserved for it.
    #[error(
        "built-in guest {what} code is {len} bytes but only {max} are reserved at ROM offset {offset:#x}; move the ROM layout constants"
    )]
    Layout {
        /// Which chunk.
        what: &'static str,
        /// Its assembled length.
        len: usize,
        /// The room reserved for it.
        max: u64,
        /// Its ROM offset.
        offset: u64,
    },
}

/// One assembled range of code in the ROM.
#[derive(Debug, Clone)]
struct Chunk {
    bitness: u32,
    /// The IP the code was assembled for (segment offset in 16-bit code,
    /// linear address otherwise).
    ip: u64,
    bytes: Vec<u8>,
}

/// The ROM plus where its code is.
struct Image {
    guest: BuiltinGuest,
    chunks: Vec<Chunk>,
}

/// Builds the built-in guest.
///
/// # Errors
///
/// [`BuiltinError::Asm`] if iced-x86 rejects the code (a bug), or
/// [`BuiltinError::Layout`] if a chunk does not fit its ROM range.
pub fn build() -> Result<BuiltinGuest, BuiltinError> {
    Ok(assemble()?.guest)
}

/// The checksum the guest prints, computed on the host.
#[must_use]
pub fn expected_checksum() -> u64 {
    let mut x = SEED;
    let mut h = CHECKSUM_INIT;
    for _ in 0..DATA_QWORDS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        h = (h ^ x).rotate_left(CHECKSUM_ROT).wrapping_mul(CHECKSUM_MUL);
    }
    h
}

/// The checksum line as the guest prints it, without the newline:
/// `ferrovm guest: checksum 0x` and 16 lower-case hex digits.
#[must_use]
pub fn checksum_line(sum: u64) -> String {
    format!("{CHECKSUM_PREFIX}{sum:016x}")
}

/// Finds the first checksum line in the guest's serial output and returns
/// the checksum, or `None` if there is none. Carriage returns and text before
/// the prefix on the same line are tolerated; the 16 hex digits are required.
#[must_use]
pub fn parse_checksum(serial_output: &str) -> Option<u64> {
    serial_output.lines().find_map(|line| {
        let start = line.find(CHECKSUM_PREFIX)? + CHECKSUM_PREFIX.len();
        let digits = line.get(start..start + 16)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(digits, 16).ok()
    })
}

/// The sorted set of iced-x86 [`Code`] values the guest's code uses, as
/// `"<bitness>:<Code name>"` (for example `"64:Sysretq"`), found by decoding
/// every code range of the ROM. This is the list an interpreter must
/// implement to run the built-in guest.
///
/// # Errors
///
/// The same as [`build`].
pub fn used_mnemonics() -> Result<Vec<String>, BuiltinError> {
    let image = assemble()?;
    let mut set = BTreeSet::new();
    for chunk in &image.chunks {
        for instr in decode_chunk(chunk) {
            set.insert(format!("{}:{:?}", chunk.bitness, instr.code()));
        }
    }
    Ok(set.into_iter().collect())
}

fn decode_chunk(chunk: &Chunk) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(chunk.bitness, &chunk.bytes, chunk.ip, DecoderOptions::NONE);
    decoder.iter().collect()
}

const fn rom_addr(off: u64) -> u64 {
    ROM_BASE + off
}

/// A ROM or RAM address as a 32-bit immediate (all fit: ROM is below 4 GiB).
fn imm32(addr: u64) -> u32 {
    u32::try_from(addr).expect("built-in guest addresses are below 4 GiB")
}

fn assemble() -> Result<Image, BuiltinError> {
    let mut rom = vec![ROM_FILL; usize::try_from(ROM_SIZE).expect("64 KiB fits usize")];
    let mut chunks = Vec::new();

    // ---- 64-bit code first: its label addresses fill the IDT and far pointer.
    let (code64, labels) = assemble64()?;
    chunks.push(place(&mut rom, "64-bit", 64, CODE64_OFF, CODE64_MAX, rom_addr(CODE64_OFF), code64)?);
    chunks.push(place(&mut rom, "32-bit", 32, CODE32_OFF, CODE32_MAX, rom_addr(CODE32_OFF), assemble32()?)?);
    chunks.push(place(&mut rom, "16-bit", 16, CODE16_OFF, CODE16_MAX, CODE16_OFF, assemble16()?)?);
    chunks.push(place(&mut rom, "reset vector", 16, RESET_OFF, 16, RESET_OFF, assemble_reset()?)?);

    // ---- Data.
    let put = |rom: &mut [u8], off: u64, bytes: &[u8]| {
        let off = usize::try_from(off).expect("ROM offset fits usize");
        rom[off..off + bytes.len()].copy_from_slice(bytes);
    };
    let gdt: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    let gdt_limit = u16::try_from(gdt.len() - 1).expect("GDT is small");
    put(&mut rom, GDT_OFF, &gdt);
    // 6-byte pseudo-descriptor for `o32 lgdt` in 16- and 32-bit code: the ROM GDT.
    let mut gdtr32 = gdt_limit.to_le_bytes().to_vec();
    gdtr32.extend_from_slice(&imm32(rom_addr(GDT_OFF)).to_le_bytes());
    put(&mut rom, GDTR32_OFF, &gdtr32);
    // 10-byte pseudo-descriptor for 64-bit lgdt: the RAM copy.
    let mut gdtr64 = gdt_limit.to_le_bytes().to_vec();
    gdtr64.extend_from_slice(&GDT_RAM.to_le_bytes());
    put(&mut rom, GDTR64_OFF, &gdtr64);
    // IDT (in ROM; the CPU only reads it) and its pseudo-descriptor.
    let mut idt = Vec::new();
    for (vector, handler) in labels.vectors.iter().enumerate() {
        // Vector 3 (`int3`) is how ring 3 reports back, so ring 3 may use it.
        let dpl = if vector == usize::from(REPORT_VECTOR) { 3 } else { 0 };
        idt.extend_from_slice(&interrupt_gate(*handler, dpl));
    }
    let idt_limit = u16::try_from(idt.len() - 1).expect("IDT is small");
    put(&mut rom, IDT_OFF, &idt);
    let mut idtr = idt_limit.to_le_bytes().to_vec();
    idtr.extend_from_slice(&rom_addr(IDT_OFF).to_le_bytes());
    put(&mut rom, IDTR_OFF, &idtr);
    // m16:32 far pointer used to reload CS in long mode.
    let mut farptr = imm32(labels.reload_cs).to_le_bytes().to_vec();
    farptr.extend_from_slice(&SEL_CODE64.to_le_bytes());
    put(&mut rom, FARPTR_OFF, &farptr);
    // NUL-terminated strings.
    put(&mut rom, STR_BANNER_OFF, format!("{BANNER}\n\0").as_bytes());
    put(&mut rom, STR_CHECKSUM_OFF, format!("{CHECKSUM_PREFIX}\0").as_bytes());
    put(&mut rom, STR_EXCEPTION_OFF, format!("{EXCEPTION_PREFIX}\0").as_bytes());
    put(&mut rom, STR_AT_OFF, b" at 0x\0");
    // The VGA's register tables and font, each checked against its room.
    for (what, off, max, bytes) in [
        ("VGA mode 3 table", VGA_MODE3_OFF, VGA_MODE3_MAX, table_bytes(&vga_mode3_table())),
        ("VGA font access table", VGA_FONT_ON_OFF, VGA_FONT_TOGGLE_MAX, table_bytes(&vga_font_access(true))),
        ("VGA font release table", VGA_FONT_OFF_OFF, VGA_FONT_TOGGLE_MAX, table_bytes(&vga_font_access(false))),
        ("VGA font", VGA_FONT_OFF, VGA_FONT_MAX, crate::vga_font::font_8x16()),
    ] {
        if bytes.len() as u64 > max {
            return Err(BuiltinError::Layout { what, len: bytes.len(), max, offset: off });
        }
        put(&mut rom, off, &bytes);
    }

    Ok(Image { guest: BuiltinGuest { rom, entry32: rom_addr(CODE32_OFF), entry64: rom_addr(CODE64_OFF) }, chunks })
}

fn place(
    rom: &mut [u8],
    what: &'static str,
    bitness: u32,
    offset: u64,
    max: u64,
    ip: u64,
    bytes: Vec<u8>,
) -> Result<Chunk, BuiltinError> {
    if bytes.len() as u64 > max {
        return Err(BuiltinError::Layout { what, len: bytes.len(), max, offset });
    }
    let start = usize::try_from(offset).expect("ROM offset fits usize");
    rom[start..start + bytes.len()].copy_from_slice(&bytes);
    tracing::debug!(what, bitness, offset, len = bytes.len(), "built-in guest code placed");
    Ok(Chunk { bitness, ip, bytes })
}

/// The vector ring 3 raises (`int3`) to hand the checksum back to ring 0.
const REPORT_VECTOR: u8 = 3;

/// A 64-bit interrupt gate to `handler` in the ring-0 64-bit code segment,
/// callable by software from privilege `dpl`.
fn interrupt_gate(handler: u64, dpl: u8) -> [u8; 16] {
    let low = (handler & 0xFFFF)
        | (u64::from(SEL_CODE64) << 16)
        | ((0x8E | (u64::from(dpl & 3) << 5)) << 40) // present, DPL, 64-bit interrupt gate, IST 0
        | (((handler >> 16) & 0xFFFF) << 48);
    let high = handler >> 32;
    let mut gate = [0; 16];
    gate[..8].copy_from_slice(&low.to_le_bytes());
    gate[8..].copy_from_slice(&high.to_le_bytes());
    gate
}

/// Addresses inside the 64-bit code that the ROM data refers to.
struct Labels64 {
    reload_cs: u64,
    vectors: Vec<u64>,
}

/// The 16-bit code at `CODE16_OFF` (CS base is 0xFFFF_0000, so IP = ROM offset).
fn assemble16() -> Result<Vec<u8>, BuiltinError> {
    let mut a = CodeAssembler::new(16)?;
    a.cli()?;
    // o32 lgdt cs:[GDTR32_OFF]: the 32-bit form so the whole 32-bit base is loaded.
    a.add_instruction(Instruction::with1(
        Code::Lgdt_m1632,
        MemoryOperand::new(
            Register::None,
            Register::None,
            1,
            i64::try_from(GDTR32_OFF).expect("small"),
            2,
            false,
            Register::CS,
        ),
    )?)?;
    a.mov(eax, cr0)?;
    a.or(al, 1)?;
    a.mov(cr0, eax)?;
    // o32 jmp far 0x08:entry32
    a.add_instruction(Instruction::with_far_branch(Code::Jmp_ptr1632, SEL_CODE32, imm32(rom_addr(CODE32_OFF)))?)?;
    Ok(a.assemble(CODE16_OFF)?)
}

/// The reset vector at 0xFFF0: a near jump to the 16-bit code.
fn assemble_reset() -> Result<Vec<u8>, BuiltinError> {
    let mut a = CodeAssembler::new(16)?;
    a.jmp(CODE16_OFF)?;
    Ok(a.assemble(RESET_OFF)?)
}

/// The 32-bit code: `entry32`.
fn assemble32() -> Result<Vec<u8>, BuiltinError> {
    let mut a = CodeAssembler::new(32)?;
    a.cli()?;
    // Through CS: on the reset path DS still has its real-mode 64 KiB limit
    // here; CS is flat on both paths.
    a.lgdt(ptr(imm32(rom_addr(GDTR32_OFF))).cs())?;
    a.mov(eax, u32::from(SEL_DATA))?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(fs, ax)?;
    a.mov(gs, ax)?;
    a.mov(ss, ax)?;

    // Zero the PML4 and the PDPT (2 pages = 2048 dwords).
    let mut zero = a.create_label();
    a.mov(edi, imm32(PML4))?;
    a.xor(eax, eax)?;
    a.mov(ecx, 2048u32)?;
    a.set_label(&mut zero)?;
    a.mov(dword_ptr(edi), eax)?;
    a.add(edi, 4)?;
    a.dec(ecx)?;
    a.jnz(zero)?;
    // PML4[0] -> PDPT.
    a.mov(dword_ptr(imm32(PML4)), imm32(PDPT | PTE_PRW_US) as i32)?;
    // PDPT[0..4] -> the four page directories.
    let mut pdpt = a.create_label();
    a.mov(edi, imm32(PDPT))?;
    a.mov(eax, imm32(PD | PTE_PRW_US))?;
    a.mov(ecx, 4u32)?;
    a.set_label(&mut pdpt)?;
    a.mov(dword_ptr(edi), eax)?;
    a.add(eax, 0x1000)?;
    a.add(edi, 8)?;
    a.dec(ecx)?;
    a.jnz(pdpt)?;
    // 2048 PDEs of 2 MiB each: 0..4 GiB identity.
    let mut pde = a.create_label();
    a.mov(edi, imm32(PD))?;
    a.mov(eax, imm32(PDE_LARGE))?;
    a.xor(edx, edx)?;
    a.mov(ecx, 2048u32)?;
    a.set_label(&mut pde)?;
    a.mov(dword_ptr(edi), eax)?;
    a.mov(dword_ptr(edi + 4), edx)?;
    a.add(eax, 0x20_0000)?;
    a.add(edi, 8)?;
    a.dec(ecx)?;
    a.jnz(pde)?;

    // CR4.PAE, CR3, EFER.LME, CR0.PG (and caches on: clear CD and NW).
    a.mov(eax, cr4)?;
    a.or(eax, 0x20)?;
    a.mov(cr4, eax)?;
    a.mov(eax, imm32(PML4))?;
    a.mov(cr3, eax)?;
    a.mov(ecx, MSR_EFER)?;
    a.rdmsr()?;
    a.or(eax, 0x100)?;
    a.wrmsr()?;
    a.mov(eax, cr0)?;
    a.and(eax, 0x9FFF_FFFFu32 as i32)?;
    a.or(eax, 0x8000_0000u32 as i32)?;
    a.mov(cr0, eax)?;
    a.jmp_far(SEL_CODE64, imm32(rom_addr(CODE64_OFF)))?;
    Ok(a.assemble(rom_addr(CODE32_OFF))?)
}

/// The 64-bit code: `entry64`, the ring-3 workload, the `syscall` handler,
/// the exception stubs and the print helpers.
fn assemble64() -> Result<(Vec<u8>, Labels64), BuiltinError> {
    let mut a = CodeAssembler::new(64)?;
    let mut reload_cs = a.create_label();
    let mut user_entry = a.create_label();
    let mut syscall_entry = a.create_label();
    let mut puts = a.create_label();
    let mut putc = a.create_label();
    let mut puthex = a.create_label();
    let mut putdec = a.create_label();
    let mut halt = a.create_label();
    let mut common = a.create_label();
    let mut out_table = a.create_label();

    // ---- entry64: GDT to RAM, reload segments.
    a.cli()?;
    let mut copy = a.create_label();
    a.mov(esi, imm32(rom_addr(GDT_OFF)))?;
    a.mov(edi, imm32(GDT_RAM))?;
    a.mov(ecx, u32::try_from(GDT.len()).expect("small"))?;
    a.set_label(&mut copy)?;
    a.mov(rax, qword_ptr(rsi))?;
    a.mov(qword_ptr(rdi), rax)?;
    a.add(rsi, 8)?;
    a.add(rdi, 8)?;
    a.dec(ecx)?;
    a.jnz(copy)?;
    a.mov(eax, imm32(rom_addr(GDTR64_OFF)))?;
    a.lgdt(ptr(rax))?;
    a.mov(eax, u32::from(SEL_DATA))?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(fs, ax)?;
    a.mov(gs, ax)?;
    a.mov(ss, ax)?;
    a.mov(esp, imm32(KERNEL_STACK_TOP))?;
    a.mov(eax, imm32(rom_addr(FARPTR_OFF)))?;
    a.jmp(fword_ptr(rax))?; // jmp far m16:32 -> SEL_CODE64:reload_cs
    a.set_label(&mut reload_cs)?;

    // TSS: zero it, RSP0, no I/O bitmap.
    let mut ztss = a.create_label();
    a.mov(edi, imm32(TSS_RAM))?;
    a.xor(eax, eax)?;
    a.mov(ecx, 13u32)?; // 104 bytes
    a.set_label(&mut ztss)?;
    a.mov(qword_ptr(rdi), rax)?;
    a.add(rdi, 8)?;
    a.dec(ecx)?;
    a.jnz(ztss)?;
    a.mov(edi, imm32(TSS_RAM))?;
    a.mov(eax, imm32(KERNEL_STACK_TOP))?;
    a.mov(qword_ptr(rdi + 4), rax)?;
    a.mov(word_ptr(rdi + 0x66), 104)?;
    a.mov(eax, u32::from(SEL_TSS))?;
    a.ltr(ax)?;
    a.mov(eax, imm32(rom_addr(IDTR_OFF)))?;
    a.lidt(ptr(rax))?;

    // ---- The VGA, as a VGA BIOS would set it up: find a VGA-compatible
    // function on PCI bus 0, turn on its decoding, set text mode 3, load
    // the font into plane 2 and clear the screen. Without one, the cursor
    // stays past the screen and only COM1 gets text.
    let mut scan = a.create_label();
    let mut found = a.create_label();
    let mut no_vga = a.create_label();
    let mut glyph = a.create_label();
    let mut clear = a.create_label();
    a.mov(edi, imm32(VGA_CURSOR))?;
    a.mov(dword_ptr(rdi), NO_VGA)?;
    a.mov(ecx, PCI_BUS0_CLASS)?;
    a.set_label(&mut scan)?;
    a.mov(eax, ecx)?;
    a.mov(edx, u32::from(PCI_CONFIG_ADDRESS))?;
    a.out(dx, eax)?;
    a.mov(edx, u32::from(PCI_CONFIG_DATA))?;
    a.in_(eax, dx)?;
    a.shr(eax, 16)?;
    a.cmp(eax, PCI_CLASS_VGA as i32)?;
    a.je(found)?;
    a.add(ecx, PCI_DEVICE_STEP as i32)?;
    a.cmp(ecx, (PCI_BUS0_CLASS + 32 * PCI_DEVICE_STEP) as i32)?;
    a.jb(scan)?;
    a.jmp(no_vga)?;
    a.set_label(&mut found)?;
    a.lea(eax, ptr(rcx - PCI_COMMAND_FROM_CLASS))?;
    a.mov(edx, u32::from(PCI_CONFIG_ADDRESS))?;
    a.out(dx, eax)?;
    a.mov(edx, u32::from(PCI_CONFIG_DATA))?;
    a.in_(ax, dx)?;
    a.or(eax, PCI_COMMAND_IO_MEM as i32)?;
    a.out(dx, ax)?;
    let tables = [(VGA_MODE3_OFF, vga_mode3_table().len()), (VGA_FONT_ON_OFF, vga_font_access(true).len())];
    for (off, entries) in tables {
        a.mov(esi, imm32(rom_addr(off)))?;
        a.mov(ecx, u32::try_from(entries).expect("small"))?;
        a.call(out_table)?;
    }
    // The font: 16 lines a glyph from the ROM, 32 bytes apart in plane 2.
    a.mov(esi, imm32(rom_addr(VGA_FONT_OFF)))?;
    a.mov(edi, imm32(VGA_WINDOW))?;
    a.mov(ecx, FONT_GLYPHS)?;
    a.set_label(&mut glyph)?;
    for line in (0..FONT_LINES as i32).step_by(4) {
        a.mov(eax, dword_ptr(rsi + line))?;
        a.mov(dword_ptr(rdi + line), eax)?;
    }
    a.add(rsi, FONT_LINES as i32)?;
    a.add(rdi, FONT_SLOT)?;
    a.dec(ecx)?;
    a.jnz(glyph)?;
    a.mov(esi, imm32(rom_addr(VGA_FONT_OFF_OFF)))?;
    a.mov(ecx, u32::try_from(vga_font_access(false).len()).expect("small"))?;
    a.call(out_table)?;
    // Spaces in the guest's attribute, two cells a store.
    let blank = u32::from(VGA_ATTRIBUTE) << 8 | u32::from(b' ');
    a.mov(edi, imm32(VGA_TEXT_BASE))?;
    a.mov(eax, blank << 16 | blank)?;
    a.mov(ecx, VGA_SCREEN_BYTES / 4)?;
    a.set_label(&mut clear)?;
    a.mov(dword_ptr(rdi), eax)?;
    a.add(rdi, 4)?;
    a.dec(ecx)?;
    a.jnz(clear)?;
    a.mov(edi, imm32(VGA_CURSOR))?;
    a.mov(dword_ptr(rdi), 0u32)?;
    a.set_label(&mut no_vga)?;

    a.mov(esi, imm32(rom_addr(STR_BANNER_OFF)))?;
    a.call(puts)?;

    // syscall/sysret setup.
    a.mov(ecx, MSR_EFER)?;
    a.rdmsr()?;
    a.or(eax, 1)?; // SCE
    a.wrmsr()?;
    a.mov(ecx, MSR_STAR)?;
    a.xor(eax, eax)?;
    a.mov(edx, (u32::from(SEL_USER_BASE) << 16) | u32::from(SEL_CODE64))?;
    a.wrmsr()?;
    a.mov(ecx, MSR_LSTAR)?;
    a.lea(rax, ptr(syscall_entry))?;
    a.xor(edx, edx)?;
    a.wrmsr()?;
    a.mov(ecx, MSR_SFMASK)?;
    a.mov(eax, SFMASK)?;
    a.xor(edx, edx)?;
    a.wrmsr()?;
    // sysretq: RIP = RCX, RFLAGS = R11 (IF stays 0), RSP unchanged.
    a.lea(rcx, ptr(user_entry))?;
    a.mov(r11d, 2u32)?;
    a.mov(esp, imm32(USER_STACK_TOP))?;
    a.sysretq()?;

    // ---- Ring 3 workload.
    let neg_count = -i64::try_from(DATA_QWORDS).expect("small");
    let data_end = i64::try_from(DATA_BASE + DATA_QWORDS * 8).expect("small");
    a.set_label(&mut user_entry)?;
    let mut fill = a.create_label();
    a.mov(rdi, data_end)?;
    a.mov(rcx, neg_count)?;
    a.mov(rax, SEED)?;
    a.set_label(&mut fill)?; // 9 instructions per qword
    a.mov(rdx, rax)?;
    a.shl(rdx, 13)?;
    a.xor(rax, rdx)?;
    a.mov(rdx, rax)?;
    a.shr(rdx, 7)?;
    a.xor(rax, rdx)?;
    a.mov(rdx, rax)?;
    a.shl(rdx, 17)?;
    a.xor(rax, rdx)?;
    a.mov(qword_ptr(rdi + rcx * 8), rax)?;
    a.inc(rcx)?;
    a.jnz(fill)?;
    let mut sum = a.create_label();
    a.mov(rcx, neg_count)?;
    a.mov(rax, CHECKSUM_INIT)?;
    a.mov(rsi, CHECKSUM_MUL)?;
    a.set_label(&mut sum)?; // 5 instructions per qword
    a.xor(rax, qword_ptr(rdi + rcx * 8))?;
    a.rol(rax, CHECKSUM_ROT)?;
    a.imul_2(rax, rsi)?;
    a.inc(rcx)?;
    a.jnz(sum)?;
    a.int3()?; // checksum in RAX

    // ---- report handler (ring 0, vector 3 and LSTAR): print the checksum and exit.
    a.set_label(&mut syscall_entry)?;
    a.mov(esp, imm32(KERNEL_STACK_TOP))?;
    a.mov(r12, rax)?;
    a.mov(esi, imm32(rom_addr(STR_CHECKSUM_OFF)))?;
    a.call(puts)?;
    a.mov(rax, r12)?;
    a.call(puthex)?;
    a.mov(ebx, u32::from(b'\n'))?;
    a.call(putc)?;
    a.xor(eax, eax)?; // EXIT_OK
    a.out(u32::from(DEBUG_EXIT_PORT), al)?;
    a.set_label(&mut halt)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(halt)?;

    // ---- Exception stubs: [rsp] = vector, [rsp+8] = error code, [rsp+16] = RIP.
    let mut vector_labels = Vec::new();
    for vector in 0..IDT_VECTORS {
        let mut label = a.create_label();
        a.set_label(&mut label)?;
        if !ERROR_CODE_VECTORS.contains(&vector) {
            a.push(0)?;
        }
        a.push(i32::try_from(vector).expect("small"))?;
        a.jmp(common)?;
        vector_labels.push(label);
    }
    a.set_label(&mut common)?;
    a.mov(esi, imm32(rom_addr(STR_EXCEPTION_OFF)))?;
    a.call(puts)?;
    a.mov(rax, qword_ptr(rsp))?;
    a.call(putdec)?;
    a.mov(esi, imm32(rom_addr(STR_AT_OFF)))?;
    a.call(puts)?;
    a.mov(rax, qword_ptr(rsp + 16))?;
    a.call(puthex)?;
    a.mov(ebx, u32::from(b'\n'))?;
    a.call(putc)?;
    a.mov(rax, qword_ptr(rsp))?;
    a.add(eax, i32::from(EXIT_EXCEPTION_BASE))?;
    a.out(u32::from(DEBUG_EXIT_PORT), al)?;
    a.jmp(halt)?;

    // ---- puts: RSI -> NUL-terminated string. Clobbers RAX, RBX, RDX, RSI.
    let mut puts_done = a.create_label();
    a.set_label(&mut puts)?;
    a.movzx(ebx, byte_ptr(rsi))?;
    a.test(ebx, ebx)?;
    a.jz(puts_done)?;
    a.call(putc)?;
    a.inc(rsi)?;
    a.jmp(puts)?;
    a.set_label(&mut puts_done)?;
    a.ret()?;

    // ---- puthex: RAX as 16 lower-case hex digits. Clobbers RAX, RBX, RCX, RDX, R8.
    let mut hex_loop = a.create_label();
    let mut hex_digit = a.create_label();
    a.set_label(&mut puthex)?;
    a.mov(r8, rax)?;
    a.mov(ecx, 16u32)?;
    a.set_label(&mut hex_loop)?;
    a.rol(r8, 4)?;
    a.mov(ebx, r8d)?;
    a.and(ebx, 15)?;
    a.cmp(ebx, 10)?;
    a.jb(hex_digit)?;
    a.add(ebx, i32::from(b'a' - b'0' - 10))?;
    a.set_label(&mut hex_digit)?;
    a.add(ebx, i32::from(b'0'))?;
    a.call(putc)?;
    a.dec(ecx)?;
    a.jnz(hex_loop)?;
    a.ret()?;

    // ---- putdec: EAX (< 100) in decimal. Clobbers RAX, RBX, RCX, RDX.
    let mut tens = a.create_label();
    let mut tens_done = a.create_label();
    let mut units = a.create_label();
    a.set_label(&mut putdec)?;
    a.mov(ecx, eax)?;
    a.mov(ebx, u32::from(b'0'))?;
    a.set_label(&mut tens)?;
    a.cmp(ecx, 10)?;
    a.jb(tens_done)?;
    a.sub(ecx, 10)?;
    a.inc(ebx)?;
    a.jmp(tens)?;
    a.set_label(&mut tens_done)?;
    a.cmp(ebx, i32::from(b'0'))?;
    a.je(units)?;
    a.call(putc)?;
    a.set_label(&mut units)?;
    a.lea(ebx, ptr(rcx + i32::from(b'0')))?;
    a.call(putc)?;
    a.ret()?;

    // ---- putc: BL -> UART once THR is empty, and to the VGA's text at
    // the cursor. A newline moves the cursor to the next row and the
    // VGA's hardware cursor (CR0E/CR0F) with it; past the last row, text
    // goes to COM1 only. Clobbers RAX, RDX.
    let mut wait = a.create_label();
    let mut newline = a.create_label();
    let mut column = a.create_label();
    let mut vga_done = a.create_label();
    a.set_label(&mut putc)?;
    a.mov(edx, u32::from(UART_BASE + 5))?;
    a.set_label(&mut wait)?;
    a.in_(al, dx)?;
    a.test(al, 0x20)?;
    a.jz(wait)?;
    a.mov(edx, u32::from(UART_BASE))?;
    a.mov(eax, ebx)?;
    a.out(dx, al)?;
    a.push(rcx)?;
    a.mov(ecx, imm32(VGA_CURSOR))?;
    a.mov(eax, dword_ptr(rcx))?;
    a.cmp(eax, VGA_SCREEN_BYTES as i32)?;
    a.jae(vga_done)?;
    a.cmp(bl, i32::from(b'\n'))?;
    a.je(newline)?;
    a.movzx(edx, bl)?;
    a.or(edx, i32::from(VGA_ATTRIBUTE) << 8)?;
    a.mov(word_ptr(rax + imm32(VGA_TEXT_BASE) as i32), dx)?;
    a.add(eax, 2)?;
    a.mov(dword_ptr(rcx), eax)?;
    a.jmp(vga_done)?;
    a.set_label(&mut newline)?;
    // EDX = the column's bytes (no DIV: at most VGA_ROWS subtractions).
    a.mov(edx, eax)?;
    a.set_label(&mut column)?;
    a.sub(edx, VGA_ROW_BYTES as i32)?;
    a.jae(column)?;
    a.add(edx, VGA_ROW_BYTES as i32)?;
    a.sub(eax, edx)?;
    a.add(eax, VGA_ROW_BYTES as i32)?;
    a.mov(dword_ptr(rcx), eax)?;
    // The hardware cursor: the cell index, high byte in CR0E, low in CR0F.
    a.shr(eax, 1)?;
    a.mov(ecx, eax)?;
    a.mov(edx, 0x300 | u32::from(vga_port::CR_INDEX))?;
    a.mov(al, 0x0E)?;
    a.out(dx, al)?;
    a.inc(edx)?;
    a.mov(al, ch)?;
    a.out(dx, al)?;
    a.dec(edx)?;
    a.mov(al, 0x0F)?;
    a.out(dx, al)?;
    a.inc(edx)?;
    a.mov(al, cl)?;
    a.out(dx, al)?;
    a.set_label(&mut vga_done)?;
    a.pop(rcx)?;
    a.ret()?;

    // ---- out_table: ECX entries of (port low byte, value) at RSI: each
    // writes the value to port 0x300 + the byte, but for input status 1,
    // which is read. Clobbers RAX, RCX, RDX, RSI.
    let mut write = a.create_label();
    let mut next = a.create_label();
    a.set_label(&mut out_table)?;
    a.movzx(edx, byte_ptr(rsi))?;
    a.or(edx, 0x300)?;
    a.cmp(dl, i32::from(vga_port::ST1))?;
    a.jne(write)?;
    a.in_(al, dx)?;
    a.jmp(next)?;
    a.set_label(&mut write)?;
    a.mov(al, byte_ptr(rsi + 1))?;
    a.out(dx, al)?;
    a.set_label(&mut next)?;
    a.add(rsi, 2)?;
    a.dec(ecx)?;
    a.jnz(out_table)?;
    a.ret()?;

    let result = a.assemble_options(rom_addr(CODE64_OFF), BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let labels = Labels64 {
        reload_cs: result.label_ip(&reload_cs)?,
        vectors: vector_labels
            .iter()
            .enumerate()
            .map(
                |(v, l)| {
                    if v == usize::from(REPORT_VECTOR) {
                        result.label_ip(&syscall_entry)
                    } else {
                        result.label_ip(l)
                    }
                },
            )
            .collect::<Result<_, _>>()?,
    };
    Ok((result.inner.code_buffer, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn off(addr: u64) -> usize {
        usize::try_from(addr - ROM_BASE).unwrap()
    }

    #[test]
    fn rom_is_64k_and_reset_vector_jumps_into_rom_code() {
        let g = build().unwrap();
        assert_eq!(g.rom.len() as u64, ROM_SIZE);
        let reset = &g.rom[usize::try_from(RESET_OFF).unwrap()..];
        let mut d = Decoder::with_ip(16, reset, RESET_OFF, DecoderOptions::NONE);
        let jmp = d.decode();
        assert_eq!(jmp.code(), Code::Jmp_rel16);
        assert_eq!(jmp.near_branch_target(), CODE16_OFF);
        // The 16-bit code ends in the o32 far jump to entry32.
        let image = assemble().unwrap();
        let c16 = &image.chunks[2];
        assert_eq!((c16.bitness, c16.ip), (16, CODE16_OFF));
        let last = *decode_chunk(c16).last().unwrap();
        assert_eq!(last.code(), Code::Jmp_ptr1632);
        assert_eq!(u64::from(last.far_branch32()), g.entry32);
        assert_eq!(last.far_branch_selector(), SEL_CODE32);
        // entry32 ends in the far jump to entry64.
        let c32 = &image.chunks[1];
        let last = *decode_chunk(c32).last().unwrap();
        assert_eq!(last.code(), Code::Jmp_ptr1632);
        assert_eq!(u64::from(last.far_branch32()), g.entry64);
        assert_eq!(c32.ip, g.entry32);
        assert_eq!(image.chunks[0].ip, g.entry64);
    }

    #[test]
    fn checksum_matches_independent_host_computation() {
        // Generate the buffer first, then fold it, spelling out rotl.
        let n = usize::try_from(DATA_QWORDS).unwrap();
        let mut buf = Vec::with_capacity(n);
        let mut x: u64 = 0x243F_6A88_85A3_08D3;
        while buf.len() < n {
            x ^= x.wrapping_shl(13);
            x ^= x.wrapping_shr(7);
            x ^= x.wrapping_shl(17);
            buf.push(x);
        }
        // Rotation spelled out on purpose: independent of `rotate_left`.
        #[allow(clippy::manual_rotate)]
        let h = buf.iter().fold(0xCBF2_9CE4_8422_2325_u64, |h, &v| {
            let t = h ^ v;
            ((t << 23) | (t >> 41)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        });
        assert_eq!(expected_checksum(), h);
        assert_eq!(buf.len() * 8, 4 << 20);
    }

    #[test]
    fn parse_checksum_round_trip() {
        for sum in [0, 1, 0xdead_beef, u64::MAX, expected_checksum()] {
            let out = format!("noise\r\n{BANNER}\r\n{}\r\n", checksum_line(sum));
            assert_eq!(parse_checksum(&out), Some(sum));
        }
        assert_eq!(checksum_line(0xab), "ferrovm guest: checksum 0x00000000000000ab");
        assert_eq!(parse_checksum("ferrovm guest: checksum 0x12"), None);
        assert_eq!(parse_checksum(BANNER), None);
    }

    #[test]
    fn every_code_range_decodes_cleanly() {
        let image = assemble().unwrap();
        assert_eq!(image.chunks.len(), 4);
        for chunk in &image.chunks {
            let start = usize::try_from(chunk.ip & (ROM_SIZE - 1)).unwrap();
            assert_eq!(&image.guest.rom[start..start + chunk.bytes.len()], &chunk.bytes[..]);
            let mut len = 0;
            for instr in decode_chunk(chunk) {
                assert_ne!(instr.code(), Code::INVALID, "{}-bit code at {:#x}", chunk.bitness, instr.ip());
                len += instr.len();
            }
            assert_eq!(len, chunk.bytes.len(), "code at {:#x} decodes to its exact length", chunk.ip);
        }
    }

    #[test]
    fn only_allowed_instruction_families_are_used() {
        let used = used_mnemonics().unwrap();
        let allowed = [
            "Mov", "Movzx", "Lea", "Add", "Sub", "And", "Or", "Xor", "Not", "Neg", "Shl", "Shr", "Sar", "Rol", "Ror",
            "Imul", "Cmp", "Test", "Inc", "Dec", "J", "Call", "Ret", "Push", "Pop", "Loop", "Cli", "Hlt", "In", "Out",
            "Lgdt", "Lidt", "Ltr", "Rdmsr", "Wrmsr", "Syscall", "Sysretq", "Iretq", "Pushq", "Retnq", "Callq",
        ];
        for entry in &used {
            let name = entry.split(':').nth(1).unwrap();
            assert!(allowed.iter().any(|p| name.starts_with(p)), "unexpected {entry}");
        }
        println!("{}", used.join("\n"));
    }

    #[test]
    fn tables_point_where_the_code_expects() {
        let g = build().unwrap();
        let image = assemble().unwrap();
        let code64 = &image.chunks[0];
        let end64 = code64.ip + code64.bytes.len() as u64;
        // IDT gates land inside the 64-bit code: exception stubs start with a
        // push; the report vector (DPL 3) goes to the report handler.
        let idt = &g.rom[off(rom_addr(IDT_OFF))..];
        for v in 0..usize::try_from(IDT_VECTORS).unwrap() {
            let gate = &idt[v * 16..v * 16 + 16];
            let target = u64::from(u16::from_le_bytes([gate[0], gate[1]]))
                | (u64::from(u16::from_le_bytes([gate[6], gate[7]])) << 16);
            assert!((code64.ip..end64).contains(&target));
            let i = Decoder::with_ip(64, &g.rom[off(target)..], target, DecoderOptions::NONE).decode();
            let dpl = (gate[5] >> 5) & 3;
            if v == usize::from(REPORT_VECTOR) {
                assert_eq!(dpl, 3);
                assert_eq!(i.code(), Code::Mov_r32_imm32, "the report handler reloads ESP");
            } else {
                assert_eq!(dpl, 0);
                assert_eq!(i.code(), Code::Pushq_imm8);
            }
        }
        // GDT descriptors: code64 has L set, TSS base is TSS_RAM.
        assert_eq!(GDT[usize::from(SEL_CODE64 / 8)] >> 53 & 1, 1);
        let tss = GDT[usize::from(SEL_TSS / 8)];
        assert_eq!((tss >> 16) & 0xFF_FFFF | ((tss >> 56) << 24), TSS_RAM);
        assert_eq!(GDT.len() * 8, usize::from(SEL_TSS) + 16);
    }

    #[test]
    fn the_rom_holds_the_vga_tables_and_font() {
        let g = build().unwrap();
        let at = |off: u64, len: usize| &g.rom[usize::try_from(off).unwrap()..][..len];
        let mode3 = vga_mode3_table();
        assert_eq!(at(VGA_MODE3_OFF, mode3.len() * 2), &table_bytes(&mode3)[..]);
        for on in [true, false] {
            let t = vga_font_access(on);
            let off = if on { VGA_FONT_ON_OFF } else { VGA_FONT_OFF_OFF };
            assert_eq!(at(off, t.len() * 2), &table_bytes(&t)[..]);
        }
        let pos = |want: &dyn Fn(&(u8, u8)) -> bool| mode3.iter().position(want).unwrap();
        // MISC selects colour addressing (0x3D4) before the first CRTC
        // write, and CR11 unlocks CR0-CR7 before they are written.
        assert!(pos(&|&e| e == (vga_port::MISC, MODE3_MISC)) < pos(&|&(p, _)| p == vga_port::CR_INDEX));
        assert_eq!(mode3[pos(&|&(p, _)| p == vga_port::CR_INDEX) + 1], (vga_port::CR_DATA, 0x0E));
        // The attribute controller: a flip-flop reset, index/value pairs,
        // then the screen on (the palette address source).
        let flip = pos(&|&(p, _)| p == vga_port::ST1);
        let ar: Vec<u8> = mode3[flip + 1..].iter().take_while(|&&(p, _)| p == vga_port::AR).map(|&(_, v)| v).collect();
        assert_eq!(ar.len(), 2 * MODE3_AR.len() + 1);
        assert_eq!(ar[2 * 7..2 * 7 + 2], [7, 0x07], "colour 7 is palette entry 7");
        assert_eq!(ar.last(), Some(&AR_PAS));
        // The DAC: the EGA palette's 64 entries.
        let dac: Vec<u8> = mode3.iter().filter(|&&(p, _)| p == vga_port::DAC_DATA).map(|&(_, v)| v).collect();
        assert_eq!(dac.len(), 64 * 3);
        assert_eq!(dac[7 * 3..8 * 3], [42, 42, 42], "light grey");
        assert_eq!(dac[0x14 * 3..0x15 * 3], [42, 21, 0], "brown");
        assert_eq!(dac[0x3f * 3..], [63, 63, 63], "white");
        // The font: 16 lines a glyph; 'A' has its crossbar at lines 8-9.
        let a = at(VGA_FONT_OFF + 0x41 * 16, 16);
        assert_eq!(a, &crate::vga_font::glyph(0x41));
        assert_eq!(a[8..10], [0xfc, 0xfc]);
        assert!(at(VGA_FONT_OFF + 0x20 * 16, 16).iter().all(|&l| l == 0), "the space is blank");
    }

    /// Boots the ROM in QEMU when `FERROVM_QEMU` names a qemu-system-x86_64
    /// binary: `FERROVM_QEMU=qemu-system-x86_64 cargo test -p firmware -- --ignored`.
    #[test]
    #[ignore = "needs QEMU; set FERROVM_QEMU"]
    fn boots_in_qemu() {
        let Ok(qemu) = std::env::var("FERROVM_QEMU") else {
            println!("skipped: FERROVM_QEMU is not set");
            return;
        };
        let path = std::env::temp_dir().join(format!("ferrovm-builtin-{}.rom", std::process::id()));
        std::fs::write(&path, build().unwrap().rom).unwrap();
        let out = std::process::Command::new(qemu)
            .args(["-nodefaults", "-machine", "pc", "-m", "64", "-display", "none"])
            .args(["-serial", "stdio", "-monitor", "none", "-no-reboot"])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-bios"])
            .arg(&path)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}");
        assert!(stdout.contains(BANNER));
        assert_eq!(parse_checksum(&stdout), Some(expected_checksum()));
        assert_eq!(out.status.code(), Some(1));
    }
}
