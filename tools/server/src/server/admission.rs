//! Admission by priority (seed 001: critical traffic first). Every data request carries a
//! [`Priority`]; a node admits it only while fewer requests of its priority are in flight than
//! that priority's limit, else answers [`ProtoError::Overloaded`] (retryable: nothing was done).
//!
//! - **Limits**: `critical` requests are limited only by `max-inflight-requests` (the node's
//!   hard limit, for every priority together). `normal` and `bulk` ones have adaptive limits
//!   between a floor and `max-normal-inflight-requests` / `max-bulk-inflight-requests`.
//! - **Signal**: the latency of the data requests the node served, per window of `window-ms`.
//!   The window is *over target* when its 90th percentile exceeds the target: `target-latency-ms`,
//!   or (0, the default) [`BASELINE_FACTOR`] times the node's own baseline, the lowest window
//!   median over the last `baseline-ms`, never below `min-target-latency-ms`. A node at risk (its
//!   own disk check sheds its leaderships) counts as over target.
//! - **Control** (additive increase, multiplicative decrease, lowest priority first): over
//!   target, the bulk limit halves; once bulk is at its floor, the normal limit halves - only
//!   in a window that served critical requests: shedding normal traffic protects nothing
//!   else, and under an open-loop load its retries only add latency (`presage-bench scenario
//!   periodic` collapsed at 3,000 normal requests/s that the node served at a 4-ms p99
//!   without admission). Under target, the normal limit grows by a quarter, then the bulk
//!   limit. So a node that is overloaded sheds bulk traffic first and normal traffic next, and
//!   critical requests meet a short queue.
//!
//! Pure: time and latencies come in as arguments; the server holds it under a mutex.

use presage_client::proto::{Priority, ProtoError};
use serde::{Deserialize, Serialize};

/// The automatic target is this many times the baseline.
pub const BASELINE_FACTOR: f64 = 3.0;
/// A window with fewer completions than this changes nothing but may raise the limits.
const MIN_WINDOW_SAMPLES: u32 = 8;
/// Lowest limit of `normal` and `bulk` requests in flight (one keeps being probed).
const FLOOR_INFLIGHT: [usize; 3] = [1, 4, 1];
/// Latency buckets of a window: bucket `i` holds latencies up to `BUCKET_BASE_US * 2^(i/2)`.
const BUCKETS: usize = 48;
const BUCKET_BASE_US: f64 = 50.0;
/// Window medians kept for the baseline.
const MAX_BASELINE_WINDOWS: usize = 4_096;

/// Admission settings (`[server.admission]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct AdmissionConfig {
    /// Admit by priority (off: only the node's hard in-flight limit applies).
    pub enabled: bool,
    /// Window of served latencies the limits are adjusted on.
    pub window_ms: u64,
    /// The 90th-percentile latency above which the node sheds (0: automatic).
    pub target_latency_ms: u64,
    /// Lowest automatic target.
    pub min_target_latency_ms: u64,
    /// The baseline is the lowest window median over this long.
    pub baseline_ms: u64,
    /// Highest limit of normal requests in flight.
    pub max_normal_inflight_requests: usize,
    /// Highest limit of bulk requests in flight.
    pub max_bulk_inflight_requests: usize,
    /// The pause a shed request is told to wait at least.
    pub retry_after_ms: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            enabled: true,
            window_ms: 100,
            target_latency_ms: 0,
            min_target_latency_ms: 2,
            baseline_ms: 60_000,
            max_normal_inflight_requests: 1_024,
            max_bulk_inflight_requests: 256,
            retry_after_ms: 20,
        }
    }
}

impl AdmissionConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.window_ms == 0 || self.baseline_ms < self.window_ms {
            return Err("admission.window-ms must be positive and at most baseline-ms".into());
        }
        if self.max_normal_inflight_requests < FLOOR_INFLIGHT[1] || self.max_bulk_inflight_requests < FLOOR_INFLIGHT[2]
        {
            return Err(
                "admission.max-normal-inflight-requests must be at least 4, max-bulk-inflight-requests 1".into()
            );
        }
        Ok(())
    }
}

/// Figures for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AdmissionStats {
    /// Limit per priority (critical: the hard limit).
    pub limits: [usize; 3],
    /// Requests in flight per priority.
    pub inflight: [usize; 3],
    /// Requests refused per priority since start.
    pub shed: [u64; 3],
    /// The target in force, µs (0 until a baseline is known).
    pub target_us: u64,
}

/// The controller (module docs).
#[derive(Debug, Clone)]
pub struct Admission {
    cfg: AdmissionConfig,
    limits: [usize; 3],
    inflight: [usize; 3],
    shed: [u64; 3],
    /// The window: its start, completions per latency bucket, and their count.
    window_start_ms: u64,
    buckets: [u32; BUCKETS],
    samples: u32,
    /// Critical requests served in the window.
    critical_samples: u32,
    /// `(window end, median µs)` of recent windows, oldest first.
    medians: std::collections::VecDeque<(u64, f64)>,
    target_us: f64,
}

fn bucket_of(latency_us: u64) -> usize {
    let ratio = (latency_us as f64 / BUCKET_BASE_US).max(1.0);
    ((ratio.log2() * 2.0).ceil() as usize).min(BUCKETS - 1)
}

fn bucket_upper_us(i: usize) -> f64 {
    BUCKET_BASE_US * 2f64.powf(i as f64 / 2.0)
}

impl Admission {
    /// A controller with every limit at its highest; `hard_limit` is the node's
    /// `max-inflight-requests`.
    pub fn new(cfg: AdmissionConfig, hard_limit: usize, now_ms: u64) -> Self {
        let limits = [hard_limit, cfg.max_normal_inflight_requests, cfg.max_bulk_inflight_requests];
        Admission {
            cfg,
            limits,
            inflight: [0; 3],
            shed: [0; 3],
            window_start_ms: now_ms,
            buckets: [0; BUCKETS],
            samples: 0,
            critical_samples: 0,
            medians: Default::default(),
            target_us: 0.0,
        }
    }

    /// Admits a request of `priority` (count it in flight until [`Admission::done`]), or
    /// says why not.
    pub fn try_admit(&mut self, priority: Priority) -> Result<(), ProtoError> {
        let i = priority.index();
        if self.cfg.enabled && self.inflight[i] >= self.limits[i] {
            self.shed[i] += 1;
            return Err(ProtoError::Overloaded { priority, retry_after_ms: self.cfg.retry_after_ms });
        }
        self.inflight[i] += 1;
        Ok(())
    }

    /// A request admitted at `priority` finished after `latency_us`; at a window's end the
    /// limits move (`at_risk`: the node's own disk check sheds its leaderships).
    pub fn done(&mut self, priority: Priority, latency_us: u64, now_ms: u64, at_risk: bool) {
        let i = priority.index();
        debug_assert!(self.inflight[i] > 0, "done without admit");
        self.inflight[i] = self.inflight[i].saturating_sub(1);
        self.buckets[bucket_of(latency_us)] += 1;
        self.samples += 1;
        if priority == Priority::Critical {
            self.critical_samples += 1;
        }
        if now_ms >= self.window_start_ms + self.cfg.window_ms {
            self.end_window(now_ms, at_risk);
        }
    }

    fn percentile_us(&self, q: f64) -> f64 {
        let want = (f64::from(self.samples) * q).ceil().max(1.0) as u32;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return bucket_upper_us(i);
            }
        }
        bucket_upper_us(BUCKETS - 1)
    }

    fn end_window(&mut self, now_ms: u64, at_risk: bool) {
        let over = if self.samples >= MIN_WINDOW_SAMPLES {
            let (p50, p90) = (self.percentile_us(0.5), self.percentile_us(0.9));
            self.medians.push_back((now_ms, p50));
            while self.medians.len() > MAX_BASELINE_WINDOWS
                || self.medians.front().is_some_and(|(t, _)| now_ms.saturating_sub(*t) > self.cfg.baseline_ms)
            {
                self.medians.pop_front();
            }
            let baseline = self.medians.iter().map(|m| m.1).fold(f64::INFINITY, f64::min);
            self.target_us = if self.cfg.target_latency_ms > 0 {
                self.cfg.target_latency_ms as f64 * 1_000.0
            } else {
                (baseline * BASELINE_FACTOR).max(self.cfg.min_target_latency_ms as f64 * 1_000.0)
            };
            p90 > self.target_us
        } else {
            false
        };
        if over || at_risk {
            self.decrease(self.critical_samples > 0);
        } else {
            self.increase();
        }
        self.window_start_ms = now_ms;
        self.buckets = [0; BUCKETS];
        self.samples = 0;
        self.critical_samples = 0;
    }

    /// Halves the bulk limit, or the normal one once bulk is at its floor if critical
    /// requests were served (`protect`).
    fn decrease(&mut self, protect: bool) {
        let (bulk, normal) = (Priority::Bulk.index(), Priority::Normal.index());
        if self.limits[bulk] > FLOOR_INFLIGHT[bulk] {
            self.limits[bulk] = (self.limits[bulk] / 2).max(FLOOR_INFLIGHT[bulk]);
        } else if protect {
            self.limits[normal] = (self.limits[normal] / 2).max(FLOOR_INFLIGHT[normal]);
        }
    }

    /// Grows the normal limit by a quarter, or the bulk one once normal is at its highest.
    fn increase(&mut self) {
        let (bulk, normal) = (Priority::Bulk.index(), Priority::Normal.index());
        let grow = |limit: usize, max: usize| (limit + (limit / 4).max(1)).min(max);
        if self.limits[normal] < self.cfg.max_normal_inflight_requests {
            self.limits[normal] = grow(self.limits[normal], self.cfg.max_normal_inflight_requests);
        } else {
            self.limits[bulk] = grow(self.limits[bulk], self.cfg.max_bulk_inflight_requests);
        }
    }

    /// Figures for metrics.
    pub fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            limits: self.limits,
            inflight: self.inflight,
            shed: self.shed,
            target_us: self.target_us as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `windows` windows of 100 completions: `bulk` and `normal` requests in flight want
    /// to be admitted each time, latency `latency_us(bulk in flight)`.
    fn drive(a: &mut Admission, now: &mut u64, windows: u32, latency_us: impl Fn(usize) -> u64) {
        for _ in 0..windows {
            for _ in 0..100 {
                // Keep as many in flight as admitted: admit until refused.
                while a.try_admit(Priority::Bulk).is_ok() {}
                let bulk = a.stats().inflight[2];
                a.done(Priority::Bulk, latency_us(bulk), *now, false);
                *now += 1;
            }
        }
    }

    #[test]
    fn an_overloaded_node_sheds_bulk_first_then_recovers() {
        let mut now = 0;
        let mut a = Admission::new(AdmissionConfig::default(), 4_096, now);
        // Quiet: 1 ms, a baseline of about 1 ms, target 3 ms.
        drive(&mut a, &mut now, 20, |_| 1_000);
        assert_eq!(a.stats().limits, [4_096, 1_024, 256]);
        // Latency grows with the bulk requests in flight: 100 µs each.
        drive(&mut a, &mut now, 40, |bulk| 1_000 + 100 * bulk as u64);
        let s = a.stats();
        assert!(s.limits[2] <= 32, "bulk limited: {s:?}");
        assert_eq!(s.limits[1], 1_024, "normal untouched while bulk can shrink: {s:?}");
        assert!(s.shed[2] > 0, "{s:?}");
        assert!((2_000..=4_000).contains(&s.target_us), "{s:?}");
        // Critical is admitted whatever bulk does.
        assert!(a.try_admit(Priority::Critical).is_ok());
        a.done(Priority::Critical, 1_000, now, false);
        // The load goes: the limits grow back, normal first.
        drive(&mut a, &mut now, 200, |_| 1_000);
        assert_eq!(a.stats().limits, [4_096, 1_024, 256]);
    }

    #[test]
    fn when_bulk_is_at_its_floor_normal_halves_and_at_risk_counts_as_over() {
        let slow_windows = |critical: bool| {
            let mut a = Admission::new(AdmissionConfig { target_latency_ms: 5, ..Default::default() }, 64, 0);
            for w in 1..=12u64 {
                for i in 0..10 {
                    let p = if critical && i == 0 { Priority::Critical } else { Priority::Normal };
                    a.try_admit(p).expect("admitted");
                    a.done(p, 20_000, w * 100 + i, false);
                }
            }
            a
        };
        // Normal traffic alone, slow: nothing to protect, so it is not shed (bulk is).
        let alone = slow_windows(false).stats();
        assert_eq!((alone.limits[1], alone.limits[2]), (1_024, 1), "{alone:?}");
        let mut a = slow_windows(true);
        let s = a.stats();
        assert_eq!(s.limits[2], 1, "{s:?}");
        assert!(s.limits[1] < 1_024, "with critical traffic normal halves too: {s:?}");
        let err = {
            a.try_admit(Priority::Bulk).expect("one bulk probe");
            a.try_admit(Priority::Bulk).expect_err("shed")
        };
        assert!(matches!(err, ProtoError::Overloaded { priority: Priority::Bulk, retry_after_ms: 20 }), "{err}");
        // At risk: the limits shrink with no latency at all.
        let mut b = Admission::new(AdmissionConfig::default(), 64, 0);
        b.try_admit(Priority::Normal).expect("admitted");
        b.done(Priority::Normal, 10, 100, true);
        assert_eq!(b.stats().limits[2], 128);
        // Off: nothing is shed below the hard limit.
        let mut off = Admission::new(AdmissionConfig { enabled: false, ..Default::default() }, 64, 0);
        off.limits[2] = 0;
        assert!(off.try_admit(Priority::Bulk).is_ok());
    }

    #[test]
    fn buckets_cover_microseconds_to_minutes() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(50), 0);
        assert!(bucket_upper_us(bucket_of(1_000)) >= 1_000.0);
        assert!(bucket_upper_us(bucket_of(1_000)) < 1_500.0);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }
}
