//! What a heartbeat's answer names (stale and unlisted replicas, in bounded turns) and what a
//! heartbeat carries besides its leader reports (the load a node served as a follower).

use super::*;

/// A heartbeat's answer names the node's replicas to check with their peers: of a shard whose
/// newer configuration leaves the node out (stale), and of a shard the directory does not list
/// (unlisted: merged away while the node was out of its group, or not reported yet).
#[test]
fn a_heartbeat_answer_names_stale_and_unlisted_replicas() {
    let (_sim, mut m) = three_nodes(&test_config());
    let real = m.directory().get(1).expect("shard 1").clone();
    let older = Epoch { conf_ver: real.epoch.conf_ver, ..real.epoch };
    let hb = |replicas: Vec<(u64, Epoch)>| NodeHeartbeat { replicas, ..reports_only(9, Vec::new()) };
    assert!(m.heartbeat(hb(Vec::new()), 1_000).is_none(), "node 9 never joined");
    let (node, unknown) = (real.replicas[0].node, 4_242);
    let hb = |replicas: Vec<(u64, Epoch)>| NodeHeartbeat { replicas, ..reports_only(node, Vec::new()) };
    let answer = m.heartbeat(hb(vec![(1, older), (unknown, older)]), 1_000).expect("a member");
    assert!(answer.stale.is_empty(), "the node is in shard 1's configuration: {answer:?}");
    assert_eq!(answer.unlisted, [unknown]);
    let many: Vec<(u64, Epoch)> = (10_000..10_100).map(|id| (id, older)).collect();
    let answer = m.heartbeat(hb(many), 1_000).expect("a member");
    assert_eq!(answer.unlisted.len(), presage_shardmgr::MAX_UNLISTED_PER_HEARTBEAT, "bounded");
}

/// Reads its followers served (replica reads) count towards a shard's load with its leader's
/// next report, once and only while recent; the leader's own claim to have served some as a
/// follower counts for nothing.
#[test]
fn follower_loads_add_to_the_leaders_next_report() {
    let (_sim, mut m) = three_nodes(&test_config());
    let real = m.directory().get(1).expect("shard 1").clone();
    let leader = real.leader.expect("a leader");
    let follower = real.replicas.iter().map(|r| r.node).find(|n| *n != leader).expect("a follower");
    let reads = |ops: u64| LoadReport { interval_ms: 1_000, read_ops: ops, ..LoadReport::default() };
    let hb = |node: u64, shards: Vec<ShardReport>, loads: Vec<(u64, LoadReport)>| NodeHeartbeat {
        replicas: vec![(1, real.epoch)],
        replica_loads: loads,
        ..reports_only(node, shards)
    };
    let report = || ShardReport { shard: real.clone(), load: reads(100), size_bytes: 0, keys: 0 };
    m.heartbeat(hb(follower, Vec::new(), vec![(1, reads(300))]), 1_000).expect("a member");
    m.heartbeat(hb(leader, Vec::new(), vec![(1, reads(5_000))]), 1_000).expect("a member");
    m.heartbeat(hb(leader, vec![report()], Vec::new()), 1_000).expect("a member");
    let qps = |m: &Manager| m.shard_soft(1).expect("reported").load.read_qps;
    assert_eq!(qps(&m), 400.0, "the leader's 100 and the follower's 300 reads per second");
    m.heartbeat(hb(leader, vec![report()], Vec::new()), 2_000).expect("a member");
    assert_eq!(qps(&m), 100.0, "counted once");
    // A follower's report older than two heartbeat intervals is not added.
    let late = 3_000 + 3 * test_config().heartbeat_interval_ms;
    m.heartbeat(hb(follower, Vec::new(), vec![(1, reads(300))]), 3_000).expect("a member");
    m.heartbeat(hb(leader, vec![report()], Vec::new()), late).expect("a member");
    assert_eq!(qps(&m), 100.0, "a stale follower report is dropped");
}
