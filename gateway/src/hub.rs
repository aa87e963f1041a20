//! In-memory state: one-time tokens, online agents' control-channel senders,
//! and the relay state of live sessions. Nothing here survives a restart:
//! after one, relays are rebuilt from the store (`lifecycle::restore_sessions`)
//! and tokens are minted afresh by ResumeSession / the agent's data-channel
//! POST, both of which re-authenticate the caller.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::util::{new_token, now_ms, sha256_hex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// From CreateControlChannel; subject = instance id.
    Control,
    /// From CreateDataChannel; subject = session id.
    AgentData,
    /// From StartSession/ResumeSession; subject = session id.
    Client,
}

struct TokenEntry {
    kind: TokenKind,
    subject: String,
    expires_ms: i64,
}

/// Capacity of an agent's control-channel outbound queue. StartSession fails
/// with TargetNotConnected when it is full rather than waiting.
pub const CONTROL_QUEUE: usize = 64;

#[derive(Clone)]
pub struct AgentHandle {
    pub conn_id: u64,
    pub tx: mpsc::Sender<Bytes>,
}

/// A frame in a relay queue. It holds its share of the queue's byte budget
/// and of the gateway's until dropped, which the socket task does once the
/// frame is written.
pub struct Queued {
    pub frame: Bytes,
    _budget: OwnedSemaphorePermit,
    _shared: OwnedSemaphorePermit,
}

/// Bytes of frames all relays of a gateway may hold together
/// (`limits.relay_memory_bytes`). Each queue is bounded on its own, but
/// many sessions whose readers are slow or away would add up to more
/// memory than the machine has; past this budget senders wait, and the
/// gateway stops reading their sockets, instead.
#[derive(Clone)]
pub struct RelayMemory {
    permits: Arc<Semaphore>,
    total: u32,
    /// Times a sender had to wait for it, for the warnings at 1, 2, 4, ...
    waits: Arc<AtomicU64>,
}

impl RelayMemory {
    pub fn new(total: u32) -> Self {
        RelayMemory {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
            waits: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Bytes held in relay queues right now.
    pub fn in_use(&self) -> usize {
        (self.total as usize).saturating_sub(self.permits.available_permits())
    }
}

impl Default for RelayMemory {
    fn default() -> Self {
        RelayMemory::new(crate::config::LimitsConfig::default().relay_memory())
    }
}

/// The sending end of one direction of a relay: bounded in frames (stock
/// peers send many small ones) and in bytes (ours send up to a megabyte
/// each, so a frame bound alone would let one session hold gigabytes), and
/// drawing on the gateway-wide [`RelayMemory`].
#[derive(Clone)]
pub struct RelaySender {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    budget: u32,
    shared: RelayMemory,
}

/// The other end is gone: the session ended.
#[derive(Debug)]
pub struct RelayClosed;

/// A frame's claim on a budget of `total` bytes: its length, and a frame
/// larger than the whole budget waits for all of it.
fn claim(frame: &Bytes, total: u32) -> u32 {
    u32::try_from(frame.len()).map_or(total, |n| n.min(total))
}

impl RelaySender {
    /// Waits for room (frames, the queue's bytes, then the gateway's), then
    /// queues `frame`.
    pub async fn send(&self, frame: Bytes) -> Result<(), RelayClosed> {
        let budget = self
            .bytes
            .clone()
            .acquire_many_owned(claim(&frame, self.budget))
            .await
            .map_err(|_| RelayClosed)?;
        let wanted = claim(&frame, self.shared.total);
        let shared = match self.shared.permits.clone().try_acquire_many_owned(wanted) {
            Ok(p) => p,
            Err(_) => {
                let waits = self.shared.waits.fetch_add(1, Ordering::Relaxed) + 1;
                if waits.is_power_of_two() {
                    tracing::warn!(
                        held = self.shared.in_use(),
                        limit = self.shared.total,
                        waits,
                        "relay memory budget full; sessions wait for slow or absent readers (limits.relay_memory_bytes)"
                    );
                }
                self.shared
                    .permits
                    .clone()
                    .acquire_many_owned(wanted)
                    .await
                    .map_err(|_| RelayClosed)?
            }
        };
        self.tx
            .send(Queued {
                frame,
                _budget: budget,
                _shared: shared,
            })
            .await
            .map_err(|_| RelayClosed)
    }

    /// Queues `frame` if there is room now; false if not (or closed).
    pub fn try_send(&self, frame: Bytes) -> bool {
        let Ok(budget) = self
            .bytes
            .clone()
            .try_acquire_many_owned(claim(&frame, self.budget))
        else {
            return false;
        };
        let Ok(shared) = self
            .shared
            .permits
            .clone()
            .try_acquire_many_owned(claim(&frame, self.shared.total))
        else {
            return false;
        };
        self.tx
            .try_send(Queued {
                frame,
                _budget: budget,
                _shared: shared,
            })
            .is_ok()
    }
}

/// One direction of a relay, bounded at `frames` frames and `bytes` bytes,
/// drawing on `shared`.
fn relay_queue(
    frames: usize,
    bytes: u32,
    shared: &RelayMemory,
) -> (RelaySender, mpsc::Receiver<Queued>) {
    let (tx, rx) = mpsc::channel(frames);
    let sender = RelaySender {
        tx,
        bytes: Arc::new(Semaphore::new(bytes as usize)),
        budget: bytes,
        shared: shared.clone(),
    };
    (sender, rx)
}

/// Which end of a session's relay a data-channel socket serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Agent,
}

/// How long a new socket waits for the one it replaces to let go of the
/// side's queue.
const TAKEOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A socket's hold on one side of a relay: the queue of frames bound for
/// that side, and the token the next socket for the side cancels to take
/// over (the old one may be a half-open connection its peer gave up on).
pub struct Attachment {
    pub rx: OwnedMutexGuard<mpsc::Receiver<Queued>>,
    pub replaced: CancellationToken,
    /// This is not the side's first socket (a resume).
    pub reattach: bool,
}

/// One side's attachment bookkeeping.
struct SideState {
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>,
    current: Mutex<Option<CancellationToken>>,
    attaches: AtomicU32,
    /// Ms since which no socket is attached (0 while one is); see
    /// [`Relay::detached_ms`].
    detached_ms: AtomicI64,
}

impl SideState {
    fn new(rx: mpsc::Receiver<Queued>, detached_ms: i64) -> Self {
        SideState {
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            current: Mutex::new(None),
            attaches: AtomicU32::new(0),
            detached_ms: AtomicI64::new(detached_ms),
        }
    }
}

/// Relay state of one session. Frames are opaque bytes in both queues.
///
/// Frames for a side that is away stay in its bounded queue; when the queue
/// is full the other side's socket is no longer read, which backpressures
/// that peer. Frames already written into a socket that then died are lost
/// here, but both peers keep every unacked frame and resend it (at once on
/// their own reconnect, else on their retransmission timer), and drop what
/// they already have by sequence number — so the relay never needs to
/// replay anything itself, and nothing survives a gateway restart but the
/// session row in the store.
pub struct Relay {
    pub session_id: String,
    pub target: String,
    pub principal: String,
    pub to_client_tx: RelaySender,
    pub to_agent_tx: RelaySender,
    client: SideState,
    agent: SideState,
    /// Cancelled when the session ends; socket tasks then send channel_closed.
    pub cancel: CancellationToken,
    /// The end as the client is told it: (status, output).
    pub close_reason: Mutex<Option<(String, String)>>,
    pub span: tracing::Span,
    /// Wall-clock ms when the session was created.
    pub created_ms: i64,
    /// Set once the agent's data channel has attached.
    pub agent_attached: AtomicBool,
    /// The agent reported the session task complete: it will not reattach,
    /// so losing its data channel ends the session instead of waiting.
    pub agent_done: AtomicBool,
    /// Ms of the last frame relayed in either direction.
    pub last_activity_ms: AtomicI64,
    /// The `last_activity_ms` the client was last warned about, so each idle
    /// stretch gets one warning and new traffic re-arms it.
    pub idle_warned_for_ms: AtomicI64,
}

impl Relay {
    fn side(&self, side: Side) -> &SideState {
        match side {
            Side::Client => &self.client,
            Side::Agent => &self.agent,
        }
    }

    /// Claims `side` for a new socket, replacing the socket that holds it.
    /// None when the old one does not let go in time or the session ended.
    pub async fn attach(&self, side: Side) -> Option<Attachment> {
        let st = self.side(side);
        let mine = CancellationToken::new();
        {
            let mut cur = st.current.lock().ok()?;
            if let Some(old) = cur.replace(mine.clone()) {
                old.cancel();
            }
        }
        let rx = tokio::select! {
            g = tokio::time::timeout(TAKEOVER_TIMEOUT, st.rx.clone().lock_owned()) => g.ok()?,
            _ = self.cancel.cancelled() => return None,
        };
        // A newer socket claimed the side while this one waited.
        if mine.is_cancelled() {
            return None;
        }
        let reattach = st.attaches.fetch_add(1, Ordering::Relaxed) > 0;
        st.detached_ms.store(0, Ordering::Relaxed);
        if side == Side::Agent {
            self.agent_attached.store(true, Ordering::Relaxed);
        }
        Some(Attachment {
            rx,
            replaced: mine,
            reattach,
        })
    }

    /// The socket holding `side` is gone (not replaced): the side counts as
    /// away from now on.
    pub fn detach(&self, side: Side) {
        self.side(side)
            .detached_ms
            .store(now_ms().max(1), Ordering::Relaxed);
    }

    /// Ms since which `side` has had no socket, 0 while it has one. A client
    /// that never attached counts from the session's creation; an agent
    /// that never attached is covered by the attach timeout instead.
    pub fn detached_ms(&self, side: Side) -> i64 {
        self.side(side).detached_ms.load(Ordering::Relaxed)
    }

    pub fn is_attached(&self, side: Side) -> bool {
        let st = self.side(side);
        st.attaches.load(Ordering::Relaxed) > 0 && st.detached_ms.load(Ordering::Relaxed) == 0
    }

    /// Treats both sides as away since `at_ms` (a gateway restart: the
    /// peers must come back within the resume window).
    pub fn mark_restored(&self, at_ms: i64) {
        self.agent_attached.store(true, Ordering::Relaxed);
        for st in [&self.client, &self.agent] {
            st.attaches.store(1, Ordering::Relaxed);
            st.detached_ms.store(at_ms.max(1), Ordering::Relaxed);
        }
        self.last_activity_ms.store(at_ms, Ordering::Relaxed);
    }

    /// Records relayed traffic (either direction) for the idle timeout.
    pub fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }
    pub fn reason(&self) -> Option<(String, String)> {
        self.close_reason.lock().ok().and_then(|g| g.clone())
    }
}

#[derive(Default)]
pub struct Hub {
    tokens: Mutex<HashMap<String, TokenEntry>>,
    agents: Mutex<HashMap<String, AgentHandle>>,
    relays: Mutex<HashMap<String, std::sync::Arc<Relay>>>,
    next_conn: AtomicU64,
    pub relay_memory: RelayMemory,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// A hub whose relays together hold at most `relay_memory` bytes.
    pub fn with_relay_memory(relay_memory: u32) -> Self {
        Hub {
            relay_memory: RelayMemory::new(relay_memory),
            ..Self::default()
        }
    }

    /// Issues a token; only its SHA-256 is kept. Returns (token, hash).
    pub fn issue_token(&self, kind: TokenKind, subject: &str, ttl_secs: u64) -> (String, String) {
        let token = new_token();
        let hash = sha256_hex(token.as_bytes());
        let now = now_ms();
        if let Ok(mut t) = self.tokens.lock() {
            t.retain(|_, e| e.expires_ms > now);
            t.insert(
                hash.clone(),
                TokenEntry {
                    kind,
                    subject: subject.to_string(),
                    expires_ms: now + (ttl_secs as i64) * 1000,
                },
            );
        }
        (token, hash)
    }

    /// Consumes a token (single use) if it is of `kind`, for `subject`, and unexpired.
    pub fn redeem_token(&self, kind: TokenKind, subject: &str, token: &str) -> bool {
        let hash = sha256_hex(token.as_bytes());
        let Ok(mut t) = self.tokens.lock() else {
            return false;
        };
        match t.get(&hash) {
            Some(e) if e.kind == kind && e.subject == subject && e.expires_ms > now_ms() => {
                t.remove(&hash);
                true
            }
            _ => false,
        }
    }

    /// Revokes every unused token of `kind` for `subject`.
    pub fn revoke_tokens(&self, kind: TokenKind, subject: &str) {
        if let Ok(mut t) = self.tokens.lock() {
            t.retain(|_, e| !(e.kind == kind && e.subject == subject));
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers an agent's control channel, replacing an older one.
    pub fn agent_online(&self, instance_id: &str, handle: AgentHandle) {
        if let Ok(mut a) = self.agents.lock() {
            a.insert(instance_id.to_string(), handle);
        }
    }

    /// Removes the agent if `conn_id` is still its current connection.
    pub fn agent_offline(&self, instance_id: &str, conn_id: u64) -> bool {
        let Ok(mut a) = self.agents.lock() else {
            return false;
        };
        if a.get(instance_id).is_some_and(|h| h.conn_id == conn_id) {
            a.remove(instance_id);
            true
        } else {
            false
        }
    }

    pub fn agent(&self, instance_id: &str) -> Option<AgentHandle> {
        self.agents.lock().ok()?.get(instance_id).cloned()
    }

    pub fn is_online(&self, instance_id: &str) -> bool {
        self.agent(instance_id).is_some()
    }

    pub fn insert_relay(&self, relay: std::sync::Arc<Relay>) {
        if let Ok(mut r) = self.relays.lock() {
            r.insert(relay.session_id.clone(), relay);
        }
    }

    pub fn relay(&self, session_id: &str) -> Option<std::sync::Arc<Relay>> {
        self.relays.lock().ok()?.get(session_id).cloned()
    }

    pub fn remove_relay(&self, session_id: &str) -> Option<std::sync::Arc<Relay>> {
        self.relays.lock().ok()?.remove(session_id)
    }

    pub fn relays(&self) -> Vec<std::sync::Arc<Relay>> {
        self.relays
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// A new relay with both queues bounded at `frames` frames and `bytes`
/// bytes of frames, drawing on the gateway's `shared` budget.
pub fn new_relay(
    session_id: &str,
    target: &str,
    principal: &str,
    (frames, bytes): (usize, u32),
    shared: &RelayMemory,
    parent: &CancellationToken,
) -> Relay {
    let now = now_ms();
    let (ctx, crx) = relay_queue(frames, bytes, shared);
    let (atx, arx) = relay_queue(frames, bytes, shared);
    Relay {
        session_id: session_id.to_string(),
        target: target.to_string(),
        principal: principal.to_string(),
        to_client_tx: ctx,
        to_agent_tx: atx,
        client: SideState::new(crx, now.max(1)),
        agent: SideState::new(arx, 0),
        cancel: parent.child_token(),
        close_reason: Mutex::new(None),
        span: tracing::info_span!("session", session_id = %session_id, target = %target, principal = %principal),
        created_ms: now,
        agent_attached: AtomicBool::new(false),
        agent_done: AtomicBool::new(false),
        last_activity_ms: AtomicI64::new(now),
        idle_warned_for_ms: AtomicI64::new(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_scoped() {
        let hub = Hub::new();
        let (t, _) = hub.issue_token(TokenKind::Client, "s-1", 60);
        assert!(!hub.redeem_token(TokenKind::AgentData, "s-1", &t));
        assert!(!hub.redeem_token(TokenKind::Client, "s-2", &t));
        assert!(hub.redeem_token(TokenKind::Client, "s-1", &t));
        assert!(!hub.redeem_token(TokenKind::Client, "s-1", &t));
    }

    #[tokio::test]
    async fn a_new_socket_takes_a_side_over_and_keeps_its_queue() {
        let root = CancellationToken::new();
        let relay = new_relay(
            "s-1",
            "mi-1",
            "user/a",
            (4, 1 << 20),
            &RelayMemory::default(),
            &root,
        );
        assert!(!relay.is_attached(Side::Client));
        assert!(relay.detached_ms(Side::Client) > 0);
        let first = relay.attach(Side::Client).await.unwrap();
        assert!(!first.reattach);
        assert!(relay.is_attached(Side::Client));
        relay
            .to_client_tx
            .send(Bytes::from_static(b"f"))
            .await
            .unwrap();
        // The old holder lets go once told it was replaced.
        let replaced = first.replaced.clone();
        let old = tokio::spawn(async move {
            replaced.cancelled().await;
            drop(first);
        });
        let mut second = relay.attach(Side::Client).await.unwrap();
        old.await.unwrap();
        assert!(second.reattach);
        assert_eq!(&second.rx.recv().await.unwrap().frame[..], b"f");
        relay.detach(Side::Client);
        assert!(!relay.is_attached(Side::Client));
        // An ended session hands out nothing.
        drop(second);
        relay.cancel.cancel();
        let _ = relay.attach(Side::Client).await;
    }

    /// Both bounds hold: bytes (large frames) and frames (small ones); a
    /// frame's bytes count until the frame is dropped after being written,
    /// and a frame larger than the budget still passes an empty queue.
    #[tokio::test]
    async fn relay_queues_are_bounded_in_bytes_and_frames() {
        let (tx, mut rx) = relay_queue(4, 1000, &RelayMemory::default());
        assert!(tx.try_send(Bytes::from(vec![0u8; 600])));
        assert!(
            !tx.try_send(Bytes::from(vec![0u8; 600])),
            "over the byte budget"
        );
        let first = rx.recv().await.unwrap();
        assert!(
            !tx.try_send(Bytes::from(vec![0u8; 600])),
            "dequeued but not yet written: still counted"
        );
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(Bytes::from(vec![0u8; 600])).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        waiting.await.unwrap().unwrap();
        drop(rx.recv().await.unwrap());
        // Larger than the whole budget: takes all of it.
        tx.send(Bytes::from(vec![0u8; 5000])).await.unwrap();
        assert!(!tx.try_send(Bytes::from_static(b"x")));
        drop(rx.recv().await.unwrap());
        // Small frames meet the frame bound first.
        for _ in 0..4 {
            assert!(tx.try_send(Bytes::from_static(b"x")));
        }
        assert!(
            !tx.try_send(Bytes::from_static(b"x")),
            "over the frame bound"
        );
        drop(rx);
        assert!(tx.send(Bytes::from_static(b"x")).await.is_err());
    }

    /// The gateway-wide budget: one session's queued frames leave less for
    /// another, whose own queue is empty; it waits, and goes on once the
    /// first session's frames are written.
    #[tokio::test]
    async fn relays_share_the_gateway_memory_budget() {
        let shared = RelayMemory::new(1000);
        let (slow, mut slow_rx) = relay_queue(4, 800, &shared);
        let (other, mut other_rx) = relay_queue(4, 800, &shared);
        assert!(slow.try_send(Bytes::from(vec![0u8; 700])));
        assert_eq!(shared.in_use(), 700);
        assert!(
            !other.try_send(Bytes::from(vec![0u8; 400])),
            "the gateway budget is spent, though this queue is empty"
        );
        let waiting = tokio::spawn({
            let other = other.clone();
            async move { other.send(Bytes::from(vec![0u8; 400])).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(slow_rx.recv().await.unwrap());
        waiting.await.unwrap().unwrap();
        assert_eq!(shared.in_use(), 400);
        drop(other_rx.recv().await.unwrap());
        assert_eq!(shared.in_use(), 0);
        // Larger than the gateway's whole budget: takes all of it.
        other.send(Bytes::from(vec![0u8; 5000])).await.unwrap();
        assert_eq!(shared.in_use(), 1000);
        assert!(!slow.try_send(Bytes::from_static(b"x")));
        drop(other_rx.recv().await.unwrap());
        assert!(slow.try_send(Bytes::from_static(b"x")));
    }

    #[test]
    fn expired_token_rejected() {
        let hub = Hub::new();
        let (t, _) = hub.issue_token(TokenKind::Control, "mi-1", 0);
        assert!(!hub.redeem_token(TokenKind::Control, "mi-1", &t));
    }
}
