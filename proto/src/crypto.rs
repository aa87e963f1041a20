//! Session Manager end-to-end session encryption (spec §4.4), sans-IO.
//!
//! A 64-byte KMS data key is split per direction: bytes 0..32 are the
//! agent→client key, 32..64 the client→agent key. Each payload is sealed
//! with AES-256-GCM, no AAD, as `nonce(12) ‖ ciphertext ‖ tag(16)`.
//! The agent's nonces are a 96-bit counter with a random start, incremented
//! as three little-endian u32 words with carry (word 0 = bytes 0..4 is the
//! least significant); the client's nonces are random. Which payload types
//! are sealed is [`should_encrypt`]; the challenge round trip that proves
//! both ends hold the key is [`agent_challenge`], [`client_answer_challenge`]
//! and [`agent_verify_challenge`].
//!
//! Nothing here draws randomness or keeps time on its own: the counter start
//! and the `&dyn SecureRandom` are inputs.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::rand::SecureRandom;

use crate::frame::{FrameBuf, PayloadType, MAX_PAYLOAD_LEN};
use crate::reliable::Role;

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed payload adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// The largest sealed payload accepted: one frame payload.
pub const MAX_SEALED_LEN: usize = MAX_PAYLOAD_LEN;
/// Length of the KMS data key (`NumberOfBytes` = 64).
pub const DATA_KEY_LEN: usize = 64;
/// Length of the random challenge.
pub const CHALLENGE_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("data key must be {DATA_KEY_LEN} bytes, got {0}")]
    DataKeyLength(usize),
    #[error("sealed payload of {len} bytes is shorter than nonce and tag ({OVERHEAD})")]
    TooShort { len: usize },
    #[error("sealed payload of {len} bytes exceeds the maximum of {max}")]
    TooLong { len: usize, max: usize },
    #[error("plaintext of {len} bytes exceeds the maximum of {max}")]
    PlaintextTooLong { len: usize, max: usize },
    /// Wrong key, or the bytes were modified.
    #[error("payload failed authentication")]
    Authentication,
    #[error("random source failed")]
    Rng,
    #[error("encryption challenge response does not match")]
    ChallengeMismatch,
    #[error("encryption challenge must be {CHALLENGE_LEN} bytes, got {0}")]
    ChallengeLength(usize),
}

/// Which way a payload travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    AgentToClient,
    ClientToAgent,
}

impl Direction {
    /// The direction of what `role` sends.
    pub fn outgoing(role: Role) -> Self {
        match role {
            Role::Agent => Direction::AgentToClient,
            Role::Client => Direction::ClientToAgent,
        }
    }

    /// The direction of what `role` receives.
    pub fn incoming(role: Role) -> Self {
        match role {
            Role::Agent => Direction::ClientToAgent,
            Role::Client => Direction::AgentToClient,
        }
    }
}

/// Whether a payload of this type, travelling this way, is sealed once the
/// session is encrypted: agent→client Output, StdErr and ExitCode; client→agent
/// only Output. Size, Flag, handshake and challenge payloads never are.
pub fn should_encrypt(direction: Direction, payload_type: PayloadType) -> bool {
    match direction {
        Direction::AgentToClient => matches!(
            payload_type,
            PayloadType::Output | PayloadType::StdErr | PayloadType::ExitCode
        ),
        Direction::ClientToAgent => payload_type == PayloadType::Output,
    }
}

fn aes_key(bytes: &[u8]) -> Result<Arc<LessSafeKey>, CryptoError> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(|k| Arc::new(LessSafeKey::new(k)))
        .map_err(|_| CryptoError::DataKeyLength(bytes.len()))
}

/// The two per-direction keys of one session, seen from one end. aws-lc's
/// keys are not `Clone`: sealers and openers share them.
#[derive(Clone)]
pub struct SessionKeys {
    role: Role,
    agent_to_client: Arc<LessSafeKey>,
    client_to_agent: Arc<LessSafeKey>,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("role", &self.role)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl SessionKeys {
    /// Splits the 64-byte data key: 0..32 agent→client, 32..64 client→agent.
    pub fn from_data_key(data_key: &[u8; DATA_KEY_LEN], role: Role) -> Result<Self, CryptoError> {
        let (a2c, c2a) = data_key.split_at(32);
        Ok(SessionKeys {
            role,
            agent_to_client: aes_key(a2c)?,
            client_to_agent: aes_key(c2a)?,
        })
    }

    /// As [`from_data_key`](Self::from_data_key), for a KMS plaintext of
    /// unchecked length.
    pub fn from_slice(data_key: &[u8], role: Role) -> Result<Self, CryptoError> {
        let arr: &[u8; DATA_KEY_LEN] = data_key
            .try_into()
            .map_err(|_| CryptoError::DataKeyLength(data_key.len()))?;
        Self::from_data_key(arr, role)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    fn key(&self, d: Direction) -> &Arc<LessSafeKey> {
        match d {
            Direction::AgentToClient => &self.agent_to_client,
            Direction::ClientToAgent => &self.client_to_agent,
        }
    }

    /// A sealer for what this end sends. The agent should use
    /// [`NonceSource::Counter`], the client [`NonceSource::Random`].
    pub fn sealer<'r>(&self, nonces: NonceSource<'r>) -> Sealer<'r> {
        Sealer {
            key: self.key(Direction::outgoing(self.role)).clone(),
            nonces,
        }
    }

    /// An opener for what this end receives.
    pub fn opener(&self) -> Opener {
        Opener {
            key: self.key(Direction::incoming(self.role)).clone(),
        }
    }
}

/// Where a sealer's nonces come from.
pub enum NonceSource<'r> {
    /// The agent's 96-bit counter; the value is the first nonce used and
    /// should itself be random.
    Counter([u8; NONCE_LEN]),
    /// A fresh random nonce per payload (the client's way).
    Random(&'r (dyn SecureRandom + Send + Sync)),
}

impl fmt::Debug for NonceSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NonceSource::Counter(_) => f.write_str("Counter(..)"),
            NonceSource::Random(_) => f.write_str("Random(..)"),
        }
    }
}

impl NonceSource<'_> {
    /// A counter whose start is drawn from `rng`.
    pub fn random_counter(rng: &dyn SecureRandom) -> Result<NonceSource<'static>, CryptoError> {
        let mut start = [0u8; NONCE_LEN];
        rng.fill(&mut start).map_err(|_| CryptoError::Rng)?;
        Ok(NonceSource::Counter(start))
    }

    fn next(&mut self) -> Result<[u8; NONCE_LEN], CryptoError> {
        match self {
            NonceSource::Counter(c) => {
                let n = *c;
                increment_nonce(c);
                Ok(n)
            }
            NonceSource::Random(rng) => {
                let mut n = [0u8; NONCE_LEN];
                rng.fill(&mut n).map_err(|_| CryptoError::Rng)?;
                Ok(n)
            }
        }
    }
}

/// Adds one to a nonce read as three little-endian u32 words, word 0 least
/// significant, carrying into the next word on overflow (wraps at 2^96).
pub fn increment_nonce(nonce: &mut [u8; NONCE_LEN]) {
    for chunk in nonce.chunks_exact_mut(4) {
        let mut w = [0u8; 4];
        w.copy_from_slice(chunk);
        let (v, overflow) = u32::from_le_bytes(w).overflowing_add(1);
        chunk.copy_from_slice(&v.to_le_bytes());
        if !overflow {
            return;
        }
    }
}

/// Seals what one end sends.
pub struct Sealer<'r> {
    key: Arc<LessSafeKey>,
    nonces: NonceSource<'r>,
}

impl fmt::Debug for Sealer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("nonces", &self.nonces)
            .finish_non_exhaustive()
    }
}

impl Sealer<'_> {
    /// `nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&mut self, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(plain.len().saturating_add(OVERHEAD));
        self.seal_into(plain, &mut out)?;
        Ok(out)
    }

    /// Seals a payload built in place, the same bytes [`Sealer::seal`] would
    /// give: `buf`'s payload is [`NONCE_LEN`] bytes of room for the nonce,
    /// then the plaintext; the tag is appended.
    pub fn seal_in_place(&mut self, buf: &mut FrameBuf) -> Result<(), CryptoError> {
        let len = buf.payload_len();
        if len < NONCE_LEN {
            return Err(CryptoError::TooShort { len });
        }
        let max = MAX_SEALED_LEN - OVERHEAD;
        let plain = len - NONCE_LEN;
        if plain > max {
            return Err(CryptoError::PlaintextTooLong { len: plain, max });
        }
        let nonce = self.nonces.next()?;
        let tag = {
            let (room, body) = buf.payload_mut().split_at_mut(NONCE_LEN);
            room.copy_from_slice(&nonce);
            self.key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), body)
                .map_err(|_| CryptoError::PlaintextTooLong { len: plain, max })?
        };
        buf.buf_mut().extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Appends `nonce ‖ ciphertext ‖ tag` to `out` (lets a caller reuse a buffer).
    pub fn seal_into(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let max = MAX_SEALED_LEN - OVERHEAD;
        if plain.len() > max {
            return Err(CryptoError::PlaintextTooLong {
                len: plain.len(),
                max,
            });
        }
        let nonce = self.nonces.next()?;
        let start = out.len();
        out.reserve(plain.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = {
            // Our own buffer: start + NONCE_LEN <= out.len() by construction.
            let body = &mut out[start + NONCE_LEN..];
            self.key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), body)
                .map_err(|_| CryptoError::PlaintextTooLong {
                    len: plain.len(),
                    max,
                })?
        };
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// Opens what one end receives.
#[derive(Clone)]
pub struct Opener {
    key: Arc<LessSafeKey>,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener").finish_non_exhaustive()
    }
}

impl Opener {
    fn check_len(len: usize) -> Result<(), CryptoError> {
        if len < OVERHEAD {
            return Err(CryptoError::TooShort { len });
        }
        if len > MAX_SEALED_LEN {
            return Err(CryptoError::TooLong {
                len,
                max: MAX_SEALED_LEN,
            });
        }
        Ok(())
    }

    /// Decrypts where the bytes lie when `sealed` is their only owner (a
    /// payload just read off the socket), so a 1 MiB port payload is not
    /// copied first; a shared buffer is copied, as [`Opener::open`] does.
    pub fn open_bytes(&self, sealed: bytes::Bytes) -> Result<bytes::Bytes, CryptoError> {
        let len = sealed.len();
        Self::check_len(len)?;
        let mut buf = match sealed.try_into_mut() {
            Ok(unique) => unique,
            Err(shared) => return self.open(&shared).map(bytes::Bytes::from),
        };
        let (nonce, body) = buf.split_at_mut(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::TooShort { len })?;
        let n = self
            .key
            .open_in_place(nonce, Aad::empty(), body)
            .map_err(|_| CryptoError::Authentication)?
            .len();
        let mut plain = buf.split_off(NONCE_LEN);
        plain.truncate(n);
        Ok(plain.freeze())
    }

    /// Checks the size before allocating, then authenticates and decrypts.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let len = sealed.len();
        Self::check_len(len)?;
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::TooShort { len })?;
        let mut buf = body.to_vec();
        let n = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .map_err(|_| CryptoError::Authentication)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

/// The agent's secret challenge; kept until the response arrives.
pub struct Challenge([u8; CHALLENGE_LEN]);

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Challenge(<redacted>)")
    }
}

/// Agent: draws 64 random bytes and seals them with the agent→client key.
/// Send the returned bytes (base64) as `EncChallengeRequest.Challenge`.
pub fn agent_challenge(
    sealer: &mut Sealer<'_>,
    rng: &dyn SecureRandom,
) -> Result<(Challenge, Vec<u8>), CryptoError> {
    let mut c = [0u8; CHALLENGE_LEN];
    rng.fill(&mut c).map_err(|_| CryptoError::Rng)?;
    let sealed = sealer.seal(&c)?;
    Ok((Challenge(c), sealed))
}

/// Client: opens the challenge with the agent→client key and re-seals it
/// with the client→agent key, for `EncChallengeResponse.Challenge`.
pub fn client_answer_challenge(
    opener: &Opener,
    sealer: &mut Sealer<'_>,
    request: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let plain = opener.open(request)?;
    if plain.len() != CHALLENGE_LEN {
        return Err(CryptoError::ChallengeLength(plain.len()));
    }
    sealer.seal(&plain)
}

/// Agent: opens the response with the client→agent key and compares it with
/// the challenge it sent.
pub fn agent_verify_challenge(
    opener: &Opener,
    challenge: &Challenge,
    response: &[u8],
) -> Result<(), CryptoError> {
    let plain = opener.open(response)?;
    if plain.len() != CHALLENGE_LEN {
        return Err(CryptoError::ChallengeMismatch);
    }
    let diff = plain
        .iter()
        .zip(challenge.0.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff == 0 {
        Ok(())
    } else {
        Err(CryptoError::ChallengeMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;

    fn data_key() -> [u8; 64] {
        let mut k = [0u8; 64];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        k
    }

    fn pair() -> (SessionKeys, SessionKeys) {
        (
            SessionKeys::from_data_key(&data_key(), Role::Agent).unwrap(),
            SessionKeys::from_data_key(&data_key(), Role::Client).unwrap(),
        )
    }

    #[test]
    fn round_trip_agent_to_client() {
        let (agent, client) = pair();
        let mut s = agent.sealer(NonceSource::Counter([0; 12]));
        let o = client.opener();
        for msg in [&b""[..], b"x", &[7u8; 5000]] {
            let sealed = s.seal(msg).unwrap();
            assert_eq!(sealed.len(), msg.len() + OVERHEAD);
            assert_eq!(o.open(&sealed).unwrap(), msg);
        }
        // The agent cannot open its own direction with its opener.
        let sealed = s.seal(b"hi").unwrap();
        assert_eq!(
            agent.opener().open(&sealed),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn opening_in_place_matches_opening_a_copy() {
        let (agent, client) = pair();
        let mut s = agent.sealer(NonceSource::Counter([3; 12]));
        let o = client.opener();
        for msg in [&b""[..], b"x", &[7u8; 70_000]] {
            let sealed = bytes::Bytes::from(s.seal(msg).unwrap());
            let start = sealed.as_ptr() as usize;
            // A shared buffer is copied, not written over under its owners.
            let shared = sealed.clone();
            assert_eq!(&o.open_bytes(shared.clone()).unwrap()[..], msg);
            assert_eq!(shared, sealed);
            drop(shared);
            // The only owner: decrypted where it lies, behind the nonce.
            let plain = o.open_bytes(sealed).unwrap();
            assert_eq!(&plain[..], msg);
            if !msg.is_empty() {
                assert_eq!(plain.as_ptr() as usize, start + NONCE_LEN);
            }
        }
        let mut tampered = s.seal(b"payload").unwrap();
        tampered[NONCE_LEN] ^= 1;
        assert_eq!(
            o.open_bytes(bytes::Bytes::from(tampered)),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            o.open_bytes(bytes::Bytes::from_static(b"short")),
            Err(CryptoError::TooShort { len: 5 })
        );
    }

    #[test]
    fn sealing_in_place_gives_the_same_bytes() {
        let (agent, client) = pair();
        let mut copying = agent.sealer(NonceSource::Counter([9; 12]));
        let mut in_place = agent.sealer(NonceSource::Counter([9; 12]));
        for msg in [&b""[..], b"x", &[7u8; 70_000]] {
            let mut buf = FrameBuf::with_capacity(NONCE_LEN + msg.len() + TAG_LEN);
            buf.buf_mut().extend_from_slice(&[0; NONCE_LEN]);
            buf.buf_mut().extend_from_slice(msg);
            in_place.seal_in_place(&mut buf).unwrap();
            assert_eq!(buf.payload(), copying.seal(msg).unwrap());
            assert_eq!(client.opener().open(buf.payload()).unwrap(), msg);
        }
        let mut short = FrameBuf::with_capacity(4);
        short.buf_mut().extend_from_slice(&[0; 4]);
        assert_eq!(
            in_place.seal_in_place(&mut short),
            Err(CryptoError::TooShort { len: 4 })
        );
    }

    #[test]
    fn round_trip_client_to_agent() {
        let (agent, client) = pair();
        let rng = SystemRandom::new();
        let mut s = client.sealer(NonceSource::Random(&rng));
        let a = s.seal(b"ls -la\r").unwrap();
        let b = s.seal(b"ls -la\r").unwrap();
        assert_ne!(a, b, "random nonces differ");
        assert_eq!(agent.opener().open(&a).unwrap(), b"ls -la\r");
        assert_eq!(client.opener().open(&a), Err(CryptoError::Authentication));
    }

    #[test]
    fn wrong_key_fails() {
        let (agent, _) = pair();
        let mut other = data_key();
        other[0] ^= 1;
        let client = SessionKeys::from_data_key(&other, Role::Client).unwrap();
        let sealed = agent
            .sealer(NonceSource::Counter([1; 12]))
            .seal(b"secret")
            .unwrap();
        assert_eq!(
            client.opener().open(&sealed),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn tamper_fails() {
        let (agent, client) = pair();
        let sealed = agent
            .sealer(NonceSource::Counter([9; 12]))
            .seal(b"secret data")
            .unwrap();
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x80;
            assert_eq!(
                client.opener().open(&t),
                Err(CryptoError::Authentication),
                "byte {i}"
            );
        }
        assert_eq!(
            client.opener().open(&sealed[..sealed.len() - 1]),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn size_checks() {
        let (_, client) = pair();
        let o = client.opener();
        assert_eq!(o.open(&[0; 27]), Err(CryptoError::TooShort { len: 27 }));
        let big = vec![0u8; MAX_SEALED_LEN + 1];
        assert_eq!(
            o.open(&big),
            Err(CryptoError::TooLong {
                len: big.len(),
                max: MAX_SEALED_LEN
            })
        );
        let (agent, _) = pair();
        let mut s = agent.sealer(NonceSource::Counter([0; 12]));
        assert!(matches!(
            s.seal(&vec![0u8; MAX_SEALED_LEN - OVERHEAD + 1]),
            Err(CryptoError::PlaintextTooLong { .. })
        ));
        assert!(s.seal(&vec![0u8; MAX_SEALED_LEN - OVERHEAD]).is_ok());
        assert_eq!(
            SessionKeys::from_slice(&[0; 32], Role::Agent).unwrap_err(),
            CryptoError::DataKeyLength(32)
        );
    }

    #[test]
    fn nonce_counter_carries_across_words() {
        let mut n = [0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0];
        increment_nonce(&mut n);
        assert_eq!(n, [0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);

        let mut n = [0xff, 0xff, 0xff, 0xff, 5, 0, 0, 0, 0, 0, 0, 0];
        increment_nonce(&mut n);
        assert_eq!(n, [0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]);

        let mut n = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0];
        increment_nonce(&mut n);
        assert_eq!(n, [0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);

        let mut n = [0xff; 12];
        increment_nonce(&mut n);
        assert_eq!(n, [0; 12]);

        // The sealer uses the start value first, then counts up.
        let (agent, _) = pair();
        let start = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut s = agent.sealer(NonceSource::Counter(start));
        assert_eq!(&s.seal(b"a").unwrap()[..12], &start);
        assert_eq!(
            &s.seal(b"b").unwrap()[..12],
            &[0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn known_answer_against_a_bare_aead_call() {
        // Computed independently with a bare AEAD call: key = data_key()[0..32],
        // nonce = the counter start, no AAD.
        let start = [3u8; 12];
        let plain = b"EXIT_CODE: 0";
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &data_key()[..32]).unwrap());
        let mut expect = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(start),
            Aad::empty(),
            &mut expect,
        )
        .unwrap();
        let mut expect_full = start.to_vec();
        expect_full.extend_from_slice(&expect);

        let (agent, _) = pair();
        let got = agent
            .sealer(NonceSource::Counter(start))
            .seal(plain)
            .unwrap();
        assert_eq!(got, expect_full);

        // The client→agent half is bytes 32..64.
        let key2 = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &data_key()[32..]).unwrap());
        let mut c2a = plain.to_vec();
        key2.seal_in_place_append_tag(Nonce::assume_unique_for_key(start), Aad::empty(), &mut c2a)
            .unwrap();
        let mut c2a_full = start.to_vec();
        c2a_full.extend_from_slice(&c2a);
        let (agent, _) = pair();
        assert_eq!(agent.opener().open(&c2a_full).unwrap(), plain);
    }

    #[test]
    fn challenge_round_trip() {
        let rng = SystemRandom::new();
        let (agent, client) = pair();
        let mut a_seal = agent.sealer(NonceSource::random_counter(&rng).unwrap());
        let mut c_seal = client.sealer(NonceSource::Random(&rng));
        let (challenge, req) = agent_challenge(&mut a_seal, &rng).unwrap();
        assert_eq!(req.len(), CHALLENGE_LEN + OVERHEAD);
        let resp = client_answer_challenge(&client.opener(), &mut c_seal, &req).unwrap();
        agent_verify_challenge(&agent.opener(), &challenge, &resp).unwrap();

        // A client echoing the request back cannot pass.
        assert_eq!(
            agent_verify_challenge(&agent.opener(), &challenge, &req),
            Err(CryptoError::Authentication)
        );
        // A client with a different key cannot answer.
        let mut other = data_key();
        other[5] ^= 1;
        let bad = SessionKeys::from_data_key(&other, Role::Client).unwrap();
        let mut bad_seal = bad.sealer(NonceSource::Random(&rng));
        assert_eq!(
            client_answer_challenge(&bad.opener(), &mut bad_seal, &req),
            Err(CryptoError::Authentication)
        );
        // A correctly sealed but different answer is a mismatch.
        let wrong = c_seal.seal(&[0u8; CHALLENGE_LEN]).unwrap();
        assert_eq!(
            agent_verify_challenge(&agent.opener(), &challenge, &wrong),
            Err(CryptoError::ChallengeMismatch)
        );
        assert!(!format!("{challenge:?} {agent:?}").contains('0'));
    }

    #[test]
    fn what_gets_encrypted() {
        use Direction::*;
        for t in 0..=13u32 {
            let pt = PayloadType::from_u32(t);
            assert_eq!(
                should_encrypt(AgentToClient, pt),
                matches!(t, 1 | 11 | 12),
                "a2c {t}"
            );
            assert_eq!(should_encrypt(ClientToAgent, pt), t == 1, "c2a {t}");
        }
        assert_eq!(Direction::outgoing(Role::Agent), AgentToClient);
        assert_eq!(Direction::incoming(Role::Agent), ClientToAgent);
    }

    proptest::proptest! {
        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..300)) {
            let (_, client) = pair();
            let _ = client.opener().open(&bytes);
        }
    }
}
