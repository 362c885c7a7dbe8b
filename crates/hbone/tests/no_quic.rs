//! A build without the `quic` feature (the default, and the .deb's): a client asked for HBONE
//! over HTTP/3 fails with a reason and sends nothing, never falling back to HTTP/2 to the same
//! peer. Only in such a build: scripts/test.sh runs it with
//! `cargo test -p meshd-hbone --test no_quic` (the rest of the suite is built with `quic`).
#![cfg(not(feature = "quic"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::{Harness, authority};
use meshd_hbone::{Decision, Error, Transport};

#[tokio::test]
async fn http3_is_refused_with_a_reason_and_never_sent_over_http2() {
    const { assert!(!meshd_hbone::QUIC_BUILT) };
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&requests);
    let h = Harness::start(Transport::H2, move |_req| {
        seen.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Decision::accept(common::echo_stream))
    })
    .await;
    // The same peer, asked for over HTTP/3: its HTTP/2 server is right there, and unused.
    let h3 = h.peer.clone().with_transport(Transport::H3);
    let result = h
        .client
        .connect_with_data(
            &h3,
            authority(80),
            Default::default(),
            Bytes::from_static(b"x"),
        )
        .await;
    let Err(err) = result else {
        panic!("HTTP/3 must fail in a build without quic")
    };
    assert!(matches!(err, Error::TransportUnavailable("h3")), "{err:?}");
    assert!(err.to_string().contains("--features quic"), "{err}");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        0,
        "nothing reached the server"
    );
    assert_eq!(h.client.connections_opened(), 0, "no connection was opened");

    // The control: over HTTP/2 the same client reaches the same server.
    h.client
        .connect_with_data(&h.peer, authority(80), Default::default(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}
