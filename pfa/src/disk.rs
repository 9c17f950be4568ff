//! The drive failure model on Backblaze SMART data: features, labels, the split by drive,
//! training, and the evaluation `presage-ctl pfa train` / `pfa eval` run, beside the
//! Backblaze rule (any of SMART 5/187/188/197/198 raw > 0) as the baseline.
//!
//! - **Unit** = a drive (its serial). Metrics are per drive: a drive's score is the highest
//!   probability over its rows in the file, and it is flagged if that reaches the threshold.
//! - **Label** of a row: the drive fails within `horizon_days` of the row's day.
//! - **Split by drive**, never by row: a drive's fingerprint puts it in the test, validation
//!   or training part, so all of a drive's days land together. Features of a row use only that
//!   drive's earlier rows (deltas since its first day in the file), never later ones.
//! - The model records every drive it trained or validated on; evaluation skips them.
//!
//! The drive model: features (SMART raw values, and per-drive deltas on multi-day data, looking
//! back only), labels (fails within `horizon_days`), split by drive fingerprint (test 30%,
//! validation 25% of the rest), evaluation per drive beside the Backblaze rule;
//! `DEFAULT_DISK_MODEL_JSON` = `models/disk-smart.json`, trained on both files.

use serde::{Deserialize, Serialize};

use crate::model::{fingerprint, FailureModel, ModelKind, Table, TrainParams, TrainSet};
use crate::scores::{best_f1_threshold, Metrics, Outcome};
use crate::smart::SmartDataset;
use crate::PfaError;

/// The drive model shipped with Presage: trained by `presage-ctl pfa train` on both Backblaze
/// files in `pfa/data/backblaze` (a held-out 30% of the drives never seen; `pfa eval` scores
/// it on them). Nodes use it for the SMART counters operators push.
pub const DEFAULT_DISK_MODEL_JSON: &str = include_str!("../models/disk-smart.json");

/// The shipped drive model, parsed.
pub fn default_model() -> Result<FailureModel, PfaError> {
    FailureModel::from_json(DEFAULT_DISK_MODEL_JSON)
}

/// The SMART attributes of the Backblaze rule.
pub const RULE_ATTRIBUTES: [u16; 5] = [5, 187, 188, 197, 198];
/// Seconds per day.
const DAY_SECS: u64 = 86_400;
/// Longest horizon a drive model may have.
pub const MAX_HORIZON_DAYS: u32 = 365;

/// How `train` splits and labels the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskTrainConfig {
    /// A row is positive when its drive fails within this many days (0 = the same day).
    pub horizon_days: u32,
    /// Share of drives held out for evaluation (never trained or validated on).
    pub test_fraction: f64,
    /// Share of the remaining drives used for early stopping, calibration and the threshold.
    pub validation_fraction: f64,
    /// Boosting settings.
    pub params: TrainParams,
}

impl Default for DiskTrainConfig {
    fn default() -> Self {
        DiskTrainConfig {
            horizon_days: 10,
            test_fraction: 0.3,
            validation_fraction: 0.25,
            params: TrainParams::default(),
        }
    }
}

/// Which part of the split a drive falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Held out: evaluation only.
    Test,
    /// Early stopping, calibration, threshold.
    Validation,
    /// Training.
    Train,
}

/// The part of drive `serial`, from its fingerprint (stable across runs and machines).
pub fn part_of(serial: &str, cfg: &DiskTrainConfig) -> Part {
    let h = fingerprint(serial);
    // Two independent draws in [0, 1) from the two halves of the fingerprint.
    let u = (h >> 32) as f64 / 4_294_967_296.0;
    let v = (h & 0xffff_ffff) as f64 / 4_294_967_296.0;
    if u < cfg.test_fraction {
        Part::Test
    } else if v < cfg.validation_fraction {
        Part::Validation
    } else {
        Part::Train
    }
}

/// The feature names a data set yields: every SMART column, and for multi-day data each
/// column's change since the drive's first day in the file (`<column>_delta`).
pub fn feature_names(ds: &SmartDataset) -> Vec<String> {
    let mut names = ds.columns.clone();
    if ds.is_multi_day() {
        names.extend(ds.columns.iter().map(|c| format!("{c}_delta")));
    }
    names
}

/// One feature row per data row, in the order of `features` (a name the data set lacks is
/// missing). Deltas look back only.
fn feature_rows(ds: &SmartDataset, features: &[String]) -> Vec<Vec<f64>> {
    enum Src {
        Raw(usize),
        Delta(usize),
        Missing,
    }
    let col = |n: &str| ds.columns.iter().position(|c| c == n);
    let srcs: Vec<Src> = features
        .iter()
        .map(|f| match f.strip_suffix("_delta") {
            Some(base) => col(base).map_or(Src::Missing, Src::Delta),
            None => col(f).map_or(Src::Missing, Src::Raw),
        })
        .collect();
    let mut first: Vec<f64> = Vec::new();
    let mut out = Vec::with_capacity(ds.rows.len());
    for (i, row) in ds.rows.iter().enumerate() {
        if i == 0 || ds.rows[i - 1].drive != row.drive {
            first = row.values.clone();
        }
        for (f, v) in first.iter_mut().zip(&row.values) {
            if f.is_nan() {
                *f = *v;
            }
        }
        out.push(
            srcs.iter()
                .map(|s| match s {
                    Src::Raw(c) => row.values[*c],
                    Src::Delta(c) => row.values[*c] - first[*c],
                    Src::Missing => f64::NAN,
                })
                .collect(),
        );
    }
    out
}

fn label(ds: &SmartDataset, row: usize, horizon_days: u32) -> bool {
    let r = &ds.rows[row];
    ds.drives[r.drive].failure_day.is_some_and(|f| f >= r.day && f - r.day < horizon_days.max(1) as i32)
}

/// Train a drive model on `ds` (drives of the training and validation parts only).
pub fn train(ds: &SmartDataset, sources: Vec<String>, cfg: &DiskTrainConfig) -> Result<FailureModel, PfaError> {
    if cfg.horizon_days > MAX_HORIZON_DAYS {
        return Err(PfaError::Train(format!("horizon {} days is over {MAX_HORIZON_DAYS}", cfg.horizon_days)));
    }
    for (name, f) in [("test", cfg.test_fraction), ("validation", cfg.validation_fraction)] {
        if !(0.0..1.0).contains(&f) {
            return Err(PfaError::Train(format!("{name} fraction {f} outside [0, 1)")));
        }
    }
    let features = feature_names(ds);
    let rows = feature_rows(ds, &features);
    let parts: Vec<Part> = ds.drives.iter().map(|d| part_of(&d.serial, cfg)).collect();
    let (mut t, mut ty, mut v, mut vy) =
        (Table::new(features.len()), Vec::new(), Table::new(features.len()), Vec::new());
    let mut valid_rows = Vec::new();
    for (i, values) in rows.into_iter().enumerate() {
        let y = label(ds, i, cfg.horizon_days);
        match parts[ds.rows[i].drive] {
            Part::Train => {
                t.push(values);
                ty.push(y);
            }
            Part::Validation => {
                v.push(values);
                vy.push(y);
                valid_rows.push(i);
            }
            Part::Test => {}
        }
    }
    let mut model = FailureModel::train(
        ModelKind::DiskSmart,
        u64::from(cfg.horizon_days.max(1)) * DAY_SECS,
        features,
        TrainSet { table: &t, labels: &ty },
        TrainSet { table: &v, labels: &vy },
        cfg.params.clone(),
    )?;
    // Threshold and validation report, per drive.
    let p = model.predict(&v);
    let valid_outcomes = per_drive(ds, valid_rows.iter().copied().zip(p.iter().copied()), f64::INFINITY);
    model.threshold = best_f1_threshold(&valid_outcomes);
    let scored = per_drive(ds, valid_rows.iter().copied().zip(p), model.threshold);
    model.validation = Some(Metrics::compute(&scored, model.threshold, ds.is_multi_day()));
    let count = |part: Part, failed: bool| {
        ds.drives.iter().zip(&parts).filter(|(d, p)| **p == part && (!failed || d.failure_day.is_some())).count()
    };
    let summary = &mut model.trained_on;
    summary.sources = sources;
    summary.train_units = count(Part::Train, false);
    summary.train_failed_units = count(Part::Train, true);
    summary.validation_units = count(Part::Validation, false);
    summary.validation_failed_units = count(Part::Validation, true);
    let mut seen: Vec<u64> =
        ds.drives.iter().zip(&parts).filter(|(_, p)| **p != Part::Test).map(|(d, _)| fingerprint(&d.serial)).collect();
    seen.sort_unstable();
    seen.dedup();
    model.seen_units = seen;
    Ok(model)
}

/// Per-drive outcomes from (row, score) pairs: the drive's highest score, and the days from
/// its first row scoring at least `threshold` to its failure.
fn per_drive(ds: &SmartDataset, scored: impl Iterator<Item = (usize, f64)>, threshold: f64) -> Vec<Outcome> {
    let mut out: Vec<(usize, Outcome)> = Vec::new();
    for (row, score) in scored {
        let r = &ds.rows[row];
        let drive = &ds.drives[r.drive];
        if out.last().is_none_or(|(d, _)| *d != r.drive) {
            out.push((
                r.drive,
                Outcome { score: f64::NEG_INFINITY, failed: drive.failure_day.is_some(), lead_days: None },
            ));
        }
        let Some((_, o)) = out.last_mut() else { continue };
        o.score = o.score.max(score);
        if score >= threshold && o.lead_days.is_none() {
            o.lead_days = drive.failure_day.map(|f| f64::from(f - r.day));
        }
    }
    out.into_iter().map(|(_, o)| o).collect()
}

/// `pfa eval`'s result: the model and the Backblaze rule on the same drives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskEvaluation {
    /// The model's metrics.
    #[serde(flatten)]
    pub model: Metrics,
    /// The Backblaze rule's metrics on the same drives.
    pub baseline_rule: Metrics,
    /// Drives in the file that the model trained or validated on, left out.
    #[serde(skip)]
    pub skipped_seen_drives: usize,
    /// The model's threshold.
    #[serde(skip)]
    pub threshold: f64,
    /// The model's features the file lacks (missing values for every drive).
    #[serde(skip)]
    pub missing_features: Vec<String>,
}

/// Whether a row trips the Backblaze rule (a missing attribute does not).
pub fn rule_flags(ds: &SmartDataset, row: usize) -> bool {
    RULE_ATTRIBUTES.iter().any(|a| ds.value(&ds.rows[row], &format!("smart_{a}_raw")) > 0.0)
}

/// Evaluate `model` on `ds`, skipping the drives it has seen, beside the Backblaze rule.
pub fn evaluate(model: &FailureModel, ds: &SmartDataset) -> Result<DiskEvaluation, PfaError> {
    if model.kind != ModelKind::DiskSmart {
        return Err(PfaError::Model(format!("a {:?} model cannot score drives", model.kind)));
    }
    let keep: Vec<usize> =
        (0..ds.rows.len()).filter(|&i| !model.has_seen(fingerprint(&ds.drives[ds.rows[i].drive].serial))).collect();
    let skipped = ds.drives.iter().filter(|d| model.has_seen(fingerprint(&d.serial))).count();
    if keep.is_empty() {
        return Err(PfaError::Data {
            file: "evaluation".into(),
            line: 0,
            reason: format!("the model trained or validated on every one of the file's {} drives", ds.drives.len()),
        });
    }
    let rows = feature_rows(ds, &model.features);
    let mut table = Table::new(model.features.len());
    for &i in &keep {
        table.push(rows[i].clone());
    }
    let p = model.predict(&table);
    let outcomes = per_drive(ds, keep.iter().copied().zip(p), model.threshold);
    let rule = per_drive(ds, keep.iter().map(|&i| (i, f64::from(u8::from(rule_flags(ds, i))))), 1.0);
    let multi = ds.is_multi_day();
    let missing_features = model
        .features
        .iter()
        .filter(|f| !ds.columns.iter().any(|c| c == f.strip_suffix("_delta").unwrap_or(f)))
        .cloned()
        .collect();
    Ok(DiskEvaluation {
        model: Metrics::compute(&outcomes, model.threshold, multi),
        baseline_rule: Metrics::compute(&rule, 1.0, multi),
        skipped_seen_drives: skipped,
        threshold: model.threshold,
        missing_features,
    })
}
