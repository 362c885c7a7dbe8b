//! The relay a stack hands back: it copies, keeps what stages asked it to keep until the
//! connection ends, and closes the connection when a re-check under a new configuration fails.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use meshd_manifests::Snapshot;
use meshd_proxy::BoxIo;
use meshd_proxy::ProxyError;
use meshd_proxy::ProxyState;
use meshd_proxy::Relay;
use meshd_proxy::record::{ConnectionRecord, Direction, Facts, Outcome, RecordHandle, TraceParent};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::sync::watch;

fn state(generation: u64) -> Arc<ProxyState> {
    Arc::new(ProxyState::build(
        &Snapshot::default(),
        &Default::default(),
        "cluster.local",
        generation,
        |_| false,
    ))
}

/// A relay between two in-memory pipes; the far ends are the application and the upstream.
fn relay() -> (Relay, RecordHandle, DuplexStream, DuplexStream) {
    let (application, downstream) = duplex(1024);
    let (upstream, server) = duplex(1024);
    let facts = Facts::new(
        TraceParent::random(),
        Direction::Outbound,
        "127.0.0.1:1".parse().unwrap(),
    );
    let record = RecordHandle::detached(ConnectionRecord::new(Arc::new(facts), "127.0.0.1:2"));
    let relay = Relay::new(
        Box::new(downstream) as BoxIo,
        Box::new(upstream) as BoxIo,
        record.clone(),
    );
    (relay, record, application, server)
}

#[tokio::test]
async fn copies_both_ways_and_records_the_bytes() {
    let (relay, record, mut application, mut server) = relay();
    let running = tokio::spawn(relay.run());
    application.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    server.write_all(b"pong!").await.unwrap();
    let mut back = [0u8; 5];
    application.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"pong!");
    drop(application);
    drop(server);
    running.await.unwrap().unwrap();
    let r = record.snapshot();
    assert!(r.established);
    assert_eq!((r.bytes_in, r.bytes_out), (4, 5));
}

// Bytes an outbound tunnel sent ahead with its CONNECT count with those the relay copies.
#[tokio::test]
async fn bytes_sent_ahead_count_as_sent() {
    let (mut relay, record, mut application, mut server) = relay();
    relay.sent_ahead(0);
    relay.sent_ahead(6);
    let running = tokio::spawn(relay.run());
    application.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    server.read_exact(&mut got).await.unwrap();
    drop(application);
    drop(server);
    running.await.unwrap().unwrap();
    let r = record.snapshot();
    assert_eq!((r.bytes_in, r.bytes_out), (10, 0));
}

#[tokio::test]
async fn held_guards_live_until_the_connection_ends() {
    let (mut relay, _record, mut application, server) = relay();
    let guard = Arc::new(());
    relay.hold(Arc::clone(&guard));
    let running = tokio::spawn(relay.run());
    application.write_all(b"x").await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(
        Arc::strong_count(&guard),
        2,
        "released while the connection is open"
    );
    drop(application);
    drop(server);
    running.await.unwrap().unwrap();
    assert_eq!(
        Arc::strong_count(&guard),
        1,
        "kept after the connection ended"
    );
}

#[tokio::test]
async fn a_failed_recheck_closes_the_connection_and_is_recorded() {
    let (mut relay, record, mut application, _server) = relay();
    let (updates_tx, updates) = watch::channel(state(1));
    relay.recheck(
        updates,
        Box::new(|state: &ProxyState| {
            if state.generation >= 2 {
                Err(ProxyError::ClosedByPolicyChange {
                    policy: Some("ns/deny".into()),
                    reason: "denied".into(),
                })
            } else {
                Ok(())
            }
        }),
    );
    let running = tokio::spawn(relay.run());
    // A configuration that still allows it changes nothing.
    updates_tx.send(state(1)).unwrap();
    tokio::task::yield_now().await;
    assert!(!running.is_finished());
    updates_tx.send(state(2)).unwrap();
    let error = running.await.unwrap().unwrap_err();
    assert!(matches!(error, ProxyError::ClosedByPolicyChange { .. }));
    // Both sides are closed: the application reads the end.
    let mut rest = Vec::new();
    application.read_to_end(&mut rest).await.unwrap();
    assert_eq!(record.snapshot().outcome, Outcome::ClosedByPolicy);
}

#[tokio::test]
async fn without_more_configurations_the_relay_runs_to_the_end() {
    let (mut relay, _record, application, server) = relay();
    let (updates_tx, updates) = watch::channel(state(1));
    relay.recheck(updates, Box::new(|_: &ProxyState| Ok(())));
    let running = tokio::spawn(relay.run());
    drop(updates_tx);
    drop(application);
    drop(server);
    running.await.unwrap().unwrap();
}
