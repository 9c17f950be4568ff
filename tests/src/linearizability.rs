//! A linearizability checker for key-value histories (Wing & Gong's search with the
//! memoisation of Lowe and of Porcupine, and P-compositionality: each key is an independent
//! register, checked on its own).
//!
//! A history is a list of operations with the (logical) times a client called them and got
//! their answer. A write whose outcome is unknown (a timeout, an `OutcomeUnknown` answer) has
//! no return time: it may take effect at any point after its call, or never - placing it
//! after every other operation is the same as "never", so the search needs no special case.

use std::collections::{BTreeMap, HashSet};

/// What an operation did on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Wrote this value.
    Put(Vec<u8>),
    /// Deleted the key.
    Delete,
    /// Read the key and saw this.
    Get(Option<Vec<u8>>),
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued it (for messages).
    pub client: u64,
    /// The key.
    pub key: Vec<u8>,
    /// What it did.
    pub op: KvOp,
    /// When it was called.
    pub call: u64,
    /// When it returned; `None` when its outcome is unknown.
    pub ret: Option<u64>,
}

/// Records a history from concurrent clients: a logical clock for call and return times,
/// and the operations.
#[derive(Debug, Default)]
pub struct Recorder {
    clock: std::sync::atomic::AtomicU64,
    history: std::sync::Mutex<Vec<Operation>>,
}

impl Recorder {
    /// The next logical time.
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }

    /// Adds an operation.
    pub fn record(&self, op: Operation) {
        self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(op);
    }

    /// The operations so far.
    pub fn history(&self) -> Vec<Operation> {
        self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// A register's state: the key's value.
type State = Option<Vec<u8>>;

fn step(state: &State, op: &KvOp) -> Option<State> {
    match op {
        KvOp::Put(v) => Some(Some(v.clone())),
        KvOp::Delete => Some(None),
        KvOp::Get(seen) => (seen == state).then(|| state.clone()),
    }
}

/// Checks every key's sub-history. `Err` names the first key that cannot be linearized.
pub fn check(history: &[Operation]) -> Result<(), String> {
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_slice()).or_default().push(op);
    }
    for (key, ops) in by_key {
        if !check_register(&ops) {
            let mut lines: Vec<String> = ops
                .iter()
                .map(|o| {
                    format!(
                        "  client {} [{} .. {}] {:?}",
                        o.client,
                        o.call,
                        o.ret.map_or("?".into(), |r| r.to_string()),
                        o.op
                    )
                })
                .collect();
            lines.sort();
            return Err(format!(
                "history of key {:?} ({} ops) is not linearizable:\n{}",
                String::from_utf8_lossy(key),
                ops.len(),
                lines.join("\n")
            ));
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    time: u64,
}

/// The search of Wing & Gong over a doubly linked list of call/return events.
fn check_register(ops: &[&Operation]) -> bool {
    let n = ops.len();
    if n == 0 {
        return true;
    }
    let mut events: Vec<Event> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push(Event { op: i, is_call: true, time: o.call });
        events.push(Event { op: i, is_call: false, time: o.ret.unwrap_or(u64::MAX) });
    }
    // Calls sort before returns at equal times: overlapping is the weaker claim.
    events.sort_by_key(|e| (e.time, !e.is_call, e.op));
    // Linked list over event slots 1..=2n, with slot 0 as the head.
    let len = events.len();
    let mut next: Vec<usize> = (1..=len + 1).collect();
    let mut prev: Vec<usize> = (0..=len).map(|i| i.saturating_sub(1)).collect();
    let slot = |i: usize| i + 1; // event index -> list slot
    let mut ret_slot = vec![0usize; n];
    let mut call_slot = vec![0usize; n];
    for (i, e) in events.iter().enumerate() {
        if e.is_call {
            call_slot[e.op] = slot(i);
        } else {
            ret_slot[e.op] = slot(i);
        }
    }
    let end = len + 1;
    next.push(end); // so that `next` has len + 2 slots; prev likewise
    prev.push(len);
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, s: usize| {
        let (p, nx) = (prev[s], next[s]);
        next[p] = nx;
        prev[nx] = p;
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, s: usize| {
        let (p, nx) = (prev[s], next[s]);
        next[p] = s;
        prev[nx] = s;
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: State = None;
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut calls: Vec<(usize, State)> = Vec::new(); // (op, state before it)
    let mut cur = next[0];
    while next[0] != end {
        if cur != end && events[cur - 1].is_call {
            let e = events[cur - 1];
            if let Some(after) = step(&state, &ops[e.op].op) {
                let mut lin = linearized.clone();
                lin[e.op / 64] |= 1u64 << (e.op % 64);
                if cache.insert((lin.clone(), after.clone())) {
                    calls.push((e.op, std::mem::replace(&mut state, after)));
                    linearized = lin;
                    lift(&mut next, &mut prev, call_slot[e.op]);
                    lift(&mut next, &mut prev, ret_slot[e.op]);
                    cur = next[0];
                    continue;
                }
            }
            cur = next[cur];
            continue;
        }
        // An operation returned (or the events ran out) before the next one could be placed:
        // undo the last choice and try the next candidate after it.
        let Some((op, before)) = calls.pop() else { return false };
        state = before;
        linearized[op / 64] &= !(1u64 << (op % 64));
        unlift(&mut next, &mut prev, ret_slot[op]);
        unlift(&mut next, &mut prev, call_slot[op]);
        cur = next[call_slot[op]];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, op: KvOp, call: u64, ret: Option<u64>) -> Operation {
        Operation { client, key: b"x".to_vec(), op, call, ret }
    }
    fn put(v: &str) -> KvOp {
        KvOp::Put(v.as_bytes().to_vec())
    }
    fn get(v: Option<&str>) -> KvOp {
        KvOp::Get(v.map(|v| v.as_bytes().to_vec()))
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(1, put("a"), 1, Some(2)),
            op(1, get(Some("a")), 3, Some(4)),
            op(2, KvOp::Delete, 5, Some(6)),
            op(2, get(None), 7, Some(8)),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = vec![op(1, put("a"), 1, Some(2)), op(1, put("b"), 3, Some(4)), op(2, get(Some("a")), 5, Some(6))];
        assert!(check(&h).is_err());
    }

    #[test]
    fn concurrent_operations_may_order_either_way() {
        // The read overlaps the write: it may see the old or the new value.
        let old = vec![op(1, put("a"), 1, Some(10)), op(2, get(None), 2, Some(3))];
        let new = vec![op(1, put("a"), 1, Some(10)), op(2, get(Some("a")), 2, Some(3))];
        assert!(check(&old).is_ok() && check(&new).is_ok());
    }

    #[test]
    fn reads_must_agree_on_one_order() {
        // Two writes overlap; one reader sees b then a, another a then b: impossible.
        let h = vec![
            op(1, put("a"), 1, Some(20)),
            op(2, put("b"), 1, Some(20)),
            op(3, get(Some("b")), 2, Some(3)),
            op(3, get(Some("a")), 4, Some(5)),
            op(4, get(Some("a")), 6, Some(7)),
            op(4, get(Some("b")), 8, Some(9)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_writes_may_or_may_not_happen() {
        let seen = vec![op(1, put("a"), 1, None), op(2, get(Some("a")), 5, Some(6))];
        let unseen = vec![op(1, put("a"), 1, None), op(2, get(None), 5, Some(6))];
        assert!(check(&seen).is_ok() && check(&unseen).is_ok());
        // But once seen, it cannot un-happen.
        let flip = vec![op(1, put("a"), 1, None), op(2, get(Some("a")), 5, Some(6)), op(2, get(None), 7, Some(8))];
        assert!(check(&flip).is_err());
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let h = vec![op(1, put("a"), 1, Some(2)), op(2, get(None), 3, Some(4))];
        assert!(check(&h).is_err());
    }

    #[test]
    fn keys_are_independent() {
        let mut h = vec![op(1, put("a"), 1, Some(2))];
        h.push(Operation { client: 2, key: b"y".to_vec(), op: get(None), call: 3, ret: Some(4) });
        assert!(check(&h).is_ok());
    }
}
