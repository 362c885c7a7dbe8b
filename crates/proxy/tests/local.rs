//! Which workloads are local without a `local:` section: istiod's by this machine's interface
//! addresses (read once, not a bind per workload), the directory's by binding their address.
//! Run inside a network namespace of the test's own, with two addresses of its own, so the
//! machine's real addresses play no part.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};

use meshd_manifests::{LoadOptions, load_str};
use meshd_proxy::{MeshState, ProxyConfig, ProxyState, local_predicate};
use meshd_redirect::netns::Netns;
use meshd_workloadapi::ResourceKind;
use meshd_workloadapi::proto::workload as pb;
use prost::Message;

/// The namespace's addresses: one for istiod's workload, one for the file's.
const HERE: &str = "10.203.0.7";
const FILE_HERE: &str = "10.203.0.9";
/// In the namespace's subnet, not its own.
const NEIGHBOUR: &str = "10.203.0.8";
const FILE_NEIGHBOUR: &str = "10.203.0.10";

fn istiod_workload(mesh: &mut MeshState, name: &str, address: &str) {
    let octets = match address.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let w = pb::Workload {
        uid: format!("Kubernetes//Pod/web/{name}"),
        name: name.into(),
        namespace: "web".into(),
        addresses: vec![octets],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        ..Default::default()
    };
    let uid = w.uid.clone();
    let body = pb::Address {
        r#type: Some(pb::address::Type::Workload(w)),
    };
    mesh.apply(ResourceKind::Address, &uid, &body.encode_to_vec())
        .unwrap();
}

fn local_key(state: &ProxyState, address: &str) -> Option<String> {
    let addr = SocketAddr::new(address.parse().unwrap(), 80);
    state
        .registry
        .local_workload(addr)
        .map(|w| w.key().to_string())
}

#[test]
fn istiod_workloads_are_local_by_interface_address_files_by_bind() {
    let ns = Netns::new("local");
    for address in [HERE, FILE_HERE] {
        // /32 on loopback: only the address itself is the namespace's (a prefix on `lo`
        // would make the whole prefix local).
        ns.ip(&["addr", "add", &format!("{address}/32"), "dev", "lo"])
            .unwrap();
    }
    let files = load_str(
        "files.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: file-here, namespace: shop}}
spec: {{address: {FILE_HERE}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: file-neighbour, namespace: shop}}
spec: {{address: {FILE_NEIGHBOUR}}}
"
        ),
        &LoadOptions::default(),
    )
    .unwrap();
    let state = ns.run(|| {
        let mut mesh = MeshState::default();
        istiod_workload(&mut mesh, "here", HERE);
        istiod_workload(&mut mesh, "neighbour", NEIGHBOUR);
        istiod_workload(&mut mesh, "loopback", "127.0.0.5");
        // Built inside the namespace: the predicate reads its interfaces there.
        ProxyState::build(
            &files,
            &MeshState::default(),
            "cluster.local",
            1,
            local_predicate(&ProxyConfig::default()),
        )
        .with_mesh(&mesh, 2, local_predicate(&ProxyConfig::default()))
    });
    let local: Vec<&str> = state.registry.local_workloads().map(|w| w.key()).collect();
    assert_eq!(
        local,
        [
            "shop/file-here",
            "Kubernetes//Pod/web/here",
            "Kubernetes//Pod/web/loopback"
        ],
        "local workloads"
    );
    assert_eq!(
        local_key(&state, HERE),
        Some("Kubernetes//Pod/web/here".into())
    );
    assert_eq!(local_key(&state, FILE_HERE), Some("shop/file-here".into()));
    assert_eq!(local_key(&state, NEIGHBOUR), None);
    assert_eq!(local_key(&state, FILE_NEIGHBOUR), None);
}
