//! Copying both ways with buffers that cost nothing while a connection waits.
//!
//! tokio's `copy_bidirectional_with_sizes` allocates both buffers when the copy starts and keeps
//! them for the life of the connection: with 64 KiB a direction, a held connection pins 128 KiB
//! of heap on each meshd, and the pages its first bytes touched stay resident (issue 13 measured
//! 25 KB per held connection). Here each direction reads into a buffer only while bytes flow:
//!
//! - a buffer is taken when a read starts and, while it holds no bytes, given back when the
//!   read has to wait, so an idle connection holds no buffer at all;
//! - it starts at [`SMALL`] and grows fourfold (to [`LARGE`]) each time a read fills at least
//!   half of it; a connection moving bulk keeps its large buffer between reads, since taking
//!   64 KiB anew at every wake-up would cost a `malloc` per read;
//! - buffers are uninitialised spare capacity (`BytesMut`, `poll_read_buf`): taking one does not
//!   zero it, so a 1-byte read touches one page, not 64 KiB.
//!
//! The semantics are tokio's: each direction copies until its reader ends, flushes, then shuts
//! its writer down (a half-close travels through); the copy ends when both directions have.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

/// The first buffer of a direction.
pub const SMALL: usize = 4 << 10;
/// The largest buffer of a direction (one read's worth of bulk).
pub const LARGE: usize = 64 << 10;

/// Copies both ways until both sides are done; returns (bytes `a` → `b`, bytes `b` → `a`).
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Transfer::Running(Pipe::default());
    let mut b_to_a = Transfer::Running(Pipe::default());
    poll_fn(|cx| {
        let forward = a_to_b.poll(cx, &mut *a, &mut *b)?;
        let backward = b_to_a.poll(cx, &mut *b, &mut *a)?;
        let forward = ready!(forward);
        let backward = ready!(backward);
        Poll::Ready(Ok((forward, backward)))
    })
    .await
}

/// One direction's progress.
enum Transfer {
    Running(Pipe),
    ShuttingDown(u64),
    Done(u64),
}

impl Transfer {
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            match self {
                Transfer::Running(pipe) => {
                    let copied =
                        ready!(pipe.poll_copy(cx, Pin::new(&mut *reader), Pin::new(&mut *writer)))?;
                    *self = Transfer::ShuttingDown(copied);
                }
                Transfer::ShuttingDown(copied) => {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                    *self = Transfer::Done(*copied);
                }
                Transfer::Done(copied) => return Poll::Ready(Ok(*copied)),
            }
        }
    }
}

/// One direction's buffer and counters.
struct Pipe {
    /// Bytes read and not yet written; `None` while the direction waits with nothing buffered.
    buf: Option<BytesMut>,
    /// The capacity the next buffer is taken with.
    size: usize,
    read_done: bool,
    need_flush: bool,
    copied: u64,
}

impl Default for Pipe {
    fn default() -> Self {
        Pipe {
            buf: None,
            size: SMALL,
            read_done: false,
            need_flush: false,
            copied: 0,
        }
    }
}

impl Pipe {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            let buffered = self.buf.as_ref().is_some_and(|b| !b.is_empty());
            if !buffered && !self.read_done {
                let size = self.size;
                let buf = self
                    .buf
                    .get_or_insert_with(|| BytesMut::with_capacity(size));
                // Empty: reclaims the whole allocation for this read.
                buf.reserve(size);
                match tokio_util::io::poll_read_buf(reader.as_mut(), cx, buf) {
                    Poll::Ready(Ok(0)) => self.read_done = true,
                    Poll::Ready(Ok(n)) => self.size = next_size(size, n),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if self.size < LARGE {
                            // Nothing buffered and nothing to read: waiting costs no buffer.
                            self.buf = None;
                        }
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            if let Some(buf) = self.buf.as_mut() {
                while !buf.is_empty() {
                    let n = ready!(writer.as_mut().poll_write(cx, buf))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    buf.advance(n);
                    self.copied += n as u64;
                    self.need_flush = true;
                }
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                self.need_flush = false;
                self.buf = None;
                return Poll::Ready(Ok(self.copied));
            }
        }
    }
}

/// The next buffer size after a read of `n` bytes into one of `size`: fourfold when the read
/// filled at least half of it, back to [`SMALL`] when it was tiny (request/response traffic
/// after a burst), else the same.
fn next_size(size: usize, n: usize) -> usize {
    if n >= size / 2 {
        (size * 4).min(LARGE)
    } else if n <= SMALL / 4 {
        SMALL
    } else {
        size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn sizes_grow_with_full_reads_and_fall_back_after_tiny_ones() {
        assert_eq!(next_size(SMALL, SMALL), 4 * SMALL);
        assert_eq!(next_size(4 * SMALL, 4 * SMALL), LARGE);
        assert_eq!(next_size(LARGE, LARGE), LARGE);
        assert_eq!(next_size(LARGE, 10_000), LARGE);
        assert_eq!(next_size(LARGE, 1), SMALL);
        assert_eq!(next_size(SMALL, 1500), SMALL);
    }

    // Every byte arrives in order both ways, a half-close travels through, and the counts are
    // the bytes copied.
    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close() {
        let (mut app, mut proxy_a) = tokio::io::duplex(1 << 10);
        let (mut proxy_b, mut peer) = tokio::io::duplex(1 << 10);
        let copy =
            tokio::spawn(async move { copy_bidirectional(&mut proxy_a, &mut proxy_b).await });
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            app.write_all(&data).await.unwrap();
            app.shutdown().await.unwrap();
            let mut back = Vec::new();
            app.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert!(got == expected, "bytes differ after the copy");
        peer.write_all(b"reply").await.unwrap();
        peer.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply");
        let (forward, backward) = copy.await.unwrap().unwrap();
        assert_eq!((forward, backward), (300_000, 5));
    }

    // A reader's error ends the copy with that error.
    #[tokio::test]
    async fn a_read_error_ends_the_copy() {
        let mut failing = tokio_test_reader();
        let (mut a, _b) = tokio::io::duplex(64);
        let result = copy_bidirectional(&mut failing, &mut a).await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }

    /// A stream whose reads fail with a reset and whose writes vanish.
    fn tokio_test_reader() -> impl AsyncRead + AsyncWrite + Unpin {
        struct Reset;
        impl AsyncRead for Reset {
            fn poll_read(
                self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
                _buf: &mut tokio::io::ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
            }
        }
        impl AsyncWrite for Reset {
            fn poll_write(
                self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        Reset
    }
}
