//! Shared agent context and the signed channel-token call.

use std::sync::Arc;

use airlock_proto::messages::CreateChannelRequest;
use airlock_transport::api::ApiClient;
use anyhow::{bail, Result};

use crate::state::Registration;
use crate::sysinfo::extract_token;

pub struct Agent {
    pub reg: Registration,
    pub api: ApiClient,
    pub tls: Arc<rustls::ClientConfig>,
    /// `wss://host:port` (or `ws://` for a plain-HTTP gateway).
    pub ws_base: String,
    pub shell: Option<String>,
    pub run_as: Option<String>,
    /// Where registration and the recordings spool live.
    pub state_dir: std::path::PathBuf,
}

pub fn ws_base(gateway: &str) -> String {
    let g = gateway.trim_end_matches('/');
    if let Some(rest) = g.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = g.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        format!("wss://{g}")
    }
}

impl Agent {
    /// `POST <path>` signed for `ssmmessages`; expects 201 + XML `<TokenValue>`.
    pub async fn channel_token(&self, path: &str, client_id: Option<String>) -> Result<String> {
        let req = CreateChannelRequest {
            message_schema_version: "1.0".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            client_id,
        };
        let body = serde_json::to_vec(&req)?;
        let (status, resp) = self.api.post_signed("ssmmessages", path, &body).await?;
        if status != 201 {
            let text = String::from_utf8_lossy(resp.get(..resp.len().min(512)).unwrap_or(&[]))
                .into_owned();
            bail!("{path} answered HTTP {status}: {text}");
        }
        match extract_token(&resp) {
            Some(t) => Ok(t),
            None => bail!("{path} answered without a TokenValue"),
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_base_maps_schemes() {
        assert_eq!(ws_base("https://h:1/"), "wss://h:1");
        assert_eq!(ws_base("http://127.0.0.1:2"), "ws://127.0.0.1:2");
    }
}
