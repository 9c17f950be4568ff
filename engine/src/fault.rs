//! Fault injection: a wrapper engine that adds latency and errors to chosen operation classes.
//!
//! Off unless configured: a [`FaultyEngine`] whose [`FaultInjector`] holds the default
//! [`FaultConfig`] adds nothing. Latency is fixed or ramps linearly from the moment the
//! configuration is set (a disk that degrades gradually); errors are drawn from a seeded RNG so
//! that a run can be replayed. The demo, the chaos tests and the failure-model training
//! change the configuration at run time through a shared [`FaultInjector`].

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::engine::{Engine, Reader};
use crate::error::{EngineError, Result};
use crate::types::{
    Cf, KeyRange, KvPair, OpClass, RangeStats, ScanLimit, ScanOrder, ScanPage, StorageStats, WriteBatch, WriteOptions,
};

/// Largest extra latency a rule may inject into one operation, in microseconds (10 s).
pub const MAX_INJECTED_LATENCY_US: u64 = 10_000_000;

/// Faults for one operation class. Extra latency goes from `latency_start_us` to
/// `latency_end_us` linearly over `ramp_ms` after the rule is set, then stays at
/// `latency_end_us`; equal values (or `ramp_ms == 0`) give a fixed latency.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct FaultRule {
    /// Extra latency when the rule is set, in microseconds.
    pub latency_start_us: u64,
    /// Extra latency at the end of the ramp, in microseconds.
    pub latency_end_us: u64,
    /// Length of the ramp, in milliseconds.
    pub ramp_ms: u64,
    /// Probability in `[0, 1]` that an operation fails with [`EngineError::Injected`].
    pub error_rate: f64,
}

impl FaultRule {
    /// A fixed extra latency.
    pub fn fixed_latency(latency: Duration) -> Self {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        FaultRule { latency_start_us: us, latency_end_us: us, ..Self::default() }
    }

    /// A latency ramp from `start` to `end` over `ramp`.
    pub fn ramp(start: Duration, end: Duration, ramp: Duration) -> Self {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        FaultRule {
            latency_start_us: us(start),
            latency_end_us: us(end),
            ramp_ms: u64::try_from(ramp.as_millis()).unwrap_or(u64::MAX),
            error_rate: 0.0,
        }
    }

    /// Fails operations with probability `rate`.
    pub fn errors(rate: f64) -> Self {
        FaultRule { error_rate: rate, ..Self::default() }
    }

    /// The extra latency `elapsed` after the rule was set.
    pub fn latency_at(&self, elapsed: Duration) -> Duration {
        let (a, b) = (self.latency_start_us, self.latency_end_us);
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if self.ramp_ms == 0 || elapsed_ms >= self.ramp_ms {
            return Duration::from_micros(b);
        }
        // Linear interpolation in integer arithmetic (no float rounding surprises).
        let frac_num = u128::from(elapsed_ms);
        let frac_den = u128::from(self.ramp_ms);
        let us = if b >= a {
            u128::from(a) + u128::from(b - a) * frac_num / frac_den
        } else {
            u128::from(a) - u128::from(a - b) * frac_num / frac_den
        };
        Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }

    fn is_active(&self) -> bool {
        self.latency_start_us > 0 || self.latency_end_us > 0 || self.error_rate > 0.0
    }

    /// Fails on an error rate outside `[0, 1]` or a latency above [`MAX_INJECTED_LATENCY_US`].
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(EngineError::Config(format!("error-rate {} is outside [0, 1]", self.error_rate)));
        }
        let worst = self.latency_start_us.max(self.latency_end_us);
        if worst > MAX_INJECTED_LATENCY_US {
            return Err(EngineError::Config(format!(
                "injected latency {worst}us exceeds the limit of {MAX_INJECTED_LATENCY_US}us"
            )));
        }
        Ok(())
    }
}

/// The faults of every class, and the RNG seed for error draws.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct FaultConfig {
    /// Faults on reads.
    pub read: FaultRule,
    /// Faults on unsynced writes.
    pub write: FaultRule,
    /// Faults on synced writes.
    pub sync: FaultRule,
    /// Seed of the error draws.
    pub seed: u64,
}

impl FaultConfig {
    /// The rule of `class`.
    pub fn rule(&self, class: OpClass) -> &FaultRule {
        match class {
            OpClass::Read => &self.read,
            OpClass::Write => &self.write,
            OpClass::Sync => &self.sync,
        }
    }

    /// Validates every rule.
    pub fn validate(&self) -> Result<()> {
        OpClass::ALL.iter().try_for_each(|c| self.rule(*c).validate())
    }
}

struct InjectorState {
    config: FaultConfig,
    set_at: Instant,
    rng: SmallRng,
    injected_errors: [u64; 3],
}

/// Shared, run-time adjustable fault configuration.
pub struct FaultInjector {
    state: Mutex<InjectorState>,
}

impl Default for FaultInjector {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for FaultInjector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultInjector").field("config", &self.config()).finish()
    }
}

impl FaultInjector {
    /// An injector that injects nothing.
    pub fn new() -> Self {
        FaultInjector {
            state: Mutex::new(InjectorState {
                config: FaultConfig::default(),
                set_at: Instant::now(),
                rng: SmallRng::seed_from_u64(0),
                injected_errors: [0; 3],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InjectorState> {
        // The state stays consistent under panics (plain values), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the configuration; ramps restart now and the RNG is reseeded.
    pub fn set(&self, config: FaultConfig) -> Result<()> {
        config.validate()?;
        let mut s = self.lock();
        s.config = config;
        s.set_at = Instant::now();
        s.rng = SmallRng::seed_from_u64(config.seed);
        Ok(())
    }

    /// Removes every fault.
    pub fn clear(&self) {
        let mut s = self.lock();
        s.config = FaultConfig::default();
    }

    /// The configuration in force.
    pub fn config(&self) -> FaultConfig {
        self.lock().config
    }

    /// Errors injected so far into `class`.
    pub fn injected_errors(&self, class: OpClass) -> u64 {
        self.lock().injected_errors[class.index()]
    }

    /// Applies the faults of `class` to one operation: sleeps for the extra latency, then
    /// fails with the configured probability.
    pub fn before(&self, class: OpClass) -> Result<()> {
        let (delay, fail) = {
            let mut s = self.lock();
            let rule = *s.config.rule(class);
            if !rule.is_active() {
                return Ok(());
            }
            let delay = rule.latency_at(s.set_at.elapsed());
            let fail = rule.error_rate > 0.0 && s.rng.random_bool(rule.error_rate);
            if fail {
                s.injected_errors[class.index()] += 1;
            }
            (delay, fail)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if fail {
            return Err(EngineError::Injected { class: class.name() });
        }
        Ok(())
    }
}

/// An engine (or a snapshot of one) with faults injected in front of every operation of `E`.
#[derive(Clone)]
pub struct FaultyEngine<E> {
    inner: E,
    faults: Arc<FaultInjector>,
}

impl<E: Engine> FaultyEngine<E> {
    /// Wraps `inner`; `faults` may be shared with an admin endpoint that changes it.
    pub fn new(inner: E, faults: Arc<FaultInjector>) -> Self {
        FaultyEngine { inner, faults }
    }

    /// The wrapped engine.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// The shared fault configuration.
    pub fn faults(&self) -> &Arc<FaultInjector> {
        &self.faults
    }
}

impl<R: Reader> Reader for FaultyEngine<R> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.faults.before(OpClass::Read)?;
        self.inner.get(cf, key)
    }

    fn scan(&self, cf: Cf, range: &KeyRange, order: ScanOrder, limit: ScanLimit) -> Result<ScanPage> {
        self.faults.before(OpClass::Read)?;
        self.inner.scan(cf, range, order, limit)
    }
}

impl<E: Engine> Engine for FaultyEngine<E> {
    type Snapshot = FaultyEngine<E::Snapshot>;

    fn write(&self, batch: &WriteBatch, opts: WriteOptions) -> Result<()> {
        self.faults.before(if opts.sync { OpClass::Sync } else { OpClass::Write })?;
        self.inner.write(batch, opts)
    }

    fn snapshot(&self) -> Self::Snapshot {
        FaultyEngine { inner: self.inner.snapshot(), faults: Arc::clone(&self.faults) }
    }

    fn approximate_stats(&self, cf: Cf, range: &KeyRange) -> Result<RangeStats> {
        self.inner.approximate_stats(cf, range)
    }

    fn replace_range(&self, cf: Cf, range: &KeyRange, pairs: &mut dyn Iterator<Item = Result<KvPair>>) -> Result<u64> {
        self.faults.before(OpClass::Sync)?;
        self.inner.replace_range(cf, range, pairs)
    }

    fn flush(&self) -> Result<()> {
        self.faults.before(OpClass::Sync)?;
        self.inner.flush()
    }

    fn storage_stats(&self) -> StorageStats {
        self.inner.storage_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_interpolates_and_holds() {
        let r = FaultRule::ramp(Duration::from_millis(1), Duration::from_millis(11), Duration::from_secs(10));
        assert_eq!(r.latency_at(Duration::ZERO), Duration::from_millis(1));
        assert_eq!(r.latency_at(Duration::from_secs(5)), Duration::from_millis(6));
        assert_eq!(r.latency_at(Duration::from_secs(10)), Duration::from_millis(11));
        assert_eq!(r.latency_at(Duration::from_secs(100)), Duration::from_millis(11));
        let down = FaultRule::ramp(Duration::from_millis(10), Duration::ZERO, Duration::from_secs(10));
        assert_eq!(down.latency_at(Duration::from_secs(5)), Duration::from_millis(5));
        let fixed = FaultRule::fixed_latency(Duration::from_micros(250));
        assert_eq!(fixed.latency_at(Duration::from_secs(3)), Duration::from_micros(250));
    }

    #[test]
    fn error_draws_are_seeded() {
        let draws = |seed| {
            let inj = FaultInjector::new();
            inj.set(FaultConfig { write: FaultRule::errors(0.3), seed, ..FaultConfig::default() }).expect("valid");
            (0..200).map(|_| inj.before(OpClass::Write).is_err()).collect::<Vec<_>>()
        };
        let a = draws(7);
        assert_eq!(a, draws(7), "same seed, same faults");
        assert_ne!(a, draws(8), "another seed, other faults");
        let failed = a.iter().filter(|f| **f).count();
        assert!((30..=90).contains(&failed), "about 30% of 200 should fail, got {failed}");
    }

    #[test]
    fn only_the_configured_class_is_hit() {
        let inj = FaultInjector::new();
        inj.set(FaultConfig { sync: FaultRule::errors(1.0), ..FaultConfig::default() }).expect("valid");
        assert!(inj.before(OpClass::Read).is_ok());
        assert!(inj.before(OpClass::Write).is_ok());
        assert!(matches!(inj.before(OpClass::Sync), Err(EngineError::Injected { class: "sync" })));
        assert_eq!(inj.injected_errors(OpClass::Sync), 1);
        inj.clear();
        assert!(inj.before(OpClass::Sync).is_ok());
    }

    #[test]
    fn bad_rates_are_refused() {
        let inj = FaultInjector::new();
        assert!(inj.set(FaultConfig { read: FaultRule::errors(1.5), ..FaultConfig::default() }).is_err());
        assert!(inj.set(FaultConfig { read: FaultRule::errors(f64::NAN), ..FaultConfig::default() }).is_err());
    }
}
