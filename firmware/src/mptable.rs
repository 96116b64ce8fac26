//! The Intel MultiProcessor table (MP Specification 1.4, chapter 4): how a
//! kernel without ACPI (`acpi=off`) finds the CPUs, the I/O APIC and the ISA
//! interrupt wiring.
//!
//! ```text
//!   floating pointer (16 bytes, 16-aligned, in 0xf0000..0x100000):
//!     0 "_MP_"  4 config table address  8 length/16 (1)  9 spec rev (4)
//!    10 checksum  11 feature 1 (0: a config table is present)  12..16 features
//!   configuration table header (44 bytes):
//!     0 "PCMP"  4 base table length  6 spec rev  7 checksum  8 OEM id (8)
//!    16 product id (12)  28 OEM table ptr  32 OEM table size  34 entry count
//!    36 local APIC address  40 extended table length  42 extended checksum
//!   entries: processor (type 0, 20 bytes), bus (1, 8), I/O APIC (2, 8),
//!            I/O interrupt (3, 8), local interrupt (4, 8)
//! ```
//!
//! The ISA interrupts follow the PC convention that the MADT repeats: the 8259
//! cascade as ExtINT on I/O APIC pin 0, IRQ 0 (the PIT) on pin 2, every other
//! ISA IRQ on the pin of its number.

use mmu::{GuestMemory, MemError};

/// Where the floating pointer goes by default (the BIOS area).
pub const MPTABLE_START: u64 = 0xf_0000;
/// End of the area the kernel scans.
const BIOS_AREA_END: u64 = 0x10_0000;
/// Default local APIC base.
pub const LAPIC_BASE: u32 = 0xfee0_0000;
/// Default I/O APIC base.
pub const IOAPIC_BASE: u32 = 0xfec0_0000;
/// The most CPUs: APIC ids 0..=253 for CPUs, the I/O APIC after them, 255 is broadcast.
pub const MAX_CPUS: u8 = 254;

const SPEC_REV_1_4: u8 = 4;
const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
/// Local APIC version reported for each CPU (an integrated APIC).
const LAPIC_VERSION: u8 = 0x14;
/// I/O APIC version (82093AA).
const IOAPIC_VERSION: u8 = 0x11;
/// Processor flags: enabled, bootstrap processor.
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;
/// CPU signature: family 6, as the emulated CPU reports.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX features: FPU and APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const IOAPIC_ENABLED: u8 = 1;
/// Interrupt types.
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus" (edge, active high on ISA).
const INT_FLAGS_CONFORMS: u16 = 0;
const ISA_BUS_ID: u8 = 0;
/// Local interrupt destination: every local APIC.
const ALL_LAPICS: u8 = 0xff;
/// Number of ISA IRQs.
const ISA_IRQS: u8 = 16;
/// The PIT's IRQ and the I/O APIC pin it is wired to.
const PIT_IRQ: u8 = 0;
const PIT_IOAPIC_PIN: u8 = 2;
/// The cascade IRQ (IRQ 2 is the second 8259 and never a device).
const CASCADE_IRQ: u8 = 2;

/// Errors writing the MP table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MpTableError {
    #[error("the MP table supports 1 to {MAX_CPUS} CPUs, not {0}")]
    BadCpuCount(usize),
    #[error("the MP table needs distinct local APIC IDs below {MAX_CPUS}, not {0:?}")]
    BadApicIds(Vec<u8>),
    #[error("the MP table at {start:#x}..{end:#x} does not fit below 1 MiB (or is not 16-byte aligned)")]
    DoesNotFit { start: u64, end: u64 },
    #[error(transparent)]
    Memory(#[from] MemError),
}

/// The platform the table describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpConfig {
    /// The CPUs' local APIC IDs, the bootstrap processor's first.
    pub apic_ids: Vec<u8>,
    pub lapic_base: u32,
    pub ioapic_base: u32,
}

impl MpConfig {
    /// `cpus` CPUs with APIC IDs 0, 1, ... and the APICs at their PC addresses.
    pub fn new(cpus: u8) -> Self {
        Self::with_apic_ids((0..cpus).collect())
    }

    /// CPUs with these APIC IDs (the bootstrap processor's first), as a
    /// topology with gaps in its IDs numbers them.
    pub fn with_apic_ids(apic_ids: Vec<u8>) -> Self {
        MpConfig { apic_ids, lapic_base: LAPIC_BASE, ioapic_base: IOAPIC_BASE }
    }

    /// The number of CPUs.
    pub fn cpus(&self) -> usize {
        self.apic_ids.len()
    }

    /// The I/O APIC's id: the first after the CPUs'.
    pub fn ioapic_id(&self) -> u8 {
        self.apic_ids.iter().max().map_or(0, |m| m.saturating_add(1))
    }
}

/// Checks a list of local APIC IDs: 1 to [`MAX_CPUS`] CPUs, distinct IDs
/// below [`MAX_CPUS`] (so the I/O APIC's, after them, stays below the
/// broadcast 0xff). Shared with the ACPI tables.
pub(crate) fn check_apic_ids(ids: &[u8]) -> Result<(), MpTableError> {
    if ids.is_empty() || ids.len() > usize::from(MAX_CPUS) {
        return Err(MpTableError::BadCpuCount(ids.len()));
    }
    let mut seen = [false; 256];
    for &id in ids {
        if id >= MAX_CPUS || seen[usize::from(id)] {
            return Err(MpTableError::BadApicIds(ids.to_vec()));
        }
        seen[usize::from(id)] = true;
    }
    Ok(())
}

/// Where the table went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpTable {
    pub floating_pointer: u64,
    pub config_table: u64,
    /// End (exclusive) of what was written.
    pub end: u64,
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// The configuration table (header and entries) for `cfg`.
fn config_table(cfg: &MpConfig) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for (i, &id) in cfg.apic_ids.iter().enumerate() {
        let flags = CPU_ENABLED | if i == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    let ioapic = cfg.ioapic_id();
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, IOAPIC_ENABLED]);
    entries.extend_from_slice(&cfg.ioapic_base.to_le_bytes());
    count += 1;
    let mut io_int = |kind: u8, irq: u8, pin: u8| {
        entries.push(ENTRY_IO_INTERRUPT);
        entries.push(kind);
        entries.extend_from_slice(&INT_FLAGS_CONFORMS.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, irq, ioapic, pin]);
        count += 1;
    };
    io_int(INT_TYPE_EXTINT, 0, 0);
    for irq in 0..ISA_IRQS {
        match irq {
            CASCADE_IRQ => {}
            PIT_IRQ => io_int(INT_TYPE_INT, irq, PIT_IOAPIC_PIN),
            _ => io_int(INT_TYPE_INT, irq, irq),
        }
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1)] {
        entries.push(ENTRY_LOCAL_INTERRUPT);
        entries.push(kind);
        entries.extend_from_slice(&INT_FLAGS_CONFORMS.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, 0, ALL_LAPICS, lint]);
        count += 1;
    }

    let mut t = Vec::with_capacity(HEADER_SIZE + entries.len());
    t.extend_from_slice(b"PCMP");
    // At most 254 CPUs * 20 + 28 entries * 8 bytes: fits u16.
    t.extend_from_slice(&((HEADER_SIZE + entries.len()) as u16).to_le_bytes());
    t.push(SPEC_REV_1_4);
    t.push(0); // checksum
    t.extend_from_slice(b"FERROVM ");
    t.extend_from_slice(b"PC          ");
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&count.to_le_bytes());
    t.extend_from_slice(&cfg.lapic_base.to_le_bytes());
    t.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    t.extend_from_slice(&entries);
    t[7] = checksum(&t);
    t
}

/// Write the floating pointer at `addr` (16-byte aligned, in the first MiB) and
/// the configuration table right after it.
pub fn write_mptable(mem: &GuestMemory, addr: u64, cfg: &MpConfig) -> Result<MpTable, MpTableError> {
    check_apic_ids(&cfg.apic_ids)?;
    let table = config_table(cfg);
    let config_addr = addr + FLOATING_POINTER_SIZE as u64;
    let end = config_addr + table.len() as u64;
    if !addr.is_multiple_of(16) || end > BIOS_AREA_END {
        return Err(MpTableError::DoesNotFit { start: addr, end });
    }
    let mut fp = [0u8; FLOATING_POINTER_SIZE];
    fp[0..4].copy_from_slice(b"_MP_");
    // Checked above: below 1 MiB.
    fp[4..8].copy_from_slice(&(config_addr as u32).to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = SPEC_REV_1_4;
    fp[10] = checksum(&fp);
    mem.write(addr, &fp)?;
    mem.write(config_addr, &table)?;
    Ok(MpTable { floating_pointer: addr, config_table: config_addr, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    /// Scan the BIOS area like the kernel does and decode the table.
    fn scan(mem: &GuestMemory) -> (Vec<u8>, Vec<u8>) {
        let mut area = vec![0u8; 0x1_0000];
        mem.read(0xf_0000, &mut area).unwrap();
        let off = (0..area.len())
            .step_by(16)
            .find(|&o| &area[o..o + 4] == b"_MP_" && sum(&area[o..o + 16]) == 0)
            .expect("floating pointer found");
        let fp = area[off..off + 16].to_vec();
        let table_addr = u64::from(u32::from_le_bytes(fp[4..8].try_into().unwrap()));
        let len = mem.read_u16(table_addr + 4).unwrap();
        let mut table = vec![0u8; usize::from(len)];
        mem.read(table_addr, &mut table).unwrap();
        (fp, table)
    }

    #[test]
    fn table_is_found_and_checksums_hold() {
        let mem = GuestMemory::new(16 << 20).unwrap();
        let t = write_mptable(&mem, MPTABLE_START, &MpConfig::new(4)).unwrap();
        assert_eq!(t.config_table, MPTABLE_START + 16);
        let (fp, table) = scan(&mem);
        assert_eq!((fp[8], fp[9], fp[11]), (1, 4, 0));
        assert_eq!(&table[0..4], b"PCMP");
        assert_eq!(sum(&table), 0);
        assert_eq!(u64::from(u16::from_le_bytes([table[4], table[5]])), t.end - t.config_table);
        assert_eq!(u32::from_le_bytes(table[36..40].try_into().unwrap()), LAPIC_BASE);

        // Walk the entries.
        let count = u16::from_le_bytes([table[34], table[35]]);
        let mut at = HEADER_SIZE;
        let (mut cpus, mut bsp, mut ioapics, mut ints, mut locals) = (vec![], 0, vec![], vec![], 0);
        for _ in 0..count {
            match table[at] {
                ENTRY_PROCESSOR => {
                    cpus.push(table[at + 1]);
                    bsp += usize::from(table[at + 3] & CPU_BOOTSTRAP != 0);
                    assert!(table[at + 3] & CPU_ENABLED != 0);
                    at += 20;
                }
                ENTRY_BUS => {
                    assert_eq!(&table[at + 2..at + 8], b"ISA   ");
                    at += 8;
                }
                ENTRY_IOAPIC => {
                    ioapics.push((table[at + 1], u32::from_le_bytes(table[at + 4..at + 8].try_into().unwrap())));
                    at += 8;
                }
                ENTRY_IO_INTERRUPT => {
                    ints.push((table[at + 1], table[at + 5], table[at + 7]));
                    at += 8;
                }
                ENTRY_LOCAL_INTERRUPT => {
                    locals += 1;
                    at += 8;
                }
                t => panic!("unknown entry type {t}"),
            }
        }
        assert_eq!(at, table.len());
        assert_eq!(cpus, vec![0, 1, 2, 3]);
        assert_eq!(bsp, 1);
        assert_eq!(ioapics, vec![(4, IOAPIC_BASE)]);
        assert!(ints.contains(&(INT_TYPE_EXTINT, 0, 0)));
        assert!(ints.contains(&(INT_TYPE_INT, 0, 2)), "PIT on pin 2");
        assert!(ints.contains(&(INT_TYPE_INT, 4, 4)));
        assert!(!ints.iter().any(|&(k, irq, _)| k == INT_TYPE_INT && irq == 2));
        assert_eq!(ints.len(), 16);
        assert_eq!(locals, 2);
    }

    #[test]
    fn limits() {
        let mem = GuestMemory::new(16 << 20).unwrap();
        assert_eq!(write_mptable(&mem, MPTABLE_START, &MpConfig::new(0)), Err(MpTableError::BadCpuCount(0)));
        assert_eq!(
            write_mptable(&mem, MPTABLE_START, &MpConfig::with_apic_ids(vec![0, 2, 2])),
            Err(MpTableError::BadApicIds(vec![0, 2, 2]))
        );
        assert_eq!(write_mptable(&mem, MPTABLE_START, &MpConfig::new(255)), Err(MpTableError::BadCpuCount(255)));
        assert!(matches!(
            write_mptable(&mem, MPTABLE_START, &MpConfig::with_apic_ids(vec![0, 254])),
            Err(MpTableError::BadApicIds(_))
        ));
        assert!(write_mptable(&mem, MPTABLE_START, &MpConfig::new(MAX_CPUS)).is_ok());
        assert!(matches!(write_mptable(&mem, 0xf_fff0, &MpConfig::new(1)), Err(MpTableError::DoesNotFit { .. })));
        assert!(matches!(write_mptable(&mem, 0xf_0008, &MpConfig::new(1)), Err(MpTableError::DoesNotFit { .. })));
    }
}
