//! Parsing guest frames and building the frames the NAT answers with
//! (smoltcp's `wire` module does the byte layout and checksums).
//!
//! Parsing is strict: every length is checked against the buffer, checksums
//! are verified, fragments are refused. A refused frame is a [`Drop`] value,
//! counted by the caller, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr,
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket, UdpPacket, UdpRepr,
};

pub(crate) const ETH_HEADER_LEN: usize = 14;
pub(crate) const IPV4_HEADER_LEN: usize = 20;
pub(crate) const IPV6_HEADER_LEN: usize = 40;
pub(crate) const UDP_HEADER_LEN: usize = 8;
/// Extension headers an IPv6 packet may carry before its payload.
const MAX_EXT_HEADERS: usize = 8;

/// Why a guest frame was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drop {
    /// Too short, bad length fields, bad version.
    Malformed,
    /// A bad IP, UDP, TCP or ICMP checksum.
    Checksum,
    /// An IP fragment (the NAT does not reassemble).
    Fragment,
    /// Not addressed to anything the NAT serves.
    NotForUs,
    /// Forbidden by `restrict=on` or address policy.
    Policy,
    /// A bound was reached (flows, queue).
    Limit,
}

/// An Ethernet frame's header fields.
pub(crate) struct Eth<'a> {
    pub dst: EthernetAddress,
    pub src: EthernetAddress,
    pub ethertype: EthernetProtocol,
    pub payload: &'a [u8],
}

pub(crate) fn parse_eth(frame: &[u8]) -> Result<Eth<'_>, Drop> {
    let f = EthernetFrame::new_checked(frame).map_err(|_| Drop::Malformed)?;
    Ok(Eth { dst: f.dst_addr(), src: f.src_addr(), ethertype: f.ethertype(), payload: &frame[ETH_HEADER_LEN..] })
}

/// An IPv4 packet's fields, options skipped, padding cut off.
pub(crate) struct Ip<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: IpProtocol,
    pub payload: &'a [u8],
}

pub(crate) fn parse_ipv4(buf: &[u8]) -> Result<Ip<'_>, Drop> {
    let p = Ipv4Packet::new_checked(buf).map_err(|_| Drop::Malformed)?;
    if p.version() != 4 {
        return Err(Drop::Malformed);
    }
    if !p.verify_checksum() {
        return Err(Drop::Checksum);
    }
    if p.more_frags() || p.frag_offset() != 0 {
        return Err(Drop::Fragment);
    }
    let start = usize::from(p.header_len());
    let end = usize::from(p.total_len());
    // new_checked guarantees header_len <= total_len <= buf.len().
    let payload = buf.get(start..end).ok_or(Drop::Malformed)?;
    Ok(Ip { src: p.src_addr(), dst: p.dst_addr(), proto: p.next_header(), payload })
}

/// A UDP datagram's ports and payload, checksum verified (zero allowed).
pub(crate) struct Udp<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

pub(crate) fn parse_udp<'a>(ip: &Ip<'a>) -> Result<Udp<'a>, Drop> {
    parse_udp_in(IpAddress::Ipv4(ip.src), IpAddress::Ipv4(ip.dst), ip.payload)
}

/// A UDP datagram over IPv6, where the checksum is mandatory (RFC 8200 §8.1).
pub(crate) fn parse_udp6<'a>(ip: &Ip6<'a>) -> Result<Udp<'a>, Drop> {
    if ip.payload.len() >= UDP_HEADER_LEN && ip.payload[6..8] == [0, 0] {
        return Err(Drop::Checksum);
    }
    parse_udp_in(IpAddress::Ipv6(ip.src), IpAddress::Ipv6(ip.dst), ip.payload)
}

fn parse_udp_in(src: IpAddress, dst: IpAddress, l4: &[u8]) -> Result<Udp<'_>, Drop> {
    let p = UdpPacket::new_checked(l4).map_err(|_| Drop::Malformed)?;
    if p.checksum() != 0 && !p.verify_checksum(&src, &dst) {
        return Err(Drop::Checksum);
    }
    if p.dst_port() == 0 {
        return Err(Drop::Malformed);
    }
    let len = usize::from(p.len());
    Ok(Udp {
        src_port: p.src_port(),
        dst_port: p.dst_port(),
        payload: l4.get(UDP_HEADER_LEN..len).ok_or(Drop::Malformed)?,
    })
}

/// The TCP header fields the flow table needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: Option<u32>,
    pub syn: bool,
    pub rst: bool,
    /// Sequence space the segment occupies (payload + SYN + FIN).
    pub seg_len: u32,
}

pub(crate) fn parse_tcp(ip: &Ip<'_>) -> Result<Tcp, Drop> {
    parse_tcp_in(IpAddress::Ipv4(ip.src), IpAddress::Ipv4(ip.dst), ip.payload)
}

pub(crate) fn parse_tcp6(ip: &Ip6<'_>) -> Result<Tcp, Drop> {
    parse_tcp_in(IpAddress::Ipv6(ip.src), IpAddress::Ipv6(ip.dst), ip.payload)
}

fn parse_tcp_in(src: IpAddress, dst: IpAddress, l4: &[u8]) -> Result<Tcp, Drop> {
    let p = TcpPacket::new_checked(l4).map_err(|_| Drop::Malformed)?;
    if !p.verify_checksum(&src, &dst) {
        return Err(Drop::Checksum);
    }
    if p.src_port() == 0 || p.dst_port() == 0 {
        return Err(Drop::Malformed);
    }
    Ok(Tcp {
        src_port: p.src_port(),
        dst_port: p.dst_port(),
        seq: p.seq_number().0 as u32,
        ack: p.ack().then(|| p.ack_number().0 as u32),
        syn: p.syn(),
        rst: p.rst(),
        seg_len: u32::try_from(p.segment_len()).unwrap_or(u32::MAX),
    })
}

/// Builds Ethernet + IPv4 around a layer-4 payload that `fill` writes.
pub(crate) fn build_ipv4(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    l4_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut buf = vec![0u8; ETH_HEADER_LEN + IPV4_HEADER_LEN + l4_len];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr { src_addr: src_mac, dst_addr: dst_mac, ethertype: EthernetProtocol::Ipv4 }.emit(&mut eth);
    let ip_repr = Ipv4Repr { src_addr: src, dst_addr: dst, next_header: proto, payload_len: l4_len, hop_limit: 64 };
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[ETH_HEADER_LEN..]);
    ip_repr.emit(&mut ip, &ChecksumCapabilities::default());
    fill(&mut buf[ETH_HEADER_LEN + IPV4_HEADER_LEN..]);
    buf
}

/// The largest UDP payload that fits one unfragmented frame.
pub(crate) const MAX_UDP_PAYLOAD: usize = 1500 - IPV4_HEADER_LEN - UDP_HEADER_LEN;

/// A UDP datagram in a frame. The caller keeps `payload` within
/// [`MAX_UDP_PAYLOAD`].
pub(crate) fn build_udp(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    build_ipv4(src_mac, dst_mac, *src.ip(), *dst.ip(), IpProtocol::Udp, UDP_HEADER_LEN + payload.len(), |l4| {
        let mut udp = UdpPacket::new_unchecked(l4);
        UdpRepr { src_port: src.port(), dst_port: dst.port() }.emit(
            &mut udp,
            &IpAddress::Ipv4(*src.ip()),
            &IpAddress::Ipv4(*dst.ip()),
            payload.len(),
            |p| p.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
    })
}

/// The RST that refuses `seg`, a segment from `src` to `dst` (RFC 793,
/// "Reset Generation"): from the segment's destination back to its source.
/// `None` when the two addresses are not of one family.
pub(crate) fn build_rst(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: IpAddr,
    dst: IpAddr,
    seg: &Tcp,
) -> Option<Vec<u8>> {
    let (from, to) = (IpAddress::from(dst), IpAddress::from(src));
    let fill = |l4: &mut [u8]| fill_rst(l4, seg, from, to);
    Some(match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => build_ipv4(src_mac, dst_mac, d, s, IpProtocol::Tcp, TCP_HEADER_LEN, fill),
        (IpAddr::V6(s), IpAddr::V6(d)) => build_ipv6(src_mac, dst_mac, d, s, IpProtocol::Tcp, 64, TCP_HEADER_LEN, fill),
        _ => return None,
    })
}

const TCP_HEADER_LEN: usize = 20;

fn fill_rst(l4: &mut [u8], seg: &Tcp, src: IpAddress, dst: IpAddress) {
    let (seq, ack) = match seg.ack {
        Some(a) => (a, None),
        None => (0, Some(seg.seq.wrapping_add(seg.seg_len))),
    };
    let mut t = TcpPacket::new_unchecked(l4);
    t.set_src_port(seg.dst_port);
    t.set_dst_port(seg.src_port);
    t.set_seq_number(smoltcp::wire::TcpSeqNumber(seq as i32));
    t.set_ack_number(smoltcp::wire::TcpSeqNumber(ack.unwrap_or(0) as i32));
    t.set_header_len(TCP_HEADER_LEN as u8);
    t.clear_flags();
    t.set_rst(true);
    t.set_ack(ack.is_some());
    t.set_window_len(0);
    t.set_urgent_at(0);
    t.fill_checksum(&src, &dst);
}

/// An ICMP echo reply (or request) in a frame.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_icmp_echo(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    reply: bool,
    ident: u16,
    seq_no: u16,
    data: &[u8],
) -> Vec<u8> {
    let repr = if reply {
        Icmpv4Repr::EchoReply { ident, seq_no, data }
    } else {
        Icmpv4Repr::EchoRequest { ident, seq_no, data }
    };
    build_ipv4(src_mac, dst_mac, src, dst, IpProtocol::Icmp, repr.buffer_len(), |l4| {
        let mut p = Icmpv4Packet::new_unchecked(l4);
        repr.emit(&mut p, &ChecksumCapabilities::default());
    })
}

/// Whether `addr` may be a unicast destination out on the host's side.
pub(crate) fn is_routable(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || addr.is_broadcast()
        || addr.octets()[0] == 0
        || addr.octets()[0] >= 240)
}

/// An IPv6 packet's fields: extension headers passed, padding cut off.
pub(crate) struct Ip6<'a> {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The upper-layer protocol (after the extension headers).
    pub proto: IpProtocol,
    pub hop_limit: u8,
    /// Bytes of IPv6 header and extension headers before the payload.
    pub header_len: usize,
    /// The upper-layer payload.
    pub payload: &'a [u8],
}

/// Parses an IPv6 packet: the payload length is checked against the buffer
/// (trailing Ethernet padding is cut off), hop-by-hop options (first header
/// only), destination options and routing headers with no segments left
/// are passed, a fragment header refuses the packet. Options that ask to
/// be understood (RFC 8200 §4.2, action bits other than 00) refuse it too.
pub(crate) fn parse_ipv6(buf: &[u8]) -> Result<Ip6<'_>, Drop> {
    let p = Ipv6Packet::new_checked(buf).map_err(|_| Drop::Malformed)?;
    if p.version() != 6 {
        return Err(Drop::Malformed);
    }
    let end = IPV6_HEADER_LEN + usize::from(p.payload_len());
    // new_checked guarantees the payload length fits the buffer.
    let pkt = buf.get(..end).ok_or(Drop::Malformed)?;
    let mut next = p.next_header();
    let mut off = IPV6_HEADER_LEN;
    let mut headers = 0;
    loop {
        let ext = match next {
            IpProtocol::HopByHop | IpProtocol::Ipv6Opts | IpProtocol::Ipv6Route => true,
            IpProtocol::Ipv6Frag => return Err(Drop::Fragment),
            _ => false,
        };
        if !ext {
            break;
        }
        if next == IpProtocol::HopByHop && headers != 0 {
            // Hop-by-hop options come first or not at all.
            return Err(Drop::Malformed);
        }
        headers += 1;
        if headers > MAX_EXT_HEADERS {
            return Err(Drop::Malformed);
        }
        let hdr = pkt.get(off..off + 8).ok_or(Drop::Malformed)?;
        let len = (usize::from(hdr[1]) + 1) * 8;
        let body = pkt.get(off + 2..off + len).ok_or(Drop::Malformed)?;
        match next {
            IpProtocol::Ipv6Route => {
                // Segments left: a routing header that still routes names another node.
                if body[1] != 0 {
                    return Err(Drop::NotForUs);
                }
            }
            _ => check_ext_options(body)?,
        }
        next = IpProtocol::from(hdr[0]);
        off += len;
    }
    Ok(Ip6 {
        src: p.src_addr(),
        dst: p.dst_addr(),
        proto: next,
        hop_limit: p.hop_limit(),
        header_len: off,
        payload: &pkt[off..],
    })
}

/// The frame `f` (which `ip` was parsed from) without IPv6 extension
/// headers: `f` itself when it has none, else the same packet rebuilt with
/// the payload right after the IPv6 header.
pub(crate) fn without_ipv6_ext<'f>(f: &'f [u8], ip: &Ip6<'_>) -> std::borrow::Cow<'f, [u8]> {
    if ip.header_len == IPV6_HEADER_LEN {
        return std::borrow::Cow::Borrowed(f);
    }
    let eth = EthernetFrame::new_unchecked(f);
    let payload = ip.payload;
    std::borrow::Cow::Owned(build_ipv6(
        eth.src_addr(),
        eth.dst_addr(),
        ip.src,
        ip.dst,
        ip.proto,
        ip.hop_limit,
        payload.len(),
        |l4| l4.copy_from_slice(payload),
    ))
}

/// Walks the TLV options of a hop-by-hop or destination options header.
fn check_ext_options(mut opts: &[u8]) -> Result<(), Drop> {
    while let Some(&kind) = opts.first() {
        if kind == 0 {
            // Pad1.
            opts = &opts[1..];
            continue;
        }
        let len = usize::from(*opts.get(1).ok_or(Drop::Malformed)?);
        if opts.len() < 2 + len {
            return Err(Drop::Malformed);
        }
        // PadN (1) and router alert (5) have action bits 00, as does any
        // option a node may skip; every other action discards the packet.
        if kind >> 6 != 0 {
            return Err(Drop::NotForUs);
        }
        opts = &opts[2 + len..];
    }
    Ok(())
}

/// Builds Ethernet + IPv6 around a layer-4 payload that `fill` writes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_ipv6(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: IpProtocol,
    hop_limit: u8,
    l4_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut buf = vec![0u8; ETH_HEADER_LEN + IPV6_HEADER_LEN + l4_len];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr { src_addr: src_mac, dst_addr: dst_mac, ethertype: EthernetProtocol::Ipv6 }.emit(&mut eth);
    let ip_repr = Ipv6Repr { src_addr: src, dst_addr: dst, next_header: proto, payload_len: l4_len, hop_limit };
    let mut ip = Ipv6Packet::new_unchecked(&mut buf[ETH_HEADER_LEN..]);
    ip_repr.emit(&mut ip);
    fill(&mut buf[ETH_HEADER_LEN + IPV6_HEADER_LEN..]);
    buf
}

/// The largest UDP payload that fits one unfragmented IPv6 frame.
pub(crate) const MAX_UDP6_PAYLOAD: usize = 1500 - IPV6_HEADER_LEN - UDP_HEADER_LEN;

/// A UDP datagram over IPv6 in a frame. The caller keeps `payload` within
/// [`MAX_UDP6_PAYLOAD`].
pub(crate) fn build_udp6(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: SocketAddrV6,
    dst: SocketAddrV6,
    payload: &[u8],
) -> Vec<u8> {
    build_ipv6(src_mac, dst_mac, *src.ip(), *dst.ip(), IpProtocol::Udp, 64, UDP_HEADER_LEN + payload.len(), |l4| {
        let mut udp = UdpPacket::new_unchecked(l4);
        UdpRepr { src_port: src.port(), dst_port: dst.port() }.emit(
            &mut udp,
            &IpAddress::Ipv6(*src.ip()),
            &IpAddress::Ipv6(*dst.ip()),
            payload.len(),
            |p| p.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
    })
}

/// An ICMPv6 message in a frame, with `extra` (further NDP options)
/// appended to what `repr` emits; the checksum covers both.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_icmpv6(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    repr: &Icmpv6Repr<'_>,
    extra: &[u8],
) -> Vec<u8> {
    let len = repr.buffer_len();
    build_ipv6(src_mac, dst_mac, src, dst, IpProtocol::Icmpv6, hop_limit, len + extra.len(), |l4| {
        repr.emit(&src, &dst, &mut Icmpv6Packet::new_unchecked(&mut l4[..len]), &ChecksumCapabilities::default());
        l4[len..].copy_from_slice(extra);
        Icmpv6Packet::new_unchecked(l4).fill_checksum(&src, &dst);
    })
}

/// The Ethernet address an IPv6 multicast address maps to (RFC 2464 §7).
pub(crate) fn ipv6_multicast_mac(addr: Ipv6Addr) -> EthernetAddress {
    let o = addr.octets();
    EthernetAddress([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The solicited-node multicast address of `addr` (RFC 4291 §2.7.1).
pub(crate) fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15]])
}

/// Whether `addr` may be a unicast IPv6 destination out on the host's side:
/// not unspecified, loopback, multicast, link-local, nor an IPv4-mapped or
/// IPv4-compatible address (those would leave as IPv4).
pub(crate) fn is_routable6(addr: Ipv6Addr) -> bool {
    let seg = addr.segments();
    let v4_embedded = seg[..5] == [0; 5] && (seg[5] == 0xffff || seg[5] == 0);
    !(addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || crate::config::is_link_local6(addr)
        || v4_embedded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);

    #[test]
    fn udp_round_trip() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 1234);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53);
        let f = build_udp(A, B, src, dst, b"hello");
        let eth = parse_eth(&f).unwrap();
        assert_eq!(eth.dst, B);
        let ip = parse_ipv4(eth.payload).unwrap();
        let udp = parse_udp(&ip).unwrap();
        assert_eq!((udp.src_port, udp.dst_port, udp.payload), (1234, 53, &b"hello"[..]));
    }

    #[test]
    fn bad_checksums_and_fragments_are_refused() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 1234);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53);
        let f = build_udp(A, B, src, dst, b"hello");
        let mut bad_ip = f.clone();
        bad_ip[ETH_HEADER_LEN + 8] ^= 1; // TTL
        assert_eq!(parse_ipv4(&bad_ip[ETH_HEADER_LEN..]).err(), Some(Drop::Checksum));
        let mut bad_udp = f.clone();
        *bad_udp.last_mut().unwrap() ^= 1;
        let ip = parse_ipv4(&bad_udp[ETH_HEADER_LEN..]).unwrap();
        assert_eq!(parse_udp(&ip).err(), Some(Drop::Checksum));
        let mut frag = f.clone();
        {
            let mut p = Ipv4Packet::new_unchecked(&mut frag[ETH_HEADER_LEN..]);
            p.set_more_frags(true);
            p.fill_checksum();
        }
        assert_eq!(parse_ipv4(&frag[ETH_HEADER_LEN..]).err(), Some(Drop::Fragment));
        for len in 0..f.len() {
            let _ = parse_eth(&f[..len]).map(|e| parse_ipv4(e.payload).map(|ip| parse_udp(&ip).is_ok()));
        }
    }

    #[test]
    fn rst_answers_a_syn() {
        let syn = Tcp { src_port: 40000, dst_port: 80, seq: 1000, ack: None, syn: true, rst: false, seg_len: 1 };
        let (guest, gw) = (Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2));
        let f = build_rst(A, B, guest.into(), gw.into(), &syn).unwrap();
        let eth = parse_eth(&f).unwrap();
        let rip = parse_ipv4(eth.payload).unwrap();
        assert_eq!((rip.src, rip.dst), (gw, guest));
        let t = parse_tcp(&rip).unwrap();
        assert!(t.rst);
        assert_eq!(t.ack, Some(1001));
        assert_eq!((t.src_port, t.dst_port), (80, 40000));
        // Over IPv6 the same; mixed families build nothing.
        let (guest6, gw6) = ("fec0::15".parse::<Ipv6Addr>().unwrap(), "fec0::2".parse::<Ipv6Addr>().unwrap());
        let f = build_rst(A, B, guest6.into(), gw6.into(), &syn).unwrap();
        let eth = parse_eth(&f).unwrap();
        let rip = parse_ipv6(eth.payload).unwrap();
        assert_eq!((rip.src, rip.dst), (gw6, guest6));
        let t = parse_tcp6(&rip).unwrap();
        assert!(t.rst && t.ack == Some(1001));
        assert!(build_rst(A, B, guest.into(), gw6.into(), &syn).is_none());
    }

    /// An IPv6 UDP datagram with `ext` (whole extension headers, the first
    /// byte of each a next-header field that is rewritten here) before it.
    fn udp6_with(ext: &[&[u8]]) -> Vec<u8> {
        let src = SocketAddrV6::new("fec0::15".parse().unwrap(), 1234, 0, 0);
        let dst = SocketAddrV6::new("fec0::3".parse().unwrap(), 53, 0, 0);
        let plain = build_udp6(A, B, src, dst, b"hello");
        let l4 = &plain[ETH_HEADER_LEN + IPV6_HEADER_LEN..];
        let mut f = plain[..ETH_HEADER_LEN + IPV6_HEADER_LEN].to_vec();
        let kinds: Vec<u8> = ext.iter().map(|e| e[0]).collect();
        f[ETH_HEADER_LEN + 6] = kinds.first().copied().unwrap_or(17);
        for (i, e) in ext.iter().enumerate() {
            let mut e = e.to_vec();
            e[0] = kinds.get(i + 1).copied().unwrap_or(17);
            f.extend_from_slice(&e);
        }
        f.extend_from_slice(l4);
        let pl = (f.len() - ETH_HEADER_LEN - IPV6_HEADER_LEN) as u16;
        f[ETH_HEADER_LEN + 4..ETH_HEADER_LEN + 6].copy_from_slice(&pl.to_be_bytes());
        f
    }

    #[test]
    fn ipv6_extension_headers_and_lengths() {
        let ok = |f: &[u8]| {
            let ip = parse_ipv6(&f[ETH_HEADER_LEN..])?;
            parse_udp6(&ip).map(|u| u.payload.to_vec())
        };
        assert_eq!(ok(&udp6_with(&[])), Ok(b"hello".to_vec()));
        // Hop-by-hop with router alert and PadN, then destination options.
        let hbh: &[u8] = &[0, 0, 5, 2, 0, 0, 1, 0];
        let dst_opts: &[u8] = &[60, 0, 1, 4, 0, 0, 0, 0];
        let mut hbh_first = hbh.to_vec();
        hbh_first[0] = 0;
        assert_eq!(ok(&udp6_with(&[&hbh_first, dst_opts])), Ok(b"hello".to_vec()));
        // Hop-by-hop after another header; an option to be understood.
        assert_eq!(ok(&udp6_with(&[dst_opts, &hbh_first])).err(), Some(Drop::Malformed));
        assert_eq!(ok(&udp6_with(&[&[0, 0, 0x80, 4, 0, 0, 0, 0]])).err(), Some(Drop::NotForUs));
        // A fragment header (first fragment), a routing header still routing.
        assert_eq!(ok(&udp6_with(&[&[44, 0, 0, 1, 0, 0, 0, 7]])).err(), Some(Drop::Fragment));
        assert_eq!(ok(&udp6_with(&[&[43, 0, 0, 1, 0, 0, 0, 0]])).err(), Some(Drop::NotForUs));
        assert_eq!(ok(&udp6_with(&[&[43, 0, 0, 0, 0, 0, 0, 0]])), Ok(b"hello".to_vec()));
        // An option running past its header, a header past the packet.
        assert_eq!(ok(&udp6_with(&[&[0, 0, 1, 9, 0, 0, 0, 0]])).err(), Some(Drop::Malformed));
        let mut long = udp6_with(&[&[60, 0, 1, 4, 0, 0, 0, 0]]);
        long[ETH_HEADER_LEN + IPV6_HEADER_LEN + 1] = 200;
        assert_eq!(ok(&long).err(), Some(Drop::Malformed));
        // Payload length past the frame; Ethernet padding after the packet.
        let good = udp6_with(&[]);
        let mut over = good.clone();
        over[ETH_HEADER_LEN + 5] += 1;
        assert_eq!(ok(&over).err(), Some(Drop::Malformed));
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(ok(&padded), Ok(b"hello".to_vec()));
        // A zero UDP checksum is refused over IPv6, a wrong one too.
        let mut zero = good.clone();
        let at = ETH_HEADER_LEN + IPV6_HEADER_LEN + 6;
        zero[at..at + 2].copy_from_slice(&[0, 0]);
        assert_eq!(ok(&zero).err(), Some(Drop::Checksum));
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(ok(&bad).err(), Some(Drop::Checksum));
        // Version 4 in an IPv6 header; every truncation.
        let mut v4 = good.clone();
        v4[ETH_HEADER_LEN] = 0x40;
        assert_eq!(ok(&v4).err(), Some(Drop::Malformed));
        for len in 0..good.len() {
            let _ = parse_eth(&good[..len]).map(|e| parse_ipv6(e.payload).map(|ip| parse_udp6(&ip).is_ok()));
        }
    }

    #[test]
    fn ipv6_helpers() {
        let a: Ipv6Addr = "fec0::5054:ff:fe12:3456".parse().unwrap();
        assert_eq!(solicited_node(a), "ff02::1:ff12:3456".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ipv6_multicast_mac(solicited_node(a)), EthernetAddress([0x33, 0x33, 0xff, 0x12, 0x34, 0x56]));
        for (addr, routable) in
            [("2001:db8::1", true), ("::1", false), ("fe80::1", false), ("ff02::1", false), ("::ffff:1.2.3.4", false)]
        {
            assert_eq!(is_routable6(addr.parse().unwrap()), routable, "{addr}");
        }
    }
}
