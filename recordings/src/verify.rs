//! Hash-chain verification of a stored recording.

use crate::chunk::{genesis, link, parse_prefix, ChunkOpener};
use crate::event::RecordingEnd;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub chunks: u64,
    /// The chain head after the last chunk, hex.
    pub head: String,
    /// True when an `end.json` was present and matched the chain.
    pub complete: bool,
    pub problems: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks `chunks` (`(seq from the object name, bytes)`, in storage order)
/// against the header and, when present, the end record. With an opener every
/// chunk is also authenticated and decoded.
pub fn verify(
    header_bytes: &[u8],
    chunks: &[(u64, Vec<u8>)],
    end: Option<&RecordingEnd>,
    opener: Option<&ChunkOpener>,
) -> Report {
    let mut r = Report::default();
    let mut prev = genesis(header_bytes);
    for (i, (name_seq, bytes)) in chunks.iter().enumerate() {
        let i = i as u64;
        if *name_seq != i {
            r.problems.push(format!(
                "chunk {i} missing (next stored chunk is {name_seq})"
            ));
            // Without it the rest of the chain cannot link; report once.
            break;
        }
        match parse_prefix(bytes) {
            Ok(p) => {
                if p.seq != i {
                    r.problems.push(format!(
                        "chunk {i} claims position {} (reordered or replaced)",
                        p.seq
                    ));
                }
                if p.prev != prev {
                    r.problems.push(format!(
                        "chunk {i} does not link to its predecessor (a chunk before it was altered, removed or reordered)"
                    ));
                }
            }
            Err(e) => r.problems.push(format!("chunk {i}: {e}")),
        }
        if let Some(o) = opener {
            if let Err(e) = o.open(bytes) {
                r.problems.push(format!("chunk {i}: {e}"));
            }
        }
        prev = link(&prev, bytes);
        r.chunks = i + 1;
    }
    r.head = hex::encode(prev);
    match end {
        Some(e) => {
            if e.chunks != chunks.len() as u64 {
                r.problems.push(format!(
                    "end record says {} chunks, storage holds {}",
                    e.chunks,
                    chunks.len()
                ));
            }
            if !e.final_hash.eq_ignore_ascii_case(&r.head) {
                r.problems
                    .push("final chain hash does not match the end record".to_string());
            }
            r.complete = true;
        }
        None => r.complete = false,
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkSealer, DataKey};
    use crate::event::{Event, EventKind};
    use proptest::prelude::*;

    fn build(n: usize) -> (DataKey, Vec<(u64, Vec<u8>)>, RecordingEnd) {
        let k = DataKey::from_slice(&[3; 32]).unwrap();
        let mut s = ChunkSealer::new(&k, "s", b"hdr");
        let chunks: Vec<(u64, Vec<u8>)> = (0..n)
            .map(|i| {
                let c = s.seal(&[Event {
                    t_us: i as u64,
                    kind: EventKind::Output,
                    data: format!("line {i}\r\n").into_bytes(),
                }]);
                (c.seq, c.bytes)
            })
            .collect();
        let end = RecordingEnd {
            chunks: n as u64,
            final_hash: hex::encode(s.head()),
            ended: 0,
        };
        (k, chunks, end)
    }

    #[test]
    fn intact_recording_verifies() {
        let (k, chunks, end) = build(5);
        let o = ChunkOpener::new(&k, "s");
        let r = verify(b"hdr", &chunks, Some(&end), Some(&o));
        assert!(r.ok(), "{:?}", r.problems);
        assert!(r.complete);
        assert_eq!(r.chunks, 5);
    }

    #[test]
    fn altered_header_detected() {
        let (_, chunks, end) = build(2);
        assert!(!verify(b"hdx", &chunks, Some(&end), None).ok());
    }

    proptest! {
        #[test]
        fn removal_detected(n in 2usize..8, idx in 0usize..8) {
            let (_, mut chunks, end) = build(n);
            let idx = idx % n;
            chunks.remove(idx);
            // Renumber as if an attacker also renamed the objects.
            let renamed: Vec<(u64, Vec<u8>)> = chunks.iter().enumerate().map(|(i, (_, b))| (i as u64, b.clone())).collect();
            prop_assert!(!verify(b"hdr", &chunks, Some(&end), None).ok());
            prop_assert!(!verify(b"hdr", &renamed, Some(&end), None).ok());
        }

        #[test]
        fn reorder_detected(n in 2usize..8, a in 0usize..8, b in 0usize..8) {
            let (_, mut chunks, end) = build(n);
            let (a, b) = (a % n, b % n);
            prop_assume!(a != b);
            let tmp = chunks[a].1.clone();
            chunks[a].1 = chunks[b].1.clone();
            chunks[b].1 = tmp;
            prop_assert!(!verify(b"hdr", &chunks, Some(&end), None).ok());
        }

        #[test]
        fn alteration_detected(n in 1usize..6, idx in 0usize..6, byte in 0usize..200, bit in 0u8..8) {
            let (k, mut chunks, end) = build(n);
            let idx = idx % n;
            let len = chunks[idx].1.len();
            chunks[idx].1[byte % len] ^= 1 << bit;
            let o = ChunkOpener::new(&k, "s");
            // Detected by the chain alone (end record) and by the AEAD alone.
            prop_assert!(!verify(b"hdr", &chunks, Some(&end), None).ok());
            prop_assert!(!verify(b"hdr", &chunks, None, Some(&o)).ok());
        }

        #[test]
        fn truncation_detected_with_end_record(n in 2usize..6, keep in 0usize..6) {
            let (_, mut chunks, end) = build(n);
            chunks.truncate(keep % n);
            prop_assert!(!verify(b"hdr", &chunks, Some(&end), None).ok());
        }
    }
}
