//! The gateway's one error enum, plus the AWS-style API error it maps to.

use std::path::PathBuf;

/// Errors from building or running the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("io: {0}")]
    IoPlain(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("crypto: {0}")]
    Crypto(String),
}

impl GatewayError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GatewayError::Io {
            path: path.into(),
            source,
        }
    }
}

/// An error returned to an API caller as `{"__type":..,"message":..}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    pub status: u16,
}

impl ApiError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ApiError {
            code: code.to_string(),
            message: message.into(),
            status: 400,
        }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationException", message)
    }
    pub fn internal() -> Self {
        ApiError {
            code: "InternalServerError".into(),
            message: "An internal error occurred.".into(),
            status: 500,
        }
    }
    pub fn access_denied(message: impl Into<String>) -> Self {
        Self::new("AccessDeniedException", message)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        ApiError::internal()
    }
}
