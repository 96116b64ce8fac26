//! Fuzzing the DMA controllers as a hostile guest programs them
//! ([`fuzz_dma_programming`]): register writes and reads at any of their
//! ports, and device transfers in both directions over any channel,
//! against a small guest memory that the page registers can point past.

use std::sync::Arc;

use mmu::GuestMemory;
use parking_lot::Mutex;

use super::{IsaDma, DMA_CHANNELS};
use crate::fuzz::{assert_restorable, Input, FUZZ_RAM};

/// Operations per input at most.
const MAX_OPS: usize = 512;
/// The longest device buffer one transfer offers.
const MAX_BUFFER: usize = 0x3_0000;

/// The ports worth hitting: both controllers and the page registers.
fn port(pick: u8) -> u16 {
    match pick % 4 {
        0 | 1 => u16::from(pick >> 2) % 16,
        2 => 0xc0 + u16::from(pick >> 2) % 32,
        _ => 0x80 + u16::from(pick >> 2) % 16,
    }
}

/// The fuzzing entry point for the 8237 pair: `data` as a hostile guest's
/// programming, with device transfers between. Each operation starts with
/// a selector byte:
///
/// | selector % 4 | operation | operands |
/// | --- | --- | --- |
/// | 0, 1 | write a register | port pick, value |
/// | 2 | read a register | port pick |
/// | 3 | a device transfer | channel, direction, length (u16, times 0..3) |
///
/// It checks that a transfer never reports more bytes than the device
/// offered, and that the controllers' state restores. Returns the bytes
/// the transfers moved.
pub fn fuzz_dma_programming(data: &[u8]) -> u64 {
    let Ok(mem) = GuestMemory::new(FUZZ_RAM) else { return 0 };
    let dma = Arc::new(Mutex::new(IsaDma::new(Arc::new(mem))));
    let mut input = Input::new(data);
    let mut moved = 0u64;
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let sel = input.u8();
        let mut d = dma.lock();
        match sel % 4 {
            0 | 1 => {
                let p = port(input.u8());
                d.write_port(p, input.u8());
            }
            2 => {
                let p = port(input.u8());
                let _ = d.read_port(p);
            }
            _ => {
                let channel = usize::from(input.u8()) % DMA_CHANNELS;
                let to_memory = input.u8() & 1 == 0;
                let len = (usize::from(input.u16()) * usize::from(sel >> 6)).min(MAX_BUFFER);
                let mut buf = vec![0x5a; len];
                let t =
                    if to_memory { d.write_to_memory(channel, &buf) } else { d.read_from_memory(channel, &mut buf) };
                assert!(t.bytes <= len, "a transfer moved {} bytes of a {len}-byte buffer", t.bytes);
                moved += t.bytes as u64;
            }
        }
    }
    assert_restorable(&mut *dma.lock());
    moved
}
