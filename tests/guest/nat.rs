//! The user-mode NAT guest of the network tests: Debian's generic kernel
//! with `initramfs-net.cpio.gz`, its serial console read line by line, the
//! host-side servers it talks to, and the port-forward helpers. Shared by
//! tests/net.rs and tests/qemu_cli.rs.

#![allow(dead_code, reason = "each suite uses what it needs")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::encode::base64;

/// The longest a whole test may take.
pub const TEST_LIMIT: Duration = Duration::from_secs(480);

/// The kernel command line that runs `script` in the guest and powers it
/// off after.
pub fn net_cmdline(script: &str) -> String {
    let cmdline = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", base64(script.as_bytes()));
    assert!(cmdline.len() < 2048, "the kernel command line holds 2 KiB; this one has {}", cmdline.len());
    cmdline
}

pub fn images() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images");
    if dir.join("vmlinuz-generic").is_file() && dir.join("initramfs-net.cpio.gz").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: guest-images/vmlinuz-generic or guest-images/initramfs-net.cpio.gz is missing \
             (run scripts/guest-images.sh)"
        );
        None
    }
}

/// Deterministic, incompressible-looking bytes (xorshift).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SHA-256 (FIPS 180-4), for comparing with the guest's sha256sum.
pub fn sha256(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[4 * i..4 * i + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7].wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [t1.wrapping_add(t2), v[0], v[1], v[2], v[3].wrapping_add(t1), v[4], v[5], v[6]];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Serves HTTP GETs on 127.0.0.1 from a thread: `/stage2` is what the
/// returned slot holds when the request comes, any other path is `blob`.
pub fn http_server(blob: Vec<u8>) -> (u16, Arc<Mutex<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stage2 = Arc::new(Mutex::new(String::new()));
    let slot = stage2.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            s.set_read_timeout(Some(Duration::from_secs(60))).ok();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            let script;
            let body = if req.starts_with(b"GET /stage2 ") {
                script = slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
                script.as_bytes()
            } else {
                &blob[..]
            };
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
        }
    });
    (port, stage2)
}

/// Loads the NIC modules; dhcp.sh configures an interface from a lease
/// (the default route only through eth0).
pub const MODULES_AND_DHCP: &str = r#"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net e1000; do
    insmod /lib/modules/$m.ko || echo "T:insmod-failed $m"
done
echo "T:ifaces $(ls /sys/class/net | tr '\n' ' ')"
cat > /tmp/dhcp.sh <<'END'
#!/bin/sh
case "$1" in
bound|renew)
    ifconfig $interface $ip netmask ${subnet:-255.255.255.0} up
    [ "$interface" = eth0 ] && route add default gw $router dev $interface
    echo "T:lease $interface $ip $router"
    echo "T:boot $interface ${boot_file:-none} ${bootfile:-none} ${siaddr:-none}" ;;
esac
END
chmod +x /tmp/dhcp.sh
"#;

/// The script on the kernel command line (which holds only 2 KiB): an
/// address, then the rest of the script from the host.
pub const STAGE1: &str = r#"
ifconfig eth0 up
read t0 x < /proc/uptime
udhcpc -i eth0 -s /tmp/dhcp.sh -n -q -t 10 -T 1
read t1 x < /proc/uptime
echo "T:dhcp $t0 $t1"
echo "T:addr $(ifconfig eth0 | grep -o 'inet addr:[0-9.]*' | cut -d: -f2)"
wget -q -O /tmp/stage2 http://10.0.2.2:@HTTP@/stage2 || echo "T:stage2-failed $?"
. /tmp/stage2
"#;

/// A running guest and its serial output, line by line, with arrival times.
pub struct Guest {
    name: String,
    child: Child,
    lines: Receiver<(Instant, String)>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    deadline: Instant,
}

impl Guest {
    /// Boots the generic kernel under `accel` with `nics` (`--nic` values)
    /// and `script` as `ferrovm.cmd`.
    pub fn boot(name: &str, accel: &str, dir: &Path, nics: &[String], script: &str) -> Guest {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrovm"));
        cmd.args(["run", "--accel", accel, "--mem", "512M", "--serial", "stdio", "--stats"])
            .args(["--timeout", &TEST_LIMIT.as_secs().to_string()]);
        for nic in nics {
            cmd.arg("--nic").arg(nic);
        }
        cmd.arg("--kernel")
            .arg(dir.join("vmlinuz-generic"))
            .arg("--initrd")
            .arg(dir.join("initramfs-net.cpio.gz"))
            .arg("--append")
            .arg(net_cmdline(script));
        Guest::start(name, cmd)
    }

    /// The emulator's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `cmd` (an emulator with the guest's serial console on
    /// stdout) and reads its output.
    pub fn start(name: &str, mut cmd: Command) -> Guest {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the emulator starts");
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n') {
                let Ok(line) = line else { break };
                let s = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                if tx.send((Instant::now(), s)).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            *sink.lock().unwrap_or_else(|e| e.into_inner()) = s;
        });
        Guest { name: name.to_string(), child, lines, seen: Vec::new(), stderr, deadline: Instant::now() + TEST_LIMIT }
    }

    /// Waits for the line starting with `T:{key}`; returns its rest and when it came.
    pub fn wait_for(&mut self, key: &str) -> (String, Instant) {
        let prefix = format!("T:{key}");
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(&prefix) {
                        if rest.is_empty() || rest.starts_with(' ') {
                            return (rest.trim().to_string(), at);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.fail(&format!("no {prefix} within {TEST_LIMIT:?}")),
                Err(RecvTimeoutError::Disconnected) => self.fail(&format!("the guest stopped before {prefix}")),
            }
        }
    }

    /// The rest of every serial line seen so far that starts with `T:{key} `.
    pub fn seen_with(&self, key: &str) -> Vec<String> {
        let prefix = format!("T:{key} ");
        self.seen.iter().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_string).collect()
    }

    pub fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        let tail: Vec<&String> = self.seen.iter().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect();
        let err = self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
        panic!(
            "{}: {why}\n--- last serial lines:\n{}\n--- stderr:\n{err}",
            self.name,
            tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        );
    }

    /// Fails with the guest's output unless `ok`.
    pub fn check(&mut self, ok: bool, what: &str) {
        if !ok {
            self.fail(what);
        }
    }

    /// Waits for the script's end and the power-off; returns the
    /// statistics (stderr).
    pub fn finish(mut self) -> String {
        self.wait_for("done");
        let status = self.child.wait().expect("ferrovm exits");
        std::thread::sleep(Duration::from_millis(200));
        let err = self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(status.code(), Some(0), "{}: poweroff ends the run; stderr:\n{err}", self.name);
        for line in err.lines().filter(|l| l.contains("nic ") || l.contains("MIPS") || l.contains("halted")) {
            eprintln!("{}: {line}", self.name);
        }
        err
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to a host forward once the guest listens and runs `talk` on
/// the connection; retries while the guest's listener is not there yet (the
/// NAT then drops the host side, and `talk` says it got nothing).
pub fn through_forward(port: u16, g: &mut Guest, mut talk: impl FnMut(&mut TcpStream) -> bool) -> Instant {
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { continue };
        let start = Instant::now();
        s.set_read_timeout(Some(TEST_LIMIT)).ok();
        if talk(&mut s) {
            return start;
        }
    }
    g.fail(&format!("could not use the host forward on port {port}"))
}

/// Sends `data` through a forward and waits for the guest to close its end.
pub fn send_through(port: u16, data: &[u8], g: &mut Guest) -> Instant {
    through_forward(port, g, |s| {
        if s.write_all(data).is_err() || s.shutdown(Shutdown::Write).is_err() {
            return false;
        }
        let mut sink = [0u8; 64];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        true
    })
}

/// Receives everything the guest sends through a forward.
pub fn receive_through(port: u16, g: &mut Guest) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let start = through_forward(port, g, |s| {
        got.clear();
        let _ = s.read_to_end(&mut got);
        !got.is_empty()
    });
    (got, start.elapsed())
}

/// Sends `data` through a forward, then reads `reply_len` bytes the guest
/// sends back, then closes. (busybox `nc` quits at the peer's FIN, so the
/// FIN waits for the reply.)
pub fn exchange_through(port: u16, data: &[u8], reply_len: usize, g: &mut Guest) -> Vec<u8> {
    let mut got = vec![0u8; reply_len];
    through_forward(port, g, |s| {
        s.write_all(data).is_ok() && s.read_exact(&mut got).is_ok() && s.shutdown(Shutdown::Write).is_ok()
    });
    got
}
