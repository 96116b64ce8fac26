//! `ferrovm bench --net`: TCP throughput through the user-mode NAT, per NIC
//! model, both ways, with QEMU's `-netdev user` on the same NIC model and the
//! same guest side by side when `qemu-system-x86_64` is installed.
//!
//! The guest is Debian's generic kernel with `initramfs-net.cpio.gz` (built
//! by `scripts/guest-images.sh`) in the interpreter and, when /dev/kvm is
//! usable, under KVM (QEMU: TCG). It gets an
//! address by DHCP and listens on two ports that host port forwards reach:
//! - host -> guest: the host writes N MiB to the first port and closes its
//!   side; the guest's `nc` reads it into /dev/null and exits at the EOF,
//!   which comes after the last byte, and the guest says so on its serial
//!   console. Timed from the host's connect to that line. (The socket's own
//!   EOF says nothing about delivery: busybox `nc` half-closes at once when
//!   its stdin is /dev/null, and the host's last write returns while up to
//!   several MiB still wait in socket and NAT buffers.)
//! - guest -> host: the guest's `nc` sends /dev/zero to the second port;
//!   timed from the host's connect to its N-th MiB.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::BenchArgs;

#[path = "../../tests/guest/encode.rs"]
mod encode;

/// Guest ports the two forwards reach.
const PORT_IN: u16 = 5555;
const PORT_OUT: u16 = 5556;
/// How long a guest may take to boot and listen.
const BOOT_LIMIT: Duration = Duration::from_secs(600);

const SCRIPT: &str = r#"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net e1000; do
    insmod /lib/modules/$m.ko 2> /dev/null
done
cat > /tmp/dhcp.sh <<'END'
#!/bin/sh
[ "$1" = bound ] && ifconfig $interface $ip netmask ${subnet:-255.255.255.0} up && route add default gw $router
END
chmod +x /tmp/dhcp.sh
ifconfig eth0 up
udhcpc -i eth0 -s /tmp/dhcp.sh -n -q -t 10 -T 1 > /dev/null 2>&1
echo "T:addr $(ifconfig eth0 | grep -o 'inet addr:[0-9.]*' | cut -d: -f2)"
nc -l -p @IN@ < /dev/null > /dev/null &
sleep 1
echo "T:ready-in"
wait $!
echo "T:in-done $?"
nc -l -p @OUT@ < /dev/zero > /dev/null &
sleep 1
echo "T:ready-out"
wait
echo "T:done"
"#;

/// Which emulator runs the guest.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vmm {
    /// ferrovm with this `--accel`.
    Ferrovm(&'static str),
    Qemu,
}

/// One guest under one emulator, its serial console read line by line.
struct BenchGuest {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl BenchGuest {
    fn start(vmm: Vmm, qemu: Option<&Path>, images: &Path, model: &str, ports: (u16, u16)) -> Result<Self, String> {
        let script = SCRIPT.replace("@IN@", &PORT_IN.to_string()).replace("@OUT@", &PORT_OUT.to_string());
        let append = format!("console=ttyS0 ferrovm.poweroff=1 ferrovm.cmd={}", encode::base64(script.as_bytes()));
        let fwd = format!("hostfwd=tcp:127.0.0.1:{}-:{PORT_IN},hostfwd=tcp:127.0.0.1:{}-:{PORT_OUT}", ports.0, ports.1);
        let kernel = images.join("vmlinuz-generic");
        let initrd = images.join("initramfs-net.cpio.gz");
        let mut cmd = match vmm {
            Vmm::Ferrovm(accel) => {
                let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
                c.args(["run", "--accel", accel, "--mem", "512M", "--serial", "stdio"])
                    .arg("--nic")
                    .arg(format!("user,model={model},{fwd}"))
                    .arg("--kernel")
                    .arg(&kernel)
                    .arg("--initrd")
                    .arg(&initrd)
                    .arg("--append")
                    .arg(&append);
                c
            }
            Vmm::Qemu => {
                let device = if model == "virtio" { "virtio-net-pci" } else { "e1000" };
                let mut c = Command::new(qemu.ok_or("qemu-system-x86_64 is not installed")?);
                c.args(["-accel", "tcg", "-m", "512", "-nodefaults", "-display", "none", "-serial", "stdio"])
                    .args(["-monitor", "none", "-no-reboot"])
                    .args(["-netdev", &format!("user,id=n0,{fwd}"), "-device", &format!("{device},netdev=n0")])
                    .arg("-kernel")
                    .arg(&kernel)
                    .arg("-initrd")
                    .arg(&initrd)
                    .arg("-append")
                    .arg(&append);
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n') {
                let Ok(line) = line else { break };
                if tx.send(String::from_utf8_lossy(&line).trim_end().to_string()).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().ok_or("no stderr")?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(BenchGuest { child, lines, stderr })
    }

    /// The rest of the line `T:{key}`.
    fn wait_for(&self, key: &str, limit: Duration) -> Result<String, String> {
        let prefix = format!("T:{key}");
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| {
                let err = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
                let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
                format!("no {prefix} from the guest (its last message: {last:?})")
            })?;
            if let Some(rest) = line.strip_prefix(&prefix) {
                return Ok(rest.trim().to_string());
            }
        }
    }
}

impl Drop for BenchGuest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to a forward once the guest listens (a forward may take the
/// connection and drop it while the guest's listener is not up yet).
fn connect(port: u16) -> Result<TcpStream, String> {
    let mut last = String::new();
    for _ in 0..40 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(format!("cannot connect to the forward on port {port}: {last}"))
}

/// Host -> guest: writes `bytes` and closes, then waits for `delivered`
/// (the guest's word that its reader got the last byte).
fn push(
    port: u16,
    bytes: usize,
    limit: Duration,
    delivered: impl FnOnce() -> Result<(), String>,
) -> Result<Duration, String> {
    let chunk = vec![0x5au8; 1 << 16];
    for _ in 0..3 {
        let mut s = connect(port)?;
        s.set_write_timeout(Some(limit)).ok();
        s.set_read_timeout(Some(limit)).ok();
        let t = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            if s.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n;
        }
        if left > 0 {
            // The forward dropped the connection: the guest was not listening yet.
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        if s.shutdown(Shutdown::Write).is_err() {
            continue;
        }
        // The guest's nc half-closed when it took the connection: a clean
        // EOF. A reset means the forward had nobody to give it to.
        let mut b = [0u8; 64];
        loop {
            match s.read(&mut b) {
                Ok(0) => {
                    delivered()?;
                    return Ok(t.elapsed());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err("the guest never took the data".into())
}

/// Guest -> host: reads `bytes`.
fn pull(port: u16, bytes: usize, limit: Duration) -> Result<Duration, String> {
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..3 {
        let mut s = connect(port)?;
        s.set_read_timeout(Some(limit)).ok();
        let t = Instant::now();
        let mut got = 0;
        while got < bytes {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        if got >= bytes {
            return Ok(t.elapsed());
        }
        if got > 0 {
            return Err(format!("the guest stopped after {got} of {bytes} bytes"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err("the guest never sent".into())
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// MiB/s host -> guest and guest -> host for one model under one emulator.
fn measure(vmm: Vmm, qemu: Option<&Path>, images: &Path, model: &str, bytes: usize) -> Result<(f64, f64), String> {
    let ports = (free_port()?, free_port()?);
    let g = BenchGuest::start(vmm, qemu, images, model, ports)?;
    let addr = g.wait_for("addr", BOOT_LIMIT)?;
    if addr.is_empty() {
        return Err("the guest got no address".into());
    }
    // 1 MiB/s at the least.
    let limit = Duration::from_secs(60 + (bytes >> 20) as u64);
    g.wait_for("ready-in", Duration::from_secs(60))?;
    let t_in = push(ports.0, bytes, limit, || match g.wait_for("in-done", limit)?.as_str() {
        "0" => Ok(()),
        status => Err(format!("the guest's nc exited with status {status} while receiving")),
    })?;
    g.wait_for("ready-out", Duration::from_secs(60))?;
    let t_out = pull(ports.1, bytes, limit)?;
    let mib = bytes as f64 / f64::from(1 << 20);
    Ok((mib / t_in.as_secs_f64(), mib / t_out.as_secs_f64()))
}

/// MiB/s host to guest and guest to host of one model under one emulator,
/// one pair per run, or why a run failed (which ends its series).
#[derive(Default)]
struct Series {
    runs: Vec<(f64, f64)>,
    error: Option<String>,
}

impl Series {
    /// The median and the range of one direction (0: host to guest).
    fn summary(&self, dir: usize) -> Option<(f64, f64, f64)> {
        let mut v: Vec<f64> = self.runs.iter().map(|r| if dir == 0 { r.0 } else { r.1 }).collect();
        median_range(&mut v)
    }
}

/// The median (the mean of the middle two for an even count), the least and
/// the greatest of `v`.
fn median_range(v: &mut [f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some((median, v[0], v[n - 1]))
}

/// `ferrovm bench --net`.
pub fn run(args: &BenchArgs) -> i32 {
    let images: PathBuf = args.images.clone();
    let mib = args.net_mib.max(1);
    let runs = args.runs.max(1);
    for f in ["vmlinuz-generic", "initramfs-net.cpio.gz"] {
        if !images.join(f).is_file() {
            println!(
                "ferrovm bench --net: skipped, {} is missing (run scripts/guest-images.sh)",
                images.join(f).display()
            );
            return 0;
        }
    }
    let qemu = crate::demo::which("qemu-system-x86_64");
    println!("ferrovm bench --net: TCP through the user-mode NAT, {mib} MiB each way through host port forwards");
    println!(
        "guest: Debian's generic kernel, busybox nc; ferrovm in the interpreter and under KVM, QEMU with TCG and -netdev user"
    );
    println!("median of {runs} run(s) each, the emulators taking turns; the range in brackets\n");
    if qemu.is_none() {
        println!("QEMU column skipped: qemu-system-x86_64 is not on PATH (Debian package qemu-system-x86)\n");
    }
    let kvm = hvf_kvm_accel::open().is_ok();
    if !kvm {
        println!("kvm column skipped: /dev/kvm is not usable here\n");
    }
    let w = if runs > 1 { 22 } else { 12 };
    println!(
        "{:<8} {:<12} {:>w$} {:>w$} {:>w$} {:>w$} {:>12} {:>12} {:>12}",
        "model",
        "direction",
        "interp MiB/s",
        "jit MiB/s",
        "kvm MiB/s",
        "qemu MiB/s",
        "interp/qemu",
        "jit/qemu",
        "kvm/qemu"
    );
    let engines: Vec<(&str, Vmm)> = [
        ("interp", Some(Vmm::Ferrovm("interp"))),
        ("jit", Some(Vmm::Ferrovm("jit"))),
        ("kvm", kvm.then_some(Vmm::Ferrovm("kvm"))),
        ("qemu", qemu.is_some().then_some(Vmm::Qemu)),
    ]
    .into_iter()
    .filter_map(|(name, v)| Some((name, v?)))
    .collect();
    let mut status = 0;
    for model in ["e1000", "virtio"] {
        let mut series: Vec<Series> = engines.iter().map(|_| Series::default()).collect();
        for _ in 0..runs {
            for ((_, vmm), s) in engines.iter().zip(&mut series) {
                if s.error.is_some() {
                    continue;
                }
                match measure(*vmm, qemu.as_deref(), &images, model, mib << 20) {
                    Ok(r) => s.runs.push(r),
                    Err(e) => s.error = Some(e),
                }
            }
        }
        for ((name, _), s) in engines.iter().zip(&series) {
            if let Some(e) = &s.error {
                println!("{model:<8} {name} failed: {e}");
                if *name != "qemu" {
                    status = 1;
                }
            }
        }
        let of = |name: &str| engines.iter().position(|e| e.0 == name).map(|i| &series[i]);
        for (i, dir) in ["host->guest", "guest->host"].into_iter().enumerate() {
            let pick = |name: &str| of(name).filter(|s| s.error.is_none()).and_then(|s| s.summary(i));
            let (f, j, k, q) = (pick("interp"), pick("jit"), pick("kvm"), pick("qemu"));
            let cell = |v: Option<(f64, f64, f64)>| match v {
                Some((m, lo, hi)) if runs > 1 => format!("{m:.2} ({lo:.2}-{hi:.2})"),
                Some((m, ..)) => format!("{m:.2}"),
                None => "-".to_string(),
            };
            let ratio = |a: Option<(f64, f64, f64)>| match (a, q) {
                (Some(a), Some(q)) if q.0 > 0.0 => format!("{:.2}", a.0 / q.0),
                _ => "-".into(),
            };
            println!(
                "{model:<8} {dir:<12} {:>w$} {:>w$} {:>w$} {:>w$} {:>12} {:>12} {:>12}",
                cell(f),
                cell(j),
                cell(k),
                cell(q),
                ratio(f),
                ratio(j),
                ratio(k)
            );
        }
    }
    println!("\nratios: ferrovm / QEMU medians (above 1: ferrovm is faster)");
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        assert_eq!(median_range(&mut []), None);
        assert_eq!(median_range(&mut [4.0]), Some((4.0, 4.0, 4.0)));
        assert_eq!(median_range(&mut [21.5, 4.0, 6.9]), Some((6.9, 4.0, 21.5)));
        assert_eq!(median_range(&mut [3.0, 1.0, 2.0, 10.0]), Some((2.5, 1.0, 10.0)));
        let s = Series { runs: vec![(8.0, 1.1), (7.0, 1.5), (9.0, 1.3)], error: None };
        assert_eq!(s.summary(0), Some((8.0, 7.0, 9.0)));
        assert_eq!(s.summary(1), Some((1.3, 1.1, 1.5)));
    }
}
