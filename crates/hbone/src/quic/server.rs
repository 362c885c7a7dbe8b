//! The HTTP/3 server: a quinn endpoint feeding the same CONNECT service as HTTP/2.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::stream::{H3Io, RecvHalf, SendHalf};
use super::{ALPN_H3, handshake_error, transport_config};
use crate::server::{ActiveGuard, Phase, reached};
use crate::service::{ConnectService, ConnectionInfo, decide};
use crate::{Error, Server, ServerHandle, Transport, TunnelStream};

impl Server {
    /// Starts serving HBONE over HTTP/3 on UDP `addr` (experimental; meshd peers only).
    pub fn spawn_quic(self, addr: SocketAddr) -> Result<ServerHandle, Error> {
        let (tls, settings, service) = self.parts();
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
        let task = tokio::spawn(accept_loop(
            endpoint,
            local_addr,
            settings,
            service,
            watch_phase,
            Arc::clone(&active),
        ));
        Ok(ServerHandle::from_parts(local_addr, phase, task, active))
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    settings: Arc<crate::ServerSettings>,
    service: ConnectService,
    mut phase: watch::Receiver<Phase>,
    active: Arc<AtomicUsize>,
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
                let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                    incoming.refuse();
                    continue;
                };
                let counter = ActiveGuard::new(&active);
                let (settings, service, phase) = (Arc::clone(&settings), service.clone(), phase.clone());
                connections.spawn(async move {
                    serve_connection(incoming, local_addr, settings, service, phase).await;
                    drop((permit, counter));
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

async fn serve_connection(
    incoming: quinn::Incoming,
    endpoint_addr: SocketAddr,
    settings: Arc<crate::ServerSettings>,
    service: ConnectService,
    mut phase: watch::Receiver<Phase>,
) {
    let peer_addr = incoming.remote_address();
    let arrived_on = incoming.local_ip();
    let handshake = async {
        let conn = incoming
            .accept()
            .map_err(|e| handshake_error(peer_addr, e))?
            .await
            .map_err(|e| handshake_error(peer_addr, e))?;
        let leaf = conn
            .peer_identity()
            .and_then(|any| {
                any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|chain| chain.into_iter().next())
            .ok_or(Error::Identity(meshd_identity::Error::NoPeerCertificate))?;
        let id = meshd_identity::x509::inspect_leaf(&leaf)?.id;
        let h3 = h3::server::builder()
            .max_field_section_size(u64::from(settings.http2.max_header_list_size))
            .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| Error::Http2Handshake {
                addr: peer_addr,
                reason: e.to_string(),
            })?;
        Ok::<_, Error>((conn, id, h3))
    };
    let (conn, peer_identity, mut h3) = tokio::select! {
        r = tokio::time::timeout(settings.handshake_timeout, handshake) => match r {
            Ok(Ok(done)) => done,
            Ok(Err(error)) => {
                tracing::warn!(src.addr = %peer_addr, %error, "hbone/h3 connection failed");
                return;
            }
            Err(_) => return,
        },
        () = reached(&mut phase, Phase::Draining) => return,
    };
    let local_ip = conn.local_ip().or(arrived_on).unwrap_or(endpoint_addr.ip());
    let info = Arc::new(ConnectionInfo {
        peer_identity,
        peer_addr,
        local_addr: SocketAddr::new(local_ip, endpoint_addr.port()),
        transport: Transport::H3,
    });
    let mut streams = JoinSet::new();
    let period =
        (settings.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut idle_check = tokio::time::interval(period);
    let mut idle_since = Instant::now();
    let mut draining = false;
    loop {
        tokio::select! {
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

async fn serve_stream(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    info: Arc<ConnectionInfo>,
    service: ConnectService,
) {
    let Ok((request, mut stream)) = resolver.resolve_request().await else {
        return;
    };
    let authority = request.uri().authority().map(|a| a.as_str());
    match decide(
        service,
        &info,
        request.method(),
        authority,
        request.headers(),
    )
    .await
    {
        Err(status) => {
            if stream.send_response(response(status)).await.is_ok() {
                let _ = stream.finish().await;
            }
        }
        Ok(handler) => {
            if stream
                .send_response(response(StatusCode::OK))
                .await
                .is_err()
            {
                return;
            }
            let (send, recv) = stream.split();
            let io = H3Io::new(SendHalf::Server(send), RecvHalf::Server(recv));
            handler.run(TunnelStream::h3(io, None)).await;
        }
    }
}

fn response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}
