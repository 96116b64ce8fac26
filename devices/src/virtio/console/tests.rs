use std::collections::HashMap;
use std::sync::Arc;

use mmu::GuestMemory;

use super::*;
use crate::irq::RecordingIrq;
use crate::pci::config::PCI_COMMAND;
use crate::pci::PciDevice;
use crate::virtio::pci::MODERN_BAR;
use crate::virtio::queue::testing::DriverRing;
use crate::virtio::queue::VIRTQ_DESC_F_WRITE;
use crate::virtio::{
    Queue, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};

/// Where the rings start, and the room each takes (16 entries).
const RING_BASE: u64 = 0x10000;
const RING_STRIDE: u64 = 0x4000;
/// Control receive buffers (0x100 bytes each), in turn.
const CTRL_RX_BUF: u64 = 0x200000;
/// Control messages the driver sends (0x10 bytes each), in turn.
const CTRL_TX_BUF: u64 = 0x210000;
/// Guest output.
const TX_BUF: u64 = 0x220000;
/// Receive buffers.
const RX_BUF: u64 = 0x300000;
/// A byte the device never writes: marks memory it must leave alone.
const UNTOUCHED: u8 = 0xee;
/// The name of the tests' serial port.
const AGENT: &str = "org.qemu.guest_agent.0";

struct Rig {
    dev: VirtioConsolePci,
    mem: Arc<GuestMemory>,
    irq: Arc<RecordingIrq>,
    rings: Vec<DriverRing>,
    backends: Vec<MemoryBackend>,
    /// Control receive buffers posted: head to address.
    ctrl_bufs: HashMap<u16, u64>,
    ctrl_rx_next: u64,
    ctrl_tx_next: u64,
}

fn w(dev: &mut VirtioConsolePci, off: u64, v: u64, len: usize) {
    dev.bar_write(MODERN_BAR, off, &v.to_le_bytes()[..len]);
}

/// A console (port 0) and a serial port named [`AGENT`] (port 1).
fn two_ports() -> Vec<PortConfig> {
    vec![PortConfig::console(), PortConfig::serial(AGENT)]
}

/// A device over in-memory backends, with every feature it offers.
fn rig(ports: Vec<PortConfig>) -> Rig {
    rig_with(ports, None, None)
}

/// A device with `ports` over in-memory backends and `size` if given,
/// brought up with `features` (every feature offered when `None`), every
/// queue enabled with 16 entries, DRIVER_OK set.
fn rig_with(ports: Vec<PortConfig>, features: Option<u64>, size: Option<(u16, u16)>) -> Rig {
    let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
    mem.fill(RX_BUF, 0x80000, UNTOUCHED).unwrap();
    let backends: Vec<MemoryBackend> = ports.iter().map(|_| MemoryBackend::new()).collect();
    let list = ports.into_iter().zip(&backends).map(|(c, b)| (c, Box::new(b.clone()) as Box<dyn PortBackend>));
    let mut console = VirtioConsole::new(list.collect(), IoKick::none()).unwrap();
    if let Some((cols, rows)) = size {
        console = console.with_size(cols, rows);
    }
    let irq = Arc::new(RecordingIrq::new());
    let mut dev = VirtioPci::new(console, mem.clone(), irq.clone());
    dev.write_config(PCI_COMMAND, &[0x06, 0]);
    let rings = set_up(&mut dev, &mem, features);
    let mut r = Rig { dev, mem, irq, rings, backends, ctrl_bufs: HashMap::new(), ctrl_rx_next: 0, ctrl_tx_next: 0 };
    r.driver_ok();
    r
}

/// Negotiates `features` (every one offered when `None`) and enables
/// every queue, up to FEATURES_OK.
fn set_up(dev: &mut VirtioConsolePci, mem: &GuestMemory, features: Option<u64>) -> Vec<DriverRing> {
    let features = features.unwrap_or_else(|| dev.device().features());
    crate::virtio::pci::testing::negotiate(dev, features);
    let queues = dev.device().queue_max_sizes().len();
    (0..queues)
        .map(|q| crate::virtio::pci::testing::enable_queue(dev, mem, q as u16, RING_BASE + q as u64 * RING_STRIDE))
        .collect()
}

/// A message as the driver receives it: header and payload.
type Received = (ControlMessage, Vec<u8>);

fn msg(id: u32, event: u16, value: u16) -> ControlMessage {
    ControlMessage { id, event, value }
}

fn plain(id: u32, event: u16, value: u16) -> Received {
    (msg(id, event, value), Vec::new())
}

impl Rig {
    fn driver_ok(&mut self) {
        let all = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        w(&mut self.dev, 0x14, u64::from(all), 1);
    }

    fn notify(&mut self, q: usize) {
        w(&mut self.dev, 0x3000 + 4 * q as u64, q as u64, 2);
    }

    fn poll(&mut self) {
        assert_eq!(self.dev.poll(Instant::now()), None);
    }

    fn needs_reset(&self) -> bool {
        self.dev.status() & STATUS_DEVICE_NEEDS_RESET != 0
    }

    fn stats(&self) -> ConsoleStats {
        self.dev.device().stats()
    }

    fn port_stats(&self, port: usize) -> PortStats {
        self.dev.device().port_stats(port).unwrap()
    }

    /// Posts `n` control receive buffers of 0x100 bytes.
    fn post_control_buffers(&mut self, n: usize) {
        for _ in 0..n {
            let addr = CTRL_RX_BUF + (self.ctrl_rx_next % 16) * 0x100;
            self.ctrl_rx_next += 1;
            let head = self.rings[CONTROL_RX_QUEUE].add_chain(&self.mem, &[(addr, 0x100, true)]);
            self.ctrl_bufs.insert(head, addr);
        }
        self.notify(CONTROL_RX_QUEUE);
    }

    /// The driver sends `bytes` as one control message.
    fn send_control_bytes(&mut self, bytes: &[u8]) {
        let addr = CTRL_TX_BUF + (self.ctrl_tx_next % 16) * 0x10;
        self.ctrl_tx_next += 1;
        self.mem.write(addr, bytes).unwrap();
        self.rings[CONTROL_TX_QUEUE].add_chain(&self.mem, &[(addr, bytes.len() as u32, false)]);
        self.notify(CONTROL_TX_QUEUE);
    }

    fn send_control(&mut self, id: u32, event: u16, value: u16) {
        self.send_control_bytes(&msg(id, event, value).to_bytes());
    }

    /// The control messages the device returned since the last call.
    fn take_control(&mut self) -> Vec<Received> {
        let used = self.rings[CONTROL_RX_QUEUE].take_used(&self.mem);
        used.into_iter()
            .map(|(head, len)| {
                let addr = self.ctrl_bufs[&(head as u16)];
                let mut bytes = vec![0; len as usize];
                self.mem.read(addr, &mut bytes).unwrap();
                let m = ControlMessage::parse(&bytes).expect("a whole header");
                (m, bytes[8..].to_vec())
            })
            .collect()
    }

    /// The Linux handshake with 12 control buffers (see [`Rig::handshake_with`]).
    fn handshake(&mut self) -> Vec<Received> {
        self.handshake_with(12)
    }

    /// The Linux handshake: `buffers` control buffers, DEVICE_READY,
    /// PORT_READY for each port, PORT_OPEN for the consoles. Returns what
    /// the device sent.
    fn handshake_with(&mut self, buffers: usize) -> Vec<Received> {
        self.post_control_buffers(buffers);
        self.send_control(u32::MAX, VIRTIO_CONSOLE_DEVICE_READY, 1);
        for i in 0..self.backends.len() as u32 {
            self.send_control(i, VIRTIO_CONSOLE_PORT_READY, 1);
        }
        for i in 0..self.backends.len() {
            if self.dev.device().port_config(i).unwrap().kind == PortKind::Console {
                self.send_control(i as u32, VIRTIO_CONSOLE_PORT_OPEN, 1);
            }
        }
        self.take_control()
    }

    /// The guest writes `parts` (one descriptor each) on port `port`.
    fn write(&mut self, port: usize, parts: &[&[u8]]) -> Vec<(u32, u32)> {
        let mut bufs = Vec::new();
        let mut at = TX_BUF;
        for p in parts {
            self.mem.write(at, p).unwrap();
            bufs.push((at, p.len() as u32, false));
            at += 0x1000;
        }
        self.chain(transmit_queue(port), &bufs)
    }

    /// Posts a chain of (addr, len, writable) on queue `q`, notifies, and
    /// returns the used elements.
    fn chain(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> Vec<(u32, u32)> {
        self.rings[q].add_chain(&self.mem, bufs);
        self.notify(q);
        self.rings[q].take_used(&self.mem)
    }

    /// Posts one receive chain per length on port `port`, at RX_BUF +
    /// 0x1000 * (first + i); returns their heads.
    fn post_receive(&mut self, port: usize, first: u64, lens: &[u32]) -> Vec<u16> {
        let q = receive_queue(port);
        let heads = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| self.rings[q].add_chain(&self.mem, &[(rx(first + i as u64), len, true)]));
        let heads = heads.collect();
        self.notify(q);
        heads
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read(addr, &mut v).unwrap();
        v
    }
}

/// Receive buffer `i`.
fn rx(i: u64) -> u64 {
    RX_BUF + 0x1000 * i
}

#[test]
fn identity_queues_features_and_configuration() {
    let r = rig(two_ports());
    // Red Hat's vendor ID with the console's transitional ID (1003h, as
    // QEMU's virtio-serial-pci), the device type in the subsystem ID.
    assert_eq!(r.dev.config().read_dword(0), 0x1003_1af4);
    assert_eq!(r.dev.config().read_dword(11), 0x0003_1af4);
    assert_eq!(r.dev.config().read_dword(2) >> 8, 0x07_80_00, "class: communication, other (as QEMU)");
    let d = r.dev.device();
    assert_eq!(d.device_type(), VIRTIO_ID_CONSOLE);
    assert_eq!(d.queue_max_sizes(), vec![128, 128, 32, 32, 128, 128]);
    let want = VIRTIO_CONSOLE_F_MULTIPORT
        | VIRTIO_CONSOLE_F_EMERG_WRITE
        | VIRTIO_F_VERSION_1
        | VIRTIO_F_EVENT_IDX
        | VIRTIO_F_INDIRECT_DESC;
    assert_eq!(d.features(), want, "no SIZE without a size");
    assert_eq!(r.dev.driver_features(), want);
    let mut cfg = [0xffu8; 12];
    d.read_config(0, &mut cfg);
    assert_eq!(cfg, [0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0], "max_nr_ports 2");
    let mut past = [0xffu8; 4];
    d.read_config(usize::MAX, &mut past);
    assert_eq!(past, [0; 4]);
    // Through the BAR: the device configuration at 0x2000.
    let mut ports = [0u8; 4];
    let mut dev = r.dev;
    dev.bar_read(MODERN_BAR, 0x2004, &mut ports);
    assert_eq!(u32::from_le_bytes(ports), 2);
    assert!(dev.device().debug_label().starts_with("virtio-serial"));

    // The queue numbering of 5.3.2.
    assert_eq!((receive_queue(0), transmit_queue(0)), (0, 1));
    assert_eq!((receive_queue(1), transmit_queue(1)), (4, 5));
    assert_eq!((receive_queue(30), transmit_queue(30)), (62, 63));
    assert_eq!(role(2, 2), Some(Role::ControlReceive));
    assert_eq!(role(3, 2), Some(Role::ControlTransmit));
    assert_eq!(role(5, 2), Some(Role::Transmit(1)));
    assert_eq!(role(6, 2), None);
}

#[test]
fn a_size_is_offered_and_changed_by_the_host() {
    let r = rig_with(vec![PortConfig::console()], None, Some((80, 25)));
    let mut dev = r.dev;
    assert_ne!(dev.device().features() & VIRTIO_CONSOLE_F_SIZE, 0);
    let mut cfg = [0u8; 8];
    dev.device().read_config(0, &mut cfg);
    assert_eq!(cfg, [80, 0, 25, 0, 1, 0, 0, 0]);
    dev.device_mut().set_size(132, 43);
    dev.config_changed();
    assert_eq!(dev.device().size(), Some((132, 43)));
    dev.device().read_config(0, &mut cfg);
    assert_eq!(&cfg[..4], &[132, 0, 43, 0]);
    // Without a size, nothing to change.
    let mut plain = rig(vec![PortConfig::console()]).dev;
    plain.device_mut().set_size(132, 43);
    assert_eq!(plain.device().size(), None);
    plain.device().read_config(0, &mut cfg);
    assert_eq!(&cfg[..4], &[0; 4]);
}

#[test]
fn the_handshake_announces_each_port_its_kind_name_and_host_side() {
    let mut r = rig(two_ports());
    r.post_control_buffers(12);
    // The driver's DEVICE_READY carries no port (Linux sends id ~0).
    r.send_control(u32::MAX, VIRTIO_CONSOLE_DEVICE_READY, 1);
    assert_eq!(r.take_control(), vec![plain(0, VIRTIO_CONSOLE_DEVICE_ADD, 1), plain(1, VIRTIO_CONSOLE_DEVICE_ADD, 1)]);
    // The console port: CONSOLE_PORT, then the host side is open.
    r.send_control(0, VIRTIO_CONSOLE_PORT_READY, 1);
    assert_eq!(r.take_control(), vec![plain(0, VIRTIO_CONSOLE_CONSOLE_PORT, 1), plain(0, VIRTIO_CONSOLE_PORT_OPEN, 1)]);
    assert!(r.dev.device().port_ready(0));
    // The named port: its name in the same buffer, without a NUL.
    r.send_control(1, VIRTIO_CONSOLE_PORT_READY, 1);
    assert_eq!(
        r.take_control(),
        vec![(msg(1, VIRTIO_CONSOLE_PORT_NAME, 1), AGENT.as_bytes().to_vec()), plain(1, VIRTIO_CONSOLE_PORT_OPEN, 1)]
    );
    // The guest opens and closes ports.
    assert!(!r.dev.device().guest_open(1));
    r.send_control(1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    assert!(r.dev.device().guest_open(1));
    assert!(!r.dev.device().guest_open(0));
    r.send_control(0, VIRTIO_CONSOLE_PORT_OPEN, 1);
    assert!(r.dev.device().guest_open(0));
    r.send_control(1, VIRTIO_CONSOLE_PORT_OPEN, 0);
    assert!(!r.dev.device().guest_open(1));
    assert!(r.take_control().is_empty(), "the guest's opens need no answer");
    // The host side of port 1 goes away and comes back.
    r.backends[1].set_connected(false);
    r.poll();
    assert_eq!(r.take_control(), vec![plain(1, VIRTIO_CONSOLE_PORT_OPEN, 0)]);
    r.poll();
    assert!(r.take_control().is_empty(), "told once");
    r.backends[1].set_connected(true);
    r.poll();
    assert_eq!(r.take_control(), vec![plain(1, VIRTIO_CONSOLE_PORT_OPEN, 1)]);
    // A second DEVICE_READY adds no port twice (5.3.6.2.1).
    r.send_control(u32::MAX, VIRTIO_CONSOLE_DEVICE_READY, 1);
    assert!(r.take_control().is_empty());
    let s = r.stats();
    assert_eq!((s.control_rx, s.control_tx, s.control_refused), (8, 7, 0));
    assert!(!r.needs_reset());
}

#[test]
fn a_port_without_a_host_peer_is_announced_closed_until_one_comes() {
    let mut r = rig(two_ports());
    r.backends[1].set_connected(false);
    let got = r.handshake();
    assert!(got.contains(&plain(0, VIRTIO_CONSOLE_PORT_OPEN, 1)));
    assert!(!got.iter().any(|(m, _)| m.id == 1 && m.event == VIRTIO_CONSOLE_PORT_OPEN), "{got:?}");
    // A console with a name gets both messages.
    let mut r = rig(vec![PortConfig::console().with_name("org.ferrovm.console")]);
    let got = r.handshake();
    assert_eq!(
        got[1..],
        [
            plain(0, VIRTIO_CONSOLE_CONSOLE_PORT, 1),
            (msg(0, VIRTIO_CONSOLE_PORT_NAME, 1), b"org.ferrovm.console".to_vec()),
            plain(0, VIRTIO_CONSOLE_PORT_OPEN, 1),
        ]
    );
}

#[test]
fn control_messages_wait_for_control_buffers() {
    let mut r = rig(two_ports());
    r.send_control(u32::MAX, VIRTIO_CONSOLE_DEVICE_READY, 1);
    assert!(r.take_control().is_empty());
    assert_eq!(r.dev.device().pending_control().len(), 2);
    // A buffer too small for a header is returned empty; the message
    // waits for the next buffer.
    let small = r.rings[CONTROL_RX_QUEUE].add_chain(&r.mem, &[(CTRL_RX_BUF + 0xf00, 4, true)]);
    r.ctrl_bufs.insert(small, CTRL_RX_BUF + 0xf00);
    r.notify(CONTROL_RX_QUEUE);
    assert_eq!(r.rings[CONTROL_RX_QUEUE].take_used(&r.mem), vec![(u32::from(small), 0)]);
    assert_eq!(r.stats().bad_chains, 1);
    r.post_control_buffers(1);
    assert_eq!(r.take_control(), vec![plain(0, VIRTIO_CONSOLE_DEVICE_ADD, 1)]);
    r.post_control_buffers(1);
    assert_eq!(r.take_control(), vec![plain(1, VIRTIO_CONSOLE_DEVICE_ADD, 1)]);
    // A name that does not fit waits too.
    r.send_control(1, VIRTIO_CONSOLE_PORT_READY, 1);
    let tight = r.rings[CONTROL_RX_QUEUE].add_chain(&r.mem, &[(CTRL_RX_BUF + 0xf00, 8 + 4, true)]);
    r.notify(CONTROL_RX_QUEUE);
    assert_eq!(r.rings[CONTROL_RX_QUEUE].take_used(&r.mem), vec![(u32::from(tight), 0)]);
    r.post_control_buffers(2);
    assert_eq!(r.take_control()[0], (msg(1, VIRTIO_CONSOLE_PORT_NAME, 1), AGENT.as_bytes().to_vec()));
    assert!(!r.needs_reset());
}

#[test]
fn guest_output_reaches_the_backend_of_its_port() {
    let mut r = rig(two_ports());
    r.handshake();
    assert_eq!(r.write(0, &[b"hello, ", b"console\n"]), vec![(0, 0)], "used length 0");
    assert_eq!(r.write(1, &[b"{\"execute\":\"guest-ping\"}"]), vec![(0, 0)]);
    assert_eq!(r.backends[0].take_output(), b"hello, console\n");
    assert_eq!(r.backends[1].take_output(), b"{\"execute\":\"guest-ping\"}");
    assert_eq!(r.port_stats(0).tx_bytes, 15);
    assert_eq!(r.port_stats(1).tx_bytes, 24);
    // Without a host peer the output is discarded, as QEMU does.
    r.backends[1].set_connected(false);
    assert_eq!(r.write(1, &[b"lost"]), vec![(1, 0)]);
    assert!(r.backends[1].take_output().is_empty());
    assert_eq!(r.port_stats(1).tx_dropped, 4);
    // A backend that fails loses the bytes, and the device goes on.
    r.backends[0].set_fail_writes(true);
    assert_eq!(r.write(0, &[b"gone"]), vec![(2, 0)]);
    r.backends[0].set_fail_writes(false);
    assert_eq!(r.write(0, &[b"back"]), vec![(3, 0)]);
    assert_eq!(r.backends[0].take_output(), b"back");
    assert_eq!((r.port_stats(0).tx_bytes, r.port_stats(0).tx_dropped), (19, 4));
    // A large chain goes out whole, through the device's scratch buffer.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    r.mem.write(0x380000, &big).unwrap();
    assert_eq!(r.chain(transmit_queue(1), &[(0x380000, big.len() as u32, false)]), vec![(2, 0)]);
    r.backends[1].set_connected(true);
    assert_eq!(r.chain(transmit_queue(1), &[(0x380000, big.len() as u32, false)]), vec![(3, 0)]);
    assert_eq!(r.backends[1].take_output(), big);
    assert!(!r.needs_reset());
}

#[test]
fn host_input_reaches_the_receive_buffers_of_its_port_once_open() {
    let mut r = rig(two_ports());
    r.handshake();
    // The console is open (Linux opens consoles at once); port 1 is not.
    r.backends[0].push_input(b"ls\n");
    r.backends[1].push_input(b"0123456789abcdef");
    let heads = r.post_receive(1, 0, &[6, 6, 6]);
    r.post_receive(0, 8, &[64]);
    assert_eq!(r.rings[receive_queue(0)].take_used(&r.mem), vec![(0, 3)]);
    assert_eq!(r.bytes(rx(8), 4), [b'l', b's', b'\n', UNTOUCHED]);
    r.poll();
    assert!(r.rings[receive_queue(1)].take_used(&r.mem).is_empty(), "port 1 is closed");
    assert_eq!(r.backends[1].pending_input(), 0, "its input waits in the device");
    // The guest opens port 1: its input is spread over the small buffers.
    r.send_control(1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    let used = r.rings[receive_queue(1)].take_used(&r.mem);
    assert_eq!(used, vec![(u32::from(heads[0]), 6), (u32::from(heads[1]), 6), (u32::from(heads[2]), 4)]);
    assert_eq!(r.bytes(rx(0), 7), b"012345\xee");
    assert_eq!(r.bytes(rx(1), 7), b"6789ab\xee");
    assert_eq!(r.bytes(rx(2), 6), b"cdef\xee\xee");
    assert_eq!(r.port_stats(1).rx_bytes, 16);
    assert_eq!(r.port_stats(0).rx_bytes, 3);
    // More input than buffers: the rest waits for the next buffers.
    r.backends[1].push_input(b"abcdefghij");
    r.post_receive(1, 3, &[4]);
    assert_eq!(r.rings[receive_queue(1)].take_used(&r.mem), vec![(3, 4)]);
    r.poll();
    assert!(r.rings[receive_queue(1)].take_used(&r.mem).is_empty());
    r.post_receive(1, 4, &[100]);
    assert_eq!(r.rings[receive_queue(1)].take_used(&r.mem), vec![(4, 6)]);
    assert_eq!(r.bytes(rx(3), 4), b"abcd");
    assert_eq!(r.bytes(rx(4), 7), b"efghij\xee");
    // A chain of several buffers is filled in order.
    r.backends[0].push_input(b"xyz12");
    r.rings[0].add_chain(&r.mem, &[(rx(9), 2, true), (rx(10), 8, true)]);
    r.notify(0);
    assert_eq!(r.rings[0].take_used(&r.mem), vec![(1, 5)]);
    assert_eq!((r.bytes(rx(9), 3), r.bytes(rx(10), 4)), (b"xy\xee".to_vec(), b"z12\xee".to_vec()));
    // Input is delivered again once the guest closed and reopened.
    r.send_control(1, VIRTIO_CONSOLE_PORT_OPEN, 0);
    r.backends[1].push_input(b"q");
    r.post_receive(1, 5, &[8]);
    assert!(r.rings[receive_queue(1)].take_used(&r.mem).is_empty());
    r.send_control(1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    assert_eq!(r.rings[receive_queue(1)].take_used(&r.mem), vec![(5, 1)]);
    assert!(r.irq.level(), "INTx: the used buffers were signalled");
}

#[test]
fn host_input_beyond_the_limit_is_dropped_and_counted() {
    let mut r = rig(two_ports());
    r.handshake();
    let extra = 1000;
    let input: Vec<u8> = (0..INPUT_LIMIT + extra).map(|i| i as u8).collect();
    r.backends[1].push_input(&input);
    r.poll();
    assert_eq!(r.backends[1].pending_input(), 0, "the backend is drained");
    assert_eq!(r.port_stats(1).rx_dropped, extra as u64);
    assert_eq!(r.dev.device().save().ports[1].input.len(), INPUT_LIMIT);
    // The guest then gets the first INPUT_LIMIT bytes, in order.
    r.send_control(1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    r.rings[receive_queue(1)].add_chain(&r.mem, &[(0x380000, 0x20000, true)]);
    r.notify(receive_queue(1));
    assert_eq!(r.rings[receive_queue(1)].take_used(&r.mem), vec![(0, INPUT_LIMIT as u32)]);
    assert_eq!(r.bytes(0x380000, INPUT_LIMIT), input[..INPUT_LIMIT]);
    // While the guest keeps up, nothing is dropped however much comes.
    let lots = vec![b'z'; 3 * INPUT_LIMIT];
    r.backends[1].push_input(&lots);
    for _ in 0..4 {
        r.rings[receive_queue(1)].add_chain(&r.mem, &[(0x380000, 0x20000, true)]);
    }
    r.poll();
    let got: u32 = r.rings[receive_queue(1)].take_used(&r.mem).iter().map(|u| u.1).sum();
    assert_eq!(got as usize, lots.len());
    assert_eq!(r.port_stats(1).rx_dropped, extra as u64);
}

#[test]
fn bad_control_messages_are_counted_and_ignored() {
    let mut r = rig(two_ports());
    r.post_control_buffers(8);
    // Shorter than the 8-byte header.
    r.send_control_bytes(&[0, 0, 0, 0]);
    // An event no driver sends, and events only the device sends.
    r.send_control(0, 42, 1);
    r.send_control(0, VIRTIO_CONSOLE_DEVICE_ADD, 1);
    r.send_control(0, VIRTIO_CONSOLE_PORT_NAME, 1);
    // Ports past max_nr_ports.
    r.send_control(2, VIRTIO_CONSOLE_PORT_READY, 1);
    r.send_control(u32::MAX, VIRTIO_CONSOLE_PORT_OPEN, 1);
    assert_eq!(r.stats().control_refused, 6);
    assert_eq!(r.stats().control_tx, 6);
    assert!(r.take_control().is_empty());
    assert!(!r.dev.device().guest_open(0));
    // The driver's failures: no port is added, no port becomes ready.
    r.send_control(u32::MAX, VIRTIO_CONSOLE_DEVICE_READY, 0);
    r.send_control(1, VIRTIO_CONSOLE_PORT_READY, 0);
    assert!(r.take_control().is_empty());
    assert!(!r.dev.device().port_ready(1));
    // A longer message is read for its header.
    let mut long = msg(u32::MAX, VIRTIO_CONSOLE_DEVICE_READY, 1).to_bytes().to_vec();
    long.extend_from_slice(&[0xaa; 100]);
    r.send_control_bytes(&long);
    assert_eq!(r.take_control().len(), 2);
    // A control message in a device-writable buffer is refused.
    assert_eq!(r.rings[CONTROL_TX_QUEUE].take_used(&r.mem).len(), 9, "every message was returned");
    r.mem.write(CTRL_TX_BUF + 0xf00, &msg(0, VIRTIO_CONSOLE_PORT_READY, 1).to_bytes()).unwrap();
    let used = r.chain(CONTROL_TX_QUEUE, &[(CTRL_TX_BUF + 0xf00, 8, true)]);
    assert_eq!(used, vec![(9, 0)]);
    assert!(!r.dev.device().port_ready(0));
    assert_eq!((r.stats().control_refused, r.stats().bad_chains), (7, 1));
    // The device still works.
    r.send_control(0, VIRTIO_CONSOLE_PORT_READY, 1);
    assert_eq!(r.take_control().len(), 2);
    assert!(!r.needs_reset());
}

#[test]
fn chains_in_the_wrong_direction_are_returned_unused() {
    let mut r = rig(two_ports());
    r.handshake();
    // A device-writable buffer on a transmit queue: nothing is written,
    // to the backend or to the buffer.
    r.mem.write(TX_BUF, b"data").unwrap();
    r.mem.fill(TX_BUF + 0x1000, 16, UNTOUCHED).unwrap();
    let used = r.chain(transmit_queue(1), &[(TX_BUF, 4, false), (TX_BUF + 0x1000, 16, true)]);
    assert_eq!(used, vec![(0, 0)]);
    assert!(r.backends[1].take_output().is_empty());
    assert_eq!(r.bytes(TX_BUF + 0x1000, 16), [UNTOUCHED; 16]);
    assert_eq!(r.stats().bad_chains, 1);
    // A receive chain without a writable byte is returned empty; the
    // input goes to the next buffer.
    r.backends[0].push_input(b"k");
    r.mem.fill(rx(0), 8, 0x55).unwrap();
    assert_eq!(r.chain(receive_queue(0), &[(rx(0), 8, false)]), vec![(0, 0)]);
    assert_eq!(r.bytes(rx(0), 8), [0x55; 8]);
    assert_eq!(r.stats().bad_chains, 2);
    assert_eq!(r.chain(receive_queue(0), &[(rx(1), 8, true)]), vec![(1, 1)]);
    assert!(!r.needs_reset());
    // A write-only descriptor in an otherwise good transmit ring.
    r.rings[transmit_queue(0)].write_desc(&r.mem, 5, TX_BUF, 4, VIRTQ_DESC_F_WRITE, 0);
    r.rings[transmit_queue(0)].publish(&r.mem, 5);
    r.notify(transmit_queue(0));
    assert_eq!(r.rings[transmit_queue(0)].take_used(&r.mem), vec![(5, 0)]);
    assert_eq!(r.stats().bad_chains, 3);
}

#[test]
fn addresses_outside_guest_memory_break_the_queue_not_the_host() {
    // A transmit buffer past the end of RAM, and one wrapping the space.
    for addr in [(4 << 20) - 2, u64::MAX - 1, 0xffff_ffff_f000] {
        let mut r = rig(two_ports());
        r.handshake();
        r.chain(transmit_queue(1), &[(addr, 16, false)]);
        assert!(r.needs_reset(), "{addr:#x}");
        assert_eq!(r.stats().queue_errors, 1);
        assert!(r.backends[1].take_output().is_empty());
    }
    // A receive buffer outside RAM.
    let mut r = rig(two_ports());
    r.handshake();
    r.backends[0].push_input(b"input");
    r.chain(receive_queue(0), &[(0xffff_ffff_0000, 64, true)]);
    assert!(r.needs_reset());
    assert_eq!(r.stats().queue_errors, 1);
    // A control message outside RAM, and a head past the table.
    let mut r = rig(two_ports());
    r.chain(CONTROL_TX_QUEUE, &[(0x1_0000_0000, 8, false)]);
    assert!(r.needs_reset());
    let mut r = rig(two_ports());
    r.rings[CONTROL_RX_QUEUE].publish(&r.mem, 200);
    r.send_control(u32::MAX, VIRTIO_CONSOLE_DEVICE_READY, 1);
    assert!(r.needs_reset());
    assert_eq!(r.stats().queue_errors, 1);
    // The broken queue is left alone after that.
    r.post_control_buffers(2);
    assert!(r.take_control().is_empty());
}

#[test]
fn emergency_writes_reach_port_zero() {
    // Before the driver set anything up (5.3.5.1: at any time).
    let mem = Arc::new(GuestMemory::new(1 << 20).unwrap());
    let (b0, b1) = (MemoryBackend::new(), MemoryBackend::new());
    let ports: Vec<(PortConfig, Box<dyn PortBackend>)> =
        vec![(PortConfig::console(), Box::new(b0.clone())), (PortConfig::serial(AGENT), Box::new(b1.clone()))];
    let console = VirtioConsole::new(ports, IoKick::none()).unwrap();
    let mut dev = VirtioPci::new(console, mem, Arc::new(RecordingIrq::new()));
    dev.bar_write(MODERN_BAR, 0x2008, &u32::from(b'!').to_le_bytes());
    assert_eq!(b0.take_output(), b"!");
    // A byte write, and a write covering the field from below; writes to
    // its upper bytes or the read-only fields are not output.
    dev.bar_write(MODERN_BAR, 0x2008, b"A");
    dev.device_mut().write_config(4, &[9, 9, 9, 9, b'B', 0, 0, 0]);
    dev.bar_write(MODERN_BAR, 0x2009, b"x");
    dev.bar_write(MODERN_BAR, 0x2000, &[1, 2, 3, 4]);
    assert_eq!(b0.take_output(), b"AB");
    assert!(b1.take_output().is_empty());
    assert_eq!(dev.device().stats().emergency_bytes, 3);
    assert_eq!(dev.device().port_stats(0).unwrap().tx_bytes, 3);
    let mut cfg = [0xffu8; 12];
    dev.device().read_config(0, &mut cfg);
    assert_eq!(cfg, [0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0], "emerg_wr reads 0; nothing else changed");
    // A failing backend loses the byte.
    b0.set_fail_writes(true);
    dev.bar_write(MODERN_BAR, 0x2008, b"C");
    assert_eq!(dev.device().port_stats(0).unwrap().tx_dropped, 1);
}

#[test]
fn without_multiport_port_zero_is_a_plain_console() {
    let all = VirtioConsole::new(vec![(PortConfig::console(), Box::new(MemoryBackend::new()))], IoKick::none())
        .unwrap()
        .features();
    let mut r = rig_with(two_ports(), Some(all & !VIRTIO_CONSOLE_F_MULTIPORT), None);
    // Port 0 is open both ways without a handshake.
    r.backends[0].push_input(b"root\n");
    r.post_receive(0, 0, &[16]);
    assert_eq!(r.rings[0].take_used(&r.mem), vec![(0, 5)]);
    assert_eq!(r.write(0, &[b"login: "]), vec![(0, 0)]);
    assert_eq!(r.backends[0].take_output(), b"login: ");
    // The control queues and port 1 are not used.
    r.post_control_buffers(2);
    r.send_control(u32::MAX, VIRTIO_CONSOLE_DEVICE_READY, 1);
    assert!(r.rings[CONTROL_TX_QUEUE].take_used(&r.mem).is_empty());
    assert!(r.take_control().is_empty());
    r.backends[1].push_input(b"nobody");
    r.post_receive(1, 1, &[16]);
    assert!(r.write(1, &[b"nothing"]).is_empty());
    assert!(r.rings[receive_queue(1)].take_used(&r.mem).is_empty());
    assert!(r.backends[1].take_output().is_empty());
    assert!(!r.needs_reset());
}

#[test]
fn a_reset_returns_every_port_to_power_on() {
    let mut r = rig(two_ports());
    assert_eq!(r.handshake_with(6).len(), 6, "every control buffer taken");
    r.send_control(1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    r.backends[1].push_input(b"waiting");
    r.backends[0].set_connected(false);
    r.poll();
    assert_eq!(r.dev.device().pending_control(), vec![msg(0, VIRTIO_CONSOLE_PORT_OPEN, 0)], "no buffer left");
    w(&mut r.dev, 0x14, 0, 1);
    let s = r.dev.device().save();
    for p in &s.ports {
        assert!(!p.added && !p.ready && !p.guest_open && !p.host_open && p.input.is_empty(), "{p:?}");
    }
    assert!(s.control.is_empty());
    assert!(!r.dev.device().guest_open(1));
    // Set up again, the driver finds every port anew.
    r.backends[0].set_connected(true);
    r.rings = set_up(&mut r.dev, &r.mem, None);
    r.ctrl_bufs.clear();
    r.driver_ok();
    let got = r.handshake();
    assert_eq!(got.len(), 2 + 2 + 2, "{got:?}");
    assert_eq!(got[0], plain(0, VIRTIO_CONSOLE_DEVICE_ADD, 1));
}

/// A device with the rig's ports over fresh backends, on the rig's memory.
fn fresh(r: &Rig, ports: Vec<PortConfig>) -> (VirtioConsolePci, Vec<MemoryBackend>) {
    let backends: Vec<MemoryBackend> = ports.iter().map(|_| MemoryBackend::new()).collect();
    let list = ports.into_iter().zip(&backends).map(|(c, b)| (c, Box::new(b.clone()) as Box<dyn PortBackend>));
    let console = VirtioConsole::new(list.collect(), IoKick::none()).unwrap();
    (VirtioPci::new(console, r.mem.clone(), Arc::new(RecordingIrq::new())), backends)
}

#[test]
fn a_restored_device_goes_on_where_the_saved_one_stood() {
    let mut r = rig(two_ports());
    assert_eq!(r.handshake_with(6).len(), 6, "every control buffer taken");
    r.send_control(1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    // Input waits for port 1's buffers; a PORT_OPEN waits for a control buffer.
    r.backends[1].push_input(b"saved input");
    r.poll();
    r.backends[0].set_connected(false);
    r.poll();
    let (mut other, backends) = fresh(&r, two_ports());
    backends[0].set_connected(false);
    let s = persist::assert_round_trip(&r.dev, &mut other);
    assert_eq!(s.device.ports[1].input, b"saved input");
    assert!(s.device.ports[1].guest_open && s.device.ports[1].ready && s.device.ports[1].host_open);
    assert_eq!(s.device.control, vec![msg(0, VIRTIO_CONSOLE_PORT_OPEN, 0)]);
    r.dev = other;
    r.backends = backends;
    assert!(r.dev.device().guest_open(1));
    // The restored device sends what waited, as the driver posts buffers.
    r.post_control_buffers(1);
    assert_eq!(r.take_control(), vec![plain(0, VIRTIO_CONSOLE_PORT_OPEN, 0)]);
    r.post_receive(1, 0, &[64]);
    assert_eq!(r.rings[receive_queue(1)].take_used(&r.mem), vec![(0, 11)]);
    assert_eq!(r.bytes(rx(0), 11), b"saved input");
    // And works on: output, and a host side that comes back.
    assert_eq!(r.write(1, &[b"after"]), vec![(0, 0)]);
    assert_eq!(r.backends[1].take_output(), b"after");
    r.backends[0].set_connected(true);
    r.post_control_buffers(1);
    r.poll();
    assert_eq!(r.take_control(), vec![plain(0, VIRTIO_CONSOLE_PORT_OPEN, 1)]);
    assert_eq!(r.dev.device().stats().control_rx, s.device.stats.control_rx + 2);
}

#[test]
fn a_restored_device_serves_chains_made_available_before_the_save() {
    let mut r = rig(two_ports());
    r.handshake();
    // Output made available without a notification (a doorbell not yet served).
    r.mem.write(TX_BUF, b"pending").unwrap();
    r.rings[transmit_queue(1)].add_chain(&r.mem, &[(TX_BUF, 7, false)]);
    let (mut other, backends) = fresh(&r, two_ports());
    persist::assert_round_trip(&r.dev, &mut other);
    assert!(backends[1].take_output().is_empty());
    other.poll(Instant::now());
    assert_eq!(backends[1].take_output(), b"pending");
    assert_eq!(r.rings[transmit_queue(1)].take_used(&r.mem), vec![(0, 0)]);
}

#[test]
fn states_of_other_ports_or_out_of_bounds_are_refused() {
    let mut r = rig(two_ports());
    r.handshake();
    let good = r.dev.device().save();
    let others = [
        (vec![PortConfig::console()], "ports"),
        (vec![PortConfig::console(), PortConfig::serial(AGENT), PortConfig::console()], "ports"),
        (vec![PortConfig::console(), PortConfig::serial("org.qemu.other")], "ports"),
        (vec![PortConfig::console(), PortConfig::console().with_name(AGENT)], "ports"),
        (vec![PortConfig::serial("first"), PortConfig::serial(AGENT)], "ports"),
    ];
    for (ports, field) in others {
        let (mut other, _) = fresh(&r, ports.clone());
        let e = persist::assert_refused(other.device_mut(), &good);
        assert_eq!((e.part, e.field), ("virtio-serial", field), "{ports:?}: {e}");
    }
    // Out of bounds, on a device with the same ports.
    let (mut same, _) = fresh(&r, two_ports());
    let dev = same.device_mut();
    let mut bad = good.clone();
    bad.ports[1].input = vec![0; INPUT_LIMIT + 1];
    assert_eq!(persist::assert_refused(dev, &bad).field, "input");
    let cases = [
        vec![msg(2, VIRTIO_CONSOLE_DEVICE_ADD, 1)],
        vec![msg(0, VIRTIO_CONSOLE_PORT_NAME, 1)],
        vec![msg(1, VIRTIO_CONSOLE_CONSOLE_PORT, 1)],
        vec![msg(0, VIRTIO_CONSOLE_PORT_OPEN, 2)],
        vec![msg(0, VIRTIO_CONSOLE_PORT_READY, 1)],
        vec![msg(0, VIRTIO_CONSOLE_DEVICE_ADD, 1); MAX_PENDING_CONTROL + 1],
    ];
    for control in cases {
        let bad = VirtioConsoleState { control, ..good.clone() };
        let e = persist::assert_refused(dev, &bad);
        assert_eq!(e.field, "control", "{e}");
    }
    // Through the transport: refused as a whole.
    let (mut small, _) = fresh(&r, vec![PortConfig::console()]);
    let mut state = r.dev.save();
    state.queues.truncate(4);
    state.queue_vectors.truncate(4);
    let e = persist::assert_refused(&mut small, &state);
    assert_eq!(e.field, "ports");
}

#[test]
fn port_sets_a_guest_could_not_use_are_refused() {
    let b = || Box::new(MemoryBackend::new()) as Box<dyn PortBackend>;
    let make =
        |ports: Vec<PortConfig>| VirtioConsole::new(ports.into_iter().map(|c| (c, b())).collect(), IoKick::none());
    assert_eq!(make(vec![]).err(), Some(ConsoleConfigError::NoPorts));
    assert_eq!(make(vec![PortConfig::console(); 32]).err(), Some(ConsoleConfigError::TooManyPorts(32)));
    let full = make(vec![PortConfig::console(); 31]).unwrap();
    assert_eq!(full.queue_max_sizes().len(), 64);
    let mut cfg = [0u8; 4];
    full.read_config(4, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg), 31);
    for name in ["", "a/b", "tab\there", "nul\0", &"n".repeat(256)] {
        let e = make(vec![PortConfig::serial(name)]).err();
        assert!(matches!(e, Some(ConsoleConfigError::BadName { port: 0, .. })), "{name:?}: {e:?}");
    }
    make(vec![PortConfig::serial("n".repeat(255))]).unwrap();
    let e = make(vec![PortConfig::serial("a"), PortConfig::console(), PortConfig::console().with_name("a")]).err();
    assert_eq!(e, Some(ConsoleConfigError::DuplicateName { first: 0, second: 2, name: "a".into() }));
    assert!(e.unwrap().to_string().contains("both named \"a\""));
    // An unnamed serial port is fine (the guest numbers it).
    make(vec![PortConfig { kind: PortKind::Serial, name: None }, PortConfig::console()]).unwrap();
}

#[test]
fn control_messages_for_the_driver_are_merged_and_bounded() {
    let mut r = rig(two_ports());
    assert_eq!(r.handshake_with(6).len(), 6, "every control buffer taken");
    // The host side flaps while the driver posts no control buffer: only
    // the last state waits.
    for i in 0..10 {
        r.backends[1].set_connected(i % 2 == 0);
        r.poll();
    }
    assert_eq!(r.dev.device().pending_control(), vec![msg(1, VIRTIO_CONSOLE_PORT_OPEN, 0)]);
    // PORT_READY sent again and again queues its answers once.
    for _ in 0..50 {
        r.send_control(0, VIRTIO_CONSOLE_PORT_READY, 1);
    }
    assert!(r.dev.device().pending_control().len() <= 3, "{:?}", r.dev.device().pending_control());
    // The merging keeps it far below the bound with every port.
    let mut ports = vec![PortConfig::console().with_name("c")];
    ports.extend((1..31).map(|i| PortConfig::serial(format!("p{i}"))));
    let mut big = rig(ports);
    big.send_control(u32::MAX, VIRTIO_CONSOLE_DEVICE_READY, 1);
    for i in 0..31 {
        big.send_control(i, VIRTIO_CONSOLE_PORT_READY, 1);
        big.send_control(i, VIRTIO_CONSOLE_PORT_READY, 1);
    }
    let pending = big.dev.device().pending_control().len();
    assert_eq!(pending, 31 + 1 + 31 + 31, "DEVICE_ADD and PORT_OPEN each, one console, a name each");
    assert!(pending <= MAX_PENDING_CONTROL);
    assert_eq!(big.stats().control_dropped, 0);
}

#[test]
fn a_device_that_is_not_running_leaves_the_queues_alone() {
    let mem = GuestMemory::new(1 << 20).unwrap();
    let backend = MemoryBackend::new();
    let ports: Vec<(PortConfig, Box<dyn PortBackend>)> = vec![(PortConfig::console(), Box::new(backend.clone()))];
    let mut console = VirtioConsole::new(ports, IoKick::none()).unwrap();
    let mut queues: Vec<Queue> = console.queue_max_sizes().into_iter().map(Queue::new).collect();
    let mut ring = DriverRing::new(&mem, 0x10000, 16);
    ring.attach(&mut queues[0]);
    ring.add_chain(&mem, &[(0x40000, 16, true)]);
    backend.push_input(b"early");
    let (mut isr, mut events, mut needs_reset) = (0, 0, false);
    let mut ctx = Context {
        mem: &mem,
        queues: &mut queues,
        features: VIRTIO_F_VERSION_1,
        running: false,
        isr: &mut isr,
        events: &mut events,
        needs_reset: &mut needs_reset,
    };
    console.notify(0, &mut ctx);
    assert_eq!(console.poll(&mut ctx, Instant::now()), None);
    assert!(ring.take_used(&mem).is_empty());
    assert_eq!(backend.pending_input(), 0, "read into the device");
    ctx.running = true;
    console.notify(0, &mut ctx);
    assert_eq!(ring.take_used(&mem), vec![(0, 5)]);
}

/// A hostile guest and host: random ring and buffer contents, random
/// notifications, control messages, configuration writes and host input.
/// Nothing panics, and the state reached restores.
#[test]
fn hostile_input_never_panics() {
    use crate::fuzz::{assert_restorable, pseudo_random_inputs, Input};
    for data in pseudo_random_inputs(0x5e71a1, 300, 600, &[]) {
        let mut r = rig(two_ports());
        r.post_control_buffers(4);
        let mut input = Input::new(&data);
        while !input.is_empty() {
            match input.u8() % 8 {
                0 => {
                    // Anywhere in the rings, or just past RAM.
                    let at = RING_BASE + u64::from(input.u16()) * 2 % (6 * RING_STRIDE);
                    let bytes = input.bytes(8).to_vec();
                    let _ = r.mem.write(at, &bytes);
                }
                1 => {
                    let q = usize::from(input.u8() % 6);
                    let addr = u64::from(input.u32()) % (5 << 20);
                    let len = u32::from(input.u16());
                    let writable = input.u8() & 1 != 0;
                    r.rings[q].add_chain(&r.mem, &[(addr, len, writable)]);
                    r.notify(q);
                }
                2 => {
                    let id = u32::from(input.u8() % 4);
                    let event = u16::from(input.u8() % 9);
                    let value = u16::from(input.u8() % 3);
                    r.send_control(id, event, value);
                }
                3 => {
                    let n = usize::from(input.u8());
                    let bytes = input.bytes(n).to_vec();
                    r.backends[usize::from(input.u8() % 2)].push_input(&bytes);
                }
                4 => {
                    let off = usize::from(input.u8() % 16);
                    let bytes = input.bytes(4).to_vec();
                    r.dev.device_mut().write_config(off, &bytes);
                }
                5 => r.backends[usize::from(input.u8() % 2)].set_connected(input.u8() & 1 != 0),
                6 => {
                    let q = usize::from(input.u8() % 8);
                    r.notify(q);
                }
                _ => r.poll(),
            }
        }
        r.poll();
        assert_restorable(&mut r.dev);
        for b in &r.backends {
            b.take_output();
        }
    }
}
