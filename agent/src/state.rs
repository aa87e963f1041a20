//! The agent's persisted identity: `<state-dir>/registration.json` (0600, dir 0700).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "registration.json";

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Registration {
    pub instance_id: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    /// Gateway endpoint, `https://host:port`.
    pub gateway: String,
    /// CA bundle used at registration, reused by `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("instance_id", &self.instance_id)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("region", &self.region)
            .field("gateway", &self.gateway)
            .field("ca_bundle", &self.ca_bundle)
            .finish()
    }
}

/// Default: env `AIRLOCK_AGENT_STATE_DIR`, else `/var/lib/airlock-agent` as
/// root, else `$HOME/.local/state/airlock-agent`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AIRLOCK_AGENT_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/airlock-agent");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/airlock-agent")
}

pub fn save(dir: &Path, reg: &Registration) -> Result<PathBuf> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create state dir {}", dir.display()))?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    // Belt and braces against a permissive umask-independent mode.
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    let body = serde_json::to_vec_pretty(reg)?;
    f.write_all(&body)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

pub fn load(dir: &Path) -> Result<Registration> {
    let path = dir.join(FILE_NAME);
    let body = fs::read(&path).with_context(|| {
        format!(
            "cannot read {} (run `airlock-agent register` first)",
            path.display()
        )
    })?;
    serde_json::from_slice(&body).with_context(|| format!("malformed {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Registration {
        Registration {
            instance_id: "mi-0123456789abcdef0".into(),
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: "supersecretvalue".into(),
            region: "us-east-1".into(),
            gateway: "https://127.0.0.1:8443".into(),
            ca_bundle: Some("/tmp/ca.pem".into()),
        }
    }

    #[test]
    fn round_trip_with_private_permissions() {
        let base =
            std::env::temp_dir().join(format!("airlock-agent-test-{}", uuid::Uuid::new_v4()));
        let dir = base.join("state");
        let reg = sample();
        let path = save(&dir, &reg).unwrap();
        assert_eq!(load(&dir).unwrap(), reg);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        // Overwrite keeps working.
        save(&dir, &reg).unwrap();
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn debug_redacts_secret() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("supersecretvalue"));
        assert!(s.contains("mi-0123456789abcdef0"));
    }
}
