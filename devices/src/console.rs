//! The host side of the serial console: where the guest's serial output goes
//! and where its input comes from.
//!
//! - [`SerialBackend`] names the host end (`stdio`, `mon:stdio`,
//!   `file:PATH`, `pty`, `none`) and [`open_output`] opens a writer for it;
//!   [`Pty::open`] makes the pseudo-terminal of `pty`.
//! - [`spawn_stdin_reader`] runs a thread that reads host stdin, handles the
//!   Ctrl-A escapes QEMU users know (`C-a x` quits, `C-a h` helps, `C-a C-a`
//!   sends one Ctrl-A, and on `mon:stdio` `C-a c` switches between the
//!   guest's console and the monitor, a [`MuxMonitor`]) and hands every
//!   other byte to the machine, or to the monitor while it has the focus.
//! - [`enter_raw_mode`] puts an interactive terminal into raw mode, so keys
//!   (Ctrl-C included) go to the guest, and makes sure the terminal comes back
//!   on every way out: the guard's drop, a panic, SIGQUIT, and
//!   [`restore_terminal`] before `std::process::exit` (the binary ends the
//!   run on SIGTERM, SIGINT and SIGHUP, and restores it then).

use std::fmt;
use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::sys::termios::{self, OutputFlags, SetArg, SpecialCharacterIndices, Termios};
use parking_lot::Mutex;

use crate::power::{VmEvent, VmEvents};

/// The label of COM1's pseudo-terminal, as QEMU names `-serial pty`'s.
pub const PTY_LABEL: &str = "serial0";

/// The escape byte, Ctrl-A, as in QEMU.
pub const ESCAPE_BYTE: u8 = 0x01;

const HELP: &str = "\
C-a h    print this help
C-a x    exit the emulator
C-a c    switch between console and monitor
C-a C-a  send C-a to the guest
";

/// Errors of the serial host side.
#[derive(thiserror::Error, Debug)]
pub enum ConsoleError {
    /// A `--serial` value that names no backend.
    #[error("unknown serial backend `{0}`; use stdio, mon:stdio, file:PATH, pty or none")]
    UnknownBackend(String),
    /// A pseudo-terminal cannot be made.
    #[error("cannot open a pseudo-terminal: {0}")]
    Pty(io::Error),
    /// `pty` where only COM1 takes it.
    #[error("a pseudo-terminal (pty) is for COM1 (--serial pty)")]
    PtyElsewhere,
    /// `file:` with nothing after it.
    #[error("serial backend `file:` needs a path, as in file:serial.log")]
    EmptyPath,
    /// The output file cannot be created.
    #[error("cannot create the serial output file {}: {source}", path.display())]
    CreateFile { path: PathBuf, source: io::Error },
    /// The terminal settings of stdin cannot be read.
    #[error("cannot read the terminal settings of stdin: {0}")]
    GetTermios(nix::Error),
    /// The terminal cannot be switched to raw mode.
    #[error("cannot put the terminal into raw mode: {0}; use --serial file:PATH or none")]
    SetTermios(nix::Error),
    /// The signal handlers that restore the terminal cannot be installed.
    #[error("cannot install the SIGQUIT handler that restores the terminal: {0}")]
    Signals(io::Error),
    /// A host I/O thread cannot be started.
    #[error("cannot start the {name} thread: {source}")]
    Thread { name: &'static str, source: io::Error },
}

/// The host end of a serial port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialBackend {
    /// The emulator's own stdin and stdout.
    Stdio,
    /// Stdin and stdout shared with a human monitor (QEMU's `mon:stdio`):
    /// `C-a c` moves the keyboard between the guest and the monitor.
    MonStdio,
    /// Output written to a file (created or truncated); no input.
    File(PathBuf),
    /// A new pseudo-terminal (QEMU's `pty`): the guest's output goes to it
    /// and what is typed there to the guest; its name is printed on stderr
    /// under this label (QEMU's: `serial0`, or the `-chardev`'s id).
    Pty(String),
    /// Output dropped; no input.
    None,
}

impl FromStr for SerialBackend {
    type Err = ConsoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(SerialBackend::Stdio),
            "mon:stdio" => Ok(SerialBackend::MonStdio),
            "none" => Ok(SerialBackend::None),
            "pty" => Ok(SerialBackend::Pty(PTY_LABEL.into())),
            _ if s.starts_with("pty,id=") => match &s["pty,id=".len()..] {
                "" => Err(ConsoleError::UnknownBackend(s.to_string())),
                id => Ok(SerialBackend::Pty(id.to_string())),
            },
            _ => match s.strip_prefix("file:") {
                Some("") => Err(ConsoleError::EmptyPath),
                Some(path) => Ok(SerialBackend::File(PathBuf::from(path))),
                None => Err(ConsoleError::UnknownBackend(s.to_string())),
            },
        }
    }
}

impl fmt::Display for SerialBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerialBackend::Stdio => f.write_str("stdio"),
            SerialBackend::MonStdio => f.write_str("mon:stdio"),
            SerialBackend::File(path) => write!(f, "file:{}", path.display()),
            SerialBackend::None => f.write_str("none"),
            SerialBackend::Pty(label) if label == PTY_LABEL => f.write_str("pty"),
            SerialBackend::Pty(label) => write!(f, "pty,id={label}"),
        }
    }
}

impl SerialBackend {
    /// Whether the port is on the emulator's stdin and stdout.
    pub fn on_stdio(&self) -> bool {
        matches!(self, SerialBackend::Stdio | SerialBackend::MonStdio)
    }
}

/// Stdout, flushed after every write so guest output shows up at once.
struct FlushingStdout;

impl Write for FlushingStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        let n = out.write(buf)?;
        out.flush()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

/// Opens the writer that receives what the guest transmits on `backend`.
pub fn open_output(backend: &SerialBackend) -> Result<Box<dyn Write + Send>, ConsoleError> {
    match backend {
        SerialBackend::Stdio | SerialBackend::MonStdio => Ok(Box::new(FlushingStdout)),
        SerialBackend::File(path) => File::create(path)
            .map(|f| Box::new(f) as Box<dyn Write + Send>)
            .map_err(|source| ConsoleError::CreateFile { path: path.clone(), source }),
        SerialBackend::None => Ok(Box::new(io::sink())),
        SerialBackend::Pty(_) => Err(ConsoleError::PtyElsewhere),
    }
}

/// A pseudo-terminal for a serial port, in raw mode, as QEMU's `pty`
/// character device makes one: a terminal program opens [`Pty::path`].
/// The slave side stays open here, so that reads wait for input instead of
/// failing while no program has it open; output nobody reads is dropped
/// once the terminal's buffer is full, rather than stopping the guest.
pub struct Pty {
    master: File,
    _slave: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl Pty {
    /// Opens a new pseudo-terminal.
    pub fn open() -> Result<Pty, ConsoleError> {
        let err = |e: nix::Error| ConsoleError::Pty(io::Error::from(e));
        let pty = nix::pty::openpty(None, None).map_err(err)?;
        let mut t = termios::tcgetattr(&pty.slave).map_err(err)?;
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &t).map_err(err)?;
        let path = nix::unistd::ttyname(&pty.slave).map_err(err)?;
        let flags = nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_GETFL).map_err(err)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(err)?;
        Ok(Pty { master: File::from(pty.master), _slave: pty.slave, path })
    }

    /// The terminal's device, `/dev/pts/N`.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The master side, non-blocking: what the guest writes goes in, what
    /// is typed on the terminal comes out.
    pub(crate) fn master(&self) -> &File {
        &self.master
    }

    /// The guest's output into the terminal.
    pub fn writer(&self) -> Result<Box<dyn Write + Send>, ConsoleError> {
        let master = self.master.try_clone().map_err(ConsoleError::Pty)?;
        Ok(Box::new(PtyWriter(master)))
    }

    /// What is typed on the terminal; a read waits for it. The reader keeps
    /// the terminal open.
    pub fn into_reader(self) -> impl Read + Send {
        PtyReader(self)
    }
}

struct PtyWriter(File);

impl Write for PtyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write(buf) {
            // Nobody reads the terminal and its buffer is full: dropped.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(buf.len()),
            r => r,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct PtyReader(Pty);

impl Read for PtyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            match self.0.master.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(self.0.master.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::NONE) {
                        Ok(_) | Err(nix::Error::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                r => return r,
            }
        }
    }
}

/// A console command typed after the escape byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapeCommand {
    /// `C-a x`: quit the emulator.
    Quit,
    /// `C-a c`: switch to the monitor.
    Monitor,
    /// `C-a h` or `C-a ?`: print the escape keys.
    Help,
}

/// What one host byte turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleInput {
    /// A byte for the guest.
    Guest(u8),
    /// A console command.
    Command(EscapeCommand),
}

/// Splits host keyboard bytes into guest bytes and Ctrl-A commands.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EscapeParser {
    after_escape: bool,
}

impl EscapeParser {
    /// A parser outside any escape sequence.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one host byte. `None` means the byte was consumed by an escape
    /// sequence (the escape byte itself, or an unknown key after it).
    pub fn feed(&mut self, byte: u8) -> Option<ConsoleInput> {
        if !self.after_escape {
            if byte == ESCAPE_BYTE {
                self.after_escape = true;
                return None;
            }
            return Some(ConsoleInput::Guest(byte));
        }
        self.after_escape = false;
        match byte {
            ESCAPE_BYTE => Some(ConsoleInput::Guest(ESCAPE_BYTE)),
            b'x' => Some(ConsoleInput::Command(EscapeCommand::Quit)),
            b'c' => Some(ConsoleInput::Command(EscapeCommand::Monitor)),
            b'h' | b'?' => Some(ConsoleInput::Command(EscapeCommand::Help)),
            _ => None,
        }
    }
}

/// Receives the bytes typed for the guest. It owns them from then on: what
/// the UART cannot take yet (see `Serial::enqueue_input`) it must keep.
pub type InputSink = Box<dyn FnMut(&[u8]) + Send>;

/// The monitor side of a console shared with a monitor (`mon:stdio`):
/// while it has the focus, the keys go to it rather than to the guest.
/// What it writes goes to `out`, the console's output (stdout), where the
/// guest's output goes on appearing as it comes.
pub trait MuxMonitor: Send {
    /// The focus comes to the monitor (`C-a c`).
    fn focus_in(&mut self, out: &mut dyn Write);
    /// The focus goes back to the guest's console (`C-a c` again).
    fn focus_out(&mut self, out: &mut dyn Write);
    /// Keys typed while the monitor has the focus (the escapes taken out).
    fn input(&mut self, bytes: &[u8], out: &mut dyn Write);
}

/// Starts the thread that reads host stdin for the guest. EOF on stdin (a
/// pipe or /dev/null in CI) just ends the thread; `C-a x` files
/// [`VmEvent::Quit`] with `events` and ends it too. With `monitor`
/// (`mon:stdio`), `C-a c` moves the keys between the guest and it.
pub fn spawn_stdin_reader(
    events: Arc<VmEvents>,
    deliver: InputSink,
    monitor: Option<Box<dyn MuxMonitor>>,
) -> Result<JoinHandle<()>, ConsoleError> {
    spawn_input_reader(io::stdin(), events, deliver, monitor)
}

/// [`spawn_stdin_reader`] for any byte source; notices go to stderr, and
/// the monitor writes to stdout.
pub fn spawn_input_reader<R: Read + Send + 'static>(
    mut input: R,
    events: Arc<VmEvents>,
    mut deliver: InputSink,
    mut monitor: Option<Box<dyn MuxMonitor>>,
) -> Result<JoinHandle<()>, ConsoleError> {
    let name = "serial-input";
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let mut out = FlushingStdout;
            let mon: Option<(&mut dyn MuxMonitor, &mut dyn Write)> = match &mut monitor {
                Some(m) => Some((&mut **m, &mut out)),
                None => None,
            };
            pump(&mut input, &events, &mut deliver, &mut io::stderr(), mon)
        })
        .map_err(|source| ConsoleError::Thread { name, source })
}

/// Reads `input` until EOF, an error or a quit request. With `monitor` (and
/// the writer its output goes to), `C-a c` switches the keys between the
/// guest and the monitor; the guest's console has them first.
fn pump(
    input: &mut dyn Read,
    events: &VmEvents,
    deliver: &mut dyn FnMut(&[u8]),
    notices: &mut dyn Write,
    mut monitor: Option<(&mut dyn MuxMonitor, &mut dyn Write)>,
) {
    let mut parser = EscapeParser::new();
    let mut buf = [0u8; 256];
    let mut guest = Vec::with_capacity(buf.len());
    // Whether the monitor has the keys.
    let mut focused = false;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(target: "devices", %err, "cannot read serial input; input stops");
                return;
            }
        };
        for &byte in &buf[..n] {
            match parser.feed(byte) {
                Some(ConsoleInput::Guest(b)) => guest.push(b),
                Some(ConsoleInput::Command(cmd)) => {
                    // Bytes typed before the command reach their reader first.
                    send(&mut guest, focused, deliver, &mut monitor);
                    // Notices are best effort: a closed stderr must not stop input.
                    match cmd {
                        EscapeCommand::Quit => {
                            let _ = notices.write_all(b"\nterminated by C-a x\n");
                            events.request(VmEvent::Quit);
                            return;
                        }
                        EscapeCommand::Monitor => match &mut monitor {
                            Some((m, out)) => {
                                focused = !focused;
                                if focused {
                                    m.focus_in(&mut **out);
                                } else {
                                    m.focus_out(&mut **out);
                                }
                            }
                            None => {
                                let _ =
                                    notices.write_all(b"\nno monitor on this console (--serial mon:stdio has one)\n");
                            }
                        },
                        EscapeCommand::Help => {
                            let _ = notices.write_all(HELP.as_bytes());
                        }
                    }
                }
                None => {}
            }
        }
        send(&mut guest, focused, deliver, &mut monitor);
    }
}

/// Hands `keys` to the monitor while it has the focus, else to the guest.
fn send(
    keys: &mut Vec<u8>,
    focused: bool,
    deliver: &mut dyn FnMut(&[u8]),
    monitor: &mut Option<(&mut dyn MuxMonitor, &mut dyn Write)>,
) {
    if keys.is_empty() {
        return;
    }
    match monitor {
        Some((m, out)) if focused => m.input(keys, &mut **out),
        _ => deliver(keys),
    }
    keys.clear();
}

/// The terminal settings of stdin from before raw mode, while raw mode is on.
static SAVED_TERMIOS: Mutex<Option<Termios>> = Mutex::new(None);
/// Whether the panic hook and the signal thread are installed.
static HOOKS_INSTALLED: Mutex<bool> = Mutex::new(false);

/// Restores stdin's terminal settings when dropped.
#[must_use = "raw mode ends when the guard is dropped"]
#[derive(Debug)]
pub struct RawModeGuard {
    _private: (),
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Puts stdin's terminal into raw mode when stdin is a terminal; `None` when
/// it is not (a pipe, a file, CI), where nothing changes.
pub fn enter_raw_mode() -> Result<Option<RawModeGuard>, ConsoleError> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        return Ok(None);
    }
    let original = termios::tcgetattr(stdin.as_fd()).map_err(ConsoleError::GetTermios)?;
    install_restore_hooks()?;
    {
        let mut saved = SAVED_TERMIOS.lock();
        // Raw mode entered twice keeps the settings from before the first time.
        if saved.is_none() {
            *saved = Some(original.clone());
        }
    }
    termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw_settings(&original)).map_err(ConsoleError::SetTermios)?;
    Ok(Some(RawModeGuard { _private: () }))
}

/// Puts stdin's terminal back as it was before raw mode. Safe to call any
/// number of times, with or without raw mode; the binary calls it before
/// `std::process::exit`, which skips destructors.
pub fn restore_terminal() {
    let saved = SAVED_TERMIOS.lock().take();
    if let Some(original) = saved {
        if let Err(err) = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &original) {
            // Logging is all that is left to do on the way out.
            tracing::warn!(target: "devices", %err, "cannot restore the terminal settings");
        }
    }
}

/// Raw mode as `cfmakeraw` makes it (no echo, no line editing, no signals
/// from Ctrl-C/Ctrl-Z/Ctrl-\, no CR/NL translation on input), except that
/// output post-processing stays on so "\n" still starts a new line.
fn raw_settings(original: &Termios) -> Termios {
    let mut raw = original.clone();
    termios::cfmakeraw(&mut raw);
    raw.output_flags |= OutputFlags::OPOST | OutputFlags::ONLCR;
    // Reads return as soon as one byte is there.
    raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    raw
}

/// Installs, once, the panic hook and the signal thread that restore the terminal.
fn install_restore_hooks() -> Result<(), ConsoleError> {
    use signal_hook::consts::SIGQUIT;

    let mut installed = HOOKS_INSTALLED.lock();
    if *installed {
        return Ok(());
    }
    // SIGTERM, SIGINT and SIGHUP end the run cleanly (the binary's
    // handler), which restores the terminal on its way out.
    let mut signals = signal_hook::iterator::Signals::new([SIGQUIT]).map_err(ConsoleError::Signals)?;
    let name = "terminal-signals";
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                restore_terminal();
                std::process::exit(128 + signal);
            }
        })
        .map_err(|source| ConsoleError::Thread { name, source })?;

    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
    *installed = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::termios::{InputFlags, LocalFlags};

    #[test]
    fn parses_backends() {
        assert_eq!("stdio".parse::<SerialBackend>().unwrap(), SerialBackend::Stdio);
        assert_eq!("none".parse::<SerialBackend>().unwrap(), SerialBackend::None);
        assert_eq!(
            "file:/tmp/a b.log".parse::<SerialBackend>().unwrap(),
            SerialBackend::File(PathBuf::from("/tmp/a b.log"))
        );
        assert!(matches!("file:".parse::<SerialBackend>(), Err(ConsoleError::EmptyPath)));
        assert_eq!("pty".parse::<SerialBackend>().unwrap(), SerialBackend::Pty("serial0".into()));
        assert_eq!("pty,id=p0".parse::<SerialBackend>().unwrap(), SerialBackend::Pty("p0".into()));
        assert!("pty,id=".parse::<SerialBackend>().is_err());
        let err = "tty".parse::<SerialBackend>().unwrap_err();
        assert_eq!(err.to_string(), "unknown serial backend `tty`; use stdio, mon:stdio, file:PATH, pty or none");
        assert!("Stdio".parse::<SerialBackend>().is_err());
        assert_eq!("mon:stdio".parse::<SerialBackend>().unwrap(), SerialBackend::MonStdio);
        assert!(SerialBackend::MonStdio.on_stdio() && SerialBackend::Stdio.on_stdio());
        assert!(!SerialBackend::None.on_stdio());
        for s in ["stdio", "mon:stdio", "none", "file:out.txt", "pty", "pty,id=p0"] {
            assert_eq!(s.parse::<SerialBackend>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn file_output_truncates_and_writes() {
        let dir = std::env::temp_dir().join(format!("devices-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serial.log");
        std::fs::write(&path, b"old contents").unwrap();
        let mut out = open_output(&SerialBackend::File(path.clone())).unwrap();
        out.write_all(b"hi\n").unwrap();
        drop(out);
        assert_eq!(std::fs::read(&path).unwrap(), b"hi\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_output_error_names_the_path() {
        let path = PathBuf::from("/nonexistent-dir-for-devices-test/serial.log");
        let Err(err) = open_output(&SerialBackend::File(path)) else {
            panic!("creating a file in a missing directory succeeded");
        };
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent-dir-for-devices-test/serial.log"), "{msg}");
    }

    #[test]
    fn none_output_swallows_everything() {
        let mut out = open_output(&SerialBackend::None).unwrap();
        out.write_all(b"dropped").unwrap();
        out.flush().unwrap();
    }

    fn parse_all(bytes: &[u8]) -> Vec<ConsoleInput> {
        let mut p = EscapeParser::new();
        bytes.iter().filter_map(|&b| p.feed(b)).collect()
    }

    #[test]
    fn escape_parser() {
        use ConsoleInput::{Command, Guest};
        assert_eq!(parse_all(b"ab"), [Guest(b'a'), Guest(b'b')]);
        assert_eq!(parse_all(b"\x01x"), [Command(EscapeCommand::Quit)]);
        assert_eq!(parse_all(b"\x01c"), [Command(EscapeCommand::Monitor)]);
        assert_eq!(parse_all(b"\x01h\x01?"), [Command(EscapeCommand::Help); 2]);
        assert_eq!(parse_all(b"\x01\x01"), [Guest(ESCAPE_BYTE)]);
        assert_eq!(parse_all(b"\x01\x01x"), [Guest(ESCAPE_BYTE), Guest(b'x')]);
        assert_eq!(parse_all(b"\x01q"), [], "unknown keys after C-a are consumed");
        assert_eq!(parse_all(b"\x03\x1c"), [Guest(0x03), Guest(0x1c)], "Ctrl-C goes to the guest");
        // An escape split across reads still works.
        let mut p = EscapeParser::new();
        assert_eq!(p.feed(ESCAPE_BYTE), None);
        assert_eq!(p.feed(b'x'), Some(Command(EscapeCommand::Quit)));
        assert_eq!(p.feed(b'x'), Some(Guest(b'x')));
    }

    /// Runs `pump` over `input`, returning what the guest got, the notices and the event.
    fn run_pump(input: &[u8]) -> (Vec<u8>, String, Option<VmEvent>) {
        let events = VmEvents::new();
        let mut got = Vec::new();
        let mut notices = Vec::new();
        pump(
            &mut io::Cursor::new(input.to_vec()),
            &events,
            &mut |b: &[u8]| got.extend_from_slice(b),
            &mut notices,
            None,
        );
        (got, String::from_utf8(notices).unwrap(), events.take())
    }

    #[test]
    fn pump_delivers_until_eof() {
        let (got, notices, event) = run_pump(b"root\r\x01\x01ls\r");
        assert_eq!(got, b"root\r\x01ls\r");
        assert!(notices.is_empty());
        assert_eq!(event, None);
    }

    #[test]
    fn pump_quits_on_escape_x() {
        let (got, notices, event) = run_pump(b"ab\x01xcd");
        assert_eq!(got, b"ab", "bytes before the quit arrive, bytes after it do not");
        assert!(notices.contains("terminated"));
        assert_eq!(event, Some(VmEvent::Quit));
    }

    #[test]
    fn pump_reports_monitor_and_help() {
        let (got, notices, event) = run_pump(b"\x01c\x01hz");
        assert_eq!(got, b"z");
        assert!(notices.contains("no monitor on this console"));
        assert!(notices.contains("C-a x    exit the emulator"));
        assert!(notices.contains("C-a c    switch between console and monitor"));
        assert_eq!(event, None);
    }

    /// A monitor that records what reaches it.
    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
    }

    impl MuxMonitor for Recorder {
        fn focus_in(&mut self, out: &mut dyn Write) {
            self.log.push("in".into());
            let _ = out.write_all(b"(qemu) ");
        }
        fn focus_out(&mut self, out: &mut dyn Write) {
            self.log.push("out".into());
            let _ = out.write_all(b"\r\n");
        }
        fn input(&mut self, bytes: &[u8], out: &mut dyn Write) {
            self.log.push(format!("keys {}", String::from_utf8_lossy(bytes)));
            let _ = out.write_all(bytes);
        }
    }

    #[test]
    fn escape_c_moves_the_keys_between_guest_and_monitor() {
        let events = VmEvents::new();
        let (mut got, mut notices, mut shown) = (Vec::new(), Vec::new(), Vec::new());
        let mut mon = Recorder::default();
        pump(
            &mut io::Cursor::new(b"ab\x01cinfo status\r\x01\x01\x01ccd\x01cq\x01xzz".to_vec()),
            &events,
            &mut |b: &[u8]| got.extend_from_slice(b),
            &mut notices,
            Some((&mut mon, &mut shown)),
        );
        assert_eq!(got, b"abcd", "the guest gets what was typed while it had the focus");
        assert_eq!(mon.log, ["in", "keys info status\r\x01", "out", "in", "keys q"]);
        assert_eq!(String::from_utf8_lossy(&shown), "(qemu) info status\r\x01\r\n(qemu) q");
        assert_eq!(events.take(), Some(VmEvent::Quit), "C-a x quits from the monitor too");
        assert!(String::from_utf8_lossy(&notices).contains("terminated"));
    }

    #[test]
    fn reader_thread_ends_at_eof() {
        let events = Arc::new(VmEvents::new());
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let handle = spawn_input_reader(
            io::Cursor::new(b"hello".to_vec()),
            events.clone(),
            Box::new(move |b| sink.lock().extend_from_slice(b)),
            None,
        )
        .unwrap();
        handle.join().unwrap();
        assert_eq!(*got.lock(), b"hello");
        assert!(!events.pending());
    }

    #[test]
    fn raw_settings_keep_output_processing() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let original = termios::tcgetattr(&pty.slave).unwrap();
        let raw = raw_settings(&original);
        assert!(!raw.local_flags.intersects(LocalFlags::ISIG | LocalFlags::ICANON | LocalFlags::ECHO));
        assert!(!raw.input_flags.intersects(InputFlags::ICRNL | InputFlags::IXON));
        assert!(raw.output_flags.contains(OutputFlags::OPOST | OutputFlags::ONLCR));
        assert_eq!(raw.control_chars[SpecialCharacterIndices::VMIN as usize], 1);
        // The terminal accepts the settings and takes the original back.
        termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &raw).unwrap();
        let now = termios::tcgetattr(&pty.slave).unwrap();
        assert!(!now.local_flags.contains(LocalFlags::ISIG));
        termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &original).unwrap();
        let back = termios::tcgetattr(&pty.slave).unwrap();
        assert_eq!(back.local_flags, original.local_flags);
    }

    #[test]
    fn raw_mode_only_on_a_terminal() {
        let stdin = io::stdin();
        let before = stdin.is_terminal().then(|| termios::tcgetattr(stdin.as_fd()).unwrap());
        let guard = enter_raw_mode().unwrap();
        assert_eq!(guard.is_some(), before.is_some());
        if let Some(before) = &before {
            let raw = termios::tcgetattr(stdin.as_fd()).unwrap();
            assert!(!raw.local_flags.contains(LocalFlags::ISIG));
            assert!(raw.output_flags.contains(OutputFlags::OPOST));
            drop(guard);
            let after = termios::tcgetattr(stdin.as_fd()).unwrap();
            assert_eq!(after.local_flags, before.local_flags);
            assert_eq!(after.input_flags, before.input_flags);
            assert_eq!(after.output_flags, before.output_flags);
        }
    }

    #[test]
    fn restore_without_raw_mode_is_harmless() {
        restore_terminal();
        restore_terminal();
    }
}
