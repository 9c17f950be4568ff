//! Read-modify-writes on one key: INCR/DECR/INCRBY/DECRBY, INCRBYFLOAT, APPEND, GETDEL,
//! SET ... GET and SET ... KEEPTTL, the expiry commands of `expiry.rs` and the hash commands
//! of `hash.rs`.
//!
//! Walk-through: [`modify`] reads the key's value *and* its deadline
//! (`Client::get_with_expiry`), asks the command what to write, and writes conditional on
//! exactly that pair (`Expect::Exactly`, checked at apply in the Raft log). When another
//! writer got in between, the condition fails, and the command reads again and goes on from
//! the new state after a random backoff (0.5 ms doubling to 32 ms), at most
//! `MAX_CAS_ATTEMPTS` times. So each command is atomic, and one that keeps the expiry (INCR,
//! APPEND, SET KEEPTTL) writes back the deadline it read: a concurrent EXPIRE or PERSIST is
//! never undone by it.

use presage_client::{BatchOp, Client, Expect};

use super::parse::Reply;
use super::state::{float_arg, format_float, is_hash, put, wrong_type, Change, Current};
use super::{client_error, int_arg};

/// Attempts of a read-modify-write before it gives up under contention.
pub(super) const MAX_CAS_ATTEMPTS: usize = 32;

/// Runs the read-modify-write `decide` on `key` (see the module doc); `name` names the
/// command when it gives up.
pub(super) async fn modify(c: &Client, name: &str, key: &[u8], mut decide: impl FnMut(&Current) -> Change) -> Reply {
    let mut current = match c.get_with_expiry(key).await {
        Ok(v) => v,
        Err(e) => return client_error(&e),
    };
    for attempt in 0..MAX_CAS_ATTEMPTS {
        let (write, reply) = match decide(&current) {
            Change::Answer(reply) => return reply,
            Change::Write(write, reply) => (write, reply),
        };
        let expect = match &current {
            Some((value, expires_at_ms)) => Expect::Exactly { value: value.clone(), expires_at_ms: *expires_at_ms },
            None => Expect::Absent,
        };
        match c.write_if(expect, write).await {
            Ok(Ok(())) => return reply,
            Ok(Err(_)) => {
                // Another writer got in: go on from the state it left.
                cas_backoff(attempt).await;
                current = match c.get_with_expiry(key).await {
                    Ok(v) => v,
                    Err(e) => return client_error(&e),
                };
            }
            Err(e) => return client_error(&e),
        }
    }
    Reply::err(format!("{name} gave up after {MAX_CAS_ATTEMPTS} attempts: the key keeps changing"))
}

/// Waits a random while before retrying a lost compare-and-set, up to twice as long after
/// each loss (0.5 ms, doubling to 32 ms): writers racing for one key spread out instead of
/// colliding again at once.
pub(super) async fn cas_backoff(attempt: usize) {
    use rand::Rng;
    let max_us = 500u64 << attempt.min(6);
    let wait_us = rand::rng().random_range(0..=max_us);
    tokio::time::sleep(std::time::Duration::from_micros(wait_us)).await;
}

/// `INCRBY key delta` (and INCR, DECR, DECRBY): the expiry stays.
pub(super) fn incr_by(key: &[u8], delta: i64, current: &Current) -> Change {
    let (old, deadline) = match current {
        Some((v, _)) if is_hash(v) => return Change::Answer(wrong_type()),
        Some((v, d)) => match int_arg(v) {
            Ok(n) => (n, *d),
            Err(e) => return Change::Answer(e),
        },
        None => (0, None),
    };
    match old.checked_add(delta) {
        Some(new) => Change::Write(put(key, new.to_string().into_bytes(), deadline), Reply::Int(new)),
        None => Change::Answer(Reply::err("increment or decrement would overflow")),
    }
}

/// `INCRBYFLOAT key delta`: the expiry stays.
pub(super) fn incr_by_float(key: &[u8], delta: &[u8], current: &Current) -> Change {
    let Some(delta) = float_arg(delta) else {
        return Change::Answer(Reply::err("value is not a valid float"));
    };
    let (old, deadline) = match current {
        Some((v, _)) if is_hash(v) => return Change::Answer(wrong_type()),
        Some((v, d)) => match float_arg(v) {
            Some(n) => (n, *d),
            None => return Change::Answer(Reply::err("value is not a valid float")),
        },
        None => (0.0, None),
    };
    let new = old + delta;
    if !new.is_finite() {
        return Change::Answer(Reply::err("increment would produce NaN or Infinity"));
    }
    let text = format_float(new);
    Change::Write(put(key, text.clone().into_bytes(), deadline), Reply::Bulk(text.into_bytes()))
}

/// `APPEND key suffix`: the new length; the expiry stays.
pub(super) fn append(key: &[u8], suffix: &[u8], current: &Current, max_value_bytes: usize) -> Change {
    let (mut value, deadline) = current.clone().unwrap_or_default();
    if is_hash(&value) {
        return Change::Answer(wrong_type());
    }
    if value.len() + suffix.len() > max_value_bytes {
        return Change::Answer(Reply::err(format!("string exceeds maximum allowed size ({max_value_bytes} bytes)")));
    }
    value.extend_from_slice(suffix);
    let len = value.len() as i64;
    Change::Write(put(key, value, deadline), Reply::Int(len))
}

/// `GETDEL key`: the value, and the key gone.
pub(super) fn get_del(key: &[u8], current: &Current) -> Change {
    match current {
        None => Change::Answer(Reply::Null),
        Some((v, _)) if is_hash(v) => Change::Answer(wrong_type()),
        Some((v, _)) => Change::Write(BatchOp::Delete { key: key.to_vec() }, Reply::Bulk(v.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::{float_arg, format_float};

    #[test]
    fn floats_read_and_print_as_redis_does_where_doubles_are_exact_enough() {
        for (s, want) in [("10.50", Some(10.5)), ("5.0e3", Some(5000.0)), ("-3", Some(-3.0)), ("+.5", Some(0.5))] {
            assert_eq!(float_arg(s.as_bytes()), want, "{s}");
        }
        for s in ["", " 1", "1 ", "abc", "inf", "nan", "1e400", "0x10"] {
            assert_eq!(float_arg(s.as_bytes()), None, "{s:?}");
        }
        for (f, want) in
            [(10.5 + 0.1, "10.6"), (5200.0, "5200"), (-0.0, "0"), (1e20, "100000000000000000000"), (0.5, "0.5")]
        {
            assert_eq!(format_float(f), want);
        }
    }
}
