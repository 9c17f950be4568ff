//! Pipelined commands: a connection's commands run concurrently, and their replies go out in
//! the order the commands came.
//!
//! Walk-through: each complete command read from the connection is planned. A **keyed**
//! command (GET, SET, SETNX, INCR/DECR/INCRBY/DECRBY, MGET, MSET, DEL, UNLINK, EXISTS) joins
//! the connection's window of running commands, once no command still running there touches
//! one of its keys (so `SET k v` then `GET k` reads `v`, and read-modify-writes on one key
//! keep their order) and the window holds fewer than `max-pipeline-commands`. Every other
//! command (AUTH, HELLO, CLIENT, SCAN, INFO, ...) is **serial**: it waits until the window is
//! empty and runs alone, since it reads or changes the connection's session or spans the
//! keyspace. Replies leave the window in command order, whatever order they finish in.

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
        "GET" | "SET" | "SETNX" | "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            Plan::Keyed(rest.first().cloned().into_iter().collect())
        }
        "MGET" | "DEL" | "UNLINK" | "EXISTS" => Plan::Keyed(rest.to_vec()),
        "MSET" => Plan::Keyed(rest.iter().step_by(2).cloned().collect()),
        _ => Plan::Serial,
    }
}

/// A command running in the window.
pub(super) type Running<'a> = Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;

/// The commands of one connection running now, oldest first.
pub(super) struct Window<'a> {
    running: FuturesOrdered<Running<'a>>,
    /// Each running command's keys, in the same order.
    keys: VecDeque<Vec<Vec<u8>>>,
}

impl<'a> Window<'a> {
    pub(super) fn new() -> Self {
        Window { running: FuturesOrdered::new(), keys: VecDeque::new() }
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// True when a running command touches one of `keys`.
    pub(super) fn conflicts(&self, keys: &[Vec<u8>]) -> bool {
        self.keys.iter().any(|running| running.iter().any(|k| keys.contains(k)))
    }

    /// Starts `command` on `keys`.
    pub(super) fn push(&mut self, keys: Vec<Vec<u8>>, command: Running<'a>) {
        self.running.push_back(command);
        self.keys.push_back(keys);
    }

    /// The oldest command's reply, once it is done (`None`: the window is empty).
    pub(super) async fn next(&mut self) -> Option<Reply> {
        let reply = self.running.next().await?;
        self.keys.pop_front();
        Some(reply)
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
        let mut w = Window::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // The first command finishes last.
        w.push(
            args(&["a"]),
            Box::pin(async move {
                let _ = rx.await;
                Reply::Int(1)
            }),
        );
        w.push(args(&["b"]), Box::pin(async { Reply::Int(2) }));
        assert!(w.conflicts(&args(&["a"])) && w.conflicts(&args(&["x", "b"])) && !w.conflicts(&args(&["c"])));
        assert_eq!(w.len(), 2);
        let _ = tx.send(());
        assert!(matches!(w.next().await, Some(Reply::Int(1))));
        assert!(!w.conflicts(&args(&["a"])), "a is done");
        assert!(matches!(w.next().await, Some(Reply::Int(2))));
        assert!(w.is_empty() && w.next().await.is_none());
    }
}
