//! IAM wiring against an in-process gateway: the declarative file,
//! permission boundaries, instance roles on the agent's channel calls, and
//! activations naming unknown roles.

mod common;

use std::net::SocketAddr;

use airlock_gateway::{Config, Gateway};
use airlock_sigv4::{sign_request, Credentials, SecretKey};
use common::{http, unsigned_post, TempDir};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Gw {
    addr: SocketAddr,
    admin: Credentials,
    shutdown: CancellationToken,
}

async fn start(dir: &std::path::Path, iam_file: Option<&str>) -> Gw {
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.join("data");
    cfg.server.insecure_http = true;
    if let Some(text) = iam_file {
        let path = dir.join("iam.json");
        std::fs::write(&path, text).unwrap();
        cfg.iam.file = Some(path);
    }
    let gw = Gateway::new(cfg).await.unwrap();
    let admin = common::read_ini(gw.admin_credentials_path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move { gw.serve(listener, s).await.unwrap() });
    Gw {
        addr,
        admin,
        shutdown,
    }
}

async fn call(
    gw: &Gw,
    service: &str,
    target: &str,
    body: Value,
    creds: &Credentials,
) -> (u16, Value) {
    let body = body.to_string();
    let mut headers = vec![
        ("host".to_string(), gw.addr.to_string()),
        (
            "content-type".to_string(),
            "application/x-amz-json-1.1".to_string(),
        ),
        ("x-amz-target".to_string(), target.to_string()),
    ];
    sign_request(
        "POST",
        "/",
        &mut headers,
        body.as_bytes(),
        creds,
        "us-east-1",
        service,
        time::OffsetDateTime::now_utc(),
    );
    let (s, _, b) = http(gw.addr, "POST", "/", &headers, body.as_bytes()).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

async fn iam(gw: &Gw, action: &str, body: Value) -> Value {
    let (s, v) = call(gw, "iam", &format!("AirlockIAM.{action}"), body, &gw.admin).await;
    assert_eq!(s, 200, "{action}: {v}");
    v
}

async fn key_for(gw: &Gw, user: &str) -> Credentials {
    let v = iam(gw, "CreateAccessKey", json!({"UserName": user})).await;
    Credentials {
        access_key_id: v["AccessKey"]["AccessKeyId"].as_str().unwrap().into(),
        secret_access_key: SecretKey::new(v["AccessKey"]["SecretAccessKey"].as_str().unwrap()),
        session_token: None,
    }
}

const DECLARATIVE: &str = r#"{
  "Policies": [
    {"PolicyName": "ReadOnlySessions",
     "PolicyDocument": {"Version": "2012-10-17", "Statement": [
       {"Effect": "Allow", "Action": ["ssm:Describe*"], "Resource": "*"}]}}
  ],
  "Groups": [{"Name": "auditors", "AttachedPolicies": ["ReadOnlySessions"]}],
  "Users": [
    {"Name": "ivy", "Groups": ["auditors"], "Tags": [{"Key": "team", "Value": "sec"}]},
    {"Name": "jack", "AttachedPolicies": ["arn:aws:iam::aws:policy/AdministratorAccess"],
     "PermissionsBoundary": "ReadOnlySessions"}
  ]
}"#;

#[tokio::test]
async fn declarative_file_groups_and_boundaries() {
    let dir = TempDir::new();
    let gw = start(&dir.0, Some(DECLARATIVE)).await;

    let ivy = key_for(&gw, "ivy").await;
    let (s, v) = call(
        &gw,
        "ssm",
        "AmazonSSM.DescribeSessions",
        json!({"State": "Active"}),
        &ivy,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &gw,
        "ssm",
        "AmazonSSM.CreateActivation",
        json!({"IamRole": "AirlockManagedInstance"}),
        &ivy,
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["__type"], "AccessDeniedException");

    // Admin identity policy, but the boundary only allows ssm:Describe*.
    let jack = key_for(&gw, "jack").await;
    let (s, _) = call(
        &gw,
        "ssm",
        "AmazonSSM.DescribeInstanceInformation",
        json!({}),
        &jack,
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = call(
        &gw,
        "ssm",
        "AmazonSSM.CreateActivation",
        json!({"IamRole": "AirlockManagedInstance"}),
        &jack,
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["message"],
        "User: arn:aws:iam::123456789012:user/jack is not authorized to perform: ssm:CreateActivation because no permissions boundary allows the ssm:CreateActivation action"
    );
    let (s, v) = call(
        &gw,
        "iam",
        "AirlockIAM.CreateUser",
        json!({"UserName": "x"}),
        &jack,
    )
    .await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("AccessDeniedException"))
    );

    let u = iam(&gw, "GetUser", json!({"UserName": "ivy"})).await;
    assert_eq!(u["User"]["Arn"], "arn:aws:iam::123456789012:user/ivy");
    assert_eq!(u["User"]["Tags"], json!([{"Key": "team", "Value": "sec"}]));
    let g = iam(&gw, "GetGroup", json!({"GroupName": "auditors"})).await;
    assert_eq!(g["Users"][0]["UserName"], "ivy");
    gw.shutdown.cancel();

    // Applying the file again at the next start changes nothing.
    let gw = start(&dir.0, Some(DECLARATIVE)).await;
    let users = iam(&gw, "ListUsers", json!({})).await;
    let names: Vec<&str> = users["Users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["UserName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "ivy", "jack"]);
    gw.shutdown.cancel();
}

#[tokio::test]
async fn bad_declarative_file_stops_start() {
    let dir = TempDir::new();
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.0.join("data");
    cfg.server.insecure_http = true;
    let path = dir.0.join("iam.json");
    std::fs::write(
        &path,
        r#"{"Users": [{"Name": "a", "Policies": {"p": {"Statement": {"Effect": "Perhaps", "Action": "*", "Resource": "*"}}}}]}"#,
    )
    .unwrap();
    cfg.iam.file = Some(path);
    let err = Gateway::new(cfg).await.err().expect("must fail");
    assert!(err.to_string().contains("user a policy p"), "{err}");
}

async fn register(gw: &Gw, role: &str) -> (u16, Value, Option<(String, Credentials)>) {
    let (s, act) = call(
        gw,
        "ssm",
        "AmazonSSM.CreateActivation",
        json!({"IamRole": role}),
        &gw.admin,
    )
    .await;
    if s != 200 {
        return (s, act, None);
    }
    let (s, reg) = unsigned_post(
        gw.addr,
        "/airlock/v1/register",
        json!({"ActivationId": act["ActivationId"], "ActivationCode": act["ActivationCode"]}),
    )
    .await;
    assert_eq!(s, 200, "{reg}");
    let creds = Credentials {
        access_key_id: reg["AccessKeyId"].as_str().unwrap().into(),
        secret_access_key: SecretKey::new(reg["SecretAccessKey"].as_str().unwrap()),
        session_token: None,
    };
    (
        s,
        reg.clone(),
        Some((reg["InstanceId"].as_str().unwrap().to_string(), creds)),
    )
}

async fn control_channel(gw: &Gw, id: &str, creds: &Credentials) -> (u16, String) {
    let path = format!("/v1/control-channel/{id}");
    let body = br#"{"MessageSchemaVersion":"1.0","RequestId":"r"}"#;
    let mut headers = vec![
        ("host".to_string(), gw.addr.to_string()),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    sign_request(
        "POST",
        &path,
        &mut headers,
        body,
        creds,
        "us-east-1",
        "ssmmessages",
        time::OffsetDateTime::now_utc(),
    );
    let (s, _, b) = http(gw.addr, "POST", &path, &headers, body).await;
    (s, String::from_utf8_lossy(&b).into_owned())
}

#[tokio::test]
async fn agents_act_as_their_activation_role() {
    let dir = TempDir::new();
    let gw = start(&dir.0, None).await;

    let (s, v, _) = register(&gw, "NoSuchRole").await;
    assert_eq!(s, 400);
    assert_eq!(v["__type"], "ValidationException");

    let (_, _, agent) = register(&gw, "AirlockManagedInstance").await;
    let (id, creds) = agent.unwrap();
    let (s, body) = control_channel(&gw, &id, &creds).await;
    assert_eq!(s, 201, "{body}");

    // A role without ssmmessages permissions cannot open a control channel.
    iam(
        &gw,
        "CreateRole",
        json!({"RoleName": "Locked", "Description": "no policies"}),
    )
    .await;
    let (_, _, agent) = register(&gw, "Locked").await;
    let (id, creds) = agent.unwrap();
    let (s, body) = control_channel(&gw, &id, &creds).await;
    assert_eq!(s, 400);
    assert!(
        body.contains(&format!("User: arn:aws:sts::123456789012:assumed-role/Locked/{id} is not authorized to perform: ssmmessages:CreateControlChannel")),
        "{body}"
    );
    // Granting it through the role takes effect on the next call.
    iam(
        &gw,
        "AttachRolePolicy",
        json!({"RoleName": "Locked", "PolicyArn": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"}),
    )
    .await;
    let (s, body) = control_channel(&gw, &id, &creds).await;
    assert_eq!(s, 201, "{body}");
    gw.shutdown.cancel();
}
