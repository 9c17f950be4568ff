//! Crash tests in real node processes (built with `presage-tools/failpoints`, as `make test`
//! builds them): a voter is restarted with `PRESAGE_CRASH_AT` naming a failpoint, the operation
//! that reaches it is triggered (a split, a merge, writes, a membership change as another
//! voter is decommissioned to the spare, a snapshot to a node far behind), the process kills
//! itself there (SIGKILL) and is started again without it. Then every
//! shard's replicas agree (range checksums at one log index) and every acknowledged write reads
//! back. The in-process crash tests (`tests/tests/failpoints`) cover the same failpoints with
//! power loss and seeds; these show that a real process, its RocksDB and its restart do too.

use std::collections::BTreeMap;
use std::time::Duration;

use presage_client::Client;
use presage_playground::{ClusterFile, Playground};
use presage_shardmgr::AdminCommand;

use super::{get_retrying, options, put_acked};

struct Crashes {
    /// The node killed at each failpoint: a voter of every shard, not the first node.
    victim: u64,
    pg: Playground,
    cluster: ClusterFile,
    client: Client,
    admin: presage_ctl::AdminClient,
    log: std::path::PathBuf,
    overrides: Vec<String>,
    acked: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Crashes {
    /// Writes `n` keys `{prefix}-{i}`, keeping those acknowledged (most must be: two of
    /// three nodes run throughout).
    async fn write(&mut self, prefix: &str, n: u32) {
        let mut acked = 0;
        for i in 0..n {
            let (k, v) = (format!("{prefix}-{i:04}"), format!("{prefix}-value-{i}"));
            if put_acked(&self.client, k.as_bytes(), v.as_bytes()).await {
                self.acked.insert(k.into_bytes(), v.into_bytes());
                acked += 1;
            }
        }
        assert!(acked * 10 >= n * 9, "{prefix}: only {acked} of {n} writes acknowledged");
    }

    fn crashes_logged(&self, failpoint: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.matches(&format!("crashing at failpoint {failpoint} ")).count()
    }

    /// Restarts the victim (killed first if running) armed to die at `failpoint`.
    fn arm(&mut self, failpoint: &str) {
        self.pg.kill(self.victim);
        let env = [("PRESAGE_CRASH_AT", failpoint)];
        self.pg.restart_with_env(self.victim, &self.overrides, &env).expect("restart armed");
    }

    /// Waits until the victim died at `failpoint` (its log says so), then starts it again
    /// without the failpoint.
    async fn died_at(&mut self, failpoint: &str, before: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.pg.is_running(self.victim) {
            assert!(tokio::time::Instant::now() < deadline, "node {} never reached failpoint {failpoint}", self.victim);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            self.crashes_logged(failpoint),
            before + 1,
            "node {} died at {failpoint}, not elsewhere",
            self.victim
        );
        self.pg.restart(self.victim, &self.overrides).expect("restart");
    }

    /// Every shard's replicas agree and every acknowledged write reads back.
    async fn converged(&self, after: &str) {
        let ready = async {
            while presage_playground::ready(&self.cluster, 3, 3).await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(120), ready)
            .await
            .unwrap_or_else(|_| panic!("no recovery after {after}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        // Every shard compared: wait until the listed shards cover the key space (a split's
        // parent may not have reported its narrower range yet).
        let shards = loop {
            let rows = self.admin.shards(None, None, None).expect("shards");
            let mut at: Option<&[u8]> = Some(b"");
            let mut covered = true;
            for r in &rows {
                covered &= at == Some(r.shard.start.as_slice());
                at = r.shard.end.as_deref();
            }
            if (covered && at.is_none()) || tokio::time::Instant::now() >= deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        for row in &shards {
            loop {
                let v: Option<serde_json::Value> =
                    self.admin.get(&format!("/v1/shards/{}/checksums", row.shard.id)).ok();
                let equal = v.as_ref().is_some_and(|v| {
                    v["equal"] == true && v["replicas"].as_array().map(Vec::len) == Some(row.shard.replicas.len())
                });
                if equal {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "after {after}: shard {} differs: {v:?}", row.shard.id);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        for (k, v) in &self.acked {
            let got = get_retrying(&self.client, k).await;
            assert_eq!(got.as_ref(), Some(v), "after {after}: {}", String::from_utf8_lossy(k));
        }
    }

    fn shard_of(&self, key: &[u8]) -> u64 {
        let rows = self.admin.shards(None, None, Some(key)).expect("shards");
        rows.iter().find(|r| r.shard.start.as_slice() <= key).map(|r| r.shard.id).expect("a shard holds the key")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_killed_at_failpoints_restart_and_converge_without_losing_acknowledged_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A group of three and a spare in a fourth region (a decommission moves a voter to it).
    let mut opts = options(dir.path(), 4);
    opts.regions = 4;
    // A node down for a few hundred writes catches up by snapshot.
    opts.overrides = vec!["raft.log-gc-threshold-entries=40".into()];
    let pg = Playground::start(&opts).await.expect("playground starts");
    let cluster = ClusterFile::read(dir.path()).expect("cluster.json");
    let client = Client::connect(&cluster.native_addrs(), cluster.security.client_config()).await.expect("client");
    let admin = pg.admin(1).expect("admin").client();
    let voters = admin.shards(None, None, Some(b"a")).expect("shards")[0].shard.voters();
    let mut others = voters.into_iter().filter(|n| *n != 1);
    let (victim, leaving) = (others.next().expect("a second voter"), others.next().expect("a third voter"));
    let log = dir.path().join(format!("node-{victim}/node.log"));
    let overrides = opts.overrides.clone();
    let mut t = Crashes { victim, pg, cluster, client, admin, log, overrides, acked: BTreeMap::new() };
    // Only the splits and merges asked for here.
    t.admin.admin(&AdminCommand::PauseScheduler).expect("pause the scheduler");
    t.write("a", 60).await;

    // A split, applied (its batch written) and not acted on yet.
    let before = t.crashes_logged("apply_split_written");
    t.arm("apply_split_written");
    let parent = t.shard_of(b"a-0030");
    let split = t.admin.admin(&AdminCommand::Split { shard: parent, key: Some(b"a-0030".to_vec()) });
    assert!(split.is_ok(), "the split is accepted: {split:?}");
    t.died_at("apply_split_written", before).await;
    t.write("b", 30).await;
    t.converged("a crash at apply_split_written").await;
    let right = t.shard_of(b"a-0030");
    assert_ne!(parent, right, "the split took effect ({split:?})");

    // The merge of the two halves back.
    let before = t.crashes_logged("apply_merge_written");
    t.arm("apply_merge_written");
    let merge = t.admin.admin(&AdminCommand::Merge { shard: parent });
    assert!(merge.is_ok(), "the merge is accepted: {merge:?}");
    t.died_at("apply_merge_written", before).await;
    t.write("c", 30).await;
    t.converged("a crash at apply_merge_written").await;
    assert_eq!(t.shard_of(b"a-0030"), parent, "the merge took effect ({merge:?})");

    // Writes: before the log write of a round is synced.
    let before = t.crashes_logged("raft_log_before_sync");
    t.arm("raft_log_before_sync");
    t.write("d", 30).await;
    t.died_at("raft_log_before_sync", before).await;
    t.converged("a crash at raft_log_before_sync").await;

    // Membership changes: another voter is decommissioned, its replicas move to the spare
    // (a learner added, promoted in a joint change, the voter removed).
    let before = t.crashes_logged("apply_conf_change_written");
    t.arm("apply_conf_change_written");
    let moved = t.admin.admin(&AdminCommand::Decommission { node: leaving });
    assert!(moved.is_ok(), "the decommission is accepted: {moved:?}");
    t.died_at("apply_conf_change_written", before).await;
    t.write("e", 30).await;
    // Shards move one at a time: wait until the last one left, then check again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let rows = t.admin.shards(None, None, None).expect("shards");
        if rows.iter().all(|r| r.shard.replica(leaving).is_none()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {leaving} still holds replicas");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    t.converged("a crash at apply_conf_change_written").await;

    // Snapshots: the victim misses more than the leaders keep of their logs, then dies while
    // taking a snapshot in: a chunk staged, before the install, after it.
    for (round, failpoint) in
        ["snapshot_chunk_staged", "snapshot_before_install", "snapshot_after_install"].iter().enumerate()
    {
        t.pg.kill(t.victim);
        t.write(&format!("s{round}"), 120).await;
        let before = t.crashes_logged(failpoint);
        t.arm(failpoint);
        t.died_at(failpoint, before).await;
        t.converged(&format!("a crash at {failpoint}")).await;
    }
    t.pg.stop(Duration::from_secs(15));
}
