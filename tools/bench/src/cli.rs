//! The `presage-bench` program (its binary, in `tools/src/bin`, only calls [`main`]):
//! Presage's embedded benchmark harness. Every figure is reported next to a
//! baseline measured in the same run: `engine` (the storage engine), `replication`
//! (replicated writes against the raw engine), `idle` (CPU of idle shards, quiescence on
//! against off), `run`: the YCSB core workloads against the raw engine, a playground or a
//! running cluster, several targets in one invocation, each next to the first, and
//! `scenario failing-node`: a failing node (one fault shape) with the predictive path on,
//! beside it off, `scenario campaign`: every fault shape in both modes, one table, and
//! `scenario noise`: healthy nodes under noise (false alarms), `scenario overload`: critical
//! traffic under a bulk flood with admission by priority on and off.

use std::path::PathBuf;

use crate::engine_bench::{self, EngineBenchOptions};
use crate::replication_bench::{self, IdleBenchOptions, ReplicationBenchOptions};
use crate::scenario::fault::Fault;
use crate::scenario::noise::{Noise, NoiseOptions, DEFAULT_GAP_SECS};
use crate::scenario::overload::OverloadOptions;
use crate::scenario::periodic::PeriodicOptions;
use crate::scenario::{self, Mode, ScenarioOptions, StoryOptions};
use crate::ycsb::run::{Environment, Progress, RunOptions};
use crate::ycsb::target::TargetSpec;
use crate::ycsb::{KeyDistribution, Workload};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// A progress bar per phase on standard error (hidden when it is not a terminal).
struct Bar(std::cell::RefCell<Option<indicatif::ProgressBar>>);

impl Progress for Bar {
    fn start(&self, target: &str, phase: &str, total: u64) {
        let bar = indicatif::ProgressBar::new(total);
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>24} {bar:30} {pos}/{len} ops {per_sec} elapsed {elapsed} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(format!("{target} {phase}"));
        *self.0.borrow_mut() = Some(bar);
    }

    fn tick(&self, done: u64) {
        if let Some(b) = self.0.borrow().as_ref() {
            b.set_position(done);
        }
    }

    fn finish(&self) {
        if let Some(b) = self.0.borrow_mut().take() {
            b.finish_and_clear();
        }
    }
}

#[derive(Parser)]
#[command(name = "presage-bench", version, about = "Presage's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A YCSB core workload (load phase, then run phase) against each `--target` in turn; the
    /// first target is the baseline every other one is divided by.
    Run {
        /// The YCSB core workload: a (50% read, 50% update), b (95/5), c (read only), d (read
        /// latest, 5% insert), e (short scans, 5% insert), f (read-modify-write).
        #[arg(long, value_enum)]
        workload: Workload,
        #[command(flatten)]
        args: YcsbArgs,
    },
    /// Presage beside its peers in one table: each `--target` loaded (puts), then YCSB C (gets)
    /// and YCSB A on the same records; throughput, p50 and p99, each over the first target's.
    /// `make bench-peers` runs it against a 3-member etcd and a redis-server it starts.
    Peers {
        #[command(flatten)]
        args: YcsbArgs,
    },
    /// Storage-engine throughput: point writes (sync off/on), point reads, export/import MB/s
    /// and compression ratio, each next to its baseline.
    Engine {
        /// Keys per dataset.
        #[arg(long, default_value_t = EngineBenchOptions::default().keys)]
        keys: u64,
        /// Synced point writes.
        #[arg(long, default_value_t = EngineBenchOptions::default().sync_writes)]
        sync_writes: u64,
        /// Random point reads.
        #[arg(long, default_value_t = EngineBenchOptions::default().reads)]
        reads: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = EngineBenchOptions::default().value_bytes)]
        value_bytes: usize,
        /// RNG seed.
        #[arg(long, default_value_t = EngineBenchOptions::default().seed)]
        seed: u64,
        /// Folder for the temporary databases (default: the system's temporary folder).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Replicated puts (3 replicas in this process, loopback TCP, a RocksDB each, sync on):
    /// throughput and p50/p99 latency next to the raw engine doing the same synced writes.
    Replication {
        /// Puts per measurement.
        #[arg(long, default_value_t = ReplicationBenchOptions::default().writes)]
        writes: u64,
        /// Concurrency levels, comma-separated (clients with one request in flight each).
        #[arg(long, value_delimiter = ',', default_values_t = ReplicationBenchOptions::default().clients)]
        clients: Vec<usize>,
        /// Bytes per value.
        #[arg(long, default_value_t = ReplicationBenchOptions::default().value_bytes)]
        value_bytes: usize,
        /// RNG seed.
        #[arg(long, default_value_t = ReplicationBenchOptions::default().seed)]
        seed: u64,
        /// Folder for the temporary databases (default: the system's temporary folder).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A story on a playground of its own, measured from the client's side.
    Scenario {
        #[command(subcommand)]
        scenario: ScenarioCommand,
    },
    /// CPU used by a node holding many idle shards (3 nodes in this process), with quiescence
    /// off (the baseline) and on.
    Idle {
        /// Shards on every node.
        #[arg(long, default_value_t = 10_000)]
        shards: u64,
        /// Seconds of idle time measured per setting.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Folder for the temporary databases (default: the system's temporary folder).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// What a YCSB measurement takes (`run` and `peers`).
#[derive(clap::Args)]
struct YcsbArgs {
    /// Records written by the load phase.
    #[arg(long, default_value_t = RunOptions::default().records)]
    records: u64,
    /// Operations in the run phase.
    #[arg(long, default_value_t = RunOptions::default().ops)]
    ops: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = RunOptions::default().value_bytes)]
    value_bytes: usize,
    /// Request distribution (default: the workload's own, zipfian or latest for d).
    #[arg(long, value_enum)]
    distribution: Option<KeyDistribution>,
    /// Client threads, one operation in flight each.
    #[arg(long, default_value_t = RunOptions::default().threads)]
    threads: usize,
    /// raw-engine (RocksDB in this process); three-engines (three of them doing each
    /// synced write at once: a 3-replica cluster's bound on one machine); playground (a
    /// secure 3-node cluster started for the run); playground-insecure (the same without
    /// TLS and logins); HOST:PORT[,HOST:PORT...] (a running cluster's native addresses;
    /// PRESAGE_CA_CERT, PRESAGE_USER and PRESAGE_PASSWORD reach a secure one);
    /// resp:HOST:PORT[,...] (any RESP server, e.g. redis-server); resp:playground or
    /// resp:playground-insecure (a playground through its RESP ports); etcd:HOST:PORT[,...]
    /// (etcd's v3 API). Repeat to measure several targets side by side.
    #[arg(long, required = true)]
    target: Vec<TargetSpec>,
    /// Connections a RESP or etcd target opens, shared by the threads in turn (default:
    /// one per thread).
    #[arg(long)]
    connections: Option<usize>,
    /// Open loop: the run phase issues this many operations per second in all, each
    /// measured from its scheduled start (default: closed loop).
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds at the start of the run phase that run but are not measured.
    #[arg(long, default_value_t = RunOptions::default().warmup_secs)]
    warmup: u64,
    /// End the run phase after this many seconds (after --warmup) even if --ops are not
    /// done.
    #[arg(long)]
    duration: Option<u64>,
    /// RNG seed.
    #[arg(long, default_value_t = RunOptions::default().seed)]
    seed: u64,
    /// Prefix of the record keys (an existing cluster's keys under it are overwritten).
    #[arg(long, default_value_t = RunOptions::default().key_prefix)]
    key_prefix: String,
    /// A phase stops when no operation succeeded for this many seconds.
    #[arg(long, default_value_t = RunOptions::default().max_failing_secs)]
    max_failing_secs: u64,
    /// A cluster request gives up after this many milliseconds.
    #[arg(long, default_value_t = RunOptions::default().request_timeout_ms)]
    request_timeout_ms: u64,
    #[command(flatten)]
    out: Outputs,
}

/// Where a measurement runs and what it writes besides its table (`run`, `peers`, `scenario`).
#[derive(clap::Args)]
struct Outputs {
    /// The `presage` binary a playground runs (default: the one beside this program).
    #[arg(long)]
    presage_bin: Option<PathBuf>,
    /// Folder for the temporary databases and playgrounds (default: the system's).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also draw throughput and p99 per second to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

impl YcsbArgs {
    fn options(&self, workload: Workload) -> RunOptions {
        RunOptions {
            workload,
            records: self.records,
            ops: self.ops,
            value_bytes: self.value_bytes,
            distribution: self.distribution,
            threads: self.threads,
            duration_secs: self.duration,
            seed: self.seed,
            key_prefix: self.key_prefix.clone(),
            max_failing_secs: self.max_failing_secs,
            request_timeout_ms: self.request_timeout_ms,
            connections: self.connections,
            rate_ops_per_sec: self.rate,
            warmup_secs: self.warmup,
        }
    }

    fn environment(&self) -> Result<Environment> {
        // Only a playground target runs the binary.
        let presage_binary = if self.target.iter().any(TargetSpec::starts_playground) {
            presage_binary(self.out.presage_bin.clone())?
        } else {
            self.out.presage_bin.clone().unwrap_or_default()
        };
        Ok(Environment { work_dir: work_dir(self.out.work_dir.clone())?, presage_binary })
    }
}

/// Which modes a scenario runs.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    /// The predictive path on.
    Predictive,
    /// The predictive path off (`proactive-migration = false`).
    Reactive,
    /// Predictive, then reactive, reported side by side.
    Both,
}

#[derive(Subcommand)]
enum ScenarioCommand {
    /// One node fails (by default its disk degrades gradually) while a paced workload runs;
    /// the node is killed at the event's end (for the default ramp, when the injected latency
    /// reaches the 1 s election timeout). Reports failed requests, p99 before and during the
    /// event, seconds of unavailability per shard, bytes moved and the warning's timing, per
    /// mode.
    FailingNode {
        /// predictive, reactive, or both side by side.
        #[arg(long, value_enum, default_value = "both")]
        mode: ModeArg,
        /// What happens to the failing node.
        #[arg(long, value_enum, default_value = "ramp")]
        fault: Fault,
        #[command(flatten)]
        story: StoryArgs,
    },
    /// Every fault shape in both modes, one after another (each on a playground of its own):
    /// one table, a JSON object per fault and mode, the failing-node settings for each; then
    /// the noise scenario (its table after, and one more JSON object, `{"noise": ...}`).
    Campaign {
        /// Only these faults (repeatable; default: every one).
        #[arg(long, value_enum)]
        fault: Vec<Fault>,
        /// The noise scenario's soak: repeat the noises this many minutes (0: once each).
        #[arg(long, default_value_t = 0)]
        soak_minutes: u64,
        /// Leave the noise scenario out.
        #[arg(long)]
        no_noise: bool,
        #[command(flatten)]
        story: StoryArgs,
    },
    /// Healthy nodes under noise that looks like failure from afar (a peer catching up from
    /// them, a write burst's compactions, a 10 s CPU spike), each followed by a quiet gap:
    /// counts warnings, evacuations and how long any node shed its leaderships. The story's
    /// fault settings (ramp, kill) are not used.
    Noise {
        /// Only these noises, in this order (repeatable; default: every one).
        #[arg(long, value_enum)]
        noise: Vec<Noise>,
        /// Quiet seconds after each noise event.
        #[arg(long, default_value_t = DEFAULT_GAP_SECS)]
        gap_secs: u64,
        /// Repeat the noises until this many minutes passed after the warm-up (0: once each).
        #[arg(long, default_value_t = 0)]
        soak_minutes: u64,
        #[command(flatten)]
        story: StoryArgs,
    },
    /// Critical traffic first: paced critical requests alone, then under a flood of bulk
    /// writes, with admission by priority on and off. Reports the critical p50/p99 alone and
    /// under the flood, critical failures, bulk writes per second and bulk requests shed. Of
    /// the story's settings it uses the cluster's shape and `--warmup-secs` (critical traffic
    /// first, not counted, while the new cluster settles).
    Overload {
        /// Seconds of each phase (critical alone, then with the flood).
        #[arg(long, default_value_t = OverloadOptions::default().phase_secs)]
        phase_secs: u64,
        /// Paced critical workers.
        #[arg(long, default_value_t = OverloadOptions::default().critical_workers)]
        critical_workers: usize,
        /// Each critical worker's interval, ms.
        #[arg(long, default_value_t = OverloadOptions::default().critical_interval_ms)]
        critical_interval_ms: u64,
        /// Closed-loop bulk writers.
        #[arg(long, default_value_t = OverloadOptions::default().bulk_workers)]
        bulk_workers: usize,
        /// Bytes of each bulk value.
        #[arg(long, default_value_t = OverloadOptions::default().bulk_value_bytes)]
        bulk_value_bytes: usize,
        #[command(flatten)]
        story: StoryArgs,
    },
    /// Predicted load: a key range turns hot for `--spike-secs` every `--period-secs` (a
    /// compressed day), with forecasting (`forecast-balance`) on and off. Reports per spike the
    /// p99 of its first 10 s and each split or leader move of the hot range relative to it.
    Periodic(PeriodicArgs),
}

/// `scenario periodic`'s settings.
#[derive(clap::Args)]
struct PeriodicArgs {
    /// Seconds from one spike's start to the next.
    #[arg(long, default_value_t = PeriodicOptions::default().period_secs)]
    period_secs: u64,
    /// Seconds each spike lasts (at least 10).
    #[arg(long, default_value_t = PeriodicOptions::default().spike_secs)]
    spike_secs: u64,
    /// Spikes per mode (the first two are the forecast's learning).
    #[arg(long, default_value_t = PeriodicOptions::default().spikes)]
    spikes: usize,
    /// Seconds of base traffic before the first spike.
    #[arg(long, default_value_t = PeriodicOptions::default().lead_in_secs)]
    lead_in_secs: u64,
    /// Requests/s over every key, always.
    #[arg(long, default_value_t = PeriodicOptions::default().base_rate)]
    base_rate: u64,
    /// Requests/s over the hot range during a spike.
    #[arg(long, default_value_t = PeriodicOptions::default().spike_rate)]
    spike_rate: u64,
    /// The hot range, in percent of the keys.
    #[arg(long, default_value_t = PeriodicOptions::default().hot_percent)]
    hot_percent: u64,
    /// The load-split threshold, requests/s.
    #[arg(long, default_value_t = PeriodicOptions::default().load_split_qps)]
    load_split_qps: u64,
    /// Nodes (a group of three and spares).
    #[arg(long, default_value_t = PeriodicOptions::default().cluster.nodes)]
    nodes: u64,
    /// Regions.
    #[arg(long, default_value_t = PeriodicOptions::default().cluster.regions)]
    regions: u64,
    /// Data shards the keyspace is split into first.
    #[arg(long, default_value_t = PeriodicOptions::default().cluster.shards)]
    shards: u64,
    /// Keys loaded and used.
    #[arg(long, default_value_t = StoryOptions::default().keys)]
    keys: u64,
    #[command(flatten)]
    run: ScenarioRun,
}

/// What every playground scenario takes besides its own settings.
#[derive(clap::Args)]
struct ScenarioRun {
    /// A node setting, KEY=VALUE (repeatable), after the scenario's own, e.g.
    /// server.shard-manager.risk-act=0.7.
    #[arg(long = "set")]
    settings: Vec<String>,
    /// RNG seed of the workload.
    #[arg(long, default_value_t = StoryOptions::default().seed)]
    seed: u64,
    #[command(flatten)]
    out: Outputs,
}

impl PeriodicArgs {
    fn options(self) -> Result<(PeriodicOptions, Option<PathBuf>)> {
        let opts = PeriodicOptions {
            cluster: ScenarioOptions {
                story: StoryOptions { keys: self.keys, seed: self.run.seed, ..StoryOptions::default() },
                nodes: self.nodes,
                regions: self.regions,
                shards: self.shards,
                overrides: self.run.settings,
                binary: presage_binary(self.run.out.presage_bin)?,
                work_dir: self.run.out.work_dir,
            },
            period_secs: self.period_secs,
            spike_secs: self.spike_secs,
            spikes: self.spikes,
            lead_in_secs: self.lead_in_secs,
            base_rate: self.base_rate,
            spike_rate: self.spike_rate,
            hot_percent: self.hot_percent,
            load_split_qps: self.load_split_qps,
        };
        opts.check()?;
        anyhow::ensure!(self.run.out.plot.is_none(), "scenario periodic draws no plot (--plot)");
        Ok((opts, self.run.out.json))
    }
}

/// The failing-node story's settings (`scenario failing-node` and `scenario campaign`).
#[derive(clap::Args)]
struct StoryArgs {
    /// Nodes (a group of three and spares).
    #[arg(long, default_value_t = ScenarioOptions::default().nodes)]
    nodes: u64,
    /// Regions.
    #[arg(long, default_value_t = ScenarioOptions::default().regions)]
    regions: u64,
    /// Data shards the keyspace is split into.
    #[arg(long, default_value_t = ScenarioOptions::default().shards)]
    shards: u64,
    /// Members of one group that fail together (1 or 2), each with a spare of its own (two
    /// need e.g. `--nodes 5 --regions 3`).
    #[arg(long, default_value_t = StoryOptions::default().nodes_failing)]
    nodes_failing: usize,
    /// The failing member's whole region degrades: its spares get the fault too, and a spare
    /// from another region takes the member's place (e.g. `--nodes 5 --regions 4`).
    #[arg(long)]
    region_failing: bool,
    /// Keys loaded and used by the workload.
    #[arg(long, default_value_t = StoryOptions::default().keys)]
    keys: u64,
    /// Paced workers.
    #[arg(long, default_value_t = StoryOptions::default().workers)]
    workers: usize,
    /// Each worker sends one request every this many milliseconds.
    #[arg(long, default_value_t = StoryOptions::default().op_interval_ms)]
    op_interval_ms: u64,
    /// Share of reads, in percent.
    #[arg(long, default_value_t = StoryOptions::default().read_percent)]
    read_percent: u32,
    /// Seconds of workload before the fault (the detectors learn the normal).
    #[arg(long, default_value_t = StoryOptions::default().warmup_secs)]
    warmup_secs: u64,
    /// Seconds from the fault's start to the kill (for the ramp: the time the disk takes to
    /// reach 1 s per write).
    #[arg(long, default_value_t = StoryOptions::default().ramp_secs)]
    ramp_secs: u64,
    /// Seconds of workload after the kill.
    #[arg(long, default_value_t = StoryOptions::default().after_kill_secs)]
    after_kill_secs: u64,
    #[command(flatten)]
    run: ScenarioRun,
}

impl StoryArgs {
    /// The scenario's options for `fault`, checked; and where its outputs go.
    fn options(self, fault: Fault) -> Result<(ScenarioOptions, Outputs)> {
        anyhow::ensure!(
            self.workers > 0 && self.keys > 0 && self.op_interval_ms > 0,
            "--workers, --keys and --op-interval-ms must be positive"
        );
        anyhow::ensure!(self.read_percent <= 100, "--read-percent is at most 100");
        anyhow::ensure!(
            self.warmup_secs >= 2 && self.ramp_secs > 0,
            "--warmup-secs must be at least 2, --ramp-secs positive"
        );
        let ScenarioRun { settings, seed, out } = self.run;
        let Outputs { presage_bin, work_dir, json, plot } = out;
        let opts = ScenarioOptions {
            story: StoryOptions {
                keys: self.keys,
                workers: self.workers,
                op_interval_ms: self.op_interval_ms,
                read_percent: self.read_percent,
                warmup_secs: self.warmup_secs,
                ramp_secs: self.ramp_secs,
                fault,
                nodes_failing: self.nodes_failing,
                region_failing: self.region_failing,
                after_kill_secs: self.after_kill_secs,
                seed,
                ..StoryOptions::default()
            },
            nodes: self.nodes,
            regions: self.regions,
            shards: self.shards,
            overrides: settings,
            binary: presage_binary(presage_bin.clone())?,
            work_dir: work_dir.clone(),
        };
        Ok((opts, Outputs { presage_bin, work_dir, json, plot }))
    }
}

fn presage_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    let binary = match given {
        Some(p) => p,
        None => std::env::current_exe().context("finding this program")?.with_file_name("presage"),
    };
    anyhow::ensure!(binary.is_file(), "no presage binary at {} (give --presage-bin)", binary.display());
    Ok(binary)
}

fn write_json<T: serde::Serialize>(path: Option<PathBuf>, report: &T) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs `presage-bench` with the process's arguments.
pub fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run { workload, args } => {
            let opts = args.options(workload);
            let env = args.environment()?;
            let (target, json, plot) = (args.target, args.out.json, args.out.plot);
            let report = crate::ycsb::run::run(&opts, &target, &env, &Bar(Default::default()))?;
            print!("{}", crate::ycsb::run::render(&report));
            write_json(json, &report)?;
            if let Some(plot) = plot {
                crate::ycsb::plot::draw(&report, &plot)?;
            }
            if let Some(t) = report.targets.iter().find(|t| t.error.is_some()) {
                anyhow::bail!("target {} was unusable: {}", t.target, t.error.as_deref().unwrap_or_default());
            }
            Ok(())
        }
        Command::Peers { args } => {
            let opts = args.options(Workload::A);
            let env = args.environment()?;
            let report = crate::peers::run(&opts, &args.target, &env, &Bar(Default::default()))?;
            print!("{}", crate::peers::render(&report));
            write_json(args.out.json, &report)?;
            if let Some(plot) = args.out.plot {
                crate::peers::draw(&report, &plot)?;
            }
            if let Some(r) = report.rows.iter().find(|r| r.error.is_some()) {
                anyhow::bail!("target {} was unusable: {}", r.target, r.error.as_deref().unwrap_or_default());
            }
            Ok(())
        }
        Command::Engine { keys, sync_writes, reads, value_bytes, seed, work_dir, json } => {
            anyhow::ensure!(
                keys > 0 && reads > 0 && sync_writes > 0,
                "--keys, --reads and --sync-writes must be positive"
            );
            let opts = EngineBenchOptions { keys, sync_writes, reads, value_bytes, seed };
            let work_dir = self::work_dir(work_dir)?;
            let report = engine_bench::run(&opts, &work_dir, &mut |step| eprintln!("running: {step}"))?;
            print!("{}", engine_bench::render(&report));
            write_json(json, &report)
        }
        Command::Replication { writes, clients, value_bytes, seed, work_dir, json } => {
            let opts = ReplicationBenchOptions { writes, clients, value_bytes, seed };
            let work_dir = self::work_dir(work_dir)?;
            let report = replication_bench::run(&opts, &work_dir, &mut |step| eprintln!("running: {step}"))?;
            print!("{}", replication_bench::render(&report));
            write_json(json, &report)
        }
        Command::Scenario { scenario: ScenarioCommand::FailingNode { mode, fault, story } } => {
            let (opts, out) = story.options(fault)?;
            let modes = match mode {
                ModeArg::Predictive => vec![Mode::Predictive],
                ModeArg::Reactive => vec![Mode::Reactive],
                ModeArg::Both => vec![Mode::Predictive, Mode::Reactive],
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let mut reports = Vec::new();
            for m in modes {
                eprintln!("failing-node, {} fault, {m:?} mode:", fault.name());
                let report = runtime.block_on(scenario::run(&opts, m, &|line: &str| eprintln!("  {line}")))?;
                reports.push(report);
            }
            print!("{}", scenario::side_by_side(&reports));
            write_json(out.json, &scenario::to_json(&reports))?;
            if let Some(plot) = out.plot {
                scenario::draw(&reports, &plot)?;
            }
            Ok(())
        }
        Command::Scenario { scenario: ScenarioCommand::Campaign { fault, soak_minutes, no_noise, story } } => {
            let faults = if fault.is_empty() { Fault::ALL.to_vec() } else { fault };
            let (opts, out) = story.options(Fault::Ramp)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let mut reports = Vec::new();
            for f in faults {
                let opts = ScenarioOptions { story: StoryOptions { fault: f, ..opts.story.clone() }, ..opts.clone() };
                for m in [Mode::Predictive, Mode::Reactive] {
                    eprintln!("campaign: {} fault, {m:?} mode:", f.name());
                    let report = runtime.block_on(scenario::run(&opts, m, &|line: &str| eprintln!("  {line}")))?;
                    reports.push(report);
                }
            }
            print!("{}", scenario::campaign_table(&reports));
            let mut json = scenario::campaign_json(&reports);
            if !no_noise {
                eprintln!("campaign: noise, soak {soak_minutes} min:");
                let opts = NoiseOptions {
                    noises: Noise::ALL.to_vec(),
                    gap_secs: DEFAULT_GAP_SECS,
                    soak_minutes,
                    scenario: opts,
                };
                // A failed noise run is reported beside the fault runs, which are kept.
                let noise = match runtime.block_on(scenario::noise::run(&opts, &|line: &str| eprintln!("  {line}"))) {
                    Ok(noise) => {
                        print!("\nnoise on healthy nodes:\n{}", scenario::noise::table(&noise));
                        serde_json::json!({ "noise": noise })
                    }
                    Err(e) => {
                        eprintln!("campaign: the noise scenario failed: {e:#}");
                        serde_json::json!({ "noise_error": format!("{e:#}") })
                    }
                };
                if let serde_json::Value::Array(a) = &mut json {
                    a.push(noise);
                }
            }
            write_json(out.json, &json)?;
            if let Some(plot) = out.plot {
                scenario::draw(&reports, &plot)?;
            }
            Ok(())
        }
        Command::Scenario { scenario: ScenarioCommand::Noise { noise, gap_secs, soak_minutes, story } } => {
            let (scenario, out) = story.options(Fault::Ramp)?;
            let noises = if noise.is_empty() { Noise::ALL.to_vec() } else { noise };
            let opts = NoiseOptions { noises, gap_secs, soak_minutes, scenario };
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let report = runtime.block_on(scenario::noise::run(&opts, &|line: &str| eprintln!("  {line}")))?;
            print!("{}", scenario::noise::table(&report));
            write_json(out.json, &report)
        }
        Command::Scenario {
            scenario:
                ScenarioCommand::Overload {
                    phase_secs,
                    critical_workers,
                    critical_interval_ms,
                    bulk_workers,
                    bulk_value_bytes,
                    story,
                },
        } => {
            let (cluster, out) = story.options(Fault::Ramp)?;
            let opts = OverloadOptions {
                warmup_secs: cluster.story.warmup_secs,
                cluster,
                phase_secs,
                critical_workers,
                critical_interval_ms,
                bulk_workers,
                bulk_value_bytes,
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let reports = runtime.block_on(scenario::overload::run(&opts, &|line: &str| eprintln!("  {line}")))?;
            print!("{}", scenario::overload::table(&reports));
            write_json(out.json, &reports)
        }
        Command::Scenario { scenario: ScenarioCommand::Periodic(args) } => {
            let (opts, json) = args.options()?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let reports = runtime.block_on(scenario::periodic::run(&opts, &|line: &str| eprintln!("  {line}")))?;
            print!("{}", scenario::periodic::table(&reports));
            write_json(json, &reports)
        }
        Command::Idle { shards, seconds, work_dir, json } => {
            let opts = IdleBenchOptions { shards, seconds };
            let work_dir = work_dir.unwrap_or_else(std::env::temp_dir);
            let report = replication_bench::run_idle(&opts, &work_dir, &mut |step| eprintln!("running: {step}"))?;
            print!("{}", replication_bench::render_idle(&report));
            write_json(json, &report)
        }
    }
}

/// The folder runs work in (the system's temporary folder unless `--work-dir` names one),
/// created when missing.
fn work_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    let dir = given.unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create the work folder {}", dir.display()))?;
    Ok(dir)
}
