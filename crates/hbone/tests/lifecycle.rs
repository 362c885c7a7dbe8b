//! The server lifecycle both transports share (`server/lifecycle.rs`): a drain lets open
//! tunnels finish and refuses new ones, the drain deadline cuts what is left, and an idle
//! connection is closed by the server. Each test runs over HTTP/2 and, with the `quic`
//! feature, over HTTP/3, through real loopback sockets and real certificates.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Harness, echo};
use meshd_hbone::{ClientSettings, ServerSettings, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Defines `h2::<name>` and `h3::<name>` tests running `<name>(transport)`.
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        mod h2 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(meshd_hbone::Transport::H2).await
                }
            )*
        }
        #[cfg(feature = "quic")]
        mod h3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(meshd_hbone::Transport::H3).await
                }
            )*
        }
    };
}

both_transports!(
    a_drain_lets_open_tunnels_finish_and_refuses_new_ones,
    the_drain_deadline_cuts_what_is_left,
    an_idle_connection_is_closed_by_the_server,
);

/// An echo tunnel that has carried one round trip.
async fn open_tunnel(h: &Harness) -> meshd_hbone::TunnelStream {
    let mut open = h.connect(80).await.unwrap();
    open.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).await.unwrap();
    open
}

async fn a_drain_lets_open_tunnels_finish_and_refuses_new_ones(transport: Transport) {
    let mut h = Harness::start(transport, echo()).await;
    let mut open = open_tunnel(&h).await;
    let started = Instant::now();
    let shutdown = tokio::spawn(h.server.take().unwrap().shutdown(Duration::from_secs(10)));
    // Give the GOAWAY time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // No new tunnel, neither on the open connection (GOAWAY) nor on a new one.
    let refused = h.connect(80).await;
    assert!(refused.is_err(), "a tunnel opened during the drain");

    // The open tunnel still works both ways, and its end lets the drain finish early.
    let mut buf = [0u8; 6];
    open.write_all(b"during").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"during");
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.unwrap();
    drop(open);
    shutdown.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the drain waited for its deadline"
    );
}

async fn the_drain_deadline_cuts_what_is_left(transport: Transport) {
    let mut h = Harness::start(transport, echo()).await;
    let mut open = open_tunnel(&h).await;
    let started = Instant::now();
    h.server
        .take()
        .unwrap()
        .shutdown(Duration::from_millis(300))
        .await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let mut buf = [0u8; 16];
    let outcome = tokio::time::timeout(Duration::from_secs(3), open.read(&mut buf))
        .await
        .expect("tunnel neither reset nor closed after the deadline");
    assert!(
        outcome.is_err() || outcome.unwrap() == 0,
        "the tunnel kept delivering data"
    );
}

async fn an_idle_connection_is_closed_by_the_server(transport: Transport) {
    // The server's idle timeout is short, the client's long: the server closes.
    let server = ServerSettings {
        idle_timeout: Duration::from_millis(300),
        ..ServerSettings::default()
    };
    let client = ClientSettings {
        idle_timeout: Duration::from_secs(600),
        ..ClientSettings::default()
    };
    let h = Harness::with_settings(transport, echo(), server, client).await;
    let mut open = open_tunnel(&h).await;
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.unwrap();
    drop(open);
    assert_eq!(h.server().active_connections(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.server().active_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "an idle connection was still open 5 s after its 300 ms idle timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
