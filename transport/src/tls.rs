//! TLS client configuration.

use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA bundle {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("CA bundle {path} holds no usable certificate")]
    Empty { path: String },
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Roots: the webpki set plus every certificate in `ca_bundle` (a PEM file,
/// e.g. from `AWS_CA_BUNDLE`). Uses the ring provider explicitly.
pub fn client_config(ca_bundle: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    todo!()
}
