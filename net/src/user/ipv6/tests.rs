//! IPv6 through the NAT: router advertisements, NDP, echo, DNS and TCP
//! against hand-made guest frames (and, for TCP, a smoltcp guest), with
//! real host sockets where traffic leaves.

use std::net::{Ipv4Addr, SocketAddrV6, TcpListener, UdpSocket};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpCidr, IpEndpoint};

use super::*;
use crate::frame::{build_ipv6, build_udp6, parse_eth, parse_ipv6, ETH_HEADER_LEN, IPV6_HEADER_LEN};
use crate::user::dns;
use crate::{BackendSpec, DnsUpstream, NetBackend, NicSpec, UserNetConfig};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GW_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);
const GUEST: Ipv6Addr = Ipv6Addr::new(0xfec0, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
const GUEST_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
const GW6: Ipv6Addr = Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 2);
const DNS6: Ipv6Addr = Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 3);
/// How long a test waits for host sockets.
const T: Duration = Duration::from_secs(5);

/// A NAT that reaches nothing outside (`restrict=on`, no DNS upstream).
fn nat() -> UserNet {
    UserNet::new(UserNetConfig { restrict: true, dns_upstream: DnsUpstream::Disabled, ..UserNetConfig::default() })
        .unwrap()
}

fn nat_from(spec: &str) -> UserNet {
    let BackendSpec::User(cfg) = spec.parse::<NicSpec>().unwrap().backend else { panic!("not user") };
    UserNet::new(UserNetConfig { dns_upstream: DnsUpstream::Disabled, ..*cfg }).unwrap()
}

fn out_at(n: &mut UserNet, now: Instant) -> Vec<Vec<u8>> {
    n.poll(now);
    let mut v = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(len) = n.recv(&mut buf) {
        v.push(buf[..len].to_vec());
    }
    v
}

fn out(n: &mut UserNet) -> Vec<Vec<u8>> {
    out_at(n, Instant::now())
}

/// A guest ICMPv6 message (Ethernet destination from the IP one).
fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, repr: &Icmpv6Repr<'_>) -> Vec<u8> {
    let dst_mac = if dst.is_multicast() { frame::ipv6_multicast_mac(dst) } else { GW_MAC };
    frame::build_icmpv6(GUEST_MAC, dst_mac, src, dst, hop_limit, repr, &[])
}

fn rs(src: Ipv6Addr, lladdr: Option<EthernetAddress>, hop_limit: u8) -> Vec<u8> {
    let repr = Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit { lladdr: lladdr.map(RawHardwareAddress::from) });
    icmp6(src, ALL_ROUTERS, hop_limit, &repr)
}

fn ns(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, lladdr: Option<EthernetAddress>) -> Vec<u8> {
    let repr = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
        target_addr: target,
        lladdr: lladdr.map(RawHardwareAddress::from),
    });
    icmp6(src, dst, 255, &repr)
}

fn ping6(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    icmp6(src, dst, 64, &Icmpv6Repr::EchoRequest { ident: 0x77, seq_no: 3, data: b"abcdefgh" })
}

/// An ICMPv6 frame for the guest, parsed: Ethernet destination, IP
/// source, destination and hop limit, and the ICMPv6 message bytes.
struct Icmp6Frame {
    eth_dst: EthernetAddress,
    eth_src: EthernetAddress,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    msg: Vec<u8>,
}

impl Icmp6Frame {
    fn parse(f: &[u8]) -> Option<Icmp6Frame> {
        let eth = parse_eth(f).ok()?;
        let ip = parse_ipv6(eth.payload).ok()?;
        (ip.proto == IpProtocol::Icmpv6).then(|| Icmp6Frame {
            eth_dst: eth.dst,
            eth_src: eth.src,
            src: ip.src,
            dst: ip.dst,
            hop_limit: ip.hop_limit,
            msg: ip.payload.to_vec(),
        })
    }

    fn kind(&self) -> Icmpv6Message {
        Icmpv6Packet::new_unchecked(&self.msg[..]).msg_type()
    }

    /// The message, its checksum checked.
    fn repr(&self) -> Icmpv6Repr<'_> {
        let p = Icmpv6Packet::new_checked(&self.msg[..]).unwrap();
        Icmpv6Repr::parse(&self.src, &self.dst, &p, &ChecksumCapabilities::default()).expect("a valid ICMPv6 message")
    }
}

/// The ICMPv6 messages of type `kind` among `frames`.
fn of_kind(frames: &[Vec<u8>], kind: Icmpv6Message) -> Vec<Icmp6Frame> {
    frames.iter().filter_map(|f| Icmp6Frame::parse(f)).filter(|m| m.kind() == kind).collect()
}

/// The NDP options after a router advertisement's 16-byte header: (type, body).
fn ra_options(msg: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut opts = Vec::new();
    let mut rest = &msg[16..];
    while rest.len() >= 2 {
        let len = usize::from(rest[1]) * 8;
        assert!(len >= 8 && len <= rest.len(), "option length {len}");
        opts.push((rest[0], rest[2..len].to_vec()));
        rest = &rest[len..];
    }
    assert!(rest.is_empty());
    opts
}

fn check_ra(m: &Icmp6Frame, prefix: Ipv6Addr, prefix_len: u8, dns: Ipv6Addr) {
    assert_eq!((m.eth_src, m.eth_dst), (GW_MAC, EthernetAddress([0x33, 0x33, 0, 0, 0, 1])));
    assert_eq!((m.src, m.dst, m.hop_limit), (LINK_LOCAL_GW, ALL_NODES, 255));
    let Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
        hop_limit,
        flags,
        router_lifetime,
        reachable_time,
        retrans_time,
        lladdr,
        mtu,
        prefix_info,
    }) = m.repr()
    else {
        panic!("not a router advertisement")
    };
    assert_eq!((hop_limit, flags), (64, NdiscRouterFlags::empty()), "no M/O flags");
    assert_eq!(router_lifetime, smoltcp::time::Duration::from_secs(1800));
    assert_eq!((reachable_time, retrans_time), (smoltcp::time::Duration::ZERO, smoltcp::time::Duration::ZERO));
    assert_eq!(lladdr, Some(RawHardwareAddress::from(GW_MAC)));
    assert_eq!(mtu, None);
    let p = prefix_info.expect("a prefix");
    assert_eq!((p.prefix, p.prefix_len), (prefix, prefix_len));
    assert_eq!(p.flags, NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF);
    assert_eq!(p.valid_lifetime, smoltcp::time::Duration::from_secs(86400));
    assert_eq!(p.preferred_lifetime, smoltcp::time::Duration::from_secs(14400));
    let rdnss: Vec<Vec<u8>> = ra_options(&m.msg).into_iter().filter(|o| o.0 == 25).map(|o| o.1).collect();
    assert_eq!(rdnss.len(), 1, "one RDNSS option");
    let r = &rdnss[0];
    assert_eq!(r.len(), 22, "RDNSS with one address");
    assert_eq!(u32::from_be_bytes([r[2], r[3], r[4], r[5]]), 1200, "RDNSS lifetime");
    assert_eq!(&r[6..22], &dns.octets());
}

#[test]
fn router_solicitation_gets_an_advertisement() {
    let mut n = nat();
    n.send(&rs(GUEST_LL, Some(GUEST_MAC), 255));
    let r = out(&mut n);
    let ras = of_kind(&r, Icmpv6Message::RouterAdvert);
    assert_eq!(ras.len(), 1, "one advertisement: {r:02x?}");
    check_ra(&ras[0], Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 64, DNS6);
    assert_eq!(n.guest_mac6(GUEST_LL), Some(GUEST_MAC), "learned from the source link-layer option");
    assert_eq!(n.stats().router_adverts, 1);

    // From the unspecified address: answered, nothing learned.
    n.send(&rs(Ipv6Addr::UNSPECIFIED, None, 255));
    assert_eq!(of_kind(&out(&mut n), Icmpv6Message::RouterAdvert).len(), 1);

    // Hop limit not 255, a link-layer option with no source address: dropped.
    let before = n.stats().dropped_malformed;
    n.send(&rs(GUEST_LL, Some(GUEST_MAC), 64));
    n.send(&rs(Ipv6Addr::UNSPECIFIED, Some(GUEST_MAC), 255));
    assert!(out(&mut n).is_empty());
    assert_eq!(n.stats().dropped_malformed - before, 2);
}

#[test]
fn advertisement_follows_the_configured_prefix() {
    let mut n = nat_from("user,ipv6-net=fd00:1:2:3::/64");
    assert_eq!(n.config().ipv6_host, "fd00:1:2:3::2".parse::<Ipv6Addr>().unwrap());
    n.send(&rs(GUEST_LL, None, 255));
    let ras = of_kind(&out(&mut n), Icmpv6Message::RouterAdvert);
    assert_eq!(ras.len(), 1);
    check_ra(&ras[0], "fd00:1:2:3::".parse().unwrap(), 64, "fd00:1:2:3::3".parse().unwrap());
    assert_eq!(n.guest_mac6(GUEST_LL), Some(GUEST_MAC), "learned from the frame without an option");
}

#[test]
fn unsolicited_advertisements_start_with_the_guest_ipv6() {
    let mut n = nat();
    assert!(out(&mut n).is_empty(), "nothing before the guest speaks IPv6");
    assert_eq!(n.ndp.next_deadline(), None);
    // Any IPv6 from the guest (here an echo) starts them.
    n.send(&ping6(GUEST, GW6));
    let t0 = Instant::now();
    let r = out_at(&mut n, t0);
    assert_eq!(of_kind(&r, Icmpv6Message::EchoReply).len(), 1);
    assert_eq!(of_kind(&r, Icmpv6Message::RouterAdvert).len(), 1);
    // Two more 4 s apart, then one in 200-600 s.
    assert!(out_at(&mut n, t0 + Duration::from_secs(3)).is_empty());
    assert_eq!(of_kind(&out_at(&mut n, t0 + Duration::from_secs(4)), Icmpv6Message::RouterAdvert).len(), 1);
    assert_eq!(of_kind(&out_at(&mut n, t0 + Duration::from_secs(8)), Icmpv6Message::RouterAdvert).len(), 1);
    let next = n.ndp.next_deadline().unwrap();
    let wait = next.duration_since(t0 + Duration::from_secs(8));
    assert!((Duration::from_secs(200)..Duration::from_secs(600)).contains(&wait), "{wait:?}");
    assert!(out_at(&mut n, t0 + Duration::from_secs(207)).is_empty());
    assert_eq!(of_kind(&out_at(&mut n, t0 + Duration::from_secs(609)), Icmpv6Message::RouterAdvert).len(), 1);
    assert_eq!(n.stats().router_adverts, 4);
}

#[test]
fn neighbor_solicitation_for_the_nat_addresses_is_answered() {
    let mut n = nat();
    for (src, target) in [(GUEST_LL, LINK_LOCAL_GW), (GUEST, GW6), (GUEST, DNS6)] {
        n.send(&ns(src, frame::solicited_node(target), target, Some(GUEST_MAC)));
        let r = out(&mut n);
        let nas = of_kind(&r, Icmpv6Message::NeighborAdvert);
        assert_eq!(nas.len(), 1, "NS for {target}: {r:02x?}");
        let m = &nas[0];
        assert_eq!((m.eth_src, m.eth_dst), (GW_MAC, GUEST_MAC));
        assert_eq!((m.src, m.dst, m.hop_limit), (target, src, 255));
        let Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert { flags, target_addr, lladdr }) = m.repr() else {
            panic!("not an NA")
        };
        assert_eq!(flags, NdiscNeighborFlags::ROUTER | NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE);
        assert_eq!(target_addr, target);
        assert_eq!(lladdr, Some(RawHardwareAddress::from(GW_MAC)));
        assert_eq!(n.guest_mac6(src), Some(GUEST_MAC));
    }
    // A unicast solicitation (reachability) without the option: to the frame's source.
    n.send(&ns(GUEST, GW6, GW6, None));
    let nas = of_kind(&out(&mut n), Icmpv6Message::NeighborAdvert);
    assert_eq!(nas.len(), 1);
    assert_eq!((nas[0].eth_dst, nas[0].dst), (GUEST_MAC, GUEST));

    let s0 = n.stats();
    // Someone else's address, and the guest's own duplicate address detection.
    let other = Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0x99);
    n.send(&ns(GUEST, frame::solicited_node(other), other, Some(GUEST_MAC)));
    n.send(&ns(Ipv6Addr::UNSPECIFIED, frame::solicited_node(GUEST), GUEST, None));
    assert!(of_kind(&out(&mut n), Icmpv6Message::NeighborAdvert).is_empty());
    assert_eq!(n.stats().dropped_not_for_us - s0.dropped_not_for_us, 2);
    // Hop limit 64, a multicast target, DAD with a link-layer option: malformed.
    let mut low = ns(GUEST, frame::solicited_node(GW6), GW6, Some(GUEST_MAC));
    low[ETH_HEADER_LEN + 7] = 64;
    n.send(&low);
    n.send(&ns(GUEST, ALL_NODES, ALL_NODES, Some(GUEST_MAC)));
    n.send(&ns(Ipv6Addr::UNSPECIFIED, frame::solicited_node(GW6), GW6, Some(GUEST_MAC)));
    assert!(out(&mut n).is_empty());
    assert_eq!(n.stats().dropped_malformed - s0.dropped_malformed, 3, "{:?}", n.stats());

    // Duplicate address detection for the gateway: defended to all nodes.
    n.send(&ns(Ipv6Addr::UNSPECIFIED, frame::solicited_node(GW6), GW6, None));
    let nas = of_kind(&out(&mut n), Icmpv6Message::NeighborAdvert);
    assert_eq!(nas.len(), 1);
    assert_eq!((nas[0].dst, nas[0].eth_dst), (ALL_NODES, frame::ipv6_multicast_mac(ALL_NODES)));
    let Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert { flags, .. }) = nas[0].repr() else { panic!() };
    assert_eq!(flags, NdiscNeighborFlags::ROUTER | NdiscNeighborFlags::OVERRIDE, "not solicited");
}

#[test]
fn frames_for_an_unknown_guest_address_wait_for_its_mac() {
    let mut n = nat();
    let t0 = Instant::now();
    let reply = |n: &UserNet| {
        let src = SocketAddrV6::new(DNS6, 53, 0, 0);
        build_udp6(n.gw_mac, EthernetAddress([0; 6]), src, SocketAddrV6::new(GUEST, 5555, 0, 0), b"answer")
    };
    let f = reply(&n);
    n.deliver6(GUEST, f, t0);
    let r = out_at(&mut n, t0);
    let nss = of_kind(&r, Icmpv6Message::NeighborSolicit);
    assert_eq!(r.len(), 1, "only the solicitation goes out");
    let m = &nss[0];
    assert_eq!((m.src, m.dst, m.hop_limit), (GW6, frame::solicited_node(GUEST), 255));
    assert_eq!(m.eth_dst, EthernetAddress([0x33, 0x33, 0xff, 0x12, 0x34, 0x56]));
    let Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, lladdr }) = m.repr() else { panic!() };
    assert_eq!((target_addr, lladdr), (GUEST, Some(RawHardwareAddress::from(GW_MAC))));
    // The guest answers: the datagram follows, to its MAC.
    let na = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
        flags: NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
        target_addr: GUEST,
        lladdr: Some(GUEST_MAC.into()),
    });
    n.send(&icmp6(GUEST, GW6, 255, &na));
    let r: Vec<Vec<u8>> = out_at(&mut n, t0).into_iter().filter(|f| Icmp6Frame::parse(f).is_none()).collect();
    assert_eq!(r.len(), 1, "the datagram");
    let eth = parse_eth(&r[0]).unwrap();
    assert_eq!(eth.dst, GUEST_MAC);
    let ip = parse_ipv6(eth.payload).unwrap();
    assert_eq!(frame::parse_udp6(&ip).unwrap().payload, b"answer");

    // Another address never answers: three solicitations 1 s apart, then the frame is dropped.
    let silent = Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0x77);
    let f = reply(&n);
    n.deliver6(silent, f, t0);
    for s in 0..3 {
        let r = out_at(&mut n, t0 + Duration::from_secs(s));
        assert_eq!(of_kind(&r, Icmpv6Message::NeighborSolicit).len(), 1, "solicitation {s}");
    }
    assert!(of_kind(&out_at(&mut n, t0 + Duration::from_secs(3)), Icmpv6Message::NeighborSolicit).is_empty());
    assert_eq!(n.stats().dropped_unresolved, 1);
    assert!(n.ndp.pending.is_empty());
}

#[test]
fn echo_to_the_nat_addresses_is_answered() {
    let mut n = nat();
    for (src, dst) in [(GUEST, GW6), (GUEST, DNS6), (GUEST_LL, LINK_LOCAL_GW)] {
        n.send(&ping6(src, dst));
        let replies = of_kind(&out(&mut n), Icmpv6Message::EchoReply);
        assert_eq!(replies.len(), 1, "echo to {dst}");
        let m = &replies[0];
        assert_eq!((m.eth_dst, m.src, m.dst), (GUEST_MAC, dst, src));
        assert!(matches!(m.repr(), Icmpv6Repr::EchoReply { ident: 0x77, seq_no: 3, data: b"abcdefgh" }));
    }
    // Outside, under restrict: refused.
    let s0 = n.stats();
    n.send(&ping6(GUEST, "2001:db8::1".parse().unwrap()));
    // From an address of no guest.
    n.send(&ping6("2001:db8::5".parse().unwrap(), GW6));
    assert!(of_kind(&out(&mut n), Icmpv6Message::EchoReply).is_empty());
    assert_eq!(n.stats().dropped_policy - s0.dropped_policy, 2);
}

#[test]
fn echo_elsewhere_goes_through_an_icmpv6_socket() {
    // The host's ::1 stands in for a host outside (whose host side would be
    // itself): the proxy gets the echo as the filter hands it over, and the
    // answer reaches the guest from the outside address.
    let mut n = nat();
    if let Err(e) = UdpSocket::bind("[::1]:0") {
        println!("skipped: the host has no ::1 ({e})");
        return;
    }
    let t0 = Instant::now();
    let remote: Ipv6Addr = "2001:db8::1".parse().unwrap();
    n.icmp.echo(&n.poller, GUEST.into(), remote.into(), Ipv6Addr::LOCALHOST.into(), 0x99, 1, b"v6", t0);
    if n.icmp.dropped > 0 {
        println!("skipped: this host refuses unprivileged ICMPv6 sockets");
        return;
    }
    n.learn6(GUEST, GUEST_MAC, t0, false);
    let deadline = Instant::now() + T;
    let mut replies = Vec::new();
    while replies.is_empty() && Instant::now() < deadline {
        replies = of_kind(&out(&mut n), Icmpv6Message::EchoReply);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(replies.len(), 1);
    let m = &replies[0];
    assert_eq!((m.eth_dst, m.src, m.dst), (GUEST_MAC, remote, GUEST));
    assert!(matches!(m.repr(), Icmpv6Repr::EchoReply { ident: 0x99, seq_no: 1, data: b"v6" }));
}

#[test]
fn dns_over_ipv6_is_forwarded() {
    let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = resolver.local_addr().unwrap();
    resolver.set_read_timeout(Some(T)).unwrap();
    let srv = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let (len, from) = resolver.recv_from(&mut buf).unwrap();
        // Answer: the question plus one AAAA record 2001:db8::7.
        let mut r = buf[..len].to_vec();
        r[2] |= 0x80;
        r[3] = 0x80;
        r[6..8].copy_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
        r.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        resolver.send_to(&r, from).unwrap();
        len
    });
    let mut n = UserNet::new(UserNetConfig {
        restrict: true,
        dns_upstream: DnsUpstream::Servers(vec![upstream]),
        ..UserNetConfig::default()
    })
    .unwrap();
    let mut q = dns::tests::query(0x6666, "ferrovm.test");
    let qtype = q.len() - 3;
    q[qtype] = 28; // AAAA
    let guest = SocketAddrV6::new(GUEST, 5353, 0, 0);
    n.send(&build_udp6(GUEST_MAC, GW_MAC, guest, SocketAddrV6::new(DNS6, 53, 0, 0), &q));
    let deadline = Instant::now() + T;
    let mut answer = None;
    while answer.is_none() && Instant::now() < deadline {
        for f in out(&mut n) {
            let eth = parse_eth(&f).unwrap();
            let Ok(ip) = parse_ipv6(eth.payload) else { continue };
            if ip.proto != IpProtocol::Udp {
                continue;
            }
            assert_eq!((eth.dst, ip.src, ip.dst), (GUEST_MAC, DNS6, GUEST));
            let udp = frame::parse_udp6(&ip).unwrap();
            assert_eq!((udp.src_port, udp.dst_port), (53, 5353));
            answer = Some(udp.payload.to_vec());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let a = answer.expect("an answer");
    assert_eq!(&a[0..2], &[0x66, 0x66], "the guest's id is back");
    assert_eq!(a[3] & 0xf, 0, "NOERROR");
    assert_eq!(&a[a.len() - 16..], &"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
    assert_eq!(srv.join().unwrap(), q.len());
    assert_eq!(n.stats().dns_queries, 1);

    // Without an upstream: SERVFAIL at once; another port of the DNS address: dropped.
    let mut n = nat();
    n.send(&build_udp6(GUEST_MAC, GW_MAC, guest, SocketAddrV6::new(DNS6, 53, 0, 0), &q));
    let r = out(&mut n);
    let udp: Vec<Vec<u8>> = r
        .iter()
        .filter_map(|f| {
            let ip = parse_ipv6(parse_eth(f).ok()?.payload).ok()?;
            Some(frame::parse_udp6(&ip).ok()?.payload.to_vec())
        })
        .collect();
    assert_eq!(udp.len(), 1);
    assert_eq!(udp[0][3] & 0xf, 2, "SERVFAIL");
    n.send(&build_udp6(GUEST_MAC, GW_MAC, guest, SocketAddrV6::new(DNS6, 54, 0, 0), &q));
    assert!(out(&mut n).iter().all(|f| Icmp6Frame::parse(f).is_some()), "no answer on port 54");
}

/// A TCP SYN from the guest to `dst`.
fn syn6(dst: Ipv6Addr, dport: u16, sport: u16) -> Vec<u8> {
    build_ipv6(GUEST_MAC, GW_MAC, GUEST, dst, IpProtocol::Tcp, 64, 20, |l4| {
        crate::user::tests::fill_syn(l4, sport, dport, GUEST, dst)
    })
}

#[test]
fn restrict_answers_an_ipv6_syn_with_rst() {
    let mut n = nat();
    n.send(&syn6(GW6, 80, 40000));
    let r = out(&mut n);
    let rsts: Vec<_> = r
        .iter()
        .filter_map(|f| {
            let ip = parse_ipv6(parse_eth(f).ok()?.payload).ok()?;
            Some((ip.src, ip.dst, frame::parse_tcp6(&ip).ok()?))
        })
        .collect();
    assert_eq!(rsts.len(), 1);
    let (src, dst, t) = rsts[0];
    assert_eq!((src, dst), (GW6, GUEST));
    assert!(t.rst);
    assert_eq!(t.ack, Some(1001));
    assert_eq!(n.stats().tcp_flows, 0);
    assert_eq!(n.stats().dropped_policy, 1);
}

#[test]
fn a_syn_with_extension_headers_is_answered_by_smoltcp() {
    let l = match TcpListener::bind("[::1]:0") {
        Ok(l) => l,
        Err(e) => {
            println!("skipped: the host has no ::1 ({e})");
            return;
        }
    };
    let port = l.local_addr().unwrap().port();
    let plain = syn6(GW6, port, 41000);
    // The SYN behind a hop-by-hop header (router alert, padding) and a
    // destination options header (padding).
    let mut f = plain[..ETH_HEADER_LEN + IPV6_HEADER_LEN].to_vec();
    f[ETH_HEADER_LEN + 6] = 0;
    f.extend_from_slice(&[60, 0, 5, 2, 0, 0, 1, 0]);
    f.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    f.extend_from_slice(&plain[ETH_HEADER_LEN + IPV6_HEADER_LEN..]);
    f[ETH_HEADER_LEN + 4..ETH_HEADER_LEN + 6].copy_from_slice(&36u16.to_be_bytes());
    let mut n = nat_from("user");
    n.send(&f);
    let deadline = Instant::now() + T;
    let mut synack = None;
    while synack.is_none() && Instant::now() < deadline {
        for g in out(&mut n) {
            assert!(Icmp6Frame::parse(&g).is_none_or(|m| m.kind() != Icmpv6Message::ParamProblem));
            let Ok(eth) = parse_eth(&g) else { continue };
            let Ok(ip) = parse_ipv6(eth.payload) else { continue };
            if let Ok(t) = frame::parse_tcp6(&ip) {
                synack = Some((ip.src, t));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (src, t) = synack.expect("a SYN-ACK");
    assert_eq!(src, GW6);
    assert!(t.syn && !t.rst && t.ack == Some(1001), "{t:?}");
}

// ------------------------------------------------------------ a smoltcp guest

use crate::user::test_wire::Wire;

/// A guest with the address SLAAC gives it in fec0::/64, connected to
/// `[fec0::2]:port`: runs until `done` (on its socket) or the timeout.
fn guest_tcp6(
    n: &mut UserNet,
    port: u16,
    mut done: impl FnMut(&mut tcp::Socket<'static>) -> bool,
) -> Result<(), tcp::State> {
    let epoch = Instant::now();
    let ts = || smoltcp::time::Instant::from_micros(epoch.elapsed().as_micros() as i64);
    let mut wire = Wire::default();
    let mut iface = Interface::new(IfaceConfig::new(HardwareAddress::Ethernet(GUEST_MAC)), &mut wire, ts());
    iface.update_ip_addrs(|a| a.push(IpCidr::new(GUEST.into(), 64)).unwrap());
    let mut sockets = SocketSet::new(Vec::new());
    let s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 8192]), tcp::SocketBuffer::new(vec![0; 8192]));
    let h = sockets.add(s);
    let cx = iface.context();
    sockets.get_mut::<tcp::Socket>(h).connect(cx, IpEndpoint::new(GW6.into(), port), 40123).unwrap();
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        iface.poll(ts(), &mut wire, &mut sockets);
        while let Some(f) = wire.tx.pop_front() {
            n.send(&f);
        }
        for f in out(n) {
            wire.rx.push_back(f);
        }
        iface.poll(ts(), &mut wire, &mut sockets);
        if done(sockets.get_mut::<tcp::Socket>(h)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(sockets.get::<tcp::Socket>(h).state())
}

#[test]
fn tcp_to_the_ipv6_gateway_reaches_the_host_loopback() {
    let l = match TcpListener::bind("[::1]:0") {
        Ok(l) => l,
        Err(e) => {
            println!("skipped: the host has no ::1 ({e})");
            return;
        }
    };
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    let mut n = nat_from("user");
    let mut conn = None;
    let mut got = Vec::new();
    let mut sent = false;
    let r = guest_tcp6(&mut n, port, |s| {
        if conn.is_none() {
            if let Ok((c, peer)) = l.accept() {
                assert!(peer.ip().is_loopback() && peer.is_ipv6(), "{peer}");
                c.set_nonblocking(true).unwrap();
                conn = Some(c);
            }
        }
        if s.may_send() && !sent {
            s.send_slice(b"hello over ipv6").unwrap();
            sent = true;
        }
        if let Some(c) = conn.as_mut() {
            let mut buf = [0u8; 64];
            use std::io::{Read, Write};
            if let Ok(k) = c.read(&mut buf) {
                if k > 0 {
                    assert_eq!(&buf[..k], b"hello over ipv6");
                    c.write_all(b"and back").unwrap();
                }
            }
        }
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        got == b"and back"
    });
    assert_eq!(r, Ok(()), "{:?}", n.stats());
    assert_eq!(n.stats().tcp_flows, 1);
    assert_eq!(n.guest_mac6(GUEST), Some(GUEST_MAC));
}

#[test]
fn tcp_to_the_ipv6_gateway_falls_back_to_127_0_0_1() {
    // Only 127.0.0.1 listens on the port: ::1 refuses, 127.0.0.1 takes it.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    if TcpListener::bind(("::1", port)).is_err() && std::net::TcpStream::connect(("::1", port)).is_ok() {
        println!("skipped: something answers on [::1]:{port}");
        return;
    }
    l.set_nonblocking(true).unwrap();
    let mut n = nat_from("user");
    let mut accepted = None;
    let r = guest_tcp6(&mut n, port, |s| {
        if accepted.is_none() {
            accepted = l.accept().ok().map(|(_, peer)| peer);
        }
        accepted.is_some() && s.state() == tcp::State::Established
    });
    assert_eq!(r, Ok(()), "{:?}", n.stats());
    assert_eq!(accepted.unwrap().ip(), std::net::IpAddr::V4(Ipv4Addr::LOCALHOST));
}

/// A non-loopback, non-link-local IPv6 address of this host, if it has one.
fn host_global_ipv6() -> Option<Ipv6Addr> {
    let probe = UdpSocket::bind("[::]:0").ok()?;
    probe.connect("[2001:db8::1]:9").ok()?;
    match probe.local_addr().ok()?.ip() {
        std::net::IpAddr::V6(a) if frame::is_routable6(a) => Some(a),
        _ => None,
    }
}

#[test]
fn tcp_to_an_outside_ipv6_address_goes_through_a_host_socket() {
    // The host's own global address stands in for a host outside the NAT.
    let Some(addr) = host_global_ipv6() else {
        println!("skipped: the host has no routable IPv6 address");
        return;
    };
    let l = TcpListener::bind((addr, 0)).unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    let mut n = nat_from("user");
    let epoch = Instant::now();
    let ts = || smoltcp::time::Instant::from_micros(epoch.elapsed().as_micros() as i64);
    let mut wire = Wire::default();
    let mut iface = Interface::new(IfaceConfig::new(HardwareAddress::Ethernet(GUEST_MAC)), &mut wire, ts());
    iface.update_ip_addrs(|a| a.push(IpCidr::new(GUEST.into(), 64)).unwrap());
    iface.routes_mut().add_default_ipv6_route(LINK_LOCAL_GW).unwrap();
    let mut sockets = SocketSet::new(Vec::new());
    let h = sockets.add(tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 4096]), tcp::SocketBuffer::new(vec![0; 4096])));
    let cx = iface.context();
    sockets.get_mut::<tcp::Socket>(h).connect(cx, IpEndpoint::new(addr.into(), port), 40999).unwrap();
    let deadline = Instant::now() + T;
    let mut peer = None;
    while Instant::now() < deadline && !(peer.is_some() && sockets.get::<tcp::Socket>(h).may_send()) {
        iface.poll(ts(), &mut wire, &mut sockets);
        while let Some(f) = wire.tx.pop_front() {
            n.send(&f);
        }
        wire.rx.extend(out(&mut n));
        iface.poll(ts(), &mut wire, &mut sockets);
        if peer.is_none() {
            peer = l.accept().ok().map(|(_, p)| p);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(sockets.get::<tcp::Socket>(h).may_send(), "{:?} {:?}", sockets.get::<tcp::Socket>(h).state(), n.stats());
    // The host saw a connection from its own address (the NAT's host socket).
    assert_eq!(peer.map(|p| p.ip()), Some(std::net::IpAddr::V6(addr)));
}

#[test]
fn udp_to_the_ipv6_gateway_reaches_the_host_loopback() {
    let echo = match UdpSocket::bind("[::1]:0") {
        Ok(s) => s,
        Err(e) => {
            println!("skipped: the host has no ::1 ({e})");
            return;
        }
    };
    echo.set_read_timeout(Some(T)).unwrap();
    let port = echo.local_addr().unwrap().port();
    let mut n = nat_from("user");
    let guest = SocketAddrV6::new(GUEST, 6000, 0, 0);
    n.send(&build_udp6(GUEST_MAC, GW_MAC, guest, SocketAddrV6::new(GW6, port, 0, 0), b"ping6"));
    let _ = out(&mut n);
    let mut buf = [0u8; 64];
    let (len, from) = echo.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..len], b"ping6");
    echo.send_to(b"pong6", from).unwrap();
    let deadline = Instant::now() + T;
    let mut got = None;
    while got.is_none() && Instant::now() < deadline {
        for f in out(&mut n) {
            let eth = parse_eth(&f).unwrap();
            let Ok(ip) = parse_ipv6(eth.payload) else { continue };
            if let Ok(u) = frame::parse_udp6(&ip) {
                assert_eq!((eth.dst, ip.src, ip.dst), (GUEST_MAC, GW6, GUEST));
                got = Some((u.src_port, u.dst_port, u.payload.to_vec()));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(got, Some((port, 6000, b"pong6".to_vec())));
    assert_eq!(n.stats().udp_flows, 1);
    // Under restrict the same datagram is refused.
    let mut r = nat();
    r.send(&build_udp6(GUEST_MAC, GW_MAC, guest, SocketAddrV6::new(GW6, port, 0, 0), b"ping6"));
    assert_eq!((r.stats().dropped_policy, r.stats().udp_flows), (1, 0));
}

// ------------------------------------------------------------ hostile frames

#[test]
fn malformed_ipv6_frames_are_counted_and_dropped() {
    let mut n = nat();
    let good = ping6(GUEST, GW6);
    n.send(&good);
    assert_eq!(of_kind(&out(&mut n), Icmpv6Message::EchoReply).len(), 1);
    let s0 = n.stats();
    let answered = |n: &mut UserNet, f: &[u8]| {
        n.send(f);
        out(n).len()
    };

    // Every truncation.
    for len in 0..good.len() {
        assert_eq!(answered(&mut n, &good[..len]), 0, "truncated to {len}");
    }
    let malformed = good.len() as u64;
    // Payload length past the frame, and shorter than the echo header.
    let with_pl = |pl: u16| {
        let mut f = good.clone();
        f[ETH_HEADER_LEN + 4..ETH_HEADER_LEN + 6].copy_from_slice(&pl.to_be_bytes());
        f
    };
    assert_eq!(answered(&mut n, &with_pl(200)), 0);
    assert_eq!(answered(&mut n, &with_pl(4)), 0);
    // Version 4 in the header; a multicast source.
    let mut v4 = good.clone();
    v4[ETH_HEADER_LEN] = 0x46;
    assert_eq!(answered(&mut n, &v4), 0);
    assert_eq!(answered(&mut n, &ping6(ALL_NODES, GW6)), 0);
    let malformed = malformed + 4;
    // Bad checksums: ICMPv6, UDP (wrong and zero), TCP.
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 0xff;
    assert_eq!(answered(&mut n, &bad), 0);
    let q = dns::tests::query(1, "a.example");
    let udp = build_udp6(GUEST_MAC, GW_MAC, SocketAddrV6::new(GUEST, 5, 0, 0), SocketAddrV6::new(DNS6, 53, 0, 0), &q);
    let sum = ETH_HEADER_LEN + IPV6_HEADER_LEN + 6;
    let mut bad = udp.clone();
    bad[sum] ^= 0x55;
    assert_eq!(answered(&mut n, &bad), 0);
    let mut zero = udp.clone();
    zero[sum..sum + 2].copy_from_slice(&[0, 0]);
    assert_eq!(answered(&mut n, &zero), 0);
    let mut bad = syn6(GW6, 80, 4000);
    bad[ETH_HEADER_LEN + IPV6_HEADER_LEN + 16] ^= 0x55;
    assert_eq!(answered(&mut n, &bad), 0);
    // Fragments: a first and a later one.
    let frag = |offset: u16, more: bool| {
        let mut f = good[..ETH_HEADER_LEN + IPV6_HEADER_LEN].to_vec();
        f[ETH_HEADER_LEN + 6] = 44;
        let off = (offset << 3) | u16::from(more);
        f.extend_from_slice(&[58, 0]);
        f.extend_from_slice(&off.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 9]);
        f.extend_from_slice(&good[ETH_HEADER_LEN + IPV6_HEADER_LEN..]);
        let pl = (f.len() - ETH_HEADER_LEN - IPV6_HEADER_LEN) as u16;
        f[ETH_HEADER_LEN + 4..ETH_HEADER_LEN + 6].copy_from_slice(&pl.to_be_bytes());
        f
    };
    assert_eq!(answered(&mut n, &frag(0, true)), 0);
    assert_eq!(answered(&mut n, &frag(1, false)), 0);
    // A unicast destination on a multicast MAC; another ethertype's MAC rules.
    let mut f = good.clone();
    f[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 2]);
    assert_eq!(answered(&mut n, &f), 0);

    let s = n.stats();
    assert_eq!(s.dropped_malformed - s0.dropped_malformed, malformed, "{s:?}");
    assert_eq!(s.dropped_checksum - s0.dropped_checksum, 4, "{s:?}");
    assert_eq!(s.dropped_fragment - s0.dropped_fragment, 2, "{s:?}");
    assert!(s.dropped_not_for_us > s0.dropped_not_for_us, "{s:?}");
    assert_eq!(s.tcp_resets, s0.tcp_resets);

    // Hop-by-hop options (router alert, padding) are passed; one to be understood drops the frame.
    let with_hbh = |opts: [u8; 6]| {
        let mut f = good[..ETH_HEADER_LEN + IPV6_HEADER_LEN].to_vec();
        f[ETH_HEADER_LEN + 6] = 0;
        f.extend_from_slice(&[58, 0]);
        f.extend_from_slice(&opts);
        f.extend_from_slice(&good[ETH_HEADER_LEN + IPV6_HEADER_LEN..]);
        let pl = (f.len() - ETH_HEADER_LEN - IPV6_HEADER_LEN) as u16;
        f[ETH_HEADER_LEN + 4..ETH_HEADER_LEN + 6].copy_from_slice(&pl.to_be_bytes());
        f
    };
    n.send(&with_hbh([5, 2, 0, 0, 1, 0]));
    assert_eq!(of_kind(&out(&mut n), Icmpv6Message::EchoReply).len(), 1, "hop-by-hop skipped");
    let before = n.stats().dropped_not_for_us;
    assert_eq!(answered(&mut n, &with_hbh([0xc2, 4, 0, 0, 0, 0])), 0, "jumbo payload option");
    assert_eq!(n.stats().dropped_not_for_us - before, 1);
    // And the NAT still answers.
    n.send(&good);
    assert_eq!(of_kind(&out(&mut n), Icmpv6Message::EchoReply).len(), 1);
}

#[test]
fn ipv6_off_ignores_ipv6_and_ipv4_off_ignores_ipv4() {
    let mut n = UserNet::new(UserNetConfig {
        restrict: true,
        dns_upstream: DnsUpstream::Disabled,
        ipv6: false,
        ..UserNetConfig::default()
    })
    .unwrap();
    let t0 = Instant::now();
    for f in [rs(GUEST_LL, Some(GUEST_MAC), 255), ns(GUEST, frame::solicited_node(GW6), GW6, None), ping6(GUEST, GW6)] {
        n.send(&f);
    }
    assert!(out_at(&mut n, t0).is_empty());
    assert!(out_at(&mut n, t0 + Duration::from_secs(700)).is_empty(), "no advertisement, ever");
    let s = n.stats();
    assert_eq!((s.dropped_not_for_us, s.router_adverts), (3, 0));
    assert!(n.guest_macs6.is_empty());

    let mut n = nat_from("user,ipv4=off,restrict=on");
    let ping4 = frame::build_icmp_echo(
        GUEST_MAC,
        GW_MAC,
        Ipv4Addr::new(10, 0, 2, 15),
        Ipv4Addr::new(10, 0, 2, 2),
        false,
        1,
        1,
        b"x",
    );
    n.send(&ping4);
    assert!(out(&mut n).is_empty());
    assert_eq!(n.stats().dropped_not_for_us, 1);
    n.send(&ping6(GUEST, GW6));
    assert_eq!(of_kind(&out(&mut n), Icmpv6Message::EchoReply).len(), 1);
}

#[test]
fn guest_ipv6_addresses_are_saved_and_restored() {
    use persist::Persist;
    let mut n = nat();
    n.send(&ns(GUEST, frame::solicited_node(GW6), GW6, Some(GUEST_MAC)));
    n.send(&ns(GUEST_LL, frame::solicited_node(LINK_LOCAL_GW), LINK_LOCAL_GW, Some(GUEST_MAC)));
    let _ = out(&mut n);
    let s = n.save();
    assert_eq!(s.guest_macs6, vec![(GUEST_LL, crate::MacAddr(GUEST_MAC.0)), (GUEST, crate::MacAddr(GUEST_MAC.0))]);
    let mut m = nat();
    m.restore(&s).unwrap();
    assert_eq!(m.guest_mac6(GUEST), Some(GUEST_MAC));
    assert_eq!(m.save(), s);
    // Addresses not of a guest, broadcast MACs and repeats are refused.
    for bad in [
        vec![(GW6, crate::MacAddr(GUEST_MAC.0))],
        vec![("2001:db8::1".parse().unwrap(), crate::MacAddr(GUEST_MAC.0))],
        vec![(GUEST, crate::MacAddr([0xff; 6]))],
        vec![(GUEST, crate::MacAddr(GUEST_MAC.0)); 2],
    ] {
        let mut t = s.clone();
        t.guest_macs6 = bad;
        let e = m.restore(&t).unwrap_err();
        assert_eq!(e.field, "guest_macs6");
    }
}
