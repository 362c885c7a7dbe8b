//! The tunneled byte stream: one CONNECT stream seen as a TCP-like socket.
//!
//! Mapping to TCP semantics, both sides and both transports:
//! - `poll_shutdown` sends END_STREAM (HTTP/3: FIN) once: a TCP half-close. The peer's read
//!   then returns EOF while it can still write back.
//! - Dropping the stream before both directions ended resets it (h2 sends RST_STREAM(CANCEL)
//!   for a dropped open stream; [`TunnelStream::reset`] does it explicitly). A reset from the
//!   peer surfaces as `io::ErrorKind::ConnectionReset` on the next read or write, which a proxy
//!   turns into a TCP RST towards its application.
//! - Writes wait for flow-control capacity (reserved per write, bounded by the stream window
//!   and the send buffer), so a peer that does not read stalls the writer instead of growing
//!   memory; received bytes are released to the window as the caller reads them.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::peer::Transport;
use crate::pool::SlotGuard;

/// The halves of an HTTP/3 CONNECT stream. Implemented by the `quic` module, which plugs into
/// the stream through this trait so that the stream does not depend on it.
#[cfg(feature = "quic")]
pub(crate) trait H3Tunnel: Send {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>>;
    fn poll_read_bytes(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Bytes>>;
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn reset(&mut self);
}

/// One tunneled TCP connection: `AsyncRead + AsyncWrite`, ready for
/// `tokio::io::copy_bidirectional`.
pub struct TunnelStream {
    inner: Inner,
    // Returns the pool slot when the stream ends; None on the server side.
    _slot: Option<SlotGuard>,
}

enum Inner {
    H2(H2Io),
    // Boxed: h3's stream halves are large, and HTTP/2 is the common case.
    #[cfg(feature = "quic")]
    H3(Box<dyn H3Tunnel>),
}

impl TunnelStream {
    pub(crate) fn h2(send: SendStream<Bytes>, recv: RecvStream, slot: Option<SlotGuard>) -> Self {
        TunnelStream {
            inner: Inner::H2(H2Io {
                send,
                recv,
                pending: Bytes::new(),
                shutdown: false,
            }),
            _slot: slot,
        }
    }

    /// An HTTP/3 tunnel (no pool slot: QUIC enforces its own stream limits).
    #[cfg(feature = "quic")]
    pub(crate) fn h3(io: Box<dyn H3Tunnel>) -> Self {
        TunnelStream {
            inner: Inner::H3(io),
            _slot: None,
        }
    }

    /// The transport carrying this tunnel.
    pub fn transport(&self) -> Transport {
        match &self.inner {
            Inner::H2(_) => Transport::H2,
            #[cfg(feature = "quic")]
            Inner::H3(_) => Transport::H3,
        }
    }

    /// Reads the next received bytes, at most `max`, as an owned chunk without copying them
    /// (both transports receive `Bytes`); empty at the end of the stream. Over HTTP/2 its
    /// bytes are credited back to the peer's window as they are handed out, so a caller holds
    /// at most `max` bytes beyond the window.
    pub fn poll_read_bytes(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Bytes>> {
        match &mut self.inner {
            Inner::H2(io) => io.poll_read_bytes(cx, max),
            #[cfg(feature = "quic")]
            Inner::H3(io) => io.poll_read_bytes(cx, max),
        }
    }

    /// Sends bytes from the front of `buf` and removes them from it; returns how many. Over
    /// HTTP/2 they are split off `buf` and handed to h2 without a copy (`buf` keeps the rest of
    /// its allocation); over HTTP/3 they are copied, as by `poll_write`.
    pub fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::H2(io) => io.poll_write_bytes(cx, buf),
            #[cfg(feature = "quic")]
            Inner::H3(io) => {
                let n = ready!(io.poll_write(cx, buf))?;
                buf.advance(n);
                Poll::Ready(Ok(n))
            }
        }
    }

    /// Resets the stream in both directions (RST_STREAM(CANCEL); HTTP/3: STOP_SENDING and
    /// RESET_STREAM), as when the application's TCP connection was reset.
    pub fn reset(&mut self) {
        match &mut self.inner {
            Inner::H2(io) => io.send.send_reset(Reason::CANCEL),
            #[cfg(feature = "quic")]
            Inner::H3(io) => io.reset(),
        }
    }
}

impl fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelStream")
            .field("transport", &self.transport())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::H2(io) => io.poll_read(cx, buf),
            #[cfg(feature = "quic")]
            Inner::H3(io) => io.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::H2(io) => io.poll_write(cx, buf),
            #[cfg(feature = "quic")]
            Inner::H3(io) => io.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            // h2's connection task writes buffered frames out on its own.
            Inner::H2(_) => {
                let _ = cx;
                Poll::Ready(Ok(()))
            }
            #[cfg(feature = "quic")]
            Inner::H3(io) => io.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::H2(io) => io.poll_shutdown(cx),
            #[cfg(feature = "quic")]
            Inner::H3(io) => io.poll_shutdown(cx),
        }
    }
}

/// The HTTP/2 halves of a CONNECT stream.
struct H2Io {
    send: SendStream<Bytes>,
    recv: RecvStream,
    // Received but not yet read; its bytes are still charged to our receive window.
    pending: Bytes,
    shutdown: bool,
}

impl H2Io {
    /// Waits until received bytes are pending; none pending after `Ready(Ok)` is the end of
    /// the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => break,
                Some(Ok(data)) => self.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_fill(cx))?;
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        self.consumed(n);
        Poll::Ready(Ok(()))
    }

    fn poll_read_bytes(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Bytes>> {
        ready!(self.poll_fill(cx))?;
        let chunk = self.pending.split_to(self.pending.len().min(max.max(1)));
        self.consumed(chunk.len());
        Poll::Ready(Ok(chunk))
    }

    /// Credits the window only for what the caller consumed, so a slow reader slows the
    /// sender. h2 batches these into WINDOW_UPDATE frames. An error means the stream is gone,
    /// which the next poll_data reports.
    fn consumed(&mut self, n: usize) {
        let _ = self.recv.flow_control().release_capacity(n);
    }

    fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let n = ready!(self.poll_send_capacity(cx, buf.len()))?;
        if n > 0 {
            self.send
                .send_data(buf.split_to(n).freeze(), false)
                .map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let n = ready!(self.poll_send_capacity(cx, buf.len()))?;
        if n > 0 {
            self.send
                .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                .map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(n))
    }

    /// Waits until the stream may send; returns how many of `want` bytes it may send now (0
    /// only when `want` is 0).
    fn poll_send_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if want == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.shutdown {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        loop {
            // `capacity` is window credit already assigned to this stream, bounded by the
            // send buffer limit; `poll_capacity` only wakes when it grows.
            let available = self.send.capacity();
            if available > 0 {
                return Poll::Ready(Ok(available.min(want)));
            }
            self.send.reserve_capacity(want);
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Err(self.closed_error(cx))),
            }
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.shutdown {
            return Poll::Ready(Ok(()));
        }
        self.shutdown = true;
        match self.send.send_data(Bytes::new(), true) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => Poll::Ready(Err(self.closed_error(cx))),
        }
    }

    /// The error for a stream that can no longer send: reset by the peer, or closed.
    fn closed_error(&mut self, cx: &mut Context<'_>) -> io::Error {
        match self.send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("stream reset by peer: {reason}"),
            ),
            Poll::Ready(Err(e)) => h2_to_io(e),
            Poll::Pending => io::Error::new(io::ErrorKind::BrokenPipe, "stream closed"),
        }
    }
}

/// Maps h2 errors onto the io kinds a TCP socket would give: a stream reset is a connection
/// reset, a connection torn down under us is an abort.
pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        if let Some(err) = e.into_io() {
            return err;
        }
        return io::Error::other("h2 i/o error");
    }
    let kind = if e.is_reset() {
        io::ErrorKind::ConnectionReset
    } else if e.is_go_away() {
        io::ErrorKind::ConnectionAborted
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}
