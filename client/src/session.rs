//! The session runner shared by `airlock start-session` and the plugin path:
//! open the data channel, answer the handshake, pump the terminal, follow
//! reconnects, and turn `channel_closed` into an exit status.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use airlock_proto::handshake::{HandshakeComplete, HandshakeRequest};
use airlock_proto::messages::{parse_exit_code, ChannelClosed, OpenDataChannel, TerminalSize};
use airlock_proto::reliable::{Config, Event};
use airlock_proto::{MessageType, PayloadType, Role};
use airlock_transport::api::{ApiClient, CallError};
use airlock_transport::datachannel::{ChannelEvent, DataChannel, Disconnect, Redial, RedialError};
use airlock_transport::ws;
use bytes::Bytes;
use serde_json::json;

use crate::crypto::{ClientCrypto, KmsEnv, KmsOutcome};
use crate::error::ClientError;
use crate::plugin::SessionInfo;
use crate::terminal;
use crate::CLIENT_VERSION;

/// Retries for the initial connect and for each reconnect.
const MAX_RETRIES: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitPolicy {
    /// Exit with the remote shell's status (airlock start-session).
    RemoteStatus,
    /// Always 0 on a normal close, like the stock plugin (the AWS CLI turns a
    /// nonzero plugin status into an error that echoes the command line).
    AlwaysZero,
}

pub struct SessionRunner {
    pub info: SessionInfo,
    pub tls: Arc<rustls::ClientConfig>,
    /// For ResumeSession on reconnect; None when no credentials were found.
    pub api: Option<ApiClient>,
    pub exit_policy: ExitPolicy,
    /// The target id, for the KMS encryption context.
    pub target: Option<String>,
}

fn client_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

pub fn open_message(token: &str) -> String {
    let open = OpenDataChannel {
        message_schema_version: "1.0".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        token_value: token.to_string(),
        client_instance_id: None,
        client_id: client_id().to_string(),
        client_version: Some(CLIENT_VERSION.to_string()),
    };
    serde_json::to_string(&open).unwrap_or_default()
}

/// Prints a status line: stdout when it is a terminal (like the plugin), else
/// stderr so scripted stdout holds only the remote output.
fn say(text: &str) {
    if terminal::stdout_is_tty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    } else {
        eprint!("{text}");
    }
}

/// `d0·2^n` with d0 in 100–199 ms, reset to d0 when over 5 s (spec §3.3).
fn backoff(attempt: u32) -> Duration {
    let d0 = 100 + (uuid::Uuid::new_v4().as_u128() % 100) as u64;
    let d = d0.saturating_mul(1u64 << attempt.min(16));
    Duration::from_millis(if d > 5000 { d0 } else { d })
}

fn size_payload(cols: u32, rows: u32) -> Bytes {
    Bytes::from(serde_json::to_vec(&TerminalSize { cols, rows }).unwrap_or_default())
}

fn write_stdout(payload: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(payload)?;
    out.flush()
}

#[derive(Debug)]
pub enum Reconnect {
    Done,
    /// ResumeSession gave no token: the session is over.
    TimedOut,
    Failed(String),
}

/// How long a client keeps trying to get back into a session after a drop
/// when the gateway did not say (the AWS CLI drops the member): the
/// gateway's default resume window. ResumeSession answering without a token
/// ends the attempt sooner.
pub const RESUME_GIVE_UP: Duration = Duration::from_secs(120);

/// Puts a client data channel back on the wire after a network drop (spec
/// §3.3): ResumeSession for a fresh token, then the original StreamUrl
/// again, with jittered exponential backoff until [`RESUME_GIVE_UP`]. The
/// data channel resends whatever was unacked; the receive side drops what
/// it already has, so output stays complete and in order.
pub struct Resumer<'a> {
    pub info: &'a SessionInfo,
    pub tls: &'a Arc<rustls::ClientConfig>,
    /// None without credentials: the original (single-use) token is tried.
    pub api: Option<&'a ApiClient>,
}

/// One resume attempt: ResumeSession for a fresh token, then a websocket to
/// the original StreamUrl and the open message to send on it.
async fn resume_once(
    info: &SessionInfo,
    tls: &Arc<rustls::ClientConfig>,
    api: Option<&ApiClient>,
) -> Result<(ws::WsStream, String), Redial<Reconnect>> {
    let token = match api {
        Some(api) => match api
            .ssm("ResumeSession", &json!({"SessionId": info.session_id}))
            .await
        {
            Ok(v) => match v.get("TokenValue").and_then(|t| t.as_str()) {
                Some(t) if !t.is_empty() => t.to_string(),
                _ => return Err(Redial::Stop(Reconnect::TimedOut)),
            },
            // A gateway restarting or overloaded: try again.
            Err(CallError::Api(e)) if e.status >= 500 => return Err(Redial::Retry(e.to_string())),
            Err(CallError::Api(e)) => return Err(Redial::Stop(Reconnect::Failed(e.to_string()))),
            Err(e) => return Err(Redial::Retry(e.to_string())),
        },
        None => info.token_value.clone(),
    };
    // The original StreamUrl is reused; the new one is ignored (stock behaviour).
    let ws = ws::connect(&info.stream_url, tls.clone())
        .await
        .map_err(|e| Redial::Retry(e.to_string()))?;
    Ok((ws, open_message(&token)))
}

/// A redial strategy for [`DataChannel::set_redial`] (port sessions, whose
/// loops only need to know when resuming failed for good).
pub fn resume_dialer(
    info: SessionInfo,
    tls: Arc<rustls::ClientConfig>,
    api: ApiClient,
) -> airlock_transport::datachannel::Dialer {
    Box::new(move || {
        let (info, tls, api) = (info.clone(), tls.clone(), api.clone());
        Box::pin(async move {
            resume_once(&info, &tls, Some(&api))
                .await
                .map_err(|e| match e {
                    Redial::Retry(m) => Redial::Retry(m),
                    Redial::Stop(Reconnect::TimedOut) => {
                        Redial::Stop(format!("Session: {} timed out.", info.session_id))
                    }
                    Redial::Stop(other) => Redial::Stop(format!("{other:?}")),
                })
        })
    })
}

impl Resumer<'_> {
    pub async fn resume(&self, dc: &DataChannel, why: &Disconnect) -> Reconnect {
        // Without credentials the only token we have was refused already.
        if self.api.is_none() && matches!(why, Disconnect::Closed(1008, _)) {
            return Reconnect::Failed(format!("the gateway refused the session token: {why:?}"));
        }
        let r = dc
            .redial(self.info.resume_window(), || {
                resume_once(self.info, self.tls, self.api)
            })
            .await;
        match r {
            Ok(attempts) => {
                tracing::info!(attempts, "data channel resumed");
                Reconnect::Done
            }
            Err(RedialError::Stopped(r)) => r,
            Err(e) => Reconnect::Failed(e.to_string()),
        }
    }
}

async fn connect_with_retry(
    info: &SessionInfo,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<ws::WsStream, ClientError> {
    let mut last = String::new();
    for attempt in 0..=MAX_RETRIES {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
        match ws::connect(&info.stream_url, tls.clone()).await {
            Ok(ws) => return Ok(ws),
            Err(e) => {
                tracing::debug!("connect attempt {attempt} failed: {e}");
                last = e.to_string();
            }
        }
    }
    Err(ClientError::Transport(last))
}

/// Documents that run a shell or a command; the AWS port documents are
/// `port::PORT_DOCUMENTS`. Any other name is a custom document, whose kind
/// the agent's handshake tells ([`probe`]).
const SHELL_DOCUMENTS: &[&str] = &[
    "SSM-SessionManagerRunShell",
    "AWS-StartInteractiveCommand",
    "AWS-StartNonInteractiveCommand",
];

/// True for no document (the default shell) and the built-in shell and
/// command documents.
pub fn is_shell_document(name: Option<&str>) -> bool {
    name.is_none_or(|n| SHELL_DOCUMENTS.contains(&n))
}

/// A data channel opened before its session's kind was known.
pub enum Probed {
    /// The agent asked for a port session; the HandshakeRequest's payload.
    Port(DataChannel, Bytes),
    /// Anything else, with the first event the channel gave.
    Shell(DataChannel, ChannelEvent),
}

/// Opens the data channel of a session whose document is not one this
/// client knows (a custom Session document) and lets the agent's handshake
/// say what kind it is, as the stock plugin does: its SessionType action
/// names `Port` for port documents. An agent that sends no handshake runs
/// a shell.
pub async fn probe(
    info: &SessionInfo,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Probed, ClientError> {
    let ws = connect_with_retry(info, tls).await?;
    let mut dc = DataChannel::spawn(
        ws,
        open_message(&info.token_value),
        Role::Client,
        Config::default(),
    );
    let first = tokio::time::timeout(HANDSHAKE_WAIT, dc.recv())
        .await
        .map_err(|_| ClientError::Transport("the agent sent nothing on the data channel".into()))?
        .ok_or_else(|| ClientError::Transport("data channel stopped".into()))?;
    if let ChannelEvent::Proto(Event::Data {
        payload_type: PayloadType::HandshakeRequest,
        payload,
    }) = &first
    {
        let port = serde_json::from_slice::<HandshakeRequest>(payload).is_ok_and(|req| {
            crate::handshake::respond(&req).session_type.as_deref() == Some("Port")
        });
        if port {
            return Ok(Probed::Port(dc, payload.clone()));
        }
    }
    Ok(Probed::Shell(dc, first))
}

/// How long [`probe`] waits for the agent's first message.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);

/// The next event: `first` if it is still there, then the channel's.
async fn next_event(
    first: &mut Option<ChannelEvent>,
    dc: &mut DataChannel,
) -> Option<ChannelEvent> {
    match first.take() {
        Some(ev) => Some(ev),
        None => dc.recv().await,
    }
}

impl SessionRunner {
    fn resumer(&self) -> Resumer<'_> {
        Resumer {
            info: &self.info,
            tls: &self.tls,
            api: self.api.as_ref(),
        }
    }

    /// Runs the session to its end and returns the process exit status.
    pub async fn run(self) -> Result<i32, ClientError> {
        self.run_on(None).await
    }

    /// [`run`](Self::run) on a data channel [`probe`] opened, handling the
    /// event it already read first.
    pub async fn run_on(
        self,
        opened: Option<(DataChannel, ChannelEvent)>,
    ) -> Result<i32, ClientError> {
        let id = self.info.session_id.clone();
        say(&format!("\nStarting session with SessionId: {id}\n"));

        let (mut dc, mut first) = match opened {
            Some((dc, first)) => (dc, Some(first)),
            None => {
                let ws = connect_with_retry(&self.info, &self.tls).await?;
                let dc = DataChannel::spawn(
                    ws,
                    open_message(&self.info.token_value),
                    Role::Client,
                    Config::default(),
                );
                (dc, None)
            }
        };

        let interactive = terminal::stdin_is_tty();
        let mut guard = if interactive {
            Some(terminal::RawGuard::enable()?)
        } else {
            None
        };
        // Set once the agent says NonInteractiveCommands: the command has no
        // terminal to pass a Ctrl-C to, so Ctrl-C ends the session here.
        let mut sigint: Option<tokio::signal::unix::Signal> = None;
        let (cols, rows) = if interactive {
            terminal::current_size()
        } else {
            terminal::NON_TTY_SIZE
        };
        let mut last_size = (cols, rows);
        send_or_log(&dc, PayloadType::Size, size_payload(cols, rows)).await;

        let mut winch = if interactive {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
        } else {
            None
        };
        // Stdin is pumped by its own task so a full send window never stops
        // this loop from reading output (and acking it).
        let mut stdin_rx = terminal::spawn_stdin_reader();
        let stdin_sender = dc.sender();
        // The HandshakeResponse goes out through the input pump so that input
        // is sealed exactly from the response on, as the agent expects.
        // Input waits for the handshake (as the stock plugin's does), so none
        // of it crosses the gateway in clear when the session is encrypted.
        let (hs_tx, mut hs_rx) = tokio::sync::mpsc::unbounded_channel::<PumpCtl>();
        let stdin_pump = tokio::spawn(async move {
            let mut crypto: Option<ClientCrypto> = None;
            let mut stdin_open = true;
            let mut handshaken = false;
            loop {
                tokio::select! {
                    biased;
                    Some(ctl) = hs_rx.recv() => {
                        handshaken = true;
                        if let PumpCtl::Respond(resp, c) = ctl {
                            crypto = c;
                            if let Err(e) = stdin_sender.send(PayloadType::HandshakeResponse, resp).await {
                                tracing::debug!("send handshake response failed: {e}");
                                break;
                            }
                        }
                    }
                    bytes = stdin_rx.recv(), if stdin_open && handshaken => {
                        let Some(mut bytes) = bytes else {
                            stdin_open = false;
                            continue;
                        };
                        if let Some(c) = &crypto {
                            match c.seal(PayloadType::Output, bytes) {
                                Ok(b) => bytes = b,
                                Err(e) => { tracing::warn!("sealing input failed: {e}"); break; }
                            }
                        }
                        if let Err(e) = stdin_sender.send(PayloadType::Output, bytes).await {
                            tracing::debug!("send input failed: {e}");
                            break;
                        }
                    }
                    else => break,
                }
            }
            // EOF does not end the session: the remote shell's `exit` does.
        });
        let mut exit_code: Option<i32> = None;
        let kms_env = KmsEnv {
            api: self.api.clone(),
            session_id: id.clone(),
            target: self.target.clone(),
        };
        let mut pending_crypto: Option<ClientCrypto> = None;
        let mut rx_crypto: Option<ClientCrypto> = None;
        let mut kms_error: Option<String> = None;
        let mut input_started = false;

        let outcome: Result<(i32, Option<String>), ClientError> = loop {
            tokio::select! {
                _ = recv_signal(&mut sigint) => {
                    if let Some(api) = &self.api {
                        if let Err(e) = api.ssm("TerminateSession", &json!({ "SessionId": id })).await {
                            tracing::warn!("TerminateSession failed: {e}");
                        }
                    }
                    let code = match self.exit_policy {
                        ExitPolicy::RemoteStatus => EXIT_INTERRUPTED,
                        ExitPolicy::AlwaysZero => 0,
                    };
                    break Ok((code, Some(format!("\n\nSession {id} interrupted.\n\n"))));
                },
                _ = recv_signal(&mut winch) => {
                    let size = terminal::current_size();
                    if size != last_size {
                        last_size = size;
                        send_or_log(&dc, PayloadType::Size, size_payload(size.0, size.1)).await;
                    }
                },
                ev = next_event(&mut first, &mut dc) => match ev {
                    None => break Err(ClientError::Transport("data channel stopped unexpectedly".into())),
                    Some(ChannelEvent::Proto(Event::Data { payload_type, mut payload })) => {
                        if let Some(c) = &rx_crypto {
                            match c.open(payload_type, payload) {
                                Ok(p) => payload = p,
                                Err(e) => break Err(ClientError::Transport(e)),
                            }
                        }
                        if payload_type == PayloadType::Output && !input_started {
                            // An agent that skips the handshake: start input anyway.
                            input_started = true;
                            let _ = hs_tx.send(PumpCtl::Start);
                        }
                        match payload_type {
                            PayloadType::Output | PayloadType::StdErr => {
                                if let Err(e) = write_stdout(&payload) {
                                    break Err(e.into());
                                }
                            }
                            PayloadType::ExitCode => {
                                if let Some(code) = parse_exit_code(&payload) {
                                    exit_code = Some(code);
                                }
                            }
                            PayloadType::HandshakeRequest => {
                                match serde_json::from_slice::<HandshakeRequest>(&payload) {
                                    Ok(req) => {
                                        let mut out = crate::handshake::respond(&req);
                                        tracing::debug!(features = ?out.features, session_type = ?out.session_type, "handshake");
                                        if out.session_type.as_deref() == Some("NonInteractiveCommands") {
                                            // Cooked mode again: Ctrl-C is a signal to us, not a
                                            // byte for a command that reads no input.
                                            if guard.take().is_some() {
                                                terminal::restore_terminal();
                                            }
                                            sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
                                        }
                                        match crate::crypto::process(&req, &mut out.response, &kms_env, false).await {
                                            KmsOutcome::Ready(c) => pending_crypto = Some(c),
                                            KmsOutcome::Failed(m) => {
                                                eprint!("Failed to set up session encryption: {m}\r\n");
                                                kms_error = Some(m);
                                            }
                                            KmsOutcome::NotRequested => {}
                                        }
                                        let body = serde_json::to_vec(&out.response).unwrap_or_default();
                                        input_started = true;
                                        let _ = hs_tx.send(PumpCtl::Respond(Bytes::from(body), pending_crypto.clone()));
                                    }
                                    Err(e) => tracing::warn!("malformed handshake request: {e}"),
                                }
                            }
                            PayloadType::EncChallengeRequest => {
                                let Some(c) = &pending_crypto else {
                                    break Err(ClientError::Transport("the agent sent an encryption challenge without a KMS handshake".into()));
                                };
                                match c.answer_challenge(&payload) {
                                    Ok(answer) => {
                                        // Everything the agent sends from here on is sealed.
                                        rx_crypto = Some(c.clone());
                                        send_or_log(&dc, PayloadType::EncChallengeResponse, answer).await;
                                    }
                                    Err(e) => break Err(ClientError::Transport(e)),
                                }
                            }
                            PayloadType::HandshakeComplete => {
                                if let Ok(done) = serde_json::from_slice::<HandshakeComplete>(&payload) {
                                    if !done.customer_message.is_empty() {
                                        eprint!("{}\r\n", done.customer_message);
                                    }
                                }
                            }
                            PayloadType::Error => {
                                eprint!("{}", String::from_utf8_lossy(&payload));
                            }
                            other => tracing::debug!("ignoring payload type {other:?}"),
                        }
                    }
                    Some(ChannelEvent::Proto(Event::Control(frame))) => {
                        if let Some(notice) = session_notice(&frame) {
                            eprint!("\r\n{notice}\r\n");
                        }
                        if frame.message_type == MessageType::ChannelClosed {
                            let output = serde_json::from_slice::<ChannelClosed>(&frame.payload)
                                .ok()
                                .and_then(|c| c.output)
                                .or_else(|| {
                                    serde_json::from_slice::<serde_json::Value>(&frame.payload)
                                        .ok()
                                        .and_then(|v| v.get("Output").and_then(|o| o.as_str()).map(String::from))
                                })
                                .filter(|o| !o.is_empty());
                            let msg = match output {
                                Some(o) => format!("\n\nSessionId: {id} : {o}\n\n"),
                                None => format!("\n\nExiting session with sessionId: {id}.\n\n"),
                            };
                            if let Some(e) = kms_error.take() {
                                break Err(ClientError::Transport(format!("the session could not be encrypted: {e}")));
                            }
                            let code = match self.exit_policy {
                                ExitPolicy::RemoteStatus if exit_code.is_none() && ended_as_failed(&frame) => {
                                    crate::error::EXIT_SESSION_FAILED
                                }
                                ExitPolicy::RemoteStatus => exit_code.unwrap_or(0),
                                ExitPolicy::AlwaysZero => 0,
                            };
                            break Ok((code, Some(msg)));
                        }
                        tracing::debug!("ignoring control frame {:?}", frame.message_type);
                    }
                    Some(ChannelEvent::Disconnected(why)) => {
                        tracing::debug!("data channel disconnected: {why:?}");
                        match self.resumer().resume(&dc, &why).await {
                            Reconnect::Done => {}
                            Reconnect::TimedOut => break Ok((0, Some(format!("\n\nSession: {id} timed out.\n\n")))),
                            Reconnect::Failed(reason) => {
                                break Err(ClientError::Transport(format!("lost the connection to session {id}: {reason}")))
                            }
                        }
                    }
                },
            }
        };

        stdin_pump.abort();
        drop(guard);
        terminal::restore_terminal();
        let _ = tokio::time::timeout(Duration::from_secs(1), dc.close()).await;
        match outcome {
            Ok((code, msg)) => {
                if let Some(m) = msg {
                    eprint!("{m}");
                }
                Ok(code)
            }
            Err(e) => Err(e),
        }
    }
}

/// Exit status after Ctrl-C ended a non-interactive command (128 + SIGINT).
const EXIT_INTERRUPTED: i32 = 130;

/// What the session loop tells the input pump.
enum PumpCtl {
    /// Send this HandshakeResponse, then seal input with the crypto (if any).
    Respond(Bytes, Option<ClientCrypto>),
    /// No handshake is coming: forward input as is.
    Start,
}

async fn send_or_log(dc: &DataChannel, payload_type: PayloadType, payload: Bytes) {
    if let Err(e) = dc.send(payload_type, payload).await {
        tracing::debug!("send {payload_type:?} failed: {e}");
    }
}

async fn recv_signal(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// The gateway's advisory text (an idle-close warning) from an
/// `airlock_session_notice` control frame.
pub(crate) fn session_notice(frame: &airlock_proto::frame::Frame) -> Option<String> {
    if frame.message_type.as_str() != "airlock_session_notice" {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(&frame.payload)
        .ok()?
        .get("Message")?
        .as_str()
        .map(|m| m.chars().take(1024).collect())
}

/// Whether an Airlock gateway's `channel_closed` says the session failed.
pub(crate) fn ended_as_failed(frame: &airlock_proto::Frame) -> bool {
    serde_json::from_slice::<ChannelClosed>(&frame.payload)
        .ok()
        .and_then(|c| c.airlock_session_status)
        .is_some_and(|s| s == "Failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_message_is_client_form() {
        let v: serde_json::Value = serde_json::from_str(&open_message("tok")).unwrap();
        assert_eq!(v["MessageSchemaVersion"], "1.0");
        assert_eq!(v["TokenValue"], "tok");
        assert_eq!(v["ClientVersion"], CLIENT_VERSION);
        assert!(v.get("ClientInstanceId").is_none());
        assert_eq!(v["ClientId"].as_str().unwrap().len(), 36);
    }

    #[test]
    fn backoff_bounds() {
        for n in 0..10 {
            let d = backoff(n).as_millis();
            assert!((100..=5000).contains(&d), "{n}: {d}");
        }
    }

    #[test]
    fn size_json() {
        assert_eq!(&size_payload(200, 50)[..], br#"{"cols":200,"rows":50}"#);
    }
}
