use std::net::{SocketAddrV4, UdpSocket};
use std::time::Duration;

use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr};

use super::*;
use crate::frame::ETH_HEADER_LEN;
use crate::user::dhcp::tests::client_msg;
use crate::{DnsUpstream, HostFwd, NetBackend, Proto};

/// A guest with a static address that a UDP port forward points at.
const STATIC_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 20);
const STATIC_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x20];
/// DHCP clients.
const CLIENT_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa];
const CLIENT_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xb];
const CLIENT_C: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xc];
/// DHCP message types and options (RFC 2132).
const DISCOVER: u8 = 1;
const REQUEST: u8 = 3;
const OFFER: u8 = 2;
const ACK: u8 = 5;
const OPT_REQUESTED_IP: u8 = 50;

fn config() -> UserNetConfig {
    UserNetConfig {
        restrict: true,
        dns_upstream: DnsUpstream::Disabled,
        hostname: Some("saved".into()),
        hostfwd: vec![HostFwd {
            proto: Proto::Udp,
            host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            guest_addr: Some(STATIC_GUEST),
            guest_port: 7777,
        }],
        ..UserNetConfig::default()
    }
}

/// The frames the NAT has for the guest after a poll.
fn out(n: &mut UserNet) -> Vec<Vec<u8>> {
    n.poll(Instant::now());
    let mut v = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(len) = n.recv(&mut buf) {
        v.push(buf[..len].to_vec());
    }
    v
}

/// Sends a DHCP message of `kind` from `mac` and returns the message type
/// and address of the answer.
fn dhcp(n: &mut UserNet, kind: u8, mac: [u8; 6], requested: Option<Ipv4Addr>) -> (u8, Ipv4Addr) {
    let extra: Vec<(u8, Vec<u8>)> = requested.map(|ip| (OPT_REQUESTED_IP, ip.octets().to_vec())).into_iter().collect();
    n.guest_dhcp(&client_msg(kind, mac, 1, &extra), Instant::now()).unwrap();
    let replies = out(n);
    assert_eq!(replies.len(), 1, "one answer");
    let p = &replies[0][ETH_HEADER_LEN + 20 + 8..];
    let yiaddr = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    // Option 53 is the first option (after the cookie at 236).
    assert_eq!(p[240], 53);
    (p[242], yiaddr)
}

/// An ARP request for the gateway from the static guest.
fn arp_from_static_guest() -> Vec<u8> {
    let mac = EthernetAddress(STATIC_MAC);
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: STATIC_GUEST,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: Ipv4Addr::new(10, 0, 2, 2),
    };
    let mut f = vec![0u8; ETH_HEADER_LEN + repr.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    EthernetRepr { src_addr: mac, dst_addr: EthernetAddress::BROADCAST, ethertype: EthernetProtocol::Arp }
        .emit(&mut eth);
    repr.emit(&mut ArpPacket::new_unchecked(&mut f[ETH_HEADER_LEN..]));
    f
}

/// A NAT that gave A its address, offered B one and heard from the static guest.
fn configured() -> UserNet {
    let mut n = UserNet::new(config()).unwrap();
    assert_eq!(dhcp(&mut n, DISCOVER, CLIENT_A, None), (OFFER, Ipv4Addr::new(10, 0, 2, 15)));
    assert_eq!(dhcp(&mut n, REQUEST, CLIENT_A, Some(Ipv4Addr::new(10, 0, 2, 15))), (ACK, Ipv4Addr::new(10, 0, 2, 15)));
    assert_eq!(dhcp(&mut n, DISCOVER, CLIENT_B, None), (OFFER, Ipv4Addr::new(10, 0, 2, 16)));
    n.send(&arp_from_static_guest());
    assert_eq!(out(&mut n).len(), 1, "the ARP reply");
    n
}

#[test]
fn a_restored_nat_knows_the_guest_addresses() {
    let saved = configured();
    let mut n = UserNet::new(config()).unwrap();
    let s = persist::assert_round_trip(&saved, &mut n);
    assert_eq!(s.config, config());
    assert_eq!(
        s.leases,
        [
            DhcpLease { mac: MacAddr(CLIENT_A), ip: Ipv4Addr::new(10, 0, 2, 15), bound: true },
            DhcpLease { mac: MacAddr(CLIENT_B), ip: Ipv4Addr::new(10, 0, 2, 16), bound: false },
        ]
    );
    assert_eq!(s.guest_macs, [(STATIC_GUEST, MacAddr(STATIC_MAC))]);
    // The restored DHCP server knows the leases: a new client gets the
    // first free address, and B gets the one it was offered.
    assert_eq!(dhcp(&mut n, DISCOVER, CLIENT_C, None), (OFFER, Ipv4Addr::new(10, 0, 2, 17)));
    assert_eq!(dhcp(&mut n, DISCOVER, CLIENT_B, None), (OFFER, Ipv4Addr::new(10, 0, 2, 16)));
    assert_eq!(dhcp(&mut n, REQUEST, CLIENT_A, Some(Ipv4Addr::new(10, 0, 2, 15))), (ACK, Ipv4Addr::new(10, 0, 2, 15)));
    // A datagram through the port forward reaches the static guest at the
    // MAC address the saved NAT had learned (a fresh one would broadcast it).
    let (_, fwd) = n.hostfwd_addrs()[0];
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    host.send_to(b"after the restore", fwd).unwrap();
    let start = Instant::now();
    let frame = loop {
        if let Some(f) = out(&mut n).pop() {
            break f;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the datagram never reached the guest");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(frame[..6], STATIC_MAC);
    assert!(frame.ends_with(b"after the restore"));
}

#[test]
fn corrupt_nat_states_are_refused() {
    let mut n = configured();
    let good = n.save();
    fn lease(ip: [u8; 4], mac: [u8; 6]) -> DhcpLease {
        DhcpLease { mac: MacAddr(mac), ip: Ipv4Addr::from(ip), bound: true }
    }
    type Corrupt = fn(&mut UserNetState);
    let cases: [(&str, Corrupt); 10] = [
        ("config", |s| s.config.hostfwd.clear()),
        ("config", |s| s.config.dns = Ipv4Addr::new(10, 0, 2, 4)),
        ("leases", |s| s.leases[1].ip = Ipv4Addr::new(10, 0, 2, 100)),
        ("leases", |s| s.leases[1].mac = MacAddr([1, 0, 0x5e, 0, 0, 1])),
        ("leases", |s| s.leases[1].ip = s.leases[0].ip),
        ("leases", |s| s.leases[1].mac = s.leases[0].mac),
        ("leases", |s| s.leases = (0..17).map(|i| lease([10, 0, 2, 15 + i], [0x52, 0, 0, 0, 0, i])).collect()),
        ("guest_macs", |s| s.guest_macs[0].0 = Ipv4Addr::new(10, 0, 2, 2)),
        ("guest_macs", |s| s.guest_macs[0].1 = MacAddr([0xff; 6])),
        ("guest_macs", |s| {
            s.guest_macs = (0..65).map(|i| (Ipv4Addr::new(10, 0, 2, 30 + i), MacAddr([0x52, 0, 0, 0, 0, i]))).collect()
        }),
    ];
    for (field, corrupt) in cases {
        let mut bad = good.clone();
        corrupt(&mut bad);
        let e = persist::assert_refused(&mut n, &bad);
        assert_eq!((e.part, e.field), ("user-mode NAT", field), "{e}");
    }
    let mut twice = good.clone();
    twice.guest_macs.push(twice.guest_macs[0]);
    let e = persist::assert_refused(&mut n, &twice);
    assert_eq!(e.problem, "10.0.2.20 (52:54:00:00:00:20) is there twice");
    // The whole pool, all bound, is taken.
    let mut full = good.clone();
    full.leases = (0..16).map(|i| lease([10, 0, 2, 15 + i], [0x52, 0, 0, 0, 0, i])).collect();
    n.restore(&full).unwrap();
    assert_eq!(n.save(), full);
}
