//! The manager's capacity history and report ([`crate::capacity`], `presage-ctl capacity`).
//!
//! Every round: each node that is up and reported stats adds its used bytes and the requests
//! per second of the shards it leads to the open bucket; a bucket that closes is written to
//! the meta shard with the round's other records (and the oldest beyond
//! `capacity-max-points` deleted). The report projects each node from the closed buckets and
//! the open one; a region's projection is the sum of its nodes' in groups (a node that joined
//! or went down moves the sum, not the trend), and each region gets its advice.

use std::collections::BTreeMap;

use super::Manager;
use crate::capacity::{self, CapacityReport, NodeCapacity, Projection, RegionCapacity, RegionInputs};
use crate::meta::{self, MetaWrite};
use crate::model::{NodeId, NodeState};

/// A region's name, inputs, bytes and load projections, and nodes needed for data and load.
type RegionRow = (String, RegionInputs, Projection, Projection, (usize, usize));

/// A capacity report is reused this long, ms.
pub const CAPACITY_REPORT_REUSE_MS: u64 = 5_000;

/// A region being summed up: its nodes in groups and spares, their projections, the nodes that
/// state a request capacity.
#[derive(Default)]
struct RegionSum {
    inputs: RegionInputs,
    disks: Vec<Projection>,
    loads: Vec<Projection>,
    stating_qps: usize,
}

impl Manager {
    /// Adds this round's observation of every live node to the capacity history.
    pub(super) fn observe_capacity(&mut self, now_ms: u64) {
        let mut led: BTreeMap<NodeId, f64> = BTreeMap::new();
        for s in self.st.directory().iter() {
            if let (Some(l), Some(soft)) = (s.leader, self.st.soft(s.id)) {
                *led.entry(l).or_default() += soft.load.qps();
            }
        }
        let samples: Vec<(u64, u64, f64)> = self
            .st
            .nodes()
            .filter(|n| n.state == NodeState::Up)
            .filter_map(|n| {
                self.st.stats_of(n.id).map(|s| (n.id, s.used_bytes, led.get(&n.id).copied().unwrap_or(0.0)))
            })
            .collect();
        let cfg = self.st.cfg();
        let (interval, max_points) = (cfg.capacity_interval_ms, cfg.capacity_max_points);
        let Some(closed) = self.capacity.observe(now_ms, interval, max_points, samples) else { return };
        self.pending.push(meta::put(meta::capacity_key(closed.bucket.start_ms), &closed.bucket));
        for start in closed.dropped_ms {
            self.pending.push(MetaWrite { key: meta::capacity_key(start), value: None });
        }
    }

    /// The capacity report at `now_ms` (module docs; `crate::capacity`), made at most once
    /// per [`CAPACITY_REPORT_REUSE_MS`] (anyone who may inspect can ask).
    pub fn capacity_report(&mut self, now_ms: u64) -> CapacityReport {
        if let Some((at, report)) = &self.capacity_cache {
            if now_ms >= *at && now_ms - *at < CAPACITY_REPORT_REUSE_MS {
                return report.clone();
            }
        }
        let report = self.make_capacity_report(now_ms);
        self.capacity_cache = Some((now_ms, report.clone()));
        report
    }

    fn make_capacity_report(&self, now_ms: u64) -> CapacityReport {
        let cfg = self.st.cfg();
        let (horizon, disk_fill, load_fill) = (cfg.capacity_horizon_ms, cfg.capacity_disk_fill, cfg.capacity_load_fill);
        let season = cfg.forecast_season_ms;
        let by_node = self.capacity.by_node();
        let mut nodes = Vec::new();
        let mut regions: BTreeMap<&str, RegionSum> = BTreeMap::new();
        for n in self.st.nodes().filter(|n| n.state != NodeState::Removed) {
            let series = by_node.get(&n.id).map_or(&[][..], Vec::as_slice);
            let (bytes_cap, qps_cap) = (n.capacity_bytes as f64 * disk_fill, n.capacity_qps as f64 * load_fill);
            let (disk, load) = project_both(series, now_ms, horizon, season, bytes_cap, qps_cap);
            let r = regions.entry(n.region.as_str()).or_default();
            if n.group.is_some() {
                r.inputs.nodes += 1;
                r.stating_qps += usize::from(n.capacity_qps > 0);
                r.disks.push(disk.clone());
                r.loads.push(load.clone());
            } else if n.state == NodeState::Up && self.st.migration_of(n.id).is_none() {
                r.inputs.spares += 1;
            }
            nodes.push(NodeCapacity { node: n.id, region: n.region.clone(), in_group: n.group.is_some(), disk, load });
        }
        // Every region's projections and needs, then the advice: where every group holds a
        // node of every region, the regions grow together (a new group takes one of each).
        let mut rows: Vec<RegionRow> = Vec::new();
        for (region, r) in regions {
            let (disk, load) = (Projection::sum(&r.disks, now_ms), Projection::sum(&r.loads, now_ms));
            let per = |total: f64, n: usize| if n > 0 { total / n as f64 } else { 0.0 };
            let inputs = RegionInputs {
                node_bytes: per(disk.capacity, r.inputs.nodes),
                node_qps: per(load.capacity, r.stating_qps),
                ..r.inputs
            };
            let needs = capacity::needs(inputs, &disk, &load);
            rows.push((region.to_string(), inputs, disk, load, needs));
        }
        let together = self.groups_span_every_region(rows.len());
        let most = rows.iter().map(|r| r.4 .0.max(r.4 .1)).max().unwrap_or(0);
        let regions: Vec<RegionCapacity> = rows
            .into_iter()
            .map(|(region, inputs, disk, load, (for_data, for_load))| {
                let needed = if together { most } else { for_data.max(for_load) }.max(1);
                let (add_nodes, advice) = capacity::advise(inputs, needed, for_data, for_load);
                let (nodes, spares) = (inputs.nodes, inputs.spares);
                RegionCapacity { region, nodes, spares, disk, load, needed_nodes: needed, add_nodes, advice }
            })
            .collect();
        let soonest = |n: &NodeCapacity| n.disk.crosses_at_ms.into_iter().chain(n.load.crosses_at_ms).min();
        nodes.sort_by_key(|n| (soonest(n).unwrap_or(u64::MAX), n.node));
        CapacityReport {
            now_ms,
            interval_ms: cfg.capacity_interval_ms,
            history_points: self.capacity.len(),
            horizon_ms: horizon,
            disk_fill,
            load_fill,
            add_nodes: regions.iter().map(|r| r.add_nodes).sum(),
            regions,
            nodes,
        }
    }

    /// Does every group hold a node of each of the `regions` regions?
    fn groups_span_every_region(&self, regions: usize) -> bool {
        let region_of = |id: &NodeId| self.st.node(*id).map(|n| n.region.as_str());
        self.st.groups().all(|g| {
            let spanned: std::collections::BTreeSet<&str> = g.nodes.iter().filter_map(region_of).collect();
            spanned.len() == regions
        })
    }
}

/// A place's bytes and load projections from its history (`(start, bytes, qps)` per bucket).
fn project_both(
    series: &[(u64, u64, f64)],
    now_ms: u64,
    horizon_ms: u64,
    season_ms: u64,
    bytes_cap: f64,
    qps_cap: f64,
) -> (Projection, Projection) {
    let bytes: Vec<(u64, f64)> = series.iter().map(|(t, b, _)| (*t, *b as f64)).collect();
    let bytes_now = bytes.last().map_or(0.0, |p| p.1);
    let disk = capacity::project(&bytes, bytes_now, now_ms, horizon_ms, bytes_cap);
    let qps: Vec<(u64, f64)> = series.iter().map(|(t, _, q)| (*t, *q)).collect();
    let (points, qps_now) = capacity::load_points(&qps, season_ms);
    let load = capacity::project(&points, qps_now, now_ms, horizon_ms, qps_cap);
    (disk, load)
}
