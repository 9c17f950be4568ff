//! Hashes: HSET, HSETNX, HGET, HMGET, HGETALL, HDEL, HEXISTS, HLEN, HSTRLEN, HINCRBY,
//! HINCRBYFLOAT, HKEYS, HVALS, HSCAN.
//!
//! **Layout.** A hash is one value at its key: [`MAGIC`], then its fields in field order,
//! each a length-prefixed field and value. Decision: a hash spread over one key per field
//! would not stay in one shard when a range split falls inside it, and its multi-field
//! writes (HSET of several fields, a MULTI on it) would stop being atomic; one value keeps
//! every hash command one conditional write in the Raft log, keeps the hash's expiry with
//! it (EXPIRE, TTL, PERSIST work unchanged) and lets TYPE, DEL, KEYS and SCAN see it as one
//! key. The cost: a hash is at most the largest value (4 MiB), and each write rewrites it
//! (fine for the per-user and per-session hashes applications keep; large ones belong in
//! keys of their own). Fields come back in field order, not Redis's insertion order.
//!
//! Every command is a read-modify-write (`rmw.rs`); one that changes the hash keeps its
//! deadline, and removing the last field removes the key, as in Redis. A value that does
//! not start with [`MAGIC`] is a string: hash commands answer `WRONGTYPE` on it, and string
//! commands answer `WRONGTYPE` on a hash ([`wrong_type`]).

use std::collections::BTreeMap;

use presage_client::BatchOp;

use super::parse::Reply;
use super::state::{self, put, wrong_type, Change, Current, HASH_MAGIC as MAGIC};
use super::{glob_match, int_arg, upper};

/// A hash's fields.
pub(super) type Fields = BTreeMap<Vec<u8>, Vec<u8>>;

/// The stored form of `fields`.
pub(super) fn encode(fields: &Fields) -> Vec<u8> {
    let bytes: usize = fields.iter().map(|(f, v)| 8 + f.len() + v.len()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + bytes);
    out.extend_from_slice(MAGIC);
    for (f, v) in fields {
        for part in [f, v] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// The fields of a stored hash; an error reply if its bytes are cut short.
pub(super) fn decode(value: &[u8]) -> Result<Fields, Reply> {
    let corrupt = || Reply::err("corrupt hash value");
    let mut rest = value.strip_prefix(MAGIC).ok_or_else(wrong_type)?;
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, Reply> {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err(corrupt());
        }
        let (part, tail) = tail.split_at(len);
        *rest = tail;
        Ok(part.to_vec())
    };
    let mut fields = Fields::new();
    while !rest.is_empty() {
        let field = take(&mut rest)?;
        let value = take(&mut rest)?;
        fields.insert(field, value);
    }
    Ok(fields)
}

/// The fields of the key's hash (empty if it has no value), or `WRONGTYPE`.
fn fields_of(current: &Current) -> Result<Fields, Reply> {
    match current {
        None => Ok(Fields::new()),
        Some((v, _)) => decode(v),
    }
}

/// The write that leaves `fields` as the key's hash, its deadline kept; none when empty.
fn store(key: &[u8], fields: &Fields, deadline: Option<u64>, max_value_bytes: usize) -> Result<BatchOp, Reply> {
    if fields.is_empty() {
        return Ok(BatchOp::Delete { key: key.to_vec() });
    }
    let value = encode(fields);
    if value.len() > max_value_bytes {
        return Err(Reply::err(format!("hash would exceed the largest value ({max_value_bytes} bytes)")));
    }
    Ok(put(key, value, deadline))
}

fn deadline(current: &Current) -> Option<u64> {
    current.as_ref().and_then(|(_, d)| *d)
}

/// Runs the hash command `name` (upper case; `args` with the name first) against the key's
/// value and deadline `current`: what to answer and write. `None` if it is no hash command
/// or has the wrong number of arguments.
pub(super) fn decide(name: &str, args: &[Vec<u8>], current: &Current, max_value_bytes: usize) -> Option<Change> {
    let argc = args.len();
    let key = args.get(1)?;
    if !arity_ok(name, argc) {
        return None;
    }
    let mut fields = match fields_of(current) {
        Ok(f) => f,
        Err(e) => return Some(Change::Answer(e)),
    };
    let answer = |r: Reply| Some(Change::Answer(r));
    let write = |fields: &Fields, reply: Reply| match store(key, fields, deadline(current), max_value_bytes) {
        Ok(op) => Some(Change::Write(op, reply)),
        Err(e) => Some(Change::Answer(e)),
    };
    let bulk_or_nil = |v: Option<&Vec<u8>>| v.cloned().map_or(Reply::Null, Reply::Bulk);
    match name {
        "HSET" if argc >= 4 && argc.is_multiple_of(2) => {
            let mut added = 0;
            for pair in args[2..].chunks(2) {
                added += i64::from(fields.insert(pair[0].clone(), pair[1].clone()).is_none());
            }
            write(&fields, Reply::Int(added))
        }
        "HMSET" if argc >= 4 && argc.is_multiple_of(2) => {
            for pair in args[2..].chunks(2) {
                fields.insert(pair[0].clone(), pair[1].clone());
            }
            write(&fields, Reply::ok())
        }
        "HSETNX" if argc == 4 => {
            if fields.contains_key(&args[2]) {
                return answer(Reply::Int(0));
            }
            fields.insert(args[2].clone(), args[3].clone());
            write(&fields, Reply::Int(1))
        }
        "HGET" if argc == 3 => answer(bulk_or_nil(fields.get(&args[2]))),
        "HMGET" if argc >= 3 => answer(Reply::Array(args[2..].iter().map(|f| bulk_or_nil(fields.get(f))).collect())),
        "HGETALL" if argc == 2 => {
            answer(Reply::Map(fields.into_iter().map(|(f, v)| (Reply::Bulk(f), Reply::Bulk(v))).collect()))
        }
        "HKEYS" if argc == 2 => answer(Reply::Array(fields.into_keys().map(Reply::Bulk).collect())),
        "HVALS" if argc == 2 => answer(Reply::Array(fields.into_values().map(Reply::Bulk).collect())),
        "HLEN" if argc == 2 => answer(Reply::Int(fields.len() as i64)),
        "HEXISTS" if argc == 3 => answer(Reply::Int(i64::from(fields.contains_key(&args[2])))),
        "HSTRLEN" if argc == 3 => answer(Reply::Int(fields.get(&args[2]).map_or(0, |v| v.len() as i64))),
        "HDEL" if argc >= 3 => {
            let removed = args[2..].iter().filter(|f| fields.remove(*f).is_some()).count() as i64;
            if removed == 0 {
                return answer(Reply::Int(0));
            }
            write(&fields, Reply::Int(removed))
        }
        "HINCRBY" if argc == 4 => {
            let delta = match int_arg(&args[3]) {
                Ok(d) => d,
                Err(e) => return answer(e),
            };
            let old = match fields.get(&args[2]).map(|v| int_arg(v)) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => return answer(Reply::err("hash value is not an integer")),
            };
            let Some(new) = old.checked_add(delta) else {
                return answer(Reply::err("increment or decrement would overflow"));
            };
            fields.insert(args[2].clone(), new.to_string().into_bytes());
            write(&fields, Reply::Int(new))
        }
        "HINCRBYFLOAT" if argc == 4 => {
            let Some(delta) = state::float_arg(&args[3]) else {
                return answer(Reply::err("value is not a valid float"));
            };
            let old = match fields.get(&args[2]).map(|v| state::float_arg(v)) {
                None => 0.0,
                Some(Some(n)) => n,
                Some(None) => return answer(Reply::err("hash value is not a float")),
            };
            let new = old + delta;
            if !new.is_finite() {
                return answer(Reply::err("increment would produce NaN or Infinity"));
            }
            let text = state::format_float(new).into_bytes();
            fields.insert(args[2].clone(), text.clone());
            write(&fields, Reply::Bulk(text))
        }
        "HSCAN" if argc >= 3 => answer(hscan(&fields, &args[2..])),
        _ => None,
    }
}

/// Is `argc` (the name included) a valid count of arguments for the hash command `name`?
fn arity_ok(name: &str, argc: usize) -> bool {
    match name {
        "HSET" | "HMSET" => argc >= 4 && argc.is_multiple_of(2),
        "HSETNX" | "HINCRBY" | "HINCRBYFLOAT" => argc == 4,
        "HGET" | "HEXISTS" | "HSTRLEN" => argc == 3,
        "HMGET" | "HDEL" | "HSCAN" => argc >= 3,
        "HGETALL" | "HKEYS" | "HVALS" | "HLEN" => argc == 2,
        _ => false,
    }
}

/// `HSCAN key cursor [MATCH pattern] [COUNT n]`: a hash is one value, so the first call
/// answers every matching field and cursor 0 (as Redis does for its small hashes).
fn hscan(fields: &Fields, args: &[Vec<u8>]) -> Reply {
    if int_arg(&args[0]).is_err() {
        return Reply::err("invalid cursor");
    }
    let mut pattern: Option<&[u8]> = None;
    let mut rest = &args[1..];
    while let [opt, value, tail @ ..] = rest {
        match upper(opt).as_str() {
            "MATCH" => pattern = Some(value),
            "COUNT" => match int_arg(value) {
                Ok(n) if n > 0 => {}
                _ => return Reply::err("value is not an integer or out of range"),
            },
            _ => return Reply::err("syntax error"),
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return Reply::err("syntax error");
    }
    let items = fields
        .iter()
        .filter(|(f, _)| pattern.is_none_or(|p| glob_match(p, f)))
        .flat_map(|(f, v)| [Reply::Bulk(f.clone()), Reply::Bulk(v.clone())])
        .collect();
    Reply::Array(vec![Reply::text("0"), Reply::Array(items)])
}

/// Hash commands (metric labels, COMMAND COUNT, planning).
pub(super) const COMMANDS: &[&str] = &[
    "HSET",
    "HMSET",
    "HSETNX",
    "HGET",
    "HMGET",
    "HGETALL",
    "HKEYS",
    "HVALS",
    "HLEN",
    "HEXISTS",
    "HSTRLEN",
    "HDEL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HSCAN",
];

/// The hash commands that write.
pub(super) const WRITES: &[&str] = &["HSET", "HMSET", "HSETNX", "HDEL", "HINCRBY", "HINCRBYFLOAT"];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_hash_reads_back_as_written(fields in proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..40), 0..20)) {
            let bytes = encode(&fields);
            prop_assert!(state::is_hash(&bytes));
            prop_assert_eq!(decode(&bytes).ok(), Some(fields));
        }

        #[test]
        fn cut_hash_bytes_are_an_error_or_whole_entries_never_a_panic(cut in 0usize..200) {
            let fields: Fields = [(b"f".to_vec(), b"value".to_vec()), (b"g".to_vec(), vec![7; 50])].into();
            let bytes = encode(&fields);
            let cut = MAGIC.len() + cut % (bytes.len() - MAGIC.len());
            // Cut at an entry's end: the entries before it; anywhere else: an error.
            match decode(&bytes[..cut]) {
                Ok(read) => prop_assert!(read.iter().all(|(k, v)| fields.get(k) == Some(v)) && read.len() < 2),
                Err(e) => prop_assert_eq!(e, Reply::err("corrupt hash value")),
            }
            prop_assert!(cut == MAGIC.len() + 14 || cut == MAGIC.len() || decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn hash_commands_change_fields_and_keep_the_deadline() {
        let args = |s: &str| s.split(' ').map(|a| a.as_bytes().to_vec()).collect::<Vec<_>>();
        let max = 1 << 20;
        let Some(Change::Write(BatchOp::PutUntil { value, deadline_ms, .. }, Reply::Int(2))) =
            decide("HSET", &args("HSET h a 1 b 2"), &Some((encode(&Fields::new()), Some(99))), max)
        else {
            panic!("HSET writes both fields, keeping the deadline");
        };
        assert_eq!(deadline_ms, 99);
        let current = Some((value, Some(99)));
        assert!(matches!(
            decide("HDEL", &args("HDEL h a b"), &current, max),
            Some(Change::Write(BatchOp::Delete { .. }, Reply::Int(2)))
        ));
        assert!(decide("HGET", &args("HGET h"), &current, max).is_none(), "wrong arity");
        let string = Some((b"plain".to_vec(), None));
        assert!(
            matches!(decide("HGET", &args("HGET h a"), &string, max), Some(Change::Answer(Reply::Error(e))) if e.starts_with("WRONGTYPE"))
        );
        let small = decide("HSET", &args("HSET h a 12345678901234567890"), &None, 30);
        assert!(matches!(small, Some(Change::Answer(Reply::Error(e))) if e.contains("largest value")));
    }
}
