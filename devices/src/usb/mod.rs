//! USB: the PIIX3's USB function, a UHCI host controller (PCI 00:01.2,
//! 8086:7020) with its two-port root hub, and the HID devices that plug
//! into it (QEMU's `usb-tablet`, `usb-mouse` and `usb-kbd`, in `hid.rs`).
//!
//! References: Intel "Universal Host Controller Interface (UHCI) Design
//! Guide" rev 1.1 (2.1 the I/O registers, 3 the data structures, 4 the
//! schedule); Intel 82371SB PIIX3 datasheet (the USB function's
//! configuration registers: SBRN 60h, LEGSUP C0h); USB 1.1 chapter 9; HID
//! 1.11. QEMU's hw/usb/hcd-uhci.c served as a behavioural reference.
//!
//! ```text
//! configuration space
//!   00h 8086h:7020h  class 0C0300h (serial bus, USB, UHCI), interrupt pin D
//!   20h BAR4         32 bytes of I/O space
//!   60h SBRN         10h (USB 1.0)
//!   C0h LEGSUP       2000h (USB PIRQ enable) at power-on
//! I/O registers (BAR4)
//!   00h USBCMD    7 MAXP | 6 CF | 5 SWDBG | 4 FGR | 3 EGSM | 2 GRESET | 1 HCRESET | 0 RS
//!   02h USBSTS    5 HCHALTED (RO) | 4 HCPE | 3 HSE | 2 RD | 1 ERROR | 0 USBINT (write 1 to clear)
//!   04h USBINTR   3 short packet | 2 IOC | 1 resume | 0 timeout/CRC
//!   06h FRNUM     10:0 frame number (10:1 index the frame list)
//!   08h FLBASEADD 31:12 frame list base
//!   0Ch SOFMOD    6:0 SOF timing
//!   10h PORTSC1, 12h PORTSC2
//!                 12 suspend | 9 reset | 8 low speed (RO) | 7 1 (RO) | 6 resume detect
//!                 | 3 enable change (W1C) | 2 enable | 1 connect change (W1C) | 0 connected (RO)
//! link pointer    31:4 address | 2 Vf (depth first) | 1 Q (a QH) | 0 T (terminate)
//! TD              dword 0 link | 1 control/status | 2 token | 3 buffer
//!   control/status 29 SPD | 28:27 C_ERR | 26 LS | 25 IOS | 24 IOC | 23 active | 22 stalled
//!                 | 21 data buffer error | 20 babble | 19 NAK | 18 CRC/timeout | 17 bitstuff
//!                 | 10:0 actual length - 1
//!   token         31:21 max length - 1 (7FFh: 0) | 19 toggle | 18:15 endpoint | 14:8 address | 7:0 PID
//! QH              dword 0 horizontal link | 1 element link
//! ```
//!
//! The schedule. While USBCMD.RS is set, a frame runs every millisecond:
//! the controller reads entry FRNUM & 3FFh of the frame list at FLBASEADD
//! and follows the links. A TD linked horizontally runs once and the walk
//! goes on at its link. A QH runs its queue: the TD at its element link
//! runs; when it completes, the element link advances to the TD's link
//! and, if that link is depth first, the queue goes on in the same visit;
//! otherwise, and when a TD NAKs, fails or ends short (with SPD), the walk
//! takes the QH's horizontal link. A TD writes back its status and actual
//! length; IOC and short packets set USBSTS.USBINT, errors USBSTS.ERROR,
//! and the PCI INTx line (pin D) follows USBSTS masked by USBINTR.
//!
//! Limits, all against a hostile schedule:
//! - every guest address goes through [`GuestMemory`]'s checked accesses; a
//!   frame list entry, QH or TD outside RAM, or a data buffer outside it,
//!   is a bus master abort: USBSTS.HSE, the controller halts (RS clear),
//!   and the PCI status records the received master abort;
//! - a frame runs transactions for about [`FRAME_BYTES`] bytes of data (a
//!   full-speed frame) and visits at most [`MAX_LINKS_PER_FRAME`] links;
//!   a QH seen again in the same frame with no TD completed since ends the
//!   frame, so loops (a QH linking to itself, TD rings) end each frame;
//! - a TD's maximum length field of 500h-7FEh or an unknown PID is a
//!   consistency error: USBSTS.HCPE and the controller halts;
//! - at most [`MAX_CATCHUP_FRAMES`] frames run in one catch-up; older ones
//!   pass unrun (FRNUM still counts them).
//!
//! Time. Frames follow the machine's clock: [`Timed::tick`] runs the
//! frames that ended since the last call, and a read of FRNUM (or any
//! register) catches up first, so a guest polling FRNUM sees it advance
//! without a timer. No frames run while RS is clear (no deadline). With RS
//! set the deadline is the end of the next frame; after
//! [`IDLE_AFTER_FRAMES`] frames in which no transaction completed, the
//! deadline moves [`IDLE_STRIDE`] frames ahead, and the frames in between
//! run together at it (a register write or host input returns to every
//! frame), so a guest whose only TDs NAK costs little. [`Uhci::poll`] is
//! the same hook for a caller that drives the controller directly.
//!
//! Model choices:
//! - Bus mastering (PCI command bit 2) off: frames count but the schedule is
//!   not read.
//! - A transaction to an address no enabled, unsuspended port answers times
//!   out (CRC/timeout, C_ERR counts down; at 0 the TD retires with ERROR).
//! - NAKs are not written back (the TD stays as it was), to keep the frames
//!   of an idle schedule free of guest memory writes.
//! - Global suspend (EGSM) with remote wakeup enabled in a device: host
//!   input sets resume detect (USBSTS.RD, the port's RD) and FGR, as QEMU.
//! - LEGSUP is recorded; it does not gate the interrupt (as QEMU).

mod hid;
mod state;

#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use mmu::GuestMemory;
use parking_lot::Mutex;

use crate::bus::{BusDevice, SharedDevice};
use crate::clock::{SharedClock, Timed};
use crate::irq::IrqLine;
use crate::log_once::{LogOnce, Misuse};
use crate::pci::config::{
    PciBarKind, PciConfigSpace, COMMAND_IO, COMMAND_MASTER, PCI_CACHE_LINE_SIZE, PCI_COMMAND, PCI_STATUS,
};
use crate::pci::i440fx::INTEL_VENDOR_ID;
use crate::pci::{PciAddress, PciDevice, PciInterruptPin};

use hid::{Handshake, HidDevice, Pid};

#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::fuzz_uhci;
pub use hid::{set1_to_usage, ControlStage, HidState, UsbDeviceKind};
pub use state::{PortState, UhciState};

/// Device ID of the PIIX3 USB function.
pub const PIIX3_UHCI_DEVICE_ID: u16 = 0x7020;
/// Where the USB function sits: function 2 of the PIIX3.
pub const UHCI_ADDRESS: PciAddress = PciAddress { bus: 0, device: 1, function: 2 };
/// The BAR of the I/O registers.
pub const UHCI_BAR: usize = 4;
/// Bytes of I/O space the registers take.
pub const UHCI_BAR_SIZE: u64 = 32;
/// Root hub ports.
pub const UHCI_PORTS: usize = 2;
/// Nanoseconds in a frame.
pub const FRAME_NS: u64 = 1_000_000;
/// Frames one catch-up runs at most.
pub const MAX_CATCHUP_FRAMES: u64 = 64;
/// Links (QHs and TDs) one frame visits at most.
pub const MAX_LINKS_PER_FRAME: u32 = 1024;
/// Data bytes of transactions one frame runs: a full-speed frame's worth.
/// The TD that crosses it still runs; the frame ends after it.
pub const FRAME_BYTES: usize = 1500;
/// Frames without a completed transaction before the deadline stretches.
pub const IDLE_AFTER_FRAMES: u32 = 32;
/// Frames between deadlines once idle.
pub const IDLE_STRIDE: u64 = 8;

/// Class code: serial bus controller, USB, UHCI.
const CLASS_UHCI: u32 = 0x0c_03_00;
const REVISION: u8 = 0x01;
/// Status at reset: fast back-to-back capable, medium DEVSEL.
const STATUS_RESET: u16 = 0x0280;
/// PCI status: received master abort.
const STATUS_MASTER_ABORT: u16 = 1 << 13;
/// The PCICMD bits the function implements.
const COMMAND_WRITABLE: u16 = COMMAND_IO | COMMAND_MASTER;
/// Serial bus release number register.
const SBRN: usize = 0x60;
/// USB 1.0.
const SBRN_USB10: u8 = 0x10;
/// Legacy support register.
const LEGSUP: usize = 0xc0;
/// LEGSUP at power-on: USB PIRQ enable.
const LEGSUP_DEFAULT: u16 = 0x2000;
/// LEGSUP bits software may change (the enables; the W1C status bits read 0).
const LEGSUP_WRITABLE: u16 = 0x20ff;

// USBCMD
const CMD_RS: u16 = 1 << 0;
const CMD_HCRESET: u16 = 1 << 1;
const CMD_GRESET: u16 = 1 << 2;
const CMD_EGSM: u16 = 1 << 3;
const CMD_FGR: u16 = 1 << 4;
const CMD_SWDBG: u16 = 1 << 5;
/// The bits USBCMD keeps.
const CMD_MASK: u16 = 0x00ff & !CMD_HCRESET & !CMD_GRESET;

// USBSTS
const STS_USBINT: u16 = 1 << 0;
const STS_ERROR: u16 = 1 << 1;
const STS_RD: u16 = 1 << 2;
const STS_HSE: u16 = 1 << 3;
const STS_HCPE: u16 = 1 << 4;
const STS_HCHALTED: u16 = 1 << 5;
/// The stored (write-1-to-clear) bits.
const STS_MASK: u16 = 0x1f;

// USBINTR
const INTR_TIMEOUT_CRC: u16 = 1 << 0;
const INTR_RESUME: u16 = 1 << 1;
const INTR_IOC: u16 = 1 << 2;
const INTR_SHORT: u16 = 1 << 3;
const INTR_MASK: u16 = 0x0f;

/// Why USBINT is set: an IOC, a short packet.
const CAUSE_IOC: u8 = 1 << 0;
const CAUSE_SHORT: u8 = 1 << 1;

const FRNUM_MASK: u16 = 0x07ff;
const FLBASE_MASK: u32 = 0xffff_f000;
const SOFMOD_DEFAULT: u8 = 64;

// PORTSC
const PORT_CCS: u16 = 1 << 0;
const PORT_CSC: u16 = 1 << 1;
const PORT_PE: u16 = 1 << 2;
const PORT_PEC: u16 = 1 << 3;
const PORT_RD: u16 = 1 << 6;
/// Reserved, reads 1.
const PORT_ALWAYS1: u16 = 1 << 7;
const PORT_PR: u16 = 1 << 9;
const PORT_SUSP: u16 = 1 << 12;
const PORT_W1C: u16 = PORT_CSC | PORT_PEC;
const PORT_RW: u16 = PORT_PE | PORT_RD | PORT_PR | PORT_SUSP;
/// The bits a port state may hold.
const PORT_MASK: u16 = PORT_CCS | PORT_W1C | PORT_RW;

// Link pointers
const LINK_T: u32 = 1 << 0;
const LINK_Q: u32 = 1 << 1;
const LINK_VF: u32 = 1 << 2;
const LINK_ADDR: u32 = !0xf;

// TD control/status
const TD_SPD: u32 = 1 << 29;
const TD_CERR_SHIFT: u32 = 27;
const TD_IOC: u32 = 1 << 24;
const TD_ACTIVE: u32 = 1 << 23;
const TD_STALLED: u32 = 1 << 22;
const TD_DBE: u32 = 1 << 21;
const TD_BABBLE: u32 = 1 << 20;
const TD_NAK: u32 = 1 << 19;
const TD_CRC_TIMEOUT: u32 = 1 << 18;
const TD_BITSTUFF: u32 = 1 << 17;
const TD_STATUS: u32 = TD_ACTIVE | TD_STALLED | TD_DBE | TD_BABBLE | TD_NAK | TD_CRC_TIMEOUT | TD_BITSTUFF;
const TD_ACTLEN: u32 = 0x7ff;

const PID_SETUP: u32 = 0x2d;
const PID_IN: u32 = 0x69;
const PID_OUT: u32 = 0xe1;

/// Lengths above this (encoded 500h-7FEh) are a consistency error.
const MAX_TD_LEN: usize = 1280;

/// The registers of the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Regs {
    cmd: u16,
    /// The write-1-to-clear bits of USBSTS (HCHALTED is derived from RS).
    status: u16,
    /// What set USBINT: [`CAUSE_IOC`], [`CAUSE_SHORT`].
    causes: u8,
    intr: u16,
    frnum: u16,
    flbase: u32,
    sofmod: u8,
}

impl Regs {
    fn power_on() -> Self {
        Self { cmd: 0, status: 0, causes: 0, intr: 0, frnum: 0, flbase: 0, sofmod: SOFMOD_DEFAULT }
    }
}

/// One root hub port and the device plugged into it.
#[derive(Debug, Clone)]
struct Port {
    portsc: u16,
    device: Option<HidDevice>,
}

impl Port {
    fn power_on(device: Option<HidDevice>) -> Self {
        let portsc = if device.is_some() { PORT_CCS | PORT_CSC } else { 0 };
        Self { portsc, device }
    }

    /// The device, if it can take a transaction at `address`.
    fn reachable(&mut self, address: u8) -> Option<&mut HidDevice> {
        let ready = self.portsc & (PORT_PE | PORT_PR | PORT_SUSP) == PORT_PE;
        self.device.as_mut().filter(|d| ready && d.address == address)
    }
}

/// What running one TD did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TdOutcome {
    /// The TD was not active.
    Inactive,
    /// It completed: a QH's element link advances.
    Done,
    /// It NAKed, failed or ended short: the queue stops for this frame.
    Stop,
    /// The controller halted (HSE or HCPE): the frame ends.
    Halt,
}

/// The PIIX3 USB function: a UHCI controller with two root hub ports.
pub struct Uhci {
    config: PciConfigSpace,
    regs: Regs,
    ports: [Port; UHCI_PORTS],
    /// The clock time the current frame (FRNUM) started.
    frame_start_ns: u64,
    /// Frames run since power-on (the devices' idle rates count them).
    frame_count: u64,
    /// Frames in a row in which no transaction completed.
    idle_frames: u32,
    /// Data bytes of the transactions run in the current frame.
    frame_bytes: usize,
    mem: Arc<GuestMemory>,
    irq: Arc<dyn IrqLine>,
    clock: SharedClock,
    irq_level: bool,
    /// Guest register misuse.
    log: LogOnce,
    /// Schedules that halt the controller.
    schedule_log: LogOnce,
    /// Host input with no key.
    input_log: LogOnce,
}

impl std::fmt::Debug for Uhci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<Option<UsbDeviceKind>> = self.ports.iter().map(|p| p.device.as_ref().map(|d| d.kind)).collect();
        f.debug_struct("Uhci").field("ports", &kinds).field("regs", &self.regs).finish_non_exhaustive()
    }
}

/// The configuration space at power-on.
fn power_on_config() -> PciConfigSpace {
    let mut c = PciConfigSpace::new(INTEL_VENDOR_ID, PIIX3_UHCI_DEVICE_ID, CLASS_UHCI, REVISION);
    c.set_writable(PCI_COMMAND, &COMMAND_WRITABLE.to_le_bytes());
    c.set_u16(PCI_STATUS, STATUS_RESET);
    c.set_writable(PCI_CACHE_LINE_SIZE, &[0x00, 0xf0]);
    c.set_interrupt_pin(Some(PciInterruptPin::IntD));
    // A fixed, valid BAR on a fresh header: this cannot fail.
    let _ = c.add_bar(UHCI_BAR, PciBarKind::Io, UHCI_BAR_SIZE);
    c.set_u8(SBRN, SBRN_USB10);
    c.set_u16(LEGSUP, LEGSUP_DEFAULT);
    c.set_writable(LEGSUP, &LEGSUP_WRITABLE.to_le_bytes());
    c
}

impl Uhci {
    /// The controller with `devices` on ports 1 and 2 in order (at most
    /// two), raising `irq` (the function's INTD line), reading the schedule
    /// from `mem` and timing frames by `clock`.
    pub fn new(
        mem: Arc<GuestMemory>,
        irq: Arc<dyn IrqLine>,
        clock: SharedClock,
        devices: Vec<UsbDeviceKind>,
    ) -> Result<Self, String> {
        if devices.len() > UHCI_PORTS {
            return Err(format!(
                "the UHCI root hub has {UHCI_PORTS} ports; {} USB devices were given: attach at most {UHCI_PORTS}",
                devices.len()
            ));
        }
        let mut devs = devices.into_iter().map(HidDevice::new);
        let ports = [Port::power_on(devs.next()), Port::power_on(devs.next())];
        Ok(Self {
            config: power_on_config(),
            regs: Regs::power_on(),
            ports,
            frame_start_ns: 0,
            frame_count: 0,
            idle_frames: 0,
            frame_bytes: 0,
            mem,
            irq,
            clock,
            irq_level: false,
            log: LogOnce::new(),
            schedule_log: LogOnce::new(),
            input_log: LogOnce::new(),
        })
    }

    /// The bus devices answering for each BAR: (BAR index, device); BAR4
    /// holds the I/O registers.
    pub fn bar_devices(this: &Arc<Mutex<Self>>) -> Vec<(usize, SharedDevice)> {
        let regs: SharedDevice = Arc::new(Mutex::new(UhciRegisters { uhci: Arc::clone(this) }));
        vec![(UHCI_BAR, regs)]
    }

    /// Whether a tablet is plugged in.
    pub fn has_tablet(&self) -> bool {
        self.device_index(UsbDeviceKind::Tablet).is_some()
    }

    /// Whether a mouse is plugged in.
    pub fn has_mouse(&self) -> bool {
        self.device_index(UsbDeviceKind::Mouse).is_some()
    }

    /// Whether a keyboard is plugged in.
    pub fn has_keyboard(&self) -> bool {
        self.device_index(UsbDeviceKind::Keyboard).is_some()
    }

    fn device_index(&self, kind: UsbDeviceKind) -> Option<usize> {
        self.ports.iter().position(|p| p.device.as_ref().is_some_and(|d| d.kind == kind))
    }

    /// An absolute pointer event for the tablet: (`x`, `y`) in a screen of
    /// `width` x `height` pixels, scaled to 0..=7FFFh; `buttons` bit 0
    /// left, 1 right, 2 middle; `dz` > 0 turns the wheel away from the
    /// user. Ignored without a tablet.
    pub fn tablet_event(&mut self, x: u32, y: u32, width: u32, height: u32, buttons: u8, dz: i32) {
        let scale = |v: u32, size: u32| -> u16 {
            if size <= 1 {
                return 0;
            }
            let v = u64::from(v.min(size - 1));
            (v * 0x7fff / u64::from(size - 1)) as u16
        };
        let (sx, sy) = (scale(x, width), scale(y, height));
        if let Some(i) = self.device_index(UsbDeviceKind::Tablet) {
            self.catch_up(self.clock.now_ns());
            if let Some(d) = self.ports[i].device.as_mut() {
                d.pointer(sx, sy, buttons, dz);
            }
            self.input_arrived(i);
        }
    }

    /// A relative pointer event for the mouse: `dx` right, `dy` down, in
    /// the counts of the guest's mouse; `buttons` bit 0 left, 1 right, 2
    /// middle; `dz` > 0 turns the wheel away from the user. Ignored without
    /// a mouse.
    pub fn mouse_event(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        if let Some(i) = self.device_index(UsbDeviceKind::Mouse) {
            self.catch_up(self.clock.now_ns());
            if let Some(d) = self.ports[i].device.as_mut() {
                d.motion(dx, dy, dz, buttons);
            }
            self.input_arrived(i);
        }
    }

    /// A key event for the keyboard: a PC scancode set 1 make code (01h-7Fh,
    /// or E0xxh for the extended keys; see [`set1_to_usage`]). Ignored
    /// without a keyboard, and for codes with no key.
    pub fn key_event(&mut self, set1: u16, down: bool) {
        let usage = set1_to_usage(set1);
        if usage == 0 {
            if self.input_log.first(Misuse::BadValue) {
                tracing::warn!(target: "devices", "USB keyboard: scancode {set1:#06x} has no key; ignored (logged once)");
            }
            return;
        }
        if let Some(i) = self.device_index(UsbDeviceKind::Keyboard) {
            self.catch_up(self.clock.now_ns());
            if let Some(d) = self.ports[i].device.as_mut() {
                d.key(usage, down);
            }
            self.input_arrived(i);
        }
    }

    /// The keyboard LEDs the guest set (bit 0 Num Lock, 1 Caps Lock, 2
    /// Scroll Lock), or `None` without a keyboard.
    pub fn keyboard_leds(&self) -> Option<u8> {
        let i = self.device_index(UsbDeviceKind::Keyboard)?;
        self.ports[i].device.as_ref().map(HidDevice::leds)
    }

    /// Host input for the device at port `i`: frames run every
    /// millisecond again, and a suspended device may signal resume.
    fn input_arrived(&mut self, i: usize) {
        self.idle_frames = 0;
        let wants = self.ports[i].device.as_ref().is_some_and(HidDevice::wants_wakeup);
        let suspended = self.ports[i].portsc & PORT_SUSP != 0 || self.regs.cmd & CMD_EGSM != 0;
        if wants && suspended {
            if self.ports[i].portsc & PORT_SUSP != 0 {
                self.ports[i].portsc |= PORT_RD;
            }
            if self.regs.cmd & CMD_EGSM != 0 {
                self.regs.cmd |= CMD_FGR;
                self.regs.status |= STS_RD;
            }
            self.update_irq();
        }
    }

    /// A system reset: the registers, ports and devices back to power-on
    /// (the devices see a bus reset; what the host holds stays), SBRN and
    /// LEGSUP too. The PCI header (Command, BAR4) is kept, as the chipset
    /// keeps the rest of PCI configuration across a reset.
    pub fn reset(&mut self) {
        let fresh = power_on_config();
        self.config.set_u8(SBRN, fresh.u8_at(SBRN));
        self.config.set_u16(LEGSUP, fresh.u16_at(LEGSUP));
        self.controller_reset();
    }

    /// HCRESET and GRESET: the registers to their defaults, every device
    /// reset and its port reporting a connect change.
    fn controller_reset(&mut self) {
        self.regs = Regs::power_on();
        for port in &mut self.ports {
            if let Some(d) = port.device.as_mut() {
                d.bus_reset();
            }
            *port = Port::power_on(port.device.take());
        }
        self.idle_frames = 0;
        self.update_irq();
    }

    /// Runs the frames due by `now_ns` and returns the next deadline
    /// (`None` while stopped): [`Timed::tick`] then
    /// [`Timed::next_deadline_ns`].
    pub fn poll(&mut self, now_ns: u64) -> Option<u64> {
        self.tick(now_ns);
        self.next_deadline_ns()
    }

    fn running(&self) -> bool {
        self.regs.cmd & CMD_RS != 0
    }

    /// Runs the frames that ended by `now`.
    fn catch_up(&mut self, now: u64) {
        if !self.running() || now < self.frame_start_ns.saturating_add(FRAME_NS) {
            return;
        }
        let mut frames = (now - self.frame_start_ns) / FRAME_NS;
        if frames > MAX_CATCHUP_FRAMES {
            let skip = frames - MAX_CATCHUP_FRAMES;
            self.regs.frnum = (u64::from(self.regs.frnum).wrapping_add(skip) & u64::from(FRNUM_MASK)) as u16;
            self.frame_start_ns += skip * FRAME_NS;
            self.frame_count = self.frame_count.wrapping_add(skip);
            frames = MAX_CATCHUP_FRAMES;
        }
        for _ in 0..frames {
            if !self.running() {
                break;
            }
            self.run_frame();
            if !self.running() {
                // The frame that halted the controller does not end.
                break;
            }
            self.regs.frnum = (self.regs.frnum + 1) & FRNUM_MASK;
            self.frame_start_ns += FRAME_NS;
            self.frame_count = self.frame_count.wrapping_add(1);
        }
        self.update_irq();
    }

    /// The level the interrupt line should have.
    fn irq_wanted(&self) -> bool {
        let (r, causes) = (&self.regs, self.regs.causes);
        (causes & CAUSE_IOC != 0 && r.intr & INTR_IOC != 0)
            || (causes & CAUSE_SHORT != 0 && r.intr & INTR_SHORT != 0)
            || (r.status & STS_ERROR != 0 && r.intr & INTR_TIMEOUT_CRC != 0)
            || (r.status & STS_RD != 0 && r.intr & INTR_RESUME != 0)
            || r.status & (STS_HSE | STS_HCPE) != 0
    }

    fn update_irq(&mut self) {
        let level = self.irq_wanted();
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// A bus master abort: host system error, halt.
    fn host_system_error(&mut self, addr: u64, what: &str) {
        if self.schedule_log.first(Misuse::OutOfWindow) {
            tracing::warn!(target: "devices", "UHCI: {what} at {addr:#x} is outside guest RAM; host system error, the controller halts (logged once)");
        }
        self.regs.status |= STS_HSE;
        self.regs.cmd &= !CMD_RS;
        let st = self.config.u16_at(PCI_STATUS);
        self.config.set_u16(PCI_STATUS, st | STATUS_MASTER_ABORT);
    }

    /// A schedule the controller cannot process: process error, halt.
    fn process_error(&mut self, what: impl FnOnce() -> String) {
        if self.schedule_log.first(Misuse::BadValue) {
            tracing::warn!(target: "devices", "UHCI: {}; process error, the controller halts (logged once)", what());
        }
        self.regs.status |= STS_HCPE;
        self.regs.cmd &= !CMD_RS;
    }

    fn read_u32(&mut self, addr: u64, what: &str) -> Option<u32> {
        match self.mem.read_u32(addr) {
            Ok(v) => Some(v),
            Err(_) => {
                self.host_system_error(addr, what);
                None
            }
        }
    }

    fn write_u32(&mut self, addr: u64, v: u32, what: &str) -> bool {
        let ok = self.mem.write_u32(addr, v).is_ok();
        if !ok {
            self.host_system_error(addr, what);
        }
        ok
    }

    /// Runs the schedule of frame FRNUM.
    fn run_frame(&mut self) {
        if self.config.command() & COMMAND_MASTER == 0 {
            return;
        }
        let entry = u64::from(self.regs.flbase) + 4 * u64::from(self.regs.frnum & 0x3ff);
        let Some(mut link) = self.read_u32(entry, "the frame list") else { return };
        let mut budget = MAX_LINKS_PER_FRAME;
        let mut completed = 0u32;
        // QHs visited (the first few), with the completions counted at the visit.
        let mut seen = [(0u32, 0u32); 32];
        let mut visited = 0;
        self.frame_bytes = 0;
        'walk: while link & LINK_T == 0 && budget > 0 && self.frame_bytes < FRAME_BYTES {
            budget -= 1;
            let addr = link & LINK_ADDR;
            if link & LINK_Q == 0 {
                let Some(td) = self.read_td(addr) else { return };
                match self.run_td(addr, td) {
                    TdOutcome::Halt => return,
                    TdOutcome::Done => completed += 1,
                    _ => {}
                }
                link = td[0];
                continue;
            }
            match seen[..visited].iter().position(|&(a, _)| a == addr) {
                Some(i) if seen[i].1 == completed => break,
                Some(i) => seen[i].1 = completed,
                None if visited < seen.len() => {
                    seen[visited] = (addr, completed);
                    visited += 1;
                }
                None => {}
            }
            let Some(horizontal) = self.read_u32(u64::from(addr), "a queue head") else { return };
            let Some(mut element) = self.read_u32(u64::from(addr) + 4, "a queue head") else { return };
            loop {
                if element & LINK_T != 0 {
                    link = horizontal;
                    break;
                }
                if element & LINK_Q != 0 {
                    // A QH in the element link: the walk goes down into it.
                    link = element;
                    break;
                }
                if budget == 0 || self.frame_bytes >= FRAME_BYTES {
                    break 'walk;
                }
                budget -= 1;
                let td_addr = element & LINK_ADDR;
                let Some(td) = self.read_td(td_addr) else { return };
                match self.run_td(td_addr, td) {
                    TdOutcome::Halt => return,
                    TdOutcome::Done => {
                        completed += 1;
                        element = td[0];
                        if !self.write_u32(u64::from(addr) + 4, element, "a queue head") {
                            return;
                        }
                        if element & LINK_VF == 0 {
                            link = horizontal;
                            break;
                        }
                    }
                    TdOutcome::Inactive | TdOutcome::Stop => {
                        link = horizontal;
                        break;
                    }
                }
            }
        }
        if completed > 0 {
            self.idle_frames = 0;
        } else {
            self.idle_frames = self.idle_frames.saturating_add(1);
        }
    }

    fn read_td(&mut self, addr: u32) -> Option<[u32; 4]> {
        match self.mem.read_bytes::<16>(u64::from(addr)) {
            Ok(b) => {
                Some(std::array::from_fn(|i| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])))
            }
            Err(_) => {
                self.host_system_error(u64::from(addr), "a transfer descriptor");
                None
            }
        }
    }

    /// Runs the TD at `addr`, whose four dwords are `td`.
    fn run_td(&mut self, addr: u32, td: [u32; 4]) -> TdOutcome {
        let [_, ctrl, token, buffer] = td;
        if ctrl & TD_ACTIVE == 0 {
            return TdOutcome::Inactive;
        }
        let pid = match token & 0xff {
            PID_SETUP => Pid::Setup,
            PID_IN => Pid::In,
            PID_OUT => Pid::Out,
            other => {
                self.process_error(|| format!("TD at {addr:#x} has PID {other:#04x}"));
                return TdOutcome::Halt;
            }
        };
        let maxlen = ((token >> 21) + 1) as usize & 0x7ff;
        if maxlen > MAX_TD_LEN {
            self.process_error(|| format!("TD at {addr:#x} has a maximum length of {maxlen} bytes"));
            return TdOutcome::Halt;
        }
        self.frame_bytes += maxlen;
        let device_address = ((token >> 8) & 0x7f) as u8;
        let endpoint = ((token >> 15) & 0xf) as u8;
        let buf = u64::from(buffer);
        let mut out = Vec::new();
        match pid {
            Pid::In => {
                if maxlen > 0 && !self.mem.is_backed(buf, maxlen as u64) {
                    return self.buffer_fault(addr, ctrl, buf);
                }
            }
            Pid::Setup | Pid::Out => {
                out = vec![0; maxlen];
                if self.mem.read(buf, &mut out).is_err() {
                    return self.buffer_fault(addr, ctrl, buf);
                }
            }
        }
        let frame = self.frame_count;
        let answer = self
            .ports
            .iter_mut()
            .find_map(|p| p.reachable(device_address))
            .map(|d| d.token(pid, endpoint, &out, maxlen, frame));
        let ctrl_addr = u64::from(addr) + 4;
        let mut new = ctrl & !TD_STATUS & !TD_ACTLEN;
        let outcome = match answer {
            None => {
                // No device answers: a timeout, counted down by C_ERR.
                let mut cerr = (ctrl >> TD_CERR_SHIFT) & 3;
                new = (ctrl | TD_CRC_TIMEOUT) & !(3 << TD_CERR_SHIFT);
                if cerr != 0 {
                    cerr -= 1;
                    if cerr == 0 {
                        new &= !TD_ACTIVE;
                        self.retire_with_error(ctrl);
                    }
                }
                new |= cerr << TD_CERR_SHIFT;
                TdOutcome::Stop
            }
            Some(Handshake::Nak) => return TdOutcome::Stop,
            Some(Handshake::Stall) => {
                new |= TD_STALLED | TD_ACTLEN;
                self.retire_with_error(ctrl);
                TdOutcome::Stop
            }
            Some(Handshake::Ack(data)) => {
                let sent = if pid == Pid::In { data.len() } else { maxlen };
                if data.len() > maxlen {
                    // The device sent more than the TD takes.
                    let _ = self.mem.write(buf, &data[..maxlen]);
                    new |= TD_BABBLE | TD_STALLED | ((maxlen as u32).wrapping_sub(1) & TD_ACTLEN);
                    self.retire_with_error(ctrl);
                    TdOutcome::Stop
                } else {
                    if !data.is_empty() && self.mem.write(buf, &data).is_err() {
                        self.host_system_error(buf, "a data buffer");
                        let _ = self.mem.write_u32(ctrl_addr, new | TD_DBE | TD_ACTLEN);
                        return TdOutcome::Halt;
                    }
                    new |= (sent as u32).wrapping_sub(1) & TD_ACTLEN;
                    if ctrl & TD_IOC != 0 {
                        self.regs.causes |= CAUSE_IOC;
                        self.regs.status |= STS_USBINT;
                    }
                    if pid == Pid::In && sent < maxlen && ctrl & TD_SPD != 0 {
                        self.regs.causes |= CAUSE_SHORT;
                        self.regs.status |= STS_USBINT;
                        // The queue stops at a short packet: the element
                        // link keeps pointing at this TD.
                        TdOutcome::Stop
                    } else {
                        TdOutcome::Done
                    }
                }
            }
        };
        if !self.write_u32(ctrl_addr, new, "a transfer descriptor") {
            return TdOutcome::Halt;
        }
        outcome
    }

    /// A TD retired with an error: USBSTS.ERROR, and USBINT if it asked
    /// for an interrupt on completion.
    fn retire_with_error(&mut self, ctrl: u32) {
        self.regs.status |= STS_ERROR;
        if ctrl & TD_IOC != 0 {
            self.regs.causes |= CAUSE_IOC;
            self.regs.status |= STS_USBINT;
        }
    }

    /// A TD's data buffer outside RAM: the TD retires with a data buffer
    /// error and the controller halts with a host system error.
    fn buffer_fault(&mut self, addr: u32, ctrl: u32, buf: u64) -> TdOutcome {
        self.host_system_error(buf, "a data buffer");
        let new = (ctrl & !TD_STATUS & !TD_ACTLEN) | TD_DBE | TD_ACTLEN;
        let _ = self.mem.write_u32(u64::from(addr) + 4, new);
        self.regs.status |= STS_ERROR;
        TdOutcome::Halt
    }

    /// USBCMD written.
    fn write_cmd(&mut self, v: u16) {
        if v & CMD_GRESET != 0 {
            // Global reset: every device sees a bus reset, the controller
            // returns to its defaults.
            self.controller_reset();
            return;
        }
        if v & CMD_HCRESET != 0 {
            self.controller_reset();
            return;
        }
        if v & CMD_SWDBG != 0 && self.log.first(Misuse::Unimplemented) {
            tracing::warn!(target: "devices", "UHCI: software debug mode is not implemented; frames run normally (logged once)");
        }
        let was_running = self.running();
        self.regs.cmd = v & CMD_MASK;
        if self.running() && !was_running {
            self.frame_start_ns = self.clock.now_ns();
            self.idle_frames = 0;
        }
    }

    fn write_portsc(&mut self, i: usize, v: u16) {
        let port = &mut self.ports[i];
        let old = port.portsc;
        let mut rw = v & PORT_RW;
        if old & PORT_CCS == 0 {
            rw &= !PORT_PE;
        }
        if rw & PORT_PR != 0 && old & PORT_PR == 0 {
            // Reset signalling starts: the device resets, the port disables.
            if let Some(d) = port.device.as_mut() {
                d.bus_reset();
            }
            rw &= !PORT_PE;
        }
        port.portsc = (old & PORT_CCS) | (old & PORT_W1C & !v) | rw;
    }

    /// A register read at `offset` of BAR4.
    fn io_read(&mut self, offset: u64, data: &mut [u8]) {
        self.catch_up(self.clock.now_ns());
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            let (reg, shift) = (at & !1, 8 * (at & 1));
            *b = (self.reg_value(reg) >> shift) as u8;
        }
    }

    /// The 16-bit register at even `reg` (FLBASEADD as two halves).
    fn reg_value(&self, reg: u64) -> u16 {
        let r = &self.regs;
        match reg {
            0x00 => r.cmd,
            0x02 => r.status | if self.running() { 0 } else { STS_HCHALTED },
            0x04 => r.intr,
            0x06 => r.frnum,
            0x08 => r.flbase as u16,
            0x0a => (r.flbase >> 16) as u16,
            0x0c => u16::from(r.sofmod),
            0x10 | 0x12 => self.ports[((reg - 0x10) / 2) as usize].portsc | PORT_ALWAYS1,
            _ => 0xffff,
        }
    }

    /// A register write at `offset` of BAR4.
    fn io_write(&mut self, offset: u64, data: &[u8]) {
        self.catch_up(self.clock.now_ns());
        self.idle_frames = 0;
        // Each 16-bit register touched gets one write: the bytes given
        // merged into its value (write-1-to-clear bits not given are 0).
        let end = offset + data.len() as u64;
        let mut reg = offset & !1;
        while reg < end {
            let mut value = 0u16;
            let mut mask = 0u16;
            for half in 0..2u64 {
                let at = reg + half;
                if at >= offset && at < end {
                    value |= u16::from(data[(at - offset) as usize]) << (8 * half);
                    mask |= 0xff << (8 * half);
                }
            }
            self.write_reg(reg, value, mask);
            reg += 2;
        }
        self.update_irq();
    }

    fn write_reg(&mut self, reg: u64, value: u16, mask: u16) {
        let merge = |old: u16| (old & !mask) | (value & mask);
        match reg {
            0x00 => self.write_cmd(merge(self.regs.cmd)),
            0x02 => {
                let clear = value & mask & STS_MASK;
                self.regs.status &= !clear;
                if clear & STS_USBINT != 0 {
                    self.regs.causes = 0;
                }
            }
            0x04 => self.regs.intr = merge(self.regs.intr) & INTR_MASK,
            0x06 => {
                if self.running() {
                    if self.log.first(Misuse::BadValue) {
                        tracing::warn!(target: "devices", "UHCI: FRNUM written while running; ignored (logged once)");
                    }
                } else {
                    self.regs.frnum = merge(self.regs.frnum) & FRNUM_MASK;
                }
            }
            0x08 => {
                let v = merge(self.regs.flbase as u16);
                self.regs.flbase = ((self.regs.flbase & 0xffff_0000) | u32::from(v)) & FLBASE_MASK;
            }
            0x0a => {
                let v = merge((self.regs.flbase >> 16) as u16);
                self.regs.flbase = (self.regs.flbase & 0xffff) | (u32::from(v) << 16);
            }
            0x0c => self.regs.sofmod = (merge(u16::from(self.regs.sofmod)) & 0x7f) as u8,
            0x10 | 0x12 => {
                let i = ((reg - 0x10) / 2) as usize;
                let v = merge(self.ports[i].portsc & !PORT_W1C) | (value & mask & PORT_W1C);
                self.write_portsc(i, v);
            }
            _ => {
                if self.log.first(Misuse::Unimplemented) {
                    tracing::warn!(target: "devices", "UHCI: write to reserved register {reg:#04x}; ignored (logged once)");
                }
            }
        }
    }
}

impl Timed for Uhci {
    fn next_deadline_ns(&self) -> Option<u64> {
        if !self.running() {
            return None;
        }
        let frames = if self.idle_frames >= IDLE_AFTER_FRAMES { IDLE_STRIDE } else { 1 };
        Some(self.frame_start_ns.saturating_add(frames * FRAME_NS))
    }

    fn tick(&mut self, now_ns: u64) {
        self.catch_up(now_ns);
    }
}

impl PciDevice for Uhci {
    fn debug_label(&self) -> String {
        "PIIX3 USB (UHCI)".to_string()
    }

    fn config(&self) -> &PciConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfigSpace {
        &mut self.config
    }
}

/// The I/O registers on a bus.
struct UhciRegisters {
    uhci: Arc<Mutex<Uhci>>,
}

impl BusDevice for UhciRegisters {
    fn debug_label(&self) -> String {
        "PIIX3 USB (UHCI) registers".to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.uhci.lock().io_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.uhci.lock().io_write(offset, data);
    }
}
