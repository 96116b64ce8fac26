//! Receive-side coalescing: consecutive TCP/IPv4 segments of one flow,
//! merged into one large packet for a guest that takes GSO packets
//! (virtio-net's GUEST_TSO4). The guest's stack then handles one packet
//! where it would have handled dozens: one buffer walk, one trip up the
//! IP and TCP layers, one acknowledgement.
//!
//! The rules are those of Linux's GRO for TCP (`tcp_gro_receive`), so the
//! merged packet means exactly what its segments meant:
//!
//! ```text
//! Ethernet  the same 14 bytes (addresses, type IPv4, no VLAN tag)
//! IPv4      no options, not a fragment, the same addresses, TOS, TTL and DF
//! TCP       the same ports, acknowledgement, window and options (byte for
//!           byte); flags ACK, plus PSH on the last segment only; the
//!           sequence number continues the run; every segment but the last
//!           carries exactly the first one's payload length (the MSS)
//! ```
//!
//! The merged packet keeps the first segment's headers, with the IPv4 total
//! length and header checksum redone and PSH set if the last segment had it.
//! The TCP checksum is not redone: the device marks the packet's checksum
//! as verified (it was: the NAT built the segments), and the guest reads
//! `gso_size` as the sender's MSS.

use super::offload::{checksum_add, checksum_finish, ETH_HLEN};

const IP_HLEN: usize = 20;
const TCP_HLEN: usize = 20;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// The largest packet IPv4 can describe (its total length is 16 bits).
pub const MAX_MERGED_IP_LEN: usize = 65535;

/// Offsets into a frame (Ethernet, IPv4 without options, TCP).
const IP: usize = ETH_HLEN;
const TCP: usize = ETH_HLEN + IP_HLEN;

/// A run of segments being merged into one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Ethernet + IPv4 + TCP header length (options included).
    hdr_len: usize,
    /// The first segment's payload length: every segment but the last has it.
    mss: usize,
    /// The sequence number the next segment must start at.
    next_seq: u32,
    /// Segments merged so far.
    segments: u32,
    /// The last segment merged carried PSH or was short: nothing may follow.
    closed: bool,
}

/// The TCP/IPv4 header length of `frame` if it is a segment that may be
/// merged (see the module documentation), else `None`.
fn mergeable(frame: &[u8]) -> Option<(usize, usize)> {
    if frame.len() < TCP + TCP_HLEN || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[IP..];
    // Version 4, no options; not a fragment (MF clear, offset 0); TCP.
    if ip[0] != 0x45 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 || ip[9] != 6 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total < IP_HLEN + TCP_HLEN || ETH_HLEN + total > frame.len() {
        return None;
    }
    let tcp = &frame[TCP..];
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < TCP_HLEN || IP_HLEN + doff > total {
        return None;
    }
    // ACK, optionally PSH; no SYN, FIN, RST, URG, ECE or CWR; no reserved bits.
    if tcp[12] & 0x0f != 0 || tcp[13] & !TCP_PSH != TCP_ACK {
        return None;
    }
    let payload = total - IP_HLEN - doff;
    (payload > 0).then_some((TCP + doff, payload))
}

fn seq(frame: &[u8]) -> u32 {
    u32::from_be_bytes([frame[TCP + 4], frame[TCP + 5], frame[TCP + 6], frame[TCP + 7]])
}

impl Run {
    /// Starts a run at `frame`, which becomes the packet's head; `None` if
    /// the frame is not a TCP/IPv4 data segment that may head one.
    pub fn start(frame: &[u8]) -> Option<Run> {
        let (hdr_len, payload) = mergeable(frame)?;
        let psh = frame[TCP + 13] & TCP_PSH != 0;
        Some(Run { hdr_len, mss: payload, next_seq: seq(frame).wrapping_add(payload as u32), segments: 1, closed: psh })
    }

    /// Segments merged so far.
    pub fn segments(&self) -> u32 {
        self.segments
    }

    /// Appends `frame`'s payload to `packet` (the run so far, as built from
    /// [`Run::start`]'s frame) if `frame` continues the run and the packet
    /// stays within `limit` bytes and what IPv4 can describe. False leaves
    /// both unchanged.
    pub fn push(&mut self, packet: &mut Vec<u8>, frame: &[u8], limit: usize) -> bool {
        if self.closed {
            return false;
        }
        let Some((hdr_len, payload)) = mergeable(frame) else { return false };
        let merged_ip_len = packet.len() - ETH_HLEN + payload;
        if hdr_len != self.hdr_len
            || payload > self.mss
            || seq(frame) != self.next_seq
            || packet.len() + payload > limit
            || merged_ip_len > MAX_MERGED_IP_LEN
        {
            return false;
        }
        let (head, seg) = (&packet[..hdr_len], &frame[..hdr_len]);
        let same = |r: std::ops::Range<usize>| head[r.clone()] == seg[r];
        // Ethernet; IP TOS; IP flags, TTL, protocol; addresses; ports;
        // acknowledgement; offset; window; urgent pointer and options.
        if !(same(0..IP + 2)
            && same(IP + 6..IP + 10)
            && same(IP + 12..TCP + 4)
            && same(TCP + 8..TCP + 13)
            && same(TCP + 14..TCP + 16)
            && same(TCP + 18..hdr_len))
        {
            return false;
        }
        packet.extend_from_slice(&frame[hdr_len..hdr_len + payload]);
        self.next_seq = self.next_seq.wrapping_add(payload as u32);
        self.segments += 1;
        if frame[TCP + 13] & TCP_PSH != 0 {
            packet[TCP + 13] |= TCP_PSH;
            self.closed = true;
        }
        if payload < self.mss {
            self.closed = true;
        }
        true
    }

    /// Completes the merged packet's headers (IPv4 total length and header
    /// checksum). Returns the GSO size and header length for the packet
    /// header, or `None` when nothing was merged (the packet is the one
    /// segment, unchanged).
    pub fn finish(&self, packet: &mut [u8]) -> Option<(u16, u16)> {
        if self.segments < 2 {
            return None;
        }
        let ip_len = u16::try_from(packet.len() - ETH_HLEN).ok()?;
        packet[IP + 2..IP + 4].copy_from_slice(&ip_len.to_be_bytes());
        packet[IP + 10..IP + 12].fill(0);
        let sum = checksum_finish(checksum_add(0, &packet[IP..IP + IP_HLEN]));
        packet[IP + 10..IP + 12].copy_from_slice(&sum.to_be_bytes());
        Some((self.mss as u16, self.hdr_len as u16))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCP/IPv4 segment (10.0.2.2:80 to 10.0.2.15:40000) with a valid IP checksum.
    pub(crate) fn segment(seq: u32, payload: &[u8], flags: u8, options: &[u8]) -> Vec<u8> {
        let doff = TCP_HLEN + options.len();
        let total = IP_HLEN + doff + payload.len();
        let mut f = vec![0u8; ETH_HLEN + total];
        f[0..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        f[6..12].copy_from_slice(&[0x52, 0x55, 10, 0, 2, 2]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[IP..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 2, 2]);
        ip[16..20].copy_from_slice(&[10, 0, 2, 15]);
        let sum = checksum_finish(checksum_add(0, &ip[..IP_HLEN]));
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let tcp = &mut f[TCP..];
        tcp[0..2].copy_from_slice(&80u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&7u32.to_be_bytes());
        tcp[12] = ((doff / 4) as u8) << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&8192u16.to_be_bytes());
        tcp[20..20 + options.len()].copy_from_slice(options);
        f[TCP + doff..].copy_from_slice(payload);
        f
    }

    pub(crate) const TCP_ACK_ONLY: u8 = TCP_ACK;
    pub(crate) const TCP_ACK_PSH: u8 = TCP_ACK | TCP_PSH;
    const NOP_NOP_TS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];

    #[test]
    fn contiguous_segments_merge_into_one_packet_with_fixed_headers() {
        let a = segment(1000, &[1; 100], TCP_ACK, &NOP_NOP_TS);
        let b = segment(1100, &[2; 100], TCP_ACK, &NOP_NOP_TS);
        let c = segment(1200, &[3; 40], TCP_ACK | TCP_PSH, &NOP_NOP_TS);
        let mut run = Run::start(&a).expect("a data segment heads a run");
        let mut packet = a.clone();
        assert!(run.push(&mut packet, &b, 65536));
        assert!(run.push(&mut packet, &c, 65536));
        assert_eq!(run.segments(), 3);
        let hdr_len = ETH_HLEN + IP_HLEN + TCP_HLEN + 12;
        assert_eq!(run.finish(&mut packet), Some((100, hdr_len as u16)));
        assert_eq!(packet.len(), hdr_len + 240);
        assert_eq!(&packet[hdr_len..hdr_len + 100], &[1; 100][..]);
        assert_eq!(&packet[hdr_len + 200..], &[3; 40][..]);
        let ip_len = u16::from_be_bytes([packet[IP + 2], packet[IP + 3]]);
        assert_eq!(usize::from(ip_len), packet.len() - ETH_HLEN);
        assert_eq!(checksum_finish(checksum_add(0, &packet[IP..IP + IP_HLEN])), 0, "IP checksum verifies");
        assert_ne!(packet[TCP + 13] & TCP_PSH, 0, "PSH of the last segment");
        assert_eq!(&packet[TCP + 4..TCP + 8], &1000u32.to_be_bytes(), "the first segment's sequence number");
    }

    #[test]
    fn nothing_follows_a_push_or_a_short_segment() {
        let a = segment(0, &[0; 50], TCP_ACK | TCP_PSH, &[]);
        let b = segment(50, &[0; 50], TCP_ACK, &[]);
        let mut run = Run::start(&a).unwrap();
        let mut packet = a.clone();
        assert!(!run.push(&mut packet, &b, 65536));
        assert_eq!(run.finish(&mut packet), None, "a run of one is left as it was");
        assert_eq!(packet, a);

        let a = segment(0, &[0; 50], TCP_ACK, &[]);
        let short = segment(50, &[0; 20], TCP_ACK, &[]);
        let c = segment(70, &[0; 50], TCP_ACK, &[]);
        let mut run = Run::start(&a).unwrap();
        let mut packet = a.clone();
        assert!(run.push(&mut packet, &short, 65536));
        assert!(!run.push(&mut packet, &c, 65536));
        let longer = segment(50, &[0; 60], TCP_ACK, &[]);
        let mut run = Run::start(&a).unwrap();
        let mut packet = a.clone();
        assert!(!run.push(&mut packet, &longer, 65536), "longer than the MSS");
    }

    #[test]
    fn segments_that_differ_are_not_merged() {
        let a = segment(0, &[0; 50], TCP_ACK, &NOP_NOP_TS);
        let next = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = segment(50, &[0; 50], TCP_ACK, &NOP_NOP_TS);
            f(&mut b);
            let mut run = Run::start(&a).unwrap();
            let mut packet = a.clone();
            let merged = run.push(&mut packet, &b, 65536);
            if !merged {
                assert_eq!(packet, a, "a refused segment leaves the packet alone");
            }
            merged
        };
        assert!(next(&|_| {}), "the control case merges");
        assert!(!next(&|b| b[TCP + 4..TCP + 8].copy_from_slice(&51u32.to_be_bytes())), "a gap in sequence");
        assert!(!next(&|b| b[TCP + 8] ^= 1), "another acknowledgement");
        assert!(!next(&|b| b[TCP + 14] ^= 1), "another window");
        assert!(!next(&|b| b[TCP + 31] ^= 1), "another timestamp");
        assert!(!next(&|b| b[TCP] ^= 1), "another source port");
        assert!(!next(&|b| b[IP + 15] ^= 1), "another source address");
        assert!(!next(&|b| b[IP + 8] ^= 1), "another TTL");
        assert!(!next(&|b| b[IP + 1] ^= 4), "another TOS");
        assert!(!next(&|b| b[0] ^= 1), "another destination MAC");
        assert!(!next(&|b| b[TCP + 13] |= 0x01), "FIN");
        assert!(!next(&|b| b[TCP + 13] |= 0x40), "ECE");
        assert!(!next(&|b| b[IP + 6] |= 0x20), "a fragment");
        assert!(next(&|b| b[IP + 4] ^= 0xff), "the identification may differ");
    }

    #[test]
    fn only_data_segments_of_tcp_over_ipv4_start_a_run() {
        assert!(Run::start(&segment(0, &[], TCP_ACK, &[])).is_none(), "a pure ACK");
        assert!(Run::start(&segment(0, &[1], 0x02, &[])).is_none(), "a SYN");
        let mut udp = segment(0, &[1; 10], TCP_ACK, &[]);
        udp[IP + 9] = 17;
        assert!(Run::start(&udp).is_none());
        let mut options = segment(0, &[1; 10], TCP_ACK, &[]);
        options[IP] = 0x46;
        assert!(Run::start(&options).is_none(), "IP options");
        let mut vlan = segment(0, &[1; 10], TCP_ACK, &[]);
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        assert!(Run::start(&vlan).is_none());
        let mut lying = segment(0, &[1; 10], TCP_ACK, &[]);
        lying[IP + 2..IP + 4].copy_from_slice(&2000u16.to_be_bytes());
        assert!(Run::start(&lying).is_none(), "a total length past the frame");
        let mut doff = segment(0, &[1; 10], TCP_ACK, &[]);
        doff[TCP + 12] = 0xf0;
        assert!(Run::start(&doff).is_none(), "a data offset past the packet");
        for n in 0..TCP + TCP_HLEN {
            assert!(Run::start(&segment(0, &[1; 10], TCP_ACK, &[])[..n]).is_none(), "truncated to {n}");
        }
    }

    #[test]
    fn the_packet_stays_within_the_limit_and_what_ipv4_describes() {
        let a = segment(0, &[0; 1000], TCP_ACK, &[]);
        let b = segment(1000, &[0; 1000], TCP_ACK, &[]);
        let mut run = Run::start(&a).unwrap();
        let mut packet = a.clone();
        assert!(!run.push(&mut packet, &b, a.len() + 999));
        assert!(run.push(&mut packet, &b, a.len() + 1000));
        let mut run = Run::start(&a).unwrap();
        let mut packet = a.clone();
        let mut seq = 1000;
        while run.push(&mut packet, &segment(seq, &[0; 1000], TCP_ACK, &[]), usize::MAX) {
            seq += 1000;
        }
        assert!(packet.len() - ETH_HLEN <= MAX_MERGED_IP_LEN);
        assert_eq!(run.segments(), 65, "65 segments of 1000 bytes and their 40 header bytes fit 65535");
    }
}
