mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn signed_call_with_admin_key_works() {
    let dir = TempDir::new();
    let gw = TestGateway::start(&dir.0).await;
    let (s, v) = gw.ssm("DescribeInstanceInformation", json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["InstanceInformationList"], json!([]));
    assert!(gw.creds.access_key_id.starts_with("AKIA") && gw.creds.access_key_id.len() == 20);
    assert_eq!(gw.creds.secret_access_key.expose().len(), 40);
    gw.stop().await;
}

#[tokio::test]
async fn request_id_header_on_every_response() {
    let dir = TempDir::new();
    let gw = TestGateway::start(&dir.0).await;
    let (_, head, _) = http(
        gw.addr,
        "POST",
        "/",
        &[("host".into(), gw.addr.to_string())],
        b"{}",
    )
    .await;
    assert!(
        head.to_ascii_lowercase().contains("x-amzn-requestid:"),
        "{head}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn wrong_secret_is_invalid_signature() {
    let dir = TempDir::new();
    let gw = TestGateway::start(&dir.0).await;
    let mut bad = gw.creds.clone();
    bad.secret_access_key = airlock_sigv4::SecretKey::new("x".repeat(40));
    let (s, v) = gw
        .ssm_with("DescribeSessions", json!({"State": "Active"}), Some(&bad))
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["__type"], "InvalidSignatureException", "{v}");
    gw.stop().await;
}

#[tokio::test]
async fn unsigned_is_missing_token() {
    let dir = TempDir::new();
    let gw = TestGateway::start(&dir.0).await;
    let (s, v) = gw
        .ssm_with("DescribeSessions", json!({"State": "Active"}), None)
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["__type"], "MissingAuthenticationTokenException", "{v}");
    gw.stop().await;
}

#[tokio::test]
async fn activation_register_and_describe() {
    let dir = TempDir::new();
    let gw = TestGateway::start(&dir.0).await;
    let (id, _creds) = register_agent(&gw).await;
    assert!(id.starts_with("mi-") && id.len() == 20, "{id}");
    let (s, v) = gw.ssm("DescribeInstanceInformation", json!({})).await;
    assert_eq!(s, 200);
    let list = v["InstanceInformationList"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["InstanceId"], id.as_str());
    assert_eq!(list[0]["PingStatus"], "ConnectionLost");
    assert_eq!(list[0]["ResourceType"], "ManagedInstance");
    assert_eq!(list[0]["ComputerName"], "node1");
    assert!(list[0]["RegistrationDate"].is_number());

    // Wrong code, unknown id.
    let (s, v) = unsigned_post(
        gw.addr,
        "/airlock/v1/register",
        json!({"ActivationId": "nope", "ActivationCode": "x"}),
    )
    .await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("InvalidActivationId"))
    );
    let (_, acts) = gw.ssm("DescribeActivations", json!({})).await;
    let act_id = acts["ActivationList"][0]["ActivationId"].clone();
    let (s, v) = unsigned_post(
        gw.addr,
        "/airlock/v1/register",
        json!({"ActivationId": act_id, "ActivationCode": "wrong"}),
    )
    .await;
    assert_eq!((s, v["__type"].as_str()), (400, Some("InvalidActivation")));
    gw.stop().await;
}

#[tokio::test]
async fn start_session_on_offline_target_and_validation() {
    let dir = TempDir::new();
    let gw = TestGateway::start(&dir.0).await;
    let (id, _) = register_agent(&gw).await;
    let (s, v) = gw.ssm("StartSession", json!({"Target": id})).await;
    assert_eq!(s, 400);
    assert_eq!(v["__type"], "TargetNotConnected");
    assert_eq!(v["message"], format!("{id} is not connected."));
    let (s, v) = gw.ssm("StartSession", json!({})).await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("ValidationException"))
    );
    let (s, v) = gw.ssm("DescribeSessions", json!({"State": "Bogus"})).await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("ValidationException"))
    );
    let (s, v) = gw
        .ssm(
            "StartSession",
            json!({"Target": id, "DocumentName": "AWS-NoSuchDocument"}),
        )
        .await;
    assert_eq!((s, v["__type"].as_str()), (400, Some("InvalidDocument")));
    gw.stop().await;
}

#[tokio::test]
async fn state_persists_across_restart() {
    let dir = TempDir::new();
    let gw = TestGateway::start(&dir.0).await;
    let first_key = gw.creds.access_key_id.clone();
    let (id, agent) = register_agent(&gw).await;
    gw.stop().await;

    let gw = TestGateway::start(&dir.0).await;
    assert_eq!(gw.creds.access_key_id, first_key, "admin key is reused");
    let (s, v) = gw.ssm("DescribeInstanceInformation", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(v["InstanceInformationList"][0]["InstanceId"], id.as_str());
    // The agent's key still verifies (sealed secret reopened with root.key).
    let (s, _, body) = gw
        .signed_post(
            &format!("/v1/control-channel/{id}"),
            "ssmmessages",
            br#"{"MessageSchemaVersion":"1.0","RequestId":"r"}"#,
            &agent,
        )
        .await;
    assert_eq!(s, 201, "{body}");
    assert!(body.contains("<TokenValue>"));
    gw.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn secret_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let gw = TestGateway::start(&dir.0).await;
    for f in [
        "admin-credentials",
        "root.key",
        "tls/ca-key.pem",
        "tls/server-key.pem",
    ] {
        let mode = std::fs::metadata(dir.0.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    assert_eq!(std::fs::metadata(dir.0.join("root.key")).unwrap().len(), 32);
    let ini = std::fs::read_to_string(&gw.admin_file).unwrap();
    assert!(ini.starts_with("[default]\naws_access_key_id = AKIA"));
    gw.stop().await;
}
