//! The data-channel driver: one task per session that pumps a
//! [`ReliableChannel`] over a websocket. It reads → `handle_bytes` →
//! `poll_transmit` → writes, and waits on the first of (socket, deadline,
//! command). No protocol decisions are made here.
//!
//! Bounds and backpressure:
//! - commands: a bounded queue; a `send` is answered only once the reliable
//!   channel has window for it, so callers wait while the window is full;
//! - events: a bounded queue to the handle; when it is full the driver stops
//!   polling events, the proto layer's undelivered queue fills and it
//!   withholds acks, so the peer slows down;
//! - writes: frames stay inside the reliable channel (bounded by its window)
//!   until the socket is ready for them; reads never stop, so two drivers
//!   writing at each other cannot deadlock.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_proto::reliable::{Config, Event, SendError};
use airlock_proto::{FrameBuf, MessageType, PayloadType, ReliableChannel, Role};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::ws::WsStream;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("data channel closed")]
    Closed,
    #[error("websocket error: {0}")]
    Ws(String),
    #[error("protocol error: {0}")]
    Proto(String),
}

/// Why the socket under the channel stopped (the channel itself survives and
/// can be given a new socket with [`DataChannel::reconnect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// Peer sent a websocket close frame (code, reason).
    Closed(u16, String),
    /// Read/write error or EOF without close.
    Lost(String),
}

#[derive(Debug)]
pub enum ChannelEvent {
    Proto(Event),
    /// The websocket went away; sending keeps buffering until reconnect.
    Disconnected(Disconnect),
}

/// Commands queued to the driver (bounded).
const COMMAND_QUEUE: usize = 64;
/// Events queued to the handle. Each may carry a payload of up to a
/// megabyte that the reliable channel no longer counts once it is here, so
/// this bounds the memory between the two: at 256 an agent relaying 16
/// connections peaked at 250 MiB. Beyond it the channel holds payloads
/// within its own byte budget, and then withholds acks.
const EVENT_QUEUE: usize = 16;
/// Time allowed to write the open message on a new socket, and to close.
const SOCKET_OP_TIMEOUT: Duration = Duration::from_secs(10);

/// A socket silent this long is pinged; one silent for three times as long
/// is treated as lost. A network that drops packets without a reset (NAT
/// state gone, a cable pulled) otherwise goes unnoticed until we send, and
/// an idle shell sends nothing. `AIRLOCK_KEEPALIVE_SECS` overrides it.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);
const MISSED_KEEPALIVES: u32 = 3;

fn keepalive_interval() -> Duration {
    std::env::var("AIRLOCK_KEEPALIVE_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_KEEPALIVE)
}

type Reply = oneshot::Sender<Result<(), ChannelError>>;

enum Command {
    Send {
        payload_type: PayloadType,
        payload: FrameBuf,
        reply: Reply,
    },
    SendUnsequenced {
        message_type: MessageType,
        payload: Bytes,
        reply: Reply,
    },
    Reconnect {
        ws: Box<WsStream>,
        open: String,
        reply: Reply,
    },
    Flush {
        reply: oneshot::Sender<()>,
    },
    SetMaxPayload {
        max_payload: usize,
        reply: Reply,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
    SetPayloadDigest {
        send: bool,
        accept_missing: bool,
        reply: Reply,
    },
}

/// Handle to the driver task. Dropping it stops the task.
pub struct DataChannel {
    sender: DataSender,
    events: mpsc::Receiver<ChannelEvent>,
    task: JoinHandle<()>,
    redial: Option<(Duration, Dialer)>,
}

/// A cloneable sending half, for a task that sends while another one owns
/// the [`DataChannel`] and receives. A single task that both sends and
/// receives in one `select!` loop can deadlock on bulk traffic both ways
/// (its `send` waits for acks the peer withholds while it waits for us);
/// give sending its own task through this handle. It stops working once
/// the `DataChannel` is dropped.
#[derive(Clone)]
pub struct DataSender {
    commands: mpsc::Sender<Command>,
}

impl DataSender {
    async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ChannelError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| ChannelError::Closed)?;
        rx.await.map_err(|_| ChannelError::Closed)
    }

    /// Queues a payload; waits while the send window is full (backpressure).
    pub async fn send(
        &self,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Result<(), ChannelError> {
        let mut buf = FrameBuf::with_capacity(payload.len());
        buf.buf_mut().extend_from_slice(&payload);
        self.send_buf(payload_type, buf).await
    }

    /// Like [`DataSender::send`] for a payload built in a [`FrameBuf`]: the
    /// frame header is written in front of it, nothing is copied.
    pub async fn send_buf(
        &self,
        payload_type: PayloadType,
        payload: FrameBuf,
    ) -> Result<(), ChannelError> {
        self.command(|reply| Command::Send {
            payload_type,
            payload,
            reply,
        })
        .await?
    }

    /// Sends an unsequenced frame (e.g. `agent_session_state`).
    pub async fn send_unsequenced(
        &self,
        message_type: MessageType,
        payload: Bytes,
    ) -> Result<(), ChannelError> {
        self.command(|reply| Command::SendUnsequenced {
            message_type,
            payload,
            reply,
        })
        .await?
    }

    /// Waits until everything sent has been acked, or `timeout` passes.
    pub async fn flush(&self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.command(|reply| Command::Flush { reply })).await,
            Ok(Ok(()))
        )
    }

    /// Raises the receive payload limit (after fast-path negotiation).
    pub async fn set_max_payload(&self, max_payload: usize) -> Result<(), ChannelError> {
        self.command(|reply| Command::SetMaxPayload { max_payload, reply })
            .await?
    }

    /// Fast path: see `ReliableChannel::set_payload_digest`.
    pub async fn set_payload_digest(
        &self,
        send: bool,
        accept_missing: bool,
    ) -> Result<(), ChannelError> {
        self.command(|reply| Command::SetPayloadDigest {
            send,
            accept_missing,
            reply,
        })
        .await?
    }
}

impl Drop for DataChannel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DataChannel {
    /// Sends `open_message` as the first text frame, then drives `channel`.
    pub fn spawn(ws: WsStream, open_message: String, role: Role, config: Config) -> Self {
        Self::spawn_with_keepalive(ws, open_message, role, config, keepalive_interval())
    }

    /// [`DataChannel::spawn`] with its own keepalive interval (see
    /// `AIRLOCK_KEEPALIVE_SECS`).
    pub fn spawn_with_keepalive(
        ws: WsStream,
        open_message: String,
        role: Role,
        config: Config,
        keepalive: Duration,
    ) -> Self {
        let now = tokio::time::Instant::now().into_std();
        let epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(1);
        let channel = ReliableChannel::new(role, config, now, epoch_ms, random_seed());
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let driver = Driver {
            channel,
            ws: None,
            dirty: false,
            write_blocked: false,
            pending_sends: VecDeque::new(),
            flush_waiters: Vec::new(),
            pending_disconnect: None,
            events_blocked: false,
            events: ev_tx,
            keepalive,
            last_heard: tokio::time::Instant::now(),
            pinged: false,
            undecodable: 0,
        };
        let task = tokio::spawn(driver.run(ws, open_message, cmd_rx));
        DataChannel {
            sender: DataSender { commands: cmd_tx },
            events: ev_rx,
            task,
            redial: None,
        }
    }

    /// A cloneable sending half (see [`DataSender`]).
    pub fn sender(&self) -> DataSender {
        self.sender.clone()
    }

    /// Queues a payload; waits while the send window is full (backpressure).
    pub async fn send(
        &self,
        payload_type: PayloadType,
        payload: Bytes,
    ) -> Result<(), ChannelError> {
        self.sender.send(payload_type, payload).await
    }

    /// Sends an unsequenced frame (e.g. `agent_session_state`).
    pub async fn send_unsequenced(
        &self,
        message_type: airlock_proto::MessageType,
        payload: Bytes,
    ) -> Result<(), ChannelError> {
        self.sender.send_unsequenced(message_type, payload).await
    }

    /// Next event; None once the driver has stopped. With a redial
    /// strategy set, socket drops are healed here and not reported.
    pub async fn recv(&mut self) -> Option<ChannelEvent> {
        loop {
            let ev = self.events.recv().await?;
            let ChannelEvent::Disconnected(why) = &ev else {
                return Some(ev);
            };
            let Some((window, dialer)) = self.redial.as_mut() else {
                return Some(ev);
            };
            tracing::info!(reason = ?why, "data channel socket lost; resuming");
            match redial_with(&self.sender, *window, dialer).await {
                Ok(attempts) => tracing::info!(attempts, "data channel resumed"),
                Err(e) => return Some(ChannelEvent::Disconnected(Disconnect::Lost(e.to_string()))),
            }
        }
    }

    /// Replaces the socket after a drop; unacked frames are resent at once.
    pub async fn reconnect(&self, ws: WsStream, open_message: String) -> Result<(), ChannelError> {
        self.sender
            .command(|reply| Command::Reconnect {
                ws: Box::new(ws),
                open: open_message,
                reply,
            })
            .await?
    }

    /// Waits until everything sent has been acked, or `timeout` passes.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.sender.flush(timeout).await
    }

    /// Raises the receive payload limit (after fast-path negotiation).
    pub async fn set_max_payload(&self, max_payload: usize) -> Result<(), ChannelError> {
        self.sender.set_max_payload(max_payload).await
    }

    /// Closes the websocket cleanly and stops the task.
    pub async fn close(self) {
        let _ = self.sender.command(|reply| Command::Close { reply }).await;
    }
}

/// Jittered, bounded exponential backoff for redialing: the first delay is
/// 100–199 ms (spec §3.3), each next one doubles, capped at `cap`; every
/// delay is jittered to 50–100 % of its nominal value so peers that lost the
/// same gateway do not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    nominal: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(cap: Duration) -> Self {
        let d0 = Duration::from_millis(100 + random_seed() % 100);
        Backoff {
            nominal: d0.min(cap),
            cap,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let jitter = 0.5 + (random_seed() % 1000) as f64 / 2000.0;
        let d = self.nominal.mul_f64(jitter);
        self.nominal = (self.nominal * 2).min(self.cap);
        d
    }
}

/// Largest pause between two redial attempts.
pub const REDIAL_BACKOFF_CAP: Duration = Duration::from_secs(5);

/// What one redial attempt reports when it produced no socket.
#[derive(Debug)]
pub enum Redial<E> {
    /// Transient (network down, gateway restarting): try again later.
    Retry(String),
    /// The session cannot be resumed (terminated, access denied): stop.
    Stop(E),
}

#[derive(Debug, thiserror::Error)]
pub enum RedialError<E: std::fmt::Debug> {
    #[error("the session cannot be resumed: {0:?}")]
    Stopped(E),
    #[error("could not reconnect within {}s: {last}", .window.as_secs())]
    GaveUp { window: Duration, last: String },
    #[error("data channel closed")]
    Closed,
}

/// A boxed redial attempt, for [`DataChannel::set_redial`].
pub type DialFuture =
    Pin<Box<dyn std::future::Future<Output = Result<(WsStream, String), Redial<String>>> + Send>>;
/// Produces one redial attempt per call.
pub type Dialer = Box<dyn FnMut() -> DialFuture + Send + Sync>;

impl DataChannel {
    /// Reattaches the channel after its socket went away: calls `dial` (which
    /// fetches a fresh token — ResumeSession for a client, a new data-channel
    /// POST for an agent — and opens a websocket) with [`Backoff`] until one
    /// socket takes the open message, `dial` says stop, or `window` passes.
    /// Unacked frames are resent on the new socket; the receive side already
    /// drops duplicates by sequence number, so nothing is lost or doubled.
    /// Returns the number of attempts made.
    pub async fn redial<E, F, Fut>(&self, window: Duration, dial: F) -> Result<u32, RedialError<E>>
    where
        E: std::fmt::Debug,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(WsStream, String), Redial<E>>>,
    {
        redial_with(&self.sender, window, dial).await
    }

    /// Makes [`DataChannel::recv`] reattach by itself: a dropped socket is
    /// redialed with `dialer` for up to `window`, and `Disconnected` is only
    /// reported (as `Lost` with the reason) once that fails.
    pub fn set_redial(&mut self, window: Duration, dialer: Dialer) {
        self.redial = Some((window, dialer));
    }
}

async fn redial_with<E, F, Fut>(
    sender: &DataSender,
    window: Duration,
    mut dial: F,
) -> Result<u32, RedialError<E>>
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(WsStream, String), Redial<E>>>,
{
    let give_up = tokio::time::Instant::now() + window;
    let mut backoff = Backoff::new(REDIAL_BACKOFF_CAP);
    let mut last = String::from("no attempt made");
    let mut attempt = 0u32;
    loop {
        let wake = tokio::time::Instant::now() + backoff.next_delay();
        if wake >= give_up {
            return Err(RedialError::GaveUp { window, last });
        }
        tokio::time::sleep_until(wake).await;
        attempt += 1;
        let dialed = tokio::time::timeout_at(give_up, dial()).await;
        let (ws, open) = match dialed {
            Err(_) => return Err(RedialError::GaveUp { window, last }),
            Ok(Err(Redial::Stop(e))) => return Err(RedialError::Stopped(e)),
            Ok(Err(Redial::Retry(why))) => {
                tracing::debug!(attempt, error = %why, "redial attempt failed");
                last = why;
                continue;
            }
            Ok(Ok(x)) => x,
        };
        let r = sender
            .command(|reply| Command::Reconnect {
                ws: Box::new(ws),
                open,
                reply,
            })
            .await
            .and_then(|r| r);
        match r {
            Ok(()) => return Ok(attempt),
            Err(ChannelError::Closed) => return Err(RedialError::Closed),
            Err(e) => {
                tracing::debug!(attempt, error = %e, "new socket failed at once");
                last = e.to_string();
            }
        }
    }
}

/// Message ids need uniqueness, not secrecy; fall back to the clock.
fn random_seed() -> u64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut buf = [0u8; 8];
    if aws_lc_rs::rand::SystemRandom::new().fill(&mut buf).is_ok() {
        return u64::from_le_bytes(buf);
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// What the socket produced.
enum IoEvent {
    Message(Message),
    Gone(Disconnect),
}

struct Driver {
    channel: ReliableChannel,
    /// None while disconnected: frames stay queued inside `channel` and its
    /// timers are not run until a new socket arrives.
    ws: Option<WsStream>,
    /// Frames were handed to the socket since its last flush.
    dirty: bool,
    /// The socket is not taking more bytes; retransmission timers wait, so
    /// they do not pile copies behind frames that have not left yet.
    write_blocked: bool,
    /// Sends waiting for window; each has a caller waiting on its reply, so
    /// the queue is bounded by the number of concurrent callers.
    pending_sends: VecDeque<(PayloadType, FrameBuf, Reply)>,
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// Delivered ahead of proto events so a full event queue cannot lose it.
    pending_disconnect: Option<Disconnect>,
    /// The event queue was full when last tried; wait for room.
    events_blocked: bool,
    events: mpsc::Sender<ChannelEvent>,
    keepalive: Duration,
    /// When the current socket last delivered anything.
    last_heard: tokio::time::Instant,
    /// A ping went out since then.
    pinged: bool,
    /// Data-channel frames skipped because they could not be decoded.
    undecodable: u64,
}

impl Driver {
    async fn run(mut self, ws: WsStream, open: String, mut commands: mpsc::Receiver<Command>) {
        self.attach(ws, open).await;
        loop {
            self.after_step();
            let deadline = if self.ws.is_some() && !self.write_blocked {
                self.channel.poll_timeout()
            } else {
                None
            };
            let sleep_at = deadline
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
            let events_blocked = self.events_blocked;
            let events = self.events.clone();
            let check_at = self.last_heard
                + if self.pinged {
                    self.keepalive * MISSED_KEEPALIVES
                } else {
                    self.keepalive
                };
            tokio::select! {
                _ = tokio::time::sleep_until(check_at), if self.ws.is_some() => self.keep_alive(),
                io = poll_fn(|cx| poll_io(cx, &mut self.ws, &mut self.channel, &mut self.dirty, &mut self.write_blocked)) => {
                    match io {
                        IoEvent::Message(m) => self.on_message(m),
                        IoEvent::Gone(d) => self.disconnect(d),
                    }
                }
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    if self.on_command(cmd).await {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(sleep_at), if deadline.is_some() => {
                    self.channel.handle_timeout(now());
                }
                permit = events.reserve(), if events_blocked => {
                    let Ok(permit) = permit else { return };
                    self.events_blocked = false;
                    if let Some(d) = self.pending_disconnect.take() {
                        permit.send(ChannelEvent::Disconnected(d));
                    } else if let Some(ev) = self.channel.poll_event() {
                        permit.send(ChannelEvent::Proto(ev));
                    }
                }
            }
        }
    }

    /// Installs a socket: open message first, then everything unacked again.
    async fn attach(&mut self, mut ws: WsStream, open: String) {
        let sent = tokio::time::timeout(SOCKET_OP_TIMEOUT, ws.send(Message::text(open))).await;
        match sent {
            Ok(Ok(())) => {
                self.ws = Some(ws);
                self.dirty = false;
                self.last_heard = tokio::time::Instant::now();
                self.pinged = false;
                self.channel.handle_reconnect(now());
            }
            Ok(Err(e)) => self.disconnect(Disconnect::Lost(e.to_string())),
            Err(_) => self.disconnect(Disconnect::Lost(
                "timed out sending the open message".to_string(),
            )),
        }
    }

    /// Pings a quiet socket; gives up on one that stayed silent.
    fn keep_alive(&mut self) {
        if self.write_blocked {
            // A ping would only queue behind the data. The kernel tells the
            // two reasons for a full socket apart: backpressure (the gateway
            // holds the socket while the other side is away) still gets
            // every byte and probe acknowledged; a dead path gets nothing.
            let silence = self.keepalive * MISSED_KEEPALIVES;
            let progress = self
                .ws
                .as_ref()
                .and_then(|ws| crate::ws::ack_progress(ws.get_ref().as_ref()));
            if let Some(p) = progress.filter(|p| p.path_is_dead(silence)) {
                let why = format!(
                    "the gateway acknowledged nothing sent for {}s ({} segments unacknowledged, {} window probes unanswered)",
                    p.since_last_ack.as_secs(),
                    p.unacked_segments,
                    p.unanswered_probes
                );
                // Worth a line at the default level: the session stalls
                // until it reconnects, and the user may be watching.
                tracing::warn!("{why}; reconnecting");
                self.disconnect(Disconnect::Lost(why));
                return;
            }
            self.last_heard = tokio::time::Instant::now();
            self.pinged = false;
            return;
        }
        let silent = self.last_heard.elapsed();
        if silent >= self.keepalive * MISSED_KEEPALIVES {
            self.disconnect(Disconnect::Lost(format!(
                "nothing heard from the gateway for {}s",
                silent.as_secs()
            )));
            return;
        }
        if self.pinged {
            return;
        }
        let Some(ws) = self.ws.as_mut() else { return };
        // The socket's own buffer takes it; the next write pass flushes it.
        if Pin::new(&mut *ws)
            .start_send(Message::Ping(Bytes::new()))
            .is_ok()
        {
            self.pinged = true;
            self.dirty = true;
        }
    }

    fn disconnect(&mut self, why: Disconnect) {
        tracing::debug!(reason = ?why, "data channel socket gone");
        self.ws = None;
        self.dirty = false;
        self.write_blocked = false;
        self.pending_disconnect = Some(why);
    }

    fn on_message(&mut self, msg: Message) {
        self.last_heard = tokio::time::Instant::now();
        self.pinged = false;
        match msg {
            Message::Binary(buf) => {
                if let Err(e) = self.channel.handle_bytes(buf, now()) {
                    // Hostile-input rule: one bad frame is skipped, never
                    // fatal. A peer that keeps sending what this end cannot
                    // decode (an oversized frame it then resends) stalls the
                    // session, so that is said out loud, at 1, 2, 4, ... frames.
                    self.undecodable += 1;
                    if self.undecodable.is_power_of_two() {
                        tracing::warn!(
                            error = %e,
                            skipped = self.undecodable,
                            "skipping a data-channel frame this end cannot decode"
                        );
                    }
                }
            }
            // tungstenite queues the pong itself; make sure it gets flushed.
            Message::Ping(_) => self.dirty = true,
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                self.disconnect(Disconnect::Closed(code, reason));
            }
            Message::Text(_) => tracing::debug!("ignoring text frame on the data channel"),
            Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    /// Returns true when the driver must stop.
    async fn on_command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Send {
                payload_type,
                payload,
                reply,
            } => {
                self.pending_sends.push_back((payload_type, payload, reply));
            }
            Command::SendUnsequenced {
                message_type,
                payload,
                reply,
            } => {
                let r = self
                    .channel
                    .send_unsequenced(message_type, payload)
                    .map_err(send_error);
                let _ = reply.send(r);
            }
            Command::Reconnect { ws, open, reply } => {
                self.pending_disconnect = None;
                self.attach(*ws, open).await;
                // A socket that failed at once is reported through the reply
                // only, so the caller does not see a stale Disconnected event
                // after a later attempt succeeded.
                let r = match self.pending_disconnect.take() {
                    None => Ok(()),
                    Some(d) => Err(ChannelError::Ws(format!("{d:?}"))),
                };
                let _ = reply.send(r);
            }
            Command::Flush { reply } => self.flush_waiters.push(reply),
            Command::SetMaxPayload { max_payload, reply } => {
                self.channel.set_max_payload(max_payload);
                let _ = reply.send(Ok(()));
            }
            Command::SetPayloadDigest {
                send,
                accept_missing,
                reply,
            } => {
                self.channel.set_payload_digest(send, accept_missing);
                let _ = reply.send(Ok(()));
            }
            Command::Close { reply } => {
                self.shutdown().await;
                let _ = reply.send(());
                return true;
            }
        }
        false
    }

    /// Writes what is queued, then a close frame, within a deadline.
    async fn shutdown(&mut self) {
        let Some(mut ws) = self.ws.take() else { return };
        let channel = &mut self.channel;
        let mut dirty = self.dirty;
        let mut blocked = false;
        let drain = async {
            poll_fn(
                |cx| match poll_write(cx, &mut ws, channel, &mut dirty, &mut blocked) {
                    Poll::Ready(r) => Poll::Ready(r),
                    Poll::Pending if !dirty => Poll::Ready(Ok(())),
                    Poll::Pending => Poll::Pending,
                },
            )
            .await?;
            ws.close(None).await
        };
        if let Ok(Err(e)) = tokio::time::timeout(SOCKET_OP_TIMEOUT, drain).await {
            tracing::debug!(error = %e, "data channel close");
        }
    }

    /// Runs after every step: admits held sends, delivers events, answers
    /// flush waiters.
    fn after_step(&mut self) {
        let now = now();
        while self.channel.send_capacity() > 0 {
            let Some((payload_type, payload, reply)) = self.pending_sends.pop_front() else {
                break;
            };
            let r = self
                .channel
                .send_buf(payload_type, payload, now)
                .map_err(send_error);
            let _ = reply.send(r);
        }
        self.pending_sends
            .retain(|(_, _, reply)| !reply.is_closed());

        if !self.events_blocked {
            loop {
                let permit = match self.events.try_reserve() {
                    Ok(p) => p,
                    Err(mpsc::error::TrySendError::Full(())) => {
                        self.events_blocked = true;
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => break,
                };
                if let Some(d) = self.pending_disconnect.take() {
                    permit.send(ChannelEvent::Disconnected(d));
                } else if let Some(ev) = self.channel.poll_event() {
                    permit.send(ChannelEvent::Proto(ev));
                } else {
                    break;
                }
            }
        }

        if !self.flush_waiters.is_empty()
            && self.pending_sends.is_empty()
            && self.channel.is_flushed()
        {
            for w in self.flush_waiters.drain(..) {
                let _ = w.send(());
            }
        }
        self.flush_waiters.retain(|w| !w.is_closed());
    }
}

fn send_error(e: SendError) -> ChannelError {
    ChannelError::Proto(e.to_string())
}

/// Moves frames from the channel into the socket while it accepts them,
/// then flushes. Ready(Ok) never happens while there is work: Pending means
/// "waiting for the socket" or "nothing to do".
fn poll_write(
    cx: &mut Context<'_>,
    ws: &mut WsStream,
    channel: &mut ReliableChannel,
    dirty: &mut bool,
    blocked: &mut bool,
) -> Poll<Result<(), tokio_tungstenite::tungstenite::Error>> {
    *blocked = true;
    loop {
        match Pin::new(&mut *ws).poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let Some(frame) = channel.poll_transmit() else {
            break;
        };
        Pin::new(&mut *ws).start_send(Message::Binary(frame))?;
        *dirty = true;
    }
    if *dirty {
        match Pin::new(&mut *ws).poll_flush(cx) {
            Poll::Ready(Ok(())) => *dirty = false,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    *blocked = false;
    Poll::Pending
}

/// Progresses writes, then returns the next read (or the socket's end).
fn poll_io(
    cx: &mut Context<'_>,
    ws: &mut Option<WsStream>,
    channel: &mut ReliableChannel,
    dirty: &mut bool,
    blocked: &mut bool,
) -> Poll<IoEvent> {
    let Some(sock) = ws.as_mut() else {
        return Poll::Pending;
    };
    if let Poll::Ready(Err(e)) = poll_write(cx, sock, channel, dirty, blocked) {
        return Poll::Ready(IoEvent::Gone(Disconnect::Lost(e.to_string())));
    }
    match Pin::new(sock).poll_next(cx) {
        Poll::Ready(Some(Ok(m))) => Poll::Ready(IoEvent::Message(m)),
        Poll::Ready(Some(Err(e))) => Poll::Ready(IoEvent::Gone(Disconnect::Lost(e.to_string()))),
        Poll::Ready(None) => Poll::Ready(IoEvent::Gone(Disconnect::Lost(
            "connection closed".to_string(),
        ))),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_proto::Frame;
    use futures_util::StreamExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::WebSocketStream;

    /// A driver connected to a raw server-side websocket the test controls.
    async fn pair() -> (DataChannel, WebSocketStream<TcpStream>) {
        pair_with_keepalive(DEFAULT_KEEPALIVE).await
    }

    async fn pair_with_keepalive(keepalive: Duration) -> (DataChannel, WebSocketStream<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "ws://{}/v1/data-channel/s?role=publish_subscribe",
            listener.local_addr().unwrap()
        );
        let accept = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio_tungstenite::accept_async(s).await.unwrap()
        });
        let ws = crate::ws::connect(&url, crate::tls::client_config(None).unwrap())
            .await
            .unwrap();
        let ch = DataChannel::spawn_with_keepalive(
            ws,
            "OPEN".into(),
            Role::Agent,
            Config::default(),
            keepalive,
        );
        let mut peer = accept.await.unwrap();
        let first = peer.next().await.unwrap().unwrap();
        assert_eq!(first, Message::text("OPEN"));
        (ch, peer)
    }

    fn data_frame(seq: i64, payload: impl Into<Bytes>) -> Bytes {
        Frame::new(
            MessageType::InputStreamData,
            seq,
            0,
            uuid::Uuid::from_u128(seq as u128 + 1),
            PayloadType::Output,
            payload.into(),
            1_700_000_000_000,
        )
        .encode()
        .unwrap()
    }

    #[tokio::test]
    async fn garbage_frame_is_skipped_then_data_flows_and_is_acked() {
        let (mut ch, mut peer) = pair().await;
        peer.send(Message::Binary(Bytes::from_static(
            b"definitely not a frame",
        )))
        .await
        .unwrap();
        peer.send(Message::Binary(data_frame(0, &b"hello"[..])))
            .await
            .unwrap();
        match ch.recv().await.unwrap() {
            ChannelEvent::Proto(Event::Data { payload, .. }) => assert_eq!(&payload[..], b"hello"),
            other => panic!("unexpected {other:?}"),
        }
        // The driver acked it.
        let ack = peer.next().await.unwrap().unwrap();
        let frame = Frame::decode(ack.into_data(), airlock_proto::frame::MAX_PAYLOAD_LEN).unwrap();
        assert_eq!(frame.message_type, MessageType::Acknowledge);
    }

    /// What a handle that stops reading lets the channel take (and ack)
    /// is bounded: the reliable channel's two byte budgets (delivered, and
    /// held ahead of the first frame it refused) plus the event queue. With
    /// 256 queued events this took all 100 MiB offered.
    #[tokio::test]
    async fn a_handle_that_does_not_read_bounds_what_is_acked() {
        const PAYLOAD: usize = 256 * 1024;
        const FRAMES: i64 = 400; // 100 MiB offered
        let (_ch, peer) = pair().await;
        let payload = Bytes::from(vec![7u8; PAYLOAD]);
        let (mut tx, mut rx) = peer.split();
        let sender = tokio::spawn(async move {
            for seq in 0..FRAMES {
                let frame = data_frame(seq, payload.clone());
                if tx.send(Message::Binary(frame)).await.is_err() {
                    return;
                }
            }
        });
        // Count acks until none has come for a while: a slow machine can
        // only make this count smaller, never larger.
        let mut acked = 0usize;
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(500), rx.next()).await
        {
            if let Ok(f) = Frame::decode(m.into_data(), airlock_proto::frame::MAX_PAYLOAD_LEN) {
                if f.message_type == MessageType::Acknowledge {
                    acked += 1;
                }
            }
        }
        sender.abort();
        // The event queue's share is 16 events, written out so that a
        // larger queue fails here.
        let bound = 2 * Config::default().max_buffered_bytes + 16 * PAYLOAD;
        assert!(
            acked > 0 && acked * PAYLOAD <= bound + PAYLOAD,
            "{acked} frames of {PAYLOAD} bytes acked, bound {bound}"
        );
    }

    #[tokio::test]
    async fn ping_is_answered_and_unsequenced_goes_out() {
        let (ch, mut peer) = pair().await;
        peer.send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        let pong = peer.next().await.unwrap().unwrap();
        assert_eq!(pong, Message::Pong(Bytes::from_static(b"p")));
        ch.send_unsequenced(MessageType::AgentSessionState, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let m = peer.next().await.unwrap().unwrap();
        let frame = Frame::decode(m.into_data(), 1024).unwrap();
        assert_eq!(frame.message_type, MessageType::AgentSessionState);
    }

    #[tokio::test]
    async fn a_silent_socket_is_declared_lost_an_answering_one_is_not() {
        let keepalive = Duration::from_millis(100);
        // The peer reads (tungstenite answers pings as it reads): alive.
        let (mut ch, mut peer) = pair_with_keepalive(keepalive).await;
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = peer.next().await {} });
        assert!(
            tokio::time::timeout(keepalive * 10, ch.recv())
                .await
                .is_err(),
            "an answering peer must not be dropped"
        );
        reader.abort();
        ch.close().await;

        // The peer never reads, so never answers: lost after 3 intervals.
        let (mut ch, _peer) = pair_with_keepalive(keepalive).await;
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), ch.recv()).await {
            Ok(Some(ChannelEvent::Disconnected(Disconnect::Lost(why)))) => {
                assert!(why.contains("nothing heard"), "{why}")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(started.elapsed() >= keepalive * MISSED_KEEPALIVES);
    }

    /// A peer that stops reading while we send shuts its TCP window: every
    /// write waits, no pong can come back, and yet the path is alive. The
    /// channel must wait (the kernel still gets its probes answered), for
    /// many times the silence after which a dead path is dropped.
    #[tokio::test]
    async fn a_peer_that_stops_reading_is_backpressure_not_loss() {
        let keepalive = Duration::from_millis(200);
        let (mut ch, _peer_never_reads) = pair_with_keepalive(keepalive).await;
        let sender = ch.sender();
        // Twice the send window: far more than the two socket buffers hold.
        let pushing = tokio::spawn(async move {
            for _ in 0..128 {
                let payload = Bytes::from(vec![0x5a; 256 << 10]);
                if sender.send(PayloadType::Output, payload).await.is_err() {
                    return;
                }
            }
        });
        let watched = keepalive * MISSED_KEEPALIVES * 5;
        match tokio::time::timeout(watched, ch.recv()).await {
            Err(_) => {}
            Ok(event) => panic!("a reader that only stopped reading was given up on: {event:?}"),
        }
        pushing.abort();
    }

    #[tokio::test]
    async fn peer_close_is_reported_and_sends_buffer() {
        let (mut ch, mut peer) = pair().await;
        peer.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        match ch.recv().await.unwrap() {
            ChannelEvent::Disconnected(Disconnect::Closed(1000, reason)) => {
                assert_eq!(reason, "bye")
            }
            other => panic!("unexpected {other:?}"),
        }
        // Still accepted while disconnected; not flushed since nobody acks.
        ch.send(PayloadType::Output, Bytes::from_static(b"queued"))
            .await
            .unwrap();
        assert!(!ch.flush(Duration::from_millis(50)).await);
        ch.close().await;
    }

    #[test]
    fn backoff_is_jittered_doubling_and_capped() {
        let mut b = Backoff::new(Duration::from_secs(5));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(200));
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
            assert!(last <= Duration::from_secs(5));
        }
        assert!(last >= Duration::from_millis(2500), "{last:?}");
    }

    #[tokio::test]
    async fn redial_resends_unacked_frames_on_the_new_socket() {
        let (mut ch, peer) = pair().await;
        drop(peer);
        match ch.recv().await.unwrap() {
            ChannelEvent::Disconnected(Disconnect::Lost(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
        ch.send(PayloadType::Output, Bytes::from_static(b"while away"))
            .await
            .unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/v1/data-channel/s", listener.local_addr().unwrap());
        let accept = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio_tungstenite::accept_async(s).await.unwrap()
        });
        let mut failures = 0;
        let attempts = ch
            .redial(Duration::from_secs(10), || {
                failures += 1;
                let url = url.clone();
                let fail = failures == 1;
                async move {
                    if fail {
                        return Err(Redial::<()>::Retry("gateway restarting".into()));
                    }
                    let ws = crate::ws::connect(&url, crate::tls::client_config(None).unwrap())
                        .await
                        .map_err(|e| Redial::Retry(e.to_string()))?;
                    Ok((ws, "REOPEN".to_string()))
                }
            })
            .await
            .unwrap();
        assert_eq!(attempts, 2);
        let mut peer = accept.await.unwrap();
        assert_eq!(peer.next().await.unwrap().unwrap(), Message::text("REOPEN"));
        let m = peer.next().await.unwrap().unwrap();
        let frame = Frame::decode(m.into_data(), 1024).unwrap();
        assert_eq!(frame.sequence_number, 0);
        assert_eq!(&frame.payload[..], b"while away");
    }

    #[tokio::test]
    async fn redial_stops_or_gives_up() {
        let (ch, peer) = pair().await;
        drop(peer);
        let r = ch
            .redial(Duration::from_secs(10), || async {
                Err::<(WsStream, String), _>(Redial::Stop("terminated"))
            })
            .await;
        assert!(
            matches!(r, Err(RedialError::Stopped("terminated"))),
            "{r:?}"
        );
        let started = tokio::time::Instant::now();
        let r = ch
            .redial(Duration::from_millis(600), || async {
                Err::<(WsStream, String), Redial<()>>(Redial::Retry("refused".into()))
            })
            .await;
        match r {
            Err(RedialError::GaveUp { last, .. }) => assert_eq!(last, "refused"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_driver() {
        let (ch, mut peer) = pair().await;
        let sender = ch.sender();
        drop(ch);
        assert!(matches!(
            sender
                .send(PayloadType::Output, Bytes::from_static(b"x"))
                .await,
            Err(ChannelError::Closed)
        ));
        // The socket goes away with the task.
        let end = tokio::time::timeout(Duration::from_secs(5), peer.next())
            .await
            .unwrap();
        assert!(!matches!(end, Some(Ok(Message::Binary(_)))));
    }
}
