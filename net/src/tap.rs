//! A host TAP interface: the guest's frames go to the host kernel's network
//! stack as if the NIC were plugged into the host, as QEMU's `-netdev tap`
//! and `-netdev bridge` do.
//!
//! - `tap`: the interface `ifname` (a new one named `tapN` by the kernel
//!   when none is given; a persistent one made with `ip tuntap add` is
//!   attached to). `script` runs with the interface's name once it exists,
//!   and `downscript` when the backend goes; with neither, the interface is
//!   left as the kernel made it (down, no address), for the user to set up.
//! - `bridge`: a new interface, given the bridge's MTU, made a port of the
//!   bridge `br` and brought up, as QEMU's bridge helper does.
//!
//! Making or attaching an interface needs `CAP_NET_ADMIN`, or a persistent
//! interface that the user owns. Frames are read from the interface's file
//! descriptor into a bounded queue for the guest; frames the kernel cannot
//! take are dropped and counted, as a NIC on a busy wire drops them.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use crate::{Error, NetBackend};

/// Frames read from the interface per poll.
const READS_PER_POLL: usize = 256;
/// Frames waiting for the guest at most.
const QUEUE_LIMIT: usize = 1024;
/// The largest frame read (an interface with a jumbo MTU).
const MAX_FRAME: usize = 65536;

/// A TAP backend's configuration (`--nic tap,...` or `--nic bridge,...`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TapConfig {
    /// `ifname=`: the interface; `None` lets the kernel name it `tapN`.
    pub ifname: Option<String>,
    /// `script=`: run as `SCRIPT IFNAME` once the interface exists.
    pub script: Option<PathBuf>,
    /// `downscript=`: run as `SCRIPT IFNAME` when the backend goes.
    pub downscript: Option<PathBuf>,
    /// `br=`: the bridge to make the new interface a port of.
    pub bridge: Option<String>,
}

/// Checks an interface name as the kernel takes one (at most 15 bytes, no
/// '/', blanks or ':').
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
    {
        return Err(format!("'{name}' is not an interface name (1-15 characters, no '/', ':' or blanks)"));
    }
    Ok(())
}

/// Runs `script IFNAME`, as QEMU runs its network scripts: a failure to
/// start it or a non-zero status is an error.
fn run_script(script: &Path, ifname: &str) -> Result<(), String> {
    let status = Command::new(script)
        .arg(ifname)
        .status()
        .map_err(|e| format!("could not launch network script {}: {e}", script.display()))?;
    if !status.success() {
        return Err(format!("network script {} {ifname} failed with {status}", script.display()));
    }
    Ok(())
}

/// Runs ip(8) with `args`; its standard output, or its complaint.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip(8): {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The MTU of `bridge`, from ip(8)'s details of the link (sysfs shows the
/// network namespace that mounted it, not necessarily this process's).
fn bridge_mtu(bridge: &str) -> Result<String, String> {
    let link = ip(&["-o", "-d", "link", "show", "dev", bridge])
        .map_err(|e| format!("bridge '{bridge}' does not exist ({e})"))?;
    let words: Vec<&str> = link.split_whitespace().collect();
    if !words.contains(&"bridge") {
        return Err(format!("'{bridge}' is not a bridge"));
    }
    let mtu = words.iter().position(|w| *w == "mtu").and_then(|i| words.get(i + 1));
    mtu.map(|m| m.to_string()).ok_or_else(|| format!("bridge '{bridge}': ip(8) gave no MTU"))
}

/// Makes `ifname` a port of `bridge` with the bridge's MTU, and brings it up.
fn join_bridge(ifname: &str, bridge: &str) -> Result<(), String> {
    let mtu = bridge_mtu(bridge)?;
    ip(&["link", "set", "dev", ifname, "mtu", &mtu, "master", bridge, "up"])
        .map_err(|e| format!("cannot add {ifname} to bridge {bridge}: {e}"))?;
    Ok(())
}

/// One guest NIC's host TAP interface.
pub struct TapNet {
    label: String,
    ifname: String,
    dev: SyncDevice,
    downscript: Option<PathBuf>,
    rx: VecDeque<Vec<u8>>,
    buf: Vec<u8>,
    /// Frames dropped: the queue for the guest was full, or the kernel did
    /// not take a frame the guest sent.
    dropped: u64,
}

impl std::fmt::Debug for TapNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapNet").field("ifname", &self.ifname).field("dropped", &self.dropped).finish()
    }
}

impl TapNet {
    /// Makes (or attaches to) the interface, runs the setup script or joins
    /// the bridge.
    pub fn open(cfg: &TapConfig) -> Result<Self, Error> {
        let bad = |reason: String| Error::Backend { backend: "tap".into(), reason };
        if let Some(n) = &cfg.ifname {
            check_ifname(n).map_err(bad)?;
        }
        let mut b = DeviceBuilder::new().layer(Layer::L2).packet_information(false).inherit_enable_state();
        if let Some(n) = &cfg.ifname {
            b = b.name(n.clone());
        }
        let dev = b.build_sync().map_err(|e| {
            let which = cfg.ifname.as_deref().unwrap_or("a new interface");
            let hint = if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                " (making a TAP interface needs CAP_NET_ADMIN; or make a persistent one for your user: \
                 ip tuntap add NAME mode tap user USER)"
            } else {
                ""
            };
            bad(format!("cannot open TAP interface {which} through /dev/net/tun: {e}{hint}"))
        })?;
        dev.set_nonblocking(true).map_err(|e| bad(format!("cannot make the TAP interface non-blocking: {e}")))?;
        let ifname = dev.name().map_err(|e| bad(format!("cannot read the TAP interface's name: {e}")))?;
        if let Some(br) = &cfg.bridge {
            join_bridge(&ifname, br).map_err(bad)?;
        }
        if let Some(s) = &cfg.script {
            run_script(s, &ifname).map_err(bad)?;
        }
        tracing::info!(target: "net", "TAP interface {ifname} is the NIC's wire");
        Ok(TapNet {
            label: format!("tap:{ifname}"),
            ifname,
            dev,
            downscript: cfg.downscript.clone(),
            rx: VecDeque::new(),
            buf: vec![0; MAX_FRAME],
            dropped: 0,
        })
    }

    /// The interface's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Frames dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn read(&mut self) {
        for _ in 0..READS_PER_POLL {
            match self.dev.recv(&mut self.buf) {
                Ok(0) => return,
                Ok(n) => {
                    if self.rx.len() >= QUEUE_LIMIT {
                        self.dropped += 1;
                    } else {
                        self.rx.push_back(self.buf[..n].to_vec());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }
}

impl Drop for TapNet {
    fn drop(&mut self) {
        if let Some(s) = &self.downscript {
            if let Err(e) = run_script(s, &self.ifname) {
                tracing::warn!(target: "net", "{e}");
            }
        }
    }
}

impl NetBackend for TapNet {
    fn send(&mut self, frame: &[u8]) {
        if frame.is_empty() || frame.len() > MAX_FRAME {
            self.dropped += 1;
            return;
        }
        loop {
            match self.dev.send(frame) {
                Ok(_) => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Full, or the interface is down: the frame is lost on the wire.
                Err(_) => {
                    self.dropped += 1;
                    return;
                }
            }
        }
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
        // The fd is level-triggered: it stays readable while frames wait in
        // the kernel, and each poll drains it into the bounded queue.
        self.read();
        None
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.dev.as_fd())
    }

    fn debug_label(&self) -> &str {
        &self.label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        for bad in ["", "a/b", "has space", "x:1", &"t".repeat(16), ".", ".."] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
        assert!(check_ifname("tap0").is_ok());
        assert!(check_ifname("fv-tap_1.a").is_ok());
    }

    #[test]
    fn a_missing_bridge_is_named() {
        let e = join_bridge("tap0", "no-such-br9").unwrap_err();
        assert!(e.contains("no-such-br9") && e.contains("does not exist"), "{e}");
    }

    #[test]
    fn a_failing_script_is_an_error() {
        let e = run_script(Path::new("/bin/false"), "tap0").unwrap_err();
        assert!(e.contains("/bin/false tap0 failed"), "{e}");
        let e = run_script(Path::new("/nonexistent/qemu-ifup"), "tap0").unwrap_err();
        assert!(e.contains("could not launch network script /nonexistent/qemu-ifup"), "{e}");
        run_script(Path::new("/bin/true"), "tap0").unwrap();
    }
}
