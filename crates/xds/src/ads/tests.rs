//! The per-response logic, driven directly (the stream itself is tested against istiod's own
//! code in integration/tests/istiod_client.rs).

use std::collections::BTreeMap;

use super::*;
use crate::proto::envoy::service::discovery::v3::Resource as WireResource;

/// A handler that holds name → (version, body) and refuses bodies equal to `b"bad"`.
#[derive(Default)]
struct Store {
    held: BTreeMap<(String, String), (String, Vec<u8>)>,
}

impl Handler for Store {
    fn apply(&mut self, t: &str, updated: Vec<Resource>, removed: Vec<String>) -> Vec<Rejection> {
        let mut rejected = vec![];
        for r in updated {
            if &r.body[..] == b"bad" {
                rejected.push(Rejection {
                    name: r.name,
                    message: "malformed".into(),
                });
            } else {
                self.held
                    .insert((t.into(), r.name), (r.version, r.body.to_vec()));
            }
        }
        for n in removed {
            self.held.remove(&(t.to_string(), n));
        }
        rejected
    }
    fn held(&self, t: &str) -> HashMap<String, String> {
        self.held
            .iter()
            .filter(|((ty, _), _)| ty == t)
            .map(|((_, n), (v, _))| (n.clone(), v.clone()))
            .collect()
    }
}

fn client() -> AdsClient {
    let s = ControlPlaneSettings::new("/nonexistent/root.pem", "bar", "vm");
    AdsClient::new(s, "192.0.2.1".parse().unwrap(), None, Arc::default()).unwrap()
}

fn res(t: &str, name: &str, body: &[u8]) -> WireResource {
    WireResource {
        name: name.into(),
        version: "v1".into(),
        resource: Some(prost_types::Any {
            type_url: t.into(),
            value: body.to_vec(),
        }),
        ..Default::default()
    }
}

fn response(
    t: &str,
    nonce: &str,
    resources: Vec<WireResource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: t.into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn ack_then_ready_only_after_both_types() {
    let c = client();
    let mut store = Store::default();
    let mut acked = HashSet::new();
    let r = c.handle(
        &mut store,
        response(
            ADDRESS_TYPE,
            "n1",
            vec![res(ADDRESS_TYPE, "w1", b"ok")],
            &[],
        ),
        &mut acked,
    );
    assert_eq!(r.response_nonce, "n1");
    assert!(r.error_detail.is_none());
    assert!(!c.status().borrow().ready, "one type ACKed is not ready");
    c.handle(
        &mut store,
        response(AUTHORIZATION_TYPE, "n2", vec![], &[]),
        &mut acked,
    );
    let st = c.status().borrow().clone();
    assert!(st.ready);
    assert_eq!(st.types[ADDRESS_TYPE].resources, 1);
    assert_eq!(st.types[ADDRESS_TYPE].acks, 1);
    assert_eq!(
        st.types[AUTHORIZATION_TYPE].last.as_ref().unwrap().nonce,
        "n2"
    );
    assert_eq!(c.metrics.messages(ADDRESS_TYPE), 1);
    assert!(c.metrics.message_bytes(ADDRESS_TYPE) > 0);
}

#[test]
fn nack_names_each_rejected_resource_and_applies_the_rest() {
    let c = client();
    let mut store = Store::default();
    let mut acked = HashSet::new();
    c.handle(
        &mut store,
        response(
            ADDRESS_TYPE,
            "n0",
            vec![res(ADDRESS_TYPE, "keep", b"old")],
            &[],
        ),
        &mut acked,
    );
    let mut no_body = res(ADDRESS_TYPE, "nobody", b"");
    no_body.resource = None;
    let resp = response(
        ADDRESS_TYPE,
        "n1",
        vec![
            res(ADDRESS_TYPE, "keep", b"bad"),
            res(ADDRESS_TYPE, "new", b"ok"),
            res(AUTHORIZATION_TYPE, "wrongtype", b"ok"),
            no_body,
        ],
        &[],
    );
    let r = c.handle(&mut store, resp, &mut acked);
    let msg = r.error_detail.expect("NACK").message;
    for name in [
        "keep: malformed",
        "wrongtype: body is",
        "nobody: no resource body",
    ] {
        assert!(msg.contains(name), "{msg}");
    }
    assert_eq!(r.response_nonce, "n1");
    // The rejected one keeps its last good version; the good one is applied.
    assert_eq!(store.held[&(ADDRESS_TYPE.into(), "keep".into())].1, b"old");
    assert!(
        store
            .held
            .contains_key(&(ADDRESS_TYPE.into(), "new".into()))
    );
    assert!(
        !store
            .held
            .contains_key(&(ADDRESS_TYPE.into(), "wrongtype".into()))
    );
    let st = c.status().borrow().clone();
    let t = &st.types[ADDRESS_TYPE];
    assert_eq!((t.acks, t.nacks), (1, 1));
    assert_eq!(t.last_nack.as_ref().unwrap().nonce, "n1");
    assert!(!t.last.as_ref().unwrap().ack);
}

#[test]
fn a_nack_does_not_make_ready_and_removal_applies() {
    let c = client();
    let mut store = Store::default();
    let mut acked = HashSet::new();
    c.handle(
        &mut store,
        response(ADDRESS_TYPE, "a", vec![res(ADDRESS_TYPE, "w", b"bad")], &[]),
        &mut acked,
    );
    c.handle(
        &mut store,
        response(
            AUTHORIZATION_TYPE,
            "b",
            vec![res(AUTHORIZATION_TYPE, "p", b"ok")],
            &[],
        ),
        &mut acked,
    );
    assert!(!c.status().borrow().ready);
    c.handle(
        &mut store,
        response(AUTHORIZATION_TYPE, "c", vec![], &["p"]),
        &mut acked,
    );
    assert!(store.held(AUTHORIZATION_TYPE).is_empty());
    c.handle(
        &mut store,
        response(ADDRESS_TYPE, "d", vec![], &[]),
        &mut acked,
    );
    assert!(c.status().borrow().ready);
}

#[test]
fn an_unsubscribed_type_is_nacked_whole() {
    let c = client();
    let mut store = Store::default();
    let r = c.handle(
        &mut store,
        response("type.googleapis.com/other", "x", vec![], &[]),
        &mut HashSet::new(),
    );
    assert!(r.error_detail.unwrap().message.contains("not subscribed"));
}

#[test]
fn termination_reasons() {
    let g = |code, msg: &str| Error::grpc("x", tonic::Status::new(code, msg));
    assert_eq!(
        classify(&g(tonic::Code::Unavailable, "transport is closing")),
        Termination::Reconnect
    );
    assert_eq!(
        classify(&g(tonic::Code::Unknown, "h2 protocol error: GOAWAY")),
        Termination::Reconnect
    );
    assert_eq!(
        classify(&g(tonic::Code::Unavailable, "connection reset")),
        Termination::ConnectionError
    );
    assert_eq!(
        classify(&g(tonic::Code::PermissionDenied, "no")),
        Termination::Error
    );
    let connect = Error::Connect {
        address: "a".into(),
        reason: "refused".into(),
    };
    assert_eq!(classify(&connect), Termination::ConnectionError);
}

#[test]
fn no_credential_at_all_is_refused_before_dialling() {
    let c = client();
    assert!(matches!(c.metadata(false), Err(Error::NoCredential(_))));
    let md = c.metadata(true).unwrap();
    assert_eq!(md.get("clusterid").unwrap(), "Kubernetes");
    assert!(md.get("authorization").is_none());
}
