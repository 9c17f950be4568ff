//! `presage-bench scenario periodic` (seeds 001 and 002: predicted load): a key range that
//! turns hot for `spike_secs` every `period_secs` (a compressed "day"), on a real cluster with
//! forecasting on (`forecast-balance = true`) and off, side by side.
//!
//! - **Cluster**: the scenario's playground, its keys loaded and split into `shards` data
//!   shards, leaders spread. The day is compressed in the shard manager's settings too: a
//!   forecast bucket of a twelfth of the period, a season of one period, a horizon of a
//!   quarter of it, and shards cold for `merge-delay-ms` (a sixth of the period) are merged
//!   back (a real day's 5-minute merge delay is far shorter than the night between two
//!   peaks). Both modes get the same settings but `forecast-balance`.
//! - **Traffic** (open loop: each request has its scheduled time, latency runs from it, a slow
//!   request does not hold back the next): `base_rate` requests/s over every key, always; and
//!   during each spike `spike_rate` requests/s over the hot range (`hot_percent` of the keys,
//!   inside one of the initial shards). Half reads, half writes of `value_bytes`.
//! - **Watch**: every 500 ms the shards overlapping the hot range: a new shard id is a split,
//!   one gone from the directory a merge, a changed leader a move. Each is timed against the spike it serves
//!   (the first spike that has not ended: negative offsets landed before it).
//! - **Figures per spike**: the p99 of the requests scheduled in its first 10 s and over the
//!   whole spike, failures, the hot range's shards and distinct leaders when it began, and
//!   the splits and moves before and during it. Spikes starting before two whole periods of
//!   history exist are *learning* spikes (the seasonal model needs two seasons): the summary
//!   compares the learnt ones.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hdrhistogram::Histogram;
use presage_client::Client;
use presage_ctl::AdminEndpoint;
use presage_shardmgr::{NodeId, ShardId, META_SHARD_ID};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::ScenarioOptions;
use crate::datagen::{key, ValueGen, ValueKind};

/// The window of each spike whose p99 the issue asks for.
pub const FIRST_WINDOW: Duration = Duration::from_secs(10);
/// How often the watcher reads the shards.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// Requests in flight at once, over both streams (beyond it the schedule waits, and the wait
/// counts as latency).
const MAX_INFLIGHT_REQUESTS: usize = 4_096;
/// Latency histograms' upper bound, microseconds.
const MAX_LATENCY_US: u64 = 120_000_000;

/// The periodic scenario's settings.
#[derive(Debug, Clone, Serialize)]
pub struct PeriodicOptions {
    /// Cluster shape, keys, value size, seed and the `presage` binary (the failing-node story's
    /// other settings are unused).
    pub cluster: ScenarioOptions,
    /// Seconds from one spike's start to the next (one compressed day).
    pub period_secs: u64,
    /// Seconds each spike lasts.
    pub spike_secs: u64,
    /// Spikes per mode.
    pub spikes: usize,
    /// Seconds of base traffic before the first spike.
    pub lead_in_secs: u64,
    /// Requests/s over every key, always.
    pub base_rate: u64,
    /// Requests/s over the hot range during a spike.
    pub spike_rate: u64,
    /// The hot range, in percent of the keys.
    pub hot_percent: u64,
    /// The shard manager's load-split threshold, requests/s (`load-split-qps`).
    pub load_split_qps: u64,
}

impl Default for PeriodicOptions {
    fn default() -> Self {
        PeriodicOptions {
            cluster: ScenarioOptions { nodes: 3, regions: 3, shards: 4, ..ScenarioOptions::default() },
            period_secs: 60,
            spike_secs: 20,
            spikes: 5,
            lead_in_secs: 20,
            base_rate: 200,
            spike_rate: 2_000,
            hot_percent: 15,
            load_split_qps: 1_000,
        }
    }
}

impl PeriodicOptions {
    /// Rejects settings the scenario cannot run.
    pub fn check(&self) -> Result<()> {
        ensure!(self.cluster.nodes >= 3 && self.cluster.regions >= 3, "the scenario needs a group of three nodes");
        ensure!(self.spikes > 0 && self.spike_rate > 0, "--spikes and --spike-rate must be positive");
        ensure!(
            self.spike_secs >= FIRST_WINDOW.as_secs() && self.spike_secs < self.period_secs,
            "a spike lasts at least 10 s and less than --period-secs"
        );
        ensure!(self.period_secs >= 24, "--period-secs is at least 24 (the forecast needs buckets of 2 s)");
        ensure!((1..=50).contains(&self.hot_percent), "--hot-percent is between 1 and 50");
        ensure!(self.cluster.shards >= 1 && self.cluster.story.keys >= 100, "at least 100 keys and one shard");
        Ok(())
    }

    /// The shard manager's settings of the compressed day (module docs); `forecast` selects
    /// the mode.
    pub fn overrides(&self, forecast: bool) -> Vec<String> {
        let period_ms = self.period_secs * 1_000;
        let m = "server.shard-manager";
        let mut out = super::scenario_overrides();
        out.extend([
            format!("{m}.forecast-balance={forecast}"),
            format!("{m}.forecast-interval-ms=\"{}ms\"", period_ms / 12),
            format!("{m}.forecast-season-ms=\"{period_ms}ms\""),
            format!("{m}.forecast-horizon-ms=\"{}ms\"", period_ms / 4),
            format!("{m}.load-split-qps={}", self.load_split_qps),
            format!("{m}.merge-delay-ms=\"{}ms\"", period_ms / 6),
            format!("{m}.split-merge-interval-ms=\"{}ms\"", period_ms / 3),
        ]);
        out.extend(self.cluster.overrides.iter().cloned());
        out
    }

    /// The hot range's key indexes: `hot_percent` of the keys, starting a fifth into the
    /// initial shard that holds the middle key.
    pub fn hot_keys(&self) -> std::ops::Range<u64> {
        let keys = self.cluster.story.keys;
        let shards = self.cluster.shards.max(1);
        let shard = shards / 2;
        let (lo, hi) = (keys * shard / shards, keys * (shard + 1) / shards);
        let start = lo + (hi - lo) / 5;
        let len = (keys * self.hot_percent / 100).clamp(1, hi - start);
        start..start + len
    }

    /// Spike `i`'s start, from the workload's start.
    fn spike_start(&self, i: usize) -> Duration {
        Duration::from_secs(self.lead_in_secs + self.period_secs * i as u64)
    }

    /// The spike that has not ended at `t` (None after the last).
    fn spike_at_or_after(&self, t: Duration) -> Option<usize> {
        (0..self.spikes).find(|&i| t < self.spike_start(i) + Duration::from_secs(self.spike_secs))
    }
}

/// A split, merge or leader move of the hot range.
#[derive(Debug, Clone, Serialize)]
pub struct HotChange {
    /// Seconds since the workload started.
    pub at_secs: f64,
    /// The spike it serves (the first not ended), if any.
    pub spike: Option<usize>,
    /// Seconds from that spike's start (negative: before it).
    pub offset_secs: Option<f64>,
    /// `split`, `merge` or `move`.
    pub kind: &'static str,
    /// What happened.
    pub what: String,
}

/// One spike's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SpikeReport {
    /// Its index, from 0.
    pub index: usize,
    /// Seconds since the workload started.
    pub start_secs: u64,
    /// Fewer than two periods of history when it began (the seasonal model could not know it).
    pub learning: bool,
    /// Requests scheduled in its first 10 s / in the whole spike.
    pub requests_first_10s: u64,
    /// See above.
    pub requests: u64,
    /// Requests of the spike that failed (after the client's retries).
    pub failed: u64,
    /// p99 of the requests scheduled in its first 10 s, ms.
    pub p99_ms_first_10s: f64,
    /// p99 over the whole spike, ms.
    pub p99_ms: f64,
    /// Shards overlapping the hot range when it began.
    pub hot_shards_at_start: usize,
    /// Distinct nodes leading them when it began.
    pub hot_leaders_at_start: usize,
    /// Splits and moves of the hot range since the previous spike ended, before this one began.
    pub splits_before: usize,
    /// See above.
    pub moves_before: usize,
    /// Splits and moves while it ran.
    pub splits_during: usize,
    /// See above.
    pub moves_during: usize,
}

/// One mode's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PeriodicReport {
    /// Forecasting on (`forecast-balance`).
    pub forecast: bool,
    /// Every spike.
    pub spikes: Vec<SpikeReport>,
    /// The mean first-10-s p99 over the learnt spikes, ms.
    pub learnt_p99_ms_first_10s: f64,
    /// No split or move of the hot range happened during a learnt spike.
    pub learnt_changes_before_spike: bool,
    /// Every split, merge and move of the hot range.
    pub changes: Vec<HotChange>,
    /// Requests made, and those that failed.
    pub requests: u64,
    /// See above.
    pub failed: u64,
}

/// Runs the scenario with forecasting on, then off.
pub async fn run(opts: &PeriodicOptions, narrate: &(dyn Fn(&str) + Sync)) -> Result<Vec<PeriodicReport>> {
    opts.check()?;
    let mut out = Vec::new();
    for forecast in [true, false] {
        narrate(&format!("forecasting {}", if forecast { "on" } else { "off" }));
        let (_tmp, mut pg) =
            super::start_playground(&opts.cluster, opts.overrides(forecast), "presage-periodic-").await?;
        let result = async {
            let client = super::load_and_spread(&pg, &opts.cluster, narrate).await?;
            one(Arc::new(client), &super::admin_addrs(&pg, None), opts, forecast, narrate).await
        }
        .await;
        let _ = tokio::task::spawn_blocking(move || pg.stop(Duration::from_secs(20))).await;
        out.push(result?);
    }
    Ok(out)
}

/// Latencies per spike (first 10 s, whole) and the counters the request tasks share.
struct Spikes {
    first: Vec<Mutex<Histogram<u64>>>,
    whole: Vec<Mutex<Histogram<u64>>>,
    failed: Vec<AtomicU64>,
    requests: AtomicU64,
    failed_total: AtomicU64,
}

impl Spikes {
    fn new(n: usize) -> Result<Spikes> {
        let hist = || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map(Mutex::new);
        Ok(Spikes {
            first: (0..n).map(|_| hist()).collect::<Result<_, _>>()?,
            whole: (0..n).map(|_| hist()).collect::<Result<_, _>>()?,
            failed: (0..n).map(|_| AtomicU64::new(0)).collect(),
            requests: AtomicU64::new(0),
            failed_total: AtomicU64::new(0),
        })
    }

    fn record(&self, opts: &PeriodicOptions, scheduled_at: Duration, latency_us: u64, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed_total.fetch_add(1, Ordering::Relaxed);
        }
        let Some(i) = opts.spike_at_or_after(scheduled_at) else { return };
        let start = opts.spike_start(i);
        if scheduled_at < start {
            return;
        }
        if !ok {
            self.failed[i].fetch_add(1, Ordering::Relaxed);
        }
        let us = latency_us.clamp(1, MAX_LATENCY_US);
        if let Ok(mut h) = self.whole[i].lock() {
            h.saturating_record(us);
        }
        if scheduled_at < start + FIRST_WINDOW {
            if let Ok(mut h) = self.first[i].lock() {
                h.saturating_record(us);
            }
        }
    }
}

async fn one(
    client: Arc<Client>,
    admins: &[AdminEndpoint],
    opts: &PeriodicOptions,
    forecast: bool,
    narrate: &(dyn Fn(&str) + Sync),
) -> Result<PeriodicReport> {
    let hot = opts.hot_keys();
    let (hot_start, hot_end) = (key(hot.start), key(hot.end));
    let spikes = Arc::new(Spikes::new(opts.spikes)?);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let total = opts.spike_start(opts.spikes - 1) + Duration::from_secs(opts.period_secs - opts.spike_secs / 2);
    let watcher = {
        let (admins, stop) = (admins.to_vec(), Arc::clone(&stop));
        let (start, end) = (hot_start.clone(), hot_end.clone());
        tokio::task::spawn_blocking(move || watch(&admins, &start, &end, started, &stop))
    };
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT_REQUESTS));
    let base = tokio::spawn(pace(
        Stream::Base,
        Arc::clone(&client),
        opts.clone(),
        started,
        Arc::clone(&spikes),
        Arc::clone(&in_flight),
        Arc::clone(&stop),
    ));
    let spike = tokio::spawn(pace(
        Stream::Spike,
        client,
        opts.clone(),
        started,
        Arc::clone(&spikes),
        in_flight,
        Arc::clone(&stop),
    ));
    for i in 0..opts.spikes {
        tokio::time::sleep_until((started + opts.spike_start(i)).into()).await;
        narrate(&format!("spike {i} begins ({} requests/s on keys {}..{})", opts.spike_rate, hot.start, hot.end));
    }
    tokio::time::sleep_until((started + total).into()).await;
    stop.store(true, Ordering::Relaxed);
    base.await.context("the base traffic")??;
    spike.await.context("the spike traffic")??;
    let watched = watcher.await.context("the watcher")??;
    Ok(report(opts, forecast, &spikes, watched))
}

#[derive(Clone, Copy, PartialEq)]
enum Stream {
    Base,
    Spike,
}

/// Sends one stream's requests on their schedule until `stop`.
async fn pace(
    stream: Stream,
    client: Arc<Client>,
    opts: PeriodicOptions,
    started: Instant,
    spikes: Arc<Spikes>,
    in_flight: Arc<tokio::sync::Semaphore>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let story = &opts.cluster.story;
    let (rate, keys) = match stream {
        Stream::Base => (opts.base_rate, 0..story.keys),
        Stream::Spike => (opts.spike_rate, opts.hot_keys()),
    };
    if rate == 0 {
        return Ok(());
    }
    let seed = story.seed ^ if stream == Stream::Base { 0x5eed } else { 0x5a1e };
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut values = ValueGen::new(ValueKind::Compressible, story.value_bytes, seed);
    let interval = Duration::from_secs(1).div_f64(rate as f64);
    let mut next = Duration::ZERO;
    let spike_len = Duration::from_secs(opts.spike_secs);
    while !stop.load(Ordering::Relaxed) {
        if stream == Stream::Spike {
            // Only inside a spike: skip to the next one's start.
            let Some(i) = opts.spike_at_or_after(next) else { break };
            next = next.max(opts.spike_start(i));
            debug_assert!(next < opts.spike_start(i) + spike_len);
        }
        tokio::time::sleep_until((started + next).into()).await;
        let permit = Arc::clone(&in_flight).acquire_owned().await.context("the in-flight limit closed")?;
        let k = rng.random_range(keys.clone());
        let write = rng.random_bool(0.5).then(|| values.value(k));
        let (client, spikes, opts) = (Arc::clone(&client), Arc::clone(&spikes), opts.clone());
        let at = next;
        tokio::spawn(async move {
            let r = match write {
                None => client.get(&key(k)).await.map(|_| ()),
                Some(v) => client.put(&key(k), &v).await,
            };
            let latency_us = (started + at).elapsed().as_micros() as u64;
            spikes.record(&opts, at, latency_us, r.is_ok());
            drop(permit);
        });
        next += interval;
    }
    // Wait for the requests in flight.
    let _all = in_flight.acquire_many(MAX_INFLIGHT_REQUESTS as u32).await.context("the in-flight limit closed")?;
    Ok(())
}

/// What the watcher saw: the changes, and each moment's hot shards with their leaders.
struct Watched {
    changes: Vec<(Duration, &'static str, String)>,
    /// (time, shards overlapping the hot range: id -> leader).
    snapshots: Vec<(Duration, BTreeMap<ShardId, Option<NodeId>>)>,
}

/// Reads the shards overlapping `[start, end)` every [`WATCH_INTERVAL`] until `stop`.
fn watch(admins: &[AdminEndpoint], start: &[u8], end: &[u8], started: Instant, stop: &AtomicBool) -> Result<Watched> {
    let mut w = Watched { changes: Vec::new(), snapshots: Vec::new() };
    let mut last: Option<BTreeMap<ShardId, Option<NodeId>>> = None;
    // Every shard id seen: a new one is a split's right half; a hot one gone, a merge's source
    // (a merge's target only widens, keeping its id).
    let mut seen = std::collections::BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let at = started.elapsed();
        if let Ok(rows) = super::shard_rows(admins) {
            let now: BTreeMap<ShardId, Option<NodeId>> = rows
                .iter()
                .filter(|r| r.shard.id != META_SHARD_ID)
                .filter(|r| r.shard.start.as_slice() < end && r.shard.end.as_deref().is_none_or(|e| e > start))
                .map(|r| (r.shard.id, r.shard.leader))
                .collect();
            if let Some(prev) = &last {
                for id in now.keys().filter(|id| !seen.contains(*id)) {
                    w.changes.push((at, "split", format!("shard {id} split off")));
                }
                for id in prev.keys().filter(|id| !rows.iter().any(|r| r.shard.id == **id)) {
                    w.changes.push((at, "merge", format!("shard {id} merged away")));
                }
                for (id, leader) in &now {
                    if let (Some(Some(a)), Some(b)) = (prev.get(id), leader) {
                        if a != b {
                            w.changes.push((at, "move", format!("shard {id}: node {a} -> {b}")));
                        }
                    }
                }
            }
            seen.extend(rows.iter().map(|r| r.shard.id));
            w.snapshots.push((at, now.clone()));
            last = Some(now);
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
    Ok(w)
}

fn report(opts: &PeriodicOptions, forecast: bool, spikes: &Spikes, watched: Watched) -> PeriodicReport {
    let changes: Vec<HotChange> = watched
        .changes
        .iter()
        .map(|(at, kind, what)| {
            let spike = opts.spike_at_or_after(*at);
            HotChange {
                at_secs: at.as_secs_f64(),
                spike,
                offset_secs: spike.map(|i| at.as_secs_f64() - opts.spike_start(i).as_secs_f64()),
                kind,
                what: what.clone(),
            }
        })
        .collect();
    let q = |h: &Mutex<Histogram<u64>>| -> Option<(u64, f64)> {
        h.lock().ok().map(|h| (h.len(), h.value_at_quantile(0.99) as f64 / 1_000.0))
    };
    let per_spike: Vec<SpikeReport> = (0..opts.spikes)
        .map(|i| {
            let start = opts.spike_start(i);
            let (n_first, p_first) = q(&spikes.first[i]).unwrap_or((0, 0.0));
            let (n, p) = q(&spikes.whole[i]).unwrap_or((0, 0.0));
            let at_start = watched.snapshots.iter().rev().find(|(t, _)| *t <= start).map(|(_, s)| s);
            let count = |kind: &str, during: bool| {
                changes
                    .iter()
                    .filter(|c| c.spike == Some(i) && c.kind == kind)
                    .filter(|c| c.offset_secs.is_some_and(|o| (o >= 0.0) == during))
                    .count()
            };
            SpikeReport {
                index: i,
                start_secs: start.as_secs(),
                learning: start < Duration::from_secs(2 * opts.period_secs),
                requests_first_10s: n_first,
                requests: n,
                failed: spikes.failed[i].load(Ordering::Relaxed),
                p99_ms_first_10s: p_first,
                p99_ms: p,
                hot_shards_at_start: at_start.map_or(0, BTreeMap::len),
                hot_leaders_at_start: at_start
                    .map_or(0, |s| s.values().flatten().collect::<std::collections::BTreeSet<_>>().len()),
                splits_before: count("split", false),
                moves_before: count("move", false),
                splits_during: count("split", true),
                moves_during: count("move", true),
            }
        })
        .collect();
    let learnt: Vec<&SpikeReport> = per_spike.iter().filter(|s| !s.learning).collect();
    PeriodicReport {
        forecast,
        learnt_p99_ms_first_10s: if learnt.is_empty() {
            0.0
        } else {
            learnt.iter().map(|s| s.p99_ms_first_10s).sum::<f64>() / learnt.len() as f64
        },
        learnt_changes_before_spike: learnt.iter().all(|s| s.splits_during == 0 && s.moves_during == 0),
        spikes: per_spike,
        changes,
        requests: spikes.requests.load(Ordering::Relaxed),
        failed: spikes.failed_total.load(Ordering::Relaxed),
    }
}

/// The reports side by side: a line per spike and mode, the changes, and the summary.
pub fn table(reports: &[PeriodicReport]) -> String {
    let mut out = String::from(
        "forecast  spike  start s  learning  p99 first 10 s ms  p99 spike ms  failed  hot shards/leaders  splits/moves before  during\n",
    );
    for r in reports {
        for s in &r.spikes {
            out += &format!(
                "{:<8}  {:>5}  {:>7}  {:<8}  {:>17.2}  {:>12.2}  {:>6}  {:>11} / {:<6}  {:>10} / {:<8}  {} / {}\n",
                if r.forecast { "on" } else { "off" },
                s.index,
                s.start_secs,
                if s.learning { "yes" } else { "no" },
                s.p99_ms_first_10s,
                s.p99_ms,
                s.failed,
                s.hot_shards_at_start,
                s.hot_leaders_at_start,
                s.splits_before,
                s.moves_before,
                s.splits_during,
                s.moves_during,
            );
        }
    }
    for r in reports {
        out += &format!(
            "\nforecasting {}: changes of the hot range (offset from the spike they serve)\n",
            if r.forecast { "on" } else { "off" }
        );
        for c in &r.changes {
            let offset = match (c.spike, c.offset_secs) {
                (Some(i), Some(o)) => format!("spike {i} {o:+.1} s"),
                _ => "after the last spike".to_string(),
            };
            out += &format!("  {:>7.1} s  {:<22}  {:<5}  {}\n", c.at_secs, offset, c.kind, c.what);
        }
    }
    out += "\n";
    for r in reports {
        out += &format!(
            "forecasting {:<3}: learnt spikes' mean first-10-s p99 {:.2} ms; changes all before their spike: {}; {} of {} requests failed\n",
            if r.forecast { "on" } else { "off" },
            r.learnt_p99_ms_first_10s,
            if r.learnt_changes_before_spike { "yes" } else { "no" },
            r.failed,
            r.requests,
        );
    }
    if let [on, off] = reports {
        if off.learnt_p99_ms_first_10s > 0.0 {
            out +=
                &format!("on / off first-10-s p99: {:.2}\n", on.learnt_p99_ms_first_10s / off.learnt_p99_ms_first_10s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spikes_are_timed_from_the_lead_in_and_changes_serve_the_next_spike() {
        let o = PeriodicOptions { lead_in_secs: 10, period_secs: 30, spike_secs: 10, spikes: 3, ..Default::default() };
        o.check().expect("valid");
        assert_eq!(o.spike_start(2), Duration::from_secs(70));
        assert_eq!(o.spike_at_or_after(Duration::from_secs(5)), Some(0));
        assert_eq!(o.spike_at_or_after(Duration::from_secs(19)), Some(0), "during spike 0");
        assert_eq!(o.spike_at_or_after(Duration::from_secs(20)), Some(1), "after it: the next");
        assert_eq!(o.spike_at_or_after(Duration::from_secs(80)), None);
    }

    #[test]
    fn the_hot_range_lies_inside_one_initial_shard() {
        for (keys, shards, pct) in [(2_000, 4, 15), (1_000, 1, 50), (100, 7, 1)] {
            let mut o = PeriodicOptions { hot_percent: pct, ..Default::default() };
            o.cluster.story.keys = keys;
            o.cluster.shards = shards;
            let h = o.hot_keys();
            let s = shards / 2;
            assert!(h.start >= keys * s / shards && h.end <= keys * (s + 1) / shards, "{keys} {shards} {pct}: {h:?}");
            assert!(!h.is_empty());
        }
    }

    #[test]
    fn the_modes_differ_only_in_forecast_balance() {
        let o = PeriodicOptions::default();
        let (on, off) = (o.overrides(true), o.overrides(false));
        let differ: Vec<_> = on.iter().zip(&off).filter(|(a, b)| a != b).collect();
        assert_eq!(differ.len(), 1);
        assert!(differ[0].0.ends_with("forecast-balance=true"));
        assert!(on.contains(&"server.shard-manager.forecast-season-ms=\"60000ms\"".to_string()));
    }

    #[test]
    fn a_spike_records_only_its_own_requests() {
        let o = PeriodicOptions { lead_in_secs: 10, period_secs: 30, spike_secs: 12, spikes: 2, ..Default::default() };
        let s = Spikes::new(2).expect("histograms");
        s.record(&o, Duration::from_secs(5), 100, true); // before spike 0
        s.record(&o, Duration::from_secs(11), 2_000, true); // spike 0, first 10 s
        s.record(&o, Duration::from_secs(21), 9_000, false); // spike 0, after its first 10 s
        s.record(&o, Duration::from_secs(41), 3_000, true); // spike 1
        assert_eq!(s.requests.load(Ordering::Relaxed), 4);
        assert_eq!(s.first[0].lock().expect("lock").len(), 1);
        assert_eq!(s.whole[0].lock().expect("lock").len(), 2);
        assert_eq!(s.failed[0].load(Ordering::Relaxed), 1);
        assert_eq!(s.whole[1].lock().expect("lock").len(), 1);
    }
}
