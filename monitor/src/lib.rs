//! QEMU-compatible machine monitors.
//!
//! This crate implements the two monitor protocols of `qemu-system-x86_64`
//! (as of QEMU 7.2) on top of a machine-provided [`Backend`]:
//!
//! * **QMP** (`-qmp`, `-mon mode=control`): the JSON protocol. Greeting,
//!   capabilities negotiation (no optional capabilities are offered), `id`
//!   echo, QEMU's error classes and wording for malformed requests, a
//!   resynchronising JSON stream parser, bounded message size (1 MiB) and
//!   asynchronous events with timestamps ([`Monitor::emit`]). Supported
//!   commands: `qmp_capabilities`, `query-commands`, `query-version`,
//!   `query-status`, `query-name`, `query-kvm`, `query-cpus-fast`,
//!   `query-block`, `query-migrate`, `stop`, `cont`, `system_reset`,
//!   `system_powerdown`, `system_wakeup`, `inject-nmi`, `quit`, `screendump`,
//!   `eject`, `blockdev-change-medium`, `migrate`, `migrate_cancel`,
//!   `migrate-set-capabilities`, `set_password`, `expire_password`,
//!   `human-monitor-command`.
//! * **HMP** (`-monitor`, `-mon mode=readline`, `-serial mon:stdio`): the
//!   human line protocol with prompt `(qemu) `. Supported commands: `help`,
//!   `info status|version|name|kvm|block|snapshots|cpus|migrate`, `stop`,
//!   `cont`/`c`, `system_reset`, `system_powerdown`, `quit`/`q`, `savevm`,
//!   `loadvm`, `delvm`, `migrate [-d] URI`, `migrate_cancel`,
//!   `screendump [-f png|ppm] FILE`, `eject [-f] DEV`,
//!   `change DEV FILE [FORMAT [MODE]]`, `change vnc password PASS`,
//!   `set_password vnc PASS`, `expire_password vnc TIME`, `nmi`.
//!
//! Transports: Unix and TCP listening sockets and standard input/output
//! ([`Monitor::listen`]); HMP also runs on any stream pair
//! ([`Monitor::run_hmp`]), and on a raw terminal that a serial console
//! shares ([`HmpTerminal`], `-serial mon:stdio`). Each listener
//! serves one client at a time, like a QEMU socket chardev: a second
//! connection waits in the backlog until the first one ends.
//!
//! Both protocols translate requests into the same validated [`Command`]
//! values; the backend never sees JSON input.
#![forbid(unsafe_code)]

mod chardev;
mod hmp;
mod json;
mod qmp;
#[cfg(test)]
mod tests;

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{json, Map, Value};

pub use chardev::{parse_chardev, parse_chardev_uri, parse_mon};
pub use hmp::{local_time, HmpTerminal};

/// A monitor command, validated; both QMP and HMP produce these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `query-status` / `info status`: return `{"running": bool, "singlestep": false, "status": "running"|"paused"|...}`.
    QueryStatus,
    /// `query-version` / `info version`. Answered by the monitor itself; never reaches the backend.
    QueryVersion,
    /// `query-commands`. Answered by the monitor itself; never reaches the backend.
    QueryCommands,
    /// `query-cpus-fast` / `info cpus`: return `[{"cpu-index": N, "thread-id": N, "target": "x86_64", ...}]`.
    QueryCpusFast,
    /// `query-block` / `info block`: return QEMU's `BlockInfo` list
    /// (`device`, `qdev`, `removable`, `locked`, `tray_open`, `inserted` {`file`, `drv`, `ro`, ...}).
    QueryBlock,
    /// `query-name` / `info name`: return `{}` or `{"name": "..."}`.
    QueryName,
    /// `query-kvm` / `info kvm`: return `{"enabled": bool, "present": bool}`.
    QueryKvm,
    /// `stop`: pause the guest.
    Stop,
    /// `cont`: resume the guest.
    Cont,
    /// `system_reset`.
    SystemReset,
    /// `system_powerdown`: ACPI power button.
    SystemPowerdown,
    /// `system_wakeup`: wake a suspended guest.
    SystemWakeup,
    /// `inject-nmi` / `nmi`.
    InjectNmi,
    /// `quit`: end the process. The monitor sends its reply before calling
    /// the backend with this command, so the backend may exit right away.
    Quit,
    /// `screendump`.
    Screendump {
        /// Output file.
        filename: String,
        /// `"ppm"` or `"png"`; `None` means ppm.
        format: Option<String>,
        /// Display device id.
        device: Option<String>,
    },
    /// `eject`.
    Eject {
        /// Block backend name (deprecated form).
        device: Option<String>,
        /// qdev id of the device.
        id: Option<String>,
        /// Eject even if the guest locked the tray.
        force: bool,
    },
    /// `blockdev-change-medium` / `change DEV FILE`.
    BlockdevChangeMedium {
        /// Block backend name.
        device: Option<String>,
        /// qdev id of the device.
        id: Option<String>,
        /// Image to insert.
        filename: String,
        /// Image format, e.g. `"raw"`.
        format: Option<String>,
        /// `"retain"`, `"read-only"` or `"read-write"`.
        read_only_mode: Option<String>,
    },
    /// `migrate`: start an outgoing migration to `uri`.
    Migrate {
        /// Destination, e.g. `exec:cat > file` or `tcp:host:port`.
        uri: String,
    },
    /// `migrate-incoming`: take the migration `-incoming defer` waits for
    /// from `uri`.
    MigrateIncoming {
        /// Where it comes from, e.g. `tcp:0:4444` or `exec:cat file`.
        uri: String,
    },
    /// `query-migrate` / `info migrate`: return QEMU's `MigrationInfo` (`status`, `total-time`, `ram`, ...).
    QueryMigrate,
    /// `migrate_cancel`.
    MigrateCancel,
    /// `migrate-set-capabilities`.
    MigrateSetCapabilities {
        /// (capability name, state) pairs.
        capabilities: Vec<(String, bool)>,
    },
    /// `migrate-set-parameters`: the parameters given (QEMU's names), each
    /// a non-negative integer.
    MigrateSetParameters {
        /// (parameter name, value) pairs: `downtime-limit` (ms),
        /// `max-bandwidth` (bytes per second), `cpu-throttle-initial`,
        /// `cpu-throttle-increment` (percent).
        parameters: Vec<(String, u64)>,
    },
    /// HMP `savevm NAME` (a generated name when none is given).
    SaveVm {
        /// Snapshot tag.
        name: String,
    },
    /// HMP `loadvm NAME`.
    LoadVm {
        /// Snapshot tag.
        name: String,
    },
    /// HMP `delvm NAME`.
    DelVm {
        /// Snapshot tag or id.
        name: String,
    },
    /// HMP `info snapshots`: return a list of QEMU `SnapshotInfo` objects
    /// (`id`, `name`, `vm-state-size`, `date-sec`, `date-nsec`, `vm-clock-sec`, `vm-clock-nsec`)
    /// or a preformatted string.
    InfoSnapshots,
    /// `set_password`.
    SetPassword {
        /// `"vnc"` or `"spice"`.
        protocol: String,
        /// The new password.
        password: String,
    },
    /// `expire_password`.
    ExpirePassword {
        /// `"vnc"` or `"spice"`.
        protocol: String,
        /// `"now"`, `"never"`, `"+SECONDS"` or an absolute UNIX time.
        time: String,
    },
}

/// QMP error classes used by this crate (QEMU's `QapiErrorClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The generic class.
    GenericError,
    /// Unknown command, or a command not available now.
    CommandNotFound,
    /// The named device does not exist.
    DeviceNotFound,
    /// The device exists but is not active.
    DeviceNotActive,
    /// KVM lacks a needed capability.
    KVMMissingCap,
    /// A migration was expected but none is running.
    MigrationExpected,
}

impl ErrorClass {
    /// The class name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
            ErrorClass::MigrationExpected => "MigrationExpected",
        }
    }
}

/// A QMP error: `{"error": {"class": ..., "desc": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{desc}")]
pub struct QmpError {
    /// Error class.
    pub class: ErrorClass,
    /// Human-readable description.
    pub desc: String,
}

impl QmpError {
    /// A `GenericError` with `desc`.
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError { class: ErrorClass::GenericError, desc: desc.into() }
    }

    /// An error of `class` with `desc`.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> Self {
        QmpError { class, desc: desc.into() }
    }

    fn to_json(&self) -> Value {
        json!({"class": self.class.as_str(), "desc": self.desc})
    }
}

/// The machine side of the monitor.
pub trait Backend: Send + Sync + 'static {
    /// Runs `cmd`; `Ok` is the QMP `return` value (`{}` when there is
    /// nothing to return), `Err` a QMP error. Called from monitor threads;
    /// may block. [`Command::QueryVersion`] and [`Command::QueryCommands`]
    /// never reach it.
    fn execute(&self, cmd: Command) -> Result<Value, QmpError>;
}

/// Asynchronous QMP events, serialised as QEMU does
/// (`{"event": NAME, "data": {...}, "timestamp": {"seconds": S, "microseconds": U}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `STOP`: the guest paused.
    Stop,
    /// `RESUME`: the guest resumed.
    Resume,
    /// `SHUTDOWN`: `reason` is QEMU's `ShutdownCause` (`"guest-shutdown"`, `"host-qmp-quit"`, `"host-signal"`, ...).
    Shutdown {
        /// Whether the guest caused it.
        guest: bool,
        /// QEMU `ShutdownCause`.
        reason: String,
    },
    /// `POWERDOWN`: the power button was pressed.
    Powerdown,
    /// `RESET`: `reason` as for [`Event::Shutdown`] (`"guest-reset"`, `"host-qmp-system-reset"`, ...).
    Reset {
        /// Whether the guest caused it.
        guest: bool,
        /// QEMU `ShutdownCause`.
        reason: String,
    },
    /// `WAKEUP`: the guest woke from suspend.
    Wakeup,
    /// `SUSPEND`: the guest entered S3.
    Suspend,
    /// `MIGRATION`: migration status changed (`"setup"`, `"active"`, `"completed"`, `"failed"`, `"cancelled"`).
    Migration {
        /// New status.
        status: String,
    },
    /// `DEVICE_TRAY_MOVED`.
    DeviceTrayMoved {
        /// Block backend name (may be empty).
        device: String,
        /// qdev id or QOM path.
        id: String,
        /// New tray state.
        tray_open: bool,
    },
    /// Any other event: name and optional data object.
    Other {
        /// Event name, e.g. `"GUEST_PANICKED"`.
        name: String,
        /// `data` member, if any.
        data: Option<Value>,
    },
}

impl Event {
    /// The event's name and `data` member.
    fn parts(&self) -> (&str, Option<Value>) {
        match self {
            Event::Stop => ("STOP", None),
            Event::Resume => ("RESUME", None),
            Event::Shutdown { guest, reason } => ("SHUTDOWN", Some(json!({"guest": guest, "reason": reason}))),
            Event::Powerdown => ("POWERDOWN", None),
            Event::Reset { guest, reason } => ("RESET", Some(json!({"guest": guest, "reason": reason}))),
            Event::Wakeup => ("WAKEUP", None),
            Event::Suspend => ("SUSPEND", None),
            Event::Migration { status } => ("MIGRATION", Some(json!({"status": status}))),
            Event::DeviceTrayMoved { device, id, tray_open } => {
                ("DEVICE_TRAY_MOVED", Some(json!({"device": device, "id": id, "tray-open": tray_open})))
            }
            Event::Other { name, data } => (name.as_str(), data.clone()),
        }
    }

    /// The event as a QMP JSON object, timestamped now.
    pub fn to_json(&self) -> Value {
        let (name, data) = self.parts();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut m = Map::new();
        m.insert("event".into(), Value::from(name));
        if let Some(d) = data {
            m.insert("data".into(), d);
        }
        m.insert("timestamp".into(), json!({"seconds": now.as_secs(), "microseconds": now.subsec_micros()}));
        Value::Object(m)
    }
}

/// Where a monitor listens or talks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix stream socket at this path.
    Unix(std::path::PathBuf),
    /// A TCP socket: host (empty means all interfaces) and port (0 picks one).
    Tcp(String, u16),
    /// The process's standard input and output.
    Stdio,
}

/// A parsed socket/stdio character device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChardevSpec {
    /// Where.
    pub endpoint: Endpoint,
    /// Listen for connections (always true for sockets: client mode is refused).
    pub server: bool,
    /// Block in [`Monitor::listen`] until the first client connects.
    pub wait: bool,
}

/// The protocol a monitor speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// QMP (JSON); `pretty` prints replies and events indented.
    Control {
        /// Pretty-print JSON output.
        pretty: bool,
    },
    /// HMP (human, line based).
    Readline,
}

/// The version reported by `query-version`, the QMP greeting and `info version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// QEMU-compatible major version (7).
    pub major: u32,
    /// Minor version (2).
    pub minor: u32,
    /// Micro version (0).
    pub micro: u32,
    /// Free-form package string, e.g. `" (ferrovm 0.1.0)"`.
    pub package: String,
}

impl Version {
    /// The QEMU version this crate's protocol behaviour matches, 7.2.0, with `package`.
    pub fn qemu_7_2(package: impl Into<String>) -> Self {
        Version { major: 7, minor: 2, micro: 0, package: package.into() }
    }

    fn to_json(&self) -> Value {
        json!({
            "qemu": {"major": self.major, "minor": self.minor, "micro": self.micro},
            "package": self.package,
        })
    }
}

/// Largest QMP message accepted; a longer one is answered with an error and the connection closed.
pub const MAX_QMP_MESSAGE: usize = 1 << 20;
/// Events queued for a slow QMP client before further events to it are dropped.
const EVENT_QUEUE: usize = 1024;

/// The migration parameters the monitors take (QMP's
/// `migrate-set-parameters`, HMP's `migrate_set_parameter`), QEMU's names,
/// each a non-negative integer ([`Command::MigrateSetParameters`]).
const MIGRATION_PARAMETERS: [&str; 4] =
    ["downtime-limit", "max-bandwidth", "cpu-throttle-initial", "cpu-throttle-increment"];

/// Output queue of one QMP client, shared with [`Monitor::emit`].
struct QmpClient {
    id: u64,
    negotiated: AtomicBool,
    pretty: bool,
    tx: SyncSender<Out>,
}

enum Out {
    Line(String),
    /// Acknowledged once everything before it has been written and flushed.
    Flush(SyncSender<()>),
}

impl QmpClient {
    fn encode(&self, v: &Value) -> String {
        let mut s = if self.pretty { serde_json::to_string_pretty(v) } else { serde_json::to_string(v) }
            .unwrap_or_else(|_| String::from("{}"));
        s.push('\n');
        s
    }
}

/// Where a QMP session writes; events go through [`QmpClient`] queues.
trait QmpOut {
    /// Sends a reply; false when the client is gone.
    fn reply(&self, v: &Value) -> bool;
    /// Waits until everything sent so far is written.
    fn flush(&self);
    /// Marks the client as past capabilities negotiation (events start flowing).
    fn set_negotiated(&self);
}

impl QmpOut for QmpClient {
    fn reply(&self, v: &Value) -> bool {
        self.tx.send(Out::Line(self.encode(v))).is_ok()
    }

    fn flush(&self) {
        let (ack_tx, ack_rx) = sync_channel(1);
        if self.tx.send(Out::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(Duration::from_secs(5));
        }
    }

    fn set_negotiated(&self) {
        self.negotiated.store(true, Ordering::SeqCst);
    }
}

/// The running monitors of a VM.
pub struct Monitor {
    backend: Arc<dyn Backend>,
    version: Version,
    clients: Mutex<Vec<Arc<QmpClient>>>,
    next_id: AtomicU64,
}

impl Monitor {
    /// A monitor set with no listeners yet.
    pub fn new(backend: Arc<dyn Backend>, version: Version) -> Arc<Monitor> {
        Arc::new(Monitor { backend, version, clients: Mutex::new(Vec::new()), next_id: AtomicU64::new(1) })
    }

    /// Starts a monitor on `spec` speaking `mode`.
    ///
    /// Binds now, so errors such as a path in use or a busy port come back
    /// before the VM starts. An existing Unix socket path is reused only if
    /// nothing answers on it (a stale socket); any other existing file is
    /// refused. The socket gets the process umask's permissions. With
    /// `wait`, says so on standard error and blocks until the first client
    /// connects. A TCP listener on a non-loopback address prints a warning
    /// on standard error.
    ///
    /// Returns the bound TCP address (useful with port 0), `None` otherwise.
    pub fn listen(self: &Arc<Self>, spec: &ChardevSpec, mode: Mode) -> io::Result<Option<SocketAddr>> {
        match &spec.endpoint {
            Endpoint::Stdio => {
                let me = Arc::clone(self);
                std::thread::Builder::new().name("monitor-stdio".into()).spawn(move || {
                    let stdin = io::stdin();
                    let r = BufReader::new(stdin.lock());
                    let _ = me.run_stream(r, io::stdout(), mode);
                })?;
                Ok(None)
            }
            Endpoint::Unix(path) => {
                let listener = bind_unix(path)?;
                let first = if spec.wait {
                    eprintln!("ferrovm: waiting for connection on: unix:{},server=on", path.display());
                    Some(listener.accept()?.0)
                } else {
                    None
                };
                let me = Arc::clone(self);
                std::thread::Builder::new().name("monitor-unix".into()).spawn(move || {
                    if let Some(s) = first {
                        me.serve_unix(s, mode);
                    }
                    loop {
                        match listener.accept() {
                            Ok((s, _)) => me.serve_unix(s, mode),
                            Err(e) => {
                                tracing::warn!("monitor: accept failed: {e}");
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                })?;
                Ok(None)
            }
            Endpoint::Tcp(host, port) => {
                let host = if host.is_empty() { "0.0.0.0" } else { host.as_str() };
                let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
                let addrs: Vec<SocketAddr> = (host, *port).to_socket_addrs()?.collect();
                let listener = TcpListener::bind(&addrs[..])?;
                let local = listener.local_addr()?;
                if !local.ip().is_loopback() {
                    eprintln!(
                        "ferrovm: warning: the monitor on {local} accepts anyone who can reach it; \
                         it can stop, read and kill the VM"
                    );
                }
                let first = if spec.wait {
                    eprintln!("ferrovm: waiting for connection on: tcp:{local},server=on");
                    Some(listener.accept()?.0)
                } else {
                    None
                };
                let me = Arc::clone(self);
                std::thread::Builder::new().name("monitor-tcp".into()).spawn(move || {
                    if let Some(s) = first {
                        me.serve_tcp(s, mode);
                    }
                    loop {
                        match listener.accept() {
                            Ok((s, _)) => me.serve_tcp(s, mode),
                            Err(e) => {
                                tracing::warn!("monitor: accept failed: {e}");
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                })?;
                Ok(Some(local))
            }
        }
    }

    fn serve_unix(&self, s: UnixStream, mode: Mode) {
        match s.try_clone() {
            Ok(r) => {
                let _ = self.run_stream(BufReader::new(r), s, mode);
            }
            Err(e) => tracing::warn!("monitor: {e}"),
        }
    }

    fn serve_tcp(&self, s: TcpStream, mode: Mode) {
        let _ = s.set_nodelay(true);
        match s.try_clone() {
            Ok(r) => {
                let _ = self.run_stream(BufReader::new(r), s, mode);
            }
            Err(e) => tracing::warn!("monitor: {e}"),
        }
    }

    /// Runs one session of `mode` on a stream pair until it ends.
    fn run_stream<R, W>(&self, r: R, w: W, mode: Mode) -> io::Result<()>
    where
        R: BufRead,
        W: Write + Send + 'static,
    {
        match mode {
            Mode::Readline => self.run_hmp(r, w),
            Mode::Control { pretty } => self.run_qmp(r, w, pretty),
        }
    }

    /// Runs a QMP session on a stream pair: greeting, then requests until
    /// the input ends, `quit`, or an oversized message.
    pub fn run_qmp<R, W>(&self, r: R, w: W, pretty: bool) -> io::Result<()>
    where
        R: BufRead,
        W: Write + Send + 'static,
    {
        let (tx, rx) = sync_channel::<Out>(EVENT_QUEUE);
        let writer = std::thread::Builder::new().name("qmp-writer".into()).spawn(move || write_loop(rx, w))?;
        let client = Arc::new(QmpClient {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            negotiated: AtomicBool::new(false),
            pretty,
            tx,
        });
        self.clients.lock().push(Arc::clone(&client));
        let result = qmp::session(self, r, &*client);
        self.clients.lock().retain(|c| c.id != client.id);
        drop(client);
        let _ = writer.join();
        result
    }

    /// Waits until each QMP client's writer has written what was queued
    /// for it (up to 5 s each): the events of a run's end reach the
    /// clients before the process exits.
    pub fn flush_events(&self) {
        let clients: Vec<Arc<QmpClient>> = self.clients.lock().clone();
        for c in clients {
            c.flush();
        }
    }

    /// Sends `event` to every QMP client past capabilities negotiation.
    /// Never blocks: a client whose queue is full misses the event.
    pub fn emit(&self, event: Event) {
        let v = event.to_json();
        let clients: Vec<Arc<QmpClient>> = self.clients.lock().clone();
        for c in clients {
            if !c.negotiated.load(Ordering::SeqCst) {
                continue;
            }
            match c.tx.try_send(Out::Line(c.encode(&v))) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => tracing::warn!("monitor: QMP client too slow, event dropped"),
            }
        }
    }

    /// HMP on an existing stream pair (stdio, or a serial console's
    /// monitor mux): prints the banner, then runs commands with prompt
    /// `(qemu) ` until the input ends or `quit` (after which the backend's
    /// [`Command::Quit`] has been called).
    pub fn run_hmp<R: BufRead, W: Write>(&self, r: R, w: W) -> io::Result<()> {
        hmp::session(self, r, w)
    }

    /// Runs one HMP command line and returns its output (what
    /// `human-monitor-command` returns; lines end in `\r\n`). `quit`
    /// calls the backend's [`Command::Quit`] before returning.
    pub fn hmp_command(&self, line: &str) -> String {
        match hmp::run_line(self, line) {
            hmp::LineResult::Output(s) => s,
            hmp::LineResult::Quit => {
                let _ = self.backend.execute(Command::Quit);
                String::new()
            }
        }
    }

    /// Runs `cmd`, answering the monitor's own queries.
    fn execute(&self, cmd: Command) -> Result<Value, QmpError> {
        match cmd {
            Command::QueryVersion => Ok(self.version.to_json()),
            Command::QueryCommands => Ok(Value::Array(qmp::COMMANDS.iter().map(|n| json!({"name": n})).collect())),
            other => self.backend.execute(other),
        }
    }
}

fn write_loop<W: Write>(rx: Receiver<Out>, mut w: W) {
    let mut broken = false;
    while let Ok(m) = rx.recv() {
        match m {
            Out::Line(s) => {
                if !broken && w.write_all(s.as_bytes()).and_then(|_| w.flush()).is_err() {
                    broken = true;
                }
            }
            Out::Flush(ack) => {
                let _ = w.flush();
                let _ = ack.send(());
            }
        }
    }
}

/// Binds a Unix socket, replacing a stale socket but never another file.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: Address already in use", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket; refusing to replace it", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Feeds arbitrary bytes through the QMP session logic (greeting,
/// negotiation, parsing, validation, dispatch) with an in-memory stream and
/// a backend that accepts every command. For fuzzing: must never panic.
pub fn fuzz_qmp_input(data: &[u8]) {
    struct Null;
    impl Backend for Null {
        fn execute(&self, cmd: Command) -> Result<Value, QmpError> {
            match cmd {
                Command::QueryStatus => Ok(json!({"running": true, "singlestep": false, "status": "running"})),
                Command::QueryBlock | Command::QueryCpusFast | Command::InfoSnapshots => Ok(json!([])),
                _ => Ok(json!({})),
            }
        }
    }
    struct Sink(Mutex<usize>);
    impl QmpOut for Sink {
        fn reply(&self, v: &Value) -> bool {
            let n = serde_json::to_string(v).map(|s| s.len()).unwrap_or(0);
            *self.0.lock() += n;
            true
        }
        fn flush(&self) {}
        fn set_negotiated(&self) {}
    }
    let mon = Monitor::new(Arc::new(Null), Version::qemu_7_2(""));
    let sink = Sink(Mutex::new(0));
    let _ = qmp::session(&mon, data, &sink);
}
