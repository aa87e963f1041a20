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
/// e.g. from `AWS_CA_BUNDLE`). Uses the aws-lc provider explicitly.
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
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Ciphertext rustls may hold for one connection before a write waits for
/// the socket (its default is 64 KiB). A port-forward payload is then
/// sealed and handed to the kernel 256 KiB per `writev`, rather than 64 KiB
/// writes that each end in a sliver of a segment.
pub const TLS_SEND_BUFFER: usize = 256 * 1024;

/// The aws-lc provider with the AES-128-GCM suites first. Every byte of a
/// tunnel is TLS-sealed twice (client and agent legs), and AES-128 has 10
/// rounds to AES-256's 14; both are what TLS 1.3 requires implementations to
/// offer, and 128-bit keys are the suite AWS endpoints themselves prefer.
/// The gateway orders its choice the same way, so a client that lists
/// AES-256 first still gets AES-128.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| !is_aes_128_gcm(suite.suite()));
    Arc::new(provider)
}

fn is_aes_128_gcm(suite: rustls::CipherSuite) -> bool {
    matches!(
        suite,
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
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
    fn aes_128_gcm_comes_first_and_nothing_is_dropped() {
        let ours = provider();
        let stock = rustls::crypto::aws_lc_rs::default_provider();
        assert_eq!(ours.cipher_suites.len(), stock.cipher_suites.len());
        assert_eq!(
            ours.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
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
