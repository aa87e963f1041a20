//! The configuration tree. Defaults (documented on each field) apply when the
//! TOML file or a command-line flag does not set a value. Unknown keys are
//! rejected, naming the key's path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::GatewayError;

/// Effective configuration of one gateway.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub aws: AwsConfig,
    pub limits: LimitsConfig,
    pub sessions: SessionsConfig,
    pub recordings: crate::recordings::RecordingsConfig,
    pub iam: IamConfig,
}

/// `[iam]`: identity management. The account id used in ARNs is
/// `aws.account_id`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IamConfig {
    /// Declarative JSON file of users, groups, roles and policies applied
    /// at every start (created or added, never deleted). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Lifetime of the short-lived role credentials agents obtain with
    /// their registration key, seconds (1..=43200). Default 3600.
    pub role_credentials_ttl_secs: u64,
    /// Accept an instance's long-term registration key only for obtaining
    /// role credentials (as on AWS). Default false, so agents that predate
    /// role credentials keep working.
    pub require_role_credentials: bool,
}

impl Default for IamConfig {
    fn default() -> Self {
        IamConfig {
            file: None,
            role_credentials_ttl_secs: 3600,
            require_role_credentials: false,
        }
    }
}

/// Session lifecycle: concurrent-session limits and timeouts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Most concurrent sessions per target (Connecting, Connected and
    /// Disconnected count). Default 2.
    pub max_per_target: u32,
    /// Most concurrent sessions per principal. Default: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_principal: Option<u32>,
    /// Per-target overrides of `max_per_target`, by instance id. Takes
    /// precedence over `per_tag`.
    pub per_target: BTreeMap<String, u32>,
    /// Limits by instance tag value; the smallest matching one applies.
    pub per_tag: Vec<TagLimit>,
    /// How long a Disconnected session (client gone without
    /// TerminateSession) keeps its slot awaiting ResumeSession, seconds.
    /// Default 120.
    pub resume_window_secs: u64,
    /// A session with no relayed frame in either direction for this long is
    /// terminated, seconds. Default 1200 (20 minutes).
    pub idle_timeout_secs: u64,
    /// Maximum session duration, seconds. Default: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_session_duration_secs: Option<u64>,
    /// A session whose agent has not attached its data channel after this
    /// long fails, seconds. Default 30.
    pub agent_attach_timeout_secs: u64,
}

/// `[[sessions.per_tag]] key = "Environment" value = "prod" max = 1`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TagLimit {
    pub key: String,
    pub value: String,
    pub max: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            max_per_target: 2,
            max_per_principal: None,
            per_target: BTreeMap::new(),
            per_tag: Vec::new(),
            resume_window_secs: 120,
            idle_timeout_secs: 20 * 60,
            max_session_duration_secs: None,
            agent_attach_timeout_secs: 30,
        }
    }
}

impl SessionsConfig {
    /// The concurrent-session limit of `target` with `tags`.
    pub fn limit_for(&self, target: &str, tags: &[crate::store::Tag]) -> u32 {
        if let Some(n) = self.per_target.get(target) {
            return *n;
        }
        self.per_tag
            .iter()
            .filter(|l| tags.iter().any(|t| t.key == l.key && t.value == l.value))
            .map(|l| l.max)
            .min()
            .unwrap_or(self.max_per_target)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// State directory (database, root key, TLS material, admin credentials).
    /// Default: `$AIRLOCK_DATA_DIR`, else `~/.local/share/airlock-gateway`
    /// (`/var/lib/airlock-gateway` as root).
    pub data_dir: PathBuf,
    /// Listen address. Default `127.0.0.1:8443`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Serve plain HTTP instead of TLS. Only allowed on loopback. Default false.
    pub insecure_http: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Region in SigV4 scopes and in registration answers. Default `us-east-1`.
    pub region: String,
    /// Account id used in ARNs. Default `123456789012`.
    pub account_id: String,
    /// Accepted clock skew of signed requests, seconds. Default 300.
    pub max_skew_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Agent->client frames buffered per session before the client attaches
    /// (and client->agent before the agent attaches). When full the gateway
    /// stops reading the sending socket. Default 1024.
    pub relay_buffer_frames: usize,
    /// The same queues bounded in bytes: Airlock peers send frames of up to
    /// a megabyte, so the frame bound alone would let one session hold
    /// gigabytes. Default 32 MiB (two of an Airlock peer's 16 MiB windows).
    pub relay_buffer_bytes: usize,
    /// Largest WebSocket message accepted, bytes. Default 2 MiB.
    pub max_message_bytes: usize,
    /// Lifetime of an unused session/channel token, seconds. Default 600.
    pub token_ttl_secs: u64,
    /// Largest HTTP request body, bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Bytes of frames all sessions' relay queues may hold together; past
    /// it, sessions with frames to queue wait (their senders' sockets are
    /// not read) until written frames free room. Default 1 GiB.
    pub relay_memory_bytes: usize,
    /// A websocket write that waits this long with nothing acknowledged by
    /// the peer's TCP ends that socket (a dead path or a stopped peer); a
    /// slow link that keeps acknowledging may take as long as it needs.
    /// Seconds, default 30.
    pub write_stall_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: default_data_dir(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            insecure_http: false,
        }
    }
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
            max_skew_secs: 300,
        }
    }
}

impl LimitsConfig {
    /// A relay queue's bounds: (frames, bytes); `validate` checked bytes fit.
    pub fn relay_queue(&self) -> (usize, u32) {
        (
            self.relay_buffer_frames,
            u32::try_from(self.relay_buffer_bytes).unwrap_or(u32::MAX),
        )
    }

    /// The gateway-wide relay budget; `validate` checked it fits.
    pub fn relay_memory(&self) -> u32 {
        u32::try_from(self.relay_memory_bytes).unwrap_or(u32::MAX)
    }

    pub fn write_stall(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.write_stall_secs)
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            relay_buffer_frames: 1024,
            relay_buffer_bytes: 32 << 20,
            max_message_bytes: 2 << 20,
            token_ttl_secs: 600,
            max_body_bytes: 1 << 20,
            relay_memory_bytes: 1 << 30,
            write_stall_secs: 30,
        }
    }
}

/// The default data directory (see [`ServerConfig::data_dir`]).
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AIRLOCK_DATA_DIR") {
        if !d.is_empty() {
            return PathBuf::from(d);
        }
    }
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc_geteuid() } == 0 {
            return PathBuf::from("/var/lib/airlock-gateway");
        }
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/airlock-gateway"),
        None => PathBuf::from("airlock-gateway-data"),
    }
}

#[cfg(unix)]
unsafe fn libc_geteuid() -> u32 {
    extern "C" {
        fn geteuid() -> u32;
    }
    geteuid()
}

impl Config {
    /// Parses TOML text; unknown keys fail with their path (e.g. `server.lisen`).
    pub fn from_toml(text: &str) -> Result<Config, GatewayError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            GatewayError::Config(format!("at `{path}`: {}", e.inner().message()))
        })
    }

    pub fn from_file(path: &Path) -> Result<Config, GatewayError> {
        let text = std::fs::read_to_string(path).map_err(|e| GatewayError::io(path, e))?;
        Self::from_toml(&text).map_err(|e| match e {
            GatewayError::Config(m) => GatewayError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Checks cross-field rules.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.server.insecure_http && !self.server.listen.ip().is_loopback() {
            return Err(GatewayError::Config(format!(
                "insecure_http is only allowed on a loopback listen address, not {}",
                self.server.listen
            )));
        }
        if self.aws.region.is_empty() {
            return Err(GatewayError::Config("aws.region must not be empty".into()));
        }
        self.recordings.validate().map_err(GatewayError::Config)?;
        if self.aws.account_id.len() != 12
            || !self.aws.account_id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(GatewayError::Config(
                "aws.account_id must be 12 digits".into(),
            ));
        }
        if self.limits.relay_buffer_frames == 0 {
            return Err(GatewayError::Config(
                "limits.relay_buffer_frames must be > 0".into(),
            ));
        }
        if self.limits.relay_buffer_bytes == 0
            || u32::try_from(self.limits.relay_buffer_bytes).is_err()
        {
            return Err(GatewayError::Config(
                "limits.relay_buffer_bytes must be between 1 and 4294967295".into(),
            ));
        }
        if self.limits.relay_memory_bytes == 0
            || u32::try_from(self.limits.relay_memory_bytes).is_err()
        {
            return Err(GatewayError::Config(
                "limits.relay_memory_bytes must be between 1 and 4294967295".into(),
            ));
        }
        if !(1..=3600).contains(&self.limits.write_stall_secs) {
            return Err(GatewayError::Config(
                "limits.write_stall_secs must be between 1 and 3600".into(),
            ));
        }
        if !(1..=43_200).contains(&self.iam.role_credentials_ttl_secs) {
            return Err(GatewayError::Config(
                "iam.role_credentials_ttl_secs must be between 1 and 43200".into(),
            ));
        }
        let s = &self.sessions;
        if s.idle_timeout_secs == 0 || s.resume_window_secs == 0 || s.agent_attach_timeout_secs == 0
        {
            return Err(GatewayError::Config(
                "sessions.idle_timeout_secs, resume_window_secs and agent_attach_timeout_secs must be > 0".into(),
            ));
        }
        if s.max_session_duration_secs == Some(0) {
            return Err(GatewayError::Config(
                "sessions.max_session_duration_secs must be > 0 (omit it to disable)".into(),
            ));
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_path() {
        let err = Config::from_toml("[server]\nlisen = \"1.2.3.4:5\"\n").unwrap_err();
        assert!(err.to_string().contains("server.lisen"), "{err}");
    }

    #[test]
    fn partial_file_keeps_defaults() {
        let c = Config::from_toml("[aws]\nregion = \"eu-west-1\"\n").unwrap();
        assert_eq!(c.aws.region, "eu-west-1");
        assert_eq!(c.aws.account_id, "123456789012");
    }

    #[test]
    fn session_limits_parse_and_resolve() {
        let c = Config::from_toml(
            "[sessions]\nmax_per_target = 3\nidle_timeout_secs = 5\n[sessions.per_target]\n\"mi-00000000000000001\" = 1\n[[sessions.per_tag]]\nkey = \"Environment\"\nvalue = \"prod\"\nmax = 2\n",
        )
        .unwrap();
        c.validate().unwrap();
        let prod = [crate::store::Tag {
            key: "Environment".into(),
            value: "prod".into(),
        }];
        assert_eq!(c.sessions.limit_for("mi-00000000000000001", &prod), 1);
        assert_eq!(c.sessions.limit_for("mi-x", &prod), 2);
        assert_eq!(c.sessions.limit_for("mi-x", &[]), 3);
        assert_eq!(c.sessions.idle_timeout_secs, 5);
        assert_eq!(Config::default().sessions.max_per_target, 2);
        // Round trip through the printed form.
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn insecure_requires_loopback() {
        let mut c = Config::default();
        c.server.insecure_http = true;
        c.server.listen = "0.0.0.0:1".parse().unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn relay_byte_budget_must_fit_a_semaphore() {
        let mut c = Config::default();
        assert_eq!(c.limits.relay_queue(), (1024, 32 << 20));
        for bad in [0, 1 << 32] {
            c.limits.relay_buffer_bytes = bad;
            assert!(c.validate().is_err(), "{bad}");
        }
        let mut c = Config::default();
        assert_eq!(c.limits.relay_memory(), 1 << 30);
        for bad in [0, 1 << 32] {
            c.limits.relay_memory_bytes = bad;
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn write_stall_is_bounded() {
        let mut c = Config::default();
        assert_eq!(c.limits.write_stall(), std::time::Duration::from_secs(30));
        for bad in [0, 3601] {
            c.limits.write_stall_secs = bad;
            assert!(c.validate().is_err(), "{bad}");
        }
        c.limits.write_stall_secs = 1;
        assert!(c.validate().is_ok());
    }
}
