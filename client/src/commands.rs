//! The API-calling subcommands: start-session, sessions list / terminate.

use std::path::PathBuf;
use std::sync::Arc;

use airlock_transport::api::ApiClient;
use airlock_transport::{credentials, tls};
use serde_json::json;

use crate::error::ClientError;
use crate::params::Parameters;
use crate::plugin::SessionInfo;
use crate::session::{ExitPolicy, Probed, SessionRunner};

pub const DEFAULT_REGION: &str = "us-east-1";

/// Global connection options, as the AWS CLI spells them.
#[derive(Debug, Clone, Default)]
pub struct ConnOpts {
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
}

pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let bundle = std::env::var_os("AWS_CA_BUNDLE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    Ok(tls::client_config(bundle.as_deref())?)
}

pub fn api_client(
    opts: &ConnOpts,
    tls: Arc<rustls::ClientConfig>,
) -> Result<ApiClient, ClientError> {
    let profile = opts.profile.as_deref();
    let region = credentials::resolve_region(opts.region.as_deref(), profile)
        .unwrap_or_else(|| DEFAULT_REGION.to_string());
    let endpoint = credentials::resolve_endpoint(opts.endpoint_url.as_deref(), profile)
        .unwrap_or_else(|| format!("https://ssm.{region}.amazonaws.com"));
    let creds = credentials::resolve_credentials(profile)?;
    Ok(ApiClient::new(&endpoint, &region, creds, tls)?)
}

pub struct StartArgs {
    pub target: String,
    pub document_name: Option<String>,
    pub parameters: Option<Parameters>,
    pub reason: Option<String>,
}

pub fn start_request_body(args: &StartArgs) -> serde_json::Value {
    let mut body = json!({ "Target": args.target });
    if let Some(d) = &args.document_name {
        body["DocumentName"] = json!(d);
    }
    if let Some(p) = &args.parameters {
        body["Parameters"] = json!(p);
    }
    if let Some(r) = &args.reason {
        body["Reason"] = json!(r);
    }
    body
}

/// StartSession, then a shell (or command) session, or a port session when
/// the document is a custom one whose handshake asks for it (`port_opts`).
pub async fn start_session(
    opts: &ConnOpts,
    args: &StartArgs,
    port_opts: crate::port::PortOptions,
) -> Result<i32, ClientError> {
    let tls = tls_config()?;
    let api = api_client(opts, tls.clone())?;
    let resp = api.ssm("StartSession", &start_request_body(args)).await?;
    let info: SessionInfo = serde_json::from_value(resp)
        .map_err(|e| ClientError::BadResponse(format!("StartSession: {e}")))?;
    let opened = if crate::session::is_shell_document(args.document_name.as_deref()) {
        None
    } else {
        match crate::session::probe(&info, &tls).await? {
            Probed::Port(dc, request) => {
                let kms = crate::crypto::KmsEnv {
                    api: Some(api),
                    session_id: info.session_id.clone(),
                    target: Some(args.target.clone()),
                };
                return crate::port::run_on(dc, Some(request), info, tls, port_opts, kms).await;
            }
            Probed::Shell(dc, first) => Some((dc, first)),
        }
    };
    SessionRunner {
        info,
        tls,
        api: Some(api),
        exit_policy: ExitPolicy::RemoteStatus,
        target: Some(args.target.clone()),
    }
    .run_on(opened)
    .await
}

/// StartSession for a port document, then the port-session runner.
pub async fn start_port_session(
    opts: &ConnOpts,
    args: &StartArgs,
    port_opts: crate::port::PortOptions,
) -> Result<i32, ClientError> {
    let tls = tls_config()?;
    let api = api_client(opts, tls.clone())?;
    let resp = api.ssm("StartSession", &start_request_body(args)).await?;
    let info: SessionInfo = serde_json::from_value(resp)
        .map_err(|e| ClientError::BadResponse(format!("StartSession: {e}")))?;
    let kms = crate::crypto::KmsEnv {
        api: Some(api),
        session_id: info.session_id.clone(),
        target: Some(args.target.clone()),
    };
    crate::port::run(info, tls, port_opts, kms).await
}

pub async fn terminate_session(opts: &ConnOpts, session_id: &str) -> Result<i32, ClientError> {
    let api = api_client(opts, tls_config()?)?;
    let resp = api
        .ssm("TerminateSession", &json!({ "SessionId": session_id }))
        .await?;
    let id = resp
        .get("SessionId")
        .and_then(|v| v.as_str())
        .unwrap_or(session_id);
    println!("{id}");
    Ok(0)
}

fn format_date(v: Option<&serde_json::Value>) -> String {
    let Some(secs) = v.and_then(|v| v.as_f64()) else {
        return v.and_then(|v| v.as_str()).unwrap_or("-").to_string();
    };
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".to_string())
}

pub fn sessions_table(sessions: &[serde_json::Value]) -> String {
    let headers = ["SESSION ID", "TARGET", "STATUS", "OWNER", "START", "END"];
    let rows: Vec<[String; 6]> = sessions
        .iter()
        .map(|s| {
            let field = |k: &str| s.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
            [
                field("SessionId"),
                field("Target"),
                field("Status"),
                field("Owner"),
                format_date(s.get("StartDate")),
                if s.get("EndDate").is_some() {
                    format_date(s.get("EndDate"))
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths.iter()).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

pub async fn list_sessions(opts: &ConnOpts, state: &str) -> Result<i32, ClientError> {
    let api = api_client(opts, tls_config()?)?;
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    // Bounded pagination: a gateway returning endless tokens cannot loop us forever.
    for _ in 0..1000 {
        let mut body = json!({ "State": state, "MaxResults": 200 });
        if let Some(t) = &next {
            body["NextToken"] = json!(t);
        }
        let resp = api.ssm("DescribeSessions", &body).await?;
        if let Some(list) = resp.get("Sessions").and_then(|v| v.as_array()) {
            all.extend(list.iter().cloned());
        }
        next = resp
            .get("NextToken")
            .and_then(|v| v.as_str())
            .filter(|t| !t.is_empty())
            .map(String::from);
        if next.is_none() {
            break;
        }
    }
    print!("{}", sessions_table(&all));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_body() {
        let mut p = Parameters::new();
        p.insert("portNumber".into(), vec!["22".into()]);
        let body = start_request_body(&StartArgs {
            target: "mi-1".into(),
            document_name: Some("AWS-StartSSHSession".into()),
            parameters: Some(p),
            reason: None,
        });
        assert_eq!(
            body,
            json!({"Target":"mi-1","DocumentName":"AWS-StartSSHSession","Parameters":{"portNumber":["22"]}})
        );
    }

    #[test]
    fn table_renders() {
        let t = sessions_table(&[
            json!({"SessionId":"admin-1","Target":"mi-1","Status":"Connected","Owner":"arn:x","StartDate":0}),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("SESSION ID"));
        assert!(lines[1].starts_with("admin-1"));
        assert!(lines[1].contains("1970-01-01T00:00:00Z"));
    }
}
