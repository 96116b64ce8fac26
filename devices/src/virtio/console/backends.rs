//! The host ends a virtio-serial port can have, like QEMU's character
//! devices behind `virtconsole` and `virtserialport`:
//!
//! ```text
//! socket:PATH              -chardev socket,path=PATH,server=on,wait=off   UnixSocketPort::listen
//! socket:PATH,server=off   -chardev socket,path=PATH                      UnixSocketPort::connect
//! file:PATH                -chardev file,path=PATH (truncated)            FilePort::open
//! file:PATH,append=on      -chardev file,path=PATH,append=on              FilePort::open
//! null                     -chardev null                                  NullPort
//! pty[:LABEL]              -chardev pty,id=LABEL                          PtyPort::open
//! stdio, mon:stdio         -chardev stdio[,mux=on]                        StdioPort::open
//! ```
//!
//! [`PortBackendSpec`] parses these and opens the backend. A comma in a
//! path is written twice (`,,`), as in QEMU's options.
//!
//! Every backend does its I/O without blocking, and a host error reaches
//! the device as an [`io::Error`] (which it counts and logs), never as a
//! panic. Writing to a socket whose peer went away relies on `SIGPIPE`
//! being ignored, as it is in every Rust program by default.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::Mutex;

use super::PortBackend;

/// Guest output a socket port holds while its peer does not read; what
/// comes beyond it is refused (the device counts it as dropped).
pub const SOCKET_OUTPUT_LIMIT: usize = 64 * 1024;

/// Whether a [`UnixSocketPort`] listens for its peers or connected to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SocketMode {
    Server,
    Client,
}

/// A port on a Unix stream socket.
///
/// As a server ([`UnixSocketPort::listen`], QEMU's `server=on,wait=off`)
/// it binds and listens at its path and serves one client at a time: a
/// client is accepted when the device reads the port (on every poll of
/// the device), and when it hangs up the port listens again. Clients that
/// connect meanwhile wait in the listen backlog. As a client
/// ([`UnixSocketPort::connect`], QEMU's `server=off`) it connects once
/// and stays disconnected after the peer hangs up.
///
/// [`connected`](PortBackend::connected) is true while a peer is attached;
/// it changes when the device reads the port. Guest output with no peer
/// is dropped (`Ok`); the device writes only while connected, except for
/// emergency writes. Output the peer does not take at once waits in the
/// port, up to [`SOCKET_OUTPUT_LIMIT`] bytes, and goes out as the socket
/// drains, at the device's next reads.
///
/// The wake fd is an epoll set that stays the same for the port's life
/// (the device hands the I/O thread a duplicate of it once): it holds the
/// listening socket while nobody is connected, the client's socket (for
/// input, hang-up, and room for waiting output) while one is, and an
/// eventfd raised when a peer connects or hangs up, so that the device
/// polls again and tells the guest. A server removes its socket file when
/// dropped.
pub struct UnixSocketPort {
    path: PathBuf,
    mode: SocketMode,
    listener: Option<UnixListener>,
    client: Option<UnixStream>,
    /// Guest output the peer has not taken yet.
    pending: VecDeque<u8>,
    /// Whether the epoll set waits for room to write `pending`.
    watching_output: bool,
    epoll: Epoll,
    /// Raised when a peer connects or hangs up; lowered at the next read.
    changed: EventFd,
    changed_raised: bool,
    /// The device and inode of the socket file this port bound, which it
    /// removes when dropped (if the path still names it).
    socket_file: Option<(u64, u64)>,
}

/// `e`, with `what` and the path in front of its message.
fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn os_error(e: nix::errno::Errno, what: &str) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Whether `e` means the peer went away.
fn is_hang_up(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted)
}

impl UnixSocketPort {
    /// Binds and listens at `path` (QEMU's `server=on,wait=off`). A socket
    /// file nobody listens on is replaced; a socket somebody listens on,
    /// or a path that is not a socket, is refused.
    pub fn listen(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        ErrorKind::AddrInUse,
                        format!("{}: another program listens on this socket", path.display()),
                    ));
                }
                fs::remove_file(path).map_err(|e| context(e, "removing the stale socket", path))?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket; it is left alone", path.display()),
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(context(e, "checking", path)),
        }
        let listener = UnixListener::bind(path).map_err(|e| context(e, "binding a socket at", path))?;
        let socket_file = fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let port = listener
            .set_nonblocking(true)
            .and_then(|()| Self::with_peer(path, SocketMode::Server, Some(listener), None, socket_file));
        port.map_err(|e| {
            // No port owns the socket file yet.
            let _ = fs::remove_file(path);
            context(e, "listening at", path)
        })
    }

    /// Connects to the server listening at `path` (QEMU's `server=off`).
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|e| context(e, "connecting to", path))?;
        stream.set_nonblocking(true).map_err(|e| context(e, "connecting to", path))?;
        Self::with_peer(path, SocketMode::Client, None, Some(stream), None)
            .map_err(|e| context(e, "connecting to", path))
    }

    fn with_peer(
        path: &Path,
        mode: SocketMode,
        listener: Option<UnixListener>,
        client: Option<UnixStream>,
        socket_file: Option<(u64, u64)>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| os_error(e, "epoll_create"))?;
        let changed =
            EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).map_err(|e| os_error(e, "eventfd"))?;
        epoll.add(&changed, EpollEvent::new(EpollFlags::EPOLLIN, 0)).map_err(|e| os_error(e, "epoll_ctl"))?;
        if let Some(listener) = &listener {
            epoll.add(listener, EpollEvent::new(EpollFlags::EPOLLIN, 0)).map_err(|e| os_error(e, "epoll_ctl"))?;
        }
        if let Some(client) = &client {
            epoll.add(client, EpollEvent::new(Self::input_events(), 0)).map_err(|e| os_error(e, "epoll_ctl"))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            mode,
            listener,
            client,
            pending: VecDeque::new(),
            watching_output: false,
            epoll,
            changed,
            changed_raised: false,
            socket_file,
        })
    }

    fn input_events() -> EpollFlags {
        EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP
    }

    /// The path of the socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this port listens (`server=on`) rather than connected out.
    pub fn is_server(&self) -> bool {
        self.mode == SocketMode::Server
    }

    /// Guest output waiting for the peer to read it.
    pub fn pending_output(&self) -> usize {
        self.pending.len()
    }

    /// Makes the wake fd readable until the next read, so that the device
    /// polls again and sees the new connection state.
    fn raise_change(&mut self) {
        if !self.changed_raised && self.changed.write(1).is_ok() {
            self.changed_raised = true;
        }
    }

    fn lower_change(&mut self) {
        if self.changed_raised {
            // EAGAIN (already zero) is as good as a read.
            let _ = self.changed.read();
            self.changed_raised = false;
        }
    }

    /// Accepts a waiting client, if there is one and nobody is connected.
    fn accept(&mut self) -> io::Result<()> {
        if self.client.is_some() {
            return Ok(());
        }
        let Some(listener) = &self.listener else { return Ok(()) };
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(context(e, "accepting a client on", &self.path)),
            }
        };
        stream.set_nonblocking(true).map_err(|e| context(e, "accepting a client on", &self.path))?;
        self.epoll.add(&stream, EpollEvent::new(Self::input_events(), 0)).map_err(|e| os_error(e, "epoll_ctl"))?;
        // Later clients wait in the backlog without waking anyone.
        let _ = self.epoll.delete(listener);
        self.client = Some(stream);
        self.watching_output = false;
        self.raise_change();
        Ok(())
    }

    /// Forgets the peer: drops its waiting output and, as a server,
    /// listens again.
    fn hang_up(&mut self) {
        let Some(client) = self.client.take() else { return };
        let _ = self.epoll.delete(&client);
        drop(client);
        self.pending.clear();
        self.watching_output = false;
        if let Some(listener) = &self.listener {
            if let Err(e) = self.epoll.add(listener, EpollEvent::new(EpollFlags::EPOLLIN, 0)) {
                // Clients are still accepted at every poll of the device.
                tracing::warn!(target: "devices", "socket {}: watching for clients failed: {e}", self.path.display());
            }
        }
        self.raise_change();
    }

    /// Watches the client for room to write while output waits, and only
    /// for input otherwise.
    fn update_interest(&mut self) {
        let want = !self.pending.is_empty();
        if want == self.watching_output {
            return;
        }
        let Some(client) = &self.client else { return };
        let events = if want { Self::input_events() | EpollFlags::EPOLLOUT } else { Self::input_events() };
        if self.epoll.modify(client, &mut EpollEvent::new(events, 0)).is_ok() {
            self.watching_output = want;
        }
    }

    /// Writes as much waiting output as the socket takes. A hang-up
    /// forgets the peer and is no error; other errors do and are returned.
    fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let Some(client) = &mut self.client else { break };
            let (front, _) = self.pending.as_slices();
            match send_now(client, front) {
                Ok(0) => break,
                Ok(n) => drop(self.pending.drain(..n)),
                Err(e) => {
                    self.hang_up();
                    return if is_hang_up(&e) { Ok(()) } else { Err(context(e, "writing to the socket", &self.path)) };
                }
            }
        }
        self.update_interest();
        Ok(())
    }
}

/// Writes as much of `data` as `stream` takes now; how many bytes it took.
fn send_now(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "the socket took no bytes")),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl PortBackend for UnixSocketPort {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.lower_change();
        self.accept()?;
        self.flush()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let Some(client) = &mut self.client else { return Ok(0) };
        loop {
            match client.read(buf) {
                Ok(0) => {
                    self.hang_up();
                    return Ok(0);
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
                Err(e) if is_hang_up(&e) => {
                    self.hang_up();
                    return Ok(0);
                }
                Err(e) => {
                    self.hang_up();
                    return Err(context(e, "reading the socket", &self.path));
                }
            }
        }
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() || self.client.is_none() {
            return Ok(());
        }
        self.flush()?;
        let Some(client) = &mut self.client else {
            return Err(io::Error::new(ErrorKind::BrokenPipe, format!("{}: the peer hung up", self.path.display())));
        };
        let mut rest = data;
        if self.pending.is_empty() {
            match send_now(client, data) {
                Ok(n) => rest = &data[n..],
                Err(e) => {
                    self.hang_up();
                    return Err(context(e, "writing to the socket", &self.path));
                }
            }
        }
        if rest.is_empty() {
            return Ok(());
        }
        if self.pending.len() + rest.len() > SOCKET_OUTPUT_LIMIT {
            return Err(io::Error::new(
                ErrorKind::WouldBlock,
                format!(
                    "{}: the peer does not read; {} bytes wait, {} more are dropped",
                    self.path.display(),
                    self.pending.len(),
                    rest.len()
                ),
            ));
        }
        self.pending.extend(rest);
        self.update_interest();
        Ok(())
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.epoll.0.as_fd())
    }

    fn connected(&self) -> bool {
        self.client.is_some()
    }

    fn debug_label(&self) -> String {
        match self.mode {
            SocketMode::Server => format!("socket {}", self.path.display()),
            SocketMode::Client => format!("socket {} (client)", self.path.display()),
        }
    }
}

impl Drop for UnixSocketPort {
    fn drop(&mut self) {
        let Some((dev, ino)) = self.socket_file else { return };
        // Only the file this port bound: another program may have put its
        // own at the path since.
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_socket() && m.dev() == dev && m.ino() == ino)
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl fmt::Debug for UnixSocketPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixSocketPort")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .field("connected", &self.client.is_some())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// A port whose output goes to a file, QEMU's `-chardev file`: the file is
/// created if needed and truncated, or appended to with `append`. It has
/// no input and is always connected. The file is opened non-blocking, so
/// a FIFO without a reader is refused and a full one refuses output.
#[derive(Debug)]
pub struct FilePort {
    path: PathBuf,
    file: File,
}

impl FilePort {
    /// Opens (creating) `path` for the guest's output, truncating it unless
    /// `append`.
    pub fn open(path: impl AsRef<Path>, append: bool) -> io::Result<Self> {
        let path = path.as_ref();
        let mut options = OpenOptions::new();
        options.create(true).custom_flags(libc::O_NONBLOCK);
        if append {
            options.append(true);
        } else {
            options.write(true).truncate(true);
        }
        let file = options.open(path).map_err(|e| context(e, "opening", path))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl PortBackend for FilePort {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data).map_err(|e| context(e, "writing", &self.path))
    }

    fn debug_label(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// A port on a new pseudo-terminal, QEMU's `-chardev pty`: a terminal
/// program opens [`PtyPort::path`] (`/dev/pts/N`), which the machine
/// announces as QEMU does ("char device redirected to /dev/pts/N (label
/// LABEL)"). The terminal is raw and its slave side stays open here, so
/// the port is always connected; guest output that nobody reads is kept
/// in the terminal's buffer and, once that is full, dropped rather than
/// stopping the guest (as QEMU's pty drops it).
pub struct PtyPort {
    pty: crate::console::Pty,
    /// The guest's output into the terminal ([`crate::console::Pty::writer`]:
    /// what a full terminal does not take is dropped).
    writer: Box<dyn Write + Send>,
    label: String,
    /// An edge-triggered set over the master: readable when typed input
    /// arrives, until [`PortBackend::read`] looks.
    epoll: Epoll,
}

impl PtyPort {
    /// Opens a new pseudo-terminal named `label` in the announcement.
    pub fn open(label: &str) -> io::Result<Self> {
        let pty = crate::console::Pty::open().map_err(|e| io::Error::other(e.to_string()))?;
        let writer = pty.writer().map_err(|e| io::Error::other(e.to_string()))?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| os_error(e, "epoll_create"))?;
        epoll
            .add(pty.master(), EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0))
            .map_err(|e| os_error(e, "epoll_ctl"))?;
        Ok(Self { pty, writer, label: label.to_string(), epoll })
    }

    /// The terminal's device, `/dev/pts/N`.
    pub fn path(&self) -> &Path {
        self.pty.path()
    }

    /// The name the announcement gives the terminal.
    pub fn label(&self) -> &str {
        &self.label
    }
}

impl PortBackend for PtyPort {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Take the edge: input that arrives after this raises a new one.
        let mut events = [EpollEvent::empty(); 1];
        let _ = self.epoll.wait(&mut events, nix::sys::epoll::EpollTimeout::ZERO);
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match (&mut self.pty.master()).read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
                Err(e) => return Err(context(e, "reading the terminal", self.pty.path())),
            }
        }
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.writer.write_all(data).map_err(|e| context(e, "writing to the terminal", self.pty.path()))
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.epoll.0.as_fd())
    }

    fn pty(&self) -> Option<(&Path, &str)> {
        Some((self.pty.path(), &self.label))
    }

    fn keeps_input(&self) -> bool {
        true
    }

    fn debug_label(&self) -> String {
        format!("pty {}", self.pty.path().display())
    }
}

impl fmt::Debug for PtyPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PtyPort").field("path", &self.pty.path()).field("label", &self.label).finish_non_exhaustive()
    }
}

/// Typed input a [`StdioPort`] holds before the guest takes it; what comes
/// beyond it is dropped.
pub const STDIO_INPUT_LIMIT: usize = 64 * 1024;

/// A port on the emulator's standard output and input, QEMU's `-chardev
/// stdio` (with `mux=on`, shared with the human monitor) under a
/// virtconsole: the guest's output goes to stdout; what is typed comes
/// from the machine's stdin reader (which also handles the Ctrl-A keys)
/// through a [`StdioInput`]. Always connected.
pub struct StdioPort {
    input: StdioInput,
}

/// The stdin reader's end of a [`StdioPort`]: bytes pushed here wait for
/// the guest, and wake the I/O thread.
#[derive(Clone)]
pub struct StdioInput {
    queue: Arc<Mutex<VecDeque<u8>>>,
    wake: Arc<EventFd>,
}

impl StdioInput {
    /// Queues typed bytes for the guest (beyond [`STDIO_INPUT_LIMIT`]
    /// waiting, the rest is dropped) and wakes the port.
    pub fn push(&self, bytes: &[u8]) {
        let mut q = self.queue.lock();
        let room = STDIO_INPUT_LIMIT.saturating_sub(q.len());
        q.extend(bytes.iter().take(room));
        drop(q);
        let _ = self.wake.write(1);
    }
}

impl fmt::Debug for StdioInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdioInput").field("waiting", &self.queue.lock().len()).finish_non_exhaustive()
    }
}

impl StdioPort {
    /// A port on stdout, with an empty input queue.
    pub fn open() -> io::Result<Self> {
        let wake =
            EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).map_err(|e| os_error(e, "eventfd"))?;
        Ok(Self { input: StdioInput { queue: Arc::default(), wake: Arc::new(wake) } })
    }
}

impl PortBackend for StdioPort {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Take the wake-up first: a push after it raises a new one.
        let _ = self.input.wake.read();
        let mut q = self.input.queue.lock();
        let n = buf.len().min(q.len());
        for (b, v) in buf.iter_mut().zip(q.drain(..n)) {
            *b = v;
        }
        Ok(n)
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(data).and_then(|()| out.flush()).map_err(|e| io::Error::new(e.kind(), format!("stdout: {e}")))
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.input.wake.as_fd())
    }

    fn stdio_input(&self) -> Option<StdioInput> {
        Some(self.input.clone())
    }

    fn keeps_input(&self) -> bool {
        true
    }

    fn debug_label(&self) -> String {
        "stdio".into()
    }
}

impl fmt::Debug for StdioPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdioPort").field("input", &self.input).finish()
    }
}

/// A port that drops the guest's output and has no input, QEMU's
/// `-chardev null`; always connected.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullPort;

impl PortBackend for NullPort {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }

    fn write(&mut self, _data: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn debug_label(&self) -> String {
        "null".into()
    }
}

/// A port backend as the machine's options name it (see the module's
/// table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortBackendSpec {
    /// `socket:PATH`: listens at PATH ([`UnixSocketPort::listen`]);
    /// `socket:PATH,server=off`: connects to PATH
    /// ([`UnixSocketPort::connect`]).
    Socket { path: PathBuf, server: bool },
    /// `file:PATH[,append=on]` ([`FilePort`]).
    File { path: PathBuf, append: bool },
    /// `null` ([`NullPort`]).
    Null,
    /// `pty[:LABEL]` ([`PtyPort`]); the label names the terminal in the
    /// announcement of its path.
    Pty { label: String },
    /// `stdio` ([`StdioPort`]); `mon:stdio` shares stdin with the human
    /// monitor (Ctrl-A c switches), as `--serial mon:stdio` does.
    Stdio { monitor: bool },
}

/// A port backend spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port backend `{spec}`: {problem}")]
pub struct PortBackendSpecError {
    /// The whole spec.
    pub spec: String,
    /// What is wrong with it, naming the bad part.
    pub problem: String,
}

/// The forms [`PortBackendSpec`] takes, for error messages.
const SPEC_FORMS: &str =
    "socket:PATH[,server=on|off], file:PATH[,append=on|off], pty[:LABEL], stdio, mon:stdio or null";

/// Splits `s` at single commas; a doubled comma is a comma.
fn split_options(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() != Some(&',') => parts.push(String::new()),
            c => {
                if c == ',' {
                    chars.next();
                }
                if let Some(p) = parts.last_mut() {
                    p.push(c);
                }
            }
        }
    }
    parts
}

/// Whether `s` is an id as QEMU's options take them: a letter, then
/// letters, digits, `-`, `.` and `_`.
fn is_id(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// `value` of option `key` as QEMU's booleans take it.
fn parse_switch(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("`{key}={value}`: expected {key}=on or {key}=off")),
    }
}

/// Parses `key=value` options against `allowed`, each at most once.
fn parse_options<'a>(kind: &str, options: &'a [String], allowed: &[&str]) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for option in options {
        let Some((key, value)) = option.split_once('=') else {
            return Err(format!("`{option}`: expected an option as key=value"));
        };
        if !allowed.contains(&key) {
            let list = allowed.iter().map(|k| format!("{k}=")).collect::<Vec<_>>().join(", ");
            return Err(format!("`{option}`: {kind} takes {list} only"));
        }
        if seen.iter().any(|(k, _)| *k == key) {
            return Err(format!("`{key}=` is given twice"));
        }
        seen.push((key, value));
    }
    Ok(seen)
}

impl PortBackendSpec {
    /// Parses `socket:PATH`, `socket:PATH,server=off`, `file:PATH`,
    /// `file:PATH,append=on`, `pty`, `pty:LABEL`, `stdio`, `mon:stdio` or
    /// `null`.
    pub fn parse(spec: &str) -> Result<Self, PortBackendSpecError> {
        Self::parse_inner(spec).map_err(|problem| PortBackendSpecError { spec: spec.to_string(), problem })
    }

    fn parse_inner(spec: &str) -> Result<Self, String> {
        let (kind, rest) = match spec.split_once(':') {
            Some((kind, rest)) => (kind, Some(rest)),
            None => (spec, None),
        };
        match kind {
            "" if rest.is_none() => Err(format!("empty; expected {SPEC_FORMS}")),
            "null" => match rest {
                None => Ok(Self::Null),
                Some(_) => Err("`null` takes no path or option".into()),
            },
            "socket" | "file" => {
                let Some(rest) = rest else { return Err(format!("`{kind}` needs a path: {kind}:PATH")) };
                let parts = split_options(rest);
                let (path, options) = parts.split_first().map_or(("", &[][..]), |(p, o)| (p.as_str(), o));
                if path.is_empty() {
                    return Err(format!("`{kind}:` has no path"));
                }
                let path = PathBuf::from(path);
                if kind == "socket" {
                    let mut server = true;
                    for (key, value) in parse_options(kind, options, &["server", "wait"])? {
                        match key {
                            "server" => server = parse_switch(key, value)?,
                            _ if parse_switch(key, value)? => {
                                return Err("`wait=on`: the machine does not wait for a client; use wait=off".into())
                            }
                            _ => {}
                        }
                    }
                    Ok(Self::Socket { path, server })
                } else {
                    let mut append = false;
                    for (key, value) in parse_options(kind, options, &["append"])? {
                        append = parse_switch(key, value)?;
                    }
                    Ok(Self::File { path, append })
                }
            }
            "pty" => match rest {
                None => Ok(Self::Pty { label: "vport".into() }),
                Some(l) if is_id(l) => Ok(Self::Pty { label: l.into() }),
                Some(l) => Err(format!("`pty:{l}`: the label is an id (a letter, then letters, digits, -, . or _)")),
            },
            "stdio" if rest.is_none() => Ok(Self::Stdio { monitor: false }),
            "mon" if rest == Some("stdio") => Ok(Self::Stdio { monitor: true }),
            "stdio" => Err("`stdio` takes no path or option".into()),
            _ => Err(format!("unknown backend `{kind}`; expected {SPEC_FORMS}")),
        }
    }

    /// Opens the backend the spec names.
    pub fn open(&self) -> io::Result<Box<dyn PortBackend>> {
        Ok(match self {
            Self::Socket { path, server: true } => Box::new(UnixSocketPort::listen(path)?),
            Self::Socket { path, server: false } => Box::new(UnixSocketPort::connect(path)?),
            Self::File { path, append } => Box::new(FilePort::open(path, *append)?),
            Self::Null => Box::new(NullPort),
            Self::Pty { label } => Box::new(PtyPort::open(label)?),
            Self::Stdio { .. } => Box::new(StdioPort::open()?),
        })
    }
}

impl FromStr for PortBackendSpec {
    type Err = PortBackendSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The spec as [`PortBackendSpec::parse`] takes it back.
impl fmt::Display for PortBackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let escaped = |p: &Path| p.to_string_lossy().replace(',', ",,");
        match self {
            Self::Socket { path, server: true } => write!(f, "socket:{}", escaped(path)),
            Self::Socket { path, server: false } => write!(f, "socket:{},server=off", escaped(path)),
            Self::File { path, append: false } => write!(f, "file:{}", escaped(path)),
            Self::File { path, append: true } => write!(f, "file:{},append=on", escaped(path)),
            Self::Null => f.write_str("null"),
            Self::Pty { label } => write!(f, "pty:{label}"),
            Self::Stdio { monitor: false } => f.write_str("stdio"),
            Self::Stdio { monitor: true } => f.write_str("mon:stdio"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    use super::*;
    use crate::nic::IoKick;
    use crate::virtio::console::{PortConfig, VirtioConsole};

    /// A directory of its own for one test, removed at its end.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("ferrovm-console-backends-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Whether `fd` becomes readable within `ms` milliseconds.
    fn readable(fd: &OwnedFd, ms: u16) -> bool {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
    }

    fn wake_of(port: &impl PortBackend) -> OwnedFd {
        port.wake_fd().expect("a wake fd").try_clone_to_owned().unwrap()
    }

    /// Reads `port` as the device does, when its wake fd fires, until
    /// `len` bytes came.
    fn read_port(port: &mut impl PortBackend, wake: &OwnedFd, len: usize) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < len {
            assert!(Instant::now() < deadline, "only {got:?} of {len} bytes came");
            readable(wake, 100);
            let n = port.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    fn read_exact(stream: &mut UnixStream, len: usize) -> Vec<u8> {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = vec![0; len];
        stream.read_exact(&mut got).unwrap();
        got
    }

    fn is_socket(path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
    }

    #[test]
    fn socket_server_serves_one_client_after_another() {
        let dir = TempDir::new("server");
        let path = dir.join("port.sock");
        let mut port = UnixSocketPort::listen(&path).unwrap();
        assert!(is_socket(&path));
        assert!(port.is_server());
        assert!(!port.connected());
        assert_eq!(port.debug_label(), format!("socket {}", path.display()));
        // The I/O thread's duplicate, taken once as the device does.
        let wake = wake_of(&port);
        let raw = port.wake_fd().unwrap().as_raw_fd();
        assert!(!readable(&wake, 0), "nothing to do yet");
        let mut buf = [0u8; 64];
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        port.write(b"nobody listens").unwrap();

        let mut first = UnixStream::connect(&path).unwrap();
        assert!(readable(&wake, 5000), "a client connecting wakes the device");
        assert!(!port.connected(), "clients are accepted when the device reads");
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        assert!(port.connected());
        assert!(readable(&wake, 0), "the new connection wakes the device once more");
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        assert!(!readable(&wake, 0), "and the next read settles it");

        port.write(b"guest output").unwrap();
        assert_eq!(read_exact(&mut first, 12), b"guest output");
        first.write_all(b"host input").unwrap();
        assert!(readable(&wake, 5000), "client input wakes the device");
        assert_eq!(read_port(&mut port, &wake, 10), b"host input");
        assert!(!readable(&wake, 0));

        // A second client waits while the first is served, without waking
        // the device.
        let mut second = UnixStream::connect(&path).unwrap();
        second.write_all(b"second").unwrap();
        assert!(!readable(&wake, 100));
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        port.write(b"still the first").unwrap();
        assert_eq!(read_exact(&mut first, 15), b"still the first");

        drop(first);
        assert!(readable(&wake, 5000), "a hang-up wakes the device");
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        assert!(!port.connected());
        port.write(b"dropped").unwrap();
        assert!(readable(&wake, 0), "the hang-up wakes the device once more, and the second client waits");

        assert_eq!(read_port(&mut port, &wake, 6), b"second");
        assert!(port.connected());
        port.write(b"to the second").unwrap();
        assert_eq!(read_exact(&mut second, 13), b"to the second");
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        assert!(!readable(&wake, 0));
        assert_eq!(port.wake_fd().unwrap().as_raw_fd(), raw, "the wake fd stays the same");

        drop(second);
        assert!(readable(&wake, 5000));
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        assert!(!port.connected());

        drop(port);
        assert!(fs::symlink_metadata(&path).is_err(), "the socket file is removed on drop");
    }

    #[test]
    fn socket_server_checks_its_path() {
        let dir = TempDir::new("paths");
        let file = dir.join("regular");
        fs::write(&file, "keep me").unwrap();
        let e = UnixSocketPort::listen(&file).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert_eq!(fs::read(&file).unwrap(), b"keep me");

        let sub = dir.join("subdir");
        fs::create_dir(&sub).unwrap();
        assert_eq!(UnixSocketPort::listen(&sub).unwrap_err().kind(), ErrorKind::AlreadyExists);

        let stale = dir.join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        assert!(is_socket(&stale));
        let port = UnixSocketPort::listen(&stale).unwrap();
        assert!(UnixStream::connect(&stale).is_ok());
        drop(port);

        let live = dir.join("live.sock");
        let owner = UnixListener::bind(&live).unwrap();
        let e = UnixSocketPort::listen(&live).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
        assert!(is_socket(&live));
        drop(owner);

        let missing = dir.join("no/such/dir.sock");
        let e = UnixSocketPort::listen(&missing).unwrap_err();
        assert!(e.to_string().contains("no/such/dir.sock"), "{e}");

        // A socket file put at the path by someone else is not removed.
        let moved = dir.join("moved.sock");
        let port = UnixSocketPort::listen(&moved).unwrap();
        fs::remove_file(&moved).unwrap();
        let other = UnixListener::bind(&moved).unwrap();
        drop(port);
        assert!(is_socket(&moved));
        drop(other);
    }

    #[test]
    fn socket_client_talks_to_its_server_until_it_hangs_up() {
        let dir = TempDir::new("client");
        let path = dir.join("server.sock");
        let e = UnixSocketPort::connect(&path).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

        let server = UnixListener::bind(&path).unwrap();
        let mut port = UnixSocketPort::connect(&path).unwrap();
        assert!(!port.is_server());
        assert!(port.connected());
        assert!(port.debug_label().ends_with("(client)"));
        let wake = wake_of(&port);
        let (mut peer, _) = server.accept().unwrap();
        assert!(!readable(&wake, 0));

        port.write(b"from the guest").unwrap();
        assert_eq!(read_exact(&mut peer, 14), b"from the guest");
        peer.write_all(b"from the host").unwrap();
        assert_eq!(read_port(&mut port, &wake, 13), b"from the host");

        drop(peer);
        assert!(readable(&wake, 5000));
        let mut buf = [0u8; 16];
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        assert!(!port.connected());
        port.write(b"dropped").unwrap();
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        assert!(!readable(&wake, 0), "nothing more wakes a client port once its server is gone");

        drop(port);
        assert!(is_socket(&path), "the server's socket file stays");
    }

    #[test]
    fn socket_output_waits_for_a_slow_client_within_a_limit() {
        let dir = TempDir::new("slow");
        let path = dir.join("slow.sock");
        let mut port = UnixSocketPort::listen(&path).unwrap();
        let wake = wake_of(&port);
        let mut client = UnixStream::connect(&path).unwrap();
        let mut buf = [0u8; 64];
        assert!(readable(&wake, 5000));
        port.read(&mut buf).unwrap();
        port.read(&mut buf).unwrap();
        assert!(port.connected());

        // The client reads nothing: the socket fills, then the port's
        // queue, then output is refused.
        let mut sent = Vec::new();
        let mut refused = None;
        for i in 0..100_000u32 {
            let chunk = [(i % 251) as u8; 4096];
            match port.write(&chunk) {
                Ok(()) => sent.extend_from_slice(&chunk),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let e = refused.expect("output is refused once the queue is full");
        assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}");
        assert!(port.pending_output() > 0);
        assert!(port.pending_output() <= SOCKET_OUTPUT_LIMIT);

        // As the client reads, the socket drains and the port sends the
        // rest when the device reads it (woken by the room to write).
        client.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut received = Vec::new();
        let mut big = vec![0u8; 64 * 1024];
        while received.len() < sent.len() {
            assert!(Instant::now() < deadline, "{} of {} bytes came", received.len(), sent.len());
            match client.read(&mut big) {
                Ok(0) => panic!("the port hung up"),
                Ok(n) => received.extend_from_slice(&big[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    readable(&wake, 100);
                    assert_eq!(port.read(&mut buf).unwrap(), 0);
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(received == sent, "the output arrives whole and in order");
        assert_eq!(port.pending_output(), 0);
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        assert!(!readable(&wake, 0), "no wake-up once nothing waits");
    }

    #[test]
    fn socket_port_wakes_the_device_through_the_fd_it_hands_out_once() {
        let dir = TempDir::new("device");
        let path = dir.join("agent.sock");
        let port = UnixSocketPort::listen(&path).unwrap();
        let config = PortConfig::serial("org.qemu.guest_agent.0");
        let dev = VirtioConsole::new(vec![(config, Box::new(port) as Box<dyn PortBackend>)], IoKick::none()).unwrap();
        let fds = dev.backend_wake_fds();
        assert_eq!(fds.len(), 1);
        assert!(!readable(&fds[0], 0));
        let _client = UnixStream::connect(&path).unwrap();
        assert!(readable(&fds[0], 5000));
        drop(dev);
        assert!(fs::symlink_metadata(&path).is_err());
    }

    #[test]
    fn file_port_truncates_or_appends_and_has_no_input() {
        let dir = TempDir::new("file");
        let path = dir.join("console.log");
        fs::write(&path, "an earlier run").unwrap();

        let mut port = FilePort::open(&path, false).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"", "truncated when opened");
        assert!(port.connected());
        assert!(port.wake_fd().is_none());
        assert_eq!(port.debug_label(), format!("file {}", path.display()));
        port.write(b"first ").unwrap();
        port.write(b"run").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        assert_eq!(fs::read(&path).unwrap(), b"first run");
        drop(port);

        let mut port = FilePort::open(&path, true).unwrap();
        port.write(b", then more").unwrap();
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        assert_eq!(fs::read(&path).unwrap(), b"first run, then more");
        drop(port);

        drop(FilePort::open(&path, false).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"");

        let created = dir.join("new.log");
        FilePort::open(&created, true).unwrap().write(b"new").unwrap();
        assert_eq!(fs::read(&created).unwrap(), b"new");

        let e = FilePort::open(dir.join("no/such/dir.log"), false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("no/such/dir.log"), "{e}");
        let e = FilePort::open(&dir.0, false).unwrap_err();
        assert!(e.to_string().contains(&*dir.0.to_string_lossy()), "{e}");
    }

    #[test]
    fn null_port_drops_output_and_has_no_input() {
        let mut port = NullPort;
        port.write(b"into the void").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(port.read(&mut buf).unwrap(), 0);
        assert!(port.connected());
        assert!(port.wake_fd().is_none());
        assert_eq!(port.debug_label(), "null");
    }

    #[test]
    fn specs_parse_and_print_back() {
        let socket = |p: &str, server| PortBackendSpec::Socket { path: p.into(), server };
        let file = |p: &str, append| PortBackendSpec::File { path: p.into(), append };
        let cases = [
            ("socket:/run/vm/agent.sock", socket("/run/vm/agent.sock", true), "socket:/run/vm/agent.sock"),
            ("socket:rel.sock,server=off", socket("rel.sock", false), "socket:rel.sock,server=off"),
            ("socket:/s,server=on,wait=off", socket("/s", true), "socket:/s"),
            ("socket:/s,wait=off,server=no", socket("/s", false), "socket:/s,server=off"),
            ("file:/var/log/console.log", file("/var/log/console.log", false), "file:/var/log/console.log"),
            ("file:out.log,append=on", file("out.log", true), "file:out.log,append=on"),
            ("file:out.log,append=off", file("out.log", false), "file:out.log"),
            ("file:/tmp/a,,b.log,append=on", file("/tmp/a,b.log", true), "file:/tmp/a,,b.log,append=on"),
            ("file:/tmp/c:d.log", file("/tmp/c:d.log", false), "file:/tmp/c:d.log"),
            ("null", PortBackendSpec::Null, "null"),
            ("pty", PortBackendSpec::Pty { label: "vport".into() }, "pty:vport"),
            ("pty:charconsole0", PortBackendSpec::Pty { label: "charconsole0".into() }, "pty:charconsole0"),
            ("stdio", PortBackendSpec::Stdio { monitor: false }, "stdio"),
            ("mon:stdio", PortBackendSpec::Stdio { monitor: true }, "mon:stdio"),
        ];
        for (text, spec, printed) in cases {
            assert_eq!(PortBackendSpec::parse(text), Ok(spec.clone()), "{text}");
            assert_eq!(text.parse::<PortBackendSpec>(), Ok(spec.clone()), "{text}");
            assert_eq!(spec.to_string(), printed, "{text}");
            assert_eq!(PortBackendSpec::parse(printed), Ok(spec), "{printed}");
        }
    }

    #[test]
    fn bad_specs_are_refused_naming_the_bad_part() {
        let cases = [
            ("", "empty; expected socket:PATH"),
            ("stdio:x", "`stdio` takes no path or option"),
            ("mon:x", "unknown backend `mon`"),
            ("pty:/dev/pts/3", "`pty:/dev/pts/3`: the label is an id"),
            ("pty:", "`pty:`: the label is an id"),
            ("tcp:localhost:4444", "unknown backend `tcp`"),
            ("NULL", "unknown backend `NULL`"),
            ("socket", "`socket` needs a path"),
            ("socket:", "`socket:` has no path"),
            ("socket:,server=off", "`socket:` has no path"),
            ("file", "`file` needs a path"),
            ("file:", "`file:` has no path"),
            ("socket:/s,server=maybe", "`server=maybe`: expected server=on or server=off"),
            ("socket:/s,wait=on", "`wait=on`"),
            ("socket:/s,nowait", "`nowait`: expected an option as key=value"),
            ("socket:/s,append=on", "`append=on`: socket takes server=, wait= only"),
            ("socket:/s,server=off,server=on", "`server=` is given twice"),
            ("file:/f,append=sometimes", "`append=sometimes`"),
            ("file:/f,server=off", "`server=off`: file takes append= only"),
            ("file:/f,", "``: expected an option as key=value"),
            ("null:/dev/null", "`null` takes no path or option"),
        ];
        for (text, problem) in cases {
            let e = PortBackendSpec::parse(text).unwrap_err();
            assert_eq!(e.spec, text);
            assert!(e.problem.contains(problem), "{text}: {e}");
            assert!(e.to_string().starts_with(&format!("port backend `{text}`: ")), "{e}");
        }
    }

    #[test]
    fn specs_open_their_backends() {
        let dir = TempDir::new("open");
        let log = dir.join("out.log");
        let mut port = PortBackendSpec::parse(&format!("file:{}", log.display())).unwrap().open().unwrap();
        port.write(b"logged").unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"logged");

        let sock = dir.join("port.sock");
        let server = PortBackendSpec::parse(&format!("socket:{}", sock.display())).unwrap().open().unwrap();
        assert!(!server.connected());
        let client = PortBackendSpec::parse(&format!("socket:{},server=off", sock.display())).unwrap().open().unwrap();
        assert!(client.connected());
        drop(client);
        drop(server);
        assert!(PortBackendSpec::parse(&format!("socket:{},server=off", sock.display())).unwrap().open().is_err());

        let mut null = PortBackendSpec::parse("null").unwrap().open().unwrap();
        null.write(b"gone").unwrap();
        assert_eq!(null.debug_label(), "null");
    }

    /// A port on stdio: what the stdin reader pushes wakes the port and is
    /// read in order, past the limit it is dropped, and the read takes
    /// the wake-up.
    #[test]
    fn a_stdio_port_reads_what_its_input_pushes() {
        let mut port = StdioPort::open().unwrap();
        let input = port.stdio_input().unwrap();
        let wake = wake_of(&port);
        input.push(b"typed ");
        input.push(b"keys");
        assert_eq!(read_port(&mut port, &wake, 10), b"typed keys");
        let mut fds = [PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::ZERO).unwrap(), 0, "the wake fd stays readable");
        input.push(&vec![b'x'; STDIO_INPUT_LIMIT + 100]);
        let mut got = 0;
        let mut buf = [0u8; 4096];
        loop {
            let n = port.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        assert_eq!(got, STDIO_INPUT_LIMIT);
        assert!(port.connected());
        assert_eq!(port.debug_label(), "stdio");
    }

    /// A port on a pseudo-terminal: the guest's output reaches a program
    /// that opened the terminal, what it types wakes the port and is read,
    /// and the wake-up is taken by that read.
    #[test]
    fn a_pty_port_carries_both_ways_through_its_terminal() {
        use std::io::{Read as _, Write as _};
        let opened = PortBackendSpec::parse("pty:term0").unwrap().open().unwrap();
        assert!(opened.pty().is_some_and(|(p, l)| p.starts_with("/dev/pts") && l == "term0"));
        drop(opened);
        let mut port = PtyPort::open("term0").unwrap();
        let (path, label) = port.pty().map(|(p, l)| (p.to_path_buf(), l.to_string())).unwrap();
        assert_eq!(label, "term0");
        assert!(path.starts_with("/dev/pts"), "{}", path.display());
        assert!(port.connected());
        let mut term = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        port.write(b"from the guest\n").unwrap();
        let mut got = [0u8; 15];
        term.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"from the guest\n");
        term.write_all(b"typed").unwrap();
        let wake = wake_of(&port);
        assert_eq!(read_port(&mut port, &wake, 5), b"typed");
        // The read took the edge: nothing wakes the thread until more comes.
        let mut fds = [PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::ZERO).unwrap(), 0, "the wake fd stays readable");
        // Output nobody reads is dropped once the terminal is full, without
        // blocking or failing.
        drop(term);
        for _ in 0..64 {
            port.write(&[b'x'; 4096]).unwrap();
        }
    }
}
