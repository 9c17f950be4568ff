//! In-process cluster tests of replication (design.md §8 tier 2). Each cites the section of
//! the Raft paper (Ongaro & Ousterhout, "In Search of an Understandable Consensus Algorithm")
//! or thesis it checks. Seeded: `PRESAGE_TEST_SEED` replays a run.
//!
//! The one test binary: Raft behaviours citing the paper's sections, snapshot catch-up, membership,
//! quiescence, split, `PRESAGE_NEMESIS_SEEDS` (default 50) nemesis seeds;
//! `PRESAGE_SHARDED_NEMESIS_SEEDS` (default 8) sharded-nemesis seeds (`src/sharded_nemesis.rs`:
//! splits, merges, leader and replica moves with a second group joining, an evacuation of node 1
//! onto a spare, partitions, kills of any node including the manager's, through the client library;
//! history checked, final reads included); `tests/sharding/mod.rs`: bootstrap/join/routing, size
//! split, zipfian load split with the halves' leaders apart, merge after the delay, manager
//! fail-over mid-operator, a client with a stale directory, a forwarded reply re-routing the
//! client, an evacuation surviving the manager's death mid-copy, a copy with damaged chunks resent
//! and verified; `tests/tcp/mod.rs`: three node processes on loopback (kill -9, restart from disk)
//! and bad frames on the wire. The in-process tests run on a current-thread tokio runtime with
//! paused time, so a seed replays exactly; the multi-process tests bound liveness with deadlines
//! only.

use std::time::Duration;

use presage_replication::{Error, Filter};
use presage_tests::cluster::Cluster;
use raft::StateRole;

fn seed() -> u64 {
    let seed = std::env::var("PRESAGE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    eprintln!("test seed {seed} (replay with PRESAGE_TEST_SEED={seed})");
    seed
}

mod sharding;
mod tcp;

const SEC: Duration = Duration::from_secs(1);

/// Raft settings with a short log (compacted past 20 entries) and small snapshot chunks, so
/// that a node that misses a few writes catches up by snapshot.
fn short_log_config() -> presage_replication::RaftConfig {
    presage_replication::RaftConfig {
        log_gc_threshold_entries: 20,
        snapshot_chunk_bytes: 4096,
        ..presage_tests::cluster::test_config()
    }
}

/// §5.2: a cluster elects exactly one leader per term.
#[tokio::test(start_paused = true)]
async fn elects_one_leader_3_and_5_nodes() {
    for n in [3, 5] {
        let c = Cluster::start(n, seed());
        let leader = c.wait_leader(5 * SEC).await;
        tokio::time::sleep(SEC).await;
        let views = c.views().await;
        let leaders: Vec<_> = views.iter().filter(|v| v.1 == StateRole::Leader).collect();
        assert_eq!(leaders.len(), 1, "{n} nodes: one leader, got {views:?}");
        assert!(views.iter().all(|v| v.3 == Some(leader)), "everyone follows {leader}: {views:?}");
    }
}

/// §5.3: a committed write reaches every replica's state machine.
#[tokio::test(start_paused = true)]
async fn replicates_writes_to_every_node() {
    let c = Cluster::start(3, seed());
    c.wait_leader(5 * SEC).await;
    for i in 0..50u32 {
        c.put(format!("k{i:03}").as_bytes(), format!("v{i}").as_bytes()).await.expect("put");
    }
    assert_eq!(c.get(b"k007").await.expect("get"), Some(b"v7".to_vec()));
    c.wait_converged(5 * SEC).await;
    assert_eq!(c.data_checksum(1).pairs, 50);
}

/// §5.2 and §5.4.1: when the leader dies, a new one is elected in a higher term and every
/// committed write survives (the election restriction keeps it).
#[tokio::test(start_paused = true)]
async fn leader_kill_elects_a_new_leader_and_keeps_committed_writes() {
    let mut c = Cluster::start(5, seed());
    let old = c.wait_leader(5 * SEC).await;
    let old_term = c.views().await.iter().find(|v| v.0 == old).map(|v| v.2).expect("term");
    for i in 0..20u32 {
        c.put(format!("a{i}").as_bytes(), b"1").await.expect("put");
    }
    c.kill(old);
    let new = c.wait_leader(5 * SEC).await;
    assert_ne!(new, old);
    let new_term = c.views().await.iter().find(|v| v.0 == new).map(|v| v.2).expect("term");
    assert!(new_term > old_term);
    for i in 0..20u32 {
        assert_eq!(c.get(format!("a{i}").as_bytes()).await.expect("get"), Some(b"1".to_vec()), "a{i} lost");
    }
    c.put(b"after", b"2").await.expect("put after failover");
    c.restart(old);
    c.wait_converged(10 * SEC).await;
}

/// §5.4 (safety) and §6 of the thesis (check-quorum): a leader cut off in a minority cannot
/// commit; the majority elects a leader and goes on; after healing, all converge.
#[tokio::test(start_paused = true)]
async fn minority_cannot_commit_and_healed_partition_converges() {
    let c = Cluster::start(5, seed());
    let old = c.wait_leader(5 * SEC).await;
    c.put(b"before", b"1").await.expect("put");
    let minority: Vec<u64> = vec![old, if old == 1 { 2 } else { 1 }];
    let majority: Vec<u64> = c.live().into_iter().filter(|n| !minority.contains(n)).collect();
    c.net.add_filter(Filter::Partition { a: minority.clone(), b: majority.clone() });

    // The old leader cannot commit: the write never succeeds on its side.
    let h = c.handle(old).expect("old leader runs");
    let epoch = c.epoch().await;
    let stuck = tokio::time::timeout(
        3 * SEC,
        h.write(1, epoch, vec![presage_replication::Op::put(b"lost".to_vec(), b"x".to_vec())]),
    )
    .await;
    match stuck {
        // Cut off, it times out or learns it lost leadership; whether the entry survives is
        // unknown to it (checked below: it did not).
        Err(_) | Ok(Err(Error::NotLeader { .. })) | Ok(Err(Error::OutcomeUnknown { .. })) => {}
        Ok(other) => panic!("a minority leader answered {other:?}"),
    }
    // Check-quorum: the cut-off leader steps down.
    let views = c.views().await;
    assert!(views.iter().filter(|v| minority.contains(&v.0)).all(|v| v.1 != StateRole::Leader), "{views:?}");
    // The majority elects its own leader and commits.
    let mut new = None;
    for _ in 0..100 {
        let v = c.views().await;
        new = v.iter().find(|v| majority.contains(&v.0) && v.1 == StateRole::Leader).map(|v| v.0);
        if new.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new = new.expect("majority elects a leader");
    let h = c.handle(new).expect("runs");
    let epoch = c.epoch().await;
    h.write(1, epoch, vec![presage_replication::Op::put(b"majority".to_vec(), b"y".to_vec())])
        .await
        .expect("majority commits");

    c.net.clear_filters();
    c.wait_converged(10 * SEC).await;
    assert_eq!(c.get(b"majority").await.expect("get"), Some(b"y".to_vec()));
    assert_eq!(c.get(b"lost").await.expect("get"), None, "the minority's write never committed");
    assert_eq!(c.get(b"before").await.expect("get"), Some(b"1".to_vec()));
}

/// Thesis §3.10: leadership transfer hands the lead to the chosen, caught-up follower.
#[tokio::test(start_paused = true)]
async fn leadership_transfer_moves_the_leader() {
    let c = Cluster::start(3, seed());
    let old = c.wait_leader(5 * SEC).await;
    c.put(b"k", b"v").await.expect("put");
    c.wait_converged(5 * SEC).await;
    let target = c.live().into_iter().find(|n| *n != old).expect("a follower");
    c.handle(old).expect("runs").transfer_leader(1, target).await.expect("transfer accepted");
    wait_until_leads(&c, target).await;
    c.put(b"k2", b"v2").await.expect("put under the new leader");
}

/// Waits (2 s of the cluster's time at most) until `target` leads shard 1.
async fn wait_until_leads(c: &Cluster, target: u64) {
    for _ in 0..100 {
        if c.leader().await == Some(target) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{target} did not take over: {:?}", c.views().await);
}

/// A restarted node recovers its replica from its engine and catches up from the log.
#[tokio::test(start_paused = true)]
async fn restarted_follower_recovers_from_disk_and_catches_up() {
    let mut c = Cluster::start(3, seed());
    let leader = c.wait_leader(5 * SEC).await;
    let follower = c.live().into_iter().find(|n| *n != leader).expect("follower");
    c.put(b"x", b"1").await.expect("put");
    c.wait_converged(5 * SEC).await;
    c.kill(follower);
    for i in 0..30u32 {
        c.put(format!("y{i}").as_bytes(), b"2").await.expect("put");
    }
    c.restart(follower);
    c.wait_converged(10 * SEC).await;
    assert_eq!(c.data_checksum(follower).pairs, 31, "the follower holds every write");
    assert_eq!(c.data_checksum(follower), c.data_checksum(leader));
}

/// The nemesis (design.md §8): `PRESAGE_NEMESIS_SEEDS` seeds (default 50) starting at
/// `PRESAGE_TEST_SEED` (default 1); every history must be linearizable and the replicas must
/// converge. `PRESAGE_NEMESIS_SEEDS=2000 cargo test -p presage-tests nemesis` runs thousands.
#[test]
fn nemesis_histories_are_linearizable() {
    let first: u64 = std::env::var("PRESAGE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let count: u64 = std::env::var("PRESAGE_NEMESIS_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let mut totals = (0usize, 0usize, 0usize, 0usize);
    let (mut local_reads, mut resolved, mut replica_reads, mut follower_reads) = (0u64, 0usize, 0usize, 0u64);
    let (mut crashes, mut lost, mut disk_faults, mut fail_stops, mut skews) = (0usize, 0usize, 0usize, 0usize, 0usize);
    for seed in first..first + count {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        let report = rt
            .block_on(presage_tests::nemesis::run(presage_tests::nemesis::NemesisConfig::new(seed)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(report.acknowledged_writes > 20, "seed {seed}: the workload barely ran: {report:?}");
        totals.0 += report.ops;
        totals.1 += report.acknowledged_writes;
        totals.2 += report.unknown_writes;
        totals.3 += report.sleeping_leaders_failed;
        crashes += report.crashes;
        lost += report.unsynced_writes_lost;
        disk_faults += report.disk_faults;
        fail_stops += report.fail_stops;
        skews += report.clock_skews;
        local_reads += report.local_reads;
        resolved += report.resolved_retries;
        replica_reads += report.replica_reads;
        follower_reads += report.follower_reads;
    }
    eprintln!(
        "nemesis: {count} seeds, {} ops checked, {} acknowledged writes, {} unknown, {resolved} unknown until \
         a retry under their request id answered, {} sleeping leaders failed, {local_reads} reads served off the loop, \
         {crashes} power losses and {fail_stops} fail-stops after {disk_faults} disk faults dropping {lost} unsynced writes, \
         {skews} clock jumps, {replica_reads} replica reads answered ({follower_reads} served by followers)",
        totals.0, totals.1, totals.2, totals.3
    );
    if count >= 20 {
        assert!(fail_stops > 0, "no disk fault stopped a node: fail-stop is not exercised");
        assert!(lost > 0, "no power loss dropped an unsynced write: crash-faithful storage is not exercised");
        assert!(totals.3 > 0, "no quiet phase ever caught a sleeping leader: quiescence is not exercised");
        assert!(local_reads > 0, "no read was served off the loop: lease reads are not exercised");
        assert!(resolved > 0, "no write was retried under its request id: deduplication is not exercised");
        assert!(follower_reads > 0, "no follower served a replica read: follower reads are not exercised");
    }
}

/// The nemesis on a sharded cluster (issue 4): splits, merges, leader and replica moves (a
/// second group joins mid-run), a node evacuation (issue 8), partitions, kills of any node including the shard
/// manager's, while clients route through the client library. `PRESAGE_SHARDED_NEMESIS_SEEDS`
/// seeds (default 8) from `PRESAGE_TEST_SEED` (default 1); every history must be
/// linearizable, final reads included.
#[test]
fn sharded_nemesis_histories_are_linearizable() {
    let first: u64 = std::env::var("PRESAGE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let count: u64 = std::env::var("PRESAGE_SHARDED_NEMESIS_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let (mut ops, mut acked, mut unknown, mut operators, mut splits, mut merges) = (0, 0, 0, 0, 0, 0);
    let (mut evacuations, mut crashes, mut lost, mut checks, mut fail_stops) = (0, 0, 0, 0, 0);
    for seed in first..first + count {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        let cfg = presage_tests::sharded_nemesis::ShardedNemesisConfig::new(seed);
        let report = rt.block_on(presage_tests::sharded_nemesis::run(cfg)).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.acknowledged_writes > 20, "seed {seed}: the workload barely ran: {report:?}");
        ops += report.ops;
        acked += report.acknowledged_writes;
        unknown += report.unknown_writes;
        operators += report.operators;
        splits += report.splits;
        merges += report.merges;
        evacuations += report.evacuations;
        crashes += report.crashes;
        lost += report.unsynced_writes_lost;
        checks += report.consistency_checks;
        fail_stops += report.fail_stops;
    }
    eprintln!(
        "sharded nemesis: {count} seeds, {ops} ops checked, {acked} acknowledged writes, {unknown} unknown, \
         {operators} operators finished ({splits} splits, {merges} merges), {evacuations} evacuations, \
         {crashes} power losses and {fail_stops} fail-stops after disk faults dropping {lost} unsynced writes, \
         {checks} consistency checks without a mismatch"
    );
    if count >= 4 {
        assert!(checks > 0, "no consistency check compared the replicas");
        assert!(fail_stops > 0, "no disk fault stopped a node: fail-stop is not exercised");
        assert!(lost > 0, "no power loss dropped an unsynced write: crash-faithful storage is not exercised");
        assert!(splits > 0 && merges > 0, "the runs must split and merge shards: {splits} splits, {merges} merges");
        assert!(evacuations > 0, "the runs must evacuate a node while the faults go on");
    }
}

/// §7 (log compaction, InstallSnapshot): a follower that misses more than the leader's
/// retained log catches up by a snapshot - the engine's chunked export, streamed under a
/// rate limit with a window of chunks, staged and verified, then switched in. A lossy network
/// makes chunks and acknowledgements go missing, so resends and resumes are exercised.
#[tokio::test(start_paused = true)]
async fn far_behind_follower_catches_up_by_snapshot() {
    let config = presage_replication::RaftConfig {
        log_gc_threshold_entries: 20,
        snapshot_chunk_bytes: 4096,
        snapshot_rate_bytes_per_sec: 256 * 1024,
        ..presage_tests::cluster::test_config()
    };
    let mut c = Cluster::start_with(3, seed(), config);
    let leader = c.wait_leader(5 * SEC).await;
    let follower = c.live().into_iter().find(|n| *n != leader).expect("follower");
    c.put(b"first", b"1").await.expect("put");
    c.wait_converged(5 * SEC).await;
    let behind = c.handle(follower).expect("runs").status(1).await.expect("status").expect("replica").applied;
    c.kill(follower);
    let value = vec![b'v'; 200];
    for i in 0..300u32 {
        c.put(format!("k{i:04}").as_bytes(), &value).await.expect("put");
    }
    let leader = c.wait_leader(5 * SEC).await;
    let st = c.handle(leader).expect("runs").status(1).await.expect("status").expect("replica");
    assert!(
        st.first_index > behind + 1,
        "the log the follower needs is compacted: first {} vs {behind}",
        st.first_index
    );

    c.net.add_filter(Filter::Drop { probability: 0.2 });
    c.restart(follower);
    c.wait_converged(60 * SEC).await;
    c.net.clear_filters();
    let caught_up = c.handle(follower).expect("runs").status(1).await.expect("status").expect("replica");
    assert!(caught_up.first_index > behind + 1, "the follower's log starts after an installed snapshot: {caught_up:?}");
    assert_eq!(c.data_checksum(follower).pairs, 301);
    assert_eq!(c.data_checksum(follower), c.data_checksum(leader));
    // The caught-up follower serves as a voter: kill the leader, the follower's data stays.
    c.kill(leader);
    c.wait_leader(10 * SEC).await;
    assert_eq!(c.get(b"k0299").await.expect("get"), Some(value));
}

/// The migration bandwidth budget: a node's snapshot rate is clamped to the configured floor
/// and cap, and a lowered rate paces a transfer (the bytes sent in a stretch of virtual time
/// stay within the rate plus one refill's slack), which completes once the rate is raised.
#[tokio::test(start_paused = true)]
async fn a_lowered_snapshot_budget_paces_a_transfer_within_its_rate() {
    const KIB: u64 = 1024;
    let config = presage_replication::RaftConfig {
        log_gc_threshold_entries: 20,
        snapshot_chunk_bytes: 4096,
        snapshot_rate_bytes_per_sec: 256 * KIB,
        snapshot_rate_floor_bytes_per_sec: 16 * KIB,
        ..presage_tests::cluster::test_config()
    };
    let mut c = Cluster::start_with(3, seed(), config.clone());
    let leader = c.wait_leader(5 * SEC).await;
    let handle = c.handle(leader).expect("runs");
    assert_eq!(handle.set_snapshot_rate(1).await.expect("set"), 16 * KIB, "clamped to the floor");
    assert_eq!(handle.set_snapshot_rate(u64::MAX).await.expect("set"), 256 * KIB, "clamped to the cap");
    let follower = c.live().into_iter().find(|n| *n != leader).expect("follower");
    c.put(b"first", b"1").await.expect("put");
    c.wait_converged(5 * SEC).await;
    c.kill(follower);
    // Values that do not compress, so the stream is about as large as the data (~80 KiB).
    let mut x = seed() | 1;
    for i in 0..400u32 {
        let value: Vec<u8> = (0..200)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        c.put(format!("k{i:04}").as_bytes(), &value).await.expect("put");
    }
    assert_eq!(c.wait_leader(5 * SEC).await, leader, "no network trouble: the leader stays");
    assert_eq!(handle.set_snapshot_rate(16 * KIB).await.expect("set"), 16 * KIB);
    let before = handle.summary().await.expect("summary");
    assert_eq!(before.snapshot_rate_bytes_per_sec, 16 * KIB);
    c.restart(follower);
    let secs = 2;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let during = handle.summary().await.expect("summary");
    let sent = during.snapshot_bytes_sent - before.snapshot_bytes_sent;
    let slack = config.snapshot_chunk_bytes as u64 * 2;
    assert!(sent > 0, "the transfer started: {during:?}");
    assert!(sent <= 16 * KIB * secs + slack, "{sent} bytes in {secs} s at 16 KiB/s");
    assert_eq!(during.snapshots_outgoing, 1, "still sending: {during:?}");
    handle.set_snapshot_rate(u64::MAX).await.expect("set");
    c.wait_converged(30 * SEC).await;
    assert_eq!(c.data_checksum(follower), c.data_checksum(leader));
    let after = handle.summary().await.expect("summary");
    assert!(after.snapshot_bytes_sent - before.snapshot_bytes_sent >= 60 * KIB, "the whole snapshot went: {after:?}");
}

fn conf_change(changes: &[(raft::eraftpb::ConfChangeType, u64)]) -> raft::eraftpb::ConfChangeV2 {
    raft::eraftpb::ConfChangeV2 {
        transition: raft::eraftpb::ConfChangeTransition::Auto as i32,
        changes: changes
            .iter()
            .map(|(t, id)| raft::eraftpb::ConfChangeSingle { change_type: *t as i32, node_id: *id })
            .collect(),
        context: Vec::new(),
    }
}

/// Writes keys `w0, w1, ...` through whichever node leads, until `stop`; returns the keys
/// whose write was acknowledged.
async fn continuous_writer(
    dir: presage_tests::cluster::Directory,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<String> {
    let mut acked = Vec::new();
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let handles: Vec<_> = dir.lock().expect("directory").values().cloned().collect();
        let mut leader = None;
        for h in &handles {
            if let Ok(Some(s)) = h.status(1).await {
                if s.role == StateRole::Leader {
                    leader = Some((h.clone(), s.descriptor.epoch()));
                }
            }
        }
        if let Some((h, epoch)) = leader {
            let key = format!("w{i}");
            let write = h.write(1, epoch, vec![presage_replication::Op::put(key.clone().into_bytes(), b"x".to_vec())]);
            if let Ok(Ok(())) = tokio::time::timeout(SEC, write).await {
                acked.push(key);
                i += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    acked
}

/// Thesis §4.2.1 (a new server catches up as a non-voting member) and §4.3 (joint consensus):
/// under continuous writes, a new node is added as a learner, catches up (by snapshot: the
/// log it would need is compacted), and is promoted while a voter is removed in one joint
/// change; the removed replica is destroyed and no acknowledged write is lost.
#[tokio::test(start_paused = true)]
async fn learner_added_caught_up_and_promoted_while_a_voter_leaves() {
    use raft::eraftpb::ConfChangeType::{AddLearnerNode, AddNode, RemoveNode};
    let mut c = Cluster::start_with(3, seed(), short_log_config());
    c.wait_leader(5 * SEC).await;
    for i in 0..100u32 {
        c.put(format!("pre{i}").as_bytes(), &[b'p'; 100]).await.expect("put");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(continuous_writer(c.directory(), stop.clone()));

    c.add_node(4);
    let leader = c.wait_leader(5 * SEC).await;
    c.handle(leader)
        .expect("runs")
        .change_membership(1, conf_change(&[(AddLearnerNode, 4)]))
        .await
        .expect("add learner");
    // The learner catches up.
    let mut caught_up = false;
    for _ in 0..300 {
        let l = c.wait_leader(5 * SEC).await;
        let lead = c.handle(l).expect("runs").status(1).await.expect("status").expect("replica");
        if let Ok(Some(s)) = c.handle(4).expect("runs").status(1).await {
            if s.applied + 5 >= lead.applied && s.applied > 100 {
                caught_up = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(caught_up, "learner 4 did not catch up: {:?}", c.views().await);
    let learner = c.handle(4).expect("runs").status(1).await.expect("status").expect("replica");
    assert!(learner.descriptor.replicas.iter().any(|r| r.node_id == 4 && !r.is_voter()), "4 is a learner: {learner:?}");
    assert!(learner.first_index > 6, "the learner started from a snapshot: {learner:?}");

    // Promote 4 and remove a follower in one joint-consensus change.
    let leader = c.wait_leader(5 * SEC).await;
    let victim = (1..=3).find(|n| *n != leader).expect("a follower");
    c.handle(leader)
        .expect("runs")
        .change_membership(1, conf_change(&[(AddNode, 4), (RemoveNode, victim)]))
        .await
        .expect("swap");
    let mut done = false;
    for _ in 0..300 {
        let views = c.views().await;
        let l = c.leader().await;
        let d = match l.and_then(|l| c.handle(l)) {
            Some(h) => h.status(1).await.expect("status").map(|s| s.descriptor),
            None => None,
        };
        let final_conf = d.as_ref().is_some_and(|d| {
            d.replicas.iter().any(|r| r.node_id == 4 && r.is_voter()) && !d.replicas.iter().any(|r| r.node_id == victim)
        });
        let victim_gone = !views.iter().any(|v| v.0 == victim);
        if final_conf && victim_gone {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "the swap did not finish: {:?}", c.views().await);
    assert_eq!(c.data_checksum(victim).pairs, 0, "the removed replica's data is destroyed");

    tokio::time::sleep(SEC).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await.expect("writer");
    assert!(acked.len() > 20, "writes went on during the change: {}", acked.len());
    c.wait_converged(20 * SEC).await;
    for key in &acked {
        assert_eq!(c.get(key.as_bytes()).await.expect("get"), Some(b"x".to_vec()), "acknowledged {key} lost");
    }
    // Node 4 now votes: with the old leader gone, the shard still has a quorum.
    let leader = c.wait_leader(5 * SEC).await;
    c.kill(leader);
    c.wait_leader(10 * SEC).await;
    c.put(b"after", b"1").await.expect("the new configuration commits");
}

/// Three nodes (a transfer allowed at most 10 entries behind), one follower killed while 30
/// writes committed without it: `(cluster, leader, lagging follower)`.
async fn with_a_lagging_follower() -> (Cluster, u64, u64) {
    let config =
        presage_replication::RaftConfig { max_transfer_lag_entries: 10, ..presage_tests::cluster::test_config() };
    let mut c = Cluster::start_with(3, seed(), config);
    let leader = c.wait_leader(5 * SEC).await;
    let lagging = c.live().into_iter().find(|n| *n != leader).expect("follower");
    c.kill(lagging);
    for i in 0..30u32 {
        c.put(format!("k{i}").as_bytes(), b"v").await.expect("put");
    }
    (c, leader, lagging)
}

/// Leadership transfer is refused to a node that is not a voter or lags far behind.
#[tokio::test(start_paused = true)]
async fn leadership_transfer_to_a_lagging_node_is_refused() {
    let (c, leader, lagging) = with_a_lagging_follower().await;
    let h = c.handle(leader).expect("runs");
    match h.transfer_leader(1, lagging).await {
        Err(Error::TransferRefused { reason, .. }) => assert!(reason.contains("behind"), "{reason}"),
        other => panic!("transfer to a lagging node: {other:?}"),
    }
    assert!(matches!(h.transfer_leader(1, 99).await, Err(Error::TransferRefused { .. })), "not a voter");
    assert_eq!(c.leader().await, Some(leader), "nothing moved");
}

/// A node whose own disk check says its disk is failing sheds every leadership to the voter
/// most caught up with it (never to one that lags), and the shard goes on under the new leader.
#[tokio::test(start_paused = true)]
async fn shedding_hands_each_leadership_to_the_most_caught_up_voter() {
    let (mut c, leader, lagging) = with_a_lagging_follower().await;
    let caught_up = c.all().into_iter().find(|n| *n != leader && *n != lagging).expect("another follower");
    c.restart(lagging);
    let h = c.handle(leader).expect("runs");
    let started = h.shed_leaderships().await.expect("shed");
    assert_eq!(started, vec![(1, caught_up)], "to the caught-up voter, not {lagging}");
    wait_until_leads(&c, caught_up).await;
    assert_eq!(h.shed_leaderships().await.expect("shed"), Vec::new(), "nothing led here any more");
    c.put(b"after", b"1").await.expect("put under the new leader");
    assert_eq!(c.get(b"k29").await.expect("get"), Some(b"v".to_vec()));
}

/// Quiescence (design.md §3): once idle, every group on every node sleeps and only node
/// pings cross the network, however many groups there are; a write wakes its group, which
/// sleeps again. A sleeping leader that is cut off or dies is noticed through the missing
/// pings: its followers wake and elect a new leader (§5.2 then applies as usual), and no
/// acknowledged write is lost.
#[tokio::test(start_paused = true)]
async fn idle_groups_sleep_and_wake_when_needed() {
    const SHARDS: u64 = 50;
    let config = presage_tests::cluster::test_config();
    let ping_interval = Duration::from_millis(config.tick_interval_ms * config.heartbeat_ticks as u64);
    let mut c = Cluster::start_sharded(3, seed(), config, SHARDS);
    c.wait_leader(5 * SEC).await;
    c.put(b"k1", b"v1").await.expect("put");
    c.wait_quiescent(10 * SEC).await;

    let (delivered, dropped) = c.net.counts();
    let idle = 2 * SEC;
    tokio::time::sleep(idle).await;
    let (delivered2, dropped2) = c.net.counts();
    let sent = (delivered2 + dropped2) - (delivered + dropped);
    let ping_rounds = (idle.as_millis() / ping_interval.as_millis()) as u64 + 1;
    eprintln!("{sent} messages in {idle:?} with {SHARDS} sleeping groups");
    assert!(sent > 0, "nodes ping each other while their groups sleep");
    assert!(
        sent <= 6 * ping_rounds,
        "{sent} messages in {idle:?} of sleep; pings alone are at most {}",
        6 * ping_rounds
    );

    // A write wakes its group (and only it, on the leader).
    c.put(b"k2", b"v2").await.expect("put");
    let leader = c.leader().await.expect("leader");
    assert_eq!(c.summaries().await[&leader].quiescent, SHARDS as usize - 1);
    c.wait_quiescent(10 * SEC).await;

    // Cut the sleeping leader off: the others notice the silence and elect a new one.
    let isolation = c.net.add_filter(Filter::Isolate(leader));
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    let new = loop {
        let views = c.views().await;
        if let Some(v) = views.iter().find(|v| v.0 != leader && v.1 == StateRole::Leader) {
            break v.0;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new leader while {leader} is cut off: {views:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_ne!(new, leader);
    c.net.remove_filter(isolation);
    c.put(b"k3", b"v3").await.expect("put after the heal");
    c.wait_converged(10 * SEC).await;
    c.wait_quiescent(10 * SEC).await;

    // Kill the sleeping leader: every group gets a leader among the survivors.
    let leader = c.leader().await.expect("leader");
    c.kill(leader);
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    loop {
        let led: usize = c.summaries().await.values().map(|s| s.leaders).sum();
        if led == SHARDS as usize {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{led} of {SHARDS} groups have a leader after the kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (k, v) in [(b"k1", b"v1"), (b"k2", b"v2"), (b"k3", b"v3")] {
        assert_eq!(c.get(k).await.expect("get"), Some(v.to_vec()));
    }
}

/// The leader of `shard` among live nodes, waiting (tokio time) up to `timeout`.
async fn shard_leader(c: &Cluster, shard: u64, timeout: Duration) -> presage_replication::NodeHandle {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        for id in c.live() {
            let h = c.handle(id).expect("live");
            if let Ok(Some(s)) = h.status(shard).await {
                if s.role == StateRole::Leader {
                    return h;
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "shard {shard} has no leader within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Split (design.md §4): the shard keeps the left part and a new shard takes the right part
/// with the same replicas, both at epoch version + 1. Requests routed with the old epoch get
/// `EpochNotMatch` with both fresh descriptors; the data stays readable through the new
/// shard; every replica splits at the same log position and a restart recovers both shards.
#[tokio::test(start_paused = true)]
async fn split_hands_the_right_part_to_a_new_shard() {
    use presage_replication::{Op, ReadRequest, ReadResponse};
    use presage_tests::cluster::SHARD;
    let mut c = Cluster::start(3, seed());
    let leader = c.wait_leader(5 * SEC).await;
    for k in ["a", "c", "m", "p", "z"] {
        c.put(k.as_bytes(), format!("v-{k}").as_bytes()).await.expect("put");
    }
    let h = c.handle(leader).expect("leader runs");
    let old = c.epoch().await;
    h.split(SHARD, old, b"m".to_vec(), 2).await.expect("split");

    let left = h.status(SHARD).await.expect("status").expect("shard 1").descriptor;
    assert_eq!((left.start.as_slice(), left.end.as_deref()), (&b""[..], Some(&b"m"[..])));
    assert_eq!(left.epoch().version, old.version + 1);
    match h.write(SHARD, old, vec![Op::put(b"n".to_vec(), b"x".to_vec())]).await {
        Err(Error::EpochNotMatch { current, .. }) => {
            let ids: Vec<u64> = current.iter().map(|d| d.id).collect();
            assert_eq!(ids, vec![1, 2], "both halves come back: {current:?}");
            assert_eq!(current[1].start, b"m".to_vec());
        }
        other => panic!("a write with the old epoch must be refused, got {other:?}"),
    }
    match h.write(SHARD, left.epoch(), vec![Op::put(b"n".to_vec(), b"x".to_vec())]).await {
        Err(Error::EpochNotMatch { .. }) => {}
        other => panic!("a key that moved out must be refused, got {other:?}"),
    }
    assert!(matches!(h.split(SHARD, old, b"f".to_vec(), 3).await, Err(Error::EpochNotMatch { .. })));
    assert!(matches!(h.split(SHARD, left.epoch(), Vec::new(), 3).await, Err(Error::Config(_))));

    let right = shard_leader(&c, 2, 5 * SEC).await;
    let epoch2 = right.status(2).await.expect("status").expect("shard 2").descriptor.epoch();
    assert_eq!(epoch2.version, old.version + 1);
    let read = |k: &str| ReadRequest::Get(k.as_bytes().to_vec());
    assert_eq!(right.read(2, epoch2, read("p")).await.expect("read"), ReadResponse::Value(Some(b"v-p".to_vec())));
    right.write(2, epoch2, vec![Op::put(b"n".to_vec(), b"v-n".to_vec())]).await.expect("write to the new shard");
    assert!(matches!(right.read(2, epoch2, read("c")).await, Err(Error::EpochNotMatch { .. })));
    assert_eq!(c.get(b"c").await.expect("get"), Some(b"v-c".to_vec()));

    let follower = c.live().into_iter().find(|id| *id != leader).expect("a follower");
    c.kill(follower);
    c.restart(follower);
    let fh = c.handle(follower).expect("restarted");
    let target = right.status(2).await.expect("status").expect("shard 2").commit;
    let deadline = tokio::time::Instant::now() + 5 * SEC;
    loop {
        let s1 = fh.status(1).await.expect("status");
        let s2 = fh.status(2).await.expect("status");
        if let (Some(s1), Some(s2)) = (s1, s2) {
            assert_eq!(s1.descriptor, left);
            assert_eq!(s2.descriptor.start, b"m".to_vec());
            if s2.applied >= target {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "restarted node lacks a shard");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.wait_converged(5 * SEC).await;
    assert_eq!(c.data_checksum(follower), c.data_checksum(leader));
}

/// Makes node `to` lead `shard` (transfers leadership if needed).
async fn lead_here(c: &Cluster, shard: u64, to: u64) {
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    loop {
        let leader = shard_leader(c, shard, 5 * SEC).await;
        if leader.node_id() == to {
            return;
        }
        let _ = leader.transfer_leader(shard, to).await;
        assert!(tokio::time::Instant::now() < deadline, "could not move shard {shard}'s leader to {to}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Merge (design.md §4): the source freezes, then the target takes its range over and every
/// node drops its source replica, keeping the data. A replica cut off during the merge
/// applies the target's `CommitMerge` only once its own source replica has frozen, so it
/// converges to the same data whichever group catches up first; a restart keeps the result.
#[tokio::test(start_paused = true)]
async fn merge_joins_neighbours_even_with_a_lagging_replica() {
    use presage_replication::{Op, ReadRequest, ReadResponse};
    let mut c = Cluster::start_sharded(3, seed(), presage_tests::cluster::test_config(), 2);
    let leader = shard_leader(&c, 1, 5 * SEC).await;
    lead_here(&c, 2, leader.node_id()).await;
    let d1 = leader.status(1).await.expect("status").expect("shard 1").descriptor;
    let d2 = leader.status(2).await.expect("status").expect("shard 2").descriptor;
    leader.write(1, d1.epoch(), vec![Op::put(b"a".to_vec(), b"1".to_vec())]).await.expect("write left");
    leader.write(2, d2.epoch(), vec![Op::put(b"t".to_vec(), b"2".to_vec())]).await.expect("write right");

    // A replica that cannot confirm the freeze makes the merge roll back.
    let lagging = c.live().into_iter().find(|id| *id != leader.node_id()).expect("a follower");
    let cut = c.net.add_filter(Filter::Isolate(lagging));
    assert!(matches!(leader.merge(2, 1, SEC).await, Err(Error::ProposalDropped { .. })));
    let d2 = leader.status(2).await.expect("status").expect("shard 2").descriptor;
    assert_eq!(d2.merging_into, None, "rolled back");
    c.net.remove_filter(cut);

    // Let the freeze reach every replica, then cut one off before the commit: it merges
    // later, on its own, once its own source replica applied the freeze.
    let merging = {
        let leader = leader.clone();
        tokio::spawn(async move { leader.merge(2, 1, 5 * SEC).await })
    };
    let deadline = tokio::time::Instant::now() + 5 * SEC;
    let lh = c.handle(lagging).expect("runs");
    while lh.status(2).await.expect("status").is_some_and(|s| s.descriptor.merging_into.is_none()) {
        assert!(tokio::time::Instant::now() < deadline, "the freeze never reached node {lagging}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cut = c.net.add_filter(Filter::Isolate(lagging));
    let merged = merging.await.expect("merge task").expect("merge");
    assert_eq!((merged.start.as_slice(), merged.end.as_deref()), (&b""[..], None));
    assert_eq!(merged.epoch().version, d2.epoch().version + 2, "prepare and commit each bump the version");
    assert!(leader.status(2).await.expect("status").is_none(), "the source replica is gone");
    let read = ReadRequest::Get(b"t".to_vec());
    assert_eq!(leader.read(1, merged.epoch(), read).await.expect("read"), ReadResponse::Value(Some(b"2".to_vec())));
    leader.write(1, merged.epoch(), vec![Op::put(b"u".to_vec(), b"3".to_vec())]).await.expect("write merged");
    assert!(matches!(
        leader.write(2, d2.epoch(), vec![Op::put(b"t".to_vec(), b"x".to_vec())]).await,
        Err(Error::ShardNotFound { shard_id: 2 })
    ));

    c.net.remove_filter(cut);
    let lh = c.handle(lagging).expect("runs");
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    loop {
        let gone = lh.status(2).await.expect("status").is_none();
        let s1 = lh.status(1).await.expect("status").expect("shard 1");
        if gone && s1.descriptor == merged && s1.applied == s1.commit {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lagging node did not merge: {s1:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.wait_converged(5 * SEC).await;
    assert_eq!(c.data_checksum(lagging), c.data_checksum(leader.node_id()));
    c.kill(lagging);
    c.restart(lagging);
    let lh = c.handle(lagging).expect("restarted");
    assert!(lh.status(2).await.expect("status").is_none(), "a merged source stays gone after a restart");
    assert_eq!(lh.status(1).await.expect("status").expect("shard 1").descriptor, merged);
}

/// Request ids (`presage_replication::dedup`): a write retried with its id applies once, on
/// the shard it was sent to, on the shard a split hands its key to, on the shard a merge
/// makes, and on a replica that caught up by snapshot past the write; an older request of the
/// same slot is refused, and a write whose condition failed never applies later.
#[tokio::test(start_paused = true)]
async fn a_retried_write_applies_once_across_split_merge_and_snapshot() {
    use presage_replication::wire::Expect;
    use presage_replication::{Op, ReadRequest, ReadResponse, RequestId};
    let mut c = Cluster::start_with(3, seed(), short_log_config());
    c.wait_leader(5 * SEC).await;
    let id = |slot, seq| Some(RequestId { client: 0xc1, slot, seq });
    let put = |k: &str, v: &str| vec![Op::put(k.as_bytes().to_vec(), v.as_bytes().to_vec())];
    let value_on = |h: presage_replication::NodeHandle, shard: u64, k: &'static str| async move {
        let epoch = h.status(shard).await.expect("status").expect("replica").descriptor.epoch();
        match h.read(shard, epoch, ReadRequest::Get(k.as_bytes().to_vec())).await.expect("read") {
            ReadResponse::Value(v) => v.map(|v| String::from_utf8(v).expect("utf-8")),
            other => panic!("not a value: {other:?}"),
        }
    };

    // The same shard: the retry answers Ok and writes nothing.
    let h = shard_leader(&c, 1, 5 * SEC).await;
    let e = c.epoch().await;
    h.write_once(1, e, put("k", "first"), id(0, 1)).await.expect("write");
    h.write(1, e, put("k", "second")).await.expect("another write");
    h.write_once(1, e, put("k", "first"), id(0, 1)).await.expect("a retry of an applied write");
    assert_eq!(value_on(h.clone(), 1, "k").await.as_deref(), Some("second"), "the retry did not apply again");
    h.write_once(1, e, put("x", "1"), id(0, 2)).await.expect("the slot's next write");
    assert!(
        matches!(h.write_once(1, e, put("k", "first"), id(0, 1)).await, Err(Error::Superseded { last_seq: 2, .. })),
        "a request older than the slot's last is refused"
    );
    // A failed condition is final too: an attempt of that write arriving later (a retry, or
    // one delayed on the way) writes nothing, even once the condition would hold.
    let guarded = vec![Op::check(b"g".to_vec(), Expect::Absent, Vec::new()), Op::put(b"g".to_vec(), b"mine".to_vec())];
    h.write(1, e, put("g", "theirs")).await.expect("write");
    assert!(matches!(h.write_once(1, e, guarded.clone(), id(1, 1)).await, Err(Error::ConditionFailed { .. })));
    h.write(1, e, vec![Op::delete(b"g".to_vec())]).await.expect("delete");
    assert!(matches!(h.write_once(1, e, guarded.clone(), id(1, 1)).await, Err(Error::Invalid(_))));
    assert_eq!(value_on(h.clone(), 1, "g").await, None, "the failed write stayed unapplied");
    h.write_once(1, e, guarded.clone(), id(1, 2)).await.expect("a new write: the condition holds now");
    assert_eq!(value_on(h.clone(), 1, "g").await.as_deref(), Some("mine"));

    // A split: the new shard knows what its parent applied.
    h.write_once(1, e, put("p", "first"), id(2, 1)).await.expect("write");
    h.write(1, e, put("p", "second")).await.expect("another write");
    h.split(1, e, b"m".to_vec(), 2).await.expect("split");
    let right = shard_leader(&c, 2, 5 * SEC).await;
    let e2 = right.status(2).await.expect("status").expect("shard 2").descriptor.epoch();
    right.write_once(2, e2, put("p", "first"), id(2, 1)).await.expect("the retry on the new shard");
    assert_eq!(value_on(right.clone(), 2, "p").await.as_deref(), Some("second"));

    // A merge: the merged shard knows what its source applied.
    let left = shard_leader(&c, 1, 5 * SEC).await;
    lead_here(&c, 2, left.node_id()).await;
    let right = shard_leader(&c, 2, 5 * SEC).await;
    let e2 = right.status(2).await.expect("status").expect("shard 2").descriptor.epoch();
    right.write_once(2, e2, put("q", "first"), id(3, 1)).await.expect("written on the source");
    right.write(2, e2, put("q", "second")).await.expect("another write");
    let merged = left.merge(2, 1, 5 * SEC).await.expect("merge");
    left.write_once(1, merged.epoch(), put("q", "first"), id(3, 1)).await.expect("the retry on the merged shard");
    left.write_once(1, merged.epoch(), put("p", "first"), id(2, 1)).await.expect("and the older one");
    assert_eq!(value_on(left.clone(), 1, "q").await.as_deref(), Some("second"));
    assert_eq!(value_on(left.clone(), 1, "p").await.as_deref(), Some("second"));

    // A snapshot: a replica that never applied the write learns its record with the data.
    let follower = c.live().into_iter().find(|n| *n != left.node_id()).expect("a follower");
    c.wait_converged(5 * SEC).await;
    let behind = c.handle(follower).expect("runs").status(1).await.expect("status").expect("replica").applied;
    c.kill(follower);
    let e = merged.epoch();
    left.write_once(1, e, put("s", "first"), id(4, 1)).await.expect("write");
    left.write(1, e, put("s", "second")).await.expect("another write");
    for i in 0..60u32 {
        left.write(1, e, put(&format!("fill{i:03}"), "x")).await.expect("fill the log");
    }
    c.restart(follower);
    c.wait_converged(30 * SEC).await;
    let st = c.handle(follower).expect("runs").status(1).await.expect("status").expect("replica");
    assert!(st.first_index > behind + 1, "the follower caught up by snapshot: {st:?} (was at {behind})");
    lead_here(&c, 1, follower).await;
    let fh = c.handle(follower).expect("runs");
    fh.write_once(1, e, put("s", "first"), id(4, 1)).await.expect("the retry on the snapshot's receiver");
    assert_eq!(value_on(fh.clone(), 1, "s").await.as_deref(), Some("second"), "the snapshot carried the record");

    // A snapshot to a replica that stayed up: the record it knew in memory before is replaced
    // by the snapshot's, not kept (`dedup::KnownRecords`).
    let third = c.live().into_iter().find(|n| *n != left.node_id() && *n != follower).expect("a third node");
    fh.write_once(1, e, put("u", "first"), id(5, 1)).await.expect("write");
    c.wait_converged(5 * SEC).await;
    let behind = c.handle(third).expect("runs").status(1).await.expect("status").expect("replica").applied;
    let cut = c.net.add_filter(Filter::Isolate(third));
    fh.write_once(1, e, put("u", "second"), id(5, 2)).await.expect("the slot's next write, unseen there");
    fh.write(1, e, put("u", "third")).await.expect("another write");
    for i in 0..60u32 {
        fh.write(1, e, put(&format!("more{i:03}"), "x")).await.expect("fill the log");
    }
    c.net.remove_filter(cut);
    c.wait_converged(30 * SEC).await;
    let st = c.handle(third).expect("runs").status(1).await.expect("status").expect("replica");
    assert!(st.first_index > behind + 1, "the third node caught up by snapshot: {st:?} (was at {behind})");
    lead_here(&c, 1, third).await;
    let th = c.handle(third).expect("runs");
    th.write_once(1, e, put("u", "second"), id(5, 2)).await.expect("the retry on the snapshot's receiver");
    assert_eq!(value_on(th, 1, "u").await.as_deref(), Some("third"), "the retry did not apply again");
}

/// A frozen source serves nothing and takes no membership change; when the commit cannot
/// apply (here: the target split and is no longer adjacent), the merge rolls back and the
/// source serves again at a newer epoch.
#[tokio::test(start_paused = true)]
async fn merge_that_cannot_commit_rolls_back() {
    use presage_replication::{AdminEntry, Op};
    let c = Cluster::start_sharded(3, seed(), presage_tests::cluster::test_config(), 2);
    let leader = shard_leader(&c, 1, 5 * SEC).await;
    lead_here(&c, 2, leader.node_id()).await;
    let d1 = leader.status(1).await.expect("status").expect("shard 1").descriptor;
    let d2 = leader.status(2).await.expect("status").expect("shard 2").descriptor;
    leader.admin(2, d2.epoch(), AdminEntry::PrepareMerge(d1.clone())).await.expect("prepare");
    let frozen = leader.status(2).await.expect("status").expect("shard 2").descriptor;
    assert_eq!(frozen.merging_into, Some(1));
    let put = |k: &str| vec![Op::put(k.as_bytes().to_vec(), b"v".to_vec())];
    assert!(matches!(leader.write(2, frozen.epoch(), put("t")).await, Err(Error::EpochNotMatch { .. })));
    let remove_3 = conf_change(&[(raft::eraftpb::ConfChangeType::RemoveNode, 3)]);
    assert!(matches!(leader.change_membership(2, remove_3).await, Err(Error::Config(_))));

    leader.split(1, d1.epoch(), b"c".to_vec(), 3).await.expect("split the target");
    assert!(matches!(leader.merge(2, 1, SEC).await, Err(Error::Config(_))), "not adjacent any more");
    let after = leader.status(2).await.expect("status").expect("shard 2").descriptor;
    assert_eq!(after.merging_into, None);
    assert_eq!(after.epoch().version, frozen.epoch().version + 1);
    leader.write(2, after.epoch(), put("t")).await.expect("the source serves again");
}

/// Lease reads (thesis §6.4.1): once a ReadIndex round confirmed the leader, reads need no
/// round trip until the lease runs out (4/5 of the election timeout, minus a tick, so that
/// no other leader can exist meanwhile); after that they need a quorum again.
#[tokio::test(start_paused = true)]
async fn lease_reads_skip_the_round_trip_only_while_the_lease_lasts() {
    use presage_replication::{RaftConfig, ReadRequest, ReadResponse};
    use presage_tests::cluster::SHARD;
    let config = RaftConfig { lease_reads: true, ..presage_tests::cluster::test_config() };
    let lease = config.lease().expect("lease reads are on");
    let c = Cluster::start_with(3, seed(), config);
    let leader = c.wait_leader(5 * SEC).await;
    c.put(b"k", b"v").await.expect("put");
    let h = c.handle(leader).expect("leader runs");
    let epoch = c.epoch().await;
    let get = || ReadRequest::Get(b"k".to_vec());
    let value = ReadResponse::Value(Some(b"v".to_vec()));
    assert_eq!(h.read(SHARD, epoch, get()).await.expect("read through ReadIndex"), value);

    let cut = c.net.add_filter(Filter::Isolate(leader));
    let off_loop = h.local_reads();
    assert_eq!(h.read(SHARD, epoch, get()).await.expect("read under the lease, no round trip"), value);
    assert_eq!(h.local_reads(), off_loop + 1, "served off the store loop");
    tokio::time::sleep(lease).await;
    let late = tokio::time::timeout(Duration::from_millis(300), h.read(SHARD, epoch, get())).await;
    assert!(!matches!(late, Ok(Ok(_))), "after the lease a cut-off leader must not answer: {late:?}");
    c.net.remove_filter(cut);
}

/// A `CommitMerge` that reaches a replica before that node's source replica froze waits (its
/// apply and every later entry of the target) and goes through once the source froze. Driven
/// directly on one single-voter store so that both proposals land in the same ready round,
/// the target (lower id) applied first.
#[test]
fn commit_merge_waits_for_the_local_source_to_freeze() {
    use presage_engine::MemEngine;
    use presage_replication::{AdminEntry, Epoch, Replica, ShardDescriptor, Store};
    use std::sync::{Arc, Mutex};
    let desc = |id: u64, start: &[u8], end: Option<&[u8]>| ShardDescriptor {
        id,
        start: start.to_vec(),
        end: end.map(<[u8]>::to_vec),
        epoch: Some(Epoch { version: 1, conf_ver: 1 }),
        replicas: vec![Replica::voter(1)],
        merging_into: None,
    };
    let (target, source) = (desc(1, b"", Some(b"m")), desc(2, b"m", None));
    let mut store = Store::open(1, MemEngine::new(), presage_tests::cluster::test_config()).expect("open a store");
    store.bootstrap_shards(vec![target.clone(), source.clone()]).expect("bootstrap");
    for id in [1, 2] {
        store.campaign(id).expect("campaign");
    }
    for _ in 0..3 {
        store.process_ready().expect("ready");
    }
    let results = Arc::new(Mutex::new(Vec::new()));
    let record = |what: &'static str| {
        let results = Arc::clone(&results);
        Box::new(move |r: Result<(), Error>| results.lock().expect("lock").push((what, r.is_ok())))
    };
    let mut frozen = source.clone();
    frozen.merging_into = Some(1);
    frozen.epoch = Some(Epoch { version: 2, conf_ver: 1 });
    store.propose_admin(2, source.epoch(), AdminEntry::PrepareMerge(target.clone()), record("prepare"));
    store.propose_admin(1, target.epoch(), AdminEntry::CommitMerge(frozen), record("commit"));

    // A round appends both (its log write completes at once), the next commits and applies.
    store.process_ready().expect("ready");
    store.process_ready().expect("ready");
    let waiting = store.status(1).expect("target");
    assert!(waiting.applied < waiting.commit, "the commit waits for the source: {waiting:?}");
    assert_eq!(*results.lock().expect("lock"), vec![("prepare", true)]);
    assert_eq!(store.status(2).expect("source").descriptor.merging_into, Some(1));

    store.process_ready().expect("ready");
    assert_eq!(*results.lock().expect("lock"), vec![("prepare", true), ("commit", true)]);
    let merged = store.status(1).expect("target").descriptor;
    assert_eq!((merged.start.as_slice(), merged.end.as_deref(), merged.epoch().version), (&b""[..], None, 3));
    assert!(store.status(2).is_none(), "the source replica is gone");
}

/// §5.3 (a deterministic state machine): a check is decided at apply, from the log and the
/// state before its command, so every replica decides alike. Sixteen "create if absent"
/// proposals in flight at once commit in the same few rounds (applied into one batch), and
/// exactly one wins: each check sees the writes of the commands applied before it.
#[tokio::test(start_paused = true)]
async fn conditional_writes_decide_alike_on_every_replica_even_within_one_apply_round() {
    use presage_replication::wire::{Expect, Op};
    let c = Cluster::start(3, seed());
    let leader = c.wait_leader(5 * SEC).await;
    let h = c.handle(leader).expect("leader handle");
    let epoch = c.epoch().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16u8 {
        let h = h.clone();
        let ops = vec![Op::check(b"k".to_vec(), Expect::Absent, Vec::new()), Op::put(b"k".to_vec(), vec![i])];
        tasks.spawn(async move { (i, h.write(presage_tests::cluster::SHARD, epoch, ops).await) });
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            (i, Ok(())) => winners.push(i),
            (_, Err(Error::ConditionFailed { key, current, .. })) => losers.push((key, current)),
            (i, Err(e)) => panic!("write {i}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create-if-absent wins");
    let won = vec![winners[0]];
    assert!(losers.iter().all(|(k, cur)| k == b"k" && cur.as_ref() == Some(&won)), "{losers:?}");
    // Equals: a compare-and-set succeeds on the value it read and fails on a stale one.
    let cas = |expect: Vec<u8>, new: u8| {
        vec![Op::check(b"k".to_vec(), Expect::Equals, expect), Op::put(b"k".to_vec(), vec![new])]
    };
    c.write(cas(won.clone(), 100), 5 * SEC).await.expect("CAS on the current value");
    let stale = c.write(cas(won, 101), 5 * SEC).await;
    assert!(matches!(stale, Err(Error::ConditionFailed { current: Some(ref v), .. }) if v == &vec![100]), "{stale:?}");
    // Present: a delete only if there; a failed check writes nothing of its command.
    let ops =
        vec![Op::check(b"absent".to_vec(), Expect::Present, Vec::new()), Op::put(b"side".to_vec(), b"x".to_vec())];
    assert!(matches!(c.write(ops, 5 * SEC).await, Err(Error::ConditionFailed { current: None, .. })));
    assert_eq!(c.get(b"side").await.expect("get"), None, "a failed check applies none of its command's writes");
    assert_eq!(c.get(b"k").await.expect("get"), Some(vec![100]));
    c.wait_converged(5 * SEC).await;
}

/// Expiry: a value past its deadline reads as absent, fails `Present` checks, and the
/// leader's sweep deletes it on every replica; a value before its deadline stays.
#[tokio::test(start_paused = true)]
async fn expired_values_read_absent_and_the_sweep_removes_them_everywhere() {
    use presage_engine::{Cf, Reader};
    use presage_replication::value::wall_now_ms;
    use presage_replication::wire::{Expect, Op};
    use presage_replication::{ReadRequest, ReadResponse};
    let c = Cluster::start(3, seed());
    c.wait_leader(5 * SEC).await;
    let now = wall_now_ms();
    let hour_ms = 3_600_000;
    c.write(vec![Op::put_expiring(b"gone".to_vec(), b"v".to_vec(), now - 1)], 5 * SEC).await.expect("put");
    c.write(vec![Op::put_expiring(b"kept".to_vec(), b"v".to_vec(), now + hour_ms)], 5 * SEC).await.expect("put");
    c.put(b"plain", b"v").await.expect("put");
    assert_eq!(c.get(b"gone").await.expect("get"), None);
    assert_eq!(c.get(b"kept").await.expect("get"), Some(b"v".to_vec()));
    let present = vec![Op::check(b"gone".to_vec(), Expect::Present, Vec::new()), Op::delete(b"plain".to_vec())];
    assert!(matches!(c.write(present, 5 * SEC).await, Err(Error::ConditionFailed { current: None, .. })));
    // The sweep (a page every few ticks) deletes the expired value's bytes on every node.
    let deadline = tokio::time::Instant::now() + 20 * SEC;
    loop {
        let left: Vec<u64> =
            c.all().into_iter().filter(|id| c.engine(*id).get(Cf::Data, b"gone").ok().flatten().is_some()).collect();
        if left.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nodes {left:?} still hold the expired value");
        tokio::time::sleep(SEC / 2).await;
    }
    for id in c.all() {
        assert!(c.engine(id).get(Cf::Data, b"kept").expect("read").is_some(), "node {id} kept the live value");
    }
    assert_eq!(c.get(b"plain").await.expect("get"), Some(b"v".to_vec()));
    // A read with the deadline, and a check on value and deadline together (a
    // read-modify-write that keeps the expiry): it holds only for the exact pair.
    let leader = c.wait_leader(5 * SEC).await;
    let h = c.handle(leader).expect("leader handle");
    let read = ReadRequest::GetWithDeadline(b"kept".to_vec());
    let kept = h.read(presage_tests::cluster::SHARD, c.epoch().await, read).await.expect("read");
    let deadline_ms = now + hour_ms;
    assert_eq!(kept, ReadResponse::ValueWithDeadline(Some((b"v".to_vec(), Some(deadline_ms)))));
    for wrong in [None, Some(deadline_ms + 1)] {
        let ops = vec![Op::check_exactly(b"kept".to_vec(), b"v".to_vec(), wrong), Op::delete(b"plain".to_vec())];
        assert!(matches!(c.write(ops, 5 * SEC).await, Err(Error::ConditionFailed { .. })), "deadline {wrong:?}");
    }
    let ops = vec![Op::check_exactly(b"kept".to_vec(), b"v".to_vec(), Some(deadline_ms)), Op::put(b"kept", b"w")];
    c.write(ops, 5 * SEC).await.expect("the exact value and deadline hold");
    let ops = vec![Op::check_exactly(b"plain".to_vec(), b"v".to_vec(), None), Op::delete(b"plain".to_vec())];
    c.write(ops, 5 * SEC).await.expect("a value without a deadline checks with none");
    assert_eq!(c.get(b"plain").await.expect("get"), None);
}

/// Asks node `h` for its checksum of shard 1 at `index`, retrying while it has not applied
/// `index` yet.
async fn replica_checksum_when_ready(
    h: &presage_replication::NodeHandle,
    index: u64,
    timeout: Duration,
) -> presage_replication::ChecksumAt {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match h.replica_checksum(1, index).await {
            Ok(at) => return at,
            Err(Error::ChecksumNotReady { applied, .. }) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {} did not reach index {index} within {timeout:?} (applied {applied})",
                    h.node_id()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("node {}: checksum at {index}: {e}", h.node_id()),
        }
    }
}

/// Waits until learner `node` of shard 1 applied at least what the leader had applied when
/// the wait began.
async fn wait_learner_caught_up(c: &Cluster, node: u64, timeout: Duration) {
    let leader = c.wait_leader(timeout).await;
    let target = c.handle(leader).expect("runs").status(1).await.expect("status").expect("replica").applied;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = c.handle(node).expect("runs").status(1).await {
            if s.applied >= target {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "learner {node} did not catch up: {:?}", c.views().await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Range checksum at a log index (TiKV's consistency check), §5.3 (State Machine Safety: every
/// replica applies the same commands in the same log order): a `ComputeChecksum` entry makes
/// every replica, learners included, pin its data exactly as of that entry, so under a write
/// load that never stops, the leader's checksum and every other replica's at the same index
/// agree although each is asked after it applied further writes. Data changed behind Raft's
/// back on one replica shows in the next round, on that replica only.
#[tokio::test(start_paused = true)]
async fn range_checksums_at_one_log_index_agree_on_every_replica_under_writes() {
    use presage_engine::{Cf, Engine, WriteBatch, WriteOptions};
    use presage_replication::Op;
    use presage_tests::cluster::SHARD;
    let mut c = Cluster::start(3, seed());
    c.wait_leader(5 * SEC).await;
    for i in 0..50u32 {
        c.put(format!("pre{i:03}").as_bytes(), &[b'p'; 50]).await.expect("put");
    }
    c.add_node(4);
    let leader = c.wait_leader(5 * SEC).await;
    c.handle(leader).expect("runs").add_learner(SHARD, 4).await.expect("add learner");
    wait_learner_caught_up(&c, 4, 10 * SEC).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(continuous_writer(c.directory(), stop.clone()));
    let mut moved_on = 0;
    let mut last = None;
    for round in 0..5u32 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let leader = c.wait_leader(5 * SEC).await;
        let h = c.handle(leader).expect("runs");
        let epoch = c.epoch().await;
        // A burst of writes proposed right behind the checksum: they commit with it, in the
        // same rounds, and every replica must pin its data before applying them.
        let burst = async {
            let writes: Vec<_> = (0..10u32)
                .map(|i| {
                    let (h, key) = (h.clone(), format!("burst{round}-{i}").into_bytes());
                    tokio::spawn(async move { h.write(SHARD, epoch, vec![Op::put(key, b"b".to_vec())]).await })
                })
                .collect();
            for w in writes {
                w.await.expect("write task").expect("burst write");
            }
        };
        let (at, ()) = tokio::join!(h.compute_checksum(SHARD, epoch), burst);
        let at = at.expect("checksum on the leader");
        assert!(last.is_none_or(|l| at.index > l), "round {round}: a later round is at a later index");
        last = Some(at.index);
        assert_ne!(c.data_checksum(leader), at.checksum, "round {round}: the leader applied the burst since");
        for id in c.live().into_iter().filter(|id| *id != leader) {
            let got = replica_checksum_when_ready(&c.handle(id).expect("runs"), at.index, 10 * SEC).await;
            assert_eq!(got, at, "round {round}: node {id} disagrees with leader {leader} at index {}", at.index);
            if c.data_checksum(id) != at.checksum {
                moved_on += 1; // it applied writes past the index before it answered
            }
        }
    }
    assert!(moved_on > 0, "no follower applied past a checksum's index before answering: the pin is not exercised");

    // A write behind Raft's back on a follower, inside the shard.
    let leader = c.wait_leader(5 * SEC).await;
    let victim = c.live().into_iter().find(|id| *id != leader && *id != 4).expect("a voting follower");
    let mut wb = WriteBatch::new();
    wb.put(Cf::Data, b"pre007".to_vec(), b"\x00tampered".to_vec());
    c.engine(victim).write(&wb, WriteOptions::NO_SYNC).expect("write behind raft");
    let h = c.handle(leader).expect("runs");
    let at = h.compute_checksum(SHARD, c.epoch().await).await.expect("checksum on the leader");
    assert!(at.index > last.expect("rounds ran"));
    for id in c.live().into_iter().filter(|id| *id != leader) {
        let got = replica_checksum_when_ready(&c.handle(id).expect("runs"), at.index, 10 * SEC).await;
        if id == victim {
            assert_eq!(got.index, at.index);
            assert_ne!(got.checksum, at.checksum, "node {id}'s tampered data must not checksum equal");
            assert_eq!(got.checksum.pairs, at.checksum.pairs, "same keys, one value differs");
        } else {
            assert_eq!(got, at, "node {id} was not tampered with");
        }
    }

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await.expect("writer");
    assert!(acked.len() > 20, "writes went on during the checksums: {}", acked.len());
    c.put(b"pre007", b"repaired").await.expect("put");
    c.wait_converged(10 * SEC).await;
    for key in &acked {
        assert_eq!(c.get(key.as_bytes()).await.expect("get"), Some(b"x".to_vec()), "acknowledged {key} lost");
    }
}

/// A replica asked for a checksum at an index it has not applied answers "not ready" (here: a
/// follower cut off from the leader, §5.3), and the checksum once it caught up; after a newer
/// round replaced its pin, the older index is "missed". A stale epoch is refused.
#[tokio::test(start_paused = true)]
async fn replica_checksum_is_not_ready_before_its_index_and_missed_after_a_newer_round() {
    use presage_tests::cluster::SHARD;
    let c = Cluster::start(3, seed());
    let leader = c.wait_leader(5 * SEC).await;
    for i in 0..20u32 {
        c.put(format!("k{i}").as_bytes(), b"v").await.expect("put");
    }
    c.wait_converged(5 * SEC).await;
    let h = c.handle(leader).expect("runs");
    let follower = c.live().into_iter().find(|id| *id != leader).expect("a follower");
    let fh = c.handle(follower).expect("runs");

    let cut = c.net.add_filter(Filter::Isolate(follower));
    c.put(b"while-cut", b"v").await.expect("the majority commits");
    let at = h.compute_checksum(SHARD, c.epoch().await).await.expect("checksum");
    match fh.replica_checksum(SHARD, at.index).await {
        Err(Error::ChecksumNotReady { shard_id, index, applied }) => {
            assert_eq!((shard_id, index), (SHARD, at.index));
            assert!(applied < at.index, "applied {applied}");
        }
        other => panic!("a cut-off follower must not be ready at {}: {other:?}", at.index),
    }
    assert!(matches!(h.replica_checksum(SHARD, at.index + 1_000).await, Err(Error::ChecksumNotReady { .. })));
    c.net.remove_filter(cut);
    assert_eq!(replica_checksum_when_ready(&fh, at.index, 10 * SEC).await, at, "same data once caught up");
    assert_eq!(at.checksum.pairs, 21);

    let newer = h.compute_checksum(SHARD, c.epoch().await).await.expect("a newer round");
    assert!(newer.index > at.index);
    assert_eq!(newer.checksum, at.checksum, "no write in between");
    for id in c.live() {
        let nh = c.handle(id).expect("runs");
        assert_eq!(replica_checksum_when_ready(&nh, newer.index, 10 * SEC).await, newer);
        match nh.replica_checksum(SHARD, at.index).await {
            Err(Error::ChecksumMissed { shard_id, index }) => assert_eq!((shard_id, index), (SHARD, at.index)),
            other => panic!("node {id}: the replaced round must be missed: {other:?}"),
        }
    }
    let stale = presage_replication::Epoch { version: 0, ..c.epoch().await };
    assert!(matches!(h.compute_checksum(SHARD, stale).await, Err(Error::EpochNotMatch { .. })));
    assert!(matches!(h.replica_checksum(99, 1).await, Err(Error::ShardNotFound { shard_id: 99 })));
    let follower_asked = fh.compute_checksum(SHARD, c.epoch().await).await;
    assert!(matches!(follower_asked, Err(Error::NotLeader { .. })), "{follower_asked:?}");
}

/// §6 (cluster membership changes: joint consensus) and thesis §4.3: `swap_replicas` makes a
/// learner a voter and a voter a learner in one `ConfChangeV2`, through the joint configuration
/// `C_old,new` and raft-rs's automatic leave. Under continuous writes the swap answers once
/// the joint configuration is left: exactly the expected voters and learners, `conf_ver` up by
/// two (entering and leaving each bump it), the same on every replica; a further membership
/// change (removing the demoted learner) then commits. A swap that would not make sense is
/// refused before anything is proposed.
#[tokio::test(start_paused = true)]
async fn swap_replicas_exchanges_a_learner_and_a_voter_through_joint_consensus() {
    use presage_replication::{Replica, ShardDescriptor};
    use presage_tests::cluster::SHARD;
    let mut c = Cluster::start(3, seed());
    c.wait_leader(5 * SEC).await;
    for i in 0..30u32 {
        c.put(format!("pre{i}").as_bytes(), b"p").await.expect("put");
    }
    c.add_node(4);
    let leader = c.wait_leader(5 * SEC).await;
    let h = c.handle(leader).expect("runs");
    h.add_learner(SHARD, 4).await.expect("add learner");
    wait_learner_caught_up(&c, 4, 10 * SEC).await;
    let before = h.status(SHARD).await.expect("status").expect("replica").descriptor;
    assert!(before.replicas.contains(&Replica::learner(4)), "{before:?}");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(continuous_writer(c.directory(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let demote = (1..=3).find(|n| *n != leader).expect("a voting follower");
    h.swap_replicas(SHARD, 4, demote).await.expect("swap");

    let roles = |d: &ShardDescriptor| {
        let ids = |voter: bool| -> Vec<u64> {
            d.replicas.iter().filter(|r| r.is_voter() == voter).map(|r| r.node_id).collect()
        };
        (ids(true), ids(false))
    };
    let expected_voters: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|n| *n != demote).collect();
    let after = h.status(SHARD).await.expect("status").expect("replica").descriptor;
    assert_eq!(roles(&after), (expected_voters.clone(), vec![demote]), "left the joint state: {after:?}");
    assert_eq!(after.epoch().conf_ver, before.epoch().conf_ver + 2, "enter and leave each bump conf_ver");
    assert_eq!(after.epoch().version, before.epoch().version);
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    for id in c.live() {
        loop {
            let d = c.handle(id).expect("runs").status(SHARD).await.expect("status").expect("replica").descriptor;
            if d == after {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "node {id} stays at {d:?}, leader has {after:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // Out of the joint state: the next membership change is taken (raft-rs ignores one
    // proposed in a joint configuration).
    h.remove_replica(SHARD, demote).await.expect("remove the demoted learner");
    let removed = h.status(SHARD).await.expect("status").expect("replica").descriptor;
    assert_eq!(roles(&removed), (expected_voters.clone(), vec![]));
    assert_eq!(removed.epoch().conf_ver, after.epoch().conf_ver + 1);
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    while c.handle(demote).expect("runs").status(SHARD).await.expect("status").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the removed replica on {demote} is not destroyed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Refusals: nothing is proposed.
    c.add_node(5);
    h.add_learner(SHARD, 5).await.expect("add learner 5");
    let voter = expected_voters.iter().copied().find(|n| *n != leader).expect("a voting follower");
    for (promote, demote, why) in [
        (voter, leader, "promote is not a learner"),
        (demote, voter, "promote is not a learner"),
        (5, 5, "the same node"),
        (5, 99, "demote is not a voter"),
        (5, leader, "demote is this leader"),
    ] {
        match h.swap_replicas(SHARD, promote, demote).await {
            Err(Error::SwapRefused { reason, .. }) => eprintln!("swap {promote} in, {demote} out: refused: {reason}"),
            other => panic!("swap {promote} in, {demote} out ({why}) must be refused: {other:?}"),
        }
    }
    let follower = c.handle(voter).expect("runs");
    assert!(matches!(follower.swap_replicas(SHARD, 5, leader).await, Err(Error::NotLeader { .. })));
    let unchanged = h.status(SHARD).await.expect("status").expect("replica").descriptor;
    assert_eq!(unchanged.epoch().conf_ver, removed.epoch().conf_ver + 1, "only learner 5 was added");

    tokio::time::sleep(SEC).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await.expect("writer");
    assert!(acked.len() > 20, "writes went on during the swap: {}", acked.len());
    c.wait_converged(20 * SEC).await;
    for key in &acked {
        assert_eq!(c.get(key.as_bytes()).await.expect("get"), Some(b"x".to_vec()), "acknowledged {key} lost");
    }
    // Node 4 votes now: with the leader gone, the other two voters elect one and commit.
    c.kill(leader);
    c.wait_leader(10 * SEC).await;
    c.put(b"after", b"1").await.expect("the new configuration commits");
}

/// Shard 1 over the whole key space at `epoch`, voters on `nodes`.
fn whole_keyspace(epoch: presage_replication::Epoch, nodes: &[u64]) -> presage_replication::ShardDescriptor {
    presage_replication::ShardDescriptor {
        id: 1,
        start: Vec::new(),
        end: None,
        epoch: Some(epoch),
        replicas: nodes.iter().map(|n| presage_replication::Replica::voter(*n)).collect(),
        merging_into: None,
    }
}

/// A node whose disk stalls blocks its loop in the engine write. While the loop makes no
/// progress, reads and writes are refused at once with `Unresponsive` (a definite error:
/// nothing was proposed) instead of waiting on it, so that a client goes to another replica;
/// the write the loop had already taken completes once the disk is back, and so do new
/// ones. Real time; the log writes are made on the loop (one synced write), so that it is the
/// apply's plain write, stalled, that blocks the loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_loop_refuses_requests_at_once_and_recovers() {
    use presage_engine::{FaultConfig, FaultInjector, FaultRule, FaultyEngine, MemEngine};
    use presage_replication::{Epoch, MemNetwork, Node, Op, Store};
    use std::sync::Arc;
    let faults = Arc::new(FaultInjector::new());
    let engine = FaultyEngine::new(MemEngine::new(), Arc::clone(&faults));
    let config = presage_replication::RaftConfig::default();
    let mut store = Store::open(1, engine, config.clone()).expect("open");
    let epoch = Epoch { version: 1, conf_ver: 1 };
    store.bootstrap_shards(vec![whole_keyspace(epoch, &[1])]).expect("bootstrap");
    let net = MemNetwork::new(seed());
    let node = Node::spawn(store, net.transport(), &config);
    let h = node.handle();
    h.campaign(1).await.expect("campaign");
    let put = |k: &str| vec![Op::put(k.as_bytes().to_vec(), b"v".to_vec())];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.write(1, epoch, put("first")).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Plain writes (the apply batch) block for 3 s: the next write's apply blocks the loop.
    let stall = FaultConfig { write: FaultRule::stall(Duration::from_secs(3)), ..FaultConfig::default() };
    faults.set(stall).expect("stall");
    let stall_ends = tokio::time::Instant::now() + Duration::from_secs(3);
    let taken = tokio::spawn({
        let h = h.clone();
        async move { h.write(1, epoch, vec![Op::put(b"taken".to_vec(), b"v".to_vec())]).await }
    });
    let stalled_at = std::time::Instant::now();
    while h.loop_silent_ms() < config.max_mailbox_wait_ms {
        assert!(stalled_at.elapsed() < Duration::from_millis(2_500), "the loop never blocked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = std::time::Instant::now();
    let refused = h.write(1, epoch, put("refused")).await;
    assert!(matches!(refused, Err(Error::Unresponsive { .. })), "{refused:?}");
    assert!(refused.as_ref().is_err_and(Error::is_definite), "nothing was proposed");
    let read = h.read(1, epoch, presage_replication::ReadRequest::Get(b"first".to_vec())).await;
    assert!(
        matches!(read, Err(Error::Unresponsive { .. }) | Ok(presage_replication::ReadResponse::Value(Some(_)))),
        "a read is served under the lease or refused: {read:?}"
    );
    assert!(asked.elapsed() < Duration::from_millis(500), "refused at once, not after a wait: {:?}", asked.elapsed());

    // The disk comes back: the taken write completes (or, had the loop blocked on another
    // plain write before taking it, was refused and never applied), new ones go through.
    tokio::time::sleep_until(stall_ends + Duration::from_millis(300)).await;
    let taken = taken.await.expect("task");
    assert!(taken.as_ref().map_or_else(Error::is_definite, |_| true), "{taken:?}");
    h.write(1, epoch, put("after")).await.expect("write after the stall");
    let value = h.read(1, epoch, presage_replication::ReadRequest::Get(b"refused".to_vec())).await.expect("read");
    assert_eq!(value, presage_replication::ReadResponse::Value(None), "the refused write was never applied");
    let value = h.read(1, epoch, presage_replication::ReadRequest::Get(b"taken".to_vec())).await.expect("read");
    let applied = value == presage_replication::ReadResponse::Value(Some(b"v".to_vec()));
    assert_eq!(applied, taken.is_ok(), "the taken write applied exactly when acknowledged: {taken:?}");
    node.kill();
}

/// Three nodes of shard 1 (voters 1, 2, 3 over the whole key space at `epoch`), each on a
/// `FaultyEngine` over a `MemEngine`, spawned on the test's runtime and connected by `net`;
/// with each node's fault injector.
fn faulty_three_nodes(
    config: &presage_replication::RaftConfig,
    net: &presage_replication::MemNetwork,
    epoch: presage_replication::Epoch,
) -> (
    std::collections::BTreeMap<u64, presage_replication::Node>,
    std::collections::BTreeMap<u64, std::sync::Arc<presage_engine::FaultInjector>>,
) {
    use presage_engine::{FaultInjector, FaultyEngine, MemEngine};
    use presage_replication::{Node, Store};
    use std::sync::Arc;
    let shard = whole_keyspace(epoch, &[1, 2, 3]);
    let (mut nodes, mut faults) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
    for id in 1..=3u64 {
        let injector = Arc::new(FaultInjector::new());
        let mut store =
            Store::open(id, FaultyEngine::new(MemEngine::new(), Arc::clone(&injector)), config.clone()).expect("open");
        store.bootstrap_shards(vec![shard.clone()]).expect("bootstrap");
        let node = Node::spawn(store, net.transport(), config);
        let handle = node.handle();
        net.connect(id, Arc::new(move |env| handle.deliver(env)));
        nodes.insert(id, node);
        faults.insert(id, injector);
    }
    (nodes, faults)
}

/// A leader whose disk stalls is stuck in the engine write, so a leadership transfer would
/// wait with it. Its own disk check then hands the leadership away without the loop
/// (`NodeHandle::hand_off_stuck`): its lease is fenced, its requests are refused at once,
/// and it asks a follower to campaign. The stuck node serves no read under its old lease,
/// and a follower leads before any election timer (10 s here) could fire. Real time.
///
/// Known gap: in this in-process cluster the follower takes over only when node 1's loop
/// returns (about 3.7 s, by its hand-on of a fenced term), not at the hand-off; node
/// processes under the same fault hand off within 0.5 s (`scenario failing-node --fault
/// stall`). Why the asked follower's election does not complete here is not yet known.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_stuck_on_its_disk_hands_off_without_its_loop() {
    use std::collections::BTreeMap;

    use presage_engine::{FaultConfig, FaultRule};
    use presage_replication::{Epoch, MemNetwork, NodeHandle, Op, ReadRequest, ReadResponse};
    let config = presage_replication::RaftConfig {
        election_ticks: 100,
        deterministic_elections: true,
        ..presage_replication::RaftConfig::default()
    };
    let net = MemNetwork::new(seed());
    let epoch = Epoch { version: 1, conf_ver: 1 };
    let (nodes, faults) = faulty_three_nodes(&config, &net, epoch);
    let handles: BTreeMap<u64, NodeHandle> = nodes.iter().map(|(id, n)| (*id, n.handle())).collect();
    let h1 = handles[&1].clone();
    h1.campaign(1).await.expect("campaign");
    let put = |k: &str, v: &str| vec![Op::put(k.as_bytes().to_vec(), v.as_bytes().to_vec())];
    let get = || ReadRequest::Get(b"k".to_vec());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h1.write(1, epoch, put("k", "old")).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "node 1 never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reads until one is served under the published lease.
    while h1.local_reads() == 0 {
        assert!(std::time::Instant::now() < deadline, "no lease published");
        assert_eq!(h1.read(1, epoch, get()).await.expect("read"), ReadResponse::Value(Some(b"old".to_vec())));
    }

    let stall = FaultRule::stall(Duration::from_secs(4));
    faults[&1].set(FaultConfig { write: stall, sync: stall, ..FaultConfig::default() }).expect("stall");
    let taken = tokio::spawn({
        let h1 = h1.clone();
        async move { h1.write(1, epoch, vec![Op::put(b"taken".to_vec(), b"v".to_vec())]).await }
    });
    while h1.loop_silent_ms() < 300 {
        assert!(std::time::Instant::now() < deadline + Duration::from_secs(5), "the loop never blocked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = std::time::Instant::now();
    let started = h1.hand_off_stuck();
    assert_eq!(started.len(), 1, "the one leadership under a lease: {started:?}");
    assert!(h1.hand_off_stuck().is_empty(), "fenced once");
    // Until its loop beats again, the stuck node refuses at once: clients go elsewhere.
    let refused = h1.write(1, epoch, put("k", "refused")).await;
    assert!(matches!(refused, Err(Error::Unresponsive { .. })), "{refused:?}");
    assert!(asked.elapsed() < Duration::from_millis(config.max_mailbox_wait_ms), "refused at once");
    let leads = |h: NodeHandle| async move { h.status(1).await.ok().flatten().is_some_and(|s| s.is_leader()) };
    let new = loop {
        let mut found = None;
        for id in [2u64, 3] {
            if leads(handles[&id].clone()).await {
                found = Some(id);
            }
        }
        if let Some(id) = found {
            break id;
        }
        assert!(asked.elapsed() < Duration::from_secs(6), "no follower took over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let election = Duration::from_millis(config.tick_interval_ms * config.election_ticks as u64);
    assert!(asked.elapsed() < election, "took over in {:?}, not by an election timer", asked.elapsed());
    let nh = handles[&new].clone();
    nh.write(1, epoch, put("k", "new")).await.expect("the new leader writes");
    // The stuck node answers no read under its fenced lease: refused, or the new value.
    let stale = h1.read(1, epoch, get()).await;
    assert!(
        stale.is_err() || stale.as_ref().is_ok_and(|r| *r == ReadResponse::Value(Some(b"new".to_vec()))),
        "{stale:?}"
    );

    // The disk comes back: node 1 follows, and the taken write applied exactly when acknowledged.
    let taken = taken.await.expect("task");
    let back = std::time::Instant::now();
    while leads(h1.clone()).await {
        assert!(back.elapsed() < Duration::from_secs(5), "node 1 never stepped down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        nh.read(1, epoch, get()).await.expect("read"),
        ReadResponse::Value(Some(b"new".to_vec())),
        "the refused write never applied"
    );
    let value = nh.read(1, epoch, ReadRequest::Get(b"taken".to_vec())).await.expect("read");
    if taken.is_ok() {
        assert_eq!(value, ReadResponse::Value(Some(b"v".to_vec())), "an acknowledged write is kept");
    }
    for node in nodes.into_values() {
        node.kill();
    }
}

/// Fail-stop after hand-off: when its engine starts failing writes, the leader hands its
/// leadership to a caught-up follower (by transfer, well before any election timer could
/// fire), refuses what it is asked meanwhile (`DiskFailed`, nothing done), then stops. Every
/// acknowledged write is on the new leader.
#[tokio::test(start_paused = true)]
async fn a_leader_whose_disk_fails_hands_off_then_stops() {
    use std::collections::BTreeMap;

    use presage_engine::{FaultConfig, FaultRule};
    use presage_replication::{Epoch, MemNetwork, Node, Op, ReadRequest, ReadResponse};
    let config = presage_tests::cluster::test_config();
    let net = MemNetwork::new(seed());
    let epoch = Epoch { version: 1, conf_ver: 1 };
    let (nodes, faults) = faulty_three_nodes(&config, &net, epoch);
    let leader_of = |nodes: &BTreeMap<u64, Node>| {
        let nodes: Vec<(u64, presage_replication::NodeHandle)> =
            nodes.iter().map(|(id, n)| (*id, n.handle())).collect();
        async move {
            for (id, h) in nodes {
                if h.status(1).await.ok().flatten().is_some_and(|s| s.is_leader()) {
                    return Some(id);
                }
            }
            None
        }
    };
    let mut leader = None;
    for _ in 0..200 {
        leader = leader_of(&nodes).await;
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let old = leader.expect("a leader");
    let h = nodes[&old].handle();
    for i in 0..20u32 {
        h.write(1, epoch, vec![Op::put(format!("k{i}").into_bytes(), b"v".to_vec())]).await.expect("acknowledged");
    }

    // Every write of the leader's engine fails from now on.
    let broken = FaultRule::errors(1.0);
    faults[&old].set(FaultConfig { write: broken, sync: broken, ..FaultConfig::default() }).expect("faults");
    let failed_at = tokio::time::Instant::now();
    let doomed = h.write(1, epoch, vec![Op::put(b"doomed".to_vec(), b"v".to_vec())]).await;
    assert!(doomed.is_err(), "a write the failing leader took is never acknowledged: {doomed:?}");
    let refused = h.write(1, epoch, vec![Op::put(b"refused".to_vec(), b"v".to_vec())]).await;
    assert!(
        matches!(refused, Err(Error::DiskFailed | Error::Stopped)),
        "refused while failing, or the node already stopped: {refused:?}"
    );

    // A follower leads within a few message delays: by the transfer, not an election timer.
    let mut new = None;
    while failed_at.elapsed() < Duration::from_secs(2) {
        new = leader_of(&nodes).await.filter(|l| *l != old);
        if new.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let new = new.expect("a new leader");
    let min_election = Duration::from_millis(config.tick_interval_ms * config.election_ticks as u64);
    assert!(
        failed_at.elapsed() < min_election,
        "handed off in {:?} (elections take {min_election:?})",
        failed_at.elapsed()
    );
    for _ in 0..300 {
        if nodes[&old].is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(nodes[&old].is_finished(), "the failing node stops once it leads nothing");
    let nh = nodes[&new].handle();
    for i in 0..20u32 {
        let got = nh.read(1, epoch, ReadRequest::Get(format!("k{i}").into_bytes())).await.expect("read");
        assert_eq!(got, ReadResponse::Value(Some(b"v".to_vec())), "acknowledged write k{i}");
    }
    nh.write(1, epoch, vec![Op::put(b"after".to_vec(), b"v".to_vec())]).await.expect("writes go on");
    let refused_value = nh.read(1, epoch, ReadRequest::Get(b"refused".to_vec())).await.expect("read");
    assert_eq!(refused_value, ReadResponse::Value(None), "a refused write was never applied");
}

/// Clocks (issue 23): a leader whose clock jumps an hour ahead expires nothing early, since
/// values expire by the group's median clock; it reports itself out of sync and serves no
/// leased read meanwhile.
#[tokio::test(start_paused = true)]
async fn a_leader_whose_clock_jumps_ahead_expires_nothing_early() {
    use presage_replication::{Op, ReadRequest, ReadResponse};
    let mut c = Cluster::start(3, seed());
    let leader = c.wait_leader(10 * SEC).await;
    let h = c.handle(leader).expect("leader");
    let epoch = c.epoch().await;
    let in_ten_minutes = presage_replication::value::wall_now_ms() + 600_000;
    h.write(1, epoch, vec![Op::put_expiring(b"k".to_vec(), b"v".to_vec(), in_ten_minutes)]).await.expect("put");
    tokio::time::sleep(SEC).await;
    // In sync, leased reads are served off the loop: the first read's ReadIndex round starts
    // the lease, the next one uses it.
    let get = || h.read(1, epoch, ReadRequest::Get(b"k".to_vec()));
    let before = h.local_reads();
    get().await.expect("read");
    get().await.expect("read");
    assert!(h.local_reads() > before, "a leased read off the loop before the jump");

    c.set_clock_skew(leader, 3_600_000);
    // Sweeps run every few ticks on the leader; give it many.
    tokio::time::sleep(5 * SEC).await;
    assert_eq!(c.leader().await, Some(leader), "the jump alone moves no leadership");
    let summary = h.summary().await.expect("summary");
    assert!(summary.clock_out_of_sync, "the leader says its clock is off: {summary:?}");
    assert!(summary.clock_offset_ms.is_some_and(|o| o < -3_000_000), "offset {:?}", summary.clock_offset_ms);
    let reads_before = h.local_reads();
    let read = get().await.expect("read");
    assert_eq!(read, ReadResponse::Value(Some(b"v".to_vec())), "the value is alive for the group");
    get().await.expect("read");
    assert_eq!(h.local_reads(), reads_before, "no read under a lease while out of sync");
    for id in c.all() {
        let stored = presage_engine::Reader::get(c.engine(id), presage_engine::Cf::Data, b"k").expect("get");
        assert!(stored.is_some(), "node {id} deleted a live value");
    }

    c.set_clock_skew(leader, 0);
    tokio::time::sleep(SEC).await;
    assert!(!h.summary().await.expect("summary").clock_out_of_sync, "back in sync");
}
