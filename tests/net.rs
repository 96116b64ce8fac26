//! Networking with Debian's generic kernel: the e1000 and virtio-net
//! models behind the user-mode NAT (`--nic user`) and on a hub between two
//! VMs (`--nic hub`). The engine is a parameter; the tests here use the
//! interpreter.
//!
//! One guest per NIC model does everything that needs the NAT, so the
//! kernel boots once per model. The guest loads the NIC modules from
//! `initramfs-net.cpio.gz` (built by `scripts/guest-images.sh`), gets an
//! address with `udhcpc`, fetches the rest of its script over HTTP from a
//! server this test runs on the host's 127.0.0.1 (through the gateway
//! 10.0.2.2), and then:
//! - fetches a 1 MiB file over HTTP;
//! - opens 64 connections at once to a host server, which answers none
//!   until all 64 are open, each with its own data;
//! - connects to a closed host port and is refused: the RST's latency is
//!   taken from the NAT's pcap (guest SYN handed to the NAT -> RST handed
//!   to the NIC) and, as an upper bound, in the guest around `nc`;
//! - resolves a name with `nslookup` through 10.0.2.3, which forwards to a
//!   resolver this test runs on the loopback (`dnsupstream=`);
//! - takes an IPv6 address from the NAT's router advertisement (SLAAC),
//!   pings the IPv6 gateway and fetches 1 MiB over HTTP through it;
//! - moves 8 MiB through host port forwards in both directions;
//! - with eth0 down, on a second NIC whose NAT has `restrict=on` (and the
//!   same addresses), fails to reach the host's loopback through 10.0.2.2
//!   and serves a port forward both ways.
//!
//! Every hash is compared with the host's. Without the images the tests
//! say so and pass.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "guest/encode.rs"]
mod encode;
#[path = "guest/kvm.rs"]
mod kvm;
#[path = "guest/nat.rs"]
mod nat;
use nat::*;

/// Tests boot one guest (or one pair) at a time: the host has few cores,
/// and guests in parallel starve each other's timers, so the figures would
/// measure the host, not the guest.
static ONE_GUEST: Mutex<()> = Mutex::new(());

/// The engine the guest tests run under.
const INTERP: &str = "interp";
/// Bytes fetched over HTTP.
const HTTP_BYTES: usize = 1 << 20;
/// Bytes sent each way through the port forwards.
const FWD_BYTES: usize = 8 << 20;
/// Guest ports of the two forwards.
const GUEST_PORT_IN: u16 = 5555;
const GUEST_PORT_OUT: u16 = 5556;
/// Guest port of the forward on the restricted NIC.
const GUEST_PORT_RESTRICTED: u16 = 5557;
/// Connections the guest opens at once, and the bytes each one receives.
const CONNS: usize = 64;
const CONN_BYTES: usize = 16 << 10;
/// Bytes the host sends through the restricted NIC's forward.
const RESTRICTED_BYTES: usize = 64 << 10;
/// Connection attempts to the closed port.
const RST_TRIES: usize = 5;
/// The name the guest looks up and the address the test resolver gives.
const DNS_NAME: &str = "ferrovm.test";
const DNS_ADDR: [u8; 4] = [192, 0, 2, 77];

/// The data connection `i` of the concurrent batch receives.
fn conn_data(i: usize) -> Vec<u8> {
    pattern(CONN_BYTES, 1000 + i as u64)
}

/// A server for the concurrent connections: each client sends its index
/// and a newline; nobody is answered until `CONNS` connections are open
/// at once (or a minute has passed), then each gets `conn_data(index)` and
/// the server closes it. Returns the port and the number of connections
/// that were open together when the answers went out.
fn concurrent_server() -> (u16, Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut held: Vec<(TcpStream, usize)> = Vec::new();
        let mut first = None;
        listener.set_nonblocking(true).unwrap();
        while held.len() < CONNS && first.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(60)) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    first.get_or_insert_with(Instant::now);
                    s.set_nonblocking(false).ok();
                    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
                    let mut line = Vec::new();
                    let mut b = [0u8; 1];
                    while line.len() < 8 && matches!(s.read(&mut b), Ok(1)) && b[0] != b'\n' {
                        line.push(b[0]);
                    }
                    let Some(i) = std::str::from_utf8(&line).ok().and_then(|l| l.trim().parse().ok()) else {
                        continue;
                    };
                    held.push((s, i));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let _ = tx.send(held.len());
        for (mut s, i) in held {
            std::thread::spawn(move || {
                let _ = s.write_all(&conn_data(i));
            });
        }
    });
    (port, rx)
}

/// What the guest's `sha256sum /tmp/c0 ... /tmp/c63` prints.
fn conn_sums() -> String {
    (0..CONNS).map(|i| format!("{}  /tmp/c{i}\n", sha256(&conn_data(i)))).collect()
}

/// The name and type of a DNS question.
type DnsQuestion = (String, u16);

/// A DNS resolver on 127.0.0.1: `DNS_NAME` has the A record `DNS_ADDR`;
/// other names are NXDOMAIN, other types of `DNS_NAME` have no records.
/// Returns its port and the (name, type) of every query it got.
fn dns_resolver() -> (u16, Arc<Mutex<Vec<DnsQuestion>>>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            // Header, then the question: labels, a zero, QTYPE, QCLASS.
            let mut at = 12;
            let mut labels = Vec::new();
            while at < q.len() && q[at] != 0 && q[at] < 64 {
                let len = usize::from(q[at]);
                let Some(l) = q.get(at + 1..at + 1 + len) else { break };
                labels.push(String::from_utf8_lossy(l).to_string());
                at += 1 + len;
            }
            let Some(tail) = q.get(at..at + 5) else { continue };
            let qtype = u16::from_be_bytes([tail[1], tail[2]]);
            let name = labels.join(".");
            log.lock().unwrap_or_else(|e| e.into_inner()).push((name.clone(), qtype));
            let mut r = q[..at + 5].to_vec();
            r[2] = 0x80 | (q[2] & 0x01); // QR, RD copied
            r[3] = 0x80; // RA, NOERROR
            r[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
            if !name.eq_ignore_ascii_case(DNS_NAME) {
                r[3] |= 3; // NXDOMAIN
            } else if qtype == 1 {
                r[7] = 1;
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(&DNS_ADDR);
            }
            let _ = sock.send_to(&r, from);
        }
    });
    (port, seen)
}

/// The rest, served over HTTP. `@X@` are filled in by `nat_guest_test`.
const STAGE2: &str = r#"
hashlen() { echo "$(sha256sum < $1 | cut -d' ' -f1) $(wc -c < $1)"; }
# serve PORT STDIN STDOUT NAME: nc listens on PORT; returns when it quits.
serve() {
    nc -l -p $1 < $2 > $3 &
    pid=$!
    echo "T:ready-$4"
    wait $pid
}

read t0 x < /proc/uptime
wget -q -O /tmp/blob http://10.0.2.2:@HTTP@/blob || echo "T:wget-failed $?"
read t1 x < /proc/uptime
echo "T:wget $(hashlen /tmp/blob) $t0 $t1"

read t0 x < /proc/uptime
i=0
files=""
while [ $i -lt @CONNS@ ]; do
    echo $i | nc 10.0.2.2 @CONC@ > /tmp/c$i &
    files="$files /tmp/c$i"
    i=$((i+1))
done
wait
read t1 x < /proc/uptime
sha256sum $files > /tmp/sums
echo "T:conc $(sha256sum < /tmp/sums | cut -d' ' -f1) $(wc -l < /tmp/sums) $t0 $t1"

us() { adjtimex | awk '/tv_sec/ { s = $2 } /tv_usec/ { u = $2 } END { print s, u }'; }
i=0
while [ $i -lt @RST_TRIES@ ]; do
    t0=$(us)
    nc 10.0.2.2 @CLOSED@ < /dev/null > /dev/null 2> /tmp/rst
    rc=$?
    t1=$(us)
    echo "T:rst $rc $(grep -c 'Connection refused' /tmp/rst) $t0 $t1"
    i=$((i+1))
done

read t0 x < /proc/uptime
nslookup @DNS_NAME@ 10.0.2.3 > /tmp/ns 2>&1
rc=$?
read t1 x < /proc/uptime
sed 's/^/T:ns-out /' /tmp/ns
echo "T:dns $rc $(grep -c '@DNS_ADDR@' /tmp/ns) $t0 $t1"

read t0 x < /proc/uptime
tftp -g -b 1468 -r blob -l /tmp/tb 10.0.2.2 2> /tmp/terr
rc=$?
read t1 x < /proc/uptime
echo "T:tftp $rc $(hashlen /tmp/tb) $t0 $t1"
tftp -g -r /sub/small -l /tmp/ts 10.0.2.2 2>> /tmp/terr
echo "T:tftp-small $? $(hashlen /tmp/ts)"
tftp -g -r ../outside -l /tmp/tx 10.0.2.2 2> /tmp/terr
echo "T:tftp-escape $? $(grep -c 'Access violation' /tmp/terr)"

# IPv6: an address from the NAT's router advertisement (SLAAC) and its
# default route, then the gateway: echo, and HTTP to the host through it.
i=0
# (an address still tentative, under duplicate address detection, cannot be used yet)
while [ $i -lt 100 ] && ! ip -6 addr show dev eth0 | grep 'inet6 fec0::' | grep -qv tentative; do sleep 0.1; i=$((i+1)); done
echo "T:ip6 $(ip -6 addr show dev eth0 | grep -o 'fec0::[0-9a-f:]*/64' | head -n 1) $(ip -6 route | grep -c 'default via fe80::2')"
(ping6 -c 1 -W 5 fec0::2 || ping -6 -c 1 -W 5 fec0::2) > /dev/null 2>&1
echo "T:ping6 $?"
read t0 x < /proc/uptime
wget -q -O /tmp/b6 "http://[fec0::2]:@HTTP@/blob" || echo "T:wget6-failed $?"
read t1 x < /proc/uptime
echo "T:wget6 $(hashlen /tmp/b6) $t0 $t1"

serve @IN@ /dev/null /tmp/in in
echo "T:in-done"
echo "T:in $(hashlen /tmp/in)"
serve @OUT@ /tmp/in /dev/null out
echo "T:out-done"
echo "T:irqs $(grep -E 'virtio0|eth0' /proc/interrupts | tr -s ' ' | tr '\n' ';')"

# The restricted NAT on eth1 has the same addresses as eth0's: eth0 goes.
ifconfig eth0 down
ifconfig eth1 up
udhcpc -i eth1 -s /tmp/dhcp.sh -n -q -t 10 -T 1
echo "T:addr1 $(ifconfig eth1 | grep -o 'inet addr:[0-9.]*' | cut -d: -f2)"
wget -q -O /tmp/r http://10.0.2.2:@HTTP@/blob > /tmp/rerr 2>&1
rc=$?
echo "T:restricted-http $rc $(cat /tmp/r 2>/dev/null | wc -c) $(grep -c 'refused' /tmp/rerr)"
serve @RPORT@ /tmp/blob /tmp/rin restricted
echo "T:restricted-fwd $(hashlen /tmp/rin)"
echo "T:done"
"#;

/// `--stats`' "halted S s in N waits" line: the seconds and the count.
fn halted_stat(stats: &str) -> Option<(f64, u64)> {
    let line = stats.lines().find_map(|l| l.strip_prefix("ferrovm: halted "))?;
    let v: Vec<&str> = line.split_whitespace().collect();
    Some((v.first()?.parse().ok()?, v.get(3)?.parse().ok()?))
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// The last two numbers of a line (two /proc/uptime readings).
fn uptimes(s: &str) -> (f64, f64) {
    let v: Vec<f64> = s.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    (v[v.len() - 2], v[v.len() - 1])
}

/// One record of a pcap file: when (microseconds) and the frame.
struct PcapRecord {
    at_us: u64,
    frame: Vec<u8>,
}

/// Reads a classic pcap file (microsecond timestamps, host byte order).
fn read_pcap(path: &Path) -> Vec<PcapRecord> {
    let data = std::fs::read(path).unwrap_or_default();
    let u32_at = |i: usize| data.get(i..i + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    assert_eq!(u32_at(0), Some(0xa1b2_c3d4), "pcap magic of {}", path.display());
    let mut out = Vec::new();
    let mut at = 24;
    while let (Some(sec), Some(usec), Some(len)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) {
        let start = at + 16;
        let Some(frame) = data.get(start..start + len as usize) else { break };
        out.push(PcapRecord { at_us: u64::from(sec) * 1_000_000 + u64::from(usec), frame: frame.to_vec() });
        at = start + len as usize;
    }
    out
}

/// Source port, destination port and flags of an Ethernet/IPv4/TCP frame.
fn tcp_ports_flags(f: &[u8]) -> Option<(u16, u16, u8)> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[23] != 6 {
        return None;
    }
    let t = 14 + usize::from(f[14] & 0x0f) * 4;
    let h = f.get(t..t + 14)?;
    Some((u16::from_be_bytes([h[0], h[1]]), u16::from_be_bytes([h[2], h[3]]), h[13]))
}

/// From a capture: for each guest SYN to `port`, the time until the RST
/// that answered it (matched by the guest's port).
fn rst_latencies(records: &[PcapRecord], port: u16) -> Vec<Duration> {
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let Some((sport, dport, flags)) = tcp_ports_flags(&r.frame) else { continue };
        if dport != port || flags & (SYN | ACK) != SYN {
            continue;
        }
        let answer = records[i + 1..]
            .iter()
            .find(|a| tcp_ports_flags(&a.frame).is_some_and(|(s, d, f)| s == port && d == sport && f & RST != 0));
        if let Some(a) = answer {
            out.push(Duration::from_micros(a.at_us.saturating_sub(r.at_us)));
        }
    }
    out
}

/// Everything that needs the NAT, in one boot: a guest with a NIC of
/// `model` on the NAT and a second one on a restricted NAT.
fn nat_guest_test(model: &str, accel: &str) {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let Some(dir) = images() else { return };
    let t = Instant::now();
    let blob = pattern(HTTP_BYTES, 1);
    let (conc, conc_peak) = concurrent_server();
    let closed = free_port();
    let (dns_port, dns_seen) = dns_resolver();
    let stage2 = STAGE2
        .replace("@CONNS@", &CONNS.to_string())
        .replace("@CONC@", &conc.to_string())
        .replace("@RST_TRIES@", &RST_TRIES.to_string())
        .replace("@CLOSED@", &closed.to_string())
        .replace("@DNS_NAME@", DNS_NAME)
        .replace("@DNS_ADDR@", &DNS_ADDR.map(|b| b.to_string()).join("\\."))
        .replace("@RPORT@", &GUEST_PORT_RESTRICTED.to_string())
        .replace("@IN@", &GUEST_PORT_IN.to_string())
        .replace("@OUT@", &GUEST_PORT_OUT.to_string());
    let (http, stage2_slot) = http_server(blob.clone());
    *stage2_slot.lock().unwrap() = stage2.replace("@HTTP@", &http.to_string());
    let script = format!("{MODULES_AND_DHCP}{}", STAGE1.replace("@HTTP@", &http.to_string()));
    let (fwd_in, fwd_out, fwd_r) = (free_port(), free_port(), free_port());
    let pcap = std::env::temp_dir().join(format!("ferrovm-net-{model}-{}.pcap", std::process::id()));
    // The TFTP folder: the blob, a small file in a subfolder, and a file
    // beside the folder that the guest must not reach.
    let tftp_work = std::env::temp_dir().join(format!("ferrovm-net-tftp-{model}-{}", std::process::id()));
    let tftp_root = tftp_work.join("root");
    std::fs::create_dir_all(tftp_root.join("sub")).unwrap();
    std::fs::write(tftp_root.join("blob"), &blob).unwrap();
    let small = pattern(1000, 3);
    std::fs::write(tftp_root.join("sub/small"), &small).unwrap();
    std::fs::write(tftp_work.join("outside"), b"not for the guest").unwrap();
    let nics = [
        format!(
            "user,model={model},dnsupstream=127.0.0.1:{dns_port},pcap={},tftp={},bootfile=sub/small,\
             hostfwd=tcp:127.0.0.1:{fwd_in}-:{GUEST_PORT_IN},hostfwd=tcp:127.0.0.1:{fwd_out}-:{GUEST_PORT_OUT}",
            pcap.display(),
            tftp_root.display()
        ),
        format!("user,model={model},restrict=on,hostfwd=tcp:127.0.0.1:{fwd_r}-:{GUEST_PORT_RESTRICTED}"),
    ];
    let mut g = Guest::boot(model, accel, &dir, &nics, &script);

    let (ifaces, _) = g.wait_for("ifaces");
    g.check(ifaces.split_whitespace().any(|i| i == "eth1"), "no eth0 and eth1");
    let (dhcp, _) = g.wait_for("dhcp");
    let (d0, d1) = uptimes(&dhcp);
    let (addr, _) = g.wait_for("addr");
    g.check(addr == "10.0.2.15", "udhcpc's address is not 10.0.2.15");
    // The boot file and server DHCP named: BOOTP's file field, option 67, siaddr.
    let boot = g.seen_with("boot").into_iter().find(|b| b.starts_with("eth0 ")).unwrap_or_default();
    g.check(boot == "eth0 sub/small sub/small 10.0.2.2", &format!("DHCP's boot file and server: {boot}"));

    // 1 MiB over HTTP.
    let (wget, _) = g.wait_for("wget");
    let f: Vec<&str> = wget.split_whitespace().collect();
    g.check(f[0] == sha256(&blob) && f[1] == HTTP_BYTES.to_string(), "the fetched file's hash or size");
    let (w0, w1) = uptimes(&wget);

    // 64 connections at once, each with its own data.
    let (conc_line, _) = g.wait_for("conc");
    let peak = conc_peak.recv_timeout(Duration::from_secs(5)).unwrap_or(0);
    let f: Vec<&str> = conc_line.split_whitespace().collect();
    g.check(f[1] == CONNS.to_string(), "a sum line per connection");
    g.check(f[0] == sha256(conn_sums().as_bytes()), "every connection's data matches");
    g.check(peak == CONNS, &format!("only {peak} of {CONNS} connections were open at once"));
    let (c0, c1) = uptimes(&conc_line);

    // The closed port: refused every time.
    g.wait_for("dns");
    let rst = g.seen_with("rst");
    g.check(rst.len() == RST_TRIES, "every attempt at the closed port reported");
    let mut in_guest = Vec::new();
    for r in &rst {
        let v: Vec<u64> = r.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        g.check(v.len() == 6 && v[0] == 1 && v[1] == 1, &format!("nc was not refused: {r}"));
        in_guest.push(Duration::from_micros((v[4] * 1_000_000 + v[5]).saturating_sub(v[2] * 1_000_000 + v[3])));
    }
    in_guest.sort();

    // DNS through 10.0.2.3 to the resolver on the loopback.
    let dns = g.seen_with("dns").pop().unwrap_or_default();
    let v: Vec<&str> = dns.split_whitespace().collect();
    g.check(v.len() == 4 && v[1] == "1", &format!("nslookup did not print {DNS_ADDR:?}: {dns}"));
    let (n0, n1) = uptimes(&dns);
    let queries = dns_seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    g.check(queries.iter().any(|(n, t)| n == DNS_NAME && *t == 1), &format!("the resolver got {queries:?}"));

    // TFTP from the gateway: 1 MiB with 1468-byte blocks, a file by an
    // absolute name, and a name that leaves the folder, refused.
    let (tftp, _) = g.wait_for("tftp");
    let v: Vec<&str> = tftp.split_whitespace().collect();
    g.check(
        v.len() == 5 && v[0] == "0" && v[1] == sha256(&blob) && v[2] == HTTP_BYTES.to_string(),
        &format!("the blob over TFTP: {tftp}"),
    );
    let (t0, t1) = uptimes(&tftp);
    let (small_line, _) = g.wait_for("tftp-small");
    g.check(small_line == format!("0 {} {}", sha256(&small), small.len()), &format!("sub/small: {small_line}"));
    let (escape, _) = g.wait_for("tftp-escape");
    g.check(escape == "1 1", &format!("../outside was not refused as an access violation: {escape}"));
    let _ = std::fs::remove_dir_all(&tftp_work);
    eprintln!("{model}: 1 MiB over TFTP in {:.2} s in the guest", t1 - t0);

    // IPv6: SLAAC in fec0::/64 from the MAC (EUI-64), the default route
    // through fe80::2, an echo from the gateway, and 1 MiB over HTTP from
    // the host's server through [fec0::2] (the server listens on
    // 127.0.0.1: the NAT falls back to it when ::1 refuses).
    let (ip6, _) = g.wait_for("ip6");
    g.check(ip6 == "fec0::5054:ff:fe12:3456/64 1", &format!("SLAAC address and default route: {ip6}"));
    let (ping6, _) = g.wait_for("ping6");
    g.check(ping6 == "0", &format!("ping6 fec0::2 exited {ping6}"));
    let (wget6, _) = g.wait_for("wget6");
    let v: Vec<&str> = wget6.split_whitespace().collect();
    g.check(
        v.len() == 4 && v[0] == sha256(&blob) && v[1] == HTTP_BYTES.to_string(),
        &format!("HTTP over IPv6: {wget6}"),
    );
    let (h0, h1) = uptimes(&wget6);
    eprintln!("{model}: 1 MiB over HTTP through [fec0::2] in {:.2} s in the guest", h1 - h0);

    // 8 MiB each way through the forwards.
    let data = pattern(FWD_BYTES, 2);
    let want = sha256(&data);
    g.wait_for("ready-in");
    let start = send_through(fwd_in, &data, &mut g);
    let (_, done) = g.wait_for("in-done");
    let in_time = done.duration_since(start);
    let (got_in, _) = g.wait_for("in");
    g.check(got_in == format!("{want} {FWD_BYTES}"), "host -> guest through hostfwd");
    g.wait_for("ready-out");
    let (back, out_time) = receive_through(fwd_out, &mut g);
    g.check(back.len() == FWD_BYTES && sha256(&back) == want, "guest -> host through hostfwd");
    g.wait_for("out-done");

    // How eth0 interrupts: virtio-net by MSI-X, a vector per queue; the
    // e1000 (82540EM, no MSI) by its INTx line through the I/O APIC.
    let (irqs, _) = g.wait_for("irqs");
    let irq_line = |name: &str| {
        irqs.split(';').map(str::split_whitespace).map(Iterator::collect::<Vec<_>>).find(|f| f.last() == Some(&name))
    };
    if model == "virtio" {
        for queue in ["virtio0-config", "virtio0-input.0", "virtio0-output.0"] {
            let f = irq_line(queue).unwrap_or_default();
            g.check(f.len() >= 4 && f[2] == "PCI-MSI", &format!("{queue} is not an MSI-X vector: {irqs}"));
        }
        let rx = irq_line("virtio0-input.0").unwrap_or_default();
        g.check(
            rx.get(1).and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > 0),
            &format!("no RX interrupts: {irqs}"),
        );
    } else {
        let f = irq_line("eth0").unwrap_or_default();
        g.check(f.len() >= 4 && f[2] == "IO-APIC", &format!("eth0 is not on the I/O APIC: {irqs}"));
    }

    // The restricted NAT (the same addresses; eth0 is down): no way to the
    // host's loopback through 10.0.2.2; its forward works both ways.
    let (addr1, _) = g.wait_for("addr1");
    g.check(addr1 == "10.0.2.15", "eth1's address is not 10.0.2.15");
    let (rh, _) = g.wait_for("restricted-http");
    let v: Vec<&str> = rh.split_whitespace().collect();
    g.check(v.len() == 3 && v[0] != "0" && v[1] == "0" && v[2] == "1", &format!("restricted HTTP: {rh}"));
    g.wait_for("ready-restricted");
    let data = pattern(RESTRICTED_BYTES, 3);
    let back = exchange_through(fwd_r, &data, blob.len(), &mut g);
    g.check(back == blob, "the restricted forward's reply");
    let (rf, _) = g.wait_for("restricted-fwd");
    g.check(rf == format!("{} {RESTRICTED_BYTES}", sha256(&data)), &format!("restricted forward: {rf}"));

    let stats = g.finish();
    if accel == "interp" || accel == "jit" {
        // The guest waited, halted, for the host at every forward (the host
        // connects after 500 ms), and --stats counts the time.
        let (halted, waits) = halted_stat(&stats).unwrap_or_else(|| panic!("{model}: no halted line in\n{stats}"));
        assert!(halted >= 0.5 && waits > 0, "{model}: halted {halted} s in {waits} waits");
    }

    // The RSTs' latency in the NAT, from the capture's timestamps.
    let records = read_pcap(&pcap);
    let _ = std::fs::remove_file(&pcap);
    let mut nat_rst = rst_latencies(&records, closed);
    nat_rst.sort();
    assert_eq!(nat_rst.len(), RST_TRIES, "{model}: a SYN and its RST in the capture per attempt");
    let worst = nat_rst[nat_rst.len() - 1];
    assert!(worst < Duration::from_millis(100), "{model}: an RST took {worst:?} in the NAT");
    eprintln!(
        "{model}: DHCP {:.2} s; HTTP 1 MiB in {:.2} s ({:.2} MiB/s); {CONNS} connections ({peak} open together \
         at the host) in {:.2} s; RST for a closed port: {:?}..{:?} in the NAT (pcap: SYN in to RST out), \
         {:?}..{:?} in the guest (around nc, including its start); nslookup {:.2} s ({} queries upstream); \
         hostfwd 8 MiB host->guest {:.2} MiB/s, guest->host {:.2} MiB/s; whole test {:.1} s",
        d1 - d0,
        w1 - w0,
        1.0 / (w1 - w0).max(0.01),
        c1 - c0,
        nat_rst[0],
        worst,
        in_guest[0],
        in_guest[in_guest.len() - 1],
        n1 - n0,
        queries.len(),
        mib_per_s(FWD_BYTES, in_time),
        mib_per_s(FWD_BYTES, out_time),
        t.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "outside CI for time: virtio-net runs in CI under the JIT and KVM"]
fn virtio_net_on_the_nat_in_the_interpreter() {
    nat_guest_test("virtio", INTERP);
}

#[test]
fn e1000_on_the_nat_in_the_interpreter() {
    nat_guest_test("e1000", INTERP);
}

#[test]
fn virtio_net_on_the_nat_under_jit() {
    nat_guest_test("virtio", "jit");
}

#[test]
fn e1000_on_the_nat_under_jit() {
    nat_guest_test("e1000", "jit");
}

#[test]
fn virtio_net_on_the_nat_under_kvm() {
    if kvm::usable() {
        nat_guest_test("virtio", "kvm");
    }
}

#[test]
fn e1000_on_the_nat_under_kvm() {
    if kvm::usable() {
        nat_guest_test("e1000", "kvm");
    }
}

/// A hub member's script: a static address, ping the peer until it
/// answers, the same on 802.1Q VLAN 5 (an `eth0.5` with an address of its
/// own), then send (or receive) a 1 MiB file over TCP.
const HUB_SCRIPT: &str = r#"
ifconfig eth0 @ME@ netmask 255.255.255.0 up
@LISTEN@
pp() {
n=0
until ping -c 1 -W 1 $1 > /dev/null 2>&1; do
    n=$((n+1)); [ $n -ge 120 ] && break
done
ping -c 3 -W 2 $1 > /tmp/p 2>&1
echo "$? $(grep -o '[0-9]* packets received' /tmp/p | cut -d' ' -f1)"
}
echo "T:ping $(pp @PEER@)"
for m in llc stp garp mrp 8021q; do insmod /lib/modules/$m.ko; done
ip link add link eth0 name eth0.5 type vlan id 5
ifconfig eth0.5 @ME5@ up
echo "T:vlan-ping $(pp @PEER5@)"
@FILE@
echo "T:done"
"#;

/// The sender's part: a random file, sent until the receiver listens.
const HUB_SEND: &str = r#"dd if=/dev/urandom of=/tmp/f bs=1024 count=1024 2> /dev/null
echo "T:file $(sha256sum < /tmp/f | cut -d' ' -f1) $(wc -c < /tmp/f)"
n=0
until nc @PEER@ 7000 < /tmp/f > /dev/null; do
    n=$((n+1)); [ $n -ge 60 ] && break; sleep 1
done"#;

/// The receiver's parts: listen first, with a stdin that never ends (a
/// FIFO opened read-write), so `nc` quits at the sender's FIN, not at its
/// own; report when the file is in.
const HUB_LISTEN: &str = "mkfifo /tmp/hold\nnc -l -p 7000 <> /tmp/hold > /tmp/f &\npid=$!";
const HUB_RECEIVE: &str = r#"wait $pid
echo "T:file $(sha256sum < /tmp/f | cut -d' ' -f1) $(wc -c < /tmp/f)""#;

/// Two VMs on one hub, one NIC model each: they ping each other, then on
/// an 802.1Q VLAN over the same hub, and one copies a file to the other.
fn hub_test(accel: &str) {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let Some(dir) = images() else { return };
    let t = Instant::now();
    let hub_dir = std::env::temp_dir().join(format!("ferrovm-net-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&hub_dir);
    std::fs::create_dir_all(&hub_dir).unwrap();
    let pcap = hub_dir.join("e1000.pcap");
    let member = |model: &str, mac: &str, me: u8, sender: bool| {
        let peer = 3 - me;
        let script = HUB_SCRIPT
            .replace("@LISTEN@", if sender { "" } else { HUB_LISTEN })
            .replace("@FILE@", if sender { HUB_SEND } else { HUB_RECEIVE })
            .replace("@ME@", &format!("192.168.77.{me}"))
            .replace("@PEER@", &format!("192.168.77.{peer}"))
            .replace("@ME5@", &format!("10.5.0.{me}"))
            .replace("@PEER5@", &format!("10.5.0.{peer}"));
        let script = format!("{MODULES_AND_DHCP}{script}");
        let mut nic = format!("hub,id=lan,path={},model={model},mac={mac}", hub_dir.display());
        if sender {
            nic.push_str(&format!(",pcap={}", pcap.display()));
        }
        Guest::boot(&format!("hub {model}"), accel, &dir, &[nic], &script)
    };
    let mut a = member("e1000", "52:54:00:77:00:01", 1, true);
    let mut b = member("virtio", "52:54:00:77:00:02", 2, false);
    for g in [&mut a, &mut b] {
        let (ping, _) = g.wait_for("ping");
        g.check(ping == "0 3", &format!("ping the peer: {ping}"));
    }
    for g in [&mut a, &mut b] {
        let (ping, _) = g.wait_for("vlan-ping");
        g.check(ping == "0 3", &format!("ping the peer on VLAN 5: {ping}"));
    }
    let (sent, _) = a.wait_for("file");
    a.check(sent.ends_with(&format!(" {}", 1 << 20)), &format!("the file to send: {sent}"));
    // The sender is done when the receiver has closed the connection.
    a.finish();
    let (got, _) = b.wait_for("file");
    b.check(got == sent, &format!("sent {sent}, received {got}"));
    b.finish();
    // The e1000's side of the hub carried 802.1Q frames of VLAN 5 both
    // ways (the e1000 inserts the tag it is given; virtio-net's guest
    // writes it into the frame).
    let tagged: Vec<(bool, u16)> = read_pcap(&pcap)
        .iter()
        .filter(|r| r.frame.len() >= 18 && r.frame[12..14] == [0x81, 0x00])
        .map(|r| {
            (r.frame[6..12] == [0x52, 0x54, 0, 0x77, 0, 1], u16::from_be_bytes([r.frame[14], r.frame[15]]) & 0xfff)
        })
        .collect();
    assert!(
        tagged.iter().any(|&(from_a, vid)| from_a && vid == 5)
            && tagged.iter().any(|&(from_a, vid)| !from_a && vid == 5),
        "no VLAN 5 frames both ways in the e1000's capture: {tagged:?}"
    );
    let _ = std::fs::remove_dir_all(&hub_dir);
    eprintln!(
        "hub: an e1000 guest and a virtio guest pinged each other, untagged and on VLAN 5, and copied 1 MiB; whole \
         test {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// The guest's side of the TAP test: an address on each NIC, then three
/// pings of each host end, the last ones near the MTU.
const TAP_SCRIPT: &str = r#"
ifconfig eth0 192.168.76.2 netmask 255.255.255.0 up
ifconfig eth1 192.168.75.2 netmask 255.255.255.0 up
for peer in 192.168.76.1 192.168.75.1; do
    n=0
    until ping -c 1 -W 1 $peer > /dev/null 2>&1; do
        n=$((n+1)); [ $n -ge 60 ] && break
    done
    ping -c 3 -s 1400 -W 2 $peer > /tmp/p 2>&1
    echo "T:ping-$peer $? $(grep -o '[0-9]* packets received' /tmp/p | cut -d' ' -f1)"
done
echo "T:done"
"#;

/// Why this host cannot run the TAP test, if it cannot: it needs
/// unshare(1) to make a network namespace, /dev/net/tun, and ip(8).
fn tap_unavailable() -> Option<String> {
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    let ok = |cmd: &mut Command| cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok(Command::new("unshare").args(["--net", "--", "ip", "link", "add", "t0", "type", "bridge"])) {
        return Some("cannot make a network namespace with a bridge in it (unshare --net; ip link)".into());
    }
    None
}

/// A guest with a virtio NIC on a TAP interface that QEMU's ifup script
/// sets up, and an e1000 on a TAP interface that joins a bridge, in a
/// network namespace of the test's own (the host's network is not
/// touched). The guest pings the host's end of each; the downscript runs
/// at exit.
fn tap_test(accel: &str) {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let Some(dir) = images() else { return };
    if let Some(why) = tap_unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let t = Instant::now();
    let work = std::env::temp_dir().join(format!("ferrovm-net-tap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let (up, down) = (work.join("ifup"), work.join("ifdown"));
    let marks = work.display();
    std::fs::write(
        &up,
        format!(
            "#!/bin/sh\nip addr add 192.168.76.1/24 dev \"$1\" && ip link set \"$1\" up && echo \"$1\" > {marks}/up\n"
        ),
    )
    .unwrap();
    std::fs::write(&down, format!("#!/bin/sh\necho \"$1\" > {marks}/down\n")).unwrap();
    for f in [&up, &down] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let ferrovm = env!("CARGO_BIN_EXE_ferrovm");
    let setup = "ip link set lo up && ip link add fvbr0 type bridge && ip addr add 192.168.75.1/24 dev fvbr0 \
                 && ip link set fvbr0 up && exec \"$0\" \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--", "sh", "-c", setup, ferrovm])
        .args(["run", "--accel", accel, "--mem", "512M", "--serial", "stdio", "--stats"])
        .args(["--timeout", &TEST_LIMIT.as_secs().to_string()])
        .arg("--nic")
        .arg(format!("tap,ifname=fvtap0,script={},downscript={},model=virtio", up.display(), down.display()))
        .args(["--nic", "bridge,br=fvbr0,model=e1000"])
        .arg("--kernel")
        .arg(dir.join("vmlinuz-generic"))
        .arg("--initrd")
        .arg(dir.join("initramfs-net.cpio.gz"))
        .arg("--append")
        .arg(net_cmdline(&format!("{MODULES_AND_DHCP}{TAP_SCRIPT}")));
    let mut g = Guest::start("tap", cmd);
    for peer in ["192.168.76.1", "192.168.75.1"] {
        let (ping, _) = g.wait_for(&format!("ping-{peer}"));
        g.check(ping == "0 3", &format!("ping {peer} through the TAP interface: {ping}"));
    }
    let err = g.finish();
    let read = |name: &str| std::fs::read_to_string(work.join(name)).unwrap_or_default();
    assert_eq!(read("up").trim(), "fvtap0", "the ifup script ran with the interface's name; stderr:\n{err}");
    assert_eq!(read("down").trim(), "fvtap0", "the ifdown script ran at exit; stderr:\n{err}");
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "tap: a virtio NIC on a scripted TAP and an e1000 on a bridge pinged the host's ends; whole test {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn virtio_net_and_e1000_on_host_tap_interfaces_under_jit() {
    tap_test("jit");
}

#[test]
#[ignore = "outside CI for time: the hub runs in CI under KVM"]
fn two_guests_on_a_hub_in_the_interpreter() {
    hub_test(INTERP);
}

#[test]
fn two_guests_on_a_hub_under_kvm() {
    if kvm::usable() {
        hub_test("kvm");
    }
}

#[test]
fn halted_stat_reads_the_seconds_and_waits() {
    let stats = "ferrovm: accel interp, 51.926 s\nferrovm: halted 2.017 s in 120 waits for an interrupt\n";
    assert_eq!(halted_stat(stats), Some((2.017, 120)));
    assert_eq!(halted_stat("ferrovm: accel kvm, 1.0 s\n"), None);
}

#[test]
fn pcap_reader_and_rst_matching() {
    let dir = std::env::temp_dir().join(format!("ferrovm-net-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.pcap");
    let frame = |sport: u16, dport: u16, flags: u8| {
        let mut f = vec![0u8; 54];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 6;
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[47] = flags;
        f
    };
    let mut file = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
        file.extend_from_slice(&v.to_ne_bytes());
    }
    for (sec, usec, f) in [
        (10u32, 999_000u32, frame(40000, 81, 0x02)),
        (11, 2_000, frame(81, 40000, 0x14)),
        (12, 0, frame(40001, 81, 0x02)),
        (12, 500, frame(40001, 81, 0x10)),
    ] {
        for v in [sec, usec, f.len() as u32, f.len() as u32] {
            file.extend_from_slice(&v.to_ne_bytes());
        }
        file.extend_from_slice(&f);
    }
    // A truncated last record is ignored.
    file.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&path, &file).unwrap();
    let records = read_pcap(&path);
    assert_eq!(records.len(), 4);
    assert_eq!(rst_latencies(&records, 81), vec![Duration::from_millis(3)], "the unanswered SYN has none");
    assert!(rst_latencies(&records, 82).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sha256_matches_the_standard_vectors() {
    assert_eq!(sha256(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(sha256(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(sha256(&[b'a'; 1000]), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}
