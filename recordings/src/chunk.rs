//! Sealed chunks and the hash chain over them.
//!
//! Chunk bytes: `"ALRC" | version (1) | seq (u64 BE) | prev hash (32) |
//! nonce (12) | AES-256-GCM ciphertext + tag`. The first 45 bytes plus the
//! session id are the AEAD's associated data, so a chunk cannot be moved to
//! another session or position without failing to open. The chain link after
//! chunk `n` is `SHA-256(link(n-1) || chunk bytes)`, and the link before chunk
//! 0 is `SHA-256("airlock-recording-v1\0" || header bytes)`; each chunk names
//! the link before it, so a removed, reordered or altered chunk breaks it.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::event::{decode_events, encode_events, Event};
use crate::{sha256, Error, Result};

pub const CHUNK_MAGIC: &[u8; 4] = b"ALRC";
const VERSION: u8 = 1;
const PREFIX_LEN: usize = 4 + 1 + 8 + 32;
pub const CHUNK_OVERHEAD: usize = PREFIX_LEN + NONCE_LEN + 16;
/// Largest chunk accepted anywhere (recorders seal far smaller ones).
pub const MAX_CHUNK: usize = 8 << 20;

/// A 256-bit data key; wiped on drop, never printed.
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn from_slice(b: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = b
            .try_into()
            .map_err(|_| Error::Key(format!("expected 32 bytes, got {}", b.len())))?;
        Ok(DataKey(arr))
    }
    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("32-byte key"))
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // Volatile so the wipe is not optimised away.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// The chain link before chunk 0.
pub fn genesis(header_bytes: &[u8]) -> [u8; 32] {
    let mut buf = b"airlock-recording-v1\0".to_vec();
    buf.extend_from_slice(header_bytes);
    sha256(&buf)
}

/// The chain link after a chunk whose predecessor link is `prev`.
pub fn link(prev: &[u8; 32], chunk: &[u8]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(prev);
    ctx.update(chunk);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn aad(prefix: &[u8], session_id: &str) -> Vec<u8> {
    let mut a = prefix.to_vec();
    a.extend_from_slice(session_id.as_bytes());
    a
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedChunk {
    pub seq: u64,
    pub bytes: Vec<u8>,
    /// The chain link after this chunk.
    pub link: [u8; 32],
}

/// Seals consecutive chunks of one recording.
pub struct ChunkSealer {
    key: LessSafeKey,
    session_id: String,
    next_seq: u64,
    prev: [u8; 32],
    rng: SystemRandom,
}

impl ChunkSealer {
    pub fn new(key: &DataKey, session_id: &str, header_bytes: &[u8]) -> Self {
        ChunkSealer {
            key: key.aead(),
            session_id: session_id.to_string(),
            next_seq: 0,
            prev: genesis(header_bytes),
            rng: SystemRandom::new(),
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The current chain head (after the last sealed chunk).
    pub fn head(&self) -> [u8; 32] {
        self.prev
    }

    pub fn seal(&mut self, events: &[Event]) -> SealedChunk {
        let seq = self.next_seq;
        let mut out = Vec::with_capacity(CHUNK_OVERHEAD + 64);
        out.extend_from_slice(CHUNK_MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&self.prev);
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("system RNG");
        out.extend_from_slice(&nonce);
        let mut body = Vec::new();
        encode_events(events, &mut body);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&out[..PREFIX_LEN], &self.session_id)),
                &mut body,
            )
            .expect("AES-GCM seal cannot fail for in-range sizes");
        out.extend_from_slice(&body);
        let l = link(&self.prev, &out);
        self.prev = l;
        self.next_seq += 1;
        SealedChunk {
            seq,
            bytes: out,
            link: l,
        }
    }
}

/// The unauthenticated framing of a chunk, readable without the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkPrefix {
    pub seq: u64,
    pub prev: [u8; 32],
}

pub fn parse_prefix(bytes: &[u8]) -> Result<ChunkPrefix> {
    if bytes.len() > MAX_CHUNK {
        return Err(Error::TooLarge(bytes.len()));
    }
    if bytes.len() < CHUNK_OVERHEAD {
        return Err(Error::Malformed("shorter than a chunk header".into()));
    }
    if &bytes[..4] != CHUNK_MAGIC {
        return Err(Error::Malformed("bad magic".into()));
    }
    if bytes[4] != VERSION {
        return Err(Error::Malformed(format!(
            "unsupported version {}",
            bytes[4]
        )));
    }
    Ok(ChunkPrefix {
        seq: u64::from_be_bytes(bytes[5..13].try_into().expect("8 bytes")),
        prev: bytes[13..45].try_into().expect("32 bytes"),
    })
}

/// Opens chunks of one recording.
pub struct ChunkOpener {
    key: LessSafeKey,
    session_id: String,
}

impl ChunkOpener {
    pub fn new(key: &DataKey, session_id: &str) -> Self {
        ChunkOpener {
            key: key.aead(),
            session_id: session_id.to_string(),
        }
    }

    pub fn open(&self, bytes: &[u8]) -> Result<(ChunkPrefix, Vec<Event>)> {
        let prefix = parse_prefix(bytes)?;
        let nonce: [u8; NONCE_LEN] = bytes[PREFIX_LEN..PREFIX_LEN + NONCE_LEN]
            .try_into()
            .expect("12 bytes");
        let mut body = bytes[PREFIX_LEN + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&bytes[..PREFIX_LEN], &self.session_id)),
                &mut body,
            )
            .map_err(|_| Error::Authentication(prefix.seq))?;
        let events = decode_events(plain)?;
        Ok((prefix, events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    fn key(b: u8) -> DataKey {
        DataKey::from_slice(&[b; 32]).unwrap()
    }

    fn ev(t: u64, s: &str) -> Event {
        Event {
            t_us: t,
            kind: EventKind::Output,
            data: s.as_bytes().to_vec(),
        }
    }

    #[test]
    fn seal_open_round_trip_and_chain() {
        let k = key(7);
        let mut s = ChunkSealer::new(&k, "sess-1", b"{}");
        let a = s.seal(&[ev(1, "hello"), ev(2, "world")]);
        let b = s.seal(&[ev(3, "!")]);
        let o = ChunkOpener::new(&k, "sess-1");
        let (pa, ea) = o.open(&a.bytes).unwrap();
        assert_eq!(pa.seq, 0);
        assert_eq!(pa.prev, genesis(b"{}"));
        assert_eq!(ea, vec![ev(1, "hello"), ev(2, "world")]);
        let (pb, _) = o.open(&b.bytes).unwrap();
        assert_eq!(pb.prev, a.link);
        assert_eq!(b.link, link(&a.link, &b.bytes));
        assert_eq!(s.head(), b.link);
    }

    #[test]
    fn wrong_key_session_or_flipped_bit_fails() {
        let k = key(7);
        let mut s = ChunkSealer::new(&k, "sess-1", b"{}");
        let a = s.seal(&[ev(1, "secret")]);
        assert!(!a.bytes.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            ChunkOpener::new(&key(8), "sess-1").open(&a.bytes),
            Err(Error::Authentication(0))
        );
        assert_eq!(
            ChunkOpener::new(&k, "sess-2").open(&a.bytes),
            Err(Error::Authentication(0))
        );
        for i in [0usize, 6, 20, 50, a.bytes.len() - 1] {
            let mut t = a.bytes.clone();
            t[i] ^= 1;
            assert!(ChunkOpener::new(&k, "sess-1").open(&t).is_err(), "bit {i}");
        }
        assert!(ChunkOpener::new(&k, "sess-1").open(&a.bytes[..10]).is_err());
    }

    #[test]
    fn debug_hides_key() {
        assert_eq!(format!("{:?}", key(1)), "DataKey(<redacted>)");
    }
}
