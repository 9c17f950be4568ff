//! The driver: for each target in turn, a load phase (insert `records` records) and a run
//! phase (`ops` operations of the workload's mix, or until `duration`), each on `threads`
//! threads with one operation in flight each, measured per operation type with hdrhistogram
//! and per second for the time series; then every figure divided by the first target's,
//! measured in the same invocation.
//!
//! The load phase is a closed loop (each thread issues its next operation when the last one
//! returns). The run phase is too, unless `rate_ops_per_sec` makes it an open loop: each
//! thread then follows a fixed schedule (the threads' interleaved, `rate` in all) and every
//! latency is measured from the operation's scheduled start, so a target that falls behind
//! shows it in its latencies instead of quietly receiving fewer requests. The run phase's
//! first `warmup_secs` run but are not measured; its `duration` starts after them.
//!
//! A failing operation is counted, not fatal. A phase stops early when no operation has
//! succeeded for `max_failing_secs` (the target went away); the report says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::target::{
    client_config, ClusterTarget, EtcdTarget, RawEngineTarget, RespTarget, Target, TargetError, TargetSpec,
    ThreeEnginesTarget,
};
use super::{record_key, KeyChooser, KeyDistribution, Mix, OpKind, Workload};
use crate::datagen::{ValueGen, ValueKind};

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
/// Largest latency a per-second histogram records, µs (one minute).
const MAX_SERIES_LATENCY_US: u64 = 60_000_000;
/// Largest latency a histogram records, µs (one hour); longer ones are recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

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

/// One figure over the baseline's.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct OpRatio {
    /// Throughput over the baseline's.
    pub throughput: f64,
    /// Median latency over the baseline's.
    pub p50: f64,
    /// 99th percentile latency over the baseline's.
    pub p99: f64,
}

/// A target's run phase over the baseline's (the first target's).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Ratios {
    /// The baseline target.
    pub baseline: String,
    /// Run-phase throughput over the baseline's.
    pub throughput: f64,
    /// Per operation type both ran.
    pub operations: BTreeMap<String, OpRatio>,
}

/// One target's results.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct TargetReport {
    /// The target as given to `--target` (`raw-engine`, `etcd:HOST:PORT`, ...).
    pub target: String,
    /// Why the target could not be used at all, if so (then there are no phases).
    pub error: Option<String>,
    /// The load phase.
    pub load: Option<PhaseReport>,
    /// The run phase.
    pub run: Option<PhaseReport>,
    /// The run phase against the first target (None for the first).
    pub vs_baseline: Option<Ratios>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// What ran.
    pub options: RunOptions,
    /// The operation mix and distribution used.
    pub mix: Mix,
    /// Every target, in the order given; the first is the baseline.
    pub targets: Vec<TargetReport>,
}

/// Where targets live and what starts a playground.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Folder for temporary databases and playgrounds.
    pub work_dir: PathBuf,
    /// The `presage` binary (for `playground`).
    pub presage_binary: PathBuf,
}

/// Makes (and on drop stops) each target in turn.
pub(crate) fn open(
    spec: &TargetSpec,
    opts: &RunOptions,
    env: &Environment,
    rt: &tokio::runtime::Handle,
) -> Result<Box<dyn Target>, TargetError> {
    let timeout = Duration::from_millis(opts.request_timeout_ms);
    let cfg = client_config(timeout);
    let connections = opts.connections.unwrap_or(opts.threads);
    Ok(match spec {
        TargetSpec::RawEngine => Box::new(RawEngineTarget::open(&env.work_dir)?),
        TargetSpec::ThreeEngines => Box::new(ThreeEnginesTarget::open(&env.work_dir)?),
        TargetSpec::Resp(at) => {
            Box::new(RespTarget::open(rt, at, connections, timeout, env.presage_binary.clone(), &env.work_dir)?)
        }
        TargetSpec::Etcd(addrs) => Box::new(EtcdTarget::open(rt, addrs, connections, timeout)?),
        TargetSpec::Playground | TargetSpec::PlaygroundInsecure => {
            let insecure = *spec == TargetSpec::PlaygroundInsecure;
            Box::new(ClusterTarget::playground(rt, env.presage_binary.clone(), &env.work_dir, cfg, insecure)?)
        }
        TargetSpec::Cluster(addrs) => Box::new(ClusterTarget::connect(rt, addrs, cfg)?),
    })
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

/// How often a running phase reports its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// Runs every target in turn, telling `progress` how each phase goes.
pub fn run(
    opts: &RunOptions,
    targets: &[TargetSpec],
    env: &Environment,
    progress: &dyn Progress,
) -> Result<BenchReport, BadOptions> {
    opts.validate()?;
    if targets.is_empty() {
        return Err(BadOptions("give at least one --target".into()));
    }
    let rt = client_runtime()?;
    let mix = opts.mix();
    let mut reports: Vec<TargetReport> = Vec::new();
    for spec in targets {
        let name = spec.name();
        let mut report = TargetReport { target: name.clone(), error: None, load: None, run: None, vs_baseline: None };
        match open(spec, opts, env, rt.handle()) {
            Err(e) => {
                tracing::error!(target = %name, error = %e, "benchmark target unusable");
                report.error = Some(e.to_string());
            }
            Ok(target) => {
                let (load, mut runs) = measure(target.as_ref(), &name, opts, &[opts.workload], progress);
                report.load = Some(load);
                report.run = runs.pop();
                // Dropping the target stops a playground before the next target starts.
                drop(target);
            }
        }
        reports.push(report);
    }
    let baseline = reports.first().and_then(|b| b.run.clone().map(|r| (b.target.clone(), r)));
    if let Some((base_name, base)) = baseline {
        for r in reports.iter_mut().skip(1) {
            r.vs_baseline = r.run.as_ref().map(|run| ratios(&base_name, &base, run));
        }
    }
    Ok(BenchReport { options: opts.clone(), mix, targets: reports })
}

/// The runtime the network targets' clients run on (two workers: the machine's cores go to
/// the client threads and the target).
pub(crate) fn client_runtime() -> Result<tokio::runtime::Runtime, BadOptions> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BadOptions(format!("starting the client runtime: {e}")))
}

/// Measures one target: its load phase, then one run phase per workload in `workloads`, in
/// order, on the same records (`opts.workload` is only used for the load phase's name).
pub(crate) fn measure(
    target: &dyn Target,
    name: &str,
    opts: &RunOptions,
    workloads: &[Workload],
    progress: &dyn Progress,
) -> (PhaseReport, Vec<PhaseReport>) {
    let keys = Records::new(opts.records);
    let mix = opts.mix();
    let load = Phase { opts, mix: &mix, target, records: &keys, load: true }.drive(name, progress);
    let runs = workloads
        .iter()
        .map(|w| {
            let mix = RunOptions { workload: *w, ..opts.clone() }.mix();
            Phase { opts, mix: &mix, target, records: &keys, load: false }.drive(name, progress)
        })
        .collect();
    (load, runs)
}

fn div(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn ratios(base_name: &str, base: &PhaseReport, run: &PhaseReport) -> Ratios {
    let operations = run
        .operations
        .iter()
        .filter_map(|(k, o)| {
            let b = base.operations.get(k)?;
            Some((
                k.clone(),
                OpRatio {
                    throughput: div(o.throughput_ops_per_sec, b.throughput_ops_per_sec),
                    p50: div(o.p50_us as f64, b.p50_us as f64),
                    p99: div(o.p99_us as f64, b.p99_us as f64),
                },
            ))
        })
        .collect();
    Ratios {
        baseline: base_name.to_string(),
        throughput: div(run.throughput_ops_per_sec, base.throughput_ops_per_sec),
        operations,
    }
}

/// The records that exist: loaded ones, then inserted ones as their inserts finish (an
/// insert that failed is given up, so a later read of it may miss).
struct Records {
    next_insert: AtomicU64,
    /// Every record below `.0` is finished; `.1` holds those finished out of order.
    finished: Mutex<(u64, BTreeSet<u64>)>,
    /// `finished.0`, readable without the lock (every read, update and scan asks it).
    count: AtomicU64,
}

impl Records {
    fn new(loaded: u64) -> Self {
        Records {
            next_insert: AtomicU64::new(loaded),
            finished: Mutex::new((loaded, BTreeSet::new())),
            count: AtomicU64::new(loaded),
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    fn claim(&self) -> u64 {
        self.next_insert.fetch_add(1, Ordering::Relaxed)
    }

    fn finish(&self, n: u64) {
        let mut guard = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        let (below, ahead) = &mut *guard;
        ahead.insert(n);
        while ahead.remove(below) {
            *below += 1;
        }
        self.count.store(*below, Ordering::Release);
    }
}

fn histogram(max_us: u64, sigfig: u8) -> Histogram<u64> {
    // The bounds and figures are constants within hdrhistogram's limits.
    Histogram::new_with_bounds(1, max_us, sigfig).unwrap_or_else(|e| unreachable!("histogram bounds: {e}"))
}

/// A second of the series: (ops, errors, latency histogram).
type Second = (u64, u64, Histogram<u64>);

fn second_histogram() -> Histogram<u64> {
    histogram(MAX_SERIES_LATENCY_US, 2)
}

/// One thread's measurements.
struct Local {
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
    fn new() -> Self {
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

struct Phase<'a> {
    opts: &'a RunOptions,
    mix: &'a Mix,
    target: &'a dyn Target,
    records: &'a Records,
    load: bool,
}

/// A phase's times: its start, the warm-up measured from it, and when it ends.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    warmup: Duration,
    deadline: Option<Duration>,
}

/// State shared by a phase's threads.
struct Shared {
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
struct Prepared {
    kind: OpKind,
    n: u64,
    key: Vec<u8>,
    value: Vec<u8>,
    scan_len: usize,
}

enum Outcome {
    Done { missed: bool },
    Failed(TargetError),
}

impl Phase<'_> {
    fn drive(&self, name: &str, progress: &dyn Progress) -> PhaseReport {
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
    fn scheduled(&self, t: u64, k: u64, start: Instant) -> Option<Instant> {
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

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// The report as text: a table per target, then its ratios to the baseline.
pub fn render(report: &BenchReport) -> String {
    let o = &report.options;
    let mut text = format!(
        "YCSB workload {} ({}), {} records of {} B, {} ops, {} threads, {} keys, seed {}\n",
        format!("{:?}", o.workload).to_lowercase(),
        report
            .mix
            .proportions
            .iter()
            .map(|(k, p)| format!("{} {:.0}%", k.name(), p * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
        o.records,
        o.value_bytes,
        o.ops,
        o.threads,
        format!("{:?}", report.mix.distribution).to_lowercase(),
        o.seed
    );
    for t in &report.targets {
        text.push_str(&format!("\n== {}\n", t.target));
        if let Some(e) = &t.error {
            text.push_str(&format!("unusable: {e}\n"));
            continue;
        }
        let mut rows = Vec::new();
        for (phase, p) in [("load", &t.load), ("run", &t.run)] {
            let Some(p) = p else { continue };
            for (op, r) in &p.operations {
                rows.push(vec![
                    phase.to_string(),
                    op.clone(),
                    r.count.to_string(),
                    r.errors.to_string(),
                    format!("{:.0}", r.throughput_ops_per_sec),
                    ms(r.p50_us),
                    ms(r.p95_us),
                    ms(r.p99_us),
                    ms(r.p999_us),
                    ms(r.max_us),
                ]);
            }
            rows.push(vec![
                phase.to_string(),
                "all".into(),
                p.ops.to_string(),
                p.errors.to_string(),
                format!("{:.0}", p.throughput_ops_per_sec),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                format!("{:.1} s", p.elapsed_secs),
            ]);
            if let Some(a) = &p.aborted {
                rows.push(vec![phase.to_string(), format!("stopped early: {a}")]);
            }
        }
        text.push_str(&presage_ctl::table(
            &["PHASE", "OP", "OK", "ERRORS", "OPS/S", "P50 MS", "P95 MS", "P99 MS", "P99.9 MS", "MAX MS"],
            &rows,
        ));
        if let Some(r) = &t.vs_baseline {
            let per_op: Vec<String> = r
                .operations
                .iter()
                .map(|(k, v)| format!("{k} throughput x{:.3}, p50 x{:.1}, p99 x{:.1}", v.throughput, v.p50, v.p99))
                .collect();
            text.push_str(&format!(
                "vs {} (same invocation): throughput x{:.3}; {}\n",
                r.baseline,
                r.throughput,
                per_op.join("; ")
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target that works for its first `ok` operations and then fails every one, like a
    /// cluster that went away mid-run.
    struct GoesAway {
        ok: u64,
        seen: AtomicU64,
    }

    impl GoesAway {
        fn step(&self) -> Result<(), TargetError> {
            if self.seen.fetch_add(1, Ordering::Relaxed) < self.ok {
                Ok(())
            } else {
                std::thread::sleep(Duration::from_millis(5));
                Err(TargetError::Client(presage_client::ClientError::Unreachable("connection refused".into())))
            }
        }
    }

    impl Target for GoesAway {
        fn read(&self, _: &[u8]) -> Result<bool, TargetError> {
            self.step().map(|()| true)
        }
        fn write(&self, _: &[u8], _: &[u8]) -> Result<(), TargetError> {
            self.step()
        }
        fn scan(&self, _: &[u8], n: usize) -> Result<usize, TargetError> {
            self.step().map(|()| n)
        }
    }

    #[test]
    fn a_target_that_goes_away_is_counted_and_the_phase_stops() {
        let opts =
            RunOptions { records: 100, ops: 1_000_000, threads: 3, max_failing_secs: 1, ..RunOptions::default() };
        let mix = opts.mix();
        let target = GoesAway { ok: 150, seen: AtomicU64::new(0) };
        let records = Records::new(100);
        let phase = Phase { opts: &opts, mix: &mix, target: &target, records: &records, load: false };
        let r = phase.drive("gone", &Quiet);
        assert_eq!(r.ops, 150, "{r:?}");
        assert!(r.errors > 0 && r.ops + r.errors < 1_000_000, "{r:?}");
        assert!(r.aborted.as_deref().is_some_and(|a| a.contains("connection refused")), "{r:?}");
        let per_op: u64 = r.operations.values().map(|o| o.count + o.errors).sum();
        assert_eq!(per_op, r.ops + r.errors);
    }

    #[test]
    fn inserted_records_count_once_every_earlier_insert_finished() {
        let r = Records::new(10);
        let (a, b, c) = (r.claim(), r.claim(), r.claim());
        assert_eq!((a, b, c), (10, 11, 12));
        r.finish(b);
        assert_eq!(r.count(), 10, "11 finished before 10");
        r.finish(a);
        assert_eq!(r.count(), 12);
        r.finish(c);
        assert_eq!(r.count(), 13);
    }

    #[test]
    fn bad_options_are_refused_with_the_flag_named() {
        for (opts, flag) in [
            (RunOptions { records: 0, ..RunOptions::default() }, "--records"),
            (RunOptions { ops: 0, ..RunOptions::default() }, "--ops"),
            (RunOptions { value_bytes: MAX_VALUE_BYTES + 1, ..RunOptions::default() }, "--value-bytes"),
            (RunOptions { threads: 0, ..RunOptions::default() }, "--threads"),
            (RunOptions { duration_secs: Some(0), ..RunOptions::default() }, "--duration"),
            (RunOptions { connections: Some(0), ..RunOptions::default() }, "--connections"),
            (RunOptions { rate_ops_per_sec: Some(0), ..RunOptions::default() }, "--rate"),
            (RunOptions { warmup_secs: MAX_WARMUP_SECS + 1, ..RunOptions::default() }, "--warmup"),
        ] {
            let e = opts.validate().expect_err(flag);
            assert!(e.to_string().contains(flag), "{e}");
        }
    }

    #[test]
    fn an_open_loop_schedule_interleaves_the_threads_at_the_rate() {
        let opts = RunOptions { threads: 4, rate_ops_per_sec: Some(1000), ..RunOptions::default() };
        let mix = opts.mix();
        let dir = tempfile::tempdir().expect("tempdir");
        let target = RawEngineTarget::open(dir.path()).expect("engine");
        let records = Records::new(1);
        let start = Instant::now();
        let at = |load: bool, t: u64, k: u64| {
            let phase = Phase { opts: &opts, mix: &mix, target: &target, records: &records, load };
            phase.scheduled(t, k, start).map(|i| i.duration_since(start).as_micros())
        };
        // 1,000 ops/s over 4 threads: one every 1 ms in all, each thread every 4 ms.
        let mut all: Vec<u128> =
            (0..4).flat_map(|t| (0..3).map(move |k| (t, k))).filter_map(|(t, k)| at(false, t, k)).collect();
        all.sort_unstable();
        let expected: Vec<u128> = (0..12).map(|i| i * 1000).collect();
        assert_eq!(all, expected);
        assert_eq!(at(true, 0, 5), None, "the load phase is a closed loop");
    }

    #[test]
    fn warm_up_operations_run_but_are_not_measured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = Environment { work_dir: dir.path().to_path_buf(), presage_binary: PathBuf::new() };
        let opts = RunOptions {
            workload: Workload::C,
            records: 50,
            ops: u64::MAX / 2,
            threads: 1,
            rate_ops_per_sec: Some(200),
            warmup_secs: 1,
            duration_secs: Some(1),
            ..RunOptions::default()
        };
        let report = run(&opts, &[TargetSpec::RawEngine], &env, &Quiet).expect("runs");
        let run = report.targets[0].run.as_ref().expect("run phase");
        // 200 ops/s for 1 s warm-up + 1 s measured: about 200 measured, never the 400 done.
        assert!(run.ops > 0 && run.ops <= 201, "measured {} operations", run.ops);
        assert!(run.elapsed_secs < 1.5, "the warm-up is not in the elapsed time: {}", run.elapsed_secs);
    }
}
