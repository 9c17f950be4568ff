//! The noise scenario (design.md §6, "no false evacuations"): healthy nodes under the stress
//! that looks, from afar, like a failing disk or host. `presage-bench scenario noise` runs the
//! failing-node playground in predictive mode with the same paced workload and, after the
//! warm-up, a schedule of noise events on one healthy group member (the *target*, the member
//! leading the most data shards), each followed by a quiet gap of `gap_secs`:
//!
//! - `catch-up`: another group member is killed for [`CATCH_UP_DOWN`] (less than the time after
//!   which the manager declares a node down, so nothing is repaired) and restarted. The nodes
//!   keep a short Raft log ([`SHORT_LOG_ENTRIES`]), so it catches up by snapshots that its
//!   shards' leaders (the target among them) read and stream.
//! - `compaction`: a write burst of [`BURST_BYTES`] in [`BURST_VALUE_BYTES`] values beside the
//!   workload's keys: memtable flushes and compactions on every replica, the target's included.
//! - `cpu-spike`: [`CPU_SPIKE`] of busy threads in the target (`/v1/faults/host`).
//!
//! With `soak_minutes` the schedule repeats until that long has passed since the warm-up.
//!
//! Measured, besides failed requests and the p99: the early warnings raised (node, kind), the
//! evacuations the risk started (migrations with cause `risk`, and those that reached a
//! cut-over), and per node the longest stretch it shed its leaderships (an active warning that
//! slows leaders, or its own disk check shedding, as its `/metrics` say). Healthy nodes should
//! see no evacuation and no shed longer than [`MAX_SHED`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use presage_client::{BatchOp, Client};
use presage_ctl::AdminEndpoint;
use presage_pfa::telemetry::WarningKind;
use presage_playground::Playground;
use presage_shardmgr::NodeId;
use serde::Serialize;

use super::{admin_addrs, choose_failing_node, snapshot_bytes_sent, worker, Counts, Mode, StoryOptions};
use super::{MAX_LATENCY_US, WATCH_INTERVAL};
use crate::datagen::key;

/// How long the catch-up noise keeps a member down (the scenario declares a node down after
/// 10 s of silence).
pub const CATCH_UP_DOWN: Duration = Duration::from_secs(6);
/// The nodes' Raft log length before compaction in this scenario: a member down for
/// [`CATCH_UP_DOWN`] falls behind it and needs snapshots.
pub const SHORT_LOG_ENTRIES: u64 = 64;
/// Bytes the compaction noise writes.
pub const BURST_BYTES: u64 = 96 << 20;
/// Bytes per value of the burst.
pub const BURST_VALUE_BYTES: usize = 16 << 10;
/// Values per batch of the burst.
const BURST_BATCH: usize = 32;
/// The CPU spike's length and busy threads.
pub const CPU_SPIKE: Duration = Duration::from_secs(10);
const CPU_SPIKE_THREADS: u32 = 4;
/// Quiet seconds after each noise event, by default.
pub const DEFAULT_GAP_SECS: u64 = 40;
/// A healthy node should shed its leaderships no longer than this at a time.
pub const MAX_SHED: Duration = Duration::from_secs(30);

/// One kind of noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Noise {
    /// A peer recovering: it pulls snapshots from the target's shards' leaders.
    CatchUp,
    /// A write burst: flushes and compactions.
    Compaction,
    /// A neighbour's CPU spike on the target.
    CpuSpike,
}

impl Noise {
    /// Every kind, in schedule order.
    pub const ALL: [Noise; 3] = [Noise::CatchUp, Noise::Compaction, Noise::CpuSpike];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Noise::CatchUp => "catch-up",
            Noise::Compaction => "compaction",
            Noise::CpuSpike => "cpu-spike",
        }
    }
}

/// What `presage-bench scenario noise` does.
#[derive(Debug, Clone)]
pub struct NoiseOptions {
    /// The noise kinds, in schedule order.
    pub noises: Vec<Noise>,
    /// Quiet seconds after each noise event.
    pub gap_secs: u64,
    /// Repeat the schedule until this many minutes passed since the warm-up (0: once).
    pub soak_minutes: u64,
    /// Nodes, regions, data shards, the workload (its fault fields unused), settings, binary
    /// and folder, as in failing-node.
    pub scenario: super::ScenarioOptions,
}

/// One shed of leaderships.
#[derive(Debug, Clone, Serialize)]
pub struct Shed {
    /// The node.
    pub node: NodeId,
    /// Seconds since the workload started.
    pub from_secs: f64,
    /// How long, in seconds (to the end of the run if it did not end).
    pub secs: f64,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct NoiseReport {
    /// The node the noise was aimed at.
    pub target: NodeId,
    /// Noise events, in order (seconds since the workload started, and the noise).
    pub events: Vec<(f64, Noise)>,
    /// Requests that returned an error, and all requests.
    pub failed_requests: u64,
    /// See above.
    pub requests: u64,
    /// The workload's p99 in the second half of the warm-up, and after it, in milliseconds.
    pub p99_ms_steady: f64,
    /// See above.
    pub p99_ms_noise: f64,
    /// Early warnings raised: node, kind, seconds since the workload started.
    pub warnings: Vec<(NodeId, String, f64)>,
    /// Migrations the risk started (cause `risk`), and those that reached a cut-over.
    pub risk_migrations: u64,
    /// See above: these are evacuations.
    pub evacuations: u64,
    /// Migrations of any other cause (a node declared down: the catch-up's peer stayed away
    /// too long).
    pub other_migrations: u64,
    /// Snapshot data the nodes sent after the warm-up, in bytes (the catch-up's, mostly).
    pub snapshot_bytes_sent: u64,
    /// Every shed of leaderships.
    pub sheds: Vec<Shed>,
    /// The longest, in seconds (0 when none).
    pub longest_shed_secs: f64,
}

impl NoiseReport {
    /// No migration started (not even a preparing one), and no node shed its leaderships
    /// longer than [`MAX_SHED`].
    pub fn no_false_alarm(&self) -> bool {
        self.risk_migrations == 0 && self.other_migrations == 0 && self.longest_shed_secs <= MAX_SHED.as_secs_f64()
    }
}

/// Runs the noise scenario on a playground of its own.
pub async fn run(opts: &NoiseOptions, narrate: &(dyn Fn(&str) + Sync)) -> Result<NoiseReport> {
    let sc = &opts.scenario;
    if sc.nodes < 4 || sc.regions < 2 || sc.regions > sc.nodes || opts.noises.is_empty() {
        bail!("the noise scenario needs at least 4 nodes in 2 to `nodes` regions and one noise");
    }
    let mut overrides = super::scenario_overrides();
    overrides.extend(Mode::Predictive.override_settings());
    overrides.push(format!("raft.log-gc-threshold-entries={SHORT_LOG_ENTRIES}"));
    overrides.extend(sc.overrides.iter().cloned());
    narrate(&format!("starting {} nodes in {} regions", sc.nodes, sc.regions));
    let (_tmp, mut pg) = super::start_playground(sc, overrides.clone(), "presage-noise").await?;
    let result = async {
        let client = Arc::new(super::load_and_spread(&pg, sc, narrate).await?);
        noisy_story(&mut pg, client, opts, &overrides, narrate).await
    }
    .await;
    let _ = tokio::task::spawn_blocking(move || pg.stop(Duration::from_secs(20))).await;
    result
}

async fn noisy_story(
    pg: &mut Playground,
    client: Arc<Client>,
    opts: &NoiseOptions,
    overrides: &[String],
    narrate: &(dyn Fn(&str) + Sync),
) -> Result<NoiseReport> {
    let admins = admin_addrs(pg, None);
    let first = admins.first().cloned().context("an empty playground")?;
    let target = tokio::task::spawn_blocking(move || choose_failing_node(&first.client())).await??;
    let peer = {
        let a = admins.clone();
        tokio::task::spawn_blocking(move || group_peer(&a, target)).await??
    };
    let started = Instant::now();
    let say = |what: String| narrate(&format!("[{:6.1}s] {what}", started.elapsed().as_secs_f64()));
    say(format!("workload starts; noise on node {target} (catch-up pulls from it to node {peer})"));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..opts.scenario.story.workers {
        let (client, stop, counts, story) =
            (Arc::clone(&client), Arc::clone(&stop), Arc::clone(&counts), opts.scenario.story.clone());
        workers.spawn(worker(client, story, w as u64, started, stop, counts));
    }
    let watched = Arc::new(Mutex::new(Watch::default()));
    let watcher = {
        let nodes = pg.admins(None);
        let (stop, watched) = (Arc::clone(&stop), Arc::clone(&watched));
        std::thread::spawn(move || watch(&nodes, started, &stop, &watched))
    };
    tokio::time::sleep(Duration::from_secs(opts.scenario.story.warmup_secs)).await;
    let sent_before = snapshot_bytes_sent(&pg.admins(None)).await;
    let soak_end = started + Duration::from_secs(opts.scenario.story.warmup_secs + opts.soak_minutes * 60);
    let mut events = Vec::new();
    'schedule: loop {
        for &noise in &opts.noises {
            let at = started.elapsed().as_secs_f64();
            say(format!("noise: {} on node {target}", noise.name()));
            events.push((at, noise));
            make_noise(pg, &client, noise, target, peer, overrides, &opts.scenario.story).await?;
            say(format!("noise {} over; quiet for {} s", noise.name(), opts.gap_secs));
            tokio::time::sleep(Duration::from_secs(opts.gap_secs)).await;
            if Instant::now() >= soak_end && (opts.soak_minutes > 0 || events.len() >= opts.noises.len()) {
                break 'schedule;
            }
        }
        if opts.soak_minutes == 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut histograms = Vec::new();
    while let Some(r) = workers.join_next().await {
        histograms.push(r.context("a workload task failed")??);
    }
    watcher.join().map_err(|_| anyhow::anyhow!("the watcher thread panicked"))?;
    let sent_after = snapshot_bytes_sent(&pg.admins(None)).await;
    let snapshot_bytes_sent =
        sent_after.iter().map(|(n, b)| b.saturating_sub(sent_before.get(n).copied().unwrap_or(0))).sum();
    let w = watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (steady, noisy) = split_p99(&histograms, opts.scenario.story.warmup_secs)?;
    let end_secs = started.elapsed().as_secs_f64();
    let mut sheds = w.sheds.clone();
    sheds.extend(w.shedding_since.iter().map(|(&node, &from)| Shed { node, from_secs: from, secs: end_secs - from }));
    let longest_shed_secs = sheds.iter().map(|s| s.secs).fold(0.0, f64::max);
    Ok(NoiseReport {
        target,
        events,
        failed_requests: counts.failed.load(Ordering::Relaxed),
        requests: counts.requests.load(Ordering::Relaxed),
        p99_ms_steady: steady,
        p99_ms_noise: noisy,
        warnings: w.warnings.clone(),
        risk_migrations: w.risk_migrations.len() as u64,
        evacuations: w.risk_migrations.values().filter(|cut| **cut).count() as u64,
        other_migrations: w.other_migrations.len() as u64,
        snapshot_bytes_sent,
        sheds,
        longest_shed_secs,
    })
}

/// Another member of `target`'s group (the catch-up noise's victim).
fn group_peer(admins: &[AdminEndpoint], target: NodeId) -> Result<NodeId> {
    let info = admins.iter().find_map(|a| a.client().cluster().ok()).context("no admin API answered")?;
    let group = info.groups.iter().find(|g| g.nodes.contains(&target)).context("the target is in no group")?;
    group.nodes.iter().copied().find(|n| *n != target).context("the target's group has no other member")
}

/// Injects one noise event and returns when it is over.
async fn make_noise(
    pg: &mut Playground,
    client: &Client,
    noise: Noise,
    target: NodeId,
    peer: NodeId,
    overrides: &[String],
    story: &StoryOptions,
) -> Result<()> {
    match noise {
        Noise::CatchUp => {
            pg.kill(peer);
            tokio::time::sleep(CATCH_UP_DOWN).await;
            pg.restart(peer, overrides).with_context(|| format!("restarting node {peer}"))?;
        }
        Noise::Compaction => {
            let value = vec![0x5a_u8; BURST_VALUE_BYTES];
            let count = (BURST_BYTES / BURST_VALUE_BYTES as u64).max(1);
            let keys: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    let mut k = key(i % story.keys.max(1));
                    k.extend_from_slice(format!("/burst{}", i / story.keys.max(1)).as_bytes());
                    k
                })
                .collect();
            for chunk in keys.chunks(BURST_BATCH) {
                let ops = chunk.iter().map(|k| BatchOp::Put { key: k.clone(), value: value.clone() }).collect();
                client.batch(ops).await.context("the write burst")?;
            }
        }
        Noise::CpuSpike => {
            let a = pg.admin(target).context("the target's admin address")?;
            let body = serde_json::json!({
                "cpu-threads": CPU_SPIKE_THREADS,
                "duration-ms": CPU_SPIKE.as_millis() as u64,
            });
            tokio::task::spawn_blocking(move || a.client().put_raw("/v1/faults/host", &body))
                .await?
                .context("the CPU spike")?;
            tokio::time::sleep(CPU_SPIKE).await;
        }
    }
    Ok(())
}

/// The workload's p99 in the second half of the warm-up and after it, in milliseconds.
fn split_p99(histograms: &[Vec<Histogram<u64>>], warmup_secs: u64) -> Result<(f64, f64)> {
    let new_hist = || Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).context("latency histogram");
    let (mut steady, mut noisy) = (new_hist()?, new_hist()?);
    for w in histograms {
        for (second, h) in w.iter().enumerate() {
            let s = second as u64;
            if (warmup_secs / 2..warmup_secs).contains(&s) {
                steady.add(h).context("merging histograms")?;
            } else if s >= warmup_secs {
                noisy.add(h).context("merging histograms")?;
            }
        }
    }
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1e3;
    Ok((p99(&steady), p99(&noisy)))
}

/// What the watcher saw.
#[derive(Default)]
struct Watch {
    warnings: Vec<(NodeId, String, f64)>,
    /// Risk migrations by id: reached a cut-over?
    risk_migrations: BTreeMap<u64, bool>,
    /// Migrations of other causes, by id.
    other_migrations: std::collections::BTreeSet<u64>,
    /// Nodes shedding now, since when (seconds since the start).
    shedding_since: BTreeMap<NodeId, f64>,
    sheds: Vec<Shed>,
}

/// Polls warnings, migrations and every node's own check until `stop`.
fn watch(nodes: &[(NodeId, AdminEndpoint)], started: Instant, stop: &AtomicBool, out: &Mutex<Watch>) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(WATCH_INTERVAL);
        let now = started.elapsed().as_secs_f64();
        let mut shedding: Vec<NodeId> = Vec::new();
        let mut answered = false;
        let mut w = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for a in nodes.iter().map(|(_, a)| a.client()) {
            let Ok(warnings) = a.get::<serde_json::Value>("/v1/warnings?after=0&limit=100") else { continue };
            for x in warnings["active"].as_array().into_iter().flatten() {
                let (Some(node), Some(kind)) = (x["node"].as_u64(), x["kind"].as_str()) else { continue };
                if !w.warnings.iter().any(|(n, k, _)| *n == node && k == kind) {
                    w.warnings.push((node, kind.to_string(), now));
                }
                // A kind that takes the node's leaderships away (the failure analysis's rule).
                let kind = serde_json::from_value::<WarningKind>(x["kind"].clone()).ok();
                if kind.is_some_and(WarningKind::slows_leaders) {
                    shedding.push(node);
                }
            }
            if let Ok(m) = a.get::<serde_json::Value>("/v1/migrations") {
                for x in m.as_array().into_iter().flatten() {
                    let Some(id) = x["id"].as_u64() else { continue };
                    if x["cause"] != "risk" {
                        w.other_migrations.insert(id);
                        continue;
                    }
                    let cut = matches!(x["stage"].as_str(), Some("cutting-over" | "evacuated" | "released"));
                    *w.risk_migrations.entry(id).or_insert(false) |= cut;
                }
            }
            answered = true;
            break;
        }
        if !answered {
            // No view of the warnings this round (a manager fail-over): sheds go on as they were.
            continue;
        }
        for (id, a) in nodes {
            // A node that does not answer keeps its last state (a shed is not cut short).
            let own = match a.client().get_raw("/metrics") {
                Ok(text) => text.lines().any(|l| l.starts_with("presage_self_check_shedding 1")),
                Err(_) => w.shedding_since.contains_key(id),
            };
            if own {
                shedding.push(*id);
            }
        }
        w.track(&shedding, now);
    }
}

impl Watch {
    /// Takes the nodes shedding at `now` (seconds since the start): a shed starts when a node
    /// first is, and ends (recorded) when it no longer is.
    fn track(&mut self, shedding: &[NodeId], now: f64) {
        let ended: Vec<NodeId> = self.shedding_since.keys().copied().filter(|n| !shedding.contains(n)).collect();
        for node in ended {
            if let Some(from) = self.shedding_since.remove(&node) {
                self.sheds.push(Shed { node, from_secs: from, secs: now - from });
            }
        }
        for &node in shedding {
            self.shedding_since.entry(node).or_insert(now);
        }
    }
}

/// The report as text.
pub fn table(r: &NoiseReport) -> String {
    let noises: Vec<String> = r.events.iter().map(|(at, n)| format!("{} at {at:.0}s", n.name())).collect();
    let warnings: Vec<String> = r.warnings.iter().map(|(n, k, at)| format!("{k} on {n} at {at:.0}s")).collect();
    let rows = vec![
        vec!["noise on node".to_string(), r.target.to_string()],
        vec!["events".to_string(), noises.join(", ")],
        vec!["failed_requests".to_string(), r.failed_requests.to_string()],
        vec!["requests".to_string(), r.requests.to_string()],
        vec!["p99_ms_steady".to_string(), format!("{:.2}", r.p99_ms_steady)],
        vec!["p99_ms_noise".to_string(), format!("{:.2}", r.p99_ms_noise)],
        vec!["warnings".to_string(), if warnings.is_empty() { "none".into() } else { warnings.join(", ") }],
        vec!["risk_migrations".to_string(), r.risk_migrations.to_string()],
        vec!["evacuations".to_string(), r.evacuations.to_string()],
        vec!["other_migrations".to_string(), r.other_migrations.to_string()],
        vec!["snapshot_bytes_sent".to_string(), bytesize::ByteSize(r.snapshot_bytes_sent).to_string()],
        vec!["sheds".to_string(), r.sheds.len().to_string()],
        vec!["longest_shed_secs".to_string(), format!("{:.1}", r.longest_shed_secs)],
        vec!["no false alarm".to_string(), r.no_false_alarm().to_string()],
    ];
    presage_ctl::table(&["figure", "value"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn a_shed_lasts_from_the_first_look_that_saw_it_to_the_first_that_did_not() {
        let mut w = Watch::default();
        w.track(&[1], 10.0);
        w.track(&[1, 2, 1], 10.5);
        w.track(&[2], 12.0);
        w.track(&[], 13.0);
        let sheds: Vec<(NodeId, f64, f64)> = w.sheds.iter().map(|s| (s.node, s.from_secs, s.secs)).collect();
        assert_eq!(sheds, vec![(1, 10.0, 2.0), (2, 10.5, 2.5)]);
        assert!(w.shedding_since.is_empty());
    }

    #[test]
    fn noise_names_are_their_command_line_values() {
        for n in Noise::ALL {
            assert_eq!(n.to_possible_value().map(|v| v.get_name().to_string()), Some(n.name().to_string()));
        }
    }
}
