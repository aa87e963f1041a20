//! Recording events and their compact binary form inside a chunk.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Largest single event; a larger output burst is split by the recorder.
pub const MAX_EVENT_DATA: usize = 1 << 20;
/// Encoded per-event overhead: kind, time, length.
pub const EVENT_OVERHEAD: usize = 1 + 8 + 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Terminal output (asciicast `o`).
    Output,
    /// Keyboard input (asciicast `i`), only when the preferences ask for it.
    Input,
    /// Terminal resize (asciicast `r`, data `COLSxROWS`).
    Resize,
    /// A port-forward connection event (JSON [`ConnEvent`]); exported as an
    /// asciicast marker (`m`).
    Conn,
}

impl EventKind {
    pub fn code(self) -> u8 {
        match self {
            EventKind::Output => b'o',
            EventKind::Input => b'i',
            EventKind::Resize => b'r',
            EventKind::Conn => b'c',
        }
    }
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            b'o' => EventKind::Output,
            b'i' => EventKind::Input,
            b'r' => EventKind::Resize,
            b'c' => EventKind::Conn,
            _ => return None,
        })
    }
}

/// One event, `t_us` microseconds after the recording started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub t_us: u64,
    pub kind: EventKind,
    pub data: Vec<u8>,
}

impl Event {
    pub fn encoded_len(&self) -> usize {
        EVENT_OVERHEAD + self.data.len()
    }
}

/// A port-forward connection event as recorded in a [`EventKind::Conn`] event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnEvent {
    /// `opened`, `closed` or `error`.
    pub event: String,
    /// Stream (smux) or connection number within the session.
    pub stream: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote: String,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

pub fn encode_events(events: &[Event], out: &mut Vec<u8>) {
    for e in events {
        out.push(e.kind.code());
        out.extend_from_slice(&e.t_us.to_be_bytes());
        // Recorders split data at MAX_EVENT_DATA, so the length fits in u32.
        out.extend_from_slice(&(e.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&e.data);
    }
}

/// Decodes a chunk's plaintext; every length is checked before use.
pub fn decode_events(mut buf: &[u8]) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < EVENT_OVERHEAD {
            return Err(Error::Malformed("truncated event header".into()));
        }
        let kind = EventKind::from_code(buf[0])
            .ok_or_else(|| Error::Malformed(format!("unknown event kind {}", buf[0])))?;
        let t_us = u64::from_be_bytes(buf[1..9].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(buf[9..13].try_into().expect("4 bytes")) as usize;
        if len > MAX_EVENT_DATA {
            return Err(Error::TooLarge(len));
        }
        let rest = &buf[EVENT_OVERHEAD..];
        if rest.len() < len {
            return Err(Error::Malformed("truncated event data".into()));
        }
        out.push(Event {
            t_us,
            kind,
            data: rest[..len].to_vec(),
        });
        buf = &rest[len..];
    }
    Ok(out)
}

/// Stored in clear next to the chunks (`header.json`); its exact bytes seed
/// the hash chain, so altering it breaks verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingHeader {
    /// Format version of this layout (1).
    pub format: u32,
    pub session_id: String,
    pub target: String,
    #[serde(default)]
    pub owner: String,
    /// `shell` or `port`.
    pub kind: String,
    pub width: u16,
    pub height: u16,
    /// Unix seconds when recording started.
    pub started: u64,
    #[serde(default)]
    pub record_input: bool,
    /// The KMS key that wrapped the data key.
    pub kms_key_id: String,
    /// `CiphertextBlob` of the data key, base64.
    pub encrypted_data_key: String,
    /// The encryption context the data key is bound to (needed for Decrypt).
    pub encryption_context: BTreeMap<String, String>,
}

/// Longest header accepted from storage.
pub const MAX_HEADER: usize = 64 * 1024;

impl RecordingHeader {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_HEADER {
            return Err(Error::Header("too large".into()));
        }
        let h: RecordingHeader =
            serde_json::from_slice(bytes).map_err(|e| Error::Header(e.to_string()))?;
        if h.format != 1 {
            return Err(Error::Header(format!("unsupported format {}", h.format)));
        }
        Ok(h)
    }

    /// The encryption context every recording data key carries.
    pub fn context_for(session_id: &str, target: &str) -> BTreeMap<String, String> {
        let mut c = BTreeMap::new();
        c.insert("aws:ssm:SessionId".to_string(), session_id.to_string());
        c.insert("aws:ssm:TargetId".to_string(), target.to_string());
        c.insert("airlock:purpose".to_string(), "recording".to_string());
        c
    }
}

/// Written once the session ends (`end.json`): how many chunks and the chain
/// hash after the last one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingEnd {
    pub chunks: u64,
    pub final_hash: String,
    /// Unix seconds.
    pub ended: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = EventKind> {
        prop_oneof![
            Just(EventKind::Output),
            Just(EventKind::Input),
            Just(EventKind::Resize),
            Just(EventKind::Conn)
        ]
    }

    proptest! {
        #[test]
        fn events_round_trip(evs in proptest::collection::vec((any::<u64>(), kind(), proptest::collection::vec(any::<u8>(), 0..64)), 0..20)) {
            let events: Vec<Event> = evs.into_iter().map(|(t_us, kind, data)| Event { t_us, kind, data }).collect();
            let mut buf = Vec::new();
            encode_events(&events, &mut buf);
            prop_assert_eq!(decode_events(&buf).unwrap(), events);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_events(&bytes);
        }
    }

    #[test]
    fn oversized_length_rejected_before_allocation() {
        let mut buf = vec![b'o'];
        buf.extend_from_slice(&0u64.to_be_bytes());
        buf.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_events(&buf), Err(Error::TooLarge(u32::MAX as usize)));
    }
}
