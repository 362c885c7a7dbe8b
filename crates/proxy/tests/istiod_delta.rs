//! istiod's pushes applied as deltas (`ProxyState::with_mesh`): after every push, the state
//! updated from the one before must be the state a full build of the same inputs gives, in
//! everything a connection or an operator can see (workloads, locality, services and their
//! endpoints, conflicts, refusals, resolution, decisions); and the compiled policies are
//! shared exactly when no policy changed.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use meshd_manifests::{LoadOptions, Snapshot, load_str};
use meshd_proxy::{MeshState, ProxyState};
use meshd_rbac::{Connection, Destination, Peer};
use meshd_workloadapi::ResourceKind;
use meshd_workloadapi::proto::{security as sec, workload as pb};
use prost::Message;

const FILES: &str = "
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: local-vm, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: api}, serviceAccount: api}
";

fn files() -> Snapshot {
    load_str("files.yaml", FILES, &LoadOptions::default()).unwrap()
}

fn uid(name: &str) -> String {
    format!("Kubernetes//Pod/web/{name}")
}

fn workload(name: &str, address: &str) -> pb::Workload {
    let octets = match address.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    let mut services = std::collections::HashMap::new();
    services.insert(
        "web/api.web.svc.cluster.local".to_string(),
        pb::PortList {
            ports: vec![pb::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
        },
    );
    pb::Workload {
        uid: uid(name),
        name: name.into(),
        namespace: "web".into(),
        addresses: vec![octets],
        service_account: "web-sa".into(),
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        services,
        ..Default::default()
    }
}

fn service(vip: [u8; 4]) -> pb::Service {
    pb::Service {
        name: "api".into(),
        namespace: "web".into(),
        hostname: "api.web.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vip.to_vec(),
            length: None,
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        ..Default::default()
    }
}

fn deny(principal: &str) -> sec::Authorization {
    sec::Authorization {
        name: "deny".into(),
        namespace: "web".into(),
        scope: sec::Scope::Namespace as i32,
        action: sec::Action::Deny as i32,
        groups: vec![sec::Group {
            rules: vec![sec::Rules {
                matches: vec![sec::Match {
                    principals: vec![sec::StringMatch {
                        match_type: Some(sec::string_match::MatchType::Exact(principal.into())),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    }
}

/// One push: resources updated and names removed, applied as the store applies them.
#[allow(clippy::large_enum_variant)] // a test's list of fifteen
enum Push {
    Workload(pb::Workload),
    Service(pb::Service),
    Policy(sec::Authorization),
    Remove(ResourceKind, String),
}

fn apply(mesh: &mut MeshState, push: Push) {
    let (kind, name, body) = match push {
        Push::Workload(w) => (
            ResourceKind::Address,
            w.uid.clone(),
            pb::Address {
                r#type: Some(pb::address::Type::Workload(w)),
            }
            .encode_to_vec(),
        ),
        Push::Service(s) => (
            ResourceKind::Address,
            format!("{}/{}", s.namespace, s.hostname),
            pb::Address {
                r#type: Some(pb::address::Type::Service(s)),
            }
            .encode_to_vec(),
        ),
        Push::Policy(p) => (
            ResourceKind::Authorization,
            format!("{}/{}", p.namespace, p.name),
            p.encode_to_vec(),
        ),
        Push::Remove(kind, name) => {
            mesh.remove(kind, &name);
            return;
        }
    };
    mesh.apply(kind, &name, &body).unwrap();
}

/// Local: the file's VM and istiod's `w1`, wherever they are.
fn is_local(w: &meshd_proxy::Workload) -> bool {
    w.key() == "shop/local-vm" || w.key() == uid("w1")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Everything a connection or an operator sees of a state, as text.
fn seen(state: &ProxyState) -> String {
    let r = &state.registry;
    let mut out = String::new();
    for w in r.workloads() {
        out += &format!("workload {w:?} local={}\n", r.is_local(w));
    }
    for s in r.services() {
        let endpoints: Vec<&str> = r.endpoints(s).map(|w| w.key()).collect();
        out += &format!("service {s:?} endpoints={endpoints:?}\n");
    }
    out += &format!("conflicts {:?}\n", r.conflicts());
    let local: Vec<&str> = r.local_workloads().map(|w| w.key()).collect();
    out += &format!("local {local:?}\n");
    for a in [
        "10.0.0.1:80",
        "10.0.1.1:80",
        "10.0.1.2:80",
        "10.0.1.3:80",
        "10.0.1.4:80",
        "10.0.1.9:80",
        "10.96.0.1:80",
        "10.96.0.2:80",
    ] {
        let resolved = r.resolve_addr(addr(a)).map(|x| {
            (
                x.workload.map(|w| w.key().to_string()),
                x.service.map(|s| s.key.clone()),
            )
        });
        // Balancing picks at random: the endpoint picked is not compared, its service is.
        let resolved = resolved.map(|(w, s)| if s.is_some() { (None, s) } else { (w, s) });
        let local = r.local_workload(addr(a)).map(|w| w.key().to_string());
        out += &format!("{a}: {resolved:?} local={local:?}\n");
        let decision = state.engine.decide(&Connection {
            peer: Some(Peer::new("cluster.local", "bad", "x")),
            source_ip: "10.9.9.9".parse().unwrap(),
            destination: Destination {
                namespace: "web".into(),
                labels: Default::default(),
                ip: addr(a).ip(),
                port: 80,
                bound_policies: Default::default(),
            },
        });
        out += &format!("  decided {:?}\n", decision.reason);
    }
    out
}

#[test]
fn a_state_updated_push_by_push_is_the_state_built_from_the_last_push() {
    let waypoint = pb::Workload {
        waypoint: Some(pb::GatewayAddress::default()),
        ..workload("w3", "10.0.1.3")
    };
    let unhealthy = pb::Workload {
        status: pb::WorkloadStatus::Unhealthy as i32,
        ..workload("w2", "10.0.1.2")
    };
    // (push, whether it changes a policy)
    let pushes = vec![
        (Push::Workload(workload("w1", "10.0.1.1")), false),
        (Push::Workload(workload("w2", "10.0.1.2")), false),
        (Push::Service(service([10, 96, 0, 1])), false),
        (Push::Workload(workload("w3", "10.0.1.3")), false),
        (Push::Policy(deny("cluster.local/ns/bad/sa/x")), true),
        (Push::Workload(workload("w1", "10.0.1.9")), false),
        (Push::Workload(unhealthy), false),
        (Push::Workload(waypoint), false),
        (Push::Workload(workload("w4", "10.0.0.1")), false),
        (Push::Service(service([10, 96, 0, 2])), false),
        (Push::Policy(deny("cluster.local/ns/other/sa/x")), true),
        (Push::Remove(ResourceKind::Address, uid("w4")), false),
        (Push::Remove(ResourceKind::Address, uid("w2")), false),
        (
            Push::Remove(
                ResourceKind::Address,
                "web/api.web.svc.cluster.local".into(),
            ),
            false,
        ),
        (
            Push::Remove(ResourceKind::Authorization, "web/deny".into()),
            true,
        ),
    ];
    let files = files();
    let mut mesh = MeshState::default();
    let mut state = ProxyState::build(&files, &mesh, "cluster.local", 1, is_local);
    for (i, (push, policy_changed)) in pushes.into_iter().enumerate() {
        apply(&mut mesh, push);
        let generation = i as u64 + 2;
        let updated = state.with_mesh(&mesh, generation, is_local);
        let built = ProxyState::build(&files, &mesh, "cluster.local", generation, is_local);
        assert_eq!(seen(&updated), seen(&built), "after push {i}");
        assert_eq!(
            Arc::ptr_eq(&updated.engine, &state.engine),
            !policy_changed,
            "push {i}: compiled policies shared exactly when no policy changed"
        );
        assert!(Arc::ptr_eq(&updated.snapshot, &state.snapshot));
        state = updated;
    }
    // The pushes above went through every case: a conflict came and went, a waypoint-bound
    // workload is refused, the service is gone.
    let r = &state.registry;
    assert!(r.conflicts().is_empty());
    assert!(r.refusal_at("10.0.1.3".parse().unwrap()).is_some());
    assert!(r.services().is_empty());
}

#[test]
fn a_push_changing_nothing_shares_the_compiled_policies_and_keeps_health_marks() {
    let files = files();
    let mut mesh = MeshState::default();
    apply(&mut mesh, Push::Workload(workload("w2", "10.0.1.2")));
    apply(&mut mesh, Push::Policy(deny("cluster.local/ns/bad/sa/x")));
    let state = ProxyState::build(&files, &mesh, "cluster.local", 1, is_local);
    state.registry.report_failure(addr("10.0.1.2:8080"));
    // istiod sends the same policy again (a resync): equal, so nothing is compiled.
    apply(&mut mesh, Push::Policy(deny("cluster.local/ns/bad/sa/x")));
    let updated = state.with_mesh(&mesh, 2, is_local);
    assert!(Arc::ptr_eq(&updated.engine, &state.engine));
    assert!(!updated.registry.is_healthy("10.0.1.2".parse().unwrap()));
}
