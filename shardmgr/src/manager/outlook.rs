//! The manager's forecast report ([`crate::forecast::ForecastReport`], `presage-ctl
//! forecast`): each shard's forecast from its history, each node's and region's as the sum of
//! the shards they lead bucket by bucket (where the load would go if no leadership moved),
//! their load prediction scores, and the advice the forecast policies give
//! ([`crate::policy::forecast_advice`]).

use std::collections::BTreeMap;

use super::Manager;
use crate::forecast::{Forecast, ForecastReport, PlaceForecast, Recommendation, ShardForecast};
use crate::model::NodeState;
use crate::operator::Step;
use crate::policy;

/// Most shards a report lists.
pub const MAX_REPORT_SHARDS: usize = 1_000;
/// A report is reused this long, ms.
pub const REPORT_REUSE_MS: u64 = 5_000;

/// Adds one shard's load now and its `steps` forecast buckets (its load now where it has
/// none) into `into`.
fn add(into: &mut (f64, Vec<f64>), now: f64, values: &[f64], steps: usize) {
    into.0 += now;
    into.1.resize(steps, 0.0);
    for (i, slot) in into.1.iter_mut().enumerate() {
        *slot += values.get(i).copied().unwrap_or(now);
    }
}

impl Manager {
    /// The forecast report at `now_ms`, listing the `top_shards` hottest shards (at most
    /// [`MAX_REPORT_SHARDS`]). A report is made at most once per [`REPORT_REUSE_MS`] for a
    /// given `top_shards` (a full pass over the shards; anyone who may inspect can ask).
    pub fn forecast_report(&mut self, now_ms: u64, top_shards: usize) -> ForecastReport {
        let top_shards = top_shards.min(MAX_REPORT_SHARDS);
        if let Some((at, top, report)) = &self.report_cache {
            if *top == top_shards && now_ms >= *at && now_ms - *at < REPORT_REUSE_MS {
                return report.clone();
            }
        }
        let report = self.make_report(now_ms, top_shards);
        self.report_cache = Some((now_ms, top_shards, report.clone()));
        report
    }

    fn make_report(&self, now_ms: u64, top_shards: usize) -> ForecastReport {
        let cfg = self.st.cfg();
        let interval = cfg.forecast_interval_ms;
        let (steps, _) = cfg.forecast_steps();
        let open_bucket_ms = now_ms - now_ms % interval;
        let mut shards = Vec::new();
        let mut by_node: BTreeMap<u64, (f64, Vec<f64>)> = BTreeMap::new();
        for s in self.st.directory().iter() {
            let f = self.st.forecast(s.id, now_ms);
            if let Some(l) = s.leader {
                let (now, values) = self.st.forecast_values(s.id);
                add(by_node.entry(l).or_default(), now, &values, steps);
            }
            shards.push(ShardForecast { shard: s.id, leader: s.leader, forecast: f });
        }
        shards.sort_by(|a, b| b.forecast.peak.total_cmp(&a.forecast.peak).then(a.shard.cmp(&b.shard)));
        shards.truncate(top_shards.min(MAX_REPORT_SHARDS));
        let mut nodes = Vec::new();
        let mut by_region: BTreeMap<String, (f64, Vec<f64>)> = BTreeMap::new();
        for n in self.st.nodes().filter(|n| n.state != NodeState::Removed) {
            let sum = by_node.remove(&n.id).unwrap_or_default();
            add(by_region.entry(n.region.clone()).or_default(), sum.0, &sum.1, steps);
            let forecast = Forecast::from_buckets(sum.0, sum.1.iter().copied(), open_bucket_ms, interval, 0, false);
            nodes.push(PlaceForecast { node: Some(n.id), region: n.region.clone(), forecast, score: 0.0 });
        }
        let mut regions: Vec<PlaceForecast> = by_region
            .into_iter()
            .map(|(region, sum)| {
                let forecast = Forecast::from_buckets(sum.0, sum.1.iter().copied(), open_bucket_ms, interval, 0, false);
                PlaceForecast { node: None, region, forecast, score: 0.0 }
            })
            .collect();
        for places in [&mut nodes, &mut regions] {
            let mean = places.iter().map(|p| p.forecast.peak).sum::<f64>() / places.len().max(1) as f64;
            for p in places.iter_mut() {
                p.score = if mean > 0.0 { p.forecast.peak / mean } else { 0.0 };
            }
            places.sort_by(|a, b| b.forecast.peak.total_cmp(&a.forecast.peak).then(a.node.cmp(&b.node)));
        }
        ForecastReport {
            now_ms,
            interval_ms: interval,
            horizon_ms: cfg.forecast_horizon_ms,
            season_ms: cfg.forecast_season_ms,
            acting: cfg.forecast_balance,
            recommendations: self.recommendations(now_ms),
            regions,
            nodes,
            shards,
        }
    }

    fn recommendations(&self, now_ms: u64) -> Vec<Recommendation> {
        let threshold = self.st.cfg().load_split_qps;
        let (plans, kept) = policy::forecast_advice(&self.st, now_ms);
        let mut out = Vec::new();
        for p in plans {
            let f = self.st.forecast(p.shard, now_ms);
            let leader = self.st.directory().get(p.shard).and_then(|s| s.leader);
            match p.steps.first() {
                Some(Step::Split { .. }) => out.push(Recommendation::Split {
                    shard: p.shard,
                    why: format!(
                        "forecast to reach {:.0} requests/s at {} (now {:.0}; the load-split threshold is {threshold:.0})",
                        f.peak, f.peak_at_ms, f.now
                    ),
                }),
                Some(Step::TransferLeader { to }) => out.push(Recommendation::MoveLeader {
                    shard: p.shard,
                    from: leader,
                    to: *to,
                    why: format!(
                        "its leader's node is forecast the hottest of its group; this shard carries {:.0} requests/s \
                         (forecast peak)",
                        f.now.max(f.peak)
                    ),
                }),
                _ => {}
            }
        }
        for shard in kept {
            let f = self.st.forecast(shard, now_ms);
            let why = if f.peak >= self.st.season_peak(shard) {
                format!("cold now ({:.0}/s) but forecast to reach {:.0}/s at {}", f.now, f.peak, f.peak_at_ms)
            } else {
                let later = self.st.season_peak(shard);
                format!("cold now ({:.0}/s) but forecast to reach {later:.0}/s again within the season", f.now)
            };
            out.push(Recommendation::KeepSplit { shard, why });
        }
        out
    }
}
