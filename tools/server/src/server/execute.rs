//! Carries out an operator step on a shard this node leads. Every step first checks whether
//! it is already done (the manager may resend it, or a new manager may resume it), so
//! carrying one out twice does no harm. A membership change is made only against the
//! configuration the manager planned it with (the command's `conf_ver`): a manager judging
//! from a stale directory (a change it did not see yet, a step of another operator or
//! manager still in flight) is answered `EpochNotMatch` and plans again once it sees the
//! shard's configuration, so that stale views never compound into removing voters. A
//! verification answers with both checksums (`Response::Verified`); the manager records it
//! with the operator.
//!
//! Carries out a step on a led shard after checking it is not already done (promotes, verifies or
//! swaps in a learner only once caught up; hands leadership away before removing or demoting
//! itself; picks the middle key for size splits; refuses a membership change planned against
//! another `conf_ver`). Verify: a checksum round through the log (`compute_checksum`), then
//! `ReplicaChecksum` to the replica's node, which waits up to `CHECKSUM_MAX_WAIT_MS` to apply it;
//! both checksums go back to the manager.

use std::sync::Arc;
use std::time::Duration;

use presage_client::{ProtoError, Request, Response};
use presage_engine::{middle_key, Cf, Engine};
use presage_replication::ShardStatus;
use presage_shardmgr::{Command, Step};

use super::convert::{proto_error, wire_epoch};
use super::{lock, Inner};

/// Longest a replica waits to apply a checksum round before it answers "not yet".
pub(crate) const CHECKSUM_MAX_WAIT_MS: u64 = 5_000;

pub(crate) async fn run<E: Engine>(inner: &Arc<Inner<E>>, command: Command) -> Response {
    match step(inner, &command).await {
        Ok(answer) => answer,
        Err(e) => Response::Error(e),
    }
}

/// This node's replica's checksum of `shard` at `index` (`Request::ReplicaChecksum`),
/// waiting up to [`CHECKSUM_MAX_WAIT_MS`] for the replica to apply the round.
pub(crate) async fn replica_checksum<E: Engine>(inner: &Arc<Inner<E>>, shard: u64, index: u64) -> Response {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(CHECKSUM_MAX_WAIT_MS);
    loop {
        match inner.node.replica_checksum(shard, index).await {
            Ok(at) => return Response::Checksum { index: at.index, checksum: at.checksum.to_string() },
            Err(presage_replication::Error::ChecksumNotReady { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Response::Error(proto_error(e, false)),
        }
    }
}

/// Every replica's checksum of `shard` at one log index (`Request::VerifyShard`): a checksum
/// round through the leader's log, then each other replica's checksum at its index. A node
/// that does not lead the shard forwards the request once to the leader it knows.
pub(crate) async fn verify_shard<E: Engine>(inner: &Arc<Inner<E>>, shard: u64, may_forward: bool) -> Response {
    let status = match inner.node.status(shard).await {
        Ok(Some(s)) => s,
        Ok(None) => return Response::Error(ProtoError::ShardNotFound { shard }),
        Err(e) => return Response::Error(proto_error(e, false)),
    };
    if !status.is_leader() {
        return match status.leader {
            Some(l) if may_forward && l != inner.me.id => {
                let request = Request::Forwarded { request: Box::new(Request::VerifyShard { shard }) };
                let timeout = Duration::from_millis(inner.cfg.rpc_timeout_ms * 2 + CHECKSUM_MAX_WAIT_MS);
                inner.call_within(l, request, timeout).await.unwrap_or_else(|e| {
                    Response::Error(ProtoError::Retry(format!("shard {shard}'s leader, node {l}: {e}")))
                })
            }
            leader => Response::Error(ProtoError::NotLeader { shard, leader }),
        };
    }
    let ours = match inner.node.compute_checksum(shard, status.descriptor.epoch()).await {
        Ok(at) => at,
        Err(e) => return Response::Error(proto_error(e, false)),
    };
    let mut checksums = vec![(inner.me.id, ours.checksum.to_string())];
    let timeout = Duration::from_millis(inner.cfg.rpc_timeout_ms + CHECKSUM_MAX_WAIT_MS);
    for r in status.descriptor.replicas.iter().filter(|r| r.node_id != inner.me.id) {
        let request = Request::ReplicaChecksum { shard, index: ours.index };
        let answer = match inner.call_within(r.node_id, request, timeout).await {
            Ok(Response::Checksum { index, checksum }) if index == ours.index => checksum,
            Ok(Response::Error(e)) => format!("error: {e}"),
            Ok(other) => format!("error: unexpected answer {other:?}"),
            Err(e) => format!("error: {e}"),
        };
        checksums.push((r.node_id, answer));
    }
    Response::ShardChecksums { index: ours.index, checksums }
}

async fn step<E: Engine>(inner: &Arc<Inner<E>>, command: &Command) -> Result<Response, ProtoError> {
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
    // Before changing the membership: the configuration must be the one the step was
    // planned against.
    let planned_here = || {
        if desc.epoch().conf_ver == command.epoch.conf_ver {
            Ok(())
        } else {
            Err(ProtoError::EpochNotMatch { shard, current: vec![super::convert::shard_meta(desc, Some(inner.me.id))] })
        }
    };
    // Never promote or verify a learner that has not answered yet (matched 0): with a short
    // log the lag test alone would pass, and a voter that cannot vote can cost the group
    // its quorum.
    let caught_up = |n: u64| {
        let matched = status.matched.iter().find(|(id, _)| *id == n).map_or(0, |(_, m)| *m);
        if matched == 0 || matched + inner.cfg.learner_max_lag_entries < status.last_index {
            return Err(ProtoError::Retry(format!(
                "the replica on node {n} is at {matched}, the log at {}",
                status.last_index
            )));
        }
        Ok(())
    };
    match &command.step {
        Step::AddLearner { node: n } => {
            if replica(*n).is_none() {
                planned_here()?;
                node.add_learner(shard, *n).await.map_err(write_err)?;
            }
        }
        Step::PromoteLearner { node: n } => match replica(*n) {
            None => return Err(ProtoError::Invalid(format!("no replica on node {n} to promote"))),
            Some(r) if r.is_voter() => {}
            Some(_) => {
                planned_here()?;
                caught_up(*n)?;
                node.promote_learner(shard, *n).await.map_err(write_err)?;
            }
        },
        Step::VerifyReplica { node: n } => {
            if replica(*n).is_none() {
                return Err(ProtoError::Invalid(format!("no replica on node {n} to verify")));
            }
            if *n == inner.me.id {
                return Err(ProtoError::Invalid("the leader's replica is what others are verified against".into()));
            }
            caught_up(*n)?;
            let ours = node.compute_checksum(shard, desc.epoch()).await.map_err(write_err)?;
            let request = Request::ReplicaChecksum { shard, index: ours.index };
            let timeout = Duration::from_millis(inner.cfg.rpc_timeout_ms + CHECKSUM_MAX_WAIT_MS);
            return match inner.call_within(*n, request, timeout).await {
                Ok(Response::Checksum { index, checksum }) if index == ours.index => {
                    Ok(Response::Verified { index, leader: ours.checksum.to_string(), replica: checksum })
                }
                Ok(Response::Error(e)) => Err(ProtoError::Retry(format!("node {n}: {e}"))),
                Ok(other) => Err(ProtoError::Internal(format!("node {n} answered a checksum with {other:?}"))),
                Err(e) => Err(ProtoError::Retry(format!("node {n}: {e}"))),
            };
        }
        Step::SwapReplica { promote, demote } => {
            let (p, d) = (replica(*promote), replica(*demote));
            match (p, d) {
                (None, _) => return Err(ProtoError::Invalid(format!("no replica on node {promote} to promote"))),
                (Some(p), d) if p.is_voter() && d.is_none_or(|d| !d.is_voter()) => {} // done
                (Some(p), Some(d)) if !p.is_voter() && d.is_voter() => {
                    if *demote == inner.me.id {
                        hand_over(inner, &status).await?;
                        return Err(ProtoError::Retry(
                            "handing the leadership away before demoting this replica".into(),
                        ));
                    }
                    planned_here()?;
                    caught_up(*promote)?;
                    node.swap_replicas(shard, *promote, *demote).await.map_err(write_err)?;
                }
                _ => {
                    return Err(ProtoError::Invalid(format!(
                        "shard {shard}: node {promote} is not a learner or node {demote} not a voter"
                    )))
                }
            }
        }
        Step::RemoveReplica { node: n } => {
            if replica(*n).is_none() {
                return Ok(Response::Done);
            }
            planned_here()?;
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
    Ok(Response::Done)
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
