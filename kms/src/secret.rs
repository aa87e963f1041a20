//! Newtypes for secret bytes: redacted `Debug`, zeroized on drop.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

use crate::error::{KmsError, Result};

/// The 256-bit root key that seals every key's material. It never goes into
/// the database; the gateway loads it from a 0600 file or the environment.
#[derive(Clone)]
pub struct RootKey(Zeroizing<[u8; 32]>);

impl RootKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        RootKey(Zeroizing::new(bytes))
    }

    /// Accepts exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KmsError::Validation("root key must be exactly 32 bytes".into()))?;
        Ok(Self::from_bytes(arr))
    }

    pub fn generate(rng: &dyn aws_lc_rs::rand::SecureRandom) -> Result<Self> {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill(&mut k[..])
            .map_err(|_| KmsError::Internal("random source failed".into()))?;
        Ok(RootKey(k))
    }

    /// The raw bytes, for writing the key file. Handle with care.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

/// One version of a key's 256-bit material, unsealed. Lives only for the
/// duration of an operation.
pub(crate) struct KeyMaterial(pub(crate) Zeroizing<[u8; 32]>);

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

/// Plaintext bytes handed to or returned from the key service (a decrypted
/// payload or a data key). Redacted in `Debug`, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Plaintext(Vec<u8>);

impl Plaintext {
    pub fn new(bytes: Vec<u8>) -> Self {
        Plaintext(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub(crate) fn expose_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Plaintext {
    fn from(v: Vec<u8>) -> Self {
        Plaintext(v)
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext(<{} bytes redacted>)", self.0.len())
    }
}
