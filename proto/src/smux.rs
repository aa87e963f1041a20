//! xtaci/smux protocol v1 (spec §5.1), sans-IO: an 8-byte little-endian
//! header `ver:u8 | cmd:u8 | len:u16 | sid:u32` followed by `len` bytes.
//!
//! [`Decoder`] takes the byte stream in arbitrary chunks and yields frames;
//! [`Mux`] tracks streams for either role and turns frames into events and
//! calls into bytes to send. The data itself is not buffered per stream here:
//! every event is handed to the caller at once, and the caller's per-stream
//! queues are bounded (backpressure then travels back over the data channel).

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 8;
/// smux default MaxFrameSize: the largest PSH payload we write.
pub const MAX_FRAME_SIZE: usize = 32768;
/// Default cap on bytes buffered by a decoder that the caller has not
/// drained: a whole frame plus a header, with slack for one input chunk.
pub const DEFAULT_MAX_BUFFERED: usize = 4 * 1024 * 1024;
/// Default cap on simultaneously open streams.
pub const DEFAULT_MAX_STREAMS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Syn = 0,
    Fin = 1,
    Psh = 2,
    Nop = 3,
}

impl Cmd {
    fn from_u8(v: u8) -> Option<Cmd> {
        match v {
            0 => Some(Cmd::Syn),
            1 => Some(Cmd::Fin),
            2 => Some(Cmd::Psh),
            3 => Some(Cmd::Nop),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmuxFrame {
    pub cmd: Cmd,
    pub sid: u32,
    pub data: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SmuxError {
    #[error("smux: unsupported protocol version {0}")]
    Version(u8),
    #[error("smux: unknown command {0}")]
    Command(u8),
    #[error("smux: {0} bytes buffered exceeds the limit")]
    Overflow(usize),
    #[error("smux: frame data of {0} bytes is too large")]
    TooLarge(usize),
    #[error("smux: too many open streams")]
    TooManyStreams,
    #[error("smux: stream {0} is not open")]
    NotOpen(u32),
    #[error("smux: only the client role opens streams")]
    WrongRole,
}

/// Appends one frame to `out`. `data` must fit in a u16.
pub fn encode(cmd: Cmd, sid: u32, data: &[u8], out: &mut BytesMut) -> Result<(), SmuxError> {
    out.reserve(HEADER_LEN + data.len());
    out.put_slice(&header(cmd, sid, data.len())?);
    out.put_slice(data);
    Ok(())
}

/// The header of a frame carrying `len` data bytes, for writers that place
/// the data themselves.
pub fn header(cmd: Cmd, sid: u32, len: usize) -> Result<[u8; HEADER_LEN], SmuxError> {
    let len = u16::try_from(len).map_err(|_| SmuxError::TooLarge(len))?;
    let mut h = [0u8; HEADER_LEN];
    let mut out = &mut h[..];
    out.put_u8(VERSION);
    out.put_u8(cmd as u8);
    out.put_u16_le(len);
    out.put_u32_le(sid);
    Ok(h)
}

/// Incremental frame decoder over an arbitrarily chunked byte stream.
/// Chunks pushed as [`Bytes`] are sliced, not copied, for every frame that
/// lies wholly inside one chunk; only frames split across chunks are
/// reassembled in a buffer.
#[derive(Debug)]
pub struct Decoder {
    /// Reassembly buffer; while non-empty, `head` is empty.
    buf: BytesMut,
    /// The unparsed rest of the last chunk pushed as `Bytes`.
    head: Bytes,
    max_buffered: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_BUFFERED)
    }
}

/// Parses a header: `(cmd, len, sid)`.
fn parse_header(h: &[u8]) -> Result<Option<(Cmd, usize, u32)>, SmuxError> {
    let Some(mut h) = h.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let ver = h.get_u8();
    let cmd = h.get_u8();
    let len = usize::from(h.get_u16_le());
    let sid = h.get_u32_le();
    if ver != VERSION {
        return Err(SmuxError::Version(ver));
    }
    let cmd = Cmd::from_u8(cmd).ok_or(SmuxError::Command(cmd))?;
    Ok(Some((cmd, len, sid)))
}

impl Decoder {
    pub fn new(max_buffered: usize) -> Self {
        Decoder {
            buf: BytesMut::new(),
            head: Bytes::new(),
            max_buffered: max_buffered.max(HEADER_LEN + usize::from(u16::MAX)),
        }
    }

    /// Adds received bytes. Fails (without buffering) when the caller lets
    /// more than the limit pile up without calling [`Decoder::next_frame`].
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), SmuxError> {
        self.check(chunk.len())?;
        self.spill();
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// Like [`Decoder::push`], keeping `chunk` to slice frames out of.
    pub fn push_bytes(&mut self, chunk: Bytes) -> Result<(), SmuxError> {
        self.check(chunk.len())?;
        if self.buf.is_empty() && self.head.is_empty() {
            self.head = chunk;
        } else {
            self.spill();
            self.buf.extend_from_slice(&chunk);
        }
        Ok(())
    }

    fn check(&self, more: usize) -> Result<(), SmuxError> {
        let total = self.buffered().saturating_add(more);
        if total > self.max_buffered {
            return Err(SmuxError::Overflow(total));
        }
        Ok(())
    }

    /// Moves the unparsed chunk into the reassembly buffer.
    fn spill(&mut self) {
        if !self.head.is_empty() {
            self.buf.extend_from_slice(&self.head);
            self.head = Bytes::new();
        }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len() + self.head.len()
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Result<Option<SmuxFrame>, SmuxError> {
        if !self.head.is_empty() {
            if let Some((cmd, len, sid)) = parse_header(&self.head)? {
                if self.head.len() >= HEADER_LEN + len {
                    self.head.advance(HEADER_LEN);
                    let data = self.head.split_to(len);
                    return Ok(Some(SmuxFrame { cmd, sid, data }));
                }
            }
            // A frame continues in the next chunk: reassemble it.
            self.spill();
            return Ok(None);
        }
        let Some((cmd, len, sid)) = parse_header(&self.buf)? else {
            return Ok(None);
        };
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let data = self.buf.split_to(len).freeze();
        Ok(Some(SmuxFrame { cmd, sid, data }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MuxRole {
    /// Opens odd stream ids 3, 5, 7, ... (the plugin / airlock client).
    Client,
    /// Accepts streams (the agent).
    Server,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MuxEvent {
    /// The peer opened a stream (server role).
    Opened(u32),
    Data(u32, Bytes),
    /// The peer closed its side of the stream (it sends no more data). The
    /// stream is forgotten once our side is closed too; until then we may
    /// still write (TCP half-close semantics).
    Closed(u32),
}

/// Which sides of a stream have sent their FIN.
#[derive(Debug, Default, Clone, Copy)]
struct Halves {
    ours: bool,
    theirs: bool,
}

/// Stream bookkeeping for one smux session. A stream stays known until
/// both sides have sent FIN, so data still arriving for a stream we have
/// finished writing is delivered.
#[derive(Debug)]
pub struct Mux {
    role: MuxRole,
    next_id: u32,
    decoder: Decoder,
    open: BTreeMap<u32, Halves>,
    max_streams: usize,
    out: BytesMut,
}

impl Mux {
    pub fn new(role: MuxRole) -> Self {
        Mux {
            role,
            next_id: 3,
            decoder: Decoder::default(),
            open: BTreeMap::new(),
            max_streams: DEFAULT_MAX_STREAMS,
            out: BytesMut::new(),
        }
    }

    pub fn with_max_streams(mut self, max: usize) -> Self {
        self.max_streams = max;
        self
    }

    /// Known and not fully closed.
    pub fn is_open(&self, sid: u32) -> bool {
        self.open.contains_key(&sid)
    }

    pub fn open_streams(&self) -> usize {
        self.open.len()
    }

    /// Client role: allocates the next odd id and queues its SYN.
    pub fn open(&mut self) -> Result<u32, SmuxError> {
        if self.role != MuxRole::Client {
            return Err(SmuxError::WrongRole);
        }
        if self.open.len() >= self.max_streams {
            return Err(SmuxError::TooManyStreams);
        }
        let mut sid = self.next_id;
        while self.open.contains_key(&sid) {
            sid = sid.wrapping_add(2);
        }
        self.next_id = sid.wrapping_add(2).max(3);
        encode(Cmd::Syn, sid, &[], &mut self.out)?;
        self.open.insert(sid, Halves::default());
        Ok(sid)
    }

    /// Queues `data` on a stream whose side we have not closed, as PSH
    /// frames of ≤ MAX_FRAME_SIZE.
    pub fn write(&mut self, sid: u32, data: &[u8]) -> Result<(), SmuxError> {
        if self.open.get(&sid).is_none_or(|h| h.ours) {
            return Err(SmuxError::NotOpen(sid));
        }
        for chunk in data.chunks(MAX_FRAME_SIZE) {
            encode(Cmd::Psh, sid, chunk, &mut self.out)?;
        }
        Ok(())
    }

    /// Queues a FIN for our side. Idempotent.
    pub fn close(&mut self, sid: u32) {
        if self.open.get(&sid).is_some_and(|h| !h.ours) {
            // An empty payload always encodes.
            let _ = encode(Cmd::Fin, sid, &[], &mut self.out);
            self.forget(sid);
        }
    }

    /// Records that our FIN was written by someone else (an I/O task
    /// encoding frames itself). Returns true when the stream is now fully
    /// closed and forgotten.
    pub fn forget(&mut self, sid: u32) -> bool {
        let Some(h) = self.open.get_mut(&sid) else {
            return true;
        };
        h.ours = true;
        if h.theirs {
            self.open.remove(&sid);
            return true;
        }
        false
    }

    /// Feeds received bytes; returns the events they complete.
    pub fn receive(&mut self, chunk: &[u8]) -> Result<Vec<MuxEvent>, SmuxError> {
        self.receive_bytes(Bytes::copy_from_slice(chunk))
    }

    /// Like [`Mux::receive`]; data of frames inside `chunk` are slices of it.
    pub fn receive_bytes(&mut self, chunk: Bytes) -> Result<Vec<MuxEvent>, SmuxError> {
        self.decoder.push_bytes(chunk)?;
        let mut events = Vec::new();
        while let Some(f) = self.decoder.next_frame()? {
            match f.cmd {
                Cmd::Syn => {
                    if self.role == MuxRole::Server && !self.open.contains_key(&f.sid) {
                        if self.open.len() >= self.max_streams {
                            let _ = encode(Cmd::Fin, f.sid, &[], &mut self.out);
                            continue;
                        }
                        self.open.insert(f.sid, Halves::default());
                        events.push(MuxEvent::Opened(f.sid));
                    }
                }
                Cmd::Psh => {
                    if self.open.get(&f.sid).is_some_and(|h| !h.theirs) && !f.data.is_empty() {
                        events.push(MuxEvent::Data(f.sid, f.data));
                    }
                }
                Cmd::Fin => {
                    if let Some(h) = self.open.get_mut(&f.sid) {
                        if !h.theirs {
                            h.theirs = true;
                            events.push(MuxEvent::Closed(f.sid));
                        }
                        if h.ours {
                            self.open.remove(&f.sid);
                        }
                    }
                }
                Cmd::Nop => {}
            }
        }
        Ok(events)
    }

    /// Bytes queued for the peer since the last call.
    pub fn take_output(&mut self) -> Bytes {
        self.out.split().freeze()
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_layout() {
        let mut out = BytesMut::new();
        encode(Cmd::Psh, 3, b"hi", &mut out).unwrap();
        assert_eq!(&out[..], &[1, 2, 2, 0, 3, 0, 0, 0, b'h', b'i']);
    }

    #[test]
    fn rejects_bad_version_and_cmd() {
        let mut d = Decoder::default();
        d.push(&[2, 0, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!(d.next_frame(), Err(SmuxError::Version(2)));
        let mut d = Decoder::default();
        d.push(&[1, 9, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!(d.next_frame(), Err(SmuxError::Command(9)));
    }

    #[test]
    fn whole_frames_in_a_chunk_are_sliced_not_copied() {
        let mut wire = BytesMut::new();
        encode(Cmd::Psh, 3, b"first", &mut wire).unwrap();
        encode(Cmd::Psh, 3, b"second", &mut wire).unwrap();
        let wire = wire.freeze();
        let mut d = Decoder::default();
        // All but the last byte: one whole frame, one split.
        d.push_bytes(wire.slice(..wire.len() - 1)).unwrap();
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(&f.data[..], b"first");
        let start = wire.as_ptr() as usize;
        let at = f.data.as_ptr() as usize;
        assert!(at >= start && at < start + wire.len(), "payload was copied");
        assert_eq!(d.next_frame().unwrap(), None);
        d.push_bytes(wire.slice(wire.len() - 1..)).unwrap();
        assert_eq!(&d.next_frame().unwrap().unwrap().data[..], b"second");
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn decoder_is_bounded() {
        let mut d = Decoder::new(0);
        let big = vec![0u8; HEADER_LEN + 65535 + 1];
        assert!(matches!(d.push(&big), Err(SmuxError::Overflow(_))));
    }

    #[test]
    fn too_large_frame() {
        let mut out = BytesMut::new();
        assert_eq!(
            encode(Cmd::Psh, 1, &vec![0; 70000], &mut out),
            Err(SmuxError::TooLarge(70000))
        );
    }

    #[test]
    fn client_server_conversation() {
        let mut c = Mux::new(MuxRole::Client);
        let mut s = Mux::new(MuxRole::Server);
        assert_eq!(s.open(), Err(SmuxError::WrongRole));
        let a = c.open().unwrap();
        let b = c.open().unwrap();
        assert_eq!((a, b), (3, 5));
        c.write(a, &vec![7u8; 70000]).unwrap();
        c.close(b);
        let ev = s.receive(&c.take_output()).unwrap();
        assert_eq!(ev[0], MuxEvent::Opened(3));
        assert_eq!(ev[1], MuxEvent::Opened(5));
        let total: usize = ev
            .iter()
            .filter_map(|e| match e {
                MuxEvent::Data(3, d) => Some(d.len()),
                _ => None,
            })
            .sum();
        assert_eq!(total, 70000);
        assert_eq!(ev.last(), Some(&MuxEvent::Closed(5)));
        // Data after the peer's FIN is ignored.
        let mut late = BytesMut::new();
        encode(Cmd::Psh, 5, b"after fin", &mut late).unwrap();
        assert!(s.receive(&late).unwrap().is_empty());
        s.write(3, b"pong").unwrap();
        s.close(3);
        let ev = c.receive(&s.take_output()).unwrap();
        assert_eq!(
            ev,
            vec![
                MuxEvent::Data(3, Bytes::from_static(b"pong")),
                MuxEvent::Closed(3)
            ]
        );
        // Half-closed: the client may still write on 3 until it closes it;
        // 5 waits for the server's FIN.
        assert_eq!(c.open_streams(), 2);
        c.write(3, b"late").unwrap();
        assert!(c.write(5, b"x").is_err());
        c.close(3);
        assert!(c.write(3, b"x").is_err());
        let ev = s.receive(&c.take_output()).unwrap();
        assert_eq!(
            ev,
            vec![
                MuxEvent::Data(3, Bytes::from_static(b"late")),
                MuxEvent::Closed(3)
            ]
        );
        assert_eq!(
            s.open_streams(),
            1,
            "stream 5 is still writable by the server"
        );
        s.close(5);
        assert_eq!(s.open_streams(), 0);
        assert_eq!(
            c.receive(&s.take_output()).unwrap(),
            vec![MuxEvent::Closed(5)]
        );
        assert_eq!(c.open_streams(), 0);
    }

    #[test]
    fn stream_limit() {
        let mut s = Mux::new(MuxRole::Server).with_max_streams(1);
        let mut out = BytesMut::new();
        encode(Cmd::Syn, 3, &[], &mut out).unwrap();
        encode(Cmd::Syn, 5, &[], &mut out).unwrap();
        let ev = s.receive(&out).unwrap();
        assert_eq!(ev, vec![MuxEvent::Opened(3)]);
        // The second stream is refused with a FIN.
        assert_eq!(&s.take_output()[..], &[1, 1, 0, 0, 5, 0, 0, 0]);
    }

    fn arb_frame() -> impl Strategy<Value = (u8, u32, Vec<u8>)> {
        (
            0u8..4,
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
    }

    proptest! {
        #[test]
        fn round_trip_arbitrary_chunking(
            frames in proptest::collection::vec(arb_frame(), 0..20),
            cuts in proptest::collection::vec(1usize..64, 1..50),
        ) {
            let mut wire = BytesMut::new();
            let mut expect = Vec::new();
            for (c, sid, data) in &frames {
                let cmd = Cmd::from_u8(*c).unwrap();
                encode(cmd, *sid, data, &mut wire).unwrap();
                expect.push(SmuxFrame { cmd, sid: *sid, data: Bytes::from(data.clone()) });
            }
            let mut d = Decoder::default();
            let mut got = Vec::new();
            let mut rest = &wire[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                i += 1;
                // Alternate the copying and the slicing entry points.
                if i % 2 == 0 {
                    d.push(&rest[..n]).unwrap();
                } else {
                    d.push_bytes(Bytes::copy_from_slice(&rest[..n])).unwrap();
                }
                rest = &rest[n..];
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, expect);
            prop_assert_eq!(d.buffered(), 0);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut m = Mux::new(MuxRole::Server);
            let _ = m.receive(&bytes);
        }
    }
}
