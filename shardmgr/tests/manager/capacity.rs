//! Capacity advice against the simulated cluster: at 1,000 nodes, steady data growth crosses
//! the small region's capacity on the hour the line says, the advice counts the nodes it
//! needs, and a successor manager advises from the persisted history; a growing request load
//! saturates its node when the trend says.

use super::*;
use presage_shardmgr::{AdminCommand, CapacityReport};

const HOUR_MS: u64 = 3_600_000;
const MIB: u64 = 1 << 20;

/// Rejoins every node with the capacity `cap` gives its region.
fn set_capacity(sim: &mut Sim, m: &mut Manager, cap: impl Fn(&str) -> (u64, u64)) {
    for n in sim.nodes.iter_mut() {
        (n.capacity_bytes, n.capacity_qps) = cap(&n.region);
        m.join(n.clone(), sim.now_ms).expect("rejoin");
    }
}

/// Replicas each node holds in the simulation.
fn replicas_per_node(sim: &Sim) -> BTreeMap<u64, u64> {
    let mut k = BTreeMap::new();
    for s in sim.shards.values() {
        for r in &s.replicas {
            *k.entry(r.node).or_default() += 1;
        }
    }
    k
}

/// 1,000 nodes, 3,000 shards each growing 256 KiB an hour for three days; region r1's nodes
/// offer 256 MiB, the others 4 GiB.
#[test]
fn capacity_at_1000_nodes_finds_the_day_each_region_fills_and_the_nodes_it_needs() {
    let cfg = ManagerConfig {
        capacity_interval_ms: HOUR_MS,
        capacity_max_points: 48,
        capacity_horizon_ms: 30 * 24 * HOUR_MS,
        ..test_config()
    };
    let (mut sim, mut m) = thousand_nodes(&cfg, |_, g| g[0]);
    m.admin(AdminCommand::PauseScheduler, sim.now_ms).expect("pause");
    set_capacity(&mut sim, &mut m, |r| if r == "r1" { (256 * MIB, 10_000) } else { (4_096 * MIB, 10_000) });
    let (base, growth) = (MIB, 256 * 1024);
    let hours = 72u64;
    for h in 1..=hours {
        for id in sim.shards.keys().copied().collect::<Vec<_>>() {
            sim.size.insert(id, (base + growth * h, 1_000));
        }
        sim.round(&mut m, HOUR_MS);
    }
    let t = Instant::now();
    let report: CapacityReport = m.capacity_report(sim.now_ms);
    let cached = m.capacity_report(sim.now_ms + 1);
    assert_eq!(cached.now_ms, report.now_ms, "reused within 5 s");
    eprintln!("capacity report at 1000 nodes, {} buckets: {:?}", report.history_points, t.elapsed());
    assert_eq!(report.nodes.len(), 1000);
    assert_eq!(report.history_points, 48, "bounded by capacity-max-points");
    let records = sim.meta.keys().filter(|k| k.starts_with(b"\xffm/c/")).count();
    assert_eq!(records, 48, "one meta record per bucket kept, the older ones deleted");

    // Every node of r1 fills when its replicas' line says: k * (base + growth * t) reaches
    // 80% of 256 MiB.
    let k = replicas_per_node(&sim);
    let usable = 0.8 * (256 * MIB) as f64;
    let now_bytes = (base + growth * hours) as f64;
    for n in report.nodes.iter().filter(|n| n.region == "r1" && n.in_group) {
        let kn = k[&n.node] as f64;
        // (A node with more replicas than most may be full already: then it says now.)
        let hours_left = ((usable / kn - now_bytes) / growth as f64).max(0.0);
        let expected = sim.now_ms as f64 + hours_left * HOUR_MS as f64;
        let got = n.disk.crosses_at_ms.expect("r1 fills within ten years") as f64;
        assert!(
            (got - expected).abs() < 60_000.0,
            "seed {}: node {} fills at {got}, expected {expected}",
            seed(),
            n.node
        );
        assert!((n.disk.per_day - kn * growth as f64 * 24.0).abs() < 1.0, "{:?}", n.disk);
    }
    // The soonest to fill come first.
    assert_eq!(report.nodes[0].region, "r1");

    let region = |name: &str| report.regions.iter().find(|r| r.region == name).expect("region");
    let (r1, r2, r3) = (region("r1"), region("r2"), region("r3"));
    assert_eq!((r1.nodes, r2.nodes, r3.nodes), (333, 333, 333));
    assert_eq!(r1.spares + r2.spares + r3.spares, 1, "1,000 nodes in 333 groups leave one spare");
    // r1 at the horizon: every replica of its nodes at base + growth * (72 h + 30 days).
    let k1: u64 = sim.nodes.iter().filter(|n| n.region == "r1").map(|n| k.get(&n.id).copied().unwrap_or(0)).sum();
    let at_horizon = k1 as f64 * (base + growth * (hours + 30 * 24)) as f64;
    assert!((r1.disk.at_horizon - at_horizon).abs() / at_horizon < 1e-6, "{:?} vs {at_horizon}", r1.disk);
    let needed = (at_horizon / usable).ceil() as usize;
    assert_eq!(r1.needed_nodes, needed, "{}", r1.advice);
    assert!(r2.disk.crosses_at_ms.is_some_and(|t| t > sim.now_ms + 30 * 24 * HOUR_MS), "beyond the horizon");
    // Every group spans the three regions: they grow together, each to r1's need; a region's
    // spare joins a group, and each keeps one spare.
    for r in [r1, r2, r3] {
        assert_eq!(r.needed_nodes, needed, "{}", r.advice);
        let from_spares = usize::from(r.spares > 0);
        assert_eq!(r.add_nodes, needed - 333 - from_spares + 1, "{}", r.advice);
    }
    assert!(r2.advice.contains("shares groups"), "{}", r2.advice);
    assert_eq!(report.add_nodes, r1.add_nodes + r2.add_nodes + r3.add_nodes);

    // A successor advises from the persisted history.
    let mut successor = sim.recover(&cfg);
    let again = successor.capacity_report(sim.now_ms);
    assert_eq!(again.history_points, 48);
    let r1_again = again.regions.iter().find(|r| r.region == "r1").expect("r1");
    let (a, b) = (r1.disk.crosses_at_ms.expect("fills"), r1_again.disk.crosses_at_ms.expect("fills"));
    assert!(a.abs_diff(b) <= HOUR_MS, "seed {}: {a} vs {b} after a fail-over", seed());
    let json = serde_json::to_string(&report).expect("encode");
    assert!(json.contains("\"crosses_at_ms\"") && json.contains("\"add_nodes\""), "{}", &json[..200]);
}

/// One shard's load rising by one request per second every second saturates its leader's
/// node (usable 700 of 1,000 requests/s) when the trend says.
#[test]
fn a_rising_load_saturates_its_leader_when_the_trend_says() {
    // Twenty buckets: the history is the rising load alone, not the quiet start.
    let cfg = ManagerConfig {
        capacity_interval_ms: 10_000,
        capacity_max_points: 20,
        capacity_horizon_ms: 600_000,
        ..test_config()
    };
    let (mut sim, mut m) = three_nodes(&cfg);
    m.admin(AdminCommand::PauseScheduler, sim.now_ms).expect("pause");
    set_capacity(&mut sim, &mut m, |_| (1 << 40, 1_000));
    let hot = 1u64 << 40;
    for t in 0..300u64 {
        sim.traffic = vec![(hot, 100 + t)];
        sim.round(&mut m, 1_000);
    }
    let leader = sim.shards.values().find(|s| s.contains(&key(hot))).and_then(|s| s.leader).expect("leader");
    let report = m.capacity_report(sim.now_ms);
    let node = report.nodes.iter().find(|n| n.node == leader).expect("leader's row");
    // About 400/s now, rising 1/s each second: 700/s about 300 s from now.
    assert!((node.load.now - 400.0).abs() < 15.0, "{:?}", node.load);
    assert!((node.load.per_day - 86_400.0).abs() < 2_000.0, "{:?}", node.load);
    let at = node.load.crosses_at_ms.expect("saturates") as f64;
    let expected = sim.now_ms as f64 + (700.0 - node.load.now) * 1_000.0;
    assert!((at - expected).abs() < 2_000.0, "seed {}: saturates at {at}, expected {expected}", seed());
    assert_eq!(report.nodes[0].node, leader, "the soonest first");
    let others = report.nodes.iter().filter(|n| n.node != leader);
    assert!(others.clone().all(|n| n.load.crosses_at_ms.is_none()), "{others:?}", others = others.collect::<Vec<_>>());
    // The leader's region needs two nodes at the horizon (400 + 600 = 1,000/s over 700), and
    // the others grow with it (its group spans them).
    let region = report.regions.iter().find(|r| r.nodes == 1 && r.load.now > 300.0).expect("the leader's region");
    assert!(region.advice.contains("its load 2"), "{}", region.advice);
    assert!(report.regions.iter().all(|r| r.needed_nodes == 2), "{:?}", report.regions);
}
