//! What of the NAT can be saved: its configuration and the guest addresses
//! it knows ([`UserNetState`]).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use persist::{Persist, PersistError};
use smoltcp::wire::EthernetAddress;

use super::{dhcp, UserNet, GUEST_MACS};
use crate::{MacAddr, UserNetConfig};

/// The saved state of the user-mode NAT: its configuration (the guest
/// network, the gateway and DNS addresses, the DHCP range and options,
/// where DNS queries go, the port forwards, the limits) and the guest
/// addresses it knows: the DHCP leases it gave and the MAC address of each
/// guest address (IPv4 and IPv6) it heard from.
///
/// Live host flows cannot be saved and are not part of the state: the TCP
/// connections and UDP associations the NAT holds open to host sockets
/// (those of port forwards included), the DNS queries waiting for an
/// upstream answer, the ICMP echo sockets and the frames queued either
/// way are host resources and traffic in flight. A NAT a state is
/// restored into keeps the flows it has and gains none: a guest connection
/// that was open when the state was saved gets no answer, as after a
/// network outage, until the guest gives up on it or the NAT resets it.
///
/// The configuration is the one the NAT was built with, and a state only
/// restores into a NAT built with the same (`UserNet::new(state.config.clone())`):
/// the port forwards are host sockets bound when the NAT is built. A bound
/// lease runs for a whole lease time from the restore.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct UserNetState {
    /// The configuration the NAT was built with.
    pub config: UserNetConfig,
    /// The DHCP leases, in the order they were made.
    pub leases: Vec<DhcpLease>,
    /// The guests' MAC addresses by IP address, in address order.
    pub guest_macs: Vec<(Ipv4Addr, MacAddr)>,
    /// The guests' MAC addresses by IPv6 address (in the prefix or
    /// link-local), in address order.
    #[cfg_attr(feature = "serde", serde(default))]
    pub guest_macs6: Vec<(Ipv6Addr, MacAddr)>,
}

/// An address the NAT's DHCP server gave a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DhcpLease {
    /// The client's hardware address.
    pub mac: MacAddr,
    /// Its address, from the DHCP range.
    pub ip: Ipv4Addr,
    /// Acknowledged (else only offered).
    pub bound: bool,
}

/// What a [`PersistError`] of the NAT names.
const PART: &str = "user-mode NAT";

impl UserNet {
    /// Checks `s` before [`Persist::restore`] takes it.
    fn check(&self, s: &UserNetState) -> Result<(), PersistError> {
        PersistError::check(s.config == self.cfg, PART, "config", || {
            "differs from the configuration this NAT was built with; build the NAT from the state's".into()
        })?;
        PersistError::check_max(PART, "leases", s.leases.len(), dhcp::MAX_LEASES)?;
        let (mut ips, mut macs) = (HashSet::new(), HashSet::new());
        for l in &s.leases {
            let problem = if !EthernetAddress(l.mac.0).is_unicast() {
                Some("is for a client that is not a unicast address")
            } else if !self.dhcp.in_pool(l.ip) {
                Some("is outside the DHCP range")
            } else if !ips.insert(l.ip) {
                Some("gives an address another lease has")
            } else if !macs.insert(l.mac) {
                Some("is for a client that has another lease")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(PersistError::new(PART, "leases", format!("the lease of {} to {} {problem}", l.ip, l.mac)));
            }
        }
        check_guest_macs("guest_macs", &s.guest_macs, |ip| self.is_guest_addr(ip), "a guest address of the network")?;
        check_guest_macs(
            "guest_macs6",
            &s.guest_macs6,
            |ip| self.is_guest_link_addr6(ip),
            "a guest address of the prefix or the link",
        )
    }
}

impl Persist for UserNet {
    type State = UserNetState;

    fn save(&self) -> UserNetState {
        let leases = self
            .dhcp
            .leases(Instant::now())
            .map(|(mac, ip, bound)| DhcpLease { mac: MacAddr(mac.0), ip, bound })
            .collect();
        let mut guest_macs: Vec<(Ipv4Addr, MacAddr)> =
            self.guest_macs.iter().map(|(&ip, mac)| (ip, MacAddr(mac.0))).collect();
        guest_macs.sort_unstable_by_key(|&(ip, _)| ip);
        let guest_macs6 = self.guest_macs6_sorted().into_iter().map(|(ip, mac)| (ip, MacAddr(mac.0))).collect();
        UserNetState { config: self.cfg.clone(), leases, guest_macs, guest_macs6 }
    }

    /// Takes the guest addresses of `s` into a NAT built with its
    /// configuration; the NAT's flows are left as they are.
    fn restore(&mut self, s: &UserNetState) -> Result<(), PersistError> {
        self.check(s)?;
        self.dhcp.set_leases(s.leases.iter().map(|l| (EthernetAddress(l.mac.0), l.ip, l.bound)), Instant::now());
        self.guest_macs = s.guest_macs.iter().map(|&(ip, mac)| (ip, EthernetAddress(mac.0))).collect::<HashMap<_, _>>();
        let now = Instant::now();
        self.guest_macs6 = s.guest_macs6.iter().map(|&(ip, mac)| (ip, (EthernetAddress(mac.0), now))).collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests;

/// Checks a saved list of guest addresses and their MACs: at most
/// [`GUEST_MACS`], each address `guest` (it is `what`) and there once,
/// each MAC unicast.
fn check_guest_macs<A: Copy + Eq + std::hash::Hash + std::fmt::Display>(
    field: &'static str,
    macs: &[(A, crate::MacAddr)],
    guest: impl Fn(A) -> bool,
    what: &str,
) -> Result<(), PersistError> {
    PersistError::check_max(PART, field, macs.len(), GUEST_MACS)?;
    let mut ips = HashSet::new();
    for &(ip, mac) in macs {
        let problem = if !guest(ip) {
            format!("is not {what}")
        } else if !EthernetAddress(mac.0).is_unicast() {
            "has a MAC address that is not unicast".to_string()
        } else if !ips.insert(ip) {
            "is there twice".to_string()
        } else {
            continue;
        };
        return Err(PersistError::new(PART, field, format!("{ip} ({mac}) {problem}")));
    }
    Ok(())
}
