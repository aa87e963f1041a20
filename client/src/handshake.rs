//! The client's answer to a HandshakeRequest (spec §4.3).

use airlock_proto::handshake::{
    capability, ActionStatus, Capabilities, HandshakeRequest, HandshakeResponse,
    ProcessedClientAction, SessionTypeParameters, ACTION_AIRLOCK_CAPABILITIES,
    ACTION_KMS_ENCRYPTION, ACTION_SESSION_TYPE,
};

use crate::CLIENT_VERSION;

/// Capabilities this client implements.
pub const SUPPORTED_FEATURES: &[&str] = &[capability::EXIT_CODE];
/// Payload size this client offers to receive (stock size; fast path not implemented).
pub const MAX_PAYLOAD: usize = 1024;

/// Session types the plugin UI accepts; all are driven as a byte stream
/// between the terminal (or stdio) and the channel.
pub const SESSION_TYPES: &[&str] = &[
    "Standard_Stream",
    "InteractiveCommands",
    "NonInteractiveCommands",
    "Port",
];

#[derive(Debug, Clone, PartialEq)]
pub struct HandshakeOutcome {
    pub response: HandshakeResponse,
    pub session_type: Option<String>,
    /// Features both ends agreed on.
    pub features: Vec<String>,
}

fn action(
    action_type: &str,
    status: ActionStatus,
    result: serde_json::Value,
    error: &str,
) -> ProcessedClientAction {
    ProcessedClientAction {
        action_type: action_type.to_string(),
        action_status: status as i32,
        action_result: result,
        error: error.to_string(),
    }
}

pub fn respond(request: &HandshakeRequest) -> HandshakeOutcome {
    let mut processed = Vec::with_capacity(request.requested_client_actions.len());
    let mut session_type = None;
    let mut features = Vec::new();
    for a in &request.requested_client_actions {
        let p = match a.action_type.as_str() {
            ACTION_SESSION_TYPE => {
                match serde_json::from_value::<SessionTypeParameters>(a.action_parameters.clone()) {
                    Ok(params) if SESSION_TYPES.contains(&params.session_type.as_str()) => {
                        session_type = Some(params.session_type);
                        action(
                            ACTION_SESSION_TYPE,
                            ActionStatus::Success,
                            serde_json::Value::Null,
                            "",
                        )
                    }
                    Ok(params) => action(
                        ACTION_SESSION_TYPE,
                        ActionStatus::Failed,
                        serde_json::Value::Null,
                        &format!("Unknown session type {}", params.session_type),
                    ),
                    Err(e) => action(
                        ACTION_SESSION_TYPE,
                        ActionStatus::Failed,
                        serde_json::Value::Null,
                        &format!("invalid SessionType parameters: {e}"),
                    ),
                }
            }
            ACTION_AIRLOCK_CAPABILITIES => {
                let offered: Capabilities =
                    serde_json::from_value(a.action_parameters.clone()).unwrap_or_default();
                features = offered
                    .features
                    .iter()
                    .filter(|f| SUPPORTED_FEATURES.contains(&f.as_str()))
                    .cloned()
                    .collect();
                let result = Capabilities {
                    features: features.clone(),
                    max_payload: MAX_PAYLOAD,
                };
                action(
                    ACTION_AIRLOCK_CAPABILITIES,
                    ActionStatus::Success,
                    serde_json::to_value(result).unwrap_or(serde_json::Value::Null),
                    "",
                )
            }
            ACTION_KMS_ENCRYPTION => action(
                ACTION_KMS_ENCRYPTION,
                ActionStatus::Failed,
                serde_json::Value::Null,
                "KMS encryption not supported yet",
            ),
            other => action(
                other,
                ActionStatus::Unsupported,
                serde_json::Value::Null,
                "",
            ),
        };
        processed.push(p);
    }
    HandshakeOutcome {
        response: HandshakeResponse {
            client_version: CLIENT_VERSION.to_string(),
            processed_client_actions: processed,
            errors: None,
        },
        session_type,
        features,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(actions: serde_json::Value) -> HandshakeRequest {
        serde_json::from_value(
            json!({"AgentVersion":"3.3.987.0","RequestedClientActions": actions}),
        )
        .unwrap()
    }

    #[test]
    fn shell_with_capabilities_matches_stock_field_names() {
        let out = respond(&req(json!([
            {"ActionType":"SessionType","ActionParameters":{"SessionType":"Standard_Stream","Properties":null}},
            {"ActionType":"AirlockCapabilities","ActionParameters":{"Features":["exit_code","fast_path"],"MaxPayload":65536}}
        ])));
        assert_eq!(out.features, vec!["exit_code"]);
        assert_eq!(out.session_type.as_deref(), Some("Standard_Stream"));
        let v = serde_json::to_value(&out.response).unwrap();
        assert_eq!(
            v,
            json!({"ClientVersion":"1.2.700.0","ProcessedClientActions":[
                {"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""},
                {"ActionType":"AirlockCapabilities","ActionStatus":1,"ActionResult":{"Features":["exit_code"],"MaxPayload":1024},"Error":""}
            ],"Errors":null})
        );
    }

    #[test]
    fn kms_fails_unknown_unsupported_bad_type_fails() {
        let out = respond(&req(json!([
            {"ActionType":"SessionType","ActionParameters":{"SessionType":"Bogus","Properties":null}},
            {"ActionType":"KMSEncryption","ActionParameters":{"KMSKeyId":"k","Challenge":"c"}},
            {"ActionType":"Whatever","ActionParameters":{}}
        ])));
        let a = &out.response.processed_client_actions;
        assert_eq!(a[0].action_status, 2);
        assert_eq!(a[1].action_status, 2);
        assert_eq!(a[1].error, "KMS encryption not supported yet");
        assert_eq!(a[2].action_status, 3);
        assert_eq!(a[2].action_type, "Whatever");
        assert!(out.features.is_empty());
        assert_eq!(out.session_type, None);
    }

    #[test]
    fn port_accepted() {
        let out = respond(&req(json!([
            {"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":{"portNumber":"22"}}}
        ])));
        assert_eq!(out.response.processed_client_actions[0].action_status, 1);
    }
}
