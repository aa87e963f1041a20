//! The authorization audit trail: one JSON object per decision, appended to
//! `audit.log` in the data directory (mode 0600) and mirrored to tracing
//! (target `airlock::audit`). Events never carry secrets: only ARNs, the
//! action, the decision, the deciding statement, the source IP and request id.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::error::GatewayError;

#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// Always `authorization`, to tell these lines from session state changes.
    pub event: &'static str,
    /// RFC 3339, UTC.
    pub time: String,
    pub request_id: String,
    pub principal: String,
    /// The key that signed the request (as CloudTrail's `accessKeyId`): an
    /// agent's short-lived role key starts with `ASIA`.
    pub access_key_id: String,
    pub action: String,
    pub resource: String,
    /// `allowed`, `explicitDeny` or `implicitDeny`.
    pub decision: String,
    /// `policy-name#Sid` (or `#<index>` without a Sid) of the statement that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    pub source_ip: String,
}

/// One session state change in the audit trail.
#[derive(Debug, Serialize)]
pub struct SessionStateEvent<'a> {
    pub time: String,
    /// Always `session_state`, to tell these lines from decisions.
    pub event: &'static str,
    pub session_id: &'a str,
    pub status: &'a str,
    pub reason: &'a str,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog, GatewayError> {
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(path).map_err(|e| GatewayError::io(path, e))?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line. A failed write is logged, not returned: the request
    /// was already decided, and refusing service because the disk is full
    /// would turn an audit problem into an outage.
    pub fn record(&self, ev: &AuditEvent) {
        tracing::info!(
            target: "airlock::audit",
            request_id = %ev.request_id,
            principal = %ev.principal,
            action = %ev.action,
            resource = %ev.resource,
            decision = %ev.decision,
            statement = ev.statement.as_deref().unwrap_or("-"),
            source_ip = %ev.source_ip,
            "authorization decision"
        );
        self.append(ev);
    }

    /// Records a session state change (Connecting, Connected, Disconnected,
    /// Terminating, Terminated, Failed) with its reason, so the audit trail
    /// says who opened what and how it ended without joining the database.
    pub fn session_state(&self, session_id: &str, status: &str, reason: &str) {
        tracing::info!(
            target: "airlock::audit",
            session_id,
            status,
            reason,
            "session state"
        );
        self.append(&SessionStateEvent {
            time: now_rfc3339(),
            event: "session_state",
            session_id,
            status,
            reason,
        });
    }

    fn append<T: Serialize>(&self, ev: &T) {
        let Ok(mut line) = serde_json::to_vec(ev) else {
            return;
        };
        line.push(b'\n');
        match self.file.lock() {
            Ok(mut f) => {
                if let Err(e) = f.write_all(&line) {
                    tracing::error!(error = %e, path = %self.path.display(), "audit write failed");
                }
            }
            Err(_) => tracing::error!("audit log mutex poisoned"),
        }
    }
}
