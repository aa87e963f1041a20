//! Built-in Session documents (spec §5.1) and StartSession parameter
//! validation against them.

use std::collections::BTreeMap;

use airlock_proto::messages::{SessionDocument, StartSessionTask, TaskEnvelope};
use airlock_proto::{Frame, MessageType, PayloadType};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

pub const SHELL: &str = "SSM-SessionManagerRunShell";
pub const PORT_FORWARDING: &str = "AWS-StartPortForwardingSession";
pub const PORT_FORWARDING_REMOTE: &str = "AWS-StartPortForwardingSessionToRemoteHost";
pub const SSH: &str = "AWS-StartSSHSession";
pub const INTERACTIVE_COMMAND: &str = "AWS-StartInteractiveCommand";
pub const NON_INTERACTIVE_COMMAND: &str = "AWS-StartNonInteractiveCommand";

/// The command documents' properties, per platform as in AWS's.
const COMMAND_PROPERTIES: &[(&str, &str)] = &[
    ("linux", "{{ command }}"),
    ("macos", "{{ command }}"),
    ("windows", "{{ command }}"),
];

/// One parameter: name and default (None = required).
struct Param {
    name: &'static str,
    default: Option<&'static str>,
}

struct Builtin {
    name: &'static str,
    description: &'static str,
    session_type: &'static str,
    params: &'static [Param],
    /// Property name -> template (may contain `{{ param }}`).
    properties: &'static [(&'static str, &'static str)],
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        name: SHELL,
        description: "Interactive shell session",
        session_type: "Standard_Stream",
        params: &[],
        properties: &[],
    },
    Builtin {
        name: PORT_FORWARDING,
        description: "Document to start port forwarding session over Session Manager",
        session_type: "Port",
        params: &[
            Param {
                name: "portNumber",
                default: Some("80"),
            },
            Param {
                name: "localPortNumber",
                default: Some("0"),
            },
        ],
        properties: &[
            ("portNumber", "{{ portNumber }}"),
            ("type", "LocalPortForwarding"),
            ("localPortNumber", "{{ localPortNumber }}"),
        ],
    },
    Builtin {
        name: PORT_FORWARDING_REMOTE,
        description:
            "Document to start port forwarding session over Session Manager to a remote host",
        session_type: "Port",
        params: &[
            Param {
                name: "host",
                default: None,
            },
            Param {
                name: "portNumber",
                default: Some("80"),
            },
            Param {
                name: "localPortNumber",
                default: Some("0"),
            },
        ],
        properties: &[
            ("portNumber", "{{ portNumber }}"),
            ("type", "LocalPortForwarding"),
            ("localPortNumber", "{{ localPortNumber }}"),
            ("host", "{{ host }}"),
        ],
    },
    Builtin {
        name: SSH,
        description: "Document to hold regional settings for Session Manager",
        session_type: "Port",
        params: &[Param {
            name: "portNumber",
            default: Some("22"),
        }],
        properties: &[("portNumber", "{{ portNumber }}")],
    },
    Builtin {
        name: INTERACTIVE_COMMAND,
        description: "Document to run single interactive command on an instance",
        session_type: "InteractiveCommands",
        params: &[Param {
            name: "command",
            default: None,
        }],
        properties: COMMAND_PROPERTIES,
    },
    Builtin {
        name: NON_INTERACTIVE_COMMAND,
        description: "Document to run single non-interactive command on an instance",
        session_type: "NonInteractiveCommands",
        params: &[Param {
            name: "command",
            default: None,
        }],
        properties: COMMAND_PROPERTIES,
    },
];

/// A document resolved against the caller's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub name: String,
    pub document: SessionDocument,
    /// Parameters as scalar strings (defaults filled in).
    pub parameters: BTreeMap<String, String>,
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new("InvalidParameters", msg)
}

fn substitute(template: &str, params: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let key = after[..end].trim();
                match params.get(key) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&rest[start..start + 2 + end + 2]),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn scalar(name: &str, v: Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s),
        Value::Array(a) => match a.as_slice() {
            [Value::String(s)] => Ok(s.clone()),
            [] => Err(invalid(format!("Parameter {name} has no value."))),
            _ => Err(invalid(format!(
                "Parameter {name} must be a single string value."
            ))),
        },
        _ => Err(invalid(format!(
            "Parameter {name} must be a list of strings."
        ))),
    }
}

fn check_port(name: &str, v: &str, allow_zero: bool) -> Result<(), ApiError> {
    match v.parse::<u16>() {
        Ok(0) if !allow_zero => Err(invalid(format!(
            "Parameter {name} must be a port number between 1 and 65535, got {v:?}."
        ))),
        Ok(_) => Ok(()),
        Err(_) => Err(invalid(format!(
            "Parameter {name} must be a port number, got {v:?}."
        ))),
    }
}

/// The built-in document `name` as a Session document.
pub fn builtin(name: &str) -> Option<SessionDocument> {
    let doc = BUILTINS.iter().find(|d| d.name == name)?;
    let mut props = Map::new();
    for (k, t) in doc.properties {
        let value = if doc.session_type.ends_with("Commands") {
            // {"linux": {"commands": "{{ command }}", "runAsElevated": false}, ...}
            json!({"commands": t, "runAsElevated": false})
        } else {
            Value::String((*t).to_string())
        };
        props.insert((*k).to_string(), value);
    }
    let mut param_defs = Map::new();
    for p in doc.params {
        let mut def = Map::new();
        def.insert("type".into(), json!("String"));
        if let Some(d) = p.default {
            def.insert("default".into(), json!(d));
        }
        param_defs.insert(p.name.to_string(), Value::Object(def));
    }
    Some(SessionDocument {
        schema_version: "1.0".into(),
        description: doc.description.into(),
        session_type: doc.session_type.into(),
        inputs: json!({}),
        parameters: Value::Object(param_defs),
        properties: Value::Object(props),
    })
}

/// Looks up the built-in `name` (default: the shell document) and validates
/// `params`.
pub fn resolve(
    name: Option<&str>,
    params: Option<Map<String, Value>>,
) -> Result<Resolved, ApiError> {
    let name = name.unwrap_or(SHELL);
    let doc = builtin(name).ok_or_else(|| not_a_session_document(name))?;
    resolve_with(name, doc, params)
}

fn not_a_session_document(name: &str) -> ApiError {
    ApiError::new(
        "InvalidDocument",
        format!("Document {name} does not exist or is not a Session document."),
    )
}

fn substitute_value(v: &mut Value, params: &BTreeMap<String, String>) {
    match v {
        Value::String(s) => *s = substitute(s, params),
        Value::Array(a) => a.iter_mut().for_each(|x| substitute_value(x, params)),
        Value::Object(o) => o.values_mut().for_each(|x| substitute_value(x, params)),
        _ => {}
    }
}

/// Validates `params` against `doc`'s parameter definitions (defaults filled
/// in) and substitutes them into its properties.
pub fn resolve_with(
    name: &str,
    mut doc: SessionDocument,
    params: Option<Map<String, Value>>,
) -> Result<Resolved, ApiError> {
    let defs = doc.parameters.as_object().cloned().unwrap_or_default();
    let mut given = BTreeMap::new();
    for (k, v) in params.unwrap_or_default() {
        if !defs.contains_key(&k) {
            let known: Vec<&str> = defs.keys().map(String::as_str).collect();
            return Err(invalid(format!(
                "Parameter {k} is not defined by document {name} (allowed: {}).",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        let s = scalar(&k, v)?;
        given.insert(k, s);
    }
    let mut resolved = BTreeMap::new();
    for (pname, def) in &defs {
        let default = def.get("default").and_then(|d| match d {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        });
        let v = match (given.remove(pname), default) {
            (Some(v), _) => v,
            (None, Some(d)) => d,
            (None, None) => {
                return Err(invalid(format!(
                    "Parameter {pname} is required by document {name}."
                )))
            }
        };
        match pname.as_str() {
            "portNumber" => check_port(pname, &v, false)?,
            "localPortNumber" => check_port(pname, &v, true)?,
            "command" if v.trim().is_empty() || v.contains('\0') => {
                return Err(invalid(format!(
                    "Parameter command must be a non-empty command line, got {v:?}."
                )));
            }
            "host"
                if v.is_empty()
                    || v.len() > 255
                    || v.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                return Err(invalid(format!(
                    "Parameter host is not a valid host name: {v:?}."
                )));
            }
            _ => {}
        }
        resolved.insert(pname.clone(), v);
    }
    substitute_value(&mut doc.properties, &resolved);
    if doc.properties.is_null() {
        doc.properties = json!({});
    }
    if doc.inputs.is_null() {
        doc.inputs = json!({});
    }
    Ok(Resolved {
        name: name.to_string(),
        document: doc,
        parameters: resolved,
    })
}

/// The `interactive_shell` control frame that starts `doc` on the agent.
pub fn start_frame(session_id: &str, owner: &str, doc: &Resolved) -> Option<Bytes> {
    let task = StartSessionTask {
        document_name: doc.name.clone(),
        session_id: session_id.to_string(),
        run_as_user: String::new(),
        session_owner: owner.to_string(),
        parameters: doc.parameters.clone(),
        document_content: doc.document.clone(),
    };
    let env = TaskEnvelope {
        content: serde_json::to_string(&task).ok()?,
        task_id: session_id.to_string(),
        topic: "aws.ssm.startSession".into(),
        schema_version: 1,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Frame::new(
        MessageType::InteractiveShell,
        0,
        0,
        uuid::Uuid::new_v4(),
        PayloadType::Undefined,
        Bytes::from(serde_json::to_vec(&env).ok()?),
        now,
    )
    .encode()
    .ok()
}

/// Names AWS reserves for its own documents; CreateDocument refuses them.
fn reserved(name: &str) -> bool {
    ["AWS-", "AWS", "Amazon", "amazon"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = (3..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "1 validation error detected: Value '{name}' at 'name' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9_\\-.]{{3,128}}$"
        )))
    }
}

/// The session-preference inputs Airlock understands, with the shapes AWS
/// accepts; anything else in `inputs` is refused so a typo is not silently
/// ignored. `requireEncryption` is Airlock's own: sessions whose client does
/// not complete the KMS handshake are refused (port sessions included).
fn validate_inputs(inputs: &Value) -> Result<(), ApiError> {
    let Some(obj) = inputs.as_object() else {
        if inputs.is_null() {
            return Ok(());
        }
        return Err(bad_content("inputs must be an object."));
    };
    let string = |k: &str, v: &Value| -> Result<(), ApiError> {
        if v.is_string() {
            Ok(())
        } else {
            Err(bad_content(&format!("inputs.{k} must be a string.")))
        }
    };
    let boolish = |k: &str, v: &Value| -> Result<(), ApiError> {
        match v {
            Value::Bool(_) => Ok(()),
            Value::String(s) if s == "true" || s == "false" => Ok(()),
            _ => Err(bad_content(&format!("inputs.{k} must be true or false."))),
        }
    };
    let minutes = |k: &str, v: &Value, max: u32| -> Result<(), ApiError> {
        let n = match v {
            Value::String(s) if s.is_empty() => return Ok(()),
            Value::String(s) => s.parse::<u32>().ok(),
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            _ => None,
        };
        match n {
            Some(n) if (1..=max).contains(&n) => Ok(()),
            _ => Err(bad_content(&format!(
                "inputs.{k} must be a number of minutes between 1 and {max}."
            ))),
        }
    };
    for (k, v) in obj {
        match k.as_str() {
            "kmsKeyId"
            | "runAsDefaultUser"
            | "s3BucketName"
            | "s3KeyPrefix"
            | "cloudWatchLogGroupName" => string(k, v)?,
            "runAsEnabled"
            | "s3EncryptionEnabled"
            | "cloudWatchEncryptionEnabled"
            | "cloudWatchStreamingEnabled"
            | "requireEncryption"
            // Airlock recordings (docs/RECORDINGS.md).
            | "recordInput"
            | "recordingFailClosed" => boolish(k, v)?,
            "idleSessionTimeout" => minutes(k, v, 60)?,
            "maxSessionDuration" => minutes(k, v, 1440)?,
            "shellProfile" => {
                let ok = v
                    .as_object()
                    .is_some_and(|o| o.values().all(Value::is_string));
                if !ok {
                    return Err(bad_content(
                        "inputs.shellProfile must map platforms (linux, windows) to strings.",
                    ));
                }
            }
            other => {
                return Err(bad_content(&format!(
                    "inputs.{other} is not a Session Manager preference."
                )))
            }
        }
    }
    if input_bool(inputs, "requireEncryption")
        && inputs
            .get("kmsKeyId")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        return Err(bad_content(
            "inputs.requireEncryption needs inputs.kmsKeyId: encryption uses that KMS key.",
        ));
    }
    Ok(())
}

/// A boolean preference given as `true` or `"true"`.
pub fn input_bool(inputs: &Value, key: &str) -> bool {
    match inputs.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

fn bad_content(msg: &str) -> ApiError {
    ApiError::new("InvalidDocumentContent", msg)
}

/// Parses and validates a Session document body (JSON only).
pub fn parse_content(content: &str, format: Option<&str>) -> Result<SessionDocument, ApiError> {
    match format.unwrap_or("JSON") {
        "JSON" => {}
        "YAML" | "TEXT" => {
            return Err(ApiError::new(
                "InvalidDocumentContent",
                "Only JSON document content is supported.",
            ))
        }
        other => {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{other}' at 'documentFormat' failed to satisfy constraint: Member must satisfy enum value set: [YAML, JSON, TEXT]"
            )))
        }
    }
    if content.is_empty() || content.len() > 64 * 1024 {
        return Err(bad_content("Content must be between 1 and 65536 bytes."));
    }
    let doc: SessionDocument = serde_json::from_str(content)
        .map_err(|e| bad_content(&format!("Document content is not a Session document: {e}")))?;
    if doc.schema_version != "1.0" {
        return Err(ApiError::new(
            "InvalidDocumentSchemaVersion",
            format!(
                "Session documents use schemaVersion 1.0, not {}.",
                doc.schema_version
            ),
        ));
    }
    if !matches!(
        doc.session_type.as_str(),
        "Standard_Stream" | "InteractiveCommands" | "NonInteractiveCommands" | "Port"
    ) {
        return Err(bad_content(&format!(
            "sessionType {} is not valid.",
            doc.session_type
        )));
    }
    validate_inputs(&doc.inputs)?;
    if !(doc.parameters.is_null() || doc.parameters.is_object()) {
        return Err(bad_content("parameters must be an object."));
    }
    Ok(doc)
}

/// One stored version of a custom document.
#[derive(Clone, Debug)]
pub struct DocVersion {
    pub name: String,
    pub version: i64,
    pub content: String,
    pub created_ms: i64,
    pub version_name: Option<String>,
    pub default_version: i64,
    pub latest_version: i64,
}

/// Custom Session documents (SSM document API), in the gateway database on
/// a connection of their own.
#[derive(Clone)]
pub struct DocStore {
    conn: std::sync::Arc<std::sync::Mutex<rusqlite::Connection>>,
    /// The preferences' inputs as last read, for the session reaper that
    /// asks four times a second; writes here clear it, and the TTL bounds
    /// how stale another gateway's change can look.
    prefs_cache: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, Value)>>>,
}

const PREFS_TTL: std::time::Duration = std::time::Duration::from_secs(2);

type StoreResult<T> = Result<T, crate::store::StoreError>;

impl DocStore {
    pub fn open(path: &std::path::Path) -> StoreResult<Self> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS ssm_documents (
                 name TEXT PRIMARY KEY,
                 default_version INTEGER NOT NULL,
                 latest_version INTEGER NOT NULL,
                 created_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS ssm_document_versions (
                 name TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 content TEXT NOT NULL,
                 version_name TEXT,
                 created_ms INTEGER NOT NULL,
                 PRIMARY KEY (name, version)
             );",
        )?;
        Ok(DocStore {
            conn: std::sync::Arc::new(std::sync::Mutex::new(conn)),
            prefs_cache: Default::default(),
        })
    }

    fn forget_preferences(&self) {
        if let Ok(mut g) = self.prefs_cache.lock() {
            *g = None;
        }
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = conn
                .lock()
                .map_err(|_| crate::store::StoreError::Db("lock poisoned".into()))?;
            f(&mut g)
        })
        .await
        .map_err(|_| crate::store::StoreError::Join)?
    }

    /// `version` None = the default version.
    pub async fn get(&self, name: &str, version: Option<i64>) -> StoreResult<Option<DocVersion>> {
        let name = name.to_string();
        self.with(move |c| {
            use rusqlite::OptionalExtension;
            let head = c
                .query_row(
                    "SELECT default_version, latest_version FROM ssm_documents WHERE name = ?1",
                    [&name],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()?;
            let Some((default_version, latest_version)) = head else {
                return Ok(None);
            };
            let v = version.unwrap_or(default_version);
            let row = c
                .query_row(
                    "SELECT content, version_name, created_ms FROM ssm_document_versions WHERE name = ?1 AND version = ?2",
                    rusqlite::params![name, v],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    },
                )
                .optional()?;
            Ok(row.map(|(content, version_name, created_ms)| DocVersion {
                name: name.clone(),
                version: v,
                content,
                created_ms,
                version_name,
                default_version,
                latest_version,
            }))
        })
        .await
    }

    /// Adds a version (version 1 creates the document). Returns the new
    /// version number, or None when `create` and the name exists / when not
    /// `create` and it does not.
    pub async fn add_version(
        &self,
        name: &str,
        content: String,
        version_name: Option<String>,
        create: bool,
        now_ms: i64,
    ) -> StoreResult<Option<i64>> {
        self.forget_preferences();
        let name = name.to_string();
        self.with(move |c| {
            use rusqlite::OptionalExtension;
            let tx = c.transaction()?;
            let latest = tx
                .query_row(
                    "SELECT latest_version FROM ssm_documents WHERE name = ?1",
                    [&name],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?;
            let v = match (latest, create) {
                (None, true) => {
                    tx.execute(
                        "INSERT INTO ssm_documents (name, default_version, latest_version, created_ms) VALUES (?1, 1, 1, ?2)",
                        rusqlite::params![name, now_ms],
                    )?;
                    1
                }
                (Some(l), false) => {
                    tx.execute(
                        "UPDATE ssm_documents SET latest_version = ?2 WHERE name = ?1",
                        rusqlite::params![name, l + 1],
                    )?;
                    l + 1
                }
                _ => return Ok(None),
            };
            tx.execute(
                "INSERT INTO ssm_document_versions (name, version, content, version_name, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![name, v, content, version_name, now_ms],
            )?;
            tx.commit()?;
            Ok(Some(v))
        })
        .await
    }

    pub async fn set_default(&self, name: &str, version: i64) -> StoreResult<bool> {
        self.forget_preferences();
        let name = name.to_string();
        self.with(move |c| {
            let n = c.execute(
                "UPDATE ssm_documents SET default_version = ?2 WHERE name = ?1 AND EXISTS (SELECT 1 FROM ssm_document_versions WHERE name = ?1 AND version = ?2)",
                rusqlite::params![name, version],
            )?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn delete(&self, name: &str) -> StoreResult<bool> {
        self.forget_preferences();
        let name = name.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute("DELETE FROM ssm_documents WHERE name = ?1", [&name])?;
            tx.execute("DELETE FROM ssm_document_versions WHERE name = ?1", [&name])?;
            tx.commit()?;
            Ok(n == 1)
        })
        .await
    }

    /// The default version of every custom document.
    pub async fn list(&self) -> StoreResult<Vec<DocVersion>> {
        let names: Vec<String> = self
            .with(|c| {
                let mut st = c.prepare("SELECT name FROM ssm_documents ORDER BY name")?;
                let rows = st.query_map([], |r| r.get::<_, String>(0))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(d) = self.get(&n, None).await? {
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// The session document `name` (custom default version first, then the
/// built-ins) resolved against `params`, with the account's Session Manager
/// preferences (the `SSM-SessionManagerRunShell` inputs) merged into its
/// inputs so the agent sees kmsKeyId, runAs and shellProfile whatever the
/// document.
pub async fn resolve_for_session(
    docs: &DocStore,
    name: Option<&str>,
    params: Option<Map<String, Value>>,
) -> Result<Resolved, ApiError> {
    let name = name.unwrap_or(SHELL);
    // Document ARNs name the same document.
    let short = name.rsplit_once(":document/").map_or(name, |(_, n)| n);
    let doc = match docs.get(short, None).await? {
        Some(d) => parse_content(&d.content, None)?,
        None => builtin(short).ok_or_else(|| not_a_session_document(name))?,
    };
    let mut resolved = resolve_with(short, doc, params)?;
    let prefs = preferences(docs).await?;
    if let (Some(p), Some(own)) = (prefs.as_object(), resolved.document.inputs.as_object_mut()) {
        for (k, v) in p {
            let empty = own
                .get(k)
                .is_none_or(|x| x.is_null() || x.as_str() == Some(""));
            if empty {
                own.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(resolved)
}

/// The inputs of the preferences document (`SSM-SessionManagerRunShell`,
/// default version), `{}` when none was created.
pub async fn preferences(docs: &DocStore) -> Result<Value, ApiError> {
    if let Ok(g) = docs.prefs_cache.lock() {
        if let Some((_, v)) = g.as_ref().filter(|(at, _)| at.elapsed() < PREFS_TTL) {
            return Ok(v.clone());
        }
    }
    let v = match docs.get(SHELL, None).await? {
        Some(d) => parse_content(&d.content, None)?.inputs,
        None => json!({}),
    };
    if let Ok(mut g) = docs.prefs_cache.lock() {
        *g = Some((std::time::Instant::now(), v.clone()));
    }
    Ok(v)
}

fn minutes(inputs: &Value, key: &str) -> Option<u64> {
    let m = match inputs.get(key)? {
        Value::String(s) => s.trim().parse::<u64>().ok()?,
        Value::Number(n) => n.as_u64()?,
        _ => return None,
    };
    (m > 0).then_some(m.saturating_mul(60))
}

/// The preferences' `idleSessionTimeout` / `maxSessionDuration` (minutes)
/// override the gateway configuration's defaults when set.
pub fn overlay_timeouts(inputs: &Value, cfg: &mut crate::config::SessionsConfig) {
    if let Some(idle) = minutes(inputs, "idleSessionTimeout") {
        cfg.idle_timeout_secs = idle;
    }
    if let Some(max) = minutes(inputs, "maxSessionDuration") {
        cfg.max_session_duration_secs = Some(max);
    }
}

/// The session timeouts in force: the configuration overlaid with the
/// preferences (the configuration alone if they cannot be read).
pub async fn effective_sessions_config(
    state: &crate::server::AppState,
) -> crate::config::SessionsConfig {
    let mut cfg = state.config.sessions.clone();
    match preferences(&state.documents).await {
        Ok(p) => overlay_timeouts(&p, &mut cfg),
        Err(e) => tracing::warn!(error = %e.message, "session preferences unreadable"),
    }
    cfg
}

/// The SSM document operations for Session documents; None for any other
/// operation.
pub async fn api(
    state: &crate::server::AppState,
    req: &crate::server::ReadRequest,
    principal: &crate::auth::Principal,
    op: &str,
) -> Option<Result<http::Response<crate::server::Body>, ApiError>> {
    let r = match op {
        "CreateDocument" => doc_api::create(state, req, principal, true).await,
        "UpdateDocument" => doc_api::create(state, req, principal, false).await,
        "GetDocument" => doc_api::get(state, req, principal).await,
        "DescribeDocument" => doc_api::describe(state, req, principal).await,
        "ListDocuments" => doc_api::list(state, req, principal).await,
        "DeleteDocument" => doc_api::delete(state, req, principal).await,
        "UpdateDocumentDefaultVersion" => doc_api::set_default(state, req, principal).await,
        _ => return None,
    };
    Some(r)
}

mod doc_api {
    use http::{Response, StatusCode};
    use serde::Deserialize;
    use serde_json::{json, Value};

    use super::*;
    use crate::auth::Principal;
    use crate::server::{json_response, AppState, Body, ReadRequest};
    use crate::util::{now_ms, sha256_hex};

    type ApiResult = Result<Response<Body>, ApiError>;

    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    pub struct DocReq {
        name: Option<String>,
        content: Option<String>,
        document_type: Option<String>,
        document_format: Option<String>,
        document_version: Option<String>,
        version_name: Option<String>,
        filters: Option<Vec<Value>>,
        document_filter_list: Option<Vec<Value>>,
        max_results: Option<i64>,
        next_token: Option<String>,
    }

    fn parse(body: &[u8]) -> Result<DocReq, ApiError> {
        let body: &[u8] = if body.is_empty() { b"{}" } else { body };
        serde_json::from_slice(body)
            .map_err(|e| ApiError::validation(format!("Invalid request body: {e}")))
    }

    fn name_of(r: &DocReq) -> Result<String, ApiError> {
        let n = r.name.clone().ok_or_else(|| {
            ApiError::validation("1 validation error detected: Value null at 'name' failed to satisfy constraint: Member must not be null")
        })?;
        Ok(n.rsplit_once(":document/")
            .map_or(n.as_str(), |(_, x)| x)
            .to_string())
    }

    fn arn(state: &AppState, name: &str) -> String {
        let a = &state.config.aws;
        if builtin(name).is_some() && name != SHELL {
            format!("arn:aws:ssm:{}::document/{name}", a.region)
        } else {
            format!("arn:aws:ssm:{}:{}:document/{name}", a.region, a.account_id)
        }
    }

    async fn authorize(
        state: &AppState,
        req: &ReadRequest,
        principal: &Principal,
        action: &str,
        resource: String,
    ) -> Result<(), ApiError> {
        crate::authz::authorize(
            state,
            req,
            principal,
            action,
            &[resource],
            airlock_iam::Context::new(),
        )
        .await
    }

    fn not_found(name: &str) -> ApiError {
        ApiError::new(
            "InvalidDocument",
            format!("Document with name {name} does not exist."),
        )
    }

    /// `"$LATEST"`, `"$DEFAULT"`, a number, or absent (default).
    fn version_of(v: Option<&str>, latest: i64) -> Result<Option<i64>, ApiError> {
        match v {
            None | Some("$DEFAULT") => Ok(None),
            Some("$LATEST") => Ok(Some(latest)),
            Some(n) => n
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 1)
                .map(Some)
                .ok_or_else(|| {
                    ApiError::new(
                        "InvalidDocumentVersion",
                        format!("Document version {n} is not valid."),
                    )
                }),
        }
    }

    /// A stored version, or the built-in document as a read-only version 1.
    async fn load(
        state: &AppState,
        name: &str,
        version: Option<&str>,
    ) -> Result<(DocVersion, String), ApiError> {
        let head = state.documents.get(name, None).await?;
        if let Some(h) = head {
            let v = version_of(version, h.latest_version)?;
            let d = match v {
                None => h,
                Some(v) => state.documents.get(name, Some(v)).await?.ok_or_else(|| {
                    ApiError::new(
                        "InvalidDocumentVersion",
                        format!("Document {name} has no version {v}."),
                    )
                })?,
            };
            return Ok((d, state.config.aws.account_id.clone()));
        }
        let b = builtin(name).ok_or_else(|| not_found(name))?;
        if !matches!(version_of(version, 1)?, None | Some(1)) {
            return Err(ApiError::new(
                "InvalidDocumentVersion",
                format!("Document {name} has only version 1."),
            ));
        }
        let content = serde_json::to_string_pretty(&b).unwrap_or_default();
        Ok((
            DocVersion {
                name: name.to_string(),
                version: 1,
                content,
                created_ms: 0,
                version_name: None,
                default_version: 1,
                latest_version: 1,
            },
            "Amazon".to_string(),
        ))
    }

    fn description(d: &DocVersion, owner: &str) -> Value {
        let doc: Option<SessionDocument> = serde_json::from_str(&d.content).ok();
        let params: Vec<Value> = doc
            .as_ref()
            .and_then(|x| x.parameters.as_object().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, def)| {
                let mut p = json!({
                    "Name": k,
                    "Type": def.get("type").and_then(Value::as_str).unwrap_or("String"),
                    "Description": def.get("description").and_then(Value::as_str).unwrap_or(""),
                });
                if let Some(dv) = def.get("default") {
                    p["DefaultValue"] = json!(dv
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| dv.to_string()));
                }
                p
            })
            .collect();
        let mut v = json!({
            "Name": d.name,
            "Owner": owner,
            "Hash": sha256_hex(d.content.as_bytes()),
            "HashType": "Sha256",
            "CreatedDate": d.created_ms as f64 / 1000.0,
            "Status": "Active",
            "DocumentVersion": d.version.to_string(),
            "Description": doc.as_ref().map(|x| x.description.clone()).unwrap_or_default(),
            "Parameters": params,
            "PlatformTypes": ["Windows", "Linux", "MacOS"],
            "DocumentType": "Session",
            "SchemaVersion": "1.0",
            "LatestVersion": d.latest_version.to_string(),
            "DefaultVersion": d.default_version.to_string(),
            "DocumentFormat": "JSON",
            "Tags": [],
        });
        if let Some(n) = &d.version_name {
            v["VersionName"] = json!(n);
        }
        v
    }

    fn ok(v: Value) -> ApiResult {
        Ok(json_response(StatusCode::OK, &v))
    }

    pub async fn create(
        state: &AppState,
        req: &ReadRequest,
        principal: &Principal,
        create: bool,
    ) -> ApiResult {
        let r = parse(&req.body)?;
        let name = name_of(&r)?;
        let action = if create {
            "ssm:CreateDocument"
        } else {
            "ssm:UpdateDocument"
        };
        authorize(state, req, principal, action, arn(state, &name)).await?;
        check_name(&name)?;
        if let Some(t) = r.document_type.as_deref().filter(|t| *t != "Session") {
            return Err(ApiError::new(
                "InvalidDocumentType",
                format!(
                    "Document type {t} is not supported: Airlock stores Session documents only."
                ),
            ));
        }
        let content = r.content.clone().ok_or_else(|| {
            ApiError::validation("1 validation error detected: Value null at 'content' failed to satisfy constraint: Member must not be null")
        })?;
        parse_content(&content, r.document_format.as_deref())?;
        if name != SHELL && reserved(&name) {
            return Err(ApiError::validation(format!(
                "Document names starting with AWS or Amazon are reserved: {name}."
            )));
        }
        let now = now_ms();
        let store = &state.documents;
        let version = if create {
            store
                .add_version(&name, content, r.version_name.clone(), true, now)
                .await?
                .ok_or_else(|| {
                    ApiError::new(
                        "DocumentAlreadyExists",
                        format!("Document with same name {name} already exists"),
                    )
                })?
        } else {
            let head = match store.get(&name, None).await? {
                Some(h) => h,
                // The preferences document exists implicitly (as the
                // built-in); its first update creates it.
                None if name == SHELL => {
                    let v = store
                        .add_version(&name, content, r.version_name.clone(), true, now)
                        .await?
                        .unwrap_or(1);
                    let d = store
                        .get(&name, Some(v))
                        .await?
                        .ok_or_else(ApiError::internal)?;
                    return ok(
                        json!({"DocumentDescription": description(&d, &state.config.aws.account_id)}),
                    );
                }
                None => return Err(not_found(&name)),
            };
            if let Some(v) = r.document_version.as_deref() {
                if version_of(Some(v), head.latest_version)? != Some(head.latest_version) {
                    return Err(ApiError::new(
                        "InvalidDocumentVersion",
                        "Only the latest version of a document can be updated ($LATEST).",
                    ));
                }
            }
            let latest = store
                .get(&name, Some(head.latest_version))
                .await?
                .ok_or_else(ApiError::internal)?;
            if latest.content == content {
                return Err(ApiError::new(
                    "DuplicateDocumentContent",
                    "The content of the association document matches another document. Change the content of the document and try again.",
                ));
            }
            store
                .add_version(&name, content, r.version_name.clone(), false, now)
                .await?
                .ok_or_else(|| not_found(&name))?
        };
        let d = store
            .get(&name, Some(version))
            .await?
            .ok_or_else(ApiError::internal)?;
        ok(json!({"DocumentDescription": description(&d, &state.config.aws.account_id)}))
    }

    pub async fn get(state: &AppState, req: &ReadRequest, principal: &Principal) -> ApiResult {
        let r = parse(&req.body)?;
        let name = name_of(&r)?;
        authorize(state, req, principal, "ssm:GetDocument", arn(state, &name)).await?;
        let (d, _) = load(state, &name, r.document_version.as_deref()).await?;
        let mut v = json!({
            "Name": d.name,
            "CreatedDate": d.created_ms as f64 / 1000.0,
            "DocumentVersion": d.version.to_string(),
            "Status": "Active",
            "Content": d.content,
            "DocumentType": "Session",
            "DocumentFormat": "JSON",
        });
        if let Some(n) = &d.version_name {
            v["VersionName"] = json!(n);
        }
        ok(v)
    }

    pub async fn describe(state: &AppState, req: &ReadRequest, principal: &Principal) -> ApiResult {
        let r = parse(&req.body)?;
        let name = name_of(&r)?;
        authorize(
            state,
            req,
            principal,
            "ssm:DescribeDocument",
            arn(state, &name),
        )
        .await?;
        let (d, owner) = load(state, &name, r.document_version.as_deref()).await?;
        ok(json!({"Document": description(&d, &owner)}))
    }

    pub async fn list(state: &AppState, req: &ReadRequest, principal: &Principal) -> ApiResult {
        let r = parse(&req.body)?;
        authorize(state, req, principal, "ssm:ListDocuments", "*".into()).await?;
        let max = r.max_results.unwrap_or(50);
        if !(1..=50).contains(&max) {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{max}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and 50"
            )));
        }
        // Filters: DocumentType (only Session exists here), Owner (Self /
        // Amazon / Private / Public), Name.
        let mut owner_filter: Option<String> = None;
        let mut name_filter: Option<Vec<String>> = None;
        let mut type_ok = true;
        let filters = r.filters.iter().flatten().map(|f| {
            (
                f.get("Key")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                f.get("Values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        });
        let legacy = r.document_filter_list.iter().flatten().map(|f| {
            (
                f.get("key")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                f.get("value")
                    .and_then(Value::as_str)
                    .map(|s| vec![s.to_string()])
                    .unwrap_or_default(),
            )
        });
        for (k, vals) in filters.chain(legacy) {
            match k.as_str() {
                "DocumentType" => type_ok = vals.iter().any(|v| v == "Session"),
                "Owner" => owner_filter = vals.first().cloned(),
                "Name" => name_filter = Some(vals),
                _ => {}
            }
        }
        let account = state.config.aws.account_id.clone();
        let mut all: Vec<(DocVersion, String)> = Vec::new();
        if type_ok {
            for d in state.documents.list().await? {
                all.push((d, account.clone()));
            }
            for b in BUILTINS {
                if !all.iter().any(|(d, _)| d.name == b.name) {
                    let (d, o) = load(state, b.name, None).await?;
                    all.push((d, o));
                }
            }
        }
        all.retain(|(d, o)| {
            let owner_ok = match owner_filter.as_deref() {
                Some("Self") | Some("Private") => o == &account,
                Some("Amazon") | Some("Public") => o == "Amazon",
                _ => true,
            };
            owner_ok && name_filter.as_ref().is_none_or(|n| n.contains(&d.name))
        });
        all.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let start = match r.next_token.as_deref() {
            None => 0,
            Some(t) => t.parse::<usize>().map_err(|_| {
                ApiError::new("InvalidNextToken", "The specified token is not valid.")
            })?,
        };
        let end = start.saturating_add(max as usize).min(all.len());
        let page = all.get(start.min(end)..end).unwrap_or(&[]);
        let ids: Vec<Value> = page
            .iter()
            .map(|(d, o)| {
                json!({
                    "Name": d.name,
                    "CreatedDate": d.created_ms as f64 / 1000.0,
                    "Owner": o,
                    "DocumentVersion": d.version.to_string(),
                    "DocumentType": "Session",
                    "SchemaVersion": "1.0",
                    "DocumentFormat": "JSON",
                    "PlatformTypes": ["Windows", "Linux", "MacOS"],
                    "Tags": [],
                })
            })
            .collect();
        let mut out = json!({"DocumentIdentifiers": ids});
        if end < all.len() {
            out["NextToken"] = json!(end.to_string());
        }
        ok(out)
    }

    pub async fn delete(state: &AppState, req: &ReadRequest, principal: &Principal) -> ApiResult {
        let r = parse(&req.body)?;
        let name = name_of(&r)?;
        authorize(
            state,
            req,
            principal,
            "ssm:DeleteDocument",
            arn(state, &name),
        )
        .await?;
        if !state.documents.delete(&name).await? {
            return Err(not_found(&name));
        }
        ok(json!({}))
    }

    pub async fn set_default(
        state: &AppState,
        req: &ReadRequest,
        principal: &Principal,
    ) -> ApiResult {
        let r = parse(&req.body)?;
        let name = name_of(&r)?;
        authorize(
            state,
            req,
            principal,
            "ssm:UpdateDocumentDefaultVersion",
            arn(state, &name),
        )
        .await?;
        let head = state
            .documents
            .get(&name, None)
            .await?
            .ok_or_else(|| not_found(&name))?;
        let v = version_of(r.document_version.as_deref(), head.latest_version)?
            .ok_or_else(|| ApiError::validation("DocumentVersion must name a version."))?;
        if !state.documents.set_default(&name, v).await? {
            return Err(ApiError::new(
                "InvalidDocumentVersion",
                format!("Document {name} has no version {v}."),
            ));
        }
        let d = state
            .documents
            .get(&name, Some(v))
            .await?
            .ok_or_else(ApiError::internal)?;
        let mut desc = json!({"Name": name, "DefaultVersion": v.to_string()});
        if let Some(n) = d.version_name {
            desc["DefaultVersionName"] = json!(n);
        }
        ok(json!({"Description": desc}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: Value) -> Option<Map<String, Value>> {
        v.as_object().cloned()
    }

    #[test]
    fn shell_is_default() {
        let r = resolve(None, None).unwrap();
        assert_eq!(r.document.session_type, "Standard_Stream");
        assert_eq!(r.name, SHELL);
    }

    #[test]
    fn remote_host_resolves_properties() {
        let r = resolve(
            Some(PORT_FORWARDING_REMOTE),
            p(json!({"host": ["db.internal"], "portNumber": ["5432"]})),
        )
        .unwrap();
        assert_eq!(r.document.session_type, "Port");
        assert_eq!(
            r.document.properties,
            json!({"portNumber":"5432","type":"LocalPortForwarding","localPortNumber":"0","host":"db.internal"})
        );
        assert_eq!(r.parameters.get("localPortNumber").unwrap(), "0");
    }

    #[test]
    fn command_documents_take_a_required_command() {
        for (name, kind) in [
            (INTERACTIVE_COMMAND, "InteractiveCommands"),
            (NON_INTERACTIVE_COMMAND, "NonInteractiveCommands"),
        ] {
            let r = resolve(Some(name), p(json!({"command": ["top -b -n 1"]}))).unwrap();
            assert_eq!(r.document.session_type, kind);
            assert_eq!(
                r.document.properties["linux"],
                json!({"commands": "top -b -n 1", "runAsElevated": false})
            );
            let missing = resolve(Some(name), None).unwrap_err();
            assert_eq!(missing.code, "InvalidParameters");
            assert!(
                missing.message.contains("command is required"),
                "{}",
                missing.message
            );
            let blank = resolve(Some(name), p(json!({"command": ["  "]}))).unwrap_err();
            assert_eq!(blank.code, "InvalidParameters");
        }
    }

    #[test]
    fn ssh_has_no_type() {
        let r = resolve(Some(SSH), None).unwrap();
        assert_eq!(r.document.properties, json!({"portNumber":"22"}));
    }

    #[test]
    fn errors() {
        assert_eq!(
            resolve(Some("Nope"), None).unwrap_err().code,
            "InvalidDocument"
        );
        assert_eq!(
            resolve(Some(PORT_FORWARDING_REMOTE), None)
                .unwrap_err()
                .code,
            "InvalidParameters"
        );
        assert_eq!(
            resolve(Some(PORT_FORWARDING), p(json!({"bogus": ["1"]})))
                .unwrap_err()
                .code,
            "InvalidParameters"
        );
        assert_eq!(
            resolve(Some(PORT_FORWARDING), p(json!({"portNumber": ["abc"]})))
                .unwrap_err()
                .code,
            "InvalidParameters"
        );
        assert_eq!(
            resolve(Some(PORT_FORWARDING), p(json!({"portNumber": ["1", "2"]})))
                .unwrap_err()
                .code,
            "InvalidParameters"
        );
    }

    #[test]
    fn preference_timeouts_override_config() {
        let mut cfg = crate::config::SessionsConfig::default();
        let before = cfg.clone();
        overlay_timeouts(
            &json!({"idleSessionTimeout": "", "kmsKeyId": "k"}),
            &mut cfg,
        );
        assert_eq!(cfg, before);
        overlay_timeouts(
            &json!({"idleSessionTimeout": "5", "maxSessionDuration": "90"}),
            &mut cfg,
        );
        assert_eq!(cfg.idle_timeout_secs, 300);
        assert_eq!(cfg.max_session_duration_secs, Some(5400));
    }

    #[test]
    fn session_inputs_are_validated() {
        assert!(
            validate_inputs(&json!({"kmsKeyId": "alias/x", "requireEncryption": "true"})).is_ok()
        );
        assert!(validate_inputs(&json!({"requireEncryption": true})).is_err());
        assert!(validate_inputs(&json!({"maxSessionDuration": "1441"})).is_err());
        assert!(validate_inputs(&json!({"shellProfile": {"linux": 3}})).is_err());
        assert!(validate_inputs(&json!({"runAsEnabled": "yes"})).is_err());
    }

    #[test]
    fn substitution() {
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), "x".to_string());
        assert_eq!(substitute("{{ a }}-{{a}}-{{ b }}", &m), "x-x-{{ b }}");
    }
}
