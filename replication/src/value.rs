//! How a user value is stored in the `Data` key space: a one-byte header, then the value.
//!
//! - `0x00 | value`: a value that does not expire.
//! - `0x01 | deadline_ms (u64, big-endian, Unix ms) | value`: a value that expires at the
//!   deadline.
//!
//! Expiry is decided at two places, with two clocks, and both are deterministic where they
//! have to be:
//! - **apply** (conditions of a [`crate::wire::Check`]): against the command's `now_ms`, set
//!   by the proposer and carried in the log, so every replica decides the same;
//! - **reads** (served by the leader): against the leader's wall clock.
//!
//! An expired value is absent for both; its bytes stay until the key is written again or the
//! leader's sweep deletes it (a `Delete` guarded by a check, so it never removes a newer
//! value).

use crate::error::{Error, Result};

/// Header byte of a value without a deadline.
const PLAIN: u8 = 0;
/// Header byte of a value with a deadline.
const EXPIRING: u8 = 1;
/// Bytes of the deadline after [`EXPIRING`].
const DEADLINE_BYTES: usize = 8;

/// The largest user value: the engine's limit less the largest header.
pub const MAX_USER_VALUE_BYTES: usize = presage_engine::MAX_VALUE_BYTES - 1 - DEADLINE_BYTES;

/// A value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<'a> {
    /// The user's value.
    pub value: &'a [u8],
    /// When it expires (Unix ms), if ever.
    pub deadline_ms: Option<u64>,
}

impl Stored<'_> {
    /// Is it still there at `now_ms`?
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.deadline_ms.is_none_or(|d| now_ms < d)
    }
}

/// The stored form of `value`, expiring at `deadline_ms` if given.
pub fn encode(value: &[u8], deadline_ms: Option<u64>) -> Vec<u8> {
    match deadline_ms {
        None => {
            let mut out = Vec::with_capacity(1 + value.len());
            out.push(PLAIN);
            out.extend_from_slice(value);
            out
        }
        Some(d) => {
            let mut out = Vec::with_capacity(1 + DEADLINE_BYTES + value.len());
            out.push(EXPIRING);
            out.extend_from_slice(&d.to_be_bytes());
            out.extend_from_slice(value);
            out
        }
    }
}

/// Reads a stored value (`key` only names it in the error).
pub fn decode<'a>(key: &[u8], stored: &'a [u8]) -> Result<Stored<'a>> {
    let corrupt = |reason: &str| Error::Corrupt {
        what: "stored value",
        reason: format!("key {}: {reason}", String::from_utf8_lossy(&key[..key.len().min(64)])),
    };
    match stored.split_first() {
        Some((&PLAIN, value)) => Ok(Stored { value, deadline_ms: None }),
        Some((&EXPIRING, rest)) if rest.len() >= DEADLINE_BYTES => {
            let (deadline, value) = rest.split_at(DEADLINE_BYTES);
            let mut bytes = [0u8; DEADLINE_BYTES];
            bytes.copy_from_slice(deadline);
            Ok(Stored { value, deadline_ms: Some(u64::from_be_bytes(bytes)) })
        }
        Some((&EXPIRING, _)) => Err(corrupt("deadline cut short")),
        Some((tag, _)) => Err(corrupt(&format!("unknown header {tag:#04x}"))),
        None => Err(corrupt("empty")),
    }
}

/// The user's value if it is live at `now_ms`: the header is cut off in place, so a read
/// copies nothing.
pub fn live_value(key: &[u8], stored: Vec<u8>, now_ms: u64) -> Result<Option<Vec<u8>>> {
    Ok(live_with_deadline(key, stored, now_ms)?.map(|(value, _)| value))
}

/// The user's value and its deadline if it is live at `now_ms` (the header cut off in place).
pub fn live_with_deadline(key: &[u8], mut stored: Vec<u8>, now_ms: u64) -> Result<Option<(Vec<u8>, Option<u64>)>> {
    let s = decode(key, &stored)?;
    if !s.live_at(now_ms) {
        return Ok(None);
    }
    let deadline_ms = s.deadline_ms;
    let header_bytes = stored.len() - s.value.len();
    stored.drain(..header_bytes);
    Ok(Some((stored, deadline_ms)))
}

/// Wall-clock now in Unix ms (0 if the clock is before 1970).
pub fn wall_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_headers_are_corrupt_not_panics() {
        assert!(matches!(decode(b"k", b""), Err(Error::Corrupt { .. })));
        assert!(matches!(decode(b"k", &[EXPIRING, 1, 2]), Err(Error::Corrupt { .. })));
        assert!(matches!(decode(b"k", &[7, 1]), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn a_value_expires_at_its_deadline_not_before() {
        let s = encode(b"v", Some(1_000));
        assert_eq!(live_value(b"k", s.clone(), 999).expect("decodes"), Some(b"v".to_vec()));
        assert_eq!(live_value(b"k", s, 1_000).expect("decodes"), None);
        assert_eq!(live_value(b"k", encode(b"v", None), u64::MAX).expect("decodes"), Some(b"v".to_vec()));
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(value in proptest::collection::vec(any::<u8>(), 0..64),
                                          deadline in proptest::option::of(any::<u64>())) {
            let stored = encode(&value, deadline);
            let s = decode(b"k", &stored).expect("decodes");
            prop_assert_eq!(s.value, value.as_slice());
            prop_assert_eq!(s.deadline_ms, deadline);
        }
    }
}
