//! Offloads both NIC models perform for their guests: checksum insertion,
//! TCP (and UDP) segmentation of large sends, and the receive-side
//! classification behind "checksum already verified".
//!
//! References: RFC 791 (the IPv4 header and its checksum), RFC 8200 3 (the
//! IPv6 header), RFC 9293 3.1 (the TCP header and its pseudo-header
//! checksum), RFC 768 (UDP), RFC 1071 (computing the Internet checksum).
//! The e1000's segmentation rules (8254x Software Developer's Manual
//! 3.5 "TCP Segmentation") and virtio-net's (VIRTIO 1.1 5.1.6.2) come down
//! to the same per-segment fix-ups, done here:
//!
//! ```text
//! IPv4   total length, identification + n, header checksum recomputed
//! IPv6   payload length
//! TCP    sequence number + bytes before the segment; FIN and PSH only on the
//!        last segment, CWR only on the first; checksum recomputed in full
//! UDP    length; checksum recomputed in full
//! ```
//!
//! Every offset comes from the guest, so each is checked against the frame;
//! a frame that does not parse is refused with a [`SegmentError`], never a
//! panic.

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
/// The most segments one large send may produce (64 KiB of 1-byte segments).
const MAX_SEGMENTS: usize = 65536;

/// Why a large send could not be segmented.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum SegmentError {
    /// The headers do not fit the frame or do not parse.
    #[error("the headers at offsets {l3}/{l4} do not fit a {len}-byte frame or do not parse")]
    BadHeaders { l3: usize, l4: usize, len: usize },
    /// MSS 0, or more segments than allowed.
    #[error("MSS {mss} for {payload} payload bytes is unusable")]
    BadMss { mss: usize, payload: usize },
    /// A segment would be longer than IP allows.
    #[error("a segment of {0} bytes is longer than IP allows")]
    TooLong(usize),
}

/// Adds `data` to a one's-complement running sum (RFC 1071), as 16-bit
/// big-endian words; an odd last byte is padded with zero.
pub fn checksum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        sum += (v >> 48) + ((v >> 32) & 0xffff) + ((v >> 16) & 0xffff) + (v & 0xffff);
    }
    let mut words = chunks.remainder().chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a running sum to 16 bits and complements it: the checksum field.
pub fn checksum_finish(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sums `frame[start..end]` and stores the complement at `field` (which must
/// lie inside the range; its current contents count, as the hardware does).
/// `end` of `None` means the end of the frame. A result of 0 is stored as
/// 0xFFFF, which every protocol accepts and UDP requires. False, and nothing
/// changed, when the offsets do not fit.
pub fn insert_checksum(frame: &mut [u8], start: usize, field: usize, end: Option<usize>) -> bool {
    let end = end.unwrap_or(frame.len()).min(frame.len());
    if start >= end || field < start || field.checked_add(2).is_none_or(|e| e > end) {
        return false;
    }
    net::offload::fill_partial_checksum(&mut frame[..end], start, field - start)
}

/// Where the network header starts: after the Ethernet header and one VLAN
/// tag, if any. `None` for a frame too short to say.
pub fn l3_offset(frame: &[u8]) -> Option<(usize, u16)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype == ETHERTYPE_VLAN {
        let inner = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
        return Some((ETH_HLEN + 4, inner));
    }
    Some((ETH_HLEN, ethertype))
}

/// The transport protocol of a segmentation offload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Proto {
    /// TCP segmentation.
    Tcp,
    /// UDP segmentation (each segment a datagram of its own).
    Udp,
}

/// A large send to cut into segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmentation {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP or UDP header.
    pub l4: usize,
    /// Payload bytes per segment.
    pub mss: usize,
    /// TCP or UDP.
    pub proto: L4Proto,
}

/// Cuts `frame` into segments of at most `mss` payload bytes, each with
/// complete headers and checksums, and hands each to `emit`. Returns the
/// number of segments.
pub fn segment(frame: &[u8], seg: &Segmentation, emit: &mut dyn FnMut(&[u8])) -> Result<usize, SegmentError> {
    let bad = || SegmentError::BadHeaders { l3: seg.l3, l4: seg.l4, len: frame.len() };
    let version = frame.get(seg.l3).ok_or_else(bad)? >> 4;
    let ipv4 = match version {
        4 => {
            let ihl = usize::from(frame[seg.l3] & 0x0f) * 4;
            if ihl < 20 || seg.l3 + ihl > seg.l4 {
                return Err(bad());
            }
            true
        }
        6 if seg.l3 + 40 <= seg.l4 => false,
        _ => return Err(bad()),
    };
    let hdr_len = match seg.proto {
        L4Proto::Tcp => {
            let doff = usize::from(frame.get(seg.l4 + 12).ok_or_else(bad)? >> 4) * 4;
            if doff < 20 {
                return Err(bad());
            }
            seg.l4 + doff
        }
        L4Proto::Udp => seg.l4 + 8,
    };
    if hdr_len > frame.len() {
        return Err(bad());
    }
    let payload = &frame[hdr_len..];
    let count = payload.len().div_ceil(seg.mss.max(1)).max(1);
    if seg.mss == 0 || count > MAX_SEGMENTS {
        return Err(SegmentError::BadMss { mss: seg.mss, payload: payload.len() });
    }
    let longest = hdr_len + seg.mss.min(payload.len());
    if longest - seg.l3 > 0xffff {
        return Err(SegmentError::TooLong(longest));
    }
    let ip_id = u16::from_be_bytes([frame[seg.l3 + 4], frame[seg.l3 + 5]]);
    let tcp_seq = match seg.proto {
        L4Proto::Tcp => {
            u32::from_be_bytes([frame[seg.l4 + 4], frame[seg.l4 + 5], frame[seg.l4 + 6], frame[seg.l4 + 7]])
        }
        L4Proto::Udp => 0,
    };
    let mut buf = Vec::with_capacity(longest);
    for i in 0..count {
        let start = i * seg.mss;
        let chunk = &payload[start.min(payload.len())..(start + seg.mss).min(payload.len())];
        buf.clear();
        buf.extend_from_slice(&frame[..hdr_len]);
        buf.extend_from_slice(chunk);
        let len = buf.len();
        let l3 = seg.l3;
        let l4 = seg.l4;
        if ipv4 {
            let ihl = usize::from(buf[l3] & 0x0f) * 4;
            buf[l3 + 2..l3 + 4].copy_from_slice(&((len - l3) as u16).to_be_bytes());
            buf[l3 + 4..l3 + 6].copy_from_slice(&ip_id.wrapping_add(i as u16).to_be_bytes());
            buf[l3 + 10..l3 + 12].fill(0);
            let c = checksum_finish(checksum_add(0, &buf[l3..l3 + ihl]));
            buf[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            buf[l3 + 4..l3 + 6].copy_from_slice(&((len - l3 - 40) as u16).to_be_bytes());
        }
        let (proto, csum_at) = match seg.proto {
            L4Proto::Tcp => {
                let seq = tcp_seq.wrapping_add(start as u32);
                buf[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
                if i + 1 < count {
                    buf[l4 + 13] &= !(TCP_FIN | TCP_PSH);
                }
                if i > 0 {
                    buf[l4 + 13] &= !TCP_CWR;
                }
                (IPPROTO_TCP, l4 + 16)
            }
            L4Proto::Udp => {
                buf[l4 + 4..l4 + 6].copy_from_slice(&((len - l4) as u16).to_be_bytes());
                (IPPROTO_UDP, l4 + 6)
            }
        };
        buf[csum_at..csum_at + 2].fill(0);
        let l4_len = (len - l4) as u64;
        let mut sum =
            if ipv4 { checksum_add(0, &buf[l3 + 12..l3 + 20]) } else { checksum_add(0, &buf[l3 + 8..l3 + 40]) };
        sum += u64::from(proto) + l4_len;
        sum = checksum_add(sum, &buf[l4..]);
        let mut c = checksum_finish(sum);
        if c == 0 && seg.proto == L4Proto::Udp {
            c = 0xffff;
        }
        buf[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        emit(&buf);
    }
    Ok(count)
}

/// What a received frame is, for receive checksum reporting: IPv4 (not a
/// fragment), and TCP or UDP inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxClass {
    /// An IPv4 packet (its header checksum can be vouched for).
    pub ipv4: bool,
    /// A whole TCP or UDP datagram (its checksum can be vouched for).
    pub tcp_udp: bool,
}

/// Classifies a frame for the guest.
pub fn classify(frame: &[u8]) -> RxClass {
    let Some((l3, ethertype)) = l3_offset(frame) else { return RxClass::default() };
    if ethertype != ETHERTYPE_IPV4 {
        return RxClass::default();
    }
    let Some(ip) = frame.get(l3..l3 + 20) else { return RxClass::default() };
    if ip[0] >> 4 != 4 {
        return RxClass::default();
    }
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    RxClass { ipv4: true, tcp_udp: !fragment && (ip[9] == IPPROTO_TCP || ip[9] == IPPROTO_UDP) }
}

/// Whether `l3`/`ethertype` name IPv6 (for the segmentation offloads' checks).
pub fn is_ipv6(ethertype: u16) -> bool {
    ethertype == ETHERTYPE_IPV6
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCP/IPv4 frame with `payload`, checksums complete.
    pub(crate) fn tcp4_frame(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[0..6].copy_from_slice(&[0x52, 0x55, 10, 0, 2, 2]);
        f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = IPPROTO_TCP;
        ip[12..16].copy_from_slice(&[10, 0, 2, 15]);
        ip[16..20].copy_from_slice(&[10, 0, 2, 2]);
        let tcp = &mut f[34..54];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        f.extend_from_slice(payload);
        let len = f.len();
        f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        let c = checksum_finish(checksum_add(0, &f[14..34]));
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let mut sum = checksum_add(0, &f[26..34]) + 6 + (len - 34) as u64;
        sum = checksum_add(sum, &f[34..]);
        let c = checksum_finish(sum);
        f[50..52].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// Whether the IPv4 and TCP/UDP checksums of a frame verify.
    pub(crate) fn checksums_ok(f: &[u8]) -> bool {
        let (l3, _) = l3_offset(f).unwrap();
        let ihl = usize::from(f[l3] & 15) * 4;
        if checksum_finish(checksum_add(0, &f[l3..l3 + ihl])) != 0 {
            return false;
        }
        let l4 = l3 + ihl;
        let mut sum = checksum_add(0, &f[l3 + 12..l3 + 20]) + u64::from(f[l3 + 9]) + (f.len() - l4) as u64;
        sum = checksum_add(sum, &f[l4..]);
        checksum_finish(sum) == 0
    }

    #[test]
    fn checksum_arithmetic() {
        // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum_finish(checksum_add(0, &data)), !0xddf2);
        assert_eq!(checksum_add(0, &[1]), 0x100);
        let long: Vec<u8> = (0..1001u32).map(|i| (i * 7) as u8).collect();
        let slow = long.chunks(2).map(|c| u64::from(c[0]) << 8 | u64::from(*c.get(1).unwrap_or(&0))).sum::<u64>();
        assert_eq!(checksum_finish(checksum_add(0, &long)), checksum_finish(slow));
    }

    #[test]
    fn inserts_checksums_within_bounds() {
        let mut f = tcp4_frame(b"hello", 0x18);
        assert!(checksums_ok(&f));
        // Replace the TCP checksum with the pseudo-header sum, as a guest does.
        let pseudo = checksum_add(0, &f[26..34]) + 6 + (f.len() - 34) as u64;
        let folded = !checksum_finish(pseudo);
        f[50..52].copy_from_slice(&folded.to_be_bytes());
        assert!(!checksums_ok(&f));
        assert!(insert_checksum(&mut f, 34, 50, None));
        assert!(checksums_ok(&f));
        // The IP header checksum over a bounded range.
        f[24..26].fill(0);
        assert!(insert_checksum(&mut f, 14, 24, Some(34)));
        assert!(checksums_ok(&f));
        let len = f.len();
        assert!(!insert_checksum(&mut f, 34, len - 1, None));
        assert!(!insert_checksum(&mut f, 34, 20, None), "field before start");
        assert!(!insert_checksum(&mut f, 40, 50, Some(30)));
        assert!(!insert_checksum(&mut f, usize::MAX, usize::MAX, None));
    }

    #[test]
    fn segments_a_large_tcp_send() {
        let payload: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        let f = tcp4_frame(&payload, 0x19); // FIN|PSH|ACK
        let seg = Segmentation { l3: 14, l4: 34, mss: 1460, proto: L4Proto::Tcp };
        let mut out = Vec::new();
        assert_eq!(segment(&f, &seg, &mut |s| out.push(s.to_vec())).unwrap(), 3);
        let mut joined = Vec::new();
        for (i, s) in out.iter().enumerate() {
            assert!(checksums_ok(s), "segment {i}");
            let seq = u32::from_be_bytes(s[38..42].try_into().unwrap());
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add(i as u32 * 1460), "sequence wraps");
            assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x1234 + i as u16);
            assert_eq!(usize::from(u16::from_be_bytes([s[16], s[17]])), s.len() - 14);
            let last = i == 2;
            assert_eq!(s[47] & (TCP_FIN | TCP_PSH) != 0, last);
            joined.extend_from_slice(&s[54..]);
        }
        assert_eq!(joined, payload);
        assert_eq!(out[0].len(), 54 + 1460);
        assert_eq!(out[2].len(), 54 + 4000 - 2920);
        // A send without payload is one segment.
        let f = tcp4_frame(&[], 0x10);
        assert_eq!(segment(&f, &seg, &mut |s| assert!(checksums_ok(s))).unwrap(), 1);
    }

    #[test]
    fn hostile_segmentation_requests_are_refused() {
        let f = tcp4_frame(&[0u8; 100], 0x10);
        let ok = Segmentation { l3: 14, l4: 34, mss: 10, proto: L4Proto::Tcp };
        let n = std::cell::Cell::new(0);
        let mut count = |_: &[u8]| n.set(n.get() + 1);
        assert!(segment(&f, &Segmentation { mss: 0, ..ok }, &mut count).is_err());
        assert!(segment(&f, &Segmentation { l3: 200, ..ok }, &mut count).is_err());
        assert!(segment(&f, &Segmentation { l4: 20, ..ok }, &mut count).is_err());
        assert!(segment(&f, &Segmentation { l4: f.len(), ..ok }, &mut count).is_err());
        assert!(segment(&f[..40], &ok, &mut count).is_err());
        let mut bad_doff = f.clone();
        bad_doff[46] = 0x10;
        assert!(segment(&bad_doff, &ok, &mut count).is_err());
        let mut bad_ver = f.clone();
        bad_ver[14] = 0x55;
        assert!(segment(&bad_ver, &ok, &mut count).is_err());
        assert_eq!(n.get(), 0);
        assert_eq!(segment(&f, &ok, &mut count).unwrap(), 10);
        // UDP segmentation gives datagrams with their own lengths.
        let mut u = f.clone();
        u[23] = IPPROTO_UDP;
        let useg = Segmentation { proto: L4Proto::Udp, mss: 60, ..ok };
        let mut lens = Vec::new();
        segment(&u, &useg, &mut |s| {
            assert!(checksums_ok(s));
            lens.push(u16::from_be_bytes([s[38], s[39]]));
        })
        .unwrap();
        assert_eq!(lens, vec![68, 60], "112 bytes after the 8-byte UDP header: 60 + 52");
    }

    #[test]
    fn classifies_received_frames() {
        let f = tcp4_frame(b"x", 0x10);
        assert_eq!(classify(&f), RxClass { ipv4: true, tcp_udp: true });
        let mut frag = f.clone();
        frag[20] = 0x20; // MF
        assert_eq!(classify(&frag), RxClass { ipv4: true, tcp_udp: false });
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(classify(&arp), RxClass::default());
        assert_eq!(classify(&f[..20]), RxClass::default());
        assert_eq!(classify(&[]), RxClass::default());
        let mut vlan = f[..12].to_vec();
        vlan.extend_from_slice(&[0x81, 0, 0, 5]);
        vlan.extend_from_slice(&f[12..]);
        assert_eq!(l3_offset(&vlan), Some((18, ETHERTYPE_IPV4)));
        assert!(classify(&vlan).tcp_udp);
        assert!(is_ipv6(0x86dd));
    }
}
