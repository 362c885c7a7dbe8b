//! HBONE over HTTP/3 on QUIC: experimental, meshd-to-meshd only (no Istio component speaks it).
//!
//! Same CONNECT semantics, headers, status codes and identity checks as the HTTP/2 transport;
//! QUIC over UDP on the same port number, TLS 1.3 with the same SVIDs and verifiers, ALPN `h3`
//! (the identity crate's configs are cloned with ALPN changed). Differences, all from h3 0.0.8:
//! - its client adds `:scheme https` and `:path /` to CONNECT (RFC 9114 §4.4 says omit them;
//!   fixed upstream, unreleased); our server accepts both forms;
//! - sends are async-only, so a write is accepted into a one-write buffer (at most
//!   [`MAX_WRITE`]) and completed on the next write, flush or shutdown;
//! - a certificate rejection reaches us as text only: [`Error::Tls`] has `identity: None`.
//!
//! Keepalive is QUIC's (PING every interval, idle timeout = keepalive timeout); the client keeps
//! one QUIC connection per pool key (QUIC multiplexes without head-of-line blocking and enforces
//! its own stream limits) until it fails.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use http::{Method, Request, Response, StatusCode};
use meshd_identity::{IdentityHandle, SpiffeId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::io::ReadBuf;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;

use crate::headers::{RequestHeaders, authority_string};
use crate::server::{ActiveGuard, Phase, reached};
use crate::service::{ConnectService, ConnectionInfo, decide};
use crate::{
    ClientSettings, Error, Http2Settings, Keepalive, Peer, Server, ServerHandle, Transport,
    TunnelStream,
};

/// ALPN for HTTP/3.
const ALPN_H3: &[u8] = b"h3";

/// Largest single write taken into the one-write send buffer.
const MAX_WRITE: usize = 256 * 1024;

type ClientSend = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type ClientRecv = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;
type ServerSend = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type ServerRecv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

enum SendHalf {
    Client(ClientSend),
    Server(ServerSend),
}

impl SendHalf {
    async fn send(&mut self, data: Bytes) -> Result<(), StreamError> {
        match self {
            SendHalf::Client(s) => s.send_data(data).await,
            SendHalf::Server(s) => s.send_data(data).await,
        }
    }

    async fn finish(&mut self) -> Result<(), StreamError> {
        match self {
            SendHalf::Client(s) => s.finish().await,
            SendHalf::Server(s) => s.finish().await,
        }
    }

    fn reset(&mut self) {
        match self {
            SendHalf::Client(s) => s.stop_stream(Code::H3_REQUEST_CANCELLED),
            SendHalf::Server(s) => s.stop_stream(Code::H3_REQUEST_CANCELLED),
        }
    }
}

enum RecvHalf {
    Client(ClientRecv),
    Server(ServerRecv),
}

impl RecvHalf {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
        match self {
            RecvHalf::Client(s) => s
                .poll_recv_data(cx)
                .map_ok(|o| o.map(|mut b| b.copy_to_bytes(b.remaining()))),
            RecvHalf::Server(s) => s
                .poll_recv_data(cx)
                .map_ok(|o| o.map(|mut b| b.copy_to_bytes(b.remaining()))),
        }
    }

    fn stop(&mut self) {
        match self {
            RecvHalf::Client(s) => s.stop_sending(Code::H3_REQUEST_CANCELLED),
            RecvHalf::Server(s) => s.stop_sending(Code::H3_REQUEST_CANCELLED),
        }
    }
}

enum Op {
    Data(Bytes),
    Finish,
}

type SendFuture = Pin<Box<dyn Future<Output = (SendHalf, io::Result<()>)> + Send>>;

/// The HTTP/3 halves of a CONNECT stream, as used by [`TunnelStream`].
pub(crate) struct H3Io {
    // None while an operation owns it.
    send: Option<SendHalf>,
    // The operation in flight, and the handle whose drop cancels it (with a reset).
    inflight: Option<(SendFuture, oneshot::Sender<()>)>,
    recv: RecvHalf,
    pending: Bytes,
    finished: bool,
    eof: bool,
    reset: bool,
}

impl H3Io {
    fn new(send: SendHalf, recv: RecvHalf) -> H3Io {
        H3Io {
            send: Some(send),
            inflight: None,
            recv,
            pending: Bytes::new(),
            finished: false,
            eof: false,
            reset: false,
        }
    }

    /// Hands the send half to a future running `op`, cancellable by dropping its sender.
    fn start(&mut self, op: Op) -> io::Result<()> {
        let Some(mut half) = self.send.take() else {
            return Err(io::Error::other("send already in progress"));
        };
        let (cancel, cancelled) = oneshot::channel::<()>();
        let fut = async move {
            let outcome = {
                let work = async {
                    match op {
                        Op::Data(data) => half.send(data).await,
                        Op::Finish => half.finish().await,
                    }
                };
                tokio::pin!(work);
                tokio::select! {
                    biased;
                    _ = cancelled => None,
                    r = &mut work => Some(r),
                }
            };
            match outcome {
                Some(result) => (half, result.map_err(stream_to_io)),
                None => {
                    half.reset();
                    let e = io::Error::new(io::ErrorKind::ConnectionReset, "stream reset");
                    (half, Err(e))
                }
            }
        };
        self.inflight = Some((Box::pin(fut), cancel));
        Ok(())
    }

    /// Completes the operation in flight, if any.
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((fut, _)) = self.inflight.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let (half, result) = ready!(fut.as_mut().poll(cx));
        self.send = Some(half);
        self.inflight = None;
        Poll::Ready(result)
    }

    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Ok(Some(data)) => self.pending = data,
                Ok(None) => self.eof = true,
                Err(e) => return Poll::Ready(Err(stream_to_io(e))),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }

    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.poll_drive(cx))?;
        if self.finished || self.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown or reset",
            )));
        }
        let n = buf.len().min(MAX_WRITE);
        self.start(Op::Data(Bytes::copy_from_slice(&buf[..n])))?;
        // Start the send now (registering the waker); its result is reported by the next call.
        if let Poll::Ready(Err(e)) = self.poll_drive(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_drive(cx)
    }

    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drive(cx))?;
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        self.start(Op::Finish)?;
        self.finished = true;
        self.poll_drive(cx)
    }

    pub(crate) fn reset(&mut self) {
        self.reset = true;
        if let Some(half) = self.send.as_mut() {
            half.reset();
        }
        if let Some((mut fut, cancel)) = self.inflight.take() {
            // Dropping the sender makes the operation reset the stream on its next poll,
            // which happens here: a cancelled operation completes without waiting.
            drop(cancel);
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready((half, _)) = fut.as_mut().poll(&mut cx) {
                self.send = Some(half);
            }
        }
        self.recv.stop();
    }
}

impl Drop for H3Io {
    fn drop(&mut self) {
        // quinn finishes (FIN) a dropped stream; a tunnel dropped before both directions
        // ended must look like a TCP reset instead, as with HTTP/2.
        let ended_cleanly = self.finished && self.eof && self.inflight.is_none();
        if !self.reset && !ended_cleanly {
            self.reset();
        }
    }
}

fn stream_to_io(e: StreamError) -> io::Error {
    let kind = match &e {
        StreamError::ConnectionError { .. } => io::ErrorKind::ConnectionAborted,
        _ => io::ErrorKind::ConnectionReset,
    };
    io::Error::new(kind, e.to_string())
}

fn transport_config(
    h: &Http2Settings,
    keepalive: Keepalive,
    max_bidi: u32,
) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // The same windows as HTTP/2, for the same reasons (see config.rs).
    t.stream_receive_window(quinn::VarInt::from_u32(h.stream_window));
    t.receive_window(quinn::VarInt::from_u32(h.connection_window));
    t.send_window(u64::from(h.connection_window));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(max_bidi));
    t.keep_alive_interval(Some(keepalive.interval));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(keepalive.timeout).ok());
    t
}

fn h3_error(e: impl std::fmt::Display) -> Error {
    Error::H2(format!("h3: {e}"))
}

/// Maps a failed QUIC handshake; TLS failures travel as CRYPTO_ERROR transport codes.
fn handshake_error(addr: SocketAddr, e: quinn::ConnectionError) -> Error {
    match e {
        quinn::ConnectionError::TransportError(t) if t.code.to_string().contains("crypto") => {
            Error::Tls {
                addr,
                identity: None,
                reason: t.to_string(),
            }
        }
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code.to_string().contains("crypto") =>
        {
            Error::Tls {
                addr,
                identity: None,
                reason: c.to_string(),
            }
        }
        quinn::ConnectionError::TimedOut => Error::Connect {
            addr,
            reason: "QUIC handshake timed out".into(),
        },
        other => Error::Connect {
            addr,
            reason: other.to_string(),
        },
    }
}

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

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// The HTTP/3 side of [`Client`](crate::Client): one QUIC connection per pool key.
pub(crate) struct QuicClient {
    identity: IdentityHandle,
    settings: ClientSettings,
    endpoints: Mutex<HashMap<bool, quinn::Endpoint>>,
    conns: Mutex<HashMap<(SpiffeId, SpiffeId, SocketAddr), Arc<Entry>>>,
}

struct Entry {
    dial: tokio::sync::Mutex<()>,
    conn: Mutex<Option<(quinn::Connection, SendRequest)>>,
}

impl QuicClient {
    pub(crate) fn new(identity: IdentityHandle, settings: ClientSettings) -> QuicClient {
        QuicClient {
            identity,
            settings,
            endpoints: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) async fn connect(
        &self,
        peer: &Peer,
        authority: SocketAddr,
        headers: &RequestHeaders,
    ) -> Result<TunnelStream, Error> {
        let mut send = self.checkout(peer).await?;
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority_string(authority))
            .body(())
            .map_err(|e| Error::Config(e.to_string()))?;
        headers.write_to(request.headers_mut());
        let mut stream = send.send_request(request).await.map_err(h3_error)?;
        let response = stream.recv_response().await.map_err(h3_error)?;
        if response.status() != StatusCode::OK {
            return Err(Error::HttpStatus(response.status()));
        }
        let (send, recv) = stream.split();
        let io = H3Io::new(SendHalf::Client(send), RecvHalf::Client(recv));
        Ok(TunnelStream::h3(io, None))
    }

    async fn checkout(&self, peer: &Peer) -> Result<SendRequest, Error> {
        let key = (
            self.identity.current().id().clone(),
            peer.identity.clone(),
            peer.addr,
        );
        let entry = {
            let mut conns = lock(&self.conns);
            Arc::clone(conns.entry(key).or_insert_with(|| {
                Arc::new(Entry {
                    dial: tokio::sync::Mutex::new(()),
                    conn: Mutex::new(None),
                })
            }))
        };
        let live = |entry: &Entry| {
            lock(&entry.conn)
                .as_ref()
                .filter(|(quic, _)| quic.close_reason().is_none())
                .map(|(_, send)| send.clone())
        };
        if let Some(send) = live(&entry) {
            return Ok(send);
        }
        let _dialing = entry.dial.lock().await;
        if let Some(send) = live(&entry) {
            return Ok(send);
        }
        let (quic, send) = self.dial(peer).await?;
        *lock(&entry.conn) = Some((quic, send.clone()));
        Ok(send)
    }

    async fn dial(&self, peer: &Peer) -> Result<(quinn::Connection, SendRequest), Error> {
        let addr = peer.addr;
        let mut tls =
            (*meshd_identity::tls::client_config(&self.identity, &peer.identity)?).clone();
        tls.alpn_protocols = vec![ALPN_H3.to_vec()];
        let crypto =
            QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| Error::Config(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(
            &self.settings.http2,
            self.settings.keepalive,
            self.settings.max_streams_per_connection,
        )));
        let endpoint = self.endpoint(addr.is_ipv6())?;
        // The name is never checked (SPIFFE verification) nor sent (an IP name has no SNI).
        let connecting = endpoint
            .connect_with(config, addr, "0.0.0.0")
            .map_err(|e| Error::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let timeout = self.settings.handshake_timeout;
        let setup = async {
            let quic = connecting.await.map_err(|e| handshake_error(addr, e))?;
            let (mut driver, send) = h3::client::builder()
                .max_field_section_size(u64::from(self.settings.http2.max_header_list_size))
                .build::<_, _, Bytes>(h3_quinn::Connection::new(quic.clone()))
                .await
                .map_err(|e| Error::Http2Handshake {
                    addr,
                    reason: e.to_string(),
                })?;
            tokio::spawn(async move {
                let _closed = poll_fn(|cx| driver.poll_close(cx)).await;
            });
            Ok::<_, Error>((quic, send))
        };
        tokio::time::timeout(timeout, setup)
            .await
            .map_err(|_| Error::Timeout {
                what: "quic handshake",
                after: timeout,
            })?
    }

    fn endpoint(&self, v6: bool) -> Result<quinn::Endpoint, Error> {
        let mut endpoints = lock(&self.endpoints);
        if let Some(e) = endpoints.get(&v6) {
            return Ok(e.clone());
        }
        let bind = if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let e = quinn::Endpoint::client(SocketAddr::new(bind, 0))
            .map_err(|e| Error::Io(e.to_string()))?;
        endpoints.insert(v6, e.clone());
        Ok(e)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
