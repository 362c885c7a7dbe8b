//! MeshState: resources by name, replaced and removed one at a time, refusals counted.
#![allow(clippy::unwrap_used)]

use meshd_workloadapi::model::Refusal;
use meshd_workloadapi::proto::{security as sec, workload as pb};
use meshd_workloadapi::{DecodeError, MeshState, ResourceKind};
use prost::Message;

fn workload(uid: &str, waypoint: bool) -> Vec<u8> {
    pb::Address {
        r#type: Some(pb::address::Type::Workload(pb::Workload {
            uid: uid.into(),
            name: "w".into(),
            namespace: "ns1".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            waypoint: waypoint.then(pb::GatewayAddress::default),
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

fn service(ns: &str, host: &str) -> Vec<u8> {
    pb::Address {
        r#type: Some(pb::address::Type::Service(pb::Service {
            name: "s".into(),
            namespace: ns.into(),
            hostname: host.into(),
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

fn policy(ns: &str, name: &str) -> Vec<u8> {
    sec::Authorization {
        name: name.into(),
        namespace: ns.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn resources_are_inserted_replaced_and_removed_by_name() {
    let mut state = MeshState::default();
    assert!(state.is_empty());
    state
        .apply(ResourceKind::Address, "c/w1", &workload("c/w1", false))
        .unwrap();
    state
        .apply(ResourceKind::Address, "ns1/web", &service("ns1", "web"))
        .unwrap();
    state
        .apply(ResourceKind::Authorization, "ns1/p", &policy("ns1", "p"))
        .unwrap();
    assert_eq!(state.len(ResourceKind::Address), 2);
    assert_eq!(state.len(ResourceKind::Authorization), 1);
    assert!(state.workload("c/w1").is_some() && state.service("ns1/web").is_some());
    assert!(state.policy("ns1/p").is_some());

    // Replaced: a waypoint appears, then goes away; the refusal count follows.
    assert_eq!(
        state.apply(ResourceKind::Address, "c/w1", &workload("c/w1", true)),
        Ok(Some(Refusal::Waypoint)),
        "the caller learns the refusal, to log it"
    );
    assert_eq!(state.len(ResourceKind::Address), 2);
    assert_eq!(state.refused().get(&Refusal::Waypoint), Some(&1));
    state
        .apply(ResourceKind::Address, "c/w1", &workload("c/w1", false))
        .unwrap();
    assert!(state.refused().is_empty());

    state
        .apply(ResourceKind::Address, "c/w2", &workload("c/w2", true))
        .unwrap();
    assert_eq!(state.refused().get(&Refusal::Waypoint), Some(&1));
    assert!(state.remove(ResourceKind::Address, "c/w2"));
    assert!(state.refused().is_empty(), "a removal uncounts");
    assert!(!state.remove(ResourceKind::Address, "c/w2"), "already gone");
    assert!(state.remove(ResourceKind::Address, "ns1/web"));
    assert!(state.remove(ResourceKind::Authorization, "ns1/p"));
    assert!(!state.remove(ResourceKind::Authorization, "ns1/p"));
    assert_eq!(state.len(ResourceKind::Address), 1);
}

#[test]
fn a_bad_resource_leaves_its_last_good_version() {
    let mut state = MeshState::default();
    state
        .apply(ResourceKind::Address, "c/w1", &workload("c/w1", false))
        .unwrap();
    let err = state
        .apply(ResourceKind::Address, "c/w1", &[0xff, 0xff])
        .unwrap_err();
    assert!(matches!(err, DecodeError::Protobuf { .. }));
    assert_eq!(state.workload("c/w1").unwrap().addresses.len(), 1, "kept");
}

#[test]
fn names_must_match_the_body() {
    let mut state = MeshState::default();
    for (kind, name, body, expected) in [
        (
            ResourceKind::Address,
            "c/other",
            workload("c/w1", false),
            "c/w1",
        ),
        (
            ResourceKind::Address,
            "ns1/x",
            service("ns1", "web"),
            "ns1/web",
        ),
        (
            ResourceKind::Authorization,
            "ns2/p",
            policy("ns1", "p"),
            "ns1/p",
        ),
    ] {
        assert_eq!(
            state.apply(kind, name, &body).unwrap_err(),
            DecodeError::NameMismatch {
                name: name.into(),
                expected: expected.into()
            }
        );
    }
    assert!(state.is_empty());
}

#[test]
fn type_urls_name_the_kinds() {
    for kind in [ResourceKind::Address, ResourceKind::Authorization] {
        assert_eq!(ResourceKind::from_type_url(kind.type_url()), Some(kind));
    }
    assert_eq!(
        ResourceKind::from_type_url("type.googleapis.com/istio.workload.Workload"),
        None
    );
}
