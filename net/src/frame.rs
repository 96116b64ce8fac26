//! Parsing guest frames and building the frames the NAT answers with
//! (smoltcp's `wire` module does the byte layout and checksums).
//!
//! Parsing is strict: every length is checked against the buffer, checksums
//! are verified, fragments are refused. A refused frame is a [`Drop`] value,
//! counted by the caller, never a panic.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
};

pub(crate) const ETH_HEADER_LEN: usize = 14;
pub(crate) const IPV4_HEADER_LEN: usize = 20;
pub(crate) const UDP_HEADER_LEN: usize = 8;

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
    let p = UdpPacket::new_checked(ip.payload).map_err(|_| Drop::Malformed)?;
    let (src, dst) = (IpAddress::Ipv4(ip.src), IpAddress::Ipv4(ip.dst));
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
        payload: ip.payload.get(UDP_HEADER_LEN..len).ok_or(Drop::Malformed)?,
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
    let p = TcpPacket::new_checked(ip.payload).map_err(|_| Drop::Malformed)?;
    if !p.verify_checksum(&IpAddress::Ipv4(ip.src), &IpAddress::Ipv4(ip.dst)) {
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

/// The RST that refuses `seg` (RFC 793, "Reset Generation"): from the
/// segment's destination back to its source.
pub(crate) fn build_rst_for(src_mac: EthernetAddress, dst_mac: EthernetAddress, ip: &Ip<'_>, seg: &Tcp) -> Vec<u8> {
    const TCP_HEADER_LEN: usize = 20;
    let (seq, ack) = match seg.ack {
        Some(a) => (a, None),
        None => (0, Some(seg.seq.wrapping_add(seg.seg_len))),
    };
    build_ipv4(src_mac, dst_mac, ip.dst, ip.src, IpProtocol::Tcp, TCP_HEADER_LEN, |l4| {
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
        t.fill_checksum(&IpAddress::Ipv4(ip.dst), &IpAddress::Ipv4(ip.src));
    })
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
        let payload = [0u8; 0];
        let ip = Ip {
            src: Ipv4Addr::new(10, 0, 2, 15),
            dst: Ipv4Addr::new(10, 0, 2, 2),
            proto: IpProtocol::Tcp,
            payload: &payload,
        };
        let f = build_rst_for(A, B, &ip, &syn);
        let eth = parse_eth(&f).unwrap();
        let rip = parse_ipv4(eth.payload).unwrap();
        let t = parse_tcp(&rip).unwrap();
        assert!(t.rst);
        assert_eq!(t.ack, Some(1001));
        assert_eq!((t.src_port, t.dst_port), (80, 40000));
    }
}
