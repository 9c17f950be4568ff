//! The failing-node scenario (design.md §6), shared by `presage-bench scenario failing-node`
//! and the second act of `make demo`: while a paced read/write workload runs, one node fails in
//! one of the shapes of [`fault::Fault`] (by default its disk degrades gradually (engine fault injection: synced and plain writes slow from 0 to 1 s
//! over `ramp_secs`); when the injected latency reaches the 1 s election timeout the node is
//! killed (SIGKILL). With the predictive path on, the failure analysis's rising risk makes the
//! shard manager move the node's leaderships away and evacuate its replicas to a spare before
//! the kill; with it off (`proactive-migration = false`) the cluster only reacts to the death:
//! elections, then a repair once the node is declared down.
//!
//! What is measured, from the client's side:
//! - `failed_requests`: workload and probe requests that returned an error (after the client
//!   library's own retries), and `failed_by_kind` by the client's error kind;
//! - `p99_ms_steady` / `p99_ms_during_event`: the workload's p99 before the ramp (its second
//!   half of the warm-up) and from the ramp to the end. Each worker sends one request every
//!   `op_interval_ms` on a fixed schedule (open loop: a slow request does not hold back the
//!   next) and latency runs from the scheduled start;
//! - `unavailable_shard_seconds`: one probe per data shard reads a key of the shard every
//!   `PROBE_INTERVAL`; a probe slower than `UNAVAILABLE_AFTER` counts its whole duration;
//! - `bytes_moved`: snapshot data the nodes sent during the event (their
//!   `presage_snapshot_sent_bytes_total` metrics);
//! - `warning_lead_seconds`: from the first early warning about the node to its death.
//!
//! The failing-node story, shared by `presage-bench scenario failing-node` and the demo's second
//! act: open-loop paced workers (latency from the scheduled start), one read probe per data shard
//! (a probe slower than 250 ms counts as unavailability), a watcher thread narrating warnings,
//! risk, migration stages, leaders and replicas of the node; the disk ramp via `PUT /v1/faults`,
//! SIGKILL at its end; figures, side-by-side text, JSON and an SVG plot. Predictive vs reactive =
//! `proactive-migration` on or off. `presage-bench scenario campaign` runs every fault shape in
//! both modes ([`campaign_table`]).
//!
//! With `nodes_failing` 2, two members of one group fail the same way at once (each has a spare
//! of its own); with `region_failing`, every node of the failing member's region does (its
//! spares too, so the member's replacement comes from another region). The figures then cover
//! every failing member: warned and leading nothing when the last of them was; evacuated when
//! no failing member held a replica at the kill.
//!
//! - `choose`: which nodes fail.
//! - [`fault`]: the fault shapes and how each is injected.
//! - [`noise`]: healthy nodes under noise (`scenario noise`), for false alarms.
//! - [`overload`]: critical traffic under a bulk flood (`scenario overload`), admission by
//!   priority on and off.
//! - [`periodic`]: a recurring hot spot (`scenario periodic`), forecasting on and off.
//! - `report`: the figures as text tables, JSON and an SVG plot.
//! - `watch`: the watcher thread that narrates and keeps the timings.

mod choose;
pub mod fault;
pub mod noise;
pub mod overload;
pub mod periodic;
mod report;
mod watch;

pub use choose::{choose_failing_node, choose_failing_nodes};
pub use report::{campaign_json, campaign_table, draw, side_by_side, to_json};
use watch::{watch, Watched};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use presage_client::{BatchOp, Client};
use presage_shardmgr::{AdminCommand, NodeId, META_SHARD_ID};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::datagen::{key, ValueGen, ValueKind};
use fault::Fault;
use presage_ctl::{AdminClient, AdminEndpoint};
use presage_playground::{Playground, PlaygroundOptions};

/// Whether the predictive path runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Risk moves leaderships and replicas off the node before it dies.
    Predictive,
    /// `proactive-migration = false` and no local disk check: the cluster reacts to the
    /// death only.
    Reactive,
}

impl Mode {
    /// The settings that select the mode: the shard manager's proactive migration and the
    /// node's local disk check.
    pub fn override_settings(self) -> [String; 2] {
        let on = self == Mode::Predictive;
        [format!("server.shard-manager.proactive-migration={on}"), format!("self-check.enabled={on}")]
    }
}

/// A probe slower than this counts as its shard being unavailable (for the probe's duration).
pub const UNAVAILABLE_AFTER: Duration = Duration::from_millis(250);
/// The pause between two probes of a shard.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// How often the watcher looks at warnings, migrations and leaders.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// Largest latency recorded, in microseconds.
const MAX_LATENCY_US: u64 = 120_000_000;
/// Injected latency at the end of the ramp (the election timeout), in microseconds.
const RAMP_END_US: u64 = 1_000_000;
/// The longest the kill waits for a last look at the failing node's counters.
const LAST_LOOK: Duration = Duration::from_secs(2);
/// Requests of one worker in flight at once; past it the schedule waits.
const MAX_INFLIGHT_PER_WORKER: usize = 256;
/// Keys per batch while loading.
const LOAD_BATCH_KEYS: u64 = 500;

/// The story's timing and workload.
#[derive(Debug, Clone, Serialize)]
pub struct StoryOptions {
    /// Keys the workload touches (`datagen::key(0..keys)`, loaded beforehand).
    pub keys: u64,
    /// Bytes per written value.
    pub value_bytes: usize,
    /// Paced workers.
    pub workers: usize,
    /// Each worker's schedule: one request every this many milliseconds.
    pub op_interval_ms: u64,
    /// Share of reads, in percent.
    pub read_percent: u32,
    /// Workload before the ramp (the steady p99 is its second half).
    pub warmup_secs: u64,
    /// The event's length: the fault starts, and the node is killed this long after (the
    /// disk's latency ramp to 1 s, for the default fault).
    pub ramp_secs: u64,
    /// What happens to the failing node.
    pub fault: Fault,
    /// Members of one group that fail together, each the same way (each needs a spare).
    pub nodes_failing: usize,
    /// The failing member's whole region fails with it: every node of the region (the spares
    /// there too) gets the fault and is killed; the member's spare must come from elsewhere.
    pub region_failing: bool,
    /// Workload after the kill.
    pub after_kill_secs: u64,
    /// Workload seed.
    pub seed: u64,
}

impl Default for StoryOptions {
    fn default() -> Self {
        StoryOptions {
            keys: 2_000,
            value_bytes: 256,
            workers: 8,
            op_interval_ms: 10,
            read_percent: 50,
            warmup_secs: 35,
            ramp_secs: 90,
            fault: Fault::Ramp,
            nodes_failing: 1,
            region_failing: false,
            after_kill_secs: 20,
            seed: 42,
        }
    }
}

/// What `presage-bench scenario failing-node` does.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioOptions {
    /// The story.
    pub story: StoryOptions,
    /// Nodes (one group of three, the rest spares).
    pub nodes: u64,
    /// Regions (the spare needs a region the group lacks once the failing node is gone).
    pub regions: u64,
    /// Data shards the keyspace is split into before the run (leaders spread over the group).
    pub shards: u64,
    /// Settings for every node (`key=value`), after the scenario's own.
    pub overrides: Vec<String>,
    /// The `presage` binary.
    #[serde(skip)]
    pub binary: PathBuf,
    /// Folder for the playgrounds (default: the system's temporary folder).
    #[serde(skip)]
    pub work_dir: Option<PathBuf>,
}

impl Default for ScenarioOptions {
    fn default() -> Self {
        ScenarioOptions {
            story: StoryOptions::default(),
            nodes: 4,
            regions: 4,
            shards: 6,
            overrides: Vec::new(),
            binary: PathBuf::from("presage"),
            work_dir: None,
        }
    }
}

/// Settings every scenario node gets: telemetry five times a second (the detectors' warm-up
/// takes 24 s) and a node declared down 10 s after it went silent (the reactive repair).
pub fn scenario_overrides() -> Vec<String> {
    vec![
        "server.shard-manager.heartbeat-interval-ms=\"200ms\"".to_string(),
        "server.shard-manager.node-suspect-after-ms=\"3s\"".to_string(),
        "server.shard-manager.node-down-after-ms=\"10s\"".to_string(),
    ]
}

/// One moment of the story.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEvent {
    /// Seconds since the workload started.
    pub at_secs: f64,
    /// What happened.
    pub what: String,
}

/// One second of the workload.
#[derive(Debug, Clone, Serialize)]
pub struct SecondPoint {
    /// Seconds since the workload started.
    pub second: u64,
    /// Requests scheduled in that second that completed.
    pub ops: u64,
    /// Their p99, in milliseconds.
    pub p99_ms: Option<f64>,
}

/// The story's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// The fault shape.
    pub fault: Fault,
    /// The mode.
    pub mode: Mode,
    /// The node whose disk degraded and which was killed (the first, when several did).
    pub failing_node: NodeId,
    /// Every node that failed (one group's members).
    pub failing_nodes: Vec<NodeId>,
    /// Requests that returned an error.
    pub failed_requests: u64,
    /// Requests made (workload and probes).
    pub requests: u64,
    /// The workload's p99 before the ramp, in milliseconds.
    pub p99_ms_steady: f64,
    /// The workload's p99 from the ramp to the end, in milliseconds.
    pub p99_ms_during_event: f64,
    /// The workload's largest latency during the event, in milliseconds.
    pub max_ms_during_event: f64,
    /// The longest single client call of the workload, in milliseconds (a call slower than
    /// its interval also delays the calls scheduled behind it).
    pub slowest_call_ms: f64,
    /// Seconds of unavailability, summed over the data shards.
    pub unavailable_shard_seconds: f64,
    /// Snapshot data sent by the nodes during the event, in bytes.
    pub bytes_moved: u64,
    /// From the first early warning about the node to its death, in seconds (with several
    /// failing nodes: the node warned last).
    pub warning_lead_seconds: Option<f64>,
    /// From the fault's start to the first early warning about the node, in seconds (with
    /// several: until every one was warned).
    pub seconds_to_warning: Option<f64>,
    /// From the fault's start to the node leading no shard (for good, until the kill), in
    /// seconds (with several: until none leads).
    pub seconds_to_no_leaderships: Option<f64>,
    /// The node (every failing member) held no replica when it was killed.
    pub evacuated_before_kill: bool,
    /// Seconds since the workload started: the ramp began, the node was killed.
    pub ramp_at_secs: f64,
    /// See above.
    pub kill_at_secs: f64,
    /// What happened, in order.
    pub timeline: Vec<TimelineEvent>,
    /// The workload second by second.
    pub series: Vec<SecondPoint>,
    /// The last error a request returned.
    pub last_error: Option<String>,
    /// Failed requests by the client's error kind (`outcome-unknown`: a write that may or may
    /// not have applied; `timeout`; `refused`; `unreachable`; `invalid`).
    pub failed_by_kind: std::collections::BTreeMap<&'static str, u64>,
}

/// Runs the whole scenario in `mode` on a playground of its own.
pub async fn run(opts: &ScenarioOptions, mode: Mode, narrate: &(dyn Fn(&str) + Sync)) -> Result<ScenarioReport> {
    let failing = opts.story.nodes_failing as u64;
    if !(1..=2).contains(&failing) {
        bail!("--nodes-failing is 1 or 2 (members of one group of three)");
    }
    if opts.nodes < 3 + failing || opts.regions < 2 || opts.regions > opts.nodes {
        bail!(
            "the scenario needs at least {} nodes (a group of 3 and a spare per failing node) in 2 to `nodes` regions",
            3 + failing
        );
    }
    if opts.shards == 0 || opts.shards > opts.story.keys {
        bail!("--shards must be between 1 and --keys");
    }
    let mut overrides = scenario_overrides();
    overrides.extend(mode.override_settings());
    overrides.extend(opts.overrides.iter().cloned());
    narrate(&format!("starting {} nodes in {} regions ({mode:?})", opts.nodes, opts.regions));
    let (_tmp, mut pg) = start_playground(opts, overrides, "presage-scenario").await?;
    let result = async {
        load_and_spread(&pg, opts, narrate).await?;
        story(&mut pg, &opts.story, mode, narrate).await
    }
    .await;
    let _ = tokio::task::spawn_blocking(move || pg.stop(Duration::from_secs(20))).await;
    result
}

/// A playground of the scenario's shape with `overrides`, in a temporary folder named after
/// `prefix` (under `work_dir` if given; removed when the returned guard drops).
async fn start_playground(
    opts: &ScenarioOptions,
    overrides: Vec<String>,
    prefix: &str,
) -> Result<(tempfile::TempDir, Playground)> {
    let tmp = match &opts.work_dir {
        Some(d) => tempfile::Builder::new().prefix(prefix).tempdir_in(d),
        None => tempfile::Builder::new().prefix(prefix).tempdir(),
    }
    .context("creating a temporary folder")?;
    let pg_opts = PlaygroundOptions {
        nodes: opts.nodes,
        regions: opts.regions,
        data_dir: tmp.path().to_path_buf(),
        overrides,
        binary: opts.binary.clone(),
        ready_timeout: Duration::from_secs(120),
        insecure: false,
    };
    let pg = Playground::start(&pg_opts).await.context("starting the playground")?;
    Ok((tmp, pg))
}

/// Loads the story's keys and splits them into the scenario's data shards, leaders spread;
/// returns the client that loaded them.
async fn load_and_spread(pg: &Playground, opts: &ScenarioOptions, narrate: &(dyn Fn(&str) + Sync)) -> Result<Client> {
    let client = Client::connect(&pg.cluster.native_addrs(), pg.client_config()).await?;
    load(&client, &opts.story).await?;
    split_and_spread(&admin_addrs(pg, None), opts.story.keys, opts.shards).await?;
    narrate(&format!("loaded {} keys into {} data shards", opts.story.keys, opts.shards));
    Ok(client)
}

/// Loads `keys` keys through `client`.
pub async fn load(client: &Client, opts: &StoryOptions) -> Result<()> {
    let mut values = ValueGen::new(ValueKind::Compressible, opts.value_bytes, opts.seed);
    let mut i = 0;
    while i < opts.keys {
        let end = (i + LOAD_BATCH_KEYS).min(opts.keys);
        client.batch((i..end).map(|k| BatchOp::Put { key: key(k), value: values.value(k) }).collect()).await?;
        i = end;
    }
    Ok(())
}

/// Splits the data shard into `shards` at even key indexes and hands their leaderships
/// round-robin to the group's nodes.
async fn split_and_spread(admins: &[AdminEndpoint], keys: u64, shards: u64) -> Result<()> {
    for i in 1..shards {
        let at = key(keys * i / shards);
        let shard = wait_for(admins, Duration::from_secs(30), "the shard of a split key", {
            let at = at.clone();
            move |a| {
                let rows = a.shards(None, None, Some(&at)).ok()?;
                rows.first().map(|r| r.shard.id)
            }
        })
        .await?;
        admin_command(admins, AdminCommand::Split { shard, key: Some(at.clone()) }).await?;
        wait_for(admins, Duration::from_secs(30), "the split", move |a| {
            let rows = a.shards(None, None, None).ok()?;
            rows.iter().any(|r| r.shard.start == at).then_some(())
        })
        .await?;
    }
    let rows = wait_for(admins, Duration::from_secs(30), "every shard's leader", |a| {
        let rows = a.shards(None, None, None).ok()?;
        rows.iter().all(|r| r.shard.leader.is_some()).then_some(rows)
    })
    .await?;
    let data: Vec<_> = rows.iter().filter(|r| r.shard.id != META_SHARD_ID).collect();
    for (i, r) in data.iter().enumerate() {
        let voters = r.shard.voters();
        let to = voters[i % voters.len().max(1)];
        if r.shard.leader != Some(to) {
            admin_command(admins, AdminCommand::TransferLeader { shard: r.shard.id, to }).await?;
        }
    }
    Ok(())
}

async fn admin_command(admins: &[AdminEndpoint], command: AdminCommand) -> Result<()> {
    let admins = admins.to_vec();
    // A shard busy with another operator (the previous split finishing) answers 503: the
    // command is tried again for a while.
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut last = None;
            for a in &admins {
                match a.client().admin(&command) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = Some(e),
                }
            }
            match last {
                Some(presage_ctl::CtlError::Api { status: 503, .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(250));
                }
                last => {
                    return Err(last.map_or_else(|| anyhow::anyhow!("no admin address"), anyhow::Error::from))
                        .with_context(|| format!("{command:?}"))
                }
            }
        }
    })
    .await?
}

/// Polls every admin address each 250 ms until `check` answers, for at most `timeout`.
async fn wait_for<T: Send + 'static>(
    admins: &[AdminEndpoint],
    timeout: Duration,
    what: &str,
    check: impl Fn(&AdminClient) -> Option<T> + Send + Sync + 'static,
) -> Result<T> {
    let admins = admins.to_vec();
    let what = what.to_string();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        loop {
            for a in &admins {
                if let Some(v) = check(&a.client()) {
                    return Ok(v);
                }
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
    .await?
}

fn admin_addrs(pg: &Playground, except: Option<NodeId>) -> Vec<AdminEndpoint> {
    pg.admins(except).into_iter().map(|(_, a)| a).collect()
}

/// Counters the workers and probes share.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    failed: AtomicU64,
    /// The longest single client call, in microseconds (schedule lateness aside).
    slowest_call_us: AtomicU64,
    last_error: Mutex<Option<String>>,
    by_kind: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Counts {
    fn record(&self, r: &Result<(), presage_client::ClientError>) {
        use presage_client::ClientError;
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = r {
            self.failed.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
            let kind = match e {
                ClientError::OutcomeUnknown(_) => "outcome-unknown",
                ClientError::Timeout { .. } => "timeout",
                ClientError::Refused(_) => "refused",
                ClientError::Unreachable(_) => "unreachable",
                ClientError::CrossShard(_) => "cross-shard",
                ClientError::Invalid(_) => "invalid",
            };
            *self.by_kind.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(kind).or_default() += 1;
        }
    }
}

/// Runs the story on a running playground whose nodes have [`scenario_overrides`], `keys`
/// loaded, and the mode's `proactive-migration`. Narrates the timeline as it happens.
pub async fn story(
    pg: &mut Playground,
    opts: &StoryOptions,
    mode: Mode,
    narrate: &(dyn Fn(&str) + Sync),
) -> Result<ScenarioReport> {
    let all_admins = admin_addrs(pg, None);
    let first = all_admins.first().cloned().context("an empty playground")?;
    let (count, whole_region) = (opts.nodes_failing, opts.region_failing);
    let failing =
        tokio::task::spawn_blocking(move || choose_failing_nodes(&first.client(), count, whole_region)).await??;
    let failing_admins: Vec<(NodeId, AdminEndpoint)> = failing
        .iter()
        .map(|&n| pg.admin(n).map(|a| (n, a)).context("a failing node's admin address"))
        .collect::<Result<_>>()?;
    let healthy_admins = |pg: &Playground| -> Vec<(NodeId, AdminEndpoint)> {
        pg.admins(None).into_iter().filter(|(n, _)| !failing.contains(n)).collect()
    };
    let first_failing = *failing.first().context("no failing node chosen")?;
    let names = failing.iter().map(|n| format!("node {n}")).collect::<Vec<_>>().join(" and ");
    let client = Arc::new(Client::connect(&pg.cluster.native_addrs(), pg.client_config()).await?);
    let rows = tokio::task::spawn_blocking({
        let a = all_admins.clone();
        move || shard_rows(&a)
    })
    .await??;
    let probe_keys: Vec<Vec<u8>> = rows
        .iter()
        .filter(|r| r.shard.id != META_SHARD_ID)
        .map(|r| if r.shard.start.is_empty() { key(0) } else { r.shard.start.clone() })
        .collect();

    let started = Instant::now();
    let timeline: Arc<Mutex<Vec<TimelineEvent>>> = Arc::default();
    let say = {
        let timeline = Arc::clone(&timeline);
        move |what: String| {
            let at_secs = started.elapsed().as_secs_f64();
            narrate(&format!("[{at_secs:6.1}s] {what}"));
            timeline.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(TimelineEvent { at_secs, what });
        }
    };
    say(format!(
        "workload starts: {} workers, one request each every {} ms, {}% reads; {} shard probes; {names} will fail",
        opts.workers,
        opts.op_interval_ms,
        opts.read_percent,
        probe_keys.len()
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let unavailable_us = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..opts.workers {
        let (client, stop, counts, opts) = (Arc::clone(&client), Arc::clone(&stop), Arc::clone(&counts), opts.clone());
        workers.spawn(worker(client, opts, w as u64, started, stop, counts));
    }
    let mut probes = tokio::task::JoinSet::new();
    for k in probe_keys {
        let (client, stop, counts, unavailable_us) =
            (Arc::clone(&client), Arc::clone(&stop), Arc::clone(&counts), Arc::clone(&unavailable_us));
        probes.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = client.get(&k).await.map(|_| ());
                let took = t.elapsed();
                counts.record(&r);
                if took > UNAVAILABLE_AFTER {
                    unavailable_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        });
    }
    let (watch_tx, watch_rx) = std::sync::mpsc::channel::<String>();
    let seen = Arc::new(Watched::new(failing.len()));
    let watcher = {
        let admins: Vec<AdminEndpoint> = healthy_admins(pg).into_iter().map(|(_, a)| a).collect();
        let (stop, seen, failing) = (Arc::clone(&stop), Arc::clone(&seen), failing.clone());
        std::thread::spawn(move || watch(&admins, &failing, &stop, &seen, &watch_tx))
    };
    let pump = |rx: &std::sync::mpsc::Receiver<String>| {
        while let Ok(what) = rx.try_recv() {
            say(what);
        }
    };
    let sleep_pumping = |until: Instant| {
        let rx = &watch_rx;
        let pump = &pump;
        async move {
            while Instant::now() < until {
                pump(rx);
                tokio::time::sleep(Duration::from_millis(100).min(until.saturating_duration_since(Instant::now())))
                    .await;
            }
            pump(rx);
        }
    };

    sleep_pumping(started + Duration::from_secs(opts.warmup_secs)).await;
    let sent_before = snapshot_bytes_sent(&pg.admins(None)).await;
    let (path, body) = opts.fault.injection(opts.ramp_secs, RAMP_END_US);
    let admins = failing_admins.clone();
    tokio::task::spawn_blocking(move || admins.iter().try_for_each(|(_, a)| a.client().put_raw(path, &body).map(drop)))
        .await?
        .with_context(|| format!("injecting the {} fault", opts.fault.name()))?;
    let ramp_at = started.elapsed();
    say(format!("{names}: {}", opts.fault.describe(opts.ramp_secs)));

    sleep_pumping(started + ramp_at + Duration::from_secs(opts.ramp_secs)).await;
    // The kill comes on time (at most `LAST_LOOK` late): what the node holds is the watcher's
    // latest view.
    let last_look = snapshot_bytes_sent(&failing_admins);
    let sent_failing = tokio::time::timeout(LAST_LOOK, last_look).await.unwrap_or_default();
    let led_nothing = seen.leads_none_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    for &n in &failing {
        pg.kill(n);
    }
    let kill_at = started.elapsed();
    let holds: Vec<Option<usize>> = seen.held.iter().map(|h| usize::try_from(h.load(Ordering::Relaxed)).ok()).collect();
    for (n, h) in failing.iter().zip(&holds) {
        let holding = h.map_or("an unknown number of".to_string(), |h| h.to_string());
        say(format!("node {n} is killed (SIGKILL) holding {holding} replica(s)"));
    }
    sleep_pumping(started + kill_at + Duration::from_secs(opts.after_kill_secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut histograms = Vec::new();
    while let Some(r) = workers.join_next().await {
        histograms.push(r.context("a workload task failed")??);
    }
    while probes.join_next().await.is_some() {}
    let first_warnings = watcher.join().map_err(|_| anyhow::anyhow!("the watcher thread panicked"))?;
    pump(&watch_rx);
    let sent_after = snapshot_bytes_sent(&healthy_admins(pg)).await;

    // Figures.
    let series_len = histograms.iter().map(Vec::len).max().unwrap_or(0);
    let mut series = Vec::with_capacity(series_len);
    let new_hist = || Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).context("latency histogram");
    let (mut steady, mut event) = (new_hist()?, new_hist()?);
    let steady_from = opts.warmup_secs / 2;
    let ramp_second = ramp_at.as_secs();
    for second in 0..series_len {
        let mut h = new_hist()?;
        for w in &histograms {
            if let Some(x) = w.get(second) {
                h.add(x).context("merging histograms")?;
            }
        }
        let s = second as u64;
        if (steady_from..ramp_second).contains(&s) {
            steady.add(&h).context("merging histograms")?;
        } else if s >= ramp_second {
            event.add(&h).context("merging histograms")?;
        }
        let p99_ms = (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64 / 1e3);
        series.push(SecondPoint { second: s, ops: h.len(), p99_ms });
    }
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1e3;
    let sum = |m: &BTreeMap<NodeId, u64>| m.values().sum::<u64>();
    // Each failing node's own sends up to its last look, everyone else's up to the end.
    let before_failing: u64 = failing.iter().filter_map(|n| sent_before.get(n)).sum();
    let before_others = sum(&sent_before) - before_failing;
    let bytes_moved =
        sum(&sent_after).saturating_sub(before_others) + sum(&sent_failing).saturating_sub(before_failing);
    // With several failing members, the one warned (or shed of its leaderships) last counts;
    // a failing region's other nodes (spares, idle) are not asked to be warned.
    let latest = |ts: &[Option<Instant>]| {
        let mut members = ts.iter().take(opts.nodes_failing.max(1));
        members.try_fold(None, |acc: Option<Instant>, t| t.map(|t| Some(acc.map_or(t, |a| a.max(t))))).flatten()
    };
    let last_warned = latest(&first_warnings);
    let warning_lead_seconds = last_warned.map(|w| kill_at.as_secs_f64() - w.duration_since(started).as_secs_f64());
    let since_fault = |t: Instant| t.duration_since(started).as_secs_f64() - ramp_at.as_secs_f64();
    let seconds_to_warning = last_warned.map(since_fault).filter(|s| *s >= 0.0);
    let seconds_to_no_leaderships = latest(&led_nothing).map(|t| since_fault(t).max(0.0));
    let timeline = timeline.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let last_error = counts.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let failed_by_kind = counts.by_kind.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    Ok(ScenarioReport {
        fault: opts.fault,
        mode,
        failing_node: first_failing,
        failing_nodes: failing.clone(),
        failed_requests: counts.failed.load(Ordering::Relaxed),
        requests: counts.requests.load(Ordering::Relaxed),
        p99_ms_steady: p99(&steady),
        p99_ms_during_event: p99(&event),
        max_ms_during_event: event.max() as f64 / 1e3,
        slowest_call_ms: counts.slowest_call_us.load(Ordering::Relaxed) as f64 / 1e3,
        unavailable_shard_seconds: unavailable_us.load(Ordering::Relaxed) as f64 / 1e6,
        bytes_moved,
        warning_lead_seconds: warning_lead_seconds.filter(|s| *s >= 0.0),
        seconds_to_warning,
        seconds_to_no_leaderships,
        evacuated_before_kill: holds.iter().take(opts.nodes_failing.max(1)).all(|h| *h == Some(0)),
        ramp_at_secs: ramp_at.as_secs_f64(),
        kill_at_secs: kill_at.as_secs_f64(),
        timeline,
        series,
        last_error,
        failed_by_kind,
    })
}

/// One open-loop worker: a request every `op_interval_ms` on a fixed schedule until `stop`,
/// each sent at its time whatever the earlier ones do (at most `MAX_INFLIGHT_PER_WORKER` in
/// flight; beyond that the schedule waits and the wait counts as latency). Latencies run
/// from the scheduled start, by second of the schedule.
async fn worker(
    client: Arc<Client>,
    opts: StoryOptions,
    id: u64,
    started: Instant,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> Result<Vec<Histogram<u64>>> {
    let mut rng = SmallRng::seed_from_u64(opts.seed ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut values = ValueGen::new(ValueKind::Compressible, opts.value_bytes, opts.seed + id);
    let interval = Duration::from_millis(opts.op_interval_ms.max(1));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT_PER_WORKER));
    // Each request's scheduled start, latency from it in microseconds, and success.
    let mut calls: tokio::task::JoinSet<(Instant, u64, bool)> = tokio::task::JoinSet::new();
    let mut seconds: Vec<Histogram<u64>> = Vec::new();
    let record = |(scheduled, us, ok): (Instant, u64, bool), seconds: &mut Vec<Histogram<u64>>| -> Result<()> {
        if ok {
            let second = scheduled.duration_since(started).as_secs() as usize;
            while seconds.len() <= second {
                seconds.push(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("latency histogram")?);
            }
            seconds[second].saturating_record(us);
        }
        Ok(())
    };
    // Workers start spread over one interval.
    let mut scheduled = started + interval.mul_f64(id as f64 / opts.workers.max(1) as f64);
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(scheduled.into()).await;
        let permit = Arc::clone(&in_flight).acquire_owned().await.context("the in-flight limit closed")?;
        while let Some(done) = calls.try_join_next() {
            record(done.context("a request task failed")?, &mut seconds)?;
        }
        let k = rng.random_range(0..opts.keys.max(1));
        let write = (rng.random_range(0..100) >= opts.read_percent).then(|| values.value(k));
        let (client, counts) = (Arc::clone(&client), Arc::clone(&counts));
        let at = scheduled;
        calls.spawn(async move {
            let call = Instant::now();
            let r = match write {
                None => client.get(&key(k)).await.map(|_| ()),
                Some(v) => client.put(&key(k), &v).await,
            };
            counts.slowest_call_us.fetch_max(call.elapsed().as_micros() as u64, Ordering::Relaxed);
            counts.record(&r);
            drop(permit);
            (at, (at.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US), r.is_ok())
        });
        scheduled += interval;
    }
    while let Some(done) = calls.join_next().await {
        record(done.context("a request task failed")?, &mut seconds)?;
    }
    Ok(seconds)
}

/// The shards, from the first admin address that answers.
pub fn shard_rows(admins: &[AdminEndpoint]) -> Result<Vec<presage_client::proto::ShardRow>> {
    let mut last = None;
    for a in admins {
        match a.client().shards(None, None, None) {
            Ok(rows) => return Ok(rows),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no admin address"), anyhow::Error::from))
}

/// The value of the series `series` (a metric's name with its labels, as printed) in
/// Prometheus text, 0 when absent.
pub(crate) fn metric_value(text: &str, series: &str) -> f64 {
    let value = |l: &str| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok();
    text.lines().find_map(value).unwrap_or(0.0)
}

/// Each node's `presage_snapshot_sent_bytes_total`; nodes that do not answer are
/// left out.
async fn snapshot_bytes_sent(nodes: &[(NodeId, AdminEndpoint)]) -> BTreeMap<NodeId, u64> {
    let nodes = nodes.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut out = BTreeMap::new();
        for (id, a) in nodes {
            let Ok(text) = a.client().get_raw("/metrics") else { continue };
            out.insert(id, metric_value(&text, "presage_snapshot_sent_bytes_total") as u64);
        }
        out
    })
    .await
    .unwrap_or_default()
}
