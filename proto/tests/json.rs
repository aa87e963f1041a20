//! The spec's example payloads parse into the message types and serialize
//! back to the same JSON.

use airlock_proto::handshake::*;
use airlock_proto::messages::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// Parses `text`, re-serializes, and checks the JSON value survived.
fn round_trip<T: Serialize + DeserializeOwned>(text: &str) -> T {
    let parsed: T = serde_json::from_str(text).unwrap();
    let back: Value = serde_json::to_value(&parsed).unwrap();
    let original: Value = serde_json::from_str(text).unwrap();
    assert_eq!(back, original);
    parsed
}

#[test]
fn acknowledge_matches_spec_byte_for_byte() {
    let text = r#"{"AcknowledgedMessageType":"output_stream_data","AcknowledgedMessageId":"dd01e56b-ff48-483e-a508-b5f073f31b16","AcknowledgedMessageSequenceNumber":5,"IsSequentialMessage":true}"#;
    let ack: Acknowledge = round_trip(text);
    assert_eq!(ack.sequence_number, 5);
    // Go struct order is kept.
    assert_eq!(serde_json::to_string(&ack).unwrap(), text);
}

#[test]
fn open_data_channel_client_and_agent_forms() {
    let client: OpenDataChannel = round_trip(
        r#"{"MessageSchemaVersion":"1.0","RequestId":"r1","TokenValue":"s3cr3t-tv","ClientId":"c1","ClientVersion":"1.2.677.0"}"#,
    );
    assert_eq!(client.client_version.as_deref(), Some("1.2.677.0"));
    assert!(
        !format!("{client:?}").contains("s3cr3t-tv"),
        "token redacted in Debug"
    );
    let agent: OpenDataChannel = round_trip(
        r#"{"MessageSchemaVersion":"1.0","RequestId":"r2","TokenValue":"t","ClientInstanceId":"mi-0123456789abcdef0","ClientId":""}"#,
    );
    assert_eq!(
        agent.client_instance_id.as_deref(),
        Some("mi-0123456789abcdef0")
    );
}

#[test]
fn open_control_channel_parses_stock_agent_frame() {
    let text = r#"{"Cookie":null,"MessageSchemaVersion":"1.0","RequestId":"r","TokenValue":"secret","AgentVersion":"3.3.987.0","PlatformType":"linux"}"#;
    let open: OpenControlChannel = round_trip(text);
    assert_eq!(open.platform_type, "linux");
    assert!(!format!("{open:?}").contains("secret"));
}

#[test]
fn create_channel_request_forms() {
    let ctl: CreateChannelRequest = round_trip(r#"{"MessageSchemaVersion":"1.0","RequestId":"r"}"#);
    assert_eq!(ctl.client_id, None);
    let data: CreateChannelRequest =
        round_trip(r#"{"MessageSchemaVersion":"1.0","RequestId":"r","ClientId":""}"#);
    assert_eq!(data.client_id.as_deref(), Some(""));
}

#[test]
fn channel_closed_data_and_control_forms() {
    let c: ChannelClosed = round_trip(
        r#"{"MessageId":"m","CreatedDate":"2024-01-01T00:00:00Z","DestinationId":"i-0123456789abcdef0","SessionId":"s","MessageType":"channel_closed","SchemaVersion":1,"Output":"optional reason text"}"#,
    );
    assert_eq!(c.output.as_deref(), Some("optional reason text"));
    let ctl: ChannelClosed = serde_json::from_str(
        r#"{"MessageType":"channel_closed","MessageId":"m","SessionId":"s","SchemaVersion":1,"CreatedDate":"d"}"#,
    )
    .unwrap();
    assert_eq!(ctl.destination_id, "");
}

#[test]
fn agent_session_state_round_trips() {
    let s: AgentSessionState =
        round_trip(r#"{"SchemaVersion":1,"SessionState":"Terminating","SessionId":"admin-0123"}"#);
    assert_eq!(s.session_state, SessionState::Terminating);
}

#[test]
fn interactive_shell_envelope_holds_start_session_task() {
    let text = r#"{"Content":"{\"DocumentName\":\"SSM-SessionManagerRunShell\",\"SessionId\":\"alice-07e3\",\"RunAsUser\":\"\",\"SessionOwner\":\"arn:aws:iam::111122223333:user/alice\",\"Parameters\":{},\"DocumentContent\":{\"schemaVersion\":\"1.0\",\"description\":\"d\",\"sessionType\":\"Standard_Stream\",\"inputs\":{\"s3BucketName\":\"\",\"kmsKeyId\":\"\",\"runAsEnabled\":false},\"parameters\":{},\"properties\":{}}}","TaskId":"alice-07e3","Topic":"aws.ssm.sendCommand","SchemaVersion":1}"#;
    let env: TaskEnvelope = round_trip(text);
    let task: StartSessionTask = round_trip(&env.content);
    assert_eq!(task.session_id, "alice-07e3");
    assert_eq!(task.document_content.session_type, "Standard_Stream");
    assert_eq!(task.document_content.inputs["runAsEnabled"], json!(false));
}

#[test]
fn agent_task_complete_and_acknowledge() {
    let c: AgentTaskComplete = round_trip(
        r#"{"SchemaVersion":1,"TaskId":"s","Topic":"agent_task_complete","FinalTaskStatus":"Success","IsRoutingFailure":false,"AwsAccountId":"","InstanceId":"mi-1","Output":"o","S3Bucket":"","S3UrlSuffix":"","CwlGroup":"","CwlStream":"s","RetryNumber":0}"#,
    );
    assert_eq!(c.final_task_status, "Success");
    let a: AgentTaskAcknowledge =
        round_trip(r#"{"SchemaVersion":1,"MessageId":"m","TaskId":"t","Topic":"x"}"#);
    assert_eq!(a.task_id, "t");
}

#[test]
fn terminal_size_and_exit_code() {
    let s: TerminalSize = round_trip(r#"{"cols":80,"rows":24}"#);
    assert_eq!(s, TerminalSize { cols: 80, rows: 24 });
    assert_eq!(parse_exit_code(format_exit_code(-3).as_bytes()), Some(-3));
    assert_eq!(parse_exit_code(b"EXIT_CODE: 42\n"), Some(42));
    assert_eq!(parse_exit_code(b"nope"), None);
    assert_eq!(parse_exit_code(&[0xff, 0xfe]), None);
}

#[test]
fn handshake_request_from_spec() {
    let req: HandshakeRequest = round_trip(
        r#"{"AgentVersion":"3.3.987.0","RequestedClientActions":[
 {"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":{"portNumber":"5432","type":"LocalPortForwarding","localPortNumber":"0","host":"db.internal"}}},
 {"ActionType":"KMSEncryption","ActionParameters":{"KMSKeyId":"arn:aws:kms:us-east-1:111122223333:key/x","Challenge":"AAAAAAAAAAAAAAAAAAAAAA=="}}]}"#,
    );
    assert_eq!(
        req.requested_client_actions[0].action_type,
        ACTION_SESSION_TYPE
    );
    assert_eq!(
        req.requested_client_actions[1].action_type,
        ACTION_KMS_ENCRYPTION
    );
    let params: SessionTypeParameters =
        serde_json::from_value(req.requested_client_actions[0].action_parameters.clone()).unwrap();
    assert_eq!(params.session_type, "Port");
    assert_eq!(params.properties["portNumber"], json!("5432"));
}

#[test]
fn handshake_response_from_spec() {
    let resp: HandshakeResponse = round_trip(
        r#"{"ClientVersion":"1.2.677.0","ProcessedClientActions":[
 {"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""},
 {"ActionType":"KMSEncryption","ActionStatus":1,"ActionResult":{"KMSCipherTextKey":"a2V5","KMSCipherTextHash":null},"Error":""}],
 "Errors":null}"#,
    );
    assert_eq!(resp.processed_client_actions.len(), 2);
    assert_eq!(
        resp.processed_client_actions[0].action_status,
        ActionStatus::Success as i32
    );
    assert_eq!(resp.errors, None);
}

#[test]
fn handshake_complete_and_challenge() {
    let c: HandshakeComplete = round_trip(
        r#"{"HandshakeTimeToComplete":123456789,"CustomerMessage":"This session is encrypted using AWS KMS."}"#,
    );
    assert_eq!(c.handshake_time_to_complete, 123_456_789);
    let ch: EncChallenge = round_trip(r#"{"Challenge":"YWJj"}"#);
    assert_eq!(ch.challenge, "YWJj");
}

#[test]
fn airlock_capabilities_action_round_trips() {
    let caps = Capabilities {
        features: vec![capability::EXIT_CODE.to_string()],
        max_payload: 65536,
    };
    let action = RequestedClientAction {
        action_type: ACTION_AIRLOCK_CAPABILITIES.to_string(),
        action_parameters: serde_json::to_value(&caps).unwrap(),
    };
    let text = serde_json::to_string(&action).unwrap();
    assert_eq!(
        text,
        r#"{"ActionType":"AirlockCapabilities","ActionParameters":{"Features":["exit_code"],"MaxPayload":65536}}"#
    );
    let back: RequestedClientAction = serde_json::from_str(&text).unwrap();
    let caps_back: Capabilities = serde_json::from_value(back.action_parameters).unwrap();
    assert_eq!(caps_back, caps);
    // A stock plugin's quirky answer to an unknown action still parses.
    let quirk: ProcessedClientAction = serde_json::from_str(
        r#"{"ActionType":"AirlockCapabilities","ActionStatus":0,"ActionResult":3,"Error":""}"#,
    )
    .unwrap();
    assert_eq!(quirk.action_status, 0);
    assert!(serde_json::from_value::<Capabilities>(quirk.action_result).is_err());
}
