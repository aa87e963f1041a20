//! TLS 1.3 over TCP with rustls for the handshake and the record layer here.
//!
//! rustls's buffered connection copies every received byte three times in
//! user space (into its deframer, out of it into a per-record `Vec`, and out
//! of that into the reader's buffer) and allocates per record; on a tunnel
//! relaying a gigabyte that was about half of the gateway's CPU. rustls's
//! kernel-offload API (`dangerous_into_kernel_connection`, made for kTLS)
//! hands over the traffic keys once the handshake is done and keeps doing
//! what only it should: deriving the next keys on a KeyUpdate and taking
//! session tickets. This module is the "kernel": records are read straight
//! into one buffer and decrypted from there into the caller's buffer, and
//! outgoing data is encrypted from the caller's buffer into the record
//! buffer (RFC 8446 §5.2–5.5). aws-lc's AES-GCM works out of place, so the
//! only user-space pass over a byte is the cipher's.
//!
//! TLS 1.3 only: the handshake fails cleanly on a peer offering only 1.2.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use aws_lc_rs::aead;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;
/// Largest plaintext in one record (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest record body a peer may send (§5.2: plaintext + type + padding + tag).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const MAX_RECORD: usize = HEADER_LEN + MAX_CIPHERTEXT;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const ALERT_CLOSE_NOTIFY: u8 = 0;

/// Receive buffer while busy: several records per `recv`, and under glibc's
/// mmap threshold so it comes from the heap rather than fresh pages.
const READ_BUF: usize = 112 * 1024;
/// A read returning less than this is a quiet one.
const QUIET_READ: usize = 4 * 1024;
/// Quiet reads in a row after which an empty receive buffer is dropped, so
/// idle connections (agents' control channels) hold no buffer.
const QUIET_READS: u8 = 16;
/// Ciphertext held for the socket before a write waits.
pub const SEND_BUFFER: usize = crate::tls::TLS_SEND_BUFFER;
/// Caller slices gathered into one record at most (a websocket writes up to
/// 64: headers and payloads of small queued messages).
const PARTS_PER_RECORD: usize = 64;
/// Handshake bytes buffered at most (a certificate chain spans records).
const MAX_HANDSHAKE_BUF: usize = 256 * 1024;
/// Application data that arrived with the handshake's last flight, at most.
const MAX_EARLY_PLAINTEXT: usize = 64 * 1024;
/// Records sealed under one key before we roll it (RFC 8446 §5.5 puts
/// AES-GCM's limit at 2^24.5 full records).
const KEY_UPDATE_AFTER: u64 = if cfg!(test) { 64 } else { 1 << 24 };

/// Handshake timeouts are the caller's (wrap `accept`/`connect`).
pub async fn accept(config: Arc<rustls::ServerConfig>, tcp: TcpStream) -> io::Result<TlsStream> {
    let mut conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut tcp = tcp;
    let done = handshake(&mut tcp, &mut conn).await?;
    let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
    TlsStream::new(tcp, Kernel::Server(kernel), secrets, done)
}

pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    tcp: TcpStream,
) -> io::Result<TlsStream> {
    let mut conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
    let mut tcp = tcp;
    let done = handshake(&mut tcp, &mut conn).await?;
    let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
    TlsStream::new(tcp, Kernel::Client(kernel), secrets, done)
}

/// A client config usable with [`connect`]: the same roots and settings,
/// with the traffic keys released to this module after the handshake.
pub fn client_config(base: &Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    if base.enable_secret_extraction {
        return base.clone();
    }
    let mut cfg = (**base).clone();
    cfg.enable_secret_extraction = true;
    Arc::new(cfg)
}

enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_rx_secret(),
            Kernel::Server(k) => k.update_rx_secret(),
        }
    }

    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_tx_secret(),
            Kernel::Server(k) => k.update_tx_secret(),
        }
    }

    fn version(&self) -> ProtocolVersion {
        match self {
            Kernel::Client(k) => k.protocol_version(),
            Kernel::Server(k) => k.protocol_version(),
        }
    }
}

/// One direction's key and sequence number.
struct RecordKey {
    key: aead::LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl RecordKey {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> io::Result<RecordKey> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(io::Error::other("TLS: unsupported cipher suite")),
        };
        let key = aead::UnboundKey::new(alg, key.as_ref())
            .map_err(|_| io::Error::other("TLS: bad traffic key length"))?;
        let iv: [u8; aead::NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| io::Error::other("TLS: bad IV length"))?;
        Ok(RecordKey {
            key: aead::LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The per-record nonce (§5.3): the IV XORed with the sequence number,
    /// which then advances. A wrapped sequence number would reuse nonces.
    fn next_nonce(&mut self) -> io::Result<aead::Nonce> {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| io::Error::other("TLS: record sequence number exhausted"))?;
        Ok(aead::Nonce::assume_unique_for_key(nonce))
    }
}

/// What the handshake left behind for the record layer.
struct Handshaken {
    /// Ciphertext read past the last handshake record.
    ciphertext: Vec<u8>,
    /// Application data decrypted by rustls along with the last flight.
    plaintext: Vec<u8>,
}

trait Unbuffered {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
}

/// Drives rustls's unbuffered connection until it may send application data
/// with nothing left to transmit: the point where the keys may be handed over.
async fn handshake<C: Unbuffered>(tcp: &mut TcpStream, conn: &mut C) -> io::Result<Handshaken> {
    let mut incoming = vec![0u8; MAX_RECORD];
    let mut used = 0usize;
    let mut outgoing = vec![0u8; MAX_RECORD];
    let mut out_used = 0usize;
    let mut plaintext = Vec::new();
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process(&mut incoming[..used]);
        let mut read_more = false;
        let mut transmit = false;
        let mut finished = false;
        match state.map_err(tls_error)? {
            ConnectionState::EncodeTlsData(mut encoder) => loop {
                match encoder.encode(&mut outgoing[out_used..]) {
                    Ok(n) => {
                        out_used += n;
                        break;
                    }
                    Err(EncodeError::InsufficientSize(e)) => {
                        if out_used + e.required_size > MAX_HANDSHAKE_BUF {
                            return Err(io::Error::other("TLS: handshake flight too large"));
                        }
                        outgoing.resize(out_used + e.required_size, 0);
                    }
                    Err(e) => return Err(io::Error::other(format!("TLS: {e}"))),
                }
            },
            ConnectionState::TransmitTlsData(done) => {
                done.done();
                transmit = true;
            }
            ConnectionState::BlockedHandshake => read_more = true,
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    let record = record.map_err(tls_error)?;
                    discard += record.discard;
                    if plaintext.len() + record.payload.len() > MAX_EARLY_PLAINTEXT {
                        return Err(io::Error::other("TLS: too much data during the handshake"));
                    }
                    plaintext.extend_from_slice(record.payload);
                }
            }
            ConnectionState::WriteTraffic(_) => finished = true,
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(io::ErrorKind::UnexpectedEof.into())
            }
            other => {
                return Err(io::Error::other(format!(
                    "TLS: unexpected state {other:?} during the handshake"
                )))
            }
        }
        if discard > 0 {
            incoming.copy_within(discard..used, 0);
            used -= discard;
        }
        if transmit {
            tcp.write_all(&outgoing[..out_used]).await?;
            out_used = 0;
        }
        if finished {
            // Anything flushed already; nothing encoded can be pending here
            // (rustls reports EncodeTlsData before WriteTraffic).
            incoming.truncate(used);
            return Ok(Handshaken {
                ciphertext: incoming,
                plaintext,
            });
        }
        if read_more {
            if used == incoming.len() {
                if incoming.len() >= MAX_HANDSHAKE_BUF {
                    return Err(io::Error::other("TLS: handshake message too large"));
                }
                incoming.resize((incoming.len() * 2).min(MAX_HANDSHAKE_BUF), 0);
            }
            let n = tcp.read(&mut incoming[used..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            used += n;
        }
    }
}

/// A TLS 1.3 stream after the handshake. Reads and writes are independent
/// (one task may read while another writes through a split).
pub struct TlsStream {
    tcp: TcpStream,
    kernel: Kernel,
    rx: RecordKey,
    tx: RecordKey,
    /// Received bytes: `[plain]` decrypted and not yet read, then
    /// `[cipher_start..cipher_end)` not yet opened. Empty and unallocated
    /// while the connection is quiet.
    rbuf: Vec<u8>,
    plain_start: usize,
    plain_end: usize,
    cipher_start: usize,
    cipher_end: usize,
    quiet_reads: u8,
    /// close_notify received: reads return end of stream.
    read_closed: bool,
    /// Sealed records not yet taken by the socket, from `wpos`.
    wbuf: Vec<u8>,
    wpos: usize,
    close_sent: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of Debug output.
        f.debug_struct("TlsStream")
            .field("peer", &self.tcp.peer_addr().ok())
            .field("rx_seq", &self.rx.seq)
            .field("tx_seq", &self.tx.seq)
            .finish_non_exhaustive()
    }
}

impl TlsStream {
    /// The connection under the records.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    fn new(
        tcp: TcpStream,
        kernel: Kernel,
        secrets: rustls::ExtractedSecrets,
        done: Handshaken,
    ) -> io::Result<TlsStream> {
        if kernel.version() != ProtocolVersion::TLSv1_3 {
            return Err(io::Error::other(
                "TLS: the peer negotiated TLS 1.2; Airlock needs TLS 1.3",
            ));
        }
        let rx = RecordKey::new(secrets.rx)?;
        let tx = RecordKey::new(secrets.tx)?;
        // The early plaintext goes first in the receive buffer, the
        // unopened ciphertext right after it.
        let mut rbuf = done.plaintext;
        let plain_end = rbuf.len();
        rbuf.extend_from_slice(&done.ciphertext);
        let cipher_end = rbuf.len();
        Ok(TlsStream {
            tcp,
            kernel,
            rx,
            tx,
            rbuf,
            plain_start: 0,
            plain_end,
            cipher_start: plain_end,
            cipher_end,
            quiet_reads: 0,
            read_closed: false,
            wbuf: Vec::new(),
            wpos: 0,
            close_sent: false,
        })
    }

    /// The next complete record's header and body range, if one is buffered.
    fn next_record(&self) -> io::Result<Option<([u8; HEADER_LEN], std::ops::Range<usize>)>> {
        let avail = self.cipher_end - self.cipher_start;
        if avail < HEADER_LEN {
            return Ok(None);
        }
        let at = self.cipher_start;
        let header: [u8; HEADER_LEN] = self.rbuf[at..at + HEADER_LEN].try_into().unwrap();
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        // After the handshake every TLS 1.3 record is an encrypted one.
        if header[0] != CONTENT_APPLICATION_DATA {
            return Err(protocol_error("unexpected record type after the handshake"));
        }
        if len > MAX_CIPHERTEXT {
            return Err(protocol_error("record too large"));
        }
        if len < TAG_LEN + 1 {
            return Err(protocol_error("record too short"));
        }
        if avail < HEADER_LEN + len {
            return Ok(None);
        }
        Ok(Some((header, at + HEADER_LEN..at + HEADER_LEN + len)))
    }

    /// Opens the next complete record in the buffer, if there is one.
    /// Application data goes straight into `dest` when it has room for the
    /// whole record (decrypted out of place: no copy of its own), else it
    /// is opened in place and becomes the readable plaintext. Alerts and
    /// post-handshake messages are handled here.
    fn open_record(&mut self, dest: Option<&mut ReadBuf<'_>>) -> io::Result<bool> {
        let Some((header, body)) = self.next_record()? else {
            return Ok(false);
        };
        let nonce = self.rx.next_nonce()?;
        let inner_len = body.len() - TAG_LEN;
        if let Some(dest) = dest.filter(|d| d.remaining() >= inner_len) {
            // SAFETY: the AEAD only writes through this slice (aws-lc takes
            // its pointer and length), and only the bytes it wrote are then
            // marked initialised; tokio passes unfilled buffers to `read` the
            // same way.
            let out = unsafe {
                &mut *(&mut dest.unfilled_mut()[..inner_len] as *mut [std::mem::MaybeUninit<u8>]
                    as *mut [u8])
            };
            let (ciphertext, tag) = self.rbuf[body.clone()].split_at(inner_len);
            self.rx
                .key
                .open_separate_gather(nonce, aead::Aad::from(header), ciphertext, tag, out)
                .map_err(|_| protocol_error("record failed authentication"))?;
            self.cipher_start = body.end;
            let (content_type, len) = inner_content(out)?;
            if content_type == CONTENT_APPLICATION_DATA {
                // SAFETY: the first `len` unfilled bytes were written above.
                unsafe { dest.assume_init(len) };
                dest.advance(len);
                return Ok(true);
            }
            let content = out[..len].to_vec();
            self.handle_control(content_type, &content)?;
            return Ok(true);
        }
        let opened = self
            .rx
            .key
            .open_in_place(nonce, aead::Aad::from(header), &mut self.rbuf[body.clone()])
            .map_err(|_| protocol_error("record failed authentication"))?;
        let (content_type, len) = inner_content(opened)?;
        self.cipher_start = body.end;
        let content = body.start..body.start + len;
        if content_type == CONTENT_APPLICATION_DATA {
            self.plain_start = content.start;
            self.plain_end = content.end;
            return Ok(true);
        }
        let content = self.rbuf[content].to_vec();
        self.handle_control(content_type, &content)?;
        Ok(true)
    }

    /// An alert or post-handshake message (§6, §4.6).
    fn handle_control(&mut self, content_type: u8, content: &[u8]) -> io::Result<()> {
        match content_type {
            CONTENT_ALERT => {
                if content.len() != 2 {
                    return Err(protocol_error("malformed alert"));
                }
                if content[1] == ALERT_CLOSE_NOTIFY {
                    self.read_closed = true;
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("TLS: peer sent alert {}", content[1]),
                    ))
                }
            }
            CONTENT_HANDSHAKE => self.post_handshake(content),
            _ => Err(protocol_error("unexpected content type")),
        }
    }

    /// [`Self::open_record`], then sends a KeyUpdate reply it queued.
    fn open_next(&mut self, dest: Option<&mut ReadBuf<'_>>) -> io::Result<bool> {
        let opened = self.open_record(dest)?;
        if self.pending_write() > 0 {
            self.try_drain();
        }
        Ok(opened)
    }

    fn post_handshake(&mut self, mut messages: &[u8]) -> io::Result<()> {
        while !messages.is_empty() {
            if messages.len() < 4 {
                return Err(protocol_error("truncated handshake message"));
            }
            let typ = messages[0];
            let len = u32::from_be_bytes([0, messages[1], messages[2], messages[3]]) as usize;
            // Peers send each post-handshake message whole in one record;
            // one spanning records is refused rather than reassembled.
            let Some(body) = messages.get(4..4 + len) else {
                return Err(protocol_error("fragmented post-handshake message"));
            };
            match (typ, &mut self.kernel) {
                (HANDSHAKE_NEW_SESSION_TICKET, Kernel::Client(k)) => {
                    k.handle_new_session_ticket(body).map_err(tls_error)?
                }
                (HANDSHAKE_KEY_UPDATE, _) => {
                    let request_update = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(protocol_error("malformed KeyUpdate")),
                    };
                    if messages.len() != 4 + len {
                        // §5.1: a key change must end its record.
                        return Err(protocol_error("data after KeyUpdate in one record"));
                    }
                    self.rx = RecordKey::new(self.kernel.update_rx().map_err(tls_error)?)?;
                    if request_update {
                        self.send_key_update()?;
                    }
                }
                _ => return Err(protocol_error("unexpected post-handshake message")),
            }
            messages = &messages[4 + len..];
        }
        Ok(())
    }

    /// Seals one record of `content_type` from `parts` (gathered in order,
    /// at most [`MAX_PLAINTEXT`] bytes) onto the send buffer.
    fn seal_record(&mut self, parts: &[&[u8]], content_type: u8) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        debug_assert!(len <= MAX_PLAINTEXT);
        let start = self.wbuf.len();
        let body_len = len + 1 + TAG_LEN;
        let header = [
            CONTENT_APPLICATION_DATA,
            3,
            3,
            (body_len >> 8) as u8,
            body_len as u8,
        ];
        self.wbuf.reserve(HEADER_LEN + body_len);
        self.wbuf.extend_from_slice(&header);
        if let [part] = parts {
            // One slice (the bulk case: a large payload cut into records):
            // sealed out of place, straight from the caller's bytes.
            let nonce = self.tx.next_nonce()?;
            let spare = &mut self.wbuf.spare_capacity_mut()[..body_len];
            // SAFETY: as in `open_record`, the AEAD only writes through
            // this slice, and the length is set only after it wrote all of it.
            let out = unsafe { &mut *(spare as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
            let (ciphertext, type_and_tag) = out.split_at_mut(len);
            self.tx
                .key
                .seal_out_of_place_scatter(
                    nonce,
                    aead::Aad::from(header),
                    part,
                    ciphertext,
                    &[content_type],
                    type_and_tag,
                )
                .map_err(|_| io::Error::other("TLS: seal failed"))?;
            // SAFETY: `body_len` bytes after the header were written above.
            unsafe { self.wbuf.set_len(start + HEADER_LEN + body_len) };
            return Ok(());
        }
        for part in parts {
            self.wbuf.extend_from_slice(part);
        }
        self.wbuf.push(content_type);
        let nonce = self.tx.next_nonce()?;
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(
                nonce,
                aead::Aad::from(header),
                &mut self.wbuf[start + HEADER_LEN..],
            )
            .map_err(|_| io::Error::other("TLS: seal failed"))?;
        self.wbuf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Announces and switches to our next traffic key (§4.6.3).
    fn send_key_update(&mut self) -> io::Result<()> {
        self.seal_record(&[&[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0]], CONTENT_HANDSHAKE)?;
        self.tx = RecordKey::new(self.kernel.update_tx().map_err(tls_error)?)?;
        Ok(())
    }

    fn pending_write(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Writes buffered records until the buffer is empty or the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.wbuf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.send_buffer_emptied();
        Poll::Ready(Ok(()))
    }

    /// Without registering a waker: the reading side uses this for a
    /// KeyUpdate reply, and must not take the writer's wake-up.
    fn try_drain(&mut self) {
        if self.wbuf.is_empty() {
            return;
        }
        while self.wpos < self.wbuf.len() {
            match self.tcp.try_write(&self.wbuf[self.wpos..]) {
                Ok(n) if n > 0 => self.wpos += n,
                _ => return,
            }
        }
        self.send_buffer_emptied();
    }

    /// Everything sealed went out. After a small write (interactive or
    /// keep-alive traffic) the buffer is given back, so a session that moved
    /// bulk data and went quiet does not keep its largest buffer.
    fn send_buffer_emptied(&mut self) {
        if self.wbuf.len() < QUIET_READ && self.wbuf.capacity() > MAX_RECORD {
            self.wbuf = Vec::new();
        } else {
            self.wbuf.clear();
        }
        self.wpos = 0;
    }

    /// Reads more ciphertext; `Ok(0)` is the peer closing TCP. The buffer
    /// is allocated only once the socket is readable, so a connection
    /// waiting quietly holds none.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.cipher_start == self.cipher_end {
            self.cipher_start = 0;
            self.cipher_end = 0;
        }
        loop {
            if self.rbuf.len() < READ_BUF {
                if self.rbuf.is_empty() {
                    ready!(self.tcp.poll_read_ready(cx))?;
                }
                self.rbuf.resize(READ_BUF, 0);
            }
            // Every complete record is opened before a read, so what is
            // left is under one record; moving it down keeps reads large.
            if self.cipher_start > 0 && self.rbuf.len() - self.cipher_end < READ_BUF / 2 {
                self.rbuf.copy_within(self.cipher_start..self.cipher_end, 0);
                self.cipher_end -= self.cipher_start;
                self.cipher_start = 0;
            }
            debug_assert!(self.cipher_end < self.rbuf.len());
            match self.tcp.try_read(&mut self.rbuf[self.cipher_end..]) {
                Ok(n) => {
                    self.cipher_end += n;
                    if n < QUIET_READ {
                        self.quiet_reads = self.quiet_reads.saturating_add(1);
                    } else {
                        self.quiet_reads = 0;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.cipher_end == 0 && self.quiet_reads >= QUIET_READS {
                        self.rbuf = Vec::new();
                    }
                    ready!(self.tcp.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let filled_before = buf.filled().len();
        loop {
            if this.plain_start < this.plain_end {
                let n = buf.remaining().min(this.plain_end - this.plain_start);
                buf.put_slice(&this.rbuf[this.plain_start..this.plain_start + n]);
                this.plain_start += n;
                if buf.remaining() == 0 || this.plain_start < this.plain_end {
                    return Poll::Ready(Ok(()));
                }
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            // Go on through the buffered records while the caller has room:
            // fewer round trips through the task for large reads.
            if this.open_next(Some(buf))? {
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if buf.filled().len() > filled_before {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(this.poll_fill(cx))?;
            if n == 0 {
                if this.cipher_end > this.cipher_start {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS: connection closed inside a record",
                    )));
                }
                // TCP closed without close_notify. The protocols carried
                // here (HTTP/1.1, websocket) frame their own messages, so a
                // truncation shows up there; report a plain end of stream.
                this.read_closed = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.pending_write() >= SEND_BUFFER {
            match this.poll_drain(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending if this.pending_write() >= SEND_BUFFER => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        // Written bytes stay at the front until the buffer empties; move
        // the unsent tail down once it is shorter than what was sent.
        if this.wpos > 0 && this.wpos >= this.pending_write() {
            this.wbuf.copy_within(this.wpos.., 0);
            this.wbuf.truncate(this.wbuf.len() - this.wpos);
            this.wpos = 0;
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let room = SEND_BUFFER - this.pending_write().min(SEND_BUFFER);
        // Plaintext that fits the room once framed, at least one record.
        let records_room = (room / (MAX_PLAINTEXT + HEADER_LEN + 1 + TAG_LEN)).max(1);
        let mut budget = total.min(records_room * MAX_PLAINTEXT);
        let accepted = budget;
        let mut slices = bufs.iter().map(|b| &b[..]).filter(|b| !b.is_empty());
        let mut current: &[u8] = slices.next().unwrap_or(&[]);
        while budget > 0 {
            let record_len = budget.min(MAX_PLAINTEXT);
            let mut parts: [&[u8]; PARTS_PER_RECORD] = [&[]; PARTS_PER_RECORD];
            let mut n_parts = 0;
            let mut filled = 0;
            while filled < record_len {
                if current.is_empty() {
                    current = slices.next().unwrap_or(&[]);
                    continue;
                }
                if n_parts == parts.len() {
                    break;
                }
                let take = current.len().min(record_len - filled);
                parts[n_parts] = &current[..take];
                n_parts += 1;
                current = &current[take..];
                filled += take;
            }
            this.seal_record(&parts[..n_parts], CONTENT_APPLICATION_DATA)?;
            budget -= filled;
            if filled < record_len {
                // Too many tiny slices for one record: report what was taken.
                let accepted = accepted - budget;
                this.after_seal(cx)?;
                return Poll::Ready(Ok(accepted));
            }
        }
        this.after_seal(cx)?;
        Poll::Ready(Ok(accepted))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_sent {
            self.close_sent = true;
            self.seal_record(&[&[1, ALERT_CLOSE_NOTIFY]], CONTENT_ALERT)?;
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl TlsStream {
    /// After sealing: roll the key when due, then hand the socket what it
    /// takes now (the waker is registered if it takes nothing, which is
    /// harmless: the caller was told its bytes were accepted).
    fn after_seal(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.tx.seq >= KEY_UPDATE_AFTER {
            self.send_key_update()?;
        }
        match self.poll_drain(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Ok(()),
        }
    }
}

/// TLSInnerPlaintext (§5.2): content, the real type, then zero padding.
/// Returns the type and the content's length.
fn inner_content(opened: &[u8]) -> io::Result<(u8, usize)> {
    let Some(type_at) = opened.iter().rposition(|&b| b != 0) else {
        return Err(protocol_error("record without a content type"));
    };
    if type_at > MAX_PLAINTEXT {
        return Err(protocol_error("record plaintext too large"));
    }
    Ok((opened[type_at], type_at))
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{noise, tcp_pair};
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Configs {
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        ca: rustls::pki_types::CertificateDer<'static>,
    }

    fn configs() -> Configs {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        server.enable_secret_extraction = true;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Configs {
            server: Arc::new(server),
            client: Arc::new(client),
            ca: ck.cert.der().clone(),
        }
    }

    /// Our client and our server, handshaken over `near` and `far`.
    async fn ours_over(cfg: &Configs, near: TcpStream, far: TcpStream) -> (TlsStream, TlsStream) {
        let server = tokio::spawn(accept(cfg.server.clone(), far));
        let client = connect(client_config(&cfg.client), localhost(), near)
            .await
            .unwrap();
        (client, server.await.unwrap().unwrap())
    }

    fn localhost() -> ServerName<'static> {
        ServerName::try_from("localhost").unwrap()
    }

    /// A stuck transfer fails the test instead of hanging it.
    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(60), f)
            .await
            .expect("no progress in 60 s")
    }

    /// Writes `data` in uneven vectored pieces, then closes with close_notify.
    async fn write_unevenly<W: AsyncWrite + Unpin>(mut w: W, data: Vec<u8>, seed: u32) {
        let sizes = noise(4096, seed);
        let (mut at, mut i) = (0, 0);
        while at < data.len() {
            let a = (sizes[i % sizes.len()] as usize * 331).min(data.len() - at);
            let b = (sizes[(i + 1) % sizes.len()] as usize * 97).min(data.len() - at - a);
            let bufs = [
                io::IoSlice::new(&data[at..at + a]),
                io::IoSlice::new(&data[at + a..at + a + b]),
            ];
            let n = w.write_vectored(&bufs).await.unwrap();
            at += n;
            i += 2;
        }
        w.shutdown().await.unwrap();
    }

    /// Reads to the end in reads of `size`: smaller than a record, records
    /// are opened in place and copied out; larger, they are opened straight
    /// into the buffer.
    async fn read_all<R: AsyncRead + Unpin>(mut r: R, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; size];
        loop {
            match r.read(&mut buf).await.unwrap() {
                0 => return out,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[tokio::test]
    async fn our_ends_carry_both_directions_at_once_and_close_cleanly() {
        for read_size in [100, 1 << 20] {
            both_directions_with_reads_of(read_size).await;
        }
    }

    async fn both_directions_with_reads_of(read_size: usize) {
        within(async {
            let cfg = configs();
            let (near, far) = tcp_pair().await;
            let (client, server) = ours_over(&cfg, near, far).await;
            let up = noise(3 << 20, 7);
            let down = noise((2 << 20) + 12345, 11);
            let (cr, cw) = tokio::io::split(client);
            let (sr, sw) = tokio::io::split(server);
            let (got_up, got_down, _, _) = tokio::join!(
                read_all(sr, read_size),
                read_all(cr, read_size),
                write_unevenly(cw, up.clone(), 3),
                write_unevenly(sw, down.clone(), 5),
            );
            assert!(got_up == up, "client to server bytes differ");
            assert!(got_down == down, "server to client bytes differ");
        })
        .await;
    }

    /// Echoes until close_notify, then closes.
    async fn echo(stream: TlsStream) {
        let (mut r, mut w) = tokio::io::split(stream);
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    }

    /// Sends two halves with a KeyUpdate request between them and checks the
    /// echo, over any stream whose rustls connection can be reached.
    async fn send_roll_and_check<T: AsyncRead + AsyncWrite + Unpin>(
        stream: T,
        mut refresh: impl FnMut(&mut T),
    ) {
        let mut stream = stream;
        let data = noise(2 << 20, 23);
        let reader_data = data.clone();
        // rustls's stream cannot be split and read while written here, so
        // writes go in pieces with the echo read back in between.
        let mut echoed = Vec::with_capacity(data.len());
        let mut buf = vec![0u8; 64 * 1024];
        for (i, piece) in data.chunks(256 * 1024).enumerate() {
            if i == 4 {
                refresh(&mut stream);
            }
            stream.write_all(piece).await.unwrap();
            stream.flush().await.unwrap();
            let want = echoed.len() + piece.len();
            while echoed.len() < want {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "echo ended early");
                echoed.extend_from_slice(&buf[..n]);
            }
        }
        stream.shutdown().await.unwrap();
        let n = stream.read(&mut buf).await.unwrap();
        assert_eq!(n, 0, "close_notify answered with end of stream");
        assert!(echoed == reader_data, "echo differs");
    }

    /// Against rustls's own buffered connection in both roles: its KeyUpdate
    /// requests are answered, ours (every 64 records under test) accepted,
    /// its session tickets taken, close_notify both ways.
    #[tokio::test]
    async fn interoperates_with_buffered_rustls_through_key_updates() {
        within(async {
            let cfg = configs();

            let (near, far) = tcp_pair().await;
            let server_config = cfg.server.clone();
            let server = tokio::spawn(async move {
                echo(accept(server_config, far).await?).await;
                Ok::<_, io::Error>(())
            });
            let stock = tokio_rustls::TlsConnector::from(cfg.client.clone())
                .connect(localhost(), near)
                .await
                .unwrap();
            send_roll_and_check(stock, |s| s.get_mut().1.refresh_traffic_keys().unwrap()).await;
            server.await.unwrap().unwrap();

            // rustls as the server (it sends session tickets after the handshake).
            let mut stock_server = (*cfg.server).clone();
            stock_server.enable_secret_extraction = false;
            let (near, far) = tcp_pair().await;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(stock_server));
            let client_cfg = client_config(&cfg.client);
            let ours = tokio::spawn(async move {
                echo(connect(client_cfg, localhost(), near).await?).await;
                Ok::<_, io::Error>(())
            });
            let stock = acceptor.accept(far).await.unwrap();
            send_roll_and_check(stock, |s| s.get_mut().1.refresh_traffic_keys().unwrap()).await;
            ours.await.unwrap().unwrap();
        })
        .await;
    }

    /// A byte flipped on the wire is a read error, and nothing read before
    /// it differs from what was sent: with reads smaller than a record
    /// (opened in place) and larger (opened straight into the reader's buffer).
    #[tokio::test]
    async fn tampered_record_is_an_error_not_data() {
        for read_size in [10_000, 1 << 20] {
            tampered_record_with_reads_of(read_size).await;
        }
    }

    async fn tampered_record_with_reads_of(read_size: usize) {
        within(async {
            let cfg = configs();
            let (near, relay_near) = tcp_pair().await;
            let (relay_far, far) = tcp_pair().await;
            // Relay client to server flipping one byte well past the handshake
            // (the client's flights are a few hundred bytes), and back untouched.
            tokio::spawn(async move {
                let (mut a_r, mut a_w) = relay_near.into_split();
                let (mut b_r, mut b_w) = relay_far.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut b_r, &mut a_w).await;
                });
                let mut seen = 0usize;
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = match a_r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if (seen..seen + n).contains(&50_000) {
                        buf[50_000 - seen] ^= 0x40;
                    }
                    seen += n;
                    if b_w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            let (mut client, mut server) = ours_over(&cfg, near, far).await;
            let data = noise(200_000, 31);
            let sent = data.clone();
            tokio::spawn(async move {
                let _ = client.write_all(&data).await;
                let _ = client.flush().await;
                // Hold the connection open until the server gives up.
                let mut b = [0u8; 1];
                let _ = client.read(&mut b).await;
            });
            let mut got = Vec::new();
            let mut buf = vec![0u8; read_size];
            let err = loop {
                match server.read(&mut buf).await {
                    Ok(0) => panic!("clean end of stream after a tampered record"),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break e,
                }
            };
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(
                got.len() < 50_000,
                "bytes past the flipped one were delivered"
            );
            assert!(
                sent.starts_with(&got),
                "delivered bytes differ from sent ones"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn a_tls12_only_client_is_refused() {
        let cfg = configs();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cfg.ca.clone()).unwrap();
        let old = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (near, far) = tcp_pair().await;
        let server = tokio::spawn(accept(cfg.server.clone(), far));
        let client = tokio_rustls::TlsConnector::from(Arc::new(old))
            .connect(localhost(), near)
            .await;
        assert!(client.is_err());
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_quiet_connection_gives_its_send_buffer_back() {
        within(async {
            let cfg = configs();
            let (near, far) = tcp_pair().await;
            let (mut client, server) = ours_over(&cfg, near, far).await;
            let drain = tokio::spawn(read_all(server, 64 * 1024));
            client.write_all(&noise(1 << 20, 5)).await.unwrap();
            client.flush().await.unwrap();
            assert!(client.wbuf.capacity() > MAX_RECORD, "bulk keeps its buffer");
            client.write_all(b"ping").await.unwrap();
            client.flush().await.unwrap();
            assert_eq!(client.wbuf.capacity(), 0);
            client.shutdown().await.unwrap();
            assert_eq!(drain.await.unwrap().len(), (1 << 20) + 4);
        })
        .await;
    }

    #[tokio::test]
    async fn a_quiet_connection_gives_its_read_buffer_back() {
        within(async {
            let cfg = configs();
            let (near, far) = tcp_pair().await;
            let (mut client, mut server) = ours_over(&cfg, near, far).await;
            let mut buf = [0u8; 100];
            for i in 0..QUIET_READS + 2 {
                client.write_all(&[i; 100]).await.unwrap();
                client.flush().await.unwrap();
                server.read_exact(&mut buf).await.unwrap();
                assert_eq!(buf, [i; 100]);
            }
            let pending = std::future::poll_fn(|cx| {
                let mut rb = ReadBuf::new(&mut buf);
                Poll::Ready(Pin::new(&mut server).poll_read(cx, &mut rb).is_pending())
            })
            .await;
            assert!(pending);
            assert_eq!(server.rbuf.capacity(), 0);
            // And it reads again when data comes.
            client.write_all(b"again").await.unwrap();
            client.flush().await.unwrap();
            let mut five = [0u8; 5];
            server.read_exact(&mut five).await.unwrap();
            assert_eq!(&five, b"again");
        })
        .await;
    }
}
