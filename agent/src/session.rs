//! One shell session: data channel, handshake, pty pump, exit code, teardown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_proto::handshake::{
    capability, Capabilities, HandshakeComplete, HandshakeRequest, HandshakeResponse,
    RequestedClientAction, ACTION_AIRLOCK_CAPABILITIES, ACTION_SESSION_TYPE,
};
use airlock_proto::messages::{
    format_exit_code, AgentSessionState, OpenDataChannel, SessionState, StartSessionTask,
    TerminalSize,
};
use airlock_proto::reliable::{Config, Event};
use airlock_proto::{MessageType, PayloadType, Role};
use airlock_transport::datachannel::{ChannelEvent, DataChannel, Redial};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::Agent;
use crate::pty::{Pty, ShellSpec};
use crate::sysinfo;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a finished session waits for its output to be acked. Longer
/// than the stock agent's 2 s: a client that is resuming (or slow behind a
/// relay backlog) must still get every byte.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(20);
/// After `Terminating`, how long to keep reading until the gateway answers
/// with channel_closed or closes: closing first with unread bytes would reset
/// the connection and could drop the terminating frame itself.
const TERMINATE_WAIT: Duration = Duration::from_secs(10);
/// After the shell exits, how long to keep draining output still in the pty
/// (background jobs may hold it open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(1500);
/// How long a dropped data channel is redialed before the session is given up.
const RESUME_GIVE_UP: Duration = Duration::from_secs(120);
/// Input bytes kept from before the handshake completes.
const MAX_EARLY_INPUT: usize = 64 * 1024;
const MAX_PAYLOAD: usize = airlock_proto::frame::STOCK_PAYLOAD_SIZE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Cancelled,
}

pub(crate) struct Link<'a> {
    pub(crate) agent: &'a Agent,
    pub(crate) session_id: &'a str,
}

impl Link<'_> {
    fn path(&self) -> String {
        format!("/v1/data-channel/{}", self.session_id)
    }

    pub(crate) async fn open(&self) -> Result<(airlock_transport::ws::WsStream, String)> {
        let token = self
            .agent
            .channel_token(&self.path(), Some(String::new()))
            .await?;
        let url = format!(
            "{}{}?role=publish_subscribe",
            self.agent.ws_base,
            self.path()
        );
        let ws = airlock_transport::ws::connect(&url, self.agent.tls.clone()).await?;
        let open = OpenDataChannel {
            message_schema_version: "1.0".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            token_value: token,
            client_instance_id: Some(self.agent.reg.instance_id.clone()),
            client_id: String::new(),
            client_version: None,
        };
        Ok((ws, serde_json::to_string(&open)?))
    }

    /// Fresh token + socket after a drop, with jittered backoff for up to
    /// [`RESUME_GIVE_UP`] (a gateway restart takes a while); the pty or port
    /// streams keep running meanwhile. A 4xx answer to the token POST (the
    /// session is over, or not ours) stops at once.
    pub(crate) async fn reconnect(&self, dc: &DataChannel) -> Result<()> {
        let r = dc
            .redial(RESUME_GIVE_UP, || async {
                self.open().await.map_err(|e| {
                    let text = format!("{e:#}");
                    if text.contains(" answered HTTP 4") {
                        Redial::Stop(text)
                    } else {
                        Redial::Retry(text)
                    }
                })
            })
            .await;
        match r {
            Ok(attempt) => {
                info!(attempt, "data channel reconnected");
                Ok(())
            }
            Err(e) => bail!("data channel reconnect: {e}"),
        }
    }
}

/// Opens the session's data channel; `None` when the session is cancelled
/// before the gateway answers.
pub(crate) async fn open_data_channel(
    link: &Link<'_>,
    cancel: &CancellationToken,
) -> Result<Option<DataChannel>> {
    let (ws, open) = tokio::select! {
        r = link.open() => r?,
        _ = cancel.cancelled() => return Ok(None),
    };
    Ok(Some(DataChannel::spawn(
        ws,
        open,
        Role::Agent,
        Config::default(),
    )))
}

pub(crate) fn is_channel_closed(frame: &airlock_proto::Frame) -> bool {
    frame.message_type == MessageType::ChannelClosed
}

pub async fn run(
    agent: Arc<Agent>,
    task: StartSessionTask,
    cancel: CancellationToken,
) -> Result<Outcome> {
    let sid = task.session_id.clone();
    let link = Link {
        agent: &agent,
        session_id: &sid,
    };
    let Some(mut dc) = open_data_channel(&link, &cancel).await? else {
        return Ok(Outcome::Cancelled);
    };

    let connected = AgentSessionState {
        schema_version: 1,
        session_state: SessionState::Connected,
        session_id: sid.clone(),
    };
    dc.send_unsequenced(
        MessageType::AgentSessionState,
        Bytes::from(serde_json::to_vec(&connected)?),
    )
    .await?;

    // Handshake.
    let started = Instant::now();
    let kms = crate::crypto::settings(&task);
    let kms_challenge = crate::crypto::random_challenge()?;
    let mut request = HandshakeRequest {
        agent_version: sysinfo::agent_version(),
        requested_client_actions: vec![
            RequestedClientAction {
                action_type: ACTION_SESSION_TYPE.into(),
                action_parameters: serde_json::json!({"SessionType": task.document_content.session_type, "Properties": null}),
            },
            RequestedClientAction {
                action_type: ACTION_AIRLOCK_CAPABILITIES.into(),
                action_parameters: serde_json::to_value(Capabilities {
                    features: vec![capability::EXIT_CODE.into()],
                    max_payload: MAX_PAYLOAD,
                })?,
            },
        ],
    };
    if let Some(k) = &kms {
        let action = crate::crypto::kms_action(&k.key_id, &kms_challenge);
        request.requested_client_actions.insert(1, action);
    }
    dc.send(
        PayloadType::HandshakeRequest,
        Bytes::from(serde_json::to_vec(&request)?),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut exit_code_ok = false;
    let mut early_input: Vec<Bytes> = Vec::new();
    let mut early_len = 0usize;
    let mut early_size: Option<TerminalSize> = None;
    let mut response: Option<HandshakeResponse> = None;
    loop {
        let ev = tokio::select! {
            ev = dc.recv() => ev,
            _ = cancel.cancelled() => { dc.close().await; return Ok(Outcome::Cancelled) }
            _ = tokio::time::sleep_until(deadline) => {
                warn!("no handshake response within {HANDSHAKE_TIMEOUT:?}; continuing without capabilities");
                break;
            }
        };
        match ev {
            None => bail!("data channel stopped during handshake"),
            Some(ChannelEvent::Proto(Event::Data {
                payload_type: PayloadType::HandshakeResponse,
                payload,
            })) => match serde_json::from_slice::<HandshakeResponse>(&payload) {
                Ok(resp) => {
                    exit_code_ok = accepts_exit_code(&resp);
                    response = Some(resp);
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "malformed handshake response");
                    break;
                }
            },
            // Clients that type before the handshake (piped stdin) get their
            // input replayed into the shell once it starts, up to a bound;
            // beyond it, early input is discarded.
            Some(ChannelEvent::Proto(Event::Data {
                payload_type: PayloadType::Output,
                payload,
            })) => {
                if early_len + payload.len() <= MAX_EARLY_INPUT {
                    early_len += payload.len();
                    early_input.push(payload);
                } else {
                    debug!("discarding input received before the handshake");
                }
            }
            Some(ChannelEvent::Proto(Event::Data {
                payload_type: PayloadType::Size,
                payload,
            })) => {
                early_size = serde_json::from_slice::<TerminalSize>(&payload).ok();
            }
            Some(ChannelEvent::Proto(Event::Data { .. })) => {}
            Some(ChannelEvent::Proto(Event::Control(frame))) => {
                if is_channel_closed(&frame) {
                    dc.close().await;
                    return Ok(Outcome::Cancelled);
                }
            }
            Some(ChannelEvent::Disconnected(why)) => {
                debug!(?why, "data channel dropped during handshake");
                link.reconnect(&dc).await?;
            }
        }
    }
    let mut crypto = None;
    if let Some(k) = &kms {
        use crate::crypto::Negotiated;
        let max_early = MAX_EARLY_INPUT.saturating_sub(early_len);
        let n = crate::crypto::negotiate(
            &mut dc,
            &agent,
            &task,
            k,
            &kms_challenge,
            response.as_ref(),
            false,
            &link,
            max_early,
        );
        match n.await? {
            Negotiated::Encrypted(c, early) => {
                early_input.extend(early.input);
                if let Some(s) = early.size.and_then(|p| serde_json::from_slice(&p).ok()) {
                    early_size = Some(s);
                }
                crypto = Some(c);
            }
            Negotiated::Plain => {}
            Negotiated::Closed => {
                dc.close().await;
                return Ok(Outcome::Cancelled);
            }
        }
    }
    let complete = HandshakeComplete {
        handshake_time_to_complete: i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX),
        customer_message: match crypto {
            Some(_) => crate::crypto::CUSTOMER_MESSAGE.into(),
            None => String::new(),
        },
    };
    dc.send(
        PayloadType::HandshakeComplete,
        Bytes::from(serde_json::to_vec(&complete)?),
    )
    .await?;
    debug!(exit_code_ok, "handshake complete");

    let size = early_size.map_or((80, 24), |s| (clamp_dim(s.cols), clamp_dim(s.rows)));
    let rec = crate::recorder::start(&agent, &task, "shell", size).await;
    if rec.is_none() && crate::recorder::fails_closed(&task) {
        let text = Bytes::from(format!("\r\n{}\r\n", crate::recorder::REFUSED_UNRECORDED));
        let text = match &crypto {
            Some(c) => c.seal(PayloadType::Output, text)?,
            None => text,
        };
        dc.send(PayloadType::Output, text).await?;
        let _ = dc.flush(FLUSH_TIMEOUT).await;
        anyhow::bail!("{}", crate::recorder::REFUSED_UNRECORDED);
    }
    let doomed = crate::recorder::doomed(&rec);
    let mut pty = match task.document_content.session_type.as_str() {
        "InteractiveCommands" => Pty::spawn(&command_spec(&agent, &task)?)?,
        "NonInteractiveCommands" => Pty::spawn_piped(&command_spec(&agent, &task)?)?,
        _ => Pty::spawn(&shell_spec(&agent, &task)?)?,
    };
    if let Some(size) = early_size {
        pty.resize(clamp_dim(size.cols), clamp_dim(size.rows));
    }
    for chunk in early_input {
        if let Some(r) = &rec {
            r.input(&chunk).await;
        }
        pty.write(chunk).await;
    }
    let mut exit_rx = pty.take_exit().context("exit receiver")?;
    let mut exit_code: Option<i32> = None;
    let mut output_done = false;
    let drain = tokio::time::sleep(Duration::from_secs(u32::MAX as u64));
    tokio::pin!(drain);
    // Output is pumped by its own task so that a full send window never stops
    // this loop from reading events (and so the peer from getting acks).
    let (_, placeholder) = tokio::sync::mpsc::channel(1);
    let mut output = std::mem::replace(&mut pty.output, placeholder);
    let sender = dc.sender();
    let pump_crypto = crypto.clone();
    let rec_out = rec.clone();
    let mut output_pump = tokio::spawn(async move {
        while let Some(chunk) = output.recv().await {
            // Record the plaintext the user saw; seal only what leaves the host.
            if let Some(r) = &rec_out {
                r.output(&chunk).await;
            }
            let chunk = match &pump_crypto {
                Some(c) => c.seal(PayloadType::Output, chunk)?,
                None => chunk,
            };
            sender.send(PayloadType::Output, chunk).await?;
        }
        Ok::<(), anyhow::Error>(())
    });

    loop {
        if exit_code.is_some() && output_done {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                output_pump.abort();
                finish(&rec).await;
                pty.kill();
                dc.close().await;
                return Ok(Outcome::Cancelled);
            }
            pumped = &mut output_pump, if !output_done => {
                output_done = true;
                match pumped {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(e) => bail!("output pump failed: {e}"),
                }
            }
            code = &mut exit_rx, if exit_code.is_none() => {
                exit_code = Some(code.unwrap_or(1));
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            _ = &mut drain, if exit_code.is_some() => break,
            _ = doomed.cancelled(), if exit_code.is_none() => {
                let _ = dc.send(PayloadType::Output, Bytes::from_static(crate::recorder::FAIL_CLOSED_MESSAGE)).await;
                pty.kill();
                exit_code = Some(1);
                break;
            }
            ev = dc.recv() => match ev {
                None => {
                    pty.kill();
                    bail!("data channel stopped");
                }
                Some(ChannelEvent::Proto(Event::Data { payload_type, payload })) => match payload_type {
                    PayloadType::Output if exit_code.is_none() => {
                        let payload = match &crypto {
                            Some(c) => match c.open(PayloadType::Output, payload) {
                                Ok(p) => p,
                                Err(e) => {
                                    pty.kill();
                                    return Err(e);
                                }
                            },
                            None => payload,
                        };
                        if let Some(r) = &rec {
                            r.input(&payload).await;
                        }
                        let open = pty.write(payload).await;
                        if !open {
                            debug!("pty input closed");
                        }
                    }
                    PayloadType::Size => {
                        if let Ok(size) = serde_json::from_slice::<TerminalSize>(&payload) {
                            pty.resize(clamp_dim(size.cols), clamp_dim(size.rows));
                            if let Some(r) = &rec {
                                r.resize(size.cols, size.rows).await;
                            }
                        }
                    }
                    _ => {}
                },
                Some(ChannelEvent::Proto(Event::Control(frame))) => {
                    if is_channel_closed(&frame) {
                        if !output_done {
                            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut output_pump).await;
                        }
                        finish(&rec).await;
                        pty.kill();
                        dc.close().await;
                        return Ok(Outcome::Cancelled);
                    }
                }
                Some(ChannelEvent::Disconnected(why)) => {
                    debug!(?why, "data channel dropped");
                    if let Err(e) = link.reconnect(&dc).await {
                        pty.kill();
                        return Err(e);
                    }
                }
            },
        }
    }

    finish(&rec).await;
    let code = exit_code.unwrap_or(1);
    if exit_code_ok {
        let mut payload = Bytes::from(format_exit_code(code));
        if let Some(c) = &crypto {
            payload = c.seal(PayloadType::ExitCode, payload)?;
        }
        dc.send(PayloadType::ExitCode, payload).await?;
    }
    if !dc.flush(FLUSH_TIMEOUT).await {
        debug!("not every frame was acked before terminating");
    }
    let terminating = AgentSessionState {
        schema_version: 1,
        session_state: SessionState::Terminating,
        session_id: sid.clone(),
    };
    dc.send_unsequenced(
        MessageType::AgentSessionState,
        Bytes::from(serde_json::to_vec(&terminating)?),
    )
    .await?;
    let _ = tokio::time::timeout(TERMINATE_WAIT, async {
        while let Some(ev) = dc.recv().await {
            if let ChannelEvent::Disconnected(_) = ev {
                break;
            }
            if let ChannelEvent::Proto(Event::Control(f)) = &ev {
                if is_channel_closed(f) {
                    break;
                }
            }
        }
    })
    .await;
    dc.close().await;
    Ok(Outcome::Exited(code))
}

pub(crate) async fn finish(rec: &Option<crate::recorder::Recorder>) {
    if let Some(r) = rec {
        r.finish().await;
    }
}

fn clamp_dim(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// True when the client answered the capability action with status 1 and
/// listed `exit_code` among the accepted features.
pub fn accepts_exit_code(resp: &HandshakeResponse) -> bool {
    resp.processed_client_actions.iter().any(|a| {
        a.action_type == ACTION_AIRLOCK_CAPABILITIES
            && a.action_status == 1
            && serde_json::from_value::<Capabilities>(a.action_result.clone())
                .map(|c| c.features.iter().any(|f| f == capability::EXIT_CODE))
                .unwrap_or(false)
    })
}

fn find_runuser() -> Option<&'static str> {
    [
        "/usr/sbin/runuser",
        "/sbin/runuser",
        "/usr/bin/runuser",
        "/bin/runuser",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
}

/// Session types this module runs: a login shell, or one command in a
/// terminal (InteractiveCommands) or on pipes (NonInteractiveCommands).
pub const SHELL_SESSION_TYPES: &[&str] = &[
    "Standard_Stream",
    "InteractiveCommands",
    "NonInteractiveCommands",
];

/// The command a command document carries for this platform
/// (`properties.linux.commands`: a string, or lines to run in turn).
fn document_command(task: &StartSessionTask) -> Option<String> {
    let commands = task
        .document_content
        .properties
        .get("linux")?
        .get("commands")?;
    let command = match commands {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(lines) => lines
            .iter()
            .filter_map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => return None,
    };
    Some(command).filter(|c| !c.trim().is_empty())
}

/// The document's command run by the user's shell (`SHELL -c COMMAND`), as
/// the same user a shell session would get.
pub fn command_spec(agent: &Agent, task: &StartSessionTask) -> Result<ShellSpec> {
    let command = document_command(task).context("the document names no command for linux")?;
    let mut spec = shell_spec(agent, task)?;
    let shell = spec
        .env
        .iter()
        .find(|(k, _)| k == "SHELL")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/bin/sh".into());
    // The login shell's `-l` becomes `-c COMMAND`; su takes the user last.
    if spec.program == "su" {
        spec.args = vec![
            "-s".into(),
            shell,
            "-c".into(),
            command,
            spec.args.pop().unwrap_or_default(),
        ];
    } else {
        spec.args.pop();
        spec.args.push("-c".into());
        spec.args.push(command);
    }
    Ok(spec)
}

/// Which user, which shell, which argv.
pub fn shell_spec(agent: &Agent, task: &StartSessionTask) -> Result<ShellSpec> {
    let me = sysinfo::current_user();
    let wanted = if !task.run_as_user.is_empty() {
        Some(task.run_as_user.clone())
    } else {
        agent.run_as.clone()
    };
    let run_as = match wanted {
        Some(name) if sysinfo::is_root() => {
            let user = sysinfo::user_by_name(&name)
                .with_context(|| format!("run-as user {name:?} does not exist"))?;
            if me.as_ref().map(|m| m.name == user.name).unwrap_or(false) {
                None
            } else {
                Some(user)
            }
        }
        Some(name) => {
            if me.as_ref().map(|m| m.name != name).unwrap_or(true) {
                warn!(run_as = %name, "not root: running the shell as the agent's own user");
            }
            None
        }
        None => None,
    };
    let user = run_as.clone().or(me).unwrap_or_else(|| sysinfo::UserInfo {
        name: std::env::var("USER").unwrap_or_else(|_| "root".into()),
        home: std::env::var("HOME").unwrap_or_else(|_| "/".into()),
        shell: String::new(),
    });
    let shell = agent
        .shell
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            Some(user.shell.clone()).filter(|s| !s.is_empty() && std::path::Path::new(s).exists())
        })
        .unwrap_or_else(|| "/bin/sh".into());
    let mut env = vec![
        ("TERM".to_string(), "xterm-256color".to_string()),
        ("HOME".to_string(), user.home.clone()),
        ("USER".to_string(), user.name.clone()),
        ("LOGNAME".to_string(), user.name.clone()),
        ("SHELL".to_string(), shell.clone()),
    ];
    if std::env::var_os("LANG").is_none_or(|v| v.is_empty()) {
        env.push(("LANG".into(), "C.UTF-8".into()));
    }
    let (program, args) = match &run_as {
        Some(u) => match find_runuser() {
            Some(runuser) => (
                runuser.to_string(),
                vec![
                    "-u".into(),
                    u.name.clone(),
                    "--".into(),
                    shell.clone(),
                    "-l".into(),
                ],
            ),
            None => (
                "su".to_string(),
                vec!["-s".into(), shell.clone(), "-l".into(), u.name.clone()],
            ),
        },
        None => (shell.clone(), vec!["-l".into()]),
    };
    Ok(ShellSpec {
        program,
        args,
        env,
        cwd: Some(user.home.clone()),
        cols: 80,
        rows: 24,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_proto::handshake::ProcessedClientAction;

    fn resp(status: i32, result: serde_json::Value) -> HandshakeResponse {
        HandshakeResponse {
            client_version: "1".into(),
            processed_client_actions: vec![ProcessedClientAction {
                action_type: ACTION_AIRLOCK_CAPABILITIES.into(),
                action_status: status,
                action_result: result,
                error: String::new(),
            }],
            errors: None,
        }
    }

    #[test]
    fn exit_code_acceptance() {
        assert!(accepts_exit_code(&resp(
            1,
            serde_json::json!({"Features": ["exit_code"], "MaxPayload": 1024})
        )));
        assert!(!accepts_exit_code(&resp(
            0,
            serde_json::json!({"Features": ["exit_code"]})
        )));
        assert!(!accepts_exit_code(&resp(
            1,
            serde_json::json!({"Features": []})
        )));
        assert!(!accepts_exit_code(&resp(1, serde_json::json!(3))));
        assert!(!accepts_exit_code(&resp(1, serde_json::Value::Null)));
    }
}
