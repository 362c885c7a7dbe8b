//! The server's own refusals reach its Observer, one call each, with the stage and reason.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Pki, echo};
use meshd_hbone::{Error, Observer, Refused, Server, ServerSettings, Stage};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// One refusal as seen: stage, reason, peer identity, typed error.
type Seen1 = (Stage, String, Option<String>, Option<Error>);

#[derive(Default)]
struct Seen(Mutex<Vec<Seen1>>);

impl Observer for Seen {
    fn refused(&self, r: &Refused<'_>) {
        self.0.lock().unwrap().push((
            r.stage,
            r.reason.to_string(),
            r.peer_identity.map(ToString::to_string),
            r.error.cloned(),
        ));
    }
}

impl Seen {
    async fn wait(&self, stage: Stage) -> (String, Option<String>) {
        let (reason, id, _) = self.wait_error(stage).await;
        (reason, id)
    }

    async fn wait_error(&self, stage: Stage) -> (String, Option<String>, Option<Error>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((_, reason, id, error)) =
                self.0.lock().unwrap().iter().find(|(s, ..)| *s == stage)
            {
                return (reason.clone(), id.clone(), error.clone());
            }
            assert!(Instant::now() < deadline, "no {stage:?} refusal");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn start(pki: &Pki, seen: Arc<Seen>) -> std::net::SocketAddr {
    let mut service = echo();
    let svc = tower::service_fn(move |req| {
        let fut = service(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = Server::new(
        &pki.server,
        ServerSettings::default(),
        meshd_hbone::Decide(svc),
    )
    .unwrap()
    .with_observer(seen)
    .spawn(listener)
    .unwrap();
    std::mem::forget(handle); // serves until the test process ends
    addr
}

#[tokio::test]
async fn a_failed_tls_handshake_is_observed() {
    // Plain bytes where a TLS ClientHello belongs: refused before authentication.
    let pki = Pki::new();
    let seen = Arc::new(Seen::default());
    let addr = start(&pki, seen.clone()).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let (reason, identity, error) = seen.wait_error(Stage::Handshake).await;
    assert!(reason.starts_with("tls error with 127.0.0.1:"), "{reason}");
    assert_eq!(identity, None, "never authenticated");
    // The typed failure travels with its text, and keeps rustls' error as its cause.
    let Some(Error::Tls { source, .. }) = &error else {
        panic!("expected a TLS error, got {error:?}");
    };
    let io = source.get_ref().downcast_ref::<std::io::Error>();
    assert_eq!(
        io.map(std::io::Error::kind),
        Some(std::io::ErrorKind::InvalidData)
    );
}

#[tokio::test]
async fn a_connect_to_another_address_is_observed_with_the_peer_identity() {
    // Authenticated, but the authority is not this server's address: 400, and observed.
    let pki = Pki::new();
    let seen = Arc::new(Seen::default());
    let addr = start(&pki, seen.clone()).await;
    let tls = meshd_identity::tls::client_config(&pki.client, &pki.server_id).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = meshd_identity::tls::connect(tls, tcp).await.unwrap();
    let (send, conn): (h2::client::SendRequest<bytes::Bytes>, _) =
        h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("127.0.0.2:80")
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let status = response.await.unwrap().status();
    assert_eq!(status, http::StatusCode::BAD_REQUEST);
    let (reason, identity) = seen.wait(Stage::Request).await;
    assert!(reason.starts_with("ip mismatch"), "{reason}");
    assert_eq!(identity, Some(pki.client_id.to_string()));
}
