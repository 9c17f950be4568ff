//! Predictive failure analysis (design.md §5): telemetry features, detectors, the failure
//! model and typed early warnings.
//!
//! Pure, like the shard manager's policies: no I/O, no clock reads of its own. Callers read
//! files and clocks and hand the bytes and timestamps in.
//!
//! - [`telemetry`]: the signal catalogue (names end with units) and samples.
//! - [`aggregate`]: per-node rings, detectors, features, evidence, minute summaries.
//! - [`warning`]: typed early warnings, their lifecycle and event stream.
//! - [`detect`]: EWMA, Holt, slopes, CUSUM, median.
//! - [`smart`]: Backblaze SMART data sets (CSV).
//! - [`model`]: the gradient-boosted failure model, its calibration and file format.
//! - [`disk`]: the drive model: features, split by drive, training, evaluation beside the
//!   Backblaze rule.
//! - [`local`]: the node-local disk check (stalls, slow calls against the node's own
//!   history, errors) behind a node handing its leaderships away at once.
//! - [`procfs`]: parsers for `/proc/diskstats`, `/proc/stat`, `/proc/meminfo`, PSI.
//! - [`risk`]: node and region risk, model status.
//! - [`node_model`]: the node model on recorded telemetry: replay, training split by time,
//!   evaluation with lead times and false-alarm rates.
//! - [`prior`]: failure-history priors from the LANL records.
//! - [`retrain`]: episodes the shard manager captures (observed failures, healthy
//!   snapshots) and retraining from them, adopted only if no worse on the newest ones.
//! - [`scores`]: precision, recall, PR-AUC, ROC-AUC, recall at 1% FPR, lead time.

pub mod aggregate;
pub mod detect;
pub mod disk;
pub mod local;
pub mod model;
pub mod node_model;
pub mod prior;
pub mod procfs;
pub mod retrain;
pub mod risk;
pub mod scores;
pub mod smart;
pub mod telemetry;
pub mod warning;

/// Why a failure-analysis step failed.
#[derive(Debug, thiserror::Error)]
pub enum PfaError {
    /// Input data is malformed.
    #[error("{file}: line {line}: {reason}")]
    Data {
        /// The file or stream.
        file: String,
        /// 1-based line (1 = the header).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Training could not run.
    #[error("training: {0}")]
    Train(String),
    /// A model file is unusable.
    #[error("model: {0}")]
    Model(String),
}

impl PfaError {
    fn csv(source: &str, line: usize, e: csv::Error) -> PfaError {
        let line = e.position().map_or(line, |p| p.line() as usize);
        PfaError::Data { file: source.to_string(), line, reason: e.to_string() }
    }
}
