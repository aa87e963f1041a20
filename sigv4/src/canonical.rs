//! Canonicalisation rules of SigV4 (spec sigv4-iam-kms.md §1.1).

/// Hex SHA-256, as used for payload hashes and the canonical request hash.
pub fn sha256_hex(data: &[u8]) -> String {
    todo!()
}

/// Derives `kSigning` from the secret, date (YYYYMMDD), region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    todo!()
}
