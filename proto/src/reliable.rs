//! The reliability layer (spec §2) as a sans-IO state machine.
//!
//! Input: `handle_frame(frame, now)`, `handle_timeout(now)`, `send(..)`.
//! Output: `poll_transmit()`, `poll_event()`, `poll_timeout()`.
//! The caller owns the clock and the socket.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use crate::frame::{flags, Frame, FrameBuf, FrameError, MessageType, PayloadType, MAX_PAYLOAD_LEN};
use crate::messages::Acknowledge;

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
    /// The flow-control window in bytes: no frame is sent while this many
    /// encoded bytes await their ack (one frame may cross it).
    pub max_in_flight_bytes: usize,
    /// Frames received ahead of a gap that are kept (spec: plugin 10 000).
    pub max_reorder: usize,
    /// Delivered payloads the application has not polled yet. When full, the
    /// next in-order frame is neither acked nor consumed: the peer resends it.
    pub max_undelivered: usize,
    /// Payload bytes delivered but not polled, and separately payload bytes
    /// held ahead of a gap, at most this many each (one frame may cross it).
    pub max_buffered_bytes: usize,
    /// Largest payload accepted in a received frame.
    pub max_payload: usize,
    pub initial_rtt: Duration,
    pub min_rto: Duration,
    pub max_rto: Duration,
}

/// 16 MiB: a gigabyte per second over a 16 ms round trip, and a bound on
/// what a session holds for an unreachable peer.
pub const DEFAULT_WINDOW_BYTES: usize = 16 << 20;

impl Default for Config {
    fn default() -> Self {
        Config {
            max_in_flight: 4096,
            max_in_flight_bytes: DEFAULT_WINDOW_BYTES,
            max_reorder: 10_000,
            max_undelivered: 4096,
            max_buffered_bytes: 2 * DEFAULT_WINDOW_BYTES,
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
    Data {
        payload_type: PayloadType,
        payload: Bytes,
    },
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
    role: Role,
    config: Config,
    t0: Instant,
    epoch_ms_at_t0: u64,
    /// Latest `now` seen, for frames built without one (`send_unsequenced`).
    last_now: Instant,
    rng: u64,
    stats: Stats,

    // Send side.
    next_send_seq: i64,
    unacked: BTreeMap<i64, InFlight>,
    /// Encoded bytes in `unacked`.
    in_flight_bytes: usize,
    /// Retransmission deadlines, `(due, seq)`; exactly one entry per unacked frame.
    timers: BTreeSet<(Instant, i64)>,
    transmit: VecDeque<Bytes>,
    srtt: Duration,
    rttvar: Duration,
    rto: Duration,

    // Receive side.
    expected_seq: i64,
    /// Frames ahead of a gap, already acked; at most `max_reorder` entries.
    reorder: BTreeMap<i64, (PayloadType, Bytes)>,
    events: VecDeque<Event>,
    /// `Event::Data` entries in `events`; bounded by `max_undelivered`.
    undelivered: usize,
    /// Their payload bytes; bounded by `max_buffered_bytes`.
    undelivered_bytes: usize,
    /// Payload bytes in `reorder`; bounded by `max_buffered_bytes`.
    reorder_bytes: usize,
    /// `Event::Control` entries in `events`; bounded by [`MAX_PENDING_CONTROL`].
    pending_control: usize,
    /// Fast path (negotiated): outgoing frames carry no payload digest, and
    /// incoming ones without a digest are accepted.
    send_digest: bool,
    accept_missing_digest: bool,
}

/// Airlock capability feature: both ends may omit payload digests
/// ([`ReliableChannel::set_payload_digest`]).
pub const FEATURE_NO_PAYLOAD_DIGEST: &str = "no_payload_digest";

/// Control frames are never retransmitted by peers, so they are queued until
/// this many are pending and dropped beyond it (a peer flooding them gains
/// nothing).
const MAX_PENDING_CONTROL: usize = 1024;

struct InFlight {
    encoded: Bytes,
    first_sent: Instant,
    deadline: Instant,
    retransmitted: bool,
}

impl ReliableChannel {
    /// `epoch_ms_at_now` is the wall clock at `now`; CreatedDate of outgoing
    /// frames is derived from it so the core never reads a clock. `seed`
    /// drives message-id generation (ids need uniqueness, not secrecy).
    pub fn new(role: Role, config: Config, now: Instant, epoch_ms_at_now: u64, seed: u64) -> Self {
        let mut config = config;
        config.max_payload = config.max_payload.min(MAX_PAYLOAD_LEN);
        let rto =
            (config.initial_rtt * 2).clamp(config.min_rto, config.max_rto.max(config.min_rto));
        ReliableChannel {
            role,
            t0: now,
            epoch_ms_at_t0: epoch_ms_at_now,
            last_now: now,
            rng: seed,
            stats: Stats::default(),
            next_send_seq: 0,
            unacked: BTreeMap::new(),
            in_flight_bytes: 0,
            timers: BTreeSet::new(),
            transmit: VecDeque::new(),
            srtt: config.initial_rtt,
            rttvar: Duration::ZERO,
            rto,
            expected_seq: 0,
            reorder: BTreeMap::new(),
            events: VecDeque::new(),
            undelivered: 0,
            undelivered_bytes: 0,
            reorder_bytes: 0,
            pending_control: 0,
            send_digest: true,
            accept_missing_digest: false,
            config,
        }
    }

    /// Queues a payload for reliable, in-order delivery to the peer.
    pub fn send(
        &mut self,
        payload_type: PayloadType,
        payload: Bytes,
        now: Instant,
    ) -> Result<(), SendError> {
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD_LEN,
            }
            .into());
        }
        let mut buf = FrameBuf::with_capacity(payload.len());
        buf.buf_mut().extend_from_slice(&payload);
        self.send_buf(payload_type, buf, now)
    }

    /// Like [`ReliableChannel::send`], framing the payload where it lies.
    pub fn send_buf(
        &mut self,
        payload_type: PayloadType,
        payload: FrameBuf,
        now: Instant,
    ) -> Result<(), SendError> {
        self.observe(now);
        if self.send_capacity() == 0 {
            return Err(SendError::WindowFull(self.unacked.len()));
        }
        let seq = self.next_send_seq;
        let message_type = match self.role {
            Role::Client => MessageType::InputStreamData,
            Role::Agent => MessageType::OutputStreamData,
        };
        let frame_flags = if seq == 0 { flags::SYN } else { 0 };
        let id = self.next_id();
        let header = Frame::new(
            message_type,
            seq,
            frame_flags,
            id,
            payload_type,
            Bytes::new(),
            self.created_date(now),
        );
        let encoded = payload.into_wire(&header, self.send_digest)?;
        self.next_send_seq = seq.saturating_add(1);
        let deadline = now + self.rto;
        self.in_flight_bytes += encoded.len();
        self.unacked.insert(
            seq,
            InFlight {
                encoded: encoded.clone(),
                first_sent: now,
                deadline,
                retransmitted: false,
            },
        );
        self.timers.insert((deadline, seq));
        self.transmit.push_back(encoded);
        self.stats.frames_sent += 1;
        Ok(())
    }

    /// Queues an unsequenced, never-retransmitted frame such as
    /// `agent_session_state` or `channel_closed` (flags 3, seq 0).
    pub fn send_unsequenced(
        &mut self,
        message_type: MessageType,
        payload: Bytes,
    ) -> Result<(), SendError> {
        let id = self.next_id();
        let date = self.created_date(self.last_now);
        let frame = Frame::new(
            message_type,
            0,
            flags::ACK,
            id,
            PayloadType::Undefined,
            payload,
            date,
        );
        let encoded = frame.encode_opts(self.send_digest)?;
        self.transmit.push_back(encoded);
        self.stats.frames_sent += 1;
        Ok(())
    }

    /// How many more frames `send` accepts now (0 while the byte window is
    /// full).
    pub fn send_capacity(&self) -> usize {
        if self.in_flight_bytes >= self.config.max_in_flight_bytes {
            return 0;
        }
        self.config.max_in_flight.saturating_sub(self.unacked.len())
    }

    /// Feeds one received websocket binary message.
    pub fn handle_bytes(&mut self, buf: Bytes, now: Instant) -> Result<(), ProtoError> {
        let frame = Frame::decode_opts(buf, self.config.max_payload, self.accept_missing_digest)?;
        self.handle_frame(frame, now)
    }

    /// Feeds one decoded frame.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) -> Result<(), ProtoError> {
        self.observe(now);
        if frame.message_type == MessageType::Acknowledge {
            return self.handle_ack(&frame.payload, now);
        }
        if !frame.message_type.is_stream_data() {
            if self.pending_control < MAX_PENDING_CONTROL {
                self.pending_control += 1;
                self.events.push_back(Event::Control(frame));
            }
            return Ok(());
        }
        let seq = frame.sequence_number;
        if seq < self.expected_seq || self.reorder.contains_key(&seq) {
            // Our ack was lost: say it again so the peer stops resending.
            self.stats.duplicates_received += 1;
            self.queue_ack(&frame, now);
        } else if seq == self.expected_seq {
            if self.undelivered >= self.config.max_undelivered
                || self.undelivered_bytes >= self.config.max_buffered_bytes
            {
                // Not consumed and not acked: the peer resends it later.
                return Ok(());
            }
            self.deliver(frame.payload_type, frame.payload.clone());
            self.expected_seq += 1;
            self.queue_ack(&frame, now);
            self.drain_reorder();
        } else {
            let ahead = u64::try_from(seq - self.expected_seq).unwrap_or(u64::MAX);
            let room = self.reorder.len() < self.config.max_reorder
                && self.reorder_bytes < self.config.max_buffered_bytes;
            if room && ahead <= self.config.max_reorder as u64 {
                self.reorder_bytes += frame.payload.len();
                self.reorder
                    .insert(seq, (frame.payload_type, frame.payload.clone()));
                self.queue_ack(&frame, now);
            }
            // Otherwise dropped unacked; the peer retransmits it.
        }
        Ok(())
    }

    /// Runs retransmission timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.observe(now);
        while let Some(&(due, seq)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.remove(&(due, seq));
            let Some(entry) = self.unacked.get_mut(&seq) else {
                continue;
            };
            let deadline = now + self.rto;
            entry.deadline = deadline;
            entry.retransmitted = true;
            self.transmit.push_back(entry.encoded.clone());
            self.timers.insert((deadline, seq));
            self.stats.retransmits += 1;
        }
    }

    /// The transport was replaced (reconnect/resume): everything unacked is
    /// due for retransmission at once.
    pub fn handle_reconnect(&mut self, now: Instant) {
        self.observe(now);
        self.timers.clear();
        for (&seq, entry) in self.unacked.iter_mut() {
            entry.deadline = now;
            self.timers.insert((now, seq));
        }
        self.handle_timeout(now);
    }

    /// Next encoded frame to write to the socket.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front()?;
        match event {
            Event::Data { ref payload, .. } => {
                self.undelivered = self.undelivered.saturating_sub(1);
                self.undelivered_bytes = self.undelivered_bytes.saturating_sub(payload.len());
                self.drain_reorder();
            }
            Event::Control(_) => self.pending_control = self.pending_control.saturating_sub(1),
        }
        Some(event)
    }

    /// When `handle_timeout` must next be called, if any timer is armed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(due, _)| due)
    }

    /// True when every sent stream frame has been acknowledged.
    pub fn is_flushed(&self) -> bool {
        self.unacked.is_empty()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Current retransmission timeout (RFC 6298 style estimator of spec §2.3).
    pub fn rto(&self) -> Duration {
        self.rto
    }

    /// Raises the receive limit once the peer negotiated the fast path.
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.config.max_payload = max_payload.min(MAX_PAYLOAD_LEN);
    }

    /// Payload digests (fast path between Airlock peers): `send` false stops
    /// computing them for new frames; `accept_missing` accepts frames whose
    /// digest field is zero. Enable accepting before the peer may stop
    /// sending them.
    pub fn set_payload_digest(&mut self, send: bool, accept_missing: bool) {
        self.send_digest = send;
        self.accept_missing_digest = accept_missing;
    }

    /// Stream frames sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.unacked.len()
    }

    fn observe(&mut self, now: Instant) {
        if now > self.last_now {
            self.last_now = now;
        }
    }

    fn created_date(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.t0).as_millis();
        self.epoch_ms_at_t0
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    /// splitmix64: ids must be unique per channel, not unpredictable.
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_id(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_be_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    fn deliver(&mut self, payload_type: PayloadType, payload: Bytes) {
        self.undelivered += 1;
        self.undelivered_bytes += payload.len();
        self.events.push_back(Event::Data {
            payload_type,
            payload,
        });
    }

    /// Moves buffered frames that are now in order into the event queue, as
    /// far as `max_undelivered` allows (they were acked when stored).
    fn drain_reorder(&mut self) {
        while self.undelivered < self.config.max_undelivered {
            let Some((payload_type, payload)) = self.reorder.remove(&self.expected_seq) else {
                break;
            };
            self.reorder_bytes = self.reorder_bytes.saturating_sub(payload.len());
            self.deliver(payload_type, payload);
            self.expected_seq += 1;
        }
    }

    fn queue_ack(&mut self, frame: &Frame, now: Instant) {
        let ack = Acknowledge {
            message_type: frame.message_type.as_str().to_string(),
            message_id: frame.message_id.to_string(),
            sequence_number: frame.sequence_number,
            is_sequential: true,
        };
        // Serializing a struct of strings and integers cannot fail.
        let Ok(json) = serde_json::to_vec(&ack) else {
            return;
        };
        let id = self.next_id();
        let ack_frame = Frame::new(
            MessageType::Acknowledge,
            0,
            flags::ACK,
            id,
            PayloadType::Undefined,
            Bytes::from(json),
            self.created_date(now),
        );
        if let Ok(encoded) = ack_frame.encode_opts(self.send_digest) {
            self.transmit.push_back(encoded);
            self.stats.frames_sent += 1;
        }
    }

    fn handle_ack(&mut self, payload: &[u8], now: Instant) -> Result<(), ProtoError> {
        let ack: Acknowledge =
            serde_json::from_slice(payload).map_err(|e| ProtoError::BadAck(e.to_string()))?;
        self.stats.acks_received += 1;
        // Acks match on sequence number only (spec §2.1); unknown ones are
        // late duplicates.
        let Some(entry) = self.unacked.remove(&ack.sequence_number) else {
            return Ok(());
        };
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(entry.encoded.len());
        self.timers.remove(&(entry.deadline, ack.sequence_number));
        // Karn: a retransmitted frame's ack is ambiguous, so no sample.
        if !entry.retransmitted {
            self.update_rtt(now.saturating_duration_since(entry.first_sent));
        }
        Ok(())
    }

    fn update_rtt(&mut self, sample: Duration) {
        let diff = self.srtt.abs_diff(sample);
        self.rttvar = self.rttvar * 3 / 4 + diff / 4;
        self.srtt = self.srtt * 7 / 8 + sample / 8;
        let rto = self.srtt + (self.rttvar * 4).max(self.config.min_rto);
        self.rto = rto.clamp(
            self.config.min_rto,
            self.config.max_rto.max(self.config.min_rto),
        );
    }
}
