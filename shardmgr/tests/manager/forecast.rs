//! Predicted load against the simulated cluster: a hot spot that recurs every season is split
//! before it returns (and only after it arrived without forecasting); noisy load moves
//! leaderships far less with forecasting and the hold than by the latest report; the forecast
//! report at 1,000 nodes.

use super::*;
use presage_shardmgr::{ForecastReport, Recommendation};

/// Ten-second buckets, a two-minute season, a 30-second horizon.
fn forecast_config(on: bool) -> ManagerConfig {
    ManagerConfig {
        forecast_balance: on,
        leader_move_hold_ms: if on { 60_000 } else { 0 },
        forecast_interval_ms: 10_000,
        forecast_season_ms: 120_000,
        forecast_horizon_ms: 30_000,
        forecast_max_points: 120,
        merge_delay_ms: 20_000,
        split_merge_interval_ms: 30_000,
        ..test_config()
    }
}

const SEASON_MS: u64 = 120_000;
/// The spike: seconds 80 to 100 of every season.
const SPIKE: (u64, u64) = (80_000, 100_000);
const HOT: u64 = 1 << 40;

/// Runs five seasons of a recurring hot spot; returns, per season from the third (the first
/// with two seasons of history), when the first split of the shard holding the hot spot
/// started relative to the spike (ms; negative: before it) and of what kind, if it split;
/// and the merges into or of that shard from the fourth season.
fn recurring_spike(on: bool, load_split_window_ms: u64) -> (Vec<Option<(i64, OperatorKind)>>, usize) {
    let cfg = ManagerConfig { load_split_window_ms, ..forecast_config(on) };
    let (mut sim, mut m) = three_nodes(&cfg);
    let t0 = sim.now_ms - sim.now_ms % SEASON_MS + SEASON_MS;
    while sim.now_ms < t0 {
        sim.round(&mut m, 1000);
    }
    let mut firsts = Vec::new();
    let mut merges = 0;
    for season in 0..5u64 {
        let spike_at = t0 + season * SEASON_MS + SPIKE.0;
        let mut first: Option<(i64, OperatorKind)> = None;
        while sim.now_ms < t0 + (season + 1) * SEASON_MS {
            let t = (sim.now_ms - t0) % SEASON_MS;
            sim.traffic = vec![(HOT, if (SPIKE.0..SPIKE.1).contains(&t) { 1_500 } else { 50 })];
            let holder = sim.shards.values().find(|s| s.contains(&key(HOT))).map(|s| s.id);
            let fx = sim.round(&mut m, 1000);
            let merged = |c: &&Command| match c.step {
                Step::Merge { target } => Some(c.shard) == holder || Some(target) == holder,
                _ => false,
            };
            if season >= 3 {
                merges += fx.commands.iter().filter(merged).count();
            }
            let split = fx.commands.iter().find(|c| matches!(c.step, Step::Split { .. }) && Some(c.shard) == holder);
            if let (None, Some(c)) = (&first, split) {
                let kind = m.operators().find(|op| op.id == c.operator).map(|op| op.kind.clone()).expect("operator");
                let started = sim.now_ms as i64 - spike_at as i64;
                // Only splits for this season's spike (from half a season before it).
                if started > -(SEASON_MS as i64) / 2 {
                    first = Some((started, kind));
                }
            }
        }
        if season >= 2 {
            firsts.push(first);
        }
    }
    (firsts, merges)
}

/// Seeds 001/002, predicted load: a spike shorter than the load-split window is never split
/// by its load; with forecasting, the shard is split before the spike once two seasons of
/// history show it (a `ForecastSplit`), and every later spike finds it split.
#[test]
fn a_recurring_hot_spot_is_split_before_it_returns_only_with_forecasting() {
    let (with, _) = recurring_spike(true, 60_000);
    let (without, _) = recurring_spike(false, 60_000);
    eprintln!("first split relative to the spike (ms): with forecasting {with:?}, without {without:?}");
    assert!(without.iter().all(Option::is_none), "seed {}: split by load within the window: {without:?}", seed());
    let splits: Vec<_> = with.iter().flatten().collect();
    assert!(!splits.is_empty(), "seed {}: forecasting never split the recurring spike: {with:?}", seed());
    for (at, kind) in splits {
        assert!(*at < 0, "seed {}: forecasting split after the spike began: {with:?}", seed());
        assert_eq!(*kind, OperatorKind::ForecastSplit, "seed {}: {with:?}", seed());
    }
}

/// With forecasting, a range hot in every season stays split between its spikes (its season's
/// forecast keeps it from merging); without, the halves merge back once cold, and each spike
/// is split again only after the load-split window.
#[test]
fn a_range_hot_every_season_stays_split_between_spikes_only_with_forecasting() {
    let (with, merges_with) = recurring_spike(true, 10_000);
    let (without, merges_without) = recurring_spike(false, 10_000);
    eprintln!("first split: with forecasting {with:?}, without {without:?}");
    eprintln!("merges of the hot range in seasons 4-5: with forecasting {merges_with}, without {merges_without}");
    assert_eq!(merges_with, 0, "seed {}: a range hot every season was merged between its spikes", seed());
    assert!(merges_without > 0, "seed {}: without forecasting the cold halves merge back", seed());
    // From the fourth season (the third is learnt in these seasons) no split during a spike.
    for (at, _) in with[1..].iter().flatten() {
        assert!(*at < 0, "seed {}: split during a learnt spike with forecasting: {with:?}", seed());
    }
    for first in &without {
        let Some((at, kind)) = first else { panic!("seed {}: no split without forecasting: {without:?}", seed()) };
        assert!(*at >= 10_000, "seed {}: without forecasting the split waits for the window: {without:?}", seed());
        assert_eq!(*kind, OperatorKind::LoadSplit, "seed {}: {without:?}", seed());
    }
}

/// The load histories live in the meta shard: a manager recovered just before a spike
/// forecasts it as its predecessor did (the same seasonal peak), without a season of its own.
#[test]
fn a_new_manager_forecasts_from_its_predecessors_history() {
    let cfg = ManagerConfig { load_split_window_ms: 60_000, ..forecast_config(false) };
    let (mut sim, mut m) = three_nodes(&cfg);
    let t0 = sim.now_ms - sim.now_ms % SEASON_MS + SEASON_MS;
    let before_third = t0 + 2 * SEASON_MS + SPIKE.0 - 20_000;
    while sim.now_ms < before_third {
        let t = sim.now_ms.saturating_sub(t0) % SEASON_MS;
        let on = sim.now_ms >= t0 && (SPIKE.0..SPIKE.1).contains(&t);
        sim.traffic = vec![(HOT, if on { 1_500 } else { 50 })];
        sim.round(&mut m, 1000);
    }
    let hot = |r: &ForecastReport| {
        // Two seasons learn the spike of 1,500 to about 60%.
        r.shards.iter().find(|s| s.forecast.peak >= 750.0).map(|s| (s.shard, s.forecast.clone()))
    };
    let old = hot(&m.forecast_report(sim.now_ms, 5));
    let Some((shard, old)) = old else { panic!("seed {}: the predecessor foresaw no spike", seed()) };
    assert!(old.seasonal, "{old:?}");
    let keys = sim.meta.keys().filter(|k| k.starts_with(b"\xffm/f/")).count();
    assert!(keys >= 1, "seed {}: no history record in the meta shard", seed());
    let mut successor = sim.recover(&cfg);
    let new = hot(&successor.forecast_report(sim.now_ms, 5));
    let Some((again, new)) = new else { panic!("seed {}: the successor foresees no spike", seed()) };
    assert_eq!(again, shard);
    assert!(new.seasonal && (new.peak - old.peak).abs() <= old.peak * 0.01, "seed {}: {new:?} vs {old:?}", seed());
    assert_eq!(new.peak_at_ms, old.peak_at_ms);
}

/// Eight shards under load that changes every second (below the split threshold): leaderships
/// move at most once per hold with forecasting, and far less often than by the latest report.
#[test]
fn noisy_load_moves_leaderships_far_less_with_forecasting_and_the_hold() {
    let moves = |on: bool| -> (usize, u64) {
        let cfg = forecast_config(on);
        let (mut sim, mut m) = three_nodes(&cfg);
        sim.size.insert(1, (400 << 20, 10_000));
        for _ in 0..40 {
            sim.round(&mut m, 1000);
        }
        let mut count = 0;
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        let mut shortest = u64::MAX;
        for _ in 0..300 {
            let spots = (0..3).map(|_| (sim.rng.random_range(0..u64::MAX / 2), sim.rng.random_range(0..400))).collect();
            sim.traffic = spots;
            let fx = sim.round(&mut m, 1000);
            for c in fx.commands.iter().filter(|c| matches!(c.step, Step::TransferLeader { .. })) {
                let balancing = m.operators().any(|op| op.id == c.operator && op.kind == OperatorKind::BalanceLeader);
                if balancing {
                    count += 1;
                    if let Some(t) = last.insert(c.shard, sim.now_ms) {
                        shortest = shortest.min(sim.now_ms - t);
                    }
                }
            }
        }
        (count, shortest)
    };
    let (with, shortest) = moves(true);
    let (without, _) = moves(false);
    eprintln!("leadership moves in 300 s of noise: {with} with forecasting, {without} by the latest report");
    assert!(with > 0, "seed {}: forecasting must still balance", seed());
    assert!(with * 3 <= without, "seed {}: {with} moves with forecasting, {without} without", seed());
    assert!(
        shortest != u64::MAX && shortest >= 60_000,
        "seed {}: a leadership moved again after {shortest} ms",
        seed()
    );
}

/// The forecast report at 1,000 nodes and 3,000 shards: every node and region scored, the
/// hottest shards first, advice to even out the leaderships, in a few rounds' time.
#[test]
fn the_forecast_report_at_1000_nodes_scores_every_node_and_region() {
    let cfg = ManagerConfig { forecast_interval_ms: 1_000, ..forecast_config(true) };
    let (mut sim, mut m) = thousand_nodes(&cfg, |_, g| g[0]);
    let width = 0xfe00_0000_0000_0000u64 / 3_000;
    sim.traffic = (0..50).map(|i| (i * width * 60 + width / 2, 200)).collect();
    for _ in 0..8 {
        sim.round(&mut m, 1000);
    }
    let t = Instant::now();
    let report: ForecastReport = m.forecast_report(sim.now_ms, 20);
    eprintln!("forecast report at 1000 nodes, 3000 shards: {:?}", t.elapsed());
    assert_eq!(report.nodes.len(), 1000);
    assert_eq!(report.regions.len(), 3);
    assert_eq!(report.shards.len(), 20);
    assert!(report.shards.windows(2).all(|w| w[0].forecast.peak >= w[1].forecast.peak), "hottest first");
    assert!(report.shards[0].forecast.peak > 100.0, "{:?}", report.shards[0]);
    let hottest = &report.nodes[0];
    assert!(hottest.score > 1.0 && report.nodes.last().is_some_and(|n| n.score < 1.0), "{hottest:?}");
    let moves = report.recommendations.iter().filter(|r| matches!(r, Recommendation::MoveLeader { .. })).count();
    assert!(moves > 0, "seed {}: the leaders of the hot shards should spread: {:?}", seed(), report.recommendations);
    let json = serde_json::to_string(&report).expect("encode");
    assert!(json.contains("\"action\":\"move-leader\"") && json.contains("\"peak_at_ms\""), "{}", &json[..200]);
}
