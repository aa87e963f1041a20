//! Session recorder: turns a session's output, resizes, (opted-in) input and
//! port connection events into sealed, hash-chained chunks, spools them to a
//! bounded on-disk queue and streams them to the gateway while the session
//! runs. A chunk leaves the spool only once the gateway acknowledged it as
//! durable; what is left after a crash is uploaded when the agent restarts.
//!
//! The data key comes from the key service (wrapped under an encryption
//! context naming the session and target) and exists only in this process's
//! memory; the spool and the gateway see sealed chunks only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_proto::messages::StartSessionTask;
use airlock_recordings::event::ConnEvent;
use airlock_recordings::{ChunkSealer, DataKey, Event, EventKind, RecordingEnd, RecordingHeader};
use airlock_transport::api::ApiClient;
use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use base64::Engine;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::Agent;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const PATH: &str = "/airlock/v1/recordings";
/// Events queued between the session and the recorder task; a full queue
/// slows the session down rather than dropping events.
const EVENT_QUEUE: usize = 256;
/// Seal at least this often while there are events (the issue's "a chunk at
/// least every second").
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Seal early once this much is buffered.
const MAX_CHUNK_PLAIN: usize = 128 * 1024;
/// Largest single event; bigger writes are split.
const MAX_EVENT: usize = 64 * 1024;
/// Default bound of one session's spool; the session blocks when it is full.
const DEFAULT_SPOOL_MAX: u64 = 64 << 20;
const DEFAULT_KEY: &str = "alias/airlock/recordings";
/// With fail-closed recordings, how long uploads may keep failing before the
/// session is ended.
const FAIL_CLOSED_GRACE: Duration = Duration::from_secs(5);
/// What the client sees when a fail-closed session is ended.
pub const FAIL_CLOSED_MESSAGE: &[u8] =
    b"\r\n[airlock] This session's recording cannot be made durable and recordings fail closed: ending the session.\r\n";

/// Where data keys come from.
#[async_trait]
pub trait DataKeySource: Send + Sync {
    /// Returns (key id, plaintext key, wrapped key).
    async fn generate(
        &self,
        key_id: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<(String, DataKey, Vec<u8>)>;
}

/// The gateway's KMS: `TrentService.GenerateDataKey` with the agent's own
/// credentials (the instance role allows `kms:GenerateDataKey`).
pub struct GatewayKeys {
    pub api: ApiClient,
}

fn key_from_answer(v: &serde_json::Value) -> Result<(String, DataKey, Vec<u8>)> {
    let field = |n: &str| v.get(n).and_then(|x| x.as_str()).unwrap_or_default();
    let plain = B64.decode(field("Plaintext")).context("Plaintext")?;
    let blob = B64
        .decode(field("CiphertextBlob"))
        .context("CiphertextBlob")?;
    let key = DataKey::from_slice(&plain).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((field("KeyId").to_string(), key, blob))
}

#[async_trait]
impl DataKeySource for GatewayKeys {
    async fn generate(
        &self,
        key_id: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<(String, DataKey, Vec<u8>)> {
        let body = serde_json::json!({
            "KeyId": key_id,
            "KeySpec": "AES_256",
            "EncryptionContext": context,
        });
        let v = self
            .api
            .call_json("kms", "TrentService", "GenerateDataKey", &body)
            .await?;
        key_from_answer(&v)
    }
}

/// One signed call to the recordings endpoint; Ok only on HTTP 200.
async fn call(api: &ApiClient, body: serde_json::Value) -> Result<serde_json::Value> {
    let bytes = serde_json::to_vec(&body)?;
    let (status, resp) = api.post_signed("ssmmessages", PATH, &bytes).await?;
    if status != 200 {
        let text = String::from_utf8_lossy(&resp[..resp.len().min(300)]).into_owned();
        bail!("recordings endpoint answered HTTP {status}: {text}");
    }
    Ok(serde_json::from_slice(&resp).unwrap_or(serde_json::Value::Null))
}

fn spool_root(agent: &Agent) -> PathBuf {
    agent.state_dir.join("recordings-spool")
}

fn spool_max() -> u64 {
    std::env::var("AIRLOCK_RECORDING_SPOOL_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SPOOL_MAX)
}

enum Msg {
    Event(Event),
    Finish(oneshot::Sender<()>),
}

/// A handle the session holds; cheap to clone into its tasks.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    started: Instant,
    record_input: bool,
    doomed: CancellationToken,
}

fn input_enabled(task: &StartSessionTask) -> bool {
    input_flag(task, "recordInput")
}

/// Whether the session must end rather than run unrecorded
/// (`recordingFailClosed`, from the preferences or the gateway's config).
pub fn fails_closed(task: &StartSessionTask) -> bool {
    input_flag(task, "recordingFailClosed")
}

/// The refusal shown to the user when a fail-closed session cannot be recorded.
pub const REFUSED_UNRECORDED: &str =
    "This session was refused: its recording could not be started, and recordings fail closed.";

fn input_flag(task: &StartSessionTask, name: &str) -> bool {
    match task.document_content.inputs.get(name) {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// Starts recording `task`'s session; `None` when recording is not possible
/// (the session then runs unrecorded unless the gateway fails closed, which it
/// enforces itself at StartSession).
pub async fn start(
    agent: &Arc<Agent>,
    task: &StartSessionTask,
    kind: &str,
    size: (u16, u16),
) -> Option<Recorder> {
    match try_start(agent, task, kind, size).await {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(session = %task.session_id, error = %format!("{e:#}"), "session is not recorded");
            None
        }
    }
}

async fn try_start(
    agent: &Arc<Agent>,
    task: &StartSessionTask,
    kind: &str,
    (width, height): (u16, u16),
) -> Result<Recorder> {
    let sid = task.session_id.clone();
    let target = agent.reg.instance_id.clone();
    let key_id = task
        .document_content
        .inputs
        .get("kmsKeyId")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_KEY)
        .to_string();
    let context = RecordingHeader::context_for(&sid, &target);
    let keys = GatewayKeys {
        api: agent.call_api().await,
    };
    let (key_arn, key, blob) = keys.generate(&key_id, &context).await?;
    let record_input = input_enabled(task);
    let header = RecordingHeader {
        format: 1,
        session_id: sid.clone(),
        target,
        owner: task.session_owner.clone(),
        kind: kind.to_string(),
        width,
        height,
        started: time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64,
        record_input,
        kms_key_id: key_arn,
        encrypted_data_key: B64.encode(&blob),
        encryption_context: context,
    };
    let header_bytes = serde_json::to_vec(&header)?;
    let dir = spool_root(agent).join(&sid);
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    write_atomic(&dir.join("header.json"), &header_bytes)?;
    let sealer = ChunkSealer::new(&key, &sid, &header_bytes);
    drop(key);
    let notify = Arc::new(Notify::new());
    let live = Arc::new(AtomicBool::new(true));
    let doomed = CancellationToken::new();
    tokio::spawn(upload_dir(
        agent.clone(),
        dir.clone(),
        notify.clone(),
        live.clone(),
        Some(doomed.clone()),
    ));
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(async move {
        record_task(rx, sealer, dir, notify.clone()).await;
        live.store(false, Ordering::SeqCst);
        notify.notify_one();
    });
    info!(session = %sid, "recording session");
    Ok(Recorder {
        tx,
        started: Instant::now(),
        record_input,
        doomed,
    })
}

/// Cancelled when recordings fail closed and this session's recording cannot
/// be made durable; never cancelled without a recorder.
pub fn doomed(rec: &Option<Recorder>) -> CancellationToken {
    rec.as_ref().map(|r| r.doomed.clone()).unwrap_or_default()
}

impl Recorder {
    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    async fn push(&self, kind: EventKind, data: &[u8]) {
        let t_us = self.now_us();
        for piece in data.chunks(MAX_EVENT) {
            let e = Event {
                t_us,
                kind,
                data: piece.to_vec(),
            };
            if self.tx.send(Msg::Event(e)).await.is_err() {
                return;
            }
        }
    }

    pub async fn output(&self, data: &[u8]) {
        self.push(EventKind::Output, data).await
    }

    /// Typed input; recorded only when the preferences enable it.
    pub async fn input(&self, data: &[u8]) {
        if self.record_input {
            self.push(EventKind::Input, data).await
        }
    }

    pub async fn resize(&self, cols: u32, rows: u32) {
        self.push(EventKind::Resize, format!("{cols}x{rows}").as_bytes())
            .await
    }

    pub async fn conn(&self, ev: ConnEvent) {
        if let Ok(b) = serde_json::to_vec(&ev) {
            self.push(EventKind::Conn, &b).await
        }
    }

    /// Seals what is buffered, writes the end record with the final chain
    /// hash, and gives the uploader a short while to drain.
    pub async fn finish(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Finish(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn chunk_name(seq: u64) -> String {
    format!("{seq:012}.alrc")
}

fn spool_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

async fn record_task(
    mut rx: mpsc::Receiver<Msg>,
    mut sealer: ChunkSealer,
    dir: PathBuf,
    notify: Arc<Notify>,
) {
    let mut buf: Vec<Event> = Vec::new();
    let mut buffered = 0usize;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max = spool_max();
    let flush = |buf: &mut Vec<Event>, sealer: &mut ChunkSealer| -> bool {
        if buf.is_empty() {
            return true;
        }
        let c = sealer.seal(buf);
        buf.clear();
        match write_atomic(&dir.join(chunk_name(c.seq)), &c.bytes) {
            Ok(()) => {
                notify.notify_one();
                true
            }
            Err(e) => {
                warn!(error = %e, "cannot spool a recording chunk");
                false
            }
        }
    };
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(Msg::Event(e)) => {
                    buffered += e.data.len();
                    buf.push(e);
                    if buffered >= MAX_CHUNK_PLAIN {
                        // Bounded spool: wait for the uploader to make room,
                        // which holds the session back instead of losing data.
                        while spool_bytes(&dir) > max {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        flush(&mut buf, &mut sealer);
                        buffered = 0;
                    }
                }
                Some(Msg::Finish(done)) => {
                    flush(&mut buf, &mut sealer);
                    let end = RecordingEnd {
                        chunks: sealer.next_seq(),
                        final_hash: hex_encode(&sealer.head()),
                        ended: time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64,
                    };
                    if let Ok(b) = serde_json::to_vec(&end) {
                        if let Err(e) = write_atomic(&dir.join("end.json"), &b) {
                            warn!(error = %e, "cannot spool the recording end");
                        }
                    }
                    notify.notify_one();
                    // Wait (bounded by the caller) for the upload to drain.
                    let dir = dir.clone();
                    tokio::spawn(async move {
                        while dir.exists() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        let _ = done.send(());
                    });
                    return;
                }
                None => {
                    // Session gone without finish (error path): keep what we have.
                    flush(&mut buf, &mut sealer);
                    return;
                }
            },
            _ = tick.tick() => {
                flush(&mut buf, &mut sealer);
                buffered = 0;
            }
        }
    }
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Uploads a session's spool dir in order (header, chunks, end), deleting
/// each file once acknowledged, with backoff while the gateway or its storage
/// is down. Ends when the end record is uploaded, or, for a dir left from a
/// previous run, when the dir is empty.
async fn upload_dir(
    agent: Arc<Agent>,
    dir: PathBuf,
    notify: Arc<Notify>,
    live: Arc<AtomicBool>,
    doomed: Option<CancellationToken>,
) {
    let sid = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut backoff = Duration::from_millis(200);
    let mut fail_closed = false;
    let mut failing_since: Option<Instant> = None;
    loop {
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".tmp"))
                .collect(),
            Err(_) => return,
        };
        // header.json sorts after the digits; it must go first.
        names.sort_by_key(|n| match n.as_str() {
            "header.json" => (0, String::new()),
            "end.json" => (2, String::new()),
            other => (1, other.to_string()),
        });
        if names.is_empty() {
            if live.load(Ordering::SeqCst) {
                let _ = tokio::time::timeout(Duration::from_secs(1), notify.notified()).await;
                continue;
            }
            let _ = std::fs::remove_dir(&dir);
            return;
        }
        let mut progressed = false;
        let mut failed = false;
        for name in &names {
            let path = dir.join(name);
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            let body = match name.as_str() {
                "header.json" => {
                    serde_json::json!({"Action": "PutHeader", "SessionId": sid, "Data": B64.encode(&data)})
                }
                "end.json" => {
                    serde_json::json!({"Action": "PutEnd", "SessionId": sid, "Data": B64.encode(&data)})
                }
                n => {
                    let Some(seq) = n.strip_suffix(".alrc").and_then(|s| s.parse::<u64>().ok())
                    else {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    };
                    serde_json::json!({"Action": "PutChunk", "SessionId": sid, "Seq": seq, "Data": B64.encode(&data)})
                }
            };
            // Role credentials are short-lived and this runs for the whole
            // session: ask for the current ones each time.
            match call(&agent.call_api().await, body).await {
                Ok(v) => {
                    fail_closed = v["FailClosed"].as_bool().unwrap_or(fail_closed);
                    failing_since = None;
                    let _ = std::fs::remove_file(&path);
                    progressed = true;
                    if name == "end.json" {
                        let _ = std::fs::remove_dir_all(&dir);
                        debug!(session = %sid, "recording fully uploaded");
                        return;
                    }
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    // The session or its recording no longer exists there:
                    // nothing will ever accept these bytes.
                    if text.contains("DoesNotExistException") || text.contains("RecordingDisabled")
                    {
                        warn!(session = %sid, error = %text, "dropping an unacceptable recording");
                        let _ = std::fs::remove_dir_all(&dir);
                        return;
                    }
                    debug!(session = %sid, error = %text, "recording upload failed; will retry");
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if let Some(d) = &doomed {
                        if fail_closed && since.elapsed() >= FAIL_CLOSED_GRACE && !d.is_cancelled()
                        {
                            warn!(session = %sid, "recording is not durable and fails closed; ending the session");
                            d.cancel();
                        }
                    }
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        } else {
            if progressed {
                backoff = Duration::from_millis(200);
            }
            // Header uploaded and nothing else yet: wait for new chunks.
            let _ = tokio::time::timeout(Duration::from_secs(1), notify.notified()).await;
        }
    }
}

/// Uploads whatever an earlier run of the agent left in the spool.
pub fn resume_spooled(agent: &Arc<Agent>) {
    let Ok(rd) = std::fs::read_dir(spool_root(agent)) else {
        return;
    };
    for ent in rd.flatten() {
        if ent.path().is_dir() {
            info!(dir = %ent.path().display(), "uploading a recording left from an earlier run");
            let notify = Arc::new(Notify::new());
            let live = Arc::new(AtomicBool::new(false));
            tokio::spawn(upload_dir(agent.clone(), ent.path(), notify, live, None));
        }
    }
}

/// Records one port-forward connection event; `bytes` is (client→destination,
/// destination→client).
pub async fn conn_event(
    rec: &Option<Recorder>,
    event: &str,
    stream: u32,
    remote: &str,
    bytes: (u64, u64),
    error: &str,
) {
    if let Some(r) = rec {
        r.conn(ConnEvent {
            event: event.to_string(),
            stream: u64::from(stream),
            remote: remote.to_string(),
            bytes_in: bytes.0,
            bytes_out: bytes.1,
            error: error.to_string(),
        })
        .await;
    }
}

/// Byte counters of one port connection, shared by its reader and writer, and
/// the `closed` event they end in.
#[derive(Clone)]
pub struct ConnStats {
    inner: Arc<ConnStatsInner>,
}

struct ConnStatsInner {
    rec: Option<Recorder>,
    stream: u32,
    remote: String,
    bytes_in: std::sync::atomic::AtomicU64,
    bytes_out: std::sync::atomic::AtomicU64,
}

impl ConnStats {
    pub fn new(rec: Option<Recorder>, stream: u32, remote: String) -> Self {
        ConnStats {
            inner: Arc::new(ConnStatsInner {
                rec,
                stream,
                remote,
                bytes_in: Default::default(),
                bytes_out: Default::default(),
            }),
        }
    }
    pub fn add_in(&self, n: usize) {
        self.inner.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn add_out(&self, n: usize) {
        self.inner.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub async fn closed(&self) {
        let i = &self.inner;
        conn_event(
            &i.rec,
            "closed",
            i.stream,
            &i.remote,
            (
                i.bytes_in.load(Ordering::Relaxed),
                i.bytes_out.load(Ordering::Relaxed),
            ),
            "",
        )
        .await;
    }
}
