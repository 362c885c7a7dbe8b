//! Byte counting as bytes flow: a wrapper that reports every successful read to the sinks'
//! meters, so a long connection's bytes show in metrics before it closes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use meshd_record::Meters;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::Io;

/// Which side of the connection a wrapped stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The accepted side (application or peer meshd).
    Downstream,
    /// The side meshd connected to.
    Upstream,
}

/// A stream whose reads are counted.
pub struct Metered<T> {
    inner: T,
    side: Side,
    meters: Meters,
}

impl<T> Metered<T> {
    /// Counts what is read from `inner` (one `side` of the connection) on `meters`.
    pub fn new(inner: T, side: Side, meters: Meters) -> Self {
        Metered {
            inner,
            side,
            meters,
        }
    }
}

impl<T> Metered<T> {
    fn count(&self, read: usize) {
        if read == 0 {
            return;
        }
        for meter in self.meters.iter() {
            match self.side {
                Side::Downstream => meter.downstream_bytes(read as u64),
                Side::Upstream => meter.upstream_bytes(read as u64),
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.count(buf.filled().len() - before);
        polled
    }
}

impl<T: Io> Io for Metered<T> {
    fn reads_bytes(&self) -> bool {
        self.inner.reads_bytes()
    }

    fn poll_read_bytes(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Bytes>> {
        let polled = self.inner.poll_read_bytes(cx, max);
        if let Poll::Ready(Ok(chunk)) = &polled {
            self.count(chunk.len());
        }
        polled
    }

    fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_write_bytes(cx, buf)
    }

    fn reset_on_close(&self) {
        self.inner.reset_on_close()
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
