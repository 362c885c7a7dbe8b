//! The inbound stack: authorization, own ports, the dial, plugins, re-checks on reload.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// An inbound dial carries the client's address, for a connector keeping it.
fn source_ip() -> IpAddr {
    SOURCE.parse::<SocketAddr>().unwrap().ip()
}

// A peer the policy denies gets the HBONE 401 equivalent; the denial and the deciding policy
// are in the record; the workload is never dialled.
#[tokio::test]
async fn a_denied_peer_is_refused_recorded_and_never_dialled() {
    let h = Harness::new(&format!("{MESH}{DENY_CLIENT}"), Answer::Connect);
    let (result, client, _) = h
        .connect(
            &h.inbound(Plugins::new(Vec::new())),
            Direction::Inbound,
            Some(CLIENT),
            WEB,
        )
        .await;
    assert!(
        matches!(result, Err(ProxyError::Denied { .. })),
        "{result:?}"
    );
    assert_eq!(client.refusal(), Some(Refusal::Denied));
    assert!(h.connector.dials().is_empty());
    let record = h.only_record();
    assert_eq!(record.outcome, Outcome::Denied);
    let verdict = record.verdict.unwrap();
    assert!(!verdict.allowed);
    assert_eq!(verdict.policy.as_deref(), Some("shop/deny-client"));
    assert_eq!(record.destination_workload.as_deref(), Some("shop/web"));
}

// The same policy lets another namespace through: the workload is dialled at the destination
// asked for, the downstream accepted, and bytes flow both ways.
#[tokio::test]
async fn an_allowed_peer_is_dialled_directly_and_relayed() {
    let h = Harness::new(&format!("{MESH}{DENY_CLIENT}"), Answer::Connect);
    let (result, mut client, _) = h
        .connect(
            &h.inbound(Plugins::new(Vec::new())),
            Direction::Inbound,
            Some(OTHER),
            WEB,
        )
        .await;
    let relay = result.unwrap();
    assert_eq!(client.refusal(), None);
    assert_eq!(
        h.connector.dials(),
        vec![Dial::Direct(WEB.parse().unwrap(), Some(source_ip()))]
    );
    let mut workload = h.connector.far_end();
    let running = tokio::spawn(relay.run());
    client.app.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    workload.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    drop((client, workload));
    running.await.unwrap().unwrap();
    let record = h.only_record();
    assert_eq!(record.outcome, Outcome::Allowed);
    assert!(record.established);
    assert!(
        record.mtls,
        "an inbound peer with an identity came over mTLS"
    );
    assert_eq!(record.bytes_in, 4);
}

// meshd's own ports are refused before policy is asked, even with no policy at all.
#[tokio::test]
async fn an_own_port_is_refused_before_policy() {
    let h = Harness::new(MESH, Answer::Connect);
    let (result, client, _) = h
        .connect(
            &h.inbound(Plugins::new(Vec::new())),
            Direction::Inbound,
            Some(OTHER),
            "127.10.23.1:15001",
        )
        .await;
    assert!(matches!(result, Err(ProxyError::OwnPort(_))), "{result:?}");
    assert_eq!(client.refusal(), Some(Refusal::BadDestination));
    assert!(h.connector.dials().is_empty());
    let record = h.only_record();
    assert_eq!(record.outcome, Outcome::OwnPort);
    assert_eq!(record.verdict, None, "refused before any decision");
}

// A destination that is not a local workload is refused (HBONE 400), never dialled.
#[tokio::test]
async fn a_destination_not_served_here_is_refused() {
    let h = Harness::new(MESH, Answer::Connect);
    let (result, client, _) = h
        .connect(
            &h.inbound(Plugins::new(Vec::new())),
            Direction::Inbound,
            Some(OTHER),
            "127.10.23.2:5432",
        )
        .await;
    assert!(
        matches!(result, Err(ProxyError::BadDestination(_))),
        "{result:?}"
    );
    assert_eq!(client.refusal(), Some(Refusal::BadDestination));
    assert!(h.connector.dials().is_empty());
    assert_eq!(h.only_record().outcome, Outcome::NotLocal);
}

// An allowed connection whose workload refuses the dial: the peer gets the HBONE 503
// equivalent, the record says unreachable, and the workload's address is marked unhealthy. A
// dial no socket could make (original source's client address cannot reach the workload) is
// refused the same way and marks nothing: it says nothing of the workload's health.
#[tokio::test]
async fn a_failed_dial_is_unreachable() {
    for (answer, healthy) in [(Answer::Refused, false), (Answer::Impossible, true)] {
        let h = Harness::new(MESH, answer);
        let (result, client, _) = h
            .connect(
                &h.inbound(Plugins::new(Vec::new())),
                Direction::Inbound,
                Some(OTHER),
                WEB,
            )
            .await;
        assert!(
            matches!(result, Err(ProxyError::Connect { .. })),
            "{result:?}"
        );
        assert_eq!(client.refusal(), Some(Refusal::Unreachable));
        assert_eq!(
            h.connector.dials(),
            vec![Dial::Direct(WEB.parse().unwrap(), Some(source_ip()))]
        );
        let record = h.only_record();
        assert_eq!(record.outcome, Outcome::Unreachable);
        assert!(!record.established);
        assert!(
            record.verdict.unwrap().allowed,
            "authorized, then unreachable"
        );
        let registry = &h.states.borrow().registry;
        let workload = [127, 10, 23, 1].into();
        assert_eq!(registry.is_healthy(workload), healthy, "{answer:?}");
    }
}

// A plugin sits after authorization and refuses with its own signal (HBONE 429): the second
// connection of a peer limited to one is refused, and never dialled.
#[tokio::test]
async fn a_plugin_refusal_is_limited() {
    let h = Harness::new(MESH, Answer::Connect);
    let spec = PluginSpec {
        name: "connection_limit".into(),
        config: serde_json::json!({"maxPerSource": 1}),
    };
    let layers = PluginRegistry::builtin().build(&[spec]).unwrap();
    let stack = h.inbound(Plugins::new(layers));
    let (first, _first_client, _) = h
        .connect(&stack, Direction::Inbound, Some(OTHER), WEB)
        .await;
    let first = first.unwrap();
    let (second, client, _) = h
        .connect(&stack, Direction::Inbound, Some(OTHER), WEB)
        .await;
    assert!(
        matches!(second, Err(ProxyError::Limited { .. })),
        "{second:?}"
    );
    assert_eq!(client.refusal(), Some(Refusal::Limited));
    assert_eq!(h.connector.dials().len(), 1, "only the first was dialled");
    let closed = h.closed();
    assert_eq!(closed.len(), 1, "the first is still open");
    assert_eq!(closed[0].outcome, Outcome::Limited);
    drop(first);
}

// A new configuration that denies an open connection closes it: the relay ends with the
// policy-change error and the record says so.
#[tokio::test]
async fn a_policy_change_closes_an_open_relay() {
    let h = Harness::new(MESH, Answer::Connect);
    let (result, mut client, _) = h
        .connect(
            &h.inbound(Plugins::new(Vec::new())),
            Direction::Inbound,
            Some(CLIENT),
            WEB,
        )
        .await;
    let relay = result.unwrap();
    let mut workload = h.connector.far_end();
    let running = tokio::spawn(relay.run());
    client.app.write_all(b"before").await.unwrap();
    let mut got = [0u8; 6];
    workload.read_exact(&mut got).await.unwrap();
    // Another configuration that still allows it changes nothing.
    h.states.send_replace(state(MESH, 2));
    client.app.write_all(b"again!").await.unwrap();
    workload.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"again!");
    h.states
        .send_replace(state(&format!("{MESH}{DENY_CLIENT}"), 3));
    let ended = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the relay closes")
        .unwrap();
    match ended {
        Err(ProxyError::ClosedByPolicyChange { policy, .. }) => {
            assert_eq!(policy.as_deref(), Some("shop/deny-client"))
        }
        other => panic!("{other:?}"),
    }
    // Both sides are closed.
    let mut rest = Vec::new();
    assert_eq!(client.app.read_to_end(&mut rest).await.unwrap(), 0);
    let record = h.only_record();
    assert_eq!(record.outcome, Outcome::ClosedByPolicy);
    assert!(record.established);
}

// A peer identity outside Istio's `ns/<ns>/sa/<sa>` form matches no principal or namespace:
// the connection is denied (fail closed), even with no policy at all, and never dialled.
#[tokio::test]
async fn a_peer_identity_outside_istio_form_is_denied() {
    let h = Harness::new(MESH, Answer::Connect);
    let (result, client, _) = h
        .connect(
            &h.inbound(Plugins::new(Vec::new())),
            Direction::Inbound,
            Some("spiffe://cluster.local/workload/sleep"),
            WEB,
        )
        .await;
    assert!(
        matches!(result, Err(ProxyError::Denied { .. })),
        "{result:?}"
    );
    assert_eq!(client.refusal(), Some(Refusal::Denied));
    assert!(h.connector.dials().is_empty());
    let record = h.only_record();
    assert_eq!(record.outcome, Outcome::Denied);
    let verdict = record.verdict.unwrap();
    assert!(!verdict.allowed);
    assert!(
        verdict
            .reason
            .contains("\"cluster.local/workload/sleep\" is not of the form"),
        "{}",
        verdict.reason
    );
}
