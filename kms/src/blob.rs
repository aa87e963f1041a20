//! Ciphertext blob layout and the canonical encryption-context encoding.
//!
//! ```text
//! offset  size  field
//! 0       1     format version, 0x01
//! 1       16    key id (UUID bytes, big-endian as in the RFC)
//! 17      4     key-material version, u32 big-endian
//! 21      12    AES-256-GCM nonce (random)
//! 33      n+16  ciphertext ‖ tag
//! ```
//!
//! AAD = the 21-byte header (version ‖ key id ‖ material version) ‖
//! canonical(encryption context). The nonce is not in the AAD because GCM
//! already binds it.
//!
//! canonical(ctx) = u32be(count) ‖ for each pair sorted by key bytes:
//! u32be(len key) ‖ key ‖ u32be(len value) ‖ value. Length prefixes make the
//! encoding injective: `{"ab":"c"}` and `{"a":"bc"}` differ (a separator-less
//! concatenation, as moto and local-kms use, would not).

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::error::{KmsError, Result};

/// Encryption context. A `BTreeMap<String, String>` iterates in key byte
/// order, which is exactly the canonical order.
pub type EncryptionContext = BTreeMap<String, String>;

pub const BLOB_VERSION: u8 = 0x01;
pub const HEADER_LEN: usize = 1 + 16 + 4;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Smallest well-formed blob (empty plaintext).
pub const MIN_BLOB_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// Largest blob the API accepts (`CiphertextBlob` max length 6144).
pub const MAX_BLOB_LEN: usize = 6144;

/// The parsed fixed part of a blob; borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobHeader<'a> {
    pub key_id: Uuid,
    pub material_version: u32,
    pub(crate) header: &'a [u8],
    pub(crate) nonce: [u8; NONCE_LEN],
    pub(crate) sealed: &'a [u8],
}

/// Parses a blob's header without touching key material. Any malformed
/// input is `InvalidCiphertext`.
pub fn parse_blob(blob: &[u8]) -> Result<BlobHeader<'_>> {
    if blob.len() < MIN_BLOB_LEN || blob.len() > MAX_BLOB_LEN {
        return Err(KmsError::InvalidCiphertext);
    }
    let (header, rest) = blob.split_at(HEADER_LEN);
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let (ver, rest_h) = header.split_first().ok_or(KmsError::InvalidCiphertext)?;
    if *ver != BLOB_VERSION {
        return Err(KmsError::InvalidCiphertext);
    }
    let (id, mv) = rest_h.split_at(16);
    let id: [u8; 16] = id.try_into().map_err(|_| KmsError::InvalidCiphertext)?;
    let mv: [u8; 4] = mv.try_into().map_err(|_| KmsError::InvalidCiphertext)?;
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| KmsError::InvalidCiphertext)?;
    Ok(BlobHeader {
        key_id: Uuid::from_bytes(id),
        material_version: u32::from_be_bytes(mv),
        header,
        nonce,
        sealed,
    })
}

/// The key id named inside a blob, for the caller's key lookup (and for
/// authorizing Decrypt against the key recovered from the ciphertext).
pub fn blob_key_id(blob: &[u8]) -> Result<Uuid> {
    parse_blob(blob).map(|h| h.key_id)
}

pub(crate) fn encode_header(key_id: &Uuid, material_version: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = BLOB_VERSION;
    h[1..17].copy_from_slice(key_id.as_bytes());
    h[17..21].copy_from_slice(&material_version.to_be_bytes());
    h
}

fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| KmsError::Validation("encryption context entry too long".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The canonical, injective encoding of an encryption context (see module docs).
pub fn canonical_context(ctx: &EncryptionContext) -> Result<Vec<u8>> {
    let count = u32::try_from(ctx.len())
        .map_err(|_| KmsError::Validation("encryption context too large".into()))?;
    let mut out = Vec::with_capacity(
        4 + ctx
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>(),
    );
    out.extend_from_slice(&count.to_be_bytes());
    for (k, v) in ctx {
        push_len_prefixed(&mut out, k.as_bytes())?;
        push_len_prefixed(&mut out, v.as_bytes())?;
    }
    Ok(out)
}

pub(crate) fn aad(header: &[u8], ctx: &EncryptionContext) -> Result<Vec<u8>> {
    let mut a = header.to_vec();
    a.extend_from_slice(&canonical_context(ctx)?);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn context_encoding_is_length_prefixed() {
        let a = canonical_context(&ctx(&[("ab", "c")])).unwrap();
        let b = canonical_context(&ctx(&[("a", "bc")])).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn context_encoding_is_sorted_and_exact() {
        let e = canonical_context(&ctx(&[("b", "2"), ("a", "1")])).unwrap();
        let expect: Vec<u8> = [
            &2u32.to_be_bytes()[..],
            &1u32.to_be_bytes(),
            b"a",
            &1u32.to_be_bytes(),
            b"1",
            &1u32.to_be_bytes(),
            b"b",
            &1u32.to_be_bytes(),
            b"2",
        ]
        .concat();
        assert_eq!(e, expect);
        assert_eq!(
            canonical_context(&EncryptionContext::new()).unwrap(),
            vec![0, 0, 0, 0]
        );
    }

    #[test]
    fn header_round_trip() {
        let id = Uuid::from_u128(0x1234);
        let h = encode_header(&id, 7);
        let mut blob = h.to_vec();
        blob.extend_from_slice(&[9u8; NONCE_LEN + TAG_LEN]);
        let p = parse_blob(&blob).unwrap();
        assert_eq!(p.key_id, id);
        assert_eq!(p.material_version, 7);
        assert_eq!(p.sealed.len(), TAG_LEN);
        assert_eq!(
            parse_blob(&blob[..blob.len() - 1]),
            Err(KmsError::InvalidCiphertext)
        );
        blob[0] = 2;
        assert_eq!(parse_blob(&blob), Err(KmsError::InvalidCiphertext));
    }
}
