//! In-memory state: one-time tokens, online agents' control-channel senders,
//! and the relay state of live sessions. Nothing here survives a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;
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

/// Relay state of one session. Frames are opaque bytes in both queues.
pub struct Relay {
    pub session_id: String,
    pub target: String,
    pub principal: String,
    pub to_client_tx: mpsc::Sender<Bytes>,
    /// Taken by the attached client socket task, put back when it detaches,
    /// so frames buffered for a reconnecting client are not lost.
    pub to_client_rx: Mutex<Option<mpsc::Receiver<Bytes>>>,
    pub to_agent_tx: mpsc::Sender<Bytes>,
    pub to_agent_rx: Mutex<Option<mpsc::Receiver<Bytes>>>,
    /// Cancelled when the session ends; socket tasks then send channel_closed.
    pub cancel: CancellationToken,
    pub close_reason: Mutex<Option<String>>,
    pub span: tracing::Span,
    /// Wall-clock ms when the session was created.
    pub created_ms: i64,
    /// Set once the agent's data channel has attached.
    pub agent_attached: AtomicBool,
    /// Ms since which no client socket is attached (the creation time for a
    /// client that never attached); 0 while a client is attached.
    pub client_detached_ms: AtomicI64,
    /// Ms of the last frame relayed in either direction.
    pub last_activity_ms: AtomicI64,
}

impl Relay {
    pub fn take_client_rx(&self) -> Option<mpsc::Receiver<Bytes>> {
        self.to_client_rx.lock().ok()?.take()
    }
    pub fn put_client_rx(&self, rx: mpsc::Receiver<Bytes>) {
        if let Ok(mut g) = self.to_client_rx.lock() {
            *g = Some(rx);
        }
    }
    pub fn take_agent_rx(&self) -> Option<mpsc::Receiver<Bytes>> {
        self.to_agent_rx.lock().ok()?.take()
    }
    pub fn put_agent_rx(&self, rx: mpsc::Receiver<Bytes>) {
        if let Ok(mut g) = self.to_agent_rx.lock() {
            *g = Some(rx);
        }
    }
    /// Records relayed traffic (either direction) for the idle timeout.
    pub fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }
    pub fn client_attached(&self) {
        self.client_detached_ms.store(0, Ordering::Relaxed);
    }
    pub fn client_detached(&self) {
        self.client_detached_ms
            .store(now_ms().max(1), Ordering::Relaxed);
    }
    pub fn reason(&self) -> Option<String> {
        self.close_reason.lock().ok().and_then(|g| g.clone())
    }
}

#[derive(Default)]
pub struct Hub {
    tokens: Mutex<HashMap<String, TokenEntry>>,
    agents: Mutex<HashMap<String, AgentHandle>>,
    relays: Mutex<HashMap<String, std::sync::Arc<Relay>>>,
    next_conn: AtomicU64,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
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

/// A new relay with both queues bounded at `capacity` frames.
pub fn new_relay(
    session_id: &str,
    target: &str,
    principal: &str,
    capacity: usize,
    parent: &CancellationToken,
) -> Relay {
    let now = now_ms();
    let (ctx, crx) = mpsc::channel(capacity);
    let (atx, arx) = mpsc::channel(capacity);
    Relay {
        session_id: session_id.to_string(),
        target: target.to_string(),
        principal: principal.to_string(),
        to_client_tx: ctx,
        to_client_rx: Mutex::new(Some(crx)),
        to_agent_tx: atx,
        to_agent_rx: Mutex::new(Some(arx)),
        cancel: parent.child_token(),
        close_reason: Mutex::new(None),
        span: tracing::info_span!("session", session_id = %session_id, target = %target, principal = %principal),
        created_ms: now,
        agent_attached: AtomicBool::new(false),
        client_detached_ms: AtomicI64::new(now.max(1)),
        last_activity_ms: AtomicI64::new(now),
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

    #[test]
    fn expired_token_rejected() {
        let hub = Hub::new();
        let (t, _) = hub.issue_token(TokenKind::Control, "mi-1", 0);
        assert!(!hub.redeem_token(TokenKind::Control, "mi-1", &t));
    }
}
