//! Arbitrary bytes through the frame decoder: it must never panic, and
//! anything it accepts must re-encode to the same bytes.
#![no_main]

use airlock_proto::frame::{peek_message_type, Frame, HEADER_LEN, HEADER_LENGTH_FIELD, MAX_PAYLOAD_LEN};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = peek_message_type(data);
    let buf = Bytes::copy_from_slice(data);
    if let Ok(frame) = Frame::decode(buf, MAX_PAYLOAD_LEN) {
        let canonical_header = data.get(..4) == Some(&HEADER_LENGTH_FIELD.to_be_bytes()[..]);
        let space_padded = data.get(4..36).is_some_and(|t| !t.contains(&0));
        let publication = frame.message_type.is_publication();
        if let Ok(encoded) = frame.encode() {
            let again = Frame::decode(encoded.clone(), MAX_PAYLOAD_LEN).expect("re-encoded frame decodes");
            assert_eq!(again, frame);
            // A canonical input (HL 116, space padding, valid digest) is
            // reproduced byte for byte.
            if canonical_header && space_padded && !publication && data.len() >= HEADER_LEN {
                let trimmed_type = frame.message_type.as_str().len();
                let pad_ok = data[4 + trimmed_type..36].iter().all(|&b| b == b' ')
                    && data[4..4 + trimmed_type] == *frame.message_type.as_str().as_bytes();
                if pad_ok && !frame.payload.is_empty() {
                    assert_eq!(&encoded[..], data);
                }
            }
        }
    }
});
