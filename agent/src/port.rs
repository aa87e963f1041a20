//! Port sessions (spec §5.1): basic single-connection mode, the SSH
//! document's stdin/stdout mode, and smux multiplexed mode.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_proto::handshake::{
    Capabilities, HandshakeComplete, HandshakeRequest, HandshakeResponse, RequestedClientAction,
    ACTION_AIRLOCK_CAPABILITIES, ACTION_SESSION_TYPE,
};
use airlock_proto::messages::{AgentSessionState, SessionState, StartSessionTask};
use airlock_proto::reliable::{Event, FEATURE_NO_PAYLOAD_DIGEST};
use airlock_proto::smux::{self, Cmd, Mux, MuxEvent, MuxRole};
use airlock_proto::{FrameBuf, MessageType, PayloadType};
use airlock_transport::batch;
use airlock_transport::datachannel::{ChannelEvent, DataChannel, DataSender};
use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::Agent;
use crate::crypto::AgentCrypto;
use crate::port_policy::Policy;
use crate::session::{is_channel_closed, open_data_channel, Link, Outcome};
use crate::sysinfo;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
const STOCK_PAYLOAD: usize = airlock_proto::frame::STOCK_PAYLOAD_SIZE;
/// Payload size offered to Airlock clients for port sessions.
pub const PORT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Received smux frames queued for one local connection. Each is a slice of
/// up to 64 KiB that keeps its whole payload (up to 1 MiB) allocated, so
/// this bounds memory per stream, not just frames: at 64 the agent peaked at
/// 90 MiB relaying 16 connections, at 16 it stays near 35 MiB with the same
/// throughput (docs/PERFORMANCE.md).
const STREAM_QUEUE: usize = 16;
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest dial-failure reason sent to the client.
const MAX_REASON: usize = 512;

pub const FLAG_DISCONNECT_TO_PORT: u32 = 1;
pub const FLAG_TERMINATE_SESSION: u32 = 2;
pub const FLAG_CONNECT_TO_PORT_ERROR: u32 = 3;

/// What the client negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    version: String,
    airlock: bool,
    max_payload: usize,
    no_digest: bool,
}

/// Numeric 4-part compare; unparsable → None.
fn parse_version(v: &str) -> Option<Vec<u64>> {
    let parts: Option<Vec<u64>> = v.trim().split('.').map(|p| p.parse().ok()).collect();
    parts.filter(|p| !p.is_empty() && p.len() <= 4)
}

fn version_at_least(v: &str, min: &str) -> bool {
    match (parse_version(v), parse_version(min)) {
        (Some(mut a), Some(mut b)) => {
            a.resize(4, 0);
            b.resize(4, 0);
            a >= b
        }
        _ => false,
    }
}

/// Spec: multiplexed when `type` is LocalPortForwarding and the client is
/// Airlock or a plugin ≥ 1.1.70.
fn multiplexed(properties: &serde_json::Value, peer: &Peer) -> bool {
    properties.get("type").and_then(|t| t.as_str()) == Some("LocalPortForwarding")
        && (peer.airlock || version_at_least(&peer.version, "1.1.70"))
}

fn peer_from(resp: &HandshakeResponse) -> Peer {
    let caps = resp.processed_client_actions.iter().find_map(|a| {
        (a.action_type == ACTION_AIRLOCK_CAPABILITIES && a.action_status == 1)
            .then(|| serde_json::from_value::<Capabilities>(a.action_result.clone()).ok())
            .flatten()
    });
    Peer {
        version: resp.client_version.clone(),
        airlock: caps.is_some(),
        no_digest: caps
            .as_ref()
            .is_some_and(|c| c.features.iter().any(|f| f == FEATURE_NO_PAYLOAD_DIGEST)),
        max_payload: caps
            .map(|c| c.max_payload.clamp(STOCK_PAYLOAD, PORT_MAX_PAYLOAD))
            .unwrap_or(STOCK_PAYLOAD),
    }
}

/// Resolves and dials `host:port` under the agent's destination policy.
/// Err is the reason reported to the client.
async fn dial(policy: &Policy, host: &str, port: u16) -> Result<TcpStream, String> {
    policy.check_name(host, port)?;
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(DIAL_TIMEOUT, tokio::net::lookup_host((host, port))).await {
            Err(_) => return Err(format!("resolving {host} timed out")),
            Ok(Err(e)) => return Err(format!("cannot resolve {host}: {e}")),
            Ok(Ok(a)) => a.collect(),
        };
    if addrs.is_empty() {
        return Err(format!("{host} has no addresses"));
    }
    policy.check_resolved(host, port, &addrs)?;
    let mut last = String::from("connect failed");
    for a in addrs {
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("connect {a}: {e}"),
            Err(_) => last = format!("connect {a}: timed out"),
        }
    }
    Err(last)
}

fn flag_payload(flag: u32) -> Bytes {
    Bytes::copy_from_slice(&flag.to_be_bytes())
}

/// ConnectToPortError: stock peers read only the 4-byte flag; Airlock
/// clients also get the reason as UTF-8 after it.
fn connect_error(reason: &str, airlock_peer: bool) -> Out {
    if !airlock_peer {
        return Out::Flag(FLAG_CONNECT_TO_PORT_ERROR);
    }
    let mut b = BytesMut::with_capacity(4 + reason.len().min(MAX_REASON));
    b.extend_from_slice(&FLAG_CONNECT_TO_PORT_ERROR.to_be_bytes());
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    b.extend_from_slice(reason.get(..end).unwrap_or("").as_bytes());
    Out::Raw(PayloadType::Flag, b.freeze())
}

fn parse_flag(payload: &[u8]) -> Option<u32> {
    let b: [u8; 4] = payload.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

enum Out {
    Output(Bytes),
    /// Smux frames read in place (see `airlock_transport::batch`).
    Framed(FrameBuf),
    Flag(u32),
    Raw(PayloadType, Bytes),
}

fn spawn_sender(
    sender: DataSender,
    mut rx: mpsc::Receiver<Out>,
    crypto: Option<AgentCrypto>,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        while let Some(o) = rx.recv().await {
            match o {
                Out::Framed(mut buf) => {
                    if let Some(c) = &crypto {
                        c.seal_output_in_place(&mut buf)?;
                    }
                    sender.send_buf(PayloadType::Output, buf).await?
                }
                Out::Output(b) => {
                    let b = match &crypto {
                        Some(c) => c.seal(PayloadType::Output, b)?,
                        None => b,
                    };
                    sender.send(PayloadType::Output, b).await?
                }
                Out::Flag(f) => sender.send(PayloadType::Flag, flag_payload(f)).await?,
                Out::Raw(t, b) => {
                    let b = match &crypto {
                        Some(c) => c.seal(t, b)?,
                        None => b,
                    };
                    sender.send(t, b).await?
                }
            }
        }
        Ok(())
    })
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
    let state = |s: SessionState| AgentSessionState {
        schema_version: 1,
        session_state: s,
        session_id: sid.clone(),
    };
    dc.send_unsequenced(
        MessageType::AgentSessionState,
        Bytes::from(serde_json::to_vec(&state(SessionState::Connected))?),
    )
    .await?;

    let properties = task.document_content.properties.clone();
    let started = Instant::now();
    let kms = crate::crypto::settings(&task);
    let kms_challenge = crate::crypto::random_challenge()?;
    let mut request = HandshakeRequest {
        agent_version: sysinfo::agent_version(),
        requested_client_actions: vec![
            RequestedClientAction {
                action_type: ACTION_SESSION_TYPE.into(),
                action_parameters: serde_json::json!({"SessionType": "Port", "Properties": properties}),
            },
            RequestedClientAction {
                action_type: ACTION_AIRLOCK_CAPABILITIES.into(),
                action_parameters: serde_json::to_value(Capabilities {
                    features: vec![FEATURE_NO_PAYLOAD_DIGEST.into()],
                    max_payload: PORT_MAX_PAYLOAD,
                })?,
            },
        ],
    };
    if let (Some(k), Some(caps)) = (&kms, request.requested_client_actions.get_mut(1)) {
        crate::crypto::port_capability_params(
            &mut caps.action_parameters,
            &k.key_id,
            &kms_challenge,
        );
    }
    // Offering the feature: an Airlock client may stop sending digests as
    // soon as it has answered, before we have read its answer.
    dc.sender().set_payload_digest(true, true).await?;
    dc.send(
        PayloadType::HandshakeRequest,
        Bytes::from(serde_json::to_vec(&request)?),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let (peer, response) = loop {
        let ev = tokio::select! {
            ev = dc.recv() => ev,
            _ = cancel.cancelled() => { dc.close().await; return Ok(Outcome::Cancelled) }
            _ = tokio::time::sleep_until(deadline) => bail!("Handshake timed out"),
        };
        match ev {
            None => bail!("data channel stopped during handshake"),
            Some(ChannelEvent::Proto(Event::Data {
                payload_type: PayloadType::HandshakeResponse,
                payload,
            })) => {
                let resp: HandshakeResponse =
                    serde_json::from_slice(&payload).context("malformed handshake response")?;
                if let Some(a) = resp
                    .processed_client_actions
                    .iter()
                    .find(|a| a.action_type == ACTION_SESSION_TYPE && a.action_status != 1)
                {
                    bail!("client refused the Port session: {}", a.error);
                }
                break (peer_from(&resp), resp);
            }
            Some(ChannelEvent::Proto(Event::Data { .. })) => {}
            Some(ChannelEvent::Proto(Event::Control(frame))) => {
                if is_channel_closed(&frame) {
                    dc.close().await;
                    return Ok(Outcome::Cancelled);
                }
            }
            Some(ChannelEvent::Disconnected(_)) => link.reconnect(&dc).await?,
        }
    };
    let mut crypto = None;
    if let Some(k) = &kms {
        use crate::crypto::Negotiated;
        let n = crate::crypto::negotiate(
            &mut dc,
            &agent,
            &task,
            k,
            &kms_challenge,
            Some(&response),
            true,
            &link,
            0,
        );
        match n.await? {
            Negotiated::Encrypted(c, _) => crypto = Some(c),
            Negotiated::Plain => {}
            Negotiated::Closed => {
                dc.close().await;
                return Ok(Outcome::Cancelled);
            }
        }
    }
    // Digests stay on (and required) unless the client took the feature.
    dc.sender()
        .set_payload_digest(!peer.no_digest, peer.no_digest)
        .await?;
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

    let host = properties
        .get("host")
        .and_then(|h| h.as_str())
        .filter(|h| !h.is_empty())
        .unwrap_or("localhost")
        .to_string();
    let port: u16 = properties
        .get("portNumber")
        .and_then(|p| p.as_str())
        .and_then(|p| p.parse().ok())
        .context("document properties lack a valid portNumber")?;
    let mux = multiplexed(&properties, &peer);
    let chunk = peer.max_payload;
    info!(%host, port, mux, chunk, no_digest = peer.no_digest, client_version = %peer.version, "port session");

    let (out_tx, out_rx) = mpsc::channel(airlock_transport::batch::out_queue_frames(chunk));
    let pump = spawn_sender(dc.sender(), out_rx, crypto.clone());
    let rec = crate::recorder::start(&agent, &task, "port", (0, 0)).await;
    if rec.is_none() && crate::recorder::fails_closed(&task) {
        bail!("{}", crate::recorder::REFUSED_UNRECORDED);
    }
    let dest = Arc::new(Dest {
        host,
        port,
        chunk,
        policy: agent.port_policy.clone(),
        airlock_peer: peer.airlock,
        rec: rec.clone(),
        crypto,
    });
    let result = if mux {
        run_mux(&mut dc, &link, &dest, out_tx, &cancel).await
    } else {
        run_basic(&mut dc, &link, &dest, out_tx, &cancel).await
    };
    // The pump ends once every sender is gone; let it drain.
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, pump).await;
    drop(dest);
    crate::session::finish(&rec).await;
    match result {
        Ok(true) => {
            dc.close().await;
            return Ok(Outcome::Cancelled);
        }
        Ok(false) => {}
        Err(e) => warn!(error = %format!("{e:#}"), "port session error"),
    }
    if !dc.flush(FLUSH_TIMEOUT).await {
        debug!("not every frame was acked before terminating");
    }
    dc.send_unsequenced(
        MessageType::AgentSessionState,
        Bytes::from(serde_json::to_vec(&state(SessionState::Terminating))?),
    )
    .await?;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(ev) = dc.recv().await {
            match ev {
                ChannelEvent::Disconnected(_) => break,
                ChannelEvent::Proto(Event::Control(f)) if is_channel_closed(&f) => break,
                _ => {}
            }
        }
    })
    .await;
    dc.close().await;
    Ok(Outcome::Exited(0))
}

struct Dest {
    host: String,
    port: u16,
    chunk: usize,
    policy: Policy,
    airlock_peer: bool,
    rec: Option<crate::recorder::Recorder>,
    /// Set when the session is KMS-encrypted (Airlock client, `kms_port`).
    crypto: Option<AgentCrypto>,
}

impl Dest {
    fn open(&self, payload_type: PayloadType, payload: Bytes) -> Result<Bytes> {
        match &self.crypto {
            Some(c) => c.open(payload_type, payload),
            None => Ok(payload),
        }
    }
}

enum Internal {
    /// Local TCP side of a stream finished (its FIN is already queued).
    Closed(u32),
}

/// Returns Ok(true) when the session was cancelled (channel_closed / agent stop).
async fn run_mux(
    dc: &mut DataChannel,
    link: &Link<'_>,
    dest: &Arc<Dest>,
    out_tx: mpsc::Sender<Out>,
    cancel: &CancellationToken,
) -> Result<bool> {
    let mut mux = Mux::new(MuxRole::Server);
    let mut writers: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let (int_tx, mut int_rx) = mpsc::channel::<Internal>(1024);
    let read_size = dest.chunk;
    let tasks = tokio_util::task::TaskTracker::new();
    let outcome = loop {
        tokio::select! {
            _ = cancel.cancelled() => break true,
            Some(Internal::Closed(sid)) = int_rx.recv() => {
                // Our side is done; the peer's data keeps flowing to the
                // local end until its FIN (half-close).
                if mux.forget(sid) {
                    writers.remove(&sid);
                }
            }
            ev = dc.recv() => match ev {
                None => bail!("data channel stopped"),
                Some(ChannelEvent::Proto(Event::Data { payload_type, payload })) => match payload_type {
                    PayloadType::Output => {
                        let payload = dest.open(payload_type, payload)?;
                        let events = match mux.receive_bytes(payload) {
                            Ok(e) => e,
                            Err(e) => bail!("{e}"),
                        };
                        for e in events {
                            match e {
                                MuxEvent::Opened(sid) => {
                                    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                                    writers.insert(sid, tx);
                                    tasks.spawn(stream_task(
                                        sid,
                                        dest.clone(),
                                        read_size,
                                        rx,
                                        out_tx.clone(),
                                        int_tx.clone(),
                                        dest.rec.clone(),
                                    ));
                                }
                                MuxEvent::Data(sid, data) => {
                                    if let Some(w) = writers.get(&sid) {
                                        if w.send(data).await.is_err() {
                                            writers.remove(&sid);
                                        }
                                    }
                                }
                                MuxEvent::Closed(sid) => {
                                    writers.remove(&sid);
                                }
                            }
                        }
                        // Refusals of excess streams.
                        if mux.has_output() {
                            let _ = out_tx.send(Out::Output(mux.take_output())).await;
                        }
                    }
                    PayloadType::Flag if parse_flag(&payload) == Some(FLAG_TERMINATE_SESSION) => {
                        break false;
                    }
                    _ => {}
                },
                Some(ChannelEvent::Proto(Event::Control(frame))) => {
                    if is_channel_closed(&frame) {
                        break true;
                    }
                }
                Some(ChannelEvent::Disconnected(why)) => {
                    debug!(?why, "data channel dropped");
                    link.reconnect(dc).await?;
                }
            },
        }
    };
    writers.clear();
    tasks.close();
    if outcome {
        tasks.wait().await;
    } else {
        let _ = tokio::time::timeout(Duration::from_millis(200), tasks.wait()).await;
    }
    Ok(outcome)
}

fn fin_frame(sid: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(smux::HEADER_LEN);
    let _ = smux::encode(Cmd::Fin, sid, &[], &mut b);
    b.freeze()
}

// The recorder rides along as one more argument; bundling them would only
// move the same list into a struct.
#[allow(clippy::too_many_arguments)]
async fn stream_task(
    sid: u32,
    dest: Arc<Dest>,
    read_size: usize,
    mut rx: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Out>,
    internal: mpsc::Sender<Internal>,
    rec: Option<crate::recorder::Recorder>,
) {
    let remote = format!("{}:{}", dest.host, dest.port);
    let conn = match dial(&dest.policy, &dest.host, dest.port).await {
        Ok(c) => c,
        Err(e) => {
            crate::recorder::conn_event(&rec, "error", sid, &remote, (0, 0), &e).await;
            warn!(stream = sid, error = %e, "dial failed");
            let _ = out.send(connect_error(&e, dest.airlock_peer)).await;
            let _ = out.send(Out::Output(fin_frame(sid))).await;
            let _ = internal.send(Internal::Closed(sid)).await;
            return;
        }
    };
    debug!(stream = sid, "stream connected");
    crate::recorder::conn_event(&rec, "opened", sid, &remote, (0, 0), "").await;
    let (mut rd, mut wr) = conn.into_split();
    let writer = tokio::spawn(async move {
        let mut written = 0u64;
        let done = batch::write_queued(&mut wr, &mut rx, |n| written += n as u64).await;
        if done.is_ok() {
            let _ = wr.shutdown().await;
        }
        written
    });
    // The stock plugin's smux is held to its own 32 KiB frames.
    let max_frame = if dest.airlock_peer {
        usize::from(u16::MAX)
    } else {
        smux::MAX_FRAME_SIZE
    };
    let mut read_total = 0u64;
    let mut sizer = batch::BatchSizer::new(read_size);
    loop {
        let chunk = sizer.next();
        let (mut buf, max_payload) = batch::batch_buffer(chunk, dest.crypto.is_some());
        let got = batch::read_psh_batch(&mut rd, sid, &mut buf, max_payload, max_frame)
            .await
            .unwrap_or(batch::Batch {
                open: false,
                stream_bytes: 0,
            });
        sizer.record(buf.payload_len(), chunk);
        read_total += got.stream_bytes as u64;
        if got.stream_bytes > 0 && out.send(Out::Framed(buf)).await.is_err() {
            writer.abort();
            return;
        }
        if !got.open {
            break;
        }
    }
    let _ = out.send(Out::Output(fin_frame(sid))).await;
    let _ = internal.send(Internal::Closed(sid)).await;
    // The writer ends when the main loop drops its sender.
    let written = writer.await.unwrap_or(0);
    crate::recorder::conn_event(&rec, "closed", sid, &remote, (written, read_total), "").await;
}

/// Basic mode: one TCP connection at a time. Returns Ok(true) when cancelled.
async fn run_basic(
    dc: &mut DataChannel,
    link: &Link<'_>,
    dest: &Dest,
    out_tx: mpsc::Sender<Out>,
    cancel: &CancellationToken,
) -> Result<bool> {
    struct Conn {
        writer: mpsc::Sender<Bytes>,
        reader: tokio::task::JoinHandle<()>,
        stats: crate::recorder::ConnStats,
    }
    let (eof_tx, mut eof_rx) = mpsc::channel::<u64>(4);
    let mut generation = 0u64;
    let read_size = dest.chunk.max(512);
    let connect = |generation: u64| {
        let out_tx = out_tx.clone();
        let eof_tx = eof_tx.clone();
        let rec = dest.rec.clone();
        async move {
            let remote = format!("{}:{}", dest.host, dest.port);
            let stream = generation as u32;
            let conn = match dial(&dest.policy, &dest.host, dest.port).await {
                Ok(c) => c,
                Err(e) => {
                    crate::recorder::conn_event(&rec, "error", stream, &remote, (0, 0), &e).await;
                    return Err(e);
                }
            };
            crate::recorder::conn_event(&rec, "opened", stream, &remote, (0, 0), "").await;
            let stats = crate::recorder::ConnStats::new(rec, stream, remote);
            let (mut rd, mut wr) = conn.into_split();
            let (tx, mut rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
            let wstats = stats.clone();
            tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if wr.write_all(&b).await.is_err() {
                        return;
                    }
                    wstats.add_in(b.len());
                }
                let _ = wr.shutdown().await;
            });
            let rstats = stats.clone();
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; read_size];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            rstats.add_out(n);
                            let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or(&[]));
                            if out_tx.send(Out::Output(data)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = eof_tx.send(generation).await;
            });
            Ok::<Conn, String>(Conn {
                writer: tx,
                reader,
                stats,
            })
        }
    };
    let mut conn = match connect(generation).await {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "dial failed");
            let _ = out_tx.send(connect_error(&e, dest.airlock_peer)).await;
            return Ok(false);
        }
    };
    let outcome = loop {
        tokio::select! {
            _ = cancel.cancelled() => break true,
            Some(g) = eof_rx.recv() => {
                if g == generation {
                    debug!("destination closed the connection; ending the session");
                    break false;
                }
            }
            ev = dc.recv() => match ev {
                None => bail!("data channel stopped"),
                Some(ChannelEvent::Proto(Event::Data { payload_type, payload })) => match payload_type {
                    PayloadType::Output => {
                        let payload = dest.open(payload_type, payload)?;
                        if conn.is_none() {
                            generation += 1;
                            match connect(generation).await {
                                Ok(c) => conn = Some(c),
                                Err(e) => {
                                    warn!(error = %e, "redial failed");
                                    let _ = out_tx.send(connect_error(&e, dest.airlock_peer)).await;
                                    continue;
                                }
                            }
                        }
                        if let Some(c) = &conn {
                            if c.writer.send(payload).await.is_err() {
                                debug!("destination write side closed");
                            }
                        }
                    }
                    PayloadType::Flag => match parse_flag(&payload) {
                        Some(FLAG_DISCONNECT_TO_PORT) => {
                            if let Some(c) = conn.take() {
                                c.stats.closed().await;
                                c.reader.abort();
                            }
                        }
                        Some(FLAG_TERMINATE_SESSION) => break false,
                        _ => {}
                    },
                    _ => {}
                },
                Some(ChannelEvent::Proto(Event::Control(frame))) => {
                    if is_channel_closed(&frame) {
                        break true;
                    }
                }
                Some(ChannelEvent::Disconnected(why)) => {
                    debug!(?why, "data channel dropped");
                    link.reconnect(dc).await?;
                }
            },
        }
    };
    if let Some(c) = conn.take() {
        // Let the last bytes from the destination go out before stopping.
        let _ = tokio::time::timeout(Duration::from_millis(100), async {
            while !c.reader.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
        })
        .await;
        c.reader.abort();
        c.stats.closed().await;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_at_least("1.2.700.0", "1.1.70"));
        assert!(version_at_least("1.1.70.0", "1.1.70"));
        assert!(!version_at_least("1.1.69.0", "1.1.70"));
        assert!(!version_at_least("garbage", "1.1.70"));
    }

    #[test]
    fn mux_decision() {
        let props = serde_json::json!({"type": "LocalPortForwarding", "portNumber": "80"});
        let old = Peer {
            version: "1.0.0.0".into(),
            airlock: false,
            max_payload: 1024,
            no_digest: false,
        };
        let new = Peer {
            version: "1.2.0.0".into(),
            ..old.clone()
        };
        let ours = Peer {
            airlock: true,
            ..old.clone()
        };
        assert!(!multiplexed(&props, &old));
        assert!(multiplexed(&props, &new));
        assert!(multiplexed(&props, &ours));
        assert!(!multiplexed(
            &serde_json::json!({"portNumber": "22"}),
            &ours
        ));
    }

    #[test]
    fn flags() {
        assert_eq!(parse_flag(&flag_payload(3)), Some(3));
        assert_eq!(parse_flag(&[0, 1]), None);
        let Out::Raw(PayloadType::Flag, b) = connect_error(&"é".repeat(600), true) else {
            panic!()
        };
        assert_eq!(parse_flag(&b), Some(FLAG_CONNECT_TO_PORT_ERROR));
        assert!(b.len() <= 4 + MAX_REASON && std::str::from_utf8(&b[4..]).is_ok());
        assert!(matches!(
            connect_error("x", false),
            Out::Flag(FLAG_CONNECT_TO_PORT_ERROR)
        ));
    }
}
