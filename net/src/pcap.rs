//! A pcap capture around any backend (`pcap=PATH`): both directions, wall
//! clock timestamps, the classic libpcap format that Wireshark and tcpdump read.
//!
//! File header (24 bytes, host byte order, as libpcap writes it): magic
//! 0xa1b2c3d4 (microsecond timestamps), version 2.4, thiszone 0, sigfigs 0,
//! snaplen, link type 1 (Ethernet). Each record: ts_sec, ts_usec, incl_len,
//! orig_len (4 bytes each), then the frame.
//!
//! A write error stops the capture (logged once); the network goes on.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{Error, NetBackend};

/// The classic pcap magic number (microsecond resolution).
pub const PCAP_MAGIC: u32 = 0xa1b2_c3d4;
/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;
const SNAPLEN: u32 = 65535;

/// Wraps a backend and records every frame that passes.
pub struct PcapWriter<B> {
    inner: B,
    out: Option<Box<dyn Write + Send>>,
    label: String,
    /// Frames recorded so far.
    pub records: u64,
}

impl<B: NetBackend> PcapWriter<B> {
    /// Captures to a new file at `path` (truncated if it exists).
    pub fn create(inner: B, path: &Path) -> Result<Self, Error> {
        let err = |source| Error::Pcap { path: path.to_path_buf(), source };
        let file = File::create(path).map_err(err)?;
        Self::new(inner, Box::new(BufWriter::new(file))).map_err(err)
    }

    /// Captures to any writer.
    pub fn new(inner: B, mut out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&PCAP_MAGIC.to_ne_bytes());
        h.extend_from_slice(&2u16.to_ne_bytes());
        h.extend_from_slice(&4u16.to_ne_bytes());
        h.extend_from_slice(&0i32.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h.extend_from_slice(&SNAPLEN.to_ne_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
        out.write_all(&h)?;
        let label = format!("pcap({})", inner.debug_label());
        Ok(PcapWriter { inner, out: Some(out), label, records: 0 })
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The wrapped backend, mutably.
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        if let Some(out) = &mut self.out {
            if let Err(e) = out.flush() {
                self.fail(e);
            }
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        tracing::warn!(target: "net", "{}: capture stopped: {e}", self.label);
        self.out = None;
    }

    fn record(&mut self, frame: &[u8], orig_len: usize) {
        let Some(out) = &mut self.out else { return };
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let incl = frame.len().min(SNAPLEN as usize);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&(t.as_secs() as u32).to_ne_bytes());
        h[4..8].copy_from_slice(&t.subsec_micros().to_ne_bytes());
        h[8..12].copy_from_slice(&(incl as u32).to_ne_bytes());
        h[12..16].copy_from_slice(&(u32::try_from(orig_len).unwrap_or(u32::MAX)).to_ne_bytes());
        let r = out.write_all(&h).and_then(|()| out.write_all(&frame[..incl]));
        match r {
            Ok(()) => self.records += 1,
            Err(e) => self.fail(e),
        }
    }
}

impl<B: NetBackend> NetBackend for PcapWriter<B> {
    fn send(&mut self, frame: &[u8]) {
        self.record(frame, frame.len());
        self.inner.send(frame);
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let orig = self.inner.peek_len();
        let n = self.inner.recv(buf)?;
        self.record(&buf[..n], orig.unwrap_or(n).max(n));
        Some(n)
    }

    fn peek_len(&self) -> Option<usize> {
        self.inner.peek_len()
    }

    fn holding_back(&self) -> bool {
        self.inner.holding_back()
    }

    fn poll(&mut self, now: Instant) -> Option<Duration> {
        self.flush();
        self.inner.poll(now)
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.wake_fd()
    }

    fn debug_label(&self) -> &str {
        &self.label
    }
}

impl<B> Drop for PcapWriter<B> {
    fn drop(&mut self) {
        if let Some(out) = &mut self.out {
            let _ = out.flush();
        }
    }
}

/// Reads a capture back: the link type and the frames. For tests and tools.
pub fn read_pcap(data: &[u8]) -> Option<(u32, Vec<Vec<u8>>)> {
    let u32_at = |o: usize| -> Option<u32> { Some(u32::from_ne_bytes(data.get(o..o + 4)?.try_into().ok()?)) };
    if u32_at(0)? != PCAP_MAGIC {
        return None;
    }
    let link = u32_at(20)?;
    let mut frames = Vec::new();
    let mut o = 24;
    while o < data.len() {
        let incl = u32_at(o + 8)? as usize;
        frames.push(data.get(o + 16..o + 16 + incl)?.to_vec());
        o += 16 + incl;
    }
    Some((link, frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A backend that echoes every frame back.
    struct Echo(std::collections::VecDeque<Vec<u8>>);

    impl NetBackend for Echo {
        fn send(&mut self, frame: &[u8]) {
            self.0.push_back(frame.to_vec());
        }
        fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
            let f = self.0.pop_front()?;
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            Some(n)
        }
        fn peek_len(&self) -> Option<usize> {
            self.0.front().map(Vec::len)
        }
        fn poll(&mut self, _: Instant) -> Option<Duration> {
            None
        }
        fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn debug_label(&self) -> &str {
            "echo"
        }
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn both_directions_are_recorded() {
        let sink = Shared::default();
        let mut p = PcapWriter::new(Echo(Default::default()), Box::new(sink.clone())).unwrap();
        p.send(&[1u8; 60]);
        p.send(&[2u8; 100]);
        let mut buf = [0u8; 80];
        assert_eq!(p.recv(&mut buf), Some(60));
        assert_eq!(p.recv(&mut buf), Some(80)); // truncated by the short buffer
        p.poll(Instant::now());
        let data = sink.0.lock().unwrap().clone();
        let (link, frames) = read_pcap(&data).unwrap();
        assert_eq!(link, LINKTYPE_ETHERNET);
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0], vec![1u8; 60]);
        assert_eq!(frames[3].len(), 80);
        // orig_len of the truncated record is the whole frame.
        let last = 24 + (16 + 60) * 2 + 16 + 100;
        assert_eq!(u32::from_ne_bytes(data[last + 12..last + 16].try_into().unwrap()), 100);
    }
}
