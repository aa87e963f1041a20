//! Credentials the way the AWS SDKs find them: `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, then the shared credentials
//! file (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`) and the
//! config file (`AWS_CONFIG_FILE`, default `~/.aws/config`, `[profile x]`
//! sections) for the profile (`--profile`, `AWS_PROFILE`, `default`).
//! Region: `--region`, `AWS_REGION`, `AWS_DEFAULT_REGION`, profile `region`.

use airlock_sigv4::Credentials;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("Unable to locate credentials. You can configure credentials by running \"aws configure\".")]
    NotFound,
    #[error("The config profile ({0}) could not be found")]
    ProfileNotFound(String),
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
}

/// Resolves credentials for `profile` (None = env `AWS_PROFILE` or default).
pub fn resolve_credentials(profile: Option<&str>) -> Result<Credentials, CredentialsError> {
    todo!()
}

/// Resolves the region; None when nothing names one.
pub fn resolve_region(cli_region: Option<&str>, profile: Option<&str>) -> Option<String> {
    todo!()
}

/// Endpoint from `--endpoint-url`, `AWS_ENDPOINT_URL_SSM`, `AWS_ENDPOINT_URL`, profile `endpoint_url`.
pub fn resolve_endpoint(cli_endpoint: Option<&str>, profile: Option<&str>) -> Option<String> {
    todo!()
}
