//! Known events against the simulated cluster: a maintenance window drains its node before it
//! opens and replaces nothing while the node is down for it; a second member of a group in a
//! window moves to a spare first; a known spike splits and spreads its range before it begins;
//! a region's window at 1,000 nodes.

use super::*;
use presage_shardmgr::{AdminCommand, EventKind, EventPhase, MaintenanceScope, MigrationStage, NewEvent};

fn maintenance(node: u64, start_ms: u64, end_ms: u64, lead_ms: u64) -> AdminCommand {
    AdminCommand::AddEvent {
        event: NewEvent {
            what: EventKind::Maintenance { scope: MaintenanceScope::Node { node } },
            start_ms,
            end_ms,
            lead_ms: Some(lead_ms),
            note: "kernel upgrade".into(),
        },
    }
}

fn led(sim: &Sim, n: u64) -> usize {
    sim.shards.values().filter(|s| s.leader == Some(n)).count()
}

fn phase(m: &Manager, now_ms: u64) -> EventPhase {
    m.events(now_ms).first().map(|v| v.phase).expect("one event")
}

/// Seeds 001/002, a maintenance window: nothing happens before the lead time; within it the
/// node's leaderships leave and none comes back; stopped for the whole window (past
/// `node-down-after-ms`) it is neither repaired nor counted as a failure; after it the
/// leaderships return. The declaration outlives a manager fail-over.
#[test]
fn a_maintenance_window_drains_its_node_first_replaces_nothing_and_gives_leaderships_back() {
    let cfg = test_config();
    let (mut sim, mut m) = spare_and_shards(&cfg);
    let n = (1..=3).max_by_key(|n| led(&sim, *n)).expect("nodes");
    assert!(led(&sim, n) >= 2, "seed {}: node {n} leads {}", seed(), led(&sim, n));
    let (lead, start) = (10_000, sim.now_ms + 20_000);
    let end = start + cfg.node_down_after_ms + 30_000;
    m.admin(maintenance(n, start, end, lead), sim.now_ms).expect("declared");
    assert!(m.admin(maintenance(99, start, end, lead), sim.now_ms).is_err(), "an unknown node is refused");
    assert!(m.admin(maintenance(n, end, start, lead), sim.now_ms).is_err(), "a window that ends first is refused");
    let before = led(&sim, n);
    while sim.now_ms + 1_000 < start - lead {
        sim.round(&mut m, 1000);
    }
    assert_eq!(phase(&m, sim.now_ms), EventPhase::Scheduled);
    assert_eq!(led(&sim, n), before, "seed {}: nothing moves before the lead time", seed());
    let voters: Vec<Vec<u64>> = sim.shards.values().map(|s| s.voters()).collect();
    while sim.now_ms < start {
        sim.round(&mut m, 1000);
    }
    assert_eq!(phase(&m, sim.now_ms), EventPhase::Open);
    assert_eq!(led(&sim, n), 0, "seed {}: node {n} leads nothing when the window opens", seed());
    assert_eq!(sim.shards.values().map(|s| s.voters()).collect::<Vec<_>>(), voters, "no replica moved");
    // Stopped for the window, longer than it takes to call a silent node down.
    sim.dead.push(n);
    let successor_at = sim.now_ms + cfg.node_down_after_ms + 10_000;
    while sim.now_ms < end {
        sim.round(&mut m, 1000);
        if sim.now_ms == successor_at {
            m = sim.recover(&cfg); // a manager fail-over inside the window
        }
        assert!(migration(&m, n).is_none(), "seed {}: a node down for maintenance is not replaced", seed());
    }
    assert_eq!(m.nodes().find(|x| x.id == n).map(|x| x.state), Some(NodeState::Down));
    assert!(m.groups().all(|g| g.failures.is_empty()), "seed {}: no failure recorded", seed());
    assert!(m.down_excused().contains(&n), "the grace after the window still excuses it");
    sim.dead.retain(|x| *x != n);
    for _ in 0..60 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(phase(&m, sim.now_ms), EventPhase::Closed);
    assert!(led(&sim, n) >= 1, "seed {}: node {n} leads again after the window", seed());
    assert!(m.admin(AdminCommand::CancelEvent { id: m.events(0)[0].event.id }, sim.now_ms).is_err(), "closed");
}

/// A node still down `maintenance-grace-ms` after its window closed has failed: it is
/// replaced by the spare (and reported down to the failure analysis again).
#[test]
fn a_node_still_down_after_the_grace_is_replaced() {
    let cfg = ManagerConfig { maintenance_grace_ms: 20_000, ..test_config() };
    let (mut sim, mut m) = spare_and_shards(&cfg);
    let (start, end) = (sim.now_ms + 10_000, sim.now_ms + 10_000 + cfg.node_down_after_ms + 10_000);
    m.admin(maintenance(2, start, end, 5_000), sim.now_ms).expect("declared");
    while sim.now_ms < start {
        sim.round(&mut m, 1000);
    }
    sim.dead.push(2);
    while sim.now_ms < end + cfg.maintenance_grace_ms - 1_000 {
        sim.round(&mut m, 1000);
        assert!(migration(&m, 2).is_none(), "seed {}: replaced within the window or its grace", seed());
    }
    for _ in 0..5 {
        sim.round(&mut m, 1000);
    }
    let mig = migration(&m, 2).expect("replaced once the grace is over");
    assert_eq!((mig.cause, mig.target), (presage_shardmgr::MigrationCause::Failed, Some(4)), "{mig:?}");
}

/// Two members of one group in overlapping windows would leave it without a quorum: the
/// first one's replicas move to the spare before the windows open; the migration is released
/// when its window closes. A spare in a window is never chosen. A cancelled window gives its
/// node leaderships back at once.
#[test]
fn a_window_that_would_cost_a_quorum_moves_a_member_to_a_spare_first() {
    let cfg = test_config();
    let (mut sim, mut m) = spare_and_shards(&cfg);
    let (start, end) = (sim.now_ms + 90_000, sim.now_ms + 150_000);
    m.admin(maintenance(2, start, end, 80_000), sim.now_ms).expect("node 2");
    m.admin(maintenance(3, start, end, 80_000), sim.now_ms).expect("node 3");
    while sim.now_ms < start {
        sim.round(&mut m, 1000);
    }
    let mig = migration(&m, 2).expect("node 2 is evacuated for its window");
    assert_eq!((mig.cause, mig.target), (presage_shardmgr::MigrationCause::Maintenance, Some(4)));
    assert!(migration(&m, 3).is_none(), "seed {}: one member moving restores the majority", seed());
    for s in sim.shards.values() {
        assert_eq!(s.voters(), [1, 3, 4], "seed {}: shard {} cut over before the window", seed(), s.id);
        assert!(s.leader.is_some_and(|l| l != 3), "seed {}: node 3 leads nothing", seed());
    }
    while sim.now_ms < end + 2_000 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(migration(&m, 2).map(|x| x.stage), Some(MigrationStage::Released), "released after the window");

    // The spare itself in a window: it is never chosen, so no member moves (and the group
    // keeps its voters: the operator was warned by the quorum arithmetic, not protected).
    let (mut sim, mut m) = spare_and_shards(&cfg);
    let (start, end) = (sim.now_ms + 30_000, sim.now_ms + 90_000);
    for node in [2, 3] {
        let out = m.admin(maintenance(node, start, end, 20_000), sim.now_ms).expect("declared");
        assert!(!out.message.contains("WARNING"), "node 4 is free to stand in: {}", out.message);
    }
    let out = m.admin(maintenance(4, start, end, 20_000), sim.now_ms).expect("declared");
    assert!(out.message.contains("WARNING") && out.message.contains("loses its quorum"), "{}", out.message);
    for _ in 0..30 {
        sim.round(&mut m, 1000);
    }
    assert!(m.migrations(0).is_empty(), "seed {}: a spare in a window took a member's place", seed());

    let (mut sim, mut m) = spare_and_shards(&cfg);
    let n = (1..=3).max_by_key(|n| led(&sim, *n)).expect("nodes");
    m.admin(maintenance(n, sim.now_ms + 5_000, sim.now_ms + 600_000, 5_000), sim.now_ms).expect("declared");
    for _ in 0..10 {
        sim.round(&mut m, 1000);
    }
    assert_eq!(led(&sim, n), 0);
    let id = m.events(0)[0].event.id;
    m.admin(AdminCommand::CancelEvent { id }, sim.now_ms).expect("cancel");
    assert_eq!(phase(&m, sim.now_ms), EventPhase::Cancelled);
    for _ in 0..60 {
        sim.round(&mut m, 1000);
    }
    assert!(led(&sim, n) >= 1, "seed {}: a cancelled window gives leaderships back", seed());
}

/// Seeds 001/002, a known spike: within the lead time the range is split at its bounds and in
/// halves until it spans the shards asked for, and its leaderships spread over the group;
/// cold, its shards are not merged back until the spike is over.
#[test]
fn a_known_spike_splits_and_spreads_its_range_before_it_begins_and_stays_split() {
    let cfg = test_config();
    let (mut sim, mut m) = three_nodes(&cfg);
    let (from, to) = (key(1 << 60), key(3 << 60));
    let start = sim.now_ms + 60_000;
    let end = start + 4 * cfg.merge_delay_ms;
    let spike = NewEvent {
        what: EventKind::Spike { start_key: from.clone(), end_key: Some(to.clone()), shards: 4 },
        start_ms: start,
        end_ms: end,
        lead_ms: Some(50_000),
        note: "sale".into(),
    };
    m.admin(AdminCommand::AddEvent { event: spike }, sim.now_ms).expect("declared");
    let inside = |sim: &Sim| -> Vec<ShardMeta> {
        sim.shards.values().filter(|s| s.start >= from && s.end.as_ref().is_some_and(|e| *e <= to)).cloned().collect()
    };
    while sim.now_ms < start {
        sim.round(&mut m, 1000);
    }
    let shards = inside(&sim);
    assert_eq!(
        shards.len(),
        4,
        "seed {}: {:?}",
        seed(),
        sim.shards.values().map(|s| (&s.start, &s.end)).collect::<Vec<_>>()
    );
    let covered = shards.first().map(|s| s.start.clone()) == Some(from.clone())
        && shards.last().and_then(|s| s.end.clone()) == Some(to.clone());
    assert!(covered, "seed {}: the range's bounds are shard bounds", seed());
    let leaders: BTreeSet<u64> = shards.iter().filter_map(|s| s.leader).collect();
    assert_eq!(leaders.len(), 3, "seed {}: the spike's shards are led by every node: {shards:?}", seed());
    // Cold all along (no traffic): still split while the event lasts.
    let ids: BTreeSet<u64> = inside(&sim).iter().map(|s| s.id).collect();
    while sim.now_ms < end - 1_000 {
        let fx = sim.round(&mut m, 1000);
        let merge = fx
            .commands
            .iter()
            .find(|c| matches!(c.step, Step::Merge { target } if ids.contains(&c.shard) || ids.contains(&target)));
        assert!(merge.is_none(), "seed {}: a merge during the spike: {merge:?}", seed());
        assert_eq!(inside(&sim).len(), 4, "seed {}: merged during the spike", seed());
    }
    let mut merging = false;
    for _ in 0..(2 * cfg.merge_delay_ms / 1000) {
        let fx = sim.round(&mut m, 1000);
        merging |= fx.commands.iter().any(|c| matches!(c.step, Step::Merge { .. }) && ids.contains(&c.shard));
    }
    assert!(merging, "seed {}: once the spike is over its cold shards may merge again", seed());
}

/// A region's window at 1,000 nodes (333 groups, one member each in the region): before it
/// opens no node of the region leads, no replica moved (every group keeps two members), and
/// the round stays cheap.
#[test]
fn a_region_window_at_1000_nodes_drains_every_member_and_keeps_every_quorum() {
    let cfg = ManagerConfig { max_running_operators: 10_000, max_balance_moves_per_minute: 0, ..test_config() };
    let (mut sim, mut m) = thousand_nodes(&cfg, |sim, g| g[sim.rng.random_range(0..g.len())]);
    sim.round(&mut m, 1000);
    let in_r2: Vec<u64> = m.nodes().filter(|n| n.region == "r2").map(|n| n.id).collect();
    let led_in_r2 = |sim: &Sim| sim.shards.values().filter(|s| s.leader.is_some_and(|l| in_r2.contains(&l))).count();
    assert!(led_in_r2(&sim) > 500, "seed {}: region r2 leads {}", seed(), led_in_r2(&sim));
    let window = NewEvent {
        what: EventKind::Maintenance { scope: MaintenanceScope::Region { region: "r2".into() } },
        start_ms: sim.now_ms + 30_000,
        end_ms: sim.now_ms + 90_000,
        lead_ms: Some(20_000),
        note: String::new(),
    };
    m.admin(AdminCommand::AddEvent { event: window }, sim.now_ms).expect("declared");
    assert!(m.admin(maintenance(1, 0, 1, 0), sim.now_ms).is_err(), "a window in the past is refused");
    let data_voters = |sim: &Sim| -> Vec<Vec<u64>> {
        sim.shards.values().filter(|s| s.id != META_SHARD_ID).map(|s| s.voters()).collect()
    };
    let voters = data_voters(&sim);
    let mut slowest = std::time::Duration::ZERO;
    let start = m.events(0)[0].event.start_ms;
    while sim.now_ms < start {
        let t = Instant::now();
        sim.round(&mut m, 1000);
        slowest = slowest.max(t.elapsed());
    }
    eprintln!("1000 nodes, 3000 shards, a region's window: slowest round {slowest:?}");
    assert_eq!(led_in_r2(&sim), 0, "seed {}: every member in r2 was drained before the window", seed());
    assert!(data_voters(&sim) == voters, "seed {}: no replica moved", seed());
    assert_eq!(m.events(sim.now_ms)[0].nodes.len(), in_r2.len());
    assert!(m.migrations(0).is_empty(), "no group needed a spare");
}
