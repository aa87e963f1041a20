//! Persistence of KMS keys and aliases in the gateway's SQLite database.
//!
//! Key records hold only material sealed under the KMS root key (see
//! [`kms_root_key`]); that root key never enters the database, so a copy of
//! `gateway.db` alone cannot decrypt anything.

use std::path::Path;
use std::sync::{Arc, Mutex};

use airlock_kms::{RootKey, StoredKey};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use crate::error::GatewayError;
use crate::store::StoreError;

/// Environment variable that, when set, holds the KMS root key (64 hex
/// characters). Lets an operator keep the root key out of the data
/// directory altogether (e.g. injected from a secret manager).
pub const ROOT_KEY_ENV: &str = "AIRLOCK_KMS_ROOT_KEY";

/// The KMS root key: from [`ROOT_KEY_ENV`] if set, else derived with HKDF
/// from the gateway's 0600 root key file, under a label of its own so the
/// access-key sealing key and the KMS root key are never the same bytes.
pub fn kms_root_key(file_root: &[u8; 32]) -> Result<RootKey, GatewayError> {
    if let Ok(v) = std::env::var(ROOT_KEY_ENV) {
        let bytes = hex::decode(v.trim()).map_err(|_| {
            GatewayError::Crypto(format!("{ROOT_KEY_ENV} must be 64 hex characters"))
        })?;
        return RootKey::from_slice(&bytes).map_err(|_| {
            GatewayError::Crypto(format!("{ROOT_KEY_ENV} must be 64 hex characters"))
        });
    }
    let salt = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, b"airlock");
    let prk = salt.extract(file_root);
    let okm = prk
        .expand(&[b"airlock kms root key v1"], aws_lc_rs::hkdf::HKDF_SHA256)
        .map_err(|_| GatewayError::Crypto("HKDF failed".into()))?;
    let mut out = [0u8; 32];
    okm.fill(&mut out)
        .map_err(|_| GatewayError::Crypto("HKDF failed".into()))?;
    Ok(RootKey::from_bytes(out))
}

/// What [`KmsStore::update_key`] does with the row after the closure ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Save,
    Delete,
}

/// An alias row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasRow {
    pub name: String,
    pub key_id: Uuid,
    pub created: i64,
    pub updated: i64,
}

/// A key record plus the gateway-side settings the keyring does not model.
#[derive(Clone, Debug)]
pub struct KeyRow {
    pub key: StoredKey,
    pub rotation_period_days: i64,
}

/// SQLite tables `kms_keys` and `kms_aliases`, on their own connection to
/// the gateway database.
#[derive(Clone)]
pub struct KmsStore {
    conn: Arc<Mutex<Connection>>,
}

fn db<E: ToString>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

impl KmsStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS kms_keys (
                 key_id TEXT PRIMARY KEY,
                 record TEXT NOT NULL,
                 rotation_period_days INTEGER NOT NULL DEFAULT 365,
                 created INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS kms_aliases (
                 name TEXT PRIMARY KEY,
                 key_id TEXT NOT NULL,
                 created INTEGER NOT NULL,
                 updated INTEGER NOT NULL
             );",
        )?;
        Ok(KmsStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = conn
                .lock()
                .map_err(|_| StoreError::Db("lock poisoned".into()))?;
            f(&mut g)
        })
        .await
        .map_err(|_| StoreError::Join)?
    }

    pub async fn insert_key(&self, row: KeyRow) -> Result<(), StoreError> {
        self.with(move |c| {
            let rec = serde_json::to_string(&row.key).map_err(db)?;
            c.execute(
                "INSERT INTO kms_keys (key_id, record, rotation_period_days, created) VALUES (?1, ?2, ?3, ?4)",
                params![
                    row.key.key_id().to_string(),
                    rec,
                    row.rotation_period_days,
                    row.key.metadata.creation_date
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn get_key(&self, id: Uuid) -> Result<Option<KeyRow>, StoreError> {
        self.with(move |c| get_key_tx(c, &id)).await
    }

    /// Read-modify-write of one key in a transaction, so two gateways (or two
    /// requests) rotating the same key cannot lose a material version.
    /// `None` when the key does not exist.
    pub async fn update_key<T, F>(&self, id: Uuid, f: F) -> Result<Option<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut KeyRow) -> (T, Change) + Send + 'static,
    {
        self.with(move |c| {
            let tx = c.transaction()?;
            let Some(mut row) = get_key_tx(&tx, &id)? else {
                return Ok(None);
            };
            let (out, change) = f(&mut row);
            if change == Change::Save {
                let rec = serde_json::to_string(&row.key).map_err(db)?;
                tx.execute(
                    "UPDATE kms_keys SET record = ?2, rotation_period_days = ?3 WHERE key_id = ?1",
                    params![id.to_string(), rec, row.rotation_period_days],
                )?;
            } else if change == Change::Delete {
                tx.execute(
                    "DELETE FROM kms_keys WHERE key_id = ?1",
                    params![id.to_string()],
                )?;
                tx.execute(
                    "DELETE FROM kms_aliases WHERE key_id = ?1",
                    params![id.to_string()],
                )?;
            }
            tx.commit()?;
            Ok(Some(out))
        })
        .await
    }

    /// Key ids in creation order.
    pub async fn list_key_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT key_id FROM kms_keys ORDER BY created, key_id")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for r in rows {
                if let Ok(id) = Uuid::try_parse(&r?) {
                    out.push(id);
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn get_alias(&self, name: &str) -> Result<Option<AliasRow>, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT name, key_id, created, updated FROM kms_aliases WHERE name = ?1",
                params![name],
                alias_row,
            )
            .optional()
            .map_err(StoreError::from)
            .map(Option::flatten)
        })
        .await
    }

    /// Inserts a new alias; false if the name is taken.
    pub async fn insert_alias(&self, a: AliasRow) -> Result<bool, StoreError> {
        self.with(move |c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO kms_aliases (name, key_id, created, updated) VALUES (?1, ?2, ?3, ?4)",
                params![a.name, a.key_id.to_string(), a.created, a.updated],
            )?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn delete_alias(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            Ok(c.execute("DELETE FROM kms_aliases WHERE name = ?1", params![name])? == 1)
        })
        .await
    }

    pub async fn list_aliases(&self) -> Result<Vec<AliasRow>, StoreError> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT name, key_id, created, updated FROM kms_aliases ORDER BY name")?;
            let rows = st.query_map([], alias_row)?;
            let mut out = Vec::new();
            for r in rows {
                if let Some(a) = r? {
                    out.push(a);
                }
            }
            Ok(out)
        })
        .await
    }
}

fn alias_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<AliasRow>> {
    let key: String = r.get(1)?;
    Ok(Uuid::try_parse(&key).ok().map(|key_id| AliasRow {
        name: r.get(0).unwrap_or_default(),
        key_id,
        created: r.get(2).unwrap_or_default(),
        updated: r.get(3).unwrap_or_default(),
    }))
}

fn get_key_tx(c: &Connection, id: &Uuid) -> Result<Option<KeyRow>, StoreError> {
    let row = c
        .query_row(
            "SELECT record, rotation_period_days FROM kms_keys WHERE key_id = ?1",
            params![id.to_string()],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()?;
    match row {
        None => Ok(None),
        Some((rec, period)) => {
            let key: StoredKey = serde_json::from_str(&rec).map_err(db)?;
            Ok(Some(KeyRow {
                key,
                rotation_period_days: period,
            }))
        }
    }
}
