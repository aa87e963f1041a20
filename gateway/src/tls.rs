//! Local CA and server certificate under `<data-dir>/tls/`, created on first
//! start and reused afterwards; a rustls acceptor on the aws-lc provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::error::GatewayError;
use crate::util::{create_private_dir, write_private};

pub struct TlsPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TlsPaths {
    pub fn new(data_dir: &Path) -> Self {
        let d = data_dir.join("tls");
        TlsPaths {
            ca_cert: d.join("ca.pem"),
            ca_key: d.join("ca-key.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server-key.pem"),
        }
    }
}

fn tls_err(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Tls(e.to_string())
}

/// Makes sure the CA and server certificate exist; returns their paths.
pub fn ensure_material(data_dir: &Path) -> Result<TlsPaths, GatewayError> {
    let paths = TlsPaths::new(data_dir);
    if let Some(dir) = paths.ca_cert.parent() {
        create_private_dir(dir)?;
    }
    if paths.ca_cert.exists()
        && paths.ca_key.exists()
        && paths.server_cert.exists()
        && paths.server_key.exists()
    {
        return Ok(paths);
    }
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Airlock local CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    ca_params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;

    let srv_key = KeyPair::generate().map_err(tls_err)?;
    let mut srv_params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(tls_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    srv_params.distinguished_name = dn;
    srv_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    srv_params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    srv_params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(825);
    let issuer = Issuer::new(ca_params, &ca_key);
    let srv_cert = srv_params.signed_by(&srv_key, &issuer).map_err(tls_err)?;

    write_private(&paths.ca_key, ca_key.serialize_pem().as_bytes())?;
    write_private(&paths.server_key, srv_key.serialize_pem().as_bytes())?;
    write_private(&paths.server_cert, srv_cert.pem().as_bytes())?;
    write_private(&paths.ca_cert, ca_cert.pem().as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [&paths.ca_cert, &paths.server_cert] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| GatewayError::io(p, e))?;
        }
    }
    Ok(paths)
}

/// The server's TLS settings (chain includes the CA). TLS 1.3 only: after
/// the handshake `airlock_transport::tls_stream` takes over the record layer.
pub fn server_config(paths: &TlsPaths) -> Result<Arc<rustls::ServerConfig>, GatewayError> {
    let mut chain = Vec::new();
    for p in [&paths.server_cert, &paths.ca_cert] {
        let pem = std::fs::read(p).map_err(|e| GatewayError::io(p, e))?;
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            chain.push(c.map_err(|e| GatewayError::io(p, e))?);
        }
    }
    let key_pem =
        std::fs::read(&paths.server_key).map_err(|e| GatewayError::io(&paths.server_key, e))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| GatewayError::io(&paths.server_key, e))?
        .ok_or_else(|| GatewayError::Tls("no private key in server-key.pem".into()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(airlock_transport::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Our suite order, not the client's: see `airlock_transport::tls::provider`.
    cfg.ignore_client_order = true;
    cfg.enable_secret_extraction = true;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that lists AES-256 first (rustls's own default order, as
    /// the AWS CLI's OpenSSL does) still gets AES-128-GCM, the cheaper suite
    /// every tunnel byte pays for twice.
    #[tokio::test]
    async fn gateway_picks_aes_128_gcm_over_a_client_preferring_aes_256() {
        let dir = std::env::temp_dir().join(format!("airlock-tls-{}", uuid::Uuid::new_v4()));
        let paths = ensure_material(&dir).unwrap();
        let config = server_config(&paths).unwrap();
        let stock = rustls::crypto::aws_lc_rs::default_provider();
        assert_eq!(
            stock.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(&paths.ca_cert).unwrap();
        for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(stock))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        let server = tokio::spawn(async move {
            airlock_transport::tls_stream::accept(config, far)
                .await
                .map(|_| ())
        });
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, near)
            .await
            .unwrap();
        let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        server.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
}
