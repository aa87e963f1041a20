//! The control channel: token, websocket, `interactive_shell` /
//! `channel_closed` dispatch, `agent_task_complete` reports, and reconnects
//! with jittered exponential backoff, forever.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_proto::messages::{
    AgentTaskComplete, ChannelClosed, OpenControlChannel, StartSessionTask, TaskEnvelope,
};
use airlock_proto::{Frame, MessageType, PayloadType};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::agent::{now_ms, Agent};
use crate::session::{self, Outcome};
use crate::sysinfo;

/// Concurrent sessions; further `interactive_shell` requests are refused.
pub const MAX_SESSIONS: usize = 32;
/// Control payloads are small JSON; anything larger is hostile.
const MAX_CONTROL_PAYLOAD: usize = 256 * 1024;
const PING_EVERY: Duration = Duration::from_secs(20);
/// No frame (pongs included) for this long: the socket is dead.
const READ_DEADLINE: Duration = Duration::from_secs(65);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Completion reports waiting for a live control channel; overflow is dropped
/// (reports are best effort).
const REPORT_QUEUE: usize = 64;

pub struct Control {
    agent: Arc<Agent>,
    sessions: Arc<Mutex<HashMap<String, CancellationToken>>>,
    permits: Arc<Semaphore>,
    root: CancellationToken,
    tracker: TaskTracker,
    report_tx: mpsc::Sender<Bytes>,
    report_rx: mpsc::Receiver<Bytes>,
}

impl Control {
    pub fn new(agent: Arc<Agent>, root: CancellationToken, tracker: TaskTracker) -> Self {
        let (report_tx, report_rx) = mpsc::channel(REPORT_QUEUE);
        Control {
            agent,
            sessions: Arc::default(),
            permits: Arc::new(Semaphore::new(MAX_SESSIONS)),
            root,
            tracker,
            report_tx,
            report_rx,
        }
    }

    /// Runs until `root` is cancelled.
    pub async fn run(mut self) {
        let mut delay = BACKOFF_START;
        let root = self.root.clone();
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                r = self.connect_once() => r,
                _ = root.cancelled() => return,
            };
            match result {
                Ok(()) => info!("control channel closed"),
                Err(e) => warn!(error = %format!("{e:#}"), "control channel failed"),
            }
            // A channel that stayed up a while resets the backoff.
            if started.elapsed() > Duration::from_secs(30) {
                delay = BACKOFF_START;
            }
            let jitter = 0.5 + (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
            let wait = delay.mul_f64(jitter).min(BACKOFF_CAP);
            debug!(?wait, "reconnecting control channel");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = root.cancelled() => return,
            }
            delay = (delay * 2).min(BACKOFF_CAP);
        }
    }

    async fn connect_once(&mut self) -> Result<()> {
        let id = self.agent.reg.instance_id.clone();
        let token = self
            .agent
            .channel_token(&format!("/v1/control-channel/{id}"), None)
            .await?;
        let url = format!(
            "{}/v1/control-channel/{id}?role=subscribe&stream=input",
            self.agent.ws_base
        );
        let ws = airlock_transport::ws::connect(&url, self.agent.tls.clone()).await?;
        let (mut sink, mut stream) = ws.split();
        let (platform_name, platform_version) = sysinfo::os_release();
        let open = OpenControlChannel {
            cookie: None,
            message_schema_version: "1.0".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            token_value: token,
            agent_version: sysinfo::agent_version(),
            platform_type: "linux".into(),
            computer_name: Some(sysinfo::hostname()),
            ip_address: Some(sysinfo::ip_address()),
            platform_name: Some(platform_name),
            platform_version: Some(platform_version),
            running_sessions: Some(self.running_sessions()),
        };
        sink.send(Message::text(serde_json::to_string(&open)?))
            .await
            .context("send open")?;
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "agent {id} connected");
            let _ = out.flush();
        }
        info!(instance_id = %id, "control channel open");

        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut last_seen = Instant::now();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let msg = match msg {
                        None => return Ok(()),
                        Some(Err(e)) => bail!("control read: {e}"),
                        Some(Ok(m)) => m,
                    };
                    last_seen = Instant::now();
                    match msg {
                        Message::Binary(buf) => self.handle_frame(buf),
                        Message::Close(_) => return Ok(()),
                        _ => {}
                    }
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() > READ_DEADLINE {
                        bail!("no traffic from the gateway for {READ_DEADLINE:?}");
                    }
                    sink.send(Message::Ping(Bytes::new())).await.context("ping")?;
                }
                Some(report) = self.report_rx.recv() => {
                    sink.send(Message::Binary(report)).await.context("send report")?;
                }
            }
        }
    }

    /// Ids of the sessions this process runs now.
    fn running_sessions(&self) -> Vec<String> {
        self.sessions
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn handle_frame(&self, buf: Bytes) {
        let frame = match Frame::decode(buf, MAX_CONTROL_PAYLOAD) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "undecodable control frame");
                return;
            }
        };
        match frame.message_type {
            MessageType::InteractiveShell => match parse_start(&frame.payload) {
                Ok((envelope, task)) => self.start_session(envelope, task),
                Err(e) => warn!(error = %format!("{e:#}"), "bad interactive_shell payload"),
            },
            MessageType::ChannelClosed => {
                match serde_json::from_slice::<ChannelClosed>(&frame.payload) {
                    Ok(cc) => {
                        let token = self
                            .sessions
                            .lock()
                            .ok()
                            .and_then(|m| m.get(&cc.session_id).cloned());
                        match token {
                            Some(t) => {
                                info!(session_id = %cc.session_id, "channel_closed: cancelling session");
                                t.cancel();
                            }
                            None => {
                                debug!(session_id = %cc.session_id, "channel_closed for unknown session")
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "bad channel_closed payload"),
                }
            }
            other => debug!(message_type = ?other, "ignoring control frame"),
        }
    }

    fn start_session(&self, envelope: TaskEnvelope, task: StartSessionTask) {
        let sid = task.session_id.clone();
        let span = tracing::info_span!("session", session_id = %sid);
        let report_tx = self.report_tx.clone();
        let instance_id = self.agent.reg.instance_id.clone();
        let report = move |status: &str| {
            if let Some(frame) = task_complete_frame(&envelope, &instance_id, status) {
                // Best effort: a full queue drops the report.
                let _ = report_tx.try_send(frame);
            }
        };
        let is_port = task.document_content.session_type == "Port";
        if !is_port
            && !crate::session::SHELL_SESSION_TYPES
                .contains(&task.document_content.session_type.as_str())
        {
            warn!(parent: &span, session_type = %task.document_content.session_type, "unsupported session type");
            report("Failed");
            return;
        }
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                warn!(parent: &span, "too many sessions; refusing");
                report("Failed");
                return;
            }
        };
        let cancel = self.root.child_token();
        {
            let Ok(mut map) = self.sessions.lock() else {
                return;
            };
            if map.contains_key(&sid) {
                debug!(parent: &span, "duplicate interactive_shell ignored");
                return;
            }
            map.insert(sid.clone(), cancel.clone());
        }
        let agent = self.agent.clone();
        let sessions = self.sessions.clone();
        self.tracker.spawn(
            async move {
                info!("session starting");
                let result = if is_port {
                    crate::port::run(agent, task, cancel).await
                } else {
                    session::run(agent, task, cancel).await
                };
                let status = match result {
                    Ok(Outcome::Exited(code)) => {
                        info!(exit_code = code, "session ended");
                        "Success"
                    }
                    Ok(Outcome::Cancelled) => {
                        info!("session cancelled");
                        "Cancelled"
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "session failed");
                        "Failed"
                    }
                };
                if let Ok(mut map) = sessions.lock() {
                    map.remove(&sid);
                }
                report(status);
                drop(permit);
            }
            .instrument(span),
        );
    }
}

fn parse_start(payload: &[u8]) -> Result<(TaskEnvelope, StartSessionTask)> {
    let envelope: TaskEnvelope = serde_json::from_slice(payload).context("envelope")?;
    let task: StartSessionTask = serde_json::from_str(&envelope.content).context("task content")?;
    if task.session_id.is_empty() || task.session_id.len() > 128 {
        bail!("invalid session id");
    }
    Ok((envelope, task))
}

fn task_complete_frame(envelope: &TaskEnvelope, instance_id: &str, status: &str) -> Option<Bytes> {
    let body = AgentTaskComplete {
        schema_version: 1,
        task_id: envelope.task_id.clone(),
        topic: "agent_task_complete".into(),
        final_task_status: status.into(),
        is_routing_failure: false,
        aws_account_id: String::new(),
        instance_id: instance_id.into(),
        output: String::new(),
        s3_bucket: String::new(),
        s3_url_suffix: String::new(),
        cwl_group: String::new(),
        cwl_stream: envelope.task_id.clone(),
        retry_number: 0,
    };
    let payload = serde_json::to_vec(&body).ok()?;
    Frame::new(
        MessageType::AgentTaskComplete,
        0,
        0,
        uuid::Uuid::new_v4(),
        PayloadType::Undefined,
        Bytes::from(payload),
        now_ms(),
    )
    .encode()
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_session_envelope() {
        let payload = br#"{"Content":"{\"DocumentName\":\"SSM-SessionManagerRunShell\",\"SessionId\":\"alice-07e3\",\"RunAsUser\":\"\",\"SessionOwner\":\"arn:aws:iam::111122223333:user/alice\",\"Parameters\":{},\"DocumentContent\":{\"schemaVersion\":\"1.0\",\"description\":\"x\",\"sessionType\":\"Standard_Stream\",\"inputs\":{},\"parameters\":{},\"properties\":{}}}","TaskId":"alice-07e3","Topic":"x","SchemaVersion":1}"#;
        let (env, task) = parse_start(payload).unwrap();
        assert_eq!(env.task_id, "alice-07e3");
        assert_eq!(task.session_id, "alice-07e3");
        assert_eq!(task.document_content.session_type, "Standard_Stream");
        assert!(parse_start(b"{}").is_err());
        assert!(parse_start(b"\xff").is_err());
    }
}
