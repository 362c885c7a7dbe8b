//! Admission before authentication: hosts that connect and never finish a TLS handshake hold
//! only a bounded, per-source share of the server's handshake budget, lose it at the handshake
//! timeout, and never take the places of authenticated peers (`max_connections`).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use common::{Harness, Pki, echo};
use meshd_hbone::{ServerSettings, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Upper bound for anything that should happen promptly; only a hang reaches it.
const NO_HANG: Duration = Duration::from_secs(5);

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection from `source` (another loopback address, i.e. another host to the server)
/// that never says anything.
async fn idle_from(source: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(server).await.unwrap()
}

/// Waits for the server to close `tcp` (EOF or reset) and says whether it did within `limit`.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // TLS alert or similar: keep reading to the close.
            Ok(Ok(_)) => {}
        }
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + NO_HANG;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn assert_echo(h: &Harness) {
    let mut s = tokio::time::timeout(NO_HANG, h.connect(80))
        .await
        .expect("tunnel hung")
        .unwrap();
    s.write_all(b"served").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"served");
}

/// An authenticated h2 connection made with the test PKI's client certificate.
async fn authenticated(pki: &Pki, addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tls = meshd_identity::tls::client_config(&pki.client, &pki.server_id).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = meshd_identity::tls::connect(tls, tcp).await.unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_host_cannot_lock_out_other_peers() {
    // 127.0.0.2 opens more idle connections than max_connections; a peer on 127.0.0.1 still
    // completes a tunnel, and the idle ones are closed: over its share at once, the rest at the
    // handshake timeout. (Before, every idle connection took one of max_connections.)
    let settings = ServerSettings {
        max_connections: 4,
        max_handshakes_per_ip: 2,
        handshake_timeout: Duration::from_secs(1),
        ..ServerSettings::default()
    };
    let h = Harness::with_settings(Transport::H2, echo(), settings, Default::default()).await;
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(idle_from(loopback(2), h.peer.addr).await);
    }
    wait_until("the idle host's share to fill", || {
        h.server().handshakes_in_flight() == 2
    })
    .await;

    assert_echo(&h).await;

    for tcp in &mut idle {
        assert!(closed_within(tcp, NO_HANG).await, "idle connection kept");
    }
    assert_eq!(h.server().handshakes_in_flight(), 0);
    assert_echo(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_per_source_share_is_closed_before_the_timeout() {
    // With a handshake timeout far beyond the test, exactly the share is held and the rest is
    // closed on accept.
    let settings = ServerSettings {
        max_handshakes_per_ip: 2,
        handshake_timeout: Duration::from_secs(60),
        ..ServerSettings::default()
    };
    let h = Harness::with_settings(Transport::H2, echo(), settings, Default::default()).await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(idle_from(loopback(2), h.peer.addr).await);
    }
    let mut closed = 0;
    for tcp in &mut idle {
        if closed_within(tcp, Duration::from_millis(500)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 3);
    assert_eq!(h.server().handshakes_in_flight(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_handshake_limit_refuses_then_recovers() {
    // Many hosts together can fill max_handshakes: further connections, from anyone, are closed
    // on accept until the idle ones time out; then peers are served again.
    let settings = ServerSettings {
        max_handshakes: 3,
        max_handshakes_per_ip: 3,
        handshake_timeout: Duration::from_millis(500),
        ..ServerSettings::default()
    };
    let h = Harness::with_settings(Transport::H2, echo(), settings, Default::default()).await;
    let mut idle = Vec::new();
    for host in 2..=4 {
        idle.push(idle_from(loopback(host), h.peer.addr).await);
    }
    wait_until("the budget to fill", || {
        h.server().handshakes_in_flight() == 3
    })
    .await;
    let mut over = idle_from(loopback(5), h.peer.addr).await;
    assert!(closed_within(&mut over, NO_HANG).await);
    for tcp in &mut idle {
        assert!(closed_within(tcp, NO_HANG).await, "idle connection kept");
    }
    assert_echo(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_connections_leave_the_handshake_budget() {
    // A per-source share of one does not stop a peer from holding several connections: each
    // gives its handshake place back once authenticated.
    let settings = ServerSettings {
        max_handshakes_per_ip: 1,
        ..ServerSettings::default()
    };
    let h = Harness::with_settings(Transport::H2, echo(), settings, Default::default()).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(authenticated(&h.pki, h.peer.addr).await);
        // TLS 1.3 clients finish first; the server is done once its place is back.
        wait_until("the server side of the handshake", || {
            h.server().handshakes_in_flight() == 0
        })
        .await;
    }
    assert_eq!(h.server().active_connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_connections_over_max_connections_are_closed() {
    // max_connections counts authenticated connections: the third peer connection is closed
    // after its handshake; once one is gone, a new one is served.
    let settings = ServerSettings {
        max_connections: 2,
        ..ServerSettings::default()
    };
    let h = Harness::with_settings(Transport::H2, echo(), settings, Default::default()).await;
    let first = authenticated(&h.pki, h.peer.addr).await;
    let _second = authenticated(&h.pki, h.peer.addr).await;
    wait_until("two authenticated connections", || {
        h.server().active_connections() == 2 && h.server().handshakes_in_flight() == 0
    })
    .await;

    let tls = meshd_identity::tls::client_config(&h.pki.client, &h.pki.server_id).unwrap();
    let tcp = TcpStream::connect(h.peer.addr).await.unwrap();
    // TLS 1.3: the client finishes first; the server's close arrives on the first read.
    let mut third = meshd_identity::tls::connect(tls, tcp).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(NO_HANG, third.read(&mut buf))
        .await
        .expect("connection over max_connections was kept");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    drop(first);
    wait_until("one connection", || h.server().active_connections() == 1).await;
    assert_echo(&h).await;
}

/// The same over QUIC, whose handshakes quinn runs; meshd adds address validation (Retry) and
/// the same budgets.
#[cfg(feature = "quic")]
mod quic {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use meshd_hbone::{Client, ClientSettings, Peer};
    use tokio::net::UdpSocket;

    use super::*;

    /// A UDP relay on 127.0.0.2 in front of `server`: the client's datagrams all go through,
    /// the server's only up to `pass_back` (then it is silent, like a host that stopped
    /// answering mid-handshake). Returns its address and how many server datagrams it saw.
    async fn relay(server: SocketAddr, pass_back: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let front = UdpSocket::bind((loopback(2), 0)).await.unwrap();
        let back = UdpSocket::bind((loopback(2), 0)).await.unwrap();
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&seen);
        tokio::spawn(async move {
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            let mut client = None;
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        client = Some(from);
                        let _ = back.send(&up[..n]).await;
                    }
                    Ok(n) = back.recv(&mut down) => {
                        let before = counter.fetch_add(1, Ordering::Relaxed);
                        if let (true, Some(to)) = (before < pass_back, client) {
                            let _ = front.send_to(&down[..n], to).await;
                        }
                    }
                }
            }
        });
        (addr, seen)
    }

    /// A client that starts a QUIC handshake through `relay` and waits for it (long enough to
    /// outlast the test; the task is aborted at the end).
    fn stalled_client(pki: &Pki, relay: SocketAddr) -> tokio::task::JoinHandle<()> {
        let settings = ClientSettings {
            handshake_timeout: Duration::from_secs(60),
            ..ClientSettings::default()
        };
        let client = Client::new(pki.client.clone(), settings).unwrap();
        let peer = Peer::new(pki.server_id.clone(), relay).with_transport(Transport::H3);
        tokio::spawn(async move {
            let _ = client
                .connect(&peer, common::authority(80), Default::default())
                .await;
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic_idle_host_cannot_lock_out_other_peers() {
        // Handshakes from 127.0.0.2 that pass address validation and then stall hold at most
        // the per-source share, never max_connections, and are dropped at the handshake timeout.
        let settings = ServerSettings {
            max_connections: 2,
            max_handshakes_per_ip: 2,
            handshake_timeout: Duration::from_secs(1),
            ..ServerSettings::default()
        };
        let h = Harness::with_settings(Transport::H3, echo(), settings, Default::default()).await;
        let mut stalled = Vec::new();
        for _ in 0..4 {
            // Pass the Retry back, then nothing.
            let (addr, _) = relay(h.peer.addr, 1).await;
            stalled.push(stalled_client(&h.pki, addr));
        }
        wait_until("the stalled host's share to fill", || {
            h.server().handshakes_in_flight() == 2
        })
        .await;
        assert_echo(&h).await;
        wait_until("the stalled handshakes to time out", || {
            h.server().handshakes_in_flight() == 0
        })
        .await;
        for task in stalled {
            task.abort();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic_unvalidated_sources_hold_nothing() {
        // A sender that never receives (a spoofed source address) gets a stateless Retry and
        // takes no handshake place at all.
        let h = Harness::start(Transport::H3, echo()).await;
        let (addr, seen) = relay(h.peer.addr, 0).await;
        let task = stalled_client(&h.pki, addr);
        wait_until("the server's answer", || seen.load(Ordering::Relaxed) >= 1).await;
        assert_eq!(h.server().handshakes_in_flight(), 0);
        assert_eq!(h.server().active_connections(), 0);
        task.abort();
        assert_echo(&h).await;
    }
}
