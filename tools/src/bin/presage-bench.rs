//! `presage-bench`: Presage's embedded benchmark harness. Every figure is reported next to a
//! baseline measured in the same run: `engine` (the storage engine), `replication`
//! (replicated writes against the raw engine), `idle` (CPU of idle shards, quiescence on
//! against off). The YCSB workloads arrive with the benchmark issue.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use presage_tools::engine_bench::{self, EngineBenchOptions};
use presage_tools::replication_bench::{self, IdleBenchOptions, ReplicationBenchOptions};

#[derive(Parser)]
#[command(name = "presage-bench", version, about = "Presage's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn write_json<T: serde::Serialize>(path: Option<PathBuf>, report: &T) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Engine { keys, sync_writes, reads, value_bytes, seed, work_dir, json } => {
            anyhow::ensure!(
                keys > 0 && reads > 0 && sync_writes > 0,
                "--keys, --reads and --sync-writes must be positive"
            );
            let opts = EngineBenchOptions { keys, sync_writes, reads, value_bytes, seed };
            let work_dir = work_dir.unwrap_or_else(std::env::temp_dir);
            let report = engine_bench::run(&opts, &work_dir, &mut |step| eprintln!("running: {step}"))?;
            print!("{}", engine_bench::render(&report));
            write_json(json, &report)
        }
        Command::Replication { writes, clients, value_bytes, seed, work_dir, json } => {
            let opts = ReplicationBenchOptions { writes, clients, value_bytes, seed };
            let work_dir = work_dir.unwrap_or_else(std::env::temp_dir);
            let report = replication_bench::run(&opts, &work_dir, &mut |step| eprintln!("running: {step}"))?;
            print!("{}", replication_bench::render(&report));
            write_json(json, &report)
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
