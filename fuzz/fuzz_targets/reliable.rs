//! Arbitrary bytes fed as received frames into a reliable channel, chopped
//! into frames by a one-byte length prefix, with the clock and the
//! application's polling driven by the input too. Must never panic, and the
//! channel's bounds must hold.
#![no_main]

use std::time::{Duration, Instant};

use airlock_proto::frame::{Frame, MessageType, PayloadType};
use airlock_proto::reliable::{Config, ReliableChannel, Role};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let config = Config { max_in_flight: 8, max_reorder: 16, max_undelivered: 4, ..Config::default() };
    let role = if data.first().is_some_and(|b| b & 1 == 1) { Role::Agent } else { Role::Client };
    let mut ch = ReliableChannel::new(role, config, now, 1_700_000_000_000, 7);
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 6 {
            // Raw bytes as a websocket message.
            0 | 1 => {
                let len = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len().saturating_sub(1));
                let msg = rest.get(1..1 + len).unwrap_or_default();
                rest = rest.get(1 + len..).unwrap_or_default();
                let _ = ch.handle_bytes(Bytes::copy_from_slice(msg), now);
            }
            // A well-formed stream or ack frame with fuzzed seq / payload, so
            // the state machine (not only the decoder) is exercised.
            2 => {
                let seq = i64::from(rest.first().copied().unwrap_or(0) % 32) - 2;
                let ty = if op & 0x10 == 0 { MessageType::OutputStreamData } else { MessageType::Acknowledge };
                let payload = if ty == MessageType::Acknowledge {
                    Bytes::from(format!(
                        "{{\"AcknowledgedMessageType\":\"x\",\"AcknowledgedMessageId\":\"y\",\"AcknowledgedMessageSequenceNumber\":{seq},\"IsSequentialMessage\":true}}"
                    ))
                } else {
                    Bytes::copy_from_slice(rest.get(..4).unwrap_or_default())
                };
                rest = rest.get(1..).unwrap_or_default();
                let frame = Frame::new(ty, seq, 0, Default::default(), PayloadType::Output, payload, 1);
                let _ = ch.handle_frame(frame, now);
            }
            3 => {
                let _ = ch.send(PayloadType::Output, Bytes::from_static(b"x"), now);
            }
            4 => {
                now += Duration::from_millis(u64::from(op) * 8);
                ch.handle_timeout(now);
                if op & 0x80 != 0 {
                    ch.handle_reconnect(now);
                }
            }
            _ => {
                while ch.poll_event().is_some() {}
            }
        }
        while ch.poll_transmit().is_some() {}
        assert!(ch.send_capacity() <= 8);
        if let Some(t) = ch.poll_timeout() {
            assert!(t >= start);
        }
    }
});
