//! Client-side signing.

use time::OffsetDateTime;

/// A secret access key. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(s: impl Into<String>) -> Self {
        SecretKey(s.into())
    }
    /// The only way to read the secret; grep for it when auditing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: SecretKey,
    pub session_token: Option<String>,
}

/// Signs a request in place (header form): adds `x-amz-date`, optional
/// `x-amz-security-token`, and `authorization`. `headers` must already hold
/// `host` (with the port when it is not the scheme default); every header in
/// it is signed. `path_and_query` is the request target as sent on the wire.
pub fn sign_request(
    method: &str,
    path_and_query: &str,
    headers: &mut Vec<(String, String)>,
    body: &[u8],
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: OffsetDateTime,
) {
    todo!()
}

/// Returns `url` with the presigned-query parameters added (host signed).
pub fn presign_url(
    method: &str,
    url: &str,
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: OffsetDateTime,
    expires_secs: u64,
) -> String {
    todo!()
}
