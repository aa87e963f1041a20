//! Websocket connect (ws:// or wss://).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

/// Either a plain or a TLS stream, so one websocket type serves both.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

pub type WsStream = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("invalid websocket URL {0}")]
    BadUrl(String),
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
}

/// Connects to `url` (`ws://` or `wss://`), completing the upgrade. The max
/// message size is bounded (peer bytes are hostile).
pub async fn connect(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<WsStream, WsError> {
    todo!()
}
