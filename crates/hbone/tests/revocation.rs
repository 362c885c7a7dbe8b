//! Established connections whose peer stops being trusted: after a rotation that drops the
//! peer's root, or once the peer's certificate expires, the connection takes no new streams
//! (server: GOAWAY and REFUSED_STREAM; client pool: eviction, so the next request redials and
//! meets the current bundle), open streams get the revocation grace period, then the
//! connection closes.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{authority, echo, spawn_server};
use http::{Method, Request};
use meshd_hbone::{Client, ClientSettings, Error, Peer, ServerHandle, ServerSettings, Transport};
use meshd_identity::{CredentialSet, DevCa, IdentityHandle, SpiffeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Upper bound for anything that should happen promptly; only a hang reaches it.
const NO_HANG: Duration = Duration::from_secs(5);
const HOUR: Duration = Duration::from_secs(3600);
/// Long enough that open streams outlive every check a test makes.
const LONG_GRACE: Duration = Duration::from_secs(60);
const SHORT_GRACE: Duration = Duration::from_millis(200);

/// An identity whose credential set the test replaces at will, as a rotation would.
struct Rotating {
    handle: IdentityHandle,
    tx: watch::Sender<Arc<CredentialSet>>,
}

impl Rotating {
    fn new(set: CredentialSet) -> Rotating {
        let (tx, rx) = watch::channel(Arc::new(set));
        Rotating {
            handle: IdentityHandle::from_watch(rx),
            tx,
        }
    }

    fn rotate(&self, set: CredentialSet) {
        self.tx.send_replace(Arc::new(set));
    }
}

fn issue(ca: &DevCa, sa: &str, ttl: Duration) -> CredentialSet {
    ca.issue("ns", sa, ttl).unwrap().credential_set().unwrap()
}

fn server_id() -> SpiffeId {
    SpiffeId::istio("cluster.local", "ns", "server").unwrap()
}

/// Two roots of one trust domain: A, which everyone starts on, and B, rotated to.
fn roots() -> (DevCa, DevCa) {
    (
        DevCa::generate("cluster.local").unwrap(),
        DevCa::generate("cluster.local").unwrap(),
    )
}

fn server_settings(grace: Duration) -> ServerSettings {
    ServerSettings {
        revocation_grace: grace,
        ..ServerSettings::default()
    }
}

fn client_settings(grace: Duration) -> ClientSettings {
    ClientSettings {
        revocation_grace: grace,
        ..ClientSettings::default()
    }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A bare h2 client connection (not the pool, which would redial), as `client`.
async fn raw_connection(
    client: &IdentityHandle,
    addr: SocketAddr,
) -> h2::client::SendRequest<Bytes> {
    let tls = meshd_identity::tls::client_config(client, &server_id()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = meshd_identity::tls::connect(tls, tcp).await.unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Opens a CONNECT stream on `send`: Ok with the stream halves on 200, else the h2 error.
async fn open_stream(
    send: &h2::client::SendRequest<Bytes>,
) -> Result<(h2::SendStream<Bytes>, h2::RecvStream), h2::Error> {
    let mut ready = send.clone().ready().await?;
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(authority(80).to_string())
        .body(())
        .unwrap();
    let (response, stream) = ready.send_request(request, false)?;
    let response = response.await?;
    assert_eq!(response.status(), 200);
    Ok((stream, response.into_body()))
}

/// Echoes `msg` through an open raw stream.
async fn echo_through(stream: &mut (h2::SendStream<Bytes>, h2::RecvStream), msg: &'static [u8]) {
    stream.0.send_data(Bytes::from_static(msg), false).unwrap();
    let data = tokio::time::timeout(NO_HANG, stream.1.data())
        .await
        .expect("echo hung")
        .unwrap()
        .unwrap();
    let _ = stream.1.flow_control().release_capacity(data.len());
    assert_eq!(&data[..], msg);
}

/// Tries new streams until the server stops serving them; returns the refusal.
async fn first_refused_stream(send: &h2::client::SendRequest<Bytes>) -> h2::Error {
    let deadline = tokio::time::Instant::now() + NO_HANG;
    loop {
        match open_stream(send).await {
            Err(e) => return e,
            // The rotation is applied asynchronously; a stream opened before it is fine.
            Ok(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "new streams still served"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_refusal(e: &h2::Error) -> bool {
    e.reason() == Some(h2::Reason::REFUSED_STREAM) || e.is_go_away()
}

async fn server_on(identity: &IdentityHandle, settings: ServerSettings) -> ServerHandle {
    spawn_server(identity, Transport::H2, echo(), settings).await
}

// ---------------------------------------------------------------------------------------------
// Server side.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refuses_new_streams_once_the_client_root_leaves() {
    // The server rotates from root A to root B only; the client's certificate (from A) no
    // longer verifies: new streams on its connection are refused at once, the open one keeps
    // working within the grace period.
    let (a, b) = roots();
    let server = Rotating::new(issue(&a, "server", HOUR));
    let handle = server_on(&server.handle, server_settings(LONG_GRACE)).await;
    let client = IdentityHandle::fixed(issue(&a, "client", HOUR));
    let send = raw_connection(&client, handle.local_addr()).await;
    let mut open = open_stream(&send).await.unwrap();
    echo_through(&mut open, b"before").await;

    server.rotate(issue(&b, "server", HOUR));
    let refused = first_refused_stream(&send).await;
    assert!(is_refusal(&refused), "{refused:?}");
    echo_through(&mut open, b"in grace").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closes_the_connection_after_the_grace() {
    // Streams still open when the grace period ends are cut and the connection closes.
    let (a, b) = roots();
    let server = Rotating::new(issue(&a, "server", HOUR));
    let handle = server_on(&server.handle, server_settings(SHORT_GRACE)).await;
    let client = IdentityHandle::fixed(issue(&a, "client", HOUR));
    let send = raw_connection(&client, handle.local_addr()).await;
    let mut open = open_stream(&send).await.unwrap();
    echo_through(&mut open, b"before").await;

    server.rotate(issue(&b, "server", HOUR));
    wait_until("the server to close", NO_HANG, || {
        handle.active_connections() == 0
    })
    .await;
    let end = tokio::time::timeout(NO_HANG, open.1.data())
        .await
        .expect("stream kept");
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keeps_connections_whose_root_stays() {
    // A rotation to a new certificate from the same root changes nothing for peers.
    let (a, _) = roots();
    let server = Rotating::new(issue(&a, "server", HOUR));
    let handle = server_on(&server.handle, server_settings(SHORT_GRACE)).await;
    let client = IdentityHandle::fixed(issue(&a, "client", HOUR));
    let send = raw_connection(&client, handle.local_addr()).await;
    let _open = open_stream(&send).await.unwrap();

    server.rotate(issue(&a, "server", HOUR));
    // Well past the grace period: still served, same connection.
    tokio::time::sleep(SHORT_GRACE * 3).await;
    let mut stream = open_stream(&send).await.unwrap();
    echo_through(&mut stream, b"still").await;
    assert_eq!(handle.active_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closes_the_connection_when_the_client_certificate_expires() {
    // A client certificate valid for a few more seconds: once it expires, its connection
    // refuses new streams and closes, with no rotation at all.
    let (a, _) = roots();
    let server = IdentityHandle::fixed(issue(&a, "server", HOUR));
    let handle = server_on(&server, server_settings(SHORT_GRACE)).await;
    let client = IdentityHandle::fixed(issue(&a, "client", Duration::from_secs(2)));
    let send = raw_connection(&client, handle.local_addr()).await;
    let _open = open_stream(&send).await.unwrap();

    let refused = first_refused_stream(&send).await;
    assert!(is_refusal(&refused), "{refused:?}");
    wait_until("the server to close", NO_HANG, || {
        handle.active_connections() == 0
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Client side (the pool).

/// A client on `identity` and a tunnel through it to `server`, echoing once.
async fn tunnel(client: &Client, server: &ServerHandle) -> meshd_hbone::TunnelStream {
    let peer = Peer::new(server_id(), server.local_addr());
    let mut s = tokio::time::timeout(
        NO_HANG,
        client.connect(&peer, authority(80), Default::default()),
    )
    .await
    .expect("tunnel hung")
    .unwrap();
    s.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_evicts_a_connection_once_the_server_root_leaves() {
    // The client rotates to root B only: its pooled connection to the server (certificate from
    // A) is evicted, the open tunnel keeps working within the grace period, and the next
    // request redials and is refused by the current bundle.
    let (a, b) = roots();
    let server_identity = IdentityHandle::fixed(issue(&a, "server", HOUR));
    let server = server_on(&server_identity, ServerSettings::default()).await;
    let client_identity = Rotating::new(issue(&a, "client", HOUR));
    let client = Client::new(client_identity.handle.clone(), client_settings(LONG_GRACE)).unwrap();
    let mut open = tunnel(&client, &server).await;
    assert_eq!(client.pooled_connections(), 1);

    client_identity.rotate(issue(&b, "client", HOUR));
    wait_until("eviction", NO_HANG, || client.pooled_connections() == 0).await;
    open.write_all(b"y").await.unwrap();
    let mut byte = [0u8; 1];
    open.read_exact(&mut byte).await.unwrap();
    assert_eq!(&byte, b"y");

    let peer = Peer::new(server_id(), server.local_addr());
    let err = client
        .connect(&peer, authority(80), Default::default())
        .await
        .unwrap_err();
    let Error::Tls { identity, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        identity,
        &Some(meshd_identity::Error::UnknownIssuer {
            trust_domain: "cluster.local".into()
        })
    );
    assert_eq!(
        client.connections_opened(),
        1,
        "the refused dial is not pooled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_evicts_a_connection_when_the_server_certificate_expires() {
    // A server certificate valid for a few more seconds: once it expires the pooled
    // connection is evicted without any rotation, and its open tunnel ends after the grace.
    let (a, _) = roots();
    let server_identity = IdentityHandle::fixed(issue(&a, "server", Duration::from_secs(2)));
    let server = server_on(&server_identity, ServerSettings::default()).await;
    let client_identity = IdentityHandle::fixed(issue(&a, "client", HOUR));
    let client = Client::new(client_identity, client_settings(SHORT_GRACE)).unwrap();
    let mut open = tunnel(&client, &server).await;

    wait_until("eviction", NO_HANG, || client.pooled_connections() == 0).await;
    let mut buf = [0u8; 8];
    let end = tokio::time::timeout(NO_HANG, open.read(&mut buf))
        .await
        .expect("tunnel kept");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_keeps_connections_whose_root_stays() {
    // The client's own certificate rotating under the same root keeps its pooled connection.
    let (a, _) = roots();
    let server_identity = IdentityHandle::fixed(issue(&a, "server", HOUR));
    let server = server_on(&server_identity, ServerSettings::default()).await;
    let client_identity = Rotating::new(issue(&a, "client", HOUR));
    let client = Client::new(client_identity.handle.clone(), client_settings(SHORT_GRACE)).unwrap();
    drop(tunnel(&client, &server).await);

    client_identity.rotate(issue(&a, "client", HOUR));
    tokio::time::sleep(SHORT_GRACE * 3).await;
    drop(tunnel(&client, &server).await);
    assert_eq!(client.connections_opened(), 1);
}

// ---------------------------------------------------------------------------------------------
// HTTP/3.

/// Counts panics anywhere in this test process (each test runs in its own under nextest), so
/// a panic in a spawned task, which tokio would swallow, fails the test.
#[cfg(feature = "quic")]
fn count_panics() -> Arc<std::sync::atomic::AtomicUsize> {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        previous(info);
    }));
    count
}

#[cfg(feature = "quic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_server_closes_once_the_client_root_leaves() {
    // Over HTTP/3 the server closes the connection after the grace; the tunnel's handler,
    // blocked in a read when that happens, ends without panicking.
    let panics = count_panics();
    let (a, b) = roots();
    let server_identity = Rotating::new(issue(&a, "server", HOUR));
    let server = spawn_server(
        &server_identity.handle,
        Transport::H3,
        echo(),
        server_settings(SHORT_GRACE),
    )
    .await;
    let client = Client::new(
        IdentityHandle::fixed(issue(&a, "client", HOUR)),
        ClientSettings::default(),
    )
    .unwrap();
    let peer = Peer::new(server_id(), server.local_addr()).with_transport(Transport::H3);
    let _open = client
        .connect(&peer, authority(80), Default::default())
        .await
        .unwrap();
    assert_eq!(server.active_connections(), 1);

    server_identity.rotate(issue(&b, "server", HOUR));
    wait_until("the server to close", NO_HANG, || {
        server.active_connections() == 0
    })
    .await;
    // Let the handler tasks finish.
    tokio::time::sleep(SHORT_GRACE).await;
    assert_eq!(panics.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[cfg(feature = "quic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_client_redials_once_the_server_root_leaves() {
    // The client rotates to root B: the next HTTP/3 request does not reuse the connection
    // verified under A but redials, and the server's certificate is refused.
    let (a, b) = roots();
    let server_identity = IdentityHandle::fixed(issue(&a, "server", HOUR));
    let server = spawn_server(
        &server_identity,
        Transport::H3,
        echo(),
        ServerSettings::default(),
    )
    .await;
    let client_identity = Rotating::new(issue(&a, "client", HOUR));
    let client = Client::new(client_identity.handle.clone(), client_settings(SHORT_GRACE)).unwrap();
    let peer = Peer::new(server_id(), server.local_addr()).with_transport(Transport::H3);
    drop(
        client
            .connect(&peer, authority(80), Default::default())
            .await
            .unwrap(),
    );

    client_identity.rotate(issue(&b, "client", HOUR));
    let deadline = tokio::time::Instant::now() + NO_HANG;
    let err = loop {
        // The rotation is applied asynchronously; a request racing it may still be served.
        match client
            .connect(&peer, authority(80), Default::default())
            .await
        {
            Err(e) => break e,
            Ok(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "old connection kept"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
}
