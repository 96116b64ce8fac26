//! The fuzzing entry point of the UHCI controller: a hostile guest against
//! its registers and its schedule walker ([`fuzz_uhci`]).
//!
//! It builds a controller with a tablet and a keyboard over guest memory
//! holding a working schedule (a frame list pointing at a QH with a
//! control transfer queued), runs the operations the input encodes against
//! its registers, guest memory, the clock and the host input, and finally
//! saves the controller and restores the state into it
//! (`crate::fuzz::assert_restorable`). It panics only if the model does or
//! reaches a state that does not restore.

use std::sync::Arc;

use mmu::GuestMemory;

use super::{Uhci, UsbDeviceKind, FRAME_NS};
use crate::clock::{Clock, ManualClock, Timed};
use crate::fuzz::{assert_restorable, Input, FUZZ_RAM};
use crate::irq::NoIrq;
use crate::pci::config::{COMMAND_IO, COMMAND_MASTER, PCI_COMMAND};
use crate::pci::PciDevice;
use persist::Persist;

/// Operations per input at most.
const MAX_OPS: usize = 512;
/// The frame list of the seeded schedule.
const FRAME_LIST: u64 = 0x1_0000;
/// Its QH, TDs and buffers.
const QH: u64 = 0x1_1000;
const TDS: u64 = 0x1_1100;
const BUFFERS: u64 = 0x1_2000;
/// Guest addresses small inputs aim at: the schedule and the end of RAM.
const HOT: [u64; 5] = [FRAME_LIST, QH, TDS, BUFFERS, FUZZ_RAM - 0x20];

/// Writes a frame list whose every entry points at a QH holding a GET
/// DESCRIPTOR (device) control transfer to address 0: SETUP, IN, OUT status.
fn seed_schedule(mem: &GuestMemory) {
    for i in 0..1024u64 {
        let _ = mem.write_u32(FRAME_LIST + 4 * i, QH as u32 | 2);
    }
    let _ = mem.write_u32(QH, 1);
    let _ = mem.write_u32(QH + 4, TDS as u32);
    let _ = mem.write(BUFFERS, &[0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x12, 0x00]);
    let tds: [(u32, u32); 3] = [
        (0x2d | (7 << 21), BUFFERS as u32),
        (0x69 | (1 << 19) | (7 << 21), BUFFERS as u32 + 0x100),
        (0xe1 | (1 << 19) | (0x7ff << 21), 0),
    ];
    for (i, (token, buffer)) in tds.iter().enumerate() {
        let at = TDS + 0x20 * i as u64;
        let link = if i + 1 < tds.len() { (at + 0x20) as u32 | 4 } else { 1 };
        let words = [link, (3 << 27) | (1 << 23) | (1 << 24), *token, *buffer];
        for (k, w) in words.iter().enumerate() {
            let _ = mem.write_u32(at + 4 * k as u64, *w);
        }
    }
}

/// The fuzzing entry point for the UHCI controller: a tablet (a mouse
/// when `data` has an odd length) and a keyboard on its ports and a seeded schedule, then `data` as a hostile
/// guest's actions. Each operation starts with a selector byte:
///
/// | selector % 8 | operation | operands |
/// | --- | --- | --- |
/// | 0, 1 | write a register | offset (u8), value (u32), size |
/// | 2 | read a register | offset (u8), size |
/// | 3 | write guest memory | address (u32), length (u8), bytes |
/// | 4 | write a dword near the schedule | index, value (u32) |
/// | 5 | advance the clock and tick | microseconds (u16) |
/// | 6 | host input | kind, x, y (u16), buttons, scancode (u16) |
/// | 7 | write PCI configuration, or save and restore | offset (u8), value (u16) |
///
/// Returns the frame number reached.
pub fn fuzz_uhci(data: &[u8]) -> u16 {
    let Ok(mem) = GuestMemory::new(FUZZ_RAM) else { return 0 };
    let mem = Arc::new(mem);
    let clock = Arc::new(ManualClock::new(0));
    let pointer = if data.len().is_multiple_of(2) { UsbDeviceKind::Tablet } else { UsbDeviceKind::Mouse };
    let devices = vec![pointer, UsbDeviceKind::Keyboard];
    let Ok(mut uhci) = Uhci::new(mem.clone(), Arc::new(NoIrq), clock.clone(), devices) else { return 0 };
    uhci.write_config(PCI_COMMAND, &[(COMMAND_IO | COMMAND_MASTER) as u8, 0]);
    seed_schedule(&mem);
    // A driver's bring-up: reset and enable both ports, point at the frame
    // list, enable every interrupt, run.
    uhci.io_write(0x08, &(FRAME_LIST as u32).to_le_bytes());
    uhci.io_write(0x10, &0x0200u16.to_le_bytes());
    uhci.io_write(0x12, &0x0200u16.to_le_bytes());
    uhci.io_write(0x10, &0x000eu16.to_le_bytes());
    uhci.io_write(0x12, &0x000eu16.to_le_bytes());
    uhci.io_write(0x04, &0x000fu16.to_le_bytes());
    uhci.io_write(0x00, &0x00c1u16.to_le_bytes());

    let mut input = Input::new(data);
    let size = |b: u8| [1usize, 2, 4, 2][usize::from(b & 3)];
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let sel = input.u8();
        match sel % 8 {
            0 | 1 => {
                let offset = u64::from(input.u8() % 0x20);
                let value = input.u32().to_le_bytes();
                let len = size(input.u8()).min((0x20 - offset) as usize);
                uhci.io_write(offset, &value[..len]);
            }
            2 => {
                let offset = u64::from(input.u8() % 0x20);
                let len = size(input.u8()).min((0x20 - offset) as usize);
                let mut b = [0u8; 4];
                uhci.io_read(offset, &mut b[..len]);
            }
            3 => {
                let addr = u64::from(input.u32()) % (FUZZ_RAM + 0x1000);
                let len = usize::from(input.u8());
                let _ = mem.write(addr, input.bytes(len));
            }
            4 => {
                let base = HOT[usize::from(sel >> 3) % HOT.len()];
                let at = base + 4 * u64::from(input.u8() % 64);
                let _ = mem.write_u32(at, input.u32());
            }
            5 => {
                let us = u64::from(input.u16());
                clock.advance(us * 1000);
                let now = clock.now_ns();
                uhci.tick(now);
                if let Some(deadline) = uhci.next_deadline_ns() {
                    assert!(deadline > now, "after a tick the deadline {deadline} is not after {now}");
                }
            }
            6 => {
                let kind = input.u8();
                let (x, y) = (u32::from(input.u16()), u32::from(input.u16()));
                let buttons = input.u8();
                let code = input.u16();
                if kind & 1 == 0 {
                    uhci.tablet_event(x, y, 1 + u32::from(kind), 768, buttons, i32::from(buttons as i8));
                    uhci.mouse_event(x as i16 as i32 * 1000, y as i16 as i32, i32::from(kind), buttons);
                } else {
                    uhci.key_event(code, kind & 2 != 0);
                }
            }
            _ => {
                let offset = usize::from(input.u8());
                let value = input.u16();
                if offset == 0xff {
                    let state = uhci.save();
                    uhci.restore(&state).expect("a state just saved restores");
                } else {
                    uhci.write_config(offset & !1, &value.to_le_bytes());
                }
            }
        }
    }
    clock.advance(FRAME_NS * 100);
    uhci.tick(clock.now_ns());
    assert_restorable(&mut uhci);
    uhci.regs.frnum
}
