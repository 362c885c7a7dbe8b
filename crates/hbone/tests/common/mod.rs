//! Shared test fixtures: a dev-CA PKI, servers on loopback for either transport, services.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use meshd_hbone::{
    Client, ClientSettings, Decision, InboundRequest, Peer, Server, ServerHandle, ServerSettings,
    Transport, TunnelStream,
};
use meshd_identity::{DevCa, IdentityHandle, SpiffeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub const TTL: Duration = Duration::from_secs(3600);

/// A trust domain with a client and a server identity.
pub struct Pki {
    pub ca: DevCa,
    pub client: IdentityHandle,
    pub client_id: SpiffeId,
    pub server: IdentityHandle,
    pub server_id: SpiffeId,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = DevCa::generate("cluster.local").unwrap();
        let client = ca.issue("client-ns", "client-sa", TTL).unwrap();
        let server = ca.issue("server-ns", "server-sa", TTL).unwrap();
        Pki {
            client_id: client.id.clone(),
            client: IdentityHandle::fixed(client.credential_set().unwrap()),
            server_id: server.id.clone(),
            server: IdentityHandle::fixed(server.credential_set().unwrap()),
            ca,
        }
    }

    /// Another identity from the same CA.
    pub fn handle(&self, ns: &str, sa: &str) -> IdentityHandle {
        IdentityHandle::fixed(
            self.ca
                .issue(ns, sa, TTL)
                .unwrap()
                .credential_set()
                .unwrap(),
        )
    }
}

/// The loopback address servers bind to; authorities must use this IP.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An authority the server accepts (its own IP); the port is what the service would dial.
pub fn authority(port: u16) -> SocketAddr {
    SocketAddr::new(LOCALHOST, port)
}

/// A running server plus a client pointed at it.
pub struct Harness {
    pub pki: Pki,
    pub server: Option<ServerHandle>,
    pub client: Client,
    pub peer: Peer,
}

impl Harness {
    pub async fn start<S, F>(transport: Transport, service: S) -> Harness
    where
        S: FnMut(InboundRequest) -> F + Clone + Send + 'static,
        F: Future<Output = Decision> + Send + 'static,
    {
        Harness::with_settings(
            transport,
            service,
            ServerSettings::default(),
            ClientSettings::default(),
        )
        .await
    }

    pub async fn with_settings<S, F>(
        transport: Transport,
        service: S,
        server_settings: ServerSettings,
        client_settings: ClientSettings,
    ) -> Harness
    where
        S: FnMut(InboundRequest) -> F + Clone + Send + 'static,
        F: Future<Output = Decision> + Send + 'static,
    {
        let pki = Pki::new();
        let server = spawn_server(&pki.server, transport, service, server_settings).await;
        let client = Client::new(pki.client.clone(), client_settings).unwrap();
        let peer = Peer::new(pki.server_id.clone(), server.local_addr()).with_transport(transport);
        Harness {
            pki,
            server: Some(server),
            client,
            peer,
        }
    }

    pub async fn connect(&self, port: u16) -> Result<TunnelStream, meshd_hbone::Error> {
        self.client
            .connect(&self.peer, authority(port), Default::default())
            .await
    }

    pub fn server(&self) -> &ServerHandle {
        self.server.as_ref().unwrap()
    }
}

/// Starts `service` behind an HBONE server on 127.0.0.1:0 over `transport`.
pub async fn spawn_server<S, F>(
    identity: &IdentityHandle,
    transport: Transport,
    mut service: S,
    settings: ServerSettings,
) -> ServerHandle
where
    S: FnMut(InboundRequest) -> F + Clone + Send + 'static,
    F: Future<Output = Decision> + Send + 'static,
{
    let svc = tower::service_fn(move |req| {
        let fut = service(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let server = Server::new(identity, settings, meshd_hbone::Decide(svc)).unwrap();
    match transport {
        Transport::H2 => {
            let listener = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
            server.spawn(listener).unwrap()
        }
        Transport::H3 => quic_spawn(server).await,
    }
}

/// The transports this build has: HTTP/2, and HTTP/3 with the `quic` feature.
pub const TRANSPORTS: &[Transport] = &[
    Transport::H2,
    #[cfg(feature = "quic")]
    Transport::H3,
];

#[cfg(feature = "quic")]
async fn quic_spawn(server: Server) -> ServerHandle {
    server.spawn_quic(SocketAddr::new(LOCALHOST, 0)).unwrap()
}

#[cfg(not(feature = "quic"))]
async fn quic_spawn(_server: Server) -> ServerHandle {
    panic!("HTTP/3 tests need the quic feature")
}

/// A service accepting every tunnel and echoing its bytes.
pub fn echo() -> impl FnMut(InboundRequest) -> std::future::Ready<Decision> + Clone + Send {
    |_req| std::future::ready(Decision::accept(echo_stream))
}

/// Echoes until EOF, then half-closes.
pub async fn echo_stream(mut stream: TunnelStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = stream.shutdown().await;
}

/// A service that accepts and passes every tunnel (with its request) to the test.
pub fn forward(
    tx: mpsc::UnboundedSender<(InboundRequest, TunnelStream)>,
) -> impl FnMut(InboundRequest) -> std::future::Ready<Decision> + Clone + Send {
    move |req: InboundRequest| {
        let tx = tx.clone();
        std::future::ready(Decision::accept(move |stream| async move {
            let _ = tx.send((req, stream));
            // The test owns the stream now; this handler's task just ends.
        }))
    }
}

/// Short keepalive and timeouts so failure paths finish quickly.
pub fn fast_client() -> ClientSettings {
    ClientSettings {
        handshake_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        ..ClientSettings::default()
    }
}
