//! meshd's own ports, which no connection may be relayed to.
//!
//! A meshd that dials its own listeners becomes a relay: an allowed peer's `CONNECT
//! <this machine>:15008` would present this machine's identity to a third party and hide the
//! caller's address from `ipBlocks` rules, and a connection sent back into the capture ports
//! (15001, 15006) loops until descriptors run out. ztunnel refuses its own ports on every
//! inbound path; meshd does too, and also refuses outbound connections that would loop back
//! into them.
//!
//! The set is every port meshd listens on (as bound, so port 0 resolves to the real port; the
//! operator endpoints' ports included, which the daemon binds before the proxy and hands
//! over), every port its configuration names for a listener, and ztunnel's well-known ports,
//! whether or not this meshd uses them: a port a future configuration may listen on is never a
//! workload's. Ports are refused on any local address: all local workloads share this
//! machine's network stack, so a listener on `0.0.0.0` answers on every one of their addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// ztunnel's well-known ports, always reserved: admin 15000, captured outbound 15001, captured
/// inbound 15006, HBONE 15008, metrics 15020, readiness 15021, and meshd's SOCKS5 15080. Their
/// one home is meshd-redirect, whose capture rules exempt the same list.
pub use meshd_redirect::WELL_KNOWN_PORTS as WELL_KNOWN;

/// The ports meshd listens on or reserves; cheap to clone and to query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnPorts(Arc<[u16]>);

impl OwnPorts {
    /// The well-known ports plus `ports`.
    pub fn new(ports: impl IntoIterator<Item = u16>) -> Self {
        let mut all: Vec<u16> = WELL_KNOWN.into_iter().chain(ports).collect();
        all.sort_unstable();
        all.dedup();
        OwnPorts(all.into())
    }

    /// True when `port` is one of meshd's.
    pub fn contains(&self, port: u16) -> bool {
        self.0.binary_search(&port).is_ok()
    }

    /// The ports, ascending.
    pub fn ports(&self) -> &[u16] {
        &self.0
    }

    /// True when a connection to `addr` would reach one of meshd's own listeners: the port is
    /// meshd's and the address is this machine's (loopback, unspecified, or an address a socket
    /// can be bound to here). Only reserved ports pay for the address check.
    pub fn loops_back(&self, addr: SocketAddr) -> bool {
        self.contains(addr.port()) && is_this_machine(addr.ip())
    }
}

impl Default for OwnPorts {
    fn default() -> Self {
        OwnPorts::new([])
    }
}

/// True when `ip` belongs to this machine. A bind that fails for any reason other than "not
/// an address of this machine" counts as local: when in doubt, refuse.
fn is_this_machine(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    match std::net::TcpListener::bind((ip, 0)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AddrNotAvailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_ports_are_always_reserved() {
        // A meshd listening on random ports still never relays to ztunnel's ports.
        let own = OwnPorts::new([40000]);
        for port in WELL_KNOWN {
            assert!(own.contains(port), "{port}");
        }
        assert!(own.contains(40000));
        assert!(!own.contains(8080));
    }

    #[test]
    fn loopback_and_unspecified_destinations_loop_back() {
        // 127.0.0.1:15001 and [::]:15008 reach meshd itself.
        let own = OwnPorts::default();
        assert!(own.loops_back("127.0.0.1:15001".parse().unwrap()));
        assert!(own.loops_back("127.1.2.3:15006".parse().unwrap()));
        assert!(own.loops_back("[::]:15008".parse().unwrap()));
        assert!(own.loops_back("[::ffff:127.0.0.1]:15000".parse().unwrap()));
    }

    #[test]
    fn other_ports_and_foreign_addresses_do_not_loop_back() {
        // A workload port on loopback, and meshd's port on an address that is not this
        // machine's (TEST-NET-1, never bound here), are ordinary destinations.
        let own = OwnPorts::default();
        assert!(!own.loops_back("127.0.0.1:8080".parse().unwrap()));
        assert!(!own.loops_back("192.0.2.10:15008".parse().unwrap()));
    }
}
