//! The nemesis on a sharded cluster: clients work through the client library (routing by a
//! cached directory) while the nemesis splits shards at the clients' keys, merges neighbours,
//! moves leaderships and replicas (a second replication group joins mid-run, so shards move
//! between groups), evacuates node 1 onto a spare (node 7: a node migration, design.md §6,
//! through the same verified joint-consensus swaps), partitions and isolates nodes, delays
//! messages, and kills and restarts nodes - the shard manager's node included; half the kills
//! are power losses that keep only a random prefix of the unsynced writes - and fails a
//! node's disk (fsync errors, write errors, a full disk: it hands off, stops and loses power). The shard
//! manager's own policies split and merge by load at the same time. Afterwards everything
//! heals and the history, final reads included (a lost acknowledged write shows there), must
//! be linearizable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use presage_client::{Client, ClientError};
use presage_replication::Filter;
use presage_shardmgr::{AdminCommand, ManagerConfig, MigrationStage, OperatorStatus, Role, Step, META_SHARD_ID};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::linearizability::{self, KvOp, Operation, Recorder};
use crate::sharded::{manager_config, ShardedCluster};

/// Size of a sharded nemesis run.
#[derive(Debug, Clone)]
pub struct ShardedNemesisConfig {
    /// The seed of everything random.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Distinct keys, spread over the key space so that splits separate them.
    pub keys: u64,
    /// How long the nemesis acts (tokio time).
    pub duration: Duration,
}

impl ShardedNemesisConfig {
    /// The default run for `seed`: 4 clients, 6 keys, 10 s of faults.
    pub fn new(seed: u64) -> Self {
        ShardedNemesisConfig { seed, clients: 4, keys: 6, duration: Duration::from_secs(10) }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct ShardedNemesisReport {
    /// Operations in the checked history.
    pub ops: usize,
    /// Writes the cluster acknowledged.
    pub acknowledged_writes: usize,
    /// Writes whose outcome stayed unknown.
    pub unknown_writes: usize,
    /// Faults and moves the nemesis injected, in order.
    pub faults: Vec<String>,
    /// Operators the shard manager finished (its own and the nemesis's).
    pub operators: usize,
    /// Finished operators that split a shard.
    pub splits: usize,
    /// Finished operators that merged two shards.
    pub merges: usize,
    /// Node evacuations that finished (node 1's, when the nemesis started one).
    pub evacuations: usize,
    /// Power losses the nemesis caused.
    pub crashes: usize,
    /// Disk faults injected (fsync errors, write errors, a full disk).
    pub disk_faults: usize,
    /// Nodes that stopped on their own after a disk fault (fail-stop).
    pub fail_stops: usize,
    /// Unsynced writes those power losses dropped (summed over the crashes).
    pub unsynced_writes_lost: usize,
    /// Consistency checks that compared every replica (the nodes' own periodic checks).
    pub consistency_checks: u64,
    /// Checks that found replicas differing; must stay 0.
    pub consistency_mismatches: u64,
    /// The mismatches still open when they were read: (shard, what was found).
    pub inconsistent: Vec<(u64, presage_server::server::consistency::Mismatch)>,
}

/// Adds what a node's consistency checker found (read before the node stops, and at the end).
fn tally_consistency(
    report: &mut ShardedNemesisReport,
    stats: Option<presage_server::server::consistency::ConsistencyStats>,
) {
    let Some(stats) = stats else { return };
    report.consistency_checks += stats.consistent + stats.mismatches;
    report.consistency_mismatches += stats.mismatches;
    report.inconsistent.extend(stats.inconsistent);
}

fn key(k: u64) -> Vec<u8> {
    // Spread over the key space: "a/key0", "e/key1", ...
    format!("{}/key{k}", (b'a' + (k * 4 % 26) as u8) as char).into_bytes()
}

/// Manager settings of the run: splits and merges happen often.
fn nemesis_manager_config() -> ManagerConfig {
    ManagerConfig {
        load_split_qps: 40.0,
        load_split_window_ms: 1_000,
        merge_max_size_bytes: 64 << 10,
        merge_delay_ms: 1_500,
        split_merge_interval_ms: 2_000,
        operator_step_timeout_ms: 5_000,
        ..manager_config()
    }
}

async fn client(id: u64, cfg: ShardedNemesisConfig, client: Client, rec: Arc<Recorder>, stop: Arc<AtomicBool>) {
    let mut rng = SmallRng::seed_from_u64(cfg.seed ^ (id << 32) ^ 0x5a4d);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let key = key(rng.random_range(0..cfg.keys));
        let roll = rng.random_range(0..10);
        let op = if roll < 5 {
            n += 1;
            KvOp::Put(format!("c{id}-{n}").into_bytes())
        } else if roll < 6 {
            KvOp::Delete
        } else {
            KvOp::Get(None)
        };
        let call = rec.tick();
        let result = match &op {
            KvOp::Put(v) => client.put(&key, v).await.map(|()| None),
            KvOp::Delete => client.delete(&key).await.map(|()| None),
            KvOp::Get(_) => client.get(&key).await.map(Some),
        };
        let ret = rec.tick();
        match result {
            Ok(seen) => {
                let op = match op {
                    KvOp::Get(_) => KvOp::Get(seen.flatten()),
                    other => other,
                };
                rec.record(Operation { client: id, key, op, call, ret: Some(ret) });
            }
            // May have taken effect at any time after the call, or never.
            Err(ClientError::OutcomeUnknown(_)) if !matches!(op, KvOp::Get(_)) => {
                rec.record(Operation { client: id, key, op, call, ret: None });
            }
            // Certainly not done (the client retries writes only on definite errors).
            Err(_) => tokio::time::sleep(Duration::from_millis(rng.random_range(5..30))).await,
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..10))).await;
    }
}

/// Runs one seeded sharded nemesis scenario; `Err` carries the seed and what went wrong.
pub async fn run(cfg: ShardedNemesisConfig) -> Result<ShardedNemesisReport, String> {
    let seed = cfg.seed;
    let fail = |what: String| format!("sharded nemesis seed {seed} (replay with PRESAGE_TEST_SEED={seed}): {what}");
    crate::init_log();
    let mut c = ShardedCluster::start(3, seed, nemesis_manager_config()).await;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5e3e);
    let rec = Arc::new(Recorder::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut report = ShardedNemesisReport::default();
    let clients: Vec<_> = (1..=cfg.clients)
        .map(|id| {
            let cl = c.client(vec![1 + id % 3]);
            tokio::spawn(client(id, cfg.clone(), cl, Arc::clone(&rec), Arc::clone(&stop)))
        })
        .collect();

    let deadline = tokio::time::Instant::now() + cfg.duration;
    let mut filters: Vec<u64> = Vec::new();
    let mut dead: Vec<u64> = Vec::new();
    let mut second_group = false;
    let mut evacuating = false;
    // A node whose disk the nemesis failed and when, until it stops and is crashed.
    let mut faulted: Option<(u64, tokio::time::Instant)> = None;
    let fail_stop_within = Duration::from_millis(c.raft_config().fail_stop_timeout_ms + 2_000);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
        // A node that stopped after its disk failed lost power with it.
        for n in c.finished() {
            tally_consistency(&mut report, c.consistency(n));
            let loss = c.crash(n, &mut rng);
            dead.push(n);
            faulted = faulted.filter(|(f, _)| *f != n);
            report.fail_stops += 1;
            report.unsynced_writes_lost += loss.lost();
            report
                .faults
                .push(format!("node {n} stopped on its disk fault; crash keeping {} of {}", loss.kept, loss.unsynced));
        }
        if let Some((n, at)) = faulted.filter(|(_, at)| at.elapsed() > fail_stop_within) {
            // It wrote nothing since (the idle spare): its disk is mended.
            c.disks().heal(n);
            faulted = None;
            report.faults.push(format!("disk of {n} mended after {:?} without a write", at.elapsed()));
        }
        let live = c.live();
        let shards: Vec<_> = c.directory().into_iter().filter(|s| s.id != META_SHARD_ID).collect();
        let fault = match rng.random_range(0..14) {
            0 | 1 if !shards.is_empty() => {
                let k = key(rng.random_range(0..cfg.keys));
                match shards.iter().find(|s| s.contains(&k) && s.start != k) {
                    Some(s) => {
                        let step = Step::Split { key: Some(k.clone()), new_shard: 0, epoch: s.epoch };
                        let op = c.submit(s.id, vec![step], vec![]);
                        format!("split shard {} at {:?}: {op:?}", s.id, String::from_utf8_lossy(&k))
                    }
                    None => "split: key already a boundary".into(),
                }
            }
            2 if shards.len() >= 2 => {
                let i = rng.random_range(1..shards.len());
                let (l, r) = (&shards[i - 1], &shards[i]);
                let op = c.submit(r.id, vec![Step::Merge { target: l.id }], vec![Step::ResolveMerge { target: l.id }]);
                format!("merge shard {} into {}: {op:?}", r.id, l.id)
            }
            3 if !shards.is_empty() => {
                let s = &shards[rng.random_range(0..shards.len())];
                let voters: Vec<u64> = s.replicas.iter().filter(|r| r.role == Role::Voter).map(|r| r.node).collect();
                let to = voters[rng.random_range(0..voters.len())];
                let op = c.submit(s.id, vec![Step::TransferLeader { to }], vec![]);
                format!("transfer shard {} to {to}: {op:?}", s.id)
            }
            4 if !second_group => {
                // A second group: the manager moves shards (replica by replica) onto it. Joins
                // need the shard manager reachable: heal first.
                for id in filters.drain(..) {
                    c.net.remove_filter(id);
                }
                for id in 4..=6 {
                    c.add_node(id).await;
                }
                second_group = true;
                "nodes 4-6 join (a second group)".into()
            }
            5 => {
                let all = c.live();
                let mut a: Vec<u64> = all.iter().copied().filter(|_| rng.random_bool(0.5)).collect();
                if a.is_empty() || a.len() == all.len() {
                    a = vec![all[0]];
                }
                let b: Vec<u64> = all.iter().copied().filter(|n| !a.contains(n)).collect();
                filters.push(c.net.add_filter(Filter::Partition { a: a.clone(), b: b.clone() }));
                format!("partition {a:?} | {b:?}")
            }
            6 => {
                let n = live[rng.random_range(0..live.len())];
                filters.push(c.net.add_filter(Filter::Isolate(n)));
                format!("isolate {n}")
            }
            7 => {
                let max = Duration::from_millis(rng.random_range(5..40));
                filters.push(c.net.add_filter(Filter::Delay { min: Duration::ZERO, max }));
                format!("delay up to {max:?}")
            }
            13 if dead.is_empty() && faulted.is_none() => {
                // One node down at a time: this one will stop by itself.
                let n = live[rng.random_range(0..live.len())];
                let (what, faults) = crate::disks::random_stopping_fault(&mut rng);
                c.disks().fail(n, faults);
                faulted = Some((n, tokio::time::Instant::now()));
                report.disk_faults += 1;
                format!("{what} on {n}")
            }
            8 if dead.is_empty() && faulted.is_none() => {
                // One node down at a time, so every group keeps a majority.
                let n = if rng.random_bool(0.5) {
                    c.manager_node().unwrap_or(live[0])
                } else {
                    live[rng.random_range(0..live.len())]
                };
                dead.push(n);
                tally_consistency(&mut report, c.consistency(n));
                if rng.random_bool(0.5) {
                    c.kill(n);
                    format!("kill {n}")
                } else {
                    // A power loss: a random prefix of the writes since the last sync survives.
                    let loss = c.crash(n, &mut rng);
                    report.crashes += 1;
                    report.unsynced_writes_lost += loss.lost();
                    format!("crash {n} keeping {} of {} unsynced writes", loss.kept, loss.unsynced)
                }
            }
            9 if !dead.is_empty() => {
                let n = dead.remove(0);
                c.restart(n);
                format!("restart {n}")
            }
            10 if !evacuating => {
                // A spare in node 1's region (r1) joins, and node 1 is evacuated onto it
                // while the faults go on. Joins need the shard manager reachable: heal first.
                for id in filters.drain(..) {
                    c.net.remove_filter(id);
                }
                if !c.live().contains(&7) && !dead.contains(&7) {
                    c.add_node(7).await;
                }
                evacuating = true;
                format!("evacuate 1: {:?}", c.admin(AdminCommand::Evacuate { node: 1 }))
            }
            _ => {
                for id in filters.drain(..) {
                    c.net.remove_filter(id);
                }
                "heal".into()
            }
        };
        report.faults.push(fault);
        if filters.len() > 1 {
            let id = filters.remove(0);
            c.net.remove_filter(id);
        }
    }

    // Heal, bring every node back, stop the clients, let the cluster settle.
    c.net.clear_filters();
    c.disks().heal_all();
    // A node already failing finishes its fail-stop (it never serves from that disk again).
    tokio::time::sleep(Duration::from_millis(c.raft_config().fail_stop_timeout_ms + 500)).await;
    for n in c.finished() {
        tally_consistency(&mut report, c.consistency(n));
        c.kill(n);
        dead.push(n);
        report.fail_stops += 1;
    }
    for n in dead.drain(..) {
        c.restart(n);
    }
    stop.store(true, Ordering::SeqCst);
    for t in clients {
        t.await.map_err(|e| fail(format!("client task failed: {e}")))?;
    }
    let settle = Duration::from_secs(60);
    let settled = tokio::time::timeout(settle, async {
        let busy = |m: &mut presage_shardmgr::Manager| {
            m.stats().running_operators > 0
                || m.migrations(0)
                    .iter()
                    .any(|v| matches!(v.migration.stage, MigrationStage::Preparing | MigrationStage::CuttingOver))
        };
        while c.with_manager(busy).unwrap_or(true) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if settled.is_err() {
        let running =
            c.with_manager(|m| m.operators().filter(|o| !o.status.is_finished()).cloned().collect::<Vec<_>>());
        let nodes = c.with_manager(|m| m.nodes().map(|n| (n.id, n.state, n.group)).collect::<Vec<_>>());
        let migrations = c.with_manager(|m| m.migrations(0).into_iter().map(|v| v.migration).collect::<Vec<_>>());
        return Err(fail(format!(
            "operators or migrations still running {settle:?} after healing: {running:?}\nmigrations \
             {migrations:?}\nnodes (id, state, group) {nodes:?}\ndirectory {:?}\nmanager on {:?}\nfaults: {:?}",
            c.directory(),
            c.manager_node(),
            report.faults
        )));
    }
    report.operators = c.with_manager(|m| m.stats().finished_operators).unwrap_or(0);
    let done_with = |pick: fn(&Step) -> bool| {
        c.with_manager(|m| {
            m.operators().filter(|o| o.status == OperatorStatus::Done && o.steps.iter().any(pick)).count()
        })
        .unwrap_or(0)
    };
    report.splits = done_with(|s| matches!(s, Step::Split { .. }));
    report.merges = done_with(|s| matches!(s, Step::Merge { .. }));
    report.evacuations = c
        .with_manager(|m| {
            m.migrations(0)
                .iter()
                .filter(|v| v.migration.node == 1 && v.migration.stage == MigrationStage::Evacuated)
                .count()
        })
        .unwrap_or(0);
    if report.evacuations > 0 && c.directory().iter().any(|s| s.replica(1).is_some()) {
        return Err(fail(format!("node 1 was evacuated but holds replicas: {:?}", c.directory())));
    }

    // Final reads of every key through a fresh client, part of the checked history.
    let reader = c.client(vec![1, 2, 3]);
    for k in 0..cfg.keys {
        let key = key(k);
        let call = rec.tick();
        let value = reader.get(&key).await.map_err(|e| fail(format!("final read failed: {e}")))?;
        let ret = rec.tick();
        rec.record(Operation { client: 0, key, op: KvOp::Get(value), call, ret: Some(ret) });
    }
    let history = rec.history();
    report.ops = history.len();
    report.acknowledged_writes = history.iter().filter(|o| !matches!(o.op, KvOp::Get(_)) && o.ret.is_some()).count();
    report.unknown_writes = history.iter().filter(|o| o.ret.is_none()).count();
    linearizability::check(&history).map_err(|e| fail(format!("{e}\nfaults: {:?}", report.faults)))?;
    for n in c.live() {
        tally_consistency(&mut report, c.consistency(n));
    }
    if report.consistency_mismatches > 0 {
        return Err(fail(format!(
            "{} consistency checks found replicas that differ; still open: {:?}",
            report.consistency_mismatches, report.inconsistent
        )));
    }
    Ok(report)
}
