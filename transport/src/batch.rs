//! Port-session reads that become data-channel payloads without copies.

use airlock_proto::crypto;
use airlock_proto::smux::{self, Cmd};
use airlock_proto::FrameBuf;
use bytes::{Buf, BufMut, Bytes};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Bytes of payload a port session may hold queued between its connection
/// readers and the data channel (which then bounds what is in flight).
pub const OUT_QUEUE_BYTES: usize = 8 << 20;
/// Most frames in that queue, whatever their size.
pub const OUT_QUEUE_MAX_FRAMES: usize = 256;

/// Frames the reader-to-channel queue holds for payloads of `chunk` bytes:
/// as many as fit in [`OUT_QUEUE_BYTES`] (at least 2), so 1 MiB batches do
/// not make a queue sized for 1 KiB stock frames hold 256 MiB.
pub fn out_queue_frames(chunk: usize) -> usize {
    (OUT_QUEUE_BYTES / chunk.max(1)).clamp(2, OUT_QUEUE_MAX_FRAMES)
}

/// The payload size one connection's first batch is read into.
pub const FIRST_BATCH: usize = 64 * 1024;

/// Sizes one connection's batches: they start at [`FIRST_BATCH`], double
/// while they come back at least three quarters full, up to the session's
/// largest payload, and halve when one comes back less than a quarter full
/// (in between they stay, so a bulk stream does not oscillate). A bulk stream reaches 1 MiB
/// batches within five reads, while a connection that trickles (or idles in
/// a read) holds 64 KiB instead of a 1 MiB buffer: with 64 connections that
/// was the larger part of the client's memory.
#[derive(Clone, Copy, Debug)]
pub struct BatchSizer {
    next: usize,
    max: usize,
}

impl BatchSizer {
    pub fn new(max: usize) -> Self {
        BatchSizer {
            next: FIRST_BATCH.min(max),
            max,
        }
    }

    /// The `chunk` for the next [`batch_buffer`].
    pub fn next(&self) -> usize {
        self.next
    }

    /// Feeds back how much of a `chunk`-sized batch was used.
    pub fn record(&mut self, used: usize, chunk: usize) {
        if used.saturating_mul(4) >= chunk.saturating_mul(3) {
            self.next = self.next.saturating_mul(2).min(self.max);
        } else if used.saturating_mul(4) < chunk {
            self.next = (self.next / 2).max(FIRST_BATCH.min(self.max));
        }
    }
}

/// An empty buffer for [`read_psh_batch`] whose payload will fit `chunk`
/// bytes on the wire, and the `max_payload` to read to. With `sealed` the
/// payload starts with room for the end-to-end nonce and leaves room for the
/// tag (`Sealer::seal_in_place` seals it where it lies).
pub fn batch_buffer(chunk: usize, sealed: bool) -> (FrameBuf, usize) {
    let mut buf = FrameBuf::with_capacity(chunk);
    if !sealed {
        return (buf, chunk);
    }
    buf.buf_mut().put_bytes(0, crypto::NONCE_LEN);
    (buf, chunk.saturating_sub(crypto::TAG_LEN))
}

/// What one [`read_psh_batch`] call took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// False once the reader reached its end.
    pub open: bool,
    /// Stream bytes in the batch (smux headers not counted).
    pub stream_bytes: usize,
}

/// A port connection's read half. Sockets fill several smux frames per
/// `readv` (a frame carries at most 64 KiB, so one frame per read was four
/// times socat's 128 KiB reads); other readers take one frame per read.
pub trait PortRead: AsyncRead + Unpin {
    /// One `readv` into `iov`, waiting until the socket is readable; `None`
    /// if this reader cannot (it is then read through `AsyncRead`).
    fn poll_readv(
        &self,
        _cx: &mut std::task::Context<'_>,
        _iov: &[libc::iovec],
    ) -> Option<std::task::Poll<std::io::Result<usize>>> {
        None
    }

    /// One `readv` of what is already there (`WouldBlock` if nothing is).
    fn try_readv(&self, _iov: &[libc::iovec]) -> Option<std::io::Result<usize>> {
        None
    }
}

/// `readv` on a non-blocking socket owned by tokio's reactor.
fn readv_now(fd: std::os::fd::RawFd, iov: &[libc::iovec]) -> std::io::Result<usize> {
    let count = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: every iovec points at memory the caller owns and nothing else
    // touches for the duration of the call (spare capacity of its buffer).
    let n = unsafe { libc::readv(fd, iov.as_ptr(), count) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

macro_rules! port_read_for_socket {
    ($half:ty, $stream:ty) => {
        impl PortRead for $half {
            fn poll_readv(
                &self,
                cx: &mut std::task::Context<'_>,
                iov: &[libc::iovec],
            ) -> Option<std::task::Poll<std::io::Result<usize>>> {
                use std::os::fd::AsRawFd;
                let sock: &$stream = self.as_ref();
                Some(loop {
                    match sock.poll_read_ready(cx) {
                        std::task::Poll::Ready(Ok(())) => {}
                        other => break other.map(|r| r.map(|()| 0)),
                    }
                    match sock.try_io(tokio::io::Interest::READABLE, || {
                        readv_now(sock.as_raw_fd(), iov)
                    }) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        r => break std::task::Poll::Ready(r),
                    }
                })
            }

            fn try_readv(&self, iov: &[libc::iovec]) -> Option<std::io::Result<usize>> {
                use std::os::fd::AsRawFd;
                let sock: &$stream = self.as_ref();
                Some(sock.try_io(tokio::io::Interest::READABLE, || {
                    readv_now(sock.as_raw_fd(), iov)
                }))
            }
        }
    };
}

port_read_for_socket!(tokio::net::tcp::OwnedReadHalf, tokio::net::TcpStream);
port_read_for_socket!(tokio::net::unix::OwnedReadHalf, tokio::net::UnixStream);
impl PortRead for tokio::io::DuplexStream {}

impl<T: PortRead + ?Sized> PortRead for Box<T> {
    fn poll_readv(
        &self,
        cx: &mut std::task::Context<'_>,
        iov: &[libc::iovec],
    ) -> Option<std::task::Poll<std::io::Result<usize>>> {
        (**self).poll_readv(cx, iov)
    }

    fn try_readv(&self, iov: &[libc::iovec]) -> Option<std::io::Result<usize>> {
        (**self).try_readv(iov)
    }
}

/// Smux frames one `readv` fills at most.
const READV_FRAMES: usize = 16;

enum FramesRead {
    /// `rd` has no `readv`.
    Unsupported,
    /// Not waiting, and nothing was there.
    Empty,
    /// Stream bytes read (0: end of stream, or no room).
    Read(std::io::Result<usize>),
}

/// Reads into up to [`READV_FRAMES`] frames laid out in `buf`'s spare
/// capacity, each behind a gap for its header, which is then written.
async fn read_frames<R: PortRead + ?Sized>(
    rd: &mut R,
    sid: u32,
    buf: &mut FrameBuf,
    room: usize,
    max_frame: usize,
    wait: bool,
) -> FramesRead {
    // (data offset from the end of the buffer, data length) per frame.
    let mut slots = [(0usize, 0usize); READV_FRAMES];
    let (mut count, mut span, mut left) = (0, 0, room);
    while count < READV_FRAMES && left > smux::HEADER_LEN {
        let len = (left - smux::HEADER_LEN).min(max_frame);
        slots[count] = (span + smux::HEADER_LEN, len);
        span += smux::HEADER_LEN + len;
        left -= smux::HEADER_LEN + len;
        count += 1;
    }
    if count == 0 {
        return FramesRead::Read(Ok(0));
    }
    let bytes = buf.buf_mut();
    bytes.reserve(span);
    let iovecs = |bytes: &mut bytes::BytesMut| {
        let base = bytes.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; READV_FRAMES];
        for (v, &(at, len)) in iov.iter_mut().zip(&slots[..count]) {
            // SAFETY: `at + len <= span`, reserved above.
            v.iov_base = unsafe { base.add(at) }.cast();
            v.iov_len = len;
        }
        iov
    };
    let read = if wait {
        let r = std::future::poll_fn(|cx| {
            let iov = iovecs(bytes);
            match rd.poll_readv(cx, &iov[..count]) {
                None => std::task::Poll::Ready(None),
                Some(p) => p.map(Some),
            }
        })
        .await;
        match r {
            Some(r) => r,
            None => return FramesRead::Unsupported,
        }
    } else {
        let iov = iovecs(bytes);
        match rd.try_readv(&iov[..count]) {
            None => return FramesRead::Unsupported,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return FramesRead::Empty,
            Some(r) => r,
        }
    };
    let n = match read {
        Ok(n) => n,
        Err(e) => return FramesRead::Read(Err(e)),
    };
    // Headers for the frames the bytes reached; the last may be short.
    let mut left = n;
    let mut end = 0;
    for &(at, len) in &slots[..count] {
        if left == 0 {
            break;
        }
        let took = left.min(len);
        let header = match smux::header(Cmd::Psh, sid, took) {
            Ok(h) => h,
            Err(e) => {
                return FramesRead::Read(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e,
                )))
            }
        };
        let spare = bytes.spare_capacity_mut();
        for (dst, b) in spare[at - smux::HEADER_LEN..at].iter_mut().zip(header) {
            dst.write(b);
        }
        left -= took;
        end = at + took;
    }
    // SAFETY: up to `end`, every byte is a header written above or data the
    // kernel wrote (frames are filled in order, so there are no holes).
    unsafe { bytes.set_len(bytes.len() + end) };
    FramesRead::Read(Ok(n))
}

/// Fills `buf` with smux `Psh` frames of stream `sid`, reading `rd` straight
/// into it: waits for the first bytes, then keeps taking bytes that are
/// already there (no waiting) until the payload would pass `max_payload`.
/// Each smux frame carries at most `max_frame` bytes.
///
/// Bytes read before `rd` ended are in `buf`. An error on the first read is
/// returned; a later one is left for the next call to report, so no bytes
/// already read are lost.
pub async fn read_psh_batch<R: PortRead + ?Sized>(
    rd: &mut R,
    sid: u32,
    buf: &mut FrameBuf,
    max_payload: usize,
    max_frame: usize,
) -> std::io::Result<Batch> {
    let max_frame = max_frame.min(usize::from(u16::MAX));
    let mut first = true;
    let mut batch = Batch {
        open: true,
        stream_bytes: 0,
    };
    loop {
        let room = max_payload.saturating_sub(buf.payload_len());
        match read_frames(rd, sid, buf, room, max_frame, first).await {
            FramesRead::Unsupported => {}
            FramesRead::Empty => return Ok(batch),
            FramesRead::Read(Ok(0)) => {
                batch.open = room <= smux::HEADER_LEN;
                return Ok(batch);
            }
            FramesRead::Read(Ok(n)) => {
                batch.stream_bytes += n;
                first = false;
                continue;
            }
            FramesRead::Read(Err(e)) if first => return Err(e),
            // Left for the next call to report (bytes already read stay).
            FramesRead::Read(Err(_)) => return Ok(batch),
        }
        let room = max_payload
            .saturating_sub(buf.payload_len() + smux::HEADER_LEN)
            .min(max_frame);
        if room == 0 {
            return Ok(batch);
        }
        let start = buf.payload_len();
        buf.buf_mut().put_bytes(0, smux::HEADER_LEN);
        let read = {
            let mut limited = buf.buf_mut().limit(room);
            let fut = rd.read_buf(&mut limited);
            if first {
                Some(fut.await)
            } else {
                fut.now_or_never()
            }
        };
        match read {
            Some(Ok(n)) if n > 0 => {
                let header = smux::header(Cmd::Psh, sid, n)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let at = start..start + smux::HEADER_LEN;
                if let Some(slot) = buf.payload_mut().get_mut(at) {
                    slot.copy_from_slice(&header);
                }
                batch.stream_bytes += n;
            }
            Some(Ok(_)) => {
                buf.truncate_payload(start);
                batch.open = false;
                return Ok(batch);
            }
            Some(Err(e)) if first => {
                buf.truncate_payload(start);
                return Err(e);
            }
            Some(Err(_)) | None => {
                buf.truncate_payload(start);
                return Ok(batch);
            }
        }
        first = false;
    }
}

/// Frames one write takes at most (iovecs per `writev`).
const WRITE_BATCH: usize = 64;
/// Bytes taken off the queue for one write at most: what waits here is on
/// top of the queue's own bound, so it stays near one payload's worth.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Writes what a connection's queue brings until the queue closes. Every
/// wake-up takes all the frames already waiting and writes them with
/// vectored writes: a 1 MiB payload's sixteen smux frames cost one `writev`
/// instead of sixteen `write`s and sixteen task wake-ups. `written` hears of
/// every byte the socket took.
pub async fn write_queued<W: AsyncWrite + Unpin>(
    wr: &mut W,
    rx: &mut mpsc::Receiver<Bytes>,
    mut written: impl FnMut(usize),
) -> std::io::Result<()> {
    let mut pending: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
    while let Some(first) = rx.recv().await {
        let mut taken = first.len();
        pending.push_back(first);
        while pending.len() < WRITE_BATCH && taken < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(b) => {
                    taken += b.len();
                    pending.push_back(b);
                }
                Err(_) => break,
            }
        }
        pending.retain(|b| !b.is_empty());
        while !pending.is_empty() {
            let slices: Vec<std::io::IoSlice<'_>> =
                pending.iter().map(|b| std::io::IoSlice::new(b)).collect();
            let mut n = wr.write_vectored(&slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            written(n);
            while n > 0 {
                let Some(front) = pending.front_mut() else {
                    break;
                };
                if front.len() <= n {
                    n -= front.len();
                    pending.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        wr.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames queued together leave in one vectored write, in order.
    #[tokio::test]
    async fn queued_frames_are_written_together_and_in_order() {
        let (mut near, mut far) = crate::testutil::tcp_pair().await;
        let (tx, mut rx) = mpsc::channel(64);
        let frames: Vec<Bytes> = (0..40u8)
            .map(|i| Bytes::from(vec![i; 100 + i as usize * 37]))
            .chain([Bytes::new()])
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|b| b.to_vec()).collect();
        for f in &frames {
            tx.send(f.clone()).await.unwrap();
        }
        drop(tx);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut total = 0;
        let mut writes = 0;
        write_queued(&mut near, &mut rx, |n| {
            total += n;
            writes += 1;
        })
        .await
        .unwrap();
        drop(near);
        assert_eq!(reader.await.unwrap(), expected);
        assert_eq!(total, expected.len());
        // 32 KiB in 40 frames fits the socket buffer: one writev (a write
        // per frame would be 40).
        assert!(writes <= 2, "{writes} writes");
    }

    #[test]
    fn batches_grow_while_full_and_shrink_when_not() {
        let mut s = BatchSizer::new(1 << 20);
        let mut seen = vec![s.next()];
        while s.next() < 1 << 20 {
            let chunk = s.next();
            s.record(chunk, chunk);
            seen.push(s.next());
        }
        assert_eq!(seen, [64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20]);
        s.record(1 << 20, 1 << 20);
        assert_eq!(s.next(), 1 << 20, "capped at the session's payload");
        s.record(600 << 10, 1 << 20);
        assert_eq!(s.next(), 1 << 20, "half full keeps the size");
        s.record(100, 1 << 20);
        assert_eq!(s.next(), 512 << 10);
        for _ in 0..10 {
            s.record(10, s.next());
        }
        assert_eq!(s.next(), FIRST_BATCH);
        // A stock peer's 1 KiB payloads are never exceeded.
        let mut stock = BatchSizer::new(1024);
        stock.record(1024, 1024);
        assert_eq!(stock.next(), 1024);
    }

    #[test]
    fn out_queue_is_bounded_in_bytes() {
        assert_eq!(out_queue_frames(1024), OUT_QUEUE_MAX_FRAMES);
        assert_eq!(out_queue_frames(1 << 20), 8);
        assert_eq!(out_queue_frames(64 << 20), 2);
        for chunk in [1024, 4096, 65536, 256 << 10, 1 << 20] {
            assert!(out_queue_frames(chunk) * chunk <= OUT_QUEUE_BYTES.max(2 * chunk));
        }
    }
    use airlock_proto::smux::{Decoder, SmuxFrame};
    use tokio::io::AsyncWriteExt;

    fn frames(payload: &[u8]) -> Vec<SmuxFrame> {
        let mut d = Decoder::new(1 << 20);
        d.push(payload).unwrap();
        std::iter::from_fn(|| d.next_frame().unwrap()).collect()
    }

    #[tokio::test]
    async fn takes_what_is_ready_in_frames_up_to_the_limits() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        a.write_all(&data).await.unwrap();
        let mut buf = FrameBuf::with_capacity(70_000);
        let got = read_psh_batch(&mut b, 7, &mut buf, 70_000, 32_768)
            .await
            .unwrap();
        assert!(got.open);
        assert!(buf.payload_len() <= 70_000);
        let framed = frames(buf.payload());
        assert_eq!(framed.len(), 3);
        assert!(framed
            .iter()
            .all(|f| f.sid == 7 && f.cmd == Cmd::Psh && f.data.len() <= 32_768));
        let joined: Vec<u8> = framed.iter().flat_map(|f| f.data.to_vec()).collect();
        assert_eq!(joined, data[..joined.len()]);
        assert_eq!(joined.len(), got.stream_bytes);
    }

    /// From a socket, one `readv` fills several full frames; the batch stops
    /// at its limit, later ones take the rest, and end of stream closes it.
    #[tokio::test]
    async fn a_socket_fills_several_frames_per_read() {
        let (mut near, far) = crate::testutil::tcp_pair().await;
        let (mut rd, _wr) = far.into_split();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        near.write_all(&data).await.unwrap();
        drop(near);
        let mut joined = Vec::new();
        let mut batches = 0;
        loop {
            let mut buf = FrameBuf::with_capacity(200_000);
            let got = read_psh_batch(&mut rd, 9, &mut buf, 200_000, 65_535)
                .await
                .unwrap();
            assert!(buf.payload_len() <= 200_000);
            let framed = frames(buf.payload());
            assert!(framed
                .iter()
                .all(|f| f.sid == 9 && f.cmd == Cmd::Psh && !f.data.is_empty()));
            assert!(framed.iter().all(|f| f.data.len() <= 65_535));
            let bytes: usize = framed.iter().map(|f| f.data.len()).sum();
            assert_eq!(bytes, got.stream_bytes);
            joined.extend(framed.iter().flat_map(|f| f.data.to_vec()));
            batches += 1;
            if !got.open {
                break;
            }
        }
        assert!(joined == data, "bytes differ or are out of order");
        // 300 000 bytes in batches of at most 200 000: two, plus the end.
        assert!(batches <= 3, "{batches} batches");
    }

    #[tokio::test]
    async fn end_of_stream_keeps_the_bytes_before_it() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(b"tail").await.unwrap();
        drop(a);
        let mut buf = FrameBuf::with_capacity(1024);
        let got = read_psh_batch(&mut b, 1, &mut buf, 1024, 512)
            .await
            .unwrap();
        assert_eq!(
            got,
            Batch {
                open: false,
                stream_bytes: 4
            }
        );
        let got = frames(buf.payload());
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].data[..], b"tail");
        let mut buf = FrameBuf::with_capacity(1024);
        let got = read_psh_batch(&mut b, 1, &mut buf, 1024, 512)
            .await
            .unwrap();
        assert!(!got.open);
        assert_eq!(buf.payload_len(), 0);
    }
}
