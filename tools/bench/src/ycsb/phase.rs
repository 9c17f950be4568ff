//! One phase of a YCSB run (load or run) on one target: `threads` threads, each with one
//! operation in flight, measured per operation type with hdrhistogram and per second; an open
//! loop follows each thread's schedule and measures from it (see `run` for the options).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::options::{RunOptions, MAX_SERIES_SECS};
use super::target::{Target, TargetError};
use super::{record_key, KeyChooser, Mix, OpKind};
use crate::datagen::{ValueGen, ValueKind};
use serde::Serialize;

/// Largest latency a per-second histogram records, µs (one minute).
const MAX_SERIES_LATENCY_US: u64 = 60_000_000;
/// Largest latency a histogram records, µs (one hour); longer ones are recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// How often a running phase reports its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// The records that exist: loaded ones, then inserted ones as their inserts finish (an
/// insert that failed is given up, so a later read of it may miss).
pub(super) struct Records {
    next_insert: AtomicU64,
    /// Every record below `.0` is finished; `.1` holds those finished out of order.
    finished: Mutex<(u64, BTreeSet<u64>)>,
    /// `finished.0`, readable without the lock (every read, update and scan asks it).
    count: AtomicU64,
}

impl Records {
    pub(super) fn new(loaded: u64) -> Self {
        Records {
            next_insert: AtomicU64::new(loaded),
            finished: Mutex::new((loaded, BTreeSet::new())),
            count: AtomicU64::new(loaded),
        }
    }

    pub(super) fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    pub(super) fn claim(&self) -> u64 {
        self.next_insert.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn finish(&self, n: u64) {
        let mut guard = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        let (below, ahead) = &mut *guard;
        ahead.insert(n);
        while ahead.remove(below) {
            *below += 1;
        }
        self.count.store(*below, Ordering::Release);
    }
}

pub(super) fn histogram(max_us: u64, sigfig: u8) -> Histogram<u64> {
    // The bounds and figures are constants within hdrhistogram's limits.
    Histogram::new_with_bounds(1, max_us, sigfig).unwrap_or_else(|e| unreachable!("histogram bounds: {e}"))
}

/// A second of the series: (ops, errors, latency histogram).
pub(super) type Second = (u64, u64, Histogram<u64>);

pub(super) fn second_histogram() -> Histogram<u64> {
    histogram(MAX_SERIES_LATENCY_US, 2)
}

/// One thread's measurements.
pub(super) struct Local {
    ops: Vec<Histogram<u64>>,
    errors: [u64; 5],
    misses: [u64; 5],
    /// The second this thread is in (since the phase start), added to the shared series
    /// when the thread moves on: the series costs one histogram per second, not per thread.
    current: Option<(u64, Second)>,
    /// When the thread stopped, seconds since the phase start.
    ended_secs: f64,
}

impl Local {
    pub(super) fn new() -> Self {
        Local {
            ops: (0..OpKind::ALL.len()).map(|_| histogram(MAX_LATENCY_US, 3)).collect(),
            errors: [0; 5],
            misses: [0; 5],
            current: None,
            ended_secs: 0.0,
        }
    }

    fn second(&mut self, s: u64, series: &Mutex<BTreeMap<u64, Second>>) -> Option<&mut Second> {
        if s as usize >= MAX_SERIES_SECS {
            return None;
        }
        if self.current.as_ref().is_some_and(|c| c.0 != s) {
            self.flush(series);
        }
        Some(&mut self.current.get_or_insert_with(|| (s, (0, 0, second_histogram()))).1)
    }

    fn flush(&mut self, series: &Mutex<BTreeMap<u64, Second>>) {
        if let Some((s, (n, e, h))) = self.current.take() {
            let mut series = series.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = series.entry(s).or_insert_with(|| (0, 0, second_histogram()));
            entry.0 += n;
            entry.1 += e;
            // Same bounds on both sides: adding cannot fail.
            entry.2.add(&h).unwrap_or_else(|e| unreachable!("histogram add: {e}"));
        }
    }
}

pub(super) struct Phase<'a> {
    pub(super) opts: &'a RunOptions,
    pub(super) mix: &'a Mix,
    pub(super) target: &'a dyn Target,
    pub(super) records: &'a Records,
    pub(super) load: bool,
}

/// A phase's times: its start, the warm-up measured from it, and when it ends.
#[derive(Clone, Copy)]
pub(super) struct Clock {
    pub(super) start: Instant,
    pub(super) warmup: Duration,
    pub(super) deadline: Option<Duration>,
}

/// State shared by a phase's threads.
pub(super) struct Shared {
    claimed: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
    /// Milliseconds since the phase start of the last success.
    last_success_ms: AtomicU64,
    aborted: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
    series: Mutex<BTreeMap<u64, Second>>,
}

/// An operation ready to time.
pub(super) struct Prepared {
    kind: OpKind,
    n: u64,
    key: Vec<u8>,
    value: Vec<u8>,
    scan_len: usize,
}

pub(super) enum Outcome {
    Done { missed: bool },
    Failed(TargetError),
}

impl Phase<'_> {
    pub(super) fn drive(&self, name: &str, progress: &dyn Progress) -> PhaseReport {
        let total = if self.load { self.opts.records } else { self.opts.ops };
        // The run phase measures after its warm-up, for `duration` seconds.
        let warmup = if self.load { Duration::ZERO } else { Duration::from_secs(self.opts.warmup_secs) };
        let deadline =
            (!self.load).then_some(self.opts.duration_secs).flatten().map(|d| warmup + Duration::from_secs(d));
        let shared = Shared {
            claimed: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            last_success_ms: AtomicU64::new(0),
            aborted: Mutex::new(None),
            last_error: Mutex::new(None),
            series: Mutex::new(BTreeMap::new()),
        };
        let start = Instant::now();
        let locals: Vec<Local> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.opts.threads)
                .map(|t| {
                    let shared = &shared;
                    s.spawn(move || self.worker(t as u64, Clock { start, warmup, deadline }, total, shared))
                })
                .collect();
            progress.start(name, if self.load { "load" } else { "run" }, total);
            while !handles.iter().all(|h| h.is_finished()) {
                progress.tick(shared.done.load(Ordering::Relaxed));
                std::thread::sleep(PROGRESS_INTERVAL);
            }
            progress.finish();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        // The last thread's end, not the progress loop's (which wakes up to 200 ms later).
        let elapsed = locals.iter().map(|l| l.ended_secs).fold(0.0, f64::max);
        self.merge(locals, elapsed, &shared)
    }

    /// This thread's `k`-th operation's scheduled start in an open-loop run phase: the threads'
    /// schedules interleave, together `rate` operations per second.
    pub(super) fn scheduled(&self, t: u64, k: u64, start: Instant) -> Option<Instant> {
        let rate = self.opts.rate_ops_per_sec.filter(|_| !self.load)?;
        let threads = self.opts.threads as f64;
        Some(start + Duration::from_secs_f64((k as f64 + t as f64 / threads) * threads / rate as f64))
    }

    fn worker(&self, t: u64, clock: Clock, total: u64, shared: &Shared) -> Local {
        let Clock { start, warmup, deadline } = clock;
        let seed = self.opts.seed.wrapping_add(t).wrapping_add(if self.load { 0 } else { 1 << 32 });
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut values = ValueGen::new(ValueKind::Compressible, self.opts.value_bytes, seed);
        let mut chooser = KeyChooser::new(self.mix.distribution, self.opts.records);
        let mut local = Local::new();
        let max_failing_ms = self.opts.max_failing_secs * 1000;
        let past_deadline = || deadline.is_some_and(|d| start.elapsed() >= d);
        for k in 0.. {
            if shared.stop.load(Ordering::Relaxed) || past_deadline() {
                break;
            }
            let slot = shared.claimed.fetch_add(1, Ordering::Relaxed);
            if slot >= total {
                break;
            }
            let kind = if self.load { OpKind::Insert } else { self.mix.next_op(&mut rng) };
            let prepared = self.prepare(kind, slot, &mut rng, &mut values, &mut chooser);
            let scheduled = self.scheduled(t, k, start);
            if let Some(wait) = scheduled.and_then(|at| at.checked_duration_since(Instant::now())) {
                std::thread::sleep(wait);
                if past_deadline() {
                    break;
                }
            }
            // Open loop: from the scheduled start, so time spent behind schedule counts.
            let began = scheduled.unwrap_or_else(Instant::now);
            let outcome = self.execute(&prepared);
            let latency_us = began.elapsed().as_micros() as u64;
            if kind == OpKind::Insert && !self.load {
                self.records.finish(prepared.n);
            }
            let phase_ms = start.elapsed().as_millis() as u64;
            let Some(now_ms) = phase_ms.checked_sub(warmup.as_millis() as u64) else {
                // Warming up: done, not measured.
                if matches!(outcome, Outcome::Done { .. }) {
                    shared.last_success_ms.fetch_max(phase_ms, Ordering::Relaxed);
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let sec = now_ms / 1000;
            match outcome {
                Outcome::Done { missed } => {
                    local.ops[kind.index()].saturating_record(latency_us.max(1));
                    local.misses[kind.index()] += u64::from(missed);
                    if let Some(s) = local.second(sec, &shared.series) {
                        s.0 += 1;
                        s.2.saturating_record(latency_us.max(1));
                    }
                    // A write only when the millisecond moved on: the line is shared by every thread.
                    if shared.last_success_ms.load(Ordering::Relaxed) < phase_ms {
                        shared.last_success_ms.fetch_max(phase_ms, Ordering::Relaxed);
                    }
                }
                Outcome::Failed(e) => {
                    local.errors[kind.index()] += 1;
                    if let Some(s) = local.second(sec, &shared.series) {
                        s.1 += 1;
                    }
                    let text = e.to_string();
                    let quiet_ms = phase_ms.saturating_sub(shared.last_success_ms.load(Ordering::Relaxed));
                    if quiet_ms >= max_failing_ms {
                        let mut a = shared.aborted.lock().unwrap_or_else(PoisonError::into_inner);
                        if a.is_none() {
                            *a = Some(format!(
                                "no operation succeeded for {} s (the target went away?); last error: {text}",
                                quiet_ms / 1000
                            ));
                        }
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                    *shared.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(text);
                }
            }
            shared.done.fetch_add(1, Ordering::Relaxed);
        }
        local.flush(&shared.series);
        local.ended_secs = start.elapsed().saturating_sub(warmup).as_secs_f64();
        local
    }

    /// Chooses the record, and makes its key and value, outside the timed span.
    fn prepare(
        &self,
        kind: OpKind,
        slot: u64,
        rng: &mut SmallRng,
        values: &mut ValueGen,
        chooser: &mut KeyChooser,
    ) -> Prepared {
        let n = match kind {
            OpKind::Insert if self.load => slot,
            OpKind::Insert => self.records.claim(),
            _ => chooser.choose(self.records.count(), rng),
        };
        let value = matches!(kind, OpKind::Insert | OpKind::Update | OpKind::ReadModifyWrite).then(|| values.value(n));
        let scan_len = if kind == OpKind::Scan { rng.random_range(1..=self.mix.max_scan_len) } else { 0 };
        Prepared { kind, n, key: record_key(&self.opts.key_prefix, n), value: value.unwrap_or_default(), scan_len }
    }

    fn execute(&self, p: &Prepared) -> Outcome {
        let t = self.target;
        let result: Result<bool, TargetError> = match p.kind {
            OpKind::Insert => t.write(&p.key, &p.value).map(|()| false),
            OpKind::Update => t.write(&p.key, &p.value).map(|()| false),
            OpKind::Read => t.read(&p.key).map(|found| !found),
            OpKind::Scan => t.scan(&p.key, p.scan_len).map(|got| got == 0),
            OpKind::ReadModifyWrite => t.read(&p.key).and_then(|found| t.write(&p.key, &p.value).map(|()| !found)),
        };
        match result {
            Ok(missed) => Outcome::Done { missed },
            Err(e) => Outcome::Failed(e),
        }
    }

    fn merge(&self, locals: Vec<Local>, elapsed: f64, shared: &Shared) -> PhaseReport {
        let mut ops: Vec<Histogram<u64>> = (0..OpKind::ALL.len()).map(|_| histogram(MAX_LATENCY_US, 3)).collect();
        let mut errors = [0u64; 5];
        let mut misses = [0u64; 5];
        let mut series = std::mem::take(&mut *shared.series.lock().unwrap_or_else(PoisonError::into_inner));
        // A second in which nothing finished (a stall) is in the series as zero.
        let last_second = (elapsed.floor() as u64).min(MAX_SERIES_SECS as u64 - 1);
        for s in 0..=last_second {
            series.entry(s).or_insert_with(|| (0, 0, second_histogram()));
        }
        for l in locals {
            for (i, h) in l.ops.iter().enumerate() {
                // Same bounds on both sides: adding cannot fail.
                ops[i].add(h).unwrap_or_else(|e| unreachable!("histogram add: {e}"));
                errors[i] += l.errors[i];
                misses[i] += l.misses[i];
            }
        }
        let mut operations = BTreeMap::new();
        for kind in OpKind::ALL {
            let (h, e) = (&ops[kind.index()], errors[kind.index()]);
            if h.is_empty() && e == 0 {
                continue;
            }
            operations.insert(
                kind.name().to_string(),
                OpReport {
                    count: h.len(),
                    errors: e,
                    misses: misses[kind.index()],
                    throughput_ops_per_sec: h.len() as f64 / elapsed.max(1e-9),
                    mean_us: if h.is_empty() { 0.0 } else { h.mean() },
                    p50_us: h.value_at_quantile(0.5),
                    p95_us: h.value_at_quantile(0.95),
                    p99_us: h.value_at_quantile(0.99),
                    p999_us: h.value_at_quantile(0.999),
                    max_us: h.max(),
                },
            );
        }
        let total_ops: u64 = ops.iter().map(Histogram::len).sum();
        let mut all = histogram(MAX_LATENCY_US, 3);
        for h in &ops {
            // Same bounds on both sides: adding cannot fail.
            all.add(h).unwrap_or_else(|e| unreachable!("histogram add: {e}"));
        }
        let series = series
            .into_iter()
            .map(|(second, (n, e, h))| SecondReport {
                second,
                ops: n,
                errors: e,
                p99_us: (!h.is_empty()).then(|| h.value_at_quantile(0.99)),
            })
            .collect();
        PhaseReport {
            ops: total_ops,
            errors: errors.iter().sum(),
            elapsed_secs: elapsed,
            throughput_ops_per_sec: total_ops as f64 / elapsed.max(1e-9),
            p50_us: all.value_at_quantile(0.5),
            p99_us: all.value_at_quantile(0.99),
            aborted: shared.aborted.lock().unwrap_or_else(PoisonError::into_inner).take(),
            last_error: shared.last_error.lock().unwrap_or_else(PoisonError::into_inner).take(),
            operations,
            series,
        }
    }
}

/// Latency figures of one operation type, µs.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct OpReport {
    /// Operations that succeeded.
    pub count: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Reads (and read-modify-writes) that found no record.
    pub misses: u64,
    /// Successful operations per second over the phase.
    pub throughput_ops_per_sec: f64,
    /// Mean latency.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// One second of a phase.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SecondReport {
    /// Seconds since the phase began.
    pub second: u64,
    /// Operations that succeeded in it.
    pub ops: u64,
    /// Operations that failed in it.
    pub errors: u64,
    /// 99th percentile latency of its successful operations, µs.
    pub p99_us: Option<u64>,
}

/// One phase on one target.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PhaseReport {
    /// Operations that succeeded.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Wall-clock seconds.
    pub elapsed_secs: f64,
    /// Successful operations per second.
    pub throughput_ops_per_sec: f64,
    /// Median latency over every operation type, µs.
    #[serde(default)]
    pub p50_us: u64,
    /// 99th percentile latency over every operation type, µs.
    #[serde(default)]
    pub p99_us: u64,
    /// Why the phase stopped early, if it did.
    pub aborted: Option<String>,
    /// The last error seen.
    pub last_error: Option<String>,
    /// Per operation type (the types the phase ran).
    pub operations: BTreeMap<String, OpReport>,
    /// Per second.
    pub series: Vec<SecondReport>,
}

/// Told how a phase goes (a progress bar, or nothing).
pub trait Progress {
    /// A phase of `target` with `total` operations begins.
    fn start(&self, target: &str, phase: &str, total: u64);
    /// `done` operations have finished.
    fn tick(&self, done: u64);
    /// The phase ended.
    fn finish(&self);
}

/// No progress reports.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: &str, _: &str, _: u64) {}
    fn tick(&self, _: u64) {}
    fn finish(&self) {}
}
