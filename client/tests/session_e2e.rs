//! Runs the real `airlock` binary against an in-test fake gateway: a bare
//! HTTP responder for StartSession and a websocket endpoint driven by an
//! agent-role DataChannel.

use std::process::Stdio;
use std::time::Duration;

use airlock_proto::reliable::{Config, Event};
use airlock_proto::{MessageType, PayloadType, Role};
use airlock_transport::datachannel::{ChannelEvent, DataChannel};
use airlock_transport::ws::{Io, WsStream};
use airlock_transport::wsconn::WsConn;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SESSION: &str = "admin-0123456789abcdef0";

/// Answers one StartSession call (signature not checked) with `response`.
async fn fake_api(listener: TcpListener, response: String) -> String {
    let (mut sock, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let body_start;
    loop {
        let n = sock.read(&mut tmp).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            body_start = p + 4;
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..body_start]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < body_start + len {
        let n = sock.read(&mut tmp).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&tmp[..n]);
    }
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\nx-amzn-RequestId: r\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        response.len(),
        response
    );
    sock.write_all(reply.as_bytes()).await.unwrap();
    let _ = sock.shutdown().await;
    format!("{head}{}", String::from_utf8_lossy(&buf[body_start..]))
}

async fn next_data(dc: &mut DataChannel) -> (PayloadType, Bytes) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), dc.recv())
            .await
            .unwrap()
        {
            Some(ChannelEvent::Proto(Event::Data {
                payload_type,
                payload,
            })) => return (payload_type, payload),
            Some(other) => eprintln!("agent: ignoring {other:?}"),
            None => panic!("agent channel stopped"),
        }
    }
}

/// Plays the agent: handshake, greeting, reads input until `exit`, reports `code`.
async fn fake_agent(listener: TcpListener, code: i32) -> (String, Vec<u8>) {
    let (tcp, _) = listener.accept().await.unwrap();
    // tungstenite answers the upgrade; the client sends nothing before the
    // 101, so no websocket bytes are left in its buffer when it is dropped.
    let upgraded = tokio_tungstenite::accept_async(Box::new(tcp) as Box<dyn Io>)
        .await
        .unwrap()
        .into_inner();
    let mut ws: WsStream = WsConn::new(
        upgraded,
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        airlock_transport::ws::MAX_MESSAGE_SIZE,
        Default::default(),
    );
    let open = match ws.next().await.unwrap().unwrap() {
        tokio_tungstenite::tungstenite::Message::Text(t) => t.to_string(),
        other => panic!("expected text open, got {other:?}"),
    };
    let mut dc = DataChannel::spawn(ws, "{}".into(), Role::Agent, Config::default());
    let req = serde_json::json!({"AgentVersion":"3.3.987.0","RequestedClientActions":[
        {"ActionType":"SessionType","ActionParameters":{"SessionType":"Standard_Stream","Properties":null}},
        {"ActionType":"AirlockCapabilities","ActionParameters":{"Features":["exit_code"],"MaxPayload":1024}}]});
    dc.send(PayloadType::HandshakeRequest, Bytes::from(req.to_string()))
        .await
        .unwrap();
    let mut input = Vec::new();
    let mut got_response = false;
    let mut got_size = false;
    while !(got_response && got_size) {
        let (pt, payload) = next_data(&mut dc).await;
        match pt {
            PayloadType::HandshakeResponse => {
                let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                assert_eq!(
                    v["ProcessedClientActions"][1]["ActionResult"]["Features"][0],
                    "exit_code"
                );
                got_response = true;
            }
            PayloadType::Size => {
                let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                assert_eq!(
                    (v["cols"].as_u64(), v["rows"].as_u64()),
                    (Some(200), Some(50))
                );
                got_size = true;
            }
            PayloadType::Output => input.extend_from_slice(&payload),
            other => panic!("unexpected {other:?}"),
        }
    }
    dc.send(
        PayloadType::HandshakeComplete,
        Bytes::from(r#"{"HandshakeTimeToComplete":1,"CustomerMessage":""}"#),
    )
    .await
    .unwrap();
    dc.send(
        PayloadType::Output,
        Bytes::from_static(b"hello from agent\r\n"),
    )
    .await
    .unwrap();
    while !String::from_utf8_lossy(&input).contains("exit") {
        let (pt, payload) = next_data(&mut dc).await;
        if pt == PayloadType::Output {
            input.extend_from_slice(&payload);
        }
    }
    dc.send(
        PayloadType::ExitCode,
        Bytes::from(format!("EXIT_CODE: {code}")),
    )
    .await
    .unwrap();
    assert!(dc.flush(Duration::from_secs(5)).await);
    let closed = serde_json::json!({"MessageId":"00000000-0000-0000-0000-000000000001","CreatedDate":"now",
        "DestinationId":"mi-1","SessionId":SESSION,"MessageType":"channel_closed","SchemaVersion":1});
    dc.send_unsequenced(MessageType::ChannelClosed, Bytes::from(closed.to_string()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    dc.close().await;
    (open, input)
}

#[tokio::test]
async fn start_session_shell_exit_code_propagates() {
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let wsl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_port = api.local_addr().unwrap().port();
    let ws_port = wsl.local_addr().unwrap().port();
    let response = serde_json::json!({"SessionId":SESSION,"TokenValue":"tok-123",
        "StreamUrl":format!("ws://127.0.0.1:{ws_port}/v1/data-channel/{SESSION}?role=publish_subscribe")})
    .to_string();
    let api_task = tokio::spawn(fake_api(api, response));
    let agent_task = tokio::spawn(fake_agent(wsl, 3));

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args([
            "start-session",
            "--target",
            "mi-0123456789abcdef0",
            "--parameters",
            "a=b",
            "--endpoint-url",
        ])
        .arg(format!("http://127.0.0.1:{api_port}"))
        .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"uname -s; exit 3\n").await.unwrap();
    drop(stdin); // EOF must not end the session.
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout={stdout} stderr={stderr}"
    );
    assert_eq!(stdout, "hello from agent\r\n");
    assert!(
        stderr.contains(&format!("Starting session with SessionId: {SESSION}")),
        "{stderr}"
    );

    let request = api_task.await.unwrap();
    assert!(
        request.contains("x-amz-target: amazonssm.startsession"),
        "{request}"
    );
    assert!(request.contains(r#""Parameters":{"a":["b"]}"#), "{request}");
    let (open, input) = agent_task.await.unwrap();
    let open: serde_json::Value = serde_json::from_str(&open).unwrap();
    assert_eq!(open["TokenValue"], "tok-123");
    assert_eq!(open["ClientVersion"], "1.2.700.0");
    assert_eq!(String::from_utf8_lossy(&input), "uname -s; exit 3\n");
}

#[tokio::test]
async fn api_error_exits_254() {
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = api.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut sock, _) = api.accept().await.unwrap();
        let mut tmp = [0u8; 8192];
        let _ = sock.read(&mut tmp).await;
        let body = r#"{"__type":"TargetNotConnected","message":"mi-1 is not connected."}"#;
        let reply = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/x-amz-json-1.1\r\nx-amzn-RequestId: r\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(reply.as_bytes()).await.unwrap();
    });
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["start-session", "--target", "mi-1", "--endpoint-url"])
        .arg(format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(254), "{stderr}");
    assert!(stderr.contains("An error occurred (TargetNotConnected) when calling the StartSession operation: mi-1 is not connected."), "{stderr}");
}

#[tokio::test]
async fn plugin_env_var_form_runs_session_and_exits_zero() {
    let wsl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_port = wsl.local_addr().unwrap().port();
    let response = serde_json::json!({"SessionId":SESSION,"TokenValue":"tok-plugin",
        "StreamUrl":format!("ws://127.0.0.1:{ws_port}/v1/data-channel/{SESSION}?role=publish_subscribe")})
    .to_string();
    let agent_task = tokio::spawn(fake_agent(wsl, 7));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args([
            "session-manager-plugin",
            "AWS_SSM_START_SESSION_RESPONSE",
            "us-east-1",
            "StartSession",
            "",
            r#"{"Target":"mi-0123456789abcdef0"}"#,
            "http://127.0.0.1:9",
        ])
        .env("AWS_SSM_START_SESSION_RESPONSE", response)
        .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"exit 7\n").await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Stock plugin behaviour: a normal close exits 0 whatever the remote status.
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from agent\r\n");
    assert!(
        stderr.contains(&format!("Exiting session with sessionId: {SESSION}.")),
        "{stderr}"
    );
    let (open, _) = agent_task.await.unwrap();
    assert!(open.contains("tok-plugin"));
}
