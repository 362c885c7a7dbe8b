//! One identity per local workload: which of meshd's identities ([`IdentitySet`]) a connection
//! is served under. Inbound, the certificate of the workload whose address the client dialed,
//! and a CONNECT refused unless that certificate is the destination's; outbound, the source
//! workload's (by captured source address, or named by an explicit listener or a SOCKS5 user
//! name). A workload without an identity of its own is served under meshd's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use meshd_hbone::ServerIdentities;
use meshd_identity::{IdentityHandle, IdentitySet, SpiffeId};
use tokio::sync::watch;

use meshd_record::WorkloadMeta;

use crate::registry::Workload;
use crate::state::ProxyState;

/// meshd's identities and the state that says which workload is where.
#[derive(Clone)]
pub(crate) struct LocalIdentities {
    set: IdentitySet,
    states: watch::Receiver<Arc<ProxyState>>,
}

/// Why an outbound connection's source cannot be served: it names a workload that is not on
/// this machine, so no identity of it may be presented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("source workload {0:?} is not a local workload of this machine")]
pub(crate) struct NotLocalSource(pub(crate) String);

impl LocalIdentities {
    pub(crate) fn new(set: IdentitySet, states: watch::Receiver<Arc<ProxyState>>) -> Self {
        LocalIdentities { set, states }
    }

    /// The identities themselves.
    pub(crate) fn set(&self) -> &IdentitySet {
        &self.set
    }

    /// The identity `workload` is served under: its own when meshd holds it, else meshd's.
    pub(crate) fn served_as<'a>(
        &'a self,
        state: &ProxyState,
        workload: &Workload,
    ) -> &'a IdentityHandle {
        self.set
            .for_workload(state.workload_identity(workload).ok().as_ref())
    }

    /// Inbound: whether a CONNECT to `authority`, on a connection that presented `presented`,
    /// may proceed. The destination's identity must be the one presented: a connection
    /// authenticated as one workload never reaches another (a client verified who it reached
    /// once, at the handshake). A destination that is not local passes here and is refused by
    /// the inbound stack, as ever.
    pub(crate) fn check_inbound(
        &self,
        state: &ProxyState,
        authority: SocketAddr,
        presented: &SpiffeId,
    ) -> Result<(), String> {
        let Some(workload) = state.registry.local_workload(authority) else {
            return Ok(());
        };
        let required = self.served_as(state, workload).current();
        if required.id() == presented {
            return Ok(());
        }
        Err(format!(
            "workload {} is served as {}, but this connection presented {presented}",
            workload.key(),
            required.id()
        ))
    }

    /// Outbound: the identity a connection from `source` presents. A named workload (an
    /// explicit listener's `workload`, a SOCKS5 user name) must be local; otherwise the
    /// workload at the source address, or the machine's only local workload; else meshd's own.
    pub(crate) fn for_source(
        &self,
        state: &ProxyState,
        source: SocketAddr,
        named: Option<&str>,
    ) -> Result<(IdentityHandle, Option<Arc<WorkloadMeta>>), NotLocalSource> {
        let registry = &state.registry;
        if let Some(key) = named {
            let workload = registry
                .local_workloads()
                .find(|w| w.is_named(key))
                .ok_or_else(|| NotLocalSource(key.to_string()))?;
            return Ok((
                self.served_as(state, workload).clone(),
                Some(workload.meta()),
            ));
        }
        let local_ip = source.ip().to_canonical();
        let workload = registry
            .local_workloads()
            .find(|w| w.addresses().any(|a| a == local_ip))
            .or_else(|| {
                let mut local = registry.local_workloads();
                match (local.next(), local.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            });
        let identity = match workload {
            Some(w) => self.served_as(state, w).clone(),
            None => self.set.own().clone(),
        };
        Ok((identity, None))
    }
}

impl ServerIdentities for LocalIdentities {
    fn for_local(&self, local: IpAddr) -> IdentityHandle {
        let state = self.states.borrow().clone();
        let local = local.to_canonical();
        let workload = state
            .registry
            .local_workloads()
            .find(|w| w.addresses().any(|a| a == local));
        match workload {
            Some(w) => self.served_as(&state, w).clone(),
            // meshd's own address, or one no workload has (yet): meshd's own certificate; a
            // CONNECT there finds no local workload and is refused by the inbound stack.
            None => self.set.own().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use meshd_identity::DevCa;
    use meshd_manifests::{LoadOptions, load_str};
    use meshd_workloadapi::MeshState;

    use super::*;

    /// Two local workloads under different service accounts, and one remote.
    const FILES: &str = "
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 10.0.0.1, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db, namespace: shop}
spec: {address: 10.0.0.2, serviceAccount: db}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: far, namespace: shop}
spec: {address: 10.0.0.9, serviceAccount: far}
";

    fn handle(ca: &DevCa, sa: &str) -> IdentityHandle {
        let svid = ca.issue("shop", sa, Duration::from_secs(3600)).unwrap();
        IdentityHandle::fixed(svid.credential_set().unwrap())
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::istio("cluster.local", "shop", sa).unwrap()
    }

    /// meshd is `shop/meshd`; `web` has its own identity, `db` has none.
    fn identities() -> LocalIdentities {
        let snapshot = load_str("w.yaml", FILES, &LoadOptions::default()).unwrap();
        let state = ProxyState::build(&snapshot, &MeshState::default(), "cluster.local", 1, |w| {
            w.key() != "shop/far"
        });
        let ca = DevCa::generate("cluster.local").unwrap();
        let set = IdentitySet::new(handle(&ca, "meshd"), [(id("web"), handle(&ca, "web"))]);
        let (_tx, states) = watch::channel(Arc::new(state));
        LocalIdentities::new(set, states)
    }

    fn addr(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    #[test]
    fn each_local_address_is_answered_with_its_workload_s_identity() {
        let local = identities();
        let at = |ip: &str| local.for_local(ip.parse().unwrap()).current().id().clone();
        assert_eq!(at("10.0.0.1"), id("web"));
        // db has no identity of its own: meshd's.
        assert_eq!(at("10.0.0.2"), id("meshd"));
        // No workload there: meshd's.
        assert_eq!(at("10.0.0.7"), id("meshd"));
    }

    #[test]
    fn a_connect_to_the_workload_whose_identity_was_presented_passes() {
        let local = identities();
        let state = local.states.borrow().clone();
        assert_eq!(
            local.check_inbound(&state, addr("10.0.0.1", 80), &id("web")),
            Ok(())
        );
        assert_eq!(
            local.check_inbound(&state, addr("10.0.0.2", 80), &id("meshd")),
            Ok(())
        );
    }

    #[test]
    fn a_connect_to_a_workload_with_its_own_identity_under_another_is_refused() {
        // The connection presented meshd's certificate; web is served only under its own.
        let local = identities();
        let state = local.states.borrow().clone();
        let refused = local
            .check_inbound(&state, addr("10.0.0.1", 80), &id("meshd"))
            .unwrap_err();
        assert_eq!(
            refused,
            "workload shop/web is served as spiffe://cluster.local/ns/shop/sa/web, but this connection presented spiffe://cluster.local/ns/shop/sa/meshd"
        );
    }

    #[test]
    fn a_connect_to_a_workload_without_its_own_identity_under_another_s_is_refused() {
        // A connection authenticated as web cannot reach db, which is served as meshd.
        let local = identities();
        let state = local.states.borrow().clone();
        let refused = local
            .check_inbound(&state, addr("10.0.0.2", 80), &id("web"))
            .unwrap_err();
        assert!(
            refused.starts_with("workload shop/db is served as"),
            "{refused}"
        );
    }

    #[test]
    fn outbound_presents_the_source_workload_s_identity() {
        let local = identities();
        let state = local.states.borrow().clone();
        let from = |ip: &str, named: Option<&str>| {
            let (handle, _) = local.for_source(&state, addr(ip, 40000), named).unwrap();
            handle.current().id().clone()
        };
        assert_eq!(from("10.0.0.1", None), id("web"));
        assert_eq!(from("10.0.0.2", None), id("meshd"));
        // Two local workloads: a source that is neither is meshd's own.
        assert_eq!(from("127.0.0.1", None), id("meshd"));
        // Named (a listener's workload, a SOCKS5 user name): wins over the address.
        assert_eq!(from("127.0.0.1", Some("shop/web")), id("web"));
        assert_eq!(from("10.0.0.1", Some("shop/db")), id("meshd"));
    }

    #[test]
    fn a_named_source_that_is_not_local_is_refused() {
        // shop/far is a workload, but of another machine: its identity is never presented.
        let local = identities();
        let state = local.states.borrow().clone();
        for name in ["shop/far", "shop/nobody"] {
            let refused = local
                .for_source(&state, addr("127.0.0.1", 40000), Some(name))
                .unwrap_err();
            assert_eq!(refused, NotLocalSource(name.to_string()));
        }
    }
}
