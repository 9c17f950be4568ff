//! Fuzzes the peer port's handshake decoders: any bytes give a hello (or an answer header)
//! or a typed error; a decoded hello encodes back to the same bytes. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presage_security::handshake::{decode_answer_header, decode_hello, encode_hello, ANSWER_HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(hello) = decode_hello(data) {
        assert_eq!(encode_hello(&hello).as_slice(), data, "a hello round-trips");
    }
    if data.len() >= ANSWER_HEADER_BYTES {
        if let Ok((_, _, reason_len)) = decode_answer_header(&data[..ANSWER_HEADER_BYTES]) {
            assert!(reason_len <= presage_security::handshake::MAX_REASON_BYTES);
        }
    }
});
