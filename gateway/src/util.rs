//! Small helpers: randomness, hashing, time, file writing with modes.

use std::io::Write;
use std::path::Path;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;

use crate::error::GatewayError;

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SystemRandom only fails if the OS RNG is unavailable, which is fatal anyway.
    if SystemRandom::new().fill(&mut b).is_err() {
        panic!("operating system random number generator failed");
    }
    b
}

/// A new bearer token: 32 random bytes, base64url without padding.
pub fn new_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// Hex of SHA-256; tokens and activation codes are stored only in this form.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// `n` random characters from `alphabet` (unbiased by rejection).
pub fn random_string(alphabet: &[u8], n: usize) -> String {
    let mut out = String::with_capacity(n);
    let limit = 256 - (256 % alphabet.len());
    while out.len() < n {
        for b in random_bytes::<64>() {
            if (b as usize) < limit && out.len() < n {
                if let Some(c) = alphabet.get(b as usize % alphabet.len()) {
                    out.push(*c as char);
                }
            }
        }
    }
    out
}

pub const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
pub const SECRET_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// 17 lowercase hex characters (instance and session id suffixes).
pub fn hex17() -> String {
    let mut s = hex::encode(random_bytes::<9>());
    s.truncate(17);
    s
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Epoch milliseconds as the epoch-seconds JSON number botocore expects.
pub fn ms_to_json(ms: i64) -> serde_json::Value {
    serde_json::json!(ms as f64 / 1000.0)
}

/// Writes `data` to `path` with mode 0600 (atomically via a temp file + rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), GatewayError> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| GatewayError::io(&tmp, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| GatewayError::io(&tmp, e))?;
    }
    f.write_all(data).map_err(|e| GatewayError::io(&tmp, e))?;
    f.sync_all().map_err(|e| GatewayError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| GatewayError::io(path, e))?;
    Ok(())
}

pub fn create_private_dir(path: &Path) -> Result<(), GatewayError> {
    std::fs::create_dir_all(path).map_err(|e| GatewayError::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| GatewayError::io(path, e))?;
    }
    Ok(())
}
