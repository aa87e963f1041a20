//! Airlock's key service core: a KMS-style key ring over a storage
//! representation the caller owns. Pure library: no I/O, no clock, no RNG of
//! its own (callers pass `now` and a `&dyn SecureRandom`).
//!
//! - [`keyring`]: [`KeyRing`], [`StoredKey`], [`KeyMetadata`]; create, encrypt,
//!   decrypt, data keys, rotation, enable/disable, deletion scheduling.
//! - [`blob`]: the ciphertext blob layout and the canonical encryption-context
//!   encoding used as AEAD associated data (layout documented there).
//! - [`ids`]: key ids, key/alias ARNs, alias-name validation.
//! - [`secret`]: [`RootKey`] and [`Plaintext`], redacted and zeroized.
//! - [`error`]: [`KmsError`], with `code()` giving the AWS error code.
//!
//! Key material at rest: each version is 32 random bytes sealed under the
//! root key with AES-256-GCM as `nonce(12) ‖ ct ‖ tag`, AAD = key id (16
//! bytes) ‖ version (u32 BE), so sealed material cannot be swapped between
//! keys or versions.

pub mod blob;
pub mod error;
pub mod ids;
pub mod keyring;
pub mod secret;

pub use blob::{blob_key_id, canonical_context, EncryptionContext};
pub use error::{KmsError, Result};
pub use ids::{alias_arn, key_arn, parse_key_ref, validate_alias_name, KeyRef};
pub use keyring::{DataKeySpec, KeyMetadata, KeyRing, KeyState, SealedMaterial, StoredKey};
pub use secret::{Plaintext, RootKey};
