//! What travels through a connection stack: the connection's facts ([`ConnCtx`]) and its
//! downstream side, which each stage may answer or refuse ([`Downstream`]).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

use futures::future::BoxFuture;
use meshd_hbone::TunnelStream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::record::{Direction, RecordHandle};
use crate::state::ProxyState;

/// A bidirectional byte stream a relay carries.
///
/// Beyond reading and writing slices, a stream may pass owned bytes: an HBONE tunnel holds
/// what it receives in `Bytes` already and sends `Bytes`, so the relay hands them on rather
/// than copying them through its buffer (one `memmove` less per byte on each side of bulk
/// traffic). The defaults copy, as plain `AsyncRead`/`AsyncWrite` do.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether [`Io::poll_read_bytes`] hands out received bytes without a copy; the relay
    /// reads through its own buffer otherwise.
    fn reads_bytes(&self) -> bool {
        false
    }

    /// Reads at most `max` bytes as an owned chunk, empty at the end of the stream. The
    /// default reads into a new buffer ([`poll_read_new`]); only streams that say
    /// [`Io::reads_bytes`] are read this way by the relay.
    fn poll_read_bytes(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Bytes>> {
        poll_read_new(self, cx, max)
    }

    /// Writes bytes from the front of `buf` and removes them from it; returns how many. The
    /// default copies them, as `poll_write`.
    fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut *self).poll_write(cx, buf))?;
        buf.advance(n);
        Poll::Ready(Ok(n))
    }
}

/// Reads at most `max` bytes into a new buffer: [`Io::poll_read_bytes`] for a stream that holds
/// no received bytes of its own.
pub(crate) fn poll_read_new<T: AsyncRead + Unpin + ?Sized>(
    io: &mut T,
    cx: &mut Context<'_>,
    max: usize,
) -> Poll<io::Result<Bytes>> {
    let mut buf = BytesMut::with_capacity(max.max(1));
    ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut buf))?;
    Poll::Ready(Ok(buf.freeze()))
}

impl Io for TcpStream {}
impl Io for tokio::io::DuplexStream {}
impl Io for tokio::net::UnixStream {}

impl Io for TunnelStream {
    fn reads_bytes(&self) -> bool {
        true
    }

    fn poll_read_bytes(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Bytes>> {
        TunnelStream::poll_read_bytes(self, cx, max)
    }

    fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        TunnelStream::poll_write_bytes(self, cx, buf)
    }
}

impl<T: Io + ?Sized> Io for Box<T> {
    fn reads_bytes(&self) -> bool {
        (**self).reads_bytes()
    }

    fn poll_read_bytes(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Bytes>> {
        (**self).poll_read_bytes(cx, max)
    }

    fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        (**self).poll_write_bytes(cx, buf)
    }
}

/// A boxed byte stream.
pub type BoxIo = Box<dyn Io>;

/// Why a connection is refused; each downstream kind maps it to its own signal (an HBONE
/// status, a SOCKS5 reply code, or closing a plain TCP connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The destination is not one this meshd serves (HBONE 400).
    BadDestination,
    /// An authorization policy denied it (HBONE 401).
    Denied,
    /// A plugin's limit refused it (HBONE 429).
    Limited,
    /// The destination could not be reached (HBONE 503).
    Unreachable,
}

/// The downstream side of a connection before it is answered.
pub trait Downstream: Send + 'static {
    /// Answers positively (HBONE 200, SOCKS5 success) and yields the byte stream.
    fn accept(self: Box<Self>) -> BoxFuture<'static, io::Result<BoxIo>>;
    /// Refuses; the downstream peer sees the refusal its protocol allows.
    fn refuse(self: Box<Self>, refusal: Refusal) -> BoxFuture<'static, ()>;
    /// A handle to reset the connection if its relay fails after [`Downstream::accept`];
    /// `None` when dropping the stream already says so (an HBONE stream is reset on drop).
    fn reset_handle(&self) -> Option<ResetHandle> {
        None
    }
}

impl Downstream for TcpStream {
    fn accept(self: Box<Self>) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move { Ok(self as BoxIo) })
    }

    fn refuse(self: Box<Self>, _refusal: Refusal) -> BoxFuture<'static, ()> {
        // Plain TCP has no way to say why; a reset (as ztunnel) at least tells the application
        // that it was refused rather than served and closed.
        Box::pin(async move {
            let _ = socket2::SockRef::from(&*self).set_linger(Some(Duration::ZERO));
            drop(self)
        })
    }

    fn reset_handle(&self) -> Option<ResetHandle> {
        ResetHandle::of(self)
    }
}

/// A second descriptor for a plain TCP connection, so that once the stream is boxed into a
/// relay a failure can still close it with a reset (SO_LINGER 0) instead of a FIN. A FIN
/// after a cut relay would pass a truncated stream off as complete to the application.
#[derive(Debug)]
pub struct ResetHandle(socket2::Socket);

impl ResetHandle {
    /// A handle on `stream`'s socket; `None` if the descriptor cannot be duplicated (then the
    /// connection just closes normally).
    pub fn of(stream: &TcpStream) -> Option<ResetHandle> {
        let fd = stream.as_fd().try_clone_to_owned().ok()?;
        Some(ResetHandle(socket2::Socket::from(fd)))
    }

    /// Makes the connection's close a reset, whichever descriptor is closed last.
    pub fn reset(&self) {
        let _ = self.0.set_linger(Some(Duration::ZERO));
    }
}

/// Where an outbound connection asked to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address (transparent capture's original destination, SOCKS5 by IP).
    Addr(SocketAddr),
    /// A host name and port (SOCKS5 by name, explicit listeners).
    Host(String, u16),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// Where a connection is sent once resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Plain TCP to this address (a local workload, or a destination outside the mesh).
    Direct(SocketAddr),
    /// An HBONE tunnel through the destination's meshd.
    Tunnel(TunnelRequest),
}

/// What an HBONE tunnel is opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRequest {
    /// The peer meshd's HBONE address (`<workload ip>:15008`).
    pub peer: SocketAddr,
    /// The SPIFFE ID the peer must present: the destination workload's.
    pub identity: String,
    /// The CONNECT authority: the workload's address and target port.
    pub authority: SocketAddr,
    /// The service host name, when the destination was a service (`forwarded: ...;host=`).
    pub service_host: Option<String>,
    /// The application's address (`forwarded: for=`).
    pub client: SocketAddr,
    /// The trace id (`traceparent`).
    pub trace_id: String,
    /// HBONE over HTTP/3 (QUIC) instead of HTTP/2.
    pub quic: bool,
}

/// The facts of one connection, filled in as it moves through the stack.
#[derive(Clone)]
pub struct ConnCtx {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The downstream peer's address.
    pub source: SocketAddr,
    /// The authenticated peer principal (inbound HBONE); `None` for plaintext.
    pub peer: Option<String>,
    /// Where the connection is for.
    pub target: Target,
    /// Trace id shared with the peer meshd.
    pub trace_id: String,
    /// The configuration in force when the connection was accepted.
    pub state: Arc<ProxyState>,
    /// Later configurations, for re-checking long-lived connections.
    pub updates: watch::Receiver<Arc<ProxyState>>,
    /// The record layers fill in.
    pub record: RecordHandle,
    /// Where to connect, once a stage has decided.
    pub upstream: Option<Upstream>,
}

impl fmt::Debug for ConnCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnCtx")
            .field("direction", &self.direction)
            .field("source", &self.source)
            .field("peer", &self.peer)
            .field("target", &self.target)
            .field("trace_id", &self.trace_id)
            .finish()
    }
}

/// A connection moving through a stack.
pub struct Conn {
    /// Its facts.
    pub ctx: ConnCtx,
    /// Its downstream side.
    pub downstream: Box<dyn Downstream>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ctx.fmt(f)
    }
}

impl Conn {
    /// Refuses the connection and returns the error that ends its stack.
    pub async fn refuse(self, refusal: Refusal, error: crate::ProxyError) -> crate::ProxyError {
        self.downstream.refuse(refusal).await;
        error
    }
}
