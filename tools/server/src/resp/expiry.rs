//! The expiry commands: TTL, PTTL, EXPIRETIME, PEXPIRETIME (reads of the deadline), EXPIRE,
//! PEXPIRE, EXPIREAT, PEXPIREAT (with NX, XX, GT, LT), PERSIST and GETEX, each a decision on
//! the key's value and deadline (run by `rmw::modify`, or inside a transaction).
//!
//! A deadline is a Unix time in ms stored with the value (the replication layer's value
//! header). Relative times are turned into deadlines with this node's clock; a deadline
//! already past deletes the key, as in Redis. Reads decide expiry with the shard leader's
//! clock, writes' conditions with the proposer's (`presage_replication::value`).

use presage_client::BatchOp;

use super::parse::Reply;
use super::state::{is_hash, put, wrong_type, Change, Current};
use super::{int_arg, upper};

/// `TTL` / `PTTL` / `EXPIRETIME` / `PEXPIRETIME key` at `now_ms`: -2 without a value, -1
/// without a deadline; else the seconds (rounded) or ms left, or the deadline in s or ms.
pub(super) fn ttl(name: &str, current: &Current, now_ms: u64) -> Reply {
    let deadline = match current {
        None => return Reply::Int(-2),
        Some((_, None)) => return Reply::Int(-1),
        Some((_, Some(d))) => *d,
    };
    let left_ms = deadline.saturating_sub(now_ms);
    let n = match name {
        "TTL" => (left_ms + 500) / 1_000,
        "PTTL" => left_ms,
        "EXPIRETIME" => deadline / 1_000,
        _ => deadline,
    };
    Reply::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The condition of an EXPIRE-like command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Always,
    /// NX: only without a deadline.
    NoDeadline,
    /// XX: only with one.
    HasDeadline,
    /// GT: only if later than the deadline (none counts as never: no change).
    Later,
    /// LT: only if earlier (none counts as never: a change).
    Earlier,
}

impl When {
    fn parse(args: &[Vec<u8>]) -> Result<When, Reply> {
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for a in args {
            match upper(a).as_str() {
                "NX" => nx = true,
                "XX" => xx = true,
                "GT" => gt = true,
                "LT" => lt = true,
                _ => return Err(Reply::err(format!("Unsupported option {}", String::from_utf8_lossy(a)))),
            }
        }
        if nx && (xx || gt || lt) {
            return Err(Reply::err("NX and XX, GT or LT options at the same time are not compatible"));
        }
        if gt && lt {
            return Err(Reply::err("GT and LT options at the same time are not compatible"));
        }
        Ok(match (nx, xx, gt, lt) {
            (true, ..) => When::NoDeadline,
            (_, _, true, _) => When::Later,
            (_, _, _, true) => When::Earlier,
            (_, true, ..) => When::HasDeadline,
            _ => When::Always,
        })
    }

    /// Does a change from `old` to the deadline `new` pass? (XX with GT or LT: both.)
    fn allows(self, xx: bool, old: Option<u64>, new: u64) -> bool {
        if xx && old.is_none() {
            return false;
        }
        match self {
            When::Always => true,
            When::NoDeadline => old.is_none(),
            When::HasDeadline => old.is_some(),
            When::Later => old.is_some_and(|o| new > o),
            When::Earlier => old.is_none_or(|o| new < o),
        }
    }
}

/// `EXPIRE key seconds`, `PEXPIRE key ms`, `EXPIREAT key unix-s`, `PEXPIREAT key unix-ms`,
/// each with `[NX | XX | GT | LT]`, at `now_ms`: 1 if the deadline was set (or the key
/// deleted, the time being past), 0 if the key has no value or the condition did not hold.
pub(super) fn expire(name: &str, args: &[Vec<u8>], current: &Current, now_ms: u64) -> Change {
    let key = &args[1];
    let n = match int_arg(&args[2]) {
        Ok(n) => n,
        Err(e) => return Change::Answer(e),
    };
    let when = match When::parse(&args[3..]) {
        Ok(w) => w,
        Err(e) => return Change::Answer(e),
    };
    let xx = args[3..].iter().any(|a| a.eq_ignore_ascii_case(b"XX"));
    let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
    let deadline = match name {
        "EXPIRE" => n.checked_mul(1_000).and_then(|ms| ms.checked_add(now)),
        "PEXPIRE" => n.checked_add(now),
        "EXPIREAT" => n.checked_mul(1_000),
        _ => Some(n),
    };
    let Some(deadline) = deadline else {
        let e = format!("invalid expire time in '{}' command", name.to_ascii_lowercase());
        return Change::Answer(Reply::err(e));
    };
    let Some((value, old)) = current else { return Change::Answer(Reply::Int(0)) };
    let new = u64::try_from(deadline).unwrap_or(0);
    if !when.allows(xx, *old, new) {
        return Change::Answer(Reply::Int(0));
    }
    if deadline <= now {
        return Change::Write(BatchOp::Delete { key: key.clone() }, Reply::Int(1));
    }
    Change::Write(put(key, value.clone(), Some(new)), Reply::Int(1))
}

/// `PERSIST key`: 1 if a deadline was removed.
pub(super) fn persist(key: &[u8], current: &Current) -> Change {
    match current {
        Some((value, Some(_))) => Change::Write(put(key, value.clone(), None), Reply::Int(1)),
        _ => Change::Answer(Reply::Int(0)),
    }
}

/// What GETEX does to the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NewDeadline {
    Keep,
    Persist,
    At(u64),
}

/// `GETEX key [EX s | PX ms | EXAT unix-s | PXAT unix-ms | PERSIST]` at `now_ms`: the
/// value, and its deadline changed.
pub(super) fn get_ex(args: &[Vec<u8>], current: &Current, now_ms: u64) -> Change {
    let key = &args[1];
    let change = match getex_option(&args[2..], now_ms) {
        Ok(change) => change,
        Err(e) => return Change::Answer(e),
    };
    let Some((value, old)) = current else { return Change::Answer(Reply::Null) };
    if is_hash(value) {
        return Change::Answer(wrong_type());
    }
    let reply = Reply::Bulk(value.clone());
    match change {
        NewDeadline::Keep => Change::Answer(reply),
        NewDeadline::Persist if old.is_none() => Change::Answer(reply),
        NewDeadline::Persist => Change::Write(put(key, value.clone(), None), reply),
        NewDeadline::At(d) if d <= now_ms => Change::Write(BatchOp::Delete { key: key.clone() }, reply),
        NewDeadline::At(d) => Change::Write(put(key, value.clone(), Some(d)), reply),
    }
}

fn getex_option(args: &[Vec<u8>], now: u64) -> Result<NewDeadline, Reply> {
    let bad_time = || Reply::err("invalid expire time in 'getex' command");
    match args {
        [] => Ok(NewDeadline::Keep),
        [opt] if upper(opt) == "PERSIST" => Ok(NewDeadline::Persist),
        [opt, n] => {
            let opt = upper(opt);
            if !matches!(opt.as_str(), "EX" | "PX" | "EXAT" | "PXAT") {
                return Err(Reply::err("syntax error"));
            }
            let n = int_arg(n)?;
            if n <= 0 {
                return Err(bad_time());
            }
            let n = n as u64;
            let deadline = match opt.as_str() {
                "EX" => n.checked_mul(1_000).and_then(|ms| ms.checked_add(now)),
                "PX" => n.checked_add(now),
                "EXAT" => n.checked_mul(1_000),
                _ => Some(n),
            };
            deadline.filter(|d| i64::try_from(*d).is_ok()).map(NewDeadline::At).ok_or_else(bad_time)
        }
        _ => Err(Reply::err("syntax error")),
    }
}

#[cfg(test)]
mod tests {
    use super::When;

    fn parse(opts: &[&str]) -> Result<When, String> {
        let args: Vec<Vec<u8>> = opts.iter().map(|a| a.as_bytes().to_vec()).collect();
        When::parse(&args).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn expire_conditions_follow_redis() {
        assert_eq!(parse(&[]), Ok(When::Always));
        assert_eq!(parse(&["nx"]), Ok(When::NoDeadline));
        assert_eq!(parse(&["XX", "GT"]), Ok(When::Later));
        assert!(parse(&["NX", "XX"]).expect_err("refused").contains("not compatible"));
        assert!(parse(&["GT", "LT"]).expect_err("refused").contains("not compatible"));
        assert!(parse(&["SOON"]).expect_err("refused").contains("Unsupported option SOON"));
        // A key without a deadline: GT never passes, LT always does (no deadline is "never").
        assert!(!When::Later.allows(false, None, 10));
        assert!(When::Earlier.allows(false, None, 10));
        assert!(!When::Earlier.allows(true, None, 10), "XX LT needs a deadline");
        assert!(When::Later.allows(false, Some(5), 10) && !When::Later.allows(false, Some(10), 10));
        assert!(When::NoDeadline.allows(false, None, 1) && !When::NoDeadline.allows(false, Some(1), 1));
    }
}
