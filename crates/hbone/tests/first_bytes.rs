//! Bytes sent behind the CONNECT (`Client::connect_with_data`): they reach the server before
//! its answer, once, also when the request is retried on another connection; a refused tunnel
//! relays none of them.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Harness, Pki, authority};
use meshd_hbone::{Decision, Error, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// What a bare h2 server did with one CONNECT stream.
#[derive(Debug, PartialEq)]
enum Seen {
    /// It reset the stream with REFUSED_STREAM without reading it.
    Refused,
    /// It read these bytes of the request body, then answered 200.
    ReadBeforeAnswer(Vec<u8>),
}

/// A bare h2 server over the test PKI: the first `refuse` streams (over all connections) are
/// reset with REFUSED_STREAM; every later one has its body read up to `want` bytes *before*
/// the answer, which therefore never comes unless the client sent them ahead of it.
async fn bare_server(pki: &Pki, refuse: usize, want: usize) -> (Peer, mpsc::Receiver<Seen>) {
    let listener = tokio::net::TcpListener::bind((common::LOCALHOST, 0))
        .await
        .unwrap();
    let peer = Peer::new(pki.server_id.clone(), listener.local_addr().unwrap());
    let tls = meshd_identity::tls::server_config(&pki.server).unwrap();
    let (tx, rx) = mpsc::channel(8);
    let streams = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (tls, tx, streams) = (Arc::clone(&tls), tx.clone(), Arc::clone(&streams));
            tokio::spawn(async move {
                let tls = meshd_identity::tls::accept(tls, tcp).await.unwrap();
                let mut conn = h2::server::handshake(tls).await.unwrap();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    if streams.fetch_add(1, Ordering::SeqCst) < refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        tx.send(Seen::Refused).await.unwrap();
                        continue;
                    }
                    let (tx, mut body) = (tx.clone(), req.into_body());
                    tokio::spawn(async move {
                        let mut got = Vec::new();
                        while got.len() < want {
                            let Some(Ok(chunk)) = body.data().await else {
                                break;
                            };
                            let _ = body.flow_control().release_capacity(chunk.len());
                            got.extend_from_slice(&chunk);
                        }
                        tx.send(Seen::ReadBeforeAnswer(got)).await.unwrap();
                        let _ = respond.send_response(http::Response::new(()), false);
                        // Hold the stream open until the client is done with it.
                        while let Some(Ok(_)) = body.data().await {}
                    });
                }
            });
        }
    });
    (peer, rx)
}

/// A new client's tunnel to `peer` with "hello" sent behind the CONNECT; it fails the test if
/// the answer never comes (as it would not from `bare_server` had the bytes waited for it).
async fn connect_hello(pki: &Pki, peer: &Peer) -> (meshd_hbone::Client, meshd_hbone::TunnelStream) {
    let client = meshd_hbone::Client::new(pki.client.clone(), Default::default()).unwrap();
    let connect = client.connect_with_data(
        peer,
        authority(80),
        Default::default(),
        Bytes::from_static(b"hello"),
    );
    let stream = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("the answer never came: the bytes waited for it")
        .unwrap();
    (client, stream)
}

// The bytes travel behind the HEADERS: the server reads them before it answers.
#[tokio::test]
async fn first_bytes_arrive_before_the_answer() {
    let pki = Pki::new();
    let (peer, mut seen) = bare_server(&pki, 0, 5).await;
    let (_client, stream) = connect_hello(&pki, &peer).await;
    assert_eq!(
        seen.recv().await.unwrap(),
        Seen::ReadBeforeAnswer(b"hello".to_vec())
    );
    drop(stream);
}

// A stream refused with REFUSED_STREAM (never processed) is retried on a new connection, and
// the retry carries the bytes again: none lost, none doubled.
#[tokio::test]
async fn a_retried_request_carries_its_first_bytes_again() {
    let pki = Pki::new();
    let (peer, mut seen) = bare_server(&pki, 1, 5).await;
    let (client, stream) = connect_hello(&pki, &peer).await;
    assert_eq!(seen.recv().await.unwrap(), Seen::Refused);
    assert_eq!(
        seen.recv().await.unwrap(),
        Seen::ReadBeforeAnswer(b"hello".to_vec())
    );
    assert_eq!(client.connections_opened(), 2);
    drop(stream);
}

// Against meshd's own server: the bytes reach the upstream once, ahead of what the relay
// sends after the answer, over HTTP/2 and HTTP/3.
#[tokio::test]
async fn first_bytes_then_the_rest_reach_the_upstream_in_order() {
    for &transport in common::TRANSPORTS {
        let h = Harness::start(transport, common::echo()).await;
        let mut stream = h
            .client
            .connect_with_data(
                &h.peer,
                authority(80),
                Default::default(),
                Bytes::from_static(b"first "),
            )
            .await
            .unwrap();
        stream.write_all(b"then the rest").await.unwrap();
        let mut back = vec![0u8; b"first then the rest".len()];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, b"first then the rest", "{transport:?}");
    }
}

// A refused tunnel's bytes are dropped with its stream: the client sees the refusal, not a
// protocol error, and the connection serves the next tunnel, over HTTP/2 and HTTP/3. (That a
// denied connection never reaches its upstream is meshd's inbound stack's test:
// integration/tests/two_nodes.rs.)
#[tokio::test]
async fn a_refused_tunnel_drops_its_first_bytes() {
    for &transport in common::TRANSPORTS {
        let calls = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&calls);
        let h = Harness::start(transport, move |_req| {
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                std::future::ready(Decision::refuse(meshd_hbone::Refusal::Denied))
            } else {
                std::future::ready(Decision::accept(common::echo_stream))
            }
        })
        .await;
        let refused = h
            .client
            .connect_with_data(
                &h.peer,
                authority(80),
                Default::default(),
                Bytes::from_static(b"secret"),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(refused, Error::HttpStatus(s) if s == 401),
            "{transport:?}: {refused}"
        );
        let mut next = h.connect(80).await.unwrap();
        next.write_all(b"x").await.unwrap();
        let mut back = [0u8; 1];
        next.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"x");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{transport:?}");
    }
}
