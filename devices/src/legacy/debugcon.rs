//! QEMU's isa-debugcon on port 0x402: the port SeaBIOS (and other
//! firmware) writes its debug log to, one byte at a time.
//!
//! Reference: QEMU `hw/char/debugcon.c` (a read returns 0xe9, the value
//! firmware checks to know the port is there); SeaBIOS `src/output.c`
//! (`DebugOutputPort` 0x402 for QEMU).
//!
//! Lines go to the log under the `firmware` category at debug level, so
//! `--trace firmware` shows them. A line longer than [`MAX_LINE`] bytes is
//! logged in pieces, so a guest cannot make the host buffer grow.
//!
//! QEMU's `-debugcon CHARDEV` adds a second one at port 0xE9 (Bochs' debug
//! port, [`DEBUGCON_E9_PORT`], which hobby kernels write to) whose bytes go
//! to a host output as they come ([`DebugCon::with_output`]).

use std::io::Write;

use crate::bus::BusDevice;

/// The debug console port.
pub const DEBUGCON_PORT: u16 = 0x402;
/// The port of `-debugcon`'s console (QEMU's isa-debugcon default).
pub const DEBUGCON_E9_PORT: u16 = 0xe9;
/// One port.
pub const DEBUGCON_PORT_LEN: u64 = 1;
/// What a read returns: the port is there.
const PRESENT: u8 = 0xe9;
/// The longest line kept before it is logged.
pub const MAX_LINE: usize = 512;

/// The debug console.
///
/// It has no guest-visible state: reads always return the presence byte,
/// and the partial line it holds is the host log's, so it does not
/// implement [`persist::Persist`] (after a restore, the log's next line
/// starts afresh).
#[derive(Default)]
pub struct DebugCon {
    line: Vec<u8>,
    lines: u64,
    /// Where the bytes go instead of the log.
    out: Option<Box<dyn Write + Send>>,
    /// The output failed once (logged); the bytes are dropped since.
    out_failed: bool,
}

impl std::fmt::Debug for DebugCon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugCon").field("lines", &self.lines).field("output", &self.out.is_some()).finish()
    }
}

impl DebugCon {
    /// A console with nothing written, logging its lines.
    pub fn new() -> Self {
        Self::default()
    }

    /// A console whose bytes go to `out` as they are written (flushed at
    /// each write), not to the log.
    pub fn with_output(out: Box<dyn Write + Send>) -> Self {
        DebugCon { out: Some(out), ..Self::default() }
    }

    /// Lines logged so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        tracing::debug!(target: "firmware", "debugcon: {}", text.trim_end_matches('\r'));
        self.line.clear();
        self.lines += 1;
    }
}

impl BusDevice for DebugCon {
    fn debug_label(&self) -> String {
        "isa-debugcon".into()
    }

    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(PRESENT);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(out) = &mut self.out {
            if !self.out_failed {
                if let Err(e) = out.write_all(data).and_then(|()| out.flush()) {
                    tracing::warn!(target: "devices", "debugcon: its output failed ({e}); what the guest writes is dropped");
                    self.out_failed = true;
                }
            }
            return;
        }
        for &b in data {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_logged_and_bounded() {
        let mut d = DebugCon::new();
        let mut b = [0u8; 1];
        d.read(0, &mut b);
        assert_eq!(b, [0xe9]);
        for &c in b"SeaBIOS (version 1.16)\nBooting from Hard Disk..." {
            d.write(0, &[c]);
        }
        assert_eq!(d.lines(), 1);
        d.write(0, b"\n");
        assert_eq!(d.lines(), 2);
        d.write(0, &vec![b'x'; 3 * MAX_LINE]);
        assert_eq!(d.lines(), 5, "a line without end is logged in pieces");
        assert!(d.line.is_empty());
    }

    /// A console with an output passes the bytes on as they come, and
    /// logs nothing.
    #[test]
    fn bytes_go_to_the_output_as_written() {
        let path = std::env::temp_dir().join(format!("ferrovm-debugcon-{}.log", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let mut d = DebugCon::with_output(Box::new(file));
        d.write(0, b"kernel: ");
        d.write(0, b"hello\n");
        let mut b = [0u8; 1];
        d.read(0, &mut b);
        assert_eq!(b, [0xe9]);
        assert_eq!(std::fs::read(&path).unwrap(), b"kernel: hello\n", "written at each write");
        let _ = std::fs::remove_file(&path);
        assert_eq!(d.lines(), 0, "nothing logged");
    }
}
