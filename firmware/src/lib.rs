//! Firmware and loaders: everything that puts a guest into memory and hands the
//! CPU its first state. The built-in guest, the Linux boot protocol (bzImage and
//! vmlinux), multiboot v1, the e820 map, and the MP, ACPI and SMBIOS tables.

#![forbid(unsafe_code)]

pub mod acpi;
pub mod boot;
pub mod builtin;
pub mod decompress;
pub mod e820;
pub mod elf;
pub mod linux;
pub mod linuxboot;
pub mod mptable;
pub mod multiboot;
pub mod smbios;
mod vga_font;
