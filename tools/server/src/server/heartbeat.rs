//! The node's heartbeat: every `heartbeat-interval-ms`, node stats and a report per shard it
//! leads (descriptor, load since the last report, approximate size) go to the shard manager,
//! with what it served for shards it follows (replica reads), which the manager adds to their
//! leaders' next reports.
//!
//! Every `heartbeat-interval-ms`, node stats and one report per led shard (descriptor, load,
//! approximate size) to the manager; re-joins if the manager forgot it. With an agent set, the
//! heartbeat carries its sample, plus apply lag, the round trip to the fastest peer (`Hello` to at
//! most 8 peers) and the mean proposal latency. The node keeps its last
//! `MAX_TELEMETRY_BACKLOG_SAMPLES` samples and sends them when the manager asks
//! (`telemetry_backlog_wanted` in the ack). A `Busy` replication node skips a beat. A loop that
//! does not give its statuses within the interval (a stalled disk blocks it) still sends the
//! telemetry, with the last stats and no shard or replica reports: the stall is what the
//! manager most needs to hear about. The ack names replicas to check with their peers: stale
//! ones (a newer configuration without this node) and unlisted ones (for those, the node asks
//! the manager which shard holds the replica's start key now, and that shard's members whether
//! the replica's shard was merged away).

use std::sync::Arc;
use std::time::Duration;

use presage_client::{ProtoError, Request, Response};
use presage_engine::{Cf, Engine};
use presage_shardmgr::{LoadReport, NodeHeartbeat, NodeId, NodeStats, ShardReport, META_SHARD_ID};

use super::convert::{descriptor, meta_epoch, shard_meta};
use super::{lock, Inner};

pub(crate) async fn run<E: Engine>(inner: Arc<Inner<E>>) {
    let interval_ms = inner.cfg.shard_manager.heartbeat_interval_ms;
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    let mut last_beat: Option<(NodeStats, Vec<presage_replication::ShardStatus>)> = None;
    loop {
        ticker.tick().await;
        super::disk_space::check(&inner);
        // The loop answers within the interval, or its disk is stalled: then the manager
        // still gets the telemetry (which shows the stall), with the last stats and no
        // shard reports.
        let wait = Duration::from_millis(interval_ms);
        let statuses = match tokio::time::timeout(wait, inner.node.statuses()).await {
            Ok(Ok(s)) => s,
            Ok(Err(presage_replication::Error::Stopped)) => {
                tracing::info!("replication node stopped; heartbeats end");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "replica statuses not read; heartbeat skipped");
                continue;
            }
            Err(_) => {
                let Some((stats, known)) = &last_beat else { continue };
                tracing::debug!("replica statuses not read in time; telemetry-only heartbeat");
                let telemetry = sample(&inner, known, false).await;
                let telemetry_backlog = backlog(&inner, telemetry.as_ref());
                let (shards, replicas) = (Vec::new(), Vec::new());
                let stats = NodeStats {
                    shedding_leaders: inner.shedding_leaders.load(std::sync::atomic::Ordering::Relaxed),
                    ..*stats
                };
                // This node's own shard manager (if it ran one) is as stalled as its loop: the
                // telemetry goes to another node, which names the manager elected meanwhile.
                let replica_loads = Vec::new();
                let hb = NodeHeartbeat {
                    node: inner.me.id,
                    stats,
                    shards,
                    replicas,
                    replica_loads,
                    telemetry,
                    telemetry_backlog,
                };
                send(&inner, hb, true).await;
                continue;
            }
        };
        let elapsed_ms = (last.elapsed().as_millis() as u64).max(1);
        last = tokio::time::Instant::now();
        let mut stats = NodeStats::default();
        let mut shards = Vec::new();
        let mut replica_loads = Vec::new();
        {
            let mut load = lock(&inner.load);
            let held: std::collections::HashSet<u64> = statuses.iter().map(|s| s.descriptor.id).collect();
            load.retain(|id, _| held.contains(id));
            for s in &statuses {
                stats.replicas += 1;
                if s.descriptor.id == META_SHARD_ID && s.leader.is_some() {
                    // This node's own Raft state: the manager as proven as it gets.
                    *lock(&inner.manager_hint) = s.leader;
                    *lock(&inner.manager_known) = s.leader;
                }
                if !s.is_leader() {
                    // What it served as a follower (replica reads) adds to the leader's report.
                    let report = load.get_mut(&s.descriptor.id).map(|r| r.take(elapsed_ms));
                    if let Some(r) = report.filter(|r| r.read_ops + r.write_ops + r.errors > 0) {
                        replica_loads.push((s.descriptor.id, r));
                    }
                    continue;
                }
                stats.leaders += 1;
                let report = load.get_mut(&s.descriptor.id).map(|r| r.take(elapsed_ms));
                let report = report.unwrap_or(LoadReport { interval_ms: elapsed_ms, ..LoadReport::default() });
                let size = s.descriptor.range().ok().and_then(|r| inner.engine.approximate_stats(Cf::Data, &r).ok());
                let size = size.unwrap_or_default();
                shards.push(ShardReport {
                    shard: shard_meta(&s.descriptor, Some(inner.me.id)),
                    load: report,
                    size_bytes: size.size_bytes,
                    keys: size.keys,
                });
            }
        }
        // Every replica's data, the Raft logs and what the memtables will flush: the bytes
        // the node's storage holds (capacity advice projects them).
        let storage = inner.engine.storage_stats();
        stats.used_bytes = storage.sst_bytes.saturating_add(storage.memtable_bytes);
        stats.available_bytes = inner.me.capacity_bytes.saturating_sub(stats.used_bytes);
        stats.shedding_leaders = inner.shedding_leaders.load(std::sync::atomic::Ordering::Relaxed);
        let replicas = statuses.iter().map(|s| (s.descriptor.id, meta_epoch(s.descriptor.epoch()))).collect();
        let telemetry = sample(&inner, &statuses, true).await;
        let telemetry_backlog = backlog(&inner, telemetry.as_ref());
        let heartbeat =
            NodeHeartbeat { node: inner.me.id, stats, shards, replicas, replica_loads, telemetry, telemetry_backlog };
        send(&inner, heartbeat, false).await;
        last_beat = Some((stats, statuses));
    }
}

/// Telemetry samples a node keeps for a new shard manager (oldest dropped first): more than
/// the failure analysis's warm-up (`presage_pfa::aggregate::AggregatorConfig::
/// evidence_warmup_samples`, 120), so that a manager taking over judges the node at once.
pub const MAX_TELEMETRY_BACKLOG_SAMPLES: usize = 300;

/// The samples before `newest` when the manager asked for them (then the request is spent);
/// `newest` joins the backlog either way.
fn backlog<E: Engine>(
    inner: &Inner<E>,
    newest: Option<&presage_shardmgr::TelemetryReport>,
) -> Option<Vec<presage_shardmgr::TelemetryReport>> {
    let wanted = inner.telemetry_backlog_wanted.swap(false, std::sync::atomic::Ordering::Relaxed);
    let mut ring = lock(&inner.telemetry_backlog);
    let out = wanted.then(|| ring.iter().cloned().collect());
    if let Some(t) = newest {
        if ring.len() == MAX_TELEMETRY_BACKLOG_SAMPLES {
            ring.pop_front();
        }
        ring.push_back(t.clone());
    }
    debug_assert!(ring.len() <= MAX_TELEMETRY_BACKLOG_SAMPLES);
    out
}

/// Peers whose round trip one sample measures at most.
pub const MAX_RTT_PROBES_PER_SAMPLE: usize = 8;
/// How long a round-trip probe waits, ms.
pub const RTT_PROBE_TIMEOUT_MS: u64 = 500;

/// The agent's sample, with the Raft-side figures only the server knows: apply lag over the
/// node's replicas, the round trip to the fastest peer (a `Hello` to each node sharing a shard
/// with this one), and the mean proposal-to-reply time of the writes it led. `fresh`: the
/// statuses are this beat's (else the last ones the loop gave, and apply lag is unmeasured).
async fn sample<E: Engine>(
    inner: &Arc<Inner<E>>,
    statuses: &[presage_replication::ShardStatus],
    fresh: bool,
) -> Option<presage_shardmgr::TelemetryReport> {
    if lock(&inner.agent).is_none() {
        return None;
    }
    let mut peers: Vec<u64> = statuses
        .iter()
        .flat_map(|s| s.descriptor.replicas.iter().map(|r| r.node_id))
        .filter(|n| *n != inner.me.id)
        .collect();
    peers.sort_unstable();
    peers.dedup();
    peers.truncate(MAX_RTT_PROBES_PER_SAMPLE);
    let probes = peers.iter().map(|&p| async move {
        let started = std::time::Instant::now();
        let timeout = Duration::from_millis(RTT_PROBE_TIMEOUT_MS);
        match inner.call_within(p, presage_client::Request::Hello, timeout).await {
            Ok(Response::Hello { .. }) => Some(started.elapsed().as_secs_f64() * 1e3),
            _ => None,
        }
    });
    let rtts: Vec<f64> = futures::future::join_all(probes).await.into_iter().flatten().collect();
    let (count, secs) = std::mem::take(&mut *lock(&inner.proposals));
    let raft = crate::agent::RaftSignals {
        apply_lag_entries: fresh.then(|| statuses.iter().map(|s| s.commit.saturating_sub(s.applied)).sum()),
        peer_rtt_min_ms: rtts.into_iter().reduce(f64::min),
        proposal_mean_ms: (count > 0).then(|| secs * 1e3 / count as f64),
    };
    let at_ms = inner.clock.now_ms();
    let mut guard = lock(&inner.agent);
    let sample = guard.as_mut()?.sample(at_ms, raft);
    Some(presage_shardmgr::TelemetryReport {
        at_ms: sample.at_ms,
        values: sample.values.into_iter().map(|(s, v)| (s.name().to_string(), v)).collect(),
    })
}

/// Sends to the node believed to run the shard manager (this one if none is known), and once
/// more to the manager a node that does not run it names; re-joins if the manager does not
/// know this node. `elsewhere`: never to this node itself (its loop is stalled).
async fn send<E: Engine>(inner: &Arc<Inner<E>>, heartbeat: NodeHeartbeat, elsewhere: bool) {
    let first = *lock(&inner.manager_hint);
    if let Some(redirect) = send_once(inner, &heartbeat, elsewhere).await {
        if redirect != inner.me.id && Some(redirect) != first {
            send_once(inner, &heartbeat, elsewhere).await;
        }
    }
}

/// One heartbeat; returns the manager a node that does not run it named.
async fn send_once<E: Engine>(inner: &Arc<Inner<E>>, heartbeat: &NodeHeartbeat, elsewhere: bool) -> Option<NodeId> {
    let hint = lock(&inner.manager_hint).filter(|h| !(elsewhere && *h == inner.me.id));
    // Without a hint, the seeds and the other known nodes in turn: one that does not know
    // the manager either (an emptied node holds no meta replica to learn it from) must not
    // be asked forever, and a node without seeds (it bootstrapped the cluster) must not ask
    // only itself.
    let seed = {
        let mut candidates = lock(&inner.seeds).clone();
        for id in lock(&inner.known_peers).iter() {
            if !candidates.contains(id) {
                candidates.push(*id);
            }
        }
        candidates.retain(|id| !(elsewhere && *id == inner.me.id));
        let turn = inner.heartbeat_turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (!candidates.is_empty()).then(|| candidates[turn % candidates.len()])
    };
    let to = hint.or(seed).unwrap_or(inner.me.id);
    let nodes_digest = inner.nodes_digest.load(std::sync::atomic::Ordering::Relaxed);
    let request = Request::Heartbeat { heartbeat: heartbeat.clone(), nodes_digest };
    match ask_manager(inner, to, request).await {
        Ok(Response::HeartbeatAck { manager, stale, unlisted, nodes, telemetry_backlog_wanted }) => {
            inner.learn(&nodes);
            if telemetry_backlog_wanted {
                inner.telemetry_backlog_wanted.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            *lock(&inner.manager_hint) = Some(manager);
            // Only the manager answers heartbeats; one that names another node is wrong.
            if manager == to {
                *lock(&inner.manager_known) = Some(manager);
            }
            for shard in stale {
                tracing::info!(
                    node = inner.me.id,
                    shard = shard.id,
                    "the shard manager reports this replica stale; asking the shard's members"
                );
                if let Err(e) = inner.node.probe_stale(descriptor(&shard)).await {
                    tracing::warn!(shard = shard.id, error = %e, "could not ask the shard's members");
                }
            }
            if manager == to && !unlisted.is_empty() {
                spawn_probe_unlisted(inner, to, unlisted);
            }
        }
        Ok(Response::Error(ProtoError::NotManager { leader })) => {
            *lock(&inner.manager_hint) = leader;
            return leader;
        }
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
    None
}

/// Probes the unlisted replicas in a task of its own (heartbeats never wait for it), at most
/// one at a time and for at most ten heartbeat intervals.
fn spawn_probe_unlisted<E: Engine>(inner: &Arc<Inner<E>>, manager: NodeId, unlisted: Vec<u64>) {
    use std::sync::atomic::Ordering;
    if inner.probing_unlisted.swap(true, Ordering::AcqRel) {
        return;
    }
    let inner = Arc::clone(inner);
    let deadline = Duration::from_millis(10 * inner.cfg.shard_manager.heartbeat_interval_ms);
    tokio::spawn(async move {
        if tokio::time::timeout(deadline, probe_unlisted(&inner, manager, unlisted)).await.is_err() {
            tracing::debug!("probing unlisted replicas took too long; the next heartbeat tries again");
        }
        inner.probing_unlisted.store(false, Ordering::Release);
    });
}

/// For each replica of a shard the manager does not list (at most
/// `MAX_UNLISTED_PER_HEARTBEAT`), asks the manager which shard holds the replica's start key
/// now and has that shard's members asked whether the replica's shard was merged away
/// ([`presage_replication::Store::probe_merged`]).
async fn probe_unlisted<E: Engine>(inner: &Arc<Inner<E>>, manager: NodeId, unlisted: Vec<u64>) {
    for id in unlisted.into_iter().take(presage_shardmgr::MAX_UNLISTED_PER_HEARTBEAT) {
        let Ok(Some(status)) = inner.node.status(id).await else { continue };
        let request = Request::Routes { key: status.descriptor.start.clone(), max_shards: 1 };
        let owner = match ask_manager(inner, manager, request).await {
            Ok(Response::Routes { shards, .. }) => shards.into_iter().find(|s| s.id != id),
            _ => None,
        };
        let Some(owner) = owner.filter(|s| descriptor(s).contains(&status.descriptor.start)) else { continue };
        tracing::debug!(node = inner.me.id, shard = id, owner = owner.id, "an unlisted replica; asking whether merged");
        if let Err(e) = inner.node.probe_merged(id, descriptor(&owner)).await {
            tracing::warn!(shard = id, error = %e, "could not ask whether the shard was merged");
        }
    }
}

/// `request` to the shard manager on node `to`: served here when that is this node.
async fn ask_manager<E: Engine>(
    inner: &Arc<Inner<E>>,
    to: NodeId,
    request: Request,
) -> Result<Response, presage_client::RpcError> {
    if to == inner.me.id {
        Ok(inner.serve(presage_client::Caller::Local, request).await)
    } else {
        inner.call(to, request).await
    }
}
