//! The hub between VMs and pcap capture around a backend.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use net::pcap::{read_pcap, LINKTYPE_ETHERNET, PCAP_MAGIC};
use net::{DnsUpstream, HubConfig, HubNet, NetBackend, NicSpec, PcapWriter, UserNet, UserNetConfig};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpEndpoint, Ipv4Address};

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrovm-net-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A smoltcp host on a hub.
struct Vm {
    iface: Interface,
    wire: Wire,
    sockets: SocketSet<'static>,
    hub: HubNet,
    epoch: Instant,
}

impl Vm {
    fn new(dir: &std::path::Path, mac: u8, ip: Ipv4Address) -> Vm {
        let mut wire = Wire::default();
        let cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress([2, 0, 0, 0, 0, mac])));
        let mut iface = Interface::new(cfg, &mut wire, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| a.push(IpCidr::new(ip.into(), 24)).unwrap());
        let hub = HubNet::open(&HubConfig { id: "lan".into(), dir: Some(dir.to_path_buf()) }).unwrap();
        Vm { iface, wire, sockets: SocketSet::new(Vec::new()), hub, epoch: Instant::now() }
    }

    fn step(&mut self) {
        let ts = smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64);
        self.iface.poll(ts, &mut self.wire, &mut self.sockets);
        while let Some(f) = self.wire.tx.pop_front() {
            self.hub.send(&f);
        }
        self.hub.poll(Instant::now());
        let mut buf = [0u8; 2048];
        while let Some(n) = self.hub.recv(&mut buf) {
            self.wire.rx.push_back(buf[..n].to_vec());
        }
        self.iface.poll(ts, &mut self.wire, &mut self.sockets);
    }
}

#[test]
fn two_hub_members_copy_a_file_over_tcp() {
    const N: usize = 256 * 1024;
    let dir = tempdir("hub");
    let a_ip = Ipv4Address::new(192, 168, 50, 1);
    let b_ip = Ipv4Address::new(192, 168, 50, 2);
    let mut a = Vm::new(&dir, 1, a_ip);
    let mut b = Vm::new(&dir, 2, b_ip);
    let sock = || tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 65536]), tcp::SocketBuffer::new(vec![0; 65536]));
    let ha = a.sockets.add(sock());
    let hb = b.sockets.add(sock());
    b.sockets.get_mut::<tcp::Socket>(hb).listen(5000).unwrap();
    let cx = a.iface.context();
    a.sockets.get_mut::<tcp::Socket>(ha).connect(cx, IpEndpoint::new(b_ip.into(), 5000), 41000).unwrap();
    let data = pattern(N, 9);
    let mut sent = 0;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for _ in 0..2_000_000 {
        if got.len() == N || Instant::now() > deadline {
            break;
        }
        sent = feed(a.sockets.get_mut::<tcp::Socket>(ha), &data, sent);
        drain(b.sockets.get_mut::<tcp::Socket>(hb), &mut got);
        a.step();
        b.step();
    }
    assert_eq!(
        got.len(),
        N,
        "sent {sent}, a {:?}, b {:?}",
        a.sockets.get::<tcp::Socket>(ha).state(),
        b.sockets.get::<tcp::Socket>(hb).state()
    );
    assert_eq!(sha(&got), sha(&data));
    drop(a);
    drop(b);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "members remove their sockets");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pcap_of_a_nat_session_parses() {
    let dir = tempdir("pcap");
    let path = dir.join("nat.pcap");
    let nat = UserNet::new(UserNetConfig { dns_upstream: DnsUpstream::Disabled, ..UserNetConfig::default() }).unwrap();
    let mut p = PcapWriter::create(nat, &path).unwrap();
    let mut g = Guest::new();
    // A connection to a closed port: ARP, SYN, RST at least.
    let h = g.connect(std::net::SocketAddrV4::new(GATEWAY, closed_port()), 4096);
    assert!(g.run(&mut p, Duration::from_secs(10), |g| g.tcp(h).state() == tcp::State::Closed));
    let records = p.records;
    drop(p);
    let data = std::fs::read(&path).unwrap();
    assert_eq!(u32::from_ne_bytes(data[0..4].try_into().unwrap()), PCAP_MAGIC);
    let (link, frames) = read_pcap(&data).unwrap();
    assert_eq!(link, LINKTYPE_ETHERNET);
    assert_eq!(frames.len() as u64, records);
    assert!(frames.len() >= 4, "ARP request/reply, SYN, RST: got {}", frames.len());
    assert!(frames.iter().all(|f| f.len() >= 14));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nic_option_string_opens_a_backend() {
    let dir = tempdir("open");
    let spec: NicSpec = format!("user,model=virtio,restrict=on,dnsupstream=none,pcap={}", dir.join("x.pcap").display())
        .parse()
        .unwrap();
    assert_eq!(spec.model.as_deref(), Some("virtio"));
    let mut b = net::open(&spec).unwrap();
    assert!(b.debug_label().starts_with("pcap("));
    assert!(b.wake_fd().is_some());
    b.poll(Instant::now());
    drop(b);
    assert!(dir.join("x.pcap").exists());
    let hub: NicSpec = format!("hub,id=t,path={}", dir.display()).parse().unwrap();
    let b = net::open(&hub).unwrap();
    assert_eq!(b.debug_label(), "hub:t");
    let _ = std::fs::remove_dir_all(&dir);
}
