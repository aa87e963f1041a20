//! Handshake payloads (spec §4.3) plus Airlock's capability action.
//!
//! A stock plugin answers an unknown action with status 0 and `3` in the
//! result; Airlock's agent treats that as "no extra capabilities", so the
//! capability action is always safe to offer.

use serde::{Deserialize, Serialize};

pub const ACTION_SESSION_TYPE: &str = "SessionType";
pub const ACTION_KMS_ENCRYPTION: &str = "KMSEncryption";
/// Airlock's own action: lists features both ends support beyond stock.
pub const ACTION_AIRLOCK_CAPABILITIES: &str = "AirlockCapabilities";

/// Capability names offered in [`ACTION_AIRLOCK_CAPABILITIES`].
pub mod capability {
    /// Agent sends an ExitCode payload when a shell ends.
    pub const EXIT_CODE: &str = "exit_code";
    /// Large frames and a flow-control window.
    pub const FAST_PATH: &str = "fast_path";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionStatus {
    Success = 1,
    Failed = 2,
    Unsupported = 3,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestedClientAction {
    pub action_type: String,
    pub action_parameters: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeRequest {
    pub agent_version: String,
    pub requested_client_actions: Vec<RequestedClientAction>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessedClientAction {
    pub action_type: String,
    /// 1 Success, 2 Failed, 3 Unsupported; a stock plugin leaves 0 for
    /// actions it does not know.
    pub action_status: i32,
    #[serde(default)]
    pub action_result: serde_json::Value,
    #[serde(default)]
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeResponse {
    pub client_version: String,
    pub processed_client_actions: Vec<ProcessedClientAction>,
    #[serde(default)]
    pub errors: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeComplete {
    /// Nanoseconds.
    pub handshake_time_to_complete: i64,
    #[serde(default)]
    pub customer_message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncChallenge {
    pub challenge: String,
}

/// Parameters of the SessionType action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionTypeParameters {
    pub session_type: String,
    #[serde(default)]
    pub properties: serde_json::Value,
}

/// Parameters / result of the Airlock capability action.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Capabilities {
    pub features: Vec<String>,
    /// Largest payload this end accepts per frame.
    #[serde(default)]
    pub max_payload: usize,
}
