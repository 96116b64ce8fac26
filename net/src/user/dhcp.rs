//! The NAT's DHCP server (RFC 2131, options from RFC 2132).
//!
//! Message layout (RFC 2131 §2, figure 1), offsets in bytes:
//!
//! ```text
//!   0 op  1 htype  2 hlen  3 hops  4..8 xid  8..10 secs  10..12 flags
//!  12..16 ciaddr  16..20 yiaddr  20..24 siaddr  24..28 giaddr
//!  28..44 chaddr  44..108 sname  108..236 file  236..240 magic cookie
//! 240..   options: code, length, data; 0 pads, 255 ends
//! ```
//!
//! Leases are handed out from `dhcpstart` upwards, one address per client
//! hardware address, at most [`MAX_LEASES`] of them (QEMU keeps 16).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::wire::EthernetAddress;

use crate::UserNetConfig;

/// Clients served at once.
pub(crate) const MAX_LEASES: usize = 16;

pub(crate) const SERVER_PORT: u16 = 67;
pub(crate) const CLIENT_PORT: u16 = 68;

const OP_REQUEST: u8 = 1;
const OP_REPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const FLAG_BROADCAST: u16 = 0x8000;
const OPTIONS_OFFSET: usize = 240;
/// BOOTP clients expect at least this much (RFC 1542 §3.3).
const MIN_MESSAGE_LEN: usize = 300;

// Options (RFC 2132).
const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_DOMAIN: u8 = 15;
const OPT_MTU: u8 = 26;
const OPT_BROADCAST: u8 = 28;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_BOOTFILE: u8 = 67;
const OPT_RENEWAL_T1: u8 = 58;
/// iPXE's encapsulated options: a client that sends them is iPXE.
const OPT_IPXE: u8 = 175;
/// iPXE's `no-pxedhcp` (175.176): do not wait for ProxyDHCP offers.
const IPXE_NO_PXEDHCP: u8 = 176;
const OPT_REBINDING_T2: u8 = 59;
const OPT_END: u8 = 255;

// Message types (option 53).
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const DECLINE: u8 = 4;
const ACK: u8 = 5;
const NAK: u8 = 6;
const RELEASE: u8 = 7;
const INFORM: u8 = 8;

#[derive(Clone, Debug)]
struct Lease {
    mac: EthernetAddress,
    ip: Ipv4Addr,
    /// `None` while only offered.
    expires: Option<Instant>,
}

/// A reply to send: UDP payload from server port 67 to client port 68.
#[derive(Debug)]
pub(crate) struct DhcpReply {
    pub payload: Vec<u8>,
    pub dst_ip: Ipv4Addr,
    pub dst_mac: EthernetAddress,
}

pub(crate) struct DhcpServer {
    server: Ipv4Addr,
    netmask: Ipv4Addr,
    broadcast: Ipv4Addr,
    dns: Ipv4Addr,
    pool: Vec<Ipv4Addr>,
    hostname: Option<String>,
    domain: Option<String>,
    bootfile: Option<String>,
    lease_time: Duration,
    mtu: u16,
    leases: Vec<Lease>,
}

/// The fields of a client message the server looks at.
struct Msg<'a> {
    xid: [u8; 4],
    flags: u16,
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    chaddr: [u8; 16],
    mac: EthernetAddress,
    options: &'a [u8],
}

fn ip_at(b: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
}

impl<'a> Msg<'a> {
    fn parse(b: &'a [u8]) -> Option<Msg<'a>> {
        if b.len() < OPTIONS_OFFSET || b[0] != OP_REQUEST || b[1] != HTYPE_ETHERNET || b[2] != 6 {
            return None;
        }
        if b[236..240] != MAGIC_COOKIE {
            return None;
        }
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&b[28..44]);
        Some(Msg {
            xid: [b[4], b[5], b[6], b[7]],
            flags: u16::from_be_bytes([b[10], b[11]]),
            ciaddr: ip_at(b, 12),
            giaddr: ip_at(b, 24),
            chaddr,
            mac: EthernetAddress::from_bytes(&b[28..34]),
            options: &b[OPTIONS_OFFSET..],
        })
    }

    /// The data of option `code`, if present and well formed.
    fn option(&self, code: u8) -> Option<&'a [u8]> {
        let o = self.options;
        let mut i = 0;
        while i < o.len() {
            match o[i] {
                OPT_PAD => i += 1,
                OPT_END => return None,
                c => {
                    let len = usize::from(*o.get(i + 1)?);
                    let data = o.get(i + 2..i + 2 + len)?;
                    if c == code {
                        return Some(data);
                    }
                    i += 2 + len;
                }
            }
        }
        None
    }

    fn option_ip(&self, code: u8) -> Option<Ipv4Addr> {
        match self.option(code)? {
            [a, b, c, d] => Some(Ipv4Addr::new(*a, *b, *c, *d)),
            _ => None,
        }
    }
}

impl DhcpServer {
    pub fn new(cfg: &UserNetConfig) -> Self {
        let start = u32::from(cfg.dhcp_start);
        let pool = (0..MAX_LEASES as u32)
            .filter_map(|i| start.checked_add(i).map(Ipv4Addr::from))
            .filter(|ip| cfg.contains(*ip) && *ip != cfg.host && *ip != cfg.dns && *ip != cfg.broadcast())
            .collect();
        DhcpServer {
            server: cfg.host,
            netmask: cfg.netmask(),
            broadcast: cfg.broadcast(),
            dns: cfg.dns,
            pool,
            hostname: cfg.hostname.clone(),
            domain: cfg.domain.clone(),
            bootfile: cfg.bootfile.clone(),
            lease_time: cfg.lease_time,
            mtu: cfg.mtu,
            leases: Vec::new(),
        }
    }

    /// The leases in force at `now`, in the order they were made: (client,
    /// address, bound; an unbound one is only offered).
    pub(crate) fn leases(&self, now: Instant) -> impl Iterator<Item = (EthernetAddress, Ipv4Addr, bool)> + '_ {
        self.leases
            .iter()
            .filter(move |l| l.expires.is_none_or(|t| t > now))
            .map(|l| (l.mac, l.ip, l.expires.is_some()))
    }

    /// Whether `ip` is one of the addresses the server hands out.
    pub(crate) fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.pool.contains(&ip)
    }

    /// Replaces the leases with `leases` (as [`DhcpServer::leases`] gives
    /// them); a bound one runs for a whole lease time from `now`.
    pub(crate) fn set_leases(&mut self, leases: impl Iterator<Item = (EthernetAddress, Ipv4Addr, bool)>, now: Instant) {
        let expires = now + self.lease_time;
        self.leases = leases.map(|(mac, ip, bound)| Lease { mac, ip, expires: bound.then_some(expires) }).collect();
    }

    /// The client that holds `ip`, if any.
    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<EthernetAddress> {
        self.leases.iter().find(|l| l.ip == ip).map(|l| l.mac)
    }

    /// Handles one client message; `None` when it needs no answer or is malformed.
    pub fn handle(&mut self, msg: &[u8], now: Instant) -> Option<DhcpReply> {
        let m = Msg::parse(msg)?;
        if !m.mac.is_unicast() {
            return None;
        }
        // Relayed messages belong to another network.
        if !m.giaddr.is_unspecified() {
            return None;
        }
        let kind = *m.option(OPT_MESSAGE_TYPE)?.first()?;
        self.expire(now);
        match kind {
            DISCOVER => {
                let ip = self.allocate(m.mac, m.option_ip(OPT_REQUESTED_IP))?;
                tracing::debug!(target: "net", "dhcp: offer {ip} to {}", m.mac);
                Some(self.reply(&m, OFFER, ip))
            }
            REQUEST => {
                if let Some(server) = m.option_ip(OPT_SERVER_ID) {
                    if server != self.server {
                        // The client took another server's offer.
                        self.leases.retain(|l| !(l.mac == m.mac && l.expires.is_none()));
                        return None;
                    }
                }
                let wanted = m.option_ip(OPT_REQUESTED_IP).or((!m.ciaddr.is_unspecified()).then_some(m.ciaddr));
                let granted = wanted.and_then(|w| self.bind(m.mac, w, now));
                match granted {
                    Some(ip) => {
                        tracing::debug!(target: "net", "dhcp: ack {ip} to {}", m.mac);
                        Some(self.reply(&m, ACK, ip))
                    }
                    None => {
                        tracing::debug!(target: "net", "dhcp: nak {:?} to {}", wanted, m.mac);
                        Some(self.reply(&m, NAK, Ipv4Addr::UNSPECIFIED))
                    }
                }
            }
            RELEASE | DECLINE => {
                self.leases.retain(|l| l.mac != m.mac);
                None
            }
            INFORM => Some(self.reply(&m, ACK, Ipv4Addr::UNSPECIFIED)),
            _ => None,
        }
    }

    fn expire(&mut self, now: Instant) {
        self.leases.retain(|l| l.expires.is_none_or(|t| t > now));
    }

    /// The address to offer `mac`: its lease, the one it asks for if free,
    /// or the first free one.
    fn allocate(&mut self, mac: EthernetAddress, wanted: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(l) = self.leases.iter().find(|l| l.mac == mac) {
            return Some(l.ip);
        }
        let free = |ip: &Ipv4Addr, leases: &[Lease]| leases.iter().all(|l| l.ip != *ip);
        let ip = wanted
            .filter(|w| self.pool.contains(w) && free(w, &self.leases))
            .or_else(|| self.pool.iter().copied().find(|ip| free(ip, &self.leases)))
            .or_else(|| {
                // Pool full: reclaim an offer nobody took.
                let i = self.leases.iter().position(|l| l.expires.is_none())?;
                Some(self.leases.remove(i).ip)
            })?;
        self.leases.push(Lease { mac, ip, expires: None });
        Some(ip)
    }

    /// Binds `wanted` to `mac` if it may have it.
    fn bind(&mut self, mac: EthernetAddress, wanted: Ipv4Addr, now: Instant) -> Option<Ipv4Addr> {
        let expires = Some(now + self.lease_time);
        if let Some(l) = self.leases.iter_mut().find(|l| l.mac == mac) {
            if l.ip != wanted {
                // Asking for another address than its own: NAK, forget it.
                self.leases.retain(|l| l.mac != mac);
                return None;
            }
            l.expires = expires;
            return Some(wanted);
        }
        // INIT-REBOOT: a client that remembers an address we never gave.
        if self.pool.contains(&wanted) && self.leases.iter().all(|l| l.ip != wanted) {
            self.leases.push(Lease { mac, ip: wanted, expires });
            return Some(wanted);
        }
        None
    }

    fn reply(&self, m: &Msg<'_>, kind: u8, yiaddr: Ipv4Addr) -> DhcpReply {
        let mut b = vec![0u8; OPTIONS_OFFSET];
        b[0] = OP_REPLY;
        b[1] = HTYPE_ETHERNET;
        b[2] = 6;
        b[4..8].copy_from_slice(&m.xid);
        b[10..12].copy_from_slice(&m.flags.to_be_bytes());
        if kind == ACK && yiaddr.is_unspecified() {
            // Reply to INFORM: the client keeps its address.
            b[12..16].copy_from_slice(&m.ciaddr.octets());
        }
        b[16..20].copy_from_slice(&yiaddr.octets());
        if kind != NAK {
            b[20..24].copy_from_slice(&self.server.octets());
        }
        b[28..44].copy_from_slice(&m.chaddr);
        if let (Some(f), true) = (&self.bootfile, kind != NAK) {
            // BOOTP's `file`: 128 bytes, NUL-terminated (the name is at most 127).
            let n = f.len().min(127);
            b[108..108 + n].copy_from_slice(&f.as_bytes()[..n]);
        }
        b[236..240].copy_from_slice(&MAGIC_COOKIE);

        let mut opt = |code: u8, data: &[u8]| {
            b.push(code);
            b.push(data.len() as u8);
            b.extend_from_slice(data);
        };
        opt(OPT_MESSAGE_TYPE, &[kind]);
        opt(OPT_SERVER_ID, &self.server.octets());
        if kind != NAK {
            if !yiaddr.is_unspecified() {
                let secs = u32::try_from(self.lease_time.as_secs()).unwrap_or(u32::MAX);
                opt(OPT_LEASE_TIME, &secs.to_be_bytes());
                opt(OPT_RENEWAL_T1, &(secs / 2).to_be_bytes());
                opt(OPT_REBINDING_T2, &(secs / 8 * 7).to_be_bytes());
            }
            opt(OPT_SUBNET_MASK, &self.netmask.octets());
            opt(OPT_BROADCAST, &self.broadcast.octets());
            opt(OPT_ROUTER, &self.server.octets());
            opt(OPT_DNS, &self.dns.octets());
            opt(OPT_MTU, &self.mtu.to_be_bytes());
            if let Some(h) = &self.hostname {
                opt(OPT_HOSTNAME, &h.as_bytes()[..h.len().min(255)]);
            }
            if let Some(d) = &self.domain {
                opt(OPT_DOMAIN, &d.as_bytes()[..d.len().min(255)]);
            }
            if let Some(f) = &self.bootfile {
                opt(OPT_BOOTFILE, &f.as_bytes()[..f.len().min(127)]);
            }
            // No ProxyDHCP server shares the NAT's network: iPXE need not
            // wait two seconds for one before it takes the offer.
            if m.option(OPT_IPXE).is_some() {
                opt(OPT_IPXE, &[IPXE_NO_PXEDHCP, 1, 1]);
            }
        }
        b.push(OPT_END);
        if b.len() < MIN_MESSAGE_LEN {
            b.resize(MIN_MESSAGE_LEN, 0);
        }

        // RFC 2131 §4.1: NAKs are broadcast; a configured client (ciaddr)
        // gets unicast; otherwise as the broadcast bit asks.
        let (dst_ip, dst_mac) = if kind == NAK || m.flags & FLAG_BROADCAST != 0 {
            (Ipv4Addr::BROADCAST, EthernetAddress::BROADCAST)
        } else if !m.ciaddr.is_unspecified() {
            (m.ciaddr, m.mac)
        } else {
            (yiaddr, m.mac)
        };
        DhcpReply { payload: b, dst_ip, dst_mac }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A client message as udhcpc would send it.
    pub(crate) fn client_msg(kind: u8, mac: [u8; 6], xid: u32, extra: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0u8; OPTIONS_OFFSET];
        b[0] = OP_REQUEST;
        b[1] = HTYPE_ETHERNET;
        b[2] = 6;
        b[4..8].copy_from_slice(&xid.to_be_bytes());
        b[28..34].copy_from_slice(&mac);
        b[236..240].copy_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, kind]);
        for (code, data) in extra {
            b.push(*code);
            b.push(data.len() as u8);
            b.extend_from_slice(data);
        }
        b.push(OPT_END);
        b
    }

    fn options(reply: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let o = &reply[OPTIONS_OFFSET..];
        let mut i = 0;
        while i < o.len() && o[i] != OPT_END {
            if o[i] == OPT_PAD {
                i += 1;
                continue;
            }
            let len = o[i + 1] as usize;
            out.push((o[i], o[i + 2..i + 2 + len].to_vec()));
            i += 2 + len;
        }
        out
    }

    fn opt(reply: &[u8], code: u8) -> Option<Vec<u8>> {
        options(reply).into_iter().find(|(c, _)| *c == code).map(|(_, d)| d)
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn server() -> DhcpServer {
        let cfg = UserNetConfig { hostname: Some("guest".into()), ..UserNetConfig::default() };
        DhcpServer::new(&cfg)
    }

    #[test]
    fn discover_request_ack_with_options() {
        let mut s = server();
        let now = Instant::now();
        let offer = s.handle(&client_msg(DISCOVER, MAC, 7, &[]), now).unwrap();
        assert_eq!(offer.payload[0], OP_REPLY);
        assert_eq!(&offer.payload[4..8], &7u32.to_be_bytes());
        assert_eq!(ip_at(&offer.payload, 16), Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(opt(&offer.payload, OPT_MESSAGE_TYPE), Some(vec![OFFER]));
        assert!(offer.payload.len() >= MIN_MESSAGE_LEN);

        let req =
            client_msg(REQUEST, MAC, 8, &[(OPT_REQUESTED_IP, vec![10, 0, 2, 15]), (OPT_SERVER_ID, vec![10, 0, 2, 2])]);
        let ack = s.handle(&req, now).unwrap();
        let p = &ack.payload;
        assert_eq!(opt(p, OPT_MESSAGE_TYPE), Some(vec![ACK]));
        assert_eq!(ip_at(p, 16), Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(opt(p, OPT_SUBNET_MASK), Some(vec![255, 255, 255, 0]));
        assert_eq!(opt(p, OPT_ROUTER), Some(vec![10, 0, 2, 2]));
        assert_eq!(opt(p, OPT_DNS), Some(vec![10, 0, 2, 3]));
        assert_eq!(opt(p, OPT_SERVER_ID), Some(vec![10, 0, 2, 2]));
        assert_eq!(opt(p, OPT_MTU), Some(1500u16.to_be_bytes().to_vec()));
        assert_eq!(opt(p, OPT_HOSTNAME), Some(b"guest".to_vec()));
        assert_eq!(opt(p, OPT_LEASE_TIME), Some(86400u32.to_be_bytes().to_vec()));
        assert_eq!(ack.dst_ip, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(s.mac_of(Ipv4Addr::new(10, 0, 2, 15)), Some(EthernetAddress(MAC)));
    }

    #[test]
    fn ipxe_is_told_not_to_wait_for_proxy_dhcp() {
        let mut s = server();
        let now = Instant::now();
        let plain = s.handle(&client_msg(DISCOVER, MAC, 1, &[]), now).unwrap();
        assert_eq!(opt(&plain.payload, OPT_IPXE), None, "only iPXE gets iPXE's option");
        // iPXE's discover carries its feature list in option 175.
        let ipxe = client_msg(DISCOVER, MAC, 2, &[(OPT_IPXE, vec![0xb1, 1, 1, 0x13, 1, 1])]);
        let offer = s.handle(&ipxe, now).unwrap();
        assert_eq!(opt(&offer.payload, OPT_IPXE), Some(vec![IPXE_NO_PXEDHCP, 1, 1]));
    }

    #[test]
    fn wrong_address_gets_nak_and_release_frees() {
        let mut s = server();
        let now = Instant::now();
        s.handle(&client_msg(DISCOVER, MAC, 1, &[]), now).unwrap();
        let nak = s.handle(&client_msg(REQUEST, MAC, 2, &[(OPT_REQUESTED_IP, vec![10, 0, 2, 99])]), now).unwrap();
        assert_eq!(opt(&nak.payload, OPT_MESSAGE_TYPE), Some(vec![NAK]));
        assert_eq!(nak.dst_mac, EthernetAddress::BROADCAST);
        // A second client gets the next address.
        let other = [0x52, 0x54, 0, 0, 0, 2];
        s.handle(&client_msg(DISCOVER, MAC, 3, &[]), now).unwrap();
        let o2 = s.handle(&client_msg(DISCOVER, other, 4, &[]), now).unwrap();
        assert_eq!(ip_at(&o2.payload, 16), Ipv4Addr::new(10, 0, 2, 16));
        assert!(s.handle(&client_msg(RELEASE, other, 5, &[]), now).is_none());
        assert_eq!(s.mac_of(Ipv4Addr::new(10, 0, 2, 16)), None);
        // Another server's id: the offer is withdrawn silently.
        assert!(s.handle(&client_msg(REQUEST, MAC, 6, &[(OPT_SERVER_ID, vec![10, 0, 2, 9])]), now).is_none());
    }

    #[test]
    fn leases_expire_and_pool_is_bounded() {
        let mut s = server();
        let now = Instant::now();
        for i in 0..MAX_LEASES as u8 + 4 {
            let mac = [0x52, 0x54, 0, 0, 1, i];
            let r = s.handle(&client_msg(DISCOVER, mac, 1, &[]), now);
            if let Some(r) = r {
                let ip = ip_at(&r.payload, 16);
                s.handle(&client_msg(REQUEST, mac, 2, &[(OPT_REQUESTED_IP, ip.octets().to_vec())]), now).unwrap();
            }
        }
        assert_eq!(s.leases.len(), MAX_LEASES);
        let later = now + Duration::from_secs(86401);
        assert!(s.handle(&client_msg(DISCOVER, MAC, 9, &[]), later).is_some());
        assert_eq!(s.leases.len(), 1);
    }

    #[test]
    fn garbage_is_ignored() {
        let mut s = server();
        let now = Instant::now();
        let good = client_msg(DISCOVER, MAC, 1, &[(OPT_HOSTNAME, vec![b'x'; 10])]);
        for len in 0..good.len() {
            let _ = s.handle(&good[..len], now);
        }
        let mut bad_len = good.clone();
        bad_len[OPTIONS_OFFSET + 4] = 200; // hostname length past the end
        let _ = s.handle(&bad_len, now);
        let mut no_type = good.clone();
        no_type[OPTIONS_OFFSET] = 99;
        assert!(s.handle(&no_type, now).is_none());
    }
}
