//! Signed calls to the gateway's AWS-compatible APIs.

use std::sync::Arc;
use std::time::Duration;

use airlock_sigv4::Credentials;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;

use crate::ws::Target;

/// An AWS-style error returned by the gateway.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("An error occurred ({code}) when calling the {operation} operation: {message}")]
pub struct ApiError {
    pub operation: String,
    pub code: String,
    pub message: String,
    pub status: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("invalid endpoint URL {0}")]
    BadEndpoint(String),
    #[error("cannot reach {endpoint}: {reason}")]
    Transport { endpoint: String, reason: String },
    #[error("malformed response: {0}")]
    BadResponse(String),
}

/// Largest response body read; anything longer is an error.
const MAX_RESPONSE_BODY: usize = 16 << 20;
/// Whole-call deadline (connect, TLS, request, response body).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

struct Inner {
    endpoint: String,
    target: Target,
    region: String,
    credentials: Credentials,
    tls: Arc<rustls::ClientConfig>,
}

/// One endpoint (`https://host:port` or `http://127.0.0.1:port`), one set of
/// credentials, one region. Cheap to clone.
#[derive(Clone)]
pub struct ApiClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("endpoint", &self.inner.endpoint)
            .field("region", &self.inner.region)
            .field("access_key_id", &self.inner.credentials.access_key_id)
            .finish()
    }
}

/// A response as read off the wire.
struct RawResponse {
    status: u16,
    body: Vec<u8>,
}

impl ApiClient {
    pub fn new(
        endpoint: &str,
        region: &str,
        credentials: Credentials,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, CallError> {
        let trimmed = endpoint.trim().trim_end_matches('/');
        let uri: http::Uri = trimmed
            .parse()
            .map_err(|_| CallError::BadEndpoint(endpoint.to_string()))?;
        let target = Target::parse(&uri, ("https", 443), ("http", 80))
            .ok_or_else(|| CallError::BadEndpoint(endpoint.to_string()))?;
        Ok(ApiClient {
            inner: Arc::new(Inner {
                endpoint: trimmed.to_string(),
                target,
                region: region.to_string(),
                credentials,
                tls,
            }),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    pub fn region(&self) -> &str {
        &self.inner.region
    }

    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.inner.tls.clone()
    }

    pub fn credentials(&self) -> &Credentials {
        &self.inner.credentials
    }

    /// A JSON 1.1 call: `POST /`, `X-Amz-Target: <target_prefix>.<operation>`,
    /// signed for `service`. Errors come back as [`ApiError`] parsed from
    /// `{"__type","message"}`.
    pub async fn call_json(
        &self,
        service: &str,
        target_prefix: &str,
        operation: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, CallError> {
        let body = serde_json::to_vec(body).map_err(|e| CallError::BadResponse(e.to_string()))?;
        let headers = vec![
            (
                "content-type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
            (
                "x-amz-target".to_string(),
                format!("{target_prefix}.{operation}"),
            ),
        ];
        let resp = self.request("/", headers, body, Some(service)).await?;
        if !(200..300).contains(&resp.status) {
            return Err(parse_api_error(operation, resp.status, &resp.body).into());
        }
        if resp.body.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(serde_json::Value::Object(Default::default()));
        }
        serde_json::from_slice(&resp.body)
            .map_err(|e| CallError::BadResponse(format!("{operation}: {e}")))
    }

    /// `ssm` shortcut: `call_json("ssm", "AmazonSSM", op, body)`.
    pub async fn ssm(
        &self,
        operation: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, CallError> {
        self.call_json("ssm", "AmazonSSM", operation, body).await
    }

    /// A signed POST of a JSON body to `path`; returns status and body bytes
    /// without interpreting them (the agent's channel-token calls, whose
    /// answer is XML with status 201).
    pub async fn post_signed(
        &self,
        service: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), CallError> {
        let headers = vec![("content-type".to_string(), "application/json".to_string())];
        let resp = self
            .request(path, headers, body.to_vec(), Some(service))
            .await?;
        Ok((resp.status, resp.body))
    }

    /// An unsigned POST of JSON (agent registration with an activation code).
    pub async fn post_unsigned(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, Vec<u8>), CallError> {
        let body = serde_json::to_vec(body).map_err(|e| CallError::BadResponse(e.to_string()))?;
        let headers = vec![("content-type".to_string(), "application/json".to_string())];
        let resp = self.request(path, headers, body, None).await?;
        Ok((resp.status, resp.body))
    }

    /// One POST on a fresh connection, signed when `service` is given.
    async fn request(
        &self,
        path: &str,
        mut headers: Vec<(String, String)>,
        body: Vec<u8>,
        service: Option<&str>,
    ) -> Result<RawResponse, CallError> {
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        headers.insert(0, ("host".to_string(), self.inner.target.host_header()));
        if let Some(service) = service {
            airlock_sigv4::sign_request(
                "POST",
                &path,
                &mut headers,
                &body,
                &self.inner.credentials,
                &self.inner.region,
                service,
                OffsetDateTime::now_utc(),
            );
        }
        let mut builder = http::Request::builder()
            .method(http::Method::POST)
            .uri(path.as_str());
        for (name, value) in &headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::BadEndpoint(format!("{}{path}: {e}", self.inner.endpoint)))?;
        match tokio::time::timeout(CALL_TIMEOUT, self.send(request)).await {
            Ok(r) => r,
            Err(_) => Err(self.transport_error("timed out after 30 s".to_string())),
        }
    }

    async fn send(&self, request: http::Request<Full<Bytes>>) -> Result<RawResponse, CallError> {
        let io = self
            .inner
            .target
            .dial(&self.inner.tls)
            .await
            .map_err(|e| self.transport_error(e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.transport_error(e.to_string()))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "api connection ended with an error");
            }
        });
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.transport_error(e.to_string()))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await
                .map_err(|e| CallError::BadResponse(format!("reading body: {e}")))?
                .to_bytes();
            Ok(RawResponse {
                status,
                body: body.to_vec(),
            })
        }
        .await;
        drop(sender);
        driver.abort();
        result
    }

    fn transport_error(&self, reason: String) -> CallError {
        CallError::Transport {
            endpoint: self.inner.endpoint.clone(),
            reason,
        }
    }
}

/// Parses `{"__type": "...#Code:...", "message"|"Message": "..."}`; bodies
/// that are not such JSON become an error named by the status code.
fn parse_api_error(operation: &str, status: u16, body: &[u8]) -> ApiError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |names: &[&str]| -> Option<String> {
        let obj = parsed.as_ref()?.as_object()?;
        names
            .iter()
            .find_map(|n| obj.get(*n).and_then(|v| v.as_str()).map(str::to_string))
    };
    let code = field(&["__type", "code", "Code"])
        .map(|t| {
            let after_hash = t.rsplit_once('#').map(|(_, c)| c).unwrap_or(&t);
            after_hash
                .split(':')
                .next()
                .unwrap_or(after_hash)
                .to_string()
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| status.to_string());
    let message = field(&["message", "Message", "errorMessage"]).unwrap_or_else(|| {
        if parsed.is_some() {
            String::new()
        } else {
            let text = String::from_utf8_lossy(body);
            text.chars().take(200).collect()
        }
    });
    ApiError {
        operation: operation.to_string(),
        code,
        message,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_sigv4::SecretKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretKey::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        }
    }

    #[test]
    fn error_code_parsing() {
        let e = parse_api_error(
            "Op",
            400,
            br#"{"__type":"com.amazonaws.ssm#InvalidInstanceId:http://x","message":"m"}"#,
        );
        assert_eq!(e.code, "InvalidInstanceId");
        assert_eq!(e.message, "m");
        let e = parse_api_error(
            "Op",
            400,
            br#"{"__type":"TargetNotConnected","Message":"gone"}"#,
        );
        assert_eq!(e.code, "TargetNotConnected");
        assert_eq!(e.message, "gone");
        assert_eq!(
            e.to_string(),
            "An error occurred (TargetNotConnected) when calling the Op operation: gone"
        );
        let e = parse_api_error("Op", 502, b"bad gateway");
        assert_eq!(e.code, "502");
        assert_eq!(e.message, "bad gateway");
    }

    #[test]
    fn endpoint_parsing() {
        let tls = crate::tls::client_config(None).unwrap();
        let c = ApiClient::new(
            "https://gw.example:8443/",
            "us-east-1",
            creds(),
            tls.clone(),
        )
        .unwrap();
        assert_eq!(c.endpoint(), "https://gw.example:8443");
        assert_eq!(c.inner.target.host_header(), "gw.example:8443");
        let c = ApiClient::new("http://127.0.0.1", "eu-west-1", creds(), tls.clone()).unwrap();
        assert_eq!(c.inner.target.port, 80);
        assert_eq!(c.region(), "eu-west-1");
        assert!(matches!(
            ApiClient::new("ftp://x", "r", creds(), tls.clone()),
            Err(CallError::BadEndpoint(_))
        ));
        assert!(matches!(
            ApiClient::new("", "r", creds(), tls),
            Err(CallError::BadEndpoint(_))
        ));
    }

    /// A one-shot HTTP server returning `response`, handing back the raw request.
    async fn one_shot(response: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(idx) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= idx + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(response.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8_lossy(&buf).to_string()
        });
        (format!("http://{addr}"), handle)
    }

    #[tokio::test]
    async fn call_json_error_is_api_error() {
        let body = r#"{"__type":"InvalidInstanceId","message":"no such node"}"#;
        let resp: &'static str = Box::leak(
            format!("HTTP/1.1 400 Bad Request\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                .into_boxed_str(),
        );
        let (endpoint, server) = one_shot(resp).await;
        let tls = crate::tls::client_config(None).unwrap();
        let client = ApiClient::new(&endpoint, "us-east-1", creds(), tls).unwrap();
        let err = client
            .post_unsigned("/x", &serde_json::json!({"a":1}))
            .await
            .unwrap();
        assert_eq!(err.0, 400);
        let req = server.await.unwrap();
        assert!(req.starts_with("POST /x HTTP/1.1\r\n"));
        assert!(req
            .to_ascii_lowercase()
            .contains("content-type: application/json"));
        assert!(req.ends_with(r#"{"a":1}"#));
    }

    fn parse_raw(req: &str) -> (Vec<(String, String)>, String) {
        let (head, body) = req.split_once("\r\n\r\n").unwrap();
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (headers, body.to_string())
    }

    #[tokio::test]
    async fn call_json_is_signed_and_verifies() {
        let body = r#"{"SessionId":"admin-0123"}"#;
        let resp: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let (endpoint, server) = one_shot(resp).await;
        let tls = crate::tls::client_config(None).unwrap();
        let client = ApiClient::new(&endpoint, "us-east-1", creds(), tls).unwrap();
        let out = client
            .ssm("StartSession", &serde_json::json!({"Target":"mi-1"}))
            .await
            .unwrap();
        assert_eq!(out["SessionId"], "admin-0123");
        let raw = server.await.unwrap();
        let (headers, sent_body) = parse_raw(&raw);
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(
            get("x-amz-target").as_deref(),
            Some("AmazonSSM.StartSession")
        );
        assert_eq!(
            get("content-type").as_deref(),
            Some("application/x-amz-json-1.1")
        );
        assert_eq!(get("host").as_deref(), endpoint.strip_prefix("http://"));
        let req = airlock_sigv4::Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: sent_body.as_bytes(),
        };
        let parsed = airlock_sigv4::parse_auth(&req).unwrap();
        assert_eq!(parsed.service, "ssm");
        let regions = vec!["us-east-1".to_string()];
        let opts = airlock_sigv4::VerifyOptions {
            max_skew: std::time::Duration::from_secs(300),
            allowed_regions: &regions,
            allowed_services: &["ssm"],
            normalize_path: true,
            now: OffsetDateTime::now_utc(),
        };
        airlock_sigv4::verify_request(&req, &parsed, creds().secret_access_key.expose(), &opts)
            .unwrap();
    }

    #[tokio::test]
    async fn unreachable_is_transport_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let tls = crate::tls::client_config(None).unwrap();
        let client = ApiClient::new(&format!("http://{addr}"), "us-east-1", creds(), tls).unwrap();
        let err = client
            .post_unsigned("/", &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Transport { .. }));
    }
}
