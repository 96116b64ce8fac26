//! A hub: several ferrovm processes on one internal network, no NAT.
//!
//! Each member binds a Unix datagram socket in the hub's directory; a frame
//! one member sends goes to every other member's socket (a hub, not a
//! switch: everyone sees everything, as on one shared segment). A member that
//! has gone away leaves a socket nobody reads: sending to it fails with
//! `ECONNREFUSED`, and the stale file is removed.
//!
//! A Unix datagram socket queues only `net.unix.max_dgram_qlen` datagrams
//! (10 by default), less than one TCP window of frames. So frames a peer
//! cannot take yet wait in a bounded queue per peer and are retried on the
//! next send or poll; only when that queue is full is a frame dropped.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, HubConfig, NetBackend};

/// How often the member list is re-read from the directory.
const RESCAN: Duration = Duration::from_millis(500);
/// Frames read from the socket per poll.
const READS_PER_POLL: usize = 256;
/// Frames waiting for the guest at most.
const QUEUE_LIMIT: usize = 1024;
/// The largest frame carried (jumbo frames are not).
const MAX_FRAME: usize = 65536;
/// Frames waiting for one busy peer at most.
const PEER_QUEUE_LIMIT: usize = 512;
/// How soon to retry a busy peer.
const RETRY: Duration = Duration::from_micros(500);

/// Checks that a hub id is a plain name.
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || id.starts_with('.')
    {
        return Err(format!("hub id '{id}' must be 1-64 letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

fn default_dir(id: &str) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("ferrovm-hub").join(id),
        _ => std::env::temp_dir().join(format!("ferrovm-hub-{}", nix::unistd::getuid())).join(id),
    }
}

/// One member of a hub network.
pub struct HubNet {
    label: String,
    id: String,
    dir: PathBuf,
    path: PathBuf,
    sock: UnixDatagram,
    peers: Vec<PathBuf>,
    /// Frames a peer could not take yet, by peer path.
    backlog: std::collections::HashMap<PathBuf, VecDeque<Vec<u8>>>,
    last_scan: Option<Instant>,
    rx: VecDeque<Vec<u8>>,
    readable: bool,
    /// Frames dropped because a peer's queue was full or ours was.
    pub dropped: u64,
}

impl HubNet {
    /// Joins the hub named by `cfg`, creating its directory if needed.
    pub fn open(cfg: &HubConfig) -> Result<Self, Error> {
        check_id(&cfg.id).map_err(|reason| Error::BadOption { option: format!("id={}", cfg.id), reason })?;
        let dir = cfg.dir.clone().unwrap_or_else(|| default_dir(&cfg.id));
        let err = |path: &Path, source| Error::Hub { id: cfg.id.clone(), path: path.to_path_buf(), source };
        std::fs::create_dir_all(&dir).map_err(|e| err(&dir, e))?;
        // Unique per process and per NIC within it.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).map_err(|e| err(&path, e))?;
        sock.set_nonblocking(true).map_err(|e| err(&path, e))?;
        Ok(HubNet {
            label: format!("hub:{}", cfg.id),
            id: cfg.id.clone(),
            dir,
            path,
            sock,
            peers: Vec::new(),
            backlog: std::collections::HashMap::new(),
            last_scan: None,
            rx: VecDeque::new(),
            readable: true,
            dropped: 0,
        })
    }

    /// This member's socket path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    fn rescan(&mut self, now: Instant) {
        if self.last_scan.is_some_and(|t| now.saturating_duration_since(t) < RESCAN) {
            return;
        }
        self.last_scan = Some(now);
        self.peers.clear();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten().take(1024) {
            let p = e.path();
            if p != self.path && p.extension().is_some_and(|x| x == "sock") {
                self.peers.push(p);
            }
        }
        let peers = &self.peers;
        self.backlog.retain(|p, _| peers.contains(p));
    }

    /// Sends what waits for each peer, in order, until a peer is full again.
    /// Returns the peers that turned out to be gone.
    fn flush(&mut self) -> Vec<PathBuf> {
        let mut stale = Vec::new();
        for (p, q) in self.backlog.iter_mut() {
            while let Some(f) = q.front() {
                match self.sock.send_to(f, p) {
                    Ok(_) => {
                        q.pop_front();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused || e.kind() == ErrorKind::NotFound => {
                        stale.push(p.clone());
                        break;
                    }
                    Err(_) => {
                        q.pop_front();
                        self.dropped += 1;
                    }
                }
            }
        }
        self.backlog.retain(|_, q| !q.is_empty());
        stale
    }

    fn forget(&mut self, stale: Vec<PathBuf>) {
        for p in stale {
            tracing::debug!(target: "net", "hub {}: removing stale member {}", self.id, p.display());
            let _ = std::fs::remove_file(&p);
            self.peers.retain(|q| *q != p);
            self.backlog.remove(&p);
        }
    }

    fn read(&mut self) {
        let mut buf = vec![0u8; MAX_FRAME];
        for _ in 0..READS_PER_POLL {
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    if self.rx.len() >= QUEUE_LIMIT {
                        self.dropped += 1;
                    } else if n > 0 {
                        self.rx.push_back(buf[..n].to_vec());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

impl Drop for HubNet {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl NetBackend for HubNet {
    fn send(&mut self, frame: &[u8]) {
        if frame.is_empty() || frame.len() > MAX_FRAME {
            self.dropped += 1;
            return;
        }
        self.rescan(Instant::now());
        let mut stale = self.flush();
        for p in &self.peers {
            if let Some(q) = self.backlog.get_mut(p) {
                // Keep the order: behind what already waits.
                if q.len() < PEER_QUEUE_LIMIT {
                    q.push_back(frame.to_vec());
                } else {
                    self.dropped += 1;
                }
                continue;
            }
            match self.sock.send_to(frame, p) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.backlog.entry(p.clone()).or_default().push_back(frame.to_vec());
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused || e.kind() == ErrorKind::NotFound => {
                    stale.push(p.clone());
                }
                Err(_) => self.dropped += 1,
            }
        }
        self.forget(stale);
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.rx.is_empty() {
            self.read();
        }
        crate::pop_frame(&mut self.rx, buf)
    }

    fn peek_len(&self) -> Option<usize> {
        self.rx.front().map(Vec::len)
    }

    fn poll(&mut self, _now: Instant) -> Option<Duration> {
        // Level-triggered fd: readable exactly while frames wait in the socket.
        self.readable = true;
        self.read();
        let stale = self.flush();
        self.forget(stale);
        (!self.backlog.is_empty()).then_some(RETRY)
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.sock.as_fd())
    }

    fn debug_label(&self) -> &str {
        &self.label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferrovm-net-hub-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn member(dir: &Path) -> HubNet {
        HubNet::open(&HubConfig { id: "t".into(), dir: Some(dir.to_path_buf()) }).unwrap()
    }

    fn recv_all(m: &mut HubNet) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        m.poll(Instant::now());
        while let Some(n) = m.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    #[test]
    fn broadcast_to_all_members_and_stale_cleanup() {
        let dir = tempdir("bcast");
        let mut a = member(&dir);
        let mut b = member(&dir);
        let mut c = member(&dir);
        a.send(b"from a");
        assert_eq!(recv_all(&mut b), vec![b"from a".to_vec()]);
        assert_eq!(recv_all(&mut c), vec![b"from a".to_vec()]);
        assert!(recv_all(&mut a).is_empty(), "a member does not hear itself");

        // A member whose process died leaves its socket file behind, which
        // refuses datagrams as any file without a bound socket does. A
        // plain file stands in for it: a socket bound and closed here could
        // live on for a moment in a child that another test's thread forks.
        drop(c);
        let ghost = dir.join("99999-0.sock");
        std::fs::write(&ghost, b"").unwrap();
        a.last_scan = None;
        a.send(b"again");
        assert!(!ghost.exists(), "stale socket removed");
        assert_eq!(recv_all(&mut b), vec![b"again".to_vec()]);
        drop(a);
        drop(b);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_ids_are_refused() {
        for id in ["", "../x", ".hidden", "a/b", &"x".repeat(65)] {
            assert!(check_id(id).is_err(), "{id}");
        }
        assert!(check_id("lan-0_a.b").is_ok());
    }
}
