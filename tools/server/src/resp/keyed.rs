//! The commands on keys: GET, SET (NX, XX, GET, EX, PX, EXAT, PXAT), SETNX, INCR/DECR/
//! INCRBY/DECRBY, MGET, MSET, DEL/UNLINK, EXISTS. They need nothing of the connection's
//! session, so a pipeline runs several at once (see `pipeline.rs`); read-then-write commands
//! (INCR, SET ... GET) retry a lost compare-and-set after a random backoff.

use presage_client::{BatchOp, Client, Expect};

use super::parse::Reply;
use super::{client_error, int_arg, upper, wrong_args, Shared, KNOWN};

/// Runs a command on keys (see `pipeline`): it needs nothing of the session, so several run
/// at once. Also answers what no command matched.
pub(super) async fn keyed(shared: &Shared, name: &str, args: &[Vec<u8>]) -> Reply {
    let argc = args.len();
    let c = &shared.client;
    match name {
        "GET" if argc == 2 => match c.get(&args[1]).await {
            Ok(Some(v)) => Reply::Bulk(v),
            Ok(None) => Reply::Null,
            Err(e) => client_error(&e),
        },
        "SET" if argc >= 3 => match SetOptions::parse(&args[3..]) {
            Ok(opts) => set(c, &args[1], &args[2], opts).await,
            Err(e) => e,
        },
        "SETNX" if argc == 3 => {
            match c.write_if(Expect::Absent, BatchOp::Put { key: args[1].clone(), value: args[2].clone() }).await {
                Ok(Ok(())) => Reply::Int(1),
                Ok(Err(_)) => Reply::Int(0),
                Err(e) => client_error(&e),
            }
        }
        "INCR" | "DECR" if argc == 2 => incr_by(c, &args[1], if name == "INCR" { 1 } else { -1 }).await,
        "INCRBY" | "DECRBY" if argc == 3 => match int_arg(&args[2]) {
            Ok(d) if name == "INCRBY" => incr_by(c, &args[1], d).await,
            Ok(d) => match d.checked_neg() {
                Some(d) => incr_by(c, &args[1], d).await,
                None => Reply::err("decrement would overflow"),
            },
            Err(e) => e,
        },
        "MSET" if argc >= 3 && argc % 2 == 1 => {
            let ops = args[1..].chunks(2).map(|kv| BatchOp::Put { key: kv[0].clone(), value: kv[1].clone() }).collect();
            match c.batch(ops).await {
                Ok(()) => Reply::ok(),
                Err(e) => client_error(&e),
            }
        }
        "MGET" if argc >= 2 => match c.get_many(&args[1..]).await {
            Ok(values) => Reply::Array(values.into_iter().map(|v| v.map_or(Reply::Null, Reply::Bulk)).collect()),
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
        _ if KNOWN.contains(&name) => wrong_args(name),
        _ => {
            let shown: Vec<String> =
                args[1..].iter().take(8).map(|a| format!("'{}'", String::from_utf8_lossy(a))).collect();
            Reply::err(format!(
                "unknown command '{}', with args beginning with: {}",
                String::from_utf8_lossy(&args[0]),
                shown.join(" ")
            ))
        }
    }
}

/// Attempts of a read-then-conditional-write command (INCR, SET ... GET) before it gives up
/// under contention.
const MAX_CAS_ATTEMPTS: usize = 32;

/// Waits a random while before retrying a lost compare-and-set, up to twice as long after
/// each loss (0.5 ms, doubling to 32 ms): writers racing for one key spread out instead of
/// colliding again at once.
async fn cas_backoff(attempt: usize) {
    use rand::Rng;
    let max_us = 500u64 << attempt.min(6);
    let wait_us = rand::rng().random_range(0..=max_us);
    tokio::time::sleep(std::time::Duration::from_micros(wait_us)).await;
}

/// The options of `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT s | PXAT ms]`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct SetOptions {
    /// `Some(Absent)` for NX, `Some(Present)` for XX.
    pub(super) only_if: Option<Expect>,
    /// Reply with the old value.
    pub(super) get: bool,
    /// Expiry.
    pub(super) expiry: Option<Expiry>,
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
                    if o.expiry.is_some_and(|e| !same_kind(e, expiry)) {
                        return Err(syntax());
                    }
                    o.expiry = Some(expiry);
                }
                "KEEPTTL" => return Err(Reply::err("SET KEEPTTL is not supported by Presage")),
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

/// `SET`: a plain or expiring put, conditional with NX/XX; with GET the old value is read
/// and the write made conditional on it (retried if the key changed in between).
async fn set(c: &Client, key: &[u8], value: &[u8], o: SetOptions) -> Reply {
    let write = o.write(key, value);
    if !o.get {
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
    let old_reply = |old: Option<Vec<u8>>| old.map_or(Reply::Null, Reply::Bulk);
    let mut old = match c.get(key).await {
        Ok(v) => v,
        Err(e) => return client_error(&e),
    };
    for attempt in 0..MAX_CAS_ATTEMPTS {
        if o.only_if.as_ref().is_some_and(|e| !e.holds(old.as_deref())) {
            return old_reply(old); // NX/XX not met: nothing written
        }
        let expect = match &old {
            Some(v) => Expect::Equals { value: v.clone() },
            None => Expect::Absent,
        };
        match c.write_if(expect, write.clone()).await {
            Ok(Ok(())) => return old_reply(old),
            Ok(Err(current)) => {
                old = current; // changed since the read: go on from its value then
                cas_backoff(attempt).await;
            }
            Err(e) => return client_error(&e),
        }
    }
    Reply::err(format!("SET GET gave up after {MAX_CAS_ATTEMPTS} attempts: the key keeps changing"))
}

/// `INCRBY key delta`: read, add, write conditional on the value read; retried while other
/// writers get in between. The result is a plain (persistent) value.
async fn incr_by(c: &Client, key: &[u8], delta: i64) -> Reply {
    let mut old = match c.get(key).await {
        Ok(v) => v,
        Err(e) => return client_error(&e),
    };
    for attempt in 0..MAX_CAS_ATTEMPTS {
        let current = match &old {
            Some(v) => match int_arg(v) {
                Ok(n) => n,
                Err(e) => return e,
            },
            None => 0,
        };
        let Some(new) = current.checked_add(delta) else {
            return Reply::err("increment or decrement would overflow");
        };
        let expect = match old.take() {
            Some(value) => Expect::Equals { value },
            None => Expect::Absent,
        };
        let write = BatchOp::Put { key: key.to_vec(), value: new.to_string().into_bytes() };
        match c.write_if(expect, write).await {
            Ok(Ok(())) => return Reply::Int(new),
            Ok(Err(current)) => {
                old = current; // another writer got in: go on from its value
                cas_backoff(attempt).await;
            }
            Err(e) => return client_error(&e),
        }
    }
    Reply::err(format!("INCR gave up after {MAX_CAS_ATTEMPTS} attempts: the key keeps changing"))
}
