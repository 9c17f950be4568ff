//! Crash tests at the store's write boundaries (issue 23): a failpoint (`fail` crate, the
//! replication crate's `failpoints` feature) panics one node's store loop right at a
//! boundary of a split, a merge, a membership change, a snapshot's staging or install, or a
//! log sync; the node then loses power there (its in-memory engine keeps what was synced
//! plus a random prefix of the rest, `MemEngine::crash`), restarts, and the cluster must
//! converge: every replica at the same applied index with equal data, every acknowledged
//! write read back.
//!
//! A binary of its own because failpoints are process-wide: `fail::FailScenario` serialises
//! the tests that set them. Each failpoint runs `PRESAGE_FAILPOINT_SEEDS` seeds (default 3)
//! from `PRESAGE_TEST_SEED` (default 1); a failure prints its seed.

use std::collections::BTreeMap;
use std::time::Duration;

use presage_replication::{Error, Filter, NodeHandle, Op, RaftConfig, ReadRequest, ReadResponse};
use presage_tests::cluster::{test_config, Cluster, SHARD};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SEC: Duration = Duration::from_secs(1);

/// What makes the cluster pass the failpoint.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// Split shard 1 at a key from `k0005` to `k0014`; the right part becomes shard 100.
    Split,
    /// Merge shard 2 into shard 1.
    Merge,
    /// Add node 4 as a learner of shard 1, then promote it.
    ConfChange,
    /// Cut a follower off while the log moves past the compaction threshold, then heal: the
    /// follower catches up by snapshot.
    Snapshot,
    /// Plain writes (every round syncs the log).
    Writes,
}

fn run(failpoint: &str, trigger: Trigger) {
    presage_tests::init_log();
    let first: u64 = std::env::var("PRESAGE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let count: u64 = std::env::var("PRESAGE_FAILPOINT_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let scenario = fail::FailScenario::setup();
    for seed in first..first + count {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        let outcome = rt.block_on(crash_at(failpoint, trigger, seed));
        fail::remove(failpoint);
        if let Err(e) = outcome {
            panic!("failpoint {failpoint}, seed {seed} (replay with PRESAGE_TEST_SEED={seed}): {e}");
        }
    }
    scenario.teardown();
}

fn key(i: u64) -> Vec<u8> {
    format!("k{i:04}").into_bytes()
}

/// The live node leading `shard`, if one does.
async fn leader_of(c: &Cluster, shard: u64) -> Option<NodeHandle> {
    for id in c.live() {
        let h = c.handle(id)?;
        if let Ok(Some(s)) = h.status(shard).await {
            if s.is_leader() {
                return Some(h);
            }
        }
    }
    None
}

async fn wait_leader_of(c: &Cluster, shard: u64) -> Result<NodeHandle, String> {
    for _ in 0..200 {
        if let Some(h) = leader_of(c, shard).await {
            return Ok(h);
        }
        tokio::time::sleep(SEC / 20).await;
    }
    Err(format!("shard {shard} has no leader"))
}

/// Shards a test may create: the first two and a split's right part.
const SHARDS: [u64; 3] = [1, 2, 100];

/// The leader of the shard holding `key` and the epoch to route with, if one is known.
async fn route(c: &Cluster, key: &[u8]) -> Option<(NodeHandle, u64, presage_replication::Epoch)> {
    for id in c.live() {
        let Some(h) = c.handle(id) else { continue };
        for shard in SHARDS {
            if let Ok(Some(s)) = h.status(shard).await {
                let holds = s.descriptor.range().is_ok_and(|r| r.contains(key));
                if s.is_leader() && holds && s.descriptor.merging_into.is_none() {
                    return Some((h.clone(), shard, s.descriptor.epoch()));
                }
            }
        }
    }
    None
}

/// A write or a read of `key` through whichever shard holds it now, retried (on routing and
/// leadership errors) for up to 10 s.
async fn routed(c: &Cluster, key: &[u8], value: Option<&[u8]>) -> Result<Option<Vec<u8>>, Error> {
    let mut last = Error::NotLeader { shard_id: 0, leader: None };
    for _ in 0..100 {
        if let Some((h, shard, epoch)) = route(c, key).await {
            let attempt = async {
                match value {
                    Some(v) => h.write(shard, epoch, vec![Op::put(key.to_vec(), v.to_vec())]).await.map(|()| None),
                    None => match h.read(shard, epoch, ReadRequest::Get(key.to_vec())).await? {
                        ReadResponse::Value(v) => Ok(v),
                        other => Err(Error::Invalid(format!("get answered {other:?}"))),
                    },
                }
            };
            match tokio::time::timeout(SEC, attempt).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) if !e.is_retryable() => return Err(e),
                Ok(Err(e)) => last = e,
                Err(_) => last = Error::OutcomeUnknown { shard_id: shard, reason: "client timeout" },
            }
        }
        tokio::time::sleep(SEC / 10).await;
    }
    Err(last)
}

/// Puts `keys`; records the acknowledged ones.
async fn put_all(c: &Cluster, keys: std::ops::Range<u64>, tag: &str, acked: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
    for i in keys {
        let value = format!("{tag}-{i}").into_bytes();
        if routed(c, &key(i), Some(&value)).await.is_ok() {
            acked.insert(key(i), value);
        }
    }
}

async fn trigger(
    c: &mut Cluster,
    how: Trigger,
    rng: &mut SmallRng,
    acked: &mut BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), String> {
    match how {
        Trigger::Split => {
            let h = wait_leader_of(c, SHARD).await?;
            let epoch = h.status(SHARD).await.ok().flatten().ok_or("no status")?.descriptor.epoch();
            // The outcome does not matter: the node that fails may be this one.
            let at = key(rng.random_range(5..15));
            let _ = tokio::time::timeout(5 * SEC, h.split(SHARD, epoch, at, 100)).await;
        }
        Trigger::Merge => {
            let left = wait_leader_of(c, 1).await?;
            let right = wait_leader_of(c, 2).await?;
            if right.node_id() != left.node_id() {
                let _ = right.transfer_leader(2, left.node_id()).await;
                for _ in 0..100 {
                    if leader_of(c, 2).await.is_some_and(|h| h.node_id() == left.node_id()) {
                        break;
                    }
                    tokio::time::sleep(SEC / 20).await;
                }
            }
            let _ = tokio::time::timeout(10 * SEC, left.merge(2, 1, 5 * SEC)).await;
        }
        Trigger::ConfChange => {
            c.add_node(4);
            let h = wait_leader_of(c, SHARD).await?;
            let _ = tokio::time::timeout(5 * SEC, h.add_learner(SHARD, 4)).await;
            tokio::time::sleep(SEC).await;
            if let Some(h) = leader_of(c, SHARD).await {
                let _ = tokio::time::timeout(5 * SEC, h.promote_learner(SHARD, 4)).await;
            }
        }
        Trigger::Snapshot => {
            let h = wait_leader_of(c, SHARD).await?;
            let follower = c.live().into_iter().find(|n| *n != h.node_id()).ok_or("no follower")?;
            let cut = c.net.add_filter(Filter::Isolate(follower));
            put_all(c, 100..rng.random_range(200..300), "far", acked).await;
            c.net.remove_filter(cut);
        }
        Trigger::Writes => put_all(c, 300..340, "w", acked).await,
    }
    Ok(())
}

/// The index of the snapshot node `id`'s engine marks as being installed, if any.
fn pending_snapshot_index(c: &Cluster, id: u64) -> Result<Option<u64>, String> {
    use prost::Message;
    let key = presage_replication::keys::pending_snapshot_key(SHARD);
    let raw = presage_engine::Reader::get(c.engine(id), presage_engine::Cf::Meta, &key).map_err(|e| e.to_string())?;
    raw.map(|r| raft::eraftpb::Snapshot::decode(r.as_slice()).map(|s| s.get_metadata().index))
        .transpose()
        .map_err(|e| format!("the pending snapshot mark does not decode: {e}"))
}

async fn crash_at(failpoint: &str, how: Trigger, seed: u64) -> Result<(), String> {
    let raft = RaftConfig { log_gc_threshold_entries: 50, snapshot_chunk_bytes: 1024, ..test_config() };
    let shards = if matches!(how, Trigger::Merge) { 2 } else { 1 };
    let mut c = Cluster::start_sharded(3, seed, raft, shards);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xfa11);
    c.wait_leader(10 * SEC).await;
    let mut acked = BTreeMap::new();
    put_all(&c, 0..rng.random_range(15..30), "before", &mut acked).await;

    // One node fails at the boundary; the failpoint is off again right after.
    fail::cfg(failpoint, "1*panic").map_err(|e| format!("failpoint {failpoint}: {e}"))?;
    trigger(&mut c, how, &mut rng, &mut acked).await?;
    let mut victim = None;
    for _ in 0..400 {
        victim = c.finished().into_iter().next();
        if victim.is_some() {
            break;
        }
        tokio::time::sleep(SEC / 20).await;
    }
    let victim = victim.ok_or_else(|| format!("no node reached {failpoint}"))?;
    let loss = c.crash(victim, &mut rng);
    tracing::info!(failpoint, victim, kept = loss.kept, unsynced = loss.unsynced, "node crashed at the failpoint");
    let marked = pending_snapshot_index(&c, victim)?;
    if failpoint.starts_with("snapshot_") && failpoint.ends_with("install") && marked.is_none() {
        return Err(format!("{failpoint}: node {victim} crashed without its snapshot install marked"));
    }
    c.restart(victim);
    if let Some(index) = marked {
        // The restart finished the install before the node heard from anyone: its replica is
        // at the snapshot's index already (the old metadata never meets the new data).
        let h = c.handle(victim).ok_or("the restarted node is not running")?;
        let status = h.status(SHARD).await.map_err(|e| e.to_string())?.ok_or("no replica after the restart")?;
        if status.applied < index || pending_snapshot_index(&c, victim)?.is_some() {
            return Err(format!(
                "node {victim} restarted at applied {} under a snapshot marked at {index}",
                status.applied
            ));
        }
    }

    put_all(&c, 30..40, "after", &mut acked).await;
    c.wait_leader(20 * SEC).await;
    c.put(b"final", b"done").await.map_err(|e| format!("final write failed: {e}"))?;
    c.wait_converged(60 * SEC).await;
    for (k, v) in &acked {
        let got = routed(&c, k, None).await.map_err(|e| format!("read of {k:?} failed: {e}"))?;
        if got.as_ref() != Some(v) {
            return Err(format!("acknowledged {k:?} = {v:?} reads {got:?} after the crash of node {victim}"));
        }
    }
    Ok(())
}

#[test]
fn a_crash_after_a_split_is_written_converges() {
    run("apply_split_written", Trigger::Split);
}

#[test]
fn a_crash_after_a_merge_is_written_converges() {
    run("apply_merge_written", Trigger::Merge);
}

#[test]
fn a_crash_after_a_membership_change_is_written_converges() {
    run("apply_conf_change_written", Trigger::ConfChange);
}

#[test]
fn a_crash_while_a_snapshot_is_staged_converges() {
    run("snapshot_chunk_staged", Trigger::Snapshot);
}

#[test]
fn a_crash_before_a_snapshot_is_installed_converges() {
    run("snapshot_before_install", Trigger::Snapshot);
}

#[test]
fn a_crash_between_a_snapshots_data_and_its_metadata_converges() {
    run("snapshot_after_install", Trigger::Snapshot);
}

#[test]
fn a_crash_before_the_log_is_synced_converges() {
    run("raft_log_before_sync", Trigger::Writes);
}
