//! The concurrent-session limit is enforced atomically by the store: racing
//! `create_session_within_limit` calls (also from two store handles on the
//! same database file, as two gateways would be) create exactly the limit.

mod common;

use std::sync::Arc;

use airlock_gateway::store::{CreateSessionOutcome, Session, SessionLimits, SqliteStore, Store};
use common::TempDir;

fn session(id: &str, target: &str, owner: &str) -> Session {
    Session {
        session_id: id.to_string(),
        target: target.to_string(),
        owner: owner.to_string(),
        document_name: "SSM-SessionManagerRunShell".into(),
        status: "Connecting".into(),
        start_ms: 1,
        end_ms: None,
        reason: String::new(),
        details: "Connecting: test".into(),
        client_token_hash: String::new(),
        agent_token_hash: String::new(),
    }
}

async fn race(
    stores: &[Arc<SqliteStore>],
    round: usize,
    n: usize,
    limits: SessionLimits,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = stores[i % stores.len()].clone();
        let limits = limits.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("u{}-r{round}-{i:03}", i % 3);
            let out = store
                .create_session_within_limit(
                    session(&id, "mi-0000000000000000a", &format!("user/u{}", i % 3)),
                    limits,
                )
                .await
                .unwrap();
            (id, out)
        }));
    }
    let mut created = Vec::new();
    for t in tasks {
        let (id, out) = t.await.unwrap();
        match out {
            CreateSessionOutcome::Created => created.push(id),
            CreateSessionOutcome::TargetLimit { limit, active } => {
                assert_eq!(limit, limits.per_target);
                assert!(active.len() >= limit as usize, "{active:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn hundred_racing_creates_yield_exactly_the_limit() {
    let dir = TempDir::new();
    let db = dir.0.join("gateway.db");
    let key = [7u8; 32];
    // Two handles = two connections to one file, like two gateways.
    let a = Arc::new(SqliteStore::open(&db, &key).unwrap());
    let b = Arc::new(SqliteStore::open(&db, &key).unwrap());
    let stores = [a.clone(), b.clone()];
    let limits = SessionLimits {
        per_target: 2,
        per_principal: None,
    };
    for round in 0..3 {
        let created = race(&stores, round, 100, limits.clone()).await;
        assert_eq!(created.len(), 2, "round {round}: {created:?}");
        for id in &created {
            assert!(a
                .update_session_status(id, "Terminated", Some(2), Some("Terminated: test"))
                .await
                .unwrap());
            let ev = b.session_events(id).await.unwrap();
            let states: Vec<_> = ev.iter().map(|e| e.status.as_str()).collect();
            assert_eq!(states, ["Connecting", "Terminated"]);
        }
    }
    // Disconnected sessions still count; final ones do not.
    let created = race(&stores, 9, 10, limits.clone()).await;
    assert_eq!(created.len(), 2);
    a.update_session_status(
        &created[0],
        "Disconnected",
        None,
        Some("Disconnected: test"),
    )
    .await
    .unwrap();
    let again = race(&stores, 10, 10, limits).await;
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn principal_limit_applies_across_targets() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0.join("gateway.db"), &[1u8; 32]).unwrap();
    let limits = SessionLimits {
        per_target: 10,
        per_principal: Some(1),
    };
    let out = store
        .create_session_within_limit(session("alice-1", "mi-1", "arn:alice"), limits.clone())
        .await
        .unwrap();
    assert_eq!(out, CreateSessionOutcome::Created);
    let out = store
        .create_session_within_limit(session("alice-2", "mi-2", "arn:alice"), limits.clone())
        .await
        .unwrap();
    assert_eq!(
        out,
        CreateSessionOutcome::PrincipalLimit {
            limit: 1,
            active: vec!["alice-1".into()]
        }
    );
    let out = store
        .create_session_within_limit(session("bob-1", "mi-2", "arn:bob"), limits)
        .await
        .unwrap();
    assert_eq!(out, CreateSessionOutcome::Created);
}
