//! Which workload a connection came from, as records and metrics label it
//! (`ProxyState::source_workload`): by address and identity, the trust domain included.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use meshd_identity::SpiffeId;
use meshd_manifests::{LoadOptions, load_str};
use meshd_proxy::{MeshState, ProxyState};
use meshd_record::Direction;

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
";

fn state() -> ProxyState {
    let snapshot = load_str("w.yaml", FILES, &LoadOptions::default()).unwrap();
    ProxyState::build(&snapshot, &MeshState::default(), "td-a", 1, |w| {
        w.key() == "shop/db"
    })
}

fn from(state: &ProxyState, address: &str, peer: &str) -> Option<String> {
    let source: SocketAddr = format!("{address}:40000").parse().unwrap();
    let peer: SpiffeId = peer.parse().unwrap();
    state
        .source_workload(Direction::Inbound, source, Some(&peer))
        .map(|m| format!("{}/{}", m.namespace, m.name))
}

#[test]
fn the_peer_of_this_trust_domain_is_labelled_with_its_workload() {
    let state = state();
    assert_eq!(
        from(&state, "10.0.0.1", "spiffe://td-a/ns/shop/sa/web").as_deref(),
        Some("shop/web")
    );
    // From another address of its machine: found by identity.
    assert_eq!(
        from(&state, "10.9.9.9", "spiffe://td-a/ns/shop/sa/web").as_deref(),
        Some("shop/web")
    );
}

#[test]
fn a_federated_peer_with_the_same_name_is_not_this_mesh_s_workload() {
    // td-b's shop/web is another workload: records must not name td-a's shop/web for it,
    // whether it comes from web's address or from elsewhere.
    let state = state();
    assert_eq!(
        from(&state, "10.0.0.1", "spiffe://td-b/ns/shop/sa/web"),
        None
    );
    assert_eq!(
        from(&state, "10.9.9.9", "spiffe://td-b/ns/shop/sa/web"),
        None
    );
}
