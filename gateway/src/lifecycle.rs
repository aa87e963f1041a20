//! Session lifecycle policy: which live sessions must end now (timeouts,
//! stale clients, agents that never attached) and the reaper task that
//! ends them. The decisions are pure functions of the relay's timestamps
//! and the `[sessions]` config, so they are unit-tested without sockets.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::end_session_with;
use crate::config::SessionsConfig;
use crate::hub::{new_relay, Relay, Side};
use crate::server::AppState;
use crate::store::{SessionFilter, COUNTING_STATES};
use crate::util::now_ms;

/// How often live sessions are checked against their deadlines.
pub const REAP_INTERVAL: Duration = Duration::from_millis(250);
/// How often the store is scanned for sessions no gateway relays any more.
const ORPHAN_SCAN_EVERY_MS: i64 = 5_000;

/// Why a session must end: its final status, the message the client is
/// shown (channel_closed Output) and the reason recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: &'static str,
    pub output: String,
    pub reason: String,
}

/// `90` -> `1m30s`, `1200` -> `20m`, `7200` -> `2h`, `5` -> `5s`.
pub fn human_secs(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Timestamps of one live session, in wall-clock ms.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub created_ms: i64,
    pub agent_attached: bool,
    /// 0 while a client is attached.
    pub client_detached_ms: i64,
    /// 0 while the agent's data channel is attached (or before its first
    /// attach, which the attach timeout covers).
    pub agent_detached_ms: i64,
    pub last_activity_ms: i64,
}

impl Clock {
    pub fn of(relay: &Relay) -> Clock {
        Clock {
            created_ms: relay.created_ms,
            agent_attached: relay.agent_attached.load(Ordering::Relaxed),
            client_detached_ms: relay.detached_ms(Side::Client),
            agent_detached_ms: relay.detached_ms(Side::Agent),
            last_activity_ms: relay.last_activity_ms.load(Ordering::Relaxed),
        }
    }
}

fn past(since_ms: i64, secs: u64, now: i64) -> bool {
    now.saturating_sub(since_ms) >= (secs as i64).saturating_mul(1000)
}

/// The first deadline a session has passed, if any.
pub fn verdict(cfg: &SessionsConfig, c: Clock, now: i64) -> Option<Verdict> {
    if let Some(max) = cfg.max_session_duration_secs {
        if past(c.created_ms, max, now) {
            let h = human_secs(max);
            return Some(Verdict {
                status: "Terminated",
                output: format!("Session reached its maximum duration of {h}"),
                reason: format!("maximum session duration of {h} reached"),
            });
        }
    }
    if !c.agent_attached && past(c.created_ms, cfg.agent_attach_timeout_secs, now) {
        let h = human_secs(cfg.agent_attach_timeout_secs);
        return Some(Verdict {
            status: "Failed",
            output: format!("The agent did not open the session's data channel within {h}"),
            reason: format!("agent did not attach its data channel within {h}"),
        });
    }
    if c.client_detached_ms > 0 && past(c.client_detached_ms, cfg.resume_window_secs, now) {
        let h = human_secs(cfg.resume_window_secs);
        return Some(Verdict {
            status: "Terminated",
            output: format!("Session was not resumed within {h}"),
            reason: format!("client disconnected and did not resume within {h}"),
        });
    }
    if c.agent_detached_ms > 0 && past(c.agent_detached_ms, cfg.resume_window_secs, now) {
        let h = human_secs(cfg.resume_window_secs);
        return Some(Verdict {
            status: "Failed",
            output: format!("The agent did not reconnect within {h}"),
            reason: format!("agent data channel lost and not resumed within {h}"),
        });
    }
    if past(c.last_activity_ms, cfg.idle_timeout_secs, now) {
        return Some(Verdict {
            status: "Terminated",
            output: "Session idle timeout reached".into(),
            reason: format!("idle timeout after {}", human_secs(cfg.idle_timeout_secs)),
        });
    }
    None
}

/// How long before an idle close the client is warned: a minute, or half
/// the timeout when the timeout is two minutes or less.
pub fn idle_warning_lead_secs(idle_timeout_secs: u64) -> u64 {
    if idle_timeout_secs > 120 {
        60
    } else {
        (idle_timeout_secs / 2).max(1)
    }
}

/// Seconds left before the idle close, when the client should be warned now.
pub fn idle_warning_due(cfg: &SessionsConfig, c: Clock, now: i64) -> Option<u64> {
    let lead = idle_warning_lead_secs(cfg.idle_timeout_secs);
    let warn_after = cfg.idle_timeout_secs.saturating_sub(lead);
    if warn_after == 0 || !past(c.last_activity_ms, warn_after, now) {
        return None;
    }
    let idle_ms = now.saturating_sub(c.last_activity_ms).max(0) as u64;
    let left_ms = (cfg.idle_timeout_secs * 1000).saturating_sub(idle_ms);
    Some(left_ms.div_ceil(1000).max(1))
}

/// Ends every live session past a deadline; every `ORPHAN_SCAN_EVERY_MS`
/// also ends stored sessions that no relay of this gateway holds and that
/// have not changed state for a resume window (e.g. after a restart).
pub async fn reap_once(state: &AppState, now: i64, scan_orphans: bool) {
    // Session Manager preferences (idleSessionTimeout, maxSessionDuration)
    // take precedence over the configuration when set.
    let effective = crate::documents::effective_sessions_config(state).await;
    let cfg = &effective;
    for relay in state.hub.relays() {
        if let Some(v) = verdict(cfg, Clock::of(&relay), now) {
            relay.span.in_scope(
                || tracing::info!(status = v.status, reason = %v.reason, "reaping session"),
            );
            end_session_with(state, &relay.session_id, v.status, &v.output, &v.reason).await;
        } else {
            warn_if_idle(cfg, &relay, now);
        }
    }
    if !scan_orphans {
        return;
    }
    let before = now - (cfg.resume_window_secs as i64).saturating_mul(1000);
    match state.store.stale_sessions(before).await {
        Ok(ids) => {
            for id in ids.into_iter().filter(|id| state.hub.relay(id).is_none()) {
                tracing::info!(session_id = %id, "reaping orphaned session");
                let reason = format!(
                    "no gateway relayed the session for {}",
                    human_secs(cfg.resume_window_secs)
                );
                end_session_with(state, &id, "Terminated", &reason, &reason).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "orphan scan failed"),
    }
}

/// Tells the client once per idle stretch that the session will close, so
/// a user can keep it open. Best effort: a full client queue skips it.
fn warn_if_idle(cfg: &SessionsConfig, relay: &Relay, now: i64) {
    let clock = Clock::of(relay);
    let Some(left) = idle_warning_due(cfg, clock, now) else {
        return;
    };
    if relay.idle_warned_for_ms.load(Ordering::Relaxed) == clock.last_activity_ms {
        return;
    }
    relay
        .idle_warned_for_ms
        .store(clock.last_activity_ms, Ordering::Relaxed);
    let message = format!(
        "This session will be closed in {} because it has been idle (no input or output). Type or send data to keep it open.",
        human_secs(left)
    );
    if let Some(f) = crate::ws::session_notice_frame(&relay.session_id, &message) {
        let _ = relay.to_client_tx.try_send(f);
    }
    relay
        .span
        .in_scope(|| tracing::info!(seconds_left = left, "idle warning sent"));
}

/// After a (re)start: rebuilds a relay for every session the store still
/// counts as live, with both sides away since now, so ResumeSession and the
/// agent's data-channel POST find it and the reaper gives the peers a full
/// resume window to come back. Runs before the listener serves anything.
/// (With several gateways on one store this would need an owner column;
/// today there is one gateway per store.)
pub async fn restore_sessions(state: &AppState) {
    let filter = SessionFilter {
        statuses: COUNTING_STATES.iter().map(|s| s.to_string()).collect(),
        ..SessionFilter::default()
    };
    let sessions = match state.store.list_sessions(filter).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "could not list sessions to restore");
            return;
        }
    };
    let now = now_ms();
    let window = human_secs(state.config.sessions.resume_window_secs);
    for s in sessions {
        if state.hub.relay(&s.session_id).is_some() {
            continue;
        }
        let principal = s
            .owner
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        let mut relay = new_relay(
            &s.session_id,
            &s.target,
            &principal,
            state.config.limits.relay_queue(),
            &state.hub.relay_memory,
            &state.sessions_cancel,
        );
        // Maximum duration counts from the real start, not the restart.
        relay.created_ms = s.start_ms;
        relay.mark_restored(now);
        let relay = Arc::new(relay);
        state.hub.insert_relay(relay.clone());
        relay
            .span
            .in_scope(|| tracing::info!("session restored; waiting for client and agent"));
        let details = format!(
            "Disconnected: gateway restarted; waiting {window} for the client and the agent to reattach"
        );
        let _ = state
            .update_session_status(&s.session_id, "Disconnected", None, Some(&details))
            .await;
    }
}

/// On a graceful shutdown: live sessions stay in the store as Disconnected
/// (their sockets get a 1012 close, not channel_closed) so a restarted
/// gateway can take them back.
pub async fn suspend_sessions(state: &AppState) {
    let window = human_secs(state.config.sessions.resume_window_secs);
    for relay in state.hub.relays() {
        let details =
            format!("Disconnected: gateway shutting down; resumable for {window} once it is back");
        let _ = state
            .update_session_status(&relay.session_id, "Disconnected", None, Some(&details))
            .await;
    }
}

/// Runs [`reap_once`] every [`REAP_INTERVAL`] until `shutdown`.
pub async fn run_reaper(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_scan = i64::MIN;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let scan = now.saturating_sub(last_scan) >= ORPHAN_SCAN_EVERY_MS;
        if scan {
            last_scan = now;
        }
        reap_once(&state, now, scan).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> Clock {
        Clock {
            created_ms: 1_000_000,
            agent_attached: true,
            client_detached_ms: 0,
            agent_detached_ms: 0,
            last_activity_ms: 1_000_000,
        }
    }

    #[test]
    fn human() {
        assert_eq!(human_secs(1200), "20m");
        assert_eq!(human_secs(90), "1m30s");
        assert_eq!(human_secs(7200), "2h");
        assert_eq!(human_secs(0), "0s");
    }

    #[test]
    fn idle_warning_comes_a_minute_early() {
        let cfg = SessionsConfig {
            idle_timeout_secs: 1200,
            ..SessionsConfig::default()
        };
        let mut c = clock();
        c.last_activity_ms = 0;
        assert_eq!(idle_warning_due(&cfg, c, 1_139_000), None);
        assert_eq!(idle_warning_due(&cfg, c, 1_140_000), Some(60));
        assert_eq!(idle_warning_due(&cfg, c, 1_199_500), Some(1));
        assert_eq!(idle_warning_lead_secs(4), 2);
        assert_eq!(idle_warning_lead_secs(1), 1);
        let short = SessionsConfig {
            idle_timeout_secs: 1,
            ..SessionsConfig::default()
        };
        // A 1 s timeout leaves no room to warn.
        assert_eq!(idle_warning_due(&short, c, 900), None);
    }

    #[test]
    fn idle_timeout() {
        let cfg = SessionsConfig::default();
        assert_eq!(verdict(&cfg, clock(), 1_000_000 + 1_199_999), None);
        let v = verdict(&cfg, clock(), 1_000_000 + 1_200_000).unwrap();
        assert_eq!(v.status, "Terminated");
        assert_eq!(v.reason, "idle timeout after 20m");
        assert_eq!(v.output, "Session idle timeout reached");
    }

    #[test]
    fn resume_window_and_attach_timeout() {
        let cfg = SessionsConfig::default();
        let mut c = clock();
        c.client_detached_ms = 1_000_000;
        assert_eq!(verdict(&cfg, c, 1_000_000 + 119_000), None);
        assert!(verdict(&cfg, c, 1_000_000 + 120_000)
            .unwrap()
            .reason
            .contains("did not resume within 2m"));
        let mut c = clock();
        c.agent_attached = false;
        assert_eq!(verdict(&cfg, c, 1_000_000 + 29_000), None);
        assert_eq!(
            verdict(&cfg, c, 1_000_000 + 30_000).unwrap().status,
            "Failed"
        );
    }

    #[test]
    fn agent_that_does_not_come_back_fails_after_the_window() {
        let cfg = SessionsConfig::default();
        let mut c = clock();
        c.agent_detached_ms = 1_000_000;
        c.last_activity_ms = 1_000_000;
        assert_eq!(verdict(&cfg, c, 1_000_000 + 119_000), None);
        let v = verdict(&cfg, c, 1_000_000 + 120_000).unwrap();
        assert_eq!(v.status, "Failed");
        assert_eq!(
            v.reason,
            "agent data channel lost and not resumed within 2m"
        );
    }

    #[test]
    fn max_duration_off_by_default() {
        let mut cfg = SessionsConfig::default();
        let mut c = clock();
        c.last_activity_ms = 1_000_000 + 10_000_000;
        assert_eq!(verdict(&cfg, c, 1_000_000 + 10_000_000), None);
        cfg.max_session_duration_secs = Some(60);
        let v = verdict(&cfg, c, 1_000_000 + 60_000).unwrap();
        assert!(v.output.contains("maximum duration of 1m"), "{v:?}");
    }
}
