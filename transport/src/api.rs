//! Signed calls to the gateway's AWS-compatible APIs.

use std::sync::Arc;

use airlock_sigv4::Credentials;

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

/// One endpoint (`https://host:port` or `http://127.0.0.1:port`), one set of
/// credentials, one region. Cheap to clone.
#[derive(Clone)]
pub struct ApiClient {
    _private: Arc<()>,
}

impl ApiClient {
    pub fn new(
        endpoint: &str,
        region: &str,
        credentials: Credentials,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, CallError> {
        todo!()
    }

    pub fn endpoint(&self) -> &str {
        todo!()
    }

    pub fn region(&self) -> &str {
        todo!()
    }

    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        todo!()
    }

    pub fn credentials(&self) -> &Credentials {
        todo!()
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
        todo!()
    }

    /// `ssm` shortcut: `call_json("ssm", "AmazonSSM", op, body)`.
    pub async fn ssm(&self, operation: &str, body: &serde_json::Value) -> Result<serde_json::Value, CallError> {
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
        todo!()
    }

    /// An unsigned POST of JSON (agent registration with an activation code).
    pub async fn post_unsigned(&self, path: &str, body: &serde_json::Value) -> Result<(u16, Vec<u8>), CallError> {
        todo!()
    }
}
