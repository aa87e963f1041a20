//! `airlock console`: prints a sign-in link for the gateway's browser console.
//!
//! The link carries short-lived credentials minted by the gateway for the
//! caller (never the long-term secret) in the URL fragment, which browsers do
//! not send to servers; the console moves them into the tab's
//! sessionStorage and scrubs the address bar.

use airlock_transport::api::ApiError;
use serde_json::{json, Value};

use crate::commands::{api_client, tls_config, ConnOpts};
use crate::error::ClientError;

/// The gateway endpoint that mints sign-in credentials.
pub const PATH: &str = "/airlock/v1/console-credentials";

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The console URL for `endpoint` with `creds` in its fragment.
pub fn sign_in_link(endpoint: &str, creds: &Value, region: &str) -> Result<String, ClientError> {
    let field = |k: &str| {
        creds
            .get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ClientError::BadResponse(format!("sign-in credentials lack {k}")))
    };
    let query = [
        ("AccessKeyId", field("AccessKeyId")?),
        ("SecretAccessKey", field("SecretAccessKey")?),
        ("SessionToken", field("SessionToken")?),
        ("Region", region),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", encode(v)))
    .collect::<Vec<_>>()
    .join("&");
    Ok(format!(
        "{}/console/#/signin?{query}",
        endpoint.trim_end_matches('/')
    ))
}

pub async fn run(opts: &ConnOpts, duration_secs: Option<u32>) -> Result<i32, ClientError> {
    let api = api_client(opts, tls_config()?)?;
    let mut body = json!({});
    if let Some(d) = duration_secs {
        body["DurationSeconds"] = json!(d);
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    let (status, resp) = api.post_signed("ssm", PATH, &bytes).await?;
    let parsed: Value = serde_json::from_slice(&resp).unwrap_or(Value::Null);
    if status != 200 {
        let field = |n: &str| parsed.get(n).and_then(Value::as_str).unwrap_or("");
        return Err(ClientError::Api(ApiError {
            operation: "CreateConsoleSignInLink".into(),
            code: field("__type").to_string(),
            message: field("message").to_string(),
            status,
        }));
    }
    let region = parsed
        .get("Region")
        .and_then(Value::as_str)
        .unwrap_or(api.region())
        .to_string();
    let link = sign_in_link(api.endpoint(), &parsed["Credentials"], &region)?;
    println!("{link}");
    let expires = parsed["Credentials"]["Expiration"].clone();
    eprintln!(
        "This link signs a browser in as you until {} (epoch seconds); treat it like a password.",
        expires
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_escapes_every_credential() {
        let creds =
            json!({"AccessKeyId": "ASIAX", "SecretAccessKey": "a+b/c=", "SessionToken": "t_-~."});
        let link = sign_in_link("https://gw:8443/", &creds, "eu-west-1").unwrap();
        assert_eq!(
            link,
            "https://gw:8443/console/#/signin?AccessKeyId=ASIAX&SecretAccessKey=a%2Bb%2Fc%3D&SessionToken=t_-~.&Region=eu-west-1"
        );
        assert!(sign_in_link("https://gw", &json!({"AccessKeyId": "A"}), "r").is_err());
    }
}
