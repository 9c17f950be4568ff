//! Transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH — atomic within one shard.
//!
//! Walk-through. `MULTI` starts queueing: each later command is checked (known, allowed in a
//! transaction, right arity, permitted to the user) and answered `QUEUED`, or answered its
//! error and the transaction marked failed (`EXEC` then answers `EXECABORT`, as Redis does).
//! `WATCH key ...` (before MULTI) reads each key's value and deadline. `EXEC`:
//!
//! 1. gathers the keys of the queued commands and the watched ones; all must be in one
//!    shard (`CROSSSLOT` otherwise, as Redis Cluster refuses keys of several slots), at most
//!    [`MAX_TXN_KEYS`];
//! 2. reads every key's value and deadline; a watched key that is no longer as it was at
//!    WATCH aborts the transaction (a null reply, nothing written);
//! 3. runs the queued commands in order on that snapshot in memory (`keyed::decide`, the
//!    same decisions a lone command makes), collecting replies and the keys' final states;
//! 4. writes the changed keys in one atomic write to the shard, conditional on every key
//!    still being exactly as read (`Client::write_checked`): if another writer got in
//!    between, it goes back to 2 (so a watched key changed meanwhile aborts it, and an
//!    unwatched one is simply read again), at most `MAX_CAS_ATTEMPTS` times.
//!
//! So a transaction that writes is atomic and isolated: it applied on exactly the state its
//! replies describe. One that only reads reads each key linearizably, not as one snapshot
//! (a batch of checks alone writes nothing and is refused). Differences from Redis: WATCH
//! compares values, so a key changed and changed back does not abort; commands that span the
//! keyspace or the session (SCAN, KEYS, INFO, CLIENT, ...) are refused inside MULTI.

use std::collections::BTreeMap;

use presage_client::{BatchOp, ClientError, Expect};
use presage_replication::value::wall_now_ms;

use super::keyed::{self, MULTI_KEY};
use super::parse::Reply;
use super::pipeline::{self, Plan};
use super::rmw::MAX_CAS_ATTEMPTS;
use super::state::{self, Change, Current};
use super::{client_error, is_known, wrong_args, Session, Shared};

/// Most keys a transaction reads and writes (each is checked when it commits).
pub const MAX_TXN_KEYS: usize = crate::server::MAX_CHECKS_PER_BATCH;

/// Most commands a transaction queues.
pub const MAX_TXN_COMMANDS: usize = 1024;

/// A connection's transaction state.
#[derive(Debug, Default)]
pub(super) struct Txn {
    /// The commands queued since MULTI (`None`: not in MULTI).
    queued: Option<Vec<Vec<Vec<u8>>>>,
    /// A queued command was refused: EXEC aborts.
    failed: bool,
    /// Watched keys and their state when watched.
    watched: BTreeMap<Vec<u8>, Current>,
}

impl Txn {
    /// Is the connection between MULTI and EXEC?
    pub(super) fn active(&self) -> bool {
        self.queued.is_some()
    }

    /// Commands queued, if in MULTI.
    pub(super) fn queued_len(&self) -> Option<usize> {
        self.queued.as_ref().map(Vec::len)
    }

    /// A command refused while queueing fails the transaction.
    pub(super) fn fail(&mut self) {
        self.failed = self.active();
    }
}

/// The transaction commands, and what a queueing connection does with every other one.
/// `None`: not for this module (a command run as usual).
pub(super) async fn handle(shared: &Shared, s: &mut Session, name: &str, args: &[Vec<u8>]) -> Option<Reply> {
    let reply = match name {
        "MULTI" if s.txn.active() => Reply::err("MULTI calls can not be nested"),
        "MULTI" => {
            s.txn.queued = Some(Vec::new());
            s.txn.failed = false;
            Reply::ok()
        }
        "EXEC" => exec(shared, s).await,
        "DISCARD" if s.txn.active() => {
            s.txn = Txn::default();
            Reply::ok()
        }
        "DISCARD" => Reply::err("DISCARD without MULTI"),
        "WATCH" if s.txn.active() => Reply::err("WATCH inside MULTI is not allowed"),
        "WATCH" if args.len() < 2 => wrong_args(name),
        "WATCH" => watch(shared, s, &args[1..]).await,
        "UNWATCH" => {
            s.txn.watched.clear();
            Reply::ok()
        }
        "QUIT" | "RESET" => return None,
        _ if s.txn.active() => queue(s, name, args),
        _ => return None,
    };
    Some(reply)
}

/// Queues `args` (the command `name`) or refuses it, failing the transaction.
fn queue(s: &mut Session, name: &str, args: &[Vec<u8>]) -> Reply {
    let refusal = match check(name, args) {
        Ok(()) if s.txn.queued.as_ref().is_some_and(|q| q.len() >= MAX_TXN_COMMANDS) => {
            Some(Reply::err(format!("a transaction queues at most {MAX_TXN_COMMANDS} commands")))
        }
        Ok(()) => None,
        Err(e) => Some(e),
    };
    match (refusal, s.txn.queued.as_mut()) {
        (None, Some(queued)) => {
            queued.push(args.to_vec());
            Reply::Simple("QUEUED".into())
        }
        (refusal, _) => {
            s.txn.failed = true;
            refusal.unwrap_or_else(|| Reply::err("not in MULTI"))
        }
    }
}

/// May `args` (the command `name`) be queued?
fn check(name: &str, args: &[Vec<u8>]) -> Result<(), Reply> {
    if !is_known(name) {
        return Err(keyed::unknown_command(args));
    }
    let argc = args.len();
    let arity = match name {
        "PING" => argc <= 2,
        "ECHO" => argc == 2,
        "MGET" | "DEL" | "UNLINK" | "EXISTS" => argc >= 2,
        "MSET" => argc >= 3 && argc % 2 == 1,
        _ if pipeline::plan(name, args) != Plan::Serial => keyed::decide(name, args, &None, 0).is_some(),
        _ => return Err(Reply::err(format!("'{}' is not allowed inside a transaction", name.to_ascii_lowercase()))),
    };
    if arity {
        Ok(())
    } else {
        Err(wrong_args(name))
    }
}

/// `WATCH key ...`: remembers each key's state now.
async fn watch(shared: &Shared, s: &mut Session, keys: &[Vec<u8>]) -> Reply {
    if s.txn.watched.len() + keys.len() > MAX_TXN_KEYS {
        return Reply::err(format!("a transaction watches at most {MAX_TXN_KEYS} keys"));
    }
    for key in keys {
        match shared.client.get_with_expiry(key).await {
            Ok(state) => {
                s.txn.watched.entry(key.clone()).or_insert(state);
            }
            Err(e) => return client_error(&e),
        }
    }
    Reply::ok()
}

/// `EXEC` (see the module doc).
async fn exec(shared: &Shared, s: &mut Session) -> Reply {
    let txn = std::mem::take(&mut s.txn);
    let Some(queued) = txn.queued else { return Reply::err("EXEC without MULTI") };
    if txn.failed {
        return Reply::Error("EXECABORT Transaction discarded because of previous errors.".into());
    }
    let mut keys: Vec<Vec<u8>> = txn.watched.keys().cloned().collect();
    for args in &queued {
        if let Plan::Keyed(k) = pipeline::plan(&keyed::upper_name(args), args) {
            keys.extend(k);
        }
    }
    keys.sort();
    keys.dedup();
    if keys.len() > MAX_TXN_KEYS {
        return Reply::err(format!("a transaction touches at most {MAX_TXN_KEYS} keys; this one {}", keys.len()));
    }
    for attempt in 0..MAX_CAS_ATTEMPTS {
        let mut read = BTreeMap::new();
        for key in &keys {
            match shared.client.get_with_expiry(key).await {
                Ok(state) => read.insert(key.clone(), state),
                Err(e) => return client_error(&e),
            };
        }
        if txn.watched.iter().any(|(k, then)| read.get(k) != Some(then)) {
            return Reply::NullArray; // a watched key changed: aborted
        }
        let now_ms = wall_now_ms();
        let mut state = read.clone();
        let replies: Vec<Reply> = queued.iter().map(|args| run(args, &mut state, now_ms)).collect();
        let writes: Vec<BatchOp> = state
            .iter()
            .filter(|(k, now)| read.get(*k) != Some(*now))
            .map(|(k, now)| match now {
                None => BatchOp::Delete { key: k.clone() },
                Some((value, deadline)) => state::put(k, value.clone(), *deadline),
            })
            .collect();
        if writes.is_empty() {
            return Reply::Array(replies);
        }
        let checks = read.into_iter().map(|(key, then)| BatchOp::Check {
            key,
            expect: match then {
                None => Expect::Absent,
                Some((value, expires_at_ms)) => Expect::Exactly { value, expires_at_ms },
            },
        });
        match shared.client.write_checked(checks.chain(writes).collect()).await {
            Ok(Ok(())) => return Reply::Array(replies),
            Ok(Err(_)) => super::rmw::cas_backoff(attempt).await, // changed since read: again
            Err(ClientError::CrossShard(_)) => return cross_shard(),
            Err(e) => return client_error(&e),
        }
    }
    Reply::err(format!("EXEC gave up after {MAX_CAS_ATTEMPTS} attempts: its keys keep changing"))
}

fn cross_shard() -> Reply {
    Reply::Error(
        "CROSSSLOT Keys in request don't hash to the same slot (a Presage transaction runs within one shard)".into(),
    )
}

/// Runs one queued command on the transaction's snapshot `state` at `now_ms`.
fn run(args: &[Vec<u8>], state: &mut BTreeMap<Vec<u8>, Current>, now_ms: u64) -> Reply {
    let name = keyed::upper_name(args);
    let value = |state: &BTreeMap<Vec<u8>, Current>, k: &Vec<u8>| state.get(k).cloned().flatten();
    match name.as_str() {
        "PING" => args.get(1).map_or(Reply::Simple("PONG".into()), |a| Reply::Bulk(a.clone())),
        "ECHO" => Reply::Bulk(args[1].clone()),
        "MGET" => Reply::Array(
            args[1..]
                .iter()
                .map(|k| match value(state, k) {
                    Some((v, _)) if !state::is_hash(&v) => Reply::Bulk(v),
                    _ => Reply::Null,
                })
                .collect(),
        ),
        "EXISTS" => Reply::Int(args[1..].iter().filter(|k| value(state, k).is_some()).count() as i64),
        "DEL" | "UNLINK" => {
            let mut removed = 0;
            for k in &args[1..] {
                if let Some(slot) = state.get_mut(k).filter(|s| s.is_some()) {
                    *slot = None;
                    removed += 1;
                }
            }
            Reply::Int(removed)
        }
        "MSET" => {
            for kv in args[1..].chunks(2) {
                state.insert(kv[0].clone(), Some((kv[1].clone(), None)));
            }
            Reply::ok()
        }
        _ if MULTI_KEY.contains(&name.as_str()) => wrong_args(&name),
        _ => {
            let key = &args[1];
            let current = value(state, key);
            match keyed::decide(&name, args, &current, now_ms) {
                Some(Change::Answer(reply)) => reply,
                Some(Change::Write(op, reply)) => {
                    state.insert(key.clone(), after(op, now_ms));
                    reply
                }
                None => wrong_args(&name),
            }
        }
    }
}

/// A key's state after `op` at `now_ms`.
fn after(op: BatchOp, now_ms: u64) -> Current {
    match op {
        BatchOp::Put { value, .. } => Some((value, None)),
        BatchOp::PutExpiring { value, ttl_ms, .. } => Some((value, Some(now_ms.saturating_add(ttl_ms)))),
        BatchOp::PutUntil { value, deadline_ms, .. } => (deadline_ms > now_ms).then_some((value, Some(deadline_ms))),
        BatchOp::Delete { .. } | BatchOp::Check { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Vec<u8>> {
        s.split(' ').map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn queued_commands_run_in_order_on_the_snapshot() {
        let mut state: BTreeMap<Vec<u8>, Current> =
            [(b"a".to_vec(), Some((b"10".to_vec(), Some(5_000)))), (b"b".to_vec(), None)].into();
        let now = 1_000;
        assert_eq!(run(&args("DECRBY a 3"), &mut state, now), Reply::Int(7));
        assert_eq!(run(&args("INCRBY b 3"), &mut state, now), Reply::Int(3));
        assert_eq!(run(&args("MGET a b"), &mut state, now), Reply::Array(vec![Reply::text("7"), Reply::text("3")]));
        assert_eq!(state[b"a".as_slice()], Some((b"7".to_vec(), Some(5_000))), "INCR keeps the deadline");
        assert_eq!(run(&args("DEL a b"), &mut state, now), Reply::Int(2));
        assert_eq!(run(&args("EXISTS a b"), &mut state, now), Reply::Int(0));
        assert_eq!(run(&args("SET a v PX 10"), &mut state, now), Reply::ok());
        assert_eq!(state[b"a".as_slice()], Some((b"v".to_vec(), Some(1_010))));
    }

    #[test]
    fn only_known_commands_of_the_right_arity_are_queued() {
        assert!(check("INCR", &args("INCR k")).is_ok());
        assert!(check("HSET", &args("HSET h f v")).is_ok());
        assert!(check("MSET", &args("MSET a 1 b")).is_err());
        assert!(check("INCR", &args("INCR")).is_err());
        assert!(check("SCAN", &args("SCAN 0")).is_err());
        assert!(check("FLY", &args("FLY")).is_err());
    }
}
