//! Fuzzing the floppy controller's command parser and data phases as a
//! hostile guest drives them ([`fuzz_fdc_commands`]).
//!
//! The controller has a 1.44 MB disk in A: and a read-only 720 KB disk in
//! B:, both images in memory that panic on any access past their end,
//! and the 8237 pair over a small guest memory. After the input the
//! controller is saved and the state restored into it
//! (`crate::fuzz::assert_restorable`). The entry point panics only if the
//! model does, touches an image out of bounds, or reaches a state that
//! does not restore.

use std::sync::Arc;

use mmu::GuestMemory;
use parking_lot::Mutex;

use super::{FloppyController, FloppyDrive, FloppyFormat, FloppyStats};
use crate::bus::BusDevice;
use crate::fuzz::{assert_restorable, FuzzImage, Input, FUZZ_RAM};
use crate::irq::NoIrq;
use crate::legacy::dma8237::IsaDma;

/// Operations per input at most.
const MAX_OPS: usize = 256;
/// FIFO reads or writes one operation makes at most.
const MAX_DRAIN: usize = 2048;

/// The command codes worth sending more often than chance would.
const KNOWN: [u8; 20] = [
    0xe6, 0x46, 0xc5, 0x45, 0x4a, 0x4d, 0x07, 0x08, 0x03, 0x04, 0x0f, 0x8f, 0xcf, 0x10, 0x13, 0x0e, 0x12, 0x14, 0x94,
    0x18,
];

/// FIFO offset and the register offsets a guest writes.
const FIFO: u64 = 5;
const MSR: u64 = 4;
const WRITABLE: [u64; 5] = [2, 3, 4, 5, 7];

/// Reads the FIFO while the controller offers a byte, at most `budget` times.
fn drain(fdc: &mut FloppyController, budget: usize) {
    for _ in 0..budget {
        let mut msr = [0u8];
        fdc.read(MSR, &mut msr);
        if msr[0] & 0xc0 != 0xc0 {
            break;
        }
        let mut b = [0u8];
        fdc.read(FIFO, &mut b);
    }
}

/// Writes the FIFO while the controller takes bytes of a non-DMA data
/// phase, at most `budget` times.
fn fill(fdc: &mut FloppyController, budget: usize, byte: u8) {
    for _ in 0..budget {
        let mut msr = [0u8];
        fdc.read(MSR, &mut msr);
        if msr[0] & 0xe0 != 0xa0 {
            break;
        }
        fdc.write(FIFO, &[byte]);
    }
}

/// Programs DMA channel 2 at `addr` for `count + 1` bytes in `mode`.
fn program_dma(dma: &Mutex<IsaDma>, addr: u32, count: u16, mode: u8) {
    let mut d = dma.lock();
    d.write_port(0x0a, 0x06);
    d.write_port(0x0c, 0);
    d.write_port(0x04, addr as u8);
    d.write_port(0x04, (addr >> 8) as u8);
    d.write_port(0x05, count as u8);
    d.write_port(0x05, (count >> 8) as u8);
    d.write_port(0x0b, (mode & 0xfc) | 2);
    d.write_port(0x81, (addr >> 16) as u8);
    d.write_port(0x0a, 0x02);
}

/// The fuzzing entry point for the floppy controller: `data` as a hostile
/// guest's commands and data phases. Each operation starts with a
/// selector byte:
///
/// | selector % 8 | operation | operands |
/// | --- | --- | --- |
/// | 0, 1 | a command with its bytes | opcode (index into the known ones, or raw), its parameters |
/// | 2 | read the FIFO while it offers bytes | reads (u8 x 8) |
/// | 3 | write the FIFO while a data phase takes bytes | writes (u16), byte |
/// | 4 | write a register (DOR, TDR, DSR, FIFO, CCR) | which, value |
/// | 5 | read every register | - |
/// | 6 | program DMA channel 2 | address (u32), count (u16), mode |
/// | 7 | change a disk | drive, what (eject, 1.44 MB, 720 KB, 2.88 MB, read-only) |
///
/// Returns the counters.
pub fn fuzz_fdc_commands(data: &[u8]) -> FloppyStats {
    let Ok(mem) = GuestMemory::new(FUZZ_RAM) else { return FloppyStats::default() };
    let dma = Arc::new(Mutex::new(IsaDma::new(Arc::new(mem))));
    let drives = [
        FloppyDrive::Disk(FuzzImage::boxed("floppy", FloppyFormat::Kb1440.size() as usize, 0xf6, false)),
        FloppyDrive::Disk(FuzzImage::boxed("floppy", FloppyFormat::Kb720.size() as usize, 0x5a, true)),
    ];
    let Ok(mut fdc) = FloppyController::new(drives, Arc::new(NoIrq), dma.clone()) else {
        return FloppyStats::default();
    };
    // Out of reset, DMA enabled, motor A on; channel 2 at 64 KiB, 1.44 MB's track.
    fdc.write(2, &[0x1c]);
    program_dma(&dma, 0x1_0000, 0x47ff, 0x46);
    let mut input = Input::new(data);
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let sel = input.u8();
        match sel % 8 {
            0 | 1 => {
                let pick = input.u8();
                let opcode = if pick < 0xc0 { KNOWN[usize::from(pick) % KNOWN.len()] } else { input.u8() };
                fdc.write(FIFO, &[opcode]);
                for _ in 0..usize::from(sel >> 4) {
                    let mut msr = [0u8];
                    fdc.read(MSR, &mut msr);
                    if msr[0] & 0xf0 != 0x90 {
                        break;
                    }
                    fdc.write(FIFO, &[input.u8()]);
                }
            }
            2 => drain(&mut fdc, usize::from(input.u8()) * 8),
            3 => {
                let n = usize::from(input.u16()) % (MAX_DRAIN + 1);
                let byte = input.u8();
                fill(&mut fdc, n, byte);
            }
            4 => {
                let reg = WRITABLE[usize::from(input.u8()) % WRITABLE.len()];
                fdc.write(reg, &[input.u8()]);
            }
            5 => {
                let mut b = [0u8; 8];
                fdc.read(0, &mut b[..6]);
                fdc.read(7, &mut b[7..]);
            }
            6 => {
                let addr = input.u32() % 0x20_0000;
                let count = input.u16();
                program_dma(&dma, addr, count, input.u8());
            }
            _ => {
                let drive = usize::from(input.u8() % 3);
                let image = match input.u8() % 6 {
                    0 => None,
                    1 => Some(FuzzImage::boxed("floppy", FloppyFormat::Kb1440.size() as usize, 1, false)),
                    2 => Some(FuzzImage::boxed("floppy", FloppyFormat::Kb720.size() as usize, 2, false)),
                    3 => Some(FuzzImage::boxed("floppy", FloppyFormat::Kb2880.size() as usize, 3, false)),
                    4 => Some(FuzzImage::boxed("floppy", FloppyFormat::Kb1440.size() as usize, 4, true)),
                    _ => Some(FuzzImage::boxed("floppy", 1000, 0, false)),
                };
                let _ = fdc.change_media(drive, image);
            }
        }
    }
    drain(&mut fdc, MAX_DRAIN);
    assert_restorable(&mut fdc);
    fdc.stats()
}
