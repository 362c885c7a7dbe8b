//! The HBONE server fed arbitrary HTTP/2 from an authenticated client.
//!
//! The seam is `Server::serve_authenticated` (meshd-hbone's `fuzzing` feature): the server's own
//! HTTP/2 loop, CONNECT checks, header parsing, service call and tunnel, over an in-memory pipe
//! with the identity a TLS handshake would have verified (a client SVID from a dev CA made at
//! start). A TLS handshake per input would cost ~2 ms of signatures and spend the fuzzer's time
//! in aws-lc; past the handshake TLS only carries bytes. The input is what the client sends after
//! the connection preface (prepended here), then it closes its side.
//!
//! Properties checked besides "no panic": every request the service sees is a CONNECT to the
//! address the connection arrived on (the open-relay guard), the optional headers round-trip
//! through their own printers, and the server ends once the client has gone.

use std::net::SocketAddr;
use std::time::Duration;

use meshd_hbone::{Decision, InboundRequest, Refusal, Server, ServerSettings, TunnelStream};
use meshd_identity::{DevCa, IdentityHandle, pem};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The address the fuzzed connection arrived on: authorities must name its IP.
pub const LOCAL_ADDR: &str = "127.0.0.1:15008";
const PEER_ADDR: &str = "10.0.0.1:40000";

struct Fixture {
    rt: tokio::runtime::Runtime,
    server: Server,
    peer_chain: Vec<CertificateDer<'static>>,
}

fn fixture() -> Fixture {
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! { panic!("fixture {what}: {e}") };
    let ca = DevCa::generate("cluster.local").unwrap_or_else(|e| fail("CA", &e));
    let day = Duration::from_secs(86_400);
    let server_svid = ca
        .issue("shop", "db", day)
        .unwrap_or_else(|e| fail("server SVID", &e));
    let client_svid = ca
        .issue("shop", "web", day)
        .unwrap_or_else(|e| fail("client SVID", &e));
    let set = server_svid
        .credential_set()
        .unwrap_or_else(|e| fail("credential set", &e));
    let peer_chain = pem::parse_certificates(client_svid.cert_pem.as_bytes())
        .unwrap_or_else(|e| fail("client chain", &e));
    let service = tower::service_fn(|request: InboundRequest| async move {
        Ok::<_, std::convert::Infallible>(decide(&request))
    });
    let server = Server::new(
        &IdentityHandle::fixed(set),
        ServerSettings::default(),
        meshd_hbone::Decide(service),
    )
    .unwrap_or_else(|e| fail("server", &e));
    Fixture {
        rt: crate::runtime(),
        server,
        peer_chain,
    }
}

/// The caller's service: checks what the server promises it, then answers by port so every
/// answer the server knows how to send is reached.
fn decide(request: &InboundRequest) -> Decision {
    let local: SocketAddr = LOCAL_ADDR.parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(request.local_addr, local);
    assert_eq!(
        request.authority.ip(),
        local.ip(),
        "the server let a tunnel lead elsewhere than where it arrived"
    );
    let headers = &request.headers;
    if let Some(forwarded) = &headers.forwarded {
        assert_eq!(
            forwarded.to_string().parse().ok().as_ref(),
            Some(forwarded),
            "forwarded round trip"
        );
    }
    if let Some(trace) = &headers.traceparent {
        assert_eq!(
            trace.to_string().parse().ok().as_ref(),
            Some(trace),
            "traceparent round trip"
        );
    }
    match request.authority.port() % 4 {
        0 => Decision::refuse(Refusal::Denied),
        1 => Decision::refuse(Refusal::Status(
            http::StatusCode::from_u16(100 + request.authority.port() % 500)
                .unwrap_or(http::StatusCode::IM_A_TEAPOT),
        )),
        _ => Decision::accept(echo),
    }
}

/// The tunnel's far end: sends back what arrives, then half-closes.
async fn echo(stream: TunnelStream) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let _ = tokio::io::copy(&mut reader, &mut writer).await;
    let _ = writer.shutdown().await;
}

thread_local! {
    static FIXTURE: Fixture = fixture();
}

/// Serves one input; panics if the server does, breaks a property above, or outlives its client.
pub fn run(data: &[u8]) {
    FIXTURE.with(|f| {
        let (client, server_io) = tokio::io::duplex(64 * 1024);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let peer: SocketAddr = PEER_ADDR.parse().unwrap_or_else(|e| panic!("{e}"));
        let local: SocketAddr = LOCAL_ADDR.parse().unwrap_or_else(|e| panic!("{e}"));
        f.rt.block_on(async {
            let serve = f
                .server
                .serve_authenticated(server_io, &f.peer_chain, peer, local);
            let send = async {
                let _ = to_server.write_all(PREFACE).await;
                let _ = to_server.write_all(data).await;
                let _ = to_server.shutdown().await;
            };
            let receive = async {
                let mut sink = Vec::new();
                let _ = from_server.read_to_end(&mut sink).await;
            };
            // Time is paused: this is virtual time, reached only if the server waits on a timer
            // long after its client has gone.
            let all = async { tokio::join!(serve, send, receive) };
            if tokio::time::timeout(Duration::from_secs(600), all)
                .await
                .is_err()
            {
                panic!("the server still held the connection 10 minutes after its client left");
            }
        });
    });
}
