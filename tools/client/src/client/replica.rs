//! Replica reads on the client's side: which voter a read goes to (by the shard manager's
//! read weights), and moving past a follower that declines one.

use presage_shardmgr::{NodeId, Role, ShardMeta};

use super::{Client, Next, PoisonError};
use crate::proto::{ProtoError, Response};

impl Client {
    /// A voter of `shard` for a replica read, drawn by the manager's read weights among those
    /// not in `avoid` and not silent; `None` when all weigh nothing (the leader then).
    pub(super) fn pick_replica(&self, shard: &ShardMeta, avoid: &[NodeId]) -> Option<NodeId> {
        let now = tokio::time::Instant::now();
        let weighted: Vec<(NodeId, f64)> = {
            let cache = self.cache();
            shard
                .replicas
                .iter()
                .filter(|r| r.role == Role::Voter && !avoid.contains(&r.node) && !cache.is_silent(r.node, now))
                .map(|r| (r.node, cache.read_weights.get(&r.node).copied().unwrap_or(1.0)))
                .map(|(n, w)| (n, if w.is_finite() { w.clamp(0.0, 1.0) } else { 0.0 }))
                .collect()
        };
        let total: f64 = weighted.iter().map(|(_, w)| w).sum();
        if total <= 0.0 {
            return None;
        }
        let mut at = rand::Rng::random::<f64>(&mut *self.jitter.lock().unwrap_or_else(PoisonError::into_inner)) * total;
        for (node, w) in &weighted {
            if at < *w {
                return Some(*node);
            }
            at -= w;
        }
        weighted.iter().rev().find(|(_, w)| *w > 0.0).map(|(n, _)| *n)
    }

    /// The follower `target` declined a replica read (it knows no leader, lags behind a split,
    /// its round went unanswered): the next replica at once, the cached route kept (newer
    /// descriptors it sent are taken). `None` for any other answer.
    pub(super) fn declined_by_follower<T>(
        &self,
        answer: &Result<Result<Response, T>, tokio::time::error::Elapsed>,
        target: NodeId,
        avoid: &mut Vec<NodeId>,
    ) -> Option<Next> {
        let Ok(Ok(Response::Error(e))) = answer else { return None };
        let declined = matches!(
            e,
            ProtoError::NotLeader { .. }
                | ProtoError::Retry(_)
                | ProtoError::ShardNotFound { .. }
                | ProtoError::EpochNotMatch { .. }
        );
        if !declined {
            return None;
        }
        if let ProtoError::EpochNotMatch { current, .. } = e {
            let mut cache = self.cache();
            for s in current {
                cache.directory.update(s.clone()); // only newer ones count
            }
        }
        avoid.push(target);
        Some(Next::Retry { why: e.to_string(), at_once: true, maybe_applied: false, pause_ms: 0 })
    }
}
