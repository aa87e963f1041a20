//! Streaming line search over a recording's events.
//!
//! Events are fed in order across chunk boundaries, so a command echoed in
//! pieces (one keystroke per chunk, say) is reassembled into its terminal line
//! before matching. Escape sequences are dropped and backspaces applied, so the
//! line is what a reader of the screen would see.

use regex::Regex;

use crate::event::{Event, EventKind};

/// Longest line kept; longer lines are matched on their first part.
const MAX_LINE: usize = 16 * 1024;

pub enum Pattern {
    Text(String),
    Regex(Regex),
}

impl Pattern {
    pub fn regex(re: &str) -> Result<Self, regex::Error> {
        Ok(Pattern::Regex(Regex::new(re)?))
    }
    fn is_match(&self, line: &str) -> bool {
        match self {
            Pattern::Text(t) => line.contains(t.as_str()),
            Pattern::Regex(r) => r.is_match(line),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// Microseconds from the start of the recording to the line's first byte.
    pub t_us: u64,
    /// `o` (terminal) or `i` (typed input).
    pub stream: char,
    pub line: String,
}

#[derive(Default)]
enum Esc {
    #[default]
    None,
    Start,
    Csi,
    Osc,
    OscSt,
}

#[derive(Default)]
struct LineBuf {
    bytes: Vec<u8>,
    start_us: Option<u64>,
    esc: Esc,
}

impl LineBuf {
    fn feed(&mut self, t_us: u64, data: &[u8], mut emit: impl FnMut(u64, Vec<u8>)) {
        for &b in data {
            match self.esc {
                Esc::Start => {
                    self.esc = match b {
                        b'[' => Esc::Csi,
                        b']' => Esc::Osc,
                        _ => Esc::None,
                    };
                    continue;
                }
                Esc::Csi => {
                    if (0x40..=0x7e).contains(&b) {
                        self.esc = Esc::None;
                    }
                    continue;
                }
                Esc::Osc => {
                    match b {
                        0x07 => self.esc = Esc::None,
                        0x1b => self.esc = Esc::OscSt,
                        _ => {}
                    }
                    continue;
                }
                Esc::OscSt => {
                    self.esc = Esc::None;
                    continue;
                }
                Esc::None => {}
            }
            match b {
                0x1b => self.esc = Esc::Start,
                b'\n' | b'\r' => {
                    if !self.bytes.is_empty() {
                        let start = self.start_us.unwrap_or(t_us);
                        emit(start, std::mem::take(&mut self.bytes));
                    }
                    self.start_us = None;
                }
                0x08 | 0x7f => {
                    self.bytes.pop();
                }
                b if b < 0x20 && b != b'\t' => {}
                b => {
                    if self.bytes.is_empty() {
                        self.start_us = Some(t_us);
                    }
                    if self.bytes.len() < MAX_LINE {
                        self.bytes.push(b);
                    }
                }
            }
        }
    }

    fn finish(&mut self, mut emit: impl FnMut(u64, Vec<u8>)) {
        if !self.bytes.is_empty() {
            emit(self.start_us.unwrap_or(0), std::mem::take(&mut self.bytes));
        }
    }
}

/// Feed every event of a recording in order, then call [`Searcher::finish`].
pub struct Searcher {
    pattern: Pattern,
    output: LineBuf,
    input: LineBuf,
    pub matches: Vec<Match>,
}

impl Searcher {
    pub fn new(pattern: Pattern) -> Self {
        Searcher {
            pattern,
            output: LineBuf::default(),
            input: LineBuf::default(),
            matches: Vec::new(),
        }
    }

    pub fn feed(&mut self, e: &Event) {
        let pattern = &self.pattern;
        let matches = &mut self.matches;
        let mut check = |stream: char, t_us: u64, line: Vec<u8>| {
            let line = String::from_utf8_lossy(&line).into_owned();
            if pattern.is_match(&line) {
                matches.push(Match { t_us, stream, line });
            }
        };
        match e.kind {
            EventKind::Output => self.output.feed(e.t_us, &e.data, |t, l| check('o', t, l)),
            EventKind::Input => self.input.feed(e.t_us, &e.data, |t, l| check('i', t, l)),
            EventKind::Conn => check('c', e.t_us, e.data.clone()),
            EventKind::Resize => {}
        }
    }

    pub fn finish(mut self) -> Vec<Match> {
        let (pattern, matches) = (&self.pattern, &mut self.matches);
        for (buf, stream) in [(&mut self.output, 'o'), (&mut self.input, 'i')] {
            buf.finish(|t_us, line| {
                let line = String::from_utf8_lossy(&line).into_owned();
                if pattern.is_match(&line) {
                    matches.push(Match { t_us, stream, line });
                }
            });
        }
        self.matches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkOpener, ChunkSealer, DataKey};

    fn out(t: u64, s: &[u8]) -> Event {
        Event {
            t_us: t,
            kind: EventKind::Output,
            data: s.to_vec(),
        }
    }

    #[test]
    fn command_split_across_chunks_is_found() {
        let k = DataKey::from_slice(&[9; 32]).unwrap();
        let mut sealer = ChunkSealer::new(&k, "s", b"h");
        // A prompt, then a command echoed one keystroke per chunk, with colour
        // codes and a corrected typo.
        let mut chunks = vec![sealer.seal(&[out(10, b"\x1b[01;32mroot@h\x1b[0m:~# ")])];
        for (i, b) in b"cat /etc/shadox\x08w\r\n".iter().enumerate() {
            chunks.push(sealer.seal(&[out(20 + i as u64, &[*b])]));
        }
        chunks.push(sealer.seal(&[out(100, b"root:*:1::::::\r\n")]));
        let opener = ChunkOpener::new(&k, "s");
        let mut s = Searcher::new(Pattern::Text("cat /etc/shadow".into()));
        for c in &chunks {
            for e in opener.open(&c.bytes).unwrap().1 {
                s.feed(&e);
            }
        }
        let m = s.finish();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].line, "root@h:~# cat /etc/shadow");
        assert_eq!(m[0].t_us, 10);
        assert_eq!(m[0].stream, 'o');
    }

    #[test]
    fn regex_and_input_stream_and_trailing_line() {
        let mut s = Searcher::new(Pattern::regex(r"rm -rf /\w+").unwrap());
        s.feed(&Event {
            t_us: 5,
            kind: EventKind::Input,
            data: b"rm -rf /tmp\r".to_vec(),
        });
        s.feed(&out(6, b"\x1b]0;title\x07$ rm -rf /var"));
        let m = s.finish();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].stream, 'i');
        assert_eq!(m[1].line, "$ rm -rf /var");
    }
}
