//! Pipelined commands: a connection's commands run concurrently, and their replies go out in
//! the order the commands came.
//!
//! Walk-through: each complete command read from the connection is planned. A **keyed**
//! command (those of `keyed.rs`: strings, counters, expiry, MGET, MSET, DEL, EXISTS) joins
//! the connection's window of running commands, once no command still running there touches
//! one of its keys (so `SET k v` then `GET k` reads `v`, and read-modify-writes on one key
//! keep their order) and the window holds fewer than `max-pipeline-commands`. Every other
//! command (AUTH, HELLO, CLIENT, SCAN, INFO, ...) is **serial**: it waits until the window is
//! empty and runs alone, since it reads or changes the connection's session or spans the
//! keyspace. Replies leave the window in command order, whatever order they finish in.
//!
//! **Runs.** Consecutive plain `GET key` commands, or consecutive plain `SET key value`
//! commands, read together are gathered into a [`Run`] and take one place in the window:
//! the run is sent as one request per shard (`Client::get_many`, `Client::put_each`) and
//! answers one reply per command, in order. A run ends at the first other command, at a key
//! still in flight in the window, at `max-pipeline-commands` commands, and when the
//! connection has nothing more to read.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use futures::stream::{FuturesOrdered, StreamExt};

use super::parse::Reply;

/// How a command runs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Plan {
    /// Concurrently with commands on other keys; these are its keys.
    Keyed(Vec<Vec<u8>>),
    /// Alone, after every earlier command.
    Serial,
}

/// Plans the command `name` (upper case) with `args` (the name first).
pub(super) fn plan(name: &str, args: &[Vec<u8>]) -> Plan {
    let rest = args.get(1..).unwrap_or_default();
    match name {
        "GET" | "SET" | "SETNX" | "SETEX" | "PSETEX" | "GETEX" | "GETDEL" | "APPEND" | "STRLEN" | "TYPE" | "INCR"
        | "DECR" | "INCRBY" | "DECRBY" | "INCRBYFLOAT" | "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" | "EXPIRE"
        | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" | "PERSIST" => Plan::Keyed(rest.first().cloned().into_iter().collect()),
        _ if super::hash::COMMANDS.contains(&name) => Plan::Keyed(rest.first().cloned().into_iter().collect()),
        "MGET" | "DEL" | "UNLINK" | "EXISTS" => Plan::Keyed(rest.to_vec()),
        "MSET" => Plan::Keyed(rest.iter().step_by(2).cloned().collect()),
        _ => Plan::Serial,
    }
}

/// What a place in the window answers: a command's reply, or a run's replies in order.
pub(super) enum Outcome {
    One(Reply),
    Many(Vec<Reply>),
}

impl Outcome {
    pub(super) fn encode(&self, resp: u8, out: &mut Vec<u8>) {
        match self {
            Outcome::One(r) => r.encode(resp, out),
            Outcome::Many(rs) => rs.iter().for_each(|r| r.encode(resp, out)),
        }
    }
}

/// A command, or a run, running in the window.
type Running<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// What a run gathers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunKind {
    /// `GET key`.
    Get,
    /// `SET key value`, no options.
    Set,
}

/// The run kind `name` (upper case) with `args` joins, if any.
pub(super) fn run_kind(name: &str, args: &[Vec<u8>]) -> Option<RunKind> {
    match (name, args.len()) {
        ("GET", 2) => Some(RunKind::Get),
        ("SET", 3) => Some(RunKind::Set),
        _ => None,
    }
}

/// Commands of one kind gathered from a pipeline, not started yet.
#[derive(Default)]
pub(super) struct Run {
    kind: Option<RunKind>,
    /// Each command's arguments after its name: `[key]` or `[key, value]`.
    commands: Vec<Vec<Vec<u8>>>,
}

impl Run {
    pub(super) fn len(&self) -> usize {
        self.commands.len()
    }

    /// True when a command of `kind` may join.
    pub(super) fn accepts(&self, kind: RunKind) -> bool {
        self.kind.is_none_or(|k| k == kind)
    }

    /// Adds a command of `kind` (its arguments, the name first).
    pub(super) fn add(&mut self, kind: RunKind, mut args: Vec<Vec<u8>>) {
        debug_assert!(self.accepts(kind), "a run holds one kind of command");
        self.kind = Some(kind);
        args.remove(0);
        self.commands.push(args);
    }

    /// The gathered commands, leaving the run empty.
    pub(super) fn take(&mut self) -> Option<(RunKind, Vec<Vec<Vec<u8>>>)> {
        let kind = self.kind.take()?;
        Some((kind, std::mem::take(&mut self.commands)))
    }
}

/// The commands of one connection running now, oldest first.
pub(super) struct Window<'a> {
    running: FuturesOrdered<Running<'a>>,
    /// Each running command's (or run's) keys and number of commands, in the same order.
    keys: VecDeque<(Vec<Vec<u8>>, usize)>,
    /// Commands running, runs counted by their commands.
    commands: usize,
    /// The priority the commands started from now on run at (the connection's).
    priority: presage_client::Priority,
    /// Their reads are replica reads (the connection's `READONLY`).
    replica_reads: bool,
}

impl<'a> Window<'a> {
    pub(super) fn new(priority: presage_client::Priority) -> Self {
        Window { running: FuturesOrdered::new(), keys: VecDeque::new(), commands: 0, priority, replica_reads: false }
    }

    /// Commands started from now on run at `priority`, their reads replica reads or not.
    pub(super) fn set_priority(&mut self, priority: presage_client::Priority, replica_reads: bool) {
        (self.priority, self.replica_reads) = (priority, replica_reads);
    }

    /// Commands running (a run counts for each of its commands).
    pub(super) fn len(&self) -> usize {
        self.commands
    }

    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// True when a running command touches one of `keys`.
    pub(super) fn conflicts(&self, keys: &[Vec<u8>]) -> bool {
        self.keys.iter().any(|(running, _)| running.iter().any(|k| keys.contains(k)))
    }

    /// Starts `command` on `keys`.
    pub(super) fn push(&mut self, keys: Vec<Vec<u8>>, command: impl Future<Output = Reply> + Send + 'a) {
        let command = presage_client::with_replica_reads(self.replica_reads, command);
        let command = presage_client::with_priority(self.priority, command);
        self.running.push_back(Box::pin(async move { Outcome::One(command.await) }));
        self.keys.push_back((keys, 1));
        self.commands += 1;
    }

    /// Starts a run of commands on `keys` (one each); it answers one reply per command.
    pub(super) fn push_run(&mut self, keys: Vec<Vec<u8>>, run: impl Future<Output = Vec<Reply>> + Send + 'a) {
        let run = presage_client::with_replica_reads(self.replica_reads, run);
        let run = presage_client::with_priority(self.priority, run);
        self.running.push_back(Box::pin(async move { Outcome::Many(run.await) }));
        let commands = keys.len();
        self.commands += commands;
        self.keys.push_back((keys, commands));
    }

    /// The oldest command's or run's replies, once done (`None`: the window is empty).
    pub(super) async fn next(&mut self) -> Option<Outcome> {
        let outcome = self.running.next().await?;
        if let Some((_, commands)) = self.keys.pop_front() {
            self.commands -= commands;
        }
        Some(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn keyed_commands_name_their_keys_and_the_rest_run_alone() {
        let k = |ks: &[&str]| Plan::Keyed(args(ks));
        assert_eq!(plan("GET", &args(&["get", "a"])), k(&["a"]));
        assert_eq!(plan("SET", &args(&["set", "a", "1", "NX"])), k(&["a"]));
        assert_eq!(plan("INCRBY", &args(&["incrby", "a", "2"])), k(&["a"]));
        assert_eq!(plan("MSET", &args(&["mset", "a", "1", "b", "2"])), k(&["a", "b"]));
        assert_eq!(plan("DEL", &args(&["del", "a", "b"])), k(&["a", "b"]));
        assert_eq!(plan("GET", &args(&["get"])), Plan::Keyed(vec![]), "wrong arity: answered in the window");
        for serial in ["AUTH", "HELLO", "CLIENT", "SCAN", "INFO", "DBSIZE", "QUIT", "PING", "NOSUCH"] {
            assert_eq!(plan(serial, &args(&[serial])), Plan::Serial, "{serial}");
        }
    }

    #[tokio::test]
    async fn replies_leave_in_command_order_and_keys_conflict_until_their_command_is_done() {
        let mut w = Window::new(presage_client::Priority::Normal);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // The first command finishes last.
        w.push(args(&["a"]), async move {
            let _ = rx.await;
            Reply::Int(1)
        });
        w.push(args(&["b"]), async { Reply::Int(2) });
        assert!(w.conflicts(&args(&["a"])) && w.conflicts(&args(&["x", "b"])) && !w.conflicts(&args(&["c"])));
        assert_eq!(w.len(), 2);
        let _ = tx.send(());
        assert!(matches!(w.next().await, Some(Outcome::One(Reply::Int(1)))));
        assert!(!w.conflicts(&args(&["a"])), "a is done");
        assert!(matches!(w.next().await, Some(Outcome::One(Reply::Int(2)))));
        assert!(w.is_empty() && w.next().await.is_none());
    }

    #[tokio::test]
    async fn a_run_counts_each_command_and_answers_each_in_order() {
        let mut run = Run::default();
        assert!(run.accepts(RunKind::Get) && run.accepts(RunKind::Set));
        run.add(RunKind::Set, args(&["SET", "a", "1"]));
        run.add(RunKind::Set, args(&["SET", "b", "2"]));
        assert!(!run.accepts(RunKind::Get), "one kind per run");
        assert_eq!(run_kind("SET", &args(&["SET", "a", "1", "NX"])), None, "options: a command of its own");
        let (kind, commands) = run.take().expect("gathered");
        assert_eq!((kind, commands), (RunKind::Set, vec![args(&["a", "1"]), args(&["b", "2"])]));
        assert!(run.take().is_none() && run.len() == 0);

        let mut w = Window::new(presage_client::Priority::Normal);
        w.push_run(args(&["a", "b"]), async { vec![Reply::ok(), Reply::Int(2)] });
        w.push(args(&["c"]), async { Reply::Int(3) });
        assert_eq!(w.len(), 3, "a run counts for each of its commands");
        assert!(w.conflicts(&args(&["b"])));
        let mut out = Vec::new();
        w.next().await.expect("the run").encode(2, &mut out);
        assert_eq!(out, b"+OK\r\n:2\r\n");
        assert_eq!(w.len(), 1);
    }
}
