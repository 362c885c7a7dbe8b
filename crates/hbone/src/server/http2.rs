//! HBONE over HTTP/2: accept mTLS on TCP, serve HTTP/2, hand each CONNECT to the caller's
//! service. Admission, handshake reports, idle, drain and revocation are the shared
//! [`lifecycle`]'s; this file turns its steps into HTTP/2 frames.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::Request;
use meshd_identity::Purpose;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::Service as _;

use super::lifecycle::{self, Admission, FORCE_GRACE, Lifecycle, Phase, Step};
use super::{Server, ServerHandle};
use crate::peer::Transport;
use crate::request::{ConnectionInfo, response, validate};
use crate::responder::{ConnectService, Inbound, Responder, reset_before_answer};
use crate::revoke::PeerChain;
use crate::{Error, ServerSettings, keepalive, socket};

/// Back-off after a failed accept (usually EMFILE/ENFILE), instead of spinning on the error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

impl Server {
    /// Starts serving HTTP/2 HBONE on `listener` in a background task.
    pub fn spawn(self, listener: TcpListener) -> Result<ServerHandle, Error> {
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the listener's address", e))?;
        let admission = Admission::new(&self.settings, Arc::clone(&self.observer), Transport::H2);
        let accepting = admission.clone();
        Ok(ServerHandle::start(local_addr, admission, move |phase| {
            accept_loop(listener, self, phase, accepting)
        }))
    }
}

async fn accept_loop(
    listener: TcpListener,
    server: Server,
    mut phase: watch::Receiver<Phase>,
    admission: Admission,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = lifecycle::reached(&mut phase, Phase::Draining) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer_addr)) => {
                    let Some(admitted) = admission.admit(peer_addr) else {
                        continue;
                    };
                    let conn = ConnectionParts {
                        server: server.share(),
                        admission: admission.clone(),
                    };
                    let phase = phase.clone();
                    connections.spawn(async move {
                        let lifecycle::Admitted { ticket, active } = admitted;
                        serve_connection(tcp, peer_addr, conn, phase, ticket).await;
                        drop(active);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "hbone accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

impl Server {
    /// What one connection task needs: the server's parts, shared.
    pub(super) fn share(&self) -> Server {
        Server {
            identity: self.identity.clone(),
            tls: Arc::clone(&self.tls),
            identities: Arc::clone(&self.identities),
            settings: Arc::clone(&self.settings),
            service: self.service.clone(),
            observer: Arc::clone(&self.observer),
        }
    }
}

/// What one connection task needs from its server.
pub(super) struct ConnectionParts {
    pub(super) server: Server,
    pub(super) admission: Admission,
}

async fn serve_connection(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    mut parts: ConnectionParts,
    mut phase: watch::Receiver<Phase>,
    ticket: crate::admission::HandshakeTicket,
) {
    let Ok(local_addr) = tcp.local_addr() else {
        return;
    };
    // The certificate is the one of the workload whose address the client dialed.
    match parts.server.identities.for_local(local_addr.ip()) {
        Ok(Some((identity, tls))) => (parts.server.identity, parts.server.tls) = (identity, tls),
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(src.addr = %peer_addr, dst.addr = %local_addr, %error,
                "no TLS configuration for the local address; closing hbone connection");
            return;
        }
    }
    let settings = &parts.server.settings;
    socket::tune(&tcp);
    let handshake = async {
        let tls = meshd_identity::tls::accept(Arc::clone(&parts.server.tls), tcp)
            .await
            .map_err(|e| Error::tls(peer_addr, e))?;
        let peer_identity = meshd_identity::tls::peer_identity(tls.get_ref().1)?;
        let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
        let peer_chain = PeerChain::new(certs, Purpose::ClientAuth);
        let permit = parts.admission.authenticated(ticket)?;
        let conn = h2_builder(settings)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| Error::Http2Handshake {
                addr: peer_addr,
                source: crate::Cause::new(e),
            })?;
        Ok::<_, Error>((peer_identity, peer_chain, conn, permit))
    };
    let timeout = settings.handshake_timeout;
    // The permit is held by the connection from authentication to its end.
    let Some((peer_identity, peer_chain, conn, _permit)) =
        lifecycle::handshake(&parts.admission, timeout, peer_addr, &mut phase, handshake).await
    else {
        return;
    };
    let info = Arc::new(ConnectionInfo {
        peer_identity,
        peer_addr,
        local_addr,
        local_identity: parts.server.identity.current().id().clone(),
        transport: Transport::H2,
        observer: Arc::clone(&parts.server.observer),
    });
    serve_http2(conn, info, peer_chain, parts.server, phase).await;
}

/// Serves an authenticated connection's HTTP/2 until it ends: streams, keepalive, and the
/// lifecycle's steps. Generic over the transport so the fuzz seam (`fuzzing` feature) runs
/// this very loop over an in-memory pipe.
pub(super) async fn serve_http2<IO>(
    mut conn: h2::server::Connection<IO, Bytes>,
    info: Arc<ConnectionInfo>,
    peer_chain: PeerChain,
    server: Server,
    phase: watch::Receiver<Phase>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let settings = Arc::clone(&server.settings);
    let pings = conn.ping_pong();
    let keepalive = async {
        match pings {
            Some(pings) => keepalive::run(pings, settings.keepalive).await,
            None => keepalive::never().await,
        }
    };
    tokio::pin!(keepalive);
    let mut life = Lifecycle::new(
        &settings,
        Transport::H2,
        (info.peer_addr, info.peer_identity.clone()),
        server.identity.clone(),
        peer_chain,
        phase,
    );
    loop {
        tokio::select! {
            step = life.next() => match step {
                // In-flight streams continue, new ones are refused; h2 ends `accept` once the
                // last one is done.
                Step::GoAway => conn.graceful_shutdown(),
                Step::Drained => {}
                Step::Close => {
                    conn.abrupt_shutdown(Reason::NO_ERROR);
                    life.abort_streams();
                    break;
                }
            },
            error = &mut keepalive => {
                tracing::warn!(src.addr = %info.peer_addr, %error, "hbone keepalive failed; closing connection");
                conn.abrupt_shutdown(Reason::NO_ERROR);
                life.abort_streams();
                break;
            }
            next = conn.accept() => match next {
                Some(Ok((_, mut respond))) if life.refusing() => {
                    // Sent before our GOAWAY reached the client: not processed, safe to retry
                    // elsewhere, and never served under a revoked certificate.
                    respond.send_reset(Reason::REFUSED_STREAM);
                }
                Some(Ok((request, respond))) => {
                    life.spawn(serve_stream(request, respond, Arc::clone(&info), server.service.clone()));
                }
                Some(Err(error)) => {
                    tracing::debug!(src.addr = %info.peer_addr, %error, "hbone connection ended with an error");
                    break;
                }
                None => break,
            },
        }
    }
    // Let h2 write its final frames and close TLS (close_notify) rather than vanishing.
    let _ = tokio::time::timeout(FORCE_GRACE, poll_fn(|cx| conn.poll_closed(cx))).await;
    drop(conn);
    // Stream tasks end on their own once their connection is gone; a forced stop aborts them.
    life.finish().await;
}

/// Answers one CONNECT: validates it, then runs the caller's service on it in this task.
///
/// Validation and the service call happen before the task's future is built, so the future
/// (what every open tunnel costs for its lifetime) holds the service's future and the stream's
/// answer, not the request it was made from.
fn serve_stream(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    info: Arc<ConnectionInfo>,
    mut service: ConnectService,
) -> impl Future<Output = ()> + Send + 'static {
    let (parts, body) = request.into_parts();
    let authority = parts.uri.authority().map(|a| a.as_str());
    let validated = validate(&info, &parts.method, authority, &parts.headers);
    drop(parts);
    let served = match validated {
        Ok(request) => {
            let respond = Arc::new(std::sync::Mutex::new(Some(respond)));
            let inbound = Inbound {
                request,
                responder: Responder::h2(Arc::clone(&respond), body),
            };
            // meshd's services are always ready; one that is not waits in a boxed future.
            let served = match tower::ServiceExt::ready(&mut service).now_or_never() {
                Some(Ok(ready)) => ready.call(inbound),
                Some(Err(error)) => Box::pin(std::future::ready(Err(error))),
                None => Box::pin(async move {
                    tower::ServiceExt::ready(&mut service)
                        .await?
                        .call(inbound)
                        .await
                }),
            };
            Some((served, respond))
        }
        Err(status) => {
            // END_STREAM on the response head; h2 follows with RST_STREAM(NO_ERROR) for the
            // unread request side, as ztunnel's wire trace shows.
            let _ = respond.send_response(response(status), true);
            None
        }
    };
    async move {
        let Some((served, respond)) = served else {
            return;
        };
        // A client that gives up (RST_STREAM) before the answer cancels the service's future:
        // its authorization and its upstream dial.
        tokio::select! {
            served = served => {
                if let Err(error) = served {
                    tracing::warn!(src.addr = %info.peer_addr, %error, "connect service failed");
                }
            }
            () = reset_before_answer(&respond) => {
                tracing::debug!(src.addr = %info.peer_addr, "client reset the CONNECT before it was answered");
            }
        }
    }
}

pub(super) fn h2_builder(settings: &ServerSettings) -> h2::server::Builder {
    let h = &settings.http2;
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(h.stream_window)
        .initial_connection_window_size(h.connection_window)
        .max_frame_size(h.max_frame_size)
        .max_header_list_size(h.max_header_list_size)
        .max_send_buffer_size(h.max_send_buffer)
        .max_concurrent_streams(settings.max_concurrent_streams);
    builder
}
