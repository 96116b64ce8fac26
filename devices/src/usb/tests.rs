//! The UHCI controller driven as a driver drives it: a frame list, QHs and
//! TDs in guest memory, port resets, control transfers that enumerate the
//! devices, interrupt transfers that carry their reports.

use std::sync::Arc;

use mmu::GuestMemory;
use persist::Persist;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::irq::RecordingIrq;
use crate::pci::config::{PCI_COMMAND, PCI_INTERRUPT_PIN, PCI_PROG_IF};

const RAM: u64 = 4 << 20;
const FRAME_LIST: u64 = 0x1_0000;
/// The interrupt QH every frame list entry points at; it links to the
/// control QH.
const QH_INT: u64 = 0x1_1000;
const QH_CTRL: u64 = 0x1_1040;
/// TDs of control transfers, 32 bytes apart.
const TDS: u64 = 0x1_2000;
/// The interrupt TD.
const INT_TD: u64 = 0x1_1800;
const SETUP_BUF: u64 = 0x1_3000;
const DATA_BUF: u64 = 0x1_4000;
const INT_BUF: u64 = 0x1_5000;

const ACTIVE: u32 = 1 << 23;
const IOC: u32 = 1 << 24;
const CERR3: u32 = 3 << 27;

fn token(pid: u32, addr: u8, ep: u8, toggle: u32, len: usize) -> u32 {
    (((len as u32).wrapping_sub(1) & 0x7ff) << 21)
        | (toggle << 19)
        | (u32::from(ep) << 15)
        | (u32::from(addr) << 8)
        | pid
}

struct Rig {
    uhci: Uhci,
    mem: Arc<GuestMemory>,
    clock: Arc<ManualClock>,
    irq: Arc<RecordingIrq>,
}

impl Rig {
    fn new(devices: Vec<UsbDeviceKind>) -> Rig {
        let mem = Arc::new(GuestMemory::new(RAM).unwrap());
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let irq = Arc::new(RecordingIrq::new());
        let mut uhci = Uhci::new(mem.clone(), irq.clone(), clock.clone(), devices).unwrap();
        uhci.write_config(PCI_COMMAND, &[(COMMAND_IO | COMMAND_MASTER) as u8, 0]);
        for i in 0..1024 {
            mem.write_u32(FRAME_LIST + 4 * i, QH_INT as u32 | 2).unwrap();
        }
        mem.write_u32(QH_INT, QH_CTRL as u32 | 2).unwrap();
        mem.write_u32(QH_INT + 4, 1).unwrap();
        mem.write_u32(QH_CTRL, 1).unwrap();
        mem.write_u32(QH_CTRL + 4, 1).unwrap();
        Rig { uhci, mem, clock, irq }
    }

    fn w16(&mut self, offset: u64, v: u16) {
        self.uhci.io_write(offset, &v.to_le_bytes());
    }

    fn r16(&mut self, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        self.uhci.io_read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Advances the clock by `frames` milliseconds and lets the timer run.
    fn run(&mut self, frames: u64) {
        self.clock.advance(frames * FRAME_NS);
        self.uhci.tick(self.clock.now_ns());
    }

    /// A driver's start: reset, frame list, interrupts on, run.
    fn start(&mut self) {
        self.w16(0x00, CMD_HCRESET);
        assert_eq!(self.r16(0x00) & CMD_HCRESET, 0, "HCRESET completes at once");
        self.uhci.io_write(0x08, &(FRAME_LIST as u32).to_le_bytes());
        self.w16(0x06, 0);
        self.w16(0x04, 0x000f);
        self.w16(0x00, CMD_RS | 0x40 | 0x80);
        assert_eq!(self.r16(0x02) & STS_HCHALTED, 0);
    }

    /// Resets port `i` (0 or 1) and enables it, as the hub driver does.
    fn reset_port(&mut self, i: u64) {
        let reg = 0x10 + 2 * i;
        self.w16(reg, PORT_PR);
        self.run(50);
        self.w16(reg, 0);
        self.w16(reg, PORT_PE);
        self.w16(reg, PORT_PE | PORT_CSC | PORT_PEC);
        let sc = self.r16(reg);
        assert_eq!(sc & (PORT_CCS | PORT_PE | PORT_CSC | PORT_PR), PORT_CCS | PORT_PE, "PORTSC {sc:#06x}");
    }

    fn write_td(&self, at: u64, words: [u32; 4]) {
        for (k, w) in words.iter().enumerate() {
            self.mem.write_u32(at + 4 * k as u64, *w).unwrap();
        }
    }

    fn td_ctrl(&self, at: u64) -> u32 {
        self.mem.read_u32(at + 4).unwrap()
    }

    /// A control transfer to `addr`: SETUP, data stage (IN of up to `in_len`
    /// bytes, or OUT of `out`), status. Returns the IN data, or the
    /// control/status word of the TD that failed.
    fn control(&mut self, addr: u8, setup: [u8; 8], out: &[u8], in_len: usize) -> Result<Vec<u8>, u32> {
        self.mem.write(SETUP_BUF, &setup).unwrap();
        self.mem.write(DATA_BUF, out).unwrap();
        let mut tds = vec![(token(PID_SETUP, addr, 0, 0, 8), SETUP_BUF as u32)];
        let mut toggle = 1;
        let data_in = setup[0] & 0x80 != 0;
        let total = if data_in { in_len } else { out.len() };
        let mut done = 0;
        while done < total {
            let n = (total - done).min(8);
            let pid = if data_in { PID_IN } else { PID_OUT };
            tds.push((token(pid, addr, 0, toggle, n), (DATA_BUF + done as u64) as u32));
            toggle ^= 1;
            done += n;
        }
        let status_pid = if data_in { PID_OUT } else { PID_IN };
        tds.push((token(status_pid, addr, 0, 1, 0), 0));
        for (i, (tok, buf)) in tds.iter().enumerate() {
            let at = TDS + 0x20 * i as u64;
            let last = i + 1 == tds.len();
            let link = if last { 1 } else { (at + 0x20) as u32 | 4 };
            let ctrl = ACTIVE | CERR3 | if last { IOC } else { 0 };
            self.write_td(at, [link, ctrl, *tok, *buf]);
        }
        self.mem.write_u32(QH_CTRL + 4, TDS as u32).unwrap();
        self.run(1);
        let mut data = Vec::new();
        for i in 0..tds.len() {
            let at = TDS + 0x20 * i as u64;
            let ctrl = self.td_ctrl(at);
            if ctrl & 0x00ff_0000 != 0 {
                // Take the queue out of the schedule.
                self.mem.write_u32(QH_CTRL + 4, 1).unwrap();
                return Err(ctrl);
            }
            let actual = ((ctrl + 1) & 0x7ff) as usize;
            if data_in && i > 0 && i + 1 < tds.len() {
                let mut b = vec![0; actual];
                self.mem.read(u64::from(tds[i].1), &mut b).unwrap();
                data.extend(b);
            }
        }
        assert_eq!(self.mem.read_u32(QH_CTRL + 4).unwrap(), 1, "the queue ran to its end");
        Ok(data)
    }

    fn get_descriptor(&mut self, addr: u8, request_type: u8, kind: u8, index: u8, len: u16) -> Result<Vec<u8>, u32> {
        let [l, h] = len.to_le_bytes();
        self.control(addr, [request_type, 0x06, index, kind, 0, 0, l, h], &[], usize::from(len))
    }

    fn set(&mut self, addr: u8, request_type: u8, request: u8, value: u16) -> Result<Vec<u8>, u32> {
        let [vl, vh] = value.to_le_bytes();
        self.control(addr, [request_type, request, vl, vh, 0, 0, 0, 0], &[], 0)
    }

    /// Enumerates the device at port `port` to address `addr` and configures it.
    fn enumerate(&mut self, port: u64, addr: u8) {
        self.reset_port(port);
        let head = self.get_descriptor(0, 0x80, 1, 0, 8).unwrap();
        assert_eq!(head, [18, 1, 0x00, 0x01, 0, 0, 0, 8]);
        self.set(0, 0x00, 0x05, u16::from(addr)).unwrap();
        self.set(addr, 0x00, 0x09, 1).unwrap();
    }

    /// Queues an interrupt IN TD for endpoint 1 of `addr`.
    fn queue_interrupt_in(&mut self, addr: u8) {
        self.mem.fill(INT_BUF, 8, 0xcc).unwrap();
        self.write_td(INT_TD, [1, ACTIVE | CERR3 | IOC, token(PID_IN, addr, 1, 0, 8), INT_BUF as u32]);
        self.mem.write_u32(QH_INT + 4, INT_TD as u32).unwrap();
    }

    /// The report the interrupt TD got, or `None` while it is active.
    fn interrupt_report(&self) -> Option<Vec<u8>> {
        let ctrl = self.td_ctrl(INT_TD);
        if ctrl & ACTIVE != 0 {
            return None;
        }
        assert_eq!(ctrl & 0x00ff_0000, 0, "interrupt TD status {ctrl:#x}");
        let mut b = vec![0; ((ctrl + 1) & 0x7ff) as usize];
        self.mem.read(INT_BUF, &mut b).unwrap();
        Some(b)
    }
}

fn tablet_rig() -> Rig {
    let mut rig = Rig::new(vec![UsbDeviceKind::Tablet]);
    rig.start();
    rig
}

#[test]
fn the_function_identifies_as_the_piix3_uhci() {
    let rig = tablet_rig();
    let c = rig.uhci.config();
    assert_eq!(c.read_dword(0), 0x7020_8086);
    assert_eq!(c.u8_at(PCI_PROG_IF), 0x00);
    assert_eq!(c.read_dword(2) >> 8, 0x0c_03_00);
    assert_eq!(c.u8_at(PCI_INTERRUPT_PIN), 4, "INTD");
    assert_eq!(c.u8_at(0x60), 0x10, "SBRN: USB 1.0");
    assert_eq!(c.u16_at(0xc0), 0x2000, "LEGSUP");
    assert_eq!(c.bar(UHCI_BAR).map(|b| b.size), Some(32));
    assert!(rig.uhci.has_tablet() && !rig.uhci.has_keyboard());
    let mem = Arc::new(GuestMemory::new(RAM).unwrap());
    let three = vec![UsbDeviceKind::Tablet; 3];
    let e = Uhci::new(mem, Arc::new(NoIrqLine), Arc::new(ManualClock::new(0)), three).unwrap_err();
    assert!(e.contains("2 ports"), "{e}");
}

#[derive(Debug)]
struct NoIrqLine;
impl IrqLine for NoIrqLine {
    fn set_level(&self, _level: bool) {}
}

#[test]
fn registers_reset_and_ports_report_the_connection() {
    let mut rig = Rig::new(vec![UsbDeviceKind::Tablet]);
    assert_eq!(rig.r16(0x02), STS_HCHALTED);
    assert_eq!(rig.r16(0x0c), 64, "SOFMOD");
    assert_eq!(rig.r16(0x10), PORT_ALWAYS1 | PORT_CCS | PORT_CSC);
    assert_eq!(rig.r16(0x12), PORT_ALWAYS1, "nothing on port 2");
    rig.w16(0x12, PORT_PE);
    assert_eq!(rig.r16(0x12) & PORT_PE, 0, "an empty port cannot be enabled");
    rig.w16(0x10, PORT_CSC);
    assert_eq!(rig.r16(0x10), PORT_ALWAYS1 | PORT_CCS, "CSC is write-1-to-clear");
    rig.uhci.io_write(0x08, &0x1234_5678u32.to_le_bytes());
    let mut b = [0u8; 4];
    rig.uhci.io_read(0x08, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x1234_5000, "FLBASEADD is 4 KiB aligned");
    rig.w16(0x04, 0xffff);
    assert_eq!(rig.r16(0x04), 0x000f);
    rig.w16(0x00, CMD_GRESET);
    assert_eq!(rig.r16(0x04), 0);
    assert_eq!(rig.r16(0x10), PORT_ALWAYS1 | PORT_CCS | PORT_CSC, "a global reset reconnects");
    let mut b = [0u8; 1];
    rig.uhci.io_read(0x1f, &mut b);
    assert_eq!(b[0], 0xff, "reserved registers float");
}

#[test]
fn a_tablet_enumerates_through_control_transfers() {
    let mut rig = tablet_rig();
    rig.reset_port(0);
    let head = rig.get_descriptor(0, 0x80, 1, 0, 8).unwrap();
    assert_eq!(head[7], 8, "bMaxPacketSize0");
    let dev = rig.get_descriptor(0, 0x80, 1, 0, 18).unwrap();
    assert_eq!(dev.len(), 18);
    assert_eq!(&dev[8..12], &[0x27, 0x06, 0x01, 0x00], "vendor 0627h product 0001h");
    rig.set(0, 0x00, 0x05, 7).unwrap();
    assert!(rig.get_descriptor(0, 0x80, 1, 0, 8).is_err(), "address 0 is gone");
    let config = rig.get_descriptor(7, 0x80, 2, 0, 9).unwrap();
    assert_eq!(config, [9, 2, 34, 0, 1, 1, 4, 0xa0, 50]);
    let config = rig.get_descriptor(7, 0x80, 2, 0, 255).unwrap();
    assert_eq!(config.len(), 34, "a longer wLength gets what there is");
    assert_eq!(&config[9..18], &[9, 4, 0, 0, 1, 3, 0, 2, 0], "HID interface, tablet protocol");
    assert_eq!(&config[18..27], &[9, 0x21, 1, 0, 0, 1, 0x22, 74, 0]);
    assert_eq!(&config[27..], &[7, 5, 0x81, 3, 8, 0, 10]);
    assert_eq!(rig.get_descriptor(7, 0x80, 3, 0, 255).unwrap(), [4, 3, 0x09, 0x04]);
    let product = rig.get_descriptor(7, 0x80, 3, 2, 255).unwrap();
    let text: Vec<u16> = product[2..].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    assert_eq!(String::from_utf16(&text).unwrap(), "QEMU USB Tablet");
    let serial = rig.get_descriptor(7, 0x80, 3, 3, 255).unwrap();
    assert_eq!(serial, [6, 3, b'4', 0, b'2', 0]);
    let report = rig.get_descriptor(7, 0x81, 0x22, 0, 74).unwrap();
    assert_eq!(report.len(), 74);
    assert_eq!(&report[..4], &[0x05, 0x01, 0x09, 0x01]);
    assert!(rig.get_descriptor(7, 0x80, 6, 0, 10).is_err(), "no device qualifier: full speed only");
    assert_eq!(rig.control(7, [0x80, 0x08, 0, 0, 0, 0, 1, 0], &[], 1).unwrap(), [0]);
    rig.set(7, 0x00, 0x09, 1).unwrap();
    assert_eq!(rig.control(7, [0x80, 0x08, 0, 0, 0, 0, 1, 0], &[], 1).unwrap(), [1]);
    assert!(rig.set(7, 0x00, 0x09, 2).is_err(), "configuration 2 does not exist");
    // GET_STATUS, remote wakeup on and off.
    assert_eq!(rig.control(7, [0x80, 0x00, 0, 0, 0, 0, 2, 0], &[], 2).unwrap(), [0, 0]);
    rig.set(7, 0x00, 0x03, 1).unwrap();
    assert_eq!(rig.control(7, [0x80, 0x00, 0, 0, 0, 0, 2, 0], &[], 2).unwrap(), [2, 0]);
    rig.set(7, 0x00, 0x01, 1).unwrap();
    assert_eq!(rig.control(7, [0x80, 0x00, 0, 0, 0, 0, 2, 0], &[], 2).unwrap(), [0, 0]);
    // A stalled request: the status word says so, USBSTS.ERROR too.
    let err = rig.control(7, [0x40, 0x77, 0, 0, 0, 0, 0, 0], &[], 0).unwrap_err();
    assert_ne!(err & TD_STALLED, 0);
    assert_ne!(rig.r16(0x02) & STS_ERROR, 0);
    // The next SETUP clears the stall.
    assert_eq!(rig.control(7, [0x80, 0x08, 0, 0, 0, 0, 1, 0], &[], 1).unwrap(), [1]);
    // A port reset takes the address back to 0.
    rig.reset_port(0);
    assert!(rig.get_descriptor(0, 0x80, 1, 0, 8).is_ok());
}

#[test]
fn the_interrupt_endpoint_naks_when_idle_and_reports_scaled_coordinates() {
    let mut rig = tablet_rig();
    rig.enumerate(0, 3);
    rig.w16(0x02, 0x1f);
    rig.queue_interrupt_in(3);
    rig.run(20);
    assert_eq!(rig.interrupt_report(), None, "NAK: the TD stays active");
    assert_eq!(rig.r16(0x02) & STS_USBINT, 0);
    assert!(!rig.irq.level());
    rig.uhci.tablet_event(640, 767, 1280, 768, 0b001, 0);
    rig.run(1);
    let x = (640u32 * 0x7fff / 1279) as u16;
    let [xl, xh] = x.to_le_bytes();
    assert_eq!(rig.interrupt_report().unwrap(), [1, xl, xh, 0xff, 0x7f, 0]);
    assert_ne!(rig.r16(0x02) & STS_USBINT, 0);
    assert!(rig.irq.level(), "IOC raised the line");
    rig.w16(0x02, STS_USBINT);
    assert!(!rig.irq.level(), "clearing USBINT lowers it");
    // A press and a release between two polls both arrive; the wheel too.
    rig.uhci.tablet_event(0, 0, 1280, 768, 0b010, 0);
    rig.uhci.tablet_event(5000, 0, 1280, 768, 0b000, -2);
    rig.queue_interrupt_in(3);
    rig.run(1);
    assert_eq!(rig.interrupt_report().unwrap(), [2, 0, 0, 0, 0, 0]);
    rig.queue_interrupt_in(3);
    rig.run(1);
    assert_eq!(rig.interrupt_report().unwrap(), [0, 0xff, 0x7f, 0, 0, 0xfe], "clamped to the screen");
    rig.queue_interrupt_in(3);
    rig.run(5);
    assert_eq!(rig.interrupt_report(), None, "nothing new");
    // GET_REPORT answers with the current state.
    let r = rig.control(3, [0xa1, 0x01, 0, 1, 0, 0, 6, 0], &[], 6).unwrap();
    assert_eq!(r, [0, 0xff, 0x7f, 0, 0, 0]);
    // An idle rate repeats the report: 1 x 4 ms.
    rig.set(3, 0x21, 0x0a, 0x0100).unwrap();
    assert_eq!(rig.control(3, [0xa1, 0x02, 0, 0, 0, 0, 1, 0], &[], 1).unwrap(), [1]);
    rig.run(4);
    assert_eq!(rig.interrupt_report().unwrap(), [0, 0xff, 0x7f, 0, 0, 0]);
    // Endpoint halt stalls the endpoint until cleared.
    rig.control(3, [0x02, 0x03, 0, 0, 0x81, 0, 0, 0], &[], 0).unwrap();
    rig.queue_interrupt_in(3);
    rig.run(1);
    assert_ne!(rig.td_ctrl(INT_TD) & TD_STALLED, 0);
    assert_eq!(rig.control(3, [0x82, 0x00, 0, 0, 0x81, 0, 2, 0], &[], 2).unwrap(), [1, 0]);
    rig.control(3, [0x02, 0x01, 0, 0, 0x81, 0, 0, 0], &[], 0).unwrap();
    assert_eq!(rig.control(3, [0x82, 0x00, 0, 0, 0x81, 0, 2, 0], &[], 2).unwrap(), [0, 0]);
}

#[test]
fn a_keyboard_reports_keys_and_takes_its_leds() {
    let mut rig = Rig::new(vec![UsbDeviceKind::Tablet, UsbDeviceKind::Keyboard]);
    rig.start();
    assert!(rig.uhci.has_keyboard());
    rig.enumerate(1, 9);
    let config = rig.get_descriptor(9, 0x80, 2, 0, 34).unwrap();
    assert_eq!(&config[9..18], &[9, 4, 0, 0, 1, 3, 1, 1, 0], "boot keyboard");
    let report = rig.get_descriptor(9, 0x81, 0x22, 0, 63).unwrap();
    assert_eq!(report.len(), 63);
    let product = rig.get_descriptor(9, 0x80, 3, 2, 255).unwrap();
    assert_eq!(product[0] as usize, 2 + 2 * "QEMU USB Keyboard".len());
    // Boot protocol, as BIOSes and boot loaders select it.
    rig.set(9, 0x21, 0x0b, 0).unwrap();
    assert_eq!(rig.control(9, [0xa1, 0x03, 0, 0, 0, 0, 1, 0], &[], 1).unwrap(), [0]);
    rig.set(9, 0x21, 0x0a, 0).unwrap();

    rig.queue_interrupt_in(9);
    rig.run(3);
    assert_eq!(rig.interrupt_report(), None);
    rig.uhci.key_event(0x2a, true); // left shift
    rig.uhci.key_event(0x1e, true); // A
    rig.run(1);
    assert_eq!(rig.interrupt_report().unwrap(), [0x02, 0, 0, 0, 0, 0, 0, 0]);
    rig.queue_interrupt_in(9);
    rig.run(1);
    assert_eq!(rig.interrupt_report().unwrap(), [0x02, 0, 0x04, 0, 0, 0, 0, 0]);
    rig.uhci.key_event(0x1e, false);
    rig.uhci.key_event(0x2a, false);
    rig.uhci.key_event(0xe048, true); // Up
    rig.uhci.key_event(0xe048, false);
    let mut reports = Vec::new();
    for _ in 0..4 {
        rig.queue_interrupt_in(9);
        rig.run(1);
        reports.push(rig.interrupt_report().unwrap());
    }
    assert_eq!(
        reports,
        [
            vec![0x02, 0, 0, 0, 0, 0, 0, 0],
            vec![0, 0, 0, 0, 0, 0, 0, 0],
            vec![0, 0, 0x52, 0, 0, 0, 0, 0],
            vec![0, 0, 0, 0, 0, 0, 0, 0],
        ]
    );
    // Seven keys at once: ErrorRollOver.
    for code in 0x10..0x17 {
        rig.uhci.key_event(code, true);
    }
    let mut last = Vec::new();
    for _ in 0..8 {
        rig.queue_interrupt_in(9);
        rig.run(1);
        match rig.interrupt_report() {
            Some(r) => last = r,
            None => break,
        }
    }
    assert_eq!(last, [0, 0, 1, 1, 1, 1, 1, 1]);
    // SET_REPORT: the LEDs (Caps Lock).
    assert_eq!(rig.uhci.keyboard_leds(), Some(0));
    rig.control(9, [0x21, 0x09, 0, 2, 0, 0, 1, 0], &[0x02], 0).unwrap();
    assert_eq!(rig.uhci.keyboard_leds(), Some(0x02));
    assert_eq!(rig.control(9, [0xa1, 0x01, 0, 2, 0, 0, 1, 0], &[], 1).unwrap(), [0x02]);
    // The tablet on port 1 stays unenumerated and unreachable.
    assert!(rig.get_descriptor(0, 0x80, 1, 0, 8).is_err(), "port 1 is not enabled");
}

#[test]
fn the_scancode_table_maps_the_usual_keys() {
    let cases = [
        (0x01, 0x29),
        (0x02, 0x1e),
        (0x0b, 0x27),
        (0x1c, 0x28),
        (0x39, 0x2c),
        (0x3b, 0x3a),
        (0x58, 0x45),
        (0x2a, 0xe1),
        (0x36, 0xe5),
        (0x1d, 0xe0),
        (0x38, 0xe2),
        (0x9e, 0x04),
        (0xe01d, 0xe4),
        (0xe038, 0xe6),
        (0xe05b, 0xe3),
        (0xe01c, 0x58),
        (0xe053, 0x4c),
        (0xe04b, 0x50),
        (0xe11d, 0x48),
        (0x00, 0),
        (0xe0ff, 0x00),
        (0x1234, 0),
    ];
    for (code, usage) in cases {
        assert_eq!(set1_to_usage(code), usage, "scancode {code:#x}");
    }
    // Every plain letter and digit maps, and no two plain codes share a usage.
    let mut seen = std::collections::HashSet::new();
    for code in 1..0x80u16 {
        let u = set1_to_usage(code);
        if u != 0 {
            assert!(seen.insert(u), "usage {u:#x} twice (code {code:#x})");
        }
    }
    assert!((0x04..=0x27).all(|u| seen.contains(&u)));
    // An unmapped scancode is ignored without a keyboard being confused.
    let mut rig = Rig::new(vec![UsbDeviceKind::Keyboard]);
    rig.uhci.key_event(0x55, true);
    rig.uhci.tablet_event(1, 1, 2, 2, 1, 0);
    assert_eq!(rig.uhci.keyboard_leds(), Some(0));
}

#[test]
fn ioc_and_short_packets_set_usbint_and_the_line_follows_usbintr() {
    let mut rig = tablet_rig();
    rig.reset_port(0);
    rig.w16(0x04, 0);
    // GET_DESCRIPTOR device: SETUP, then one IN of 64 bytes with SPD set.
    rig.mem.write(SETUP_BUF, &[0x80, 0x06, 0, 1, 0, 0, 18, 0]).unwrap();
    let setup = TDS;
    let data = TDS + 0x20;
    rig.write_td(setup, [data as u32 | 4, ACTIVE | CERR3, token(PID_SETUP, 0, 0, 0, 8), SETUP_BUF as u32]);
    rig.write_td(data, [1, ACTIVE | CERR3 | TD_SPD, token(PID_IN, 0, 0, 1, 64), DATA_BUF as u32]);
    rig.mem.write_u32(QH_CTRL + 4, setup as u32).unwrap();
    rig.run(1);
    let ctrl = rig.td_ctrl(data);
    assert_eq!(ctrl & ACTIVE, 0);
    assert_eq!(ctrl & 0x7ff, 7, "8 bytes: the first packet");
    assert_eq!(rig.mem.read_u32(QH_CTRL + 4).unwrap() & !0xf, data as u32, "the queue stops at the short TD");
    assert_ne!(rig.r16(0x02) & STS_USBINT, 0);
    assert!(!rig.irq.level(), "short packet interrupts are off");
    rig.w16(0x04, INTR_SHORT);
    assert!(rig.irq.level(), "enabling them raises the line");
    rig.w16(0x02, STS_USBINT);
    assert!(!rig.irq.level());
    // An IOC with only the IOC interrupt enabled.
    rig.w16(0x04, INTR_IOC);
    rig.write_td(data, [1, ACTIVE | CERR3 | IOC, token(PID_IN, 0, 0, 0, 8), DATA_BUF as u32]);
    rig.run(1);
    assert!(rig.irq.level());
    assert_eq!(rig.mem.read_u32(QH_CTRL + 4).unwrap(), 1, "completed: the element link advanced");
}

#[test]
fn a_timeout_counts_down_c_err() {
    let mut rig = tablet_rig();
    rig.w16(0x04, INTR_TIMEOUT_CRC);
    // Nothing answers at address 42.
    rig.write_td(TDS, [1, ACTIVE | (2 << 27), token(PID_IN, 42, 0, 0, 8), DATA_BUF as u32]);
    rig.mem.write_u32(QH_CTRL + 4, TDS as u32).unwrap();
    rig.run(1);
    let ctrl = rig.td_ctrl(TDS);
    assert_eq!(ctrl & (ACTIVE | TD_CRC_TIMEOUT | (3 << 27)), ACTIVE | TD_CRC_TIMEOUT | (1 << 27));
    assert!(!rig.irq.level());
    rig.run(1);
    let ctrl = rig.td_ctrl(TDS);
    assert_eq!(ctrl & (ACTIVE | TD_CRC_TIMEOUT | (3 << 27)), TD_CRC_TIMEOUT);
    assert_ne!(rig.r16(0x02) & STS_ERROR, 0);
    assert!(rig.irq.level(), "the error interrupt");
}

#[test]
fn a_buffer_outside_ram_is_a_host_system_error() {
    let mut rig = tablet_rig();
    rig.reset_port(0);
    rig.write_td(TDS, [1, ACTIVE | CERR3, token(PID_SETUP, 0, 0, 0, 8), 0xf000_0000]);
    rig.mem.write_u32(QH_CTRL + 4, TDS as u32).unwrap();
    rig.run(1);
    let sts = rig.r16(0x02);
    assert_eq!(sts & (STS_HSE | STS_HCHALTED), STS_HSE | STS_HCHALTED, "USBSTS {sts:#x}");
    assert_eq!(rig.r16(0x00) & CMD_RS, 0);
    let ctrl = rig.td_ctrl(TDS);
    assert_eq!(ctrl & (ACTIVE | TD_DBE), TD_DBE);
    assert!(rig.irq.level(), "HSE interrupts whatever USBINTR says");
    assert_ne!(rig.uhci.config().u16_at(PCI_STATUS) & STATUS_MASTER_ABORT, 0);
    assert_eq!(rig.uhci.next_deadline_ns(), None, "halted: no frames");
    // An IN buffer that runs past the end of RAM.
    let mut rig = tablet_rig();
    rig.reset_port(0);
    rig.write_td(TDS, [1, ACTIVE | CERR3, token(PID_IN, 0, 0, 0, 8), (RAM - 4) as u32]);
    rig.mem.write_u32(QH_CTRL + 4, TDS as u32).unwrap();
    rig.run(1);
    assert_ne!(rig.r16(0x02) & STS_HSE, 0);
}

#[test]
fn a_frame_list_outside_ram_halts_the_controller() {
    let mut rig = tablet_rig();
    rig.w16(0x00, 0);
    rig.uhci.io_write(0x08, &0x8000_0000u32.to_le_bytes());
    rig.w16(0x00, CMD_RS);
    rig.run(3);
    assert_eq!(rig.r16(0x02), STS_HSE | STS_HCHALTED);
    assert_eq!(rig.r16(0x06), 0, "the faulting frame did not end");
    // A TD or QH link outside RAM does the same.
    let mut rig = tablet_rig();
    rig.mem.write_u32(QH_CTRL + 4, 0x9000_0000).unwrap();
    rig.run(1);
    assert_ne!(rig.r16(0x02) & STS_HSE, 0);
    let mut rig = tablet_rig();
    rig.mem.write_u32(QH_CTRL, 0x9000_0002).unwrap();
    rig.run(1);
    assert_ne!(rig.r16(0x02) & STS_HSE, 0);
}

#[test]
fn bad_tds_are_process_errors() {
    for token in [0x42, token(PID_IN, 0, 0, 0, 0x600)] {
        let mut rig = tablet_rig();
        rig.write_td(TDS, [1, ACTIVE, token, DATA_BUF as u32]);
        rig.mem.write_u32(QH_CTRL + 4, TDS as u32).unwrap();
        rig.run(1);
        assert_eq!(rig.r16(0x02), STS_HCPE | STS_HCHALTED, "token {token:#x}");
        assert!(rig.irq.level());
    }
    // 7FFh is a zero-length packet, not an error.
    let mut rig = tablet_rig();
    rig.write_td(TDS, [1, ACTIVE | CERR3, token(PID_OUT, 0, 0, 0, 0), 0]);
    rig.mem.write_u32(QH_CTRL + 4, TDS as u32).unwrap();
    rig.run(1);
    assert_eq!(rig.r16(0x02) & STS_HCPE, 0);
}

#[test]
fn schedule_loops_end_every_frame() {
    let mut rig = tablet_rig();
    rig.enumerate(0, 2);
    // The control QH links to itself, with a NAKing interrupt TD in it.
    rig.mem.write_u32(QH_CTRL, QH_CTRL as u32 | 2).unwrap();
    rig.write_td(TDS, [1, ACTIVE | CERR3, token(PID_IN, 2, 1, 0, 8), DATA_BUF as u32]);
    rig.mem.write_u32(QH_CTRL + 4, TDS as u32).unwrap();
    let before = rig.r16(0x06);
    rig.run(10);
    assert_eq!(rig.r16(0x06), before + 10, "frames went on");
    assert_eq!(rig.r16(0x02) & (STS_HSE | STS_HCPE), 0);
    // Two QHs linking to each other, and TDs in a ring of inactive TDs.
    rig.mem.write_u32(QH_CTRL, QH_INT as u32 | 2).unwrap();
    rig.write_td(TDS, [(TDS + 0x20) as u32, 0, 0, 0]);
    rig.write_td(TDS + 0x20, [TDS as u32, 0, 0, 0]);
    for i in 0..1024 {
        rig.mem.write_u32(FRAME_LIST + 4 * i, if i % 2 == 0 { TDS as u32 } else { QH_INT as u32 | 2 }).unwrap();
    }
    rig.run(10);
    // A ring of active TDs that complete each time: bounded by the link cap.
    rig.uhci.tablet_event(1, 1, 2, 2, 1, 0);
    rig.write_td(TDS, [(TDS + 0x20) as u32, ACTIVE | CERR3, token(PID_SETUP, 2, 0, 0, 8), SETUP_BUF as u32]);
    rig.write_td(TDS + 0x20, [TDS as u32, ACTIVE | CERR3, token(PID_OUT, 2, 0, 0, 0), 0]);
    rig.run(2);
    assert_eq!(rig.r16(0x02) & STS_HCHALTED, 0, "still running");
}

#[test]
fn frnum_follows_the_clock() {
    let mut rig = Rig::new(vec![]);
    assert_eq!(rig.uhci.next_deadline_ns(), None, "stopped: no deadline");
    rig.clock.advance(5 * FRAME_NS);
    assert_eq!(rig.r16(0x06), 0, "stopped: FRNUM holds");
    rig.w16(0x06, 0x7fe);
    rig.uhci.io_write(0x08, &(FRAME_LIST as u32).to_le_bytes());
    rig.w16(0x00, CMD_RS);
    let start = rig.clock.now_ns();
    assert_eq!(rig.uhci.next_deadline_ns(), Some(start + FRAME_NS));
    rig.clock.advance(FRAME_NS / 2);
    assert_eq!(rig.r16(0x06), 0x7fe);
    rig.clock.advance(FRAME_NS * 3);
    assert_eq!(rig.r16(0x06), 0x001, "a guest polling FRNUM sees it move and wrap");
    rig.w16(0x06, 0x100);
    assert_eq!(rig.r16(0x06), 0x001, "FRNUM is read-only while running");
    // A long pause: a catch-up runs at most MAX_CATCHUP_FRAMES, FRNUM counts all.
    rig.clock.advance(10_000 * FRAME_NS);
    assert_eq!(rig.r16(0x06), ((10_003 + 0x7fe) & 0x7ff) as u16);
    let now = rig.clock.now_ns();
    assert!(rig.uhci.poll(now).is_some_and(|d| d > now && d <= now + IDLE_STRIDE * FRAME_NS));
    // Idle: after a while with nothing completing, deadlines stretch.
    rig.run(u64::from(IDLE_AFTER_FRAMES) + 1);
    let now = rig.clock.now_ns();
    let d = rig.uhci.next_deadline_ns().unwrap();
    assert!(d > now + FRAME_NS && d <= now + IDLE_STRIDE * FRAME_NS, "{d} vs {now}");
    rig.w16(0x04, 0);
    let d = rig.uhci.next_deadline_ns().unwrap();
    assert!(d <= now + FRAME_NS, "a register access brings every frame back");
    rig.w16(0x00, 0);
    assert_ne!(rig.r16(0x02) & STS_HCHALTED, 0);
    assert_eq!(rig.uhci.poll(now), None);
}

#[test]
fn remote_wakeup_resumes_a_suspended_bus() {
    let mut rig = tablet_rig();
    rig.enumerate(0, 4);
    rig.set(4, 0x00, 0x03, 1).unwrap();
    rig.w16(0x02, 0x1f);
    // Global suspend: RS off, EGSM on, resume interrupts enabled.
    rig.w16(0x00, CMD_EGSM);
    rig.w16(0x04, INTR_RESUME);
    assert!(!rig.irq.level());
    rig.uhci.tablet_event(10, 10, 100, 100, 0, 0);
    assert_ne!(rig.r16(0x02) & STS_RD, 0);
    assert_ne!(rig.r16(0x00) & CMD_FGR, 0);
    assert!(rig.irq.level());
}

#[test]
fn a_state_saved_mid_enumeration_restores_and_goes_on() {
    let mut rig = tablet_rig();
    rig.reset_port(0);
    rig.set(0, 0x00, 0x05, 5).unwrap();
    // The SETUP of GET_DESCRIPTOR(configuration) only: the data stage pends.
    rig.mem.write(SETUP_BUF, &[0x80, 0x06, 0, 2, 0, 0, 34, 0]).unwrap();
    rig.write_td(TDS, [1, ACTIVE | CERR3, token(PID_SETUP, 5, 0, 0, 8), SETUP_BUF as u32]);
    rig.mem.write_u32(QH_CTRL + 4, TDS as u32).unwrap();
    rig.uhci.tablet_event(3, 4, 10, 10, 1, 0);
    rig.run(1);
    let state = rig.uhci.save();
    assert!(matches!(state.ports[0].device.as_ref().unwrap().control, ControlStage::DataIn { .. }));

    let mut fresh = Rig::new(vec![UsbDeviceKind::Tablet]);
    fresh.clock.resume_at(rig.clock.now_ns());
    let saved = persist::assert_round_trip(&rig.uhci, &mut fresh.uhci);
    assert_eq!(saved, state);
    // The data stage and status on the restored controller.
    let mut got = Vec::new();
    for i in 0..5u64 {
        let n = if i < 4 { 8 } else { 2 };
        let toggle = (i as u32 + 1) & 1;
        fresh.write_td(TDS, [1, ACTIVE | CERR3, token(PID_IN, 5, 0, toggle, n), DATA_BUF as u32]);
        fresh.mem.write_u32(QH_CTRL + 4, TDS as u32).unwrap();
        fresh.run(1);
        let ctrl = fresh.td_ctrl(TDS);
        assert_eq!(ctrl & 0x00ff_0000, 0);
        let mut b = vec![0; ((ctrl + 1) & 0x7ff) as usize];
        fresh.mem.read(DATA_BUF, &mut b).unwrap();
        got.extend(b);
    }
    assert_eq!(got.len(), 34);
    assert_eq!(&got[..4], &[9, 2, 34, 0]);
    fresh.write_td(TDS, [1, ACTIVE | CERR3, token(PID_OUT, 5, 0, 1, 0), 0]);
    fresh.mem.write_u32(QH_CTRL + 4, TDS as u32).unwrap();
    fresh.run(1);
    assert_eq!(fresh.td_ctrl(TDS) & 0x00ff_0000, 0);
    // The queued tablet report came along.
    fresh.set(5, 0x00, 0x09, 1).unwrap();
    fresh.queue_interrupt_in(5);
    fresh.run(1);
    let x = (3u32 * 0x7fff / 9) as u16;
    let y = (4u32 * 0x7fff / 9) as u16;
    assert_eq!(fresh.interrupt_report().unwrap(), [1, x as u8, (x >> 8) as u8, y as u8, (y >> 8) as u8, 0]);
    // The interrupt line is driven on restore.
    rig.w16(0x04, INTR_IOC);
    rig.uhci.regs.causes = CAUSE_IOC;
    rig.uhci.regs.status |= STS_USBINT;
    let mut third = Rig::new(vec![UsbDeviceKind::Tablet]);
    third.uhci.restore(&rig.uhci.save()).unwrap();
    assert!(third.irq.level());
}

#[test]
fn corrupt_states_are_refused() {
    let mut rig = tablet_rig();
    rig.enumerate(0, 5);
    rig.uhci.tablet_event(3, 4, 10, 10, 1, 0);
    let good = rig.uhci.save();
    let mut target = Rig::new(vec![UsbDeviceKind::Tablet]);
    target.uhci.restore(&good).unwrap();
    type Corrupt = fn(&mut UhciState);
    let cases: [(Corrupt, &str); 17] = [
        (|s| s.cmd = 0x0102, "cmd"),
        (|s| s.status = 0x20, "status"),
        (
            |s| {
                s.causes = 1;
                s.status = 0;
            },
            "causes",
        ),
        (|s| s.intr = 0x10, "intr"),
        (|s| s.frnum = 0x800, "frnum"),
        (|s| s.flbase = 0x1234, "flbase"),
        (|s| s.sofmod = 0x80, "sofmod"),
        (|s| s.frame_start_ns = u64::MAX, "frame_start_ns"),
        (|s| s.ports.truncate(1), "ports"),
        (|s| s.ports[0].portsc = 0x8000, "ports"),
        (|s| s.ports[1].portsc = PORT_PE, "ports"),
        (|s| s.ports[0].device = None, "ports"),
        (|s| s.ports[0].device.as_mut().unwrap().kind = UsbDeviceKind::Keyboard, "devices"),
        (|s| s.ports[0].device.as_mut().unwrap().address = 200, "devices"),
        (|s| s.ports[0].device.as_mut().unwrap().queue.push(vec![0; 3]), "queue"),
        (
            |s| {
                s.ports[0].device.as_mut().unwrap().control = ControlStage::DataIn { data: vec![1, 2], pos: 3 };
            },
            "control",
        ),
        (|s| s.config.bytes[2] = 0x10, "bytes"),
    ];
    for (corrupt, field) in cases {
        let mut bad = good.clone();
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut target.uhci, &bad);
        assert_eq!(e.field, field, "{e}");
    }
    // A state with a device where the machine has none.
    let mut empty = Rig::new(vec![]);
    let e = persist::assert_refused(&mut empty.uhci, &good);
    assert_eq!(e.field, "devices", "{e}");
    let mut keyboard = Rig::new(vec![UsbDeviceKind::Keyboard]);
    let e = persist::assert_refused(&mut keyboard.uhci, &good);
    assert_eq!(e.field, "devices", "{e}");
}

#[test]
fn reset_returns_to_power_on() {
    let mut rig = tablet_rig();
    rig.enumerate(0, 5);
    rig.uhci.reset();
    assert_eq!(rig.r16(0x00), 0);
    assert_eq!(rig.r16(0x02), STS_HCHALTED);
    rig.start();
    rig.reset_port(0);
    assert!(rig.get_descriptor(0, 0x80, 1, 0, 8).is_ok(), "the device is back at address 0");
    let fresh = Rig::new(vec![UsbDeviceKind::Tablet]);
    assert_eq!(fresh.uhci.config().u16_at(0xc0), 0x2000);
}

#[test]
fn bar_devices_reach_the_registers() {
    let rig = tablet_rig();
    let shared = Arc::new(parking_lot::Mutex::new(rig.uhci));
    let bars = Uhci::bar_devices(&shared);
    assert_eq!(bars.len(), 1);
    assert_eq!(bars[0].0, UHCI_BAR);
    let mut b = [0u8; 2];
    bars[0].1.lock().read(0x10, &mut b);
    assert_eq!(u16::from_le_bytes(b) & PORT_CCS, PORT_CCS);
    bars[0].1.lock().write(0x00, &0u16.to_le_bytes());
    assert_ne!(shared.lock().r16_for_test(0x02) & STS_HCHALTED, 0);
    assert!(bars[0].1.lock().debug_label().contains("UHCI"));
}

impl Uhci {
    fn r16_for_test(&mut self, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        self.io_read(offset, &mut b);
        u16::from_le_bytes(b)
    }
}

#[test]
fn a_pseudo_random_storm_never_panics() {
    let seeds: [&[u8]; 3] = [
        &[5, 0x10, 0x00, 5, 0x10, 0x00, 6, 0, 1, 0, 1, 0, 1, 0, 0],
        &[0, 0x00, 0x02, 0, 0, 0, 1, 5, 0xff, 0xff, 4, 3, 0xff, 0xff, 0xff, 0xff],
        &[3, 0x00, 0x10, 0x01, 0x00, 8, 1, 2, 3, 4, 5, 6, 7, 8, 5, 0x20, 0x00, 7, 0xff, 0, 0],
    ];
    for input in crate::fuzz::pseudo_random_inputs(0x05b_0001, 1000, 600, &seeds) {
        fuzz_uhci(&input);
    }
}

#[test]
fn the_machine_polls_it_as_a_timer_and_a_pci_function() {
    let rig = tablet_rig();
    let clock = rig.clock.clone();
    let shared = Arc::new(parking_lot::Mutex::new(rig.uhci));
    let pci: crate::pci::SharedPciDevice = shared.clone();
    assert_eq!(pci.lock().debug_label(), "PIIX3 USB (UHCI)");
    let mut timers = crate::clock::Timers::new();
    timers.add(shared.clone());
    let now = clock.now_ns();
    let deadline = timers.poll(now).unwrap();
    assert_eq!(deadline, now + FRAME_NS);
    clock.advance(FRAME_NS);
    let next = timers.poll(clock.now_ns()).unwrap();
    assert_eq!(next, deadline + FRAME_NS);
    assert_eq!(shared.lock().r16_for_test(0x06), 1);
    shared.lock().io_write(0, &[0, 0]);
    assert_eq!(timers.poll(clock.now_ns()), None, "stopped: nothing to poll");
}

#[test]
fn a_first_descriptor_read_of_64_bytes_ends_short_and_resumes_at_the_status_stage() {
    // GET_DESCRIPTOR(device, 64) with a 64-byte maximum packet, as a host
    // asks before it knows bMaxPacketSize0: the device sends 8, the queue
    // stops at the short TD, the driver points the QH at the status TD.
    let mut rig = tablet_rig();
    rig.reset_port(0);
    rig.mem.write(SETUP_BUF, &[0x80, 0x06, 0, 1, 0, 0, 64, 0]).unwrap();
    let (setup, data, status) = (TDS, TDS + 0x20, TDS + 0x40);
    rig.write_td(setup, [data as u32 | 4, ACTIVE | CERR3, token(PID_SETUP, 0, 0, 0, 8), SETUP_BUF as u32]);
    rig.write_td(data, [status as u32 | 4, ACTIVE | CERR3 | TD_SPD, token(PID_IN, 0, 0, 1, 64), DATA_BUF as u32]);
    rig.write_td(status, [1, ACTIVE | CERR3 | IOC, token(PID_OUT, 0, 0, 1, 0), 0]);
    rig.mem.write_u32(QH_CTRL + 4, setup as u32).unwrap();
    rig.run(1);
    assert_eq!(rig.td_ctrl(data) & (ACTIVE | 0x7ff), 7, "8 bytes, retired");
    assert_ne!(rig.td_ctrl(status) & ACTIVE, 0, "the status stage waits");
    let mut head = [0u8; 8];
    rig.mem.read(DATA_BUF, &mut head).unwrap();
    assert_eq!(head, [18, 1, 0x00, 0x01, 0, 0, 0, 8]);
    rig.mem.write_u32(QH_CTRL + 4, status as u32).unwrap();
    rig.run(1);
    assert_eq!(rig.td_ctrl(status) & 0x00ff_0000, 0);
    assert_eq!(rig.mem.read_u32(QH_CTRL + 4).unwrap(), 1);
    // The device is idle again and takes the next request.
    rig.set(0, 0x00, 0x05, 1).unwrap();
    assert_eq!(rig.get_descriptor(1, 0x80, 1, 0, 18).unwrap().len(), 18);
}

#[test]
fn a_frame_carries_a_frames_worth_of_data() {
    let mut rig = tablet_rig();
    rig.reset_port(0);
    // Three horizontal OUT TDs of 1023 bytes to the control endpoint (each
    // stalls: no request is open); the frame ends after the second.
    let tds = [TDS, TDS + 0x20, TDS + 0x40];
    for (i, &at) in tds.iter().enumerate() {
        let link = tds.get(i + 1).map_or(1, |&n| n as u32);
        rig.write_td(at, [link, ACTIVE | CERR3, token(PID_OUT, 0, 0, 0, 1023), DATA_BUF as u32]);
    }
    rig.mem.write_u32(QH_INT, TDS as u32).unwrap();
    rig.run(1);
    let active: Vec<bool> = tds.iter().map(|&at| rig.td_ctrl(at) & ACTIVE != 0).collect();
    assert_eq!(active, [false, false, true]);
    rig.run(1);
    assert_eq!(rig.td_ctrl(tds[2]) & ACTIVE, 0, "the next frame runs it");
}

#[test]
fn a_mouse_enumerates_with_qemus_descriptors() {
    let mut rig = Rig::new(vec![UsbDeviceKind::Mouse]);
    rig.start();
    assert!(rig.uhci.has_mouse() && !rig.uhci.has_tablet() && !rig.uhci.has_keyboard());
    rig.reset_port(0);
    let dev = rig.get_descriptor(0, 0x80, 1, 0, 18).unwrap();
    assert_eq!(&dev[7..12], &[8, 0x27, 0x06, 0x01, 0x00], "ep0 8 bytes, vendor 0627h product 0001h");
    rig.set(0, 0x00, 0x05, 4).unwrap();
    let config = rig.get_descriptor(4, 0x80, 2, 0, 255).unwrap();
    assert_eq!(config.len(), 34);
    assert_eq!(&config[..9], &[9, 2, 34, 0, 1, 1, 4, 0xa0, 50]);
    assert_eq!(&config[9..18], &[9, 4, 0, 0, 1, 3, 1, 2, 0], "HID interface, boot mouse");
    assert_eq!(&config[18..27], &[9, 0x21, 1, 0, 0, 1, 0x22, 52, 0], "HID 1.00, a 52-byte report descriptor");
    assert_eq!(&config[27..], &[7, 5, 0x81, 3, 4, 0, 10], "interrupt IN, 4 bytes, 10 ms");
    let hid = rig.get_descriptor(4, 0x81, 0x21, 0, 9).unwrap();
    assert_eq!(hid, &config[18..27]);
    let string = |rig: &mut Rig, i: u8| {
        let d = rig.get_descriptor(4, 0x80, 3, i, 255).unwrap();
        assert_eq!(usize::from(d[0]), d.len());
        let text: Vec<u16> = d[2..].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        String::from_utf16(&text).unwrap()
    };
    assert_eq!(string(&mut rig, 1), "QEMU");
    assert_eq!(string(&mut rig, 2), "QEMU USB Mouse");
    assert_eq!(string(&mut rig, 3), "42");
    assert_eq!(string(&mut rig, 4), "HID Mouse");
    let report = rig.get_descriptor(4, 0x81, 0x22, 0, 255).unwrap();
    assert_eq!(report.len(), 52);
    assert_eq!(&report[..4], &[0x05, 0x01, 0x09, 0x02], "Generic Desktop, Mouse");
    assert!(report.windows(2).any(|w| w == [0x29, 0x05]), "5 buttons");
    assert_eq!(
        &report[40..],
        &[0x15, 0x81, 0x25, 0x7f, 0x75, 0x08, 0x95, 0x03, 0x81, 0x06, 0xc0, 0xc0],
        "X, Y, wheel: 3 relative bytes"
    );
    rig.set(4, 0x00, 0x09, 1).unwrap();
    // Boot protocol, as a BIOS selects it: the same 4-byte report.
    rig.set(4, 0x21, 0x0b, 0).unwrap();
    assert_eq!(rig.control(4, [0xa1, 0x03, 0, 0, 0, 0, 1, 0], &[], 1).unwrap(), [0]);
    assert_eq!(rig.control(4, [0xa1, 0x01, 0, 1, 0, 0, 4, 0], &[], 4).unwrap(), [0, 0, 0, 0]);
}

#[test]
fn a_mouse_reports_relative_motion_split_and_coalesced() {
    let mut rig = Rig::new(vec![UsbDeviceKind::Mouse]);
    rig.start();
    rig.enumerate(0, 5);
    rig.queue_interrupt_in(5);
    rig.run(10);
    assert_eq!(rig.interrupt_report(), None, "NAK while the mouse is still");
    // Two moves between polls add up.
    rig.uhci.mouse_event(3, -4, 0, 0);
    rig.uhci.mouse_event(10, 1, 0, 0);
    rig.run(1);
    assert_eq!(rig.interrupt_report().unwrap(), [0, 13, 0xfd, 0]);
    // A long move goes out in reports of at most 127 counts.
    rig.uhci.mouse_event(300, -200, 0, 0);
    let mut reports = Vec::new();
    for _ in 0..4 {
        rig.queue_interrupt_in(5);
        rig.run(1);
        if let Some(r) = rig.interrupt_report() {
            reports.push(r);
        }
    }
    assert_eq!(reports, [vec![0, 127, 0x81, 0], vec![0, 127, 0xb7, 0], vec![0, 46, 0, 0]]);
    // A press, motion while held, a release and a wheel notch: each
    // change of buttons is a report of its own.
    rig.uhci.mouse_event(0, 0, 0, 0b001);
    rig.uhci.mouse_event(-5, 2, 0, 0b001);
    rig.uhci.mouse_event(0, 0, 0, 0);
    rig.uhci.mouse_event(0, 0, 1, 0);
    let mut reports = Vec::new();
    for _ in 0..4 {
        rig.queue_interrupt_in(5);
        rig.run(1);
        if let Some(r) = rig.interrupt_report() {
            reports.push(r);
        }
    }
    assert_eq!(reports, [vec![1, 0xfb, 2, 0], vec![0, 0, 0, 1]]);
    // GET_REPORT: the buttons now, no motion.
    rig.uhci.mouse_event(0, 0, 0, 0b100);
    assert_eq!(rig.control(5, [0xa1, 0x01, 0, 1, 0, 0, 4, 0], &[], 4).unwrap(), [4, 0, 0, 0]);
    // The interrupt TD still queued took the press in the same frame.
    assert_eq!(rig.interrupt_report().unwrap(), [4, 0, 0, 0]);
    // Tablet and keyboard input does not reach a mouse, nor the mouse's
    // the others.
    rig.uhci.tablet_event(1, 1, 10, 10, 1, 0);
    rig.uhci.key_event(0x1e, true);
    rig.queue_interrupt_in(5);
    rig.run(3);
    assert_eq!(rig.interrupt_report(), None);
    let mut tablet = tablet_rig();
    tablet.enumerate(0, 2);
    tablet.uhci.mouse_event(5, 5, 0, 1);
    tablet.queue_interrupt_in(2);
    tablet.run(3);
    assert_eq!(tablet.interrupt_report(), None, "a tablet ignores relative motion");
}

#[test]
fn a_mouse_flooded_with_motion_keeps_its_queue_bounded_and_its_buttons() {
    let mut rig = Rig::new(vec![UsbDeviceKind::Mouse]);
    rig.start();
    rig.enumerate(0, 6);
    rig.uhci.mouse_event(i32::MAX, i32::MIN, i32::MAX, 0);
    rig.uhci.mouse_event(i32::MIN, 7, 0, 0b10);
    let mut n = 0;
    let mut last = Vec::new();
    loop {
        rig.queue_interrupt_in(6);
        rig.run(1);
        match rig.interrupt_report() {
            Some(r) => {
                n += 1;
                last = r;
            }
            None => break,
        }
        assert!(n <= hid::MAX_QUEUED, "at most {} reports queue", hid::MAX_QUEUED);
    }
    assert_eq!(n, hid::MAX_QUEUED);
    assert_eq!(last[0], 0b10, "the press got through a full queue");
    // The saved state restores into a mouse and is refused by a tablet.
    let state = rig.uhci.save();
    let mut other = Rig::new(vec![UsbDeviceKind::Mouse]);
    other.uhci.restore(&state).unwrap();
    let mut tablet = Rig::new(vec![UsbDeviceKind::Tablet]);
    assert!(tablet.uhci.restore(&state).is_err());
    let mut bad = state.clone();
    bad.ports[0].device.as_mut().unwrap().current = vec![0, 1, 0, 0];
    assert!(other.uhci.restore(&bad).is_err(), "motion in the current report");
}
