//! Fuzzes the RESP command parser: whatever the bytes, it returns a protocol error, asks for
//! more, or yields a command within the limits that used no more bytes than it had - and a
//! command parsed from a prefix parses the same from the whole buffer. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presage_server::resp::parse::{parse_command, Limits};

/// Small limits, so that every limit is reachable with small inputs.
const LIMITS: Limits = Limits { max_bulk_bytes: 64, max_args: 8, max_inline_bytes: 128 };

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((args, used))) = parse_command(rest, &LIMITS) {
        assert!(used > 0 && used <= rest.len(), "used {used} of {}", rest.len());
        assert!(args.len() <= LIMITS.max_args);
        assert!(args.iter().all(|a| a.len() <= LIMITS.max_bulk_bytes.max(LIMITS.max_inline_bytes)));
        // More bytes after a complete command do not change it.
        let mut longer = rest[..used].to_vec();
        longer.extend_from_slice(b"*1\r\n");
        assert_eq!(parse_command(&longer, &LIMITS), Ok(Some((args, used))));
        rest = &rest[used..];
    }
});
