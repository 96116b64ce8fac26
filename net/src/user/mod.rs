//! The user-mode NAT (QEMU's `-netdev user`, slirp): the guest sees a
//! gateway, a DNS server and a DHCP server on its own network, and its TCP,
//! UDP and ICMP echo traffic leaves through ordinary host sockets, with no
//! privileges. The gateway address reaches the host's loopback.
//!
//! IPv6 works as in libslirp (`ipv6.rs`): the gateway advertises a prefix
//! (default fec0::/64) from fe80::2 for the guest to configure itself with
//! (SLAAC), names the DNS address in RDNSS, and answers NDP for its own
//! addresses; the IPv6 gateway (fec0::2) reaches the host's ::1 (or
//! 127.0.0.1 when ::1 refuses), and other IPv6 destinations are reached
//! through host IPv6 sockets.
//!
//! Every guest frame passes a filter before anything acts on it:
//!
//! | frame | goes to |
//! | --- | --- |
//! | ARP for the gateway or DNS address | smoltcp (answers, learns the guest's MAC) |
//! | other ARP | dropped (the NAT does not own other addresses) |
//! | UDP to port 67 | the DHCP server (`dhcp.rs`) |
//! | UDP to DNS:53 (IPv4 or IPv6 DNS address) | the DNS forwarder (`dns.rs`) |
//! | UDP to gateway:69, or to a transfer's port, with `tftp=` (IPv4) | the TFTP server (`tftp.rs`) |
//! | other UDP | a UDP flow (`udp.rs`) |
//! | TCP of a known flow | smoltcp |
//! | TCP SYN of a new 4-tuple | a new flow (`tcp.rs`) |
//! | ICMP/ICMPv6 echo to gateway/DNS (and fe80::2) | answered here |
//! | ICMP/ICMPv6 echo elsewhere | an ICMP socket (`icmp.rs`) |
//! | ICMPv6 router solicitation | a router advertisement (`ipv6.rs`) |
//! | ICMPv6 neighbor solicitation for fe80::2, the gateway or DNS | a neighbor advertisement (`ipv6.rs`) |
//! | ICMPv6 neighbor advertisement from the guest | learns its MAC (and tells smoltcp) |
//! | IPv6 hop-by-hop, destination options, spent routing headers | skipped (options to be understood drop the frame) |
//! | anything else, malformed, fragments (IPv4 and IPv6), bad checksums | counted and dropped |
//!
//! smoltcp runs with any-IP on, so it would answer ARP, NDP and ICMP for
//! every address; it only ever sees what the filter lets through (for
//! IPv6, TCP segments of flows and neighbor advertisements that give it
//! the MAC of the guest address a flow talks to).
//!
//! Its saved state ([`UserNetState`]) is its configuration and the guest
//! addresses it knows; the flows to host sockets cannot be saved.

mod device;
mod dhcp;
mod dns;
mod icmp;
mod ipv6;
mod state;
mod tcp;
mod tftp;
mod udp;

pub use state::{DhcpLease, UserNetState};

/// The guest NIC of the unit tests that run a guest stack (the integration
/// tests' own).
#[cfg(test)]
#[path = "../../tests/common/wire.rs"]
mod test_wire;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, PollIngressSingleResult, PollResult, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetProtocol, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpCidr,
    IpProtocol,
};

use crate::frame::{self, Drop, Eth, Ip};
use crate::poller::{Poller, Ready, Token};
use crate::{Error, NetBackend, Proto, UserNetConfig};
use device::Queues;

/// Guest frames waiting for smoltcp at most (beyond that they are dropped,
/// as an overrun NIC would).
const STACK_QUEUE_LIMIT: usize = 4096;
/// Guest addresses whose MAC the NAT remembers.
const GUEST_MACS: usize = 64;
/// smoltcp/flow rounds per poll.
const PUMP_ROUNDS: usize = 8;

/// Counters of what the NAT did and refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserNetStats {
    /// Frames the guest sent.
    pub frames_from_guest: u64,
    /// Frames handed to the guest.
    pub frames_to_guest: u64,
    /// Guest frames too short or with bad length fields.
    pub dropped_malformed: u64,
    /// Guest frames with a bad checksum.
    pub dropped_checksum: u64,
    /// Guest IP fragments.
    pub dropped_fragment: u64,
    /// Guest frames for nothing the NAT serves.
    pub dropped_not_for_us: u64,
    /// Guest frames that policy (`restrict=on`, address rules) refused.
    pub dropped_policy: u64,
    /// Guest frames refused because a bound was reached.
    pub dropped_limit: u64,
    /// Frames for the guest dropped because the guest queue was full.
    pub dropped_guest_queue: u64,
    /// TCP flows open now.
    pub tcp_flows: usize,
    /// UDP flows and forward associations open now.
    pub udp_flows: usize,
    /// Guest connections answered with an RST (refused, policy, bounds).
    pub tcp_resets: u64,
    /// Flows dropped to make room for new ones.
    pub flows_evicted: u64,
    /// Host connections accepted by TCP port forwards.
    pub hostfwd_accepted: u64,
    /// DNS queries from the guest.
    pub dns_queries: u64,
    /// DNS queries answered with SERVFAIL.
    pub dns_servfail: u64,
    /// ICMP echo requests that could not be sent out.
    pub icmp_dropped: u64,
    /// TFTP reads completed.
    pub tftp_completed: u64,
    /// TFTP requests refused and transfers given up.
    pub tftp_errors: u64,
    /// IPv6 router advertisements sent (solicited and unsolicited).
    pub router_adverts: u64,
    /// Frames for an IPv6 guest address that answered no neighbor
    /// solicitation, dropped.
    pub dropped_unresolved: u64,
}

/// The user-mode NAT backend. See the module documentation.
pub struct UserNet {
    cfg: UserNetConfig,
    epoch: Instant,
    iface: Interface,
    sockets: SocketSet<'static>,
    q: Queues,
    poller: Poller,
    ready: Vec<Ready>,
    tcp: tcp::TcpTable,
    udp: udp::UdpTable,
    dns: dns::DnsForwarder,
    dhcp: dhcp::DhcpServer,
    icmp: icmp::IcmpProxy,
    /// With `tftp=`.
    tftp: Option<tftp::TftpServer>,
    gw_mac: EthernetAddress,
    guest_macs: HashMap<Ipv4Addr, EthernetAddress>,
    /// Guest IPv6 addresses' MACs, with when each was last heard.
    guest_macs6: HashMap<Ipv6Addr, (EthernetAddress, Instant)>,
    /// Router advertisement timing and frames waiting for a guest's MAC.
    ndp: ipv6::Ndp,
    /// Forward listeners by token index: protocol and index in its table.
    fwd_kinds: Vec<(Proto, usize)>,
    fwd_addrs: Vec<(Proto, SocketAddr)>,
    /// The last poll ended with the guest queue full: smoltcp (and the
    /// frames waiting for it) stopped for want of room.
    held_back: bool,
    stats: UserNetStats,
}

impl UserNet {
    /// Builds the NAT and binds its port forwards.
    pub fn new(cfg: UserNetConfig) -> Result<Self, Error> {
        cfg.validate()?;
        let epoch = Instant::now();
        let mut q = Queues::new(cfg.limits.guest_queue, usize::from(cfg.mtu));
        let gw_mac = EthernetAddress(cfg.gateway_mac.0);
        let mut icfg = IfaceConfig::new(HardwareAddress::Ethernet(gw_mac));
        icfg.random_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        let mut iface = Interface::new(icfg, &mut q, smol_instant(epoch, epoch));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(cfg.host.into(), cfg.prefix_len));
            let _ = addrs.push(IpCidr::new(cfg.dns.into(), cfg.prefix_len));
            if cfg.ipv6 {
                // On-link for smoltcp: it finds guests of the prefix by NDP.
                let _ = addrs.push(IpCidr::new(cfg.ipv6_host.into(), cfg.ipv6_prefix_len));
                let _ = addrs.push(IpCidr::new(cfg.ipv6_dns.into(), cfg.ipv6_prefix_len));
            }
        });
        iface.set_any_ip(true);

        let poller = Poller::new()?;
        let limits = &cfg.limits;
        let mut tcp = tcp::TcpTable::new(limits.flow_buffer, limits.tcp_idle, limits.connect_timeout);
        let mut udp = udp::UdpTable::new(limits.udp_idle);
        let mut fwd_kinds: Vec<(Proto, usize)> = Vec::new();
        let mut fwd_addrs = Vec::new();
        for (i, fwd) in cfg.hostfwd.iter().enumerate() {
            let gaddr = fwd.guest_addr.unwrap_or(cfg.dhcp_start);
            if !cfg.contains(gaddr) || gaddr == cfg.host || gaddr == cfg.dns {
                return Err(Error::BadConfig(format!(
                    "hostfwd guest address {gaddr} is not a guest address of {}/{}",
                    cfg.net, cfg.prefix_len
                )));
            }
            let guest = SocketAddrV4::new(gaddr, fwd.guest_port);
            let addr = match fwd.proto {
                Proto::Tcp => {
                    fwd_kinds.push((Proto::Tcp, fwd_kinds.iter().filter(|k| k.0 == Proto::Tcp).count()));
                    tcp.add_listener(&poller, fwd.host, guest, i as u64)?
                }
                Proto::Udp => {
                    fwd_kinds.push((Proto::Udp, fwd_kinds.iter().filter(|k| k.0 == Proto::Udp).count()));
                    udp.add_listener(&poller, fwd.host, guest, i as u64)?
                }
            };
            fwd_addrs.push((fwd.proto, addr));
        }
        let dns = dns::DnsForwarder::new(&cfg.dns_upstream, limits.dns_timeout, limits.dns_pending);
        let dhcp = dhcp::DhcpServer::new(&cfg);
        let icmp = icmp::IcmpProxy::new(limits.max_flows.min(64));
        let tftp = cfg.tftp.as_deref().map(tftp::TftpServer::new).transpose().map_err(Error::BadConfig)?;
        Ok(UserNet {
            epoch,
            iface,
            sockets: SocketSet::new(Vec::new()),
            q,
            poller,
            ready: Vec::new(),
            tcp,
            udp,
            dns,
            dhcp,
            icmp,
            tftp,
            gw_mac,
            guest_macs: HashMap::new(),
            guest_macs6: HashMap::new(),
            ndp: ipv6::Ndp::new(),
            fwd_kinds,
            fwd_addrs,
            held_back: false,
            stats: UserNetStats::default(),
            cfg,
        })
    }

    /// The host addresses the port forwards listen on, in `hostfwd` order
    /// (a forward configured with port 0 shows the port it got).
    pub fn hostfwd_addrs(&self) -> &[(Proto, SocketAddr)] {
        &self.fwd_addrs
    }

    /// The configuration in force.
    pub fn config(&self) -> &UserNetConfig {
        &self.cfg
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> UserNetStats {
        let mut s = self.stats.clone();
        s.tcp_flows = self.tcp.len();
        s.udp_flows = self.udp.len();
        s.dropped_guest_queue = self.q.guest_dropped;
        s.flows_evicted = self.tcp.evicted + self.udp.evicted;
        s.hostfwd_accepted = self.tcp.accepted;
        s.dns_queries = self.dns.queries;
        s.dns_servfail = self.dns.servfails;
        s.icmp_dropped = self.icmp.dropped;
        if let Some(t) = &self.tftp {
            s.tftp_completed = t.completed;
            s.tftp_errors = t.errors;
        }
        s.router_adverts = self.ndp.router_adverts;
        s.dropped_unresolved = self.ndp.unresolved;
        s
    }

    fn count(&mut self, d: Drop) {
        let s = &mut self.stats;
        match d {
            Drop::Malformed => s.dropped_malformed += 1,
            Drop::Checksum => s.dropped_checksum += 1,
            Drop::Fragment => s.dropped_fragment += 1,
            Drop::NotForUs => s.dropped_not_for_us += 1,
            Drop::Policy => s.dropped_policy += 1,
            Drop::Limit => s.dropped_limit += 1,
        }
    }

    fn is_ours(&self, a: Ipv4Addr) -> bool {
        a == self.cfg.host || a == self.cfg.dns
    }

    /// A valid guest source address: in the network, not the NAT's, not
    /// the network or broadcast address.
    fn is_guest_addr(&self, a: Ipv4Addr) -> bool {
        self.cfg.contains(a) && !self.is_ours(a) && a != self.cfg.net && a != self.cfg.broadcast()
    }

    /// Where a guest destination is on the host's side: the gateway is the
    /// host's loopback; the guest network itself has nothing else.
    fn host_side(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if dst == self.cfg.host {
            Some(Ipv4Addr::LOCALHOST)
        } else if self.cfg.contains(dst) || !frame::is_routable(dst) {
            None
        } else {
            Some(dst)
        }
    }

    /// [`host_side`](Self::host_side) for either family, with the address
    /// to try when the first refuses: the IPv6 gateway is the host's ::1,
    /// then 127.0.0.1.
    fn host_side_ip(&self, dst: IpAddr) -> Option<(IpAddr, Option<IpAddr>)> {
        match dst {
            IpAddr::V4(a) => self.host_side(a).map(|h| (h.into(), None)),
            IpAddr::V6(a) if a == self.cfg.ipv6_host => {
                Some((Ipv6Addr::LOCALHOST.into(), Some(Ipv4Addr::LOCALHOST.into())))
            }
            IpAddr::V6(a) if self.cfg.contains6(a) || !frame::is_routable6(a) => None,
            IpAddr::V6(a) => Some((a.into(), None)),
        }
    }

    fn guest_mac(&self, ip: Ipv4Addr) -> EthernetAddress {
        self.guest_macs.get(&ip).copied().or_else(|| self.dhcp.mac_of(ip)).unwrap_or(EthernetAddress::BROADCAST)
    }

    fn queue_guest(&mut self, frame: Vec<u8>) {
        self.q.push_guest(frame);
    }

    fn udp_to_guest(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
        let f = frame::build_udp(self.gw_mac, self.guest_mac(*dst.ip()), src, dst, payload);
        self.queue_guest(f);
    }

    /// A UDP datagram for the guest, over the family of `dst` (`src` is of the same).
    fn datagram_to_guest(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8], now: Instant) {
        match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => self.udp_to_guest(s, d, payload),
            (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                let f = frame::build_udp6(self.gw_mac, EthernetAddress([0; 6]), s, d, payload);
                self.deliver6(*d.ip(), f, now);
            }
            _ => {}
        }
    }

    /// A TFTP packet, from the gateway's port of its transfer.
    fn tftp_to_guest(&mut self, r: &tftp::Reply) {
        self.udp_to_guest(SocketAddrV4::new(self.cfg.host, r.src_port), r.dst, &r.payload);
    }

    /// Refuses the guest segment `seg` from `src` to `dst` with an RST.
    fn rst_to_guest(&mut self, eth: &Eth<'_>, src: IpAddr, dst: IpAddr, seg: &frame::Tcp) {
        let Some(f) = frame::build_rst(self.gw_mac, eth.src, src, dst, seg) else { return };
        self.stats.tcp_resets += 1;
        self.queue_guest(f);
    }

    /// Frees a flow slot if the table is full: `tcp_first` says which kind
    /// of flow is given up first.
    fn make_room(&mut self, tcp_first: bool) -> Result<(), Drop> {
        if self.tcp.len() + self.udp.len() < self.cfg.limits.max_flows {
            return Ok(());
        }
        let order = if tcp_first { [true, false] } else { [false, true] };
        let mut freed = false;
        for tcp in order {
            freed = if tcp {
                self.tcp.evict_embryonic(&self.poller, &mut self.sockets)
            } else {
                self.udp.evict_oldest(&self.poller)
            };
            if freed {
                break;
            }
        }
        if freed && self.tcp.len() + self.udp.len() < self.cfg.limits.max_flows {
            Ok(())
        } else {
            Err(Drop::Limit)
        }
    }

    fn guest_frame(&mut self, f: &[u8], now: Instant) -> Result<(), Drop> {
        let eth = frame::parse_eth(f)?;
        // IPv6 multicast (33:33:...) carries NDP; the IPv6 filter matches it to the IP destination.
        let ipv6_multicast = eth.ethertype == EthernetProtocol::Ipv6 && eth.dst.0[..2] == [0x33, 0x33];
        if eth.dst != self.gw_mac && !eth.dst.is_broadcast() && !ipv6_multicast {
            return Err(Drop::NotForUs);
        }
        if !eth.src.is_unicast() {
            return Err(Drop::Malformed);
        }
        match eth.ethertype {
            EthernetProtocol::Arp if self.cfg.ipv4 => self.guest_arp(f, &eth),
            EthernetProtocol::Ipv4 if self.cfg.ipv4 => self.guest_ipv4(f, &eth, now),
            EthernetProtocol::Ipv6 if self.cfg.ipv6 => self.guest_ipv6(f, &eth, now),
            _ => Err(Drop::NotForUs),
        }
    }

    fn guest_arp(&mut self, f: &[u8], eth: &Eth<'_>) -> Result<(), Drop> {
        let pkt = ArpPacket::new_checked(eth.payload).map_err(|_| Drop::Malformed)?;
        let ArpRepr::EthernetIpv4 { source_hardware_addr, source_protocol_addr, target_protocol_addr, .. } =
            ArpRepr::parse(&pkt).map_err(|_| Drop::Malformed)?
        else {
            return Err(Drop::Malformed);
        };
        if !self.is_ours(target_protocol_addr) || !self.is_guest_addr(source_protocol_addr) {
            return Err(Drop::NotForUs);
        }
        if source_hardware_addr != eth.src {
            return Err(Drop::Malformed);
        }
        self.learn(source_protocol_addr, eth.src);
        self.queue_stack(f)
    }

    fn learn(&mut self, ip: Ipv4Addr, mac: EthernetAddress) {
        if self.guest_macs.len() < GUEST_MACS || self.guest_macs.contains_key(&ip) {
            self.guest_macs.insert(ip, mac);
        }
    }

    fn queue_stack(&mut self, f: &[u8]) -> Result<(), Drop> {
        if self.q.to_stack.len() >= STACK_QUEUE_LIMIT {
            return Err(Drop::Limit);
        }
        self.q.to_stack.push_back(f.to_vec());
        Ok(())
    }

    fn guest_ipv4(&mut self, f: &[u8], eth: &Eth<'_>, now: Instant) -> Result<(), Drop> {
        let ip = frame::parse_ipv4(eth.payload)?;
        if ip.src.is_unspecified() && ip.proto == IpProtocol::Udp {
            // Only a DHCP client may speak without an address.
            let udp = frame::parse_udp(&ip)?;
            if udp.dst_port != dhcp::SERVER_PORT {
                return Err(Drop::Policy);
            }
            return self.guest_dhcp(udp.payload, now);
        }
        if !self.is_guest_addr(ip.src) {
            return Err(Drop::Policy);
        }
        self.learn(ip.src, eth.src);
        match ip.proto {
            IpProtocol::Udp => self.guest_udp(&ip, now),
            IpProtocol::Tcp => {
                let seg = frame::parse_tcp(&ip)?;
                self.guest_tcp(f, eth, ip.src.into(), ip.dst.into(), &seg, now)
            }
            IpProtocol::Icmp => self.guest_icmp(eth, &ip, now),
            _ => Err(Drop::NotForUs),
        }
    }

    fn guest_dhcp(&mut self, msg: &[u8], now: Instant) -> Result<(), Drop> {
        let Some(r) = self.dhcp.handle(msg, now) else { return Ok(()) };
        let src = SocketAddrV4::new(self.cfg.host, dhcp::SERVER_PORT);
        let dst = SocketAddrV4::new(r.dst_ip, dhcp::CLIENT_PORT);
        let f = frame::build_udp(self.gw_mac, r.dst_mac, src, dst, &r.payload);
        self.queue_guest(f);
        Ok(())
    }

    fn guest_udp(&mut self, ip: &Ip<'_>, now: Instant) -> Result<(), Drop> {
        let udp = frame::parse_udp(ip)?;
        if udp.dst_port == dhcp::SERVER_PORT
            && (ip.dst == Ipv4Addr::BROADCAST || ip.dst == self.cfg.broadcast() || ip.dst == self.cfg.host)
        {
            return self.guest_dhcp(udp.payload, now);
        }
        let guest = SocketAddrV4::new(ip.src, udp.src_port);
        if ip.dst == self.cfg.dns {
            if udp.dst_port != dns::DNS_PORT {
                return Err(Drop::NotForUs);
            }
            self.dns_query(guest.into(), udp.payload, now);
            return Ok(());
        }
        if let Some(t) = self.tftp.as_mut().filter(|t| ip.dst == self.cfg.host && t.claims(guest, udp.dst_port)) {
            if let Some(r) = t.handle(guest, udp.dst_port, udp.payload, now) {
                self.tftp_to_guest(&r);
            }
            return Ok(());
        }
        if ip.dst == self.cfg.host && self.udp.forward_to_peer(guest.into(), udp.dst_port, udp.payload, now) {
            return Ok(());
        }
        self.udp_relay(guest.into(), ip.dst.into(), udp.dst_port, udp.payload, now)
    }

    /// A guest DNS query (to the DNS address of `guest`'s family).
    fn dns_query(&mut self, guest: SocketAddr, msg: &[u8], now: Instant) {
        if let Some(reply) = self.dns.query(&self.poller, guest, msg, now) {
            let src = self.dns_endpoint(guest);
            self.datagram_to_guest(src, guest, &reply, now);
        }
    }

    /// The DNS forwarder's endpoint as a guest of `guest`'s family sees it.
    fn dns_endpoint(&self, guest: SocketAddr) -> SocketAddr {
        match guest {
            SocketAddr::V4(_) => SocketAddr::new(self.cfg.dns.into(), dns::DNS_PORT),
            SocketAddr::V6(_) => SocketAddr::new(self.cfg.ipv6_dns.into(), dns::DNS_PORT),
        }
    }

    /// A guest datagram for a host socket (policy, bounds and the host
    /// side checked here).
    fn udp_relay(
        &mut self,
        guest: SocketAddr,
        dst: IpAddr,
        port: u16,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), Drop> {
        if !self.cfg.permits(dst, Some((Proto::Udp, port))) {
            return Err(Drop::Policy);
        }
        let (host_ip, fallback) = self.host_side_ip(dst).ok_or(Drop::NotForUs)?;
        let remote = SocketAddr::new(dst, port);
        if !self.udp.has_flow(guest, remote) {
            self.make_room(false)?;
        }
        let host_dst = SocketAddr::new(host_ip, port);
        let fallback = fallback.map(|a| SocketAddr::new(a, port));
        self.udp.send(&self.poller, guest, remote, host_dst, fallback, payload, now);
        Ok(())
    }

    /// A guest TCP segment `seg` (in frame `f`) from `src` to `dst`, of either family.
    fn guest_tcp(
        &mut self,
        f: &[u8],
        eth: &Eth<'_>,
        src: IpAddr,
        dst: IpAddr,
        seg: &frame::Tcp,
        now: Instant,
    ) -> Result<(), Drop> {
        let key = (SocketAddr::new(src, seg.src_port), SocketAddr::new(dst, seg.dst_port));
        if self.tcp.contains(&key) {
            if self.tcp.is_open(&key) {
                return self.queue_stack(f);
            }
            // The host connect is under way; the first SYN is held already.
            return Ok(());
        }
        if seg.rst {
            return Err(Drop::NotForUs);
        }
        if !seg.syn || seg.ack.is_some() {
            // A segment of no flow: refuse it, as a host with no socket would.
            self.rst_to_guest(eth, src, dst, seg);
            return Err(Drop::NotForUs);
        }
        let to_dns = dst == IpAddr::V4(self.cfg.dns) || dst == IpAddr::V6(self.cfg.ipv6_dns);
        if !self.cfg.permits(dst, Some((Proto::Tcp, seg.dst_port))) || to_dns {
            self.rst_to_guest(eth, src, dst, seg);
            return Err(Drop::Policy);
        }
        let Some((host_ip, fallback)) = self.host_side_ip(dst) else {
            return Err(Drop::NotForUs);
        };
        if let Err(d) = self.make_room(true) {
            self.rst_to_guest(eth, src, dst, seg);
            return Err(d);
        }
        if let IpAddr::V6(guest) = src {
            // smoltcp answers the SYN: it gets the guest's MAC first.
            self.tell_stack6(guest, eth.src);
        }
        let host_dst = SocketAddr::new(host_ip, seg.dst_port);
        let fallback = fallback.map(|a| SocketAddr::new(a, seg.dst_port));
        match self.tcp.guest_syn(&self.poller, key, host_dst, fallback, f, now) {
            tcp::SynOutcome::Started => Ok(()),
            tcp::SynOutcome::Refused => {
                self.rst_to_guest(eth, src, dst, seg);
                Ok(())
            }
        }
    }

    fn guest_icmp(&mut self, eth: &Eth<'_>, ip: &Ip<'_>, now: Instant) -> Result<(), Drop> {
        let pkt = Icmpv4Packet::new_checked(ip.payload).map_err(|_| Drop::Malformed)?;
        let repr = Icmpv4Repr::parse(&pkt, &ChecksumCapabilities::default()).map_err(|_| Drop::Checksum)?;
        let Icmpv4Repr::EchoRequest { ident, seq_no, data } = repr else {
            return Err(Drop::NotForUs);
        };
        if self.is_ours(ip.dst) {
            let f = frame::build_icmp_echo(self.gw_mac, eth.src, ip.dst, ip.src, true, ident, seq_no, data);
            self.queue_guest(f);
            return Ok(());
        }
        self.echo_relay(ip.src.into(), ip.dst.into(), ident, seq_no, data, now)
    }

    /// A guest echo request for a host ICMP socket (policy and the host
    /// side checked here).
    fn echo_relay(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        ident: u16,
        seq_no: u16,
        data: &[u8],
        now: Instant,
    ) -> Result<(), Drop> {
        if !self.cfg.permits(dst, None) {
            return Err(Drop::Policy);
        }
        let (host_ip, _) = self.host_side_ip(dst).ok_or(Drop::NotForUs)?;
        self.icmp.echo(&self.poller, src, dst, host_ip, ident, seq_no, data, now);
        Ok(())
    }

    /// Host-side readiness into the tables' flags.
    fn take_events(&mut self) {
        self.ready.clear();
        self.poller.drain(&mut self.ready, 8);
        for r in std::mem::take(&mut self.ready) {
            match r.token {
                Token::Tcp(id) => self.tcp.set_ready(id, r.readable, r.writable, r.error),
                Token::Udp(id) => self.udp.set_flow_readable(id),
                Token::Icmp(id) => self.icmp.set_readable(id),
                Token::Dns(i) => self.dns.set_readable(i),
                Token::Listener(i) => match self.fwd_kinds.get(i as usize) {
                    Some((Proto::Tcp, j)) => self.tcp.set_listener_readable(*j),
                    Some((Proto::Udp, j)) => self.udp.set_listener_readable(*j),
                    None => {}
                },
            }
        }
    }

    fn guest_room(&self) -> usize {
        self.cfg.limits.guest_queue.saturating_sub(self.q.to_guest.len())
    }

    /// Runs smoltcp and the TCP flows: guest segments in, bytes between
    /// smoltcp and the host sockets, segments out. The pump sits between
    /// ingress and egress so that the ACKs smoltcp sends advertise the
    /// window after the host took the data, not a window a burst just filled.
    fn drive_stack(&mut self, ts: smoltcp::time::Instant, now: Instant) {
        self.iface.poll_maintenance(ts);
        for _ in 0..PUMP_ROUNDS {
            for _ in 0..STACK_QUEUE_LIMIT {
                let r = self.iface.poll_ingress_single(ts, &mut self.q, &mut self.sockets);
                if r == PollIngressSingleResult::None {
                    break;
                }
            }
            let moved = self.tcp.pump(&self.poller, &mut self.sockets, now);
            for _ in 0..STACK_QUEUE_LIMIT {
                if self.iface.poll_egress(ts, &mut self.q, &mut self.sockets) == PollResult::None {
                    break;
                }
            }
            if !moved && (self.q.to_stack.is_empty() || self.q.guest_full()) {
                break;
            }
        }
    }

    /// Datagrams, DNS answers and echo replies from the host.
    fn read_datagrams(&mut self, now: Instant) {
        let mut dgrams = Vec::new();
        let room = self.guest_room();
        self.udp.read(self.cfg.host, self.cfg.limits.max_flows, now, room, &mut dgrams);
        for (src, dst, payload) in dgrams {
            self.datagram_to_guest(src, dst, &payload, now);
        }
        let mut answers = Vec::new();
        self.dns.read_answers(&mut answers);
        self.dns.expire(&self.poller, now, &mut answers);
        for (guest, msg) in answers {
            let src = self.dns_endpoint(guest);
            self.datagram_to_guest(src, guest, &msg, now);
        }
        let mut echoes = Vec::new();
        self.icmp.read(&mut echoes);
        for e in echoes {
            match (e.from, e.guest) {
                (IpAddr::V4(from), IpAddr::V4(guest)) => {
                    let mac = self.guest_mac(guest);
                    let f = frame::build_icmp_echo(self.gw_mac, mac, from, guest, true, e.ident, e.seq_no, &e.data);
                    self.queue_guest(f);
                }
                (IpAddr::V6(from), IpAddr::V6(guest)) => {
                    self.echo6_to_guest(from, guest, e.ident, e.seq_no, &e.data, now)
                }
                _ => {}
            }
        }
    }
}

fn smol_instant(epoch: Instant, now: Instant) -> smoltcp::time::Instant {
    let us = now.saturating_duration_since(epoch).as_micros();
    smoltcp::time::Instant::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
}

impl UserNet {
    /// [`NetBackend::poll`]'s work; the caller notes what it held back.
    fn poll_inner(&mut self, now: Instant) -> Option<Duration> {
        let ts = smol_instant(self.epoch, now);
        self.take_events();

        // Refused host connects answer their SYN with an RST.
        self.tcp.finish_connects(&self.poller, &mut self.sockets, &mut self.q.to_stack, now);
        for syn in std::mem::take(&mut self.tcp.refused) {
            let Ok(eth) = frame::parse_eth(&syn) else { continue };
            let parsed = match eth.ethertype {
                EthernetProtocol::Ipv4 => frame::parse_ipv4(eth.payload)
                    .and_then(|ip| Ok((ip.src.into(), ip.dst.into(), frame::parse_tcp(&ip)?))),
                _ => frame::parse_ipv6(eth.payload)
                    .and_then(|ip| Ok((ip.src.into(), ip.dst.into(), frame::parse_tcp6(&ip)?))),
            };
            if let Ok((src, dst, seg)) = parsed {
                self.rst_to_guest(&eth, src, dst, &seg);
            }
        }

        let room = self.cfg.limits.max_flows.saturating_sub(self.tcp.len() + self.udp.len());
        self.tcp.accept(&self.poller, &mut self.iface, &mut self.sockets, self.cfg.host, room, now);

        self.drive_stack(ts, now);

        self.read_datagrams(now);
        self.udp.expire(&self.poller, now);
        self.icmp.expire(&self.poller, now);
        let resend = self.tftp.as_mut().map(|t| t.expire(now)).unwrap_or_default();
        for r in &resend {
            self.tftp_to_guest(r);
        }
        self.ipv6_timers(now);

        if !self.q.to_stack.is_empty() && !self.q.guest_full() {
            return Some(Duration::ZERO);
        }
        if self.udp.busy() || self.dns.busy() || self.icmp.busy() || self.tcp.busy() {
            return Some(Duration::ZERO);
        }
        let stack = if self.q.guest_full() {
            // smoltcp waits for room; the NIC polls again when the guest takes frames.
            Some(Duration::from_millis(10))
        } else {
            self.iface.poll_delay(ts, &self.sockets).map(|d| Duration::from_micros(d.total_micros()))
        };
        let tftp = self.tftp.as_ref().and_then(tftp::TftpServer::next_deadline);
        [
            self.tcp.next_deadline(),
            self.udp.next_deadline(),
            self.dns.next_deadline(),
            self.icmp.next_deadline(),
            tftp,
            self.ndp.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .map(|t| t.saturating_duration_since(now))
        .chain(stack)
        .min()
    }
}

impl NetBackend for UserNet {
    fn send(&mut self, frame: &[u8]) {
        self.stats.frames_from_guest += 1;
        if let Err(d) = self.guest_frame(frame, Instant::now()) {
            self.count(d);
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let f = self.q.to_guest.pop_front()?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        self.stats.frames_to_guest += 1;
        Some(n)
    }

    fn peek_len(&self) -> Option<usize> {
        self.q.to_guest.front().map(Vec::len)
    }

    /// Only smoltcp waits for room in the guest queue (its egress and the
    /// guest frames behind it stop while the queue is full); what the NAT
    /// answers itself is dropped when full, and datagrams stay in their
    /// host sockets with the poll asked for again at once.
    fn holding_back(&self) -> bool {
        self.held_back
    }

    fn poll(&mut self, now: Instant) -> Option<Duration> {
        let next = self.poll_inner(now);
        self.held_back = self.q.guest_full();
        next
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.poller.fd())
    }

    fn debug_label(&self) -> &str {
        "user"
    }
}

/// A host socket a port forward listens on (TCP listener or UDP socket).
trait ForwardSocket: std::os::fd::AsFd + Sized {
    const PROTO: &'static str;
    fn bind(addr: SocketAddrV4) -> std::io::Result<Self>;
    fn set_nonblocking(&self) -> std::io::Result<()>;
    fn local_addr(&self) -> std::io::Result<SocketAddr>;
}

impl ForwardSocket for std::net::TcpListener {
    const PROTO: &'static str = "tcp";
    fn bind(addr: SocketAddrV4) -> std::io::Result<Self> {
        std::net::TcpListener::bind(addr)
    }
    fn set_nonblocking(&self) -> std::io::Result<()> {
        std::net::TcpListener::set_nonblocking(self, true)
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        std::net::TcpListener::local_addr(self)
    }
}

impl ForwardSocket for std::net::UdpSocket {
    const PROTO: &'static str = "udp";
    fn bind(addr: SocketAddrV4) -> std::io::Result<Self> {
        std::net::UdpSocket::bind(addr)
    }
    fn set_nonblocking(&self) -> std::io::Result<()> {
        std::net::UdpSocket::set_nonblocking(self, true)
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        std::net::UdpSocket::local_addr(self)
    }
}

/// Binds a port forward's host socket at `host`, non-blocking and watched by
/// `poller` as listener `index`; returns it with the address it got.
fn bind_forward<S: ForwardSocket>(poller: &Poller, host: SocketAddrV4, index: u64) -> Result<(S, SocketAddr), Error> {
    let bind_err = |source| Error::HostFwdBind { proto: S::PROTO, addr: host.into(), source };
    let sock = S::bind(host).map_err(bind_err)?;
    sock.set_nonblocking().map_err(bind_err)?;
    poller.add(&sock, Token::Listener(index)).map_err(bind_err)?;
    let addr = sock.local_addr().map_err(bind_err)?;
    Ok((sock, addr))
}

#[cfg(test)]
mod tests;
