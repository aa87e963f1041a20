//! The data-channel driver: one task per session that pumps a
//! [`ReliableChannel`] over a websocket. It reads → `handle_bytes` →
//! `poll_transmit` → writes, and waits on the first of (socket, deadline,
//! command). No protocol decisions are made here.

use std::time::Duration;

use airlock_proto::reliable::{Config, Event};
use airlock_proto::{PayloadType, ReliableChannel, Role};
use bytes::Bytes;

use crate::ws::WsStream;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("data channel closed")]
    Closed,
    #[error("websocket error: {0}")]
    Ws(String),
    #[error("protocol error: {0}")]
    Proto(String),
}

/// Why the socket under the channel stopped (the channel itself survives and
/// can be given a new socket with [`DataChannel::reconnect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// Peer sent a websocket close frame (code, reason).
    Closed(u16, String),
    /// Read/write error or EOF without close.
    Lost(String),
}

#[derive(Debug)]
pub enum ChannelEvent {
    Proto(Event),
    /// The websocket went away; sending keeps buffering until reconnect.
    Disconnected(Disconnect),
}

/// Handle to the driver task. Dropping it stops the task.
pub struct DataChannel {
    _private: (),
}

impl DataChannel {
    /// Sends `open_message` as the first text frame, then drives `channel`.
    pub fn spawn(ws: WsStream, open_message: String, role: Role, config: Config) -> Self {
        todo!()
    }

    /// Queues a payload; waits while the send window is full (backpressure).
    pub async fn send(&self, payload_type: PayloadType, payload: Bytes) -> Result<(), ChannelError> {
        todo!()
    }

    /// Sends an unsequenced frame (e.g. `agent_session_state`).
    pub async fn send_unsequenced(&self, message_type: airlock_proto::MessageType, payload: Bytes) -> Result<(), ChannelError> {
        todo!()
    }

    /// Next event; None once the driver has stopped.
    pub async fn recv(&mut self) -> Option<ChannelEvent> {
        todo!()
    }

    /// Replaces the socket after a drop; unacked frames are resent at once.
    pub async fn reconnect(&self, ws: WsStream, open_message: String) -> Result<(), ChannelError> {
        todo!()
    }

    /// Waits until everything sent has been acked, or `timeout` passes.
    pub async fn flush(&self, timeout: Duration) -> bool {
        todo!()
    }

    /// Raises the receive payload limit (after fast-path negotiation).
    pub async fn set_max_payload(&self, max_payload: usize) -> Result<(), ChannelError> {
        todo!()
    }

    /// Closes the websocket cleanly and stops the task.
    pub async fn close(self) {
        todo!()
    }
}

#[allow(dead_code)]
fn _assert_types(_: ReliableChannel) {}
