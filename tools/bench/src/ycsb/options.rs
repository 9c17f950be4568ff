//! What a YCSB run is told: [`RunOptions`], every limit, checked by [`RunOptions::validate`].

use serde::Serialize;

use super::{KeyDistribution, Mix, Workload};

/// Most records a load phase may write.
pub const MAX_RECORDS: u64 = 100_000_000;
/// Most threads.
pub const MAX_THREADS: usize = 256;
/// Largest value, bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most seconds in a phase's time series (a longer phase keeps its totals, and its series
/// stops here).
pub const MAX_SERIES_SECS: usize = 3600;
/// Longest `--max-failing-secs`.
pub const MAX_FAILING_SECS: u64 = 3600;
/// Longest `--request-timeout-ms`.
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 600_000;
/// Longest `--duration`, seconds.
pub const MAX_DURATION_SECS: u64 = 7 * 24 * 3600;
/// Longest `--warmup`, seconds.
pub const MAX_WARMUP_SECS: u64 = 3600;
/// Highest `--rate`, operations per second.
pub const MAX_RATE_OPS_PER_SEC: u64 = 10_000_000;
/// Most `--connections` a RESP or etcd target opens.
pub const MAX_CONNECTIONS: usize = MAX_THREADS;

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct RunOptions {
    /// The YCSB core workload.
    pub workload: Workload,
    /// Records written by the load phase.
    pub records: u64,
    /// Operations in the run phase.
    pub ops: u64,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Request distribution (`None`: the workload's own).
    pub distribution: Option<KeyDistribution>,
    /// Client threads, one operation in flight each.
    pub threads: usize,
    /// Stop the run phase after this many seconds even if `ops` are not done.
    pub duration_secs: Option<u64>,
    /// Seed of every choice (thread `t` uses `seed + t`).
    pub seed: u64,
    /// Prefix of the record keys.
    pub key_prefix: String,
    /// A phase stops when no operation has succeeded for this long.
    pub max_failing_secs: u64,
    /// A cluster request gives up after this long, ms.
    pub request_timeout_ms: u64,
    /// Connections a RESP or etcd target opens, handed to the threads in turn (`None`: one
    /// per thread).
    pub connections: Option<usize>,
    /// Open loop: the run phase issues this many operations per second in all, on a fixed
    /// schedule, and measures each from its scheduled start (`None`: closed loop, each thread
    /// issues its next operation when the last one returns).
    pub rate_ops_per_sec: Option<u64>,
    /// Seconds at the start of the run phase whose operations run but are not measured.
    pub warmup_secs: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workload: Workload::A,
            records: 10_000,
            ops: 10_000,
            value_bytes: 100,
            distribution: None,
            threads: 4,
            duration_secs: None,
            seed: 1,
            key_prefix: "user".into(),
            max_failing_secs: 10,
            request_timeout_ms: 5_000,
            connections: None,
            rate_ops_per_sec: None,
            warmup_secs: 0,
        }
    }
}

/// Why the options cannot run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadOptions(pub String);

impl RunOptions {
    /// Checks every limit.
    pub fn validate(&self) -> Result<(), BadOptions> {
        let bad = |m: String| Err(BadOptions(m));
        if self.records == 0 || self.records > MAX_RECORDS {
            return bad(format!("--records must be in 1..={MAX_RECORDS}, not {}", self.records));
        }
        if self.ops == 0 {
            return bad("--ops must be positive".into());
        }
        if self.value_bytes == 0 || self.value_bytes > MAX_VALUE_BYTES {
            return bad(format!("--value-bytes must be in 1..={MAX_VALUE_BYTES}, not {}", self.value_bytes));
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return bad(format!("--threads must be in 1..={MAX_THREADS}, not {}", self.threads));
        }
        if self.connections.is_some_and(|c| c == 0 || c > MAX_CONNECTIONS) {
            return bad(format!("--connections must be in 1..={MAX_CONNECTIONS}"));
        }
        if self.rate_ops_per_sec.is_some_and(|r| r == 0 || r > MAX_RATE_OPS_PER_SEC) {
            return bad(format!("--rate must be in 1..={MAX_RATE_OPS_PER_SEC} operations per second"));
        }
        if self.warmup_secs > MAX_WARMUP_SECS {
            return bad(format!("--warmup must be at most {MAX_WARMUP_SECS} s, not {}", self.warmup_secs));
        }
        if self.duration_secs == Some(0) {
            return bad("--duration must be positive".into());
        }
        if !(1..=MAX_FAILING_SECS).contains(&self.max_failing_secs) {
            return bad(format!("--max-failing-secs must be in 1..={MAX_FAILING_SECS}, not {}", self.max_failing_secs));
        }
        if !(1..=MAX_REQUEST_TIMEOUT_MS).contains(&self.request_timeout_ms) {
            return bad(format!(
                "--request-timeout-ms must be in 1..={MAX_REQUEST_TIMEOUT_MS}, not {}",
                self.request_timeout_ms
            ));
        }
        if self.duration_secs.is_some_and(|d| d > MAX_DURATION_SECS) {
            return bad(format!("--duration must be at most {MAX_DURATION_SECS}"));
        }
        if self.key_prefix.is_empty() || self.key_prefix.len() > 64 || self.key_prefix.starts_with('\u{7f}') {
            return bad(format!("--key-prefix must be 1..=64 bytes, not {:?}", self.key_prefix));
        }
        Ok(())
    }

    /// The mix with the distribution override applied.
    pub fn mix(&self) -> Mix {
        let mut mix = self.workload.mix();
        if let Some(d) = self.distribution {
            mix.distribution = d;
        }
        mix
    }
}
