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

/// Looks up `name` (default: the shell document) and validates `params`.
pub fn resolve(
    name: Option<&str>,
    params: Option<Map<String, Value>>,
) -> Result<Resolved, ApiError> {
    let name = name.unwrap_or(SHELL);
    let doc = BUILTINS.iter().find(|d| d.name == name).ok_or_else(|| {
        ApiError::new(
            "InvalidDocument",
            format!("Document {name} does not exist or is not a Session document."),
        )
    })?;
    let mut given = BTreeMap::new();
    for (k, v) in params.unwrap_or_default() {
        if !doc.params.iter().any(|p| p.name == k) {
            let known: Vec<&str> = doc.params.iter().map(|p| p.name).collect();
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
    for p in doc.params {
        let v = match (given.remove(p.name), p.default) {
            (Some(v), _) => v,
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(invalid(format!(
                    "Parameter {} is required by document {name}.",
                    p.name
                )))
            }
        };
        match p.name {
            "portNumber" => check_port(p.name, &v, false)?,
            "localPortNumber" => check_port(p.name, &v, true)?,
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
        resolved.insert(p.name.to_string(), v);
    }
    let mut props = Map::new();
    for (k, t) in doc.properties {
        props.insert((*k).to_string(), Value::String(substitute(t, &resolved)));
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
    Ok(Resolved {
        name: name.to_string(),
        document: SessionDocument {
            schema_version: "1.0".into(),
            description: doc.description.into(),
            session_type: doc.session_type.into(),
            inputs: json!({}),
            parameters: Value::Object(param_defs),
            properties: Value::Object(props),
        },
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
    fn substitution() {
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), "x".to_string());
        assert_eq!(substitute("{{ a }}-{{a}}-{{ b }}", &m), "x-x-{{ b }}");
    }
}
