//! Both stacks with istiod's state beside the files': a policy istiod bound to the local
//! workload decides inbound and names its source; a waypoint-bound destination is refused and
//! never dialled; a remote workload's tunnel expects its own trust domain.

use meshd_identity::SpiffeId;
use meshd_workloadapi::proto::{security as sec, workload as pb};
use meshd_workloadapi::{MeshState, ResourceKind};
use prost::Message;

use super::*;

/// istiod's workload on this machine.
pub(super) const LOCAL_UID: &str = "Kubernetes/networking.istio.io/WorkloadEntry/shop/vm";
const LOCAL: &str = "127.10.23.5:8080";

fn workload(uid: &str, ip: [u8; 4], edit: impl FnOnce(&mut pb::Workload)) -> (String, Vec<u8>) {
    let mut w = pb::Workload {
        uid: uid.into(),
        name: uid.rsplit('/').next().unwrap_or(uid).into(),
        namespace: "shop".into(),
        addresses: vec![ip.to_vec()],
        service_account: "vm".into(),
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        ..Default::default()
    };
    edit(&mut w);
    let body = pb::Address {
        r#type: Some(pb::address::Type::Workload(w)),
    };
    (uid.to_string(), body.encode_to_vec())
}

fn mesh() -> MeshState {
    let mut mesh = MeshState::default();
    let resources = [
        workload(LOCAL_UID, [127, 10, 23, 5], |w| {
            w.authorization_policies = vec!["shop/deny-client".into()];
        }),
        workload("c/remote", [127, 10, 23, 6], |w| {
            w.trust_domain = "example.org".into();
        }),
        workload("c/bound", [127, 10, 23, 7], |w| {
            w.waypoint = Some(pb::GatewayAddress::default());
        }),
    ];
    for (name, body) in resources {
        mesh.apply(ResourceKind::Address, &name, &body).unwrap();
    }
    let deny = sec::Authorization {
        name: "deny-client".into(),
        namespace: "shop".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Deny as i32,
        groups: vec![sec::Group {
            rules: vec![sec::Rules {
                matches: vec![sec::Match {
                    namespaces: vec![sec::StringMatch {
                        match_type: Some(sec::string_match::MatchType::Exact("client".into())),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    mesh.apply(
        ResourceKind::Authorization,
        "shop/deny-client",
        &deny.encode_to_vec(),
    )
    .unwrap();
    mesh
}

// istiod's DENY bound to the local workload refuses the peer and the record names
// `istiod:shop/deny-client`; the file's workload `shop/web` is not bound, so it is allowed.
#[tokio::test]
async fn an_istiod_policy_bound_to_the_local_workload_decides_and_is_named() {
    let h = Harness::with_state(state_with(MESH, &mesh(), 1), Answer::Connect);
    let inbound = h.inbound(Plugins::new(Vec::new()));
    let (result, client, _) = h
        .connect(&inbound, Direction::Inbound, Some(CLIENT), LOCAL)
        .await;
    assert!(
        matches!(result, Err(ProxyError::Denied { .. })),
        "{result:?}"
    );
    assert_eq!(client.refusal(), Some(Refusal::Denied));
    assert!(h.connector.dials().is_empty());
    let record = h.only_record();
    assert_eq!(
        record.verdict.unwrap().policy.as_deref(),
        Some("istiod:shop/deny-client")
    );
    assert_eq!(record.destination_workload.as_deref(), Some(LOCAL_UID));
    let (result, _, _) = h
        .connect(&inbound, Direction::Inbound, Some(CLIENT), WEB)
        .await;
    assert!(result.is_ok(), "not bound to shop/web: {result:?}");
}

// A workload istiod put behind a waypoint: the outbound connection is refused as unreachable
// and nothing is dialled (going direct would bypass the waypoint's policy).
#[tokio::test]
async fn a_waypoint_bound_destination_is_refused_never_dialled() {
    let h = Harness::with_state(state_with(MESH, &mesh(), 1), Answer::Connect);
    let (result, _client, _) = h
        .connect(&h.outbound(), Direction::Outbound, None, "127.10.23.7:80")
        .await;
    assert!(
        matches!(
            &result,
            Err(ProxyError::Resolve(crate::ResolveError::Refused { .. }))
        ),
        "{result:?}"
    );
    assert!(h.connector.dials().is_empty());
    assert_eq!(h.only_record().outcome, Outcome::Unreachable);
}

// A remote istiod workload in another trust domain: the tunnel must be answered by its own
// identity, not one in the mesh's trust domain.
#[tokio::test]
async fn a_tunnel_to_an_istiod_workload_expects_its_own_trust_domain() {
    let h = Harness::with_state(state_with(MESH, &mesh(), 1), Answer::Connect);
    let (result, _client, _) = h
        .connect(&h.outbound(), Direction::Outbound, None, "127.10.23.6:80")
        .await;
    drop(result.unwrap());
    let dials = h.connector.dials();
    let [Dial::Tunnel(request, _)] = dials.as_slice() else {
        panic!("one tunnel: {dials:?}");
    };
    assert_eq!(
        request.identity,
        SpiffeId::new("spiffe://example.org/ns/shop/sa/vm").unwrap()
    );
}

// meshd.yaml names a local workload `namespace/name` (`local.workloads`, `listeners[].workload`,
// a SOCKS5 user name): an istiod workload answers to that as a file's does, and to its uid,
// and to nothing else (another namespace, the bare name).
#[test]
fn an_istiod_workload_is_named_by_namespace_and_name() {
    let state = state_with(MESH, &mesh(), 1);
    let vm = state
        .registry
        .local_workloads()
        .find(|w| w.key() == LOCAL_UID)
        .unwrap();
    assert!(vm.is_named("shop/vm"));
    assert!(vm.is_named(LOCAL_UID));
    for other in ["shop/web", "other/vm", "vm", "shop/", "/vm", ""] {
        assert!(!vm.is_named(other), "{other:?}");
    }
}
