//! The e820 memory map: what a BIOS reports through INT 15h, AX=E820h and what
//! the Linux zero page and the multiboot memory map carry.
//!
//! The PC layout for `N` bytes of RAM (see `mmu::memory`):
//!
//! ```text
//!   0 .. 0x9fc00              RAM (conventional memory below 640 KiB)
//!   0x9fc00 .. 0xa0000        reserved: the EBDA
//!   0xa0000 .. 0x100000       reserved: VGA window, option ROMs, BIOS area (ACPI and MP tables live here)
//!   0x100000 .. min(N, 3 GiB) RAM
//!   3 GiB .. 4 GiB            the PCI hole: not in the map, except ROM regions (reserved)
//!   4 GiB .. 4 GiB + N - 3 GiB  RAM, when N is above 3 GiB
//! ```

use mmu::{GuestMemory, RegionKind, HIGH_RAM_START, PCI_HOLE_START};

/// Start of the extended BIOS data area: the last KiB below 640 KiB.
pub const EBDA_START: u64 = 0x9_fc00;
/// End of conventional memory (640 KiB).
pub const LOW_MEMORY_END: u64 = 0xa_0000;
/// Start of memory above the first megabyte.
pub const HIMEM_START: u64 = 0x10_0000;
/// The most entries the Linux zero page holds (`E820_MAX_ENTRIES_ZEROPAGE`).
pub const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;

/// The type of an e820 range (ACPI spec, "Address Range Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved: in use or not to be used by the OS.
    Reserved = 2,
    /// ACPI tables, reclaimable after they are read.
    Acpi = 3,
    /// ACPI non-volatile storage.
    Nvs = 4,
    /// Memory with errors.
    Unusable = 5,
}

/// One e820 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Type,
}

impl E820Entry {
    /// Bytes of one entry as the zero page and INT 15h store it.
    pub const SIZE: usize = 20;

    /// The address after the range; `None` if it wraps.
    pub fn end(&self) -> Option<u64> {
        self.addr.checked_add(self.size)
    }

    /// The packed little-endian form: addr (8), size (8), type (4).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..20].copy_from_slice(&(self.kind as u32).to_le_bytes());
        b
    }
}

/// Errors building the map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum E820Error {
    /// The layout needs the first megabyte.
    #[error("guest RAM of {0:#x} bytes is below 1 MiB; the PC memory map needs at least 1 MiB")]
    RamTooSmall(u64),
    /// A size computation overflowed.
    #[error("the e820 range for {what} overflows the 64-bit address space")]
    Overflow { what: &'static str },
}

/// The e820 map of a PC with `ram_size` bytes of RAM.
pub fn pc_e820_map(ram_size: u64) -> Result<Vec<E820Entry>, E820Error> {
    if ram_size < HIMEM_START {
        return Err(E820Error::RamTooSmall(ram_size));
    }
    let mut map = vec![
        E820Entry { addr: 0, size: EBDA_START, kind: E820Type::Ram },
        E820Entry { addr: EBDA_START, size: LOW_MEMORY_END - EBDA_START, kind: E820Type::Reserved },
        E820Entry { addr: LOW_MEMORY_END, size: HIMEM_START - LOW_MEMORY_END, kind: E820Type::Reserved },
    ];
    let low_top = ram_size.min(PCI_HOLE_START);
    if low_top > HIMEM_START {
        map.push(E820Entry { addr: HIMEM_START, size: low_top - HIMEM_START, kind: E820Type::Ram });
    }
    if let Some(high) = ram_size.checked_sub(PCI_HOLE_START).filter(|&h| h > 0) {
        HIGH_RAM_START.checked_add(high).ok_or(E820Error::Overflow { what: "RAM above 4 GiB" })?;
        map.push(E820Entry { addr: HIGH_RAM_START, size: high, kind: E820Type::Ram });
    }
    Ok(map)
}

/// The e820 map of `mem`: [`pc_e820_map`] of its RAM size, plus a reserved range
/// for each ROM region mapped above the first megabyte (the BIOS ROM below 4 GiB).
pub fn e820_for_memory(mem: &GuestMemory) -> Result<Vec<E820Entry>, E820Error> {
    let mut map = pc_e820_map(mem.ram_size())?;
    for r in mem.regions() {
        if r.kind == RegionKind::Rom && r.base >= HIMEM_START {
            r.base.checked_add(r.len).ok_or(E820Error::Overflow { what: r.name })?;
            map.push(E820Entry { addr: r.base, size: r.len, kind: E820Type::Reserved });
        }
    }
    map.sort_by_key(|e| e.addr);
    Ok(map)
}

/// Usable RAM below 1 MiB in KiB and from 1 MiB up to the first hole in KiB, as
/// multiboot's `mem_lower`/`mem_upper` and the zero page's `alt_mem_k` report.
pub fn lower_upper_kib(map: &[E820Entry]) -> (u32, u32) {
    let lower =
        map.iter().find(|e| e.kind == E820Type::Ram && e.addr == 0).map_or(0, |e| e.size.min(LOW_MEMORY_END) / 1024);
    let upper = map.iter().find(|e| e.kind == E820Type::Ram && e.addr == HIMEM_START).map_or(0, |e| e.size / 1024);
    (u32::try_from(lower).unwrap_or(u32::MAX), u32::try_from(upper).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn ram(addr: u64, size: u64) -> E820Entry {
        E820Entry { addr, size, kind: E820Type::Ram }
    }

    fn low_entries() -> Vec<E820Entry> {
        vec![
            ram(0, 0x9fc00),
            E820Entry { addr: 0x9fc00, size: 0x400, kind: E820Type::Reserved },
            E820Entry { addr: 0xa0000, size: 0x60000, kind: E820Type::Reserved },
        ]
    }

    #[test]
    fn map_for_128m() {
        let mut want = low_entries();
        want.push(ram(MIB, 127 * MIB));
        assert_eq!(pc_e820_map(128 * MIB).unwrap(), want);
    }

    #[test]
    fn map_for_3_5g_splits_around_the_pci_hole() {
        let mut want = low_entries();
        want.push(ram(MIB, 3 * GIB - MIB));
        want.push(ram(4 * GIB, GIB / 2));
        assert_eq!(pc_e820_map(3 * GIB + GIB / 2).unwrap(), want);
    }

    #[test]
    fn map_for_5g() {
        let map = pc_e820_map(5 * GIB).unwrap();
        assert_eq!(map[3], ram(MIB, 3 * GIB - MIB));
        assert_eq!(map[4], ram(4 * GIB, 2 * GIB));
        let total: u64 = map.iter().filter(|e| e.kind == E820Type::Ram).map(|e| e.size).sum();
        assert_eq!(total, 5 * GIB - 0x400 - 0x60000);
        // Sorted and disjoint.
        for w in map.windows(2) {
            assert!(w[0].end().unwrap() <= w[1].addr);
        }
    }

    #[test]
    fn map_for_exactly_3g_has_no_high_ram() {
        let map = pc_e820_map(3 * GIB).unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(map[3], ram(MIB, 3 * GIB - MIB));
    }

    #[test]
    fn tiny_and_huge_sizes() {
        assert_eq!(pc_e820_map(MIB - 4096), Err(E820Error::RamTooSmall(MIB - 4096)));
        assert_eq!(pc_e820_map(MIB).unwrap(), low_entries());
        assert!(matches!(pc_e820_map(u64::MAX), Err(E820Error::Overflow { .. })));
    }

    #[test]
    fn memory_map_includes_roms_and_kib_counts() {
        let mut mem = GuestMemory::new(64 * MIB).unwrap();
        mem.add_rom("bios", 0xffff_0000, 0x1_0000, &[]).unwrap();
        let map = e820_for_memory(&mem).unwrap();
        assert_eq!(map.last().unwrap(), &E820Entry { addr: 0xffff_0000, size: 0x1_0000, kind: E820Type::Reserved });
        assert_eq!(lower_upper_kib(&map), (639, 63 * 1024));
    }

    #[test]
    fn entry_bytes() {
        let b = E820Entry { addr: 0x1122_3344_5566_7788, size: 0x10, kind: E820Type::Acpi }.to_bytes();
        assert_eq!(&b[0..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[8..16], &0x10u64.to_le_bytes());
        assert_eq!(&b[16..20], &3u32.to_le_bytes());
    }
}
