//! Key metadata, sealed key material and the operations of the key service.
//!
//! The caller owns storage: it keeps [`StoredKey`] values (serde-serializable;
//! material is sealed under the [`RootKey`], so the record is safe to put in
//! a database) and hands them to [`KeyRing`] methods. State changes are
//! methods on `&mut StoredKey`; the caller persists the result.

use std::fmt;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::blob::{self, EncryptionContext, NONCE_LEN, TAG_LEN};
use crate::error::{KmsError, Result};
use crate::ids::key_arn;
use crate::secret::{KeyMaterial, Plaintext, RootKey};

/// Max `Plaintext` for Encrypt.
pub const MAX_PLAINTEXT: usize = 4096;
/// Max `NumberOfBytes` for GenerateDataKey.
pub const MAX_DATA_KEY: usize = 1024;
/// Max `Description` length.
pub const MAX_DESCRIPTION: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
        }
    }
}

/// What DescribeKey reports. Dates are epoch seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMetadata {
    pub key_id: Uuid,
    pub arn: String,
    pub description: String,
    pub key_state: KeyState,
    pub creation_date: i64,
    pub deletion_date: Option<i64>,
    pub key_rotation_enabled: bool,
    /// The material version new ciphertexts use (1 at creation, +1 per rotation).
    pub current_version: u32,
}

impl KeyMetadata {
    /// The `KeyMetadata` object of CreateKey / DescribeKey responses, shaped
    /// like AWS's (dates as epoch seconds).
    pub fn to_aws_json(&self, account: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "AWSAccountId": account,
            "KeyId": self.key_id.to_string(),
            "Arn": self.arn,
            "CreationDate": self.creation_date,
            "Enabled": self.key_state == KeyState::Enabled,
            "Description": self.description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": self.key_state.as_str(),
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
            "KeySpec": "SYMMETRIC_DEFAULT",
            "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
            "MultiRegion": false,
        });
        if let (Some(d), Some(obj)) = (self.deletion_date, v.as_object_mut()) {
            obj.insert("DeletionDate".into(), d.into());
        }
        v
    }
}

/// One version of a key's material, sealed under the root key:
/// `nonce(12) ‖ ct(32) ‖ tag(16)`, AAD = key id ‖ version (u32 BE).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedMaterial {
    pub version: u32,
    #[serde(with = "b64")]
    pub sealed: Vec<u8>,
    pub created: i64,
}

impl fmt::Debug for SealedMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedMaterial")
            .field("version", &self.version)
            .field("sealed", &format_args!("<{} bytes>", self.sealed.len()))
            .field("created", &self.created)
            .finish()
    }
}

/// A key as the caller stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub metadata: KeyMetadata,
    /// Every version ever created; rotation appends, nothing is removed.
    pub material: Vec<SealedMaterial>,
}

impl StoredKey {
    pub fn key_id(&self) -> Uuid {
        self.metadata.key_id
    }

    /// Enabled, else `DisabledException` / `KMSInvalidStateException`.
    pub fn check_usable(&self) -> Result<()> {
        match self.metadata.key_state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::Disabled(format!(
                "{} is disabled.",
                self.metadata.arn
            ))),
            KeyState::PendingDeletion => Err(self.pending_deletion()),
        }
    }

    fn pending_deletion(&self) -> KmsError {
        KmsError::InvalidState(format!("{} is pending deletion.", self.metadata.arn))
    }

    pub fn enable(&mut self) -> Result<()> {
        if self.metadata.key_state == KeyState::PendingDeletion {
            return Err(self.pending_deletion());
        }
        self.metadata.key_state = KeyState::Enabled;
        Ok(())
    }

    pub fn disable(&mut self) -> Result<()> {
        if self.metadata.key_state == KeyState::PendingDeletion {
            return Err(self.pending_deletion());
        }
        self.metadata.key_state = KeyState::Disabled;
        Ok(())
    }

    /// EnableKeyRotation / DisableKeyRotation.
    pub fn set_rotation_enabled(&mut self, enabled: bool) -> Result<()> {
        self.check_usable()?;
        self.metadata.key_rotation_enabled = enabled;
        Ok(())
    }

    /// ScheduleKeyDeletion: `days` defaults to 30 and must be 7..=30.
    /// Returns the deletion date (epoch seconds).
    pub fn schedule_deletion(&mut self, days: Option<i64>, now: i64) -> Result<i64> {
        let days = days.unwrap_or(30);
        if !(7..=30).contains(&days) {
            return Err(KmsError::Validation(format!(
                "1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value between 7 and 30"
            )));
        }
        if self.metadata.key_state == KeyState::PendingDeletion {
            return Err(self.pending_deletion());
        }
        let when = now.saturating_add(days.saturating_mul(86_400));
        self.metadata.key_state = KeyState::PendingDeletion;
        self.metadata.deletion_date = Some(when);
        Ok(when)
    }

    /// CancelKeyDeletion: the key comes back Disabled, as in AWS.
    pub fn cancel_deletion(&mut self) -> Result<()> {
        if self.metadata.key_state != KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!(
                "{} is not pending deletion.",
                self.metadata.arn
            )));
        }
        self.metadata.key_state = KeyState::Disabled;
        self.metadata.deletion_date = None;
        Ok(())
    }

    /// True once the scheduled deletion date has passed; the caller then
    /// removes the key.
    pub fn deletion_due(&self, now: i64) -> bool {
        self.metadata.key_state == KeyState::PendingDeletion
            && self.metadata.deletion_date.is_some_and(|d| d <= now)
    }
}

/// GenerateDataKey's size: `NumberOfBytes` xor `KeySpec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKeySpec {
    NumberOfBytes(u16),
    Aes256,
    Aes128,
}

impl DataKeySpec {
    /// From the request parameters; exactly one must be present.
    pub fn from_request(number_of_bytes: Option<i64>, key_spec: Option<&str>) -> Result<Self> {
        match (number_of_bytes, key_spec) {
            (Some(n), None) => {
                if !(1..=MAX_DATA_KEY as i64).contains(&n) {
                    let bound = if n < 1 {
                        "greater than or equal to 1"
                    } else {
                        "less than or equal to 1024"
                    };
                    return Err(KmsError::Validation(format!(
                        "1 validation error detected: Value '{n}' at 'numberOfBytes' failed to satisfy constraint: Member must have value {bound}"
                    )));
                }
                u16::try_from(n)
                    .map(DataKeySpec::NumberOfBytes)
                    .map_err(|_| KmsError::Validation("numberOfBytes out of range".into()))
            }
            (None, Some("AES_256")) => Ok(DataKeySpec::Aes256),
            (None, Some("AES_128")) => Ok(DataKeySpec::Aes128),
            (None, Some(other)) => Err(KmsError::Validation(format!(
                "1 validation error detected: Value '{other}' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]"
            ))),
            _ => Err(KmsError::Validation(
                "Please specify either number of bytes or key spec.".into(),
            )),
        }
    }

    pub fn len(self) -> usize {
        match self {
            DataKeySpec::NumberOfBytes(n) => usize::from(n),
            DataKeySpec::Aes256 => 32,
            DataKeySpec::Aes128 => 16,
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// The key service: a root key plus the region and account that key ARNs
/// are formed with.
#[derive(Debug, Clone)]
pub struct KeyRing {
    root: RootKey,
    region: String,
    account: String,
}

fn rng_fill(rng: &dyn SecureRandom, buf: &mut [u8]) -> Result<()> {
    rng.fill(buf)
        .map_err(|_| KmsError::Internal("random source failed".into()))
}

fn aes_key(bytes: &[u8]) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| KmsError::Internal("bad key length".into()))
}

fn material_aad(key_id: &Uuid, version: u32) -> [u8; 20] {
    let mut a = [0u8; 20];
    a[..16].copy_from_slice(key_id.as_bytes());
    a[16..].copy_from_slice(&version.to_be_bytes());
    a
}

impl KeyRing {
    pub fn new(root: RootKey, region: impl Into<String>, account: impl Into<String>) -> Self {
        KeyRing {
            root,
            region: region.into(),
            account: account.into(),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    pub fn key_arn(&self, key_id: &Uuid) -> String {
        key_arn(&self.region, &self.account, key_id)
    }

    fn seal_material(
        &self,
        key_id: &Uuid,
        version: u32,
        rng: &dyn SecureRandom,
        now: i64,
    ) -> Result<SealedMaterial> {
        let mut buf = Zeroizing::new(vec![0u8; 32]);
        rng_fill(rng, &mut buf)?;
        let mut nonce = [0u8; NONCE_LEN];
        rng_fill(rng, &mut nonce)?;
        let k = aes_key(&self.root.expose()[..])?;
        k.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(material_aad(key_id, version)),
            &mut *buf,
        )
        .map_err(|_| KmsError::Internal("sealing key material failed".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buf);
        Ok(SealedMaterial {
            version,
            sealed,
            created: now,
        })
    }

    fn unseal_material(&self, key_id: &Uuid, m: &SealedMaterial) -> Result<KeyMaterial> {
        let bad = || KmsError::Internal("key material does not unseal under the root key".into());
        if m.sealed.len() != NONCE_LEN + 32 + TAG_LEN {
            return Err(bad());
        }
        let (nonce, ct) = m.sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let k = aes_key(&self.root.expose()[..])?;
        let plain = k
            .open_in_place(nonce, Aad::from(material_aad(key_id, m.version)), &mut buf)
            .map_err(|_| bad())?;
        let arr: [u8; 32] = (&*plain).try_into().map_err(|_| bad())?;
        Ok(KeyMaterial(Zeroizing::new(arr)))
    }

    /// CreateKey: fresh key id and version-1 material from `rng`.
    pub fn create_key(
        &self,
        rng: &dyn SecureRandom,
        description: &str,
        now: i64,
    ) -> Result<StoredKey> {
        if description.len() > MAX_DESCRIPTION {
            return Err(KmsError::Validation(
                "1 validation error detected: Value at 'description' failed to satisfy constraint: Member must have length less than or equal to 8192".into(),
            ));
        }
        let mut idb = [0u8; 16];
        rng_fill(rng, &mut idb)?;
        let key_id = uuid::Builder::from_random_bytes(idb).into_uuid();
        let material = self.seal_material(&key_id, 1, rng, now)?;
        Ok(StoredKey {
            metadata: KeyMetadata {
                key_id,
                arn: self.key_arn(&key_id),
                description: description.to_string(),
                key_state: KeyState::Enabled,
                creation_date: now,
                deletion_date: None,
                key_rotation_enabled: false,
                current_version: 1,
            },
            material: vec![material],
        })
    }

    /// RotateKeyOnDemand (and automatic rotation): appends new material;
    /// older versions stay for Decrypt. Returns the new version.
    pub fn rotate(&self, key: &mut StoredKey, rng: &dyn SecureRandom, now: i64) -> Result<u32> {
        key.check_usable().map_err(|e| match e {
            KmsError::Disabled(m) => KmsError::InvalidState(m),
            other => other,
        })?;
        let next = key
            .material
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| KmsError::Internal("too many key versions".into()))?;
        let m = self.seal_material(&key.metadata.key_id, next, rng, now)?;
        key.material.push(m);
        key.metadata.current_version = next;
        Ok(next)
    }

    /// Encrypt under the key's current material version.
    pub fn encrypt(
        &self,
        key: &StoredKey,
        plaintext: &[u8],
        ctx: &EncryptionContext,
        rng: &dyn SecureRandom,
    ) -> Result<Vec<u8>> {
        if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
            return Err(KmsError::Validation(
                "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length between 1 and 4096".into(),
            ));
        }
        self.encrypt_unchecked_len(key, plaintext, ctx, rng)
    }

    fn encrypt_unchecked_len(
        &self,
        key: &StoredKey,
        plaintext: &[u8],
        ctx: &EncryptionContext,
        rng: &dyn SecureRandom,
    ) -> Result<Vec<u8>> {
        key.check_usable()?;
        let version = key.metadata.current_version;
        let sealed = key
            .material
            .iter()
            .find(|m| m.version == version)
            .ok_or_else(|| KmsError::Internal("current key version missing".into()))?;
        let material = self.unseal_material(&key.metadata.key_id, sealed)?;
        let header = blob::encode_header(&key.metadata.key_id, version);
        let aad = blob::aad(&header, ctx)?;
        let mut nonce = [0u8; NONCE_LEN];
        rng_fill(rng, &mut nonce)?;
        let mut buf = plaintext.to_vec();
        aes_key(&material.0[..])?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| KmsError::Internal("encryption failed".into()))?;
        let mut out = Vec::with_capacity(header.len() + NONCE_LEN + buf.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypt: `lookup` resolves the key id recovered from the blob.
    /// `expected_key`, when the request named a `KeyId`, must be that key
    /// (else `IncorrectKeyException`). Returns the key id and the plaintext.
    pub fn decrypt<'k>(
        &self,
        blob: &[u8],
        ctx: &EncryptionContext,
        expected_key: Option<&Uuid>,
        lookup: impl FnOnce(&Uuid) -> Option<&'k StoredKey>,
    ) -> Result<(Uuid, Plaintext)> {
        let h = blob::parse_blob(blob)?;
        if let Some(exp) = expected_key {
            if *exp != h.key_id {
                return Err(KmsError::IncorrectKey(
                    "The key ID in the request does not identify a CMK that can perform this operation.".into(),
                ));
            }
        }
        let key = lookup(&h.key_id).ok_or(KmsError::CiphertextKeyUnknown)?;
        self.decrypt_with(key, blob, ctx, None)
    }

    /// Decrypt with a key the caller already resolved (e.g. from
    /// [`blob::blob_key_id`]).
    pub fn decrypt_with(
        &self,
        key: &StoredKey,
        blob: &[u8],
        ctx: &EncryptionContext,
        expected_key: Option<&Uuid>,
    ) -> Result<(Uuid, Plaintext)> {
        let h = blob::parse_blob(blob)?;
        if expected_key.is_some_and(|e| *e != h.key_id) {
            return Err(KmsError::IncorrectKey(
                "The key ID in the request does not identify a CMK that can perform this operation.".into(),
            ));
        }
        if h.key_id != key.metadata.key_id {
            return Err(KmsError::InvalidCiphertext);
        }
        key.check_usable()?;
        let sealed = key
            .material
            .iter()
            .find(|m| m.version == h.material_version)
            .ok_or(KmsError::InvalidCiphertext)?;
        let material = self.unseal_material(&key.metadata.key_id, sealed)?;
        let aad = blob::aad(h.header, ctx)?;
        let mut buf = h.sealed.to_vec();
        let n = aes_key(&material.0[..])?
            .open_in_place(
                Nonce::assume_unique_for_key(h.nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| KmsError::InvalidCiphertext)?
            .len();
        buf.truncate(n);
        Ok((h.key_id, Plaintext::new(buf)))
    }

    /// GenerateDataKey: random bytes of the requested size, and their blob
    /// under `key`. GenerateDataKeyWithoutPlaintext drops the plaintext.
    pub fn generate_data_key(
        &self,
        key: &StoredKey,
        spec: DataKeySpec,
        ctx: &EncryptionContext,
        rng: &dyn SecureRandom,
    ) -> Result<(Vec<u8>, Plaintext)> {
        key.check_usable()?;
        let mut plain = Plaintext::new(vec![0u8; spec.len()]);
        rng_fill(rng, plain.expose_mut())?;
        let blob = self.encrypt_unchecked_len(key, plain.expose(), ctx, rng)?;
        Ok((blob, plain))
    }
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}
