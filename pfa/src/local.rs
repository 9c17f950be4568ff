//! The node-local disk check: a node knows first that its own disk is slow, stalled or
//! failing, long before the shard manager's model has the evidence. Pure: the node's runtime
//! (`presage_server::node::self_check`) reads its engine's metrics every interval, hands the
//! figures in as a [`LocalReading`], and acts on the [`LocalVerdict`] (it hands its
//! leaderships away while the verdict is not healthy, and for `hold_ms` after).
//!
//! What counts, per reading (one interval, typically 100 ms):
//!
//! - **errors**: any failed engine call is [`LocalVerdict::Failing`] at once (a disk that
//!   lied once is not trusted with leaderships again).
//! - **a stall**: engine calls in flight with none returning for `stall_ms` or more is
//!   [`LocalVerdict::Slow`] at once: no healthy disk takes a second over one write.
//! - **slow calls**: the mean latency of a class (synced writes, plain writes, reads) past
//!   both an absolute floor and `slow_factor` times the node's own history of that class, in
//!   `confirm_readings` readings in a row. The history is a slow moving average of healthy
//!   readings only (a fault does not become the new normal), started from the first one.
//!   A class whose calls have waited past that bar with none returning is slow in that
//!   reading too, whatever the calls that did return measured: the wait is a lower bound on
//!   the latency to come, so a step in latency counts from the first reading after it, not
//!   from the first slow call's return (a +250 ms step was confirmed in about 1.3 s on
//!   returns alone, the waits confirm it in three readings).
//!
//! The floors are far above a healthy disk's worst interval (a 100 ms mean fsync, 50 ms mean
//! plain writes or reads over a quarter second), so compaction bursts, catch-up I/O for a
//! recovering peer and CPU contention stay healthy: a false alarm sheds leaderships for at
//! most `hold_ms`, it never evacuates a node (that is the shard manager's call, on the
//! model's evidence).

use serde::{Deserialize, Serialize};

/// Settings of the local check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct LocalConfig {
    /// Run the check (off: the node keeps its leaderships whatever its disk does, until the
    /// shard manager moves them).
    pub enabled: bool,
    /// Engine calls in flight with none returning this long: a stall, ms.
    pub stall_ms: u64,
    /// A class is slow when its mean is this many times its history (and past its floor).
    pub slow_factor: f64,
    /// Floor of a slow synced-write mean, ms.
    pub slow_sync_mean_ms: f64,
    /// Floor of a slow plain-write mean, ms.
    pub slow_write_mean_ms: f64,
    /// Floor of a slow read mean, ms.
    pub slow_read_mean_ms: f64,
    /// Slow readings in a row before the verdict is `Slow`.
    pub confirm_readings: u32,
    /// Weight of a healthy reading in the history (an exponential moving average).
    pub history_weight: f64,
    /// The node keeps shedding leaderships this long after the last unhealthy reading, ms.
    pub hold_ms: u64,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            enabled: true,
            stall_ms: 1_000,
            slow_factor: 10.0,
            slow_sync_mean_ms: 100.0,
            slow_write_mean_ms: 50.0,
            slow_read_mean_ms: 50.0,
            confirm_readings: 3,
            history_weight: 0.02,
            hold_ms: 10_000,
        }
    }
}

impl LocalConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be a positive number, not {v}"))
            }
        };
        positive("slow-factor", self.slow_factor)?;
        positive("slow-sync-mean-ms", self.slow_sync_mean_ms)?;
        positive("slow-write-mean-ms", self.slow_write_mean_ms)?;
        positive("slow-read-mean-ms", self.slow_read_mean_ms)?;
        if !(self.history_weight > 0.0 && self.history_weight <= 1.0) {
            return Err(format!("history-weight must be in (0, 1], not {}", self.history_weight));
        }
        if self.stall_ms == 0 || self.confirm_readings == 0 {
            return Err("stall-ms and confirm-readings must be at least 1".into());
        }
        Ok(())
    }
}

/// What the node measured over one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LocalReading {
    /// When the interval ended, ms (the caller's clock).
    pub at_ms: u64,
    /// Engine calls in flight with none returning, at the reading, ms.
    pub stalled_ms: u64,
    /// Mean synced-write latency over the interval, ms (`None`: none returned).
    pub sync_mean_ms: Option<f64>,
    /// Mean plain-write latency, ms.
    pub write_mean_ms: Option<f64>,
    /// Mean read latency, ms.
    pub read_mean_ms: Option<f64>,
    /// How long synced writes have been in flight with none returning, at the reading, ms.
    pub sync_waiting_ms: u64,
    /// The same for plain writes.
    pub write_waiting_ms: u64,
    /// The same for reads.
    pub read_waiting_ms: u64,
    /// Engine calls that failed over the interval.
    pub errors: u64,
}

/// The check's conclusion after a reading.
#[derive(Clone, Debug, PartialEq)]
pub enum LocalVerdict {
    /// Nothing wrong.
    Healthy,
    /// The disk is stalled or slow: hand leaderships away.
    Slow {
        /// What was measured, for the log.
        reason: String,
    },
    /// The disk returns errors: hand leaderships away and never take one back.
    Failing {
        /// What was measured.
        reason: String,
    },
}

impl LocalVerdict {
    /// Anything but healthy.
    pub fn is_unhealthy(&self) -> bool {
        !matches!(self, LocalVerdict::Healthy)
    }
}

/// One class's history and run of slow readings.
#[derive(Clone, Debug, Default)]
struct ClassState {
    history_ms: Option<f64>,
    slow_in_a_row: u32,
}

impl ClassState {
    /// Takes a mean and the class's current wait; true when it is slow for `confirm`
    /// readings in a row.
    fn observe(&mut self, mean_ms: Option<f64>, waiting_ms: u64, floor_ms: f64, cfg: &LocalConfig) -> bool {
        let bar = self.history_ms.map_or(floor_ms, |h| floor_ms.max(cfg.slow_factor * h));
        let mean = mean_ms.filter(|m| m.is_finite() && *m >= 0.0);
        // A wait is evidence only of slowness: it never enters the history.
        if mean.is_some_and(|m| m >= bar) || waiting_ms as f64 >= bar {
            self.slow_in_a_row = self.slow_in_a_row.saturating_add(1);
        } else if let Some(mean) = mean {
            self.slow_in_a_row = 0;
            let w = cfg.history_weight;
            self.history_ms = Some(self.history_ms.map_or(mean, |h| (1.0 - w) * h + w * mean));
        }
        // Nothing returned and nothing waited long: no evidence either way.
        self.slow_in_a_row >= cfg.confirm_readings
    }
}

/// The local check's state (see the module doc).
#[derive(Clone, Debug)]
pub struct LocalDetector {
    cfg: LocalConfig,
    sync: ClassState,
    write: ClassState,
    read: ClassState,
    failing: bool,
    /// Shed leaderships until this time, ms.
    shed_until_ms: Option<u64>,
}

impl LocalDetector {
    /// A detector with no history.
    pub fn new(cfg: LocalConfig) -> Self {
        LocalDetector {
            cfg,
            sync: ClassState::default(),
            write: ClassState::default(),
            read: ClassState::default(),
            failing: false,
            shed_until_ms: None,
        }
    }

    /// Takes one interval's reading and returns the verdict on it.
    pub fn observe(&mut self, r: &LocalReading) -> LocalVerdict {
        let cfg = self.cfg.clone();
        let slow_sync = self.sync.observe(r.sync_mean_ms, r.sync_waiting_ms, cfg.slow_sync_mean_ms, &cfg);
        let slow_write = self.write.observe(r.write_mean_ms, r.write_waiting_ms, cfg.slow_write_mean_ms, &cfg);
        let slow_read = self.read.observe(r.read_mean_ms, r.read_waiting_ms, cfg.slow_read_mean_ms, &cfg);
        let ms = |m: Option<f64>| m.map_or("-".to_string(), |m| format!("{m:.1} ms"));
        let verdict = if r.errors > 0 || self.failing {
            self.failing = true;
            LocalVerdict::Failing { reason: format!("{} engine call(s) failed", r.errors) }
        } else if r.stalled_ms >= cfg.stall_ms {
            LocalVerdict::Slow { reason: format!("no engine call returned for {} ms", r.stalled_ms) }
        } else if slow_sync || slow_write || slow_read {
            let reason = format!(
                "mean latency: synced writes {}, writes {}, reads {}; waiting {}/{}/{} ms (slow: {})",
                ms(r.sync_mean_ms),
                ms(r.write_mean_ms),
                ms(r.read_mean_ms),
                r.sync_waiting_ms,
                r.write_waiting_ms,
                r.read_waiting_ms,
                [(slow_sync, "synced writes"), (slow_write, "writes"), (slow_read, "reads")]
                    .iter()
                    .filter(|(slow, _)| *slow)
                    .map(|(_, name)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            LocalVerdict::Slow { reason }
        } else {
            LocalVerdict::Healthy
        };
        if verdict.is_unhealthy() {
            self.shed_until_ms = Some(r.at_ms.saturating_add(cfg.hold_ms));
        }
        verdict
    }

    /// Should the node hand away (and not keep) leaderships at `now_ms`? While unhealthy,
    /// for `hold_ms` after, and for good once failing.
    pub fn shedding(&self, now_ms: u64) -> bool {
        self.failing || self.shed_until_ms.is_some_and(|until| now_ms < until)
    }

    /// Has the disk failed a call (the node should stop once it leads nothing)?
    pub fn failing(&self) -> bool {
        self.failing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(at_ms: u64) -> LocalReading {
        LocalReading {
            at_ms,
            stalled_ms: 0,
            sync_mean_ms: Some(2.0),
            write_mean_ms: Some(0.05),
            read_mean_ms: Some(0.02),
            errors: 0,
            ..LocalReading::default()
        }
    }

    fn warmed() -> LocalDetector {
        let mut d = LocalDetector::new(LocalConfig::default());
        for i in 0..100 {
            assert_eq!(d.observe(&healthy(i * 250)), LocalVerdict::Healthy);
        }
        d
    }

    #[test]
    fn a_stall_is_slow_at_once_and_held_after_it_ends() {
        let mut d = warmed();
        let at = 100 * 250;
        let stalled = LocalReading { stalled_ms: 1_200, sync_mean_ms: None, write_mean_ms: None, ..healthy(at) };
        assert!(matches!(d.observe(&stalled), LocalVerdict::Slow { .. }));
        assert!(d.shedding(at));
        assert_eq!(d.observe(&healthy(at + 250)), LocalVerdict::Healthy);
        assert!(d.shedding(at + 9_999), "held after the stall");
        assert!(!d.shedding(at + 10_000), "not for longer than hold-ms");
        assert!(!d.failing());
    }

    #[test]
    fn slow_writes_need_confirming_readings_and_do_not_become_the_norm() {
        let mut d = warmed();
        let slow = |at| LocalReading { write_mean_ms: Some(250.0), sync_mean_ms: Some(260.0), ..healthy(at) };
        let confirm = u64::from(LocalConfig::default().confirm_readings);
        for at in 0..confirm - 1 {
            assert_eq!(d.observe(&slow(at * 250)), LocalVerdict::Healthy, "reading {at} is not enough");
        }
        for at in confirm - 1..200 {
            assert!(matches!(d.observe(&slow(at * 250)), LocalVerdict::Slow { .. }), "reading {at}");
        }
        assert_eq!(d.observe(&healthy(200 * 250)), LocalVerdict::Healthy);
    }

    /// A +250 ms step on writes: calls return only every 250 ms, so most 100-ms readings see
    /// no return, but they see the wait; three readings confirm it. A single slow call, or
    /// waits under the floors, do not.
    #[test]
    fn a_step_is_confirmed_by_waits_within_three_readings() {
        let mut d = warmed();
        let base = 100 * 250;
        let step = [
            LocalReading {
                write_mean_ms: None,
                sync_mean_ms: None,
                write_waiting_ms: 100,
                sync_waiting_ms: 100,
                ..healthy(0)
            },
            LocalReading {
                write_mean_ms: None,
                sync_mean_ms: None,
                write_waiting_ms: 200,
                sync_waiting_ms: 200,
                ..healthy(0)
            },
            LocalReading {
                write_mean_ms: Some(250.0),
                sync_mean_ms: Some(251.0),
                write_waiting_ms: 50,
                sync_waiting_ms: 50,
                ..healthy(0)
            },
        ];
        for (i, r) in step.iter().enumerate() {
            let r = LocalReading { at_ms: base + i as u64 * 100, ..*r };
            let v = d.observe(&r);
            assert_eq!(v.is_unhealthy(), i == 2, "reading {i}: {v:?}");
        }
        let mut d = warmed();
        let one_slow = LocalReading { write_waiting_ms: 180, sync_waiting_ms: 180, ..healthy(base) };
        assert_eq!(d.observe(&one_slow), LocalVerdict::Healthy);
        let returned = LocalReading { write_mean_ms: Some(190.0), ..healthy(base + 100) };
        assert_eq!(d.observe(&returned), LocalVerdict::Healthy, "two slow readings are not three");
        for i in 0..400 {
            let r = LocalReading {
                write_waiting_ms: 40,
                sync_waiting_ms: 90,
                read_waiting_ms: 45,
                ..healthy(base + 200 + i * 100)
            };
            assert_eq!(d.observe(&r), LocalVerdict::Healthy, "waits under the floors, reading {i}");
        }
    }

    #[test]
    fn slow_reads_alone_are_slow() {
        let mut d = warmed();
        let slow = |at| LocalReading { read_mean_ms: Some(200.0), ..healthy(at) };
        for at in 0..u64::from(LocalConfig::default().confirm_readings) - 1 {
            d.observe(&slow(at * 250));
        }
        assert!(matches!(d.observe(&slow(1_000)), LocalVerdict::Slow { reason } if reason.contains("reads")));
    }

    #[test]
    fn an_error_is_failing_for_good() {
        let mut d = warmed();
        let err = LocalReading { errors: 1, ..healthy(0) };
        assert!(matches!(d.observe(&err), LocalVerdict::Failing { .. }));
        assert!(matches!(d.observe(&healthy(250)), LocalVerdict::Failing { .. }));
        assert!(d.failing() && d.shedding(1_000_000));
    }

    /// Noise that is not a failing disk: a busy neighbour making reads and writes a few
    /// times slower (CPU contention), a fsync burst under compaction, a recovering peer's
    /// catch-up reads; none passes the floors, none sheds a leadership.
    #[test]
    fn noise_stays_healthy() {
        let mut d = warmed();
        let noisy = [
            LocalReading { read_mean_ms: Some(4.0), write_mean_ms: Some(3.0), ..healthy(0) },
            LocalReading { sync_mean_ms: Some(60.0), stalled_ms: 80, ..healthy(0) },
            LocalReading { read_mean_ms: Some(12.0), ..healthy(0) },
            LocalReading { sync_mean_ms: None, write_mean_ms: None, read_mean_ms: None, ..healthy(0) },
        ];
        for (i, r) in noisy.iter().cycle().take(400).enumerate() {
            let r = LocalReading { at_ms: 100_000 + i as u64 * 250, ..*r };
            assert_eq!(d.observe(&r), LocalVerdict::Healthy, "reading {i}: {r:?}");
        }
        assert!(!d.shedding(300_000));
    }

    #[test]
    fn a_slow_disk_from_the_start_is_caught_by_the_floor() {
        let mut d = LocalDetector::new(LocalConfig::default());
        let slow = |at| LocalReading { sync_mean_ms: Some(400.0), ..healthy(at) };
        for at in 0..u64::from(LocalConfig::default().confirm_readings) - 1 {
            d.observe(&slow(at * 250));
        }
        assert!(matches!(d.observe(&slow(1_000)), LocalVerdict::Slow { .. }));
    }

    #[test]
    fn config_ranges_are_checked() {
        assert!(LocalConfig::default().validate().is_ok());
        assert!(LocalConfig { slow_factor: 0.0, ..LocalConfig::default() }.validate().is_err());
        assert!(LocalConfig { history_weight: 1.5, ..LocalConfig::default() }.validate().is_err());
        assert!(LocalConfig { stall_ms: 0, ..LocalConfig::default() }.validate().is_err());
    }
}
