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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use super::options::*;
pub use super::phase::{OpReport, PhaseReport, Progress, Quiet, SecondReport};
use super::phase::{Phase, Records};
use super::target::{
    client_config, ClusterTarget, EtcdTarget, RawEngineTarget, RespTarget, Target, TargetError, TargetSpec,
    ThreeEnginesTarget,
};
use super::{Mix, Workload};

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
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

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
