//! Carries out an operator step on a shard this node leads. Every step first checks whether
//! it is already done (the manager may resend it, or a new manager may resume it), so
//! carrying one out twice does no harm.

use std::sync::Arc;
use std::time::Duration;

use presage_client::{ProtoError, Response};
use presage_engine::{middle_key, Cf, Engine};
use presage_replication::ShardStatus;
use presage_shardmgr::{Command, Step};

use super::convert::{proto_error, wire_epoch};
use super::{lock, Inner};

pub(crate) async fn run<E: Engine>(inner: &Arc<Inner<E>>, command: Command) -> Response {
    match step(inner, &command).await {
        Ok(()) => Response::Done,
        Err(e) => Response::Error(e),
    }
}

async fn step<E: Engine>(inner: &Arc<Inner<E>>, command: &Command) -> Result<(), ProtoError> {
    let shard = command.shard;
    let node = &inner.node;
    let status = node.status(shard).await.map_err(|e| proto_error(e, false))?;
    let status = status.ok_or(ProtoError::ShardNotFound { shard })?;
    if !status.is_leader() {
        return Err(ProtoError::NotLeader { shard, leader: status.leader });
    }
    let desc = &status.descriptor;
    let replica = |n: u64| desc.replicas.iter().find(|r| r.node_id == n);
    let write_err = |e| proto_error(e, true);
    match &command.step {
        Step::AddLearner { node: n } => {
            if replica(*n).is_none() {
                node.add_learner(shard, *n).await.map_err(write_err)?;
            }
        }
        Step::PromoteLearner { node: n } => match replica(*n) {
            None => return Err(ProtoError::Invalid(format!("no replica on node {n} to promote"))),
            Some(r) if r.is_voter() => {}
            Some(_) => {
                let matched = status.matched.iter().find(|(id, _)| id == n).map_or(0, |(_, m)| *m);
                // Never promote a learner that has not answered yet (matched 0): with a short
                // log the lag test alone would pass, and a voter that cannot vote can cost
                // the group its quorum.
                if matched == 0 || matched + inner.cfg.learner_max_lag_entries < status.last_index {
                    return Err(ProtoError::Retry(format!(
                        "learner on node {n} is at {matched}, the log at {}",
                        status.last_index
                    )));
                }
                node.promote_learner(shard, *n).await.map_err(write_err)?;
            }
        },
        Step::RemoveReplica { node: n } => {
            if replica(*n).is_none() {
                return Ok(());
            }
            if *n == inner.me.id {
                hand_over(inner, &status).await?;
                return Err(ProtoError::Retry("handing the leadership away before removing this replica".into()));
            }
            node.remove_replica(shard, *n).await.map_err(write_err)?;
        }
        Step::TransferLeader { to } => {
            if *to != inner.me.id {
                node.transfer_leader(shard, *to).await.map_err(write_err)?;
            }
        }
        Step::Split { key, new_shard, epoch } => {
            if status.descriptor.epoch() != wire_epoch(*epoch) {
                return Err(ProtoError::EpochNotMatch { shard, current: Vec::new() });
            }
            let key = match key {
                Some(k) => k.clone(),
                None => {
                    let range = desc.range().map_err(|e| ProtoError::Internal(e.to_string()))?;
                    let snapshot = inner.engine.snapshot();
                    let found = tokio::task::spawn_blocking(move || middle_key(&snapshot, Cf::Data, &range))
                        .await
                        .map_err(|e| ProtoError::Internal(e.to_string()))?
                        .map_err(|e| ProtoError::Internal(e.to_string()))?;
                    found.ok_or_else(|| ProtoError::Invalid(format!("shard {shard} holds fewer than two keys")))?
                }
            };
            node.split(shard, wire_epoch(*epoch), key, *new_shard).await.map_err(write_err)?;
            inner.splits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        step @ (Step::Merge { target } | Step::ResolveMerge { target }) => {
            // One merge per source at a time on this node: the manager resends steps while an
            // earlier attempt may still run.
            if !lock(&inner.merging).insert(shard) {
                return Err(ProtoError::Retry(format!("a merge of shard {shard} is already running here")));
            }
            let timeout = Duration::from_millis(inner.cfg.merge_confirm_timeout_ms);
            let result = node.merge(shard, *target, timeout).await;
            lock(&inner.merging).remove(&shard);
            result.map_err(write_err)?;
            if matches!(step, Step::Merge { .. }) {
                inner.merges.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Hands this replica's leadership to the most caught-up other voter.
async fn hand_over<E: Engine>(inner: &Arc<Inner<E>>, status: &ShardStatus) -> Result<(), ProtoError> {
    let me = inner.me.id;
    let voters: Vec<u64> =
        status.descriptor.replicas.iter().filter(|r| r.is_voter() && r.node_id != me).map(|r| r.node_id).collect();
    let best =
        status.matched.iter().filter(|(id, _)| voters.contains(id)).max_by_key(|(id, m)| (*m, std::cmp::Reverse(*id)));
    let Some(&(to, _)) = best else {
        return Err(ProtoError::Invalid("no other voter to hand the leadership to".into()));
    };
    inner.node.transfer_leader(status.descriptor.id, to).await.map_err(|e| proto_error(e, true))
}
