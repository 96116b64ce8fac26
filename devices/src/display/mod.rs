//! The standard VGA adapter (QEMU's `-vga std`): a VGA with the Bochs VBE
//! extensions and a linear framebuffer, on PCI as 1234:1111.
//!
//! References: QEMU's docs/specs/standard-vga.rst (the PCI function and its
//! BARs); the Bochs VBE ("DISPI") interface (vbe_display_api.txt of the
//! Bochs VGA BIOS); the IBM VGA Technical Reference and the FreeVGA project
//! (the sequencer, graphics controller, attribute controller, CRTC and DAC).
//!
//! ```text
//! PCI 1234:1111, class 030000 (VGA-compatible), revision 2, subsystem 1af4:1100
//!   BAR0  the linear framebuffer (the VRAM), 32-bit prefetchable memory
//!   BAR2  4 KiB of MMIO:
//!         0x000-0x3ff  EDID (one 128-byte EDID 1.4 block; the rest reads 0)
//!         0x400-0x41f  the VGA ports 0x3c0-0x3df (byte accesses)
//!         0x500-0x515  the Bochs VBE registers, index i at 0x500 + 2 * i (16 bits)
//!         0x600        QEMU extended registers: size of the region (8, read-only)
//!         0x604        framebuffer endianness (0x1e1e1e1e: little endian)
//! legacy
//!   ports 0x3b0-0x3df  the VGA registers (0x3b4/0x3b5/0x3ba while MISC bit 0
//!                      selects mono, 0x3d4/0x3d5/0x3da while it selects colour)
//!     0x3c0 attribute index/data (flip-flop, reset by reading 0x3ba/0x3da)
//!     0x3c1 attribute data read    0x3c2 MISC write / input status 0 read
//!     0x3c4/0x3c5 sequencer        0x3c6 DAC pel mask
//!     0x3c7 DAC read index (read: DAC state)  0x3c8 DAC write index  0x3c9 DAC data
//!     0x3ca feature control read   0x3cc MISC read   0x3ce/0x3cf graphics controller
//!     0x3d4/0x3d5 CRTC             0x3da input status 1 read / feature control write
//!   ports 0x1ce-0x1d0  Bochs VBE: 0x1ce index, 0x1cf (and 0x1d0) data, 16 bits
//!   memory 0xa0000-0xbffff  the VGA window (as GR6's memory map selects)
//! Bochs VBE registers
//!   0 ID (0xb0c0-0xb0c5)  1 XRES  2 YRES  3 BPP (4, 8, 15, 16, 24, 32)
//!   4 ENABLE: 0 enabled | 1 get capabilities | 5 8-bit DAC | 6 LFB | 7 keep memory
//!   5 BANK (64 KiB bank of the window)  6 VIRT_WIDTH  7 VIRT_HEIGHT
//!   8 X_OFFSET  9 Y_OFFSET  0xa VIDEO_MEMORY_64K (read-only)
//! ```
//!
//! Model choices:
//! - The VRAM is one byte array, seen whole through BAR0. The planar VGA
//!   memory interleaves its four planes in it as QEMU's does: byte `a` of
//!   plane `p` is VRAM byte `4 * a + p`. Chain-4 accesses reach VRAM byte
//!   `a` directly, odd/even accesses plane `(a & 1)` (or `2 + (a & 1)`) at
//!   `a >> 1`, so VBE modes, mode 13h and the text modes share one memory.
//! - Input status 1 toggles its retrace and display-enable bits on every
//!   read: guests that wait for a retrace edge see one at once.
//! - The renderer ([`StdVga::render`]) draws the mode at its native size:
//!   mode 13h is 320x200, text mode 3 is 720x400. Its dirty tracking is a
//!   bit per 4 KiB page of VRAM, set by every write path, and flags set by
//!   the register writes that change the picture.
//! - The text modes, the 16-colour planar modes, mode 13h (and unchained
//!   256-colour modes), CGA's 4-colour modes and every VBE depth are drawn;
//!   horizontal pel panning, the line compare split screen, the underline
//!   and blinking are stored but not drawn (blinking cells are steady).
//! - Every value the guest writes is untrusted: registers keep only the
//!   bits that exist, VBE geometry is clamped as QEMU clamps it, and every
//!   VRAM access is checked against its size. Unimplemented registers and
//!   access sizes are logged once.
//!
//! The machine plugs the function on PCI with [`StdVga::bar_devices`] (BAR0
//! and BAR2, offsets from each BAR's base), maps [`StdVga::bus_mappings`]
//! (the legacy ports and window) and calls [`StdVga::render`] from its
//! display loop; [`StdVga::text_screen`] serves a text console. The VGA
//! BIOS is the firmware's business: it finds the function by its PCI ID.

mod edid;
#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
mod regs;
mod render;
mod state;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use mmu::{GuestMemory, Vram};
use parking_lot::Mutex;

use crate::bus::{BusDevice, SharedDevice};
use crate::log_once::{LogOnce, Misuse};
use crate::mapping::BusMapping;
use crate::pci::config::{PciBarKind, PciConfigSpace};
use crate::pci::PciDevice;

pub use edid::{EDID, EDID_LEN};
#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::fuzz_vga;
pub use render::{Rect, TextScreen, MAX_DIM};
pub use state::StdVgaState;

/// PCI vendor ID of the standard VGA (QEMU's, taken from Bochs).
pub const VGA_VENDOR_ID: u16 = 0x1234;
/// PCI device ID of the standard VGA.
pub const VGA_DEVICE_ID: u16 = 0x1111;
/// Class code: display controller, VGA-compatible.
pub const VGA_CLASS: u32 = 0x03_00_00;
/// Revision of QEMU's standard VGA.
pub const VGA_REVISION: u8 = 2;
/// Subsystem vendor ID (as QEMU's).
pub const VGA_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// Subsystem ID (as QEMU's).
pub const VGA_SUBSYSTEM_ID: u16 = 0x1100;
/// The BAR of the linear framebuffer.
pub const LFB_BAR: usize = 0;
/// The BAR of the MMIO registers.
pub const MMIO_BAR: usize = 2;
/// Size of the MMIO BAR.
pub const MMIO_BAR_SIZE: u64 = 0x1000;
/// The default VRAM size, 16 MiB.
pub const DEFAULT_VRAM: u32 = 16 << 20;
/// The smallest VRAM size the model takes.
pub const MIN_VRAM: u32 = 1 << 20;
/// The largest VRAM size the model takes.
pub const MAX_VRAM: u32 = 256 << 20;
/// First port of the legacy VGA registers.
pub const VGA_PORTS_BASE: u16 = 0x3b0;
/// Ports of the legacy VGA registers (0x3b0-0x3df).
pub const VGA_PORTS_LEN: u64 = 0x30;
/// The Bochs VBE index port (the data port follows it).
pub const VBE_PORTS_BASE: u16 = 0x1ce;
/// Ports of the Bochs VBE interface: index 0x1ce, data 0x1cf and 0x1d0.
pub const VBE_PORTS_LEN: u64 = 3;
/// Base of the legacy memory window.
pub const VGA_WINDOW_BASE: u64 = 0xa_0000;
/// Length of the legacy memory window (0xa0000-0xbffff).
pub const VGA_WINDOW_LEN: u64 = 0x2_0000;

/// Bytes of a dirty-tracking page.
pub const DIRTY_PAGE: usize = 4096;

/// The Bochs VBE register indices.
pub(crate) mod vbe {
    pub const ID: usize = 0;
    pub const XRES: usize = 1;
    pub const YRES: usize = 2;
    pub const BPP: usize = 3;
    pub const ENABLE: usize = 4;
    pub const BANK: usize = 5;
    pub const VIRT_WIDTH: usize = 6;
    pub const VIRT_HEIGHT: usize = 7;
    pub const X_OFFSET: usize = 8;
    pub const Y_OFFSET: usize = 9;
    /// The number of stored registers.
    pub const NB: usize = 10;
    /// VIDEO_MEMORY_64K: computed, read-only.
    pub const VIDEO_MEMORY_64K: usize = 10;

    pub const ID0: u16 = 0xb0c0;
    pub const ID5: u16 = 0xb0c5;

    pub const ENABLED: u16 = 0x01;
    pub const GETCAPS: u16 = 0x02;
    pub const DAC_8BIT: u16 = 0x20;
    pub const NOCLEARMEM: u16 = 0x80;

    pub const MAX_XRES: u16 = 16000;
    pub const MAX_YRES: u16 = 12000;
    pub const MAX_BPP: u16 = 32;
}

/// QEMU's standard VGA: the PCI function, the VGA registers, the Bochs VBE
/// registers, the VRAM and the renderer's bookkeeping.
pub struct StdVga {
    pub(crate) config: PciConfigSpace,
    /// The VRAM: guest memory decodes it at BAR0 when the adapter is the
    /// machine's ([`StdVga::with_memory`]), where the CPU loads and stores
    /// it directly; every access of the model's goes through it.
    pub(crate) shared: Arc<Vram>,
    /// The renderer's copy of the VRAM: the pages that changed are copied
    /// from `shared` at the start of each render ([`StdVga::render`]).
    pub(crate) vram: Vec<u8>,
    /// The guest memory that decodes `shared`, for its write syncs.
    pub(crate) mem: Option<Arc<GuestMemory>>,
    /// Pages of `shared` a take returned whose stores through translated
    /// code's entries may still land: copied again once write sync
    /// `settle_sync` is answered (0: none pending).
    pub(crate) settling: Vec<u64>,
    pub(crate) settle_sync: u64,
    pub(crate) r: Regs,
    /// One bit per [`DIRTY_PAGE`] of VRAM written since the last render.
    pub(crate) dirty: Vec<u64>,
    /// Some bit of `dirty` is set.
    pub(crate) any_dirty: bool,
    /// A write reached plane 2 in the font area (the first 256 KiB of VRAM).
    pub(crate) font_dirty: bool,
    /// A register that may change the picture was written.
    pub(crate) regs_dirty: bool,
    /// The DAC or the attribute palette changed.
    pub(crate) palette_dirty: bool,
    pub(crate) view: render::View,
    pub(crate) log: LogOnce,
}

/// The guest-visible registers (everything but the VRAM and the PCI header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Regs {
    pub(crate) misc: u8,
    pub(crate) st00: u8,
    pub(crate) st01: u8,
    pub(crate) feature: u8,
    pub(crate) sr_index: u8,
    pub(crate) sr: [u8; 8],
    pub(crate) gr_index: u8,
    pub(crate) gr: [u8; 16],
    pub(crate) ar_index: u8,
    pub(crate) ar: [u8; 21],
    pub(crate) ar_flip: bool,
    pub(crate) cr_index: u8,
    pub(crate) cr: [u8; 256],
    pub(crate) latch: u32,
    pub(crate) dac_state: u8,
    pub(crate) dac_read_index: u8,
    pub(crate) dac_write_index: u8,
    pub(crate) dac_sub_index: u8,
    pub(crate) dac_cache: [u8; 3],
    pub(crate) palette: [u8; 768],
    pub(crate) pel_mask: u8,
    pub(crate) vbe_index: u16,
    pub(crate) vbe_regs: [u16; vbe::NB],
    /// Byte offset of the visible VBE picture in VRAM.
    pub(crate) vbe_start: u32,
    /// Bytes per VBE scanline.
    pub(crate) vbe_line_offset: u32,
    /// Byte offset of the window's bank (BANK * 64 KiB).
    pub(crate) bank_offset: u32,
}

impl Regs {
    fn power_on() -> Self {
        let mut vbe_regs = [0u16; vbe::NB];
        vbe_regs[vbe::ID] = vbe::ID5;
        Self {
            misc: 0,
            st00: 0,
            st01: 0,
            feature: 0,
            sr_index: 0,
            sr: [0; 8],
            gr_index: 0,
            gr: [0; 16],
            ar_index: 0,
            ar: [0; 21],
            ar_flip: false,
            cr_index: 0,
            cr: [0; 256],
            latch: 0,
            dac_state: 0,
            dac_read_index: 0,
            dac_write_index: 0,
            dac_sub_index: 0,
            dac_cache: [0; 3],
            palette: [0; 768],
            pel_mask: 0xff,
            vbe_index: 0,
            vbe_regs,
            vbe_start: 0,
            vbe_line_offset: 0,
            bank_offset: 0,
        }
    }
}

impl std::fmt::Debug for StdVga {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdVga")
            .field("vram", &self.shared.len())
            .field("misc", &self.r.misc)
            .field("vbe", &self.r.vbe_regs)
            .finish_non_exhaustive()
    }
}

/// The configuration space of a function with `vram_size` bytes of VRAM.
fn power_on_config(vram_size: u32) -> PciConfigSpace {
    let mut c = PciConfigSpace::new(VGA_VENDOR_ID, VGA_DEVICE_ID, VGA_CLASS, VGA_REVISION);
    c.set_subsystem(VGA_SUBSYSTEM_VENDOR_ID, VGA_SUBSYSTEM_ID);
    // Valid BARs on a fresh header (the size was checked): these cannot fail.
    let _ = c.add_bar(LFB_BAR, PciBarKind::Memory32 { prefetchable: true }, u64::from(vram_size));
    let _ = c.add_bar(MMIO_BAR, PciBarKind::Memory32 { prefetchable: false }, MMIO_BAR_SIZE);
    c
}

impl StdVga {
    /// The adapter with `vram_size` bytes of VRAM: a power of two from
    /// 1 MiB to 256 MiB ([`DEFAULT_VRAM`] is QEMU's 16 MiB).
    pub fn new(vram_size: u32) -> Result<Self, String> {
        Self::check_size(u64::from(vram_size))?;
        let vram = Vram::new(u64::from(vram_size)).map_err(|e| format!("the standard VGA's VRAM: {e}"))?;
        Ok(Self::build(Arc::new(vram), None))
    }

    /// The adapter of the machine whose memory is `mem`, with the VRAM
    /// `mem` has ([`GuestMemory::add_vram`], a size [`StdVga::new`]
    /// takes): the machine decodes it where BAR0 is
    /// ([`GuestMemory::map_vram`]).
    pub fn with_memory(mem: Arc<GuestMemory>) -> Result<Self, String> {
        let vram = mem.vram().cloned().ok_or("the standard VGA needs guest memory with VRAM")?;
        Self::check_size(vram.len())?;
        Ok(Self::build(vram, Some(mem)))
    }

    fn check_size(size: u64) -> Result<(), String> {
        if !size.is_power_of_two() || !(u64::from(MIN_VRAM)..=u64::from(MAX_VRAM)).contains(&size) {
            return Err(format!(
                "the standard VGA cannot have {size:#x} bytes of VRAM; use a power of two from 1 MiB to 256 MiB"
            ));
        }
        Ok(())
    }

    fn build(shared: Arc<Vram>, mem: Option<Arc<GuestMemory>>) -> Self {
        let vram_size = shared.len() as u32;
        let pages = (vram_size as usize).div_ceil(DIRTY_PAGE);
        Self {
            config: power_on_config(vram_size),
            vram: shared.to_vec(),
            shared,
            mem,
            settling: Vec::new(),
            settle_sync: 0,
            r: Regs::power_on(),
            dirty: vec![0; pages.div_ceil(64)],
            any_dirty: false,
            font_dirty: true,
            regs_dirty: true,
            palette_dirty: true,
            view: render::View::default(),
            log: LogOnce::new(),
        }
    }

    /// The VRAM size in bytes.
    pub fn vram_size(&self) -> u32 {
        self.shared.len() as u32
    }

    /// A copy of the VRAM, as BAR0 shows it.
    pub fn vram(&self) -> Vec<u8> {
        self.shared.to_vec()
    }

    /// A system reset: every register to its power-on value and the VRAM
    /// cleared. The PCI header (Command, BARs) is kept, as the chipset keeps
    /// the rest of PCI configuration across a reset.
    pub fn reset(&mut self) {
        self.r = Regs::power_on();
        self.shared.fill(0, self.shared.len(), 0);
        self.mark_all_dirty();
    }

    /// Marks the whole picture as changed: the next [`StdVga::render`]
    /// draws all of it (for a display that starts showing this adapter).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.fill(u64::MAX);
        self.any_dirty = true;
        self.font_dirty = true;
        self.regs_dirty = true;
        self.palette_dirty = true;
    }

    /// The bus devices of every range the adapter answers on.
    pub fn bus_devices(this: &Arc<Mutex<Self>>) -> VgaBusDevices {
        let dev = |window: Window| -> SharedDevice { Arc::new(Mutex::new(VgaPort { vga: Arc::clone(this), window })) };
        VgaBusDevices {
            ports: dev(Window::Ports),
            vbe_ports: dev(Window::VbePorts),
            window: dev(Window::Memory),
            lfb: dev(Window::Lfb),
            mmio: dev(Window::Mmio),
        }
    }

    /// The legacy ranges to register: the VGA ports and the Bochs VBE ports
    /// on the port bus, the 0xa0000 window on the MMIO bus.
    pub fn bus_mappings(this: &Arc<Mutex<Self>>) -> Vec<BusMapping> {
        let d = Self::bus_devices(this);
        vec![
            BusMapping::pio(u64::from(VGA_PORTS_BASE), VGA_PORTS_LEN, d.ports),
            BusMapping::pio(u64::from(VBE_PORTS_BASE), VBE_PORTS_LEN, d.vbe_ports),
            BusMapping::mmio(VGA_WINDOW_BASE, VGA_WINDOW_LEN, d.window),
        ]
    }

    /// The bus devices answering for each BAR: (BAR index, device).
    pub fn bar_devices(this: &Arc<Mutex<Self>>) -> Vec<(usize, SharedDevice)> {
        let d = Self::bus_devices(this);
        vec![(LFB_BAR, d.lfb), (MMIO_BAR, d.mmio)]
    }

    /// A read of `data.len()` bytes at `offset` of `window`.
    fn window_read(&mut self, window: Window, offset: u64, data: &mut [u8]) {
        match window {
            Window::Ports => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = self.port_read(VGA_PORTS_BASE.wrapping_add(offset as u16).wrapping_add(i as u16));
                }
            }
            Window::VbePorts => self.vbe_port_read(offset, data),
            Window::Memory => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = self.mem_read(offset.wrapping_add(i as u64));
                }
            }
            Window::Lfb => self.lfb_read(offset, data),
            Window::Mmio => self.mmio_read(offset, data),
        }
    }

    /// A write of `data` at `offset` of `window`.
    fn window_write(&mut self, window: Window, offset: u64, data: &[u8]) {
        match window {
            Window::Ports => {
                for (i, &b) in data.iter().enumerate() {
                    self.port_write(VGA_PORTS_BASE.wrapping_add(offset as u16).wrapping_add(i as u16), b);
                }
            }
            Window::VbePorts => self.vbe_port_write(offset, data),
            Window::Memory => {
                for (i, &b) in data.iter().enumerate() {
                    self.mem_write(offset.wrapping_add(i as u64), b);
                }
            }
            Window::Lfb => self.lfb_write(offset, data),
            Window::Mmio => self.mmio_write(offset, data),
        }
    }

    /// Logs a misuse once.
    pub(crate) fn misuse(&self, kind: Misuse, what: impl FnOnce() -> String) {
        if self.log.first(kind) {
            tracing::warn!(target: "devices", "standard VGA: {} (logged once)", what());
        }
    }
}

impl PciDevice for StdVga {
    fn debug_label(&self) -> String {
        "standard VGA".to_string()
    }

    fn config(&self) -> &PciConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfigSpace {
        &mut self.config
    }
}

/// The shared bus devices of the adapter, one per range.
pub struct VgaBusDevices {
    /// The VGA ports, [`VGA_PORTS_BASE`] for [`VGA_PORTS_LEN`].
    pub ports: SharedDevice,
    /// The Bochs VBE ports, [`VBE_PORTS_BASE`] for [`VBE_PORTS_LEN`].
    pub vbe_ports: SharedDevice,
    /// The memory window, [`VGA_WINDOW_BASE`] for [`VGA_WINDOW_LEN`].
    pub window: SharedDevice,
    /// BAR0: the linear framebuffer (offsets from the BAR's base).
    pub lfb: SharedDevice,
    /// BAR2: the MMIO registers (offsets from the BAR's base).
    pub mmio: SharedDevice,
}

/// Which range a bus device serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    Ports,
    VbePorts,
    Memory,
    Lfb,
    Mmio,
}

/// One range of the adapter on a bus.
struct VgaPort {
    vga: Arc<Mutex<StdVga>>,
    window: Window,
}

impl BusDevice for VgaPort {
    fn debug_label(&self) -> String {
        match self.window {
            Window::Ports => "standard VGA ports",
            Window::VbePorts => "standard VGA Bochs VBE ports",
            Window::Memory => "standard VGA memory window",
            Window::Lfb => "standard VGA framebuffer (BAR0)",
            Window::Mmio => "standard VGA MMIO (BAR2)",
        }
        .to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.vga.lock().window_read(self.window, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.vga.lock().window_write(self.window, offset, data);
    }
}

#[cfg(any(test, feature = "fuzz"))]
impl StdVga {
    /// A read as the bus would make it, for tests and fuzzing.
    pub(crate) fn bus_read(&mut self, window: Window, offset: u64, data: &mut [u8]) {
        self.window_read(window, offset, data);
    }

    /// A write as the bus would make it, for tests and fuzzing.
    pub(crate) fn bus_write(&mut self, window: Window, offset: u64, data: &[u8]) {
        self.window_write(window, offset, data);
    }
}
