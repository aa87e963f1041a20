//! Test harness: an in-process gateway on 127.0.0.1:0 (plain HTTP) with a
//! private data dir, plus a tiny signed HTTP/1.1 client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use airlock_gateway::{Config, Gateway};
use airlock_sigv4::{sign_request, Credentials, SecretKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("airlock-gw-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<()>>,
    pub creds: Credentials,
    pub admin_file: PathBuf,
}

impl TestGateway {
    pub async fn start(dir: &std::path::Path) -> TestGateway {
        Self::start_with(dir, |_| {}).await
    }

    /// With settings changed by `configure` before the gateway starts.
    pub async fn start_with(
        dir: &std::path::Path,
        configure: impl FnOnce(&mut Config),
    ) -> TestGateway {
        let mut cfg = Config::default();
        configure(&mut cfg);
        cfg.server.data_dir = dir.to_path_buf();
        cfg.server.insecure_http = true;
        cfg.server.listen = "127.0.0.1:0".parse().unwrap();
        let gw = Gateway::new(cfg).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_file = gw.admin_credentials_path().to_path_buf();
        let creds = read_ini(&admin_file);
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move {
            gw.serve(listener, s).await.unwrap();
        });
        TestGateway {
            addr,
            shutdown,
            task: Some(task),
            creds,
            admin_file,
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    pub async fn ssm(&self, op: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.ssm_with(op, body, Some(&self.creds)).await
    }

    pub async fn ssm_with(
        &self,
        op: &str,
        body: serde_json::Value,
        creds: Option<&Credentials>,
    ) -> (u16, serde_json::Value) {
        let body = body.to_string();
        let mut headers = vec![
            ("host".to_string(), self.addr.to_string()),
            (
                "content-type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
            ("x-amz-target".to_string(), format!("AmazonSSM.{op}")),
        ];
        if let Some(c) = creds {
            sign_request(
                "POST",
                "/",
                &mut headers,
                body.as_bytes(),
                c,
                "us-east-1",
                "ssm",
                time::OffsetDateTime::now_utc(),
            );
        }
        let (status, _h, b) = http(self.addr, "POST", "/", &headers, body.as_bytes()).await;
        (
            status,
            serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn signed_post(
        &self,
        path: &str,
        service: &str,
        body: &[u8],
        creds: &Credentials,
    ) -> (u16, String, String) {
        let mut headers = vec![
            ("host".to_string(), self.addr.to_string()),
            ("content-type".to_string(), "application/json".to_string()),
        ];
        sign_request(
            "POST",
            path,
            &mut headers,
            body,
            creds,
            "us-east-1",
            service,
            time::OffsetDateTime::now_utc(),
        );
        let (s, h, b) = http(self.addr, "POST", path, &headers, body).await;
        (s, h, String::from_utf8_lossy(&b).into_owned())
    }
}

pub fn read_ini(path: &std::path::Path) -> Credentials {
    let text = std::fs::read_to_string(path).unwrap();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(k)
                    .map(|v| v.trim_start().trim_start_matches('=').trim().to_string())
            })
            .unwrap()
    };
    Credentials {
        access_key_id: get("aws_access_key_id"),
        secret_access_key: SecretKey::new(get("aws_secret_access_key")),
        session_token: None,
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, raw headers, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let body = buf[split + 4..].to_vec();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, body)
}

pub async fn unsigned_post(
    addr: SocketAddr,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let headers = vec![
        ("host".to_string(), addr.to_string()),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    let (s, _, b) = http(addr, "POST", path, &headers, body.to_string().as_bytes()).await;
    (
        s,
        serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
    )
}

/// Creates an activation and registers an agent; returns (instance id, agent creds).
pub async fn register_agent(gw: &TestGateway) -> (String, Credentials) {
    let (s, act) = gw
        .ssm(
            "CreateActivation",
            serde_json::json!({"IamRole": "AirlockManagedInstance", "RegistrationLimit": 2}),
        )
        .await;
    assert_eq!(s, 200, "{act}");
    let (s, reg) = unsigned_post(
        gw.addr,
        "/airlock/v1/register",
        serde_json::json!({
            "ActivationId": act["ActivationId"], "ActivationCode": act["ActivationCode"],
            "ComputerName": "node1", "IPAddress": "10.0.0.5", "PlatformName": "Ubuntu",
            "PlatformVersion": "24.04", "AgentVersion": "0.1.0"
        }),
    )
    .await;
    assert_eq!(s, 200, "{reg}");
    let creds = Credentials {
        access_key_id: reg["AccessKeyId"].as_str().unwrap().to_string(),
        secret_access_key: SecretKey::new(reg["SecretAccessKey"].as_str().unwrap()),
        session_token: None,
    };
    (reg["InstanceId"].as_str().unwrap().to_string(), creds)
}
