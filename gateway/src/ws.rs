//! WebSocket upgrade and the channel tasks: the agent control channel and the
//! per-session data-channel relay (agent socket <-> client socket).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use airlock_proto::frame::{peek_message_type, Frame, MessageType, PayloadType};
use airlock_proto::messages::{
    AgentSessionState, AgentTaskAcknowledge, AgentTaskComplete, ChannelClosed, OpenControlChannel,
    OpenDataChannel, SessionDocument, SessionState, StartSessionTask, TaskEnvelope,
};
use airlock_transport::tls_stream::TlsStream;
use airlock_transport::ws::{ack_progress, Io, WsStream};
use airlock_transport::wsconn::{lists_unmasked_extension, WsConn, UNMASKED_EXTENSION};
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tracing::Instrument;

use crate::api::end_session;
use crate::error::ApiError;
use crate::hub::{AgentHandle, Relay, Side, TokenKind, CONTROL_QUEUE};
use crate::server::{error_response, AppState, Body};
use crate::util::now_ms;

type Ws = WsStream;

/// How long a socket may take to send its first (open) message.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The upgraded connection as the stream hyper was given, so that writes can
/// ask the kernel about the TCP connection under it, with the bytes hyper
/// had read past the request.
fn underlying(upgraded: hyper::upgrade::Upgraded) -> (Box<dyn Io>, BytesMut) {
    let upgraded = match upgraded.downcast::<TokioIo<TlsStream>>() {
        Ok(parts) => {
            return (
                Box::new(parts.io.into_inner()),
                BytesMut::from(&parts.read_buf[..]),
            )
        }
        Err(u) => u,
    };
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => (
            Box::new(parts.io.into_inner()),
            BytesMut::from(&parts.read_buf[..]),
        ),
        Err(u) => (Box::new(TokioIo::new(u)), BytesMut::new()),
    }
}

pub enum Channel {
    Control(String),
    Data(String),
}

/// Answers the upgrade with 101 and runs the channel on the upgraded socket.
pub fn upgrade(
    state: Arc<AppState>,
    mut req: Request<Incoming>,
    channel: Channel,
) -> Response<Body> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()));
    let version_ok = req
        .headers()
        .get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(accept) = key.filter(|_| version_ok) else {
        return error_response(&ApiError::validation("Invalid WebSocket upgrade request."));
    };
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return error_response(&ApiError::internal());
    };
    // Our own clients and agents ask to send unmasked frames; masking only
    // matters on cleartext connections (see UNMASKED_EXTENSION).
    let unmasked = !state.config.server.insecure_http
        && req
            .headers()
            .get_all("sec-websocket-extensions")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(lists_unmasked_extension);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let max = state.config.limits.max_message_bytes;
    let st = state.clone();
    state.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let (io, already_read) = underlying(upgraded);
        let ws = WsConn::new(io, Role::Server, max, already_read);
        let ws = if unmasked {
            ws.with_unmasked_client_frames()
        } else {
            ws
        };
        match channel {
            Channel::Control(id) => control_channel(st, ws, id).await,
            Channel::Data(id) => data_channel(st, ws, id).await,
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    h.insert("sec-websocket-accept", accept);
    if unmasked {
        h.insert(
            "sec-websocket-extensions",
            HeaderValue::from_static(UNMASKED_EXTENSION),
        );
    }
    r
}

fn now_u64() -> u64 {
    now_ms().max(1) as u64
}

fn encode(mt: MessageType, payload: Vec<u8>) -> Option<Bytes> {
    Frame::new(
        mt,
        0,
        0,
        uuid::Uuid::new_v4(),
        PayloadType::Undefined,
        Bytes::from(payload),
        now_u64(),
    )
    .encode()
    .ok()
}

/// The `interactive_shell` frame that tells an agent to start a session.
pub fn interactive_shell_frame(
    session_id: &str,
    owner: &str,
    document: &str,
    parameters: BTreeMap<String, String>,
) -> Option<Bytes> {
    let task = StartSessionTask {
        document_name: document.to_string(),
        session_id: session_id.to_string(),
        run_as_user: String::new(),
        session_owner: owner.to_string(),
        parameters,
        document_content: SessionDocument {
            schema_version: "1.0".into(),
            description: "Interactive shell session".into(),
            session_type: "Standard_Stream".into(),
            inputs: serde_json::json!({}),
            parameters: serde_json::json!({}),
            properties: serde_json::json!({}),
        },
    };
    let env = TaskEnvelope {
        content: serde_json::to_string(&task).ok()?,
        task_id: session_id.to_string(),
        topic: "aws.ssm.startSession".into(),
        schema_version: 1,
    };
    encode(
        MessageType::InteractiveShell,
        serde_json::to_vec(&env).ok()?,
    )
}

/// Airlock's advisory message to a client (e.g. an idle-close warning). Stock
/// plugins log and skip message types they do not know, so it is safe to send
/// to any client.
pub const SESSION_NOTICE: &str = "airlock_session_notice";

/// A `airlock_session_notice` frame carrying `message` for the user.
pub fn session_notice_frame(session_id: &str, message: &str) -> Option<Bytes> {
    let body = serde_json::json!({
        "MessageType": SESSION_NOTICE,
        "SessionId": session_id,
        "Message": message,
    });
    encode(
        MessageType::Other(SESSION_NOTICE.into()),
        serde_json::to_vec(&body).ok()?,
    )
}

/// A `channel_closed` frame with `reason` as Output and, when known, the
/// session's final status.
pub fn channel_closed_frame(
    session_id: &str,
    destination: &str,
    reason: &str,
    status: Option<&str>,
) -> Option<Bytes> {
    let created = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let cc = ChannelClosed {
        message_id: uuid::Uuid::new_v4().to_string(),
        created_date: created,
        destination_id: destination.to_string(),
        session_id: session_id.to_string(),
        message_type: "channel_closed".into(),
        schema_version: 1,
        output: (!reason.is_empty()).then(|| reason.to_string()),
        airlock_session_status: status.map(String::from),
    };
    encode(MessageType::ChannelClosed, serde_json::to_vec(&cc).ok()?)
}

/// Sends one message. Peers always read their sockets, so a write that
/// waits is waiting for the network: it may take as long as a slow link
/// needs (a megabyte frame at 20 KB/s takes most of a minute), and the
/// socket is given up only once `stall` passes with nothing acknowledged:
/// a dead path, or a peer that stopped (suspended, hung). Without the
/// kernel's word (not TCP), `stall` bounds the whole write.
async fn send(ws: &mut Ws, m: Message, stall: Duration) -> bool {
    let mut unsent = Some(m);
    let mut acked = ack_progress(ws.get_ref().as_ref()).and_then(|p| p.bytes_acked);
    loop {
        // The message's state lives in `unsent` and the socket's buffer,
        // not in this future, so a step cut short by the timer loses nothing.
        let step = std::future::poll_fn(|cx| {
            if unsent.is_some() {
                std::task::ready!(Pin::new(&mut *ws).poll_ready(cx))?;
                if let Some(m) = unsent.take() {
                    Pin::new(&mut *ws).start_send(m)?;
                }
            }
            Pin::new(&mut *ws).poll_flush(cx)
        });
        match tokio::time::timeout(stall, step).await {
            Ok(r) => return r.is_ok(),
            Err(_) => {
                let now = ack_progress(ws.get_ref().as_ref()).and_then(|p| p.bytes_acked);
                if now.is_none() || now <= acked {
                    tracing::debug!(
                        stall_secs = stall.as_secs(),
                        "write made no progress; peer lost"
                    );
                    return false;
                }
                acked = now;
            }
        }
    }
}

async fn close(ws: &mut Ws, code: CloseCode, reason: &str) {
    let f = CloseFrame {
        code,
        reason: reason.to_string().into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(Some(f))).await;
}

/// Waits for the first TEXT message (the open request).
async fn first_text(ws: &mut Ws) -> Option<String> {
    let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.as_str().to_string()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

async fn control_channel(state: Arc<AppState>, mut ws: Ws, instance_id: String) {
    let stall = state.config.limits.write_stall();
    let span = tracing::info_span!("control", instance_id = %instance_id);
    async move {
        let Some(text) = first_text(&mut ws).await else { return };
        let open: OpenControlChannel = match serde_json::from_str(&text) {
            Ok(o) => o,
            Err(_) => return close(&mut ws, CloseCode::Policy, "invalid OpenControlChannel").await,
        };
        if !state.hub.redeem_token(TokenKind::Control, &instance_id, &open.token_value) {
            tracing::warn!("control channel rejected: bad token");
            return close(&mut ws, CloseCode::Policy, "invalid token").await;
        }
        let now = now_ms();
        match state.store.get_instance(&instance_id).await {
            Ok(Some(mut inst)) => {
                inst.agent_version = open.agent_version.clone();
                inst.platform_type = open.platform_type.clone();
                if let Some(v) = open.computer_name.clone() {
                    inst.computer_name = v;
                }
                if let Some(v) = open.ip_address.clone() {
                    inst.ip_address = v;
                }
                if let Some(v) = open.platform_name.clone() {
                    inst.platform_name = v;
                }
                if let Some(v) = open.platform_version.clone() {
                    inst.platform_version = v;
                }
                inst.last_ping_ms = now;
                inst.ping_status = "Online".into();
                if let Err(e) = state.store.update_instance(inst).await {
                    tracing::error!(error = %e, "could not update instance");
                }
            }
            _ => return close(&mut ws, CloseCode::Policy, "instance is not registered").await,
        }
        // Before the new connection can carry tasks: a session started after
        // this point is sent on it, so it cannot be mistaken for a lost one.
        if let Some(running) = &open.running_sessions {
            fail_sessions_the_agent_lost(&state, &instance_id, running).await;
        }
        let (tx, mut rx) = mpsc::channel::<Bytes>(CONTROL_QUEUE);
        let conn_id = state.hub.next_conn_id();
        state.hub.agent_online(&instance_id, AgentHandle { conn_id, tx });
        tracing::info!("agent online");
        let mut last_store_ping = now;
        loop {
            tokio::select! {
                _ = state.sessions_cancel.cancelled() => {
                    close(&mut ws, CloseCode::Away, "gateway shutting down").await;
                    break;
                }
                m = rx.recv() => match m {
                    Some(b) => if !send(&mut ws, Message::Binary(b), stall).await { break },
                    None => break,
                },
                m = ws.next() => match m {
                    Some(Ok(Message::Binary(b))) => handle_control_frame(&state, &mut ws, &instance_id, b).await,
                    Some(Ok(Message::Ping(_))) => {
                        let now = now_ms();
                        if now - last_store_ping > 10_000 {
                            last_store_ping = now;
                            let _ = state.store.set_instance_ping(&instance_id, now, "Online").await;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        if state.hub.agent_offline(&instance_id, conn_id) {
            let _ = state.store.set_instance_ping(&instance_id, now_ms(), "ConnectionLost").await;
            tracing::info!("agent offline");
        }
    }
    .instrument(span)
    .await
}

/// Ends as Failed every live session on `instance_id` that its agent, just
/// reconnected, says it does not run: it restarted (or never got the task),
/// so no data channel will come back for them.
async fn fail_sessions_the_agent_lost(state: &AppState, instance_id: &str, running: &[String]) {
    let lost: Vec<String> = state
        .hub
        .relays()
        .into_iter()
        .filter(|r| r.target == instance_id && !running.contains(&r.session_id))
        .map(|r| r.session_id.clone())
        .collect();
    for session_id in lost {
        end_session(
            state,
            &session_id,
            "Failed",
            "The agent restarted and no longer runs this session.",
        )
        .await;
    }
}

async fn handle_control_frame(state: &AppState, ws: &mut Ws, instance_id: &str, b: Bytes) {
    let frame = match Frame::decode(b, airlock_proto::frame::MAX_PAYLOAD_LEN) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable control frame dropped");
            return;
        }
    };
    if frame.message_type != MessageType::AgentTaskComplete {
        return;
    }
    let Ok(done) = serde_json::from_slice::<AgentTaskComplete>(&frame.payload) else {
        return;
    };
    let ack = AgentTaskAcknowledge {
        schema_version: 1,
        message_id: frame.message_id.to_string(),
        task_id: done.task_id.clone(),
        topic: "agent_task_acknowledge".into(),
    };
    if let Some(f) = serde_json::to_vec(&ack)
        .ok()
        .and_then(|p| encode(MessageType::AgentTaskAcknowledge, p))
    {
        let _ = send(ws, Message::Binary(f), state.config.limits.write_stall()).await;
    }
    // A task that failed before its data channel ran ends the session.
    if let Some(relay) = state.hub.relay(&done.task_id) {
        if relay.target == instance_id && done.final_task_status != "Success" {
            end_session(
                state,
                &done.task_id,
                "Failed",
                "The agent reported the session task failed.",
            )
            .await;
        } else if relay.target == instance_id {
            // Finished: the agent will not reattach. If its data channel is
            // already gone (its terminating frame lost with the socket), end
            // now; else the data channel's end does (see agent_side).
            relay
                .agent_done
                .store(true, std::sync::atomic::Ordering::Relaxed);
            if !relay.is_attached(Side::Agent) {
                end_session(
                    state,
                    &done.task_id,
                    "Terminated",
                    "Session ended by the agent.",
                )
                .await;
            }
        }
    }
}

async fn data_channel(state: Arc<AppState>, mut ws: Ws, session_id: String) {
    let Some(text) = first_text(&mut ws).await else {
        return;
    };
    let open: OpenDataChannel = match serde_json::from_str(&text) {
        Ok(o) => o,
        Err(_) => return close(&mut ws, CloseCode::Policy, "invalid OpenDataChannel").await,
    };
    let Some(relay) = state.hub.relay(&session_id) else {
        if let Some(f) =
            channel_closed_frame(&session_id, "", "Session is already terminated", None)
        {
            let _ = send(
                &mut ws,
                Message::Binary(f),
                state.config.limits.write_stall(),
            )
            .await;
        }
        return close(&mut ws, CloseCode::Normal, "Session is already terminated").await;
    };
    let span = relay.span.clone();
    match open.client_instance_id.as_deref().filter(|s| !s.is_empty()) {
        Some(agent_id) => {
            if agent_id != relay.target
                || !state
                    .hub
                    .redeem_token(TokenKind::AgentData, &session_id, &open.token_value)
            {
                span.in_scope(|| tracing::warn!("agent data channel rejected: bad token"));
                return close(&mut ws, CloseCode::Policy, "invalid token").await;
            }
            agent_side(state, ws, relay).instrument(span).await
        }
        None => {
            if !state
                .hub
                .redeem_token(TokenKind::Client, &session_id, &open.token_value)
            {
                span.in_scope(|| tracing::warn!("client data channel rejected: bad token"));
                return close(&mut ws, CloseCode::Policy, "invalid token").await;
            }
            client_side(state, ws, relay).instrument(span).await
        }
    }
}

async fn send_closed(ws: &mut Ws, relay: &Relay, destination: &str, stall: Duration) {
    let (status, reason) = relay.reason().unzip();
    let reason = reason.unwrap_or_default();
    if let Some(f) =
        channel_closed_frame(&relay.session_id, destination, &reason, status.as_deref())
    {
        let _ = send(ws, Message::Binary(f), stall).await;
    }
    close(ws, CloseCode::Normal, "").await;
}

/// How a data-channel socket task ended.
enum End {
    /// The session ended (or the gateway is shutting down).
    Cancelled,
    /// A newer socket took this side over.
    Replaced,
    /// The socket failed or the peer closed it: the side is away.
    Lost,
}

/// The gateway is stopping while the session lives on in the store: peers
/// get a "service restart" close (1012) and no channel_closed, so they
/// reconnect instead of ending the session.
fn shutting_down(state: &AppState, relay: &Relay) -> bool {
    state.sessions_cancel.is_cancelled() && state.hub.relay(&relay.session_id).is_some()
}

async fn close_for_restart(ws: &mut Ws) {
    close(
        ws,
        CloseCode::Restart,
        "gateway restarting; resume the session",
    )
    .await;
}

/// Records a side's return: Connected once both sides are back.
async fn note_reattached(state: &AppState, relay: &Relay, side: Side) {
    let (who, other) = match side {
        Side::Client => ("client resumed", Side::Agent),
        Side::Agent => ("agent data channel reattached", Side::Client),
    };
    let (status, details) = if relay.is_attached(other) {
        ("Connected", format!("Connected: {who}"))
    } else {
        let waiting = match other {
            Side::Client => "waiting for the client to resume",
            Side::Agent => "waiting for the agent to reconnect",
        };
        ("Disconnected", format!("Disconnected: {who}; {waiting}"))
    };
    tracing::info!("{}", details);
    let _ = state
        .update_session_status(&relay.session_id, status, None, Some(&details))
        .await;
}

async fn agent_side(state: Arc<AppState>, mut ws: Ws, relay: Arc<Relay>) {
    let stall = state.config.limits.write_stall();
    let Some(mut att) = relay.attach(Side::Agent).await else {
        return close(&mut ws, CloseCode::Policy, "agent already attached").await;
    };
    if att.reattach {
        note_reattached(&state, &relay, Side::Agent).await;
    } else {
        tracing::info!("agent data channel attached");
    }
    let end = 'outer: loop {
        tokio::select! {
            _ = relay.cancel.cancelled() => break End::Cancelled,
            _ = att.replaced.cancelled() => break End::Replaced,
            m = att.rx.recv() => match m {
                // The frame's bytes leave the relay's budget once written.
                Some(q) => if !send(&mut ws, Message::Binary(q.frame.clone()), stall).await { break End::Lost },
                None => break End::Lost,
            },
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => match peek_message_type(&b) {
                    Ok(MessageType::AgentSessionState) => {
                        let st = Frame::decode(b, airlock_proto::frame::MAX_PAYLOAD_LEN)
                            .ok()
                            .and_then(|f| serde_json::from_slice::<AgentSessionState>(&f.payload).ok());
                        match st.map(|s| s.session_state) {
                            Some(SessionState::Connected) => {
                                let _ = state.update_session_status(&relay.session_id, "Connected", None, Some("Connected: agent data channel connected")).await;
                            }
                            Some(SessionState::Terminating) => {
                                end_session(&state, &relay.session_id, "Terminated", "Session ended by the agent.").await;
                            }
                            None => tracing::debug!("bad agent_session_state dropped"),
                        }
                    }
                    Ok(_) => {
                        relay.touch();
                        // Bounded: when the client is absent and the buffer is
                        // full we stop reading the agent socket (backpressure).
                        tokio::select! {
                            r = relay.to_client_tx.send(b) => if r.is_err() { break 'outer End::Lost },
                            _ = relay.cancel.cancelled() => break 'outer End::Cancelled,
                            _ = att.replaced.cancelled() => break 'outer End::Replaced,
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "malformed agent frame dropped"),
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Lost,
                Some(Ok(_)) => {}
            },
        }
    };
    // The side is marked away (and recorded so) while the queue is still
    // held, so a socket taking over afterwards is never mistaken for a
    // detached one.
    if let End::Lost = end {
        // The agent redials with a fresh token; the session waits for it for
        // the resume window (the reaper fails it after that).
        relay.detach(Side::Agent);
        tracing::info!("agent data channel dropped");
        if state.hub.relay(&relay.session_id).is_some() {
            let details = format!(
                "Disconnected: agent data channel lost; waiting {} for the agent to reconnect",
                crate::lifecycle::human_secs(state.config.sessions.resume_window_secs)
            );
            let _ = state
                .update_session_status(&relay.session_id, "Disconnected", None, Some(&details))
                .await;
        }
    }
    drop(att);
    if matches!(end, End::Lost) && relay.agent_done.load(std::sync::atomic::Ordering::Relaxed) {
        end_session(
            &state,
            &relay.session_id,
            "Terminated",
            "Session ended by the agent.",
        )
        .await;
    }
    match end {
        End::Cancelled if shutting_down(&state, &relay) => close_for_restart(&mut ws).await,
        End::Cancelled => send_closed(&mut ws, &relay, &relay.target, stall).await,
        End::Replaced => {
            tracing::info!("agent data channel replaced by a newer connection");
            close(&mut ws, CloseCode::Normal, "replaced").await;
        }
        End::Lost => close(&mut ws, CloseCode::Normal, "").await,
    }
}

async fn client_side(state: Arc<AppState>, mut ws: Ws, relay: Arc<Relay>) {
    let stall = state.config.limits.write_stall();
    let Some(mut att) = relay.attach(Side::Client).await else {
        return close(&mut ws, CloseCode::Policy, "a client is already attached").await;
    };
    relay.touch();
    if att.reattach {
        note_reattached(&state, &relay, Side::Client).await;
    } else {
        tracing::info!("client attached");
        let _ = state
            .update_session_status(
                &relay.session_id,
                "Connected",
                None,
                Some("Connected: client attached"),
            )
            .await;
    }
    let end = 'outer: loop {
        tokio::select! {
            _ = relay.cancel.cancelled() => break End::Cancelled,
            _ = att.replaced.cancelled() => break End::Replaced,
            m = att.rx.recv() => match m {
                // The frame's bytes leave the relay's budget once written.
                Some(q) => if !send(&mut ws, Message::Binary(q.frame.clone()), stall).await { break End::Lost },
                None => break End::Lost,
            },
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    relay.touch();
                    tokio::select! {
                        r = relay.to_agent_tx.send(b) => if r.is_err() { break 'outer End::Lost },
                        _ = relay.cancel.cancelled() => break 'outer End::Cancelled,
                        _ = att.replaced.cancelled() => break 'outer End::Replaced,
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Lost,
                Some(Ok(_)) => {}
            },
        }
    };
    match end {
        End::Cancelled if shutting_down(&state, &relay) => {
            drop(att);
            close_for_restart(&mut ws).await;
        }
        End::Cancelled => {
            // Deliver what the agent sent before the end (e.g. the exit code).
            while let Ok(q) = att.rx.try_recv() {
                if !send(&mut ws, Message::Binary(q.frame.clone()), stall).await {
                    break;
                }
            }
            drop(att);
            send_closed(&mut ws, &relay, &relay.session_id, stall).await;
        }
        End::Replaced => {
            drop(att);
            tracing::info!("client socket replaced by a newer connection");
            close(&mut ws, CloseCode::Normal, "replaced").await;
        }
        End::Lost => {
            // Marked away while the queue is still held (see agent_side).
            relay.detach(Side::Client);
            tracing::info!("client detached");
            if state.hub.relay(&relay.session_id).is_some() {
                let details = format!(
                    "Disconnected: client connection lost without TerminateSession; resumable for {}",
                    crate::lifecycle::human_secs(state.config.sessions.resume_window_secs)
                );
                let _ = state
                    .update_session_status(&relay.session_id, "Disconnected", None, Some(&details))
                    .await;
            }
            drop(att);
            close(&mut ws, CloseCode::Normal, "").await;
        }
    }
}
