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
//!   half of it. A connection moving bulk gives its buffer back too when a read has to wait,
//!   and takes one at its next read: one `malloc` per wake-up, served from what glibc keeps
//!   (`crates/memory/src/trim.rs`), and a bulk connection that then goes idle pins nothing. (Bytes
//!   handed to a tunnel are in h2's hands anyway: the next read needs a new buffer either way.)
//! - buffers are uninitialised spare capacity (`BytesMut`, `poll_read_buf`): taking one does not
//!   zero it, so a 1-byte read touches one page, not 256 KiB.
//!
//! No byte is copied in user space that need not be ([`Io`]'s owned-bytes methods): what is
//! read from an HBONE tunnel is written out from h2's own `Bytes`, without passing through a
//! buffer here, and what is read into a buffer is split off it and handed to the tunnel, not
//! copied into a new `Bytes`. Plain TCP on both sides copies through the buffer, as it must.
//!
//! The semantics are tokio's: each direction copies until its reader ends, flushes, then shuts
//! its writer down (a half-close travels through); the copy ends when both directions have.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};

use crate::conn::Io;

/// The first buffer of a direction.
pub const SMALL: usize = 4 << 10;
/// The largest buffer of a direction (one read's worth of bulk): 256 KiB, as ztunnel's
/// largest. Against 64 KiB, CPU per GB fell from 1.53–1.57× to 1.32× the plain relay's in an
/// interleaved A/B (benches/e2e, bulk): four times fewer reads, wake-ups and h2 frames.
pub const LARGE: usize = 256 << 10;

/// Copies both ways until both sides are done; returns (bytes `a` → `b`, bytes `b` → `a`).
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: Io + ?Sized,
    B: Io + ?Sized,
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
        R: Io + ?Sized,
        W: Io + ?Sized,
    {
        loop {
            match self {
                Transfer::Running(pipe) => {
                    let copied = ready!(pipe.poll_copy(cx, reader, writer))?;
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

/// One direction's buffer and counters. Kept small: a held connection carries two.
struct Pipe {
    /// Bytes read and not yet written.
    held: Held,
    /// The capacity the next buffer is taken with (at most [`LARGE`]).
    size: u32,
    read_done: bool,
    need_flush: bool,
    copied: u64,
}

/// What a direction holds between a read and the writes that pass it on.
enum Held {
    /// Nothing: the direction waits without a buffer.
    Nothing,
    /// Its own buffer (plain reads); kept while empty only for bulk traffic.
    Buf(BytesMut),
    /// A chunk owned by the reader that handed it out ([`Io::reads_bytes`]).
    Chunk(Bytes),
}

impl Held {
    fn is_empty(&self) -> bool {
        match self {
            Held::Nothing => true,
            Held::Buf(buf) => buf.is_empty(),
            Held::Chunk(chunk) => chunk.is_empty(),
        }
    }
}

impl Default for Pipe {
    fn default() -> Self {
        Pipe {
            held: Held::Nothing,
            size: SMALL as u32,
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
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: Io + ?Sized,
        W: Io + ?Sized,
    {
        loop {
            if self.held.is_empty() && !self.read_done {
                let read = if reader.reads_bytes() {
                    self.poll_read_chunk(cx, reader)
                } else {
                    self.poll_read_buf(cx, reader)
                };
                match read {
                    Poll::Ready(result) => result?,
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            ready!(self.poll_write_held(cx, writer))?;
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                self.need_flush = false;
                self.held = Held::Nothing;
                return Poll::Ready(Ok(self.copied));
            }
        }
    }

    /// Writes out everything held: a chunk as a slice, a buffer by handing its bytes over
    /// ([`Io::poll_write_bytes`]).
    fn poll_write_held<W: Io + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<io::Result<()>> {
        loop {
            let n = match &mut self.held {
                Held::Nothing => return Poll::Ready(Ok(())),
                Held::Chunk(chunk) if chunk.is_empty() => return Poll::Ready(Ok(())),
                Held::Buf(buf) if buf.is_empty() => return Poll::Ready(Ok(())),
                Held::Chunk(chunk) => {
                    let n = ready!(Pin::new(&mut *writer).poll_write(cx, chunk))?;
                    chunk.advance(n);
                    n
                }
                Held::Buf(buf) => ready!(writer.poll_write_bytes(cx, buf))?,
            };
            // A write that took nothing is an error, as in tokio's copy.
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.copied += n as u64;
            self.need_flush = true;
        }
    }

    /// Reads into this direction's buffer (taken at the current size if none is held).
    fn poll_read_buf<R: Io + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
    ) -> Poll<io::Result<()>> {
        let size = self.size as usize;
        let mut buf = match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Buf(buf) => buf,
            Held::Nothing | Held::Chunk(_) => BytesMut::with_capacity(size),
        };
        // Empty: reclaims the whole allocation for this read, or takes a new one if the last
        // read's bytes were handed on and are still in use.
        buf.reserve(size);
        match tokio_util::io::poll_read_buf(Pin::new(reader), cx, &mut buf) {
            Poll::Ready(Ok(0)) => self.read_done = true,
            Poll::Ready(Ok(n)) => self.size = next_size(size, n) as u32,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                // Nothing buffered and nothing to read: waiting costs no buffer (`buf` drops).
                return Poll::Pending;
            }
        }
        self.held = Held::Buf(buf);
        Poll::Ready(Ok(()))
    }

    /// Takes the reader's next owned chunk; nothing is buffered here while it waits.
    fn poll_read_chunk<R: Io + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
    ) -> Poll<io::Result<()>> {
        self.held = Held::Nothing;
        let chunk = ready!(reader.poll_read_bytes(cx, LARGE))?;
        if chunk.is_empty() {
            self.read_done = true;
        }
        self.held = Held::Chunk(chunk);
        Poll::Ready(Ok(()))
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
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    #[test]
    fn sizes_grow_with_full_reads_and_fall_back_after_tiny_ones() {
        assert_eq!(next_size(SMALL, SMALL), 4 * SMALL);
        assert_eq!(next_size(4 * SMALL, 4 * SMALL), 16 * SMALL);
        assert_eq!(next_size(16 * SMALL, 16 * SMALL), LARGE);
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

    // Streams that pass owned bytes are read and written that way, and the bytes still
    // arrive whole and in order: the tunnel side's chunks go out without the copy buffer,
    // and what is read into the buffer is handed to the tunnel side rather than copied.
    #[tokio::test]
    async fn owned_bytes_pass_through_both_ways() {
        let (app, mut proxy_a) = tokio::io::duplex(1 << 10);
        let (tunnel_end, peer) = tokio::io::duplex(1 << 10);
        let mut tunnel = Owned {
            inner: tunnel_end,
            chunks_read: 0,
            bytes_taken: 0,
        };
        let copy = tokio::spawn(async move {
            let counts = copy_bidirectional(&mut proxy_a, &mut tunnel).await;
            (counts, tunnel.chunks_read, tunnel.bytes_taken)
        });
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let reply: Vec<u8> = (0..150_000u32).map(|i| (i % 241) as u8).collect();
        let (sent, replied) = (data.clone(), reply.clone());
        // Each end writes and reads at once: with small pipes, writing everything before
        // reading would stall both ends.
        let app_side = tokio::spawn(async move {
            let (mut read, mut write) = tokio::io::split(app);
            let writer = async move {
                write.write_all(&sent).await.unwrap();
                write.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let (_, read_back) = tokio::join!(writer, read.read_to_end(&mut back));
            read_back.unwrap();
            back
        });
        let peer_side = tokio::spawn(async move {
            let (mut read, mut write) = tokio::io::split(peer);
            let writer = async move {
                write.write_all(&replied).await.unwrap();
                write.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let (_, read_got) = tokio::join!(writer, read.read_to_end(&mut got));
            read_got.unwrap();
            got
        });
        assert!(
            peer_side.await.unwrap() == data,
            "bytes to the tunnel differ"
        );
        assert!(
            app_side.await.unwrap() == reply,
            "bytes from the tunnel differ"
        );
        let (counts, chunks_read, bytes_taken) = copy.await.unwrap();
        assert_eq!(counts.unwrap(), (200_000, 150_000));
        assert!(chunks_read > 0, "the tunnel side was not read as chunks");
        assert_eq!(bytes_taken, 200_000, "not every byte was handed over owned");
    }

    /// A stream that reads and writes owned bytes, counting both.
    struct Owned {
        inner: tokio::io::DuplexStream,
        chunks_read: usize,
        bytes_taken: usize,
    }

    impl AsyncRead for Owned {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Owned {
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

    impl Io for Owned {
        fn reads_bytes(&self) -> bool {
            true
        }

        fn poll_read_bytes(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Bytes>> {
            let chunk = ready!(crate::conn::poll_read_new(&mut self.inner, cx, max))?;
            self.chunks_read += 1;
            Poll::Ready(Ok(chunk))
        }

        fn poll_write_bytes(
            &mut self,
            cx: &mut Context<'_>,
            buf: &mut BytesMut,
        ) -> Poll<io::Result<usize>> {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
            // Taken as the tunnel takes them: split off, the buffer keeps the rest.
            drop(buf.split_to(n).freeze());
            self.bytes_taken += n;
            Poll::Ready(Ok(n))
        }
    }

    // After bulk reads grew the buffer, a direction that waits for more holds none: a
    // connection that moved bulk and then idles pins no memory.
    #[tokio::test]
    async fn a_waiting_direction_holds_no_buffer_even_after_bulk() {
        let (mut app, mut reader) = tokio::io::duplex(1 << 20);
        let (mut writer, mut sink) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..(512u32 << 10)).map(|i| (i % 249) as u8).collect();
        app.write_all(&data).await.unwrap();
        let mut pipe = Pipe::default();
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(pipe.poll_copy(cx, &mut reader, &mut writer)))
                .await;
        assert!(
            polled.is_pending(),
            "the reader has no more bytes: the copy waits"
        );
        assert_eq!(pipe.size as usize, LARGE, "bulk reads grew the buffer");
        assert!(
            matches!(pipe.held, Held::Nothing),
            "a buffer is held while waiting"
        );
        assert_eq!(pipe.copied, data.len() as u64);
        let mut got = vec![0; data.len()];
        sink.read_exact(&mut got).await.unwrap();
        assert!(got == data, "bytes differ after the copy");
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
    fn tokio_test_reader() -> impl Io {
        struct Reset;
        impl Io for Reset {}
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
