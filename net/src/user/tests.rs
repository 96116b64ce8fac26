//! The NAT's filter against hand-made and hostile frames. No host traffic:
//! every NAT here runs with `restrict=on` or sends nothing outward.

use super::*;
use crate::frame::{build_icmp_echo, build_ipv4, build_udp, ETH_HEADER_LEN};
use crate::DnsUpstream;
use smoltcp::wire::{ArpOperation, EthernetFrame, EthernetRepr, IpAddress, Ipv4Packet, TcpPacket, TcpSeqNumber};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GW_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

fn nat() -> UserNet {
    UserNet::new(UserNetConfig { restrict: true, dns_upstream: DnsUpstream::Disabled, ..UserNetConfig::default() })
        .unwrap()
}

fn out(n: &mut UserNet) -> Vec<Vec<u8>> {
    n.poll(Instant::now());
    let mut v = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(len) = n.recv(&mut buf) {
        v.push(buf[..len].to_vec());
    }
    v
}

fn arp(target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: GUEST,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut f = vec![0u8; ETH_HEADER_LEN + repr.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    EthernetRepr { src_addr: GUEST_MAC, dst_addr: EthernetAddress::BROADCAST, ethertype: EthernetProtocol::Arp }
        .emit(&mut eth);
    repr.emit(&mut ArpPacket::new_unchecked(&mut f[ETH_HEADER_LEN..]));
    f
}

fn ping(dst: Ipv4Addr) -> Vec<u8> {
    build_icmp_echo(GUEST_MAC, GW_MAC, GUEST, dst, false, 0x77, 1, b"abcdefgh")
}

fn syn(dst: Ipv4Addr, dport: u16, sport: u16) -> Vec<u8> {
    build_ipv4(GUEST_MAC, GW_MAC, GUEST, dst, IpProtocol::Tcp, 20, |l4| fill_syn(l4, sport, dport, GUEST, dst))
}

/// Writes a guest SYN (sequence 1000, no options) from `src` to `dst`
/// into the 20 bytes of `l4`.
pub(super) fn fill_syn(l4: &mut [u8], sport: u16, dport: u16, src: impl Into<IpAddress>, dst: impl Into<IpAddress>) {
    let mut t = TcpPacket::new_unchecked(l4);
    t.set_src_port(sport);
    t.set_dst_port(dport);
    t.set_seq_number(TcpSeqNumber(1000));
    t.set_header_len(20);
    t.clear_flags();
    t.set_syn(true);
    t.set_window_len(65535);
    t.fill_checksum(&src.into(), &dst.into());
}

#[test]
fn arp_only_for_the_nat_addresses() {
    let mut n = nat();
    n.send(&arp(GW));
    let replies = out(&mut n);
    assert_eq!(replies.len(), 1);
    let p = ArpPacket::new_checked(&replies[0][ETH_HEADER_LEN..]).unwrap();
    assert_eq!(p.source_protocol_addr(), &GW.octets()[..]);
    assert_eq!(p.source_hardware_addr(), &GW_MAC.0[..]);
    n.send(&arp(Ipv4Addr::new(10, 0, 2, 3)));
    assert_eq!(out(&mut n).len(), 1);
    for other in [Ipv4Addr::new(10, 0, 2, 99), GUEST, Ipv4Addr::new(8, 8, 8, 8)] {
        n.send(&arp(other));
        assert!(out(&mut n).is_empty(), "ARP for {other} answered");
    }
}

#[test]
fn gateway_answers_ping_and_restrict_drops_outside_ping() {
    let mut n = nat();
    n.send(&ping(GW));
    let r = out(&mut n);
    assert_eq!(r.len(), 1);
    let eth = frame::parse_eth(&r[0]).unwrap();
    let ip = frame::parse_ipv4(eth.payload).unwrap();
    assert_eq!((ip.src, ip.dst), (GW, GUEST));
    let icmp = Icmpv4Packet::new_checked(ip.payload).unwrap();
    assert!(matches!(
        Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap(),
        Icmpv4Repr::EchoReply { ident: 0x77, seq_no: 1, data: b"abcdefgh" }
    ));
    n.send(&ping(Ipv4Addr::new(192, 0, 2, 1)));
    assert!(out(&mut n).is_empty());
    assert_eq!(n.stats().dropped_policy, 1);
}

#[test]
fn restrict_answers_a_syn_with_rst() {
    let mut n = nat();
    n.send(&syn(GW, 80, 40000));
    let r = out(&mut n);
    assert_eq!(r.len(), 1);
    let eth = frame::parse_eth(&r[0]).unwrap();
    let ip = frame::parse_ipv4(eth.payload).unwrap();
    let t = frame::parse_tcp(&ip).unwrap();
    assert!(t.rst);
    assert_eq!(t.ack, Some(1001));
    assert_eq!(n.stats().tcp_flows, 0);
}

#[test]
fn ip_options_are_skipped() {
    // An echo request with a 4-byte IP option (NOP x3 + EOL), IHL 6.
    let plain = ping(GW);
    let mut f = plain[..ETH_HEADER_LEN + 20].to_vec();
    f.extend_from_slice(&[1, 1, 1, 0]);
    f.extend_from_slice(&plain[ETH_HEADER_LEN + 20..]);
    {
        let mut p = Ipv4Packet::new_unchecked(&mut f[ETH_HEADER_LEN..]);
        p.set_header_len(24);
        p.set_total_len((plain.len() - ETH_HEADER_LEN + 4) as u16);
        p.fill_checksum();
    }
    let mut n = nat();
    n.send(&f);
    assert_eq!(out(&mut n).len(), 1, "echo with options answered");
}

#[test]
fn malformed_frames_are_counted_not_fatal() {
    let mut n = nat();
    let good = ping(GW);
    // Zero length and every truncation.
    n.send(&[]);
    for len in 1..good.len() {
        n.send(&good[..len]);
    }
    // Bad IP total length (longer than the frame, shorter than the header).
    for total in [0u16, 10, 19, 2000] {
        let mut f = good.clone();
        Ipv4Packet::new_unchecked(&mut f[ETH_HEADER_LEN..]).set_total_len(total);
        Ipv4Packet::new_unchecked(&mut f[ETH_HEADER_LEN..]).fill_checksum();
        n.send(&f);
    }
    // Bad IHL.
    for ihl in [0u8, 4, 60] {
        let mut f = good.clone();
        f[ETH_HEADER_LEN] = 0x40 | (ihl / 4);
        n.send(&f);
    }
    // Bad checksums: IP and ICMP.
    let mut f = good.clone();
    f[ETH_HEADER_LEN + 10] ^= 0xff;
    n.send(&f);
    let mut f = good.clone();
    *f.last_mut().unwrap() ^= 0xff;
    n.send(&f);
    // Fragments (first and later).
    for (more, off) in [(true, 0u16), (false, 64)] {
        let mut f = good.clone();
        let mut p = Ipv4Packet::new_unchecked(&mut f[ETH_HEADER_LEN..]);
        p.set_more_frags(more);
        p.set_frag_offset(off);
        p.fill_checksum();
        n.send(&f);
    }
    // UDP with a length past its IP payload.
    let mut f = build_udp(
        GUEST_MAC,
        GW_MAC,
        SocketAddrV4::new(GUEST, 1),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53),
        &[0; 12],
    );
    f[ETH_HEADER_LEN + 20 + 4..ETH_HEADER_LEN + 20 + 6].copy_from_slice(&500u16.to_be_bytes());
    n.send(&f);
    // Another protocol, another ethertype, multicast source, someone else's MAC.
    let mut f = good.clone();
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    n.send(&f);
    let mut f = good.clone();
    f[6] |= 1;
    n.send(&f);
    let mut f = good.clone();
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    n.send(&f);
    // Spoofed sources outside the network.
    n.send(&build_icmp_echo(GUEST_MAC, GW_MAC, Ipv4Addr::new(1, 2, 3, 4), GW, false, 1, 1, b""));

    assert!(out(&mut n).is_empty(), "no malformed frame was answered");
    let s = n.stats();
    assert!(s.dropped_malformed >= good.len() as u64, "{s:?}");
    assert_eq!(s.dropped_checksum, 2, "{s:?}");
    assert_eq!(s.dropped_fragment, 2, "{s:?}");
    assert!(s.dropped_policy >= 1, "{s:?}");
    // And the NAT still works.
    n.send(&ping(GW));
    assert_eq!(out(&mut n).len(), 1);
}

#[test]
fn dns_without_upstream_is_servfail_at_once() {
    let mut n = nat();
    let q = dns::tests::query(0xbeef, "example.com");
    n.send(&build_udp(
        GUEST_MAC,
        GW_MAC,
        SocketAddrV4::new(GUEST, 5555),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53),
        &q,
    ));
    let r = out(&mut n);
    assert_eq!(r.len(), 1);
    let eth = frame::parse_eth(&r[0]).unwrap();
    let ip = frame::parse_ipv4(eth.payload).unwrap();
    let udp = frame::parse_udp(&ip).unwrap();
    assert_eq!((udp.src_port, udp.dst_port), (53, 5555));
    assert_eq!(&udp.payload[0..2], &[0xbe, 0xef]);
    assert_eq!(udp.payload[3] & 0xf, 2, "SERVFAIL");
}

#[test]
fn guest_queue_is_bounded() {
    let mut n = UserNet::new(UserNetConfig {
        restrict: true,
        dns_upstream: DnsUpstream::Disabled,
        limits: crate::Limits { guest_queue: 16, ..Default::default() },
        ..UserNetConfig::default()
    })
    .unwrap();
    for _ in 0..100 {
        n.send(&ping(GW));
    }
    assert!(!n.holding_back(), "nothing polled yet");
    n.poll(Instant::now());
    assert_eq!(n.q.to_guest.len(), 16);
    assert_eq!(n.stats().dropped_guest_queue, 84);
    // The poll ended with the queue full: a poll after the guest took
    // frames may let more through, until that poll.
    assert!(n.holding_back());
    let mut buf = [0u8; 2048];
    while n.recv(&mut buf).is_some() {}
    assert!(n.holding_back());
    n.poll(Instant::now());
    assert!(!n.holding_back(), "the last poll had room");
}

#[test]
fn fuzz_entry_point_over_random_and_mutated_frames() {
    let seeds: Vec<Vec<u8>> = vec![
        arp(GW),
        ping(GW),
        syn(GW, 80, 1234),
        build_udp(
            GUEST_MAC,
            GW_MAC,
            SocketAddrV4::new(GUEST, 5555),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53),
            &dns::tests::query(1, "a.example"),
        ),
        build_udp(
            GUEST_MAC,
            EthernetAddress::BROADCAST,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
            &dhcp::tests::client_msg(1, GUEST_MAC.0, 9, &[]),
        ),
    ];
    // IPv6: a router solicitation, a neighbor solicitation for the gateway,
    // an echo to it, a DNS query and a SYN.
    let (guest6, gw6): (Ipv6Addr, Ipv6Addr) = ("fec0::5054:ff:fe12:3456".parse().unwrap(), "fec0::2".parse().unwrap());
    let icmp6 = |dst: Ipv6Addr, repr: &smoltcp::wire::Icmpv6Repr<'_>| {
        let mac = if dst.is_multicast() { frame::ipv6_multicast_mac(dst) } else { GW_MAC };
        frame::build_icmpv6(GUEST_MAC, mac, guest6, dst, 255, repr, &[])
    };
    let mut seeds = seeds;
    seeds.push(icmp6(
        "ff02::2".parse().unwrap(),
        &smoltcp::wire::Icmpv6Repr::Ndisc(smoltcp::wire::NdiscRepr::RouterSolicit { lladdr: Some(GUEST_MAC.into()) }),
    ));
    seeds.push(icmp6(
        frame::solicited_node(gw6),
        &smoltcp::wire::Icmpv6Repr::Ndisc(smoltcp::wire::NdiscRepr::NeighborSolicit {
            target_addr: gw6,
            lladdr: Some(GUEST_MAC.into()),
        }),
    ));
    seeds.push(icmp6(gw6, &smoltcp::wire::Icmpv6Repr::EchoRequest { ident: 1, seq_no: 2, data: b"abcd" }));
    seeds.push(frame::build_udp6(
        GUEST_MAC,
        GW_MAC,
        std::net::SocketAddrV6::new(guest6, 5555, 0, 0),
        std::net::SocketAddrV6::new("fec0::3".parse().unwrap(), 53, 0, 0),
        &dns::tests::query(2, "b.example"),
    ));
    seeds.push(frame::build_ipv6(GUEST_MAC, GW_MAC, guest6, gw6, IpProtocol::Tcp, 64, 20, |l4| {
        let mut t = TcpPacket::new_unchecked(l4);
        t.set_src_port(40000);
        t.set_dst_port(22);
        t.set_header_len(20);
        t.clear_flags();
        t.set_syn(true);
        t.fill_checksum(&guest6.into(), &gw6.into());
    }));
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..3000 {
        let mut input = Vec::new();
        for _ in 0..(rnd() % 4 + 1) {
            let mut f = if i % 3 == 0 {
                let len = (rnd() % 200) as usize;
                (0..len).map(|_| rnd() as u8).collect()
            } else {
                seeds[(rnd() % seeds.len() as u64) as usize].clone()
            };
            // Mutate: flip bytes, truncate, extend.
            for _ in 0..(rnd() % 4) {
                if !f.is_empty() {
                    let at = (rnd() % f.len() as u64) as usize;
                    f[at] ^= rnd() as u8;
                }
            }
            if rnd() % 4 == 0 && !f.is_empty() {
                f.truncate((rnd() % f.len() as u64) as usize);
            }
            input.extend_from_slice(&(f.len() as u16).to_be_bytes());
            input.extend_from_slice(&f);
        }
        crate::fuzz_frame(&input);
    }
}

/// An Ethernet/IPv4 frame from the guest to `dst` with IP options
/// `ip_opts` (a multiple of 4 bytes) around `l4`; the IP checksum is filled.
fn raw_ipv4(dst: Ipv4Addr, proto: IpProtocol, ip_opts: &[u8], l4: &[u8]) -> Vec<u8> {
    let ihl = 20 + ip_opts.len();
    let mut f = vec![0u8; ETH_HEADER_LEN + ihl + l4.len()];
    f[0..6].copy_from_slice(&GW_MAC.0);
    f[6..12].copy_from_slice(&GUEST_MAC.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[ETH_HEADER_LEN..];
    ip[0] = 0x40 | (ihl / 4) as u8;
    ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto.into();
    ip[12..16].copy_from_slice(&GUEST.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    ip[20..ihl].copy_from_slice(ip_opts);
    ip[ihl..].copy_from_slice(l4);
    Ipv4Packet::new_unchecked(&mut f[ETH_HEADER_LEN..]).fill_checksum();
    f
}

/// A TCP SYN header (with `opts`) to GW:80, checksum filled.
fn syn_l4(opts: &[u8]) -> Vec<u8> {
    let mut l4 = vec![0u8; 20 + opts.len()];
    let mut t = TcpPacket::new_unchecked(&mut l4[..]);
    t.set_src_port(40000);
    t.set_dst_port(80);
    t.set_seq_number(TcpSeqNumber(7));
    t.set_header_len((20 + opts.len()) as u8);
    t.clear_flags();
    t.set_syn(true);
    t.set_window_len(1000);
    l4[20..].copy_from_slice(opts);
    TcpPacket::new_unchecked(&mut l4[..]).fill_checksum(&GUEST.into(), &GW.into());
    l4
}

/// TCP and UDP headers that lie: truncated, with bad offsets and lengths,
/// fragmented. Each is counted and dropped before anything answers it; IP
/// and TCP options in otherwise good frames are accepted.
#[test]
fn malformed_tcp_and_udp_headers_are_dropped() {
    let mut n = nat();
    let answered = |n: &mut UserNet, f: &[u8]| {
        n.send(f);
        out(n).len()
    };
    // Good frames, each answered once (restrict=on: an RST; no upstream: SERVFAIL).
    let good_syn = raw_ipv4(GW, IpProtocol::Tcp, &[], &syn_l4(&[]));
    assert_eq!(answered(&mut n, &good_syn), 1);
    let mss = [2, 4, 0x05, 0xb4];
    assert_eq!(answered(&mut n, &raw_ipv4(GW, IpProtocol::Tcp, &[], &syn_l4(&mss))), 1, "TCP options");
    let nops = [1, 1, 1, 0];
    assert_eq!(answered(&mut n, &raw_ipv4(GW, IpProtocol::Tcp, &nops, &syn_l4(&[]))), 1, "IP options");
    let dns = Ipv4Addr::new(10, 0, 2, 3);
    let udp = |len_field: u16, payload: &[u8]| {
        let mut l4 = vec![0u8; 8];
        l4[0..2].copy_from_slice(&5555u16.to_be_bytes());
        l4[2..4].copy_from_slice(&53u16.to_be_bytes());
        l4[4..6].copy_from_slice(&len_field.to_be_bytes());
        l4.extend_from_slice(payload);
        l4
    };
    let q = dns::tests::query(9, "a.example");
    assert_eq!(answered(&mut n, &raw_ipv4(dns, IpProtocol::Udp, &[], &udp(8 + q.len() as u16, &q))), 1);
    let before = n.stats();

    // Truncated TCP headers (the IP header says so too).
    for len in 0..20 {
        let l4 = syn_l4(&[]);
        assert_eq!(answered(&mut n, &raw_ipv4(GW, IpProtocol::Tcp, &[], &l4[..len])), 0, "TCP header of {len}");
    }
    // Data offsets below 5 words and past the segment.
    for words in [0u8, 4, 6, 15] {
        let mut l4 = syn_l4(&[]);
        l4[12] = words << 4;
        assert_eq!(answered(&mut n, &raw_ipv4(GW, IpProtocol::Tcp, &[], &l4)), 0, "data offset {words}");
    }
    // Port 0.
    let mut l4 = syn_l4(&[]);
    l4[0..2].copy_from_slice(&[0, 0]);
    TcpPacket::new_unchecked(&mut l4[..]).fill_checksum(&GUEST.into(), &GW.into());
    assert_eq!(answered(&mut n, &raw_ipv4(GW, IpProtocol::Tcp, &[], &l4)), 0, "source port 0");
    // Bad TCP checksum.
    let mut l4 = syn_l4(&[]);
    l4[16] ^= 0x55;
    assert_eq!(answered(&mut n, &raw_ipv4(GW, IpProtocol::Tcp, &[], &l4)), 0, "TCP checksum");
    // UDP: truncated header, length below the header, past the datagram.
    for l4 in [udp(8, &[])[..4].to_vec(), udp(4, &q), udp(8 + q.len() as u16 + 1, &q), udp(2000, &q)] {
        assert_eq!(answered(&mut n, &raw_ipv4(dns, IpProtocol::Udp, &[], &l4)), 0, "UDP {l4:02x?}");
    }
    // Fragments of a SYN and of a query: first (MF) and later (offset).
    for (proto, l4) in [(IpProtocol::Tcp, syn_l4(&[])), (IpProtocol::Udp, udp(8 + q.len() as u16, &q))] {
        let dst = if proto == IpProtocol::Tcp { GW } else { dns };
        for (more, offset) in [(true, 0u16), (false, 8), (true, 16)] {
            let mut f = raw_ipv4(dst, proto, &[], &l4);
            let mut p = Ipv4Packet::new_unchecked(&mut f[ETH_HEADER_LEN..]);
            p.set_more_frags(more);
            p.set_frag_offset(offset);
            p.fill_checksum();
            assert_eq!(answered(&mut n, &f), 0, "fragment {proto} {more} {offset}");
        }
    }
    // IP options longer than the packet, and an option area cut short.
    let mut f = raw_ipv4(GW, IpProtocol::Tcp, &[1; 40], &[]);
    f.truncate(ETH_HEADER_LEN + 30);
    assert_eq!(answered(&mut n, &f), 0, "options past the frame");

    let s = n.stats();
    assert_eq!(s.dropped_checksum - before.dropped_checksum, 1, "{s:?}");
    assert_eq!(s.dropped_fragment - before.dropped_fragment, 6, "{s:?}");
    // 20 truncations, 4 offsets, port 0, 4 UDP lengths, the cut options.
    let malformed = 20 + 4 + 1 + 4 + 1;
    assert_eq!(s.dropped_malformed - before.dropped_malformed, malformed, "{s:?}");
    assert_eq!(s.tcp_resets, before.tcp_resets, "no RST for a malformed segment");
    // And good frames are still served.
    assert_eq!(answered(&mut n, &good_syn), 1);
}

#[test]
fn allow_lets_a_listed_port_past_restrict() {
    // A host service on the loopback, reached through the gateway.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let cfg = format!("user,allow=tcp:10.0.2.2:{port}").parse::<crate::NicSpec>().unwrap();
    let crate::BackendSpec::User(mut cfg) = cfg.backend else { panic!("not user") };
    cfg.dns_upstream = DnsUpstream::Disabled;
    let mut n = UserNet::new(*cfg).unwrap();
    // Another port of the same address: refused as under restrict.
    n.send(&syn(GW, port.wrapping_add(1).max(1), 40001));
    let r = out(&mut n);
    assert_eq!(r.len(), 1);
    let eth = frame::parse_eth(&r[0]).unwrap();
    let ip = frame::parse_ipv4(eth.payload).unwrap();
    assert!(frame::parse_tcp(&ip).unwrap().rst, "a port not listed gets an RST");
    // The listed one: a flow, and the host service sees the connection.
    n.send(&syn(GW, port, 40000));
    let _ = out(&mut n);
    assert_eq!(n.stats().tcp_flows, 1);
    l.set_nonblocking(false).unwrap();
    let (_conn, _) = l.accept().unwrap();
    // An ICMP echo to an address no entry lists is dropped.
    n.send(&ping(Ipv4Addr::new(192, 0, 2, 1)));
    assert!(out(&mut n).is_empty());
}
