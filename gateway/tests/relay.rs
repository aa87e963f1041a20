//! End-to-end relay: a fake agent and a fake client over real WebSockets.
mod common;

use std::time::Duration;

use airlock_proto::frame::{Frame, MessageType, PayloadType};
use airlock_proto::messages::{
    AgentSessionState, ChannelClosed, SessionState, StartSessionTask, TaskEnvelope,
};
use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn ws_connect(addr: std::net::SocketAddr, path: &str) -> Ws {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp)
        .await
        .unwrap();
    ws
}

fn frame(mt: MessageType, pt: PayloadType, seq: i64, payload: &[u8]) -> Bytes {
    Frame::new(
        mt,
        seq,
        0,
        uuid::Uuid::new_v4(),
        pt,
        Bytes::copy_from_slice(payload),
        1_700_000_000_000,
    )
    .encode()
    .unwrap()
}

async fn next_binary(ws: &mut Ws) -> Bytes {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Binary(b))) => return b,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected binary, got {other:?}"),
        }
    }
}

fn token_of(xml: &str) -> String {
    xml.split("<TokenValue>")
        .nth(1)
        .unwrap()
        .split("</TokenValue>")
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn shell_session_relays_and_terminates() {
    let dir = TempDir::new();
    let gw = TestGateway::start(&dir.0).await;
    let (id, agent) = register_agent(&gw).await;

    // Control channel.
    let (s, _, body) = gw
        .signed_post(
            &format!("/v1/control-channel/{id}"),
            "ssmmessages",
            br#"{"MessageSchemaVersion":"1.0","RequestId":"r1"}"#,
            &agent,
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let mut control = ws_connect(
        gw.addr,
        &format!("/v1/control-channel/{id}?role=subscribe&stream=input"),
    )
    .await;
    let open = json!({"Cookie": null, "MessageSchemaVersion": "1.0", "RequestId": "r2", "TokenValue": token_of(&body), "AgentVersion": "0.1.0", "PlatformType": "linux"});
    control
        .send(Message::Text(open.to_string().into()))
        .await
        .unwrap();
    // The gateway answers pings; a pong proves the channel is open and processed.
    control
        .send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .unwrap();
    match control.next().await.unwrap().unwrap() {
        Message::Pong(_) => {}
        m => panic!("unexpected {m:?}"),
    }
    let (_, v) = gw.ssm("DescribeInstanceInformation", json!({})).await;
    assert_eq!(
        v["InstanceInformationList"][0]["PingStatus"], "Online",
        "{v}"
    );

    // StartSession -> interactive_shell on the control channel.
    let (s, start) = gw
        .ssm("StartSession", json!({"Target": id, "Reason": "test"}))
        .await;
    assert_eq!(s, 200, "{start}");
    let sid = start["SessionId"].as_str().unwrap().to_string();
    assert!(sid.starts_with("admin-") && sid.len() == 6 + 17, "{sid}");
    let url = start["StreamUrl"].as_str().unwrap();
    assert_eq!(
        url,
        format!(
            "ws://{}/v1/data-channel/{sid}?role=publish_subscribe",
            gw.addr
        )
    );
    let f = Frame::decode(next_binary(&mut control).await, 1 << 20).unwrap();
    assert_eq!(f.message_type, MessageType::InteractiveShell);
    let env: TaskEnvelope = serde_json::from_slice(&f.payload).unwrap();
    let task: StartSessionTask = serde_json::from_str(&env.content).unwrap();
    assert_eq!(task.session_id, sid);
    assert_eq!(task.document_name, "SSM-SessionManagerRunShell");
    assert_eq!(task.session_owner, "arn:aws:iam::123456789012:user/admin");
    assert_eq!(task.document_content.session_type, "Standard_Stream");

    // Agent data channel; it talks before the client attaches (buffered).
    let (s, _, body) = gw
        .signed_post(
            &format!("/v1/data-channel/{sid}"),
            "ssmmessages",
            br#"{"MessageSchemaVersion":"1.0","RequestId":"r3","ClientId":""}"#,
            &agent,
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let mut adata = ws_connect(
        gw.addr,
        &format!("/v1/data-channel/{sid}?role=publish_subscribe"),
    )
    .await;
    let open = json!({"MessageSchemaVersion": "1.0", "RequestId": "r4", "TokenValue": token_of(&body), "ClientInstanceId": id, "ClientId": ""});
    adata
        .send(Message::Text(open.to_string().into()))
        .await
        .unwrap();
    let st = AgentSessionState {
        schema_version: 1,
        session_state: SessionState::Connected,
        session_id: sid.clone(),
    };
    adata
        .send(Message::Binary(frame(
            MessageType::AgentSessionState,
            PayloadType::Undefined,
            0,
            &serde_json::to_vec(&st).unwrap(),
        )))
        .await
        .unwrap();
    let hello = frame(
        MessageType::OutputStreamData,
        PayloadType::Output,
        0,
        b"hello",
    );
    adata.send(Message::Binary(hello.clone())).await.unwrap();

    // Client attaches and gets the buffered frame unchanged (not the session state).
    let mut client = ws_connect(
        gw.addr,
        &format!("/v1/data-channel/{sid}?role=publish_subscribe"),
    )
    .await;
    let open = json!({"MessageSchemaVersion": "1.0", "RequestId": "r5", "TokenValue": start["TokenValue"], "ClientId": "c", "ClientVersion": "1.2.700.0"});
    client
        .send(Message::Text(open.to_string().into()))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut client).await, hello);
    let input = frame(
        MessageType::InputStreamData,
        PayloadType::Output,
        0,
        b"ls\n",
    );
    client.send(Message::Binary(input.clone())).await.unwrap();
    assert_eq!(next_binary(&mut adata).await, input);

    let (_, v) = gw.ssm("DescribeSessions", json!({"State": "Active"})).await;
    assert_eq!(v["Sessions"][0]["SessionId"], sid.as_str());
    assert_eq!(v["Sessions"][0]["Status"], "Connected");

    // Exit code then Terminating: the client gets both, then channel_closed.
    let exit = frame(
        MessageType::OutputStreamData,
        PayloadType::ExitCode,
        1,
        b"EXIT_CODE: 3",
    );
    adata.send(Message::Binary(exit.clone())).await.unwrap();
    let st = AgentSessionState {
        schema_version: 1,
        session_state: SessionState::Terminating,
        session_id: sid.clone(),
    };
    adata
        .send(Message::Binary(frame(
            MessageType::AgentSessionState,
            PayloadType::Undefined,
            0,
            &serde_json::to_vec(&st).unwrap(),
        )))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut client).await, exit);
    let cc = Frame::decode(next_binary(&mut client).await, 1 << 20).unwrap();
    assert_eq!(cc.message_type, MessageType::ChannelClosed);
    let cc: ChannelClosed = serde_json::from_slice(&cc.payload).unwrap();
    assert_eq!(cc.session_id, sid);
    let cc = Frame::decode(next_binary(&mut adata).await, 1 << 20).unwrap();
    assert_eq!(cc.message_type, MessageType::ChannelClosed);

    let (_, v) = gw
        .ssm(
            "DescribeSessions",
            json!({"State": "History", "Filters": [{"key": "Target", "value": id}]}),
        )
        .await;
    assert_eq!(v["Sessions"][0]["Status"], "Terminated", "{v}");
    assert!(v["Sessions"][0]["EndDate"].is_number());

    // Control channel drop -> ConnectionLost promptly.
    control.close(None).await.unwrap();
    loop {
        let (_, v) = gw.ssm("DescribeInstanceInformation", json!({})).await;
        if v["InstanceInformationList"][0]["PingStatus"] == "ConnectionLost" {
            break;
        }
        tokio::task::yield_now().await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn terminate_session_closes_both_sides() {
    let dir = TempDir::new();
    let gw = TestGateway::start(&dir.0).await;
    let mut agent = ConnectedAgent::open(&gw).await;
    let (_, start) = gw.ssm("StartSession", json!({"Target": agent.id})).await;
    let sid = start["SessionId"].as_str().unwrap().to_string();
    let _ = next_binary(&mut agent.control).await; // interactive_shell
    let mut client = ws_connect(
        gw.addr,
        &format!("/v1/data-channel/{sid}?role=publish_subscribe"),
    )
    .await;
    client_open(&mut client, &start).await;

    let (s, v) = gw.ssm("TerminateSession", json!({"SessionId": sid})).await;
    assert_eq!(s, 200, "{v}");
    let cc = Frame::decode(next_binary(&mut client).await, 1 << 20).unwrap();
    assert_eq!(cc.message_type, MessageType::ChannelClosed);
    let cc = Frame::decode(next_binary(&mut agent.control).await, 1 << 20).unwrap();
    assert_eq!(cc.message_type, MessageType::ChannelClosed);
    let (_, v) = gw
        .ssm("DescribeSessions", json!({"State": "History"}))
        .await;
    assert_eq!(v["Sessions"][0]["Status"], "Terminated");
    // A terminated session gives no token to resume with.
    let (_, v) = gw.ssm("ResumeSession", json!({"SessionId": sid})).await;
    assert!(v.get("TokenValue").is_none(), "{v}");
    gw.stop().await;
}

/// On plain HTTP (loopback only) the gateway never agrees to unmasked
/// frames, even when asked: masking is what protects a cleartext
/// connection. (Over TLS it does: tests/e2e/test_websocket.py.)
#[tokio::test]
async fn no_unmasked_frames_over_plain_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new();
    let gw = TestGateway::start(&dir.0).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /v1/data-channel/s-0123456789abcdef0?role=publish_subscribe HTTP/1.1\r\n\
         Host: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Extensions: {}\r\n\r\n",
        gw.addr,
        airlock_transport::wsconn::UNMASKED_EXTENSION
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    drop(s);
    gw.stop().await;
}

/// A client on a slow link: its socket drains at about 640 KB/s, so a
/// 1 MiB frame takes over a second and a half to leave the gateway once the
/// buffers are full, longer than the 1 s write stall configured here. The
/// gateway must keep the socket while the peer's TCP keeps acknowledging,
/// and every frame must arrive in order over the one connection.
#[tokio::test]
async fn a_slow_client_that_keeps_acknowledging_is_not_dropped() {
    let dir = TempDir::new();
    let gw = TestGateway::start_with(&dir.0, |c| c.limits.write_stall_secs = 1).await;
    let mut agent = ConnectedAgent::open(&gw).await;
    let (sid, start, mut adata) = agent.session(&gw).await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(32 << 10).unwrap();
    let tcp = socket.connect(gw.addr).await.unwrap();
    let (mut client, _) = tokio_tungstenite::client_async(
        format!(
            "ws://{}/v1/data-channel/{sid}?role=publish_subscribe",
            gw.addr
        ),
        SlowReader::new(tcp),
    )
    .await
    .unwrap();
    client_open(&mut client, &start).await;

    const FRAMES: i64 = 6;
    let sent: Vec<Bytes> = (0..FRAMES).map(|seq| output_frame(seq, 1 << 20)).collect();
    let agent_sends = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for f in sent {
                adata.send(Message::Binary(f)).await.unwrap();
            }
            adata
        })
    };
    for expected in &sent {
        let got = tokio::time::timeout(Duration::from_secs(30), client.next())
            .await
            .expect("the slow client waited too long for a frame");
        match got {
            Some(Ok(Message::Binary(b))) => assert!(b == *expected, "frame out of order"),
            other => panic!("the gateway gave up on a slow client: {other:?}"),
        }
    }
    let _adata = agent_sends.await.unwrap();
    let (_, v) = gw.ssm("DescribeSessions", json!({"State": "Active"})).await;
    assert_eq!(v["Sessions"][0]["Status"], "Connected", "{v}");
    gw.stop().await;
}

/// A registered agent with its control channel open.
struct ConnectedAgent {
    id: String,
    creds: airlock_sigv4::Credentials,
    control: Ws,
}

impl ConnectedAgent {
    async fn open(gw: &TestGateway) -> ConnectedAgent {
        let (id, creds) = register_agent(gw).await;
        let (_, _, body) = gw
            .signed_post(
                &format!("/v1/control-channel/{id}"),
                "ssmmessages",
                br#"{"MessageSchemaVersion":"1.0","RequestId":"r1"}"#,
                &creds,
            )
            .await;
        let mut control = ws_connect(
            gw.addr,
            &format!("/v1/control-channel/{id}?role=subscribe&stream=input"),
        )
        .await;
        let open = json!({"MessageSchemaVersion": "1.0", "RequestId": "r2", "TokenValue": token_of(&body), "AgentVersion": "0.1.0", "PlatformType": "linux"});
        control
            .send(Message::Text(open.to_string().into()))
            .await
            .unwrap();
        // The gateway answers pings in order: a pong proves the open was
        // processed, so StartSession finds the agent connected.
        control
            .send(Message::Ping(Bytes::from_static(b"x")))
            .await
            .unwrap();
        while !matches!(control.next().await.unwrap().unwrap(), Message::Pong(_)) {}
        ConnectedAgent { id, creds, control }
    }

    /// StartSession on this agent, and the agent's data channel for it:
    /// (session id, StartSession's answer, the agent's socket).
    async fn session(&mut self, gw: &TestGateway) -> (String, serde_json::Value, Ws) {
        let (_, start) = gw.ssm("StartSession", json!({"Target": self.id})).await;
        let sid = start["SessionId"].as_str().unwrap().to_string();
        let _ = next_binary(&mut self.control).await; // interactive_shell
        let (_, _, body) = gw
            .signed_post(
                &format!("/v1/data-channel/{sid}"),
                "ssmmessages",
                br#"{"MessageSchemaVersion":"1.0","RequestId":"r3","ClientId":""}"#,
                &self.creds,
            )
            .await;
        let mut adata = ws_connect(
            gw.addr,
            &format!("/v1/data-channel/{sid}?role=publish_subscribe"),
        )
        .await;
        let open = json!({"MessageSchemaVersion": "1.0", "RequestId": "r4", "TokenValue": token_of(&body), "ClientInstanceId": self.id, "ClientId": ""});
        adata
            .send(Message::Text(open.to_string().into()))
            .await
            .unwrap();
        (sid, start, adata)
    }
}

/// Sends a client's open message with StartSession's token.
async fn client_open<S>(
    client: &mut tokio_tungstenite::WebSocketStream<S>,
    start: &serde_json::Value,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let open = json!({"MessageSchemaVersion": "1.0", "RequestId": "r5", "TokenValue": start["TokenValue"], "ClientId": "c"});
    client
        .send(Message::Text(open.to_string().into()))
        .await
        .unwrap();
}

fn output_frame(seq: i64, len: usize) -> Bytes {
    frame(
        MessageType::OutputStreamData,
        PayloadType::Output,
        seq,
        &vec![seq as u8; len],
    )
}

/// The gateway-wide relay budget, end to end. Session A's client has not
/// attached; its agent pushes 1 MiB frames until the gateway stops reading
/// them. With a 4 MiB budget that happens after the budget plus the two
/// kernel buffers (its own queue would take 32 MiB). Session B's frame then
/// waits too, though B's client is there to read it; once A's client reads,
/// everything flows, in order, nothing lost.
#[tokio::test]
async fn sessions_share_the_relay_memory_budget() {
    let dir = TempDir::new();
    let gw = TestGateway::start_with(&dir.0, |c| c.limits.relay_memory_bytes = 4 << 20).await;
    let mut agent = ConnectedAgent::open(&gw).await;
    let (sid_a, start_a, adata_a) = agent.session(&gw).await;
    let (sid_b, start_b, mut adata_b) = agent.session(&gw).await;

    const A_FRAMES: i64 = 40;
    let pushed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pushing = tokio::spawn({
        let pushed = pushed.clone();
        let mut adata_a = adata_a;
        async move {
            for seq in 0..A_FRAMES {
                adata_a
                    .send(Message::Binary(output_frame(seq, 1 << 20)))
                    .await
                    .unwrap();
                pushed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            adata_a
        }
    });
    // Stalled: no frame pushed for a whole second (absence can only be
    // waited out).
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = pushed.load(std::sync::atomic::Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    assert!(
        last < 24,
        "{last} MiB went in before the gateway stopped reading: the 4 MiB budget did not hold"
    );

    let mut client_b = ws_connect(
        gw.addr,
        &format!("/v1/data-channel/{sid_b}?role=publish_subscribe"),
    )
    .await;
    client_open(&mut client_b, &start_b).await;
    let b_frame = output_frame(0, 1000);
    adata_b
        .send(Message::Binary(b_frame.clone()))
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), client_b.next()).await;
    assert!(
        early.is_err(),
        "a frame got past a spent relay budget: {early:?}"
    );

    let mut client_a = ws_connect(
        gw.addr,
        &format!("/v1/data-channel/{sid_a}?role=publish_subscribe"),
    )
    .await;
    client_open(&mut client_a, &start_a).await;
    for seq in 0..A_FRAMES {
        let f = Frame::decode(next_binary(&mut client_a).await, 2 << 20).unwrap();
        assert_eq!(f.sequence_number, seq);
        assert!(f.payload.len() == 1 << 20 && f.payload.iter().all(|b| *b == seq as u8));
    }
    let _adata_a = pushing.await.unwrap();
    assert_eq!(next_binary(&mut client_b).await, b_frame);
    gw.stop().await;
}

/// A socket that reads at most 16 KiB per 25 ms: a link of about 640 KB/s.
struct SlowReader {
    tcp: tokio::net::TcpStream,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl SlowReader {
    fn new(tcp: tokio::net::TcpStream) -> Self {
        SlowReader { tcp, pause: None }
    }
}

impl tokio::io::AsyncRead for SlowReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(pause) = self.pause.as_mut() {
            std::task::ready!(std::future::Future::poll(pause.as_mut(), cx));
            self.pause = None;
        }
        let mut chunk = [0u8; 16 << 10];
        let want = buf.remaining().min(chunk.len());
        let mut limited = tokio::io::ReadBuf::new(&mut chunk[..want]);
        std::task::ready!(std::pin::Pin::new(&mut self.tcp).poll_read(cx, &mut limited))?;
        buf.put_slice(limited.filled());
        self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(25))));
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for SlowReader {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
