//! `presage demo` (what `make demo` runs): a local cluster at work.
//!
//! 1. Start a playground (5 node processes in 3 regions by default) and wait until it serves.
//! 2. Show the shards (`presage-ctl shards`), load the data set through the client library.
//! 3. Run a zipfian read/write workload for a while with a progress bar. Hot keys sit at the
//!    start of the keyspace, so the shard holding them gets hot: the shard manager splits it
//!    by load and balances the leaderships. A watcher prints each split, leader move and
//!    replica move as it happens.
//! 4. Show the shards again, read a sample of the data back, print a summary (throughput,
//!    latency percentiles, what changed).
//! 5. Second act, a failing disk ([`presage_bench::scenario::story`]): while a paced workload runs,
//!    one group member's disk degrades gradually (fault injection); the failure analysis
//!    warns, the shard manager moves the node's leaderships and replicas to a spare, and the
//!    node is killed when its disk reaches the election timeout. The timeline is narrated as
//!    it happens, then the figures (failed requests, p99 before and during, unavailable
//!    shard-seconds, bytes moved, the warning's lead). Needs a spare node whose region the
//!    rest of the group lacks (the default 5 nodes in 3 regions has two).
//! 6. Stop the nodes with SIGTERM.
//!
//! The nodes get a lower load-split threshold and window than production defaults so that
//! the split happens within the run on a small machine (`--split-qps`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use presage_client::proto::ShardRow;
use presage_client::{BatchOp, Client};
use presage_shardmgr::{NodeId, ShardMeta};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use presage_bench::datagen::{key, ValueGen, ValueKind};
use presage_ctl::{self as ctl, AdminEndpoint};
use presage_playground::{Playground, PlaygroundOptions};

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Node processes.
    pub nodes: u64,
    /// Regions they are spread over.
    pub regions: u64,
    /// Keys loaded.
    pub keys: u64,
    /// Bytes per value.
    pub value_bytes: usize,
    /// How long the workload runs.
    pub workload_secs: u64,
    /// Concurrent client tasks.
    pub workers: usize,
    /// Share of reads, in percent.
    pub read_percent: u32,
    /// Zipf exponent of the key popularity (0.99 as in YCSB).
    pub zipf_exponent: f64,
    /// The nodes' load-split threshold (requests/s a shard sustains before it splits).
    pub split_qps: u64,
    /// Where the nodes keep their data; a temporary folder (removed after) when `None`.
    pub data_dir: Option<PathBuf>,
    /// The `presage` binary the nodes run.
    pub binary: PathBuf,
    /// Seed of the workload.
    pub seed: u64,
    /// The second act's disk ramp to 1 s, in seconds; 0 skips the act.
    pub failing_node_ramp_secs: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            nodes: 5,
            regions: 3,
            keys: 20_000,
            value_bytes: 256,
            workload_secs: 30,
            workers: 32,
            read_percent: 90,
            zipf_exponent: 0.99,
            split_qps: 1_500,
            data_dir: None,
            binary: PathBuf::from("presage"),
            seed: 42,
            failing_node_ramp_secs: 60,
        }
    }
}

/// Keys per batch while loading.
const LOAD_BATCH_KEYS: usize = 500;
/// Batches in flight while loading.
const LOAD_BATCHES_IN_FLIGHT: usize = 4;
/// Keys read back to check the data after the workload.
const VERIFY_SAMPLE_KEYS: u64 = 1_000;
/// How often the watcher looks at the shards.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// Largest latency recorded (µs).
const MAX_LATENCY_US: u64 = 60_000_000;

/// What the watcher saw during the workload.
#[derive(Debug, Default)]
struct Changes {
    splits: usize,
    merges: usize,
    leader_moves: usize,
    replica_moves: usize,
}

/// Latencies and counts of one worker.
struct WorkerStats {
    reads: Histogram<u64>,
    writes: Histogram<u64>,
    errors: u64,
    last_error: Option<String>,
}

/// Runs the demo, narrating on stdout.
pub async fn run(opts: &DemoOptions) -> Result<()> {
    validate(opts)?;
    let tmp;
    let data_dir = match &opts.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("presage-demo").tempdir().context("creating a temporary folder")?;
            tmp.path().to_path_buf()
        }
    };
    let mut overrides = presage_bench::scenario::scenario_overrides();
    overrides.extend([
        format!("server.shard-manager.load-split-qps={}", opts.split_qps),
        "server.shard-manager.load-split-window-ms=\"3s\"".to_string(),
        "server.shard-manager.balance-min-leader-load-gap=50.0".to_string(),
        // Small memtables, so that the demo's few megabytes reach SST files and the shard
        // sizes (estimated from them) show.
        "rocksdb.write-buffer-bytes=\"1MiB\"".to_string(),
    ]);
    println!(
        "1. Starting {} nodes in {} regions (data, configs and logs in {}) ...",
        opts.nodes,
        opts.regions,
        data_dir.display()
    );
    let started = Instant::now();
    let pg_opts = PlaygroundOptions {
        nodes: opts.nodes,
        regions: opts.regions,
        data_dir: data_dir.clone(),
        overrides,
        binary: opts.binary.clone(),
        ready_timeout: Duration::from_secs(120),
        insecure: false,
    };
    let mut pg = Playground::start(&pg_opts).await.context("starting the playground")?;
    println!("   serving after {:.1}s:", started.elapsed().as_secs_f64());
    for n in &pg.cluster.nodes {
        println!(
            "   node {} (region {}): native {}  RESP {}  admin {}  pid {}",
            n.id, n.region, n.native, n.resp, n.admin, n.pid
        );
    }
    let security = &pg.cluster.security;
    if let (Some(ca), Some(token)) = (&security.ca_cert, &security.admin_token) {
        println!(
            "\n   Secure by default: TLS on every port, users and tokens (see {}).\n   \
             presage-ctl needs: export PRESAGE_CA_CERT={} PRESAGE_TOKEN={token}",
            data_dir.join("cluster.json").display(),
            ca.display()
        );
    }
    let admins: Vec<AdminEndpoint> = pg.admins(None).into_iter().map(|(_, a)| a).collect();
    let first = admins[0].clone();
    if let Ok(Ok(info)) = tokio::task::spawn_blocking(move || first.client().cluster()).await {
        println!(
            "\n   Replication groups ($ presage-ctl --admin {} groups): a group takes one node per region; \
             nodes in no group are spares.\n",
            admins[0].addr
        );
        print_indented(&ctl::groups_table(&info));
    }
    let cluster_started = Instant::now();
    let mut result = drive(opts, &pg, &admins).await;
    if result.is_ok() {
        result = second_act(opts, &mut pg, cluster_started).await;
    }
    println!("\n7. Stopping the nodes (SIGTERM: leaderships move away, requests drain) ...");
    let stopping = Instant::now();
    let killed = tokio::task::spawn_blocking(move || pg.stop(Duration::from_secs(20))).await?;
    if killed == 0 {
        println!("   all {} nodes stopped cleanly in {:.1}s", opts.nodes, stopping.elapsed().as_secs_f64());
    } else {
        println!("   {killed} node(s) did not stop within 20s and were killed");
    }
    result
}

/// The detectors learn each node's normal from 120 samples (24 s at the demo's 200 ms).
const DETECTOR_WARMUP: Duration = Duration::from_secs(30);

/// Step 6: a node's disk degrades, the node is evacuated, then killed.
async fn second_act(opts: &DemoOptions, pg: &mut Playground, cluster_started: Instant) -> Result<()> {
    if opts.failing_node_ramp_secs == 0 {
        println!("\n6. Second act (a failing disk) skipped: --failing-node-ramp-secs 0");
        return Ok(());
    }
    let first = pg.admins(None).into_iter().map(|(_, a)| a).next().context("an empty playground")?;
    let chosen =
        tokio::task::spawn_blocking(move || presage_bench::scenario::choose_failing_node(&first.client())).await?;
    let failing = match chosen {
        Ok(n) => n,
        Err(e) => {
            println!(
                "\n6. Second act (a failing disk) skipped: {e} (it needs a spare node, e.g. --nodes 5 --regions 3)"
            );
            return Ok(());
        }
    };
    let warmup_secs = DETECTOR_WARMUP.saturating_sub(cluster_started.elapsed()).as_secs().max(10);
    let story = presage_bench::scenario::StoryOptions {
        keys: opts.keys,
        value_bytes: opts.value_bytes,
        ramp_secs: opts.failing_node_ramp_secs,
        warmup_secs,
        after_kill_secs: 10,
        seed: opts.seed,
        ..presage_bench::scenario::StoryOptions::default()
    };
    println!(
        "\n6. Second act, a failing disk: node {failing}'s writes slow from 0 to 1 s (the election timeout) over {}s \
         while {} paced clients send {} requests/s; the node is killed when its disk gets there. \
         The failure analysis and the shard manager act on their own:\n",
        story.ramp_secs,
        story.workers,
        story.workers as u64 * 1000 / story.op_interval_ms.max(1)
    );
    let report = presage_bench::scenario::story(pg, &story, presage_bench::scenario::Mode::Predictive, &|line| {
        println!("   {line}")
    })
    .await?;
    println!();
    print_indented(&presage_bench::scenario::side_by_side(std::slice::from_ref(&report)));
    let lead = report.warning_lead_seconds.map_or("no warning".to_string(), |s| format!("{s:.0}s"));
    println!(
        "\n   {} of {} requests failed; p99 {:.1} ms before the disk degraded, {:.1} ms from then on; \
         first warning {lead} before the failure; node {} {} when it died",
        report.failed_requests,
        report.requests,
        report.p99_ms_steady,
        report.p99_ms_during_event,
        failing,
        if report.evacuated_before_kill { "held no replica" } else { "still held replicas" },
    );
    Ok(())
}

fn validate(opts: &DemoOptions) -> Result<()> {
    if opts.nodes == 0 || opts.regions == 0 || opts.regions > opts.nodes {
        bail!("--nodes and --regions must be positive, with at least one node per region");
    }
    if opts.keys < 100 {
        bail!("the demo needs at least 100 keys, got {}", opts.keys);
    }
    if opts.workers == 0 || opts.workload_secs == 0 {
        bail!("--workers and --seconds must be positive");
    }
    if opts.read_percent > 100 {
        bail!("--read-percent is at most 100, got {}", opts.read_percent);
    }
    if !(opts.zipf_exponent.is_finite() && opts.zipf_exponent >= 0.0) {
        bail!("--zipf must be a non-negative number, got {}", opts.zipf_exponent);
    }
    Ok(())
}

/// Steps 2 to 5, against a running playground.
async fn drive(opts: &DemoOptions, pg: &Playground, admins: &[AdminEndpoint]) -> Result<()> {
    let client =
        Arc::new(Client::connect(&pg.cluster.native_addrs(), pg.client_config()).await.context("connecting a client")?);
    let before = shard_rows(admins.to_vec()).await?;
    println!("\n2. The shards before ($ presage-ctl --admin {} shards):\n", admins[0].addr);
    print_indented(&ctl::shards_table(&before));
    print_leaders("leaders per node", &before);

    println!("\n3. Loading {} keys of {} bytes through the client library ...", opts.keys, opts.value_bytes);
    load(opts, &client).await?;

    println!(
        "\n4. A zipfian workload (exponent {}, {}% reads) from {} concurrent clients for {}s; \
         shards split by load above {} requests/s:",
        opts.zipf_exponent, opts.read_percent, opts.workers, opts.workload_secs, opts.split_qps
    );
    let (stats, changes, elapsed) = workload(opts, &client, admins).await?;

    let after = shard_rows(admins.to_vec()).await?;
    println!("\n5. The shards after ($ presage-ctl --admin {} shards):\n", admins[0].addr);
    print_indented(&ctl::shards_table(&after));
    print_leaders("leaders per node", &after);

    // Every loaded key is still there.
    let mut found = 0;
    let step = (opts.keys / VERIFY_SAMPLE_KEYS).max(1);
    let sample: Vec<Vec<u8>> = (0..opts.keys).step_by(step as usize).map(key).collect();
    for chunk in sample.chunks(100) {
        found += client.get_many(chunk).await?.iter().filter(|v| v.is_some()).count();
    }
    summary(opts, &stats, &changes, elapsed, before.len(), after.len(), found, sample.len());
    if found != sample.len() {
        bail!("{} of {} sampled keys are missing", sample.len() - found, sample.len());
    }
    Ok(())
}

/// Loads keys `0..keys` in batches, with a progress bar.
async fn load(opts: &DemoOptions, client: &Arc<Client>) -> Result<()> {
    let pb = ProgressBar::new(opts.keys);
    pb.set_style(
        ProgressStyle::with_template("   {bar:40.cyan/blue} {pos}/{len} keys  {per_sec}  eta {eta}")
            .context("progress bar template")?,
    );
    let started = Instant::now();
    let mut values = ValueGen::new(ValueKind::Compressible, opts.value_bytes, opts.seed);
    let mut batches = Vec::new();
    let mut i = 0;
    while i < opts.keys {
        let end = (i + LOAD_BATCH_KEYS as u64).min(opts.keys);
        batches.push((i..end).map(|k| BatchOp::Put { key: key(k), value: values.value(k) }).collect::<Vec<_>>());
        i = end;
    }
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut batches = batches.into_iter();
    loop {
        while pending.len() < LOAD_BATCHES_IN_FLIGHT {
            let Some(batch) = batches.next() else { break };
            let (client, n) = (Arc::clone(client), batch.len() as u64);
            pending.push(async move { client.batch(batch).await.map(|()| n) });
        }
        match futures::StreamExt::next(&mut pending).await {
            Some(r) => pb.inc(r.context("loading a batch")?),
            None => break,
        }
    }
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!("   loaded {} keys in {secs:.1}s ({:.0} keys/s)", opts.keys, opts.keys as f64 / secs);
    Ok(())
}

/// Runs the workload with a progress bar and a watcher printing shard changes.
async fn workload(
    opts: &DemoOptions,
    client: &Arc<Client>,
    admins: &[AdminEndpoint],
) -> Result<(Vec<WorkerStats>, Changes, Duration)> {
    let pb = ProgressBar::new(opts.workload_secs);
    pb.set_style(
        ProgressStyle::with_template("   {bar:40.green/blue} {pos}/{len}s  {msg}").context("progress bar template")?,
    );
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let watcher = {
        let (admins, stop, pb) = (admins.to_vec(), Arc::clone(&stop), pb.clone());
        std::thread::spawn(move || watch(&admins, &stop, &pb, started))
    };
    let zipf = Zipf::new(opts.keys as f64, opts.zipf_exponent).context("zipf distribution")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(opts.workload_secs);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..opts.workers {
        let (client, ops, opts) = (Arc::clone(client), Arc::clone(&ops), opts.clone());
        tasks.spawn(async move { worker(&client, &opts, zipf, w as u64, deadline, &ops).await });
    }
    let mut last = (0u64, Instant::now());
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = ops.load(Ordering::Relaxed);
        let dt = last.1.elapsed().as_secs_f64();
        if dt >= 1.0 {
            pb.set_message(format!("{:.0} ops/s", (now - last.0) as f64 / dt));
            last = (now, Instant::now());
        }
        pb.set_position(started.elapsed().as_secs().min(opts.workload_secs));
    }
    let mut stats = Vec::new();
    while let Some(r) = tasks.join_next().await {
        stats.push(r.context("a workload task failed")??);
    }
    let elapsed = started.elapsed();
    // Let the watcher see what the last seconds started (a split takes a moment to show).
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let changes = watcher.join().map_err(|_| anyhow::anyhow!("the watcher thread panicked"))?;
    pb.finish_and_clear();
    Ok((stats, changes, elapsed))
}

async fn worker(
    client: &Client,
    opts: &DemoOptions,
    zipf: Zipf<f64>,
    id: u64,
    deadline: tokio::time::Instant,
    ops: &AtomicU64,
) -> Result<WorkerStats> {
    let mut rng = SmallRng::seed_from_u64(opts.seed ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut values = ValueGen::new(ValueKind::Compressible, opts.value_bytes, opts.seed + id);
    let hist = || Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).context("latency histogram");
    let mut s = WorkerStats { reads: hist()?, writes: hist()?, errors: 0, last_error: None };
    while tokio::time::Instant::now() < deadline {
        // Rank 1 is the most popular key; ranks map to keys in order, so the hot keys are
        // neighbours at the start of the keyspace.
        let rank = zipf.sample(&mut rng) as u64;
        let k = key(rank.saturating_sub(1).min(opts.keys - 1));
        let read = rng.random_range(0..100) < opts.read_percent;
        let t = Instant::now();
        let r = if read { client.get(&k).await.map(|_| ()) } else { client.put(&k, &values.value(rank)).await };
        let us = (t.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
        match r {
            Ok(()) if read => s.reads.saturating_record(us),
            Ok(()) => s.writes.saturating_record(us),
            Err(e) => {
                s.errors += 1;
                s.last_error = Some(e.to_string());
            }
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
    Ok(s)
}

/// Polls the shards until `stop`, printing splits, merges and moves above the progress bar.
fn watch(admins: &[AdminEndpoint], stop: &AtomicBool, pb: &ProgressBar, started: Instant) -> Changes {
    let mut changes = Changes::default();
    let mut prev: Option<BTreeMap<u64, ShardMeta>> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(WATCH_INTERVAL);
        let Ok(rows) = shard_rows_blocking(admins) else { continue };
        let now: BTreeMap<u64, ShardMeta> = rows.into_iter().map(|r| (r.shard.id, r.shard)).collect();
        if let Some(old) = &prev {
            let t = started.elapsed().as_secs_f64();
            let say = |what: String| pb.suspend(|| println!("   [{t:5.1}s] {what}"));
            for (id, s) in now.iter().filter(|(id, _)| !old.contains_key(id)) {
                // The shard that split keeps the left part: it now ends where the new one starts.
                let parent =
                    now.values().find(|p| p.end.as_deref() == Some(s.start.as_slice()) && old.contains_key(&p.id));
                changes.splits += 1;
                let range = |m: &ShardMeta| {
                    format!("[{}, {})", ctl::show_key(Some(&m.start), true), ctl::show_key(m.end.as_deref(), false))
                };
                say(match parent {
                    Some(p) => format!(
                        "split: shard {} split at {}: it keeps {}, new shard {id} takes {}",
                        p.id,
                        ctl::show_key(Some(&s.start), true),
                        range(p),
                        range(s)
                    ),
                    None => format!("split: new shard {id} takes {}", range(s)),
                });
            }
            for id in old.keys().filter(|id| !now.contains_key(id)) {
                changes.merges += 1;
                say(format!("merge: shard {id} merged into its neighbour"));
            }
            for (id, s) in &now {
                let Some(o) = old.get(id) else { continue };
                if let (Some(a), Some(b)) = (o.leader, s.leader) {
                    if a != b {
                        changes.leader_moves += 1;
                        say(format!("leader move: shard {id} from node {a} to node {b}"));
                    }
                }
                let nodes = |m: &ShardMeta| m.replicas.iter().map(|r| r.node).collect::<Vec<NodeId>>();
                if nodes(o) != nodes(s) {
                    changes.replica_moves += 1;
                    say(format!("replicas: shard {id} {:?} -> {:?}", nodes(o), nodes(s)));
                }
            }
        }
        prev = Some(now);
    }
    changes
}

fn shard_rows_blocking(admins: &[AdminEndpoint]) -> Result<Vec<ShardRow>> {
    presage_bench::scenario::shard_rows(admins)
}

async fn shard_rows(admins: Vec<AdminEndpoint>) -> Result<Vec<ShardRow>> {
    tokio::task::spawn_blocking(move || shard_rows_blocking(&admins)).await?
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

fn print_leaders(what: &str, rows: &[ShardRow]) {
    let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    for r in rows {
        if let Some(l) = r.shard.leader {
            *per_node.entry(l).or_default() += 1;
        }
    }
    let shown: Vec<String> = per_node.iter().map(|(n, c)| format!("node {n}: {c}")).collect();
    println!("\n   {what}: {}", shown.join(", "));
}

#[allow(clippy::too_many_arguments)]
fn summary(
    opts: &DemoOptions,
    stats: &[WorkerStats],
    changes: &Changes,
    elapsed: Duration,
    shards_before: usize,
    shards_after: usize,
    found: usize,
    sampled: usize,
) {
    let merge = |pick: fn(&WorkerStats) -> &Histogram<u64>| {
        let mut h = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).ok()?;
        for s in stats {
            h.add(pick(s)).ok()?;
        }
        Some(h)
    };
    let (reads, writes) = (merge(|s| &s.reads), merge(|s| &s.writes));
    let errors: u64 = stats.iter().map(|s| s.errors).sum();
    let count = |h: &Option<Histogram<u64>>| h.as_ref().map_or(0, Histogram::len);
    let total = count(&reads) + count(&writes);
    let secs = elapsed.as_secs_f64();
    let line = |name: &str, h: &Option<Histogram<u64>>| match h {
        Some(h) if !h.is_empty() => format!(
            "   {name:<7}{:>9} ops  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms",
            h.len(),
            h.value_at_quantile(0.50) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.value_at_quantile(0.999) as f64 / 1e3
        ),
        _ => format!("   {name:<7}        0 ops"),
    };
    println!("\nSummary");
    println!("   {total} operations in {secs:.1}s: {:.0} ops/s from {} clients", total as f64 / secs, opts.workers);
    println!("{}", line("reads", &reads));
    println!("{}", line("writes", &writes));
    let last_error = stats.iter().find_map(|s| s.last_error.clone());
    match last_error {
        Some(e) => println!("   errors  {errors} (last: {e})"),
        None => println!("   errors  0"),
    }
    println!(
        "   shards  {shards_before} -> {shards_after}: {} load splits, {} merges, {} leader moves, {} replica moves seen",
        changes.splits, changes.merges, changes.leader_moves, changes.replica_moves
    );
    println!("   data    {found} of {sampled} sampled keys read back");
}
