//! Continuous verification: each node, one shard at a time, checks that the replicas of the
//! shards it leads hold the same data.
//!
//! Every `consistency-check-interval-ms` (0: off) the node takes the shard it leads that was
//! checked longest ago (never checked first) and runs the same round as `GET
//! /v1/shards/{id}/checksums`: a `ComputeChecksum` through the shard's log pins every replica
//! at one index, and each replica's range checksum at that index comes back
//! ([`execute::verify_shard`]). One shard per interval per node is the rate limit: a check
//! reads the shard once on each replica. Shards with a learner are left to their move's own
//! verification (a replica pins one checksum round at a time).
//!
//! [`judge`] reads the answers: all equal is consistent; a replica that did not answer (down,
//! behind, moved) makes the round incomplete, checked again later; two different checksums
//! are a mismatch, and the replicas outside the largest group of equal checksums are the
//! suspects (all of them on a tie). A mismatch is logged at error level with every checksum,
//! counted in `presage_consistency_checks_total{result="mismatch"}`, and the shard stays in
//! `presage_consistency_inconsistent_shards` until a later check of it finds it consistent, or
//! the node stops leading it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use presage_client::Response;
use presage_engine::Engine;
use presage_shardmgr::{NodeId, ShardId};

use super::{execute, lock, Inner};

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every replica answered with the same checksum.
    Consistent,
    /// Some replicas did not answer; those that did agree.
    Incomplete {
        /// The replicas without an answer.
        unanswered: Vec<NodeId>,
    },
    /// Replicas answered with different checksums.
    Mismatch {
        /// The replicas outside the largest group of equal checksums (every replica on a tie).
        suspects: Vec<NodeId>,
    },
}

/// Reads one round's answers: `(node, checksum)`, an answer starting with `error:` being none.
pub fn judge(checksums: &[(NodeId, String)]) -> Verdict {
    let answered: Vec<&(NodeId, String)> = checksums.iter().filter(|(_, c)| !c.starts_with("error:")).collect();
    let mut groups: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
    for (node, sum) in &answered {
        groups.entry(sum.as_str()).or_default().push(*node);
    }
    if groups.len() > 1 {
        let largest = groups.values().map(Vec::len).max().unwrap_or(0);
        let winners: Vec<&Vec<NodeId>> = groups.values().filter(|g| g.len() == largest).collect();
        let mut suspects: Vec<NodeId> = if winners.len() == 1 {
            groups.values().filter(|g| g.len() < largest).flatten().copied().collect()
        } else {
            answered.iter().map(|(n, _)| *n).collect()
        };
        suspects.sort_unstable();
        return Verdict::Mismatch { suspects };
    }
    if answered.len() < checksums.len() {
        let unanswered = checksums.iter().filter(|(_, c)| c.starts_with("error:")).map(|(n, _)| *n).collect();
        return Verdict::Incomplete { unanswered };
    }
    Verdict::Consistent
}

/// A mismatch found and not yet cleared by a consistent check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The log index the checksums were taken at.
    pub index: u64,
    /// Every replica's answer.
    pub checksums: Vec<(NodeId, String)>,
    /// See [`Verdict::Mismatch`].
    pub suspects: Vec<NodeId>,
}

/// The checker's counts and open mismatches (read by `/metrics` and tests).
#[derive(Debug, Clone, Default)]
pub struct ConsistencyStats {
    /// Checks that found every replica equal.
    pub consistent: u64,
    /// Checks that found a mismatch.
    pub mismatches: u64,
    /// Checks some replica did not answer.
    pub incomplete: u64,
    /// Shards whose last complete check was a mismatch.
    pub inconsistent: BTreeMap<ShardId, Mismatch>,
}

/// The checker's state on a node.
#[derive(Debug, Default)]
pub(crate) struct ConsistencyState {
    pub(crate) stats: ConsistencyStats,
    /// When each shard was last checked here (tokio time).
    last_checked: HashMap<ShardId, tokio::time::Instant>,
}

/// The checker's loop (spawned with the server; ends with it).
pub(crate) async fn run<E: Engine>(inner: Arc<Inner<E>>) {
    let interval_ms = inner.cfg.consistency_check_interval_ms;
    if interval_ms == 0 {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        if let Some(shard) = next_shard(&inner).await {
            check(&inner, shard).await;
        }
    }
}

/// The shard this node leads that was checked longest ago.
/// Forgets shards it no longer leads (their mismatches are the new leader's to find). A
/// shard with a learner is skipped: its move verifies the learner with a checksum round of
/// its own, which a round of this check would replace (each replica pins one round).
async fn next_shard<E: Engine>(inner: &Arc<Inner<E>>) -> Option<ShardId> {
    let statuses = inner.node.statuses().await.ok()?;
    let led: std::collections::HashSet<ShardId> =
        statuses.iter().filter(|s| s.is_leader()).map(|s| s.descriptor.id).collect();
    let moving: std::collections::HashSet<ShardId> = statuses
        .iter()
        .filter(|s| s.descriptor.replicas.iter().any(|r| !r.is_voter()))
        .map(|s| s.descriptor.id)
        .collect();
    let mut state = lock(&inner.consistency);
    state.last_checked.retain(|id, _| led.contains(id));
    state.stats.inconsistent.retain(|id, _| led.contains(id));
    led.into_iter().filter(|id| !moving.contains(id)).min_by_key(|id| (state.last_checked.get(id).copied(), *id))
}

/// Checks `shard` once and records what it found.
async fn check<E: Engine>(inner: &Arc<Inner<E>>, shard: ShardId) {
    let answer = execute::verify_shard(inner, shard, false).await;
    let mut state = lock(&inner.consistency);
    state.last_checked.insert(shard, tokio::time::Instant::now());
    let Response::ShardChecksums { index, checksums } = answer else {
        tracing::debug!(shard, ?answer, "consistency check not run");
        return;
    };
    match judge(&checksums) {
        Verdict::Consistent => {
            state.stats.consistent += 1;
            if state.stats.inconsistent.remove(&shard).is_some() {
                tracing::warn!(shard, index, "shard's replicas are consistent again");
            }
        }
        Verdict::Incomplete { unanswered } => {
            state.stats.incomplete += 1;
            tracing::debug!(shard, index, ?unanswered, "consistency check incomplete");
        }
        Verdict::Mismatch { suspects } => {
            state.stats.mismatches += 1;
            tracing::error!(
                shard,
                index,
                ?checksums,
                ?suspects,
                "replicas of the shard hold different data at the same log index"
            );
            state.stats.inconsistent.insert(shard, Mismatch { index, checksums, suspects });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(list: &[(NodeId, &str)]) -> Vec<(NodeId, String)> {
        list.iter().map(|(n, c)| (*n, (*c).to_string())).collect()
    }

    #[test]
    fn equal_checksums_are_consistent() {
        assert_eq!(judge(&answers(&[(1, "a"), (2, "a"), (3, "a")])), Verdict::Consistent);
    }

    #[test]
    fn the_odd_replica_out_is_the_suspect() {
        let v = judge(&answers(&[(1, "a"), (2, "b"), (3, "a")]));
        assert_eq!(v, Verdict::Mismatch { suspects: vec![2] });
    }

    #[test]
    fn a_tie_makes_every_answering_replica_a_suspect() {
        let v = judge(&answers(&[(1, "a"), (2, "b"), (3, "error: down")]));
        assert_eq!(v, Verdict::Mismatch { suspects: vec![1, 2] });
    }

    #[test]
    fn a_missing_answer_with_the_rest_equal_is_incomplete() {
        let v = judge(&answers(&[(1, "a"), (2, "error: timed out"), (3, "a")]));
        assert_eq!(v, Verdict::Incomplete { unanswered: vec![2] });
    }
}
