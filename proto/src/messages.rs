//! JSON payloads carried on the control and data channels (spec §2.1, §3, §8).
//! Field names follow the Go structs of the public agent and plugin exactly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Payload of an `acknowledge` frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledge {
    #[serde(rename = "AcknowledgedMessageType")]
    pub message_type: String,
    #[serde(rename = "AcknowledgedMessageId")]
    pub message_id: String,
    #[serde(rename = "AcknowledgedMessageSequenceNumber")]
    pub sequence_number: i64,
    #[serde(rename = "IsSequentialMessage")]
    pub is_sequential: bool,
}

/// First text frame a client (plugin or airlock) sends on its data channel.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OpenDataChannel {
    pub message_schema_version: String,
    pub request_id: String,
    pub token_value: String,
    /// Set by the agent side only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_instance_id: Option<String>,
    #[serde(default)]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
}

impl std::fmt::Debug for OpenDataChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenDataChannel")
            .field("request_id", &self.request_id)
            .field("token_value", &"<redacted>")
            .field("client_instance_id", &self.client_instance_id)
            .field("client_version", &self.client_version)
            .finish()
    }
}

/// First text frame the agent sends on its control channel. The `Airlock*`
/// fields are an extension a stock agent omits.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OpenControlChannel {
    #[serde(default)]
    pub cookie: Option<String>,
    pub message_schema_version: String,
    pub request_id: String,
    pub token_value: String,
    pub agent_version: String,
    pub platform_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "IPAddress")]
    pub ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_version: Option<String>,
    /// Airlock agents list the sessions they are running, so a gateway can
    /// fail at once the sessions an agent lost by restarting (instead of
    /// waiting out the resume window). Absent from stock agents.
    #[serde(
        rename = "AirlockRunningSessions",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub running_sessions: Option<Vec<String>>,
}

impl std::fmt::Debug for OpenControlChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenControlChannel")
            .field("request_id", &self.request_id)
            .field("token_value", &"<redacted>")
            .field("agent_version", &self.agent_version)
            .field("platform_type", &self.platform_type)
            .finish()
    }
}

/// Body of the signed POST that precedes a control or data channel
/// (`/v1/control-channel/<id>`, `/v1/data-channel/<session>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateChannelRequest {
    pub message_schema_version: String,
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// `channel_closed` payload (spec §3.4, §8.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChannelClosed {
    pub message_id: String,
    pub created_date: String,
    #[serde(default)]
    pub destination_id: String,
    pub session_id: String,
    pub message_type: String,
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Airlock gateways say how the session ended (`Terminated`, `Failed`,
    /// ...), so a client can tell a failed session from a finished one.
    /// Stock peers ignore the member.
    #[serde(
        rename = "AirlockSessionStatus",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub airlock_session_status: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    Connected,
    Terminating,
}

/// `agent_session_state` payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentSessionState {
    pub schema_version: u32,
    pub session_state: SessionState,
    pub session_id: String,
}

/// Envelope of the `interactive_shell` control message; `content` is a JSON
/// string holding a [`StartSessionTask`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskEnvelope {
    pub content: String,
    pub task_id: String,
    #[serde(default)]
    pub topic: String,
    pub schema_version: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StartSessionTask {
    pub document_name: String,
    pub session_id: String,
    #[serde(default)]
    pub run_as_user: String,
    pub session_owner: String,
    /// Scalar strings, already resolved against the document's defaults.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    pub document_content: SessionDocument,
}

/// A Session document (schema 1.0) as the agent receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionDocument {
    pub schema_version: String,
    #[serde(default)]
    pub description: String,
    /// Standard_Stream, InteractiveCommands, NonInteractiveCommands, Port.
    pub session_type: String,
    #[serde(default)]
    pub inputs: serde_json::Value,
    #[serde(default)]
    pub parameters: serde_json::Value,
    #[serde(default)]
    pub properties: serde_json::Value,
}

/// `agent_task_complete` payload (spec §8.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentTaskComplete {
    pub schema_version: u32,
    pub task_id: String,
    pub topic: String,
    pub final_task_status: String,
    #[serde(default)]
    pub is_routing_failure: bool,
    #[serde(default)]
    pub aws_account_id: String,
    pub instance_id: String,
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub s3_bucket: String,
    #[serde(default)]
    pub s3_url_suffix: String,
    #[serde(default)]
    pub cwl_group: String,
    #[serde(default)]
    pub cwl_stream: String,
    #[serde(default)]
    pub retry_number: u32,
}

/// `agent_task_acknowledge` payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentTaskAcknowledge {
    pub schema_version: u32,
    pub message_id: String,
    pub task_id: String,
    pub topic: String,
}

/// Terminal size payload (PayloadType Size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    pub cols: u32,
    pub rows: u32,
}

/// `ExitCode` payload text: `EXIT_CODE: <n>`.
pub fn format_exit_code(code: i32) -> String {
    format!("EXIT_CODE: {code}")
}

pub fn parse_exit_code(payload: &[u8]) -> Option<i32> {
    let text = std::str::from_utf8(payload).ok()?;
    text.trim().strip_prefix("EXIT_CODE:")?.trim().parse().ok()
}
