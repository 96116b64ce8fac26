//! Helpers for NIC models whose guests offload checksums.
//!
//! virtio-net (`VIRTIO_NET_F_CSUM`, `VIRTIO_NET_HDR_F_NEEDS_CSUM`) and the
//! e1000 TCP/UDP context descriptors (TUCSS/TUCSO) both hand over a frame
//! whose layer-4 checksum field holds only the pseudo-header sum: the device
//! sums from a start offset to the end of the frame and stores the result at
//! a given offset. Backends expect complete checksums, so the NIC model calls
//! [`fill_partial_checksum`] before [`NetBackend::send`](crate::NetBackend::send).

/// Completes a partial checksum: sums `frame[start..]` (the field at
/// `start + offset` already holding the pseudo-header sum) and stores the
/// one's-complement result there. A result of 0 is stored as 0xffff, which
/// TCP accepts and UDP requires. Returns false, leaving the frame unchanged,
/// when the offsets do not fit the frame.
pub fn fill_partial_checksum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(at) = start.checked_add(offset) else { return false };
    if start > frame.len() || at.checked_add(2).is_none_or(|end| end > frame.len()) {
        return false;
    }
    let mut sum: u32 = 0;
    let mut chunks = frame[start..].chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut csum = !(sum as u16);
    if csum == 0 {
        csum = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, UdpPacket};
    use std::net::{Ipv4Addr, SocketAddrV4};

    #[test]
    fn completes_a_udp_checksum_from_the_pseudo_header_sum() {
        let eth = smoltcp::wire::EthernetAddress([2, 0, 0, 0, 0, 1]);
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 4000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 53);
        let mut f = crate::frame::build_udp(eth, eth, src, dst, b"some payload!");
        let l4 = 14 + 20;
        let want = u16::from_be_bytes([f[l4 + 6], f[l4 + 7]]);
        // What a guest hands over: the pseudo-header sum, not complemented.
        let pseudo = {
            let p = Ipv4Packet::new_checked(&f[14..]).unwrap();
            let len = p.payload().len() as u16;
            smoltcp::wire::checksum::pseudo_header_v4(&p.src_addr(), &p.dst_addr(), IpProtocol::Udp, u32::from(len))
        };
        f[l4 + 6..l4 + 8].copy_from_slice(&pseudo.to_be_bytes());
        assert!(fill_partial_checksum(&mut f, l4, 6));
        assert_eq!(u16::from_be_bytes([f[l4 + 6], f[l4 + 7]]), want);
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&IpAddress::Ipv4(*src.ip()), &IpAddress::Ipv4(*dst.ip())));
        // Offsets past the end are refused.
        let len = f.len();
        assert!(!fill_partial_checksum(&mut f, len, 0));
        assert!(!fill_partial_checksum(&mut f, l4, usize::MAX));
        assert!(!fill_partial_checksum(&mut f, len - 1, 0));
    }
}
