//! The shard manager's runtime: it runs while this node's replica of the meta shard leads.
//!
//! Every `schedule-interval-ms`, and at once when a heartbeat raised a disk warning: if the local meta replica leads and no manager runs, read the
//! meta shard (a linearizable scan, so every record a predecessor wrote is seen) and build the
//! manager from it (or bootstrap one in a brand-new cluster); tick it; write its records in
//! order; only then send its commands. A failed write means the leadership moved: the
//! manager is dropped and the next leader starts from what is durable.
//!
//! The manager's runtime while the local meta replica leads: load (linearizable scan of `\xffm/`)
//! or bootstrap, feed the failure analysis's risks, tick, write the records in order (`meta_writes`
//! mutex), then send the commands (bounded in flight, one per operator at a time); a `Verified`
//! answer is recorded with its operator. A failed write drops the manager.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use presage_client::{ProtoError, Request, Response};
use presage_engine::{Engine, KeyRange};
use presage_replication::ShardStatus;
use presage_shardmgr::meta::{PersistedState, META_PREFIX};
use presage_shardmgr::{Manager, NodeState, Step, Verification, META_SHARD_ID};

use super::error::ServerError;
use super::meta_io::{persist, scan_meta};
use super::{lock, pfa_store, Inner};

pub(crate) async fn run<E: Engine>(inner: Arc<Inner<E>>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(inner.cfg.schedule_interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let commands = Arc::new(tokio::sync::Semaphore::new(inner.cfg.max_commands_in_flight));
    // Operators with a step on its way: a step is not sent again before its answer came (a
    // verification resent while the last one still scans would only replace its own
    // checksum round on the replicas).
    let sending: Arc<std::sync::Mutex<BTreeSet<u64>>> = Arc::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = inner.manager_wake.notified() => {}
        }
        let status = match inner.node.status(META_SHARD_ID).await {
            Ok(s) => s,
            Err(presage_replication::Error::Stopped) => {
                tracing::info!("replication node stopped; shard manager runtime ends");
                return;
            }
            // A full mailbox (a slow disk holding the node's loop back) passes: the next
            // round asks again.
            Err(e) => {
                tracing::debug!(error = %e, "meta shard status not read this round");
                continue;
            }
        };
        if let Some(s) = &status {
            *lock(&inner.manager_hint) = s.leader;
            *lock(&inner.manager_known) = s.leader;
        }
        let leading = status.as_ref().is_some_and(ShardStatus::is_leader);
        if !leading {
            if lock(&inner.manager).take().is_some() {
                tracing::info!(node = inner.me.id, "no longer the meta shard's leader: shard manager stopped");
            }
            continue;
        }
        let Some(status) = status else { continue };
        if lock(&inner.manager).is_none() {
            match load(&inner, &status).await {
                Ok(m) => {
                    tracing::info!(node = inner.me.id, shards = m.directory().len(), "shard manager started");
                    let nodes: Vec<u64> = m.nodes().filter(|n| n.state != NodeState::Removed).map(|n| n.id).collect();
                    let down: BTreeSet<u64> = m.nodes().filter(|n| n.state == NodeState::Down).map(|n| n.id).collect();
                    *lock(&inner.manager) = Some(m);
                    pfa_store::on_manager_start(&inner, &nodes, &down, inner.clock.now_ms()).await;
                }
                Err(e) => {
                    tracing::warn!(node = inner.me.id, error = %e, "could not start the shard manager; retrying");
                    continue;
                }
            }
        }
        let order = inner.meta_writes.lock().await;
        let now = inner.clock.now_ms();
        let inputs = lock(&inner.pfa).migration_inputs();
        let Some((effects, down, removed)) = lock(&inner.manager).as_mut().map(|m| {
            m.set_risks(inputs);
            let effects = m.tick(now);
            let of = |s: NodeState| m.nodes().filter(|n| n.state == s).map(|n| n.id).collect::<BTreeSet<u64>>();
            // A node down for a maintenance window has not failed: the failure analysis
            // neither learns from it nor counts it.
            let excused = m.down_excused();
            let down = of(NodeState::Down).difference(&excused).copied().collect();
            (effects, down, of(NodeState::Removed))
        }) else {
            continue;
        };
        let pfa_round = lock(&inner.pfa).round(now, &down, &removed);
        tracing::trace!(
            node = inner.me.id,
            now,
            writes = effects.writes.len(),
            commands = effects.commands.len(),
            "manager round"
        );
        if let Err(e) = persist(&inner, effects.writes).await {
            abdicate(&inner, &e);
            continue;
        }
        // The failure analysis's records are advisory: a failed write loses a minute or an
        // episode, never a decision, so it does not stop the manager.
        if let Err(e) = pfa_store::persist_records(&inner, pfa_round.writes).await {
            tracing::warn!(error = %e, "failure-analysis records not written");
        }
        drop(order);
        if let Some(generation) = pfa_round.retrain {
            tokio::spawn(pfa_store::retrain(Arc::clone(&inner), generation, now));
        }
        for op in effects.finished {
            tracing::info!(operator = op.id, shard = op.shard, kind = ?op.kind, status = ?op.status, "operator finished");
        }
        for mig in effects.migrations {
            tracing::info!(
                migration = mig.id,
                node = mig.node,
                target = ?mig.target,
                cause = ?mig.cause,
                stage = ?mig.stage,
                risk = ?mig.risk_at_start,
                "migration"
            );
        }
        for command in effects.commands {
            if lock(&sending).contains(&command.operator) {
                continue;
            }
            let Ok(permit) = Arc::clone(&commands).try_acquire_owned() else {
                tracing::debug!("too many operator steps in flight; the manager resends later");
                break;
            };
            lock(&sending).insert(command.operator);
            let inner = Arc::clone(&inner);
            let sending = Arc::clone(&sending);
            tokio::spawn(async move {
                let operator = command.operator;
                let _done = Sent { sending, operator };
                let to = command.leader;
                let shard = command.shard;
                // A merge step waits up to the confirm timeout, then may roll back.
                let timeout = Duration::from_millis(inner.cfg.rpc_timeout_ms + 2 * inner.cfg.merge_confirm_timeout_ms);
                let verify = match &command.step {
                    Step::VerifyReplica { node } => Some((*node, command.epoch.conf_ver)),
                    _ => None,
                };
                match inner.call_within(to, Request::Execute { command }, timeout).await {
                    Ok(Response::Done) => {}
                    Ok(Response::Verified { index, leader, replica }) => {
                        let Some((node, conf_ver)) = verify else { return };
                        if leader != replica {
                            tracing::warn!(operator, shard, node, index, %leader, %replica, "replica differs from its leader");
                        }
                        let at_ms = inner.clock.now_ms();
                        let v = Verification { node, conf_ver, index, leader, replica, at_ms };
                        if let Some(m) = lock(&inner.manager).as_mut() {
                            m.record_verification(operator, v);
                        }
                    }
                    Ok(Response::Error(ProtoError::NotLeader { leader: Some(l), .. })) => {
                        if let Some(m) = lock(&inner.manager).as_mut() {
                            m.note_leader(shard, l);
                        }
                    }
                    Ok(Response::Error(e)) => {
                        tracing::debug!(operator, shard, node = to, error = %e, "operator step not done yet")
                    }
                    Ok(other) => {
                        tracing::warn!(operator, shard, node = to, answer = ?other, "unexpected answer to a step")
                    }
                    Err(e) => tracing::debug!(operator, shard, node = to, error = %e, "operator step not delivered"),
                }
                drop(permit);
            });
        }
    }
}

/// Drops the manager after a failed meta write (the leadership moved, or the write's outcome
/// is unknown): the next manager reloads what is durable.
pub(crate) fn abdicate<E: Engine>(inner: &Inner<E>, error: &ServerError) {
    if lock(&inner.manager).take().is_some() {
        tracing::warn!(node = inner.me.id, %error, "meta write failed: shard manager stopped until it reloads");
    }
}

/// Reads the persisted state and builds the manager; bootstraps one when the meta shard is
/// empty and this node is its only replica (a brand-new cluster).
async fn load<E: Engine>(inner: &Inner<E>, status: &ShardStatus) -> Result<Manager, ServerError> {
    let epoch = status.descriptor.epoch();
    let mut end = META_PREFIX.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let range = KeyRange::new(META_PREFIX.to_vec(), Some(end))?;
    let pairs = scan_meta(inner, epoch, range, usize::MAX).await?;
    let state = PersistedState::decode(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))?;
    let cfg = inner.cfg.shard_manager.clone();
    let now = inner.clock.now_ms();
    if let Some(cluster) = &state.cluster {
        let known = inner.cluster_id.load(std::sync::atomic::Ordering::SeqCst);
        if known != 0 && known != cluster.cluster_id {
            return Err(ServerError::Meta(format!(
                "the meta shard belongs to cluster {:#x}, this node to cluster {known:#x}",
                cluster.cluster_id
            )));
        }
        inner.cluster_id.store(cluster.cluster_id, std::sync::atomic::Ordering::SeqCst);
        return Ok(Manager::recover(cfg, state, now)?);
    }
    let voters: Vec<u64> = status.descriptor.replicas.iter().filter(|r| r.is_voter()).map(|r| r.node_id).collect();
    if voters != [inner.me.id] {
        return Err(ServerError::Meta("it holds no cluster record but has other replicas".into()));
    }
    // The bootstrapping node made the cluster's id when it bootstrapped its store (an
    // in-process test cluster leaves it to the manager).
    let cluster_id = match inner.cluster_id.load(std::sync::atomic::Ordering::SeqCst) {
        0 => rand::random::<u64>() | 1,
        known => known,
    };
    inner.cluster_id.store(cluster_id, std::sync::atomic::Ordering::SeqCst);
    tracing::info!(node = inner.me.id, cluster_id, "bootstrapping a new cluster");
    Ok(Manager::bootstrap(cfg, cluster_id, inner.me.clone(), now)?)
}

/// Takes an operator off the in-flight set when its step's answer came (or the task ended).
struct Sent {
    sending: Arc<std::sync::Mutex<BTreeSet<u64>>>,
    operator: u64,
}

impl Drop for Sent {
    fn drop(&mut self) {
        lock(&self.sending).remove(&self.operator);
    }
}
