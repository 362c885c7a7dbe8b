//! What travels through a connection stack: the connection's context ([`ConnCtx`]: its
//! facts, shared with its record, and the configuration it is handled under), its downstream
//! side, which each stage may answer or refuse ([`Downstream`]), and, once chosen, its
//! [`Upstream`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

use futures::future::BoxFuture;
use meshd_hbone::{TraceParent, TunnelStream};
use meshd_identity::SpiffeId;
use meshd_record::{Facts, RecordHandle};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

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

    /// Makes the stream's close a reset, so that the far end sees a cut relay as an error,
    /// not as the clean end of a shorter stream. The default does nothing: an HBONE stream
    /// dropped before its end resets itself.
    fn reset_on_close(&self) {}

    /// The stream's own address, when it is a socket (the access log's `upstream.local_addr`).
    fn local_addr(&self) -> Option<SocketAddr> {
        None
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

impl Io for TcpStream {
    fn reset_on_close(&self) {
        // Best effort: SO_LINGER 0 makes the close send RST instead of FIN.
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        TcpStream::local_addr(self)
            .ok()
            .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
    }
}
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

    fn reset_on_close(&self) {
        (**self).reset_on_close()
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        (**self).local_addr()
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
    /// What the application has already sent, read without waiting: empty when nothing is
    /// there yet, or when this kind of downstream speaks only after its answer (SOCKS5, an
    /// HBONE stream). An outbound tunnel sends these bytes with its CONNECT, so a client that
    /// speaks first does not wait a round trip for the tunnel's answer; the relay carries
    /// the rest. An error is the connection's own (a reset).
    fn read_sent(&mut self) -> io::Result<Bytes> {
        Ok(Bytes::new())
    }
}

impl Downstream for TcpStream {
    fn accept(self: Box<Self>) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move { Ok(self as BoxIo) })
    }

    fn refuse(self: Box<Self>, _refusal: Refusal) -> BoxFuture<'static, ()> {
        // Plain TCP has no way to say why; a reset (as ztunnel) at least tells the application
        // that it was refused rather than served and closed.
        Box::pin(async move { self.reset_on_close() })
    }

    fn read_sent(&mut self) -> io::Result<Bytes> {
        let mut buf = [0u8; SENT_AHEAD_MAX];
        // On the socket itself: tokio learns a socket's readiness from epoll, which has not
        // reported on one accepted this instant, so its `try_read` would not even look.
        let mut socket: &socket2::Socket = &socket2::SockRef::from(&*self);
        match io::Read::read(&mut socket, &mut buf) {
            Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Bytes::new()),
            Err(e) => Err(e),
        }
    }
}

/// At most this much of what an application sent first rides with a tunnel's CONNECT: one
/// HTTP/2 DATA frame at the default maximum frame size.
const SENT_AHEAD_MAX: usize = 16 << 10;

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
    pub identity: SpiffeId,
    /// The CONNECT authority: the workload's address and target port.
    pub authority: SocketAddr,
    /// The service host name, when the destination was a service (`forwarded: ...;host=`).
    pub service_host: Option<String>,
    /// The application's address (`forwarded: for=`).
    pub client: SocketAddr,
    /// The trace context (`traceparent`): the connection's own, passed on to the peer.
    pub trace: TraceParent,
    /// HBONE over HTTP/3 (QUIC) instead of HTTP/2.
    pub quic: bool,
    /// The identity the tunnel presents (the source workload's, or meshd's own), shared with
    /// the connection's facts; `None`: meshd's own.
    pub source: Option<Arc<meshd_record::Identity>>,
}

/// The context of one connection in a stack: its [`Facts`] (the same value its record holds),
/// where it asked to go, and the configuration it is handled under.
#[derive(Clone)]
pub struct ConnCtx {
    /// What the connection is (trace, direction, source, identity): shared with the record.
    pub facts: Arc<Facts>,
    /// Where the connection is for.
    pub target: Target,
    /// The configuration in force when the connection was accepted.
    pub state: Arc<ProxyState>,
    /// Later configurations, for re-checking long-lived connections.
    pub updates: watch::Receiver<Arc<ProxyState>>,
    /// The record layers fill in.
    pub record: RecordHandle,
}

impl ConnCtx {
    /// The downstream peer's address.
    pub fn source(&self) -> SocketAddr {
        self.facts.source
    }

    /// The authenticated peer (inbound HBONE); `None` for plaintext and outbound connections.
    pub fn peer(&self) -> Option<&SpiffeId> {
        self.facts.peer()
    }
}

impl fmt::Debug for ConnCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnCtx")
            .field("facts", &self.facts)
            .field("target", &self.target)
            .finish()
    }
}

/// A connection moving through a stack. Until a layer has chosen where it goes, `upstream` is
/// `()`; the layer that decides (outbound resolution, inbound authorization) turns it into a
/// `Conn<Upstream>` ([`Conn::choose`]), the only kind the plugins and the connect stage take: a
/// stack wired without that layer does not compile.
pub struct Conn<U = ()> {
    /// Its context.
    pub ctx: ConnCtx,
    /// Its downstream side.
    pub downstream: Box<dyn Downstream>,
    /// Where it goes, once chosen.
    pub upstream: U,
}

impl<U> fmt::Debug for Conn<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ctx.fmt(f)
    }
}

impl Conn {
    /// A connection entering a stack: nothing chosen yet.
    pub fn new(ctx: ConnCtx, downstream: Box<dyn Downstream>) -> Self {
        Conn {
            ctx,
            downstream,
            upstream: (),
        }
    }

    /// The connection with its upstream chosen: what the plugins and the connect stage take.
    pub fn choose(self, upstream: Upstream) -> Conn<Upstream> {
        Conn {
            ctx: self.ctx,
            downstream: self.downstream,
            upstream,
        }
    }
}

impl<U> Conn<U> {
    /// Refuses the connection and returns the error that ends its stack.
    pub async fn refuse(self, refusal: Refusal, error: crate::ProxyError) -> crate::ProxyError {
        self.downstream.refuse(refusal).await;
        error
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// An accepted connection and the application's end of it.
    async fn accepted() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (accepted, app)
    }

    // What the application sent before the accept is read at once, before tokio's poller has
    // reported on the socket; the rest stays for the relay.
    #[tokio::test]
    async fn read_sent_takes_what_is_there_and_leaves_the_rest() {
        let (mut accepted, mut app) = accepted().await;
        app.write_all(b"hello").await.unwrap();
        // Loopback delivers on write; wait for the kernel all the same, without tokio.
        let mut first = Bytes::new();
        for _ in 0..100 {
            first = Downstream::read_sent(&mut accepted).unwrap();
            if !first.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(&first[..], b"hello");
        app.write_all(b" world").await.unwrap();
        let mut rest = [0u8; 6];
        accepted.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b" world");
    }

    // Nothing sent yet (a server-first protocol) is nothing, without waiting; an application
    // that connected and closed leaves its end for the relay to see.
    #[tokio::test]
    async fn read_sent_without_bytes_is_empty() {
        let (mut accepted, app) = accepted().await;
        assert!(Downstream::read_sent(&mut accepted).unwrap().is_empty());
        drop(app);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(Downstream::read_sent(&mut accepted).unwrap().is_empty());
        let mut rest = Vec::new();
        assert_eq!(accepted.read_to_end(&mut rest).await.unwrap(), 0);
    }

    // A reset before the tunnel opens is the connection's error, not an empty read.
    #[tokio::test]
    async fn read_sent_reports_a_reset() {
        let (mut accepted, app) = accepted().await;
        socket2::SockRef::from(&app)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(app);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let error = Downstream::read_sent(&mut accepted).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }

    // Kinds that answer before the application may speak read nothing ahead.
    #[tokio::test]
    async fn other_downstreams_read_nothing_ahead() {
        struct Answering;
        impl Downstream for Answering {
            fn accept(self: Box<Self>) -> BoxFuture<'static, io::Result<BoxIo>> {
                unreachable!()
            }
            fn refuse(self: Box<Self>, _: Refusal) -> BoxFuture<'static, ()> {
                unreachable!()
            }
        }
        assert!(Answering.read_sent().unwrap().is_empty());
    }
}
