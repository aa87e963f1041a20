//! The reliability layer (spec §2) as a sans-IO state machine.
//!
//! Input: `handle_frame(frame, now)`, `handle_timeout(now)`, `send(..)`.
//! Output: `poll_transmit()`, `poll_event()`, `poll_timeout()`.
//! The caller owns the clock and the socket.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::frame::{Frame, FrameError, MessageType, PayloadType};

/// Which end of the data channel this is; decides the outgoing message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends `input_stream_data`.
    Client,
    /// Sends `output_stream_data`.
    Agent,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Most unacked stream frames in flight; `send` refuses beyond it. Stock
    /// peers never wait for acks, so a large value keeps them compatible.
    pub max_in_flight: usize,
    /// Frames received ahead of a gap that are kept (spec: plugin 10 000).
    pub max_reorder: usize,
    /// Delivered payloads the application has not polled yet. When full, the
    /// next in-order frame is neither acked nor consumed: the peer resends it.
    pub max_undelivered: usize,
    /// Largest payload accepted in a received frame.
    pub max_payload: usize,
    pub initial_rtt: Duration,
    pub min_rto: Duration,
    pub max_rto: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_in_flight: 4096,
            max_reorder: 10_000,
            max_undelivered: 4096,
            max_payload: crate::frame::MAX_PAYLOAD_LEN,
            initial_rtt: Duration::from_millis(100),
            min_rto: Duration::from_millis(10),
            max_rto: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An in-order stream payload from the peer.
    Data { payload_type: PayloadType, payload: Bytes },
    /// A non-stream frame (`channel_closed`, `agent_session_state`,
    /// publication control, unknown types) for the caller to interpret.
    Control(Frame),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("send window is full ({0} frames in flight)")]
    WindowFull(usize),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("malformed acknowledge payload: {0}")]
    BadAck(String),
}

/// Counters for tests, benches and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames_sent: u64,
    pub retransmits: u64,
    pub duplicates_received: u64,
    pub acks_received: u64,
}

pub struct ReliableChannel {
    _private: (),
}

impl ReliableChannel {
    /// `epoch_ms_at_now` is the wall clock at `now`; CreatedDate of outgoing
    /// frames is derived from it so the core never reads a clock. `seed`
    /// drives message-id generation (ids need uniqueness, not secrecy).
    pub fn new(role: Role, config: Config, now: Instant, epoch_ms_at_now: u64, seed: u64) -> Self {
        todo!()
    }

    /// Queues a payload for reliable, in-order delivery to the peer.
    pub fn send(&mut self, payload_type: PayloadType, payload: Bytes, now: Instant) -> Result<(), SendError> {
        todo!()
    }

    /// Queues an unsequenced, never-retransmitted frame such as
    /// `agent_session_state` or `channel_closed` (flags 3, seq 0).
    pub fn send_unsequenced(&mut self, message_type: MessageType, payload: Bytes) -> Result<(), SendError> {
        todo!()
    }

    /// How many more frames `send` accepts now.
    pub fn send_capacity(&self) -> usize {
        todo!()
    }

    /// Feeds one received websocket binary message.
    pub fn handle_bytes(&mut self, buf: Bytes, now: Instant) -> Result<(), ProtoError> {
        todo!()
    }

    /// Feeds one decoded frame.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) -> Result<(), ProtoError> {
        todo!()
    }

    /// Runs retransmission timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        todo!()
    }

    /// The transport was replaced (reconnect/resume): everything unacked is
    /// due for retransmission at once.
    pub fn handle_reconnect(&mut self, now: Instant) {
        todo!()
    }

    /// Next encoded frame to write to the socket.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        todo!()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }

    /// When `handle_timeout` must next be called, if any timer is armed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }

    /// True when every sent stream frame has been acknowledged.
    pub fn is_flushed(&self) -> bool {
        todo!()
    }

    pub fn stats(&self) -> &Stats {
        todo!()
    }

    /// Current retransmission timeout (RFC 6298 style estimator of spec §2.3).
    pub fn rto(&self) -> Duration {
        todo!()
    }

    /// Raises the receive limit once the peer negotiated the fast path.
    pub fn set_max_payload(&mut self, max_payload: usize) {
        todo!()
    }
}
