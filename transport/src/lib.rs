//! What the agent and the `airlock` CLI share on the client side of the wire.
//!
//! - [`tls`]: rustls client config (system roots + `AWS_CA_BUNDLE`).
//! - [`tls_stream`]: TLS 1.3 with rustls's handshake and our own record
//!   layer, for websockets (the gateway accepts with it too).
//! - [`api`]: SigV4-signed AWS JSON 1.1 calls (`AmazonSSM.*`, `TrentService.*`)
//!   and plain signed POSTs (`/v1/control-channel/..`).
//! - [`ws`]: websocket connect over TCP or TLS.
//! - [`wsconn`]: websocket framing on an upgraded stream, without the
//!   per-message copies (used by the gateway too).
//! - [`credentials`]: AWS credentials from the environment and `~/.aws`.
//! - [`datachannel`]: the task that pumps a `proto::ReliableChannel` over a
//!   websocket, keeps it alive and survives reconnects.
//! - [`batch`]: port-session reads that become payloads without copies.
//! - [`tcp_progress`]: whether the peer's kernel still acknowledges what we
//!   send, which tells a dead path from backpressure.
//!
//! The gateway uses the socket-level pieces too, so both ends of a websocket
//! read and allocate alike: [`ws`]'s settings, [`tls_stream`] and [`alloc`]'s
//! allocator thresholds.

pub mod alloc;
pub mod api;
pub mod batch;
pub mod credentials;
pub mod datachannel;
pub mod tcp_progress;
#[cfg(test)]
mod testutil;
pub mod tls;
pub mod tls_stream;
pub mod ws;
pub mod wsconn;
