//! The node's heartbeat: every `heartbeat-interval-ms`, node stats and a report per shard it
//! leads (descriptor, load since the last report, approximate size) go to the shard manager.

use std::sync::Arc;
use std::time::Duration;

use presage_client::{ProtoError, Request, Response};
use presage_engine::{Cf, Engine};
use presage_shardmgr::{LoadReport, NodeHeartbeat, NodeStats, ShardReport, META_SHARD_ID};

use super::convert::{descriptor, meta_epoch, shard_meta};
use super::{lock, Inner};

pub(crate) async fn run<E: Engine>(inner: Arc<Inner<E>>) {
    let interval_ms = inner.cfg.shard_manager.heartbeat_interval_ms;
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        let statuses = match inner.node.statuses().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "replication node stopped; heartbeats end");
                return;
            }
        };
        let elapsed_ms = (last.elapsed().as_millis() as u64).max(1);
        last = tokio::time::Instant::now();
        let mut stats = NodeStats::default();
        let mut shards = Vec::new();
        {
            let mut load = lock(&inner.load);
            let led: std::collections::HashSet<u64> =
                statuses.iter().filter(|s| s.is_leader()).map(|s| s.descriptor.id).collect();
            load.retain(|id, _| led.contains(id));
            for s in &statuses {
                stats.replicas += 1;
                if s.descriptor.id == META_SHARD_ID && s.leader.is_some() {
                    *lock(&inner.manager_hint) = s.leader;
                }
                if !s.is_leader() {
                    continue;
                }
                stats.leaders += 1;
                let report = load.get_mut(&s.descriptor.id).map(|r| r.take(elapsed_ms));
                let report = report.unwrap_or(LoadReport { interval_ms: elapsed_ms, ..LoadReport::default() });
                let size = s.descriptor.range().ok().and_then(|r| inner.engine.approximate_stats(Cf::Data, &r).ok());
                let size = size.unwrap_or_default();
                stats.used_bytes += size.size_bytes;
                shards.push(ShardReport {
                    shard: shard_meta(&s.descriptor, Some(inner.me.id)),
                    load: report,
                    size_bytes: size.size_bytes,
                    keys: size.keys,
                });
            }
        }
        stats.available_bytes = inner.me.capacity_bytes.saturating_sub(stats.used_bytes);
        let replicas = statuses.iter().map(|s| (s.descriptor.id, meta_epoch(s.descriptor.epoch()))).collect();
        let heartbeat = NodeHeartbeat { node: inner.me.id, stats, shards, replicas };
        send(&inner, heartbeat).await;
    }
}

/// Sends to the node believed to run the shard manager (this one if none is known: it
/// forwards), following one redirect; re-joins if the manager does not know this node.
async fn send<E: Engine>(inner: &Arc<Inner<E>>, heartbeat: NodeHeartbeat) {
    let hint = *lock(&inner.manager_hint);
    let seed = {
        let seeds = lock(&inner.seeds);
        (!seeds.is_empty())
            .then(|| seeds[(heartbeat.stats.replicas as usize + inner.clock.now_ms() as usize) % seeds.len()])
    };
    let to = hint.or(seed).unwrap_or(inner.me.id);
    let nodes_digest = inner.nodes_digest.load(std::sync::atomic::Ordering::Relaxed);
    let request = Request::Heartbeat { heartbeat: heartbeat.clone(), nodes_digest };
    let answer = if to == inner.me.id { Ok(inner.serve(request).await) } else { inner.call(to, request).await };
    match answer {
        Ok(Response::HeartbeatAck { manager, stale, nodes }) => {
            inner.learn(&nodes);
            *lock(&inner.manager_hint) = Some(manager);
            for shard in stale {
                tracing::info!(
                    node = inner.me.id,
                    shard = shard.id,
                    "the shard manager reports this replica stale; destroying it"
                );
                if let Err(e) = inner.node.tombstone(descriptor(&shard)).await {
                    tracing::warn!(shard = shard.id, error = %e, "could not hand the tombstone to the node");
                }
            }
        }
        Ok(Response::Error(ProtoError::NotManager { leader })) => *lock(&inner.manager_hint) = leader,
        Ok(Response::Error(ProtoError::JoinRefused(_))) => {
            // The manager lost track of this node (it never joined, or its join was not
            // durable): join again.
            let join = Request::Join { node: inner.me.clone() };
            if let Err(e) = inner.call(to, join).await {
                tracing::debug!(error = %e, "re-join failed");
            }
        }
        Ok(other) => tracing::debug!(answer = ?other, "heartbeat not taken"),
        Err(e) => {
            tracing::debug!(node = to, error = %e, "heartbeat not delivered");
            *lock(&inner.manager_hint) = None;
        }
    }
}
