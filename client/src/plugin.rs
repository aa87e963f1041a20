//! The `session-manager-plugin` argv contract (spec §6).

use serde::Deserialize;

use crate::CLIENT_VERSION;

pub const BANNER: &str =
    "The Session Manager plugin was installed successfully. Use the AWS CLI to start a session.";
pub const RESPONSE_ENV_PREFIX: &str = "AWS_SSM_START_SESSION_RESPONSE";

/// What StartSession / ResumeSession return; extra keys are ignored.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionInfo {
    pub session_id: String,
    #[serde(default)]
    pub token_value: String,
    pub stream_url: String,
    /// How long the gateway keeps a dropped session for us (Airlock
    /// gateways say so; absent through the AWS CLI).
    #[serde(rename = "AirlockResumeWindowSeconds", default)]
    pub resume_window_secs: Option<u64>,
}

impl SessionInfo {
    /// How long to keep trying to get back into the session after a drop.
    pub fn resume_window(&self) -> std::time::Duration {
        self.resume_window_secs
            .map(|s| std::time::Duration::from_secs(s.clamp(1, 24 * 3600)))
            .unwrap_or(crate::session::RESUME_GIVE_UP)
    }
}

impl std::fmt::Debug for SessionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionInfo")
            .field("session_id", &self.session_id)
            .field("token_value", &"<redacted>")
            .field("stream_url", &self.stream_url)
            .field("resume_window_secs", &self.resume_window_secs)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStart {
    pub session: SessionInfo,
    pub region: String,
    /// None for `""` and in legacy mode.
    pub profile: Option<String>,
    /// `Target` from the request parameters; None in legacy mode.
    pub target: Option<String>,
    /// `DocumentName` from the request parameters (port documents take the
    /// port-session path).
    pub document_name: Option<String>,
    pub endpoint: Option<String>,
    pub legacy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginInvocation {
    Banner,
    Version,
    Start(Box<PluginStart>),
    /// Print the message and exit 1.
    Fail(String),
}

impl PluginInvocation {
    pub fn version_line() -> &'static str {
        CLIENT_VERSION
    }
}

/// Parses plugin argv (`args[0]` = program). `env` looks a variable up;
/// `unset` is called with the name of the response variable once read.
pub fn parse_plugin_args(
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
    mut unset: impl FnMut(&str),
) -> PluginInvocation {
    let rest = args.get(1..).unwrap_or(&[]);
    match rest {
        [] => return PluginInvocation::Banner,
        [v] if v == "--version" || v == "version" => return PluginInvocation::Version,
        _ => {}
    }
    if rest.len() < 3 {
        return PluginInvocation::Fail("Unknown operation".into());
    }
    let (first, region, operation) = (&rest[0], &rest[1], &rest[2]);
    if operation != "StartSession" {
        return PluginInvocation::Fail("Invalid Operation".into());
    }
    let response_json = if first.starts_with(RESPONSE_ENV_PREFIX) {
        match env(first) {
            Some(v) => {
                unset(first);
                v
            }
            None => {
                return PluginInvocation::Fail(format!(
                    "Cannot perform start session: environment variable {first} is not set"
                ))
            }
        }
    } else {
        first.clone()
    };
    let session: SessionInfo = match serde_json::from_str(&response_json) {
        Ok(s) => s,
        Err(e) => {
            return PluginInvocation::Fail(format!(
                "Cannot perform start session: invalid StartSession response: {e}"
            ))
        }
    };
    let legacy = rest.len() == 3;
    let profile = rest.get(3).filter(|p| !p.is_empty()).cloned();
    let document_name = rest
        .get(4)
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .and_then(|v| v.get("DocumentName")?.as_str().map(String::from));
    let target = match rest.get(4) {
        None => None,
        Some(params) => {
            let v: serde_json::Value = match serde_json::from_str(params) {
                Ok(v) => v,
                Err(e) => {
                    return PluginInvocation::Fail(format!(
                        "Cannot perform start session: invalid request parameters: {e}"
                    ))
                }
            };
            match v.get("Target").and_then(|t| t.as_str()) {
                Some(t) => Some(t.to_string()),
                None => return PluginInvocation::Fail(
                    "Cannot perform start session: Target is missing from the request parameters"
                        .into(),
                ),
            }
        }
    };
    let endpoint = rest.get(5).filter(|e| !e.is_empty()).cloned();
    PluginInvocation::Start(Box::new(PluginStart {
        session,
        region: region.clone(),
        profile,
        target,
        document_name,
        endpoint,
        legacy,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESP: &str = r#"{"SessionId":"admin-0123456789abcdef0","TokenValue":"tok","StreamUrl":"wss://h/v1/data-channel/admin-0123456789abcdef0?role=publish_subscribe","ResponseMetadata":{"RequestId":"x"}}"#;

    #[test]
    fn resume_window_comes_from_the_gateway_or_defaults() {
        let stock: SessionInfo = serde_json::from_str(RESP).unwrap();
        assert_eq!(stock.resume_window(), crate::session::RESUME_GIVE_UP);
        let ours: SessionInfo = serde_json::from_str(
            r#"{"SessionId":"s","TokenValue":"t","StreamUrl":"wss://h/x","AirlockResumeWindowSeconds":600}"#,
        )
        .unwrap();
        assert_eq!(ours.resume_window(), std::time::Duration::from_secs(600));
        let zero: SessionInfo = serde_json::from_str(
            r#"{"SessionId":"s","StreamUrl":"wss://h/x","AirlockResumeWindowSeconds":0}"#,
        )
        .unwrap();
        assert_eq!(zero.resume_window(), std::time::Duration::from_secs(1));
    }

    fn args(a: &[&str]) -> Vec<String> {
        std::iter::once("session-manager-plugin")
            .chain(a.iter().copied())
            .map(String::from)
            .collect()
    }

    #[test]
    fn banner_and_version() {
        assert_eq!(
            parse_plugin_args(&args(&[]), |_| None, |_| {}),
            PluginInvocation::Banner
        );
        assert_eq!(
            parse_plugin_args(&args(&["--version"]), |_| None, |_| {}),
            PluginInvocation::Version
        );
        // The AWS CLI requires > 1.2.497.0 to use the env-var form.
        let parts: Vec<u32> = CLIENT_VERSION
            .split('.')
            .map(|p| p.parse().unwrap())
            .collect();
        assert!(parts > vec![1, 2, 497, 0]);
    }

    #[test]
    fn env_var_form_reads_then_unsets() {
        let mut unset = Vec::new();
        let inv = parse_plugin_args(
            &args(&[
                "AWS_SSM_START_SESSION_RESPONSE",
                "us-east-1",
                "StartSession",
                "",
                r#"{"Target":"mi-0123456789abcdef0"}"#,
                "https://127.0.0.1:8443",
            ]),
            |k| (k == "AWS_SSM_START_SESSION_RESPONSE").then(|| RESP.to_string()),
            |k| unset.push(k.to_string()),
        );
        let PluginInvocation::Start(s) = inv else {
            panic!("{inv:?}")
        };
        assert_eq!(unset, vec!["AWS_SSM_START_SESSION_RESPONSE"]);
        assert_eq!(s.session.session_id, "admin-0123456789abcdef0");
        assert_eq!(s.session.token_value, "tok");
        assert_eq!(s.region, "us-east-1");
        assert_eq!(s.profile, None);
        assert_eq!(s.target.as_deref(), Some("mi-0123456789abcdef0"));
        assert_eq!(s.document_name, None);
        assert_eq!(s.endpoint.as_deref(), Some("https://127.0.0.1:8443"));
        assert!(!s.legacy);
    }

    #[test]
    fn json_form_with_profile() {
        let inv = parse_plugin_args(
            &args(&[
                RESP,
                "eu-west-1",
                "StartSession",
                "dev",
                r#"{"Target":"i-1"}"#,
                "https://e",
            ]),
            |_| None,
            |_| {},
        );
        let PluginInvocation::Start(s) = inv else {
            panic!("{inv:?}")
        };
        assert_eq!(s.profile.as_deref(), Some("dev"));
        assert_eq!(s.region, "eu-west-1");
    }

    #[test]
    fn legacy_four_arg_form() {
        let inv = parse_plugin_args(
            &args(&[RESP, "us-east-1", "StartSession"]),
            |_| None,
            |_| {},
        );
        let PluginInvocation::Start(s) = inv else {
            panic!("{inv:?}")
        };
        assert!(s.legacy);
        assert_eq!(s.target, None);
        assert_eq!(s.endpoint, None);
    }

    #[test]
    fn bad_forms() {
        assert_eq!(
            parse_plugin_args(&args(&[RESP, "us-east-1", "Other"]), |_| None, |_| {}),
            PluginInvocation::Fail("Invalid Operation".into())
        );
        assert!(matches!(
            parse_plugin_args(&args(&[RESP, "r"]), |_| None, |_| {}),
            PluginInvocation::Fail(_)
        ));
        assert!(matches!(
            parse_plugin_args(
                &args(&[RESP, "r", "StartSession", "", "{}", ""]),
                |_| None,
                |_| {}
            ),
            PluginInvocation::Fail(_)
        ));
        assert!(matches!(
            parse_plugin_args(
                &args(&["AWS_SSM_START_SESSION_RESPONSE", "r", "StartSession"]),
                |_| None,
                |_| {}
            ),
            PluginInvocation::Fail(_)
        ));
    }
}
