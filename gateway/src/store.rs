//! Durable gateway state behind the [`Store`] trait, with a SQLite backend.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use rusqlite::{params, Connection, OptionalExtension};

use crate::util::random_bytes;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(String),
    #[error("sealed secret could not be opened (wrong root key?)")]
    Unseal,
    #[error("background task failed")]
    Join,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// An access key. `secret` is plaintext in memory only; `Debug` hides it.
#[derive(Clone)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret: String,
    /// `user/<name>` or `instance/<mi-id>`.
    pub principal: String,
    pub created_ms: i64,
    /// `Active` or `Inactive` (an inactive key fails authentication at once).
    pub status: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("access_key_id", &self.access_key_id)
            .field("principal", &self.principal)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Activation {
    pub activation_id: String,
    /// SHA-256 hex of the activation code.
    pub code_hash: String,
    pub iam_role: String,
    pub description: String,
    pub default_instance_name: String,
    pub registration_limit: i64,
    pub registrations_count: i64,
    pub expiration_ms: i64,
    pub created_ms: i64,
    pub tags_json: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub instance_id: String,
    pub activation_id: String,
    pub iam_role: String,
    pub computer_name: String,
    pub ip_address: String,
    pub platform_type: String,
    pub platform_name: String,
    pub platform_version: String,
    pub agent_version: String,
    pub registration_ms: i64,
    pub last_ping_ms: i64,
    /// Last status written by a gateway (`Online` / `ConnectionLost`).
    pub ping_status: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub session_id: String,
    pub target: String,
    pub owner: String,
    pub document_name: String,
    pub status: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub reason: String,
    pub details: String,
    pub client_token_hash: String,
    pub agent_token_hash: String,
}

/// Outcome of [`Store::register_instance`].
#[derive(Debug, Clone, PartialEq)]
pub enum RegisterOutcome {
    Registered,
    UnknownActivation,
    /// Wrong code, expired, or registration limit reached.
    InvalidActivation,
}

/// The limits [`Store::create_session_within_limit`] enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLimits {
    /// Most sessions of the target in a counting state.
    pub per_target: u32,
    /// Most sessions of the owner (principal ARN) in a counting state.
    pub per_principal: Option<u32>,
}

/// Outcome of [`Store::create_session_within_limit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateSessionOutcome {
    Created,
    /// The target already has `limit` counting sessions, listed in `active`.
    TargetLimit {
        limit: u32,
        active: Vec<String>,
    },
    /// The owner already has `limit` counting sessions, listed in `active`.
    PrincipalLimit {
        limit: u32,
        active: Vec<String>,
    },
}

/// One recorded state change of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    pub session_id: String,
    pub ts_ms: i64,
    pub status: String,
    pub reason: String,
}

/// A `Key`/`Value` tag of a managed instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// Session states that hold a slot of the concurrent-session limit.
pub const COUNTING_STATES: [&str; 3] = ["Connecting", "Connected", "Disconnected"];

/// Filter for [`Store::list_sessions`]; all set fields must match.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub statuses: Vec<String>,
    pub target: Option<String>,
    pub owner: Option<String>,
    pub status: Option<String>,
    pub session_id: Option<String>,
    pub invoked_after_ms: Option<i64>,
    pub invoked_before_ms: Option<i64>,
}

/// The gateway's durable state.
///
/// Atomicity contract (every backend must keep it):
/// - Each method is atomic on its own: it either fully applies or not at all.
/// - [`Store::register_instance`] checks the activation (code, expiry, limit),
///   increments its registration count, inserts the instance and inserts the
///   instance's access key in ONE transaction, so a registration limit can
///   never be exceeded by concurrent registrations.
/// - [`Store::delete_instance`] removes the instance and its access keys together.
/// - [`Store::update_session_status`] never moves a session out of a final
///   state (`Terminated`, `Failed`); it returns whether it changed anything.
///   Every change (and every insert) also appends a [`SessionEvent`] with
///   the new status, a timestamp and the reason (`details`) in the SAME
///   transaction, so the history never disagrees with the current state.
/// - [`Store::create_session_within_limit`] counts the target's (and, if
///   set, the owner's) sessions in [`COUNTING_STATES`] and inserts the new
///   session in ONE serialized transaction, so N racing callers against a
///   limit of L create exactly L sessions, also when several gateways share
///   the database. SQLite: `BEGIN IMMEDIATE` (takes the write lock before
///   the count). A PostgreSQL backend must do the same, either by locking
///   the target's instance row first (`SELECT ... FROM instances WHERE
///   instance_id = $1 FOR UPDATE`, and the principal's key row for the
///   per-principal limit) or by running the count+insert in a `SERIALIZABLE`
///   transaction retried on serialization failure. A plain `READ COMMITTED`
///   count-then-insert is NOT acceptable.
/// - [`Store::register_instance`] also copies the activation's tags onto the
///   new instance in the same transaction.
///
/// Secrets pass through this API in plaintext and are sealed at rest by the backend.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn put_access_key(&self, key: AccessKey) -> Result<(), StoreError>;
    async fn get_access_key(&self, access_key_id: &str) -> Result<Option<AccessKey>, StoreError>;
    async fn access_key_for_principal(
        &self,
        principal: &str,
    ) -> Result<Option<AccessKey>, StoreError>;
    /// Every key of `principal`, oldest first.
    async fn list_access_keys(&self, principal: &str) -> Result<Vec<AccessKey>, StoreError>;
    /// False if `principal` owns no key `access_key_id`.
    async fn set_access_key_status(
        &self,
        principal: &str,
        access_key_id: &str,
        status: &str,
    ) -> Result<bool, StoreError>;
    /// False if `principal` owns no key `access_key_id`.
    async fn delete_access_key(
        &self,
        principal: &str,
        access_key_id: &str,
    ) -> Result<bool, StoreError>;

    async fn put_activation(&self, a: Activation) -> Result<(), StoreError>;
    async fn get_activation(&self, id: &str) -> Result<Option<Activation>, StoreError>;
    async fn list_activations(&self) -> Result<Vec<Activation>, StoreError>;
    async fn delete_activation(&self, id: &str) -> Result<bool, StoreError>;

    async fn register_instance(
        &self,
        code_hash: &str,
        now_ms: i64,
        instance: Instance,
        key: AccessKey,
    ) -> Result<RegisterOutcome, StoreError>;
    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, StoreError>;
    async fn list_instances(&self) -> Result<Vec<Instance>, StoreError>;
    /// Replaces the mutable agent-reported fields and ping info.
    async fn update_instance(&self, instance: Instance) -> Result<(), StoreError>;
    async fn set_instance_ping(
        &self,
        id: &str,
        ping_ms: i64,
        status: &str,
    ) -> Result<(), StoreError>;
    async fn delete_instance(&self, id: &str) -> Result<bool, StoreError>;

    async fn insert_session(&self, s: Session) -> Result<(), StoreError>;
    /// Atomically checks `limits` and inserts `s` (see the contract above).
    async fn create_session_within_limit(
        &self,
        s: Session,
        limits: SessionLimits,
    ) -> Result<CreateSessionOutcome, StoreError>;
    /// The recorded state changes of a session, oldest first.
    async fn session_events(&self, id: &str) -> Result<Vec<SessionEvent>, StoreError>;
    /// Ids of sessions in a non-final state whose latest state change is
    /// older than `before_ms`.
    async fn stale_sessions(&self, before_ms: i64) -> Result<Vec<String>, StoreError>;

    async fn instance_tags(&self, instance_id: &str) -> Result<Vec<Tag>, StoreError>;
    /// Adds or overwrites tags; false if the instance does not exist.
    async fn add_instance_tags(
        &self,
        instance_id: &str,
        tags: Vec<Tag>,
    ) -> Result<bool, StoreError>;
    /// Removes tags by key; false if the instance does not exist.
    async fn remove_instance_tags(
        &self,
        instance_id: &str,
        keys: Vec<String>,
    ) -> Result<bool, StoreError>;
    async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError>;
    async fn update_session_status(
        &self,
        id: &str,
        status: &str,
        end_ms: Option<i64>,
        details: Option<&str>,
    ) -> Result<bool, StoreError>;
    async fn set_session_tokens(
        &self,
        id: &str,
        client_token_hash: Option<&str>,
        agent_token_hash: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Newest first.
    async fn list_sessions(&self, filter: SessionFilter) -> Result<Vec<Session>, StoreError>;
}

/// SQLite backend. One connection behind a mutex, used from `spawn_blocking`.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    key: Arc<LessSafeKey>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS access_keys (
  access_key_id TEXT PRIMARY KEY,
  sealed_secret BLOB NOT NULL,
  principal TEXT NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS access_keys_principal ON access_keys(principal);
CREATE TABLE IF NOT EXISTS activations (
  activation_id TEXT PRIMARY KEY,
  code_hash TEXT NOT NULL,
  iam_role TEXT NOT NULL,
  description TEXT NOT NULL,
  default_instance_name TEXT NOT NULL,
  registration_limit INTEGER NOT NULL,
  registrations_count INTEGER NOT NULL,
  expiration_ms INTEGER NOT NULL,
  created_ms INTEGER NOT NULL,
  tags_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
  instance_id TEXT PRIMARY KEY,
  activation_id TEXT NOT NULL,
  iam_role TEXT NOT NULL,
  computer_name TEXT NOT NULL,
  ip_address TEXT NOT NULL,
  platform_type TEXT NOT NULL,
  platform_name TEXT NOT NULL,
  platform_version TEXT NOT NULL,
  agent_version TEXT NOT NULL,
  registration_ms INTEGER NOT NULL,
  last_ping_ms INTEGER NOT NULL,
  ping_status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
  session_id TEXT PRIMARY KEY,
  target TEXT NOT NULL,
  owner TEXT NOT NULL,
  document_name TEXT NOT NULL,
  status TEXT NOT NULL,
  start_ms INTEGER NOT NULL,
  end_ms INTEGER,
  reason TEXT NOT NULL,
  details TEXT NOT NULL,
  client_token_hash TEXT NOT NULL,
  agent_token_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_start ON sessions(start_ms);
CREATE INDEX IF NOT EXISTS sessions_target_status ON sessions(target, status);
CREATE TABLE IF NOT EXISTS session_events (
  session_id TEXT NOT NULL,
  ts_ms INTEGER NOT NULL,
  status TEXT NOT NULL,
  reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS session_events_id ON session_events(session_id, ts_ms);
CREATE TABLE IF NOT EXISTS instance_tags (
  instance_id TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (instance_id, key)
);
";

impl SqliteStore {
    /// Opens (creating) `db_path`; `root_key` seals access-key secrets.
    pub fn open(db_path: &Path, root_key: &[u8; 32]) -> Result<Self, StoreError> {
        let conn = Connection::open(db_path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
        )?;
        conn.execute_batch(SCHEMA)?;
        // Databases created before key status existed get the column here.
        let has_status = conn
            .prepare("SELECT status FROM access_keys LIMIT 0")
            .is_ok();
        if !has_status {
            conn.execute_batch(
                "ALTER TABLE access_keys ADD COLUMN status TEXT NOT NULL DEFAULT 'Active'",
            )?;
        }
        let unbound = UnboundKey::new(&AES_256_GCM, root_key).map_err(|_| StoreError::Unseal)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            key: Arc::new(LessSafeKey::new(unbound)),
        })
    }

    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &LessSafeKey) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        let key = self.key.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Db("connection mutex poisoned".into()))?;
            f(&mut guard, &key)
        })
        .await
        .map_err(|_| StoreError::Join)?
    }
}

/// nonce || ciphertext+tag; the access key id is bound as associated data.
fn seal(key: &LessSafeKey, aad: &str, secret: &str) -> Result<Vec<u8>, StoreError> {
    let nonce_bytes = random_bytes::<NONCE_LEN>();
    let mut buf = secret.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce_bytes),
        Aad::from(aad.as_bytes()),
        &mut buf,
    )
    .map_err(|_| StoreError::Unseal)?;
    let mut out = nonce_bytes.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

fn unseal(key: &LessSafeKey, aad: &str, sealed: &[u8]) -> Result<String, StoreError> {
    let (n, ct) = sealed
        .split_at_checked(NONCE_LEN)
        .ok_or(StoreError::Unseal)?;
    let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| StoreError::Unseal)?;
    let mut buf = ct.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
        .map_err(|_| StoreError::Unseal)?;
    String::from_utf8(plain.to_vec()).map_err(|_| StoreError::Unseal)
}

fn row_key(key: &LessSafeKey, r: &rusqlite::Row<'_>) -> Result<AccessKey, StoreError> {
    let id: String = r.get(0)?;
    let sealed: Vec<u8> = r.get(1)?;
    Ok(AccessKey {
        secret: unseal(key, &id, &sealed)?,
        access_key_id: id,
        principal: r.get(2)?,
        created_ms: r.get(3)?,
        status: r.get(4)?,
    })
}

/// Every row of `sql` mapped by `row`; the one place rows become a `Vec`.
pub(crate) fn query_all<T, P, F>(
    c: &Connection,
    sql: &str,
    params: P,
    row: F,
) -> rusqlite::Result<Vec<T>>
where
    P: rusqlite::Params,
    F: FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
{
    let mut st = c.prepare_cached(sql)?;
    let rows = st.query_map(params, row)?;
    rows.collect()
}

/// A `(key, value)` tag row.
pub(crate) fn row_tag(r: &rusqlite::Row<'_>) -> rusqlite::Result<Tag> {
    Ok(Tag {
        key: r.get(0)?,
        value: r.get(1)?,
    })
}

fn row_activation(r: &rusqlite::Row<'_>) -> rusqlite::Result<Activation> {
    Ok(Activation {
        activation_id: r.get(0)?,
        code_hash: r.get(1)?,
        iam_role: r.get(2)?,
        description: r.get(3)?,
        default_instance_name: r.get(4)?,
        registration_limit: r.get(5)?,
        registrations_count: r.get(6)?,
        expiration_ms: r.get(7)?,
        created_ms: r.get(8)?,
        tags_json: r.get(9)?,
    })
}
const ACT_COLS: &str = "activation_id, code_hash, iam_role, description, default_instance_name, registration_limit, registrations_count, expiration_ms, created_ms, tags_json";

fn row_instance(r: &rusqlite::Row<'_>) -> rusqlite::Result<Instance> {
    Ok(Instance {
        instance_id: r.get(0)?,
        activation_id: r.get(1)?,
        iam_role: r.get(2)?,
        computer_name: r.get(3)?,
        ip_address: r.get(4)?,
        platform_type: r.get(5)?,
        platform_name: r.get(6)?,
        platform_version: r.get(7)?,
        agent_version: r.get(8)?,
        registration_ms: r.get(9)?,
        last_ping_ms: r.get(10)?,
        ping_status: r.get(11)?,
    })
}
const INST_COLS: &str = "instance_id, activation_id, iam_role, computer_name, ip_address, platform_type, platform_name, platform_version, agent_version, registration_ms, last_ping_ms, ping_status";

fn row_session(r: &rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        session_id: r.get(0)?,
        target: r.get(1)?,
        owner: r.get(2)?,
        document_name: r.get(3)?,
        status: r.get(4)?,
        start_ms: r.get(5)?,
        end_ms: r.get(6)?,
        reason: r.get(7)?,
        details: r.get(8)?,
        client_token_hash: r.get(9)?,
        agent_token_hash: r.get(10)?,
    })
}
const SESS_COLS: &str = "session_id, target, owner, document_name, status, start_ms, end_ms, reason, details, client_token_hash, agent_token_hash";

fn insert_key(conn: &Connection, key: &LessSafeKey, k: &AccessKey) -> Result<(), StoreError> {
    let sealed = seal(key, &k.access_key_id, &k.secret)?;
    conn.execute(
        "INSERT INTO access_keys (access_key_id, sealed_secret, principal, created_ms, status) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![k.access_key_id, sealed, k.principal, k.created_ms, k.status],
    )?;
    Ok(())
}

fn insert_session_row(conn: &Connection, s: &Session) -> Result<(), StoreError> {
    conn.execute(
        &format!("INSERT INTO sessions ({SESS_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)"),
        params![
            s.session_id,
            s.target,
            s.owner,
            s.document_name,
            s.status,
            s.start_ms,
            s.end_ms,
            s.reason,
            s.details,
            s.client_token_hash,
            s.agent_token_hash
        ],
    )?;
    insert_event(conn, &s.session_id, s.start_ms, &s.status, &s.details)
}

fn insert_event(
    conn: &Connection,
    id: &str,
    ts_ms: i64,
    status: &str,
    reason: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO session_events (session_id, ts_ms, status, reason) VALUES (?1, ?2, ?3, ?4)",
        params![id, ts_ms, status, reason],
    )?;
    Ok(())
}

/// Ids of sessions in a counting state matching `column = value`, oldest first.
fn counting_sessions(
    conn: &Connection,
    column: &str,
    value: &str,
) -> Result<Vec<String>, StoreError> {
    let v = query_all(conn, &format!(
        "SELECT session_id FROM sessions WHERE {column} = ?1 AND status IN ('Connecting','Connected','Disconnected') ORDER BY start_ms, session_id"
    ), params![value], |r| r.get::<_, String>(0))?;
    Ok(v)
}

fn now_ms_store() -> i64 {
    crate::util::now_ms()
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_access_key(&self, k: AccessKey) -> Result<(), StoreError> {
        self.with(move |c, key| insert_key(c, key, &k)).await
    }

    async fn get_access_key(&self, id: &str) -> Result<Option<AccessKey>, StoreError> {
        let id = id.to_string();
        self.with(move |c, key| {
            let mut st = c.prepare_cached("SELECT access_key_id, sealed_secret, principal, created_ms, status FROM access_keys WHERE access_key_id = ?1")?;
            let mut rows = st.query(params![id])?;
            match rows.next()? {
                Some(r) => Ok(Some(row_key(key, r)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn access_key_for_principal(
        &self,
        principal: &str,
    ) -> Result<Option<AccessKey>, StoreError> {
        let p = principal.to_string();
        self.with(move |c, key| {
            let mut st = c.prepare_cached("SELECT access_key_id, sealed_secret, principal, created_ms, status FROM access_keys WHERE principal = ?1 ORDER BY created_ms LIMIT 1")?;
            let mut rows = st.query(params![p])?;
            match rows.next()? {
                Some(r) => Ok(Some(row_key(key, r)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_access_keys(&self, principal: &str) -> Result<Vec<AccessKey>, StoreError> {
        let p = principal.to_string();
        self.with(move |c, key| {
            let mut st = c.prepare_cached("SELECT access_key_id, sealed_secret, principal, created_ms, status FROM access_keys WHERE principal = ?1 ORDER BY created_ms, access_key_id")?;
            let mut rows = st.query(params![p])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(row_key(key, r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn set_access_key_status(
        &self,
        principal: &str,
        access_key_id: &str,
        status: &str,
    ) -> Result<bool, StoreError> {
        let (p, id, status) = (
            principal.to_string(),
            access_key_id.to_string(),
            status.to_string(),
        );
        self.with(move |c, _| {
            Ok(c.execute(
                "UPDATE access_keys SET status = ?3 WHERE principal = ?1 AND access_key_id = ?2",
                params![p, id, status],
            )? > 0)
        })
        .await
    }

    async fn delete_access_key(
        &self,
        principal: &str,
        access_key_id: &str,
    ) -> Result<bool, StoreError> {
        let (p, id) = (principal.to_string(), access_key_id.to_string());
        self.with(move |c, _| {
            Ok(c.execute(
                "DELETE FROM access_keys WHERE principal = ?1 AND access_key_id = ?2",
                params![p, id],
            )? > 0)
        })
        .await
    }

    async fn put_activation(&self, a: Activation) -> Result<(), StoreError> {
        self.with(move |c, _| {
            c.execute(
                &format!(
                    "INSERT INTO activations ({ACT_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"
                ),
                params![
                    a.activation_id,
                    a.code_hash,
                    a.iam_role,
                    a.description,
                    a.default_instance_name,
                    a.registration_limit,
                    a.registrations_count,
                    a.expiration_ms,
                    a.created_ms,
                    a.tags_json
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_activation(&self, id: &str) -> Result<Option<Activation>, StoreError> {
        let id = id.to_string();
        self.with(move |c, _| {
            Ok(c.query_row(
                &format!("SELECT {ACT_COLS} FROM activations WHERE activation_id = ?1"),
                params![id],
                row_activation,
            )
            .optional()?)
        })
        .await
    }

    async fn list_activations(&self) -> Result<Vec<Activation>, StoreError> {
        self.with(|c, _| {
            let v = query_all(
                c,
                &format!("SELECT {ACT_COLS} FROM activations ORDER BY created_ms"),
                [],
                row_activation,
            )?;
            Ok(v)
        })
        .await
    }

    async fn delete_activation(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.with(move |c, _| {
            Ok(c.execute(
                "DELETE FROM activations WHERE activation_id = ?1",
                params![id],
            )? > 0)
        })
        .await
    }

    async fn register_instance(
        &self,
        code_hash: &str,
        now_ms: i64,
        inst: Instance,
        k: AccessKey,
    ) -> Result<RegisterOutcome, StoreError> {
        let code_hash = code_hash.to_string();
        self.with(move |c, key| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let act = tx
                .query_row(&format!("SELECT {ACT_COLS} FROM activations WHERE activation_id = ?1"), params![inst.activation_id], row_activation)
                .optional()?;
            let Some(act) = act else { return Ok(RegisterOutcome::UnknownActivation) };
            // Both sides are SHA-256 digests, so a plain comparison leaks nothing useful.
            let code_ok = act.code_hash == code_hash;
            if !code_ok || act.expiration_ms <= now_ms || act.registrations_count >= act.registration_limit {
                return Ok(RegisterOutcome::InvalidActivation);
            }
            tx.execute("UPDATE activations SET registrations_count = registrations_count + 1 WHERE activation_id = ?1", params![act.activation_id])?;
            tx.execute(
                &format!("INSERT INTO instances ({INST_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)"),
                params![inst.instance_id, inst.activation_id, act.iam_role, inst.computer_name, inst.ip_address, inst.platform_type, inst.platform_name, inst.platform_version, inst.agent_version, inst.registration_ms, inst.last_ping_ms, inst.ping_status],
            )?;
            insert_key(&tx, key, &k)?;
            let tags: Vec<Tag> = serde_json::from_str(&act.tags_json).unwrap_or_default();
            for t in &tags {
                tx.execute(
                    "INSERT OR REPLACE INTO instance_tags (instance_id, key, value) VALUES (?1, ?2, ?3)",
                    params![inst.instance_id, t.key, t.value],
                )?;
            }
            tx.commit()?;
            Ok(RegisterOutcome::Registered)
        })
        .await
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>, StoreError> {
        let id = id.to_string();
        self.with(move |c, _| {
            Ok(c.query_row(
                &format!("SELECT {INST_COLS} FROM instances WHERE instance_id = ?1"),
                params![id],
                row_instance,
            )
            .optional()?)
        })
        .await
    }

    async fn list_instances(&self) -> Result<Vec<Instance>, StoreError> {
        self.with(|c, _| {
            let v = query_all(
                c,
                &format!("SELECT {INST_COLS} FROM instances ORDER BY registration_ms, instance_id"),
                [],
                row_instance,
            )?;
            Ok(v)
        })
        .await
    }

    async fn update_instance(&self, i: Instance) -> Result<(), StoreError> {
        self.with(move |c, _| {
            c.execute(
                "UPDATE instances SET computer_name=?2, ip_address=?3, platform_type=?4, platform_name=?5, platform_version=?6, agent_version=?7, last_ping_ms=?8, ping_status=?9 WHERE instance_id=?1",
                params![i.instance_id, i.computer_name, i.ip_address, i.platform_type, i.platform_name, i.platform_version, i.agent_version, i.last_ping_ms, i.ping_status],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_instance_ping(
        &self,
        id: &str,
        ping_ms: i64,
        status: &str,
    ) -> Result<(), StoreError> {
        let (id, status) = (id.to_string(), status.to_string());
        self.with(move |c, _| {
            c.execute(
                "UPDATE instances SET last_ping_ms=?2, ping_status=?3 WHERE instance_id=?1",
                params![id, ping_ms, status],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_instance(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.with(move |c, _| {
            let tx = c.transaction()?;
            let n = tx.execute("DELETE FROM instances WHERE instance_id = ?1", params![id])?;
            tx.execute(
                "DELETE FROM instance_tags WHERE instance_id = ?1",
                params![id],
            )?;
            tx.execute(
                "DELETE FROM access_keys WHERE principal = ?1",
                params![format!("instance/{id}")],
            )?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn insert_session(&self, s: Session) -> Result<(), StoreError> {
        self.with(move |c, _| {
            let tx = c.transaction()?;
            insert_session_row(&tx, &s)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn create_session_within_limit(
        &self,
        s: Session,
        limits: SessionLimits,
    ) -> Result<CreateSessionOutcome, StoreError> {
        self.with(move |c, _| {
            // IMMEDIATE: the write lock is taken before the count, so no other
            // connection (or process) can insert between count and insert.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let active = counting_sessions(&tx, "target", &s.target)?;
            if active.len() >= limits.per_target as usize {
                return Ok(CreateSessionOutcome::TargetLimit {
                    limit: limits.per_target,
                    active,
                });
            }
            if let Some(limit) = limits.per_principal {
                let active = counting_sessions(&tx, "owner", &s.owner)?;
                if active.len() >= limit as usize {
                    return Ok(CreateSessionOutcome::PrincipalLimit { limit, active });
                }
            }
            insert_session_row(&tx, &s)?;
            tx.commit()?;
            Ok(CreateSessionOutcome::Created)
        })
        .await
    }

    async fn session_events(&self, id: &str) -> Result<Vec<SessionEvent>, StoreError> {
        let id = id.to_string();
        self.with(move |c, _| {
            let v = query_all(
                c,
                "SELECT session_id, ts_ms, status, reason FROM session_events WHERE session_id = ?1 ORDER BY ts_ms, rowid",
                params![id],
                |r| {
                    Ok(SessionEvent {
                        session_id: r.get(0)?,
                        ts_ms: r.get(1)?,
                        status: r.get(2)?,
                        reason: r.get(3)?,
                    })
                },
            )?;
            Ok(v)
        })
        .await
    }

    async fn stale_sessions(&self, before_ms: i64) -> Result<Vec<String>, StoreError> {
        self.with(move |c, _| {
            let v = query_all(c, "SELECT s.session_id FROM sessions s WHERE s.status NOT IN ('Terminated','Failed') \
                 AND COALESCE((SELECT MAX(e.ts_ms) FROM session_events e WHERE e.session_id = s.session_id), s.start_ms) < ?1", params![before_ms], |r| r.get::<_, String>(0))?;
            Ok(v)
        })
        .await
    }

    async fn instance_tags(&self, instance_id: &str) -> Result<Vec<Tag>, StoreError> {
        let id = instance_id.to_string();
        self.with(move |c, _| {
            let v = query_all(
                c,
                "SELECT key, value FROM instance_tags WHERE instance_id = ?1 ORDER BY key",
                params![id],
                row_tag,
            )?;
            Ok(v)
        })
        .await
    }

    async fn add_instance_tags(
        &self,
        instance_id: &str,
        tags: Vec<Tag>,
    ) -> Result<bool, StoreError> {
        let id = instance_id.to_string();
        self.with(move |c, _| {
            let tx = c.transaction()?;
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM instances WHERE instance_id = ?1", params![id], |r| r.get(0))
                .optional()?;
            if exists.is_none() {
                return Ok(false);
            }
            for t in &tags {
                tx.execute(
                    "INSERT OR REPLACE INTO instance_tags (instance_id, key, value) VALUES (?1, ?2, ?3)",
                    params![id, t.key, t.value],
                )?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn remove_instance_tags(
        &self,
        instance_id: &str,
        keys: Vec<String>,
    ) -> Result<bool, StoreError> {
        let id = instance_id.to_string();
        self.with(move |c, _| {
            let tx = c.transaction()?;
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM instances WHERE instance_id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_none() {
                return Ok(false);
            }
            for k in &keys {
                tx.execute(
                    "DELETE FROM instance_tags WHERE instance_id = ?1 AND key = ?2",
                    params![id, k],
                )?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let id = id.to_string();
        self.with(move |c, _| {
            Ok(c.query_row(
                &format!("SELECT {SESS_COLS} FROM sessions WHERE session_id = ?1"),
                params![id],
                row_session,
            )
            .optional()?)
        })
        .await
    }

    async fn update_session_status(
        &self,
        id: &str,
        status: &str,
        end_ms: Option<i64>,
        details: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (id, status, details) = (
            id.to_string(),
            status.to_string(),
            details.map(str::to_string),
        );
        self.with(move |c, _| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE sessions SET status=?2, end_ms=COALESCE(?3, end_ms), details=COALESCE(?4, details) WHERE session_id=?1 AND status NOT IN ('Terminated','Failed')",
                params![id, status, end_ms, details],
            )?;
            if n > 0 {
                let ts = end_ms.unwrap_or_else(now_ms_store);
                insert_event(&tx, &id, ts, &status, details.as_deref().unwrap_or(""))?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn set_session_tokens(
        &self,
        id: &str,
        client: Option<&str>,
        agent: Option<&str>,
    ) -> Result<(), StoreError> {
        let (id, client, agent) = (
            id.to_string(),
            client.map(str::to_string),
            agent.map(str::to_string),
        );
        self.with(move |c, _| {
            c.execute(
                "UPDATE sessions SET client_token_hash=COALESCE(?2, client_token_hash), agent_token_hash=COALESCE(?3, agent_token_hash) WHERE session_id=?1",
                params![id, client, agent],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_sessions(&self, f: SessionFilter) -> Result<Vec<Session>, StoreError> {
        self.with(move |c, _| {
            let all = query_all(
                c,
                &format!("SELECT {SESS_COLS} FROM sessions ORDER BY start_ms DESC, session_id"),
                [],
                row_session,
            )?;
            Ok(all
                .into_iter()
                .filter(|s| f.statuses.is_empty() || f.statuses.contains(&s.status))
                .filter(|s| f.target.as_ref().is_none_or(|t| &s.target == t))
                .filter(|s| f.owner.as_ref().is_none_or(|t| &s.owner == t))
                .filter(|s| f.status.as_ref().is_none_or(|t| &s.status == t))
                .filter(|s| f.session_id.as_ref().is_none_or(|t| &s.session_id == t))
                .filter(|s| f.invoked_after_ms.is_none_or(|t| s.start_ms >= t))
                .filter(|s| f.invoked_before_ms.is_none_or(|t| s.start_ms <= t))
                .collect())
        })
        .await
    }
}
