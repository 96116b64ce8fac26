//! Fuzzing the standard VGA as a hostile guest drives it ([`fuzz_vga`]):
//! accesses of every size to every range, renders in between, and a
//! save and restore at the end (`crate::fuzz::assert_restorable`).

use persist::Persist;

use super::{StdVga, Window, MIN_VRAM, MMIO_BAR_SIZE, VBE_PORTS_LEN, VGA_PORTS_LEN, VGA_WINDOW_LEN};
use crate::fuzz::{assert_restorable, Input};

/// Operations per input at most.
const MAX_OPS: usize = 512;

/// Port offsets (from 0x3b0) worth hitting more often than chance would:
/// the index and data registers.
const HOT_PORTS: [u64; 12] = [0x10, 0x11, 0x14, 0x15, 0x17, 0x18, 0x19, 0x1e, 0x1f, 0x24, 0x25, 0x2a];

/// The fuzzing entry point for the standard VGA: `data` as a hostile
/// guest's accesses. The adapter has 1 MiB of VRAM. Each operation starts
/// with a selector byte:
///
/// | selector % 8 | operation | operands |
/// | --- | --- | --- |
/// | 0, 1 | write a VGA port (a hot one if the high bit of the first operand is set) | offset, value (u32), size |
/// | 2 | write a Bochs VBE register | index, value (u16) |
/// | 3 | write the memory window | offset (u32), value (u32), size |
/// | 4 | write BAR0 or BAR2 | which, offset (u32), value (u64), size |
/// | 5 | read any range | which, offset (u32), size |
/// | 6 | render | - |
/// | 7 | reset, or save and restore | which |
///
/// Returns the size of the last picture.
pub fn fuzz_vga(data: &[u8]) -> (u32, u32) {
    let Ok(mut vga) = StdVga::new(MIN_VRAM) else { return (0, 0) };
    let mut pixels = Vec::new();
    let mut input = Input::new(data);
    let sizes = [1usize, 2, 4, 8];
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let sel = input.u8();
        match sel % 8 {
            0 | 1 => {
                let which = input.u8();
                let offset = if which & 0x80 != 0 {
                    HOT_PORTS[usize::from(which) % HOT_PORTS.len()]
                } else {
                    u64::from(which) % VGA_PORTS_LEN
                };
                let value = input.u32().to_le_bytes();
                let len = sizes[usize::from(input.u8() & 1)];
                vga.bus_write(Window::Ports, offset, &value[..len]);
            }
            2 => {
                let index = u16::from(input.u8() % 12);
                let value = input.u16();
                vga.bus_write(Window::VbePorts, 0, &index.to_le_bytes());
                vga.bus_write(Window::VbePorts, 1, &value.to_le_bytes());
            }
            3 => {
                let offset = u64::from(input.u32()) % VGA_WINDOW_LEN;
                let value = input.u32().to_le_bytes();
                let len = sizes[usize::from(input.u8() % 3)];
                vga.bus_write(Window::Memory, offset, &value[..len]);
            }
            4 => {
                let which = input.u8();
                let offset = u64::from(input.u32());
                let value = (u64::from(input.u32()) | u64::from(input.u32()) << 32).to_le_bytes();
                let len = sizes[usize::from(input.u8() % 4)];
                if which & 1 == 0 {
                    vga.bus_write(Window::Lfb, offset % u64::from(vga.vram_size()), &value[..len]);
                } else {
                    vga.bus_write(Window::Mmio, offset % MMIO_BAR_SIZE, &value[..len]);
                }
            }
            5 => {
                let which = input.u8();
                let offset = u64::from(input.u32());
                let len = sizes[usize::from(input.u8() % 4)];
                let mut b = [0u8; 8];
                let (window, range) = match which % 5 {
                    0 => (Window::Ports, VGA_PORTS_LEN),
                    1 => (Window::VbePorts, VBE_PORTS_LEN),
                    2 => (Window::Memory, VGA_WINDOW_LEN),
                    3 => (Window::Lfb, u64::from(vga.vram_size())),
                    _ => (Window::Mmio, MMIO_BAR_SIZE),
                };
                vga.bus_read(window, offset % range, &mut b[..len]);
            }
            6 => {
                render_checked(&mut vga, &mut pixels);
            }
            _ => {
                if input.u8() & 1 == 0 {
                    vga.reset();
                } else {
                    let state = vga.save();
                    if let Err(e) = vga.restore(&state) {
                        panic!("a state the guest reached cannot be restored: {e}");
                    }
                }
            }
        }
    }
    let size = render_checked(&mut vga, &mut pixels);
    let _ = vga.text_screen();
    assert_restorable(&mut vga);
    size
}

/// Renders, and checks the picture and the rectangles against each other.
fn render_checked(vga: &mut StdVga, pixels: &mut Vec<u32>) -> (u32, u32) {
    let (w, h, rects) = vga.render(pixels);
    assert_eq!(pixels.len(), w as usize * h as usize, "the picture is not {w}x{h}");
    for r in &rects {
        assert!(r.x + r.w <= w && r.y + r.h <= h, "rectangle {r:?} leaves the {w}x{h} picture");
    }
    let (w2, h2, again) = vga.render(pixels);
    assert_eq!((w2, h2), (w, h));
    assert!(again.is_empty(), "a render with nothing changed returned {again:?}");
    (w, h)
}
