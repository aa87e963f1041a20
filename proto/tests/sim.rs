//! Deterministic simulation of two reliable channels over a lossy link.
//!
//! A virtual clock jumps to the next event (a packet arrival or a
//! retransmission deadline); loss, duplication and latency jitter (which
//! reorders) come from a seeded PRNG, so every failure replays exactly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use airlock_proto::frame::{flags, Frame, MessageType, PayloadType, HEADER_LEN};
use airlock_proto::messages::Acknowledge;
use airlock_proto::reliable::{Config, Event, ProtoError, ReliableChannel, Role, SendError};
use bytes::Bytes;

const EPOCH_MS: u64 = 1_700_000_000_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy)]
struct LinkParams {
    loss: f64,
    dup: f64,
    min_latency: Duration,
    jitter_ms: u64,
}

impl LinkParams {
    fn perfect() -> Self {
        LinkParams {
            loss: 0.0,
            dup: 0.0,
            min_latency: Duration::from_millis(10),
            jitter_ms: 0,
        }
    }
}

/// One direction of the network: packets keyed by (arrival, tiebreak).
struct Link {
    params: LinkParams,
    in_flight: BTreeMap<(Instant, u64), Bytes>,
    counter: u64,
}

impl Link {
    fn new(params: LinkParams) -> Self {
        Link {
            params,
            in_flight: BTreeMap::new(),
            counter: 0,
        }
    }

    fn push(&mut self, rng: &mut Rng, now: Instant, pkt: Bytes) {
        if rng.chance(self.params.loss) {
            return;
        }
        let copies = if rng.chance(self.params.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let jitter = Duration::from_millis(rng.below(self.params.jitter_ms + 1));
            self.counter += 1;
            self.in_flight.insert(
                (now + self.params.min_latency + jitter, self.counter),
                pkt.clone(),
            );
        }
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.keys().next().map(|k| k.0)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Bytes> {
        let key = *self.in_flight.keys().next()?;
        if key.0 > now {
            return None;
        }
        self.in_flight.remove(&key)
    }
}

struct Sim {
    now: Instant,
    rng: Rng,
    client: ReliableChannel,
    agent: ReliableChannel,
    to_agent: Link,
    to_client: Link,
    /// Payloads the client application received (sent by the agent).
    client_rx: Vec<Bytes>,
    agent_rx: Vec<Bytes>,
    client_tx: Vec<Bytes>,
    agent_tx: Vec<Bytes>,
    client_next: usize,
    agent_next: usize,
}

impl Sim {
    fn new(seed: u64, config: Config, link: LinkParams) -> Self {
        let now = Instant::now();
        Sim {
            now,
            rng: Rng(seed),
            client: ReliableChannel::new(Role::Client, config.clone(), now, EPOCH_MS, seed ^ 1),
            agent: ReliableChannel::new(Role::Agent, config, now, EPOCH_MS, seed ^ 2),
            to_agent: Link::new(link),
            to_client: Link::new(link),
            client_rx: Vec::new(),
            agent_rx: Vec::new(),
            client_tx: Vec::new(),
            agent_tx: Vec::new(),
            client_next: 0,
            agent_next: 0,
        }
    }

    fn offer(&mut self) {
        while self.client_next < self.client_tx.len() && self.client.send_capacity() > 0 {
            let p = self.client_tx[self.client_next].clone();
            self.client.send(PayloadType::Output, p, self.now).unwrap();
            self.client_next += 1;
        }
        while self.agent_next < self.agent_tx.len() && self.agent.send_capacity() > 0 {
            let p = self.agent_tx[self.agent_next].clone();
            self.agent.send(PayloadType::Output, p, self.now).unwrap();
            self.agent_next += 1;
        }
    }

    fn flush_and_drain(&mut self) {
        while let Some(pkt) = self.client.poll_transmit() {
            self.to_agent.push(&mut self.rng, self.now, pkt);
        }
        while let Some(pkt) = self.agent.poll_transmit() {
            self.to_client.push(&mut self.rng, self.now, pkt);
        }
        while let Some(ev) = self.client.poll_event() {
            if let Event::Data { payload, .. } = ev {
                self.client_rx.push(payload);
            }
        }
        while let Some(ev) = self.agent.poll_event() {
            if let Event::Data { payload, .. } = ev {
                self.agent_rx.push(payload);
            }
        }
    }

    /// One tick: the application acts, then the clock jumps to the next
    /// event. Returns false when nothing is left to happen.
    fn step(&mut self) -> bool {
        self.offer();
        self.flush_and_drain();
        let next = [
            self.to_agent.next_arrival(),
            self.to_client.next_arrival(),
            self.client.poll_timeout(),
            self.agent.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { return false };
        self.now = self.now.max(next);
        while let Some(pkt) = self.to_agent.pop_due(self.now) {
            self.agent.handle_bytes(pkt, self.now).unwrap();
        }
        while let Some(pkt) = self.to_client.pop_due(self.now) {
            self.client.handle_bytes(pkt, self.now).unwrap();
        }
        self.client.handle_timeout(self.now);
        self.agent.handle_timeout(self.now);
        true
    }

    fn done(&self) -> bool {
        self.client_rx.len() == self.agent_tx.len()
            && self.agent_rx.len() == self.client_tx.len()
            && self.client.is_flushed()
            && self.agent.is_flushed()
    }
}

fn payloads(tag: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{tag}-{i}-{}", "x".repeat(i % 50))))
        .collect()
}

fn lossy() -> LinkParams {
    LinkParams {
        loss: 0.2,
        dup: 0.05,
        min_latency: Duration::from_millis(5),
        jitter_ms: 40,
    }
}

#[test]
fn every_byte_delivered_once_in_order_under_loss() {
    for seed in [1u64, 7, 42, 1234, 0xdead_beef] {
        let config = Config {
            max_in_flight: 64,
            max_reorder: 256,
            max_undelivered: 16,
            ..Config::default()
        };
        let mut sim = Sim::new(seed, config, lossy());
        sim.client_tx = payloads("c", 2000);
        sim.agent_tx = payloads("a", 2000);
        let start = sim.now;
        let mut steps = 0u64;
        while !sim.done() {
            assert!(sim.step(), "seed {seed}: simulation stalled");
            steps += 1;
            assert!(steps < 5_000_000, "seed {seed}: too many steps");
            assert!(
                sim.now - start < Duration::from_secs(3600),
                "seed {seed}: took too long"
            );
        }
        assert_eq!(sim.agent_rx, sim.client_tx, "seed {seed}");
        assert_eq!(sim.client_rx, sim.agent_tx, "seed {seed}");
        // With 20% loss each way about 0.56 resends per frame are needed;
        // staying under one per payload shows no timer spam.
        assert!(
            sim.client.stats().retransmits < 2000,
            "seed {seed}: {:?}",
            sim.client.stats()
        );
        assert!(
            sim.agent.stats().retransmits < 2000,
            "seed {seed}: {:?}",
            sim.agent.stats()
        );
        assert!(sim.client.stats().retransmits > 0);
        assert!(sim.agent.stats().duplicates_received > 0);
        // Each RTO stays within the configured bounds.
        assert!(sim.client.rto() <= Duration::from_secs(1));
        assert!(sim.client.rto() >= Duration::from_millis(10));
    }
}

#[test]
fn simulation_is_deterministic() {
    let run = |seed| {
        let mut sim = Sim::new(
            seed,
            Config {
                max_in_flight: 32,
                ..Config::default()
            },
            lossy(),
        );
        sim.client_tx = payloads("c", 300);
        sim.agent_tx = payloads("a", 300);
        while !sim.done() {
            assert!(sim.step());
        }
        (
            sim.client.stats().clone(),
            sim.agent.stats().clone(),
            sim.now,
        )
    };
    let a = run(99);
    let b = run(99);
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
}

fn pair(config: Config) -> (Instant, ReliableChannel, ReliableChannel) {
    let now = Instant::now();
    let client = ReliableChannel::new(Role::Client, config.clone(), now, EPOCH_MS, 1);
    let agent = ReliableChannel::new(Role::Agent, config, now, EPOCH_MS, 2);
    (now, client, agent)
}

fn drain(ch: &mut ReliableChannel) -> Vec<Bytes> {
    std::iter::from_fn(|| ch.poll_transmit()).collect()
}

fn data_events(ch: &mut ReliableChannel) -> Vec<Bytes> {
    std::iter::from_fn(|| ch.poll_event())
        .filter_map(|e| match e {
            Event::Data { payload, .. } => Some(payload),
            Event::Control(_) => None,
        })
        .collect()
}

fn decode(b: &Bytes) -> Frame {
    Frame::decode(b.clone(), 1 << 20).unwrap()
}

#[test]
fn ack_lost_then_retransmit() {
    let (now, mut client, mut agent) = pair(Config::default());
    client
        .send(PayloadType::Output, Bytes::from_static(b"ls\r"), now)
        .unwrap();
    let sent = drain(&mut client);
    assert_eq!(sent.len(), 1);
    let t1 = now + Duration::from_millis(10);
    agent.handle_bytes(sent[0].clone(), t1).unwrap();
    assert_eq!(data_events(&mut agent), vec![Bytes::from_static(b"ls\r")]);
    let lost_ack = drain(&mut agent);
    assert_eq!(lost_ack.len(), 1);

    // No ack arrives: nothing is resent before the deadline, then exactly once.
    let deadline = client.poll_timeout().expect("retransmit timer armed");
    assert_eq!(deadline, now + client.rto());
    client.handle_timeout(deadline - Duration::from_millis(1));
    assert!(drain(&mut client).is_empty());
    client.handle_timeout(deadline);
    let resent = drain(&mut client);
    assert_eq!(resent, sent);
    client.handle_timeout(deadline + Duration::from_millis(1));
    assert!(drain(&mut client).is_empty(), "resent at most once per RTO");
    assert_eq!(client.stats().retransmits, 1);

    // The agent re-acks the duplicate; that ack gets through.
    agent.handle_bytes(resent[0].clone(), deadline).unwrap();
    assert!(data_events(&mut agent).is_empty());
    let acks = drain(&mut agent);
    assert_eq!(acks.len(), 1);
    client.handle_bytes(acks[0].clone(), deadline).unwrap();
    assert!(client.is_flushed());
    assert_eq!(client.poll_timeout(), None);
}

#[test]
fn duplicate_is_reacked_not_redelivered() {
    let (now, mut client, mut agent) = pair(Config::default());
    agent
        .send(PayloadType::Output, Bytes::from_static(b"hello"), now)
        .unwrap();
    let pkt = drain(&mut agent).remove(0);
    client.handle_bytes(pkt.clone(), now).unwrap();
    client.handle_bytes(pkt.clone(), now).unwrap();
    assert_eq!(data_events(&mut client), vec![Bytes::from_static(b"hello")]);
    let acks = drain(&mut client);
    assert_eq!(acks.len(), 2);
    for ack in &acks {
        let f = decode(ack);
        assert_eq!(f.message_type, MessageType::Acknowledge);
        assert_eq!(f.flags, flags::ACK);
        assert_eq!(f.sequence_number, 0);
        assert_eq!(f.payload_type, PayloadType::Undefined);
        let body: Acknowledge = serde_json::from_slice(&f.payload).unwrap();
        assert_eq!(body.message_type, "output_stream_data");
        assert_eq!(body.message_id, decode(&pkt).message_id.to_string());
        assert_eq!(body.sequence_number, 0);
        assert!(body.is_sequential);
    }
    assert_eq!(client.stats().duplicates_received, 1);
}

#[test]
fn byte_window_holds_big_frames_until_acked() {
    let (now, mut client, mut agent) = pair(Config {
        max_in_flight_bytes: 3000,
        ..Config::default()
    });
    let kib = Bytes::from(vec![7u8; 1000]);
    for _ in 0..3 {
        client.send(PayloadType::Output, kib.clone(), now).unwrap();
    }
    // Three frames of 1000 + HEADER_LEN bytes passed 3000.
    assert_eq!(client.send_capacity(), 0);
    assert_eq!(
        client.send(PayloadType::Output, kib.clone(), now),
        Err(SendError::WindowFull(3))
    );
    for pkt in drain(&mut client) {
        agent.handle_bytes(pkt, now).unwrap();
    }
    let acks = drain(&mut agent);
    client.handle_bytes(acks[0].clone(), now).unwrap();
    assert!(client.send_capacity() > 0);
    client.send(PayloadType::Output, kib, now).unwrap();
    assert_eq!(client.send_capacity(), 0);
    assert_eq!(data_events(&mut agent).len(), 3);
}

#[test]
fn receiver_holds_at_most_its_byte_budget_unacked_beyond() {
    let (now, mut client, mut agent) = pair(Config {
        max_buffered_bytes: 2000,
        ..Config::default()
    });
    for _ in 0..3 {
        client
            .send(PayloadType::Output, Bytes::from(vec![1u8; 1000]), now)
            .unwrap();
    }
    for pkt in drain(&mut client) {
        agent.handle_bytes(pkt, now).unwrap();
    }
    // The third frame is neither consumed nor acked: the sender keeps it.
    assert_eq!(drain(&mut agent).len(), 2);
    assert_eq!(data_events(&mut agent).len(), 2);
    let deadline = client.poll_timeout().unwrap();
    client.handle_timeout(deadline);
    for pkt in drain(&mut client) {
        agent.handle_bytes(pkt, deadline).unwrap();
    }
    assert_eq!(data_events(&mut agent).len(), 1);
}

#[test]
fn window_full_blocks_send_until_acked() {
    let (now, mut client, mut agent) = pair(Config {
        max_in_flight: 2,
        ..Config::default()
    });
    client
        .send(PayloadType::Output, Bytes::from_static(b"a"), now)
        .unwrap();
    client
        .send(PayloadType::Output, Bytes::from_static(b"b"), now)
        .unwrap();
    assert_eq!(client.send_capacity(), 0);
    assert_eq!(
        client.send(PayloadType::Output, Bytes::from_static(b"c"), now),
        Err(SendError::WindowFull(2))
    );
    for pkt in drain(&mut client) {
        agent.handle_bytes(pkt, now).unwrap();
    }
    let acks = drain(&mut agent);
    client.handle_bytes(acks[0].clone(), now).unwrap();
    assert_eq!(client.send_capacity(), 1);
    client
        .send(PayloadType::Output, Bytes::from_static(b"c"), now)
        .unwrap();
    assert_eq!(client.send_capacity(), 0);
    client.handle_bytes(acks[1].clone(), now).unwrap();
    for pkt in drain(&mut client) {
        agent.handle_bytes(pkt, now).unwrap();
    }
    for pkt in drain(&mut agent) {
        client.handle_bytes(pkt, now).unwrap();
    }
    assert!(client.is_flushed());
    assert_eq!(
        data_events(&mut agent),
        vec![
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
            Bytes::from_static(b"c")
        ]
    );
}

#[test]
fn reconnect_resends_unacked() {
    let (now, mut client, mut agent) = pair(Config::default());
    for p in [&b"one"[..], b"two", b"three"] {
        client
            .send(PayloadType::Output, Bytes::copy_from_slice(p), now)
            .unwrap();
    }
    let first = drain(&mut client);
    // The first frame made it; the socket died with the rest.
    agent.handle_bytes(first[0].clone(), now).unwrap();
    let acks = drain(&mut agent);
    client.handle_bytes(acks[0].clone(), now).unwrap();

    let t = now + Duration::from_millis(1);
    assert!(client.poll_timeout().unwrap() > t, "well before the RTO");
    client.handle_reconnect(t);
    let resent = drain(&mut client);
    assert_eq!(resent, first[1..].to_vec());
    for pkt in resent {
        agent.handle_bytes(pkt, t).unwrap();
    }
    for pkt in drain(&mut agent) {
        client.handle_bytes(pkt, t).unwrap();
    }
    assert!(client.is_flushed());
    assert_eq!(
        data_events(&mut agent),
        vec![
            Bytes::from_static(b"one"),
            Bytes::from_static(b"two"),
            Bytes::from_static(b"three")
        ]
    );
}

#[test]
fn undelivered_queue_full_withholds_ack() {
    let (now, mut client, mut agent) = pair(Config {
        max_undelivered: 2,
        ..Config::default()
    });
    for p in [&b"1"[..], b"2", b"3"] {
        client
            .send(PayloadType::Output, Bytes::copy_from_slice(p), now)
            .unwrap();
    }
    for pkt in drain(&mut client) {
        agent.handle_bytes(pkt, now).unwrap();
    }
    let acks = drain(&mut agent);
    assert_eq!(acks.len(), 2, "third frame neither consumed nor acked");
    for a in acks {
        client.handle_bytes(a, now).unwrap();
    }
    assert!(!client.is_flushed());

    // The application catches up; the peer's retransmission then lands.
    assert_eq!(
        agent.poll_event(),
        Some(Event::Data {
            payload_type: PayloadType::Output,
            payload: Bytes::from_static(b"1")
        })
    );
    let due = client.poll_timeout().unwrap();
    client.handle_timeout(due);
    for pkt in drain(&mut client) {
        agent.handle_bytes(pkt, due).unwrap();
    }
    for pkt in drain(&mut agent) {
        client.handle_bytes(pkt, due).unwrap();
    }
    assert!(client.is_flushed());
    assert_eq!(
        data_events(&mut agent),
        vec![Bytes::from_static(b"2"), Bytes::from_static(b"3")]
    );
}

#[test]
fn early_frames_are_buffered_acked_and_delivered_in_order() {
    let (now, mut client, mut agent) = pair(Config::default());
    for p in [&b"a"[..], b"b", b"c"] {
        agent
            .send(PayloadType::Output, Bytes::copy_from_slice(p), now)
            .unwrap();
    }
    let pkts = drain(&mut agent);
    client.handle_bytes(pkts[2].clone(), now).unwrap();
    client.handle_bytes(pkts[1].clone(), now).unwrap();
    assert!(client.poll_event().is_none());
    assert_eq!(
        drain(&mut client).len(),
        2,
        "early frames acked when stored"
    );
    client.handle_bytes(pkts[0].clone(), now).unwrap();
    assert_eq!(
        data_events(&mut client),
        vec![
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
            Bytes::from_static(b"c")
        ]
    );
}

#[test]
fn outgoing_frames_follow_the_role() {
    let (now, mut client, mut agent) = pair(Config::default());
    let later = now + Duration::from_millis(1500);
    client
        .send(PayloadType::Size, Bytes::from_static(b"{}"), now)
        .unwrap();
    client
        .send(PayloadType::Output, Bytes::from_static(b"x"), later)
        .unwrap();
    agent
        .send(PayloadType::Output, Bytes::from_static(b"y"), now)
        .unwrap();
    let c = drain(&mut client).iter().map(decode).collect::<Vec<_>>();
    let a = decode(&drain(&mut agent)[0]);
    assert_eq!(c[0].message_type, MessageType::InputStreamData);
    assert_eq!((c[0].sequence_number, c[0].flags), (0, flags::SYN));
    assert_eq!((c[1].sequence_number, c[1].flags), (1, 0));
    assert_eq!(c[0].created_date, EPOCH_MS);
    assert_eq!(c[1].created_date, EPOCH_MS + 1500);
    assert_eq!(c[0].message_id.get_version_num(), 4);
    assert_ne!(c[0].message_id, c[1].message_id);
    assert_eq!(a.message_type, MessageType::OutputStreamData);
    assert_eq!(a.flags, flags::SYN);
}

#[test]
fn control_frames_become_events_and_unsequenced_sends() {
    let (now, mut client, mut agent) = pair(Config::default());
    agent
        .send_unsequenced(
            MessageType::AgentSessionState,
            Bytes::from_static(b"{\"SessionState\":\"Connected\"}"),
        )
        .unwrap();
    let pkt = drain(&mut agent).remove(0);
    let f = decode(&pkt);
    assert_eq!((f.sequence_number, f.flags), (0, flags::ACK));
    client.handle_bytes(pkt, now).unwrap();
    match client.poll_event() {
        Some(Event::Control(f)) => assert_eq!(f.message_type, MessageType::AgentSessionState),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        drain(&mut client).is_empty(),
        "control frames are not acked"
    );
    assert!(agent.is_flushed());
}

#[test]
fn malformed_ack_and_garbage_are_errors_not_panics() {
    let (now, mut client, _) = pair(Config::default());
    let bad = Frame::new(
        MessageType::Acknowledge,
        0,
        flags::ACK,
        uuid::Uuid::nil(),
        PayloadType::Undefined,
        Bytes::from_static(b"{not json"),
        EPOCH_MS,
    );
    assert!(matches!(
        client.handle_frame(bad, now),
        Err(ProtoError::BadAck(_))
    ));
    assert!(matches!(
        client.handle_bytes(Bytes::from_static(&[0u8; 10]), now),
        Err(ProtoError::Frame(_))
    ));
    assert!(matches!(
        client.handle_bytes(Bytes::from(vec![0u8; HEADER_LEN]), now),
        Err(ProtoError::Frame(_))
    ));
}

#[test]
fn rto_tracks_measured_rtt() {
    let (now, mut client, mut agent) = pair(Config::default());
    let mut t = now;
    for _ in 0..50 {
        client
            .send(PayloadType::Output, Bytes::from_static(b"."), t)
            .unwrap();
        for pkt in drain(&mut client) {
            agent.handle_bytes(pkt, t).unwrap();
        }
        t += Duration::from_millis(20);
        for pkt in drain(&mut agent) {
            client.handle_bytes(pkt, t).unwrap();
        }
    }
    let rto = client.rto();
    assert!(
        rto >= Duration::from_millis(20) && rto < Duration::from_millis(60),
        "rto {rto:?}"
    );
}

#[test]
fn perfect_link_needs_no_retransmits() {
    let mut sim = Sim::new(
        5,
        Config {
            max_in_flight: 16,
            ..Config::default()
        },
        LinkParams::perfect(),
    );
    sim.client_tx = payloads("c", 500);
    sim.agent_tx = payloads("a", 500);
    while !sim.done() {
        assert!(sim.step());
    }
    assert_eq!(sim.agent_rx, sim.client_tx);
    assert_eq!(sim.client_rx, sim.agent_tx);
    assert_eq!(sim.client.stats().retransmits, 0);
    assert_eq!(sim.agent.stats().retransmits, 0);
    assert_eq!(sim.client.stats().duplicates_received, 0);
    // 10 ms each way: the estimator converges near the 20 ms round trip.
    assert!(
        sim.client.rto() < Duration::from_millis(60),
        "rto {:?}",
        sim.client.rto()
    );
    assert_eq!(sim.client.poll_timeout(), None);
}
