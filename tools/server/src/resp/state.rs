//! A key's state as the RESP commands see it, and the change a command makes to it: the
//! lowest layer of the RESP commands (`keyed`, `rmw`, `expiry`, `hash` and `txn` build on it).
//! A value is a string unless it starts with [`HASH_MAGIC`] (`hash.rs`).

use presage_client::BatchOp;

use super::parse::Reply;

/// A string's value and deadline (Unix ms; `None`: it does not expire), if it has one.
pub(super) type Current = Option<(Vec<u8>, Option<u64>)>;

/// What a command does with the state it read.
pub(super) enum Change {
    /// Nothing to write: answer this.
    Answer(Reply),
    /// Write this (conditional on the state read), then answer that.
    Write(BatchOp, Reply),
}

/// `key` set to `value`, expiring at `expires_at_ms` if given.
pub(super) fn put(key: &[u8], value: Vec<u8>, expires_at_ms: Option<u64>) -> BatchOp {
    match expires_at_ms {
        Some(deadline_ms) => BatchOp::PutUntil { key: key.to_vec(), value, deadline_ms },
        None => BatchOp::Put { key: key.to_vec(), value },
    }
}

/// The first bytes of a hash's value (a string that starts with them reads as a hash).
pub(super) const HASH_MAGIC: &[u8] = b"\x00\xffpresage-hash\x00";

/// Redis's answer to a command on a key of the other type.
pub(super) fn wrong_type() -> Reply {
    Reply::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into())
}

/// Is this stored value a hash?
pub(super) fn is_hash(value: &[u8]) -> bool {
    value.starts_with(HASH_MAGIC)
}

/// A float as Redis reads one: decimal or exponent notation, no surrounding spaces, finite.
pub(super) fn float_arg(arg: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(arg).ok()?;
    let plain = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    plain.then(|| s.parse::<f64>().ok()).flatten().filter(|f| f.is_finite())
}

/// A float as Redis writes one: fixed notation, no trailing zeros (`5200`, `10.6`), the
/// shortest digits that read back as the same double. Redis computes in `long double`, so a
/// sum whose double is inexact (`0.1 + 0.2`) prints differently (README).
pub(super) fn format_float(f: f64) -> String {
    let s = format!("{f}");
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}
