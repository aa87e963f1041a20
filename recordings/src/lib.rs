//! Session recordings: the event model (asciicast v2 plus port connection
//! events), sealed and hash-chained chunks, verification, search and export.
//!
//! Sans-IO: the agent seals, the gateway only stores bytes it cannot read, the
//! client opens, verifies, searches and exports. The layout of stored objects
//! is in `docs/RECORDINGS.md`.

pub mod chunk;
pub mod event;
pub mod export;
pub mod search;
pub mod verify;

pub use chunk::{ChunkOpener, ChunkSealer, DataKey, SealedChunk, CHUNK_MAGIC};
pub use event::{Event, EventKind, RecordingEnd, RecordingHeader};

/// Everything that can go wrong reading peer-supplied recording bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("malformed chunk: {0}")]
    Malformed(String),
    #[error("chunk {0} failed authentication (altered, or the wrong key)")]
    Authentication(u64),
    #[error("event too large ({0} bytes)")]
    TooLarge(usize),
    #[error("bad data key: {0}")]
    Key(String),
    #[error("bad header: {0}")]
    Header(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
