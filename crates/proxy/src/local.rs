//! Which workloads are on this machine: the only ones meshd serves inbound traffic for.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::config::ProxyConfig;
use crate::registry::{Origin, Workload};

/// Decides which workloads are on this machine: those the configuration names (`local:`
/// addresses or workload keys) when it names any; otherwise those with an address of this
/// machine.
///
/// Without a `local:` section, a workload from a file is local when one of its addresses can
/// be bound (what the kernel calls local, without IP_FREEBIND). istiod sends every workload of
/// the mesh (10⁵ of them), so binding a socket for each on every push would cost a second:
/// istiod's workloads are compared with this machine's interface addresses instead, read
/// once when the predicate is made (each proxy state makes its own), plus loopback (which
/// the kernel treats as local for the whole of 127.0.0.0/8, as a bind would find).
pub fn local_predicate(config: &ProxyConfig) -> impl Fn(&Workload) -> bool + Send + Sync + 'static {
    let addresses: HashSet<IpAddr> = config
        .local
        .addresses
        .iter()
        .map(|a| a.to_canonical())
        .collect();
    let workloads: Vec<String> = config.local.workloads.clone();
    let explicit = !addresses.is_empty() || !workloads.is_empty();
    let own = if explicit {
        None
    } else {
        interface_addresses()
    };
    move |w: &Workload| {
        // Every address of the workload counts (istiod's workloads may have several).
        if explicit {
            return w.addresses().any(|a| addresses.contains(&a))
                || workloads.iter().any(|name| w.is_named(name));
        }
        match (&own, w.origin()) {
            (Some(own), Origin::Istiod) => {
                w.addresses().any(|a| a.is_loopback() || own.contains(&a))
            }
            // A file's workload, or no interface list (then every workload is probed, as
            // before): only an address of this machine can be bound.
            _ => w
                .addresses()
                .any(|a| std::net::TcpListener::bind((a, 0)).is_ok()),
        }
    }
}

/// This machine's interface addresses (in this network namespace), canonical; `None` when
/// they cannot be read.
fn interface_addresses() -> Option<HashSet<IpAddr>> {
    let interfaces = match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => interfaces,
        Err(e) => {
            tracing::warn!("cannot list this machine's addresses ({e}): probing each workload's");
            return None;
        }
    };
    Some(
        interfaces
            .filter_map(|i| {
                let address = i.address?;
                if let Some(v4) = address.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    address
                        .as_sockaddr_in6()
                        .map(|v6| IpAddr::V6(v6.ip()).to_canonical())
                }
            })
            .collect(),
    )
}
