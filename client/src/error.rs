//! The one error type of the client and its mapping to exit statuses.
//!
//! Exit statuses follow the AWS CLI where it has one:
//! 252 usage, 253 configuration/credentials, 254 service (API) error,
//! 255 transport or other failure.

use airlock_transport::api::{ApiError, CallError};
use airlock_transport::credentials::CredentialsError;
use airlock_transport::tls::TlsError;

/// The gateway ended the session as Failed (the agent could not run it, or
/// it could not be kept running) before any exit status arrived.
pub const EXIT_SESSION_FAILED: i32 = 251;
pub const EXIT_USAGE: i32 = 252;
pub const EXIT_CONFIG: i32 = 253;
pub const EXIT_API: i32 = 254;
pub const EXIT_TRANSPORT: i32 = 255;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Transport(String),
    #[error("malformed response: {0}")]
    BadResponse(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<CallError> for ClientError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Api(api) => ClientError::Api(api),
            CallError::BadEndpoint(u) => ClientError::Config(format!("invalid endpoint URL {u}")),
            CallError::BadResponse(m) => ClientError::BadResponse(m),
            other @ CallError::Transport { .. } => ClientError::Transport(other.to_string()),
        }
    }
}

impl ClientError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Api(_) => EXIT_API,
            ClientError::Usage(_) => EXIT_USAGE,
            ClientError::Credentials(_) | ClientError::Tls(_) | ClientError::Config(_) => {
                EXIT_CONFIG
            }
            ClientError::Transport(_) | ClientError::BadResponse(_) | ClientError::Io(_) => {
                EXIT_TRANSPORT
            }
        }
    }
}
