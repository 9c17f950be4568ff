//! `presage-bench replication` and `presage-bench idle`: the replication layer's figures,
//! each next to a baseline from the same run.
//!
//! | figure | baseline it is compared with |
//! |---|---|
//! | replicated puts: 3 replicas, one process, loopback TCP, a RocksDB each, sync on | the raw engine doing the same single-put batches with sync on, from as many threads |
//! | CPU of a node with N idle shards, quiescence on | the same with quiescence off |
//!
//! Latencies are measured per request (hdrhistogram, microseconds). CPU is the process's
//! user+system time from `/proc/self/stat` (Linux), divided by the three nodes it runs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use presage_engine::{Cf, Engine, RocksConfig, RocksEngine, WriteBatch, WriteOptions};
use presage_replication::{
    AddressBook, Epoch, NodeHandle, Op, RaftConfig, Replica, ShardDescriptor, Store, TcpConfig, TcpNode,
};

use crate::datagen::{key, ValueGen, ValueKind};

/// Nodes of the benchmark cluster.
const NODES: u64 = 3;

/// Sizes of the replicated-write benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicationBenchOptions {
    /// Puts per measurement.
    pub writes: u64,
    /// Concurrency levels to measure (clients, each with one request in flight).
    pub clients: Vec<usize>,
    /// Bytes per value.
    pub value_bytes: usize,
    /// RNG seed.
    pub seed: u64,
}

impl Default for ReplicationBenchOptions {
    fn default() -> Self {
        ReplicationBenchOptions { writes: 20_000, clients: vec![1, 32], value_bytes: 256, seed: 1 }
    }
}

/// Throughput and latency of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LatencyFigure {
    /// What was measured.
    pub name: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Completed operations per second.
    pub ops_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th-percentile latency, microseconds.
    pub p99_us: u64,
    /// The baseline figure's name.
    pub baseline: Option<String>,
    /// Throughput divided by the baseline's.
    pub ratio_to_baseline: Option<f64>,
}

/// The replicated-write report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicationBenchReport {
    /// The options of the run.
    pub options: ReplicationBenchOptions,
    /// The figures, each baseline right before what is compared with it.
    pub figures: Vec<LatencyFigure>,
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")
}

fn figure(name: &str, clients: usize, ops: u64, elapsed: Duration, h: &Histogram<u64>) -> LatencyFigure {
    LatencyFigure {
        name: name.to_string(),
        clients,
        ops_per_sec: ops as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_us: h.value_at_quantile(0.50),
        p99_us: h.value_at_quantile(0.99),
        baseline: None,
        ratio_to_baseline: None,
    }
}

/// Runs the replicated-write benchmark in temporary folders under `work_dir`.
pub fn run(
    opts: &ReplicationBenchOptions,
    work_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<ReplicationBenchReport> {
    if opts.writes == 0 || opts.clients.is_empty() || opts.clients.contains(&0) {
        bail!("writes and every client count must be positive");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    let mut figures = Vec::new();
    for &clients in &opts.clients {
        progress(&format!("raw engine, sync on, {clients} clients"));
        let dir = tempfile::tempdir_in(work_dir).context("temporary folder")?;
        let raw = raw_engine_puts(opts, clients, dir.path())?;
        progress(&format!("replicated, 3 replicas over loopback TCP, sync on, {clients} clients"));
        let dir = tempfile::tempdir_in(work_dir).context("temporary folder")?;
        let mut rep = runtime.block_on(replicated_puts(opts, clients, dir.path()))?;
        rep.baseline = Some(raw.name.clone());
        rep.ratio_to_baseline = Some(rep.ops_per_sec / raw.ops_per_sec.max(1e-9));
        figures.push(raw);
        figures.push(rep);
    }
    Ok(ReplicationBenchReport { options: opts.clone(), figures })
}

/// `clients` threads, each writing its share of single-put batches with sync on.
fn raw_engine_puts(opts: &ReplicationBenchOptions, clients: usize, dir: &Path) -> Result<LatencyFigure> {
    let engine = RocksEngine::open(dir, &RocksConfig::default()).context("open RocksDB")?;
    let per_client = opts.writes.div_ceil(clients as u64);
    let start = Instant::now();
    let results: Vec<Result<Histogram<u64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let engine = engine.clone();
                s.spawn(move || -> Result<Histogram<u64>> {
                    let mut h = histogram()?;
                    let mut values = ValueGen::new(ValueKind::Compressible, opts.value_bytes, opts.seed + c as u64);
                    for i in 0..per_client {
                        let mut wb = WriteBatch::new();
                        let k = c as u64 * per_client + i;
                        wb.put(Cf::Data, key(k), values.value(k));
                        let t = Instant::now();
                        engine.write(&wb, WriteOptions::SYNC)?;
                        h.record(t.elapsed().as_micros() as u64)?;
                    }
                    Ok(h)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("writer thread panicked"))))
            .collect()
    });
    let elapsed = start.elapsed();
    let mut all = histogram()?;
    for h in results {
        all.add(h?)?;
    }
    Ok(figure("raw engine put (sync)", clients, per_client * clients as u64, elapsed, &all))
}

/// Starts `NODES` nodes over loopback TCP, each on its own RocksDB under `dir`, with the
/// given shards bootstrapped on all of them.
async fn start_cluster(dir: &Path, raft: &RaftConfig, shards: &[ShardDescriptor]) -> Result<Vec<TcpNode>> {
    let book = AddressBook::default();
    // Reserve the ports first, so every node knows every address before any message flows.
    let mut listeners = Vec::new();
    for id in 1..=NODES {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind loopback")?;
        book.set(id, l.local_addr()?);
        listeners.push(l);
    }
    drop(listeners);
    let mut nodes = Vec::new();
    for id in 1..=NODES {
        let engine = RocksEngine::open(&dir.join(format!("node-{id}")), &RocksConfig::default())?;
        let mut store = Store::open(id, engine, raft.clone())?;
        store.bootstrap_shards(shards.to_vec())?;
        let addr = book.get(id).context("address")?;
        nodes.push(TcpNode::start(store, raft, TcpConfig::default(), addr, book.clone()).await?);
    }
    Ok(nodes)
}

fn descriptor(id: u64, start: Vec<u8>, end: Option<Vec<u8>>) -> ShardDescriptor {
    ShardDescriptor {
        id,
        start,
        end,
        epoch: Some(Epoch { version: 1, conf_ver: 1 }),
        replicas: (1..=NODES).map(Replica::voter).collect(),
        merging_into: None,
    }
}

async fn leader_of(nodes: &[TcpNode], shard_id: u64, timeout: Duration) -> Result<(NodeHandle, Epoch)> {
    let deadline = Instant::now() + timeout;
    loop {
        for n in nodes {
            let h = n.node.handle();
            if let Ok(Some(s)) = h.status(shard_id).await {
                if s.is_leader() {
                    return Ok((h, s.descriptor.epoch()));
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no leader for shard {shard_id} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn replicated_puts(opts: &ReplicationBenchOptions, clients: usize, dir: &Path) -> Result<LatencyFigure> {
    let raft = RaftConfig::default();
    let nodes = start_cluster(dir, &raft, &[descriptor(1, Vec::new(), None)]).await?;
    let (leader, epoch) = leader_of(&nodes, 1, Duration::from_secs(30)).await?;
    let per_client = opts.writes.div_ceil(clients as u64);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (leader, value_bytes, seed) = (leader.clone(), opts.value_bytes, opts.seed + c as u64);
        tasks.push(tokio::spawn(async move {
            let mut h = histogram()?;
            let mut values = ValueGen::new(ValueKind::Compressible, value_bytes, seed);
            for i in 0..per_client {
                let k = c as u64 * per_client + i;
                let op = Op::put(key(k), values.value(k));
                let t = Instant::now();
                leader.write(1, epoch, vec![op]).await.context("replicated put")?;
                h.record(t.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(h)
        }));
    }
    let mut all = histogram()?;
    for t in tasks {
        all.add(t.await.context("client task")??)?;
    }
    let elapsed = start.elapsed();
    for n in nodes {
        n.node.kill();
    }
    Ok(figure("replicated put (3 replicas, sync)", clients, per_client * clients as u64, elapsed, &all))
}

/// Renders the replicated-write report as a table.
pub fn render(report: &ReplicationBenchReport) -> String {
    let mut s =
        format!("{:<36} {:>7} {:>10} {:>9} {:>9} {:>7}\n", "figure", "clients", "ops/s", "p50 us", "p99 us", "ratio");
    for f in &report.figures {
        s.push_str(&format!(
            "{:<36} {:>7} {:>10.0} {:>9} {:>9} {:>7}\n",
            f.name,
            f.clients,
            f.ops_per_sec,
            f.p50_us,
            f.p99_us,
            f.ratio_to_baseline.map_or("-".into(), |r| format!("{r:.3}"))
        ));
    }
    s
}

/// Sizes of the idle-shards benchmark.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleBenchOptions {
    /// Shards on every node.
    pub shards: u64,
    /// Seconds of idle time measured per setting.
    pub seconds: u64,
}

/// CPU of idle shards with one setting.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleFigure {
    /// `quiescence on` or `quiescence off`.
    pub name: String,
    /// Shards per node.
    pub shards: u64,
    /// CPU used per node over the idle window, in percent of one core.
    pub cpu_percent_per_node: f64,
    /// Raft messages (frames' envelopes) sent per second by all nodes together.
    pub envelopes_per_sec: f64,
    /// Groups asleep at the end of the window, over all nodes.
    pub quiescent_replicas: usize,
}

/// The idle-shards report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleBenchReport {
    /// The options of the run.
    pub options: IdleBenchOptions,
    /// Quiescence off (the baseline), then on.
    pub figures: Vec<IdleFigure>,
    /// CPU with quiescence on divided by CPU with it off.
    pub cpu_ratio: f64,
}

/// User+system CPU seconds this process has used (Linux `/proc/self/stat`).
fn process_cpu_secs() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat (Linux only)")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("unexpected /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i).context("short /proc/self/stat")?.parse::<f64>()?) };
    // USER_HZ is 100 on every Linux ABI Rust targets.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Runs the idle-shards benchmark: quiescence off, then on.
pub fn run_idle(opts: &IdleBenchOptions, work_dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<IdleBenchReport> {
    if opts.shards == 0 || opts.seconds == 0 {
        bail!("--shards and --seconds must be positive");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    let mut figures = Vec::new();
    for quiesce in [false, true] {
        let label = if quiesce { "quiescence on" } else { "quiescence off" };
        progress(&format!("{} idle shards per node, {label}", opts.shards));
        let dir = tempfile::tempdir_in(work_dir).context("temporary folder")?;
        figures.push(runtime.block_on(idle_cpu(opts, quiesce, label, dir.path()))?);
    }
    let cpu_ratio = figures[1].cpu_percent_per_node / figures[0].cpu_percent_per_node.max(1e-9);
    Ok(IdleBenchReport { options: opts.clone(), figures, cpu_ratio })
}

async fn idle_cpu(opts: &IdleBenchOptions, quiesce: bool, label: &str, dir: &Path) -> Result<IdleFigure> {
    let raft = RaftConfig {
        quiesce_after_ticks: if quiesce { RaftConfig::default().quiesce_after_ticks } else { 0 },
        // Awake, every group heartbeats: let the mailbox hold a round of them.
        max_mailbox_msgs: 1 << 20,
        ..RaftConfig::default()
    };
    let bound = |i: u64| format!("shard{i:08}").into_bytes();
    let shards: Vec<ShardDescriptor> = (1..=opts.shards)
        .map(|i| descriptor(i, if i == 1 { Vec::new() } else { bound(i - 1) }, (i < opts.shards).then(|| bound(i))))
        .collect();
    let nodes = start_cluster(dir, &raft, &shards).await?;
    // Every group elects a leader; with quiescence on, every replica then goes to sleep.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (mut leaders, mut asleep, mut replicas) = (0, 0, 0);
        for n in &nodes {
            let s = n.node.handle().summary().await?;
            (leaders, asleep, replicas) = (leaders + s.leaders, asleep + s.quiescent, replicas + s.replicas);
        }
        if leaders as u64 == opts.shards && (!quiesce || asleep == replicas) {
            break;
        }
        if Instant::now() > deadline {
            bail!("{label}: {leaders} leaders, {asleep} of {replicas} asleep after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the elections' traffic settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = |nodes: &[TcpNode]| -> u64 {
        nodes.iter().map(|n| presage_replication::TcpStats::get(&n.stats.envelopes_sent)).sum()
    };
    let (cpu0, sent0, t0) = (process_cpu_secs()?, sent(&nodes), Instant::now());
    tokio::time::sleep(Duration::from_secs(opts.seconds)).await;
    let (cpu1, sent1, elapsed) = (process_cpu_secs()?, sent(&nodes), t0.elapsed().as_secs_f64());
    let mut quiescent_replicas = 0;
    for n in &nodes {
        quiescent_replicas += n.node.handle().summary().await?.quiescent;
    }
    for n in nodes {
        n.node.kill();
    }
    Ok(IdleFigure {
        name: label.to_string(),
        shards: opts.shards,
        cpu_percent_per_node: 100.0 * (cpu1 - cpu0) / elapsed / NODES as f64,
        envelopes_per_sec: (sent1 - sent0) as f64 / elapsed,
        quiescent_replicas,
    })
}

/// Renders the idle-shards report as a table.
pub fn render_idle(report: &IdleBenchReport) -> String {
    let mut s =
        format!("{:<16} {:>8} {:>16} {:>16} {:>12}\n", "figure", "shards", "CPU %/node", "envelopes/s", "asleep");
    for f in &report.figures {
        s.push_str(&format!(
            "{:<16} {:>8} {:>16.2} {:>16.0} {:>12}\n",
            f.name, f.shards, f.cpu_percent_per_node, f.envelopes_per_sec, f.quiescent_replicas
        ));
    }
    s.push_str(&format!("CPU ratio (on / off): {:.4}\n", report.cpu_ratio));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_time_is_readable_and_grows() {
        let before = process_cpu_secs().expect("cpu time");
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(process_cpu_secs().expect("cpu time") > before);
    }
}
