//! Per-range risk and the gradual shift (seed 004) against the simulated cluster: a node at
//! risk below `risk-warn` hands its leaderships over within the shift period and never all at
//! once, at 1,000 nodes; a node whose ranges are slow (no failure warning at all) is demoted
//! the same way; the shifts and every range's risk are visible. The feedback loop: a range
//! slow wherever it is led is demoted, the demotion does not help, and the next demotion on
//! the same evidence is less eager until none follows; the report shows it.

use super::*;

fn shift_config() -> ManagerConfig {
    ManagerConfig {
        shift_period_ms: 60_000,
        // Leader balance would move leaderships too: off, so that every move is the shift's.
        max_balance_moves_per_minute: 0,
        ..test_config()
    }
}

/// 30 leader nodes of 1,000 at risk 0.45 (above `range-risk-shift` 0.4, below `risk-warn`
/// 0.5): no migration starts, their 9 leaderships each move away over the 60-s period,
/// at every moment no more than the shift's weight allows, none comes back, and the shifts
/// are visible with their weights; replica reads leave the nodes by the same weights.
#[test]
fn a_risky_node_hands_its_leaderships_over_gradually_at_1000_nodes() {
    let cfg = shift_config();
    let (mut sim, mut m) = thousand_nodes(&cfg, |_, g| g[0]);
    sim.round(&mut m, 1000);
    let leaders: Vec<u64> = m.groups().take(30).map(|g| g.nodes[0]).collect();
    // The meta shard (led by node 1, carrying the manager) is never demoted.
    let led = |sim: &Sim, n: u64| sim.shards.values().filter(|s| s.leader == Some(n) && s.id != 0).count();
    let total: Vec<usize> = leaders.iter().map(|n| led(&sim, *n)).collect();
    assert!(total.iter().all(|t| *t >= 9), "seed {}: {total:?}", seed());
    for n in &leaders {
        sim.risk.insert(*n, 0.45);
    }
    let start = sim.now_ms;
    let mut slowest = std::time::Duration::ZERO;
    let mut halfway = None;
    while sim.now_ms < start + 70_000 {
        let t = Instant::now();
        sim.round(&mut m, 1000);
        slowest = slowest.max(t.elapsed());
        let weight = (sim.now_ms - start) as f64 / 60_000.0;
        for (n, before) in leaders.iter().zip(&total) {
            let moved = before - led(&sim, *n).min(*before);
            // Moves take a round to land: at most what the weight allowed a round ago.
            let allowed = ((weight + 1.0 / 60.0) * *before as f64).ceil() as usize;
            assert!(moved <= allowed, "seed {}: node {n} gave up {moved} of {before} at weight {weight:.2}", seed());
        }
        if halfway.is_none() && sim.now_ms >= start + 30_000 {
            let shifts = m.shifts();
            assert_eq!(shifts.iter().filter(|s| s.finished_ms.is_none()).count(), 30, "seed {}", seed());
            assert!(shifts.iter().all(|s| (0.4..0.6).contains(&s.weight)), "seed {}: {shifts:?}", seed());
            // Replica reads leave the node as gradually: about half its share is left.
            let weights: BTreeMap<u64, f64> = m.read_weights(sim.now_ms).into_iter().collect();
            for n in &leaders {
                let w = weights.get(n).copied().unwrap_or(1.0);
                assert!((0.4..0.6).contains(&w), "seed {}: node {n}'s read weight {w}", seed());
            }
            assert_eq!(weights.len(), 30, "seed {}: only the shifted nodes weigh less: {weights:?}", seed());
            halfway = Some(leaders.iter().map(|n| led(&sim, *n)).sum::<usize>());
        }
    }
    eprintln!("slowest round of a shift at 1000 nodes, 3000 shards: {slowest:?}");
    let left: usize = leaders.iter().map(|n| led(&sim, *n)).sum();
    assert_eq!(left, 0, "seed {}: every risky leadership moved within the period", seed());
    let halfway = halfway.expect("halfway");
    let all: usize = total.iter().sum();
    assert!(halfway > all / 4 && halfway < all * 3 / 4, "seed {}: {halfway} of {all} still led halfway", seed());
    for n in &leaders {
        assert!(m.migration_of(*n).is_none(), "seed {}: below risk-warn no migration starts", seed());
    }
    let risks = m.range_risks();
    assert!(risks.values().filter(|r| r.nodes > 0.2).count() >= 270, "seed {}: ranges with a risky voter", seed());
}

/// A node whose led ranges answer slowly (50 ms against 0.5 ms elsewhere; its failure model
/// sees nothing): those ranges' risk comes from latency, they move to other voters gradually,
/// and their p99 falls back once they did.
#[test]
fn a_node_whose_ranges_are_slow_is_demoted_without_a_failure_warning() {
    let cfg = ManagerConfig { shift_period_ms: 20_000, ..shift_config() };
    let (mut sim, mut m) = spare_and_shards(&cfg);
    // Leaderships spread over the three voters (balancing is off in this configuration).
    for (i, s) in sim.shards.values_mut().filter(|s| s.id != 0).enumerate() {
        s.leader = Some(s.voters()[i % 3]);
    }
    let led = |sim: &Sim, n: u64| sim.shards.values().filter(|s| s.leader == Some(n) && s.id != 0).count();
    let n = (1..=3).max_by_key(|n| led(&sim, *n)).expect("nodes");
    let before = led(&sim, n);
    assert!(before >= 2, "seed {}: node {n} leads {before}", seed());
    // Traffic over every data shard.
    sim.traffic = (0..16).map(|i| (i * (u64::MAX / 16), 40)).collect();
    sim.slow_us.insert(n, 50_000);
    for _ in 0..3 {
        sim.round(&mut m, 1000);
    }
    let risks = m.range_risks();
    let slow: Vec<_> = sim.shards.values().filter(|s| s.leader == Some(n) && s.id != 0).map(|s| risks[&s.id]).collect();
    assert!(slow.iter().all(|r| r.latency >= 0.9 && r.cause() == "latency"), "seed {}: {slow:?}", seed());
    let mut at_once = 0;
    for _ in 0..30 {
        let fx = sim.round(&mut m, 1000);
        let moves = fx.commands.iter().filter(|c| matches!(c.step, Step::TransferLeader { .. })).count();
        at_once = at_once.max(moves);
    }
    assert_eq!(led(&sim, n), 0, "seed {}: the slow node's ranges all moved", seed());
    assert!(at_once < before, "seed {}: {before} leaderships moved {at_once} at once", seed());
    for _ in 0..3 {
        sim.round(&mut m, 1000);
    }
    let risks = m.range_risks();
    assert!(sim.shards.values().filter(|s| s.id != 0).all(|s| risks[&s.id].risk < 0.4), "seed {}: {risks:?}", seed());
}

/// Seed 004, the feedback loop: one range answers in 50 ms wherever it is led. Its demotion
/// does not help (judged 10 s later), which halves the eagerness of demotions on latency:
/// after two the threshold is above any risk and the range stays; demotions on other evidence
/// keep their eagerness; the records and the report show it, and a successor keeps them.
#[test]
fn a_demotion_that_did_not_help_makes_the_next_on_the_same_evidence_less_eager() {
    use presage_shardmgr::{MitigationKind, OperatorKind};
    // A demoted range stays 15 s where it went; its demotion is judged after 10 s.
    let cfg =
        ManagerConfig { shift_period_ms: 0, feedback_judge_ms: 10_000, leader_move_hold_ms: 15_000, ..shift_config() };
    let (mut sim, mut m) = spare_and_shards(&cfg);
    for (i, s) in sim.shards.values_mut().filter(|s| s.id != 0).enumerate() {
        s.leader = Some(s.voters()[i % 3]);
    }
    sim.traffic = (0..16).map(|i| (i * (u64::MAX / 16), 40)).collect();
    let slow = *sim.shards.keys().find(|id| **id != 0).expect("a data shard");
    sim.slow_shard_us.insert(slow, 50_000);
    let mut demotions = Vec::new();
    for _ in 0..120 {
        let fx = sim.round(&mut m, 1000);
        for c in fx.commands.iter().filter(|c| c.shard == slow && matches!(c.step, Step::TransferLeader { .. })) {
            let demoting =
                m.operators().any(|op| op.id == c.operator && matches!(op.kind, OperatorKind::DemoteLeader { .. }));
            if demoting {
                demotions.push(sim.now_ms);
            }
        }
    }
    eprintln!("demotions of the always-slow range: {demotions:?}");
    assert_eq!(demotions.len(), 2, "seed {}: each unhelpful demotion halves the eagerness: {demotions:?}", seed());
    let f = m.mitigations();
    let latency: Vec<_> =
        f.records().filter(|r| r.kind == MitigationKind::Demotion && r.evidence == "latency").collect();
    assert_eq!(latency.len(), 2, "seed {}: {latency:?}", seed());
    assert!(latency.iter().all(|r| r.helped == Some(false) && r.before.p99_ms > 30.0), "seed {}: {latency:?}", seed());
    assert_eq!(f.eagerness(MitigationKind::Demotion, "latency", sim.now_ms), 0.25);
    assert_eq!(f.eagerness(MitigationKind::Demotion, "nodes", sim.now_ms), 1.0, "other evidence keeps its eagerness");
    let report = m.pfa_report(sim.now_ms, 3_600_000, &[]);
    assert_eq!(report.days.iter().map(|d| d.mitigations_not_helped).sum::<u64>(), 2);
    assert!(report.eagerness.iter().any(|e| e.evidence == "latency" && e.eagerness == 0.25), "{report:?}");
    // A successor reads the records back and is as reluctant.
    let successor = sim.recover(&cfg);
    assert_eq!(successor.mitigations().eagerness(MitigationKind::Demotion, "latency", sim.now_ms), 0.25);
}
