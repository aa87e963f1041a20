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
    start_with(dir, |cfg| {
        if let Some(text) = iam_file {
            let path = dir.join("iam.json");
            std::fs::write(&path, text).unwrap();
            cfg.iam.file = Some(path);
        }
    })
    .await
}

async fn start_with(dir: &std::path::Path, edit: impl FnOnce(&mut Config)) -> Gw {
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.join("data");
    cfg.server.insecure_http = true;
    edit(&mut cfg);
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
async fn create_activation_needs_pass_role_on_the_role() {
    let dir = TempDir::new();
    let gw = start(&dir.0, None).await;
    iam(&gw, "CreateUser", json!({"UserName": "ops"})).await;
    let allow_activations = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "ssm:CreateActivation", "Resource": "*"}]});
    iam(
        &gw,
        "PutUserPolicy",
        json!({"UserName": "ops", "PolicyName": "act",
               "PolicyDocument": allow_activations.to_string()}),
    )
    .await;
    let ops = key_for(&gw, "ops").await;
    let activate = || {
        call(
            &gw,
            "ssm",
            "AmazonSSM.CreateActivation",
            json!({"IamRole": "AirlockManagedInstance"}),
            &ops,
        )
    };
    let (s, v) = activate().await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["message"],
        "User: arn:aws:iam::123456789012:user/ops is not authorized to perform: iam:PassRole on resource: arn:aws:iam::123456789012:role/AirlockManagedInstance because no identity-based policy allows the iam:PassRole action"
    );
    let pass = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iam:PassRole",
         "Resource": "arn:aws:iam::123456789012:role/AirlockManagedInstance",
         "Condition": {"StringEquals": {"iam:PassedToService": "ssm.amazonaws.com"}}}]});
    iam(
        &gw,
        "PutUserPolicy",
        json!({"UserName": "ops", "PolicyName": "pass", "PolicyDocument": pass.to_string()}),
    )
    .await;
    let (s, v) = activate().await;
    assert_eq!(s, 200, "{v}");
    assert!(v["ActivationId"].is_string());
    gw.shutdown.cancel();
}

#[tokio::test]
async fn create_activation_needs_a_role_that_trusts_ssm() {
    let dir = TempDir::new();
    let gw = start(&dir.0, None).await;
    let ec2_only = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
    iam(
        &gw,
        "CreateRole",
        json!({"RoleName": "Ec2Only", "AssumeRolePolicyDocument": ec2_only.to_string()}),
    )
    .await;
    let (s, v, _) = register(&gw, "Ec2Only").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["message"],
        "Nonexistent role or missing ssm service principal in trust policy: arn:aws:iam::123456789012:role/Ec2Only"
    );
    let ssm_same_account = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"Service": "ssm.amazonaws.com"}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}}}]});
    iam(
        &gw,
        "CreateRole",
        json!({"RoleName": "SsmHere", "AssumeRolePolicyDocument": ssm_same_account.to_string()}),
    )
    .await;
    let (s, v, _) = register(&gw, "SsmHere").await;
    assert_eq!(s, 200, "{v}");
    gw.shutdown.cancel();
}

/// The trust is checked again at every credential request: withdrawing
/// it (or deleting the role) stops an already registered agent's renewals.
#[tokio::test]
async fn role_credentials_stop_when_the_role_no_longer_trusts_ssm() {
    let dir = TempDir::new();
    let gw = start(&dir.0, None).await;
    let trusting = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"Service": "ssm.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
    let ec2_only = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
    iam(
        &gw,
        "CreateRole",
        json!({"RoleName": "Fleet", "AssumeRolePolicyDocument": trusting.to_string()}),
    )
    .await;
    let (_, _, agent) = register(&gw, "Fleet").await;
    let (_, key) = agent.unwrap();
    assert_eq!(role_credentials(&gw, &key).await.0, 200);

    iam(
        &gw,
        "UpdateAssumeRolePolicy",
        json!({"RoleName": "Fleet", "PolicyDocument": ec2_only.to_string()}),
    )
    .await;
    let (s, v) = role_credentials(&gw, &key).await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("AccessDeniedException")),
        "{v}"
    );
    assert_eq!(
        v["message"],
        "Nonexistent role or missing ssm service principal in trust policy: arn:aws:iam::123456789012:role/Fleet"
    );

    iam(
        &gw,
        "UpdateAssumeRolePolicy",
        json!({"RoleName": "Fleet", "PolicyDocument": trusting.to_string()}),
    )
    .await;
    assert_eq!(role_credentials(&gw, &key).await.0, 200);

    iam(&gw, "DeleteRole", json!({"RoleName": "Fleet"})).await;
    let (s, v) = role_credentials(&gw, &key).await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("AccessDeniedException")),
        "{v}"
    );
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

async fn role_credentials(gw: &Gw, creds: &Credentials) -> (u16, Value) {
    let mut headers = vec![
        ("host".to_string(), gw.addr.to_string()),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    let path = "/airlock/v1/role-credentials";
    sign_request(
        "POST",
        path,
        &mut headers,
        b"{}",
        creds,
        "us-east-1",
        "ssm",
        time::OffsetDateTime::now_utc(),
    );
    let (s, _, b) = http(gw.addr, "POST", path, &headers, b"{}").await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn temp_creds(v: &Value) -> Credentials {
    Credentials {
        access_key_id: v["AccessKeyId"].as_str().unwrap().into(),
        secret_access_key: SecretKey::new(v["SecretAccessKey"].as_str().unwrap()),
        session_token: Some(v["SessionToken"].as_str().unwrap().into()),
    }
}

#[tokio::test]
async fn agents_use_short_lived_role_credentials() {
    let dir = TempDir::new();
    let gw = start_with(&dir.0, |c| c.iam.require_role_credentials = true).await;
    let (_, _, agent) = register(&gw, "AirlockManagedInstance").await;
    let (id, long_term) = agent.unwrap();

    // With require_role_credentials the registration key only mints.
    let (s, body) = control_channel(&gw, &id, &long_term).await;
    assert_eq!(s, 400);
    assert!(body.contains("UnrecognizedClientException"), "{body}");
    let (s, v) = role_credentials(&gw, &long_term).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
    let expires = v["Expiration"].as_f64().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!((3500.0..=3700.0).contains(&(expires - now)), "{v}");
    let temp = temp_creds(&v);
    let (s, body) = control_channel(&gw, &id, &temp).await;
    assert_eq!(s, 201, "{body}");

    // Role credentials cannot mint more; a missing or foreign token fails.
    let (s, v) = role_credentials(&gw, &temp).await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("AccessDeniedException"))
    );
    let mut no_token = temp_creds(&role_credentials(&gw, &long_term).await.1);
    no_token.session_token = None;
    let (_, body) = control_channel(&gw, &id, &no_token).await;
    assert!(body.contains("UnrecognizedClientException"), "{body}");
    let mut swapped = temp_creds(&role_credentials(&gw, &long_term).await.1);
    swapped.session_token = temp.session_token.clone();
    let (_, body) = control_channel(&gw, &id, &swapped).await;
    assert!(body.contains("UnrecognizedClientException"), "{body}");

    // Deregistering the instance revokes its role credentials at once.
    let (s, v) = call(
        &gw,
        "ssm",
        "AmazonSSM.DeregisterManagedInstance",
        json!({"InstanceId": id}),
        &gw.admin,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, body) = control_channel(&gw, &id, &temp).await;
    assert!(body.contains("UnrecognizedClientException"), "{body}");
    gw.shutdown.cancel();
}

#[tokio::test]
async fn expired_role_credentials_are_refused() {
    let dir = TempDir::new();
    let gw = start_with(&dir.0, |c| c.iam.role_credentials_ttl_secs = 1).await;
    let (_, _, agent) = register(&gw, "AirlockManagedInstance").await;
    let (id, long_term) = agent.unwrap();
    let temp = temp_creds(&role_credentials(&gw, &long_term).await.1);
    // Poll (with a deadline) until the one-second lifetime has run out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (s, body) = control_channel(&gw, &id, &temp).await;
        if s != 201 {
            assert!(body.contains("ExpiredTokenException"), "{body}");
            assert!(body.contains("The security token included in the request is expired"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Without require_role_credentials the long-term key still works.
    let (s, body) = control_channel(&gw, &id, &long_term).await;
    assert_eq!(s, 201, "{body}");
    gw.shutdown.cancel();
}

#[tokio::test]
async fn admin_api_bounds_hostile_input() {
    let dir = TempDir::new();
    let gw = start(&dir.0, None).await;
    let doc =
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}"#;
    let actions: Vec<String> = (0..101).map(|i| format!("ssm:Action{i}")).collect();
    let (s, v) = call(
        &gw,
        "iam",
        "AirlockIAM.SimulateCustomPolicy",
        json!({"PolicyInputList": [doc], "ActionNames": actions}),
        &gw.admin,
    )
    .await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("ValidationError")),
        "{v}"
    );
    let tags: Vec<Value> = (0..51)
        .map(|i| json!({"Key": format!("k{i}"), "Value": "v"}))
        .collect();
    let (s, v) = call(
        &gw,
        "iam",
        "AirlockIAM.CreateUser",
        json!({"UserName": "t", "Tags": tags}),
        &gw.admin,
    )
    .await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("ValidationError")),
        "{v}"
    );
    // Wrong member types and unknown actions are AWS-style errors, not panics.
    for (target, body) in [
        ("AirlockIAM.CreateUser", json!({"UserName": 5})),
        ("AirlockIAM.CreateUser", json!([1, 2])),
        (
            "AirlockIAM.PutUserPolicy",
            json!({"UserName": "admin", "PolicyName": "p", "PolicyDocument": "{"}),
        ),
        ("AirlockIAM.Nope", json!({})),
    ] {
        let (s, v) = call(&gw, "iam", target, body, &gw.admin).await;
        assert_eq!(s, 400, "{target}: {v}");
        assert!(v["__type"].is_string() && v["message"].is_string(), "{v}");
    }
    gw.shutdown.cancel();
}
