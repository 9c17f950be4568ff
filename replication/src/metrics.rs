//! The replication layer's Prometheus metrics, process-wide (a node process runs one store;
//! in-process test clusters share them):
//!
//! - `presage_raft_commit_seconds`: from a proposal on the leader to its entry coming out
//!   committed (the log written on a quorum, this node's own write included), when the
//!   leader applies it; what replication adds to a write's latency, before the apply batch;
//! - `presage_raft_ready_round_seconds`: one store-loop round that persisted or applied
//!   something, from its start to its log job handed over and its callbacks run: the time
//!   the loop is busy per round (message steps between rounds are not in it).
//!
//! - `presage_clock_offset_seconds`, `presage_clock_out_of_sync`: the node's clock against its
//!   peers' (`crate::clock`).
//!
//! The node renders [`registry`] beside its own and the engine's.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Gauge, Histogram, HistogramOpts, IntGauge, Registry};

/// The metrics (see the module doc).
pub(crate) struct RaftMetrics {
    registry: Registry,
    commit: Histogram,
    round: Histogram,
    clock_offset: Gauge,
    clock_out_of_sync: IntGauge,
}

static METRICS: LazyLock<RaftMetrics> = LazyLock::new(RaftMetrics::new);

/// Latency histogram buckets, in seconds: 25 µs doubling to about 13 s (the node's request
/// latency uses them too, so that the two compare bucket for bucket).
pub fn latency_buckets() -> Vec<f64> {
    (0..20).map(|i| 25e-6 * 2f64.powi(i)).collect()
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(latency_buckets()))
        .unwrap_or_else(|e| panic!("metric definition: {e}"));
    // Only fails on a duplicate name: fixed strings, registered once.
    registry.register(Box::new(h.clone())).unwrap_or_else(|e| panic!("metric definition: {e}"));
    h
}

impl RaftMetrics {
    fn new() -> Self {
        let registry = Registry::new_custom(Some("presage".into()), None).unwrap_or_default();
        let commit = histogram(
            &registry,
            "raft_commit_seconds",
            "From a proposal on the leader to its entry coming out committed there",
        );
        let round = histogram(
            &registry,
            "raft_ready_round_seconds",
            "One store-loop round that persisted or applied something",
        );
        let clock_offset = Gauge::new(
            "clock_offset_seconds",
            "The median of the clocks this node hears, its own included, minus its own (estimated)",
        )
        .unwrap_or_else(|e| panic!("metric definition: {e}"));
        registry.register(Box::new(clock_offset.clone())).unwrap_or_else(|e| panic!("metric definition: {e}"));
        let clock_out_of_sync = IntGauge::new(
            "clock_out_of_sync",
            "1 while this node's clock is further than max-clock-offset-ms from its peers' (no leased reads)",
        )
        .unwrap_or_else(|e| panic!("metric definition: {e}"));
        registry.register(Box::new(clock_out_of_sync.clone())).unwrap_or_else(|e| panic!("metric definition: {e}"));
        RaftMetrics { registry, commit, round, clock_offset, clock_out_of_sync }
    }
}

/// The registry holding these metrics.
pub fn registry() -> &'static Registry {
    &METRICS.registry
}

/// A proposal committed `elapsed` after it was made.
pub(crate) fn observe_commit(elapsed: Duration) {
    METRICS.commit.observe(elapsed.as_secs_f64());
}

/// A ready round took `elapsed`.
pub(crate) fn observe_round(elapsed: Duration) {
    METRICS.round.observe(elapsed.as_secs_f64());
}

/// Records the node's clock offset (ms; `None`: no fresh readings) and verdict.
pub(crate) fn set_clock(offset_ms: Option<i64>, out_of_sync: bool) {
    METRICS.clock_offset.set(offset_ms.unwrap_or(0) as f64 / 1e3);
    METRICS.clock_out_of_sync.set(i64::from(out_of_sync));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_registry_with_their_names() {
        let before = METRICS.commit.get_sample_count();
        observe_commit(Duration::from_micros(300));
        observe_round(Duration::from_micros(50));
        assert_eq!(METRICS.commit.get_sample_count(), before + 1);
        let names: Vec<String> = registry().gather().iter().map(|f| f.name().to_string()).collect();
        assert!(names.contains(&"presage_raft_commit_seconds".to_string()), "{names:?}");
        assert!(names.contains(&"presage_raft_ready_round_seconds".to_string()), "{names:?}");
    }
}
