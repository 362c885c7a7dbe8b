//! The server side: accept mTLS, serve HTTP/2, hand each CONNECT to the caller's service.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::Request;
use meshd_identity::{IdentityHandle, Purpose};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tower::Service;

use crate::admission::{HandshakeBudget, HandshakeTicket, Refusal};
use crate::observe::{NoObserver, Observer, Refused, Stage};
use crate::responder::{Inbound, Responder, reset_before_answer, response};
use crate::revoke::{self, PeerChain};
use crate::service::{BoxError, ConnectService, ConnectionInfo, validate};
use crate::{Error, ServerSettings, Transport, keepalive};

#[cfg(feature = "fuzzing")]
mod fuzzing;

/// After the drain deadline, how long connections get to send their final GOAWAY and close.
const FORCE_GRACE: Duration = Duration::from_secs(1);

/// Where a server is in its life; every connection task watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    /// Stop accepting, GOAWAY everyone, let open streams finish.
    Draining,
    /// The deadline passed: reset what is left.
    Force,
}

/// An HBONE server: TLS and HTTP/2 settings plus the caller's CONNECT service.
pub struct Server {
    identity: IdentityHandle,
    tls: Arc<rustls::ServerConfig>,
    settings: Arc<ServerSettings>,
    service: ConnectService,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server presenting `identity`'s current SVID and handing each valid CONNECT, with its
    /// [`Responder`], to `service`.
    ///
    /// The service is cloned per request (`oneshot`) and runs in the stream's task for the
    /// tunnel's whole life; one that ends or fails without answering answers `503`.
    pub fn new<S>(
        identity: &IdentityHandle,
        settings: ServerSettings,
        service: S,
    ) -> Result<Server, Error>
    where
        S: Service<Inbound, Response = ()> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        settings.validate()?;
        let service = tower::ServiceBuilder::new()
            .map_err(Into::into)
            .service(service);
        Ok(Server {
            identity: identity.clone(),
            tls: meshd_identity::tls::server_config(identity)?,
            settings: Arc::new(settings),
            service: ConnectService::new(service),
            observer: Arc::new(NoObserver),
        })
    }

    /// Tells `observer` about every connection and request refused before the service is
    /// asked (budget, handshake, connection limit, malformed CONNECT).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Server {
        self.observer = observer;
        self
    }

    /// Starts serving HTTP/2 HBONE on `listener` in a background task.
    pub fn spawn(self, listener: TcpListener) -> Result<ServerHandle, Error> {
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::Io(e.to_string()))?;
        let (phase, watch_phase) = watch::channel(Phase::Running);
        let active = Arc::new(AtomicUsize::new(0));
        let budget = self.settings.handshake_budget();
        let task = tokio::spawn(accept_loop(
            listener,
            self,
            watch_phase,
            Arc::clone(&active),
            budget.clone(),
        ));
        Ok(ServerHandle {
            local_addr,
            phase,
            task: Some(task),
            active,
            budget,
        })
    }

    #[cfg(feature = "quic")]
    pub(crate) fn parts(
        self,
    ) -> (
        IdentityHandle,
        Arc<rustls::ServerConfig>,
        Arc<ServerSettings>,
        ConnectService,
        Arc<dyn Observer>,
    ) {
        (
            self.identity,
            self.tls,
            self.settings,
            self.service,
            self.observer,
        )
    }
}

/// Controls a running server; dropping it stops the server abruptly, [`shutdown`] drains it.
///
/// [`shutdown`]: ServerHandle::shutdown
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    phase: watch::Sender<Phase>,
    task: Option<JoinHandle<()>>,
    active: Arc<AtomicUsize>,
    budget: HandshakeBudget,
}

impl ServerHandle {
    #[cfg(feature = "quic")]
    pub(crate) fn from_parts(
        local_addr: SocketAddr,
        phase: watch::Sender<Phase>,
        task: JoinHandle<()>,
        active: Arc<AtomicUsize>,
        budget: HandshakeBudget,
    ) -> ServerHandle {
        ServerHandle {
            local_addr,
            phase,
            task: Some(task),
            active,
            budget,
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections currently held (including ones still in their handshake).
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections still in their TLS handshake (not yet authenticated).
    pub fn handshakes_in_flight(&self) -> usize {
        self.budget.in_flight()
    }

    /// Graceful shutdown: stop accepting, send GOAWAY on every connection, let open streams
    /// finish for up to `deadline`, then reset whatever is left and close.
    pub async fn shutdown(mut self, deadline: Duration) {
        let Some(mut task) = self.task.take() else {
            return;
        };
        self.phase.send_replace(Phase::Draining);
        if tokio::time::timeout(deadline, &mut task).await.is_ok() {
            return;
        }
        self.phase.send_replace(Phase::Force);
        if tokio::time::timeout(FORCE_GRACE, &mut task).await.is_err() {
            task.abort();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the accept loop drops its JoinSet, which aborts every connection.
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    server: Server,
    mut phase: watch::Receiver<Phase>,
    active: Arc<AtomicUsize>,
    budget: HandshakeBudget,
) {
    let limit = Arc::new(Semaphore::new(server.settings.max_connections));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() != Phase::Running {
                    break;
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer_addr)) => {
                    // Closing at once tells the client to go elsewhere or retry, where
                    // queueing would hold its connect open for an unknown time.
                    let ticket = match budget.try_admit(peer_addr.ip()) {
                        Ok(ticket) => ticket,
                        Err(refusal) => {
                            log_refusal(refusal, peer_addr);
                            server.observer.refused(&Refused {
                                stage: Stage::Budget,
                                peer_addr,
                                peer_identity: None,
                                authority: None,
                                transport: Transport::H2,
                                reason: refusal.reason(),
                            });
                            continue;
                        }
                    };
                    let counter = ActiveGuard::new(&active);
                    let conn = ConnectionParts {
                        identity: server.identity.clone(),
                        tls: Arc::clone(&server.tls),
                        settings: Arc::clone(&server.settings),
                        service: server.service.clone(),
                        limit: Arc::clone(&limit),
                        observer: Arc::clone(&server.observer),
                    };
                    let phase = phase.clone();
                    connections.spawn(async move {
                        serve_connection(tcp, peer_addr, conn, phase, ticket).await;
                        drop(counter);
                    });
                }
                Err(e) => {
                    // Usually EMFILE/ENFILE: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "hbone accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Logs a connection closed before its handshake. Per-source refusals are what an abusive host
/// meets, at the rate it connects, so they are not worth a warning each.
pub(crate) fn log_refusal(refusal: Refusal, peer_addr: SocketAddr) {
    match refusal {
        Refusal::Total => tracing::warn!(
            src.addr = %peer_addr,
            "hbone handshake limit reached; closing new connection"
        ),
        Refusal::PerSource => tracing::debug!(
            src.addr = %peer_addr,
            "hbone per-source handshake limit reached; closing new connection"
        ),
    }
}

/// Counts a live connection for [`ServerHandle::active_connections`].
pub(crate) struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    pub(crate) fn new(active: &Arc<AtomicUsize>) -> ActiveGuard {
        active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(active))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits until the phase is at least `target` (or the server is gone).
pub(crate) async fn reached(phase: &mut watch::Receiver<Phase>, target: Phase) {
    let at_least = |p: &Phase| match target {
        Phase::Running => true,
        Phase::Draining => *p != Phase::Running,
        Phase::Force => *p == Phase::Force,
    };
    // An error means the handle is gone, which only happens as the task is aborted.
    let _ = phase.wait_for(at_least).await;
}

/// What one connection task needs from its server.
struct ConnectionParts {
    identity: IdentityHandle,
    tls: Arc<rustls::ServerConfig>,
    settings: Arc<ServerSettings>,
    service: ConnectService,
    /// Places for authenticated connections (`max_connections`).
    limit: Arc<Semaphore>,
    observer: Arc<dyn Observer>,
}

async fn serve_connection(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    server: ConnectionParts,
    mut phase: watch::Receiver<Phase>,
    ticket: HandshakeTicket,
) {
    let settings = &server.settings;
    let Ok(local_addr) = tcp.local_addr() else {
        return;
    };
    crate::client::tune_socket(&tcp);
    let handshake = async {
        let tls = meshd_identity::tls::accept(Arc::clone(&server.tls), tcp)
            .await
            .map_err(|e| Error::tls(peer_addr, &e))?;
        let peer_identity = meshd_identity::tls::peer_identity(tls.get_ref().1)?;
        let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
        let peer_chain = PeerChain::new(certs, Purpose::ClientAuth);
        // Authenticated: from here the connection counts against `max_connections`, not the
        // handshake budget. Over the limit it is closed now, before HTTP/2 is set up.
        drop(ticket);
        let permit =
            Arc::clone(&server.limit)
                .try_acquire_owned()
                .map_err(|_| Error::ConnectionLimit {
                    limit: settings.max_connections,
                })?;
        let conn = h2_builder(settings)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| Error::Http2Handshake {
                addr: peer_addr,
                reason: e.to_string(),
            })?;
        Ok::<_, Error>((peer_identity, peer_chain, conn, permit))
    };
    // The permit is held by the connection from authentication to its end.
    let (peer_identity, peer_chain, conn, _permit) = tokio::select! {
        result = tokio::time::timeout(settings.handshake_timeout, handshake) => match result {
            Ok(Ok(done)) => done,
            Ok(Err(error)) => {
                tracing::warn!(src.addr = %peer_addr, %error, "hbone connection failed");
                let stage = match error {
                    Error::ConnectionLimit { .. } => Stage::ConnectionLimit,
                    _ => Stage::Handshake,
                };
                let reason = error.to_string();
                server.observer.refused(&Refused {
                    stage,
                    peer_addr,
                    peer_identity: None,
                    authority: None,
                    transport: Transport::H2,
                    reason: &reason,
                });
                return;
            }
            Err(_) => {
                tracing::warn!(src.addr = %peer_addr, "hbone handshake timed out");
                server.observer.refused(&Refused {
                    stage: Stage::Handshake,
                    peer_addr,
                    peer_identity: None,
                    authority: None,
                    transport: Transport::H2,
                    reason: "handshake timed out",
                });
                return;
            }
        },
        () = reached(&mut phase, Phase::Draining) => return,
    };
    let info = Arc::new(ConnectionInfo {
        peer_identity,
        peer_addr,
        local_addr,
        transport: Transport::H2,
        observer: Arc::clone(&server.observer),
    });
    serve_http2(conn, info, &peer_chain, server, phase).await;
}

/// Serves an authenticated connection's HTTP/2 until it ends: streams, keepalive, idle timeout,
/// drain and revocation. Generic over the transport so the fuzz seam (`fuzzing` feature) runs
/// this very loop over an in-memory pipe.
async fn serve_http2<IO>(
    mut conn: h2::server::Connection<IO, Bytes>,
    info: Arc<ConnectionInfo>,
    peer_chain: &PeerChain,
    server: ConnectionParts,
    mut phase: watch::Receiver<Phase>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let settings = &server.settings;
    let peer_addr = info.peer_addr;
    let pings = conn.ping_pong();
    let keepalive = async {
        match pings {
            Some(pings) => keepalive::run(pings, settings.keepalive).await,
            None => keepalive::never().await,
        }
    };
    tokio::pin!(keepalive);
    let period =
        (settings.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut idle_check = tokio::time::interval(period);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_since = Instant::now();
    let mut draining = false;
    if *phase.borrow_and_update() != Phase::Running {
        conn.graceful_shutdown();
        draining = true;
    }
    // Revocation (the client's chain stopped verifying): GOAWAY and refuse new streams at once,
    // give open ones the grace period, then reset what is left. Graceful rather than abrupt
    // (ztunnel cuts at once on a CRL revocation) so a rotation that drops a root does not cut
    // transfers mid-byte when they could finish; the grace bounds what a revoked peer keeps.
    let revoked = revoke::revoked(&server.identity, peer_chain);
    tokio::pin!(revoked);
    let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            error = &mut revoked, if grace.is_none() => {
                tracing::warn!(src.addr = %peer_addr, src.identity = %info.peer_identity, %error,
                    "client certificate no longer verifies; closing hbone connection");
                if !draining {
                    conn.graceful_shutdown();
                    draining = true;
                }
                grace = Some(Box::pin(tokio::time::sleep(settings.revocation_grace)));
            }
            () = sleep_opt(&mut grace) => {
                conn.abrupt_shutdown(Reason::NO_ERROR);
                streams.abort_all();
                break;
            }
            changed = phase.changed() => {
                // A closed channel means the handle is gone: treat it as the deadline.
                let now = if changed.is_err() { Phase::Force } else { *phase.borrow_and_update() };
                if now == Phase::Force {
                    conn.abrupt_shutdown(Reason::NO_ERROR);
                    streams.abort_all();
                    break;
                }
                if now == Phase::Draining && !draining {
                    // GOAWAY: in-flight streams continue, new ones are refused.
                    conn.graceful_shutdown();
                    draining = true;
                }
            }
            error = &mut keepalive => {
                tracing::warn!(src.addr = %peer_addr, %error, "hbone keepalive failed; closing connection");
                conn.abrupt_shutdown(Reason::NO_ERROR);
                streams.abort_all();
                break;
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {
                if streams.is_empty() {
                    idle_since = Instant::now();
                }
            }
            _ = idle_check.tick(), if !draining => {
                if streams.is_empty() && idle_since.elapsed() >= settings.idle_timeout {
                    tracing::debug!(src.addr = %peer_addr, "closing idle hbone connection");
                    conn.graceful_shutdown();
                    draining = true;
                }
            }
            next = conn.accept() => match next {
                Some(Ok((_, mut respond))) if grace.is_some() => {
                    // Sent before our GOAWAY reached the client: not processed, safe to retry
                    // elsewhere, and never served under a revoked certificate.
                    respond.send_reset(Reason::REFUSED_STREAM);
                }
                Some(Ok((request, respond))) => {
                    streams.spawn(serve_stream(request, respond, Arc::clone(&info), server.service.clone()));
                }
                Some(Err(error)) => {
                    tracing::debug!(src.addr = %peer_addr, %error, "hbone connection ended with an error");
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
    tokio::select! {
        () = async { while streams.join_next().await.is_some() {} } => {}
        () = reached(&mut phase, Phase::Force) => streams.abort_all(),
    }
}

/// Waits for `sleep` if there is one, else forever.
pub(crate) async fn sleep_opt(sleep: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match sleep {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
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

fn h2_builder(settings: &ServerSettings) -> h2::server::Builder {
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
