//! Backend configuration and the `--nic` option string.
//!
//! The user network's keys are QEMU's `-netdev user` names:
//!
//! | key | meaning | default |
//! | --- | --- | --- |
//! | `net=ADDR[/MASK]` | the guest network (MASK: prefix length or dotted) | `10.0.2.0/24` |
//! | `host=ADDR` | the gateway; guest traffic to it reaches the host's loopback | net + 2 |
//! | `dns=ADDR` | the DNS forwarder | net + 3 |
//! | `dhcpstart=ADDR` | the first address DHCP hands out | net + 15 |
//! | `hostname=NAME` | DHCP option 12 | none |
//! | `domainname=NAME` | DHCP option 15 | none |
//! | `hostfwd=[tcp\|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT` | a port forward (repeatable) | none |
//! | `restrict=on\|off` | the guest reaches only the NAT's services and forwarded ports | off |
//! | `allow=[tcp:\|udp:]ADDR[/PREFIX][:PORT]` | with `restrict` (which it turns on), the guest may also reach these (repeatable) | none |
//! | `dnsupstream=ADDR[:PORT]\|none` | where DNS queries go (repeatable) | /etc/resolv.conf |
//! | `maxflows=N` | TCP + UDP flows at once | 256 |
//! | `flowbuf=BYTES` | buffer per TCP flow and direction | 131072 |
//! | `tcpidle=SECS`, `udpidle=SECS` | idle flows are closed after this | 7200, 120 |
//! | `ipv4=on\|off` | the guest's IPv4 (ARP, DHCP, IPv4 traffic, port forwards) | on |
//! | `ipv6=on\|off` | the guest's IPv6 (router advertisements, NDP, IPv6 traffic) | on |
//! | `ipv6-net=ADDR[/PREFIX]` | the IPv6 prefix advertised to the guest (PREFIX 1-126, default 64) | `fec0::/64` |
//! | `ipv6-prefix=ADDR`, `ipv6-prefixlen=PREFIX` | QEMU's spelling of `ipv6-net` | |
//! | `ipv6-host=ADDR` | the IPv6 gateway; guest traffic to it reaches the host's loopback | prefix + 2 |
//! | `ipv6-dns=ADDR` | the IPv6 address of the DNS forwarder (announced in RDNSS) | prefix + 3 |
//!
//! IPv6 addresses in `allow=` are written in brackets when a port follows
//! (`allow=tcp:[fec0::2]:8080`, `allow=[2001:db8::]/32`).
//!
//! `model=`, `mac=`, `vectors=` and `pcap=` are for the machine (the NIC
//! model, its MAC address, the MSI-X vectors of a virtio NIC as QEMU's
//! virtio-net-pci `vectors=` property, 0 for none, and a capture file);
//! [`NicSpec`] returns them. A hub takes `id=`
//! and optionally `path=` (the socket directory).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::Error;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The guest NIC's default address, as QEMU's.
    pub const DEFAULT_GUEST: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or("expected six hex bytes such as 52:54:00:12:34:56")?;
            if part.len() != 2 {
                return Err("expected six hex bytes such as 52:54:00:12:34:56".into());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| format!("'{part}' is not a hex byte"))?;
        }
        if parts.next().is_some() {
            return Err("expected six hex bytes such as 52:54:00:12:34:56".into());
        }
        if out[0] & 1 != 0 {
            return Err("a multicast address cannot be a NIC's address".into());
        }
        Ok(MacAddr(out))
    }
}

/// A transport protocol of a port forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// "tcp" or "udp".
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A destination the guest may reach past `restrict` (`allow=`):
/// `[tcp:|udp:]ADDR[/PREFIX][:PORT]`, an IPv6 ADDR in brackets when a port
/// follows (`[ADDR][/PREFIX][:PORT]`). Without a port every protocol
/// (TCP, UDP, ICMP echo) may reach the addresses; with one, TCP and UDP
/// (or the one named) to that port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Allow {
    /// The protocol, when one is named.
    pub proto: Option<Proto>,
    /// The network's address (IPv4 or IPv6).
    pub net: IpAddr,
    /// Its prefix length (32 or 128: one address).
    pub prefix_len: u8,
    /// The port, when one is named.
    pub port: Option<u16>,
}

impl Allow {
    /// Whether the entry lets traffic to `addr` through: `port` is the
    /// protocol and port of TCP or UDP, `None` for an ICMP echo.
    pub fn permits(&self, addr: impl Into<IpAddr>, port: Option<(Proto, u16)>) -> bool {
        let inside = match (addr.into(), self.net) {
            (IpAddr::V4(a), IpAddr::V4(n)) => in_net(a, n, self.prefix_len),
            (IpAddr::V6(a), IpAddr::V6(n)) => in_net6(a, n, self.prefix_len),
            _ => false,
        };
        if !inside {
            return false;
        }
        match (port, self.proto, self.port) {
            (None, None, None) => true,
            (None, _, _) => false,
            (Some((p, n)), proto, want) => proto.is_none_or(|q| q == p) && want.is_none_or(|w| w == n),
        }
    }
}

impl FromStr for Allow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (proto, rest) = match s.split_once(':') {
            Some(("tcp", r)) => (Some(Proto::Tcp), r),
            Some(("udp", r)) => (Some(Proto::Udp), r),
            _ => (None, s),
        };
        // ADDR[/PREFIX] and what follows it: `[V6][/P][:PORT]`, a bare V6
        // address (no port), or `V4[/P][:PORT]`.
        let (addr, prefix, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (inside, after) =
                inner.split_once(']').ok_or_else(|| format!("allow={s}: '[' without a closing ']'"))?;
            let (inside, p_in) = match inside.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (inside, None),
            };
            let (p_out, port) = match after.split_once(':') {
                Some((p, port)) => (p, Some(port)),
                None => (after, None),
            };
            let prefix = match (p_in, p_out.strip_prefix('/')) {
                (Some(p), None) if p_out.is_empty() => Some(p),
                (None, Some(p)) => Some(p),
                (None, None) if p_out.is_empty() => None,
                _ => return Err(format!("allow={s}: expected [ADDR][/PREFIX][:PORT]")),
            };
            (inside, prefix, port)
        } else if rest.matches(':').count() >= 2 {
            // An IPv6 address without brackets takes no port.
            match rest.split_once('/') {
                Some((a, p)) => (a, Some(p), None),
                None => (rest, None, None),
            }
        } else {
            let (addr, port) = match rest.split_once(':') {
                Some((a, p)) => (a, Some(p)),
                None => (rest, None),
            };
            match addr.split_once('/') {
                Some((a, p)) => (a, Some(p), port),
                None => (addr, None, port),
            }
        };
        let port = port.map(|p| parse_port(p, "allow port", false)).transpose()?;
        if proto.is_some() && port.is_none() {
            return Err(format!("allow={s}: a protocol needs a port (tcp:ADDR:PORT)"));
        }
        let net: IpAddr = addr.parse().map_err(|_| format!("allow={s}: '{addr}' is not an IPv4 or IPv6 address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("allow={s}: '/{p}' is not a prefix length (0-{max})")),
            },
            None => max,
        };
        let host_bits = match net {
            IpAddr::V4(a) => u32::from(a) & !prefix_mask(prefix_len) != 0,
            IpAddr::V6(a) => u128::from(a) & !prefix_mask6(prefix_len) != 0,
        };
        if host_bits {
            return Err(format!("allow={s}: the address has bits past /{prefix_len}"));
        }
        Ok(Allow { proto, net, prefix_len, port })
    }
}

/// A host port forward: connections or datagrams to `host` go to the guest's
/// `guest_addr:guest_port`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HostFwd {
    /// TCP or UDP.
    pub proto: Proto,
    /// Where the host listens. Port 0 picks a free port
    /// ([`UserNet::hostfwd_addrs`](crate::UserNet::hostfwd_addrs) tells which).
    pub host: SocketAddrV4,
    /// The guest address; `None` means the first DHCP address.
    pub guest_addr: Option<Ipv4Addr>,
    /// The guest port.
    pub guest_port: u16,
}

impl FromStr for HostFwd {
    type Err = String;

    /// Parses `[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`.
    fn from_str(spec: &str) -> Result<Self, String> {
        const FORM: &str = "expected [tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT";
        let (host_part, guest_part) =
            spec.split_once('-').ok_or_else(|| format!("missing '-' between the host and guest sides; {FORM}"))?;
        let mut fields: Vec<&str> = host_part.split(':').collect();
        let proto = match fields.len() {
            3 => match fields.remove(0) {
                "tcp" | "" => Proto::Tcp,
                "udp" => Proto::Udp,
                other => return Err(format!("protocol '{other}' is neither tcp nor udp")),
            },
            2 => Proto::Tcp,
            _ => return Err(FORM.to_string()),
        };
        let host_addr = parse_opt_addr(fields[0], "HOSTADDR")?.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let host_port = parse_port(fields[1], "HOSTPORT", true)?;
        let (gaddr, gport) =
            guest_part.split_once(':').ok_or_else(|| format!("the guest side needs [GUESTADDR]:GUESTPORT; {FORM}"))?;
        let guest_addr = parse_opt_addr(gaddr, "GUESTADDR")?;
        let guest_port = parse_port(gport, "GUESTPORT", false)?;
        Ok(HostFwd { proto, host: SocketAddrV4::new(host_addr, host_port), guest_addr, guest_port })
    }
}

fn parse_opt_addr(s: &str, what: &str) -> Result<Option<Ipv4Addr>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| format!("{what} '{s}' is not an IPv4 address"))
}

fn parse_port(s: &str, what: &str, zero_ok: bool) -> Result<u16, String> {
    let port: u16 = s.parse().map_err(|_| format!("{what} '{s}' is not a port number (0-65535)"))?;
    if port == 0 && !zero_ok {
        return Err(format!("{what} must not be 0"));
    }
    Ok(port)
}

/// Where the DNS forwarder sends queries.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum DnsUpstream {
    /// The `nameserver` lines of /etc/resolv.conf, read when the NAT starts.
    #[default]
    System,
    /// These servers, tried in order.
    Servers(Vec<SocketAddr>),
    /// None: every query is answered with SERVFAIL.
    Disabled,
}

/// Bounds on what the guest can make the NAT hold.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Limits {
    /// TCP and UDP flows (each with one host socket) at once. When full, the
    /// oldest flow still in its handshake is dropped; if none is, the new
    /// connection is refused.
    pub max_flows: usize,
    /// Buffer bytes per TCP flow and direction (two per flow).
    pub flow_buffer: usize,
    /// Frames waiting for the guest to take them.
    pub guest_queue: usize,
    /// A TCP flow with no traffic for this long is reset both ways.
    pub tcp_idle: Duration,
    /// A UDP flow with no traffic for this long is closed.
    pub udp_idle: Duration,
    /// A host connect that has not finished by then refuses the guest.
    pub connect_timeout: Duration,
    /// An upstream DNS server that has not answered by then is given up.
    pub dns_timeout: Duration,
    /// DNS queries waiting for upstream answers at once.
    pub dns_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_flows: 256,
            flow_buffer: 128 * 1024,
            guest_queue: 2048,
            tcp_idle: Duration::from_secs(7200),
            udp_idle: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(20),
            dns_timeout: Duration::from_secs(2),
            dns_pending: 256,
        }
    }
}

/// The user-mode NAT's configuration (QEMU `-netdev user`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct UserNetConfig {
    /// The guest network's address.
    pub net: Ipv4Addr,
    /// The guest network's prefix length.
    pub prefix_len: u8,
    /// The gateway address (QEMU `host=`).
    pub host: Ipv4Addr,
    /// The DNS forwarder's address.
    pub dns: Ipv4Addr,
    /// The first address that DHCP hands out.
    pub dhcp_start: Ipv4Addr,
    /// The MAC address the NAT's own addresses answer with.
    pub gateway_mac: MacAddr,
    /// DHCP option 12.
    pub hostname: Option<String>,
    /// DHCP option 15.
    pub domain: Option<String>,
    /// DHCP lease time.
    pub lease_time: Duration,
    /// DHCP option 26 (interface MTU).
    pub mtu: u16,
    /// Where DNS queries go.
    pub dns_upstream: DnsUpstream,
    /// Only the NAT's own services and the port forwards are reachable.
    pub restrict: bool,
    /// `allow=`: destinations reachable past `restrict`, which any entry
    /// turns on.
    pub allow: Vec<Allow>,
    /// Host port forwards.
    pub hostfwd: Vec<HostFwd>,
    /// Resource bounds.
    pub limits: Limits,
    /// `tftp=`: the folder the TFTP server on the gateway serves (read only).
    pub tftp: Option<PathBuf>,
    /// `bootfile=`: the boot file DHCP names (BOOTP `file` and option 67),
    /// for a PXE loader to fetch over TFTP.
    pub bootfile: Option<String>,
    /// `ipv4=`: the guest's IPv4 is served (ARP, DHCP, IPv4 traffic, port
    /// forwards); off, IPv4 frames are dropped.
    #[cfg_attr(feature = "serde", serde(default = "on"))]
    pub ipv4: bool,
    /// `ipv6=`: the guest's IPv6 is served (router advertisements, NDP,
    /// IPv6 traffic); off, IPv6 frames are dropped.
    #[cfg_attr(feature = "serde", serde(default = "on"))]
    pub ipv6: bool,
    /// The IPv6 prefix the router advertisements carry (QEMU `ipv6-prefix=`).
    #[cfg_attr(feature = "serde", serde(default = "default_ipv6_net"))]
    pub ipv6_net: Ipv6Addr,
    /// Its length (QEMU `ipv6-prefixlen=`).
    #[cfg_attr(feature = "serde", serde(default = "default_ipv6_prefix_len"))]
    pub ipv6_prefix_len: u8,
    /// The IPv6 gateway (QEMU `ipv6-host=`); guest traffic to it reaches the
    /// host's loopback.
    #[cfg_attr(feature = "serde", serde(default = "default_ipv6_host"))]
    pub ipv6_host: Ipv6Addr,
    /// The DNS forwarder's IPv6 address (QEMU `ipv6-dns=`).
    #[cfg_attr(feature = "serde", serde(default = "default_ipv6_dns"))]
    pub ipv6_dns: Ipv6Addr,
}

fn on() -> bool {
    true
}

fn default_ipv6_net() -> Ipv6Addr {
    Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0)
}

fn default_ipv6_prefix_len() -> u8 {
    64
}

fn default_ipv6_host() -> Ipv6Addr {
    Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 2)
}

fn default_ipv6_dns() -> Ipv6Addr {
    Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 3)
}

impl Default for UserNetConfig {
    fn default() -> Self {
        UserNetConfig {
            net: Ipv4Addr::new(10, 0, 2, 0),
            prefix_len: 24,
            host: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            dhcp_start: Ipv4Addr::new(10, 0, 2, 15),
            // QEMU's gateway MAC: 52:55 followed by the gateway's address.
            gateway_mac: MacAddr([0x52, 0x55, 10, 0, 2, 2]),
            hostname: None,
            domain: None,
            lease_time: Duration::from_secs(86400),
            mtu: 1500,
            dns_upstream: DnsUpstream::System,
            restrict: false,
            allow: Vec::new(),
            hostfwd: Vec::new(),
            limits: Limits::default(),
            tftp: None,
            bootfile: None,
            ipv4: on(),
            ipv6: on(),
            ipv6_net: default_ipv6_net(),
            ipv6_prefix_len: default_ipv6_prefix_len(),
            ipv6_host: default_ipv6_host(),
            ipv6_dns: default_ipv6_dns(),
        }
    }
}

impl UserNetConfig {
    /// The subnet mask as an address (255.255.255.0 for /24).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_mask(self.prefix_len))
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) | !prefix_mask(self.prefix_len))
    }

    /// Whether the guest may reach `addr` outside the NAT (TCP or UDP to
    /// `port`, or an ICMP echo with `None`): always without `restrict`,
    /// else where an `allow=` entry lets it.
    pub fn permits(&self, addr: impl Into<IpAddr>, port: Option<(Proto, u16)>) -> bool {
        let addr = addr.into();
        !self.restrict || self.allow.iter().any(|a| a.permits(addr, port))
    }

    /// Whether `addr` lies in the guest network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        in_net(addr, self.net, self.prefix_len)
    }

    /// Whether `addr` lies in the guest's IPv6 prefix.
    pub fn contains6(&self, addr: Ipv6Addr) -> bool {
        in_net6(addr, self.ipv6_net, self.ipv6_prefix_len)
    }

    /// Checks that the addresses fit together.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::BadConfig(m));
        if !(8..=30).contains(&self.prefix_len) {
            return bad(format!("net prefix /{} is outside /8../30; use e.g. net=10.0.2.0/24", self.prefix_len));
        }
        if u32::from(self.net) & !prefix_mask(self.prefix_len) != 0 {
            return bad(format!(
                "net {}/{} has host bits set; use {}/{}",
                self.net,
                self.prefix_len,
                Ipv4Addr::from(u32::from(self.net) & prefix_mask(self.prefix_len)),
                self.prefix_len
            ));
        }
        for (name, addr) in [("host", self.host), ("dns", self.dns), ("dhcpstart", self.dhcp_start)] {
            if !self.contains(addr) || addr == self.net || addr == self.broadcast() {
                return bad(format!("{name}={addr} is not a host address of {}/{}", self.net, self.prefix_len));
            }
        }
        if self.host == self.dns {
            return bad(format!("host and dns are both {}; give them different addresses", self.host));
        }
        if self.dhcp_start == self.host || self.dhcp_start == self.dns {
            return bad(format!("dhcpstart={} collides with host or dns", self.dhcp_start));
        }
        if self.limits.max_flows == 0 || self.limits.flow_buffer < 1024 || self.limits.guest_queue < 16 {
            return bad("maxflows must be at least 1 and flowbuf at least 1024".into());
        }
        if usize::from(self.mtu) < 576 || usize::from(self.mtu) > crate::MAX_FRAME_LEN - 14 {
            return bad(format!("mtu {} is outside 576..1500", self.mtu));
        }
        if !self.ipv4 && !self.ipv6 {
            return bad("ipv4=off and ipv6=off leave the guest no network; turn one on".into());
        }
        if !self.ipv4 && !self.hostfwd.is_empty() {
            return bad("hostfwd reaches the guest over IPv4; it needs ipv4=on".into());
        }
        if self.ipv6 {
            self.validate_ipv6()?;
        }
        Ok(())
    }

    fn validate_ipv6(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::BadConfig(m));
        let (net, len) = (self.ipv6_net, self.ipv6_prefix_len);
        if !(1..=126).contains(&len) {
            return bad(format!("ipv6 prefix /{len} is outside /1../126; use e.g. ipv6-net=fec0::/64"));
        }
        if u128::from(net) & !prefix_mask6(len) != 0 {
            let base = Ipv6Addr::from(u128::from(net) & prefix_mask6(len));
            return bad(format!("ipv6-net {net}/{len} has host bits set; use {base}/{len}"));
        }
        if net.is_multicast() || net.is_loopback() || net.is_unspecified() || is_link_local6(net) {
            return bad(format!("ipv6-net {net}/{len} is not a unicast prefix a guest can use"));
        }
        for (name, addr) in [("ipv6-host", self.ipv6_host), ("ipv6-dns", self.ipv6_dns)] {
            if !self.contains6(addr) || addr == net {
                return bad(format!("{name}={addr} is not a host address of {net}/{len}"));
            }
        }
        if self.ipv6_host == self.ipv6_dns {
            return bad(format!("ipv6-host and ipv6-dns are both {}; give them different addresses", self.ipv6_host));
        }
        Ok(())
    }

    /// Applies one `key=value` of the user network. `Ok(false)` for a key it
    /// does not know.
    fn apply(&mut self, key: &str, value: &str, net_given: &mut bool) -> Result<bool, String> {
        let addr =
            |v: &str| -> Result<Ipv4Addr, String> { v.parse().map_err(|_| format!("'{v}' is not an IPv4 address")) };
        let addr6 =
            |v: &str| -> Result<Ipv6Addr, String> { v.parse().map_err(|_| format!("'{v}' is not an IPv6 address")) };
        let prefix6 = |v: &str| -> Result<u8, String> {
            match v.parse::<u8>() {
                Ok(p) if p <= 128 => Ok(p),
                _ => Err(format!("'{v}' is not an IPv6 prefix length (1-126)")),
            }
        };
        let secs = |v: &str| -> Result<Duration, String> {
            v.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("'{v}' is not a number of seconds"))
        };
        let count =
            |v: &str| -> Result<usize, String> { v.parse::<usize>().map_err(|_| format!("'{v}' is not a number")) };
        match key {
            "net" => {
                let (a, m) = match value.split_once('/') {
                    Some((a, m)) => (a, Some(m)),
                    None => (value, None),
                };
                self.net = addr(a)?;
                self.prefix_len = match m {
                    None => 24,
                    Some(m) => match m.parse::<u8>() {
                        Ok(p) if p <= 32 => p,
                        _ => {
                            let mask = u32::from(addr(m)?);
                            if mask.leading_ones() + mask.trailing_zeros() != 32 {
                                return Err(format!("'{m}' is not a contiguous netmask"));
                            }
                            mask.leading_ones() as u8
                        }
                    },
                };
                *net_given = true;
            }
            "host" => self.host = addr(value)?,
            "dns" => self.dns = addr(value)?,
            "dhcpstart" => self.dhcp_start = addr(value)?,
            "hostname" => self.hostname = Some(check_name(value)?),
            "domainname" => self.domain = Some(check_name(value)?),
            "hostfwd" => self.hostfwd.push(value.parse()?),
            "restrict" => self.restrict = parse_bool(value)?,
            "allow" => {
                self.allow.push(value.parse()?);
                self.restrict = true;
            }
            "tftp" if !value.is_empty() => self.tftp = Some(PathBuf::from(value)),
            "bootfile" => {
                // It goes in BOOTP's 128-byte `file` field, NUL-terminated.
                if value.is_empty() || value.len() > 127 || value.bytes().any(|b| b.is_ascii_control()) {
                    return Err(format!("'{value}' is not a boot file name (1-127 printable characters)"));
                }
                self.bootfile = Some(value.to_string());
            }
            "dnsupstream" => {
                if value == "none" {
                    self.dns_upstream = DnsUpstream::Disabled;
                } else {
                    let server = parse_upstream(value)?;
                    match &mut self.dns_upstream {
                        DnsUpstream::Servers(list) => list.push(server),
                        other => *other = DnsUpstream::Servers(vec![server]),
                    }
                }
            }
            "maxflows" => self.limits.max_flows = count(value)?,
            "flowbuf" => self.limits.flow_buffer = count(value)?,
            "tcpidle" => self.limits.tcp_idle = secs(value)?,
            "udpidle" => self.limits.udp_idle = secs(value)?,
            "ipv4" => self.ipv4 = parse_bool(value)?,
            "ipv6" => self.ipv6 = parse_bool(value)?,
            "ipv6-net" => {
                let (a, p) = match value.split_once('/') {
                    Some((a, p)) => (a, Some(p)),
                    None => (value, None),
                };
                self.ipv6_net = addr6(a)?;
                self.ipv6_prefix_len = p.map(prefix6).transpose()?.unwrap_or(64);
            }
            "ipv6-prefix" => self.ipv6_net = addr6(value)?,
            "ipv6-prefixlen" => self.ipv6_prefix_len = prefix6(value)?,
            "ipv6-host" => self.ipv6_host = addr6(value)?,
            "ipv6-dns" => self.ipv6_dns = addr6(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Whether `addr` lies in the network `net`/`prefix_len`.
fn in_net(addr: Ipv4Addr, net: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = prefix_mask(prefix_len);
    u32::from(addr) & mask == u32::from(net) & mask
}

/// Whether `addr` lies in the IPv6 network `net`/`prefix_len`.
fn in_net6(addr: Ipv6Addr, net: Ipv6Addr, prefix_len: u8) -> bool {
    let mask = prefix_mask6(prefix_len);
    u128::from(addr) & mask == u128::from(net) & mask
}

fn prefix_mask6(prefix_len: u8) -> u128 {
    match prefix_len {
        0 => 0,
        p if p >= 128 => u128::MAX,
        p => u128::MAX << (128 - p),
    }
}

/// Whether `addr` is link-local unicast (fe80::/10).
pub(crate) fn is_link_local6(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

fn prefix_mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - p),
    }
}

fn check_name(v: &str) -> Result<String, String> {
    if v.is_empty() || v.len() > 255 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Err(format!("'{v}' is not a host or domain name (letters, digits, '-', '.')"));
    }
    Ok(v.to_string())
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("'{v}' is neither on nor off")),
    }
}

fn parse_upstream(v: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = v.parse::<SocketAddr>() {
        return Ok(sa);
    }
    v.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("'{v}' is not ADDR or ADDR:PORT (IPv6 as [ADDR]:PORT)"))
}

/// A hub backend's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubConfig {
    /// The network's name; members with the same id (and directory) meet.
    pub id: String,
    /// The socket directory; default `$XDG_RUNTIME_DIR/ferrovm-hub/ID`, or
    /// `/tmp/ferrovm-hub-UID/ID`.
    pub dir: Option<PathBuf>,
}

/// Which backend a `--nic` option names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendSpec {
    /// `user`: the user-mode NAT.
    User(Box<UserNetConfig>),
    /// `hub`: an internal network between VMs.
    Hub(HubConfig),
    /// `tap` or `bridge`: a host TAP interface, alone or on a bridge.
    Tap(crate::TapConfig),
    /// `unconnected`: no network (QEMU's NIC without a peer).
    Unconnected,
}

/// A parsed `--nic TYPE,key=value,...` option: the backend plus the keys
/// that belong to the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicSpec {
    /// The backend and its configuration.
    pub backend: BackendSpec,
    /// `model=`: the NIC model ("e1000", "virtio"), for the machine to pick.
    pub model: Option<String>,
    /// `mac=`: the guest NIC's address.
    pub mac: Option<MacAddr>,
    /// `vectors=`: MSI-X vectors of a virtio NIC (0: INTx only).
    pub vectors: Option<u16>,
    /// `pcap=`: capture both directions to this file.
    pub pcap: Option<PathBuf>,
    /// `romfile=`: the NIC's boot ROM.
    pub rom: NicRom,
}

/// A NIC's boot ROM (QEMU's `romfile=`), which the BIOS runs to boot from
/// the network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NicRom {
    /// The model's iPXE ROM, loaded when the boot order has `n`.
    #[default]
    Default,
    /// `romfile=` with no file: none.
    Off,
    /// `romfile=FILE`.
    File(PathBuf),
}

impl FromStr for NicSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let mut parts = s.split(',');
        let kind = parts.next().unwrap_or("");
        let bad = |option: &str, reason: String| Error::BadOption { option: option.to_string(), reason };
        let mut user = UserNetConfig::default();
        let mut net_given = false;
        let mut hub_id = None;
        let mut hub_dir = None;
        let mut tap = crate::TapConfig::default();
        let (mut model, mut mac, mut vectors, mut pcap) = (None, None, None, None);
        let mut rom = NicRom::Default;
        let is_user = match kind {
            "user" => true,
            "hub" | "tap" | "bridge" | "unconnected" => false,
            other => {
                return Err(bad(s, format!("backend '{other}' is unknown; use user, hub, tap, bridge or unconnected")));
            }
        };
        let script = |v: &str| (v != "no" && !v.is_empty()).then(|| PathBuf::from(v));
        for part in parts.filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| bad(part, "expected key=value".into()))?;
            match key {
                "model" => model = Some(value.to_string()),
                "mac" => mac = Some(value.parse().map_err(|e| bad(part, e))?),
                "vectors" => {
                    let n = value.parse::<u16>();
                    vectors = Some(n.map_err(|_| bad(part, "expected a number of vectors (0: no MSI-X)".into()))?);
                }
                "pcap" if !value.is_empty() => pcap = Some(PathBuf::from(value)),
                "romfile" if value.is_empty() => rom = NicRom::Off,
                "romfile" => rom = NicRom::File(PathBuf::from(value)),
                "id" if kind == "hub" => hub_id = Some(value.to_string()),
                "path" if kind == "hub" => hub_dir = Some(PathBuf::from(value)),
                "ifname" if kind == "tap" => {
                    crate::tap::check_ifname(value).map_err(|e| bad(part, e))?;
                    tap.ifname = Some(value.to_string());
                }
                "script" if kind == "tap" => tap.script = script(value),
                "downscript" if kind == "tap" => tap.downscript = script(value),
                "br" if kind == "bridge" => {
                    crate::tap::check_ifname(value).map_err(|e| bad(part, e))?;
                    tap.bridge = Some(value.to_string());
                }
                _ if is_user => {
                    if !user.apply(key, value, &mut net_given).map_err(|e| bad(part, e))? {
                        return Err(bad(
                            part,
                            format!(
                                "unknown key '{key}'; user takes net, host, dns, dhcpstart, hostname, \
                                 domainname, hostfwd, restrict, allow, tftp, bootfile, dnsupstream, maxflows, \
                                 flowbuf, tcpidle, udpidle, ipv4, ipv6, ipv6-net, ipv6-prefix, ipv6-prefixlen, \
                                 ipv6-host, ipv6-dns, model, mac, vectors, pcap, romfile"
                            ),
                        ));
                    }
                }
                _ => {
                    let keys = match kind {
                        "hub" => "id, path",
                        "tap" => "ifname, script, downscript",
                        "unconnected" => "no keys of its own",
                        _ => "br",
                    };
                    return Err(bad(
                        part,
                        format!("unknown key '{key}'; {kind} takes {keys}, model, mac, vectors, pcap, romfile"),
                    ));
                }
            }
        }
        let backend = if is_user {
            if net_given {
                // Addresses not given follow the network, as in QEMU.
                let base = u32::from(user.net);
                let given = |k: &str| s.split(',').any(|p| p.starts_with(&format!("{k}=")));
                if !given("host") {
                    user.host = Ipv4Addr::from(base | 2);
                }
                if !given("dns") {
                    user.dns = Ipv4Addr::from(base | 3);
                }
                if !given("dhcpstart") {
                    user.dhcp_start = Ipv4Addr::from(base | 15);
                }
                if !given("host") {
                    let o = user.host.octets();
                    user.gateway_mac = MacAddr([0x52, 0x55, o[0], o[1], o[2], o[3]]);
                }
            }
            let given = |k: &str| s.split(',').any(|p| p.starts_with(&format!("{k}=")));
            if given("ipv6-net") || given("ipv6-prefix") || given("ipv6-prefixlen") {
                // The gateway and DNS addresses follow the prefix, as in QEMU.
                let base = u128::from(user.ipv6_net) & prefix_mask6(user.ipv6_prefix_len);
                if !given("ipv6-host") {
                    user.ipv6_host = Ipv6Addr::from(base | 2);
                }
                if !given("ipv6-dns") {
                    user.ipv6_dns = Ipv6Addr::from(base | 3);
                }
            }
            user.validate()?;
            BackendSpec::User(Box::new(user))
        } else if kind == "tap" {
            BackendSpec::Tap(tap)
        } else if kind == "unconnected" {
            BackendSpec::Unconnected
        } else if kind == "bridge" {
            // QEMU's bridge helper's default bridge.
            tap.bridge.get_or_insert_with(|| "br0".to_string());
            BackendSpec::Tap(tap)
        } else {
            let id = hub_id.ok_or_else(|| bad(s, "a hub needs id=NAME".into()))?;
            crate::hub::check_id(&id).map_err(|e| bad(s, e))?;
            BackendSpec::Hub(HubConfig { id, dir: hub_dir })
        };
        Ok(NicSpec { backend, model, mac, vectors, pcap, rom })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserNetConfig {
        match s.parse::<NicSpec>().unwrap().backend {
            BackendSpec::User(c) => *c,
            other => panic!("not user: {other:?}"),
        }
    }

    #[test]
    fn defaults_match_qemu() {
        let c = user("user");
        assert_eq!(c.host, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(c.dns, Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(c.dhcp_start, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(!c.restrict);
    }

    #[test]
    fn full_option_string() {
        let spec: NicSpec = "user,model=virtio,mac=52:54:00:aa:bb:cc,pcap=/tmp/x.pcap,\
            hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:5353-10.0.2.16:53,restrict=on,\
            dnsupstream=127.0.0.1:5300,hostname=guest,maxflows=64"
            .parse()
            .unwrap();
        assert_eq!(spec.model.as_deref(), Some("virtio"));
        assert_eq!(spec.mac, Some(MacAddr([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc])));
        assert_eq!(spec.pcap, Some(PathBuf::from("/tmp/x.pcap")));
        let BackendSpec::User(c) = spec.backend else { panic!() };
        assert!(c.restrict);
        assert_eq!(c.limits.max_flows, 64);
        assert_eq!(c.hostname.as_deref(), Some("guest"));
        assert_eq!(c.dns_upstream, DnsUpstream::Servers(vec!["127.0.0.1:5300".parse().unwrap()]));
        assert_eq!(
            c.hostfwd,
            vec![
                HostFwd { proto: Proto::Tcp, host: "0.0.0.0:2222".parse().unwrap(), guest_addr: None, guest_port: 22 },
                HostFwd {
                    proto: Proto::Udp,
                    host: "127.0.0.1:5353".parse().unwrap(),
                    guest_addr: Some(Ipv4Addr::new(10, 0, 2, 16)),
                    guest_port: 53
                },
            ]
        );
    }

    #[test]
    fn net_moves_the_other_addresses() {
        let c = user("user,net=192.168.76.0/255.255.255.0");
        assert_eq!(c.prefix_len, 24);
        assert_eq!(c.host, Ipv4Addr::new(192, 168, 76, 2));
        assert_eq!(c.dns, Ipv4Addr::new(192, 168, 76, 3));
        assert_eq!(c.dhcp_start, Ipv4Addr::new(192, 168, 76, 15));
        let c = user("user,net=172.16.0.0/16,dhcpstart=172.16.1.1");
        assert_eq!(c.dhcp_start, Ipv4Addr::new(172, 16, 1, 1));
    }

    #[test]
    fn bad_specs_name_the_problem() {
        for (s, needle) in [
            ("user,hostfwd=tcp:1.2.3.4:80", "missing '-'"),
            ("user,hostfwd=sctp::80-:80", "neither tcp nor udp"),
            ("user,hostfwd=tcp::99999-:80", "not a port"),
            ("user,hostfwd=tcp::80-:0", "must not be 0"),
            ("user,hostfwd=tcp::80-1.2.3:80", "not an IPv4"),
            ("user,hostfwd=tcp::80-80", "GUESTADDR"),
            ("user,restrict=maybe", "neither on nor off"),
            ("user,bogus=1", "unknown key 'bogus'"),
            ("user,host=10.0.3.2", "not a host address"),
            ("user,dns=10.0.2.2", "different addresses"),
            ("user,net=10.0.2.1/24", "host bits"),
            ("user,mac=01:00:00:00:00:01", "multicast"),
            ("user,mac=zz", "hex byte"),
            ("user,mac=52:54:00", "six hex bytes"),
            ("vde,sock=x", "unknown"),
            ("tap,ifname=a/b", "interface name"),
            ("tap,br=br0", "unknown key 'br'; tap takes ifname"),
            ("bridge,ifname=t0", "unknown key 'ifname'; bridge takes br"),
            ("hub", "needs id"),
            ("hub,id=../x", "id"),
            ("unconnected,id=x", "unconnected takes no keys of its own"),
            ("user,dnsupstream=nowhere", "ADDR:PORT"),
        ] {
            let err = s.parse::<NicSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{s}: {err}");
        }
    }

    #[test]
    fn hub_spec() {
        let spec: NicSpec = "hub,id=lan0,model=virtio,vectors=0".parse().unwrap();
        assert_eq!(spec.vectors, Some(0));
        assert!("user,vectors=x".parse::<NicSpec>().unwrap_err().to_string().contains("number of vectors"));
        assert!("user,vectors=70000".parse::<NicSpec>().is_err());
        let spec: NicSpec = "hub,id=lan0,model=e1000".parse().unwrap();
        assert_eq!(spec.vectors, None);
        assert_eq!(spec.backend, BackendSpec::Hub(HubConfig { id: "lan0".into(), dir: None }));
        let spec: NicSpec = "unconnected,model=e1000,mac=52:54:00:12:34:99".parse().unwrap();
        assert_eq!(spec.backend, BackendSpec::Unconnected);
        let mut b = crate::open(&spec).unwrap();
        b.send(&[0u8; 60]);
        assert_eq!((b.recv(&mut [0u8; 64]), b.peek_len(), b.wake_fd().is_none()), (None, None, true));
        assert_eq!(b.debug_label(), "unconnected");
    }

    #[test]
    fn tap_and_bridge_specs() {
        let spec: NicSpec = "tap,ifname=tap7,script=/etc/up,downscript=no,model=virtio".parse().unwrap();
        let want = crate::TapConfig {
            ifname: Some("tap7".into()),
            script: Some(PathBuf::from("/etc/up")),
            downscript: None,
            bridge: None,
        };
        assert_eq!(spec.backend, BackendSpec::Tap(want));
        assert_eq!(spec.model.as_deref(), Some("virtio"));
        let spec: NicSpec = "tap".parse().unwrap();
        assert_eq!(spec.backend, BackendSpec::Tap(crate::TapConfig::default()));
        let spec: NicSpec = "bridge".parse().unwrap();
        let want = crate::TapConfig { bridge: Some("br0".into()), ..Default::default() };
        assert_eq!(spec.backend, BackendSpec::Tap(want));
        let spec: NicSpec = "bridge,br=virbr1,mac=52:54:00:00:00:09".parse().unwrap();
        let want = crate::TapConfig { bridge: Some("virbr1".into()), ..Default::default() };
        assert_eq!(spec.backend, BackendSpec::Tap(want));
    }

    #[test]
    fn allow_entries() {
        let c = user("user,allow=10.1.0.0/16,allow=tcp:10.0.2.2:8080,allow=192.0.2.7:53");
        assert!(c.restrict, "allow= turns restrict on");
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(c.permits(ip("10.1.200.3"), None));
        assert!(c.permits(ip("10.1.200.3"), Some((Proto::Udp, 9))));
        assert!(!c.permits(ip("10.2.0.1"), None));
        assert!(c.permits(ip("10.0.2.2"), Some((Proto::Tcp, 8080))));
        assert!(!c.permits(ip("10.0.2.2"), Some((Proto::Udp, 8080))));
        assert!(!c.permits(ip("10.0.2.2"), Some((Proto::Tcp, 8081))));
        assert!(!c.permits(ip("10.0.2.2"), None), "no ping to a port entry");
        assert!(
            c.permits(ip("192.0.2.7"), Some((Proto::Tcp, 53))) && c.permits(ip("192.0.2.7"), Some((Proto::Udp, 53)))
        );
        assert!(user("user").permits(ip("8.8.8.8"), None));
        for (s, needle) in [
            ("user,allow=10.0.0.1/33", "prefix length"),
            ("user,allow=10.0.0.1/8", "bits past"),
            ("user,allow=tcp:10.0.0.1", "needs a port"),
            ("user,allow=example.com", "not an IPv4"),
            ("user,allow=10.0.0.1:0", "must not be 0"),
        ] {
            let err = s.parse::<NicSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{s}: {err}");
        }
    }

    #[test]
    fn ipv6_keys() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let c = user("user");
        assert!(c.ipv4 && c.ipv6, "both on by default, as in QEMU");
        assert_eq!((c.ipv6_net, c.ipv6_prefix_len), (v6("fec0::"), 64));
        assert_eq!((c.ipv6_host, c.ipv6_dns), (v6("fec0::2"), v6("fec0::3")));
        let c = user("user,ipv6-net=fd00:aa::/48");
        assert_eq!((c.ipv6_net, c.ipv6_prefix_len), (v6("fd00:aa::"), 48));
        assert_eq!((c.ipv6_host, c.ipv6_dns), (v6("fd00:aa::2"), v6("fd00:aa::3")), "they follow the prefix");
        let c = user("user,ipv6-prefix=fd00:bb::,ipv6-prefixlen=56,ipv6-dns=fd00:bb::53");
        assert_eq!((c.ipv6_net, c.ipv6_prefix_len), (v6("fd00:bb::"), 56));
        assert_eq!((c.ipv6_host, c.ipv6_dns), (v6("fd00:bb::2"), v6("fd00:bb::53")));
        assert_eq!(user("user,ipv6-net=fd00:cc::").ipv6_prefix_len, 64);
        assert!(!user("user,ipv6=off").ipv6);
        assert!(!user("user,ipv4=off").ipv4);
        // IPv6 settings are not checked while IPv6 is off.
        assert!(!user("user,ipv6=off,ipv6-net=fe80::/64").ipv6);
        for (s, needle) in [
            ("user,ipv4=off,ipv6=off", "no network"),
            ("user,ipv4=off,hostfwd=tcp::1-:2", "ipv4=on"),
            ("user,ipv6-net=fec0::1/64", "host bits"),
            ("user,ipv6-net=fe80::/64", "unicast prefix"),
            ("user,ipv6-net=ff02::/64", "unicast prefix"),
            ("user,ipv6-net=fec0::/127", "/1../126"),
            ("user,ipv6-prefixlen=0", "/1../126"),
            ("user,ipv6-prefixlen=200", "prefix length"),
            ("user,ipv6-host=2001:db8::2", "not a host address"),
            ("user,ipv6-dns=fec0::", "not a host address"),
            ("user,ipv6-dns=fec0::2", "different addresses"),
            ("user,ipv6-host=10.0.2.2", "not an IPv6"),
            ("user,ipv6-net=fec0::/x", "prefix length"),
            ("user,ipv6=maybe", "neither on nor off"),
        ] {
            let err = s.parse::<NicSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{s}: {err}");
        }
    }

    #[test]
    fn allow_ipv6_entries() {
        let c =
            user("user,allow=tcp:[fec0::2]:8080,allow=[2001:db8::]/32,allow=2001:db8:1::5,allow=udp:[fd00::/16]:53");
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert!(c.permits(v6("fec0::2"), Some((Proto::Tcp, 8080))));
        assert!(!c.permits(v6("fec0::2"), Some((Proto::Udp, 8080))));
        assert!(!c.permits(v6("fec0::2"), None));
        assert!(c.permits(v6("2001:db8:ffff::1"), None));
        assert!(c.permits(v6("2001:db8:1::5"), Some((Proto::Tcp, 1))));
        assert!(c.permits(v6("fd00:1::1"), Some((Proto::Udp, 53))));
        assert!(!c.permits(v6("fd00:1::1"), Some((Proto::Tcp, 53))));
        assert!(!c.permits(Ipv4Addr::new(10, 0, 2, 2), Some((Proto::Tcp, 8080))), "IPv6 entries are IPv6 only");
        let a: Allow = "[fec0::]/64:22".parse().unwrap();
        assert_eq!((a.prefix_len, a.port), (64, Some(22)));
        for (s, needle) in [
            ("user,allow=[fec0::2", "closing"),
            ("user,allow=[fec0::]/129", "prefix length"),
            ("user,allow=[fec0::1]/64", "bits past"),
            ("user,allow=tcp:fec0::2", "needs a port"),
            ("user,allow=[fec0::2]x", "expected"),
            ("user,allow=[fec0::2/64]/64", "expected"),
            ("user,allow=[10.0.0.1]:0", "must not be 0"),
        ] {
            let err = s.parse::<NicSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{s}: {err}");
        }
    }
}
