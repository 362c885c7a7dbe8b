//! The HTTP/3 halves of a CONNECT stream behind [`TunnelStream`](crate::TunnelStream), which
//! reaches them through [`H3Tunnel`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use tokio::io::ReadBuf;
use tokio::sync::oneshot;

use crate::stream::H3Tunnel;

/// Largest single write taken into the one-write send buffer.
const MAX_WRITE: usize = 256 * 1024;

pub(super) type ClientSend = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
pub(super) type ClientRecv = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;
pub(super) type ServerSend = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
pub(super) type ServerRecv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

pub(super) enum SendHalf {
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

pub(super) enum RecvHalf {
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
}

enum Op {
    Data(Bytes),
    Finish,
}

type SendFuture = Pin<Box<dyn Future<Output = (SendHalf, io::Result<()>)> + Send>>;

/// The HTTP/3 halves of a CONNECT stream, as used by [`TunnelStream`](crate::TunnelStream).
pub(crate) struct H3Io {
    // None while an operation owns it.
    send: Option<SendHalf>,
    // The operation in flight, and the handle whose drop cancels it (with a reset).
    inflight: Option<(SendFuture, oneshot::Sender<()>)>,
    // None once reset: dropped, which stops it (see `reset`).
    recv: Option<RecvHalf>,
    pending: Bytes,
    finished: bool,
    eof: bool,
    reset: bool,
}

impl H3Io {
    pub(super) fn new(send: SendHalf, recv: RecvHalf) -> H3Io {
        H3Io {
            send: Some(send),
            inflight: None,
            recv: Some(recv),
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

    /// Waits until received bytes are pending; none pending after `Ready(Ok)` is the end of
    /// the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending.is_empty() && !self.eof {
            let Some(recv) = self.recv.as_mut() else {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "tunnel reset",
                )));
            };
            match ready!(recv.poll_data(cx)) {
                Ok(Some(data)) => self.pending = data,
                Ok(None) => self.eof = true,
                Err(e) => return Poll::Ready(Err(stream_to_io(e))),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_fill(cx))?;
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }

    /// The next received bytes, at most `max`, without a copy; empty at the end.
    fn poll_read_bytes(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Bytes>> {
        ready!(self.poll_fill(cx))?;
        Poll::Ready(Ok(self
            .pending
            .split_to(self.pending.len().min(max.max(1)))))
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
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

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_drive(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drive(cx))?;
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        self.start(Op::Finish)?;
        self.finished = true;
        self.poll_drive(cx)
    }

    fn reset(&mut self) {
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
        // The receiving half is dropped rather than stopped: quinn then sends STOP_SENDING
        // for the unfinished stream itself. h3's stop_sending would panic the task whenever a
        // read is in flight (h3-quinn 0.0.10 unwraps the stream it lent to that read, its
        // lib.rs:394), and h3's frame reader can leave one behind even after handing out
        // data, as it polls ahead for the next frame: no flag of ours can tell.
        self.recv = None;
    }
}

impl H3Tunnel for H3Io {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        H3Io::poll_read(self, cx, buf)
    }

    fn poll_read_bytes(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Bytes>> {
        H3Io::poll_read_bytes(self, cx, max)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        H3Io::poll_write(self, cx, buf)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        H3Io::poll_flush(self, cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        H3Io::poll_shutdown(self, cx)
    }

    fn reset(&mut self) {
        H3Io::reset(self)
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

pub(super) fn stream_to_io(e: StreamError) -> io::Error {
    let kind = match &e {
        StreamError::ConnectionError { .. } => io::ErrorKind::ConnectionAborted,
        _ => io::ErrorKind::ConnectionReset,
    };
    io::Error::new(kind, e.to_string())
}
