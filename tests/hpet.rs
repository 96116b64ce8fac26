//! The HPET as the firmware describes it and the chipset builds it: the
//! ACPI "HPET" table must name the block the device model answers at, with
//! the event timer block ID its capabilities register reports (IA-PC HPET
//! specification 1.0a, 3.2.4).

use std::sync::Arc;

use devices::clock::ManualClock;
use devices::legacy::rtc::RamSize;
use devices::pc::PcChipset;
use devices::{Bus, Tsc, VmEvents};
use firmware::acpi::{write_acpi_tables, AcpiConfig, ACPI_TABLES_START};
use mmu::GuestMemory;

fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read(addr, &mut v).expect("table memory");
    v
}

#[test]
fn the_acpi_table_describes_the_chipsets_hpet() {
    let mem = GuestMemory::new(16 << 20).unwrap();
    let placed = write_acpi_tables(&mem, ACPI_TABLES_START, &AcpiConfig::new(1)).unwrap();
    let table = read(&mem, placed.hpet.expect("the HPET table"), 56);
    assert_eq!(&table[0..4], b"HPET");
    let block_id = u32::from_le_bytes(table[36..40].try_into().unwrap());
    let base = u64::from_le_bytes(table[44..52].try_into().unwrap());

    let chipset = PcChipset::new(
        Arc::new(ManualClock::new(0)),
        Arc::new(VmEvents::new()),
        Arc::new(Tsc::new(1_000_000_000)),
        RamSize::split(16 << 20, 0xc000_0000),
        &[0],
    );
    let (mut pio, mut mmio) = (Bus::new(), Bus::new());
    chipset.install(&mut pio, &mut mmio).unwrap();
    let mut caps = [0u8; 8];
    assert!(mmio.read(base, &mut caps), "nothing answers at the table's base {base:#x}");
    let caps = u64::from_le_bytes(caps);
    assert_eq!(block_id, caps as u32, "event timer block ID = GCAP_ID[31:0]");
    assert_eq!(caps >> 32, 10_000_000, "a 10 ns counter period");
    let mut last = [0u8; 4];
    assert!(mmio.read(base + 0x3fc, &mut last), "the block is 1 KiB long");
}
