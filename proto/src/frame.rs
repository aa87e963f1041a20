//! The data-channel frame (spec §1): a 120-byte big-endian header followed by
//! the payload. Decoding checks every length before it allocates or slices.

use bytes::Bytes;
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
        todo!()
    }
    /// Parses a wire type string after trimming NUL and whitespace padding.
    pub fn parse(s: &str) -> Self {
        todo!()
    }
    /// Stream messages are sequenced, acked and retransmitted.
    pub fn is_stream_data(&self) -> bool {
        matches!(self, MessageType::InputStreamData | MessageType::OutputStreamData)
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
        todo!()
    }
    pub fn to_u32(self) -> u32 {
        todo!()
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
        todo!()
    }

    /// Parses one websocket binary message. `max_payload` is the negotiated
    /// limit (never above [`MAX_PAYLOAD_LEN`]). Verifies the digest except on
    /// publication messages, as the stock plugin does. Zero-copy: the payload
    /// is a slice of `buf`.
    pub fn decode(buf: Bytes, max_payload: usize) -> Result<Frame, FrameError> {
        todo!()
    }
}

/// Reads only the message type, for relays that route without decoding.
pub fn peek_message_type(buf: &[u8]) -> Result<MessageType, FrameError> {
    todo!()
}
