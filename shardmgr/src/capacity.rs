//! Capacity advice (seeds 001 and 004): each node's and region's disk bytes and request load
//! projected over `capacity-horizon-ms`, the date each crosses its capacity, and how many
//! nodes to add where (`presage-ctl capacity`).
//!
//! - **History** ([`CapacityHistory`]): every round the manager observes each node's used
//!   bytes (its engine's files and memtables, from its heartbeat) and the requests per second
//!   of the shards it leads. A bucket of `capacity-interval-ms` keeps, per node, the last
//!   bytes seen and the mean rate; at most `capacity-max-points` buckets are kept. Unlike the
//!   shards' load histories this one is persisted: a closed bucket is one meta-shard record
//!   holding every node (`\xffm/c/{start}`), so a manager that takes over advises from the
//!   whole history.
//! - **Projection** ([`project`]): a least-squares line through the history. Bytes: through
//!   every bucket. Load: through each season's busiest bucket once the history holds
//!   [`MIN_SEASONS_FOR_PEAKS`] seasons (the daily peak is what must fit), else through every
//!   bucket. The value now is the last bucket's bytes, and for load the busiest bucket of the
//!   last season. It crosses its capacity when the line reaches the usable part of it:
//!   `capacity-disk-fill` of the bytes a node offers, `capacity-load-fill` of the requests per
//!   second it states (`capacity-qps`). A region's capacity is that of its nodes in groups
//!   (a spare holds no data until it joins one).
//! - **Advice** ([`advise`]): per region, the nodes needed at the horizon for both bytes and
//!   load at the region's mean node capacity, less the nodes it has in groups; free spares
//!   cover that first, and a region left without one is advised one (proactive migration and
//!   maintenance windows need a healthy node to move to). New nodes form groups of one node
//!   per region, so regions that share groups grow together.
//!
//! Pure: time comes in as `now_ms`.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// A day, ms (the unit of growth rates).
pub const DAY_MS: u64 = 86_400_000;
/// Longest horizon and latest crossing date reported: ten years, ms.
pub const MAX_HORIZON_MS: u64 = 3_650 * DAY_MS;
/// Points a trend needs; with fewer the value is projected flat.
pub const MIN_TREND_POINTS: usize = 3;
/// Seasons of history before load is projected through each season's peak.
pub const MIN_SEASONS_FOR_PEAKS: u64 = 3;

/// One node in one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NodeSample {
    /// The node.
    pub node: u64,
    /// Bytes its engine held at the bucket's end.
    pub used_bytes: u64,
    /// Mean requests per second of the shards it led during the bucket.
    pub qps: f64,
}

/// One bucket of the capacity history (a meta-shard record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityBucket {
    /// Its start, Unix ms.
    pub start_ms: u64,
    /// Every node heard from during it, by id.
    pub nodes: Vec<NodeSample>,
}

/// A bucket that closed ([`CapacityHistory::observe`]): persist it, delete the dropped ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    /// The bucket.
    pub bucket: CapacityBucket,
    /// Starts of the oldest buckets dropped to stay within the limit.
    pub dropped_ms: Vec<u64>,
}

/// Per node in the open bucket: last bytes, sum and count of rates.
type OpenNode = (u64, f64, u32);

/// Every node's bytes and load per bucket (module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CapacityHistory {
    /// Closed buckets, oldest first.
    buckets: VecDeque<CapacityBucket>,
    /// The bucket being filled: its start and its nodes.
    open: Option<(u64, BTreeMap<u64, OpenNode>)>,
}

impl CapacityHistory {
    /// The history a previous manager persisted, the newest `max_points` buckets of it, and
    /// the starts of the older ones (to delete: `capacity-max-points` was lowered).
    pub fn recover(mut buckets: Vec<CapacityBucket>, max_points: usize) -> (Self, Vec<u64>) {
        buckets.sort_by_key(|b| b.start_ms);
        buckets.dedup_by_key(|b| b.start_ms);
        let skip = buckets.len().saturating_sub(max_points);
        let dropped = buckets[..skip].iter().map(|b| b.start_ms).collect();
        (CapacityHistory { buckets: buckets.into_iter().skip(skip).collect(), open: None }, dropped)
    }

    /// Records one round's `(node, used_bytes, qps)` at `now_ms`; returns the bucket that
    /// closed, if one did. Observations older than the open bucket are ignored.
    pub fn observe(
        &mut self,
        now_ms: u64,
        interval_ms: u64,
        max_points: usize,
        samples: impl IntoIterator<Item = (u64, u64, f64)>,
    ) -> Option<Closed> {
        debug_assert!(interval_ms > 0 && max_points > 0);
        let start = now_ms - now_ms % interval_ms;
        let mut closed = None;
        match &self.open {
            Some((open, _)) if *open == start => {}
            Some((open, _)) if *open > start => return None,
            _ => {
                if let Some((open, nodes)) = self.open.take() {
                    closed = Some(self.close(open, nodes, max_points));
                }
                self.open = Some((start, BTreeMap::new()));
            }
        }
        let (_, nodes) = self.open.as_mut()?;
        for (node, used, qps) in samples {
            let e = nodes.entry(node).or_insert((0, 0.0, 0));
            *e = (used, e.1 + qps.max(0.0), e.2.saturating_add(1));
        }
        closed
    }

    fn close(&mut self, start_ms: u64, nodes: BTreeMap<u64, OpenNode>, max_points: usize) -> Closed {
        let nodes = nodes
            .into_iter()
            .map(|(node, (used_bytes, sum, n))| NodeSample { node, used_bytes, qps: sum / f64::from(n.max(1)) })
            .collect();
        let bucket = CapacityBucket { start_ms, nodes };
        let mut dropped_ms = Vec::new();
        // Buckets from a clock that ran ahead are replaced (their records deleted).
        while let Some(newer) = self.buckets.back().filter(|b| b.start_ms >= start_ms) {
            if newer.start_ms > start_ms {
                dropped_ms.push(newer.start_ms);
            }
            self.buckets.pop_back();
        }
        self.buckets.push_back(bucket.clone());
        while self.buckets.len() > max_points {
            dropped_ms.extend(self.buckets.pop_front().map(|b| b.start_ms));
        }
        Closed { bucket, dropped_ms }
    }

    /// Closed buckets, oldest first.
    pub fn buckets(&self) -> impl Iterator<Item = &CapacityBucket> + '_ {
        self.buckets.iter()
    }

    /// Closed buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Nothing closed yet?
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Each node's `(bucket start, used bytes, qps)` over the closed buckets, oldest first,
    /// then the open bucket's figures so far (its last bytes and mean rate).
    pub fn by_node(&self) -> BTreeMap<u64, Vec<(u64, u64, f64)>> {
        let mut out: BTreeMap<u64, Vec<(u64, u64, f64)>> = BTreeMap::new();
        for b in &self.buckets {
            for s in &b.nodes {
                out.entry(s.node).or_default().push((b.start_ms, s.used_bytes, s.qps));
            }
        }
        if let Some((start, nodes)) = &self.open {
            for (node, (used, sum, n)) in nodes {
                out.entry(*node).or_default().push((*start, *used, sum / f64::from((*n).max(1))));
            }
        }
        out
    }
}

/// Where one quantity (bytes, or requests per second) is heading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    /// Its value now.
    pub now: f64,
    /// Growth per day (negative: shrinking), from the fitted line.
    pub per_day: f64,
    /// Projected value at the horizon (never below zero).
    pub at_horizon: f64,
    /// The usable capacity (fill share of what is offered; 0: not stated).
    pub capacity: f64,
    /// When it reaches `capacity`, Unix ms (now if it has already; `None`: not within ten
    /// years, not growing, or no capacity stated).
    pub crosses_at_ms: Option<u64>,
    /// Points the line was fitted through.
    pub points: usize,
}

/// The least-squares line through `(x, y)`: `(intercept, slope)`; `None` below
/// [`MIN_TREND_POINTS`] points or when every x is the same.
pub fn linear_fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    if points.len() < MIN_TREND_POINTS {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (sxy, sxx) =
        points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + (x - mx) * (y - my), b + (x - mx) * (x - mx)));
    if sxx <= f64::EPSILON {
        return None;
    }
    let slope = sxy / sxx;
    Some((my - slope * mx, slope))
}

/// Projects `now` (at `now_ms`) over `horizon_ms` along the line through `points` (`(ms,
/// value)`), against the usable `capacity` (0: none stated).
pub fn project(points: &[(u64, f64)], now: f64, now_ms: u64, horizon_ms: u64, capacity: f64) -> Projection {
    let days = |ms: u64| ms as f64 / DAY_MS as f64;
    let origin = points.first().map_or(now_ms, |p| p.0);
    let xy: Vec<(f64, f64)> = points.iter().map(|(t, v)| (days(t.saturating_sub(origin)), *v)).collect();
    let per_day = linear_fit(&xy).map_or(0.0, |(_, slope)| slope);
    let at_horizon = (now + per_day * days(horizon_ms)).max(0.0);
    let crosses_at_ms = crossing(now, per_day, capacity, now_ms);
    Projection { now, per_day, at_horizon, capacity, crosses_at_ms, points: points.len() }
}

/// When a value `now` growing `per_day` reaches `capacity` (module docs).
fn crossing(now: f64, per_day: f64, capacity: f64, now_ms: u64) -> Option<u64> {
    if capacity <= 0.0 {
        None
    } else if now >= capacity {
        Some(now_ms)
    } else if per_day > 0.0 {
        let ahead_ms = (capacity - now) / per_day * DAY_MS as f64;
        (ahead_ms <= MAX_HORIZON_MS as f64).then(|| now_ms + ahead_ms as u64)
    } else {
        None
    }
}

impl Projection {
    /// The sum of several places' projections (a region's of its nodes'): values, growth and
    /// capacities add up; the crossing is the sum's.
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a Projection>, now_ms: u64) -> Projection {
        let mut s =
            Projection { now: 0.0, per_day: 0.0, at_horizon: 0.0, capacity: 0.0, crosses_at_ms: None, points: 0 };
        for p in parts {
            s.now += p.now;
            s.per_day += p.per_day;
            s.at_horizon += p.at_horizon;
            s.capacity += p.capacity;
            s.points = s.points.max(p.points);
        }
        s.crosses_at_ms = crossing(s.now, s.per_day, s.capacity, now_ms);
        s
    }
}

/// The points a load projection is fitted through, and the load now: each season's busiest
/// bucket once the history spans [`MIN_SEASONS_FOR_PEAKS`] seasons (else every bucket), and
/// the busiest bucket of the last season.
pub fn load_points(series: &[(u64, f64)], season_ms: u64) -> (Vec<(u64, f64)>, f64) {
    let Some(last) = series.last() else { return (Vec::new(), 0.0) };
    let now =
        series.iter().filter(|(t, _)| last.0.saturating_sub(*t) < season_ms.max(1)).map(|p| p.1).fold(0.0, f64::max);
    let span_ms = last.0.saturating_sub(series[0].0);
    if season_ms == 0 || span_ms < MIN_SEASONS_FOR_PEAKS * season_ms {
        return (series.to_vec(), now);
    }
    // Seasons counted back from the last bucket (0: the one ending now); the oldest is
    // dropped when the history does not reach its start.
    let mut peaks: BTreeMap<u64, (u64, f64)> = BTreeMap::new();
    for &(t, v) in series {
        let back = (last.0 - t) / season_ms;
        if (back + 1) * season_ms > span_ms + 1 && back > 0 {
            continue;
        }
        let p = peaks.entry(back).or_insert((t, v));
        if v > p.1 {
            *p = (t, v);
        }
    }
    (peaks.into_values().rev().collect(), now)
}

/// One node's outlook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCapacity {
    /// The node.
    pub node: u64,
    /// Its region.
    pub region: String,
    /// It is in a replication group (else a spare, holding no data).
    pub in_group: bool,
    /// Bytes its engine holds.
    pub disk: Projection,
    /// Requests per second of the shards it leads (its busiest bucket of the last season).
    pub load: Projection,
}

/// One region's outlook and advice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionCapacity {
    /// The region.
    pub region: String,
    /// Its nodes in groups.
    pub nodes: usize,
    /// Its free spares (up, in no group).
    pub spares: usize,
    /// The sum of its nodes' bytes.
    pub disk: Projection,
    /// The sum of its nodes' loads.
    pub load: Projection,
    /// Nodes in groups it needs at the horizon.
    pub needed_nodes: usize,
    /// Nodes to add to it.
    pub add_nodes: usize,
    /// Why.
    pub advice: String,
}

/// `presage-ctl capacity`: every region and node, and the advice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityReport {
    /// When it was made, Unix ms.
    pub now_ms: u64,
    /// Bucket of the history, ms.
    pub interval_ms: u64,
    /// Buckets of history behind the projections.
    pub history_points: usize,
    /// How far ahead, ms.
    pub horizon_ms: u64,
    /// Usable share of a node's bytes.
    pub disk_fill: f64,
    /// Usable share of a node's requests per second.
    pub load_fill: f64,
    /// Regions, by name.
    pub regions: Vec<RegionCapacity>,
    /// Nodes, soonest to cross a capacity first.
    pub nodes: Vec<NodeCapacity>,
    /// Nodes to add in all, over every region.
    pub add_nodes: usize,
}

/// What [`advise`] needs of one region.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RegionInputs {
    /// Nodes in groups.
    pub nodes: usize,
    /// Free spares.
    pub spares: usize,
    /// Mean usable bytes of one of its nodes (fill applied).
    pub node_bytes: f64,
    /// Mean usable requests per second of one of its nodes (fill applied; 0: not stated).
    pub node_qps: f64,
}

/// Nodes in groups a region needs at the horizon for its data and for its load.
pub fn needs(r: RegionInputs, disk: &Projection, load: &Projection) -> (usize, usize) {
    let need = |v: f64, per: f64| if per > 0.0 { (v / per).ceil() as usize } else { 0 };
    (need(disk.at_horizon, r.node_bytes), need(load.at_horizon, r.node_qps))
}

/// Nodes to add to a region that needs `needed` nodes in groups at the horizon (`for_data`
/// and `for_load` of them for its own data and load; more when regions grow together), and
/// why (module docs).
pub fn advise(r: RegionInputs, needed: usize, for_data: usize, for_load: usize) -> (usize, String) {
    let needed = needed.max(1);
    let short = needed.saturating_sub(r.nodes);
    let from_spares = short.min(r.spares);
    let spare_after = if r.spares > from_spares { 0 } else { 1 };
    let add = short - from_spares + spare_after;
    let mut why = format!(
        "at the horizon its data needs {for_data} node(s) and its load {for_load}; it has {} in groups and {} spare(s)",
        r.nodes, r.spares
    );
    if needed > for_data.max(for_load).max(1) {
        why.push_str(&format!("; {needed} to grow with the regions it shares groups with"));
    }
    if short > 0 {
        why.push_str(&format!("; {short} more must join groups"));
        if from_spares > 0 {
            why.push_str(&format!(" ({from_spares} from its spares)"));
        }
    }
    if spare_after == 1 {
        why.push_str("; keep one free spare for proactive migration and maintenance windows");
    }
    (add, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_the_last_bytes_and_the_mean_rate_and_are_bounded() {
        let mut h = CapacityHistory::default();
        assert!(h.observe(0, 1_000, 2, [(1, 10, 100.0), (2, 5, 0.0)]).is_none());
        assert!(h.observe(500, 1_000, 2, [(1, 20, 300.0)]).is_none());
        let c = h.observe(1_000, 1_000, 2, [(1, 30, 50.0)]).expect("closed");
        assert_eq!(c.bucket.start_ms, 0);
        assert_eq!(c.bucket.nodes[0], NodeSample { node: 1, used_bytes: 20, qps: 200.0 });
        assert_eq!(c.bucket.nodes[1], NodeSample { node: 2, used_bytes: 5, qps: 0.0 });
        assert!(h.observe(400, 1_000, 2, [(1, 1, 1.0)]).is_none(), "an older bucket is ignored");
        h.observe(2_000, 1_000, 2, []);
        let c = h.observe(3_000, 1_000, 2, []).expect("closed");
        assert_eq!((c.bucket.start_ms, c.dropped_ms.as_slice()), (2_000, [0].as_slice()));
        assert_eq!(h.len(), 2);
        let mut all: Vec<CapacityBucket> = h.buckets().cloned().collect();
        all.reverse();
        let (back, dropped) = CapacityHistory::recover(all, 1);
        assert_eq!(back.buckets().map(|b| b.start_ms).collect::<Vec<_>>(), [2_000]);
        assert_eq!(dropped, [1_000], "older than the limit: deleted");
    }

    #[test]
    fn a_steady_growth_crosses_its_capacity_on_the_day_the_line_says() {
        // 10 GB a day for ten days, now at 100 GB, usable 400 GB: 30 days to go.
        let pts: Vec<(u64, f64)> = (0..=10).map(|d| (d * DAY_MS, 10e9 * d as f64)).collect();
        let now_ms = 10 * DAY_MS;
        let p = project(&pts, 100e9, now_ms, 90 * DAY_MS, 400e9);
        assert!((p.per_day - 10e9).abs() < 1.0, "{p:?}");
        assert!((p.at_horizon - 1_000e9).abs() < 1e3, "{p:?}");
        assert_eq!(p.crosses_at_ms, Some(now_ms + 30 * DAY_MS));
        let flat = project(&[(0, 5.0), (DAY_MS, 5.0), (2 * DAY_MS, 5.0)], 5.0, 2 * DAY_MS, DAY_MS, 10.0);
        assert_eq!((flat.per_day, flat.crosses_at_ms), (0.0, None));
        assert_eq!(project(&pts, 500e9, now_ms, DAY_MS, 400e9).crosses_at_ms, Some(now_ms), "already over");
        assert_eq!(project(&pts[..2], 1.0, now_ms, DAY_MS, 400e9).per_day, 0.0, "too few points: flat");
    }

    #[test]
    fn load_is_projected_through_daily_peaks_once_there_are_three_days() {
        // An hourly load with a peak of 100 + 10/day at noon and 10 otherwise.
        let hour = 3_600_000;
        let series: Vec<(u64, f64)> = (0..24 * 5)
            .map(|h| {
                let day = h / 24;
                (h * hour, if h % 24 == 12 { 100.0 + 10.0 * day as f64 } else { 10.0 })
            })
            .collect();
        let (pts, now) = load_points(&series, DAY_MS);
        // Five days back from the last bucket: the oldest does not reach its start.
        assert_eq!(pts.len(), 4);
        assert_eq!(now, 140.0);
        let p = project(&pts, now, 5 * DAY_MS, 10 * DAY_MS, 200.0);
        assert!((p.per_day - 10.0).abs() < 1e-9, "{p:?}");
        assert_eq!(p.crosses_at_ms, Some(5 * DAY_MS + 6 * DAY_MS));
        let (short, _) = load_points(&series[..30], DAY_MS);
        assert_eq!(short.len(), 30, "every bucket before three days");
    }

    #[test]
    fn advice_counts_nodes_for_bytes_and_load_and_keeps_a_spare() {
        let proj = |at_horizon: f64| Projection {
            now: 0.0,
            per_day: 0.0,
            at_horizon,
            capacity: 0.0,
            crosses_at_ms: None,
            points: 0,
        };
        let r = RegionInputs { nodes: 3, spares: 1, node_bytes: 100.0, node_qps: 1_000.0 };
        // Bytes need 5 nodes, load 2: two more, one from the spare, one added, plus a spare.
        assert_eq!(needs(r, &proj(450.0), &proj(1_500.0)), (5, 2));
        let (add, why) = advise(r, 5, 5, 2);
        assert_eq!(add, 2, "{why}");
        // Enough room: nothing to add, the spare stays.
        let (add, why) = advise(r, 1, 1, 1);
        assert_eq!(add, 0, "{why}");
        // Load needs 4 with no spare: one more and a spare.
        let r = RegionInputs { spares: 0, ..r };
        assert_eq!(needs(r, &proj(10.0), &proj(3_500.0)), (1, 4));
        assert_eq!(advise(r, 4, 1, 4).0, 2);
        // Growing with a region that needs 6: three more and a spare.
        let (add, why) = advise(r, 6, 1, 4);
        assert_eq!(add, 4, "{why}");
        assert!(why.contains("shares groups"), "{why}");
    }
}
