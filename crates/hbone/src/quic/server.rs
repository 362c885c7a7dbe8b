//! The HTTP/3 server: a quinn endpoint feeding the same CONNECT service as HTTP/2.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use meshd_identity::{IdentityHandle, Purpose};
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::stream::{H3Io, RecvHalf, SendHalf};
use super::{ALPN_H3, handshake_error, peer_chain, transport_config};
use crate::admission::{HandshakeBudget, HandshakeTicket};
use crate::observe::{Observer, Refused, Stage};
use crate::responder::{Inbound, Responder, response};
use crate::revoke::{self, PeerChain};
use crate::server::{ActiveGuard, Phase, log_refusal, reached, sleep_opt};
use crate::service::{ConnectService, ConnectionInfo, validate};
use crate::{Error, Server, ServerHandle, Transport, TunnelStream};

impl Server {
    /// Starts serving HBONE over HTTP/3 on UDP `addr` (experimental; meshd peers only).
    pub fn spawn_quic(self, addr: SocketAddr) -> Result<ServerHandle, Error> {
        let (identity, tls, settings, service, observer) = self.parts();
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![ALPN_H3.to_vec()];
        let crypto =
            QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| Error::Config(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(
            &settings.http2,
            settings.keepalive,
            settings.max_concurrent_streams,
        )));
        let endpoint =
            quinn::Endpoint::server(config, addr).map_err(|e| Error::Io(e.to_string()))?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| Error::Io(e.to_string()))?;
        let (phase, watch_phase) = watch::channel(Phase::Running);
        let active = Arc::new(AtomicUsize::new(0));
        let budget = settings.handshake_budget();
        let task = tokio::spawn(accept_loop(
            endpoint,
            local_addr,
            settings,
            service,
            identity,
            observer,
            watch_phase,
            Arc::clone(&active),
            budget.clone(),
        ));
        Ok(ServerHandle::from_parts(
            local_addr, phase, task, active, budget,
        ))
    }
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename the list
async fn accept_loop(
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    settings: Arc<crate::ServerSettings>,
    service: ConnectService,
    identity: IdentityHandle,
    observer: Arc<dyn Observer>,
    mut phase: watch::Receiver<Phase>,
    active: Arc<AtomicUsize>,
    budget: HandshakeBudget,
) {
    let limit = Arc::new(Semaphore::new(settings.max_connections));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() != Phase::Running {
                    break;
                }
            }
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
                let peer_addr = incoming.remote_address();
                let ticket = match budget.try_admit(peer_addr.ip()) {
                    Ok(ticket) => ticket,
                    Err(refusal) => {
                        log_refusal(refusal, peer_addr);
                        observer.refused(&Refused {
                            stage: Stage::Budget,
                            peer_addr,
                            peer_identity: None,
                            authority: None,
                            transport: Transport::H3,
                            reason: refusal.reason(),
                        });
                        incoming.refuse();
                        continue;
                    }
                };
                let counter = ActiveGuard::new(&active);
                let conn = Parts {
                    identity: identity.clone(),
                    endpoint_addr: local_addr,
                    settings: Arc::clone(&settings),
                    service: service.clone(),
                    limit: Arc::clone(&limit),
                    observer: Arc::clone(&observer),
                };
                let phase = phase.clone();
                connections.spawn(async move {
                    serve_connection(incoming, conn, phase, ticket).await;
                    drop(counter);
                });
            }
        }
    }
    // Refuse new connections from now on; existing ones drain on their own.
    endpoint.set_server_config(None);
    tokio::select! {
        () = async { while connections.join_next().await.is_some() {} } => {}
        () = reached(&mut phase, Phase::Force) => {}
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    connections.abort_all();
}

/// What one connection task needs from its server.
struct Parts {
    identity: IdentityHandle,
    endpoint_addr: SocketAddr,
    settings: Arc<crate::ServerSettings>,
    service: ConnectService,
    /// Places for authenticated connections (`max_connections`).
    limit: Arc<Semaphore>,
    observer: Arc<dyn Observer>,
}

async fn serve_connection(
    incoming: quinn::Incoming,
    parts: Parts,
    mut phase: watch::Receiver<Phase>,
    ticket: HandshakeTicket,
) {
    let Parts {
        identity,
        endpoint_addr,
        settings,
        service,
        limit,
        observer,
    } = parts;
    let peer_addr = incoming.remote_address();
    let arrived_on = incoming.local_ip();
    let handshake = async {
        let conn = incoming
            .accept()
            .map_err(|e| handshake_error(peer_addr, e))?
            .await
            .map_err(|e| handshake_error(peer_addr, e))?;
        let certs = peer_chain(&conn);
        let leaf = certs
            .first()
            .ok_or(Error::Identity(meshd_identity::Error::NoPeerCertificate))?;
        let id = meshd_identity::x509::inspect_leaf(leaf)?.id;
        let chain = PeerChain::new(&certs, Purpose::ClientAuth);
        // Authenticated: counted against `max_connections` from here, as over HTTP/2.
        drop(ticket);
        let Ok(permit) = limit.try_acquire_owned() else {
            conn.close(quinn::VarInt::from_u32(0), b"connection limit");
            return Err(Error::ConnectionLimit {
                limit: settings.max_connections,
            });
        };
        let h3 = h3::server::builder()
            .max_field_section_size(u64::from(settings.http2.max_header_list_size))
            .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| Error::Http2Handshake {
                addr: peer_addr,
                reason: e.to_string(),
            })?;
        Ok::<_, Error>((conn, id, chain, h3, permit))
    };
    // The permit is held by the connection from authentication to its end.
    let (conn, peer_identity, peer_chain, mut h3, _permit) = tokio::select! {
        r = tokio::time::timeout(settings.handshake_timeout, handshake) => match r {
            Ok(Ok(done)) => done,
            Ok(Err(error)) => {
                tracing::warn!(src.addr = %peer_addr, %error, "hbone/h3 connection failed");
                let stage = match error {
                    Error::ConnectionLimit { .. } => Stage::ConnectionLimit,
                    _ => Stage::Handshake,
                };
                let reason = error.to_string();
                observer.refused(&Refused {
                    stage,
                    peer_addr,
                    peer_identity: None,
                    authority: None,
                    transport: Transport::H3,
                    reason: &reason,
                });
                return;
            }
            Err(_) => {
                tracing::warn!(src.addr = %peer_addr, "hbone/h3 handshake timed out");
                observer.refused(&Refused {
                    stage: Stage::Handshake,
                    peer_addr,
                    peer_identity: None,
                    authority: None,
                    transport: Transport::H3,
                    reason: "handshake timed out",
                });
                return;
            }
        },
        () = reached(&mut phase, Phase::Draining) => return,
    };
    let local_ip = conn.local_ip().or(arrived_on).unwrap_or(endpoint_addr.ip());
    let info = Arc::new(ConnectionInfo {
        peer_identity,
        peer_addr,
        local_addr: SocketAddr::new(local_ip, endpoint_addr.port()),
        transport: Transport::H3,
        observer: Arc::clone(&observer),
    });
    let mut streams = JoinSet::new();
    let period =
        (settings.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut idle_check = tokio::time::interval(period);
    let mut idle_since = Instant::now();
    let mut draining = false;
    // As over HTTP/2: once the client's chain stops verifying, GOAWAY and no new requests; open
    // streams get the grace period, then the connection is closed.
    let revoked = revoke::revoked(&identity, &peer_chain);
    tokio::pin!(revoked);
    let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            error = &mut revoked, if grace.is_none() => {
                tracing::warn!(src.addr = %peer_addr, src.identity = %info.peer_identity, %error,
                    "client certificate no longer verifies; closing hbone/h3 connection");
                grace = Some(Box::pin(tokio::time::sleep(settings.revocation_grace)));
                if !draining {
                    draining = true;
                    let _ = h3.shutdown(0).await;
                }
            }
            () = sleep_opt(&mut grace) => break,
            changed = phase.changed() => {
                let now = if changed.is_err() { Phase::Force } else { *phase.borrow_and_update() };
                if now == Phase::Force {
                    break;
                }
                if now == Phase::Draining && !draining {
                    draining = true;
                    let _ = h3.shutdown(0).await;
                }
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {
                if streams.is_empty() {
                    idle_since = Instant::now();
                    if draining {
                        break;
                    }
                }
            }
            _ = idle_check.tick() => {
                if streams.is_empty() && (draining || idle_since.elapsed() >= settings.idle_timeout) {
                    break;
                }
            }
            next = h3.accept() => match next {
                // Dropping the resolver refuses a request sent before our GOAWAY arrived.
                Ok(Some(_)) if grace.is_some() => {}
                Ok(Some(resolver)) => {
                    streams.spawn(serve_stream(resolver, Arc::clone(&info), service.clone()));
                }
                Ok(None) | Err(_) => break,
            },
        }
    }
    streams.abort_all();
    conn.close(quinn::VarInt::from_u32(0), b"");
}

/// A server-side HTTP/3 request stream, as the responder holds it.
pub(crate) type ServerRequestStream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

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
                responder: Responder::h3(stream),
            };
            if let Err(error) = tower::ServiceExt::oneshot(service, inbound).await {
                tracing::warn!(src.addr = %info.peer_addr, %error, "connect service failed");
            }
        }
    }
}

/// Sends `200` and turns the request stream into a tunnel.
pub(crate) async fn accept(mut stream: ServerRequestStream) -> Result<TunnelStream, Error> {
    stream
        .send_response(response(StatusCode::OK))
        .await
        .map_err(|e| Error::Io(format!("http/3 response: {e}")))?;
    let (send, recv) = stream.split();
    let io = H3Io::new(SendHalf::Server(send), RecvHalf::Server(recv));
    Ok(TunnelStream::h3(io, None))
}

/// Sends `status` and finishes the stream.
pub(crate) async fn refuse(mut stream: ServerRequestStream, status: StatusCode) {
    if stream.send_response(response(status)).await.is_ok() {
        let _ = stream.finish().await;
    }
}
