//! Retraining the node model from the cluster's own labelled history.
//!
//! The shard manager keeps *episodes*: when it declares a node down (silent for longer than
//! `node-down-after-ms`) it snapshots every node's telemetry ring ([`capture`]) with the
//! failed node labelled ([`OBSERVED_FAILURE`], failing right after its last sample); from time
//! to time it snapshots a healthy cluster too, for negatives. On a schedule it retrains
//! ([`retrain`]):
//!
//! - **train**: the shipped recording's first part (by time) and every episode but the newest;
//! - **validate** (early stopping, calibration, threshold): the shipped recording's last part;
//! - **test**: the newest episodes, holding at least `test_failures` failures, which neither
//!   model saw. The candidate replaces the current model only if its PR-AUC there is at least
//!   the current model's, so a retraining never makes the served model worse on the newest
//!   data the cluster has.
//!
//! Each episode is replayed through its own fresh [`Aggregator`],
//! exactly as the recording is. Known limit: the adoption test rests on the newest
//! `test_failures` failures only (one by default), so with few failures it is a coarse guard.
//!
//! `capture` (every node's ring as a recording, one node labelled `observed-failure`), `retrain`
//! (train on the shipped recording's first 75% and the older episodes, validate on the recording's
//! rest, test both models on the newest episodes; the candidate is adopted only if its PR-AUC there
//! is no worse).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregator;
use crate::model::{FailureModel, Table, TrainParams, TrainSet};
use crate::node_model::{labelled, train_tables, Recorded, Recording};
use crate::scores::{Metrics, Outcome};
use crate::PfaError;

pub use crate::node_model::OBSERVED_FAILURE;

/// Episodes one retraining reads at most.
pub const MAX_EPISODES: usize = 1_024;

/// A snapshot of the rings of `nodes` in `agg` (all when empty), as a recording; each
/// `(node, at_ms)` of `failures` labels that node's samples up to `at_ms` as failing then, with
/// [`OBSERVED_FAILURE`].
pub fn capture(agg: &Aggregator, nodes: &BTreeSet<u64>, failures: &[(u64, u64)]) -> Recording {
    let mut rows = Vec::new();
    for (node, region) in agg.nodes() {
        if !nodes.is_empty() && !nodes.contains(&node) {
            continue;
        }
        let mut mine: Vec<u64> = failures.iter().filter(|(n, _)| *n == node).map(|(_, at)| *at).collect();
        mine.sort_unstable();
        for sample in agg.samples(node) {
            let next = mine.iter().copied().find(|f| *f >= sample.at_ms);
            rows.push(Recorded {
                node,
                region: region.clone(),
                sample: sample.clone(),
                fault: if next.is_some() { OBSERVED_FAILURE.to_string() } else { String::new() },
                failure_at_ms: next,
            });
        }
    }
    rows.sort_by_key(|r| (r.sample.at_ms, r.node));
    Recording { rows }
}

/// How [`retrain`] splits and when it gives up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrainConfig {
    /// Positive when the node fails within this many seconds.
    pub horizon_secs: u64,
    /// Share of the shipped recording's time that trains (the rest validates).
    pub base_train_fraction: f64,
    /// Failures the cluster must have observed before a retraining is tried.
    pub min_failures: usize,
    /// Failures the newest episodes set aside for the test must hold.
    pub test_failures: usize,
    /// Boosting settings.
    pub params: TrainParams,
}

impl Default for RetrainConfig {
    fn default() -> Self {
        RetrainConfig {
            horizon_secs: 120,
            base_train_fraction: 0.75,
            min_failures: 3,
            test_failures: 1,
            params: TrainParams::default(),
        }
    }
}

/// What a retraining did, for the model status and the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrainReport {
    /// When it ran, ms since the Unix epoch.
    pub at_ms: u64,
    /// Episodes read (with and without a failure).
    pub episodes: usize,
    /// Observed failures among them.
    pub failures: usize,
    /// Episodes of the test (the newest).
    pub test_episodes: usize,
    /// The current model's PR-AUC on the test samples (None without a current model).
    pub current_pr_auc: Option<f64>,
    /// The candidate's.
    pub candidate_pr_auc: f64,
    /// Whether the candidate replaced the current model.
    pub adopted: bool,
    /// The served model's version afterwards.
    pub version: u64,
}

fn pr_auc(model: &FailureModel, names: &[String], table: &Table, labels: &[bool]) -> f64 {
    let map = model.feature_map(names);
    let mut t = Table::new(model.features.len());
    for row in table.rows_iter() {
        t.push(map.iter().map(|i| i.map_or(f64::NAN, |i| row[i])).collect());
    }
    let outcomes: Vec<Outcome> = model
        .predict(&t)
        .into_iter()
        .zip(labels)
        .map(|(score, &failed)| Outcome { score, failed, lead_days: None })
        .collect();
    Metrics::compute(&outcomes, model.threshold, false).pr_auc
}

/// Retrain on `base` (the shipped recording) and `episodes` (the cluster's, any order);
/// returns the report and, when adopted, the new model (version one past `current`'s).
pub fn retrain(
    base: &Recording,
    episodes: &[Recording],
    current: Option<&FailureModel>,
    cfg: &RetrainConfig,
    at_ms: u64,
) -> Result<(RetrainReport, Option<FailureModel>), PfaError> {
    if episodes.len() > MAX_EPISODES {
        return Err(PfaError::Train(format!("{} episodes, at most {MAX_EPISODES}", episodes.len())));
    }
    let failed = |r: &Recording| r.rows.iter().any(|x| x.failure_at_ms.is_some());
    let failures = episodes.iter().filter(|e| failed(e)).count();
    if failures < cfg.min_failures.max(cfg.test_failures + 1) {
        return Err(PfaError::Train(format!(
            "{failures} observed failures; retraining needs {}",
            cfg.min_failures.max(cfg.test_failures + 1)
        )));
    }
    // The newest episodes, back to the one that completes the test's failures, are the test.
    let mut order: Vec<&Recording> = episodes.iter().filter(|e| !e.rows.is_empty()).collect();
    order.sort_by_key(|e| e.span_ms().map_or(0, |(a, _)| a));
    let (mut test_from, mut seen) = (order.len(), 0);
    while seen < cfg.test_failures && test_from > 0 {
        test_from -= 1;
        seen += usize::from(failed(order[test_from]));
    }
    let (older, newest) = order.split_at(test_from);

    let horizon_ms = cfg.horizon_secs * 1000;
    let names = Aggregator::feature_names();
    let (start, end) = base.span_ms().ok_or_else(|| PfaError::Train("the base recording is empty".into()))?;
    let cut = start + ((end - start) as f64 * cfg.base_train_fraction) as u64;
    let (early, late): (Vec<Recorded>, Vec<Recorded>) = base.rows.iter().cloned().partition(|r| r.sample.at_ms <= cut);
    let (mut t, mut ty) = labelled(&Recording { rows: early }, horizon_ms);
    let (v, vy) = labelled(&Recording { rows: late }, horizon_ms);
    for e in older {
        let (et, ey) = labelled(e, horizon_ms);
        t.extend(&et);
        ty.extend(ey);
    }
    let (mut test, mut test_y) = (Table::new(names.len()), Vec::new());
    for e in newest {
        let (et, ey) = labelled(e, horizon_ms);
        test.extend(&et);
        test_y.extend(ey);
    }
    let mut candidate = train_tables(
        cfg.horizon_secs,
        TrainSet { table: &t, labels: &ty },
        TrainSet { table: &v, labels: &vy },
        cfg.params.clone(),
    )?;
    candidate.version = current.map_or(1, |m| m.version + 1);
    let s = &mut candidate.trained_on;
    s.sources = vec!["shipped recording".into(), format!("{} cluster episodes", older.len())];
    s.train_units = older.iter().flat_map(|e| e.rows.iter().map(|r| r.node)).collect::<BTreeSet<_>>().len();
    s.train_failed_units = ty.iter().filter(|&&y| y).count();
    s.validation_units = vy.len();
    s.validation_failed_units = vy.iter().filter(|&&y| y).count();
    // The episodes' span is not recorded as seen: they are far apart in time and the test
    // episodes must stay scorable.
    candidate.seen_time_ms = Some((start, end));

    let candidate_pr_auc = pr_auc(&candidate, &names, &test, &test_y);
    let current_pr_auc = current.map(|m| pr_auc(m, &names, &test, &test_y));
    let adopted = current_pr_auc.is_none_or(|c| candidate_pr_auc >= c);
    let report = RetrainReport {
        at_ms,
        episodes: order.len(),
        failures,
        test_episodes: newest.len(),
        current_pr_auc,
        candidate_pr_auc,
        adopted,
        version: if adopted { candidate.version } else { current.map_or(0, |m| m.version) },
    };
    Ok((report, adopted.then_some(candidate)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::AggregatorConfig;
    use crate::node_model::tests::synthetic;

    /// The episodes a manager would capture from a synthetic cluster (seed `seed`, shifted
    /// far in time): node 2's latency ramps over the last 120 of 600 s and it is declared
    /// down; or, healthy, the first 300 s.
    fn episode(seed: u64, failing: bool) -> Recording {
        let rec = synthetic(seed, 600, 300, 120);
        let offset = seed * 10_000_000;
        let mut agg = Aggregator::new(AggregatorConfig::default());
        for r in rec.rows.iter().filter(|r| failing || r.sample.at_ms < 300_000) {
            let mut sample = r.sample.clone();
            sample.at_ms += offset;
            agg.ingest(r.node, &r.region, sample);
        }
        let failed: Vec<(u64, u64)> = failing.then_some((2, offset + 600_000)).into_iter().collect();
        let ep = capture(&agg, &BTreeSet::new(), &failed);
        assert_eq!(ep.rows.iter().filter(|r| r.failure_at_ms.is_some()).count(), if failing { 600 } else { 0 });
        ep
    }

    #[test]
    fn retraining_needs_enough_observed_failures() {
        let base = synthetic(1, 1_800, 300, 120);
        let few = [episode(2, true), episode(3, false)];
        let err = retrain(&base, &few, None, &RetrainConfig::default(), 0).expect_err("too few");
        assert!(err.to_string().contains("1 observed failures; retraining needs 3"), "{err}");
    }

    /// The cluster's own failures train a model that sees the newest (held-out) failure
    /// coming; a retraining that is no worse than the served model replaces it, with the
    /// next version.
    #[test]
    fn retraining_on_observed_failures_tests_on_the_newest_and_bumps_the_version() {
        let base = synthetic(1, 1_800, 300, 120);
        let episodes: Vec<Recording> = (2..8).map(|seed| episode(seed, seed % 3 != 0)).collect();
        let cfg = RetrainConfig::default();
        let (first, model) = retrain(&base, &episodes, None, &cfg, 1).expect("retrains");
        assert_eq!((first.episodes, first.failures, first.test_episodes), (6, 4, 1), "{first:?}");
        assert!(first.adopted && first.current_pr_auc.is_none() && first.version == 1, "{first:?}");
        assert!(first.candidate_pr_auc > 0.8, "the newest ramp is seen coming: {first:?}");
        let model = model.expect("adopted");
        let (second, next) = retrain(&base, &episodes, Some(&model), &cfg, 2).expect("retrains");
        assert_eq!(second.current_pr_auc, Some(first.candidate_pr_auc), "the same test scores the current model");
        assert_eq!(second.adopted, second.candidate_pr_auc >= first.candidate_pr_auc, "{second:?}");
        assert_eq!(next.map(|m| m.version), second.adopted.then_some(2));
    }
}
