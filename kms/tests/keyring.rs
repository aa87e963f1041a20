use airlock_kms::{
    blob_key_id, DataKeySpec, EncryptionContext, KeyRing, KeyState, KmsError, RootKey, StoredKey,
};
use aws_lc_rs::rand::SystemRandom;
use proptest::prelude::*;
use uuid::Uuid;

const NOW: i64 = 1_700_000_000;

fn ring_() -> KeyRing {
    KeyRing::new(RootKey::from_bytes([7u8; 32]), "us-east-1", "123456789012")
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn new_key(kr: &KeyRing) -> StoredKey {
    kr.create_key(&SystemRandom::new(), "test key", NOW)
        .unwrap()
}

fn dec(
    kr: &KeyRing,
    key: &StoredKey,
    blob: &[u8],
    c: &EncryptionContext,
) -> Result<Vec<u8>, KmsError> {
    kr.decrypt(blob, c, None, |id| (*id == key.key_id()).then_some(key))
        .map(|(_, p)| p.expose().to_vec())
}

#[test]
fn create_key_metadata() {
    let kr = ring_();
    let k = new_key(&kr);
    assert_eq!(k.metadata.key_state, KeyState::Enabled);
    assert_eq!(
        k.metadata.arn,
        format!("arn:aws:kms:us-east-1:123456789012:key/{}", k.key_id())
    );
    assert_eq!(k.metadata.key_id.get_version_num(), 4);
    assert_eq!(k.metadata.current_version, 1);
    assert_eq!(k.material.len(), 1);
    let j = k.metadata.to_aws_json("123456789012");
    assert_eq!(j["KeyState"], "Enabled");
    assert_eq!(j["Enabled"], true);
    // Storage round trip, and the record does not carry plaintext material.
    let s = serde_json::to_string(&k).unwrap();
    let back: StoredKey = serde_json::from_str(&s).unwrap();
    assert_eq!(back, k);
    assert!(!format!("{k:?}").contains("sealed: ["));
}

#[test]
fn round_trip_with_and_without_context() {
    let kr = ring_();
    let k = new_key(&kr);
    let rng = SystemRandom::new();
    for c in [
        EncryptionContext::new(),
        ctx(&[("aws:ssm:SessionId", "admin-1"), ("b", "2")]),
    ] {
        let blob = kr.encrypt(&k, b"hello world", &c, &rng).unwrap();
        assert_eq!(blob[0], 1);
        assert_eq!(blob_key_id(&blob).unwrap(), k.key_id());
        assert_eq!(blob.len(), 21 + 12 + 11 + 16);
        let (id, p) = kr
            .decrypt(&blob, &c, Some(&k.key_id()), |_| Some(&k))
            .unwrap();
        assert_eq!(id, k.key_id());
        assert_eq!(p.expose(), b"hello world");
        assert!(!format!("{p:?}").contains("hello"));
    }
}

#[test]
fn wrong_missing_extra_context_is_invalid_ciphertext() {
    let kr = ring_();
    let k = new_key(&kr);
    let c = ctx(&[("a", "1"), ("b", "2")]);
    let blob = kr.encrypt(&k, b"secret", &c, &SystemRandom::new()).unwrap();
    // order of pairs doesn't matter (BTreeMap), but values, keys and case do
    assert_eq!(
        dec(&kr, &k, &blob, &ctx(&[("b", "2"), ("a", "1")])).unwrap(),
        b"secret"
    );
    for bad in [
        EncryptionContext::new(),
        ctx(&[("a", "1")]),
        ctx(&[("a", "1"), ("b", "2"), ("c", "3")]),
        ctx(&[("a", "1"), ("b", "3")]),
        ctx(&[("A", "1"), ("b", "2")]),
    ] {
        let e = dec(&kr, &k, &blob, &bad).unwrap_err();
        assert_eq!(e, KmsError::InvalidCiphertext, "{bad:?}");
        assert_eq!(e.code(), "InvalidCiphertextException");
    }
}

#[test]
fn ambiguous_contexts_do_not_collide() {
    let kr = ring_();
    let k = new_key(&kr);
    let blob = kr
        .encrypt(&k, b"x", &ctx(&[("ab", "c")]), &SystemRandom::new())
        .unwrap();
    assert_eq!(
        dec(&kr, &k, &blob, &ctx(&[("a", "bc")])),
        Err(KmsError::InvalidCiphertext)
    );
}

#[test]
fn tampered_blob_is_invalid_ciphertext() {
    let kr = ring_();
    let k = new_key(&kr);
    let c = EncryptionContext::new();
    let blob = kr
        .encrypt(&k, b"payload", &c, &SystemRandom::new())
        .unwrap();
    for i in 0..blob.len() {
        let mut t = blob.clone();
        t[i] ^= 0x01;
        let e = dec(&kr, &k, &t, &c).unwrap_err();
        // flipping key-id bits names an unknown key: AccessDenied, like AWS
        assert!(
            matches!(
                e,
                KmsError::InvalidCiphertext | KmsError::CiphertextKeyUnknown
            ),
            "byte {i}: {e:?}"
        );
    }
    assert_eq!(
        dec(&kr, &k, &blob[..blob.len() - 1], &c),
        Err(KmsError::InvalidCiphertext)
    );
    assert_eq!(dec(&kr, &k, &[], &c), Err(KmsError::InvalidCiphertext));
    let mut longer = blob.clone();
    longer.push(0);
    assert_eq!(dec(&kr, &k, &longer, &c), Err(KmsError::InvalidCiphertext));
}

#[test]
fn other_root_key_cannot_unseal() {
    let kr = ring_();
    let k = new_key(&kr);
    let blob = kr
        .encrypt(&k, b"p", &EncryptionContext::new(), &SystemRandom::new())
        .unwrap();
    let other = KeyRing::new(RootKey::from_bytes([8u8; 32]), "us-east-1", "123456789012");
    let e = dec(&other, &k, &blob, &EncryptionContext::new()).unwrap_err();
    assert_eq!(e.code(), "KMSInternalException");
    assert!(e.is_server_error());
}

#[test]
fn rotation_keeps_old_versions() {
    let kr = ring_();
    let mut k = new_key(&kr);
    let rng = SystemRandom::new();
    let c = ctx(&[("k", "v")]);
    let old = kr.encrypt(&k, b"old", &c, &rng).unwrap();
    assert_eq!(kr.rotate(&mut k, &rng, NOW + 1).unwrap(), 2);
    assert_eq!(kr.rotate(&mut k, &rng, NOW + 2).unwrap(), 3);
    let new = kr.encrypt(&k, b"new", &c, &rng).unwrap();
    assert_eq!(&old[17..21], &1u32.to_be_bytes());
    assert_eq!(&new[17..21], &3u32.to_be_bytes());
    assert_eq!(dec(&kr, &k, &old, &c).unwrap(), b"old");
    assert_eq!(dec(&kr, &k, &new, &c).unwrap(), b"new");
    // A blob naming a version that doesn't exist.
    let mut bogus = new.clone();
    bogus[17..21].copy_from_slice(&9u32.to_be_bytes());
    assert_eq!(dec(&kr, &k, &bogus, &c), Err(KmsError::InvalidCiphertext));
}

#[test]
fn disabled_key_refuses_encrypt_and_decrypt() {
    let kr = ring_();
    let mut k = new_key(&kr);
    let rng = SystemRandom::new();
    let c = EncryptionContext::new();
    let blob = kr.encrypt(&k, b"p", &c, &rng).unwrap();
    k.disable().unwrap();
    assert_eq!(
        kr.encrypt(&k, b"p", &c, &rng).unwrap_err().code(),
        "DisabledException"
    );
    assert_eq!(
        dec(&kr, &k, &blob, &c).unwrap_err().code(),
        "DisabledException"
    );
    assert_eq!(
        kr.generate_data_key(&k, DataKeySpec::Aes256, &c, &rng)
            .unwrap_err()
            .code(),
        "DisabledException"
    );
    assert_eq!(
        kr.rotate(&mut k, &rng, NOW).unwrap_err().code(),
        "KMSInvalidStateException"
    );
    k.enable().unwrap();
    assert_eq!(dec(&kr, &k, &blob, &c).unwrap(), b"p");
}

#[test]
fn incorrect_key_and_unknown_key() {
    let kr = ring_();
    let k = new_key(&kr);
    let k2 = new_key(&kr);
    let c = EncryptionContext::new();
    let blob = kr.encrypt(&k, b"p", &c, &SystemRandom::new()).unwrap();
    let e = kr
        .decrypt(&blob, &c, Some(&k2.key_id()), |_| Some(&k))
        .unwrap_err();
    assert_eq!(e.code(), "IncorrectKeyException");
    let e = kr
        .decrypt_with(&k, &blob, &c, Some(&k2.key_id()))
        .unwrap_err();
    assert_eq!(e.code(), "IncorrectKeyException");
    // Caller handed the wrong stored key: never decrypts.
    assert_eq!(
        kr.decrypt_with(&k2, &blob, &c, None),
        Err(KmsError::InvalidCiphertext)
    );
    let e = kr.decrypt(&blob, &c, None, |_| None).unwrap_err();
    assert_eq!(e.code(), "AccessDeniedException");
}

#[test]
fn deletion_schedule_and_cancel() {
    let kr = ring_();
    let mut k = new_key(&kr);
    let rng = SystemRandom::new();
    assert_eq!(
        k.schedule_deletion(Some(6), NOW).unwrap_err().code(),
        "ValidationException"
    );
    assert_eq!(
        k.schedule_deletion(Some(31), NOW).unwrap_err().code(),
        "ValidationException"
    );
    assert_eq!(k.schedule_deletion(Some(7), NOW).unwrap(), NOW + 7 * 86_400);
    assert_eq!(k.metadata.key_state, KeyState::PendingDeletion);
    assert!(!k.deletion_due(NOW));
    assert!(k.deletion_due(NOW + 7 * 86_400));
    let c = EncryptionContext::new();
    assert_eq!(
        kr.encrypt(&k, b"p", &c, &rng).unwrap_err().code(),
        "KMSInvalidStateException"
    );
    assert_eq!(k.enable().unwrap_err().code(), "KMSInvalidStateException");
    assert_eq!(
        k.schedule_deletion(None, NOW).unwrap_err().code(),
        "KMSInvalidStateException"
    );
    k.cancel_deletion().unwrap();
    assert_eq!(k.metadata.key_state, KeyState::Disabled);
    assert_eq!(k.metadata.deletion_date, None);
    assert_eq!(
        k.cancel_deletion().unwrap_err().code(),
        "KMSInvalidStateException"
    );
    assert_eq!(k.schedule_deletion(None, NOW).unwrap(), NOW + 30 * 86_400);
}

#[test]
fn rotation_flag() {
    let kr = ring_();
    let mut k = new_key(&kr);
    k.set_rotation_enabled(true).unwrap();
    assert!(k.metadata.key_rotation_enabled);
    k.disable().unwrap();
    assert_eq!(
        k.set_rotation_enabled(false).unwrap_err().code(),
        "DisabledException"
    );
}

#[test]
fn data_keys() {
    let kr = ring_();
    let k = new_key(&kr);
    let rng = SystemRandom::new();
    let c = ctx(&[("aws:ssm:SessionId", "s"), ("aws:ssm:TargetId", "mi-0")]);
    for (spec, n) in [
        (DataKeySpec::from_request(Some(64), None).unwrap(), 64),
        (DataKeySpec::from_request(Some(1), None).unwrap(), 1),
        (DataKeySpec::from_request(Some(1024), None).unwrap(), 1024),
        (
            DataKeySpec::from_request(None, Some("AES_256")).unwrap(),
            32,
        ),
        (
            DataKeySpec::from_request(None, Some("AES_128")).unwrap(),
            16,
        ),
    ] {
        let (blob, p) = kr.generate_data_key(&k, spec, &c, &rng).unwrap();
        assert_eq!(p.len(), n);
        assert_eq!(dec(&kr, &k, &blob, &c).unwrap(), p.expose());
    }
    let msg = "Please specify either number of bytes or key spec.";
    assert_eq!(
        DataKeySpec::from_request(None, None),
        Err(KmsError::Validation(msg.into()))
    );
    assert_eq!(
        DataKeySpec::from_request(Some(32), Some("AES_256")),
        Err(KmsError::Validation(msg.into()))
    );
    for bad in [0, 1025, -1] {
        assert_eq!(
            DataKeySpec::from_request(Some(bad), None)
                .unwrap_err()
                .code(),
            "ValidationException"
        );
    }
    assert_eq!(
        DataKeySpec::from_request(None, Some("AES_512"))
            .unwrap_err()
            .code(),
        "ValidationException"
    );
}

#[test]
fn plaintext_size_limits() {
    let kr = ring_();
    let k = new_key(&kr);
    let rng = SystemRandom::new();
    let c = EncryptionContext::new();
    assert_eq!(
        kr.encrypt(&k, b"", &c, &rng).unwrap_err().code(),
        "ValidationException"
    );
    assert_eq!(
        kr.encrypt(&k, &[0; 4097], &c, &rng).unwrap_err().code(),
        "ValidationException"
    );
    let blob = kr.encrypt(&k, &[0; 4096], &c, &rng).unwrap();
    assert_eq!(dec(&kr, &k, &blob, &c).unwrap().len(), 4096);
}

#[test]
fn secrets_are_redacted() {
    let r = RootKey::from_bytes([0x41; 32]);
    assert_eq!(format!("{r:?}"), "RootKey(<redacted>)");
    let kr = KeyRing::new(r, "us-east-1", "123456789012");
    assert!(!format!("{kr:?}").contains("65"));
}

#[test]
fn deterministic_rng_gives_deterministic_key() {
    #[allow(deprecated)]
    let rng = aws_lc_rs::test::rand::FixedByteRandom { byte: 0x11 };
    let a = ring_().create_key(&rng, "", NOW).unwrap();
    let b = ring_().create_key(&rng, "", NOW).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        a.key_id(),
        uuid::Builder::from_random_bytes([0x11; 16]).into_uuid()
    );
    let _: Uuid = a.key_id();
}

proptest! {
    #[test]
    fn decrypt_never_panics(blob in proptest::collection::vec(any::<u8>(), 0..200), flip in any::<bool>()) {
        let kr = ring_();
        let k = kr.create_key(&SystemRandom::new(), "", NOW).unwrap();
        let mut blob = blob;
        if flip && blob.len() >= 17 {
            // make it name the real key so the AEAD path runs
            blob[0] = 1;
            blob[1..17].copy_from_slice(k.key_id().as_bytes());
        }
        let r = kr.decrypt(&blob, &EncryptionContext::new(), None, |id| (*id == k.key_id()).then_some(&k));
        prop_assert!(r.is_err());
    }
}
