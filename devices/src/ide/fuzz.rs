//! Fuzzing entry points of the IDE controller: a hostile guest against the
//! ATAPI packet parser ([`fuzz_atapi_packets`]) and against the bus
//! master's PRD walker ([`fuzz_prd_tables`]).
//!
//! Both build a controller over disks and a medium in memory that panic on
//! any access past their end, run the operations the input encodes
//! against its ports and guest memory, and finally save the controller and
//! restore the state into it (`crate::fuzz::assert_restorable`). They
//! panic only if the model does, touches an image out of bounds, or
//! reaches a state that does not restore.

use std::sync::Arc;

use mmu::GuestMemory;

use super::atapi::op;
use super::{IdeController, IdeDrive, IdeSlot, IdeStats};
use crate::fuzz::{assert_restorable, FuzzImage, Input, FUZZ_RAM};
use crate::irq::NoIrq;
use crate::pci::config::{COMMAND_IO, COMMAND_MASTER, PCI_COMMAND};
use crate::pci::PciDevice;

/// Operations per input at most.
const MAX_OPS: usize = 256;
/// Data port reads one drain makes at most.
const MAX_DRAIN: usize = 4096;
/// Where the fuzzed guest's PRD tables go: an ordinary page, the end of a
/// 64 KiB page (a table that crosses it), and the end of RAM.
const TABLES: [u64; 3] = [0x1000, 0xfff0, FUZZ_RAM - 0x10];

/// A controller with PCI I/O and bus mastering on: a CD-ROM drive with a
/// 32-sector medium as primary master, a 64 KiB disk as primary slave, a
/// read-only 64 KiB disk as secondary master.
fn rig() -> Option<(IdeController, Arc<GuestMemory>)> {
    let mem = Arc::new(GuestMemory::new(FUZZ_RAM).ok()?);
    let drives = [
        IdeDrive::Cdrom(Some(FuzzImage::boxed("IDE", 32 * 2048, 0xcd, true))),
        IdeDrive::Disk(FuzzImage::boxed("IDE", 0x1_0000, 0x5a, false), "fuzz0".into()),
        IdeDrive::Disk(FuzzImage::boxed("IDE", 0x1_0000, 0xa5, true), "fuzz1".into()),
        IdeDrive::Empty,
    ];
    let mut ide = IdeController::new(drives, Arc::new(NoIrq), Arc::new(NoIrq), mem.clone());
    ide.write_config(PCI_COMMAND, &[(COMMAND_IO | COMMAND_MASTER) as u8, 0]);
    Some((ide, mem))
}

/// Window numbers of [`IdeController::io_write`].
const PRIMARY_CMD: u8 = 0;
const PRIMARY_CTL: u8 = 1;
const BUS_MASTER: u8 = 4;

/// Reads the data port while the selected device offers data, at most
/// `budget` times.
fn drain(ide: &mut IdeController, window: u8, budget: usize) {
    for _ in 0..budget {
        let mut st = [0u8];
        ide.io_read(window + 1, 0, &mut st);
        if st[0] & 0x08 == 0 {
            break;
        }
        let mut w = [0u8; 2];
        ide.io_read(window, 0, &mut w);
    }
}

/// A register access the input describes: window, offset, value, size.
fn register_write(ide: &mut IdeController, input: &mut Input<'_>) {
    let window = input.u8() % 5;
    let span = if window == BUS_MASTER {
        16
    } else if window % 2 == 1 {
        1
    } else {
        8
    };
    let offset = u64::from(input.u8()) % span;
    let value = input.u32().to_le_bytes();
    let len = [1usize, 2, 4, 1][usize::from(input.u8() & 3)].min((span - offset) as usize);
    ide.io_write(window, offset, &value[..len]);
}

fn register_read(ide: &mut IdeController, input: &mut Input<'_>) {
    let window = input.u8() % 5;
    let span = if window == BUS_MASTER {
        16
    } else if window % 2 == 1 {
        1
    } else {
        8
    };
    let offset = u64::from(input.u8()) % span;
    let len = [1usize, 2, 4, 1][usize::from(input.u8() & 3)].min((span - offset) as usize);
    let mut b = [0u8; 4];
    ide.io_read(window, offset, &mut b[..len]);
}

/// Writes up to 8 PRD entries the input describes at one of [`TABLES`]
/// and points the primary bus master at it.
fn prd_table(ide: &mut IdeController, mem: &GuestMemory, input: &mut Input<'_>) {
    let table = TABLES[usize::from(input.u8()) % TABLES.len()];
    let entries = usize::from(input.u8() % 8) + 1;
    for i in 0..entries {
        let addr = match input.u8() % 4 {
            0 => input.u32(),
            n => (0x2_0000 * u32::from(n)) + u32::from(input.u16()),
        };
        let count = u32::from(input.u16());
        let eot = if i + 1 == entries && !input.u8().is_multiple_of(4) { 1u32 << 31 } else { 0 };
        let mut e = addr.to_le_bytes().to_vec();
        e.extend((count | eot).to_le_bytes());
        let _ = mem.write(table + 8 * i as u64, &e);
    }
    ide.io_write(BUS_MASTER, 4, &(table as u32).to_le_bytes());
}

/// Starts the primary bus master in the direction the input says.
fn start_bus_master(ide: &mut IdeController, input: &mut Input<'_>) {
    let to_memory = if input.u8().is_multiple_of(4) { 0 } else { 0x08 };
    ide.io_write(BUS_MASTER, 0, &[to_memory]);
    ide.io_write(BUS_MASTER, 2, &[0x06]);
    ide.io_write(BUS_MASTER, 0, &[to_memory | 0x01]);
}

/// The packet commands worth sending more often than chance would.
const KNOWN: [u8; 17] = [
    op::TEST_UNIT_READY,
    op::REQUEST_SENSE,
    op::INQUIRY,
    op::MODE_SENSE_6,
    op::START_STOP_UNIT,
    op::PREVENT_ALLOW_MEDIUM_REMOVAL,
    op::READ_CAPACITY,
    op::READ_10,
    op::SEEK_10,
    op::READ_TOC,
    op::GET_CONFIGURATION,
    op::GET_EVENT_STATUS_NOTIFICATION,
    op::READ_DISC_INFORMATION,
    op::MODE_SENSE_10,
    op::READ_12,
    op::SET_CD_SPEED,
    op::MECHANISM_STATUS,
];

/// The fuzzing entry point for the ATAPI packet parser: a CD-ROM drive (and
/// two disks) behind the PIIX3 controller, then `data` as a hostile guest's
/// actions. Each operation starts with a selector byte:
///
/// | selector % 8 | operation | operands |
/// | --- | --- | --- |
/// | 0, 1 | a PACKET command to the CD-ROM, then its data read | features, byte count limit (u16), opcode (index into the known ones, or raw), 11 CDB bytes, data port reads (u16) |
/// | 2 | read the data port while DRQ is set | reads (u8 x 16) |
/// | 3 | write a register | window, offset, value (u32), size |
/// | 4 | read a register | window, offset, size |
/// | 5 | change the medium | what (eject, insert, forced), its sectors |
/// | 6 | a PRD table and the bus master started | table, entries, direction |
/// | 7 | write device control | value |
///
/// Returns the counters.
pub fn fuzz_atapi_packets(data: &[u8]) -> IdeStats {
    let Some((mut ide, mem)) = rig() else { return IdeStats::default() };
    let mut input = Input::new(data);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let sel = input.u8();
        match sel % 8 {
            0 | 1 => {
                ide.io_write(PRIMARY_CMD, 6, &[0xa0]);
                ide.io_write(PRIMARY_CMD, 1, &[input.u8() & 0x03]);
                let limit = input.u16().to_le_bytes();
                ide.io_write(PRIMARY_CMD, 4, &limit[..1]);
                ide.io_write(PRIMARY_CMD, 5, &limit[1..]);
                ide.io_write(PRIMARY_CMD, 7, &[0xa0]);
                let pick = input.u8();
                let mut cdb = [0u8; 12];
                cdb[0] = if pick < 0xc0 { KNOWN[usize::from(pick) % KNOWN.len()] } else { input.u8() };
                cdb[1..].copy_from_slice(&{
                    let mut rest = [0u8; 11];
                    let b = input.bytes(11);
                    rest[..b.len()].copy_from_slice(b);
                    rest
                });
                for pair in cdb.chunks_exact(2) {
                    ide.io_write(PRIMARY_CMD, 0, pair);
                }
                let reads = usize::from(input.u16()) % MAX_DRAIN;
                drain(&mut ide, PRIMARY_CMD, reads);
            }
            2 => drain(&mut ide, PRIMARY_CMD, usize::from(input.u8()) * 16),
            3 => register_write(&mut ide, &mut input),
            4 => register_read(&mut ide, &mut input),
            5 => {
                let what = input.u8();
                let sectors = usize::from(input.u8() % 64);
                let medium = (what & 1 != 0).then(|| FuzzImage::boxed("IDE", sectors * 2048, what, true));
                let _ = ide.change_medium(IdeSlot::PrimaryMaster, medium, what & 2 != 0);
            }
            6 => {
                prd_table(&mut ide, &mem, &mut input);
                start_bus_master(&mut ide, &mut input);
            }
            _ => ide.io_write(PRIMARY_CTL, 0, &[input.u8()]),
        }
    }
    assert_restorable(&mut ide);
    ide.stats()
}

/// The fuzzing entry point for the PRD walker: a 64 KiB disk (primary
/// slave) behind the PIIX3 controller, then `data` as a hostile guest's
/// actions. Each operation starts with a selector byte:
///
/// | selector % 8 | operation | operands |
/// | --- | --- | --- |
/// | 0, 1 | write a PRD table and point the bus master at it | table, entries (address, count, EOT) |
/// | 2 | a DMA command to the disk | command, LBA (u8), count (u8) |
/// | 3 | start the bus master | direction |
/// | 4 | write bus master register bytes | offset, value, size |
/// | 5 | read status, alternate status, bus master status | - |
/// | 6 | write guest memory | address (u32), length (u8), bytes |
/// | 7 | write a register | window, offset, value (u32), size |
///
/// Returns the counters.
pub fn fuzz_prd_tables(data: &[u8]) -> IdeStats {
    let Some((mut ide, mem)) = rig() else { return IdeStats::default() };
    let mut input = Input::new(data);
    ide.io_write(PRIMARY_CMD, 6, &[0xf0]);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let sel = input.u8();
        match sel % 8 {
            0 | 1 => prd_table(&mut ide, &mem, &mut input),
            2 => {
                const COMMANDS: [u8; 6] = [0xc8, 0xca, 0x25, 0x35, 0xc9, 0xcb];
                let command = COMMANDS[usize::from(input.u8()) % COMMANDS.len()];
                let (lba, count) = (input.u8(), input.u8());
                ide.io_write(PRIMARY_CMD, 6, &[0xf0]);
                // Each register twice: the 48-bit commands take the first
                // write as the high-order byte.
                for (reg, value) in [(2, count), (3, lba), (4, 0), (5, 0)] {
                    ide.io_write(PRIMARY_CMD, reg, &[0]);
                    ide.io_write(PRIMARY_CMD, reg, &[value]);
                }
                ide.io_write(PRIMARY_CMD, 7, &[command]);
            }
            3 => start_bus_master(&mut ide, &mut input),
            4 => {
                let offset = u64::from(input.u8() % 16);
                let value = input.u32().to_le_bytes();
                let len = [1usize, 2, 4, 1][usize::from(input.u8() & 3)].min((16 - offset) as usize);
                ide.io_write(BUS_MASTER, offset, &value[..len]);
            }
            5 => {
                let mut b = [0u8];
                ide.io_read(PRIMARY_CMD, 7, &mut b);
                ide.io_read(PRIMARY_CTL, 0, &mut b);
                ide.io_read(BUS_MASTER, 2, &mut b);
                assert_eq!(b[0] & 0x98, 0, "reserved bus master status bits read {:#04x}", b[0]);
            }
            6 => {
                let addr = u64::from(input.u32()) % (FUZZ_RAM + 0x1000);
                let len = usize::from(input.u8());
                let _ = mem.write(addr, input.bytes(len));
            }
            _ => register_write(&mut ide, &mut input),
        }
    }
    assert_restorable(&mut ide);
    ide.stats()
}
