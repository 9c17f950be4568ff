//! Fault injection: a wrapper engine that adds latency and errors to chosen operation classes.
//!
//! Off unless configured: a [`FaultyEngine`] whose [`FaultInjector`] holds the default
//! [`FaultConfig`] adds nothing. The shapes, per operation class (reads, unsynced writes,
//! synced writes):
//!
//! - **latency step / ramp**: extra latency, fixed or ramping linearly from the moment the
//!   configuration is set (a disk that degrades gradually);
//! - **stall**: every operation waits until `stall-ms` after the configuration was set (I/O
//!   blocked for a while, then back);
//! - **partial**: only a fraction `slow-rate` of the operations get the latency (a disk with
//!   some bad regions, or a RAID member dragging);
//! - **errors at a rate** (read, write or fsync errors): [`EngineError::Injected`];
//! - **a full disk** (`disk-full`): every write is refused with [`EngineError::NoSpace`] as
//!   ENOSPC would, reads go on;
//! - **a disk filling up** (`free-space-bytes`): `StorageStats::available_bytes` reports that
//!   much free, whatever the file system says (the node's reserve reacts to it).
//!
//! Random draws (errors, partial) come from a seeded RNG so that a run can be replayed. The
//! demo, the scenarios, the chaos tests and the failure-model training change the
//! configuration at run time through a shared [`FaultInjector`] (a node's admin API,
//! `presage-ctl faults`).

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
/// Longest stall a rule may set, in milliseconds (2 minutes).
pub const MAX_STALL_MS: u64 = 120_000;

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
    /// Operations wait until this long after the rule was set, in milliseconds (a stall).
    pub stall_ms: u64,
    /// Partial latency: the probability in `[0, 1]` that an operation gets the extra latency
    /// (`None`: every operation does).
    pub slow_rate: Option<f64>,
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
            ..Self::default()
        }
    }

    /// Every operation blocked until `stall` after the rule is set.
    pub fn stall(stall: Duration) -> Self {
        FaultRule { stall_ms: u64::try_from(stall.as_millis()).unwrap_or(u64::MAX), ..Self::default() }
    }

    /// The latency of `self` for a fraction `rate` of the operations only.
    pub fn partial(self, rate: f64) -> Self {
        FaultRule { slow_rate: Some(rate), ..self }
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
        self.latency_start_us > 0 || self.latency_end_us > 0 || self.error_rate > 0.0 || self.stall_ms > 0
    }

    /// Fails on a rate outside `[0, 1]`, a latency above [`MAX_INJECTED_LATENCY_US`] or a
    /// stall above [`MAX_STALL_MS`].
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(EngineError::Config(format!("error-rate {} is outside [0, 1]", self.error_rate)));
        }
        if let Some(r) = self.slow_rate.filter(|r| !(0.0..=1.0).contains(r)) {
            return Err(EngineError::Config(format!("slow-rate {r} is outside [0, 1]")));
        }
        if self.stall_ms > MAX_STALL_MS {
            return Err(EngineError::Config(format!(
                "stall of {}ms exceeds the limit of {MAX_STALL_MS}ms",
                self.stall_ms
            )));
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
    /// The disk is full: every write (synced or not) is refused with
    /// [`EngineError::NoSpace`]; reads go on.
    pub disk_full: bool,
    /// Seed of the random draws (errors, partial latency).
    pub seed: u64,
    /// Reports this many bytes free on the disk (`StorageStats::available_bytes`), whatever
    /// the file system says: a disk filling up, without filling one.
    pub free_space_bytes: Option<u64>,
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

    /// Applies the faults of `class` to one operation: a full disk refuses a write at once;
    /// otherwise it waits out a stall, sleeps for the extra latency (for the drawn share of
    /// operations under partial latency), then fails with the configured probability.
    pub fn before(&self, class: OpClass) -> Result<()> {
        let (delay, fail) = {
            let mut s = self.lock();
            if s.config.disk_full && class != OpClass::Read {
                s.injected_errors[class.index()] += 1;
                return Err(EngineError::NoSpace);
            }
            let rule = *s.config.rule(class);
            if !rule.is_active() {
                return Ok(());
            }
            let elapsed = s.set_at.elapsed();
            let stall = Duration::from_millis(rule.stall_ms).saturating_sub(elapsed);
            let slowed = rule.slow_rate.is_none_or(|r| r > 0.0 && s.rng.random_bool(r));
            let latency = if slowed { rule.latency_at(elapsed) } else { Duration::ZERO };
            let fail = rule.error_rate > 0.0 && s.rng.random_bool(rule.error_rate);
            if fail {
                s.injected_errors[class.index()] += 1;
            }
            (stall + latency, fail)
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

    fn sync_wal(&self) -> Result<()> {
        self.faults.before(OpClass::Sync)?;
        self.inner.sync_wal()
    }

    fn storage_stats(&self) -> StorageStats {
        let mut stats = self.inner.storage_stats();
        if let Some(free) = self.faults.config().free_space_bytes {
            stats.available_bytes = Some(free);
        }
        stats
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
    fn a_stall_blocks_every_operation_until_it_ends() {
        let inj = FaultInjector::new();
        inj.set(FaultConfig { sync: FaultRule::stall(Duration::from_millis(150)), ..FaultConfig::default() })
            .expect("valid");
        let started = Instant::now();
        inj.before(OpClass::Sync).expect("no error");
        let first = started.elapsed();
        assert!(first >= Duration::from_millis(150), "the first sync waited out the stall: {first:?}");
        let again = Instant::now();
        inj.before(OpClass::Sync).expect("no error");
        assert!(again.elapsed() < Duration::from_millis(100), "the stall is over");
        let read = Instant::now();
        inj.before(OpClass::Read).expect("reads are not stalled");
        assert!(read.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn partial_latency_slows_only_its_share_of_operations() {
        let inj = FaultInjector::new();
        let rule = FaultRule::fixed_latency(Duration::from_millis(2)).partial(0.25);
        inj.set(FaultConfig { write: rule, seed: 3, ..FaultConfig::default() }).expect("valid");
        let slow = (0..200)
            .filter(|_| {
                let t = Instant::now();
                inj.before(OpClass::Write).expect("no error");
                t.elapsed() >= Duration::from_millis(2)
            })
            .count();
        assert!((25..=75).contains(&slow), "about a quarter of 200 slowed, got {slow}");
        let none = FaultRule::fixed_latency(Duration::from_millis(50)).partial(0.0);
        inj.set(FaultConfig { write: none, ..FaultConfig::default() }).expect("valid");
        let t = Instant::now();
        inj.before(OpClass::Write).expect("no error");
        assert!(t.elapsed() < Duration::from_millis(50), "a rate of 0 slows nothing");
    }

    #[test]
    fn a_full_disk_refuses_writes_and_serves_reads() {
        let inj = FaultInjector::new();
        inj.set(FaultConfig { disk_full: true, ..FaultConfig::default() }).expect("valid");
        assert!(matches!(inj.before(OpClass::Write), Err(EngineError::NoSpace)));
        assert!(matches!(inj.before(OpClass::Sync), Err(EngineError::NoSpace)));
        assert!(inj.before(OpClass::Read).is_ok());
        assert_eq!(inj.injected_errors(OpClass::Sync), 1);
        // Through an engine: the data already there stays readable.
        let engine = crate::MemEngine::new();
        let mut wb = WriteBatch::new();
        wb.put(Cf::Data, b"k".to_vec(), b"v".to_vec());
        engine.write(&wb, WriteOptions::SYNC).expect("write before");
        let faulty = FaultyEngine::new(engine, Arc::new(inj));
        assert!(matches!(faulty.write(&wb, WriteOptions::NO_SYNC), Err(EngineError::NoSpace)));
        assert_eq!(faulty.get(Cf::Data, b"k").expect("read"), Some(b"v".to_vec()));
        faulty.faults().clear();
        faulty.write(&wb, WriteOptions::SYNC).expect("space again");
    }

    #[test]
    fn bad_rates_are_refused() {
        let inj = FaultInjector::new();
        assert!(inj.set(FaultConfig { read: FaultRule::errors(1.5), ..FaultConfig::default() }).is_err());
        assert!(inj.set(FaultConfig { read: FaultRule::errors(f64::NAN), ..FaultConfig::default() }).is_err());
        let partial = FaultRule::fixed_latency(Duration::from_millis(1)).partial(-0.1);
        assert!(inj.set(FaultConfig { read: partial, ..FaultConfig::default() }).is_err());
        let long = FaultRule::stall(Duration::from_millis(MAX_STALL_MS + 1));
        assert!(inj.set(FaultConfig { sync: long, ..FaultConfig::default() }).is_err());
        let json = r#"{"sync": {"stall-ms": 500}, "write": {"latency-start-us": 10, "latency-end-us": 10, "slow-rate": 0.5}, "disk-full": false}"#;
        let parsed: FaultConfig = serde_json::from_str(json).expect("the admin API's JSON");
        assert_eq!((parsed.sync.stall_ms, parsed.write.slow_rate), (500, Some(0.5)));
    }
}
