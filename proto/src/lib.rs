//! Sans-IO core of Airlock: the Session Manager wire formats and the state
//! machines that run on them. Nothing here touches a socket or reads a clock;
//! callers pass `now` in and poll for what to send.
//!
//! - [`frame`]: the 120-byte-header binary frame (encode, decode, peek).
//! - [`reliable`]: per-direction sequencing, acks, reordering, retransmission.
//! - [`messages`]: JSON payloads of the control and data channels.
//! - [`handshake`]: session-type / KMS / capability negotiation payloads.
//! - [`crypto`]: per-direction AES-256-GCM session encryption and the KMS challenge.

pub mod crypto;
pub mod frame;
pub mod handshake;
pub mod messages;
pub mod reliable;
pub mod smux;

pub use frame::{Frame, FrameBuf, FrameError, MessageType, PayloadType};
pub use reliable::{ReliableChannel, Role};
