//! The failure model: gradient-boosted trees (forust-ml) over a named feature list, with a
//! Platt calibration fitted on held-out units so that its output reads as P(failure within
//! the horizon), a decision threshold, and the evaluation report of the data it was checked
//! on. Serialised as JSON with a format version; features are matched by name, so a model
//! applies to data whose columns differ (a feature the data lacks is a missing value).
//!
//! `FailureModel`: forust-ml gradient-boosted trees on a named feature list, Platt calibration
//! fitted on validation units, threshold, evaluation report, the units (or time span) it saw; JSON
//! with a format version; `fingerprint` (FNV-1a).

use forust_ml::gradientbooster::GradientBooster;
use forust_ml::objective::ObjectiveType;
use forust_ml::Matrix;
use serde::{Deserialize, Serialize};

use crate::scores::Metrics;
use crate::PfaError;

/// The `format` field every model file carries.
pub const MODEL_FORMAT: &str = "presage-pfa-model";
/// The layout version of model files this build reads and writes.
pub const MODEL_FORMAT_VERSION: u32 = 1;
/// Most features a model may use.
pub const MAX_FEATURES: usize = 1024;
/// Most trees a model may hold.
pub const MAX_TREES: usize = 2_000;

/// What a model predicts the failure of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// A drive, from its SMART attributes (Backblaze data).
    DiskSmart,
    /// A node, from the telemetry its agent records.
    NodeTelemetry,
}

/// Gradient boosting settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    /// Most boosting rounds.
    pub max_trees: usize,
    /// Shrinkage per round.
    pub learning_rate: f32,
    /// Depth of each tree.
    pub max_depth: usize,
    /// Least hessian weight in a leaf.
    pub min_leaf_weight: f32,
    /// L2 regularisation of leaf weights.
    pub l2: f32,
    /// Rounds without improvement on the validation units before training stops.
    pub early_stopping_rounds: usize,
    /// Row subsampling per tree, in (0, 1].
    pub subsample: f32,
    /// Seed of every random choice training makes.
    pub seed: u64,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            max_trees: 300,
            learning_rate: 0.05,
            max_depth: 4,
            min_leaf_weight: 1.0,
            l2: 1.0,
            early_stopping_rounds: 30,
            subsample: 0.8,
            seed: 7,
        }
    }
}

/// Rows of features (NaN is missing), handed to the booster column-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// Number of columns (features).
    pub cols: usize,
    /// The rows.
    staged: Vec<Vec<f64>>,
}

impl Table {
    /// An empty table of `cols` columns.
    pub fn new(cols: usize) -> Table {
        Table { cols, staged: Vec::new() }
    }

    /// Append one row (`values.len() == cols`).
    pub fn push(&mut self, values: Vec<f64>) {
        assert_eq!(values.len(), self.cols, "row width");
        self.staged.push(values);
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.staged.len()
    }

    /// The rows, in order.
    pub fn rows_iter(&self) -> impl Iterator<Item = &[f64]> {
        self.staged.iter().map(Vec::as_slice)
    }

    /// Append `other`'s rows (same width).
    pub fn extend(&mut self, other: &Table) {
        assert_eq!(other.cols, self.cols, "table width");
        self.staged.extend(other.staged.iter().cloned());
    }

    fn column_major(&self) -> Vec<f64> {
        let mut data = Vec::with_capacity(self.rows() * self.cols);
        for c in 0..self.cols {
            data.extend(self.staged.iter().map(|r| r[c]));
        }
        data
    }
}

/// Logistic calibration of the booster's raw score: `p = σ(a·z + b)` (Platt scaling).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Slope.
    pub a: f64,
    /// Intercept.
    pub b: f64,
}

impl Calibration {
    /// No change: `p = σ(z)`.
    pub const IDENTITY: Calibration = Calibration { a: 1.0, b: 0.0 };

    /// Fit `a, b` by Newton's method on raw scores `z` and 0/1 labels, with Platt's
    /// smoothed targets so that a separable validation set does not push `a` to infinity.
    pub fn fit(z: &[f64], y: &[bool]) -> Calibration {
        let pos = y.iter().filter(|&&l| l).count() as f64;
        let neg = y.len() as f64 - pos;
        if pos == 0.0 || neg == 0.0 {
            return Calibration::IDENTITY;
        }
        let (hi, lo) = ((pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0));
        let t: Vec<f64> = y.iter().map(|&l| if l { hi } else { lo }).collect();
        let (mut a, mut b) = (1.0, 0.0);
        for _ in 0..100 {
            let (mut g_a, mut g_b, mut h_aa, mut h_ab, mut h_bb) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
            for (&zi, &ti) in z.iter().zip(&t) {
                let p = sigmoid(a * zi + b);
                let d = p - ti;
                let w = p * (1.0 - p);
                g_a += d * zi;
                g_b += d;
                h_aa += w * zi * zi;
                h_ab += w * zi;
                h_bb += w;
            }
            let det = h_aa * h_bb - h_ab * h_ab;
            if det.abs() < 1e-12 {
                break;
            }
            let da = (h_bb * g_a - h_ab * g_b) / det;
            let db = (h_aa * g_b - h_ab * g_a) / det;
            a -= da;
            b -= db;
            if da.abs() < 1e-9 && db.abs() < 1e-9 {
                break;
            }
        }
        if a.is_finite() && b.is_finite() && a > 0.0 {
            Calibration { a, b }
        } else {
            Calibration::IDENTITY
        }
    }

    /// The calibrated probability of raw score `z`.
    pub fn apply(&self, z: f64) -> f64 {
        sigmoid(self.a * z + self.b)
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// What a model was trained on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// The data's sources (file names), in order.
    pub sources: Vec<String>,
    /// Training rows.
    pub train_rows: usize,
    /// Training units (drives, nodes).
    pub train_units: usize,
    /// Training units that failed.
    pub train_failed_units: usize,
    /// Validation units (early stopping, calibration, threshold).
    pub validation_units: usize,
    /// Validation units that failed.
    pub validation_failed_units: usize,
    /// Boosting rounds kept.
    pub trees: usize,
}

/// A trained failure model.
#[derive(Serialize, Deserialize)]
pub struct FailureModel {
    /// Always [`MODEL_FORMAT`].
    pub format: String,
    /// The file layout version, [`MODEL_FORMAT_VERSION`].
    pub format_version: u32,
    /// What it predicts.
    pub kind: ModelKind,
    /// The model's version: 1 for an offline model, one more on each retraining.
    pub version: u64,
    /// The prediction horizon, seconds: P(failure within this long).
    pub horizon_secs: u64,
    /// Feature names, in the order the booster reads them.
    pub features: Vec<String>,
    /// Calibrated probability at or above which a unit is flagged.
    pub threshold: f64,
    /// The calibration of the booster's raw score.
    pub calibration: Calibration,
    /// The settings it was trained with.
    pub params: TrainParams,
    /// What it was trained on.
    pub trained_on: TrainingSummary,
    /// Fingerprints of every unit training or validation saw (sorted): evaluation skips
    /// them, so a model is never scored on the units it learnt from.
    pub seen_units: Vec<u64>,
    /// For a model trained on a recording: the time span (ms) training and validation saw;
    /// evaluation skips it.
    #[serde(default)]
    pub seen_time_ms: Option<(u64, u64)>,
    /// Metrics on the validation units.
    pub validation: Option<Metrics>,
    booster: GradientBooster,
}

impl std::fmt::Debug for FailureModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureModel")
            .field("kind", &self.kind)
            .field("version", &self.version)
            .field("features", &self.features.len())
            .field("trees", &self.trained_on.trees)
            .finish()
    }
}

/// Training input: features, labels and the units rows belong to.
pub struct TrainSet<'a> {
    /// Feature rows.
    pub table: &'a Table,
    /// One label per row.
    pub labels: &'a [bool],
}

impl FailureModel {
    /// Train on `train`, stop early and calibrate on `valid`. The threshold, validation
    /// metrics, summary and seen units are filled in by the caller, who knows what a unit is.
    pub fn train(
        kind: ModelKind,
        horizon_secs: u64,
        features: Vec<String>,
        train: TrainSet<'_>,
        valid: TrainSet<'_>,
        params: TrainParams,
    ) -> Result<FailureModel, PfaError> {
        if features.is_empty() || features.len() > MAX_FEATURES {
            return Err(PfaError::Train(format!("{} features; a model needs 1 to {MAX_FEATURES}", features.len())));
        }
        if params.max_trees == 0 || params.max_trees > MAX_TREES {
            return Err(PfaError::Train(format!("max_trees {} outside 1..={MAX_TREES}", params.max_trees)));
        }
        let positives = train.labels.iter().filter(|&&l| l).count();
        if positives == 0 || positives == train.labels.len() {
            return Err(PfaError::Train(format!(
                "training needs both failed and healthy examples; it has {positives} failed of {}",
                train.labels.len()
            )));
        }
        assert_eq!(train.table.cols, features.len());
        assert_eq!(train.table.rows(), train.labels.len());
        let y: Vec<f64> = train.labels.iter().map(|&l| f64::from(u8::from(l))).collect();
        let data = train.table.column_major();
        let matrix = Matrix::new(&data, train.table.rows(), train.table.cols);
        let vy: Vec<f64> = valid.labels.iter().map(|&l| f64::from(u8::from(l))).collect();
        let vdata = valid.table.column_major();
        let weights = vec![1.0; y.len()];
        let vweights = vec![1.0; vy.len()];
        let has_valid = valid.table.rows() > 0 && vy.iter().any(|&v| v > 0.5);
        let mut booster = GradientBooster::default()
            .set_objective_type(ObjectiveType::LogLoss)
            .set_iterations(params.max_trees)
            .set_learning_rate(params.learning_rate)
            .set_max_depth(params.max_depth)
            .set_min_leaf_weight(params.min_leaf_weight)
            .set_l2(params.l2)
            .set_subsample(params.subsample)
            .set_sample_method(if params.subsample < 1.0 {
                forust_ml::sampler::SampleMethod::Random
            } else {
                forust_ml::sampler::SampleMethod::None
            })
            .set_seed(params.seed)
            .set_parallel(false);
        if has_valid {
            booster = booster
                .set_evaluation_metric(Some(forust_ml::metric::Metric::LogLoss))
                .set_early_stopping_rounds(Some(params.early_stopping_rounds));
        }
        let eval = has_valid
            .then(|| vec![(Matrix::new(&vdata, valid.table.rows(), valid.table.cols), &vy[..], &vweights[..])]);
        booster.fit(&matrix, &y, &weights, eval).map_err(|e| PfaError::Train(e.to_string()))?;
        // Keep only the trees prediction uses (early stopping's best round).
        let trees = booster.prediction_iteration.unwrap_or(booster.trees.len()).min(booster.trees.len());
        booster.trees.truncate(trees);
        booster.evaluation_history = None;
        let mut model = FailureModel {
            format: MODEL_FORMAT.to_string(),
            format_version: MODEL_FORMAT_VERSION,
            kind,
            version: 1,
            horizon_secs,
            features,
            threshold: 0.5,
            calibration: Calibration::IDENTITY,
            params,
            trained_on: TrainingSummary { train_rows: y.len(), trees, ..TrainingSummary::default() },
            seen_units: Vec::new(),
            seen_time_ms: None,
            validation: None,
            booster,
        };
        if has_valid {
            let z = model.raw_scores(valid.table);
            model.calibration = Calibration::fit(&z, valid.labels);
        }
        Ok(model)
    }

    fn raw_scores(&self, table: &Table) -> Vec<f64> {
        if table.rows() == 0 {
            return Vec::new();
        }
        let data = table.column_major();
        self.booster.predict(&Matrix::new(&data, table.rows(), table.cols), false)
    }

    /// Calibrated P(failure within the horizon) of each row of `table`, whose columns are
    /// this model's [`features`](Self::features).
    pub fn predict(&self, table: &Table) -> Vec<f64> {
        assert_eq!(table.cols, self.features.len(), "table columns are the model's features");
        self.raw_scores(table).into_iter().map(|z| self.calibration.apply(z)).collect()
    }

    /// For each of the model's features, the index of the same-named column in `columns`.
    pub fn feature_map(&self, columns: &[String]) -> Vec<Option<usize>> {
        self.features.iter().map(|f| columns.iter().position(|c| c == f)).collect()
    }

    /// Whether training or validation saw the unit with this fingerprint.
    pub fn has_seen(&self, unit: u64) -> bool {
        self.seen_units.binary_search(&unit).is_ok()
    }

    /// Serialise to JSON.
    pub fn to_json(&self) -> Result<String, PfaError> {
        serde_json::to_string(self).map_err(|e| PfaError::Model(e.to_string()))
    }

    /// Parse a model file, checking its format and version.
    pub fn from_json(text: &str) -> Result<FailureModel, PfaError> {
        #[derive(Deserialize)]
        struct Header {
            format: String,
            format_version: u32,
        }
        let header: Header =
            serde_json::from_str(text).map_err(|e| PfaError::Model(format!("not a Presage model file: {e}")))?;
        if header.format != MODEL_FORMAT {
            return Err(PfaError::Model(format!("format is `{}`, expected `{MODEL_FORMAT}`", header.format)));
        }
        if header.format_version != MODEL_FORMAT_VERSION {
            return Err(PfaError::Model(format!(
                "model format version {} is not the {MODEL_FORMAT_VERSION} this build reads",
                header.format_version
            )));
        }
        let model: FailureModel = serde_json::from_str(text).map_err(|e| PfaError::Model(e.to_string()))?;
        if model.features.is_empty() || model.features.len() > MAX_FEATURES {
            return Err(PfaError::Model(format!("{} features", model.features.len())));
        }
        if !(0.0..=1.0).contains(&model.threshold) {
            return Err(PfaError::Model(format!("threshold {} outside [0, 1]", model.threshold)));
        }
        if !model.seen_units.is_sorted() {
            return Err(PfaError::Model("seen_units must be sorted".into()));
        }
        Ok(model)
    }
}

/// A stable 64-bit fingerprint of a unit's name (FNV-1a), the same on every machine.
pub fn fingerprint(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// y = 1 when x0 > 0.7, with x1 noise; a model must rank x0 high and survive a
    /// JSON round trip with identical predictions.
    #[test]
    fn learns_a_threshold_and_round_trips() {
        let mut t = Table::new(2);
        let mut y = Vec::new();
        let mut v = Table::new(2);
        let mut vy = Vec::new();
        for i in 0..2000u32 {
            let x0 = f64::from(i % 100) / 100.0;
            let x1 = f64::from((i * 7919) % 13);
            let label = x0 > 0.7;
            if i % 5 == 0 {
                v.push(vec![x0, x1]);
                vy.push(label);
            } else {
                t.push(vec![x0, if i % 3 == 0 { f64::NAN } else { x1 }]);
                y.push(label);
            }
        }
        let m = FailureModel::train(
            ModelKind::NodeTelemetry,
            60,
            vec!["x0".into(), "x1".into()],
            TrainSet { table: &t, labels: &y },
            TrainSet { table: &v, labels: &vy },
            TrainParams::default(),
        )
        .expect("trains");
        let mut probe = Table::new(2);
        probe.push(vec![0.9, 1.0]);
        probe.push(vec![0.1, 1.0]);
        probe.push(vec![0.95, f64::NAN]);
        let p = m.predict(&probe);
        assert!(p[0] > 0.9 && p[1] < 0.1 && p[2] > 0.9, "{p:?}");
        let back = FailureModel::from_json(&m.to_json().expect("json")).expect("parses");
        assert_eq!(back.predict(&probe), p);
        assert_eq!(back.features, ["x0", "x1"]);
    }

    #[test]
    fn a_foreign_or_future_file_is_refused() {
        let e = FailureModel::from_json("{\"format\":\"x\",\"format_version\":1}").expect_err("foreign");
        assert!(e.to_string().contains("expected `presage-pfa-model`"), "{e}");
        let e =
            FailureModel::from_json("{\"format\":\"presage-pfa-model\",\"format_version\":99}").expect_err("future");
        assert!(e.to_string().contains("version 99"), "{e}");
        assert!(FailureModel::from_json("not json").is_err());
    }

    #[test]
    fn calibration_recovers_a_known_logistic() {
        // Labels drawn deterministically so that P(y | z) = σ(2z - 1).
        let mut z = Vec::new();
        let mut y = Vec::new();
        for i in 0..400 {
            let zi = f64::from(i) / 100.0 - 2.0;
            let p = sigmoid(2.0 * zi - 1.0);
            for k in 0..100 {
                z.push(zi);
                y.push(f64::from(k) < p * 100.0);
            }
        }
        let c = Calibration::fit(&z, &y);
        assert!((c.a - 2.0).abs() < 0.1 && (c.b + 1.0).abs() < 0.1, "{c:?}");
    }

    #[test]
    fn fingerprints_are_stable() {
        assert_eq!(fingerprint(""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fingerprint("ZA101R30"), fingerprint("ZA101R31"));
    }
}
