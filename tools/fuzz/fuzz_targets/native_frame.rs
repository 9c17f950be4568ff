//! Fuzzes the native protocol's frame decoder as a node reads client frames: whatever the
//! bytes, splitting frames returns an error, asks for more, or yields a body within
//! `max-frame-bytes` that used no more bytes than it had; decoding a body gives a request or
//! a typed error. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presage_client::net::{decode_body, split_frame, FRAME_HEADER_BYTES};
use presage_client::Request;

/// Small, so that the limit is reachable with small inputs.
const MAX_FRAME_BYTES: usize = 4_096;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((body, used))) = split_frame(rest, MAX_FRAME_BYTES) {
        assert!(used == FRAME_HEADER_BYTES + body.len() && used <= rest.len());
        assert!(body.len() <= MAX_FRAME_BYTES);
        let _ = decode_body::<Request>(body);
        rest = &rest[used..];
    }
    // A body on its own, as if its frame were valid.
    let _ = decode_body::<Request>(data);
});
