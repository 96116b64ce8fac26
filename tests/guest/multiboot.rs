//! Multiboot test kernels: an ELF32 image around code the test assembles,
//! and serial output from it.

#![allow(dead_code, reason = "each suite uses what it needs")]

use iced_x86::code_asm::*;

/// Print `s` to COM1 (the transmitter is always ready in ferrovm and QEMU).
pub fn print32(a: &mut CodeAssembler, s: &str) -> Result<(), IcedError> {
    a.mov(dx, 0x3f8u32)?;
    for b in s.bytes() {
        a.mov(al, u32::from(b))?;
        a.out(dx, al)?;
    }
    Ok(())
}

pub const LOAD: u32 = 0x10_0000;
pub const CODE_OFF: u32 = 0x80;

/// An ELF32 multiboot kernel whose one segment holds `code` at
/// `LOAD + CODE_OFF` (its entry point), and after it whatever `code` put
/// at its own end.
pub fn multiboot_elf(code: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; CODE_OFF as usize];
    f.extend_from_slice(code);
    let size = f.len() as u32;
    // ELF header.
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 1; // 32-bit
    f[5] = 1; // little endian
    f[6] = 1; // version
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..28].copy_from_slice(&(LOAD + CODE_OFF).to_le_bytes()); // entry
    f[28..32].copy_from_slice(&52u32.to_le_bytes()); // phoff
    f[40..42].copy_from_slice(&52u16.to_le_bytes()); // ehsize
    f[42..44].copy_from_slice(&32u16.to_le_bytes()); // phentsize
    f[44..46].copy_from_slice(&1u16.to_le_bytes()); // phnum
                                                    // One PT_LOAD covering the whole file at LOAD.
    let ph = 52;
    f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
    f[ph + 4..ph + 8].copy_from_slice(&0u32.to_le_bytes());
    f[ph + 8..ph + 12].copy_from_slice(&LOAD.to_le_bytes());
    f[ph + 12..ph + 16].copy_from_slice(&LOAD.to_le_bytes());
    f[ph + 16..ph + 20].copy_from_slice(&size.to_le_bytes());
    f[ph + 20..ph + 24].copy_from_slice(&size.to_le_bytes());
    f[ph + 24..ph + 28].copy_from_slice(&7u32.to_le_bytes());
    f[ph + 28..ph + 32].copy_from_slice(&0x1000u32.to_le_bytes());
    // Multiboot header at 0x60: magic, flags (memory info), checksum.
    let (magic, flags) = (0x1bad_b002u32, 0x0000_0002u32);
    f[0x60..0x64].copy_from_slice(&magic.to_le_bytes());
    f[0x64..0x68].copy_from_slice(&flags.to_le_bytes());
    f[0x68..0x6c].copy_from_slice(&(0u32.wrapping_sub(magic).wrapping_sub(flags)).to_le_bytes());
    f
}
