//! Port sessions on the client side (spec §5.1): a local TCP listener whose
//! connections become smux streams (multiplexed), one connection at a time
//! (basic), or stdin/stdout (the SSH document, `airlock ssh-proxy`).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airlock_proto::handshake::{
    Capabilities, HandshakeRequest, SessionTypeParameters, ACTION_AIRLOCK_CAPABILITIES,
    ACTION_SESSION_TYPE,
};
use airlock_proto::reliable::{Config, Event, FEATURE_NO_PAYLOAD_DIGEST};
use airlock_proto::smux::{self, Cmd, Mux, MuxEvent, MuxRole};
use airlock_proto::{FrameBuf, MessageType, PayloadType, Role};
use airlock_transport::datachannel::{ChannelEvent, DataChannel, DataSender};
use airlock_transport::{batch, ws};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

use crate::crypto::{ClientCrypto, KmsEnv, KmsOutcome};
use crate::error::ClientError;
use crate::plugin::SessionInfo;
use crate::session::open_message;

pub const PORT_DOCUMENTS: &[&str] = &[
    "AWS-StartPortForwardingSession",
    "AWS-StartPortForwardingSessionToRemoteHost",
    "AWS-StartSSHSession",
];
/// Payload size this client accepts for port sessions with an Airlock agent.
pub const PORT_MAX_PAYLOAD: usize = 1024 * 1024;
const STOCK_PAYLOAD: usize = airlock_proto::frame::STOCK_PAYLOAD_SIZE;
/// Received smux frames queued for one local connection. Each is a slice of
/// up to 64 KiB that keeps its whole payload (up to 1 MiB) allocated, so
/// this bounds memory per stream, not just frames: at 64 the agent peaked at
/// 90 MiB relaying 16 connections, at 16 it stays near 35 MiB with the same
/// throughput (docs/PERFORMANCE.md).
const STREAM_QUEUE: usize = 16;
const FLAG_DISCONNECT_TO_PORT: u32 = 1;
const FLAG_TERMINATE_SESSION: u32 = 2;
const FLAG_CONNECT_TO_PORT_ERROR: u32 = 3;
pub const CONNECT_ERROR_MESSAGE: &str =
    "Connection to destination port failed, check SSM Agent logs.";

pub fn is_port_document(name: Option<&str>) -> bool {
    name.is_some_and(|n| PORT_DOCUMENTS.contains(&n))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Multiplexed,
    Basic,
    Stdio,
}

pub struct PortOptions {
    pub bind: String,
    /// Force stdin/stdout mode (ssh-proxy).
    pub stdio: bool,
    /// Listen on this unix socket instead of TCP (overrides the document's
    /// localPortNumber; the document's `localConnectionType=unix` +
    /// `localUnixSocket` properties do the same).
    pub unix: Option<PathBuf>,
    /// Shown before the live counters on a TTY (e.g. the forward spec).
    pub label: String,
}

/// Live counters for the status line.
#[derive(Default)]
struct Counters {
    open: AtomicU64,
    total: AtomicU64,
    /// Bytes from local connections towards the destination.
    sent: AtomicU64,
    /// Bytes from the destination to local connections.
    received: AtomicU64,
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Counters {
    fn line(&self, label: &str) -> String {
        format!(
            "{label}: {} open, {} total, {} sent, {} received",
            self.open.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
            human(self.sent.load(Ordering::Relaxed)),
            human(self.received.load(Ordering::Relaxed)),
        )
    }
}

/// Redraws the counters once a second, only when stderr is a terminal (so
/// logs and pipes never see control sequences).
fn spawn_status(counters: Arc<Counters>, label: String) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last = String::new();
        loop {
            tick.tick().await;
            let line = counters.line(&label);
            if line != last {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K{line}");
                let _ = err.flush();
                last = line;
            }
        }
    }))
}

type BoxRead = Box<dyn batch::PortRead + Send + Sync>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The local end: a TCP port or a unix socket (removed again on drop).
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(BoxRead, BoxWrite, String)> {
        match self {
            Listener::Tcp(l) => {
                let (conn, peer) = l.accept().await?;
                let _ = conn.set_nodelay(true);
                let (rd, wr) = conn.into_split();
                Ok((Box::new(rd), Box::new(wr), peer.to_string()))
            }
            Listener::Unix(l, path) => {
                let (conn, _) = l.accept().await?;
                let (rd, wr) = conn.into_split();
                Ok((Box::new(rd), Box::new(wr), path.display().to_string()))
            }
        }
    }
}

/// Where the document or the options say to listen.
fn unix_path(opts: &PortOptions, properties: &serde_json::Value) -> Option<PathBuf> {
    if let Some(p) = &opts.unix {
        return Some(p.clone());
    }
    let prop = |k: &str| properties.get(k).and_then(|v| v.as_str());
    if prop("localConnectionType") == Some("unix") {
        return prop("localUnixSocket")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
    }
    None
}

async fn listen(
    opts: &PortOptions,
    properties: &serde_json::Value,
    session_id: &str,
) -> Result<Listener, ClientError> {
    if let Some(path) = unix_path(opts, properties) {
        // A stale socket from an earlier run would make bind fail; only a
        // socket is removed, never a regular file.
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(&path);
            }
        }
        let l = UnixListener::bind(&path)
            .map_err(|e| ClientError::Usage(format!("cannot listen on {}: {e}", path.display())))?;
        say(&format!(
            "Unix socket {} opened for sessionId {session_id}.\nWaiting for connections...\n",
            path.display()
        ));
        return Ok(Listener::Unix(l, path));
    }
    let local = properties
        .get("localPortNumber")
        .and_then(|p| p.as_str())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(0);
    let listener = TcpListener::bind((opts.bind.as_str(), local))
        .await
        .map_err(|e| ClientError::Usage(format!("cannot listen on {}:{local}: {e}", opts.bind)))?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(local);
    say(&format!(
        "Port {port} opened for sessionId {session_id}.\nWaiting for connections...\n"
    ));
    Ok(Listener::Tcp(listener))
}

fn parse_version(v: &str) -> Option<Vec<u64>> {
    let parts: Option<Vec<u64>> = v.trim().split('.').map(|p| p.parse().ok()).collect();
    parts
        .filter(|p| !p.is_empty() && p.len() <= 4)
        .map(|mut p| {
            p.resize(4, 0);
            p
        })
}

/// Spec: agent version strictly greater than 3.0.196.0, unparsable → false.
pub fn agent_supports_mux(version: &str) -> bool {
    parse_version(version).is_some_and(|v| v > vec![3, 0, 196, 0])
}

#[derive(Debug, Clone, PartialEq)]
pub struct Negotiated {
    pub mode: Mode,
    pub properties: serde_json::Value,
    pub chunk: usize,
    /// Largest smux frame to send: an Airlock agent reads any u16 length,
    /// the stock agent is held to the plugin's 32 KiB.
    pub max_smux_frame: usize,
    /// Set when an Airlock agent encrypts this port session (`kms_port`).
    pub crypto: Option<ClientCrypto>,
}

pub fn negotiate(req: &HandshakeRequest, force_stdio: bool) -> Negotiated {
    let properties = req
        .requested_client_actions
        .iter()
        .find(|a| a.action_type == ACTION_SESSION_TYPE)
        .and_then(|a| {
            serde_json::from_value::<SessionTypeParameters>(a.action_parameters.clone()).ok()
        })
        .map(|p| p.properties)
        .unwrap_or(serde_json::Value::Null);
    let caps = req
        .requested_client_actions
        .iter()
        .find(|a| a.action_type == ACTION_AIRLOCK_CAPABILITIES)
        .and_then(|a| serde_json::from_value::<Capabilities>(a.action_parameters.clone()).ok());
    let chunk = caps
        .as_ref()
        .map(|c| c.max_payload.clamp(STOCK_PAYLOAD, PORT_MAX_PAYLOAD))
        .unwrap_or(STOCK_PAYLOAD);
    let local_forward =
        properties.get("type").and_then(|t| t.as_str()) == Some("LocalPortForwarding");
    let mode = if force_stdio || !local_forward {
        Mode::Stdio
    } else if caps.is_some() || agent_supports_mux(&req.agent_version) {
        Mode::Multiplexed
    } else {
        Mode::Basic
    };
    let max_smux_frame = if caps.is_some() {
        usize::from(u16::MAX)
    } else {
        smux::MAX_FRAME_SIZE
    };
    Negotiated {
        mode,
        properties,
        chunk,
        max_smux_frame,
        crypto: None,
    }
}

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn flag(f: u32) -> Bytes {
    Bytes::copy_from_slice(&f.to_be_bytes())
}

fn parse_flag(p: &[u8]) -> Option<u32> {
    let b: [u8; 4] = p.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

enum Out {
    Data(Bytes),
    /// Smux frames read in place (see `airlock_transport::batch`).
    Framed(FrameBuf),
    Flag(u32),
}

fn spawn_sender(
    sender: DataSender,
    mut rx: mpsc::Receiver<Out>,
    crypto: Option<ClientCrypto>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(o) = rx.recv().await {
            let r = match o {
                Out::Framed(mut buf) => {
                    if let Some(c) = &crypto {
                        if let Err(e) = c.seal_output_in_place(&mut buf) {
                            tracing::warn!("sealing failed: {e}");
                            return;
                        }
                    }
                    sender.send_buf(PayloadType::Output, buf).await
                }
                Out::Data(b) => {
                    let b = match &crypto {
                        Some(c) => match c.seal(PayloadType::Output, b) {
                            Ok(b) => b,
                            Err(e) => {
                                tracing::warn!("sealing failed: {e}");
                                return;
                            }
                        },
                        None => b,
                    };
                    sender.send(PayloadType::Output, b).await
                }
                Out::Flag(f) => sender.send(PayloadType::Flag, flag(f)).await,
            };
            if let Err(e) = r {
                tracing::debug!("send failed: {e}");
                return;
            }
        }
    })
}

/// Whether an Airlock agent offered to drop payload digests.
fn offers_no_digest(req: &HandshakeRequest) -> bool {
    req.requested_client_actions
        .iter()
        .filter(|a| a.action_type == ACTION_AIRLOCK_CAPABILITIES)
        .filter_map(|a| serde_json::from_value::<Capabilities>(a.action_parameters.clone()).ok())
        .any(|c| c.features.iter().any(|f| f == FEATURE_NO_PAYLOAD_DIGEST))
}

/// Waits for the agent's HandshakeRequest (unless `first` already is it),
/// answers it and returns the mode.
async fn handshake(
    dc: &mut DataChannel,
    force_stdio: bool,
    kms: &KmsEnv,
    mut first: Option<Bytes>,
) -> Result<Negotiated, ClientError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ev = match first.take() {
            Some(payload) => Some(ChannelEvent::Proto(Event::Data {
                payload_type: PayloadType::HandshakeRequest,
                payload,
            })),
            None => tokio::time::timeout_at(deadline, dc.recv())
                .await
                .map_err(|_| ClientError::Transport("no handshake from the agent".into()))?,
        };
        match ev {
            None => return Err(ClientError::Transport("data channel stopped".into())),
            Some(ChannelEvent::Proto(Event::Data {
                payload_type: PayloadType::HandshakeRequest,
                payload,
            })) => {
                let req: HandshakeRequest = serde_json::from_slice(&payload)
                    .map_err(|e| ClientError::BadResponse(format!("handshake request: {e}")))?;
                let mut out = crate::handshake::respond(&req);
                let no_digest = offers_no_digest(&req);
                for a in &mut out.response.processed_client_actions {
                    if a.action_type == ACTION_AIRLOCK_CAPABILITIES {
                        if let Some(obj) = a.action_result.as_object_mut() {
                            obj.insert("MaxPayload".into(), PORT_MAX_PAYLOAD.into());
                            if no_digest {
                                if let Some(f) =
                                    obj.get_mut("Features").and_then(|f| f.as_array_mut())
                                {
                                    f.push(FEATURE_NO_PAYLOAD_DIGEST.into());
                                }
                            }
                        }
                    }
                }
                let (offered, crypto) =
                    match crate::crypto::process(&req, &mut out.response, kms, true).await {
                        KmsOutcome::Ready(c) => (true, Some(c)),
                        // The agent decides whether a plain port session is acceptable.
                        KmsOutcome::Failed(m) => {
                            eprintln!("Port session not encrypted: {m}");
                            (true, None)
                        }
                        KmsOutcome::NotRequested => (false, None),
                    };
                if no_digest {
                    // The agent accepts digest-less frames from its offer on.
                    dc.sender()
                        .set_payload_digest(false, true)
                        .await
                        .map_err(|e| ClientError::Transport(e.to_string()))?;
                }
                let body = serde_json::to_vec(&out.response).unwrap_or_default();
                dc.send(PayloadType::HandshakeResponse, Bytes::from(body))
                    .await
                    .map_err(|e| ClientError::Transport(e.to_string()))?;
                let mut neg = negotiate(&req, force_stdio);
                if offered {
                    finish_kms(dc, crypto.as_ref(), deadline).await?;
                    neg.crypto = crypto;
                }
                return Ok(neg);
            }
            Some(ChannelEvent::Proto(Event::Control(f)))
                if f.message_type == MessageType::ChannelClosed =>
            {
                return Err(ClientError::Transport(
                    "session closed before the handshake".into(),
                ));
            }
            Some(ChannelEvent::Disconnected(why)) => {
                return Err(ClientError::Transport(format!(
                    "data channel lost: {why:?}"
                )))
            }
            Some(_) => {}
        }
    }
}

/// With an Airlock agent that offered `kms_port`: answers its encryption
/// challenge (when we have keys) and waits for HandshakeComplete, so a
/// refusal (the agent may require encryption) ends the session here instead
/// of reaching the forwarding loops.
async fn finish_kms(
    dc: &mut DataChannel,
    crypto: Option<&ClientCrypto>,
    deadline: tokio::time::Instant,
) -> Result<(), ClientError> {
    loop {
        let ev = tokio::time::timeout_at(deadline, dc.recv())
            .await
            .map_err(|_| ClientError::Transport("no encryption challenge from the agent".into()))?;
        match ev {
            Some(ChannelEvent::Proto(Event::Data {
                payload_type: PayloadType::EncChallengeRequest,
                payload,
            })) => {
                let c = crypto.ok_or_else(|| {
                    ClientError::Transport("encryption challenge without a data key".into())
                })?;
                let answer = c
                    .answer_challenge(&payload)
                    .map_err(ClientError::Transport)?;
                dc.send(PayloadType::EncChallengeResponse, answer)
                    .await
                    .map_err(|e| ClientError::Transport(e.to_string()))?;
            }
            Some(ChannelEvent::Proto(Event::Data {
                payload_type: PayloadType::HandshakeComplete,
                ..
            })) => return Ok(()),
            // The agent explains a refusal in plain text.
            Some(ChannelEvent::Proto(Event::Data {
                payload_type: PayloadType::Output,
                payload,
            })) => eprint!("{}", String::from_utf8_lossy(&payload)),
            Some(ChannelEvent::Proto(Event::Control(f)))
                if f.message_type == MessageType::ChannelClosed =>
            {
                return Err(ClientError::Transport(format!(
                    "the session was refused during the encryption handshake{}",
                    closed_message(&f).trim_end()
                )));
            }
            None | Some(ChannelEvent::Disconnected(_)) => {
                return Err(ClientError::Transport(
                    "data channel lost during the encryption handshake".into(),
                ))
            }
            Some(_) => {}
        }
    }
}

/// Runs a port session to its end; returns the exit status (0 on normal ends).
/// `kms.api` (for GenerateDataKey and ResumeSession) lets the session be
/// encrypted and survive network drops and gateway restarts; without it a
/// drop ends the session.
pub async fn run(
    info: SessionInfo,
    tls: Arc<rustls::ClientConfig>,
    opts: PortOptions,
    kms: KmsEnv,
) -> Result<i32, ClientError> {
    let ws = ws::connect(&info.stream_url, tls.clone())
        .await
        .map_err(|e| ClientError::Transport(e.to_string()))?;
    let dc = DataChannel::spawn(
        ws,
        open_message(&info.token_value),
        Role::Client,
        Config::default(),
    );
    run_on(dc, None, info, tls, opts, kms).await
}

/// [`run`] on a data channel already open, whose HandshakeRequest payload
/// may already have been read (a document that named no known type, see
/// `session::probe`).
pub async fn run_on(
    mut dc: DataChannel,
    handshake_request: Option<Bytes>,
    info: SessionInfo,
    tls: Arc<rustls::ClientConfig>,
    opts: PortOptions,
    kms: KmsEnv,
) -> Result<i32, ClientError> {
    if let Some(api) = kms.api.clone() {
        dc.set_redial(
            info.resume_window(),
            crate::session::resume_dialer(info.clone(), tls, api),
        );
    }
    // Registered before "Port N opened" is printed, so a Ctrl-C right after
    // the ready line is never lost to the default handler.
    let interrupted = Arc::new(tokio::sync::Notify::new());
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    {
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            if sigint.recv().await.is_some() {
                interrupted.notify_one();
            }
        });
    }
    let neg = handshake(&mut dc, opts.stdio, &kms, handshake_request).await?;
    tracing::debug!(mode = ?neg.mode, chunk = neg.chunk, "port session");
    let (out_tx, out_rx) = mpsc::channel(airlock_transport::batch::out_queue_frames(neg.chunk));
    let pump = spawn_sender(dc.sender(), out_rx, neg.crypto.clone());
    let result = match neg.mode {
        Mode::Stdio => run_stdio(&mut dc, &neg, out_tx.clone(), &interrupted).await,
        Mode::Multiplexed | Mode::Basic => {
            let listener = listen(&opts, &neg.properties, &info.session_id).await?;
            let counters = Arc::new(Counters::default());
            let label = if opts.label.is_empty() {
                info.session_id.clone()
            } else {
                opts.label.clone()
            };
            let status = spawn_status(counters.clone(), label);
            let r = if neg.mode == Mode::Multiplexed {
                run_mux(
                    &mut dc,
                    &neg,
                    listener,
                    out_tx.clone(),
                    &interrupted,
                    &counters,
                )
                .await
            } else {
                run_basic(
                    &mut dc,
                    &neg,
                    listener,
                    out_tx.clone(),
                    &interrupted,
                    &counters,
                )
                .await
            };
            if let Some(s) = status {
                s.abort();
                eprintln!();
            }
            r
        }
    };
    if let Ok(End::Interrupted) = result {
        let _ = out_tx.send(Out::Flag(FLAG_TERMINATE_SESSION)).await;
    }
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
    let _ = dc.flush(Duration::from_secs(1)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), dc.close()).await;
    match result {
        Ok(End::Closed(msg, failed)) => {
            eprint!("{msg}");
            Ok(if failed {
                crate::error::EXIT_SESSION_FAILED
            } else {
                0
            })
        }
        Ok(End::Interrupted) => Ok(0),
        Err(e) => Err(e),
    }
}

enum End {
    /// The gateway closed the channel; true when the session failed.
    Closed(String, bool),
    Interrupted,
}

fn closed_message(frame: &airlock_proto::Frame) -> String {
    let output = serde_json::from_slice::<serde_json::Value>(&frame.payload)
        .ok()
        .and_then(|v| v.get("Output").and_then(|o| o.as_str()).map(String::from))
        .filter(|o| !o.is_empty());
    let id = serde_json::from_slice::<serde_json::Value>(&frame.payload)
        .ok()
        .and_then(|v| {
            v.get("SessionId")
                .and_then(|o| o.as_str())
                .map(String::from)
        })
        .unwrap_or_default();
    match output {
        Some(o) => format!("\n\nSessionId: {id} : {o}\n\n"),
        None => format!("\n\nExiting session with sessionId: {id}.\n\n"),
    }
}

/// The stock message, plus the agent's reason when an Airlock agent sent
/// one after the 4-byte flag (control characters dropped: peer bytes).
pub fn connect_error_line(payload: &[u8]) -> String {
    let reason: String = payload
        .get(4..)
        .map(String::from_utf8_lossy)
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(512)
        .collect();
    if reason.is_empty() {
        CONNECT_ERROR_MESSAGE.to_string()
    } else {
        format!("{CONNECT_ERROR_MESSAGE} Reason: {reason}")
    }
}

/// What the main loops do with data-channel events common to every mode.
enum Common {
    Data(PayloadType, Bytes),
    End(Result<End, ClientError>),
    Nothing,
}

fn common(ev: Option<ChannelEvent>, neg: &Negotiated) -> Common {
    match ev {
        None => Common::End(Err(ClientError::Transport(
            "data channel stopped unexpectedly".into(),
        ))),
        Some(ChannelEvent::Proto(Event::Data {
            payload_type,
            payload,
        })) => {
            if payload_type == PayloadType::Flag
                && parse_flag(&payload) == Some(FLAG_CONNECT_TO_PORT_ERROR)
            {
                say(&format!("{}\n", connect_error_line(&payload)));
                return Common::Nothing;
            }
            match &neg.crypto {
                Some(c) => match c.open(payload_type, payload) {
                    Ok(p) => Common::Data(payload_type, p),
                    Err(e) => Common::End(Err(ClientError::Transport(e))),
                },
                None => Common::Data(payload_type, payload),
            }
        }
        Some(ChannelEvent::Proto(Event::Control(f)))
            if f.message_type == MessageType::ChannelClosed =>
        {
            Common::End(Ok(End::Closed(
                closed_message(&f),
                crate::session::ended_as_failed(&f),
            )))
        }
        Some(ChannelEvent::Proto(Event::Control(f))) => {
            // stderr: in stdio mode stdout carries the forwarded stream.
            if let Some(notice) = crate::session::session_notice(&f) {
                eprintln!("{notice}");
            }
            Common::Nothing
        }
        Some(ChannelEvent::Disconnected(why)) => Common::End(Err(ClientError::Transport(format!(
            "lost the connection to the session: {why:?}"
        )))),
    }
}

/// Copies `rd` into `out` as Output payloads of ≤ `read_size` bytes, each
/// wrapped by `wrap`. Returns when `rd` ends.
async fn pump_reader<R: AsyncRead + Unpin>(
    mut rd: R,
    read_size: usize,
    out: &mpsc::Sender<Out>,
    counter: Option<&AtomicU64>,
    wrap: impl Fn(&[u8]) -> Option<Bytes>,
) -> bool {
    let mut buf = vec![0u8; read_size];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => {
                if let Some(c) = counter {
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
                let Some(b) = wrap(buf.get(..n).unwrap_or(&[])) else {
                    return true;
                };
                if out.send(Out::Data(b)).await.is_err() {
                    return false;
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
struct BatchSizes {
    /// Largest payload on the wire.
    chunk: usize,
    max_frame: usize,
    /// The sender seals payloads in place (`kms_port`).
    sealed: bool,
}

/// Copies one multiplexed connection into `out` as payloads of smux frames
/// read in place, up to `sizes.chunk` bytes each. Returns false when `out`
/// is gone, true when `rd` ended (its FIN is the caller's).
async fn pump_mux_stream<R: batch::PortRead>(
    mut rd: R,
    sid: u32,
    sizes: BatchSizes,
    out: &mpsc::Sender<Out>,
    sent: &AtomicU64,
) -> bool {
    let mut sizer = batch::BatchSizer::new(sizes.chunk);
    loop {
        let chunk = sizer.next();
        let (mut buf, max_payload) = batch::batch_buffer(chunk, sizes.sealed);
        let got = batch::read_psh_batch(&mut rd, sid, &mut buf, max_payload, sizes.max_frame)
            .await
            .unwrap_or(batch::Batch {
                open: false,
                stream_bytes: 0,
            });
        sizer.record(buf.payload_len(), chunk);
        if got.stream_bytes > 0 {
            sent.fetch_add(got.stream_bytes as u64, Ordering::Relaxed);
            if out.send(Out::Framed(buf)).await.is_err() {
                return false;
            }
        }
        if !got.open {
            return true;
        }
    }
}

fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(
    mut wr: W,
    mut rx: mpsc::Receiver<Bytes>,
    counters: Option<Arc<Counters>>,
) {
    tokio::spawn(async move {
        let done = batch::write_queued(&mut wr, &mut rx, |n| {
            if let Some(c) = &counters {
                c.received.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
        .await;
        if done.is_ok() {
            let _ = wr.shutdown().await;
        }
    });
}

fn frame(cmd: Cmd, sid: u32, data: &[u8]) -> Option<Bytes> {
    let mut b = BytesMut::with_capacity(smux::HEADER_LEN + data.len());
    smux::encode(cmd, sid, data, &mut b).ok()?;
    Some(b.freeze())
}

async fn run_mux(
    dc: &mut DataChannel,
    neg: &Negotiated,
    listener: Listener,
    out: mpsc::Sender<Out>,
    interrupted: &tokio::sync::Notify,
    counters: &Arc<Counters>,
) -> Result<End, ClientError> {
    let mut mux = Mux::new(MuxRole::Client);
    let mut writers: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let (closed_tx, mut closed_rx) = mpsc::channel::<u32>(1024);
    loop {
        tokio::select! {
            _ = interrupted.notified() => return Ok(End::Interrupted),
            accepted = listener.accept() => {
                let (rd, wr, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => { tracing::debug!("accept: {e}"); continue; }
                };
                let sid = match mux.open() {
                    Ok(s) => s,
                    Err(e) => { tracing::warn!("refusing {peer}: {e}"); continue; }
                };
                // The SYN goes out before any of the stream's data.
                if out.send(Out::Data(mux.take_output())).await.is_err() {
                    return Err(ClientError::Transport("data channel stopped".into()));
                }
                tracing::debug!(stream = sid, %peer, "new connection");
                counters.open.fetch_add(1, Ordering::Relaxed);
                counters.total.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                writers.insert(sid, tx);
                spawn_writer(wr, rx, Some(counters.clone()));
                let out = out.clone();
                let closed = closed_tx.clone();
                let counters = counters.clone();
                let sizes = BatchSizes {
                    chunk: neg.chunk,
                    max_frame: neg.max_smux_frame,
                    sealed: neg.crypto.is_some(),
                };
                tokio::spawn(async move {
                    if pump_mux_stream(rd, sid, sizes, &out, &counters.sent).await {
                        if let Some(f) = frame(Cmd::Fin, sid, &[]) {
                            let _ = out.send(Out::Data(f)).await;
                        }
                    }
                    counters.open.fetch_sub(1, Ordering::Relaxed);
                    let _ = closed.send(sid).await;
                });
            }
            Some(sid) = closed_rx.recv() => {
                // Our side is done; the peer's data keeps flowing to the
                // local end until its FIN (half-close).
                if mux.forget(sid) {
                    writers.remove(&sid);
                }
            }
            ev = dc.recv() => match common(ev, neg) {
                Common::End(r) => return r,
                Common::Nothing => {}
                Common::Data(PayloadType::Output, payload) => {
                    let events = mux
                        .receive_bytes(payload)
                        .map_err(|e| ClientError::Transport(e.to_string()))?;
                    for e in events {
                        match e {
                            MuxEvent::Data(sid, d) => {
                                if let Some(w) = writers.get(&sid) {
                                    if w.send(d).await.is_err() {
                                        writers.remove(&sid);
                                    }
                                }
                            }
                            MuxEvent::Closed(sid) => {
                                writers.remove(&sid);
                            }
                            MuxEvent::Opened(_) => {}
                        }
                    }
                }
                Common::Data(_, _) => {}
            },
        }
    }
}

async fn run_basic(
    dc: &mut DataChannel,
    neg: &Negotiated,
    listener: Listener,
    out: mpsc::Sender<Out>,
    interrupted: &tokio::sync::Notify,
    counters: &Arc<Counters>,
) -> Result<End, ClientError> {
    let (closed_tx, mut closed_rx) = mpsc::channel::<u64>(4);
    let mut writer: Option<mpsc::Sender<Bytes>> = None;
    let mut generation = 0u64;
    let read_size = neg.chunk;
    loop {
        tokio::select! {
            _ = interrupted.notified() => return Ok(End::Interrupted),
            accepted = listener.accept(), if writer.is_none() => {
                let Ok((rd, wr, _)) = accepted else { continue };
                generation += 1;
                counters.open.fetch_add(1, Ordering::Relaxed);
                counters.total.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                writer = Some(tx);
                spawn_writer(wr, rx, Some(counters.clone()));
                let out = out.clone();
                let closed = closed_tx.clone();
                let g = generation;
                let counters = counters.clone();
                tokio::spawn(async move {
                    let sent = Some(&counters.sent);
                    pump_reader(rd, read_size, &out, sent, |d| Some(Bytes::copy_from_slice(d))).await;
                    counters.open.fetch_sub(1, Ordering::Relaxed);
                    let _ = closed.send(g).await;
                });
            }
            Some(g) = closed_rx.recv() => {
                if g == generation {
                    writer = None;
                    let _ = out.send(Out::Flag(FLAG_DISCONNECT_TO_PORT)).await;
                }
            }
            // Data is held (not acked) until a connection is accepted.
            ev = dc.recv(), if writer.is_some() => match common(ev, neg) {
                Common::End(r) => return r,
                Common::Nothing => {}
                Common::Data(PayloadType::Output, payload) => {
                    if let Some(w) = &writer {
                        if w.send(payload).await.is_err() {
                            writer = None;
                        }
                    }
                }
                Common::Data(_, _) => {}
            },
        }
    }
}

async fn run_stdio(
    dc: &mut DataChannel,
    neg: &Negotiated,
    out: mpsc::Sender<Out>,
    interrupted: &tokio::sync::Notify,
) -> Result<End, ClientError> {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    spawn_writer(tokio::io::stdout(), rx, None);
    let read_size = neg.chunk;
    let (eof_tx, mut eof_rx) = mpsc::channel::<()>(1);
    let stdin_out = out.clone();
    tokio::spawn(async move {
        pump_reader(tokio::io::stdin(), read_size, &stdin_out, None, |d| {
            Some(Bytes::copy_from_slice(d))
        })
        .await;
        let _ = eof_tx.send(()).await;
    });
    loop {
        tokio::select! {
            _ = interrupted.notified() => return Ok(End::Interrupted),
            Some(()) = eof_rx.recv() => {
                // Stdin closed: the local side is done; end the session.
                return Ok(End::Interrupted);
            }
            ev = dc.recv() => match common(ev, neg) {
                Common::End(r) => {
                    drop(tx);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return r;
                }
                Common::Nothing => {}
                Common::Data(PayloadType::Output, payload) => {
                    if tx.send(payload).await.is_err() {
                        return Ok(End::Interrupted);
                    }
                }
                Common::Data(_, _) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_proto::handshake::RequestedClientAction;

    fn req(version: &str, props: serde_json::Value, caps: bool) -> HandshakeRequest {
        let mut actions = vec![RequestedClientAction {
            action_type: ACTION_SESSION_TYPE.into(),
            action_parameters: serde_json::json!({"SessionType": "Port", "Properties": props}),
        }];
        if caps {
            actions.push(RequestedClientAction {
                action_type: ACTION_AIRLOCK_CAPABILITIES.into(),
                action_parameters: serde_json::json!({"Features": [], "MaxPayload": 65536}),
            });
        }
        HandshakeRequest {
            agent_version: version.into(),
            requested_client_actions: actions,
        }
    }

    #[test]
    fn mode_rules() {
        let lpf = serde_json::json!({"type": "LocalPortForwarding", "portNumber": "80"});
        assert_eq!(
            negotiate(&req("3.0.196.0", lpf.clone(), false), false).mode,
            Mode::Basic
        );
        assert_eq!(
            negotiate(&req("3.0.197.0", lpf.clone(), false), false).mode,
            Mode::Multiplexed
        );
        assert_eq!(
            negotiate(&req("0.1.0", lpf.clone(), true), false).mode,
            Mode::Multiplexed
        );
        assert_eq!(
            negotiate(&req("0.1.0", lpf.clone(), true), false).chunk,
            65536
        );
        assert_eq!(
            negotiate(&req("3.3.0.0", lpf.clone(), false), false).chunk,
            1024
        );
        assert_eq!(
            negotiate(&req("3.3.0.0", lpf, false), true).mode,
            Mode::Stdio
        );
        assert_eq!(
            negotiate(
                &req("3.3.0.0", serde_json::json!({"portNumber": "22"}), false),
                false
            )
            .mode,
            Mode::Stdio
        );
        assert!(!agent_supports_mux("bogus"));
    }

    #[test]
    fn connect_error_reason() {
        assert_eq!(connect_error_line(&[0, 0, 0, 3]), CONNECT_ERROR_MESSAGE);
        let mut p = vec![0, 0, 0, 3];
        p.extend_from_slice(b"denied\x1b[2J by policy");
        let line = connect_error_line(&p);
        assert!(line.ends_with("Reason: denied[2J by policy"), "{line}");
    }

    #[test]
    fn unix_socket_from_document_or_options() {
        let opts = PortOptions {
            bind: "127.0.0.1".into(),
            stdio: false,
            unix: None,
            label: String::new(),
        };
        let props = serde_json::json!({"localConnectionType": "unix", "localUnixSocket": "/tmp/s"});
        assert_eq!(unix_path(&opts, &props), Some(PathBuf::from("/tmp/s")));
        assert_eq!(
            unix_path(&opts, &serde_json::json!({"localUnixSocket": "/tmp/s"})),
            None
        );
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(12), "12 B");
    }
}
