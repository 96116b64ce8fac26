//! Networking with Debian's generic kernel in the interpreter: the e1000
//! and virtio-net models behind the user-mode NAT (`--nic user`).
//!
//! The guest loads the NIC modules from `initramfs-net.cpio.gz` (built by
//! `scripts/guest-images.sh`), gets an address with `udhcpc`, fetches a
//! 1 MiB file over HTTP from a server this test runs on the host's
//! 127.0.0.1 (through the gateway 10.0.2.2), and moves 8 MiB through
//! host port forwards in both directions with busybox `nc`. Every hash is
//! compared with the host's. Without the images the tests say so and pass.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "guest/encode.rs"]
mod encode;
use encode::base64;

/// Tests boot one guest at a time: the host has few cores, and the
/// throughput figures mean more without a second guest competing.
static ONE_GUEST: Mutex<()> = Mutex::new(());

/// The longest a whole test may take.
const TEST_LIMIT: Duration = Duration::from_secs(480);
/// Bytes fetched over HTTP.
const HTTP_BYTES: usize = 1 << 20;
/// Bytes sent each way through the port forwards.
const FWD_BYTES: usize = 8 << 20;
/// Guest ports of the two forwards.
const GUEST_PORT_IN: u16 = 5555;
const GUEST_PORT_OUT: u16 = 5556;

fn images() -> Option<PathBuf> {
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
fn pattern(len: usize, seed: u64) -> Vec<u8> {
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
fn sha256(data: &[u8]) -> String {
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
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Serves `body` to every HTTP request on 127.0.0.1, from a thread.
fn http_server(body: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
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
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(&body));
        }
    });
    port
}

/// The guest's script; `@HTTP@` is the host's HTTP port.
const SCRIPT: &str = r#"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net e1000; do
    insmod /lib/modules/$m.ko || echo "T:insmod-failed $m"
done
echo "T:ifaces $(ls /sys/class/net | tr '\n' ' ')"
cat > /tmp/dhcp.sh <<'EOF'
#!/bin/sh
case "$1" in
bound|renew)
    ifconfig $interface $ip netmask ${subnet:-255.255.255.0} up
    route add default gw $router dev $interface
    echo "T:lease $ip $router" ;;
esac
EOF
chmod +x /tmp/dhcp.sh
ifconfig eth0 up
read t0 x < /proc/uptime
udhcpc -i eth0 -s /tmp/dhcp.sh -n -q -t 10 -T 1
read t1 x < /proc/uptime
echo "T:dhcp $t0 $t1"
echo "T:addr $(ifconfig eth0 | grep -o 'inet addr:[0-9.]*' | cut -d: -f2)"
read t0 x < /proc/uptime
wget -q -O /tmp/blob http://10.0.2.2:@HTTP@/blob || echo "T:wget-failed $?"
read t1 x < /proc/uptime
echo "T:wget $(sha256sum < /tmp/blob | cut -d' ' -f1) $(wc -c < /tmp/blob) $t0 $t1"
nc -l -p @IN@ < /dev/null > /tmp/in &
pid=$!
echo "T:ready-in"
wait $pid
echo "T:in-done"
echo "T:in $(sha256sum < /tmp/in | cut -d' ' -f1) $(wc -c < /tmp/in)"
nc -l -p @OUT@ < /tmp/in > /dev/null &
pid=$!
echo "T:ready-out"
wait $pid
echo "T:out-done"
echo "T:done"
"#;

/// A running guest and its serial output, line by line, with arrival times.
struct Guest {
    child: Child,
    lines: Receiver<(Instant, String)>,
    seen: Vec<String>,
    stderr: std::sync::Arc<Mutex<String>>,
    deadline: Instant,
}

impl Guest {
    fn boot(dir: &Path, model: &str, http: u16, fwd_in: u16, fwd_out: u16) -> Guest {
        let script = SCRIPT
            .replace("@HTTP@", &http.to_string())
            .replace("@IN@", &GUEST_PORT_IN.to_string())
            .replace("@OUT@", &GUEST_PORT_OUT.to_string());
        let cmdline = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", base64(script.as_bytes()));
        let nic = format!(
            "user,model={model},hostfwd=tcp:127.0.0.1:{fwd_in}-:{GUEST_PORT_IN},hostfwd=tcp:127.0.0.1:{fwd_out}-:{GUEST_PORT_OUT}"
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrovm"))
            .args(["run", "--accel", "interp", "--mem", "512M", "--serial", "stdio", "--stats"])
            .args(["--timeout", &TEST_LIMIT.as_secs().to_string()])
            .arg("--nic")
            .arg(&nic)
            .arg("--kernel")
            .arg(dir.join("vmlinuz-generic"))
            .arg("--initrd")
            .arg(dir.join("initramfs-net.cpio.gz"))
            .arg("--append")
            .arg(&cmdline)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferrovm starts");
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
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            *sink.lock().unwrap_or_else(|e| e.into_inner()) = s;
        });
        Guest { child, lines, seen: Vec::new(), stderr, deadline: Instant::now() + TEST_LIMIT }
    }

    /// Waits for the line starting with `T:{key}`; returns its rest and when it came.
    fn wait_for(&mut self, key: &str) -> (String, Instant) {
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

    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        let tail: Vec<&String> = self.seen.iter().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect();
        let err = self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
        panic!(
            "{why}\n--- last serial lines:\n{}\n--- stderr:\n{err}",
            tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        );
    }
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn uptimes(s: &str) -> (f64, f64) {
    let v: Vec<f64> = s.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    (v[v.len() - 2], v[v.len() - 1])
}

/// Sends `data` through a forward once the guest listens; retries while the
/// guest's listener is not there yet (the NAT then drops the host side).
fn send_through(port: u16, data: &[u8], g: &mut Guest) -> Instant {
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { continue };
        let start = Instant::now();
        if s.write_all(data).is_ok() && s.shutdown(Shutdown::Write).is_ok() {
            // Wait for the guest to close its end.
            let mut sink = [0u8; 64];
            s.set_read_timeout(Some(TEST_LIMIT)).ok();
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            return start;
        }
    }
    g.fail("could not send through the host forward")
}

/// Receives everything the guest sends through a forward.
fn receive_through(port: u16, g: &mut Guest) -> (Vec<u8>, Duration) {
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { continue };
        let start = Instant::now();
        s.set_read_timeout(Some(TEST_LIMIT)).ok();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        if !got.is_empty() {
            return (got, start.elapsed());
        }
    }
    g.fail("nothing came back through the host forward")
}

static GUESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn nic_test(model: &str) {
    // One guest at a time: guests in parallel on a small machine starve
    // each other's timers and the tests measure the host, not the guest.
    let _one_at_a_time = GUESTS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(dir) = images() else { return };
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let blob = pattern(HTTP_BYTES, 1);
    let http = http_server(blob.clone());
    let (fwd_in, fwd_out) = (free_port(), free_port());
    let mut g = Guest::boot(&dir, model, http, fwd_in, fwd_out);

    let (ifaces, _) = g.wait_for("ifaces");
    assert!(ifaces.split_whitespace().any(|i| i == "eth0"), "no eth0: {ifaces}");
    let (dhcp, _) = g.wait_for("dhcp");
    let (d0, d1) = uptimes(&dhcp);
    let (addr, _) = g.wait_for("addr");
    assert_eq!(addr, "10.0.2.15", "udhcpc's address");

    let (wget, _) = g.wait_for("wget");
    let f: Vec<&str> = wget.split_whitespace().collect();
    assert_eq!(f[0], sha256(&blob), "the fetched file's hash; guest said: {wget}");
    assert_eq!(f[1], HTTP_BYTES.to_string());
    let (w0, w1) = uptimes(&wget);

    let data = pattern(FWD_BYTES, 2);
    let want = sha256(&data);
    g.wait_for("ready-in");
    let start = send_through(fwd_in, &data, &mut g);
    let (_, done) = g.wait_for("in-done");
    let in_time = done.duration_since(start);
    let (got_in, _) = g.wait_for("in");
    assert_eq!(got_in, format!("{want} {FWD_BYTES}"), "host -> guest through hostfwd");

    g.wait_for("ready-out");
    let (back, out_time) = receive_through(fwd_out, &mut g);
    assert_eq!(back.len(), FWD_BYTES, "guest -> host through hostfwd");
    assert_eq!(sha256(&back), want, "guest -> host through hostfwd");
    g.wait_for("out-done");
    g.wait_for("done");
    let status = g.child.wait().expect("ferrovm exits");
    std::thread::sleep(Duration::from_millis(200));
    let err = g.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(status.code(), Some(0), "poweroff ends the run; stderr:\n{err}");
    for line in err.lines().filter(|l| l.contains("nic ") || l.contains("MIPS")) {
        eprintln!("{line}");
    }
    eprintln!(
        "{model}: DHCP {:.2} s; HTTP 1 MiB in {:.2} s ({:.2} MiB/s); hostfwd 8 MiB host->guest {:.2} MiB/s, \
         guest->host {:.2} MiB/s; whole test {:.1} s",
        d1 - d0,
        w1 - w0,
        1.0 / (w1 - w0).max(0.01),
        mib_per_s(FWD_BYTES, in_time),
        mib_per_s(FWD_BYTES, out_time),
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn virtio_net_dhcp_http_and_hostfwd_in_the_interpreter() {
    nic_test("virtio");
}

#[test]
fn e1000_dhcp_http_and_hostfwd_in_the_interpreter() {
    nic_test("e1000");
}

#[test]
fn sha256_matches_the_standard_vectors() {
    assert_eq!(sha256(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(sha256(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(sha256(&[b'a'; 1000]), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}
