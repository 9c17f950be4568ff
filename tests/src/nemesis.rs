//! A seeded nemesis run: clients put, delete and get a few keys on a cluster (half the gets
//! are replica reads sent to any node, which a follower serves after a ReadIndex round trip to
//! its leader) while a nemesis
//! partitions and isolates nodes, drops and delays messages, kills and restarts nodes (half
//! the kills are power losses that keep only a random prefix of the unsynced writes), fails
//! a node's disk (fsync errors, write errors, a full disk: the node hands off and stops, and
//! loses power with it), moves one node's clock (up to two hours either way; half the puts
//! expire in an hour, so an early expiry shows as a lost write) and moves the leader; it also quiets the clients until the group goes to sleep (quiescence)
//! and then cuts off or kills the sleeping leader. Afterwards the network heals, every node
//! comes back, the replicas must converge, and the whole history - final reads included, so
//! a lost acknowledged write shows - must be linearizable.
//!
//! Clients + seeded nemesis (partitions, isolation, drops, delays, dropped append responses,
//! kills/crashes/restarts, leader transfers, quiet phases that fail a sleeping leader), then
//! heal, converge, final reads, check.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use presage_replication::{Error, Filter, NodeHandle, Op, RaftConfig, ReadRequest, ReadResponse, RequestId};
use raft::eraftpb::MessageType;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{test_config, Cluster, Directory, SHARD};
use crate::linearizability::{self, KvOp, Operation, Recorder};

/// Size of a nemesis run.
#[derive(Debug, Clone)]
pub struct NemesisConfig {
    /// The seed of everything random.
    pub seed: u64,
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Distinct keys (few, so that operations collide).
    pub keys: u64,
    /// How long the nemesis acts (tokio time).
    pub duration: Duration,
    /// Serve reads from the leader's lease instead of ReadIndex.
    pub lease_reads: bool,
}

impl NemesisConfig {
    /// The default run for `seed`: 5 nodes, 4 clients, 3 keys, 8 s of faults; reads are
    /// served from the leader's lease (the default) except on every fourth seed, which keeps
    /// the ReadIndex-only path covered.
    pub fn new(seed: u64) -> Self {
        NemesisConfig {
            seed,
            nodes: 5,
            clients: 4,
            keys: 3,
            duration: Duration::from_secs(8),
            lease_reads: !seed.is_multiple_of(4),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct NemesisReport {
    /// Operations in the checked history.
    pub ops: usize,
    /// Writes the cluster acknowledged.
    pub acknowledged_writes: usize,
    /// Writes whose outcome stayed unknown.
    pub unknown_writes: usize,
    /// Writes whose outcome was unknown until a retry under their request id answered.
    pub resolved_retries: usize,
    /// Replica reads answered (half the reads go to any node as replica reads).
    pub replica_reads: usize,
    /// Reads served by a follower, by the nodes running at the end (a node that restarted
    /// counts from its restart).
    pub follower_reads: u64,
    /// Faults the nemesis injected, in order.
    pub faults: Vec<String>,
    /// Quiet phases that ended with a sleeping (quiescent) leader being failed.
    pub sleeping_leaders_failed: usize,
    /// Power losses the nemesis caused.
    pub crashes: usize,
    /// Unsynced writes those power losses dropped (summed over the crashes).
    pub unsynced_writes_lost: usize,
    /// Disk faults injected (fsync errors, write errors, a full disk).
    pub disk_faults: usize,
    /// Nodes that stopped on their own after a disk fault (fail-stop).
    pub fail_stops: usize,
    /// Clock jumps and drifts injected.
    pub clock_skews: usize,
    /// Reads served off the store loop under a lease by the nodes running at the end
    /// (a node that restarted counts from its restart).
    pub local_reads: u64,
}

/// Raft settings of nemesis runs: a short log (compacted past 200 entries) and small
/// snapshot chunks, so that nodes that were down or cut off often come back by snapshot.
pub fn nemesis_raft_config() -> RaftConfig {
    RaftConfig { log_gc_threshold_entries: 200, snapshot_chunk_bytes: 4096, ..test_config() }
}

fn handles(dir: &Directory) -> Vec<NodeHandle> {
    dir.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect()
}

/// One client operation against the node it believes leads (a write under `id`); returns the
/// leader hint.
async fn client_op(
    node: &NodeHandle,
    op: &KvOp,
    key: &[u8],
    id: Option<RequestId>,
    replica: bool,
) -> (Result<Option<ReadResponse>, Error>, Option<u64>) {
    let epoch = match node.status(SHARD).await {
        Ok(Some(s)) => s.descriptor.epoch(),
        _ => return (Err(Error::Stopped), None),
    };
    let timeout = Duration::from_secs(1);
    let fut = async {
        match op {
            // Half the puts expire in an hour (never within a run): a clock that jumps must
            // not expire them early.
            KvOp::Put(v) if v.len() % 2 == 0 => {
                let deadline = presage_replication::value::wall_now_ms() + 3_600_000;
                let put = Op::put_expiring(key.to_vec(), v.clone(), deadline);
                node.write_once(SHARD, epoch, vec![put], id).await.map(|()| None)
            }
            KvOp::Put(v) => {
                node.write_once(SHARD, epoch, vec![Op::put(key.to_vec(), v.clone())], id).await.map(|()| None)
            }
            KvOp::Delete => node.write_once(SHARD, epoch, vec![Op::delete(key.to_vec())], id).await.map(|()| None),
            KvOp::Get(_) if replica => node.replica_read(SHARD, epoch, ReadRequest::Get(key.to_vec())).await.map(Some),
            KvOp::Get(_) => node.read(SHARD, epoch, ReadRequest::Get(key.to_vec())).await.map(Some),
        }
    };
    let result = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::OutcomeUnknown { shard_id: SHARD, reason: "client timeout" }),
    };
    let hint = match &result {
        Err(Error::NotLeader { leader, .. }) => *leader,
        _ => None,
    };
    (result, hint)
}

/// How long a client retries a write whose outcome is unknown, under its request id.
const WRITE_RETRY_WINDOW: Duration = Duration::from_secs(3);

/// The node a client asks: the leader it last heard of, else a live node at random.
fn pick_node(dir: &Directory, leader: Option<u64>, rng: &mut SmallRng) -> Option<NodeHandle> {
    let live = handles(dir);
    match leader.and_then(|l| live.iter().find(|h| h.node_id() == l)) {
        Some(h) => Some(h.clone()),
        None => live.get(rng.random_range(0..live.len().max(1))).cloned(),
    }
}

/// Flags the nemesis raises for the clients.
struct Control {
    stop: AtomicBool,
    /// Clients send nothing while set (the group may go to sleep).
    quiet: AtomicBool,
    /// Writes whose outcome was unknown that a retry under their id resolved.
    resolved_retries: AtomicUsize,
    /// Replica reads answered (by whichever node was asked, leader or follower).
    replica_reads: AtomicUsize,
}

async fn client(id: u64, cfg: NemesisConfig, dir: Directory, rec: Arc<Recorder>, ctl: Arc<Control>) {
    let mut rng = SmallRng::seed_from_u64(cfg.seed ^ (id << 32) ^ 0xc11e);
    let mut leader: Option<u64> = None;
    let mut n = 0u64;
    let mut seq = 0u64;
    while !ctl.stop.load(Ordering::SeqCst) {
        if ctl.quiet.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let key = format!("key{}", rng.random_range(0..cfg.keys)).into_bytes();
        let roll = rng.random_range(0..10);
        let op = if roll < 5 {
            n += 1;
            KvOp::Put(format!("c{id}-{n}").into_bytes())
        } else if roll < 6 {
            KvOp::Delete
        } else {
            KvOp::Get(None)
        };
        let is_write = !matches!(op, KvOp::Get(_));
        // Half the reads are replica reads, sent to any node (a follower serves them too).
        let replica = !is_write && rng.random_bool(0.5);
        let Some(mut node) = pick_node(&dir, if replica { None } else { leader }, &mut rng) else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let request_id = is_write.then(|| {
            seq += 1;
            RequestId { client: id, slot: 0, seq }
        });
        let call = rec.tick();
        // A write that may have applied is retried under its id (it applies once) until it
        // gets an answer or `WRITE_RETRY_WINDOW` passes.
        let retry_until = tokio::time::Instant::now() + WRITE_RETRY_WINDOW;
        let mut maybe_applied = false;
        let result = loop {
            let (result, hint) = client_op(&node, &op, &key, request_id, replica).await;
            match result {
                Ok(answer) if replica => {
                    ctl.replica_reads.fetch_add(1, Ordering::SeqCst);
                    break Ok(answer);
                }
                Ok(answer) => {
                    leader = Some(node.node_id());
                    break Ok(answer);
                }
                Err(e) => {
                    leader = hint;
                    maybe_applied |= is_write && !e.is_definite();
                    if !maybe_applied || tokio::time::Instant::now() >= retry_until {
                        break Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(5..30))).await;
                    match pick_node(&dir, leader, &mut rng) {
                        Some(next) => node = next,
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
        };
        let ret = rec.tick();
        match result {
            Ok(answer) => {
                if maybe_applied {
                    ctl.resolved_retries.fetch_add(1, Ordering::SeqCst);
                }
                let op = match (op, answer) {
                    (KvOp::Get(_), Some(ReadResponse::Value(v))) => KvOp::Get(v),
                    (op, _) => op,
                };
                rec.record(Operation { client: id, key, op, call, ret: Some(ret) });
            }
            Err(_) => {
                if maybe_applied {
                    rec.record(Operation { client: id, key, op, call, ret: None });
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..30))).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..15))).await;
    }
}

/// Stops node `n`: half the time a process kill (the engine keeps every write), half the
/// time a power loss that keeps a random prefix of the writes since its last sync.
fn kill_or_crash(cluster: &mut Cluster, n: u64, rng: &mut SmallRng, report: &mut NemesisReport) -> String {
    if rng.random_bool(0.5) {
        cluster.kill(n);
        return format!("kill {n}");
    }
    let loss = cluster.crash(n, rng);
    report.crashes += 1;
    report.unsynced_writes_lost += loss.lost();
    format!("crash {n} keeping {} of {} unsynced writes", loss.kept, loss.unsynced)
}

/// Runs one seeded nemesis scenario; `Err` carries the seed and what went wrong.
pub async fn run(cfg: NemesisConfig) -> Result<NemesisReport, String> {
    let seed = cfg.seed;
    let fail = |what: String| format!("nemesis seed {seed} (replay with PRESAGE_TEST_SEED={seed}): {what}");
    let raft = RaftConfig { lease_reads: cfg.lease_reads, ..nemesis_raft_config() };
    let mut cluster = Cluster::start_with(cfg.nodes, seed, raft);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x4e3e);
    let rec = Arc::new(Recorder::default());
    let ctl = Arc::new(Control {
        stop: AtomicBool::new(false),
        quiet: AtomicBool::new(false),
        resolved_retries: AtomicUsize::new(0),
        replica_reads: AtomicUsize::new(0),
    });
    let mut report = NemesisReport::default();

    let clients: Vec<_> = (1..=cfg.clients)
        .map(|id| tokio::spawn(client(id, cfg.clone(), cluster.directory(), Arc::clone(&rec), Arc::clone(&ctl))))
        .collect();

    let majority = cfg.nodes / 2 + 1;
    let deadline = tokio::time::Instant::now() + cfg.duration;
    let mut active_filters: Vec<u64> = Vec::new();
    // The node whose clock the nemesis moved, until a heal.
    let mut skewed: Option<u64> = None;
    // The node whose disk the nemesis failed and when, until it stops (one at a time).
    let mut faulted: Option<(u64, tokio::time::Instant)> = None;
    let fail_stop_within = Duration::from_millis(cluster.config.fail_stop_timeout_ms + 2_000);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..700))).await;
        // A node that stopped after its disk failed lost power with it: what it had not
        // synced may be gone (after a failed fsync the page cache cannot be trusted).
        for n in cluster.finished() {
            let loss = cluster.crash(n, &mut rng);
            report.fail_stops += 1;
            report.unsynced_writes_lost += loss.lost();
            report
                .faults
                .push(format!("node {n} stopped on its disk fault; crash keeping {} of {}", loss.kept, loss.unsynced));
        }
        faulted = faulted.filter(|(n, _)| cluster.live().contains(n));
        if let Some((n, at)) = faulted.filter(|(_, at)| at.elapsed() > fail_stop_within) {
            // It wrote nothing since (a follower of idle groups): its disk is mended.
            cluster.disks().heal(n);
            faulted = None;
            report.faults.push(format!("disk of {n} mended after {:?} without a write", at.elapsed()));
        }
        let all = cluster.all();
        let live = cluster.live();
        let dead: Vec<u64> = all.iter().copied().filter(|n| !live.contains(n)).collect();
        let fault = match rng.random_range(0..12) {
            0 => {
                let mut a: Vec<u64> = all.iter().copied().filter(|_| rng.random_bool(0.5)).collect();
                if a.is_empty() || a.len() == all.len() {
                    a = vec![all[rng.random_range(0..all.len())]];
                }
                let b: Vec<u64> = all.iter().copied().filter(|n| !a.contains(n)).collect();
                active_filters.push(cluster.net.add_filter(Filter::Partition { a: a.clone(), b: b.clone() }));
                format!("partition {a:?} | {b:?}")
            }
            1 => {
                let n = all[rng.random_range(0..all.len())];
                active_filters.push(cluster.net.add_filter(Filter::Isolate(n)));
                format!("isolate {n}")
            }
            2 => {
                active_filters.push(cluster.net.add_filter(Filter::Drop { probability: 0.2 }));
                "drop 20% of messages".to_string()
            }
            3 => {
                let max = Duration::from_millis(rng.random_range(5..60));
                active_filters.push(cluster.net.add_filter(Filter::Delay { min: Duration::ZERO, max }));
                format!("delay up to {max:?}")
            }
            4 => {
                active_filters.push(cluster.net.add_filter(Filter::DropType(MessageType::MsgAppendResponse)));
                "drop append responses".to_string()
            }
            5 if live.len() as u64 > majority => {
                let n = live[rng.random_range(0..live.len())];
                kill_or_crash(&mut cluster, n, &mut rng, &mut report)
            }
            6 if !dead.is_empty() => {
                let n = dead[rng.random_range(0..dead.len())];
                cluster.restart(n);
                format!("restart {n}")
            }
            7 => {
                let to = all[rng.random_range(0..all.len())];
                match cluster.leader().await.and_then(|l| cluster.handle(l)) {
                    Some(h) => {
                        let r = h.transfer_leader(SHARD, to).await;
                        format!(
                            "transfer leader {} -> {to}: {}",
                            h.node_id(),
                            if r.is_ok() { "asked" } else { "refused" }
                        )
                    }
                    None => "transfer leader: no leader".to_string(),
                }
            }
            8 => {
                // Quiet: no requests until the group had time to sleep, then fail its leader.
                ctl.quiet.store(true, Ordering::SeqCst);
                let idle_ticks = cluster.config.quiesce_after_ticks + rng.random_range(0..20);
                tokio::time::sleep(Duration::from_millis(cluster.config.tick_interval_ms * idle_ticks)).await;
                if let Some(h) = cluster.leader().await.and_then(|l| cluster.handle(l)) {
                    if h.summary().await.is_ok_and(|s| s.quiescent == s.replicas) {
                        report.sleeping_leaders_failed += 1;
                    }
                }
                let what = match cluster.leader().await {
                    Some(l) if rng.random_bool(0.5) && live.len() as u64 > majority => {
                        format!("{} (the sleeping leader)", kill_or_crash(&mut cluster, l, &mut rng, &mut report))
                    }
                    Some(l) => {
                        active_filters.push(cluster.net.add_filter(Filter::Isolate(l)));
                        format!("isolate sleeping leader {l}")
                    }
                    None => "no leader to fail".to_string(),
                };
                ctl.quiet.store(false, Ordering::SeqCst);
                format!("quiet {idle_ticks} ticks, {what}")
            }
            9 if live.len() as u64 > majority && faulted.is_none() => {
                let n = live[rng.random_range(0..live.len())];
                let (what, faults) = crate::disks::random_stopping_fault(&mut rng);
                cluster.disks().fail(n, faults);
                faulted = Some((n, tokio::time::Instant::now()));
                report.disk_faults += 1;
                format!("{what} on {n}")
            }
            10 if skewed.is_none() => {
                // One clock at a time: a jump of up to two hours either way, or a drift
                // within the tolerated offset.
                let n = all[rng.random_range(0..all.len())];
                let skew_ms: i64 = if rng.random_bool(0.5) {
                    rng.random_range(-7_200_000..7_200_000)
                } else {
                    rng.random_range(-400..400)
                };
                cluster.set_clock_skew(n, skew_ms);
                skewed = Some(n);
                report.clock_skews += 1;
                format!("clock of {n} moved {skew_ms} ms")
            }
            _ => {
                for id in active_filters.drain(..) {
                    cluster.net.remove_filter(id);
                }
                if let Some(n) = skewed.take() {
                    cluster.set_clock_skew(n, 0);
                }
                "heal".to_string()
            }
        };
        report.faults.push(fault);
        if active_filters.len() > 2 {
            let id = active_filters.remove(0);
            cluster.net.remove_filter(id);
        }
    }

    // Heal everything, bring every node back, let the replicas converge.
    cluster.net.clear_filters();
    cluster.disks().heal_all();
    if let Some(n) = skewed.take() {
        cluster.set_clock_skew(n, 0);
    }
    // A node already failing finishes its fail-stop (it never serves from that disk again).
    tokio::time::sleep(Duration::from_millis(cluster.config.fail_stop_timeout_ms + 500)).await;
    for n in cluster.finished() {
        cluster.kill(n);
        report.fail_stops += 1;
    }
    for n in cluster.all() {
        if !cluster.live().contains(&n) {
            cluster.restart(n);
        }
    }
    ctl.quiet.store(false, Ordering::SeqCst);
    ctl.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.map_err(|e| fail(format!("client task failed: {e}")))?;
    }
    let converge = async {
        cluster.wait_leader(Duration::from_secs(20)).await;
        // A write in the current term makes every earlier entry commit and apply everywhere.
        cluster.put(b"nemesis-final", b"done").await.map_err(|e| format!("final write failed: {e}"))?;
        cluster.wait_converged(Duration::from_secs(30)).await;
        Ok::<(), String>(())
    };
    converge.await.map_err(fail)?;

    // Final reads of every key, part of the checked history.
    for k in 0..cfg.keys {
        let key = format!("key{k}").into_bytes();
        let call = rec.tick();
        let value = cluster.get(&key).await.map_err(|e| fail(format!("final read failed: {e}")))?;
        let ret = rec.tick();
        rec.record(Operation { client: 0, key, op: KvOp::Get(value), call, ret: Some(ret) });
    }

    report.local_reads = cluster.all().into_iter().filter_map(|n| cluster.handle(n)).map(|h| h.local_reads()).sum();
    for h in cluster.all().into_iter().filter_map(|n| cluster.handle(n)) {
        report.follower_reads += h.summary().await.map_or(0, |s| s.replica_reads_served);
    }
    let history = rec.history();
    report.ops = history.len();
    report.acknowledged_writes = history.iter().filter(|o| !matches!(o.op, KvOp::Get(_)) && o.ret.is_some()).count();
    report.unknown_writes = history.iter().filter(|o| o.ret.is_none()).count();
    report.resolved_retries = ctl.resolved_retries.load(Ordering::SeqCst);
    report.replica_reads = ctl.replica_reads.load(Ordering::SeqCst);
    linearizability::check(&history).map_err(|e| fail(format!("{e}\nfaults: {:?}", report.faults)))?;
    Ok(report)
}
