//! SMBIOS tables (DMTF DSP0134 3.x, structures as of version 2.8): what
//! `dmidecode`, Linux's `/sys/class/dmi/id` and cloud-init read about the
//! machine.
//!
//! The machine describes itself as QEMU's PC does: system information
//! (type 1), a chassis (3), one processor per socket (4), the memory as one
//! array (16) of 16 GiB devices (17) mapped where the RAM is (19), the boot
//! status (32) and the end marker (127). BIOS information (0), a baseboard
//! (2) and OEM strings (11) are added when the user gives them, as with
//! QEMU's `-smbios type=0|2|11,...`; otherwise the firmware adds its own
//! type 0 (SeaBIOS and OVMF both do) and a direct boot has none.
//!
//! Two blobs come out, as QEMU hands them to its firmware over fw_cfg
//! ([`SMBIOS_TABLES_FILE`], [`SMBIOS_ANCHOR_FILE`]): the structures, and a
//! 2.1 (32-bit) entry point whose table address the firmware fills in when
//! it places the structures. [`write_smbios`] places both itself for a boot
//! without firmware: the entry point where the OS scans for it
//! (0xF0000-0xFFFFF, 16-byte aligned), the structures right after it.
//!
//! Strings follow a structure's formatted area, each NUL-terminated, the
//! set ended by another NUL; an empty field is string number 0 and takes no
//! room. A string may not hold a NUL, and the whole table must stay within
//! the entry point's 16-bit length.

use mmu::{GuestMemory, MemError};

/// The fw_cfg file holding the structures.
pub const SMBIOS_TABLES_FILE: &str = "etc/smbios/smbios-tables";
/// The fw_cfg file holding the 2.1 entry point.
pub const SMBIOS_ANCHOR_FILE: &str = "etc/smbios/smbios-anchor";

/// The version the structures follow.
const VERSION: (u8, u8) = (2, 8);
/// The 2.1 entry point's length.
pub const ENTRY_POINT_LEN: usize = 0x1f;
/// Where the OS scans for the entry point: [`SCAN_START`], up to 1 MiB.
pub const SCAN_START: u64 = 0xf_0000;
/// The end of the scanned area.
const SCAN_END: u64 = 0x10_0000;
/// The most a memory device (type 17) holds; more RAM makes more devices.
const MAX_DIMM: u64 = 16 << 30;
/// Handles: QEMU's numbering, the type in the high byte.
const fn handle(kind: u8, instance: u16) -> u16 {
    ((kind as u16) << 8) | instance
}

/// Type 0, BIOS information: the firmware's vendor, version and date.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BiosInfo {
    pub vendor: Option<String>,
    pub version: Option<String>,
    /// `MM/DD/YYYY`.
    pub date: Option<String>,
    /// The system BIOS major and minor release, when given.
    pub release: Option<(u8, u8)>,
    /// Whether the firmware is UEFI (characteristics extension bit).
    pub uefi: bool,
}

/// Type 1, system information.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemInfo {
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub version: Option<String>,
    pub serial: Option<String>,
    /// RFC 4122 byte order (as written `00112233-4455-...`).
    pub uuid: Option<[u8; 16]>,
    pub sku: Option<String>,
    pub family: Option<String>,
}

/// Type 2, baseboard (module) information.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baseboard {
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub version: Option<String>,
    pub serial: Option<String>,
    pub asset: Option<String>,
    pub location: Option<String>,
}

/// Type 3, system enclosure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chassis {
    pub manufacturer: Option<String>,
    pub version: Option<String>,
    pub serial: Option<String>,
    pub asset: Option<String>,
    pub sku: Option<String>,
}

/// Type 4, the processors' strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Processor {
    pub manufacturer: Option<String>,
    pub version: Option<String>,
}

/// What the user says about the machine (QEMU's `-smbios` and `-uuid`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmbiosConfig {
    /// Type 0; `None` leaves it to the firmware.
    pub bios: Option<BiosInfo>,
    pub system: SystemInfo,
    /// Type 2; `None` for none.
    pub baseboard: Option<Baseboard>,
    pub chassis: Chassis,
    pub processor: Processor,
    /// Type 11; empty for none.
    pub oem_strings: Vec<String>,
}

/// What the machine is: its processors and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmbiosMachine {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
    /// CPUID leaf 1's EAX (low half) and EDX (high half).
    pub processor_id: u64,
    /// The processors' speed in MHz.
    pub mhz: u16,
    /// The RAM's ranges of guest-physical addresses: start and length.
    pub ram: Vec<(u64, u64)>,
}

/// Why the tables cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmbiosError {
    #[error("SMBIOS string '{0}' holds a NUL byte")]
    Nul(String),
    #[error("the SMBIOS tables take {0} bytes; the entry point describes at most 65535")]
    TooLong(usize),
    #[error("a type {0} structure has {1} strings; at most 255 fit")]
    TooManyStrings(u8, usize),
    #[error("the machine has no processors or no memory")]
    Empty,
    #[error(
        "the SMBIOS tables at {start:#x}..{end:#x} do not fit below {limit:#x} (or the base is not 16-byte aligned)"
    )]
    DoesNotFit { start: u64, end: u64, limit: u64 },
    #[error(transparent)]
    Memory(#[from] MemError),
}

/// One structure being built: the formatted area, then its strings.
struct Structure {
    kind: u8,
    area: Vec<u8>,
    strings: Vec<String>,
}

impl Structure {
    fn new(kind: u8, handle: u16, len: usize) -> Self {
        let mut area = vec![0u8; len];
        area[0] = kind;
        area[1] = len as u8;
        area[2..4].copy_from_slice(&handle.to_le_bytes());
        Structure { kind, area, strings: Vec::new() }
    }

    /// Sets the string field at `at`: its number in the set, or 0 for none.
    fn string(&mut self, at: usize, s: Option<&str>) {
        let n = match s.filter(|s| !s.is_empty()) {
            Some(s) => {
                self.strings.push(s.to_string());
                self.strings.len().min(255) as u8
            }
            None => 0,
        };
        self.area[at] = n;
    }

    fn u8(&mut self, at: usize, v: u8) {
        self.area[at] = v;
    }

    fn u16(&mut self, at: usize, v: u16) {
        self.area[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn u32(&mut self, at: usize, v: u32) {
        self.area[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, at: usize, v: u64) {
        self.area[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn bytes(self) -> Result<Vec<u8>, SmbiosError> {
        if self.strings.len() > 255 {
            return Err(SmbiosError::TooManyStrings(self.kind, self.strings.len()));
        }
        let mut out = self.area;
        for s in &self.strings {
            if s.contains('\0') {
                return Err(SmbiosError::Nul(s.clone()));
            }
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        // The set ends with a second NUL; an empty set is two NULs.
        if self.strings.is_empty() {
            out.push(0);
        }
        out.push(0);
        Ok(out)
    }
}

/// The structures and the entry point that describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmbiosBlobs {
    /// Every structure, type 127 last.
    pub tables: Vec<u8>,
    /// The 2.1 entry point, its table address 0 (the firmware's to fill).
    pub anchor: Vec<u8>,
}

impl SmbiosBlobs {
    /// The entry point with the structures at `address`.
    pub fn anchor_at(&self, address: u32) -> Vec<u8> {
        let mut a = self.anchor.clone();
        a[0x18..0x1c].copy_from_slice(&address.to_le_bytes());
        checksum_anchor(&mut a);
        a
    }
}

fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |s, x| s.wrapping_add(*x)))
}

/// Fills in both checksums of a 2.1 entry point: the intermediate one over
/// bytes 0x10.., then the whole one.
fn checksum_anchor(a: &mut [u8]) {
    a[0x15] = 0;
    a[0x15] = checksum(&a[0x10..ENTRY_POINT_LEN]);
    a[0x04] = 0;
    a[0x04] = checksum(&a[..ENTRY_POINT_LEN]);
}

/// Builds the structures for `machine` as `cfg` describes it. Type 0 is
/// included only when `cfg.bios` is given.
pub fn build_smbios(cfg: &SmbiosConfig, machine: &SmbiosMachine) -> Result<SmbiosBlobs, SmbiosError> {
    let cpus = u64::from(machine.sockets) * u64::from(machine.cores) * u64::from(machine.threads);
    let total: u64 = machine.ram.iter().map(|r| r.1).sum();
    if cpus == 0 || total == 0 {
        return Err(SmbiosError::Empty);
    }
    let mut all: Vec<Structure> = Vec::new();
    if let Some(b) = &cfg.bios {
        // Type 0, 2.4 layout (24 bytes).
        let mut s = Structure::new(0, handle(0, 0), 0x18);
        s.string(0x04, b.vendor.as_deref());
        s.string(0x05, b.version.as_deref());
        s.u16(0x06, 0xe800);
        s.string(0x08, b.date.as_deref());
        // Characteristics: "not supported" (bit 3), as QEMU reports.
        s.u64(0x0a, 1 << 3);
        // Extension byte 2: targeted content distribution (2), UEFI (3),
        // a virtual machine (4).
        s.u8(0x13, 0x14 | if b.uefi { 0x08 } else { 0 });
        let (major, minor) = b.release.unwrap_or((0xff, 0xff));
        s.u8(0x14, major);
        s.u8(0x15, minor);
        s.u8(0x16, 0xff);
        s.u8(0x17, 0xff);
        all.push(s);
    }
    {
        // Type 1, 2.4 layout (27 bytes).
        let y = &cfg.system;
        let mut s = Structure::new(1, handle(1, 0), 0x1b);
        s.string(0x04, y.manufacturer.as_deref());
        s.string(0x05, y.product.as_deref());
        s.string(0x06, y.version.as_deref());
        s.string(0x07, y.serial.as_deref());
        if let Some(u) = y.uuid {
            s.area[0x08..0x18].copy_from_slice(&smbios_uuid(u));
        }
        // Wake-up type: power switch.
        s.u8(0x18, 0x06);
        s.string(0x19, y.sku.as_deref());
        s.string(0x1a, y.family.as_deref());
        all.push(s);
    }
    if let Some(b) = &cfg.baseboard {
        // Type 2 without contained objects (15 bytes).
        let mut s = Structure::new(2, handle(2, 0), 0x0f);
        s.string(0x04, b.manufacturer.as_deref());
        s.string(0x05, b.product.as_deref());
        s.string(0x06, b.version.as_deref());
        s.string(0x07, b.serial.as_deref());
        s.string(0x08, b.asset.as_deref());
        // Feature flags: a hosting board.
        s.u8(0x09, 0x01);
        s.string(0x0a, b.location.as_deref());
        s.u16(0x0b, handle(3, 0));
        // Board type: motherboard.
        s.u8(0x0d, 0x0a);
        all.push(s);
    }
    {
        // Type 3 without contained elements, 2.7 layout with the SKU (22 bytes).
        let c = &cfg.chassis;
        let mut s = Structure::new(3, handle(3, 0), 0x16);
        s.string(0x04, c.manufacturer.as_deref());
        // Type: other.
        s.u8(0x05, 0x01);
        s.string(0x06, c.version.as_deref());
        s.string(0x07, c.serial.as_deref());
        s.string(0x08, c.asset.as_deref());
        // Boot-up, power supply and thermal states: safe; security: unknown.
        s.u8(0x09, 0x03);
        s.u8(0x0a, 0x03);
        s.u8(0x0b, 0x03);
        s.u8(0x0c, 0x02);
        s.string(0x15, c.sku.as_deref());
        all.push(s);
    }
    for socket in 0..machine.sockets {
        // Type 4, 2.6 layout (42 bytes).
        let p = &cfg.processor;
        let mut s = Structure::new(4, handle(4, socket.min(0xff) as u16), 0x2a);
        s.string(0x04, Some(&format!("CPU {socket}")));
        // Central processor, family "other".
        s.u8(0x05, 0x03);
        s.u8(0x06, 0x01);
        s.string(0x07, p.manufacturer.as_deref());
        s.u64(0x08, machine.processor_id);
        s.string(0x10, p.version.as_deref());
        s.u16(0x14, machine.mhz);
        s.u16(0x16, machine.mhz);
        // Socket populated, processor enabled.
        s.u8(0x18, 0x41);
        // Upgrade: other; no cache structures.
        s.u8(0x19, 0x01);
        s.u16(0x1a, 0xffff);
        s.u16(0x1c, 0xffff);
        s.u16(0x1e, 0xffff);
        let cores = machine.cores.min(0xff) as u8;
        let threads = (machine.cores * machine.threads).min(0xff) as u8;
        s.u8(0x23, cores);
        s.u8(0x24, cores);
        s.u8(0x25, threads);
        // Characteristics: 64-bit capable.
        s.u16(0x26, 0x04);
        s.u16(0x28, 0x01);
        all.push(s);
    }
    if !cfg.oem_strings.is_empty() {
        let mut s = Structure::new(11, handle(11, 0), 0x05);
        let n = cfg.oem_strings.len();
        if n > 255 {
            return Err(SmbiosError::TooManyStrings(11, n));
        }
        s.u8(0x04, n as u8);
        // Every value counts, an empty one too: it cannot be string 0.
        s.strings = cfg.oem_strings.iter().map(|v| if v.is_empty() { " ".to_string() } else { v.clone() }).collect();
        all.push(s);
    }
    let dimms = total.div_ceil(MAX_DIMM);
    {
        // Type 16, 2.7 layout (23 bytes).
        let mut s = Structure::new(16, handle(16, 0), 0x17);
        // Location: other; use: system memory; error correction: multi-bit ECC.
        s.u8(0x04, 0x01);
        s.u8(0x05, 0x03);
        s.u8(0x06, 0x06);
        let kib = total / 1024;
        if kib < 0x8000_0000 {
            s.u32(0x07, kib as u32);
        } else {
            s.u32(0x07, 0x8000_0000);
            s.u64(0x0f, total);
        }
        // Error information: none provided.
        s.u16(0x0b, 0xfffe);
        s.u16(0x0d, dimms.min(0xffff) as u16);
        all.push(s);
    }
    for i in 0..dimms.min(0xff) {
        // Type 17, 2.8 layout (40 bytes).
        let size = (total - i * MAX_DIMM).min(MAX_DIMM);
        let mut s = Structure::new(17, handle(17, i as u16), 0x28);
        s.u16(0x04, handle(16, 0));
        s.u16(0x06, 0xfffe);
        s.u16(0x08, 0xffff);
        s.u16(0x0a, 0xffff);
        let mib = size >> 20;
        if mib < 0x7fff {
            s.u16(0x0c, mib as u16);
        } else {
            s.u16(0x0c, 0x7fff);
            s.u32(0x1c, mib as u32);
        }
        // Form factor: DIMM; memory type: RAM; type detail: other.
        s.u8(0x0e, 0x09);
        s.string(0x10, Some(&format!("DIMM {i}")));
        s.u8(0x12, 0x07);
        s.u16(0x13, 0x0002);
        all.push(s);
    }
    for (i, &(start, len)) in machine.ram.iter().enumerate().filter(|(_, r)| r.1 > 0) {
        // Type 19, 2.7 layout (31 bytes).
        let mut s = Structure::new(19, handle(19, i as u16), 0x1f);
        let end = start + len - 1;
        if end / 1024 < 0xffff_ffff {
            s.u32(0x04, (start / 1024) as u32);
            s.u32(0x08, (end / 1024) as u32);
        } else {
            s.u32(0x04, 0xffff_ffff);
            s.u32(0x08, 0xffff_ffff);
            s.u64(0x0f, start);
            s.u64(0x17, end);
        }
        s.u16(0x0c, handle(16, 0));
        s.u8(0x0e, dimms.min(0xff) as u8);
        all.push(s);
    }
    // Type 32: no errors detected at boot.
    all.push(Structure::new(32, handle(32, 0), 0x0b));
    all.push(Structure::new(127, handle(127, 0), 0x04));

    let count = all.len();
    let mut tables = Vec::new();
    let mut largest = 0;
    for s in all {
        let b = s.bytes()?;
        largest = largest.max(b.len());
        tables.extend_from_slice(&b);
    }
    let len = u16::try_from(tables.len()).map_err(|_| SmbiosError::TooLong(tables.len()))?;
    let mut a = vec![0u8; ENTRY_POINT_LEN];
    a[0..4].copy_from_slice(b"_SM_");
    a[0x05] = ENTRY_POINT_LEN as u8;
    a[0x06] = VERSION.0;
    a[0x07] = VERSION.1;
    a[0x08..0x0a].copy_from_slice(&(largest.min(0xffff) as u16).to_le_bytes());
    a[0x10..0x15].copy_from_slice(b"_DMI_");
    a[0x16..0x18].copy_from_slice(&len.to_le_bytes());
    a[0x1c..0x1e].copy_from_slice(&(count as u16).to_le_bytes());
    a[0x1e] = (VERSION.0 << 4) | VERSION.1;
    checksum_anchor(&mut a);
    Ok(SmbiosBlobs { tables, anchor: a })
}

/// A UUID as SMBIOS 2.6 and later store it: the first three fields
/// little-endian, the rest as written.
fn smbios_uuid(u: [u8; 16]) -> [u8; 16] {
    let mut o = u;
    o[0..4].reverse();
    o[4..6].reverse();
    o[6..8].reverse();
    o
}

/// Parses a UUID as QEMU's `-uuid` takes it: 32 hex digits in the groups
/// 8-4-4-4-12, into RFC 4122 byte order.
pub fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    let groups: Vec<&str> = s.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] || !s.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
        return Err(format!("'{s}' is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"));
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| format!("'{s}': {e}"))?;
    }
    Ok(out)
}

/// Where [`write_smbios`] put the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedSmbios {
    /// The entry point.
    pub anchor: u64,
    /// The first structure.
    pub tables: u64,
    /// The first byte after the structures.
    pub end: u64,
}

/// Writes the entry point at `base` (16-byte aligned, in the scanned area)
/// and the structures after it, for a boot without firmware.
pub fn write_smbios(mem: &GuestMemory, base: u64, blobs: &SmbiosBlobs) -> Result<PlacedSmbios, SmbiosError> {
    let tables = base + 0x20;
    let end = tables + blobs.tables.len() as u64;
    if !base.is_multiple_of(16) || base < SCAN_START || end > SCAN_END {
        return Err(SmbiosError::DoesNotFit { start: base, end, limit: SCAN_END });
    }
    mem.write(base, &blobs.anchor_at(tables as u32))?;
    mem.write(tables, &blobs.tables)?;
    Ok(PlacedSmbios { anchor: base, tables, end })
}

#[cfg(test)]
mod tests;
