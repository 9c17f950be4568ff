//! The commands on keys: GET, SET (NX, XX, GET, EX, PX, EXAT, PXAT, KEEPTTL), SETNX, SETEX,
//! PSETEX, GETEX, GETDEL, APPEND, STRLEN, INCR/DECR/INCRBY/DECRBY, INCRBYFLOAT, MGET, MSET,
//! DEL/UNLINK, EXISTS, TYPE, and the expiry commands (`expiry.rs`). They need nothing of the
//! connection's session, so a pipeline runs several at once (see `pipeline.rs`);
//! read-modify-writes go through `rmw.rs`.

use presage_client::client::MAX_VALUE_BYTES;
use presage_client::{BatchOp, Client, Expect};

use presage_replication::value::wall_now_ms;

use super::hash;
use super::parse::Reply;
use super::pipeline::{self, Plan};
use super::rmw::{self, modify};
use super::state::{self, is_hash, wrong_type, Change, Current};
use super::{client_error, expiry, int_arg, is_known, upper, wrong_args, Shared};

/// A GET's answer: the string, nil, or WRONGTYPE for a hash.
pub(super) fn string_reply(value: Option<Vec<u8>>) -> Reply {
    match value {
        Some(v) if is_hash(&v) => wrong_type(),
        Some(v) => Reply::Bulk(v),
        None => Reply::Null,
    }
}

/// Runs a command on keys (see `pipeline`): it needs nothing of the session, so several run
/// at once. Also answers what no command matched.
pub(super) async fn keyed(shared: &Shared, name: &str, args: &[Vec<u8>]) -> Reply {
    let argc = args.len();
    let c = &shared.client;
    match name {
        // The fast paths: one read, or one (conditional) write.
        "GET" if argc == 2 => match c.get(&args[1]).await {
            Ok(v) => string_reply(v),
            Err(e) => client_error(&e),
        },
        "SET" if argc >= 3 => match SetOptions::parse(&args[3..]) {
            Ok(opts) => set(c, &args[1], &args[2], opts).await,
            Err(e) => e,
        },
        "SETEX" | "PSETEX" if argc == 4 => match SetOptions::setex(name, &args[2]) {
            Ok(opts) => set(c, &args[1], &args[3], opts).await,
            Err(e) => e,
        },
        "SETNX" if argc == 3 => {
            match c.write_if(Expect::Absent, BatchOp::Put { key: args[1].clone(), value: args[2].clone() }).await {
                Ok(Ok(())) => Reply::Int(1),
                Ok(Err(_)) => Reply::Int(0),
                Err(e) => client_error(&e),
            }
        }
        "STRLEN" if argc == 2 => match c.get(&args[1]).await {
            Ok(Some(v)) if is_hash(&v) => wrong_type(),
            Ok(v) => Reply::Int(v.map_or(0, |v| v.len() as i64)),
            Err(e) => client_error(&e),
        },
        "TYPE" if argc == 2 => match c.get(&args[1]).await {
            Ok(v) => Reply::Simple(type_name(v.as_deref()).into()),
            Err(e) => client_error(&e),
        },
        "MSET" if argc >= 3 && argc % 2 == 1 => {
            let ops = args[1..].chunks(2).map(|kv| BatchOp::Put { key: kv[0].clone(), value: kv[1].clone() }).collect();
            match c.batch(ops).await {
                Ok(()) => Reply::ok(),
                Err(e) => client_error(&e),
            }
        }
        "MGET" if argc >= 2 => match c.get_many(&args[1..]).await {
            // As Redis: a key of another type reads as nil.
            Ok(values) => Reply::Array(
                values.into_iter().map(|v| v.filter(|v| !is_hash(v)).map_or(Reply::Null, Reply::Bulk)).collect(),
            ),
            Err(e) => client_error(&e),
        },
        "DEL" | "UNLINK" if argc >= 2 => {
            // The reply counts the keys that existed (read first, concurrently); the deletes
            // go out as one batch, atomic per shard. Not atomic with the reads.
            let existed = match c.get_many(&args[1..]).await {
                Ok(values) => values,
                Err(e) => return client_error(&e),
            };
            let ops: Vec<BatchOp> = args[1..]
                .iter()
                .zip(&existed)
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| BatchOp::Delete { key: k.clone() })
                .collect();
            let removed = ops.len() as i64;
            if ops.is_empty() {
                return Reply::Int(0);
            }
            match c.batch(ops).await {
                Ok(()) => Reply::Int(removed),
                Err(e) => client_error(&e),
            }
        }
        "EXISTS" if argc >= 2 => match c.get_many(&args[1..]).await {
            Ok(values) => Reply::Int(values.iter().filter(|v| v.is_some()).count() as i64),
            Err(e) => client_error(&e),
        },
        // Every other command on one key reads its state first (`rmw::modify`).
        _ if argc >= 2 && !MULTI_KEY.contains(&name) && pipeline::plan(name, args) != Plan::Serial => {
            modify(c, name, &args[1], |current| {
                decide(name, args, current, wall_now_ms()).unwrap_or_else(|| Change::Answer(wrong_args(name)))
            })
            .await
        }
        _ if is_known(name) => wrong_args(name),
        _ => unknown_command(args),
    }
}

/// The options of `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT s | PXAT ms | KEEPTTL]`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct SetOptions {
    /// `Some(Absent)` for NX, `Some(Present)` for XX.
    pub(super) only_if: Option<Expect>,
    /// Reply with the old value.
    pub(super) get: bool,
    /// Expiry.
    pub(super) expiry: Option<Expiry>,
    /// KEEPTTL: the key's deadline stays.
    pub(super) keep_ttl: bool,
}

/// When a SET's value expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// This long after the write (EX, PX).
    AfterMs(u64),
    /// At this Unix time (EXAT, PXAT).
    AtMs(u64),
}

impl SetOptions {
    /// The options of `SETEX key seconds value` (`PSETEX`: ms), from its time argument.
    fn setex(name: &str, time: &[u8]) -> Result<SetOptions, Reply> {
        let n = int_arg(time)?;
        let ms = if name == "SETEX" { n.checked_mul(1_000) } else { Some(n) };
        match ms {
            Some(ms) if ms > 0 => Ok(SetOptions { expiry: Some(Expiry::AfterMs(ms as u64)), ..SetOptions::default() }),
            _ => Err(bad_expire(name)),
        }
    }

    pub(super) fn parse(args: &[Vec<u8>]) -> Result<SetOptions, Reply> {
        let syntax = || Reply::err("syntax error");
        let bad_expire = || Reply::err("invalid expire time in 'set' command");
        let mut o = SetOptions::default();
        let mut i = 0;
        while i < args.len() {
            let opt = upper(&args[i]);
            // As Redis: an option may repeat, but NX/XX and the expiry kinds exclude each other.
            match opt.as_str() {
                "NX" | "XX" => {
                    let want = if opt == "NX" { Expect::Absent } else { Expect::Present };
                    if o.only_if.as_ref().is_some_and(|e| *e != want) {
                        return Err(syntax());
                    }
                    o.only_if = Some(want);
                }
                "GET" => o.get = true,
                "EX" | "PX" | "EXAT" | "PXAT" => {
                    let n = args.get(i + 1).ok_or_else(syntax).and_then(|a| int_arg(a))?;
                    i += 1;
                    if n <= 0 {
                        return Err(bad_expire());
                    }
                    let n = n as u64;
                    let expiry = match opt.as_str() {
                        "EX" => n.checked_mul(1_000).map(Expiry::AfterMs),
                        "PX" => Some(Expiry::AfterMs(n)),
                        "EXAT" => n.checked_mul(1_000).map(Expiry::AtMs),
                        _ => Some(Expiry::AtMs(n)),
                    }
                    .ok_or_else(bad_expire)?;
                    let same_kind = |a: Expiry, b: Expiry| {
                        matches!((a, b), (Expiry::AfterMs(_), Expiry::AfterMs(_)) | (Expiry::AtMs(_), Expiry::AtMs(_)))
                    };
                    if o.keep_ttl || o.expiry.is_some_and(|e| !same_kind(e, expiry)) {
                        return Err(syntax());
                    }
                    o.expiry = Some(expiry);
                }
                "KEEPTTL" if o.expiry.is_none() => o.keep_ttl = true,
                _ => return Err(syntax()),
            }
            i += 1;
        }
        Ok(o)
    }

    fn write(&self, key: &[u8], value: &[u8]) -> BatchOp {
        let (key, value) = (key.to_vec(), value.to_vec());
        match self.expiry {
            Some(Expiry::AfterMs(ttl_ms)) => BatchOp::PutExpiring { key, value, ttl_ms },
            Some(Expiry::AtMs(deadline_ms)) => BatchOp::PutUntil { key, value, deadline_ms },
            None => BatchOp::Put { key, value },
        }
    }
}

/// The keyed commands on several keys (answered by `keyed` itself).
pub(super) const MULTI_KEY: &[&str] = &["MGET", "MSET", "DEL", "UNLINK", "EXISTS"];

/// The commands on one key as decisions on its state (value and deadline) at `now_ms`: what
/// to answer and what to write. `keyed` runs them through `rmw::modify`, a transaction on
/// its snapshot (`txn.rs`). `None`: not a command on one key, or the wrong arity.
pub(super) fn decide(name: &str, args: &[Vec<u8>], current: &Current, now_ms: u64) -> Option<Change> {
    let argc = args.len();
    let key = args.get(1)?;
    let change = match name {
        "GET" if argc == 2 => Change::Answer(string_reply(current.as_ref().map(|(v, _)| v.clone()))),
        "STRLEN" if argc == 2 => match current {
            Some((v, _)) if is_hash(v) => Change::Answer(wrong_type()),
            _ => Change::Answer(Reply::Int(current.as_ref().map_or(0, |(v, _)| v.len() as i64))),
        },
        "TYPE" if argc == 2 => {
            Change::Answer(Reply::Simple(type_name(current.as_ref().map(|(v, _)| v.as_slice())).into()))
        }
        "SET" if argc >= 3 => match SetOptions::parse(&args[3..]) {
            Ok(o) => set_change(key, &args[2], &o, current),
            Err(e) => Change::Answer(e),
        },
        "SETEX" | "PSETEX" if argc == 4 => match SetOptions::setex(name, &args[2]) {
            Ok(o) => set_change(key, &args[3], &o, current),
            Err(e) => Change::Answer(e),
        },
        "SETNX" if argc == 3 => match current {
            Some(_) => Change::Answer(Reply::Int(0)),
            None => Change::Write(state::put(key, args[2].clone(), None), Reply::Int(1)),
        },
        "GETDEL" if argc == 2 => rmw::get_del(key, current),
        "GETEX" if argc >= 2 => expiry::get_ex(args, current, now_ms),
        "APPEND" if argc == 3 => rmw::append(key, &args[2], current, MAX_VALUE_BYTES),
        "INCR" | "DECR" if argc == 2 => rmw::incr_by(key, if name == "INCR" { 1 } else { -1 }, current),
        "INCRBY" | "DECRBY" if argc == 3 => match int_arg(&args[2]) {
            Ok(d) if name == "INCRBY" => rmw::incr_by(key, d, current),
            Ok(d) => match d.checked_neg() {
                Some(d) => rmw::incr_by(key, d, current),
                None => Change::Answer(Reply::err("decrement would overflow")),
            },
            Err(e) => Change::Answer(e),
        },
        "INCRBYFLOAT" if argc == 3 => rmw::incr_by_float(key, &args[2], current),
        "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" if argc == 2 => {
            Change::Answer(expiry::ttl(name, current, now_ms))
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" if argc >= 3 => expiry::expire(name, args, current, now_ms),
        "PERSIST" if argc == 2 => expiry::persist(key, current),
        _ => return hash::decide(name, args, current, MAX_VALUE_BYTES),
    };
    Some(change)
}

/// `SET`: a plain or expiring put, conditional with NX/XX; with GET or KEEPTTL a
/// read-modify-write (`rmw.rs`) that answers the old value or keeps the deadline.
async fn set(c: &Client, key: &[u8], value: &[u8], o: SetOptions) -> Reply {
    if !o.get && !o.keep_ttl {
        let write = o.write(key, value);
        return match o.only_if {
            None => match c.batch(vec![write]).await {
                Ok(()) => Reply::ok(),
                Err(e) => client_error(&e),
            },
            Some(expect) => match c.write_if(expect, write).await {
                Ok(Ok(())) => Reply::ok(),
                Ok(Err(_)) => Reply::Null,
                Err(e) => client_error(&e),
            },
        };
    }
    modify(c, "SET", key, |current| set_change(key, value, &o, current)).await
}

/// SET with options `o` on the key's state `current`.
fn set_change(key: &[u8], value: &[u8], o: &SetOptions, current: &Current) -> Change {
    if o.get && current.as_ref().is_some_and(|(v, _)| is_hash(v)) {
        return Change::Answer(wrong_type());
    }
    let old = current.as_ref().map(|(v, _)| v.clone());
    let answer = if o.get { old.map_or(Reply::Null, Reply::Bulk) } else { Reply::ok() };
    let met = o.only_if.as_ref().is_none_or(|e| e.holds(current.as_ref().map(|(v, d)| (v.as_slice(), *d))));
    if !met {
        // NX/XX not met: nothing written (SET ... GET answers the old value anyway).
        return Change::Answer(if o.get { answer } else { Reply::Null });
    }
    let write = match (o.keep_ttl, current) {
        (true, Some((_, deadline))) => state::put(key, value.to_vec(), *deadline),
        _ => o.write(key, value),
    };
    Change::Write(write, answer)
}

/// Redis's answer to an unknown command (`args`, the name first).
pub(super) fn unknown_command(args: &[Vec<u8>]) -> Reply {
    // As Redis words it, each argument followed by a space.
    let shown: String = args[1..].iter().take(8).map(|a| format!("'{}' ", String::from_utf8_lossy(a))).collect();
    Reply::err(format!("unknown command '{}', with args beginning with: {shown}", String::from_utf8_lossy(&args[0])))
}

/// The command name of `args`, upper case.
pub(super) fn upper_name(args: &[Vec<u8>]) -> String {
    args.first().map(|a| upper(a)).unwrap_or_default()
}

/// TYPE's answer for a stored value.
pub(super) fn type_name(value: Option<&[u8]>) -> &'static str {
    match value {
        None => "none",
        Some(v) if is_hash(v) => "hash",
        Some(_) => "string",
    }
}

fn bad_expire(name: &str) -> Reply {
    Reply::err(format!("invalid expire time in '{}' command", name.to_ascii_lowercase()))
}
