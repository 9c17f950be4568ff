//! Engine metrics: latency histograms and error counters measured on the real call path,
//! plus the engine's own stall and compaction signals.
//!
//! [`MeteredEngine`] times every call of the engine it wraps. Wrapped around a
//! [`crate::FaultyEngine`], it sees injected latency and errors exactly as the failure model
//! would see a degrading disk. Histograms are Prometheus histograms in a registry of the
//! engine's own (so several engines can live in one process); [`EngineMetrics::snapshot`]
//! gives the counts that the failure-analysis agent turns into per-second deltas.
//!
//! `MeteredEngine` wrapper timing every call into Prometheus histograms in a per-engine registry;
//! `EngineMetricsSnapshot`/`LatencySnapshot` (deltas, quantile bounds) for the failure model.
//!
//! **Stalls.** A histogram only sees calls that return: a disk that blocks every write shows
//! nothing there. So each class also counts its calls in flight and when one last made
//! progress (a call started with none in flight, or one returned); while calls are in
//! flight, `stalled_ms` is how long none of them has returned ([`EngineMetrics::stalled_ms`],
//! in every snapshot). A healthy engine reads 0 or a few milliseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus::core::Metric as _;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

use crate::engine::{Engine, Reader};
use crate::error::{EngineError, Result};
use crate::types::OpClass;
use crate::types::{
    Cf, KeyRange, KvPair, RangeStats, ScanLimit, ScanOrder, ScanPage, StorageStats, WriteBatch, WriteOptions,
};

/// Bucket upper bounds of the latency histograms, in seconds: 20 µs to about 5 s.
pub fn latency_buckets_seconds() -> Vec<f64> {
    (0..19).map(|i| 20e-6 * 2f64.powi(i)).collect()
}

/// Cumulative counts of one latency histogram.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct LatencySnapshot {
    /// Number of observations.
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
    /// `(upper bound in seconds, cumulative count)` per bucket, ascending.
    pub buckets: Vec<(f64, u64)>,
}

impl LatencySnapshot {
    fn of(h: &Histogram) -> Self {
        let m = h.metric();
        let h = m.get_histogram();
        LatencySnapshot {
            count: h.get_sample_count(),
            sum_seconds: h.get_sample_sum(),
            buckets: h.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect(),
        }
    }

    /// What happened between `earlier` and `self` (both from the same histogram).
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        LatencySnapshot {
            count: self.count.saturating_sub(earlier.count),
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
            buckets: self
                .buckets
                .iter()
                .zip(earlier.buckets.iter().map(|b| b.1).chain(std::iter::repeat(0)))
                .map(|((le, c), e)| (*le, c.saturating_sub(e)))
                .collect(),
        }
    }

    /// Mean latency in seconds, or `None` without observations.
    pub fn mean_seconds(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_seconds / self.count as f64)
    }

    /// Upper bound (seconds) of the bucket holding quantile `q` in `[0, 1]`; `None` without
    /// observations; infinity when it lies past the last bucket.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        Some(self.buckets.iter().find(|(_, c)| *c >= rank).map_or(f64::INFINITY, |(le, _)| *le))
    }
}

/// Everything the engine reports at one moment.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct EngineMetricsSnapshot {
    /// Unsynced writes.
    pub write: LatencySnapshot,
    /// Synced writes (and range replacements).
    pub sync: LatencySnapshot,
    /// Reads.
    pub read: LatencySnapshot,
    /// Failed reads.
    pub read_errors: u64,
    /// Failed unsynced writes.
    pub write_errors: u64,
    /// Failed synced writes.
    pub sync_errors: u64,
    /// How long the longest-waiting operation class has had calls in flight and none
    /// returning, ms (0: nothing waits). See the module doc.
    #[serde(default)]
    pub stalled_ms: u64,
    /// The same per class: how long a class's calls have been in flight since one of them
    /// last returned. While one call waits alone that is its wait so far, a lower bound on
    /// its latency known before it returns (a step in write latency shows within a reading).
    #[serde(default)]
    pub stalled_by_class_ms: ClassStalls,
    /// Compaction and stall state.
    pub storage: StorageStats,
}

/// Per operation class, how long its calls have been in flight with none returning, ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ClassStalls {
    /// Reads.
    pub read: u64,
    /// Unsynced writes.
    pub write: u64,
    /// Synced writes.
    pub sync: u64,
}

/// Calls of one class in flight, and when one last made progress.
#[derive(Default)]
struct Progress {
    in_flight: AtomicU64,
    /// Microseconds since the metrics' `epoch`.
    progress_at_us: AtomicU64,
}

/// The metric handles of one engine.
pub struct EngineMetrics {
    registry: Registry,
    write: Histogram,
    sync: Histogram,
    read: Histogram,
    errors: IntCounterVec,
    epoch: Instant,
    progress: [Progress; 3],
}

fn metrics_err(e: prometheus::Error) -> EngineError {
    EngineError::Config(format!("engine metrics: {e}"))
}

impl EngineMetrics {
    /// Fresh metrics in a registry of their own.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let hist = |name: &str, help: &str| -> Result<Histogram> {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(latency_buckets_seconds()))
                .map_err(metrics_err)?;
            registry.register(Box::new(h.clone())).map_err(metrics_err)?;
            Ok(h)
        };
        let write = hist("presage_engine_write_seconds", "Latency of unsynced engine writes")?;
        let sync = hist("presage_engine_sync_write_seconds", "Latency of synced engine writes")?;
        let read = hist("presage_engine_read_seconds", "Latency of engine reads and scans")?;
        let errors =
            IntCounterVec::new(Opts::new("presage_engine_errors_total", "Failed engine operations"), &["class"])
                .map_err(metrics_err)?;
        registry.register(Box::new(errors.clone())).map_err(metrics_err)?;
        let progress = Default::default();
        Ok(EngineMetrics { registry, write, sync, read, errors, epoch: Instant::now(), progress })
    }

    fn micros_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// How long calls of `class` have been in flight with none returning, at `now`, ms (0
    /// when none is in flight).
    pub fn stalled_ms_of(&self, class: OpClass, now: Instant) -> u64 {
        let p = &self.progress[class.index()];
        if p.in_flight.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let since_us = self.micros_since_epoch(now).saturating_sub(p.progress_at_us.load(Ordering::Acquire));
        since_us / 1000
    }

    /// The longest stall over every class at `now`, ms.
    pub fn stalled_ms(&self, now: Instant) -> u64 {
        OpClass::ALL.into_iter().map(|c| self.stalled_ms_of(c, now)).max().unwrap_or(0)
    }

    /// The registry holding these metrics (for `/metrics`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn histogram(&self, class: OpClass) -> &Histogram {
        match class {
            OpClass::Read => &self.read,
            OpClass::Write => &self.write,
            OpClass::Sync => &self.sync,
        }
    }

    fn observe<T>(&self, class: OpClass, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let progress = &self.progress[class.index()];
        if progress.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            progress.progress_at_us.store(self.micros_since_epoch(start), Ordering::Release);
        }
        let out = f();
        let end = Instant::now();
        progress.progress_at_us.fetch_max(self.micros_since_epoch(end), Ordering::AcqRel);
        progress.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.histogram(class).observe(end.duration_since(start).as_secs_f64());
        if out.is_err() {
            self.errors.with_label_values(&[class.name()]).inc();
        }
        out
    }

    fn errors_of(&self, class: OpClass) -> u64 {
        self.errors.with_label_values(&[class.name()]).get()
    }

    /// Current counts (without storage stats; see [`MeteredEngine::metrics_snapshot`]).
    pub fn snapshot(&self) -> EngineMetricsSnapshot {
        let now = Instant::now();
        EngineMetricsSnapshot {
            write: LatencySnapshot::of(&self.write),
            sync: LatencySnapshot::of(&self.sync),
            read: LatencySnapshot::of(&self.read),
            read_errors: self.errors_of(OpClass::Read),
            write_errors: self.errors_of(OpClass::Write),
            sync_errors: self.errors_of(OpClass::Sync),
            stalled_ms: self.stalled_ms(now),
            stalled_by_class_ms: ClassStalls {
                read: self.stalled_ms_of(OpClass::Read, now),
                write: self.stalled_ms_of(OpClass::Write, now),
                sync: self.stalled_ms_of(OpClass::Sync, now),
            },
            storage: StorageStats::default(),
        }
    }
}

/// An engine (or a snapshot of one) whose every call is timed and counted.
#[derive(Clone)]
pub struct MeteredEngine<E> {
    inner: E,
    metrics: Arc<EngineMetrics>,
}

impl<E: Engine> MeteredEngine<E> {
    /// Wraps `inner` with fresh metrics.
    pub fn new(inner: E) -> Result<Self> {
        Ok(MeteredEngine { inner, metrics: Arc::new(EngineMetrics::new()?) })
    }

    /// The wrapped engine.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// The metric handles.
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    /// Latencies, errors and the engine's storage stats, now.
    pub fn metrics_snapshot(&self) -> EngineMetricsSnapshot {
        EngineMetricsSnapshot { storage: self.inner.storage_stats(), ..self.metrics.snapshot() }
    }
}

impl<R: Reader> Reader for MeteredEngine<R> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.metrics.observe(OpClass::Read, || self.inner.get(cf, key))
    }

    fn scan(&self, cf: Cf, range: &KeyRange, order: ScanOrder, limit: ScanLimit) -> Result<ScanPage> {
        self.metrics.observe(OpClass::Read, || self.inner.scan(cf, range, order, limit))
    }
}

impl<E: Engine> Engine for MeteredEngine<E> {
    type Snapshot = MeteredEngine<E::Snapshot>;

    fn write(&self, batch: &WriteBatch, opts: WriteOptions) -> Result<()> {
        let class = if opts.sync { OpClass::Sync } else { OpClass::Write };
        self.metrics.observe(class, || self.inner.write(batch, opts))
    }

    fn snapshot(&self) -> Self::Snapshot {
        MeteredEngine { inner: self.inner.snapshot(), metrics: Arc::clone(&self.metrics) }
    }

    fn approximate_stats(&self, cf: Cf, range: &KeyRange) -> Result<RangeStats> {
        self.inner.approximate_stats(cf, range)
    }

    fn replace_range(&self, cf: Cf, range: &KeyRange, pairs: &mut dyn Iterator<Item = Result<KvPair>>) -> Result<u64> {
        self.metrics.observe(OpClass::Sync, || self.inner.replace_range(cf, range, pairs))
    }

    fn flush(&self) -> Result<()> {
        self.metrics.observe(OpClass::Sync, || self.inner.flush())
    }

    fn sync_wal(&self) -> Result<()> {
        self.metrics.observe(OpClass::Sync, || self.inner.sync_wal())
    }

    fn storage_stats(&self) -> StorageStats {
        self.inner.storage_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_deltas() {
        let m = EngineMetrics::new().expect("metrics");
        let before = m.snapshot().read;
        for _ in 0..99 {
            m.read.observe(30e-6);
        }
        m.read.observe(0.5);
        let d = m.snapshot().read.since(&before);
        assert_eq!(d.count, 100);
        assert_eq!(d.quantile_upper_bound(0.5), Some(40e-6));
        let p999 = d.quantile_upper_bound(0.999).expect("observations");
        assert!((0.5..=1.0).contains(&p999), "p99.9 bucket {p999}");
        assert!(LatencySnapshot::default().quantile_upper_bound(0.5).is_none());
    }

    /// A call that does not return shows as a stall growing with the wait; calls that
    /// return (however slowly) reset it, and nothing in flight reads 0.
    #[test]
    fn a_call_in_flight_without_progress_is_a_stall() {
        let m = Arc::new(EngineMetrics::new().expect("metrics"));
        assert_eq!(m.stalled_ms(Instant::now()), 0, "nothing in flight");
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let blocked = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                m.observe(OpClass::Sync, || {
                    entered_tx.send(()).expect("send");
                    release_rx.recv().expect("released");
                    Ok(())
                })
            })
        };
        entered_rx.recv().expect("entered");
        let now = Instant::now();
        let later = now + std::time::Duration::from_millis(1500);
        assert!(m.stalled_ms_of(OpClass::Sync, later) >= 1400, "{}", m.stalled_ms_of(OpClass::Sync, later));
        assert_eq!(m.stalled_ms_of(OpClass::Write, later), 0, "another class is not stalled");
        assert_eq!(m.stalled_ms(later), m.stalled_ms_of(OpClass::Sync, later));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let by_class = m.snapshot().stalled_by_class_ms;
        assert!(by_class.sync >= 20 && by_class.write == 0 && by_class.read == 0, "{by_class:?}");
        release_tx.send(()).expect("release");
        blocked.join().expect("thread").expect("write");
        assert_eq!(m.stalled_ms(later), 0, "nothing in flight after it returned");
    }
}
