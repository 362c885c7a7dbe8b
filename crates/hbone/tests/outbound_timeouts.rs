//! The outbound side against peers that stall at each step: every request fails within its
//! configured time with a typed timeout, concurrent requests to a dead peer share one dial (and
//! its failure) instead of queueing behind each other's timeouts, and a dead peer never delays
//! requests to another.
#![allow(clippy::unwrap_used)]

mod common;

#[cfg(feature = "quic")]
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
#[cfg(feature = "quic")]
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Harness, LOCALHOST, authority, echo};
use meshd_hbone::{
    ClientSettings, Decision, Error, InboundRequest, Peer, ServerSettings, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Upper bound for anything that should end promptly; only a hang reaches it.
const NO_HANG: Duration = Duration::from_secs(5);
/// The configured limit each scenario expects to hit.
const LIMIT: Duration = Duration::from_millis(300);

/// A TCP listener that accepts and then never says anything (a peer whose TLS stalls).
/// Returns its address and how many connections it accepted.
async fn accept_and_hold() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            held.push(tcp);
        }
    });
    (addr, accepted)
}

/// A listener whose accept queue is full and never drained: the kernel drops further SYNs, so
/// a connect neither succeeds nor is refused (a blackhole, on loopback). The fillers are
/// returned so they stay open.
async fn blackhole() -> (SocketAddr, Vec<TcpStream>, TcpListener) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => fillers.push(tcp),
            Ok(Err(e)) => panic!("filling the backlog: {e}"),
            Err(_) => break,
        }
        assert!(fillers.len() < 64, "the backlog never filled");
    }
    (addr, fillers, listener)
}

fn settings() -> ClientSettings {
    ClientSettings {
        connect_timeout: LIMIT,
        handshake_timeout: LIMIT,
        response_timeout: LIMIT,
        ..ClientSettings::default()
    }
}

/// A service that never decides: the server completes TLS and HTTP/2, then never answers the
/// CONNECT.
fn never_answer() -> impl FnMut(InboundRequest) -> std::future::Pending<Decision> + Clone + Send {
    |_req| std::future::pending()
}

async fn connect_to(h: &Harness, peer: &Peer) -> Result<meshd_hbone::TunnelStream, Error> {
    tokio::time::timeout(
        NO_HANG,
        h.client.connect(peer, authority(80), Default::default()),
    )
    .await
    .expect("request hung")
}

async fn unanswered_connect_is_a_timeout(transport: Transport) {
    // The peer is healthy at the TLS and HTTP/2 (or QUIC) level but never answers the CONNECT.
    let h = Harness::with_settings(
        transport,
        never_answer(),
        ServerSettings::default(),
        settings(),
    )
    .await;
    let err = connect_to(&h, &h.peer).await.unwrap_err();
    assert_eq!(
        err,
        Error::Timeout {
            what: "connect response",
            after: LIMIT
        }
    );
}

#[tokio::test]
async fn unanswered_connect_is_a_timeout_h2() {
    unanswered_connect_is_a_timeout(Transport::H2).await;
}

#[cfg(feature = "quic")]
#[tokio::test]
async fn unanswered_connect_is_a_timeout_h3() {
    unanswered_connect_is_a_timeout(Transport::H3).await;
}

#[tokio::test]
async fn stalled_tls_is_a_handshake_timeout() {
    // TCP connects, TLS never starts: bounded by the handshake timeout.
    let h =
        Harness::with_settings(Transport::H2, echo(), ServerSettings::default(), settings()).await;
    let (addr, _) = accept_and_hold().await;
    let err = connect_to(&h, &Peer::new(h.pki.server_id.clone(), addr))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::Timeout {
            what: "tls and http2 handshake",
            after: LIMIT
        }
    );
}

#[tokio::test]
async fn blackholed_peer_is_a_connect_timeout() {
    // SYNs dropped: bounded by the connect timeout.
    let h =
        Harness::with_settings(Transport::H2, echo(), ServerSettings::default(), settings()).await;
    let (addr, _fillers, _listener) = blackhole().await;
    let err = connect_to(&h, &Peer::new(h.pki.server_id.clone(), addr))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::Timeout {
            what: "tcp connect",
            after: LIMIT
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_a_stalled_peer_share_one_dial() {
    // Eight requests at once to a peer whose TLS stalls: one connection is tried and all eight
    // fail with its timeout, where they used to queue and dial one after another (8 × 300 ms).
    let h =
        Harness::with_settings(Transport::H2, echo(), ServerSettings::default(), settings()).await;
    let (addr, accepted) = accept_and_hold().await;
    let peer = Peer::new(h.pki.server_id.clone(), addr);
    let results = futures::future::join_all((0..8).map(|_| connect_to(&h, &peer))).await;
    for result in results {
        assert_eq!(
            result.err(),
            Some(Error::Timeout {
                what: "tls and http2 handshake",
                after: LIMIT
            })
        );
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_a_blackhole_fail_together() {
    // The same for a peer that never answers the SYN: with a 1 s connect timeout, eight
    // requests dialing in turn would take 8 s and trip the no-hang bound; sharing, they take 1.
    let connect_timeout = Duration::from_secs(1);
    let client = ClientSettings {
        connect_timeout,
        ..settings()
    };
    let h = Harness::with_settings(Transport::H2, echo(), ServerSettings::default(), client).await;
    let (addr, _fillers, _listener) = blackhole().await;
    let peer = Peer::new(h.pki.server_id.clone(), addr);
    let results = futures::future::join_all((0..8).map(|_| connect_to(&h, &peer))).await;
    for result in results {
        assert_eq!(
            result.err(),
            Some(Error::Timeout {
                what: "tcp connect",
                after: connect_timeout
            })
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_does_not_delay_a_healthy_one() {
    // While requests wait on a stalled peer (with a handshake timeout far beyond the test),
    // the same client opens a tunnel to a healthy peer and moves bytes through it.
    let client = ClientSettings {
        handshake_timeout: Duration::from_secs(60),
        ..ClientSettings::default()
    };
    let h = Harness::with_settings(Transport::H2, echo(), ServerSettings::default(), client).await;
    let (addr, accepted) = accept_and_hold().await;
    let dead = Peer::new(h.pki.server_id.clone(), addr);
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let (client, dead) = (h.client.clone(), dead.clone());
            tokio::spawn(async move {
                client
                    .connect(&dead, authority(80), Default::default())
                    .await
            })
        })
        .collect();
    while accepted.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut s = connect_to(&h, &h.peer).await.unwrap();
    s.write_all(b"alive").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"alive");
    for task in waiting {
        assert!(
            !task.is_finished(),
            "a request to the stalled peer ended early"
        );
        task.abort();
    }
}

/// QUIC: a UDP socket that reads and never answers; counts the distinct connection attempts
/// (destination connection IDs of long-header packets) it sees.
#[cfg(feature = "quic")]
async fn silent_udp() -> (SocketAddr, Arc<Mutex<HashSet<Vec<u8>>>>) {
    let socket = tokio::net::UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let attempts = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::clone(&attempts);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = socket.recv(&mut buf).await {
            // Long header: flags(1) version(4) dcid_len(1) dcid(dcid_len).
            let packet = &buf[..n];
            if packet.first().is_some_and(|b| b & 0x80 != 0)
                && let Some(&len) = packet.get(5)
                && let Some(dcid) = packet.get(6..6 + usize::from(len))
            {
                seen.lock().unwrap().insert(dcid.to_vec());
            }
        }
    });
    (addr, attempts)
}

#[cfg(feature = "quic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_a_silent_quic_peer_share_one_dial() {
    // Eight HTTP/3 requests to a peer that never answers: one QUIC connection attempt, eight
    // identical timeouts.
    let h =
        Harness::with_settings(Transport::H3, echo(), ServerSettings::default(), settings()).await;
    let (addr, attempts) = silent_udp().await;
    let peer = Peer::new(h.pki.server_id.clone(), addr).with_transport(Transport::H3);
    let results = futures::future::join_all((0..8).map(|_| connect_to(&h, &peer))).await;
    for result in results {
        assert_eq!(
            result.err(),
            Some(Error::Timeout {
                what: "quic handshake",
                after: LIMIT
            })
        );
    }
    assert_eq!(attempts.lock().unwrap().len(), 1);
}
