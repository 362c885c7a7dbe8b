//! HTTP/2-specific server behaviour: what our own client never sends (non-CONNECT methods,
//! header floods), limits against slow or malicious clients, graceful shutdown, and the exact
//! header order on the wire.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Harness, Pki, authority, echo, spawn_server};
use http::{Method, Request, StatusCode};
use meshd_hbone::{Decision, Error, RequestHeaders, ServerSettings, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bare h2 client over the test PKI's client certificate: not our pool, so tests can send
/// what the pool never would.
async fn raw_client(pki: &Pki, addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tls = meshd_identity::tls::client_config(&pki.client, &pki.server_id).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = meshd_identity::tls::connect(tls, tcp).await.unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

async fn raw_status(send: &mut h2::client::SendRequest<Bytes>, req: Request<()>) -> StatusCode {
    let mut ready = send.clone().ready().await.unwrap();
    let (resp, _body) = ready.send_request(req, true).unwrap();
    resp.await.unwrap().status()
}

// A method other than CONNECT is 400 (and the service is never asked).
#[tokio::test]
async fn non_connect_method_is_400() {
    let called = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&called);
    let h = Harness::start(Transport::H2, move |_req| {
        seen.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Decision::accept(common::echo_stream))
    })
    .await;
    let mut send = raw_client(&h.pki, h.peer.addr).await;
    let get = Request::builder()
        .method(Method::GET)
        .uri(format!("https://{}/", authority(80)))
        .body(())
        .unwrap();
    assert_eq!(raw_status(&mut send, get).await, 400);
    // A well-formed CONNECT on the same connection still works.
    let connect = Request::builder()
        .method(Method::CONNECT)
        .uri(authority(80).to_string())
        .body(())
        .unwrap();
    assert_eq!(raw_status(&mut send, connect).await, 200);
    assert_eq!(called.load(Ordering::SeqCst), 1);
}

// A CONNECT to a hostname authority is 400: meshd only tunnels to ip:port.
#[tokio::test]
async fn hostname_authority_is_400() {
    let h = Harness::start(Transport::H2, echo()).await;
    let mut send = raw_client(&h.pki, h.peer.addr).await;
    let connect = Request::builder()
        .method(Method::CONNECT)
        .uri("web.default.svc.cluster.local:80")
        .body(())
        .unwrap();
    assert_eq!(raw_status(&mut send, connect).await, 400);
}

// Headers reach the server in ztunnel's order, with a classic CONNECT (no :scheme/:path),
// checked with a bare h2 server in place of ours.
#[tokio::test]
async fn client_sends_ztunnel_header_order() {
    let pki = Pki::new();
    let listener = tokio::net::TcpListener::bind((common::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server_tls = meshd_identity::tls::server_config(&pki.server).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = meshd_identity::tls::accept(server_tls, tcp).await.unwrap();
        let mut conn = h2::server::handshake(tls).await.unwrap();
        let (req, mut respond) = conn.accept().await.unwrap().unwrap();
        let names: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
        let _ = tx.send((req.method().clone(), req.uri().clone(), names));
        let _ = respond.send_response(http::Response::new(()), false);
        while conn.accept().await.is_some() {}
    });
    let client = meshd_hbone::Client::new(pki.client.clone(), Default::default()).unwrap();
    let headers = RequestHeaders {
        baggage: Some("k8s.namespace.name=client-ns".into()),
        forwarded: Some(meshd_hbone::Forwarded {
            client: "10.0.0.9:1234".parse().unwrap(),
            host: None,
        }),
        traceparent: None,
    };
    let peer = meshd_hbone::Peer::new(pki.server_id.clone(), addr);
    let _stream = client
        .connect(&peer, "[fd00::7]:8080".parse().unwrap(), headers)
        .await
        .unwrap();
    let (method, uri, names) = rx.await.unwrap();
    assert_eq!(method, Method::CONNECT);
    assert_eq!(uri.to_string(), "[fd00::7]:8080");
    assert_eq!(uri.scheme(), None);
    assert_eq!(uri.path_and_query(), None);
    assert_eq!(names, ["baggage", "forwarded", "traceparent"]);
}

// A header list above the server's 64 KiB limit is refused without reaching the service,
// and the server keeps serving.
#[tokio::test]
async fn header_flood_is_refused() {
    let h = Harness::start(Transport::H2, echo()).await;
    let send = raw_client(&h.pki, h.peer.addr).await;
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(authority(80).to_string())
        .body(())
        .unwrap();
    for i in 0..200 {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-flood-{i}").as_bytes()).unwrap(),
            http::HeaderValue::from_str(&"a".repeat(1024)).unwrap(),
        );
    }
    let mut ready = send.clone().ready().await.unwrap();
    let outcome = match ready.send_request(req, false) {
        Ok((resp, _body)) => resp.await.map(|r| r.status()),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(status) => assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(e.is_reset() || e.is_go_away() || e.is_library(), "{e:?}"),
    }
    assert_echo(&h).await;
}

async fn assert_echo(h: &Harness) {
    let mut s = h.connect(80).await.unwrap();
    s.write_all(b"still serving").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"still serving");
}

// A client that connects and never starts TLS is dropped at the handshake timeout, and holds
// no slot: other clients are served meanwhile and afterwards.
#[tokio::test]
async fn stalled_handshake_is_dropped() {
    let settings = ServerSettings {
        handshake_timeout: Duration::from_millis(300),
        ..ServerSettings::default()
    };
    let h = Harness::with_settings(Transport::H2, echo(), settings, Default::default()).await;
    let mut silent = TcpStream::connect(h.peer.addr).await.unwrap();
    assert_echo(&h).await;
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("server never closed the stalled connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_echo(&h).await;
}

// Streams whose client never reads cannot make the server buffer without bound: each
// writer stalls once the client's windows and the server's send buffer are full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_streams_stall_writers() {
    const STREAMS: usize = 32;
    let written = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&written);
    let h = Harness::start(Transport::H2, move |_req| {
        let counter = Arc::clone(&counter);
        std::future::ready(Decision::accept(move |mut stream| async move {
            let chunk = vec![7u8; 64 * 1024];
            while let Ok(n) = stream.write(&chunk).await {
                counter.fetch_add(n, Ordering::SeqCst);
            }
        }))
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..STREAMS {
        idle.push(h.connect(80).await.unwrap());
    }
    // Wait until the total stops growing.
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = written.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    let s = ServerSettings::default().http2;
    let client = meshd_hbone::ClientSettings::default().http2;
    // In flight: at most the client's connection window; buffered at the server: at most one
    // send buffer per stream (plus one write's worth of rounding each).
    let bound = client.connection_window as usize + STREAMS * (s.max_send_buffer + 64 * 1024);
    assert!(
        last <= bound,
        "server accepted {last} bytes for unread streams (bound {bound})"
    );
    assert!(last > 0);
    // And the server still serves a well-behaved client on a fresh connection.
    let other = meshd_hbone::Client::new(h.pki.client.clone(), Default::default()).unwrap();
    let mut s = other
        .connect(&h.peer, authority(80), Default::default())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    s.read_exact(&mut buf).await.unwrap();
    assert!(buf.iter().all(|b| *b == 7));
}

// Graceful shutdown: open streams finish within the deadline; new streams and connections
// are refused from the moment it starts.
#[tokio::test]
async fn shutdown_lets_open_streams_finish() {
    let mut h = Harness::start(Transport::H2, echo()).await;
    let mut open = h.connect(80).await.unwrap();
    open.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).await.unwrap();

    let server = h.server.take().unwrap();
    let started = Instant::now();
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(10)));
    // Give the GOAWAY time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // No new stream, neither on the pooled connection (GOAWAY) nor on a new one (closed).
    let err = h.connect(80).await.unwrap_err();
    assert!(
        matches!(err, Error::Connect { .. } | Error::H2(_)),
        "unexpected {err:?}"
    );

    // The open stream still works both ways, and its end lets shutdown complete early.
    open.write_all(b"during").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"during");
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.unwrap();
    shutdown.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

// Streams still open at the deadline are reset, and shutdown returns shortly after it.
#[tokio::test]
async fn shutdown_deadline_resets_stragglers() {
    let mut h = Harness::start(Transport::H2, echo()).await;
    let mut open = h.connect(80).await.unwrap();
    open.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    open.read_exact(&mut one).await.unwrap();
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
        .expect("stream neither reset nor closed after forced shutdown");
    assert!(
        outcome.is_err() || outcome.unwrap() == 0,
        "stream kept delivering data"
    );
}

// A tunnel the server refuses never reaches the service with a non-CONNECT, and a service
// error is answered 503.
#[tokio::test]
async fn service_error_is_503() {
    let pki = Pki::new();
    let svc = tower::service_fn(|_req: meshd_hbone::InboundRequest| async {
        Err::<Decision, _>(std::io::Error::other("upstream registry unavailable"))
    });
    let server =
        meshd_hbone::Server::new(&pki.server, Default::default(), meshd_hbone::Decide(svc))
            .unwrap();
    let listener = tokio::net::TcpListener::bind((common::LOCALHOST, 0))
        .await
        .unwrap();
    let handle = server.spawn(listener).unwrap();
    let client = meshd_hbone::Client::new(pki.client.clone(), Default::default()).unwrap();
    let peer = meshd_hbone::Peer::new(pki.server_id.clone(), handle.local_addr());
    let err = client
        .connect(&peer, authority(80), Default::default())
        .await
        .unwrap_err();
    assert_eq!(err, Error::HttpStatus(StatusCode::SERVICE_UNAVAILABLE));
}

// A client certificate from another CA is rejected in the TLS handshake; our client reports
// it as a TLS error before sending any CONNECT.
#[tokio::test]
async fn untrusted_client_is_rejected() {
    let pki = Pki::new();
    let server = spawn_server(&pki.server, Transport::H2, echo(), Default::default()).await;
    let stranger_ca = meshd_identity::DevCa::generate("cluster.local").unwrap();
    let stranger = stranger_ca
        .issue("client-ns", "client-sa", common::TTL)
        .unwrap();
    // The stranger trusts both CAs (its own, to load its SVID; the server's, to accept it), so
    // only the server side can refuse.
    let creds = meshd_identity::Credentials::from_pem(
        stranger.cert_pem.as_bytes(),
        stranger.key_pem.as_bytes(),
    )
    .unwrap();
    let bundle = meshd_identity::TrustBundle::new(
        stranger_ca.trust_domain().clone(),
        vec![pki.ca.root_der().clone(), stranger_ca.root_der().clone()],
    )
    .unwrap();
    let set = meshd_identity::CredentialSet::new(creds, bundle, None).unwrap();
    let client = meshd_hbone::Client::new(
        meshd_identity::IdentityHandle::fixed(set),
        Default::default(),
    )
    .unwrap();
    let peer = meshd_hbone::Peer::new(pki.server_id.clone(), server.local_addr());
    let err = client
        .connect(&peer, authority(80), Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
}

/// Starts a server whose service is `service`, taking the responder itself, on loopback.
async fn responder_server<F, Fut>(pki: &Pki, service: F) -> meshd_hbone::ServerHandle
where
    F: FnMut(meshd_hbone::Inbound) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), std::convert::Infallible>> + Send + 'static,
{
    let server =
        meshd_hbone::Server::new(&pki.server, Default::default(), tower::service_fn(service))
            .unwrap();
    let listener = tokio::net::TcpListener::bind((common::LOCALHOST, 0))
        .await
        .unwrap();
    server.spawn(listener).unwrap()
}

/// Tells a channel when it is dropped.
struct DropSignal(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

// A client that resets its CONNECT while the service is still working on it (dialing the
// upstream, say) cancels the service's future: the work is dropped, not left running.
#[tokio::test]
async fn client_reset_before_the_answer_cancels_the_service() {
    let pki = Pki::new();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    let started = Arc::new(std::sync::Mutex::new(Some((started_tx, dropped_tx))));
    let handle = responder_server(&pki, move |inbound: meshd_hbone::Inbound| {
        let signals = started.lock().unwrap().take();
        async move {
            let (started, dropped) = signals.expect("one request");
            let _guard = DropSignal(Some(dropped));
            let _responder = inbound.responder;
            let _ = started.send(());
            // A dial that never completes.
            std::future::pending::<()>().await;
            Ok(())
        }
    })
    .await;
    let send = raw_client(&pki, handle.local_addr()).await;
    let mut ready = send.ready().await.unwrap();
    let connect = Request::builder()
        .method(Method::CONNECT)
        .uri(authority(80).to_string())
        .body(())
        .unwrap();
    let (_response, mut stream) = ready.send_request(connect, false).unwrap();
    started_rx.await.unwrap();
    stream.send_reset(h2::Reason::CANCEL);
    tokio::time::timeout(Duration::from_secs(10), dropped_rx)
        .await
        .expect("the service kept running after the client reset its CONNECT")
        .unwrap();
}

// A service that ends without answering (it failed, or forgot) refuses with 503: the client
// never waits on, or gets, a tunnel nobody decided on.
#[tokio::test]
async fn an_unanswered_responder_is_503() {
    let pki = Pki::new();
    let handle = responder_server(&pki, |inbound: meshd_hbone::Inbound| async move {
        drop(inbound);
        Ok(())
    })
    .await;
    let mut send = raw_client(&pki, handle.local_addr()).await;
    let connect = Request::builder()
        .method(Method::CONNECT)
        .uri(authority(80).to_string())
        .body(())
        .unwrap();
    assert_eq!(raw_status(&mut send, connect).await, 503);
}
