//! virtio-serial: the virtio console device over the virtio PCI transport,
//! like QEMU's virtio-serial-pci with its `virtconsole` and
//! `virtserialport` ports (virtio device type 3).
//!
//! Reference: VIRTIO 1.1, 5.3 "Console Device": 5.3.2 the queues, 5.3.3
//! the feature bits, 5.3.4 the configuration layout, 5.3.5 device
//! initialization, 5.3.6 device operation and 5.3.6.2 the multiport
//! control messages.
//!
//! ```text
//! queues     0 receiveq(port 0)   1 transmitq(port 0)   2 control receiveq   3 control transmitq
//!            port N >= 1: 2N+2 receiveq(port N), 2N+3 transmitq(port N)
//! config     0 le16 cols | 2 le16 rows | 4 le32 max_nr_ports | 8 le32 emerg_wr
//! control    0 le32 id | 4 le16 event | 6 le16 value, then the event's payload
//!            0 DEVICE_READY  1 DEVICE_ADD  2 DEVICE_REMOVE  3 PORT_READY  4 CONSOLE_PORT
//!            5 RESIZE  6 PORT_OPEN  7 PORT_NAME (followed by the name, no NUL)
//!
//! handshake  driver DEVICE_READY(1)  ->  device DEVICE_ADD(port) for every port
//!            driver PORT_READY(port, 1)  ->  device CONSOLE_PORT(port, 1) for a console,
//!              PORT_NAME(port) + name for a named port, PORT_OPEN(port, 1) if the host
//!              side is connected
//!            driver PORT_OPEN(port, 0 or 1) as the guest closes or opens the port;
//!            device PORT_OPEN(port, 0 or 1) as the host side disconnects or connects
//! ```
//!
//! Model choices:
//! - The ports are numbered in the order they are given; `max_nr_ports` is
//!   their number (1 to [`MAX_PORTS`]) and every queue of every port exists.
//!   Each port is a console (`virtconsole`, Linux's hvc) or a serial port
//!   (`virtserialport`, Linux's `/dev/vportNpM`), either with an optional
//!   name, and has a host end behind [`PortBackend`].
//! - Offered: MULTIPORT and EMERG_WRITE always, SIZE when the device is
//!   given a console size ([`VirtioConsole::with_size`]), and VERSION_1,
//!   EVENT_IDX and INDIRECT_DESC. A driver that does not take MULTIPORT
//!   uses port 0 alone, without control queues, and port 0 is then open
//!   both ways.
//! - Host input is read from the backend at every poll (the I/O thread's,
//!   when the backend's wake fd fires) and when the driver posts receive
//!   buffers; it reaches the port's receive buffers, in as many as it
//!   needs, once the guest opened the port (PORT_OPEN 1). Until then, or
//!   while the guest posts no buffers, up to [`INPUT_LIMIT`] bytes wait in
//!   the device per port; what comes beyond that is read and dropped
//!   (counted, logged once), so that a backend's readiness is always
//!   consumed and the device's memory stays bounded. One call reads at
//!   most [`MAX_READ_PER_CALL`] bytes from each backend.
//! - Guest output is written to the port's backend as it is found in the
//!   transmit queue, in pieces, up to [`MAX_OUTPUT_CHAIN`] bytes per chain
//!   (the rest is dropped and counted). While the host side is not
//!   connected it is discarded and counted, as QEMU does. A transmit chain
//!   with a device-writable buffer (5.3.6.1 forbids it) is returned unused,
//!   counted and logged once; a receive chain without a writable byte is
//!   returned empty, likewise.
//! - Control messages for the driver wait, in order, until it posts
//!   control receive buffers; a waiting message that is posted again is
//!   not duplicated, and a new PORT_OPEN for a port replaces a waiting one,
//!   so at most [`MAX_PENDING_CONTROL`] ever wait. A control receive buffer
//!   too small for its message is returned empty (counted, logged once),
//!   and the message waits for the next one.
//! - Every driver message is checked: shorter than 8 bytes, an event the
//!   driver does not send, or a port id past `max_nr_ports` is refused,
//!   counted and logged once per kind. DEVICE_READY(0) and PORT_READY(0)
//!   (the driver failed to set the device or a port up) are logged once.
//! - A write to `emerg_wr` sends its low byte to port 0's backend, at any
//!   time, even before the driver sets the device up (5.3.5.1).
//! - The console size is the host's: [`VirtioConsole::set_size`] changes
//!   it, and the machine then signals a configuration change through the
//!   transport ([`VirtioPci::config_changed`]); Linux reads it for port 0
//!   when MULTIPORT is not negotiated. No RESIZE message is sent.
//! - A reset brings every port back to its power-on state: not announced,
//!   not ready, closed on both sides, with no input waiting, and no control
//!   message waiting. The counters are the host's and stay.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use persist::{Persist, PersistError};

use crate::nic::{IoKick, IoPoll};
use crate::virtio::{
    Context, DescriptorChain, QueueError, VirtioDevice, VirtioPci, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
};

/// Virtio device type of a console.
pub const VIRTIO_ID_CONSOLE: u16 = 3;

/// Feature: `cols` and `rows` of the configuration are valid.
pub const VIRTIO_CONSOLE_F_SIZE: u64 = 1 << 0;
/// Feature: several ports and the control queues.
pub const VIRTIO_CONSOLE_F_MULTIPORT: u64 = 1 << 1;
/// Feature: `emerg_wr` of the configuration is valid.
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u64 = 1 << 2;

/// Control event: the driver is ready for control messages (value 1), or
/// failed to set the device up (value 0).
pub const VIRTIO_CONSOLE_DEVICE_READY: u16 = 0;
/// Control event: the device adds port `id`.
pub const VIRTIO_CONSOLE_DEVICE_ADD: u16 = 1;
/// Control event: the device removes port `id` (not sent: ports are fixed).
pub const VIRTIO_CONSOLE_DEVICE_REMOVE: u16 = 2;
/// Control event: the driver set port `id` up (value 1), or failed to (0).
pub const VIRTIO_CONSOLE_PORT_READY: u16 = 3;
/// Control event: the device nominates port `id` as a console.
pub const VIRTIO_CONSOLE_CONSOLE_PORT: u16 = 4;
/// Control event: a console's size changed (not sent).
pub const VIRTIO_CONSOLE_RESIZE: u16 = 5;
/// Control event: port `id` was opened (value 1) or closed (0), by the
/// guest (from the driver) or by the host (from the device).
pub const VIRTIO_CONSOLE_PORT_OPEN: u16 = 6;
/// Control event: the device names port `id`; the name follows.
pub const VIRTIO_CONSOLE_PORT_NAME: u16 = 7;

/// The receive queue of port 0.
pub const PORT0_RX_QUEUE: usize = 0;
/// The transmit queue of port 0.
pub const PORT0_TX_QUEUE: usize = 1;
/// The control receive queue (device to driver).
pub const CONTROL_RX_QUEUE: usize = 2;
/// The control transmit queue (driver to device).
pub const CONTROL_TX_QUEUE: usize = 3;

/// The most ports a device has (QEMU's default `max_ports`).
pub const MAX_PORTS: usize = 31;
/// The longest port name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Entries of each port's queues (as QEMU's).
pub const PORT_QUEUE_SIZE: u16 = 128;
/// Entries of the control queues (as QEMU's).
pub const CONTROL_QUEUE_SIZE: u16 = 32;
/// Host input that waits in the device for the guest, per port.
pub const INPUT_LIMIT: usize = 64 * 1024;
/// Bytes read from one backend in one call at most.
pub const MAX_READ_PER_CALL: usize = 1024 * 1024;
/// Bytes of one transmit chain written to the backend at most.
pub const MAX_OUTPUT_CHAIN: u64 = 1024 * 1024;
/// Control messages waiting for the driver at most: one of each kind per
/// port (DEVICE_ADD, CONSOLE_PORT, PORT_NAME, PORT_OPEN), with room to spare.
pub const MAX_PENDING_CONTROL: usize = 4 * MAX_PORTS + 4;

/// Length of the configuration space.
const CONFIG_LEN: usize = 12;
/// Offset of `emerg_wr` in the configuration space.
const EMERG_WR: usize = 8;
/// Length of a control message's header.
const CONTROL_LEN: usize = 8;
/// Bytes of a driver's control message that are read (the header; the
/// driver sends nothing after it).
const CONTROL_READ_LIMIT: usize = 64;
/// The buffer guest data moves through between guest memory and a backend.
const SCRATCH_LEN: usize = 16 * 1024;

/// The receive queue of port `port`.
pub fn receive_queue(port: usize) -> usize {
    if port == 0 {
        PORT0_RX_QUEUE
    } else {
        2 * port + 2
    }
}

/// The transmit queue of port `port`.
pub fn transmit_queue(port: usize) -> usize {
    receive_queue(port) + 1
}

/// What a queue of the device is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Receive(usize),
    Transmit(usize),
    ControlReceive,
    ControlTransmit,
}

/// The role of queue `queue` of a device with `ports` ports.
fn role(queue: usize, ports: usize) -> Option<Role> {
    let role = match queue {
        PORT0_RX_QUEUE => Role::Receive(0),
        PORT0_TX_QUEUE => Role::Transmit(0),
        CONTROL_RX_QUEUE => Role::ControlReceive,
        CONTROL_TX_QUEUE => Role::ControlTransmit,
        q if q % 2 == 0 => Role::Receive((q - 2) / 2),
        q => Role::Transmit((q - 2) / 2),
    };
    match role {
        Role::Receive(p) | Role::Transmit(p) if p >= ports => None,
        r => Some(r),
    }
}

/// The host end of a port.
pub trait PortBackend: Send {
    /// Reads host input into `buf` without blocking; `Ok(0)` (or an error
    /// of kind `WouldBlock`) when nothing waits.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Takes guest output: all of `data`, or an error (the bytes are then
    /// lost). It must not block for long: it runs on the thread that
    /// notified the queue.
    fn write(&mut self, data: &[u8]) -> io::Result<()>;

    /// A file descriptor that becomes readable when input waits or the
    /// connection changes; the I/O thread then polls the device. `None`:
    /// the backend is read at each poll and notification only.
    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Whether a host-side peer is there (a client on a socket, a terminal):
    /// the guest sees the port's host side open while it is.
    fn connected(&self) -> bool {
        true
    }

    /// The terminal's path and label, for a port on a pseudo-terminal
    /// (announced when the machine starts).
    fn pty(&self) -> Option<(&Path, &str)> {
        None
    }

    /// Whether input not yet read waits in the backend without waking the
    /// I/O thread again (a read into an empty buffer takes the wake-up):
    /// the device then leaves it there until the guest can take it, so a
    /// driver's reset of the device does not drop it, as QEMU reads its
    /// character devices only when the guest is ready.
    fn keeps_input(&self) -> bool {
        false
    }

    /// Where the machine's stdin reader pushes typed bytes, for a port on
    /// stdio.
    fn stdio_input(&self) -> Option<backends::StdioInput> {
        None
    }

    /// A short name for logs.
    fn debug_label(&self) -> String {
        "port backend".into()
    }
}

/// What a [`MemoryBackend`] holds.
#[derive(Debug)]
struct MemoryPort {
    input: VecDeque<u8>,
    output: Vec<u8>,
    connected: bool,
    fail_writes: bool,
}

/// A port backend in memory: the host pushes input bytes and takes the
/// guest's output. Clones share the same port, so one clone goes to the
/// device and another stays with whoever plays the host.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    inner: Arc<Mutex<MemoryPort>>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// A connected backend with nothing queued either way.
    pub fn new() -> Self {
        let port = MemoryPort { input: VecDeque::new(), output: Vec::new(), connected: true, fail_writes: false };
        Self { inner: Arc::new(Mutex::new(port)) }
    }

    /// Queues `data` for the guest.
    pub fn push_input(&self, data: &[u8]) {
        self.inner.lock().input.extend(data);
    }

    /// Input bytes the device has not read yet.
    pub fn pending_input(&self) -> usize {
        self.inner.lock().input.len()
    }

    /// Takes what the guest wrote so far.
    pub fn take_output(&self) -> Vec<u8> {
        std::mem::take(&mut self.inner.lock().output)
    }

    /// Connects or disconnects the host side.
    pub fn set_connected(&self, connected: bool) {
        self.inner.lock().connected = connected;
    }

    /// Makes every write fail (a host end that went away), or work again.
    pub fn set_fail_writes(&self, fail: bool) {
        self.inner.lock().fail_writes = fail;
    }
}

impl PortBackend for MemoryBackend {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut port = self.inner.lock();
        let n = buf.len().min(port.input.len());
        for (dst, src) in buf.iter_mut().zip(port.input.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut port = self.inner.lock();
        if port.fail_writes {
            return Err(io::Error::new(ErrorKind::BrokenPipe, "the memory backend refuses writes"));
        }
        port.output.extend_from_slice(data);
        Ok(())
    }

    fn connected(&self) -> bool {
        self.inner.lock().connected
    }

    fn debug_label(&self) -> String {
        "memory".into()
    }
}

/// What a port is to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum PortKind {
    /// A console (QEMU's `virtconsole`; Linux's hvc).
    Console,
    /// A serial port (QEMU's `virtserialport`; Linux's `/dev/vportNpM`).
    Serial,
}

/// How a port is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PortConfig {
    /// Console or serial port.
    pub kind: PortKind,
    /// The name the guest sees (PORT_NAME), as `org.qemu.guest_agent.0`.
    pub name: Option<String>,
}

impl PortConfig {
    /// A console without a name.
    pub fn console() -> Self {
        Self { kind: PortKind::Console, name: None }
    }

    /// A serial port named `name`.
    pub fn serial(name: impl Into<String>) -> Self {
        Self { kind: PortKind::Serial, name: Some(name.into()) }
    }

    /// The same port named `name`.
    pub fn with_name(self, name: impl Into<String>) -> Self {
        Self { name: Some(name.into()), ..self }
    }
}

/// Why a set of ports cannot make a device.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ConsoleConfigError {
    /// No port at all.
    #[error("a virtio console needs at least one port")]
    NoPorts,
    /// More ports than the device has room for.
    #[error("a virtio console has at most {max} ports, not {0}", max = MAX_PORTS)]
    TooManyPorts(usize),
    /// A name the guest could not use.
    #[error("virtio console port {port}: the name {name:?} {problem}")]
    BadName { port: usize, name: String, problem: &'static str },
    /// Two ports with one name.
    #[error("virtio console ports {first} and {second} are both named {name:?}")]
    DuplicateName { first: usize, second: usize, name: String },
}

/// Traffic counters of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PortStats {
    /// Guest output bytes handed to the backend (transmitq).
    pub tx_bytes: u64,
    /// Guest output bytes dropped: the host side was not connected, the
    /// backend failed, or a chain was longer than [`MAX_OUTPUT_CHAIN`].
    pub tx_dropped: u64,
    /// Host input bytes delivered to the guest (receiveq).
    pub rx_bytes: u64,
    /// Host input bytes dropped because [`INPUT_LIMIT`] bytes already waited.
    pub rx_dropped: u64,
}

/// Counters of the device as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ConsoleStats {
    /// Control messages delivered to the driver (control receiveq).
    pub control_rx: u64,
    /// Control messages taken from the driver (control transmitq), refused ones included.
    pub control_tx: u64,
    /// Driver messages refused: too short, an unknown event, a port out of range.
    pub control_refused: u64,
    /// Control messages for the driver dropped because too many waited.
    pub control_dropped: u64,
    /// Chains returned unused: a writable buffer on a transmit queue, no
    /// writable byte on a receive queue, a control receive buffer too small.
    pub bad_chains: u64,
    /// Rings the driver broke (the device then needs a reset).
    pub queue_errors: u64,
    /// Bytes written through `emerg_wr`.
    pub emergency_bytes: u64,
}

/// A control message: the 8-byte header (the payload of PORT_NAME, the
/// port's name, is added as it is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ControlMessage {
    /// The port.
    pub id: u32,
    /// What happened (`VIRTIO_CONSOLE_*`).
    pub event: u16,
    /// The event's value.
    pub value: u16,
}

impl ControlMessage {
    /// Parses a message's header; `None` when `bytes` is too short.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let h: &[u8; CONTROL_LEN] = bytes.get(..CONTROL_LEN)?.try_into().ok()?;
        Some(Self {
            id: u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            event: u16::from_le_bytes([h[4], h[5]]),
            value: u16::from_le_bytes([h[6], h[7]]),
        })
    }

    /// The header as the guest reads it.
    pub fn to_bytes(self) -> [u8; CONTROL_LEN] {
        let mut b = [0u8; CONTROL_LEN];
        b[0..4].copy_from_slice(&self.id.to_le_bytes());
        b[4..6].copy_from_slice(&self.event.to_le_bytes());
        b[6..8].copy_from_slice(&self.value.to_le_bytes());
        b
    }
}

/// The saved state of one port.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PortState {
    /// The port's configuration, which the restoring device must share.
    pub config: PortConfig,
    /// DEVICE_ADD was sent (or waits to be).
    pub added: bool,
    /// The driver answered PORT_READY(1).
    pub ready: bool,
    /// The guest has the port open.
    pub guest_open: bool,
    /// What the driver was told of the host side (PORT_OPEN sent or waiting).
    pub host_open: bool,
    /// Host input taken from the backend, waiting for the guest (at most
    /// [`INPUT_LIMIT`] bytes).
    pub input: Vec<u8>,
    /// The port's counters.
    pub stats: PortStats,
}

/// The saved state of the device model. The transport saves the queues
/// and the negotiated features ([`crate::virtio::pci::VirtioPciState`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VirtioConsoleState {
    /// Each port, in order.
    pub ports: Vec<PortState>,
    /// Control messages waiting for the driver, in order.
    pub control: Vec<ControlMessage>,
    /// The device's counters.
    pub stats: ConsoleStats,
}

/// What a [`PersistError`] of the device model names.
const PART: &str = "virtio-serial";

/// The kinds of trouble logged once each.
#[derive(Debug, Clone, Copy)]
enum Warn {
    ShortControl,
    UnknownEvent,
    BadPortId,
    DriverFailed,
    PortFailed,
    WritableOnTransmit,
    NoWritable,
    ControlBufferTooSmall,
    ControlOverflow,
    InputOverflow,
    ReadError,
    WriteError,
    OutputTooLong,
}

impl Warn {
    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// One port: its configuration, host end and negotiated state.
struct Port {
    config: PortConfig,
    backend: Box<dyn PortBackend>,
    added: bool,
    ready: bool,
    guest_open: bool,
    host_open: bool,
    input: VecDeque<u8>,
    stats: PortStats,
}

impl Port {
    /// Back to power-on: unknown to the driver, closed, nothing waiting.
    fn reset(&mut self) {
        self.added = false;
        self.ready = false;
        self.guest_open = false;
        self.host_open = false;
        self.input.clear();
    }
}

/// The virtio console device model (virtio-serial).
pub struct VirtioConsole {
    ports: Vec<Port>,
    /// Columns and rows, when the device offers VIRTIO_CONSOLE_F_SIZE.
    size: Option<(u16, u16)>,
    control: VecDeque<ControlMessage>,
    stats: ConsoleStats,
    kick: IoKick,
    /// Restored: `poll` serves what waited in the rings and in the device.
    resume: bool,
    warned: u32,
    scratch: Vec<u8>,
}

/// virtio-serial on PCI: what the machine plugs in.
pub type VirtioConsolePci = VirtioPci<VirtioConsole>;

impl VirtioConsole {
    /// A device with `ports`, numbered in order, each with its host end;
    /// `kick` wakes the I/O thread, which polls the device. Refuses no
    /// ports, more than [`MAX_PORTS`], names that are empty, longer than
    /// [`MAX_NAME_LEN`] bytes or hold a NUL, a `/` or a control character,
    /// and two ports with one name.
    pub fn new(ports: Vec<(PortConfig, Box<dyn PortBackend>)>, kick: IoKick) -> Result<Self, ConsoleConfigError> {
        if ports.is_empty() {
            return Err(ConsoleConfigError::NoPorts);
        }
        if ports.len() > MAX_PORTS {
            return Err(ConsoleConfigError::TooManyPorts(ports.len()));
        }
        for (i, (config, _)) in ports.iter().enumerate() {
            let Some(name) = &config.name else { continue };
            let problem = if name.is_empty() {
                Some("is empty")
            } else if name.len() > MAX_NAME_LEN {
                Some("is longer than 255 bytes")
            } else if name.chars().any(|c| c == '/' || c.is_control()) {
                Some("holds a '/' or a control character")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(ConsoleConfigError::BadName { port: i, name: name.clone(), problem });
            }
            if let Some(first) = ports[..i].iter().position(|(c, _)| c.name.as_ref() == Some(name)) {
                return Err(ConsoleConfigError::DuplicateName { first, second: i, name: name.clone() });
            }
        }
        let ports = ports
            .into_iter()
            .map(|(config, backend)| Port {
                config,
                backend,
                added: false,
                ready: false,
                guest_open: false,
                host_open: false,
                input: VecDeque::new(),
                stats: PortStats::default(),
            })
            .collect();
        Ok(Self {
            ports,
            size: None,
            control: VecDeque::new(),
            stats: ConsoleStats::default(),
            kick,
            resume: false,
            warned: 0,
            scratch: vec![0; SCRATCH_LEN],
        })
    }

    /// Offers VIRTIO_CONSOLE_F_SIZE, with a console of `cols` by `rows`.
    pub fn with_size(mut self, cols: u16, rows: u16) -> Self {
        self.size = Some((cols, rows));
        self
    }

    /// Changes the console size, on a device made [`VirtioConsole::with_size`]
    /// (others do not offer the feature, and this does nothing). The
    /// machine then signals the change ([`VirtioPci::config_changed`]).
    pub fn set_size(&mut self, cols: u16, rows: u16) {
        if let Some(size) = &mut self.size {
            *size = (cols, rows);
        }
    }

    /// The console size, if the device offers one: (cols, rows).
    pub fn size(&self) -> Option<(u16, u16)> {
        self.size
    }

    /// The number of ports (`max_nr_ports`).
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// The configuration of port `port`.
    pub fn port_config(&self, port: usize) -> Option<&PortConfig> {
        self.ports.get(port).map(|p| &p.config)
    }

    /// Whether the guest has port `port` open.
    pub fn guest_open(&self, port: usize) -> bool {
        self.ports.get(port).is_some_and(|p| p.guest_open)
    }

    /// Whether the driver set port `port` up (PORT_READY 1).
    pub fn port_ready(&self, port: usize) -> bool {
        self.ports.get(port).is_some_and(|p| p.ready)
    }

    /// The device's counters.
    pub fn stats(&self) -> ConsoleStats {
        self.stats
    }

    /// The counters of port `port`.
    pub fn port_stats(&self, port: usize) -> Option<PortStats> {
        self.ports.get(port).map(|p| p.stats)
    }

    /// Control messages waiting for the driver.
    pub fn pending_control(&self) -> Vec<ControlMessage> {
        self.control.iter().copied().collect()
    }

    /// The backends' wake fds, duplicated for the I/O thread (one per
    /// backend that has one).
    pub fn backend_wake_fds(&self) -> Vec<OwnedFd> {
        self.ports.iter().filter_map(|p| p.backend.wake_fd().and_then(|fd| fd.try_clone_to_owned().ok())).collect()
    }

    fn warn_once(&mut self, kind: Warn, what: impl FnOnce() -> String) {
        if self.warned & kind.bit() == 0 {
            self.warned |= kind.bit();
            tracing::warn!(target: "devices", "virtio-serial: {} (logged once)", what());
        }
    }

    /// Whether port `port` takes host input now.
    fn accepts_input(&self, port: usize, multiport: bool) -> bool {
        match self.ports.get(port) {
            Some(p) if multiport => p.guest_open,
            Some(_) => port == 0,
            None => false,
        }
    }

    /// Queues a control message for the driver (see the module's notes on
    /// merging).
    fn push_control(&mut self, m: ControlMessage) {
        if m.event == VIRTIO_CONSOLE_PORT_OPEN {
            self.control.retain(|c| !(c.event == VIRTIO_CONSOLE_PORT_OPEN && c.id == m.id));
        } else if self.control.contains(&m) {
            return;
        }
        if self.control.len() >= MAX_PENDING_CONTROL {
            self.stats.control_dropped += 1;
            self.warn_once(Warn::ControlOverflow, || format!("too many control messages wait; dropped {m:?}"));
            return;
        }
        self.control.push_back(m);
    }

    /// The bytes the driver receives for `m`.
    fn message_bytes(&self, m: &ControlMessage) -> Vec<u8> {
        let mut bytes = m.to_bytes().to_vec();
        if m.event == VIRTIO_CONSOLE_PORT_NAME {
            let name = usize::try_from(m.id).ok().and_then(|i| self.ports.get(i)).and_then(|p| p.config.name.as_ref());
            if let Some(name) = name {
                bytes.extend_from_slice(name.as_bytes());
            }
        }
        bytes
    }

    /// Runs `work` on queue `queue`: a broken ring marks the queue and
    /// makes the device need a reset; used chains are signalled.
    fn serve(
        &mut self,
        ctx: &mut Context<'_>,
        queue: usize,
        work: impl FnOnce(&mut Self, &mut Context<'_>, &mut bool) -> Result<(), QueueError>,
    ) {
        let mut used = false;
        if let Err(e) = work(self, ctx, &mut used) {
            self.stats.queue_errors += 1;
            if let Some(q) = ctx.queues.get_mut(queue) {
                q.mark_broken();
            }
            ctx.fail(&e);
            return;
        }
        if used {
            ctx.signal_used(queue);
        }
    }

    /// The next chain of queue `queue`; `None` when the queue is empty
    /// (after asking the driver to notify for the next one, and looking
    /// once more) or not usable.
    fn next_chain(ctx: &mut Context<'_>, queue: usize) -> Result<Option<DescriptorChain>, QueueError> {
        let mem = ctx.mem;
        let Some(q) = ctx.queues.get_mut(queue).filter(|q| q.is_usable()) else { return Ok(None) };
        loop {
            if let Some(chain) = q.pop(mem)? {
                return Ok(Some(chain));
            }
            // With EVENT_IDX, a chain made available before the driver
            // saw the new avail_event brings no notification.
            if q.rearm(mem)? == 0 {
                return Ok(None);
            }
        }
    }

    /// Returns chain `head` of queue `queue` with `len` bytes written.
    fn put_used(ctx: &mut Context<'_>, queue: usize, head: u16, len: u32) -> Result<(), QueueError> {
        let mem = ctx.mem;
        match ctx.queues.get_mut(queue) {
            Some(q) => q.add_used(mem, head, len),
            None => Ok(()),
        }
    }

    /// Reads port `port`'s backend into its waiting input, at most until
    /// [`INPUT_LIMIT`] bytes wait and `budget` bytes were read; returns how
    /// many bytes it took.
    fn pull(&mut self, port: usize, budget: &mut usize) -> usize {
        let mut took = 0;
        let Some(p) = self.ports.get_mut(port) else { return 0 };
        let mut error = None;
        loop {
            let room = INPUT_LIMIT.saturating_sub(p.input.len()).min(self.scratch.len()).min(*budget);
            if room == 0 {
                break;
            }
            match p.backend.read(&mut self.scratch[..room]) {
                Ok(0) => break,
                Ok(n) => {
                    let n = n.min(room);
                    p.input.extend(&self.scratch[..n]);
                    took += n;
                    *budget -= n;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    error = Some(format!("reading {} for port {port} failed: {e}", p.backend.debug_label()));
                    break;
                }
            }
        }
        if let Some(what) = error {
            self.warn_once(Warn::ReadError, || what);
        }
        took
    }

    /// Reads and drops what port `port`'s backend holds while its waiting
    /// input is full (at most `budget` bytes).
    fn drop_overflow(&mut self, port: usize, budget: &mut usize) {
        let Some(p) = self.ports.get_mut(port) else { return };
        let mut dropped = 0u64;
        while *budget > 0 {
            let len = self.scratch.len().min(*budget);
            match p.backend.read(&mut self.scratch[..len]) {
                Ok(0) => break,
                Ok(n) => {
                    let n = n.min(len);
                    dropped += n as u64;
                    *budget -= n;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if dropped > 0 {
            p.stats.rx_dropped += dropped;
            self.warn_once(Warn::InputOverflow, || {
                format!("port {port}: {INPUT_LIMIT} bytes of host input wait for the guest; {dropped} more dropped")
            });
        }
    }

    /// Moves host input of port `port` from its backend to the guest, as
    /// far as the guest takes it; what it does not take waits (up to
    /// [`INPUT_LIMIT`]) or is dropped.
    fn service_input(&mut self, port: usize, ctx: &mut Context<'_>) {
        let deliver = ctx.running && self.accepts_input(port, ctx.has(VIRTIO_CONSOLE_F_MULTIPORT));
        if !deliver {
            if let Some(p) = self.ports.get_mut(port).filter(|p| p.backend.keeps_input()) {
                // Only the wake-up is taken; the input waits in the backend.
                if let Err(e) = p.backend.read(&mut []) {
                    let what = format!("reading {} for port {port} failed: {e}", p.backend.debug_label());
                    self.warn_once(Warn::ReadError, || what);
                }
                return;
            }
        }
        let mut budget = MAX_READ_PER_CALL;
        loop {
            if deliver {
                let queue = receive_queue(port);
                self.serve(ctx, queue, |dev, ctx, used| dev.deliver(port, ctx, used));
            }
            if self.pull(port, &mut budget) == 0 {
                break;
            }
        }
        if self.ports.get(port).is_some_and(|p| p.input.len() >= INPUT_LIMIT) {
            self.drop_overflow(port, &mut budget);
        }
    }

    /// Fills port `port`'s receive buffers with its waiting input.
    fn deliver(&mut self, port: usize, ctx: &mut Context<'_>, used: &mut bool) -> Result<(), QueueError> {
        let queue = receive_queue(port);
        while self.ports.get(port).is_some_and(|p| !p.input.is_empty()) {
            let Some(chain) = Self::next_chain(ctx, queue)? else { break };
            if chain.writable_len() == 0 {
                Self::put_used(ctx, queue, chain.head, 0)?;
                *used = true;
                self.stats.bad_chains += 1;
                self.warn_once(Warn::NoWritable, || format!("a receive chain of port {port} without a writable byte"));
                continue;
            }
            let Some(p) = self.ports.get_mut(port) else { break };
            let (a, b) = p.input.as_slices();
            let mut written = chain.write_at(ctx.mem, 0, a)?;
            if written == a.len() {
                written += chain.write_at(ctx.mem, written as u64, b)?;
            }
            p.input.drain(..written);
            p.stats.rx_bytes += written as u64;
            // At most the chain's length, which fits in 32 bits.
            Self::put_used(ctx, queue, chain.head, u32::try_from(written).unwrap_or(u32::MAX))?;
            *used = true;
        }
        Ok(())
    }

    /// Writes what the guest sent on port `port` to its backend.
    fn transmit(&mut self, port: usize, ctx: &mut Context<'_>, used: &mut bool) -> Result<(), QueueError> {
        let queue = transmit_queue(port);
        while let Some(chain) = Self::next_chain(ctx, queue)? {
            if chain.writable.is_empty() {
                self.write_out(port, &chain, ctx)?;
            } else {
                self.stats.bad_chains += 1;
                self.warn_once(Warn::WritableOnTransmit, || {
                    format!("a transmit chain of port {port} with a device-writable buffer; dropped")
                });
            }
            // The buffers go back once they are read.
            Self::put_used(ctx, queue, chain.head, 0)?;
            *used = true;
        }
        Ok(())
    }

    /// Writes the readable bytes of `chain` to port `port`'s backend.
    fn write_out(&mut self, port: usize, chain: &DescriptorChain, ctx: &Context<'_>) -> Result<(), QueueError> {
        let total = chain.readable_len();
        let Some(p) = self.ports.get_mut(port) else { return Ok(()) };
        let mut sent = 0u64;
        let mut error = None;
        if p.backend.connected() {
            'chain: for b in &chain.readable {
                let len = u64::from(b.len);
                let mut off = 0u64;
                while off < len && sent < MAX_OUTPUT_CHAIN {
                    let n = (len - off).min(self.scratch.len() as u64).min(MAX_OUTPUT_CHAIN - sent) as usize;
                    let bad = QueueError::BadBuffer { addr: b.addr, len: b.len };
                    let addr = b.addr.checked_add(off).ok_or_else(|| bad.clone())?;
                    ctx.mem.read(addr, &mut self.scratch[..n]).map_err(|_| bad)?;
                    if let Err(e) = p.backend.write(&self.scratch[..n]) {
                        error = Some(format!("writing to {} for port {port} failed: {e}", p.backend.debug_label()));
                        break 'chain;
                    }
                    sent += n as u64;
                    off += n as u64;
                }
            }
        }
        p.stats.tx_bytes += sent;
        p.stats.tx_dropped += total - sent;
        match error {
            Some(what) => self.warn_once(Warn::WriteError, || format!("{what}; the output is dropped")),
            None if sent < total && sent == MAX_OUTPUT_CHAIN => self.warn_once(Warn::OutputTooLong, || {
                format!(
                    "a transmit chain of {total} bytes on port {port}; the bytes past {MAX_OUTPUT_CHAIN} are dropped"
                )
            }),
            None => {}
        }
        Ok(())
    }

    /// Takes the driver's control messages.
    fn control_transmit(&mut self, ctx: &mut Context<'_>, used: &mut bool) -> Result<(), QueueError> {
        let mut bytes = Vec::with_capacity(CONTROL_READ_LIMIT);
        while let Some(chain) = Self::next_chain(ctx, CONTROL_TX_QUEUE)? {
            bytes.clear();
            if chain.writable.is_empty() {
                chain.read_all(ctx.mem, &mut bytes, CONTROL_READ_LIMIT)?;
            }
            // The buffers go back once they are read.
            Self::put_used(ctx, CONTROL_TX_QUEUE, chain.head, 0)?;
            *used = true;
            self.stats.control_tx += 1;
            if !chain.writable.is_empty() {
                self.stats.bad_chains += 1;
                self.stats.control_refused += 1;
                self.warn_once(Warn::WritableOnTransmit, || {
                    "a control transmit chain with a device-writable buffer; dropped".into()
                });
                continue;
            }
            match ControlMessage::parse(&bytes) {
                Some(m) => self.handle_control(m),
                None => {
                    self.stats.control_refused += 1;
                    let len = chain.readable_len();
                    self.warn_once(Warn::ShortControl, || {
                        format!("a control message of {len} bytes, shorter than its {CONTROL_LEN}-byte header; ignored")
                    });
                }
            }
        }
        Ok(())
    }

    /// Acts on one message from the driver.
    fn handle_control(&mut self, m: ControlMessage) {
        match m.event {
            VIRTIO_CONSOLE_DEVICE_READY => {
                if m.value == 0 {
                    self.warn_once(Warn::DriverFailed, || "the driver failed to set the device up".into());
                    return;
                }
                for i in 0..self.ports.len() {
                    if !self.ports[i].added {
                        self.ports[i].added = true;
                        // At most MAX_PORTS.
                        let id = i as u32;
                        self.push_control(ControlMessage { id, event: VIRTIO_CONSOLE_DEVICE_ADD, value: 1 });
                    }
                }
            }
            VIRTIO_CONSOLE_PORT_READY | VIRTIO_CONSOLE_PORT_OPEN => {
                let count = self.ports.len();
                let Some(i) = usize::try_from(m.id).ok().filter(|&i| i < count) else {
                    self.stats.control_refused += 1;
                    self.warn_once(Warn::BadPortId, || {
                        format!(
                            "a control message (event {}) for port {}, past the {count} ports; ignored",
                            m.event, m.id
                        )
                    });
                    return;
                };
                if m.event == VIRTIO_CONSOLE_PORT_OPEN {
                    self.ports[i].guest_open = m.value != 0;
                } else if m.value == 0 {
                    self.ports[i].ready = false;
                    self.warn_once(Warn::PortFailed, || format!("the driver failed to set port {i} up"));
                } else {
                    self.on_port_ready(i, m.id);
                }
            }
            event => {
                self.stats.control_refused += 1;
                self.warn_once(Warn::UnknownEvent, || {
                    format!(
                        "a control message with event {event}, which the driver does not send (port {}); ignored",
                        m.id
                    )
                });
            }
        }
    }

    /// The driver set port `i` up: tells it what the port is and whether
    /// the host side is open.
    fn on_port_ready(&mut self, i: usize, id: u32) {
        self.ports[i].ready = true;
        if self.ports[i].config.kind == PortKind::Console {
            self.push_control(ControlMessage { id, event: VIRTIO_CONSOLE_CONSOLE_PORT, value: 1 });
        }
        if self.ports[i].config.name.is_some() {
            self.push_control(ControlMessage { id, event: VIRTIO_CONSOLE_PORT_NAME, value: 1 });
        }
        if self.ports[i].backend.connected() {
            self.ports[i].host_open = true;
            self.push_control(ControlMessage { id, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 });
        }
    }

    /// Tells the driver of the ports whose host side connected or
    /// disconnected since it was last told.
    fn announce_connections(&mut self) {
        for i in 0..self.ports.len() {
            let p = &self.ports[i];
            let connected = p.backend.connected();
            if p.ready && connected != p.host_open {
                self.ports[i].host_open = connected;
                // At most MAX_PORTS.
                let id = i as u32;
                self.push_control(ControlMessage { id, event: VIRTIO_CONSOLE_PORT_OPEN, value: u16::from(connected) });
            }
        }
    }

    /// Sends the waiting control messages, as far as the driver posted
    /// control receive buffers.
    fn control_receive(&mut self, ctx: &mut Context<'_>, used: &mut bool) -> Result<(), QueueError> {
        while let Some(&m) = self.control.front() {
            let Some(chain) = Self::next_chain(ctx, CONTROL_RX_QUEUE)? else { break };
            let bytes = self.message_bytes(&m);
            if chain.writable_len() < bytes.len() as u64 {
                Self::put_used(ctx, CONTROL_RX_QUEUE, chain.head, 0)?;
                *used = true;
                self.stats.bad_chains += 1;
                let room = chain.writable_len();
                self.warn_once(Warn::ControlBufferTooSmall, || {
                    format!("a control receive buffer of {room} bytes, too small for a message of {}", bytes.len())
                });
                continue;
            }
            let written = chain.write_at(ctx.mem, 0, &bytes)?;
            // At most 8 bytes and a name of MAX_NAME_LEN.
            Self::put_used(ctx, CONTROL_RX_QUEUE, chain.head, written as u32)?;
            *used = true;
            self.control.pop_front();
            self.stats.control_rx += 1;
        }
        Ok(())
    }

    /// Sends the waiting control messages (with MULTIPORT).
    fn flush_control(&mut self, ctx: &mut Context<'_>) {
        if ctx.running && ctx.has(VIRTIO_CONSOLE_F_MULTIPORT) && !self.control.is_empty() {
            self.serve(ctx, CONTROL_RX_QUEUE, |dev, ctx, used| dev.control_receive(ctx, used));
        }
    }

    /// Everything the device can do now: announce the host side's
    /// connections, send control messages, move host input to the guest;
    /// then announce again what reading the backends changed (a socket
    /// accepts its client, or sees it hang up, when it is read).
    fn service(&mut self, ctx: &mut Context<'_>) {
        self.announce_and_flush(ctx);
        for port in 0..self.ports.len() {
            self.service_input(port, ctx);
        }
        self.announce_and_flush(ctx);
    }

    /// Announces the host side's connection changes and sends the waiting
    /// control messages.
    fn announce_and_flush(&mut self, ctx: &mut Context<'_>) {
        if ctx.running && ctx.has(VIRTIO_CONSOLE_F_MULTIPORT) {
            self.announce_connections();
        }
        self.flush_control(ctx);
    }

    /// Serves every queue the driver may have filled (after a restore).
    fn serve_all_queues(&mut self, ctx: &mut Context<'_>) {
        let multiport = ctx.has(VIRTIO_CONSOLE_F_MULTIPORT);
        if multiport {
            self.serve(ctx, CONTROL_TX_QUEUE, |dev, ctx, used| dev.control_transmit(ctx, used));
        }
        let ports = if multiport { self.ports.len() } else { 1 };
        for port in 0..ports {
            let queue = transmit_queue(port);
            self.serve(ctx, queue, |dev, ctx, used| dev.transmit(port, ctx, used));
        }
    }
}

impl Persist for VirtioConsole {
    type State = VirtioConsoleState;

    fn save(&self) -> VirtioConsoleState {
        VirtioConsoleState {
            ports: self
                .ports
                .iter()
                .map(|p| PortState {
                    config: p.config.clone(),
                    added: p.added,
                    ready: p.ready,
                    guest_open: p.guest_open,
                    host_open: p.host_open,
                    input: p.input.iter().copied().collect(),
                    stats: p.stats,
                })
                .collect(),
            control: self.control.iter().copied().collect(),
            stats: self.stats,
        }
    }

    /// Takes a state of a device with the same ports (number, kinds and
    /// names), whose waiting input and control messages fit the device's
    /// bounds and name its ports. The device then serves, at its next poll,
    /// what waited: the I/O thread is kicked. A backend whose connection
    /// differs from what the driver was told is announced then.
    fn restore(&mut self, s: &VirtioConsoleState) -> Result<(), PersistError> {
        PersistError::check_len(PART, "ports", s.ports.len(), self.ports.len())?;
        for (i, (port, ps)) in self.ports.iter().zip(&s.ports).enumerate() {
            PersistError::check(ps.config == port.config, PART, "ports", || {
                format!("has port {i} as {:?}, where this device has {:?}", ps.config, port.config)
            })?;
            PersistError::check_max(PART, "input", ps.input.len(), INPUT_LIMIT)?;
        }
        PersistError::check_max(PART, "control", s.control.len(), MAX_PENDING_CONTROL)?;
        for m in &s.control {
            let port = usize::try_from(m.id).ok().and_then(|i| self.ports.get(i));
            let fits = match (m.event, port) {
                (_, None) => false,
                (VIRTIO_CONSOLE_DEVICE_ADD, Some(_)) => true,
                (VIRTIO_CONSOLE_PORT_OPEN, Some(_)) => m.value <= 1,
                (VIRTIO_CONSOLE_CONSOLE_PORT, Some(p)) => p.config.kind == PortKind::Console,
                (VIRTIO_CONSOLE_PORT_NAME, Some(p)) => p.config.name.is_some(),
                _ => false,
            };
            PersistError::check(fits, PART, "control", || {
                format!("holds {m:?}, which this device does not send for its {} ports", self.ports.len())
            })?;
        }
        for (port, ps) in self.ports.iter_mut().zip(&s.ports) {
            port.added = ps.added;
            port.ready = ps.ready;
            port.guest_open = ps.guest_open;
            port.host_open = ps.host_open;
            port.input = ps.input.iter().copied().collect();
            port.stats = ps.stats;
        }
        self.control = s.control.iter().copied().collect();
        self.stats = s.stats;
        self.resume = true;
        self.kick.kick();
        Ok(())
    }
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_CONSOLE
    }

    fn debug_label(&self) -> String {
        format!("virtio-serial ({} ports)", self.ports.len())
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        (0..2 * self.ports.len() + 2)
            .map(|q| if q == CONTROL_RX_QUEUE || q == CONTROL_TX_QUEUE { CONTROL_QUEUE_SIZE } else { PORT_QUEUE_SIZE })
            .collect()
    }

    fn features(&self) -> u64 {
        let size = if self.size.is_some() { VIRTIO_CONSOLE_F_SIZE } else { 0 };
        size | VIRTIO_CONSOLE_F_MULTIPORT
            | VIRTIO_CONSOLE_F_EMERG_WRITE
            | VIRTIO_F_VERSION_1
            | VIRTIO_F_EVENT_IDX
            | VIRTIO_F_INDIRECT_DESC
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        let (cols, rows) = self.size.unwrap_or((0, 0));
        let mut cfg = [0u8; CONFIG_LEN];
        cfg[0..2].copy_from_slice(&cols.to_le_bytes());
        cfg[2..4].copy_from_slice(&rows.to_le_bytes());
        // At most MAX_PORTS.
        cfg[4..8].copy_from_slice(&(self.ports.len() as u32).to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset.checked_add(i).and_then(|o| cfg.get(o)).copied().unwrap_or(0);
        }
    }

    /// A write that covers the low byte of `emerg_wr` sends it to port 0's
    /// backend; the other fields are read-only.
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let Some(at) = EMERG_WR.checked_sub(offset) else { return };
        let Some(&byte) = data.get(at) else { return };
        self.stats.emergency_bytes += 1;
        let Some(p) = self.ports.first_mut() else { return };
        match p.backend.write(&[byte]) {
            Ok(()) => p.stats.tx_bytes += 1,
            Err(e) => {
                p.stats.tx_dropped += 1;
                let what = format!("an emergency write to {} failed: {e}", p.backend.debug_label());
                self.warn_once(Warn::WriteError, || what);
            }
        }
    }

    fn reset(&mut self) {
        for p in &mut self.ports {
            p.reset();
        }
        self.control.clear();
        self.resume = false;
    }

    fn notify(&mut self, queue: usize, ctx: &mut Context<'_>) {
        if !ctx.running {
            return;
        }
        let multiport = ctx.has(VIRTIO_CONSOLE_F_MULTIPORT);
        match role(queue, self.ports.len()) {
            Some(Role::Transmit(port)) if multiport || port == 0 => {
                self.serve(ctx, queue, |dev, ctx, used| dev.transmit(port, ctx, used));
            }
            Some(Role::Receive(port)) if multiport || port == 0 => {
                self.service_input(port, ctx);
                self.announce_and_flush(ctx);
            }
            Some(Role::ControlTransmit) if multiport => {
                self.serve(ctx, queue, |dev, ctx, used| dev.control_transmit(ctx, used));
                // Ports the guest just opened take their waiting input.
                self.service(ctx);
            }
            Some(Role::ControlReceive) => self.flush_control(ctx),
            _ => {}
        }
    }

    fn poll(&mut self, ctx: &mut Context<'_>, _now: Instant) -> Option<Duration> {
        if self.resume && ctx.running {
            self.resume = false;
            self.serve_all_queues(ctx);
        }
        // Backends are read even while the driver is away, so their
        // readiness is consumed; the input waits or is dropped.
        self.service(ctx);
        None
    }
}

/// The I/O thread polls the device when a backend's wake fd fires (or it
/// is kicked). The console hands out no doorbells: its notifications
/// arrive as register writes.
impl IoPoll for VirtioPci<VirtioConsole> {
    fn poll(&mut self, now: Instant) -> Option<Duration> {
        VirtioPci::poll(self, now)
    }

    fn io_label(&self) -> String {
        self.device().debug_label()
    }
}

pub mod backends;

#[cfg(test)]
mod tests;
