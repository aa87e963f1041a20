//! Two data-channel drivers over a real loopback websocket relay.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airlock_proto::reliable::{Config, Event};
use airlock_proto::{PayloadType, Role};
use airlock_transport::datachannel::{ChannelEvent, DataChannel};
use airlock_transport::ws;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const SIZE: usize = 5 * 1024 * 1024;
const CHUNK: usize = 1024;

fn pattern(seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn accept(listener: &TcpListener) -> WebSocketStream<TcpStream> {
    let (s, _) = listener.accept().await.unwrap();
    // tungstenite plays the relay: an independent implementation checking
    // our client framing. The limit matches what our ends accept.
    let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(ws::MAX_MESSAGE_SIZE))
        .max_frame_size(Some(ws::MAX_MESSAGE_SIZE));
    let mut ws = tokio_tungstenite::accept_async_with_config(s, Some(cfg))
        .await
        .unwrap();
    // The open message is the first text frame; a relay consumes it.
    match ws.next().await {
        Some(Ok(Message::Text(_))) => {}
        other => panic!("expected the open message first, got {other:?}"),
    }
    ws
}

/// Relays binary frames between successive pairs of connections. The first
/// pair is dropped (both TCP sockets, no close frame) after `kill_after`
/// frames when given.
async fn relay(listener: TcpListener, kill_after: Option<usize>) {
    let mut first = true;
    loop {
        let a = accept(&listener).await;
        let b = accept(&listener).await;
        let limit = if first { kill_after } else { None };
        first = false;
        let count = Arc::new(AtomicUsize::new(0));
        let (mut a_tx, mut a_rx) = a.split();
        let (mut b_tx, mut b_rx) = b.split();
        let c1 = count.clone();
        let ab = async move {
            while let Some(Ok(m)) = a_rx.next().await {
                if m.is_binary() {
                    if b_tx.send(m).await.is_err() {
                        break;
                    }
                    if limit.is_some_and(|l| c1.fetch_add(1, Ordering::SeqCst) + 1 >= l) {
                        break;
                    }
                }
            }
        };
        let c2 = count.clone();
        let ba = async move {
            while let Some(Ok(m)) = b_rx.next().await {
                if m.is_binary() {
                    if a_tx.send(m).await.is_err() {
                        break;
                    }
                    if limit.is_some_and(|l| c2.fetch_add(1, Ordering::SeqCst) + 1 >= l) {
                        break;
                    }
                }
            }
        };
        if limit.is_some() {
            // Either direction hitting the limit drops both sockets.
            tokio::select! { _ = ab => {}, _ = ba => {} }
        } else {
            tokio::spawn(async move { tokio::join!(ab, ba) });
        }
    }
}

/// Sends `data` from its own task; receives `SIZE` bytes while reconnecting
/// on every disconnect. Returns what arrived and how many reconnects happened.
async fn run_side(
    mut ch: DataChannel,
    data: Vec<u8>,
    url: String,
) -> (Vec<u8>, usize, DataChannel) {
    let sender = ch.sender();
    let send_task = tokio::spawn(async move {
        for chunk in data.chunks(CHUNK) {
            sender
                .send(PayloadType::Output, Bytes::copy_from_slice(chunk))
                .await
                .unwrap();
        }
    });
    let mut got = Vec::with_capacity(SIZE);
    let mut reconnects = 0;
    while got.len() < SIZE {
        match ch.recv().await.expect("driver stopped") {
            ChannelEvent::Proto(Event::Data {
                payload_type,
                payload,
            }) => {
                assert_eq!(payload_type, PayloadType::Output);
                got.extend_from_slice(&payload);
            }
            ChannelEvent::Proto(Event::Control(_)) => {}
            ChannelEvent::Disconnected(_) => {
                reconnects += 1;
                let tls = airlock_transport::tls::client_config(None).unwrap();
                let ws = ws::connect(&url, tls).await.unwrap();
                ch.reconnect(ws, "{\"open\":2}".to_string()).await.unwrap();
            }
        }
    }
    send_task.await.unwrap();
    assert!(
        ch.flush(Duration::from_secs(30)).await,
        "not everything was acked"
    );
    (got, reconnects, ch)
}

async fn transfer(kill_after: Option<usize>) -> (usize, usize) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "ws://{}/v1/data-channel/s-1?role=publish_subscribe",
        listener.local_addr().unwrap()
    );
    let relay = tokio::spawn(relay(listener, kill_after));
    let tls = airlock_transport::tls::client_config(None).unwrap();
    let ws_a = ws::connect(&url, tls.clone()).await.unwrap();
    let a = DataChannel::spawn(
        ws_a,
        "{\"open\":\"client\"}".into(),
        Role::Client,
        Config::default(),
    );
    let ws_b = ws::connect(&url, tls).await.unwrap();
    let b = DataChannel::spawn(
        ws_b,
        "{\"open\":\"agent\"}".into(),
        Role::Agent,
        Config::default(),
    );

    let data_a = pattern(1);
    let data_b = pattern(2);
    let fut = async {
        tokio::join!(
            run_side(a, data_a.clone(), url.clone()),
            run_side(b, data_b.clone(), url.clone())
        )
    };
    let ((got_at_a, ra, a), (got_at_b, rb, b)) =
        tokio::time::timeout(Duration::from_secs(120), fut)
            .await
            .expect("transfer timed out");
    assert!(got_at_a == data_b, "agent->client bytes differ");
    assert!(got_at_b == data_a, "client->agent bytes differ");
    a.close().await;
    b.close().await;
    relay.abort();
    (ra, rb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_megabytes_each_way_byte_equal() {
    let (ra, rb) = transfer(None).await;
    assert_eq!((ra, rb), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_drop_midway_then_reconnect_loses_nothing() {
    let (ra, rb) = transfer(Some(3000)).await;
    assert!(
        ra >= 1 && rb >= 1,
        "both sides must have seen the drop ({ra}, {rb})"
    );
}
