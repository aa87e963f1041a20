//! The data-channel frame (spec §1): a 120-byte big-endian header followed by
//! the payload. Decoding checks every length before it allocates or slices.

use aws_lc_rs::digest;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use uuid::Uuid;

/// Bytes before the payload on the wire.
pub const HEADER_LEN: usize = 120;
/// The value writers put in the HeaderLength field (offset of PayloadLength).
pub const HEADER_LENGTH_FIELD: u32 = 116;
/// Largest payload a stock peer ever sends in one frame.
pub const STOCK_PAYLOAD_SIZE: usize = 1024;
/// Hard cap on a payload we accept, whatever was negotiated. Larger frames are
/// rejected before any allocation.
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;

/// Flag bits (spec §1.4). Readers ignore them; writers fill them for fidelity.
pub mod flags {
    pub const SYN: u64 = 1;
    pub const FIN: u64 = 2;
    /// What `acknowledge` and `agent_session_state` frames carry.
    pub const ACK: u64 = 3;
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    InputStreamData,
    OutputStreamData,
    Acknowledge,
    ChannelClosed,
    StartPublication,
    PausePublication,
    AgentSessionState,
    InteractiveShell,
    AgentTaskComplete,
    AgentTaskAcknowledge,
    /// Any other type (telemetry, jobs): carried, not interpreted.
    Other(String),
}

impl MessageType {
    pub fn as_str(&self) -> &str {
        match self {
            MessageType::InputStreamData => "input_stream_data",
            MessageType::OutputStreamData => "output_stream_data",
            MessageType::Acknowledge => "acknowledge",
            MessageType::ChannelClosed => "channel_closed",
            MessageType::StartPublication => "start_publication",
            MessageType::PausePublication => "pause_publication",
            MessageType::AgentSessionState => "agent_session_state",
            MessageType::InteractiveShell => "interactive_shell",
            MessageType::AgentTaskComplete => "agent_task_complete",
            MessageType::AgentTaskAcknowledge => "agent_task_acknowledge",
            MessageType::Other(s) => s,
        }
    }
    /// Parses a wire type string after trimming NUL and whitespace padding.
    pub fn parse(s: &str) -> Self {
        let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        match s {
            "input_stream_data" => MessageType::InputStreamData,
            "output_stream_data" => MessageType::OutputStreamData,
            "acknowledge" => MessageType::Acknowledge,
            "channel_closed" => MessageType::ChannelClosed,
            "start_publication" => MessageType::StartPublication,
            "pause_publication" => MessageType::PausePublication,
            "agent_session_state" => MessageType::AgentSessionState,
            "interactive_shell" => MessageType::InteractiveShell,
            "agent_task_complete" => MessageType::AgentTaskComplete,
            "agent_task_acknowledge" => MessageType::AgentTaskAcknowledge,
            other => MessageType::Other(other.to_string()),
        }
    }
    /// Publication control messages skip payload validation (spec §1).
    pub fn is_publication(&self) -> bool {
        matches!(
            self,
            MessageType::StartPublication | MessageType::PausePublication
        )
    }
    /// Stream messages are sequenced, acked and retransmitted.
    pub fn is_stream_data(&self) -> bool {
        matches!(
            self,
            MessageType::InputStreamData | MessageType::OutputStreamData
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadType {
    /// 0: acks and control messages.
    Undefined,
    Output,
    Error,
    Size,
    Parameter,
    HandshakeRequest,
    HandshakeResponse,
    HandshakeComplete,
    EncChallengeRequest,
    EncChallengeResponse,
    Flag,
    StdErr,
    ExitCode,
    Unknown(u32),
}

impl PayloadType {
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => PayloadType::Undefined,
            1 => PayloadType::Output,
            2 => PayloadType::Error,
            3 => PayloadType::Size,
            4 => PayloadType::Parameter,
            5 => PayloadType::HandshakeRequest,
            6 => PayloadType::HandshakeResponse,
            7 => PayloadType::HandshakeComplete,
            8 => PayloadType::EncChallengeRequest,
            9 => PayloadType::EncChallengeResponse,
            10 => PayloadType::Flag,
            11 => PayloadType::StdErr,
            12 => PayloadType::ExitCode,
            other => PayloadType::Unknown(other),
        }
    }
    pub fn to_u32(self) -> u32 {
        match self {
            PayloadType::Undefined => 0,
            PayloadType::Output => 1,
            PayloadType::Error => 2,
            PayloadType::Size => 3,
            PayloadType::Parameter => 4,
            PayloadType::HandshakeRequest => 5,
            PayloadType::HandshakeResponse => 6,
            PayloadType::HandshakeComplete => 7,
            PayloadType::EncChallengeRequest => 8,
            PayloadType::EncChallengeResponse => 9,
            PayloadType::Flag => 10,
            PayloadType::StdErr => 11,
            PayloadType::ExitCode => 12,
            PayloadType::Unknown(v) => v,
        }
    }
}

/// Values of a `Flag` (PayloadType 10) payload, a 4-byte big-endian u32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortFlag {
    DisconnectToPort = 1,
    TerminateSession = 2,
    ConnectToPortError = 3,
}

/// One decoded frame. `Debug` never prints the payload: it may hold keystrokes.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub message_type: MessageType,
    pub schema_version: u32,
    /// Unix epoch milliseconds.
    pub created_date: u64,
    pub sequence_number: i64,
    pub flags: u64,
    pub message_id: Uuid,
    pub payload_type: PayloadType,
    pub payload: Bytes,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("message_type", &self.message_type)
            .field("sequence_number", &self.sequence_number)
            .field("flags", &self.flags)
            .field("message_id", &self.message_id)
            .field("payload_type", &self.payload_type)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// A payload built behind room for its frame header, so framing it copies
/// nothing: a port session reads socket bytes straight into one, and
/// [`FrameBuf::into_wire`] writes the header in front. `Debug` shows sizes
/// only.
pub struct FrameBuf {
    /// `HEADER_LEN` reserved bytes, then the payload.
    buf: BytesMut,
}

impl FrameBuf {
    /// Room for `payload` bytes without reallocating.
    pub fn with_capacity(payload: usize) -> Self {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + payload);
        buf.put_bytes(0, HEADER_LEN);
        FrameBuf { buf }
    }

    /// The buffer payload bytes are appended to. Its first [`HEADER_LEN`]
    /// bytes are the header's room: write after them, never shorten past
    /// them ([`FrameBuf::into_wire`] refuses a buffer that was).
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    pub fn payload(&self) -> &[u8] {
        self.buf.get(HEADER_LEN..).unwrap_or(&[])
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buf.get_mut(HEADER_LEN..).unwrap_or(&mut [])
    }

    pub fn payload_len(&self) -> usize {
        self.buf.len().saturating_sub(HEADER_LEN)
    }

    /// Drops payload bytes past `len`.
    pub fn truncate_payload(&mut self, len: usize) {
        self.buf.truncate(HEADER_LEN + len);
    }

    /// The wire frame: `header`'s fields (its own payload is not used) in
    /// front of this payload.
    pub fn into_wire(self, header: &Frame, digest: bool) -> Result<Bytes, FrameError> {
        let mut buf = self.buf;
        if buf.len() < HEADER_LEN {
            return Err(FrameError::TooShort { len: buf.len() });
        }
        let (head, payload) = buf.split_at_mut(HEADER_LEN);
        header.write_header(head, payload, digest)?;
        Ok(right_sized(buf))
    }
}

/// Frames stay allocated until acknowledged, and a batch sized for 1 MiB
/// may hold a few bytes: give the unused tail back (an in-place `realloc`
/// for the allocator, no copy) so the window's 16 MiB of payload cannot
/// pin a thousand times that in capacity.
fn right_sized(buf: BytesMut) -> Bytes {
    if buf.capacity() - buf.len() <= buf.len().max(RIGHT_SIZE_SLACK) {
        return buf.freeze();
    }
    let mut v = Vec::from(buf);
    v.shrink_to_fit();
    Bytes::from(v)
}

/// Spare capacity a frame may keep without being shrunk.
const RIGHT_SIZE_SLACK: usize = 16 * 1024;

impl FrameBuf {}

impl std::fmt::Debug for FrameBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameBuf")
            .field("payload_len", &self.payload_len())
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("header length field {0} is invalid")]
    BadHeaderLength(u32),
    #[error("message type is empty")]
    EmptyMessageType,
    #[error("message type is longer than 32 bytes or not ASCII")]
    BadMessageType,
    #[error("created date is zero")]
    ZeroCreatedDate,
    #[error("payload digest does not match")]
    DigestMismatch,
    #[error("payload length field {field} disagrees with {actual} payload bytes")]
    LengthMismatch { field: u32, actual: usize },
}

impl Frame {
    /// Builds a frame with SHA-256 digest filled in at encode time.
    pub fn new(
        message_type: MessageType,
        sequence_number: i64,
        flags: u64,
        message_id: Uuid,
        payload_type: PayloadType,
        payload: Bytes,
        created_date: u64,
    ) -> Self {
        Frame {
            message_type,
            schema_version: 1,
            created_date,
            sequence_number,
            flags,
            message_id,
            payload_type,
            payload,
        }
    }

    /// Serializes header + payload, computing the digest.
    pub fn encode(&self) -> Result<Bytes, FrameError> {
        self.encode_opts(true)
    }

    /// Like [`Frame::encode`]; without `digest` the digest field is zero.
    /// Only for peers that negotiated the Airlock fast path (the digest is
    /// an unkeyed checksum under TLS: it costs a SHA-256 pass per byte on
    /// each end and protects nothing TLS does not).
    pub fn encode_opts(&self, digest: bool) -> Result<Bytes, FrameError> {
        if self.payload.len() > MAX_PAYLOAD_LEN {
            return Err(FrameError::TooLarge {
                len: self.payload.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        let mut buf = FrameBuf::with_capacity(self.payload.len());
        buf.buf_mut().extend_from_slice(&self.payload);
        buf.into_wire(self, digest)
    }

    /// Writes this frame's header for `payload` into `out` (exactly
    /// [`HEADER_LEN`] bytes). `self.payload` is not used.
    fn write_header(&self, out: &mut [u8], payload: &[u8], digest: bool) -> Result<(), FrameError> {
        let ty = self.message_type.as_str().as_bytes();
        if ty.is_empty() {
            return Err(FrameError::EmptyMessageType);
        }
        if ty.len() > MESSAGE_TYPE_LEN || !ty.is_ascii() {
            return Err(FrameError::BadMessageType);
        }
        let len = payload.len();
        if len > MAX_PAYLOAD_LEN {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        let mut out = out;
        out.put_u32(HEADER_LENGTH_FIELD);
        out.put_slice(ty);
        out.put_bytes(b' ', MESSAGE_TYPE_LEN - ty.len());
        out.put_u32(self.schema_version);
        out.put_u64(self.created_date);
        out.put_i64(self.sequence_number);
        out.put_u64(self.flags);
        let id = self.message_id.as_bytes();
        out.put_slice(&id[8..16]);
        out.put_slice(&id[0..8]);
        if digest {
            out.put_slice(digest::digest(&digest::SHA256, payload).as_ref());
        } else {
            out.put_bytes(0, 32);
        }
        out.put_u32(self.payload_type.to_u32());
        // len <= MAX_PAYLOAD_LEN, which fits in u32.
        out.put_u32(len as u32);
        Ok(())
    }

    /// Parses one websocket binary message. `max_payload` is the negotiated
    /// limit (never above [`MAX_PAYLOAD_LEN`]). Verifies the digest except on
    /// publication messages, as the stock plugin does. Zero-copy: the payload
    /// is a slice of `buf`.
    pub fn decode(buf: Bytes, max_payload: usize) -> Result<Frame, FrameError> {
        Frame::decode_opts(buf, max_payload, false)
    }

    /// Like [`Frame::decode`]; with `allow_missing_digest` an all-zero
    /// digest field is accepted unchecked (see [`Frame::encode_opts`]).
    pub fn decode_opts(
        buf: Bytes,
        max_payload: usize,
        allow_missing_digest: bool,
    ) -> Result<Frame, FrameError> {
        let header = Header::parse(&buf)?;
        let max = max_payload.min(MAX_PAYLOAD_LEN);
        // Header::parse guarantees payload_start <= buf.len().
        let actual = buf.len() - header.payload_start;
        if actual > max {
            return Err(FrameError::TooLarge { len: actual, max });
        }
        let message_type = parse_type_field(&header.message_type)?;
        let publication = message_type.is_publication();
        if !publication {
            if header.created_date == 0 {
                return Err(FrameError::ZeroCreatedDate);
            }
            if usize::try_from(header.payload_length).ok() != Some(actual) {
                return Err(FrameError::LengthMismatch {
                    field: header.payload_length,
                    actual,
                });
            }
        }
        let payload = buf.slice(header.payload_start..);
        // Like the plugin, an empty payload's digest is not checked.
        let skip = allow_missing_digest && header.digest == [0u8; 32];
        if !publication
            && !skip
            && !payload.is_empty()
            && digest::digest(&digest::SHA256, &payload).as_ref() != header.digest
        {
            return Err(FrameError::DigestMismatch);
        }
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&header.message_id[8..]);
        id[8..].copy_from_slice(&header.message_id[..8]);
        Ok(Frame {
            message_type,
            schema_version: header.schema_version,
            created_date: header.created_date,
            sequence_number: header.sequence_number,
            flags: header.flags,
            message_id: Uuid::from_bytes(id),
            payload_type: PayloadType::from_u32(header.payload_type),
            payload,
        })
    }
}

const MESSAGE_TYPE_LEN: usize = 32;

/// Fixed-offset header fields, read from a buffer already known to be at
/// least [`HEADER_LEN`] bytes long.
struct Header {
    message_type: [u8; MESSAGE_TYPE_LEN],
    schema_version: u32,
    created_date: u64,
    sequence_number: i64,
    flags: u64,
    message_id: [u8; 16],
    digest: [u8; 32],
    payload_type: u32,
    payload_length: u32,
    payload_start: usize,
}

impl Header {
    fn parse(buf: &[u8]) -> Result<Header, FrameError> {
        let Some(mut h) = buf.get(..HEADER_LEN) else {
            return Err(FrameError::TooShort { len: buf.len() });
        };
        let header_length = h.get_u32();
        // Fields sit at fixed offsets up to 120, so HL below 116 cannot be
        // honoured; HL above it would skip bytes before the payload.
        let payload_start = usize::try_from(header_length)
            .ok()
            .and_then(|hl| hl.checked_add(4))
            .filter(|&start| header_length >= HEADER_LENGTH_FIELD && start <= buf.len())
            .ok_or(FrameError::BadHeaderLength(header_length))?;
        let mut message_type = [0u8; MESSAGE_TYPE_LEN];
        h.copy_to_slice(&mut message_type);
        let schema_version = h.get_u32();
        let created_date = h.get_u64();
        let sequence_number = h.get_i64();
        let flags = h.get_u64();
        let mut message_id = [0u8; 16];
        h.copy_to_slice(&mut message_id);
        let mut digest = [0u8; 32];
        h.copy_to_slice(&mut digest);
        let payload_type = h.get_u32();
        let payload_length = h.get_u32();
        Ok(Header {
            message_type,
            schema_version,
            created_date,
            sequence_number,
            flags,
            message_id,
            digest,
            payload_type,
            payload_length,
            payload_start,
        })
    }
}

fn parse_type_field(raw: &[u8]) -> Result<MessageType, FrameError> {
    let s = std::str::from_utf8(raw).map_err(|_| FrameError::BadMessageType)?;
    if !s.is_ascii() {
        return Err(FrameError::BadMessageType);
    }
    let t = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if t.is_empty() {
        return Err(FrameError::EmptyMessageType);
    }
    Ok(MessageType::parse(t))
}

/// Reads only the message type, for relays that route without decoding.
pub fn peek_message_type(buf: &[u8]) -> Result<MessageType, FrameError> {
    let header = Header::parse(buf)?;
    parse_type_field(&header.message_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_frames_are_right_sized_without_a_copy() {
        for (capacity, fill) in [(1 << 20, 100), (1 << 20, 1 << 20), (4096, 10)] {
            let mut b = BytesMut::with_capacity(capacity);
            b.put_bytes(7, fill);
            let at = b.as_ptr();
            let out = right_sized(b);
            assert_eq!(out.len(), fill);
            assert!(out.iter().all(|&x| x == 7));
            assert_eq!(out.as_ptr(), at, "capacity {capacity}, fill {fill}: copied");
        }
    }
    use proptest::prelude::*;

    const VECTOR: &str = "
        00 00 00 74 69 6e 70 75 74 5f 73 74 72 65 61 6d
        5f 64 61 74 61 20 20 20 20 20 20 20 20 20 20 20
        20 20 20 20 00 00 00 01 00 00 01 8b cf e5 68 00
        00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 00
        a5 08 b5 f0 73 f3 1b 16 dd 01 e5 6b ff 48 48 3e
        d5 3c a1 ea 7d ce 87 c1 14 32 05 2a 85 50 ed 26
        15 cf 71 5c a8 43 c8 97 10 ed 83 32 5b 69 1c ba
        00 00 00 03 00 00 00 15 7b 22 63 6f 6c 73 22 3a
        38 30 2c 22 72 6f 77 73 22 3a 32 34 7d";

    fn vector_bytes() -> Vec<u8> {
        let compact: String = VECTOR.split_whitespace().collect();
        hex::decode(compact).unwrap()
    }

    fn vector_frame() -> Frame {
        Frame::new(
            MessageType::InputStreamData,
            5,
            0,
            Uuid::parse_str("dd01e56b-ff48-483e-a508-b5f073f31b16").unwrap(),
            PayloadType::Size,
            Bytes::from_static(br#"{"cols":80,"rows":24}"#),
            1_700_000_000_000,
        )
    }

    #[test]
    fn encodes_spec_test_vector_byte_for_byte() {
        let encoded = vector_frame().encode().unwrap();
        assert_eq!(encoded.len(), 141);
        assert_eq!(&encoded[..], &vector_bytes()[..]);
    }

    #[test]
    fn decodes_spec_test_vector() {
        let frame = Frame::decode(Bytes::from(vector_bytes()), STOCK_PAYLOAD_SIZE).unwrap();
        assert_eq!(frame, vector_frame());
        assert_eq!(
            frame.message_id.to_string(),
            "dd01e56b-ff48-483e-a508-b5f073f31b16"
        );
        assert_eq!(
            peek_message_type(&vector_bytes()).unwrap(),
            MessageType::InputStreamData
        );
    }

    #[test]
    fn digest_can_be_omitted_only_when_allowed() {
        let f = Frame::new(
            MessageType::InputStreamData,
            1,
            0,
            uuid::Uuid::from_u128(9),
            PayloadType::Output,
            Bytes::from_static(b"fast"),
            1_700_000_000_000,
        );
        let plain = f.encode_opts(false).unwrap();
        assert_eq!(
            Frame::decode(plain.clone(), 1024),
            Err(FrameError::DigestMismatch)
        );
        assert_eq!(
            Frame::decode_opts(plain, 1024, true).unwrap().payload,
            f.payload
        );
        // A wrong non-zero digest is still refused.
        let mut bad = BytesMut::from(&f.encode().unwrap()[..]);
        bad[HEADER_LEN - 9] ^= 1;
        assert_eq!(
            Frame::decode_opts(bad.freeze(), 1024, true),
            Err(FrameError::DigestMismatch)
        );
    }

    #[test]
    fn decoded_payload_is_zero_copy() {
        let buf = Bytes::from(vector_bytes());
        let frame = Frame::decode(buf.clone(), STOCK_PAYLOAD_SIZE).unwrap();
        assert_eq!(frame.payload.as_ptr(), buf[HEADER_LEN..].as_ptr());
    }

    #[test]
    fn rejects_bad_digest_short_and_oversized() {
        let mut v = vector_bytes();
        assert_eq!(
            Frame::decode(Bytes::copy_from_slice(&v[..119]), 1024),
            Err(FrameError::TooShort { len: 119 })
        );
        assert_eq!(
            Frame::decode(Bytes::from(v.clone()), 20),
            Err(FrameError::TooLarge { len: 21, max: 20 })
        );
        let last = v.len() - 1;
        v[last] ^= 1;
        assert_eq!(
            Frame::decode(Bytes::from(v.clone()), 1024),
            Err(FrameError::DigestMismatch)
        );
        v[3] = 200;
        assert_eq!(
            Frame::decode(Bytes::from(v), 1024),
            Err(FrameError::BadHeaderLength(200))
        );
    }

    #[test]
    fn publication_frames_skip_digest_check() {
        let mut f = vector_frame();
        f.message_type = MessageType::PausePublication;
        f.created_date = 0;
        let mut v = f.encode().unwrap().to_vec();
        v[90] ^= 0xff;
        let d = Frame::decode(Bytes::from(v), 1024).unwrap();
        assert_eq!(d.message_type, MessageType::PausePublication);
    }

    #[test]
    fn nul_padded_type_is_accepted() {
        let mut v = vector_bytes();
        for b in &mut v[4 + 17..36] {
            *b = 0;
        }
        let d = Frame::decode(Bytes::from(v), 1024).unwrap();
        assert_eq!(d.message_type, MessageType::InputStreamData);
    }

    #[test]
    fn mixed_nul_and_space_padding_is_trimmed_in_one_pass() {
        // Found by fuzzing: NULs between the spaces once left a type that did
        // not survive a re-encode.
        let mut v = vector_bytes();
        v[4 + 26] = 0;
        v[35] = 0;
        let d = Frame::decode(Bytes::from(v), 1024).unwrap();
        assert_eq!(d.message_type, MessageType::InputStreamData);
        assert_eq!(
            MessageType::parse(" \0ack\0 \t"),
            MessageType::Other("ack".into())
        );
    }

    #[test]
    fn encode_rejects_long_or_empty_type() {
        let mut f = vector_frame();
        f.message_type = MessageType::Other("x".repeat(33));
        assert_eq!(f.encode(), Err(FrameError::BadMessageType));
        f.message_type = MessageType::Other(String::new());
        assert_eq!(f.encode(), Err(FrameError::EmptyMessageType));
    }

    #[test]
    fn payload_type_round_trips() {
        for v in 0..20u32 {
            assert_eq!(PayloadType::from_u32(v).to_u32(), v);
        }
    }

    fn arb_type() -> impl Strategy<Value = MessageType> {
        prop_oneof![
            Just(MessageType::InputStreamData),
            Just(MessageType::OutputStreamData),
            Just(MessageType::Acknowledge),
            Just(MessageType::ChannelClosed),
            Just(MessageType::AgentSessionState),
            Just(MessageType::InteractiveShell),
            Just(MessageType::AgentTaskComplete),
            Just(MessageType::AgentTaskAcknowledge),
            "[a-z_]{1,32}".prop_map(|s| MessageType::parse(&s)),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(
            ty in arb_type(),
            seq in any::<i64>(),
            flags in any::<u64>(),
            id in any::<[u8; 16]>(),
            pt in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..2048),
            date in 1..u64::MAX,
        ) {
            let f = Frame::new(ty, seq, flags, Uuid::from_bytes(id), PayloadType::from_u32(pt), Bytes::from(payload), date);
            let enc = f.encode().unwrap();
            prop_assert_eq!(peek_message_type(&enc).unwrap(), f.message_type.clone());
            let dec = Frame::decode(enc, MAX_PAYLOAD_LEN).unwrap();
            prop_assert_eq!(dec, f);
        }

        #[test]
        fn decode_arbitrary_bytes_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..400), max in 0usize..2048) {
            let _ = Frame::decode(Bytes::from(buf.clone()), max);
            let _ = peek_message_type(&buf);
        }

        #[test]
        fn decode_mutated_header_never_panics(idx in 0usize..141, val in any::<u8>()) {
            let mut v = vector_bytes();
            v[idx] = val;
            let _ = Frame::decode(Bytes::from(v), 1024);
        }
    }
}
