//! The HTTP/3 server: a quinn endpoint feeding the same CONNECT service as HTTP/2, through
//! the same [`lifecycle`] (admission, handshake reports, idle, drain, revocation).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::StatusCode;
use meshd_identity::Purpose;
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::stream::{H3Io, RecvHalf, SendHalf};
use super::{ALPN_H3, h3_error, handshake_error, peer_chain, transport_config};
use crate::admission::HandshakeTicket;
use crate::peer::Transport;
use crate::request::{ConnectionInfo, response, validate};
use crate::responder::{ConnectService, H3Answer, Inbound, Responder};
use crate::revoke::PeerChain;
use crate::server::lifecycle::{self, Admission, FORCE_GRACE, Lifecycle, Phase, Step};
use crate::server::{Server, ServerHandle};
use crate::stream::TunnelStream;
use crate::{Error, ServerSettings};

impl Server {
    /// Starts serving HBONE over HTTP/3 on UDP `addr` (experimental; meshd peers only).
    pub fn spawn_quic(self, addr: SocketAddr) -> Result<ServerHandle, Error> {
        let config = quic_config(&self.tls, &self.settings)?;
        let endpoint = quinn::Endpoint::server(config, addr)
            .map_err(|e| Error::io("binding the QUIC endpoint", e))?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| Error::io("reading the QUIC endpoint's address", e))?;
        let admission = Admission::new(&self.settings, Arc::clone(&self.observer), Transport::H3);
        let accepting = admission.clone();
        Ok(ServerHandle::start(local_addr, admission, move |phase| {
            accept_loop(endpoint, local_addr, self, phase, accepting)
        }))
    }
}

/// The endpoint's configuration for a TLS configuration (an identity's).
fn quic_config(
    tls: &rustls::ServerConfig,
    settings: &ServerSettings,
) -> Result<quinn::ServerConfig, Error> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![ALPN_H3.to_vec()];
    let crypto = QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|e| Error::QuicConfig(crate::Cause::new(e)))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(
        &settings.http2,
        settings.keepalive,
        settings.max_concurrent_streams,
    )));
    Ok(config)
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    server: Server,
    mut phase: watch::Receiver<Phase>,
    admission: Admission,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = lifecycle::reached(&mut phase, Phase::Draining) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                // A UDP source address is whatever the sender wrote until it is validated, so
                // every new source first gets a stateless Retry (one round trip per connection,
                // which a pooled connection pays once): a spoofed flood then costs no state,
                // and the per-source budget below counts addresses that can answer.
                if !incoming.remote_address_validated() {
                    // `may_retry` is guaranteed for an unvalidated address, so this cannot fail.
                    let _ = incoming.retry();
                    continue;
                }
                let Some(admitted) = admission.admit(incoming.remote_address()) else {
                    incoming.refuse();
                    continue;
                };
                let conn = Parts {
                    identity: server.identity.clone(),
                    identities: Arc::clone(&server.identities),
                    endpoint_addr: local_addr,
                    settings: Arc::clone(&server.settings),
                    service: server.service.clone(),
                    admission: admission.clone(),
                };
                let phase = phase.clone();
                connections.spawn(async move {
                    let lifecycle::Admitted { ticket, active } = admitted;
                    serve_connection(incoming, conn, phase, ticket).await;
                    drop(active);
                });
            }
        }
    }
    // Refuse new connections from now on; existing ones drain on their own.
    endpoint.set_server_config(None);
    tokio::select! {
        () = async { while connections.join_next().await.is_some() {} } => {}
        () = lifecycle::reached(&mut phase, Phase::Force) => {}
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    connections.abort_all();
}

/// What one connection task needs from its server.
struct Parts {
    identity: meshd_identity::IdentityHandle,
    identities: Arc<crate::server::Identities>,
    endpoint_addr: SocketAddr,
    settings: Arc<ServerSettings>,
    service: ConnectService,
    admission: Admission,
}

async fn serve_connection(
    incoming: quinn::Incoming,
    parts: Parts,
    mut phase: watch::Receiver<Phase>,
    ticket: HandshakeTicket,
) {
    let Parts {
        identity,
        identities,
        endpoint_addr,
        settings,
        service,
        admission,
    } = parts;
    let peer_addr = incoming.remote_address();
    let arrived_on = incoming.local_ip();
    // As over TCP, the certificate is the one of the workload whose address the client
    // dialed; the endpoint's own configuration holds the default identity.
    let local_ip = arrived_on.unwrap_or(endpoint_addr.ip());
    let (identity, chosen) = match identities.for_local(local_ip) {
        Ok(Some((chosen, tls))) if chosen.current().id() != identity.current().id() => {
            match quic_config(&tls, &settings) {
                Ok(config) => (chosen, Some(Arc::new(config))),
                Err(error) => {
                    tracing::warn!(src.addr = %peer_addr, %error, "no QUIC configuration for the local address");
                    incoming.refuse();
                    return;
                }
            }
        }
        Ok(_) => (identity, None),
        Err(error) => {
            tracing::warn!(src.addr = %peer_addr, %error, "no TLS configuration for the local address");
            incoming.refuse();
            return;
        }
    };
    let local_identity = identity.current().id().clone();
    let handshake = async {
        let accepted = match chosen {
            Some(config) => incoming.accept_with(config),
            None => incoming.accept(),
        };
        let conn = accepted
            .map_err(|e| handshake_error(peer_addr, e))?
            .await
            .map_err(|e| handshake_error(peer_addr, e))?;
        let certs = peer_chain(&conn);
        let leaf = certs
            .first()
            .ok_or(Error::Identity(meshd_identity::Error::NoPeerCertificate))?;
        let id = meshd_identity::x509::inspect_leaf(leaf)?.id;
        let chain = PeerChain::new(&certs, Purpose::ClientAuth);
        let permit = match admission.authenticated(ticket) {
            Ok(permit) => permit,
            Err(error) => {
                conn.close(quinn::VarInt::from_u32(0), b"connection limit");
                return Err(error);
            }
        };
        let h3 = h3::server::builder()
            .max_field_section_size(u64::from(settings.http2.max_header_list_size))
            .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| Error::Http2Handshake {
                addr: peer_addr,
                source: crate::Cause::new(e),
            })?;
        Ok::<_, Error>((conn, id, chain, h3, permit))
    };
    let timeout = settings.handshake_timeout;
    // The permit is held by the connection from authentication to its end.
    let Some((conn, peer_identity, peer_chain, mut h3, _permit)) =
        lifecycle::handshake(&admission, timeout, peer_addr, &mut phase, handshake).await
    else {
        return;
    };
    let local_ip = conn.local_ip().or(arrived_on).unwrap_or(endpoint_addr.ip());
    let info = Arc::new(ConnectionInfo {
        peer_identity,
        peer_addr,
        local_addr: SocketAddr::new(local_ip, endpoint_addr.port()),
        local_identity,
        transport: Transport::H3,
        observer: Arc::clone(&admission.observer),
    });
    let life = Lifecycle::new(
        &settings,
        Transport::H3,
        (peer_addr, info.peer_identity.clone()),
        identity,
        peer_chain,
        phase,
    );
    if serve_h3(&mut h3, life, info, service).await == Step::Drained {
        // quinn drops what is still unsent when a connection closes: give the last streams'
        // final bytes time to reach the client (it may close first), as HTTP/2 does.
        let _ = tokio::time::timeout(FORCE_GRACE, conn.closed()).await;
    }
    conn.close(quinn::VarInt::from_u32(0), b"");
}

/// Serves an authenticated connection's requests until it ends, turning the lifecycle's steps
/// into HTTP/3: GOAWAY, and the end once drained (h3 does not close one on its own). Returns
/// how it ended: [`Step::Drained`], or [`Step::Close`] for anything abrupt.
async fn serve_h3(
    h3: &mut h3::server::Connection<h3_quinn::Connection, Bytes>,
    mut life: Lifecycle,
    info: Arc<ConnectionInfo>,
    service: ConnectService,
) -> Step {
    let ended = loop {
        tokio::select! {
            step = life.next() => match step {
                Step::GoAway => {
                    let _ = h3.shutdown(0).await;
                }
                Step::Drained => break Step::Drained,
                Step::Close => break Step::Close,
            },
            next = h3.accept() => match next {
                // Dropping the resolver refuses a request sent before our GOAWAY arrived.
                Ok(Some(_)) if life.refusing() => {}
                Ok(Some(resolver)) => {
                    life.spawn(serve_stream(resolver, Arc::clone(&info), service.clone()));
                }
                Ok(None) | Err(_) => break Step::Close,
            },
        }
    };
    life.abort_streams();
    ended
}

/// A server-side HTTP/3 request stream, as the responder holds it.
type ServerRequestStream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Answers one CONNECT: validates it, then runs the caller's service on it in this task.
async fn serve_stream(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    info: Arc<ConnectionInfo>,
    service: ConnectService,
) {
    let Ok((request, stream)) = resolver.resolve_request().await else {
        return;
    };
    let authority = request.uri().authority().map(|a| a.as_str());
    match validate(&info, request.method(), authority, request.headers()) {
        Err(status) => refuse(stream, status).await,
        Ok(request) => {
            let inbound = Inbound {
                request,
                responder: Responder::h3(Box::new(stream)),
            };
            if let Err(error) = tower::ServiceExt::oneshot(service, inbound).await {
                tracing::warn!(src.addr = %info.peer_addr, %error, "connect service failed");
            }
        }
    }
}

impl H3Answer for ServerRequestStream {
    fn accept(self: Box<Self>) -> BoxFuture<'static, Result<TunnelStream, Error>> {
        Box::pin(accept(*self))
    }

    fn refuse(self: Box<Self>, status: StatusCode) -> BoxFuture<'static, ()> {
        Box::pin(refuse(*self, status))
    }
}

/// Sends `200` and turns the request stream into a tunnel.
async fn accept(mut stream: ServerRequestStream) -> Result<TunnelStream, Error> {
    stream
        .send_response(response(StatusCode::OK))
        .await
        .map_err(h3_error)?;
    let (send, recv) = stream.split();
    let io = H3Io::new(SendHalf::Server(send), RecvHalf::Server(recv));
    Ok(TunnelStream::h3(Box::new(io)))
}

/// Sends `status` and finishes the stream.
async fn refuse(mut stream: ServerRequestStream, status: StatusCode) {
    if stream.send_response(response(status)).await.is_ok() {
        let _ = stream.finish().await;
    }
}
