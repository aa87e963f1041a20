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
    /// Destinations port sessions may dial.
    pub port_policy: crate::port_policy::Policy,
    /// Short-lived role credentials (issue 3), fetched with the
    /// registration key and refreshed halfway through their lifetime.
    pub role: tokio::sync::Mutex<Option<RoleApi>>,
}

/// A client signing with role credentials, and when to replace it.
pub struct RoleApi {
    api: ApiClient,
    refresh_at_ms: u64,
    expires_ms: u64,
}

/// Where the gateway hands out role credentials.
const ROLE_CREDENTIALS_PATH: &str = "/airlock/v1/role-credentials";

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentialsResponse {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    /// Epoch seconds.
    expiration: f64,
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
    /// The client for the agent's own calls: role credentials, refreshed
    /// before they expire; the registration key only when the gateway does
    /// not issue role credentials (older gateways answer 404).
    pub async fn call_api(&self) -> ApiClient {
        let mut guard = self.role.lock().await;
        let now = now_ms();
        if let Some(r) = guard.as_ref() {
            if now < r.refresh_at_ms {
                return r.api.clone();
            }
        }
        match self.fetch_role_credentials().await {
            Ok(Some(r)) => {
                let api = r.api.clone();
                *guard = Some(r);
                api
            }
            Ok(None) => self.api.clone(),
            Err(e) => {
                tracing::warn!("could not refresh role credentials: {e:#}");
                match guard.as_ref() {
                    // Still valid: keep using them and retry on the next call.
                    Some(r) if now < r.expires_ms => r.api.clone(),
                    _ => self.api.clone(),
                }
            }
        }
    }

    async fn fetch_role_credentials(&self) -> Result<Option<RoleApi>> {
        let (status, body) = self
            .api
            .post_signed("ssm", ROLE_CREDENTIALS_PATH, b"{}")
            .await?;
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            let text = String::from_utf8_lossy(body.get(..body.len().min(512)).unwrap_or(&[]))
                .into_owned();
            bail!("{ROLE_CREDENTIALS_PATH} answered HTTP {status}: {text}");
        }
        let r: RoleCredentialsResponse = serde_json::from_slice(&body)?;
        let expires_ms = (r.expiration * 1000.0) as u64;
        let now = now_ms();
        if expires_ms <= now {
            bail!("{ROLE_CREDENTIALS_PATH} answered already expired credentials");
        }
        let creds = airlock_sigv4::Credentials {
            access_key_id: r.access_key_id,
            secret_access_key: airlock_sigv4::SecretKey::new(r.secret_access_key),
            session_token: Some(r.session_token),
        };
        tracing::info!(
            access_key_id = %creds.access_key_id,
            expires_in_secs = (expires_ms - now) / 1000,
            "role credentials obtained"
        );
        let api = ApiClient::new(
            self.api.endpoint(),
            self.api.region(),
            creds,
            self.tls.clone(),
        )?;
        Ok(Some(RoleApi {
            api,
            refresh_at_ms: now + (expires_ms - now) / 2,
            expires_ms,
        }))
    }

    /// `POST <path>` signed for `ssmmessages`; expects 201 + XML `<TokenValue>`.
    pub async fn channel_token(&self, path: &str, client_id: Option<String>) -> Result<String> {
        let req = CreateChannelRequest {
            message_schema_version: "1.0".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            client_id,
        };
        let body = serde_json::to_vec(&req)?;
        let api = self.call_api().await;
        let (status, resp) = api.post_signed("ssmmessages", path, &body).await?;
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
