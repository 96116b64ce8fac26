//! ACPI tables (ACPI 6.0): RSDP, XSDT and RSDT, FADT, FACS, MADT, a DSDT
//! with `\_S5` (so the guest can power off) and the PCI host bridge, and the
//! HPET description table (IA-PC HPET specification 1.0a, 3.2.4).
//!
//! Layout from the base address (0xe0000 by default, where the kernel scans for
//! the RSDP), each table 16-byte aligned, the FACS 64-byte aligned:
//!
//! ```text
//!   RSDP (36)  FACS (64)  DSDT  FADT (276)  MADT  HPET (56)  XSDT  RSDT
//! ```
//!
//! The fixed hardware the FADT describes, and what the device model must do:
//!
//! | block | default port | width | meaning |
//! | --- | --- | --- | --- |
//! | PM1a_EVT_BLK | 0x600 | 4 bytes | PM1 status (2) + enable (2) |
//! | PM1a_CNT_BLK | 0x604 | 2 bytes | SCI_EN (bit 0) must read 1: there is no SMI_CMD, so the OS assumes ACPI mode is on; writing SLP_EN (bit 13) with SLP_TYP (bits 10-12) = 0, the PIIX4's soft off, powers off |
//! | PM_TMR_BLK | 0x608 | 4 bytes | 24-bit 3.579545 MHz counter |
//! | RESET_REG | 0xcf9 | 1 byte | writing 0x06 resets the machine |
//!
//! The SCI is ISA IRQ 9, level-triggered active-high (an interrupt source
//! override says so). PCI INTx is described by `_PRT` as the PIIX3 wires it
//! (devices/src/pci/piix.rs): pin `p` (INTA = 0) of slot `s` drives PIRQ
//! `(s + p + 3) % 4`, and PIRQA-D reach GSIs `gsis` (default 10, 10, 11, 11,
//! the routes the chipset programs; level-triggered).

use mmu::{GuestMemory, MemError};

use crate::mptable::{IOAPIC_BASE, LAPIC_BASE, MAX_CPUS};

/// Where the PM1a event block starts by default: the PIIX4 PM function's
/// block where SeaBIOS programs it and a machine without firmware starts
/// with it ([`AcpiConfig::with_pm_block`] for another place: OVMF's 0xB000).
pub const PM_BLOCK: u16 = 0x600;

/// Default base of the ACPI tables.
pub const ACPI_TABLES_START: u64 = 0xe_0000;
/// The RSDP must lie below this (the BIOS read-only area ends at 1 MiB).
const BIOS_AREA_END: u64 = 0x10_0000;

const OEM_ID: [u8; 6] = *b"FERRVM";
const OEM_TABLE_ID: [u8; 8] = *b"FERROVM ";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: [u8; 4] = *b"FRVM";
const CREATOR_REVISION: u32 = 1;
const HEADER_SIZE: usize = 36;

/// FADT revision and minor version: ACPI 6.0.
const FADT_REVISION: u8 = 6;
const FADT_MINOR: u8 = 0;
const FADT_SIZE: usize = 276;
/// MADT revision for ACPI 6.0.
const MADT_REVISION: u8 = 4;
/// DSDT revision 2: integers are 64-bit.
const DSDT_REVISION: u8 = 2;
const XSDT_REVISION: u8 = 1;
/// HPET description table revision (IA-PC HPET 1.0a, table 3).
const HPET_TABLE_REVISION: u8 = 1;
const HPET_TABLE_SIZE: usize = 56;
const RSDT_REVISION: u8 = 1;
const RSDP_REVISION: u8 = 2;
const RSDP_SIZE: usize = 36;
const FACS_SIZE: usize = 64;
const FACS_VERSION: u8 = 2;

// FADT flags (ACPI 6.0, table 5-35).
const FADT_WBINVD: u32 = 1 << 0;
const FADT_PROC_C1: u32 = 1 << 2;
/// The power button is a control-method device or absent (no fixed-feature button).
const FADT_PWR_BUTTON: u32 = 1 << 4;
/// No fixed-feature sleep button.
const FADT_SLP_BUTTON: u32 = 1 << 5;
const FADT_RESET_REG_SUP: u32 = 1 << 10;
/// Bit 20, HW_REDUCED_ACPI: deliberately never set — this is a full PC.
#[cfg(test)]
const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
// IA-PC boot architecture flags.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// P_LVL2_LAT above 100 and P_LVL3_LAT above 1000: no C2/C3.
const P_LVL2_LAT_NONE: u16 = 101;
const P_LVL3_LAT_NONE: u16 = 1001;
/// Preferred PM profile: unspecified.
const PM_PROFILE_UNSPECIFIED: u8 = 0;

// Generic address structure: address space ids and access sizes.
const GAS_SYSTEM_MEMORY: u8 = 0;
const GAS_SYSTEM_IO: u8 = 1;
const GAS_ACCESS_BYTE: u8 = 1;

// MADT (ACPI 6.0, 5.2.12).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INT_SRC_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_LAPIC_ENABLED: u32 = 1;
/// MPS INTI flags: polarity bits 0-1 (01 high, 11 low), trigger bits 2-3 (01 edge, 11 level).
const MPS_INTI_CONFORMS: u16 = 0;
const MPS_INTI_ACTIVE_HIGH: u16 = 0b01;
const MPS_INTI_LEVEL: u16 = 0b11 << 2;
const ALL_PROCESSORS: u8 = 0xff;
/// The ISA bus in interrupt source overrides.
const ISA_BUS: u8 = 0;
/// IRQ 0 (the PIT) is I/O APIC input 2 on a PC.
const PIT_IRQ: u8 = 0;
const PIT_GSI: u32 = 2;
/// LINT1 carries NMI.
const NMI_LINT: u8 = 1;

// The HPET description table (IA-PC HPET 1.0a, 3.2.4, table 3).
/// Where the HPET's registers are, as the device model places them.
pub const HPET_BASE: u64 = 0xfed0_0000;
/// The device model's General Capabilities and ID register, low 32 bits:
/// vendor 0x8086, LegacyReplacement capable (bit 15), 64-bit counter (bit
/// 13), three timers (NUM_TIM_CAP = 2 in bits 12:8), revision 1.
pub const HPET_EVENT_TIMER_BLOCK_ID: u32 = 0x8086_a201;
/// Main Counter Minimum Clock_tick in Periodic Mode: 128 ticks (1.28 us at
/// 100 MHz), the value PC chipsets report.
pub const HPET_MIN_CLOCK_TICK: u16 = 128;
/// Page Protection and OEM Attribute, bits 3:0 = 1: the 1 KiB register
/// block is alone in its 4 KiB page, so the OS may map the whole page.
const HPET_PAGE_PROTECT_4K: u8 = 1;
/// The register block's width in the base address GAS: 64-bit registers.
const HPET_REGISTER_BIT_WIDTH: u8 = 64;

/// Errors writing the tables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI supports 1 to {MAX_CPUS} CPUs here, not {0}")]
    BadCpuCount(usize),
    #[error("the MADT needs distinct local APIC IDs below {MAX_CPUS}, not {0:?}")]
    BadApicIds(Vec<u8>),
    #[error(
        "the ACPI tables at {start:#x}..{end:#x} do not fit below {limit:#x} (or the base is not 16-byte aligned)"
    )]
    DoesNotFit { start: u64, end: u64, limit: u64 },
    #[error(transparent)]
    Memory(#[from] MemError),
}

/// The PCI host bridge the DSDT describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciHostConfig {
    /// 32-bit MMIO window for BARs: first and last byte.
    pub mmio32: (u32, u32),
    /// GSIs that PIRQA..PIRQD reach (the PIIX3 route registers); slot `s`
    /// pin `p` drives PIRQ `(s + p + 3) % 4`.
    pub gsis: [u32; 4],
}

impl Default for PciHostConfig {
    fn default() -> Self {
        // From the PCI hole's start up to the I/O APIC.
        PciHostConfig { mmio32: (0xc000_0000, 0xfebf_ffff), gsis: [10, 10, 11, 11] }
    }
}

/// The HPET the "HPET" table describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HpetConfig {
    /// Physical address of the register block.
    pub base: u64,
    /// The General Capabilities and ID register's low 32 bits.
    pub event_timer_block_id: u32,
    /// Minimum periodic-mode tick count without lost interrupts.
    pub min_clock_tick: u16,
}

impl Default for HpetConfig {
    fn default() -> Self {
        HpetConfig {
            base: HPET_BASE,
            event_timer_block_id: HPET_EVENT_TIMER_BLOCK_ID,
            min_clock_tick: HPET_MIN_CLOCK_TICK,
        }
    }
}

/// The platform the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    /// The CPUs' local APIC IDs, the bootstrap processor's first; the
    /// MADT's processor UIDs are their indices.
    pub apic_ids: Vec<u8>,
    pub pm1a_evt_port: u16,
    pub pm1a_cnt_port: u16,
    pub pm_tmr_port: u16,
    /// The SCI's ISA IRQ (also its GSI).
    pub sci_irq: u8,
    /// The reset register's I/O port and the value that resets.
    pub reset_port: u16,
    pub reset_value: u8,
    pub lapic_base: u32,
    pub ioapic_base: u32,
    /// Whether a VGA is present (else the FADT says so, and the kernel skips it).
    pub vga: bool,
    /// The PCI host bridge; `None` for a machine without PCI.
    pub pci: Option<PciHostConfig>,
    /// The HPET; `None` for a machine without one.
    pub hpet: Option<HpetConfig>,
}

impl AcpiConfig {
    /// The defaults for `cpus` CPUs with APIC IDs 0, 1, ...
    pub fn new(cpus: u8) -> Self {
        Self::with_apic_ids((0..cpus).collect())
    }

    /// The defaults for CPUs with these APIC IDs (the bootstrap processor's first).
    pub fn with_apic_ids(apic_ids: Vec<u8>) -> Self {
        AcpiConfig {
            apic_ids,
            pm1a_evt_port: PM_BLOCK,
            pm1a_cnt_port: PM_BLOCK + 4,
            pm_tmr_port: PM_BLOCK + 8,
            sci_irq: 9,
            reset_port: 0xcf9,
            reset_value: 0x06,
            lapic_base: LAPIC_BASE,
            ioapic_base: IOAPIC_BASE,
            vga: false,
            pci: Some(PciHostConfig::default()),
            hpet: Some(HpetConfig::default()),
        }
    }

    /// These tables with the PM1a event block at `base`, its control
    /// block and PM timer after it as the PIIX4 lays them out (+4, +8).
    pub fn with_pm_block(self, base: u16) -> Self {
        AcpiConfig {
            pm1a_evt_port: base,
            pm1a_cnt_port: base.wrapping_add(4),
            pm_tmr_port: base.wrapping_add(8),
            ..self
        }
    }

    /// The number of CPUs.
    pub fn cpus(&self) -> usize {
        self.apic_ids.len()
    }

    /// The I/O APIC's id: the first after the CPUs' (as in the MP table).
    pub fn ioapic_id(&self) -> u8 {
        self.apic_ids.iter().max().map_or(0, |m| m.saturating_add(1))
    }
}

/// Where each table went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiTables {
    pub rsdp: u64,
    pub facs: u64,
    pub dsdt: u64,
    pub fadt: u64,
    pub madt: u64,
    /// The HPET table, when the machine has an HPET.
    pub hpet: Option<u64>,
    pub xsdt: u64,
    pub rsdt: u64,
    /// End (exclusive) of what was written.
    pub end: u64,
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// A system description table: the 36-byte header, then `body`, checksummed.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(HEADER_SIZE + body.len());
    t.extend_from_slice(signature);
    // Tables here are a few KiB.
    t.extend_from_slice(&((HEADER_SIZE + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(&OEM_ID);
    t.extend_from_slice(&OEM_TABLE_ID);
    t.extend_from_slice(&OEM_REVISION.to_le_bytes());
    t.extend_from_slice(&CREATOR_ID);
    t.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// A generic address structure for a system I/O register block.
fn gas_io(port: u16, bit_width: u8, access_size: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = GAS_SYSTEM_IO;
    g[1] = bit_width;
    g[2] = 0; // bit offset
    g[3] = access_size;
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// A generic address structure for a memory-mapped register block.
fn gas_memory(address: u64, bit_width: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = GAS_SYSTEM_MEMORY;
    g[1] = bit_width;
    g[2] = 0; // bit offset
    g[3] = 0; // access size: undefined (the registers take 32- and 64-bit accesses)
    g[4..12].copy_from_slice(&address.to_le_bytes());
    g
}

fn put(t: &mut [u8], at: usize, bytes: &[u8]) {
    t[at..at + bytes.len()].copy_from_slice(bytes);
}

/// The FADT body (after the header), ACPI 6.0 table 5-34.
fn fadt(cfg: &AcpiConfig, facs: u64, dsdt: u64) -> Vec<u8> {
    const PM1_EVT_LEN: u8 = 4;
    const PM1_CNT_LEN: u8 = 2;
    const PM_TMR_LEN: u8 = 4;
    let mut t = vec![0u8; FADT_SIZE];
    // The tables sit below 1 MiB: the 32-bit pointers are exact.
    put(&mut t, 36, &(facs as u32).to_le_bytes()); // FIRMWARE_CTRL
    put(&mut t, 40, &(dsdt as u32).to_le_bytes()); // DSDT
    t[45] = PM_PROFILE_UNSPECIFIED;
    // SCI_INT. SMI_CMD (48) stays 0: no SMM, the OS finds ACPI mode already on.
    put(&mut t, 46, &u16::from(cfg.sci_irq).to_le_bytes());
    put(&mut t, 56, &u32::from(cfg.pm1a_evt_port).to_le_bytes());
    put(&mut t, 64, &u32::from(cfg.pm1a_cnt_port).to_le_bytes());
    put(&mut t, 76, &u32::from(cfg.pm_tmr_port).to_le_bytes());
    t[88] = PM1_EVT_LEN;
    t[89] = PM1_CNT_LEN;
    t[91] = PM_TMR_LEN;
    put(&mut t, 96, &P_LVL2_LAT_NONE.to_le_bytes());
    put(&mut t, 98, &P_LVL3_LAT_NONE.to_le_bytes());
    let mut boot_arch = IAPC_LEGACY_DEVICES | IAPC_8042;
    if !cfg.vga {
        boot_arch |= IAPC_VGA_NOT_PRESENT;
    }
    put(&mut t, 109, &boot_arch.to_le_bytes());
    let flags = FADT_WBINVD | FADT_PROC_C1 | FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_RESET_REG_SUP;
    put(&mut t, 112, &flags.to_le_bytes());
    put(&mut t, 116, &gas_io(cfg.reset_port, 8, GAS_ACCESS_BYTE));
    t[128] = cfg.reset_value;
    t[131] = FADT_MINOR;
    // X_FIRMWARE_CTRL (132) stays 0: FIRMWARE_CTRL holds the FACS.
    put(&mut t, 140, &dsdt.to_le_bytes()); // X_DSDT
    put(&mut t, 148, &gas_io(cfg.pm1a_evt_port, PM1_EVT_LEN * 8, 0));
    put(&mut t, 172, &gas_io(cfg.pm1a_cnt_port, PM1_CNT_LEN * 8, 0));
    put(&mut t, 208, &gas_io(cfg.pm_tmr_port, PM_TMR_LEN * 8, 0));
    let table = sdt(b"FACP", FADT_REVISION, &t[HEADER_SIZE..]);
    debug_assert_eq!(table.len(), FADT_SIZE);
    table
}

/// The MADT: local APICs, the I/O APIC, the PIT and SCI overrides, NMI on LINT1.
fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&cfg.lapic_base.to_le_bytes());
    b.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for (uid, &id) in cfg.apic_ids.iter().enumerate() {
        // Processor UIDs are indices (at most 254 CPUs, checked before).
        b.extend_from_slice(&[MADT_LOCAL_APIC, 8, uid as u8, id]);
        b.extend_from_slice(&MADT_LAPIC_ENABLED.to_le_bytes());
    }
    b.extend_from_slice(&[MADT_IO_APIC, 12, cfg.ioapic_id(), 0]);
    b.extend_from_slice(&cfg.ioapic_base.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    let mut iso = |irq: u8, gsi: u32, flags: u16| {
        b.extend_from_slice(&[MADT_INT_SRC_OVERRIDE, 10, ISA_BUS, irq]);
        b.extend_from_slice(&gsi.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
    };
    iso(PIT_IRQ, PIT_GSI, MPS_INTI_CONFORMS);
    iso(cfg.sci_irq, u32::from(cfg.sci_irq), MPS_INTI_ACTIVE_HIGH | MPS_INTI_LEVEL);
    b.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS]);
    b.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    b.push(NMI_LINT);
    sdt(b"APIC", MADT_REVISION, &b)
}

/// The DSDT: `\_S5` and, with PCI, `\_SB.PCI0` with its resources and routing.
fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    use aml::*;
    // Name(\_S5, Package() {0, 0, 0, 0}): SLP_TYPa = SLP_TYPb = 0, the
    // PIIX4's soft off (82371AB datasheet, PMCNTRL SUS_TYP 000b).
    let mut body = name("\\_S5", &package(&[integer(0), integer(0), integer(0), integer(0)]));
    if let Some(pci) = &cfg.pci {
        let mut crs = Vec::new();
        crs.extend(word_bus_number(0, 0xff));
        crs.extend(io_port(0xcf8, 8));
        crs.extend(word_io(0x0000, 0x0cf7));
        crs.extend(word_io(0x0d00, 0xffff));
        crs.extend(dword_memory(0x000a_0000, 0x000b_ffff));
        crs.extend(dword_memory(pci.mmio32.0, pci.mmio32.1));
        crs.extend(end_tag());
        let mut prt = Vec::new();
        for slot in 0u32..32 {
            for pin in 0u32..4 {
                // The PIIX3 swizzle (piix::pirq_of): INTA of slot 1 is PIRQA.
                // (slot + pin + 3) % 4 is in 0..4.
                let gsi = pci.gsis[((slot + pin + 3) % 4) as usize];
                prt.push(package(&[
                    integer(u64::from(slot << 16 | 0xffff)),
                    integer(u64::from(pin)),
                    integer(0),
                    integer(u64::from(gsi)),
                ]));
            }
        }
        let mut dev = Vec::new();
        dev.extend(name("_HID", &eisa_id("PNP0A03")));
        dev.extend(name("_ADR", &integer(0)));
        dev.extend(name("_UID", &integer(0)));
        dev.extend(name("_SEG", &integer(0)));
        dev.extend(name("_BBN", &integer(0)));
        dev.extend(name("_CRS", &buffer(&crs)));
        dev.extend(name("_PRT", &package(&prt)));
        body.extend(scope("\\_SB_", &device("PCI0", &dev)));
    }
    sdt(b"DSDT", DSDT_REVISION, &body)
}

/// The HPET description table (IA-PC HPET 1.0a, 3.2.4, table 3): event
/// timer block ID, base address, HPET number 0, minimum tick, page protection.
fn hpet(cfg: &HpetConfig) -> Vec<u8> {
    let mut b = Vec::with_capacity(HPET_TABLE_SIZE - HEADER_SIZE);
    b.extend_from_slice(&cfg.event_timer_block_id.to_le_bytes());
    b.extend_from_slice(&gas_memory(cfg.base, HPET_REGISTER_BIT_WIDTH));
    b.push(0); // HPET number: the first (and only) block
    b.extend_from_slice(&cfg.min_clock_tick.to_le_bytes());
    b.push(HPET_PAGE_PROTECT_4K);
    let table = sdt(b"HPET", HPET_TABLE_REVISION, &b);
    debug_assert_eq!(table.len(), HPET_TABLE_SIZE);
    table
}

fn facs() -> Vec<u8> {
    let mut f = vec![0u8; FACS_SIZE];
    put(&mut f, 0, b"FACS");
    put(&mut f, 4, &(FACS_SIZE as u32).to_le_bytes());
    f[32] = FACS_VERSION;
    f
}

fn rsdp(rsdt: u64, xsdt: u64) -> Vec<u8> {
    let mut r = vec![0u8; RSDP_SIZE];
    put(&mut r, 0, b"RSD PTR ");
    put(&mut r, 9, &OEM_ID);
    r[15] = RSDP_REVISION;
    // Below 1 MiB: exact.
    put(&mut r, 16, &(rsdt as u32).to_le_bytes());
    put(&mut r, 20, &(RSDP_SIZE as u32).to_le_bytes());
    put(&mut r, 24, &xsdt.to_le_bytes());
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// The tables as firmware hands them over: two blobs whose pointer fields
/// hold offsets, and the commands of QEMU's BIOS linker/loader that place
/// them and turn those offsets into addresses (SeaBIOS
/// src/fw/romfile_loader.c runs them from the fw_cfg file
/// `etc/table-loader`; [`write_acpi_tables`] runs the same commands on the
/// host for a directly booted kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiBlobs {
    /// The RSDP ([`ACPI_RSDP_FILE`]); its RSDT and XSDT addresses are
    /// offsets into `tables`.
    pub rsdp: Vec<u8>,
    /// FACS, DSDT, FADT, MADT, HPET, XSDT and RSDT ([`ACPI_TABLES_FILE`]),
    /// from offset 0; pointers between them are offsets into this blob.
    pub tables: Vec<u8>,
    /// Where each table is in `tables` (offsets; `rsdp` is 0 and `end` is
    /// the blob's length).
    pub offsets: AcpiTables,
    /// The loader's commands, in order.
    pub commands: Vec<LoaderCommand>,
}

/// The fw_cfg file holding the RSDP.
pub const ACPI_RSDP_FILE: &str = "etc/acpi/rsdp";
/// The fw_cfg file holding the other tables.
pub const ACPI_TABLES_FILE: &str = "etc/acpi/tables";
/// The fw_cfg file holding the loader's commands.
pub const TABLE_LOADER_FILE: &str = "etc/table-loader";
/// The alignment of the tables blob: the FACS, its first table, needs 64.
const TABLES_ALIGN: u32 = 64;
/// The alignment of the RSDP (the OS scans 16-byte boundaries).
const RSDP_ALIGN: u32 = 16;

/// Where the loader allocates a file (SeaBIOS's malloc zones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoaderZone {
    /// High memory, below the top of RAM under 4 GiB.
    High = 1,
    /// The BIOS area 0xF0000-0xFFFFF, where the OS looks for the RSDP.
    FSeg = 2,
}

/// One command of the BIOS linker/loader (QEMU hw/acpi/bios-linker-loader.c,
/// SeaBIOS src/fw/romfile_loader.h). Each is a 128-byte little-endian
/// record: a le32 command, then its fields; file names take 56 bytes,
/// zero-padded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoaderCommand {
    /// Allocate room for `file` (aligned to `align`, a power of two) in
    /// `zone` and copy it in. Comes before any command naming the file.
    Allocate { file: &'static str, align: u32, zone: LoaderZone },
    /// Add the address where `src` was allocated to the little-endian
    /// `size`-byte (1, 2, 4 or 8) value at `offset` in `dest`.
    AddPointer { dest: &'static str, src: &'static str, offset: u32, size: u8 },
    /// Subtract the 8-bit sum of `file[start..start + len]` from the byte at
    /// `offset`, so the range sums to zero (the byte lies in the range).
    AddChecksum { file: &'static str, offset: u32, start: u32, len: u32 },
}

/// Bytes of one loader command.
pub const LOADER_COMMAND_SIZE: usize = 128;
/// Bytes of a file name in a loader command.
const LOADER_FILE_NAME: usize = 56;

impl LoaderCommand {
    /// The 128-byte record.
    pub fn to_bytes(&self) -> [u8; LOADER_COMMAND_SIZE] {
        fn name(b: &mut [u8], at: usize, n: &str) {
            debug_assert!(n.len() < LOADER_FILE_NAME);
            b[at..at + n.len()].copy_from_slice(n.as_bytes());
        }
        let mut b = [0u8; LOADER_COMMAND_SIZE];
        match self {
            LoaderCommand::Allocate { file, align, zone } => {
                b[0..4].copy_from_slice(&1u32.to_le_bytes());
                name(&mut b, 4, file);
                b[60..64].copy_from_slice(&align.to_le_bytes());
                b[64] = *zone as u8;
            }
            LoaderCommand::AddPointer { dest, src, offset, size } => {
                b[0..4].copy_from_slice(&2u32.to_le_bytes());
                name(&mut b, 4, dest);
                name(&mut b, 60, src);
                b[116..120].copy_from_slice(&offset.to_le_bytes());
                b[120] = *size;
            }
            LoaderCommand::AddChecksum { file, offset, start, len } => {
                b[0..4].copy_from_slice(&3u32.to_le_bytes());
                name(&mut b, 4, file);
                b[60..64].copy_from_slice(&offset.to_le_bytes());
                b[64..68].copy_from_slice(&start.to_le_bytes());
                b[68..72].copy_from_slice(&len.to_le_bytes());
            }
        }
        b
    }
}

impl AcpiBlobs {
    /// The `etc/table-loader` file: the commands' records, one after another.
    pub fn table_loader(&self) -> Vec<u8> {
        self.commands.iter().flat_map(|c| c.to_bytes()).collect()
    }

    /// Run the loader's pointer and checksum commands on the host, with
    /// the RSDP at `rsdp_at` and the tables at `tables_at`: the two blobs
    /// as they must be written there. (Allocation is the caller's: these
    /// addresses.)
    pub fn link(&self, rsdp_at: u64, tables_at: u64) -> (Vec<u8>, Vec<u8>) {
        let mut rsdp = self.rsdp.clone();
        let mut tables = self.tables.clone();
        let base = |f: &str| if f == ACPI_RSDP_FILE { rsdp_at } else { tables_at };
        for c in &self.commands {
            match c {
                LoaderCommand::Allocate { .. } => {}
                LoaderCommand::AddPointer { dest, src, offset, size } => {
                    let blob = if *dest == ACPI_RSDP_FILE { &mut rsdp } else { &mut tables };
                    let (at, n) = (*offset as usize, usize::from(*size));
                    let mut v = [0u8; 8];
                    v[..n].copy_from_slice(&blob[at..at + n]);
                    let p = u64::from_le_bytes(v).wrapping_add(base(src));
                    blob[at..at + n].copy_from_slice(&p.to_le_bytes()[..n]);
                }
                LoaderCommand::AddChecksum { file, offset, start, len } => {
                    let blob = if *file == ACPI_RSDP_FILE { &mut rsdp } else { &mut tables };
                    let sum =
                        blob[*start as usize..(*start + *len) as usize].iter().fold(0u8, |a, &b| a.wrapping_add(b));
                    blob[*offset as usize] = blob[*offset as usize].wrapping_sub(sum);
                }
            }
        }
        (rsdp, tables)
    }
}

/// Build the tables as [`AcpiBlobs`].
pub fn build_acpi_tables(cfg: &AcpiConfig) -> Result<AcpiBlobs, AcpiError> {
    crate::mptable::check_apic_ids(&cfg.apic_ids).map_err(|e| match e {
        crate::mptable::MpTableError::BadApicIds(ids) => AcpiError::BadApicIds(ids),
        _ => AcpiError::BadCpuCount(cfg.cpus()),
    })?;
    let mut tables: Vec<u8> = Vec::new();
    let mut place = |t: &[u8], align: usize| {
        let at = tables.len().next_multiple_of(align);
        tables.resize(at, 0);
        tables.extend_from_slice(t);
        at as u64
    };
    let facs_at = place(&facs(), 64);
    let dsdt_table = dsdt(cfg);
    let dsdt_at = place(&dsdt_table, 16);
    // The FADT's pointers are offsets here; the loader adds the base.
    let fadt_at = place(&fadt(cfg, 0, 0), 16);
    let madt_at = place(&madt(cfg), 16);
    let hpet_at = cfg.hpet.as_ref().map(|h| place(&hpet(h), 16));
    let entries: Vec<u64> = [Some(fadt_at), Some(madt_at), hpet_at].into_iter().flatten().collect();
    let xsdt_at = place(&sdt(b"XSDT", XSDT_REVISION, &vec![0u8; 8 * entries.len()]), 16);
    let rsdt_at = place(&sdt(b"RSDT", RSDT_REVISION, &vec![0u8; 4 * entries.len()]), 16);
    let end = tables.len() as u64;

    const T: &str = ACPI_TABLES_FILE;
    const R: &str = ACPI_RSDP_FILE;
    let mut commands = vec![
        LoaderCommand::Allocate { file: T, align: TABLES_ALIGN, zone: LoaderZone::High },
        LoaderCommand::Allocate { file: R, align: RSDP_ALIGN, zone: LoaderZone::FSeg },
    ];
    // Pointer fields hold offsets in the blob; each gets the blob's base.
    let mut pointer = |tables: &mut Vec<u8>, field: u64, target: u64, size: u8| {
        let f = field as usize;
        let n = usize::from(size);
        tables[f..f + n].copy_from_slice(&target.to_le_bytes()[..n]);
        commands.push(LoaderCommand::AddPointer { dest: T, src: T, offset: field as u32, size });
    };
    // FADT: FIRMWARE_CTRL, DSDT, X_DSDT.
    pointer(&mut tables, fadt_at + 36, facs_at, 4);
    pointer(&mut tables, fadt_at + 40, dsdt_at, 4);
    pointer(&mut tables, fadt_at + 140, dsdt_at, 8);
    for (i, &e) in entries.iter().enumerate() {
        pointer(&mut tables, xsdt_at + HEADER_SIZE as u64 + 8 * i as u64, e, 8);
        pointer(&mut tables, rsdt_at + HEADER_SIZE as u64 + 4 * i as u64, e, 4);
    }
    for at in [fadt_at as usize, xsdt_at as usize, rsdt_at as usize] {
        // The loader's sum includes the checksum byte: it starts at 0.
        let len = u32::from_le_bytes([tables[at + 4], tables[at + 5], tables[at + 6], tables[at + 7]]);
        tables[at + 9] = 0;
        commands.push(LoaderCommand::AddChecksum { file: T, offset: at as u32 + 9, start: at as u32, len });
    }
    let mut rsdp_blob = rsdp(rsdt_at, xsdt_at);
    commands.push(LoaderCommand::AddPointer { dest: R, src: T, offset: 16, size: 4 });
    commands.push(LoaderCommand::AddPointer { dest: R, src: T, offset: 24, size: 8 });
    // The first checksum covers the ACPI 1.0 part, the extended one all of it.
    rsdp_blob[8] = 0;
    rsdp_blob[32] = 0;
    commands.push(LoaderCommand::AddChecksum { file: R, offset: 8, start: 0, len: 20 });
    commands.push(LoaderCommand::AddChecksum { file: R, offset: 32, start: 0, len: RSDP_SIZE as u32 });
    Ok(AcpiBlobs {
        rsdp: rsdp_blob,
        tables,
        offsets: AcpiTables {
            rsdp: 0,
            facs: facs_at,
            dsdt: dsdt_at,
            fadt: fadt_at,
            madt: madt_at,
            hpet: hpet_at,
            xsdt: xsdt_at,
            rsdt: rsdt_at,
            end,
        },
        commands,
    })
}

/// Write the tables for a directly booted kernel at `base` (the RSDP
/// first, the other tables from the next 64-byte boundary), linked by the
/// same loader commands SeaBIOS runs.
pub fn write_acpi_tables(mem: &GuestMemory, base: u64, cfg: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    let blobs = build_acpi_tables(cfg)?;
    let tables_at = (base + RSDP_SIZE as u64).next_multiple_of(u64::from(TABLES_ALIGN));
    let end = tables_at + blobs.offsets.end;
    if !base.is_multiple_of(16) || end > BIOS_AREA_END {
        return Err(AcpiError::DoesNotFit { start: base, end, limit: BIOS_AREA_END });
    }
    let (rsdp, tables) = blobs.link(base, tables_at);
    mem.write(base, &rsdp)?;
    mem.write(tables_at, &tables)?;
    let o = blobs.offsets;
    Ok(AcpiTables {
        rsdp: base,
        facs: tables_at + o.facs,
        dsdt: tables_at + o.dsdt,
        fadt: tables_at + o.fadt,
        madt: tables_at + o.madt,
        hpet: o.hpet.map(|h| tables_at + h),
        xsdt: tables_at + o.xsdt,
        rsdt: tables_at + o.rsdt,
        end,
    })
}

mod aml {
    const ZERO_OP: u8 = 0x00;
    const ONE_OP: u8 = 0x01;
    const NAME_OP: u8 = 0x08;
    const BYTE_PREFIX: u8 = 0x0a;
    const WORD_PREFIX: u8 = 0x0b;
    const DWORD_PREFIX: u8 = 0x0c;
    const QWORD_PREFIX: u8 = 0x0e;
    const SCOPE_OP: u8 = 0x10;
    const BUFFER_OP: u8 = 0x11;
    const PACKAGE_OP: u8 = 0x12;
    const EXT_OP_PREFIX: u8 = 0x5b;
    const DEVICE_OP: u8 = 0x82;
    const ROOT_CHAR: u8 = b'\\';
    const DUAL_NAME_PREFIX: u8 = 0x2e;
    const MULTI_NAME_PREFIX: u8 = 0x2f;

    /// PkgLength: the length of what follows it, itself included, in 1 to 4
    /// bytes (bits 7-6 of the lead byte count the extra bytes).
    pub fn pkg_length(content: usize) -> Vec<u8> {
        for extra in 0..4usize {
            let total = content + 1 + extra;
            let fits = match extra {
                0 => total < 0x40,
                n => total < 1 << (4 + 8 * n),
            };
            if fits {
                if extra == 0 {
                    return vec![total as u8];
                }
                let mut v = vec![((extra as u8) << 6) | (total & 0xf) as u8];
                for i in 0..extra {
                    v.push((total >> (4 + 8 * i)) as u8);
                }
                return v;
            }
        }
        panic!("AML package of {content} bytes is larger than PkgLength can encode (256 MiB)");
    }

    fn with_length(op: &[u8], content: Vec<u8>) -> Vec<u8> {
        let mut v = op.to_vec();
        v.extend(pkg_length(content.len()));
        v.extend(content);
        v
    }

    /// A name string: optional root `\`, then 4-character segments separated
    /// by dots (shorter ones padded with `_`).
    pub fn name_string(path: &str) -> Vec<u8> {
        let mut v = Vec::new();
        let rest = match path.strip_prefix('\\') {
            Some(r) => {
                v.push(ROOT_CHAR);
                r
            }
            None => path,
        };
        let segs: Vec<[u8; 4]> = rest
            .split('.')
            .map(|s| {
                assert!(!s.is_empty() && s.len() <= 4, "AML name segment {s:?} must be 1 to 4 characters");
                let mut seg = [b'_'; 4];
                seg[..s.len()].copy_from_slice(s.as_bytes());
                seg
            })
            .collect();
        match segs.len() {
            1 => {}
            2 => v.push(DUAL_NAME_PREFIX),
            n => {
                v.push(MULTI_NAME_PREFIX);
                v.push(u8::try_from(n).expect("fewer than 256 name segments"));
            }
        }
        for s in segs {
            v.extend_from_slice(&s);
        }
        v
    }

    pub fn integer(n: u64) -> Vec<u8> {
        match n {
            0 => vec![ZERO_OP],
            1 => vec![ONE_OP],
            n if n <= 0xff => vec![BYTE_PREFIX, n as u8],
            n if n <= 0xffff => {
                let mut v = vec![WORD_PREFIX];
                v.extend_from_slice(&(n as u16).to_le_bytes());
                v
            }
            n if n <= 0xffff_ffff => {
                let mut v = vec![DWORD_PREFIX];
                v.extend_from_slice(&(n as u32).to_le_bytes());
                v
            }
            n => {
                let mut v = vec![QWORD_PREFIX];
                v.extend_from_slice(&n.to_le_bytes());
                v
            }
        }
    }

    /// EISAID("PNP0A03"): three letters in 5 bits each, then four hex digits,
    /// as a big-endian 32-bit value stored as a DWord.
    pub fn eisa_id(id: &str) -> Vec<u8> {
        let b = id.as_bytes();
        assert!(b.len() == 7 && b[..3].iter().all(u8::is_ascii_uppercase), "EISA id {id:?}");
        let letters = b[..3].iter().fold(0u32, |acc, &c| (acc << 5) | u32::from(c - b'@'));
        let product = u32::from_str_radix(&id[3..], 16).expect("EISA id product is four hex digits");
        let value = (letters << 16) | product;
        let mut v = vec![DWORD_PREFIX];
        v.extend_from_slice(&value.to_be_bytes());
        v
    }

    pub fn name(path: &str, object: &[u8]) -> Vec<u8> {
        let mut v = vec![NAME_OP];
        v.extend(name_string(path));
        v.extend_from_slice(object);
        v
    }

    pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
        let mut content = vec![u8::try_from(elements.len()).expect("fewer than 256 package elements")];
        for e in elements {
            content.extend_from_slice(e);
        }
        with_length(&[PACKAGE_OP], content)
    }

    pub fn buffer(bytes: &[u8]) -> Vec<u8> {
        let mut content = integer(bytes.len() as u64);
        content.extend_from_slice(bytes);
        with_length(&[BUFFER_OP], content)
    }

    pub fn scope(path: &str, terms: &[u8]) -> Vec<u8> {
        let mut content = name_string(path);
        content.extend_from_slice(terms);
        with_length(&[SCOPE_OP], content)
    }

    pub fn device(path: &str, terms: &[u8]) -> Vec<u8> {
        let mut content = name_string(path);
        content.extend_from_slice(terms);
        with_length(&[EXT_OP_PREFIX, DEVICE_OP], content)
    }

    // Resource descriptors (ACPI 6.0, 6.4).
    const WORD_ADDRESS_SPACE: u8 = 0x88;
    const DWORD_ADDRESS_SPACE: u8 = 0x87;
    const IO_PORT: u8 = 0x47;
    const END_TAG: u8 = 0x79;
    const RESOURCE_MEMORY: u8 = 0;
    const RESOURCE_IO: u8 = 1;
    const RESOURCE_BUS: u8 = 2;
    /// General flags: a producer with fixed minimum and maximum, positive decode.
    const MIN_MAX_FIXED: u8 = 0b1100;
    /// I/O type flags: the range covers ISA and non-ISA ports.
    const IO_ENTIRE_RANGE: u8 = 0b11;
    /// Memory type flags: read/write, cacheable.
    const MEM_RW_CACHEABLE: u8 = 0b011;
    /// IO port descriptor information: 16-bit decode.
    const IO_DECODE_16: u8 = 1;

    fn word_space(kind: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
        let mut v = vec![WORD_ADDRESS_SPACE, 13, 0, kind, MIN_MAX_FIXED, type_flags];
        let len = (u32::from(max) - u32::from(min) + 1) as u16;
        for x in [0u16, min, max, 0, len] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v
    }

    pub fn word_bus_number(min: u16, max: u16) -> Vec<u8> {
        word_space(RESOURCE_BUS, 0, min, max)
    }

    pub fn word_io(min: u16, max: u16) -> Vec<u8> {
        word_space(RESOURCE_IO, IO_ENTIRE_RANGE, min, max)
    }

    pub fn dword_memory(min: u32, max: u32) -> Vec<u8> {
        let mut v = vec![DWORD_ADDRESS_SPACE, 23, 0, RESOURCE_MEMORY, MIN_MAX_FIXED, MEM_RW_CACHEABLE];
        let len = max - min + 1;
        for x in [0u32, min, max, 0, len] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v
    }

    pub fn io_port(base: u16, len: u8) -> Vec<u8> {
        let mut v = vec![IO_PORT, IO_DECODE_16];
        v.extend_from_slice(&base.to_le_bytes());
        v.extend_from_slice(&base.to_le_bytes());
        v.push(1); // alignment
        v.push(len);
        v
    }

    /// The end tag; a zero checksum means "treat as valid".
    pub fn end_tag() -> Vec<u8> {
        vec![END_TAG, 0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read(addr, &mut v).unwrap();
        v
    }

    /// Read a table at `addr`, checking its signature, length and checksum.
    fn table(mem: &GuestMemory, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        let head = read(mem, addr, HEADER_SIZE);
        assert_eq!(&head[0..4], sig, "signature at {addr:#x}");
        let len = u32::from_le_bytes(head[4..8].try_into().unwrap()) as usize;
        let t = read(mem, addr, len);
        assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
        t
    }

    fn u32_at(t: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(t[at..at + 4].try_into().unwrap())
    }
    fn u64_at(t: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(t[at..at + 8].try_into().unwrap())
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// Find the RSDP as the kernel does (16-byte steps through 0xe0000..0x100000)
    /// and follow every pointer.
    #[test]
    fn tables_parse_back_with_valid_checksums_and_pointers() {
        let mem = GuestMemory::new(64 << 20).unwrap();
        let cfg = AcpiConfig::new(2);
        let placed = write_acpi_tables(&mem, ACPI_TABLES_START, &cfg).unwrap();
        assert!(placed.end <= 0xf_0000, "leaves the MP table area free");

        let area = read(&mem, 0xe_0000, 0x2_0000);
        let off = (0..area.len())
            .step_by(16)
            .find(|&o| &area[o..o + 8] == b"RSD PTR " && sum(&area[o..o + 20]) == 0)
            .expect("RSDP found");
        let rsdp = &area[off..off + 36];
        assert_eq!(sum(rsdp), 0, "extended checksum");
        assert_eq!(rsdp[15], 2);
        assert_eq!(u32_at(rsdp, 20), 36);
        let xsdt = table(&mem, u64_at(rsdp, 24), b"XSDT");
        let rsdt = table(&mem, u64::from(u32_at(rsdp, 16)), b"RSDT");
        let x_entries: Vec<u64> =
            xsdt[HEADER_SIZE..].chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        let r_entries: Vec<u64> = rsdt[HEADER_SIZE..].chunks(4).map(|c| u64::from(u32_at(c, 0))).collect();
        assert_eq!(x_entries, r_entries);
        assert_eq!(x_entries, vec![placed.fadt, placed.madt, placed.hpet.expect("an HPET table by default")]);

        // FADT.
        let fadt = table(&mem, placed.fadt, b"FACP");
        assert_eq!(fadt.len(), 276);
        assert!(fadt[8] >= 5, "FADT revision {}", fadt[8]);
        assert_eq!(u32_at(&fadt, 56), 0x600);
        assert_eq!(u32_at(&fadt, 64), 0x604);
        assert_eq!(u32_at(&fadt, 76), 0x608);
        assert_eq!((fadt[88], fadt[89], fadt[91]), (4, 2, 4));
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9);
        assert_eq!(u32_at(&fadt, 48), 0, "no SMI_CMD");
        let flags = u32_at(&fadt, 112);
        assert!(flags & FADT_RESET_REG_SUP != 0);
        assert_eq!(flags & FADT_HW_REDUCED_ACPI, 0);
        assert_eq!(&fadt[116..120], &[GAS_SYSTEM_IO, 8, 0, GAS_ACCESS_BYTE]);
        assert_eq!(u64_at(&fadt, 120), 0xcf9);
        assert_eq!(fadt[128], 0x06);
        assert_eq!((fadt[148], fadt[149], u64_at(&fadt, 152)), (GAS_SYSTEM_IO, 32, 0x600));
        assert_eq!((fadt[172], fadt[173], u64_at(&fadt, 176)), (GAS_SYSTEM_IO, 16, 0x604));
        assert_eq!((fadt[208], fadt[209], u64_at(&fadt, 212)), (GAS_SYSTEM_IO, 32, 0x608));
        assert!(u16::from_le_bytes([fadt[109], fadt[110]]) & IAPC_8042 != 0);
        // FACS and DSDT through the FADT.
        assert_eq!(u64::from(u32_at(&fadt, 36)), placed.facs);
        assert_eq!(placed.facs % 64, 0);
        let facs = read(&mem, placed.facs, 64);
        assert_eq!((&facs[0..4], u32_at(&facs, 4)), (&b"FACS"[..], 64));
        assert_eq!(u64_at(&fadt, 140), u64::from(u32_at(&fadt, 40)));
        let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
        // Name(\_S5, Package(4) {0, 0, 0, 0})
        assert!(contains(&dsdt, &[0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0, 0, 0, 0]));
        // Device(PCI0) under \_SB with _HID EISAID("PNP0A03") and a _PRT.
        assert!(contains(&dsdt, b"PCI0"));
        assert!(contains(&dsdt, &[b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03]));
        assert!(contains(&dsdt, b"_PRT"));
        assert!(contains(&dsdt, b"_CRS"));

        // MADT.
        let madt = table(&mem, placed.madt, b"APIC");
        assert_eq!(u32_at(&madt, 36), 0xfee0_0000);
        assert_eq!(u32_at(&madt, 40), MADT_PCAT_COMPAT);
        let (mut lapics, mut ioapics, mut isos, mut nmis) = (vec![], vec![], vec![], 0);
        let mut at = 44;
        while at < madt.len() {
            let (kind, len) = (madt[at], usize::from(madt[at + 1]));
            let e = &madt[at..at + len];
            match kind {
                MADT_LOCAL_APIC => lapics.push((e[2], e[3], u32_at(e, 4))),
                MADT_IO_APIC => ioapics.push((e[2], u32_at(e, 4), u32_at(e, 8))),
                MADT_INT_SRC_OVERRIDE => isos.push((e[2], e[3], u32_at(e, 4), u16::from_le_bytes([e[8], e[9]]))),
                MADT_LOCAL_APIC_NMI => {
                    assert_eq!((e[2], e[5]), (0xff, 1));
                    nmis += 1;
                }
                k => panic!("unexpected MADT entry {k}"),
            }
            at += len;
        }
        assert_eq!(at, madt.len());
        assert_eq!(lapics, vec![(0, 0, 1), (1, 1, 1)]);
        assert_eq!(ioapics, vec![(2, 0xfec0_0000, 0)]);
        assert_eq!(isos, vec![(0, 0, 2, 0), (0, 9, 9, 0x000d)]);
        assert_eq!(nmis, 1);
    }

    /// The HPET table, found through the XSDT and the RSDT as Linux finds it.
    /// The loader's commands, as SeaBIOS runs them, at any two addresses:
    /// every table sums to zero and every pointer lands on its table.
    #[test]
    fn the_loader_links_the_blobs_anywhere() {
        let blobs = build_acpi_tables(&AcpiConfig::new(1)).unwrap();
        let (rsdp_at, tables_at) = (0xf_5a30u64, 0x1ffe_0000u64);
        let (rsdp, tables) = blobs.link(rsdp_at, tables_at);
        assert_eq!((sum(&rsdp[..20]), sum(&rsdp)), (0, 0));
        let at = |addr: u64| &tables[(addr - tables_at) as usize..];
        let table = |addr: u64, sig: &[u8; 4]| {
            let t = at(addr);
            assert_eq!(&t[..4], sig);
            let t = &t[..u32_at(t, 4) as usize];
            assert_eq!(sum(t), 0, "{} checksum", String::from_utf8_lossy(sig));
            t.to_vec()
        };
        let xsdt = table(u64_at(&rsdp, 24), b"XSDT");
        let rsdt = table(u64::from(u32_at(&rsdp, 16)), b"RSDT");
        let o = blobs.offsets;
        assert_eq!(u64_at(&xsdt, 36), tables_at + o.fadt);
        assert_eq!(u64::from(u32_at(&rsdt, 40)), tables_at + o.madt);
        let fadt = table(tables_at + o.fadt, b"FACP");
        assert_eq!(u64::from(u32_at(&fadt, 36)), tables_at + o.facs);
        assert_eq!(u64_at(&fadt, 140), tables_at + o.dsdt);
        table(u64::from(u32_at(&fadt, 40)), b"DSDT");
        table(tables_at + o.hpet.unwrap(), b"HPET");
        table(tables_at + o.madt, b"APIC");
        assert_eq!((tables_at + o.facs) % 64, 0);
    }

    /// The records as SeaBIOS's `struct romfile_loader_entry_s` reads them.
    #[test]
    fn table_loader_records_have_seabios_layout() {
        let blobs = build_acpi_tables(&AcpiConfig::new(1)).unwrap();
        let file = blobs.table_loader();
        assert_eq!(file.len(), blobs.commands.len() * LOADER_COMMAND_SIZE);
        let rec = |i: usize| &file[i * 128..(i + 1) * 128];
        let name = |r: &[u8], at: usize| {
            let n = &r[at..at + 56];
            String::from_utf8(n[..n.iter().position(|&b| b == 0).unwrap()].to_vec()).unwrap()
        };
        // The tables first (high memory, 64-byte aligned), then the RSDP in the F segment.
        assert_eq!(
            (u32_at(rec(0), 0), name(rec(0), 4), u32_at(rec(0), 60), rec(0)[64]),
            (1, ACPI_TABLES_FILE.into(), 64, 1)
        );
        assert_eq!(
            (u32_at(rec(1), 0), name(rec(1), 4), u32_at(rec(1), 60), rec(1)[64]),
            (1, ACPI_RSDP_FILE.into(), 16, 2)
        );
        let p = rec(2);
        assert_eq!((u32_at(p, 0), name(p, 4), name(p, 60)), (2, ACPI_TABLES_FILE.into(), ACPI_TABLES_FILE.into()));
        assert_eq!((u32_at(p, 116), p[120]), (blobs.offsets.fadt as u32 + 36, 4));
        let last = rec(blobs.commands.len() - 1);
        assert_eq!((u32_at(last, 0), name(last, 4)), (3, ACPI_RSDP_FILE.into()));
        assert_eq!((u32_at(last, 60), u32_at(last, 64), u32_at(last, 68)), (32, 0, 36));
        // Every pointer command comes after both allocations, every checksum
        // of a file after that file's pointers.
        let kinds: Vec<u32> = (0..blobs.commands.len()).map(|i| u32_at(rec(i), 0)).collect();
        assert_eq!(&kinds[..2], &[1, 1]);
    }

    #[test]
    fn hpet_table_parses_and_is_listed() {
        let mem = GuestMemory::new(64 << 20).unwrap();
        let placed = write_acpi_tables(&mem, ACPI_TABLES_START, &AcpiConfig::new(1)).unwrap();
        let rsdp = read(&mem, placed.rsdp, RSDP_SIZE);
        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        let rsdt = table(&mem, u64::from(u32_at(&rsdp, 16)), b"RSDT");
        let signature_at = |addr: u64| read(&mem, addr, 4);
        let in_xsdt: Vec<u64> = xsdt[HEADER_SIZE..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .filter(|&a| signature_at(a) == b"HPET")
            .collect();
        let in_rsdt: Vec<u64> = rsdt[HEADER_SIZE..]
            .chunks(4)
            .map(|c| u64::from(u32_at(c, 0)))
            .filter(|&a| signature_at(a) == b"HPET")
            .collect();
        assert_eq!(in_xsdt, vec![placed.hpet.unwrap()], "listed once in the XSDT");
        assert_eq!(in_rsdt, in_xsdt, "and in the RSDT");

        let t = table(&mem, in_xsdt[0], b"HPET");
        assert_eq!(t.len(), 56, "IA-PC HPET 1.0a table 3");
        assert_eq!(t[8], 1, "revision");
        assert_eq!(&t[10..16], &OEM_ID);
        assert_eq!(u32_at(&t, 36), 0x8086_a201, "event timer block ID");
        assert_eq!(&t[40..44], &[GAS_SYSTEM_MEMORY, 64, 0, 0], "a GAS in system memory");
        assert_eq!(u64_at(&t, 44), 0xfed0_0000, "base address");
        assert_eq!(t[52], 0, "HPET number");
        assert_eq!(u16::from_le_bytes([t[53], t[54]]), 128, "minimum clock tick");
        assert_eq!(t[55] & 0x0f, 1, "4 KiB page protection");
        assert!(placed.hpet.unwrap() > placed.madt && placed.hpet.unwrap() < placed.xsdt);

        // A machine without an HPET lists none.
        let none = AcpiConfig { hpet: None, ..AcpiConfig::new(1) };
        let placed = write_acpi_tables(&mem, ACPI_TABLES_START, &none).unwrap();
        assert_eq!(placed.hpet, None);
        let xsdt = table(&mem, placed.xsdt, b"XSDT");
        assert_eq!(xsdt.len(), HEADER_SIZE + 2 * 8, "the FADT and the MADT only");
        let rsdt = table(&mem, placed.rsdt, b"RSDT");
        assert_eq!(rsdt.len(), HEADER_SIZE + 2 * 4);
    }

    #[test]
    fn ports_are_parameters_and_pci_is_optional() {
        let mem = GuestMemory::new(64 << 20).unwrap();
        let cfg = AcpiConfig { sci_irq: 10, pci: None, vga: true, ..AcpiConfig::new(1).with_pm_block(0xb000) };
        let placed = write_acpi_tables(&mem, 0xe_1000, &cfg).unwrap();
        assert_eq!(placed.rsdp, 0xe_1000);
        let fadt = table(&mem, placed.fadt, b"FACP");
        assert_eq!((u32_at(&fadt, 56), u32_at(&fadt, 64), u32_at(&fadt, 76)), (0xb000, 0xb004, 0xb008));
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 10);
        assert_eq!(u16::from_le_bytes([fadt[109], fadt[110]]) & IAPC_VGA_NOT_PRESENT, 0);
        let dsdt = table(&mem, placed.dsdt, b"DSDT");
        assert!(!contains(&dsdt, b"PCI0"));
        assert!(contains(&dsdt, b"_S5_"));
        let madt = table(&mem, placed.madt, b"APIC");
        assert!(contains(&madt, &[MADT_INT_SRC_OVERRIDE, 10, 0, 10, 10, 0, 0, 0, 0x0d, 0]));

        assert_eq!(write_acpi_tables(&mem, 0xe_0000, &AcpiConfig::new(0)), Err(AcpiError::BadCpuCount(0)));
        assert!(matches!(write_acpi_tables(&mem, 0xf_ff00, &cfg), Err(AcpiError::DoesNotFit { .. })));
        assert!(matches!(write_acpi_tables(&mem, 0xe_0008, &cfg), Err(AcpiError::DoesNotFit { .. })));
    }

    #[test]
    fn aml_encodings() {
        use super::aml::*;
        assert_eq!(pkg_length(0), vec![1]);
        assert_eq!(pkg_length(62), vec![63]);
        // 63 + 2 length bytes = 65 = 0x41.
        assert_eq!(pkg_length(63), vec![0x41, 0x04]);
        assert_eq!(pkg_length(0xfff - 2), vec![0x4f, 0xff]);
        assert_eq!(pkg_length(0xfff - 1), vec![0x81, 0x00, 0x01]);
        assert_eq!(integer(0), vec![0]);
        assert_eq!(integer(1), vec![1]);
        assert_eq!(integer(5), vec![0x0a, 5]);
        assert_eq!(integer(0x1234), vec![0x0b, 0x34, 0x12]);
        assert_eq!(integer(0x1_0000), vec![0x0c, 0, 0, 1, 0]);
        assert_eq!(integer(1 << 32), vec![0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(name_string("_S5"), b"_S5_".to_vec());
        assert_eq!(name_string("\\_SB.PCI0"), b"\\\x2e_SB_PCI0".to_vec());
        assert_eq!(name_string("\\A.B.C"), b"\\\x2f\x03A___B___C___".to_vec());
        assert_eq!(eisa_id("PNP0A03"), vec![0x0c, 0x41, 0xd0, 0x0a, 0x03]);
        assert_eq!(eisa_id("PNP0501"), vec![0x0c, 0x41, 0xd0, 0x05, 0x01]);
        assert_eq!(
            name("_S5", &package(&[integer(5), integer(5), integer(0), integer(0)])),
            vec![0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00]
        );
        // A package long enough for a two-byte PkgLength still decodes to its size.
        let big = package(&vec![integer(0x1234_5678); 20]);
        assert_eq!(big[0], 0x12);
        let len = usize::from(big[1] & 0xf) | usize::from(big[2]) << 4;
        assert_eq!(big[1] >> 6, 1);
        assert_eq!(len, big.len() - 1);
        let rt = buffer(&[0x79, 0]);
        assert_eq!(rt, vec![0x11, 0x05, 0x0a, 0x02, 0x79, 0x00]);
    }
}
