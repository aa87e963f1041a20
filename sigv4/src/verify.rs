//! Server-side verification: parse the Authorization header or presigned
//! query, then recompute the signature with the caller's secret.

use std::time::Duration;

use time::OffsetDateTime;

/// The parts of an HTTP request the verifier needs, as received.
pub struct Request<'a> {
    pub method: &'a str,
    /// Raw path as on the wire (still percent-encoded).
    pub path: &'a str,
    /// Raw query string without `?` (may be empty).
    pub query: &'a str,
    /// Headers in arrival order; names in any case.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// What the Authorization header or presigned query claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedAuth {
    pub access_key_id: String,
    /// `YYYYMMDD` from the credential scope.
    pub scope_date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
    /// `YYYYMMDDTHHMMSSZ` request time.
    pub amz_date: String,
    pub session_token: Option<String>,
    /// Some for presigned requests.
    pub expires_secs: Option<u64>,
}

pub struct VerifyOptions<'a> {
    /// Accepted skew for header auth (AWS: 5 minutes).
    pub max_skew: Duration,
    /// Regions accepted in the scope.
    pub allowed_regions: &'a [String],
    /// Services accepted in the scope (`ssm`, `kms`, `ssmmessages`, ...).
    pub allowed_services: &'a [&'a str],
    /// S3 does not normalise or double-encode the path.
    pub normalize_path: bool,
    pub now: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Request is missing Authentication Token")]
    Missing,
    #[error("{0}")]
    Incomplete(String),
    /// Signature mismatch, wrong scope, expired or not yet current.
    #[error("{0}")]
    InvalidSignature(String),
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    #[error("The security token included in the request is expired")]
    ExpiredToken,
}

impl AuthError {
    /// The AWS JSON-protocol error code (`__type`).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::Incomplete(_) => "IncompleteSignatureException",
            AuthError::InvalidSignature(_) => "InvalidSignatureException",
            AuthError::UnrecognizedClient => "UnrecognizedClientException",
            AuthError::ExpiredToken => "ExpiredTokenException",
        }
    }
}

/// Step 1: find and parse the auth material without any secret.
pub fn parse_auth(req: &Request<'_>) -> Result<ParsedAuth, AuthError> {
    todo!()
}

/// Step 2: with the secret looked up from `parsed.access_key_id`, check
/// scope, time and signature (constant-time comparison).
pub fn verify_request(
    req: &Request<'_>,
    parsed: &ParsedAuth,
    secret: &str,
    opts: &VerifyOptions<'_>,
) -> Result<(), AuthError> {
    todo!()
}
