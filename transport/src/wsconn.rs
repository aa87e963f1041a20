//! RFC 6455 framing over an already-upgraded stream, shaped for relaying.
//!
//! tungstenite copies every outgoing message into its write buffer and
//! clears its read buffer before each read; on a tunnel carrying 1 MiB
//! payloads those were the largest user-space costs left in the gateway
//! (docs/PERFORMANCE.md). Here a received payload is read straight from the
//! stream into a buffer of exactly its length (and unmasked there while it is
//! still in cache), and a message the gateway forwards goes out as a header
//! plus the same `Bytes`, in one vectored write: the TLS layer's own copy into
//! its records is the only one left. Clients must mask: a large payload is
//! masked at write time, a piece at a time into a small buffer that is still
//! in cache when the TLS layer copies it into its records, rather than into
//! a second copy of the whole payload.
//!
//! tungstenite's message, error and header types are reused, so callers see
//! the same `Stream`/`Sink` they had.

use std::collections::VecDeque;
use std::io::{self, Cursor, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::task::{waker, ArcWake, AtomicWaker};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{FrameHeader, Utf8Bytes};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error, Message};

/// Bytes asked of the stream when looking for the next frame header. A
/// payload longer than what such a read brought along is read into its own
/// buffer, so this only bounds small frames and header reads.
const HEADER_READ: usize = 16 * 1024;

/// A `Sec-WebSocket-Extensions` token our client offers and our gateway
/// accepts, only over TLS: the client's frames go unmasked. Masking keeps
/// a client's chosen bytes off the wire of a cleartext connection, where a
/// caching proxy could misread them as HTTP (RFC 6455 §10.3); inside TLS
/// no proxy sees them, and dropping the client's copy-and-XOR pass and the
/// gateway's unmasking cut a tunnel's CPU per GB by about an eighth
/// (docs/PERFORMANCE.md). Stock peers never offer it and keep masking.
pub const UNMASKED_EXTENSION: &str = "x-airlock-unmasked";

/// Whether a `Sec-WebSocket-Extensions` value lists [`UNMASKED_EXTENSION`]
/// (comma-separated extensions, each with optional `;` parameters).
pub fn lists_unmasked_extension(header: &str) -> bool {
    header.split(',').any(|ext| {
        ext.split(';')
            .next()
            .is_some_and(|name| name.trim().eq_ignore_ascii_case(UNMASKED_EXTENSION))
    })
}

/// `poll_ready` says "full" once this much is queued and unwritten.
const WRITE_QUEUE_HIGH: usize = 256 * 1024;
/// Payloads up to this size share one buffer with their header, so a small
/// message never costs a vectored write of two slivers.
const COALESCE_BELOW: usize = 4096;
/// iovecs per vectored write.
const MAX_IOVECS: usize = 64;
/// Largest control-frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Masked bytes handed to the stream per write: small enough to stay in
/// cache between the XOR and the TLS layer's copy.
const MASK_CHUNK: usize = 64 * 1024;

/// Queued output: bytes to send as they are, or XORed with `mask` (the key
/// rotated to where `bytes` starts in its payload).
struct OutChunk {
    bytes: Bytes,
    mask: Option<[u8; 4]>,
}

/// A frame whose payload is still arriving.
struct Incoming {
    opcode: OpCode,
    is_final: bool,
    mask: Option<[u8; 4]>,
    len: usize,
    payload: BytesMut,
}

/// A websocket on `S` after the HTTP upgrade: a `Stream` of messages and a
/// `Sink` for them, as `tokio_tungstenite::WebSocketStream` is.
pub struct WsConn<S> {
    io: S,
    role: Role,
    max_message: usize,
    /// Read from the stream, not yet parsed.
    rbuf: BytesMut,
    frame: Option<Incoming>,
    /// A fragmented data message being put together.
    fragments: Option<(Data, BytesMut)>,
    /// The peer's close frame arrived, or the stream ended.
    read_done: bool,
    out: VecDeque<OutChunk>,
    /// Where a large masked payload is masked, [`MASK_CHUNK`] at a time.
    mask_scratch: BytesMut,
    out_len: usize,
    /// Only the latest ping is answered, so a ping flood cannot queue
    /// unbounded pongs while our writes are blocked.
    pong: Option<Bytes>,
    close_sent: bool,
    masks: MaskSource,
    /// The client's frames are masked (RFC 6455 §5.3) unless both ends
    /// agreed on [`UNMASKED_EXTENSION`].
    client_frames_masked: bool,
    wakers: Arc<WakerPair>,
}

/// The stream is polled with a waker that wakes both the last reader and
/// the last writer. Reading may write (pongs, the close reply) and a TLS
/// stream may write while reading, so with the two halves in different
/// tasks (`StreamExt::split`) one half's waker would otherwise replace the
/// other's in the socket's single write slot, and a blocked writer would
/// never be woken. tokio-tungstenite does the same.
#[derive(Default)]
struct WakerPair {
    read: AtomicWaker,
    write: AtomicWaker,
}

impl ArcWake for WakerPair {
    fn wake_by_ref(pair: &Arc<Self>) {
        pair.read.wake();
        pair.write.wake();
    }
}

impl<S> std::fmt::Debug for WsConn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("role", &self.role)
            .field("queued", &self.out_len)
            .field("close_sent", &self.close_sent)
            .field("read_done", &self.read_done)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    /// `already_read` holds bytes that arrived with the upgrade response,
    /// ahead of anything still in `io`.
    pub fn new(io: S, role: Role, max_message: usize, already_read: BytesMut) -> Self {
        WsConn {
            io,
            role,
            max_message,
            rbuf: already_read,
            frame: None,
            fragments: None,
            read_done: false,
            out: VecDeque::new(),
            mask_scratch: BytesMut::new(),
            out_len: 0,
            pong: None,
            close_sent: false,
            masks: MaskSource::default(),
            client_frames_masked: true,
            wakers: Arc::default(),
        }
    }

    /// Both ends agreed on [`UNMASKED_EXTENSION`]: the client's frames go
    /// unmasked (a server still takes masked ones).
    pub fn with_unmasked_client_frames(mut self) -> Self {
        self.client_frames_masked = false;
        self
    }

    fn proxy_waker(&self) -> Waker {
        waker(self.wakers.clone())
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Sends a close frame (once), flushes, and shuts the stream's write
    /// side. Does not wait for the peer's close frame.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), Error> {
        if !self.close_sent {
            self.queue_close(frame);
        }
        std::future::poll_fn(|cx| {
            self.wakers.write.register(cx.waker());
            let w = self.proxy_waker();
            self.poll_shutdown(&mut Context::from_waker(&w))
        })
        .await
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        ready!(self.poll_write_out(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        Poll::Ready(Ok(ready!(Pin::new(&mut self.io).poll_shutdown(cx))?))
    }

    fn queue_close(&mut self, frame: Option<CloseFrame>) {
        let mut payload = BytesMut::new();
        if let Some(f) = frame {
            payload.put_u16(u16::from(f.code));
            // A control payload is at most 125 bytes: cut the reason at a
            // character boundary rather than fail the close.
            let mut reason: &str = &f.reason;
            while reason.len() > MAX_CONTROL_PAYLOAD - 2 {
                let mut cut = reason.len() - 1;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason = &reason[..cut];
            }
            payload.put_slice(reason.as_bytes());
        }
        self.close_sent = true;
        self.queue_frame(OpCode::Control(Control::Close), payload.freeze());
    }

    fn queue_frame(&mut self, opcode: OpCode, payload: Bytes) {
        let header = FrameHeader {
            opcode,
            mask: match self.role {
                Role::Client if self.client_frames_masked => Some(self.masks.next()),
                Role::Client | Role::Server => None,
            },
            ..FrameHeader::default()
        };
        let len = payload.len();
        // A small payload shares its header's buffer (masked on the way in);
        // a large one is queued as it is and masked when written.
        let inline = if len < COALESCE_BELOW { len } else { 0 };
        let mut head = BytesMut::with_capacity(header.len(len as u64) + inline);
        // Formatting into memory cannot fail.
        let _ = header.format(len as u64, &mut (&mut head).writer());
        if len < COALESCE_BELOW {
            match header.mask {
                Some(key) => mask_into(&mut head, &payload, key),
                None => head.put_slice(&payload),
            }
            self.push_out(head.freeze(), None);
        } else {
            self.push_out(head.freeze(), None);
            self.push_out(payload, header.mask);
        }
    }

    fn push_out(&mut self, bytes: Bytes, mask: Option<[u8; 4]>) {
        self.out_len += bytes.len();
        self.out.push_back(OutChunk { bytes, mask });
    }

    /// Writes queued bytes until none are left or the stream blocks.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if let Some(p) = self.pong.take() {
            if !self.close_sent {
                self.queue_frame(OpCode::Control(Control::Pong), p);
            }
        }
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            // Plain chunks as they are; the first masked one ends the batch
            // with up to MASK_CHUNK of it masked into the scratch buffer.
            for (slot, chunk) in slices.iter_mut().zip(self.out.iter()) {
                count += 1;
                match chunk.mask {
                    None => *slot = IoSlice::new(&chunk.bytes),
                    Some(key) => {
                        let take = chunk.bytes.len().min(MASK_CHUNK);
                        self.mask_scratch.clear();
                        mask_into(&mut self.mask_scratch, &chunk.bytes[..take], key);
                        *slot = IoSlice::new(&self.mask_scratch);
                        break;
                    }
                }
            }
            let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
            }
            self.out_len -= n;
            let mut left = n;
            while left > 0 {
                let Some(front) = self.out.front_mut() else {
                    break;
                };
                if front.bytes.len() <= left {
                    left -= front.bytes.len();
                    self.out.pop_front();
                } else {
                    front.bytes.advance(left);
                    front.mask = front.mask.map(|key| rotated(key, left));
                    left = 0;
                }
            }
        }
        // The scratch buffer lives only while masked output is queued.
        self.mask_scratch = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    /// Reads the next complete message, answering pings and close frames.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        // Pongs and a close reply go out even if the owner is only reading
        // (tungstenite does the same): a blocked write is left for later.
        if self.pong.is_some() || !self.out.is_empty() {
            if let Poll::Ready(Err(e)) = self.poll_write_out(cx) {
                return Poll::Ready(Some(Err(e)));
            }
        }
        loop {
            if self.read_done {
                return Poll::Ready(None);
            }
            if self.frame.is_none() {
                match self.parse_header() {
                    Ok(Some(incoming)) => self.frame = Some(incoming),
                    Ok(None) => {
                        let n = match ready!(poll_read_into(
                            &mut self.io,
                            cx,
                            &mut self.rbuf,
                            HEADER_READ
                        )) {
                            Ok(n) => n,
                            Err(e) => return Poll::Ready(Some(Err(Error::Io(e)))),
                        };
                        if n == 0 {
                            self.read_done = true;
                            if self.rbuf.is_empty() && self.fragments.is_none() {
                                return Poll::Ready(None);
                            }
                            return Poll::Ready(Some(Err(Error::Protocol(
                                ProtocolError::ResetWithoutClosingHandshake,
                            ))));
                        }
                        continue;
                    }
                    Err(e) => {
                        self.read_done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            let Some(f) = self.frame.as_mut() else {
                continue;
            };
            while f.payload.len() < f.len {
                let at = f.payload.len();
                let n = match ready!(poll_read_into(&mut self.io, cx, &mut f.payload, f.len - at)) {
                    Ok(n) => n,
                    Err(e) => return Poll::Ready(Some(Err(Error::Io(e)))),
                };
                if n == 0 {
                    self.read_done = true;
                    return Poll::Ready(Some(Err(Error::Protocol(
                        ProtocolError::ResetWithoutClosingHandshake,
                    ))));
                }
                if let Some(key) = f.mask {
                    unmask(&mut f.payload[at..], key, at);
                }
            }
            let Some(f) = self.frame.take() else {
                continue;
            };
            match self.complete(f) {
                Ok(Some(m)) => {
                    if self.rbuf.is_empty() {
                        // Nothing buffered: an idle socket (thousands of
                        // control channels) holds no read buffer.
                        self.rbuf = BytesMut::new();
                    }
                    return Poll::Ready(Some(Ok(m)));
                }
                Ok(None) => {}
                Err(e) => {
                    self.read_done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    /// Parses a header from `rbuf` and checks it; the payload bytes already
    /// in `rbuf` move into the frame (without a copy when all are there).
    fn parse_header(&mut self) -> Result<Option<Incoming>, Error> {
        let mut cursor = Cursor::new(&self.rbuf[..]);
        let Some((header, len)) = FrameHeader::parse(&mut cursor)? else {
            return Ok(None);
        };
        let consumed = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(ProtocolError::NonZeroReservedBits.into());
        }
        match (self.role, header.mask.is_some()) {
            (Role::Server, false) if self.client_frames_masked => {
                return Err(ProtocolError::UnmaskedFrameFromClient.into())
            }
            (Role::Client, true) => return Err(ProtocolError::MaskedFrameFromServer.into()),
            _ => {}
        }
        let so_far = self.fragments.as_ref().map_or(0, |(_, b)| b.len());
        match header.opcode {
            OpCode::Control(c) => {
                if let Control::Reserved(x) = c {
                    return Err(ProtocolError::UnknownControlFrameType(x).into());
                }
                if !header.is_final {
                    return Err(ProtocolError::FragmentedControlFrame.into());
                }
                if len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(ProtocolError::ControlFrameTooBig.into());
                }
            }
            OpCode::Data(d) => {
                match (d, &self.fragments) {
                    (Data::Reserved(x), _) => {
                        return Err(ProtocolError::UnknownDataFrameType(x).into())
                    }
                    (Data::Continue, None) => {
                        return Err(ProtocolError::UnexpectedContinueFrame.into())
                    }
                    (Data::Text | Data::Binary, Some(_)) => {
                        return Err(ProtocolError::ExpectedFragment(d).into())
                    }
                    _ => {}
                }
                let total = (so_far as u64).saturating_add(len);
                if total > self.max_message as u64 {
                    return Err(CapacityError::MessageTooLong {
                        size: usize::try_from(total).unwrap_or(usize::MAX),
                        max_size: self.max_message,
                    }
                    .into());
                }
            }
        }
        // Bounded above: at most `max_message` (data) or 125 (control).
        let len = len as usize;
        self.rbuf.advance(consumed);
        let payload = if self.rbuf.len() >= len {
            self.rbuf.split_to(len)
        } else {
            // Sized to the announced length (already checked against the
            // limit) so it is never reallocated and copied as it fills; the
            // allocator hands out address space, and pages are only touched
            // as payload bytes arrive.
            let mut p = BytesMut::with_capacity(len);
            p.put_slice(&self.rbuf);
            self.rbuf.clear();
            p
        };
        let mut incoming = Incoming {
            opcode: header.opcode,
            is_final: header.is_final,
            mask: header.mask,
            len,
            payload,
        };
        if let Some(key) = incoming.mask {
            unmask(&mut incoming.payload[..], key, 0);
        }
        Ok(Some(incoming))
    }

    /// Turns a whole frame into a message, or keeps it as a fragment.
    fn complete(&mut self, f: Incoming) -> Result<Option<Message>, Error> {
        match f.opcode {
            OpCode::Control(Control::Ping) => {
                let data = f.payload.freeze();
                self.pong = Some(data.clone());
                Ok(Some(Message::Ping(data)))
            }
            OpCode::Control(Control::Pong) => Ok(Some(Message::Pong(f.payload.freeze()))),
            OpCode::Control(Control::Close) => {
                self.read_done = true;
                let frame = parse_close(f.payload.freeze())?;
                if !self.close_sent {
                    // Echo the code, as RFC 6455 §5.5.1 asks.
                    self.queue_close(frame.as_ref().map(|c| CloseFrame {
                        code: c.code,
                        reason: Utf8Bytes::default(),
                    }));
                }
                Ok(Some(Message::Close(frame)))
            }
            OpCode::Control(Control::Reserved(x)) => {
                Err(ProtocolError::UnknownControlFrameType(x).into())
            }
            OpCode::Data(Data::Continue) => {
                let Some((kind, mut buf)) = self.fragments.take() else {
                    return Err(ProtocolError::UnexpectedContinueFrame.into());
                };
                buf.put_slice(&f.payload);
                if f.is_final {
                    data_message(kind, buf)
                } else {
                    self.fragments = Some((kind, buf));
                    Ok(None)
                }
            }
            OpCode::Data(kind) => {
                if f.is_final {
                    data_message(kind, f.payload)
                } else {
                    self.fragments = Some((kind, f.payload));
                    Ok(None)
                }
            }
        }
    }
}

fn data_message(kind: Data, payload: BytesMut) -> Result<Option<Message>, Error> {
    match kind {
        Data::Text => Utf8Bytes::try_from(payload.freeze())
            .map(|t| Some(Message::Text(t)))
            .map_err(|e| Error::Utf8(e.to_string())),
        _ => Ok(Some(Message::Binary(payload.freeze()))),
    }
}

fn parse_close(mut payload: Bytes) -> Result<Option<CloseFrame>, Error> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::InvalidCloseSequence.into()),
        _ => {
            let code = CloseCode::from(payload.get_u16());
            let reason = Utf8Bytes::try_from(payload).map_err(|e| Error::Utf8(e.to_string()))?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// Reads at most `max` bytes into `buf`'s spare capacity (growing it if
/// needed), without zeroing it first.
fn poll_read_into<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    max: usize,
) -> Poll<io::Result<usize>> {
    buf.reserve(max);
    let spare = &mut buf.spare_capacity_mut()[..max];
    let start = spare.as_ptr();
    let mut read = ReadBuf::uninit(spare);
    ready!(Pin::new(io).poll_read(cx, &mut read))?;
    let filled = read.filled();
    let n = filled.len();
    if filled.as_ptr() != start.cast() || n > max {
        return Poll::Ready(Err(io::Error::other("reader replaced the read buffer")));
    }
    // SAFETY: the reader initialised the first `n` bytes of the spare
    // capacity (checked above to be this buffer's, and within `max`).
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

/// XORs `data`, which starts `offset` bytes into a masked payload.
fn unmask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotated(key, offset);
    let wide = widened(key);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let masked = xor_word(c, wide);
        c.copy_from_slice(&masked);
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Appends `src` XORed with `key` to `dst`: a plain copy, then the XOR over
/// the copy while it is in cache (no per-word `BytesMut` bookkeeping).
fn mask_into(dst: &mut BytesMut, src: &[u8], key: [u8; 4]) {
    let at = dst.len();
    dst.extend_from_slice(src);
    unmask(&mut dst[at..], key, 0);
}

/// The key repeated over 8 bytes, so masking goes a word at a time.
fn widened(key: [u8; 4]) -> u64 {
    u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ])
}

/// `word` (8 bytes) XORed with `wide`.
fn xor_word(word: &[u8], wide: u64) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(word);
    (u64::from_ne_bytes(w) ^ wide).to_ne_bytes()
}

fn rotated(key: [u8; 4], offset: usize) -> [u8; 4] {
    let r = offset % 4;
    [key[r], key[(r + 1) % 4], key[(r + 2) % 4], key[(r + 3) % 4]]
}

/// Masking keys from the system CSPRNG, fetched 64 at a time.
#[derive(Default)]
struct MaskSource {
    pool: Vec<[u8; 4]>,
}

impl MaskSource {
    fn next(&mut self) -> [u8; 4] {
        if let Some(k) = self.pool.pop() {
            return k;
        }
        let mut raw = [0u8; 256];
        if aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut raw)
            .is_err()
        {
            // No randomness: masking stays correct with any key, it only
            // loses the unpredictability that protects browser-era proxies.
            tracing::warn!("system random source failed; masking with a counter");
            raw.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        }
        self.pool = raw
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect();
        self.pool.pop().unwrap_or([0x5a; 4])
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsConn<S> {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.wakers.read.register(cx.waker());
        let w = this.proxy_waker();
        this.poll_message(&mut Context::from_waker(&w))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WsConn<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.out_len < WRITE_QUEUE_HIGH {
            return Poll::Ready(Ok(()));
        }
        this.wakers.write.register(cx.waker());
        let w = this.proxy_waker();
        ready!(this.poll_write_out(&mut Context::from_waker(&w)))?;
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        let this = self.get_mut();
        if this.close_sent {
            return Err(ProtocolError::SendAfterClosing.into());
        }
        let control_len = match &item {
            Message::Ping(p) | Message::Pong(p) => p.len(),
            _ => 0,
        };
        if control_len > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::ControlFrameTooBig.into());
        }
        match item {
            Message::Binary(b) => this.queue_frame(OpCode::Data(Data::Binary), b),
            Message::Text(t) => this.queue_frame(OpCode::Data(Data::Text), Bytes::from(t)),
            Message::Ping(p) => this.queue_frame(OpCode::Control(Control::Ping), p),
            Message::Pong(p) => this.queue_frame(OpCode::Control(Control::Pong), p),
            Message::Close(c) => this.queue_close(c),
            Message::Frame(_) => {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "raw frames are not sent on Airlock sockets",
                )))
            }
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        this.wakers.write.register(cx.waker());
        let w = this.proxy_waker();
        let cx = &mut Context::from_waker(&w);
        ready!(this.poll_write_out(cx))?;
        Poll::Ready(Ok(ready!(Pin::new(&mut this.io).poll_flush(cx))?))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.queue_close(None);
        }
        this.wakers.write.register(cx.waker());
        let w = this.proxy_waker();
        this.poll_shutdown(&mut Context::from_waker(&w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::noise;
    use futures_util::{SinkExt, StreamExt};
    use std::time::Duration;
    use tokio::io::{duplex, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::WebSocketStream;

    const MAX: usize = 2 << 20;

    /// Ours on one end, tungstenite (an independent implementation) on the
    /// other, over a pipe small enough that every large write is partial.
    async fn pair(ours: Role) -> (WsConn<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (a, b) = duplex(8 * 1024);
        let theirs = match ours {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        };
        let peer = WebSocketStream::from_raw_socket(b, theirs, None).await;
        (WsConn::new(a, ours, MAX, BytesMut::new()), peer)
    }

    #[tokio::test]
    async fn messages_cross_both_ways_in_both_roles() {
        for role in [Role::Client, Role::Server] {
            let (mut ours, mut peer) = pair(role).await;
            let big = Bytes::from(noise(1 << 20, 7));
            let small = Bytes::from_static(b"ack");
            let sent = big.clone();
            let writer = tokio::spawn(async move {
                peer.send(Message::Binary(sent)).await.unwrap();
                peer.send(Message::text("hello")).await.unwrap();
                let mut got = Vec::new();
                for _ in 0..3 {
                    got.push(peer.next().await.unwrap().unwrap());
                }
                (peer, got)
            });
            assert_eq!(
                ours.next().await.unwrap().unwrap(),
                Message::Binary(big.clone())
            );
            assert_eq!(ours.next().await.unwrap().unwrap(), Message::text("hello"));
            ours.send(Message::Binary(big.clone())).await.unwrap();
            ours.send(Message::Binary(small.clone())).await.unwrap();
            ours.send(Message::text("bye")).await.unwrap();
            let (_peer, got) = writer.await.unwrap();
            assert_eq!(
                got,
                vec![
                    Message::Binary(big.clone()),
                    Message::Binary(small.clone()),
                    Message::text("bye")
                ],
                "{role:?}"
            );
        }
    }

    #[tokio::test]
    async fn pings_are_answered_by_a_reader_and_close_is_echoed() {
        for role in [Role::Client, Role::Server] {
            let (mut ours, mut peer) = pair(role).await;
            peer.send(Message::Ping(Bytes::from_static(b"p1")))
                .await
                .unwrap();
            assert_eq!(
                ours.next().await.unwrap().unwrap(),
                Message::Ping(Bytes::from_static(b"p1"))
            );
            peer.send(Message::Close(Some(CloseFrame {
                code: CloseCode::Restart,
                reason: "going away".into(),
            })))
            .await
            .unwrap();
            let reader = tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(Ok(m)) = peer.next().await {
                    seen.push(m);
                }
                seen
            });
            match ours.next().await.unwrap().unwrap() {
                Message::Close(Some(f)) => {
                    assert_eq!(f.code, CloseCode::Restart);
                    assert_eq!(f.reason.as_str(), "going away");
                }
                other => panic!("expected close, got {other:?}"),
            }
            assert!(ours.next().await.is_none());
            drop(ours);
            let seen = reader.await.unwrap();
            assert_eq!(
                seen[0],
                Message::Pong(Bytes::from_static(b"p1")),
                "{role:?}"
            );
            assert!(
                matches!(&seen[1], Message::Close(Some(f)) if f.code == CloseCode::Restart),
                "{seen:?}"
            );
            assert!(ours_send_after_close_fails(role).await);
        }
    }

    async fn ours_send_after_close_fails(role: Role) -> bool {
        let (mut ours, _peer) = pair(role).await;
        ours.close(None).await.unwrap();
        ours.send(Message::text("late")).await.is_err()
    }

    #[tokio::test]
    async fn fragmented_messages_are_joined() {
        let (mut ours, mut peer) = pair(Role::Client).await;
        let data = noise(300_000, 3);
        let (a, b) = data.split_at(100_000);
        let (a, b) = (a.to_vec(), b.to_vec());
        // The pipe is smaller than a fragment: the peer writes from its own task.
        let _writer = tokio::spawn(async move {
            peer.send(Message::Frame(Frame::message(
                a,
                OpCode::Data(Data::Binary),
                false,
            )))
            .await
            .unwrap();
            // A control frame may arrive between fragments.
            peer.send(Message::Ping(Bytes::from_static(b"mid")))
                .await
                .unwrap();
            peer.send(Message::Frame(Frame::message(
                b,
                OpCode::Data(Data::Continue),
                true,
            )))
            .await
            .unwrap();
            peer
        });
        assert_eq!(
            ours.next().await.unwrap().unwrap(),
            Message::Ping(Bytes::from_static(b"mid"))
        );
        assert_eq!(
            ours.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from(data))
        );
    }

    /// Raw bytes into a server-role socket.
    async fn server_reading(raw: &[u8], max: usize) -> Option<Result<Message, Error>> {
        let (a, mut b) = duplex(64 * 1024);
        b.write_all(raw).await.unwrap();
        drop(b);
        let mut ours = WsConn::new(a, Role::Server, max, BytesMut::new());
        ours.next().await
    }

    fn masked_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let key = [1u8, 2, 3, 4];
        let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n < 65536 => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&key);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        v
    }

    #[tokio::test]
    async fn hostile_frames_are_errors_not_allocations() {
        // Announces 1 GiB against a 2 MiB limit, sends nothing more.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 30).to_be_bytes());
        huge.extend_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(
            server_reading(&huge, MAX).await,
            Some(Err(Error::Capacity(CapacityError::MessageTooLong { .. })))
        ));
        // Fragments that add up past the limit.
        let mut two = masked_frame(0x2, false, &[7u8; 40]);
        two.extend(masked_frame(0x0, true, &[7u8; 40]));
        assert!(matches!(
            server_reading(&two, 64).await,
            Some(Err(Error::Capacity(_)))
        ));
        // A client must mask.
        assert!(matches!(
            server_reading(&[0x82, 0x01, 0xff], MAX).await,
            Some(Err(Error::Protocol(ProtocolError::UnmaskedFrameFromClient)))
        ));
        // Reserved bits without an extension.
        let mut rsv = masked_frame(0x2, true, b"x");
        rsv[0] |= 0x40;
        assert!(matches!(
            server_reading(&rsv, MAX).await,
            Some(Err(Error::Protocol(ProtocolError::NonZeroReservedBits)))
        ));
        // Control frames: at most 125 bytes, never fragmented.
        assert!(matches!(
            server_reading(&masked_frame(0x9, true, &[0u8; 126]), MAX).await,
            Some(Err(Error::Protocol(ProtocolError::ControlFrameTooBig)))
        ));
        assert!(matches!(
            server_reading(&masked_frame(0x9, false, b"p"), MAX).await,
            Some(Err(Error::Protocol(ProtocolError::FragmentedControlFrame)))
        ));
        // Continuation with nothing to continue; bad UTF-8 in a text frame.
        assert!(matches!(
            server_reading(&masked_frame(0x0, true, b"x"), MAX).await,
            Some(Err(Error::Protocol(ProtocolError::UnexpectedContinueFrame)))
        ));
        assert!(matches!(
            server_reading(&masked_frame(0x1, true, &[0xff, 0xfe]), MAX).await,
            Some(Err(Error::Utf8(_)))
        ));
        // Cut off mid-payload: an error, not a clean end.
        let mut cut = masked_frame(0x2, true, &[1u8; 1000]);
        cut.truncate(500);
        assert!(matches!(
            server_reading(&cut, MAX).await,
            Some(Err(Error::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            )))
        ));
        // A clean end between frames is the end of the stream.
        assert!(server_reading(&[], MAX).await.is_none());
    }

    #[tokio::test]
    async fn a_server_never_masks_and_a_client_always_does() {
        for (role, masked) in [(Role::Server, false), (Role::Client, true)] {
            let (a, mut b) = duplex(64 * 1024);
            let mut ours = WsConn::new(a, role, MAX, BytesMut::new());
            ours.send(Message::Binary(Bytes::from_static(b"abcdefghij")))
                .await
                .unwrap();
            let mut raw = [0u8; 2];
            tokio::io::AsyncReadExt::read_exact(&mut b, &mut raw)
                .await
                .unwrap();
            assert_eq!(raw[1] & 0x80 != 0, masked, "{role:?}");
        }
    }

    /// With the unmasked extension agreed, a client's frames (small ones,
    /// coalesced with their header, and large ones) go out unmasked and our
    /// server takes them, as it still takes masked ones; without it, our
    /// server refuses an unmasked frame.
    #[tokio::test]
    async fn unmasked_extension_drops_the_clients_mask_only_when_agreed() {
        let big = Bytes::from(vec![7u8; 200_000]);
        for client_unmasked in [true, false] {
            let (a, b) = duplex(1 << 20);
            let client = WsConn::new(a, Role::Client, MAX, BytesMut::new());
            let mut client = if client_unmasked {
                client.with_unmasked_client_frames()
            } else {
                client
            };
            let mut server =
                WsConn::new(b, Role::Server, MAX, BytesMut::new()).with_unmasked_client_frames();
            for payload in [Bytes::from_static(b"small"), big.clone()] {
                client.send(Message::Binary(payload.clone())).await.unwrap();
                let got = server.next().await.unwrap().unwrap();
                assert_eq!(got, Message::Binary(payload));
            }
        }
        let (a, mut b) = duplex(64 * 1024);
        let mut client =
            WsConn::new(a, Role::Client, MAX, BytesMut::new()).with_unmasked_client_frames();
        client
            .send(Message::Binary(Bytes::from_static(b"abc")))
            .await
            .unwrap();
        let mut raw = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut b, &mut raw)
            .await
            .unwrap();
        assert_eq!(raw, [0x82, 0x03, b'a', b'b', b'c'], "sent unmasked");
        assert!(matches!(
            server_reading(&raw, MAX).await,
            Some(Err(Error::Protocol(ProtocolError::UnmaskedFrameFromClient)))
        ));
    }

    #[test]
    fn the_unmasked_extension_is_found_among_others() {
        assert!(lists_unmasked_extension(UNMASKED_EXTENSION));
        assert!(lists_unmasked_extension(
            "permessage-deflate; client_max_window_bits, X-Airlock-Unmasked"
        ));
        assert!(lists_unmasked_extension("x-airlock-unmasked; v=1"));
        assert!(!lists_unmasked_extension("permessage-deflate"));
        assert!(!lists_unmasked_extension("x-airlock-unmasked-not"));
    }

    #[tokio::test]
    async fn bytes_that_came_with_the_upgrade_are_read_first() {
        let (a, b) = duplex(64 * 1024);
        let mut peer = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        let early = BytesMut::from(&[0x82u8, 0x03, b'o', b'n', b'e'][..]);
        let mut ours = WsConn::new(a, Role::Client, MAX, early);
        peer.send(Message::binary(b"two".to_vec())).await.unwrap();
        assert_eq!(
            ours.next().await.unwrap().unwrap(),
            Message::binary(b"one".to_vec())
        );
        assert_eq!(
            ours.next().await.unwrap().unwrap(),
            Message::binary(b"two".to_vec())
        );
    }

    /// The two halves in two tasks: the writer is blocked on a full pipe
    /// while the reader answers a stream of pings. The writer must still be
    /// woken when the pipe drains.
    #[tokio::test]
    async fn split_halves_do_not_steal_each_others_wakeups() {
        let (ours, mut peer) = pair(Role::Client).await;
        let (mut sink, mut stream) = ours.split();
        let writer = tokio::spawn(async move {
            for i in 0..16u32 {
                sink.send(Message::Binary(Bytes::from(noise(256 * 1024, i))))
                    .await
                    .unwrap();
            }
            sink
        });
        let reader = tokio::spawn(async move {
            let mut pings = 0;
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Message::Ping(_)) {
                    pings += 1;
                }
            }
            pings
        });
        let drive = async move {
            let mut received = 0;
            let mut pongs = 0;
            while received < 16 {
                peer.send(Message::Ping(Bytes::from_static(b"k")))
                    .await
                    .unwrap();
                match peer.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        assert_eq!(b.len(), 256 * 1024);
                        received += 1;
                    }
                    Some(Ok(Message::Pong(_))) => pongs += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            let mut sink = writer.await.unwrap();
            sink.close().await.unwrap();
            drop(peer);
            pongs
        };
        let pongs = tokio::time::timeout(Duration::from_secs(20), drive)
            .await
            .expect("no progress in 20 s: a half was never woken");
        assert!(reader.await.unwrap() > 0);
        assert!(pongs > 0);
    }

    #[test]
    fn masking_matches_byte_by_byte_at_any_offset() {
        let key = [0x11, 0x22, 0x44, 0x88];
        let data = noise(1031, 9);
        let reference: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        let mut out = BytesMut::new();
        mask_into(&mut out, &data, key);
        assert_eq!(&out[..], &reference[..]);
        for split in [0, 1, 2, 3, 5, 8, 13, 1030] {
            let mut v = reference.clone();
            let (a, b) = v.split_at_mut(split);
            unmask(a, key, 0);
            unmask(b, key, split);
            assert_eq!(v, data, "split at {split}");
        }
    }
}
