//! The aggregator the shard manager runs: every node's telemetry in a bounded ring, per-signal
//! detectors, the feature vector the node failure model reads, the evidence early warnings
//! are made of, and per-minute summaries for the history kept in the meta shard.
//!
//! Feature names are `<signal>_<feature>`:
//! - `level`: EWMA (span 10 samples) of the transformed value (ln(1 + x) for latencies and
//!   queues, see [`Signal::transform`]);
//! - `dev`: the level's distance from the signal's own slow baseline (EWMA, span 300), in
//!   baseline deviations;
//! - `slope_10`, `slope_60`, `slope_300`: least-squares slopes over three windows, per sample;
//! - `holt_z`: the last value's residual against Holt's one-step forecast, in deviations;
//! - `cusum_up`: the upward CUSUM sum; `shift_up`: 1 while an upward change point found in the
//!   last 300 samples has not been followed by a downward one;
//! - `peer`: the level minus the median level of the node's peers (NaN without peers; see
//!   `peer_levels` for who the peers are).
//!
//! For a signal that is bad when low (available memory) "up" reads "down".
//!
//! `Aggregator`: per node a bounded ring (`max_samples_per_node`) and per signal a tracker (level
//! and baseline EWMAs, slopes over 10/60/300 samples, Holt, CUSUM); `features(node)` in
//! `feature_names()` order (9 per signal, incl. the distance from the peers' median);
//! `evidence(node)` (a signal far from its own baseline *and* at least 2x its peers' *and* past its
//! material level — `Signal::material_level`, e.g. 20 ms of sync latency, 80% CPU — or any engine
//! error; during a node's warm-up, a signal 10x the median of at least two peers);
//! `minute_summaries` (per signal mean, max, and the detectors' scale's mean and deviation) for the
//! history in the meta shard, and `restore(node, history)`, which resumes a node's baselines and
//! change-point detectors from it (a new manager judges nodes at once, without the warm-up).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::detect::{median, Change, Cusum, CusumConfig, Direction, Ewma, Holt, Slope};
use crate::telemetry::{Signal, TelemetrySample};
use crate::warning::Evidence;

/// Slope windows, samples.
pub const SLOPE_WINDOWS: [usize; 3] = [10, 60, 300];
/// Span of the level EWMA, samples.
pub const LEVEL_SPAN: f64 = 10.0;
/// Span of the baseline EWMA, samples.
pub const BASELINE_SPAN: f64 = 300.0;
/// How long an upward change point counts as a shift, samples.
pub const SHIFT_MEMORY_SAMPLES: u64 = 300;

/// The per-signal features, in order.
pub const SIGNAL_FEATURES: [&str; 9] =
    ["level", "dev", "slope_10", "slope_60", "slope_300", "holt_z", "cusum_up", "shift_up", "peer"];

/// Aggregator limits and thresholds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AggregatorConfig {
    /// Samples kept per node (the ring).
    pub max_samples_per_node: usize,
    /// Nodes tracked at most.
    pub max_nodes: usize,
    /// Change-point settings.
    pub cusum: CusumConfig,
    /// A signal is evidence when its level stands this many baseline deviations off...
    pub evidence_min_z: f64,
    /// ...and, when the node has peers, this many times its peers' median level (on the raw
    /// scale).
    pub evidence_min_peer_ratio: f64,
    /// Samples the baseline needs before a signal can be evidence by its own baseline.
    pub evidence_warmup_samples: u64,
    /// Before that (a node just seen, say by a new shard manager without its history), a
    /// signal is evidence when it stands this many times above the median of at least two
    /// peers: the warm-up must not learn a degradation in progress as normal unnoticed.
    pub evidence_cold_peer_ratio: f64,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            max_samples_per_node: 900,
            max_nodes: 4_096,
            cusum: CusumConfig::default(),
            evidence_min_z: 6.0,
            evidence_min_peer_ratio: 2.0,
            evidence_warmup_samples: 120,
            evidence_cold_peer_ratio: 10.0,
        }
    }
}

/// Detector state of one signal of one node.
#[derive(Clone, Debug)]
struct Tracker {
    level: Ewma,
    baseline: Ewma,
    slopes: [Slope; 3],
    holt: Holt,
    holt_z: f64,
    cusum: Cusum,
    last_up: Option<u64>,
    last_down: Option<u64>,
    samples: u64,
    last_raw: f64,
}

impl Tracker {
    fn new(cfg: &AggregatorConfig, signal: Signal) -> Tracker {
        Tracker {
            level: Ewma::with_span(LEVEL_SPAN),
            baseline: Ewma::with_span(BASELINE_SPAN),
            slopes: SLOPE_WINDOWS.map(Slope::new),
            holt: Holt::new(0.3, 0.05),
            holt_z: 0.0,
            cusum: Cusum::new(CusumConfig { min_sd: signal.min_sd(), ..cfg.cusum }),
            last_up: None,
            last_down: None,
            samples: 0,
            last_raw: f64::NAN,
        }
    }

    fn update(&mut self, signal: Signal, raw: f64, warmup_samples: u64) {
        let x = signal.transform(raw);
        self.samples += 1;
        self.last_raw = raw;
        self.level.update(x);
        // The baseline learns slowly, and after its warm-up not from values far on the bad side
        // of it: a degradation must not become the new normal while it lasts.
        let z = self.baseline.z(x, signal.min_sd());
        let bad_z = if signal.bad_when_low() { -z } else { z };
        if self.samples <= warmup_samples || bad_z < 3.0 {
            self.baseline.update(x);
        }
        for s in &mut self.slopes {
            s.update(x);
        }
        self.holt_z = self.holt.update(x, signal.min_sd()).unwrap_or(0.0).clamp(-20.0, 20.0);
        if let Some(Change { direction, .. }) = self.cusum.update(x) {
            let bad = (direction == Direction::Up) != signal.bad_when_low();
            if bad {
                self.last_up = Some(self.samples);
            } else {
                self.last_down = Some(self.samples);
            }
        }
    }

    fn level(&self) -> f64 {
        self.level.mean().unwrap_or(f64::NAN)
    }

    /// Distance of the level from the baseline, in baseline deviations, signed so that
    /// positive is bad.
    fn dev(&self, signal: Signal) -> f64 {
        let Some(b) = self.baseline.mean() else { return f64::NAN };
        let d = (self.level() - b) / self.baseline.sd().max(signal.min_sd());
        if signal.bad_when_low() {
            -d
        } else {
            d
        }
    }

    fn shifted(&self) -> bool {
        match (self.last_up, self.last_down) {
            (Some(up), down) => self.samples - up <= SHIFT_MEMORY_SAMPLES && down.is_none_or(|d| d < up),
            _ => false,
        }
    }
}

/// One node's ring and trackers.
#[derive(Clone, Debug)]
struct NodeTrack {
    region: String,
    ring: VecDeque<TelemetrySample>,
    trackers: BTreeMap<Signal, Tracker>,
    last_at_ms: u64,
}

/// One signal over one minute.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinuteStats {
    /// Mean, raw scale.
    pub mean: f64,
    /// Largest value, raw scale.
    pub max: f64,
    /// Mean on the detectors' scale ([`Signal::transform`]).
    pub t_mean: f64,
    /// Standard deviation on the detectors' scale, within the minute.
    pub t_sd: f64,
    /// The detectors' baseline (mean, deviation) when the minute was written: learnt only
    /// from values not far on the bad side, so a degradation in progress is not in it.
    #[serde(default)]
    pub baseline: Option<(f64, f64)>,
}

/// A per-minute summary of a node's signals: the downsampled history the shard manager keeps
/// in the meta shard, from which a new manager restores the detectors' baselines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinuteSummary {
    /// The node.
    pub node: u64,
    /// Its region.
    pub region: String,
    /// Start of the minute, ms since the Unix epoch.
    pub minute_ms: u64,
    /// Samples in the minute.
    pub samples: u32,
    /// Per signal.
    pub signals: BTreeMap<Signal, MinuteStats>,
}

/// Telemetry of every node, with detectors and features.
#[derive(Clone, Debug)]
pub struct Aggregator {
    cfg: AggregatorConfig,
    nodes: BTreeMap<u64, NodeTrack>,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new(cfg: AggregatorConfig) -> Aggregator {
        assert!(cfg.max_samples_per_node > 0 && cfg.max_nodes > 0);
        Aggregator { cfg, nodes: BTreeMap::new() }
    }

    /// The settings.
    pub fn config(&self) -> &AggregatorConfig {
        &self.cfg
    }

    /// Take one sample of `node`. Samples not newer than the node's last are dropped (a
    /// resent heartbeat); returns whether it was taken.
    pub fn ingest(&mut self, node: u64, region: &str, sample: TelemetrySample) -> bool {
        if !self.nodes.contains_key(&node) && self.nodes.len() >= self.cfg.max_nodes {
            return false;
        }
        let cfg = &self.cfg;
        let track = self.nodes.entry(node).or_insert_with(|| NodeTrack {
            region: region.to_string(),
            ring: VecDeque::new(),
            trackers: BTreeMap::new(),
            last_at_ms: 0,
        });
        if sample.at_ms <= track.last_at_ms {
            return false;
        }
        track.region = region.to_string();
        track.last_at_ms = sample.at_ms;
        for (&signal, &v) in &sample.values {
            if v.is_finite() {
                track.trackers.entry(signal).or_insert_with(|| Tracker::new(cfg, signal)).update(
                    signal,
                    v,
                    cfg.evidence_warmup_samples,
                );
            }
        }
        if track.ring.len() == cfg.max_samples_per_node {
            track.ring.pop_front();
        }
        track.ring.push_back(sample);
        true
    }

    /// Stop tracking a node.
    pub fn forget(&mut self, node: u64) {
        self.nodes.remove(&node);
    }

    /// The nodes tracked, with their regions.
    pub fn nodes(&self) -> Vec<(u64, String)> {
        self.nodes.iter().map(|(n, t)| (*n, t.region.clone())).collect()
    }

    /// The node's kept samples, oldest first.
    pub fn samples(&self, node: u64) -> impl Iterator<Item = &TelemetrySample> {
        self.nodes.get(&node).into_iter().flat_map(|t| t.ring.iter())
    }

    /// When the node's last sample was taken.
    pub fn last_sample_ms(&self, node: u64) -> Option<u64> {
        self.nodes.get(&node).map(|t| t.last_at_ms)
    }

    /// The feature names, in the order of [`Aggregator::features`].
    pub fn feature_names() -> Vec<String> {
        Signal::ALL.iter().flat_map(|s| SIGNAL_FEATURES.iter().map(move |f| format!("{}_{f}", s.name()))).collect()
    }

    /// The node's feature vector (NaN for signals it never reported), or None if unknown.
    pub fn features(&self, node: u64) -> Option<Vec<f64>> {
        let track = self.nodes.get(&node)?;
        let mut out = Vec::with_capacity(Signal::ALL.len() * SIGNAL_FEATURES.len());
        for signal in Signal::ALL {
            let Some(t) = track.trackers.get(&signal) else {
                out.extend([f64::NAN; SIGNAL_FEATURES.len()]);
                continue;
            };
            let sign = if signal.bad_when_low() { -1.0 } else { 1.0 };
            let slope = |i: usize| t.slopes[i].slope().map_or(f64::NAN, |s| sign * s);
            let peer = self.peer_levels(node, signal);
            let peer_feature = median(&peer).map_or(f64::NAN, |m| sign * (t.level() - m));
            out.extend([
                t.level(),
                t.dev(signal),
                slope(0),
                slope(1),
                slope(2),
                sign * t.holt_z,
                if signal.bad_when_low() { t.cusum.sums().1 } else { t.cusum.sums().0 },
                f64::from(u8::from(t.shifted())),
                peer_feature,
            ]);
        }
        Some(out)
    }

    /// The levels of `signal` (transformed scale) whose median a node is compared with: every
    /// node's when there are three or more (so that one slow node moves the median of the
    /// others not at all), the other node's when there are two, none when alone.
    fn peer_levels(&self, node: u64, signal: Signal) -> Vec<f64> {
        let others: Vec<f64> = self
            .nodes
            .iter()
            .filter(|(n, _)| **n != node)
            .filter_map(|(_, t)| t.trackers.get(&signal).map(Tracker::level))
            .collect();
        if others.len() < 2 {
            return others;
        }
        let mine = self.nodes.get(&node).and_then(|t| t.trackers.get(&signal)).map(Tracker::level);
        others.into_iter().chain(mine).collect()
    }

    /// The signals of `node` that are out of line now: far from their own baseline (past the
    /// warm-up), and, when the node has peers, well beyond the peers' median, at a level that
    /// matters ([`Signal::material_level`]); or any engine error at all.
    pub fn evidence(&self, node: u64) -> Vec<Evidence> {
        let Some(track) = self.nodes.get(&node) else { return Vec::new() };
        let mut out = Vec::new();
        for (&signal, t) in &track.trackers {
            let raw = |x: f64| if signal.log_scale() { x.exp_m1() } else { x };
            let peers = self.peer_levels(node, signal);
            let peer_median = median(&peers);
            let peer_ratio = peer_median.map(|m| {
                let (mine, theirs) = (raw(t.level()), raw(m));
                if signal.bad_when_low() {
                    theirs.max(1e-9) / mine.max(1e-9)
                } else {
                    mine.max(1e-9) / theirs.max(signal.min_sd())
                }
            });
            let baseline = t.baseline.mean().map_or(f64::NAN, raw);
            if signal == Signal::EngineErrorsPerSec {
                if t.last_raw > 0.0 {
                    out.push(Evidence {
                        signal,
                        value: t.last_raw,
                        baseline,
                        z: t.dev(signal),
                        peer_ratio,
                        detector: "errors".into(),
                    });
                }
                continue;
            }
            if t.samples < self.cfg.evidence_warmup_samples {
                // Cold: only a node far beyond at least two peers (level span filled).
                let (Some(r), Some(m)) = (peer_ratio, peer_median) else { continue };
                if peers.len() >= 3
                    && t.samples >= LEVEL_SPAN as u64
                    && r >= self.cfg.evidence_cold_peer_ratio
                    && signal.is_material(raw(t.level()))
                {
                    let sign = if signal.bad_when_low() { -1.0 } else { 1.0 };
                    out.push(Evidence {
                        signal,
                        value: raw(t.level()),
                        baseline: raw(m),
                        z: sign * (t.level() - m) / t.baseline.sd().max(signal.min_sd()),
                        peer_ratio,
                        detector: "peers".into(),
                    });
                }
                continue;
            }
            let z = t.dev(signal);
            let beyond_peers = peer_ratio.is_none_or(|r| r >= self.cfg.evidence_min_peer_ratio);
            if z >= self.cfg.evidence_min_z && beyond_peers && signal.is_material(raw(t.level())) {
                out.push(Evidence {
                    signal,
                    value: raw(t.level()),
                    baseline,
                    z,
                    peer_ratio,
                    detector: if t.shifted() { "cusum" } else { "level" }.into(),
                });
            }
        }
        out
    }

    /// Per-minute summaries of `node`'s kept samples in whole minutes starting at or after
    /// `after_ms` that ended by `now_ms`.
    pub fn minute_summaries(&self, node: u64, after_ms: u64, now_ms: u64) -> Vec<MinuteSummary> {
        let Some(track) = self.nodes.get(&node) else { return Vec::new() };
        let mut out: Vec<MinuteSummary> = Vec::new();
        // Per signal: count, sum, max, and Welford mean and squared deviations (transformed).
        let mut acc: BTreeMap<Signal, (u32, f64, f64, f64, f64)> = BTreeMap::new();
        let mut current: Option<(u64, u32)> = None;
        let mut flush = |minute: u64, samples: u32, acc: &mut BTreeMap<Signal, (u32, f64, f64, f64, f64)>| {
            let signals = acc
                .iter()
                .map(|(s, &(n, sum, max, t_mean, m2))| {
                    let t_sd = if n > 1 { (m2 / f64::from(n - 1)).sqrt() } else { 0.0 };
                    let baseline = track.trackers.get(s).and_then(|t| t.baseline.mean().map(|m| (m, t.baseline.sd())));
                    (*s, MinuteStats { mean: sum / f64::from(n), max, t_mean, t_sd, baseline })
                })
                .collect();
            out.push(MinuteSummary { node, region: track.region.clone(), minute_ms: minute, samples, signals });
            acc.clear();
        };
        // The ring is in time order: skip what lies before `after_ms` without reading it.
        let start = track.ring.partition_point(|s| s.at_ms < after_ms);
        for s in track.ring.range(start..) {
            let minute = s.at_ms - s.at_ms % 60_000;
            if minute < after_ms || minute + 60_000 > now_ms {
                continue;
            }
            match current {
                Some((m, n)) if m == minute => current = Some((m, n + 1)),
                Some((m, n)) => {
                    flush(m, n, &mut acc);
                    current = Some((minute, 1));
                }
                None => current = Some((minute, 1)),
            }
            for (&sig, &v) in &s.values {
                if v.is_finite() {
                    let x = sig.transform(v);
                    let e = acc.entry(sig).or_insert((0, 0.0, f64::NEG_INFINITY, 0.0, 0.0));
                    e.0 += 1;
                    e.1 += v;
                    e.2 = e.2.max(v);
                    let d = x - e.3;
                    e.3 += d / f64::from(e.0);
                    e.4 += d * (x - e.3);
                }
            }
        }
        if let Some((m, n)) = current {
            flush(m, n, &mut acc);
        }
        out
    }

    /// Resume tracking `node` from its persisted history (a new shard manager after a
    /// fail-over): each signal's baseline and change-point detector start from the baseline
    /// the last minute recorded (or, for older records without one, the history's pooled
    /// mean and deviation), and its level from the last minute, so the node is judged at once
    /// instead of after the warm-up. Slopes and forecasts start empty. Does nothing (false)
    /// when the node is tracked already or the history is shorter than the warm-up.
    pub fn restore(&mut self, node: u64, history: &[MinuteSummary]) -> bool {
        let samples: u64 = history.iter().filter(|m| m.node == node).map(|m| u64::from(m.samples)).sum();
        let Some(last) = history.iter().filter(|m| m.node == node).max_by_key(|m| m.minute_ms) else { return false };
        if self.nodes.contains_key(&node)
            || self.nodes.len() >= self.cfg.max_nodes
            || samples < self.cfg.evidence_warmup_samples
        {
            return false;
        }
        let mut trackers = BTreeMap::new();
        for signal in Signal::ALL {
            // Pooled over minutes: mean of means, and within- plus between-minute variance.
            let parts: Vec<(f64, MinuteStats)> = history
                .iter()
                .filter(|m| m.node == node)
                .filter_map(|m| m.signals.get(&signal).map(|s| (f64::from(m.samples), *s)))
                .filter(|(_, s)| s.t_mean.is_finite() && s.t_sd.is_finite())
                .collect();
            let n: f64 = parts.iter().map(|(w, _)| w).sum();
            if n < 2.0 {
                continue;
            }
            let pooled_mean = parts.iter().map(|(w, s)| w * s.t_mean).sum::<f64>() / n;
            let pooled_var =
                parts.iter().map(|(w, s)| w * (s.t_sd * s.t_sd + (s.t_mean - pooled_mean).powi(2))).sum::<f64>() / n;
            let recorded = last
                .signals
                .get(&signal)
                .and_then(|s| s.baseline)
                .filter(|(m, sd)| m.is_finite() && sd.is_finite() && *sd >= 0.0);
            let (mean, sd) = recorded.unwrap_or((pooled_mean, pooled_var.sqrt()));
            let mut t = Tracker::new(&self.cfg, signal);
            t.baseline = Ewma::seeded(BASELINE_SPAN, mean, sd);
            t.level = Ewma::seeded(LEVEL_SPAN, last.signals.get(&signal).map_or(mean, |s| s.t_mean), 0.0);
            t.cusum = Cusum::seeded(
                CusumConfig { min_sd: signal.min_sd(), ..self.cfg.cusum },
                mean,
                sd,
                u32::try_from(samples).unwrap_or(u32::MAX),
            );
            t.samples = self.cfg.evidence_warmup_samples;
            t.last_raw = last.signals.get(&signal).map_or(f64::NAN, |s| s.mean);
            trackers.insert(signal, t);
        }
        let track = NodeTrack {
            region: last.region.clone(),
            ring: VecDeque::new(),
            trackers,
            last_at_ms: last.minute_ms + 59_999,
        };
        self.nodes.insert(node, track);
        true
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use rand_distr::{Distribution, LogNormal};

    use super::*;

    fn sample(at_ms: u64, values: &[(Signal, f64)]) -> TelemetrySample {
        TelemetrySample { at_ms, values: values.iter().copied().collect() }
    }

    /// Three nodes with log-normal sync latency around 2 ms; from `slow_from`, node 3's
    /// latency grows by `ramp_ms_per_sample`.
    fn run(
        seed: u64,
        samples: u64,
        slow_from: u64,
        ramp_ms_per_sample: f64,
    ) -> (Aggregator, Vec<(u64, Vec<Evidence>)>) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let noise = LogNormal::new(0.0, 0.25).expect("lognormal");
        let mut agg = Aggregator::new(AggregatorConfig::default());
        let mut evidence = Vec::new();
        for t in 0..samples {
            for node in 1..=3u64 {
                let mut sync = 2.0 * noise.sample(&mut rng);
                if node == 3 && t >= slow_from {
                    sync += ramp_ms_per_sample * (t - slow_from) as f64;
                }
                let cpu = 30.0 + 5.0 * noise.sample(&mut rng);
                agg.ingest(
                    node,
                    "r",
                    sample(1_000 * (t + 1), &[(Signal::EngineSyncMeanMs, sync), (Signal::CpuBusyPct, cpu)]),
                );
            }
            for node in 1..=3u64 {
                let e = agg.evidence(node);
                if !e.is_empty() {
                    evidence.push((t, e));
                }
            }
        }
        (agg, evidence)
    }

    #[test]
    fn a_latency_ramp_on_one_node_becomes_evidence_and_features() {
        let (agg, evidence) = run(1, 900, 600, 0.5);
        let first = evidence.first().expect("the ramp becomes evidence");
        // 2 ms + 0.5 ms a sample passes the 20 ms floor 36 samples in; the level lags a few.
        assert!(first.0 >= 636 && first.0 < 660, "evidence at sample {}", first.0);
        assert_eq!(first.1[0].signal, Signal::EngineSyncMeanMs);
        assert!(evidence.iter().all(|(_, e)| e.iter().all(|e| e.signal == Signal::EngineSyncMeanMs)));
        let names = Aggregator::feature_names();
        let f3 = agg.features(3).expect("node 3");
        let f1 = agg.features(1).expect("node 1");
        let at = |name: &str| names.iter().position(|n| n == name).expect("feature");
        assert!(f3[at("engine_sync_mean_ms_peer")] > 3.0, "{}", f3[at("engine_sync_mean_ms_peer")]);
        assert!(f1[at("engine_sync_mean_ms_peer")].abs() < 0.5);
        assert!(f3[at("engine_sync_mean_ms_slope_60")] > 0.0);
        assert_eq!(f3[at("engine_sync_mean_ms_shift_up")], 1.0);
        assert!(f1[at("disk_await_ms_level")].is_nan(), "never reported");
        assert_eq!(names.len(), f1.len());
    }

    /// Past the warm-up (120 samples) but before the baseline's span (300): the baseline must
    /// not learn the degradation.
    #[test]
    fn a_degradation_soon_after_the_warm_up_is_not_learnt_as_normal() {
        let (_, evidence) = run(2, 400, 150, 2.0);
        let first = evidence.first().expect("evidence");
        assert!(first.0 < 170, "evidence at sample {}", first.0);
        assert!(evidence.last().expect("last").0 == 399, "the evidence lasts");
    }

    #[test]
    fn healthy_nodes_give_no_evidence_for_an_hour() {
        for seed in 0..5 {
            let (_, evidence) = run(seed, 3_600, u64::MAX, 0.0);
            assert!(evidence.is_empty(), "seed {seed}: {:?}", evidence.first());
        }
    }

    #[test]
    fn resent_samples_are_dropped_and_the_ring_is_bounded() {
        let mut agg = Aggregator::new(AggregatorConfig { max_samples_per_node: 5, ..AggregatorConfig::default() });
        for t in 1..=10 {
            assert!(agg.ingest(1, "r", sample(t * 1_000, &[(Signal::CpuBusyPct, 1.0)])));
        }
        assert!(!agg.ingest(1, "r", sample(10_000, &[(Signal::CpuBusyPct, 1.0)])));
        assert_eq!(agg.samples(1).count(), 5);
        assert_eq!(agg.last_sample_ms(1), Some(10_000));
    }

    #[test]
    fn minute_summaries_average_whole_minutes() {
        let mut agg = Aggregator::new(AggregatorConfig::default());
        for t in 0..150u64 {
            agg.ingest(1, "r", sample(60_000 + t * 1_000, &[(Signal::CpuBusyPct, if t < 60 { 10.0 } else { 20.0 })]));
        }
        let m = agg.minute_summaries(1, 0, 60_000 + 150_000);
        assert_eq!(m.len(), 2, "the third minute is not over");
        let cpu = |i: usize| m[i].signals[&Signal::CpuBusyPct];
        assert_eq!((m[0].minute_ms, m[0].samples, cpu(0).mean, cpu(0).max), (60_000, 60, 10.0, 10.0));
        assert_eq!((cpu(1).mean, cpu(0).t_sd), (20.0, 0.0));
        assert!(agg.minute_summaries(1, 120_000, 210_000).iter().all(|s| s.minute_ms >= 120_000));
    }

    /// A node already slow when first seen (a new manager without history) is not learnt as
    /// normal unnoticed: far beyond its peers it is evidence during the warm-up.
    #[test]
    fn a_node_slow_from_the_start_is_evidence_against_its_peers() {
        for seed in 0..10u64 {
            let (_, evidence) = run(seed, 100, 0, 0.0);
            let (_, slow) = run(seed, 100, 0, 1.0);
            assert!(evidence.is_empty(), "seed {seed}: healthy start flagged: {evidence:?}");
            let first = slow.iter().find(|(_, e)| e.iter().any(|e| e.detector == "peers")).map(|(t, _)| *t);
            assert!(first.is_some_and(|t| t < 60), "seed {seed}: slow node not flagged in the warm-up: {first:?}");
        }
    }

    /// A new manager restored from the minute history judges a node at once: the slow node
    /// is evidence within the level's span instead of after the 120-sample warm-up, and a
    /// healthy one raises nothing.
    #[test]
    fn a_restored_aggregator_skips_the_warm_up() {
        for seed in 0..10u64 {
            let (old, _) = run(seed, 600, u64::MAX, 0.0);
            let history: Vec<MinuteSummary> = (1..=3).flat_map(|n| old.minute_summaries(n, 0, 601_000)).collect();
            let mut agg = Aggregator::new(AggregatorConfig::default());
            for n in 1..=3 {
                assert!(agg.restore(n, &history), "seed {seed}: node {n} restored");
                assert!(!agg.restore(n, &history), "seed {seed}: restored once");
            }
            let mut rng = SmallRng::seed_from_u64(seed + 100);
            let noise = LogNormal::new(0.0, 0.25).expect("lognormal");
            let mut first = None;
            for t in 0..60u64 {
                for node in 1..=3u64 {
                    let sync = 2.0 * noise.sample(&mut rng) + if node == 3 { 20.0 } else { 0.0 };
                    let at = 700_000 + t * 1_000;
                    assert!(agg.ingest(node, "r", sample(at, &[(Signal::EngineSyncMeanMs, sync)])));
                    let ev = agg.evidence(node);
                    assert!(node == 3 || ev.is_empty(), "seed {seed}: healthy node {node} flagged at {t}: {ev:?}");
                    if node == 3 && first.is_none() && !ev.is_empty() {
                        first = Some(t);
                    }
                }
            }
            let first = first.unwrap_or_else(|| panic!("seed {seed}: the slow node was never flagged"));
            assert!(first < 20, "seed {seed}: flagged only after {first} samples");
        }
    }
}
