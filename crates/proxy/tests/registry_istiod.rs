//! The registry and state from both sources: the directory's WorkloadEntries and ServiceEntries
//! and istiod's Workloads, Services and Authorizations (decoded from their protobuf bytes, as
//! the xDS client hands them over).

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use meshd_manifests::{LoadOptions, Snapshot, load_str};
use meshd_proxy::{MeshRefusal, MeshState, Origin, Protocol, ProxyState, Registry, ResolveError};
use meshd_rbac::{Connection, Destination, Peer, PolicyKey, Reason};
use meshd_workloadapi::ResourceKind;
use meshd_workloadapi::proto::{security as sec, workload as pb};
use prost::Message;

const FILES: &str = "
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: local-vm, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: api}, serviceAccount: api}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.shop.internal]
  addresses: [240.0.0.1]
  ports: [{number: 80}]
  workloadSelector: {labels: {}}
";

fn uid(name: &str) -> String {
    format!("Kubernetes/networking.istio.io/WorkloadEntry/web/{name}")
}

fn workload(name: &str, addresses: &[&str]) -> pb::Workload {
    pb::Workload {
        uid: uid(name),
        name: name.into(),
        namespace: "web".into(),
        addresses: addresses
            .iter()
            .map(|a| match a.parse::<IpAddr>().unwrap() {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            })
            .collect(),
        trust_domain: "example.org".into(),
        service_account: "web-sa".into(),
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        ..Default::default()
    }
}

fn backing(mut w: pb::Workload, host: &str, service_port: u32, target_port: u32) -> pb::Workload {
    let ports = vec![pb::Port {
        service_port,
        target_port,
        app_protocol: 0,
    }];
    w.services
        .insert(format!("web/{host}"), pb::PortList { ports });
    w
}

fn service(host: &str, vip: [u8; 4], port: u32, target: u32) -> pb::Service {
    pb::Service {
        name: host.split('.').next().unwrap().into(),
        namespace: "web".into(),
        hostname: host.into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vip.to_vec(),
            length: None,
        }],
        ports: vec![pb::Port {
            service_port: port,
            target_port: target,
            app_protocol: 0,
        }],
        ..Default::default()
    }
}

#[derive(Default)]
struct Mesh(MeshState);

impl Mesh {
    fn workload(mut self, w: pb::Workload) -> Self {
        let name = w.uid.clone();
        let body = pb::Address {
            r#type: Some(pb::address::Type::Workload(w)),
        };
        self.0
            .apply(ResourceKind::Address, &name, &body.encode_to_vec())
            .unwrap();
        self
    }

    fn service(mut self, s: pb::Service) -> Self {
        let name = format!("{}/{}", s.namespace, s.hostname);
        let body = pb::Address {
            r#type: Some(pb::address::Type::Service(s)),
        };
        self.0
            .apply(ResourceKind::Address, &name, &body.encode_to_vec())
            .unwrap();
        self
    }

    fn policy(mut self, p: sec::Authorization) -> Self {
        let name = format!("{}/{}", p.namespace, p.name);
        self.0
            .apply(ResourceKind::Authorization, &name, &p.encode_to_vec())
            .unwrap();
        self
    }
}

fn files() -> Snapshot {
    load_str("files.yaml", FILES, &LoadOptions::default()).unwrap()
}

fn registry(mesh: &Mesh, local: &[&str]) -> Registry {
    let local: Vec<String> = local.iter().map(|s| s.to_string()).collect();
    Registry::build(&files(), &mesh.0, move |w| {
        local.iter().any(|k| k == w.key())
    })
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn both_sources_are_a_union_with_istiods_identity_and_addresses() {
    let mesh = Mesh::default().workload(workload("w1", &["10.0.1.1", "fd00::11"]));
    let r = registry(&mesh, &[]);
    let file = r.resolve_addr(addr("10.0.0.1:80")).unwrap();
    assert_eq!(file.workload.unwrap().origin(), Origin::File);
    for a in ["10.0.1.1:8080", "[fd00::11]:8080"] {
        let w = r.resolve_addr(addr(a)).unwrap().workload.unwrap();
        assert_eq!(
            (w.key(), w.origin()),
            (uid("w1").as_str(), Origin::Istiod),
            "{a}"
        );
        assert_eq!(w.protocol(), Protocol::Hbone);
    }
    // The expected identity of a remote istiod workload is in its own trust domain.
    let state = ProxyState::build(&files(), &mesh.0, "cluster.local", 1, |_| false);
    let w = state
        .registry
        .workload_at("10.0.1.1".parse().unwrap())
        .unwrap();
    assert_eq!(
        state.workload_identity(w).unwrap().to_string(),
        "spiffe://example.org/ns/web/sa/web-sa"
    );
    assert_eq!(state.spiffe_id(w), "spiffe://example.org/ns/web/sa/web-sa");
    let f = state
        .registry
        .workload_at("10.0.0.1".parse().unwrap())
        .unwrap();
    assert_eq!(state.spiffe_id(f), "spiffe://cluster.local/ns/shop/sa/api");
    // A file's ServiceEntry selector (even an empty one) never picks istiod's workloads.
    for _ in 0..20 {
        let picked = r.resolve_host("api.shop.internal", 80).unwrap();
        assert_eq!(picked.workload.unwrap().origin(), Origin::File);
    }
}

#[test]
fn istiod_services_pick_their_endpoints_and_target_ports() {
    let host = "web.web.svc.cluster.local";
    let mesh = Mesh::default()
        .service(service(host, [10, 96, 0, 1], 80, 8000))
        .workload(backing(workload("w1", &["10.0.1.1"]), host, 80, 8081))
        // Target 0 from istiod: the service's target port.
        .workload(backing(workload("w2", &["10.0.1.2"]), host, 80, 0))
        // Unhealthy: never an endpoint.
        .workload(pb::Workload {
            status: pb::WorkloadStatus::Unhealthy as i32,
            ..backing(workload("w3", &["10.0.1.3"]), host, 80, 8083)
        });
    let r = registry(&mesh, &[]);
    let mut seen = HashMap::new();
    for _ in 0..200 {
        let picked = r.resolve_addr(addr("10.96.0.1:80")).unwrap();
        *seen.entry(picked.address).or_insert(0) += 1;
        assert_eq!(picked.service.unwrap().key, format!("web/{host}"));
    }
    let mut addresses: Vec<SocketAddr> = seen.into_keys().collect();
    addresses.sort();
    assert_eq!(addresses, [addr("10.0.1.1:8081"), addr("10.0.1.2:8000")]);
    assert!(r.resolve_host(host, 80).is_ok());
    assert!(matches!(
        r.resolve_host(host, 81),
        Err(ResolveError::NoSuchPort { .. })
    ));
    // Neither target given: the service port itself.
    let mesh = Mesh::default()
        .service(service(host, [10, 96, 0, 1], 80, 0))
        .workload(backing(workload("w1", &["10.0.1.1"]), host, 80, 0));
    let r = registry(&mesh, &[]);
    assert_eq!(
        r.resolve_host(host, 80).unwrap().address,
        addr("10.0.1.1:80")
    );
}

#[test]
fn refused_workloads_and_services_are_refused_never_passed_through() {
    let host = "web.web.svc.cluster.local";
    let waypoint = pb::GatewayAddress::default();
    let mesh = Mesh::default()
        .workload(pb::Workload {
            waypoint: Some(waypoint),
            ..workload("bound", &["10.0.1.1", "fd00::1"])
        })
        .workload(pb::Workload {
            tunnel_protocol: pb::TunnelProtocol::LegacyIstioMtls as i32,
            ..workload("legacy", &["10.0.1.2"])
        })
        .service(pb::Service {
            waypoint: Some(pb::GatewayAddress::default()),
            ..service(host, [10, 96, 0, 1], 80, 80)
        });
    assert_eq!(mesh.0.refused().get(&MeshRefusal::Waypoint), Some(&2));
    let r = registry(&mesh, &[&uid("bound")]);
    for a in ["10.0.1.1:80", "[fd00::1]:443"] {
        assert_eq!(
            r.resolve_addr(addr(a)).unwrap_err(),
            ResolveError::Refused {
                target: uid("bound"),
                reason: MeshRefusal::Waypoint
            },
            "{a}"
        );
    }
    assert!(matches!(
        r.resolve_addr(addr("10.0.1.2:80")),
        Err(ResolveError::Refused {
            reason: MeshRefusal::LegacyIstioMtls,
            ..
        })
    ));
    let service_refusal = ResolveError::Refused {
        target: format!("web/{host}"),
        reason: MeshRefusal::Waypoint,
    };
    assert_eq!(
        r.resolve_addr(addr("10.96.0.1:80")).unwrap_err(),
        service_refusal
    );
    assert_eq!(r.resolve_host(host, 80).unwrap_err(), service_refusal);
    // Even when local, a refused workload is no destination for inbound traffic.
    assert!(r.local_workload(addr("10.0.1.1:80")).is_none());
    assert!(
        r.resolve_addr(addr("10.0.9.9:80")).is_ok(),
        "others pass through"
    );
}

#[test]
fn a_file_service_cannot_shadow_a_refused_istiod_service() {
    // A ServiceEntry with the VIP and host of istiod's waypoint-bound service, whose endpoint
    // is a file workload: resolving either must still be refused.
    let files = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow, namespace: web}
spec:
  hosts: [pay.web.svc.cluster.local]
  addresses: [10.96.0.9]
  ports: [{number: 80}]
  endpoints: [{address: 10.0.5.5}]
";
    let snapshot = load_str("shadow.yaml", files, &LoadOptions::default()).unwrap();
    let host = "pay.web.svc.cluster.local";
    let mesh = Mesh::default().service(pb::Service {
        waypoint: Some(pb::GatewayAddress::default()),
        ..service(host, [10, 96, 0, 9], 80, 80)
    });
    let r = Registry::build(&snapshot, &mesh.0, |_| false);
    let refused = ResolveError::Refused {
        target: format!("web/{host}"),
        reason: MeshRefusal::Waypoint,
    };
    assert_eq!(r.resolve_addr(addr("10.96.0.9:80")).unwrap_err(), refused);
    assert_eq!(r.resolve_host(host, 80).unwrap_err(), refused);
    // Without istiod's service the file's resolves as before.
    let r = Registry::build(&snapshot, &MeshState::default(), |_| false);
    assert_eq!(
        r.resolve_host(host, 80).unwrap().address,
        addr("10.0.5.5:80")
    );
}

#[test]
fn refused_endpoints_are_never_picked() {
    let host = "db.web.svc.cluster.local";
    let bound = pb::Workload {
        waypoint: Some(pb::GatewayAddress::default()),
        ..backing(workload("bound", &["10.0.1.1"]), host, 5432, 5432)
    };
    let mesh = Mesh::default()
        .service(service(host, [10, 96, 0, 2], 5432, 5432))
        .workload(bound.clone());
    let r = registry(&mesh, &[]);
    assert_eq!(
        r.resolve_host(host, 5432).unwrap_err(),
        ResolveError::Refused {
            target: uid("bound"),
            reason: MeshRefusal::Waypoint
        },
        "its only endpoint is refused"
    );
    let mesh = Mesh::default()
        .service(service(host, [10, 96, 0, 2], 5432, 5432))
        .workload(bound)
        .workload(backing(workload("ok", &["10.0.1.5"]), host, 5432, 5432));
    let r = registry(&mesh, &[]);
    for _ in 0..50 {
        assert_eq!(
            r.resolve_host(host, 5432).unwrap().address,
            addr("10.0.1.5:5432")
        );
    }
}

#[test]
fn an_address_claimed_by_both_sources_is_a_conflict_refused_both_ways() {
    let mesh = Mesh::default().workload(workload("vm", &["10.0.0.1"]));
    let r = registry(&mesh, &["shop/local-vm", &uid("vm")]);
    assert_eq!(r.conflicts().len(), 1);
    let conflict = &r.conflicts()[0];
    assert_eq!(conflict.address, "10.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(
        (conflict.file.as_str(), conflict.istiod.as_str()),
        ("shop/local-vm", uid("vm").as_str())
    );
    assert_eq!(
        r.resolve_addr(addr("10.0.0.1:80")).unwrap_err(),
        ResolveError::Conflict(conflict.clone())
    );
    assert!(
        r.local_workload(addr("10.0.0.1:80")).is_none(),
        "inbound too"
    );
    // The file's service no longer has a reachable endpoint.
    assert!(matches!(
        r.resolve_host("api.shop.internal", 80),
        Err(ResolveError::Conflict(_))
    ));
    // Without istiod's claim, no conflict.
    let r = registry(&Mesh::default(), &["shop/local-vm"]);
    assert!(r.conflicts().is_empty());
    assert!(r.local_workload(addr("10.0.0.1:80")).is_some());
}

#[test]
fn the_state_enforces_istiod_policies_bound_to_istiod_workloads() {
    let deny = |name: &str, scope: sec::Scope| sec::Authorization {
        name: name.into(),
        namespace: "web".into(),
        scope: scope as i32,
        action: sec::Action::Deny as i32,
        groups: vec![sec::Group {
            rules: vec![sec::Rules {
                matches: vec![sec::Match {
                    namespaces: vec![sec::StringMatch {
                        match_type: Some(sec::string_match::MatchType::Exact("bad".into())),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    let mesh = Mesh::default()
        .workload(pb::Workload {
            authorization_policies: vec!["web/selected".into()],
            ..workload("w1", &["10.0.1.1"])
        })
        .workload(workload("w2", &["10.0.1.2"]))
        .policy(deny("selected", sec::Scope::WorkloadSelector));
    let state = ProxyState::build(&files(), &mesh.0, "cluster.local", 1, |_| true);
    let decide = |ip: &str| {
        let w = state
            .registry
            .local_workload(addr(&format!("{ip}:80")))
            .unwrap();
        state.engine.decide(&Connection {
            peer: Some(Peer::new("cluster.local", "bad", "x")),
            source_ip: "10.9.9.9".parse().unwrap(),
            destination: Destination {
                namespace: w.namespace().to_string(),
                labels: w.labels().clone(),
                ip: ip.parse().unwrap(),
                port: 80,
                bound_policies: w.bound_policies().clone(),
            },
        })
    };
    assert_eq!(
        decide("10.0.1.1").reason,
        Reason::Denied(PolicyKey::istiod("web", "selected"))
    );
    assert_eq!(
        decide("10.0.1.2").reason,
        Reason::NoAllowPolicies,
        "not bound"
    );
    // The operator view lists the bound policy, named with its source, for w1 only.
    let view = meshd_proxy::views::workloads(&state);
    let policies = |key: &str| -> Vec<String> {
        let w = view.workloads.iter().find(|w| w.name == key).unwrap();
        w.policies.iter().map(|p| p.policy.clone()).collect()
    };
    assert_eq!(policies(&uid("w1")), ["istiod:web/selected"]);
    assert!(policies(&uid("w2")).is_empty());
}

#[test]
fn any_address_of_an_istiod_workload_makes_it_local() {
    let mesh = Mesh::default().workload(workload("vm", &["fd00::7", "10.0.1.7"]));
    let mut config = meshd_proxy::ProxyConfig::default();
    config.local.addresses = vec!["10.0.1.7".parse().unwrap()];
    let state = ProxyState::build(
        &files(),
        &mesh.0,
        "cluster.local",
        1,
        meshd_proxy::local_predicate(&config),
    );
    let local = state.registry.local_workload(addr("10.0.1.7:80")).unwrap();
    assert_eq!(local.key(), uid("vm"));
    assert!(
        state
            .registry
            .local_workload(addr("[fd00::7]:80"))
            .is_some()
    );
    // Bound on loopback: the machine's own address, found by binding it.
    let mesh = Mesh::default().workload(workload("lo", &["fd00::8", "127.0.0.1"]));
    let state = ProxyState::build(
        &Snapshot::default(),
        &mesh.0,
        "cluster.local",
        1,
        meshd_proxy::local_predicate(&meshd_proxy::ProxyConfig::default()),
    );
    assert!(
        state
            .registry
            .local_workload(addr("127.0.0.1:80"))
            .is_some()
    );
}

/// The registry holds no copy of an istiod workload: what it resolves is istiod's model itself,
/// and two workloads of one deployment share their repeated values (one allocation each).
#[test]
fn istiod_workloads_are_held_once() {
    let mut a = workload("a", &["10.1.0.1"]);
    a.canonical_name = "web".into();
    a.node = "node-1".into();
    let mut b = workload("b", &["10.1.0.2"]);
    b.canonical_name = "web".into();
    b.node = "node-1".into();
    let mesh = Mesh::default().workload(a).workload(b);
    let r = registry(&mesh, &[]);
    let held = mesh.0.workload(&uid("a")).unwrap();
    let resolved = r.workload_at("10.1.0.1".parse().unwrap()).unwrap();
    assert!(std::ptr::eq(resolved.from_istiod().unwrap(), &**held));
    let other = mesh.0.workload(&uid("b")).unwrap();
    assert!(std::sync::Arc::ptr_eq(&held.owner, &other.owner));
    assert!(std::sync::Arc::ptr_eq(&held.placement, &other.placement));
    assert_eq!(held.owner.canonical_name, "web");
    // Read through the model, the registry's answers are the model's.
    assert_eq!(resolved.key(), uid("a"));
    assert_eq!(resolved.service_account(), "web-sa");
    assert_eq!(resolved.trust_domain("cluster.local"), "example.org");
    assert_eq!(resolved.meta().app.as_deref(), Some("web"));
}
