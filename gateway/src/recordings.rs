//! Session recordings on the gateway side: the ingest/read endpoint
//! (`POST /airlock/v1/recordings`), the storage interface with local-disk and
//! S3 backends, and the fail-closed admission check.
//!
//! The gateway only ever handles sealed chunks: the data key is wrapped by the
//! gateway's KMS (`TrentService.GenerateDataKey`) under an encryption context
//! naming the session, and unwrapped by the reading client with its own
//! credentials (`kms:Decrypt`); this module never touches keys. Object layout is
//! in `docs/RECORDINGS.md`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::{authenticate, Principal};
use crate::error::ApiError;
use crate::server::{json_response, AppState, Body, ReadRequest};
use crate::store::SessionFilter;

pub mod s3;
pub use s3::S3Storage;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Largest chunk accepted from an agent.
const MAX_CHUNK: usize = 512 * 1024;
/// Cap on the chunk bytes returned by one `GetChunks` call.
const MAX_READ_BATCH: usize = 4 << 20;
/// The default key recordings are wrapped with, created in the gateway's
/// KMS before the first recorded session (not at start, so a gateway that
/// never runs a session holds no keys it was not asked for).
pub const DEFAULT_KEY_ALIAS: &str = "alias/airlock/recordings";

/// Called by StartSession before anything is created: makes sure the
/// default recordings key exists and, when recordings fail closed, that
/// storage takes a write right now.
pub async fn admit_session(state: &AppState) -> Result<(), ApiError> {
    let rec = &state.recordings;
    if !rec.config.enabled {
        return Ok(());
    }
    if !rec
        .default_key_ready
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        state
            .kms
            .ensure_alias_key(
                DEFAULT_KEY_ALIAS,
                "Default key for Airlock session recordings",
            )
            .await?;
        rec.default_key_ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    rec.admit_session(fails_closed(state).await?).await
}

/// The config's `fail_closed`, or the `recordingFailClosed` preference.
async fn fails_closed(state: &AppState) -> Result<bool, ApiError> {
    if state.recordings.config.fail_closed {
        return Ok(true);
    }
    let prefs = crate::documents::preferences(&state.documents).await?;
    Ok(crate::documents::input_bool(&prefs, "recordingFailClosed"))
}

type ApiResult = Result<http::Response<Body>, ApiError>;

/// `[recordings]` in the gateway configuration.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingsConfig {
    /// Record sessions at all. Default true.
    pub enabled: bool,
    /// `local` (under the data dir, the default) or `s3`.
    pub storage: String,
    /// Local storage root. Default `<data_dir>/recordings`.
    pub local_dir: Option<PathBuf>,
    /// S3-compatible endpoint, e.g. `http://127.0.0.1:9000` (path-style).
    pub s3_endpoint: String,
    pub s3_bucket: String,
    /// Key prefix inside the bucket. Default `recordings/`.
    pub s3_prefix: String,
    /// SigV4 region for S3. Default `us-east-1`.
    pub s3_region: String,
    pub s3_access_key_id: String,
    /// Secret for S3; prefer `s3_secret_file` or `$AIRLOCK_S3_SECRET_ACCESS_KEY`.
    pub s3_secret_access_key: String,
    pub s3_secret_file: Option<PathBuf>,
    /// PEM CA bundle for an `https://` endpoint (default: public roots).
    pub s3_ca_bundle: Option<PathBuf>,
    /// Refuse sessions (and tell agents to end them) when recordings cannot
    /// be made durable. Default false.
    pub fail_closed: bool,
    /// How long one chunk put is retried (with backoff) before the agent is
    /// told to keep it and retry later, seconds. Default 10.
    pub retry_secs: u64,
}

impl std::fmt::Debug for RecordingsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingsConfig")
            .field("enabled", &self.enabled)
            .field("storage", &self.storage)
            .field("local_dir", &self.local_dir)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_bucket", &self.s3_bucket)
            .field("s3_prefix", &self.s3_prefix)
            .field("s3_region", &self.s3_region)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field("s3_secret_access_key", &"<redacted>")
            .field("fail_closed", &self.fail_closed)
            .field("retry_secs", &self.retry_secs)
            .finish()
    }
}

impl Default for RecordingsConfig {
    fn default() -> Self {
        RecordingsConfig {
            enabled: true,
            storage: "local".into(),
            local_dir: None,
            s3_endpoint: String::new(),
            s3_bucket: String::new(),
            s3_prefix: "recordings/".into(),
            s3_region: "us-east-1".into(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: String::new(),
            s3_secret_file: None,
            s3_ca_bundle: None,
            fail_closed: false,
            retry_secs: 10,
        }
    }
}

impl RecordingsConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self.storage.as_str() {
            "local" => Ok(()),
            "s3" => {
                if self.s3_endpoint.is_empty() || self.s3_bucket.is_empty() {
                    return Err(
                        "recordings.storage = \"s3\" needs s3_endpoint and s3_bucket".into(),
                    );
                }
                if self.s3_access_key_id.is_empty() {
                    return Err("recordings.storage = \"s3\" needs s3_access_key_id".into());
                }
                Ok(())
            }
            other => Err(format!(
                "recordings.storage must be \"local\" or \"s3\", not {other:?}"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage rejected the request: {0}")]
    Rejected(String),
}

/// Where recordings live. Every `put` returns only once the object is durable.
#[async_trait]
pub trait RecordingStorage: Send + Sync {
    async fn put(&self, key: &str, data: &[u8]) -> Result<(), StorageError>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Every key under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// A URL naming `key` for DescribeSessions' `OutputUrl.S3OutputUrl`.
    fn url(&self, key: &str) -> String;
    /// The same store, another bucket (preferences' `s3BucketName`); None
    /// for backends without buckets.
    fn for_bucket(&self, _bucket: &str) -> Option<Arc<dyn RecordingStorage>> {
        None
    }
}

/// Where one session's recording lives.
pub struct Location {
    pub storage: Arc<dyn RecordingStorage>,
    /// Ends in `<session-id>/`.
    pub prefix: String,
}

/// Objects as files under a root directory, written atomically and fsynced.
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: PathBuf) -> Self {
        LocalStorage { root }
    }
    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        // Keys are built from validated ids, but never let one escape root.
        if key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(StorageError::Rejected(format!("bad key {key:?}")));
        }
        Ok(self.root.join(key))
    }
}

fn write_durable(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("keys have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl RecordingStorage for LocalStorage {
    async fn put(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
        let path = self.path(key)?;
        let data = data.to_vec();
        tokio::task::spawn_blocking(move || write_durable(&path, &data))
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?
            .map_err(|e| StorageError::Unavailable(e.to_string()))
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::Unavailable(e.to_string())),
        }
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StorageError::Unavailable(e.to_string())),
                };
                for ent in rd.flatten() {
                    let p = ent.path();
                    let rel = p
                        .strip_prefix(&root)
                        .map(|r| r.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if p.is_dir() {
                        if prefix.starts_with(&rel) || rel.starts_with(&prefix) {
                            stack.push(p);
                        }
                    } else if rel.starts_with(&prefix) && !rel.contains(".tmp") {
                        out.push(rel);
                    }
                }
            }
            out.sort();
            Ok(out)
        })
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))?
    }
    fn url(&self, key: &str) -> String {
        format!("file://{}", self.root.join(key).display())
    }
}

/// Final chain hashes in the gateway database (table `recording_ends`), so a
/// recording truncated in storage together with its `end.json` is still
/// detected. Written once per session.
pub struct EndIndex {
    conn: std::sync::Mutex<rusqlite::Connection>,
}

impl EndIndex {
    pub fn open(path: &Path) -> Result<Self, String> {
        let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
        conn.execute_batch(
            "PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS recording_ends (
                 session_id TEXT PRIMARY KEY,
                 end_record BLOB NOT NULL
             );
             CREATE TABLE IF NOT EXISTS recording_locations (
                 session_id TEXT PRIMARY KEY,
                 bucket TEXT NOT NULL,
                 prefix TEXT NOT NULL
             );",
        )
        .map_err(|e| e.to_string())?;
        Ok(EndIndex {
            conn: std::sync::Mutex::new(conn),
        })
    }

    /// Ok(true) when stored or already stored identically; Ok(false) when a
    /// different end record exists.
    fn record(&self, sid: &str, end: &[u8]) -> Result<bool, ApiError> {
        let c = self.conn.lock().map_err(|_| ApiError::internal())?;
        let existing: Option<Vec<u8>> = c
            .query_row(
                "SELECT end_record FROM recording_ends WHERE session_id = ?1",
                [sid],
                |r| r.get(0),
            )
            .ok();
        if let Some(e) = existing {
            return Ok(e == end);
        }
        c.execute(
            "INSERT INTO recording_ends (session_id, end_record) VALUES (?1, ?2)",
            rusqlite::params![sid, end],
        )
        .map_err(|e| {
            tracing::warn!(error = %e, "recording_ends insert");
            ApiError::internal()
        })?;
        Ok(true)
    }

    fn location(&self, sid: &str) -> Result<Option<(String, String)>, ApiError> {
        let c = self.conn.lock().map_err(|_| ApiError::internal())?;
        Ok(c.query_row(
            "SELECT bucket, prefix FROM recording_locations WHERE session_id = ?1",
            [sid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok())
    }

    fn set_location(&self, sid: &str, bucket: &str, prefix: &str) -> Result<(), ApiError> {
        let c = self.conn.lock().map_err(|_| ApiError::internal())?;
        c.execute(
            "INSERT OR IGNORE INTO recording_locations (session_id, bucket, prefix) VALUES (?1, ?2, ?3)",
            rusqlite::params![sid, bucket, prefix],
        )
        .map_err(|e| {
            tracing::warn!(error = %e, "recording_locations insert");
            ApiError::internal()
        })?;
        Ok(())
    }

    fn get(&self, sid: &str) -> Result<Option<Vec<u8>>, ApiError> {
        let c = self.conn.lock().map_err(|_| ApiError::internal())?;
        Ok(c.query_row(
            "SELECT end_record FROM recording_ends WHERE session_id = ?1",
            [sid],
            |r| r.get(0),
        )
        .ok())
    }
}

/// The recordings half of the gateway state.
pub struct Recordings {
    pub config: RecordingsConfig,
    pub storage: Arc<dyn RecordingStorage>,
    prefix: String,
    default_key_ready: std::sync::atomic::AtomicBool,
    ends: EndIndex,
}

impl Recordings {
    pub fn new(config: &RecordingsConfig, data_dir: &Path) -> Result<Recordings, String> {
        config.validate()?;
        let (storage, prefix): (Arc<dyn RecordingStorage>, String) = match config.storage.as_str() {
            "s3" => {
                let secret = if let Some(f) = &config.s3_secret_file {
                    std::fs::read_to_string(f)
                        .map_err(|e| format!("{}: {e}", f.display()))?
                        .trim()
                        .to_string()
                } else if !config.s3_secret_access_key.is_empty() {
                    config.s3_secret_access_key.clone()
                } else {
                    std::env::var("AIRLOCK_S3_SECRET_ACCESS_KEY").map_err(|_| {
                        "recordings.storage = \"s3\" needs a secret (s3_secret_file, s3_secret_access_key or $AIRLOCK_S3_SECRET_ACCESS_KEY)".to_string()
                    })?
                };
                let s3 = S3Storage::new(
                    &config.s3_endpoint,
                    &config.s3_bucket,
                    &config.s3_region,
                    &config.s3_access_key_id,
                    &secret,
                    config.s3_ca_bundle.as_deref(),
                )?;
                (Arc::new(s3), normalize_prefix(&config.s3_prefix))
            }
            _ => {
                let root = config
                    .local_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("recordings"));
                (Arc::new(LocalStorage::new(root)), String::new())
            }
        };
        Ok(Recordings {
            config: config.clone(),
            storage,
            prefix,
            default_key_ready: Default::default(),
            ends: EndIndex::open(&data_dir.join("gateway.db"))?,
        })
    }

    /// Where `session_id`'s recording lives: the bucket and prefix chosen
    /// from the preferences when it started, else the configured ones.
    pub fn location(&self, session_id: &str) -> Result<Location, ApiError> {
        if let Some((bucket, prefix)) = self.ends.location(session_id)? {
            let storage = if bucket.is_empty() {
                self.storage.clone()
            } else {
                self.storage
                    .for_bucket(&bucket)
                    .unwrap_or_else(|| self.storage.clone())
            };
            return Ok(Location {
                storage,
                prefix: format!("{prefix}{session_id}/"),
            });
        }
        Ok(Location {
            storage: self.storage.clone(),
            prefix: format!("{}{session_id}/", self.prefix),
        })
    }

    /// Pins a new recording to the preferences' `s3BucketName` /
    /// `s3KeyPrefix` (S3 storage only), so later preference changes do not
    /// lose it.
    fn choose_location(&self, session_id: &str, prefs: &Value) -> Result<(), ApiError> {
        if self.config.storage != "s3" {
            return Ok(());
        }
        let get = |k: &str| {
            prefs
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let (bucket, prefix) = (get("s3BucketName"), get("s3KeyPrefix"));
        if bucket.is_empty() && prefix.is_empty() {
            return Ok(());
        }
        let prefix = if prefix.is_empty() {
            self.prefix.clone()
        } else {
            normalize_prefix(&prefix)
        };
        self.ends.set_location(session_id, &bucket, &prefix)
    }

    /// DescribeSessions' `OutputUrl.S3OutputUrl` for a session.
    pub fn output_url(&self, session_id: &str) -> Option<String> {
        if !self.config.enabled {
            return None;
        }
        let loc = self.location(session_id).ok()?;
        Some(loc.storage.url(&loc.prefix))
    }

    /// One durable put, retried with backoff for `retry_secs`.
    async fn put_retrying(
        &self,
        storage: &dyn RecordingStorage,
        key: &str,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.config.retry_secs);
        let mut delay = Duration::from_millis(100);
        loop {
            match storage.put(key, data).await {
                Ok(()) => return Ok(()),
                Err(StorageError::Rejected(m)) => return Err(StorageError::Rejected(m)),
                Err(e) => {
                    if tokio::time::Instant::now() + delay > deadline {
                        return Err(e);
                    }
                    tracing::debug!(key, error = %e, "recording put failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Fail-closed admission: a session may start only if storage takes a
    /// probe write now.
    async fn admit_session(&self, fail_closed: bool) -> Result<(), ApiError> {
        if !fail_closed {
            return Ok(());
        }
        let probe = format!("{}.airlock-probe", self.prefix);
        let r = tokio::time::timeout(Duration::from_secs(5), self.storage.put(&probe, b"ok")).await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(&e.to_string())),
            Err(_) => Err(unavailable("timed out")),
        }
    }
}

fn unavailable(why: &str) -> ApiError {
    ApiError::new(
        "RecordingUnavailable",
        format!("Session recording cannot be made durable and recordings fail closed: {why}"),
    )
}

fn normalize_prefix(p: &str) -> String {
    let p = p.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

fn valid_session_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !s.starts_with('.')
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Req {
    action: String,
    session_id: Option<String>,
    seq: Option<u64>,
    data: Option<String>,
    from: Option<u64>,
    target: Option<String>,
    owner: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
}

fn ok(v: Value) -> ApiResult {
    Ok(json_response(http::StatusCode::OK, &v))
}

fn decode_b64(s: Option<&String>, what: &str, max: usize) -> Result<Vec<u8>, ApiError> {
    let s = s.ok_or_else(|| ApiError::validation(format!("{what} is required.")))?;
    if s.len() > max.div_ceil(3) * 4 + 4 {
        return Err(ApiError::validation(format!("{what} is too large.")));
    }
    B64.decode(s)
        .map_err(|_| ApiError::validation(format!("{what} is not valid base64.")))
}

fn storage_error(e: StorageError) -> ApiError {
    tracing::warn!(error = %e, "recording storage");
    ApiError {
        status: 503,
        ..ApiError::new(
            "ServiceUnavailable",
            "Recording storage is unavailable; retry later.",
        )
    }
}

pub fn chunk_key(prefix: &str, seq: u64) -> String {
    format!("{prefix}chunks/{seq:012}.alrc")
}

/// `POST /airlock/v1/recordings` (SigV4, service `ssm` for users and
/// `ssmmessages` for agents); the operation is the body's `Action`.
pub async fn handle(state: &Arc<AppState>, req: &ReadRequest) -> ApiResult {
    let principal = authenticate(state, &req.sigv4(), &["ssm", "ssmmessages"]).await?;
    let r: Req = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::new("SerializationException", e.to_string()))?;
    match r.action.as_str() {
        "PutHeader" | "PutChunk" | "PutEnd" => agent_put(state, req, &principal, &r).await,
        "List" => list(state, req, &principal, &r).await,
        "Get" | "GetChunks" => read(state, req, &principal, &r).await,
        other => Err(ApiError::new(
            "UnknownOperationException",
            format!("Unknown recordings action {other}."),
        )),
    }
}

async fn agent_session(
    state: &AppState,
    principal: &Principal,
    r: &Req,
) -> Result<(String, String), ApiError> {
    let instance = principal.instance_id().ok_or_else(|| {
        ApiError::access_denied("Only the session's target writes its recording.")
    })?;
    let sid = r
        .session_id
        .clone()
        .filter(|s| valid_session_id(s))
        .ok_or_else(|| ApiError::validation("SessionId is missing or invalid."))?;
    let s = state
        .store
        .get_session(&sid)
        .await?
        .ok_or_else(|| ApiError::new("DoesNotExistException", "Session does not exist."))?;
    if s.target != instance {
        return Err(ApiError::access_denied("Session is for another target."));
    }
    Ok((sid, s.target))
}

async fn agent_put(
    state: &AppState,
    _req: &ReadRequest,
    principal: &Principal,
    r: &Req,
) -> ApiResult {
    let rec = &state.recordings;
    if !rec.config.enabled {
        return Err(ApiError::new("RecordingDisabled", "Recording is disabled."));
    }
    let (sid, _) = agent_session(state, principal, r).await?;
    let data = decode_b64(r.data.as_ref(), "Data", MAX_CHUNK)?;
    if r.action == "PutHeader" {
        let prefs = crate::documents::preferences(&state.documents).await?;
        rec.choose_location(&sid, &prefs)?;
    }
    let loc = rec.location(&sid)?;
    let prefix = loc.prefix.clone();
    let key = match r.action.as_str() {
        "PutHeader" => {
            airlock_recordings::RecordingHeader::parse(&data)
                .map_err(|e| ApiError::validation(e.to_string()))?;
            let key = format!("{prefix}header.json");
            // Write once: a header seeds the chain, so it is never replaced.
            if let Some(existing) = loc.storage.get(&key).await.map_err(storage_error)? {
                if existing != data {
                    return Err(ApiError::new(
                        "ConflictException",
                        "The recording header already exists.",
                    ));
                }
                return ok(json!({"FailClosed": fails_closed(state).await?}));
            }
            key
        }
        "PutChunk" => {
            let seq = r
                .seq
                .ok_or_else(|| ApiError::validation("Seq is required."))?;
            let p = airlock_recordings::chunk::parse_prefix(&data)
                .map_err(|e| ApiError::validation(e.to_string()))?;
            if p.seq != seq {
                return Err(ApiError::validation("Seq does not match the chunk."));
            }
            chunk_key(&prefix, seq)
        }
        _ => {
            let _: airlock_recordings::RecordingEnd = serde_json::from_slice(&data)
                .map_err(|e| ApiError::validation(format!("End: {e}")))?;
            if !rec.ends.record(&sid, &data)? {
                return Err(ApiError::new(
                    "ConflictException",
                    "The recording already has a different end record.",
                ));
            }
            format!("{prefix}end.json")
        }
    };
    rec.put_retrying(loc.storage.as_ref(), &key, &data)
        .await
        .map_err(storage_error)?;
    ok(json!({"FailClosed": fails_closed(state).await?}))
}

fn session_arn(state: &AppState, sid: &str) -> String {
    format!(
        "arn:aws:ssm:{}:{}:session/{sid}",
        state.config.aws.region, state.config.aws.account_id
    )
}

async fn list(state: &AppState, req: &ReadRequest, principal: &Principal, r: &Req) -> ApiResult {
    crate::authz::authorize(
        state,
        req,
        principal,
        "ssm:ListSessionRecordings",
        &["*".to_string()],
        airlock_iam::Context::default(),
    )
    .await?;
    let f = SessionFilter {
        target: r.target.clone(),
        owner: r.owner.clone(),
        invoked_after_ms: r.since,
        invoked_before_ms: r.until,
        ..Default::default()
    };
    let rec = &state.recordings;
    let sessions = state.store.list_sessions(f).await?;
    let mut out = Vec::new();
    for s in sessions {
        let loc = rec.location(&s.session_id)?;
        let prefix = loc.prefix.clone();
        let keys = loc.storage.list(&prefix).await.map_err(storage_error)?;
        if !keys.iter().any(|k| k.ends_with("header.json")) {
            continue;
        }
        out.push(json!({
            "SessionId": s.session_id,
            "Target": s.target,
            "Owner": s.owner,
            "Status": s.status,
            "StartDate": s.start_ms as f64 / 1000.0,
            "EndDate": s.end_ms.map(|e| e as f64 / 1000.0),
            "Chunks": keys.iter().filter(|k| k.contains("/chunks/")).count(),
            "Complete": keys.iter().any(|k| k.ends_with("end.json")),
            "OutputUrl": loc.storage.url(&prefix),
        }));
    }
    ok(json!({"Recordings": out}))
}

async fn read(state: &AppState, req: &ReadRequest, principal: &Principal, r: &Req) -> ApiResult {
    let sid = r
        .session_id
        .clone()
        .filter(|s| valid_session_id(s))
        .ok_or_else(|| ApiError::validation("SessionId is missing or invalid."))?;
    crate::authz::authorize(
        state,
        req,
        principal,
        "ssm:GetSessionRecording",
        &[session_arn(state, &sid)],
        airlock_iam::Context::default(),
    )
    .await?;
    let rec = &state.recordings;
    let loc = rec.location(&sid)?;
    let prefix = loc.prefix.clone();
    let keys = loc.storage.list(&prefix).await.map_err(storage_error)?;
    let chunk_seqs: Vec<u64> = keys
        .iter()
        .filter_map(|k| {
            k.strip_prefix(&format!("{prefix}chunks/"))?
                .strip_suffix(".alrc")?
                .parse()
                .ok()
        })
        .collect();
    if r.action == "Get" {
        let header = loc
            .storage
            .get(&format!("{prefix}header.json"))
            .await
            .map_err(storage_error)?
            .ok_or_else(|| {
                ApiError::new("DoesNotExistException", "No recording for this session.")
            })?;
        let end = loc
            .storage
            .get(&format!("{prefix}end.json"))
            .await
            .map_err(storage_error)?;
        let end_record = rec.ends.get(&sid)?;
        return ok(json!({
            "SessionId": sid,
            "Header": B64.encode(header),
            "End": end.map(|e| B64.encode(e)),
            // The gateway's own copy of the final chain hash.
            "EndRecord": end_record.map(|e| B64.encode(e)),
            "Chunks": chunk_seqs,
            "OutputUrl": loc.storage.url(&prefix),
        }));
    }
    let from = r.from.unwrap_or(0);
    let mut total = 0usize;
    let mut chunks = Vec::new();
    for seq in chunk_seqs.into_iter().filter(|s| *s >= from) {
        if total >= MAX_READ_BATCH {
            break;
        }
        if let Some(b) = loc
            .storage
            .get(&chunk_key(&prefix, seq))
            .await
            .map_err(storage_error)?
        {
            total += b.len();
            chunks.push(json!({"Seq": seq, "Data": B64.encode(b)}));
        }
    }
    ok(json!({"Chunks": chunks}))
}
