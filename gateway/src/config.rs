//! The configuration tree. Defaults (documented on each field) apply when the
//! TOML file or a command-line flag does not set a value. Unknown keys are
//! rejected, naming the key's path.

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
    /// Largest WebSocket message accepted, bytes. Default 2 MiB.
    pub max_message_bytes: usize,
    /// Lifetime of an unused session/channel token, seconds. Default 600.
    pub token_ttl_secs: u64,
    /// Largest HTTP request body, bytes. Default 1 MiB.
    pub max_body_bytes: usize,
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

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            relay_buffer_frames: 1024,
            max_message_bytes: 2 << 20,
            token_ttl_secs: 600,
            max_body_bytes: 1 << 20,
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
    fn insecure_requires_loopback() {
        let mut c = Config::default();
        c.server.insecure_http = true;
        c.server.listen = "0.0.0.0:1".parse().unwrap();
        assert!(c.validate().is_err());
    }
}
