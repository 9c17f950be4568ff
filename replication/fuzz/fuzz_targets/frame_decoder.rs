//! Fuzzes the TCP frame decoder: whatever the bytes, it must return a typed error, ask for
//! more bytes, or decode a frame that re-encodes to a frame decoding the same - and never
//! panic or read past what it claims to have consumed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presage_replication::tcp::{decode_frame, encode_frame};

/// A small limit, so oversize lengths are reachable with small inputs.
const MAX_FRAME_BYTES: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the mode: odd wraps the rest in a header with the right length and
    // crc, so the fuzzer also reaches the protobuf decoder behind the checksum.
    let Some((&mode, data)) = data.split_first() else { return };
    let framed;
    let data = if mode & 1 == 1 {
        framed = [&(data.len() as u32).to_be_bytes()[..], &crc32fast::hash(data).to_be_bytes()[..], data].concat();
        &framed[..]
    } else {
        data
    };
    let mut rest = data;
    while let Ok(Some((batch, used))) = decode_frame(rest, MAX_FRAME_BYTES) {
        assert!(used >= 8 && used <= rest.len(), "consumed {used} of {}", rest.len());
        let mut again = Vec::new();
        encode_frame(&batch, &mut again);
        let (decoded, n) = decode_frame(&again, usize::MAX).expect("re-encoded frame decodes").expect("complete");
        assert_eq!((decoded, n), (batch, again.len()));
        rest = &rest[used..];
    }
});
