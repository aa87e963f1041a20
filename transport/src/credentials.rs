//! Credentials the way the AWS SDKs find them: `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, then the shared credentials
//! file (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`) and the
//! config file (`AWS_CONFIG_FILE`, default `~/.aws/config`, `[profile x]`
//! sections) for the profile (`--profile`, `AWS_PROFILE`, `default`).
//! Region: `--region`, `AWS_REGION`, `AWS_DEFAULT_REGION`, profile `region`.
//!
//! As in the AWS CLI, an explicit `--profile` wins over credentials in the
//! environment; `AWS_PROFILE` does not.

use std::collections::HashMap;
use std::path::PathBuf;

use airlock_sigv4::{Credentials, SecretKey};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "Unable to locate credentials. You can configure credentials by running \"aws configure\"."
    )]
    NotFound,
    #[error("The config profile ({0}) could not be found")]
    ProfileNotFound(String),
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
}

/// Resolves credentials for `profile` (None = env `AWS_PROFILE` or default).
pub fn resolve_credentials(profile: Option<&str>) -> Result<Credentials, CredentialsError> {
    resolve_credentials_with(profile, &process_env)
}

/// Resolves the region; None when nothing names one.
pub fn resolve_region(cli_region: Option<&str>, profile: Option<&str>) -> Option<String> {
    resolve_region_with(cli_region, profile, &process_env)
}

/// Endpoint from `--endpoint-url`, `AWS_ENDPOINT_URL_SSM`, `AWS_ENDPOINT_URL`, profile `endpoint_url`.
pub fn resolve_endpoint(cli_endpoint: Option<&str>, profile: Option<&str>) -> Option<String> {
    resolve_endpoint_with(cli_endpoint, profile, &process_env)
}

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Non-empty environment variable.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn non_empty(v: Option<&str>) -> Option<String> {
    v.map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn profile_name(profile: Option<&str>, env: Env<'_>) -> String {
    non_empty(profile)
        .or_else(|| env("AWS_PROFILE"))
        .or_else(|| env("AWS_DEFAULT_PROFILE"))
        .unwrap_or_else(|| "default".to_string())
}

fn home(env: Env<'_>) -> Option<PathBuf> {
    env("HOME")
        .or_else(|| env("USERPROFILE"))
        .map(PathBuf::from)
}

fn credentials_path(env: Env<'_>) -> Option<PathBuf> {
    env("AWS_SHARED_CREDENTIALS_FILE")
        .map(|p| expand_home(&p, env))
        .or_else(|| home(env).map(|h| h.join(".aws").join("credentials")))
}

fn config_path(env: Env<'_>) -> Option<PathBuf> {
    env("AWS_CONFIG_FILE")
        .map(|p| expand_home(&p, env))
        .or_else(|| home(env).map(|h| h.join(".aws").join("config")))
}

fn expand_home(p: &str, env: Env<'_>) -> PathBuf {
    match (p.strip_prefix("~/"), home(env)) {
        (Some(rest), Some(h)) => h.join(rest),
        _ => PathBuf::from(p),
    }
}

/// Section name -> key -> value. Keys are lower-cased.
type Ini = HashMap<String, HashMap<String, String>>;

/// Reads an INI file; a missing file is an empty one.
fn read_ini(path: Option<PathBuf>) -> Result<Ini, CredentialsError> {
    let Some(path) = path else {
        return Ok(Ini::new());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(parse_ini(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ini::new()),
        Err(e) => Err(CredentialsError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// The AWS dialect: `[section]`, `key = value`, `#`/`;` comments, and nested
/// blocks (`s3 =` followed by indented lines) which are skipped.
fn parse_ini(text: &str) -> Ini {
    let mut ini = Ini::new();
    let mut section: Option<String> = None;
    let mut in_nested = false;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            in_nested = false;
            section = line
                .strip_prefix('[')
                .and_then(|l| l.split(']').next())
                .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "));
            if let Some(s) = &section {
                ini.entry(s.clone()).or_default();
            }
            continue;
        }
        let indented = raw.starts_with(' ') || raw.starts_with('\t');
        if indented && in_nested {
            continue;
        }
        let Some(name) = &section else { continue };
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim();
        in_nested = value.is_empty();
        if !in_nested {
            ini.entry(name.clone())
                .or_default()
                .insert(key, value.to_string());
        }
    }
    ini
}

/// The profile's section in each file: credentials `[name]`, config
/// `[profile name]` (or `[default]`).
struct Profile {
    credentials: Option<HashMap<String, String>>,
    config: Option<HashMap<String, String>>,
}

impl Profile {
    fn load(name: &str, env: Env<'_>) -> Result<Profile, CredentialsError> {
        let mut creds = read_ini(credentials_path(env))?;
        let mut config = read_ini(config_path(env))?;
        let credentials = creds.remove(name);
        let config = config.remove(&format!("profile {name}")).or_else(|| {
            if name == "default" {
                config.remove("default")
            } else {
                None
            }
        });
        Ok(Profile {
            credentials,
            config,
        })
    }

    fn exists(&self) -> bool {
        self.credentials.is_some() || self.config.is_some()
    }

    /// Looks `key` up in the credentials file first, then the config file.
    fn get(&self, key: &str) -> Option<String> {
        [&self.credentials, &self.config]
            .into_iter()
            .flatten()
            .find_map(|s| {
                s.get(key)
                    .map(String::as_str)
                    .and_then(|v| non_empty(Some(v)))
            })
    }

    /// Looks `key` up in the config file first, then the credentials file.
    fn get_config(&self, key: &str) -> Option<String> {
        [&self.config, &self.credentials]
            .into_iter()
            .flatten()
            .find_map(|s| {
                s.get(key)
                    .map(String::as_str)
                    .and_then(|v| non_empty(Some(v)))
            })
    }
}

fn resolve_credentials_with(
    profile: Option<&str>,
    env: Env<'_>,
) -> Result<Credentials, CredentialsError> {
    let explicit = non_empty(profile).is_some();
    if !explicit {
        if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Credentials {
                access_key_id: id,
                secret_access_key: SecretKey::new(secret),
                session_token: env("AWS_SESSION_TOKEN"),
            });
        }
    }
    let name = profile_name(profile, env);
    let p = Profile::load(&name, env)?;
    if !p.exists() {
        return Err(if name == "default" {
            CredentialsError::NotFound
        } else {
            CredentialsError::ProfileNotFound(name)
        });
    }
    match (p.get("aws_access_key_id"), p.get("aws_secret_access_key")) {
        (Some(id), Some(secret)) => Ok(Credentials {
            access_key_id: id,
            secret_access_key: SecretKey::new(secret),
            session_token: p
                .get("aws_session_token")
                .or_else(|| p.get("aws_security_token")),
        }),
        _ => Err(CredentialsError::NotFound),
    }
}

fn resolve_region_with(
    cli_region: Option<&str>,
    profile: Option<&str>,
    env: Env<'_>,
) -> Option<String> {
    if let Some(r) = non_empty(cli_region)
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
    {
        return Some(r);
    }
    let name = profile_name(profile, env);
    Profile::load(&name, env).ok()?.get_config("region")
}

fn resolve_endpoint_with(
    cli_endpoint: Option<&str>,
    profile: Option<&str>,
    env: Env<'_>,
) -> Option<String> {
    if let Some(e) = non_empty(cli_endpoint)
        .or_else(|| env("AWS_ENDPOINT_URL_SSM"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
    {
        return Some(e);
    }
    let name = profile_name(profile, env);
    Profile::load(&name, env).ok()?.get_config("endpoint_url")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    static COUNTER: AtomicU32 = AtomicU32::new(0);

    /// A temp dir holding `credentials` and `config` files, removed on drop.
    struct Fixture {
        dir: PathBuf,
    }

    impl Fixture {
        fn new(credentials: &str, config: &str) -> Fixture {
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let dir =
                std::env::temp_dir().join(format!("airlock-creds-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("credentials"), credentials).unwrap();
            std::fs::write(dir.join("config"), config).unwrap();
            Fixture { dir }
        }

        fn env<'a>(
            &'a self,
            extra: &'a [(&'a str, &'a str)],
        ) -> impl Fn(&str) -> Option<String> + 'a {
            move |name: &str| match name {
                "AWS_SHARED_CREDENTIALS_FILE" => {
                    Some(self.dir.join("credentials").display().to_string())
                }
                "AWS_CONFIG_FILE" => Some(self.dir.join("config").display().to_string()),
                _ => extra
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string()),
            }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const CREDS: &str = "# comment\n[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = secretdefault\n\n\
        [dev]\naws_access_key_id=AKIADEV\naws_secret_access_key=secretdev\naws_session_token = tok\n";
    const CONFIG: &str = "[default]\nregion = eu-west-1\ns3 =\n  region = nope\n\n[profile dev]\nregion = ap-south-1\nendpoint_url = https://gw:8443\n\
        [profile only-config]\naws_access_key_id = AKIACFG\naws_secret_access_key = secretcfg\n";

    #[test]
    fn env_keys_win_without_explicit_profile() {
        let f = Fixture::new(CREDS, CONFIG);
        let extra = [
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_SECRET_ACCESS_KEY", "secretenv"),
            ("AWS_SESSION_TOKEN", "st"),
        ];
        let env = f.env(&extra);
        let c = resolve_credentials_with(None, &env).unwrap();
        assert_eq!(c.access_key_id, "AKIAENV");
        assert_eq!(c.secret_access_key.expose(), "secretenv");
        assert_eq!(c.session_token.as_deref(), Some("st"));
        // --profile beats the environment.
        let c = resolve_credentials_with(Some("dev"), &env).unwrap();
        assert_eq!(c.access_key_id, "AKIADEV");
    }

    #[test]
    fn default_and_named_profiles() {
        let f = Fixture::new(CREDS, CONFIG);
        let env = f.env(&[]);
        let c = resolve_credentials_with(None, &env).unwrap();
        assert_eq!(c.access_key_id, "AKIADEFAULT");
        assert_eq!(c.session_token, None);
        let extra = [("AWS_PROFILE", "dev")];
        let env = f.env(&extra);
        let c = resolve_credentials_with(None, &env).unwrap();
        assert_eq!(c.access_key_id, "AKIADEV");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        let env = f.env(&[]);
        let c = resolve_credentials_with(Some("only-config"), &env).unwrap();
        assert_eq!(c.access_key_id, "AKIACFG");
    }

    #[test]
    fn missing_profile_and_missing_files() {
        let f = Fixture::new(CREDS, CONFIG);
        let env = f.env(&[]);
        assert!(matches!(
            resolve_credentials_with(Some("nope"), &env),
            Err(CredentialsError::ProfileNotFound(p)) if p == "nope"
        ));
        let env = |name: &str| match name {
            "AWS_SHARED_CREDENTIALS_FILE" => Some("/nonexistent/airlock/credentials".to_string()),
            "AWS_CONFIG_FILE" => Some("/nonexistent/airlock/config".to_string()),
            _ => None,
        };
        assert!(matches!(
            resolve_credentials_with(None, &env),
            Err(CredentialsError::NotFound)
        ));
        assert_eq!(resolve_region_with(None, None, &env), None);
    }

    #[test]
    fn region_order() {
        let f = Fixture::new(CREDS, CONFIG);
        let env = f.env(&[]);
        assert_eq!(
            resolve_region_with(None, None, &env).as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            resolve_region_with(None, Some("dev"), &env).as_deref(),
            Some("ap-south-1")
        );
        assert_eq!(
            resolve_region_with(Some("us-west-2"), Some("dev"), &env).as_deref(),
            Some("us-west-2")
        );
        let extra = [("AWS_DEFAULT_REGION", "ca-central-1")];
        let env = f.env(&extra);
        assert_eq!(
            resolve_region_with(None, None, &env).as_deref(),
            Some("ca-central-1")
        );
        let extra = [
            ("AWS_DEFAULT_REGION", "ca-central-1"),
            ("AWS_REGION", "sa-east-1"),
        ];
        let env = f.env(&extra);
        assert_eq!(
            resolve_region_with(None, None, &env).as_deref(),
            Some("sa-east-1")
        );
    }

    #[test]
    fn endpoint_order() {
        let f = Fixture::new(CREDS, CONFIG);
        let env = f.env(&[]);
        assert_eq!(resolve_endpoint_with(None, None, &env), None);
        assert_eq!(
            resolve_endpoint_with(None, Some("dev"), &env).as_deref(),
            Some("https://gw:8443")
        );
        let extra = [
            ("AWS_ENDPOINT_URL", "http://a"),
            ("AWS_ENDPOINT_URL_SSM", "http://b"),
        ];
        let env = f.env(&extra);
        assert_eq!(
            resolve_endpoint_with(None, Some("dev"), &env).as_deref(),
            Some("http://b")
        );
        assert_eq!(
            resolve_endpoint_with(Some("http://c"), None, &env).as_deref(),
            Some("http://c")
        );
    }

    #[test]
    fn ini_nested_blocks_are_skipped() {
        let ini = parse_ini(CONFIG);
        assert_eq!(
            ini["default"].get("region").map(String::as_str),
            Some("eu-west-1")
        );
        assert!(!ini["default"].contains_key("s3"));
        assert!(ini.contains_key("profile only-config"));
    }
}
