//! Plain asciicast v2 export (what stock `asciinema play`/`cat` read).

use std::io::Write;

use crate::event::{Event, EventKind, RecordingHeader};

/// Turns raw output bytes into asciicast's UTF-8 strings without splitting a
/// multi-byte character that straddles two events.
#[derive(Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    pub fn push(&mut self, data: &[u8]) -> String {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(data);
        // Keep up to 3 trailing bytes of an incomplete sequence for later.
        let keep = incomplete_tail(&buf);
        self.pending = buf.split_off(buf.len() - keep);
        String::from_utf8_lossy(&buf).into_owned()
    }
    pub fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }
}

fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let c = b[b.len() - back];
        if c & 0xc0 == 0x80 {
            continue; // continuation byte, look further back
        }
        let need = match c {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

/// Writes asciicast v2, one JSON value per line.
pub struct AsciicastWriter<W: Write> {
    out: W,
    output: Utf8Carry,
    input: Utf8Carry,
    last_t: f64,
}

impl<W: Write> AsciicastWriter<W> {
    pub fn new(mut out: W, h: &RecordingHeader) -> std::io::Result<Self> {
        let header = serde_json::json!({
            "version": 2,
            "width": h.width.max(1),
            "height": h.height.max(1),
            "timestamp": h.started,
            "title": format!("{} on {}", h.session_id, h.target),
            "env": {"TERM": "xterm-256color", "SHELL": "/bin/sh"},
        });
        writeln!(out, "{header}")?;
        Ok(AsciicastWriter {
            out,
            output: Utf8Carry::default(),
            input: Utf8Carry::default(),
            last_t: 0.0,
        })
    }

    fn line(&mut self, t_us: u64, code: &str, data: &str) -> std::io::Result<()> {
        // asciicast requires non-decreasing times.
        let t = (t_us as f64 / 1e6).max(self.last_t);
        self.last_t = t;
        let v = serde_json::json!([(t * 1e6).round() / 1e6, code, data]);
        writeln!(self.out, "{v}")
    }

    pub fn event(&mut self, e: &Event) -> std::io::Result<()> {
        match e.kind {
            EventKind::Output => {
                let s = self.output.push(&e.data);
                if !s.is_empty() {
                    self.line(e.t_us, "o", &s)?;
                }
            }
            EventKind::Input => {
                let s = self.input.push(&e.data);
                if !s.is_empty() {
                    self.line(e.t_us, "i", &s)?;
                }
            }
            EventKind::Resize => {
                let s = String::from_utf8_lossy(&e.data).into_owned();
                self.line(e.t_us, "r", &s)?;
            }
            EventKind::Conn => {
                let s = String::from_utf8_lossy(&e.data).into_owned();
                self.line(e.t_us, "m", &s)?;
            }
        }
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        let t = (self.last_t * 1e6) as u64;
        let rest = self.output.finish();
        if !rest.is_empty() {
            self.line(t, "o", &rest)?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn header() -> RecordingHeader {
        RecordingHeader {
            format: 1,
            session_id: "s".into(),
            target: "mi-1".into(),
            owner: String::new(),
            kind: "shell".into(),
            width: 80,
            height: 24,
            started: 1_700_000_000,
            record_input: false,
            kms_key_id: "k".into(),
            encrypted_data_key: String::new(),
            encryption_context: BTreeMap::new(),
        }
    }

    #[test]
    fn asciicast_round_trip_keeps_split_utf8() {
        let text = "héllo wörld ✓\r\n";
        let bytes = text.as_bytes();
        let mut w = AsciicastWriter::new(Vec::new(), &header()).unwrap();
        // Split every 1 byte: multi-byte characters straddle events.
        for (i, b) in bytes.iter().enumerate() {
            w.event(&Event {
                t_us: i as u64 * 1000,
                kind: EventKind::Output,
                data: vec![*b],
            })
            .unwrap();
        }
        w.event(&Event {
            t_us: 0, // out of order time gets clamped
            kind: EventKind::Resize,
            data: b"100x30".to_vec(),
        })
        .unwrap();
        let out = String::from_utf8(w.finish().unwrap()).unwrap();
        let mut lines = out.lines();
        let h: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(h["version"], 2);
        assert_eq!(h["width"], 80);
        let mut joined = String::new();
        let mut last = 0.0;
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let t = v[0].as_f64().unwrap();
            assert!(t >= last);
            last = t;
            if v[1] == "o" {
                joined.push_str(v[2].as_str().unwrap());
            }
        }
        assert_eq!(joined, text);
    }
}
