//! The client's connection pool over real HTTP/2 connections: multiplexing limits, shared
//! handshakes, idle release, eviction of broken connections, PING keepalive.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Harness, authority, echo};
use meshd_hbone::{ClientSettings, Keepalive, Peer, ServerSettings, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// 1 000 concurrent tunnels to one peer ride 10 connections at 100 streams each (ztunnel's
// observed behaviour), and every tunnel carries its own bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_streams_use_ten_connections() {
    let h = Harness::start(Transport::H2, echo()).await;
    let mut tasks = Vec::new();
    let (go_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1000);
    for i in 0..1000u32 {
        let client = h.client.clone();
        let peer = h.peer.clone();
        let mut go = go_tx.subscribe();
        let open = open_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = client
                .connect(&peer, authority(80), Default::default())
                .await
                .unwrap();
            open.send(()).await.unwrap();
            // Hold every stream open until all 1 000 exist.
            let _ = go.recv().await;
            let msg = i.to_be_bytes();
            s.write_all(&msg).await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }));
    }
    for _ in 0..1000 {
        open_rx.recv().await.unwrap();
    }
    assert_eq!(h.client.connections_opened(), 10);
    assert_eq!(h.client.pooled_connections(), 10);
    go_tx.send(()).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    // All streams done: the connections stay pooled for reuse.
    assert_eq!(h.client.pooled_connections(), 10);
    let _again = h.connect(80).await.unwrap();
    assert_eq!(h.client.connections_opened(), 10);
}

// The server's SETTINGS_MAX_CONCURRENT_STREAMS (10) caps streams per connection below our
// own limit (100): 30 held tunnels need 3 connections, none waits on a full one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_limit_is_respected() {
    let server = ServerSettings {
        max_concurrent_streams: 10,
        ..ServerSettings::default()
    };
    let h = Harness::with_settings(Transport::H2, echo(), server, ClientSettings::default()).await;
    let mut held = Vec::new();
    for _ in 0..30 {
        let s = tokio::time::timeout(Duration::from_secs(5), h.connect(80))
            .await
            .expect("a tunnel waited for a full connection")
            .unwrap();
        held.push(s);
    }
    assert_eq!(h.client.connections_opened(), 3);
}

// Concurrent first requests to a new key share one handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_a_handshake() {
    let h = Harness::start(Transport::H2, echo()).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let client = h.client.clone();
            let peer = h.peer.clone();
            tokio::spawn(async move {
                client
                    .connect(&peer, authority(80), Default::default())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut streams = Vec::new();
    for t in tasks {
        streams.push(t.await.unwrap());
    }
    assert_eq!(h.client.connections_opened(), 1);
}

// Different expected identities for the same address are different pool keys.
#[tokio::test]
async fn pool_key_includes_peer_identity() {
    let h = Harness::start(Transport::H2, echo()).await;
    let _a = h.connect(80).await.unwrap();
    // Same address, different expected identity: refused, and it must not reuse the pooled
    // connection that was verified for the real identity.
    let other = meshd_identity::SpiffeId::istio("cluster.local", "server-ns", "other").unwrap();
    let err = h
        .client
        .connect(
            &Peer::new(other, h.peer.addr),
            authority(80),
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, meshd_hbone::Error::Tls { .. }), "{err:?}");
    assert_eq!(h.client.connections_opened(), 1);
}

// An unused connection is closed after the idle timeout; the next tunnel dials anew.
#[tokio::test]
async fn idle_connections_are_released() {
    let client = ClientSettings {
        idle_timeout: Duration::from_millis(200),
        ..ClientSettings::default()
    };
    let h = Harness::with_settings(Transport::H2, echo(), ServerSettings::default(), client).await;
    let s = h.connect(80).await.unwrap();
    // In use: kept well past the idle timeout.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.client.pooled_connections(), 1);
    drop(s);
    wait_until("idle release", Duration::from_secs(3), || {
        h.client.pooled_connections() == 0
    })
    .await;
    // The server sees the client's GOAWAY and closes its side too.
    wait_until("server side close", Duration::from_secs(3), || {
        h.server().active_connections() == 0
    })
    .await;
    let _s = h.connect(80).await.unwrap();
    assert_eq!(h.client.connections_opened(), 2);
}

// After a burst, the connections beyond the first go after the short surplus timeout, and one
// stays for the (long) unused timeout, so the next tunnel reuses it without a handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_s_extra_connections_are_released_early_and_one_stays() {
    let client = ClientSettings {
        max_streams_per_connection: 10,
        idle_timeout: Duration::from_secs(60),
        surplus_idle_timeout: Duration::from_millis(200),
        ..ClientSettings::default()
    };
    let h = Harness::with_settings(Transport::H2, echo(), ServerSettings::default(), client).await;
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(h.connect(80).await.unwrap());
    }
    assert_eq!(h.client.connections_opened(), 3);
    // In use: none is surplus while it carries a stream, however long.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.client.pooled_connections(), 3);
    drop(held);
    wait_until("surplus release", Duration::from_secs(3), || {
        h.client.pooled_connections() == 1
    })
    .await;
    wait_until("server side close", Duration::from_secs(3), || {
        h.server().active_connections() == 1
    })
    .await;
    // The survivor is kept well past the surplus timeout and carries the next tunnel.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.client.pooled_connections(), 1);
    let _s = h.connect(80).await.unwrap();
    assert_eq!(h.client.connections_opened(), 3);
}

// A connection that breaks (server gone) is evicted and never handed out again: a new
// server on the same address gets a new connection.
#[tokio::test]
async fn broken_connection_is_evicted() {
    let mut h = Harness::start(Transport::H2, echo()).await;
    let addr = h.peer.addr;
    drop(h.connect(80).await.unwrap());
    drop(h.server.take());
    wait_until("eviction", Duration::from_secs(3), || {
        h.client.pooled_connections() == 0
    })
    .await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let server = meshd_hbone::Server::new(
        &h.pki.server,
        ServerSettings::default(),
        meshd_hbone::Decide(tower::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(meshd_hbone::Decision::accept(common::echo_stream))
        })),
    )
    .unwrap();
    let _handle = server.spawn(listener).unwrap();
    let mut s = h.connect(80).await.unwrap();
    s.write_all(b"again").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"again");
    assert_eq!(h.client.connections_opened(), 2);
}

/// A TCP relay that can be frozen: it stops moving bytes but keeps both sockets open, like a
/// peer whose host vanished without a FIN.
async fn freezable_relay(target: SocketAddr) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind((common::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (freeze, frozen) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut frozen = frozen.clone();
            tokio::spawn(async move {
                let mut outbound = TcpStream::connect(target).await.unwrap();
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = async { frozen.wait_for(|f| *f).await.map(|_| ()) } => {
                        std::future::pending::<()>().await
                    }
                }
            });
        }
    });
    (addr, freeze)
}

// PING keepalive notices a silent peer on both sides: the client evicts the connection and
// the server drops it, each within its (shortened) timeout.
#[tokio::test]
async fn keepalive_detects_a_silent_peer() {
    let keepalive = Keepalive {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    };
    let h = Harness::with_settings(
        Transport::H2,
        echo(),
        ServerSettings {
            keepalive,
            ..ServerSettings::default()
        },
        ClientSettings {
            keepalive,
            ..ClientSettings::default()
        },
    )
    .await;
    let (relay, freeze) = freezable_relay(h.peer.addr).await;
    let peer = Peer::new(h.pki.server_id.clone(), relay);
    let s = h
        .client
        .connect(&peer, authority(80), Default::default())
        .await
        .unwrap();
    // Pings flow while the path is healthy, well past several intervals.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.client.pooled_connections(), 1);
    assert_eq!(h.server().active_connections(), 1);
    freeze.send(true).unwrap();
    wait_until("client eviction", Duration::from_secs(3), || {
        h.client.pooled_connections() == 0
    })
    .await;
    wait_until("server drop", Duration::from_secs(3), || {
        h.server().active_connections() == 0
    })
    .await;
    drop(s);
}

// Sequential tunnels reuse one connection, whether each ends cleanly (both sides half-close)
// or is dropped after one echo (RST_STREAM): 2 000 in a row open exactly one HTTP/2
// connection, as ztunnel's pool does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_tunnels_reuse_one_connection() {
    let h = Harness::start(Transport::H2, echo()).await;
    for i in 0..2000u32 {
        let mut s = h.connect(80).await.unwrap();
        s.write_all(&[i as u8]).await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
        assert_eq!(one[0], i as u8);
        if i % 2 == 0 {
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
        }
        drop(s);
    }
    eprintln!("connections opened: {}", h.client.connections_opened());
    assert_eq!(h.client.connections_opened(), 1);
    assert_eq!(h.client.pooled_connections(), 1);
}
