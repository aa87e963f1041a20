//! IAM entities behind the [`IamStore`] trait: users, groups and memberships,
//! roles, managed and inline policies, attachments, permission boundaries and
//! user tags. Access keys themselves (and their status) live in
//! [`crate::store::Store`], keyed by the principal `user/<name>`.
//!
//! The SQL is portable on purpose (plain `TEXT`/`INTEGER` columns, composite
//! primary keys, no SQLite-only upserts other than `INSERT ... ON CONFLICT`,
//! which PostgreSQL shares), so a PostgreSQL backend can reuse the schema.
//! Policy documents are stored as the text the operator sent, already
//! validated by `airlock_iam::Policy::parse_named`, and parsed again on use.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use crate::store::{query_all, row_tag, StoreError, Tag};

/// Which kind of identity an inline policy or attachment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    User,
    Group,
    Role,
}

impl OwnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::User => "user",
            OwnerKind::Group => "group",
            OwnerKind::Role => "role",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// `AIDA…`, the value of `aws:userid`.
    pub user_id: String,
    pub created_ms: i64,
    /// ARN of the managed policy used as permissions boundary.
    pub boundary: Option<String>,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub group_id: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    /// `AROA…`.
    pub role_id: String,
    pub created_ms: i64,
    pub assume_role_policy: String,
    pub description: String,
    pub boundary: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedPolicy {
    pub arn: String,
    pub name: String,
    /// `ANPA…`.
    pub policy_id: String,
    pub document: String,
    pub description: String,
    pub created_ms: i64,
}

/// Why a delete was refused (AWS `DeleteConflict`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    Conflict(String),
}

/// Durable IAM state. Every method is atomic on its own. Creation methods
/// return `false` when the entity already exists; mutation methods return
/// `false` when a named entity does not exist.
#[async_trait]
pub trait IamStore: Send + Sync + 'static {
    async fn create_user(&self, u: User) -> Result<bool, StoreError>;
    async fn get_user(&self, name: &str) -> Result<Option<User>, StoreError>;
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Refused while the user still has inline or attached policies; the
    /// caller checks access keys (they live in the other store).
    async fn delete_user(&self, name: &str) -> Result<DeleteOutcome, StoreError>;
    async fn tag_user(&self, name: &str, tags: Vec<Tag>) -> Result<bool, StoreError>;
    async fn untag_user(&self, name: &str, keys: Vec<String>) -> Result<bool, StoreError>;
    async fn set_boundary(
        &self,
        kind: OwnerKind,
        name: &str,
        policy_arn: Option<&str>,
    ) -> Result<bool, StoreError>;

    async fn create_group(&self, g: Group) -> Result<bool, StoreError>;
    async fn get_group(&self, name: &str) -> Result<Option<Group>, StoreError>;
    async fn list_groups(&self) -> Result<Vec<Group>, StoreError>;
    async fn delete_group(&self, name: &str) -> Result<DeleteOutcome, StoreError>;
    /// False if the user or the group does not exist.
    async fn add_user_to_group(&self, group: &str, user: &str) -> Result<bool, StoreError>;
    async fn remove_user_from_group(&self, group: &str, user: &str) -> Result<bool, StoreError>;
    async fn groups_for_user(&self, user: &str) -> Result<Vec<String>, StoreError>;
    async fn group_members(&self, group: &str) -> Result<Vec<String>, StoreError>;

    async fn create_role(&self, r: Role) -> Result<bool, StoreError>;
    async fn get_role(&self, name: &str) -> Result<Option<Role>, StoreError>;
    async fn list_roles(&self) -> Result<Vec<Role>, StoreError>;
    async fn delete_role(&self, name: &str) -> Result<DeleteOutcome, StoreError>;
    /// Replaces a role's trust policy; false if the role does not exist.
    async fn update_assume_role_policy(&self, name: &str, doc: &str) -> Result<bool, StoreError>;

    async fn create_policy(&self, p: ManagedPolicy) -> Result<bool, StoreError>;
    async fn get_policy(&self, arn: &str) -> Result<Option<ManagedPolicy>, StoreError>;
    async fn list_policies(&self) -> Result<Vec<ManagedPolicy>, StoreError>;
    async fn delete_policy(&self, arn: &str) -> Result<DeleteOutcome, StoreError>;

    /// Creates or replaces; false if the owner does not exist.
    async fn put_inline_policy(
        &self,
        kind: OwnerKind,
        owner: &str,
        name: &str,
        document: &str,
    ) -> Result<bool, StoreError>;
    async fn get_inline_policy(
        &self,
        kind: OwnerKind,
        owner: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError>;
    async fn delete_inline_policy(
        &self,
        kind: OwnerKind,
        owner: &str,
        name: &str,
    ) -> Result<bool, StoreError>;
    /// `(policy name, document)`, by name.
    async fn list_inline_policies(
        &self,
        kind: OwnerKind,
        owner: &str,
    ) -> Result<Vec<(String, String)>, StoreError>;

    /// False if the owner or the policy does not exist; attaching twice is a no-op.
    async fn attach_policy(
        &self,
        kind: OwnerKind,
        owner: &str,
        policy_arn: &str,
    ) -> Result<bool, StoreError>;
    /// False if the policy was not attached.
    async fn detach_policy(
        &self,
        kind: OwnerKind,
        owner: &str,
        policy_arn: &str,
    ) -> Result<bool, StoreError>;
    async fn attached_policies(
        &self,
        kind: OwnerKind,
        owner: &str,
    ) -> Result<Vec<ManagedPolicy>, StoreError>;
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS iam_users (
  name TEXT PRIMARY KEY,
  user_id TEXT NOT NULL UNIQUE,
  created_ms INTEGER NOT NULL,
  boundary_arn TEXT
);
CREATE TABLE IF NOT EXISTS iam_user_tags (
  user_name TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (user_name, key)
);
CREATE TABLE IF NOT EXISTS iam_groups (
  name TEXT PRIMARY KEY,
  group_id TEXT NOT NULL UNIQUE,
  created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS iam_group_members (
  group_name TEXT NOT NULL,
  user_name TEXT NOT NULL,
  PRIMARY KEY (group_name, user_name)
);
CREATE INDEX IF NOT EXISTS iam_group_members_user ON iam_group_members(user_name);
CREATE TABLE IF NOT EXISTS iam_roles (
  name TEXT PRIMARY KEY,
  role_id TEXT NOT NULL UNIQUE,
  created_ms INTEGER NOT NULL,
  assume_role_policy TEXT NOT NULL,
  description TEXT NOT NULL,
  boundary_arn TEXT
);
CREATE TABLE IF NOT EXISTS iam_policies (
  arn TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  policy_id TEXT NOT NULL,
  document TEXT NOT NULL,
  description TEXT NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS iam_inline_policies (
  owner_kind TEXT NOT NULL,
  owner_name TEXT NOT NULL,
  policy_name TEXT NOT NULL,
  document TEXT NOT NULL,
  PRIMARY KEY (owner_kind, owner_name, policy_name)
);
CREATE TABLE IF NOT EXISTS iam_attachments (
  owner_kind TEXT NOT NULL,
  owner_name TEXT NOT NULL,
  policy_arn TEXT NOT NULL,
  PRIMARY KEY (owner_kind, owner_name, policy_arn)
);
CREATE INDEX IF NOT EXISTS iam_attachments_policy ON iam_attachments(policy_arn);
";

/// SQLite backend: its own connection to the gateway database (WAL mode).
pub struct SqliteIamStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteIamStore {
    pub fn open(db_path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(db_path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
        )?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteIamStore {
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
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Db("connection mutex poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|_| StoreError::Join)?
    }
}

fn owner_table(kind: OwnerKind) -> &'static str {
    match kind {
        OwnerKind::User => "iam_users",
        OwnerKind::Group => "iam_groups",
        OwnerKind::Role => "iam_roles",
    }
}

fn exists(c: &Connection, table: &str, key_col: &str, key: &str) -> Result<bool, StoreError> {
    Ok(c.query_row(
        &format!("SELECT 1 FROM {table} WHERE {key_col} = ?1"),
        params![key],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

fn owner_exists(c: &Connection, kind: OwnerKind, name: &str) -> Result<bool, StoreError> {
    exists(c, owner_table(kind), "name", name)
}

fn count(c: &Connection, sql: &str, a: &str, b: &str) -> Result<i64, StoreError> {
    Ok(c.query_row(sql, params![a, b], |r| r.get(0))?)
}

/// AWS refuses to delete an identity that still has policies.
fn policies_conflict(
    c: &Connection,
    kind: OwnerKind,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let k = kind.as_str();
    if count(
        c,
        "SELECT COUNT(*) FROM iam_inline_policies WHERE owner_kind = ?1 AND owner_name = ?2",
        k,
        name,
    )? > 0
    {
        return Ok(Some(
            "Cannot delete entity, must delete policies first.".into(),
        ));
    }
    if count(
        c,
        "SELECT COUNT(*) FROM iam_attachments WHERE owner_kind = ?1 AND owner_name = ?2",
        k,
        name,
    )? > 0
    {
        return Ok(Some(
            "Cannot delete entity, must detach all policies first.".into(),
        ));
    }
    Ok(None)
}

fn user_tags(c: &Connection, name: &str) -> Result<Vec<Tag>, StoreError> {
    let v = query_all(
        c,
        "SELECT key, value FROM iam_user_tags WHERE user_name = ?1 ORDER BY key",
        params![name],
        row_tag,
    )?;
    Ok(v)
}

fn row_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        name: r.get(0)?,
        user_id: r.get(1)?,
        created_ms: r.get(2)?,
        boundary: r.get(3)?,
        tags: Vec::new(),
    })
}

fn row_role(r: &rusqlite::Row<'_>) -> rusqlite::Result<Role> {
    Ok(Role {
        name: r.get(0)?,
        role_id: r.get(1)?,
        created_ms: r.get(2)?,
        assume_role_policy: r.get(3)?,
        description: r.get(4)?,
        boundary: r.get(5)?,
    })
}
const ROLE_COLS: &str = "name, role_id, created_ms, assume_role_policy, description, boundary_arn";

fn row_policy(r: &rusqlite::Row<'_>) -> rusqlite::Result<ManagedPolicy> {
    Ok(ManagedPolicy {
        arn: r.get(0)?,
        name: r.get(1)?,
        policy_id: r.get(2)?,
        document: r.get(3)?,
        description: r.get(4)?,
        created_ms: r.get(5)?,
    })
}
const POLICY_COLS: &str = "arn, name, policy_id, document, description, created_ms";

fn row_group(r: &rusqlite::Row<'_>) -> rusqlite::Result<Group> {
    Ok(Group {
        name: r.get(0)?,
        group_id: r.get(1)?,
        created_ms: r.get(2)?,
    })
}

fn strings(c: &Connection, sql: &str, arg: &str) -> Result<Vec<String>, StoreError> {
    let v = query_all(c, sql, params![arg], |r| r.get::<_, String>(0))?;
    Ok(v)
}

#[async_trait]
impl IamStore for SqliteIamStore {
    async fn create_user(&self, u: User) -> Result<bool, StoreError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "INSERT INTO iam_users (name, user_id, created_ms, boundary_arn) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![u.name, u.user_id, u.created_ms, u.boundary],
            )?;
            if n == 0 {
                return Ok(false);
            }
            for t in &u.tags {
                tx.execute(
                    "INSERT INTO iam_user_tags (user_name, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (user_name, key) DO UPDATE SET value = excluded.value",
                    params![u.name, t.key, t.value],
                )?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn get_user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            let u = c
                .query_row(
                    "SELECT name, user_id, created_ms, boundary_arn FROM iam_users WHERE name = ?1",
                    params![name],
                    row_user,
                )
                .optional()?;
            match u {
                Some(mut u) => {
                    u.tags = user_tags(c, &u.name)?;
                    Ok(Some(u))
                }
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.with(|c| {
            let mut v = query_all(
                c,
                "SELECT name, user_id, created_ms, boundary_arn FROM iam_users ORDER BY name",
                [],
                row_user,
            )?;
            for u in &mut v {
                u.tags = user_tags(c, &u.name)?;
            }
            Ok(v)
        })
        .await
    }

    async fn delete_user(&self, name: &str) -> Result<DeleteOutcome, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            if !owner_exists(&tx, OwnerKind::User, &name)? {
                return Ok(DeleteOutcome::NotFound);
            }
            if let Some(m) = policies_conflict(&tx, OwnerKind::User, &name)? {
                return Ok(DeleteOutcome::Conflict(m));
            }
            tx.execute(
                "DELETE FROM iam_group_members WHERE user_name = ?1",
                params![name],
            )?;
            tx.execute(
                "DELETE FROM iam_user_tags WHERE user_name = ?1",
                params![name],
            )?;
            tx.execute("DELETE FROM iam_users WHERE name = ?1", params![name])?;
            tx.commit()?;
            Ok(DeleteOutcome::Deleted)
        })
        .await
    }

    async fn tag_user(&self, name: &str, tags: Vec<Tag>) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            if !owner_exists(&tx, OwnerKind::User, &name)? {
                return Ok(false);
            }
            for t in &tags {
                tx.execute(
                    "INSERT INTO iam_user_tags (user_name, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (user_name, key) DO UPDATE SET value = excluded.value",
                    params![name, t.key, t.value],
                )?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn untag_user(&self, name: &str, keys: Vec<String>) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            if !owner_exists(&tx, OwnerKind::User, &name)? {
                return Ok(false);
            }
            for k in &keys {
                tx.execute(
                    "DELETE FROM iam_user_tags WHERE user_name = ?1 AND key = ?2",
                    params![name, k],
                )?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn set_boundary(
        &self,
        kind: OwnerKind,
        name: &str,
        policy_arn: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (name, arn) = (name.to_string(), policy_arn.map(str::to_string));
        self.with(move |c| {
            if kind == OwnerKind::Group {
                return Ok(false);
            }
            let n = c.execute(
                &format!(
                    "UPDATE {} SET boundary_arn = ?2 WHERE name = ?1",
                    owner_table(kind)
                ),
                params![name, arn],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn create_group(&self, g: Group) -> Result<bool, StoreError> {
        self.with(move |c| {
            Ok(c.execute(
                "INSERT INTO iam_groups (name, group_id, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![g.name, g.group_id, g.created_ms],
            )? > 0)
        })
        .await
    }

    async fn get_group(&self, name: &str) -> Result<Option<Group>, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT name, group_id, created_ms FROM iam_groups WHERE name = ?1",
                params![name],
                row_group,
            )
            .optional()?)
        })
        .await
    }

    async fn list_groups(&self) -> Result<Vec<Group>, StoreError> {
        self.with(|c| {
            let v = query_all(
                c,
                "SELECT name, group_id, created_ms FROM iam_groups ORDER BY name",
                [],
                row_group,
            )?;
            Ok(v)
        })
        .await
    }

    async fn delete_group(&self, name: &str) -> Result<DeleteOutcome, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            if !owner_exists(&tx, OwnerKind::Group, &name)? {
                return Ok(DeleteOutcome::NotFound);
            }
            if let Some(m) = policies_conflict(&tx, OwnerKind::Group, &name)? {
                return Ok(DeleteOutcome::Conflict(m));
            }
            tx.execute(
                "DELETE FROM iam_group_members WHERE group_name = ?1",
                params![name],
            )?;
            tx.execute("DELETE FROM iam_groups WHERE name = ?1", params![name])?;
            tx.commit()?;
            Ok(DeleteOutcome::Deleted)
        })
        .await
    }

    async fn add_user_to_group(&self, group: &str, user: &str) -> Result<bool, StoreError> {
        let (group, user) = (group.to_string(), user.to_string());
        self.with(move |c| {
            let tx = c.transaction()?;
            if !owner_exists(&tx, OwnerKind::Group, &group)?
                || !owner_exists(&tx, OwnerKind::User, &user)?
            {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO iam_group_members (group_name, user_name) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![group, user],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn remove_user_from_group(&self, group: &str, user: &str) -> Result<bool, StoreError> {
        let (group, user) = (group.to_string(), user.to_string());
        self.with(move |c| {
            Ok(c.execute(
                "DELETE FROM iam_group_members WHERE group_name = ?1 AND user_name = ?2",
                params![group, user],
            )? > 0)
        })
        .await
    }

    async fn groups_for_user(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let user = user.to_string();
        self.with(move |c| {
            strings(
                c,
                "SELECT group_name FROM iam_group_members WHERE user_name = ?1 ORDER BY group_name",
                &user,
            )
        })
        .await
    }

    async fn group_members(&self, group: &str) -> Result<Vec<String>, StoreError> {
        let group = group.to_string();
        self.with(move |c| {
            strings(
                c,
                "SELECT user_name FROM iam_group_members WHERE group_name = ?1 ORDER BY user_name",
                &group,
            )
        })
        .await
    }

    async fn create_role(&self, r: Role) -> Result<bool, StoreError> {
        self.with(move |c| {
            Ok(c.execute(
                &format!("INSERT INTO iam_roles ({ROLE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING"),
                params![r.name, r.role_id, r.created_ms, r.assume_role_policy, r.description, r.boundary],
            )? > 0)
        })
        .await
    }

    async fn get_role(&self, name: &str) -> Result<Option<Role>, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {ROLE_COLS} FROM iam_roles WHERE name = ?1"),
                params![name],
                row_role,
            )
            .optional()?)
        })
        .await
    }

    async fn list_roles(&self) -> Result<Vec<Role>, StoreError> {
        self.with(|c| {
            let v = query_all(
                c,
                &format!("SELECT {ROLE_COLS} FROM iam_roles ORDER BY name"),
                [],
                row_role,
            )?;
            Ok(v)
        })
        .await
    }

    async fn delete_role(&self, name: &str) -> Result<DeleteOutcome, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            if !owner_exists(&tx, OwnerKind::Role, &name)? {
                return Ok(DeleteOutcome::NotFound);
            }
            if let Some(m) = policies_conflict(&tx, OwnerKind::Role, &name)? {
                return Ok(DeleteOutcome::Conflict(m));
            }
            tx.execute("DELETE FROM iam_roles WHERE name = ?1", params![name])?;
            tx.commit()?;
            Ok(DeleteOutcome::Deleted)
        })
        .await
    }

    async fn update_assume_role_policy(&self, name: &str, doc: &str) -> Result<bool, StoreError> {
        let (name, doc) = (name.to_string(), doc.to_string());
        self.with(move |c| {
            Ok(c.execute(
                "UPDATE iam_roles SET assume_role_policy = ?2 WHERE name = ?1",
                params![name, doc],
            )? > 0)
        })
        .await
    }

    async fn create_policy(&self, p: ManagedPolicy) -> Result<bool, StoreError> {
        self.with(move |c| {
            Ok(c.execute(
                &format!("INSERT INTO iam_policies ({POLICY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING"),
                params![p.arn, p.name, p.policy_id, p.document, p.description, p.created_ms],
            )? > 0)
        })
        .await
    }

    async fn get_policy(&self, arn: &str) -> Result<Option<ManagedPolicy>, StoreError> {
        let arn = arn.to_string();
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {POLICY_COLS} FROM iam_policies WHERE arn = ?1"),
                params![arn],
                row_policy,
            )
            .optional()?)
        })
        .await
    }

    async fn list_policies(&self) -> Result<Vec<ManagedPolicy>, StoreError> {
        self.with(|c| {
            let v = query_all(
                c,
                &format!("SELECT {POLICY_COLS} FROM iam_policies ORDER BY arn"),
                [],
                row_policy,
            )?;
            Ok(v)
        })
        .await
    }

    async fn delete_policy(&self, arn: &str) -> Result<DeleteOutcome, StoreError> {
        let arn = arn.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            if !exists(&tx, "iam_policies", "arn", &arn)? {
                return Ok(DeleteOutcome::NotFound);
            }
            let attached: i64 = tx.query_row(
                "SELECT COUNT(*) FROM iam_attachments WHERE policy_arn = ?1",
                params![arn],
                |r| r.get(0),
            )?;
            if attached > 0 {
                return Ok(DeleteOutcome::Conflict(
                    "Cannot delete a policy attached to entities.".into(),
                ));
            }
            tx.execute("DELETE FROM iam_policies WHERE arn = ?1", params![arn])?;
            tx.commit()?;
            Ok(DeleteOutcome::Deleted)
        })
        .await
    }

    async fn put_inline_policy(
        &self,
        kind: OwnerKind,
        owner: &str,
        name: &str,
        document: &str,
    ) -> Result<bool, StoreError> {
        let (owner, name, document) = (owner.to_string(), name.to_string(), document.to_string());
        self.with(move |c| {
            let tx = c.transaction()?;
            if !owner_exists(&tx, kind, &owner)? {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO iam_inline_policies (owner_kind, owner_name, policy_name, document) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (owner_kind, owner_name, policy_name) DO UPDATE SET document = excluded.document",
                params![kind.as_str(), owner, name, document],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn get_inline_policy(
        &self,
        kind: OwnerKind,
        owner: &str,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        let (owner, name) = (owner.to_string(), name.to_string());
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT document FROM iam_inline_policies WHERE owner_kind = ?1 AND owner_name = ?2 AND policy_name = ?3",
                params![kind.as_str(), owner, name],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn delete_inline_policy(
        &self,
        kind: OwnerKind,
        owner: &str,
        name: &str,
    ) -> Result<bool, StoreError> {
        let (owner, name) = (owner.to_string(), name.to_string());
        self.with(move |c| {
            Ok(c.execute(
                "DELETE FROM iam_inline_policies WHERE owner_kind = ?1 AND owner_name = ?2 AND policy_name = ?3",
                params![kind.as_str(), owner, name],
            )? > 0)
        })
        .await
    }

    async fn list_inline_policies(
        &self,
        kind: OwnerKind,
        owner: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let owner = owner.to_string();
        self.with(move |c| {
            let v = query_all(c, "SELECT policy_name, document FROM iam_inline_policies WHERE owner_kind = ?1 AND owner_name = ?2 ORDER BY policy_name", params![kind.as_str(), owner], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(v)
        })
        .await
    }

    async fn attach_policy(
        &self,
        kind: OwnerKind,
        owner: &str,
        policy_arn: &str,
    ) -> Result<bool, StoreError> {
        let (owner, arn) = (owner.to_string(), policy_arn.to_string());
        self.with(move |c| {
            let tx = c.transaction()?;
            if !owner_exists(&tx, kind, &owner)? || !exists(&tx, "iam_policies", "arn", &arn)? {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO iam_attachments (owner_kind, owner_name, policy_arn) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![kind.as_str(), owner, arn],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn detach_policy(
        &self,
        kind: OwnerKind,
        owner: &str,
        policy_arn: &str,
    ) -> Result<bool, StoreError> {
        let (owner, arn) = (owner.to_string(), policy_arn.to_string());
        self.with(move |c| {
            Ok(c.execute(
                "DELETE FROM iam_attachments WHERE owner_kind = ?1 AND owner_name = ?2 AND policy_arn = ?3",
                params![kind.as_str(), owner, arn],
            )? > 0)
        })
        .await
    }

    async fn attached_policies(
        &self,
        kind: OwnerKind,
        owner: &str,
    ) -> Result<Vec<ManagedPolicy>, StoreError> {
        let owner = owner.to_string();
        self.with(move |c| {
            let v = query_all(
                c,
                "SELECT p.arn, p.name, p.policy_id, p.document, p.description, p.created_ms \
                 FROM iam_attachments a JOIN iam_policies p ON p.arn = a.policy_arn \
                 WHERE a.owner_kind = ?1 AND a.owner_name = ?2 ORDER BY p.arn",
                params![kind.as_str(), owner],
                row_policy,
            )?;
            Ok(v)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            user_id: format!("AIDA{name}"),
            created_ms: 1,
            boundary: None,
            tags: vec![Tag {
                key: "team".into(),
                value: "a".into(),
            }],
        }
    }

    #[tokio::test]
    async fn users_groups_policies_round_trip() {
        let dir = std::env::temp_dir().join(format!("iam-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = SqliteIamStore::open(&dir.join("db")).unwrap();
        assert!(s.create_user(user("alice")).await.unwrap());
        assert!(!s.create_user(user("alice")).await.unwrap());
        assert_eq!(s.get_user("alice").await.unwrap().unwrap().tags.len(), 1);
        assert!(s
            .put_inline_policy(OwnerKind::User, "alice", "p", "{}")
            .await
            .unwrap());
        assert!(!s
            .put_inline_policy(OwnerKind::User, "nobody", "p", "{}")
            .await
            .unwrap());
        assert!(matches!(
            s.delete_user("alice").await.unwrap(),
            DeleteOutcome::Conflict(_)
        ));
        let pol = ManagedPolicy {
            arn: "arn:aws:iam::123456789012:policy/x".into(),
            name: "x".into(),
            policy_id: "ANPA1".into(),
            document: "{}".into(),
            description: String::new(),
            created_ms: 1,
        };
        assert!(s.create_policy(pol.clone()).await.unwrap());
        assert!(s
            .create_group(Group {
                name: "devs".into(),
                group_id: "AGPA1".into(),
                created_ms: 1
            })
            .await
            .unwrap());
        assert!(s.add_user_to_group("devs", "alice").await.unwrap());
        assert!(s
            .attach_policy(OwnerKind::Group, "devs", &pol.arn)
            .await
            .unwrap());
        assert_eq!(s.groups_for_user("alice").await.unwrap(), vec!["devs"]);
        assert_eq!(
            s.attached_policies(OwnerKind::Group, "devs").await.unwrap(),
            vec![pol.clone()]
        );
        assert!(matches!(
            s.delete_policy(&pol.arn).await.unwrap(),
            DeleteOutcome::Conflict(_)
        ));
        assert!(s
            .delete_inline_policy(OwnerKind::User, "alice", "p")
            .await
            .unwrap());
        assert_eq!(
            s.delete_user("alice").await.unwrap(),
            DeleteOutcome::Deleted
        );
        assert!(s.group_members("devs").await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
