//! `airlock-agent register`: trade an activation code for an identity.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_sigv4::{Credentials, SecretKey};
use airlock_transport::api::ApiClient;
use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::state::{self, Registration};
use crate::sysinfo;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterResponse {
    instance_id: String,
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    region: Option<String>,
}

pub fn dummy_credentials() -> Credentials {
    Credentials {
        access_key_id: String::new(),
        secret_access_key: SecretKey::new(""),
        session_token: None,
    }
}

pub struct RegisterArgs<'a> {
    pub gateway: &'a str,
    pub activation_id: &'a str,
    pub activation_code: &'a str,
    pub state_dir: &'a Path,
    pub ca_bundle: Option<PathBuf>,
    pub region: Option<String>,
    pub tls: Arc<rustls::ClientConfig>,
}

pub async fn register(args: RegisterArgs<'_>) -> Result<Registration> {
    let gateway = args.gateway.trim_end_matches('/');
    let region = args.region.clone().unwrap_or_else(|| "us-east-1".into());
    let api = ApiClient::new(gateway, &region, dummy_credentials(), args.tls)?;
    let (name, version) = sysinfo::os_release();
    let body = serde_json::json!({
        "ActivationId": args.activation_id,
        "ActivationCode": args.activation_code,
        "ComputerName": sysinfo::hostname(),
        "IPAddress": sysinfo::ip_address(),
        "PlatformName": name,
        "PlatformVersion": version,
        "AgentVersion": sysinfo::agent_version(),
    });
    let (status, resp) = api.post_unsigned("/airlock/v1/register", &body).await?;
    if status != 200 {
        let err: serde_json::Value = serde_json::from_slice(&resp).unwrap_or_default();
        let code = err
            .get("__type")
            .and_then(|v| v.as_str())
            .unwrap_or("HTTP error");
        let msg = err
            .get("message")
            .or_else(|| err.get("Message"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        bail!("registration failed (HTTP {status}): {code}: {msg}");
    }
    let r: RegisterResponse =
        serde_json::from_slice(&resp).context("malformed registration response")?;
    if !r.instance_id.starts_with("mi-") {
        bail!("gateway returned an unexpected instance id");
    }
    let ca_bundle = args
        .ca_bundle
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .map(|p| p.to_string_lossy().into_owned());
    let reg = Registration {
        instance_id: r.instance_id,
        access_key_id: r.access_key_id,
        secret_access_key: r.secret_access_key,
        region: r.region.filter(|s| !s.is_empty()).unwrap_or(region),
        gateway: gateway.to_string(),
        ca_bundle,
    };
    state::save(args.state_dir, &reg)?;
    Ok(reg)
}
