//! The fuzzing entry point: arbitrary bytes as guest frames into a NAT.
//!
//! The NAT under fuzz runs with `restrict=on` and no DNS upstream, so no
//! input can make it open a connection anywhere: every frame stays inside
//! the filter, DHCP, DNS (SERVFAIL), ICMP to the gateway, NDP and router
//! advertisements, and the RST paths (IPv4 and IPv6 alike).

use std::time::{Duration, Instant};

use crate::{DnsUpstream, NetBackend, UserNet, UserNetConfig};

/// Feeds `data` to a fresh restricted NAT as a series of frames and polls it.
/// Layout: repeated `[len_hi, len_lo, frame...]`; a short tail is one frame.
/// Panics only if the NAT does.
pub fn fuzz_frame(data: &[u8]) {
    let cfg = UserNetConfig { restrict: true, dns_upstream: DnsUpstream::Disabled, ..UserNetConfig::default() };
    let Ok(mut nat) = UserNet::new(cfg) else { return };
    let mut rest = data;
    let mut t = Instant::now();
    let mut buf = [0u8; 2048];
    for _ in 0..64 {
        if rest.is_empty() {
            break;
        }
        let frame = if rest.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let body = &rest[2..];
            let n = len.min(body.len());
            rest = &body[n..];
            &body[..n]
        } else {
            let f = rest;
            rest = &[];
            f
        };
        nat.send(frame);
        t += Duration::from_millis(3);
        nat.poll(t);
        while nat.recv(&mut buf).is_some() {}
    }
    nat.poll(t + Duration::from_secs(120));
}
