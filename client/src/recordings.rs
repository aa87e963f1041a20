//! `airlock recordings list|play|export|verify|search`: fetches sealed chunks
//! from the gateway, unwraps the data key with the caller's own credentials
//! (`kms:Decrypt` under the recording's encryption context), and opens,
//! verifies, plays, exports or searches locally.

use std::io::Write;
use std::time::{Duration, Instant};

use airlock_recordings::search::{Pattern, Searcher};
use airlock_recordings::{ChunkOpener, DataKey, Event, EventKind, RecordingEnd, RecordingHeader};
use airlock_transport::api::{ApiClient, ApiError};
use base64::Engine;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::commands::{api_client, tls_config, ConnOpts};
use crate::error::ClientError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const PATH: &str = "/airlock/v1/recordings";
/// Longest pause replayed by `play`; longer idle stretches are cut to this.
const IDLE_CAP: Duration = Duration::from_secs(2);

#[derive(Debug, Subcommand)]
pub enum RecordingsCommand {
    /// List recorded sessions
    List {
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        /// RFC 3339 time, unix seconds, or an age such as 2h / 1d
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
    /// Replay a session in the terminal (space pauses, ←/→ seek 5 s, q quits)
    Play {
        session_id: String,
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Start at this offset, e.g. 1m30s
        #[arg(long)]
        from: Option<String>,
    },
    /// Write a plain asciicast v2 file
    Export {
        session_id: String,
        #[arg(short = 'o', long = "output")]
        output: std::path::PathBuf,
    },
    /// Check the hash chain and every chunk's authenticity
    Verify { session_id: String },
    /// Search recordings for TEXT (or --regex RE)
    Search {
        text: Option<String>,
        #[arg(long)]
        regex: Option<String>,
        #[arg(long = "session")]
        session_id: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
}

/// `1m30s`, `90s`, `2h`, `1.5` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs >= 0.0 && secs.is_finite() {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        num.clear();
        total += n * match c {
            'd' => 86400.0,
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => return Err(format!("invalid duration {s:?}")),
        };
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// RFC 3339, unix seconds, or an age (`2h` = two hours ago) → unix ms.
pub fn parse_time_arg(s: &str) -> Result<i64, String> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs * 1000);
    }
    let age = parse_duration(s)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    Ok((now as i64) - age.as_millis() as i64)
}

fn fmt_offset(t_us: u64) -> String {
    let ms = t_us / 1000;
    format!(
        "{:02}:{:02}.{:03}",
        ms / 60_000,
        (ms / 1000) % 60,
        ms % 1000
    )
}

async fn call(api: &ApiClient, body: Value) -> Result<Value, ClientError> {
    let op = body["Action"].as_str().unwrap_or("Recordings").to_string();
    let bytes = serde_json::to_vec(&body).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    let (status, resp) = api.post_signed("ssm", PATH, &bytes).await?;
    let parsed: Value = serde_json::from_slice(&resp).unwrap_or(Value::Null);
    if status != 200 {
        let field = |n: &str| parsed.get(n).and_then(|v| v.as_str()).unwrap_or("");
        return Err(ClientError::Api(ApiError {
            operation: op,
            code: field("__type").to_string(),
            message: field("message").to_string(),
            status,
        }));
    }
    Ok(parsed)
}

/// A recording as fetched: header bytes, end record, chunk bytes in order.
pub struct Fetched {
    pub header_bytes: Vec<u8>,
    pub header: RecordingHeader,
    pub end: Option<RecordingEnd>,
    /// Set when storage's end record disagrees with the gateway's metadata.
    pub end_mismatch: Option<String>,
    pub chunks: Vec<(u64, Vec<u8>)>,
}

async fn fetch(api: &ApiClient, sid: &str, progress: bool) -> Result<Fetched, ClientError> {
    let meta = call(api, json!({"Action": "Get", "SessionId": sid})).await?;
    let b64 = |v: &Value| -> Result<Vec<u8>, ClientError> {
        B64.decode(v.as_str().unwrap_or_default())
            .map_err(|e| ClientError::BadResponse(e.to_string()))
    };
    let header_bytes = b64(&meta["Header"])?;
    let header = RecordingHeader::parse(&header_bytes)
        .map_err(|e| ClientError::BadResponse(e.to_string()))?;
    let parse_end = |v: &Value| -> Result<Option<RecordingEnd>, ClientError> {
        match v {
            Value::String(_) => {
                Ok(Some(serde_json::from_slice(&b64(v)?).map_err(|e| {
                    ClientError::BadResponse(format!("end record: {e}"))
                })?))
            }
            _ => Ok(None),
        }
    };
    let stored_end = parse_end(&meta["End"])?;
    let gateway_end = parse_end(&meta["EndRecord"])?;
    // The gateway's copy is authoritative: storage alone could be truncated
    // together with its end record.
    let end_mismatch = match (&gateway_end, &stored_end) {
        (Some(g), Some(s)) if g != s => {
            Some("the end record in storage differs from the gateway's session metadata".into())
        }
        (Some(_), None) => {
            Some("the end record is missing from storage but recorded by the gateway".into())
        }
        _ => None,
    };
    let end = gateway_end.or(stored_end);
    let total = meta["Chunks"].as_array().map_or(0, |a| a.len());
    let mut chunks = Vec::with_capacity(total.min(1 << 16));
    let mut from = 0u64;
    loop {
        let resp = call(
            api,
            json!({"Action": "GetChunks", "SessionId": sid, "From": from}),
        )
        .await?;
        let list = resp["Chunks"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            break;
        }
        for c in list {
            let seq = c["Seq"].as_u64().unwrap_or(0);
            chunks.push((seq, b64(&c["Data"])?));
            from = seq + 1;
        }
        if progress && total > 50 {
            eprint!("\rfetched {}/{total} chunks", chunks.len());
        }
        if chunks.len() >= total {
            break;
        }
    }
    if progress && total > 50 {
        eprintln!();
    }
    Ok(Fetched {
        header_bytes,
        header,
        end,
        end_mismatch,
        chunks,
    })
}

/// Unwraps the data key with the caller's own credentials (`kms:Decrypt`
/// under the recording's encryption context).
async fn data_key(api: &ApiClient, h: &RecordingHeader) -> Result<DataKey, ClientError> {
    let body = json!({
        "CiphertextBlob": h.encrypted_data_key,
        "EncryptionContext": h.encryption_context,
    });
    let v = api
        .call_json("kms", "TrentService", "Decrypt", &body)
        .await?;
    let plain = B64
        .decode(v["Plaintext"].as_str().unwrap_or_default())
        .map_err(|e| ClientError::BadResponse(e.to_string()))?;
    DataKey::from_slice(&plain).map_err(|e| ClientError::BadResponse(e.to_string()))
}

/// Every event of a fetched recording, in order. Chunks that fail to open
/// are an error: playback and search never show unauthenticated bytes.
fn events(f: &Fetched, key: &DataKey) -> Result<Vec<Event>, ClientError> {
    let opener = ChunkOpener::new(key, &f.header.session_id);
    let mut out = Vec::new();
    for (seq, bytes) in &f.chunks {
        let (_, evs) = opener
            .open(bytes)
            .map_err(|e| ClientError::BadResponse(format!("chunk {seq}: {e}")))?;
        out.extend(evs);
    }
    Ok(out)
}

pub async fn run(opts: &ConnOpts, cmd: RecordingsCommand) -> Result<i32, ClientError> {
    let api = api_client(opts, tls_config()?)?;
    match cmd {
        RecordingsCommand::List {
            target,
            owner,
            since,
            until,
        } => {
            let list = list(&api, target, owner, since, until).await?;
            println!(
                "{:<32} {:<22} {:<10} {:>7} {:<8} STARTED",
                "SESSION", "TARGET", "STATUS", "CHUNKS", "COMPLETE"
            );
            for r in list {
                let started = r["StartDate"].as_f64().unwrap_or(0.0) as i64;
                let started = time::OffsetDateTime::from_unix_timestamp(started)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default();
                println!(
                    "{:<32} {:<22} {:<10} {:>7} {:<8} {started}",
                    r["SessionId"].as_str().unwrap_or(""),
                    r["Target"].as_str().unwrap_or(""),
                    r["Status"].as_str().unwrap_or(""),
                    r["Chunks"].as_u64().unwrap_or(0),
                    if r["Complete"].as_bool().unwrap_or(false) {
                        "yes"
                    } else {
                        "no"
                    },
                );
            }
            Ok(0)
        }
        RecordingsCommand::Verify { session_id } => {
            let f = fetch(&api, &session_id, true).await?;
            let key = data_key(&api, &f.header).await;
            let opener = key
                .as_ref()
                .ok()
                .map(|k| ChunkOpener::new(k, &f.header.session_id));
            let mut report = airlock_recordings::verify::verify(
                &f.header_bytes,
                &f.chunks,
                f.end.as_ref(),
                opener.as_ref(),
            );
            if let Some(m) = &f.end_mismatch {
                report.problems.push(m.clone());
            }
            if let Err(e) = &key {
                eprintln!("warning: cannot unwrap the data key ({e}); checked the hash chain only");
            }
            if report.ok() {
                println!(
                    "OK {session_id}: {} chunks, chain head {}{}",
                    report.chunks,
                    report.head,
                    if report.complete {
                        ", matches the end record"
                    } else {
                        " (no end record: the session did not finish cleanly)"
                    }
                );
                Ok(0)
            } else {
                println!("FAILED {session_id}:");
                for p in &report.problems {
                    println!("  {p}");
                }
                Ok(1)
            }
        }
        RecordingsCommand::Export { session_id, output } => {
            let f = fetch(&api, &session_id, true).await?;
            let key = data_key(&api, &f.header).await?;
            let evs = events(&f, &key)?;
            let file = std::fs::File::create(&output)?;
            let mut w = airlock_recordings::export::AsciicastWriter::new(
                std::io::BufWriter::new(file),
                &f.header,
            )?;
            for e in &evs {
                w.event(e)?;
            }
            w.finish()?;
            eprintln!("wrote {} events to {}", evs.len(), output.display());
            Ok(0)
        }
        RecordingsCommand::Play {
            session_id,
            speed,
            from,
        } => {
            if !(speed > 0.0 && speed.is_finite()) {
                return Err(ClientError::Usage("--speed must be positive".into()));
            }
            let from = from
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(ClientError::Usage)?
                .unwrap_or_default();
            let f = fetch(&api, &session_id, true).await?;
            let key = data_key(&api, &f.header).await?;
            let evs = events(&f, &key)?;
            tokio::task::spawn_blocking(move || play(&evs, speed, from))
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))??;
            Ok(0)
        }
        RecordingsCommand::Search {
            text,
            regex,
            session_id,
            target,
            owner,
            since,
            until,
        } => {
            let make_pattern = || -> Result<Pattern, ClientError> {
                match (&text, &regex) {
                    (_, Some(re)) => {
                        Pattern::regex(re).map_err(|e| ClientError::Usage(e.to_string()))
                    }
                    (Some(t), None) => Ok(Pattern::Text(t.clone())),
                    (None, None) => Err(ClientError::Usage("give TEXT or --regex RE".into())),
                }
            };
            make_pattern()?;
            let sessions: Vec<String> = match session_id {
                Some(s) => vec![s],
                None => list(&api, target, owner, since, until)
                    .await?
                    .iter()
                    .filter_map(|r| r["SessionId"].as_str().map(String::from))
                    .collect(),
            };
            let mut found = 0usize;
            let n = sessions.len();
            for (i, sid) in sessions.iter().enumerate() {
                if n > 3 {
                    eprint!("\rsearching {}/{n} recordings", i + 1);
                }
                let f = fetch(&api, sid, false).await?;
                let key = match data_key(&api, &f.header).await {
                    Ok(k) => k,
                    Err(e) => {
                        eprintln!("\nskipping {sid}: {e}");
                        continue;
                    }
                };
                let mut s = Searcher::new(make_pattern()?);
                for e in events(&f, &key)? {
                    s.feed(&e);
                }
                let matches = s.finish();
                if n > 3 && !matches.is_empty() {
                    eprintln!();
                }
                for m in matches {
                    found += 1;
                    println!("{sid}\t{}\t{}", fmt_offset(m.t_us), m.line);
                }
            }
            if n > 3 {
                eprintln!();
            }
            Ok(if found > 0 { 0 } else { 1 })
        }
    }
}

async fn list(
    api: &ApiClient,
    target: Option<String>,
    owner: Option<String>,
    since: Option<String>,
    until: Option<String>,
) -> Result<Vec<Value>, ClientError> {
    let t = |s: Option<String>| -> Result<Option<i64>, ClientError> {
        s.as_deref()
            .map(parse_time_arg)
            .transpose()
            .map_err(ClientError::Usage)
    };
    let resp = call(
        api,
        json!({
            "Action": "List",
            "Target": target,
            "Owner": owner,
            "Since": t(since)?,
            "Until": t(until)?,
        }),
    )
    .await?;
    Ok(resp["Recordings"].as_array().cloned().unwrap_or_default())
}

/// Replays output events with their timing. On a terminal: space pauses,
/// → / ← seek 5 s, q quits. Idle gaps are capped.
fn play(evs: &[Event], speed: f64, from: Duration) -> Result<(), ClientError> {
    use std::io::IsTerminal;
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let _raw = if interactive {
        crossterm::terminal::enable_raw_mode()
            .ok()
            .map(|_| RawGuard)
    } else {
        None
    };
    let mut out = std::io::stdout().lock();
    let outputs: Vec<&Event> = evs.iter().filter(|e| e.kind == EventKind::Output).collect();
    let mut pos = 0f64; // playback position in recording seconds
    let mut target = from.as_secs_f64();
    let mut i = 0usize;
    let mut paused = false;
    let mut last_t = 0f64;
    while i < outputs.len() {
        let e = outputs[i];
        let t = e.t_us as f64 / 1e6;
        if t <= target {
            // Fast-forward to the seek point without waiting.
            out.write_all(&e.data)?;
            i += 1;
            last_t = t;
            pos = pos.max(t);
            continue;
        }
        out.flush()?;
        let gap = (t - last_t).min(IDLE_CAP.as_secs_f64()) / speed;
        let deadline = Instant::now() + Duration::from_secs_f64(gap.max(0.0));
        let mut seek: Option<f64> = None;
        loop {
            let now = Instant::now();
            if !paused && now >= deadline {
                break;
            }
            if !interactive {
                std::thread::sleep(deadline.saturating_duration_since(now));
                break;
            }
            let wait = if paused {
                Duration::from_millis(200)
            } else {
                deadline.saturating_duration_since(now)
            };
            if crossterm::event::poll(wait).unwrap_or(false) {
                use crossterm::event::{Event as CEvent, KeyCode};
                if let Ok(CEvent::Key(k)) = crossterm::event::read() {
                    match k.code {
                        KeyCode::Char(' ') => paused = !paused,
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Right => seek = Some(pos + 5.0),
                        KeyCode::Left => seek = Some((pos - 5.0).max(0.0)),
                        _ => {}
                    }
                    if seek.is_some() {
                        break;
                    }
                }
            }
        }
        if let Some(s) = seek {
            if s < pos {
                // Backwards: reset the screen and replay up to the new point.
                out.write_all(b"\x1bc")?;
                i = 0;
            }
            target = s;
            continue;
        }
        out.write_all(&e.data)?;
        pos = t;
        last_t = t;
        i += 1;
    }
    out.flush()?;
    Ok(())
}

struct RawGuard;

impl Drop for RawGuard {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5m3").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(parse_time_arg("1700000000").unwrap(), 1_700_000_000_000);
        assert_eq!(
            parse_time_arg("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert!(parse_time_arg("1h").unwrap() < parse_time_arg("1m").unwrap());
    }

    #[test]
    fn offsets() {
        assert_eq!(fmt_offset(90_500_000), "01:30.500");
    }
}
