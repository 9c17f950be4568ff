//! `presage pfa-record`: the labelled-telemetry generator. It starts a playground of real
//! node processes, runs a steady client workload (with cluster-wide load surges), drives the
//! engines' fault injection through the admin API on a seeded schedule — disks that slow
//! until they fail (latency ramping up to the Raft election timeout), read errors that
//! escalate until they fail, and harmless transients (short latency spikes, brief error
//! bursts) — and records the telemetry the nodes' agents really produce, as the shard
//! manager's aggregator keeps it, with labels: each sample carries the time of its node's next
//! failure. `presage-ctl pfa train --format telemetry` learns the node model from it.
//!
//! A node "fails" when its fault reaches the failure point (the injected latency equals the
//! election timeout), or when its process stops: an engine read error on the Raft path stops
//! a node (as TiKV stops on a RocksDB error), so error episodes usually end in a crash within
//! seconds. The fault is then cleared and a stopped node restarted, as if the node were
//! replaced, and the recording goes on.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use presage_client::Client;
use presage_pfa::node_model::{Recorded, Recording};
use presage_pfa::telemetry::TelemetrySample;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use presage_ctl::AdminEndpoint;
use presage_playground::{Playground, PlaygroundOptions};

/// The Raft election timeout of the default configuration (10 ticks of 100 ms): the injected
/// latency at which a slowing disk counts as failed.
pub const FAILURE_LATENCY_US: u64 = 1_000_000;
/// Error rate at which escalating read errors count as a failure.
pub const FAILURE_ERROR_RATE: f64 = 0.2;
/// How often the recorder fetches the samples the manager kept, seconds.
pub const POLL_SECS: u64 = 5;

/// What `pfa-record` does.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// Nodes in the playground.
    pub nodes: u64,
    /// Regions.
    pub regions: u64,
    /// Length of the recording after the warm-up, seconds.
    pub secs: u64,
    /// Fault-free time first, so that the detectors learn each node's normal, seconds.
    pub warmup_secs: u64,
    /// Whether to inject faults (false: a healthy recording, for false-alarm rates).
    pub faults: bool,
    /// Client operations per second (reads and writes, half each).
    pub ops_per_sec: u32,
    /// Seed of the schedule and the workload.
    pub seed: u64,
    /// The CSV to write.
    pub out: PathBuf,
    /// Where the nodes live (a temporary folder when None).
    pub data_dir: Option<PathBuf>,
    /// The `presage` binary.
    pub binary: PathBuf,
}

/// One fault episode.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    /// The node.
    pub node: u64,
    /// What is injected.
    pub kind: EpisodeKind,
    /// Seconds after the recording's start (past the warm-up).
    pub start_secs: u64,
    /// How long it lasts, seconds.
    pub secs: u64,
}

/// The kinds of episode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EpisodeKind {
    /// Write and sync latency ramping from 0 to the election timeout; fails at the end.
    LatencyRampToFailure,
    /// Read errors escalating in three steps to [`FAILURE_ERROR_RATE`]; fails at the end if
    /// the node has not stopped before.
    ErrorsToFailure,
    /// A short latency spike of this many ms on syncs and writes; harmless.
    LatencySpike(u64),
    /// A brief burst of read errors at this rate; harmless unless it stops the node.
    ErrorBurst(f64),
    /// The node stopped outside any episode (recorded, never scheduled).
    Stopped,
}

impl EpisodeKind {
    fn name(self) -> &'static str {
        match self {
            EpisodeKind::LatencyRampToFailure => "latency-ramp-to-failure",
            EpisodeKind::ErrorsToFailure => "errors-to-failure",
            EpisodeKind::LatencySpike(_) => "latency-spike",
            EpisodeKind::ErrorBurst(_) => "error-burst",
            EpisodeKind::Stopped => "stopped",
        }
    }

    fn fails(self) -> bool {
        matches!(self, EpisodeKind::LatencyRampToFailure | EpisodeKind::ErrorsToFailure)
    }
}

/// The seeded episode schedule for `secs` seconds over nodes `1..=nodes`: one episode at a
/// time, 20-60 s apart (60 s after a failure); about one in three fails.
pub fn schedule(seed: u64, nodes: u64, secs: u64) -> Vec<Episode> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut t = rng.random_range(10..40);
    loop {
        let node = rng.random_range(1..=nodes);
        let (kind, len) = match rng.random_range(0..6) {
            0 => (EpisodeKind::LatencyRampToFailure, rng.random_range(60..150)),
            1 => (EpisodeKind::ErrorsToFailure, rng.random_range(45..120)),
            2 | 3 => (EpisodeKind::LatencySpike(rng.random_range(3..40)), rng.random_range(5..40)),
            _ => (EpisodeKind::ErrorBurst(rng.random_range(0.002..0.02)), rng.random_range(5..20)),
        };
        if t + len > secs {
            return out;
        }
        out.push(Episode { node, kind, start_secs: t, secs: len });
        t += len + if kind.fails() { 60 } else { rng.random_range(20..60) };
    }
}

/// The fault rule JSON for `kind` at `step` (0, 1, 2) of its episode.
fn rule(kind: EpisodeKind, secs: u64, step: u32) -> serde_json::Value {
    match kind {
        EpisodeKind::LatencyRampToFailure => {
            let ramp = serde_json::json!({"latency-start-us": 0, "latency-end-us": FAILURE_LATENCY_US, "ramp-ms": secs * 1000});
            serde_json::json!({"sync": ramp, "write": ramp})
        }
        EpisodeKind::ErrorsToFailure => {
            let rate = [0.01, 0.05, FAILURE_ERROR_RATE][step.min(2) as usize];
            serde_json::json!({"read": {"error-rate": rate}})
        }
        EpisodeKind::LatencySpike(ms) => {
            let fixed = serde_json::json!({"latency-start-us": ms * 1000, "latency-end-us": ms * 1000});
            serde_json::json!({"sync": fixed, "write": fixed})
        }
        EpisodeKind::ErrorBurst(rate) => serde_json::json!({"read": {"error-rate": rate}}),
        EpisodeKind::Stopped => serde_json::json!({}),
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A fault as it happened: node, kind, wall-clock start and end, failure time.
#[derive(Debug, Clone)]
struct Applied {
    node: u64,
    kind: EpisodeKind,
    start_ms: u64,
    end_ms: u64,
    failure_ms: Option<u64>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

/// Runs the recording; returns a one-paragraph summary.
pub async fn run(opts: &RecordOptions) -> Result<String> {
    if opts.nodes < 3 {
        bail!("pfa-record needs at least 3 nodes (a node's telemetry is compared with its peers')");
    }
    if opts.secs == 0 || opts.ops_per_sec == 0 {
        bail!("--secs and --ops-per-sec must be positive");
    }
    let tmp;
    let data_dir = match &opts.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("presage-pfa-record").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let mut out = std::fs::File::create(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let pg_opts = PlaygroundOptions {
        nodes: opts.nodes,
        regions: opts.regions,
        data_dir,
        overrides: Vec::new(),
        binary: opts.binary.clone(),
        ready_timeout: Duration::from_secs(120),
        insecure: false,
    };
    let mut pg = Playground::start(&pg_opts).await.context("starting the playground")?;
    let admins: Vec<(u64, AdminEndpoint)> = pg.admins(None);
    let regions: std::collections::BTreeMap<u64, String> =
        pg.cluster.nodes.iter().map(|n| (n.id, n.region.clone())).collect();
    let client = Arc::new(Client::connect(&pg.cluster.native_addrs(), pg.client_config()).await?);

    // The workload: paced reads and writes; a surge doubles it for a minute every few minutes.
    let stop = Arc::new(AtomicBool::new(false));
    let surge = Arc::new(AtomicU32::new(1));
    let workers = 8u32;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, stop, surge) = (Arc::clone(&client), Arc::clone(&stop), Arc::clone(&surge));
        let per_worker = f64::from(opts.ops_per_sec) / f64::from(workers);
        let seed = opts.seed.wrapping_add(u64::from(w) + 1);
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed);
            while !stop.load(Ordering::Relaxed) {
                let key = format!("pfa-{:05}", rng.random_range(0..5_000u32));
                let _ = if rng.random_bool(0.5) {
                    client.put(key.as_bytes(), &[7u8; 256]).await.map(|_| ())
                } else {
                    client.get(key.as_bytes()).await.map(|_| ())
                };
                let rate = per_worker * f64::from(surge.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_secs_f64(1.0 / rate.max(0.1))).await;
            }
        }));
    }

    println!("warming up for {} s (no faults) ...", opts.warmup_secs);
    let recording_start_ms = wall_ms();
    let t0 = tokio::time::Instant::now() + Duration::from_secs(opts.warmup_secs);
    let episodes = if opts.faults { schedule(opts.seed, opts.nodes, opts.secs) } else { Vec::new() };
    let mut applied: Vec<Applied> = Vec::new();
    let mut samples: Vec<(u64, TelemetrySample)> = Vec::new();
    let mut last_ms: std::collections::BTreeMap<u64, u64> = admins.iter().map(|(id, _)| (*id, 0)).collect();
    let mut next_episode = 0;
    let mut next_poll = tokio::time::Instant::now();
    let mut next_surge = t0 + Duration::from_secs(180);
    let end = t0 + Duration::from_secs(opts.secs);
    let mut active: Option<(Episode, u64, u32)> = None;
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        if now >= next_surge {
            let doubled = surge.load(Ordering::Relaxed) == 1;
            surge.store(if doubled { 2 } else { 1 }, Ordering::Relaxed);
            next_surge = now + Duration::from_secs(if doubled { 60 } else { 180 });
        }
        // Episodes: start, step (escalating errors), end.
        if active.is_none() {
            if let Some(e) = episodes.get(next_episode) {
                if now >= t0 + Duration::from_secs(e.start_secs) {
                    let admin = admins[(e.node - 1) as usize].1.clone();
                    let body = rule(e.kind, e.secs, 0);
                    blocking(move || admin.client().put_raw("/v1/faults", &body)).await??;
                    let start_ms = wall_ms();
                    println!("t+{:>4}s node {}: {} for {} s", e.start_secs, e.node, e.kind.name(), e.secs);
                    active = Some((e.clone(), start_ms, 0));
                    next_episode += 1;
                }
            }
        }
        if let Some((e, start_ms, step)) = active.clone() {
            let elapsed_ms = wall_ms().saturating_sub(start_ms);
            let admin = admins[(e.node - 1) as usize].1.clone();
            if elapsed_ms >= e.secs * 1000 {
                blocking(move || admin.client().delete("/v1/faults")).await?.context("clearing a fault")?;
                let end_ms = start_ms + e.secs * 1000;
                applied.push(Applied {
                    node: e.node,
                    kind: e.kind,
                    start_ms,
                    end_ms,
                    failure_ms: e.kind.fails().then_some(end_ms),
                });
                if e.kind.fails() {
                    println!("        node {}: failed (fault cleared: the node is replaced)", e.node);
                }
                active = None;
            } else if e.kind == EpisodeKind::ErrorsToFailure {
                let want = (elapsed_ms * 3 / (e.secs * 1000)) as u32;
                if want > step {
                    let body = rule(e.kind, e.secs, want);
                    blocking(move || admin.client().put_raw("/v1/faults", &body)).await??;
                    active = Some((e, start_ms, want));
                }
            }
        }
        if now >= next_poll {
            poll(&admins, &mut last_ms, &mut samples).await;
            next_poll = now + Duration::from_secs(POLL_SECS);
            // A node whose process stopped has failed: at its last sample. Clear its fault
            // and start it again (the replacement).
            for (id, admin) in &admins {
                if pg.is_running(*id) {
                    continue;
                }
                let failure_ms = last_ms.get(id).copied().filter(|t| *t > 0).unwrap_or_else(wall_ms);
                println!("        node {id}: stopped (failure at its last sample); restarting it");
                match active.take() {
                    Some((e, start_ms, _)) if e.node == *id => {
                        applied.push(Applied {
                            node: e.node,
                            kind: e.kind,
                            start_ms,
                            end_ms: failure_ms,
                            failure_ms: Some(failure_ms),
                        });
                    }
                    other => {
                        active = other;
                        applied.push(Applied {
                            node: *id,
                            kind: EpisodeKind::Stopped,
                            start_ms: failure_ms,
                            end_ms: failure_ms,
                            failure_ms: Some(failure_ms),
                        });
                    }
                }
                pg.restart(*id, &[]).context("restarting a stopped node")?;
                let admin = admin.clone();
                // The restarted node comes up without faults; wait until it answers.
                for _ in 0..60 {
                    let a = admin.clone();
                    if blocking(move || a.client().get_raw("/health").is_ok()).await? {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    poll(&admins, &mut last_ms, &mut samples).await;
    if let Some((e, start_ms, _)) = active {
        let admin = admins[(e.node - 1) as usize].1.clone();
        let _ = blocking(move || admin.client().delete("/v1/faults")).await;
        applied.push(Applied { node: e.node, kind: e.kind, start_ms, end_ms: wall_ms(), failure_ms: None });
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let _ = blocking(move || pg.stop(Duration::from_secs(20))).await;

    samples.sort_by_key(|(node, s)| (s.at_ms, *node));
    write_csv(&mut out, &samples, &applied, &regions)?;
    let failures = applied.iter().filter(|a| a.failure_ms.is_some()).count();
    Ok(format!(
        "recorded {} samples of {} nodes over {:.0} s ({} fault episodes, {} failures) into {}",
        samples.len(),
        opts.nodes,
        (wall_ms() - recording_start_ms) as f64 / 1e3,
        applied.len(),
        failures,
        opts.out.display()
    ))
}

/// Fetches every node's new samples from the manager (through any node that answers).
async fn poll(
    admins: &[(u64, AdminEndpoint)],
    last_ms: &mut std::collections::BTreeMap<u64, u64>,
    out: &mut Vec<(u64, TelemetrySample)>,
) {
    for (node, _) in admins {
        let after = last_ms.get(node).copied().unwrap_or(0);
        let path = format!("/v1/telemetry/{node}?after_ms={after}&limit=10000");
        let addrs: Vec<AdminEndpoint> = admins.iter().map(|(_, a)| a.clone()).collect();
        let got = blocking(move || addrs.iter().find_map(|a| a.client().get::<Vec<TelemetrySample>>(&path).ok()))
            .await
            .ok()
            .flatten();
        for s in got.unwrap_or_default() {
            last_ms.insert(*node, s.at_ms.max(after));
            out.push((*node, s));
        }
    }
}

/// The labelled recording: `fault` names the episode active on the node at the sample,
/// `failure_at_ms` is the node's next failure.
fn write_csv(
    out: &mut impl Write,
    samples: &[(u64, TelemetrySample)],
    applied: &[Applied],
    regions: &std::collections::BTreeMap<u64, String>,
) -> Result<()> {
    let rows = samples
        .iter()
        .map(|(node, s)| {
            let fault = applied.iter().find(|a| a.node == *node && a.start_ms <= s.at_ms && s.at_ms < a.end_ms);
            let next_failure =
                applied.iter().filter(|a| a.node == *node).filter_map(|a| a.failure_ms).filter(|f| *f >= s.at_ms).min();
            Recorded {
                node: *node,
                region: regions.get(node).cloned().unwrap_or_default(),
                sample: s.clone(),
                fault: fault.map_or("", |a| a.kind.name()).to_string(),
                failure_at_ms: next_failure,
            }
        })
        .collect();
    Recording { rows }.write_csv(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_seeded_sequential_and_mixed() {
        let a = schedule(7, 3, 1_800);
        assert_eq!(a, schedule(7, 3, 1_800));
        assert_ne!(a, schedule(8, 3, 1_800));
        for w in a.windows(2) {
            assert!(w[0].start_secs + w[0].secs + 20 <= w[1].start_secs, "{w:?}");
        }
        assert!(a.iter().all(|e| (1..=3).contains(&e.node) && e.start_secs + e.secs <= 1_800));
        assert!(a.iter().any(|e| e.kind.fails()) && a.iter().any(|e| !e.kind.fails()));
    }
}
