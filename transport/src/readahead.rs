//! A read-ahead buffer that exists only while a stream is busy.
//!
//! rustls reads its socket 4 KiB at a time, so a bulk TLS stream costs four
//! `recv` calls per 16 KiB record; reading ahead into a larger buffer serves
//! several records per call. A fixed buffer would cost its size on every
//! connection, idle agent control channels included, so this one is
//! allocated when a read finds more bytes waiting than were asked for, and
//! dropped again once the stream goes quiet.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Read-ahead size while busy.
pub const READ_AHEAD: usize = 64 * 1024;
/// A refill returning less than this is a quiet one.
const QUIET: usize = 4 * 1024;
/// This many quiet refills in a row mean the stream went quiet. One is not
/// enough: a busy stream's refill often catches a record's tail, and
/// dropping the buffer then would reallocate (and clear) it per record.
const QUIET_REFILLS: u8 = 16;

pub struct ReadAhead<S> {
    inner: S,
    buf: Option<Box<[u8]>>,
    pos: usize,
    filled: usize,
    /// Quiet refills in a row; at [`QUIET_REFILLS`] the buffer is dropped
    /// once drained.
    quiet: u8,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buf: None,
            pos: 0,
            filled: 0,
            quiet: 0,
        }
    }

    /// Whether a read-ahead buffer is held now.
    pub fn is_buffering(&self) -> bool {
        self.buf.is_some()
    }

    fn take_buffered(&mut self, out: &mut ReadBuf<'_>) {
        let Some(buf) = self.buf.as_deref() else {
            return;
        };
        let n = out.remaining().min(self.filled - self.pos);
        out.put_slice(&buf[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == self.filled && self.quiet >= QUIET_REFILLS {
            self.buf = None;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.filled {
            this.take_buffered(out);
            return Poll::Ready(Ok(()));
        }
        let wanted = out.remaining();
        match this.buf.as_deref_mut() {
            Some(buf) if wanted < buf.len() => {
                let mut ahead = ReadBuf::new(buf);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut ahead))?;
                let n = ahead.filled().len();
                this.pos = 0;
                this.filled = n;
                this.quiet = if n < QUIET {
                    this.quiet.saturating_add(1)
                } else {
                    0
                };
                this.take_buffered(out);
                Poll::Ready(Ok(()))
            }
            _ => {
                // No buffer, or the caller's is as big: read straight in.
                let before = out.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                let got = out.filled().len() - before;
                if this.buf.is_none() && got > 0 && got == wanted && wanted < READ_AHEAD {
                    // The socket had at least what was asked: bulk traffic.
                    this.buf = Some(vec![0u8; READ_AHEAD].into_boxed_slice());
                    this.quiet = 0;
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn read_in_4k(r: &mut ReadAhead<tokio::io::DuplexStream>, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < len {
            let n = r.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    #[tokio::test]
    async fn light_traffic_reads_straight_through() {
        let (mut w, r) = tokio::io::duplex(1 << 20);
        let mut r = ReadAhead::new(r);
        for i in 0..20u8 {
            w.write_all(&[i; 100]).await.unwrap();
            assert_eq!(read_in_4k(&mut r, 100).await, vec![i; 100]);
            assert!(!r.is_buffering());
        }
    }

    #[tokio::test]
    async fn bulk_traffic_reads_ahead_then_lets_go_when_quiet() {
        let (mut w, r) = tokio::io::duplex(1 << 20);
        let mut r = ReadAhead::new(r);
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(&data).await.unwrap();
        assert_eq!(read_in_4k(&mut r, data.len()).await, data);
        assert!(r.is_buffering());
        for _ in 0..QUIET_REFILLS {
            assert!(r.is_buffering(), "one quiet read is not a quiet stream");
            w.write_all(b"ping").await.unwrap();
            assert_eq!(read_in_4k(&mut r, 4).await, b"ping");
        }
        assert!(!r.is_buffering(), "a quiet stream gives its buffer back");
        w.write_all(b"pong").await.unwrap();
        drop(w);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"pong");
    }
}
