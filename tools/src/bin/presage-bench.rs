//! `presage-bench`: Presage's embedded benchmark harness. `presage-bench engine` measures the
//! storage engine with side-by-side baselines; the YCSB workloads arrive with the benchmark
//! issue.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use presage_tools::engine_bench::{self, EngineBenchOptions};

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
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report)?;
                std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}
