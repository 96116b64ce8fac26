//! IPv6 in the NAT, as libslirp has it: stateless autoconfiguration from
//! router advertisements, NDP for the NAT's own addresses, ICMPv6 echo,
//! and TCP and UDP relayed through host IPv6 sockets.
//!
//! The NAT's IPv6 addresses: the gateway's link-local fe80::2 (router
//! advertisements come from it), the gateway `ipv6-host` (fec0::2) and the
//! DNS forwarder `ipv6-dns` (fec0::3), all with the gateway's MAC.
//!
//! Router advertisements (RFC 4861 §4.2, values as libslirp's): current
//! hop limit 64, no M/O flags, router lifetime 1800 s, the prefix with the
//! on-link and autonomous flags (valid 86400 s, preferred 14400 s), the
//! gateway's MAC as source link-layer address, the MTU when the configured
//! one ([`UserNetConfig::mtu`](crate::UserNetConfig::mtu)) is in 1280..1500,
//! and RDNSS (RFC 8106) naming the DNS address for 1200 s (twice the
//! longest interval between advertisements). One answers every router
//! solicitation; unsolicited ones go out from the first IPv6 frame of the
//! guest on, three 4 s apart, then every 200-600 s. All go to ff02::1.
//!
//! Neighbor solicitations for the NAT's addresses are answered (router,
//! solicited and override flags, the gateway's MAC as target link-layer
//! address), duplicate address detection probes for them too (to ff02::1);
//! probes for other addresses are none of the NAT's business. The guest's
//! MAC is learned from the link-layer options of its NDP messages and from
//! its traffic. A frame for a guest address whose MAC is not known waits
//! while neighbor solicitations ask for it (three, 1 s apart).
//!
//! NDP messages need hop limit 255 (RFC 4861 §6.1, §7.1); ICMPv6, TCP and
//! UDP checksums are verified (a UDP checksum of zero is refused).
//!
//! TCP and UDP to the gateway reach the host's ::1, or 127.0.0.1 when ::1
//! refuses (no listener there, or no IPv6 on the host); to other addresses
//! outside the prefix, those addresses through host IPv6 sockets. Port
//! forwards (`hostfwd=`) and TFTP stay IPv4.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::phy::{ChecksumCapabilities, Medium};
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv6Message, Icmpv6Packet, Icmpv6Repr, IpProtocol, NdiscNeighborFlags,
    NdiscPrefixInfoFlags, NdiscPrefixInformation, NdiscRepr, NdiscRouterFlags, RawHardwareAddress,
};

use super::{dns, UserNet, GUEST_MACS};
use crate::config::is_link_local6;
use crate::frame::{self, Drop, Eth, Ip6};

/// The gateway's link-local address.
pub(crate) const LINK_LOCAL_GW: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// The hop limit of NDP messages, sent and accepted.
const NDP_HOP_LIMIT: u8 = 255;
/// The hop limit of the NAT's other IPv6 packets.
const HOP_LIMIT: u8 = 64;

/// Router advertisement fields (libslirp's NDP_Adv* values).
const RA_CUR_HOP_LIMIT: u8 = 64;
const RA_ROUTER_LIFETIME: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(1800);
const PREFIX_VALID_LIFETIME: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(86400);
const PREFIX_PREFERRED_LIFETIME: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(14400);
/// The RDNSS option (RFC 8106 §5.1): type, and lifetime in seconds.
const OPT_RDNSS: u8 = 25;
const RDNSS_LIFETIME: u32 = 1200;
/// Unsolicited advertisements: the first few this far apart, then at a
/// random interval in libslirp's range.
const INITIAL_RAS: u32 = 3;
const INITIAL_RA_INTERVAL: Duration = Duration::from_secs(4);
const MIN_RA_INTERVAL: u64 = 200;
const MAX_RA_INTERVAL: u64 = 600;

/// Neighbor solicitations for a guest address before its frames are dropped.
const NS_TRIES: u32 = 3;
const NS_INTERVAL: Duration = Duration::from_secs(1);
/// Bounds on the frames waiting for a guest's MAC.
const PENDING_ADDRS: usize = 16;
const PENDING_FRAMES: usize = 16;

/// Frames for one guest address whose MAC is being asked for.
struct Pending {
    frames: Vec<Vec<u8>>,
    /// Solicitations sent.
    tries: u32,
    next: Instant,
}

/// Router advertisement timing and address resolution towards the guest.
pub(crate) struct Ndp {
    /// When the next unsolicited advertisement is due; `None` until the
    /// guest speaks IPv6.
    ra_next: Option<Instant>,
    ra_count: u32,
    rng: u64,
    pending: HashMap<Ipv6Addr, Pending>,
    pub router_adverts: u64,
    pub unresolved: u64,
}

impl Ndp {
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x6e64_7000);
        Ndp { ra_next: None, ra_count: 0, rng: seed | 1, pending: HashMap::new(), router_adverts: 0, unresolved: 0 }
    }

    /// The guest spoke IPv6: unsolicited advertisements start.
    fn start(&mut self, now: Instant) {
        if self.ra_next.is_none() {
            self.ra_next = Some(now);
        }
    }

    /// An advertisement went out at `now`: the next unsolicited one is due
    /// after the initial interval, or a random one later.
    fn advertised(&mut self, now: Instant) {
        self.router_adverts += 1;
        self.ra_count = self.ra_count.saturating_add(1);
        let wait = if self.ra_count < INITIAL_RAS {
            INITIAL_RA_INTERVAL
        } else {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            Duration::from_secs(MIN_RA_INTERVAL + self.rng % (MAX_RA_INTERVAL - MIN_RA_INTERVAL))
        };
        self.ra_next = Some(now + wait);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next).chain(self.ra_next).min()
    }
}

/// The Ethernet address in an NDP link-layer address option.
fn option_mac(lladdr: RawHardwareAddress) -> Result<EthernetAddress, Drop> {
    match lladdr.parse(Medium::Ethernet) {
        Ok(HardwareAddress::Ethernet(mac)) if mac.is_unicast() => Ok(mac),
        _ => Err(Drop::Malformed),
    }
}

impl UserNet {
    /// Whether `a` is one of the NAT's IPv6 addresses.
    pub(super) fn is_ours6(&self, a: Ipv6Addr) -> bool {
        a == LINK_LOCAL_GW || a == self.cfg.ipv6_host || a == self.cfg.ipv6_dns
    }

    /// A valid guest source address for traffic out: in the prefix, not
    /// the NAT's, not the subnet-router anycast address.
    pub(super) fn is_guest_addr6(&self, a: Ipv6Addr) -> bool {
        self.cfg.contains6(a) && !self.is_ours6(a) && a != self.cfg.ipv6_net && !a.is_multicast()
    }

    /// A guest address on the link: in the prefix or link-local.
    pub(super) fn is_guest_link_addr6(&self, a: Ipv6Addr) -> bool {
        self.is_guest_addr6(a) || (is_link_local6(a) && a != LINK_LOCAL_GW)
    }

    fn guest_mac6(&self, ip: Ipv6Addr) -> Option<EthernetAddress> {
        self.guest_macs6.get(&ip).map(|e| e.0)
    }

    pub(super) fn guest_ipv6(&mut self, f: &[u8], eth: &Eth<'_>, now: Instant) -> Result<(), Drop> {
        let ip = frame::parse_ipv6(eth.payload)?;
        if ip.src.is_multicast() {
            return Err(Drop::Malformed);
        }
        // The Ethernet destination must be the one the IP destination maps to.
        let want = if ip.dst.is_multicast() { frame::ipv6_multicast_mac(ip.dst) } else { self.gw_mac };
        if eth.dst != want {
            return Err(Drop::NotForUs);
        }
        self.ndp.start(now);
        if ip.proto == IpProtocol::Icmpv6 {
            return self.guest_icmpv6(eth, &ip, now);
        }
        if ip.proto != IpProtocol::Udp && ip.proto != IpProtocol::Tcp {
            return Err(Drop::NotForUs);
        }
        if ip.dst.is_multicast() {
            return Err(Drop::NotForUs);
        }
        if !self.is_guest_addr6(ip.src) {
            return Err(Drop::Policy);
        }
        if ip.proto == IpProtocol::Udp {
            let udp = frame::parse_udp6(&ip)?;
            self.learn6(ip.src, eth.src, now, false);
            let guest = SocketAddr::new(ip.src.into(), udp.src_port);
            if ip.dst == self.cfg.ipv6_dns {
                if udp.dst_port != dns::DNS_PORT {
                    return Err(Drop::NotForUs);
                }
                self.dns_query(guest, udp.payload, now);
                return Ok(());
            }
            return self.udp_relay(guest, ip.dst.into(), udp.dst_port, udp.payload, now);
        }
        let seg = frame::parse_tcp6(&ip)?;
        self.learn6(ip.src, eth.src, now, false);
        // smoltcp takes the segment: without extension headers, which it
        // would answer with a parameter problem.
        let f = frame::without_ipv6_ext(f, &ip);
        self.guest_tcp(&f, eth, ip.src.into(), ip.dst.into(), &seg, now)
    }

    fn guest_icmpv6(&mut self, eth: &Eth<'_>, ip: &Ip6<'_>, now: Instant) -> Result<(), Drop> {
        let pkt = Icmpv6Packet::new_checked(ip.payload).map_err(|_| Drop::Malformed)?;
        if !pkt.verify_checksum(&ip.src, &ip.dst) {
            return Err(Drop::Checksum);
        }
        match pkt.msg_type() {
            Icmpv6Message::EchoRequest
            | Icmpv6Message::RouterSolicit
            | Icmpv6Message::NeighborSolicit
            | Icmpv6Message::NeighborAdvert => {}
            // MLD reports, the guest's own router advertisements, redirects, errors.
            _ => return Err(Drop::NotForUs),
        }
        let repr =
            Icmpv6Repr::parse(&ip.src, &ip.dst, &pkt, &ChecksumCapabilities::ignored()).map_err(|_| Drop::Malformed)?;
        match repr {
            Icmpv6Repr::EchoRequest { ident, seq_no, data } => self.guest_echo6(eth, ip, ident, seq_no, data, now),
            Icmpv6Repr::Ndisc(ndisc) => {
                if ip.hop_limit != NDP_HOP_LIMIT {
                    return Err(Drop::Malformed);
                }
                match ndisc {
                    NdiscRepr::RouterSolicit { lladdr } => self.guest_rs(eth, ip, lladdr, now),
                    NdiscRepr::NeighborSolicit { target_addr, lladdr } => {
                        self.guest_ns(eth, ip, target_addr, lladdr, now)
                    }
                    NdiscRepr::NeighborAdvert { flags, target_addr, lladdr } => {
                        self.guest_na(eth, ip, flags, target_addr, lladdr, now)
                    }
                    _ => Err(Drop::NotForUs),
                }
            }
            _ => Err(Drop::NotForUs),
        }
    }

    fn guest_echo6(
        &mut self,
        eth: &Eth<'_>,
        ip: &Ip6<'_>,
        ident: u16,
        seq_no: u16,
        data: &[u8],
        now: Instant,
    ) -> Result<(), Drop> {
        if ip.dst.is_multicast() {
            return Err(Drop::NotForUs);
        }
        if self.is_ours6(ip.dst) {
            if !self.is_guest_link_addr6(ip.src) {
                return Err(Drop::Policy);
            }
            self.learn6(ip.src, eth.src, now, false);
            let reply = Icmpv6Repr::EchoReply { ident, seq_no, data };
            let f = frame::build_icmpv6(self.gw_mac, eth.src, ip.dst, ip.src, HOP_LIMIT, &reply, &[]);
            self.queue_guest(f);
            return Ok(());
        }
        if !self.is_guest_addr6(ip.src) {
            return Err(Drop::Policy);
        }
        self.learn6(ip.src, eth.src, now, false);
        self.echo_relay(ip.src.into(), ip.dst.into(), ident, seq_no, data, now)
    }

    /// An echo reply from a host ICMPv6 socket.
    pub(super) fn echo6_to_guest(
        &mut self,
        from: Ipv6Addr,
        guest: Ipv6Addr,
        ident: u16,
        seq_no: u16,
        data: &[u8],
        now: Instant,
    ) {
        let reply = Icmpv6Repr::EchoReply { ident, seq_no, data };
        let f = frame::build_icmpv6(self.gw_mac, EthernetAddress([0; 6]), from, guest, HOP_LIMIT, &reply, &[]);
        self.deliver6(guest, f, now);
    }

    /// A router solicitation: answered with an advertisement to all nodes.
    fn guest_rs(
        &mut self,
        eth: &Eth<'_>,
        ip: &Ip6<'_>,
        lladdr: Option<RawHardwareAddress>,
        now: Instant,
    ) -> Result<(), Drop> {
        if ip.dst != ALL_ROUTERS && !self.is_ours6(ip.dst) {
            return Err(Drop::NotForUs);
        }
        if ip.src.is_unspecified() {
            // RFC 4861 §6.1.1: no link-layer option without a source address.
            if lladdr.is_some() {
                return Err(Drop::Malformed);
            }
        } else {
            if !self.is_guest_link_addr6(ip.src) {
                return Err(Drop::Policy);
            }
            let mac = lladdr.map(option_mac).transpose()?.unwrap_or(eth.src);
            self.learn6(ip.src, mac, now, false);
        }
        self.send_router_advert(now);
        Ok(())
    }

    /// A neighbor solicitation: answered for the NAT's own addresses.
    fn guest_ns(
        &mut self,
        eth: &Eth<'_>,
        ip: &Ip6<'_>,
        target: Ipv6Addr,
        lladdr: Option<RawHardwareAddress>,
        now: Instant,
    ) -> Result<(), Drop> {
        if target.is_multicast() {
            return Err(Drop::Malformed);
        }
        if ip.dst.is_multicast() && ip.dst != frame::solicited_node(target) {
            return Err(Drop::NotForUs);
        }
        let mut flags = NdiscNeighborFlags::ROUTER | NdiscNeighborFlags::OVERRIDE;
        let (dst, dst_mac) = if ip.src.is_unspecified() {
            // Duplicate address detection (RFC 4862 §5.4.3): to the
            // solicited-node address, with no link-layer option.
            if lladdr.is_some() || !ip.dst.is_multicast() {
                return Err(Drop::Malformed);
            }
            if !self.is_ours6(target) {
                // Another node's probe (the guest's own addresses among them).
                return Err(Drop::NotForUs);
            }
            (ALL_NODES, frame::ipv6_multicast_mac(ALL_NODES))
        } else {
            if !self.is_ours6(target) {
                return Err(Drop::NotForUs);
            }
            if !self.is_guest_link_addr6(ip.src) {
                return Err(Drop::Policy);
            }
            let mac = lladdr.map(option_mac).transpose()?.unwrap_or(eth.src);
            self.learn6(ip.src, mac, now, false);
            flags |= NdiscNeighborFlags::SOLICITED;
            (ip.src, mac)
        };
        let na = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags,
            target_addr: target,
            lladdr: Some(RawHardwareAddress::from(self.gw_mac)),
        });
        let f = frame::build_icmpv6(self.gw_mac, dst_mac, target, dst, NDP_HOP_LIMIT, &na, &[]);
        self.queue_guest(f);
        Ok(())
    }

    /// A neighbor advertisement of the guest: its MAC is learned, and
    /// smoltcp is told.
    fn guest_na(
        &mut self,
        eth: &Eth<'_>,
        ip: &Ip6<'_>,
        flags: NdiscNeighborFlags,
        target: Ipv6Addr,
        lladdr: Option<RawHardwareAddress>,
        now: Instant,
    ) -> Result<(), Drop> {
        // RFC 4861 §7.1.2.
        if target.is_multicast() || ip.src.is_unspecified() {
            return Err(Drop::Malformed);
        }
        if ip.dst.is_multicast() && flags.contains(NdiscNeighborFlags::SOLICITED) {
            return Err(Drop::Malformed);
        }
        if self.is_ours6(target) || !self.is_guest_link_addr6(target) {
            // Someone claims the NAT's address, or an address not on the link.
            return Err(Drop::NotForUs);
        }
        let mac = lladdr.map(option_mac).transpose()?.unwrap_or(eth.src);
        self.learn6(target, mac, now, true);
        Ok(())
    }

    /// Remembers that `ip` is at `mac`: delivers the frames waiting for it,
    /// and, when the address is new, moved or `tell_stack` asks, gives
    /// smoltcp the MAC too.
    fn learn6(&mut self, ip: Ipv6Addr, mac: EthernetAddress, now: Instant, tell_stack: bool) {
        if !mac.is_unicast() || !self.is_guest_link_addr6(ip) {
            return;
        }
        let changed = self.guest_mac6(ip) != Some(mac);
        if !self.guest_macs6.contains_key(&ip) && self.guest_macs6.len() >= GUEST_MACS {
            // Guests change addresses (temporary addresses, RFC 8981): the
            // one heard from longest ago goes.
            if let Some(old) = self.guest_macs6.iter().min_by_key(|(_, e)| e.1).map(|(a, _)| *a) {
                self.guest_macs6.remove(&old);
            }
        }
        self.guest_macs6.insert(ip, (mac, now));
        if (changed || tell_stack) && self.is_guest_addr6(ip) {
            self.tell_stack6(ip, mac);
        }
        if let Some(p) = self.ndp.pending.remove(&ip) {
            for mut f in p.frames {
                f[0..6].copy_from_slice(&mac.0);
                self.queue_guest(f);
            }
        }
    }

    /// Hands smoltcp a neighbor advertisement from guest address `ip` at
    /// `mac`, so that the segments it sends there find the guest.
    pub(super) fn tell_stack6(&mut self, ip: Ipv6Addr, mac: EthernetAddress) {
        let na = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::OVERRIDE,
            target_addr: ip,
            lladdr: Some(RawHardwareAddress::from(mac)),
        });
        let f = frame::build_icmpv6(mac, self.gw_mac, ip, self.cfg.ipv6_host, NDP_HOP_LIMIT, &na, &[]);
        // A full queue drops it; smoltcp then asks the guest itself.
        let _ = self.queue_stack(&f);
    }

    /// Queues `f`, an IPv6 frame for guest address `dst`, once its MAC is
    /// known: now when it is, else after a neighbor solicitation finds it.
    pub(super) fn deliver6(&mut self, dst: Ipv6Addr, mut f: Vec<u8>, now: Instant) {
        if let Some(mac) = self.guest_mac6(dst) {
            f[0..6].copy_from_slice(&mac.0);
            self.queue_guest(f);
            return;
        }
        if !self.ndp.pending.contains_key(&dst) && self.ndp.pending.len() >= PENDING_ADDRS {
            self.ndp.unresolved += 1;
            return;
        }
        let p = self.ndp.pending.entry(dst).or_insert_with(|| Pending { frames: Vec::new(), tries: 0, next: now });
        if p.frames.len() >= PENDING_FRAMES {
            self.ndp.unresolved += 1;
            return;
        }
        p.frames.push(f);
        if p.tries == 0 {
            self.solicit(dst, now);
        }
    }

    /// Sends a neighbor solicitation for guest address `target`.
    fn solicit(&mut self, target: Ipv6Addr, now: Instant) {
        if let Some(p) = self.ndp.pending.get_mut(&target) {
            p.tries += 1;
            p.next = now + NS_INTERVAL;
        }
        let src = if is_link_local6(target) { LINK_LOCAL_GW } else { self.cfg.ipv6_host };
        let dst = frame::solicited_node(target);
        let ns = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: Some(RawHardwareAddress::from(self.gw_mac)),
        });
        let f = frame::build_icmpv6(self.gw_mac, frame::ipv6_multicast_mac(dst), src, dst, NDP_HOP_LIMIT, &ns, &[]);
        self.queue_guest(f);
    }

    /// The router advertisement (see the module documentation).
    fn router_advert(&self) -> Vec<u8> {
        let mtu = (1280..1500).contains(&self.cfg.mtu).then_some(u32::from(self.cfg.mtu));
        let ra = Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
            hop_limit: RA_CUR_HOP_LIMIT,
            flags: NdiscRouterFlags::empty(),
            router_lifetime: RA_ROUTER_LIFETIME,
            reachable_time: smoltcp::time::Duration::ZERO,
            retrans_time: smoltcp::time::Duration::ZERO,
            lladdr: Some(RawHardwareAddress::from(self.gw_mac)),
            mtu,
            prefix_info: Some(NdiscPrefixInformation {
                prefix_len: self.cfg.ipv6_prefix_len,
                flags: NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF,
                valid_lifetime: PREFIX_VALID_LIFETIME,
                preferred_lifetime: PREFIX_PREFERRED_LIFETIME,
                prefix: self.cfg.ipv6_net,
            }),
        });
        // RDNSS: type, length in 8-byte units, reserved, lifetime, the address.
        let mut rdnss = vec![OPT_RDNSS, 3, 0, 0];
        rdnss.extend_from_slice(&RDNSS_LIFETIME.to_be_bytes());
        rdnss.extend_from_slice(&self.cfg.ipv6_dns.octets());
        let dst_mac = frame::ipv6_multicast_mac(ALL_NODES);
        frame::build_icmpv6(self.gw_mac, dst_mac, LINK_LOCAL_GW, ALL_NODES, NDP_HOP_LIMIT, &ra, &rdnss)
    }

    fn send_router_advert(&mut self, now: Instant) {
        let f = self.router_advert();
        self.queue_guest(f);
        self.ndp.advertised(now);
    }

    /// Unsolicited router advertisements and neighbor solicitation retries
    /// that are due.
    pub(super) fn ipv6_timers(&mut self, now: Instant) {
        if self.ndp.ra_next.is_some_and(|t| t <= now) {
            self.send_router_advert(now);
        }
        let due: Vec<Ipv6Addr> = self.ndp.pending.iter().filter(|(_, p)| p.next <= now).map(|(a, _)| *a).collect();
        for target in due {
            let tries = self.ndp.pending.get(&target).map_or(0, |p| p.tries);
            if tries >= NS_TRIES {
                if let Some(p) = self.ndp.pending.remove(&target) {
                    self.ndp.unresolved += p.frames.len() as u64;
                }
            } else {
                self.solicit(target, now);
            }
        }
    }

    /// The MACs of guest IPv6 addresses, for a saved state.
    pub(super) fn guest_macs6_sorted(&self) -> Vec<(Ipv6Addr, EthernetAddress)> {
        let mut v: Vec<_> = self.guest_macs6.iter().map(|(&ip, e)| (ip, e.0)).collect();
        v.sort_unstable_by_key(|&(ip, _)| ip);
        v
    }
}

#[cfg(test)]
mod tests;
