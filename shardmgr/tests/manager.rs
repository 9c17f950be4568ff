//! The shard manager against a simulated cluster: the simulation carries out the manager's
//! commands on a model of the shards (as the replication layer would) and sends heartbeats;
//! the manager's meta writes go to a map that a successor manager recovers from.
//!
//! Seeded and deterministic; a failure prints its seed (`PRESAGE_TEST_SEED` replays one).
//!
//! The manager against a simulated data layer (joins, size and load splits, merge after the delay,
//! fail-over mid-operator, rollback, node states, a new group taking shards; migration: prepare
//! then cut over to a spare, stand-down with hysteresis, a copy failing verification rolled back, a
//! fail-over mid-copy, a failed node replaced) and the 1,000-node/100,000-shard round; known
//! events (maintenance windows, spikes) in `manager/events.rs`; predicted load in
//! `manager/forecast.rs`; capacity advice in `manager/capacity.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use presage_shardmgr::load::KeySpan;
use presage_shardmgr::meta::PersistedState;
use presage_shardmgr::model::{ReplicaMeta, Role};
use presage_shardmgr::{
    Command, Effects, Epoch, LoadReport, Manager, ManagerConfig, NodeHeartbeat, NodeMeta, NodeState, NodeStats,
    OperatorKind, OperatorStatus, RiskInputs, ShardMeta, ShardReport, Step, Verification, META_SHARD_ID,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[path = "manager/events.rs"]
mod events;
#[path = "manager/sim.rs"]
mod sim;
use sim::{thousand_nodes, Sim};
#[path = "manager/capacity.rs"]
mod capacity;
#[path = "manager/forecast.rs"]
mod forecast;
#[path = "manager/heartbeat.rs"]
mod heartbeat;
#[path = "manager/shift.rs"]
mod shift;

fn key(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

fn num(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[..n].copy_from_slice(&k[..n]);
    u64::from_be_bytes(b)
}

fn node(id: u64, region: &str) -> NodeMeta {
    NodeMeta {
        id,
        raft_addr: format!("n{id}:1"),
        client_addr: format!("n{id}:2"),
        resp_addr: String::new(),
        admin_addr: String::new(),
        region: region.into(),
        capacity_bytes: 1 << 40,
        capacity_qps: 10_000,
        state: NodeState::Up,
        group: None,
        insecure: false,
    }
}

fn seed() -> u64 {
    std::env::var("PRESAGE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

fn test_config() -> ManagerConfig {
    ManagerConfig {
        split_max_size_bytes: 64 << 20,
        merge_max_size_bytes: 8 << 20,
        load_split_qps: 1000.0,
        load_split_window_ms: 10_000,
        merge_delay_ms: 60_000,
        split_merge_interval_ms: 120_000,
        operator_step_timeout_ms: 30_000,
        // These tests judge balancing by the latest report; the forecast's own tests turn
        // it on (`manager/forecast.rs`).
        forecast_balance: false,
        leader_move_hold_ms: 0,
        ..ManagerConfig::default()
    }
}

fn voters(sim: &Sim, shard: u64) -> Vec<u64> {
    sim.shards[&shard].voters()
}

/// Bootstraps and joins nodes 2 and 3; returns once the meta shard and shard 1 hold all three.
fn three_nodes(cfg: &ManagerConfig) -> (Sim, Manager) {
    let (mut sim, mut m) = Sim::bootstrap(seed(), cfg);
    sim.join(&mut m, node(2, "r2"));
    sim.join(&mut m, node(3, "r3"));
    for _ in 0..50 {
        sim.round(&mut m, 1000);
        let settled = m.operators().all(|op| op.status.is_finished());
        if voters(&sim, 0) == [1, 2, 3] && voters(&sim, 1) == [1, 2, 3] && settled {
            return (sim, m);
        }
    }
    panic!("seed {}: replicas did not reach the joined nodes: {:?}", seed(), sim.shards);
}

#[test]
fn joined_nodes_fill_the_first_group_and_receive_replicas() {
    let (sim, m) = three_nodes(&test_config());
    assert_eq!(m.groups().map(|g| g.nodes.clone()).collect::<Vec<_>>(), vec![vec![1, 2, 3]]);
    assert!(m.operators().all(|op| op.status == OperatorStatus::Done), "{:?}", m.operators().collect::<Vec<_>>());
    // The meta shard holds everything a successor needs.
    let successor = sim.recover(&test_config());
    assert_eq!(successor.directory().len(), 2);
    assert_eq!(successor.groups().count(), 1);
}

#[test]
fn a_large_shard_splits_at_its_middle() {
    let cfg = test_config();
    let (mut sim, mut m) = three_nodes(&cfg);
    sim.size.insert(1, (100 << 20, 10_000));
    let mut split_op = None;
    for _ in 0..5 {
        let fx = sim.round(&mut m, 1000);
        split_op = split_op.or(fx.finished.iter().find(|op| op.kind == OperatorKind::SizeSplit).cloned());
    }
    assert!(sim.shards.len() == 3, "seed {}: {:?}", seed(), sim.shards.keys().collect::<Vec<_>>());
    let op = split_op.expect("a size split finished");
    assert_eq!(op.status, OperatorStatus::Done);
    m.directory().check().expect("disjoint");
    assert_eq!(m.directory().len(), 3);
}

#[test]
fn a_hot_range_splits_by_load_after_the_window_and_the_halves_lead_apart() {
    let cfg = test_config();
    let (mut sim, mut m) = three_nodes(&cfg);
    // 3000 reads/s around key 2^40 inside shard 1; leaders all on node 1.
    sim.traffic = vec![(1 << 40, 3000)];
    let start = sim.now_ms;
    let mut split_at = None;
    for _ in 0..40 {
        let fx = sim.round(&mut m, 1000);
        if split_at.is_none() && fx.finished.iter().any(|op| op.kind == OperatorKind::LoadSplit) {
            split_at = Some(sim.now_ms - start);
        }
    }
    let took = split_at.unwrap_or_else(|| panic!("seed {}: no load split: {:?}", seed(), sim.shards));
    assert!(took >= cfg.load_split_window_ms, "split after {took} ms, before the window");
    // The hot spot's halves (the shards it touches) lead from different nodes.
    let hot: Vec<&ShardMeta> = sim
        .shards
        .values()
        .filter(|s| {
            s.id != 0
                && num(&s.start) <= (1u64 << 40) + 500_000
                && s.end.as_deref().is_none_or(|e| num(e) > (1u64 << 40) - 500_000)
        })
        .collect();
    assert!(hot.len() >= 2, "seed {}: {hot:?}", seed());
    let mut leaders: Vec<u64> = hot.iter().filter_map(|s| s.leader).collect();
    leaders.sort_unstable();
    leaders.dedup();
    assert!(leaders.len() >= 2, "seed {}: the hot halves share leader {leaders:?}", seed());
}

#[test]
fn cold_neighbours_merge_after_the_delay_only() {
    let cfg = test_config();
    let (mut sim, mut m) = three_nodes(&cfg);
    sim.size.insert(1, (100 << 20, 10_000));
    while sim.shards.len() < 3 {
        sim.round(&mut m, 1000);
    }
    // Both halves shrink (deleted data) and stay cold.
    let ids: Vec<u64> = sim.shards.keys().copied().filter(|id| *id != 0).collect();
    for id in &ids {
        sim.size.insert(*id, (1 << 20, 100));
    }
    let split_done = sim.now_ms;
    let mut merged_at = None;
    for _ in 0..300 {
        let fx = sim.round(&mut m, 1000);
        if fx.finished.iter().any(|op| op.kind == OperatorKind::Merge && op.status == OperatorStatus::Done) {
            merged_at = Some(sim.now_ms - split_done);
            break;
        }
    }
    let after = merged_at.unwrap_or_else(|| panic!("seed {}: no merge: {:?}", seed(), sim.shards));
    assert!(after >= cfg.split_merge_interval_ms, "merged {after} ms after a split");
    assert_eq!(sim.shards.len(), 2, "{:?}", sim.shards);
    m.directory().check().expect("disjoint");
}

#[test]
fn a_successor_finishes_an_operator_its_predecessor_started() {
    let cfg = test_config();
    let (mut sim, mut m) = three_nodes(&cfg);
    sim.join(&mut m, node(4, "r1"));
    sim.join(&mut m, node(5, "r2"));
    sim.join(&mut m, node(6, "r3"));
    // The commands of this round are lost with the manager.
    sim.size.insert(1, (200 << 20, 10));
    sim.drop_commands = true;
    sim.round(&mut m, 1000);
    sim.round(&mut m, 1000);
    let running: Vec<_> = m.operators().filter(|op| !op.status.is_finished()).cloned().collect();
    assert!(!running.is_empty(), "an operator runs");
    drop(m);
    sim.drop_commands = false;
    let mut m = sim.recover(&cfg);
    assert_eq!(m.groups().count(), 2, "the second group was persisted");
    for _ in 0..60 {
        sim.round(&mut m, 1000);
    }
    for op in running {
        let now = m.operators().find(|o| o.id == op.id).map(|o| o.status.clone());
        assert_eq!(now, Some(OperatorStatus::Done), "seed {}: operator {op:?}", seed());
    }
}

/// Node 4 joins (group 1 stays, with no other new nodes) and a manual move of shard 1 whose
/// learner never catches up is submitted; its AddLearner is carried out. The operator's id
/// (the caller stops carrying out promotions).
fn learner_on_node_4(sim: &mut Sim, m: &mut Manager) -> u64 {
    sim.join(m, node(4, "r4"));
    let op = m
        .submit(
            1,
            vec![Step::AddLearner { node: 4 }, Step::PromoteLearner { node: 4 }],
            vec![Step::RemoveReplica { node: 4 }],
            sim.now_ms,
        )
        .expect("submitted");
    sim.round(m, 1000);
    assert!(sim.shards[&1].replica(4).is_some());
    op
}

#[test]
fn a_step_that_never_happens_rolls_back() {
    let cfg = ManagerConfig { operator_step_timeout_ms: 5_000, ..test_config() };
    let (mut sim, mut m) = three_nodes(&cfg);
    let op = learner_on_node_4(&mut sim, &mut m);
    let mut rolled_back = false;
    for _ in 0..20 {
        sim.now_ms += 1000;
        sim.heartbeats(&mut m, 1000);
        let fx = m.tick(sim.now_ms);
        sim.persist(&fx);
        for c in &fx.commands {
            if !matches!(c.step, Step::PromoteLearner { .. }) {
                sim.execute(c);
            }
        }
        if m.operators().any(|o| o.id == op && matches!(o.status, OperatorStatus::RolledBack { .. })) {
            rolled_back = true;
            break;
        }
    }
    assert!(rolled_back, "{:?}", m.operators().find(|o| o.id == op));
    assert!(sim.shards[&1].replica(4).is_none(), "the learner was removed");
}

#[test]
fn silent_nodes_become_suspect_then_down() {
    let cfg = ManagerConfig { node_suspect_after_ms: 3_000, node_down_after_ms: 10_000, ..test_config() };
    let (mut sim, mut m) = three_nodes(&cfg);
    sim.dead.push(3);
    let state = |m: &Manager| m.nodes().find(|n| n.id == 3).map(|n| n.state);
    for _ in 0..4 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(state(&m), Some(NodeState::Suspect));
    for _ in 0..8 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(state(&m), Some(NodeState::Down));
    assert_eq!(m.groups().next().map(|g| g.failures.len()), Some(1));
    sim.dead.clear();
    sim.round(&mut m, 1000);
    assert_eq!(state(&m), Some(NodeState::Up));
}

#[test]
fn a_new_group_takes_shards_from_a_full_one() {
    let cfg = test_config();
    let (mut sim, mut m) = three_nodes(&cfg);
    // Many shards of 32 MiB on group 1: grow every shard past the split size a few times.
    for _ in 0..6 {
        for id in sim.shards.keys().copied().filter(|id| *id != 0).collect::<Vec<_>>() {
            sim.size.insert(id, (100 << 20, 10));
        }
        sim.round(&mut m, 1000);
        sim.round(&mut m, 1000);
    }
    for id in sim.shards.keys().copied().collect::<Vec<_>>() {
        sim.size.insert(id, (32 << 20, 10));
    }
    let before = sim.shards.len();
    assert!(before > 8, "{before} shards");
    for (id, r) in [(4, "r1"), (5, "r2"), (6, "r3")] {
        sim.join(&mut m, node(id, r));
    }
    for _ in 0..200 {
        sim.round(&mut m, 1000);
    }
    let on_new = sim.shards.values().filter(|s| s.voters() == [4, 5, 6]).count();
    let on_old = sim.shards.values().filter(|s| s.voters() == [1, 2, 3]).count();
    assert!(on_new >= 3 && on_old >= 3, "seed {}: old {on_old}, new {on_new} of {before}", seed());
    assert_eq!(on_new + on_old, sim.shards.len(), "every shard settled in one group");
    // No shard has more than one replica per region.
    for s in sim.shards.values() {
        let mut regions: Vec<_> =
            s.replicas.iter().map(|r| sim.nodes.iter().find(|n| n.id == r.node).map(|n| n.region.clone())).collect();
        regions.sort();
        regions.dedup();
        assert_eq!(regions.len(), s.replicas.len(), "shard {} doubles a region", s.id);
    }
}

/// Policy rounds at scale: 1,000 nodes, 100,000 shards. Reports how long heartbeat intake and
/// one scheduling round take (not asserted: speed is measured, not tested).
#[test]
fn a_round_at_1000_nodes_and_100k_shards() {
    let cfg = ManagerConfig {
        max_balance_moves_per_minute: 100_000,
        max_running_operators: 100_000,
        ..ManagerConfig::default()
    };
    let first = node(1, "r0");
    let mut m = Manager::bootstrap(cfg, 1, first, 0).expect("bootstrap");
    let mut rng = SmallRng::seed_from_u64(seed());
    for id in 2..=1000u64 {
        m.join(node(id, &format!("r{}", id % 3)), 0).expect("join");
    }
    let fx = m.tick(1);
    assert!(fx.writes.len() > 1000, "groups formed");
    let groups: Vec<Vec<u64>> = m.groups().map(|g| g.nodes.clone()).collect();
    assert_eq!(groups.len(), 333);
    // 100,000 shards spread over the groups, skewed sizes and loads, all led by each
    // group's first node (so leader balance has work everywhere).
    let shards = 100_000u64;
    let width = 0xff00_0000_0000_0000 / shards;
    let mut by_node: BTreeMap<u64, Vec<ShardReport>> = BTreeMap::new();
    for i in 0..shards {
        let g = &groups[(i as usize * groups.len()) / shards as usize];
        let leader = g[0];
        let s = ShardMeta {
            id: 10_000 + i,
            start: if i == 0 { Vec::new() } else { key(i * width) },
            end: Some(if i + 1 == shards { vec![0xff] } else { key((i + 1) * width) }),
            epoch: Epoch { version: 2, conf_ver: 3 },
            replicas: g.iter().map(|&node| ReplicaMeta { node, role: Role::Voter }).collect(),
            leader: Some(leader),
            merging_into: None,
        };
        let load = LoadReport {
            interval_ms: 1000,
            read_ops: rng.random_range(0..200),
            write_ops: rng.random_range(0..50),
            read_bytes: 0,
            write_bytes: 0,
            samples: Vec::new(),
            ..LoadReport::default()
        };
        let size_bytes = rng.random_range(1u64..300) << 20;
        by_node.entry(leader).or_default().push(ShardReport { shard: s, load, size_bytes, keys: 1000 });
    }
    let t = Instant::now();
    for (node, shards) in by_node.clone() {
        m.heartbeat(reports_only(node, shards), 1000);
    }
    let first_intake = t.elapsed();
    let fx = m.tick(1001);
    let persisted = fx.writes.len();
    // Steady state: the same shards report again (no epoch change), then one round.
    let t = Instant::now();
    for (node, shards) in by_node {
        m.heartbeat(reports_only(node, shards), 3500);
    }
    let intake = t.elapsed();
    let t = Instant::now();
    // Past the new manager's wait before balancing (three heartbeat intervals).
    let fx = m.tick(3501);
    let round = t.elapsed();
    eprintln!(
        "1000 nodes, {} shards: first heartbeats {first_intake:?} ({persisted} records), \
         steady heartbeats {intake:?}, scheduling round {round:?} ({} commands)",
        m.directory().len(),
        fx.commands.len()
    );
    assert_eq!(m.directory().len() as u64, shards, "every reported shard is known");
    assert!(!fx.commands.is_empty(), "the skewed cluster has balancing work");
    m.directory().check().expect("disjoint");
}

/// A shard report counts only from a voter of the shard that names itself its leader: a
/// report of a newer configuration without replicas, or about a shard the sender does not
/// lead, changes nothing.
#[test]
fn shard_reports_count_only_from_the_leader_speaking_for_itself() {
    let (_sim, mut m) = three_nodes(&test_config());
    let real = m.directory().get(1).expect("shard 1").clone();
    let forged = |sender: u64, shard: ShardMeta| {
        let report = ShardReport { shard, load: LoadReport::default(), size_bytes: 0, keys: 0 };
        reports_only(sender, vec![report])
    };
    let emptied = ShardMeta {
        epoch: Epoch { version: real.epoch.version, conf_ver: real.epoch.conf_ver + 10 },
        replicas: vec![],
        leader: Some(2),
        ..real.clone()
    };
    m.heartbeat(forged(2, emptied), 2_000_000);
    let claimed_for_another = ShardMeta {
        epoch: Epoch { version: real.epoch.version, conf_ver: real.epoch.conf_ver + 10 },
        replicas: vec![ReplicaMeta { node: 3, role: Role::Voter }],
        leader: Some(3),
        ..real.clone()
    };
    m.heartbeat(forged(2, claimed_for_another), 2_000_000);
    assert_eq!(m.directory().get(1), Some(&real), "the directory kept the real replicas");
}

/// A heartbeat that carries only shard reports.
fn reports_only(node: u64, shards: Vec<ShardReport>) -> NodeHeartbeat {
    NodeHeartbeat {
        node,
        stats: NodeStats::default(),
        shards,
        replicas: Vec::new(),
        replica_loads: Vec::new(),
        telemetry: None,
        telemetry_backlog: None,
    }
}

/// Three nodes in group 1 holding the meta shard and 8 data shards, plus node 4 in region r4
/// (a spare: too few nodes for a second group); shard 1 is the hottest.
fn spare_and_shards(cfg: &ManagerConfig) -> (Sim, Manager) {
    let (mut sim, mut m) = three_nodes(cfg);
    sim.size.insert(1, (400 << 20, 10_000)); // 400 -> 200 -> 100 -> 50 MiB: 8 shards
    for _ in 0..30 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(sim.shards.len(), 9, "seed {}: {:?}", seed(), sim.shards.keys().collect::<Vec<_>>());
    sim.join(&mut m, node(4, "r4"));
    // Below the load-split threshold.
    sim.traffic = vec![(0, 500)];
    // Leaders spread over nodes 1-3 (balance).
    for _ in 0..30 {
        sim.round(&mut m, 1000);
    }
    for _ in 0..30 {
        if m.operators().all(|op| op.status.is_finished()) {
            return (sim, m);
        }
        sim.round(&mut m, 1000);
    }
    panic!(
        "seed {}: not settled: {:?}",
        seed(),
        m.operators().filter(|op| !op.status.is_finished()).collect::<Vec<_>>()
    );
}

fn migration(m: &Manager, node: u64) -> Option<presage_shardmgr::Migration> {
    m.migrations(0).into_iter().map(|v| v.migration).filter(|x| x.node == node).max_by_key(|x| x.id)
}

fn data_shards(sim: &Sim) -> Vec<&ShardMeta> {
    sim.shards.values().collect()
}

/// Design §6, prepare then cut over: leaderships leave the at-risk node a few at a time,
/// verified learner copies appear on the spare (the hottest shard first), and at `act` the
/// spare takes the node's place in every shard through verified joint-consensus swaps.
#[test]
fn a_rising_risk_prepares_then_cuts_over_to_a_spare() {
    let cfg = test_config();
    let (mut sim, mut m) = spare_and_shards(&cfg);
    let led_before = sim.shards.values().filter(|s| s.leader == Some(2)).count();
    assert!(led_before >= 1, "node 2 leads {led_before} shards");
    sim.risk.insert(2, 0.6); // >= warn (0.5), < act (0.8)
    let mut first_copy = None;
    let mut max_shifts_per_round = 0;
    for _ in 0..40 {
        let fx = sim.round(&mut m, 1000);
        let shifts = fx.commands.iter().filter(|c| matches!(c.step, Step::TransferLeader { .. })).count();
        max_shifts_per_round = max_shifts_per_round.max(shifts);
        if first_copy.is_none() {
            first_copy = fx.commands.iter().find(|c| matches!(c.step, Step::AddLearner { node: 4 })).map(|c| c.shard);
        }
    }
    assert!(max_shifts_per_round <= cfg.migration_leader_moves_per_round, "a gradual shift");
    assert_eq!(sim.shards.values().filter(|s| s.leader == Some(2)).count(), 0, "no leadership left on node 2");
    assert_eq!(first_copy, Some(1), "the hottest shard is copied first");
    for s in data_shards(&sim) {
        assert_eq!(s.replica(4).map(|r| r.role), Some(Role::Learner), "seed {}: shard {} prepared", seed(), s.id);
        assert_eq!(s.voters(), [1, 2, 3], "preparing moves no voter");
    }
    let mig = migration(&m, 2).expect("a migration");
    assert_eq!((mig.stage, mig.target), (presage_shardmgr::MigrationStage::Preparing, Some(4)));
    assert_eq!(mig.shards_copied, 9, "every copy verified");
    // Cut over.
    sim.risk.insert(2, 0.9);
    for _ in 0..60 {
        sim.round(&mut m, 1000);
    }
    for s in data_shards(&sim) {
        assert_eq!(s.voters(), [1, 3, 4], "seed {}: shard {} cut over", seed(), s.id);
        assert!(s.replica(2).is_none(), "the old replica is removed");
    }
    assert_eq!(m.groups().next().map(|g| g.nodes.clone()), Some(vec![1, 4, 3]));
    let mig = migration(&m, 2).expect("a migration");
    assert_eq!(mig.stage, presage_shardmgr::MigrationStage::Evacuated);
    // Every swap was preceded by a verification of the replica it brought in.
    for op in m.operators().filter(|op| matches!(op.kind, OperatorKind::MoveReplica { to: Some(4), .. })) {
        assert_eq!(op.status, OperatorStatus::Done);
        assert!(op.verifications.iter().any(|v| v.node == 4 && v.matches()), "{op:?}");
    }
    // Node 2 is held out: no group, no leadership, even with risk gone...
    sim.risk.insert(2, 0.1);
    for _ in 0..30 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(migration(&m, 2).map(|x| x.stage), Some(presage_shardmgr::MigrationStage::Evacuated));
    // ...until the clear delay passed; then it is a spare again.
    for _ in 0..(cfg.migration_clear_after_ms / 1000) {
        sim.round(&mut m, 1000);
    }
    assert_eq!(migration(&m, 2).map(|x| x.stage), Some(presage_shardmgr::MigrationStage::Released));
    assert_eq!(m.nodes().find(|n| n.id == 2).and_then(|n| n.group), None);
}

/// Design §6, stand down: a risk that rises past `warn` and falls below `clear` drops the
/// prepared copies after the clear delay and never moves a voter; a risk hovering between
/// `clear` and `warn` (hysteresis) neither stands down nor cuts over.
#[test]
fn a_risk_that_falls_below_clear_stands_down_without_moving_replicas() {
    let cfg = test_config();
    let (mut sim, mut m) = spare_and_shards(&cfg);
    let voters_before: Vec<Vec<u64>> = sim.shards.values().map(|s| s.voters()).collect();
    sim.risk.insert(2, 0.55);
    for _ in 0..30 {
        sim.round(&mut m, 1000);
    }
    assert!(sim.shards.values().all(|s| s.replica(4).is_some()), "prepared");
    // Between clear and warn: nothing changes.
    sim.risk.insert(2, 0.4);
    for _ in 0..(2 * cfg.migration_clear_after_ms / 1000) {
        sim.round(&mut m, 1000);
    }
    assert_eq!(migration(&m, 2).map(|x| x.stage), Some(presage_shardmgr::MigrationStage::Preparing));
    assert!(sim.shards.values().all(|s| s.replica(4).is_some()), "still prepared");
    // Below clear, but not for long enough yet.
    sim.risk.insert(2, 0.2);
    for _ in 0..(cfg.migration_clear_after_ms / 1000 - 5) {
        sim.round(&mut m, 1000);
    }
    assert_eq!(migration(&m, 2).map(|x| x.stage), Some(presage_shardmgr::MigrationStage::Preparing));
    for _ in 0..30 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(migration(&m, 2).map(|x| x.stage), Some(presage_shardmgr::MigrationStage::StoodDown));
    assert!(sim.shards.values().all(|s| s.replica(4).is_none()), "the copies are dropped");
    let voters_after: Vec<Vec<u64>> = sim.shards.values().map(|s| s.voters()).collect();
    assert_eq!(voters_after, voters_before, "no voter moved");
    assert!(
        m.operators().all(|op| !op.steps.iter().any(|s| matches!(s, Step::SwapReplica { .. }))),
        "no swap was ever planned"
    );
    // Node 2 may lead again (ordinary balancing decides).
    assert!(m.migration_of(2).is_none());
}

/// A copy whose checksum differs from the leader's is rolled back: the original replica
/// keeps serving, and the migration retries the copy.
#[test]
fn a_copy_that_fails_verification_rolls_back_and_the_original_keeps_serving() {
    let cfg = test_config();
    let (mut sim, mut m) = spare_and_shards(&cfg);
    sim.diverged.insert((1, 4));
    sim.risk.insert(2, 0.9); // straight past act: prepare and cut over
    for _ in 0..60 {
        sim.round(&mut m, 1000);
    }
    let rolled_back: Vec<_> =
        m.operators().filter(|op| op.shard == 1 && matches!(op.status, OperatorStatus::RolledBack { .. })).collect();
    assert!(!rolled_back.is_empty(), "seed {}: the bad copy rolled back", seed());
    assert!(rolled_back
        .iter()
        .all(|op| matches!(&op.status, OperatorStatus::RolledBack { reason } if reason.contains("differs"))));
    let one = &sim.shards[&1];
    assert!(one.replica(2).is_some_and(|r| r.role == Role::Voter), "the original replica serves: {one:?}");
    assert_ne!(one.replica(4).map(|r| r.role), Some(Role::Voter), "the bad copy never votes");
    // Every other shard moved.
    for s in sim.shards.values().filter(|s| s.id != 1) {
        assert_eq!(s.voters(), [1, 3, 4], "shard {}", s.id);
    }
    // Once the copy is good, the retry succeeds.
    sim.diverged.clear();
    for _ in 0..30 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(sim.shards[&1].voters(), [1, 3, 4]);
}

/// A successor manager resumes a migration from the meta shard mid-copy and completes it.
#[test]
fn a_migration_survives_a_manager_fail_over_mid_copy() {
    let cfg = test_config();
    let (mut sim, mut m) = spare_and_shards(&cfg);
    sim.risk.insert(2, 0.9);
    for _ in 0..6 {
        sim.round(&mut m, 1000);
    }
    let running: Vec<_> = m.operators().filter(|op| !op.status.is_finished()).cloned().collect();
    assert!(running.iter().any(|op| matches!(op.kind, OperatorKind::MoveReplica { to: Some(4), .. })), "{running:?}");
    drop(m);
    let mut m = sim.recover(&cfg);
    assert_eq!(migration(&m, 2).map(|x| x.stage), Some(presage_shardmgr::MigrationStage::CuttingOver));
    for _ in 0..60 {
        sim.round(&mut m, 1000);
    }
    for s in data_shards(&sim) {
        assert_eq!(s.voters(), [1, 3, 4], "seed {}: shard {}", seed(), s.id);
    }
    assert_eq!(migration(&m, 2).map(|x| x.stage), Some(presage_shardmgr::MigrationStage::Evacuated));
}

/// Reactive repair uses the same operators: a node that dies without warning is replaced by
/// the spare once it is declared down.
#[test]
fn a_failed_node_is_replaced_by_the_spare() {
    let cfg = ManagerConfig { node_suspect_after_ms: 3_000, node_down_after_ms: 10_000, ..test_config() };
    let (mut sim, mut m) = spare_and_shards(&cfg);
    sim.dead.push(3);
    for _ in 0..80 {
        sim.round(&mut m, 1000);
    }
    let mig = migration(&m, 3).expect("a migration");
    assert_eq!(mig.cause, presage_shardmgr::MigrationCause::Failed);
    for s in data_shards(&sim) {
        assert_eq!(s.voters(), [1, 2, 4], "seed {}: shard {}", seed(), s.id);
    }
    assert_eq!(mig.stage, presage_shardmgr::MigrationStage::Evacuated);
}

/// With `proactive-migration` off, a risk past `act` moves nothing (the failure analysis
/// only warns); the node is replaced once it is declared down, as in a reactive store.
#[test]
fn with_proactive_migration_off_risk_moves_nothing_and_a_dead_node_is_replaced() {
    let cfg = ManagerConfig {
        proactive_migration: false,
        node_suspect_after_ms: 3_000,
        node_down_after_ms: 10_000,
        ..test_config()
    };
    let (mut sim, mut m) = spare_and_shards(&cfg);
    let before: Vec<(Vec<u64>, Option<u64>)> = sim.shards.values().map(|s| (s.voters(), s.leader)).collect();
    sim.risk.insert(3, 0.95);
    for _ in 0..30 {
        sim.round(&mut m, 1000);
    }
    assert!(migration(&m, 3).is_none(), "seed {}: no migration on risk alone", seed());
    let after: Vec<(Vec<u64>, Option<u64>)> = sim.shards.values().map(|s| (s.voters(), s.leader)).collect();
    assert_eq!(after, before, "seed {}: no replica or leadership moved", seed());
    assert!(sim.shards.values().all(|s| s.replica(4).is_none()), "no copy prepared");
    sim.dead.push(3);
    for _ in 0..80 {
        sim.round(&mut m, 1000);
    }
    let mig = migration(&m, 3).expect("a migration once the node is down");
    assert_eq!(mig.cause, presage_shardmgr::MigrationCause::Failed);
    for s in data_shards(&sim) {
        assert_eq!(s.voters(), [1, 2, 4], "seed {}: shard {}", seed(), s.id);
    }
}

/// A disk warning (design.md §6, prepare) sheds every leadership of the node in one round,
/// below any risk threshold; its replicas stay; leader balance gives it none while the
/// warning lasts, and leaderships come back once it cleared. With the predictive path off the
/// warning moves nothing.
#[test]
fn a_disk_warning_sheds_the_nodes_leaderships_at_once_and_they_return_when_it_clears() {
    let cfg = test_config();
    let (mut sim, mut m) = spare_and_shards(&cfg);
    let led = |sim: &Sim, n: u64| sim.shards.values().filter(|s| s.leader == Some(n)).count();
    // The node leading the most shards (the meta shard's leader carries the manager).
    let n = (1..=3).max_by_key(|n| led(&sim, *n)).expect("nodes");
    let led_before = led(&sim, n);
    assert!(led_before >= 2, "seed {}: node {n} leads {led_before} shards", seed());
    let voters_before: Vec<Vec<u64>> = sim.shards.values().map(|s| s.voters()).collect();
    sim.degraded.insert(n);
    let fx = sim.round(&mut m, 1000);
    let shifts = fx.commands.iter().filter(|c| matches!(c.step, Step::TransferLeader { to } if to != n)).count();
    assert_eq!(shifts, led_before, "seed {}: every leadership moves in the first round", seed());
    for _ in 0..30 {
        sim.round(&mut m, 1000);
        assert_eq!(led(&sim, n), 0, "seed {}: a degraded node is given no leadership", seed());
    }
    assert!(migration(&m, n).is_none(), "seed {}: a warning alone starts no migration", seed());
    let voters_after: Vec<Vec<u64>> = sim.shards.values().map(|s| s.voters()).collect();
    assert_eq!(voters_after, voters_before, "seed {}: no replica moved", seed());
    sim.degraded.clear();
    for _ in 0..60 {
        sim.round(&mut m, 1000);
    }
    assert!(led(&sim, n) >= 1, "seed {}: leader balance gives the node leaderships again", seed());

    let cfg = ManagerConfig { proactive_migration: false, ..test_config() };
    let (mut sim, mut m) = spare_and_shards(&cfg);
    let before: Vec<Option<u64>> = sim.shards.values().map(|s| s.leader).collect();
    sim.degraded.insert(n);
    for _ in 0..10 {
        sim.round(&mut m, 1000);
    }
    let after: Vec<Option<u64>> = sim.shards.values().map(|s| s.leader).collect();
    assert_eq!(after, before, "seed {}: reactive mode moves no leadership on a warning", seed());
}

/// A node whose own disk check hands its leaderships away says so in its heartbeats: leader
/// balance gives it none back while it does (in either mode: the node's check does not wait
/// for the model), and leaderships return once it stopped.
#[test]
fn a_node_shedding_its_own_leaderships_is_given_none() {
    for proactive_migration in [true, false] {
        let cfg = ManagerConfig { proactive_migration, ..test_config() };
        let (mut sim, mut m) = spare_and_shards(&cfg);
        let led = |sim: &Sim, n: u64| sim.shards.values().filter(|s| s.leader == Some(n)).count();
        let n = (1..=3).max_by_key(|n| led(&sim, *n)).expect("nodes");
        // The node hands every leadership to another voter itself.
        for s in sim.shards.values_mut().filter(|s| s.leader == Some(n)) {
            s.leader = s.voters().into_iter().find(|v| *v != n);
        }
        sim.shedding.insert(n);
        for _ in 0..30 {
            sim.round(&mut m, 1000);
            assert_eq!(led(&sim, n), 0, "seed {}: a shedding node is given no leadership", seed());
        }
        sim.shedding.clear();
        for _ in 0..60 {
            sim.round(&mut m, 1000);
        }
        assert!(led(&sim, n) >= 1, "seed {}: leader balance gives the node leaderships again", seed());
    }
}

/// An operator's evacuation holds the node until released by hand: `Release` is refused
/// while the cut-over runs, then frees the evacuated node (a spare again); a preparation
/// released by hand stands down.
#[test]
fn a_manual_evacuation_is_released_by_hand() {
    use presage_shardmgr::{AdminCommand, MigrationStage};
    let cfg = test_config();
    let (mut sim, mut m) = spare_and_shards(&cfg);
    let out = m.admin(AdminCommand::Evacuate { node: 3 }, sim.now_ms).expect("evacuate");
    assert!(out.message.contains("node 4 takes node 3's place"), "{}", out.message);
    let refused = m.admin(AdminCommand::Release { node: 3 }, sim.now_ms);
    assert!(refused.is_err(), "seed {}: a cut-over is not interrupted: {refused:?}", seed());
    for _ in 0..60 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(migration(&m, 3).map(|x| x.stage), Some(MigrationStage::Evacuated), "seed {}", seed());
    for _ in 0..120 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(migration(&m, 3).map(|x| x.stage), Some(MigrationStage::Evacuated), "held until released");
    m.admin(AdminCommand::Release { node: 3 }, sim.now_ms).expect("release");
    assert_eq!(migration(&m, 3).map(|x| x.stage), Some(MigrationStage::Released));
    assert!(m.migration_of(3).is_none(), "node 3 is free");
    sim.round(&mut m, 1000);
    let successor = sim.recover(&cfg);
    assert_eq!(migration(&successor, 3).map(|x| x.stage), Some(MigrationStage::Released), "persisted");

    // A preparation (risk >= warn) released by hand stands down.
    let (mut sim, mut m) = spare_and_shards(&cfg);
    sim.risk.insert(2, 0.6);
    for _ in 0..3 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(migration(&m, 2).map(|x| x.stage), Some(MigrationStage::Preparing));
    m.admin(AdminCommand::Release { node: 2 }, sim.now_ms).expect("release");
    assert_eq!(migration(&m, 2).map(|x| x.stage), Some(MigrationStage::StoodDown));
    assert!(m.admin(AdminCommand::Release { node: 2 }, sim.now_ms).is_err(), "nothing left to release");
}

#[test]
fn a_paused_scheduler_starts_no_split_until_resumed_and_the_pause_outlives_the_manager() {
    let cfg = test_config();
    let (mut sim, mut m) = three_nodes(&cfg);
    use presage_shardmgr::AdminCommand;
    let out = m.admin(AdminCommand::PauseScheduler, sim.now_ms).expect("pause");
    assert!(out.message.contains("paused"), "{}", out.message);
    assert!(m.stats().scheduler_paused);
    sim.size.insert(1, (100 << 20, 10_000));
    for _ in 0..5 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(sim.shards.len(), 2, "seed {}: a paused scheduler split a large shard", seed());
    // A successor reads the pause from the meta shard.
    let mut m = sim.recover(&cfg);
    assert!(m.stats().scheduler_paused, "the pause is persisted");
    for _ in 0..5 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(sim.shards.len(), 2, "seed {}: the successor kept the pause", seed());
    m.admin(AdminCommand::ResumeScheduler, sim.now_ms).expect("resume");
    for _ in 0..5 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(sim.shards.len(), 3, "seed {}: once resumed, the large shard splits", seed());
}

#[test]
fn a_cancelled_operator_rolls_back_at_once_and_a_finished_one_cannot_be_cancelled() {
    use presage_shardmgr::AdminCommand;
    let cfg = ManagerConfig { operator_step_timeout_ms: 600_000, ..test_config() };
    let (mut sim, mut m) = three_nodes(&cfg);
    // The learner is added; its promotion never comes (and would not time out for 10 min).
    let op = learner_on_node_4(&mut sim, &mut m);
    let out = m.admin(AdminCommand::CancelOperator { id: op }, sim.now_ms).expect("cancel");
    assert!(out.message.contains("rolling back"), "{}", out.message);
    for _ in 0..10 {
        sim.now_ms += 1000;
        sim.heartbeats(&mut m, 1000);
        let fx = m.tick(sim.now_ms);
        sim.persist(&fx);
        for c in fx.commands.iter().filter(|c| !matches!(c.step, Step::PromoteLearner { .. })) {
            sim.execute(c);
        }
    }
    let status = m.operators().find(|o| o.id == op).map(|o| o.status.clone());
    assert!(
        matches!(&status, Some(OperatorStatus::RolledBack { reason }) if reason.contains("cancelled")),
        "seed {}: {status:?}",
        seed()
    );
    assert!(sim.shards[&1].replica(4).is_none(), "the rollback removed the learner");
    let again = m.admin(AdminCommand::CancelOperator { id: op }, sim.now_ms);
    assert!(matches!(&again, Err(e) if e.to_string().contains("is not running")), "{again:?}");
    assert!(m.admin(AdminCommand::CancelOperator { id: 999_999 }, sim.now_ms).is_err());
}

#[test]
fn a_decommissioned_node_is_emptied_then_removed_and_a_drain_is_undone_by_recommission() {
    use presage_shardmgr::{AdminCommand, MigrationStage};
    let cfg = test_config();
    let (mut sim, mut m) = spare_and_shards(&cfg);
    let out = m.admin(AdminCommand::Decommission { node: 3 }, sim.now_ms).expect("decommission");
    assert!(out.message.contains("node 4 takes node 3's place") && out.message.contains("removed"), "{}", out.message);
    let state = |m: &Manager, id: u64| m.nodes().find(|n| n.id == id).map(|n| n.state);
    for _ in 0..60 {
        sim.round(&mut m, 1000);
        if state(&m, 3) == Some(NodeState::Removed) {
            break;
        }
    }
    assert_eq!(state(&m, 3), Some(NodeState::Removed), "seed {}: {:?}", seed(), migration(&m, 3));
    assert_eq!(migration(&m, 3).map(|x| x.stage), Some(MigrationStage::Evacuated));
    assert!(sim.shards.values().all(|s| s.replica(3).is_none()), "seed {}: nothing left on node 3", seed());
    assert!(sim.shards.values().all(|s| s.voters().len() == 3), "every shard keeps three voters");
    sim.round(&mut m, 1000);
    let successor = sim.recover(&cfg);
    assert_eq!(state(&successor, 3), Some(NodeState::Removed), "persisted");
    let again = m.admin(AdminCommand::Recommission { node: 3 }, sim.now_ms);
    assert!(matches!(&again, Err(e) if e.to_string().contains("removed for good")), "{again:?}");
    assert!(m.admin(AdminCommand::Decommission { node: 3 }, sim.now_ms).is_err(), "removed already");
    // Drain, then recommission: the node is Up again; an Up node has nothing to undo.
    m.admin(AdminCommand::Drain { node: 2 }, sim.now_ms).expect("drain");
    assert_eq!(state(&m, 2), Some(NodeState::Draining));
    m.admin(AdminCommand::Recommission { node: 2 }, sim.now_ms).expect("recommission");
    assert_eq!(state(&m, 2), Some(NodeState::Up));
    assert!(m.admin(AdminCommand::Recommission { node: 2 }, sim.now_ms).is_err());
}
