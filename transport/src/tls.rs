//! TLS client configuration.

use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA bundle {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("CA bundle {path} holds no usable certificate")]
    Empty { path: String },
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Roots: the webpki set plus every certificate in `ca_bundle` (a PEM file,
/// e.g. from `AWS_CA_BUNDLE`). Uses the ring provider explicitly.
pub fn client_config(ca_bundle: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_bundle {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| TlsError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut added = 0usize;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|source| TlsError::Read {
                path: shown.clone(),
                source,
            })?;
            if roots.add(cert).is_ok() {
                added += 1;
            }
        }
        if added == 0 {
            return Err(TlsError::Empty { path: shown });
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_builds() {
        let cfg = client_config(None).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn missing_bundle_is_read_error() {
        let err = client_config(Some(Path::new("/nonexistent/airlock-ca.pem"))).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }));
    }

    #[test]
    fn empty_bundle_is_rejected() {
        let path =
            std::env::temp_dir().join(format!("airlock-tls-empty-{}.pem", std::process::id()));
        std::fs::write(&path, "not a cert\n").unwrap();
        let err = client_config(Some(&path)).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(matches!(err, TlsError::Empty { .. }));
    }
}
