//! The user-mode NAT driven as a guest would drive it: a smoltcp guest stack
//! (or hand-made frames) on one side, test servers on 127.0.0.1 on the other.
//! All host traffic stays on the loopback; every loop is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use net::{DnsUpstream, HostFwd, Limits, NetBackend, Proto, UserNet, UserNetConfig};
use smoltcp::socket::{dhcpv4, tcp, udp};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpEndpoint,
    Ipv4Packet, TcpPacket, TcpSeqNumber, UdpPacket,
};

const T: Duration = Duration::from_secs(30);

fn config() -> UserNetConfig {
    UserNetConfig { dns_upstream: DnsUpstream::Disabled, ..UserNetConfig::default() }
}

fn hostfwd(proto: Proto, guest_port: u16) -> HostFwd {
    HostFwd { proto, host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), guest_addr: None, guest_port }
}

// ---------------------------------------------------------------- frames

fn eth(dst: EthernetAddress, src: EthernetAddress, ty: EthernetProtocol, payload_len: usize) -> Vec<u8> {
    let mut f = vec![0u8; 14 + payload_len];
    EthernetRepr { src_addr: src, dst_addr: dst, ethertype: ty }.emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    f
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut f = eth(EthernetAddress::BROADCAST, GUEST_MAC, EthernetProtocol::Arp, repr.buffer_len());
    repr.emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
    f
}

/// An IPv4 frame around a layer-4 payload built by `fill` (checksums by the caller).
fn ip_frame(
    src_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dst_mac: EthernetAddress,
    proto: u8,
    l4: Vec<u8>,
) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, EthernetProtocol::Ipv4, 20 + l4.len());
    {
        let mut p = Ipv4Packet::new_unchecked(&mut f[14..]);
        p.set_version(4);
        p.set_header_len(20);
        p.set_total_len((20 + l4.len()) as u16);
        p.set_hop_limit(64);
        p.set_next_header(proto.into());
        p.set_src_addr(src);
        p.set_dst_addr(dst);
        p.set_dont_frag(true);
        p.payload_mut().copy_from_slice(&l4);
        p.fill_checksum();
    }
    f
}

fn udp_frame(src: SocketAddrV4, dst: SocketAddrV4, dst_mac: EthernetAddress, payload: &[u8]) -> Vec<u8> {
    let mut l4 = vec![0u8; 8 + payload.len()];
    {
        let mut u = UdpPacket::new_unchecked(&mut l4[..]);
        u.set_src_port(src.port());
        u.set_dst_port(dst.port());
        u.set_len((8 + payload.len()) as u16);
        u.payload_mut().copy_from_slice(payload);
        u.fill_checksum(&(*src.ip()).into(), &(*dst.ip()).into());
    }
    ip_frame(GUEST_MAC, *src.ip(), *dst.ip(), dst_mac, 17, l4)
}

fn syn_frame(src_mac: EthernetAddress, src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut l4 = vec![0u8; 20];
    {
        let mut t = TcpPacket::new_unchecked(&mut l4[..]);
        t.set_src_port(src.port());
        t.set_dst_port(dst.port());
        t.set_seq_number(TcpSeqNumber(0x1000));
        t.set_header_len(20);
        t.clear_flags();
        t.set_syn(true);
        t.set_window_len(64240);
        t.fill_checksum(&(*src.ip()).into(), &(*dst.ip()).into());
    }
    ip_frame(src_mac, *src.ip(), *dst.ip(), GATEWAY_MAC, 6, l4)
}

fn collect(nat: &mut dyn NetBackend) -> Vec<Vec<u8>> {
    nat.poll(Instant::now());
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(n) = nat.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

// ---------------------------------------------------------------- DHCP

const DHCP_MAGIC: [u8; 4] = [99, 130, 83, 99];

fn dhcp_msg(kind: u8, xid: u32, extra: &[(u8, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[10] = 0x80; // broadcast reply, as udhcpc asks
    b[28..34].copy_from_slice(&GUEST_MAC.0);
    b[236..240].copy_from_slice(&DHCP_MAGIC);
    b.extend_from_slice(&[53, 1, kind]);
    for (code, data) in extra {
        b.push(*code);
        b.push(data.len() as u8);
        b.extend_from_slice(data);
    }
    b.push(255);
    b
}

fn dhcp_frame(msg: &[u8]) -> Vec<u8> {
    udp_frame(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        EthernetAddress::BROADCAST,
        msg,
    )
}

fn dhcp_options(msg: &[u8]) -> Vec<(u8, Vec<u8>)> {
    assert_eq!(&msg[236..240], &DHCP_MAGIC);
    let mut out = Vec::new();
    let mut i = 240;
    while i < msg.len() && msg[i] != 255 {
        if msg[i] == 0 {
            i += 1;
            continue;
        }
        let len = msg[i + 1] as usize;
        out.push((msg[i], msg[i + 2..i + 2 + len].to_vec()));
        i += 2 + len;
    }
    out
}

/// The one DHCP reply among `frames`: (ip src, ip dst, BOOTP message).
fn dhcp_reply(frames: &[Vec<u8>]) -> (Ipv4Addr, Ipv4Addr, Vec<u8>) {
    assert_eq!(frames.len(), 1, "one reply");
    let e = EthernetFrame::new_checked(&frames[0][..]).unwrap();
    let ip = Ipv4Packet::new_checked(e.payload()).unwrap();
    assert!(ip.verify_checksum());
    let u = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(u.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    assert_eq!((u.src_port(), u.dst_port()), (67, 68));
    (ip.src_addr(), ip.dst_addr(), u.payload().to_vec())
}

#[test]
fn dhcp_handshake_gives_dhcpstart_with_options() {
    let mut nat = UserNet::new(UserNetConfig { hostname: Some("ferroguest".into()), ..config() }).unwrap();
    nat.send(&dhcp_frame(&dhcp_msg(1, 0x11, &[])));
    let (src, dst, offer) = dhcp_reply(&collect(&mut nat));
    assert_eq!((src, dst), (GATEWAY, Ipv4Addr::BROADCAST));
    assert_eq!(&offer[16..20], &[10, 0, 2, 15], "yiaddr");
    assert!(dhcp_options(&offer).contains(&(53, vec![2])), "OFFER");

    nat.send(&dhcp_frame(&dhcp_msg(3, 0x12, &[(50, &[10, 0, 2, 15]), (54, &[10, 0, 2, 2])])));
    let (_, _, ack) = dhcp_reply(&collect(&mut nat));
    assert_eq!(&ack[4..8], &0x12u32.to_be_bytes());
    assert_eq!(&ack[16..20], &[10, 0, 2, 15]);
    let opts = dhcp_options(&ack);
    for want in [
        (53u8, vec![5u8]),
        (1, vec![255, 255, 255, 0]),
        (3, vec![10, 0, 2, 2]),
        (6, vec![10, 0, 2, 3]),
        (54, vec![10, 0, 2, 2]),
        (26, 1500u16.to_be_bytes().to_vec()),
        (12, b"ferroguest".to_vec()),
        (51, 86400u32.to_be_bytes().to_vec()),
    ] {
        assert!(opts.contains(&want), "option {want:?} missing from {opts:?}");
    }
    // Asking for another address is refused.
    nat.send(&dhcp_frame(&dhcp_msg(3, 0x13, &[(50, &[10, 0, 2, 77])])));
    let (_, _, nak) = dhcp_reply(&collect(&mut nat));
    assert!(dhcp_options(&nak).contains(&(53, vec![6])), "NAK");
}

#[test]
fn smoltcp_dhcp_client_is_configured() {
    let mut nat = UserNet::new(config()).unwrap();
    let mut g = Guest::unconfigured();
    let h = g.sockets.add(dhcpv4::Socket::new());
    let mut got = None;
    let ok = g.run(&mut nat, T, |g| {
        if let Some(dhcpv4::Event::Configured(c)) = g.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
            got = Some((c.address, c.router, c.dns_servers.to_vec()));
        }
        got.is_some()
    });
    assert!(ok, "DHCP did not finish");
    let (addr, router, dns) = got.unwrap();
    assert_eq!(addr.to_string(), "10.0.2.15/24");
    assert_eq!(router, Some(GATEWAY));
    assert_eq!(dns, vec![DNS]);
}

// ---------------------------------------------------------------- ARP

#[test]
fn arp_answered_for_gateway_not_for_others() {
    let mut nat = UserNet::new(config()).unwrap();
    nat.send(&arp_request(GATEWAY));
    let r = collect(&mut nat);
    assert_eq!(r.len(), 1);
    let e = EthernetFrame::new_checked(&r[0][..]).unwrap();
    let a = ArpRepr::parse(&ArpPacket::new_checked(e.payload()).unwrap()).unwrap();
    let ArpRepr::EthernetIpv4 { operation, source_hardware_addr, source_protocol_addr, target_protocol_addr, .. } = a
    else {
        panic!()
    };
    assert_eq!(operation, ArpOperation::Reply);
    assert_eq!(source_protocol_addr, GATEWAY);
    assert_eq!(source_hardware_addr, GATEWAY_MAC);
    assert_eq!(target_protocol_addr, GUEST_IP);

    nat.send(&arp_request(Ipv4Addr::new(10, 0, 2, 99)));
    assert!(collect(&mut nat).is_empty(), "ARP for 10.0.2.99 must not be answered");
}

// ---------------------------------------------------------------- TCP out

#[test]
fn tcp_to_host_loopback_1mib_both_ways() {
    const N: usize = 1 << 20;
    let up = pattern(N, 1);
    let down = pattern(N, 2);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let down_srv = down.clone();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let eof = Instant::now();
        s.write_all(&down_srv).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        (sha(&got), got.len(), eof)
    });

    let mut nat = UserNet::new(config()).unwrap();
    let mut g = Guest::new();
    let h = g.connect(SocketAddrV4::new(GATEWAY, port), 256 * 1024);
    let mut sent = 0;
    let mut recvd = Vec::with_capacity(N);
    let mut t0 = None;
    let mut closed = false;
    let ok = g.run(&mut nat, T, |g| {
        let s = g.tcp(h);
        if s.may_send() && t0.is_none() {
            t0 = Some(Instant::now());
        }
        sent = feed(s, &up, sent);
        if sent == N && !closed {
            s.close();
            closed = true;
        }
        drain(s, &mut recvd);
        recvd.len() == N && !s.may_recv()
    });
    let t_end = Instant::now();
    assert!(ok, "transfer did not finish: sent {sent}, received {}", recvd.len());
    let (up_hash, up_len, eof) = server.join().unwrap();
    assert_eq!(up_len, N);
    assert_eq!(up_hash, sha(&up), "guest -> host data");
    assert_eq!(sha(&recvd), sha(&down), "host -> guest data");
    let t0 = t0.unwrap();
    println!(
        "1 MiB guest->host: {:.1} MiB/s, host->guest: {:.1} MiB/s",
        mib_per_s(N, eof - t0),
        mib_per_s(N, t_end - eof)
    );
    // The flow is gone once both sides closed.
    for _ in 0..500 {
        if nat.stats().tcp_flows == 0 {
            break;
        }
        g.run(&mut nat, Duration::from_millis(10), |_| false);
    }
    assert_eq!(nat.stats().tcp_flows, 0, "{:?}", nat.stats());
}

#[test]
fn closed_port_gets_rst_within_100ms() {
    let port = closed_port();
    let mut nat = UserNet::new(config()).unwrap();
    let mut g = Guest::new();
    // Resolve the gateway first, so the time below is the NAT's alone.
    nat.send(&arp_request(GATEWAY));
    let warm = g.connect(SocketAddrV4::new(GATEWAY, closed_port()), 4096);
    assert!(g.run(&mut nat, T, |g| g.tcp(warm).state() == tcp::State::Closed));

    let t0 = Instant::now();
    let h = g.connect(SocketAddrV4::new(GATEWAY, port), 4096);
    let ok = g.run(&mut nat, Duration::from_secs(5), |g| g.tcp(h).state() == tcp::State::Closed);
    let took = t0.elapsed();
    assert!(ok, "no RST");
    println!("RST for a closed port after {took:?}");
    assert!(took < Duration::from_millis(100), "RST took {took:?}");
    assert!(nat.stats().tcp_resets >= 2);
    assert_eq!(nat.stats().tcp_flows, 0);
}

#[test]
fn host_reset_and_guest_reset_pass_through() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    let server = thread::spawn(move || {
        // First connection: the host resets it.
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &libc_linger()).unwrap();
        drop(s);
        // Second connection: the guest resets it; the host sees the reset.
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0u8; 16];
        let r = loop {
            match s.read(&mut buf) {
                Ok(0) => break "eof",
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
                Err(_) => break "error",
            }
        };
        tx.send(r).unwrap();
    });
    let mut nat = UserNet::new(config()).unwrap();
    let mut g = Guest::new();
    let a = g.connect(SocketAddrV4::new(GATEWAY, port), 4096);
    assert!(
        g.run(&mut nat, T, |g| {
            let s = g.tcp(a);
            // Reading keeps the window open so the reset is noticed.
            let mut v = Vec::new();
            drain(s, &mut v);
            s.state() == tcp::State::Closed
        }),
        "host reset did not reach the guest"
    );
    let b = g.connect(SocketAddrV4::new(GATEWAY, port), 4096);
    assert!(g.run(&mut nat, T, |g| g.tcp(b).state() == tcp::State::Established));
    g.tcp(b).send_slice(b"x").unwrap();
    g.run(&mut nat, Duration::from_millis(50), |_| false);
    g.tcp(b).abort();
    let mut verdict = None;
    assert!(g.run(&mut nat, T, |_| {
        verdict = rx.try_recv().ok();
        verdict.is_some()
    }));
    assert_eq!(verdict, Some("reset"));
    server.join().unwrap();
}

fn libc_linger() -> libc::linger {
    libc::linger { l_onoff: 1, l_linger: 0 }
}

#[test]
fn sixty_four_concurrent_connections_complete() {
    const CONNS: usize = 64;
    const EACH: usize = 32 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..CONNS {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            workers.push(thread::spawn(move || {
                // Echo until EOF.
                let mut buf = [0u8; 8192];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => s.write_all(&buf[..n]).unwrap(),
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
    });
    let mut nat = UserNet::new(config()).unwrap();
    let mut g = Guest::new();
    let data: Vec<Vec<u8>> = (0..CONNS).map(|i| pattern(EACH, i as u64 + 10)).collect();
    let hs: Vec<_> = (0..CONNS).map(|_| g.connect(SocketAddrV4::new(GATEWAY, port), 64 * 1024)).collect();
    let mut sent = [0usize; CONNS];
    let mut closed = [false; CONNS];
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); CONNS];
    let t0 = Instant::now();
    let ok = g.run(&mut nat, T, |g| {
        let mut done = 0;
        for i in 0..CONNS {
            let s = g.tcp(hs[i]);
            sent[i] = feed(s, &data[i], sent[i]);
            if sent[i] == EACH && !closed[i] {
                s.close();
                closed[i] = true;
            }
            drain(s, &mut got[i]);
            if got[i].len() == EACH && !s.may_recv() {
                done += 1;
            }
        }
        done == CONNS
    });
    assert!(ok, "only {} of {CONNS} finished", got.iter().filter(|v| v.len() == EACH).count());
    for i in 0..CONNS {
        assert_eq!(sha(&got[i]), sha(&data[i]), "connection {i}");
    }
    println!("{CONNS} connections x {} KiB echoed in {:?}", EACH / 1024, t0.elapsed());
    server.join().unwrap();
}

// ---------------------------------------------------------------- bounds

/// A TCP echo server on 127.0.0.1 for `conns` connections; the thread ends
/// when they all have.
fn echo_server(conns: usize) -> (u16, thread::JoinHandle<()>) {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    let srv = thread::spawn(move || {
        let mut ts = Vec::new();
        for _ in 0..conns {
            let (mut s, _) = echo.accept().unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            ts.push(thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }));
        }
        for t in ts {
            t.join().unwrap();
        }
    });
    (port, srv)
}

#[test]
fn syn_flood_is_held_to_the_flow_bound() {
    const MAX: usize = 32;
    // An echo server for the connection that must survive the flood.
    let (echo_port, echo_srv) = echo_server(2);
    // The flood target: listens, never accepts.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_port = target.local_addr().unwrap().port();

    let mut nat =
        UserNet::new(UserNetConfig { limits: Limits { max_flows: MAX, ..Limits::default() }, ..config() }).unwrap();
    let mut g = Guest::new();
    let a = g.connect(SocketAddrV4::new(GATEWAY, echo_port), 8192);
    let mut got = Vec::new();
    let (mut sent_before, mut sent_after, mut sent_new) = (false, false, false);
    assert!(g.run(&mut nat, T, |g| {
        let s = g.tcp(a);
        if s.can_send() && !sent_before {
            s.send_slice(b"before").unwrap();
            sent_before = true;
        }
        drain(s, &mut got);
        got == b"before"
    }));

    // 3000 SYNs from another (spoofed) guest address, never answered.
    let flooder = EthernetAddress([0x02, 0, 0, 0, 0, 0x16]);
    let src_ip = Ipv4Addr::new(10, 0, 2, 16);
    let mut peak = 0;
    for batch in 0..30u16 {
        for i in 0..100u16 {
            let sport = 10000 + batch * 100 + i;
            nat.send(&syn_frame(flooder, SocketAddrV4::new(src_ip, sport), SocketAddrV4::new(GATEWAY, target_port)));
        }
        g.step(&mut nat);
        peak = peak.max(nat.stats().tcp_flows);
    }
    let s = nat.stats();
    println!("SYN flood: peak {peak} flows (bound {MAX}), {} evicted, {} reset", s.flows_evicted, s.tcp_resets);
    assert!(peak <= MAX, "peak {peak} flows over the bound {MAX}");
    assert!(s.flows_evicted > 0);

    // The established flow still works, and a new one gets in.
    got.clear();
    assert!(
        g.run(&mut nat, Duration::from_secs(3), |g| {
            let s = g.tcp(a);
            if s.can_send() && !sent_after {
                s.send_slice(b"after").unwrap();
                sent_after = true;
            }
            drain(s, &mut got);
            got == b"after"
        }),
        "a: {:?} {:?} {:?}",
        g.tcp(a).state(),
        got,
        nat.stats()
    );
    let b = g.connect(SocketAddrV4::new(GATEWAY, echo_port), 8192);
    let mut got_b = Vec::new();
    assert!(g.run(&mut nat, T, |g| {
        let s = g.tcp(b);
        if s.can_send() && !sent_new {
            s.send_slice(b"new").unwrap();
            sent_new = true;
        }
        drain(s, &mut got_b);
        got_b == b"new"
    }));
    assert!(nat.stats().tcp_flows <= MAX);
    g.tcp(a).close();
    g.tcp(b).close();
    g.run(&mut nat, Duration::from_secs(2), |_| false);
    drop(target);
    echo_srv.join().unwrap();
}

#[test]
fn udp_to_many_ports_is_held_to_the_flow_bound() {
    const MAX: usize = 16;
    // A loopback UDP echo server that must keep working.
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    echo.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let srv = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for _ in 0..600 {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        }
    });
    let mut nat =
        UserNet::new(UserNetConfig { limits: Limits { max_flows: MAX, ..Limits::default() }, ..config() }).unwrap();
    let mut g = Guest::new();
    // 1000 datagrams to 1000 closed loopback ports.
    let mut peak = 0;
    for i in 0..1000u16 {
        let port = 20000 + i;
        if port == echo_port {
            continue;
        }
        nat.send(&udp_frame(SocketAddrV4::new(GUEST_IP, 3333), SocketAddrV4::new(GATEWAY, port), GATEWAY_MAC, b"x"));
        if i % 50 == 0 {
            g.step(&mut nat);
        }
        peak = peak.max(nat.stats().udp_flows);
    }
    assert!(peak <= MAX, "peak {peak}");
    // A UDP exchange through the NAT still works.
    let h = g.sockets.add(udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
    ));
    g.sockets.get_mut::<udp::Socket>(h).bind(4444).unwrap();
    let mut reply = None;
    let mut sent_at = None;
    assert!(g.run(&mut nat, T, |g| {
        let s = g.sockets.get_mut::<udp::Socket>(h);
        if sent_at.is_none_or(|t: Instant| t.elapsed() > Duration::from_millis(200)) {
            s.send_slice(b"ping", IpEndpoint::new(GATEWAY.into(), echo_port)).unwrap();
            sent_at = Some(Instant::now());
        }
        if let Ok((data, _)) = s.recv() {
            reply = Some(data.to_vec());
        }
        reply.is_some()
    }));
    assert_eq!(reply.unwrap(), b"ping");
    assert!(nat.stats().udp_flows <= MAX);
    assert!(nat.stats().flows_evicted > 0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    srv.join().unwrap();
}

/// A guest that floods everything at once (SYNs to many ports, UDP to many
/// ports, DNS queries to a resolver that never answers, while not reading
/// what comes back) is held to every bound: flows, pending DNS queries and
/// the queue of frames for the guest. An established connection keeps
/// being served throughout, and a new one gets in afterwards.
#[test]
fn mixed_flood_is_held_to_every_bound_while_a_flow_is_served() {
    const MAX_FLOWS: usize = 24;
    const DNS_PENDING: usize = 8;
    const GUEST_QUEUE: usize = 64;
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (echo_port, echo_srv) = echo_server(2);
    // The SYN flood's target: listens, never accepts.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_port = target.local_addr().unwrap().port();
    let mut nat = UserNet::new(UserNetConfig {
        dns_upstream: DnsUpstream::Servers(vec![silent.local_addr().unwrap()]),
        limits: Limits {
            max_flows: MAX_FLOWS,
            dns_pending: DNS_PENDING,
            guest_queue: GUEST_QUEUE,
            ..Limits::default()
        },
        ..config()
    })
    .unwrap();
    let mut g = Guest::new();
    let a = g.connect(SocketAddrV4::new(GATEWAY, echo_port), 8192);
    let echo_round = |g: &mut Guest, nat: &mut UserNet, h, msg: &[u8]| {
        let mut got = Vec::new();
        let mut sent = false;
        g.run(nat, Duration::from_secs(5), |g| {
            let s = g.tcp(h);
            if s.can_send() && !sent {
                s.send_slice(msg).unwrap();
                sent = true;
            }
            drain(s, &mut got);
            got == msg
        })
    };
    assert!(echo_round(&mut g, &mut nat, a, b"before"));

    let flooder = EthernetAddress([0x02, 0, 0, 0, 0, 0x16]);
    let flooder_ip = Ipv4Addr::new(10, 0, 2, 16);
    let mut buf = [0u8; 2048];
    let (mut peak_flows, mut peak_queue, mut served) = (0, 0, 0);
    for round in 0..10u16 {
        for i in 0..100u16 {
            let port = 10000 + round * 100 + i;
            nat.send(&syn_frame(flooder, SocketAddrV4::new(flooder_ip, port), SocketAddrV4::new(GATEWAY, target_port)));
            let to = SocketAddrV4::new(GATEWAY, 20000 + round * 100 + i);
            nat.send(&udp_frame(SocketAddrV4::new(GUEST_IP, 3333), to, GATEWAY_MAC, b"x"));
            let q = dns_query(round * 100 + i, "flood.test");
            nat.send(&udp_frame(SocketAddrV4::new(GUEST_IP, 5353), SocketAddrV4::new(DNS, 53), GATEWAY_MAC, &q));
            let s = nat.stats();
            peak_flows = peak_flows.max(s.tcp_flows + s.udp_flows);
        }
        // The guest is slow: one poll, then it takes what is queued.
        nat.poll(Instant::now());
        let mut queued = 0;
        while nat.recv(&mut buf).is_some() {
            queued += 1;
        }
        peak_queue = peak_queue.max(queued);
        if round % 5 == 4 {
            let msg = format!("during {round}");
            assert!(
                echo_round(&mut g, &mut nat, a, msg.as_bytes()),
                "the echo stalled in round {round}: {:?}",
                nat.stats()
            );
            served += 1;
        }
    }
    let s = nat.stats();
    println!("mixed flood: peak {peak_flows} flows (bound {MAX_FLOWS}), peak {peak_queue} frames queued (bound {GUEST_QUEUE}), {s:?}");
    assert!(peak_flows <= MAX_FLOWS, "peak {peak_flows} flows");
    assert!(peak_queue <= GUEST_QUEUE, "peak {peak_queue} queued frames");
    assert!(s.dropped_guest_queue > 0, "the guest queue filled: {s:?}");
    assert!(s.flows_evicted > 0, "{s:?}");
    assert_eq!(s.dns_queries, 1000);
    // At most DNS_PENDING queries wait upstream: the rest are SERVFAIL at once.
    assert!(s.dns_servfail >= 1000 - DNS_PENDING as u64, "{s:?}");
    assert_eq!(served, 2);
    // A new connection gets in after the flood.
    let b = g.connect(SocketAddrV4::new(GATEWAY, echo_port), 8192);
    assert!(echo_round(&mut g, &mut nat, b, b"new"), "{:?}", nat.stats());
    assert!(nat.stats().tcp_flows + nat.stats().udp_flows <= MAX_FLOWS);
    g.tcp(a).close();
    g.tcp(b).close();
    g.run(&mut nat, Duration::from_secs(2), |_| false);
    drop(target);
    echo_srv.join().unwrap();
}

// ---------------------------------------------------------------- DNS

#[test]
fn dns_is_forwarded_to_the_configured_upstream() {
    let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = resolver.local_addr().unwrap();
    resolver.set_read_timeout(Some(T)).unwrap();
    let srv = thread::spawn(move || {
        let mut buf = [0u8; 512];
        let (n, from) = resolver.recv_from(&mut buf).unwrap();
        // Answer: the question plus one A record 192.0.2.7.
        let mut r = buf[..n].to_vec();
        r[2] |= 0x80;
        r[3] = 0x80;
        r[6..8].copy_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]);
        resolver.send_to(&r, from).unwrap();
        n
    });
    let mut nat =
        UserNet::new(UserNetConfig { dns_upstream: DnsUpstream::Servers(vec![upstream]), ..config() }).unwrap();
    let mut g = Guest::new();
    let h = g.sockets.add(udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 2048]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 2048]),
    ));
    g.sockets.get_mut::<udp::Socket>(h).bind(5353).unwrap();
    let query = dns_query(0x4242, "ferrovm.test");
    g.sockets.get_mut::<udp::Socket>(h).send_slice(&query, IpEndpoint::new(DNS.into(), 53)).unwrap();
    let mut answer = None;
    assert!(g.run(&mut nat, T, |g| {
        if let Ok((data, meta)) = g.sockets.get_mut::<udp::Socket>(h).recv() {
            assert_eq!(meta.endpoint, IpEndpoint::new(DNS.into(), 53));
            answer = Some(data.to_vec());
        }
        answer.is_some()
    }));
    let a = answer.unwrap();
    assert_eq!(&a[0..2], &[0x42, 0x42], "the guest's id is back");
    assert_eq!(a[3] & 0xf, 0, "NOERROR");
    assert_eq!(&a[a.len() - 4..], &[192, 0, 2, 7]);
    assert_eq!(srv.join().unwrap(), query.len());
}

#[test]
fn dns_without_upstream_is_servfail() {
    let mut nat = UserNet::new(config()).unwrap();
    let mut g = Guest::new();
    let h = g.sockets.add(udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 2048]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 2048]),
    ));
    g.sockets.get_mut::<udp::Socket>(h).bind(5353).unwrap();
    g.sockets
        .get_mut::<udp::Socket>(h)
        .send_slice(&dns_query(7, "nowhere.test"), IpEndpoint::new(DNS.into(), 53))
        .unwrap();
    let mut answer = None;
    let t0 = Instant::now();
    assert!(g.run(&mut nat, T, |g| {
        if let Ok((data, _)) = g.sockets.get_mut::<udp::Socket>(h).recv() {
            answer = Some(data.to_vec());
        }
        answer.is_some()
    }));
    let a = answer.unwrap();
    assert_eq!(a[3] & 0xf, 2, "SERVFAIL");
    assert!(t0.elapsed() < Duration::from_secs(1));
}

fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

// ---------------------------------------------------------------- UDP out

#[test]
fn udp_to_host_loopback() {
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    echo.set_read_timeout(Some(T)).unwrap();
    let srv = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (n, from) = echo.recv_from(&mut buf).unwrap();
        echo.send_to(&buf[..n], from).unwrap();
    });
    let mut nat = UserNet::new(config()).unwrap();
    let mut g = Guest::new();
    let h = g.sockets.add(udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
    ));
    g.sockets.get_mut::<udp::Socket>(h).bind(6000).unwrap();
    g.sockets.get_mut::<udp::Socket>(h).send_slice(&[0xab; 1400], IpEndpoint::new(GATEWAY.into(), port)).unwrap();
    let mut got = None;
    assert!(g.run(&mut nat, T, |g| {
        if let Ok((d, meta)) = g.sockets.get_mut::<udp::Socket>(h).recv() {
            got = Some((d.to_vec(), meta.endpoint));
        }
        got.is_some()
    }));
    let (d, from) = got.unwrap();
    assert_eq!(d, vec![0xab; 1400]);
    assert_eq!(from, IpEndpoint::new(GATEWAY.into(), port));
    srv.join().unwrap();
}

// ---------------------------------------------------------------- hostfwd

/// A guest server on `port`: reads until FIN, then sends `reply` and closes.
/// Returns (received bytes, time of first byte, time the last byte arrived).
fn guest_serve(
    g: &mut Guest,
    nat: &mut dyn NetBackend,
    port: u16,
    expect: usize,
    reply: &[u8],
    buf: usize,
) -> (Vec<u8>, Instant, Instant) {
    let h = g.tcp_socket(buf);
    g.tcp(h).listen(port).unwrap();
    let mut got = Vec::with_capacity(expect);
    let mut first = None;
    let mut rx_done = None;
    let mut sent = 0;
    let mut closed = false;
    let ok = g.run(nat, T, |g| {
        let s = g.tcp(h);
        drain(s, &mut got);
        if first.is_none() && !got.is_empty() {
            first = Some(Instant::now());
        }
        if rx_done.is_none() && got.len() == expect && !s.may_recv() {
            rx_done = Some(Instant::now());
        }
        if rx_done.is_some() {
            sent = feed(s, reply, sent);
            if sent == reply.len() && !closed {
                s.close();
                closed = true;
            }
        }
        closed && matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
    });
    assert!(ok, "guest server stuck: received {} of {expect}, sent {sent}", got.len());
    (got, first.unwrap(), rx_done.unwrap())
}

#[test]
fn hostfwd_tcp_8mib_both_ways() {
    const N: usize = 8 << 20;
    let up = pattern(N, 3);
    let down = pattern(N, 4);
    let mut nat = UserNet::new(UserNetConfig { hostfwd: vec![hostfwd(Proto::Tcp, 8080)], ..config() }).unwrap();
    let (_, addr) = nat.hostfwd_addrs()[0];
    let up_cli = up.clone();
    let client = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(&up_cli).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let mut first = None;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            got.extend_from_slice(&buf[..n]);
        }
        (got, first.unwrap(), Instant::now())
    });
    let mut g = Guest::new();
    let (got, first, rx_done) = guest_serve(&mut g, &mut nat, 8080, N, &down, 256 * 1024);
    let (back, host_first, host_done) = client.join().unwrap();
    assert!(host_first >= rx_done);
    assert_eq!(sha(&got), sha(&up), "host -> guest data");
    assert_eq!(sha(&back), sha(&down), "guest -> host data");
    println!(
        "hostfwd 8 MiB host->guest: {:.1} MiB/s, guest->host: {:.1} MiB/s",
        mib_per_s(N, rx_done - first),
        mib_per_s(N, host_done - rx_done)
    );
    assert_eq!(nat.stats().hostfwd_accepted, 1);
}

#[test]
fn hostfwd_udp() {
    let mut nat = UserNet::new(UserNetConfig { hostfwd: vec![hostfwd(Proto::Udp, 7777)], ..config() }).unwrap();
    let (_, addr) = nat.hostfwd_addrs()[0];
    let mut g = Guest::new();
    let h = g.sockets.add(udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
    ));
    g.sockets.get_mut::<udp::Socket>(h).bind(7777).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_nonblocking(true).unwrap();
    client.send_to(b"to the guest", addr).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    assert!(g.run(&mut nat, T, |g| {
        let s = g.sockets.get_mut::<udp::Socket>(h);
        if let Ok((d, meta)) = s.recv() {
            assert_eq!(d, b"to the guest");
            let from = meta.endpoint;
            s.send_slice(b"from the guest", from).unwrap();
        }
        if let Ok(n) = client.recv(&mut buf) {
            reply = buf[..n].to_vec();
        }
        !reply.is_empty()
    }));
    assert_eq!(reply, b"from the guest");
}

#[test]
fn restrict_blocks_loopback_but_hostfwd_works() {
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    open.set_nonblocking(true).unwrap();
    let open_port = open.local_addr().unwrap().port();
    let mut nat =
        UserNet::new(UserNetConfig { restrict: true, hostfwd: vec![hostfwd(Proto::Tcp, 2222)], ..config() }).unwrap();
    let mut g = Guest::new();
    let h = g.connect(SocketAddrV4::new(GATEWAY, open_port), 4096);
    let t0 = Instant::now();
    assert!(g.run(&mut nat, T, |g| g.tcp(h).state() == tcp::State::Closed));
    assert!(t0.elapsed() < Duration::from_secs(1), "refused quickly");
    assert!(
        matches!(open.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the host listener must not see the guest"
    );
    // UDP out is dropped too.
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_nonblocking(true).unwrap();
    nat.send(&udp_frame(
        SocketAddrV4::new(GUEST_IP, 9999),
        SocketAddrV4::new(GATEWAY, u.local_addr().unwrap().port()),
        GATEWAY_MAC,
        b"leak?",
    ));
    g.run(&mut nat, Duration::from_millis(100), |_| false);
    assert!(u.recv(&mut [0u8; 16]).is_err(), "restricted UDP reached the host");

    let (_, addr) = nat.hostfwd_addrs()[0];
    let client = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(b"hello guest").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let (got, _, _) = guest_serve(&mut g, &mut nat, 2222, 11, b"hello host", 4096);
    assert_eq!(got, b"hello guest");
    assert_eq!(client.join().unwrap(), b"hello host");
}

#[test]
fn hostfwd_to_a_closed_guest_port_resets_the_host_client() {
    let mut nat = UserNet::new(UserNetConfig { hostfwd: vec![hostfwd(Proto::Tcp, 9)], ..config() }).unwrap();
    let (_, addr) = nat.hostfwd_addrs()[0];
    let client = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0u8; 8];
        matches!(s.read(&mut buf), Ok(0) | Err(_))
    });
    let mut g = Guest::new();
    let mut done = false;
    g.run(&mut nat, T, |_| {
        done = client.is_finished();
        done
    });
    assert!(done);
    assert!(client.join().unwrap());
    g.run(&mut nat, Duration::from_millis(50), |_| false);
    assert_eq!(nat.stats().tcp_flows, 0);
}

#[test]
fn hostfwd_bind_error_is_clear() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = UserNet::new(UserNetConfig {
        hostfwd: vec![HostFwd {
            proto: Proto::Tcp,
            host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            guest_addr: None,
            guest_port: 80,
        }],
        ..config()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("cannot bind") && err.contains(&port.to_string()), "{err}");
    let _: SocketAddr = taken.local_addr().unwrap();
}

// ---------------------------------------------------------------- flow control, timeouts

#[test]
fn slow_host_and_slow_guest_lose_nothing() {
    const N: usize = 4 << 20;
    let up = pattern(N, 5);
    let down = pattern(N, 6);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let down_srv = down.clone();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        // A host peer that does not read for a while: its kernel buffer,
        // then the NAT's buffer, then the guest's window fill up.
        thread::sleep(Duration::from_millis(300));
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        // Then it sends faster than the guest reads.
        s.write_all(&down_srv).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        got
    });
    let mut nat =
        UserNet::new(UserNetConfig { limits: Limits { flow_buffer: 64 * 1024, ..Limits::default() }, ..config() })
            .unwrap();
    let mut g = Guest::new();
    let h = g.connect(SocketAddrV4::new(GATEWAY, port), 64 * 1024);
    let (mut sent, mut closed) = (0, false);
    let mut recvd = Vec::new();
    let mut first_rx: Option<Instant> = None;
    let ok = g.run(&mut nat, T, |g| {
        let s = g.tcp(h);
        sent = feed(s, &up, sent);
        if sent == N && !closed {
            s.close();
            closed = true;
        }
        // A guest that reads only every 50 ms once data arrives.
        if s.can_recv() && first_rx.is_none() {
            first_rx = Some(Instant::now());
        }
        if first_rx.is_some_and(|t| t.elapsed().as_millis() % 50 < 5) {
            drain(s, &mut recvd);
        }
        recvd.len() == N && !s.may_recv()
    });
    assert!(ok, "stuck: sent {sent}, received {}", recvd.len());
    assert_eq!(sha(&server.join().unwrap()), sha(&up));
    assert_eq!(sha(&recvd), sha(&down));
}

#[test]
fn idle_flows_time_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0u8; 8];
        matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    });
    let udp_peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut nat = UserNet::new(UserNetConfig {
        limits: Limits {
            tcp_idle: Duration::from_millis(300),
            udp_idle: Duration::from_millis(300),
            ..Limits::default()
        },
        ..config()
    })
    .unwrap();
    let mut g = Guest::new();
    let h = g.connect(SocketAddrV4::new(GATEWAY, port), 4096);
    assert!(g.run(&mut nat, T, |g| g.tcp(h).state() == tcp::State::Established));
    nat.send(&udp_frame(
        SocketAddrV4::new(GUEST_IP, 1234),
        SocketAddrV4::new(GATEWAY, udp_peer.local_addr().unwrap().port()),
        GATEWAY_MAC,
        b"hi",
    ));
    g.step(&mut nat);
    assert_eq!((nat.stats().tcp_flows, nat.stats().udp_flows), (1, 1));
    let t0 = Instant::now();
    // The guest sees the reset, the host sees the reset, both flows go.
    assert!(g.run(&mut nat, T, |g| g.tcp(h).state() == tcp::State::Closed));
    let idle_for = t0.elapsed();
    assert!(idle_for >= Duration::from_millis(250), "reset after {idle_for:?}");
    assert!(g.run(&mut nat, T, |_| server.is_finished()));
    assert!(server.join().unwrap(), "host side was not reset");
    g.run(&mut nat, Duration::from_millis(100), |_| false);
    assert_eq!((nat.stats().tcp_flows, nat.stats().udp_flows), (0, 0));
}
